//! InterPodAffinity: the pod's required affinity (for every term, a pod matching all its terms
//! in the node's domain of that term's topology key; or no such pod anywhere and the pod
//! matches its own terms, so the first of a group can start), its required anti-affinity (no
//! pod matching a term in the node's domain), and existing pods' required anti-affinity
//! against it (no pod whose term matches this pod in the node's domain of that term's key).
//!
//! Computed as the scheduler's PreFilter does: counts per topology domain from the
//! snapshot's per-node selector counts, then one lookup per node.

use super::{Prepared, Reason};
use crate::capacity::pod::PodSpec;
use crate::capacity::snapshot::{FxMap, FxSet, NodeId, Snapshot, TopoId};
use std::sync::Arc;

#[derive(Debug, Clone, Default)]
pub(crate) struct State {
    /// Topology of each required affinity term (empty: no affinity).
    affinity_topos: Vec<TopoId>,
    /// Pods matching all affinity terms, per (topology, value).
    affinity_counts: FxMap<(TopoId, u32), u32>,
    /// The pod matches all of its own affinity terms.
    self_match: bool,
    /// Per anti-affinity term of the pod: its topology and the domains holding a match.
    anti: Vec<(TopoId, FxSet<u32>)>,
    /// Domains (per topology) where an existing pod's anti-affinity term matches this pod.
    existing: Vec<(TopoId, FxSet<u32>)>,
}

pub(crate) fn prepare(snap: &mut Snapshot, pod: &Arc<PodSpec>) -> State {
    let mut st = State::default();
    if !pod.affinity.is_empty() {
        let terms: Vec<_> = pod
            .affinity
            .iter()
            .map(|t| (&t.namespaces, &t.selector))
            .collect();
        let sel = snap.intern_sel_refs(&terms);
        st.affinity_topos = pod
            .affinity
            .iter()
            .map(|t| snap.topo(&t.topology_key))
            .collect();
        for (&node, c) in &snap.sels[sel].counts {
            let n = c.live + c.terminating;
            if n == 0 {
                continue;
            }
            for &t in &st.affinity_topos {
                if let Some(v) = snap.topos[t].node_val[node] {
                    *st.affinity_counts.entry((t, v)).or_insert(0) += n;
                }
            }
        }
        st.self_match = pod.affinity.iter().all(|t| t.matches(pod));
    }
    for term in &pod.anti_affinity {
        let sel = snap.intern_sel_refs(&[(&term.namespaces, &term.selector)]);
        let topo = snap.topo(&term.topology_key);
        let domains = snap.sels[sel]
            .counts
            .iter()
            .filter(|(_, c)| c.live + c.terminating > 0)
            .filter_map(|(&node, _)| snap.topos[topo].node_val[node])
            .collect();
        st.anti.push((topo, domains));
    }
    let mut existing: FxMap<TopoId, FxSet<u32>> = FxMap::default();
    for sel in snap.matching_sels(pod) {
        for &ex in &snap.sels[sel].ex_terms {
            let term = &snap.ex_terms[ex];
            let set = existing.entry(term.topo).or_default();
            for &node in term.holders.keys() {
                if let Some(v) = snap.topos[term.topo].node_val[node] {
                    set.insert(v);
                }
            }
        }
    }
    st.existing = existing
        .into_iter()
        .filter(|(_, s)| !s.is_empty())
        .collect();
    st
}

