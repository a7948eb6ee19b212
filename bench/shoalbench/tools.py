"""The tools the runner needs, installed when missing: oha, the shoal binary, PostgreSQL and
Redis (each run as a throwaway server on a loopback port), the npm packages (pg; BullMQ for
the queue scenarios) and matplotlib (the plots)."""

from __future__ import annotations

import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import BENCH, MATPLOTLIB, OHA_VERSION, ROOT, BenchError, log

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
    target = ROOT / os.environ.get("CARGO_TARGET_DIR", "target")  # an absolute one wins
    return str(target / ("release" if release else "debug") / "shoal")


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


def ensure_matplotlib() -> None:
    """Installs matplotlib into the Python running the runner (or its tests) when missing."""
    try:
        import matplotlib  # noqa: F401
        return
    except ImportError:
        pass
    log(f"matplotlib (the plots) is not installed: python3 -m pip install --quiet '{MATPLOTLIB}'")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", MATPLOTLIB]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0 and "externally-managed-environment" in result.stderr:
        # A distribution's own python3 (PEP 668) refuses pip. The runner is root on a
        # machine set up for it, and matplotlib's wheels do not replace Debian's packages.
        log("this python3 is managed by the system (PEP 668): retrying with --break-system-packages")
        result = subprocess.run(
            [*cmd, "--break-system-packages"], capture_output=True, text=True, check=False
        )
    if result.returncode != 0:
        raise BenchError(
            f"`python3 -m pip install '{MATPLOTLIB}'` failed: {result.stderr.strip()[-500:]}; "
            "install matplotlib for this python3 (or python3-pip first)"
        )
    # The import system caches directory listings; without this the fresh install can stay
    # invisible to this process.
    importlib.invalidate_caches()
    try:
        import matplotlib  # noqa: F401,F811
    except ImportError as e:
        raise BenchError(f"matplotlib was installed but {sys.executable} cannot import it: {e}") from e


class Postgres:
    """A throwaway PostgreSQL server on a loopback port, run as the postgres user. Without
    `durable` it runs with fsync off (the scenarios that only count connections); with it,
    Debian's defaults: fsync on, synchronous_commit on (a commit returns once its WAL is
    flushed to disk)."""

    MAX_CONNECTIONS = 150

    def __init__(self, bindir: Path, workdir: Path, durable: bool = False):
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
                *(
                    ["-c", "fsync=on", "-c", "synchronous_commit=on"]
                    if durable
                    else ["-c", "fsync=off"]
                ),
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
        # Through pg_ctl: as root the server runs under runuser, which does not pass a
        # signal on, so signalling the child we started would leave the server running.
        subprocess.run(
            [*self.as_pg, str(self.bindir / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop"],
            capture_output=True,
            check=False,
        )
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def apt_install(package: str) -> None:
    log(f"{package} is not installed: apt-get install {package}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", package], check=False, env=env, capture_output=True)


def redis_server_bin() -> str:
    """Debian's redis-server, installed with apt when missing."""
    found = shutil.which("redis-server")
    if not found:
        apt_install("redis-server")
        found = shutil.which("redis-server")
    if not found:
        raise BenchError("redis-server is missing and `apt-get install redis-server` failed")
    return found


def ensure_queue_modules() -> None:
    """bench/queue's npm packages (bullmq, ioredis, pg), from its lock file."""
    queue = BENCH / "queue"
    if all((queue / "node_modules" / m).exists() for m in ("bullmq", "ioredis", "pg")):
        return
    if not shutil.which("npm"):
        apt_install("npm")
    log("installing the queue benchmarks' npm packages (bullmq, ioredis, pg) in bench/queue")
    result = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=queue, check=False
    )
    if result.returncode != 0:
        raise BenchError("`npm ci` failed in bench/queue (bullmq, ioredis, pg)")


class Redis:
    """A throwaway redis-server on a loopback port, persisting to an append-only file fsync'd
    as `appendfsync` says ("always": before each reply; "everysec": once a second)."""

    def __init__(self, binary: str, appendfsync: str):
        self.dir = Path(tempfile.mkdtemp(prefix="redis-", dir="/tmp"))
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.dir),
                "--appendonly", "yes",
                "--appendfsync", appendfsync,
                "--save", "",
                "--maxmemory-policy", "noeviction",
                "--logfile", str(self.dir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.addr = f"127.0.0.1:{self.port}"
        deadline = time.time() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.time() > deadline or self.proc.poll() is not None:
                raise BenchError(f"redis-server did not start; see {self.dir / 'redis.log'}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
