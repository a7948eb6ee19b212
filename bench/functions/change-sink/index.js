// The change-stream scenario's function: a postgres data-change trigger's handler. For each
// batch it sends the harness one UDP datagram on loopback: how many records, and each
// record's commit-to-handler latency in ms (now minus ApproximateCreationDateTime, the
// row's write time, taken just before its single-statement transaction commits). With
// SINK_SLEEP_MS it then waits that long, as an I/O-bound handler waits on a database or an
// API; otherwise it returns at once.
'use strict';
const dgram = require('node:dgram');
const { performance } = require('node:perf_hooks');

const [host, port] = (process.env.BENCH_LATENCY_ADDR || '127.0.0.1:9').split(':');
const sleepMs = Number(process.env.SINK_SLEEP_MS || 0);
const socket = dgram.createSocket('udp4');
socket.unref();

exports.handler = async (event) => {
  const now = performance.timeOrigin + performance.now();
  const latencies = event.Records.map((r) => (now - r.dynamodb.ApproximateCreationDateTime * 1000).toFixed(1));
  socket.send(`${event.Records.length} ${latencies.join(',')}`, Number(port), host);
  if (sleepMs) await new Promise((resolve) => setTimeout(resolve, sleepMs));
  return {};
};
