//! Hand-checked decisions on small clusters.

use super::*;

const NODE: Resources = Resources {
    cpu: 2.0,
    memory: 4.0,
};

fn pod(ns: &str, name: &str, cpu: f64) -> Pod {
    Pod {
        namespace: ns.into(),
        name: name.into(),
        requests: Resources { cpu, memory: cpu },
        daemonset: false,
        mirror: false,
        not_safe_to_evict: false,
    }
}

fn node(name: &str, pods: Vec<Pod>) -> Node {
    Node {
        name: name.into(),
        instance_id: Some(format!("i-{name}")),
        ready: true,
        unschedulable: false,
        tainted: false,
        control_plane: false,
        scale_down_disabled: false,
        allocatable: NODE,
        pods,
        not_ready_since: None,
    }
}

fn obs(nodes: Vec<Node>, pending: Vec<Pod>, cpu: f64, memory: f64) -> Observation {
    let instances = nodes
        .iter()
        .filter(|n| !n.control_plane)
        .map(|n| Instance {
            id: n.instance_id.clone().unwrap_or_default(),
            lifecycle: Lifecycle::InService,
            first_seen: 0,
            ever_ready: true,
        })
        .collect::<Vec<_>>();
    Observation {
        usage: Usage {
            cpu: Reading::Value(cpu),
            memory: Reading::Value(memory),
            custom: vec![],
        },
        pending,
        groups: vec![Group {
            asg_name: "workers".into(),
            min: 1,
            max: 10,
            desired: instances.len() as u32,
            node_allocatable: NODE,
            instances,
            scale_down_blocked: None,
            backoff: None,
        }],
        nodes,
    }
}

fn pending(n: usize, cpu: f64) -> Vec<Pod> {
    (0..n)
        .map(|i| pod("default", &format!("p{i}"), cpu))
        .collect()
}

const NOW: i64 = 100_000;

#[test]
fn pending_pods_are_packed_into_the_nodes_they_need() {
    // 6 pods of 1 CPU need 3 nodes of 2 CPU: +3, not the seed's +2.
    let o = obs(
        vec![node("a", vec![pod("default", "x", 1.5)])],
        pending(6, 1.0),
        50.0,
        40.0,
    );
    let (d, m) = decide(&o, &Memory::default(), &PolicyConfig::default(), NOW);
    assert_eq!(d.action, Action::ScaleUp);
    assert_eq!((d.from, d.to), (1, 4));
    assert_eq!(m.last_scale_up, Some(NOW));
}

#[test]
fn scale_up_is_clamped_by_max() {
    let mut o = obs(vec![node("a", vec![])], pending(40, 1.0), 50.0, 40.0);
    o.groups[0].max = 5;
    let (d, _) = decide(&o, &Memory::default(), &PolicyConfig::default(), NOW);
    assert_eq!((d.from, d.to), (1, 5));
    assert!(d.reasons.iter().any(|r| r.contains("clamped to max 5")));
}

#[test]
fn nodes_in_flight_absorb_pending_pods() {
    let mut o = obs(vec![node("a", vec![])], pending(6, 1.0), 50.0, 40.0);
    // The previous cycle raised desired to 4: three instances are booting.
    o.groups[0].desired = 4;
    for i in 0..3 {
        o.groups[0].instances.push(Instance {
            id: format!("i-new{i}"),
            lifecycle: Lifecycle::Launching,
            first_seen: NOW - 30,
            ever_ready: false,
        });
    }
    let (d, _) = decide(&o, &Memory::default(), &PolicyConfig::default(), NOW);
    assert_eq!(d.action, Action::None, "{:?}", d.reasons);
    assert_eq!(d.in_flight, 3);
}

#[test]
fn seed_rule_adds_two_for_more_than_five_small_pending_pods() {
    let o = obs(vec![node("a", vec![])], pending(6, 0.1), 50.0, 40.0);
    let (d, _) = decide(&o, &Memory::default(), &PolicyConfig::seed(), NOW);
    assert_eq!((d.from, d.to), (1, 3));
}

