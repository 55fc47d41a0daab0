//! Nodes as the scheduler sees them, and node-group templates: the node a group would add.

use super::instance_types;
use super::pod::PodSpec;
use super::resources::Resources;
use super::selector::{Labels, Taint, Toleration, untolerated};
use super::volume::{Catalog, HOSTNAME, REGION, ZONE};
use crate::{Error, Result};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1 as core;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

pub const SCALE_DOWN_DISABLED: &str = "smartscale.io/scale-down-disabled";
const CA_SCALE_DOWN_DISABLED: &str = "cluster-autoscaler.kubernetes.io/scale-down-disabled";
pub const DRAINING_TAINT: &str = "smartscale.io/draining";
pub const TAG_LABEL: &str = "k8s.io/cluster-autoscaler/node-template/label/";
pub const TAG_TAINT: &str = "k8s.io/cluster-autoscaler/node-template/taint/";
pub const TAG_RESOURCES: &str = "k8s.io/cluster-autoscaler/node-template/resources/";
const INSTANCE_TYPE: &str = "node.kubernetes.io/instance-type";
const BETA_INSTANCE_TYPE: &str = "beta.kubernetes.io/instance-type";
const BETA_ZONE: &str = "failure-domain.beta.kubernetes.io/zone";
/// Labels whose value is the node's zone: rewritten for each zone of a template.
const ZONE_VALUED: [&str; 3] = [ZONE, BETA_ZONE, "topology.ebs.csi.aws.com/zone"];
/// Labels that name one machine or its zone id: dropped from a template.
const PER_NODE: [&str; 3] = [HOSTNAME, "k3s.io/hostname", "topology.k8s.aws/zone-id"];

/// A node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeInfo {
    pub name: String,
    pub labels: Labels,
    pub taints: Vec<Taint>,
    pub allocatable: Resources,
    /// `spec.unschedulable` (cordoned).
    pub unschedulable: bool,
    pub ready: bool,
    pub zone: Option<String>,
    /// EC2 instance id from `spec.providerID`.
    pub instance_id: Option<String>,
    pub control_plane: bool,
    /// Annotated `smartscale.io/scale-down-disabled=true` (or cluster-autoscaler's annotation).
    pub scale_down_disabled: bool,
    /// The node group of a template node (`None` for nodes that exist).
    pub template_of: Option<String>,
}

/// `aws:///us-east-1a/i-0abc` → `i-0abc`.
pub fn instance_id(provider_id: &str) -> Option<String> {
    let id = provider_id.strip_prefix("aws://")?.rsplit('/').next()?;
    id.starts_with("i-").then(|| id.to_string())
}

impl NodeInfo {
    pub fn from_node(n: &core::Node) -> Result<NodeInfo> {
        let name = n.metadata.name.clone().unwrap_or_default();
        let labels = n.metadata.labels.clone().unwrap_or_default();
        let annotations = n.metadata.annotations.clone().unwrap_or_default();
        let spec = n.spec.clone().unwrap_or_default();
        let status = n.status.clone().unwrap_or_default();
        let allocatable = Resources::from_list(&status.allocatable.unwrap_or_default())
            .map_err(|e| Error::Capacity(format!("node {name}: allocatable: {e}")))?;
        let ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let zone = labels.get(ZONE).or(labels.get(BETA_ZONE)).cloned();
        Ok(NodeInfo {
            taints: spec.taints.iter().flatten().map(Taint::from_k8s).collect(),
            allocatable,
            unschedulable: spec.unschedulable.unwrap_or(false),
            ready,
            zone,
            instance_id: spec.provider_id.as_deref().and_then(instance_id),
            control_plane: labels.contains_key("node-role.kubernetes.io/control-plane")
                || labels.contains_key("node-role.kubernetes.io/master"),
            scale_down_disabled: [SCALE_DOWN_DISABLED, CA_SCALE_DOWN_DISABLED]
                .iter()
                .any(|a| annotations.get(*a).map(String::as_str) == Some("true")),
            template_of: None,
            labels,
            name,
        })
    }

    /// A node with the given shape, for tests and the twin.
    pub fn simple(name: &str, milli_cpu: i64, memory: i64, zone: &str) -> NodeInfo {
        let labels = Labels::from([
            (HOSTNAME.to_string(), name.to_string()),
            (ZONE.to_string(), zone.to_string()),
        ]);
        NodeInfo {
            name: name.to_string(),
            labels,
            taints: Vec::new(),
            allocatable: Resources {
                milli_cpu,
                memory,
                pods: 110,
                ephemeral_storage: 20 << 30,
                ..Resources::default()
            },
            unschedulable: false,
            ready: true,
            zone: Some(zone.to_string()),
            instance_id: None,
            control_plane: false,
            scale_down_disabled: false,
            template_of: None,
        }
    }
}

