//! A whole small cluster for end-to-end tests: the AWS model with a worker Auto Scaling group
//! (and its lifecycle hooks) and a state table; the real Kubernetes control plane with a K3s
//! server node (tainted `CriticalAddonsOnly`, running CoreDNS) and the controller's
//! ServiceAccount and RBAC applied from `userdata/manifests/smartscale.yaml`, exactly as shipped;
//! and an "instance sync" that plays what boots on each instance: a launched instance joins
//! through the K3s server (its simulated kubelet registers the Node with its own client
//! certificate), then the launch hook is completed once the Node is Ready, as the agent does.
//! When an instance stops running, its kubelet goes silent. Nothing deletes Node objects (K3s's
//! cloud provider never does): the real node lifecycle controller marks them NotReady.

use crate::aws::{AwsModel, ModelInstanceDetails};
use crate::kubernetes::{
    ControlPlane, ControlPlaneOptions, Credential, JoinRefused, JoinRequest, K3sOptions, K3sServer,
    manifests,
};
use crate::process::poll_until;
use crate::{Error, Result};
use aws_sdk_autoscaling::types::{LaunchTemplateSpecification, LifecycleHookSpecification};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const LAUNCH_HOOK: &str = "smartscale-launch";
pub const TERMINATE_HOOK: &str = "smartscale-terminate";
/// The K3s server's node (not in the ASG).
pub const SERVER_NODE: &str = "server";
/// The token workers join with in the world.
pub const AGENT_TOKEN: &str = "K10world::node:agent-token";
/// The controller's ServiceAccount, from the shipped manifests.
pub const CONTROLLER_SERVICE_ACCOUNT: &str = "smartscale-controller";
const CONTROLLER_TOKEN_SECRET: &str = "smartscale-controller-token";

/// The manifests the K3s server applies (the controller's identity and RBAC among them).
pub fn shipped_manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("userdata/manifests/smartscale.yaml")
}

/// What the world looks like at the start.
#[derive(Debug, Clone)]
pub struct WorldOptions {
    pub workers: u32,
    pub min: u32,
    pub max: u32,
    pub launch_hook: bool,
    pub terminate_hook: bool,
    pub heartbeat_timeout_s: i32,
    /// Allocatable of each worker node (Kubernetes quantities).
    pub cpu: &'static str,
    pub memory: &'static str,
    /// Join launched instances as nodes (what the agent would do at boot).
    pub auto_join: bool,
    /// Time from a pod being bound to it being Running.
    pub pod_start_delay: Duration,
    /// kube-controller-manager's node monitor grace period (NotReady after a silent kubelet).
    pub node_monitor_grace_period: Duration,
    /// Answer terminate hooks at once with CONTINUE, as an agent whose drain finished would
    /// (otherwise instances wait in `Terminating:Wait` until the hook times out).
    pub complete_terminations: bool,
}

impl Default for WorldOptions {
    fn default() -> Self {
        WorldOptions {
            workers: 2,
            min: 1,
            max: 10,
            launch_hook: true,
            terminate_hook: true,
            heartbeat_timeout_s: 300,
            cpu: "2",
            memory: "4Gi",
            auto_join: true,
            pod_start_delay: Duration::from_millis(100),
            node_monitor_grace_period: Duration::from_secs(50),
            complete_terminations: false,
        }
    }
}

