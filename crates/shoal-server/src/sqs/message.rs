//! Messages as SQS checks, stores and returns them: the body's allowed characters, message
//! attributes (names, types, values, SQS's size rule), their MD5 digest computed exactly as
//! SQS computes it (the SDKs verify it), the attributes a receive asks for, and the system
//! attributes (`ApproximateReceiveCount`, `SentTimestamp`, ...).
//!
//! Attributes are stored in the message as the wire's JSON map (binary values in base64),
//! checked before they are stored, so what comes back is what was sent.

use std::collections::BTreeMap;

use base64::Engine;
use md5::{Digest, Md5};
use shoal_api::sqs::{MessageAttributeValue, OutgoingMessage};
use shoal_queue::{NewMessage, Received};

use super::{Error, MAX_DELAY_SECS, MAX_MESSAGE_ATTRIBUTES, MAX_PAYLOAD_BYTES};

/// Message attributes by name, as on the wire.
pub(crate) type Attributes = BTreeMap<String, MessageAttributeValue>;

/// A message to send, checked.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub message: NewMessage,
    /// SQS's measure: the body's bytes plus each attribute's name, type and value.
    pub size: usize,
    pub md5_of_attributes: Option<String>,
}

impl Outgoing {
    /// Whether the message fits a queue's `MaximumMessageSize` by SQS's measure and by
    /// the store's (the body plus the attributes' JSON, a few bytes per attribute more),
    /// so that one entry of a batch too large for the store fails alone.
    pub(crate) fn fits(&self, max: usize) -> bool {
        let stored =
            self.message.body.len() + self.message.attributes.as_ref().map_or(0, String::len);
        self.size <= max && stored <= max
    }
}

/// Check one message of `SendMessage` or a `SendMessageBatch` entry.
pub(crate) fn outgoing(message: OutgoingMessage) -> Result<Outgoing, Error> {
    let body = message
        .message_body
        .filter(|b| !b.is_empty())
        .ok_or(Error::MissingParameter("MessageBody"))?;
    check_text(&body, "the message body")?;
    let delay_ms = match message.delay_seconds {
        None => None,
        Some(s) if (0..=MAX_DELAY_SECS as i64).contains(&s) => Some(s as u64 * 1000),
        Some(s) => {
            return Err(Error::InvalidParameterValue(format!(
                "Value {s} for parameter DelaySeconds is invalid. Reason: must be between 0 and {MAX_DELAY_SECS}."
            )))
        }
    };
    if message.message_deduplication_id.is_some() {
        return Err(Error::InvalidParameterValue(
            "The request includes MessageDeduplicationId, which is valid only for FIFO queues; Shoal's queues are standard queues.".into(),
        ));
    }
    let attributes = canonical(message.message_attributes.unwrap_or_default())?;
    let size = body.len() + attributes_size(&attributes);
    if size > MAX_PAYLOAD_BYTES {
        return Err(too_long(MAX_PAYLOAD_BYTES));
    }
    let md5_of_attributes = md5_of_attributes(&attributes);
    let attributes = (!attributes.is_empty())
        .then(|| serde_json::to_string(&attributes).expect("attributes encode as JSON"));
    Ok(Outgoing {
        message: NewMessage {
            body,
            attributes,
            delay_ms,
        },
        size,
        md5_of_attributes,
    })
}

/// SQS's refusal of a message over a queue's `MaximumMessageSize`.
pub(crate) fn too_long(max: usize) -> Error {
    Error::InvalidParameterValue(format!(
        "One or more parameters are invalid. Reason: Message must be shorter than {max} bytes."
    ))
}

/// SQS accepts only these characters (XML's): tab, newline, carriage return, and
/// U+0020 to U+10FFFF except the surrogates (which a Rust string cannot hold) and
/// U+FFFE, U+FFFF.
fn check_text(text: &str, what: &str) -> Result<(), Error> {
    let bad = text.chars().find(|&c| {
        !matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
    });
    match bad {
        None => Ok(()),
        Some(c) => Err(Error::InvalidMessageContents(format!(
            "Invalid characters found in {what}: U+{:04X} is outside the allowed set (#x9, #xA, #xD, #x20 to #xD7FF, #xE000 to #xFFFD, #x10000 to #x10FFFF).",
            c as u32
        ))),
    }
}

/// Check every attribute and keep only what defines it (type and value).
fn canonical(attributes: Attributes) -> Result<Attributes, Error> {
    if attributes.len() > MAX_MESSAGE_ATTRIBUTES {
        return Err(Error::InvalidParameterValue(format!(
            "Number of message attributes [{}] exceeds the allowed maximum [{MAX_MESSAGE_ATTRIBUTES}].",
            attributes.len()
        )));
    }
    attributes
        .into_iter()
        .map(|(name, value)| {
            check_attribute_name(&name)?;
            Ok((name.clone(), check_attribute_value(&name, value)?))
        })
        .collect()
}

