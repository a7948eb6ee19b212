"""The change-stream scenario: postgres data-change triggers, commit to handler. Saturation
(a burst of bulk-committed changes, drained), latency at a fixed rate of single-row
commits, and instances for an I/O-bound handler with `concurrency = "auto"` against
`concurrency = 1`. PostgreSQL runs durable (fsync on); the writer is psql over loopback."""

from __future__ import annotations

import math
import socket
import subprocess
import threading
import time

from .common import BENCH, SETTINGS, BenchError, log
from .contenders import Shoal, function_dir, manifest
from .measure import Sampler, med
from .tools import Postgres, postgres_bin

SINK = BENCH / "functions" / "change-sink"


class Receiver:
    """Collects the sink's datagrams: record counts, latencies, arrival times."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.addr = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.lock = threading.Lock()
        self.count = 0
        self.batches = 0
        self.latencies: list[float] = []
        self.last_at = 0.0
        self.sock.settimeout(0.2)
        self.stopped = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped:
            try:
                data = self.sock.recv(1 << 16)
            except socket.timeout:
                continue
            n, _, lat = data.decode().partition(" ")
            with self.lock:
                self.count += int(n)
                self.batches += 1
                self.latencies.extend(float(x) for x in lat.split(",") if x)
                self.last_at = time.monotonic()

    def reset(self) -> None:
        with self.lock:
            self.count = 0
            self.batches = 0
            self.latencies = []

    def wait_for(self, n: int, limit: float) -> None:
        deadline = time.monotonic() + limit
        while self.count < n:
            if time.monotonic() > deadline:
                raise BenchError(f"change-stream: only {self.count} of {n} changes reached the handler")
            time.sleep(0.02)

    def stop(self) -> None:
        self.stopped = True
        self.thread.join()
        self.sock.close()


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(math.ceil(p / 100 * len(s))) - 1)]


class ChangeScenarios:
    def change_stream(self) -> dict:
        bindir = postgres_bin()
        pg = Postgres(bindir, self.workdir, durable=True)
        try:
            return self._change_stream(pg)
        finally:
            pg.stop()

    def _psql(self, pg: Postgres, sql: str) -> None:
        result = subprocess.run(
            ["psql", pg.url, "-AtXq", "-v", "ON_ERROR_STOP=1", "-c", sql], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise BenchError(f"psql failed: {result.stderr.strip()[-400:]}")

    def _target(self, pg: Postgres, contender: str, receiver: Receiver, sleep_ms: int, batch: int, table: str) -> Shoal:
        trigger = (
            f'events = [{{ postgres = {{ url_env = "DATABASE_URL", table = "public.{table}", '
            f'operations = ["INSERT"], batch_size = {batch}, parallelization_factor = 10 }} }}]'
        )
        env = (
            f'env = {{ DATABASE_URL = "{pg.url}", BENCH_LATENCY_ADDR = "{receiver.addr}", '
            f'SINK_SLEEP_MS = "{sleep_ms}" }}'
        )
        fn = function_dir(
            self.workdir,
            SINK,
            f"changes-{contender}",
            manifest("sink", "index.handler", "", SETTINGS[contender], extra=env, trigger=trigger),
        )
        return Shoal(self.binary, self.workdir, f"changes-{contender}", fn, "/")

    def _paced_inserts(self, pg: Postgres, table: str, rate: float, seconds: float, start_id: int) -> int:
        """Single-row autocommit inserts at `rate` per second through one psql session."""
        psql = subprocess.Popen(
            ["psql", pg.url, "-AtXq"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
        )
        n = int(rate * seconds)
        started = time.monotonic()
        for i in range(n):
            due = started + i / rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            psql.stdin.write(f"INSERT INTO {table} VALUES ({start_id + i}, 'x');\n")
            psql.stdin.flush()
        psql.stdin.close()
        psql.wait()
        return n

    def _change_stream(self, pg: Postgres) -> dict:
        quick = self.quick
        for table in ("sat", "sat_plain", "paced", "io_auto", "io_one"):
            self._psql(pg, f"CREATE TABLE {table} (id bigint PRIMARY KEY, pad text)")
        receiver = Receiver()
        out: dict = {}
        try:
            # 1. Saturation: bulk commits (1,000 rows each) as fast as psql goes, drained.
            n = 2_000 if quick else 50_000

            def bulk(table: str) -> None:
                statements = "".join(
                    f"BEGIN; INSERT INTO {table} SELECT g, repeat('x', 100) FROM generate_series({i}, {i + 999}) g; COMMIT;\n"
                    for i in range(0, n, 1000)
                )
                subprocess.run(["psql", pg.url, "-AtXq", "-v", "ON_ERROR_STOP=1"], input=statements, text=True, check=True, capture_output=True)

            # What capturing costs the writer: the same commits on a table nobody watches.
            plain_started = time.monotonic()
            bulk("sat_plain")
            plain_s = time.monotonic() - plain_started
            target = self._target(pg, "shoal-auto", receiver, 0, 100, "sat")
            try:
                log(f"change-stream: saturation, {n:,} changes in transactions of 1,000 rows")
                started = time.monotonic()
                bulk("sat")
                committed = time.monotonic()
                receiver.wait_for(n, 600)
                drained = receiver.last_at
                out["saturation"] = {
                    "n": n,
                    "commit_s": committed - started,
                    "commit_plain_s": plain_s,
                    "drain_s": drained - started,
                    "rate": n / (drained - started),
                    "batches": receiver.batches,
                    "p50_ms": pct(receiver.latencies, 50),
                    "p99_ms": pct(receiver.latencies, 99),
                }
            finally:
                target.stop()
            receiver.reset()

            # 2. Latency at a fixed rate: single-row autocommit inserts.
            rate, seconds = (50, 3) if quick else (500, 20)
            target = self._target(pg, "shoal-auto", receiver, 0, 100, "paced")
            try:
                log(f"change-stream: latency at {rate} commits/s for {seconds} s")
                self._paced_inserts(pg, "paced", rate / 10, 1, 0)  # warm-up
                receiver.wait_for(int(rate / 10), 60)
                receiver.reset()
                n = self._paced_inserts(pg, "paced", rate, seconds, 1_000_000)
                receiver.wait_for(n, 120)
                out["fixed_rate"] = {
                    "rate": rate,
                    "seconds": seconds,
                    "n": n,
                    "p50_ms": pct(receiver.latencies, 50),
                    "p99_ms": pct(receiver.latencies, 99),
                    "max_ms": max(receiver.latencies, default=None),
                    "batches": receiver.batches,
                }
            finally:
                target.stop()
            receiver.reset()

            # 3. Instances for an I/O-bound handler (waits 200 ms per batch).
            rate, seconds = (50, 3) if quick else (300, 20)
            rows = {}
            for contender, table in (("shoal-auto", "io_auto"), ("lambda-model", "io_one")):
                target = self._target(pg, contender, receiver, 200, 10, table)
                try:
                    log(f"change-stream: I/O-bound handler, {contender}, {rate} commits/s for {seconds} s")
                    sampler = Sampler(target, period=0.2, status_every=0.5)
                    n = self._paced_inserts(pg, table, rate, seconds, 0)
                    receiver.wait_for(n, 180)
                    sampler.stop()
                    rows[contender] = {
                        "n": n,
                        "peak_instances": sampler.peak_instances(),
                        "peak_pss_mib": sampler.peak_total_kib() / 1024,
                        "p50_ms": pct(receiver.latencies, 50),
                        "p99_ms": pct(receiver.latencies, 99),
                        "batches": receiver.batches,
                    }
                finally:
                    target.stop()
                receiver.reset()
            out["io_bound"] = {"rate": rate, "seconds": seconds, "sleep_ms": 200, "rows": rows}
        finally:
            receiver.stop()
        return out
