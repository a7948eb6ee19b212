"""Measuring: /proc readings, the sampler that follows a contender over a run, the burst
client, oha, and the statistics the report uses."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .common import BenchError

if TYPE_CHECKING:
    from .contenders import Target

def pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (field 3 onwards); empty if unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def clock_secs(fields: list[str], first: int) -> float:
    """Two adjacent clock-tick fields (user + system) in seconds."""
    try:
        return (int(fields[first]) + int(fields[first + 1])) / os.sysconf("SC_CLK_TCK")
    except (IndexError, ValueError):
        return 0.0


def cpu_secs(pid: int) -> float:
    return clock_secs(stat_fields(pid), 11)


def reaped_children_cpu_secs(pid: int) -> float:
    """CPU time of `pid`'s children that have exited and been waited for."""
    return clock_secs(stat_fields(pid), 13)


def runtime_cpu_secs(target: "Target") -> float:
    """CPU time of all the target's runtime processes so far, exited ones included."""
    daemon = target.daemon_pid()
    reaped = reaped_children_cpu_secs(daemon) if daemon else 0.0
    return reaped + sum(cpu_secs(p) for p in target.process_pids())


def descendants(pids: list[int]) -> list[int]:
    """`pids` and every process below them (a sandboxed instance is bubblewrap, its
    reaper, then the runtime and whatever it started)."""
    out = list(pids)
    i = 0
    while i < len(out):
        parent = out[i]
        i += 1
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    out.extend(int(c) for c in f.read().split())
            except OSError:
                pass
    return out


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        fields = stat_fields(int(entry)) if entry.isdigit() else []
        if fields and fields[1] == str(pid):
            out.append(int(entry))
    return out


class Sampler:
    """Samples a target every `period` s: instances, PSS (instances and daemon), status."""

    def __init__(self, target: Target, period=0.2, status_every=1.0):
        self.target = target
        self.period = period
        self.status_every = status_every
        self.samples: list[dict] = []
        self.statuses: list[tuple[float, dict]] = []
        self._stop = threading.Event()
        self.t0 = time.monotonic()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        last_status = -1e9
        while not self._stop.is_set():
            now = time.monotonic() - self.t0
            pids = self.target.instance_pids()
            processes = self.target.process_pids()
            daemon = self.target.daemon_pid()
            self.samples.append(
                {
                    "t": now,
                    "instances": len(pids),
                    "pss_kib": sum(pss_kib(p) for p in processes),
                    "daemon_pss_kib": pss_kib(daemon) if daemon else 0,
                }
            )
            if now - last_status >= self.status_every:
                last_status = now
                status = self.target.status()
                if status is not None:
                    self.statuses.append((now, status))
            self._stop.wait(self.period)

    def stop(self) -> "Sampler":
        self._stop.set()
        self.thread.join()
        return self

    def peak_total_kib(self) -> int:
        return max((s["pss_kib"] + s["daemon_pss_kib"] for s in self.samples), default=0)

    def peak_instances(self) -> int:
        return max((s["instances"] for s in self.samples), default=0)


def get(url: str, timeout=300.0) -> tuple[int, bytes]:
    rest = url.split("://", 1)[1]
    hostport, path = rest.split("/", 1)
    host, port = hostport.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", "/" + path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def burst(url: str, n: int) -> list[dict]:
    """n concurrent requests released together; latency per request, as the seed's client."""
    barrier = threading.Barrier(n)
    results: list[dict | None] = [None] * n

    def one(i: int) -> None:
        barrier.wait()
        start = time.monotonic()
        try:
            status, body = get(url)
        except OSError as e:
            status, body = 0, str(e).encode()
        results[i] = {
            "ms": (time.monotonic() - start) * 1000,
            "status": status,
            "body": body.decode(errors="replace"),
        }

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for r in results if r is not None]