pub struct World {
    pub aws: AwsModel,
    pub plane: ControlPlane,
    pub k3s: K3sServer,
    pub region: String,
    pub asg_name: String,
    pub table: String,
    pub dir: tempfile::TempDir,
    /// An admin client (`system:masters`), for the test's own reads and writes.
    pub kube: kube::Client,
    pub autoscaling: aws_sdk_autoscaling::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    sync: Option<tokio::task::JoinHandle<()>>,
    extra_syncs: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(t) = self.sync.take() {
            t.abort();
        }
        for t in lock(&self.extra_syncs).drain(..) {
            t.abort();
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Real Prometheus with ten minutes of history at `cpu` % busy and `mem` % memory used on
/// `nodes` synthetic nodes, then live scraping of the same series.
pub async fn prometheus_at(
    cpu: f64,
    mem: f64,
    nodes: usize,
) -> Result<crate::prometheus::Prometheus> {
    use crate::prometheus::{ClusterMetrics, Prometheus, SyntheticNode};
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    let nodes = (0..nodes)
        .map(|i| {
            SyntheticNode::new(format!("node-{i}"), 2, cpu)
                .with_memory(4.0 * GIB, 4.0 * GIB * (1.0 - mem / 100.0))
        })
        .collect();
    Prometheus::start_scraping_with_history(
        ClusterMetrics::new(nodes, vec![]),
        Duration::from_secs(600),
    )
    .await
}

fn sdk_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{what}: {e}"))
}

/// A kube client for a kubeconfig file.
pub async fn kube_client(kubeconfig: &Path) -> Result<kube::Client> {
    crate::kubernetes::client_for(kubeconfig).await
}

/// The node name of an instance: its private DNS name (what the agent passes as k3s's
/// `node-name`, from IMDS `local-hostname`), so an instance that re-uses a private IP re-uses
/// the name too.
pub fn node_name(instance: &ModelInstanceDetails) -> String {
    instance.private_dns_name.clone().unwrap_or_else(|| {
        crate::imds::local_hostname(&crate::imds::ImdsInstance::from_model(&instance.instance))
    })
}

impl World {
    pub async fn start(opts: WorldOptions) -> Result<World> {
        let dir = tempfile::Builder::new()
            .prefix("smartscale-world-")
            .tempdir()
            .map_err(|e| Error::io("creating the world's directory", e))?;
        // The AWS model and the control plane start side by side; pods wait until the
        // controller manager has created the default ServiceAccount (below, after the set-up).
        let (aws, plane) = tokio::join!(
            AwsModel::start(),
            ControlPlane::start(ControlPlaneOptions {
                node_monitor_grace_period: opts.node_monitor_grace_period,
                dir: Some(dir.path().join("kubernetes")),
                wait_for_pods: false,
                ..ControlPlaneOptions::default()
            })
        );
        let (aws, plane) = (aws?, plane?);
        let k3s = K3sServer::start(
            &plane,
            K3sOptions {
                tokens: vec![AGENT_TOKEN.into()],
                pod_start_delay: opts.pod_start_delay,
                ..K3sOptions::default()
            },
        )?;
        let kube = plane.admin().clone();
        let region = "us-east-1".to_string();
        let sdk = aws.sdk_config(&region);
        let autoscaling = aws_sdk_autoscaling::Client::new(&sdk);
        let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
        let mut world = World {
            aws,
            plane,
            k3s,
            region,
            asg_name: "smartscale-workers".into(),
            table: "smartscale-state".into(),
            dir,
            kube,
            autoscaling,
            dynamodb,
            sync: None,
            extra_syncs: std::sync::Mutex::new(Vec::new()),
        };
        let controller_kubeconfig = world.kubeconfig();
        world.setup().create(&opts, &controller_kubeconfig).await?;
        world.plane.wait_for_pods().await?;
        if opts.auto_join {
            world.sync = Some(spawn_instance_sync(InstanceSync {
                model: world.aws.client().clone(),
                k3s: world.k3s.clone(),
                kube: world.kube.clone(),
                autoscaling: world.autoscaling.clone(),
                asg: world.asg_name.clone(),
                cpu: opts.cpu,
                memory: opts.memory,
                complete_terminations: opts.complete_terminations,
            }));
            let want = opts.workers as usize;
            world
                .wait_nodes(
                    "the initial workers to be Ready",
                    Duration::from_secs(30),
                    |n| n == want,
                )
                .await?;
        }
        Ok(world)
    }

    fn setup(&self) -> Setup<'_> {
        Setup {
            model: self.aws.client(),
            autoscaling: &self.autoscaling,
            dynamodb: &self.dynamodb,
            kube: &self.kube,
            plane: &self.plane,
            k3s: &self.k3s,
            region: &self.region,
            asg_name: &self.asg_name,
            table: &self.table,
        }
    }

