//! Small hand-checked traces: the scheduler, boot delays, and each policy.

use super::*;
use crate::simulator::trace::Row;

fn opts() -> SimOptions {
    SimOptions {
        boot_jitter_s: 0,
        max: 10,
        ..SimOptions::default()
    }
}

fn step_trace(before: f64, after: f64, at: i64, end: i64) -> Trace {
    Trace {
        name: "step".into(),
        rows: vec![
            Row {
                time_s: 0,
                cpu: before,
                memory: None,
            },
            Row {
                time_s: at,
                cpu: after,
                memory: None,
            },
        ],
        end_s: end,
        local_volume_pods: 0,
    }
}

#[test]
fn scheduler_binds_what_fits_and_leaves_the_rest_pending() {
    let mut c = Cluster::new(opts(), 1, 1);
    c.set_demand(1.5, None, 0);
    c.schedule(0);
    assert_eq!(c.pending().count(), 0);
    c.set_demand(3.0, None, 10);
    c.schedule(10);
    // 2 CPU node, 0.5 CPU pods: 4 fit, 2 wait.
    assert_eq!(c.pods.len(), 6);
    assert_eq!(c.pending().count(), 2);
}

#[test]
fn scheduler_spreads_pods_like_least_allocated() {
    let mut c = Cluster::new(opts(), 2, 1);
    c.set_demand(2.0, None, 0);
    c.schedule(0);
    let per_node: Vec<f64> = c.nodes.iter().map(|n| n.requested.cpu).collect();
    assert_eq!(per_node, vec![1.0, 1.0]);
}

#[test]
fn nodes_become_ready_after_the_boot_time() {
    let mut c = Cluster::new(opts(), 1, 1);
    c.set_desired(2, 100);
    c.advance(174);
    assert_eq!(c.ready_nodes(), 1);
    c.advance(175);
    assert_eq!(c.ready_nodes(), 2);
}

#[test]
fn boot_jitter_stays_within_bounds() {
    let o = SimOptions {
        boot_jitter_s: 10,
        ..opts()
    };
    let mut c = Cluster::new(o, 0, 7);
    c.set_desired(10, 0);
    for n in &c.nodes {
        let cluster::NodeState::Booting { ready_at } = n.state else {
            panic!("not booting")
        };
        assert!((65..=85).contains(&ready_at), "{ready_at}");
    }
}

fn run_one(scaler: &mut dyn Autoscaler, trace: &Trace, initial: u32) -> Run {
    simulate(
        trace,
        &opts(),
        1,
        Start::cold(initial),
        scaler,
        &mut |_, _| {},
    )
}

fn smartscale(o: &SimOptions) -> RealPolicy {
    RealPolicy {
        name: "smartscale",
        config: PolicyConfig::default(),
        group: policy::Group {
            asg_name: "g".into(),
            min: o.min,
            max: o.max,
            desired: 1,
            node_allocatable: o.allocatable,
            instances: vec![],
            scale_down_blocked: None,
            backoff: None,
        },
        interval_s: 30,
        fast_path: true,
        cpu_reporting: 1.0,
        memory: policy::Memory::default(),
        capacity_model: true,
    }
}

#[test]
fn smartscale_pods_wait_one_boot_plus_the_fast_path() {
    // 1 node full at 2 cores; at t=100 demand doubles: 4 pods need 1 more node.
    let trace = step_trace(2.0, 4.0, 100, 3600);
    let run = run_one(&mut smartscale(&opts()), &trace, 1);
    let max_wait = *run.waits.iter().max().unwrap();
    // Fast path fires 1 s after the pods appear, the node boots in 75 s.
    assert_eq!(max_wait, 76);
    assert_eq!(run.waits.iter().filter(|w| **w > 0).count(), 4);
}

#[test]
fn prototype_waits_for_its_next_tick_and_adds_one_node_at_a_time() {
    let trace = step_trace(2.0, 6.0, 100, 3600);
    let mut p = Prototype {
        min: 1,
        max: 10,
        last_up: i64::MIN / 2,
        last_down: i64::MIN / 2,
    };
    let run = run_one(&mut p, &trace, 1);
    // Tick at 120 → +1 (ready 195, takes 4 pods); cooldown 60 s → tick 180 → +1 (ready 255).
    assert_eq!(*run.waits.iter().max().unwrap(), 155);
}

#[test]
fn requests_only_packs_pending_pods_on_its_10s_scan() {
    let trace = step_trace(2.0, 6.0, 100, 3600);
    let mut r = RequestsOnly {
        min: 1,
        max: 10,
        last_up: i64::MIN / 2,
        unneeded_since: Default::default(),
    };
    let run = run_one(&mut r, &trace, 1);
    // Scan at t=100 sees 8 pending pods → 2 nodes at once, ready at 175.
    assert_eq!(*run.waits.iter().max().unwrap(), 75);
}

