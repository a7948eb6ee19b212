#!/usr/bin/env python3
"""The kill test against a cluster (issue 17): three `shoal serve --cluster` nodes on one
`nats-server -js`, `kill -9` of one node at a time under a stream of async events and
steady HTTP load; nothing a node acknowledged is lost, and the killed node rejoins.

The single-node kill test's parts are reused (bench/kill.py: the ledger outside Shoal that
the function bench/functions/ledger reports every id to, the books of acknowledged ids).
Sender threads send SQS `SendMessageBatch`es and `Event` invokes, each id unique, each
request to a node chosen at random among those up; HTTP callers call a route on the nodes
up, closed loop. A killer thread `kill -9`s a random node after a random uptime and starts
it again on its data directory (the others keep running). Then the killing stops, the
queue drains and the check runs: every id a node acknowledged (200 with a MessageId, 202
for an Event) must be in the ledger; duplicates (at-least-once delivery) are counted, not
failures. Every node must then see all three live and serve the route (rejoined).

    python3 bench/cluster_kill.py              # full form: 20,000 ids, 60 kills (release)
    python3 bench/cluster_kill.py --quick      # 1,000 ids, 5 kills (debug; scripts/test)

A killed node's messages come back to the others: an SQS message after its visibility
timeout (5 s here), an async event after the internal lease (30 s), so the drain waits
at least that long after the last kill. Instances run unsandboxed (`--sandbox off`): three
daemons on one machine would share the sandbox's uid range and cgroup tree, which the
single-node kill test covers. Schedules are tested apart (cluster test
`a_schedule_fires_once_across_three_nodes_over_several_periods`).

Exit status: 0 when nothing acknowledged was lost and every node rejoined; 1 otherwise;
2 on a harness error. Standard library only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import kill
from kill import BATCH, FUNCTION, FUNCTION_NAME, QUEUE, HarnessError, log
from shoalbench import killreport
from shoalbench.common import BenchError
from shoalbench.natsserver import Nats

ROOT = Path(__file__).resolve().parent.parent
NODES = ["n1", "n2", "n3"]
# The route the HTTP callers load (a second function beside the ledger's).
PING = """exports.handler = async () => ({ statusCode: 200, body: "pong" });\n"""
# The ledger's handler after a random pause of up to PAUSE_MS: every node then has calls in
# flight when it is killed. A call killed in its pause has told the ledger nothing.
SLOW = """const ledger = require("./index.js");
const most = Number(process.env.PAUSE_MS || 0);
exports.handler = async (event, context) => {
  await new Promise((resolve) => setTimeout(resolve, Math.random() * most));
  return ledger.handler(event, context);
};
"""


class Node(kill.Daemon):
    """One cluster node: the kill test's daemon, started with `--cluster`."""

    def __init__(self, binary: str, workdir: Path, name: str, url: str):
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(binary, workdir)
        self.name = name
        self.url = url
        self.gateway: str | None = None

    def spawn(self) -> None:
        for published in ("control-addr", "gateway-addr"):
            try:
                (self.data / published).unlink()
            except FileNotFoundError:
                pass
        self.generation += 1
        self.mark(f"generation {self.generation} starting")
        self.spawned_at = time.monotonic()
        self.proc = subprocess.Popen(
            [self.binary, "--data-dir", str(self.data), "serve",
             "--listen", "127.0.0.1:0", "--control-listen", "127.0.0.1:0",
             "--shutdown-grace", "5", "--sandbox", "off",
             "--cluster", self.url, "--node-name", self.name],
            stdout=self.log, stderr=self.log,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info"), "NO_COLOR": "1"},
        )

    def wait_ready(self, patience: float = 60.0) -> None:
        super().wait_ready(patience)
        self.gateway = (self.data / "gateway-addr").read_text().strip()

    def up(self) -> str | None:
        with self.lock:
            return self.control

    def status(self) -> dict | None:
        control = self.up()
        if control is None:
            return None
        host, port = control.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            status, body = kill.request(conn, "GET", "/admin/status", self.token, b"", {})
            return json.loads(body) if status == 200 else None
        except (OSError, http.client.HTTPException, ValueError):
            return None
        finally:
            conn.close()


