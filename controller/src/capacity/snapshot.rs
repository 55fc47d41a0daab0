//! The cluster snapshot (cluster-autoscaler's `simulator/clustersnapshot`): nodes with their
//! pods, changed in place (a pod placed, a node removed, a template node added) and reverted
//! cheaply through a journal, with the one question every user asks: can this pod go there?
//!
//! Indexes keep the affinity and spread filters off O(pods²): every label selector that a pod
//! term uses is interned once, with the number of matching pods per node kept current as pods
//! come and go, and selectors are found from a pod's labels through a `key=value` index.

use super::filters::{self, Prepared, Reason};
use super::node::NodeInfo;
use super::pod::{AffinityTerm, HostPort, NsSet, PodSpec};
use super::resources::Resources;
use super::selector::Selector;
use super::volume::{Catalog, VolumeNeed};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// A fast non-cryptographic hasher (the multiply-rotate of rustc's FxHash) for the snapshot's
/// internal maps: keys are node ids, interned hashes and label strings, none attacker-chosen
/// in a way that matters here, and SipHash dominated building the snapshot.
#[derive(Default, Clone, Copy)]
pub(crate) struct Fx(u64);

impl Fx {
    #[inline]
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for Fx {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            self.add(u64::from_le_bytes(b));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(b));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

pub(crate) type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<Fx>>;
pub(crate) type FxSet<K> = HashSet<K, BuildHasherDefault<Fx>>;

pub type NodeId = usize;
pub type PodId = usize;
pub(crate) type SelId = usize;
pub(crate) type TopoId = usize;
pub(crate) type ExId = usize;

/// A node in the snapshot: the node, its pods and what they use.
#[derive(Debug, Clone)]
pub(crate) struct NodeState {
    pub info: NodeInfo,
    pub removed: bool,
    pub pods: Vec<PodId>,
    pub requested: Resources,
    pub pod_count: i64,
    pub ports: Vec<HostPort>,
}

#[derive(Debug, Clone)]
pub(crate) struct PodSlot {
    pub spec: Arc<PodSpec>,
    pub node: NodeId,
    pub alive: bool,
    /// Interned selectors this pod matches.
    pub sels: Vec<SelId>,
    /// Its required anti-affinity terms, interned.
    pub anti: Vec<ExId>,
}

/// Pods matching (per node): live ones, and terminating ones (which inter-pod affinity
/// counts and topology spread skips).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Count {
    pub live: u32,
    pub terminating: u32,
}

/// An interned selector: a conjunction of (namespaces, label selector) terms.
#[derive(Debug, Clone)]
pub(crate) struct Sel {
    pub terms: Vec<(NsSet, Selector)>,
    pub counts: FxMap<NodeId, Count>,
    /// Existing pods' anti-affinity terms with exactly this (namespaces, selector).
    pub ex_terms: Vec<ExId>,
}

impl Sel {
    fn matches(&self, pod: &PodSpec) -> bool {
        self.terms
            .iter()
            .all(|(ns, sel)| ns.contains(&pod.namespace) && sel.matches(&pod.labels))
    }
}

/// A required anti-affinity term of pods in the snapshot, with where its holders run.
#[derive(Debug, Clone)]
pub(crate) struct ExTerm {
    pub topo: TopoId,
    pub holders: FxMap<NodeId, u32>,
}

/// A topology key: each node's value of that label, interned.
#[derive(Debug, Clone)]
pub(crate) struct Topo {
    pub key: String,
    pub node_val: Vec<Option<u32>>,
    values: FxMap<String, u32>,
}

impl Topo {
    fn value_of(&mut self, info: &NodeInfo) -> Option<u32> {
        let v = info.labels.get(&self.key)?;
        let next = self.values.len() as u32;
        Some(*self.values.entry(v.clone()).or_insert(next))
    }
}

#[derive(Debug, Clone)]
enum Undo {
    PodAdded(PodId),
    PodRemoved(PodId),
    NodeAdded(NodeId),
    NodeRemoved(NodeId),
    PvClaimed(String),
}

/// Why a pod has no node: the scheduler's "0/N nodes are available: ..." summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unplaced {
    pub nodes: usize,
    /// Reason → number of nodes that gave it.
    pub reasons: BTreeMap<String, usize>,
}

