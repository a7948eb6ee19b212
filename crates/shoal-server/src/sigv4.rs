//! AWS Signature Version 4, checked: the `Authorization: AWS4-HMAC-SHA256 ...` header and
//! presigned query strings (`X-Amz-Signature=...`), written from AWS's description of the
//! algorithm. Pure: the caller hands in the request's parts, its body, the key's secret,
//! the clock and the scope it serves; nothing here reads the store or answers HTTP.
//!
//! What is checked, in this order: the signature's parts are all there and well formed;
//! the key id is known (the caller's lookup); the credential scope names this daemon's
//! region (or `local`, the region its instances see) and the API's service, and the date of `X-Amz-Date`; the request time is within
//! [`MAX_SKEW_SECS`] of the clock (a presigned URL: not yet past `X-Amz-Expires`); the
//! signature matches, compared in constant time; the body matches
//! `x-amz-content-sha256` unless that says `UNSIGNED-PAYLOAD`.

#[cfg(test)]
mod tests;

use hmac::{Hmac, Mac};
use hyper::http::request::Parts;
use sha2::{Digest, Sha256};

/// The only algorithm SigV4 names.
const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// The payload hash a client sends when it does not sign the body.
pub(crate) const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// How far a request's time may be from the daemon's clock, AWS's 15 minutes.
pub(crate) const MAX_SKEW_SECS: i64 = 15 * 60;
/// The region instances are told they run in (`AWS_REGION`), accepted beside the
/// daemon's own.
const INSTANCE_REGION: &str = "local";
/// Longest life of a presigned URL, AWS's 7 days.
const MAX_EXPIRES_SECS: i64 = 7 * 24 * 3600;

/// Why a signature was refused. The SQS and Lambda answers map each to AWS's codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SigError {
    /// A part of the signature is missing or malformed (AWS: `IncompleteSignature`).
    #[error("{0}")]
    Incomplete(String),
    /// The key id is not one this daemon issued (`UnrecognizedClientException`).
    #[error("The security token included in the request is invalid.")]
    UnknownKey,
    /// Region, service or date of the credential scope are not this API's.
    #[error("{0}")]
    WrongScope(String),
    /// Outside the clock skew, or a presigned URL past its expiry.
    #[error(
        "Signature expired: {request_time} is now earlier than {earliest} ({earliest} - 15 min.)"
    )]
    Expired {
        request_time: String,
        earliest: String,
    },
    #[error("Signature not yet current: {request_time} is still later than {latest} ({latest} + 15 min.)")]
    NotYetCurrent {
        request_time: String,
        latest: String,
    },
    #[error("Request has expired (presigned URL valid until {until})")]
    PresignExpired { until: String },
    /// The signature is not the one the secret gives.
    #[error("The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.")]
    Mismatch,
    /// The body is not the one `x-amz-content-sha256` signs.
    #[error("The provided 'x-amz-content-sha256' header does not match what was computed.")]
    BodyMismatch,
}

/// A signature as presented, parsed but not yet checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Presented {
    pub access_key_id: String,
    /// `YYYYMMDD`, `region`, `service` of the credential scope.
    date: String,
    region: String,
    service: String,
    signed_headers: Vec<String>,
    signature: String,
    /// `YYYYMMDDTHHMMSSZ`.
    amz_date: String,
    /// Presigned: its `X-Amz-Expires`, in seconds.
    expires: Option<i64>,
    /// A session token was sent: Shoal issues no temporary credentials.
    session_token: bool,
}

/// Whether a request carries a SigV4 signature at all (header or query).
pub(crate) fn is_signed(parts: &Parts) -> bool {
    authorization(parts).is_some_and(|a| a.starts_with(ALGORITHM))
        || query_pairs(parts.uri.query().unwrap_or(""))
            .any(|(k, _)| k.eq_ignore_ascii_case("X-Amz-Algorithm"))
}

