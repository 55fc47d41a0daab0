//! The controller's configuration: YAML file + `SMARTSCALE_<PATH>` env overrides, validated so
//! that `check` lists every problem at once. README "Configuration" documents every key.

mod raw;
mod validate;

use crate::policy::{PolicyConfig, Resources};
use crate::simulator::SimOptions;
use crate::{Error, Result};
pub use raw::Queries;
use raw::{Raw, RawAllocatable, RawCustom, RawGroup};
use smartscale_common::logging::LogFormat;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Env vars with the prefix that are not config paths.
pub const ENV_PREFIX: &str = "SMARTSCALE_";
pub const TOKEN_ENV: &str = "SMARTSCALE_API_TOKEN";
/// Lambda mode (README, "Lambda mode"): the SSM parameter holding the config file.
pub const CONFIG_PARAMETER_ENV: &str = "SMARTSCALE_CONFIG_PARAMETER";
/// Lambda mode: the config file in the code package, used when the parameter cannot be read.
pub const CONFIG_FILE_ENV: &str = "SMARTSCALE_CONFIG_FILE";
/// Lambda mode: the Secrets Manager secret with the ServiceAccount token, CA and API server URL.
pub const KUBERNETES_SECRET_ENV: &str = "SMARTSCALE_KUBERNETES_SECRET";
const NOT_CONFIG: &[&str] = &[
    TOKEN_ENV,
    CONFIG_PARAMETER_ENV,
    CONFIG_FILE_ENV,
    KUBERNETES_SECRET_ENV,
];
/// The seed's CloudWatch namespace.
pub const CLOUDWATCH_NAMESPACE: &str = "SmartScale/Autoscaler";

// ---- the validated configuration ----

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub cluster_id: String,
    pub interval: Duration,
    pub dry_run: bool,
    pub log_format: LogFormat,
    pub prometheus: PrometheusConfig,
    pub custom_signals: Vec<CustomSignal>,
    pub state: StateConfig,
    pub node_groups: Vec<NodeGroup>,
    pub policy: PolicyConfig,
    pub api: ApiConfig,
    pub notifications: Notifications,
    pub cloudwatch: CloudWatchConfig,
    pub prices: PricesConfig,
    /// The capacity model's choices (`policy.scale_up.expander`, `policy.scale_down.skip_*`).
    pub capacity: CapacityConfig,
    pub simulate: SimOptions,
    /// Not wrong, but worth a word at start-up (unknown `SMARTSCALE_*` variables).
    pub warnings: Vec<String>,
}

