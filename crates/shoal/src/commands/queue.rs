//! `shoal queue`: SQS-style queues on the daemon — `create`, `send`, `receive`, `purge`,
//! `rm`, `ls`. Every subcommand but `ls` is a request of the daemon's SQS API, the one the
//! AWS SDKs use, so the CLI sees what they see; `ls` reads the queues of
//! `GET /admin/status`, which add what SQS has no attribute for (the oldest message's
//! age).

use std::collections::BTreeMap;
use std::io::Read;
use std::process::ExitCode;

use bytes::Bytes;
use hyper::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use shoal_api::sqs::{
    self, BatchResult, BatchResultEntry, CreateQueue, GetQueueAttributes, GetQueueAttributesResult,
    GetQueueUrl, MessageAttributeValue, MessageBatch, MessageBatchEntry, OutgoingMessage,
    QueueRequest, QueueUrlResult, ReceiveMessage, ReceiveMessageResult, SendMessage,
    SendMessageResult,
};
use shoal_api::StatusReport;

use crate::client::Client;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Create a queue (an existing one with the same settings is fine).
    Create(CreateArgs),
    /// Send one message.
    Send(SendArgs),
    /// Receive messages (long polling) and print each as one line of JSON.
    Receive(ReceiveArgs),
    /// Delete every message in a queue.
    Purge { name: String },
    /// Delete a queue and every message in it.
    Rm { name: String },
    /// List queues: depth, in flight, delayed, oldest message's age, dead-letter queue.
    Ls,
}

#[derive(clap::Args)]
struct CreateArgs {
    name: String,
    /// How long a received message stays hidden before it can be received again.
    #[arg(long, value_parser = seconds)]
    visibility_timeout: Option<u64>,
    /// How long a message is kept when nobody deletes it (60s to 14d).
    #[arg(long, value_parser = seconds)]
    retention: Option<u64>,
    /// How long new messages wait before they can be received (up to 15m).
    #[arg(long, value_parser = seconds)]
    delay: Option<u64>,
    /// How long a receive waits for a message by default (up to 20s).
    #[arg(long, value_parser = seconds)]
    receive_wait: Option<u64>,
    /// Move a message to this queue (it must exist) once it has been received
    /// `--max-receive-count` times without being deleted.
    #[arg(long)]
    dead_letter: Option<String>,
    #[arg(long, requires = "dead_letter", default_value_t = 5)]
    max_receive_count: u32,
}

#[derive(clap::Args)]
struct SendArgs {
    name: String,
    /// The message body; `-` reads it from standard input.
    body: String,
    /// Hide the message for this long first (up to 15m).
    #[arg(long, value_parser = seconds)]
    delay: Option<u64>,
    /// A String message attribute, as KEY=VALUE; repeat for more.
    #[arg(long = "attribute", value_name = "KEY=VALUE", value_parser = attribute)]
    attributes: Vec<(String, String)>,
}

#[derive(clap::Args)]
struct ReceiveArgs {
    name: String,
    /// At most this many messages (1 to 10).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i64).range(1..=10))]
    max: i64,
    /// Wait this long for a first message (up to 20s).
    #[arg(long, default_value = "20s", value_parser = seconds)]
    wait: u64,
    /// Hide what is received for this long (default: the queue's visibility timeout).
    #[arg(long, value_parser = seconds)]
    visibility_timeout: Option<u64>,
    /// Delete the messages once printed.
    #[arg(long)]
    delete: bool,
}

/// A duration as the manifest writes them (`30s`, `5m`, `4d`), in whole seconds: SQS
/// counts its settings in seconds.
fn seconds(text: &str) -> Result<u64, String> {
    let ms = shoal_manifest::parse_duration_ms(text)
        .ok_or_else(|| format!("{text:?} is not a duration (like 30s, 5m, 1h or 4d)"))?;
    if ms % 1000 != 0 {
        return Err(format!("{text:?}: queues count whole seconds"));
    }
    Ok(ms / 1000)
}

