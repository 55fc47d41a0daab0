//! Differential test of the capacity model (`smartscale_controller::capacity`) against the real
//! kube-scheduler, kube-controller-manager and API server of the test world.
//!
//! Each seed builds a random cluster on the one shared control plane: several node groups
//! (labels, taints, zones, sizes; some at zero), DaemonSets, ReplicaSets whose pods use node
//! selectors, node affinity, tolerations, pod affinity and anti-affinity, topology spread, host
//! ports, emptyDir, local and zonal PersistentVolumes and WaitForFirstConsumer claims, bare pods
//! and PodDisruptionBudgets. The real scheduler places everything; then:
//!
//! - **scale-down**: the model picks a removable node; it is drained for real (cordon, Eviction
//!   API with retries while a budget says 429, Node deleted as the controller does once the
//!   instance is gone) and every pod must end up Running elsewhere (stranded pods: the bar is 0).
//!   Then a node the model refused for placement or budget reasons is drained too: if the real
//!   scheduler places all its pods, the model missed a saving.
//! - **scale-up**: new pods, some impossible; the model plans; the nodes it asked for join
//!   (zones as the ASG's AZ balance would pick, ties random); every pod it called helpable must
//!   be scheduled, no added node may stay without a non-DaemonSet pod, pods it said fit in free
//!   space must be schedulable now (probe pods), and pods it called unhelpable must stay
//!   unschedulable with one fresh node of every group in every zone added (probe pods).
//!   The order in which the scheduler takes pending pods is not knowable (see `other_orders`):
//!   an empty node or an unscheduled helpable pod is the model's error only if no other queue
//!   order of the same pods gives the model that outcome, and a helpable pod whose room another
//!   pending pod took (the scheduler does not know whom a node is for) is counted apart.
//!
//! Seeds are isolated from each other on the shared plane by a per-seed node label and taint
//! that every pod of the seed selects and tolerates (and per-seed namespaces), so several seeds
//! run at once. `SMARTSCALE_CAPACITY_SEEDS` (default 30) sets how many the CI test runs; the
//! ignored soak test runs 200 (`SMARTSCALE_CAPACITY_SEEDS` overrides it too).

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, ReplicaSet};
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use smartscale_controller::capacity::node::{TAG_LABEL, TAG_TAINT};
use smartscale_controller::capacity::scale_down::{self, Blocker, Refusal};
use smartscale_controller::capacity::scale_up::{self, Expander, NodeGroup, ScaleUpRequest};
use smartscale_controller::capacity::{
    Cluster, ClusterObjects, GroupSpec, NodeTemplate, PodSpec, ScaleDownConfig, Snapshot,
};
use smartscale_testworld::kubernetes::{
    ControlPlane, ControlPlaneOptions, JoinRequest, K3sOptions, K3sServer,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ZONES: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];
const SEED_KEY: &str = "smartscale.io/seed";
const GROUP_KEY: &str = "smartscale.io/node-group";
const POOL: &str = "pool";
/// Seeds running at once on the shared plane.
const CONCURRENCY: usize = 4;
const SETTLE: Duration = Duration::from_secs(25);

type Res<T> = Result<T, String>;

fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("fixture JSON")
}

fn push(list: &mut Value, item: Value) {
    if let Some(l) = list.as_array_mut() {
        l.push(item);
    }
}

fn err<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

// ----- the world of one seed --------------------------------------------------------------------

/// A node group of the seed.
#[derive(Debug, Clone)]
struct Group {
    name: String,
    itype: &'static str,
    pool: &'static str,
    zones: Vec<&'static str>,
    taint: Option<(&'static str, &'static str)>,
    extra_label: Option<(&'static str, &'static str)>,
    initial: u32,
    max: u32,
}

/// The ASG-facing description of a group: what its tags would say.
fn group_spec(seed: &str, g: &Group, target: u32, per_zone: BTreeMap<String, u32>) -> GroupSpec {
    let mut spec = GroupSpec::new(&g.name, g.itype, &g.zones, 0, g.max, target);
    spec.instances_per_zone = per_zone;
    spec.tags
        .insert(format!("{TAG_LABEL}{POOL}"), g.pool.into());
    spec.tags
        .insert(format!("{TAG_LABEL}{SEED_KEY}"), seed.into());
    spec.tags
        .insert(format!("{TAG_LABEL}{GROUP_KEY}"), g.name.clone());
    if let Some((k, v)) = g.extra_label {
        spec.tags.insert(format!("{TAG_LABEL}{k}"), v.into());
    }
    spec.tags.insert(
        format!("{TAG_TAINT}{SEED_KEY}"),
        format!("{seed}:NoSchedule"),
    );
    if let Some((k, v)) = g.taint {
        spec.tags
            .insert(format!("{TAG_TAINT}{k}"), format!("{v}:NoSchedule"));
    }
    spec
}

fn groups_for(rng: &mut ChaCha8Rng) -> Vec<Group> {
    let mut zones: Vec<&'static str> = ZONES.to_vec();
    let pick_zones = |rng: &mut ChaCha8Rng, zones: &mut Vec<&'static str>, n: usize| {
        // A random subset of n zones, in zone order.
        let mut z = zones.clone();
        while z.len() > n {
            z.remove(rng.random_range(0..z.len()));
        }
        z
    };
    let n_general = rng.random_range(1..=2);
    let mut gs = vec![Group {
        name: "general".into(),
        itype: if rng.random_bool(0.5) {
            "m5.large"
        } else {
            "c5.large"
        },
        pool: "general",
        zones: pick_zones(rng, &mut zones, n_general),
        taint: None,
        extra_label: None,
        initial: rng.random_range(2..=3),
        max: 6,
    }];
    if rng.random_bool(0.7) {
        gs.push(Group {
            name: "batch".into(),
            itype: "m5.xlarge",
            pool: "batch",
            zones: pick_zones(rng, &mut zones, 1),
            taint: Some(("dedicated", "batch")),
            extra_label: None,
            initial: rng.random_range(0..=1),
            max: 3,
        });
    }
    if rng.random_bool(0.5) {
        let n = rng.random_range(1..=3);
        gs.push(Group {
            name: "edge".into(),
            itype: "c5.large",
            pool: "edge",
            zones: pick_zones(rng, &mut zones, n),
            taint: None,
            extra_label: Some(("disk", "ssd")),
            initial: rng.random_range(0..=1),
            max: 3,
        });
    }
    gs
}

/// Shared by every seed: the plane, the K3s server that joins nodes, an admin client.
struct Shared {
    plane: ControlPlane,
    k3s: K3sServer,
    admin: kube::Client,
    /// Node names that joined, for cleanup.
    joined: std::sync::Mutex<BTreeSet<String>>,
}

/// One seed's view.
struct Seed<'a> {
    sh: &'a Shared,
    id: u64,
    tag: String,
    ns: String,
    rng: ChaCha8Rng,
    groups: Vec<Group>,
    /// Nodes per group (name, zone), in join order.
    nodes: BTreeMap<String, Vec<(String, String)>>,
    next_node: u32,
    apps: Vec<String>,
    log: Vec<String>,
    started: Instant,
}

