//! Real Prometheus (the Debian package) for real PromQL, fed in one of two ways:
//!
//! - backfilled history: [`ClusterMetrics::openmetrics_history`] writes OpenMetrics, `promtool tsdb
//!   create-blocks-from openmetrics` turns it into blocks, Prometheus starts on them (with a long
//!   retention, or it drops old blocks at once) — for queries over minutes of data in milliseconds;
//! - live scraping, every second, of a [`SyntheticExporter`] whose counters advance with real time
//!   at a busy % the test sets — for code that polls Prometheus while the load changes.
//!
//! The series are shaped like node-exporter's and kube-state-metrics', so the controller's
//! queries run unchanged.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::IntoResponse;
use jiff::Timestamp;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::process::{self, ChildProcess};
use crate::{Error, Result};

/// How to install what this module needs, quoted in every "missing" error.
pub const INSTALL_HINT: &str =
    "install it with `sudo apt-get install -y prometheus` (or run scripts/setup-backends.sh)";
/// How long Prometheus may take to answer `/-/ready` (it takes ~0.1 s here).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How busy time splits over node-exporter's non-idle modes (shares sum to 1), close to a
/// typical Linux server. Seven modes is why averaging them (the seed's query) divides by ~7.
pub const BUSY_MODE_SHARES: [(&str, f64); 7] = [
    ("user", 0.60),
    ("system", 0.20),
    ("nice", 0.03),
    ("iowait", 0.07),
    ("irq", 0.02),
    ("softirq", 0.05),
    ("steal", 0.03),
];

/// Pretend uptime before the first sample, so counters do not start at zero.
const BOOT_UPTIME_SECONDS: f64 = 3600.0;

/// One query result: the series' labels and its value.
pub type Sample = (BTreeMap<String, String>, f64);

/// `prometheus` and `promtool`: `$SMARTSCALE_PROMETHEUS`/`$SMARTSCALE_PROMTOOL`, else `$PATH`,
/// else `/usr/bin`; [`Error::MissingDependency`] with the install command if either is missing.
pub fn check_prometheus() -> Result<(PathBuf, PathBuf)> {
    Ok((
        find_tool("prometheus", "SMARTSCALE_PROMETHEUS")?,
        find_tool("promtool", "SMARTSCALE_PROMTOOL")?,
    ))
}

fn find_tool(name: &'static str, env: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(env).filter(|path| !path.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(Error::MissingDependency(
                name,
                format!("{env}={} does not exist; {INSTALL_HINT}", path.display()),
            ))
        };
    }
    let search = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&search)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .ok_or_else(|| Error::MissingDependency(name, format!("not found on PATH; {INSTALL_HINT}")))
}

// ------------------------------------------------------------------ synthetic series

/// A node as node-exporter and kube-state-metrics would report it.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticNode {
    /// The Kubernetes node name (`kube_node_info{node}`; node-exporter's `instance` is `name:9100`).
    pub name: String,
    /// For `provider_id` (`aws:///<az>/<id>`), if the node is an EC2 instance.
    pub instance_id: Option<String>,
    pub availability_zone: String,
    pub cpus: u32,
    /// Average non-idle CPU time over all CPUs, 0–100.
    pub busy_percent: f64,
    pub memory_total_bytes: f64,
    pub memory_available_bytes: f64,
    pub allocatable_cpu_cores: f64,
    pub allocatable_memory_bytes: f64,
    /// The worker group, as the shipped scrape config labels a worker's node-exporter target
    /// (`node_group`, from the node's `smartscale.io/node-group` label; `node_role="worker"`);
    /// `None` for the K3s server (`node_role="server"`, no `node_group`).
    pub node_group: Option<String>,
}

/// The group a [`SyntheticNode`] belongs to unless told otherwise (the test world's worker group).
pub const DEFAULT_NODE_GROUP: &str = "smartscale-workers";

impl SyntheticNode {
    /// A node with `cpus` CPUs at `busy_percent`, 4 GiB per CPU with half of it available.
    pub fn new(name: impl Into<String>, cpus: u32, busy_percent: f64) -> Self {
        let total = f64::from(cpus) * 4.0 * GIB;
        SyntheticNode {
            name: name.into(),
            instance_id: None,
            availability_zone: "us-east-1a".to_string(),
            cpus,
            busy_percent,
            memory_total_bytes: total,
            memory_available_bytes: total / 2.0,
            allocatable_cpu_cores: f64::from(cpus),
            allocatable_memory_bytes: total * 0.9,
            node_group: Some(DEFAULT_NODE_GROUP.to_string()),
        }
    }