    /// The controller's kubeconfig: its ServiceAccount's token (the shipped RBAC decides what it
    /// may do), TLS with the cluster CA.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("controller.kubeconfig")
    }

    /// The admin kubeconfig (for kubectl as an operator).
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.plane.admin_kubeconfig()
    }

    /// Environment for a product process (controller or agent) to reach this world.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.aws.endpoint().to_string()),
            ("AWS_REGION".into(), self.region.clone()),
            ("AWS_ACCESS_KEY_ID".into(), crate::aws::ACCESS_KEY_ID.into()),
            (
                "AWS_SECRET_ACCESS_KEY".into(),
                crate::aws::SECRET_ACCESS_KEY.into(),
            ),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
            ("KUBECONFIG".into(), self.kubeconfig().display().to_string()),
        ]
    }

    /// Writes a controller config for this world; `extra` is YAML appended at the top level.
    pub fn controller_config(&self, prometheus_url: &str, extra: &str) -> Result<PathBuf> {
        let path = self
            .dir
            .path()
            .join(format!("controller-{}.yaml", rand::random::<u32>()));
        let text =
            controller_config_text("e2e", &self.table, &self.asg_name, prometheus_url, extra);
        std::fs::write(&path, text).map_err(|e| Error::io("writing the controller config", e))?;
        Ok(path)
    }

    /// Joins the node of `instance` (for worlds without `auto_join`), as its agent's join would:
    /// through the K3s server, with the agent's labels and providerID. The launch hook is left to
    /// the caller.
    pub async fn register_node(&self, instance: &str) -> Result<()> {
        let i = self
            .aws
            .instance_details(instance)
            .await?
            .ok_or_else(|| Error::Invalid(format!("no instance {instance} in the model")))?;
        join_instance(&self.k3s, &i, "2", "4Gi")
            .await
            .map_err(|e| Error::Invalid(format!("joining {instance}: {e}")))?;
        let name = node_name(&i);
        poll_until(
            &format!("node {name} Ready"),
            Duration::from_secs(10),
            || async {
                let n = Api::<Node>::all(self.kube.clone())
                    .get_opt(&name)
                    .await
                    .map_err(|e| sdk_err("reading a node", e))?;
                Ok(n.filter(is_ready).map(|_| ()))
            },
        )
        .await
    }

    /// Runs `smartscale-controller --config cfg once ARGS` against this world and returns its
    /// decision JSON; an error with the controller's stderr if it failed.
    pub async fn controller_once(&self, cfg: &Path, args: &[&str]) -> Result<serde_json::Value> {
        let out = product_command(self, "smartscale-controller")?
            .arg("--config")
            .arg(cfg)
            .arg("once")
            .args(args)
            .output()
            .await
            .map_err(|e| Error::io("running smartscale-controller once", e))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(Error::Invalid(format!(
                "once failed ({}): {stderr}",
                out.status
            )));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| {
            Error::Invalid(format!(
                "once printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            ))
        })
    }

    /// A second worker group beside the world's own (same launch template), without lifecycle
    /// hooks unless asked; its instances join like the world's when `auto_join` is on.
    pub async fn create_group(
        &self,
        name: &str,
        desired: u32,
        max: u32,
        hooks: bool,
    ) -> Result<()> {
        let mut req = self
            .autoscaling
            .create_auto_scaling_group()
            .auto_scaling_group_name(name)
            .launch_template(
                LaunchTemplateSpecification::builder()
                    .launch_template_name("workers")
                    .build(),
            )
            .min_size(0)
            .max_size(max as i32)
            .desired_capacity(desired as i32)
            .availability_zones(format!("{}a", self.region))
            .availability_zones(format!("{}b", self.region));
        if hooks {
            for (hook, transition, default) in [
                (LAUNCH_HOOK, "autoscaling:EC2_INSTANCE_LAUNCHING", "ABANDON"),
                (
                    TERMINATE_HOOK,
                    "autoscaling:EC2_INSTANCE_TERMINATING",
                    "CONTINUE",
                ),
            ] {
                req = req.lifecycle_hook_specification_list(
                    LifecycleHookSpecification::builder()
                        .lifecycle_hook_name(hook)
                        .lifecycle_transition(transition)
                        .heartbeat_timeout(300)
                        .default_result(default)
                        .build(),
                );
            }
        }
        req.send().await.map_err(|e| {
            sdk_err(
                "CreateAutoScalingGroup",
                aws_sdk_autoscaling::error::DisplayErrorContext(e),
            )
        })?;
        self.follow_group(name);
        Ok(())
    }

    /// Joins the instances of group `name` as nodes too, as the world's own group's are (with
    /// `auto_join`; a group the test created itself, a mixed-instances one, say).
    pub fn follow_group(&self, name: &str) {
        if self.sync.is_some() {
            let handle = spawn_instance_sync(InstanceSync {
                model: self.aws.client().clone(),
                k3s: self.k3s.clone(),
                kube: self.kube.clone(),
                autoscaling: self.autoscaling.clone(),
                asg: name.to_string(),
                cpu: "2",
                memory: "4Gi",
                complete_terminations: false,
            });
            lock(&self.extra_syncs).push(handle);
        }
    }

    /// (desired capacity, instances) of any group of the world.
    pub async fn group_named(&self, name: &str) -> Result<(u32, Vec<(String, String)>)> {
        let out = self
            .autoscaling
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(name)
            .send()
            .await
            .map_err(|e| {
                sdk_err(
                    "DescribeAutoScalingGroups",
                    aws_sdk_autoscaling::error::DisplayErrorContext(e),
                )
            })?;
        let g = out
            .auto_scaling_groups()
            .first()
            .ok_or_else(|| Error::Invalid(format!("no group {name}")))?;
        Ok((
            g.desired_capacity().unwrap_or(0) as u32,
            g.instances()
                .iter()
                .map(|i| {
                    (
                        i.instance_id().unwrap_or_default().to_string(),
                        i.lifecycle_state()
                            .map(|s| s.as_str().to_string())
                            .unwrap_or_default(),
                    )
                })
                .collect(),
        ))
    }

    /// Answers the terminate hook of `instance` with CONTINUE, as its agent does after the drain.
    pub async fn complete_termination(&self, instance: &str) -> Result<()> {
        self.autoscaling
            .complete_lifecycle_action()
            .auto_scaling_group_name(&self.asg_name)
            .lifecycle_hook_name(TERMINATE_HOOK)
            .instance_id(instance)
            .lifecycle_action_result("CONTINUE")
            .send()
            .await
            .map_err(|e| {
                sdk_err(
                    "CompleteLifecycleAction",
                    aws_sdk_autoscaling::error::DisplayErrorContext(e),
                )
            })?;
        Ok(())
    }

    /// The instance id behind a node (from its providerID `aws:///<zone>/<id>`).
    pub async fn instance_of(&self, node: &str) -> Result<String> {
        let n = Api::<Node>::all(self.kube.clone())
            .get(node)
            .await
            .map_err(|e| sdk_err(&format!("reading node {node}"), e))?;
        n.spec
            .and_then(|s| s.provider_id)
            .and_then(|p| p.rsplit('/').next().map(str::to_string))
            .filter(|id| id.starts_with("i-"))
            .ok_or_else(|| Error::Invalid(format!("node {node} has no AWS providerID")))
    }

    /// Every `history#…` record the controller wrote for cluster `cluster_id`, oldest first.
    pub async fn history(
        &self,
        cluster_id: &str,
    ) -> Result<Vec<std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>>>
    {
        use aws_sdk_dynamodb::types::AttributeValue;
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .dynamodb
                .query()
                .table_name(&self.table)
                .key_condition_expression("cluster_id = :c AND begins_with(#r, :p)")
                .expression_attribute_names("#r", "record")
                .expression_attribute_values(":c", AttributeValue::S(cluster_id.into()))
                .expression_attribute_values(":p", AttributeValue::S("history#".into()))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| {
                    sdk_err(
                        "Query history",
                        aws_sdk_dynamodb::error::DisplayErrorContext(e),
                    )
                })?;
            items.extend(out.items().iter().cloned());
            match out.last_evaluated_key() {
                Some(k) => start = Some(k.clone()),
                None => return Ok(items),
            }
        }
    }

    /// Worker nodes (not the K3s server) that are Ready.
    pub async fn ready_workers(&self) -> Result<Vec<Node>> {
        let nodes: Api<Node> = Api::all(self.kube.clone());
        let list = nodes
            .list(&Default::default())
            .await
            .map_err(|e| sdk_err("listing nodes", e))?;
        Ok(list
            .items
            .into_iter()
            .filter(|n| n.metadata.name.as_deref() != Some(SERVER_NODE))
            .filter(is_ready)
            .collect())
    }

    pub async fn wait_nodes(
        &self,
        what: &str,
        timeout: Duration,
        ok: impl Fn(usize) -> bool,
    ) -> Result<usize> {
        poll_until(what, timeout, || async {
            let n = self.ready_workers().await?.len();
            Ok(ok(n).then_some(n))
        })
        .await
    }

    /// (desired capacity, [(instance id, lifecycle state)]) of the worker group.
    pub async fn group(&self) -> Result<(u32, Vec<(String, String)>)> {
        let out = self
            .autoscaling
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(&self.asg_name)
            .send()
            .await
            .map_err(|e| {
                sdk_err(
                    "DescribeAutoScalingGroups",
                    aws_sdk_autoscaling::error::DisplayErrorContext(e),
                )
            })?;
        let g = out
            .auto_scaling_groups()
            .first()
            .ok_or_else(|| Error::Invalid("the worker group is gone".into()))?;
        Ok((
            g.desired_capacity().unwrap_or(0) as u32,
            g.instances()
                .iter()
                .map(|i| {
                    (
                        i.instance_id().unwrap_or_default().to_string(),
                        i.lifecycle_state()
                            .map(|s| s.as_str().to_string())
                            .unwrap_or_default(),
                    )
                })
                .collect(),
        ))
    }

    /// The group's scaling activities (one per launch or termination).
    pub async fn activities(&self) -> Result<Vec<String>> {
        let out = self
            .autoscaling
            .describe_scaling_activities()
            .auto_scaling_group_name(&self.asg_name)
            .send()
            .await
            .map_err(|e| {
                sdk_err(
                    "DescribeScalingActivities",
                    aws_sdk_autoscaling::error::DisplayErrorContext(e),
                )
            })?;
        Ok(out
            .activities()
            .iter()
            .map(|a| a.description().unwrap_or_default().to_string())
            .collect())
    }

    /// Creates a bare pod in `default` requesting `cpu` and `memory`, optionally bound to a node
    /// (as a DaemonSet or a user with `nodeName` would). The real scheduler places it otherwise.
    pub async fn create_pod(
        &self,
        name: &str,
        cpu: &str,
        memory: &str,
        node: Option<&str>,
        annotations: serde_json::Value,
    ) -> Result<()> {
        let mut spec = json!({
            "containers": [{"name": "app", "image": "nginx", "resources": {"requests": {"cpu": cpu, "memory": memory}}}],
            "terminationGracePeriodSeconds": 0
        });
        if let Some(n) = node {
            spec["nodeName"] = json!(n);
        }
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}, "annotations": annotations},
            "spec": spec
        }))
        .map_err(|e| sdk_err("pod JSON", e))?;
        Api::<Pod>::namespaced(self.kube.clone(), "default")
            .create(&PostParams::default(), &pod)
            .await
            .map_err(|e| sdk_err(&format!("creating pod {name}"), e))?;
        Ok(())
    }

    /// A replicated pod on `node`: a pod bound there (labels `app=<name>`), then a one-replica
    /// ReplicaSet that adopts it (the real ReplicaSet controller adopts orphans its selector
    /// matches). Waits for the adoption: then the pod is one a drain may move (a controller
    /// recreates it wherever the scheduler likes), unlike a bare pod, which nothing recreates.
    pub async fn create_replica(
        &self,
        name: &str,
        cpu: &str,
        memory: &str,
        node: &str,
    ) -> Result<()> {
        let spec = json!({
            "containers": [{"name": "app", "image": "nginx", "resources": {"requests": {"cpu": cpu, "memory": memory}}}],
            "terminationGracePeriodSeconds": 0
        });
        let mut bound = spec.clone();
        bound["nodeName"] = json!(node);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
            "spec": bound
        }))
        .map_err(|e| sdk_err("pod JSON", e))?;
        let pods = Api::<Pod>::namespaced(self.kube.clone(), "default");
        pods.create(&PostParams::default(), &pod)
            .await
            .map_err(|e| sdk_err(&format!("creating pod {name}"), e))?;
        let rs: ReplicaSet = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": spec}}
        }))
        .map_err(|e| sdk_err("replicaset JSON", e))?;
        Api::<ReplicaSet>::namespaced(self.kube.clone(), "default")
            .create(&PostParams::default(), &rs)
            .await
            .map_err(|e| sdk_err(&format!("creating replicaset {name}"), e))?;
        poll_until(
            &format!("pod {name} adopted by its ReplicaSet"),
            Duration::from_secs(30),
            || async {
                let p = pods
                    .get(name)
                    .await
                    .map_err(|e| sdk_err("reading pod", e))?;
                Ok(p.metadata
                    .owner_references
                    .is_some_and(|o| o.iter().any(|r| r.kind == "ReplicaSet"))
                    .then_some(()))
            },
        )
        .await
    }

    /// Creates a Deployment in `default` whose pods request `cpu`/`memory`; the real ReplicaSet
    /// controller creates its pods and the real scheduler places them (on `node` only, by a
    /// hostname nodeSelector, if given).
    pub async fn create_deployment(
        &self,
        name: &str,
        replicas: i32,
        cpu: &str,
        memory: &str,
        node: Option<&str>,
    ) -> Result<()> {
        let mut d = json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {
                        "terminationGracePeriodSeconds": 1,
                        "containers": [{"name": "app", "image": "nginx",
                            "resources": {"requests": {"cpu": cpu, "memory": memory}}}]
                    }
                }
            }
        });
        if let Some(node) = node {
            d["spec"]["template"]["spec"]["nodeSelector"] = json!({"kubernetes.io/hostname": node});
        }
        let d: Deployment = serde_json::from_value(d).map_err(|e| sdk_err("deployment JSON", e))?;
        Api::<Deployment>::namespaced(self.kube.clone(), "default")
            .create(&PostParams::default(), &d)
            .await
            .map_err(|e| sdk_err(&format!("creating deployment {name}"), e))?;
        Ok(())
    }

    /// Pods that the scheduler could not place.
    pub async fn unschedulable_pods(&self) -> Result<usize> {
        let list = Api::<Pod>::all(self.kube.clone())
            .list(&Default::default())
            .await
            .map_err(|e| sdk_err("listing pods", e))?;
        Ok(list
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none())
            .count())
    }
}

