//! `smartscale-controller check` as an operator runs it: every problem listed, exit 2.

use std::process::Command;

fn check(yaml: &str, env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("controller.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_smartscale-controller"))
        .env_clear()
        .envs(env.iter().copied())
        .arg("--config")
        .arg(&path)
        .arg("check")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

const GOOD: &str = "cluster_id: prod\nprometheus: {url: 'http://127.0.0.1:9090'}\nstate: {table: smartscale-state}\nnode_groups: [{asg_name: workers, min: 1, max: 10}]\n";

#[test]
fn a_valid_config_passes() {
    let (code, out, err) = check(GOOD, &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("valid (cluster prod, 1 node group(s), interval 30s)"),
        "{out}"
    );
}

#[test]
fn every_kind_of_mistake_is_listed_at_once() {
    let yaml = "
interval: soon
dry_run: maybe
log_format: xml
prometheus:
  url: 'ftp://prom'
  timeout: 0s
  urll: typo
state:
  lease_ttl: 1s
node_groups:
  - {asg_name: workers, min: 5, max: 3}
  - {asg_name: workers, min: -1, max: 2, allocatable: {cpu: 0, memory_gib: 4}}
policy:
  scale_up: {cpu_above: 170, cpu_checks: 0}
  scale_down: {memory_below: -5}
api: {listen: localhost}
notifications: {webhook_url: slack}
custom_signals: [{name: queue}]
";
    let (code, _, err) = check(yaml, &[]);
    assert_eq!(code, Some(2), "{err}");
    let expected = [
        "cluster_id: required",
        "interval: `soon` is not a duration",
        "dry_run: invalid type",
        "log_format: unknown variant `xml`",
        "prometheus.url: `ftp://prom` must be an http:// or https:// URL",
        "prometheus.urll: unknown key; did you mean `url`?",
        "state.table: required",
        "node_groups[0]: min (5) is greater than max (3)",
        "node_groups[1].asg_name: `workers` is listed twice",
        "node_groups[1].min: -1 is out of range",
        "node_groups[1].allocatable: cpu (cores) and memory_gib must both be positive",
        "policy.scale_up.cpu_above: 170 is a percentage",
        "policy.scale_up.cpu_checks: 0 must be 1–100",
        "policy.scale_down.memory_below: -5 is a percentage",
        "api.listen: `localhost` is not an address:port",
        "notifications.webhook_url: `slack` is not an http(s) URL",
        "custom_signals[0].query: required",
    ];
    for e in expected {
        assert!(err.contains(e), "missing `{e}` in:\n{err}");
    }
    let listed = err.lines().filter(|l| l.starts_with("  - ")).count();
    assert!(listed >= expected.len(), "{listed} problems listed:\n{err}");
}

/// Kubernetes injects `<SERVICE>_SERVICE_HOST` and friends for every Service: with a Service named
/// `smartscale-controller` in the namespace, the controller's environment has
/// `SMARTSCALE_CONTROLLER_SERVICE_HOST`. Such names are warned about, never fatal.
#[test]
fn environment_variables_that_match_no_key_are_warned_about_not_fatal() {
    let yaml = "cluster_id: prod
prometheus: {url: 'http://127.0.0.1:9090'}
state: {table: smartscale-state}
node_groups: [{asg_name: w, min: 1, max: 3}]
";
    let (code, out, err) = check(
        yaml,
        &[
            ("SMARTSCALE_CONTROLLER_SERVICE_HOST", "10.43.12.7"),
            ("SMARTSCALE_PROMETHEUS_TIMOUT", "5s"),
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("valid (cluster prod"), "{out}");
    for name in [
        "SMARTSCALE_CONTROLLER_SERVICE_HOST",
        "SMARTSCALE_PROMETHEUS_TIMOUT",
    ] {
        assert!(
            err.contains(&format!(
                "warning: environment variable {name} matches no config key and is ignored"
            )),
            "{err}"
        );
    }
}

#[test]
fn an_unreadable_file_or_missing_flag_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_smartscale-controller"))
        .args(["--config", "/nonexistent/controller.yaml", "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/controller.yaml")
    );
    let out = Command::new(env!("CARGO_BIN_EXE_smartscale-controller"))
        .arg("check")
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config FILE is required"));
}

#[test]
fn once_with_a_bad_config_fails_in_one_line_pointing_at_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, "cluster_id: x\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_smartscale-controller"))
        .env_clear()
        .arg("--config")
        .arg(&path)
        .arg("once")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: invalid configuration"), "{err}");
    assert!(err.contains("check` for details"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
}