#[test]
fn high_cpu_scales_up_on_the_third_consecutive_check_only() {
    let o = obs(
        vec![node("a", vec![]), node("b", vec![])],
        vec![],
        85.0,
        40.0,
    );
    let cfg = PolicyConfig::default();
    let (d1, m1) = decide(&o, &Memory::default(), &cfg, NOW);
    let (d2, m2) = decide(&o, &m1, &cfg, NOW + 30);
    let (d3, m3) = decide(&o, &m2, &cfg, NOW + 60);
    assert_eq!([d1.action, d2.action], [Action::None, Action::None]);
    assert_eq!(d3.action, Action::ScaleUp);
    assert_eq!((d3.from, d3.to), (2, 3));
    assert_eq!(m3.high_cpu_checks, 0, "counter resets after acting");
}

#[test]
fn a_dip_resets_the_cpu_trend() {
    let cfg = PolicyConfig::default();
    let hot = obs(vec![node("a", vec![])], vec![], 85.0, 40.0);
    let cool = obs(vec![node("a", vec![])], vec![], 60.0, 40.0);
    let (_, m) = decide(&hot, &Memory::default(), &cfg, NOW);
    let (_, m) = decide(&hot, &m, &cfg, NOW + 30);
    let (_, m) = decide(&cool, &m, &cfg, NOW + 60);
    let (d, _) = decide(&hot, &m, &cfg, NOW + 90);
    assert_eq!(d.action, Action::None);
}

#[test]
fn high_memory_scales_up_at_once() {
    let o = obs(vec![node("a", vec![])], vec![], 20.0, 80.0);
    let (d, _) = decide(&o, &Memory::default(), &PolicyConfig::default(), NOW);
    assert_eq!((d.action, d.to), (Action::ScaleUp, 2));
}

#[test]
fn usage_scale_up_respects_cooldown() {
    let o = obs(vec![node("a", vec![])], vec![], 20.0, 80.0);
    let mem = Memory {
        last_scale_up: Some(NOW - 60),
        ..Memory::default()
    };
    let (d, _) = decide(&o, &mem, &PolicyConfig::default(), NOW);
    assert_eq!(d.action, Action::None);
    assert!(
        d.reasons
            .iter()
            .any(|r| r.contains("cooldown has 240s left"))
    );
}

fn low_cluster() -> Observation {
    obs(
        vec![
            node("a", vec![pod("default", "a1", 1.0)]),
            node("b", vec![pod("default", "b1", 0.25)]),
            node("c", vec![pod("kube-system", "dns", 0.5)]),
        ],
        vec![],
        10.0,
        20.0,
    )
}

#[test]
fn scale_down_waits_for_the_sustained_window_then_removes_least_utilised() {
    let cfg = PolicyConfig::default();
    let o = low_cluster();
    let (d, m) = decide(&o, &Memory::default(), &cfg, NOW);
    assert_eq!(d.action, Action::None);
    assert_eq!(m.low_since, Some(NOW));
    let (d, m) = decide(&o, &m, &cfg, NOW + 599);
    assert_eq!(d.action, Action::None);
    let (d, m) = decide(&o, &m, &cfg, NOW + 600);
    assert_eq!(d.action, Action::ScaleDown, "{:?}", d.reasons);
    assert_eq!(d.victim.as_ref().map(|v| v.node.as_str()), Some("b"));
    assert_eq!((d.from, d.to), (3, 2));
    assert_eq!(m.last_scale_down, Some(NOW + 600));
}

#[test]
fn protected_nodes_are_never_chosen() {
    let cfg = PolicyConfig::default();
    let mut o = low_cluster();
    o.nodes[1].scale_down_disabled = true; // b
    let mut cp = node("cp", vec![]);
    cp.control_plane = true;
    cp.instance_id = None;
    o.nodes.push(cp);
    let m = Memory {
        low_since: Some(NOW - 3600),
        ..Memory::default()
    };
    let (d, _) = decide(&o, &m, &cfg, NOW);
    // b is annotated, cp is control plane, c is the last kube-system node: a is the only choice.
    assert_eq!(d.victim.map(|v| v.node), Some("a".to_string()));
}

#[test]
fn not_safe_to_evict_and_last_kube_system_block_their_nodes() {
    let cfg = PolicyConfig::default();
    let mut o = low_cluster();
    o.nodes[0].pods[0].not_safe_to_evict = true; // a
    o.nodes[1].scale_down_disabled = true; // b
    let m = Memory {
        low_since: Some(NOW - 3600),
        ..Memory::default()
    };
    let (d, _) = decide(&o, &m, &cfg, NOW);
    assert_eq!(d.action, Action::None);
    let why = d.reasons.join("; ");
    assert!(why.contains("not safe to evict"), "{why}");
    assert!(why.contains("last node running kube-system pods"), "{why}");
}

