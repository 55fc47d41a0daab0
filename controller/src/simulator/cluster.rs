//! The simulated cluster: an Auto Scaling group whose instances boot into nodes, pods that come
//! and go with demand, and a scheduler that binds pods to nodes that fit them by requests.
//!
//! With a warm pool (AWS's, `ec2-auto-scaling-warm-pools`): instances launched into the pool
//! run their slow first boot (billed), then stop and pay only their EBS volume; a scale-out takes
//! a stopped one first (a warm boot, `warm_boot_time_s`), and the group's own scale-in returns the
//! instance to the pool (`ReuseOnScaleIn`; a chosen TerminateInstanceInAutoScalingGroup, as the
//! AWS model does it, terminates). The pool holds the group's max size minus its desired capacity
//! (AWS's default when MaxGroupPreparedCapacity is unset), or `warm_pool_size`. Pool instances
//! are not part of desired capacity and not in the group's instance list, so the policy does not
//! see them.

use crate::policy::{self, Lifecycle, Resources};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::SimOptions;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NodeState {
    /// Instance launched; becomes a Ready node at `ready_at`.
    Booting {
        ready_at: i64,
    },
    Ready,
    /// Cordoned and evicted; the instance is gone at `gone_at`.
    Draining {
        gone_at: i64,
    },
}

#[derive(Debug, Clone)]
pub struct SimNode {
    pub id: u32,
    pub launched: i64,
    /// When the instance last started running (launch, or its start from the warm pool): each
    /// start is billed separately, per second with a 60-second minimum.
    pub started: i64,
    pub state: NodeState,
    pub requested: Resources,
    /// Next spot interruption (when spot interruptions are modelled).
    pub interrupt_at: Option<i64>,
    /// Leaving by the group's own scale-in (SetDesiredCapacity down): with a warm pool it goes
    /// back to the pool (ReuseOnScaleIn). A chosen termination ends the instance.
    pub scaled_in: bool,
}

impl SimNode {
    pub fn name(&self) -> String {
        format!("node-{:04}", self.id)
    }
    pub fn instance_id(&self) -> String {
        format!("i-{:08x}", self.id)
    }
}

/// An instance in the warm pool: warming (running, billed) until `warm_at`, stopped after.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pooled {
    pub id: u32,
    pub launched: i64,
    pub started: i64,
    pub warm_at: i64,
}

impl Pooled {
    /// Seconds it has run (warming) by `t`: what EC2 bills for its stay in the pool.
    fn ran_by(&self, t: i64) -> Option<i64> {
        let ran = t.min(self.warm_at) - self.started;
        (ran > 0).then_some(ran)
    }
}

#[derive(Debug, Clone)]
pub struct SimPod {
    pub id: u64,
    pub requests: Resources,
    pub node: Option<u32>,
    /// When the pod started waiting to be scheduled.
    pub waiting_since: i64,
    pub volume: Option<LocalVolume>,
}

/// A node-local PersistentVolume (K3s's `local-path`, WaitForFirstConsumer): provisioned on
/// the node the pod first runs on, after which the pod can run nowhere else.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LocalVolume {
    /// Not provisioned yet: any node will do.
    Unbound,
    On(u32),
    /// Its node was removed: the data is gone and the pod can never run again.
    Lost,
}

impl SimPod {
    /// Whether the pod is one of the demand's interchangeable replicas.
    fn replica(&self) -> bool {
        self.volume.is_none()
    }
}

/// The whole simulated world for one policy run.
pub struct Cluster {
    pub opts: SimOptions,
    pub nodes: Vec<SimNode>,
    pub pods: Vec<SimPod>,
    pub desired: u32,
    next_node: u32,
    next_pod: u64,
    rng: ChaCha8Rng,
    /// Seconds each pod waited before it was bound (one entry per scheduling).
    pub waits: Vec<i64>,
    pub scale_actions: u32,
    pub volumes_lost: u32,
    /// Pods evicted because the autoscaler removed their node (spot interruptions not counted).
    pub evictions: u32,
    /// Seconds each removed instance ran, launch to gone (`finish` adds those still running).
    pub lifetimes: Vec<i64>,
    /// Seconds of each running stretch of an instance, start to stop (what EC2 bills).
    pub billed: Vec<i64>,
    /// The warm pool (empty and never filled without one).
    pub pool: Vec<Pooled>,
    warm_pool: bool,
}

