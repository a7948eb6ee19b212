'use strict';
// Tests for runtimes/node/bootstrap.js. Each test plays the Shoal daemon: it listens on a
// temporary Unix socket, spawns the bootstrap with the environment from docs/PROTOCOL.md,
// and speaks the native channel with its own frame codec (written from the spec, not
// shared with the bootstrap). Run: node --test runtimes/node/test/

const { test, after } = require('node:test');
const assert = require('node:assert');
const net = require('node:net');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawn } = require('node:child_process');

const BOOTSTRAP = path.resolve(__dirname, '..', 'bootstrap.js');

// How long a test waits for something the runtime does in milliseconds on an idle machine
// (a frame, a log line). Generous on purpose: CI shares 2 cores with other work, and this
// only bounds a hang. Tests check what happens and in which order, never how fast.
const PATIENCE_MS = 30000;

const HELLO = 1;
const INIT_ERROR = 2;
const INVOKE = 3;
const RESULT = 4;
const ERROR = 5;

// ------------------------------------------------------------------------------------
// Frame codec (from PROTOCOL.md): len u32 BE (counts kind+id+payload) | kind u8 | id u32 BE | payload
// ------------------------------------------------------------------------------------
function encodeFrame(kind, id, payload) {
  const body = Buffer.isBuffer(payload) ? payload : Buffer.from(payload || '', 'utf8');
  const head = Buffer.alloc(9);
  head.writeUInt32BE(5 + body.length, 0);
  head.writeUInt8(kind, 4);
  head.writeUInt32BE(id, 5);
  return Buffer.concat([head, body]);
}

function encodeInvoke(id, requestId, deadlineMs, event) {
  const rid = Buffer.from(requestId, 'utf8');
  const pre = Buffer.alloc(10);
  pre.writeBigUInt64BE(BigInt(deadlineMs), 0);
  pre.writeUInt16BE(rid.length, 8);
  const ev = Buffer.isBuffer(event) ? event : Buffer.from(JSON.stringify(event), 'utf8');
  return encodeFrame(INVOKE, id, Buffer.concat([pre, rid, ev]));
}

class FrameDecoder {
  constructor(onFrame) {
    this.chunks = [];
    this.size = 0;
    this.onFrame = onFrame;
  }
  push(chunk) {
    this.chunks.push(chunk);
    this.size += chunk.length;
    for (;;) {
      if (this.size < 4) return;
      let buf = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks);
      this.chunks = [buf];
      const len = buf.readUInt32BE(0);
      if (len < 5) throw new Error(`bad frame length ${len}`);
      if (buf.length < 4 + len) return;
      const kind = buf.readUInt8(4);
      const id = buf.readUInt32BE(5);
      const payload = Buffer.from(buf.subarray(9, 4 + len));
      const rest = buf.subarray(4 + len);
      this.chunks = rest.length ? [rest] : [];
      this.size = rest.length;
      this.onFrame({ kind, id, payload, text: payload.toString('utf8') });
    }
  }
}

// ------------------------------------------------------------------------------------
// Harness: fake daemon + runtime process
// ------------------------------------------------------------------------------------
const cleanups = [];
after(async () => {
  for (const c of cleanups.reverse()) {
    try {
      await c();
    } catch (_) {
      // ignore
    }
  }
});

function makeTaskRoot(files) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-node-'));
  for (const [name, content] of Object.entries(files)) {
    const p = path.join(dir, name);
    fs.mkdirSync(path.dirname(p), { recursive: true });
    fs.writeFileSync(p, content);
  }
  cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/**
 * Starts a fake daemon and a runtime. Returns helpers:
 *   next(pred?, timeoutMs?) -> next frame matching pred (timeoutMs defaults to PATIENCE_MS)
 *   send(buf), invoke(id, event, opts) , exited (promise of {code, signal}), stdout(), stderr()
 */
