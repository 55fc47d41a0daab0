//! A whole small cluster for end-to-end tests: the AWS model with a worker Auto Scaling group
//! (and its lifecycle hooks) and a state table, the fake Kubernetes API with a control-plane
//! node, and a "node sync" that plays the part of the agents and the cloud controller manager:
//! an instance that launches registers as a Ready node (completing the launch hook), and a node
//! whose instance is terminated is deleted.

use crate::apiserver::{ApiServerOptions, FakeApiServer};
use crate::aws::AwsModel;
use crate::process::poll_until;
use crate::{Error, Result};
use aws_sdk_autoscaling::types::{LaunchTemplateSpecification, LifecycleHookSpecification};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PostParams};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const LAUNCH_HOOK: &str = "smartscale-launch";
pub const TERMINATE_HOOK: &str = "smartscale-terminate";

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
    /// Register launched instances as nodes (what agents would do).
    pub auto_join: bool,
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
        }
    }
}

pub struct World {
    pub aws: AwsModel,
    pub api: FakeApiServer,
    pub region: String,
    pub asg_name: String,
    pub table: String,
    pub dir: tempfile::TempDir,
    pub kube: kube::Client,
    pub autoscaling: aws_sdk_autoscaling::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    sync: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(t) = self.sync.take() {
            t.abort();
        }
    }
}

fn sdk_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{what}: {e}"))
}

/// A kube client for a kubeconfig file.
pub async fn kube_client(kubeconfig: &Path) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .map_err(|e| sdk_err("reading kubeconfig", e))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| sdk_err("kubeconfig", e))?;
    kube::Client::try_from(cfg).map_err(|e| sdk_err("kube client", e))
}

impl World {
    pub async fn start(opts: WorldOptions) -> Result<World> {
        let aws = AwsModel::start().await?;
        let api = FakeApiServer::start(ApiServerOptions {
            aws_model_url: Some(aws.endpoint().to_string()),
            ..ApiServerOptions::default()
        })
        .await?;
        let dir = tempfile::Builder::new()
            .prefix("smartscale-world-")
            .tempdir()
            .map_err(|e| Error::io("creating the world's directory", e))?;
        let kubeconfig = dir.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig, None)?;
        let kube = kube_client(&kubeconfig).await?;
        let region = "us-east-1".to_string();
        let sdk = aws.sdk_config(&region);
        let autoscaling = aws_sdk_autoscaling::Client::new(&sdk);
        let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
        let world = World {
            aws,
            api,
            region,
            asg_name: "smartscale-workers".into(),
            table: "smartscale-state".into(),
            dir,
            kube,
            autoscaling,
            dynamodb,
            sync: None,
        };
        world.setup().create(&opts).await?;
        let mut world = world;
        if opts.auto_join {
            world.sync = Some(spawn_node_sync(
                world.aws.client().clone(),
                world.kube.clone(),
                world.autoscaling.clone(),
                world.asg_name.clone(),
                opts.cpu,
                opts.memory,
            ));
            let want = opts.workers as usize;
            world
                .wait_nodes(
                    "the initial workers to be Ready",
                    Duration::from_secs(20),
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
            region: &self.region,
            asg_name: &self.asg_name,
            table: &self.table,
        }
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
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

    /// Registers a Ready node for an instance, as the agent's join would (for worlds without
    /// `auto_join`).
    pub async fn register_node(&self, instance: &str) -> Result<()> {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": format!("worker-{instance}")},
            "spec": {"providerID": format!("aws:///{}a/{instance}", self.region)},
            "status": {
                "allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True"}]
            }
        }))
        .map_err(|e| sdk_err("node JSON", e))?;
        Api::<Node>::all(self.kube.clone())
            .create(&PostParams::default(), &node)
            .await
            .map_err(|e| sdk_err("registering a node", e))?;
        Ok(())
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

    /// Worker nodes (not the control plane) that are Ready.
    pub async fn ready_workers(&self) -> Result<Vec<Node>> {
        let nodes: Api<Node> = Api::all(self.kube.clone());
        let list = nodes
            .list(&Default::default())
            .await
            .map_err(|e| sdk_err("listing nodes", e))?;
        Ok(list
            .items
            .into_iter()
            .filter(|n| n.metadata.name.as_deref() != Some("server"))
            .filter(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
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

    /// Creates a pod in `default` requesting `cpu` and `memory`, optionally pinned to a node.
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

    /// Pods that the scheduler could not place.
    pub async fn unschedulable_pods(&self) -> Result<usize> {
        let list = Api::<Pod>::all(self.kube.clone())
            .list(&Default::default())
            .await
            .map_err(|e| sdk_err("listing pods", e))?;
        Ok(list
            .items
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none())
            .count())
    }
}

/// Creates a small cluster in a running AWS model and API server: the state table, a
/// control-plane node running the cluster DNS, and the worker group with its lifecycle hooks.
/// `World` uses it, and so does `smartscale-testworld up`.
pub struct Setup<'a> {
    pub model: &'a crate::aws::ModelClient,
    pub autoscaling: &'a aws_sdk_autoscaling::Client,
    pub dynamodb: &'a aws_sdk_dynamodb::Client,
    pub kube: &'a kube::Client,
    pub region: &'a str,
    pub asg_name: &'a str,
    pub table: &'a str,
}

