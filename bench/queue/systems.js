// The producer's side of each queue contender: send a batch, send one message, read the
// depth (messages sent and not yet deleted: waiting plus in flight). The depth is read on
// a connection of its own, so it never queues behind the producers' sends.
'use strict';
const http = require('node:http');

/** Shoal: the SQS JSON protocol on the control listener, with the admin token. */
class ShoalQueue {
  constructor({ control, token, queue, senders }) {
    const at = control.lastIndexOf(':');
    this.host = control.slice(0, at);
    this.port = Number(control.slice(at + 1));
    this.token = token;
    this.queue = queue;
    this.agent = new http.Agent({ keepAlive: true, maxSockets: senders });
    this.pollAgent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    this.url = '';
  }

  call(action, body, agent = this.agent) {
    const payload = JSON.stringify(body);
    return new Promise((resolve, reject) => {
      const req = http.request(
        {
          host: this.host,
          port: this.port,
          method: 'POST',
          path: '/',
          agent,
          headers: {
            'content-type': 'application/x-amz-json-1.0',
            'x-amz-target': `AmazonSQS.${action}`,
            authorization: `Bearer ${this.token}`,
            'content-length': Buffer.byteLength(payload),
          },
        },
        (res) => {
          const chunks = [];
          res.on('data', (c) => chunks.push(c));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString();
            if (res.statusCode !== 200) {
              const err = new Error(`${action}: HTTP ${res.statusCode}: ${text.slice(0, 300)}`);
              err.status = res.statusCode;
              reject(err);
              return;
            }
            try {
              resolve(text ? JSON.parse(text) : {});
            } catch (e) {
              reject(new Error(`${action}: unreadable reply ${text.slice(0, 300)}`));
            }
          });
        },
      );
      req.on('error', reject);
      req.end(payload);
    });
  }

  async init() {
    const reply = await this.call('GetQueueUrl', { QueueName: this.queue }, this.pollAgent);
    this.url = reply.QueueUrl;
  }

  /** Returns the bodies the queue refused (to be sent again). */
  async sendBatch(bodies) {
    const reply = await this.call('SendMessageBatch', {
      QueueUrl: this.url,
      Entries: bodies.map((b, i) => ({ Id: String(i), MessageBody: b })),
    });
    return (reply.Failed || []).map((f) => bodies[Number(f.Id)]);
  }

  async sendOne(body) {
    await this.call('SendMessage', { QueueUrl: this.url, MessageBody: body });
  }

  async depth() {
    const reply = await this.call(
      'GetQueueAttributes',
      {
        QueueUrl: this.url,
        AttributeNames: [
          'ApproximateNumberOfMessages',
          'ApproximateNumberOfMessagesNotVisible',
          'ApproximateNumberOfMessagesDelayed',
        ],
      },
      this.pollAgent,
    );
    const a = reply.Attributes || {};
    return (
      Number(a.ApproximateNumberOfMessages || 0) +
      Number(a.ApproximateNumberOfMessagesNotVisible || 0) +
      Number(a.ApproximateNumberOfMessagesDelayed || 0)
    );
  }

  async close() {
    this.agent.destroy();
    this.pollAgent.destroy();
  }
}

/** BullMQ: Queue.addBulk / Queue.add; completed jobs are removed (removeOnComplete). */
class BullQueue {
  constructor({ redis }) {
    const { Queue } = require('bullmq');
    const at = redis.lastIndexOf(':');
    const connection = { host: redis.slice(0, at), port: Number(redis.slice(at + 1)) };
    this.queue = new Queue(BULL_QUEUE, { connection });
    this.poll = new Queue(BULL_QUEUE, { connection });
    this.opts = { removeOnComplete: true, removeOnFail: true };
  }

  async init() {
    await this.queue.waitUntilReady();
    await this.poll.waitUntilReady();
  }

  async sendBatch(bodies) {
    await this.queue.addBulk(bodies.map((data) => ({ name: 'm', data, opts: this.opts })));
    return [];
  }

  async sendOne(body) {
    await this.queue.add('m', body, this.opts);
  }

  async depth() {
    const c = await this.poll.getJobCounts('wait', 'active', 'delayed', 'prioritized', 'paused');
    return Object.values(c).reduce((a, b) => a + b, 0);
  }

  async close() {
    await this.queue.close();
    await this.poll.close();
  }
}
const BULL_QUEUE = 'bench';

/** PostgreSQL: one table; a send is one INSERT (a batch is one multi-row INSERT). */
class PgQueue {
  constructor({ pg, senders }) {
    const { Pool, Client } = require('pg');
    this.pool = new Pool({ connectionString: pg, max: senders });
    this.poll = new Client({ connectionString: pg });
  }

  async init() {
    await this.poll.connect();
  }

  async sendBatch(bodies) {
    await this.pool.query('INSERT INTO bench_queue (body) SELECT unnest($1::text[])', [bodies]);
    return [];
  }

  async sendOne(body) {
    await this.pool.query('INSERT INTO bench_queue (body) VALUES ($1)', [body]);
  }

  async depth() {
    const { rows } = await this.poll.query('SELECT count(*)::int AS n FROM bench_queue');
    return rows[0].n;
  }

  async close() {
    await this.pool.end();
    await this.poll.end();
  }
}

const PG_SCHEMA = `
  DROP TABLE IF EXISTS bench_queue;
  CREATE TABLE bench_queue (id bigserial PRIMARY KEY, body text NOT NULL);
`;

function open(system, opts) {
  if (system === 'shoal') return new ShoalQueue(opts);
  if (system === 'bullmq') return new BullQueue(opts);
  if (system === 'pg') return new PgQueue(opts);
  throw new Error(`unknown system ${system}`);
}

module.exports = { open, BULL_QUEUE, PG_SCHEMA };