async function start(files, handler, extraEnv = {}) {
  const root = makeTaskRoot(files);
  const sockPath = path.join(root, 'rt.sock');
  const frames = [];
  const waiters = [];
  let conn = null;
  let connResolve;
  const connected = new Promise((r) => (connResolve = r));

  const deliver = (f) => {
    const i = waiters.findIndex((w) => w.pred(f));
    if (i >= 0) {
      const [w] = waiters.splice(i, 1);
      clearTimeout(w.timer);
      w.resolve(f);
    } else frames.push(f);
  };

  const server = net.createServer((s) => {
    conn = s;
    const dec = new FrameDecoder(deliver);
    s.on('data', (c) => dec.push(c));
    s.on('error', () => {});
    connResolve(s);
  });
  await new Promise((r) => server.listen(sockPath, r));

  const child = spawn(process.execPath, [BOOTSTRAP], {
    cwd: root,
    env: {
      PATH: process.env.PATH,
      SHOAL_SOCKET: sockPath,
      SHOAL_PROTOCOL: '1',
      _HANDLER: handler,
      LAMBDA_TASK_ROOT: root,
      AWS_LAMBDA_FUNCTION_NAME: 'my-func',
      AWS_LAMBDA_FUNCTION_VERSION: '$LATEST',
      AWS_LAMBDA_FUNCTION_MEMORY_SIZE: '256',
      AWS_LAMBDA_LOG_GROUP_NAME: '/aws/lambda/my-func',
      AWS_LAMBDA_LOG_STREAM_NAME: 'stream-1',
      AWS_LAMBDA_MAX_CONCURRENCY: '64',
      AWS_REGION: 'local',
      ...extraEnv,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (d) => (out += d));
  child.stderr.setEncoding('utf8').on('data', (d) => (err += d));
  const exited = new Promise((r) => child.on('exit', (code, signal) => r({ code, signal })));

  cleanups.push(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
    if (conn) conn.destroy();
    await new Promise((r) => server.close(r));
  });

  const next = (pred = () => true, timeoutMs = PATIENCE_MS) => {
    const i = frames.findIndex(pred);
    if (i >= 0) return Promise.resolve(frames.splice(i, 1)[0]);
    return new Promise((resolve, reject) => {
      const w = { pred, resolve };
      w.timer = setTimeout(() => {
        waiters.splice(waiters.indexOf(w), 1);
        reject(new Error(`timed out waiting for a frame; stderr: ${err}`));
      }, timeoutMs);
      waiters.push(w);
    });
  };

  const h = {
    root,
    child,
    exited,
    next,
    connected,
    stdout: () => out,
    stderr: () => err,
    send: async (buf) => (await connected).write(buf),
    invoke: (id, event, { rid = `req-${id}`, deadline = Date.now() + 30000 } = {}) =>
      h.send(encodeInvoke(id, rid, deadline, event)),
    result: async (id) => {
      const f = await next((x) => x.id === id && (x.kind === RESULT || x.kind === ERROR));
      return { kind: f.kind, value: JSON.parse(f.text) };
    },
    hello: () => next((x) => x.kind === HELLO),
  };
  return h;
}

async function ready(files, handler, env) {
  const h = await start(files, handler, env);
  const hello = await h.hello();
  assert.strictEqual(hello.id, 0);
  return h;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Resolves once `cond()` holds (checked every 10 ms); rejects after PATIENCE_MS. */
async function until(cond, what) {
  const giveUp = Date.now() + PATIENCE_MS;
  while (!cond()) {
    if (Date.now() > giveUp) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

// ------------------------------------------------------------------------------------
// Tests
// ------------------------------------------------------------------------------------
test('HELLO arrives with protocol 1 once the handler is loaded', async () => {
  const h = await start({ 'index.js': 'exports.handler = async () => 1;' }, 'index.handler');
  const f = await h.hello();
  assert.strictEqual(f.kind, HELLO);
  assert.strictEqual(f.id, 0);
  const hello = JSON.parse(f.text);
  assert.strictEqual(hello.protocol, 1);
  assert.strictEqual(hello.runtime, 'node');
  assert.strictEqual(hello.pid, h.child.pid);
});

test('async handler result (CommonJS)', async () => {
  const h = await ready(
    { 'index.js': 'exports.handler = async (event) => ({ got: event, n: event.a + 1 });' },
    'index.handler'
  );
  await h.invoke(7, { a: 41 });
  const r = await h.result(7);
  assert.strictEqual(r.kind, RESULT);
  assert.deepStrictEqual(r.value, { got: { a: 41 }, n: 42 });
});

test('undefined result becomes null; sync return value is the result', async () => {
  const h = await ready(
    {
      'index.js': `
        exports.nothing = async () => {};
        exports.sync = (event) => 'sync:' + event.x;
      `,
    },
    'index.nothing'
  );
  await h.invoke(1, {});
  const r = await h.result(1);
  assert.strictEqual(r.kind, RESULT);
  assert.strictEqual(r.value, null);

  const h2 = await ready({ 'index.js': 'exports.sync = (event) => "sync:" + event.x;' }, 'index.sync');
  await h2.invoke(2, { x: 'y' });
  assert.deepStrictEqual(await h2.result(2), { kind: RESULT, value: 'sync:y' });
});

test('callback-style handler: result, error, and first completion wins', async () => {
  const h = await ready(
    {
      'index.js': `
        exports.handler = (event, context, callback) => {
          if (event.fail) return setTimeout(() => callback(new TypeError('cb failed')), 10);
          setTimeout(() => { callback(null, { ok: event.v }); callback(null, 'second'); }, 10);
        };
      `,
    },
    'index.handler'
  );
  await h.invoke(1, { v: 1 });
  await h.invoke(2, { fail: true });
  assert.deepStrictEqual(await h.result(1), { kind: RESULT, value: { ok: 1 } });
  const e = await h.result(2);
  assert.strictEqual(e.kind, ERROR);
  assert.strictEqual(e.value.errorType, 'TypeError');
  assert.strictEqual(e.value.errorMessage, 'cb failed');
  assert.ok(Array.isArray(e.value.trace) && e.value.trace.length > 1);
  // the second callback call must not produce another frame
  await assert.rejects(h.next((f) => f.id === 1, 200));
});

test('legacy context.succeed / context.done work', async () => {
  const h = await ready(
    {
      'index.js': `
        exports.handler = (event, context, callback) => {
          Promise.resolve('via-succeed').then(context.succeed);
        };
      `,
    },
    'index.handler'
  );
  await h.invoke(3, {});
  assert.deepStrictEqual(await h.result(3), { kind: RESULT, value: 'via-succeed' });
});

test('.mjs ESM module, named export', async () => {
  const h = await ready({ 'app.mjs': 'export const handler = async (e) => ({ esm: true, e });' }, 'app.handler');
  await h.invoke(1, { k: 'v' });
  assert.deepStrictEqual(await h.result(1), { kind: RESULT, value: { esm: true, e: { k: 'v' } } });
});

test('.js in a "type":"module" package, export on default, nested module path', async () => {
  const h = await ready(
    {
      'package.json': JSON.stringify({ type: 'module' }),
      'src/app.js': 'export default { handler: async () => "from-default" };',
    },
    'src/app.handler'
  );
  await h.invoke(1, {});
  assert.deepStrictEqual(await h.result(1), { kind: RESULT, value: 'from-default' });
});

test('.cjs module and nested export path', async () => {
  const h = await ready({ 'lib.cjs': 'module.exports = { a: { b: async () => "nested" } };' }, 'lib.a.b');
  await h.invoke(1, {});
  assert.deepStrictEqual(await h.result(1), { kind: RESULT, value: 'nested' });
});

test('context values', async () => {
  const h = await ready(
    {
      'index.js': `
        exports.handler = async (event, context) => ({
          awsRequestId: context.awsRequestId,
          functionName: context.functionName,
          functionVersion: context.functionVersion,
          invokedFunctionArn: context.invokedFunctionArn,
          memoryLimitInMB: context.memoryLimitInMB,
          logGroupName: context.logGroupName,
          logStreamName: context.logStreamName,
          callbackWaitsForEmptyEventLoop: context.callbackWaitsForEmptyEventLoop,
          remaining: context.getRemainingTimeInMillis(),
          region: process.env.AWS_REGION,
        });
      `,
    },
    'index.handler'
  );
  await h.invoke(9, {}, { rid: 'c0ffee-1234', deadline: Date.now() + 10000 });
  const r = await h.result(9);
  assert.strictEqual(r.kind, RESULT);
  const v = r.value;
  assert.strictEqual(v.awsRequestId, 'c0ffee-1234');
  assert.strictEqual(v.functionName, 'my-func');
  assert.strictEqual(v.functionVersion, '$LATEST');
  assert.strictEqual(v.invokedFunctionArn, 'arn:aws:lambda:local:000000000000:function:my-func');
  assert.strictEqual(v.memoryLimitInMB, '256');
  assert.strictEqual(v.logGroupName, '/aws/lambda/my-func');
  assert.strictEqual(v.logStreamName, 'stream-1');
  assert.strictEqual(v.callbackWaitsForEmptyEventLoop, true);
  assert.strictEqual(v.region, 'local');
  assert.ok(v.remaining > 8000 && v.remaining <= 10000, `remaining ${v.remaining}`);

  // a deadline in the past gives 0, never negative
  await h.invoke(10, {}, { rid: 'late', deadline: Date.now() - 5000 });
  assert.strictEqual((await h.result(10)).value.remaining, 0);
});

test('INVOKE_CTX carries the client context; HELLO says the runtime reads it', async () => {
  const h = await start(
    { 'index.js': 'exports.handler = async (event, context) => ({ event, cc: context.clientContext ?? null });' },
    'index.handler'
  );
  const hello = JSON.parse((await h.hello()).text);
  assert.deepStrictEqual(hello.features, ['client_context']);
  const rid = Buffer.from('ctx-1', 'utf8');
  const pre = Buffer.alloc(10);
  pre.writeBigUInt64BE(BigInt(Date.now() + 10000), 0);
  pre.writeUInt16BE(rid.length, 8);
  const cc = Buffer.from(JSON.stringify({ custom: { k: 'v' } }), 'utf8');
  const ccLen = Buffer.alloc(4);
  ccLen.writeUInt32BE(cc.length, 0);
  const ev = Buffer.from(JSON.stringify({ a: 1 }), 'utf8');
  await h.send(encodeFrame(6, 11, Buffer.concat([pre, rid, ccLen, cc, ev])));
  const r = await h.result(11);
  assert.deepStrictEqual(r.value, { event: { a: 1 }, cc: { custom: { k: 'v' } } });
  // A plain INVOKE leaves it undefined.
  await h.invoke(12, { b: 2 });
  assert.deepStrictEqual((await h.result(12)).value, { event: { b: 2 }, cc: null });
});

test('10 slow invocations run concurrently and results match their ids', async () => {
  // Each call waits until all ten have started, which only happens if they run at once
  // (one at a time, the first would wait forever); then they finish in reverse order.
  const h = await ready(
    {
      'index.js': `
        let started = 0;
        let allStarted;
        const allIn = new Promise((r) => (allStarted = r));
        exports.handler = async (event, context) => {
          if (++started === 10) allStarted();
          await allIn;
          await new Promise((r) => setTimeout(r, event.ms));
          return { n: event.n, rid: context.awsRequestId };
        };
      `,
    },
    'index.handler'
  );
  const order = [];
  const pending = [];
  for (let n = 1; n <= 10; n++) {
    // later ids finish first: results come back out of order
    pending.push(
      h.result(100 + n).then((r) => {
        order.push(100 + n);
        return r;
      })
    );
    await h.invoke(100 + n, { n, ms: (10 - n) * 20 }, { rid: `rid-${n}` });
  }
  const results = await Promise.all(pending);
  results.forEach((r, i) => {
    assert.strictEqual(r.kind, RESULT);
    assert.deepStrictEqual(r.value, { n: i + 1, rid: `rid-${i + 1}` });
  });
  assert.deepStrictEqual(order, [110, 109, 108, 107, 106, 105, 104, 103, 102, 101]);
});

test('many INVOKE frames in one write are all handled', async () => {
  const h = await ready({ 'index.js': 'exports.handler = async (e) => e.i * 2;' }, 'index.handler');
  const bufs = [];
  for (let i = 1; i <= 200; i++) bufs.push(encodeInvoke(i, `r${i}`, Date.now() + 5000, { i }));
  await h.send(Buffer.concat(bufs));
  for (let i = 1; i <= 200; i++) assert.deepStrictEqual(await h.result(i), { kind: RESULT, value: i * 2 });
});

test('a throw in one of several concurrent invocations fails only that one', async () => {
  const h = await ready(
    {
      'index.js': `
        exports.handler = async (event) => {
          await new Promise((r) => setTimeout(r, 50));
          if (event.boom) { const e = new RangeError('kaboom'); throw e; }
          return 'ok-' + event.n;
        };
      `,
    },
    'index.handler'
  );
  for (let n = 1; n <= 5; n++) await h.invoke(n, { n, boom: n === 3 });
  for (let n = 1; n <= 5; n++) {
    const r = await h.result(n);
    if (n === 3) {
      assert.strictEqual(r.kind, ERROR);
      assert.strictEqual(r.value.errorType, 'RangeError');
      assert.strictEqual(r.value.errorMessage, 'kaboom');
      assert.ok(r.value.trace[0].includes('RangeError: kaboom'));
    } else {
      assert.deepStrictEqual(r, { kind: RESULT, value: `ok-${n}` });
    }
  }
});

test('sync throw, non-Error rejection, unserializable result', async () => {
  const h = await ready(
    {
      'index.js': `
        exports.handler = (event) => {
          if (event.t === 'sync') throw new Error('sync-throw');
          if (event.t === 'string') return Promise.reject('just a string');
          if (event.t === 'circular') { const o = {}; o.self = o; return o; }
          if (event.t === 'bigint') return Promise.resolve({ n: 1n });
          return 'fine';
        };
      `,
    },
    'index.handler'
  );
  await h.invoke(1, { t: 'sync' });
  await h.invoke(2, { t: 'string' });
  await h.invoke(3, { t: 'circular' });
  await h.invoke(4, { t: 'bigint' });
  await h.invoke(5, { t: 'x' });
  const r1 = await h.result(1);
  assert.strictEqual(r1.kind, ERROR);
  assert.strictEqual(r1.value.errorType, 'Error');
  assert.strictEqual(r1.value.errorMessage, 'sync-throw');
  // The trace is the user's: a sync throw passes through the bootstrap, whose frames are cut.
  assert.ok(r1.value.trace.length >= 2, JSON.stringify(r1.value));
  assert.ok(!r1.value.trace.some((l) => l.includes('bootstrap.js')), JSON.stringify(r1.value));
  assert.deepStrictEqual(await h.result(2), {
    kind: ERROR,
    value: { errorType: 'string', errorMessage: 'just a string', trace: [] },
  });
  const r3 = await h.result(3);
  assert.strictEqual(r3.kind, ERROR);
  assert.strictEqual(r3.value.errorType, 'Runtime.ResultSerializationError');
  assert.strictEqual((await h.result(4)).value.errorType, 'Runtime.ResultSerializationError');
  assert.deepStrictEqual(await h.result(5), { kind: RESULT, value: 'fine' });
});

test('an unhandled rejection is logged and the runtime keeps serving', async () => {
  const h = await ready(
    {
      'index.js': `
        exports.handler = async (event) => {
          if (event.stray) Promise.reject(new Error('stray'));
          return 'alive';
        };
      `,
    },
    'index.handler'
  );
  await h.invoke(1, { stray: true }, { rid: 'rid-stray' });
  assert.deepStrictEqual(await h.result(1), { kind: RESULT, value: 'alive' });
  await until(() => h.stderr().includes('stray'), 'the rejection to be logged');
  await h.invoke(2, {});
  assert.deepStrictEqual(await h.result(2), { kind: RESULT, value: 'alive' });
  assert.match(h.stderr(), /\tERROR\tUnhandled Promise Rejection \t.*stray/);
  assert.strictEqual(h.child.exitCode, null);
});

test('an uncaught exception ends the process with code 1', async () => {
  const h = await ready(
    { 'index.js': 'exports.handler = async () => { setTimeout(() => { throw new Error("fatal-one"); }, 5); return 1; };' },
    'index.handler'
  );
  await h.invoke(1, {}, { rid: 'rid-fatal' });
  const { code } = await h.exited;
  assert.strictEqual(code, 1);
  const line = h.stderr().split('\n').find((l) => l.includes('fatal-one'));
  assert.ok(line, h.stderr());
  assert.match(line, /^\S+\trid-fatal\tERROR\tUncaught Exception \t/);
});

test('missing module -> INIT_ERROR Runtime.ImportModuleError and exit code 1', async () => {
  const h = await start({ 'other.js': '' }, 'index.handler');
  const f = await h.next((x) => x.kind === INIT_ERROR);
  assert.strictEqual(f.id, 0);
  const e = JSON.parse(f.text);
  assert.strictEqual(e.errorType, 'Runtime.ImportModuleError');
  assert.match(e.errorMessage, /index/);
  assert.ok(Array.isArray(e.trace));
  assert.strictEqual((await h.exited).code, 1);
});

test('missing export -> INIT_ERROR Runtime.HandlerNotFound', async () => {
  const h = await start({ 'index.js': 'exports.other = () => 1; exports.notfn = 5;' }, 'index.handler');
  const e = JSON.parse((await h.next((x) => x.kind === INIT_ERROR)).text);
  assert.strictEqual(e.errorType, 'Runtime.HandlerNotFound');
  assert.strictEqual((await h.exited).code, 1);

  const h2 = await start({ 'index.js': 'exports.notfn = 5;' }, 'index.notfn');
  const e2 = JSON.parse((await h2.next((x) => x.kind === INIT_ERROR)).text);
  assert.strictEqual(e2.errorType, 'Runtime.HandlerNotFound');
  assert.strictEqual((await h2.exited).code, 1);
});

test('syntax error and throwing module at load time', async () => {
  const h = await start({ 'index.js': 'exports.handler = async () => {' }, 'index.handler');
  const e = JSON.parse((await h.next((x) => x.kind === INIT_ERROR)).text);
  assert.strictEqual(e.errorType, 'Runtime.UserCodeSyntaxError');
  assert.strictEqual((await h.exited).code, 1);

  const h2 = await start({ 'index.mjs': 'throw new TypeError("bad init");' }, 'index.handler');
  const e2 = JSON.parse((await h2.next((x) => x.kind === INIT_ERROR)).text);
  assert.strictEqual(e2.errorType, 'TypeError');
  assert.strictEqual(e2.errorMessage, 'bad init');
  assert.strictEqual((await h2.exited).code, 1);

  // thrown asynchronously while a top-level await is still pending
  const h4 = await start(
    { 'index.mjs': 'setTimeout(() => { throw new URIError("async init"); }, 5); await new Promise((r) => setTimeout(r, 1000)); export const handler = () => 1;' },
    'index.handler'
  );
  const e4 = JSON.parse((await h4.next((x) => x.kind === INIT_ERROR)).text);
  assert.strictEqual(e4.errorType, 'URIError');
  assert.strictEqual((await h4.exited).code, 1);
  await assert.rejects(h4.next((x) => x.kind === HELLO, 50));

  const h3 = await start({ 'index.js': 'exports.handler = 1' }, 'nodot');
  const e3 = JSON.parse((await h3.next((x) => x.kind === INIT_ERROR)).text);
  assert.strictEqual(e3.errorType, 'Runtime.MalformedHandlerName');
});

test('console.* lines carry the request id and level', async () => {
  const h = await ready(
    {
      'index.js': `
        console.log('at init');
        exports.handler = async (event, context) => {
          console.log('hello %s', 'world', { a: 1 });
          await new Promise((r) => setTimeout(r, 5));
          console.warn('multi\\nline');
          console.error(new Error('shown'));
          return 1;
        };
      `,
    },
    'index.handler'
  );
  await h.invoke(1, {}, { rid: 'log-rid-1' });
  await h.result(1);
  // The lines reach the pipes on their own schedule, not with the result frame.
  await until(
    () => h.stdout().includes('hello world') && h.stderr().includes('multi') && h.stderr().includes('shown'),
    'the handler\'s log lines'
  );
  const outLines = h.stdout().split('\n').filter(Boolean);
  const init = outLines.find((l) => l.includes('at init'));
  assert.match(init, /^\d{4}-\d\d-\d\dT[\d:.]+Z\tundefined\tINFO\tat init$/);
  const line = outLines.find((l) => l.includes('hello world'));
  assert.ok(line, h.stdout());
  assert.ok(line.includes('\tlog-rid-1\t') && line.includes('\tINFO\t'), line);
  assert.ok(line.endsWith("hello world { a: 1 }"), line);
  const errLines = h.stderr().split('\n').filter(Boolean);
  const warn = errLines.find((l) => l.includes('multi'));
  assert.strictEqual(warn.split('\t').slice(1).join('\t'), 'log-rid-1\tWARN\tmulti\rline');
  const err = errLines.find((l) => l.includes('shown'));
  assert.ok(err.includes('\tlog-rid-1\tERROR\tError: shown\r'), err);
});

test('a 5 MB event arriving in many chunks is parsed correctly', async () => {
  const h = await ready(
    {
      'index.js': `
        const crypto = require('crypto');
        exports.handler = async (event) => ({
          len: event.data.length,
          sha: crypto.createHash('sha256').update(event.data).digest('hex'),
          tail: event.tail,
        });
      `,
    },
    'index.handler'
  );
  const crypto = require('node:crypto');
  const data = crypto.randomBytes(3.75 * 1024 * 1024).toString('base64'); // 5 MiB of text
  const frame = encodeInvoke(77, 'big', Date.now() + 30000, { data, tail: 'é✓' });
  // a small frame before and after, glued onto the big one's first/last chunk
  const all = Buffer.concat([
    encodeInvoke(76, 'a', Date.now() + 30000, { data: 'x', tail: 0 }),
    frame,
    encodeInvoke(78, 'b', Date.now() + 30000, { data: 'yy', tail: 1 }),
  ]);
  const sock = await h.connected;
  const sizes = [1, 2, 3, 7, 4096, 65536, 100003];
  let off = 0;
  let i = 0;
  while (off < all.length) {
    const n = Math.min(sizes[i++ % sizes.length], all.length - off);
    sock.write(all.subarray(off, off + n));
    off += n;
    if (i % 8 === 0) await sleep(1); // let the runtime see separate reads
  }
  const r = await h.result(77);
  assert.strictEqual(r.kind, RESULT);
  assert.strictEqual(r.value.len, data.length);
  assert.strictEqual(r.value.sha, crypto.createHash('sha256').update(data).digest('hex'));
  assert.strictEqual(r.value.tail, 'é✓');
  assert.deepStrictEqual((await h.result(76)).value.len, 1);
  assert.deepStrictEqual((await h.result(78)).value.len, 2);
});

test('a large result comes back whole', async () => {
  const h = await ready({ 'index.js': 'exports.handler = async (e) => "z".repeat(e.n) + "ü";' }, 'index.handler');
  await h.invoke(1, { n: 3 * 1024 * 1024 });
  const r = await h.result(1);
  assert.strictEqual(r.value.length, 3 * 1024 * 1024 + 1);
  assert.ok(r.value.endsWith('zü'));
});

test('a result over Lambda\'s 6291556-byte limit is refused with its size; one at the limit is sent', async () => {
  // JSON of "z".repeat(n) is n + 2 bytes (the quotes).
  const h = await ready({ 'index.js': 'exports.handler = async (e) => "z".repeat(e.n);' }, 'index.handler');
  await h.invoke(1, { n: 6291556 - 2 });
  await h.invoke(2, { n: 6291556 - 1 });
  const atLimit = await h.result(1);
  assert.strictEqual(atLimit.kind, RESULT);
  assert.strictEqual(atLimit.value.length, 6291556 - 2);
  const over = await h.result(2);
  assert.strictEqual(over.kind, ERROR);
  assert.strictEqual(over.value.errorType, 'Function.ResponseSizeTooLarge');
  assert.strictEqual(
    over.value.errorMessage,
    'Response payload size (6291557 bytes) exceeded maximum allowed payload size (6291556 bytes).'
  );
});

test('the runtime exits 0 when the daemon closes the socket', async () => {
  const h = await ready({ 'index.js': 'exports.handler = async () => 1;' }, 'index.handler');
  (await h.connected).end();
  assert.strictEqual((await h.exited).code, 0);
});

test('an unknown frame kind is a protocol error: the runtime closes and exits 1', async () => {
  const h = await ready({ 'index.js': 'exports.handler = async () => 1;' }, 'index.handler');
  await h.send(encodeFrame(42, 1, 'x'));
  assert.strictEqual((await h.exited).code, 1);
});

const ASSIGN = 7;

test('a pooled runtime says so, then takes its function from ASSIGN', async () => {
  const h = await start(
    {
      'index.js':
        'exports.handler = async () => ({ name: process.env.AWS_LAMBDA_FUNCTION_NAME, secret: process.env.SECRET, pooled: process.env.SHOAL_POOLED || null });',
    },
    'nothing.here',
    { SHOAL_POOLED: '1', AWS_LAMBDA_FUNCTION_NAME: 'not-yet' },
  );
  const first = JSON.parse((await h.hello()).text);
  assert.strictEqual(first.pooled, true);
  assert.strictEqual(first.protocol, 1);
  await h.send(
    encodeFrame(
      ASSIGN,
      0,
      JSON.stringify({ _HANDLER: 'index.handler', AWS_LAMBDA_FUNCTION_NAME: 'assigned', SECRET: 's' }),
    ),
  );
  const second = JSON.parse((await h.hello()).text);
  assert.strictEqual(second.pooled, undefined);
  await h.invoke(1, {});
  const r = await h.result(1);
  assert.strictEqual(r.kind, RESULT);
  assert.deepStrictEqual(r.value, { name: 'assigned', secret: 's', pooled: null });
});

test('a pooled runtime given anything but ASSIGN closes and exits 1', async () => {
  const h = await start({ 'index.js': 'exports.handler = async () => 1;' }, 'index.handler', {
    SHOAL_POOLED: '1',
  });
  assert.strictEqual(JSON.parse((await h.hello()).text).pooled, true);
  await h.invoke(1, {});
  const { code } = await h.exited;
  assert.strictEqual(code, 1);
});

test('a pooled runtime assigned a missing handler reports the init error', async () => {
  const h = await start({}, 'index.handler', { SHOAL_POOLED: '1' });
  assert.strictEqual(JSON.parse((await h.hello()).text).pooled, true);
  await h.send(encodeFrame(ASSIGN, 0, JSON.stringify({ _HANDLER: 'missing.handler' })));
  const f = await h.next((x) => x.kind === INIT_ERROR);
  assert.strictEqual(JSON.parse(f.text).errorType, 'Runtime.ImportModuleError');
  assert.strictEqual((await h.exited).code, 1);
});
