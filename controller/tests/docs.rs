//! The documentation says what the code does: the example config in docs/interfaces.md shows
//! the defaults (it parses to the same configuration as the required keys alone), and the
//! README's configuration table gives the same defaults.

use smartscale_controller::config::{self, Purpose};
use std::path::Path;

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The first ```yaml block after `heading` in `text`.
fn yaml_after(text: &str, heading: &str) -> String {
    let from = text
        .find(heading)
        .unwrap_or_else(|| panic!("no `{heading}`"));
    let rest = &text[from..];
    let start = rest.find("```yaml\n").expect("a yaml block") + "```yaml\n".len();
    let end = rest[start..].find("```").expect("end of the block");
    rest[start..start + end].to_string()
}

#[test]
fn the_example_config_in_interfaces_md_shows_the_defaults() {
    let docs = repo_file("docs/interfaces.md");
    let example = yaml_after(&docs, "## Controller config");
    let documented = config::parse("docs/interfaces.md", &example, &[], Purpose::Controller)
        .unwrap_or_else(|p| panic!("the documented example is not valid: {p:?}"));
    // The same required keys and group, everything else left to the code's defaults.
    let minimal = "cluster_id: prod\nprometheus: {url: 'http://127.0.0.1:9090'}\nstate: {table: smartscale-state}\n\
        node_groups:\n  - {asg_name: smartscale-workers, min: 1, max: 10, instance_type: t3.medium, allocatable: {cpu: 2, memory_gib: 4}, hourly_price: 0.0416}\n\
        api: {token_file: /etc/smartscale/api-token}\n";
    let defaults =
        config::parse("minimal", minimal, &[], Purpose::Controller).expect("minimal config");
    assert_eq!(documented.interval, defaults.interval, "interval");
    assert_eq!(documented.prometheus, defaults.prometheus, "prometheus");
    assert_eq!(
        documented.state, defaults.state,
        "state (lease_ttl, history_retention)"
    );
    assert_eq!(documented.node_groups, defaults.node_groups, "node_groups");
    assert_eq!(documented.policy, defaults.policy, "policy");
    assert_eq!(
        documented.capacity, defaults.capacity,
        "policy: expander, skip_nodes_with_*"
    );
    assert_eq!(documented.api, defaults.api, "api");
    assert_eq!(
        documented.notifications, defaults.notifications,
        "notifications"
    );
}

#[test]
fn the_readme_configuration_table_gives_the_codes_defaults() {
    let readme = repo_file("README.md");
    let d = config::parse(
        "minimal",
        "cluster_id: c\nprometheus: {url: 'http://127.0.0.1:9090'}\nstate: {table: tbl}\nnode_groups: [{asg_name: w, min: 1, max: 2}]\n",
        &[],
        Purpose::Controller,
    )
    .expect("minimal config");
    let default_of = |key: &str| -> String {
        let row = readme
            .lines()
            .find(|l| l.starts_with(&format!("| `{key}` |")))
            .unwrap_or_else(|| panic!("README has no row for `{key}`"));
        row.split('|')
            .nth(2)
            .unwrap_or_default()
            .trim()
            .trim_matches('`')
            .to_string()
    };
    let durations = [
        ("interval", d.interval),
        ("prometheus.timeout", d.prometheus.timeout),
        ("state.lease_ttl", d.state.lease_ttl),
        ("state.history_retention", d.state.history_retention),
        ("policy.scale_down.sustained", d.policy.sustained),
        ("policy.cooldown.after_scale_up", d.policy.after_scale_up),
        (
            "policy.cooldown.after_scale_down",
            d.policy.after_scale_down,
        ),
        (
            "policy.max_node_provision_time",
            d.policy.max_node_provision_time,
        ),
        (
            "policy.replace_unready_after",
            d.policy.replace_unready_after,
        ),
        ("policy.backoff.initial", d.policy.backoff_initial),
        ("policy.backoff.max", d.policy.backoff_max),
        ("policy.forecast.lead", d.policy.forecast.lead),
    ];
    for (key, value) in durations {
        let shown = default_of(key);
        assert_eq!(
            smartscale_common::duration::parse(&shown),
            Ok(value),
            "README's default for {key} is `{shown}`"
        );
    }
    assert_eq!(
        default_of("policy.forecast.enabled"),
        d.policy.forecast.enabled.to_string()
    );
    assert_eq!(default_of("api.listen"), d.api.listen.to_string());
    assert_eq!(
        default_of("node_groups[].priority"),
        d.node_groups[0].priority.to_string()
    );
    assert_eq!(
        Some(d.capacity.expander),
        default_of("policy.scale_up.expander").parse().ok(),
        "README's default expander"
    );
    assert_eq!(
        default_of("notifications.error_threshold"),
        d.notifications.error_threshold.to_string()
    );
    for (key, value) in [
        (
            "node_groups[].suspend_az_rebalance",
            d.node_groups[0].suspend_az_rebalance,
        ),
        (
            "node_groups[].protect_from_scale_in",
            d.node_groups[0].protect_from_scale_in,
        ),
        (
            "policy.scale_down.skip_nodes_with_local_storage",
            d.capacity.scale_down.skip_nodes_with_local_storage,
        ),
        (
            "policy.scale_down.skip_nodes_with_system_pods",
            d.capacity.scale_down.skip_nodes_with_system_pods,
        ),
        (
            "policy.scale_down.skip_nodes_with_custom_controller_pods",
            d.capacity.scale_down.skip_nodes_with_custom_controller_pods,
        ),
    ] {
        assert_eq!(
            default_of(key),
            value.to_string(),
            "README's default for {key}"
        );
    }
}
