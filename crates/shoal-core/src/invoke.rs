//! Invocations: the Invoke API's three invocation types, and HTTP requests matched to a
//! route. Each invocation runs inside one `tracing` span carrying function, version,
//! request id and (once a slot is granted) instance, so everything logged about it can be
//! found together. The span is at debug level (`RUST_LOG=shoal_core=debug` shows it);
//! what is logged about a call above that level names the function and request itself.

use bytes::Bytes;
use shoal_dispatch::Outcome;
use shoal_events::{HttpRequest, HttpResponse, PayloadFormat, RouteMatch};
use tracing::Instrument;

use crate::error::chain;
use crate::metrics::OutcomeLabel;
use crate::{Error, Platform, Result};

/// Lambda's `X-Amz-Invocation-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InvocationType {
    /// Run and wait for the result.
    #[default]
    RequestResponse,
    /// Accept now, run later; the caller gets the request id only.
    Event,
    /// Check that the function exists and the payload is valid; run nothing.
    DryRun,
}

impl std::str::FromStr for InvocationType {
    type Err = Error;

    fn from_str(text: &str) -> Result<InvocationType> {
        match text {
            "RequestResponse" => Ok(InvocationType::RequestResponse),
            "Event" => Ok(InvocationType::Event),
            "DryRun" => Ok(InvocationType::DryRun),
            other => Err(Error::InvalidInvocationType(other.to_owned())),
        }
    }
}

/// One call of the Invoke API.
#[derive(Debug, Clone)]
pub struct InvokeRequest {
    pub function: String,
    /// The event, JSON; empty means `{}`.
    pub payload: Bytes,
    pub invocation_type: InvocationType,
    /// The `awsRequestId` the handler will see (see [`new_request_id`]).
    pub request_id: String,
    /// Lambda's `Qualifier`: `None` or `$LATEST` runs the current version; a version
    /// number runs that version; an alias runs its version (or its second one, by weight).
    pub qualifier: Option<String>,
    /// `X-Amz-Client-Context`, decoded (JSON): the handler's `context.clientContext`.
    pub client_context: Option<Bytes>,
}

/// What an accepted invocation produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Invoked {
    /// The version that ran (or will run) it.
    pub version: u32,
    pub outcome: InvokeOutcome,
}

#[derive(Debug, Clone, PartialEq)]
pub enum InvokeOutcome {
    /// The handler's result, JSON.
    Success(Bytes),
    /// The handler threw: Lambda's `{errorType, errorMessage, stackTrace}` JSON.
    FunctionError { error_type: String, body: Bytes },
    /// `Event`: accepted, will run.
    Accepted,
    /// `DryRun`: would have run.
    DryRun,
}

/// A fresh request id, in the UUID form Lambda uses (version 4, random).
pub fn new_request_id() -> String {
    let uuid = uuid::Builder::from_random_bytes(random_bytes()).into_uuid();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid.hyphenated().encode_lower(&mut text).to_owned()
}

/// Sixteen random bytes from the operating system, taken from a per-thread buffer that
/// one `getrandom` call refills every 32 uses (ids are made for every call, two per HTTP
/// request). They name requests; secrets (tokens, keys) read the OS directly.
pub fn random_bytes() -> [u8; 16] {
    use std::cell::RefCell;
    const BUFFER: usize = 512;
    thread_local! {
        static POOL: RefCell<([u8; BUFFER], usize)> = const { RefCell::new(([0; BUFFER], BUFFER)) };
    }
    POOL.with(|pool| {
        let (bytes, used) = &mut *pool.borrow_mut();
        if *used == BUFFER {
            if getrandom::fill(bytes).is_err() {
                return uuid::Uuid::new_v4().into_bytes();
            }
            *used = 0;
        }
        let mut out = [0u8; 16];
        out.copy_from_slice(&bytes[*used..*used + 16]);
        // What was handed out is not kept.
        bytes[*used..*used + 16].fill(0);
        *used += 16;
        out
    })
}

/// A route matched for an HTTP request: which function, and the route's parameters.
#[derive(Debug, Clone)]
pub struct HttpTarget {
    pub function: String,
    pub route: RouteMatch,
}

