//! Instances on the Lambda Runtime API: the function's own `bootstrap` polls a loopback
//! listener of its own (`AWS_LAMBDA_RUNTIME_API`), possibly with several `/next` polls
//! open at once. The dispatcher has already enforced the instance's in-flight limit, so
//! an invocation handed here is given to the first open poll (or the next one to arrive).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use shoal_dispatch::{
    BoxFuture, ErrorType, InstanceFailure, InstanceHandle, Invocation, LaunchError, Outcome,
};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch, Notify};

use crate::process::{self, SpawnSpec};
use crate::sandbox;
use crate::{
    function_error_type, launch_error_from_json, response_too_large, AnswerSize, Launch,
    MAX_RESPONSE_BYTES,
};

/// How much of an answer over [`MAX_RESPONSE_BYTES`] is read (and dropped) before the
/// daemon stops reading; beyond it the size is the announced one, or "more than" this.
const MAX_MEASURED: u64 = 64 * 1024 * 1024;
/// Request ids remembered after their caller left, so a late answer gets 410, not 400.
const EXPIRED_MEMORY: usize = 1024;
mod respond;

const API_PREFIX: &str = "/2018-06-01/runtime/";

type Reply = oneshot::Sender<Result<Outcome, InstanceFailure>>;

#[derive(Debug)]
struct Assigned {
    request_id: String,
    deadline_ms: u64,
    payload: Bytes,
    /// `Lambda-Runtime-Client-Context`, when the caller sent one.
    client_context: Option<Bytes>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Assigned>,
    polls: VecDeque<oneshot::Sender<Assigned>>,
    pending: HashMap<String, Reply>,
    expired: VecDeque<String>,
    closed: bool,
    init_error: Option<LaunchError>,
}

