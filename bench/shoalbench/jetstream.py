"""The jetstream-queue scenario: the queue store alone (no daemon, no function) on NATS
JetStream against the embedded SQLite store, with 1 and 3 consumers, through
`crates/shoal-nats/examples/queue_throughput.rs` (it starts its own `nats-server`).
Rounds alternate nothing inside the example (each row is one backend at a time, in a fixed
order), so the scenario repeats the whole example and reports medians."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

from .common import ROOT, BenchError, log
from .measure import med

NATS_SERVER = "/usr/sbin/nats-server"


class JetStreamScenarios:
    def jetstream_queue(self) -> dict:
        server = os.environ.get("NATS_SERVER", NATS_SERVER)
        if not (os.path.exists(server) or shutil.which("nats-server")):
            raise BenchError("jetstream-queue: nats-server is not installed (apt-get install nats-server)")
        seconds = 2 if self.quick else 10
        rounds = 1 if self.quick else 3
        profile = [] if self.quick else ["--release"]
        log("jetstream-queue: building the queue_throughput example")
        subprocess.run(
            ["cargo", "build", "--quiet", "--locked", "-p", "shoal-nats", "--example", "queue_throughput", *profile],
            cwd=ROOT,
            check=True,
        )
        target = ROOT / os.environ.get("CARGO_TARGET_DIR", "target")
        example = target / ("debug" if self.quick else "release") / "examples" / "queue_throughput"
        samples: dict[str, list[dict]] = {}
        for r in range(rounds):
            log(f"jetstream-queue: round {r + 1} of {rounds} ({seconds} s per row)")
            done = subprocess.run(
                [str(example), "--json", "--seconds", str(seconds)],
                cwd=ROOT,
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise BenchError(f"jetstream-queue: {example} failed:\n{done.stderr[-2000:]}")
            for line in done.stdout.splitlines():
                row = json.loads(line)
                samples.setdefault(f"{row['backend']}/{row['consumers']}", []).append(row)
        rows = {}
        for key, runs in samples.items():
            backend, consumers = key.split("/")
            server_cpu = [x["server_cpu_us_per_msg"] for x in runs if x["server_cpu_us_per_msg"] is not None]
            rows[key] = {
                "backend": backend,
                "consumers": int(consumers),
                "rate": med([x["rate"] for x in runs]),
                "rates": [round(x["rate"]) for x in runs],
                "cpu_us": med([x["cpu_us_per_msg"] for x in runs]),
                "server_cpu_us": med(server_cpu) if server_cpu else None,
            }
        return {
            "seconds": seconds,
            "rounds": rounds,
            "command": f"cargo run --release -p shoal-nats --example queue_throughput -- --seconds {seconds}",
            "rows": rows,
        }
