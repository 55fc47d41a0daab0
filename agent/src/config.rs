//! The agent's two sources of settings (docs/interfaces.md, "Agent config"):
//!
//! - [`Config`]: the local YAML file (`--config FILE`) with `SMARTSCALE_AGENT_<PATH>` env
//!   overrides: where things are on this machine.
//! - [`Settings`]: the String parameters under `ssm_path` in SSM Parameter Store: what the
//!   cluster wants (server URL, hook names, labels, drain settings), the same for every worker.
//!
//! Both report every problem at once, one line each, with the key and what would be valid.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use smartscale_common::Dur;
use smartscale_common::duration::{format as fmt_dur, parse as parse_dur};
use smartscale_common::logging::LogFormat;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Env vars starting with this override config keys (`SMARTSCALE_AGENT_STATE_DIR=/x`).
pub const ENV_PREFIX: &str = "SMARTSCALE_AGENT_";

// ---- the file as written: every key optional or defaulted, so every problem can be found ----

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
struct Raw {
    ssm_path: Option<String>,
    token_secret_id: Option<String>,
    k3s_config_path: PathBuf,
    k3s_start_command: Vec<String>,
    kubeconfig: PathBuf,
    taint_kubeconfig: Option<PathBuf>,
    join_timeout: Dur,
    poll_interval: Dur,
    metrics_listen: String,
    state_dir: PathBuf,
    log_format: LogFormat,
}

impl Default for Raw {
    fn default() -> Self {
        Raw {
            ssm_path: None,
            token_secret_id: None,
            k3s_config_path: "/etc/rancher/k3s/config.yaml".into(),
            k3s_start_command: vec!["systemctl".into(), "start".into(), "k3s-agent".into()],
            kubeconfig: "/var/lib/rancher/k3s/agent/kubelet.kubeconfig".into(),
            taint_kubeconfig: None,
            join_timeout: Dur::secs(300),
            poll_interval: Dur::secs(1),
            metrics_listen: "127.0.0.1:9102".into(),
            state_dir: "/var/lib/smartscale-agent".into(),
            log_format: LogFormat::Text,
        }
    }
}

/// The validated local configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// SSM Parameter Store path holding the [`Settings`].
    pub ssm_path: String,
    /// Secrets Manager secret id or ARN whose SecretString is the K3s join token.
    pub token_secret_id: String,
    pub k3s_config_path: PathBuf,
    /// Program and arguments that start k3s once its config is written; must exit when started.
    pub k3s_start_command: Vec<String>,
    /// The node's own kubelet kubeconfig: the identity the agent drains with.
    pub kubeconfig: PathBuf,
    /// Optional identity used only to add the draining taint (NodeRestriction forbids a kubelet
    /// to change its own taints). `None`: the node's identity tries, and cordon alone remains.
    pub taint_kubeconfig: Option<PathBuf>,
    pub join_timeout: Duration,
    /// How often IMDS is asked (≤ 2 s, so a termination is seen within 2 s).
    pub poll_interval: Duration,
    pub metrics_listen: SocketAddr,
    pub state_dir: PathBuf,
    pub log_format: LogFormat,
}

fn template() -> serde_json::Value {
    serde_json::to_value(Raw::default()).unwrap_or_default()
}

/// Reads `path` and applies the process environment's overrides.
pub fn load(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadFile {
        path: path.display().to_string(),
        source,
    })?;
    let env: Vec<(String, String)> = std::env::vars().collect();
    parse(&path.display().to_string(), &text, &env)
}

/// Parses and validates; on failure every problem found, one per line.
pub fn parse(source: &str, yaml: &str, env: &[(String, String)]) -> Result<Config> {
    let loaded =
        smartscale_common::config::load::<Raw>(source, yaml, env, ENV_PREFIX, &[], &template());
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let (raw, mut problems) = (loaded.value, loaded.problems);
    let fail = |problems| Error::Config {
        source_name: source.to_string(),
        problems,
    };
    let Some(raw) = raw else {
        return Err(fail(problems));
    };
    let config = validate(raw, &mut problems);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(fail(problems))
    }
}

