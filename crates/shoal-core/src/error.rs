//! The one error type of the platform's operations. Each transport maps it to its own
//! answer shape in one place; variants say whose fault it was (the caller's, the
//! function's, load, or the platform's own), which is what such a mapping needs.

use std::path::PathBuf;
use std::time::Duration;

use shoal_dispatch::{DispatchError, InstanceFailure, LaunchError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The caller's input.
    #[error("function {0} not found")]
    FunctionNotFound(String),
    #[error("the event is not valid JSON")]
    InvalidPayload(#[source] serde_json::Error),
    #[error("invocation type must be RequestResponse, Event or DryRun, not {0:?}")]
    InvalidInvocationType(String),
    #[error(transparent)]
    Archive(#[from] crate::ArchiveError),
    #[error("the archive has no shoal.toml at its top level")]
    MissingManifest,
    #[error(transparent)]
    Manifest(#[from] shoal_manifest::ManifestError),
    #[error("shoal.toml: function {function}: {reason}")]
    Unsupported { function: String, reason: String },
    /// A `Qualifier` that names no version or alias of the function.
    #[error("Function not found: {function}:{qualifier}")]
    QualifierNotFound { function: String, qualifier: String },
    /// An `Event` invoke naming a version other than the current one.
    #[error("Event invokes run {function}'s current version; {qualifier} names another one (invoke it with RequestResponse, or point the alias at the current version)")]
    QualifiedEvent { function: String, qualifier: String },
    #[error("{0}")]
    InvalidAlias(String),
    #[error("access key name {0:?} is not valid: use 1 to 64 letters, digits, '_', '.' or '-'")]
    InvalidKeyName(String),
    #[error("an access key named {0} already exists; remove it first (shoal keys rm {0})")]
    KeyExists(String),
    #[error("no access key named {0}")]
    KeyNotFound(String),
    #[error("shoal.toml: {0}")]
    RouteConflict(#[from] shoal_events::RouteError),

    // Load and lifecycle.
    #[error("too many requests queued for {function}; retry after {retry_after:?}")]
    Overloaded {
        function: String,
        retry_after: Duration,
    },
    #[error("the platform is shutting down")]
    ShuttingDown,
    /// The event store holds as much as it may: an `Event` invoke or a send is refused.
    #[error("the event store is full ({pending_messages} messages, {pending_bytes} bytes pending); retry later")]
    EventStoreFull {
        pending_messages: u64,
        pending_bytes: u64,
    },
    #[error(transparent)]
    Queue(shoal_queue::QueueError),
    #[error("opening the event store {}", path.display())]
    Events {
        path: PathBuf,
        #[source]
        source: shoal_queue::QueueError,
    },

    // The function's own failures.
    #[error("Task timed out after {:.2} seconds", .0.as_secs_f64())]
    FunctionTimeout(Duration),
    #[error(transparent)]
    InstanceFailed(InstanceFailure),
    #[error("function failed to start: {0}")]
    InitFailed(LaunchError),
    /// Only on an HTTP route: on the Invoke API a thrown error is a result.
    #[error("the handler threw {error_type}")]
    HandlerThrew { error_type: String },
    #[error("malformed proxy result from the function")]
    BadProxyResult(#[source] shoal_events::ResponseError),

    // The platform's own trouble: logged in full, never shown to clients.
    #[error("platform state")]
    Store(#[from] shoal_store::Error),
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the store at {} holds no functions but code/ holds {code_dirs} unpacked code \
         directories: the database may have been truncated or replaced; restore it, or \
         start with --allow-empty-store to begin empty",
        store.display()
    )]
    EmptyStore { store: PathBuf, code_dirs: usize },
    #[error("preparing the instance launcher")]
    Launcher(#[source] shoal_runtime::Error),
    #[error("a platform task failed")]
    Task(#[source] tokio::task::JoinError),
    /// The cluster: cut off (load: retry elsewhere), or its engine failed (internal).
    #[error(transparent)]
    Cluster(#[from] crate::ClusterError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(what: &'static str, path: &std::path::Path, source: std::io::Error) -> Error {
        Error::Io {
            what,
            path: path.to_owned(),
            source,
        }
    }

    /// True for the platform's own trouble (as opposed to the caller's input, load, or the
    /// function's failures): transports log these and answer with a stable message only.
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            Error::Store(_)
                | Error::Events { .. }
                | Error::Queue(shoal_queue::QueueError::Storage(_))
                | Error::Io { .. }
                | Error::EmptyStore { .. }
                | Error::Launcher(_)
                | Error::Task(_)
                | Error::Cluster(crate::ClusterError::Backend { .. })
        )
    }
}

impl From<DispatchError> for Error {
    fn from(error: DispatchError) -> Error {
        match error {
            DispatchError::NotFound(function) => Error::FunctionNotFound(function),
            DispatchError::Timeout(timeout) => Error::FunctionTimeout(timeout),
            DispatchError::Instance(failure) => Error::InstanceFailed(failure),
            DispatchError::InitFailed(launch) => Error::InitFailed(launch),
            DispatchError::Overloaded {
                function,
                retry_after,
            } => Error::Overloaded {
                function,
                retry_after,
            },
            DispatchError::ShuttingDown => Error::ShuttingDown,
        }
    }
}

/// The error and its sources in one sentence, for logs (never for clients when internal).
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