pub fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Creates a small cluster in a running AWS model and control plane: the state table, the K3s
/// server node with CoreDNS, the shipped manifests (the controller's ServiceAccount and RBAC),
/// the controller's kubeconfig, and the worker group with its lifecycle hooks. `World` uses it,
/// and so does `smartscale-testworld up`.
pub struct Setup<'a> {
    pub model: &'a crate::aws::ModelClient,
    pub autoscaling: &'a aws_sdk_autoscaling::Client,
    pub dynamodb: &'a aws_sdk_dynamodb::Client,
    pub kube: &'a kube::Client,
    pub plane: &'a ControlPlane,
    pub k3s: &'a K3sServer,
    pub region: &'a str,
    pub asg_name: &'a str,
    pub table: &'a str,
}

impl Setup<'_> {
    pub async fn create(&self, opts: &WorldOptions, controller_kubeconfig: &Path) -> Result<()> {
        self.create_table().await?;
        self.create_server_node().await?;
        self.apply_manifests(controller_kubeconfig).await?;
        self.create_group(opts).await
    }

    async fn create_table(&self) -> Result<()> {
        let attr = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
        };
        let key = |name: &str, t: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(t)
                .build()
        };
        self.dynamodb
            .create_table()
            .table_name(self.table)
            .attribute_definitions(attr("cluster_id").map_err(|e| sdk_err("attr", e))?)
            .attribute_definitions(attr("record").map_err(|e| sdk_err("attr", e))?)
            .key_schema(key("cluster_id", KeyType::Hash).map_err(|e| sdk_err("key", e))?)
            .key_schema(key("record", KeyType::Range).map_err(|e| sdk_err("key", e))?)
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await
            .map_err(|e| {
                sdk_err(
                    "CreateTable",
                    aws_sdk_dynamodb::error::DisplayErrorContext(e),
                )
            })?;
        // As the stack creates it (pulumi/src/state.ts): history expires by TTL on `expires_at`,
        // and the model deletes expired items as DynamoDB does.
        self.dynamodb
            .update_time_to_live()
            .table_name(self.table)
            .time_to_live_specification(
                aws_sdk_dynamodb::types::TimeToLiveSpecification::builder()
                    .attribute_name("expires_at")
                    .enabled(true)
                    .build()
                    .map_err(|e| sdk_err("TTL", e))?,
            )
            .send()
            .await
            .map_err(|e| {
                sdk_err(
                    "UpdateTimeToLive",
                    aws_sdk_dynamodb::error::DisplayErrorContext(e),
                )
            })?;
        Ok(())
    }

    /// The K3s server as a node: `CriticalAddonsOnly=true:NoExecute` (userdata/server.sh.tpl),
    /// the control-plane role labels K3s puts on servers, providerID `k3s://server` (from K3s's
    /// cloud controller: the server's kubelet gets no AWS providerID), and CoreDNS on it.
    async fn create_server_node(&self) -> Result<()> {
        let mut join = JoinRequest {
            token: AGENT_TOKEN.into(),
            node_name: SERVER_NODE.into(),
            node_password: "server".into(),
            provider_id: None,
            labels: BTreeMap::new(),
            taints: vec!["CriticalAddonsOnly=true:NoExecute".into()],
            internal_ip: Some("10.0.0.10".into()),
            cpu: Some("2".into()),
            memory: Some("4Gi".into()),
        };
        join.labels.insert(
            "topology.kubernetes.io/zone".into(),
            format!("{}a", self.region),
        );
        self.k3s
            .join(join)
            .await
            .map_err(|e| Error::Invalid(format!("joining the server node: {e}")))?;
        // Role labels: a kubelet may not set node-role.kubernetes.io (NodeRestriction); K3s sets
        // them as the server.
        let nodes: Api<Node> = Api::all(self.kube.clone());
        let labels = json!({"metadata": {"labels": {
            "node-role.kubernetes.io/control-plane": "true",
            "node-role.kubernetes.io/master": "true",
        }}});
        nodes
            .patch(SERVER_NODE, &PatchParams::default(), &Patch::Merge(&labels))
            .await
            .map_err(|e| sdk_err("labelling the server node", e))?;
        // CoreDNS as K3s ships it, in short: tolerates CriticalAddonsOnly and the control plane.
        let dns: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "coredns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"k8s-app": "kube-dns"}},
                "template": {
                    "metadata": {"labels": {"k8s-app": "kube-dns"}},
                    "spec": {
                        "priorityClassName": "system-cluster-critical",
                        "nodeSelector": {"node-role.kubernetes.io/control-plane": "true"},
                        "tolerations": [
                            {"key": "CriticalAddonsOnly", "operator": "Exists"},
                            {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}
                        ],
                        "containers": [{"name": "coredns", "image": "rancher/mirrored-coredns-coredns:1.12.3",
                            "resources": {"requests": {"cpu": "100m", "memory": "70Mi"}}}]
                    }
                }
            }
        }))
        .map_err(|e| sdk_err("coredns JSON", e))?;
        Api::<Deployment>::namespaced(self.kube.clone(), "kube-system")
            .create(&PostParams::default(), &dns)
            .await
            .map_err(|e| sdk_err("creating coredns", e))?;
        Ok(())
    }

    /// Applies `userdata/manifests/smartscale.yaml` and writes the controller's kubeconfig from
    /// its ServiceAccount token Secret, as the server's UserData does.
    async fn apply_manifests(&self, controller_kubeconfig: &Path) -> Result<()> {
        let path = shipped_manifests();
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let applied = manifests::apply(self.kube, &text).await?;
        tracing::debug!(?applied, "shipped manifests applied");
        let secrets: Api<Secret> = Api::namespaced(self.kube.clone(), "kube-system");
        let token = poll_until(
            "the controller's ServiceAccount token (the token controller fills the Secret)",
            Duration::from_secs(30),
            || async {
                let secret = secrets
                    .get_opt(CONTROLLER_TOKEN_SECRET)
                    .await
                    .map_err(|e| sdk_err("reading the token Secret", e))?;
                Ok(secret
                    .and_then(|s| s.data)
                    .and_then(|d| d.get("token").cloned())
                    .map(|t| String::from_utf8_lossy(&t.0).into_owned()))
            },
        )
        .await?;
        self.plane
            .kubeconfig(Credential::Token(token))
            .write(controller_kubeconfig)
    }

    async fn create_group(&self, o: &WorldOptions) -> Result<()> {
        let lt = self
            .model
            .create_launch_template(self.region, "workers", "ami-12c6146b", "t3.medium")
            .await?;
        let hook = |name: &str, transition: &str, default: &str| {
            LifecycleHookSpecification::builder()
                .lifecycle_hook_name(name)
                .lifecycle_transition(transition)
                .heartbeat_timeout(o.heartbeat_timeout_s)
                .default_result(default)
                .build()
        };
        let mut req = self
            .autoscaling
            .create_auto_scaling_group()
            .auto_scaling_group_name(self.asg_name)
            .launch_template(
                LaunchTemplateSpecification::builder()
                    .launch_template_id(lt)
                    .build(),
            )
            .min_size(o.min as i32)
            .max_size(o.max as i32)
            .desired_capacity(o.workers as i32)
            .availability_zones(format!("{}a", self.region))
            .availability_zones(format!("{}b", self.region));
        if o.launch_hook {
            req = req.lifecycle_hook_specification_list(hook(
                LAUNCH_HOOK,
                "autoscaling:EC2_INSTANCE_LAUNCHING",
                "ABANDON",
            ));
        }
        if o.terminate_hook {
            req = req.lifecycle_hook_specification_list(hook(
                TERMINATE_HOOK,
                "autoscaling:EC2_INSTANCE_TERMINATING",
                "CONTINUE",
            ));
        }
        req.send().await.map_err(|e| {
            sdk_err(
                "CreateAutoScalingGroup",
                aws_sdk_autoscaling::error::DisplayErrorContext(e),
            )
        })?;
        Ok(())
    }
}