#[test]
fn static_peak_never_scales() {
    let trace = step_trace(2.0, 6.0, 100, 3600);
    let run = run_one(&mut StaticPeak, &trace, 3);
    assert_eq!(run.scale_actions, 0);
    assert!(run.waits.iter().all(|w| *w == 0));
    assert!((run.node_seconds - 3.0 * 3600.0).abs() < 1e-6);
}

#[test]
fn oracle_starts_nodes_one_boot_time_ahead() {
    // 1 node until t=1000, then 3: the oracle runs 3 from t=925, one boot time ahead.
    let trace = step_trace(2.0, 6.0, 1000, 2000);
    let o = oracle::run(&trace, &opts(), 60);
    assert_eq!(o.node_seconds, 1.0 * 925.0 + 3.0 * (2000.0 - 925.0));
    assert_eq!(o.scale_actions, 1);
    // And back down the moment demand drops.
    let down = step_trace(6.0, 2.0, 1000, 2000);
    assert_eq!(
        oracle::run(&down, &opts(), 60).node_seconds,
        3.0 * 1000.0 + 1000.0
    );
}

#[test]
fn smartscale_removes_an_idle_node_after_the_sustained_window() {
    // 3 nodes of demand, then 1: the policy waits 10 minutes, then removes one node per cycle.
    let trace = step_trace(6.0, 2.0, 60, 3600);
    let run = run_one(&mut smartscale(&opts()), &trace, 3);
    assert_eq!(run.scale_actions, 2, "two removals");
    // Both nodes gone well before the end: ~ (60 + 600 + 60 + 30) s for the second.
    assert!(
        run.node_seconds < 3.0 * 900.0 + 3600.0,
        "{}",
        run.node_seconds
    );
}

#[test]
fn seed_thresholds_sees_a_third_of_true_cpu() {
    // The seed's query reads 1/3: 85% true CPU looks like 28%, so it never scales up on CPU.
    let mut seed = smartscale(&opts());
    seed.config = PolicyConfig::seed();
    seed.cpu_reporting = 1.0 / 3.0;
    let c = Cluster::new(opts(), 2, 1);
    let sample = signals::Sample {
        cpu_5m: 85.0,
        memory: 10.0,
    };
    for t in [0, 120, 240, 360] {
        let cmd = seed.decide(&c, &sample, t);
        assert!(cmd.desired.is_none());
    }
}

fn with_local_volumes(n: u32) -> SimOptions {
    SimOptions {
        local_volume_pods: Some(n),
        ..opts()
    }
}

#[test]
fn a_local_volume_pod_stays_on_its_node_and_is_lost_with_it() {
    let mut c = Cluster::new(with_local_volumes(1), 2, 1);
    c.schedule(0);
    let home = c.pods[0].node.expect("the database pod runs");
    assert_eq!(c.pods[0].volume, Some(cluster::LocalVolume::On(home)));
    // Its node fills up and it is evicted: it waits for that node, not the free one.
    c.terminate(home, 10);
    c.advance(20);
    c.schedule(20);
    assert_eq!(c.pods[0].node, None, "a local volume cannot follow the pod");
    c.advance(10 + c.opts.drain_time_s);
    c.schedule(100);
    assert_eq!(c.pods[0].volume, Some(cluster::LocalVolume::Lost));
    assert_eq!(
        c.pods[0].node, None,
        "its data is gone: it never runs again"
    );
    assert_eq!(c.volumes_lost, 1);
}

#[test]
fn smartscale_never_removes_the_node_of_a_local_volume_and_the_model_is_why() {
    // 3 nodes of demand, then 1, beside 2 database pods: consolidation removes nodes, but
    // never one that holds a database's volume. Without the capacity model (requests only)
    // the same policy strands them.
    let o = with_local_volumes(2);
    let trace = step_trace(6.0, 0.5, 60, 7200);
    let mut with_model = smartscale(&o);
    let run = simulate(
        &trace,
        &o,
        1,
        Start::cold(3),
        &mut with_model,
        &mut |_, _| {},
    );
    assert_eq!(run.volumes_lost, 0);
    assert!(run.scale_actions >= 1, "it still consolidates");
    let mut requests_only = smartscale(&o);
    requests_only.capacity_model = false;
    let run = simulate(
        &trace,
        &o,
        1,
        Start::cold(3),
        &mut requests_only,
        &mut |_, _| {},
    );
    assert!(run.volumes_lost > 0, "requests alone cannot see the volume");
}

#[test]
fn evictions_count_the_pods_of_removed_nodes_not_of_spot_interruptions() {
    let mut c = Cluster::new(opts(), 2, 1);
    c.set_demand(3.0, None, 0);
    c.schedule(0);
    let on_first = c.pods.iter().filter(|p| p.node == Some(0)).count() as u32;
    assert!(on_first > 0);
    c.terminate(0, 10);
    assert_eq!(c.evictions, on_first);
    c.advance(10 + c.opts.drain_time_s);
    assert_eq!(c.lifetimes, vec![10 + c.opts.drain_time_s]);

    let spot = SimOptions {
        spot_interruptions_per_node_hour: 100.0,
        ..opts()
    };
    let mut c = Cluster::new(spot, 2, 1);
    c.set_demand(3.0, None, 0);
    c.schedule(0);
    c.advance(3600);
    c.advance(3600 + 120);
    assert!(c.lifetimes.len() >= 2, "interrupted instances ended");
    assert_eq!(
        c.evictions, 0,
        "an interruption is not the autoscaler's eviction"
    );
}

