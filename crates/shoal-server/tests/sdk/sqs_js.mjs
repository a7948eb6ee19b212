// The AWS SDK for JavaScript v3 (@aws-sdk/client-sqs) against a running Shoal daemon's SQS
// API. Usage: node sqs_js.mjs ENDPOINT ACCESS_KEY_ID SECRET. Run by
// crates/shoal-server/tests/sqs_sdk.rs with a key from `shoal keys create`.
//
// This SDK checks the MD5 digest of every body it sends and receives (its
// middleware-sdk-sqs), so a wrong digest fails the call. It signs with SigV4, unchanged.
// Installs the
// SDK with npm beside this file when it is missing. Prints "N passed, 0 failed" at the end.

import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";

const here = dirname(fileURLToPath(import.meta.url));
if (!existsSync(join(here, "node_modules", "@aws-sdk", "client-sqs"))) {
  console.error("[sqs_js] installing @aws-sdk/client-sqs with npm");
  const npm = spawnSync("npm", ["install", "--no-audit", "--no-fund", "--no-package-lock", "--silent"], {
    cwd: here,
    stdio: "inherit",
  });
  if (npm.status !== 0) {
    console.error("[sqs_js] npm install failed");
    process.exit(2);
  }
}
const sqsModule = await import("@aws-sdk/client-sqs");
const {
  SQSClient,
  CreateQueueCommand,
  SendMessageCommand,
  SendMessageBatchCommand,
  ReceiveMessageCommand,
  DeleteMessageBatchCommand,
  ChangeMessageVisibilityCommand,
  GetQueueAttributesCommand,
  PurgeQueueCommand,
  DeleteQueueCommand,
  QueueDoesNotExist,
} = sqsModule;

const [endpoint, accessKeyId, secretAccessKey] = process.argv.slice(2);
const sqs = new SQSClient({
  endpoint,
  region: "us-east-1",
  credentials: { accessKeyId, secretAccessKey },
  maxAttempts: 1,
});

let checks = 0;
const check = (condition, what) => {
  assert.ok(condition, what);
  checks += 1;
};

const { QueueUrl: url } = await sqs.send(new CreateQueueCommand({ QueueName: "js-jobs" }));
check(url.endsWith("/js-jobs"), `queue URL ${url}`);

const body = "naïve café — 日本語 ✓ 🐟";
const sent = await sqs.send(
  new SendMessageCommand({
    QueueUrl: url,
    MessageBody: body,
    MessageAttributes: {
      kind: { DataType: "String", StringValue: "order" },
      raw: { DataType: "Binary", BinaryValue: new Uint8Array([0, 1, 2, 255]) },
    },
  }),
);
check(sent.MessageId && sent.MD5OfMessageAttributes, "SendMessage (body digest checked by the SDK)");

const batch = await sqs.send(
  new SendMessageBatchCommand({
    QueueUrl: url,
    Entries: [
      { Id: "a", MessageBody: "first of the batch" },
      { Id: "b", MessageBody: "second of the batch" },
    ],
  }),
);
check(batch.Successful.length === 2, "SendMessageBatch (digests checked by the SDK)");

const got = new Map();
for (let i = 0; i < 10 && got.size < 3; i++) {
  const { Messages = [] } = await sqs.send(
    new ReceiveMessageCommand({
      QueueUrl: url,
      MaxNumberOfMessages: 10,
      WaitTimeSeconds: 2,
      MessageAttributeNames: ["All"],
      MessageSystemAttributeNames: ["All"],
    }),
  );
  for (const m of Messages) got.set(m.Body, m);
}
check(got.size === 3, `received ${[...got.keys()]}`);
const first = got.get(body);
check(first.MessageAttributes.kind.StringValue === "order", "string attribute");
check(Buffer.from(first.MessageAttributes.raw.BinaryValue).equals(Buffer.from([0, 1, 2, 255])), "binary attribute");
check(first.MD5OfMessageAttributes === sent.MD5OfMessageAttributes, "attributes' digest on receive");
check(first.Attributes.ApproximateReceiveCount === "1", "ApproximateReceiveCount");

await sqs.send(new ChangeMessageVisibilityCommand({ QueueUrl: url, ReceiptHandle: first.ReceiptHandle, VisibilityTimeout: 0 }));
const { Messages: again = [] } = await sqs.send(
  new ReceiveMessageCommand({ QueueUrl: url, WaitTimeSeconds: 5, MessageSystemAttributeNames: ["ApproximateReceiveCount"] }),
);
check(again.length === 1 && again[0].Body === body && again[0].Attributes.ApproximateReceiveCount === "2", "received again");

const deleted = await sqs.send(
  new DeleteMessageBatchCommand({
    QueueUrl: url,
    Entries: [
      { Id: "x", ReceiptHandle: again[0].ReceiptHandle },
      { Id: "y", ReceiptHandle: got.get("first of the batch").ReceiptHandle },
      { Id: "z", ReceiptHandle: got.get("second of the batch").ReceiptHandle },
    ],
  }),
);
check(deleted.Successful.length === 3 && !deleted.Failed?.length, "DeleteMessageBatch");

const { Attributes: counts } = await sqs.send(new GetQueueAttributesCommand({ QueueUrl: url, AttributeNames: ["All"] }));
check(counts.ApproximateNumberOfMessages === "0" && counts.ApproximateNumberOfMessagesNotVisible === "0", "all deleted");

await sqs.send(new PurgeQueueCommand({ QueueUrl: url }));
await sqs.send(new DeleteQueueCommand({ QueueUrl: url }));
try {
  await sqs.send(new PurgeQueueCommand({ QueueUrl: url }));
  check(false, "a deleted queue is gone");
} catch (e) {
  check(e instanceof QueueDoesNotExist, `modelled exception, got ${e.name}`);
}

console.log(`${checks} passed, 0 failed`);