impl std::fmt::Display for Unplaced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "0/{} nodes are available", self.nodes)?;
        let mut parts: Vec<(&String, &usize)> = self.reasons.iter().collect();
        parts.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (i, (why, n)) in parts.iter().enumerate() {
            f.write_str(if i == 0 { ": " } else { ", " })?;
            write!(f, "{n} {why}")?;
        }
        Ok(())
    }
}

/// The cluster as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub(crate) nodes: Vec<NodeState>,
    pub(crate) pods: Vec<PodSlot>,
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) sels: Vec<Sel>,
    /// Hash of a selector's canonical terms → the selectors with that hash.
    sel_ids: FxMap<u64, Vec<SelId>>,
    by_label: FxMap<String, FxMap<String, Vec<SelId>>>,
    by_key: FxMap<String, Vec<SelId>>,
    general: Vec<SelId>,
    pub(crate) ex_terms: Vec<ExTerm>,
    ex_ids: FxMap<AffinityTerm, ExId>,
    pub(crate) topos: Vec<Topo>,
    topo_ids: FxMap<String, TopoId>,
    pub(crate) claimed_pvs: HashSet<String>,
    by_name: FxMap<String, NodeId>,
    /// Pods by label (`key` → `value` → pods), built the first time a selector is interned
    /// after the snapshot was built, so interning one finds its pods without a full scan.
    /// Entries of removed pods stay (they may come back on revert); matches are re-checked.
    pod_index: Option<FxMap<String, FxMap<String, Vec<PodId>>>>,
    journal: Vec<Undo>,
    marks: Vec<usize>,
}

impl Snapshot {
    /// A snapshot of `nodes` with the bound `pods` on them (`node_name` names the node; pods
    /// on nodes not in the list are returned, not placed).
    pub fn new(
        nodes: Vec<NodeInfo>,
        pods: Vec<Arc<PodSpec>>,
        catalog: Arc<Catalog>,
    ) -> (Snapshot, Vec<Arc<PodSpec>>) {
        let mut s = Snapshot {
            nodes: Vec::with_capacity(nodes.len()),
            pods: Vec::with_capacity(pods.len()),
            catalog,
            sels: Vec::new(),
            sel_ids: FxMap::default(),
            by_label: FxMap::default(),
            by_key: FxMap::default(),
            general: Vec::new(),
            ex_terms: Vec::new(),
            ex_ids: FxMap::default(),
            topos: Vec::new(),
            topo_ids: FxMap::default(),
            claimed_pvs: HashSet::new(),
            by_name: FxMap::default(),
            pod_index: None,
            journal: Vec::new(),
            marks: Vec::new(),
        };
        for n in nodes {
            s.push_node(n);
        }
        // Intern every selector the pods' terms use before any pod is added, so adding a pod
        // updates their counts through the index instead of each selector scanning all pods.
        for p in &pods {
            s.intern_terms_of(p);
        }
        let mut orphans = Vec::new();
        for p in pods {
            match p
                .node_name
                .as_deref()
                .and_then(|n| s.by_name.get(n).copied())
            {
                Some(node) => {
                    s.insert_pod(p, node);
                }
                None => orphans.push(p),
            }
        }
        s.journal.clear();
        (s, orphans)
    }

    // ----- reading -------------------------------------------------------------------------

    /// Every node id, removed ones included (check [`Snapshot::is_removed`]).
    pub fn node_ids(&self) -> std::ops::Range<NodeId> {
        0..self.nodes.len()
    }

