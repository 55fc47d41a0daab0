//! The digital twin's acceptance: SmartScale's default policy against the baselines on every
//! built-in scenario, determinism, and trace errors — through the real binary where a user
//! would notice.

use smartscale_controller::policy::PolicyConfig;
use smartscale_controller::simulator::{self, SimOptions, trace};
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_smartscale-controller"))
}

#[test]
fn smartscale_meets_its_targets_on_every_scenario() {
    let opts = SimOptions::default();
    for seed in [1, 2, 3] {
        for name in trace::SCENARIOS {
            let t = trace::scenario(name, seed).unwrap();
            let r = simulator::run_all(&t, &PolicyConfig::default(), &opts, seed, &mut |_, _| {});
            let ours = r.get("smartscale").unwrap();
            let ratio = ours.oracle_ratio.unwrap();
            assert_eq!(
                ours.volumes_lost,
                0,
                "{name}/{seed}: removed a node holding a local volume\n{}",
                r.table()
            );
            assert!(
                ratio <= 1.5,
                "{name}/{seed}: {ratio}× the oracle's node-hours\n{}",
                r.table()
            );
            if name == "flash-sale" || name == "diurnal" {
                assert!(
                    ours.savings_vs_static_pct >= 50.0,
                    "{name}/{seed}: saves only {}%\n{}",
                    ours.savings_vs_static_pct,
                    r.table()
                );
                let limit = (opts.boot_time_s + 30) as f64;
                assert!(
                    ours.pending_p99_s <= limit,
                    "{name}/{seed}: p99 wait {} s > {limit} s\n{}",
                    ours.pending_p99_s,
                    r.table()
                );
            }
            // A warm pool: every pod that waits, waits a warm boot plus detection, for
            // about the same node-hours (the stopped instances cost volumes, not node-hours).
            let warm = r.get("smartscale+warm-pool").unwrap();
            let limit = (opts.warm_boot_time_s + opts.warm_boot_jitter_s + 1) as f64;
            assert!(
                warm.pending_p99_s <= limit && warm.node_hours <= 1.03 * ours.node_hours,
                "{name}/{seed}: with a warm pool p99 {} s (limit {limit}), {} node-h\n{}",
                warm.pending_p99_s,
                warm.node_hours,
                r.table()
            );
            assert!(warm.stopped_hours > 0.0 && ours.stopped_hours == 0.0);
            for other in &r.policies {
                if other.name.starts_with("smartscale") || other.name == "oracle" {
                    continue;
                }
                let cheaper = other.cost < ours.cost;
                let faster = other.pending_p99_s < ours.pending_p99_s;
                assert!(
                    !(cheaper && faster),
                    "{name}/{seed}: {} beats smartscale on cost and p99\n{}",
                    other.name,
                    r.table()
                );
            }
        }
    }
}

#[test]
fn the_same_seed_gives_byte_identical_json() {
    let run = |seed: &str| {
        let out = bin()
            .args(["simulate", "--scenario", "noisy", "--json", "--seed", seed])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let a = run("7");
    assert_eq!(a, run("7"));
    assert_ne!(a, run("8"));
    let v: serde_json::Value = serde_json::from_slice(&a).unwrap();
    let names: Vec<&str> = v["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "smartscale",
            "smartscale+forecast",
            "smartscale+warm-pool",
            "static-peak",
            "seed-thresholds",
            "prototype",
            "requests-only",
            "oracle"
        ]
    );
    for key in [
        "node_hours",
        "cost",
        "savings_vs_static_pct",
        "pending_p50_s",
        "pending_p99_s",
        "pending_max_s",
        "cpu_over_90_minutes",
        "scale_actions",
    ] {
        assert!(v["policies"][0].get(key).is_some(), "missing {key}");
    }
    assert!(v["policies"][0]["oracle_ratio"].is_number());
    assert_eq!(v["scenario"], "noisy");
    assert_eq!(v["boot_time_s"], 75);
}

#[test]
fn no_arguments_runs_flash_sale_and_writes_a_chart() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["simulate", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("scenario: flash-sale"), "{table}");
    assert!(table.contains("smartscale") && table.contains("oracle"));
    let svg = std::fs::read_to_string(dir.path().join("chart.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains(r#"class="ready" data-policy="smartscale""#));
    assert_eq!(
        svg.matches("<polyline").count(),
        1 + 3 * 8,
        "demand, and desired, Ready and pending per policy (7 and the oracle)"
    );
}

#[test]
fn malformed_traces_name_the_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for (text, expect) in [
        ("time,cpu\n0,1\n", ":1: bad header"),
        (
            "time_s,cpu_cores\n0,1\n60,lots\n",
            ":3: cpu_cores `lots` is not a number",
        ),
        (
            "time_s,cpu_cores\n0,1\n60,2\n30,3\n",
            ":4: time goes backwards",
        ),
    ] {
        let path = dir.path().join("t.csv");
        std::fs::write(&path, text).unwrap();
        let out = bin()
            .args(["simulate", "--trace"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{err}");
    }
}

#[test]
fn a_trace_file_runs_through_the_same_policies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.csv");
    let mut csv = String::from("time_s,cpu_cores,memory_gib\n");
    for i in 0..240 {
        let cpu = if (60..120).contains(&i) { 12.0 } else { 2.0 };
        csv.push_str(&format!("{},{cpu},{}\n", i * 60, cpu));
    }
    std::fs::write(&path, csv).unwrap();
    let out = bin()
        .args(["simulate", "--json", "--trace"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ours = &v["policies"][0];
    assert!(
        ours["node_hours"].as_f64().unwrap() < v["policies"][1]["node_hours"].as_f64().unwrap()
    );
}