fn validate(raw: Raw, p: &mut Vec<String>) -> Config {
    let ssm_path = match raw.ssm_path {
        Some(path) if path.starts_with('/') && path.len() > 1 && !path.ends_with('/') => path,
        Some(path) => {
            p.push(format!(
                "ssm_path: `{path}` must be an absolute SSM path without a trailing `/`, e.g. /smartscale/prod/agent"
            ));
            path
        }
        None => {
            p.push("ssm_path: required; the SSM Parameter Store path with the agent settings, e.g. /smartscale/prod/agent".into());
            String::new()
        }
    };
    let token_secret_id = match raw.token_secret_id {
        Some(id) if !id.trim().is_empty() => id,
        _ => {
            p.push("token_secret_id: required; the Secrets Manager secret (name or ARN) that holds the K3s join token".into());
            String::new()
        }
    };
    if raw
        .k3s_start_command
        .first()
        .is_none_or(|c| c.trim().is_empty())
    {
        p.push(
            r#"k3s_start_command: must name a program, e.g. ["systemctl", "start", "k3s-agent"]"#
                .into(),
        );
    }
    if raw.join_timeout.0 < Duration::from_secs(1) {
        p.push(format!(
            "join_timeout: {} is too short; use at least 1s (default 5m)",
            fmt_dur(raw.join_timeout.0)
        ));
    }
    let poll = raw.poll_interval.0;
    if poll < Duration::from_millis(100) || poll > Duration::from_secs(2) {
        p.push(format!(
            "poll_interval: {} must be between 100ms and 2s, so a termination notice is seen within 2 s (default 1s)",
            fmt_dur(poll)
        ));
    }
    let metrics_listen = match raw.metrics_listen.parse::<SocketAddr>() {
        Ok(addr) => addr,
        Err(_) => {
            p.push(format!(
                "metrics_listen: `{}` is not an address with a port, e.g. 127.0.0.1:9102",
                raw.metrics_listen
            ));
            SocketAddr::from(([127, 0, 0, 1], 9102))
        }
    };
    for (key, path) in [
        ("k3s_config_path", &raw.k3s_config_path),
        ("kubeconfig", &raw.kubeconfig),
        ("state_dir", &raw.state_dir),
    ] {
        if path.as_os_str().is_empty() {
            p.push(format!("{key}: must not be empty"));
        }
    }
    Config {
        ssm_path,
        token_secret_id,
        k3s_config_path: raw.k3s_config_path,
        k3s_start_command: raw.k3s_start_command,
        kubeconfig: raw.kubeconfig,
        taint_kubeconfig: raw.taint_kubeconfig,
        join_timeout: raw.join_timeout.0,
        poll_interval: poll,
        metrics_listen,
        state_dir: raw.state_dir,
        log_format: raw.log_format,
    }
}

// ---- settings from SSM Parameter Store ----

/// What to do when the drain deadline passes with pods left (SSM `on_drain_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDrainTimeout {
    /// Log every pod left and complete the lifecycle action with CONTINUE (the default).
    Continue,
    /// Keep evicting and heartbeating until the hook's global timeout, then complete.
    KeepHeartbeating,
}

