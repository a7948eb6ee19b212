//! Unit tests of the SQS layer's pure parts: parsing and checks, message attributes and
//! their MD5 (SQS's published examples), queue attributes.

use std::collections::BTreeMap;

use shoal_api::sqs::MessageAttributeValue;
use shoal_queue::{QueueConfig, QueueInfo, QueueStats, Redrive};

use super::message::{md5_hex, md5_of_attributes, Attributes};
use super::queue_attributes::{self, Selection, Setting};
use super::{parse, Action, Error};

fn string(data_type: &str, value: &str) -> MessageAttributeValue {
    MessageAttributeValue {
        data_type: Some(data_type.into()),
        string_value: Some(value.into()),
        ..Default::default()
    }
}

fn binary(value: &[u8]) -> MessageAttributeValue {
    use base64::Engine;
    MessageAttributeValue {
        data_type: Some("Binary".into()),
        binary_value: Some(base64::engine::general_purpose::STANDARD.encode(value)),
        ..Default::default()
    }
}

#[test]
fn attribute_digests_match_sqs() {
    // The digests SQS itself returns for these attributes (published alongside the
    // algorithm; the AWS SDKs refuse an answer whose digest differs).
    let one = |name: &str, value| Attributes::from([(name.to_owned(), value)]);
    let cases = [
        (
            one("attribName1", string("String", "attribValue 1")),
            "19e27d4e946b072f3f58da80d94fd778",
        ),
        (
            one(
                "customNumberTypeAttrib",
                string("Number.float", "4563442423554324324264524243.32543234"),
            ),
            "9fe1b90bbd9965bdf77bac517c7d2495",
        ),
        (
            one("binaryAttribute", binary(b"Hello binary world!")),
            "31a92b15d92f8db860eda32aceb656c3",
        ),
    ];
    let mut all = Attributes::new();
    for (attributes, digest) in &cases {
        assert_eq!(md5_of_attributes(attributes).as_deref(), Some(*digest));
        all.extend(attributes.clone());
    }
    assert_eq!(
        md5_of_attributes(&all).as_deref(),
        Some("c932db14a896c663f83c260297d594ff")
    );
    assert_eq!(md5_of_attributes(&Attributes::new()), None);
    assert_eq!(md5_hex(b"hello"), "5d41402abc4b2a76b9719d911017c592");
}

fn send(body: serde_json::Value) -> Result<Action, Error> {
    parse("SendMessage", body.to_string().as_bytes())
}

#[test]
fn a_message_is_checked_as_sqs_checks_it() {
    let url = "http://127.0.0.1:9/000000000000/jobs";
    let ok = send(serde_json::json!({
        "QueueUrl": url,
        "MessageBody": "hi",
        "DelaySeconds": 5,
        "MessageAttributes": {"n": {"DataType": "Number", "StringValue": "-1.5e3"}},
    }))
    .unwrap();
    let Action::SendMessage { queue, message } = ok else {
        panic!("{ok:?}")
    };
    assert_eq!(queue, "jobs");
    assert_eq!(message.message.delay_ms, Some(5000));
    assert_eq!(
        message.size,
        2 + 1 + 6 + 6,
        "body, then name + type + value"
    );
    assert!(message.md5_of_attributes.is_some());

    let refused = |body: serde_json::Value| send(body).unwrap_err();
    assert!(matches!(
        refused(serde_json::json!({"MessageBody": "x"})),
        Error::MissingParameter("QueueUrl")
    ));
    assert!(matches!(
        refused(serde_json::json!({"QueueUrl": url})),
        Error::MissingParameter("MessageBody")
    ));
    assert!(matches!(
        refused(serde_json::json!({"QueueUrl": url, "MessageBody": "a\u{0}b"})),
        Error::InvalidMessageContents(_)
    ));
    assert!(matches!(
        refused(serde_json::json!({"QueueUrl": url, "MessageBody": "x", "DelaySeconds": 901})),
        Error::InvalidParameterValue(_)
    ));
    assert!(matches!(
        refused(serde_json::json!({"QueueUrl": url, "MessageBody": "x".repeat(262_145)})),
        Error::InvalidParameterValue(_)
    ));
    for bad in [
        serde_json::json!({"AWS.x": {"DataType": "String", "StringValue": "v"}}),
        serde_json::json!({"a..b": {"DataType": "String", "StringValue": "v"}}),
        serde_json::json!({"a": {"DataType": "Text", "StringValue": "v"}}),
        serde_json::json!({"a": {"DataType": "String."}}),
        serde_json::json!({"a": {"DataType": "Number", "StringValue": "1x"}}),
        serde_json::json!({"a": {"DataType": "Binary", "BinaryValue": "not base64!"}}),
        serde_json::json!({"a": {"DataType": "String", "StringValue": ""}}),
        serde_json::json!({"a": {"StringValue": "v"}}),
        serde_json::json!({"a": {"DataType": "String", "StringListValues": ["v"]}}),
    ] {
        let error = refused(
            serde_json::json!({"QueueUrl": url, "MessageBody": "x", "MessageAttributes": bad}),
        );
        assert!(
            matches!(error, Error::InvalidParameterValue(_)),
            "{bad}: {error:?}"
        );
    }
    let eleven: serde_json::Map<String, serde_json::Value> = (0..11)
        .map(|i| {
            (
                format!("a{i}"),
                serde_json::json!({"DataType": "String", "StringValue": "v"}),
            )
        })
        .collect();
    assert!(matches!(
        refused(
            serde_json::json!({"QueueUrl": url, "MessageBody": "x", "MessageAttributes": eleven})
        ),
        Error::InvalidParameterValue(_)
    ));
}

