//! Node heartbeats and call placement. Every node writes its entry (addresses, host
//! budget, and per function the room its pool has) to the key-value bucket `shoal_nodes`
//! under its name every [`HEARTBEAT`], and watches the bucket for everyone's. An entry not
//! refreshed for [`EXPIRY`] (timed by this node's clock at arrival, so nodes' clocks need
//! not agree) is a node gone: it gets no more calls.
//!
//! Placement (`Nodes::place`) packs across the cluster: a call stays here while this
//! node has a free slot; otherwise it goes to the live peer advertising the most free
//! slots (less the calls this node sent it since its last heartbeat); when no node has
//! room, to the function's *home* node — highest rendezvous hash of (node, function) over
//! the live nodes that run it — which queues it and starts instances; once the home is at
//! its `max_instances` (or its host budget), to the next node in that order. So a cold
//! burst spread over many nodes starts instances in one place, about ceil(N / limit).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use shoal_api::{ClusterReport, NodeLoad, NodeReport};
use shoal_core::{ClusterError, Peer, Placement, Platform};
use shoal_dispatch::Room;

use crate::{Config, Result};

pub(crate) const BUCKET: &str = "shoal_nodes";
/// How often a node writes its heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A heartbeat older than this means the node is gone; and a node whose own heartbeat
/// has not been written for this long stops taking work (it is gone to the others).
pub const EXPIRY: Duration = Duration::from_secs(3);

/// One node's heartbeat, as written to the bucket.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Beat {
    name: String,
    gateway: String,
    control: String,
    /// The sender's clock, for people reading the bucket; expiry uses arrival time.
    sent_at_ms: u64,
    load: NodeLoad,
}

struct Seen {
    beat: Beat,
    at: Instant,
    /// Counts heartbeats, so forwards sent before the latest one stop counting against it.
    epoch: u64,
}

/// Calls this node forwarded to a peer since that peer's last heartbeat, per function.
#[derive(Default)]
struct Sent {
    epoch: u64,
    calls: HashMap<String, u32>,
}

pub(crate) struct Nodes {
    kv: kv::Store,
    me: String,
    gateway: String,
    control: String,
    seen: Mutex<HashMap<String, Seen>>,
    sent: Arc<Mutex<HashMap<String, Sent>>>,
    /// When this node's heartbeat was last written successfully.
    reported: Mutex<Option<Instant>>,
}

impl Nodes {
    pub(crate) async fn open(js: &jetstream::Context, config: &Config) -> Result<Arc<Nodes>> {
        // Entries of nodes gone for good leave the bucket after a minute.
        let kv = crate::kv_bucket(
            js,
            BUCKET,
            "shoal node heartbeats",
            Duration::from_secs(60),
            config.replicas,
        )
        .await?;
        Ok(Arc::new(Nodes {
            kv,
            me: config.node.clone(),
            gateway: config.gateway.clone(),
            control: config.control.clone(),
            seen: Mutex::new(HashMap::new()),
            sent: Arc::new(Mutex::new(HashMap::new())),
            reported: Mutex::new(None),
        }))
    }

    /// Write this node's heartbeat once.
    pub(crate) async fn beat(&self, platform: &Platform) {
        let beat = Beat {
            name: self.me.clone(),
            gateway: self.gateway.clone(),
            control: self.control.clone(),
            sent_at_ms: shoal_core::now_ms(),
            load: platform.node_load(),
        };
        let Ok(value) = serde_json::to_vec(&beat) else {
            return;
        };
        match tokio::time::timeout(EXPIRY, self.kv.put(&self.me, value.into())).await {
            Ok(Ok(_)) => {
                let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
                if reported.is_none_or(|at| at.elapsed() > EXPIRY) {
                    tracing::info!(node = %self.me, "heartbeat written: taking work");
                }
                *reported = Some(Instant::now());
            }
            Ok(Err(e)) => tracing::warn!(node = %self.me, error = %e, "writing the heartbeat"),
            Err(_) => tracing::warn!(node = %self.me, "writing the heartbeat timed out"),
        }
        // This node's own entry also arrives through the watch; seeing it here too keeps
        // `status` right while the watch reconnects.
        self.seen_beat(beat);
    }

