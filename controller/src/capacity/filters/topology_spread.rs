//! PodTopologySpread (whenUnsatisfiable: DoNotSchedule): the node must carry the constraint's
//! topology key, and placing the pod in its domain must keep
//! `matching pods in the domain + (1 if the pod matches its own selector) - global minimum <= maxSkew`.
//!
//! As in the scheduler: only nodes with every constraint's key, passing the pod's node
//! affinity (`nodeAffinityPolicy: Honor`, the default) and, with `nodeTaintsPolicy: Honor`,
//! whose taints the pod tolerates, form the domains; terminating pods are not counted; an
//! empty label selector counts no pod; with fewer domains than `minDomains` the global
//! minimum is 0.

use super::{Prepared, Reason};
use crate::capacity::pod::PodSpec;
use crate::capacity::selector::untolerated;
use crate::capacity::snapshot::{FxMap, NodeId, SelId, Snapshot, TopoId};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub(crate) struct Constraint {
    topo: TopoId,
    max_skew: i64,
    min: i64,
    self_match: i64,
    counts: FxMap<u32, i64>,
}

pub(crate) type State = Vec<Constraint>;

pub(crate) fn prepare(snap: &mut Snapshot, pod: &Arc<PodSpec>) -> State {
    if pod.spread.is_empty() {
        return Vec::new();
    }
    let ns = crate::capacity::pod::NsSet::one(&pod.namespace);
    let parts: Vec<(TopoId, SelId)> = pod
        .spread
        .iter()
        .map(|c| {
            (
                snap.topo(&c.topology_key),
                snap.intern_sel_refs(&[(&ns, &c.selector)]),
            )
        })
        .collect();
    let mut out: State = pod
        .spread
        .iter()
        .zip(&parts)
        .map(|(c, &(topo, _))| Constraint {
            topo,
            max_skew: i64::from(c.max_skew),
            min: 0,
            self_match: i64::from(c.selector.matches(&pod.labels)),
            counts: FxMap::default(),
        })
        .collect();
    let affinity = super::node_affinity::matches;
    for node in snap.live_nodes() {
        let info = snap.node(node);
        if parts
            .iter()
            .any(|&(t, _)| snap.topos[t].node_val[node].is_none())
        {
            continue;
        }
        let fits_affinity = affinity(pod, info);
        let tolerated = untolerated(&info.taints, &pod.tolerations).is_none();
        for ((c, &(topo, sel)), st) in pod.spread.iter().zip(&parts).zip(out.iter_mut()) {
            if (c.honor_node_affinity && !fits_affinity) || (c.honor_node_taints && !tolerated) {
                continue;
            }
            let Some(v) = snap.topos[topo].node_val[node] else {
                continue;
            };
            let n = if c.selector.is_empty() {
                0
            } else {
                snap.sels[sel]
                    .counts
                    .get(&node)
                    .map_or(0, |c| i64::from(c.live))
            };
            *st.counts.entry(v).or_insert(0) += n;
        }
    }
    for (c, st) in pod.spread.iter().zip(out.iter_mut()) {
        st.min = if (st.counts.len() as i64) < i64::from(c.min_domains) {
            0
        } else {
            st.counts.values().copied().min().unwrap_or(0)
        };
    }
    out
}

