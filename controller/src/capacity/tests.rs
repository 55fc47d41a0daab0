//! Scale-up planning and the whole path from API objects, on the cases issue 10 lists.

use super::filters::testing::*;
use super::node::{GroupSpec, NodeTemplate, TAG_LABEL, TAG_TAINT};
use super::pod::{AffinityTerm, NsSet, PodSpec};
use super::scale_up::{self, Expander, NodeGroup, ScaleUpPlan, ScaleUpRequest};
use super::selector::{LabelReq, Selector, Toleration};
use super::snapshot::Snapshot;
use super::volume::Catalog;
use super::*;
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::Arc;

fn group(name: &str, itype: &str, zones: &[&str], max: u32) -> GroupSpec {
    GroupSpec::new(name, itype, zones, 0, max, 0)
}

fn with_template(spec: GroupSpec, daemonsets: &[DaemonSetSpec]) -> NodeGroup {
    let template = NodeTemplate::for_group(&spec, &[], daemonsets).unwrap();
    NodeGroup { spec, template }
}

fn plan_for(
    s: &mut Snapshot,
    pending: &[PodSpec],
    groups: &[NodeGroup],
    expander: Expander,
) -> ScaleUpPlan {
    plan_with(s, pending, groups, expander, &BTreeSet::new())
}

fn plan_with(
    s: &mut Snapshot,
    pending: &[PodSpec],
    groups: &[NodeGroup],
    expander: Expander,
    backoff: &BTreeSet<String>,
) -> ScaleUpPlan {
    let pending: Vec<Arc<PodSpec>> = pending.iter().cloned().map(Arc::new).collect();
    scale_up::plan(
        s,
        &ScaleUpRequest {
            pending: &pending,
            groups,
            backoff,
            expander,
        },
    )
}

fn cpu(name: &str, milli: i64) -> PodSpec {
    let mut p = pod(name, &[("app", name)]);
    p.requests.milli_cpu = milli;
    p.requests.memory = 256 << 20;
    p
}

fn replicas(prefix: &str, n: usize, milli: i64) -> Vec<PodSpec> {
    (0..n)
        .map(|i| {
            let mut p = cpu(&format!("{prefix}-{i}"), milli);
            p.labels.insert("app".into(), prefix.into());
            p
        })
        .collect()
}

fn daemonset(cpu_m: i64) -> DaemonSetSpec {
    let ds: k8s_openapi::api::apps::v1::DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "agent", "namespace": "kube-system"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
                 "template": {"metadata": {"labels": {"app": "agent"}},
                              "spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": format!("{cpu_m}m"), "memory": "64Mi"}}}]}}}
    }))
    .unwrap();
    DaemonSetSpec::from_daemonset(&ds, &Catalog::default()).unwrap()
}

// Issue 10: "a pod that needs 1.9 CPU on 2-CPU nodes that carry 200m of DaemonSets ... the
// group grows by a node every boot time up to max". The template minus the DaemonSet has
// 1.8 CPU: the pod is unhelpable, with the reason.
#[test]
fn a_pod_bigger_than_a_new_node_after_daemonsets_is_unhelpable() {
    let mut s = snapshot(vec![], vec![]);
    let groups = vec![with_template(
        group("general", "t3.medium", &["z1"], 5),
        &[daemonset(200)],
    )];
    let plan = plan_for(&mut s, &[cpu("wide", 1900)], &groups, Expander::LeastWaste);
    assert_eq!(plan.nodes(), 0);
    assert_eq!(plan.unhelpable.len(), 1);
    assert_eq!(plan.unhelpable[0].pod, "default/wide");
    assert_eq!(
        plan.unhelpable[0].reasons,
        vec![("general".to_string(), "in z1: Insufficient cpu".to_string())]
    );
    let fits = plan_for(
        &mut s,
        &[cpu("narrow", 1800)],
        &groups,
        Expander::LeastWaste,
    );
    assert_eq!(fits.nodes(), 1);
}

