// A CPU-heavy function: about 200 ms of pure computation per call and no waiting, the
// case where packing invocations into one single-threaded runtime only queues them.
module.exports.handler = async () => {
  const until = process.hrtime.bigint() + 200_000_000n;
  let spins = 0;
  while (process.hrtime.bigint() < until) spins++;
  return { statusCode: 200, body: `${process.pid},${spins}\n` };
};
