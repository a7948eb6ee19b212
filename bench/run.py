#!/usr/bin/env python3
"""Shoal's benchmark runner: the seed's experiment and its follow-ups, side by side.

Every scenario runs every contender in the same run (alternating repetitions where order
could matter) and reports medians and ratios. Load comes from real HTTP clients: the
bursts are concurrent `curl`-style requests from threads (so each response's instance id
can be read, as the seed did), fixed-rate and closed-loop load comes from `oha`.

    python3 bench/run.py                 # everything, writes docs/BENCHMARKS.md + plots
    python3 bench/run.py --quick         # seconds-long smoke run (CI), writes to bench/out/
    python3 bench/run.py --only sustained,cpu-heavy

Contenders (see docs/BENCHMARKS.md):
  direct         the seed's node-hello: one plain Node.js server calling the handler
  lambda-model   Shoal with concurrency = 1 (one invocation per instance, as Lambda)
  fixed-80       Shoal with concurrency = 80 (Cloud Run's default)
  shoal-auto     Shoal with its defaults (concurrency = "auto")
  capped-serial  Shoal with concurrency = 1, max_instances = 4 (the seed's "other clouds")

Standard library only; the plots come from bench/svgplot.py.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
import svgplot  # noqa: E402

CONTENDERS = ["direct", "lambda-model", "fixed-80", "shoal-auto", "capped-serial"]
# Manifest settings per Shoal contender.
SETTINGS = {
    "lambda-model": {"concurrency": "1"},
    "fixed-80": {"concurrency": "80"},
    "shoal-auto": {"concurrency": '"auto"'},
    "capped-serial": {"concurrency": "1", "max_instances": "4"},
}
SEED_REFERENCE = (
    "The seed's own figures, for reference (2018, AWS us-east-1 and a VM): Lambda, "
    "10 concurrent calls: 10 instances, 2.7–3.4 s; direct Node on a VM: 1 instance, "
    "2.3–3.1 s; other clouds with 4 instances: 3.4–8.9 s; Lambda, 100 concurrent: "
    "100 instances, 3–5 s."
)
OHA_VERSION = "1.16.0"


class BenchError(Exception):
    """A missing tool or a contender that did not work: stops the run with a clear line."""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------
# Tools


def find_oha() -> str:
    for candidate in [shutil.which("oha"), str(Path.home() / ".cargo/bin/oha")]:
        if candidate and Path(candidate).exists():
            return candidate
    log(f"oha (the load generator) is not installed: cargo install oha@{OHA_VERSION} --locked")
    result = subprocess.run(
        ["cargo", "install", "--locked", "--quiet", f"oha@{OHA_VERSION}"], check=False
    )
    oha = Path.home() / ".cargo/bin/oha"
    if result.returncode != 0 or not oha.exists():
        raise BenchError(
            "oha is missing and `cargo install oha --locked` failed; install it "
            "(crates.io) or put it on PATH"
        )
    return str(oha)


def shoal_binary(release: bool) -> str:
    profile = ["--release"] if release else []
    log(f"building shoal ({'release' if release else 'debug'})")
    subprocess.run(
        ["cargo", "build", "--quiet", "--locked", "--bin", "shoal", *profile],
        cwd=ROOT,
        check=True,
    )
    return str(ROOT / "target" / ("release" if release else "debug") / "shoal")


def postgres_bin() -> Path:
    for base in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (base / "postgres").exists():
            return base
    log("PostgreSQL is not installed: apt-get install postgresql")
    subprocess.run(["apt-get", "update", "-qq"], check=False)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "postgresql"],
        check=False,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    for base in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (base / "postgres").exists():
            return base
    raise BenchError("PostgreSQL server binaries not found under /usr/lib/postgresql")


def ensure_pg_module() -> None:
    fn = BENCH / "functions" / "db"
    if (fn / "node_modules" / "pg").exists():
        return
    log("installing the pg npm package for the db function")
    result = subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--silent"], cwd=fn, check=False
    )
    if result.returncode != 0:
        raise BenchError("`npm install` of pg failed in bench/functions/db")


# ---------------------------------------------------------------------------------------
# /proc readings


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
    return reaped + sum(cpu_secs(p) for p in target.instance_pids())


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        fields = stat_fields(int(entry)) if entry.isdigit() else []
        if fields and fields[1] == str(pid):
            out.append(int(entry))
    return out


# ---------------------------------------------------------------------------------------
# Contenders


class Target:
    """One running contender: a Shoal daemon with one function, or the direct server."""

    name: str
    url: str
    pid: int

    def instance_pids(self) -> list[int]:
        raise NotImplementedError

    def daemon_pid(self) -> int | None:
        return None

    def status(self) -> dict | None:
        return None

    def stop(self) -> None:
        raise NotImplementedError


class Direct(Target):
    def __init__(self, fn_dir: Path, module: str, export: str, path: str, env=None):
        self.name = "direct"
        self.proc = subprocess.Popen(
            ["node", str(BENCH / "direct" / "server.js"), str(fn_dir), module, export],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **(env or {})},
        )
        line = self.proc.stdout.readline()
        if not line.startswith("listening "):
            raise BenchError(f"direct server for {fn_dir} did not start: {line!r}")
        self.url = f"http://127.0.0.1:{line.split()[1]}{path}"
        self.pid = self.proc.pid

    def instance_pids(self) -> list[int]:
        return [self.pid]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Shoal(Target):
    def __init__(self, binary: str, workdir: Path, name: str, fn_dir: Path, path: str):
        self.name = name
        self.binary = binary
        self.data = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=workdir))
        self.log = open(self.data / "daemon.log", "w")
        # Lambda's model reserves every instance's memory size; with the host's default
        # budget the 100-burst of 512 MiB instances would queue. Lift the memory bound so
        # each contender runs its own model.
        self.proc = subprocess.Popen(
            [
                binary,
                "--data-dir",
                str(self.data),
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--control-listen",
                "127.0.0.1:0",
                "--max-memory-mib",
                "1048576",
                "--shutdown-grace",
                "5",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.pid = self.proc.pid
        deadline = time.time() + 30
        while not (self.data / "gateway-addr").exists() or not (self.data / "control-addr").exists():
            if self.proc.poll() is not None or time.time() > deadline:
                raise BenchError(f"shoal serve did not start; see {self.data / 'daemon.log'}")
            time.sleep(0.05)
        time.sleep(0.05)
        self.gateway = (self.data / "gateway-addr").read_text().strip()
        self.control = (self.data / "control-addr").read_text().strip()
        self.token = (self.data / "admin-token").read_text().strip()
        deploy = subprocess.run(
            [binary, "--data-dir", str(self.data), "deploy", str(fn_dir)],
            capture_output=True,
            text=True,
        )
        if deploy.returncode != 0:
            self.stop()
            raise BenchError(f"deploy of {fn_dir} failed: {deploy.stderr.strip()}")
        self.url = f"http://{self.gateway}{path}"

    def daemon_pid(self) -> int | None:
        return self.pid

    def instance_pids(self) -> list[int]:
        return children(self.pid)

    def status(self) -> dict | None:
        host, port = self.control.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            conn.request("GET", "/admin/status", headers={"authorization": f"Bearer {self.token}"})
            return json.loads(conn.getresponse().read())
        except (OSError, ValueError):
            return None
        finally:
            conn.close()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def function_dir(workdir: Path, source: Path, contender: str, manifest: str) -> Path:
    """A copy of `source` with a shoal.toml for this contender."""
    dest = Path(tempfile.mkdtemp(prefix=f"fn-{contender}-", dir=workdir))
    shutil.copytree(source, dest, dirs_exist_ok=True, symlinks=True)
    (dest / "shoal.toml").write_text(manifest)
    return dest


def manifest(name: str, handler: str, path: str, settings: dict, runtime="nodejs", extra="") -> str:
    lines = [f"[functions.{name}]", f'runtime = "{runtime}"']
    if runtime == "nodejs":
        lines.append(f'handler = "{handler}"')
    lines += ['memory = "512MiB"', 'timeout = "120s"']
    lines += [f"{k} = {v}" for k, v in settings.items()]
    lines.append(extra) if extra else None
    lines.append(f'http = [{{ method = "GET", path = "{path}" }}]')
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------
# Sampling and load


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
            daemon = self.target.daemon_pid()
            self.samples.append(
                {
                    "t": now,
                    "instances": len(pids),
                    "pss_kib": sum(pss_kib(p) for p in pids),
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
        import sqlite3

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


# ---------------------------------------------------------------------------------------
# Scenarios


class Run:
    def __init__(self, args):
        self.quick = args.quick
        self.workdir = Path(tempfile.mkdtemp(prefix="shoal-bench-"))
        self.binary = shoal_binary(release=not args.quick)
        self.oha = None
        self.results: dict[str, dict] = {}
        out = Path(args.out)
        self.report_dir = out.parent if out.suffix == ".md" else out
        self.plots = self.report_dir / "plots"
        self.plots.mkdir(parents=True, exist_ok=True)

    def load_tool(self) -> str:
        if self.oha is None:
            self.oha = find_oha()
        return self.oha

    def hello(self, contender: str) -> Target:
        src = ROOT / "examples" / "hello"
        if contender == "direct":
            return Direct(src, "index.js", "helloWorld", "/helloWorld")
        fn = function_dir(
            self.workdir,
            src,
            contender,
            manifest("hello", "index.helloWorld", "/helloWorld", SETTINGS[contender]),
        )
        return Shoal(self.binary, self.workdir, contender, fn, "/helloWorld")

    # -- seed bursts ---------------------------------------------------------------------
    def seed_burst(self, key: str, n: int) -> dict:
        reps = 1 if self.quick else 3
        per: dict[str, list[dict]] = {c: [] for c in CONTENDERS}
        latencies: dict[str, list[float]] = {c: [] for c in CONTENDERS}
        for rep in range(reps):
            order = CONTENDERS if rep % 2 == 0 else list(reversed(CONTENDERS))
            for c in order:
                log(f"{key}: {c} (n={n}, repetition {rep + 1}/{reps})")
                target = self.hello(c)
                try:
                    sampler = Sampler(target, period=0.1, status_every=1e9)
                    results = burst(target.url, n)
                    time.sleep(0.3)
                    sampler.stop()
                finally:
                    target.stop()
                ok = [r for r in results if r["status"] == 200]
                ms = [r["ms"] for r in ok]
                ids = {r["body"].split(",")[0] for r in ok}
                latencies[c] += ms
                per[c].append(
                    {
                        "ok": len(ok),
                        "instances": len(ids),
                        "min": min(ms, default=float("nan")),
                        "median": med(ms),
                        "p99": pct(ms, 99),
                        "max": max(ms, default=float("nan")),
                        "pss_mib": sampler.peak_total_kib() / 1024,
                        "daemon_mib": max((s["daemon_pss_kib"] for s in sampler.samples), default=0)
                        / 1024,
                    }
                )
        rows = {
            c: {k: med([r[k] for r in runs]) for k in runs[0]} for c, runs in per.items() if runs
        }
        plot = self.plots / f"{key}-latency.svg"
        svgplot.cdf_chart(
            plot,
            f"{key}: latency of {n} concurrent requests ({reps} repetition(s) pooled)",
            "latency (ms)",
            latencies,
        )
        return {"n": n, "reps": reps, "rows": rows, "plot": plot}

    # -- overhead ------------------------------------------------------------------------
    def overhead(self) -> dict:
        tool = self.load_tool()
        levels = [1, 8] if self.quick else [1, 16, 64]
        seconds = 2 if self.quick else 10
        reps = 1 if self.quick else 2
        noop = BENCH / "functions" / "noop"
        contenders = ["direct", "shoal-native", "shoal-provided"]
        raw: dict[str, dict[int, list[dict]]] = {c: {l: [] for l in levels} for c in contenders}
        for rep in range(reps):
            for c in contenders if rep % 2 == 0 else list(reversed(contenders)):
                log(f"overhead: {c} (repetition {rep + 1}/{reps})")
                if c == "direct":
                    target: Target = Direct(noop, "index.js", "handler", "/noop")
                elif c == "shoal-native":
                    fn = function_dir(
                        self.workdir, noop, c, manifest("noop", "index.handler", "/noop", {})
                    )
                    target = Shoal(self.binary, self.workdir, c, fn, "/noop")
                else:
                    fn = function_dir(
                        self.workdir,
                        BENCH / "functions" / "noop-provided",
                        c,
                        manifest("noop", "", "/noop", {"max_concurrency": "64"}, runtime="provided"),
                    )
                    target = Shoal(self.binary, self.workdir, c, fn, "/noop")
                try:
                    get(target.url)  # warm: the cold start is its own scenario
                    oha(tool, target.url, seconds=1, concurrency=max(levels))
                    for level in levels:
                        # Where the CPU goes: the daemon vs the runtime instance(s) vs
                        # the load generator, per request.
                        daemon = target.daemon_pid()
                        before = (runtime_cpu_secs(target), cpu_secs(daemon) if daemon else 0.0)
                        result = oha(tool, target.url, seconds=seconds, concurrency=level)
                        after = (runtime_cpu_secs(target), cpu_secs(daemon) if daemon else 0.0)
                        n = max(1, result["ok"])
                        result["runtime_us"] = (after[0] - before[0]) / n * 1e6
                        result["daemon_us"] = (after[1] - before[1]) / n * 1e6
                        raw[c][level].append(result)
                finally:
                    target.stop()
        rows = {
            c: {
                l: {
                    k: med([r[k] for r in runs])
                    for k in ("rps", "p50_ms", "p99_ms", "runtime_us", "daemon_us")
                }
                | {"ok": sum(r["ok"] for r in runs), "total": sum(r["total"] for r in runs)}
                for l, runs in by_level.items()
            }
            for c, by_level in raw.items()
        }
        plot = self.plots / "overhead-throughput.svg"
        svgplot.bar_chart(
            plot,
            f"overhead: no-op throughput by concurrency ({seconds} s per level)",
            "requests per second",
            [f"{l} concurrent" for l in levels],
            {c: [rows[c][l]["rps"] for l in levels] for c in contenders},
        )
        return {"levels": levels, "seconds": seconds, "reps": reps, "rows": rows, "plot": plot}

    # -- cold start ----------------------------------------------------------------------
    def cold_start(self) -> dict:
        reps = 2 if self.quick else 5
        hello = ROOT / "examples" / "hello"
        noop = BENCH / "functions" / "noop"
        out: dict[str, dict[str, list[float]]] = {}
        for fn_name, src, handler, path in [
            ("hello", hello, "index.helloWorld", "/helloWorld"),
            ("noop", noop, "index.handler", "/noop"),
        ]:
            times: dict[str, list[float]] = {"node require": [], "direct": [], "shoal-auto": []}
            for rep in range(reps):
                log(f"cold-start: {fn_name} (repetition {rep + 1}/{reps})")
                start = time.monotonic()
                subprocess.run(
                    ["node", "-e", f"require({json.dumps(str(src / 'index.js'))})"], check=True
                )
                times["node require"].append((time.monotonic() - start) * 1000)
                # direct: start the server, first response (hello's 2 s wait excluded below).
                start = time.monotonic()
                direct = Direct(src, "index.js", handler.split(".")[1], path)
                status, _ = get(direct.url)
                direct_ms = (time.monotonic() - start) * 1000
                direct.stop()
                fn = function_dir(self.workdir, src, "cold", manifest(fn_name, handler, path, {}))
                shoal = Shoal(self.binary, self.workdir, "cold", fn, path)
                try:
                    if shoal.instance_pids():
                        raise BenchError("cold-start: an instance was running before the request")
                    start = time.monotonic()
                    status2, _ = get(shoal.url)
                    shoal_ms = (time.monotonic() - start) * 1000
                finally:
                    shoal.stop()
                if status != 200 or status2 != 200:
                    raise BenchError(f"cold-start {fn_name}: statuses {status}, {status2}")
                wait = 2000 if fn_name == "hello" else 0
                times["direct"].append(direct_ms - wait)
                times["shoal-auto"].append(shoal_ms - wait)
            out[fn_name] = times
        return {"reps": reps, "rows": {f: {k: med(v) for k, v in t.items()} for f, t in out.items()}}

    # -- sustained -----------------------------------------------------------------------
    def calibrate(self) -> dict:
        """CPU per hello call and its uncontended latency, from the direct server."""
        direct = Direct(ROOT / "examples" / "hello", "index.js", "helloWorld", "/helloWorld")
        try:
            for _ in range(3):  # let V8 optimise the loop first
                get(direct.url)
            walls = []
            for _ in range(3):
                start = time.monotonic()
                get(direct.url)
                walls.append(time.monotonic() - start)
            cpu0 = cpu_secs(direct.pid)
            rounds = 1 if self.quick else 3
            for _ in range(rounds):
                burst(direct.url, 10)
            cpu = (cpu_secs(direct.pid) - cpu0) / (10 * rounds)
        finally:
            direct.stop()
        wall = statistics.median(walls)
        return {"cpu_ms": cpu * 1000, "wall_ms": wall * 1000, "littles": 0.8 * wall / cpu}

    def sustained(self, calibration: dict) -> dict:
        tool = self.load_tool()
        seconds = 6 if self.quick else 60
        warmup = 2 if self.quick else 20
        # About 80 % of what one instance (one core) can compute; the quick mode only
        # checks the harness, at a rate capped-serial drains in seconds.
        rate = max(1, round(0.8 * 1000 / calibration["cpu_ms"]))
        if self.quick:
            rate = min(rate, 2)
        rows, timelines, limits, latencies, measured, memory = {}, {}, {}, {}, {}, {}
        for c in CONTENDERS:
            log(f"sustained: {c}, {rate} req/s for {seconds} s")
            target = self.hello(c)
            try:
                sampler = Sampler(target, period=0.5, status_every=1.0)
                result = oha(
                    tool,
                    target.url,
                    seconds=warmup + seconds,
                    concurrency=max(64, rate * 6),
                    rate=rate,
                    after=warmup,
                )
                sampler.stop()
            finally:
                target.stop()
            latencies[c] = result.pop("latencies")
            period = 0.5
            timelines[c] = [(x["t"], x["instances"]) for x in sampler.samples]
            memory[c] = [
                (x["t"], (x["pss_kib"] + x["daemon_pss_kib"]) / 1024) for x in sampler.samples
            ]
            # Instance-seconds, GB-seconds and flatness over the measured window only.
            sampler.samples = [x for x in sampler.samples if x["t"] >= warmup]
            measured[c] = [x["instances"] for x in sampler.samples]
            inst_secs = sum(s["instances"] for s in sampler.samples) * period
            gb_secs = sum((s["pss_kib"] + s["daemon_pss_kib"]) for s in sampler.samples) * period / 1024 / 1024
            rows[c] = {
                **result,
                "instance_s": inst_secs,
                "gb_s": gb_secs,
                "peak_instances": sampler.peak_instances(),
                "peak_pss_mib": sampler.peak_total_kib() / 1024,
            }
            if c == "shoal-auto":
                limits = limit_timeline(sampler.statuses)
        lstar = calibration["littles"]
        settle = settle_time(limits, lstar)
        measured_instances = measured.get("shoal-auto", [])
        plot_cdf = self.plots / "sustained-latency.svg"
        svgplot.cdf_chart(
            plot_cdf,
            f"sustained: latency at {rate} req/s after a {warmup} s warm-up",
            "latency (ms)",
            latencies,
            log_x=True,
        )
        plot_inst = self.plots / "sustained-instances.svg"
        svgplot.line_chart(
            plot_inst,
            f"sustained: instances over time at {rate} req/s",
            "seconds",
            "instances",
            timelines,
            step=True,
        )
        plot_mem = self.plots / "sustained-memory.svg"
        svgplot.line_chart(
            plot_mem,
            f"sustained: memory over time at {rate} req/s (PSS of instances + daemon)",
            "seconds",
            "MiB",
            memory,
        )
        plot_limit = self.plots / "sustained-auto-limit.svg"
        svgplot.line_chart(
            plot_limit,
            f"sustained: shoal-auto per-instance limit vs Little's law ({lstar:.0f})",
            "seconds",
            "in-flight limit",
            {
                "mean limit of ready instances": limits,
                "Little's-law optimum": [(0, lstar), (warmup + seconds, lstar)],
                "+25 %": [(0, lstar * 1.25), (warmup + seconds, lstar * 1.25)],
                "-25 %": [(0, lstar * 0.75), (warmup + seconds, lstar * 0.75)],
            },
        )
        return {
            "rate": rate,
            "seconds": seconds,
            "rows": rows,
            "littles": lstar,
            "settle_s": settle,
            "final_limit": limits[-1][1] if limits else float("nan"),
            "warmup": warmup,
            "auto_instances_measured": (
                min(measured_instances, default=0),
                max(measured_instances, default=0),
            ),
            "plots": [plot_cdf, plot_inst, plot_mem, plot_limit],
        }

    # -- CPU-heavy -----------------------------------------------------------------------
    def cpu_heavy(self) -> dict:
        tool = self.load_tool()
        seconds = 6 if self.quick else 40
        warmup = 2 if self.quick else 10
        rate = 8  # 8 × 200 ms = 1.6 cores of work per second: more than one event loop
        src = BENCH / "functions" / "cpu"
        rows = {}
        limit_series = {}
        for c in ["shoal-auto", "fixed-80"]:
            log(f"cpu-heavy: {c}, {rate} req/s for {warmup} + {seconds} s")
            fn = function_dir(
                self.workdir, src, c, manifest("cpu", "index.handler", "/cpu", SETTINGS[c])
            )
            target = Shoal(self.binary, self.workdir, c, fn, "/cpu")
            try:
                sampler = Sampler(target, period=0.5, status_every=1.0)
                result = oha(
                    tool, target.url, seconds=warmup + seconds, concurrency=64, rate=rate, after=warmup
                )
                sampler.stop()
            finally:
                target.stop()
            result.pop("latencies")
            measured = [(t, st) for t, st in sampler.statuses if t >= warmup]
            limits = [
                i["limit"]
                for _, st in measured
                for p in st.get("pools", [])
                for i in p.get("instances", [])
                if i.get("state") == "ready"
            ]
            counts = [
                sum(1 for p in st.get("pools", []) for i in p.get("instances", []) if i.get("state") == "ready")
                for _, st in measured
            ]
            busy = [
                i["cpu_busy"]
                for _, st in measured
                for p in st.get("pools", [])
                for i in p.get("instances", [])
                if i.get("cpu_busy") is not None
            ]
            rows[c] = {
                **result,
                "limit_median": med(limits),
                "limit_range": (min(limits, default=0), max(limits, default=0)),
                "instances_median": med(counts),
                # Only auto-tuned instances are sampled for CPU; n/a for fixed limits.
                "busy_sum_median": med(
                    [
                        sum(i["cpu_busy"] for p in st.get("pools", []) for i in p.get("instances", []) if i.get("cpu_busy") is not None)
                        for _, st in measured
                    ]
                )
                if busy
                else float("nan"),
                "busy_max": max(busy, default=0.0),
            }
            limit_series[c] = limit_timeline(sampler.statuses)
        plot = self.plots / "cpu-heavy-limit.svg"
        svgplot.line_chart(
            plot,
            "cpu-heavy: mean per-instance limit over time (200 ms of CPU per call)",
            "seconds",
            "in-flight limit",
            {"shoal-auto": limit_series["shoal-auto"]},
            step=True,
        )
        return {"rate": rate, "seconds": seconds, "warmup": warmup, "rows": rows, "plot": plot}

    # -- scale to zero -------------------------------------------------------------------
    def scale_to_zero(self) -> dict:
        idle = 3 if self.quick else 10
        src = ROOT / "examples" / "hello"
        fn = function_dir(
            self.workdir,
            src,
            "idle",
            manifest("hello", "index.helloWorld", "/helloWorld", {"idle_timeout": f'"{idle}s"'}),
        )
        target = Shoal(self.binary, self.workdir, "scale-to-zero", fn, "/helloWorld")
        try:
            log(f"scale-to-zero: burst of 20, then idle (idle_timeout {idle} s)")
            first = burst(target.url, 20)
            peak = len(target.instance_pids())
            last_response = time.monotonic()
            while target.instance_pids():
                if time.monotonic() - last_response > idle + 30:
                    raise BenchError("scale-to-zero: instances still running 30 s after idle_timeout")
                time.sleep(0.1)
            zero_after = time.monotonic() - last_response
            status = target.status() or {}
            decision = next((p["last_decision"] for p in status.get("pools", [])), "")
            start = time.monotonic()
            code, body = get(target.url)
            cold_ms = (time.monotonic() - start) * 1000
        finally:
            target.stop()
        return {
            "idle_timeout": idle,
            "burst_ok": sum(r["status"] == 200 for r in first),
            "peak_instances": peak,
            "zero_after_s": zero_after,
            "decision": decision,
            "next_status": code,
            "next_ms": cold_ms,
            "next_body": body.decode(errors="replace").strip(),
        }

    # -- db connections ------------------------------------------------------------------
    def db_connections(self) -> dict:
        ensure_pg_module()
        pg = Postgres(postgres_bin(), self.workdir)
        n = 20 if self.quick else 100
        rows = {}
        try:
            src = BENCH / "functions" / "db"
            env = {"DATABASE_URL": pg.url}
            for c in CONTENDERS:
                log(f"db-connections: {c}, burst of {n}")
                if c == "direct":
                    target: Target = Direct(src, "index.js", "handler", "/db", env=env)
                else:
                    fn = function_dir(
                        self.workdir,
                        src,
                        c,
                        manifest(
                            "db",
                            "index.handler",
                            "/db",
                            SETTINGS[c],
                            extra=f'env = {{ DATABASE_URL = "{pg.url}" }}',
                        ),
                    )
                    target = Shoal(self.binary, self.workdir, c, fn, "/db")
                try:
                    rows[c] = {}
                    # A cold burst, then the same burst again on the instances it left.
                    for phase in ("cold", "warm"):
                        peak = [0]
                        stop = threading.Event()

                        def watch():
                            while not stop.is_set():
                                peak[0] = max(peak[0], pg.connections())
                                stop.wait(0.05)

                        watcher = threading.Thread(target=watch, daemon=True)
                        watcher.start()
                        results = burst(target.url, n)
                        time.sleep(0.5)  # pools keep their connections open (10 s idle)
                        stop.set()
                        watcher.join()
                        ok = [r for r in results if r["status"] == 200]
                        ms = [r["ms"] for r in ok]
                        rows[c][phase] = {
                            "ok": len(ok),
                            "errors": n - len(ok),
                            "peak_connections": peak[0],
                            "instances": len(target.instance_pids()),
                            "used": len({r["body"].split(",")[0] for r in ok}),
                            "median": med(ms),
                            "p99": pct(ms, 99),
                        }
                finally:
                    target.stop()
                time.sleep(0.5)  # let the server reap the closed connections
        finally:
            pg.stop()
        return {"n": n, "rows": rows, "max_connections": Postgres.MAX_CONNECTIONS}


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


class Postgres:
    """A throwaway PostgreSQL server on a loopback port, run as the postgres user."""

    MAX_CONNECTIONS = 150

    def __init__(self, bindir: Path, workdir: Path):
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="pg-", dir="/tmp"))
        os.chmod(self.dir, 0o777)
        self.port = free_port()
        as_pg = [] if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--"]
        self.as_pg = as_pg
        subprocess.run(
            [*as_pg, str(bindir / "initdb"), "-D", str(self.dir / "data"), "-A", "trust", "-U", "bench"],
            check=True,
            capture_output=True,
        )
        self.proc = subprocess.Popen(
            [
                *as_pg,
                str(bindir / "postgres"),
                "-D",
                str(self.dir / "data"),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={self.dir}",
                "-c",
                f"max_connections={self.MAX_CONNECTIONS}",
                "-c",
                "fsync=off",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"postgres://bench@127.0.0.1:{self.port}/postgres"
        self.psql: subprocess.Popen | None = None
        deadline = time.time() + 30
        while subprocess.run(
            [str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
            capture_output=True,
        ).returncode != 0:
            if time.time() > deadline or self.proc.poll() is not None:
                raise BenchError("PostgreSQL did not start")
            time.sleep(0.2)

    def connections(self) -> int:
        """Client connections now, over one long-lived psql session (spawning psql per
        reading is too slow to catch a burst's peak on a busy machine)."""
        if self.psql is None:
            self.psql = subprocess.Popen(
                ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "bench", "-d", "postgres", "-At"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                bufsize=1,
            )
        self.psql.stdin.write(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
            "AND pid <> pg_backend_pid();\n"
        )
        self.psql.stdin.flush()
        try:
            return int(self.psql.stdout.readline().strip())
        except ValueError:
            return 0

    def stop(self) -> None:
        if self.psql is not None:
            self.psql.stdin.close()
            self.psql.wait()
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------
# Report


def fmt(v, digits=0) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def ratio(a, b) -> str:
    if not a or not b or a != a or b != b:
        return "n/a"
    return f"{a / b:.2f}×"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) // 1024 // 1024
    except OSError:
        pass
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    return f"{os.cpu_count()} cores ({cpu}), {mem} GiB RAM, {platform.system()} {platform.release()}, Node.js {node}"