#[test]
fn pods_are_packed_onto_as_few_template_nodes_as_the_filters_allow() {
    let mut s = snapshot(vec![], vec![]);
    let groups = vec![with_template(
        group("general", "m5.large", &["z1"], 10),
        &[],
    )];
    // 2000m nodes: five 900m pods need three nodes (two per node).
    let plan = plan_for(
        &mut s,
        &replicas("web", 5, 900),
        &groups,
        Expander::LeastWaste,
    );
    assert_eq!((plan.increases[0].from, plan.increases[0].to), (0, 3));
    assert_eq!(plan.increases[0].pods.len(), 5);
    // With hostname anti-affinity, one per node.
    let mut spread: Vec<PodSpec> = replicas("db", 3, 100);
    for p in &mut spread {
        p.anti_affinity.push(AffinityTerm {
            namespaces: NsSet::one("default"),
            selector: Selector::from_reqs(vec![LabelReq::In(
                "app".into(),
                ["db".to_string()].into(),
            )]),
            topology_key: HOST.into(),
        });
    }
    let plan = plan_for(&mut s, &spread, &groups, Expander::LeastWaste);
    assert_eq!(plan.nodes(), 3);
    // The maximum caps the plan; the rest wait, blocked, with the reason.
    let small = vec![with_template(group("general", "m5.large", &["z1"], 2), &[])];
    let plan = plan_for(
        &mut s,
        &replicas("web", 5, 900),
        &small,
        Expander::LeastWaste,
    );
    assert_eq!(plan.nodes(), 2);
    assert_eq!(plan.blocked.len(), 1);
    assert_eq!(plan.blocked[0].reasons[0].1, "at its maximum of 2");
}

#[test]
fn pods_that_fit_now_or_on_booting_nodes_are_no_reason_to_grow() {
    let mut s = snapshot(vec![node("a", "z1")], vec![]);
    let mut spec = group("general", "m5.large", &["z1"], 10);
    spec.target = 2;
    spec.upcoming = 1;
    let groups = vec![with_template(spec, &[])];
    // 4000m free on a; then 2000m on the booting node; the rest need new nodes.
    let plan = plan_for(
        &mut s,
        &replicas("web", 4, 1900),
        &groups,
        Expander::LeastWaste,
    );
    assert_eq!(plan.fits_now.len(), 2);
    // Least allocated first: web-1 goes to the booting node while a is half full.
    assert_eq!(
        plan.waiting,
        vec![("default/web-1".to_string(), "general".to_string())]
    );
    assert_eq!((plan.increases[0].from, plan.increases[0].to), (2, 3));
    assert_eq!(s.live_nodes().count(), 1, "the snapshot is unchanged");
}

// Issue 10: "with two groups (say general and gpu), scale-up always picks the first one below
// max ... a pod with nodeSelector: pool=gpu grows the wrong group".
#[test]
fn each_pod_grows_a_group_whose_template_can_host_it() {
    let mut s = snapshot(vec![], vec![]);
    let general = group("general", "m5.large", &["z1"], 10);
    let mut gpu = group("gpu", "m5.xlarge", &["z1"], 4);
    gpu.tags.insert(format!("{TAG_LABEL}pool"), "gpu".into());
    gpu.tags.insert(
        format!("{TAG_TAINT}nvidia.com/gpu"),
        "true:NoSchedule".into(),
    );
    let groups = vec![with_template(general, &[]), with_template(gpu, &[])];
    let mut trainer = cpu("trainer", 1000);
    trainer.node_selector.insert("pool".into(), "gpu".into());
    trainer
        .tolerations
        .push(Toleration::exists("nvidia.com/gpu", "NoSchedule"));
    let mut untolerating = cpu("picky", 1000);
    untolerating
        .node_selector
        .insert("pool".into(), "gpu".into());
    let plan = plan_for(
        &mut s,
        &[trainer, cpu("web", 500), untolerating],
        &groups,
        Expander::LeastWaste,
    );
    let by_group: Vec<(&str, Vec<String>)> = plan
        .increases
        .iter()
        .map(|i| (i.group.as_str(), i.pods.clone()))
        .collect();
    assert!(
        by_group.contains(&("gpu", vec!["default/trainer".to_string()])),
        "{by_group:?}"
    );
    assert!(
        by_group.contains(&("general", vec!["default/web".to_string()])),
        "{by_group:?}"
    );
    assert_eq!(plan.unhelpable.len(), 1);
    let reasons = &plan.unhelpable[0].reasons;
    assert!(reasons[0].1.contains("node affinity"), "{reasons:?}");
    assert!(
        reasons[1]
            .1
            .contains("untolerated taint {nvidia.com/gpu: true}"),
        "{reasons:?}"
    );
}

