//! Choosing the node to remove: the least utilised eligible worker whose pods fit elsewhere —
//! under every scheduler filter when there is a capacity model, by requests when there is not.

use super::model::{CapacityModel, NAMED};
use super::{Lifecycle, Node, Observation, Resources, Victim, binpack};
use crate::capacity::Removal;
use std::collections::HashMap;

/// Nodes the capacity model tries per decision (cluster-autoscaler's default is 30 per loop
/// for non-empty nodes): a bound on the decision's time in a large cluster.
const MODEL_TRIES: usize = 50;

/// A removable node and the group it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub victim: Victim,
    pub group: usize,
    pub allocatable: Resources,
    /// With a capacity model: where the node's pods would go (for [`CapacityModel::apply`]).
    pub removal: Option<Removal>,
}

/// What the disruption controls allow now: no node younger than `min_age_s` (by its instance's
/// `first_seen`), no node of a group whose budget is used up (`budget_spent[group]` says why).
#[derive(Debug, Clone, Default)]
pub struct Limits {
    pub now: i64,
    pub min_age_s: i64,
    pub budget_spent: Vec<Option<String>>,
}

impl Limits {
    /// No disruption controls (an operator's explicit `POST /scale`).
    pub fn none() -> Limits {
        Limits::default()
    }
}

