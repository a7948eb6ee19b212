'use strict';
/*
 * Shoal Node.js runtime bootstrap.
 *
 * Runs AWS-Lambda-style Node handlers inside one long-lived Node process and talks to the
 * Shoal daemon over the native channel (docs/PROTOCOL.md, protocol version 1): one
 * Unix-domain stream socket carrying length-prefixed binary frames: inherited as an open
 * descriptor (number in SHOAL_CHANNEL_FD, how the daemon starts it, so no other process can
 * reach the channel) or, for tests, connected by path (SHOAL_SOCKET). Frames are
 * multiplexed by invocation id. Every INVOKE frame is started at once; many invocations
 * run concurrently on this one event loop, and their RESULT / ERROR frames go back in
 * whatever order they finish, batched into one socket write per event-loop turn.
 *
 * Node built-ins only. Behaviour where the protocol leaves room (documented here):
 *  - _HANDLER "<module path>.<export path>": split at the first dot after the last slash
 *    ("src/app.handler" -> module "src/app", export "handler"). Nested export paths are
 *    resolved like Lambda does ("index.a.b" -> exports.a.b). A handler string containing
 *    "../", or without a module or export part, is an INIT_ERROR Runtime.MalformedHandlerName.
 *    _HANDLER defaults to "index.handler", LAMBDA_TASK_ROOT to the working directory.
 *  - The module is looked up in LAMBDA_TASK_ROOT as <path>.js, <path>.mjs, <path>.cjs, then
 *    (fallback) whatever require.resolve(<path>) finds (a directory with index.js, .json...).
 *    .mjs and .js under a "type":"module" package.json are import()ed; .js whose require()
 *    throws ERR_REQUIRE_ESM is import()ed too; everything else is require()d. An ESM export
 *    is looked up as a named export first, then on `default`.
 *  - Load failures: module not found -> Runtime.ImportModuleError (also when the module
 *    itself fails to find one of its dependencies, as in Lambda); SyntaxError ->
 *    Runtime.UserCodeSyntaxError; anything else -> the error's own name. The INIT_ERROR
 *    frame is flushed, one ERROR log line goes to stderr, and the process exits with 1.
 *  - Handlers whose length >= 3 get a callback; the first of callback / returned promise /
 *    context.done|succeed|fail wins, later ones are ignored; a synchronous non-promise
 *    return value of such a handler is ignored (Lambda semantics). Handlers with fewer
 *    parameters: a promise (thenable) is awaited, any other synchronous return value
 *    (undefined -> null) is the result immediately. So the legacy pattern "2-parameter
 *    non-async handler that calls context.succeed() later" is NOT supported: its result
 *    is already null. callbackWaitsForEmptyEventLoop is present (true) but has no effect:
 *    the event loop is shared by all invocations, so a result is sent as soon as it exists.
 *  - Errors: Error-like values -> {errorType: name || "Error", errorMessage: message ||
 *    String(err), trace: stack split into lines, without this file's own frames} (the
 *    official Node runtime's field names). Non-Error values (throw "x",
 *    callback("x"), Promise.reject(42)) follow Lambda: errorType is `typeof value`
 *    ("string", "number", "object", ...), errorMessage the value as text (strings as is,
 *    others JSON if possible), trace [].
 *  - Results: JSON.stringify(result === undefined ? null : result); a value that
 *    stringifies to undefined (a function, a symbol) is sent as null; a throw from
 *    stringify -> ERROR Runtime.ResultSerializationError; a result over Lambda's response
 *    limit (6291556 bytes, which the daemon enforces too) -> ERROR
 *    Function.ResponseSizeTooLarge, so the oversized result never crosses the socket.
 *  - The context object is per invocation; awsRequestId etc. are own properties;
 *    getRemainingTimeInMillis/done/succeed/fail are created lazily (bound, so they may be
 *    detached: `.then(context.succeed)` works) to keep the no-op hot path allocation-light.
 *  - console.log/info/debug/trace -> stdout, console.warn/error -> stderr, one line each:
 *    "<ISO time>\t<awsRequestId|undefined>\t<LEVEL>\t<message, \n -> \r>". console.trace
 *    logs its message at TRACE level without a stack, like Lambda. Other console methods
 *    are untouched.
 *  - unhandledRejection: one ERROR line (request id when the async context still knows
 *    it), the process keeps running. uncaughtException: one ERROR line on stderr, queued
 *    frames are written (best effort), exit code 1; while the module is still loading it is
 *    reported as INIT_ERROR (the error's own name) instead. Socket closed by the daemon -> exit 0;
 *    socket error -> exit 1; protocol error (bad length, unknown or wrong-direction kind,
 *    malformed INVOKE) -> close the connection, exit 1.
 *  - The process chdir()s into LAMBDA_TASK_ROOT (best effort), so relative file reads
 *    behave as on Lambda.
 *  - Warm pool (SHOAL_POOLED=1): the daemon starts the process before any function needs
 *    it. It loads this file, connects, and sends HELLO {"pooled": true}; then it waits for
 *    one ASSIGN frame (kind 7, daemon -> runtime, id 0) whose payload is a JSON object of
 *    environment variables: the function's (_HANDLER, LAMBDA_TASK_ROOT, AWS_LAMBDA_*, its
 *    own env). They are set in process.env, and the start goes on as for a process started
 *    for that function: load the handler, then HELLO or INIT_ERROR. Any other frame before
 *    ASSIGN is a protocol error.
 */