#[test]
fn expanders_choose_among_groups_that_can_help() {
    let mut s = snapshot(vec![], vec![]);
    let mut small = group("small", "m5.large", &["z1"], 10);
    let mut big = group("big", "m5.2xlarge", &["z1"], 10);
    small.priority = 1;
    big.priority = 10;
    small.price_per_hour = Some(0.10);
    big.price_per_hour = Some(0.30);
    let groups = vec![with_template(small, &[]), with_template(big, &[])];
    // Four pods of 1900m: least waste is the 8-CPU node (4 × 1.9 of 8) vs four 2-CPU nodes
    // (1.9 of 2 each, with memory idle on both).
    let pods = replicas("web", 4, 1900);
    let lw = plan_for(&mut s, &pods, &groups, Expander::LeastWaste);
    assert_eq!(lw.increases.len(), 1);
    assert_eq!(lw.increases[0].group, "small", "{lw:?}");
    let pr = plan_for(&mut s, &pods, &groups, Expander::Priority);
    assert_eq!(pr.increases[0].group, "big");
    assert_eq!(pr.nodes(), 1);
    // Price per pod: small 4 × 0.10 / 4 = 0.10, big 0.30 / 4 = 0.075.
    let price = plan_for(&mut s, &pods, &groups, Expander::Price);
    assert_eq!(price.increases[0].group, "big");
    assert_eq!("price".parse::<Expander>().unwrap(), Expander::Price);
    assert!("random".parse::<Expander>().is_err());
}

// Issue 10: "A scale-up that has not produced Ready nodes ... puts the group in exponential
// backoff and the pods go to the next group that can host them (spot shortage → on-demand)".
#[test]
fn groups_in_backoff_are_skipped() {
    let mut s = snapshot(vec![], vec![]);
    let mut spot = group("spot", "m5.large", &["z1"], 10);
    spot.priority = 10;
    let groups = vec![
        with_template(spot, &[]),
        with_template(group("on-demand", "m5.large", &["z1"], 10), &[]),
    ];
    let backoff: BTreeSet<String> = ["spot".to_string()].into();
    let pods = [cpu("web", 500)];
    assert_eq!(
        plan_for(&mut s, &pods, &groups, Expander::Priority).increases[0].group,
        "spot"
    );
    let plan = plan_with(&mut s, &pods, &groups, Expander::Priority, &backoff);
    assert_eq!(plan.increases[0].group, "on-demand");
    let only_spot = vec![groups[0].clone()];
    let plan = plan_with(&mut s, &pods, &only_spot, Expander::Priority, &backoff);
    assert_eq!(plan.nodes(), 0);
    assert!(
        plan.blocked[0].reasons[0].1.contains("backing off"),
        "{plan:?}"
    );
    assert!(plan.unhelpable.is_empty(), "helpable, just not now");
}

fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn zonal_catalog() -> Catalog {
    Catalog::new(
        &[from(json!({"metadata": {"name": "ebs-b", "labels": {ZONE: "b"}}, "spec": {
            "capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "gp3",
            "claimRef": {"namespace": "default", "name": "data"}}, "status": {"phase": "Bound"}}))],
        &[
            from(json!({"metadata": {"name": "data", "namespace": "default"}, "spec": {"volumeName": "ebs-b"}})),
            from(json!({"metadata": {"name": "new", "namespace": "default"}, "spec": {"storageClassName": "gp3-c"}})),
        ],
        &[from(json!({"metadata": {"name": "gp3-c"}, "provisioner": "ebs.csi.aws.com",
            "volumeBindingMode": "WaitForFirstConsumer",
            "allowedTopologies": [{"matchLabelExpressions": [{"key": ZONE, "values": ["c"]}]}]}))],
        &[],
    )
    .unwrap()
}

