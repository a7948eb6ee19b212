//! Instances on the native channel: Shoal's own bootstrap, one framed Unix socket each,
//! a connected pair whose runtime end the process inherits as a descriptor.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use shoal_dispatch::{
    BoxFuture, ErrorType, InstanceFailure, InstanceHandle, Invocation, LaunchError, Outcome,
};
use tokio::io::{AsyncRead, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::frame::{self, FrameError, Header};
use crate::process::{self, SpawnSpec, Spawned};
use crate::sandbox;
use crate::{
    function_error_type, launch_error_from_json, response_too_large, AnswerSize, Launch, LogSink,
};

/// How long a runtime whose channel closed during start gets to exit on its own.
const EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(2);
/// Frames written in one batch at most (bytes), so one huge burst doesn't stall reads.
const MAX_WRITE_BATCH: usize = 1024 * 1024;

type Reply = oneshot::Sender<Result<Outcome, InstanceFailure>>;

struct Shared {
    function: String,
    instance: String,
    pid: u32,
    /// Reads the instance's CPU and memory at every call's start and end.
    tree: crate::procfs::TreeReader,
    next_id: AtomicU32,
    pending: Mutex<HashMap<u32, Reply>>,
    /// Set (under the `pending` lock's protection, see `fail_all`) once the process is gone.
    closed: AtomicBool,
    writer: mpsc::UnboundedSender<Bytes>,
    exit: watch::Receiver<Option<String>>,
    kill: Arc<Notify>,
    /// Why the daemon stopped the instance, when it did so for what the runtime sent: the
    /// calls still in flight are told this rather than only "killed by SIGKILL".
    broken: Mutex<Option<String>>,
    logs: Arc<dyn LogSink>,
    /// The runtime's HELLO listed `client_context`: it reads INVOKE_CTX frames.
    client_context: bool,
}

pub(crate) struct NativeInstance(Arc<Shared>);

/// The program that runs a native bootstrap: `node` or `python3`, with the arguments that
/// go before the bootstrap's path.
pub(crate) struct Interpreter<'a> {
    pub program: &'a Path,
    pub args: Vec<String>,
    /// A directory outside `/usr` the interpreter needs to see (its installation).
    pub home: Option<&'a Path>,
}

pub(crate) async fn launch(
    start: Launch,
    interpreter: Interpreter<'_>,
    bootstrap: &Path,
) -> Result<Arc<dyn InstanceHandle>, LaunchError> {
    start.prepare_scratch()?;
    let runtime_dir = bootstrap.parent().unwrap_or(Path::new("/"));
    let plan = start.sandbox_plan(Some(runtime_dir), interpreter.program, interpreter.home)?;
    let program = interpreter.program.display().to_string();
    let (spawned, ours) = spawn_runtime(
        RuntimeSpawn {
            interpreter,
            bootstrap,
            plan,
            cwd: &start.code.code_dir,
            env: start.env.clone(),
            owner: process::Owner::new(&start.code.function, &start.request.instance_id),
            scratch: &start.scratch,
            cgroup: start.cgroup(),
        },
        start.logs.clone(),
    )
    .await
    .map_err(|e| start.error(ErrorType::Unknown, format!("starting {program}: {e}")))?;
    let (read, write) = ours.into_split();
    let reader = BufReader::with_capacity(256 * 1024, read);
    handshake(start, spawned, reader, write).await
}

/// What [`spawn_runtime`] starts: an interpreter running a native bootstrap.
pub(crate) struct RuntimeSpawn<'a> {
    pub interpreter: Interpreter<'a>,
    pub bootstrap: &'a Path,
    pub plan: Option<sandbox::Plan>,
    pub cwd: &'a Path,
    pub env: Vec<(String, String)>,
    pub owner: process::Owner,
    pub scratch: &'a Path,
    pub cgroup: Option<crate::cgroup::InstanceCgroup>,
}

