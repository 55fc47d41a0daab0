//! Scale-down: is a node removable? Every pod that must move has a place under every filter on
//! the remaining nodes (simulated in order, one placement changing the next), and no pod blocks
//! it (cluster-autoscaler's drainability rules). Each refusal names the pod and the reason.

use super::cluster::Pdb;
use super::pod::PodSpec;
use super::snapshot::{NodeId, Snapshot, Unplaced};
use super::volume::VolumeNeed;
use serde::Serialize;
use std::sync::Arc;

/// Controllers that recreate their pods elsewhere.
const KNOWN_CONTROLLERS: [&str; 5] = [
    "ReplicaSet",
    "ReplicationController",
    "StatefulSet",
    "Job",
    "DaemonSet",
];

/// cluster-autoscaler's drain flags, same defaults.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScaleDownConfig {
    /// `--skip-nodes-with-local-storage`: emptyDir/hostPath data would be lost.
    pub skip_nodes_with_local_storage: bool,
    /// `--skip-nodes-with-system-pods`: kube-system pods without a PDB.
    pub skip_nodes_with_system_pods: bool,
    /// `--skip-nodes-with-custom-controller-pods`: owners other than the built-in controllers.
    pub skip_nodes_with_custom_controller_pods: bool,
}

impl Default for ScaleDownConfig {
    fn default() -> Self {
        ScaleDownConfig {
            skip_nodes_with_local_storage: true,
            skip_nodes_with_system_pods: true,
            skip_nodes_with_custom_controller_pods: true,
        }
    }
}

/// A pod that keeps its node.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "rule")]
pub enum Blocker {
    /// `cluster-autoscaler.kubernetes.io/safe-to-evict: "false"`.
    NotSafeToEvict,
    /// No controller would recreate it.
    NotReplicated,
    /// Owned by a controller kind SmartScale does not know to recreate pods.
    CustomController { kind: String },
    /// emptyDir/hostPath volumes whose data would be lost.
    LocalStorage { volumes: Vec<String> },
    /// A kube-system pod no PodDisruptionBudget covers.
    SystemPodWithoutPdb,
    /// Its PersistentVolume lives on this node.
    NodeLocalVolume { pv: String },
    /// Evicting this node's pods covered by the budget would exceed what it allows.
    PdbExceeded {
        pdb: String,
        allowed: i32,
        on_node: i32,
    },
}

impl std::fmt::Display for Blocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Blocker::NotSafeToEvict => f.write_str("annotated safe-to-evict=false"),
            Blocker::NotReplicated => {
                f.write_str("not replicated: no controller would recreate it")
            }
            Blocker::CustomController { kind } => {
                write!(
                    f,
                    "owned by a {kind}, not a controller known to recreate pods"
                )
            }
            Blocker::LocalStorage { volumes } => {
                write!(f, "local storage ({}) would be lost", volumes.join(", "))
            }
            Blocker::SystemPodWithoutPdb => {
                f.write_str("kube-system pod without a PodDisruptionBudget")
            }
            Blocker::NodeLocalVolume { pv } => write!(f, "its volume {pv} lives on this node"),
            Blocker::PdbExceeded {
                pdb,
                allowed,
                on_node,
            } => write!(
                f,
                "PodDisruptionBudget {pdb} allows {allowed} disruption(s), the node runs {on_node} of its pods"
            ),
        }
    }
}

/// Why a node cannot be removed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Refusal {
    ControlPlane,
    ScaleDownDisabled,
    /// Already removed from the snapshot.
    Gone,
    Blocked {
        pod: String,
        #[serde(flatten)]
        blocker: Blocker,
    },
    NoPlace {
        pod: String,
        why: String,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::ControlPlane => f.write_str("control-plane node"),
            Refusal::ScaleDownDisabled => f.write_str("annotated scale-down-disabled"),
            Refusal::Gone => f.write_str("no longer in the cluster"),
            Refusal::Blocked { pod, blocker } => write!(f, "pod {pod}: {blocker}"),
            Refusal::NoPlace { pod, why } => write!(f, "pod {pod} has no other place: {why}"),
        }
    }
}

/// Where a pod of the removed node would go.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Move {
    pub pod: String,
    pub to: String,
}

