"""Shoal Python runtime bootstrap.

Runs AWS-Lambda-style Python handlers inside one long-lived Python process and talks to
the Shoal daemon over the native channel (docs/PROTOCOL.md, protocol version 1): one
Unix-domain stream socket carrying length-prefixed binary frames, inherited as an open
descriptor (number in SHOAL_CHANNEL_FD, how the daemon starts it) or, for tests, connected
by path (SHOAL_SOCKET). Frames are multiplexed by invocation id; every INVOKE is started at
once and its RESULT / ERROR goes back whenever it finishes, batched into one socket write
per loop turn.

Standard library only. How handlers run:
 - `async def handler(event, context)`: a task on the one asyncio loop, so many calls wait
   on I/O side by side, as in Node.
 - a plain `def handler(event, context)`: a worker thread of a pool whose size is
   AWS_LAMBDA_MAX_CONCURRENCY. The daemon, not this process, holds the instance's current
   limit: it sends an INVOKE only while in-flight < limit, and the pool makes a thread only
   when none is idle, so the threads never outnumber the most calls the limit allowed at
   once. A sync handler that returns an awaitable has it awaited on the loop.
 - _HANDLER "<module>.<function>": split at the last dot; "/" in the module part becomes
   "." ("src/app.handler" imports src.app). LAMBDA_TASK_ROOT leads sys.path, so
   dependencies installed with `pip install -t .` import.
 - Init failures (reported as INIT_ERROR, then exit 1), named as Lambda names them:
   Runtime.MalformedHandlerName, Runtime.ImportModuleError, Runtime.UserCodeSyntaxError,
   Runtime.HandlerNotFound; an exception raised by module-level code is reported under
   Runtime.ImportModuleError ("Unable to import module ...") as Lambda does.
 - Errors: {errorMessage, errorType, requestId, stackTrace} (Lambda's Python shape);
   stackTrace is the traceback's frames formatted as Python formats them, without this
   bootstrap's own frames.
 - Results: json.dumps (Decimal as a number); what cannot be serialized fails the call with
   Runtime.MarshalError; a result over 6291556 bytes fails it with
   Function.ResponseSizeTooLarge before it crosses the socket.
 - Logs: print() (anything written to sys.stdout / sys.stderr) becomes one line per
   newline-terminated write, "<ISO time>\t<request id>\t<LEVEL>\t<text>" with inner
   newlines as \r (INFO for stdout, ERROR for stderr); the logging module's root logger
   writes Lambda's Python format "[LEVEL]\t<time>\t<request id>\t<message>". The request
   id follows the call through threads and asyncio tasks (a context variable).
 - Warm pool (SHOAL_POOLED=1): the daemon starts the process before any function needs it;
   it sends HELLO {"pooled": true}, then reads one ASSIGN frame (kind 7, a JSON object of
   environment variables: the function's), sets them, and starts as a process started for
   that function would (HELLO or INIT_ERROR). Anything else first is a protocol error.
"""

import asyncio
import contextvars
import decimal
import inspect
import json
import logging
import os
import socket
import struct
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
import importlib
from importlib import import_module

PROTOCOL_VERSION = 1
HELLO, INIT_ERROR, INVOKE, RESULT, ERROR = 1, 2, 3, 4, 5
ASSIGN = 7  # a pooled process's function (its environment), daemon -> runtime, once
MAX_ASSIGN_LEN = 1024 * 1024
MAX_FRAME_LEN = 64 * 1024 * 1024 + 5
MAX_RESPONSE = 6291556
HEADER = struct.Struct(">IBI")
INVOKE_HEAD = struct.Struct(">QH")

ENV = os.environ
FUNCTION_NAME = FUNCTION_VERSION = MEMORY_SIZE = LOG_GROUP = LOG_STREAM = FUNCTION_ARN = ""
TASK_ROOT = ""