def report(run: Run, res: dict, command: str) -> str:
    out = []
    w = out.append
    rel = lambda p: os.path.relpath(p, run.report_dir)  # noqa: E731
    w("# Benchmarks\n")
    for r in res.get("_runs", []):
        w(f"Generated by `{r['command']}` on {r['date']} ({', '.join(r['scenarios'])}).")
    w("")
    w(f"Machine: {machine()}. Shoal built in {'debug' if run.quick else 'release'} mode.")
    w("Every Shoal contender is its own `shoal serve` daemon on a fresh data directory with "
      "the host memory budget lifted (`--max-memory-mib 1048576`), so Lambda's model gets "
      "all the instances it asks for. Memory is the sum of PSS (shared pages counted once) "
      "over the instance processes plus, for Shoal, the daemon itself. Latency is measured "
      "by the client from sending the request to the end of the response.\n")
    w(SEED_REFERENCE + "\n")
    w(summary(res))
    for key in ("seed-burst-10", "seed-burst-100"):
        if key not in res:
            continue
        r = res[key]
        w(f"## {key}\n")
        w(f"{r['n']} concurrent requests on a cold hello function (the seed's: a 10M-element "
          f"sum, then a 2 s wait); median of {r['reps']} repetition(s), contenders alternated.\n")
        w("| contender | ok | instances | min ms | median ms | p99 ms | max ms | peak PSS MiB | of it daemon MiB |")
        w("|---|---|---|---|---|---|---|---|---|")
        for c, row in r["rows"].items():
            w(f"| {c} | {fmt(row['ok'])} | {fmt(row['instances'])} | {fmt(row['min'])} | "
              f"{fmt(row['median'])} | {fmt(row['p99'])} | {fmt(row['max'])} | "
              f"{fmt(row['pss_mib'], 1)} | {fmt(row['daemon_mib'], 1)} |")
        auto = r["rows"].get("shoal-auto", {})
        w("\nshoal-auto against each: " + "; ".join(
            f"{c}: median latency {ratio(auto.get('median'), row['median'])}, "
            f"memory {ratio(auto.get('pss_mib'), row['pss_mib'])}"
            for c, row in r["rows"].items() if c != "shoal-auto") + ".\n")
        w(f"![latency CDF]({rel(r['plot'])})\n")
    if "overhead" in res:
        r = res["overhead"]
        w("## overhead\n")
        w(f"A no-op handler under closed-loop load from `oha -c C -z {r['seconds']}s`, median "
          f"of {r['reps']} repetition(s): a bare Node.js HTTP server calling it (direct), Shoal's "
          "native channel (shoal-native, concurrency auto), and a `provided` Runtime API "
          "client doing the same (shoal-provided).\n")
        w("| contender | " + " | ".join(f"c={l} req/s | c={l} p50 ms | c={l} p99 ms" for l in r["levels"]) + " |")
        w("|---|" + "---|---|---|" * len(r["levels"]))
        for c, by in r["rows"].items():
            w(f"| {c} | " + " | ".join(
                f"{fmt(by[l]['rps'])} | {fmt(by[l]['p50_ms'], 2)} | {fmt(by[l]['p99_ms'], 2)}"
                for l in r["levels"]) + " |")
        d = r["rows"]["direct"]
        lines = []
        for c in ("shoal-native", "shoal-provided"):
            parts = []
            for l in r["levels"]:
                added = r["rows"][c][l]["p50_ms"] - d[l]["p50_ms"]
                parts.append(f"c={l}: +{added:.2f} ms median, throughput "
                             f"{ratio(r['rows'][c][l]['rps'], d[l]['rps'])} of direct")
            lines.append(f"- {c}: " + "; ".join(parts))
        w("\n".join(lines) + "\n")
        w("Where the CPU goes, per request (CPU time of the processes over the run / "
          "requests answered; the load generator runs on the same two cores):\n")
        w("| contender | " + " | ".join(f"c={l} runtime µs | c={l} daemon µs" for l in r["levels"]) + " |")
        w("|---|" + "---|---|" * len(r["levels"]))
        for c, by in r["rows"].items():
            w(f"| {c} | " + " | ".join(
                f"{fmt(by[l]['runtime_us'])} | {fmt(by[l]['daemon_us'])}" for l in r["levels"]) + " |")
        w("")
        w(f"![throughput]({rel(r['plot'])})\n")
    if "cold-start" in res:
        r = res["cold-start"]
        w("## cold-start\n")
        w(f"Time to the first response of a function with no instance, median of {r['reps']}: "
          "`node` loading the module by itself, the direct server from spawn to first "
          "response, and Shoal from request to response (instance spawn included). The hello "
          "function's own 2 s wait is subtracted.\n")
        w("| function | node require ms | direct ms | shoal-auto ms |")
        w("|---|---|---|---|")
        for f, row in r["rows"].items():
            w(f"| {f} | {fmt(row['node require'])} | {fmt(row['direct'])} | {fmt(row['shoal-auto'])} |")
        w("")
    if "sustained" in res:
        r = res["sustained"]
        cal = res["calibration"]
        w("## sustained\n")
        w(f"Open-loop fixed-rate load, `oha -q {r['rate']} --latency-correction -w -z "
          f"{r['warmup'] + r['seconds']}s`, on the hello function, each contender started "
          f"cold. The first {r['warmup']} s are a warm-up: latency, instance-seconds and "
          f"GB-seconds count the {r['seconds']} s after it (requests scheduled after it, "
          "from oha's per-request record); `all p99` is the whole run, cold start included. "
          f"Calibration (direct server): {cal['cpu_ms']:.1f} ms CPU and "
          f"{cal['wall_ms']:.0f} ms wall per call uncontended, so one instance computes "
          f"{1000 / cal['cpu_ms']:.0f} calls/s and {r['rate']} req/s is about 80 % of that. "
          f"Little's-law optimum for shoal-auto: L* = 0.8 × wall / cpu = {r['littles']:.0f} "
          "in flight per instance.\n")
        w("| contender | ok | non-200 / errors | p50 ms | p99 ms | all p99 ms | peak instances | instance-seconds | memory GB-s | peak PSS MiB |")
        w("|---|---|---|---|---|---|---|---|---|---|")
        for c, row in r["rows"].items():
            bad = row["total"] - row["ok"]
            w(f"| {c} | {row['ok']} | {bad} | {fmt(row['p50_ms'])} | {fmt(row['p99_ms'])} | "
              f"{fmt(row['all_p99_ms'])} | "
              f"{row['peak_instances']} | {fmt(row['instance_s'])} | {fmt(row['gb_s'], 2)} | "
              f"{fmt(row['peak_pss_mib'], 1)} |")
        lo, hi = r["auto_instances_measured"]
        settle = "never" if r["settle_s"] is None else f"{r['settle_s']:.0f} s"
        w(f"\nshoal-auto: mean per-instance limit at the end {r['final_limit']:.0f} "
          f"(L* {r['littles']:.0f}); within ±25 % of L* for good from {settle} after the "
          f"cold start; instances during the measured window between {lo} and {hi}; p99 {fmt(r['rows']['shoal-auto']['p99_ms'])} ms "
          f"against {cal['wall_ms']:.0f} ms uncontended "
          f"({ratio(r['rows']['shoal-auto']['p99_ms'], cal['wall_ms'])}).\n")
        for p in r["plots"]:
            w(f"![sustained]({rel(p)})\n")
    if "cpu-heavy" in res:
        r = res["cpu-heavy"]
        w("## cpu-heavy\n")
        w(f"A function that computes 200 ms and never waits, at {r['rate']} req/s (1.6 cores "
          f"of work), `oha -q {r['rate']} --latency-correction -w -c 64`, for {r['warmup']} s of "
          f"warm-up and {r['seconds']} s measured (latency, limits and CPU over the measured "
          "part). Auto should settle near 1–2 per instance and use both cores; a fixed limit "
          "of 80 queues everything behind one event loop (oha's 64 connections then cap how "
          "many calls are even sent).\n")
        w("| contender | ok | p50 ms | p99 ms | all p99 ms | ready instances (median) | limit median (min–max) | CPU busy summed over instances (median) |")
        w("|---|---|---|---|---|---|---|---|")
        for c, row in r["rows"].items():
            lo, hi = row["limit_range"]
            w(f"| {c} | {row['ok']} of {row['total']} | {fmt(row['p50_ms'])} | {fmt(row['p99_ms'])} | "
              f"{fmt(row['all_p99_ms'])} | {fmt(row['instances_median'], 1)} | "
              f"{fmt(row['limit_median'], 1)} ({lo}–{hi}) | {fmt(row['busy_sum_median'], 2)} |")
        w(f"\n![limit]({rel(r['plot'])})\n")
    if "scale-to-zero" in res:
        r = res["scale-to-zero"]
        w("## scale-to-zero\n")
        w(f"shoal-auto with `idle_timeout = \"{r['idle_timeout']}s\"`: a burst of 20 "
          f"({r['burst_ok']} ok, {r['peak_instances']} instance(s)), then nothing. The last "
          f"instance was gone {r['zero_after_s']:.1f} s after the last response (last decision: "
          f"\"{r['decision']}\"; each instance's idle clock starts at its own last call). The next request cold-started and answered "
          f"{r['next_status']} in {r['next_ms']:.0f} ms (2 s of it the function's wait).\n")
    if "db-connections" in res:
        r = res["db-connections"]
        w("## db-connections\n")
        w(f"A burst of {r['n']} on a function with a module-level `pg` pool (max 10 per "
          "instance) running `SELECT pg_sleep(0.2)` per call against a local PostgreSQL "
          f"(max_connections {r['max_connections']}), on a cold function and then again on "
          "the instances the first burst left; peak client connections from "
          "`pg_stat_activity` over one psql session, sampled every 50 ms. Instances that "
          "served = distinct process ids in the responses (a slow-starting instance may "
          "find its call already taken by one that finished first). Connections follow "
          "instances that served × the pool's size: packing calls into few instances "
          "saves connections only when few instances serve.\n")
        w("| contender | burst | ok | errors | instances running | instances that served | peak connections | median ms | p99 ms |")
        w("|---|---|---|---|---|---|---|---|---|")
        for c, phases in r["rows"].items():
            for phase, row in phases.items():
                w(f"| {c} | {phase} | {row['ok']} | {row['errors']} | {row['instances']} | "
                  f"{row['used']} | {row['peak_connections']} | {fmt(row['median'])} | {fmt(row['p99'])} |")
        w("")
    return "\n".join(out) + "\n"


