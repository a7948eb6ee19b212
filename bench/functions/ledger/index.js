// The kill test's function (bench/kill.py). Every id it is handed (an SQS record's body, an
// async invoke's `id`, a schedule fire's rule, time and event id) is reported to the harness's
// ledger, a TCP server outside Shoal at $LEDGER (host:port; instances share the host's
// network). The call succeeds only once the ledger has answered `ok`, so a success Shoal
// sees is a delivery the ledger has recorded. The ledger may answer `fail` (the harness
// injects failures to make Shoal retry); the call then throws and nothing is recorded.
'use strict';
const net = require('net');

const [HOST, PORT] = (process.env.LEDGER || '').split(':');
const LEDGER_PATIENCE_MS = 20000;

// One line per call: `<kind> <id>,<id>,...`; ids never contain spaces or commas.
function describe(event, context) {
  if (Array.isArray(event.Records)) {
    return { kind: 'queue', ids: event.Records.map((r) => r.body) };
  }
  if (event['detail-type'] === 'Scheduled Event') {
    const rule = String((event.resources || [])[0] || '').split('/').pop();
    return { kind: 'schedule', ids: [`${rule}|${event.time}|${event.id}`] };
  }
  // With the request id, which a retry or redelivery of the same event must keep.
  return { kind: 'async', ids: [`${event.id}@${context.awsRequestId}`] };
}

function tell(line) {
  return new Promise((resolve, reject) => {
    const socket = net.createConnection({ host: HOST, port: Number(PORT) });
    let answer = '';
    const timer = setTimeout(() => socket.destroy(new Error('the ledger did not answer')), LEDGER_PATIENCE_MS);
    socket.setEncoding('utf8');
    socket.on('connect', () => socket.write(line + '\n'));
    socket.on('data', (chunk) => {
      answer += chunk;
      const end = answer.indexOf('\n');
      if (end >= 0) {
        clearTimeout(timer);
        socket.end();
        resolve(answer.slice(0, end));
      }
    });
    socket.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    socket.on('close', () => {
      clearTimeout(timer);
      reject(new Error('the ledger closed the connection without answering'));
    });
  });
}

module.exports.handler = async (event, context) => {
  const { kind, ids } = describe(event, context);
  const answer = await tell(`${kind} ${ids.join(',')}`);
  if (answer !== 'ok') {
    throw new Error(`the ledger refused this delivery (${answer}): ${ids.join(',')}`);
  }
  return { recorded: ids.length };
};