#[test]
fn nothing_is_removed_while_its_pods_would_not_fit_elsewhere() {
    let cfg = PolicyConfig::default();
    let o = obs(
        vec![
            node("a", vec![pod("default", "a1", 1.5)]),
            node("b", vec![pod("default", "b1", 1.5)]),
        ],
        vec![],
        10.0,
        20.0,
    );
    let m = Memory {
        low_since: Some(NOW - 3600),
        ..Memory::default()
    };
    let (d, _) = decide(&o, &m, &cfg, NOW);
    assert_eq!(d.action, Action::None);
    assert!(d.reasons.join(";").contains("would not fit elsewhere"));
}

#[test]
fn missing_signals_block_scale_down_and_never_scale() {
    let cfg = PolicyConfig::default();
    let mut o = low_cluster();
    o.usage.cpu = Reading::Missing("Prometheus unreachable".into());
    let m = Memory {
        low_since: Some(NOW - 3600),
        ..Memory::default()
    };
    let (d, m2) = decide(&o, &m, &cfg, NOW);
    assert_eq!(d.action, Action::None);
    assert_eq!(m2.low_since, None, "the low window restarts");
    assert!(d.reasons.join(";").contains("cpu signal missing"));
    o.usage.memory = Reading::from_f64(f64::NAN);
    let (d, _) = decide(&o, &m, &cfg, NOW);
    assert!(d.reasons.join(";").contains("memory signal missing"));
}

#[test]
fn group_minimum_is_respected() {
    let cfg = PolicyConfig::default();
    let mut o = low_cluster();
    o.groups[0].min = 3;
    let m = Memory {
        low_since: Some(NOW - 3600),
        ..Memory::default()
    };
    let (d, _) = decide(&o, &m, &cfg, NOW);
    assert_eq!(d.action, Action::None);
}

#[test]
fn consolidation_removes_a_node_when_usage_thresholds_alone_would_not() {
    // CPU 45% is above the seed's 30% scale-down threshold, but b's pod fits on a.
    let o = obs(
        vec![
            node("a", vec![pod("default", "a1", 1.0)]),
            node("b", vec![pod("default", "b1", 0.5)]),
            node("c", vec![pod("kube-system", "dns", 0.5)]),
        ],
        vec![],
        35.0,
        30.0,
    );
    let m = Memory {
        low_since: Some(NOW - 3600),
        ..Memory::default()
    };
    let (d, _) = decide(&o, &m, &PolicyConfig::default(), NOW);
    assert_eq!(d.action, Action::ScaleDown, "{:?}", d.reasons);
    let (d, _) = decide(&o, &m, &PolicyConfig::seed(), NOW);
    assert_eq!(d.action, Action::None);
}

#[test]
fn consolidation_stops_before_usage_would_trigger_a_scale_up() {
    // 50% CPU on 3 nodes → 75% on 2: above 70 - margin. Keep the node.
    let o = obs(
        vec![
            node("a", vec![pod("default", "a1", 0.5)]),
            node("b", vec![pod("default", "b1", 0.5)]),
            node("c", vec![pod("kube-system", "dns", 0.5)]),
        ],
        vec![],
        50.0,
        30.0,
    );
    let m = Memory {
        low_since: Some(NOW - 3600),
        ..Memory::default()
    };
    let (d, _) = decide(&o, &m, &PolicyConfig::default(), NOW);
    assert_eq!(d.action, Action::None);
}

#[test]
fn scale_down_cooldown_paces_removals() {
    let cfg = PolicyConfig {
        after_scale_down: std::time::Duration::from_secs(60),
        ..PolicyConfig::default()
    };
    let o = low_cluster();
    let m = Memory {
        low_since: Some(NOW - 3600),
        last_scale_down: Some(NOW - 30),
        ..Memory::default()
    };
    let (d, _) = decide(&o, &m, &cfg, NOW);
    assert_eq!(d.action, Action::None);
    assert!(
        d.reasons
            .join(";")
            .contains("scale-down cooldown has 30s left")
    );
}