def summary(res: dict) -> str:
    """shoal-auto's numbers divided by each other contender's, one row per measure
    (below 1 means shoal-auto's figure is lower)."""
    others = [c for c in ["direct", "lambda-model", "fixed-80", "capped-serial"]]
    rows = []

    def add(label, table, key, get=lambda row, k: row.get(k)):
        auto = table.get("shoal-auto")
        if not auto:
            return
        cells = []
        for c in others:
            row = table.get(c)
            cells.append(ratio(get(auto, key), get(row, key)) if row else "n/a")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")

    for key in ("seed-burst-10", "seed-burst-100"):
        if key in res:
            add(f"{key}: median latency", res[key]["rows"], "median")
            add(f"{key}: peak memory (PSS)", res[key]["rows"], "pss_mib")
    if "sustained" in res:
        t = res["sustained"]["rows"]
        add("sustained: p99 latency", t, "p99_ms")
        add("sustained: instance-seconds", t, "instance_s")
        add("sustained: memory GB-seconds", t, "gb_s")
    if "db-connections" in res:
        t = res["db-connections"]["rows"]
        warm = lambda row, k: (row or {}).get("warm", {}).get(k)  # noqa: E731
        add("db-connections (warm burst): peak connections", t, "peak_connections", warm)
        add("db-connections (warm burst): median latency", t, "median", warm)
    if not rows:
        return ""
    head = [
        "## Summary\n",
        "shoal-auto's figure divided by each contender's (below 1×: shoal-auto's is lower). "
        "Each scenario's section has the absolute numbers.\n",
        "| measure | " + " | ".join(others) + " |",
        "|---|" + "---|" * len(others),
    ]
    return "\n".join(head + rows) + "\n"