    /// The K3s server's node-exporter: no worker group.
    pub fn server(mut self) -> Self {
        self.node_group = None;
        self
    }

    /// Set total and available memory (allocatable follows at 90% of the total).
    pub fn with_memory(mut self, total_bytes: f64, available_bytes: f64) -> Self {
        self.memory_total_bytes = total_bytes;
        self.memory_available_bytes = available_bytes;
        self.allocatable_memory_bytes = total_bytes * 0.9;
        self
    }

    pub fn with_instance(
        mut self,
        instance_id: impl Into<String>,
        availability_zone: impl Into<String>,
    ) -> Self {
        self.instance_id = Some(instance_id.into());
        self.availability_zone = availability_zone.into();
        self
    }

    /// Busy fraction (0–1) of one CPU: CPUs differ around the node's average, in pairs that
    /// cancel, so the node's average is exactly `busy_percent` while no two CPUs look alike.
    pub fn cpu_busy_fraction(&self, cpu: u32) -> f64 {
        let busy = (self.busy_percent / 100.0).clamp(0.0, 1.0);
        if self.cpus % 2 == 1 && cpu == self.cpus - 1 {
            return busy;
        }
        let room = busy.min(1.0 - busy).min(0.10);
        let spread = room / f64::from(cpu / 2 + 1);
        if cpu.is_multiple_of(2) {
            busy + spread
        } else {
            busy - spread
        }
    }

    /// Seconds per second CPU `cpu` spends in `mode` (idle included).
    pub fn mode_rate(&self, cpu: u32, mode: &str) -> f64 {
        let busy = self.cpu_busy_fraction(cpu);
        if mode == "idle" {
            return 1.0 - busy;
        }
        BUSY_MODE_SHARES
            .iter()
            .find(|(name, _)| *name == mode)
            .map_or(0.0, |(_, share)| busy * share)
    }
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Every mode node-exporter reports, idle first.
pub fn cpu_modes() -> impl Iterator<Item = &'static str> {
    std::iter::once("idle").chain(BUSY_MODE_SHARES.iter().map(|(mode, _)| *mode))
}

/// A pod as kube-state-metrics would report it.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticPod {
    pub namespace: String,
    pub name: String,
    /// `spec.nodeName`; `None` while unscheduled.
    pub node: Option<String>,
    /// `Pending`, `Running`, `Succeeded`, `Failed` or `Unknown`.
    pub phase: String,
    pub cpu_request_cores: f64,
    pub memory_request_bytes: f64,
}

impl SyntheticPod {
    pub fn running(
        name: impl Into<String>,
        node: impl Into<String>,
        cpu_cores: f64,
        memory_bytes: f64,
    ) -> Self {
        SyntheticPod {
            namespace: "default".to_string(),
            name: name.into(),
            node: Some(node.into()),
            phase: "Running".to_string(),
            cpu_request_cores: cpu_cores,
            memory_request_bytes: memory_bytes,
        }
    }

    pub fn pending(name: impl Into<String>, cpu_cores: f64, memory_bytes: f64) -> Self {
        SyntheticPod {
            namespace: "default".to_string(),
            name: name.into(),
            node: None,
            phase: "Pending".to_string(),
            cpu_request_cores: cpu_cores,
            memory_request_bytes: memory_bytes,
        }
    }
}

/// The phases kube-state-metrics reports for every pod (1 for the current one, 0 for the rest).
const POD_PHASES: [&str; 5] = ["Pending", "Running", "Succeeded", "Failed", "Unknown"];

/// A cluster's worth of node-exporter and kube-state-metrics series.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterMetrics {
    pub nodes: Vec<SyntheticNode>,
    pub pods: Vec<SyntheticPod>,
}

/// One metric family: name (without `_total` for counters), kind, help, and its series.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    series: Vec<(String, f64)>,
}

impl ClusterMetrics {
    pub fn new(nodes: Vec<SyntheticNode>, pods: Vec<SyntheticPod>) -> Self {
        ClusterMetrics { nodes, pods }
    }

