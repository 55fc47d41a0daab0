//! A real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver, kube-controller-manager and
//! kube-scheduler of the pinned release (one `kube-world` binary built from the Go module proxy by
//! `scripts/setup-backends.sh`, see tests/controlplane/), configured as K3s configures its own:
//! TLS from the world's CAs, `--authorization-mode=Node,RBAC`, the NodeRestriction admission
//! plugin, client certificates for every component and node, service-account tokens signed by
//! the world's key. Only the kubelets are simulated (`kubelet.rs`).
//!
//! Every start gets its own data directory and ports, so tests never share a cluster. The API
//! server writes an audit log of pod and node writes ([`ControlPlane::audit`]): tests read who
//! evicted or deleted what from it, as an operator would.

use super::kubeconfig::{Credential, Kubeconfig};
use super::pki::Pki;
use crate::process::{ChildProcess, free_port};
use crate::{Error, Result};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::Api;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The Kubernetes release the world runs (tests/controlplane/go.mod pins the same).
pub const KUBERNETES_VERSION: &str = "v1.34.4";
/// What K3s uses; pods' and services' addresses come from these.
pub const CLUSTER_CIDR: &str = "10.42.0.0/16";
pub const SERVICE_CIDR: &str = "10.43.0.0/16";

/// How long the whole plane may take to become ready (a cold start on two busy cores).
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Between SIGTERM and SIGKILL: the data is thrown away, so a long graceful stop buys nothing.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// The `kube-world` binary: `$SMARTSCALE_KUBE_WORLD`, else `$SMARTSCALE_BACKENDS_DIR/bin/kube-world`.
pub fn kube_world_binary() -> Result<PathBuf> {
    let path = std::env::var_os("SMARTSCALE_KUBE_WORLD")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::aws::backends_dir().join("bin").join("kube-world"));
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::MissingDependency(
            "the Kubernetes control plane (kube-world)",
            format!(
                "{} not found; build it once with scripts/setup-backends.sh (a cold build takes about 15 minutes)",
                path.display()
            ),
        ))
    }
}

/// Settings of the control plane that tests change.
#[derive(Debug, Clone)]
pub struct ControlPlaneOptions {
    /// kube-controller-manager's `--node-monitor-grace-period`: how long a node may go without
    /// renewing its Lease before the node lifecycle controller marks it NotReady (Unknown).
    /// Kubernetes' default is 50 s; tests shorten it to see a dead node within a test's time.
    pub node_monitor_grace_period: Duration,
    /// `--default-not-ready-toleration-seconds` / `--default-unreachable-toleration-seconds`
    /// of the API server (Kubernetes' default 300): how long pods stay on a NotReady node.
    pub default_toleration_seconds: u32,
    /// Where the data, certificates and logs go; a temporary directory if `None`.
    pub dir: Option<PathBuf>,
    /// The API server's port; a free one if `None`.
    pub api_port: Option<u16>,
    /// Return only once pods can be created (the `default` ServiceAccount exists, ~5 s after the
    /// controller manager is healthy). Callers with other set-up to do meanwhile pass `false` and
    /// call [`ControlPlane::wait_for_pods`] when they need it.
    pub wait_for_pods: bool,
}

impl Default for ControlPlaneOptions {
    fn default() -> Self {
        ControlPlaneOptions {
            node_monitor_grace_period: Duration::from_secs(50),
            default_toleration_seconds: 300,
            dir: None,
            api_port: None,
            wait_for_pods: true,
        }
    }
}