fn check_attribute_name(name: &str) -> Result<(), Error> {
    let invalid = |why: &str| {
        Err(Error::InvalidParameterValue(format!(
            "Message attribute name {name:?} is invalid: {why}."
        )))
    };
    let lower = name.to_ascii_lowercase();
    if name.is_empty() || name.len() > 256 {
        return invalid("it must be 1 to 256 characters long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return invalid("it can only contain A-Z, a-z, 0-9, underscore, hyphen and period");
    }
    if lower.starts_with("aws.") || lower.starts_with("amazon.") {
        return invalid("names starting with AWS. or Amazon. are reserved");
    }
    if name.starts_with('.') || name.ends_with('.') || name.contains("..") {
        return invalid("it cannot start or end with a period, or hold two in a row");
    }
    Ok(())
}

/// The base type of a data type (`Number.float` is a `Number`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BaseType {
    String,
    Number,
    Binary,
}

fn base_type(data_type: &str) -> Option<BaseType> {
    let (base, label) = data_type
        .split_once('.')
        .map_or((data_type, None), |(b, l)| (b, Some(l)));
    if label.is_some_and(str::is_empty) {
        return None;
    }
    match base {
        "String" => Some(BaseType::String),
        "Number" => Some(BaseType::Number),
        "Binary" => Some(BaseType::Binary),
        _ => None,
    }
}

fn check_attribute_value(
    name: &str,
    value: MessageAttributeValue,
) -> Result<MessageAttributeValue, Error> {
    let invalid = |why: String| {
        Err(Error::InvalidParameterValue(format!(
            "Message attribute {name:?} is invalid: {why}"
        )))
    };
    if value
        .string_list_values
        .as_ref()
        .is_some_and(|l| !l.is_empty())
        || value
            .binary_list_values
            .as_ref()
            .is_some_and(|l| !l.is_empty())
    {
        return invalid(
            "StringListValues and BinaryListValues are reserved by SQS and not supported.".into(),
        );
    }
    let Some(data_type) = value.data_type.filter(|t| !t.is_empty()) else {
        return invalid("it has no DataType.".into());
    };
    if data_type.len() > 256 {
        return invalid("its DataType is longer than 256 characters.".into());
    }
    let Some(base) = base_type(&data_type) else {
        return invalid(format!(
            "its DataType {data_type:?} is not String, Number or Binary (optionally followed by a period and a custom label)."
        ));
    };
    check_text(&data_type, "a message attribute's data type")?;
    match base {
        BaseType::String | BaseType::Number => {
            let Some(text) = value.string_value.filter(|s| !s.is_empty()) else {
                return invalid(format!(
                    "a {data_type} attribute needs a non-empty StringValue."
                ));
            };
            if value.binary_value.is_some() {
                return invalid(format!(
                    "a {data_type} attribute cannot have a BinaryValue."
                ));
            }
            check_text(&text, "a message attribute's value")?;
            if base == BaseType::Number && !is_number(&text) {
                return invalid(format!("{text:?} is not a number."));
            }
            Ok(MessageAttributeValue {
                data_type: Some(data_type),
                string_value: Some(text),
                ..Default::default()
            })
        }
        BaseType::Binary => {
            let Some(encoded) = value.binary_value.filter(|s| !s.is_empty()) else {
                return invalid(format!(
                    "a {data_type} attribute needs a non-empty BinaryValue."
                ));
            };
            if value.string_value.is_some() {
                return invalid(format!(
                    "a {data_type} attribute cannot have a StringValue."
                ));
            }
            match decode(&encoded) {
                Some(bytes) if !bytes.is_empty() => Ok(MessageAttributeValue {
                    data_type: Some(data_type),
                    binary_value: Some(encoded),
                    ..Default::default()
                }),
                _ => invalid("its BinaryValue is not base64 of at least one byte.".into()),
            }
        }
    }
}

fn decode(base64: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(base64)
        .ok()
}

/// A decimal number as SQS takes it: sign, digits, an optional fraction and exponent.
fn is_number(text: &str) -> bool {
    let rest = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (mantissa, exponent) = match rest.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (rest, None),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    !(whole.is_empty() && fraction.is_empty()) && digits(whole) && digits(fraction) && exponent_ok
}

/// The value's bytes: the text's UTF-8, or the decoded binary.
fn value_bytes(value: &MessageAttributeValue) -> Vec<u8> {
    match (&value.string_value, &value.binary_value) {
        (Some(text), _) => text.as_bytes().to_vec(),
        (None, Some(encoded)) => decode(encoded).unwrap_or_default(),
        (None, None) => Vec::new(),
    }
}

/// SQS's size of attributes: each name, data type and value, in bytes.
fn attributes_size(attributes: &Attributes) -> usize {
    attributes
        .iter()
        .map(|(name, value)| {
            name.len() + value.data_type.as_deref().map_or(0, str::len) + value_bytes(value).len()
        })
        .sum()
}