fn authorization(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// Read the signature's parts from the `Authorization` header or the query string.
pub(crate) fn parse(parts: &Parts) -> Result<Presented, SigError> {
    if let Some(header) = authorization(parts).filter(|a| a.starts_with(ALGORITHM)) {
        return parse_header(parts, header);
    }
    parse_query(parts)
}

fn parse_header(parts: &Parts, header: &str) -> Result<Presented, SigError> {
    let rest = header[ALGORITHM.len()..].trim_start();
    if !header[ALGORITHM.len()..].starts_with(' ') {
        return Err(SigError::Incomplete(format!(
            "Unsupported signing algorithm in the Authorization header (only {ALGORITHM})"
        )));
    }
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for field in rest.split(',') {
        let (key, value) = field.trim().split_once('=').unwrap_or((field.trim(), ""));
        match key {
            "Credential" => credential = Some(value),
            "SignedHeaders" => signed_headers = Some(value),
            "Signature" => signature = Some(value),
            _ => {}
        }
    }
    let missing = |what: &str| {
        SigError::Incomplete(format!(
            "Authorization header requires '{what}' parameter. Authorization={header}"
        ))
    };
    let credential = credential.ok_or_else(|| missing("Credential"))?;
    let signed_headers = signed_headers.ok_or_else(|| missing("SignedHeaders"))?;
    let signature = signature.ok_or_else(|| missing("Signature"))?;
    let amz_date = header_value(parts, "x-amz-date").ok_or_else(|| {
        SigError::Incomplete(
            "Authorization header requires existence of a 'X-Amz-Date' header.".into(),
        )
    })?;
    let session_token = parts.headers.contains_key("x-amz-security-token");
    presented(
        credential,
        signed_headers,
        signature,
        &amz_date,
        None,
        session_token,
    )
}

fn parse_query(parts: &Parts) -> Result<Presented, SigError> {
    let query = parts.uri.query().unwrap_or("");
    let get = |name: &str| {
        query_pairs(query)
            .find(|(k, _)| *k == name)
            .map(|(_, v)| percent_decode(v))
    };
    let missing = |what: &str| {
        SigError::Incomplete(format!(
            "A presigned request must carry the query parameter {what}."
        ))
    };
    let algorithm = get("X-Amz-Algorithm").ok_or_else(|| missing("X-Amz-Algorithm"))?;
    if algorithm != ALGORITHM {
        return Err(SigError::Incomplete(format!(
            "X-Amz-Algorithm must be {ALGORITHM}, not {algorithm:?}."
        )));
    }
    let credential = get("X-Amz-Credential").ok_or_else(|| missing("X-Amz-Credential"))?;
    let signed_headers =
        get("X-Amz-SignedHeaders").ok_or_else(|| missing("X-Amz-SignedHeaders"))?;
    let signature = get("X-Amz-Signature").ok_or_else(|| missing("X-Amz-Signature"))?;
    let amz_date = get("X-Amz-Date").ok_or_else(|| missing("X-Amz-Date"))?;
    let expires = get("X-Amz-Expires").ok_or_else(|| missing("X-Amz-Expires"))?;
    let expires = expires
        .parse::<i64>()
        .ok()
        .filter(|e| (1..=MAX_EXPIRES_SECS).contains(e))
        .ok_or_else(|| {
            SigError::Incomplete(format!(
                "X-Amz-Expires must be a number of seconds from 1 to {MAX_EXPIRES_SECS}."
            ))
        })?;
    let session_token = get("X-Amz-Security-Token").is_some();
    presented(
        &credential,
        &signed_headers,
        &signature,
        &amz_date,
        Some(expires),
        session_token,
    )
}

fn presented(
    credential: &str,
    signed_headers: &str,
    signature: &str,
    amz_date: &str,
    expires: Option<i64>,
    session_token: bool,
) -> Result<Presented, SigError> {
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key_id, date, region, service, terminator] = scope.as_slice() else {
        return Err(SigError::Incomplete(format!(
            "Credential should be ACCESS_KEY_ID/YYYYMMDD/REGION/SERVICE/aws4_request, not {credential:?}."
        )));
    };
    if *terminator != "aws4_request" {
        return Err(SigError::WrongScope(format!(
            "Credential should be scoped with a valid terminator: 'aws4_request', not '{terminator}'."
        )));
    }
    if access_key_id.is_empty() {
        return Err(SigError::Incomplete(
            "Credential names no access key id.".into(),
        ));
    }
    if epoch_seconds(amz_date).is_none() {
        return Err(SigError::Incomplete(format!(
            "X-Amz-Date must be YYYYMMDDTHHMMSSZ, not {amz_date:?}."
        )));
    }
    let signed_headers: Vec<String> = signed_headers.split(';').map(str::to_owned).collect();
    if !signed_headers.iter().any(|h| h == "host") {
        return Err(SigError::Incomplete(
            "SignedHeaders must include 'host'.".into(),
        ));
    }
    if signed_headers
        .iter()
        .any(|h| h.is_empty() || h.bytes().any(|b| b.is_ascii_uppercase()))
    {
        return Err(SigError::Incomplete(format!(
            "SignedHeaders must be lowercase header names separated by ';', not {:?}.",
            signed_headers.join(";")
        )));
    }
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(SigError::Incomplete(
            "Signature must be 64 hexadecimal digits.".into(),
        ));
    }
    Ok(Presented {
        access_key_id: (*access_key_id).to_owned(),
        date: (*date).to_owned(),
        region: (*region).to_owned(),
        service: (*service).to_owned(),
        signed_headers,
        signature: signature.to_ascii_lowercase(),
        amz_date: amz_date.to_owned(),
        expires,
        session_token,
    })
}