/// Agreement counts over all seeds.
#[derive(Debug, Default, Clone)]
struct Tally {
    seeds: u64,
    seeds_failed: Vec<String>,
    // scale-down
    down_chosen: u64,
    down_none: u64,
    down_pods_moved: u64,
    stranded: u64,
    stranded_detail: Vec<String>,
    refusals: BTreeMap<String, u64>,
    missed_tested: u64,
    missed: u64,
    missed_detail: Vec<String>,
    // scale-up
    up_plans: u64,
    up_nodes_added: u64,
    up_helpable: u64,
    up_helpable_scheduled: u64,
    up_helpable_detail: Vec<String>,
    up_empty_nodes: u64,
    up_empty_detail: Vec<String>,
    /// Outcomes another queue order explains (see `other_orders`): (empty nodes, unscheduled
    /// helpable pods), with details.
    up_order_empty: u64,
    up_order_missing: u64,
    /// Helpable pods whose new node a pending pod the plan did not count took.
    up_taken: u64,
    up_order_detail: Vec<String>,
    fits_now: u64,
    fits_now_agreed: u64,
    fits_now_detail: Vec<String>,
    unhelpable: u64,
    unhelpable_agreed: u64,
    unhelpable_detail: Vec<String>,
    blocked: u64,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        self.seeds += o.seeds;
        self.seeds_failed.extend(o.seeds_failed);
        self.down_chosen += o.down_chosen;
        self.down_none += o.down_none;
        self.down_pods_moved += o.down_pods_moved;
        self.stranded += o.stranded;
        self.stranded_detail.extend(o.stranded_detail);
        for (k, v) in o.refusals {
            *self.refusals.entry(k).or_insert(0) += v;
        }
        self.missed_tested += o.missed_tested;
        self.missed += o.missed;
        self.missed_detail.extend(o.missed_detail);
        self.up_plans += o.up_plans;
        self.up_nodes_added += o.up_nodes_added;
        self.up_helpable += o.up_helpable;
        self.up_helpable_scheduled += o.up_helpable_scheduled;
        self.up_helpable_detail.extend(o.up_helpable_detail);
        self.up_empty_nodes += o.up_empty_nodes;
        self.up_empty_detail.extend(o.up_empty_detail);
        self.up_order_empty += o.up_order_empty;
        self.up_order_missing += o.up_order_missing;
        self.up_taken += o.up_taken;
        self.up_order_detail.extend(o.up_order_detail);
        self.fits_now += o.fits_now;
        self.fits_now_agreed += o.fits_now_agreed;
        self.fits_now_detail.extend(o.fits_now_detail);
        self.unhelpable += o.unhelpable;
        self.unhelpable_agreed += o.unhelpable_agreed;
        self.unhelpable_detail.extend(o.unhelpable_detail);
        self.blocked += o.blocked;
    }

    fn print(&self, elapsed: Duration) {
        let pct = |a: u64, b: u64| {
            if b == 0 {
                "n/a".to_string()
            } else {
                format!("{:.1}%", 100.0 * a as f64 / b as f64)
            }
        };
        eprintln!(
            "==== capacity model vs kube-scheduler: {} seeds in {:.0} s ====",
            self.seeds,
            elapsed.as_secs_f64()
        );
        eprintln!(
            "seeds that could not run: {} {:?}",
            self.seeds_failed.len(),
            self.seeds_failed
        );
        eprintln!(
            "scale-down: {} nodes drained as the model chose ({} pods moved), {} seeds with no removable node",
            self.down_chosen, self.down_pods_moved, self.down_none
        );
        eprintln!(
            "  stranded pods: {} {:?}",
            self.stranded, self.stranded_detail
        );
        eprintln!(
            "  refusals by reason (all nodes, all seeds): {:?}",
            self.refusals
        );
        eprintln!(
            "  refused nodes drained for real: {}; the real scheduler emptied {} (missed-savings rate {}) {:?}",
            self.missed_tested,
            self.missed,
            pct(self.missed, self.missed_tested),
            self.missed_detail
        );
        eprintln!(
            "scale-up: {} plans, {} nodes added",
            self.up_plans, self.up_nodes_added
        );
        eprintln!(
            "  helpable pods scheduled: {}/{} ({}) {:?}",
            self.up_helpable_scheduled,
            self.up_helpable,
            pct(self.up_helpable_scheduled, self.up_helpable),
            self.up_helpable_detail
        );
        eprintln!(
            "  added nodes left without a non-DaemonSet pod: {} {:?}",
            self.up_empty_nodes, self.up_empty_detail
        );
        eprintln!(
            "  explained by the queue order, not counted above: {} empty nodes, {} unscheduled helpable pods; {} helpable pods whose room another pending pod took {:?}",
            self.up_order_empty, self.up_order_missing, self.up_taken, self.up_order_detail
        );
        eprintln!(
            "  'fits in free space' confirmed by the scheduler: {}/{} ({}) {:?}",
            self.fits_now_agreed,
            self.fits_now,
            pct(self.fits_now_agreed, self.fits_now),
            self.fits_now_detail
        );
        eprintln!(
            "  unhelpable pods the scheduler also could not place on fresh nodes of every group: {}/{} ({}) {:?}",
            self.unhelpable_agreed,
            self.unhelpable,
            pct(self.unhelpable_agreed, self.unhelpable),
            self.unhelpable_detail
        );
        eprintln!(
            "  pods helpable but blocked (group at max / zone): {}",
            self.blocked
        );
    }
}