/// A controller config for such a cluster (`extra` is YAML appended at the top level).
pub fn controller_config_text(
    cluster_id: &str,
    table: &str,
    asg_name: &str,
    prometheus_url: &str,
    extra: &str,
) -> String {
    format!(
        "cluster_id: {cluster_id}\ninterval: 1s\nprometheus:\n  url: {prometheus_url}\n  timeout: 500ms\nstate:\n  table: {table}\n  lease_ttl: 3s\nnode_groups:\n  - asg_name: {asg_name}\n    min: 1\n    max: 10\n    hourly_price: 0.0416\n{extra}\n"
    )
}

/// The join an instance's agent makes: the agent's labels (docs/interfaces.md, "Node labels set
/// by the agent"), providerID `aws:///<zone>/<id>`, the node name from the private DNS name.
async fn join_instance(
    k3s: &K3sServer,
    details: &ModelInstanceDetails,
    cpu: &str,
    memory: &str,
) -> std::result::Result<(), JoinRefused> {
    let i = &details.instance;
    let mut labels = BTreeMap::new();
    labels.insert(
        "node.kubernetes.io/instance-type".into(),
        i.instance_type.clone(),
    );
    labels.insert(
        "topology.kubernetes.io/zone".into(),
        i.availability_zone.clone(),
    );
    labels.insert("smartscale.io/capacity-type".into(), i.market.clone());
    if let Some(asg) = &i.asg_name {
        labels.insert("smartscale.io/node-group".into(), asg.clone());
    }
    let imds = crate::imds::ImdsInstance::from_model(i);
    k3s.join(JoinRequest {
        token: AGENT_TOKEN.into(),
        node_name: node_name(details),
        // K3s's node password is random per machine, kept in /etc/rancher/node/password.
        node_password: i.instance_id.clone(),
        provider_id: Some(format!("aws:///{}/{}", i.availability_zone, i.instance_id)),
        labels,
        taints: vec![],
        internal_ip: Some(
            details
                .private_ip
                .clone()
                .unwrap_or_else(|| crate::imds::private_ip(&imds)),
        ),
        cpu: Some(cpu.into()),
        memory: Some(memory.into()),
    })
    .await
    .map(|_| ())
}