pub fn check(p: &Prepared, node: NodeId, snap: &Snapshot) -> Result<(), Reason> {
    let st = &p.affinity;
    if !st.affinity_topos.is_empty() {
        let mut pods_exist = true;
        for &t in &st.affinity_topos {
            match snap.topos[t].node_val[node] {
                None => return Err(Reason::Affinity),
                Some(v) => {
                    if st.affinity_counts.get(&(t, v)).copied().unwrap_or(0) == 0 {
                        pods_exist = false;
                    }
                }
            }
        }
        if !(pods_exist || st.affinity_counts.is_empty() && st.self_match) {
            return Err(Reason::Affinity);
        }
    }
    for (t, domains) in &st.anti {
        if let Some(v) = snap.topos[*t].node_val[node]
            && domains.contains(&v)
        {
            return Err(Reason::AntiAffinity);
        }
    }
    for (t, domains) in &st.existing {
        if let Some(v) = snap.topos[*t].node_val[node]
            && domains.contains(&v)
        {
            return Err(Reason::ExistingAntiAffinity);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use crate::capacity::pod::{AffinityTerm, NsSet, PodSpec};
    use crate::capacity::selector::{LabelReq, Selector};
    use std::sync::Arc;

    fn term(app: &str, key: &str) -> AffinityTerm {
        AffinityTerm {
            namespaces: NsSet::one("default"),
            selector: Selector::from_reqs(vec![LabelReq::In(
                "app".into(),
                [app.to_string()].into(),
            )]),
            topology_key: key.into(),
        }
    }

    fn three_nodes() -> Vec<crate::capacity::node::NodeInfo> {
        vec![node("a", "z1"), node("b", "z1"), node("c", "z2")]
    }

    // https://kubernetes.io/docs/concepts/scheduling-eviction/assign-pod-node/#inter-pod-affinity-and-anti-affinity:
    // required affinity puts the pod in a topology domain that runs a matching pod.
    #[test]
    fn affinity_needs_a_matching_pod_in_the_domain() {
        let mut s = snapshot(
            three_nodes(),
            vec![(pod("cache", &[("app", "cache")]), "a")],
        );
        let mut p = pod("web", &[("app", "web")]);
        p.affinity.push(term("cache", ZONE));
        assert_eq!(fits(&mut s, p.clone()), vec!["a", "b"]);
        p.affinity[0].topology_key = HOST.into();
        assert_eq!(fits(&mut s, p.clone()), vec!["a"]);
        let err = s.check(&Arc::new(p), 2).unwrap_err();
        assert_eq!(err.to_string(), "node(s) didn't match pod affinity rules");
    }

    // The scheduler lets the first pod of a self-affine group start anywhere when no pod
    // anywhere matches the term and the pod matches its own term (interpodaffinity
    // satisfyPodAffinity); a pod not matching its own term waits.
    #[test]
    fn the_first_pod_of_a_self_affine_group_may_start() {
        let mut s = snapshot(three_nodes(), vec![]);
        let mut p = pod("web-0", &[("app", "web")]);
        p.affinity.push(term("web", ZONE));
        assert_eq!(fits(&mut s, p.clone()).len(), 3);
        let mut q = pod("api", &[("app", "api")]);
        q.affinity.push(term("web", ZONE));
        assert!(fits(&mut s, q).is_empty());
        // A node without the topology label never satisfies affinity.
        let mut bare = node("bare", "z1");
        bare.labels.remove(ZONE);
        let mut s = snapshot(vec![bare], vec![]);
        assert!(fits(&mut s, p).is_empty());
    }

    // Required anti-affinity: no matching pod in the node's domain; symmetric: an existing
    // pod's anti-affinity term that matches the incoming pod keeps it out of that pod's domain.
    #[test]
    fn anti_affinity_both_ways() {
        let mut existing = pod("db-0", &[("app", "db")]);
        existing.anti_affinity.push(term("web", ZONE));
        let mut s = snapshot(
            three_nodes(),
            vec![(pod("web-0", &[("app", "web")]), "a"), (existing, "c")],
        );
        let mut w = pod("web-1", &[("app", "web")]);
        w.anti_affinity.push(term("web", HOST));
        assert_eq!(
            fits(&mut s, w.clone()),
            vec!["b"],
            "a has web-0, c's db-0 repels web"
        );
        w.anti_affinity[0].topology_key = ZONE.into();
        assert!(fits(&mut s, w.clone()).is_empty());
        let err = s.check(&Arc::new(w), 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "node(s) didn't match pod anti-affinity rules"
        );
        let plain = pod("web-2", &[("app", "web")]);
        assert_eq!(
            s.check(&Arc::new(plain.clone()), 2)
                .unwrap_err()
                .to_string(),
            "node(s) didn't satisfy existing pods anti-affinity rules"
        );
        assert_eq!(fits(&mut s, plain), vec!["a", "b"]);
    }

    // Namespaces: a term looks in the pod's own namespace unless it lists namespaces or has a
    // namespaceSelector ({} = all namespaces).
    #[test]
    fn terms_see_only_their_namespaces() {
        let mut other = PodSpec::simple("prod", "web-x", 100, 0);
        other.labels.insert("app".into(), "web".into());
        let mut s = snapshot(three_nodes(), vec![(other, "a")]);
        let mut w = pod("web-1", &[("app", "web")]);
        w.anti_affinity.push(term("web", HOST));
        assert_eq!(fits(&mut s, w.clone()).len(), 3, "prod is not default");
        w.anti_affinity[0].namespaces = NsSet {
            all: true,
            names: Default::default(),
        };
        assert_eq!(fits(&mut s, w), vec!["b", "c"]);
    }

    // Placements made in the snapshot are seen by the next pod (one placement changing the next).
    #[test]
    fn simulated_placements_count() {
        let mut s = snapshot(three_nodes(), vec![]);
        let mut w = pod("web", &[("app", "web")]);
        w.anti_affinity.push(term("web", HOST));
        let pods: Vec<_> = (0..4)
            .map(|i| {
                let mut p = w.clone();
                p.name = format!("web-{i}");
                Arc::new(p)
            })
            .collect();
        let placed = s.place_all(&pods, None);
        assert_eq!(placed.iter().filter(|r| r.is_ok()).count(), 3);
        assert!(placed[3].is_err());
    }
}
