// The queue scenarios' Shoal function: triggered by a queue, it does nothing with each
// record but what every contender's handler does (bench/queue/record.js, copied beside
// this file by the runner): report the latency of the records marked for it.
const { handle } = require('./record.js');

module.exports.handler = async (event) => {
  handle(event.Records.map((r) => r.body));
};