/// A DaemonSet: the pod it would run on a node, and where.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DaemonSetSpec {
    pub namespace: String,
    pub name: String,
    /// `spec.template.spec.nodeName`, if set: only that node.
    pub node_name: Option<String>,
    /// The template pod with the tolerations the DaemonSet controller adds
    /// (`AddOrUpdateDaemonPodTolerations`).
    #[serde(serialize_with = "super::pod::serialize_arc")]
    pub pod: Arc<PodSpec>,
}

impl DaemonSetSpec {
    pub fn from_daemonset(ds: &DaemonSet, catalog: &Catalog) -> Result<DaemonSetSpec> {
        let name = ds.metadata.name.clone().unwrap_or_default();
        let namespace = ds
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let template = ds
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let mut meta = template.metadata.unwrap_or_default();
        meta.name = Some(format!("{name}-template"));
        meta.namespace = Some(namespace.clone());
        meta.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "apps/v1".into(),
                kind: "DaemonSet".into(),
                name: name.clone(),
                uid: ds.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: None,
            },
        ]);
        let spec = template.spec.unwrap_or_default();
        let node_name = spec.node_name.clone().filter(|n| !n.is_empty());
        let pod = core::Pod {
            metadata: meta,
            spec: Some(core::PodSpec {
                node_name: None,
                ..spec.clone()
            }),
            status: None,
        };
        let mut pod = PodSpec::from_pod(&pod, catalog)
            .map_err(|e| Error::Capacity(format!("daemonset {namespace}/{name}: {e}")))?;
        let mut added = vec![
            Toleration::exists("node.kubernetes.io/not-ready", "NoExecute"),
            Toleration::exists("node.kubernetes.io/unreachable", "NoExecute"),
            Toleration::exists("node.kubernetes.io/disk-pressure", "NoSchedule"),
            Toleration::exists("node.kubernetes.io/memory-pressure", "NoSchedule"),
            Toleration::exists("node.kubernetes.io/pid-pressure", "NoSchedule"),
            Toleration::exists("node.kubernetes.io/unschedulable", "NoSchedule"),
        ];
        if spec.host_network == Some(true) {
            added.push(Toleration::exists(
                "node.kubernetes.io/network-unavailable",
                "NoSchedule",
            ));
        }
        for t in added {
            pod.tolerations
                .retain(|x| !(x.key == t.key && x.effect == t.effect));
            pod.tolerations.push(t);
        }
        Ok(DaemonSetSpec {
            namespace,
            name,
            node_name,
            pod: Arc::new(pod),
        })
    }

    /// `NodeShouldRunDaemonPod`: node name, node selector and required affinity, and no
    /// untolerated NoSchedule/NoExecute taint. Resources do not matter: the controller
    /// creates the pod either way.
    pub fn should_run_on(&self, node: &NodeInfo) -> bool {
        self.node_name.as_ref().is_none_or(|n| *n == node.name)
            && super::filters::node_affinity::matches(&self.pod, node)
            && untolerated(&node.taints, &self.pod.tolerations).is_none()
    }

    /// The pod this DaemonSet would run on `node`.
    pub fn pod_for(&self, node: &str) -> Arc<PodSpec> {
        let mut p = (*self.pod).clone();
        p.name = format!("{}-{node}", self.name);
        p.node_name = Some(node.to_string());
        Arc::new(p)
    }
}

/// What a group at zero reserves out of its instance type's nominal size (K3s sets no
/// kube-reserved or system-reserved; the kubelet keeps a 100 MiB eviction threshold, and an
/// EC2 instance's usable memory is a few percent under its nominal size).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reserve {
    pub milli_cpu: i64,
    pub memory_mib: i64,
    /// Per mille of nominal memory not usable by pods.
    pub memory_per_mille: i64,
    pub pods: i64,
    /// Root volume size for ephemeral-storage (90% allocatable, the kubelet's nodefs threshold).
    pub root_volume_gib: i64,
}

impl Default for Reserve {
    fn default() -> Self {
        Reserve {
            milli_cpu: 0,
            memory_mib: 100,
            memory_per_mille: 60,
            pods: 110,
            root_volume_gib: 20,
        }
    }
}