/// The settings every worker reads from SSM (docs/interfaces.md lists them).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The K3s server (`https://10.0.1.10:6443`); required by `join` only.
    pub server_url: Option<String>,
    pub launch_hook_name: Option<String>,
    pub terminate_hook_name: Option<String>,
    pub node_labels: Vec<(String, String)>,
    /// `key=value:Effect` or `key:Effect`, validated.
    pub node_taints: Vec<String>,
    pub drain_timeout: Duration,
    pub spot_drain_deadline: Duration,
    pub on_drain_timeout: OnDrainTimeout,
    pub eviction_concurrency: usize,
    pub rebalance_enabled: bool,
    /// The heartbeat period of both hooks (launch: while `join` waits; terminate: while draining),
    /// never more than a third of the hook's HeartbeatTimeout; `None`: a third of it.
    pub heartbeat_interval: Option<Duration>,
    /// Before completing the terminate hook, wait until `/metrics` has been served once since the
    /// drain ended, at most this long (so Prometheus has the drain's last numbers before the
    /// instance goes). Zero: do not wait.
    pub metrics_flush_wait: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            server_url: None,
            launch_hook_name: None,
            terminate_hook_name: None,
            node_labels: Vec::new(),
            node_taints: Vec::new(),
            drain_timeout: Duration::from_secs(600),
            spot_drain_deadline: Duration::from_secs(90),
            on_drain_timeout: OnDrainTimeout::Continue,
            eviction_concurrency: 10,
            rebalance_enabled: false,
            heartbeat_interval: None,
            metrics_flush_wait: Duration::ZERO,
        }
    }
}

/// The parameter names the agent reads (relative to `ssm_path`).
pub const SETTING_NAMES: &[&str] = &[
    "server_url",
    "launch_hook_name",
    "terminate_hook_name",
    "node_labels",
    "node_taints",
    "drain_timeout",
    "spot_drain_deadline",
    "on_drain_timeout",
    "eviction_concurrency",
    "rebalance_enabled",
    "heartbeat_interval",
    "metrics_flush_wait",
];

/// Settings only `join` uses: `run` and `drain` (on a node that joined already) go on with a
/// warning when one of these is wrong, rather than not draining at all.
pub const JOIN_ONLY_SETTINGS: &[&str] = &[
    "server_url",
    "launch_hook_name",
    "node_labels",
    "node_taints",
];

/// The longest `metrics_flush_wait` accepted: the terminate hook waits that much longer.
pub const MAX_METRICS_FLUSH_WAIT: Duration = Duration::from_secs(300);

impl Settings {
    /// The launch hook's name in `params`, if it is valid, whatever else is wrong with them: what
    /// `join` answers (ABANDON) when it cannot go on with the settings.
    pub fn launch_hook_in(params: &BTreeMap<String, String>) -> Option<String> {
        let value = params.get("launch_hook_name")?.trim();
        hook_name("launch_hook_name", value, &mut Vec::new())
    }

    /// [`Settings::parse`] for `run` and `drain`: problems only in [`JOIN_ONLY_SETTINGS`] are
    /// warnings (those settings are left out), the others are problems as ever.
    pub fn parse_for_running(
        params: &BTreeMap<String, String>,
    ) -> std::result::Result<(Settings, Vec<String>), Vec<String>> {
        let problems = match Settings::parse(params) {
            Ok(parsed) => return Ok(parsed),
            Err(problems) => problems,
        };
        let key = |p: &String| p.split(':').next().unwrap_or_default().to_string();
        if !problems
            .iter()
            .all(|p| JOIN_ONLY_SETTINGS.contains(&key(p).as_str()))
        {
            return Err(problems);
        }
        let wrong: Vec<String> = problems.iter().map(key).collect();
        let rest: BTreeMap<String, String> = params
            .iter()
            .filter(|(name, _)| !wrong.contains(name))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let (settings, mut warnings) = Settings::parse(&rest)?;
        warnings.extend(
            problems
                .into_iter()
                .map(|p| format!("{p} (only join uses it; ignored here)")),
        );
        Ok((settings, warnings))
    }

