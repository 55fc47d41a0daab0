//! `smartscale-testworld up`: the whole test world on 127.0.0.1 for a person or a script.
//!
//! Starts the AWS model (moto + lifecycle hooks), one fake IMDS per instance (listed by a
//! directory), the real Kubernetes control plane (etcd, kube-apiserver with TLS and Node,RBAC
//! authorization, kube-controller-manager, kube-scheduler) with a K3s server's join endpoint and
//! simulated kubelets, a synthetic exporter mirroring the cluster, and Prometheus scraping it;
//! prints `export` lines; runs until SIGINT/SIGTERM, then stops every child by PID. Installs
//! nothing: a missing dependency or a busy port is one line on stderr and exit status 1.
//!
//! `smartscale-testworld k3s-agent`: the fake k3s the SmartScale agent starts at join in the
//! test world (tests/src/kubernetes/k3s_agent.rs).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;
use smartscale_testworld::aws::{self, AwsModel};
use smartscale_testworld::imds::ImdsFleet;
use smartscale_testworld::kubernetes::k3s_agent::{self, K3sAgentArgs};
use smartscale_testworld::kubernetes::{ControlPlane, ControlPlaneOptions, K3sOptions, K3sServer};
use smartscale_testworld::process;
use smartscale_testworld::prometheus::{
    self, ClusterMetrics, Prometheus, PrometheusOptions, SyntheticExporter, SyntheticNode,
    SyntheticPod,
};
use smartscale_testworld::world::{self, Setup, WorldOptions};
use smartscale_testworld::{Error, Result};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Parser)]
#[command(
    name = "smartscale-testworld",
    version,
    about = "SmartScale's test world on 127.0.0.1"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start everything, print `export NAME=value` lines, run until Ctrl-C or SIGTERM.
    Up {
        /// Use fixed ports: AWS model N, Kubernetes API N+1, Prometheus N+2, exporter N+3,
        /// IMDS directory N+4 (per-instance IMDS ports are always picked freely). Default: free ports.
        #[arg(long, value_name = "N")]
        port_base: Option<u16>,
        /// Keep the kubeconfig, Prometheus data and logs here (default: a temporary directory
        /// removed at exit).
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// The region printed as AWS_REGION.
        #[arg(long, default_value = aws::DEFAULT_REGION)]
        region: String,
        /// Start the services only: no worker group, state table or server node.
        #[arg(long)]
        empty: bool,
    },
    /// The fake k3s agent: join through the world's K3s server with the config the SmartScale
    /// agent wrote, write the kubelet kubeconfig, exit 0 (1 when the join is refused).
    K3sAgent {
        #[arg(long, default_value = "/etc/rancher/k3s/config.yaml")]
        config: PathBuf,
        #[arg(long)]
        kubelet_kubeconfig: PathBuf,
        /// K3s keeps it in /etc/rancher/node/password.
        #[arg(long)]
        node_password_file: PathBuf,
        #[arg(long, default_value = "2")]
        cpu: String,
        #[arg(long, default_value = "4Gi")]
        memory: String,
    },
}

/// Offsets from `--port-base`, in the order documented on the flag.
const AWS_OFFSET: u16 = 0;
const API_OFFSET: u16 = 1;
const PROMETHEUS_OFFSET: u16 = 2;
const EXPORTER_OFFSET: u16 = 3;
const DIRECTORY_OFFSET: u16 = 4;
/// The ready-made cluster's worker group and state table.
const DEMO_ASG: &str = "smartscale-workers";
const DEMO_TABLE: &str = "smartscale-state";
/// How often the exporter copies nodes and pods from the fake API.
const MIRROR_INTERVAL: Duration = Duration::from_secs(1);
/// CPU load a new node reports until someone changes it on the exporter.
const DEFAULT_BUSY_PERCENT: f64 = 20.0;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("smartscale-testworld: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Up {
            port_base,
            state_dir,
            region,
            empty,
        } => runtime.block_on(up(port_base, state_dir, &region, empty)),
        Command::K3sAgent {
            config,
            kubelet_kubeconfig,
            node_password_file,
            cpu,
            memory,
        } => runtime.block_on(k3s_agent::run(&K3sAgentArgs {
            config,
            kubelet_kubeconfig,
            node_password_file,
            cpu,
            memory,
        })),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smartscale-testworld: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Fixed ports from `--port-base`, or 0 everywhere (free ports).