/// A removable node and the simulated moves.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Removal {
    pub node: String,
    pub moves: Vec<Move>,
    /// Indices into the PDB list and how many of its pods the removal disrupts.
    pub pdb_use: Vec<(usize, i32)>,
}

/// The pods that must move off a node, and the budgets (index, pods covered) they draw on.
pub type PodsToMove = (Vec<Arc<PodSpec>>, Vec<(usize, i32)>);

/// The pods of `node` that would have to move, or the first one that blocks the removal.
pub fn pods_to_move(
    snap: &Snapshot,
    node: NodeId,
    pdbs: &[Pdb],
    cfg: &ScaleDownConfig,
) -> Result<PodsToMove, Refusal> {
    let info = snap.node(node);
    if info.control_plane {
        return Err(Refusal::ControlPlane);
    }
    if info.scale_down_disabled {
        return Err(Refusal::ScaleDownDisabled);
    }
    if snap.is_removed(node) {
        return Err(Refusal::Gone);
    }
    let mut moving = Vec::new();
    for pod in snap.pods_on(node) {
        if !pod.moves_with_drain() {
            continue;
        }
        if let Some(blocker) = blocker(pod, pdbs, cfg) {
            return Err(Refusal::Blocked {
                pod: pod.key(),
                blocker,
            });
        }
        moving.push(pod.clone());
    }
    let mut pdb_use = Vec::new();
    for (i, b) in pdbs.iter().enumerate() {
        let covered: Vec<&Arc<PodSpec>> = moving.iter().filter(|p| b.covers(p)).collect();
        let n = covered.len() as i32;
        if n == 0 {
            continue;
        }
        if n > b.disruptions_allowed {
            return Err(Refusal::Blocked {
                pod: covered[0].key(),
                blocker: Blocker::PdbExceeded {
                    pdb: format!("{}/{}", b.namespace, b.name),
                    allowed: b.disruptions_allowed,
                    on_node: n,
                },
            });
        }
        pdb_use.push((i, n));
    }
    Ok((moving, pdb_use))
}

fn blocker(pod: &PodSpec, pdbs: &[Pdb], cfg: &ScaleDownConfig) -> Option<Blocker> {
    if pod.safe_to_evict == Some(false) {
        return Some(Blocker::NotSafeToEvict);
    }
    if pod.safe_to_evict != Some(true) {
        match &pod.owner {
            None => return Some(Blocker::NotReplicated),
            Some(o)
                if cfg.skip_nodes_with_custom_controller_pods
                    && !KNOWN_CONTROLLERS.contains(&o.kind.as_str()) =>
            {
                return Some(Blocker::CustomController {
                    kind: o.kind.clone(),
                });
            }
            Some(_) => {}
        }
        if cfg.skip_nodes_with_local_storage && !pod.local_storage.is_empty() {
            return Some(Blocker::LocalStorage {
                volumes: pod.local_storage.clone(),
            });
        }
        if cfg.skip_nodes_with_system_pods
            && pod.namespace == "kube-system"
            && !pdbs.iter().any(|b| b.covers(pod))
        {
            return Some(Blocker::SystemPodWithoutPdb);
        }
    }
    pod.volumes.iter().find_map(|v| match v {
        VolumeNeed::Bound {
            pv,
            node_local: true,
            ..
        } => Some(Blocker::NodeLocalVolume { pv: pv.clone() }),
        _ => None,
    })
}

/// Whether `node` can be removed: its pods' blockers, budgets, and a place for each pod that
/// must move on the remaining nodes. The snapshot is left as it was.
pub fn removable(
    snap: &mut Snapshot,
    node: NodeId,
    pdbs: &[Pdb],
    cfg: &ScaleDownConfig,
) -> Result<Removal, Refusal> {
    let (moving, pdb_use) = pods_to_move(snap, node, pdbs, cfg)?;
    snap.fork();
    let result = simulate(snap, node, &moving);
    snap.revert();
    result.map(|moves| Removal {
        node: snap.node(node).name.clone(),
        moves,
        pdb_use,
    })
}