    /// Parses the parameters (name relative to the path → value). Returns the settings and
    /// warnings (unknown names: a newer stack may add some), or every problem.
    pub fn parse(
        params: &BTreeMap<String, String>,
    ) -> std::result::Result<(Settings, Vec<String>), Vec<String>> {
        let mut s = Settings::default();
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        for (name, value) in params {
            let value = value.trim();
            let bad = |why: &str| format!("{name}: `{value}` {why}");
            match name.as_str() {
                "server_url" => {
                    if (value.starts_with("https://") || value.starts_with("http://"))
                        && value.len() > "https://".len()
                    {
                        s.server_url = Some(value.to_string());
                    } else {
                        problems.push(bad(
                            "must be the K3s server URL, e.g. https://10.0.1.10:6443",
                        ));
                    }
                }
                "launch_hook_name" => s.launch_hook_name = hook_name(name, value, &mut problems),
                "terminate_hook_name" => {
                    s.terminate_hook_name = hook_name(name, value, &mut problems)
                }
                "node_labels" => s.node_labels = labels(name, value, &mut problems),
                "node_taints" => s.node_taints = taints(name, value, &mut problems),
                "drain_timeout" => duration(name, value, &mut s.drain_timeout, &mut problems),
                "spot_drain_deadline" => {
                    duration(name, value, &mut s.spot_drain_deadline, &mut problems);
                    if s.spot_drain_deadline >= Duration::from_secs(120) {
                        problems.push(bad(
                            "must be below 2m: a spot instance is reclaimed two minutes after the notice",
                        ));
                    }
                }
                "on_drain_timeout" => match value {
                    "continue" => s.on_drain_timeout = OnDrainTimeout::Continue,
                    "keep_heartbeating" => s.on_drain_timeout = OnDrainTimeout::KeepHeartbeating,
                    _ => problems.push(bad("must be `continue` or `keep_heartbeating`")),
                },
                "eviction_concurrency" => match value.parse::<usize>() {
                    Ok(n) if (1..=100).contains(&n) => s.eviction_concurrency = n,
                    _ => problems.push(bad("must be a whole number from 1 to 100")),
                },
                "rebalance_enabled" => match value {
                    "true" => s.rebalance_enabled = true,
                    "false" => s.rebalance_enabled = false,
                    _ => problems.push(bad("must be `true` or `false`")),
                },
                "heartbeat_interval" => {
                    let mut d = Duration::ZERO;
                    duration(name, value, &mut d, &mut problems);
                    if d < Duration::from_millis(100) {
                        problems.push(bad("must be at least 100ms"));
                    } else {
                        s.heartbeat_interval = Some(d);
                    }
                }
                "metrics_flush_wait" => {
                    duration(name, value, &mut s.metrics_flush_wait, &mut problems);
                    if s.metrics_flush_wait > MAX_METRICS_FLUSH_WAIT {
                        problems.push(bad(
                            "must be at most 5m (it delays every termination); 0s turns the wait off",
                        ));
                    }
                }
                other => warnings.push(format!(
                    "{other}: unknown parameter, ignored (known: {})",
                    SETTING_NAMES.join(", ")
                )),
            }
        }
        if s.drain_timeout < Duration::from_secs(1) {
            problems.push("drain_timeout: must be at least 1s (default 10m)".into());
        }
        if problems.is_empty() {
            Ok((s, warnings))
        } else {
            Err(problems)
        }
    }
}

fn duration(name: &str, value: &str, out: &mut Duration, p: &mut Vec<String>) {
    match parse_dur(value) {
        Ok(d) => *out = d,
        Err(e) => p.push(format!("{name}: {e}")),
    }
}

fn hook_name(name: &str, value: &str, p: &mut Vec<String>) -> Option<String> {
    let ok = !value.is_empty()
        && value.len() <= 255
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_/".contains(c));
    if ok {
        Some(value.to_string())
    } else {
        p.push(format!(
            "{name}: `{value}` is not a lifecycle hook name (1–255 of letters, digits, `-`, `_`, `/`)"
        ));
        None
    }
}

/// A label key: optional DNS prefix + `/` + name of ≤ 63 of `[A-Za-z0-9-_.]`.
fn valid_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.".contains(c))
    });
    name_ok && prefix_ok
}

