// The overload and frozen-instance scenarios' function: waits `ms` (default 100) and
// answers with the instance that ran it.
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

exports.handler = async (event) => {
  const q = event.queryStringParameters || {};
  await sleep(Number(q.ms || 100));
  return { statusCode: 200, body: process.env.AWS_LAMBDA_LOG_STREAM_NAME || 'ok' };
};
