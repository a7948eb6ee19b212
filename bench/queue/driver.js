// The queue scenarios' producer and stopwatch, the same for every contender: it sends,
// then waits until the queue is empty (every message handled and deleted), reading the
// depth every 20 ms on a connection of its own. Prints one JSON line.
//
//   node driver.js SYSTEM setup|reset
//   node driver.js SYSTEM throughput --n 50000 [--batch 10] [--senders 16]
//   node driver.js SYSTEM rate --rate 1000 --seconds 20 --warmup 5 --listen HOST:PORT
//
// SYSTEM is shoal (--control ADDR --token T --queue NAME), bullmq (--redis HOST:PORT) or
// pg (--pg URL). throughput: N messages in batches of --batch from --senders concurrent
// senders, as fast as they are acknowledged. rate: single messages at a fixed rate, open
// loop; the handlers report each measured message's enqueue-to-handler latency to the UDP
// address --listen (record.js).
'use strict';
const dgram = require('node:dgram');
const { nowMs } = require('./record.js');
const { open, PG_SCHEMA } = require('./systems.js');

function args(argv) {
  const out = { _: [] };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i].startsWith('--')) out[argv[i].slice(2)] = argv[++i];
    else out._.push(argv[i]);
  }
  return out;
}

const PAD = 'x'.repeat(64);
const body = (kind) => `${kind} ${nowMs().toFixed(3)} ${PAD}`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function pct(sorted, p) {
  if (!sorted.length) return null;
  const rank = Math.max(1, Math.min(sorted.length, Math.ceil((p * sorted.length) / 100)));
  return sorted[rank - 1];
}

/** Waits for an empty queue; returns when it was first seen empty (ms, epoch). */
async function drained(q, timeoutMs) {
  const deadline = nowMs() + timeoutMs;
  for (;;) {
    const d = await q.depth();
    const t = nowMs();
    if (d === 0) return t;
    if (t > deadline) throw new Error(`the queue still holds ${d} messages after ${timeoutMs / 1000} s`);
    await sleep(20);
  }
}

async function throughput(q, a) {
  const n = Number(a.n);
  const batch = Number(a.batch || 10);
  const senders = Number(a.senders || 16);
  const cpu0 = process.cpuUsage();
  let next = 0;
  let resent = 0;
  const t0 = nowMs();
  await Promise.all(
    Array.from({ length: senders }, async () => {
      while (next < n) {
        const size = Math.min(batch, n - next);
        next += size;
        let bodies = Array.from({ length: size }, () => body('w'));
        for (let tries = 0; bodies.length; tries++) {
          if (tries > 50) throw new Error('a batch was refused 50 times');
          if (tries) await sleep(10 * tries);
          bodies = await q.sendBatch(bodies);
          resent += bodies.length;
        }
      }
    }),
  );
  const acked = nowMs();
  const done = await drained(q, Number(a.timeout || 300) * 1000);
  const cpu = process.cpuUsage(cpu0);
  return {
    n,
    batch,
    senders,
    resent,
    enqueue_s: (acked - t0) / 1000,
    e2e_s: (done - t0) / 1000,
    enqueue_rate: n / ((acked - t0) / 1000),
    rate: n / ((done - t0) / 1000),
    driver_cpu_s: (cpu.user + cpu.system) / 1e6,
  };
}

async function rate(q, a) {
  const perSec = Number(a.rate);
  const warm = Math.round(perSec * Number(a.warmup || 0));
  const total = warm + Math.round(perSec * Number(a.seconds));
  const [host, port] = [a.listen.slice(0, a.listen.lastIndexOf(':')), Number(a.listen.split(':').pop())];
  const latencies = [];
  const sock = dgram.createSocket('udp4');
  sock.on('message', (m) => {
    for (const v of m.toString().split(',')) latencies.push(Number(v));
  });
  await new Promise((r) => sock.bind(port, host, r));
  const acks = [];
  let errors = 0;
  let inflight = 0;
  let maxInflight = 0;
  const sends = [];
  const t0 = nowMs();
  let i = 0;
  // Open loop: each message goes out at its scheduled time whether or not the earlier
  // ones were acknowledged (up to 2,000 outstanding, which a fixed rate below saturation
  // never reaches).
  while (i < total) {
    const due = Math.min(total, Math.floor(((nowMs() - t0) / 1000) * perSec) + 1);
    while (i < due && inflight < 2000) {
      const measured = i >= warm;
      const sent = nowMs();
      inflight++;
      maxInflight = Math.max(maxInflight, inflight);
      sends.push(
        q.sendOne(body(measured ? 'r' : 'w')).then(
          () => {
            inflight--;
            if (measured) acks.push(nowMs() - sent);
          },
          (e) => {
            inflight--;
            errors++;
            if (errors <= 3) console.error(`send failed: ${e.message}`);
          },
        ),
      );
      i++;
    }
    await sleep(1);
  }
  const sendSeconds = (nowMs() - t0) / 1000;
  await Promise.all(sends);
  await drained(q, 60_000);
  // Datagrams of the last batches may still be on their way.
  const expected = total - warm - errors;
  for (let w = 0; w < 100 && latencies.length < expected; w++) await sleep(20);
  sock.close();
  latencies.sort((x, y) => x - y);
  acks.sort((x, y) => x - y);
  return {
    rate: perSec,
    seconds: Number(a.seconds),
    warmup: Number(a.warmup || 0),
    sent: total,
    achieved_rate: total / sendSeconds,
    errors,
    measured: total - warm,
    recorded: latencies.length,
    p50_ms: pct(latencies, 50),
    p99_ms: pct(latencies, 99),
    max_ms: latencies.length ? latencies[latencies.length - 1] : null,
    ack_p50_ms: pct(acks, 50),
    ack_p99_ms: pct(acks, 99),
    max_outstanding: maxInflight,
  };
}

async function main() {
  const a = args(process.argv.slice(2));
  const [system, phase] = a._;
  if (phase === 'setup' || phase === 'reset') {
    if (system === 'pg') {
      const { Client } = require('pg');
      const c = new Client({ connectionString: a.pg });
      await c.connect();
      // reset: an empty table with fresh storage (no dead rows), consumers left running.
      await c.query(phase === 'setup' ? PG_SCHEMA : 'TRUNCATE bench_queue');
      await c.end();
    }
    console.log(JSON.stringify({ ok: true }));
    return;
  }
  const q = open(system, { ...a, senders: Number(a.senders || 16) });
  await q.init();
  try {
    const run = { throughput, rate }[phase];
    if (!run) throw new Error(`unknown phase ${phase}`);
    console.log(JSON.stringify(await run(q, a)));
  } finally {
    await q.close();
  }
}

main().catch((e) => {
  console.error(e.stack || String(e));
  process.exit(1);
});