def read_function_env():
    """The function's settings from the environment: at start, or once a pooled process
    is assigned its function."""
    global FUNCTION_NAME, FUNCTION_VERSION, MEMORY_SIZE, LOG_GROUP, LOG_STREAM
    global FUNCTION_ARN, TASK_ROOT
    FUNCTION_NAME = ENV.get("AWS_LAMBDA_FUNCTION_NAME", "unknown")
    FUNCTION_VERSION = ENV.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
    MEMORY_SIZE = ENV.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
    LOG_GROUP = ENV.get("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/" + FUNCTION_NAME)
    LOG_STREAM = ENV.get("AWS_LAMBDA_LOG_STREAM_NAME", "")
    FUNCTION_ARN = "arn:aws:lambda:local:000000000000:function:" + FUNCTION_NAME
    TASK_ROOT = os.path.abspath(ENV.get("LAMBDA_TASK_ROOT") or os.getcwd())
    LambdaContext.function_name = FUNCTION_NAME
    LambdaContext.function_version = FUNCTION_VERSION
    LambdaContext.invoked_function_arn = FUNCTION_ARN
    LambdaContext.memory_limit_in_mb = MEMORY_SIZE
    LambdaContext.log_group_name = LOG_GROUP
    LambdaContext.log_stream_name = LOG_STREAM


def _max_concurrency():
    try:
        return max(1, int(ENV.get("AWS_LAMBDA_MAX_CONCURRENCY", "")))
    except ValueError:
        return 64


# ---------------------------------------------------------------------------------------
# Logs: every line tagged with the request id of the call that wrote it
# ---------------------------------------------------------------------------------------
REQUEST_ID = contextvars.ContextVar("shoal_request_id", default="")


def _now_iso():
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % (int(t * 1000) % 1000)


_write_lock = threading.Lock()


def _write_fd(fd, data):
    with _write_lock:
        while data:
            n = os.write(fd, data)
            data = data[n:]


class _Bytes:
    """`sys.stdout.buffer` for code that writes bytes: decoded into the text stream."""

    def __init__(self, text):
        self._text = text

    def write(self, data):
        self._text.write(bytes(data).decode("utf-8", "backslashreplace"))
        return len(data)

    def flush(self):
        self._text.flush()


class TaggedStream:
    """sys.stdout / sys.stderr: text up to a newline-terminated write becomes one record."""

    def __init__(self, fd, level):
        self._fd = fd
        self._level = level
        self._pending = threading.local()
        self.encoding = "utf-8"
        self.errors = "backslashreplace"
        self.buffer = _Bytes(self)

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError("write() argument must be str, not " + type(s).__name__)
        buf = getattr(self._pending, "buf", None)
        buf = s if buf is None else buf + s
        if buf.endswith("\n"):
            self._pending.buf = None
            self._emit(buf[:-1])
        else:
            self._pending.buf = buf
        return len(s)

    def _emit(self, text):
        rid = REQUEST_ID.get() or "undefined"
        line = "%s\t%s\t%s\t%s\n" % (_now_iso(), rid, self._level, text.replace("\n", "\r"))
        _write_fd(self._fd, line.encode("utf-8", "backslashreplace"))

    def flush(self):
        buf = getattr(self._pending, "buf", None)
        if buf:
            self._pending.buf = None
            self._emit(buf)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def isatty(self):
        return False

    def fileno(self):
        return self._fd

    def writable(self):
        return True

    def readable(self):
        return False


class LambdaLogHandler(logging.Handler):
    """The root logger's handler, in Lambda's Python format."""

    def emit(self, record):
        try:
            msg = self.format(record).replace("\n", "\r")
            line = "[%s]\t%s\t%s\t%s\n" % (record.levelname, _now_iso(), REQUEST_ID.get(), msg)
            _write_fd(1, line.encode("utf-8", "backslashreplace"))
        except Exception:  # noqa: BLE001 - logging must never fail a call
            self.handleError(record)


class _RequestIdFilter(logging.Filter):
    def filter(self, record):
        record.aws_request_id = REQUEST_ID.get()
        return True


def install_logging():
    sys.stdout = TaggedStream(1, "INFO")
    sys.stderr = TaggedStream(2, "ERROR")
    root = logging.getLogger()
    handler = LambdaLogHandler()
    handler.addFilter(_RequestIdFilter())
    root.handlers = [handler]


def runtime_log(message):
    rid = REQUEST_ID.get() or "undefined"
    line = "%s\t%s\tERROR\t%s\n" % (_now_iso(), rid, message.replace("\n", "\r"))
    _write_fd(2, line.encode("utf-8", "backslashreplace"))