#[test]
fn instances_that_never_become_ready_are_rolled_back() {
    let cfg = PolicyConfig::default();
    let mut o = low_cluster();
    o.groups[0].desired = 4;
    o.groups[0].instances.push(Instance {
        id: "i-stuck".into(),
        lifecycle: Lifecycle::InService,
        first_seen: NOW - 901,
        ever_ready: false,
    });
    let (d, _) = decide(&o, &Memory::default(), &cfg, NOW);
    assert_eq!(d.rollback, vec!["i-stuck".to_string()]);
    assert_eq!(d.action, Action::None, "no scale-down while rolling back");
    assert_eq!(d.in_flight, 1, "its replacement is capacity on the way");
}

#[test]
fn custom_signal_above_threshold_scales_up_and_missing_blocks_down() {
    let cfg = PolicyConfig::default();
    let mut o = low_cluster();
    o.usage.custom.push(CustomReading {
        name: "queue_depth".into(),
        value: Reading::Value(500.0),
        scale_up_above: Some(100.0),
        scale_down_below: Some(10.0),
    });
    let (d, _) = decide(&o, &Memory::default(), &cfg, NOW);
    assert_eq!(d.action, Action::ScaleUp);
    o.usage.custom[0].value = Reading::Missing("no data".into());
    let m = Memory {
        low_since: Some(NOW - 3600),
        ..Memory::default()
    };
    let (d, _) = decide(&o, &m, &cfg, NOW);
    assert_eq!(d.action, Action::None);
}

#[test]
fn a_tainted_node_is_no_room_for_moved_pods() {
    // b's pod would fit on the control plane, but its NoSchedule taint keeps it away.
    let mut cp = node("cp", vec![]);
    cp.control_plane = true;
    cp.tainted = true;
    cp.instance_id = None;
    let o = obs(
        vec![
            node("a", vec![pod("default", "a1", 1.5)]),
            node("b", vec![pod("default", "b1", 1.5)]),
            cp,
        ],
        vec![],
        10.0,
        20.0,
    );
    let m = Memory {
        low_since: Some(NOW - 3600),
        ..Memory::default()
    };
    let (d, _) = decide(&o, &m, &PolicyConfig::default(), NOW);
    assert_eq!(d.action, Action::None, "{:?}", d.reasons);
}

#[test]
fn an_oversized_pending_pod_does_not_mute_the_usage_signals() {
    let mut o = obs(
        vec![node("a", vec![])],
        vec![pod("default", "huge", 8.0)],
        20.0,
        80.0,
    );
    o.pending[0].requests.memory = 1.0;
    let (d, _) = decide(&o, &Memory::default(), &PolicyConfig::default(), NOW);
    assert_eq!(d.action, Action::ScaleUp, "{:?}", d.reasons);
    assert!(d.reasons.join(";").contains("memory 80.0% above 75%"));
}

#[test]
fn no_second_removal_while_a_node_drains() {
    let mut o = low_cluster();
    o.groups[0].instances.push(Instance {
        id: "i-leaving".into(),
        lifecycle: Lifecycle::Terminating,
        first_seen: 0,
        ever_ready: true,
    });
    let m = Memory {
        low_since: Some(NOW - 3600),
        ..Memory::default()
    };
    let (d, _) = decide(&o, &m, &PolicyConfig::default(), NOW);
    assert_eq!(d.action, Action::None);
    assert!(d.reasons.join(";").contains("1 nodes still draining"));
}

#[test]
fn a_node_that_was_ready_and_went_not_ready_is_neither_booting_nor_rolled_back() {
    let mut o = low_cluster();
    o.nodes[0].ready = false;
    o.groups[0].instances[0].first_seen = NOW - 10_000;
    let (d, _) = decide(&o, &Memory::default(), &PolicyConfig::default(), NOW);
    assert!(d.rollback.is_empty());
    assert_eq!(d.in_flight, 0);
}

#[test]
fn at_most_one_rollback_per_decision_oldest_first() {
    let mut o = low_cluster();
    o.groups[0].desired = 5;
    for (id, seen) in [("i-new", NOW - 1000), ("i-old", NOW - 2000)] {
        o.groups[0].instances.push(Instance {
            id: id.into(),
            lifecycle: Lifecycle::InService,
            first_seen: seen,
            ever_ready: false,
        });
    }
    let (d, _) = decide(&o, &Memory::default(), &PolicyConfig::default(), NOW);
    assert_eq!(d.rollback, vec!["i-old".to_string()]);
    assert_eq!(d.in_flight, 2);
}