/// The running control plane; every component is stopped (by PID) when it is dropped.
pub struct ControlPlane {
    pub url: String,
    pub pki: Pki,
    dir: PathBuf,
    admin: kube::Client,
    // Fields drop in declaration order: scheduler and controller manager first, etcd last, and
    // the directory only once nothing runs in it.
    scheduler: ChildProcess,
    controller_manager: ChildProcess,
    apiserver: ChildProcess,
    etcd: ChildProcess,
    _temp: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("url", &self.url)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

const AUDIT_POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: None
    verbs: ["get", "list", "watch"]
  - level: Request
    resources:
      - group: ""
        resources: ["pods", "pods/eviction", "pods/status", "nodes", "nodes/status"]
  - level: Metadata
    resources:
      - group: "apps"
  - level: None
"#;

fn component(bin: &Path, name: &str) -> Command {
    let mut command = Command::new(bin);
    command.arg(name);
    command
}

impl ControlPlane {
    /// Starts etcd, the API server, the controller manager and the scheduler, and waits until
    /// the API server is ready, both controllers answer their health checks and the `default`
    /// ServiceAccount exists (pods cannot be created before it). Ports are picked free; a start
    /// that loses a port to a parallel test is retried.
    pub async fn start(opts: ControlPlaneOptions) -> Result<ControlPlane> {
        let bin = kube_world_binary()?;
        let (temp, dir) = match &opts.dir {
            Some(dir) => (None, dir.clone()),
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("smartscale-kube-")
                    .tempdir()
                    .map_err(|e| Error::io("creating the control plane's directory", e))?;
                let dir = temp.path().to_path_buf();
                (Some(temp), dir)
            }
        };
        let mut last = None;
        for attempt in 0..3 {
            let run_dir = dir.join(format!("run-{attempt}"));
            match Self::start_once(&bin, &run_dir, &opts).await {
                Ok(mut plane) => {
                    plane._temp = temp;
                    return Ok(plane);
                }
                Err(e)
                    if e.to_string().contains("address already in use")
                        && opts.api_port.is_none() =>
                {
                    tracing::warn!(attempt, "a control plane port was taken; retrying");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Invalid("control plane did not start".into())))
    }

