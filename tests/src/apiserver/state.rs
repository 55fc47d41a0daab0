//! The server's shared state: the world (store plus the simulated cluster's private state) behind
//! one lock, and the settings every part reads.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use super::store::Store;

/// Everything the handlers and the simulated controllers share.
pub(crate) struct Shared {
    world: Mutex<World>,
    /// Woken after every change made through the API, so the simulated controllers react at once.
    pub changed: Notify,
    /// Bearer token → user name; empty = no authentication.
    pub tokens: HashMap<String, String>,
    pub pod_start_delay: Duration,
    pub pod_stop_delay: Option<Duration>,
    /// Becomes `true` when the server stops; open watches end.
    pub shutdown: watch::Receiver<bool>,
}

impl Shared {
    pub fn new(
        store: Store,
        tokens: HashMap<String, String>,
        pod_start_delay: Duration,
        pod_stop_delay: Option<Duration>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Shared {
            world: Mutex::new(World {
                store,
                forced_not_ready: BTreeSet::new(),
                terminated_instances: BTreeSet::new(),
                start_at: HashMap::new(),
                finish_at: HashMap::new(),
                marked_not_ready: BTreeSet::new(),
                controller_scale: HashMap::new(),
                external_change: false,
                evictions: Vec::new(),
                deletions: Vec::new(),
                next_ip: 10,
            }),
            changed: Notify::new(),
            tokens,
            pod_start_delay,
            pod_stop_delay,
            shutdown,
        }
    }

    /// Lock the world. A panic while it was held leaves it usable: every change is applied whole.
    pub fn world(&self) -> MutexGuard<'_, World> {
        self.world
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The store plus what the simulated kubelet, scheduler and node lifecycle keep to themselves.
pub(crate) struct World {
    pub store: Store,
    /// Nodes a test marked NotReady (`set_node_ready(name, false)`).
    pub forced_not_ready: BTreeSet<String>,
    /// EC2 instance ids the AWS model reports `terminated`.
    pub terminated_instances: BTreeSet<String>,
    /// Pod uid → when the simulated kubelet reports it Running.
    pub start_at: HashMap<String, Instant>,
    /// Pod uid → when the simulated kubelet finishes its termination and removes it.
    pub finish_at: HashMap<String, Instant>,
    /// Pods the node lifecycle marked not Ready because their node went NotReady (restored when it returns).
    pub marked_not_ready: BTreeSet<String>,
    /// Controller (or bare pod) uid → the scale the disruption controller assumes for it.
    pub controller_scale: HashMap<String, i32>,
    /// Set when something the simulation reads outside the store changed (readiness switch, AWS model).
    pub external_change: bool,
    /// Every eviction request: `namespace/name` and the HTTP status answered.
    pub evictions: Vec<(String, u16)>,
    /// Pods removed by a direct DELETE request (not eviction): `namespace/name`.
    pub deletions: Vec<String>,
    /// Counter for simulated pod IPs.
    pub next_ip: u32,
}
