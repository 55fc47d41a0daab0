//! A fake Kubernetes API server with a simulated scheduler and kubelet.
//!
//! Real clients (`kube`, `/usr/bin/kubectl`) use it over plain HTTP through a kubeconfig from
//! [`FakeApiServer::kubeconfig`]. It serves JSON only and answers like kube-apiserver 1.33 (K3s):
//!
//! - discovery (`/version` reports `v1.33.1+k3s1`, `/api`, `/apis`, resource lists incl.
//!   `pods/eviction`) and a minimal OpenAPI v3 that lets kubectl leave field validation to the
//!   server; `kubectl get` receives server-side Tables;
//! - namespaces (`default`, `kube-system`, `kube-public`, `kube-node-lease` exist), nodes, pods,
//!   events (`v1` and `events.k8s.io/v1`, stored separately), DaemonSets (`apps/v1`),
//!   PodDisruptionBudgets (`policy/v1`) and Leases (`coordination.k8s.io/v1`): get, list, watch,
//!   create, update, patch (JSON, merge, strategic merge; apply approximated as a strategic merge),
//!   delete, and the `status` subresources (writes to the main resource keep the old status);
//! - `fieldSelector` and `labelSelector` on lists and watches; watches resume from a
//!   resourceVersion, send bookmarks, support `sendInitialEvents`, and answer 410 Gone (an ERROR
//!   event, as kube-apiserver does) for versions no longer kept;
//! - request bodies decoded strictly into `k8s-openapi` types: type errors are 400, unknown
//!   fields are 400 with `fieldValidation=Strict` and a `Warning` header otherwise;
//! - graceful pod deletion, `pods/eviction` with PodDisruptionBudget checks (429 when the budget
//!   allows no disruption, no `Retry-After`), and bearer-token authentication with the Node
//!   authorizer and NodeRestriction for `system:node:<name>` users (see `auth.rs`).
//!
//! Behind the API, a simulated cluster, woken by every change and by its own deadlines:
//! - a scheduler: pending pods go to the node with the most room among those whose taints they
//!   tolerate (cordoned and NotReady nodes carry the usual `node.kubernetes.io/*` taints), whose
//!   labels match their nodeSelector and required node affinity, and whose allocatable CPU,
//!   memory and pod count fit their requests; others get `PodScheduled=False`, `Unschedulable`;
//! - kubelets on Ready nodes: bound pods become Running and Ready after `pod_start_delay`;
//!   terminating pods disappear after their grace period (or `pod_stop_delay`). On a NotReady node
//!   nothing happens: its terminating pods stay until the node object is deleted (pod GC);
//! - node lifecycle: nodes registered without a Ready condition become Ready (default capacity
//!   2 CPU / 4Gi / 110 pods if none is given) and get a Lease; [`FakeApiServer::set_node_ready`]
//!   turns a node Ready=False, a terminated EC2 instance (AWS model) turns it Ready=Unknown; pods on
//!   such nodes lose Ready (and get it back when the node returns);
//! - a DaemonSet controller (one pod per eligible node, owner reference, the standard tolerations);
//! - the disruption controller. `expectedPods` cannot come from the controllers' scale as in a
//!   real cluster: it counts live pods per controller, remembering the count while some of its pods
//!   terminate (see `disruption.rs`).
//!
//! Not modelled: TLS, protobuf, ReplicaSets/Deployments (owners are not checked), finalizers,
//! `dryRun` (refused with 400), list paging (`limit` is ignored, lists are complete),
//! deletecollection, server-side apply field ownership, admission beyond NodeRestriction,
//! preemption, NoExecute taint eviction, lease renewals, container failures. Pod conditions a
//! client writes through `pods/status` are kept (tests use that to make pods unhealthy).

mod auth;
mod discovery;
mod disruption;
mod handlers;
mod kinds;
mod ops;
mod patch;
mod quantity;
mod selectors;
mod sim;
mod state;
mod status;
mod store;
mod table;
mod watch;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::json;
use tokio::sync::{broadcast, watch as watch_channel};
use tokio::task::JoinHandle;

use crate::{Error, Result};
use kinds::Kind;
use state::Shared;
use store::{Store, from_value, to_value};

/// How the fake API server is started.
#[derive(Debug, Clone, Default)]
pub struct ApiServerOptions {
    /// Bearer token → user name. Empty: no authentication, every request is an administrator's.
    /// A user named `system:node:<node>` gets a kubelet's rights (Node authorizer + NodeRestriction);
    /// any other user is an administrator.
    pub tokens: HashMap<String, String>,
    /// Base URL of the AWS model (`http://127.0.0.1:PORT`). When set, nodes whose providerID
    /// (`aws:///<az>/<instance-id>`) names an instance that `GET {url}/_smartscale/instances`
    /// reports `terminated` (or shutting down / stopped) turn NotReady.
    pub aws_model_url: Option<String>,
    /// How long a bound pod stays Pending before the simulated kubelet reports it Running and Ready.
    pub pod_start_delay: Duration,
    /// If set, a terminating pod is removed after this long even when its grace period is longer
    /// (containers that exit promptly on SIGTERM). `None`: the full grace period is used.
    pub pod_stop_delay: Option<Duration>,
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
}

/// A running fake API server. It stops when dropped or on [`FakeApiServer::shutdown`].
pub struct FakeApiServer {
    shared: Arc<Shared>,
    address: SocketAddr,
    stop: watch_channel::Sender<bool>,
    server: Option<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
}

