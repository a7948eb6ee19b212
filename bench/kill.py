#!/usr/bin/env python3
"""The kill test (issue 11): nothing Shoal acknowledged is lost when `kill -9` hits it.

A real `shoal serve` runs on a data directory of its own. One function (bench/functions/
ledger) is triggered by an SQS queue, takes `Event` invokes and fires on five minutely
schedules; it
reports every id it is handed to a *ledger*, a TCP server in this process, outside Shoal,
and succeeds only once the ledger answered. Sender threads send SQS `SendMessageBatch`es
and async invokes, each id unique, while the daemon is `kill -9`ed at random moments and
started again on the same data directory. Then the killing stops, the queue drains and the
check runs: every id the daemon acknowledged (200 with a MessageId, 202 for an Event) must
be in the ledger. Duplicates (at-least-once delivery) are counted, not failures.

    python3 bench/kill.py              # the full form: 20,000 ids, 200 kills (release build)
    python3 bench/kill.py --quick      # 2,000 ids, 20 kills (debug build; scripts/test)

Kills are aimed, not only timed: after a random uptime; a few ms after a send reached the
daemon (the commit window); while the function waits on the ledger (mid-delivery); just
after the ledger answered (the delete); when a schedule fire is delivered; and within a
few hundred ms of a start (recovery). The ledger also refuses some first deliveries, so
Shoal's retries run under the kills. After each kill the daemon's former descendants should
die with it; one still running 3 s later is reported, and one still running once the next
daemon has started (which clears dead daemons' cgroups) is an orphan.

Exit status: 0 when nothing acknowledged was lost, no orphan was seen and no schedule fired
a time twice or skipped one; 1 otherwise; 2 on a harness error. Standard library only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import shutil
import signal
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from shoalbench import killreport

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
FUNCTION = BENCH / "functions" / "ledger"
QUEUE = "kill-q"
FUNCTION_NAME = "killfn"
BATCH = 10  # SQS's most entries per SendMessageBatch
SCHEDULES = [
    "rate(1 minute)",
    "cron(* * * * ? *)",
    "cron(0/1 * * * ? *)",
    "cron(0-59 * * * ? *)",
    "cron(* * ? * * *)",
]
# How long the killer gives the daemon's instances to die with it before calling any that
# is left an orphan (PR_SET_PDEATHSIG acts at once; this bounds a busy machine).
ORPHAN_PATIENCE = 3.0
# Colour codes, should a daemon log carry them (NO_COLOR asks it not to).
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Kill moments and how often each is drawn (see the module comment).
MODES = {"timer": 0.25, "send": 0.25, "delivery": 0.15, "delete": 0.2, "startup": 0.15}


class HarnessError(Exception):
    """The harness could not do its part (a start, the setup): exit 2, not a verdict."""


def log(msg: str) -> None:
    print(f"[kill {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------
# The kill trigger: the killer waits on it; senders and the ledger pull it at the moment
# they were asked to (when armed for their mode). Where the moment is a few milliseconds
# wide (a send's commit, a delivery's delete), the puller sends the signal itself through
# the armed `action`: waking the killer thread first would take longer than the window.


class Trigger:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.armed: str | None = None
        self.action = None
        self.fired = threading.Event()
        self.fired_mode: str | None = None
        self.killed = threading.Event()

    def arm(self, mode: str | None, action=None) -> None:
        with self.lock:
            self.armed = mode
            self.action = action
            self.fired_mode = None
            self.fired.clear()
            self.killed.clear()

    def pull(self, mode: str) -> bool:
        """Fire if armed for `mode` (once); True if this call fired it. A schedule fire's
        delivery fires whatever is armed: fires are rare, each is worth a kill."""
        with self.lock:
            if self.armed is None or (self.armed != mode and mode != "schedule"):
                return False
            self.armed = None
            action, self.action = self.action, None
            self.fired_mode = mode
        if action and mode != "schedule":
            action()
        self.fired.set()
        return True

    def disarm(self) -> None:
        with self.lock:
            self.armed = None


# ---------------------------------------------------------------------------------------
# The ledger: what the function was handed and acknowledged, kept outside Shoal.


class Ledger:
    """Records deliveries the function reports; answers `ok`, or `fail` to inject a retry.

    A line is `<kind> <id>,<id>,...`. An id chosen for an injected failure is refused the
    first time it is seen, and with it the whole call (nothing in it is recorded as
    delivered), so a duplicate in the report is always a real redelivery by Shoal.
    """

    def __init__(self, trigger: Trigger, fail_queue_every: int, fail_async_every: int, path: Path):
        self.trigger = trigger
        self.fail_every = {"queue": fail_queue_every, "async": fail_async_every}
        self.lock = threading.Lock()
        self.delivered: Counter[str] = Counter()
        self.first_at: dict[str, float] = {}
        self.failed_once: set[str] = set()
        self.injected = Counter()  # kind -> calls refused on purpose
        self.interrupted = 0  # calls held unanswered for a kill
        self.schedule: list[tuple[str, str, str]] = []  # (rule, fire time, event id)
        self.malformed: list[str] = []
        self.fires_killed_at: set[str] = set()
        # Async id -> the awsRequestId each delivery ran under (one, across retries).
        self.request_ids: dict[str, set[str]] = {}
        self.generation = 0  # the daemon generation running now (set by the killer)
        self.file = open(path, "a", buffering=1)
        ledger = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline().decode("utf-8", "replace").strip()
                reply = ledger.record(line)
                if reply is not None:
                    self.wfile.write(reply.encode() + b"\n")

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 256

        self.server = Server(("127.0.0.1", 0), Handler)
        self.addr = "%s:%d" % self.server.server_address
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _should_fail(self, kind: str, ident: str) -> bool:
        every = self.fail_every.get(kind, 0)
        if not every or ident in self.failed_once:
            return False
        try:
            n = int(ident[1:])
        except ValueError:
            return False
        return n % every == every // 2

    def record(self, line: str) -> str | None:
        kind, _, rest = line.partition(" ")
        ids = [i for i in rest.split(",") if i]
        request_id = ""
        logged = ",".join(ids)
        if kind == "async" and len(ids) == 1:
            ids[0], _, request_id = ids[0].partition("@")
        if kind not in ("queue", "async", "schedule") or not ids:
            with self.lock:
                self.malformed.append(line[:200])
            return "fail malformed"
        now = time.monotonic()
        # A kill mid-delivery: the function is waiting for this answer and never gets it.
        # Each fire is worth one kill (its redeliveries are not, or they would kill every
        # restart before it could settle them).
        fresh_fire = kind == "schedule" and ids[0] not in self.fires_killed_at
        if self.trigger.pull("delivery") or (fresh_fire and self.trigger.pull("schedule")):
            if kind == "schedule":
                self.fires_killed_at.add(ids[0])
            with self.lock:
                self.interrupted += 1
            self.file.write(f"{now:.3f} g{self.generation} {kind} HELD-FOR-KILL {logged}\n")
            self.trigger.killed.wait(30)
            return None
        with self.lock:
            fail = [i for i in ids if self._should_fail(kind, i)]
            if fail:
                self.failed_once.update(fail)
                self.injected[kind] += 1
            else:
                if request_id:
                    self.request_ids.setdefault(ids[0], set()).add(request_id)
                for ident in ids:
                    self.delivered[ident] += 1
                    self.first_at.setdefault(ident, now)
                    if kind == "schedule":
                        rule, fire, event_id = (ident.split("|") + ["", ""])[:3]
                        self.schedule.append((rule, fire, event_id))
        verdict = "fail" if fail else "ok"
        self.file.write(f"{now:.3f} g{self.generation} {kind} {verdict} {logged}\n")
        if not fail:
            # A kill just after the answer: while Shoal deletes or settles the delivery.
            self.trigger.pull("delete")
        return "fail injected" if fail else "ok"

    def snapshot(self) -> tuple[Counter, dict]:
        with self.lock:
            return Counter(self.delivered), dict(self.first_at)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.file.close()


# ---------------------------------------------------------------------------------------
# Processes: the daemon's descendants, read from /proc (to find orphans after a kill).


def proc_stat(pid: int) -> tuple[int, str, int] | None:
    """(ppid, state, start time) of a live process, None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), fields[0], int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """pid -> start time of every live descendant of `root`."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = proc_stat(int(entry))
            if stat and stat[1] != "Z":
                children.setdefault(stat[0], []).append(int(entry))
                starts[int(entry)] = stat[2]
    found: dict[int, int] = {}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found[child] = starts[child]
                todo.append(child)
    return found


def still_alive(procs: dict[int, int]) -> dict[int, int]:
    alive = {}
    for pid, start in procs.items():
        stat = proc_stat(pid)
        if stat and stat[1] != "Z" and stat[2] == start:
            alive[pid] = start
    return alive


def linger(procs: dict[int, int], patience: float) -> dict[int, int]:
    """Those of `procs` still running after up to `patience` seconds."""
    deadline = time.monotonic() + patience
    alive = still_alive(procs)
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = still_alive(alive)
    return alive


def end(procs: dict[int, int]) -> None:
    """SIGKILL processes the daemon we started left behind (ours to end), by pid."""
    for pid in still_alive(procs):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def describe(pid: int) -> str:
    """State, parent, pid in its namespace, where it waits, and its children: enough to
    tell a bwrap monitor from a sandbox's init from a runtime."""
    try:
        status = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
        )
        wchan = Path(f"/proc/{pid}/wchan").read_text().strip()
    except OSError:
        return "gone"
    kids = [c for c in descendants(pid)]
    kid_text = "; ".join(f"{c} {cmdline(c)[:60]}" for c in kids[:4]) or "none"
    return (
        f"state {status.get('State', '?').strip()}, ppid {status.get('PPid', '?').strip()}, "
        f"NSpid {status.get('NSpid', '?').strip()}, uid {status.get('Uid', '?').split()[0]}, "
        f"waits in {wchan or '?'}, children: {kid_text}"
    )


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


