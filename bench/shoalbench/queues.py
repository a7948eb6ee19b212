"""The queue scenarios: Shoal's queue against BullMQ on Redis and a PostgreSQL SKIP LOCKED
queue (throughput end to end with durable acknowledgements, and latency at a fixed rate),
and packing of a queue-triggered function. The load and the stopwatch are the same Node.js
driver for every contender (bench/queue/driver.js); what differs is where the messages go
and who consumes them."""

from __future__ import annotations

import http.client
import json
import math
import os
import select
import shutil
import subprocess
import tempfile
from pathlib import Path

from .common import BENCH, QUEUE_CONTENDERS, ROOT, SETTINGS, BenchError, log
from .contenders import Shoal, function_dir, manifest
from .measure import Sampler, cpu_secs, descendants, med, reaped_children_cpu_secs
from .tools import Postgres, Redis, ensure_queue_modules, free_port, postgres_bin, redis_server_bin

QUEUE_DIR = BENCH / "queue"
SHOAL_QUEUE = "bench-q"


def tree_cpu_secs(pids: list[int]) -> float:
    """CPU time of these processes and everything below them, exited children included."""
    return sum(cpu_secs(p) + reaped_children_cpu_secs(p) for p in descendants(pids))


def node_json(args: list[str], env: dict | None = None, timeout: float = 900) -> dict:
    """Runs the driver and returns the JSON line it printed."""
    try:
        result = subprocess.run(
            ["node", str(QUEUE_DIR / "driver.js"), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"driver {' '.join(args[:2])} still running after {timeout:.0f} s") from e
    if result.returncode != 0:
        raise BenchError(f"driver {' '.join(args[:2])} failed: {result.stderr.strip()[-600:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def sqs(target: Shoal, action: str, body: dict) -> dict:
    """One call of the SQS JSON protocol on a daemon's control listener."""
    host, port = target.control.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(
            "POST",
            "/",
            body=json.dumps(body),
            headers={
                "content-type": "application/x-amz-json-1.0",
                "x-amz-target": f"AmazonSQS.{action}",
                "authorization": f"Bearer {target.token}",
            },
        )
        response = conn.getresponse()
        text = response.read().decode(errors="replace")
    except OSError as e:
        raise BenchError(f"SQS {action} on the control listener failed: {e}") from e
    finally:
        conn.close()
    if response.status != 200:
        raise BenchError(f"SQS {action} answered {response.status}: {text[:300]}")
    return json.loads(text) if text else {}


class Consumers:
    """A contender's consumer processes (bench/queue/consumer.js), each printing "ready"."""

    def __init__(self, args: list[str], procs: int, env: dict):
        self.procs = []
        # Errors go to a file: a pipe nobody reads would stop a consumer that logs a lot.
        self.errors = tempfile.TemporaryFile(mode="w+")
        for _ in range(procs):
            proc = subprocess.Popen(
                ["node", str(QUEUE_DIR / "consumer.js"), *args],
                stdout=subprocess.PIPE,
                stderr=self.errors,
                text=True,
                env={**os.environ, **env},
            )
            self.procs.append(proc)
            # A consumer that cannot reach its server retries forever: give it 60 s.
            ready, _, _ = select.select([proc.stdout], [], [], 60)
            line = proc.stdout.readline() if ready else ""
            if line.strip() != "ready":
                for p in self.procs:
                    p.kill()
                    p.wait()
                self.errors.seek(0)
                why = self.errors.read()[-600:]
                self.errors.close()
                raise BenchError(f"consumer {' '.join(args[:1])} did not start: {why}")

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.errors.close()


class System:
    """One queue contender: its server, how the driver reaches it, its consumer settings."""

    name: str
    driver: list[str]
    server_pids: list[int]

    def settings(self, quick: bool) -> list:
        return [None]

    def describe(self, setting) -> str:
        return "auto"

    def consumers(self, setting, env: dict) -> Consumers | None:
        return None

    def counters(self) -> dict:
        return {}

    def reset(self) -> None:
        """Before each warm-up and measured run."""

    def stop(self) -> None:
        raise NotImplementedError


class ShoalSystem(System):
    """A daemon with queue `bench-q` and a no-op function triggered by it, 10 per batch."""

    def __init__(self, run, lat_addr: str):
        self.name = "shoal"
        fn = function_dir(
            run.workdir,
            BENCH / "functions" / "queue-noop",
            "queue-shoal",
            manifest(
                "sink",
                "index.handler",
                "",
                {},
                extra=f'env = {{ BENCH_LATENCY_ADDR = "{lat_addr}" }}',
                trigger=f'events = [{{ queue = "{SHOAL_QUEUE}", batch_size = 10 }}]',
            ),
        )
        shutil.copy(QUEUE_DIR / "record.js", fn / "record.js")
        self.target = Shoal(
            run.binary,
            run.workdir,
            "queue-shoal",
            fn,
            "/",
            before_deploy=lambda t: sqs(t, "CreateQueue", {"QueueName": SHOAL_QUEUE}),
        )
        self.driver = [
            "shoal",
            "--control", self.target.control,
            "--token", self.target.token,
            "--queue", SHOAL_QUEUE,
        ]
        self.server_pids = [self.target.pid]

    def describe(self, setting) -> str:
        return 'concurrency "auto", batch_size 10'

    def counters(self) -> dict:
        """From /metrics: what the queue and the function did (a check that every message
        was delivered to the function, how many times, and in how many calls)."""
        host, port = self.target.control.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            conn.request("GET", "/metrics", headers={"authorization": f"Bearer {self.target.token}"})
            text = conn.getresponse().read().decode(errors="replace")
        except OSError:
            return {}
        finally:
            conn.close()
        out = {"instances": 0}
        for line in text.splitlines():
            if line.startswith("#") or " " not in line:
                continue
            series, value = line.rsplit(" ", 1)
            if series.startswith("shoal_queue_messages_total{") and f'queue="{SHOAL_QUEUE}"' in series:
                event = series.split('event="', 1)[1].split('"', 1)[0]
                out[event] = int(float(value))
            elif series == 'shoal_invocation_duration_seconds_count{function="sink"}':
                out["invocations"] = int(float(value))
            elif series.startswith('shoal_instances{function="sink"'):
                out["instances"] += int(float(value))
        return out

    def stop(self) -> None:
        self.target.stop()


class BullSystem(System):
    def __init__(self, appendfsync: str):
        self.name = f"bullmq-{appendfsync}"
        self.redis = Redis(redis_server_bin(), appendfsync)
        self.driver = ["bullmq", "--redis", self.redis.addr]
        self.server_pids = [self.redis.proc.pid]

    def settings(self, quick: bool) -> list:
        # (worker processes, concurrency per worker)
        return [(1, 50)] if quick else [(1, 10), (1, 50), (1, 200), (2, 50), (2, 200)]

    def describe(self, setting) -> str:
        procs, conc = setting
        return f"{procs} worker process{'es' if procs > 1 else ''} × concurrency {conc}"

    def consumers(self, setting, env: dict) -> Consumers:
        procs, conc = setting
        return Consumers(["bullmq", "--redis", self.redis.addr, "--concurrency", str(conc)], procs, env)

    def stop(self) -> None:
        self.redis.stop()


class PgSystem(System):
    def __init__(self, run):
        self.name = "pg-skip-locked"
        self.pg = Postgres(postgres_bin(), run.workdir, durable=True)
        self.driver = ["pg", "--pg", self.pg.url]
        self.server_pids = [self.pg.proc.pid]
        node_json([*self.driver[:1], "setup", *self.driver[1:]])

    def settings(self, quick: bool) -> list:
        return [4] if quick else [4, 8, 16, 32]

    def describe(self, setting) -> str:
        return f"{setting} consumer connections, 10 per batch"

    def consumers(self, setting, env: dict) -> Consumers:
        return Consumers(["pg", "--pg", self.pg.url, "--consumers", str(setting)], 1, env)

    def reset(self) -> None:
        # Every run starts on a fresh table: run after run on the same one, the deleted
        # rows waiting for autovacuum slowed PostgreSQL down by half, which would make the
        # tuning sweep's first setting win whatever it is.
        node_json([*self.driver[:1], "reset", *self.driver[1:]])

    def stop(self) -> None:
        self.pg.stop()


class QueueScenarios:
    """Mixed into the runner's Run (needs quick, workdir, binary, plots, calibrate)."""

    @staticmethod
    def _install(name: str) -> None:
        """What a contender needs installed; BenchError when it cannot be."""
        if name == "shoal":
            return
        ensure_queue_modules()
        if name.startswith("bullmq-"):
            redis_server_bin()
        elif name == "pg-skip-locked":
            postgres_bin()

    def _system(self, name: str, lat_addr: str) -> System:
        if name == "shoal":
            return ShoalSystem(self, lat_addr)
        if name.startswith("bullmq-"):
            return BullSystem(name.split("-", 1)[1])
        if name == "pg-skip-locked":
            return PgSystem(self)
        raise BenchError(f"unknown queue contender {name}")

    # -- queue throughput ----------------------------------------------------------------
    def queue_throughput(self) -> dict:
        n = 1_000 if self.quick else 50_000
        warm = 200 if self.quick else 5_000
        reps = 1 if self.quick else 3
        rate, seconds, warmup = (200, 2, 1) if self.quick else (1_000, 20, 5)
        batch, senders = 10, 16
        rows: dict[str, dict] = {}
        for c in QUEUE_CONTENDERS:
            port = free_port()
            lat_addr = f"127.0.0.1:{port}"
            env = {"BENCH_LATENCY_ADDR": lat_addr}
            try:
                self._install(c)
            except BenchError as e:
                # A contender whose server or packages could not be installed is skipped
                # and said so, rather than taking the other contenders' numbers down.
                log(f"queue-throughput: skipping {c}: {e}")
                rows[c] = {"skipped": str(e)}
                continue
            load = os.getloadavg()[0]
            system = self._system(c, lat_addr)
            try:
                through = ["throughput", "--batch", str(batch), "--senders", str(senders)]
                drv = [system.driver[0], *through, *system.driver[1:]]

                def measured(setting, consumers) -> dict:
                    pids = system.server_pids + (consumers.pids() if consumers else [])
                    before = tree_cpu_secs(pids)
                    # Shoal: how many instances the function spread over while it ran.
                    sampler = (
                        Sampler(system.target, period=0.5, status_every=1e9)
                        if isinstance(system, ShoalSystem)
                        else None
                    )
                    try:
                        result = node_json([*drv, "--n", str(n)])
                    finally:
                        if sampler:
                            result_peak = sampler.stop().peak_instances()
                    result["cpu_s"] = tree_cpu_secs(pids) - before
                    if sampler:
                        result["peak_instances"] = result_peak
                    log(f"queue-throughput: {c} ({system.describe(setting)}): "
                        f"{result['rate']:,.0f} msg/s end to end, {result['enqueue_rate']:,.0f} msg/s enqueued")
                    return result

                tuning = []
                for setting in system.settings(self.quick):
                    log(f"queue-throughput: {c} ({system.describe(setting)}), warm-up {warm}, then {n}")
                    consumers = system.consumers(setting, env)
                    try:
                        system.reset()
                        node_json([*drv, "--n", str(warm)])
                        tuning.append((setting, measured(setting, consumers)))
                    finally:
                        if consumers:
                            consumers.stop()
                best_setting, best = max(tuning, key=lambda t: t[1]["rate"])
                runs = [best]
                consumers = system.consumers(best_setting, env)
                try:
                    for _ in range(reps - 1):
                        system.reset()
                        node_json([*drv, "--n", str(warm)])
                        runs.append(measured(best_setting, consumers))
                    counters = system.counters()
                    log(f"queue-throughput: {c} latency at {rate} msg/s for {warmup} + {seconds} s")
                    latency = node_json(
                        [
                            system.driver[0],
                            "rate",
                            "--rate", str(rate),
                            "--seconds", str(seconds),
                            "--warmup", str(warmup),
                            "--listen", lat_addr,
                            *system.driver[1:],
                        ]
                    )
                finally:
                    if consumers:
                        consumers.stop()
            finally:
                system.stop()
            rows[c] = {
                "setting": system.describe(best_setting),
                "rate": med([r["rate"] for r in runs]),
                "rates": [r["rate"] for r in runs],
                "enqueue_rate": med([r["enqueue_rate"] for r in runs]),
                "cpu_ms_per_1k": med([r["cpu_s"] / n * 1e6 for r in runs]),
                "driver_cpu_ms_per_1k": med([r["driver_cpu_s"] / n * 1e6 for r in runs]),
                "tuning": [(system.describe(s), r["rate"]) for s, r in tuning],
                "counters": counters,
                "peak_instances": max(
                    (r["peak_instances"] for r in runs if "peak_instances" in r), default=None
                ),
                "load": f"{load:.2f} → {os.getloadavg()[0]:.2f}",
                **{k: latency[k] for k in (
                    "p50_ms", "p99_ms", "max_ms", "ack_p50_ms", "ack_p99_ms",
                    "measured", "recorded", "errors", "achieved_rate",
                )},
            }
        return {
            "n": n,
            "warm": warm,
            "reps": reps,
            "batch": batch,
            "senders": senders,
            "rate": rate,
            "seconds": seconds,
            "warmup": warmup,
            "rows": rows,
        }

    # -- packing of a queue-triggered function -------------------------------------------
    def queue_packing(self) -> dict:
        calibration = self.calibrate()
        lstar = calibration["littles"]
        n = 40 if self.quick else 1_000
        queue = "hello-q"
        rows = {}
        # batch_size 1: each message is one hello call; 10: Lambda's default, one call per
        # ten messages (the hello handler computes and waits once per call).
        for batch in (1, 10):
            for c in ["shoal-auto", "lambda-model"]:
                log(f"queue-packing: {c}, {n} messages for the hello function (batch_size {batch})")
                rows[f"{c}, batch_size {batch}"] = self._drain(c, batch, n, queue)
        mem_kib = next(
            (int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal:")), 0
        )
        return {
            "n": n,
            "lstar": lstar,
            "calibration": calibration,
            # What the daemon's default budget (3/4 of RAM) admits of 512 MiB instances.
            "budget_instances": int(mem_kib * 3 // 4 // (512 * 1024)),
            "rows": rows,
        }

    def _drain(self, contender: str, batch: int, n: int, queue: str) -> dict:
        fn = function_dir(
            self.workdir,
            ROOT / "examples" / "hello",
            f"packing-{contender}",
            manifest(
                "hello",
                "index.helloWorld",
                "",
                SETTINGS[contender],
                trigger=f'events = [{{ queue = "{queue}", batch_size = {batch} }}]',
            ),
        )
        # The host's default memory budget (3/4 of RAM): 1,000 messages at one call per
        # 512 MiB instance would otherwise ask for more memory than the machine has.
        target = Shoal(
            self.binary,
            self.workdir,
            f"packing-{contender}",
            fn,
            "/",
            lift_memory=False,
            before_deploy=lambda t: sqs(
                t,
                "CreateQueue",
                {"QueueName": queue, "Attributes": {"VisibilityTimeout": "720"}},
            ),
        )
        try:
            sampler = Sampler(target, period=0.2, status_every=0.5)
            result = node_json(
                [
                    "shoal", "throughput",
                    "--n", str(n), "--batch", "10", "--senders", "4",
                    "--control", target.control, "--token", target.token, "--queue", queue,
                ]
            )
            sampler.stop()
        finally:
            target.stop()
        in_flight = [
            sum(i.get("in_flight", 0) for p in st.get("pools", []) for i in p.get("instances", []))
            for _, st in sampler.statuses
        ]
        return {
            "contender": contender,
            "batch_size": batch,
            "calls": math.ceil(n / batch),
            "drain_s": result["e2e_s"],
            "peak_instances": sampler.peak_instances(),
            "peak_in_flight": max(in_flight, default=None),
            "peak_pss_mib": sampler.peak_total_kib() / 1024,
            "daemon_mib": max((s["daemon_pss_kib"] for s in sampler.samples), default=0) / 1024,
        }