class ClusterRun:
    def __init__(self, args: argparse.Namespace, binary: str, workdir: Path):
        self.args = args
        self.rng = random.Random(args.seed)
        self.workdir = workdir
        self.nats = Nats(workdir)
        self.trigger = kill.Trigger()  # never armed: kills here are timed, not aimed
        # Injected failures on queue batches only: a failed async event is retried after a
        # minute (Lambda's timing), longer than this test should wait.
        self.ledger = kill.Ledger(self.trigger, args.fail_every, 0, workdir / "ledger.log")
        self.nodes = [Node(binary, workdir / name, name, self.nats.url) for name in NODES]
        self.books = kill.Books()
        self.stop_sending = threading.Event()
        self.targets = {
            "queue": round(args.messages * (1 - args.async_share)),
            "async": round(args.messages * args.async_share),
        }
        self.kills = 0
        self.sending_since: float | None = None
        self.rejoin_s: list[float] = []  # per restart: spawn to live in every other view
        self.rejoin_missed = 0  # restarts not seen live by the others within 60 s
        self.kills_by_node = Counter()
        self.http = Counter()  # "200", "502", "no answer", ...
        self.errors = Counter()
        self.error_examples: list[str] = []
        self.queue_path = f"/000000000000/{QUEUE}"
        self.sent_to = Counter()  # node -> acknowledged requests

    def note_error(self, text: str) -> None:
        self.errors[text.split(":")[0]] += 1
        if len(self.error_examples) < 10:
            self.error_examples.append(text)

    def live(self) -> list[Node]:
        return [n for n in self.nodes if n.up() is not None]

    def budget(self, kind: str) -> float:
        """How many ids of `kind` may be acknowledged by now: the target spread evenly over
        the time the kills should take, so sends and deliveries go on through all of them."""
        if self.sending_since is None:
            return 0
        span = self.args.kills * self.args.mean_uptime * 1.5
        share = min(1.0, (time.monotonic() - self.sending_since) / span)
        return self.targets[kind] * share

    def sent_enough(self) -> bool:
        return all(self.books.acked_by_kind[k] >= t for k, t in self.targets.items())

    # -- setup ---------------------------------------------------------------------------

    def setup(self) -> None:
        for node in self.nodes:
            node.start()
        first = self.nodes[0]
        status, answer = kill.sqs(
            first.control, first.token, "CreateQueue",
            {"QueueName": QUEUE, "Attributes": {"VisibilityTimeout": str(self.args.visibility_timeout)}},
        )
        if status != 200 or "QueueUrl" not in answer:
            raise HarnessError(f"CreateQueue answered {status}: {answer}")
        self.queue_path = "/" + answer["QueueUrl"].split("://", 1)[-1].split("/", 1)[-1]
        fn_dir = self.workdir / "function"
        shutil.copytree(FUNCTION, fn_dir)
        (fn_dir / "ping.js").write_text(PING)
        (fn_dir / "slow.js").write_text(SLOW)
        manifest = kill.manifest(self.ledger.addr, True, False)
        manifest = manifest.replace('handler = "index.handler"', 'handler = "slow.handler"')
        manifest = manifest.replace("env = { ", f'env = {{ PAUSE_MS = "{self.args.pause_ms:g}", ')
        if "slow.handler" not in manifest or "PAUSE_MS" not in manifest:
            raise HarnessError(f"bench/kill.py's manifest changed shape: {manifest}")
        manifest += '\n[functions.ping]\nruntime = "nodejs"\nhandler = "ping.handler"\n'
        manifest += 'http = [{ method = "GET", path = "/ping" }]\n'
        (fn_dir / "shoal.toml").write_text(manifest)
        deploy = subprocess.run(
            [first.binary, "--data-dir", str(first.data), "deploy", str(fn_dir)],
            capture_output=True, text=True,
        )
        if deploy.returncode != 0:
            raise HarnessError(f"deploy failed: {deploy.stderr.strip() or deploy.stdout.strip()}")
        self.wait_joined(60)

    def joined(self) -> str | None:
        """None when every node sees all three live and runs both functions; else why not."""
        for node in self.nodes:
            status = node.status()
            if status is None:
                return f"{node.name}: no status"
            live = [n for n in (status.get("cluster") or {}).get("nodes", []) if n.get("alive")]
            if {n["name"] for n in live} != set(NODES):
                return f"{node.name} sees live {sorted(n['name'] for n in live)}"
            for n in live:
                names = {f["name"] for f in n["load"]["functions"]}
                if not {FUNCTION_NAME, "ping"} <= names:
                    return f"{node.name} sees {n['name']} running {sorted(names)}"
        return None

    def wait_joined(self, patience: float) -> float:
        started = time.monotonic()
        while (why := self.joined()) is not None:
            if time.monotonic() - started > patience:
                raise HarnessError(f"the nodes never all joined: {why}")
            time.sleep(0.2)
        return time.monotonic() - started

    # -- load ----------------------------------------------------------------------------

    def sender(self, kind: str, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stop_sending.is_set():
            if self.books.acked_by_kind[kind] >= self.budget(kind):
                time.sleep(0.01)
                continue
            live = self.live()
            if not live:
                time.sleep(0.05)
                continue
            node = rng.choice(live)
            control, gen = node.up(), node.generation
            if control is None:
                continue
            host, port = control.rsplit(":", 1)
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            if kind == "queue":
                ids = self.books.new_ids("queue", BATCH)
                path = "/"
                body = json.dumps({
                    "QueueUrl": f"http://{control}{self.queue_path}",
                    "Entries": [{"Id": str(i), "MessageBody": ident} for i, ident in enumerate(ids)],
                }).encode()
                headers = {"Content-Type": "application/x-amz-json-1.0",
                           "X-Amz-Target": "AmazonSQS.SendMessageBatch"}
            else:
                ids = self.books.new_ids("async", 1)
                path = f"/2015-03-31/functions/{FUNCTION_NAME}/invocations"
                body = json.dumps({"id": ids[0]}).encode()
                headers = {"Content-Type": "application/json", "X-Amz-Invocation-Type": "Event"}
            try:
                status, raw = kill.request(conn, "POST", path, node.token, body, headers)
            except (OSError, http.client.HTTPException):
                self.books.settle(kind, [], ids, "no answer", gen)
                continue
            finally:
                conn.close()
            if kind == "async":
                if status == 202:
                    self.books.settle(kind, ids, [], "202", gen)
                    self.sent_to[node.name] += 1
                else:
                    self.books.settle(kind, [], ids, f"HTTP {status}", gen)
                    self.note_error(f"async invoke on {node.name} answered {status}: {raw[:200]!r}")
                continue
            try:
                ok = {int(e["Id"]) for e in json.loads(raw).get("Successful", []) if e.get("MessageId")}
            except (ValueError, KeyError, TypeError, AttributeError):
                ok = set()
            if status != 200 or len(ok) < len(ids):
                self.note_error(f"SendMessageBatch on {node.name} answered {status}: {raw[:200]!r}")
            acked = [ident for i, ident in enumerate(ids) if i in ok]
            refused = [ident for i, ident in enumerate(ids) if i not in ok]
            self.books.settle(kind, acked, refused, str(status), gen)
            if acked:
                self.sent_to[node.name] += 1

    def caller(self, seed: int) -> None:
        """Closed-loop HTTP calls on the nodes up: the steady load a kill lands in."""
        rng = random.Random(seed)
        while not self.stop_sending.is_set():
            live = [n for n in self.live() if n.gateway]
            if not live:
                time.sleep(0.05)
                continue
            gateway = rng.choice(live).gateway
            host, port = gateway.rsplit(":", 1)
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            try:
                conn.request("GET", "/ping")
                response = conn.getresponse()
                response.read()
                self.http[str(response.status)] += 1
            except (OSError, http.client.HTTPException):
                self.http["no answer"] += 1
            finally:
                conn.close()

    # -- the kill loop -------------------------------------------------------------------

    def kill_loop(self, deadline: float) -> None:
        a = self.args
        self.sending_since = time.monotonic()
        while not (self.kills >= a.kills and self.sent_enough()):
            if time.monotonic() > deadline:
                raise HarnessError(
                    f"only {dict(self.books.acked_by_kind)} of {self.targets} acknowledged after "
                    f"{a.send_patience:.0f} s and {self.kills} kills"
                )
            time.sleep(self.rng.uniform(0.5 * a.mean_uptime, 1.5 * a.mean_uptime))
            if self.kills >= a.kills:
                continue
            victim = self.rng.choice(self.nodes)
            victim.kill("cluster kill test")
            self.kills += 1
            self.kills_by_node[victim.name] += 1
            # Down a while (its heartbeat may expire), then back on its data directory.
            time.sleep(self.rng.uniform(0, a.mean_uptime))
            victim.start()
            threading.Thread(target=self.watch_rejoin, args=(victim,), daemon=True).start()
            if self.kills % 5 == 0:
                self.progress()

    def watch_rejoin(self, node: Node) -> None:
        """Time from a restart's spawn until every other node up sees it live again."""
        spawned, generation = node.spawned_at, node.generation
        deadline = spawned + 60
        while time.monotonic() < deadline and node.generation == generation:
            others = [n for n in self.nodes if n is not node and n.up() is not None]
            seen = 0
            for other in others:
                status = other.status() or {}
                seen += any(
                    n["name"] == node.name and n.get("alive")
                    for n in (status.get("cluster") or {}).get("nodes", [])
                )
            if others and seen == len(others):
                with self.books.lock:
                    self.rejoin_s.append(time.monotonic() - spawned)
                return
            time.sleep(0.05)
        if node.generation == generation:
            with self.books.lock:
                self.rejoin_missed += 1

    def progress(self) -> None:
        delivered, _ = self.ledger.snapshot()
        b = self.books
        log(f"kills {self.kills}/{self.args.kills}; acknowledged queue {b.acked_by_kind['queue']}/"
            f"{self.targets['queue']}, async {b.acked_by_kind['async']}/{self.targets['async']}; "
            f"unacknowledged {len(b.unacked)}; delivered ids {len(delivered)}; http {dict(self.http)}")

    def drain(self) -> float:
        """Until every acknowledged id is delivered, or no new id came for `--stall` s (a
        dead node's async events come back after the 30 s lease), or the drain timeout."""
        started = time.monotonic()
        acked = set(self.books.acked)
        last_count, last_change, last_log = -1, started, 0.0
        while time.monotonic() - started < self.args.drain_timeout:
            delivered, _ = self.ledger.snapshot()
            count = sum(1 for i in acked if i in delivered)
            if count != last_count:
                last_count, last_change = count, time.monotonic()
            if count == len(acked):
                # Redeliveries of what a killed node held come back after the visibility
                # timeout or the lease: wait for them, to count duplicates.
                time.sleep(self.args.settle)
                break
            if time.monotonic() - last_change > self.args.stall:
                log(f"drain: no acknowledged id came for {self.args.stall:.0f} s; "
                    f"{len(acked) - count} missing")
                break
            if time.monotonic() - last_log > 5:
                last_log = time.monotonic()
                log(f"drain: {count}/{len(acked)} acknowledged ids delivered")
            time.sleep(0.5)
        return time.monotonic() - started

    def verdict(self, elapsed: float, drain_s: float, rejoin_s: float | None, rejoin_error: str | None) -> dict:
        delivered, first_at = self.ledger.snapshot()
        b = self.books
        lost = sorted(i for i in b.acked if i not in delivered)
        dup = {i: n for i, n in delivered.items() if n > 1}
        sent = set(b.acked) | set(b.unacked)
        latencies = sorted(first_at[i] - b.acked[i][0] for i in b.acked if i in first_at)
        calls = sum(self.http.values())
        return {
            "command": command(sys.argv[1:]),
            "date": datetime.now().isoformat(timespec="seconds"),
            "build": "release" if "/release/" in self.nodes[0].binary else "debug",
            "nodes": len(self.nodes),
            "kills": self.kills,
            "kills_by_node": dict(self.kills_by_node),
            "acknowledged": {k: b.acked_by_kind[k] for k in self.targets},
            "acknowledged_requests_by_node": dict(self.sent_to),
            "unacknowledged": len(b.unacked),
            "unacknowledged_but_delivered": sum(1 for i in b.unacked if i in delivered),
            "answers": dict(b.answers),
            "lost": len(lost),
            "lost_ids": lost,
            "duplicate_ids": len(dup),
            "duplicate_deliveries": sum(n - 1 for n in dup.values()),
            "duplicates_by_kind": dict(Counter("queue" if i[0] == "q" else "async" for i in dup)),
            "unknown_ids_delivered": sum(1 for i in delivered if i not in sent),
            "http_calls": calls,
            "http_answers": dict(self.http),
            "http_failed": calls - self.http["200"],
            "rejoined_s": None if rejoin_s is None else round(rejoin_s, 1),
            "restart_to_live_ms": {
                "median": round(1000 * statistics.median(self.rejoin_s)) if self.rejoin_s else None,
                "max": round(1000 * max(self.rejoin_s)) if self.rejoin_s else None,
                "restarts_seen": len(self.rejoin_s),
                "restarts_not_seen_in_60s": self.rejoin_missed,
            },
            "rejoin_error": rejoin_error,
            "ack_to_delivery_ms": {
                "p50": round(1000 * latencies[len(latencies) // 2]) if latencies else None,
                "p99": round(1000 * latencies[int(len(latencies) * 0.99)]) if latencies else None,
                "max": round(1000 * latencies[-1]) if latencies else None,
            },
            "drain_s": round(drain_s, 1),
            "elapsed_s": round(elapsed, 1),
            "injected_failures": dict(self.ledger.injected),
            "errors": dict(self.errors),
            "error_examples": self.error_examples,
        }


def command(argv: list[str]) -> str:
    """The command to repeat the run: without the binary's path (the build is recorded
    apart) or `--record`."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--shoal":
            skip = True
        elif not arg.startswith("--shoal=") and arg not in ("--record", "--no-record"):
            kept.append(arg)
    return " ".join(["python3 bench/cluster_kill.py", *kept])


def summary(res: dict) -> str:
    a = res["acknowledged"]
    lat = res["ack_to_delivery_ms"]
    return "\n".join([
        f"{res['nodes']} nodes, kills {res['kills']} {res['kills_by_node']}",
        f"acknowledged: {a['queue']} queue messages + {a['async']} async invokes = {sum(a.values())} "
        f"(requests per node {res['acknowledged_requests_by_node']}); unacknowledged "
        f"{res['unacknowledged']} (delivered anyway {res['unacknowledged_but_delivered']})",
        f"LOST {res['lost']}; duplicates {res['duplicate_ids']} ids ({res['duplicate_deliveries']} extra "
        f"deliveries; {res['duplicates_by_kind']}); unknown ids {res['unknown_ids_delivered']}",
        f"injected failures {res['injected_failures']}; HTTP calls {res['http_calls']}, failed {res['http_failed']} {res['http_answers']}",
        f"rejoined: {'every node sees all three live and serves the route' if res['rejoin_error'] is None else res['rejoin_error']}",
        f"restart → live in the others' view ms median {res['restart_to_live_ms']['median']} max "
        f"{res['restart_to_live_ms']['max']} ({res['restart_to_live_ms']['restarts_seen']} seen, "
        f"{res['restart_to_live_ms']['restarts_not_seen_in_60s']} not within 60 s)",
        f"ack→delivery ms p50 {lat['p50']} p99 {lat['p99']} max {lat['max']}; "
        f"time {res['elapsed_s']} s (drain {res['drain_s']} s)",
    ] + ([f"error answers: {res['errors']}; e.g. {res['error_examples'][:3]}"] if res["errors"] else []))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 ids and 5 kills (CI)")
    parser.add_argument("--messages", type=int, help="ids to have acknowledged (default 20,000; 1,000 quick)")
    parser.add_argument("--kills", type=int, help="kills (default 60; 5 quick)")
    parser.add_argument("--async-share", type=float, default=0.25, help="share of ids sent as Event invokes")
    parser.add_argument("--mean-uptime", type=float, help="mean seconds between kills (default 3; 2 quick)")
    parser.add_argument("--fail-every", type=int,
                        help="refuse the first delivery of one queue id in N (default 40; none with --quick)")
    parser.add_argument("--pause-ms", type=float, default=500,
                        help="the function waits a random time up to this before telling the ledger")
    parser.add_argument("--settle", type=float,
                        help="seconds to wait for redeliveries once every id came (default 35: "
                             "beyond the 30 s lease; 3 quick)")
    parser.add_argument("--stall", type=float, default=45,
                        help="seconds without a new delivery before the drain gives up (beyond the 30 s lease)")
    kill.harness_args(parser, "docs/KILL-CLUSTER.json")
    args = parser.parse_args()
    q = args.quick
    args.messages = args.messages or (1_000 if q else 20_000)
    args.kills = args.kills if args.kills is not None else (5 if q else 60)
    args.mean_uptime = args.mean_uptime or (2.0 if q else 3.0)
    args.fail_every = args.fail_every if args.fail_every is not None else (0 if q else 40)
    args.settle = args.settle if args.settle is not None else (3 if q else 35)
    args.drain_timeout = args.drain_timeout or (120 if q else 600)
    args.send_patience = args.send_patience or (120 if q else 3600)
    args.release = (not q) if args.release is None else args.release
    args.record = (not q) if args.record is None else args.record
    args.seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    if not 0 <= args.async_share <= 1 or args.kills < 1:
        parser.error("--async-share is 0..1 and --kills at least 1")

    binary = kill.find_binary(args)
    workdir = Path(tempfile.mkdtemp(prefix="shoal-cluster-kill-"))
    log(f"3 nodes, {args.messages} ids, {args.kills} kills, seed {args.seed}, {binary}, work dir {workdir}")
    started = time.monotonic()
    run: ClusterRun | None = None
    threads: list[threading.Thread] = []
    code = 2
    try:
        run = ClusterRun(args, binary, workdir)
        run.setup()
        log(f"three nodes up, queue and functions deployed; ledger on {run.ledger.addr}")
        threads = [threading.Thread(target=run.sender, args=("queue", args.seed + i), daemon=True)
                   for i in range(3)]
        threads += [threading.Thread(target=run.sender, args=("async", args.seed + 10 + i), daemon=True)
                    for i in range(2)]
        threads += [threading.Thread(target=run.caller, args=(args.seed + 20 + i,), daemon=True)
                    for i in range(2)]
        for t in threads:
            t.start()
        run.kill_loop(time.monotonic() + args.send_patience)
        run.stop_sending.set()
        for t in threads:
            t.join(60)
        run.progress()
        log("killing stopped; draining")
        drain_s = run.drain()
        rejoin_s, rejoin_error = None, None
        try:
            rejoin_s = run.wait_joined(60)
            for node in run.nodes:
                host, port = node.gateway.rsplit(":", 1)
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
                conn.request("GET", "/ping")
                if conn.getresponse().status != 200:
                    rejoin_error = f"{node.name} does not serve /ping"
                conn.close()
        except (HarnessError, BenchError, OSError, http.client.HTTPException) as e:
            rejoin_error = str(e)
        res = run.verdict(time.monotonic() - started, drain_s, rejoin_s, rejoin_error)
        (workdir / "kill-report.json").write_text(json.dumps(res, indent=1))
        if args.record:
            killreport.CLUSTER_RECORD.write_text(json.dumps({**res, "lost_ids": res["lost_ids"][:1000]}, indent=1) + "\n")
            report = ROOT / "docs" / "BENCHMARKS.md"
            report.write_text(killreport.splice(report.read_text(), killreport.cluster_section(res),
                                                killreport.CLUSTER_HEADING))
            log(f"recorded in {killreport.CLUSTER_RECORD.relative_to(ROOT)} and docs/BENCHMARKS.md")
        print(summary(res), flush=True)
        if res["lost"]:
            print(f"\nLOST {res['lost']} acknowledged id(s): {', '.join(res['lost_ids'][:50])}")
        code = 1 if res["lost"] or rejoin_error or run.rejoin_missed else 0
    except (HarnessError, BenchError) as e:
        print(f"cluster kill: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 2
    finally:
        if run is not None:
            run.stop_sending.set()
            for node in run.nodes:
                if node.proc and node.proc.poll() is None:
                    node.proc.send_signal(signal.SIGKILL)
                    node.proc.wait()
                node.log.close()
            run.ledger.close()
            run.nats.stop()
    if code == 0 and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        log(f"work dir kept: {workdir} (n*/daemon.log, nats-*/nats.log, ledger.log, kill-report.json)")
    return code


if __name__ == "__main__":
    sys.exit(main())
