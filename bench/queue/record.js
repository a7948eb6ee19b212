// What every queue contender's handler does with a message: nothing, except for the
// messages the driver marked for latency ("r <sent ms> ..."), whose send time is
// subtracted from now. The results of one call (a batch, or one job) go to the driver in
// one UDP datagram on loopback, so recording costs the handler next to nothing.
//
// Message bodies: "<w|r> <sent, ms since the epoch, fractional> <padding>". "w" is a
// warm-up or throughput message (not recorded), "r" a measured one.
'use strict';
const dgram = require('node:dgram');
const { performance } = require('node:perf_hooks');

const target = process.env.BENCH_LATENCY_ADDR || '';
let socket = null;
let host = '';
let port = 0;
if (target) {
  const at = target.lastIndexOf(':');
  host = target.slice(0, at);
  port = Number(target.slice(at + 1));
  socket = dgram.createSocket('udp4');
  socket.unref();
}

/** Wall-clock milliseconds with sub-millisecond resolution, comparable across processes. */
function nowMs() {
  return performance.timeOrigin + performance.now();
}

/** The handler's work for the bodies of one call. */
function handle(bodies) {
  let out = '';
  let now = 0;
  for (const body of bodies) {
    if (body.charCodeAt(0) !== 114 /* r */) continue;
    if (!now) now = nowMs();
    const sent = parseFloat(body.slice(2, body.indexOf(' ', 2)));
    out += (out ? ',' : '') + (now - sent).toFixed(3);
  }
  if (out && socket) socket.send(out, port, host);
}

module.exports = { handle, nowMs };