#[test]
fn a_queue_url_names_its_queue_by_its_last_segment_and_never_an_internal_one() {
    let name = |url: &str| match parse(
        "PurgeQueue",
        serde_json::json!({ "QueueUrl": url })
            .to_string()
            .as_bytes(),
    ) {
        Ok(Action::PurgeQueue { queue }) => Ok(queue),
        Ok(other) => panic!("{other:?}"),
        Err(e) => Err(e),
    };
    assert_eq!(name("http://h:1/000000000000/jobs").unwrap(), "jobs");
    assert_eq!(name("http://h:1/000000000000/jobs/").unwrap(), "jobs");
    assert_eq!(name("jobs").unwrap(), "jobs");
    for bad in [
        "http://h:1/000000000000/async:hello",
        "http://h:1/000000000000/q.fifo",
        "http://h:1/",
    ] {
        assert!(
            matches!(name(bad), Err(Error::QueueDoesNotExist(_))),
            "{bad}"
        );
    }
    assert!(matches!(name(""), Err(Error::MissingParameter("QueueUrl"))));
}

#[test]
fn batches_are_checked_whole_and_their_entries_one_by_one() {
    let url = "http://h:1/000000000000/q";
    let batch = |entries: serde_json::Value| {
        parse(
            "SendMessageBatch",
            serde_json::json!({"QueueUrl": url, "Entries": entries})
                .to_string()
                .as_bytes(),
        )
    };
    let entry = |id: &str| serde_json::json!({"Id": id, "MessageBody": "b"});
    assert!(matches!(
        batch(serde_json::json!([])),
        Err(Error::EmptyBatchRequest)
    ));
    let eleven: Vec<_> = (0..11).map(|i| entry(&format!("e{i}"))).collect();
    assert!(matches!(
        batch(serde_json::json!(eleven)),
        Err(Error::TooManyEntriesInBatchRequest(11))
    ));
    assert!(matches!(
        batch(serde_json::json!([entry("a"), entry("a")])),
        Err(Error::BatchEntryIdsNotDistinct(_))
    ));
    assert!(matches!(
        batch(serde_json::json!([entry("a b")])),
        Err(Error::InvalidBatchEntryId(_))
    ));
    let big = |id: &str| serde_json::json!({"Id": id, "MessageBody": "x".repeat(200_000)});
    assert!(matches!(
        batch(serde_json::json!([big("a"), big("b")])),
        Err(Error::BatchRequestTooLong(_))
    ));
    let Ok(Action::SendMessageBatch { entries, .. }) =
        batch(serde_json::json!([entry("ok"), {"Id": "bad"}]))
    else {
        panic!()
    };
    assert!(entries[0].1.is_ok());
    assert!(matches!(
        entries[1].1,
        Err(Error::MissingParameter("MessageBody"))
    ));
}