impl<'a> Seed<'a> {
    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.sh.admin.clone(), &self.ns)
    }

    fn say(&mut self, line: String) {
        let line = format!("[{:.0}s] {line}", self.started.elapsed().as_secs_f64());
        if std::env::var_os("SMARTSCALE_CAPACITY_TRACE").is_some() {
            eprintln!("  seed {} {line}", self.id);
        }
        self.log.push(line);
    }

    fn group(&self, name: &str) -> &Group {
        self.groups
            .iter()
            .find(|g| g.name == name)
            .expect("known group")
    }

    /// The node shape of a group: its template's allocatable (from the instance type).
    fn shape(&self, g: &Group) -> (String, String) {
        let spec = group_spec(&self.tag, g, 0, BTreeMap::new());
        let t = NodeTemplate::from_tags(&spec).expect("known instance type");
        (
            format!("{}m", t.allocatable.milli_cpu),
            format!("{}Mi", t.allocatable.memory >> 20),
        )
    }

    /// Joins a node of `group` in `zone` through the K3s server.
    async fn join(&mut self, group: &str, zone: &str, role: &str) -> Res<String> {
        let g = self.group(group).clone();
        self.next_node += 1;
        let name = format!("{}-{}-{role}{}", self.tag, g.name, self.next_node);
        let (cpu, memory) = self.shape(&g);
        let mut labels = BTreeMap::from([
            (POOL.to_string(), g.pool.to_string()),
            (SEED_KEY.to_string(), self.tag.clone()),
            (GROUP_KEY.to_string(), g.name.clone()),
            ("topology.kubernetes.io/zone".to_string(), zone.to_string()),
            (
                "topology.kubernetes.io/region".to_string(),
                "us-east-1".to_string(),
            ),
        ]);
        if let Some((k, v)) = g.extra_label {
            labels.insert(k.into(), v.into());
        }
        let mut taints = vec![format!("{SEED_KEY}={}:NoSchedule", self.tag)];
        if let Some((k, v)) = g.taint {
            taints.push(format!("{k}={v}:NoSchedule"));
        }
        self.sh
            .k3s
            .join(JoinRequest {
                token: K3sOptions::default().tokens[0].clone(),
                node_name: name.clone(),
                node_password: format!("pw-{name}"),
                provider_id: Some(format!(
                    "aws:///{zone}/i-{:016x}",
                    self.id * 1000 + u64::from(self.next_node)
                )),
                labels,
                taints,
                internal_ip: None,
                cpu: Some(cpu),
                memory: Some(memory),
            })
            .await
            .map_err(|e| format!("join {name}: {e}"))?;
        self.sh
            .joined
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone());
        self.nodes
            .entry(g.name.clone())
            .or_default()
            .push((name.clone(), zone.to_string()));
        Ok(name)
    }

    /// Waits until every node of the seed is initialised (no uninitialized taint) and Ready.
    async fn nodes_ready(&self) -> Res<()> {
        let api: Api<Node> = Api::all(self.sh.admin.clone());
        let want: BTreeSet<&String> = self.nodes.values().flatten().map(|(n, _)| n).collect();
        let deadline = Instant::now() + SETTLE;
        loop {
            let list = api
                .list(&ListParams::default().labels(&format!("{SEED_KEY}={}", self.tag)))
                .await
                .map_err(err("list nodes"))?;
            let ready = list
                .items
                .iter()
                .filter(|n| want.contains(&n.metadata.name.clone().unwrap_or_default()))
                .filter(|n| {
                    let taints = n
                        .spec
                        .as_ref()
                        .and_then(|s| s.taints.clone())
                        .unwrap_or_default();
                    !taints.iter().any(|t| {
                        t.key.starts_with("node.cloudprovider")
                            || t.key.starts_with("node.kubernetes.io/not-ready")
                    }) && smartscale_testworld::world::is_ready(n)
                })
                .count();
            if ready == want.len() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("nodes not ready: {ready}/{}", want.len()));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The shared pod template parts every pod of the seed carries (isolation).
    fn base_spec(&self, cpu: &str, memory: &str) -> Value {
        json!({
            "terminationGracePeriodSeconds": 1,
            "nodeSelector": {SEED_KEY: self.tag},
            "tolerations": [{"key": SEED_KEY, "operator": "Equal", "value": self.tag, "effect": "NoSchedule"}],
            "containers": [{"name": "c", "image": "app", "resources": {"requests": {"cpu": cpu, "memory": memory}}}],
        })
    }

    fn zones_with_nodes(&self) -> Vec<String> {
        let z: BTreeSet<String> = self
            .nodes
            .values()
            .flatten()
            .map(|(_, z)| z.clone())
            .collect();
        z.into_iter().collect()
    }

    fn all_zones(&self) -> Vec<&'static str> {
        let z: BTreeSet<&'static str> = self
            .groups
            .iter()
            .flat_map(|g| g.zones.iter().copied())
            .collect();
        z.into_iter().collect()
    }

    /// A random pod template for app `app`: (labels, spec, annotations).
    fn random_pod(&mut self, app: &str, big: bool) -> (Value, Value) {
        let cpu = if big {
            [400, 700, 900, 1200, 1500, 1800][self.rng.random_range(0..6)]
        } else {
            [100, 200, 300, 500, 700][self.rng.random_range(0..5)]
        };
        let mem = [64, 128, 256, 512, 1024][self.rng.random_range(0..5)];
        let mut spec = self.base_spec(&format!("{cpu}m"), &format!("{mem}Mi"));
        let mut annotations = serde_json::Map::new();
        let groups = self.groups.clone();
        if self.rng.random_bool(0.35) {
            let g = &groups[self.rng.random_range(0..groups.len())];
            spec["nodeSelector"][POOL] = json!(g.pool);
            if let Some((k, v)) = g.taint
                && self.rng.random_bool(0.9)
            {
                push(
                    &mut spec["tolerations"],
                    json!({"key": k, "operator": "Equal", "value": v, "effect": "NoSchedule"}),
                );
            }
        } else if self.rng.random_bool(0.25) {
            push(
                &mut spec["tolerations"],
                json!({"key": "dedicated", "operator": "Exists"}),
            );
        }
        if self.rng.random_bool(0.1) {
            spec["nodeSelector"]["disk"] = json!("ssd");
        }
        let zones = self.all_zones();
        let mut affinity = serde_json::Map::new();
        if self.rng.random_bool(0.15) {
            let z: Vec<&str> = zones
                .iter()
                .copied()
                .filter(|_| self.rng.random_bool(0.6))
                .collect();
            let z = if z.is_empty() { vec![zones[0]] } else { z };
            affinity.insert("nodeAffinity".into(), json!({"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": z}]}]}}));
        }
        let mut anti = Vec::new();
        if self.rng.random_bool(0.3) {
            anti.push(json!({"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": "kubernetes.io/hostname"}));
        }
        if self.rng.random_bool(0.05) {
            anti.push(json!({"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": "topology.kubernetes.io/zone"}));
        }
        if !anti.is_empty() {
            affinity.insert(
                "podAntiAffinity".into(),
                json!({"requiredDuringSchedulingIgnoredDuringExecution": anti}),
            );
        }
        if !self.apps.is_empty() && self.rng.random_bool(0.12) {
            let other = self.apps[self.rng.random_range(0..self.apps.len())].clone();
            let key = if self.rng.random_bool(0.7) {
                "topology.kubernetes.io/zone"
            } else {
                "kubernetes.io/hostname"
            };
            affinity.insert(
                "podAffinity".into(),
                json!({"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": other}}, "topologyKey": key}]}),
            );
        }
        if !affinity.is_empty() {
            spec["affinity"] = Value::Object(affinity);
        }
        let mut spread = Vec::new();
        if self.rng.random_bool(0.25) {
            let mut c = json!({"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
                               "labelSelector": {"matchLabels": {"app": app}}});
            if self.rng.random_bool(0.2) {
                c["minDomains"] = json!(2);
            }
            if self.rng.random_bool(0.2) {
                c["nodeTaintsPolicy"] = json!("Honor");
            }
            spread.push(c);
        }
        if self.rng.random_bool(0.12) {
            spread.push(json!({"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
                               "labelSelector": {"matchLabels": {"app": app}}}));
        }
        if !spread.is_empty() {
            spec["topologySpreadConstraints"] = json!(spread);
        }
        if self.rng.random_bool(0.1) {
            let port = [8080, 8081][self.rng.random_range(0..2)];
            spec["containers"][0]["ports"] = json!([{"containerPort": 80, "hostPort": port}]);
        }
        if self.rng.random_bool(0.06) {
            spec["volumes"] = json!([{"name": "scratch", "emptyDir": {}}]);
            if self.rng.random_bool(0.5) {
                annotations.insert(
                    "cluster-autoscaler.kubernetes.io/safe-to-evict-local-volumes".into(),
                    json!("scratch"),
                );
            }
        }
        if self.rng.random_bool(0.03) {
            annotations.insert(
                "cluster-autoscaler.kubernetes.io/safe-to-evict".into(),
                json!("false"),
            );
        }
        (Value::Object(annotations), spec)
    }

    /// A ReplicaSet of `replicas` pods of app `app` (pods labelled app and rs; probes copy app only).
    async fn replicaset(
        &mut self,
        app: &str,
        replicas: u32,
        annotations: Value,
        spec: Value,
    ) -> Res<()> {
        let rs: ReplicaSet = obj(json!({
            "metadata": {"name": app, "namespace": self.ns},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": app, "rs": app}},
                     "template": {"metadata": {"labels": {"app": app, "rs": app}, "annotations": annotations}, "spec": spec}}
        }));
        Api::<ReplicaSet>::namespaced(self.sh.admin.clone(), &self.ns)
            .create(&PostParams::default(), &rs)
            .await
            .map_err(err("create replicaset"))?;
        self.apps.push(app.to_string());
        Ok(())
    }

    /// A claim (and for bound kinds its PV) of the given kind; returns the claim name.
    async fn claim(&mut self, app: &str, kind: &str) -> Res<String> {
        let name = format!("{app}-data");
        let pv_name = format!("{}-{app}", self.tag);
        let pvs: Api<PersistentVolume> = Api::all(self.sh.admin.clone());
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.sh.admin.clone(), &self.ns);
        let nodes: Vec<(String, String)> = self.nodes.values().flatten().cloned().collect();
        let (class, volume_name) = match kind {
            "local" => {
                let (node, _) = nodes[self.rng.random_range(0..nodes.len())].clone();
                let pv: PersistentVolume = obj(json!({
                    "metadata": {"name": pv_name, "labels": {SEED_KEY: self.tag}},
                    "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                             "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "local-static",
                             "hostPath": {"path": format!("/var/lib/rancher/k3s/storage/{pv_name}")},
                             "claimRef": {"namespace": self.ns, "name": name},
                             "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                                 {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}}
                }));
                pvs.create(&PostParams::default(), &pv)
                    .await
                    .map_err(err("create pv"))?;
                ("local-static", Some(pv_name))
            }
            "zonal" => {
                let zones = self.zones_with_nodes();
                let zone = zones[self.rng.random_range(0..zones.len())].clone();
                let pv: PersistentVolume = obj(json!({
                    "metadata": {"name": pv_name, "labels": {SEED_KEY: self.tag, "topology.kubernetes.io/zone": zone}},
                    "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                             "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "zonal-static",
                             "csi": {"driver": "ebs.csi.aws.com", "volumeHandle": format!("vol-{pv_name}")},
                             "claimRef": {"namespace": self.ns, "name": name},
                             "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                                 {"key": "topology.kubernetes.io/zone", "operator": "In", "values": [zone]}]}]}}}
                }));
                pvs.create(&PostParams::default(), &pv)
                    .await
                    .map_err(err("create pv"))?;
                ("zonal-static", Some(format!("{}-{app}", self.tag)))
            }
            other => (other, None),
        };
        let mut spec = json!({"accessModes": ["ReadWriteOnce"], "storageClassName": class,
                              "resources": {"requests": {"storage": "1Gi"}}});
        if let Some(v) = volume_name {
            spec["volumeName"] = json!(v);
        }
        let pvc: PersistentVolumeClaim =
            obj(json!({"metadata": {"name": name, "namespace": self.ns}, "spec": spec}));
        claims
            .create(&PostParams::default(), &pvc)
            .await
            .map_err(err("create pvc"))?;
        Ok(name)
    }

    async fn pdb(&self, app: &str, replicas: u32, strict: bool) -> Res<()> {
        let spec = if strict {
            json!({"minAvailable": replicas, "selector": {"matchLabels": {"app": app}}})
        } else {
            json!({"maxUnavailable": 1, "selector": {"matchLabels": {"app": app}}})
        };
        let pdb: PodDisruptionBudget =
            obj(json!({"metadata": {"name": app, "namespace": self.ns}, "spec": spec}));
        Api::<PodDisruptionBudget>::namespaced(self.sh.admin.clone(), &self.ns)
            .create(&PostParams::default(), &pdb)
            .await
            .map_err(err("create pdb"))?;
        Ok(())
    }

    async fn daemonsets(&mut self) -> Res<()> {
        let api: Api<DaemonSet> = Api::namespaced(self.sh.admin.clone(), &self.ns);
        let mut dss = vec![("agent", self.base_spec("50m", "64Mi"))];
        if self.rng.random_bool(0.5) {
            let mut spec = self.base_spec("100m", "128Mi");
            spec["nodeSelector"][POOL] = json!("batch");
            push(
                &mut spec["tolerations"],
                json!({"key": "dedicated", "operator": "Exists"}),
            );
            dss.push(("batch-agent", spec));
        }
        if self.rng.random_bool(0.3) {
            let mut spec = self.base_spec("20m", "32Mi");
            spec["containers"][0]["ports"] = json!([{"containerPort": 9100, "hostPort": 9100}]);
            dss.push(("exporter", spec));
        }
        for (name, spec) in dss {
            let ds: DaemonSet = obj(json!({
                "metadata": {"name": name, "namespace": self.ns},
                "spec": {"selector": {"matchLabels": {"ds": name}},
                         "template": {"metadata": {"labels": {"ds": name}}, "spec": spec}}
            }));
            api.create(&PostParams::default(), &ds)
                .await
                .map_err(err("create daemonset"))?;
        }
        Ok(())
    }

    /// Waits until every ReplicaSet has its pods and every pod is Running or Unschedulable
    /// (and budgets are current). Returns the unschedulable pods.
    async fn settle(&self) -> Res<Vec<Pod>> {
        let deadline = Instant::now() + SETTLE;
        let rs_api: Api<ReplicaSet> = Api::namespaced(self.sh.admin.clone(), &self.ns);
        let pdb_api: Api<PodDisruptionBudget> = Api::namespaced(self.sh.admin.clone(), &self.ns);
        let mut stable = 0;
        loop {
            let pods = self
                .pods()
                .list(&ListParams::default())
                .await
                .map_err(err("list pods"))?
                .items;
            let rss = rs_api
                .list(&ListParams::default())
                .await
                .map_err(err("list rs"))?
                .items;
            let pdbs = pdb_api
                .list(&ListParams::default())
                .await
                .map_err(err("list pdbs"))?
                .items;
            let live: Vec<&Pod> = pods
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            let rs_ok = rss.iter().all(|rs| {
                let name = rs.metadata.name.clone().unwrap_or_default();
                let want = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1) as usize;
                live.iter()
                    .filter(|p| owner(p) == Some(name.clone()))
                    .count()
                    == want
            });
            let terminating = pods.len() != live.len();
            let pods_ok = live.iter().all(|p| running(p) || unschedulable(p));
            let pdb_ok = pdbs.iter().all(|b| {
                let s = b.status.clone().unwrap_or_default();
                s.observed_generation == b.metadata.generation && {
                    let sel = b
                        .spec
                        .as_ref()
                        .and_then(|s| s.selector.as_ref())
                        .and_then(|s| s.match_labels.clone())
                        .unwrap_or_default();
                    let matching = live.iter().filter(|p| {
                        let l = p.metadata.labels.clone().unwrap_or_default();
                        sel.iter().all(|(k, v)| l.get(k) == Some(v))
                    });
                    let healthy = matching.clone().filter(|p| running(p)).count() as i32;
                    s.expected_pods == matching.count() as i32 && s.current_healthy == healthy
                }
            });
            if rs_ok && pods_ok && pdb_ok && !terminating {
                stable += 1;
                // Twice in a row, 300 ms apart: the scheduler and controllers have caught up.
                if stable >= 2 {
                    return Ok(live
                        .into_iter()
                        .filter(|p| unschedulable(p))
                        .cloned()
                        .collect());
                }
            } else {
                stable = 0;
            }
            if Instant::now() > deadline {
                let not_settled: Vec<String> = live
                    .iter()
                    .filter(|p| !(running(p) || unschedulable(p)))
                    .map(|p| p.metadata.name.clone().unwrap_or_default())
                    .collect();
                return Err(format!(
                    "did not settle: rs {rs_ok} pods {pods_ok} {not_settled:?} pdb {pdb_ok} terminating {terminating}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Everything the controller's watches would hold, for the model.
    async fn model(&self) -> Res<Cluster> {
        let a = &self.sh.admin;
        let lp = ListParams::default();
        let seed_nodes = ListParams::default().labels(&format!("{SEED_KEY}={}", self.tag));
        let nodes = Api::<Node>::all(a.clone())
            .list(&seed_nodes)
            .await
            .map_err(err("nodes"))?
            .items;
        let pods = self.pods().list(&lp).await.map_err(err("pods"))?.items;
        let pvs = Api::<PersistentVolume>::all(a.clone())
            .list(&lp)
            .await
            .map_err(err("pvs"))?
            .items;
        let pvcs = Api::<PersistentVolumeClaim>::namespaced(a.clone(), &self.ns)
            .list(&lp)
            .await
            .map_err(err("pvcs"))?
            .items;
        let classes = Api::<StorageClass>::all(a.clone())
            .list(&lp)
            .await
            .map_err(err("classes"))?
            .items;
        let pdbs = Api::<PodDisruptionBudget>::namespaced(a.clone(), &self.ns)
            .list(&lp)
            .await
            .map_err(err("pdbs"))?
            .items;
        let dss = Api::<DaemonSet>::namespaced(a.clone(), &self.ns)
            .list(&lp)
            .await
            .map_err(err("ds"))?
            .items;
        let nss = Api::<Namespace>::all(a.clone())
            .list(&lp)
            .await
            .map_err(err("ns"))?
            .items;
        Cluster::from_objects(&ClusterObjects {
            nodes: &nodes,
            pods: &pods,
            pvs: &pvs,
            pvcs: &pvcs,
            storage_classes: &classes,
            pdbs: &pdbs,
            daemonsets: &dss,
            namespaces: &nss,
        })
        .map_err(err("model"))
    }

    /// Drains `node` as the product does: cordon, evict (retrying while a budget refuses),
    /// then the instance is gone: kubelet stopped, Node deleted, leftover pods removed as the
    /// pod garbage collector would. Returns the pods evicted and how many non-DaemonSet pods
    /// were still there when the drain's deadline passed (removed without an eviction).
    async fn drain(&mut self, node: &str, patience: Duration) -> Res<(Vec<String>, usize)> {
        let nodes: Api<Node> = Api::all(self.sh.admin.clone());
        nodes
            .patch(
                node,
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"unschedulable": true}})),
            )
            .await
            .map_err(err("cordon"))?;
        let on_node = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node);
        let mut evicted = Vec::new();
        let deadline = Instant::now() + patience;
        let mut forced = 0;
        loop {
            let pods = self
                .pods()
                .list(&ListParams::default())
                .await
                .map_err(err("list pods"))?
                .items;
            let left: Vec<&Pod> = pods
                .iter()
                .filter(|p| on_node(p) && p.metadata.deletion_timestamp.is_none() && !is_daemon(p))
                .collect();
            if left.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                forced = left.len();
                break;
            }
            for p in left {
                let name = p.metadata.name.clone().unwrap_or_default();
                let api = self.pods();
                let params = EvictParams::default();
                match tokio::time::timeout(Duration::from_secs(5), api.evict(&name, &params)).await
                {
                    Err(_) => {
                        self.say(format!("evict {name}: no answer in 5 s"));
                    }
                    Ok(Ok(_)) => evicted.push(name),
                    Ok(Err(kube::Error::Api(s))) if s.code == 429 || s.code == 404 => {}
                    Ok(Err(e)) => return Err(format!("evict {name}: {e}")),
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        self.say(format!(
            "drain {node}: {} evicted, {forced} left; deleting the node",
            evicted.len()
        ));
        self.sh.k3s.stop_kubelet(node);
        nodes
            .delete(node, &DeleteParams::default())
            .await
            .map_err(err("delete node"))?;
        for list in self.nodes.values_mut() {
            list.retain(|(n, _)| n != node);
        }
        let pods = self
            .pods()
            .list(&ListParams::default())
            .await
            .map_err(err("list pods"))?
            .items;
        for p in pods.iter().filter(|p| on_node(p)) {
            let name = p.metadata.name.clone().unwrap_or_default();
            let _ = self
                .pods()
                .delete(
                    &name,
                    &DeleteParams {
                        grace_period_seconds: Some(0),
                        ..DeleteParams::default()
                    },
                )
                .await;
        }
        Ok((evicted, forced))
    }

    /// After a drain: waits for every ReplicaSet to be Running again; the pods still not
    /// Running at the deadline are stranded.
    async fn stranded_after_drain(&self) -> Res<Vec<String>> {
        match self.settle().await {
            Ok(unschedulable) => Ok(unschedulable
                .iter()
                .map(|p| p.metadata.name.clone().unwrap_or_default())
                .collect()),
            Err(e) => {
                // Not settled: count what is not Running.
                let pods = self
                    .pods()
                    .list(&ListParams::default())
                    .await
                    .map_err(err("list pods"))?
                    .items;
                let stuck: Vec<String> = pods
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none() && !running(p))
                    .map(|p| p.metadata.name.clone().unwrap_or_default())
                    .collect();
                if stuck.is_empty() { Err(e) } else { Ok(stuck) }
            }
        }
    }

    /// A copy of a pending pod with no owner and without the ReplicaSet's `rs` label (so no
    /// controller adopts it); asks the scheduler the same question for a new pod, at once.
    async fn probe(&self, pod: &Pod, suffix: &str) -> Res<String> {
        let mut labels = pod.metadata.labels.clone().unwrap_or_default();
        labels.remove("rs");
        labels.insert("probe".into(), "true".into());
        let name = format!(
            "probe-{suffix}-{}",
            pod.metadata.name.clone().unwrap_or_default()
        );
        let name: String = name.chars().take(62).collect();
        let mut spec = pod.spec.clone().unwrap_or_default();
        spec.node_name = None;
        let p: Pod = Pod {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(self.ns.clone()),
                labels: Some(labels),
                annotations: pod.metadata.annotations.clone(),
                ..Default::default()
            },
            spec: Some(spec),
            status: None,
        };
        self.pods()
            .create(&PostParams::default(), &p)
            .await
            .map_err(err("create probe"))?;
        Ok(name)
    }

    /// Bound (`true`) or unschedulable (`false`), as the scheduler decides for `name`.
    async fn verdict(&self, name: &str) -> Res<bool> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let p = self.pods().get(name).await.map_err(err("get probe"))?;
            if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() {
                return Ok(true);
            }
            if unschedulable(&p) {
                return Ok(false);
            }
            if Instant::now() > deadline {
                return Err(format!("no verdict for {name}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn delete_pod(&self, name: &str) {
        let _ = self
            .pods()
            .delete(
                name,
                &DeleteParams {
                    grace_period_seconds: Some(0),
                    ..DeleteParams::default()
                },
            )
            .await;
    }
}

/// What the model says for the same pending pods in another queue order.
#[derive(Debug, Clone, Copy)]
struct Order {
    /// Nodes its plan adds, and pods it counts as helped.
    nodes: u32,
    helped: usize,
    /// With every node of the plan being checked up at once, the pods placed in this order one
    /// by one on the least allocated node that passes: the plan's helpable pods left over.
    spread_unplaced: usize,
}

/// The model in other queue orders of the same pending pods, for outcomes that depend on the
/// order rather than on a filter.
///
/// The model packs in the order it is given (priority, then as listed), but kube-scheduler's
/// real order is not knowable from the API: its activeQ sorts equal priorities by the time
/// each pod was last queued, which every failed attempt refreshes, and a pod still backing off
/// (longer the more often it failed) waits while others take a node that just became Ready
/// (kubernetes v1.34 pkg/scheduler: `PrioritySort.Less`, `AddUnschedulableIfNotPresent`,
/// `SchedulerPopFromBackoffQ`). Nodes also become Ready one after the other, so a pod tried
/// late finds several new nodes and takes the least allocated (NodeResourcesFit's default
/// LeastAllocated score) where one tried early had only the first. How tightly the new nodes
/// pack, and which pods the first of them takes, follow from that; both extremes are
/// simulated here with the model's own templates and filters, so an error in those still shows.
fn other_orders(
    snapshot: &mut Snapshot,
    pending: &[Arc<PodSpec>],
    groups: &[NodeGroup],
    expander: Expander,
    plan: &scale_up::ScaleUpPlan,
    seed: u64,
) -> Vec<Order> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_0de5);
    let mut orders: Vec<Vec<Arc<PodSpec>>> = vec![pending.to_vec()];
    let mut reversed = pending.to_vec();
    reversed.reverse();
    orders.push(reversed);
    let mut largest = pending.to_vec();
    largest.sort_by_key(|p| std::cmp::Reverse((p.requests.milli_cpu, p.requests.memory)));
    orders.push(largest.clone());
    largest.reverse();
    orders.push(largest);
    for _ in 0..28 {
        let mut shuffled = pending.to_vec();
        shuffled.shuffle(&mut rng);
        orders.push(shuffled);
    }
    let helpable: BTreeSet<&String> = plan.increases.iter().flat_map(|i| &i.pods).collect();
    orders
        .iter()
        .map(|order| {
            let other = scale_up::plan(
                snapshot,
                &ScaleUpRequest {
                    pending: order,
                    groups,
                    backoff: &BTreeSet::new(),
                    expander,
                },
            );
            snapshot.fork();
            for inc in &plan.increases {
                let Some(g) = groups.iter().find(|g| g.spec.name == inc.group) else {
                    continue;
                };
                for (i, zone) in inc.zones.iter().enumerate() {
                    let name = format!("spread-{}-{i}", inc.group);
                    let id = snapshot.add_node(g.template.node(&name, zone));
                    for ds in &g.template.daemon_pods {
                        let mut p = (**ds).clone();
                        p.name = format!("{}-{name}", p.name);
                        snapshot.bind(&Arc::new(p), id);
                    }
                }
            }
            let placed = snapshot.place_all(order, None);
            snapshot.revert();
            let spread_unplaced = order
                .iter()
                .zip(&placed)
                .filter(|(p, r)| r.is_err() && helpable.contains(&p.key()))
                .count();
            Order {
                nodes: other.nodes(),
                helped: other.increases.iter().map(|i| i.pods.len()).sum(),
                spread_unplaced,
            }
        })
        .collect()
}

