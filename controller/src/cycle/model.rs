//! The capacity model of this cycle: the watched objects as the scheduler sees them, and each
//! worker group's template node (from a Ready node of the group, else from its ASG's
//! cluster-autoscaler tags and instance type), for the policy to plan with.

use super::Context;
use crate::actuator::AsgState;
use crate::capacity::{Cluster, GroupSpec, NodeGroup};
use crate::policy::CapacityModel;
use crate::signals::cluster::ClusterSnapshot;
use std::collections::BTreeMap;

/// Builds the model, or says why it cannot (then the policy packs requests, and the error is
/// logged and counted: a model missing what a node runs would see room that is not there).
pub(super) fn build(
    ctx: &Context,
    asgs: &[AsgState],
    snap: &ClusterSnapshot,
) -> Result<CapacityModel, String> {
    let cluster = Cluster::from_objects(&snap.objects.as_capacity()).map_err(|e| e.to_string())?;
    for (pod, why) in &cluster.unreadable {
        tracing::warn!(%pod, %why, "pending pod not understood; not a reason to scale up");
    }
    // Which node is which instance: the group's members are its instances' nodes.
    let node_of: BTreeMap<&str, &str> = snap
        .nodes
        .iter()
        .filter_map(|n| Some((n.instance_id.as_deref()?, n.name.as_str())))
        .collect();
    let mut groups = Vec::new();
    let mut untemplated = Vec::new();
    for cfg in &ctx.cfg.node_groups {
        let Some(asg) = asgs.iter().find(|a| a.name == cfg.asg_name) else {
            continue;
        };
        let mut spec = spec(asg, cfg.instance_type.as_deref(), cfg.hourly_price);
        spec.priority = cfg.priority;
        let members: Vec<&str> = asg
            .live()
            .filter_map(|i| node_of.get(i.id.as_str()).copied())
            .collect();
        match cluster.template(&spec, &members) {
            Ok(template) => groups.push(NodeGroup { spec, template }),
            Err(e) => untemplated.push((asg.name.clone(), e.to_string())),
        }
    }
    Ok(CapacityModel {
        cluster,
        groups,
        untemplated,
        scale_down: ctx.cfg.capacity.scale_down.clone(),
        expander: ctx.cfg.capacity.expander,
    })
}

/// The group as the model needs it. Instance types: a mixed-instances policy's overrides, else
/// the configured type, else the types its instances run.
fn spec(asg: &AsgState, instance_type: Option<&str>, price: Option<f64>) -> GroupSpec {
    let mut types = asg.instance_types.clone();
    if types.is_empty() {
        types.extend(instance_type.map(str::to_string));
    }
    if types.is_empty() {
        types = asg.live().map(|i| i.instance_type.clone()).collect();
        types.sort();
        types.dedup();
    }
    let mut per_zone = BTreeMap::new();
    for i in asg.live() {
        *per_zone.entry(i.zone.clone()).or_insert(0) += 1;
    }
    let mut spec = GroupSpec::new(&asg.name, "", &[], asg.min, asg.max, asg.desired);
    spec.instance_types = types;
    spec.zones = asg.zones.clone();
    spec.instances_per_zone = per_zone;
    spec.tags = asg.tags.clone();
    spec.price_per_hour = price;
    spec
}