/// A node group (an Auto Scaling group) as the model needs it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupSpec {
    pub name: String,
    pub min: u32,
    pub max: u32,
    /// Desired capacity now.
    pub target: u32,
    /// Instances launched or wanted that are not Ready nodes yet (capacity in flight).
    pub upcoming: u32,
    /// The launch template's instance type, or a mixed-instances policy's overrides.
    pub instance_types: Vec<String>,
    /// The zones of the group's subnets.
    pub zones: Vec<String>,
    /// Instances per zone now (for the AZ balance new instances follow).
    pub instances_per_zone: BTreeMap<String, u32>,
    /// The ASG's tags (cluster-autoscaler's node-template tags are read from here).
    pub tags: BTreeMap<String, String>,
    /// For the `priority` expander: higher wins.
    pub priority: i32,
    /// For the `price` expander: USD per node-hour; the table's on-demand price if `None`.
    pub price_per_hour: Option<f64>,
    pub reserve: Reserve,
}

impl GroupSpec {
    pub fn new(
        name: &str,
        instance_type: &str,
        zones: &[&str],
        min: u32,
        max: u32,
        target: u32,
    ) -> GroupSpec {
        GroupSpec {
            name: name.to_string(),
            min,
            max,
            target,
            upcoming: 0,
            instance_types: vec![instance_type.to_string()],
            zones: zones.iter().map(|z| z.to_string()).collect(),
            instances_per_zone: BTreeMap::new(),
            tags: BTreeMap::new(),
            priority: 0,
            price_per_hour: None,
            reserve: Reserve::default(),
        }
    }

    /// The smallest instance type the group may launch (by vCPUs, then memory): what it packs
    /// with, so a plan never counts on a shape the ASG might not deliver.
    pub fn smallest_type(&self) -> Result<instance_types::InstanceType> {
        let mut known: Vec<_> = self
            .instance_types
            .iter()
            .filter_map(|t| instance_types::lookup(t).ok())
            .collect();
        known.sort_by_key(|t| (t.vcpu, t.memory_mib));
        match known.into_iter().next() {
            Some(t) => Ok(t),
            None => instance_types::lookup(self.instance_types.first().map_or("", String::as_str)),
        }
    }
}

/// The node a group would add, with the DaemonSet pods that would land on it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeTemplate {
    pub group: String,
    pub instance_type: String,
    pub allocatable: Resources,
    /// Labels without the per-node ones (hostname) and zone-valued ones (set per zone).
    pub labels: Labels,
    pub taints: Vec<Taint>,
    pub zones: Vec<String>,
    /// Pods every new node starts with: DaemonSets that would run on it (and the example
    /// node's mirror pods).
    #[serde(serialize_with = "super::pod::serialize_arcs")]
    pub daemon_pods: Vec<Arc<PodSpec>>,
    /// Where the template came from, for reasons ("node ip-…" or "ASG tags, m5.large").
    pub source: String,
}

fn is_transient_taint(t: &Taint) -> bool {
    t.key.starts_with("node.kubernetes.io/")
        || t.key.starts_with("node.cloudprovider.kubernetes.io/")
        || t.key == DRAINING_TAINT
        || t.key == "ToBeDeletedByClusterAutoscaler"
        || t.key == "DeletionCandidateOfClusterAutoscaler"
}

fn region_of(zone: &str) -> String {
    zone.trim_end_matches(|c: char| c.is_ascii_lowercase())
        .to_string()
}

impl NodeTemplate {
    /// The template of a group: from a Ready node of it when there is one, else from its
    /// ASG's tags and instance type. `ready` holds the group's Ready nodes and their pods.
    pub fn for_group(
        group: &GroupSpec,
        ready: &[(&NodeInfo, Vec<Arc<PodSpec>>)],
        daemonsets: &[DaemonSetSpec],
    ) -> Result<NodeTemplate> {
        let smallest = group.smallest_type().ok();
        let example = ready
            .iter()
            .find(|(n, _)| {
                smallest
                    .as_ref()
                    .is_some_and(|t| n.labels.get(INSTANCE_TYPE) == Some(&t.name))
            })
            .or_else(|| {
                ready.iter().min_by_key(|(n, _)| {
                    (
                        n.allocatable.milli_cpu,
                        n.allocatable.memory,
                        n.name.clone(),
                    )
                })
            });
        let mut t = match example {
            Some((node, pods)) => {
                let mut t = Self::from_node(group, node, pods);
                // A mixed group whose Ready node is a bigger type packs with its smallest type.
                if let Some(small) = smallest.as_ref().filter(|s| {
                    node.labels.get(INSTANCE_TYPE) != Some(&s.name)
                        && (s.vcpu * 1000 < node.allocatable.milli_cpu
                            || s.memory_mib << 20 < node.allocatable.memory)
                }) {
                    t.allocatable = shape(small, &group.reserve);
                    t.labels.insert(INSTANCE_TYPE.into(), small.name.clone());
                    t.instance_type = small.name.clone();
                    t.source = format!("{} resized to {}", t.source, small.name);
                }
                t
            }
            None => Self::from_tags(group)?,
        };
        t.add_daemonsets(daemonsets);
        Ok(t)
    }