/// Each non-DaemonSet pod with its node (or "-") and the parts of its spec that place it.
fn placements(pods: &[Pod]) -> String {
    let mut out = Vec::new();
    for p in pods.iter().filter(|p| !is_daemon(p)) {
        let spec = p.spec.clone().unwrap_or_default();
        let req = spec
            .containers
            .first()
            .and_then(|c| c.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .map(|r| {
                r.iter()
                    .map(|(k, v)| format!("{k}={}", v.0))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        let mut extra = Vec::new();
        if let Some(sel) = &spec.node_selector {
            extra.push(format!("sel={:?}", sel));
        }
        if let Some(a) = &spec.affinity {
            extra.push(format!(
                "aff={}",
                serde_json::to_string(a).unwrap_or_default()
            ));
        }
        if let Some(t) = &spec.topology_spread_constraints {
            extra.push(format!(
                "spread={}",
                serde_json::to_string(t).unwrap_or_default()
            ));
        }
        let vols: Vec<String> = spec
            .volumes
            .iter()
            .flatten()
            .filter(|v| v.projected.is_none())
            .map(|v| {
                v.persistent_volume_claim
                    .as_ref()
                    .map_or_else(|| v.name.clone(), |c| format!("pvc:{}", c.claim_name))
            })
            .collect();
        if !vols.is_empty() {
            extra.push(format!("vols={vols:?}"));
        }
        if let Some(t) = &spec.tolerations {
            let t: Vec<String> = t
                .iter()
                .filter(|t| {
                    t.key.as_deref() != Some(SEED_KEY)
                        && !t.key.as_deref().unwrap_or("").starts_with("node.")
                })
                .map(|t| {
                    format!(
                        "{}{}",
                        t.key.clone().unwrap_or_default(),
                        t.operator
                            .as_deref()
                            .map_or(String::new(), |o| format!(":{o}"))
                    )
                })
                .collect();
            if !t.is_empty() {
                extra.push(format!("tol={t:?}"));
            }
        }
        let ports: Vec<i32> = spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| p.host_port)
            .collect();
        if !ports.is_empty() {
            extra.push(format!("hostPorts={ports:?}"));
        }
        out.push(format!(
            "{} on {} [{req}] {}",
            p.metadata.name.clone().unwrap_or_default(),
            spec.node_name.as_deref().unwrap_or("-"),
            extra.join(" ")
        ));
    }
    out.join("; ")
}

fn owner(p: &Pod) -> Option<String> {
    p.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.name.clone())
}

fn is_daemon(p: &Pod) -> bool {
    p.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "DaemonSet")
}