/// What a signature must match besides the secret.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expect<'a> {
    pub region: &'a str,
    pub service: &'a str,
    /// The daemon's clock, in seconds since the epoch.
    pub now: i64,
}

/// Check a parsed signature. `secret` is the key's secret (`None`: unknown key).
pub(crate) fn verify(
    parts: &Parts,
    body: &[u8],
    presented: &Presented,
    secret: Option<&str>,
    expect: Expect<'_>,
) -> Result<(), SigError> {
    let secret = match secret {
        Some(secret) if !presented.session_token => secret,
        _ => return Err(SigError::UnknownKey),
    };
    // `local` is the region functions see (`AWS_REGION`): an SDK inside a handler signs
    // for it when it calls back into this daemon.
    if presented.region != expect.region && presented.region != INSTANCE_REGION {
        return Err(SigError::WrongScope(format!(
            "Credential should be scoped to a valid region, not '{}'. This daemon's region is '{}'.",
            presented.region, expect.region
        )));
    }
    if presented.service != expect.service {
        return Err(SigError::WrongScope(format!(
            "Credential should be scoped to correct service: '{}', not '{}'.",
            expect.service, presented.service
        )));
    }
    if !presented.amz_date.starts_with(&presented.date) {
        return Err(SigError::WrongScope(format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}'.",
            presented.date,
            &presented.amz_date[..8]
        )));
    }
    let time = epoch_seconds(&presented.amz_date).unwrap_or(0);
    match presented.expires {
        None if time < expect.now - MAX_SKEW_SECS => {
            return Err(SigError::Expired {
                request_time: presented.amz_date.clone(),
                earliest: amz_date(expect.now - MAX_SKEW_SECS),
            })
        }
        Some(expires) if expect.now > time + expires => {
            return Err(SigError::PresignExpired {
                until: amz_date(time + expires),
            })
        }
        _ if time > expect.now + MAX_SKEW_SECS => {
            return Err(SigError::NotYetCurrent {
                request_time: presented.amz_date.clone(),
                latest: amz_date(expect.now + MAX_SKEW_SECS),
            })
        }
        _ => {}
    }
    let claimed = header_value(parts, "x-amz-content-sha256");
    // Presigned or not, the body's digest is signed unless the client said otherwise
    // (S3 alone presigns `UNSIGNED-PAYLOAD` by default; this is not S3).
    let payload_hash = match &claimed {
        Some(claimed) => claimed.clone(),
        None => hex(&Sha256::digest(body)),
    };
    let canonical = canonical_request(parts, &presented.signed_headers, &payload_hash)?;
    let expected = signature(
        secret,
        &presented.amz_date,
        &presented.date,
        &presented.region,
        &presented.service,
        &canonical,
    );
    if !constant_time_eq(expected.as_bytes(), presented.signature.as_bytes()) {
        return Err(SigError::Mismatch);
    }
    if let Some(claimed) = claimed {
        if claimed != UNSIGNED_PAYLOAD && !claimed.eq_ignore_ascii_case(&hex(&Sha256::digest(body)))
        {
            return Err(SigError::BodyMismatch);
        }
    }
    Ok(())
}

