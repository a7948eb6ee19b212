// A hostile neighbour for the noisy-neighbour scenario: each call starts `procs` busy
// loops in child processes (detached, so they outlive the call) for `ms` milliseconds.
const { spawn } = require('node:child_process');

exports.handler = async (event) => {
  const q = event.queryStringParameters || {};
  const procs = Number(q.procs || 4);
  const ms = Number(q.ms || 10000);
  for (let i = 0; i < procs; i++) {
    const child = spawn(process.execPath, ['-e', `const end = Date.now() + ${ms}; while (Date.now() < end) {}`], {
      detached: true,
      stdio: 'ignore',
    });
    child.unref();
  }
  return { statusCode: 200, body: `started ${procs} busy loops for ${ms} ms` };
};