pub fn check(p: &Prepared, node: NodeId, snap: &Snapshot) -> Result<(), Reason> {
    for c in &p.spread {
        let Some(v) = snap.topos[c.topo].node_val[node] else {
            return Err(Reason::SpreadLabel);
        };
        let here = c.counts.get(&v).copied().unwrap_or(0);
        if here + c.self_match - c.min > c.max_skew {
            return Err(Reason::SpreadSkew);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use crate::capacity::pod::{PodSpec, SpreadConstraint};
    use crate::capacity::selector::{LabelReq, Selector, Taint};
    use std::sync::Arc;

    fn spread(key: &str, max_skew: i32) -> SpreadConstraint {
        SpreadConstraint {
            max_skew,
            topology_key: key.into(),
            selector: Selector::from_reqs(vec![LabelReq::In(
                "app".into(),
                ["web".to_string()].into(),
            )]),
            min_domains: 1,
            honor_node_affinity: true,
            honor_node_taints: false,
        }
    }

    fn web(name: &str) -> PodSpec {
        pod(name, &[("app", "web")])
    }

    fn spreading(c: SpreadConstraint) -> PodSpec {
        let mut p = web("new");
        p.spread.push(c);
        p
    }

    // https://kubernetes.io/docs/concepts/scheduling-eviction/topology-spread-constraints/#example-one-topologyspreadconstraint:
    // zones A (2 pods) and B (0): with maxSkew 1 the incoming pod can only go to zone B.
    #[test]
    fn max_skew_against_the_global_minimum() {
        let mut s = snapshot(
            vec![
                node("a1", "A"),
                node("a2", "A"),
                node("b1", "B"),
                node("b2", "B"),
            ],
            vec![(web("w1"), "a1"), (web("w2"), "a2")],
        );
        assert_eq!(fits(&mut s, spreading(spread(ZONE, 1))), vec!["b1", "b2"]);
        assert_eq!(
            fits(&mut s, spreading(spread(ZONE, 2))).len(),
            2,
            "2 + 1 - 0 > 2 in A"
        );
        assert_eq!(fits(&mut s, spreading(spread(ZONE, 3))).len(), 4);
        let err = s
            .check(&Arc::new(spreading(spread(ZONE, 1))), 0)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "node(s) didn't match pod topology spread constraints"
        );
    }

    // "Nodes without the topologyKey label are not considered" and a node lacking it cannot
    // take the pod (UnschedulableAndUnresolvable, "missing required label").
    #[test]
    fn nodes_without_the_key_are_out() {
        let mut bare = node("bare", "A");
        bare.labels.remove(ZONE);
        let mut s = snapshot(vec![node("a1", "A"), bare], vec![]);
        assert_eq!(fits(&mut s, spreading(spread(ZONE, 1))), vec!["a1"]);
        let err = s
            .check(&Arc::new(spreading(spread(ZONE, 1))), 1)
            .unwrap_err();
        assert!(err.to_string().contains("missing required label"));
    }

    // #spread-constraint-definition, minDomains: "When the number of eligible domains with
    // matching topology keys is less than minDomains, Pod topology spread treats global
    // minimum as 0".
    #[test]
    fn min_domains_forces_new_domains() {
        let mut s = snapshot(
            vec![node("a1", "A"), node("b1", "B")],
            vec![(web("w1"), "a1"), (web("w2"), "b1")],
        );
        let mut c = spread(ZONE, 1);
        assert_eq!(fits(&mut s, spreading(c.clone())).len(), 2);
        c.min_domains = 3;
        assert!(
            fits(&mut s, spreading(c.clone())).is_empty(),
            "1 + 1 - 0 > 1 everywhere"
        );
        // A third zone appearing (a template node) satisfies it.
        let n = s.add_node(node("c1", "C"));
        assert_eq!(fits(&mut s, spreading(c)), vec!["c1"]);
        assert_eq!(s.node(n).name, "c1");
    }

    // nodeAffinityPolicy Honor (default): nodes the pod's nodeSelector excludes do not form
    // domains; Ignore counts them. nodeTaintsPolicy Honor drops nodes with untolerated taints.
    #[test]
    fn node_inclusion_policies() {
        let mut c1 = node("c1", "C");
        c1.labels.insert("pool".into(), "other".into());
        let mut nodes = vec![node("a1", "A"), node("b1", "B"), c1];
        for n in nodes.iter_mut().take(2) {
            n.labels.insert("pool".into(), "web".into());
        }
        let mut s = snapshot(nodes, vec![(web("w1"), "a1"), (web("w2"), "b1")]);
        let mut p = spreading(spread(ZONE, 1));
        p.node_selector.insert("pool".into(), "web".into());
        assert_eq!(fits(&mut s, p.clone()).len(), 2, "zone C is not a domain");
        p.spread[0].honor_node_affinity = false;
        assert!(
            fits(&mut s, p).is_empty(),
            "zone C (0 pods) is the minimum now"
        );

        let mut tainted = node("c1", "C");
        tainted
            .taints
            .push(Taint::parse("dedicated", "x:NoSchedule").unwrap());
        let mut s = snapshot(
            vec![node("a1", "A"), node("b1", "B"), tainted],
            vec![(web("w1"), "a1"), (web("w2"), "b1")],
        );
        assert!(
            fits(&mut s, spreading(spread(ZONE, 1))).is_empty(),
            "Ignore: C counts with 0"
        );
        let mut honor = spread(ZONE, 1);
        honor.honor_node_taints = true;
        assert_eq!(fits(&mut s, spreading(honor)).len(), 2);
    }

    // countPodsMatchSelector skips terminating pods and pods of other namespaces; a pod that
    // does not match its own selector adds 0.
    #[test]
    fn what_is_counted() {
        let mut leaving = web("w-old");
        leaving.terminating = true;
        let mut other_ns = PodSpec::simple("prod", "w-prod", 100, 0);
        other_ns.labels.insert("app".into(), "web".into());
        let mut s = snapshot(
            vec![node("a1", "A"), node("b1", "B")],
            vec![(web("w1"), "a1"), (leaving, "b1"), (other_ns, "b1")],
        );
        assert_eq!(fits(&mut s, spreading(spread(ZONE, 1))), vec!["b1"]);
        let mut outsider = pod("x", &[("app", "api")]);
        outsider.spread.push(spread(ZONE, 0));
        assert_eq!(
            fits(&mut s, outsider),
            vec!["b1"],
            "skew 1 - 0 + 0 > 0 on a1"
        );
    }

    #[test]
    fn hostname_spread_over_many_nodes() {
        let nodes: Vec<_> = (0..5).map(|i| node(&format!("n{i}"), "A")).collect();
        let mut s = snapshot(nodes, vec![(web("w0"), "n0"), (web("w1"), "n1")]);
        let pods: Vec<_> = (0..4)
            .map(|i| {
                let mut p = spreading(spread(HOST, 1));
                p.name = format!("new-{i}");
                Arc::new(p)
            })
            .collect();
        let placed = s.place_all(&pods, None);
        let mut names: Vec<_> = placed
            .iter()
            .map(|r| s.node(*r.as_ref().unwrap()).name.clone())
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec!["n0", "n2", "n3", "n4"],
            "one each on the empty nodes, then n0/n1"
        );
    }
}