#[derive(Debug, Clone, Copy)]
struct Ports(Option<u16>);

impl Ports {
    fn new(base: Option<u16>) -> Result<Self> {
        if let Some(base) = base
            && (base == 0 || base.checked_add(DIRECTORY_OFFSET).is_none())
        {
            return Err(Error::Invalid(format!(
                "--port-base must be between 1 and {} (it uses N..N+{DIRECTORY_OFFSET})",
                u16::MAX - DIRECTORY_OFFSET
            )));
        }
        Ok(Ports(base))
    }

    fn get(self, offset: u16) -> u16 {
        self.0.map_or(0, |base| base + offset)
    }

    /// Every fixed port must be free before anything starts, so a clash is one line, not a
    /// half-started world.
    fn check_free(self) -> Result<()> {
        if let Some(base) = self.0 {
            for offset in 0..=DIRECTORY_OFFSET {
                process::check_port_free(base + offset)?;
            }
        }
        Ok(())
    }
}

async fn up(
    port_base: Option<u16>,
    state_dir: Option<PathBuf>,
    region: &str,
    empty: bool,
) -> Result<()> {
    // Dependencies and ports first: nothing starts unless everything can.
    aws::check_python()?;
    prometheus::check_prometheus()?;
    let ports = Ports::new(port_base)?;
    ports.check_free()?;

    let (_temp, state) = state_directory(state_dir)?;
    let mut model = AwsModel::start_with(ports.get(AWS_OFFSET), Some(&state)).await?;
    let fleet = ImdsFleet::start(model.client().clone(), ports.get(DIRECTORY_OFFSET)).await?;
    let plane = ControlPlane::start(ControlPlaneOptions {
        dir: Some(state.join("kubernetes")),
        api_port: ports.0.map(|_| ports.get(API_OFFSET)),
        ..ControlPlaneOptions::default()
    })
    .await?;
    let k3s = K3sServer::start(
        &plane,
        K3sOptions {
            tokens: vec![world::AGENT_TOKEN.into()],
            pod_start_delay: Duration::from_secs(1),
            ..K3sOptions::default()
        },
    )?;
    let (k3s_url, k3s_endpoint) = k3s.serve().await?;
    let kubeconfig = plane.admin_kubeconfig();

    let exporter = Arc::new(
        SyntheticExporter::start(ClusterMetrics::default(), ports.get(EXPORTER_OFFSET)).await?,
    );
    let mirror = tokio::spawn(mirror_cluster(plane.admin().clone(), exporter.clone()));
    let mut prometheus = Prometheus::start(PrometheusOptions {
        port: ports.get(PROMETHEUS_OFFSET),
        scrape_targets: vec![exporter.target()],
        dir: Some(state.join("prometheus")),
        ..PrometheusOptions::default()
    })
    .await?;

    // A small cluster to point the controller and agents at (unless --empty): the state table,
    // the K3s server node, the shipped manifests (the controller's ServiceAccount and RBAC), two
    // workers in an ASG with lifecycle hooks that join as nodes, and a controller config for it.
    let controller_kubeconfig = state.join("controller.kubeconfig");
    let (sync, controller_config) = if empty {
        (None, None)
    } else {
        let kube = plane.admin().clone();
        let sdk = model.sdk_config(region);
        let autoscaling = aws_sdk_autoscaling::Client::new(&sdk);
        let setup = Setup {
            model: model.client(),
            autoscaling: &autoscaling,
            dynamodb: &aws_sdk_dynamodb::Client::new(&sdk),
            kube: &kube,
            plane: &plane,
            k3s: &k3s,
            region,
            asg_name: DEMO_ASG,
            table: DEMO_TABLE,
        };
        let opts = WorldOptions::default();
        setup.create(&opts, &controller_kubeconfig).await?;
        let sync = world::spawn_instance_sync(world::InstanceSync {
            model: model.client().clone(),
            k3s: k3s.clone(),
            kube,
            autoscaling,
            asg: DEMO_ASG.to_string(),
            cpu: opts.cpu,
            memory: opts.memory,
            complete_terminations: false,
        });
        let path = state.join("controller.yaml");
        let text =
            world::controller_config_text("local", DEMO_TABLE, DEMO_ASG, prometheus.url(), "");
        std::fs::write(&path, text).map_err(|e| Error::io("writing controller.yaml", e))?;
        (Some(sync), Some(path))
    };
    let mut plane = plane;

    print_exports(&Exports {
        aws_endpoint: model.endpoint(),
        region,
        kubeconfig: &kubeconfig,
        prometheus: prometheus.url(),
        imds_directory: &fleet.directory_url(),
        exporter: &exporter.url(),
        state: &state,
        aws_pid: model.pid(),
        prometheus_pid: prometheus.pid(),
        controller_config: controller_config.as_deref(),
        controller_kubeconfig: controller_config
            .as_ref()
            .map(|_| controller_kubeconfig.as_path()),
        k3s_url: &k3s_url,
    })?;

    let outcome = wait_for_stop(&mut model, &mut prometheus, &mut plane).await;

    // Stop in reverse order of dependence; children by PID (SIGTERM, then SIGKILL).
    if let Some(sync) = sync {
        sync.abort();
    }
    mirror.abort();
    k3s_endpoint.abort();
    drop(k3s);
    prometheus.shutdown().await;
    plane.shutdown().await;
    model.shutdown().await;
    fleet.shutdown().await;
    if let Ok(exporter) = Arc::try_unwrap(exporter) {
        exporter.shutdown().await;
    }
    outcome
}