def oha(
    tool: str,
    url: str,
    *,
    seconds: float,
    concurrency: int,
    rate: float | None = None,
    after: float | None = None,
) -> dict:
    """Run oha; with `after`, latency percentiles count only requests scheduled after that
    many seconds (a warm-up), read from oha's per-request SQLite record."""
    # -w: requests still running at the end of the duration finish and count, instead of
    # being cut off and reported as errors.
    args = [tool, "--no-tui", "--output-format", "json", "-w", "-z", f"{seconds}s", "-c", str(concurrency)]
    if rate:
        args += ["-q", str(rate), "--latency-correction"]
    db = None
    if after is not None:
        db = Path(tempfile.mkdtemp(prefix="oha-")) / "requests.db"
        args += ["--db-url", str(db)]
    args += ["-t", "120s", url]
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchError(f"oha failed: {result.stderr.strip()[:400]}")
    data = json.loads(result.stdout[result.stdout.index("{"):])
    summary = data.get("summary", {})
    lat = data.get("latencyPercentiles", {})
    codes = data.get("statusCodeDistribution", {})
    ok = int(codes.get("200", 0))
    total = sum(int(v) for v in codes.values()) + sum(
        int(v) for v in data.get("errorDistribution", {}).values()
    )
    out = {
        "rps": summary.get("requestsPerSec") or 0.0,
        "ok_rps": ok / seconds,
        "p50_ms": (lat.get("p50") or 0) * 1000,
        "p99_ms": (lat.get("p99") or 0) * 1000,
        "ok": ok,
        "total": total,
        "codes": codes,
        "errors": data.get("errorDistribution", {}),
    }
    if db is not None:
        with sqlite3.connect(db) as conn:
            rows = conn.execute(
                "SELECT coalesce(start_latency_correction, start), end, status FROM oha"
            ).fetchall()
        shutil.rmtree(db.parent, ignore_errors=True)
        measured = [(end - start) * 1000 for start, end, status in rows if start >= after and status == 200]
        out["all_p99_ms"] = out["p99_ms"]
        out["p50_ms"] = pct(measured, 50)
        out["p99_ms"] = pct(measured, 99)
        out["measured"] = len(measured)
        out["latencies"] = measured
    return out


def oha_requests(
    tool: str, url: str, *, seconds: float, concurrency: int, rate: float, with_start: bool = False
) -> list[tuple]:
    """Every request of an oha run at a fixed rate: (status, latency ms) and, with
    `with_start`, the second it was scheduled at (from the run's start). Errors (no
    status: a connection cut, oha's own timeout) have status 0."""
    db = Path(tempfile.mkdtemp(prefix="oha-")) / "requests.db"
    args = [tool, "--no-tui", "--output-format", "json", "-w", "-z", f"{seconds}s", "-c", str(concurrency)]
    args += ["-q", str(rate), "--latency-correction", "--db-url", str(db), "-t", "120s", url]
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchError(f"oha failed: {result.stderr.strip()[:400]}")
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT coalesce(start_latency_correction, start), end, status FROM oha"
        ).fetchall()
    shutil.rmtree(db.parent, ignore_errors=True)
    first = min((start for start, _, _ in rows), default=0.0)
    out = []
    for start, end, status in rows:
        item = (int(status or 0), (end - start) * 1000)
        out.append(item + (start - first,) if with_start else item)
    return out


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-p * len(ordered) // 100))))
    return ordered[rank - 1]


def med(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def limit_timeline(statuses: list[tuple[float, dict]]) -> list[tuple[float, float]]:
    out = []
    for t, status in statuses:
        limits = [
            i["limit"]
            for p in status.get("pools", [])
            for i in p.get("instances", [])
            if i.get("state") == "ready"
        ]
        if limits:
            out.append((t, sum(limits) / len(limits)))
    return out


def settle_time(limits: list[tuple[float, float]], lstar: float) -> float | None:
    """First time after which the mean limit stays within ±25 % of L* to the end."""
    settled = None
    for t, limit in limits:
        inside = 0.75 * lstar <= limit <= 1.25 * lstar
        if inside and settled is None:
            settled = t
        elif not inside:
            settled = None
    return settled