#[test]
fn receive_parameters_have_sqs_ranges() {
    let receive = |extra: serde_json::Value| {
        let mut body = serde_json::json!({"QueueUrl": "http://h:1/000000000000/q"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        parse("ReceiveMessage", body.to_string().as_bytes())
    };
    assert!(receive(serde_json::json!({})).is_ok());
    for bad in [
        serde_json::json!({"MaxNumberOfMessages": 0}),
        serde_json::json!({"MaxNumberOfMessages": 11}),
        serde_json::json!({"WaitTimeSeconds": 21}),
        serde_json::json!({"VisibilityTimeout": -1}),
        serde_json::json!({"VisibilityTimeout": 43_201}),
    ] {
        assert!(
            matches!(receive(bad.clone()), Err(Error::InvalidParameterValue(_))),
            "{bad}"
        );
    }
    assert!(matches!(
        receive(serde_json::json!({"MessageSystemAttributeNames": ["Bogus"]})),
        Err(Error::InvalidAttributeName(_))
    ));
    assert!(matches!(
        parse("ReceiveMessage", b"{not json"),
        Err(Error::InvalidParameterValue(_))
    ));
}

#[test]
fn unknown_and_unimplemented_actions_are_told_apart() {
    assert!(matches!(
        parse("Frobnicate", b"{}"),
        Err(Error::InvalidAction(_))
    ));
    assert!(matches!(
        parse("TagQueue", b"{}"),
        Err(Error::UnsupportedOperation(_))
    ));
}

fn attributes(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn queue_attributes_are_read_checked_and_written_as_sqs_writes_them() {
    let settings = queue_attributes::settings(attributes(&[
        ("VisibilityTimeout", "45"),
        ("MessageRetentionPeriod", "120"),
        (
            "RedrivePolicy",
            r#"{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:123456789012:dlq","maxReceiveCount":"3"}"#,
        ),
        ("FifoQueue", "false"),
    ]))
    .unwrap();
    let mut config = QueueConfig::default();
    queue_attributes::apply(&mut config, &settings);
    assert_eq!(config.visibility_timeout_ms, 45_000);
    assert_eq!(config.retention_ms, 120_000);
    assert_eq!(
        config.redrive,
        Some(Redrive {
            dead_letter: "dlq".into(),
            max_receive_count: 3
        })
    );
    assert!(queue_attributes::matches(&config, &settings));
    assert!(queue_attributes::matches(&config, &[]));
    assert!(!queue_attributes::matches(
        &config,
        &[Setting::VisibilityTimeoutMs(30_000)]
    ));

    let info = QueueInfo {
        name: "jobs".into(),
        config,
        created_at_ms: 1_700_000_000_123,
        stats: QueueStats {
            visible: 4,
            in_flight: 2,
            delayed: 1,
            ..Default::default()
        },
    };
    let all = queue_attributes::render(&info, &Selection::new(vec!["All".into()]).unwrap());
    assert_eq!(all["VisibilityTimeout"], "45");
    assert_eq!(all["QueueArn"], "arn:aws:sqs:local:000000000000:jobs");
    assert_eq!(all["ApproximateNumberOfMessages"], "4");
    assert_eq!(all["ApproximateNumberOfMessagesNotVisible"], "2");
    assert_eq!(all["ApproximateNumberOfMessagesDelayed"], "1");
    assert_eq!(all["CreatedTimestamp"], "1700000000");
    let policy: serde_json::Value = serde_json::from_str(&all["RedrivePolicy"]).unwrap();
    assert_eq!(
        policy,
        serde_json::json!({"deadLetterTargetArn": "arn:aws:sqs:local:000000000000:dlq", "maxReceiveCount": 3})
    );
    let some = queue_attributes::render(
        &info,
        &Selection::new(vec!["DelaySeconds".into(), "Policy".into()]).unwrap(),
    );
    assert_eq!(some, attributes(&[("DelaySeconds", "0")]));

    assert!(matches!(
        Selection::new(vec!["Bogus".into()]),
        Err(Error::InvalidAttributeName(_))
    ));
    for (name, value) in [
        ("VisibilityTimeout", "43201"),
        ("VisibilityTimeout", "ten"),
        ("MessageRetentionPeriod", "59"),
        ("MaximumMessageSize", "262145"),
        ("ReceiveMessageWaitTimeSeconds", "21"),
        ("DelaySeconds", "901"),
        (
            "RedrivePolicy",
            r#"{"deadLetterTargetArn":"dlq","maxReceiveCount":3}"#,
        ),
        (
            "RedrivePolicy",
            r#"{"deadLetterTargetArn":"arn:aws:sqs:r:a:dlq","maxReceiveCount":0}"#,
        ),
        ("FifoQueue", "true"),
        ("KmsMasterKeyId", "alias/aws/sqs"),
    ] {
        assert!(
            matches!(
                queue_attributes::settings(attributes(&[(name, value)])),
                Err(Error::InvalidAttributeValue(_))
            ),
            "{name}={value}"
        );
    }
    assert!(matches!(
        queue_attributes::settings(attributes(&[("QueueArn", "x")])),
        Err(Error::InvalidAttributeName(_))
    ));
    assert_eq!(
        queue_attributes::settings(attributes(&[("RedrivePolicy", "")])).unwrap(),
        vec![Setting::Redrive(None)]
    );
}