impl Config {
    /// The worker groups' names, in config order.
    pub fn asg_names(&self) -> Vec<String> {
        self.node_groups
            .iter()
            .map(|g| g.asg_name.clone())
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PrometheusConfig {
    pub url: url::Url,
    pub timeout: Duration,
    pub queries: Queries,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CustomSignal {
    pub name: String,
    pub query: String,
    pub scale_up_above: Option<f64>,
    pub scale_down_below: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StateConfig {
    pub table: String,
    pub lease_ttl: Duration,
    pub history_retention: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeGroup {
    pub asg_name: String,
    pub min: u32,
    pub max: u32,
    pub instance_type: Option<String>,
    /// One node's allocatable; when absent, learned from the group's Ready nodes.
    pub allocatable: Option<Resources>,
    pub hourly_price: Option<f64>,
    /// For the `priority` expander: the highest-priority group that can host the pods grows.
    pub priority: i32,
    /// Suspend the group's `AZRebalance` process (so AWS never terminates an instance of its
    /// own choosing after a scale-down); when it cannot be suspended, no scale-down.
    pub suspend_az_rebalance: bool,
    /// Protect every instance from scale-in, so that only chosen terminations remove instances.
    pub protect_from_scale_in: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Notifications {
    pub webhook_url: Option<url::Url>,
    /// SNS topic for the same notifications, with message attributes for filtering.
    pub sns_topic_arn: Option<String>,
    /// Consecutive failed cycles before an error notification.
    pub error_threshold: u32,
}

/// Opt-in CloudWatch metrics: one PutMetricData per cycle (`crate::cloudwatch`).
#[derive(Debug, Clone, PartialEq)]
pub struct CloudWatchConfig {
    pub enabled: bool,
    pub namespace: String,
}

/// Where workers' prices come from (`crate::signals::prices`).
#[derive(Debug, Clone, PartialEq)]
pub struct PricesConfig {
    /// Ask the AWS Price List API (on-demand) and DescribeSpotPriceHistory (spot); `false`
    /// keeps to each group's `hourly_price`.
    pub lookup: bool,
    /// How long a looked-up price is used before it is asked again.
    pub refresh: Duration,
}

/// How the capacity model chooses among groups and which pods keep their node
/// (cluster-autoscaler's `--expander` and `--skip-nodes-with-*` flags, same defaults).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CapacityConfig {
    pub expander: crate::capacity::Expander,
    pub scale_down: crate::capacity::ScaleDownConfig,
}

/// What the config is for: the controller needs its cluster, Prometheus and table; the
/// digital twin only the policy, node group and `simulate` sections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Controller,
    Simulation,
}

fn template() -> serde_json::Value {
    let raw = Raw {
        custom_signals: vec![RawCustom::default()],
        node_groups: vec![RawGroup {
            allocatable: Some(RawAllocatable::default()),
            ..RawGroup::default()
        }],
        ..Raw::default()
    };
    serde_json::to_value(raw).unwrap_or_default()
}

/// Reads and validates a config file with the process environment's overrides.
pub fn load(path: &Path, purpose: Purpose) -> Result<Config> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadFile {
        path: path.display().to_string(),
        source,
    })?;
    let env: Vec<(String, String)> = std::env::vars().collect();
    parse(&path.display().to_string(), &text, &env, purpose).map_err(Error::Config)
}

/// The built-in configuration the twin uses when given no file.
pub fn simulation_default() -> Config {
    parse("(built-in)", "", &[], Purpose::Simulation).unwrap_or_else(|_| unreachable_default())
}

pub(super) fn unreachable_default() -> Config {
    // `parse` of an empty document for simulation has no problems; keep a typed fallback anyway.
    Config {
        cluster_id: "simulation".into(),
        interval: Duration::from_secs(30),
        dry_run: true,
        log_format: LogFormat::Text,
        prometheus: PrometheusConfig {
            url: url::Url::parse("http://127.0.0.1:9090").expect("static URL"),
            timeout: Duration::from_secs(5),
            queries: Queries::default(),
        },
        custom_signals: vec![],
        state: StateConfig {
            table: "simulation".into(),
            lease_ttl: Duration::from_secs(90),
            history_retention: Duration::from_secs(86_400),
        },
        node_groups: vec![],
        policy: PolicyConfig::default(),
        api: ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            token_file: None,
        },
        notifications: Notifications {
            webhook_url: None,
            sns_topic_arn: None,
            error_threshold: 3,
        },
        cloudwatch: CloudWatchConfig {
            enabled: false,
            namespace: CLOUDWATCH_NAMESPACE.into(),
        },
        prices: PricesConfig {
            lookup: true,
            refresh: Duration::from_secs(3600),
        },
        capacity: CapacityConfig::default(),
        simulate: SimOptions::default(),
        warnings: vec![],
    }
}

/// Parses and validates. On failure, returns every problem found, one line each.
pub fn parse(
    source: &str,
    yaml: &str,
    env: &[(String, String)],
    purpose: Purpose,
) -> std::result::Result<Config, Vec<String>> {
    let env: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| !k.starts_with("SMARTSCALE_AGENT_"))
        .cloned()
        .collect();
    let loaded = smartscale_common::config::load::<Raw>(
        source,
        yaml,
        &env,
        ENV_PREFIX,
        NOT_CONFIG,
        &template(),
    );
    let mut problems = loaded.problems;
    let Some(raw) = loaded.value else {
        return Err(problems);
    };
    let mut cfg = validate::validate(raw, purpose, &mut problems);
    cfg.warnings = loaded.warnings;
    if problems.is_empty() {
        Ok(cfg)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests;
