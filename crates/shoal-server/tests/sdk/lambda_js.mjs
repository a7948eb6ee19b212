// The AWS SDK for JavaScript v3 (@aws-sdk/client-lambda) against a running Shoal daemon.
// Usage: node lambda_js.mjs ENDPOINT ACCESS_KEY_ID SECRET. Run by
// crates/shoal-server/tests/lambda_sdk.rs, which has deployed `hello` twice and issued the
// key. The SDK signs with SigV4 as it would for AWS: no middleware, no custom code.
// Installs the SDK with npm beside this file when missing. Prints "N passed, 0 failed".

import { spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";

const here = dirname(fileURLToPath(import.meta.url));
const sdkDir = join(here, "node_modules", "@aws-sdk", "client-lambda");
if (!existsSync(sdkDir)) {
  console.error("[lambda_js] installing @aws-sdk/client-lambda with npm");
  const npm = spawnSync("npm", ["install", "--no-audit", "--no-fund", "--no-package-lock", "--silent"], {
    cwd: here,
    stdio: "inherit",
  });
  if (npm.status !== 0) {
    console.error("[lambda_js] npm install failed");
    process.exit(2);
  }
}
const version = JSON.parse(readFileSync(join(sdkDir, "package.json"), "utf8")).version;
console.error(`[lambda_js] @aws-sdk/client-lambda ${version}`);
const {
  LambdaClient,
  InvokeCommand,
  GetFunctionConfigurationCommand,
  ListFunctionsCommand,
  ListVersionsByFunctionCommand,
  ResourceNotFoundException,
} = await import("@aws-sdk/client-lambda");

const [endpoint, accessKeyId, secretAccessKey] = process.argv.slice(2);
const client = (overrides = {}) =>
  new LambdaClient({
    endpoint,
    region: "us-east-1",
    credentials: { accessKeyId, secretAccessKey },
    maxAttempts: 1,
    ...overrides,
  });
const lambda = client();

let checks = 0;
const check = (condition, what) => {
  assert.ok(condition, what);
  checks += 1;
};
const text = (bytes) => new TextDecoder().decode(bytes);
const json = (value) => new TextEncoder().encode(JSON.stringify(value));

let reply = await lambda.send(new InvokeCommand({ FunctionName: "hello", Payload: json({ x: 1 }) }));
check(reply.StatusCode === 200, `StatusCode ${reply.StatusCode}`);
check(JSON.parse(text(reply.Payload)).echo.x === 1, `payload ${text(reply.Payload)}`);
check(reply.ExecutedVersion === "$LATEST", `ExecutedVersion ${reply.ExecutedVersion}`);

reply = await lambda.send(
  new InvokeCommand({ FunctionName: "arn:aws:lambda:us-east-1:000000000000:function:hello", Qualifier: "2", Payload: json({}) }),
);
check(reply.ExecutedVersion === "2", `by ARN, Qualifier 2: ${reply.ExecutedVersion}`);

try {
  await lambda.send(new InvokeCommand({ FunctionName: "hello", Qualifier: "9", Payload: json({}) }));
  check(false, "an unknown qualifier is refused");
} catch (e) {
  check(e instanceof ResourceNotFoundException, `unknown qualifier: ${e.name}`);
}

const versions_seen = new Set();
for (let i = 0; i < 30; i++) {
  reply = await lambda.send(new InvokeCommand({ FunctionName: "hello", Qualifier: "live", Payload: json({}) }));
  const mark = JSON.parse(text(reply.Payload)).mark;
  check({ 1: "one", 2: "two" }[reply.ExecutedVersion] === mark, `alias ran ${reply.ExecutedVersion} with ${mark}`);
  versions_seen.add(reply.ExecutedVersion);
}
check(versions_seen.size === 2, `30 calls of a 50/50 alias reached ${[...versions_seen]}`);

const clientContext = Buffer.from(JSON.stringify({ custom: { from: "js" } })).toString("base64");
reply = await lambda.send(new InvokeCommand({ FunctionName: "hello", ClientContext: clientContext, Payload: json({}) }));
check(JSON.parse(text(reply.Payload)).clientContext?.custom?.from === "js", `clientContext ${text(reply.Payload)}`);

reply = await lambda.send(new InvokeCommand({ FunctionName: "hello", InvocationType: "Event", Payload: json({ a: 1 }) }));
check(reply.StatusCode === 202, `Event ${reply.StatusCode}`);

reply = await lambda.send(new InvokeCommand({ FunctionName: "hello", LogType: "Tail", Payload: json({ tail: "marker-js" }) }));
const tail = Buffer.from(reply.LogResult ?? "", "base64").toString();
check(tail.includes("marker-js"), `LogResult ${tail}`);

reply = await lambda.send(new InvokeCommand({ FunctionName: "hello", Payload: json({ fail: true }) }));
check(reply.FunctionError === "Unhandled", `FunctionError ${reply.FunctionError}`);

const config = await lambda.send(new GetFunctionConfigurationCommand({ FunctionName: "hello" }));
check(config.Handler === "index.handler" && config.Version === "$LATEST", `configuration ${JSON.stringify(config)}`);
const functions = await lambda.send(new ListFunctionsCommand({}));
check(functions.Functions.map((f) => f.FunctionName).join() === "hello", "ListFunctions");
const versions = await lambda.send(new ListVersionsByFunctionCommand({ FunctionName: "hello" }));
check(versions.Versions.map((v) => v.Version).join() === "$LATEST,1,2", "ListVersionsByFunction");

for (const [label, other, expected] of [
  ["a wrong secret", client({ credentials: { accessKeyId, secretAccessKey: secretAccessKey + "x" } }), "InvalidSignatureException"],
  ["an unknown key", client({ credentials: { accessKeyId: "AKSHUNKNOWN000000000", secretAccessKey } }), "UnrecognizedClientException"],
]) {
  try {
    await other.send(new InvokeCommand({ FunctionName: "hello", Payload: json({}) }));
    check(false, `${label} is refused`);
  } catch (e) {
    check(e.name === expected, `${label}: ${e.name}`);
    check(e.$metadata.httpStatusCode === 403, `${label}: status ${e.$metadata.httpStatusCode}`);
  }
}

console.log(`${checks} passed, 0 failed`);