/// What [`spawn_instance_sync`] follows and how nodes are sized.
pub struct InstanceSync {
    pub model: crate::aws::ModelClient,
    pub k3s: K3sServer,
    pub kube: kube::Client,
    pub autoscaling: aws_sdk_autoscaling::Client,
    pub asg: String,
    pub cpu: &'static str,
    pub memory: &'static str,
    /// Answer terminate hooks with CONTINUE at once (see [`WorldOptions::complete_terminations`]).
    pub complete_terminations: bool,
}

/// Starts the instance sync: plays what boots on each instance (module comment).
pub fn spawn_instance_sync(sync: InstanceSync) -> tokio::task::JoinHandle<()> {
    tokio::spawn(instance_sync(sync))
}

async fn instance_sync(s: InstanceSync) {
    let nodes: Api<Node> = Api::all(s.kube.clone());
    // Instances whose join was tried (once each, as the agent's join is), and those that died.
    let mut joined: BTreeSet<String> = BTreeSet::new();
    let mut dead: BTreeSet<String> = BTreeSet::new();
    let mut released: BTreeSet<String> = BTreeSet::new();
    loop {
        if let Ok(instances) = s.model.instances_details().await {
            for details in instances
                .iter()
                .filter(|i| i.instance.asg_name.as_deref() == Some(s.asg.as_str()))
            {
                let i = &details.instance;
                let name = node_name(details);
                let running = matches!(i.ec2_state.as_str(), "pending" | "running");
                let booted = matches!(i.lifecycle_state.as_str(), "Pending:Wait" | "InService");
                if running
                    && booted
                    && joined.insert(i.instance_id.clone())
                    && let Err(e) = join_instance(&s.k3s, details, s.cpu, s.memory).await
                {
                    // What the agent does when k3s cannot join: ABANDON the launch.
                    tracing::warn!(instance = %i.instance_id, error = %e, "instance sync: join refused; abandoning the launch");
                    let _ = complete_launch(&s, &i.instance_id, "ABANDON").await;
                }
                if i.lifecycle_state == "Pending:Wait"
                    && joined.contains(&i.instance_id)
                    && nodes
                        .get_opt(&name)
                        .await
                        .ok()
                        .flatten()
                        .is_some_and(|n| is_ready(&n))
                {
                    let _ = complete_launch(&s, &i.instance_id, "CONTINUE").await;
                }
                if s.complete_terminations
                    && i.lifecycle_state == "Terminating:Wait"
                    && released.insert(i.instance_id.clone())
                {
                    let _ = complete_hook(&s, &i.instance_id, TERMINATE_HOOK, "CONTINUE").await;
                }
                if !running && !dead.contains(&i.instance_id) && joined.contains(&i.instance_id) {
                    dead.insert(i.instance_id.clone());
                    s.k3s.stop_kubelet(&name);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn complete_launch(s: &InstanceSync, instance: &str, result: &str) -> Result<()> {
    complete_hook(s, instance, LAUNCH_HOOK, result).await
}

async fn complete_hook(s: &InstanceSync, instance: &str, hook: &str, result: &str) -> Result<()> {
    s.autoscaling
        .complete_lifecycle_action()
        .auto_scaling_group_name(&s.asg)
        .lifecycle_hook_name(hook)
        .instance_id(instance)
        .lifecycle_action_result(result)
        .send()
        .await
        .map_err(|e| {
            sdk_err(
                "CompleteLifecycleAction",
                aws_sdk_autoscaling::error::DisplayErrorContext(e),
            )
        })?;
    Ok(())
}

/// Path of a workspace binary (`smartscale-controller`, `smartscale-agent`) next to the test's
/// own target directory. The README's test command builds them first (`cargo build --bins`).
pub fn product_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| Error::io("locating the test binary", e))?;
    // target/<profile>/deps/<test> → target/<profile>/<name>; benches (release) fall back to debug.
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| Error::Invalid("unexpected test binary location".into()))?;
    let candidates = [
        profile.join(name),
        profile
            .parent()
            .map(|t| t.join("debug").join(name))
            .unwrap_or_default(),
    ];
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .ok_or_else(|| {
            Error::MissingDependency(
                "product binary",
                format!(
                    "{} not found; build it first with `cargo build --workspace --bins`",
                    candidates[0].display()
                ),
            )
        })
}

/// A command for a product binary with only this world's environment (plus PATH and HOME).
pub fn product_command(world: &World, name: &str) -> Result<tokio::process::Command> {
    let mut cmd = tokio::process::Command::new(product_binary(name)?);
    cmd.env_clear()
        .envs(world.env())
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", world.dir.path())
        .env("RUST_LOG", "info")
        .kill_on_drop(true);
    Ok(cmd)
}