# ---------------------------------------------------------------------------------------
# Context and error shapes
# ---------------------------------------------------------------------------------------
class LambdaContext:
    """What a handler gets as `context`, with the attributes of Lambda's Python runtime."""

    __slots__ = ("aws_request_id", "_deadline_ms", "identity", "client_context")
    # Set by read_function_env().
    function_name = function_version = invoked_function_arn = ""
    memory_limit_in_mb = log_group_name = log_stream_name = ""

    def __init__(self, request_id, deadline_ms):
        self.aws_request_id = request_id
        self._deadline_ms = deadline_ms
        self.identity = None
        self.client_context = None

    def get_remaining_time_in_millis(self):
        return max(0, int(self._deadline_ms - time.time() * 1000))

    def __repr__(self):
        return "LambdaContext(aws_request_id=%r, function_name=%r)" % (
            self.aws_request_id,
            self.function_name,
        )


read_function_env()

THIS_FILE = os.path.abspath(__file__)
IMPORTLIB = os.path.dirname(os.path.abspath(importlib.__file__))


def _users(filename):
    """Whether a frame is the user's: not this bootstrap's, not the import machinery's."""
    if filename.startswith("<frozen "):
        return False
    path = os.path.abspath(filename)
    return path != THIS_FILE and os.path.dirname(path) != IMPORTLIB


def stack_trace(tb):
    frames = [f for f in traceback.extract_tb(tb) if _users(f.filename)]
    return traceback.format_list(frames)


def error_record(exc, request_id=None, error_type=None, message=None):
    record = {
        "errorMessage": str(exc) if message is None else message,
        "errorType": error_type or type(exc).__name__,
    }
    if request_id is not None:
        record["requestId"] = request_id
    record["stackTrace"] = stack_trace(exc.__traceback__)
    return record


def _json_default(value):
    if isinstance(value, decimal.Decimal):
        return float(value) if value % 1 else int(value)
    raise TypeError("Object of type %s is not JSON serializable" % type(value).__name__)