    fn from_node(group: &GroupSpec, node: &NodeInfo, pods: &[Arc<PodSpec>]) -> NodeTemplate {
        let mut labels = node.labels.clone();
        for k in PER_NODE.iter().chain(&ZONE_VALUED) {
            labels.remove(*k);
        }
        let mut zones = group.zones.clone();
        if zones.is_empty() {
            zones.extend(node.zone.clone());
        }
        NodeTemplate {
            group: group.name.clone(),
            instance_type: node
                .labels
                .get(INSTANCE_TYPE)
                .cloned()
                .unwrap_or_else(|| "unknown".into()),
            allocatable: node.allocatable.clone(),
            labels,
            taints: node
                .taints
                .iter()
                .filter(|t| !is_transient_taint(t))
                .cloned()
                .collect(),
            zones,
            daemon_pods: pods.iter().filter(|p| p.mirror).cloned().collect(),
            source: format!("node {}", node.name),
        }
    }

    /// cluster-autoscaler's AWS convention for a group at zero: labels, taints and resources
    /// from `k8s.io/cluster-autoscaler/node-template/{label,taint,resources}/<name>` tags, the
    /// size from the (smallest) instance type.
    pub fn from_tags(group: &GroupSpec) -> Result<NodeTemplate> {
        let itype = group.smallest_type().map_err(|e| {
            Error::Capacity(format!(
                "group {} has no Ready node to copy: {e}",
                group.name
            ))
        })?;
        let mut allocatable = shape(&itype, &group.reserve);
        let mut labels = Labels::from([
            ("kubernetes.io/os".to_string(), "linux".to_string()),
            ("kubernetes.io/arch".to_string(), itype.arch.to_string()),
            (INSTANCE_TYPE.to_string(), itype.name.clone()),
            (BETA_INSTANCE_TYPE.to_string(), itype.name.clone()),
        ]);
        let mut taints = Vec::new();
        for (k, v) in &group.tags {
            if let Some(label) = k.strip_prefix(TAG_LABEL) {
                labels.insert(label.to_string(), v.clone());
            } else if let Some(key) = k.strip_prefix(TAG_TAINT) {
                taints.push(
                    Taint::parse(key, v).map_err(|e| {
                        Error::Capacity(format!("group {}: tag {k}: {e}", group.name))
                    })?,
                );
            } else if let Some(resource) = k.strip_prefix(TAG_RESOURCES) {
                allocatable
                    .set(resource, v)
                    .map_err(|e| Error::Capacity(format!("group {}: tag {k}: {e}", group.name)))?;
            }
        }
        Ok(NodeTemplate {
            group: group.name.clone(),
            instance_type: itype.name.clone(),
            allocatable,
            labels,
            taints,
            zones: group.zones.clone(),
            daemon_pods: Vec::new(),
            source: format!("ASG tags, {}", itype.name),
        })
    }

    /// Adds the pods of the DaemonSets that would run on a node of this template.
    pub fn add_daemonsets(&mut self, daemonsets: &[DaemonSetSpec]) {
        let probe = self.node("template", self.zones.first().map_or("", String::as_str));
        for ds in daemonsets {
            if ds.should_run_on(&probe) {
                self.daemon_pods.push(ds.pod.clone());
            }
        }
    }

    /// A node of this template named `name` in `zone`.
    pub fn node(&self, name: &str, zone: &str) -> NodeInfo {
        let mut labels = self.labels.clone();
        labels.insert(HOSTNAME.into(), name.to_string());
        if !zone.is_empty() {
            labels.insert(ZONE.into(), zone.to_string());
            labels.insert(REGION.into(), region_of(zone));
        }
        NodeInfo {
            name: name.to_string(),
            labels,
            taints: self.taints.clone(),
            allocatable: self.allocatable.clone(),
            unschedulable: false,
            ready: true,
            zone: (!zone.is_empty()).then(|| zone.to_string()),
            instance_id: None,
            control_plane: false,
            scale_down_disabled: false,
            template_of: Some(self.group.clone()),
        }
    }

