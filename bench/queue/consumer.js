// A contender's consumers, as its users would run them: a BullMQ Worker with a no-op
// processor, or PostgreSQL clients taking batches with FOR UPDATE SKIP LOCKED. Prints
// "ready" once consuming; stops cleanly on SIGTERM.
//
//   node consumer.js bullmq --redis HOST:PORT --concurrency N
//   node consumer.js pg --pg URL --consumers N [--batch 10] [--idle-ms 2]
//
// The handler is record.js's (latency of marked messages, over UDP to the driver when
// BENCH_LATENCY_ADDR is set).
'use strict';
const { handle } = require('./record.js');
const { BULL_QUEUE } = require('./systems.js');

function args(argv) {
  const out = { _: [] };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i].startsWith('--')) out[argv[i].slice(2)] = argv[++i];
    else out._.push(argv[i]);
  }
  return out;
}

async function bullmq(a) {
  const { Worker } = require('bullmq');
  const at = a.redis.lastIndexOf(':');
  const connection = { host: a.redis.slice(0, at), port: Number(a.redis.slice(at + 1)) };
  const worker = new Worker(
    BULL_QUEUE,
    async (job) => {
      handle([job.data]);
    },
    { connection, concurrency: Number(a.concurrency || 1) },
  );
  worker.on('error', (e) => console.error(`worker error: ${e.message}`));
  await worker.waitUntilReady();
  return () => worker.close();
}

async function pg(a) {
  const { Client } = require('pg');
  const n = Number(a.consumers || 4);
  const batch = Number(a.batch || 10);
  const idle = Number(a['idle-ms'] || 2);
  let stopping = false;
  // A message is deleted in the transaction that hands it to the handler, committed only
  // after the handler returned: a consumer that dies mid-batch leaves it to the others.
  const take =
    'DELETE FROM bench_queue WHERE id IN (SELECT id FROM bench_queue ORDER BY id ' +
    `LIMIT ${batch} FOR UPDATE SKIP LOCKED) RETURNING body`;
  const clients = [];
  for (let i = 0; i < n; i++) {
    const c = new Client({ connectionString: a.pg });
    await c.connect();
    clients.push(c);
  }
  const loops = clients.map(async (c) => {
    while (!stopping) {
      await c.query('BEGIN');
      const { rows } = await c.query(take);
      if (rows.length) handle(rows.map((r) => r.body));
      await c.query('COMMIT');
      // Nothing to take: poll again shortly (no LISTEN/NOTIFY: a NOTIFY in the producers'
      // transactions would serialise their commits).
      if (!rows.length) await new Promise((r) => setTimeout(r, idle));
    }
  });
  return async () => {
    stopping = true;
    await Promise.all(loops);
    await Promise.all(clients.map((c) => c.end()));
  };
}

async function main() {
  const a = args(process.argv.slice(2));
  const start = { bullmq, pg }[a._[0]];
  if (!start) throw new Error(`usage: consumer.js bullmq|pg ...`);
  const stop = await start(a);
  process.on('SIGTERM', async () => {
    await stop();
    process.exit(0);
  });
  console.log('ready');
}

main().catch((e) => {
  console.error(e.stack || String(e));
  process.exit(1);
});
