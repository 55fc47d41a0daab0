//! Scale-up: which groups to grow, by how much, for the pending pods (cluster-autoscaler's
//! scale-up with its binpacking estimator). Pods that fit in free space, or on nodes already
//! booting, drop out; each remaining pod is matched to the groups whose template node can host
//! it; an expander chooses among the groups; the chosen group is sized by packing the pods
//! onto its template nodes with every filter. Pods no template can host are unhelpable, with
//! the reason per group.

use super::node::{GroupSpec, NodeTemplate};
use super::pod::PodSpec;
use super::snapshot::{NodeId, Snapshot};
use crate::{Error, Result};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// How to choose among groups that can help (cluster-autoscaler's `--expander`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Expander {
    /// The least idle CPU and memory on the new nodes after the pods land.
    #[default]
    LeastWaste,
    /// The group with the highest priority; least waste among equals.
    Priority,
    /// The lowest price per pod helped; least waste among equals.
    Price,
}

impl std::str::FromStr for Expander {
    type Err = Error;
    fn from_str(s: &str) -> Result<Expander> {
        match s {
            "least-waste" => Ok(Expander::LeastWaste),
            "priority" => Ok(Expander::Priority),
            "price" => Ok(Expander::Price),
            other => Err(Error::Capacity(format!(
                "expander {other:?} is not one of least-waste, priority, price"
            ))),
        }
    }
}

/// A node group with its template.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeGroup {
    pub spec: GroupSpec,
    pub template: NodeTemplate,
}

/// What to decide on.
#[derive(Debug, Clone, Copy)]
pub struct ScaleUpRequest<'a> {
    pub pending: &'a [Arc<PodSpec>],
    pub groups: &'a [NodeGroup],
    /// Groups in backoff after new nodes did not become Ready in time: skipped.
    pub backoff: &'a BTreeSet<String>,
    pub expander: Expander,
}

/// Grow one group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Increase {
    pub group: String,
    pub from: u32,
    pub to: u32,
    /// The zone each new node is expected in (the ASG balances zones).
    pub zones: Vec<String>,
    /// Pods (`ns/name`) the new nodes are for.
    pub pods: Vec<String>,
    /// Idle share of the new nodes' CPU and memory (least-waste's score).
    pub waste: f64,
}

/// A pending pod with the reason per group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PodVerdict {
    pub pod: String,
    /// (group, why).
    pub reasons: Vec<(String, String)>,
}

/// The answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ScaleUpPlan {
    pub increases: Vec<Increase>,
    /// Pods that fit in free space now (the scheduler will place them).
    pub fits_now: Vec<String>,
    /// Pods that fit on nodes already booting: (pod, group).
    pub waiting: Vec<(String, String)>,
    /// Pods no group's template node can host: never a reason to grow.
    pub unhelpable: Vec<PodVerdict>,
    /// Pods some group could host, but not now: every such group is at its maximum, backing
    /// off, or its next node would not take the pod.
    pub blocked: Vec<PodVerdict>,
}

impl ScaleUpPlan {
    /// Nodes to add in all.
    pub fn nodes(&self) -> u32 {
        self.increases.iter().map(|i| i.to - i.from).sum()
    }
}

/// Per-group bookkeeping while planning.
struct Book {
    /// Nodes per zone: Ready, booting and planned (the ASG's AZ balance follows it).
    per_zone: BTreeMap<String, u32>,
    planned: u32,
    seq: usize,
    /// A node was planned where the balance had a tie: from then on the zones of this group's
    /// new nodes are AWS's choice, not a prediction.
    uncertain: bool,
}

impl Book {
    fn new(g: &GroupSpec) -> Book {
        let mut per_zone: BTreeMap<String, u32> = g.zones.iter().map(|z| (z.clone(), 0)).collect();
        for (z, n) in &g.instances_per_zone {
            *per_zone.entry(z.clone()).or_insert(0) += n;
        }
        Book {
            per_zone,
            planned: 0,
            seq: 0,
            uncertain: false,
        }
    }