fn attribute(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

/// One SQS action: its JSON request in, its JSON answer out (or the daemon's error).
async fn call<T: DeserializeOwned>(
    client: &Client,
    action: &str,
    request: &impl Serialize,
) -> anyhow::Result<T> {
    let target = format!("{}{action}", sqs::TARGET_PREFIX);
    client
        .request(
            Method::POST,
            "/",
            &[
                ("x-amz-target", &target),
                ("content-type", sqs::CONTENT_TYPE),
            ],
            Bytes::from(serde_json::to_vec(request)?),
        )
        .await?
        .parse()
}

async fn queue_url(client: &Client, name: &str) -> anyhow::Result<String> {
    let request = GetQueueUrl {
        queue_name: Some(name.to_owned()),
        ..Default::default()
    };
    let found: QueueUrlResult = call(client, "GetQueueUrl", &request).await?;
    Ok(found.queue_url)
}

pub async fn run(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Create(args) => create(client, args).await?,
        Command::Send(args) => send(client, args).await?,
        Command::Receive(args) => receive(client, args).await?,
        Command::Purge { name } => {
            let queue_url = Some(queue_url(client, &name).await?);
            let _: serde_json::Value =
                call(client, "PurgeQueue", &QueueRequest { queue_url }).await?;
            println!("purged {name}");
        }
        Command::Rm { name } => {
            let queue_url = Some(queue_url(client, &name).await?);
            let _: serde_json::Value =
                call(client, "DeleteQueue", &QueueRequest { queue_url }).await?;
            println!("deleted {name}");
        }
        Command::Ls => ls(client).await?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn create(client: &Client, args: CreateArgs) -> anyhow::Result<()> {
    let mut attributes = BTreeMap::new();
    let mut set = |name: &str, value: Option<u64>| {
        if let Some(value) = value {
            attributes.insert(name.to_owned(), value.to_string());
        }
    };
    set("VisibilityTimeout", args.visibility_timeout);
    set("MessageRetentionPeriod", args.retention);
    set("DelaySeconds", args.delay);
    set("ReceiveMessageWaitTimeSeconds", args.receive_wait);
    if let Some(dead_letter) = &args.dead_letter {
        let request = GetQueueAttributes {
            queue_url: Some(queue_url(client, dead_letter).await?),
            attribute_names: Some(vec!["QueueArn".to_owned()]),
        };
        let found: GetQueueAttributesResult = call(client, "GetQueueAttributes", &request).await?;
        let arn = found
            .attributes
            .get("QueueArn")
            .cloned()
            .unwrap_or_default();
        attributes.insert(
            "RedrivePolicy".to_owned(),
            serde_json::json!({
                "deadLetterTargetArn": arn,
                "maxReceiveCount": args.max_receive_count,
            })
            .to_string(),
        );
    }
    let request = CreateQueue {
        queue_name: Some(args.name),
        attributes: Some(attributes),
        tags: None,
    };
    let created: QueueUrlResult = call(client, "CreateQueue", &request).await?;
    println!("{}", created.queue_url);
    Ok(())
}

async fn send(client: &Client, args: SendArgs) -> anyhow::Result<()> {
    let body = if args.body == "-" {
        let mut body = String::new();
        std::io::stdin().read_to_string(&mut body)?;
        body
    } else {
        args.body
    };
    let attributes = args
        .attributes
        .into_iter()
        .map(|(name, value)| {
            let value = MessageAttributeValue {
                data_type: Some("String".to_owned()),
                string_value: Some(value),
                ..Default::default()
            };
            (name, value)
        })
        .collect::<BTreeMap<_, _>>();
    let request = SendMessage {
        queue_url: Some(queue_url(client, &args.name).await?),
        message: OutgoingMessage {
            message_body: Some(body),
            delay_seconds: args.delay.map(|d| d as i64),
            message_attributes: (!attributes.is_empty()).then_some(attributes),
            ..Default::default()
        },
    };
    let sent: SendMessageResult = call(client, "SendMessage", &request).await?;
    println!("{}", sent.message_id);
    Ok(())
}

/// What `receive` prints for one message, one JSON object per line.
#[derive(Serialize)]
struct Printed {
    id: String,
    body: String,
    receive_count: u32,
    sent_at_ms: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    attributes: BTreeMap<String, serde_json::Value>,
    receipt_handle: String,
}

async fn receive(client: &Client, args: ReceiveArgs) -> anyhow::Result<()> {
    let queue_url = queue_url(client, &args.name).await?;
    let request = ReceiveMessage {
        queue_url: Some(queue_url.clone()),
        message_system_attribute_names: Some(vec!["All".to_owned()]),
        message_attribute_names: Some(vec!["All".to_owned()]),
        max_number_of_messages: Some(args.max),
        visibility_timeout: args.visibility_timeout.map(|v| v as i64),
        wait_time_seconds: Some(args.wait as i64),
        ..Default::default()
    };
    let received: ReceiveMessageResult = call(client, "ReceiveMessage", &request).await?;
    if received.messages.is_empty() {
        eprintln!("no message in {} after {}s", args.name, args.wait);
        return Ok(());
    }
    let mut receipts = Vec::new();
    for (i, message) in received.messages.into_iter().enumerate() {
        let number = |name: &str| message.attributes.get(name).and_then(|v| v.parse().ok());
        let printed = Printed {
            receive_count: number("ApproximateReceiveCount").unwrap_or(0) as u32,
            sent_at_ms: number("SentTimestamp").unwrap_or(0),
            attributes: message
                .message_attributes
                .iter()
                .map(|(name, value)| {
                    let value = value.string_value.clone().map_or_else(
                        || serde_json::json!({ "binary": value.binary_value }),
                        serde_json::Value::String,
                    );
                    (name.clone(), value)
                })
                .collect(),
            id: message.message_id,
            body: message.body,
            receipt_handle: message.receipt_handle.clone(),
        };
        println!("{}", serde_json::to_string(&printed)?);
        receipts.push(MessageBatchEntry {
            id: Some(format!("m{i}")),
            receipt_handle: Some(message.receipt_handle),
            visibility_timeout: None,
        });
    }
    if args.delete {
        let request = MessageBatch {
            queue_url: Some(queue_url),
            entries: Some(receipts),
        };
        let deleted: BatchResult<BatchResultEntry> =
            call(client, "DeleteMessageBatch", &request).await?;
        if let Some(failure) = deleted.failed.first() {
            anyhow::bail!(
                "{} of the messages could not be deleted: {} ({})",
                deleted.failed.len(),
                failure.message,
                failure.code
            );
        }
    }
    Ok(())
}

async fn ls(client: &Client) -> anyhow::Result<()> {
    let status: StatusReport = client.get("/admin/status").await?;
    println!(
        "{:<24} {:>9} {:>9} {:>9} {:>9}  DEAD-LETTER",
        "NAME", "VISIBLE", "IN FLIGHT", "DELAYED", "OLDEST"
    );
    for q in status.queues {
        let dead_letter = match (&q.dead_letter, q.max_receive_count) {
            (Some(queue), Some(count)) => format!("{queue} after {count} receives"),
            _ => "-".to_owned(),
        };
        println!(
            "{:<24} {:>9} {:>9} {:>9} {:>9}  {dead_letter}",
            q.name,
            q.visible,
            q.in_flight,
            q.delayed,
            q.oldest_age_ms.map_or_else(|| "-".to_owned(), age),
        );
    }
    Ok(())
}

/// An age to the precision a person reads in a listing: `42s`, `3m05s`, `2h10m`, `4d03h`.
fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}
