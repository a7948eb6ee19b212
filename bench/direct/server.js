// The "direct" contender: one plain Node.js HTTP server calling a handler module in-process,
// as the seed's node-hello does (serverless-utilization-2018.md). Every request becomes one
// handler call; the handler's {statusCode, body} is the response. No Shoal involved.
//
// Usage: node server.js FUNCTION_DIR MODULE EXPORT   (prints "listening PORT" when ready)
'use strict';
const http = require('node:http');
const path = require('node:path');

const [dir, moduleName, exportName] = process.argv.slice(2);
const handler = require(path.resolve(dir, moduleName))[exportName];
if (typeof handler !== 'function') {
  console.error(`${moduleName}.${exportName} is not a function in ${dir}`);
  process.exit(1);
}

const server = http.createServer(async (request, response) => {
  try {
    const result = await handler({ rawPath: request.url }, {});
    response.writeHead(result.statusCode || 200);
    response.end(result.body === undefined ? '' : String(result.body));
  } catch (err) {
    response.writeHead(500);
    response.end(String(err && err.stack));
  }
});
server.keepAliveTimeout = 60_000;
server.listen(0, '127.0.0.1', () => console.log(`listening ${server.address().port}`));
