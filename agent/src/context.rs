//! What `run` and `drain` both need before they can act: the instance (IMDS), the settings
//! (SSM), the Auto Scaling group, the node's own kube client, checked against the API server.

use crate::config::{Config, Settings};
use crate::imds::{Imds, InstanceInfo};
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::{Error, Result, aws, k8s};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long start-up waits for the API server before giving up with an error.
const API_CHECK: Duration = Duration::from_secs(10);

pub struct Context {
    pub config: Config,
    pub settings: Settings,
    pub imds: Arc<Imds>,
    pub instance: InstanceInfo,
    /// The Node's name: the instance's `local-hostname`, as `join` registered it.
    pub node: String,
    /// The node's own kubelet identity.
    pub kube: kube::Client,
    /// Only for the draining taint, if configured.
    pub taint_kube: Option<kube::Client>,
    /// `None` when the instance is in no Auto Scaling group.
    pub lifecycle: Option<Arc<Lifecycle>>,
    pub metrics: Arc<Metrics>,
}

impl Context {
    /// Reads IMDS, SSM and the kubeconfig, and checks that the API server answers about this
    /// node. Every failure is an error naming what failed.
    #[tracing::instrument(skip_all)]
    pub async fn build(config: Config) -> Result<Context> {
        let imds = Arc::new(Imds::from_env()?);
        let instance = imds.instance().await?;
        tracing::info!(
            instance = %instance.instance_id,
            zone = %instance.availability_zone,
            capacity = %instance.capacity_type,
            "instance identified"
        );
        let sdk = aws::sdk_config(&instance).await;
        let settings = aws::load_settings(&sdk, &config.ssm_path).await?;
        let asg = aws::asg_name(&sdk, &instance).await?;
        let lifecycle =
            asg.map(|name| Arc::new(Lifecycle::new(&sdk, &name, &instance.instance_id)));
        let kube = k8s::client(&config.kubeconfig).await?;
        let taint_kube = match &config.taint_kubeconfig {
            Some(path) => Some(k8s::client(path).await?),
            None => None,
        };
        let node = instance.hostname.clone();
        check_api(&kube, &node).await?;
        Ok(Context {
            config,
            settings,
            imds,
            instance,
            node,
            kube,
            taint_kube,
            lifecycle,
            metrics: Arc::new(Metrics::new()),
        })
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("node", &self.node)
            .field("instance", &self.instance)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// `GET` the own Node until it answers, for up to [`API_CHECK`]. A missing Node is only a
/// warning (k3s may be re-registering it); an unreachable or refusing server is an error.
async fn check_api(kube: &kube::Client, node: &str) -> Result<()> {
    let until = Instant::now() + API_CHECK;
    loop {
        match k8s::get_node(kube, node).await {
            Ok(Some(_)) => return Ok(()),
            Ok(None) => {
                tracing::warn!(node, "the API server knows no Node of this name (yet)");
                return Ok(());
            }
            Err(e) if Instant::now() >= until => {
                return Err(Error::Invalid(format!(
                    "the Kubernetes API server does not answer for node {node} (tried for {} s): {e}",
                    API_CHECK.as_secs()
                )));
            }
            Err(e) => {
                tracing::debug!(error = %e, "API server not answering yet");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}