impl Cluster {
    /// A cluster with `nodes` Ready nodes, as if it had been running before the trace starts.
    pub fn new(opts: SimOptions, nodes: u32, seed: u64) -> Cluster {
        let mut c = Cluster {
            opts,
            nodes: Vec::new(),
            pods: Vec::new(),
            desired: 0,
            next_node: 0,
            next_pod: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
            waits: Vec::new(),
            scale_actions: 0,
            volumes_lost: 0,
            evictions: 0,
            lifetimes: Vec::new(),
            billed: Vec::new(),
            pool: Vec::new(),
            warm_pool: false,
        };
        for _ in 0..c.opts.local_volume_pods() {
            c.add_pod(0, Some(LocalVolume::Unbound));
        }
        for _ in 0..nodes {
            c.launch(0);
            if let Some(n) = c.nodes.last_mut() {
                n.state = NodeState::Ready;
            }
        }
        c.desired = nodes;
        c
    }

    /// Gives the group a warm pool (before the trace starts: it is filled at once, warm).
    pub fn with_warm_pool(mut self) -> Cluster {
        self.warm_pool = true;
        for _ in 0..self.pool_target() {
            let id = self.next_id();
            self.pool.push(Pooled {
                id,
                launched: 0,
                started: 0,
                warm_at: 0,
            });
        }
        self
    }

    fn next_id(&mut self) -> u32 {
        self.next_node += 1;
        self.next_node - 1
    }

    fn boot_time(&mut self, base: i64, jitter: i64) -> i64 {
        let j = if jitter > 0 {
            self.rng.random_range(-jitter..=jitter)
        } else {
            0
        };
        (base + j).max(1)
    }

    /// How many instances the warm pool keeps: `warm_pool_size`, or the group's max size minus
    /// its desired capacity (AWS's default).
    fn pool_target(&self) -> usize {
        if !self.warm_pool {
            return 0;
        }
        let size = self
            .opts
            .warm_pool_size
            .unwrap_or_else(|| self.opts.max.saturating_sub(self.desired));
        size as usize
    }

    /// A new instance for the group: a warmed one from the pool if one is stopped and ready,
    /// else a cold launch.
    fn launch(&mut self, now: i64) {
        let warmed = self.pool.iter().position(|p| p.warm_at <= now);
        let (id, launched, boot) = match warmed {
            Some(i) => {
                let p = self.pool.swap_remove(i);
                self.billed.extend(p.ran_by(now)); // its warming boot
                let (base, jitter) = (self.opts.warm_boot_time_s, self.opts.warm_boot_jitter_s);
                (p.id, p.launched, self.boot_time(base, jitter))
            }
            None => {
                let (base, jitter) = (self.opts.boot_time_s, self.opts.boot_jitter_s);
                (self.next_id(), now, self.boot_time(base, jitter))
            }
        };
        let interrupt_at = self.next_interruption(now);
        self.nodes.push(SimNode {
            id,
            launched,
            started: now,
            state: NodeState::Booting {
                ready_at: now + boot,
            },
            requested: Resources::ZERO,
            interrupt_at,
            scaled_in: false,
        });
    }

    /// Keeps the pool at its size: launches instances into it (they warm for a cold boot, then
    /// stop), or terminates stopped ones beyond it.
    fn refill_pool(&mut self, now: i64) {
        let target = self.pool_target();
        while self.pool.len() < target {
            let (base, jitter) = (self.opts.boot_time_s, self.opts.boot_jitter_s);
            let warm_at = now + self.boot_time(base, jitter);
            let id = self.next_id();
            self.pool.push(Pooled {
                id,
                launched: now,
                started: now,
                warm_at,
            });
        }
        while self.pool.len() > target {
            // The newest first: any one will do, and this one has billed the least.
            if let Some(p) = self.pool.pop() {
                self.billed.extend(p.ran_by(now));
                self.lifetimes.push(now - p.launched);
            }
        }
    }

