//! Choosing the node to remove: the least utilised eligible worker whose pods fit elsewhere.

use super::{Lifecycle, Node, Observation, Resources, Victim, binpack};
use std::collections::HashMap;

/// A removable node and the group it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub victim: Victim,
    pub group: usize,
    pub allocatable: Resources,
}

/// Why nodes were not eligible, counted, for the decision's reasons.
#[derive(Debug, Default)]
struct Exclusions {
    counts: Vec<(&'static str, u32)>,
}

impl Exclusions {
    fn add(&mut self, why: &'static str) {
        match self.counts.iter_mut().find(|(w, _)| *w == why) {
            Some((_, n)) => *n += 1,
            None => self.counts.push((why, 1)),
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
        format!("no node can be removed: {}", parts.join(", "))
    }
}

/// Picks the node to remove, or says why none can go. Rules (DESIGN.md, "Scale-down"): never a
/// control-plane node, one annotated `smartscale.io/scale-down-disabled=true`, one running a pod
/// that is not safe to evict, the last node running kube-system pods, or one whose group is at
/// its minimum; and only when its pods fit on the remaining schedulable nodes by requests.
pub fn choose(obs: &Observation) -> Result<Candidate, String> {
    let mut owner: HashMap<&str, (usize, Lifecycle)> = HashMap::new();
    for (gi, g) in obs.groups.iter().enumerate() {
        for i in &g.instances {
            owner.insert(i.id.as_str(), (gi, i.lifecycle));
        }
    }
    let runs_kube_system = |n: &Node| {
        n.pods
            .iter()
            .any(|p| p.namespace == "kube-system" && p.moves_with_drain())
    };
    let kube_system_nodes = obs
        .nodes
        .iter()
        .filter(|n| n.ready && runs_kube_system(n))
        .count();

    let mut why = Exclusions::default();
    let mut eligible: Vec<(f64, usize, usize)> = Vec::new(); // (share, node index, group)
    for (ni, n) in obs.nodes.iter().enumerate() {
        if n.control_plane {
            why.add("control-plane");
            continue;
        }
        let Some((gi, lifecycle)) = n.instance_id.as_deref().and_then(|id| owner.get(id)) else {
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
        } else if n.pods.iter().any(|p| p.not_safe_to_evict) {
            why.add("running a pod not safe to evict");
        } else if runs_kube_system(n) && kube_system_nodes <= 1 {
            why.add("last node running kube-system pods");
        } else {
            eligible.push((n.requested().dominant_share(n.allocatable), ni, *gi));
        }
    }
    eligible.sort_by(|a, b| {
        a.0.total_cmp(&b.0)
            .then_with(|| obs.nodes[a.1].name.cmp(&obs.nodes[b.1].name))
    });

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
            return Ok(Candidate {
                victim: Victim {
                    node: node.name.clone(),
                    instance_id: node.instance_id.clone().unwrap_or_default(),
                },
                group: gi,
                allocatable: node.allocatable,
            });
        }
        why.add("whose pods would not fit elsewhere");
    }
    Err(why.summary())
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
