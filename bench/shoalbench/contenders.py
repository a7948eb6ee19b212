"""The contenders as running processes: the direct Node server, or a `shoal serve` daemon
with one function deployed; and the function directories and manifests they run."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from .common import BENCH, BenchError
from .measure import children, descendants

class Target:
    """One running contender: a Shoal daemon with one function, or the direct server."""

    name: str
    url: str
    pid: int

    def instance_pids(self) -> list[int]:
        """One pid per runtime instance."""
        raise NotImplementedError

    def process_pids(self) -> list[int]:
        """Every process of the runtime instances (for memory and CPU)."""
        return self.instance_pids()

    def daemon_pid(self) -> int | None:
        return None

    def status(self) -> dict | None:
        return None

    def stop(self) -> None:
        raise NotImplementedError


class Direct(Target):
    """The plain server calling the handler: Node's (server.js) or, with `python`, an
    asyncio one (server.py)."""

    def __init__(
        self, fn_dir: Path, module: str, export: str, path: str, env=None, python=False, prefix=()
    ):
        """`prefix`: a command the server runs under (callgrind, for instruction counts)."""
        self.name = "direct"
        server = ["python3", str(BENCH / "direct" / "server.py")] if python else [
            "node",
            str(BENCH / "direct" / "server.js"),
        ]
        self.proc = subprocess.Popen(
            [*prefix, *server, str(fn_dir), module, export],
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
    def __init__(
        self,
        binary: str,
        workdir: Path,
        name: str,
        fn_dir: Path,
        path: str,
        extra_args=(),
        lift_memory: bool = True,
        before_deploy=None,
        prefix=(),
        preexec_fn=None,
    ):
        """`prefix` and `preexec_fn`: a command the daemon runs under, and what to do before
        it starts (callgrind, for instruction counts)."""
        self.name = name
        self.binary = binary
        self.data = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=workdir))
        self.log = open(self.data / "daemon.log", "w")
        # Lambda's model reserves every instance's memory size; with the host's default
        # budget the 100-burst of 512 MiB instances would queue. Lift the memory bound so
        # each contender runs its own model (unless the scenario wants the default).
        lift = ["--max-memory-mib", "1048576"] if lift_memory else []
        self.proc = subprocess.Popen(
            [
                *prefix,
                binary,
                "--data-dir",
                str(self.data),
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--control-listen",
                "127.0.0.1:0",
                *lift,
                "--shutdown-grace",
                "5",
                *extra_args,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,
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
        if before_deploy is not None:
            try:
                before_deploy(self)
            except BaseException:
                self.stop()
                raise
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
        """The daemon's children that are instances: warm-pool processes waiting for a
        function are not (their memory still counts, in `process_pids`)."""
        pooled = set(self.warm_pids())
        return [p for p in children(self.pid) if p not in pooled]

    def process_pids(self) -> list[int]:
        return descendants(children(self.pid))

    def warm_pids(self) -> list[int]:
        """Warm-pool processes ready to take a function (from the status API)."""
        status = self.status() or {}
        return [p for shape in status.get("warm_pool", []) for p in shape.get("ready_pids", [])]

    def wait_for_warm_pool(self, timeout: float = 30.0) -> bool:
        """Wait until the warm pool has a ready process (false if it never does)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.warm_pids():
                return True
            time.sleep(0.05)
        return False

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


def provided_c(workdir: Path, contender: str, manifest: str) -> Path:
    """`noop-provided-c` compiled (`cc -O2 -pthread`) into a function directory whose
    `bootstrap` is the binary, with a shoal.toml for this contender."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise BenchError("the compiled provided client needs a C compiler (cc or gcc)")
    dest = Path(tempfile.mkdtemp(prefix=f"fn-{contender}-", dir=workdir))
    source = BENCH / "functions" / "noop-provided-c" / "bootstrap.c"
    result = subprocess.run(
        [cc, "-O2", "-pthread", "-o", str(dest / "bootstrap"), str(source)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise BenchError(f"compiling {source}: {result.stderr.strip()[:400]}")
    (dest / "shoal.toml").write_text(manifest)
    return dest


def manifest(
    name: str, handler: str, path: str, settings: dict, runtime="nodejs", extra="", trigger=None
) -> str:
    """One function's manifest, reached by GET `path`, or by `trigger` (a manifest line such
    as `events = [...]`) instead when given."""
    lines = [f"[functions.{name}]", f'runtime = "{runtime}"']
    if runtime in ("nodejs", "python"):
        lines.append(f'handler = "{handler}"')
    lines += ['memory = "512MiB"', 'timeout = "120s"']
    lines += [f"{k} = {v}" for k, v in settings.items()]
    lines.append(extra) if extra else None
    lines.append(trigger or f'http = [{{ method = "GET", path = "{path}" }}]')
    return "\n".join(lines) + "\n"