    /// `minutes` of history ending at `end`, one sample per `step`, as OpenMetrics for
    /// `promtool tsdb create-blocks-from openmetrics`. Busy % and gauges are constant over it.
    pub fn openmetrics_history(&self, end: Timestamp, length: Duration, step: Duration) -> String {
        let step_s = step.as_secs().max(1);
        let end_s = end.as_second();
        let start_s = end_s - i64::try_from(length.as_secs()).unwrap_or(i64::MAX / 2);
        let times: Vec<i64> = (0..)
            .map(|i: i64| start_s + i * i64::try_from(step_s).unwrap_or(1))
            .take_while(|t| *t <= end_s)
            .collect();
        let snapshots: Vec<Vec<Family>> = times
            .iter()
            .map(|t| {
                #[allow(clippy::cast_precision_loss)] // seconds since a recent start: small
                let uptime = BOOT_UPTIME_SECONDS + (t - start_s) as f64;
                self.families(|node, cpu, mode| node.mode_rate(cpu, mode) * uptime)
            })
            .collect();
        let mut out = String::new();
        let Some(first) = snapshots.first() else {
            out.push_str("# EOF\n");
            return out;
        };
        for (f, family) in first.iter().enumerate() {
            let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
            let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind);
            let sample_name = sample_name(family);
            for (s, (labels, _)) in family.series.iter().enumerate() {
                for (snapshot, t) in snapshots.iter().zip(&times) {
                    let value = snapshot[f].series[s].1;
                    let _ = writeln!(out, "{sample_name}{labels} {} {t}", fmt_value(value));
                }
            }
        }
        out.push_str("# EOF\n");
        out
    }

    /// The Prometheus text exposition (0.0.4) of these series, with CPU counters from `cpu`.
    fn exposition(&self, cpu: impl Fn(&SyntheticNode, u32, &str) -> f64) -> String {
        let mut out = String::new();
        for family in self.families(cpu) {
            let name = sample_name(&family);
            let _ = writeln!(out, "# HELP {name} {}", family.help);
            let _ = writeln!(out, "# TYPE {name} {}", family.kind);
            for (labels, value) in &family.series {
                let _ = writeln!(out, "{name}{labels} {}", fmt_value(*value));
            }
        }
        out
    }

    fn families(&self, cpu: impl Fn(&SyntheticNode, u32, &str) -> f64) -> Vec<Family> {
        // The labels the shipped `node-exporter` scrape job gives each target.
        let node_exporter = |node: &SyntheticNode| {
            let mut labels = vec![
                ("instance", format!("{}:9100", node.name)),
                ("job", "node-exporter".to_string()),
            ];
            match &node.node_group {
                Some(group) => {
                    labels.push(("node_group", group.clone()));
                    labels.push(("node_role", "worker".to_string()));
                }
                None => labels.push(("node_role", "server".to_string())),
            }
            labels
        };
        let ksm = || {
            vec![
                ("instance", "kube-state-metrics:8080".to_string()),
                ("job", "kube-state-metrics".to_string()),
            ]
        };

        let mut cpu_series = Vec::new();
        let mut mem_total = Vec::new();
        let mut mem_available = Vec::new();
        let mut node_info = Vec::new();
        let mut allocatable = Vec::new();
        for node in &self.nodes {
            for n in 0..node.cpus {
                for mode in cpu_modes() {
                    let mut labels = node_exporter(node);
                    labels.push(("cpu", n.to_string()));
                    labels.push(("mode", mode.to_string()));
                    cpu_series.push((render_labels(&labels), cpu(node, n, mode)));
                }
            }
            mem_total.push((render_labels(&node_exporter(node)), node.memory_total_bytes));
            mem_available.push((
                render_labels(&node_exporter(node)),
                node.memory_available_bytes,
            ));

            let provider_id = node
                .instance_id
                .as_ref()
                .map(|id| format!("aws:///{}/{id}", node.availability_zone))
                .unwrap_or_default();
            let mut labels = ksm();
            labels.extend([
                ("node", node.name.clone()),
                (
                    "kernel_version",
                    "6.1.119-129.201.amzn2023.x86_64".to_string(),
                ),
                ("os_image", "Amazon Linux 2023".to_string()),
                (
                    "container_runtime_version",
                    "containerd://1.7.23-k3s2".to_string(),
                ),
                ("kubelet_version", "v1.33.1+k3s1".to_string()),
                ("provider_id", provider_id),
            ]);
            node_info.push((render_labels(&labels), 1.0));
            for (resource, unit, value) in [
                ("cpu", "core", node.allocatable_cpu_cores),
                ("memory", "byte", node.allocatable_memory_bytes),
                ("pods", "integer", 110.0),
            ] {
                let mut labels = ksm();
                labels.extend([
                    ("node", node.name.clone()),
                    ("resource", resource.to_string()),
                    ("unit", unit.to_string()),
                ]);
                allocatable.push((render_labels(&labels), value));
            }
        }

        let mut phases = Vec::new();
        let mut requests = Vec::new();
        for pod in &self.pods {
            let uid = pod_uid(&pod.namespace, &pod.name);
            for phase in POD_PHASES {
                let mut labels = ksm();
                labels.extend([
                    ("namespace", pod.namespace.clone()),
                    ("pod", pod.name.clone()),
                    ("uid", uid.clone()),
                    ("phase", phase.to_string()),
                ]);
                phases.push((
                    render_labels(&labels),
                    if pod.phase == phase { 1.0 } else { 0.0 },
                ));
            }
            for (resource, unit, value) in [
                ("cpu", "core", pod.cpu_request_cores),
                ("memory", "byte", pod.memory_request_bytes),
            ] {
                if value <= 0.0 {
                    continue;
                }
                let mut labels = ksm();
                labels.extend([
                    ("namespace", pod.namespace.clone()),
                    ("pod", pod.name.clone()),
                    ("uid", uid.clone()),
                    ("container", "main".to_string()),
                    ("node", pod.node.clone().unwrap_or_default()),
                    ("resource", resource.to_string()),
                    ("unit", unit.to_string()),
                ]);
                requests.push((render_labels(&labels), value));
            }
        }

        vec![
            Family {
                name: "node_cpu_seconds",
                kind: "counter",
                help: "Seconds the CPUs spent in each mode.",
                series: cpu_series,
            },
            Family {
                name: "node_memory_MemTotal_bytes",
                kind: "gauge",
                help: "Memory information field MemTotal_bytes.",
                series: mem_total,
            },
            Family {
                name: "node_memory_MemAvailable_bytes",
                kind: "gauge",
                help: "Memory information field MemAvailable_bytes.",
                series: mem_available,
            },
            Family {
                name: "kube_node_info",
                kind: "gauge",
                help: "Information about a cluster node.",
                series: node_info,
            },
            Family {
                name: "kube_node_status_allocatable",
                kind: "gauge",
                help: "The allocatable for different resources of a node that are available for scheduling.",
                series: allocatable,
            },
            Family {
                name: "kube_pod_status_phase",
                kind: "gauge",
                help: "The pods current phase.",
                series: phases,
            },
            Family {
                name: "kube_pod_container_resource_requests",
                kind: "gauge",
                help: "The number of requested request resource by a container.",
                series: requests,
            },
        ]
    }
}