def encode_result(result, request_id):
    """(kind, payload bytes) for a handler's return value."""
    try:
        body = json.dumps(result, default=_json_default, separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        record = error_record(
            exc, request_id, "Runtime.MarshalError", "Unable to marshal response: %s" % exc
        )
        record["stackTrace"] = []
        return ERROR, json.dumps(record).encode("utf-8")
    if len(body) > MAX_RESPONSE:
        record = {
            "errorMessage": "Response payload size (%d bytes) exceeded maximum allowed "
            "payload size (%d bytes)." % (len(body), MAX_RESPONSE),
            "errorType": "Function.ResponseSizeTooLarge",
            "requestId": request_id,
            "stackTrace": [],
        }
        return ERROR, json.dumps(record).encode("utf-8")
    return RESULT, body


def encode_error(exc, request_id):
    try:
        return ERROR, json.dumps(error_record(exc, request_id)).encode("utf-8")
    except Exception:  # noqa: BLE001 - an error whose text cannot be shown still fails its call
        record = {"errorMessage": "unprintable error", "errorType": type(exc).__name__}
        return ERROR, json.dumps(record).encode("utf-8")


# ---------------------------------------------------------------------------------------
# Handler loading
# ---------------------------------------------------------------------------------------
class InitError(Exception):
    def __init__(self, error_type, message, cause=None):
        super().__init__(message)
        self.error_type = error_type
        self.cause = cause


def load_handler(spec):
    if "." not in spec:
        raise InitError(
            "Runtime.MalformedHandlerName",
            "Bad handler '%s': not enough values to unpack (expected 2, got 1)" % spec,
        )
    module_path, function_name = spec.rsplit(".", 1)
    module_name = module_path.replace("/", ".")
    if not module_name or not function_name or ".." in module_name or module_name.startswith("."):
        raise InitError("Runtime.MalformedHandlerName", "Bad handler '%s'" % spec)
    try:
        module = import_module(module_name)
    except SyntaxError as exc:
        raise InitError(
            "Runtime.UserCodeSyntaxError",
            "Syntax error in module '%s': %s" % (module_name, exc),
            exc,
        ) from exc
    except ImportError as exc:
        raise InitError(
            "Runtime.ImportModuleError",
            "Unable to import module '%s': %s" % (module_name, exc),
            exc,
        ) from exc
    except Exception as exc:  # noqa: BLE001 - module-level code failed
        raise InitError(
            "Runtime.ImportModuleError",
            "Unable to import module '%s': %s" % (module_name, exc),
            exc,
        ) from exc
    handler = getattr(module, function_name, None)
    if handler is None:
        raise InitError(
            "Runtime.HandlerNotFound",
            "Handler '%s' missing on module '%s'" % (function_name, module_name),
        )
    if not callable(handler):
        raise InitError(
            "Runtime.HandlerNotFound",
            "Handler '%s' on module '%s' is not callable" % (function_name, module_name),
        )
    return handler


# ---------------------------------------------------------------------------------------
# The channel
# ---------------------------------------------------------------------------------------
class ProtocolError(Exception):
    pass


def frame(kind, ident, payload):
    return HEADER.pack(len(payload) + 5, kind, ident) + payload


def decode_invoke(payload):
    """(deadline_ms, request id, event bytes) of an INVOKE payload."""
    if len(payload) < INVOKE_HEAD.size:
        raise ProtocolError("INVOKE too short")
    deadline_ms, rid_len = INVOKE_HEAD.unpack_from(payload)
    start = INVOKE_HEAD.size
    if start + rid_len > len(payload):
        raise ProtocolError("INVOKE request id overruns the frame")
    rid = payload[start : start + rid_len].decode("utf-8")
    return deadline_ms, rid, payload[start + rid_len :]


class Runtime(asyncio.Protocol):
    """One connection to the daemon and the calls running on it. Frames are cut straight
    out of what the socket delivers (no coroutine per read); answers queued in one loop
    turn leave in one write."""

    def __init__(self, loop, handler):
        self.loop = loop
        self.handler = handler
        self.is_async = inspect.iscoroutinefunction(handler)
        self.pool = None if self.is_async else ThreadPoolExecutor(
            max_workers=_max_concurrency(), thread_name_prefix="handler"
        )
        self.transport = None
        self.buffer = bytearray()
        self.outgoing = []
        self.tasks = set()
        self.done = loop.create_future()

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        buf = self.buffer
        buf += data
        offset = 0
        size = len(buf)
        try:
            while size - offset >= 9:
                length, kind, ident = HEADER.unpack_from(buf, offset)
                if length < 5 or length > MAX_FRAME_LEN:
                    raise ProtocolError("frame length %d out of range" % length)
                if kind != INVOKE:
                    raise ProtocolError("unexpected frame kind %d" % kind)
                end = offset + 4 + length
                if end > size:
                    break
                self.start(ident, bytes(buf[offset + 9 : end]))
                offset = end
        except (ProtocolError, UnicodeDecodeError) as exc:
            self.finish(ProtocolError(str(exc)))
            return
        del buf[:offset]

    def connection_lost(self, exc):
        self.finish(exc)

    def finish(self, exc):
        if self.done.done():
            return
        if isinstance(exc, ProtocolError):
            self.done.set_result(("shoal protocol error: %s" % exc, 1))
            self.transport.close()
        elif exc is not None:
            self.done.set_result(("shoal runtime socket error: %s" % exc, 1))
        else:
            self.done.set_result((None, 0))

    # -- frames out ------------------------------------------------------------------------
    def send(self, kind, ident, payload):
        """Queue a frame; every frame queued in one loop turn goes out in one write."""
        if not self.outgoing:
            self.loop.call_soon(self.flush)
        self.outgoing.append(frame(kind, ident, payload))

    def flush(self):
        if self.outgoing and not self.transport.is_closing():
            self.transport.write(b"".join(self.outgoing))
        self.outgoing.clear()

    # -- invocations -----------------------------------------------------------------------
    def start(self, ident, payload):
        deadline_ms, rid, body = decode_invoke(payload)
        try:
            event = json.loads(body)
        except ValueError as exc:
            record = error_record(
                exc, rid, "Runtime.UnmarshalError", "Unable to unmarshal input: %s" % exc
            )
            self.send(ERROR, ident, json.dumps(record).encode("utf-8"))
            return
        # The task runs in a copy of this context, where run() sets the request id.
        task = self.loop.create_task(self.run(ident, rid, event, LambdaContext(rid, deadline_ms)))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def run(self, ident, rid, event, context):
        REQUEST_ID.set(rid)
        try:
            if self.is_async:
                result = await self.handler(event, context)
            else:
                # The task's context is entered here; the thread runs in a copy of it.
                result = await self.loop.run_in_executor(
                    self.pool, contextvars.copy_context().run, self.handler, event, context
                )
                if inspect.isawaitable(result):
                    result = await result
        except asyncio.CancelledError:
            raise  # only at shutdown: the channel is gone
        except BaseException as exc:  # noqa: BLE001 - a call's failure is its own
            kind, payload = encode_error(exc, rid)
        else:
            kind, payload = encode_result(result, rid)
        self.send(kind, ident, payload)


def open_channel():
    """The daemon's end of the channel, as a blocking socket (or None, said in the log)."""
    fd = ENV.get("SHOAL_CHANNEL_FD")
    if fd is not None:
        return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=int(fd))
    path = ENV.get("SHOAL_SOCKET")
    if path:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        return sock
    runtime_log(
        "neither SHOAL_CHANNEL_FD nor SHOAL_SOCKET is set; "
        "the Shoal bootstrap must be started by the daemon"
    )
    return None