    /// The zone the ASG launches the next instance in: the one with the fewest; on a tie the
    /// first in the group's zone order is assumed, and `true` says it was a tie (AWS decides).
    fn next_zone(&self, g: &GroupSpec) -> (String, bool) {
        let zones: Vec<&String> = if g.zones.is_empty() {
            self.per_zone.keys().collect()
        } else {
            g.zones.iter().collect()
        };
        let count = |z: &String| self.per_zone.get(z).copied().unwrap_or(0);
        let Some(min) = zones.iter().map(|z| count(z)).min() else {
            return (String::new(), false);
        };
        let tied: Vec<&&String> = zones.iter().filter(|z| count(z) == min).collect();
        (
            tied.first().map(|z| (**z).clone()).unwrap_or_default(),
            tied.len() > 1,
        )
    }

    /// Whether the zone of the next node is known: no tie now and none before.
    fn next_zone_certain(&self, g: &GroupSpec) -> bool {
        !self.uncertain && !self.next_zone(g).1
    }

    /// Accounts for a node planned in `zone`.
    fn planned_in(&mut self, zone: &str, tied: bool) {
        *self.per_zone.entry(zone.to_string()).or_insert(0) += 1;
        self.uncertain |= tied;
    }
}

fn add_template_node(snap: &mut Snapshot, t: &NodeTemplate, name: &str, zone: &str) -> NodeId {
    let id = snap.add_node(t.node(name, zone));
    for ds in &t.daemon_pods {
        let mut p = (**ds).clone();
        p.name = format!("{}-{name}", p.name);
        snap.bind(&Arc::new(p), id);
    }
    id
}

fn zones_of(g: &NodeGroup) -> Vec<String> {
    if g.template.zones.is_empty() {
        vec![String::new()]
    } else {
        g.template.zones.clone()
    }
}

/// Whether a fresh node of `g` could host `pod` in the current snapshot, in at least one of
/// the group's zones. (Which zone a new node lands in is the ASG's choice; the estimator
/// plans a pod that depends on the zone only on nodes whose zone the balance determines.)
fn hostable(
    snap: &mut Snapshot,
    g: &NodeGroup,
    pod: &Arc<PodSpec>,
) -> std::result::Result<(), String> {
    let mut fails = Vec::new();
    for z in &zones_of(g) {
        snap.fork();
        let id = add_template_node(snap, &g.template, &format!("probe-{}", g.spec.name), z);
        let r = snap.check(pod, id);
        snap.revert();
        match r {
            Ok(()) => return Ok(()),
            Err(why) => fails.push(if z.is_empty() {
                why.to_string()
            } else {
                format!("in {z}: {why}")
            }),
        }
    }
    Err(fails.join("; "))
}

/// One group's answer for a set of pods.
struct Estimate {
    group: usize,
    nodes: Vec<String>,
    /// The zone of each new node.
    zones: Vec<String>,
    helped: Vec<String>,
    waste: f64,
    price: f64,
}