impl Setup<'_> {
    pub async fn create(&self, opts: &WorldOptions) -> Result<()> {
        self.create_table().await?;
        self.create_control_plane().await?;
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
        Ok(())
    }

    /// The K3s server: a control-plane node (not in the ASG) running the cluster's DNS.
    async fn create_control_plane(&self) -> Result<()> {
        let nodes: Api<Node> = Api::all(self.kube.clone());
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "server", "labels": {"node-role.kubernetes.io/control-plane": "true"}},
            "spec": {"taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]},
            "status": {
                "allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
                "capacity": {"cpu": "2", "memory": "4Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True"}]
            }
        }))
        .map_err(|e| sdk_err("node JSON", e))?;
        nodes
            .create(&PostParams::default(), &node)
            .await
            .map_err(|e| sdk_err("creating the control-plane node", e))?;
        let pods: Api<Pod> = Api::namespaced(self.kube.clone(), "kube-system");
        let dns: Pod = serde_json::from_value(json!({
            "metadata": {"name": "coredns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
            "spec": {
                "nodeName": "server",
                "containers": [{"name": "coredns", "image": "coredns", "resources": {"requests": {"cpu": "100m", "memory": "70Mi"}}}]
            }
        }))
        .map_err(|e| sdk_err("pod JSON", e))?;
        pods.create(&PostParams::default(), &dns)
            .await
            .map_err(|e| sdk_err("creating coredns", e))?;
        Ok(())
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

/// Starts the node sync: plays the agents and the cloud controller manager (module comment).
pub fn spawn_node_sync(
    model: crate::aws::ModelClient,
    kube: kube::Client,
    autoscaling: aws_sdk_autoscaling::Client,
    asg: String,
    cpu: &'static str,
    memory: &'static str,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(node_sync(model, kube, autoscaling, asg, cpu, memory))
}

async fn node_sync(
    model: crate::aws::ModelClient,
    kube: kube::Client,
    autoscaling: aws_sdk_autoscaling::Client,
    asg: String,
    cpu: &'static str,
    memory: &'static str,
) {
    let nodes: Api<Node> = Api::all(kube);
    loop {
        if let Ok(instances) = model.instances().await {
            for i in instances
                .iter()
                .filter(|i| i.asg_name.as_deref() == Some(asg.as_str()))
            {
                let name = format!("worker-{}", i.instance_id);
                let exists = nodes.get_opt(&name).await.ok().flatten().is_some();
                let alive = matches!(i.lifecycle_state.as_str(), "Pending:Wait" | "InService");
                if alive && !exists {
                    let node: std::result::Result<Node, _> = serde_json::from_value(json!({
                        "metadata": {"name": name, "labels": {
                            "node.kubernetes.io/instance-type": i.instance_type,
                            "topology.kubernetes.io/zone": i.availability_zone,
                            "smartscale.io/capacity-type": i.market,
                        }},
                        "spec": {"providerID": format!("aws:///{}/{}", i.availability_zone, i.instance_id)},
                        "status": {
                            "allocatable": {"cpu": cpu, "memory": memory, "pods": "110"},
                            "capacity": {"cpu": cpu, "memory": memory, "pods": "110"},
                            "conditions": [{"type": "Ready", "status": "True"}]
                        }
                    }));
                    if let Ok(node) = node
                        && let Err(e) = nodes.create(&PostParams::default(), &node).await
                    {
                        tracing::warn!(error = %e, "node sync: create node");
                    }
                }
                if i.lifecycle_state == "Pending:Wait" {
                    let _ = autoscaling
                        .complete_lifecycle_action()
                        .auto_scaling_group_name(&asg)
                        .lifecycle_hook_name(LAUNCH_HOOK)
                        .instance_id(&i.instance_id)
                        .lifecycle_action_result("CONTINUE")
                        .send()
                        .await;
                }
                if i.ec2_state == "terminated" && exists {
                    let _ = nodes.delete(&name, &Default::default()).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