fn sample_name(family: &Family) -> String {
    if family.kind == "counter" {
        format!("{}_total", family.name)
    } else {
        family.name.to_string()
    }
}

fn fmt_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_string()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        format!("{value}")
    }
}

fn render_labels(labels: &[(&str, String)]) -> String {
    let body: Vec<String> = labels
        .iter()
        .map(|(name, value)| {
            let escaped = value
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{name}=\"{escaped}\"")
        })
        .collect();
    format!("{{{}}}", body.join(","))
}

/// A stable UUID-shaped uid for a pod, so its series keep their identity across scrapes.
fn pod_uid(namespace: &str, name: &str) -> String {
    let hash = format!("{namespace}/{name}")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
    let hex = format!("{hash:016x}{:016x}", hash.rotate_left(17) ^ 0x5bd1_e995);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

// ------------------------------------------------------------------ live exporter

#[derive(Debug)]
struct ExporterState {
    metrics: ClusterMetrics,
    /// CPU counters by (node, cpu, mode), as of `updated`.
    counters: HashMap<(String, u32, &'static str), f64>,
    updated: Instant,
    /// Uptime a node's counters start from when first seen (so they continue backfilled history).
    start_uptime: f64,
}

impl ExporterState {
    /// Fold the time since the last update into the counters at the current busy %.
    fn advance(&mut self) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.updated).as_secs_f64();
        self.updated = now;
        for node in &self.metrics.nodes {
            for cpu in 0..node.cpus {
                for mode in cpu_modes() {
                    let rate = node.mode_rate(cpu, mode);
                    self.counters
                        .entry((node.name.clone(), cpu, mode))
                        .and_modify(|value| *value += rate * elapsed)
                        .or_insert(rate * self.start_uptime);
                }
            }
        }
    }

    fn render(&mut self) -> String {
        self.advance();
        let counters = &self.counters;
        self.metrics.exposition(|node, cpu, mode| {
            counters
                .get(&(node.name.clone(), cpu, mode))
                .copied()
                .unwrap_or_default()
        })
    }
}