#[test]
fn fast_path_cycles_do_not_count_as_extra_cpu_checks() {
    let o = obs(vec![node("a", vec![])], vec![], 85.0, 40.0);
    let cfg = PolicyConfig::default();
    // Four decisions within one second (fast path): one check.
    let mut m = Memory::default();
    for t in 0..4 {
        let (d, next) = decide(&o, &m, &cfg, NOW + t);
        assert_eq!(d.action, Action::None);
        m = next;
    }
    assert_eq!(m.high_cpu_checks, 1);
    let (_, m) = decide(&o, &m, &cfg, NOW + 30);
    let (d, _) = decide(&o, &m, &cfg, NOW + 60);
    assert_eq!(
        d.action,
        Action::ScaleUp,
        "third check a full interval later"
    );
}

// ---- the real Auto Scaling group and faults (issue 11) ----

fn low_load_with_two_workers() -> Observation {
    obs(
        vec![node("a", vec![]), node("b", vec![])],
        vec![],
        5.0,
        10.0,
    )
}

#[test]
fn a_group_whose_scale_down_is_blocked_is_never_scaled_down() {
    let mut o = low_load_with_two_workers();
    o.groups[0].scale_down_blocked = Some("no terminate hook".into());
    let cfg = PolicyConfig {
        sustained: std::time::Duration::ZERO,
        ..PolicyConfig::default()
    };
    let (d, _) = decide(&o, &Memory::default(), &cfg, 1_000);
    assert_eq!(d.action, Action::None, "{d:?}");
    assert!(
        d.reasons
            .iter()
            .any(|r| r.contains("must not be scaled down")),
        "{d:?}"
    );
}

#[test]
fn pending_pods_skip_a_group_in_backoff() {
    let mut o = obs(
        vec![node("a", vec![pod("default", "big", 1.5)])],
        vec![pod("default", "p", 1.5)],
        50.0,
        40.0,
    );
    let mut second = o.groups[0].clone();
    second.asg_name = "on-demand".into();
    second.instances.clear();
    second.desired = 0;
    second.min = 0;
    o.groups[0].backoff = Some("launches failed: no spot capacity".into());
    // The backed-off group asked for one more node that never launched: not in flight.
    o.groups[0].desired += 1;
    o.groups.push(second);
    let (d, _) = decide(&o, &Memory::default(), &PolicyConfig::default(), 1_000);
    assert_eq!((d.action, d.group, d.to), (Action::ScaleUp, 1, 1), "{d:?}");
    assert_eq!(
        d.in_flight, 0,
        "capacity a backed-off group will not get is not on its way"
    );
}

#[test]
fn a_desired_capacity_below_min_is_raised() {
    let mut o = low_load_with_two_workers();
    o.groups[0].min = 3;
    let (d, _) = decide(&o, &Memory::default(), &PolicyConfig::default(), 1_000);
    assert_eq!((d.action, d.from, d.to), (Action::ScaleUp, 2, 3), "{d:?}");
}

#[test]
fn a_long_unready_node_is_replaced_only_while_unready_nodes_are_a_minority() {
    let cfg = PolicyConfig::default();
    let limit = cfg.replace_unready_after.as_secs() as i64;
    let broken = |name: &str, since: i64| Node {
        ready: false,
        not_ready_since: Some(since),
        ..node(name, vec![])
    };
    let o = obs(
        vec![broken("a", 0), node("b", vec![]), node("c", vec![])],
        vec![],
        20.0,
        20.0,
    );
    let (d, _) = decide(&o, &Memory::default(), &cfg, limit + 1);
    assert_eq!(d.replace, vec!["i-a".to_string()], "{d:?}");
    let (d, _) = decide(&o, &Memory::default(), &cfg, limit - 1);
    assert!(d.replace.is_empty(), "not yet: {d:?}");
    let o = obs(
        vec![broken("a", 0), broken("b", 0), node("c", vec![])],
        vec![],
        20.0,
        20.0,
    );
    let (d, _) = decide(&o, &Memory::default(), &cfg, limit + 1);
    assert!(
        d.replace.is_empty(),
        "a majority NotReady is a cluster fault: {d:?}"
    );
}