def check_complete(res: dict) -> list[str]:
    """Every contender of every scenario that ran produced numbers."""
    missing = []
    for key in ("seed-burst-10", "seed-burst-100"):
        for c in CONTENDERS:
            row = res.get(key, {}).get("rows", {}).get(c) if key in res else {}
            if key in res and (not row or not row["ok"] or row["median"] != row["median"]):
                missing.append(f"{key}/{c}")
    if "overhead" in res:
        for c, by in res["overhead"]["rows"].items():
            if any(not v["rps"] for v in by.values()):
                missing.append(f"overhead/{c}")
    if "sustained" in res:
        for c in CONTENDERS:
            if not res["sustained"]["rows"].get(c, {}).get("ok"):
                missing.append(f"sustained/{c}")
    if "cpu-heavy" in res:
        for c, row in res["cpu-heavy"]["rows"].items():
            if not row["ok"]:
                missing.append(f"cpu-heavy/{c}")
    if "scale-to-zero" in res and res["scale-to-zero"]["next_status"] != 200:
        missing.append("scale-to-zero")
    if "db-connections" in res:
        for c in CONTENDERS:
            for phase in ("cold", "warm"):
                row = res["db-connections"]["rows"].get(c, {}).get(phase)
                if not row or not row["ok"] or not row["peak_connections"]:
                    missing.append(f"db-connections/{c}/{phase}")
    return missing