/// An HTTP exporter on 127.0.0.1 serving [`ClusterMetrics`] at `/metrics`. CPU counters advance
/// with real time at each node's busy %; changing the busy % changes the rate from then on and
/// never makes a counter go back.
#[derive(Debug)]
pub struct SyntheticExporter {
    state: Arc<Mutex<ExporterState>>,
    address: SocketAddr,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl SyntheticExporter {
    /// Serve `metrics` on 127.0.0.1:`port` (0: any free port).
    pub async fn start(metrics: ClusterMetrics, port: u16) -> Result<Self> {
        Self::start_inner(metrics, port, BOOT_UPTIME_SECONDS).await
    }

    /// Like [`SyntheticExporter::start`], with counters that continue the history
    /// [`ClusterMetrics::openmetrics_history`] generated for `history` up to `history_end`, so
    /// Prometheus sees one unbroken counter (no reset) across backfill and scrape.
    pub async fn start_continuing(
        metrics: ClusterMetrics,
        port: u16,
        history_end: Timestamp,
        history: Duration,
    ) -> Result<Self> {
        let since_end = Timestamp::now()
            .duration_since(history_end)
            .as_secs_f64()
            .max(0.0);
        let uptime = BOOT_UPTIME_SECONDS + history.as_secs() as f64 + since_end;
        Self::start_inner(metrics, port, uptime).await
    }

    async fn start_inner(metrics: ClusterMetrics, port: u16, start_uptime: f64) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AddrInUse {
                    Error::PortInUse(port)
                } else {
                    Error::io(
                        format!("binding the synthetic exporter to 127.0.0.1:{port}"),
                        e,
                    )
                }
            })?;
        let address = listener
            .local_addr()
            .map_err(|e| Error::io("reading the synthetic exporter address", e))?;
        let state = Arc::new(Mutex::new(ExporterState {
            metrics,
            counters: HashMap::new(),
            updated: Instant::now(),
            start_uptime,
        }));
        lock(&state).advance();
        let (stop, mut stopped) = watch::channel(false);
        let router = axum::Router::new()
            .route("/metrics", axum::routing::get(serve_metrics))
            .route("/control/nodes/{node}", axum::routing::post(control_node))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "synthetic exporter stopped with an error");
            }
        });
        tracing::debug!(%address, "synthetic exporter listening");
        Ok(SyntheticExporter {
            state,
            address,
            stop,
            task: Some(task),
        })
    }

    /// `host:port`, as a Prometheus scrape target.
    pub fn target(&self) -> String {
        self.address.to_string()
    }

    /// `http://127.0.0.1:PORT/metrics`.
    pub fn url(&self) -> String {
        format!("http://{}/metrics", self.address)
    }

    /// Change the served series. Counters keep what they accumulated so far; new busy
    /// percentages apply from now on.
    pub fn update(&self, change: impl FnOnce(&mut ClusterMetrics)) {
        let mut state = lock(&self.state);
        state.advance();
        change(&mut state.metrics);
        state.advance();
    }

    /// Set one node's busy %; `false` if there is no such node.
    pub fn set_busy_percent(&self, node: &str, busy_percent: f64) -> bool {
        let mut found = false;
        self.update(|metrics| {
            if let Some(n) = metrics.nodes.iter_mut().find(|n| n.name == node) {
                n.busy_percent = busy_percent;
                found = true;
            }
        });
        found
    }

    /// Set one node's available memory; `false` if there is no such node.
    pub fn set_memory_available(&self, node: &str, bytes: f64) -> bool {
        let mut found = false;
        self.update(|metrics| {
            if let Some(n) = metrics.nodes.iter_mut().find(|n| n.name == node) {
                n.memory_available_bytes = bytes;
                found = true;
            }
        });
        found
    }

    /// What is served now.
    pub fn snapshot(&self) -> ClusterMetrics {
        lock(&self.state).metrics.clone()
    }

    /// The body `/metrics` would serve now.
    pub fn render(&self) -> String {
        lock(&self.state).render()
    }

    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
    }
}

