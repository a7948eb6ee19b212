//! SigV4 vectors. The first is AWS's published `get-vanilla` case (AWS's example key and
//! secret, `service` in `us-east-1`); the others are requests this API serves, signed
//! with the same key by botocore (an independent implementation) at the same instant,
//! their signatures written here as literals. Each negative case changes one thing.

use hyper::http::request::Parts;
use hyper::Request;

use super::*;

const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
/// 2015-08-30T12:36:00Z, the instant every vector was signed.
const NOW: i64 = 1_440_938_160;
const INVOKE_BODY: &[u8] = br#"{"x":1}"#;
const SQS_BODY: &[u8] = br#"{"QueueName":"jobs"}"#;

fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
    let mut builder = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).unwrap().into_parts().0
}

fn lambda() -> Expect<'static> {
    Expect {
        region: "us-east-1",
        service: "lambda",
        now: NOW,
    }
}

fn check(parts: &Parts, body: &[u8], secret: &str, expect: Expect<'_>) -> Result<(), SigError> {
    let presented = parse(parts)?;
    assert_eq!(presented.access_key_id, "AKIDEXAMPLE");
    verify(parts, body, &presented, Some(secret), expect)
}

/// `POST .../functions/<ARN>/invocations?Qualifier=$LATEST`, body `{"x":1}`.
fn invoke_headers() -> Vec<(&'static str, &'static str)> {
    vec![
        ("host", "127.0.0.1:9001"),
        ("x-amz-invocation-type", "RequestResponse"),
        ("x-amz-date", "20150830T123600Z"),
        ("authorization", "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/lambda/aws4_request, SignedHeaders=host;x-amz-date;x-amz-invocation-type, Signature=4cf5ebf07f252bf8027838770db059476f6811e9244ac2eba5f57f3818af073e"),
    ]
}
const INVOKE_URI: &str = "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A000000000000%3Afunction%3Ahello/invocations?Qualifier=%24LATEST";

fn invoke(headers: &[(&str, &str)]) -> Parts {
    parts("POST", INVOKE_URI, headers)
}

fn without(
    headers: &[(&'static str, &'static str)],
    name: &str,
) -> Vec<(&'static str, &'static str)> {
    headers
        .iter()
        .filter(|(n, _)| *n != name)
        .copied()
        .collect()
}

fn replaced(
    headers: &[(&'static str, &'static str)],
    name: &str,
    value: &'static str,
) -> Vec<(&'static str, &'static str)> {
    headers
        .iter()
        .map(|&(n, v)| if n == name { (n, value) } else { (n, v) })
        .collect()
}