/// Why nodes were not eligible, counted, for the decision's reasons.
#[derive(Debug, Default)]
struct Exclusions {
    counts: Vec<(&'static str, u32)>,
    /// The model's refusals: `node: pod ...: why`.
    refusals: Vec<String>,
}

impl Exclusions {
    fn add(&mut self, why: &'static str) {
        self.add_n(why, 1);
    }
    fn add_n(&mut self, why: &'static str, k: u32) {
        match self.counts.iter_mut().find(|(w, _)| *w == why) {
            Some((_, n)) => *n += k,
            None => self.counts.push((why, k)),
        }
    }
    fn summary(&self) -> String {
        if self.counts.is_empty() {
            return "no worker nodes".to_string();
        }
        let parts: Vec<String> = self
            .counts
            .iter()
            .map(|(why, n)| format!("{n} {why}"))
            .collect();
        let mut s = format!("no node can be removed: {}", parts.join(", "));
        for r in self.refusals.iter().take(NAMED) {
            s.push_str("; ");
            s.push_str(r);
        }
        if self.refusals.len() > NAMED {
            s.push_str(&format!("; and {} more", self.refusals.len() - NAMED));
        }
        s
    }
}

/// Picks the node to remove, or says why none can go. Rules (DESIGN.md, "Scale-down"): never a
/// control-plane node, one annotated `smartscale.io/scale-down-disabled=true`, one running a pod
/// that is not safe to evict, the last node running kube-system pods, or one whose group is at
/// its minimum; and only when its pods fit on the remaining schedulable nodes: by the capacity
/// model's filters and drain rules when there is one (no pod without a place, no blocking pod,
/// no budget exceeded), else by requests.
pub fn choose(
    obs: &Observation,
    model: Option<&mut CapacityModel>,
    limits: &Limits,
) -> Result<Candidate, String> {
    let mut owner: HashMap<&str, (usize, Lifecycle, i64)> = HashMap::new();
    for (gi, g) in obs.groups.iter().enumerate() {
        for i in &g.instances {
            owner.insert(i.id.as_str(), (gi, i.lifecycle, i.first_seen));
        }
    }
    let runs_kube_system = |n: &Node| {
        n.pods
            .iter()
            .any(|p| p.namespace == "kube-system" && p.moves_with_drain())
    };
    // Workers only: the control-plane node is never removed, so it never makes a worker's
    // kube-system pods "not the last".
    let kube_system_nodes = obs
        .nodes
        .iter()
        .filter(|n| n.ready && !n.control_plane && runs_kube_system(n))
        .count();

    let mut why = Exclusions::default();
    let mut eligible: Vec<(f64, usize, usize)> = Vec::new(); // (share, node index, group)
    for (ni, n) in obs.nodes.iter().enumerate() {
        if n.control_plane {
            why.add("control-plane");
            continue;
        }
        let Some((gi, lifecycle, first_seen)) =
            n.instance_id.as_deref().and_then(|id| owner.get(id))
        else {
            why.add("not in a managed group");
            continue;
        };
        let group = &obs.groups[*gi];
        if group.scale_down_blocked.is_some() {
            why.add("in a group that must not be scaled down now");
        } else if *lifecycle != Lifecycle::InService {
            why.add("not InService");
        } else if !n.ready || n.unschedulable {
            why.add("not ready or cordoned");
        } else if n.scale_down_disabled {
            why.add("annotated scale-down-disabled");
        } else if group.desired <= group.min {
            why.add("at group minimum");
        } else if limits.budget_spent.get(*gi).is_some_and(Option::is_some) {
            why.add("in a group whose disruption budget is used up");
        } else if limits.now - first_seen < limits.min_age_s {
            why.add("younger than consolidate_after");
        } else if n.pods.iter().any(|p| p.not_safe_to_evict) {
            why.add("running a pod not safe to evict");
        } else if model.is_none() && runs_kube_system(n) && kube_system_nodes <= 1 {
            // (The model's rule is cluster-autoscaler's: a kube-system pod without a budget
            // blocks its node.)
            why.add("last node running kube-system pods");
        } else {
            eligible.push((n.requested().dominant_share(n.allocatable), ni, *gi));
        }
    }
    eligible.sort_by(|a, b| {
        a.0.total_cmp(&b.0)
            .then_with(|| obs.nodes[a.1].name.cmp(&obs.nodes[b.1].name))
    });

    if let Some(m) = model {
        for &(_, ni, gi) in eligible.iter().take(MODEL_TRIES) {
            let node = &obs.nodes[ni];
            match m.removable(&node.name) {
                Ok(removal) => return Ok(candidate(node, gi, Some(removal))),
                Err(refusal) => {
                    why.add("whose pods have no other place or keep it");
                    why.refusals.push(format!("{}: {refusal}", node.name));
                }
            }
        }
        if eligible.len() > MODEL_TRIES {
            why.add_n(
                "not tried this decision (the least utilised are tried first)",
                (eligible.len() - MODEL_TRIES) as u32,
            );
        }
        return Err(why.summary());
    }
    // Free capacity of every node that can take pods, indexed like `obs.nodes`.
    let free: Vec<Option<Resources>> = obs
        .nodes
        .iter()
        .map(|n| (n.ready && !n.unschedulable && !n.tainted).then(|| n.free()))
        .collect();
    for (_, ni, gi) in eligible {
        let node = &obs.nodes[ni];
        let moving: Vec<Resources> = node
            .pods
            .iter()
            .filter(|p| p.moves_with_drain())
            .map(|p| p.requests)
            .collect();
        let mut others: Vec<Resources> = free
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != ni)
            .filter_map(|(_, f)| *f)
            .collect();
        if binpack::fits_into(&moving, &mut others) {
            return Ok(candidate(node, gi, None));
        }
        why.add("whose pods would not fit elsewhere");
    }
    Err(why.summary())
}

fn candidate(node: &Node, group: usize, removal: Option<Removal>) -> Candidate {
    Candidate {
        removal,
        victim: Victim {
            node: node.name.clone(),
            instance_id: node.instance_id.clone().unwrap_or_default(),
        },
        group,
        allocatable: node.allocatable,
    }
}

/// Takes `node` out of the observation as if it had been drained: its movable pods land on the
/// other schedulable nodes (first fit), so a following `choose` sees the cluster after removal.
pub fn remove(obs: &mut Observation, node: &str) {
    let Some(i) = obs.nodes.iter().position(|n| n.name == node) else {
        return;
    };
    let gone = obs.nodes.remove(i);
    for pod in gone.pods.into_iter().filter(|p| p.moves_with_drain()) {
        if let Some(n) = obs
            .nodes
            .iter_mut()
            .find(|n| n.ready && !n.unschedulable && !n.tainted && pod.requests.fits_in(n.free()))
        {
            n.pods.push(pod);
        }
    }
}