/// Packs `pods` in the scheduler's queue order (priority, then as listed: the order the
/// scheduler will place them when the nodes come up, where cluster-autoscaler packs largest
/// first) onto new nodes of group `gi`, adding a node when no new node so far takes the next
/// pod, up to `room` nodes. A pod whose placement depends on the zone is planned only on new
/// nodes whose zone the ASG's balance determines; when it fits only a node whose zone is a
/// guess it still takes the room there (the scheduler may put it there) without counting as
/// helped. A pod whose filters count other pods (topology spread, required pod affinity) may
/// pass on a node that exists once the pods packed before it have landed (they raise the
/// spread's global minimum, or bring the pod it needs): the scheduler weighs that node with
/// the new ones, and so does the estimate, instead of adding a node for it.
/// The snapshot keeps what it packed; callers fork around it.
fn estimate(
    snap: &mut Snapshot,
    groups: &[NodeGroup],
    gi: usize,
    pods: &[Arc<PodSpec>],
    room: u32,
    book: &mut Book,
) -> Estimate {
    let g = &groups[gi];
    let mut new_nodes: Vec<NodeId> = Vec::new();
    // New nodes whose zone the ASG's balance determines: the only ones a pod whose placement
    // depends on the zone may be planned on, in a group spanning several zones.
    let mut certain: Vec<NodeId> = Vec::new();
    let multi_zone = g.template.zones.len() > 1;
    let mut names = Vec::new();
    let mut zones = Vec::new();
    let mut helped = Vec::new();
    let mut requested = super::resources::Resources::default();
    // The nodes that exist (booting and planned nodes are templates).
    let existing: Vec<NodeId> = snap
        .live_nodes()
        .filter(|&n| snap.node(n).template_of.is_none())
        .collect();
    for pod in pods {
        let sensitive = multi_zone && pod.zone_sensitive();
        let candidates = if sensitive { &certain } else { &new_nodes };
        // Pending, so no existing node took it before the plan; one may now. Only while every
        // packed pod's zone is known, for a pod that depends on the zone.
        let counts_others = !pod.spread.is_empty() || !pod.affinity.is_empty();
        if counts_others
            && !new_nodes.is_empty()
            && !existing.is_empty()
            && (!sensitive || certain.len() == new_nodes.len())
        {
            let among: Vec<NodeId> = candidates.iter().chain(&existing).copied().collect();
            if let Ok(n) = snap.place(pod, Some(&among)) {
                helped.push(pod.key());
                if new_nodes.contains(&n) {
                    requested.add(&pod.requests);
                }
                continue;
            }
        } else if !candidates.is_empty() && snap.place(pod, Some(candidates)).is_ok() {
            helped.push(pod.key());
            requested.add(&pod.requests);
            continue;
        }
        if sensitive && new_nodes.len() > certain.len() {
            let guessed: Vec<NodeId> = new_nodes
                .iter()
                .copied()
                .filter(|n| !certain.contains(n))
                .collect();
            if snap.place(pod, Some(&guessed)).is_ok() {
                continue;
            }
        }
        if (new_nodes.len() as u32) >= room || (sensitive && !book.next_zone_certain(&g.spec)) {
            continue;
        }
        let known = book.next_zone_certain(&g.spec);
        let (zone, tied) = book.next_zone(&g.spec);
        book.seq += 1;
        let name = format!("new-{}-{}", g.spec.name, book.seq);
        snap.fork();
        let id = add_template_node(snap, &g.template, &name, &zone);
        if snap.check(pod, id).is_ok() {
            snap.bind(pod, id);
            snap.commit();
            new_nodes.push(id);
            if known {
                certain.push(id);
            }
            names.push(name);
            book.planned_in(&zone, tied);
            zones.push(zone);
            helped.push(pod.key());
            requested.add(&pod.requests);
        } else {
            snap.revert();
        }
    }
    let n = new_nodes.len() as i64;
    let cap = &g.template.allocatable;
    let mut used = requested;
    for ds in &g.template.daemon_pods {
        for _ in 0..n {
            used.add(&ds.requests);
        }
    }
    let idle = |c: i64, u: i64| {
        if c > 0 {
            (c - u).max(0) as f64 / c as f64
        } else {
            0.0
        }
    };
    let waste = if n == 0 {
        1.0
    } else {
        (idle(cap.milli_cpu * n, used.milli_cpu) + idle(cap.memory * n, used.memory)) / 2.0
    };
    let hourly = g
        .spec
        .price_per_hour
        .or_else(|| g.spec.smallest_type().ok().map(|t| t.price))
        .unwrap_or(f64::INFINITY);
    let price = if helped.is_empty() {
        f64::INFINITY
    } else {
        hourly * n as f64 / helped.len() as f64
    };
    Estimate {
        group: gi,
        nodes: names,
        zones,
        helped,
        waste,
        price,
    }
}

fn better(a: &Estimate, b: &Estimate, groups: &[NodeGroup], expander: Expander) -> bool {
    use std::cmp::Ordering;
    let least_waste = |x: &Estimate, y: &Estimate| {
        x.waste
            .total_cmp(&y.waste)
            .then_with(|| y.helped.len().cmp(&x.helped.len()))
            .then_with(|| x.nodes.len().cmp(&y.nodes.len()))
            .then_with(|| groups[x.group].spec.name.cmp(&groups[y.group].spec.name))
    };
    let order = match expander {
        Expander::LeastWaste => least_waste(a, b),
        Expander::Priority => groups[b.group]
            .spec
            .priority
            .cmp(&groups[a.group].spec.priority)
            .then_with(|| least_waste(a, b)),
        Expander::Price => a.price.total_cmp(&b.price).then_with(|| least_waste(a, b)),
    };
    order == Ordering::Less
}

