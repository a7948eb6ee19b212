#!/usr/bin/env python3
"""Shoal's benchmark runner: the seed's experiment and its follow-ups, side by side.

Every scenario runs every contender in the same run (alternating repetitions where order
could matter) and reports medians and ratios. Load comes from real HTTP clients: the
bursts are concurrent `curl`-style requests from threads (so each response's instance id
can be read, as the seed did), fixed-rate and closed-loop load comes from `oha`.

    python3 bench/run.py                 # everything, writes docs/BENCHMARKS.md + plots
    python3 bench/run.py --quick         # seconds-long smoke run (CI), writes to bench/out/
    python3 bench/run.py --only sustained,cpu-heavy

Contenders (see docs/BENCHMARKS.md; the python-* scenarios run the Python hello and a
no-op Python handler, with an asyncio HTTP server, bench/direct/server.py, as direct):
  direct         the seed's node-hello: one plain Node.js server calling the handler
  lambda-model   Shoal with concurrency = 1 (one invocation per instance, as Lambda)
  fixed-80       Shoal with concurrency = 80 (Cloud Run's default)
  shoal-auto     Shoal with its defaults (concurrency = "auto")
  capped-serial  Shoal with concurrency = 1, max_instances = 4 (the seed's "other clouds")

Queue contenders (queue-throughput; docs/BENCHMARKS.md says how each is set up):
  shoal            Shoal's queue triggering a no-op function, sent to over the SQS API
  bullmq-always    BullMQ on Redis, appendfsync always (acknowledged = fsync'd)
  bullmq-everysec  BullMQ on Redis, appendfsync everysec (Redis's usual durable setting)
  pg-skip-locked   a PostgreSQL table, consumers DELETE ... FOR UPDATE SKIP LOCKED

change-stream: a postgres data-change trigger, commit to handler (saturation, latency at a
fixed rate, instances for an I/O-bound handler against concurrency = 1).

cluster: cluster mode on a local nats-server: a forwarded call against a local one (latency,
daemons' CPU), and failover after a kill -9 of the node serving the calls.
jetstream-queue: the queue store alone on NATS JetStream (cluster mode's) against the
embedded SQLite one, 1 and 3 consumers (crates/shoal-nats/examples/queue_throughput.rs;
needs Debian's nats-server).

Standard library plus matplotlib for the plots (installed with pip when missing); the pieces
live in bench/shoalbench/ (tools, measuring, contenders, scenarios, plots, report).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import time
from pathlib import Path

from shoalbench.common import BENCH, CONTENDERS, QUEUE_CONTENDERS, ROOT, BenchError, log
from shoalbench.report import check_complete, report, skipped
from shoalbench.scenarios import Run

SCENARIOS = [
    "seed-burst-10",
    "seed-burst-100",
    "overhead",
    "cold-start",
    "sustained",
    "cpu-heavy",
    "scale-to-zero",
    "db-connections",
    "noisy-neighbour",
    "overload",
    "frozen",
    "python-seed-burst-10",
    "python-seed-burst-100",
    "python-overhead",
    "queue-throughput",
    "queue-packing",
    "change-stream",
    "cluster",
    "jetstream-queue",
]


def load_results(path: Path) -> dict:
    res = json.loads(path.read_text())
    # JSON turned the overhead table's integer keys (concurrency levels) into strings.
    for scenario in ("overhead", "python-overhead", "cluster"):
        for by_level in res.get(scenario, {}).get("rows", {}).values():
            for key in list(by_level):
                by_level[int(key)] = by_level.pop(key)
    return res


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts, a few seconds each (CI)")
    parser.add_argument("--only", default="", help="comma-separated scenarios: " + ", ".join(SCENARIOS))
    parser.add_argument(
        "--contenders",
        default="",
        help="comma-separated subset of: " + ", ".join(CONTENDERS + QUEUE_CONTENDERS),
    )
    parser.add_argument("--out", default=None, help="report path (default docs/BENCHMARKS.md; bench/out with --quick)")
    parser.add_argument(
        "--render",
        action="store_true",
        help="only rewrite the report from its JSON (no runs)",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the other scenarios' results from the report's JSON and replace only these",
    )
    args = parser.parse_args()
    if args.out is None:
        args.out = str(BENCH / "out") if args.quick else str(ROOT / "docs" / "BENCHMARKS.md")
    chosen = [s for s in args.only.split(",") if s] or SCENARIOS
    if args.contenders:
        subset = [c for c in args.contenders.split(",") if c]
        if set(subset) - set(CONTENDERS) - set(QUEUE_CONTENDERS):
            print(f"unknown contender(s): {args.contenders}", file=sys.stderr)
            return 2
        # Each list is narrowed only by the names given from it.
        for names in (CONTENDERS, QUEUE_CONTENDERS):
            if set(subset) & set(names):
                names[:] = [c for c in subset if c in names]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        print(f"unknown scenario(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    command = " ".join(["python3 bench/run.py", *sys.argv[1:]])
    if args.render:
        out = Path(args.out)
        json_path = (out.parent / (out.stem + ".json")) if out.suffix == ".md" else out / "BENCHMARKS.json"
        res = load_results(json_path)
        view = argparse.Namespace(report_dir=json_path.parent, quick=args.quick)
        json_path.with_suffix(".md").write_text(report(view, res, command))
        log(f"report re-rendered from {json_path}")
        return 0
    # How long each scenario took last time (per mode), for the "about N s left" estimate.
    durations_key = "_durations_quick" if args.quick else "_durations"
    out_path = Path(args.out)
    previous_json = (out_path.parent / (out_path.stem + ".json")) if out_path.suffix == ".md" else out_path / "BENCHMARKS.json"
    try:
        previous = json.loads(previous_json.read_text()).get(durations_key, {}) if previous_json.exists() else {}
    except (OSError, ValueError):
        previous = {}
    durations: dict[str, float] = {}
    bench_started = time.monotonic()
    try:
        run = Run(args)
        res: dict = {}
        burst_sizes = {"seed-burst-10": 4 if args.quick else 10, "seed-burst-100": 12 if args.quick else 100}
        loads: dict[str, str] = {}
        for index, scenario in enumerate(chosen):
            started = time.monotonic()
            before = os.getloadavg()
            left = chosen[index:]
            mean = sum(durations.values()) / len(durations) if durations else None
            guesses = [previous.get(x, mean) for x in left]
            eta = f", about {sum(guesses):.0f} s left" if all(g is not None for g in guesses) else ""
            log(f"[{index + 1}/{len(chosen)}] {scenario} (elapsed {started - bench_started:.0f} s{eta})")
            if scenario in burst_sizes:
                res[scenario] = run.seed_burst(scenario, burst_sizes[scenario])
            elif scenario.startswith("python-") and scenario[len("python-"):] in burst_sizes:
                size = burst_sizes[scenario[len("python-"):]]
                res[scenario] = run.seed_burst(scenario, size, python=True)
            elif scenario == "overhead":
                res[scenario] = run.overhead()
            elif scenario == "python-overhead":
                res[scenario] = run.overhead(python=True)
            elif scenario == "cold-start":
                res[scenario] = run.cold_start()
            elif scenario == "sustained":
                res["calibration"] = run.calibrate()
                res[scenario] = run.sustained(res["calibration"])
            elif scenario == "cpu-heavy":
                res[scenario] = run.cpu_heavy()
            elif scenario == "scale-to-zero":
                res[scenario] = run.scale_to_zero()
            elif scenario == "db-connections":
                res[scenario] = run.db_connections()
            elif scenario == "noisy-neighbour":
                res[scenario] = run.noisy_neighbour()
            elif scenario == "overload":
                res[scenario] = run.overload()
            elif scenario == "frozen":
                res[scenario] = run.frozen()
            elif scenario == "queue-throughput":
                res[scenario] = run.queue_throughput()
            elif scenario == "queue-packing":
                res[scenario] = run.queue_packing()
            elif scenario == "change-stream":
                res[scenario] = run.change_stream()
            elif scenario == "cluster":
                res[scenario] = run.cluster()
            elif scenario == "jetstream-queue":
                res[scenario] = run.jetstream_queue()
            durations[scenario] = time.monotonic() - started
            after = os.getloadavg()
            # What else the machine was doing: the 1-minute load average as the scenario
            # started (mostly other work) and as it ended (its own included).
            loads[scenario] = f"load average {before[0]:.2f} before, {after[0]:.2f} after (1 min)"
            log(f"{scenario} done in {durations[scenario]:.0f} s ({loads[scenario]})")
        res["_load"] = loads
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    finally:
        pass
    out = Path(args.out)
    json_path = (out.parent / (out.stem + ".json")) if out.suffix == ".md" else out / "BENCHMARKS.json"
    runs = [{"command": command, "date": datetime.date.today().isoformat(), "scenarios": chosen}]
    if args.merge and json_path.exists():
        old = load_results(json_path)
        kept = []
        for r in old.pop("_runs", []):
            r["scenarios"] = [x for x in r["scenarios"] if x not in chosen]
            if r["scenarios"]:
                kept.append(r)
        runs = kept + runs
        res = {**old, **res, "_load": {**old.get("_load", {}), **res.get("_load", {})}}
    res["_runs"] = runs
    res[durations_key] = {**previous, **durations}
    text = report(run, res, command)
    if out.suffix == ".md":
        out.write_text(text)
    else:
        out.mkdir(parents=True, exist_ok=True)
        (out / "BENCHMARKS.md").write_text(text)
        out = out / "BENCHMARKS.md"
    json_path.write_text(json.dumps(res, indent=1, default=str))
    log(f"report written to {out}")
    for line in skipped(res):
        print(f"bench: skipped (could not be installed): {line}", file=sys.stderr)
    missing = check_complete(res)
    if missing:
        print("bench: no numbers from: " + ", ".join(missing), file=sys.stderr)
        return 1
    shutil.rmtree(run.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