#[test]
fn instances_are_not_rolled_back_while_nodes_have_unknown_provider_ids() {
    let cfg = PolicyConfig::default();
    let mut o = obs(vec![node("a", vec![])], vec![], 20.0, 20.0);
    o.groups[0].instances.push(Instance {
        id: "i-new".into(),
        lifecycle: Lifecycle::InService,
        first_seen: 0,
        ever_ready: false,
    });
    o.groups[0].desired = 2;
    let late = cfg.max_node_provision_time.as_secs() as i64 + 1;
    let (d, _) = decide(&o, &Memory::default(), &cfg, late);
    assert_eq!(d.rollback, vec!["i-new".to_string()], "{d:?}");
    // A worker registered as k3s://…: it may be i-new; neither roll it back nor count it booting.
    o.nodes.push(Node {
        instance_id: None,
        ..node("ip-10-0-1-5", vec![])
    });
    let (d, _) = decide(&o, &Memory::default(), &cfg, late);
    assert!(d.rollback.is_empty(), "{d:?}");
    assert_eq!(d.in_flight, 0, "{d:?}");
}

#[test]
fn a_node_younger_than_consolidate_after_is_not_removed_and_the_window_keeps_running() {
    let cfg = PolicyConfig {
        consolidate_after: Duration::from_secs(1800),
        ..PolicyConfig::default()
    };
    let mut o = low_cluster();
    for i in &mut o.groups[0].instances {
        i.first_seen = NOW - 600; // all started 10 minutes ago, for a burst
    }
    let m = Memory {
        low_since: Some(NOW - 3600),
        ..Memory::default()
    };
    let (d, m2) = decide(&o, &m, &cfg, NOW);
    assert_eq!(d.action, Action::None);
    assert!(
        d.reasons
            .join(";")
            .contains("younger than consolidate_after"),
        "{:?}",
        d.reasons
    );
    assert_eq!(
        m2.low_since,
        Some(NOW - 3600),
        "still low: it goes when old enough"
    );
    // 20 minutes later they are 30 minutes old: the least utilised goes at once.
    let (d, _) = decide(&o, &m2, &cfg, NOW + 1200);
    assert_eq!(d.action, Action::ScaleDown);
}

#[test]
fn the_disruption_budget_caps_removals_per_window_per_group() {
    let cfg = PolicyConfig {
        disruption_budget: DisruptionBudget {
            nodes: Some(1),
            percent: None,
            window: Duration::from_secs(3600),
        },
        ..PolicyConfig::default()
    };
    let o = low_cluster();
    let m = Memory {
        low_since: Some(NOW - 3600),
        ..Memory::default()
    };
    let (d, m2) = decide(&o, &m, &cfg, NOW);
    assert_eq!(d.action, Action::ScaleDown, "{:?}", d.reasons);
    assert_eq!(m2.removals["workers"], vec![NOW]);
    // The same low cluster 5 minutes later: the budget of 1 per hour is spent.
    let (d, m3) = decide(&o, &m2, &cfg, NOW + 300);
    assert_eq!(d.action, Action::None);
    assert!(
        d.reasons
            .iter()
            .any(|r| r.contains("disruption budget spent (1 of 1 removals in the last 3600s)")),
        "{:?}",
        d.reasons
    );
    // An hour after the first removal it may remove again, and forgets the old one.
    let (d, m4) = decide(&o, &m3, &cfg, NOW + 3600);
    assert_eq!(d.action, Action::ScaleDown);
    assert_eq!(m4.removals["workers"], vec![NOW + 3600]);
}

#[test]
fn a_percentage_budget_rounds_up_and_the_smaller_limit_wins() {
    let b = |nodes, percent| DisruptionBudget {
        nodes,
        percent,
        window: Duration::from_secs(600),
    };
    assert_eq!(b(None, None).allowed(10), None);
    assert_eq!(b(None, Some(10.0)).allowed(25), Some(3));
    assert_eq!(b(None, Some(10.0)).allowed(2), Some(1), "at least one");
    assert_eq!(b(Some(2), Some(50.0)).allowed(10), Some(2));
    assert_eq!(b(Some(9), Some(10.0)).allowed(30), Some(3));
}