/// The state directory: `--state-dir` (created if needed) or a temporary one removed at exit.
fn state_directory(requested: Option<PathBuf>) -> Result<(Option<tempfile::TempDir>, PathBuf)> {
    match requested {
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
            let dir = dir
                .canonicalize()
                .map_err(|e| Error::io(format!("resolving {}", dir.display()), e))?;
            Ok((None, dir))
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("smartscale-testworld-")
                .tempdir()
                .map_err(|e| Error::io("creating a state directory", e))?;
            let dir = temp.path().to_path_buf();
            Ok((Some(temp), dir))
        }
    }
}

/// Run until SIGINT/SIGTERM (`Ok`) or until a child dies (`Err` with its log).
async fn wait_for_stop(
    model: &mut AwsModel,
    prometheus: &mut Prometheus,
    plane: &mut ControlPlane,
) -> Result<()> {
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|e| Error::io("listening for SIGINT", e))?;
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|e| Error::io("listening for SIGTERM", e))?;
    let mut health = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = interrupt.recv() => {
                tracing::info!("SIGINT: stopping the test world");
                return Ok(());
            }
            _ = terminate.recv() => {
                tracing::info!("SIGTERM: stopping the test world");
                return Ok(());
            }
            _ = health.tick() => {
                model.check_running()?;
                prometheus.check_running()?;
                plane.check_running()?;
            }
        }
    }
}

struct Exports<'a> {
    aws_endpoint: &'a str,
    region: &'a str,
    kubeconfig: &'a Path,
    prometheus: &'a str,
    imds_directory: &'a str,
    exporter: &'a str,
    state: &'a Path,
    aws_pid: u32,
    prometheus_pid: u32,
    controller_config: Option<&'a Path>,
    controller_kubeconfig: Option<&'a Path>,
    k3s_url: &'a str,
}