#[test]
fn aws_get_vanilla() {
    let parts = parts(
        "GET",
        "/",
        &[
            ("host", "example.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
            ("authorization", "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
        ],
    );
    let expect = Expect {
        service: "service",
        ..lambda()
    };
    assert_eq!(check(&parts, b"", SECRET, expect), Ok(()));
}

#[test]
fn an_invoke_by_arn_with_a_qualifier_verifies() {
    assert_eq!(
        check(&invoke(&invoke_headers()), INVOKE_BODY, SECRET, lambda()),
        Ok(())
    );
}

#[test]
fn a_wrong_secret_does_not_match() {
    let wrong = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEZ";
    assert_eq!(
        check(&invoke(&invoke_headers()), INVOKE_BODY, wrong, lambda()),
        Err(SigError::Mismatch)
    );
}

#[test]
fn an_unknown_key_or_a_session_token_is_unrecognised() {
    let parts = invoke(&invoke_headers());
    let presented = parse(&parts).unwrap();
    assert_eq!(
        verify(&parts, INVOKE_BODY, &presented, None, lambda()),
        Err(SigError::UnknownKey)
    );
    let mut headers = invoke_headers();
    headers.push(("x-amz-security-token", "session"));
    let parts = invoke(&headers);
    assert_eq!(
        check(&parts, INVOKE_BODY, SECRET, lambda()),
        Err(SigError::UnknownKey)
    );
}

#[test]
fn another_region_or_service_is_refused_before_the_signature() {
    let parts = invoke(&invoke_headers());
    let region = Expect {
        region: "eu-west-1",
        ..lambda()
    };
    assert!(matches!(
        check(&parts, INVOKE_BODY, SECRET, region),
        Err(SigError::WrongScope(m)) if m.contains("region")
    ));
    let service = Expect {
        service: "sqs",
        ..lambda()
    };
    assert!(matches!(
        check(&parts, INVOKE_BODY, SECRET, service),
        Err(SigError::WrongScope(m)) if m.contains("service")
    ));
}

/// A handler's SDK signs for `local`, the region instances see: accepted by a daemon
/// answering as us-east-1, as another region is not.
#[test]
fn the_region_functions_see_is_accepted_beside_the_daemons() {
    let parts = parts(
        "POST",
        "/2015-03-31/functions/hello/invocations",
        &[
            ("host", "127.0.0.1:9001"),
            ("x-amz-date", "20150830T123600Z"),
            ("authorization", "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/local/lambda/aws4_request, SignedHeaders=host;x-amz-date, Signature=aa441b5f0b563b10e32005d103fb2c5a68d287baed76b6e0d0fafcfc9038782d"),
        ],
    );
    assert_eq!(check(&parts, INVOKE_BODY, SECRET, lambda()), Ok(()));
    assert_eq!(
        check(&parts, br#"{"x":2}"#, SECRET, lambda()),
        Err(SigError::Mismatch)
    );
}

#[test]
fn a_request_older_or_newer_than_fifteen_minutes_has_expired() {
    let parts = invoke(&invoke_headers());
    let at = |now| Expect { now, ..lambda() };
    assert_eq!(
        check(&parts, INVOKE_BODY, SECRET, at(NOW + MAX_SKEW_SECS)),
        Ok(())
    );
    assert_eq!(
        check(&parts, INVOKE_BODY, SECRET, at(NOW - MAX_SKEW_SECS)),
        Ok(())
    );
    assert!(matches!(
        check(&parts, INVOKE_BODY, SECRET, at(NOW + MAX_SKEW_SECS + 1)),
        Err(SigError::Expired { earliest, .. }) if earliest == "20150830T123601Z"
    ));
    assert!(matches!(
        check(&parts, INVOKE_BODY, SECRET, at(NOW - MAX_SKEW_SECS - 1)),
        Err(SigError::NotYetCurrent { .. })
    ));
}

#[test]
fn a_tampered_body_does_not_match() {
    assert_eq!(
        check(&invoke(&invoke_headers()), br#"{"x":2}"#, SECRET, lambda()),
        Err(SigError::Mismatch)
    );
}

#[test]
fn a_tampered_or_missing_signed_header_does_not_match() {
    let tampered = replaced(&invoke_headers(), "x-amz-invocation-type", "Event");
    assert_eq!(
        check(&invoke(&tampered), INVOKE_BODY, SECRET, lambda()),
        Err(SigError::Mismatch)
    );
    let missing = without(&invoke_headers(), "x-amz-invocation-type");
    assert_eq!(
        check(&invoke(&missing), INVOKE_BODY, SECRET, lambda()),
        Err(SigError::Mismatch)
    );
    // The path and the query are signed too.
    let other_function = parts(
        "POST",
        "/2015-03-31/functions/other/invocations?Qualifier=%24LATEST",
        &invoke_headers(),
    );
    assert_eq!(
        check(&other_function, INVOKE_BODY, SECRET, lambda()),
        Err(SigError::Mismatch)
    );
    let other_qualifier = parts(
        "POST",
        "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A000000000000%3Afunction%3Ahello/invocations?Qualifier=1",
        &invoke_headers(),
    );
    assert_eq!(
        check(&other_qualifier, INVOKE_BODY, SECRET, lambda()),
        Err(SigError::Mismatch)
    );
}

#[test]
fn missing_parts_are_an_incomplete_signature() {
    let no_date = invoke(&without(&invoke_headers(), "x-amz-date"));
    assert!(matches!(parse(&no_date), Err(SigError::Incomplete(_))));
    for authorization in [
        "AWS4-HMAC-SHA256 SignedHeaders=host;x-amz-date, Signature=4cf5ebf07f252bf8027838770db059476f6811e9244ac2eba5f57f3818af073e",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/lambda/aws4_request, Signature=4cf5ebf07f252bf8027838770db059476f6811e9244ac2eba5f57f3818af073e",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/lambda/aws4_request, SignedHeaders=host;x-amz-date",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/aws4_request, SignedHeaders=host;x-amz-date, Signature=4cf5ebf07f252bf8027838770db059476f6811e9244ac2eba5f57f3818af073e",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/lambda/aws4_request, SignedHeaders=x-amz-date, Signature=4cf5ebf07f252bf8027838770db059476f6811e9244ac2eba5f57f3818af073e",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/lambda/aws4_request, SignedHeaders=host;x-amz-date, Signature=zz",
    ] {
        let headers = replaced(&invoke_headers(), "authorization", authorization);
        assert!(
            matches!(parse(&invoke(&headers)), Err(SigError::Incomplete(_))),
            "{authorization}"
        );
    }
}

#[test]
fn a_scope_dated_another_day_is_refused() {
    let headers = replaced(&invoke_headers(), "authorization", "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150829/us-east-1/lambda/aws4_request, SignedHeaders=host;x-amz-date;x-amz-invocation-type, Signature=4cf5ebf07f252bf8027838770db059476f6811e9244ac2eba5f57f3818af073e");
    assert!(matches!(
        check(&invoke(&headers), INVOKE_BODY, SECRET, lambda()),
        Err(SigError::WrongScope(_))
    ));
}

/// `x-amz-content-sha256: UNSIGNED-PAYLOAD`: any body passes.
#[test]
fn an_unsigned_payload_leaves_the_body_out() {
    let parts = parts(
        "POST",
        "/2015-03-31/functions/hello/invocations",
        &[
            ("host", "127.0.0.1:9001"),
            ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
            ("x-amz-date", "20150830T123600Z"),
            ("authorization", "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/lambda/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=da8355fb54284279cb449682a43043ecfefb4f3e2408b6ea8be0edbe6a33a969"),
        ],
    );
    assert_eq!(check(&parts, INVOKE_BODY, SECRET, lambda()), Ok(()));
    assert_eq!(check(&parts, b"anything", SECRET, lambda()), Ok(()));
}

fn sqs_headers() -> Vec<(&'static str, &'static str)> {
    vec![
        ("host", "127.0.0.1:9001"),
        ("x-amz-target", "AmazonSQS.CreateQueue"),
        ("content-type", "application/x-amz-json-1.0"),
        ("x-amz-content-sha256", "83c00f81b88d530a45ad9f9c50dfad0add2c06c9b43b3b644a173789aae54633"),
        ("x-amz-date", "20150830T123600Z"),
        ("authorization", "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/sqs/aws4_request, SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date;x-amz-target, Signature=c7d4fa46e037891582ebb2e48523f19dc162937852aa3e8f2ec0f3d130060f08"),
    ]
}

/// A signed `x-amz-content-sha256` holds the body to it, even with a valid signature.
#[test]
fn a_body_that_is_not_the_signed_digest_is_refused() {
    let sqs = Expect {
        service: "sqs",
        ..lambda()
    };
    let parts = parts("POST", "/", &sqs_headers());
    assert_eq!(check(&parts, SQS_BODY, SECRET, sqs), Ok(()));
    assert_eq!(
        check(&parts, br#"{"QueueName":"evil"}"#, SECRET, sqs),
        Err(SigError::BodyMismatch)
    );
}

const PRESIGNED: &str = "/2015-03-31/functions/hello/configuration?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Flambda%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-Expires=300&X-Amz-SignedHeaders=host&X-Amz-Signature=b863cbbbea93a293bb0d878afa63658580c8eacb4489004e3ac5b7bb0bd10d42";

#[test]
fn a_presigned_url_verifies_until_it_expires() {
    let parts = parts("GET", PRESIGNED, &[("host", "127.0.0.1:9001")]);
    assert!(is_signed(&parts));
    let at = |now| Expect { now, ..lambda() };
    assert_eq!(check(&parts, b"", SECRET, at(NOW + 300)), Ok(()));
    assert!(matches!(
        check(&parts, b"", SECRET, at(NOW + 301)),
        Err(SigError::PresignExpired { .. })
    ));
    assert_eq!(
        check(&parts, b"", "wrong", lambda()),
        Err(SigError::Mismatch)
    );
    let tampered = parts_with_uri(&PRESIGNED.replace("Expires=300", "Expires=3000"));
    assert_eq!(
        check(&tampered, b"", SECRET, lambda()),
        Err(SigError::Mismatch)
    );
}

fn parts_with_uri(uri: &str) -> Parts {
    parts("GET", uri, &[("host", "127.0.0.1:9001")])
}

#[test]
fn the_signing_key_chain_matches_aws_example() {
    // AWS's documented derivation example (IAM, 2012-02-15).
    assert_eq!(
        hex(&signing_key(SECRET, "20120215", "us-east-1", "iam")),
        "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
    );
}

#[test]
fn dates_round_trip() {
    assert_eq!(epoch_seconds("20150830T123600Z"), Some(NOW));
    assert_eq!(amz_date(NOW), "20150830T123600Z");
    assert_eq!(epoch_seconds("20000229T000000Z"), Some(951_782_400));
    assert_eq!(epoch_seconds("2015-08-30T12:36:00Z"), None);
    assert_eq!(epoch_seconds("20151330T123600Z"), None);
}
