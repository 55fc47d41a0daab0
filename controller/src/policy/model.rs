//! The capacity model in the decision (issue 10): with it, a scale-up grows the group whose
//! template node can host the pending pods under every scheduler filter, sized by packing them
//! there, and a scale-down removes only a node whose pods all have a place on the others (and
//! none of which blocks the removal). Without it (the seed baseline, the twin's requests-only
//! runs) the decision falls back to packing requests.

use super::{Observation, PolicyConfig};
use crate::capacity::scale_down::{self, Refusal, Removal};
use crate::capacity::scale_up::{self, ScaleUpPlan, ScaleUpRequest};
use crate::capacity::{Cluster, Expander, NodeGroup, ScaleDownConfig};
use std::collections::BTreeSet;

/// How many refusals a decision names in its reasons (the rest are counted).
pub(super) const NAMED: usize = 5;

/// The cluster as the scheduler sees it, and every group's template.
#[derive(Debug, Clone)]
pub struct CapacityModel {
    pub cluster: Cluster,
    /// Templates of the groups that have one (`spec.name` is the ASG's name).
    pub groups: Vec<NodeGroup>,
    /// Groups without a template, and why (an unknown instance type, say): not grown for
    /// pending pods.
    pub untemplated: Vec<(String, String)>,
    pub scale_down: ScaleDownConfig,
    pub expander: Expander,
}

/// What the model says about the pending pods.
pub(super) struct PendingVerdict {
    /// The group to grow (index into `Observation::groups`) and by how many nodes.
    pub grow: Option<(usize, u32)>,
    /// Pods that wait for nodes already booting.
    pub waiting: usize,
    /// `ns/name: why`, for pods no group's template can host.
    pub unhelpable: Vec<String>,
    /// Pending pods that are a reason to keep every node (all but the unhelpable).
    pub helpable: usize,
}

impl CapacityModel {
    /// Plans the scale-up for the pending pods. `in_flight[gi]` is the capacity group `gi` of
    /// the observation is already bringing up.
    pub(super) fn plan_pending(
        &mut self,
        obs: &Observation,
        in_flight: &[u32],
        reasons: &mut Vec<String>,
    ) -> PendingVerdict {
        let index = |name: &str| obs.groups.iter().position(|g| g.asg_name == name);
        let mut backoff = BTreeSet::new();
        for g in &mut self.groups {
            if let Some(gi) = index(&g.spec.name) {
                let o = &obs.groups[gi];
                g.spec.min = o.min;
                g.spec.max = o.max;
                g.spec.target = o.desired;
                g.spec.upcoming = in_flight.get(gi).copied().unwrap_or(0);
                if o.backoff.is_some() {
                    backoff.insert(o.asg_name.clone());
                }
            } else {
                // Not a group of this observation: never grown.
                g.spec.max = g.spec.target;
            }
        }
        // A pending DaemonSet pod is pinned to its one node: a new node brings its own copy
        // (cluster-autoscaler leaves them out the same way).
        let (daemon, pending): (Vec<_>, Vec<_>) = self
            .cluster
            .pending
            .iter()
            .cloned()
            .partition(|p| p.daemonset);
        if !daemon.is_empty() {
            reasons.push(format!(
                "{} DaemonSet pods pending on their nodes (not a reason to grow: a new node runs its own)",
                daemon.len()
            ));
        }
        let plan = scale_up::plan(
            &mut self.cluster.snapshot,
            &ScaleUpRequest {
                pending: &pending,
                groups: &self.groups,
                backoff: &backoff,
                expander: self.expander,
            },
        );
        explain(&plan, &self.untemplated, reasons);
        let unhelpable: Vec<String> = plan
            .unhelpable
            .iter()
            .map(|v| format!("{}: {}", v.pod, per_group(&v.reasons)))
            .collect();
        let grow = plan.increases.first().and_then(|inc| {
            let gi = index(&inc.group)?;
            Some((gi, inc.to.saturating_sub(obs.groups[gi].desired)))
        });
        PendingVerdict {
            grow: grow.filter(|(_, n)| *n > 0),
            waiting: plan.waiting.len(),
            helpable: pending.len().saturating_sub(plan.unhelpable.len()),
            unhelpable,
        }
    }

    /// Whether the node named `node` can go, with where its pods would land.
    pub fn removable(&mut self, node: &str) -> Result<Removal, String> {
        let id = self
            .cluster
            .snapshot
            .node_by_name(node)
            .ok_or_else(|| Refusal::Gone.to_string())?;
        scale_down::removable(
            &mut self.cluster.snapshot,
            id,
            &self.cluster.pdbs,
            &self.scale_down,
        )
        .map_err(|r| r.to_string())
    }

    /// Takes a removal's node out as if drained (its pods where the simulation put them, the
    /// budgets drawn on), so the next [`Self::removable`] sees the cluster after it.
    pub fn apply(&mut self, removal: &Removal) {
        scale_down::apply(&mut self.cluster.snapshot, removal, &mut self.cluster.pdbs);
    }
}

fn per_group(reasons: &[(String, String)]) -> String {
    if reasons.is_empty() {
        return "no node group".to_string();
    }
    reasons
        .iter()
        .map(|(g, why)| format!("{g}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The plan in the decision's reasons: what grows for whom, what waits, what no group helps.
fn explain(plan: &ScaleUpPlan, untemplated: &[(String, String)], reasons: &mut Vec<String>) {
    for (g, why) in untemplated {
        reasons.push(format!(
            "{g} has no node template ({why}): not grown for pending pods"
        ));
    }
    for inc in &plan.increases {
        reasons.push(format!(
            "{} pending pods need {} more nodes of {} (expected in {})",
            inc.pods.len(),
            inc.to - inc.from,
            inc.group,
            inc.zones.join(", ")
        ));
    }
    if !plan.fits_now.is_empty() {
        reasons.push(format!(
            "{} pending pods fit in free space already (the scheduler will place them)",
            plan.fits_now.len()
        ));
    }
    if !plan.waiting.is_empty() {
        reasons.push(format!(
            "{} pending pods wait for nodes already booting",
            plan.waiting.len()
        ));
    }
    for (what, verdicts) in [
        ("no new node of any group can take it", &plan.unhelpable),
        ("no group can grow for it now", &plan.blocked),
    ] {
        for v in verdicts.iter().take(NAMED) {
            reasons.push(format!("pod {}: {what} ({})", v.pod, per_group(&v.reasons)));
        }
        if verdicts.len() > NAMED {
            reasons.push(format!("and {} more pods: {what}", verdicts.len() - NAMED));
        }
    }
}

/// Whether the configuration leaves the model anything to do for pending pods.
pub(super) fn plans_pending(cfg: &PolicyConfig) -> bool {
    cfg.pending_pods && cfg.pending_pods_binpack
}