#[test]
fn a_warm_pool_serves_a_scale_out_with_a_warm_boot_and_takes_its_instance_back() {
    // max 4, 1 node: the pool holds max - desired = 3, warm and stopped from the start.
    let o = SimOptions {
        max: 4,
        warm_boot_jitter_s: 0,
        ..opts()
    };
    let mut c = Cluster::new(o.clone(), 1, 1).with_warm_pool();
    assert_eq!(c.pool_warming_and_stopped(0), (0, 3));
    c.set_desired(2, 100);
    // The pooled instance starts: Ready a warm boot later, not a cold one.
    assert_eq!(c.pool.len(), 2);
    c.advance(100 + o.warm_boot_time_s - 1);
    assert_eq!(c.ready_nodes(), 1);
    c.advance(100 + o.warm_boot_time_s);
    assert_eq!(c.ready_nodes(), 2);
    // The pool is refilled only to max - desired = 2: nothing launches.
    assert_eq!(c.pool_warming_and_stopped(200), (0, 2));
    // The group's scale-in (ReuseOnScaleIn): the drained instance stops, back in the pool.
    c.set_desired(1, 1000);
    c.advance(1000 + o.drain_time_s);
    assert_eq!(c.nodes.len(), 1);
    assert_eq!(c.pool_warming_and_stopped(1100), (0, 3));
    // Billed: one running stretch, start to stop; no lifetime ended (nothing terminated).
    assert_eq!(c.billed.len(), 1, "{:?}", c.billed);
    assert!(c.lifetimes.is_empty());
    // A chosen termination ends the instance; the pool refills with a cold-booting one.
    c.set_desired(2, 2000);
    let taken = c.nodes[1].id;
    c.terminate(taken, 2100);
    c.advance(2100 + o.drain_time_s);
    assert!(c.pool.iter().all(|p| p.id != taken), "{:?}", c.pool);
    assert_eq!(c.lifetimes.len(), 1);
    assert_eq!(c.pool_warming_and_stopped(2100 + o.drain_time_s), (1, 2));
}

#[test]
fn an_emptied_pool_refills_with_cold_boots_that_are_billed_until_they_stop() {
    // warm_pool_size 1: after its instance is taken, a new one warms for a cold boot, then
    // stops; a scale-out meanwhile is a cold launch.
    let o = SimOptions {
        warm_pool_size: Some(1),
        warm_boot_jitter_s: 0,
        ..opts()
    };
    let mut c = Cluster::new(o.clone(), 1, 1).with_warm_pool();
    c.set_desired(2, 0);
    c.advance(0);
    assert_eq!(c.pool_warming_and_stopped(0), (1, 0), "the refill warms");
    c.set_desired(3, 10);
    c.advance(10);
    assert_eq!(c.pool.len(), 1, "a warming instance is not taken");
    c.advance(10 + o.boot_time_s);
    assert_eq!(c.ready_nodes(), 3, "cold boot");
    assert_eq!(c.pool_warming_and_stopped(o.boot_time_s), (0, 1));
    c.finish(1000);
    // The refill's warming stretch is billed; the stopped time is not.
    assert!(c.billed.contains(&o.boot_time_s), "{:?}", c.billed);
}

#[test]
fn a_warm_pool_cuts_the_wait_to_a_warm_boot_and_costs_its_volumes() {
    let o = SimOptions {
        warm_boot_jitter_s: 0,
        ..opts()
    };
    let trace = step_trace(2.0, 4.0, 100, 3600);
    let cold = simulate(
        &trace,
        &o,
        1,
        Start::cold(1),
        &mut smartscale(&o),
        &mut |_, _| {},
    );
    let start = Start {
        nodes: 1,
        warm_pool: true,
    };
    let warm = simulate(&trace, &o, 1, start, &mut smartscale(&o), &mut |_, _| {});
    assert_eq!(cold.waits.iter().max(), Some(&76));
    // Fast path 1 s, then a warm boot.
    assert_eq!(warm.waits.iter().max(), Some(&(1 + o.warm_boot_time_s)));
    assert!(warm.stopped_seconds > 0.0 && cold.stopped_seconds == 0.0);
    let warm_cost = report::PolicyResult::from_run("w", &o, &warm, 3600).cost;
    let cold_cost = report::PolicyResult::from_run("c", &o, &cold, 3600).cost;
    // The same running stretches (the node is billed from its start either way), plus the
    // pool's stopped volumes.
    let volumes = warm.stopped_seconds / 3600.0 * o.stopped_hourly_price;
    assert!(
        (warm_cost - (cold_cost + volumes)).abs() < 0.001,
        "{warm_cost} vs {cold_cost} + {volumes}"
    );
}