def init_error_payload(exc):
    if isinstance(exc, InitError):
        record = {"errorMessage": str(exc), "errorType": exc.error_type}
        cause = exc.cause
        record["stackTrace"] = [] if cause is None else stack_trace(cause.__traceback__)
    else:
        record = error_record(exc)
    return json.dumps(record)


async def serve(sock, handler):
    loop = asyncio.get_running_loop()
    runtime = Runtime(loop, handler)
    await loop.connect_accepted_socket(lambda: runtime, sock)
    hello = {"protocol": PROTOCOL_VERSION, "runtime": "python", "pid": os.getpid()}
    runtime.send(HELLO, 0, json.dumps(hello).encode("utf-8"))
    message, code = await runtime.done
    if message:
        runtime_log(message)
    return code


def _recv_exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("the daemon closed the channel")
        data += chunk
    return data


def await_assignment(sock):
    """A pooled process: say so, then take the function's environment from the one ASSIGN
    frame the daemon sends. False (said in the log) on anything else."""
    hello = {"protocol": PROTOCOL_VERSION, "runtime": "python", "pid": os.getpid(), "pooled": True}
    try:
        sock.sendall(frame(HELLO, 0, json.dumps(hello).encode("utf-8")))
        length, kind, _ = HEADER.unpack(_recv_exactly(sock, HEADER.size))
        if kind != ASSIGN or not 5 <= length <= MAX_ASSIGN_LEN:
            runtime_log("protocol error: expected one ASSIGN frame, got kind %d" % kind)
            return False
        assigned = json.loads(_recv_exactly(sock, length - 5).decode("utf-8"))
    except (OSError, EOFError, ValueError) as exc:
        runtime_log("waiting for the function to run: %s" % exc)
        return False
    for key, value in assigned.items():
        if isinstance(value, str):
            ENV[key] = value
    ENV.pop("SHOAL_POOLED", None)
    read_function_env()
    return True


def main():
    """Load the handler (module-level code runs once, outside any event loop), then serve."""
    protocol = ENV.get("SHOAL_PROTOCOL")
    if protocol is not None and protocol != str(PROTOCOL_VERSION):
        runtime_log(
            "unsupported SHOAL_PROTOCOL %s (this runtime speaks %d)" % (protocol, PROTOCOL_VERSION)
        )
        return 1
    sock = open_channel()
    if sock is None:
        return 1
    if ENV.get("SHOAL_POOLED") == "1" and not await_assignment(sock):
        return 1
    try:
        os.chdir(TASK_ROOT)
    except OSError:
        pass  # a missing task root is reported by the import below
    # The script's own directory (the bootstrap's) is not the user's code.
    sys.path[0:1] = [TASK_ROOT]
    try:
        handler = load_handler(ENV.get("_HANDLER") or "lambda_function.lambda_handler")
    except BaseException as exc:  # noqa: BLE001 - whatever module code raised is an init error
        payload = init_error_payload(exc)
        runtime_log("Init Error \t" + payload)
        try:
            sock.sendall(frame(INIT_ERROR, 0, payload.encode("utf-8")))
            sock.close()
        except OSError:
            pass
        return 1
    sock.setblocking(False)
    return asyncio.run(serve(sock, handler))


def run():
    install_logging()
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Worker threads may still be inside handlers: the daemon closed the channel, so no
    # answer can be sent; leave without waiting for them.
    os._exit(code)


if __name__ == "__main__":
    run()