SCENARIOS = [
    "seed-burst-10",
    "seed-burst-100",
    "overhead",
    "cold-start",
    "sustained",
    "cpu-heavy",
    "scale-to-zero",
    "db-connections",
]


def load_results(path: Path) -> dict:
    res = json.loads(path.read_text())
    # JSON turned the overhead table's integer keys (concurrency levels) into strings.
    for by_level in res.get("overhead", {}).get("rows", {}).values():
        for key in list(by_level):
            by_level[int(key)] = by_level.pop(key)
    return res


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts, a few seconds each (CI)")
    parser.add_argument("--only", default="", help="comma-separated scenarios: " + ", ".join(SCENARIOS))
    parser.add_argument("--contenders", default="", help="comma-separated subset of: " + ", ".join(CONTENDERS))
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
        if set(subset) - set(CONTENDERS):
            print(f"unknown contender(s): {args.contenders}", file=sys.stderr)
            return 2
        CONTENDERS[:] = subset
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
    try:
        run = Run(args)
        res: dict = {}
        burst_sizes = {"seed-burst-10": 4 if args.quick else 10, "seed-burst-100": 12 if args.quick else 100}
        for scenario in chosen:
            started = time.monotonic()
            if scenario in burst_sizes:
                res[scenario] = run.seed_burst(scenario, burst_sizes[scenario])
            elif scenario == "overhead":
                res[scenario] = run.overhead()
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
            log(f"{scenario} done in {time.monotonic() - started:.0f} s")
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
        res = {**old, **res}
    res["_runs"] = runs
    text = report(run, res, command)
    if out.suffix == ".md":
        out.write_text(text)
    else:
        out.mkdir(parents=True, exist_ok=True)
        (out / "BENCHMARKS.md").write_text(text)
        out = out / "BENCHMARKS.md"
    json_path.write_text(json.dumps(res, indent=1, default=str))
    log(f"report written to {out}")
    missing = check_complete(res)
    if missing:
        print("bench: no numbers from: " + ", ".join(missing), file=sys.stderr)
        return 1
    shutil.rmtree(run.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
