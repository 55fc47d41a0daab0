//! Every kind of bad config gets a message naming the key and the fix.

use super::*;

const GOOD: &str = "
cluster_id: prod
prometheus:
  url: http://127.0.0.1:9090
state:
  table: smartscale-state
node_groups:
  - asg_name: workers
    min: 1
    max: 10
    allocatable: {cpu: 2, memory_gib: 4}
    hourly_price: 0.0416
";

fn problems(yaml: &str) -> Vec<String> {
    match parse("c.yaml", yaml, &[], Purpose::Controller) {
        Ok(_) => vec![],
        Err(p) => p,
    }
}

#[test]
fn a_minimal_config_gets_the_documented_defaults() {
    let c = parse("c.yaml", GOOD, &[], Purpose::Controller).unwrap();
    assert_eq!(c.interval, Duration::from_secs(30));
    assert_eq!(c.prometheus.timeout, Duration::from_secs(5));
    assert!(c.prometheus.queries.cpu.contains(r#"mode="idle""#));
    assert_eq!(c.policy.cpu_above, 70.0);
    assert_eq!(c.policy.cpu_checks, 3);
    assert_eq!(c.api.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(
        c.node_groups[0].allocatable,
        Some(Resources {
            cpu: 2.0,
            memory: 4.0
        })
    );
}

#[test]
fn env_overrides_win_over_the_file() {
    let env = vec![
        (
            "SMARTSCALE_PROMETHEUS_URL".to_string(),
            "http://prom:9090".to_string(),
        ),
        ("SMARTSCALE_NODE_GROUPS_0_MAX".to_string(), "20".to_string()),
        ("SMARTSCALE_DRY_RUN".to_string(), "true".to_string()),
        ("SMARTSCALE_API_TOKEN".to_string(), "not-config".to_string()),
        (
            "SMARTSCALE_AGENT_SSM_PATH".to_string(),
            "/agent".to_string(),
        ),
    ];
    let c = parse("c.yaml", GOOD, &env, Purpose::Controller).unwrap();
    assert_eq!(c.prometheus.url.as_str(), "http://prom:9090/");
    assert_eq!(c.node_groups[0].max, 20);
    assert!(c.dry_run);
}

/// (what is wrong, YAML, what the message must say)
pub(crate) const BAD: &[(&str, &str, &str)] = &[
    (
        "min greater than max",
        "node_groups: [{asg_name: w, min: 5, max: 3}]",
        "min (5) is greater than max (3)",
    ),
    (
        "negative size",
        "node_groups: [{asg_name: w, min: -1, max: 3}]",
        "node_groups[0].min: -1 is out of range",
    ),
    (
        "unknown key",
        "prometheus: {url: http://p:9090, urll: x}",
        "prometheus.urll: unknown key; did you mean `url`?",
    ),
    (
        "bad URL",
        "prometheus: {url: 'not a url'}",
        "prometheus.url: `not a url` is not a URL",
    ),
    (
        "wrong URL scheme",
        "prometheus: {url: 'ftp://p'}",
        "must be an http:// or https:// URL",
    ),
    (
        "unknown expander",
        "policy: {scale_up: {expander: most-pods}}",
        "policy.scale_up.expander: `most-pods` is not one of least-waste",
    ),
    (
        "priority out of range",
        "node_groups: [{asg_name: w, min: 1, max: 3, priority: 9999999999}]",
        "node_groups[0].priority: 9999999999 is out of range",
    ),
    (
        "threshold above 100",
        "policy: {scale_up: {cpu_above: 170}}",
        "policy.scale_up.cpu_above: 170 is a percentage",
    ),
    (
        "negative threshold",
        "policy: {scale_down: {memory_below: -5}}",
        "policy.scale_down.memory_below: -5 is a percentage",
    ),
    ("missing table", "state: {}", "state.table: required"),
    (
        "duplicate node group",
        "node_groups: [{asg_name: w, min: 1, max: 3}, {asg_name: w, min: 1, max: 3}]",
        "`w` is listed twice",
    ),
    (
        "missing cluster id",
        "interval: 30s",
        "cluster_id: required",
    ),
    ("no node groups", "node_groups: []", "node_groups: required"),
    (
        "zero-node disruption budget",
        "policy: {scale_down: {budget: {nodes: 0}}}",
        "policy.scale_down.budget.nodes: 0 would forbid every scale-down",
    ),
    (
        "budget percentage out of range",
        "policy: {scale_down: {budget: {percent: 150}}}",
        "policy.scale_down.budget.percent: 150 must be above 0 and at most 100",
    ),
    (
        "bad duration",
        "interval: soon",
        "interval: `soon` is not a duration",
    ),
    (
        "timeout not below interval",
        "interval: 5s\nprometheus: {url: http://p:9090, timeout: 10s}",
        "prometheus.timeout: 10s must be above 0 and below interval",
    ),
    (
        "lease too short",
        "state: {table: tbl, lease_ttl: 20s}",
        "state.lease_ttl: 20s must be at least twice interval",
    ),
    (
        "down threshold above up",
        "policy: {scale_up: {cpu_above: 50}, scale_down: {cpu_below: 60}}",
        "must be lower than scale_up.cpu_above",
    ),
    ("wrong type", "dry_run: maybe", "dry_run: invalid type"),
    (
        "bad listen address",
        "api: {listen: 'localhost'}",
        "api.listen: `localhost` is not an address:port",
    ),
    (
        "custom signal without thresholds",
        "custom_signals: [{name: queue, query: 'sum(q)'}]",
        "custom_signals[0]: set scale_up_above",
    ),
    (
        "bad webhook",
        "notifications: {webhook_url: 'slack'}",
        "notifications.webhook_url: `slack` is not an http(s) URL",
    ),
    (
        "bad sns topic",
        "notifications: {sns_topic_arn: 'smartscale-alerts'}",
        "notifications.sns_topic_arn: `smartscale-alerts` is not an SNS topic ARN",
    ),
    (
        "reserved cloudwatch namespace",
        "cloudwatch: {enabled: true, namespace: 'AWS/EC2'}",
        "cloudwatch.namespace: `AWS/EC2` must be",
    ),
    (
        "bad log format",
        "log_format: xml",
        "log_format: unknown variant `xml`",
    ),
    (
        "missing asg name",
        "node_groups: [{min: 1, max: 3}]",
        "node_groups[0].asg_name: required",
    ),
    (
        "zero allocatable",
        "node_groups: [{asg_name: w, min: 1, max: 3, allocatable: {cpu: 0, memory_gib: 4}}]",
        "allocatable: cpu (cores) and memory_gib must both be positive",
    ),
    ("not YAML", "cluster_id: [unclosed", "not valid YAML"),
];

#[test]
fn every_kind_of_bad_config_is_named() {
    assert!(BAD.len() >= 15);
    for (what, yaml, expect) in BAD {
        let all = problems(yaml).join("\n");
        assert!(
            all.contains(expect),
            "{what}: expected `{expect}` in:\n{all}"
        );
    }
}

#[test]
fn all_problems_are_reported_together() {
    let yaml = "cluster_id: prod\ninterval: soon\nprometheus: {url: 'x', timeout: later}\nstate: {table: t}\nnode_groups: [{asg_name: w, min: 5, max: 3, mx: 1}]\npolicy: {scale_up: {cpu_above: 170}}\n";
    let p = problems(yaml);
    let all = p.join("\n");
    for expect in [
        "interval: `soon`",
        "prometheus.timeout: `later`",
        "prometheus.url: `x`",
        "state.table: `t`",
        "node_groups[0].mx: unknown key",
        "min (5) is greater than max (3)",
        "cpu_above: 170",
    ] {
        assert!(all.contains(expect), "missing `{expect}` in:\n{all}");
    }
}

#[test]
fn simulation_needs_no_cluster_settings() {
    let c = parse(
        "c.yaml",
        "policy: {scale_up: {cpu_above: 80}}",
        &[],
        Purpose::Simulation,
    )
    .unwrap();
    assert_eq!(c.policy.cpu_above, 80.0);
    assert_eq!(simulation_default().policy, PolicyConfig::default());
}

#[test]
fn sns_and_cloudwatch_are_off_by_default_and_read_when_set() {
    let c = parse("c.yaml", GOOD, &[], Purpose::Controller).unwrap();
    assert_eq!(c.notifications.sns_topic_arn, None);
    assert!(!c.cloudwatch.enabled);
    assert_eq!(c.cloudwatch.namespace, "SmartScale/Autoscaler");
    let yaml = format!(
        "{GOOD}notifications: {{sns_topic_arn: 'arn:aws:sns:us-east-1:123456789012:smartscale-prod'}}\ncloudwatch: {{enabled: true, namespace: Ops/K3s}}\n"
    );
    let c = parse("c.yaml", &yaml, &[], Purpose::Controller).unwrap();
    assert_eq!(
        c.notifications.sns_topic_arn.as_deref(),
        Some("arn:aws:sns:us-east-1:123456789012:smartscale-prod")
    );
    assert!(c.cloudwatch.enabled);
    assert_eq!(c.cloudwatch.namespace, "Ops/K3s");
    // Lambda mode's own variables are not config paths (no "unknown variable" warning).
    let env = vec![
        ("SMARTSCALE_CONFIG_PARAMETER".to_string(), "/p".to_string()),
        (
            "SMARTSCALE_CONFIG_FILE".to_string(),
            "/var/task/c.yaml".to_string(),
        ),
        ("SMARTSCALE_KUBERNETES_SECRET".to_string(), "s".to_string()),
        (
            "SMARTSCALE_CLOUDWATCH_ENABLED".to_string(),
            "true".to_string(),
        ),
    ];
    let c = parse("c.yaml", GOOD, &env, Purpose::Controller).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert!(c.cloudwatch.enabled);
}

#[test]
fn prices_are_looked_up_hourly_by_default_and_a_too_short_refresh_is_refused() {
    let c = parse("c.yaml", GOOD, &[], Purpose::Controller).unwrap();
    assert!(c.prices.lookup);
    assert_eq!(c.prices.refresh, Duration::from_secs(3600));
    let env = vec![
        ("SMARTSCALE_PRICES_LOOKUP".to_string(), "false".to_string()),
        ("SMARTSCALE_PRICES_REFRESH".to_string(), "10m".to_string()),
    ];
    let c = parse("c.yaml", GOOD, &env, Purpose::Controller).unwrap();
    assert!(!c.prices.lookup);
    assert_eq!(c.prices.refresh, Duration::from_secs(600));
    let p = problems(&format!("{GOOD}prices: {{refresh: 10s}}\n"));
    assert!(
        p.iter()
            .any(|l| l.starts_with("prices.refresh: 10s is too short")),
        "{p:?}"
    );
}

#[test]
fn the_capacity_models_choices_are_read_with_cluster_autoscalers_defaults() {
    let yaml = "cluster_id: c\nprometheus: {url: http://p:9090}\nstate: {table: smartscale-state}\nnode_groups: [{asg_name: w, min: 1, max: 3}]\n";
    let c = parse("t", yaml, &[], Purpose::Controller).unwrap();
    assert_eq!(c.capacity.expander, crate::capacity::Expander::LeastWaste);
    assert!(c.capacity.scale_down.skip_nodes_with_local_storage);
    assert!(c.capacity.scale_down.skip_nodes_with_system_pods);
    assert_eq!(c.node_groups[0].priority, 0);
    let yaml = format!(
        "{yaml}policy: {{scale_up: {{expander: priority}}, scale_down: {{skip_nodes_with_local_storage: false}}}}\n"
    )
    .replace("max: 3}", "max: 3, priority: 10}");
    let c = parse("t", &yaml, &[], Purpose::Controller).unwrap();
    assert_eq!(c.capacity.expander, crate::capacity::Expander::Priority);
    assert!(!c.capacity.scale_down.skip_nodes_with_local_storage);
    assert_eq!(c.node_groups[0].priority, 10);
}

#[test]
fn the_disruption_controls_are_read_and_default_to_the_documented_values() {
    let yaml = "cluster_id: c\nprometheus: {url: http://p:9090}\nstate: {table: smartscale-state}\nnode_groups: [{asg_name: w, min: 1, max: 3}]\n";
    let c = parse("t", yaml, &[], Purpose::Controller).unwrap();
    assert_eq!(
        c.policy,
        crate::policy::PolicyConfig {
            check_interval: c.policy.check_interval,
            ..Default::default()
        }
    );
    let yaml = format!(
        "{yaml}policy: {{scale_down: {{consolidate_after: 20m, budget: {{nodes: 2, percent: 10, window: 30m}}}}}}\n"
    );
    let c = parse("t", &yaml, &[], Purpose::Controller).unwrap();
    assert_eq!(
        c.policy.consolidate_after,
        std::time::Duration::from_secs(1200)
    );
    assert_eq!(c.policy.disruption_budget.nodes, Some(2));
    assert_eq!(c.policy.disruption_budget.percent, Some(10.0));
    assert_eq!(
        c.policy.disruption_budget.window,
        std::time::Duration::from_secs(1800)
    );
}