fn print_exports(e: &Exports<'_>) -> Result<()> {
    let kubeconfig = e.kubeconfig.display().to_string();
    let pid = std::process::id().to_string();
    // Our own variables are TESTWORLD_*: SMARTSCALE_* is the controller's config namespace, and it
    // rejects names that match no key.
    let controller_kubeconfig = e
        .controller_kubeconfig
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let vars: [(&str, &str); 14] = [
        ("AWS_ENDPOINT_URL", e.aws_endpoint),
        ("AWS_REGION", e.region),
        ("AWS_DEFAULT_REGION", e.region),
        ("AWS_ACCESS_KEY_ID", aws::ACCESS_KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", aws::SECRET_ACCESS_KEY),
        ("KUBECONFIG", &kubeconfig),
        ("PROMETHEUS_URL", e.prometheus),
        ("SMARTSCALE_PROMETHEUS_URL", e.prometheus),
        ("TESTWORLD_IMDS_DIRECTORY", e.imds_directory),
        ("TESTWORLD_EXPORTER_URL", e.exporter),
        ("TESTWORLD_K3S_URL", e.k3s_url),
        ("TESTWORLD_CONTROLLER_KUBECONFIG", &controller_kubeconfig),
        (
            "TESTWORLD_AWS_CONTROL",
            &format!("{}/_smartscale", e.aws_endpoint),
        ),
        ("TESTWORLD_PID", &pid),
    ];
    let mut out = String::new();
    out.push_str(&format!(
        "# SmartScale test world is up on 127.0.0.1 (state and logs in {}; AWS model pid {}, Prometheus pid {}).\n\
         # Use it: paste these lines into a shell, or run `smartscale-testworld up > world.env &` then `. ./world.env`.\n\
         # An instance's IMDS: export AWS_EC2_METADATA_SERVICE_ENDPOINT=\"$(curl -s \"$TESTWORLD_IMDS_DIRECTORY\" | jq -r '.[\"i-...\"]')\".\n\
         # A node's load (nodes mirror the Kubernetes API): curl -X POST \"${{TESTWORLD_EXPORTER_URL%/metrics}}/control/nodes/NODE\" -d '{{\"busy_percent\": 85}}'.\n\
         # A spot notice: curl -X POST \"$TESTWORLD_IMDS_DIRECTORY/i-.../spot-instance-action\" (also /rebalance, /availability).\n\
         # Model clock: curl -X POST \"$TESTWORLD_AWS_CONTROL/clock/advance\" -d '{{\"seconds\": 300}}'.\n\
         # Stop it with Ctrl-C or: kill \"$TESTWORLD_PID\".\n",
        e.state.display(),
        e.aws_pid,
        e.prometheus_pid,
    ));
    if let Some(cfg) = e.controller_config {
        out.push_str(&format!(
            "# A worker group `{DEMO_ASG}` (2 nodes, lifecycle hooks) and table `{DEMO_TABLE}` are ready; try:\n\
             #   KUBECONFIG=\"$TESTWORLD_CONTROLLER_KUBECONFIG\" smartscale-controller --config {} once   (or `run`)\n\
             # (KUBECONFIG is the admin's, for kubectl; the controller runs as its ServiceAccount.)\n",
            cfg.display()
        ));
    }
    for (name, value) in vars {
        out.push_str(&format!("export {name}={}\n", shell_quote(value)));
    }
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| Error::io("writing the export lines", e))
}

/// `value` as one shell word (single-quoted unless plainly safe).
fn shell_quote(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
    if plain {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\'', r"'\''"))
    }
}

/// Keep the exporter's series in step with the cluster: kube-state-metrics' view of its
/// nodes and pods, and a node-exporter per node (busy % and free memory are the exporter's own,
/// set with [`SyntheticExporter::set_busy_percent`] and friends).
async fn mirror_cluster(admin: kube::Client, exporter: Arc<SyntheticExporter>) {
    let mut tick = tokio::time::interval(MIRROR_INTERVAL);
    let (node_api, pod_api) = (Api::<Node>::all(admin.clone()), Api::<Pod>::all(admin));
    loop {
        tick.tick().await;
        let (Ok(nodes), Ok(pods)) = (
            node_api.list(&Default::default()).await,
            pod_api.list(&Default::default()).await,
        ) else {
            continue;
        };
        let (nodes, pods) = (nodes.items, pods.items);
        exporter.update(|metrics| {
            let previous = std::mem::take(&mut metrics.nodes);
            metrics.nodes = nodes
                .iter()
                .filter_map(|node| synthetic_node(node, &previous))
                .collect();
            metrics.pods = pods.iter().filter_map(synthetic_pod).collect();
        });
    }
}