impl FakeApiServer {
    /// Bind 127.0.0.1 (on `opts.port`, 0 = any free port) and start serving, with the namespaces
    /// `default`, `kube-system`, `kube-public` and `kube-node-lease` present. Must be called inside
    /// a Tokio runtime.
    pub async fn start(opts: ApiServerOptions) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", opts.port))
            .await
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AddrInUse {
                    Error::PortInUse(opts.port)
                } else {
                    Error::io(
                        format!("binding the fake API server to 127.0.0.1:{}", opts.port),
                        e,
                    )
                }
            })?;
        let address = listener
            .local_addr()
            .map_err(|e| Error::io("reading the fake API server's address", e))?;
        let (stop, stopped) = watch_channel::channel(false);
        let (events, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared::new(
            Store::new(events),
            opts.tokens.clone(),
            opts.pod_start_delay,
            opts.pod_stop_delay,
            stopped.clone(),
        ));
        {
            let mut world = shared.world();
            for namespace in ["default", "kube-system", "kube-public", "kube-node-lease"] {
                let object = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}});
                ops::create(&mut world, Kind::Namespace, "", object).map_err(|e| {
                    Error::Invalid(format!("creating namespace {namespace}: {}", e.message))
                })?;
            }
        }

        let app = Arc::new(handlers::App {
            shared: shared.clone(),
            address: address.to_string(),
        });
        let router = axum::Router::new()
            .fallback(handlers::handle)
            .with_state(app);
        let mut until_stopped = stopped;
        let server = tokio::spawn(async move {
            let shutdown = async move {
                // Ends when `true` is sent or the sender is dropped.
                let _ = until_stopped.wait_for(|stop| *stop).await;
            };
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "fake API server stopped with an error");
            }
        });
        let mut background = vec![tokio::spawn(sim::run(shared.clone()))];
        if let Some(url) = opts.aws_model_url.clone() {
            background.push(tokio::spawn(sim::poll_aws(shared.clone(), url)));
        }
        tracing::info!(%address, "fake Kubernetes API server listening");
        Ok(FakeApiServer {
            shared,
            address,
            stop,
            server: Some(server),
            background,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// A kubeconfig (YAML) for this server over plain HTTP, with `token` as the bearer token if
    /// given. Context and cluster are named `smartscale-testworld`; the namespace is `default`.
    pub fn kubeconfig(&self, token: Option<&str>) -> String {
        let user = match token {
            Some(token) => format!("    token: {}\n", json!(token)),
            None => "    {}\n".to_string(),
        };
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: smartscale-testworld
  cluster:
    server: {url}
contexts:
- name: smartscale-testworld
  context:
    cluster: smartscale-testworld
    user: smartscale-testworld
    namespace: default
current-context: smartscale-testworld
preferences: {{}}
users:
- name: smartscale-testworld
  user:
{user}",
            url = self.url(),
        )
    }

    /// Write [`FakeApiServer::kubeconfig`] to `path` atomically (temporary file in the same
    /// directory, then rename) with mode 0600.
    pub fn write_kubeconfig(&self, path: &Path, token: Option<&str>) -> Result<()> {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let what = || format!("writing kubeconfig {}", path.display());
        // NamedTempFile is created with mode 0600.
        let mut file = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(what(), e))?;
        file.write_all(self.kubeconfig(token).as_bytes())
            .and_then(|()| file.as_file().sync_all())
            .map_err(|e| Error::io(what(), e))?;
        file.persist(path).map_err(|e| Error::io(what(), e.error))?;
        Ok(())
    }

    /// Mark a node NotReady (`false`: its kubelet stops; its pods lose Ready, terminating pods stay
    /// until it returns) or Ready again (`true`). Same effect as the node's kubelet going away or
    /// coming back.
    pub fn set_node_ready(&self, name: &str, ready: bool) {
        {
            let mut world = self.shared.world();
            world.external_change = true;
            if ready {
                world.forced_not_ready.remove(name);
                if let Some(mut node) = world
                    .store
                    .get(Kind::Node, "", name)
                    .and_then(from_value::<Node>)
                {
                    sim::set_ready_condition(
                        &mut node,
                        "True",
                        "KubeletReady",
                        "kubelet is posting ready status",
                    );
                    world.store.update(Kind::Node, to_value(&node));
                }
            } else {
                world.forced_not_ready.insert(name.to_string());
            }
        }
        self.shared.changed.notify_one();
    }

    /// All nodes as stored.
    pub fn nodes(&self) -> Vec<Node> {
        self.shared.world().store.typed(Kind::Node)
    }

    /// All pods in all namespaces as stored.
    pub fn pods(&self) -> Vec<Pod> {
        self.shared.world().store.typed(Kind::Pod)
    }

    /// Every eviction request so far: `namespace/name` and the HTTP status answered (201, 429, 403, 404, ...).
    pub fn eviction_log(&self) -> Vec<(String, u16)> {
        self.shared.world().evictions.clone()
    }

    /// Every pod DELETE request so far (`namespace/name`), i.e. pods removed without eviction.
    pub fn deletion_log(&self) -> Vec<String> {
        self.shared.world().deletions.clone()
    }

    /// Stop serving: open watches end, the simulated cluster stops. Waits up to 5 s for the server.
    pub async fn shutdown(mut self) {
        self.stop_tasks();
        if let Some(server) = self.server.take()
            && tokio::time::timeout(Duration::from_secs(5), server)
                .await
                .is_err()
        {
            tracing::warn!("fake API server did not stop within 5 s");
        }
    }

    fn stop_tasks(&mut self) {
        let _ = self.stop.send(true);
        for task in self.background.drain(..) {
            task.abort();
        }
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop_tasks();
    }
}
