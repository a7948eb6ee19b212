"""Instructions per request: the overhead scenario's no-op counted under callgrind, which
counts the user-space instructions a process executes. Unlike CPU time, the count hardly
moves with what else the shared machine runs, so a change to the data path can be judged
on it (timings on two busy cores swing by tens of percent between runs).

Each contender runs with its processes under `valgrind --tool=callgrind`: the direct Node
server; Shoal's daemon and its one Node instance (native channel); the daemon and a
`provided` Runtime API client, compiled (C) and in Node. After a warm-up (the JIT settles, the instance is up), the
counters are zeroed (`callgrind_control -z`), `oha` sends a fixed number of requests, the
counters are dumped (`-d`), and each process's total is divided by the requests answered.

What the count leaves out: the kernel's share (system calls, wake-ups, socket copies; the
timed runs' CPU columns have it), and what an instruction costs (cache misses, branch
mispredictions). Callgrind also runs a process's threads one at a time, so the batching
seen here (frames per write, requests per wake-up) is that of a slowed-down daemon.

Set `SHOAL_BENCH_KEEP_CALLGRIND=1` to keep the dumps for `callgrind_annotate`.

Shoal runs with `--sandbox off` here (valgrind must see the runtime's own binary, and the
walls are kernel work callgrind does not count), with the function pinned to one instance
of fixed concurrency 16, so the controller, slowed down with everything else, does not
start instances that would be counted too.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import time
from pathlib import Path

from .common import BENCH, BenchError, log
from .contenders import Direct, Shoal, Target, function_dir, manifest, provided_c
from .measure import children, get

CALLGRIND = ["valgrind", "--tool=callgrind", "--quiet"]


def available() -> bool:
    return shutil.which("valgrind") is not None and shutil.which("callgrind_control") is not None


def _files_for_valgrind() -> None:
    # Valgrind keeps a few descriptors above the soft limit it starts with and refuses a
    # setrlimit(RLIMIT_NOFILE) whose hard limit differs from that; the daemon caps every
    # instance at 1024 before exec, so valgrind must start with exactly that soft limit.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))


def _total(out_file: Path, since: set[Path]) -> int:
    """The instruction total of the newest callgrind dump of `out_file` (`<file>.<part>`)."""
    deadline = time.time() + 60
    while time.time() < deadline:
        dumps = [p for p in out_file.parent.glob(out_file.name + ".*") if p not in since]
        for dump in dumps:
            for line in dump.read_text(errors="replace").splitlines():
                if line.startswith("totals:") or line.startswith("summary:"):
                    return int(line.split()[1])
        time.sleep(0.2)
    raise BenchError(f"callgrind wrote no dump for {out_file}")


class Counted:
    """One process under callgrind, by pid and output file."""

    def __init__(self, name: str, pid: int, out_file: Path):
        self.name = name
        self.pid = pid
        self.out_file = out_file
        self.seen: set[Path] = set()

    def zero(self) -> None:
        self.seen = set(self.out_file.parent.glob(self.out_file.name + ".*"))
        _control("-z", self.pid)

    def dump(self) -> int:
        _control("-d", self.pid)
        return _total(self.out_file, self.seen)


def _control(flag: str, pid: int) -> None:
    result = subprocess.run(["callgrind_control", flag, str(pid)], capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchError(f"callgrind_control {flag} {pid}: {result.stderr.strip()[:300]}")


def _runtime_pids(daemon: int, deadline_s: float = 60) -> list[int]:
    """The daemon's runtime processes: the instance, and any pre-started ones of the warm
    pool (what they run while the instance works counts too)."""
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        kids = children(daemon)
        if kids:
            return kids
        time.sleep(0.1)
    raise BenchError("the instance under callgrind did not start")


def _oha_fixed(tool: str, url: str, requests: int, concurrency: int) -> int:
    """`requests` requests at `concurrency`; how many answered 200."""
    args = [tool, "--no-tui", "--output-format", "json", "-n", str(requests), "-c", str(concurrency)]
    result = subprocess.run([*args, "-t", "120s", url], capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchError(f"oha failed: {result.stderr.strip()[:400]}")
    import json

    data = json.loads(result.stdout[result.stdout.index("{"):])
    return int(data.get("statusCodeDistribution", {}).get("200", 0))


def count(run, requests: int, warmup: int, concurrency: int = 16, only=None) -> dict:
    """Instructions per request for direct, shoal-native, shoal-provided (the compiled
    client) and shoal-provided-node (or `only` those named): a row per contender with `daemon` and `runtime` (None where there is
    none)."""
    tool = run.load_tool()
    work = Path(run.workdir) / "callgrind"
    work.mkdir(parents=True, exist_ok=True)
    noop = BENCH / "functions" / "noop"
    pinned = {"concurrency": "16", "max_instances": "1"}
    rows: dict[str, dict] = {}
    for contender in only or ("direct", "shoal-native", "shoal-provided", "shoal-provided-node"):
        log(f"overhead: instructions per request, {contender} under callgrind")
        out = work / contender
        out.mkdir(exist_ok=True)
        counted: list[Counted] = []
        target: Target
        if contender == "direct":
            target = Direct(
                noop,
                "index.js",
                "handler",
                "/noop",
                prefix=[*CALLGRIND, f"--callgrind-out-file={out}/runtime.out"],
            )
        else:
            node = out / "node-callgrind"
            node.write_text(
                "#!/bin/sh\n"
                f"exec {' '.join(CALLGRIND)} --callgrind-out-file={out}/runtime.%p.out "
                f"{shutil.which('node')} \"$@\"\n"
            )
            node.chmod(0o755)
            if contender == "shoal-native":
                fn = function_dir(run.workdir, noop, contender, manifest("noop", "index.handler", "/noop", pinned))
            elif contender == "shoal-provided":
                fn = provided_c(run.workdir, contender, manifest("noop", "", "/noop", pinned, runtime="provided"))
                # The compiled client runs under callgrind too (all its threads).
                (fn / "bootstrap.bin").write_bytes((fn / "bootstrap").read_bytes())
                (fn / "bootstrap.bin").chmod(0o755)
                (fn / "bootstrap").unlink()
                (fn / "bootstrap").write_text(
                    "#!/bin/sh\n"
                    f"exec {' '.join(CALLGRIND)} --callgrind-out-file={out}/runtime.%p.out "
                    '"$(dirname "$0")/bootstrap.bin"\n'
                )
                (fn / "bootstrap").chmod(0o755)
            else:
                fn = function_dir(
                    run.workdir,
                    BENCH / "functions" / "noop-provided",
                    contender,
                    manifest("noop", "", "/noop", pinned, runtime="provided"),
                )
                # The provided bootstrap is a node script: run it under callgrind too.
                (fn / "bootstrap.js").write_text((fn / "bootstrap").read_text())
                (fn / "bootstrap").write_text(f"#!/bin/sh\nexec {node} \"$(dirname \"$0\")/bootstrap.js\"\n")
                (fn / "bootstrap").chmod(0o755)
            target = Shoal(
                run.binary,
                run.workdir,
                f"{contender}-callgrind",
                fn,
                "/noop",
                extra_args=("--sandbox", "off", "--node", str(node)),
                prefix=[*CALLGRIND, f"--callgrind-out-file={out}/daemon.out"],
                preexec_fn=_files_for_valgrind,
            )
        try:
            status, body = get(target.url)
            if status != 200:
                raise BenchError(f"{contender} under callgrind answered {status}: {body[:200]!r}")
            _oha_fixed(tool, target.url, warmup, concurrency)
            if contender == "direct":
                counted.append(Counted("runtime", target.pid, out / "runtime.out"))
            else:
                counted.append(Counted("daemon", target.pid, out / "daemon.out"))
                for pid in _runtime_pids(target.pid):
                    counted.append(Counted("runtime", pid, out / f"runtime.{pid}.out"))
            for c in counted:
                c.zero()
            ok = _oha_fixed(tool, target.url, requests, concurrency)
            totals: dict[str, int] = {}
            for c in counted:
                totals[c.name] = totals.get(c.name, 0) + c.dump()
        finally:
            target.stop()
        if ok < requests:
            raise BenchError(f"{contender} under callgrind answered {ok} of {requests} requests")
        rows[contender] = {
            "daemon": totals["daemon"] / ok if "daemon" in totals else None,
            "runtime": totals["runtime"] / ok,
            "requests": ok,
        }
        if os.environ.get("SHOAL_BENCH_KEEP_CALLGRIND"):
            # For `callgrind_annotate`: where the instructions went.
            log(f"overhead: callgrind's dumps kept in {out}")
        else:
            shutil.rmtree(out, ignore_errors=True)
    return {"requests": requests, "concurrency": concurrency, "rows": rows}