    async fn start_once(
        bin: &Path,
        dir: &Path,
        opts: &ControlPlaneOptions,
    ) -> Result<ControlPlane> {
        let started = Instant::now();
        let mkdir = |d: &Path| {
            std::fs::create_dir_all(d)
                .map_err(|e| Error::io(format!("creating {}", d.display()), e))
        };
        mkdir(dir)?;
        let logs = dir.join("logs");
        mkdir(&logs)?;
        let pki = Pki::generate(&dir.join("tls"))?;

        // etcd, plain HTTP on loopback (K3s's embedded etcd is TLS; nothing of ours talks to it).
        let (client_port, peer_port) = (free_port()?, free_port()?);
        let etcd_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut etcd_cmd = component(bin, "etcd");
        etcd_cmd.args([
            "--name=world",
            &format!("--data-dir={}", dir.join("etcd").display()),
            &format!("--listen-client-urls={etcd_url}"),
            &format!("--advertise-client-urls={etcd_url}"),
            &format!("--listen-peer-urls={peer_url}"),
            &format!("--initial-advertise-peer-urls={peer_url}"),
            &format!("--initial-cluster=world={peer_url}"),
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]);
        let mut etcd =
            ChildProcess::spawn("etcd", etcd_cmd, logs.join("etcd.log"))?.with_grace(STOP_GRACE);
        etcd.wait_for_http(&format!("{etcd_url}/health"), READY_TIMEOUT)
            .await?;
        tracing::debug!(seconds = started.elapsed().as_secs_f64(), "etcd ready");

        // kube-apiserver with K3s's authentication and authorization settings.
        let api_port = match opts.api_port {
            Some(port) => port,
            None => free_port()?,
        };
        let url = format!("https://127.0.0.1:{api_port}");
        let audit_policy = dir.join("audit-policy.yaml");
        std::fs::write(&audit_policy, AUDIT_POLICY)
            .map_err(|e| Error::io("writing the audit policy", e))?;
        let tls = |f: &str| pki.path(f).display().to_string();
        let mut api_cmd = component(bin, "kube-apiserver");
        api_cmd.args([
            &format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            &format!("--secure-port={api_port}"),
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            "--anonymous-auth=false",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--enable-bootstrap-token-auth=true",
            &format!("--client-ca-file={}", tls("client-ca.crt")),
            &format!("--tls-cert-file={}", tls("serving-kube-apiserver.crt")),
            &format!(
                "--tls-private-key-file={}",
                tls("serving-kube-apiserver.key")
            ),
            &format!("--service-account-key-file={}", tls("service.pub")),
            &format!("--service-account-signing-key-file={}", tls("service.key")),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--api-audiences=https://kubernetes.default.svc.cluster.local,k3s",
            &format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--service-node-port-range=30000-32767",
            "--profiling=false",
            &format!(
                "--default-not-ready-toleration-seconds={}",
                opts.default_toleration_seconds
            ),
            &format!(
                "--default-unreachable-toleration-seconds={}",
                opts.default_toleration_seconds
            ),
            &format!("--audit-policy-file={}", audit_policy.display()),
            &format!("--audit-log-path={}", dir.join("audit.log").display()),
            "--audit-log-mode=blocking",
            "--audit-log-maxsize=0",
        ]);
        let mut apiserver =
            ChildProcess::spawn("kube-apiserver", api_cmd, logs.join("kube-apiserver.log"))?
                .with_grace(STOP_GRACE);

        let identity = |cn: &str, group: Option<&str>, file: &str| -> Result<PathBuf> {
            let cert = pki.client_cert(cn, group)?;
            let path = dir.join(file);
            Kubeconfig::new(&url, &pki.server_ca_pem, Credential::Certificate(cert))
                .write(&path)?;
            Ok(path)
        };
        let admin_kc = identity("admin", Some("system:masters"), "admin.kubeconfig")?;
        let kcm_kc = identity(
            "system:kube-controller-manager",
            None,
            "controller-manager.kubeconfig",
        )?;
        let sched_kc = identity("system:kube-scheduler", None, "scheduler.kubeconfig")?;
        let admin = super::client_for(&admin_kc).await?;
        wait_readyz(&admin, &mut apiserver).await?;
        tracing::debug!(
            seconds = started.elapsed().as_secs_f64(),
            "kube-apiserver ready"
        );

        // kube-controller-manager: every controller K3s runs, service-account tokens signed by
        // the world's key, node CIDRs allocated, no leader election (one replica).
        let kcm_port = free_port()?;
        let mut kcm_cmd = component(bin, "kube-controller-manager");
        let kc = kcm_kc.display().to_string();
        kcm_cmd.args([
            &format!("--kubeconfig={kc}"),
            &format!("--authentication-kubeconfig={kc}"),
            &format!("--authorization-kubeconfig={kc}"),
            "--bind-address=127.0.0.1",
            &format!("--secure-port={kcm_port}"),
            &format!("--cert-dir={}", dir.join("kcm-certs").display()),
            "--leader-elect=false",
            "--controllers=*,tokencleaner",
            "--use-service-account-credentials=true",
            &format!("--service-account-private-key-file={}", tls("service.key")),
            &format!("--root-ca-file={}", tls("server-ca.crt")),
            "--allocate-node-cidrs=true",
            &format!("--cluster-cidr={CLUSTER_CIDR}"),
            &format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            &format!(
                "--node-monitor-grace-period={}s",
                opts.node_monitor_grace_period.as_secs().max(1)
            ),
            "--node-monitor-period=1s",
            "--profiling=false",
        ]);
        let mut controller_manager = ChildProcess::spawn(
            "kube-controller-manager",
            kcm_cmd,
            logs.join("kube-controller-manager.log"),
        )?
        .with_grace(STOP_GRACE);

        let sched_port = free_port()?;
        let mut sched_cmd = component(bin, "kube-scheduler");
        let sc = sched_kc.display().to_string();
        sched_cmd.args([
            &format!("--kubeconfig={sc}"),
            &format!("--authentication-kubeconfig={sc}"),
            &format!("--authorization-kubeconfig={sc}"),
            "--bind-address=127.0.0.1",
            &format!("--secure-port={sched_port}"),
            &format!("--cert-dir={}", dir.join("scheduler-certs").display()),
            "--leader-elect=false",
            "--profiling=false",
        ]);
        let mut scheduler =
            ChildProcess::spawn("kube-scheduler", sched_cmd, logs.join("kube-scheduler.log"))?
                .with_grace(STOP_GRACE);

        wait_healthz(&mut controller_manager, kcm_port).await?;
        wait_healthz(&mut scheduler, sched_port).await?;
        tracing::debug!(
            seconds = started.elapsed().as_secs_f64(),
            "controller manager and scheduler healthy"
        );
        let mut plane = ControlPlane {
            url,
            pki,
            dir: dir.to_path_buf(),
            _temp: None,
            scheduler,
            controller_manager,
            apiserver,
            etcd,
            admin,
        };
        if opts.wait_for_pods {
            plane.wait_for_pods().await?;
        }
        tracing::info!(
            url = %plane.url,
            seconds = started.elapsed().as_secs_f64(),
            "control plane ready"
        );
        Ok(plane)
    }

