"""Tests for runtimes/python/bootstrap.py.

Each test plays the Shoal daemon: it listens on a temporary Unix socket, starts the
bootstrap as a real process with the environment of docs/PROTOCOL.md, and speaks the
native channel with its own frame codec (written from the spec, not imported from the
bootstrap). Run: python3 -m unittest discover -s runtimes/python/test
"""

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest

BOOTSTRAP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bootstrap.py")
# How long a test waits for something the runtime does in milliseconds on an idle machine.
# Generous on purpose: CI shares 2 cores with other work; this only bounds a hang.
PATIENCE = 30.0

HELLO, INIT_ERROR, INVOKE, RESULT, ERROR = 1, 2, 3, 4, 5


def encode_frame(kind, ident, payload):
    return struct.pack(">IBI", 5 + len(payload), kind, ident) + payload


def encode_invoke(ident, request_id, deadline_ms, event):
    rid = request_id.encode()
    body = event if isinstance(event, bytes) else json.dumps(event).encode()
    return encode_frame(INVOKE, ident, struct.pack(">QH", deadline_ms, len(rid)) + rid + body)


class Daemon:
    """A fake daemon with one bootstrap process attached."""

    def __init__(self, test, files, handler, env=None):
        self.dir = tempfile.mkdtemp(prefix="shoal-py-test-")
        test.addCleanup(shutil.rmtree, self.dir, True)
        self.code = os.path.join(self.dir, "task")
        os.mkdir(self.code)
        for name, text in files.items():
            path = os.path.join(self.code, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(textwrap.dedent(text))
        path = os.path.join(self.dir, "channel.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(1)
        self.listener.settimeout(PATIENCE)
        full_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "SHOAL_SOCKET": path,
            "SHOAL_PROTOCOL": "1",
            "_HANDLER": handler,
            "LAMBDA_TASK_ROOT": self.code,
            "AWS_LAMBDA_FUNCTION_NAME": "fn",
            "AWS_LAMBDA_FUNCTION_VERSION": "3",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
            "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/fn",
            "AWS_LAMBDA_LOG_STREAM_NAME": "i-1",
            "AWS_LAMBDA_MAX_CONCURRENCY": "16",
        }
        full_env.update(env or {})
        self.out_path = os.path.join(self.dir, "stdout")
        self.err_path = os.path.join(self.dir, "stderr")
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-B", BOOTSTRAP], env=full_env, cwd="/", stdout=out, stderr=err
            )
        test.addCleanup(self.close)
        test.addCleanup(self.listener.close)
        self.conn, _ = self.listener.accept()
        self.conn.settimeout(PATIENCE)
        self.buf = b""

    def close(self):
        try:
            self.conn.close()
        except OSError:
            pass
        if self.proc.poll() is None:
            try:
                self.proc.wait(PATIENCE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def send(self, data):
        self.conn.sendall(data)

    def frame(self):
        while True:
            if len(self.buf) >= 9:
                length, kind, ident = struct.unpack(">IBI", self.buf[:9])
                if len(self.buf) >= 4 + length:
                    payload = self.buf[9 : 4 + length]
                    self.buf = self.buf[4 + length :]
                    return kind, ident, payload
            chunk = self.conn.recv(65536)
            if not chunk:
                return None
            self.buf += chunk

    def hello(self):
        kind, ident, payload = self.frame()
        assert kind == HELLO, (kind, payload)
        return json.loads(payload)

    def answers(self, n):
        got = {}
        order = []
        while len(got) < n:
            kind, ident, payload = self.frame()
            got[ident] = (kind, json.loads(payload))
            order.append(ident)
        return got, order

    def invoke(self, ident, event, rid=None, deadline_ms=None):
        deadline = deadline_ms or int(time.time() * 1000) + 60000
        self.send(encode_invoke(ident, rid or "req-%d" % ident, deadline, event))

    def exit_code(self):
        return self.proc.wait(PATIENCE)

    def output(self):
        self.close()
        with open(self.out_path, encoding="utf-8", newline="") as out, open(
            self.err_path, encoding="utf-8", newline=""
        ) as err:
            return out.read(), err.read()


class Handlers(unittest.TestCase):
    def test_hello_names_the_protocol_and_the_runtime(self):
        d = Daemon(self, {"app.py": "def handler(e, c):\n    return e\n"}, "app.handler")
        hello = d.hello()
        self.assertEqual(hello["protocol"], 1)
        self.assertEqual(hello["runtime"], "python")
        self.assertEqual(hello["pid"], d.proc.pid)

    def test_async_handlers_run_concurrently_on_one_loop(self):
        code = """
            import asyncio, threading
            async def handler(event, context):
                await asyncio.sleep(event["sleep"])
                return {"n": event["n"], "thread": threading.get_ident()}
        """
        d = Daemon(self, {"app.py": code}, "app.handler")
        d.hello()
        started = time.monotonic()
        # The first sleeps longest: answers come back in the order calls finish.
        for n in range(1, 21):
            d.invoke(n, {"n": n, "sleep": 1.0 if n == 1 else 0.2})
        got, order = d.answers(20)
        elapsed = time.monotonic() - started
        self.assertEqual({k for k, _ in got.values()}, {RESULT})
        self.assertEqual(got[7][1]["n"], 7)
        self.assertEqual(order[-1], 1)
        self.assertEqual(len({v["thread"] for _, v in got.values()}), 1)
        # 20 calls of 0.2-1 s each: run one after another they would take over 4.8 s.
        self.assertLess(elapsed, 4.8)

    def test_sync_handlers_run_side_by_side_on_threads(self):
        code = """
            import threading, time
            def handler(event, context):
                time.sleep(event["sleep"])
                return threading.get_ident()
        """
        d = Daemon(self, {"app.py": code}, "app.handler", {"AWS_LAMBDA_MAX_CONCURRENCY": "8"})
        d.hello()
        started = time.monotonic()
        for n in range(1, 9):
            d.invoke(n, {"sleep": 1.0})
        got, _ = d.answers(8)
        elapsed = time.monotonic() - started
        self.assertEqual({k for k, _ in got.values()}, {RESULT})
        self.assertGreater(len({v for _, v in got.values()}), 1)
        self.assertLess(elapsed, 8.0)

    def test_the_thread_pool_never_exceeds_the_instance_ceiling(self):
        code = """
            import threading, time
            lock = threading.Lock()
            now = peak = 0
            def handler(event, context):
                global now, peak
                with lock:
                    now += 1
                    peak = max(peak, now)
                time.sleep(0.3)
                with lock:
                    now -= 1
                return {"peak": peak, "threads": threading.active_count()}
        """
        d = Daemon(self, {"app.py": code}, "app.handler", {"AWS_LAMBDA_MAX_CONCURRENCY": "3"})
        d.hello()
        for n in range(1, 11):
            d.invoke(n, {})
        got, _ = d.answers(10)
        self.assertLessEqual(max(v["peak"] for _, v in got.values()), 3)
        # main thread + at most three workers
        self.assertLessEqual(max(v["threads"] for _, v in got.values()), 4)

    def test_the_context_has_lambdas_attributes(self):
        code = """
            def handler(event, context):
                return {
                    "aws_request_id": context.aws_request_id,
                    "function_name": context.function_name,
                    "function_version": context.function_version,
                    "invoked_function_arn": context.invoked_function_arn,
                    "memory_limit_in_mb": context.memory_limit_in_mb,
                    "log_group_name": context.log_group_name,
                    "log_stream_name": context.log_stream_name,
                    "remaining": context.get_remaining_time_in_millis(),
                }
        """
        d = Daemon(self, {"app.py": code}, "app.handler")
        d.hello()
        d.invoke(1, {}, rid="abc-123", deadline_ms=int(time.time() * 1000) + 20000)
        (kind, ctx), = d.answers(1)[0].values()
        self.assertEqual(kind, RESULT)
        self.assertEqual(ctx["aws_request_id"], "abc-123")
        self.assertEqual(ctx["function_name"], "fn")
        self.assertEqual(ctx["function_version"], "3")
        self.assertEqual(ctx["invoked_function_arn"], "arn:aws:lambda:local:000000000000:function:fn")
        self.assertEqual(ctx["memory_limit_in_mb"], "256")
        self.assertEqual(ctx["log_group_name"], "/aws/lambda/fn")
        self.assertEqual(ctx["log_stream_name"], "i-1")
        self.assertTrue(0 < ctx["remaining"] <= 20000, ctx["remaining"])

    def test_an_exception_fails_only_its_call_in_lambdas_shape(self):
        code = """
            async def handler(event, context):
                if event.get("fail"):
                    raise ValueError("boom " + str(event["n"]))
                return event["n"]
        """
        d = Daemon(self, {"app.py": code}, "app.handler")
        d.hello()
        d.invoke(1, {"n": 1, "fail": True}, rid="r-1")
        d.invoke(2, {"n": 2})
        got, _ = d.answers(2)
        self.assertEqual(got[2], (RESULT, 2))
        kind, err = got[1]
        self.assertEqual(kind, ERROR)
        self.assertEqual(err["errorType"], "ValueError")
        self.assertEqual(err["errorMessage"], "boom 1")
        self.assertEqual(err["requestId"], "r-1")
        self.assertEqual(list(err), ["errorMessage", "errorType", "requestId", "stackTrace"])
        self.assertEqual(len(err["stackTrace"]), 1, err["stackTrace"])
        self.assertIn('app.py", line 4, in handler', err["stackTrace"][0])
        self.assertNotIn("bootstrap", "".join(err["stackTrace"]))

    def test_a_result_that_is_not_json_fails_with_marshal_error(self):
        code = """
            from decimal import Decimal
            def handler(event, context):
                return {"d": Decimal("1.5"), "i": Decimal("2")} if event else {1, 2}
        """
        d = Daemon(self, {"app.py": code}, "app.handler")
        d.hello()
        d.invoke(1, {"x": 1})
        d.invoke(2, {})
        got, _ = d.answers(2)
        self.assertEqual(got[1], (RESULT, {"d": 1.5, "i": 2}))
        self.assertEqual(got[2][0], ERROR)
        self.assertEqual(got[2][1]["errorType"], "Runtime.MarshalError")

    def test_a_result_over_lambdas_limit_never_crosses_the_socket(self):
        d = Daemon(self, {"app.py": "def handler(e, c):\n    return 'x' * 7000000\n"}, "app.handler")
        d.hello()
        d.invoke(1, {})
        kind, ident, payload = d.frame()
        self.assertEqual((kind, ident), (ERROR, 1))
        self.assertLess(len(payload), 1000)
        self.assertEqual(json.loads(payload)["errorType"], "Function.ResponseSizeTooLarge")

    def test_module_code_runs_once_and_vendored_packages_import(self):
        files = {
            "vendored/__init__.py": "",
            "dep/__init__.py": "VALUE = 'from dep'\n",
            "src/app.py": """
                import dep, os
                loads = [os.getpid()]
                def handler(event, context):
                    return {"dep": dep.VALUE, "loads": len(loads)}
            """,
            "src/__init__.py": "",
        }
        d = Daemon(self, files, "src/app.handler")
        d.hello()
        d.invoke(1, {})
        d.invoke(2, {})
        got, _ = d.answers(2)
        self.assertEqual(got[1], (RESULT, {"dep": "from dep", "loads": 1}))
        self.assertEqual(got[2], (RESULT, {"dep": "from dep", "loads": 1}))


class Logs(unittest.TestCase):
    def test_print_and_logging_carry_the_request_id_under_threads_and_tasks(self):
        code = """
            import asyncio, logging, sys, time
            logger = logging.getLogger()
            logger.setLevel(logging.INFO)
            print("loading")
            async def handler(event, context):
                await asyncio.sleep(0.1 * event["n"])
                print("async", event["n"], "line one\\nline two")
                logger.info("logged %d", event["n"])
                return None
            def sync(event, context):
                time.sleep(0.1 * event["n"])
                print("sync", event["n"])
                sys.stdout.buffer.write(b"bytes %d\\n" % event["n"])
                logger.warning("warned %d", event["n"])
        """
        d = Daemon(self, {"app.py": code}, "app.handler")
        d.hello()
        for n in (1, 2, 3):
            d.invoke(n, {"n": 4 - n}, rid="rid-%d" % n)
        d.answers(3)
        out, _ = d.output()
        lines = out.split("\n")
        self.assertTrue(any(l.split("\t")[1:] == ["undefined", "INFO", "loading"] for l in lines), lines)
        for n in (1, 2, 3):
            prints = [l for l in lines if l.endswith("async %d line one\rline two" % (4 - n))]
            self.assertEqual(len(prints), 1, lines)
            self.assertEqual(prints[0].split("\t")[1:3], ["rid-%d" % n, "INFO"])
            logged = [l for l in lines if l.endswith("logged %d" % (4 - n))]
            self.assertEqual(len(logged), 1, lines)
            self.assertEqual(logged[0].split("\t")[0], "[INFO]")
            self.assertEqual(logged[0].split("\t")[2], "rid-%d" % n)

        d = Daemon(self, {"app.py": code}, "app.sync")
        d.hello()
        for n in (1, 2, 3):
            d.invoke(n, {"n": 4 - n}, rid="s-%d" % n)
        d.answers(3)
        out, _ = d.output()
        lines = out.split("\n")
        for n in (1, 2, 3):
            prints = [l for l in lines if l.endswith("\tsync %d" % (4 - n))]
            self.assertEqual([p.split("\t")[1] for p in prints], ["s-%d" % n], lines)
            raw = [l for l in lines if l.endswith("\tbytes %d" % (4 - n))]
            self.assertEqual([r.split("\t")[1] for r in raw], ["s-%d" % n], lines)
            warned = [l for l in lines if l.endswith("warned %d" % (4 - n))]
            self.assertEqual([w.split("\t")[2] for w in warned], ["s-%d" % n], lines)


class Init(unittest.TestCase):
    def init_error(self, files, handler):
        d = Daemon(self, files, handler)
        kind, ident, payload = d.frame()
        self.assertEqual((kind, ident), (INIT_ERROR, 0))
        self.assertEqual(d.exit_code(), 1)
        return json.loads(payload)

    def test_a_missing_module_is_an_import_module_error(self):
        err = self.init_error({}, "nothere.handler")
        self.assertEqual(err["errorType"], "Runtime.ImportModuleError")
        self.assertIn("Unable to import module 'nothere'", err["errorMessage"])

    def test_a_missing_dependency_is_an_import_module_error(self):
        err = self.init_error({"app.py": "import requestz\n"}, "app.handler")
        self.assertEqual(err["errorType"], "Runtime.ImportModuleError")
        self.assertIn("requestz", err["errorMessage"])

    def test_a_syntax_error_is_a_user_code_syntax_error(self):
        err = self.init_error({"app.py": "def handler(:\n"}, "app.handler")
        self.assertEqual(err["errorType"], "Runtime.UserCodeSyntaxError")

    def test_a_missing_function_is_handler_not_found(self):
        err = self.init_error({"app.py": "x = 1\n"}, "app.handler")
        self.assertEqual(err["errorType"], "Runtime.HandlerNotFound")

    def test_a_handler_without_a_dot_is_malformed(self):
        err = self.init_error({"app.py": ""}, "app")
        self.assertEqual(err["errorType"], "Runtime.MalformedHandlerName")

    def test_module_code_that_raises_is_an_import_error_with_its_trace(self):
        err = self.init_error({"app.py": "raise RuntimeError('no db')\n"}, "app.handler")
        self.assertEqual(err["errorType"], "Runtime.ImportModuleError")
        self.assertIn("no db", err["errorMessage"])
        self.assertEqual(len(err["stackTrace"]), 1, err)
        self.assertIn('app.py", line 1, in <module>', err["stackTrace"][0])


class Channel(unittest.TestCase):
    def test_a_closed_channel_ends_the_process_cleanly(self):
        d = Daemon(self, {"app.py": "def handler(e, c):\n    return 1\n"}, "app.handler")
        d.hello()
        d.conn.close()
        self.assertEqual(d.exit_code(), 0)

    def test_an_unknown_frame_kind_is_a_protocol_error(self):
        d = Daemon(self, {"app.py": "def handler(e, c):\n    return 1\n"}, "app.handler")
        d.hello()
        d.send(encode_frame(9, 1, b""))
        self.assertEqual(d.exit_code(), 1)
        _, err = d.output()
        self.assertIn("protocol error", err)

    def test_an_event_that_is_not_json_fails_its_call(self):
        d = Daemon(self, {"app.py": "def handler(e, c):\n    return e\n"}, "app.handler")
        d.hello()
        d.invoke(1, b"{nope")
        d.invoke(2, [1, 2])
        got, _ = d.answers(2)
        self.assertEqual(got[1][1]["errorType"], "Runtime.UnmarshalError")
        self.assertEqual(got[2], (RESULT, [1, 2]))

    def test_frames_split_across_writes_are_reassembled(self):
        d = Daemon(self, {"app.py": "def handler(e, c):\n    return len(e)\n"}, "app.handler")
        d.hello()
        data = b"".join(
            encode_invoke(n, "r", int(time.time() * 1000) + 60000, "y" * (n * 50000))
            for n in range(1, 4)
        )
        for i in range(0, len(data), 7777):
            d.send(data[i : i + 7777])
        got, _ = d.answers(3)
        self.assertEqual(got, {n: (RESULT, n * 50000) for n in range(1, 4)})


if __name__ == "__main__":
    unittest.main()


class Pooled(unittest.TestCase):
    """A warm-pool process: started before it has a function, given one by ASSIGN."""

    ASSIGN = 7

    def test_a_pooled_process_says_so_then_runs_the_function_it_is_assigned(self):
        daemon = Daemon(
            self,
            {
                "app.py": """
                import os
                def handler(event, context):
                    return [context.function_name, os.environ.get("SECRET"), os.environ.get("SHOAL_POOLED")]
                """
            },
            "nothing.here",
            env={"SHOAL_POOLED": "1", "AWS_LAMBDA_FUNCTION_NAME": "not-yet"},
        )
        first = daemon.hello()
        self.assertTrue(first["pooled"])
        assigned = {"_HANDLER": "app.handler", "AWS_LAMBDA_FUNCTION_NAME": "given", "SECRET": "s"}
        daemon.send(encode_frame(self.ASSIGN, 0, json.dumps(assigned).encode()))
        second = daemon.hello()
        self.assertNotIn("pooled", second)
        daemon.invoke(1, {})
        kind, ident, payload = daemon.frame()
        self.assertEqual((kind, ident), (RESULT, 1))
        self.assertEqual(json.loads(payload), ["given", "s", None])

    def test_a_pooled_process_given_anything_but_assign_exits_1(self):
        daemon = Daemon(self, {"app.py": "def handler(e, c):\n    return 1\n"}, "app.handler",
                        env={"SHOAL_POOLED": "1"})
        self.assertTrue(daemon.hello()["pooled"])
        daemon.invoke(1, {})
        self.assertEqual(daemon.exit_code(), 1)