/// Start the runtime process with its end of a fresh channel; returns ours.
pub(crate) async fn spawn_runtime(
    spec: RuntimeSpawn<'_>,
    logs: Arc<dyn LogSink>,
) -> Result<(Spawned, UnixStream), String> {
    // A connected pair, one end inherited by the runtime as a descriptor: no socket path
    // exists that another process could connect to first.
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()
        .and_then(|(ours, theirs)| {
            ours.set_nonblocking(true)?;
            Ok((UnixStream::from_std(ours)?, theirs))
        })
        .map_err(|e| format!("creating the channel: {e}"))?;
    let bootstrap_arg = match &spec.plan {
        Some(_) => {
            Path::new(sandbox::RUNTIME_ROOT).join(spec.bootstrap.file_name().unwrap_or_default())
        }
        None => spec.bootstrap.to_owned(),
    };
    let mut env = spec.env;
    env.push(("SHOAL_CHANNEL_FD".into(), process::CHANNEL_FD.to_string()));
    env.push(("SHOAL_PROTOCOL".into(), frame::PROTOCOL_VERSION.to_string()));
    let mut args = spec.interpreter.args;
    args.push(bootstrap_arg.display().to_string());
    let spawned = process::spawn(
        SpawnSpec {
            program: spec.interpreter.program,
            args: &args,
            cwd: spec.cwd,
            env,
            owner: spec.owner,
            scratch: spec.scratch,
            cgroup: spec.cgroup,
            sandbox: spec.plan,
            channel: Some(theirs.into()),
        },
        logs,
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok((spawned, ours))
}

/// The runtime's first frame, within the start timeout; `Err` with the launch error to
/// report when it did not come (the process has been told to die where it still runs).
async fn first_frame(
    start_timeout: std::time::Duration,
    spawned: &Spawned,
    reader: &mut BufReader<OwnedReadHalf>,
) -> Result<Option<frame::Frame>, Option<LaunchError>> {
    let mut exit = spawned.exit.clone();
    tokio::select! {
        r = frame::read_frame(reader) => r.map_err(|_| None),
        _ = exit.wait_for(|e| e.is_some()) => Err(None),
        _ = tokio::time::sleep(start_timeout) => {
            spawned.kill.notify_one();
            Err(Some(LaunchError::new(ErrorType::StartTimeout, format!(
                "instance did not become ready within {start_timeout:?}"))))
        }
    }
}

/// Wait for the runtime's HELLO (or its init error) and make the instance.
async fn handshake(
    start: Launch,
    spawned: Spawned,
    mut reader: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
) -> Result<Arc<dyn InstanceHandle>, LaunchError> {
    let first = match first_frame(start.start_timeout, &spawned, &mut reader).await {
        Ok(Some(first)) => first,
        Ok(None) | Err(None) => return Err(exited_early(&start, &spawned).await),
        Err(Some(timeout)) => return Err(timeout),
    };
    let client_context = match first.kind {
        frame::HELLO => {
            let hello: serde_json::Value =
                serde_json::from_slice(&first.payload).unwrap_or_default();
            if hello["protocol"].as_u64() != Some(frame::PROTOCOL_VERSION) {
                spawned.kill.notify_one();
                return Err(start.error(
                    ErrorType::ProtocolError,
                    format!(
                        "bootstrap speaks protocol {}, the daemon {}",
                        hello["protocol"],
                        frame::PROTOCOL_VERSION
                    ),
                ));
            }
            hello["features"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f == "client_context"))
        }
        frame::INIT_ERROR => {
            spawned.kill.notify_one();
            return Err(launch_error_from_json(&first.payload, ErrorType::InitError));
        }
        other => {
            spawned.kill.notify_one();
            return Err(start.error(
                ErrorType::ProtocolError,
                format!("expected HELLO, got frame kind {other}"),
            ));
        }
    };
    let (writer, queue) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        function: start.code.function.clone(),
        instance: start.request.instance_id.clone(),
        pid: spawned.pid,
        tree: crate::procfs::TreeReader::new(spawned.pid),
        next_id: AtomicU32::new(1),
        pending: Mutex::new(HashMap::new()),
        closed: AtomicBool::new(false),
        writer,
        exit: spawned.exit.clone(),
        kill: spawned.kill.clone(),
        broken: Mutex::new(None),
        logs: start.logs.clone(),
        client_context,
    });
    tokio::spawn(write_loop(write, queue, shared.kill.clone()));
    tokio::spawn(read_loop(reader, shared.clone()));
    tokio::spawn(fail_on_exit(shared.clone()));
    Ok(Arc::new(NativeInstance(shared)))
}