/// Lowercase hex MD5 (the backend computes the body's; tests check against it).
#[cfg(test)]
pub(crate) fn md5_hex(bytes: &[u8]) -> String {
    hex(&Md5::digest(bytes))
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// `MD5OfMessageAttributes` as SQS computes it: for each attribute in name order, its
/// name, its data type, a transport byte (1 for a string value, 2 for a binary one) and
/// its value, each part but the transport byte preceded by its length as 4 big-endian
/// bytes. `None` without attributes (SQS leaves the field out).
pub(crate) fn md5_of_attributes(attributes: &Attributes) -> Option<String> {
    fn put(hasher: &mut Md5, bytes: &[u8]) {
        hasher.update((bytes.len() as u32).to_be_bytes());
        hasher.update(bytes);
    }
    if attributes.is_empty() {
        return None;
    }
    let mut hasher = Md5::new();
    for (name, value) in attributes {
        put(&mut hasher, name.as_bytes());
        put(
            &mut hasher,
            value.data_type.as_deref().unwrap_or_default().as_bytes(),
        );
        hasher.update([if value.string_value.is_some() { 1 } else { 2 }]);
        put(&mut hasher, &value_bytes(value));
    }
    Some(hex(&hasher.finalize()))
}

/// Which message attributes a receive asks for (`MessageAttributeNames`).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct AttributeFilter {
    all: bool,
    names: Vec<String>,
    /// From `name.*`: every attribute whose name starts with `name.`.
    prefixes: Vec<String>,
}

impl AttributeFilter {
    pub(crate) fn new(names: &[String]) -> AttributeFilter {
        let mut filter = AttributeFilter::default();
        for name in names {
            if name == "All" || name == ".*" {
                filter.all = true;
            } else if let Some(prefix) = name.strip_suffix(".*") {
                filter.prefixes.push(format!("{prefix}."));
            } else {
                filter.names.push(name.clone());
            }
        }
        filter
    }

    fn wants(&self, name: &str) -> bool {
        self.all
            || self.names.iter().any(|n| n == name)
            || self.prefixes.iter().any(|p| name.starts_with(p.as_str()))
    }
}

/// The system attributes a receive asks for (`MessageSystemAttributeNames`, or the older
/// `AttributeNames`).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct SystemAttributes {
    receive_count: bool,
    first_receive: bool,
    sent: bool,
    sender: bool,
}

/// Every name SQS accepts there; those only FIFO queues or other services fill
/// (`SequenceNumber`, `AWSTraceHeader`, ...) are accepted and never present.
const SYSTEM_ATTRIBUTE_NAMES: &[&str] = &[
    "All",
    "ApproximateReceiveCount",
    "ApproximateFirstReceiveTimestamp",
    "SentTimestamp",
    "SenderId",
    "SequenceNumber",
    "MessageDeduplicationId",
    "MessageGroupId",
    "AWSTraceHeader",
    "DeadLetterQueueSourceArn",
];

impl SystemAttributes {
    pub(crate) fn new(names: &[String]) -> Result<SystemAttributes, Error> {
        let mut wanted = SystemAttributes::default();
        for name in names {
            if !SYSTEM_ATTRIBUTE_NAMES.contains(&name.as_str()) {
                return Err(Error::InvalidAttributeName(format!(
                    "Unknown Attribute {name}."
                )));
            }
            let all = name == "All";
            wanted.receive_count |= all || name == "ApproximateReceiveCount";
            wanted.first_receive |= all || name == "ApproximateFirstReceiveTimestamp";
            wanted.sent |= all || name == "SentTimestamp";
            wanted.sender |= all || name == "SenderId";
        }
        Ok(wanted)
    }
}

/// A received message as `ReceiveMessage` returns it.
pub(crate) fn received(
    message: Received,
    system: &SystemAttributes,
    filter: &AttributeFilter,
) -> shoal_api::sqs::Message {
    let stored: Attributes = match message.attributes.as_deref() {
        None => Attributes::new(),
        Some(json) => serde_json::from_str(json).unwrap_or_else(|e| {
            // Only this module writes them, checked; a message that still cannot be read
            // is delivered without them rather than not at all.
            tracing::warn!(message = %message.id, error = %e, "unreadable message attributes");
            Attributes::new()
        }),
    };
    let message_attributes: Attributes = stored
        .into_iter()
        .filter(|(name, _)| filter.wants(name))
        .collect();
    let mut attributes = BTreeMap::new();
    if system.receive_count {
        attributes.insert(
            "ApproximateReceiveCount".to_owned(),
            message.receive_count.to_string(),
        );
    }
    if system.first_receive {
        attributes.insert(
            "ApproximateFirstReceiveTimestamp".to_owned(),
            message.first_received_at_ms.to_string(),
        );
    }
    if system.sent {
        attributes.insert("SentTimestamp".to_owned(), message.sent_at_ms.to_string());
    }
    if system.sender {
        // Every caller holds the one admin token: the account is the only identity.
        attributes.insert("SenderId".to_owned(), super::ACCOUNT.to_owned());
    }
    shoal_api::sqs::Message {
        md5_of_message_attributes: md5_of_attributes(&message_attributes),
        message_id: message.id,
        receipt_handle: message.receipt,
        md5_of_body: message.md5_of_body,
        body: message.body,
        attributes,
        message_attributes,
    }
}
