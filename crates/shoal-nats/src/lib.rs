//! Cluster mode on NATS JetStream: the function registry in a key-value bucket, code blobs
//! in the object store, queues on work-queue streams, node heartbeats and schedule leases.
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

pub use async_nats;

pub mod queue;
#[cfg(feature = "testing")]
pub mod testing;

pub use queue::{JetStreamQueues, Options as QueueOptions};
