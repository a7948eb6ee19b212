"""Cluster mode on one machine: a nats-server with JetStream and `shoal serve --cluster`
nodes. What a forwarded call costs against one served where it arrived (latency, and CPU
of both daemons per call), and failover: how long after a `kill -9` of the node serving the
calls failures go on, and how many.

On two cores three nodes cannot show scale-out speed; this measures the price of the
extra hop and the bound on failed calls, not throughput."""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from .common import BENCH, BenchError, log
from .contenders import Shoal, function_dir, manifest
from .measure import cpu_secs, get, med, oha
from .natsserver import Nats

def _instances(node: Shoal, function: str) -> int:
    """Instances of the function's active pool (a redeploy's retired pool drains apart)."""
    status = node.status() or {}
    return sum(
        len(p["instances"])
        for p in status.get("pools", [])
        if p["function"] == function and not p["retired"]
    )


def _settled(nodes: list[Shoal], function: str) -> None:
    """Until every node sees every node live with the same version of the function (each
    node's deploy made a new one), so a call is placed by the whole cluster's view."""
    deadline = time.time() + 60
    while True:
        versions = set()
        complete = True
        for node in nodes:
            seen = {
                n["name"]: f["version"]
                for n in (node.status() or {}).get("cluster", {}).get("nodes", [])
                if n["alive"]
                for f in n["load"]["functions"]
                if f["name"] == function
            }
            complete &= len(seen) == len(nodes)
            versions |= set(seen.values())
        if complete and len(versions) == 1:
            return
        if time.time() > deadline:
            raise BenchError(f"the nodes never agreed on {function}'s version")
        time.sleep(0.2)


def _sees_room(node: Shoal, other: str, function: str) -> bool:
    status = node.status() or {}
    for n in status.get("cluster", {}).get("nodes", []):
        if n["name"] == other and n["alive"]:
            for f in n["load"]["functions"]:
                if f["name"] == function and f["free"] > 0:
                    return True
    return False


class ClusterScenarios:
    """Mixed into the runner's Run (needs quick, workdir, binary, load_tool)."""

    def _cluster(self, nats: Nats, names: list[str], fn: Path) -> list[Shoal]:
        nodes = []
        for name in names:
            nodes.append(
                Shoal(
                    self.binary,
                    self.workdir,
                    f"cluster-{name}",
                    fn,
                    "/noop",
                    extra_args=("--cluster", nats.url, "--node-name", name, "--sandbox", "off"),
                )
            )
        return nodes

    def cluster(self) -> dict:
        tool = self.load_tool()
        levels = [1, 16]
        seconds = 2 if self.quick else 10
        reps = 1 if self.quick else 2
        # A fixed limit, so neither node's controller changes the picture between runs.
        spec = manifest("noop", "index.handler", "/noop", {"concurrency": "64"})
        fn = function_dir(self.workdir, BENCH / "functions" / "noop", "cluster", spec)
        nats = Nats(self.workdir)
        nodes: list[Shoal] = []
        try:
            nodes = self._cluster(nats, ["a", "b"], fn)
            _settled(nodes, "noop")
            # Warm one instance: wherever it lands is "home"; the other node forwards.
            for node in nodes:
                get(node.url)
            counts = [_instances(n, "noop") for n in nodes]
            if sorted(counts) != [0, 1]:
                raise BenchError(f"expected one instance on one node, got {counts}")
            home = nodes[counts.index(1)]
            other = nodes[counts.index(0)]
            home_name = home.name.removeprefix("cluster-")
            deadline = time.time() + 30
            while not _sees_room(other, home_name, "noop"):
                if time.time() > deadline:
                    raise BenchError("the forwarding node never saw the home node's room")
                time.sleep(0.2)
            raw: dict[str, dict[int, list[dict]]] = {"local": {l: [] for l in levels}, "forwarded": {l: [] for l in levels}}
            for rep in range(reps):
                order = ["local", "forwarded"] if rep % 2 == 0 else ["forwarded", "local"]
                for mode in order:
                    url = home.url if mode == "local" else other.url
                    oha(tool, url, seconds=1, concurrency=max(levels))
                    for level in levels:
                        log(f"cluster: {mode} at {level} concurrent (repetition {rep + 1}/{reps})")
                        before = (cpu_secs(home.pid), cpu_secs(other.pid))
                        result = oha(tool, url, seconds=seconds, concurrency=level)
                        after = (cpu_secs(home.pid), cpu_secs(other.pid))
                        n = max(1, result["ok"])
                        result["home_us"] = (after[0] - before[0]) / n * 1e6
                        result["other_us"] = (after[1] - before[1]) / n * 1e6
                        raw[mode][level].append(result)
            if _instances(other, "noop") != 0:
                raise BenchError("the forwarding node started an instance of its own")
            rows = {
                mode: {
                    l: {k: med([r[k] for r in runs]) for k in ("rps", "p50_ms", "p99_ms", "home_us", "other_us")}
                    | {"ok": sum(r["ok"] for r in runs), "total": sum(r["total"] for r in runs)}
                    for l, runs in by_level.items()
                }
                for mode, by_level in raw.items()
            }
        finally:
            for node in nodes:
                node.stop()
        try:
            failover = self._failover(nats, fn)
        finally:
            nats.stop()
        return {"levels": levels, "seconds": seconds, "reps": reps, "rows": rows, "failover": failover}

    def _failover(self, nats: Nats, fn: Path) -> dict:
        """Three nodes; closed-loop callers on two of them; `kill -9` of the node serving
        the calls they forward."""
        callers = 8
        run_for = 4 if self.quick else 10
        kill_at = 2.0
        nodes = self._cluster(nats, ["fa", "fb", "fc"], fn)
        victim = None
        try:
            _settled(nodes, "noop")
            for node in nodes:
                get(node.url)
            counts = [_instances(n, "noop") for n in nodes]
            victim = nodes[max(range(len(nodes)), key=lambda i: counts[i])]
            survivors = [n for n in nodes if n is not victim]
            victim_name = victim.name.removeprefix("cluster-")
            for s in survivors:
                deadline = time.time() + 30
                while not _sees_room(s, victim_name, "noop"):
                    if time.time() > deadline:
                        raise BenchError("a survivor never saw the victim's room")
                    time.sleep(0.2)
            results: list[tuple[float, bool]] = []
            lock = threading.Lock()
            stop = threading.Event()
            started = time.monotonic()

            def call_loop(url: str) -> None:
                while not stop.is_set():
                    try:
                        with urllib.request.urlopen(url, timeout=30) as r:
                            ok = r.status == 200
                            r.read()
                    except (urllib.error.URLError, OSError):
                        ok = False
                    with lock:
                        results.append((time.monotonic() - started, ok))

            threads = [
                threading.Thread(target=call_loop, args=(survivors[i % 2].url,), daemon=True)
                for i in range(callers)
            ]
            for t in threads:
                t.start()
            time.sleep(kill_at)
            killed = time.monotonic() - started
            os.kill(victim.pid, signal.SIGKILL)
            victim.proc.wait()
            time.sleep(run_for - kill_at)
            stop.set()
            for t in threads:
                t.join()
        finally:
            for node in nodes:
                if node is victim:
                    node.log.close()
                else:
                    node.stop()
        failed = [t for t, ok in results if not ok]
        after = [t for t, ok in results if t > killed]
        return {
            "callers": callers,
            "calls": len(results),
            "after_kill": len(after),
            "failed": len(failed),
            "last_failure_ms": (max(failed) - killed) * 1000 if failed else None,
            "ok_after_kill": sum(1 for t, ok in results if t > killed and ok),
        }
