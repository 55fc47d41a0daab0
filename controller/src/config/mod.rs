//! The controller's configuration: YAML file + `SMARTSCALE_<PATH>` env overrides, validated so
//! that `check` lists every problem at once. README "Configuration" documents every key.

use crate::policy::{PolicyConfig, Resources};
use crate::simulator::SimOptions;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use smartscale_common::Dur;
use smartscale_common::logging::LogFormat;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Env vars with the prefix that are not config paths.
pub const ENV_PREFIX: &str = "SMARTSCALE_";
pub const TOKEN_ENV: &str = "SMARTSCALE_API_TOKEN";
const NOT_CONFIG: &[&str] = &[TOKEN_ENV];

// ---- the file as written (everything optional or defaulted, so every problem can be found) ----

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
struct Raw {
    cluster_id: Option<String>,
    interval: Dur,
    dry_run: bool,
    log_format: LogFormat,
    prometheus: RawPrometheus,
    custom_signals: Vec<RawCustom>,
    state: RawState,
    node_groups: Vec<RawGroup>,
    policy: RawPolicy,
    api: RawApi,
    notifications: RawNotifications,
    simulate: SimOptions,
}

impl Default for Raw {
    fn default() -> Self {
        Raw {
            cluster_id: None,
            interval: Dur::secs(30),
            dry_run: false,
            log_format: LogFormat::Text,
            prometheus: RawPrometheus::default(),
            custom_signals: vec![],
            state: RawState::default(),
            node_groups: vec![],
            policy: RawPolicy::default(),
            api: RawApi::default(),
            notifications: RawNotifications::default(),
            simulate: SimOptions::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
struct RawPrometheus {
    url: Option<String>,
    timeout: Dur,
    queries: Queries,
}

impl Default for RawPrometheus {
    fn default() -> Self {
        RawPrometheus {
            url: None,
            timeout: Dur::secs(5),
            queries: Queries::default(),
        }
    }
}

/// PromQL for the built-in signals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Queries {
    /// The corrected query: busy = 1 - idle share, averaged over every CPU (DESIGN.md).
    pub cpu: String,
    pub memory: String,
    pub pending_pods: String,
    pub nodes: String,
}

impl Default for Queries {
    fn default() -> Self {
        Queries {
            cpu: r#"(1 - avg(rate(node_cpu_seconds_total{mode="idle"}[5m]))) * 100"#.into(),
            memory: "(1 - avg(node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes)) * 100"
                .into(),
            pending_pods: r#"sum(kube_pod_status_phase{phase="Pending"})"#.into(),
            nodes: "count(kube_node_info)".into(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct RawCustom {
    name: Option<String>,
    query: Option<String>,
    scale_up_above: Option<f64>,
    scale_down_below: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
struct RawState {
    table: Option<String>,
    lease_ttl: Dur,
    history_retention: Dur,
}

impl Default for RawState {
    fn default() -> Self {
        RawState {
            table: None,
            lease_ttl: Dur::secs(90),
            history_retention: Dur::secs(30 * 86_400),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct RawGroup {
    asg_name: Option<String>,
    min: Option<i64>,
    max: Option<i64>,
    instance_type: Option<String>,
    allocatable: Option<RawAllocatable>,
    hourly_price: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct RawAllocatable {
    cpu: Option<f64>,
    memory_gib: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
struct RawPolicy {
    scale_up: RawScaleUp,
    scale_down: RawScaleDown,
    cooldown: RawCooldown,
    max_node_provision_time: Dur,
}

impl Default for RawPolicy {
    fn default() -> Self {
        let d = PolicyConfig::default();
        RawPolicy {
            scale_up: RawScaleUp {
                cpu_above: d.cpu_above,
                cpu_checks: d.cpu_checks as i64,
                memory_above: d.memory_above,
                pending_pods: d.pending_pods,
                pending_pods_binpack: d.pending_pods_binpack,
            },
            scale_down: RawScaleDown {
                cpu_below: d.cpu_below,
                memory_below: d.memory_below,
                sustained: Dur(d.sustained),
                consolidate: d.consolidate,
            },
            cooldown: RawCooldown {
                after_scale_up: Dur(d.after_scale_up),
                after_scale_down: Dur(d.after_scale_down),
                applies_to_pending_pods: d.cooldown_applies_to_pending,
            },
            max_node_provision_time: Dur(d.max_node_provision_time),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
struct RawScaleUp {
    cpu_above: f64,
    cpu_checks: i64,
    memory_above: f64,
    pending_pods: bool,
    pending_pods_binpack: bool,
}

impl Default for RawScaleUp {
    fn default() -> Self {
        RawPolicy::default().scale_up
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
struct RawScaleDown {
    cpu_below: f64,
    memory_below: f64,
    sustained: Dur,
    consolidate: bool,
}

impl Default for RawScaleDown {
    fn default() -> Self {
        RawPolicy::default().scale_down
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
struct RawCooldown {
    after_scale_up: Dur,
    after_scale_down: Dur,
    applies_to_pending_pods: bool,
}

impl Default for RawCooldown {
    fn default() -> Self {
        RawPolicy::default().cooldown
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
struct RawApi {
    listen: String,
    token_file: Option<PathBuf>,
}

impl Default for RawApi {
    fn default() -> Self {
        RawApi {
            listen: "127.0.0.1:8080".into(),
            token_file: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
struct RawNotifications {
    webhook_url: Option<String>,
    error_threshold: i64,
}

impl Default for RawNotifications {
    fn default() -> Self {
        RawNotifications {
            webhook_url: None,
            error_threshold: 3,
        }
    }
}

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
    pub simulate: SimOptions,
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
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Notifications {
    pub webhook_url: Option<url::Url>,
    /// Consecutive failed cycles before an error notification.
    pub error_threshold: u32,
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

fn unreachable_default() -> Config {
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
            error_threshold: 3,
        },
        simulate: SimOptions::default(),
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
    let (raw, mut problems) = smartscale_common::config::load::<Raw>(
        source,
        yaml,
        &env,
        ENV_PREFIX,
        NOT_CONFIG,
        &template(),
    );
    let Some(raw) = raw else {
        return Err(problems);
    };
    let cfg = validate(raw, purpose, &mut problems);
    if problems.is_empty() {
        Ok(cfg)
    } else {
        Err(problems)
    }
}

fn validate(raw: Raw, purpose: Purpose, p: &mut Vec<String>) -> Config {
    let controller = purpose == Purpose::Controller;
    let mut fallback = unreachable_default();

    let cluster_id = match raw.cluster_id {
        Some(id) if valid_name(&id, 128) => id,
        Some(id) => {
            p.push(format!(
                "cluster_id: `{id}` must be 1–128 characters of letters, digits, `-`, `_` or `.`"
            ));
            id
        }
        None if controller => {
            p.push(
                "cluster_id: required; set it to a name for this cluster (e.g. `cluster_id: prod`)"
                    .into(),
            );
            String::new()
        }
        None => fallback.cluster_id.clone(),
    };

    let interval = raw.interval.0;
    if interval < Duration::from_millis(100) {
        p.push(format!(
            "interval: {} is too short; use at least 100ms (default 30s)",
            smartscale_common::duration::format(interval)
        ));
    }

    let prom_url = match raw.prometheus.url.as_deref() {
        Some(u) => match url::Url::parse(u) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Some(url),
            Ok(_) => {
                p.push(format!(
                    "prometheus.url: `{u}` must be an http:// or https:// URL with a host"
                ));
                None
            }
            Err(e) => {
                p.push(format!(
                    "prometheus.url: `{u}` is not a URL ({e}); e.g. http://127.0.0.1:9090"
                ));
                None
            }
        },
        None if controller => {
            p.push(
                "prometheus.url: required; e.g. `prometheus: {url: http://127.0.0.1:9090}`".into(),
            );
            None
        }
        None => None,
    };
    let timeout = raw.prometheus.timeout.0;
    if timeout.is_zero() || timeout >= interval {
        p.push(format!(
            "prometheus.timeout: {} must be above 0 and below interval ({})",
            smartscale_common::duration::format(timeout),
            smartscale_common::duration::format(interval)
        ));
    }
    for (name, q) in [
        ("cpu", &raw.prometheus.queries.cpu),
        ("memory", &raw.prometheus.queries.memory),
        ("pending_pods", &raw.prometheus.queries.pending_pods),
        ("nodes", &raw.prometheus.queries.nodes),
    ] {
        if q.trim().is_empty() {
            p.push(format!(
                "prometheus.queries.{name}: empty query; remove the key to use the default"
            ));
        }
    }

    let mut custom_signals = Vec::new();
    for (i, c) in raw.custom_signals.into_iter().enumerate() {
        let at = format!("custom_signals[{i}]");
        let name = c.name.unwrap_or_default();
        if !valid_signal_name(&name) {
            p.push(format!("{at}.name: `{name}` must be a metric-style name (letters, digits, `_`, not starting with a digit)"));
        } else if custom_signals.iter().any(|s: &CustomSignal| s.name == name)
            || ["cpu", "memory", "pending_pods", "nodes"].contains(&name.as_str())
        {
            p.push(format!(
                "{at}.name: `{name}` is used twice (or is a built-in signal); names must be unique"
            ));
        }
        let query = c.query.unwrap_or_default();
        if query.trim().is_empty() {
            p.push(format!(
                "{at}.query: required; the PromQL that returns one number"
            ));
        }
        match (c.scale_up_above, c.scale_down_below) {
            (None, None) => p.push(format!(
                "{at}: set scale_up_above and/or scale_down_below, or the signal does nothing"
            )),
            (Some(up), Some(down)) if down >= up => p.push(format!(
                "{at}: scale_down_below ({down}) must be lower than scale_up_above ({up}), or the group would flap"
            )),
            _ => {}
        }
        custom_signals.push(CustomSignal {
            name,
            query,
            scale_up_above: c.scale_up_above,
            scale_down_below: c.scale_down_below,
        });
    }

    let table = match raw.state.table {
        Some(t) if valid_table(&t) => t,
        Some(t) => {
            p.push(format!("state.table: `{t}` is not a DynamoDB table name (3–255 of letters, digits, `_`, `-`, `.`)"));
            t
        }
        None if controller => {
            p.push("state.table: required; the DynamoDB table (keys cluster_id + record) that holds the lease, state and history".into());
            String::new()
        }
        None => fallback.state.table.clone(),
    };
    let lease_ttl = raw.state.lease_ttl.0;
    if lease_ttl < interval * 2 {
        p.push(format!(
            "state.lease_ttl: {} must be at least twice interval ({}) so a healthy holder renews it in time",
            smartscale_common::duration::format(lease_ttl),
            smartscale_common::duration::format(interval)
        ));
    }
    if raw.state.history_retention.0 < Duration::from_secs(3600) {
        p.push("state.history_retention: keep history for at least 1h".into());
    }

    let mut node_groups: Vec<NodeGroup> = Vec::new();
    if raw.node_groups.is_empty() && controller {
        p.push("node_groups: required; list at least one worker Auto Scaling group (asg_name, min, max)".into());
    }
    for (i, g) in raw.node_groups.into_iter().enumerate() {
        let at = format!("node_groups[{i}]");
        let asg_name = g.asg_name.unwrap_or_default();
        if asg_name.trim().is_empty() || asg_name.len() > 255 {
            p.push(format!(
                "{at}.asg_name: required; the worker Auto Scaling group's name (1–255 characters)"
            ));
        } else if node_groups.iter().any(|n| n.asg_name == asg_name) {
            p.push(format!(
                "{at}.asg_name: `{asg_name}` is listed twice; each group once"
            ));
        }
        let size = |v: Option<i64>, key: &str, p: &mut Vec<String>| -> u32 {
            match v {
                None => {
                    p.push(format!("{at}.{key}: required; a whole number of nodes ≥ 0"));
                    0
                }
                Some(n) if !(0..=10_000).contains(&n) => {
                    p.push(format!(
                        "{at}.{key}: {n} is out of range; use 0–10000 nodes"
                    ));
                    0
                }
                Some(n) => n as u32,
            }
        };
        let (min, max) = (size(g.min, "min", p), size(g.max, "max", p));
        if min > max {
            p.push(format!(
                "{at}: min ({min}) is greater than max ({max}); set min ≤ max"
            ));
        }
        if g.max == Some(0) {
            p.push(format!(
                "{at}.max: 0 leaves nothing to scale; use at least 1"
            ));
        }
        let allocatable = g.allocatable.map(|a| {
            let cpu = a.cpu.unwrap_or(0.0);
            let memory = a.memory_gib.unwrap_or(0.0);
            if !(cpu > 0.0 && cpu.is_finite() && memory > 0.0 && memory.is_finite()) {
                p.push(format!("{at}.allocatable: cpu (cores) and memory_gib must both be positive numbers, e.g. {{cpu: 2, memory_gib: 4}}"));
            }
            Resources { cpu, memory }
        });
        if let Some(price) = g.hourly_price
            && !(price >= 0.0 && price.is_finite())
        {
            p.push(format!(
                "{at}.hourly_price: {price} must be a price in dollars per hour ≥ 0"
            ));
        }
        node_groups.push(NodeGroup {
            asg_name,
            min,
            max,
            instance_type: g.instance_type,
            allocatable,
            hourly_price: g.hourly_price,
        });
    }

    let rp = raw.policy;
    for (key, v) in [
        ("policy.scale_up.cpu_above", rp.scale_up.cpu_above),
        ("policy.scale_up.memory_above", rp.scale_up.memory_above),
        ("policy.scale_down.cpu_below", rp.scale_down.cpu_below),
        ("policy.scale_down.memory_below", rp.scale_down.memory_below),
    ] {
        if !(0.0..=100.0).contains(&v) {
            p.push(format!("{key}: {v} is a percentage; use 0–100"));
        }
    }
    if rp.scale_down.cpu_below >= rp.scale_up.cpu_above {
        p.push(format!(
            "policy: scale_down.cpu_below ({}) must be lower than scale_up.cpu_above ({}), or the group would flap",
            rp.scale_down.cpu_below, rp.scale_up.cpu_above
        ));
    }
    if rp.scale_down.memory_below >= rp.scale_up.memory_above {
        p.push(format!(
            "policy: scale_down.memory_below ({}) must be lower than scale_up.memory_above ({}), or the group would flap",
            rp.scale_down.memory_below, rp.scale_up.memory_above
        ));
    }
    if !(1..=100).contains(&rp.scale_up.cpu_checks) {
        p.push(format!(
            "policy.scale_up.cpu_checks: {} must be 1–100 consecutive checks",
            rp.scale_up.cpu_checks
        ));
    }
    if rp.max_node_provision_time.0 < Duration::from_secs(5) {
        p.push("policy.max_node_provision_time: allow nodes at least 5s to boot (EC2 needs minutes; default 15m)".into());
    }
    let policy = PolicyConfig {
        cpu_above: rp.scale_up.cpu_above,
        cpu_checks: rp.scale_up.cpu_checks.clamp(1, 100) as u32,
        memory_above: rp.scale_up.memory_above,
        pending_pods: rp.scale_up.pending_pods,
        pending_pods_binpack: rp.scale_up.pending_pods_binpack,
        cooldown_applies_to_pending: rp.cooldown.applies_to_pending_pods,
        cpu_below: rp.scale_down.cpu_below,
        memory_below: rp.scale_down.memory_below,
        consolidate: rp.scale_down.consolidate,
        sustained: rp.scale_down.sustained.0,
        after_scale_up: rp.cooldown.after_scale_up.0,
        after_scale_down: rp.cooldown.after_scale_down.0,
        max_node_provision_time: rp.max_node_provision_time.0,
    };

    let listen = match raw.api.listen.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            p.push(format!(
                "api.listen: `{}` is not an address:port; e.g. 127.0.0.1:8080",
                raw.api.listen
            ));
            fallback.api.listen
        }
    };
    let webhook_url =
        raw.notifications
            .webhook_url
            .as_deref()
            .and_then(|u| match url::Url::parse(u) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => Some(url),
                _ => {
                    p.push(format!(
                        "notifications.webhook_url: `{u}` is not an http(s) URL"
                    ));
                    None
                }
            });
    if raw.notifications.error_threshold < 1 {
        p.push("notifications.error_threshold: must be at least 1".into());
    }

    let sim = &raw.simulate;
    for (key, ok) in [
        (
            "simulate.allocatable",
            sim.allocatable.cpu > 0.0 && sim.allocatable.memory > 0.0,
        ),
        (
            "simulate.pod",
            sim.pod.cpu > 0.0 && sim.pod.memory > 0.0 && sim.pod.fits_in(sim.allocatable),
        ),
        (
            "simulate.boot_time_s",
            sim.boot_time_s > 0 && sim.boot_jitter_s >= 0 && sim.boot_jitter_s < sim.boot_time_s,
        ),
        ("simulate.drain_time_s", sim.drain_time_s >= 0),
        (
            "simulate.scrape_interval_s",
            sim.scrape_interval_s > 0 && sim.interval_s > 0,
        ),
        (
            "simulate.usage_ratio",
            sim.usage_ratio > 0.0 && sim.usage_ratio <= 1.0,
        ),
        ("simulate.spot_share", (0.0..=1.0).contains(&sim.spot_share)),
        ("simulate.min", sim.min <= sim.max && sim.max > 0),
    ] {
        if !ok {
            p.push(format!(
                "{key}: out of range (see README \"Digital twin\" for valid values)"
            ));
        }
    }

    fallback.cluster_id = cluster_id;
    Config {
        cluster_id: fallback.cluster_id,
        interval,
        dry_run: raw.dry_run,
        log_format: raw.log_format,
        prometheus: PrometheusConfig {
            url: prom_url.unwrap_or(fallback.prometheus.url),
            timeout,
            queries: raw.prometheus.queries,
        },
        custom_signals,
        state: StateConfig {
            table,
            lease_ttl,
            history_retention: raw.state.history_retention.0,
        },
        node_groups,
        policy,
        api: ApiConfig {
            listen,
            token_file: raw.api.token_file,
        },
        notifications: Notifications {
            webhook_url,
            error_threshold: raw.notifications.error_threshold.clamp(1, 1000) as u32,
        },
        simulate: raw.simulate,
    }
}

fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn valid_table(s: &str) -> bool {
    (3..=255).contains(&s.len()) && valid_name(s, 255)
}

fn valid_signal_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests;
