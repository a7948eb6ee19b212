"""The scenarios: each runs every contender it compares and returns plain data for the
report (and the JSON next to it)."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from . import instructions, plots
from .common import BENCH, CONTENDERS, PYTHON_CONTENDERS, ROOT, SETTINGS, BenchError, log
from .contenders import Direct, Shoal, Target, function_dir, manifest, provided_c
from .measure import (
    Sampler,
    burst,
    cpu_secs,
    descendants,
    oha_requests,
    get,
    limit_timeline,
    med,
    oha,
    pct,
    runtime_cpu_secs,
    settle_time,
)
from .changes import ChangeScenarios
from .cluster import ClusterScenarios
from .queues import QueueScenarios
from .jetstream import JetStreamScenarios
from .tools import Postgres, ensure_matplotlib, ensure_pg_module, find_oha, postgres_bin, shoal_binary

class Run(QueueScenarios, ChangeScenarios, JetStreamScenarios, ClusterScenarios):
    def __init__(self, args):
        self.quick = args.quick
        self.workdir = Path(tempfile.mkdtemp(prefix="shoal-bench-"))
        # Now rather than at the first plot: a failed install would otherwise come after
        # the scenario it was to draw, and take its numbers down with it.
        ensure_matplotlib()
        self.release = not args.quick
        self._binary: str | None = None
        self.oha = None
        self.results: dict[str, dict] = {}
        out = Path(args.out)
        self.report_dir = out.parent if out.suffix == ".md" else out
        self.plots = self.report_dir / "plots"
        self.plots.mkdir(parents=True, exist_ok=True)

    @property
    def binary(self) -> str:
        """The shoal binary, built on first use (a run of other contenders needs none)."""
        if self._binary is None:
            self._binary = shoal_binary(release=self.release)
        return self._binary

    def load_tool(self) -> str:
        if self.oha is None:
            self.oha = find_oha()
        return self.oha

    def hello(self, contender: str, python: bool = False) -> Target:
        if python:
            src = ROOT / "examples" / "hello-python"
            if contender == "direct":
                return Direct(src, "app", "hello", "/helloPython", python=True)
            fn = function_dir(
                self.workdir,
                src,
                contender,
                manifest("hello", "app.hello", "/helloPython", SETTINGS[contender], runtime="python"),
            )
            return Shoal(self.binary, self.workdir, contender, fn, "/helloPython")
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
    def seed_burst(self, key: str, n: int, python: bool = False) -> dict:
        """The seed's burst on the hello function: Node's, or with `python` the Python
        hello (examples/hello-python, `async def` with `await asyncio.sleep(2)`)."""
        reps = 1 if self.quick else 3
        contenders = [c for c in PYTHON_CONTENDERS if c in CONTENDERS] if python else CONTENDERS
        per: dict[str, list[dict]] = {c: [] for c in contenders}
        latencies: dict[str, list[float]] = {c: [] for c in contenders}
        for rep in range(reps):
            order = contenders if rep % 2 == 0 else list(reversed(contenders))
            for c in order:
                log(f"{key}: {c} (n={n}, repetition {rep + 1}/{reps})")
                target = self.hello(c, python)
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
        plots.cdf_chart(
            plot,
            f"{key}: latency of {n} concurrent requests ({reps} repetition(s) pooled)",
            "latency (ms)",
            latencies,
        )
        return {"n": n, "reps": reps, "rows": rows, "plot": plot}

    # -- overhead ------------------------------------------------------------------------
    def overhead(self, python: bool = False) -> dict:
        """A no-op under closed-loop load. With `python`: the asyncio server against
        Shoal's Python bootstrap on the native channel."""
        tool = self.load_tool()
        levels = [1, 8] if self.quick else [1, 16, 64]
        seconds = 2 if self.quick else 10
        reps = 1 if self.quick else 2
        noop = BENCH / "functions" / "noop"
        contenders = [
            "direct",
            "shoal-native",
            "shoal-native-unsandboxed",
            "shoal-provided",
            "shoal-provided-node",
        ]
        if python:
            noop = BENCH / "functions" / "noop-python"
            contenders = ["direct", "shoal-native", "shoal-native-unsandboxed"]
        raw: dict[str, dict[int, list[dict]]] = {c: {l: [] for l in levels} for c in contenders}
        for rep in range(reps):
            for c in contenders if rep % 2 == 0 else list(reversed(contenders)):
                log(f"overhead: {c} (repetition {rep + 1}/{reps})")
                if c == "direct":
                    target: Target = (
                        Direct(noop, "app", "handler", "/noop", python=True)
                        if python
                        else Direct(noop, "index.js", "handler", "/noop")
                    )
                elif c.startswith("shoal-native"):
                    spec = (
                        manifest("noop", "app.handler", "/noop", {}, runtime="python")
                        if python
                        else manifest("noop", "index.handler", "/noop", {})
                    )
                    fn = function_dir(self.workdir, noop, c, spec)
                    extra = ("--sandbox", "off") if c.endswith("unsandboxed") else ()
                    target = Shoal(self.binary, self.workdir, c, fn, "/noop", extra_args=extra)
                else:
                    spec = manifest("noop", "", "/noop", {"max_concurrency": "64"}, runtime="provided")
                    fn = (
                        function_dir(self.workdir, BENCH / "functions" / "noop-provided", c, spec)
                        if c == "shoal-provided-node"
                        else provided_c(self.workdir, c, spec)
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
        key = "python-overhead" if python else "overhead"
        counted = None
        if python or self.quick:
            # The CI smoke run leaves callgrind out: Node under valgrind takes seconds to
            # start, near the daemon's start timeout on a busy machine.
            pass
        elif instructions.available():
            # Instructions per request: stable where the timings above are not.
            counted = instructions.count(self, requests=2000, warmup=1000)
        else:
            log("overhead: valgrind is not installed; no instruction counts (apt-get install valgrind)")
        plot = self.plots / f"{key}-throughput.svg"
        plots.bar_chart(
            plot,
            f"{key}: no-op throughput by concurrency ({seconds} s per level)",
            "requests per second",
            [f"{l} concurrent" for l in levels],
            {c: [rows[c][l]["rps"] for l in levels] for c in contenders},
        )
        out = {"levels": levels, "seconds": seconds, "reps": reps, "rows": rows, "plot": plot}
        if counted is not None:
            out["instructions"] = counted
        return out

    # -- noisy neighbour -----------------------------------------------------------------
    def noisy_neighbour(self) -> dict:
        """A no-op victim under fixed-rate load, quiet and then beside a function whose call
        starts 4 busy loops (the sandbox's CPU wall: one core of quota per instance)."""
        tool = self.load_tool()
        seconds = 3 if self.quick else 10
        rate = 200
        noop = BENCH / "functions" / "noop"
        hog = BENCH / "functions" / "hog"
        fn = function_dir(
            self.workdir,
            noop,
            "noisy",
            manifest("noop", "index.handler", "/noop", {})
            + "\n"
            + manifest("hog", "hog-index.handler", "/hog", {"concurrency": "1"}),
        )
        (fn / "hog-index.js").write_text((hog / "index.js").read_text())
        target = Shoal(self.binary, self.workdir, "noisy", fn, "/noop")
        try:
            get(target.url)
            oha(tool, target.url, seconds=1, concurrency=4, rate=rate)
            log(f"noisy-neighbour: quiet, {rate} req/s for {seconds} s")
            quiet = oha(tool, target.url, seconds=seconds, concurrency=8, rate=rate)
            hog_url = target.url.replace("/noop", f"/hog?procs=4&ms={int((seconds + 4) * 1000)}")
            status, body = get(hog_url)
            if status != 200:
                raise BenchError(f"noisy-neighbour: the hog answered {status}: {body!r}")
            time.sleep(1)
            log(f"noisy-neighbour: beside 4 busy loops, {rate} req/s for {seconds} s")
            noisy = oha(tool, target.url, seconds=seconds, concurrency=8, rate=rate)
            walls = {w["name"]: w["up"] for w in (target.status() or {}).get("walls", [])}
        finally:
            target.stop()
        return {
            "seconds": seconds,
            "rate": rate,
            "cpu_wall": bool(walls.get("cpu")),
            "rows": {
                "quiet": {k: quiet[k] for k in ("p50_ms", "p99_ms", "ok", "total")},
                "beside a CPU hog": {k: noisy[k] for k in ("p50_ms", "p99_ms", "ok", "total")},
            },
        }

    # -- overload and a frozen instance --------------------------------------------------
    def overload(self) -> dict:
        """10x more calls than capacity: one instance of one slot, 100 ms calls (10/s), a
        10 s timeout, offered 100/s. Goodput (200s within the timeout) against capacity,
        and how fast the rest are refused."""
        tool = self.load_tool()
        seconds = 10 if self.quick else 60
        rate = 100
        slow = BENCH / "functions" / "slow"
        fn = function_dir(
            self.workdir,
            slow,
            "overload",
            manifest("slow", "index.handler", "/slow", {"concurrency": "1", "max_instances": "1"}).replace(
                'timeout = "120s"', 'timeout = "10s"'
            ),
        )
        target = Shoal(self.binary, self.workdir, "overload", fn, "/slow")
        try:
            get(target.url)
            log(f"overload: {rate} calls/s for {seconds} s against a capacity of 10/s")
            rows = oha_requests(tool, target.url, seconds=seconds, concurrency=400, rate=rate, with_start=True)
        finally:
            target.stop()
        by_status: dict[str, list[float]] = {}
        for status, ms, _start in rows:
            by_status.setdefault(str(status), []).append(ms)
        ok = by_status.get("200", [])
        # Calls admitted near the end finish up to a timeout later: goodput is over the
        # whole span, from the first call sent to the last answer.
        span = max((start + ms / 1000 for _s, ms, start in rows), default=seconds)
        return {
            "seconds": seconds,
            "span_s": span,
            "rate": rate,
            "capacity_rps": 10.0,
            "goodput_rps": len(ok) / span,
            "rows": {
                status: {"count": len(v), "p50_ms": pct(v, 50), "p99_ms": pct(v, 99)}
                for status, v in sorted(by_status.items())
            },
        }

    def frozen(self) -> dict:
        """A no-op under 100 calls/s; 2 s in, its instance's runtime process is stopped
        (SIGSTOP). What happens to the calls after."""
        tool = self.load_tool()
        seconds = 8 if self.quick else 20
        slow = BENCH / "functions" / "slow"
        fn = function_dir(
            self.workdir,
            slow,
            "frozen",
            manifest("slow", "index.handler", "/slow", {}).replace('timeout = "120s"', 'timeout = "10s"'),
        )
        target = Shoal(self.binary, self.workdir, "frozen", fn, "/slow")
        url = target.url + "?ms=1"
        stopped: list[int] = []
        try:
            get(url)
            oha(tool, url, seconds=1, concurrency=4, rate=100)

            def freeze():
                time.sleep(2)
                for root in target.instance_pids():
                    for pid in descendants([root]):
                        try:
                            comm = Path(f"/proc/{pid}/comm").read_text().strip()
                        except OSError:
                            continue
                        if comm != "bwrap":
                            os.kill(pid, signal.SIGSTOP)
                            stopped.append(pid)
                            break

            log(f"frozen: 100 calls/s for {seconds} s; SIGSTOP to the runtime 2 s in")
            thread = threading.Thread(target=freeze)
            thread.start()
            started = time.time()
            rows = oha_requests(tool, url, seconds=seconds, concurrency=200, rate=100, with_start=True)
            thread.join()
            decisions = [
                d["message"]
                for pool in (target.status() or {}).get("pools", [])
                for d in pool.get("decisions", [])
                if d.get("kind") == "frozen"
            ]
        finally:
            for pid in stopped:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            target.stop()
        failed = [(t, status) for status, _ms, t in rows if status != 200]
        after = [ms for status, ms, t in rows if status == 200 and t >= 4.0]
        return {
            "seconds": seconds,
            "stopped": len(stopped),
            "total": len(rows),
            "failed": len(failed),
            "failed_statuses": sorted({str(s) for _, s in failed}),
            "last_failure_s": max((t for t, _ in failed), default=None),
            "p99_ms_after_4s": pct(after, 99),
            "decision": decisions[0] if decisions else None,
            "started": started,
        }

    # -- cold start ----------------------------------------------------------------------
    def cold_start(self) -> dict:
        reps = 2 if self.quick else 7
        hello = ROOT / "examples" / "hello"
        noop = BENCH / "functions" / "noop"
        out: dict[str, dict[str, list[float]]] = {}
        for fn_name, src, handler, path in [
            ("hello", hello, "index.helloWorld", "/helloWorld"),
            ("noop", noop, "index.handler", "/noop"),
        ]:
            times: dict[str, list[float]] = {
                "node require": [],
                "direct": [],
                "shoal-auto": [],
                "shoal-no-pool": [],
                "shoal-unsandboxed": [],
            }
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
                # The sandbox's cost: the same start with every wall up, and with none.
                shoal_ms = {}
                for contender, extra in [
                    ("shoal-auto", ()),
                    ("shoal-no-pool", ("--warm-pool", "0")),
                    ("shoal-unsandboxed", ("--sandbox", "off", "--warm-pool", "0")),
                ]:
                    shoal = Shoal(self.binary, self.workdir, "cold", fn, path, extra_args=extra)
                    try:
                        # A daemon that has been up a moment: its warm pool is filled.
                        if contender == "shoal-auto" and not shoal.wait_for_warm_pool():
                            raise BenchError("cold-start: the warm pool never filled")
                        if shoal.instance_pids():
                            raise BenchError("cold-start: an instance was running before the request")
                        start = time.monotonic()
                        status2, _ = get(shoal.url)
                        shoal_ms[contender] = (time.monotonic() - start) * 1000
                    finally:
                        shoal.stop()
                    if status != 200 or status2 != 200:
                        raise BenchError(f"cold-start {fn_name}: statuses {status}, {status2}")
                wait = 2000 if fn_name == "hello" else 0
                times["direct"].append(direct_ms - wait)
                for contender, ms in shoal_ms.items():
                    times[contender].append(ms - wait)
            out[fn_name] = times
        return {
            "reps": reps,
            "rows": {f: {k: med(v) for k, v in t.items()} for f, t in out.items()},
            "max": {f: {k: max(v) for k, v in t.items()} for f, t in out.items()},
        }

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
        plots.cdf_chart(
            plot_cdf,
            f"sustained: latency at {rate} req/s after a {warmup} s warm-up",
            "latency (ms)",
            latencies,
            log_x=True,
        )
        plot_inst = self.plots / "sustained-instances.svg"
        plots.line_chart(
            plot_inst,
            f"sustained: instances over time at {rate} req/s",
            "seconds",
            "instances",
            timelines,
            step=True,
        )
        plot_mem = self.plots / "sustained-memory.svg"
        plots.line_chart(
            plot_mem,
            f"sustained: memory over time at {rate} req/s (PSS of instances + daemon)",
            "seconds",
            "MiB",
            memory,
        )
        plot_limit = self.plots / "sustained-auto-limit.svg"
        plots.line_chart(
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
        plots.line_chart(
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
            decision = next(
                (p["decisions"][-1]["message"] for p in status.get("pools", []) if p.get("decisions")),
                "",
            )
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