    /// Heartbeats every [`HEARTBEAT`] until the platform is gone.
    pub(crate) async fn heartbeats(self: Arc<Self>, platform: Weak<Platform>) {
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(platform) = platform.upgrade() else {
                return;
            };
            self.beat(&platform).await;
        }
    }

    /// Follow every node's heartbeat.
    pub(crate) async fn watch(self: Arc<Self>) {
        loop {
            match self.kv.watch_with_history(">").await {
                Ok(mut watch) => {
                    while let Some(entry) = watch.next().await {
                        let Ok(entry) = entry else { break };
                        if entry.operation == kv::Operation::Put {
                            if let Ok(beat) = serde_json::from_slice::<Beat>(&entry.value) {
                                self.seen_beat(beat);
                            }
                        } else {
                            self.seen
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .remove(&entry.key);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "watching node heartbeats"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    fn seen_beat(&self, beat: Beat) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let epoch = seen.get(&beat.name).map_or(0, |s| s.epoch) + 1;
        self.sent.lock().unwrap_or_else(|e| e.into_inner()).insert(
            beat.name.clone(),
            Sent {
                epoch,
                calls: HashMap::new(),
            },
        );
        seen.insert(
            beat.name.clone(),
            Seen {
                beat,
                at: Instant::now(),
                epoch,
            },
        );
    }

    /// Remove this node's heartbeat (a clean leave).
    pub(crate) async fn leave(&self) {
        *self.reported.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let _ = tokio::time::timeout(EXPIRY, self.kv.delete(&self.me)).await;
    }

    /// Whether this node may take work: its heartbeat was written within [`EXPIRY`].
    fn reporting(&self) -> Result<(), ClusterError> {
        let reported = *self.reported.lock().unwrap_or_else(|e| e.into_inner());
        match reported {
            Some(at) if at.elapsed() < EXPIRY => Ok(()),
            Some(at) => Err(ClusterError::CutOff(format!(
                "no heartbeat written for {:.1} s",
                at.elapsed().as_secs_f64()
            ))),
            None => Err(ClusterError::CutOff("not joined".to_owned())),
        }
    }

    pub(crate) fn place(
        &self,
        function: &str,
        local: Option<&Room>,
    ) -> Result<Placement, ClusterError> {
        self.reporting()?;
        let Some(local) = local else {
            // Not deployed here (yet): answered here, as one machine would.
            return Ok(Placement::Local);
        };
        if local.free() > 0 {
            return Ok(Placement::Local);
        }
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        // Live peers running the function, with their room less what we sent them since
        // their last heartbeat.
        let mut best: Option<(&Seen, u32)> = None;
        // Who could start an instance for it: this node, and peers below their bounds.
        let mut starters: Vec<(&str, bool)> = vec![(
            self.me.as_str(),
            local.instances < local.max_instances
                && local.busy < local.max_instances.saturating_mul(local.per_instance),
        )];
        for (name, node) in seen.iter() {
            if *name == self.me || node.at.elapsed() >= EXPIRY {
                continue;
            }
            let Some(load) = node.beat.load.functions.iter().find(|f| f.name == function) else {
                continue;
            };
            let already = sent
                .get(name)
                .filter(|s| s.epoch == node.epoch)
                .and_then(|s| s.calls.get(function))
                .copied()
                .unwrap_or(0);
            let free = load.free.saturating_sub(already);
            if free > 0 && best.is_none_or(|(_, f)| free > f) {
                best = Some((node, free));
            }
            let can_start = load.instances < load.max_instances
                && node.beat.load.instances < node.beat.load.max_instances
                && load.busy.saturating_add(already)
                    < load.max_instances.saturating_mul(load.per_instance.max(1));
            starters.push((name, can_start));
        }
        let target = match best {
            Some((node, _)) => node,
            None => {
                // No free slot anywhere: the first node in the function's rendezvous order
                // that can still start an instance takes it (its home, unless the home is
                // at its bounds); if none can, the home queues it.
                starters.sort_by_key(|(node, _)| std::cmp::Reverse(rendezvous(node, function)));
                let chosen = starters
                    .iter()
                    .find(|(_, can)| *can)
                    .or(starters.first())
                    .map_or(self.me.as_str(), |(node, _)| *node);
                if chosen == self.me {
                    return Ok(Placement::Local);
                }
                &seen[chosen]
            }
        };
        drop(sent);
        let guard = SentGuard::new(
            self.sent.clone(),
            target.beat.name.clone(),
            target.epoch,
            function.to_owned(),
        );
        Ok(Placement::Forward(Peer {
            node: target.beat.name.clone(),
            gateway: target.beat.gateway.clone(),
            control: target.beat.control.clone(),
            guard: Box::new(guard),
        }))
    }

    pub(crate) fn report(&self) -> ClusterReport {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut nodes: Vec<NodeReport> = seen
            .values()
            .map(|s| NodeReport {
                name: s.beat.name.clone(),
                gateway: s.beat.gateway.clone(),
                control: s.beat.control.clone(),
                age_ms: s.at.elapsed().as_millis() as u64,
                alive: s.at.elapsed() < EXPIRY,
                load: s.beat.load.clone(),
            })
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        ClusterReport {
            node: self.me.clone(),
            expiry_ms: EXPIRY.as_millis() as u64,
            nodes,
        }
    }
}

/// Counts one forwarded call against its peer's advertised room until dropped.
struct SentGuard {
    sent: Arc<Mutex<HashMap<String, Sent>>>,
    node: String,
    epoch: u64,
    function: String,
}

impl SentGuard {
    fn new(
        sent: Arc<Mutex<HashMap<String, Sent>>>,
        node: String,
        epoch: u64,
        function: String,
    ) -> SentGuard {
        {
            let mut all = sent.lock().unwrap_or_else(|e| e.into_inner());
            let entry = all.entry(node.clone()).or_default();
            if entry.epoch == epoch {
                *entry.calls.entry(function.clone()).or_default() += 1;
            }
        }
        SentGuard {
            sent,
            node,
            epoch,
            function,
        }
    }
}

impl Drop for SentGuard {
    fn drop(&mut self) {
        let mut all = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = all.get_mut(&self.node) {
            if entry.epoch == self.epoch {
                if let Some(n) = entry.calls.get_mut(&self.function) {
                    *n = n.saturating_sub(1);
                }
            }
        }
    }
}

/// Rendezvous (highest random weight) score of `node` for `function`: FNV-1a over both,
/// finished with splitmix64 so near names spread. Stable across builds and machines.
fn rendezvous(node: &str, function: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in node.bytes().chain([0]).chain(function.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

#[cfg(test)]
mod tests {
    use super::rendezvous;

    #[test]
    fn homes_spread_over_nodes_and_stay_put_when_another_node_leaves() {
        let nodes = ["a", "b", "c"];
        fn home(nodes: &[&'static str], f: &str) -> &'static str {
            nodes
                .iter()
                .max_by_key(|n| rendezvous(n, f))
                .expect("nodes")
        }
        let functions: Vec<String> = (0..300).map(|i| format!("fn-{i}")).collect();
        for node in nodes {
            let homed = functions.iter().filter(|f| home(&nodes, f) == node).count();
            assert!(
                (60..=140).contains(&homed),
                "{node} is home of {homed} of 300"
            );
        }
        // Only functions homed on the leaver move.
        for f in &functions {
            let before = home(&nodes, f);
            if before != "c" {
                assert_eq!(home(&["a", "b"], f), before, "{f} moved");
            }
        }
    }
}