impl Drop for SyntheticExporter {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn lock(state: &Mutex<ExporterState>) -> MutexGuard<'_, ExporterState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Body of `POST /control/nodes/{node}`: what to change about one node's load.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeControl {
    busy_percent: Option<f64>,
    memory_available_bytes: Option<f64>,
}

/// Lets a person (or a script) driving `up` change a node's load with curl.
async fn control_node(
    State(state): State<Arc<Mutex<ExporterState>>>,
    axum::extract::Path(node): axum::extract::Path<String>,
    body: String,
) -> axum::response::Response {
    use axum::http::StatusCode;
    let change: NodeControl = match serde_json::from_str(&body) {
        Ok(change) => change,
        Err(e) => {
            let hint =
                r#"body must be like {"busy_percent": 85, "memory_available_bytes": 1073741824}"#;
            return (StatusCode::BAD_REQUEST, format!("{hint}: {e}\n")).into_response();
        }
    };
    if change
        .busy_percent
        .is_some_and(|busy| !(0.0..=100.0).contains(&busy))
        || change
            .memory_available_bytes
            .is_some_and(|bytes| !bytes.is_finite() || bytes < 0.0)
    {
        return (
            StatusCode::BAD_REQUEST,
            "busy_percent must be 0-100 and memory_available_bytes >= 0\n",
        )
            .into_response();
    }
    let mut state = lock(&state);
    state.advance();
    let Some(target) = state.metrics.nodes.iter_mut().find(|n| n.name == node) else {
        return (StatusCode::NOT_FOUND, format!("no node {node}\n")).into_response();
    };
    if let Some(busy) = change.busy_percent {
        target.busy_percent = busy;
    }
    if let Some(bytes) = change.memory_available_bytes {
        target.memory_available_bytes = bytes.min(target.memory_total_bytes);
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn serve_metrics(State(state): State<Arc<Mutex<ExporterState>>>) -> impl IntoResponse {
    let body = lock(&state).render();
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        body,
    )
}

// ------------------------------------------------------------------ Prometheus process

/// How to start Prometheus.
#[derive(Debug, Clone)]
pub struct PrometheusOptions {
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// `host:port` targets scraped every `scrape_interval` (with `honor_labels`, so the
    /// exporter's `job`/`instance` labels are kept, as in the backfilled data).
    pub scrape_targets: Vec<String>,
    pub scrape_interval: Duration,
    /// OpenMetrics text turned into blocks before the start (see [`ClusterMetrics::openmetrics_history`]).
    pub backfill: Option<String>,
    /// Where the config, data and log go; a temporary directory (removed on drop) if `None`.
    pub dir: Option<PathBuf>,
}

impl Default for PrometheusOptions {
    fn default() -> Self {
        PrometheusOptions {
            port: 0,
            scrape_targets: Vec::new(),
            scrape_interval: Duration::from_secs(1),
            backfill: None,
            dir: None,
        }
    }
}

/// A running Prometheus on 127.0.0.1 with its own data directory; stopped by PID when dropped.
#[derive(Debug)]
pub struct Prometheus {
    url: String,
    http: reqwest::Client,
    // Field order matters on drop: stop the process before removing its directory.
    process: ChildProcess,
    exporter: Option<SyntheticExporter>,
    _dir: Option<tempfile::TempDir>,
}

impl Prometheus {
    /// Prometheus over the history in `openmetrics` (no scraping).
    pub async fn start_backfilled(openmetrics: &str) -> Result<Self> {
        Self::start(PrometheusOptions {
            backfill: Some(openmetrics.to_string()),
            ..PrometheusOptions::default()
        })
        .await
    }

    /// Prometheus scraping `exporter` every second; owns the exporter (see [`Prometheus::exporter`]).
    pub async fn start_scraping(exporter: SyntheticExporter) -> Result<Self> {
        let mut prometheus = Self::start(PrometheusOptions {
            scrape_targets: vec![exporter.target()],
            ..PrometheusOptions::default()
        })
        .await?;
        prometheus.exporter = Some(exporter);
        Ok(prometheus)
    }

    /// Prometheus with `history` of `metrics` backfilled up to now and a live exporter of the same
    /// series scraped every second from then on. A live scrape alone under-reads `rate(x[5m])` until
    /// five minutes of samples exist (Prometheus divides by the whole window); with the history,
    /// 5-minute queries are right at once and follow later changes as they would in production.
    pub async fn start_scraping_with_history(
        metrics: ClusterMetrics,
        history: Duration,
    ) -> Result<Self> {
        let end = Timestamp::from_second(Timestamp::now().as_second())
            .map_err(|e| Error::Invalid(format!("the current time is out of range: {e}")))?;
        let openmetrics = metrics.openmetrics_history(end, history, Duration::from_secs(15));
        let exporter = SyntheticExporter::start_continuing(metrics, 0, end, history).await?;
        let mut prometheus = Self::start(PrometheusOptions {
            scrape_targets: vec![exporter.target()],
            backfill: Some(openmetrics),
            ..PrometheusOptions::default()
        })
        .await?;
        prometheus.exporter = Some(exporter);
        Ok(prometheus)
    }

    /// Start Prometheus as `opts` says and wait until `/-/ready` answers.
    pub async fn start(opts: PrometheusOptions) -> Result<Self> {
        let (prometheus, promtool) = check_prometheus()?;
        let (temp, dir) = match &opts.dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
                (None, dir.clone())
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("smartscale-prometheus-")
                    .tempdir()
                    .map_err(|e| Error::io("creating a directory for Prometheus", e))?;
                let dir = temp.path().to_path_buf();
                (Some(temp), dir)
            }
        };
        let data = dir.join("data");
        std::fs::create_dir_all(&data)
            .map_err(|e| Error::io(format!("creating {}", data.display()), e))?;
        if let Some(openmetrics) = &opts.backfill {
            backfill(&promtool, &dir, &data, openmetrics)?;
        }
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, config_yaml(&opts))
            .map_err(|e| Error::io(format!("writing {}", config.display()), e))?;