fn synthetic_node(node: &Node, previous: &[SyntheticNode]) -> Option<SyntheticNode> {
    let name = node.metadata.name.clone()?;
    let status = node.status.as_ref();
    let quantity = |map: Option<
        &std::collections::BTreeMap<
            String,
            k8s_openapi::apimachinery::pkg::api::resource::Quantity,
        >,
    >,
                    key: &str| {
        map.and_then(|m| m.get(key))
            .and_then(|q| parse_quantity(&q.0))
    };
    let capacity = status.and_then(|s| s.capacity.as_ref());
    let allocatable = status.and_then(|s| s.allocatable.as_ref());
    let cpu = quantity(capacity, "cpu").unwrap_or(2.0);
    let memory = quantity(capacity, "memory").unwrap_or(4.0 * 1024.0 * 1024.0 * 1024.0);
    // providerID is aws:///<az>/<instance-id>.
    let provider = node
        .spec
        .as_ref()
        .and_then(|s| s.provider_id.clone())
        .unwrap_or_default();
    let mut parts = provider.trim_start_matches("aws:///").split('/');
    let (az, instance) = (parts.next().unwrap_or_default(), parts.next());

    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // a node's CPU count
    let cpus = cpu.ceil().max(1.0) as u32;
    let mut synthetic = SyntheticNode::new(name.clone(), cpus, DEFAULT_BUSY_PERCENT)
        .with_memory(memory, memory * 0.6);
    let labels = node.metadata.labels.clone().unwrap_or_default();
    match labels.get("smartscale.io/node-group") {
        Some(group) => synthetic.node_group = Some(group.clone()),
        None => synthetic = synthetic.server(),
    }
    if let Some(instance) = instance.filter(|id| id.starts_with("i-")) {
        synthetic = synthetic.with_instance(instance, az);
    }
    synthetic.allocatable_cpu_cores = quantity(allocatable, "cpu").unwrap_or(cpu);
    synthetic.allocatable_memory_bytes = quantity(allocatable, "memory").unwrap_or(memory * 0.9);
    if let Some(old) = previous.iter().find(|old| old.name == name) {
        synthetic.busy_percent = old.busy_percent;
        synthetic.memory_available_bytes = old.memory_available_bytes.min(memory);
    }
    Some(synthetic)
}

fn synthetic_pod(pod: &Pod) -> Option<SyntheticPod> {
    let name = pod.metadata.name.clone()?;
    let spec = pod.spec.as_ref();
    let (mut cpu, mut memory) = (0.0, 0.0);
    for container in spec.map(|s| s.containers.as_slice()).unwrap_or_default() {
        let requests = container
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref());
        cpu += requests
            .and_then(|r| r.get("cpu"))
            .and_then(|q| parse_quantity(&q.0))
            .unwrap_or(0.0);
        memory += requests
            .and_then(|r| r.get("memory"))
            .and_then(|q| parse_quantity(&q.0))
            .unwrap_or(0.0);
    }
    Some(SyntheticPod {
        namespace: pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_string()),
        name,
        node: spec.and_then(|s| s.node_name.clone()),
        phase: pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_else(|| "Pending".to_string()),
        cpu_request_cores: cpu,
        memory_request_bytes: memory,
    })
}

/// A Kubernetes quantity (`500m`, `2`, `4Gi`, `1e3`) as a number of base units.
fn parse_quantity(text: &str) -> Option<f64> {
    const SUFFIXES: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("Ei", 1_152_921_504_606_846_976.0),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let text = text.trim();
    for (suffix, factor) in SUFFIXES {
        if let Some(number) = text.strip_suffix(suffix) {
            return number.parse::<f64>().ok().map(|n| n * factor);
        }
    }
    text.parse::<f64>().ok().filter(|n| n.is_finite())
}

#[cfg(test)]
mod tests {
    use super::{parse_quantity, shell_quote};

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("4Gi"), Some(4.0 * 1024.0 * 1024.0 * 1024.0));
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        assert_eq!(parse_quantity("lots"), None);
    }

    #[test]
    fn quoting() {
        assert_eq!(
            shell_quote("http://127.0.0.1:5000"),
            "http://127.0.0.1:5000"
        );
        assert_eq!(shell_quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