const net = require('node:net');
const fs = require('node:fs');
const path = require('node:path');
const util = require('node:util');
const { pathToFileURL } = require('node:url');
const { AsyncLocalStorage } = require('node:async_hooks');

// ---------------------------------------------------------------------------------------
// Protocol constants
// ---------------------------------------------------------------------------------------
const PROTOCOL_VERSION = 1;
const KIND_HELLO = 1;
const KIND_INIT_ERROR = 2;
const KIND_INVOKE = 3;
const KIND_RESULT = 4;
const KIND_ERROR = 5;
const KIND_INVOKE_CTX = 6; // INVOKE with a client context; sent only to runtimes that say so in HELLO
const KIND_ASSIGN = 7; // a pooled process's function (its environment), before anything else
const MAX_ASSIGN_LEN = 1024 * 1024;
const MAX_FRAME_LEN = 64 * 1024 * 1024 + 5; // value of the `len` field
const HEADER = 9; // len u32 + kind u8 + id u32
const MAX_RESPONSE = 6291556; // Lambda's response payload limit, as the daemon holds it
const TWO_POW_32 = 4294967296;

// ---------------------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------------------
const env = process.env;
const SOCKET_PATH = env.SHOAL_SOCKET;
const CHANNEL_FD = env.SHOAL_CHANNEL_FD === undefined ? undefined : Number(env.SHOAL_CHANNEL_FD);
const POOLED = env.SHOAL_POOLED === '1';
// The function's settings: read at start, or once the daemon assigns a pooled process.
let HANDLER_SPEC;
let TASK_ROOT;
let FUNCTION_NAME;
let FUNCTION_VERSION;
let MEMORY_SIZE;
let LOG_GROUP;
let LOG_STREAM;
let FUNCTION_ARN;

function readFunctionEnv() {
  HANDLER_SPEC = env._HANDLER || 'index.handler';
  TASK_ROOT = path.resolve(env.LAMBDA_TASK_ROOT || process.cwd());
  FUNCTION_NAME = env.AWS_LAMBDA_FUNCTION_NAME || 'unknown';
  FUNCTION_VERSION = env.AWS_LAMBDA_FUNCTION_VERSION || '$LATEST';
  MEMORY_SIZE = String(env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE || '128');
  LOG_GROUP = env.AWS_LAMBDA_LOG_GROUP_NAME || `/aws/lambda/${FUNCTION_NAME}`;
  LOG_STREAM = env.AWS_LAMBDA_LOG_STREAM_NAME || '';
  FUNCTION_ARN = `arn:aws:lambda:local:000000000000:function:${FUNCTION_NAME}`;
}
readFunctionEnv();

// ---------------------------------------------------------------------------------------
// Logging: one line per console call, tagged with the current request id
// ---------------------------------------------------------------------------------------
const als = new AsyncLocalStorage();
const stdout = process.stdout;
const stderr = process.stderr;
const NL = /\n/g;

function currentRequestId() {
  const store = als.getStore();
  return store === undefined ? 'undefined' : store.awsRequestId;
}