fn simulate(
    snap: &mut Snapshot,
    node: NodeId,
    moving: &[Arc<PodSpec>],
) -> Result<Vec<Move>, Refusal> {
    snap.remove_node(node);
    let mut moves = Vec::with_capacity(moving.len());
    for (pod, placed) in moving.iter().zip(snap.place_all(moving, None)) {
        match placed {
            Ok(to) => moves.push(Move {
                pod: pod.key(),
                to: snap.node(to).name.clone(),
            }),
            Err(why) => return Err(no_place(pod, &why)),
        }
    }
    Ok(moves)
}

fn no_place(pod: &PodSpec, why: &Unplaced) -> Refusal {
    Refusal::NoPlace {
        pod: pod.key(),
        why: why.to_string(),
    }
}

/// Nodes that may be considered at all (not control plane, not disabled), least utilised first.
pub fn candidates(snap: &Snapshot) -> Vec<NodeId> {
    let mut c: Vec<(f64, NodeId)> = snap
        .live_nodes()
        .filter(|&n| {
            let i = snap.node(n);
            !i.control_plane && !i.scale_down_disabled && i.template_of.is_none()
        })
        .map(|n| (snap.utilisation(n), n))
        .collect();
    c.sort_by(|a, b| {
        a.0.total_cmp(&b.0)
            .then_with(|| snap.node(a.1).name.cmp(&snap.node(b.1).name))
    });
    c.into_iter().map(|(_, n)| n).collect()
}

/// The verdict on several candidates.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Verdicts {
    pub chosen: Option<Removal>,
    /// Nodes refused before the chosen one, with why.
    pub refused: Vec<(String, Refusal)>,
}

/// The first removable node among `candidates` (in their order), trying at most `limit`.
pub fn find_removable(
    snap: &mut Snapshot,
    candidates: &[NodeId],
    pdbs: &[Pdb],
    cfg: &ScaleDownConfig,
    limit: usize,
) -> Verdicts {
    let mut v = Verdicts::default();
    for &n in candidates.iter().take(limit) {
        match removable(snap, n, pdbs, cfg) {
            Ok(r) => {
                v.chosen = Some(r);
                break;
            }
            Err(why) => v.refused.push((snap.node(n).name.clone(), why)),
        }
    }
    v
}