/// A runtime process started ahead of need (the warm pool, `warm.rs`): its bootstrap is
/// loaded and its channel open, in a sandbox whose `/var/task` is an empty directory of its
/// own; it takes a function at [`assign`].
pub(crate) struct Pooled {
    pub id: String,
    spawned: Spawned,
    reader: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
    owner: process::Owner,
    /// The directory shown at `/var/task` (or, unsandboxed, the task root itself).
    task_dir: std::path::PathBuf,
}

impl Pooled {
    pub fn alive(&self) -> bool {
        self.spawned.exit.borrow().is_none()
    }

    pub fn pid(&self) -> u32 {
        self.spawned.pid
    }

    pub fn kill(&self) {
        self.spawned.kill.notify_one();
    }
}

/// Start a pooled runtime in `spec` (whose `cwd` is its empty task directory) and wait
/// for its pooled HELLO.
pub(crate) async fn spawn_pooled(
    id: &str,
    spec: RuntimeSpawn<'_>,
    start_timeout: std::time::Duration,
    logs: Arc<dyn LogSink>,
) -> Result<Pooled, String> {
    let task_dir = spec.cwd.to_owned();
    let owner = spec.owner.clone();
    let (spawned, ours) = spawn_runtime(spec, logs).await?;
    let (read, write) = ours.into_split();
    let mut reader = BufReader::with_capacity(256 * 1024, read);
    let first = match first_frame(start_timeout, &spawned, &mut reader).await {
        Ok(Some(first)) => first,
        Ok(None) | Err(None) => {
            spawned.kill.notify_one();
            return Err(format!(
                "exited before it was ready: {}",
                spawned.stderr_tail()
            ));
        }
        Err(Some(timeout)) => return Err(timeout.to_string()),
    };
    let hello: serde_json::Value = serde_json::from_slice(&first.payload).unwrap_or_default();
    if first.kind != frame::HELLO
        || hello["pooled"] != serde_json::Value::Bool(true)
        || hello["protocol"].as_u64() != Some(frame::PROTOCOL_VERSION)
    {
        spawned.kill.notify_one();
        return Err(format!(
            "expected a pooled HELLO of protocol {}, got frame kind {} {hello}",
            frame::PROTOCOL_VERSION,
            first.kind
        ));
    }
    Ok(Pooled {
        id: id.to_owned(),
        spawned,
        reader,
        write,
        owner,
        task_dir,
    })
}

/// Give pooled runtime `pooled` the function of `start`: its code appears in its task
/// directory (hard links to the verified code tree, read-only), its output and exit are
/// the instance's from now on, and its environment comes in the ASSIGN frame; then the
/// start goes on as for a fresh process (HELLO or the init error).
pub(crate) async fn assign(
    mut pooled: Pooled,
    start: Launch,
) -> Result<Arc<dyn InstanceHandle>, LaunchError> {
    if let Err(e) = crate::warm::link_tree(&start.code.code_dir, &pooled.task_dir) {
        pooled.kill();
        return Err(start.error(
            ErrorType::Unknown,
            format!("showing the code to warm-pool process {}: {e}", pooled.id),
        ));
    }
    pooled
        .owner
        .set(&start.code.function, &start.request.instance_id);
    // Unsandboxed, the code's own path stood for the task root: the pooled process sees
    // its copy at its task directory instead.
    let code_dir = start.code.code_dir.display().to_string();
    let task_dir = pooled.task_dir.display().to_string();
    let env: serde_json::Map<String, serde_json::Value> = start
        .env
        .iter()
        .map(|(k, v)| {
            let v = if *v == code_dir {
                task_dir.clone()
            } else {
                v.clone()
            };
            (k.clone(), serde_json::Value::String(v))
        })
        .collect();
    let payload = serde_json::to_vec(&env).unwrap_or_default();
    let frame = frame::encode(frame::ASSIGN, 0, &payload);
    if let Err(e) = pooled.write.write_all(&frame).await {
        pooled.kill();
        return Err(start.error(
            ErrorType::Unknown,
            format!("assigning warm-pool process {}: {e}", pooled.id),
        ));
    }
    handshake(start, pooled.spawned, pooled.reader, pooled.write).await
}

