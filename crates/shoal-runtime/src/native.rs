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
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::frame::{self, Frame};
use crate::process::{self, SpawnSpec, Spawned};
use crate::sandbox;
use crate::{function_error_type, launch_error_from_json, Launch};

/// How long a runtime whose channel closed during start gets to exit on its own.
const EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(2);
/// Frames written in one batch at most (bytes), so one huge burst doesn't stall reads.
const MAX_WRITE_BATCH: usize = 1024 * 1024;

type Reply = oneshot::Sender<Result<Outcome, InstanceFailure>>;

struct Shared {
    instance: String,
    pid: u32,
    next_id: AtomicU32,
    pending: Mutex<HashMap<u32, Reply>>,
    /// Set (under the `pending` lock's protection, see `fail_all`) once the process is gone.
    closed: AtomicBool,
    writer: mpsc::UnboundedSender<Bytes>,
    exit: watch::Receiver<Option<String>>,
    kill: Arc<Notify>,
}

pub(crate) struct NativeInstance(Arc<Shared>);

pub(crate) async fn launch(
    start: Launch,
    node: &Path,
    bootstrap: &Path,
) -> Result<Arc<dyn InstanceHandle>, LaunchError> {
    start.prepare_scratch()?;
    // A connected pair, one end inherited by the runtime as a descriptor: no socket path
    // exists that another process could connect to first.
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()
        .and_then(|(ours, theirs)| {
            ours.set_nonblocking(true)?;
            Ok((UnixStream::from_std(ours)?, theirs))
        })
        .map_err(|e| start.error(ErrorType::Unknown, format!("creating the channel: {e}")))?;
    let runtime_dir = bootstrap.parent().unwrap_or(Path::new("/"));
    let plan = start.sandbox_plan(Some(runtime_dir), node)?;
    let bootstrap_arg = match &plan {
        Some(_) => Path::new(sandbox::RUNTIME_ROOT).join(bootstrap.file_name().unwrap_or_default()),
        None => bootstrap.to_owned(),
    };
    let mut env = start.env.clone();
    env.push(("SHOAL_CHANNEL_FD".into(), process::CHANNEL_FD.to_string()));
    env.push(("SHOAL_PROTOCOL".into(), frame::PROTOCOL_VERSION.to_string()));
    let args = vec![
        // V8's heap is capped at the function's memory; the process dies rather than swap.
        format!("--max-old-space-size={}", start.code.memory_mb),
        bootstrap_arg.display().to_string(),
    ];
    let spawned = process::spawn(
        SpawnSpec {
            program: node,
            args: &args,
            cwd: &start.code.code_dir,
            env,
            function: &start.code.function,
            instance: &start.request.instance_id,
            scratch: &start.scratch,
            cgroup: start.cgroup(),
            sandbox: plan,
            channel: Some(theirs.into()),
        },
        start.logs.clone(),
    )
    .map_err(|e| {
        start.error(
            ErrorType::Unknown,
            format!("starting {}: {e}", node.display()),
        )
    })?;

    let handshake = async {
        let (read, write) = ours.into_split();
        let mut reader = BufReader::with_capacity(256 * 1024, read);
        let first = frame::read_frame(&mut reader)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((reader, write, first))
    };
    let mut exit = spawned.exit.clone();
    let outcome = tokio::select! {
        r = handshake => r,
        _ = exit.wait_for(|e| e.is_some()) => Err(String::new()),
        _ = tokio::time::sleep(start.start_timeout) => {
            spawned.kill.notify_one();
            return Err(start.error(ErrorType::StartTimeout, format!(
                "instance did not become ready within {:?}", start.start_timeout)));
        }
    };
    let (reader, write, first) = match outcome {
        Ok((reader, write, Some(first))) => (reader, write, first),
        Ok((_, _, None)) | Err(_) => return Err(exited_early(&start, &spawned).await),
    };
    match first.kind {
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
    }
    let (writer, queue) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        instance: start.request.instance_id.clone(),
        pid: spawned.pid,
        next_id: AtomicU32::new(1),
        pending: Mutex::new(HashMap::new()),
        closed: AtomicBool::new(false),
        writer,
        exit: spawned.exit.clone(),
        kill: spawned.kill.clone(),
    });
    tokio::spawn(write_loop(write, queue, shared.kill.clone()));
    tokio::spawn(read_loop(reader, shared.clone()));
    tokio::spawn(fail_on_exit(shared.clone()));
    Ok(Arc::new(NativeInstance(shared)))
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
    loop {
        match frame::read_frame(&mut reader).await {
            Ok(Some(Frame {
                kind: frame::RESULT,
                id,
                payload,
            })) => shared.complete(id, Ok(Outcome::Success(payload))),
            Ok(Some(Frame {
                kind: frame::ERROR,
                id,
                payload,
            })) => {
                let error_type = function_error_type(&payload, "Error");
                shared.complete(
                    id,
                    Ok(Outcome::FunctionError {
                        error_type,
                        body: payload,
                    }),
                );
            }
            Ok(Some(frame)) => {
                tracing::warn!(instance = %shared.instance, kind = frame.kind, "unexpected frame from runtime; stopping it");
                shared.kill.notify_one();
                return;
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(instance = %shared.instance, error = %e, "broken native channel; stopping instance");
                shared.kill.notify_one();
                return;
            }
        }
    }
    // A runtime that closed its channel can do no more work. It is usually exiting: let
    // it, so its calls fail with its own exit reason; kill it only if it lingers.
    let exited = process::exit_reason(shared.exit.clone());
    if tokio::time::timeout(EXIT_GRACE, exited).await.is_err() {
        shared.kill.notify_one();
    }
}

async fn fail_on_exit(shared: Arc<Shared>) {
    let reason = process::exit_reason(shared.exit.clone()).await;
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
        let frame = frame::encode_invoke(
            id,
            invocation.deadline_epoch_ms,
            &invocation.request_id,
            &invocation.payload,
        );
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
        crate::procfs::resources(self.0.pid)
    }
}