impl Platform {
    /// Run (or accept, or check) one invocation. Failures of the function itself (timeout,
    /// crash, failed start) are errors here; a handler that threw is a successful call with
    /// [`InvokeOutcome::FunctionError`], as Lambda counts it.
    pub async fn invoke(self: &std::sync::Arc<Self>, request: InvokeRequest) -> Result<Invoked> {
        let payload = if request.payload.is_empty() {
            Bytes::from_static(b"{}")
        } else {
            request.payload
        };
        serde_json::from_slice::<serde::de::IgnoredAny>(&payload).map_err(Error::InvalidPayload)?;
        let pinned = match &request.qualifier {
            Some(qualifier) => self.resolve_qualifier(&request.function, qualifier).await?,
            None => None,
        };
        let not_found = || Error::FunctionNotFound(request.function.clone());
        let (version, outcome) = match request.invocation_type {
            InvocationType::DryRun => (
                match pinned {
                    Some(version) => version,
                    None => self
                        .dispatcher
                        .active_version(&request.function)
                        .ok_or_else(not_found)?,
                },
                InvokeOutcome::DryRun,
            ),
            InvocationType::Event => {
                let version = self
                    .dispatcher
                    .active_version(&request.function)
                    .ok_or_else(not_found)?;
                // The async path runs the current version; naming another one is refused
                // rather than quietly running the wrong code.
                if pinned.is_some_and(|v| v != version) {
                    return Err(Error::QualifiedEvent {
                        function: request.function.clone(),
                        qualifier: request.qualifier.clone().unwrap_or_default(),
                    });
                }
                // Durable in the store before the caller hears 202.
                self.events
                    .enqueue(&request.function, &request.request_id, &payload)
                    .await?;
                (version, InvokeOutcome::Accepted)
            }
            InvocationType::RequestResponse => {
                let (version, result) = self
                    .run_version(
                        &request.function,
                        pinned,
                        &request.request_id,
                        payload,
                        request.client_context.clone(),
                        "invoke",
                    )
                    .await;
                let outcome = match result? {
                    Outcome::Success(body) => InvokeOutcome::Success(body),
                    Outcome::FunctionError { error_type, body } => {
                        InvokeOutcome::FunctionError { error_type, body }
                    }
                };
                (version.ok_or_else(not_found)?, outcome)
            }
        };
        Ok(Invoked { version, outcome })
    }

    /// The function and route parameters for an HTTP request, if a route matches.
    pub fn route(&self, method: &str, path: &str) -> Option<HttpTarget> {
        let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
        routes
            .lookup(method, path)
            .map(|(target, route)| HttpTarget {
                function: target.to_owned(),
                route,
            })
    }

    /// Run the function behind an HTTP route with the API Gateway event of the route's
    /// payload format (2.0, or 1.0), and map its proxy result back to an HTTP response.
    /// `request_id` is the Lambda request id the handler sees; the event carries the
    /// gateway's own (`request.request_id`), as on AWS.
    pub async fn invoke_http(
        &self,
        target: &HttpTarget,
        request: &HttpRequest<'_>,
        request_id: &str,
        stage_host: &str,
    ) -> Result<HttpResponse> {
        let payload = target.route.payload;
        let event = match payload {
            PayloadFormat::V2 => {
                shoal_events::build_v2_event(request, &target.route, "shoal", stage_host)
            }
            PayloadFormat::V1 => {
                shoal_events::build_v1_event(request, &target.route, "shoal", stage_host)
            }
        };
        let (_, result) = self
            .run(&target.function, request_id, Bytes::from(event), "http")
            .await;
        match result? {
            Outcome::Success(result) => {
                shoal_events::try_map_response(&result, payload).map_err(|e| {
                    let error = Error::BadProxyResult(e);
                    self.logs
                        .system(&target.function, "-", request_id, chain(&error));
                    error
                })
            }
            // API Gateway hides a handler's error from its caller.
            Outcome::FunctionError { error_type, .. } => Err(Error::HandlerThrew { error_type }),
        }
    }

    /// One invocation through the dispatcher, inside its span; failures are written to
    /// the function's log as well. Also says which version took it (`None`: not found).
    pub(crate) async fn run(
        &self,
        function: &str,
        request_id: &str,
        payload: Bytes,
        trigger: &'static str,
    ) -> (Option<u32>, Result<Outcome>) {
        self.run_version(function, None, request_id, payload, None, trigger)
            .await
    }