struct Shared {
    instance: String,
    /// The function's ARN, as the header every invocation carries (made once).
    arn: Option<hyper::header::HeaderValue>,
    pid: u32,
    /// Reads the instance's CPU and memory at every call's start and end.
    tree: crate::procfs::TreeReader,
    state: Mutex<State>,
    /// Signalled on the first `/next` poll (ready) and on `/runtime/init/error`.
    started: Notify,
    exit: watch::Receiver<Option<String>>,
    kill: Arc<Notify>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(crate) struct ApiInstance(Arc<Shared>);

pub(crate) async fn launch(start: Launch) -> Result<Arc<dyn InstanceHandle>, LaunchError> {
    start.prepare_scratch()?;
    let program = start.code.code_dir.join("bootstrap");
    if !is_executable(&program) {
        return Err(start.error(
            ErrorType::InvalidEntrypoint,
            format!("{} is missing or not executable; a provided runtime needs an executable named bootstrap", program.display()),
        ));
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(|e| {
        start.error(
            ErrorType::Unknown,
            format!("binding the Runtime API listener: {e}"),
        )
    })?;
    let addr = listener
        .local_addr()
        .map_err(|e| start.error(ErrorType::Unknown, e.to_string()))?;
    let mut env = start.env.clone();
    env.push(("AWS_LAMBDA_RUNTIME_API".into(), addr.to_string()));
    let plan = start.sandbox_plan(None, &program, None)?;
    // Only the instance's own uid may speak on its listener (where instances have one).
    let owner = plan.as_ref().map(|p| p.uid.uid);
    let inside = Path::new(sandbox::TASK_ROOT).join("bootstrap");
    let spawned = process::spawn(
        SpawnSpec {
            program: if plan.is_some() { &inside } else { &program },
            args: &[],
            cwd: &start.code.code_dir,
            env,
            owner: process::Owner::new(&start.code.function, &start.request.instance_id),
            scratch: &start.scratch,
            cgroup: start.cgroup(),
            sandbox: plan,
            channel: None,
        },
        start.logs.clone(),
    )
    .await
    .map_err(|e| {
        start.error(
            ErrorType::InvalidEntrypoint,
            format!("starting {}: {e}", program.display()),
        )
    })?;
    let shared = Arc::new(Shared {
        instance: start.request.instance_id.clone(),
        arn: hyper::header::HeaderValue::try_from(format!(
            "arn:aws:lambda:local:000000000000:function:{}",
            start.code.function
        ))
        .ok(),
        pid: spawned.pid,
        tree: crate::procfs::TreeReader::new(spawned.pid),
        state: Mutex::new(State::default()),
        started: Notify::new(),
        exit: spawned.exit.clone(),
        kill: spawned.kill.clone(),
    });
    let server = tokio::spawn(serve(listener, shared.clone(), owner));
    tokio::spawn(close_on_exit(shared.clone(), server));

    let mut exit = spawned.exit.clone();
    tokio::select! {
        _ = shared.started.notified() => {}
        _ = exit.wait_for(|e| e.is_some()) => {}
        _ = tokio::time::sleep(start.start_timeout) => {
            spawned.kill.notify_one();
            return Err(start.error(ErrorType::StartTimeout, format!(
                "bootstrap did not poll /runtime/invocation/next within {:?}", start.start_timeout)));
        }
    }
    if let Some(error) = shared.state().init_error.clone() {
        spawned.kill.notify_one();
        return Err(error);
    }
    if let Some(reason) = exit.borrow().clone() {
        let tail = spawned.stderr_tail();
        return Err(start.error(
            ErrorType::ExitError,
            format!("bootstrap {reason} before it was ready\n{tail}")
                .trim_end()
                .to_owned(),
        ));
    }
    Ok(Arc::new(ApiInstance(shared)))
}

fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Serve the Runtime API. With an `owner` uid, a connection from any other uid (another
/// instance, another local user) is closed unanswered: it must not take this instance's
/// events or answer for it.
async fn serve(listener: TcpListener, shared: Arc<Shared>, owner: Option<u32>) {
    let local_port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        if let Some(owner) = owner {
            let uid = crate::procfs::tcp_peer_uid(peer, local_port);
            if uid != Some(owner) {
                tracing::warn!(instance = %shared.instance, ?peer, ?uid,
                    "refused a Runtime API connection from outside the instance");
                continue;
            }
        }
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(shared, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn close_on_exit(shared: Arc<Shared>, server: tokio::task::JoinHandle<()>) {
    let reason = process::exit_reason(shared.exit.clone()).await;
    server.abort();
    let pending: Vec<Reply> = {
        let mut state = shared.state();
        state.closed = true;
        state.polls.clear();
        state.queue.clear();
        state.pending.drain().map(|(_, r)| r).collect()
    };
    for reply in pending {
        let _ = reply.send(Err(InstanceFailure::Crashed {
            instance: shared.instance.clone(),
            detail: reason.clone(),
        }));
    }
    shared.started.notify_one();
}

/// What the Runtime API answers a runtime: [`respond`] turns it into a response.
#[derive(Debug)]
enum Answer {
    /// An invocation for a `/next` poll.
    Invocation {
        assigned: Assigned,
        arn: Option<hyper::header::HeaderValue>,
    },
    /// A response, error or init error was taken.
    Accepted,
}

/// Why a Runtime API request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    UnknownPath,
    /// The answer is larger than Lambda's limit (its invocation failed for it).
    TooLarge,
    /// The body could not be read (the connection broke).
    Unreadable,
    /// The instance is stopping; the poll will get no invocation.
    Stopping,
    /// The invocation already timed out (its caller left).
    Expired,
    UnknownRequestId,
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    respond::answer(route(shared, req).await)
}

async fn route(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Answer, Refusal> {
    let path = req.uri().path().to_owned();
    let route = path.strip_prefix(API_PREFIX).ok_or(Refusal::UnknownPath)?;
    let method = req.method().clone();
    match (method, route.split('/').collect::<Vec<_>>().as_slice()) {
        (Method::GET, ["invocation", "next"]) => next(&shared).await,
        (Method::POST, ["invocation", id, "response"]) => {
            let id = (*id).to_owned();
            match read_answer(req).await? {
                Ok(body) => answer(&shared, &id, Ok(Outcome::Success(body))),
                Err(size) => too_large(&shared, &id, size),
            }
        }
        (Method::POST, ["invocation", id, "error"]) => {
            let id = (*id).to_owned();
            let header_type = req
                .headers()
                .get("lambda-runtime-function-error-type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = match read_answer(req).await? {
                Ok(body) => body,
                Err(size) => return too_large(&shared, &id, size),
            };
            let error_type = header_type.unwrap_or_else(|| function_error_type(&body, "Unhandled"));
            answer(
                &shared,
                &id,
                Ok(Outcome::FunctionError { error_type, body }),
            )
        }
        (Method::POST, ["init", "error"]) => {
            let body = match read_answer(req).await {
                Ok(Ok(body)) => body,
                _ => Bytes::new(),
            };
            shared.state().init_error = Some(launch_error_from_json(&body, ErrorType::InitError));
            shared.started.notify_one();
            Ok(Answer::Accepted)
        }
        _ => Err(Refusal::UnknownPath),
    }
}

/// An answer's body, or its size when it is larger than [`MAX_RESPONSE_BYTES`]. Nothing
/// beyond the limit is kept: the rest is counted and dropped, up to [`MAX_MEASURED`] (so
/// the runtime gets its 413 on a connection still in order); a `content-length` beyond
/// that is refused unread.
async fn read_answer(req: Request<Incoming>) -> Result<Result<Bytes, AnswerSize>, Refusal> {
    let announced = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = announced.filter(|len| *len > MAX_MEASURED) {
        return Ok(Err(AnswerSize::Exactly(len)));
    }
    let mut body = req.into_body();
    // The usual answer arrives as one frame: kept as it is, not copied. A second frame
    // starts a buffer.
    let mut first: Option<Bytes> = None;
    let mut kept = Vec::new();
    let mut seen: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| Refusal::Unreadable)?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        seen += data.len() as u64;
        if seen > MAX_MEASURED {
            return Ok(Err(AnswerSize::MoreThan(MAX_MEASURED)));
        }
        if seen > MAX_RESPONSE_BYTES as u64 {
            // Over the limit: only the count matters from here.
            first = None;
            kept = Vec::new();
        } else if first.is_none() && kept.is_empty() {
            first = Some(data);
        } else {
            if let Some(first) = first.take() {
                kept.extend_from_slice(&first);
            }
            kept.extend_from_slice(&data);
        }
    }
    if seen > MAX_RESPONSE_BYTES as u64 {
        return Ok(Err(AnswerSize::Exactly(seen)));
    }
    Ok(Ok(first.unwrap_or_else(|| Bytes::from(kept))))
}

/// The invocation fails with Lambda's size error, and the runtime is told its answer was
/// refused.
fn too_large(shared: &Shared, id: &str, size: AnswerSize) -> Result<Answer, Refusal> {
    answer(shared, id, Ok(response_too_large(size)))?;
    Err(Refusal::TooLarge)
}

async fn next(shared: &Arc<Shared>) -> Result<Answer, Refusal> {
    let waiting = {
        let mut state = shared.state();
        if let Some(assigned) = state.queue.pop_front() {
            drop(state);
            shared.started.notify_one();
            return Ok(invocation(shared, assigned));
        }
        let (tx, rx) = oneshot::channel();
        state.polls.push_back(tx);
        rx
    };
    shared.started.notify_one();
    match waiting.await {
        Ok(assigned) => Ok(invocation(shared, assigned)),
        Err(_) => Err(Refusal::Stopping),
    }
}

fn invocation(shared: &Shared, assigned: Assigned) -> Answer {
    Answer::Invocation {
        assigned,
        arn: shared.arn.clone(),
    }
}

fn answer(
    shared: &Shared,
    id: &str,
    result: Result<Outcome, InstanceFailure>,
) -> Result<Answer, Refusal> {
    let reply = {
        let mut state = shared.state();
        match state.pending.remove(id) {
            Some(reply) => reply,
            None if state.expired.iter().any(|e| e == id) => return Err(Refusal::Expired),
            None => return Err(Refusal::UnknownRequestId),
        }
    };
    let _ = reply.send(result);
    Ok(Answer::Accepted)
}

/// Forgets an invocation whose caller left; a late answer then gets 410.
struct Forget {
    shared: Arc<Shared>,
    request_id: String,
}

impl Drop for Forget {
    fn drop(&mut self) {
        let mut state = self.shared.state();
        if state.pending.remove(&self.request_id).is_some() {
            state.queue.retain(|a| a.request_id != self.request_id);
            if state.expired.len() == EXPIRED_MEMORY {
                state.expired.pop_front();
            }
            state.expired.push_back(self.request_id.clone());
        }
    }
}

impl InstanceHandle for ApiInstance {
    fn invoke(&self, invocation: Invocation) -> BoxFuture<Result<Outcome, InstanceFailure>> {
        let shared = self.0.clone();
        let (reply, result) = oneshot::channel();
        {
            let mut state = shared.state();
            if state.closed {
                let instance = shared.instance.clone();
                return Box::pin(std::future::ready(Err(InstanceFailure::Unavailable {
                    instance,
                })));
            }
            state.pending.insert(invocation.request_id.clone(), reply);
            let mut assigned = Assigned {
                request_id: invocation.request_id.clone(),
                deadline_ms: invocation.deadline_epoch_ms,
                payload: invocation.payload,
                client_context: invocation.client_context,
            };
            loop {
                let Some(poll) = state.polls.pop_front() else {
                    state.queue.push_back(assigned);
                    break;
                };
                match poll.send(assigned) {
                    Ok(()) => break,
                    // That poll's connection went away; try the next one.
                    Err(back) => assigned = back,
                }
            }
        }
        let forget = Forget {
            shared: shared.clone(),
            request_id: invocation.request_id,
        };
        Box::pin(async move {
            let outcome = result.await;
            drop(forget);
            outcome.unwrap_or_else(|_| {
                Err(InstanceFailure::Crashed {
                    instance: shared.instance.clone(),
                    detail: "instance stopped".into(),
                })
            })
        })
    }

    fn exited(&self) -> BoxFuture<String> {
        Box::pin(process::exit_reason(self.0.exit.clone()))
    }

    fn stop(&self) {
        self.0.kill.notify_one();
    }

    fn pid(&self) -> Option<u32> {
        Some(self.0.pid)
    }

    fn resources(&self) -> Option<shoal_dispatch::Resources> {
        self.0.tree.resources()
    }

    fn run_wait(&self) -> Option<std::time::Duration> {
        self.0.tree.run_wait()
    }

    fn frozen(&self) -> bool {
        self.0.tree.frozen()
    }
}