// A pod whose EBS volume lives in zone b: a group spanning a and b cannot promise it a node
// there (AWS picks the zone); a group in b can. A claim whose class only provisions in c is
// unhelpable by both.
#[test]
fn zonal_pods_need_a_group_that_lands_in_their_zone() {
    let catalog = zonal_catalog();
    let mut s = snapshot_with(vec![], vec![], catalog.clone());
    let spanning = with_template(group("spanning", "m5.large", &["a", "b"], 10), &[]);
    let in_b = with_template(group("in-b", "m5.large", &["b"], 10), &[]);
    let mut db = cpu("db", 500);
    db.volumes
        .push(catalog.resolve("default", "data", None).unwrap());
    let plan = plan_for(
        &mut s,
        std::slice::from_ref(&db),
        std::slice::from_ref(&spanning),
        Expander::LeastWaste,
    );
    // Not unhelpable: once the zones' balance is not a tie, the next node's zone is known.
    assert_eq!(plan.nodes(), 0);
    assert!(plan.unhelpable.is_empty(), "{plan:?}");
    assert!(
        plan.blocked[0].reasons[0].1.contains("AWS's choice"),
        "{plan:?}"
    );
    let plan = plan_for(
        &mut s,
        &[db],
        &[spanning.clone(), in_b],
        Expander::LeastWaste,
    );
    assert_eq!(plan.increases[0].group, "in-b");
    assert_eq!(plan.increases[0].zones, vec!["b".to_string()]);

    let mut fresh = cpu("fresh", 500);
    fresh
        .volumes
        .push(catalog.resolve("default", "new", None).unwrap());
    let plan = plan_for(&mut s, &[fresh], &[spanning], Expander::LeastWaste);
    assert!(
        plan.unhelpable[0].reasons[0]
            .1
            .contains("available persistent volumes"),
        "{plan:?}"
    );
}

#[test]
fn new_nodes_follow_the_asg_zone_balance() {
    let mut s = snapshot(vec![], vec![]);
    let mut spec = group("general", "m5.large", &["a", "b", "c"], 10);
    spec.instances_per_zone.insert("a".into(), 2);
    spec.instances_per_zone.insert("b".into(), 1);
    let groups = vec![with_template(spec, &[])];
    let plan = plan_for(
        &mut s,
        &replicas("web", 3, 1900),
        &groups,
        Expander::LeastWaste,
    );
    assert_eq!(plan.increases[0].zones, vec!["c", "b", "c"]);
}