fn running(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        && p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
}

fn unschedulable(p: &Pod) -> bool {
    p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter().any(|c| {
                    c.type_ == "PodScheduled"
                        && c.status == "False"
                        && c.reason.as_deref() == Some("Unschedulable")
                })
            })
}

fn refusal_kind(r: &Refusal) -> String {
    match r {
        Refusal::Blocked { blocker, .. } => match blocker {
            Blocker::NotSafeToEvict => "blocked: safe-to-evict=false",
            Blocker::NotReplicated => "blocked: bare pod",
            Blocker::CustomController { .. } => "blocked: custom controller",
            Blocker::LocalStorage { .. } => "blocked: local storage",
            Blocker::SystemPodWithoutPdb => "blocked: kube-system",
            Blocker::NodeLocalVolume { .. } => "blocked: node-local volume",
            Blocker::PdbExceeded { .. } => "blocked: budget",
        }
        .to_string(),
        Refusal::NoPlace { .. } => "no place".to_string(),
        other => other.to_string(),
    }
}

// ----- one seed ------------------------------------------------------------------------------------

async fn run_seed(sh: &Shared, id: u64) -> Tally {
    let started = Instant::now();
    let mut seed = Seed {
        sh,
        id,
        tag: format!("s{id}"),
        ns: format!("cd-s{id}"),
        rng: ChaCha8Rng::seed_from_u64(id),
        groups: Vec::new(),
        nodes: BTreeMap::new(),
        next_node: 0,
        apps: Vec::new(),
        log: Vec::new(),
        started,
    };
    let mut t = Tally {
        seeds: 1,
        ..Tally::default()
    };
    let result = seed_body(&mut seed, &mut t).await;
    if let Err(e) = &result {
        t.seeds_failed.push(format!("seed {id}: {e}"));
    }
    cleanup(&seed).await;
    eprintln!(
        "seed {id:>3} {:>5.1}s {} | {}",
        started.elapsed().as_secs_f64(),
        if result.is_ok() { "ok  " } else { "FAIL" },
        seed.log.join(" | ")
    );
    for d in t
        .stranded_detail
        .iter()
        .chain(&t.up_helpable_detail)
        .chain(&t.up_empty_detail)
        .chain(&t.fits_now_detail)
        .chain(&t.unhelpable_detail)
        .chain(&t.seeds_failed)
    {
        eprintln!("    seed {id} disagreement: {d}");
    }
    t
}

