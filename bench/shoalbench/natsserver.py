"""A private `nats-server -js` for the cluster benchmarks and the cluster kill test: a free
loopback port, its store and log in a fresh directory under the caller's work dir."""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .common import BenchError

BINARY = "/usr/sbin/nats-server"  # Debian's nats-server package


class Nats:
    def __init__(self, workdir: Path):
        binary = BINARY if Path(BINARY).exists() else "nats-server"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = Path(tempfile.mkdtemp(prefix="nats-", dir=workdir))
        self.log = open(self.dir / "nats.log", "w")
        try:
            self.proc = subprocess.Popen(
                [binary, "-js", "-sd", str(self.dir / "js"), "-a", "127.0.0.1", "-p", str(self.port)],
                stdout=self.log,
                stderr=subprocess.STDOUT,
            )
        except OSError as e:
            raise BenchError(f"starting nats-server (apt-get install nats-server): {e}")
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"nats-server did not start; see {self.dir / 'nats.log'}")
                time.sleep(0.05)
        self.url = f"nats://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.log.close()