/// Plans the scale-up. The snapshot is left as it was.
pub fn plan(snap: &mut Snapshot, req: &ScaleUpRequest) -> ScaleUpPlan {
    snap.fork();
    let plan = plan_in(snap, req);
    snap.revert();
    plan
}

fn plan_in(snap: &mut Snapshot, req: &ScaleUpRequest) -> ScaleUpPlan {
    let groups = req.groups;
    let mut out = ScaleUpPlan::default();
    let mut books: Vec<Book> = groups.iter().map(|g| Book::new(&g.spec)).collect();

    // Capacity in flight: the nodes each group is already bringing up.
    for (gi, g) in groups.iter().enumerate() {
        for _ in 0..g.spec.upcoming {
            let (zone, tied) = books[gi].next_zone(&g.spec);
            books[gi].seq += 1;
            let name = format!("booting-{}-{}", g.spec.name, books[gi].seq);
            add_template_node(snap, &g.template, &name, &zone);
            books[gi].planned_in(&zone, tied);
        }
    }

    // Pods that fit somewhere already drop out (and take the room they fit in).
    let mut pending: Vec<&Arc<PodSpec>> = req.pending.iter().collect();
    pending.sort_by_key(|p| std::cmp::Reverse(p.priority));
    let mut remaining: Vec<Arc<PodSpec>> = Vec::new();
    // A replica that found no place means the same for the next replica, until something is
    // placed (the scheduler's and cluster-autoscaler's equivalence classes).
    let mut failed: BTreeSet<u64> = BTreeSet::new();
    for pod in pending {
        let key = pod.scheduling_key();
        if failed.contains(&key) {
            remaining.push(pod.clone());
            continue;
        }
        match snap.place(pod, None) {
            Ok(n) => {
                failed.clear();
                match snap.node(n).template_of.clone() {
                    Some(g) => out.waiting.push((pod.key(), g)),
                    None => out.fits_now.push(pod.key()),
                }
            }
            Err(_) => {
                failed.insert(key);
                remaining.push(pod.clone());
            }
        }
    }

    // Which groups could host each pod at all; then grow the group the expander prefers for
    // the pods still open, then the next, ... Pods no group could host are tried again once
    // the plan has placed pods (a pod with affinity to pods the plan brings can be helped).
    let mut hosts: Vec<Vec<usize>> = vec![Vec::new(); remaining.len()];
    let mut reasons: Vec<Vec<(String, String)>> = vec![Vec::new(); remaining.len()];
    let mut unhosted: Vec<usize> = (0..remaining.len()).collect();
    let mut open: Vec<usize> = Vec::new();
    // The plan's new nodes: name → group.
    let mut planned: BTreeMap<String, String> = BTreeMap::new();
    for _round in 0..3 {
        // A pod no fresh node could host may pass on a node as the plan leaves it: one with
        // the pod it needs affinity with (a hostname term, which no fresh node satisfies). The
        // scheduler puts it there once both are up.
        if !out.increases.is_empty() {
            let mut taken = Vec::new();
            for &pi in &unhosted {
                let Ok(n) = snap.place(&remaining[pi], None) else {
                    continue;
                };
                let key = remaining[pi].key();
                let node = snap.node(n);
                let group = planned.get(&node.name).cloned();
                match (group, node.template_of.clone()) {
                    (Some(g), _) => {
                        if let Some(inc) = out.increases.iter_mut().find(|i| i.group == g) {
                            inc.pods.push(key);
                        }
                    }
                    (None, Some(g)) => out.waiting.push((key, g)),
                    // An existing node, because of pods the plan placed.
                    (None, None) => {
                        if let Some(inc) = out.increases.last_mut() {
                            inc.pods.push(key);
                        }
                    }
                }
                taken.push(pi);
            }
            unhosted.retain(|pi| !taken.contains(pi));
        }
        let mut newly = Vec::new();
        // Verdicts per (scheduling key, group): replicas share them within a round.
        let mut seen: BTreeMap<(u64, usize), std::result::Result<(), String>> = BTreeMap::new();
        for &pi in &unhosted {
            hosts[pi].clear();
            reasons[pi].clear();
            let key = remaining[pi].scheduling_key();
            for (gi, g) in groups.iter().enumerate() {
                let verdict = match seen.get(&(key, gi)) {
                    Some(v) => v.clone(),
                    None => {
                        let v = hostable(snap, g, &remaining[pi]);
                        seen.insert((key, gi), v.clone());
                        v
                    }
                };
                match verdict {
                    Ok(()) => hosts[pi].push(gi),
                    Err(why) => reasons[pi].push((g.spec.name.clone(), why)),
                }
            }
            if !hosts[pi].is_empty() {
                newly.push(pi);
            }
        }
        if newly.is_empty() {
            break;
        }
        unhosted.retain(|pi| !newly.contains(pi));
        open.extend(newly);
        let placed = grow(
            snap,
            req,
            &remaining,
            &hosts,
            &mut open,
            &mut books,
            &mut out,
            &mut planned,
        );
        if !placed || unhosted.is_empty() {
            break;
        }
    }
    for pi in unhosted {
        out.unhelpable.push(PodVerdict {
            pod: remaining[pi].key(),
            reasons: std::mem::take(&mut reasons[pi]),
        });
    }

    for pi in open {
        let pod = &remaining[pi];
        let why = hosts[pi]
            .iter()
            .map(|&gi| {
                let s = &groups[gi].spec;
                let w = if req.backoff.contains(&s.name) {
                    "backing off: its last new nodes did not become Ready in time".to_string()
                } else if room(&groups[gi], &books[gi]) == 0 {
                    format!("at its maximum of {}", s.max)
                } else if !out.increases.is_empty() && !out.increases.iter().any(|i| i.group == s.name) {
                    format!(
                        "waits for the nodes of {} to come up first (its pods could land on them, or its nodes would change where theirs fit)",
                        out.increases.iter().map(|i| i.group.as_str()).collect::<Vec<_>>().join(", ")
                    )
                } else if pod.zone_sensitive() && !books[gi].next_zone_certain(s) {
                    "its next node's zone is AWS's choice (a tie in the zone balance) and the pod depends on the zone".to_string()
                } else {
                    format!(
                        "its next node (in {}) would not take the pod",
                        books[gi].next_zone(s).0
                    )
                };
                (s.name.clone(), w)
            })
            .collect();
        out.blocked.push(PodVerdict {
            pod: pod.key(),
            reasons: why,
        });
    }
    out
}