/// The process ended before it was ready: explain with its exit and last stderr lines.
async fn exited_early(start: &Launch, spawned: &Spawned) -> LaunchError {
    // The channel closed: usually the runtime is exiting. Let it finish (the sandbox's
    // processes end just after it) so its own exit code is what callers see; kill only a
    // process that lingers.
    let own_exit = process::exit_reason(spawned.exit.clone());
    let reason = match tokio::time::timeout(EXIT_GRACE, own_exit).await {
        Ok(reason) => reason,
        Err(_) => {
            spawned.kill.notify_one();
            process::exit_reason(spawned.exit.clone()).await
        }
    };
    let tail = spawned.stderr_tail();
    let message = if tail.is_empty() {
        format!("instance {reason} before it was ready")
    } else {
        format!("instance {reason} before it was ready:\n{tail}")
    };
    start.error(ErrorType::ExitError, message)
}

async fn write_loop(
    mut write: OwnedWriteHalf,
    mut queue: mpsc::UnboundedReceiver<Bytes>,
    kill: Arc<Notify>,
) {
    let mut batch = BytesMut::new();
    while let Some(first) = queue.recv().await {
        // Let the other tasks ready now (connections whose requests came in the same
        // wake-up) queue their frames first: one `write` for all of them rather than one
        // per frame. Costs one turn of the scheduler when nothing else is ready.
        tokio::task::yield_now().await;
        batch.extend_from_slice(&first);
        while batch.len() < MAX_WRITE_BATCH {
            match queue.try_recv() {
                Ok(more) => batch.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if write.write_all(&batch).await.is_err() {
            kill.notify_one();
            return;
        }
        batch.clear();
    }
}

async fn read_loop(mut reader: BufReader<tokio::net::unix::OwnedReadHalf>, shared: Arc<Shared>) {
    if let Err(broken) = read_answers(&mut reader, &shared).await {
        let reason = format!("the daemon stopped it: {broken}");
        tracing::warn!(instance = %shared.instance, error = %broken, "broken native channel; stopping instance");
        shared
            .logs
            .stopped(&shared.function, &shared.instance, &reason);
        *shared.broken.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
    }
    // A runtime that closed its channel can do no more work. It is usually exiting: let
    // it, so its calls fail with its own exit reason; kill it only if it lingers.
    let exited = process::exit_reason(shared.exit.clone());
    if tokio::time::timeout(EXIT_GRACE, exited).await.is_err() {
        shared.kill.notify_one();
    }
}

/// Why the daemon gave up on an instance's channel.
#[derive(Debug, thiserror::Error)]
enum Broken {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("the runtime sent a frame of kind {0} where only RESULT and ERROR may come")]
    UnexpectedKind(u8),
}

/// Complete invocations from RESULT and ERROR frames until the runtime closes the channel
/// (`Ok`) or breaks the protocol. An answer larger than Lambda's limit fails its own
/// invocation and is read past without being kept; one too large to read past fails its
/// invocation too, then the channel.
async fn read_answers<R: AsyncRead + Unpin>(reader: &mut R, shared: &Shared) -> Result<(), Broken> {
    loop {
        let header = match frame::read_header(reader).await {
            Ok(Some(header)) => header,
            Ok(None) => return Ok(()),
            Err(FrameError::TooLarge { header, limit }) => {
                if is_answer(header) {
                    let size = AnswerSize::Exactly(header.payload_len as u64);
                    shared.complete(header.id, Ok(response_too_large(size)));
                }
                return Err(FrameError::TooLarge { header, limit }.into());
            }
            Err(e) => return Err(e.into()),
        };
        if !is_answer(header) {
            return Err(Broken::UnexpectedKind(header.kind));
        }
        if header.payload_len > frame::MAX_BUFFERED {
            let size = AnswerSize::Exactly(header.payload_len as u64);
            shared.complete(header.id, Ok(response_too_large(size)));
            frame::skip_payload(reader, header).await?;
            continue;
        }
        let frame = frame::read_payload(reader, header).await?;
        let outcome = if frame.kind == frame::RESULT {
            Outcome::Success(frame.payload)
        } else {
            Outcome::FunctionError {
                error_type: function_error_type(&frame.payload, "Error"),
                body: frame.payload,
            }
        };
        shared.complete(frame.id, Ok(outcome));
    }
}

fn is_answer(header: Header) -> bool {
    header.kind == frame::RESULT || header.kind == frame::ERROR
}

async fn fail_on_exit(shared: Arc<Shared>) {
    let mut reason = process::exit_reason(shared.exit.clone()).await;
    if let Some(broken) = shared
        .broken
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        reason = format!("{broken} ({reason})");
    }
    let drained: Vec<Reply> = {
        let mut pending = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
        shared.closed.store(true, Ordering::SeqCst);
        pending.drain().map(|(_, reply)| reply).collect()
    };
    for reply in drained {
        let _ = reply.send(Err(InstanceFailure::Crashed {
            instance: shared.instance.clone(),
            detail: reason.clone(),
        }));
    }
}