    /// Pool instances warming (running) and stopped now.
    pub fn pool_warming_and_stopped(&self, now: i64) -> (usize, usize) {
        let warming = self.pool.iter().filter(|p| p.warm_at > now).count();
        (warming, self.pool.len() - warming)
    }

    fn next_interruption(&mut self, now: i64) -> Option<i64> {
        let rate = self.opts.spot_interruptions_per_node_hour;
        (rate > 0.0).then(|| {
            let u: f64 = self.rng.random_range(f64::EPSILON..1.0);
            now + (-u.ln() / rate * 3600.0) as i64
        })
    }

    /// Instances that count toward desired capacity (booting or Ready).
    pub fn live(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| !matches!(n.state, NodeState::Draining { .. }))
            .count()
    }

    /// Sets the group's desired capacity: launches instances, or lets the "ASG" pick victims
    /// (a random live instance, as AWS's default termination policy is opaque to the user).
    pub fn set_desired(&mut self, desired: u32, now: i64) {
        if desired == self.desired {
            return;
        }
        self.scale_actions += 1;
        self.desired = desired;
        while (self.live() as u32) < desired {
            self.launch(now);
        }
        while (self.live() as u32) > desired {
            let live: Vec<u32> = self
                .nodes
                .iter()
                .filter(|n| !matches!(n.state, NodeState::Draining { .. }))
                .map(|n| n.id)
                .collect();
            let pick = live[self.rng.random_range(0..live.len())];
            self.evictions += self.drain(pick, now);
            if let Some(n) = self.nodes.iter_mut().find(|n| n.id == pick) {
                n.scaled_in = true;
            }
        }
    }

    /// TerminateInstanceInAutoScalingGroup(ShouldDecrementDesiredCapacity=true) of a chosen node.
    pub fn terminate(&mut self, node: u32, now: i64) {
        if self
            .nodes
            .iter()
            .any(|n| n.id == node && !matches!(n.state, NodeState::Draining { .. }))
        {
            self.scale_actions += 1;
            self.desired = self.desired.saturating_sub(1);
            self.evictions += self.drain(node, now);
        }
    }

    /// Cordons the node and evicts its pods; they wait for a place again. Returns how many.
    fn drain(&mut self, node: u32, now: i64) -> u32 {
        let gone_at = now + self.opts.drain_time_s;
        if let Some(n) = self.nodes.iter_mut().find(|n| n.id == node) {
            // A node that never finished booting has nothing to drain.
            n.state = match n.state {
                NodeState::Booting { .. } => NodeState::Draining { gone_at: now },
                _ => NodeState::Draining { gone_at },
            };
            n.requested = Resources::ZERO;
        }
        let mut evicted = 0;
        for p in self.pods.iter_mut().filter(|p| p.node == Some(node)) {
            p.node = None;
            p.waiting_since = now;
            evicted += 1;
        }
        evicted
    }

    fn add_pod(&mut self, now: i64, volume: Option<LocalVolume>) {
        self.pods.push(SimPod {
            id: self.next_pod,
            requests: self.opts.pod,
            node: None,
            waiting_since: now,
            volume,
        });
        self.next_pod += 1;
    }

    /// Creates or deletes replicas so the workload requests `cpu` cores (and `memory` GiB);
    /// the pods with local volumes stay as they are.
    pub fn set_demand(&mut self, cpu: f64, memory: Option<f64>, now: i64) {
        let want = super::pods_for(&self.opts, cpu, memory);
        let replicas = |pods: &[SimPod]| pods.iter().filter(|p| p.replica()).count();
        while replicas(&self.pods) < want {
            self.add_pod(now, None);
        }
        while replicas(&self.pods) > want {
            // Like a ReplicaSet scaling down: unscheduled pods go first, then a random one.
            let i = match self
                .pods
                .iter()
                .rposition(|p| p.replica() && p.node.is_none())
            {
                Some(i) => i,
                None => {
                    let bound: Vec<usize> = (0..self.pods.len())
                        .filter(|&i| self.pods[i].replica())
                        .collect();
                    bound[self.rng.random_range(0..bound.len())]
                }
            };
            let p = self.pods.swap_remove(i);
            if let Some(n) = p
                .node
                .and_then(|id| self.nodes.iter_mut().find(|n| n.id == id))
            {
                n.requested = n.requested.minus(p.requests);
            }
        }
    }

    /// Advances node lifecycles to `now`: boots finish, drains finish, spot interruptions hit.
    pub fn advance(&mut self, now: i64) {
        let mut interrupted = Vec::new();
        for n in &mut self.nodes {
            if let NodeState::Booting { ready_at } = n.state
                && ready_at <= now
            {
                n.state = NodeState::Ready;
            }
            if n.interrupt_at.is_some_and(|t| t <= now) && n.state == NodeState::Ready {
                n.interrupt_at = None;
                interrupted.push(n.id);
            }
        }
        for id in interrupted {
            // Spot: two minutes' notice, and the ASG replaces the instance (desired unchanged).
            let notice = self.opts.drain_time_s.min(120);
            self.drain(id, now);
            if let Some(n) = self.nodes.iter_mut().find(|n| n.id == id) {
                n.state = NodeState::Draining {
                    gone_at: now + notice,
                };
            }
            self.launch(now);
        }
        let gone: Vec<u32> = self
            .nodes
            .iter()
            .filter(|n| matches!(n.state, NodeState::Draining { gone_at } if gone_at <= now))
            .map(|n| n.id)
            .collect();
        let mut room = self.pool_target().saturating_sub(self.pool.len());
        for n in self.nodes.iter().filter(|n| gone.contains(&n.id)) {
            if let NodeState::Draining { gone_at } = n.state {
                self.billed.push(gone_at - n.started);
                if n.scaled_in && room > 0 {
                    // ReuseOnScaleIn: the instance stops and goes back to the pool.
                    room -= 1;
                    self.pool.push(Pooled {
                        id: n.id,
                        launched: n.launched,
                        started: gone_at,
                        warm_at: gone_at,
                    });
                } else {
                    self.lifetimes.push(gone_at - n.launched);
                }
            }
        }
        for p in &mut self.pods {
            if let Some(LocalVolume::On(id)) = p.volume
                && gone.contains(&id)
            {
                p.volume = Some(LocalVolume::Lost);
                self.volumes_lost += 1;
            }
        }
        self.nodes.retain(|n| !gone.contains(&n.id));
        self.refill_pool(now);
    }

    /// Binds waiting pods, oldest first, to the Ready node with the most free room that fits
    /// them (the default scheduler's LeastAllocated scoring spreads pods like this).
    pub fn schedule(&mut self, now: i64) {
        let alloc = self.opts.allocatable;
        let mut waiting: Vec<usize> = (0..self.pods.len())
            .filter(|&i| self.pods[i].node.is_none())
            .collect();
        if waiting.is_empty() {
            return;
        }
        waiting.sort_by_key(|&i| (self.pods[i].waiting_since, self.pods[i].id));
        for i in waiting {
            let (req, volume) = (self.pods[i].requests, self.pods[i].volume);
            if volume == Some(LocalVolume::Lost) {
                continue;
            }
            let best = self
                .nodes
                .iter_mut()
                .filter(|n| n.state == NodeState::Ready && req.fits_in(alloc.minus(n.requested)))
                .filter(|n| !matches!(volume, Some(LocalVolume::On(id)) if id != n.id))
                .min_by(|a, b| {
                    a.requested
                        .dominant_share(alloc)
                        .total_cmp(&b.requested.dominant_share(alloc))
                        .then(a.id.cmp(&b.id))
                });
            if let Some(n) = best {
                n.requested = n.requested.plus(req);
                let p = &mut self.pods[i];
                p.node = Some(n.id);
                if p.volume == Some(LocalVolume::Unbound) {
                    p.volume = Some(LocalVolume::On(n.id));
                }
                self.waits.push(now - p.waiting_since);
            }
        }
    }

    /// At the end of the trace: the instances still running count their lifetime up to `end`.
    pub fn finish(&mut self, end: i64) {
        let running = self.nodes.iter().map(|n| end - n.launched);
        self.lifetimes.extend(running);
        self.billed
            .extend(self.nodes.iter().map(|n| end - n.started));
        let pooled = self.pool.iter();
        self.lifetimes
            .extend(pooled.clone().map(|p| end - p.launched));
        self.billed.extend(pooled.filter_map(|p| p.ran_by(end)));
    }

    /// Instances booting and draining now.
    pub fn booting_and_draining(&self) -> (usize, usize) {
        self.nodes.iter().fold((0, 0), |(b, d), n| match n.state {
            NodeState::Booting { .. } => (b + 1, d),
            NodeState::Draining { .. } => (b, d + 1),
            NodeState::Ready => (b, d),
        })
    }

    pub fn pending(&self) -> impl Iterator<Item = &SimPod> {
        self.pods.iter().filter(|p| p.node.is_none())
    }

    pub fn ready_nodes(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.state == NodeState::Ready)
            .count()
    }

    /// Earliest node event after `now` (boot done, drain done, interruption, a pool instance
    /// stopping), if any.
    pub fn next_event(&self, now: i64) -> Option<i64> {
        self.nodes
            .iter()
            .flat_map(|n| {
                let own = match n.state {
                    NodeState::Booting { ready_at } => Some(ready_at),
                    NodeState::Draining { gone_at } => Some(gone_at),
                    NodeState::Ready => None,
                };
                [own, n.interrupt_at]
            })
            .chain(self.pool.iter().map(|p| Some(p.warm_at)))
            .flatten()
            .filter(|t| *t > now)
            .min()
    }

    /// The cluster as the controller would observe it, for the real policy.
    pub fn observe(&self, usage: policy::Usage, group: &policy::Group) -> policy::Observation {
        let alloc = self.opts.allocatable;
        let mut nodes: Vec<policy::Node> = Vec::new();
        let mut index = std::collections::HashMap::new();
        let mut instances = Vec::new();
        for n in &self.nodes {
            let lifecycle = match n.state {
                NodeState::Booting { .. } => Lifecycle::Launching,
                NodeState::Ready => Lifecycle::InService,
                NodeState::Draining { .. } => Lifecycle::Terminating,
            };
            instances.push(policy::Instance {
                id: n.instance_id(),
                lifecycle,
                // The controller first sees it launching when it starts (from the pool, too).
                first_seen: n.started,
                ever_ready: matches!(n.state, NodeState::Ready | NodeState::Draining { .. }),
            });
            if matches!(n.state, NodeState::Booting { .. }) {
                continue; // not registered with Kubernetes yet
            }
            index.insert(n.id, nodes.len());
            nodes.push(policy::Node {
                name: n.name(),
                instance_id: Some(n.instance_id()),
                ready: true,
                unschedulable: matches!(n.state, NodeState::Draining { .. }),
                tainted: false,
                control_plane: false,
                scale_down_disabled: false,
                allocatable: alloc,
                pods: Vec::new(),
                not_ready_since: None,
            });
        }
        let view = |p: &SimPod| policy::Pod {
            namespace: "default".into(),
            name: format!("pod-{}", p.id),
            requests: p.requests,
            daemonset: false,
            mirror: false,
            not_safe_to_evict: false,
        };
        for p in &self.pods {
            if let Some(&i) = p.node.and_then(|id| index.get(&id)) {
                nodes[i].pods.push(view(p));
            }
        }
        let pending = self.pending().map(view).collect();
        policy::Observation {
            usage,
            nodes,
            pending,
            groups: vec![policy::Group {
                desired: self.desired,
                instances,
                ..group.clone()
            }],
        }
    }

    /// Node id from a node name produced by `observe`.
    pub fn node_id(name: &str) -> Option<u32> {
        name.strip_prefix("node-")?.parse().ok()
    }
}