    /// Waits until pods can be created: the service-account controller has created `default` in
    /// the `default` namespace (the ServiceAccount admission plugin refuses pods until then).
    pub async fn wait_for_pods(&mut self) -> Result<()> {
        let sas: Api<ServiceAccount> = Api::namespaced(self.admin.clone(), "default");
        let deadline = Instant::now() + READY_TIMEOUT;
        while sas.get_opt("default").await.ok().flatten().is_none() {
            self.controller_manager.check_running()?;
            if Instant::now() >= deadline {
                return Err(Error::NotReady {
                    name: "the default ServiceAccount (kube-controller-manager's serviceaccount controller)".into(),
                    seconds: READY_TIMEOUT.as_secs(),
                    log: self.controller_manager.log_tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// A client with cluster-admin rights (`system:masters`).
    pub fn admin(&self) -> &kube::Client {
        &self.admin
    }

    /// The admin kubeconfig (TLS, client certificate): what `kubectl` uses.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A kubeconfig for this API server with `credential`.
    pub fn kubeconfig(&self, credential: Credential) -> Kubeconfig {
        Kubeconfig::new(&self.url, &self.pki.server_ca_pem, credential)
    }

    /// The kubelet kubeconfig of node `name` (its own client certificate), written to `path`.
    pub fn write_node_kubeconfig(&self, name: &str, path: &Path) -> Result<()> {
        let cert = self.pki.node_cert(name)?;
        self.kubeconfig(Credential::Certificate(cert)).write(path)
    }

    /// Every audited request so far (pod and node writes, `apps` writes), oldest first.
    pub fn audit(&self) -> Result<Vec<AuditEvent>> {
        let path = self.dir.join("audit.log");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .map_err(|e| Error::Invalid(format!("an audit log line does not parse: {e}")))
            })
            .collect()
    }

    /// `Ok` while every component runs; the exited one's log otherwise.
    pub fn check_running(&mut self) -> Result<()> {
        self.etcd.check_running()?;
        self.apiserver.check_running()?;
        self.controller_manager.check_running()?;
        self.scheduler.check_running()
    }

    /// The log of one component (`etcd`, `kube-apiserver`, `kube-controller-manager`, `kube-scheduler`).
    pub fn log(&self, component: &str) -> String {
        match component {
            "etcd" => self.etcd.log(),
            "kube-apiserver" => self.apiserver.log(),
            "kube-controller-manager" => self.controller_manager.log(),
            "kube-scheduler" => self.scheduler.log(),
            _ => String::new(),
        }
    }

    /// Stops the components, scheduler first, etcd last.
    pub async fn shutdown(self) {
        let ControlPlane {
            scheduler,
            controller_manager,
            apiserver,
            etcd,
            ..
        } = self;
        scheduler.shutdown().await;
        controller_manager.shutdown().await;
        apiserver.shutdown().await;
        etcd.shutdown().await;
    }
}

async fn wait_readyz(admin: &kube::Client, apiserver: &mut ChildProcess) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        apiserver.check_running()?;
        let request = http::Request::get("/readyz")
            .body(Vec::new())
            .map_err(|e| Error::Invalid(format!("building /readyz: {e}")))?;
        match admin.request_text(request).await {
            Ok(body) if body.trim() == "ok" => return Ok(()),
            _ if Instant::now() >= deadline => {
                return Err(Error::NotReady {
                    name: "kube-apiserver".into(),
                    seconds: READY_TIMEOUT.as_secs(),
                    log: apiserver.log_tail(),
                });
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Polls a component's `/healthz` (self-signed serving certificate, always-allowed path).
async fn wait_healthz(process: &mut ChildProcess, port: u16) -> Result<()> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| Error::Invalid(format!("building an HTTP client: {e}")))?;
    let url = format!("https://127.0.0.1:{port}/healthz");
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        process.check_running()?;
        if let Ok(r) = client.get(&url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::NotReady {
                name: process.name().to_string(),
                seconds: READY_TIMEOUT.as_secs(),
                log: process.log_tail(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One line of the API server's audit log (the fields tests read).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    pub verb: String,
    pub user: AuditUser,
    #[serde(default)]
    pub user_agent: String,
    #[serde(default)]
    pub object_ref: Option<AuditObject>,
    #[serde(default)]
    pub response_status: Option<AuditStatus>,
    #[serde(default)]
    pub request_object: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuditUser {
    #[serde(default)]
    pub username: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuditObject {
    #[serde(default)]
    pub resource: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub subresource: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuditStatus {
    #[serde(default)]
    pub code: u16,
}

impl AuditEvent {
    /// `namespace/name` of the object.
    pub fn object(&self) -> String {
        self.object_ref
            .as_ref()
            .map(|o| format!("{}/{}", o.namespace, o.name))
            .unwrap_or_default()
    }

    pub fn code(&self) -> u16 {
        self.response_status.as_ref().map_or(0, |s| s.code)
    }

    pub fn is(&self, verb: &str, resource: &str, subresource: &str) -> bool {
        self.verb == verb
            && self
                .object_ref
                .as_ref()
                .is_some_and(|o| o.resource == resource && o.subresource == subresource)
    }
}