// From the API objects to both answers.
#[test]
fn from_objects_to_a_scale_up_and_a_scale_down() {
    let node = |name: &str| -> k8s_openapi::api::core::v1::Node {
        from(
            json!({"metadata": {"name": name, "labels": {HOST: name, ZONE: "z1", "pool": "general"}},
            "spec": {"providerID": format!("aws:///z1/i-{name}")},
            "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]}}),
        )
    };
    let pod = |name: &str, node: Option<&str>, cpu: &str| -> k8s_openapi::api::core::v1::Pod {
        let mut v = json!({"metadata": {"name": name, "namespace": "default", "labels": {"app": "web"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "u", "controller": true}]},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": "128Mi"}}}]},
            "status": {"phase": "Running"}});
        match node {
            Some(n) => v["spec"]["nodeName"] = json!(n),
            None => {
                v["status"] = json!({"phase": "Pending", "conditions": [
                    {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]})
            }
        }
        from(v)
    };
    let nodes = vec![node("n1"), node("n2")];
    let pods = vec![
        pod("a", Some("n1"), "1500m"),
        pod("b", Some("n2"), "200m"),
        pod("c", None, "1200m"),
    ];
    let mut cluster = Cluster::from_objects(&ClusterObjects {
        nodes: &nodes,
        pods: &pods,
        ..Default::default()
    })
    .unwrap();
    let spec = GroupSpec::new("general", "t3.medium", &["z1"], 1, 5, 2);
    let template = cluster.template(&spec, &["n1", "n2"]).unwrap();
    assert_eq!(template.source, "node n1");
    let groups = vec![NodeGroup { spec, template }];
    let pending = cluster.pending.clone();
    let up = scale_up::plan(
        &mut cluster.snapshot,
        &ScaleUpRequest {
            pending: &pending,
            groups: &groups,
            backoff: &BTreeSet::new(),
            expander: Expander::LeastWaste,
        },
    );
    // c (1200m) fits on n2 (1800m free): no scale-up.
    assert_eq!(up.fits_now, vec!["default/c".to_string()]);
    assert_eq!(up.nodes(), 0);
    let candidates = scale_down::candidates(&cluster.snapshot);
    let down = scale_down::find_removable(
        &mut cluster.snapshot,
        &candidates,
        &cluster.pdbs,
        &ScaleDownConfig::default(),
        10,
    );
    let chosen = down.chosen.unwrap();
    assert_eq!(chosen.node, "n2");
    assert_eq!(chosen.moves[0].to, "n1");
}

// The ASG, not SmartScale, breaks a tie in its zone balance: a pod whose placement depends on
// the zone is planned only on a new node whose zone the balance determines.
#[test]
fn zone_dependent_pods_wait_for_a_node_whose_zone_is_known() {
    let mut s = snapshot(vec![], vec![]);
    let mut spread = cpu("web", 500);
    spread.spread.push(super::pod::SpreadConstraint {
        max_skew: 1,
        topology_key: ZONE.into(),
        selector: Selector::from_reqs(vec![LabelReq::In("app".into(), ["web".to_string()].into())]),
        min_domains: 1,
        honor_node_affinity: true,
        honor_node_taints: false,
    });
    let tied = with_template(group("general", "m5.large", &["a", "b"], 10), &[]);
    let plan = plan_for(
        &mut s,
        std::slice::from_ref(&spread),
        std::slice::from_ref(&tied),
        Expander::LeastWaste,
    );
    assert_eq!(plan.nodes(), 0, "{plan:?}");
    assert!(
        plan.blocked[0].reasons[0].1.contains("AWS's choice"),
        "{plan:?}"
    );
    // A zone-independent pod is fine on the same node.
    let plain = plan_for(
        &mut s,
        &[cpu("plain", 500)],
        std::slice::from_ref(&tied),
        Expander::LeastWaste,
    );
    assert_eq!(plain.nodes(), 1);

    let mut known = group("general", "m5.large", &["a", "b"], 10);
    known.instances_per_zone.insert("a".into(), 1);
    let plan = plan_for(
        &mut s,
        &[spread],
        &[with_template(known, &[])],
        Expander::LeastWaste,
    );
    assert_eq!(plan.increases[0].zones, vec!["b".to_string()]);
}

// The scheduler does not know which pod a new node is for: a second group grows in the same
// plan only for pods the first group's nodes could not take (and the other way round).
#[test]
fn a_second_group_grows_only_for_pods_the_first_ones_nodes_cannot_take() {
    let mut s = snapshot(vec![], vec![]);
    let a = with_template(group("a", "m5.large", &["z1"], 10), &[]);
    let mut b_spec = group("b", "m5.large", &["z1"], 10);
    b_spec.tags.insert(format!("{TAG_LABEL}disk"), "ssd".into());
    b_spec.priority = 1;
    let b = with_template(b_spec, &[]);
    // `any` fits both groups, `ssd` only b.
    let mut ssd = cpu("ssd", 1900);
    ssd.node_selector.insert("disk".into(), "ssd".into());
    let plan = plan_for(
        &mut s,
        &[cpu("any", 1900), ssd.clone()],
        &[a.clone(), b.clone()],
        Expander::LeastWaste,
    );
    assert_eq!(plan.nodes(), 2, "{plan:?}");
    assert_eq!(plan.increases.len(), 1, "b takes both: {plan:?}");
    // With b preferred for `any` too, or a for it, only one group grows at a time.
    let mut tainted = group("c", "m5.large", &["z1"], 10);
    tainted
        .tags
        .insert(format!("{TAG_TAINT}dedicated"), "c:NoSchedule".into());
    let mut only_c = cpu("only-c", 1900);
    only_c
        .tolerations
        .push(Toleration::exists("dedicated", "NoSchedule"));
    only_c
        .node_selector
        .insert("kubernetes.io/os".into(), "linux".into());
    let plan = plan_for(
        &mut s,
        &[cpu("plain", 1900), only_c],
        &[a, with_template(tainted, &[])],
        Expander::LeastWaste,
    );
    // `only-c` tolerates c's taint but also fits a: the groups overlap, one grows.
    assert_eq!(plan.increases.len(), 1, "{plan:?}");
    assert_eq!(
        plan.blocked.len() + plan.increases[0].pods.len(),
        2,
        "{plan:?}"
    );
}

// Differential seed 0: pods spread over zones (maxSkew 1) are pending because their only
// place is a zone whose node is full; the first lands on the new node there, which raises the
// spread's global minimum, and the scheduler then puts the second on an existing node in the
// other zone. Planning a second new node for it leaves that node empty.
#[test]
fn a_pending_pod_goes_to_an_existing_node_once_the_planned_pods_allow_it() {
    let spread = |name: &str, milli: i64| {
        let mut p = cpu(name, milli);
        p.labels.insert("app".into(), "web".into());
        p.spread.push(super::pod::SpreadConstraint {
            max_skew: 1,
            topology_key: ZONE.into(),
            selector: Selector::from_reqs(vec![LabelReq::In(
                "app".into(),
                ["web".to_string()].into(),
            )]),
            min_domains: 1,
            honor_node_affinity: true,
            honor_node_taints: false,
        });
        p
    };
    let small = |name: &str, zone: &str| NodeInfo::simple(name, 2000, 8 * GI, zone);
    // Zone a: one web pod, room left. Zone b: a full node.
    let mut s = snapshot(
        vec![small("a1", "a"), small("b1", "b")],
        vec![(spread("web-0", 200), "a1"), (cpu("filler", 2000), "b1")],
    );
    let groups = vec![with_template(group("general", "m5.large", &["b"], 10), &[])];
    let pending = [spread("web-1", 1200), spread("web-2", 1200)];
    // Before: a (1) vs b (0), so both must go to b, where only a new node has room.
    let plan = plan_for(&mut s, &pending, &groups, Expander::LeastWaste);
    assert!(plan.fits_now.is_empty(), "{plan:?}");
    assert_eq!(
        plan.nodes(),
        1,
        "web-2 goes to a1 once web-1 is in b: {plan:?}"
    );
    assert_eq!(
        plan.increases[0].pods,
        vec!["default/web-1".to_string(), "default/web-2".to_string()]
    );
    assert_eq!(plan.increases[0].zones, vec!["b".to_string()]);
    // The snapshot is left as it was.
    assert_eq!(s.pods_on(0).count(), 1);
}

// Differential seeds 148 and 173: a tainted group's new node is a topology domain for a spread
// its pods' neighbours cannot use (nodeTaintsPolicy Ignore, the default). Planned together
// with the nodes the spread pods are for, it may come up first, and the spread then keeps all
// but one of them pending. The tainted group waits for the first group's nodes instead.
#[test]
fn a_group_whose_nodes_would_open_an_empty_spread_domain_waits() {
    let spread = |name: &str| {
        let mut p = cpu(name, 500);
        p.labels.insert("app".into(), "web".into());
        p.spread.push(super::pod::SpreadConstraint {
            max_skew: 1,
            topology_key: ZONE.into(),
            selector: Selector::from_reqs(vec![LabelReq::In(
                "app".into(),
                ["web".to_string()].into(),
            )]),
            min_domains: 1,
            honor_node_affinity: true,
            honor_node_taints: false,
        });
        p
    };
    let mut general = group("general", "m5.large", &["b"], 10);
    general.priority = 1;
    let mut batch = group("batch", "m5.large", &["a"], 10);
    batch
        .tags
        .insert(format!("{TAG_LABEL}pool"), "batch".into());
    batch
        .tags
        .insert(format!("{TAG_TAINT}dedicated"), "batch:NoSchedule".into());
    let groups = vec![with_template(general, &[]), with_template(batch, &[])];
    let mut job = cpu("job", 1000);
    job.node_selector.insert("pool".into(), "batch".into());
    job.tolerations
        .push(Toleration::exists("dedicated", "NoSchedule"));
    let mut s = snapshot(vec![], vec![]);
    let plan = plan_for(
        &mut s,
        &[spread("web-0"), spread("web-1"), job],
        &groups,
        Expander::Priority,
    );
    // Both web pods on one general node in b: with a batch node in a (no web pod, and none
    // can go there), web-1 would be 1 + 1 - 0 > 1 in b.
    assert_eq!(plan.increases.len(), 1, "{plan:?}");
    assert_eq!(plan.increases[0].group, "general");
    assert_eq!(plan.increases[0].pods.len(), 2, "{plan:?}");
    assert_eq!(plan.blocked.len(), 1, "{plan:?}");
    assert_eq!(plan.blocked[0].pod, "default/job");
    assert!(
        plan.blocked[0].reasons[0]
            .1
            .contains("waits for the nodes of general"),
        "{plan:?}"
    );
    // Once they run, the batch group grows (a spread is only checked when scheduling).
    let mut s = snapshot(
        vec![NodeInfo::simple("b1", 2000, 8 * GI, "b")],
        vec![(spread("web-0"), "b1"), (spread("web-1"), "b1")],
    );
    let mut job = cpu("job", 1000);
    job.node_selector.insert("pool".into(), "batch".into());
    job.tolerations
        .push(Toleration::exists("dedicated", "NoSchedule"));
    let plan = plan_for(&mut s, &[job], &groups, Expander::Priority);
    assert_eq!(plan.increases[0].group, "batch", "{plan:?}");
}

/// A pod that must run on the node of a pod of app `leader`.
fn plan_follower() -> PodSpec {
    let mut follower = cpu("follower", 100);
    follower.affinity.push(AffinityTerm {
        namespaces: NsSet::one("default"),
        selector: Selector::from_reqs(vec![LabelReq::In(
            "app".into(),
            ["leader".to_string()].into(),
        )]),
        topology_key: HOST.into(),
    });
    follower
}

// Differential seed 159: a pod with required affinity to another pending pod by hostname. No
// fresh node can host it (none runs that pod), but the new node planned for that pod does, and
// the scheduler puts it there once both are up: helped, not unhelpable.
#[test]
fn a_pod_with_hostname_affinity_to_a_planned_pod_goes_on_its_node() {
    let mut s = snapshot(vec![], vec![]);
    let groups = vec![with_template(
        group("general", "m5.large", &["z1"], 10),
        &[],
    )];
    let plan = plan_for(
        &mut s,
        &[plan_follower(), cpu("leader", 700)],
        &groups,
        Expander::LeastWaste,
    );
    assert!(plan.unhelpable.is_empty(), "{plan:?}");
    assert_eq!(plan.nodes(), 1, "{plan:?}");
    assert_eq!(
        plan.increases[0].pods,
        vec!["default/leader".to_string(), "default/follower".to_string()]
    );
    // Without the leader pending, nothing can host the follower.
    let follower = vec![plan_follower()];
    let alone = plan_for(&mut s, &follower, &groups, Expander::LeastWaste);
    assert_eq!(alone.nodes(), 0);
    assert_eq!(alone.unhelpable.len(), 1, "{alone:?}");
}