function writeLogLine(stream, level, rid, msg) {
  if (msg.indexOf('\n') !== -1) msg = msg.replace(NL, '\r');
  stream.write(`${new Date().toISOString()}\t${rid}\t${level}\t${msg}\n`);
}

function makeLogger(stream, level) {
  return function shoalLog(...args) {
    writeLogLine(stream, level, currentRequestId(), util.format(...args));
  };
}

console.log = makeLogger(stdout, 'INFO');
console.info = makeLogger(stdout, 'INFO');
console.debug = makeLogger(stdout, 'DEBUG');
console.trace = makeLogger(stdout, 'TRACE');
console.warn = makeLogger(stderr, 'WARN');
console.error = makeLogger(stderr, 'ERROR');

function logRuntimeError(title, err, rid) {
  const e = toErrorObject(err);
  let json;
  try {
    json = JSON.stringify({ errorType: e.errorType, errorMessage: e.errorMessage, stack: e.trace });
  } catch (_) {
    json = String(e.errorMessage);
  }
  writeLogLine(stderr, 'ERROR', rid === undefined ? currentRequestId() : rid, `${title} \t${json}`);
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------
function isErrorLike(v) {
  return (
    v instanceof Error ||
    util.types.isNativeError(v) ||
    (v !== null && typeof v === 'object' && typeof v.message === 'string' && typeof v.name === 'string')
  );
}

/** The stack's lines without this bootstrap's own frames (users never see them). */
function ownFrames(stack) {
  return stack.split('\n').filter((line) => !line.includes(__filename));
}

/** Any thrown / rejected value -> {errorType, errorMessage, trace}. Never throws. */
function toErrorObject(err, typeOverride) {
  try {
    if (isErrorLike(err)) {
      const stack = err.stack;
      return {
        errorType: typeOverride || String(err.name || 'Error'),
        errorMessage: String(err.message || String(err)),
        trace: typeof stack === 'string' ? ownFrames(stack) : [],
      };
    }
    let msg;
    if (typeof err === 'string') msg = err;
    else {
      try {
        msg = JSON.stringify(err);
      } catch (_) {
        msg = undefined;
      }
      if (msg === undefined) msg = String(err);
    }
    return { errorType: typeOverride || typeof err, errorMessage: msg, trace: [] };
  } catch (_) {
    return {
      errorType: typeOverride || 'Error',
      errorMessage: 'the handler failed with a value that could not be inspected',
      trace: [],
    };
  }
}

function errorPayload(err, typeOverride) {
  const e = toErrorObject(err, typeOverride);
  try {
    return JSON.stringify(e);
  } catch (_) {
    return JSON.stringify({ errorType: 'Error', errorMessage: 'unserializable error', trace: [] });
  }
}

// ---------------------------------------------------------------------------------------
// Socket + batched writer
// ---------------------------------------------------------------------------------------
if (!SOCKET_PATH && !Number.isInteger(CHANNEL_FD)) {
  writeLogLine(stderr, 'ERROR', 'undefined', 'neither SHOAL_CHANNEL_FD nor SHOAL_SOCKET is set; the Shoal bootstrap must be started by the daemon');
  process.exit(1);
}
if (env.SHOAL_PROTOCOL !== undefined && env.SHOAL_PROTOCOL !== String(PROTOCOL_VERSION)) {
  writeLogLine(stderr, 'ERROR', 'undefined', `unsupported SHOAL_PROTOCOL ${env.SHOAL_PROTOCOL} (this runtime speaks ${PROTOCOL_VERSION})`);
  process.exit(1);
}

const socket = Number.isInteger(CHANNEL_FD)
  ? new net.Socket({ fd: CHANNEL_FD, readable: true, writable: true })
  : net.createConnection(SOCKET_PATH);
let exiting = false;
let closeExitCode = 0; // 1 once initialization failed
let initFailed = false;

// Pending outgoing frames, as parallel arrays (kind, id, UTF-8 payload string).
const outKinds = [];
const outIds = [];
const outPayloads = [];
let flushScheduled = false;

function queueFrame(kind, id, payload) {
  outKinds.push(kind);
  outIds.push(id);
  outPayloads.push(payload);
  if (!flushScheduled) {
    flushScheduled = true;
    setImmediate(flush);
  }
}

/** Encode every queued frame into one buffer and hand it to the socket in one write. */
function flush(cb) {
  flushScheduled = false;
  const n = outPayloads.length;
  if (n === 0) {
    if (typeof cb === 'function') socket.write(Buffer.alloc(0), cb);
    return;
  }
  let cap = 0;
  for (let i = 0; i < n; i++) {
    const s = outPayloads[i];
    // Small strings: a cheap upper bound; large ones: the exact byte length.
    cap += HEADER + (s.length <= 2048 ? s.length * 3 : Buffer.byteLength(s, 'utf8'));
  }
  const out = Buffer.allocUnsafe(cap);
  let off = 0;
  for (let i = 0; i < n; i++) {
    const written = out.write(outPayloads[i], off + HEADER, 'utf8');
    out.writeUInt32BE(written + 5, off);
    out[off + 4] = outKinds[i];
    out.writeUInt32BE(outIds[i], off + 5);
    off += HEADER + written;
  }
  outKinds.length = 0;
  outIds.length = 0;
  outPayloads.length = 0;
  const chunk = off === cap ? out : out.subarray(0, off);
  if (typeof cb === 'function') socket.write(chunk, cb);
  else socket.write(chunk);
}

function exitNow(code) {
  if (exiting) return;
  exiting = true;
  process.exit(code);
}

socket.on('error', (err) => {
  if (exiting) return;
  writeLogLine(stderr, 'ERROR', 'undefined', `shoal runtime socket error: ${err && err.message}`);
  exitNow(1);
});
socket.on('close', () => exitNow(closeExitCode));

function protocolError(msg) {
  if (exiting) return;
  writeLogLine(stderr, 'ERROR', 'undefined', `shoal protocol error: ${msg}`);
  exiting = true;
  socket.destroy();
  process.exit(1);
}

// ---------------------------------------------------------------------------------------
// Frame reader: parses whole frames straight out of incoming chunks; only a partial
// frame's bytes are copied, into one reusable accumulator sized to the pending frame
// (so a large event costs one copy, not O(n^2) concatenation).
// ---------------------------------------------------------------------------------------
let acc = Buffer.allocUnsafeSlow(64 * 1024);
let accLen = 0; // bytes of an incomplete frame held in `acc`
let accNeed = 0; // total bytes of that frame, once its length prefix is known (else 0)

function onData(chunk) {
  let buf;
  let len;
  if (accLen === 0) {
    buf = chunk;
    len = chunk.length;
  } else {
    const total = accLen + chunk.length;
    if (total > acc.length) {
      const grown = Buffer.allocUnsafeSlow(Math.max(total, accNeed, acc.length * 2));
      acc.copy(grown, 0, 0, accLen);
      acc = grown;
    }
    chunk.copy(acc, accLen);
    accLen = total;
    if (accLen < accNeed) return; // still waiting for the rest of a large frame
    buf = acc;
    len = accLen;
  }

  let off = 0;
  accNeed = 0;
  while (len - off >= 4) {
    const flen = buf.readUInt32BE(off);
    if (flen < 5 || flen > MAX_FRAME_LEN) {
      protocolError(`frame length ${flen} out of range`);
      return;
    }
    const end = off + 4 + flen;
    if (end > len) {
      accNeed = 4 + flen;
      break;
    }
    const kind = buf[off + 4];
    if (kind !== KIND_INVOKE && kind !== KIND_INVOKE_CTX) {
      protocolError(`unexpected frame kind ${kind}`);
      return;
    }
    onInvoke(buf, buf.readUInt32BE(off + 5), off + HEADER, end, kind === KIND_INVOKE_CTX);
    if (exiting) return;
    off = end;
  }

  const rest = len - off;
  if (rest === 0) {
    accLen = 0;
  } else if (buf === acc) {
    if (off > 0) acc.copy(acc, 0, off, len);
    accLen = rest;
  } else {
    const want = Math.max(rest, accNeed);
    if (want > acc.length) acc = Buffer.allocUnsafeSlow(Math.max(want, acc.length * 2));
    chunk.copy(acc, 0, off, len);
    accLen = rest;
  }
  if (acc.length > 1024 * 1024 && accLen === 0) acc = Buffer.allocUnsafeSlow(64 * 1024); // release large buffers
}

// ---------------------------------------------------------------------------------------
// Invocations
// ---------------------------------------------------------------------------------------
const kId = Symbol('shoal.invocationId');
const kDeadline = Symbol('shoal.deadlineMs');
const kDone = Symbol('shoal.done');

function lazyBound(proto, name, impl) {
  Object.defineProperty(proto, name, {
    configurable: true,
    enumerable: false,
    get() {
      const fn = impl.bind(this);
      Object.defineProperty(this, name, { value: fn, writable: true, configurable: true, enumerable: false });
      return fn;
    },
    set(v) {
      Object.defineProperty(this, name, { value: v, writable: true, configurable: true, enumerable: true });
    },
  });
}

class Context {
  constructor(id, requestId, deadlineMs) {
    this.callbackWaitsForEmptyEventLoop = true;
    this.functionName = FUNCTION_NAME;
    this.functionVersion = FUNCTION_VERSION;
    this.invokedFunctionArn = FUNCTION_ARN;
    this.memoryLimitInMB = MEMORY_SIZE;
    this.awsRequestId = requestId;
    this.logGroupName = LOG_GROUP;
    this.logStreamName = LOG_STREAM;
    this.identity = undefined;
    this.clientContext = undefined;
    this[kId] = id;
    this[kDeadline] = deadlineMs;
    this[kDone] = false;
  }
}

lazyBound(Context.prototype, 'getRemainingTimeInMillis', function getRemainingTimeInMillis() {
  const ms = this[kDeadline] - Date.now();
  return ms > 0 ? ms : 0;
});
lazyBound(Context.prototype, 'done', function done(err, result) {
  if (err !== undefined && err !== null) failInvocation(this, err);
  else succeedInvocation(this, result);
});
lazyBound(Context.prototype, 'succeed', function succeed(result) {
  succeedInvocation(this, result);
});
lazyBound(Context.prototype, 'fail', function fail(err) {
  failInvocation(this, err === undefined || err === null ? 'handled' : err);
});

function succeedInvocation(ctx, result) {
  if (ctx[kDone]) return;
  ctx[kDone] = true;
  let json;
  try {
    json = JSON.stringify(result === undefined ? null : result);
  } catch (e) {
    queueFrame(KIND_ERROR, ctx[kId], errorPayload(e, 'Runtime.ResultSerializationError'));
    return;
  }
  if (json === undefined) json = 'null';
  else if (json.length > MAX_RESPONSE / 3) {
    const size = Buffer.byteLength(json, 'utf8');
    if (size > MAX_RESPONSE) {
      queueFrame(
        KIND_ERROR,
        ctx[kId],
        JSON.stringify({
          errorType: 'Function.ResponseSizeTooLarge',
          errorMessage: `Response payload size (${size} bytes) exceeded maximum allowed payload size (${MAX_RESPONSE} bytes).`,
          trace: [],
        })
      );
      return;
    }
  }
  queueFrame(KIND_RESULT, ctx[kId], json);
}

function failInvocation(ctx, err) {
  if (ctx[kDone]) return;
  ctx[kDone] = true;
  queueFrame(KIND_ERROR, ctx[kId], errorPayload(err));
}

async function awaitResult(ctx, promise) {
  let value;
  try {
    value = await promise;
  } catch (e) {
    failInvocation(ctx, e);
    return;
  }
  succeedInvocation(ctx, value);
}

let handler = null;
let handlerTakesCallback = false;

function runHandler(ctx, event) {
  let r;
  try {
    r = handlerTakesCallback ? handler(event, ctx, ctx.done) : handler(event, ctx);
    if (r !== null && (typeof r === 'object' || typeof r === 'function') && typeof r.then === 'function') {
      awaitResult(ctx, r);
      return;
    }
  } catch (e) {
    failInvocation(ctx, e);
    return;
  }
  if (!handlerTakesCallback) succeedInvocation(ctx, r);
}

function onInvoke(buf, id, start, end, withClientContext) {
  // payload: deadline_ms u64 BE | rid_len u16 BE | rid | [ctx_len u32 BE | ctx] | event
  if (end - start < 10) {
    protocolError(`INVOKE ${id} too short`);
    return;
  }
  const deadline = buf.readUInt32BE(start) * TWO_POW_32 + buf.readUInt32BE(start + 4);
  const ridLen = buf.readUInt16BE(start + 8);
  const ridEnd = start + 10 + ridLen;
  if (ridEnd > end) {
    protocolError(`INVOKE ${id} request id overruns the frame`);
    return;
  }
  const ctx = new Context(id, buf.toString('utf8', start + 10, ridEnd), deadline);
  let eventStart = ridEnd;
  if (withClientContext) {
    if (ridEnd + 4 > end || ridEnd + 4 + buf.readUInt32BE(ridEnd) > end) {
      protocolError(`INVOKE ${id} client context overruns the frame`);
      return;
    }
    eventStart = ridEnd + 4 + buf.readUInt32BE(ridEnd);
    try {
      ctx.clientContext = JSON.parse(buf.toString('utf8', ridEnd + 4, eventStart));
    } catch {
      ctx.clientContext = undefined;
    }
  }
  let event;
  try {
    event = JSON.parse(buf.toString('utf8', eventStart, end));
  } catch (e) {
    ctx[kDone] = true;
    queueFrame(KIND_ERROR, id, errorPayload(e, 'Runtime.InvalidEvent'));
    return;
  }
  als.run(ctx, runHandler, ctx, event);
}

// ---------------------------------------------------------------------------------------
// Process-level failure handling
// ---------------------------------------------------------------------------------------
process.on('unhandledRejection', (reason) => {
  logRuntimeError('Unhandled Promise Rejection', reason);
});

process.on('uncaughtException', (err) => {
  if (handler === null && !initFailed && !exiting) {
    // Thrown asynchronously while the module was still loading: that is an init failure.
    reportInitError(err);
    return;
  }
  logRuntimeError('Uncaught Exception', err);
  if (exiting) return;
  exiting = true;
  try {
    if (outPayloads.length > 0 && !socket.destroyed) flush();
  } catch (_) {
    // best effort
  }
  process.exit(1);
});

// ---------------------------------------------------------------------------------------
// Handler loading
// ---------------------------------------------------------------------------------------
class InitError extends Error {
  constructor(errorType, message, cause) {
    super(message);
    this.errorType = errorType;
    this.cause = cause;
  }
}

function isTypeModule(file) {
  let dir = path.dirname(file);
  for (;;) {
    const pj = path.join(dir, 'package.json');
    let text = null;
    try {
      text = fs.readFileSync(pj, 'utf8');
    } catch (_) {
      text = null;
    }
    if (text !== null) {
      try {
        return JSON.parse(text).type === 'module';
      } catch (_) {
        return false;
      }
    }
    const parent = path.dirname(dir);
    if (parent === dir) return false;
    dir = parent;
  }
}

function isFile(p) {
  try {
    return fs.statSync(p).isFile();
  } catch (_) {
    return false;
  }
}

function resolveExport(obj, parts) {
  let v = obj;
  for (let i = 0; i < parts.length; i++) {
    if (v === null || v === undefined) return undefined;
    v = v[parts[i]];
  }
  return v;
}

async function loadHandler(spec) {
  if (spec.includes('../')) {
    throw new InitError('Runtime.MalformedHandlerName', `'${spec}' is not a valid handler name: '../' is not allowed`);
  }
  const slash = spec.lastIndexOf('/');
  const dot = spec.indexOf('.', slash + 1);
  const modPath = dot === -1 ? '' : spec.slice(0, dot);
  const parts = dot === -1 ? [] : spec.slice(dot + 1).split('.');
  if (dot === -1 || dot === slash + 1 || parts.some((p) => p === '')) {
    throw new InitError('Runtime.MalformedHandlerName', `Bad handler ${spec}: expected <module>.<export>`);
  }

  const base = path.resolve(TASK_ROOT, modPath);
  let file = null;
  for (const ext of ['.js', '.mjs', '.cjs']) {
    if (isFile(base + ext)) {
      file = base + ext;
      break;
    }
  }
  if (file === null) {
    try {
      file = require.resolve(base);
    } catch (_) {
      throw new InitError('Runtime.ImportModuleError', `Cannot find module '${modPath}' in ${TASK_ROOT} (tried .js, .mjs, .cjs)`);
    }
  }

  let mod;
  try {
    const ext = path.extname(file);
    if (ext === '.mjs' || (ext === '.js' && isTypeModule(file))) {
      mod = await import(pathToFileURL(file).href);
    } else {
      try {
        mod = require(file);
      } catch (e) {
        if (e && e.code === 'ERR_REQUIRE_ESM') mod = await import(pathToFileURL(file).href);
        else throw e;
      }
    }
  } catch (e) {
    if (e instanceof SyntaxError) throw new InitError('Runtime.UserCodeSyntaxError', String(e.message), e);
    if (e && (e.code === 'MODULE_NOT_FOUND' || e.code === 'ERR_MODULE_NOT_FOUND')) {
      throw new InitError('Runtime.ImportModuleError', String(e.message), e);
    }
    throw e; // reported under the error's own name
  }

  let fn = resolveExport(mod, parts);
  if (fn === undefined && mod !== null && mod !== undefined && mod.default !== undefined && mod.default !== null) {
    fn = resolveExport(mod.default, parts);
  }
  if (fn === undefined) throw new InitError('Runtime.HandlerNotFound', `${spec} is undefined or not exported`);
  if (typeof fn !== 'function') throw new InitError('Runtime.HandlerNotFound', `${spec} is not a function`);
  return fn;
}

function reportInitError(err) {
  if (initFailed) return;
  initFailed = true;
  let payload;
  let rec;
  if (err instanceof InitError) {
    const src = err.cause !== undefined && isErrorLike(err.cause) ? err.cause : err;
    rec = toErrorObject(src, err.errorType);
    rec.errorMessage = err.message;
  } else {
    rec = toErrorObject(err);
  }
  try {
    payload = JSON.stringify(rec);
  } catch (_) {
    payload = JSON.stringify({ errorType: 'Error', errorMessage: 'initialization failed', trace: [] });
  }
  writeLogLine(stderr, 'ERROR', 'undefined', `Init Error \t${payload}`);
  closeExitCode = 1;
  if (socket.destroyed) exitNow(1);
  queueFrame(KIND_INIT_ERROR, 0, payload);
  flush(() => {
    socket.end();
    exitNow(1);
  });
  // If the daemon never reads, do not hang forever.
  setTimeout(() => exitNow(1), 5000).unref();
}

/** A pooled process: resolve with the ASSIGN frame's variables (the only frame expected). */
function waitForAssign() {
  return new Promise((resolve) => {
    let pending = Buffer.alloc(0);
    function onAssignData(chunk) {
      pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
      if (pending.length < 4) return;
      const flen = pending.readUInt32BE(0);
      if (flen < 5 || flen > MAX_ASSIGN_LEN) {
        protocolError(`ASSIGN frame length ${flen} out of range`);
        return;
      }
      if (pending.length < 4 + flen) return;
      if (pending[4] !== KIND_ASSIGN || pending.length > 4 + flen) {
        protocolError(`expected one ASSIGN frame, got frame kind ${pending[4]}`);
        return;
      }
      socket.removeListener('data', onAssignData);
      let vars;
      try {
        vars = JSON.parse(pending.toString('utf8', HEADER, 4 + flen));
      } catch (_) {
        protocolError('ASSIGN payload is not JSON');
        return;
      }
      resolve(vars);
    }
    socket.on('data', onAssignData);
  });
}

async function main() {
  if (POOLED) {
    queueFrame(
      KIND_HELLO,
      0,
      JSON.stringify({ protocol: PROTOCOL_VERSION, runtime: 'node', pid: process.pid, pooled: true }),
    );
    const vars = await waitForAssign();
    if (exiting) return;
    for (const key of Object.keys(vars)) {
      // Only what changes: writing TZ, even unchanged, makes V8 drop its time-zone data
      // and read it again at the next Date (a cold start's first log line).
      if (typeof vars[key] === 'string' && env[key] !== vars[key]) env[key] = vars[key];
    }
    delete env.SHOAL_POOLED;
    readFunctionEnv();
  }
  try {
    process.chdir(TASK_ROOT);
  } catch (_) {
    // best effort: a missing task root is reported by the module lookup below
  }
  let fn;
  try {
    fn = await loadHandler(HANDLER_SPEC);
  } catch (err) {
    reportInitError(err);
    return;
  }
  if (initFailed || exiting) return;
  handler = fn;
  handlerTakesCallback = fn.length >= 3;
  queueFrame(
    KIND_HELLO,
    0,
    JSON.stringify({ protocol: PROTOCOL_VERSION, runtime: 'node', pid: process.pid, features: ['client_context'] }),
  );
  socket.on('data', onData);
}

main();