        if opts.port != 0 {
            process::check_port_free(opts.port)?;
        }
        // Prometheus cannot report a port it picked: pick one, and retry if it was taken meanwhile.
        let attempts = if opts.port == 0 { 3 } else { 1 };
        let mut last_error = None;
        for attempt in 0..attempts {
            let port = if opts.port == 0 {
                process::free_port()?
            } else {
                opts.port
            };
            let log = dir.join(format!("prometheus-{attempt}.log"));
            let mut command = Command::new(&prometheus);
            command.args([
                format!("--config.file={}", config.display()),
                format!("--storage.tsdb.path={}", data.display()),
                // Without it, backfilled blocks older than the default 15 d are dropped at once.
                "--storage.tsdb.retention.time=3650d".to_string(),
                format!("--web.listen-address=127.0.0.1:{port}"),
                "--web.enable-lifecycle".to_string(),
            ]);
            let mut child = ChildProcess::spawn("prometheus", command, log)?;
            let url = format!("http://127.0.0.1:{port}");
            match child
                .wait_for_http(&format!("{url}/-/ready"), READY_TIMEOUT)
                .await
            {
                Ok(()) => {
                    tracing::info!(%url, pid = child.pid(), "Prometheus ready");
                    return Ok(Prometheus {
                        url,
                        http: reqwest::Client::builder()
                            .timeout(Duration::from_secs(30))
                            .no_proxy()
                            .build()
                            .map_err(|e| Error::Invalid(format!("building an HTTP client: {e}")))?,
                        process: child,
                        exporter: None,
                        _dir: temp,
                    });
                }
                Err(error) => {
                    let in_use = child.log().contains("address already in use");
                    drop(child);
                    if in_use && opts.port != 0 {
                        return Err(Error::PortInUse(port));
                    }
                    last_error = Some(error);
                    if !in_use {
                        break;
                    }
                }
            }
        }
        Err(last_error.unwrap_or_else(|| Error::Invalid("Prometheus did not start".to_string())))
    }

    /// `http://127.0.0.1:PORT`, the value for `prometheus.url`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Prometheus's own log.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// `Ok` while the process runs; its log otherwise.
    pub fn check_running(&mut self) -> Result<()> {
        self.process.check_running()
    }

    /// The exporter it scrapes, when started with [`Prometheus::start_scraping`].
    pub fn exporter(&self) -> Option<&SyntheticExporter> {
        self.exporter.as_ref()
    }

    /// An instant query evaluated now.
    pub async fn query(&self, promql: &str) -> Result<Vec<Sample>> {
        self.query_inner(promql, None).await
    }

    /// An instant query evaluated at `at` (e.g. the end of backfilled history).
    pub async fn query_at(&self, promql: &str, at: Timestamp) -> Result<Vec<Sample>> {
        self.query_inner(promql, Some(at)).await
    }

    async fn query_inner(&self, promql: &str, at: Option<Timestamp>) -> Result<Vec<Sample>> {
        let url = format!("{}/api/v1/query", self.url);
        let mut params = vec![("query", promql.to_string())];
        if let Some(at) = at {
            params.push((
                "time",
                format!("{:.3}", at.as_millisecond() as f64 / 1000.0),
            ));
        }
        let http_error = |message: String| Error::Http {
            url: url.clone(),
            message,
        };
        let with_params = url::Url::parse_with_params(&url, &params)
            .map_err(|e| http_error(format!("bad URL: {e}")))?;
        let response = self
            .http
            .get(with_params)
            .send()
            .await
            .map_err(|e| http_error(e.to_string()))?;
        let status = response.status();
        let body: serde_json::Value = response
            .json()
            .await
            .map_err(|e| http_error(format!("{status}: unreadable answer: {e}")))?;
        if body["status"] != "success" {
            return Err(http_error(format!(
                "query {promql:?} failed ({status}): {}: {}",
                body["errorType"].as_str().unwrap_or("?"),
                body["error"].as_str().unwrap_or("?")
            )));
        }
        parse_result(&body["data"])
            .map_err(|message| http_error(format!("query {promql:?}: {message}")))
    }

    /// Poll `promql` until `predicate` holds for its result (returned), failing with
    /// [`Error::Timeout`] (which quotes the last result) after `timeout`.
    pub async fn wait_until(
        &self,
        promql: &str,
        predicate: impl Fn(&[Sample]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<Sample>> {
        let started = Instant::now();
        loop {
            let result = self.query(promql).await?;
            if predicate(&result) {
                return Ok(result);
            }
            if started.elapsed() >= timeout {
                return Err(Error::Timeout {
                    what: format!("{promql} to satisfy the predicate (last result: {result:?})"),
                    seconds: timeout.as_secs_f64(),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Stop Prometheus (SIGTERM, then SIGKILL) and the exporter, without blocking the runtime.
    pub async fn shutdown(mut self) {
        if let Some(exporter) = self.exporter.take() {
            exporter.shutdown().await;
        }
        let Prometheus { process, _dir, .. } = self;
        process.shutdown().await;
        drop(_dir);
    }
}

fn backfill(promtool: &Path, dir: &Path, data: &Path, openmetrics: &str) -> Result<()> {
    let input = dir.join("backfill.om");
    std::fs::write(&input, openmetrics)
        .map_err(|e| Error::io(format!("writing {}", input.display()), e))?;
    let output = Command::new(promtool)
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&input)
        .arg(data)
        .output()
        .map_err(|e| Error::io(format!("running {}", promtool.display()), e))?;
    if !output.status.success() {
        return Err(Error::Invalid(format!(
            "promtool tsdb create-blocks-from openmetrics failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(())
}

fn config_yaml(opts: &PrometheusOptions) -> String {
    let interval = format!("{}ms", opts.scrape_interval.as_millis().max(100));
    let mut yaml = format!(
        "global:\n  scrape_interval: {interval}\n  scrape_timeout: {interval}\n  evaluation_interval: {interval}\n"
    );
    if !opts.scrape_targets.is_empty() {
        let targets: Vec<String> = opts
            .scrape_targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect();
        let _ = write!(
            yaml,
            "scrape_configs:\n  - job_name: smartscale-synthetic\n    honor_labels: true\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
    }
    yaml
}

/// `data` of an instant query answer: a vector or a scalar.
fn parse_result(data: &serde_json::Value) -> std::result::Result<Vec<Sample>, String> {
    let value_of = |pair: &serde_json::Value| -> std::result::Result<f64, String> {
        pair.get(1)
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| format!("no value in {pair}"))?
            .parse::<f64>()
            .map_err(|e| format!("bad value in {pair}: {e}"))
    };
    let labels_of = |metric: &serde_json::Value| -> BTreeMap<String, String> {
        metric
            .as_object()
            .map(|labels| {
                labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default()
    };
    match data["resultType"].as_str() {
        Some("vector") => data["result"]
            .as_array()
            .ok_or("vector without result")?
            .iter()
            .map(|series| Ok((labels_of(&series["metric"]), value_of(&series["value"])?)))
            .collect(),
        Some("scalar") => Ok(vec![(BTreeMap::new(), value_of(&data["result"])?)]),
        other => Err(format!("unsupported result type {other:?}")),
    }
}
