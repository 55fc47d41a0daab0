//! The simulated cluster as the capacity model sees it, so the twin's decisions go through the
//! same scheduler filters and drain rules as the controller's (`policy::decide_with`). The twin's
//! pods are replicated pods with requests, and a scenario's StatefulSet pods whose local volume
//! pins them to one node (as a bound `local-path` PV's node affinity does); its nodes are one
//! shape in one zone.

use super::cluster::{Cluster, LocalVolume, NodeState, SimPod};
use crate::capacity::node::TAG_RESOURCES;
use crate::capacity::pod::Owner;
use crate::capacity::selector::{NodeOp, NodeReq, NodeSelector, NodeTerm};
use crate::capacity::volume::{Catalog, HOSTNAME, VolumeNeed};
use crate::capacity::{
    self, Expander, GroupSpec, NodeGroup, NodeInfo, PodSpec, ScaleDownConfig, Snapshot,
};
use crate::policy::{self, CapacityModel, Resources};
use std::sync::Arc;

const ZONE: &str = "sim-1a";
const GIB: f64 = (1u64 << 30) as f64;

fn milli(r: Resources) -> (i64, i64) {
    ((r.cpu * 1000.0).round() as i64, (r.memory * GIB) as i64)
}

/// The model of `cluster` now, with `group` (the twin's one ASG) and its template.
pub fn model(cluster: &Cluster, group: &policy::Group) -> CapacityModel {
    let (cpu, memory) = milli(cluster.opts.allocatable);
    let mut nodes = Vec::new();
    let mut members = Vec::new();
    for n in &cluster.nodes {
        if matches!(n.state, NodeState::Booting { .. }) {
            continue; // not registered with Kubernetes yet
        }
        let mut info = NodeInfo::simple(&n.name(), cpu, memory, ZONE);
        info.instance_id = Some(n.instance_id());
        info.unschedulable = matches!(n.state, NodeState::Draining { .. });
        if n.state == NodeState::Ready {
            members.push(n.name());
        }
        nodes.push(info);
    }
    let mut bound = Vec::new();
    let mut pending = Vec::new();
    for p in &cluster.pods {
        let mut spec = pod_spec(p);
        match p.node {
            Some(id) => {
                spec.node_name = Some(format!("node-{id:04}"));
                bound.push(Arc::new(spec));
            }
            None => pending.push(Arc::new(spec)),
        }
    }
    let (snapshot, _) = Snapshot::new(nodes, bound, Arc::new(Catalog::default()));
    let cluster_model = capacity::Cluster {
        snapshot,
        pending,
        pdbs: Vec::new(),
        daemonsets: Vec::new(),
        unreadable: Vec::new(),
    };
    // The template: a Ready node when there is one, else the shape from the ASG's tags (on
    // the instance type the twin's default shape and price are: 2 vCPU, 4 GiB).
    let mut spec = GroupSpec::new(
        &group.asg_name,
        "t3.medium",
        &[ZONE],
        group.min,
        group.max,
        group.desired,
    );
    spec.tags
        .insert(format!("{TAG_RESOURCES}cpu"), format!("{cpu}m"));
    spec.tags
        .insert(format!("{TAG_RESOURCES}memory"), memory.to_string());
    let names: Vec<&str> = members.iter().map(String::as_str).collect();
    let mut groups = Vec::new();
    let mut untemplated = Vec::new();
    match cluster_model.template(&spec, &names) {
        Ok(template) => groups.push(NodeGroup { spec, template }),
        Err(e) => untemplated.push((group.asg_name.clone(), e.to_string())),
    }
    CapacityModel {
        cluster: cluster_model,
        groups,
        untemplated,
        scale_down: ScaleDownConfig::default(),
        expander: Expander::default(),
    }
}

fn pod_spec(p: &SimPod) -> PodSpec {
    let (c, m) = milli(p.requests);
    let mut spec = PodSpec::simple("default", &format!("pod-{}", p.id), c, m);
    let home = match p.volume {
        None | Some(LocalVolume::Unbound) => return spec,
        Some(LocalVolume::On(id)) => Some(id),
        // Its PV still names the node that is gone: no node can ever satisfy it.
        Some(LocalVolume::Lost) => None,
    };
    spec.owner = Some(Owner {
        kind: "StatefulSet".into(),
        name: "db".into(),
    });
    let node = home.map_or_else(|| format!("gone-{}", p.id), |id| format!("node-{id:04}"));
    spec.volumes.push(VolumeNeed::Bound {
        claim: format!("data-pod-{}", p.id),
        pv: format!("pvc-local-{}", p.id),
        node_affinity: Some(NodeSelector {
            terms: vec![NodeTerm {
                exprs: vec![NodeReq {
                    key: HOSTNAME.to_string(),
                    op: NodeOp::In([node].into()),
                }],
                fields: Vec::new(),
            }],
        }),
        zones: Vec::new(),
        node_local: true,
    });
    spec
}