    /// What is left for other pods on a fresh node (allocatable minus DaemonSet pods).
    pub fn free(&self) -> Resources {
        let mut free = self.allocatable.clone();
        for p in &self.daemon_pods {
            free.sub(&p.requests);
        }
        free
    }
}

/// Allocatable of a fresh instance of `t` after `reserve`.
fn shape(t: &instance_types::InstanceType, reserve: &Reserve) -> Resources {
    let mib = t.memory_mib - t.memory_mib * reserve.memory_per_mille / 1000 - reserve.memory_mib;
    Resources {
        milli_cpu: t.vcpu * 1000 - reserve.milli_cpu,
        memory: mib.max(0) << 20,
        ephemeral_storage: (reserve.root_volume_gib << 30) / 10 * 9,
        pods: reserve.pods,
        scalar: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn daemonset(v: serde_json::Value) -> DaemonSetSpec {
        let mut ds = json!({"metadata": {"name": "agent", "namespace": "kube-system", "uid": "u"},
            "spec": {"selector": {"matchLabels": {"app": "agent"}},
                     "template": {"metadata": {"labels": {"app": "agent"}},
                                  "spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": "200m", "memory": "64Mi"}}}]}}}});
        if let Some(spec) = v.get("spec") {
            for (k, val) in spec.as_object().unwrap() {
                ds["spec"]["template"]["spec"][k] = val.clone();
            }
        }
        DaemonSetSpec::from_daemonset(&serde_json::from_value(ds).unwrap(), &Catalog::default())
            .unwrap()
    }

    #[test]
    fn nodes_are_read_from_the_api_object() {
        let n: core::Node = serde_json::from_value(json!({
            "metadata": {"name": "ip-10-0-1-5", "labels": {ZONE: "us-east-1b", "node-role.kubernetes.io/control-plane": "true"},
                         "annotations": {SCALE_DOWN_DISABLED: "true"}},
            "spec": {"providerID": "aws:///us-east-1b/i-0abc", "unschedulable": true,
                     "taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]},
            "status": {"allocatable": {"cpu": "1930m", "memory": "3Gi", "pods": "110", "nvidia.com/gpu": "1"},
                       "conditions": [{"type": "Ready", "status": "True"}]}
        })).unwrap();
        let info = NodeInfo::from_node(&n).unwrap();
        assert_eq!(info.instance_id.as_deref(), Some("i-0abc"));
        assert_eq!(info.zone.as_deref(), Some("us-east-1b"));
        assert!(info.ready && info.unschedulable && info.control_plane && info.scale_down_disabled);
        assert_eq!(info.allocatable.milli_cpu, 1930);
        assert_eq!(info.allocatable.get("nvidia.com/gpu"), 1);
        assert_eq!(info.taints[0].value, "gpu");
    }

    // cluster-autoscaler FAQ, "How can I scale a node group to 0?": labels, taints and
    // resources of a group at zero come from k8s.io/cluster-autoscaler/node-template/* tags.
    #[test]
    fn a_group_at_zero_is_built_from_its_tags_and_instance_type() {
        let mut g = GroupSpec::new("gpu", "m5.xlarge", &["us-east-1a"], 0, 3, 0);
        g.tags.insert(format!("{TAG_LABEL}pool"), "gpu".into());
        g.tags.insert(
            format!("{TAG_TAINT}nvidia.com/gpu"),
            "true:NoSchedule".into(),
        );
        g.tags
            .insert(format!("{TAG_RESOURCES}nvidia.com/gpu"), "1".into());
        g.tags.insert("Name".into(), "ignored".into());
        let t = NodeTemplate::for_group(&g, &[], &[]).unwrap();
        assert_eq!(t.labels.get("pool").map(String::as_str), Some("gpu"));
        assert_eq!(
            t.taints,
            vec![Taint::parse("nvidia.com/gpu", "true:NoSchedule").unwrap()]
        );
        assert_eq!(t.allocatable.get("nvidia.com/gpu"), 1);
        assert_eq!(t.allocatable.milli_cpu, 4000);
        // 16 GiB nominal, 6% and 100 MiB held back.
        assert_eq!(t.allocatable.memory, (16384 - 983 - 100) << 20);
        let n = t.node("new-1", "us-east-1a");
        assert_eq!(n.labels.get(ZONE).map(String::as_str), Some("us-east-1a"));
        assert_eq!(n.labels.get(REGION).map(String::as_str), Some("us-east-1"));
        assert_eq!(n.labels.get(HOSTNAME).map(String::as_str), Some("new-1"));

        g.tags.insert(format!("{TAG_TAINT}bad"), "novalue".into());
        assert!(NodeTemplate::for_group(&g, &[], &[]).is_err());
        let unknown = GroupSpec::new("x", "p5.48xlarge", &["us-east-1a"], 0, 3, 0);
        let e = NodeTemplate::for_group(&unknown, &[], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("p5.48xlarge") && e.contains("not in SmartScale's table"),
            "{e}"
        );
    }

    #[test]
    fn a_ready_node_is_the_template_without_its_identity() {
        let g = GroupSpec::new(
            "general",
            "t3.medium",
            &["us-east-1a", "us-east-1b"],
            1,
            5,
            1,
        );
        let mut node = NodeInfo::simple("ip-1", 1930, 3 << 30, "us-east-1a");
        node.labels.insert(INSTANCE_TYPE.into(), "t3.medium".into());
        node.labels.insert("pool".into(), "general".into());
        node.taints
            .push(Taint::parse("node.kubernetes.io/unschedulable", ":NoSchedule").unwrap());
        node.taints
            .push(Taint::parse("team", "a:NoSchedule").unwrap());
        let t = NodeTemplate::for_group(&g, &[(&node, vec![])], &[]).unwrap();
        assert_eq!(t.allocatable.milli_cpu, 1930, "the real node's allocatable");
        assert!(!t.labels.contains_key(HOSTNAME) && !t.labels.contains_key(ZONE));
        assert_eq!(t.taints.len(), 1, "cordon taint dropped, team taint kept");
        assert_eq!(t.zones.len(), 2);
    }

    #[test]
    fn a_mixed_group_packs_with_its_smallest_type() {
        let mut g = GroupSpec::new("mixed", "m5.2xlarge", &["us-east-1a"], 0, 5, 0);
        g.instance_types.push("m5.large".into());
        g.instance_types.push("c5.xlarge".into());
        let t = NodeTemplate::for_group(&g, &[], &[]).unwrap();
        assert_eq!(t.instance_type, "m5.large");
        let mut big = NodeInfo::simple("ip-2", 8000, 31 << 30, "us-east-1a");
        big.labels.insert(INSTANCE_TYPE.into(), "m5.2xlarge".into());
        let t = NodeTemplate::for_group(&g, &[(&big, vec![])], &[]).unwrap();
        assert_eq!(
            (t.instance_type.as_str(), t.allocatable.milli_cpu),
            ("m5.large", 2000)
        );
    }

    // https://kubernetes.io/docs/concepts/workloads/controllers/daemonset/#how-daemon-pods-are-scheduled:
    // the DaemonSet controller runs a pod on every node matching its node selector/affinity
    // whose NoSchedule/NoExecute taints it tolerates, adding tolerations for the node
    // condition taints (unschedulable, not-ready, ...).
    #[test]
    fn daemonsets_that_would_run_are_subtracted() {
        let g = GroupSpec::new("general", "t3.medium", &["us-east-1a"], 0, 5, 0);
        let everywhere = daemonset(json!({}));
        let linux_only =
            daemonset(json!({"spec": {"nodeSelector": {"kubernetes.io/os": "linux"}}}));
        let gpu_only = daemonset(json!({"spec": {"nodeSelector": {"pool": "gpu"}}}));
        let t =
            NodeTemplate::for_group(&g, &[], &[everywhere.clone(), linux_only, gpu_only]).unwrap();
        assert_eq!(t.daemon_pods.len(), 2);
        assert_eq!(t.free().milli_cpu, 2000 - 400);

        let mut tainted = g.clone();
        tainted
            .tags
            .insert(format!("{TAG_TAINT}dedicated"), "db:NoSchedule".into());
        let t = NodeTemplate::for_group(&tainted, &[], std::slice::from_ref(&everywhere)).unwrap();
        assert!(
            t.daemon_pods.is_empty(),
            "an untolerated taint keeps the DaemonSet off"
        );
        let mut cordoned = t.node("n", "us-east-1a");
        cordoned.taints =
            vec![Taint::parse("node.kubernetes.io/unschedulable", ":NoSchedule").unwrap()];
        assert!(
            everywhere.should_run_on(&cordoned),
            "the controller adds that toleration"
        );
    }
}