/// Two nodes, each with three 0.5-CPU pods (room for one more pod each), and yesterday's
/// history: 3 cores all day, except 6 from 09:00 on (a rise of 3 at 09:00).
fn forecast_setup() -> (Observation, Memory, PolicyConfig, i64) {
    let three = |n: &str| {
        (0..3)
            .map(|i| pod("default", &format!("{n}{i}"), 0.5))
            .collect()
    };
    let o = obs(
        vec![node("a", three("a")), node("b", three("b"))],
        vec![],
        40.0,
        30.0,
    );
    let nine = 86_400 + 9 * 3600;
    let mut mem = Memory::default();
    let mut t = 9 * 3600 - 3600;
    while t < 9 * 3600 + 3600 {
        mem.forecast
            .record(t, if t >= 9 * 3600 { 6.0 } else { 3.0 });
        t += 30;
    }
    let cfg = PolicyConfig {
        forecast: forecast::ForecastConfig {
            enabled: true,
            lead: Duration::from_secs(120),
        },
        ..PolicyConfig::default()
    };
    (o, mem, cfg, nine)
}

#[test]
fn a_forecast_rise_adds_nodes_before_any_pod_is_pending() {
    let (o, mem, cfg, nine) = forecast_setup();
    // 08:56: the window ends before 09:00: nothing to do.
    let (d, _) = decide(&o, &mem, &cfg, nine - 240);
    assert_eq!(d.action, Action::None, "{:?}", d.reasons);
    // 08:58: yesterday rose by 3 cores at 09:00; today's room is 2 × 0.5: one 2-CPU node
    // (4 pods) for the other 2 cores.
    let (d, m) = decide(&o, &mem, &cfg, nine - 120);
    assert_eq!(d.action, Action::ScaleUp, "{:?}", d.reasons);
    assert_eq!((d.from, d.to), (2, 3));
    let why = d.reasons.join("; ");
    assert!(
        why.contains("forecast: 3.0 → 6.0 cores within 120s"),
        "{why}"
    );
    assert!(why.contains("room for 1.0: pre-warming 1 node"), "{why}");
    assert_eq!(
        m.hold.as_ref().map(|h| (h.until, h.cores)),
        Some((nine + 300, 3.0))
    );
    // Off: the same history adds nothing.
    let off = PolicyConfig::default();
    let (d, _) = decide(&o, &mem, &off, nine - 120);
    assert_eq!(d.action, Action::None, "{:?}", d.reasons);
}

#[test]
fn nodes_kept_for_a_forecast_are_not_consolidated_before_its_window_ends() {
    let (mut o, mut mem, cfg, nine) = forecast_setup();
    // The pre-warmed node is Ready and empty; usage is low and has been for an hour.
    o.nodes.push(node("c", vec![]));
    o.groups[0].desired = 3;
    o.groups[0].instances.push(Instance {
        id: "i-c".into(),
        lifecycle: Lifecycle::InService,
        first_seen: 0,
        ever_ready: true,
    });
    o.usage.cpu = Reading::Value(10.0);
    mem.low_since = Some(nine - 3600);
    mem.hold = Some(prewarm::Hold {
        until: nine,
        cores: 3.0,
    });
    let (d, _) = decide(&o, &mem, &cfg, nine - 60);
    assert_eq!(d.action, Action::None, "{:?}", d.reasons);
    let why = d.reasons.join("; ");
    // (the forecast at 08:59 still sees the rise: it holds to the end of 09:00's bucket)
    assert!(
        why.contains("c can go, but the forecast holds room for +3.0 cores for 360s more"),
        "{why}"
    );
    // After the window, the empty node goes as usual.
    let (d, _) = decide(&o, &mem, &cfg, nine + 600);
    assert_eq!(d.action, Action::ScaleDown, "{:?}", d.reasons);
    assert_eq!(d.victim.map(|v| v.node), Some("c".to_string()));
}

#[test]
fn a_backed_off_forecast_says_so_and_adds_nothing() {
    let (o, mut mem, cfg, nine) = forecast_setup();
    mem.forecast.scored = [false, false, false].into();
    let (d, m) = decide(&o, &mem, &cfg, nine - 120);
    assert_eq!(d.action, Action::None, "{:?}", d.reasons);
    let why = d.reasons.join("; ");
    assert!(
        why.contains("forecast backed off: 0 of its last 3 predicted rises came true"),
        "{why}"
    );
    assert!(
        m.forecast.open.is_some(),
        "it keeps predicting, to be scored"
    );
}