/// The canonical request: method, path, query, the signed headers and the payload hash.
pub(crate) fn canonical_request(
    parts: &Parts,
    signed_headers: &[String],
    payload_hash: &str,
) -> Result<String, SigError> {
    let mut headers = String::new();
    for name in signed_headers {
        let values: Vec<String> = parts
            .headers
            .get_all(name.as_str())
            .iter()
            .map(|v| collapse_spaces(&String::from_utf8_lossy(v.as_bytes())))
            .collect();
        // A signed header that did not arrive cannot have been signed as sent.
        if values.is_empty() {
            return Err(SigError::Mismatch);
        }
        headers.push_str(name);
        headers.push(':');
        headers.push_str(&values.join(","));
        headers.push('\n');
    }
    Ok(format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        parts.method.as_str(),
        canonical_path(parts.uri.path()),
        canonical_query(parts.uri.query().unwrap_or("")),
        headers,
        signed_headers.join(";"),
        payload_hash
    ))
}

/// The path as the signer saw it: dot segments and empty segments removed, then every
/// segment URI-encoded once more (the path arrives encoded, and SigV4 for services other
/// than S3 encodes it twice).
fn canonical_path(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            segment => segments.push(segment),
        }
    }
    let mut out = String::from("/");
    out.push_str(
        &segments
            .iter()
            .map(|s| uri_encode(s.as_bytes()))
            .collect::<Vec<_>>()
            .join("/"),
    );
    if !segments.is_empty() && path.ends_with('/') {
        out.push('/');
    }
    out
}

/// The query as the signer saw it: every pair decoded and encoded strictly, sorted, the
/// signature itself left out.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query_pairs(query)
        .filter(|(k, _)| *k != "X-Amz-Signature")
        .map(|(k, v)| {
            (
                uri_encode(&percent_decode_bytes(k)),
                uri_encode(&percent_decode_bytes(v)),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// SigV4's string to sign, then its HMAC under the derived signing key, in hex.
pub(crate) fn signature(
    secret: &str,
    amz_date: &str,
    date: &str,
    region: &str,
    service: &str,
    canonical_request: &str,
) -> String {
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical_request.as_bytes()))
    );
    let key = signing_key(secret, date, region, service);
    hex(&hmac(&key, string_to_sign.as_bytes()))
}

/// The signing key of a secret for one day, region and service.
pub(crate) fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compare without leaking, through timing, how much of a guess was right.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn header_value(parts: &Parts, name: &str) -> Option<String> {
    parts
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
}

/// A header value as SigV4 canonicalises it: trimmed, runs of spaces made one.
fn collapse_spaces(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// RFC 3986 encoding as SigV4 asks: unreserved characters kept, every other byte `%XX`.
fn uri_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode_bytes(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex_at = |j: usize| bytes.get(j).and_then(|b| (*b as char).to_digit(16));
        match (bytes[i], hex_at(i + 1), hex_at(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// `%XX` decoded (`+` stays `+`); invalid UTF-8 replaced.
pub(crate) fn percent_decode(text: &str) -> String {
    String::from_utf8_lossy(&percent_decode_bytes(text)).into_owned()
}

/// `YYYYMMDDTHHMMSSZ` as seconds since the epoch.
fn epoch_seconds(amz_date: &str) -> Option<i64> {
    let b = amz_date.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let s = amz_date.get(range)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    Some(days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Seconds since the epoch as `YYYYMMDDTHHMMSSZ`.
pub(crate) fn amz_date(epoch: i64) -> String {
    let (days, secs) = (epoch.div_euclid(86_400), epoch.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}