async fn seed_body(s: &mut Seed<'_>, t: &mut Tally) -> Res<()> {
    let ns: Namespace = obj(json!({"metadata": {"name": s.ns, "labels": {SEED_KEY: s.tag}}}));
    Api::<Namespace>::all(s.sh.admin.clone())
        .create(&PostParams::default(), &ns)
        .await
        .map_err(err("create namespace"))?;
    // The default ServiceAccount must exist before pods are admitted.
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(s.sh.admin.clone(), &s.ns);
    let deadline = Instant::now() + SETTLE;
    while sas.get_opt("default").await.ok().flatten().is_none() {
        if Instant::now() > deadline {
            return Err("no default ServiceAccount".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Groups and their first nodes, zones round-robin as the ASG balances them.
    s.groups = groups_for(&mut s.rng);
    for g in s.groups.clone() {
        for i in 0..g.initial {
            let zone = g.zones[i as usize % g.zones.len()];
            s.join(&g.name, zone, "n").await?;
        }
    }
    s.nodes_ready().await?;
    s.daemonsets().await?;
    let desc: Vec<String> = s
        .groups
        .iter()
        .map(|g| format!("{}:{}x{}@{}", g.name, g.initial, g.itype, g.zones.join("+")))
        .collect();
    s.say(desc.join(","));

    // Workloads.
    let n_apps = s.rng.random_range(5..=9);
    for k in 0..n_apps {
        let app = format!("a{k}");
        let (annotations, mut spec) = s.random_pod(&app, false);
        let volume = if s.rng.random_bool(0.3) {
            Some(["local", "zonal", "wffc-local", "wffc-zonal"][s.rng.random_range(0..4)])
        } else {
            None
        };
        let replicas = if volume.is_some() {
            1
        } else {
            s.rng.random_range(1..=5)
        };
        if let Some(kind) = volume {
            let claim = s.claim(&app, kind).await?;
            let mut vols = spec["volumes"].as_array().cloned().unwrap_or_default();
            vols.push(json!({"name": "data", "persistentVolumeClaim": {"claimName": claim}}));
            spec["volumes"] = json!(vols);
        }
        s.replicaset(&app, replicas, annotations, spec).await?;
        if s.rng.random_bool(0.35) {
            let strict = s.rng.random_bool(0.3);
            s.pdb(&app, replicas, strict).await?;
        }
    }
    if s.rng.random_bool(0.3) {
        let (mut annotations, spec) = s.random_pod("bare", false);
        if s.rng.random_bool(0.5) {
            annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"] = json!("true");
        }
        let p: Pod = obj(
            json!({"metadata": {"name": "bare", "namespace": s.ns, "labels": {"app": "bare"},
                                             "annotations": annotations}, "spec": spec}),
        );
        s.pods()
            .create(&PostParams::default(), &p)
            .await
            .map_err(err("create bare pod"))?;
    }
    // Phase 1 ends with everything Running: pods the scheduler could not place go (their
    // ReplicaSets are deleted), as the policy never scales down with pods pending.
    let pending = s.settle().await?;
    if !pending.is_empty() {
        let owners: BTreeSet<String> = pending.iter().filter_map(owner).collect();
        for o in &owners {
            let _ = Api::<ReplicaSet>::namespaced(s.sh.admin.clone(), &s.ns)
                .delete(o, &DeleteParams::default())
                .await;
        }
        for p in pending.iter().filter(|p| owner(p).is_none()) {
            s.delete_pod(&p.metadata.name.clone().unwrap_or_default())
                .await;
        }
        for p in &pending {
            s.delete_pod(&p.metadata.name.clone().unwrap_or_default())
                .await;
        }
        s.settle().await?;
    }

    scale_down_phase(s, t).await?;
    scale_up_phase(s, t).await
}

async fn scale_down_phase(s: &mut Seed<'_>, t: &mut Tally) -> Res<()> {
    let cfg = ScaleDownConfig::default();
    let mut cluster = s.model().await?;
    let candidates = scale_down::candidates(&cluster.snapshot);
    let mut chosen = None;
    let mut refused = Vec::new();
    for &n in &candidates {
        let name = cluster.snapshot.node(n).name.clone();
        match scale_down::removable(&mut cluster.snapshot, n, &cluster.pdbs, &cfg) {
            Ok(r) => {
                if chosen.is_none() {
                    chosen = Some(r);
                }
            }
            Err(why) => {
                *t.refusals.entry(refusal_kind(&why)).or_insert(0) += 1;
                refused.push((name, why));
            }
        }
    }
    match chosen {
        None => {
            t.down_none += 1;
            s.say(format!("down: none of {} removable", candidates.len()));
        }
        Some(removal) => {
            let (evicted, forced) = s.drain(&removal.node, Duration::from_secs(20)).await?;
            let stranded = s.stranded_after_drain().await?;
            t.down_chosen += 1;
            t.down_pods_moved += evicted.len() as u64;
            s.say(format!(
                "down: drained {} ({} pods, {forced} not evictable in time) stranded {}",
                removal.node,
                evicted.len(),
                stranded.len()
            ));
            if forced > 0 {
                t.stranded_detail.push(format!(
                    "seed {}: {}: {forced} pods could not be evicted within 20 s",
                    s.id, removal.node
                ));
            }
            if !stranded.is_empty() {
                t.stranded += stranded.len() as u64;
                t.stranded_detail.push(format!(
                    "seed {}: {} -> {:?} (model moves {:?})",
                    s.id, removal.node, stranded, removal.moves
                ));
            }
        }
    }
    // A node refused for placement or budget reasons, judged again on the cluster as it is
    // now, drained for real: did the scheduler manage after all?
    let mut cluster = s.model().await?;
    let retest = refused.iter().find_map(|(name, _)| {
        let id = cluster.snapshot.node_by_name(name)?;
        match scale_down::removable(&mut cluster.snapshot, id, &cluster.pdbs, &cfg) {
            Err(
                why @ (Refusal::NoPlace { .. }
                | Refusal::Blocked {
                    blocker: Blocker::PdbExceeded { .. },
                    ..
                }),
            ) => Some((name.clone(), why)),
            _ => None,
        }
    });
    if let Some((name, why)) = retest {
        s.say(format!("retest {name}"));
        let (evicted, forced) = s.drain(&name, Duration::from_secs(8)).await?;
        let stuck = s.stranded_after_drain().await?;
        t.missed_tested += 1;
        // A saving the model missed: every pod evicted (no budget held it) and placed again.
        if stuck.is_empty() && forced == 0 {
            t.missed += 1;
            t.missed_detail
                .push(format!("seed {}: {name}: {why}", s.id));
        }
        s.say(format!(
            "refused {name} ({}) drained: {} evicted, {forced} held, {} stuck",
            refusal_kind(&why),
            evicted.len(),
            stuck.len()
        ));
    }
    Ok(())
}

async fn scale_up_phase(s: &mut Seed<'_>, t: &mut Tally) -> Res<()> {
    // New work: most of it does not fit, some of it no group can ever take.
    let n_new = s.rng.random_range(2..=4);
    for k in 0..n_new {
        let app = format!("u{k}");
        let (annotations, mut spec) = s.random_pod(&app, true);
        match s.rng.random_range(0..14) {
            0 => spec["containers"][0]["resources"]["requests"]["cpu"] = json!("5"),
            1 => spec["nodeSelector"][POOL] = json!("gpu"),
            2 => {
                spec["nodeSelector"][POOL] = json!("batch");
                spec["tolerations"] = json!([{"key": SEED_KEY, "operator": "Equal", "value": s.tag, "effect": "NoSchedule"}]);
            }
            3 | 4 => {
                let kind =
                    ["never", "wffc-nowhere", "wffc-zonal", "wffc-local"][s.rng.random_range(0..4)];
                let claim = s.claim(&app, kind).await?;
                spec["volumes"] =
                    json!([{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]);
                s.replicaset(&app, 1, annotations, spec).await?;
                continue;
            }
            _ => {}
        }
        let replicas = s.rng.random_range(1..=3);
        s.replicaset(&app, replicas, annotations, spec).await?;
    }
    s.say("up: new work created".into());
    s.settle().await?;
    s.say("up: settled".into());
    let mut cluster = s.model().await?;
    let seed_tag = s.tag.clone();
    let groups: Vec<NodeGroup> = s
        .groups
        .iter()
        .map(|g| {
            let members: Vec<(String, String)> = s.nodes.get(&g.name).cloned().unwrap_or_default();
            let mut per_zone = BTreeMap::new();
            for (_, z) in &members {
                *per_zone.entry(z.clone()).or_insert(0) += 1;
            }
            let spec = group_spec(&seed_tag, g, members.len() as u32, per_zone);
            let names: Vec<&str> = members.iter().map(|(n, _)| n.as_str()).collect();
            let template = cluster.template(&spec, &names).map_err(err("template"))?;
            Ok(NodeGroup { spec, template })
        })
        .collect::<Res<Vec<_>>>()?;
    let expander =
        [Expander::LeastWaste, Expander::Priority, Expander::Price][s.rng.random_range(0..3)];
    let pending = cluster.pending.clone();
    let plan = scale_up::plan(
        &mut cluster.snapshot,
        &ScaleUpRequest {
            pending: &pending,
            groups: &groups,
            backoff: &BTreeSet::new(),
            expander,
        },
    );
    let orders = other_orders(
        &mut cluster.snapshot,
        &pending,
        &groups,
        expander,
        &plan,
        s.id,
    );
    t.up_plans += 1;
    t.blocked += plan.blocked.len() as u64;
    let pods_now = s
        .pods()
        .list(&ListParams::default())
        .await
        .map_err(err("list pods"))?
        .items;
    let by_key = |key: &str| {
        pods_now
            .iter()
            .find(|p| {
                format!(
                    "{}/{}",
                    p.metadata.namespace.clone().unwrap_or_default(),
                    p.metadata.name.clone().unwrap_or_default()
                ) == key
            })
            .cloned()
    };

    s.say(format!(
        "up: planned {:?}",
        plan.increases
            .iter()
            .map(|i| (&i.group, i.to - i.from))
            .collect::<Vec<_>>()
    ));
    // "Fits in free space": the scheduler must agree for a new pod of the same spec now.
    for key in &plan.fits_now {
        let Some(p) = by_key(key) else { continue };
        let probe = s.probe(&p, "fit").await?;
        let bound = s.verdict(&probe).await?;
        s.delete_pod(&probe).await;
        t.fits_now += 1;
        if bound {
            t.fits_now_agreed += 1;
        } else {
            t.fits_now_detail.push(format!("seed {}: {key}", s.id));
        }
    }

    // Add the nodes the plan asked for, in the zones the ASG would pick (fewest first, ties random).
    let mut added = Vec::new();
    for inc in &plan.increases {
        let g = s.group(&inc.group).clone();
        for _ in inc.from..inc.to {
            let counts: BTreeMap<&str, usize> = g
                .zones
                .iter()
                .map(|z| {
                    (
                        *z,
                        s.nodes
                            .get(&g.name)
                            .map_or(0, |ns| ns.iter().filter(|(_, nz)| nz == z).count()),
                    )
                })
                .collect();
            let min = counts.values().copied().min().unwrap_or(0);
            let tied: Vec<&str> = counts
                .iter()
                .filter(|(_, c)| **c == min)
                .map(|(z, _)| *z)
                .collect();
            let zone = tied[s.rng.random_range(0..tied.len())];
            added.push(s.join(&g.name, zone, "up").await?);
        }
    }
    t.up_nodes_added += added.len() as u64;
    let helpable: Vec<String> = plan.increases.iter().flat_map(|i| i.pods.clone()).collect();
    t.up_helpable += helpable.len() as u64;
    if !added.is_empty() {
        s.nodes_ready().await?;
        let deadline = Instant::now() + SETTLE;
        loop {
            let pods = s
                .pods()
                .list(&ListParams::default())
                .await
                .map_err(err("list pods"))?
                .items;
            let bound: BTreeSet<String> = pods
                .iter()
                .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
                .map(|p| format!("{}/{}", s.ns, p.metadata.name.clone().unwrap_or_default()))
                .collect();
            let missing: Vec<&String> = helpable.iter().filter(|k| !bound.contains(*k)).collect();
            let empty: Vec<&String> = added
                .iter()
                .filter(|n| {
                    !pods.iter().any(|p| {
                        p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(n.as_str())
                            && !is_daemon(p)
                    })
                })
                .collect();
            if (missing.is_empty() && empty.is_empty()) || Instant::now() > deadline {
                let planned = added.len() as u32;
                let used = planned - empty.len() as u32;
                // Pending pods the plan did not count for its nodes (blocked, or planned for
                // nothing) that the scheduler put on them: it does not know whom a node is for.
                let taken = pods
                    .iter()
                    .filter(|p| {
                        !is_daemon(p)
                            && p.spec
                                .as_ref()
                                .and_then(|s| s.node_name.as_ref())
                                .is_some_and(|n| added.contains(n))
                            && !helpable.contains(&format!(
                                "{}/{}",
                                s.ns,
                                p.metadata.name.clone().unwrap_or_default()
                            ))
                    })
                    .count();
                let packs_looser = orders.iter().any(|o| {
                    o.nodes > planned || o.helped < helpable.len() || o.spread_unplaced > 0
                });
                let packs_tighter = orders.iter().any(|o| o.nodes <= used);
                // (nodes, helped, left over when spread) per distinct outcome, for the details.
                let outcomes: BTreeSet<(u32, usize, usize)> = orders
                    .iter()
                    .map(|o| (o.nodes, o.helped, o.spread_unplaced))
                    .collect();
                t.up_helpable_scheduled += (helpable.len() - missing.len()) as u64;
                let explained = if missing.is_empty() {
                    None
                } else if taken >= missing.len() {
                    t.up_taken += missing.len() as u64;
                    Some(format!("{taken} other pending pods took the room"))
                } else if packs_looser {
                    t.up_order_missing += missing.len() as u64;
                    Some(format!("another order packs looser: {outcomes:?}"))
                } else {
                    None
                };
                match &explained {
                    Some(why) => {
                        t.up_order_detail
                            .push(format!("seed {}: {missing:?} unscheduled: {why}", s.id));
                    }
                    None if !missing.is_empty() => t.up_helpable_detail.push(format!(
                        "seed {}: {missing:?} ({:?}; other orders {outcomes:?})",
                        s.id, plan.increases
                    )),
                    None => {}
                }
                if !empty.is_empty() && packs_tighter {
                    t.up_order_empty += empty.len() as u64;
                    t.up_order_detail.push(format!(
                        "seed {}: {empty:?} empty: another order packs into {used}: {outcomes:?}",
                        s.id
                    ));
                } else if !empty.is_empty() {
                    t.up_empty_nodes += empty.len() as u64;
                    t.up_empty_detail.push(format!(
                        "seed {}: {empty:?} ({:?}; other orders {outcomes:?})",
                        s.id, plan.increases
                    ));
                }
                if !empty.is_empty() || !missing.is_empty() {
                    s.say(format!("up: where the pods went: {}", placements(&pods)));
                    s.say(format!(
                        "up: blocked {:?} unhelpable {:?}",
                        plan.blocked, plan.unhelpable
                    ));
                }
                s.say(format!(
                    "up ({expander:?}): +{} nodes for {} pods, {} unscheduled, {} empty",
                    added.len(),
                    helpable.len(),
                    missing.len(),
                    empty.len()
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    // Unhelpable: with one fresh node of every group in every zone, the scheduler still cannot
    // place a new pod of the same spec.
    if !plan.unhelpable.is_empty() {
        s.say("up: probing unhelpable".into());
        for g in s.groups.clone() {
            for z in g.zones.clone() {
                s.join(&g.name, z, "probe").await?;
            }
        }
        s.nodes_ready().await?;
        for v in &plan.unhelpable {
            let Some(p) = by_key(&v.pod) else { continue };
            let probe = s.probe(&p, "un").await?;
            let bound = s.verdict(&probe).await?;
            if bound {
                let pods = s
                    .pods()
                    .list(&ListParams::default())
                    .await
                    .map_err(err("list pods"))?
                    .items;
                s.say(format!(
                    "up: {probe} placed; where the pods went: {} (plan {plan:?})",
                    placements(&pods)
                ));
            }
            s.delete_pod(&probe).await;
            t.unhelpable += 1;
            if bound {
                t.unhelpable_detail
                    .push(format!("seed {}: {} ({:?})", s.id, v.pod, v.reasons));
            } else {
                t.unhelpable_agreed += 1;
            }
        }
        s.say(format!("unhelpable: {}", plan.unhelpable.len()));
    }
    Ok(())
}

async fn cleanup(s: &Seed<'_>) {
    let a = &s.sh.admin;
    let _ = Api::<Namespace>::all(a.clone())
        .delete(&s.ns, &DeleteParams::default())
        .await;
    if let Ok(pods) = s.pods().list(&ListParams::default()).await {
        for p in pods.items {
            s.delete_pod(&p.metadata.name.unwrap_or_default()).await;
        }
    }
    let nodes: Api<Node> = Api::all(a.clone());
    for n in s.nodes.values().flatten().map(|(n, _)| n) {
        s.sh.k3s.stop_kubelet(n);
        let _ = nodes.delete(n, &DeleteParams::default()).await;
    }
    let pvs: Api<PersistentVolume> = Api::all(a.clone());
    let _ = pvs
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels(&format!("{SEED_KEY}={}", s.tag)),
        )
        .await;
}

// ----- shared plane --------------------------------------------------------------------------------

async fn storage_classes(admin: &kube::Client) {
    let api: Api<StorageClass> = Api::all(admin.clone());
    for sc in [
        json!({"metadata": {"name": "local-static"}, "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "WaitForFirstConsumer"}),
        json!({"metadata": {"name": "zonal-static"}, "provisioner": "ebs.csi.aws.com", "volumeBindingMode": "WaitForFirstConsumer"}),
        json!({"metadata": {"name": "wffc-local"}, "provisioner": "rancher.io/local-path", "volumeBindingMode": "WaitForFirstConsumer"}),
        json!({"metadata": {"name": "wffc-zonal"}, "provisioner": "ebs.csi.aws.com", "volumeBindingMode": "WaitForFirstConsumer"}),
        json!({"metadata": {"name": "wffc-nowhere"}, "provisioner": "ebs.csi.aws.com", "volumeBindingMode": "WaitForFirstConsumer",
               "allowedTopologies": [{"matchLabelExpressions": [{"key": "topology.kubernetes.io/zone", "values": ["us-east-1d"]}]}]}),
        json!({"metadata": {"name": "never"}, "provisioner": "example.com/absent", "volumeBindingMode": "Immediate"}),
    ] {
        api.create(&PostParams::default(), &obj(sc))
            .await
            .expect("storage class");
    }
}

/// The external provisioners of the classes above (local-path and the EBS CSI driver): a
/// claim the scheduler selected a node for gets a PV on that node (local) or in its zone
/// (EBS), pre-bound to the claim; the real PV controller completes the binding.
async fn provisioner(admin: kube::Client) {
    let claims: Api<PersistentVolumeClaim> = Api::all(admin.clone());
    let pvs: Api<PersistentVolume> = Api::all(admin.clone());
    let nodes: Api<Node> = Api::all(admin);
    let mut done: BTreeSet<String> = BTreeSet::new();
    loop {
        if let Ok(list) = claims.list(&ListParams::default()).await {
            for c in list.items {
                let ns = c.metadata.namespace.clone().unwrap_or_default();
                let name = c.metadata.name.clone().unwrap_or_default();
                let key = format!("{ns}/{name}");
                let spec = c.spec.clone().unwrap_or_default();
                let class = spec.storage_class_name.clone().unwrap_or_default();
                let selected = c
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("volume.kubernetes.io/selected-node").cloned());
                let (Some(node), None) = (selected, spec.volume_name.as_ref()) else {
                    continue;
                };
                if !matches!(class.as_str(), "wffc-local" | "wffc-zonal") || done.contains(&key) {
                    continue;
                }
                let Ok(n) = nodes.get(&node).await else {
                    continue;
                };
                let labels = n.metadata.labels.unwrap_or_default();
                let seed = labels.get(SEED_KEY).cloned().unwrap_or_default();
                let zone = labels
                    .get("topology.kubernetes.io/zone")
                    .cloned()
                    .unwrap_or_default();
                let (affinity, source, mut pv_labels) = if class == "wffc-local" {
                    (
                        json!({"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}),
                        json!({"hostPath": {"path": format!("/var/lib/rancher/k3s/storage/{ns}-{name}")}}),
                        json!({SEED_KEY: seed}),
                    )
                } else {
                    (
                        json!({"key": "topology.kubernetes.io/zone", "operator": "In", "values": [zone]}),
                        json!({"csi": {"driver": "ebs.csi.aws.com", "volumeHandle": format!("vol-{ns}-{name}")}}),
                        json!({SEED_KEY: seed, "topology.kubernetes.io/zone": zone}),
                    )
                };
                pv_labels["provisioned"] = json!("true");
                let mut pv = json!({
                    "metadata": {"name": format!("pvc-{ns}-{name}"), "labels": pv_labels},
                    "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                             "persistentVolumeReclaimPolicy": "Retain", "storageClassName": class,
                             "claimRef": {"namespace": ns, "name": name, "uid": c.metadata.uid},
                             "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [affinity]}]}}}
                });
                for (k, v) in source.as_object().into_iter().flatten() {
                    pv["spec"][k] = v.clone();
                }
                match pvs.create(&PostParams::default(), &obj(pv)).await {
                    Ok(_) => {
                        done.insert(key);
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        done.insert(key);
                    }
                    Err(_) => {}
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn seeds_from_env(default: u64) -> u64 {
    std::env::var("SMARTSCALE_CAPACITY_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn run(seeds: u64) -> Tally {
    let started = Instant::now();
    let plane = ControlPlane::start(ControlPlaneOptions::default())
        .await
        .expect("control plane");
    let k3s = K3sServer::start(
        &plane,
        K3sOptions {
            pod_start_delay: Duration::from_millis(50),
            ..K3sOptions::default()
        },
    )
    .expect("k3s");
    let admin = plane.admin().clone();
    storage_classes(&admin).await;
    let prov = tokio::spawn(provisioner(admin.clone()));
    let sh = Arc::new(Shared {
        plane,
        k3s,
        admin,
        joined: std::sync::Mutex::new(BTreeSet::new()),
    });
    let first: u64 = std::env::var("SMARTSCALE_CAPACITY_FIRST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let total = futures::stream::iter(first..first + seeds)
        .map(|id| {
            let sh = sh.clone();
            async move { run_seed(&sh, id).await }
        })
        .buffer_unordered(CONCURRENCY)
        .fold(Tally::default(), |mut acc, t| async move {
            acc.merge(t);
            acc
        })
        .await;
    prov.abort();
    total.print(started.elapsed());
    if let Ok(sh) = Arc::try_unwrap(sh) {
        sh.plane.shutdown().await;
    }
    total
}

fn check(t: &Tally, seeds: u64) {
    assert!(
        t.seeds_failed.len() as u64 * 10 <= seeds,
        "too many seeds could not run: {:?}",
        t.seeds_failed
    );
    assert_eq!(
        t.stranded, 0,
        "pods stranded by a drain the model allowed: {:?}",
        t.stranded_detail
    );
    assert_eq!(
        t.up_helpable_scheduled + t.up_order_missing + t.up_taken,
        t.up_helpable,
        "helpable pods left unscheduled: {:?}",
        t.up_helpable_detail
    );
    assert_eq!(
        t.up_empty_nodes, 0,
        "added nodes left empty: {:?}",
        t.up_empty_detail
    );
    assert_eq!(
        t.unhelpable_agreed, t.unhelpable,
        "unhelpable pods the scheduler placed: {:?}",
        t.unhelpable_detail
    );
    assert_eq!(
        t.fits_now_agreed, t.fits_now,
        "pods said to fit that the scheduler did not place: {:?}",
        t.fits_now_detail
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_capacity_model_agrees_with_the_real_scheduler() {
    let seeds = seeds_from_env(30);
    let t = tokio::time::timeout(Duration::from_secs(60 + seeds * 15), run(seeds))
        .await
        .expect("differential test timed out");
    check(&t, seeds);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: 200 seeds (about 15 minutes); run with --ignored"]
async fn the_capacity_model_agrees_with_the_real_scheduler_soak() {
    let seeds = seeds_from_env(200);
    let t = tokio::time::timeout(Duration::from_secs(60 + seeds * 15), run(seeds))
        .await
        .expect("differential soak timed out");
    check(&t, seeds);
}
