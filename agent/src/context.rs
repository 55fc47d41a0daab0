//! What `run` and `drain` both need before they can act: the instance (IMDS), the settings
//! (SSM), the Auto Scaling group, the node's own kube client. `drain` checks at once that the API
//! server answers about this node (an operator wants to know now); `run` must not wait for it
//! (it would stop watching IMDS and heartbeating while the K3s server restarts, or before k3s has
//! written the kubelet kubeconfig at boot): it checks in the background ([`watch_api`]).

use crate::config::{Config, Settings};
use crate::imds::{Imds, InstanceInfo};
use crate::k8s::KubeClient;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::{Error, Result, aws, k8s};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long `drain` waits for the API server before giving up with an error.
const API_CHECK: Duration = Duration::from_secs(10);

/// Whether [`Context::build`] waits for the API server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiCheck {
    /// Read the kubeconfig and ask the API server about this node now; an error if it does not
    /// answer within 10 s (`drain`).
    Now,
    /// Neither: the client is built when first needed, the API server asked in the background
    /// (`run`).
    Background,
}

pub struct Context {
    pub config: Config,
    pub settings: Settings,
    pub imds: Arc<Imds>,
    pub instance: InstanceInfo,
    /// The Node's name: the instance's `local-hostname`, as `join` registered it.
    pub node: String,
    /// The node's own kubelet identity.
    pub kube: KubeClient,
    /// Only for the draining taint, if configured.
    pub taint_kube: Option<KubeClient>,
    /// `None` when the instance is in no Auto Scaling group.
    pub lifecycle: Option<Arc<Lifecycle>>,
    pub metrics: Arc<Metrics>,
}

impl Context {
    /// Reads IMDS and SSM and finds the Auto Scaling group; with [`ApiCheck::Now`] also reads the
    /// kubeconfig and checks that the API server answers about this node. Every failure is an
    /// error naming what failed.
    #[tracing::instrument(skip_all)]
    pub async fn build(config: Config, api: ApiCheck) -> Result<Context> {
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
        let kube = KubeClient::new(&config.kubeconfig);
        let taint_kube = config.taint_kubeconfig.as_deref().map(KubeClient::new);
        let node = instance.hostname.clone();
        if api == ApiCheck::Now {
            let client = kube.get().await?;
            if let Some(taint) = &taint_kube {
                taint.get().await?;
            }
            check_api(&client, &node).await?;
        }
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

/// The `run` daemon's view of the API server, in the log: asks about this node (building the
/// client first, once the kubeconfig is there) until the API server answers, then returns. The
/// first failure is a warning; the IMDS watch and the heartbeats do not wait for any of it.
pub async fn watch_api(ctx: &Context) {
    let started = Instant::now();
    let mut wait = Duration::from_millis(500);
    let mut logged = false;
    loop {
        let answer = match ctx.kube.get().await {
            Ok(client) => k8s::get_node(&client, &ctx.node).await,
            Err(e) => Err(e),
        };
        match answer {
            Ok(node) => {
                if node.is_none() {
                    tracing::warn!(node = %ctx.node, "the API server knows no Node of this name (yet)");
                }
                if logged {
                    tracing::info!(
                        node = %ctx.node,
                        after_s = started.elapsed().as_secs(),
                        "the Kubernetes API server answers"
                    );
                }
                return;
            }
            Err(e) if !logged => {
                logged = true;
                tracing::warn!(
                    node = %ctx.node,
                    error = %e,
                    "the Kubernetes API server does not answer for node {} yet; watching IMDS and heartbeating meanwhile, and trying again in the background",
                    ctx.node
                );
            }
            Err(e) => tracing::debug!(error = %e, "the API server still does not answer"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
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