# ---------------------------------------------------------------------------------------
# The daemon: started, killed and started again on one data directory.


class Daemon:
    def __init__(self, binary: str, workdir: Path):
        self.binary = binary
        self.data = workdir / "data"
        self.log_path = workdir / "daemon.log"
        self.log = open(self.log_path, "ab", buffering=0)
        self.proc: subprocess.Popen | None = None
        self.generation = 0
        self.lock = threading.Condition()
        self.control: str | None = None  # None while down
        self.up_since = 0.0
        self.token = ""
        self.start_times: list[float] = []
        # Instance processes (and their children) alive when a kill landed: all must die.
        self.descendants_at_kills = 0
        # Byte offset in daemon.log where each generation's output begins.
        self.log_marks: dict[int, int] = {}

    def mark(self, text: str) -> None:
        self.log.write(f"==== kill.py {time.strftime('%H:%M:%S')} {text}\n".encode())

    def spawn(self) -> None:
        for published in ("control-addr", "gateway-addr"):
            try:
                (self.data / published).unlink()
            except FileNotFoundError:
                pass
        self.generation += 1
        self.log_marks[self.generation] = self.log.tell()
        self.mark(f"generation {self.generation} starting")
        self.spawned_at = time.monotonic()
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--data-dir",
                str(self.data),
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--control-listen",
                "127.0.0.1:0",
                "--shutdown-grace",
                "5",
            ],
            stdout=self.log,
            stderr=self.log,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info"), "NO_COLOR": "1"},
        )

    def wait_ready(self, patience: float = 60.0) -> None:
        deadline = time.monotonic() + patience
        while True:
            if self.proc.poll() is not None:
                raise HarnessError(
                    f"shoal serve (generation {self.generation}) exited with {self.proc.returncode} "
                    f"before publishing its addresses; see {self.log_path}"
                )
            try:
                control = (self.data / "control-addr").read_text().strip()
                (self.data / "gateway-addr").read_text().strip()
                host, port = control.rsplit(":", 1)
                int(port)
                if not self.token:
                    self.token = (self.data / "admin-token").read_text().strip()
                break
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise HarnessError(f"shoal serve did not publish its addresses in {patience:.0f} s")
            time.sleep(0.01)
        self.start_times.append(time.monotonic() - self.spawned_at)
        with self.lock:
            self.control = control
            self.up_since = time.monotonic()
            self.lock.notify_all()

    def start(self) -> None:
        self.spawn()
        self.wait_ready()

    def current(self, stop: threading.Event) -> tuple[str, int] | None:
        """The control address and generation once the daemon is up (None if stopping)."""
        with self.lock:
            while self.control is None:
                if stop.is_set():
                    return None
                self.lock.wait(0.1)
            return self.control, self.generation

    def kill(self, why: str, before: dict[int, int] | None = None) -> dict[int, int]:
        """SIGKILL the daemon (unless an aimed kill already did: then `before` holds its
        descendants as they were when the kill was armed), give its former descendants a
        while to die with it, and return those still running (pid -> start time)."""
        with self.lock:
            self.control = None
        if before is None:
            before = descendants(self.proc.pid)
        self.descendants_at_kills += len(before)
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.mark(f"generation {self.generation} killed with SIGKILL ({why})")
        return linger(before, ORPHAN_PATIENCE)

    def stop(self) -> tuple[int | None, dict[int, int]]:
        """SIGTERM, as an operator stops it; the exit code and what still runs after."""
        with self.lock:
            self.control = None
        if self.proc is None or self.proc.poll() is not None:
            return (self.proc.returncode if self.proc else None), {}
        before = descendants(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.mark(f"generation {self.generation} stopped with SIGTERM (exit {code})")
        return code, linger(before, ORPHAN_PATIENCE)

    def log_section(self, generation: int, tail: int = 40) -> str:
        start = self.log_marks.get(generation)
        if start is None:
            return ""
        end = self.log_marks.get(generation + 1)
        with open(self.log_path, "rb") as f:
            f.seek(start)
            data = f.read((end - start) if end else -1)
        lines = ANSI.sub("", data.decode(errors="replace")).splitlines()
        return "\n".join(lines[-tail:])


# ---------------------------------------------------------------------------------------
# The control API: SQS (JSON protocol) and the Lambda Invoke API.


def request(conn, method: str, path: str, token: str, body: bytes, headers: dict) -> tuple[int, bytes]:
    conn.request(method, path, body=body, headers={"Authorization": f"Bearer {token}", **headers})
    response = conn.getresponse()
    return response.status, response.read()


def sqs(control: str, token: str, action: str, payload: dict, timeout: float = 30) -> tuple[int, dict]:
    host, port = control.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        status, body = request(
            conn,
            "POST",
            "/",
            token,
            json.dumps(payload).encode(),
            {"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": f"AmazonSQS.{action}"},
        )
    finally:
        conn.close()
    try:
        return status, json.loads(body or b"{}")
    except ValueError:
        return status, {"raw": body[:500].decode(errors="replace")}


# ---------------------------------------------------------------------------------------
# Senders: unique ids, each counted as acknowledged only on the daemon's success answer.


class Books:
    """What was sent: acknowledged ids (with when and under which daemon generation),
    unacknowledged ones (no answer, or an error answer), per kind."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.next = Counter()
        self.acked: dict[str, tuple[float, int]] = {}
        self.acked_by_kind = Counter()
        self.unacked: dict[str, str] = {}  # id -> why
        # What Shoal called each acknowledged id: the MessageId, or the Event's request id
        # (to find it in the daemon's log if it goes missing).
        self.shoal_ids: dict[str, str] = {}
        self.answers = Counter()  # "queue 200", "async 202", "queue no answer", ...
        self.requests_during_kill = 0  # sends the `send` kill was aimed at

    def new_ids(self, kind: str, n: int) -> list[str]:
        with self.lock:
            start = self.next[kind]
            self.next[kind] += n
        prefix = "q" if kind == "queue" else "a"
        return [f"{prefix}{i:07d}" for i in range(start, start + n)]

    def settle(self, kind: str, acked: list[str], unacked: list[str], why: str, gen: int) -> None:
        now = time.monotonic()
        with self.lock:
            for ident in acked:
                self.acked[ident] = (now, gen)
            self.acked_by_kind[kind] += len(acked)
            for ident in unacked:
                self.unacked[ident] = why
            self.answers[f"{kind} {why}"] += 1


class Sender(threading.Thread):
    def __init__(self, kind: str, run: "KillRun"):
        super().__init__(daemon=True, name=f"sender-{kind}")
        self.kind = kind
        self.run_ = run

    def run(self) -> None:
        r = self.run_
        while not r.stop_sending.is_set():
            if r.books.acked_by_kind[self.kind] >= r.budget(self.kind):
                time.sleep(0.01)
                continue
            up = r.daemon.current(r.stop_sending)
            if up is None:
                return
            control, gen = up
            # A connection per request: a kept-alive one the server closed while idle would
            # fail a request that never reached it, and count as unacknowledged for nothing.
            host, port = control.rsplit(":", 1)
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            if self.kind == "queue":
                ids = r.books.new_ids("queue", BATCH)
                path = "/"
                body = json.dumps(
                    {
                        "QueueUrl": f"http://{control}{r.queue_path}",
                        "Entries": [{"Id": str(i), "MessageBody": ident} for i, ident in enumerate(ids)],
                    }
                ).encode()
                headers = {
                    "Content-Type": "application/x-amz-json-1.0",
                    "X-Amz-Target": "AmazonSQS.SendMessageBatch",
                }
            else:
                ids = r.books.new_ids("async", 1)
                path = f"/2015-03-31/functions/{FUNCTION_NAME}/invocations"
                body = json.dumps({"id": ids[0]}).encode()
                headers = {"Content-Type": "application/json", "X-Amz-Invocation-Type": "Event"}
            try:
                conn.request("POST", path, body=body, headers={"Authorization": f"Bearer {r.daemon.token}", **headers})
                # Aimed kill: the request is on its way; the daemon is parsing, committing or
                # answering it when the signal lands.
                if r.trigger.pull("send"):
                    with r.books.lock:
                        r.books.requests_during_kill += 1
                response = conn.getresponse()
                status, raw = response.status, response.read()
                request_id = response.getheader("x-amzn-requestid", "")
            except (OSError, http.client.HTTPException):
                r.books.settle(self.kind, [], ids, "no answer", gen)
                continue
            finally:
                conn.close()
            self.settle(ids, status, raw, gen, request_id)

    def settle(self, ids: list[str], status: int, raw: bytes, gen: int, request_id: str) -> None:
        r = self.run_
        if self.kind == "async":
            if status == 202:
                r.books.settle("async", ids, [], "202", gen)
                r.books.shoal_ids[ids[0]] = request_id
            else:
                r.books.settle("async", [], ids, f"HTTP {status}", gen)
                r.note_error(f"async invoke answered {status}: {raw[:300]!r}")
            return
        if status != 200:
            r.books.settle("queue", [], ids, f"HTTP {status}", gen)
            r.note_error(f"SendMessageBatch answered {status}: {raw[:300]!r}")
            return
        try:
            answer = json.loads(raw)
            ok = {int(e["Id"]): e["MessageId"] for e in answer.get("Successful", []) if e.get("MessageId")}
        except (ValueError, KeyError, TypeError):
            r.books.settle("queue", [], ids, "200 unreadable", gen)
            r.note_error(f"SendMessageBatch answered 200 with {raw[:300]!r}")
            return
        acked = [ident for i, ident in enumerate(ids) if i in ok]
        refused = [ident for i, ident in enumerate(ids) if i not in ok]
        for i, ident in enumerate(ids):
            if i in ok:
                r.books.shoal_ids[ident] = ok[i]
        if refused:
            r.note_error(f"SendMessageBatch refused {len(refused)} entries: {raw[:300]!r}")
        r.books.settle("queue", acked, refused, "200", gen)


# ---------------------------------------------------------------------------------------
# The run.


def manifest(ledger: str, queue: bool, schedule: bool) -> str:
    events = []
    if queue:
        events.append(f'{{ queue = "{QUEUE}", batch_size = {BATCH} }}')
    if schedule:
        # Every minute, five times over: distinct expressions are distinct schedules, so
        # five fires (and five chances for a kill to meet one) a minute.
        events += [f'{{ schedule = "{e}" }}' for e in SCHEDULES]
    lines = [
        f"[functions.{FUNCTION_NAME}]",
        'runtime = "nodejs"',
        'handler = "index.handler"',
        'memory = "128MiB"',
        'timeout = "30s"',
        f'env = {{ LEDGER = "{ledger}" }}',
    ]
    if events:
        lines.append(f"events = [{', '.join(events)}]")
    return "\n".join(lines) + "\n"


class KillRun:
    def __init__(self, args: argparse.Namespace, binary: str, workdir: Path):
        self.args = args
        self.rng = random.Random(args.seed)
        self.workdir = workdir
        self.trigger = Trigger()
        fail_async = 0 if args.quick else args.fail_every * 2
        self.ledger = Ledger(self.trigger, args.fail_every, fail_async, workdir / "ledger.log")
        self.daemon = Daemon(binary, workdir)
        self.books = Books()
        self.stop_sending = threading.Event()
        self.targets = {
            "queue": round(args.messages * (1 - args.async_share)),
            "async": round(args.messages * args.async_share),
        }
        self.kills = 0
        self.kill_modes = Counter()
        # Descendants of a killed daemon still running after ORPHAN_PATIENCE: pid ->
        # (start time, generation, cmdline), until the next start is checked.
        self.lingering: dict[int, tuple[int, int, str]] = {}
        # (generation, pid, cmdline) of those the next start then cleared, and of those it
        # did not (orphans: a failure).
        self.outlived_kill: list[tuple[int, int, str]] = []
        self.orphans: list[tuple[int, int, str]] = []
        self.errors = Counter()
        self.error_examples: list[str] = []
        self.queue_path = f"/000000000000/{QUEUE}"

    def note_error(self, text: str) -> None:
        key = text.split(":")[0]
        self.errors[key] += 1
        if len(self.error_examples) < 10:
            self.error_examples.append(text)

    def budget(self, kind: str) -> float:
        """How many ids of `kind` may be acknowledged by now: the target spread over the
        kills, and within one uptime over the mean uptime, so sends go on all the time."""
        if self.stop_sending.is_set():
            return 0
        within = min(1.0, (time.monotonic() - self.daemon.up_since) / self.args.mean_uptime)
        share = min(1.0, (self.kills + within + 0.5) / self.args.kills)
        return self.targets[kind] * share

    def sent_enough(self) -> bool:
        return all(self.books.acked_by_kind[k] >= t for k, t in self.targets.items())

    # -- setup ---------------------------------------------------------------------------

    def setup(self) -> None:
        d = self.daemon
        d.start()
        if self.targets["queue"]:
            status, answer = sqs(
                d.control, d.token, "CreateQueue",
                {"QueueName": QUEUE, "Attributes": {"VisibilityTimeout": str(self.args.visibility_timeout)}},
            )
            if status != 200 or "QueueUrl" not in answer:
                raise HarnessError(f"CreateQueue answered {status}: {answer}")
            # The URL names the listener it was created on; senders put the current one in.
            url = answer["QueueUrl"]
            self.queue_path = "/" + url.split("://", 1)[-1].split("/", 1)[-1]
        fn_dir = self.workdir / "function"
        shutil.copytree(FUNCTION, fn_dir)
        (fn_dir / "shoal.toml").write_text(
            manifest(self.ledger.addr, self.targets["queue"] > 0, not self.args.no_schedule)
        )
        deploy = subprocess.run(
            [d.binary, "--data-dir", str(d.data), "deploy", str(fn_dir)],
            capture_output=True, text=True,
        )
        if deploy.returncode != 0:
            raise HarnessError(f"deploy failed: {deploy.stderr.strip() or deploy.stdout.strip()}")
        self.ledger.generation = d.generation

    # -- the kill loop -------------------------------------------------------------------

    def kill(self, why: str, before: dict[int, int] | None = None) -> None:
        lingering = self.daemon.kill(why, before)
        self.kills += 1
        self.kill_modes[why] += 1
        self.trigger.killed.set()
        for pid, start in lingering.items():
            cmd = f"{cmdline(pid)[:60]}… ({describe(pid)})"
            self.lingering[pid] = (start, self.daemon.generation, cmd)
            log(f"pid {pid} of killed generation {self.daemon.generation} still runs "
                f"{ORPHAN_PATIENCE:.0f} s after the kill: {cmd}")

    def restart(self) -> None:
        self.daemon.spawn()
        self.ledger.generation = self.daemon.generation
        if self.rng.random() < MODES["startup"] / sum(MODES.values()):
            # Kill during recovery: before the listeners are up, or just after.
            time.sleep(self.rng.uniform(0, 0.4))
            self.kill("startup")
            self.daemon.spawn()
            self.ledger.generation = self.daemon.generation
        self.daemon.wait_ready()
        self.settle_lingering()

    def settle_lingering(self) -> None:
        """Processes that outlived a kill must be gone once the next daemon has started
        (it clears dead daemons' cgroups); any still running then is an orphan."""
        if not self.lingering:
            return
        alive = linger({pid: start for pid, (start, _, _) in self.lingering.items()}, ORPHAN_PATIENCE)
        for pid, (start, gen, cmd) in self.lingering.items():
            if pid in alive:
                self.orphans.append((gen, pid, cmd))
                log(f"ORPHAN: pid {pid} of generation {gen} survived the next start: {cmd[:300]}")
            else:
                self.outlived_kill.append((gen, pid, cmd))
        end(alive)
        self.lingering.clear()

    def kill_loop(self, deadline: float) -> None:
        a = self.args
        aimed = [m for m in MODES if m not in ("startup",)]
        weights = [MODES[m] for m in aimed]
        last_progress = time.monotonic()
        while not (self.kills >= a.kills and self.sent_enough()):
            if time.monotonic() > deadline:
                raise HarnessError(
                    f"only {dict(self.books.acked_by_kind)} of {self.targets} acknowledged after "
                    f"{a.send_patience:.0f} s of sending and {self.kills} kills; see {self.daemon.log_path}"
                )
            mode = self.rng.choices(aimed, weights)[0]
            before = None
            uptime = self.rng.uniform(0.1 * a.mean_uptime, 1.9 * a.mean_uptime)
            next_fire = self.next_fire_in()
            if mode == "timer" and next_fire is not None and next_fire < 2 * uptime:
                # Aim at the moment the scheduler records the next fire.
                mode = "fire"
                self.trigger.arm("fire")
                self.trigger.fired.wait(max(0.0, next_fire + self.rng.uniform(-0.05, 0.25)))
            elif mode == "timer":
                self.trigger.arm("timer")
                self.trigger.fired.wait(uptime)
            else:
                # Let the daemon work a while first (deliveries must get somewhere between
                # kills, or the backlog only grows), then wait for the aimed moment; the
                # timer stands in if it does not come. A fresh fire may end either wait.
                self.trigger.arm("warm-up")
                if not self.trigger.fired.wait(uptime * self.rng.uniform(0.3, 0.8)):
                    before = descendants(self.daemon.proc.pid)
                    self.trigger.arm(mode, self.aimed_kill(mode))
                    self.trigger.fired.wait(uptime)
            self.trigger.disarm()
            fired = self.trigger.fired_mode
            self.kill(
                fired or (mode if mode in ("timer", "fire") else f"timer ({mode} never came)"),
                before if fired in ("send", "delete") else None,
            )
            self.restart()
            if time.monotonic() - last_progress > 10:
                last_progress = time.monotonic()
                self.progress()
        self.trigger.disarm()

    def aimed_kill(self, mode: str):
        """For a narrow moment, the signal the puller sends itself: right after a send's
        request is written (0-3 ms: the daemon is parsing, committing or answering), or
        right after the ledger answered a delivery (0-30 ms: the result travels back and
        Shoal deletes or settles the delivery)."""
        if mode not in ("send", "delete"):
            return None
        proc = self.daemon.proc
        delay = self.rng.uniform(0, 0.003 if mode == "send" else 0.03)

        def action() -> None:
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)

        return action

    def next_fire_in(self) -> float | None:
        """Seconds to the schedule's next fire, predicted from the last one delivered (the
        schedule is rate(1 minute)); None before the first."""
        with self.ledger.lock:
            last: dict[str, str] = {}
            for rule, fire, _ in self.ledger.schedule:
                last[rule] = max(fire, last.get(rule, ""))
        soonest = None
        for fire in last.values():
            at = epoch(fire)
            if at is not None:
                wait = (at - time.time()) % 60
                soonest = wait if soonest is None else min(soonest, wait)
        return soonest

    def progress(self) -> None:
        delivered, _ = self.ledger.snapshot()
        b = self.books
        log(
            f"kills {self.kills}/{self.args.kills}; acknowledged queue {b.acked_by_kind['queue']}/{self.targets['queue']}, "
            f"async {b.acked_by_kind['async']}/{self.targets['async']}; unacknowledged {len(b.unacked)}; "
            f"delivered ids {len(delivered)}; orphans {len(self.orphans)}"
        )

    # -- drain and check -----------------------------------------------------------------

    def pending(self) -> tuple[int | None, str]:
        """What Shoal still holds for the function, from `GET /admin/status`: the queue's
        visible, in-flight and delayed messages, and the async worker's backlog (visible
        and delayed: retries waiting their turn) and calls in flight. None if unreadable."""
        control = self.daemon.control
        if control is None:
            return None, "daemon down"
        host, port = control.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            status, body = request(conn, "GET", "/admin/status", self.daemon.token, b"", {})
            report = json.loads(body)
        except (OSError, http.client.HTTPException, ValueError) as e:
            return None, f"status unreadable ({e})"
        finally:
            conn.close()
        if status != 200:
            return None, f"status answered {status}"
        parts, total = [], 0
        for q in report.get("queues", []):
            if q.get("name") == QUEUE:
                n = q.get("visible", 0) + q.get("in_flight", 0) + q.get("delayed", 0)
                total += n
                parts.append(f"queue {q.get('visible', 0)} visible, {q.get('in_flight', 0)} in flight, "
                             f"{q.get('delayed', 0)} delayed")
        for t in report.get("triggers", []):
            if t.get("function") == FUNCTION_NAME and t.get("kind") == "async":
                n = t.get("backlog", 0) + t.get("in_flight", 0)
                total += n
                parts.append(f"async {t.get('backlog', 0)} waiting, {t.get('in_flight', 0)} running")
        return total, "; ".join(parts)

    def drain(self) -> float:
        """Wait until every acknowledged id is delivered and Shoal holds nothing more, or
        until Shoal has held nothing for a while with ids still missing (nothing left that
        could deliver them: they are lost), or the drain timeout."""
        started = time.monotonic()
        deadline = started + self.args.drain_timeout
        acked = set(self.books.acked)
        last_log = 0.0
        empty_since = None
        while time.monotonic() < deadline:
            delivered, _ = self.ledger.snapshot()
            missing = sum(1 for i in acked if i not in delivered)
            held, text = self.pending()
            if time.monotonic() - last_log > 5:
                last_log = time.monotonic()
                log(f"drain: {len(acked) - missing}/{len(acked)} acknowledged ids delivered; {text}")
            if held == 0:
                empty_since = empty_since or time.monotonic()
                # All there: stay a moment for redeliveries already on their way. Some
                # missing: give a delivery in progress time to be reported, then stop.
                if time.monotonic() - empty_since > (3 if missing == 0 else 15):
                    if missing:
                        log(f"drain: Shoal holds nothing more and {missing} acknowledged id(s) never came")
                    break
            else:
                empty_since = None
            time.sleep(0.5)
        return time.monotonic() - started

    def verdict(self, elapsed: float, drain_s: float, final_exit, final_orphans) -> dict:
        delivered, first_at = self.ledger.snapshot()
        b = self.books
        lost = sorted(i for i in b.acked if i not in delivered)
        dup_ids = {i: n for i, n in delivered.items() if n > 1 and (i in b.acked or i in b.unacked)}
        unacked_delivered = [i for i in b.unacked if i in delivered]
        sent = set(b.acked) | set(b.unacked)
        unknown = [i for i in delivered if i not in sent and "|" not in i]
        latencies = sorted(first_at[i] - b.acked[i][0] for i in b.acked if i in first_at)
        fires = self.schedule_report()
        starts = self.daemon.start_times
        return {
            "command": " ".join(["python3 bench/kill.py", *sys.argv[1:]]),
            "date": datetime.now().isoformat(timespec="seconds"),
            "kills": self.kills,
            "kills_by_moment": dict(self.kill_modes),
            "restarts": self.daemon.generation - 1,
            "acknowledged": {k: b.acked_by_kind[k] for k in self.targets},
            "unacknowledged": len(b.unacked),
            "answers": dict(b.answers),
            "lost": len(lost),
            "lost_ids": lost,
            "duplicate_ids": len(dup_ids),
            "duplicate_deliveries": sum(n - 1 for n in dup_ids.values()),
            "duplicates_by_kind": dict(Counter("queue" if i[0] == "q" else "async" for i in dup_ids)),
            "unacknowledged_but_delivered": len(unacked_delivered),
            "unknown_ids_delivered": len(unknown),
            "async_ids_under_several_request_ids": sum(1 for r in self.ledger.request_ids.values() if len(r) > 1),
            "injected_failures": dict(self.ledger.injected),
            "deliveries_held_for_a_kill": self.ledger.interrupted,
            "schedule": fires,
            "processes_under_killed_daemons": self.daemon.descendants_at_kills,
            "orphan_patience_s": ORPHAN_PATIENCE,
            "outlived_kill": [{"generation": g, "pid": p, "cmdline": c} for g, p, c in self.outlived_kill],
            "orphans": [{"generation": g, "pid": p, "cmdline": c} for g, p, c in self.orphans]
            + [{"generation": self.daemon.generation, "pid": p, "cmdline": cmdline(p), "after": "SIGTERM"} for p in final_orphans],
            "final_sigterm_exit": final_exit,
            "ack_to_delivery_ms": {
                "p50": round(1000 * latencies[len(latencies) // 2]) if latencies else None,
                "p99": round(1000 * latencies[int(len(latencies) * 0.99)]) if latencies else None,
                "max": round(1000 * latencies[-1]) if latencies else None,
            },
            "start_to_ready_ms": {
                "median": round(1000 * statistics.median(starts)) if starts else None,
                "max": round(1000 * max(starts)) if starts else None,
            },
            "build": "release" if "/release/" in self.daemon.binary else "debug" if "/debug/" in self.daemon.binary else "?",
            "drain_s": round(drain_s, 1),
            "elapsed_s": round(elapsed, 1),
            "errors": dict(self.errors),
            "error_examples": self.error_examples,
            "malformed_ledger_lines": self.ledger.malformed[:10],
        }

    def schedule_report(self) -> dict:
        """Per schedule (rule): each minute's fire must come once as an event (a
        redelivery of the same event is at-least-once; two events for one time is a
        double fire), and no minute between the first and last seen may be missing (the
        daemon is never down for a whole minute here, so nothing is skipped by design)."""
        with self.ledger.lock:
            fires = list(self.ledger.schedule)
        by_fire: dict[tuple[str, str], set[str]] = {}
        per_event = Counter()
        for rule, fire, event_id in fires:
            by_fire.setdefault((rule, fire), set()).add(event_id)
            per_event[event_id] += 1
        gaps = []
        for rule in sorted({r for r, _ in by_fire}):
            times = sorted(t for t in (epoch(f) for r, f in by_fire if r == rule) if t is not None)
            for a, b in zip(times, times[1:]):
                if b - a > 90:
                    gaps.append(f"{rule}: {b - a:.0f} s after {datetime.fromtimestamp(a, timezone.utc):%H:%M:%S}")
        return {
            "schedules": len({r for r, _ in by_fire}),
            "deliveries": len(fires),
            "fire_times": len(by_fire),
            "redelivered_events": sum(1 for n in per_event.values() if n > 1),
            "times_fired_twice": sorted(f"{r} {f}" for (r, f), ids in by_fire.items() if len(ids) > 1),
            "gaps_over_90s": gaps,
        }

    def explain_lost(self, lost: list[str]) -> None:
        """Each lost id's trail (what the ledger saw of it, what the daemon logged under
        its MessageId or request id), then the daemon's log around the kill after it was
        acknowledged."""
        with open(self.daemon.log_path, "rb") as f:
            daemon_log = ANSI.sub("", f.read().decode(errors="replace")).splitlines()
        ledger_log = (self.workdir / "ledger.log").read_text().splitlines()
        for ident in lost[:10]:
            shoal_id = self.books.shoal_ids.get(ident, "")
            at, gen = self.books.acked[ident]
            print(f"\n--- lost {ident} ({shoal_id or 'no Shoal id'}), acknowledged by generation {gen}")
            for line in ledger_log:
                if ident in line.split(" ", 4)[-1].replace("@", ",").split(","):
                    print(f"    ledger: {line[:200]}")
            if shoal_id:
                current = "?"
                for line in daemon_log:
                    if line.startswith("==== kill.py"):
                        current = line
                    elif shoal_id in line:
                        print(f"    daemon ({current[13:].strip()}): {line[:400]}")
        by_gen: dict[int, list[str]] = {}
        for ident in lost:
            by_gen.setdefault(self.books.acked[ident][1], []).append(ident)
        for gen, ids in sorted(by_gen.items())[:5]:
            print(f"\n--- {len(ids)} lost id(s) acknowledged by generation {gen}: {', '.join(ids[:20])}"
                  f"{' …' if len(ids) > 20 else ''}")
            print(f"--- the end of generation {gen}'s log:")
            print(self.daemon.log_section(gen))
            print(f"--- the start of generation {gen + 1}'s log:")
            print("\n".join(self.daemon.log_section(gen + 1, tail=10**6).splitlines()[:40]))


def epoch(iso: str) -> float | None:
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def find_binary(args: argparse.Namespace) -> str:
    if args.shoal:
        return args.shoal
    profile = "release" if args.release else "debug"
    log(f"building shoal ({profile})")
    subprocess.run(
        ["cargo", "build", "--quiet", "--locked", "--bin", "shoal", *(["--release"] if args.release else [])],
        cwd=ROOT, check=True,
    )
    meta = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps", "--locked"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    )
    return str(Path(json.loads(meta.stdout)["target_directory"]) / profile / "shoal")


def summary(res: dict) -> str:
    a = res["acknowledged"]
    s = res["schedule"]
    lines = [
        f"kills {res['kills']} ({', '.join(f'{k} {v}' for k, v in sorted(res['kills_by_moment'].items()))}), "
        f"restarts {res['restarts']}; of {res['processes_under_killed_daemons']} processes under the killed daemons, "
        f"{len(res['outlived_kill'])} outlived the kill by {ORPHAN_PATIENCE:.0f} s (cleared by the next start), "
        f"{len(res['orphans'])} orphans",
        f"acknowledged: {a.get('queue', 0)} queue messages + {a.get('async', 0)} async invokes = {sum(a.values())}; "
        f"unacknowledged {res['unacknowledged']} (of which delivered anyway {res['unacknowledged_but_delivered']})",
        f"LOST {res['lost']}; duplicates {res['duplicate_ids']} ids ({res['duplicate_deliveries']} extra deliveries; "
        f"{res['duplicates_by_kind']}); unknown ids {res['unknown_ids_delivered']}; async ids redelivered "
        f"under another request id {res['async_ids_under_several_request_ids']}",
        f"injected failures {res['injected_failures']}; deliveries held for a kill {res['deliveries_held_for_a_kill']}",
        f"schedule: {s['fire_times']} fire times, {s['deliveries']} deliveries, {s['redelivered_events']} redelivered, "
        f"fired twice {len(s['times_fired_twice'])}, gaps {s['gaps_over_90s'] or 'none'}",
        f"ack→delivery ms p50 {res['ack_to_delivery_ms']['p50']} p99 {res['ack_to_delivery_ms']['p99']} max {res['ack_to_delivery_ms']['max']}; "
        f"start→ready ms median {res['start_to_ready_ms']['median']} max {res['start_to_ready_ms']['max']}",
        f"time {res['elapsed_s']} s (drain {res['drain_s']} s); final SIGTERM exit {res['final_sigterm_exit']}",
    ]
    if res["errors"]:
        lines.append(f"error answers: {res['errors']}; e.g. {res['error_examples'][:3]}")
    return "\n".join(lines)


def harness_args(parser: argparse.ArgumentParser, record: str) -> None:
    """The options this test and its cluster form (bench/cluster_kill.py) share; `record`
    is the JSON file `--record` writes."""
    parser.add_argument("--visibility-timeout", type=int, default=5, help="the queue's, in seconds")
    parser.add_argument("--drain-timeout", type=float, help="seconds to wait for delivery after the kills")
    parser.add_argument("--send-patience", type=float, help="seconds the sending phase may take at most")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--shoal", help="the shoal binary (default: build it with cargo)")
    parser.add_argument("--release", action=argparse.BooleanOptionalAction, default=None,
                        help="build in release (default for the full form)")
    parser.add_argument("--record", action=argparse.BooleanOptionalAction, default=None,
                        help=f"write {record} and its section of docs/BENCHMARKS.md (default for the full form)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,000 ids and 20 kills (CI)")
    parser.add_argument("--messages", type=int, help="ids to have acknowledged (default 20,000; 2,000 quick)")
    parser.add_argument("--kills", type=int, help="kills at least (default 200; 20 quick)")
    parser.add_argument("--async-share", type=float, default=0.25, help="share of ids sent as Event invokes (1 = no queue)")
    parser.add_argument("--no-schedule", action="store_true", help="deploy no schedule")
    parser.add_argument("--mean-uptime", type=float, help="mean seconds between a start and the next kill")
    parser.add_argument("--fail-every", type=int, default=40,
                        help="refuse the first delivery of one queue id in N (async: one in 2N; none with --quick)")
    harness_args(parser, "docs/KILL.json")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    q = args.quick
    args.messages = args.messages or (2_000 if q else 20_000)
    args.kills = args.kills if args.kills is not None else (20 if q else 200)
    args.mean_uptime = args.mean_uptime or 2.0
    args.drain_timeout = args.drain_timeout or (60 if q else 420)
    args.send_patience = args.send_patience or (150 if q else 3600)
    args.release = (not q) if args.release is None else args.release
    args.record = (not q) if args.record is None else args.record
    args.seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    if not 0 <= args.async_share <= 1 or args.kills < 1:
        parser.error("--async-share is 0..1 and --kills at least 1")

    binary = find_binary(args)
    workdir = Path(tempfile.mkdtemp(prefix="shoal-kill-"))
    log(f"{args.messages} ids, {args.kills} kills, seed {args.seed}, {binary}, work dir {workdir}")
    started = time.monotonic()
    run = KillRun(args, binary, workdir)
    senders: list[Sender] = []
    code = 2
    try:
        run.setup()
        log(f"daemon up, queue and function deployed; ledger on {run.ledger.addr}")
        senders = [Sender("queue", run) for _ in range(3 if run.targets["queue"] else 0)]
        senders += [Sender("async", run) for _ in range(2 if run.targets["async"] else 0)]
        for s in senders:
            s.start()
        run.kill_loop(time.monotonic() + args.send_patience)
        run.stop_sending.set()
        for s in senders:
            s.join(60)
        run.progress()
        log("killing stopped; draining")
        drain_s = run.drain()
        final_exit, final_orphans = run.daemon.stop()
        res = run.verdict(time.monotonic() - started, drain_s, final_exit, final_orphans)
        end(final_orphans)
        out = workdir / "kill-report.json"
        out.write_text(json.dumps(res, indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1))
        if args.record:
            killreport.RECORD.write_text(json.dumps({**res, "lost_ids": res["lost_ids"][:1000]}, indent=1) + "\n")
            report = ROOT / "docs" / "BENCHMARKS.md"
            report.write_text(killreport.splice(report.read_text(), killreport.section(res)))
            log(f"recorded in {killreport.RECORD.relative_to(ROOT)} and docs/BENCHMARKS.md")
        print(summary(res), flush=True)
        if res["lost"]:
            print(f"\nLOST {res['lost']} acknowledged id(s): {', '.join(res['lost_ids'][:50])}")
            run.explain_lost(res["lost_ids"])
        s = res["schedule"]
        code = 1 if res["lost"] or res["orphans"] or s["times_fired_twice"] or s["gaps_over_90s"] else 0
    except HarnessError as e:
        print(f"kill: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 2
    finally:
        run.stop_sending.set()
        run.trigger.killed.set()
        if run.daemon.proc and run.daemon.proc.poll() is None:
            run.daemon.proc.kill()
            run.daemon.proc.wait()
        run.ledger.close()
        run.daemon.log.close()
    if code == 0 and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        log(f"work dir kept: {workdir} (daemon.log, ledger.log, kill-report.json)")
    return code


if __name__ == "__main__":
    sys.exit(main())