    /// Nodes that are in the snapshot (not removed).
    pub fn live_nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.node_ids().filter(|&i| !self.nodes[i].removed)
    }

    pub fn node(&self, id: NodeId) -> &NodeInfo {
        &self.nodes[id].info
    }

    pub fn is_removed(&self, id: NodeId) -> bool {
        self.nodes[id].removed
    }

    pub fn node_by_name(&self, name: &str) -> Option<NodeId> {
        self.by_name
            .get(name)
            .copied()
            .filter(|&i| !self.nodes[i].removed)
    }

    /// The pods on a node.
    pub fn pods_on(&self, id: NodeId) -> impl Iterator<Item = &Arc<PodSpec>> + '_ {
        self.nodes[id].pods.iter().map(|&p| &self.pods[p].spec)
    }

    /// Sum of the requests of the pods on a node.
    pub fn requested(&self, id: NodeId) -> &Resources {
        &self.nodes[id].requested
    }

    pub fn pod_count(&self, id: NodeId) -> i64 {
        self.nodes[id].pod_count
    }

    /// Requests over allocatable, the larger of CPU and memory.
    pub fn utilisation(&self, id: NodeId) -> f64 {
        self.nodes[id]
            .requested
            .dominant_share(&self.nodes[id].info.allocatable)
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    // ----- fork / revert --------------------------------------------------------------------

    /// Starts a change set that [`Snapshot::revert`] undoes. Forks nest.
    pub fn fork(&mut self) {
        self.marks.push(self.journal.len());
    }

    /// Undoes every change since the matching [`Snapshot::fork`].
    pub fn revert(&mut self) {
        let Some(mark) = self.marks.pop() else {
            return;
        };
        while self.journal.len() > mark {
            let Some(undo) = self.journal.pop() else {
                break;
            };
            match undo {
                Undo::PodAdded(id) => {
                    self.detach(id);
                    if let (Some(index), Some(slot)) = (&mut self.pod_index, self.pods.last()) {
                        for (k, v) in &slot.spec.labels {
                            if let Some(ids) = index.get_mut(k).and_then(|m| m.get_mut(v)) {
                                ids.retain(|&p| p != id);
                            }
                        }
                    }
                    self.pods.pop();
                }
                Undo::PodRemoved(id) => {
                    self.pods[id].alive = true;
                    self.attach(id);
                }
                Undo::NodeAdded(id) => {
                    if let Some(n) = self.nodes.pop() {
                        self.by_name.remove(&n.info.name);
                    }
                    for t in &mut self.topos {
                        t.node_val.truncate(id);
                    }
                }
                Undo::NodeRemoved(id) => {
                    self.nodes[id].removed = false;
                    let name = self.nodes[id].info.name.clone();
                    self.by_name.insert(name, id);
                }
                Undo::PvClaimed(pv) => {
                    self.claimed_pvs.remove(&pv);
                }
            }
        }
    }

    /// Keeps the changes since the matching fork (they belong to the enclosing fork, if any).
    pub fn commit(&mut self) {
        self.marks.pop();
        if self.marks.is_empty() {
            self.journal.clear();
        }
    }

    fn record(&mut self, u: Undo) {
        if !self.marks.is_empty() {
            self.journal.push(u);
        }
    }

    // ----- changing -------------------------------------------------------------------------

    fn push_node(&mut self, info: NodeInfo) -> NodeId {
        let id = self.nodes.len();
        for t in &mut self.topos {
            let v = t.value_of(&info);
            t.node_val.push(v);
        }
        self.by_name.insert(info.name.clone(), id);
        self.nodes.push(NodeState {
            info,
            removed: false,
            pods: Vec::new(),
            requested: Resources::default(),
            pod_count: 0,
            ports: Vec::new(),
        });
        id
    }

    /// Adds a node (a template node of a group, usually).
    pub fn add_node(&mut self, info: NodeInfo) -> NodeId {
        let id = self.push_node(info);
        self.record(Undo::NodeAdded(id));
        id
    }

    /// Removes a node with its pods; returns the pods that were on it.
    pub fn remove_node(&mut self, id: NodeId) -> Vec<Arc<PodSpec>> {
        if self.nodes[id].removed {
            return Vec::new();
        }
        let pods = self.nodes[id].pods.clone();
        let mut out = Vec::with_capacity(pods.len());
        for p in pods {
            out.push(self.pods[p].spec.clone());
            self.remove_pod(p);
        }
        self.nodes[id].removed = true;
        let name = self.nodes[id].info.name.clone();
        self.by_name.remove(&name);
        self.record(Undo::NodeRemoved(id));
        out
    }

    /// Puts a pod on a node without checking (the scheduler already bound it, or a filter
    /// run said yes).
    pub fn add_pod(&mut self, spec: Arc<PodSpec>, node: NodeId) -> PodId {
        self.intern_terms_of(&spec);
        self.insert_pod(spec, node)
    }

    /// [`Snapshot::add_pod`] for a pod whose terms are interned already.
    fn insert_pod(&mut self, spec: Arc<PodSpec>, node: NodeId) -> PodId {
        let sels = self.matching_sels(&spec);
        let anti = spec
            .anti_affinity
            .iter()
            .map(|t| self.intern_ex_term(t))
            .collect();
        let id = self.pods.len();
        if let Some(index) = &mut self.pod_index {
            for (k, v) in &spec.labels {
                index
                    .entry(k.clone())
                    .or_default()
                    .entry(v.clone())
                    .or_default()
                    .push(id);
            }
        }
        self.pods.push(PodSlot {
            spec,
            node,
            alive: true,
            sels,
            anti,
        });
        self.attach(id);
        self.record(Undo::PodAdded(id));
        id
    }

    pub fn remove_pod(&mut self, id: PodId) {
        if !self.pods[id].alive {
            return;
        }
        self.detach(id);
        self.pods[id].alive = false;
        self.record(Undo::PodRemoved(id));
    }

    fn attach(&mut self, id: PodId) {
        let slot = &self.pods[id];
        let (node, terminating) = (slot.node, slot.spec.terminating);
        let n = &mut self.nodes[node];
        n.pods.push(id);
        n.requested.add(&slot.spec.requests);
        n.pod_count += 1;
        n.ports.extend(slot.spec.host_ports.iter().cloned());
        for &s in &slot.sels {
            let c = self.sels[s].counts.entry(node).or_default();
            if terminating {
                c.terminating += 1;
            } else {
                c.live += 1;
            }
        }
        for &e in &slot.anti {
            *self.ex_terms[e].holders.entry(node).or_insert(0) += 1;
        }
    }

    fn detach(&mut self, id: PodId) {
        let slot = &self.pods[id];
        let (node, terminating) = (slot.node, slot.spec.terminating);
        let n = &mut self.nodes[node];
        n.pods.retain(|&p| p != id);
        n.requested.sub(&slot.spec.requests);
        n.pod_count -= 1;
        for hp in &slot.spec.host_ports {
            if let Some(i) = n.ports.iter().position(|p| p == hp) {
                n.ports.swap_remove(i);
            }
        }
        for &s in &slot.sels {
            let counts = &mut self.sels[s].counts;
            if let Some(c) = counts.get_mut(&node) {
                if terminating {
                    c.terminating = c.terminating.saturating_sub(1);
                } else {
                    c.live = c.live.saturating_sub(1);
                }
                if *c == Count::default() {
                    counts.remove(&node);
                }
            }
        }
        for &e in &slot.anti {
            let holders = &mut self.ex_terms[e].holders;
            if let Some(h) = holders.get_mut(&node) {
                *h -= 1;
                if *h == 0 {
                    holders.remove(&node);
                }
            }
        }
    }

    /// Marks a static PV as taken by a simulated placement.
    pub(crate) fn claim_pv(&mut self, pv: &str) {
        if self.claimed_pvs.insert(pv.to_string()) {
            self.record(Undo::PvClaimed(pv.to_string()));
        }
    }

    // ----- indexes --------------------------------------------------------------------------

    fn intern_terms_of(&mut self, p: &PodSpec) {
        if !p.spread.is_empty() {
            let own = NsSet::one(&p.namespace);
            for c in &p.spread {
                self.intern_sel_refs(&[(&own, &c.selector)]);
                self.topo(&c.topology_key);
            }
        }
        if !p.affinity.is_empty() {
            let terms: Vec<(&NsSet, &Selector)> = p
                .affinity
                .iter()
                .map(|t| (&t.namespaces, &t.selector))
                .collect();
            self.intern_sel_refs(&terms);
            for t in &p.affinity {
                self.topo(&t.topology_key);
            }
        }
        for t in &p.anti_affinity {
            self.intern_sel_refs(&[(&t.namespaces, &t.selector)]);
            self.topo(&t.topology_key);
        }
    }

    /// [`Snapshot::intern_sel`] without building the key when the selector is known.
    pub(crate) fn intern_sel_refs(&mut self, terms: &[(&NsSet, &Selector)]) -> SelId {
        use std::hash::Hash;
        let mut sorted: Vec<(&NsSet, &Selector)>;
        let terms = if terms.len() > 1 {
            sorted = terms.to_vec();
            sorted.sort();
            sorted.dedup();
            &sorted[..]
        } else {
            terms
        };
        let mut h = Fx::default();
        for t in terms {
            t.hash(&mut h);
        }
        let hash = h.finish();
        if let Some(ids) = self.sel_ids.get(&hash) {
            for &id in ids {
                let known = &self.sels[id].terms;
                if known.len() == terms.len()
                    && known
                        .iter()
                        .zip(terms)
                        .all(|((a, b), (c, d))| a == *c && b == *d)
                {
                    return id;
                }
            }
        }
        let owned = terms
            .iter()
            .map(|(n, s)| ((*n).clone(), (*s).clone()))
            .collect();
        self.new_sel(owned, hash)
    }

    /// The id of a selector, interning it (and counting the pods it matches) if new.
    #[cfg(test)]
    pub(crate) fn intern_sel(&mut self, terms: Vec<(NsSet, Selector)>) -> SelId {
        let refs: Vec<(&NsSet, &Selector)> = terms.iter().map(|(n, s)| (n, s)).collect();
        self.intern_sel_refs(&refs)
    }

    fn new_sel(&mut self, terms: Vec<(NsSet, Selector)>, hash: u64) -> SelId {
        let id = self.sels.len();
        let first = terms.first().map(|(_, s)| s.clone());
        match first.as_ref() {
            Some(s) if s.nothing => {}
            Some(s) => match (s.index_label(), s.index_key()) {
                (Some((k, v)), _) => self
                    .by_label
                    .entry(k.to_string())
                    .or_default()
                    .entry(v.to_string())
                    .or_default()
                    .push(id),
                (None, Some(k)) => self.by_key.entry(k.to_string()).or_default().push(id),
                (None, None) => self.general.push(id),
            },
            None => self.general.push(id),
        }
        self.sel_ids.entry(hash).or_default().push(id);
        let sel = Sel {
            terms,
            counts: FxMap::default(),
            ex_terms: Vec::new(),
        };
        let mut counts: FxMap<NodeId, Count> = FxMap::default();
        let label = sel
            .terms
            .first()
            .and_then(|(_, s)| s.index_label())
            .map(|(k, v)| (k.to_string(), v.to_string()));
        let candidates: Vec<PodId> = match label {
            Some((k, v)) => {
                let index = self.pod_index.get_or_insert_with(|| {
                    let mut index: FxMap<String, FxMap<String, Vec<PodId>>> = FxMap::default();
                    for (pid, slot) in self.pods.iter().enumerate() {
                        for (k, v) in &slot.spec.labels {
                            index
                                .entry(k.clone())
                                .or_default()
                                .entry(v.clone())
                                .or_default()
                                .push(pid);
                        }
                    }
                    index
                });
                index
                    .get(&k)
                    .and_then(|by_value| by_value.get(&v))
                    .cloned()
                    .unwrap_or_default()
            }
            None => (0..self.pods.len()).collect(),
        };
        for pid in candidates {
            let Some(slot) = self.pods.get_mut(pid) else {
                continue;
            };
            if !sel.matches(&slot.spec) {
                continue;
            }
            // Removed pods too: one may come back on revert, and must count then.
            slot.sels.push(id);
            if slot.alive {
                let c = counts.entry(slot.node).or_default();
                if slot.spec.terminating {
                    c.terminating += 1;
                } else {
                    c.live += 1;
                }
            }
        }
        self.sels.push(Sel { counts, ..sel });
        id
    }

    fn intern_ex_term(&mut self, t: &AffinityTerm) -> ExId {
        if let Some(&id) = self.ex_ids.get(t) {
            return id;
        }
        let sel = self.intern_sel_refs(&[(&t.namespaces, &t.selector)]);
        let topo = self.topo(&t.topology_key);
        let id = self.ex_terms.len();
        self.ex_terms.push(ExTerm {
            topo,
            holders: FxMap::default(),
        });
        self.sels[sel].ex_terms.push(id);
        self.ex_ids.insert(t.clone(), id);
        id
    }

    /// Interned selectors that match `pod`.
    pub(crate) fn matching_sels(&self, pod: &PodSpec) -> Vec<SelId> {
        let mut out = Vec::new();
        let consider = |ids: &[SelId], out: &mut Vec<SelId>| {
            for &id in ids {
                if self.sels[id].matches(pod) {
                    out.push(id);
                }
            }
        };
        for (k, v) in &pod.labels {
            if let Some(by_value) = self.by_label.get(k)
                && let Some(ids) = by_value.get(v)
            {
                consider(ids, &mut out);
            }
            if let Some(ids) = self.by_key.get(k) {
                consider(ids, &mut out);
            }
        }
        consider(&self.general, &mut out);
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The id of a topology key, interning it if new.
    pub(crate) fn topo(&mut self, key: &str) -> TopoId {
        if let Some(&id) = self.topo_ids.get(key) {
            return id;
        }
        let mut t = Topo {
            key: key.to_string(),
            node_val: Vec::with_capacity(self.nodes.len()),
            values: FxMap::default(),
        };
        for n in &self.nodes {
            let v = t.value_of(&n.info);
            t.node_val.push(v);
        }
        let id = self.topos.len();
        self.topos.push(t);
        self.topo_ids.insert(key.to_string(), id);
        id
    }

    // ----- the question ---------------------------------------------------------------------

    /// Computes what the filters need to know about `pod` against this snapshot (the
    /// scheduler's PreFilter); valid until the snapshot changes.
    pub fn prepare(&mut self, pod: &Arc<PodSpec>) -> Prepared {
        filters::prepare(self, pod)
    }

    /// Can `pod` go on `node`? Every filter, in the scheduler's order.
    pub fn check(&mut self, pod: &Arc<PodSpec>, node: NodeId) -> Result<(), Reason> {
        let prepared = self.prepare(pod);
        filters::run(&prepared, node, self)
    }

    /// Can the prepared pod go on `node`?
    pub fn check_prepared(&self, prepared: &Prepared, node: NodeId) -> Result<(), Reason> {
        filters::run(prepared, node, self)
    }

    /// Places `pod` on the Ready node the scheduler would most likely pick among those that
    /// pass every filter: the least allocated one (its LeastAllocated score). `among` limits
    /// the candidates (all live nodes if `None`).
    pub fn place(
        &mut self,
        pod: &Arc<PodSpec>,
        among: Option<&[NodeId]>,
    ) -> Result<NodeId, Unplaced> {
        let mut order = self.placement_order(among);
        self.place_in(pod, &mut order)
    }

    /// Places pods one after the other, each placement changing what the next one sees.
    pub fn place_all(
        &mut self,
        pods: &[Arc<PodSpec>],
        among: Option<&[NodeId]>,
    ) -> Vec<Result<NodeId, Unplaced>> {
        let mut order = self.placement_order(among);
        pods.iter().map(|p| self.place_in(p, &mut order)).collect()
    }

    fn score(&self, id: NodeId) -> f64 {
        let n = &self.nodes[id];
        let free = |alloc: i64, used: i64| {
            if alloc > 0 {
                (alloc - used) as f64 / alloc as f64
            } else {
                0.0
            }
        };
        (free(n.info.allocatable.milli_cpu, n.requested.milli_cpu)
            + free(n.info.allocatable.memory, n.requested.memory))
            / 2.0
    }

    /// Candidate nodes, best score first (ties by name, so runs are deterministic).
    fn placement_order(&self, among: Option<&[NodeId]>) -> Vec<(f64, NodeId)> {
        let ids: Vec<NodeId> = match among {
            Some(ids) => ids.to_vec(),
            None => self.live_nodes().collect(),
        };
        let mut order: Vec<(f64, NodeId)> = ids
            .into_iter()
            .filter(|&i| !self.nodes[i].removed && self.nodes[i].info.ready)
            .map(|i| (self.score(i), i))
            .collect();
        order.sort_by(|a, b| self.order_cmp(a, b));
        order
    }

    fn order_cmp(&self, a: &(f64, NodeId), b: &(f64, NodeId)) -> std::cmp::Ordering {
        b.0.total_cmp(&a.0)
            .then_with(|| self.nodes[a.1].info.name.cmp(&self.nodes[b.1].info.name))
    }

    fn place_in(
        &mut self,
        pod: &Arc<PodSpec>,
        order: &mut Vec<(f64, NodeId)>,
    ) -> Result<NodeId, Unplaced> {
        let prepared = self.prepare(pod);
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut chosen = None;
        for (pos, &(_, id)) in order.iter().enumerate() {
            match filters::run(&prepared, id, self) {
                Ok(()) => {
                    chosen = Some((pos, id));
                    break;
                }
                Err(r) => *reasons.entry(r.to_string()).or_insert(0) += 1,
            }
        }
        let Some((pos, id)) = chosen else {
            return Err(Unplaced {
                nodes: order.len(),
                reasons,
            });
        };
        self.bind(pod, id);
        // Keep the order sorted: only the chosen node's score changed.
        order.remove(pos);
        let entry = (self.score(id), id);
        let at = order
            .binary_search_by(|probe| self.order_cmp(probe, &entry))
            .unwrap_or_else(|e| e);
        order.insert(at, entry);
        Ok(id)
    }

    /// Puts a pod that passed the filters on `node`, taking the static PVs its delayed claims
    /// would bind there.
    pub fn bind(&mut self, pod: &Arc<PodSpec>, node: NodeId) -> PodId {
        for v in &pod.volumes {
            if let VolumeNeed::Delayed(d) = v
                && let Some(pv) = filters::volume_binding::static_pv_for(d, node, self, &[])
            {
                self.claim_pv(&pv);
            }
        }
        let mut spec = (**pod).clone();
        spec.node_name = Some(self.nodes[node].info.name.clone());
        self.add_pod(Arc::new(spec), node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capacity::pod::AffinityTerm;
    use crate::capacity::selector::{LabelReq, Selector};

    const GI: i64 = 1 << 30;

    fn snap(nodes: &[(&str, i64, &str)]) -> Snapshot {
        let nodes = nodes
            .iter()
            .map(|(n, cpu, z)| NodeInfo::simple(n, *cpu, 4 * GI, z))
            .collect();
        Snapshot::new(nodes, Vec::new(), Arc::new(Catalog::default())).0
    }

    fn pod(name: &str, cpu: i64, app: &str) -> Arc<PodSpec> {
        let mut p = PodSpec::simple("default", name, cpu, 0);
        p.labels.insert("app".into(), app.into());
        Arc::new(p)
    }

    fn app_sel(app: &str) -> Selector {
        Selector::from_reqs(vec![LabelReq::In("app".into(), [app.to_string()].into())])
    }

    #[test]
    fn fork_and_revert_restore_everything() {
        let mut s = snap(&[("a", 2000, "z1"), ("b", 2000, "z2")]);
        let sel = s.intern_sel(vec![(NsSet::one("default"), app_sel("web"))]);
        s.add_pod(pod("p0", 500, "web"), 0);
        s.fork();
        s.add_pod(pod("p1", 500, "web"), 1);
        let gone = s.remove_node(0);
        assert_eq!(gone.len(), 1);
        let t = s.add_node(NodeInfo::simple("t", 1000, GI, "z1"));
        s.add_pod(pod("p2", 100, "web"), t);
        assert!(s.node_by_name("a").is_none());
        assert_eq!(s.sels[sel].counts.len(), 2);
        s.revert();
        assert_eq!(s.nodes.len(), 2);
        assert_eq!(s.requested(0).milli_cpu, 500);
        assert_eq!(s.requested(1).milli_cpu, 0);
        assert_eq!(s.node_by_name("a"), Some(0));
        assert_eq!(s.sels[sel].counts.get(&0).map(|c| c.live), Some(1));
        assert_eq!(s.sels[sel].counts.len(), 1);
        assert_eq!(s.pods.iter().filter(|p| p.alive).count(), 1);
    }

    #[test]
    fn nested_forks_commit_into_the_outer_one() {
        let mut s = snap(&[("a", 2000, "z1")]);
        s.fork();
        s.fork();
        s.add_pod(pod("p", 100, "x"), 0);
        s.commit();
        assert_eq!(s.pod_count(0), 1);
        s.revert();
        assert_eq!(s.pod_count(0), 0);
    }

    #[test]
    fn selectors_interned_late_count_existing_pods() {
        let mut s = snap(&[("a", 2000, "z1"), ("b", 2000, "z1")]);
        s.add_pod(pod("p0", 100, "web"), 0);
        s.add_pod(pod("p1", 100, "web"), 0);
        s.add_pod(pod("p2", 100, "db"), 1);
        let web = s.intern_sel(vec![(NsSet::one("default"), app_sel("web"))]);
        assert_eq!(s.sels[web].counts.get(&0).map(|c| c.live), Some(2));
        assert!(!s.sels[web].counts.contains_key(&1));
        // Pods added later are counted through the label index.
        s.add_pod(pod("p3", 100, "web"), 1);
        assert_eq!(s.sels[web].counts.get(&1).map(|c| c.live), Some(1));
        let other_ns = s.intern_sel(vec![(NsSet::one("prod"), app_sel("web"))]);
        assert!(s.sels[other_ns].counts.is_empty());
    }

    #[test]
    fn the_pod_label_index_survives_forks() {
        let mut s = snap(&[("a", 2000, "z1")]);
        s.add_pod(pod("p0", 100, "web"), 0);
        s.fork();
        s.add_pod(pod("p1", 100, "web"), 0);
        // Builds the index with p1 in it, then p1 goes on revert.
        let web = s.intern_sel(vec![(NsSet::one("default"), app_sel("web"))]);
        assert_eq!(s.sels[web].counts.get(&0).map(|c| c.live), Some(2));
        s.revert();
        assert_eq!(s.sels[web].counts.get(&0).map(|c| c.live), Some(1));
        // A new pod takes p1's slot; a selector interned now counts it once.
        s.add_pod(pod("p2", 100, "db"), 0);
        let db = s.intern_sel(vec![(NsSet::one("default"), app_sel("db"))]);
        assert_eq!(s.sels[db].counts.get(&0).map(|c| c.live), Some(1));
        let web2 = s.intern_sel(vec![(
            NsSet::one("default"),
            Selector::from_reqs(vec![
                LabelReq::In("app".into(), ["web".to_string()].into()),
                LabelReq::Exists("app".into()),
            ]),
        )]);
        assert_eq!(s.sels[web2].counts.get(&0).map(|c| c.live), Some(1));
    }

    #[test]
    fn placement_picks_the_least_allocated_node_that_passes() {
        let mut s = snap(&[("a", 2000, "z1"), ("b", 2000, "z1"), ("c", 1000, "z1")]);
        s.add_pod(pod("busy", 1500, "x"), 0);
        let placed = s.place_all(
            &[
                pod("p1", 900, "y"),
                pod("p2", 900, "y"),
                pod("p3", 1200, "y"),
            ],
            None,
        );
        let names: Vec<_> = placed
            .iter()
            .map(|r| {
                r.as_ref()
                    .map(|&n| s.node(n).name.clone())
                    .map_err(|e| e.to_string())
            })
            .collect();
        assert_eq!(names[0].as_deref(), Ok("b"));
        assert_eq!(names[1].as_deref(), Ok("c"), "b is now 45% used, c empty");
        let err = names[2].as_ref().unwrap_err();
        assert!(
            err.starts_with("0/3 nodes are available: 3 Insufficient cpu"),
            "{err}"
        );
    }

    #[test]
    fn existing_anti_affinity_is_found_through_the_index() {
        let mut s = snap(&[("a", 4000, "z1"), ("b", 4000, "z2")]);
        let mut holder = PodSpec::simple("default", "h", 100, 0);
        holder.labels.insert("app".into(), "solo".into());
        holder.anti_affinity.push(AffinityTerm {
            namespaces: NsSet::one("default"),
            selector: app_sel("web"),
            topology_key: "topology.kubernetes.io/zone".into(),
        });
        s.add_pod(Arc::new(holder), 0);
        let web = pod("w", 100, "web");
        assert!(s.check(&web, 0).is_err());
        assert!(s.check(&web, 1).is_ok());
        assert!(s.check(&pod("d", 100, "db"), 0).is_ok());
    }
}