/// Whether the pods `keys` that carry a topology spread constraint still pass it where the
/// snapshot has them. Adding a pod never breaks an earlier pod's spread (the global minimum
/// only rises), but adding a node can: a node of another group opens a domain (its zone, or
/// itself for a hostname spread) with none of the pods, which counts even when the pods cannot
/// run there (`nodeTaintsPolicy: Ignore`, the default: a tainted group's node counts for pods
/// that do not tolerate it). If it comes up before they are scheduled, they stay pending.
fn spread_holds(snap: &mut Snapshot, keys: &BTreeSet<String>) -> bool {
    let placed: Vec<(usize, NodeId, Arc<PodSpec>)> = snap
        .pods
        .iter()
        .enumerate()
        .filter(|(_, slot)| {
            slot.alive && !slot.spec.spread.is_empty() && keys.contains(&slot.spec.key())
        })
        .map(|(id, slot)| (id, slot.node, slot.spec.clone()))
        .collect();
    placed.into_iter().all(|(id, node, spec)| {
        snap.fork();
        snap.remove_pod(id);
        let prepared = snap.prepare(&spec);
        let ok = super::filters::topology_spread::check(&prepared, node, snap).is_ok();
        snap.revert();
        ok
    })
}

/// Nodes the group may still add.
fn room(g: &NodeGroup, book: &Book) -> u32 {
    let s = &g.spec;
    s.max.saturating_sub(s.target.max(s.min) + book.planned)
}