fn valid_label_value(value: &str) -> bool {
    value.is_empty()
        || (value.len() <= 63
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

fn items(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// Labels a kubelet may set on its own Node in the `kubernetes.io` and `k8s.io` namespaces, by
/// the NodeRestriction admission plugin (Kubernetes docs, "Admission Control", NodeRestriction):
/// these keys, and the [`KUBELET_LABEL_PREFIXES`]. Every other label in those namespaces is
/// refused when the kubelet registers the Node (and the kubelet refuses to start with it).
pub const KUBELET_LABELS: &[&str] = &[
    "kubernetes.io/hostname",
    "kubernetes.io/arch",
    "kubernetes.io/os",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "failure-domain.beta.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
];
/// Label prefixes (namespaces, and their subdomains) a kubelet may set on its own Node.
pub const KUBELET_LABEL_PREFIXES: &[&str] = &["kubelet.kubernetes.io", "node.kubernetes.io"];

/// The key's prefix (the part before `/`), if any.
fn label_namespace(key: &str) -> Option<&str> {
    key.split_once('/').map(|(namespace, _)| namespace)
}

/// `namespace` is `domain` or one of its subdomains.
fn within(namespace: &str, domain: &str) -> bool {
    namespace == domain
        || namespace
            .strip_suffix(domain)
            .is_some_and(|sub| sub.ends_with('.'))
}

/// Whether NodeRestriction lets a kubelet set `key` on its own Node.
pub fn kubelet_may_set(key: &str) -> bool {
    let Some(namespace) = label_namespace(key) else {
        return true;
    };
    if !within(namespace, "kubernetes.io") && !within(namespace, "k8s.io") {
        return true;
    }
    KUBELET_LABELS.contains(&key)
        || KUBELET_LABEL_PREFIXES
            .iter()
            .any(|prefix| within(namespace, prefix))
}

fn labels(name: &str, value: &str, p: &mut Vec<String>) -> Vec<(String, String)> {
    use crate::join::{LABEL_CAPACITY_TYPE, LABEL_INSTANCE_TYPE, LABEL_NODE_GROUP, LABEL_ZONE};
    let own = [
        (LABEL_INSTANCE_TYPE, "the instance type"),
        (LABEL_ZONE, "the availability zone"),
        (LABEL_CAPACITY_TYPE, "spot or on-demand"),
        (LABEL_NODE_GROUP, "the Auto Scaling group"),
    ];
    let mut out = Vec::new();
    for item in items(value) {
        match item.split_once('=') {
            Some((k, v)) if valid_label_key(k) && valid_label_value(v) => {
                if let Some((_, what)) = own.iter().find(|(label, _)| *label == k) {
                    p.push(format!(
                        "{name}: `{k}` is a label the agent sets itself ({what}); it may not be overridden, leave it out"
                    ));
                } else if !kubelet_may_set(k) {
                    p.push(format!(
                        "{name}: `{k}` is a label a kubelet may not set on its own Node (NodeRestriction: in the kubernetes.io and k8s.io namespaces only {} and labels under {}); the Node would be refused. Use a prefix of your own (e.g. example.com/{}), or let an administrator add it (kubectl label node)",
                        KUBELET_LABELS.join(", "),
                        KUBELET_LABEL_PREFIXES
                            .iter()
                            .map(|prefix| format!("{prefix}/"))
                            .collect::<Vec<_>>()
                            .join(" and "),
                        k.rsplit('/').next().unwrap_or(k)
                    ));
                } else {
                    out.push((k.to_string(), v.to_string()))
                }
            }
            _ => p.push(format!(
                "{name}: `{item}` is not a label; write comma-separated key=value, e.g. team=web,tier=batch"
            )),
        }
    }
    out
}

fn taints(name: &str, value: &str, p: &mut Vec<String>) -> Vec<String> {
    let mut out = Vec::new();
    for item in items(value) {
        let ok = item.rsplit_once(':').is_some_and(|(kv, effect)| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            ["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect)
                && valid_label_key(k)
                && valid_label_value(v)
        });
        if ok {
            out.push(item.to_string());
        } else {
            p.push(format!(
                "{name}: `{item}` is not a taint; write comma-separated key=value:Effect (NoSchedule, PreferNoSchedule or NoExecute)"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn minimal_file_gets_the_documented_defaults() {
        let c = parse(
            "agent.yaml",
            "ssm_path: /smartscale/prod/agent\ntoken_secret_id: smartscale/prod/k3s-token\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.k3s_config_path, Path::new("/etc/rancher/k3s/config.yaml"));
        assert_eq!(c.k3s_start_command, ["systemctl", "start", "k3s-agent"]);
        assert_eq!(
            c.kubeconfig,
            Path::new("/var/lib/rancher/k3s/agent/kubelet.kubeconfig")
        );
        assert_eq!(c.join_timeout, Duration::from_secs(300));
        assert_eq!(c.metrics_listen.to_string(), "127.0.0.1:9102");
        assert_eq!(c.state_dir, Path::new("/var/lib/smartscale-agent"));
        assert_eq!(c.poll_interval, Duration::from_secs(1));
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let err = parse(
            "agent.yaml",
            "ssm_path: relative\njoin_timeout: soon\npoll_interval: 5s\nmetrics_listen: nowhere\nk3s_start_command: []\nkubeconfg: /x\n",
            &env(&[]),
        )
        .unwrap_err()
        .to_string();
        for needle in [
            "join_timeout",
            "kubeconfg: unknown key; did you mean `kubeconfig`?",
            "ssm_path: `relative`",
            "token_secret_id: required",
            "k3s_start_command: must name a program",
            "poll_interval: 5s must be between",
            "metrics_listen: `nowhere`",
        ] {
            assert!(err.contains(needle), "missing `{needle}` in:\n{err}");
        }
    }

    #[test]
    fn env_overrides_win() {
        let c = parse(
            "agent.yaml",
            "ssm_path: /a\ntoken_secret_id: t\n",
            &env(&[
                ("SMARTSCALE_AGENT_METRICS_LISTEN", "10.0.0.5:9102"),
                ("SMARTSCALE_AGENT_K3S_START_COMMAND", r#"["/bin/true"]"#),
                ("SMARTSCALE_AGENT_JOIN_TIMEOUT", "20s"),
            ]),
        )
        .unwrap();
        assert_eq!(c.metrics_listen.to_string(), "10.0.0.5:9102");
        assert_eq!(c.k3s_start_command, ["/bin/true"]);
        assert_eq!(c.join_timeout, Duration::from_secs(20));
    }

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn settings_parse_with_defaults() {
        let (s, warnings) = Settings::parse(&params(&[
            ("server_url", "https://10.0.1.10:6443"),
            ("launch_hook_name", "launch"),
            ("node_labels", "team=web, tier=batch"),
            ("node_taints", "dedicated=batch:NoSchedule,gpu:NoExecute"),
            ("on_drain_timeout", "keep_heartbeating"),
            ("future_knob", "1"),
        ]))
        .unwrap();
        assert_eq!(s.server_url.as_deref(), Some("https://10.0.1.10:6443"));
        assert_eq!(s.node_labels.len(), 2);
        assert_eq!(
            s.node_taints,
            ["dedicated=batch:NoSchedule", "gpu:NoExecute"]
        );
        assert_eq!(s.drain_timeout, Duration::from_secs(600));
        assert_eq!(s.spot_drain_deadline, Duration::from_secs(90));
        assert_eq!(s.eviction_concurrency, 10);
        assert_eq!(s.on_drain_timeout, OnDrainTimeout::KeepHeartbeating);
        assert!(!s.rebalance_enabled);
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn settings_problems_are_all_reported() {
        let problems = Settings::parse(&params(&[
            ("server_url", "10.0.1.10"),
            ("node_labels", "=x,ok=1"),
            ("node_taints", "a=b:Sometimes"),
            ("drain_timeout", "forever"),
            ("spot_drain_deadline", "3m"),
            ("eviction_concurrency", "0"),
            ("rebalance_enabled", "yes"),
            ("on_drain_timeout", "panic"),
        ]))
        .unwrap_err();
        assert_eq!(problems.len(), 8, "{problems:#?}");
    }

    #[test]
    fn node_labels_a_kubelet_may_not_set_are_refused_by_name() {
        for allowed in [
            "team",
            "example.com/tier",
            "kubernetes.io/hostname",
            "kubernetes.io/arch",
            "kubernetes.io/os",
            "beta.kubernetes.io/instance-type",
            "failure-domain.beta.kubernetes.io/region",
            "failure-domain.beta.kubernetes.io/zone",
            "topology.kubernetes.io/region",
            "kubelet.kubernetes.io/pool",
            "node.kubernetes.io/pool",
            "eks.node.kubernetes.io/pool",
            "notkubernetes.io/x",
            "k8s.io.example.com/x",
            "node.kubernetes.io.example.com/x",
        ] {
            assert!(kubelet_may_set(allowed), "{allowed}");
        }
        for refused in [
            "node-role.kubernetes.io/worker",
            "kubernetes.io/role",
            "node-restriction.kubernetes.io/secure",
            "k8s.io/x",
            "sig.k8s.io/x",
            "example.kubernetes.io/x",
            "notnode.kubernetes.io/x",
        ] {
            assert!(!kubelet_may_set(refused), "{refused}");
        }
        let problems = Settings::parse(&params(&[(
            "node_labels",
            "team=web,node-role.kubernetes.io/worker=true,k8s.io/x=y,node.kubernetes.io/pool=a",
        )]))
        .unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(
            problems[0].starts_with(
                "node_labels: `node-role.kubernetes.io/worker` is a label a kubelet may not set on its own Node"
            ),
            "{problems:#?}"
        );
        assert!(problems[1].contains("`k8s.io/x`"), "{problems:#?}");
    }

    #[test]
    fn the_agents_own_labels_may_not_be_overridden() {
        let problems = Settings::parse(&params(&[(
            "node_labels",
            "smartscale.io/node-group=other,topology.kubernetes.io/zone=x,node.kubernetes.io/instance-type=big,smartscale.io/capacity-type=spot,smartscale.io/team=ok",
        )]))
        .unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(
            problems
                .iter()
                .all(|p| p.contains("is a label the agent sets itself"))
        );
        assert!(problems[0].contains("`smartscale.io/node-group`"));
    }

    #[test]
    fn the_launch_hook_is_known_even_when_other_settings_are_wrong() {
        let p = params(&[
            ("launch_hook_name", "launch"),
            ("node_labels", "node-role.kubernetes.io/worker=true"),
        ]);
        assert!(Settings::parse(&p).is_err());
        assert_eq!(Settings::launch_hook_in(&p).as_deref(), Some("launch"));
        assert_eq!(
            Settings::launch_hook_in(&params(&[("launch_hook_name", "bad name")])),
            None
        );
    }

    #[test]
    fn a_node_that_joined_drains_whatever_its_join_only_settings_say() {
        let p = params(&[
            ("terminate_hook_name", "terminate"),
            ("node_labels", "node-role.kubernetes.io/worker=true"),
            ("node_taints", "x:Sometimes"),
        ]);
        assert_eq!(Settings::parse(&p).unwrap_err().len(), 2);
        let (s, warnings) = Settings::parse_for_running(&p).unwrap();
        assert_eq!(s.terminate_hook_name.as_deref(), Some("terminate"));
        assert!(s.node_labels.is_empty());
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].ends_with("(only join uses it; ignored here)"));
        // Anything else is still a problem.
        let p = params(&[
            ("node_labels", "node-role.kubernetes.io/worker=true"),
            ("drain_timeout", "forever"),
        ]);
        assert_eq!(Settings::parse_for_running(&p).unwrap_err().len(), 2);
    }

    #[test]
    fn metrics_flush_wait_defaults_to_off() {
        let (s, _) = Settings::parse(&params(&[("drain_timeout", "1m")])).unwrap();
        assert_eq!(s.metrics_flush_wait, Duration::ZERO);
        let (s, warnings) = Settings::parse(&params(&[("metrics_flush_wait", "20s")])).unwrap();
        assert_eq!(s.metrics_flush_wait, Duration::from_secs(20));
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            Settings::parse(&params(&[("metrics_flush_wait", "1h")]))
                .unwrap_err()
                .len(),
            1
        );
    }
}