impl Shared {
    fn complete(&self, id: u32, result: Result<Outcome, InstanceFailure>) {
        let reply = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }
}

/// Forgets an invocation whose caller went away (timeout, disconnect).
struct Forget {
    shared: Arc<Shared>,
    id: u32,
}

impl Drop for Forget {
    fn drop(&mut self) {
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

impl InstanceHandle for NativeInstance {
    fn invoke(&self, invocation: Invocation) -> BoxFuture<Result<Outcome, InstanceFailure>> {
        let shared = self.0.clone();
        let unavailable = || InstanceFailure::Unavailable {
            instance: shared.instance.clone(),
        };
        let mut id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        if id == 0 {
            id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        }
        let (reply, result) = oneshot::channel();
        {
            let mut pending = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
            if shared.closed.load(Ordering::SeqCst) {
                return Box::pin(std::future::ready(Err(unavailable())));
            }
            pending.insert(id, reply);
        }
        let frame = match &invocation.client_context {
            Some(context) if shared.client_context => frame::encode_invoke_ctx(
                id,
                invocation.deadline_epoch_ms,
                &invocation.request_id,
                context,
                &invocation.payload,
            ),
            // A runtime that did not ask for it would refuse the frame kind.
            _ => frame::encode_invoke(
                id,
                invocation.deadline_epoch_ms,
                &invocation.request_id,
                &invocation.payload,
            ),
        };
        if shared.writer.send(frame).is_err() {
            shared
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            return Box::pin(std::future::ready(Err(unavailable())));
        }
        let forget = Forget {
            shared: shared.clone(),
            id,
        };
        Box::pin(async move {
            let outcome = result.await;
            drop(forget);
            outcome.unwrap_or_else(|_| {
                Err(InstanceFailure::Crashed {
                    instance: shared.instance.clone(),
                    detail: "channel closed".into(),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A channel's bookkeeping with no process behind it, and the replies of the
    /// invocations `ids` it waits for.
    fn waiting_for(
        ids: &[u32],
    ) -> (
        Shared,
        Vec<oneshot::Receiver<Result<Outcome, InstanceFailure>>>,
    ) {
        let (writer, _) = mpsc::unbounded_channel();
        let (_, exit) = watch::channel(None);
        struct NoLogs;
        impl LogSink for NoLogs {
            fn line(&self, _: &str, _: &str, _: crate::LogStream, _: &str) {}
        }
        let shared = Shared {
            function: "f".into(),
            instance: "f-1-1".into(),
            pid: 0,
            tree: crate::procfs::TreeReader::new(0),
            next_id: AtomicU32::new(1),
            pending: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            writer,
            exit,
            kill: Arc::new(Notify::new()),
            broken: Mutex::new(None),
            logs: Arc::new(NoLogs),
            client_context: false,
        };
        let replies = ids
            .iter()
            .map(|id| {
                let (reply, result) = oneshot::channel();
                shared.pending.lock().unwrap().insert(*id, reply);
                result
            })
            .collect();
        (shared, replies)
    }

    fn size_error(outcome: Outcome) -> String {
        match outcome {
            Outcome::FunctionError { error_type, body } => {
                assert_eq!(error_type, crate::RESPONSE_SIZE_TOO_LARGE);
                let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(body["errorType"], crate::RESPONSE_SIZE_TOO_LARGE);
                body["errorMessage"].as_str().unwrap().to_owned()
            }
            other => panic!("expected the size error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_oversized_answer_fails_only_its_own_invocation() {
        let (shared, mut replies) = waiting_for(&[1, 2, 3]);
        let too_big = vec![b'x'; crate::MAX_RESPONSE_BYTES + 1];
        let mut stream = frame::encode(frame::RESULT, 1, &too_big).to_vec();
        let error = format!(
            r#"{{"errorType":"E","errorMessage":"{}"}}"#,
            "y".repeat(7 << 20)
        );
        stream.extend_from_slice(&frame::encode(frame::ERROR, 2, error.as_bytes()));
        stream.extend_from_slice(&frame::encode(frame::RESULT, 3, b"\"fine\""));
        let at_the_limit = vec![b'z'; crate::MAX_RESPONSE_BYTES];
        stream.extend_from_slice(&frame::encode(frame::RESULT, 4, &at_the_limit));
        let (reply, mut at_limit) = oneshot::channel();
        shared.pending.lock().unwrap().insert(4, reply);

        read_answers(&mut &stream[..], &shared).await.unwrap();

        let first = size_error(replies.remove(0).try_recv().unwrap().unwrap());
        assert_eq!(
            first,
            "Response payload size (6291557 bytes) exceeded maximum allowed payload size (6291556 bytes)."
        );
        let second = size_error(replies.remove(0).try_recv().unwrap().unwrap());
        assert!(
            second.contains(&format!("({} bytes)", error.len())),
            "{second}"
        );
        assert_eq!(
            replies.remove(0).try_recv().unwrap().unwrap(),
            Outcome::Success(bytes::Bytes::from_static(b"\"fine\""))
        );
        match at_limit.try_recv().unwrap().unwrap() {
            Outcome::Success(body) => assert_eq!(body.len(), crate::MAX_RESPONSE_BYTES),
            other => panic!("an answer of exactly the limit is served, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_answer_too_large_to_skip_fails_its_invocation_and_breaks_the_channel() {
        let (shared, mut replies) = waiting_for(&[9, 10]);
        // Only a header: it announces more than the channel allows, and nothing follows.
        let mut stream = ((frame::MAX_PAYLOAD + 6) as u32).to_be_bytes().to_vec();
        stream.push(frame::RESULT);
        stream.extend_from_slice(&9u32.to_be_bytes());

        let broken = read_answers(&mut &stream[..], &shared).await.unwrap_err();
        assert!(
            matches!(broken, Broken::Frame(FrameError::TooLarge { limit, .. }) if limit == frame::MAX_PAYLOAD),
            "{broken:?}"
        );
        let message = size_error(replies.remove(0).try_recv().unwrap().unwrap());
        assert!(
            message.contains(&format!("({} bytes)", frame::MAX_PAYLOAD + 1)),
            "{message}"
        );
        // The other call is left to the exit handling, which tells it why.
        assert!(replies.remove(0).try_recv().is_err());
        assert!(shared.pending.lock().unwrap().contains_key(&10));
    }

    #[tokio::test]
    async fn a_frame_only_the_daemon_sends_breaks_the_channel() {
        let (shared, _replies) = waiting_for(&[1]);
        let stream = frame::encode_invoke(1, 0, "r", b"{}");
        let broken = read_answers(&mut &stream[..], &shared).await.unwrap_err();
        assert!(matches!(broken, Broken::UnexpectedKind(frame::INVOKE)));
    }
}