/// The expander loop: grows the preferred group for the open pods it can host, then the next,
/// until no group helps. Returns whether any pod was placed. Records the new nodes in
/// `planned` (name → group).
#[allow(clippy::too_many_arguments)]
fn grow(
    snap: &mut Snapshot,
    req: &ScaleUpRequest,
    remaining: &[Arc<PodSpec>],
    hosts: &[Vec<usize>],
    open: &mut Vec<usize>,
    books: &mut [Book],
    out: &mut ScaleUpPlan,
    planned: &mut BTreeMap<String, String>,
) -> bool {
    let groups = req.groups;
    let mut placed = false;
    loop {
        // Groups grown in this plan already. The scheduler does not know which pod a new node
        // is meant for: a second group grows in the same plan only if none of its pods could
        // land on the first group's new nodes and none of the first's on its own.
        let grown: Vec<usize> = out
            .increases
            .iter()
            .filter_map(|i| groups.iter().position(|g| g.spec.name == i.group))
            .collect();
        let planned_for: Vec<usize> = (0..remaining.len())
            .filter(|pi| {
                !open.contains(pi)
                    && out
                        .increases
                        .iter()
                        .any(|i| i.pods.contains(&remaining[*pi].key()))
            })
            .collect();
        let planned_keys: BTreeSet<String> = out
            .increases
            .iter()
            .flat_map(|i| i.pods.iter().cloned())
            .collect();
        let mut best: Option<Estimate> = None;
        for gi in 0..groups.len() {
            if req.backoff.contains(&groups[gi].spec.name) || room(&groups[gi], &books[gi]) == 0 {
                continue;
            }
            if !grown.is_empty() && !grown.contains(&gi) {
                let crosses = planned_for.iter().any(|&pi| hosts[pi].contains(&gi))
                    || open
                        .iter()
                        .filter(|&&pi| hosts[pi].contains(&gi))
                        .any(|&pi| grown.iter().any(|g| hosts[pi].contains(g)));
                if crosses {
                    continue;
                }
            }
            let pods: Vec<Arc<PodSpec>> = open
                .iter()
                .filter(|&&pi| hosts[pi].contains(&gi))
                .map(|&pi| remaining[pi].clone())
                .collect();
            if pods.is_empty() {
                continue;
            }
            snap.fork();
            let mut trial = Book {
                per_zone: books[gi].per_zone.clone(),
                planned: 0,
                seq: books[gi].seq,
                uncertain: books[gi].uncertain,
            };
            let e = estimate(
                snap,
                groups,
                gi,
                &pods,
                room(&groups[gi], &books[gi]),
                &mut trial,
            );
            // Which of the plan's nodes come up first is AWS's timing: the pods planned so far
            // must still fit where they were planned with this group's nodes there too.
            let keeps = planned_keys.is_empty() || spread_holds(snap, &planned_keys);
            snap.revert();
            if e.helped.is_empty() || !keeps {
                continue;
            }
            if best
                .as_ref()
                .is_none_or(|b| better(&e, b, groups, req.expander))
            {
                best = Some(e);
            }
        }
        let Some(choice) = best else {
            return placed;
        };
        let gi = choice.group;
        let pods: Vec<Arc<PodSpec>> = open
            .iter()
            .filter(|&&pi| hosts[pi].contains(&gi))
            .map(|&pi| remaining[pi].clone())
            .collect();
        let r = room(&groups[gi], &books[gi]);
        let e = estimate(snap, groups, gi, &pods, r, &mut books[gi]);
        books[gi].planned += e.nodes.len() as u32;
        for n in &e.nodes {
            planned.insert(n.clone(), groups[gi].spec.name.clone());
        }
        placed |= !e.helped.is_empty();
        let helped: BTreeSet<&String> = e.helped.iter().collect();
        open.retain(|&pi| !helped.contains(&remaining[pi].key()));
        let spec = &groups[gi].spec;
        match out.increases.iter_mut().find(|i| i.group == spec.name) {
            Some(inc) => {
                inc.to += e.nodes.len() as u32;
                inc.zones.extend(e.zones.iter().cloned());
                inc.pods.extend(e.helped.iter().cloned());
            }
            None => out.increases.push(Increase {
                group: spec.name.clone(),
                from: spec.target,
                to: spec.target.max(spec.min) + e.nodes.len() as u32,
                zones: e.zones.clone(),
                pods: e.helped.clone(),
                waste: e.waste,
            }),
        }
    }
}