/// Applies a removal to the snapshot and the budgets (the node goes, its pods move where the
/// simulation put them), so a following [`removable`] sees the cluster after it.
pub fn apply(snap: &mut Snapshot, removal: &Removal, pdbs: &mut [Pdb]) {
    let Some(node) = snap.node_by_name(&removal.node) else {
        return;
    };
    let pods = snap.remove_node(node);
    for m in &removal.moves {
        if let (Some(pod), Some(to)) = (
            pods.iter().find(|p| p.key() == m.pod),
            snap.node_by_name(&m.to),
        ) {
            snap.bind(pod, to);
        }
    }
    for &(i, n) in &removal.pdb_use {
        if let Some(b) = pdbs.get_mut(i) {
            b.disruptions_allowed -= n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capacity::filters::testing::*;
    use crate::capacity::pod::{AffinityTerm, NsSet, Owner};
    use crate::capacity::selector::{LabelReq, Selector};
    use crate::capacity::volume::Catalog;

    fn web(name: &str, cpu: i64) -> PodSpec {
        let mut p = pod(name, &[("app", "web")]);
        p.requests.milli_cpu = cpu;
        p
    }

    fn pdb(allowed: i32) -> Pdb {
        Pdb {
            namespace: "default".into(),
            name: "web".into(),
            selector: Selector::from_reqs(vec![LabelReq::In(
                "app".into(),
                ["web".to_string()].into(),
            )]),
            disruptions_allowed: allowed,
        }
    }

    fn names(s: &Snapshot, ids: &[NodeId]) -> Vec<String> {
        ids.iter().map(|&i| s.node(i).name.clone()).collect()
    }

    #[test]
    fn a_node_whose_pods_fit_elsewhere_is_removable() {
        let mut s = snapshot(
            vec![node("a", "z1"), node("b", "z1")],
            vec![(web("w1", 1000), "a"), (web("w2", 1000), "b")],
        );
        let a = s.node_by_name("a").unwrap();
        let r = removable(&mut s, a, &[], &ScaleDownConfig::default()).unwrap();
        assert_eq!(
            r.moves,
            vec![Move {
                pod: "default/w1".into(),
                to: "b".into()
            }]
        );
        assert_eq!(s.requested(a).milli_cpu, 1000, "the snapshot is unchanged");
    }

    #[test]
    fn pods_must_fit_in_order_under_every_filter() {
        // Two pods of 3 CPU from a cannot both go to b (4 CPU, 0 used).
        let mut s = snapshot(
            vec![node("a", "z1"), node("b", "z1")],
            vec![(web("w1", 3000), "a"), (web("w2", 1000), "a")],
        );
        let a = s.node_by_name("a").unwrap();
        s.add_pod(Arc::new(web("w3", 1000)), s.node_by_name("b").unwrap());
        let err = removable(&mut s, a, &[], &ScaleDownConfig::default()).unwrap_err();
        assert!(
            matches!(err, Refusal::NoPlace { ref pod, .. } if pod == "default/w2"),
            "{err}"
        );

        // Anti-affinity: a second replica cannot join the first on b.
        let term = AffinityTerm {
            namespaces: NsSet::one("default"),
            selector: Selector::from_reqs(vec![LabelReq::In(
                "app".into(),
                ["web".to_string()].into(),
            )]),
            topology_key: HOST.into(),
        };
        let mut w1 = web("w1", 100);
        w1.anti_affinity.push(term.clone());
        let mut w2 = web("w2", 100);
        w2.anti_affinity.push(term);
        let mut s = snapshot(
            vec![node("a", "z1"), node("b", "z1")],
            vec![(w1, "a"), (w2, "b")],
        );
        let a = s.node_by_name("a").unwrap();
        let err = removable(&mut s, a, &[], &ScaleDownConfig::default()).unwrap_err();
        assert!(err.to_string().contains("anti-affinity"), "{err}");
    }

    // cluster-autoscaler FAQ, "What types of pods can prevent CA from removing a node?".
    #[test]
    fn blocking_pods_are_named() {
        let cfg = ScaleDownConfig::default();
        let case = |p: PodSpec, pdbs: &[Pdb]| {
            let mut s = snapshot(vec![node("a", "z1"), node("b", "z1")], vec![(p, "a")]);
            let a = s.node_by_name("a").unwrap();
            removable(&mut s, a, pdbs, &cfg)
        };
        let mut bare = web("bare", 100);
        bare.owner = None;
        assert!(matches!(
            case(bare.clone(), &[]),
            Err(Refusal::Blocked {
                blocker: Blocker::NotReplicated,
                ..
            })
        ));
        bare.safe_to_evict = Some(true);
        assert!(
            case(bare, &[]).is_ok(),
            "safe-to-evict=true lets a bare pod go"
        );

        let mut pinned = web("pinned", 100);
        pinned.safe_to_evict = Some(false);
        assert!(matches!(
            case(pinned, &[]),
            Err(Refusal::Blocked {
                blocker: Blocker::NotSafeToEvict,
                ..
            })
        ));

        let mut scratch = web("scratch", 100);
        scratch.local_storage = vec!["tmp".into()];
        assert!(matches!(
            case(scratch.clone(), &[]),
            Err(Refusal::Blocked {
                blocker: Blocker::LocalStorage { .. },
                ..
            })
        ));
        let mut lenient = cfg.clone();
        lenient.skip_nodes_with_local_storage = false;
        let mut s = snapshot(vec![node("a", "z1"), node("b", "z1")], vec![(scratch, "a")]);
        let a = s.node_by_name("a").unwrap();
        assert!(removable(&mut s, a, &[], &lenient).is_ok());

        let mut system = web("dns", 100);
        system.namespace = "kube-system".into();
        assert!(matches!(
            case(system.clone(), &[]),
            Err(Refusal::Blocked {
                blocker: Blocker::SystemPodWithoutPdb,
                ..
            })
        ));
        let mut sys_pdb = pdb(1);
        sys_pdb.namespace = "kube-system".into();
        assert!(
            case(system, &[sys_pdb]).is_ok(),
            "a PDB makes a system pod movable"
        );

        let mut custom = web("rollout", 100);
        custom.owner = Some(Owner {
            kind: "Rollout".into(),
            name: "r".into(),
        });
        assert!(matches!(
            case(custom, &[]),
            Err(Refusal::Blocked {
                blocker: Blocker::CustomController { .. },
                ..
            })
        ));

        let mut ds = web("agent", 100);
        ds.daemonset = true;
        ds.owner = Some(Owner {
            kind: "DaemonSet".into(),
            name: "agent".into(),
        });
        ds.namespace = "kube-system".into();
        assert!(
            case(ds, &[]).is_ok(),
            "DaemonSet pods stay, they do not block"
        );
    }

    #[test]
    fn a_node_local_volume_blocks() {
        let catalog = Catalog::new(
            &[serde_json::from_value(serde_json::json!({"metadata": {"name": "lp-1"}, "spec": {
                "capacity": {"storage": "1Gi"}, "hostPath": {"path": "/x"}, "claimRef": {"namespace": "default", "name": "d"},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": HOST, "operator": "In", "values": ["a"]}]}]}}}})).unwrap()],
            &[serde_json::from_value(serde_json::json!({"metadata": {"name": "d", "namespace": "default"}, "spec": {"volumeName": "lp-1"}})).unwrap()],
            &[],
            &[],
        )
        .unwrap();
        let mut db = web("db", 100);
        db.volumes
            .push(catalog.resolve("default", "d", None).unwrap());
        db.safe_to_evict = Some(true);
        let mut s = snapshot_with(
            vec![node("a", "z1"), node("b", "z1")],
            vec![(db, "a")],
            catalog,
        );
        let a = s.node_by_name("a").unwrap();
        let err = removable(&mut s, a, &[], &ScaleDownConfig::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "pod default/db: its volume lp-1 lives on this node"
        );
    }

    // https://kubernetes.io/docs/concepts/workloads/pods/disruptions/#pod-disruption-budgets:
    // evictions beyond disruptionsAllowed are refused, so a node running more of the budget's
    // pods than it allows cannot be drained now.
    #[test]
    fn budgets_are_counted_not_just_tested() {
        let mut s = snapshot(
            vec![node("a", "z1"), node("b", "z1"), node("c", "z1")],
            vec![
                (web("w1", 100), "a"),
                (web("w2", 100), "a"),
                (web("w3", 100), "b"),
            ],
        );
        let (a, b) = (s.node_by_name("a").unwrap(), s.node_by_name("b").unwrap());
        let cfg = ScaleDownConfig::default();
        let err = removable(&mut s, a, &[pdb(1)], &cfg).unwrap_err();
        assert_eq!(
            err.to_string(),
            "pod default/w1: PodDisruptionBudget default/web allows 1 disruption(s), the node runs 2 of its pods"
        );
        let mut budgets = vec![pdb(1)];
        let r = removable(&mut s, b, &budgets, &cfg).unwrap();
        assert_eq!(r.pdb_use, vec![(0, 1)]);
        // After removing b the budget is used up.
        apply(&mut s, &r, &mut budgets);
        assert_eq!(budgets[0].disruptions_allowed, 0);
        let c = s.node_by_name("c").unwrap();
        assert!(s.pods_on(c).any(|p| p.name == "w3"));
    }

    #[test]
    fn control_plane_and_disabled_nodes_are_never_candidates() {
        let mut cp = node("cp", "z1");
        cp.control_plane = true;
        let mut off = node("off", "z1");
        off.scale_down_disabled = true;
        let mut s = snapshot(
            vec![cp, off, node("busy", "z1"), node("idle", "z1")],
            vec![(web("w", 2000), "busy")],
        );
        let c = candidates(&s);
        assert_eq!(names(&s, &c), vec!["idle", "busy"]);
        let cp = s.node_by_name("cp").unwrap();
        assert_eq!(
            removable(&mut s, cp, &[], &ScaleDownConfig::default()),
            Err(Refusal::ControlPlane)
        );
        let v = find_removable(&mut s, &c, &[], &ScaleDownConfig::default(), 10);
        assert_eq!(v.chosen.map(|r| r.node), Some("idle".into()));
    }
}