    /// [`Platform::run`] of a given version (`None`: the active one), with the caller's
    /// client context.
    pub(crate) async fn run_version(
        &self,
        function: &str,
        version: Option<u32>,
        request_id: &str,
        payload: Bytes,
        client_context: Option<Bytes>,
        trigger: &'static str,
    ) -> (Option<u32>, Result<Outcome>) {
        // The dispatcher fills in version and instance once it has chosen them. At debug
        // level: the formatter writes out a span's fields when it opens, which at info
        // would cost every call (about 5% of the daemon's instructions on a no-op) for
        // the rare event inside it; what is logged above debug names its call itself.
        let span = tracing::debug_span!(
            "invoke",
            function,
            version = tracing::field::Empty,
            request_id,
            trigger,
            instance = tracing::field::Empty,
        );
        async {
            let arrived = std::time::Instant::now();
            // START is written when an instance takes the call, before the handler prints.
            let on_start: shoal_dispatch::OnStart = {
                let logs = self.logs.clone();
                let function = function.to_owned();
                let request_id = request_id.to_owned();
                let shown = version
                    .or_else(|| self.dispatcher.active_version(&function))
                    .unwrap_or(0);
                std::sync::Arc::new(move |instance: &str| {
                    logs.lifecycle(
                        &function,
                        instance,
                        &request_id,
                        &[&crate::report::start_line(&request_id, shown)],
                    )
                })
            };
            let (version, result, call) = self
                .dispatcher
                .invoke_reported(
                    function,
                    version,
                    request_id.to_owned(),
                    payload,
                    client_context,
                    Some(on_start),
                )
                .await;
            let result = result.map_err(Error::from);
            let outcome = outcome_label(&result);
            self.metrics
                .observe(function, outcome, ran(&result, arrived));
            if let Some(call) = &call {
                let status = match &result {
                    Err(Error::FunctionTimeout(_)) => Some("timeout"),
                    Err(_) => Some("error"),
                    Ok(_) => None,
                };
                let report = crate::report::Report::from_call(request_id, call, status);
                self.metrics.observe_call(function, call);
                self.logs.lifecycle(
                    function,
                    &call.instance,
                    request_id,
                    &[&crate::report::end_line(request_id), &report.line()],
                );
            }
            match &result {
                Ok(Outcome::Success(_)) => tracing::debug!("invocation succeeded"),
                Ok(Outcome::FunctionError { error_type, body }) => {
                    // Per call, so debug: a function that always throws must not flood.
                    tracing::debug!(error_type = %error_type, "handler threw");
                    // The platform refused the answer: the function's author reads why here.
                    if error_type == shoal_runtime::RESPONSE_SIZE_TOO_LARGE {
                        let message = serde_json::from_slice::<serde_json::Value>(body)
                            .ok()
                            .and_then(|v| v["errorMessage"].as_str().map(str::to_owned))
                            .unwrap_or_else(|| error_type.clone());
                        self.logs.system(function, "-", request_id, message);
                    }
                }
                // Under a flood every refused call lands here: debug, or the log floods too.
                Err(error @ (Error::FunctionNotFound(_) | Error::Overloaded { .. })) => {
                    tracing::debug!(error = %error, "invocation refused")
                }
                Err(error) => {
                    tracing::warn!(function, request_id, error = %chain(error), "invocation failed");
                    self.logs.system(
                        function,
                        "-",
                        request_id,
                        format!("invocation failed: {}", chain(error)),
                    );
                }
            }
            (version, result)
        }
        .instrument(span)
        .await
    }
}

fn outcome_label(result: &Result<Outcome>) -> OutcomeLabel {
    match result {
        Ok(Outcome::Success(_)) => OutcomeLabel::Success,
        Ok(Outcome::FunctionError { .. }) => OutcomeLabel::FunctionError,
        Err(Error::FunctionTimeout(_)) => OutcomeLabel::Timeout,
        Err(Error::InstanceFailed(_)) => OutcomeLabel::Crashed,
        Err(Error::InitFailed(_)) => OutcomeLabel::InitFailed,
        Err(Error::Overloaded { .. }) => OutcomeLabel::Throttled,
        Err(_) => OutcomeLabel::Refused,
    }
}

/// How long the call took, if a handler ran it (a refused call has no latency).
fn ran(result: &Result<Outcome>, arrived: std::time::Instant) -> Option<std::time::Duration> {
    matches!(
        result,
        Ok(_) | Err(Error::FunctionTimeout(_) | Error::InstanceFailed(_))
    )
    .then(|| arrived.elapsed())
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_are_random_version_4_uuids_and_never_repeat() {
        let mut seen = std::collections::HashSet::new();
        // Several refills of the per-thread buffer.
        for _ in 0..2_000 {
            let id = super::new_request_id();
            let parsed = uuid::Uuid::parse_str(&id).expect("a UUID");
            assert_eq!(parsed.get_version_num(), 4, "{id}");
            assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122, "{id}");
            assert_eq!(id, parsed.hyphenated().to_string());
            assert!(seen.insert(id), "an id came twice");
        }
        assert_ne!(super::random_bytes(), super::random_bytes());
    }
}
