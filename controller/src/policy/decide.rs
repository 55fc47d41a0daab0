//! The decision itself: scale up for pending pods or high usage, otherwise maybe scale down.

use super::model::{self, CapacityModel};
use super::{
    Action, Decision, Lifecycle, Memory, Observation, PolicyConfig, Reading, binpack, prewarm,
    victim,
};
use std::collections::HashSet;

/// Predicted usage after a consolidation must stay this many points under the scale-up
/// thresholds, so removing a node does not trigger the next scale-up (flapping).
const CONSOLIDATION_MARGIN: f64 = 10.0;

/// Capacity still arriving, and instances to roll back, across all groups.
struct Boot {
    in_flight: u32,
    /// `in_flight` per group, indexed like `Observation::groups`.
    per_group: Vec<u32>,
    rollback: Vec<String>,
    /// Instances past the provision time that are not rolled back (see `booting`).
    unmatched: Vec<String>,
}

/// Worker nodes whose providerID names no EC2 instance: they belong to no group, but while any
/// exist the controller cannot tell "booting" from "joined under another name".
fn unknown_nodes(obs: &Observation) -> Vec<&str> {
    obs.nodes
        .iter()
        .filter(|n| n.instance_id.is_none() && !n.control_plane)
        .map(|n| n.name.as_str())
        .collect()
}

fn booting(obs: &Observation, cfg: &PolicyConfig, now: i64) -> Boot {
    let ready: HashSet<&str> = obs
        .nodes
        .iter()
        .filter(|n| n.ready)
        .filter_map(|n| n.instance_id.as_deref())
        .collect();
    let limit = cfg.max_node_provision_time.as_secs() as i64;
    let unknown = unknown_nodes(obs);
    let mut boot = Boot {
        in_flight: 0,
        per_group: vec![0; obs.groups.len()],
        rollback: Vec::new(),
        unmatched: Vec::new(),
    };
    let mut overdue: Vec<(i64, String)> = Vec::new();
    for (gi, g) in obs.groups.iter().enumerate() {
        let before = boot.in_flight;
        let live: Vec<_> = g
            .instances
            .iter()
            .filter(|i| matches!(i.lifecycle, Lifecycle::Launching | Lifecycle::InService))
            .collect();
        for i in &live {
            if ready.contains(i.id.as_str()) || i.ever_ready {
                continue;
            }
            if now - i.first_seen > limit {
                if unknown.is_empty() {
                    overdue.push((i.first_seen, i.id.clone()));
                } else {
                    // It may be one of the nodes we cannot match: neither in flight (it would
                    // mute scale-ups forever) nor terminated (it may be running pods).
                    boot.unmatched.push(i.id.clone());
                    continue;
                }
            }
            boot.in_flight += 1;
        }
        // Desired capacity the group has not launched yet is on its way too — unless the group
        // is in backoff: its launches fail, that capacity is not coming.
        if g.backoff.is_none() {
            boot.in_flight += g.desired.saturating_sub(live.len() as u32);
        }
        boot.per_group[gi] = boot.in_flight - before;
    }
    // One rollback per decision, the oldest first: terminated without lowering desired
    // capacity, so the ASG launches a fresh replacement (still counted in flight above).
    overdue.sort();
    boot.rollback
        .extend(overdue.into_iter().take(1).map(|(_, id)| id));
    boot
}

/// Nodes that were Ready and have been NotReady past `replace_unready_after`, while NotReady
/// nodes are a minority of the workers (a cluster-wide fault must not replace the fleet); one
/// per decision, the longest unready first.
fn long_unready(
    obs: &Observation,
    cfg: &PolicyConfig,
    now: i64,
    reasons: &mut Vec<String>,
) -> Vec<String> {
    let ever_ready: HashSet<&str> = obs
        .groups
        .iter()
        .flat_map(|g| &g.instances)
        .filter(|i| i.ever_ready && i.lifecycle == Lifecycle::InService)
        .map(|i| i.id.as_str())
        .collect();
    let workers: Vec<_> = obs
        .nodes
        .iter()
        .filter(|n| !n.control_plane && n.instance_id.is_some())
        .collect();
    let unready = workers.iter().filter(|n| !n.ready).count();
    let limit = cfg.replace_unready_after.as_secs() as i64;
    let mut due: Vec<(i64, &str, &str)> = workers
        .iter()
        .filter(|n| !n.ready)
        .filter_map(|n| {
            let id = n.instance_id.as_deref()?;
            let since = n.not_ready_since?;
            (ever_ready.contains(id) && now - since > limit).then_some((since, id, n.name.as_str()))
        })
        .collect();
    if due.is_empty() {
        return Vec::new();
    }
    if unready * 2 >= workers.len() {
        reasons.push(format!(
            "{unready} of {} workers are NotReady: not replacing any (a cluster-wide fault, not broken machines)",
            workers.len()
        ));
        return Vec::new();
    }
    due.sort();
    let (since, id, name) = due[0];
    reasons.push(format!(
        "replacing {name} ({id}): NotReady for {}s, over {}s",
        now - since,
        limit
    ));
    vec![id.to_string()]
}

fn since(t: Option<i64>, now: i64) -> Option<i64> {
    t.map(|t| now - t)
}

fn cooling(last: Option<i64>, window: std::time::Duration, now: i64) -> Option<i64> {
    let left = window.as_secs() as i64 - since(last, now)?;
    (left > 0).then_some(left)
}

/// Decides one step with the requests-only picture of the cluster (see [`decide_with`]).
pub fn decide(obs: &Observation, mem: &Memory, cfg: &PolicyConfig, now: i64) -> (Decision, Memory) {
    decide_with(obs, None, mem, cfg, now)
}

/// Decides one step. Returns the decision and the memory to persist for the next one. With a
/// capacity model, pending pods are matched to the groups whose template can host them under
/// every scheduler filter, and a node is removed only if all its pods have a place elsewhere.
pub fn decide_with(
    obs: &Observation,
    mut model: Option<&mut CapacityModel>,
    mem: &Memory,
    cfg: &PolicyConfig,
    now: i64,
) -> (Decision, Memory) {
    let mut next = mem.clone();
    let demand = prewarm::demand(obs);
    next.forecast.record(now, demand);
    next.hold = mem.hold.clone().filter(|h| h.until > now);
    let mut reasons = Vec::new();
    let mut boot = booting(obs, cfg, now);
    if !boot.rollback.is_empty() {
        reasons.push(format!(
            "rollback: {} not Ready within {}s",
            boot.rollback.join(", "),
            cfg.max_node_provision_time.as_secs()
        ));
    }

    // A dip resets the trend at once; a high reading counts once per check interval (with a
    // little slack for timer jitter).
    let spacing = (cfg.check_interval.as_secs_f64() * 0.8) as i64;
    match obs.usage.cpu {
        Reading::Value(v) if v > cfg.cpu_above => {
            if mem.last_cpu_check.is_none_or(|t| now - t >= spacing) {
                next.high_cpu_checks = mem.high_cpu_checks + 1;
                next.last_cpu_check = Some(now);
            }
        }
        _ => {
            next.high_cpu_checks = 0;
            next.last_cpu_check = None;
        }
    }

    if !boot.unmatched.is_empty() {
        reasons.push(format!(
            "{} not matched to a Node after {}s while Nodes {:?} have no AWS providerID: not rolled back, not counted as booting",
            boot.unmatched.join(", "),
            cfg.max_node_provision_time.as_secs(),
            unknown_nodes(obs)
        ));
    }
    for g in &obs.groups {
        if let Some(why) = &g.backoff {
            reasons.push(format!("{} in backoff: {why}", g.asg_name));
        }
        if let Some(why) = &g.scale_down_blocked {
            reasons.push(format!("scale-down of {} is off: {why}", g.asg_name));
        }
    }
    let replace = long_unready(obs, cfg, now, &mut reasons);

    let mut decision = Decision {
        action: Action::None,
        group: 0,
        from: obs.groups.first().map_or(0, |g| g.desired),
        to: obs.groups.first().map_or(0, |g| g.desired),
        victim: None,
        rollback: std::mem::take(&mut boot.rollback),
        replace,
        in_flight: boot.in_flight,
        reasons,
        unhelpable: Vec::new(),
    };

    // A desired capacity below the group's minimum (set outside SmartScale) is raised first.
    if let Some((gi, g)) = obs
        .groups
        .iter()
        .enumerate()
        .find(|(_, g)| g.desired < g.min && g.backoff.is_none())
    {
        decision.action = Action::ScaleUp;
        decision.group = gi;
        decision.from = g.desired;
        decision.to = g.min;
        decision.reasons.push(format!(
            "desired capacity {} of {} is below its minimum {}",
            g.desired, g.asg_name, g.min
        ));
        next.last_scale_up = Some(now);
        return (decision, next);
    }

    // The model's verdict on the pending pods: which group grows, which pods no node helps.
    let verdict = model
        .as_deref_mut()
        .filter(|m| model::plans_pending(cfg) && !m.cluster.pending.is_empty())
        .map(|m| m.plan_pending(obs, &boot.per_group, &mut decision.reasons));
    let pending_helpable = verdict.as_ref().map_or(obs.pending.len(), |v| v.helpable);
    let (add, chosen) = scale_up_count(
        obs,
        verdict.as_ref(),
        mem,
        &next,
        cfg,
        boot.in_flight,
        now,
        &mut decision.reasons,
    );
    if let Some(v) = verdict {
        decision.unhelpable = v.unhelpable;
    }
    let (add, chosen) = if add == 0 && cfg.forecast.enabled {
        match prewarm::step(
            obs,
            &mut next,
            cfg,
            demand,
            boot.in_flight,
            now,
            &mut decision.reasons,
        ) {
            Some((gi, n)) => (n, Some(gi)),
            None => (0, chosen),
        }
    } else {
        (add, chosen)
    };
    if add > 0 {
        let group = chosen.or_else(|| {
            obs.groups
                .iter()
                .position(|g| g.desired < g.max && g.backoff.is_none())
        });
        match group {
            Some(gi) => {
                let g = &obs.groups[gi];
                decision.action = Action::ScaleUp;
                decision.group = gi;
                decision.from = g.desired;
                decision.to = (g.desired + add).min(g.max);
                if g.desired + add > g.max {
                    decision
                        .reasons
                        .push(format!("clamped to max {} of {}", g.max, g.asg_name));
                }
                next.last_scale_up = Some(now);
                next.high_cpu_checks = 0;
                next.low_since = None;
            }
            None => decision
                .reasons
                .push("every node group is at its maximum or in backoff".to_string()),
        }
        return (decision, next);
    }

    scale_down(
        obs,
        model,
        pending_helpable,
        &mut next,
        cfg,
        boot.in_flight,
        now,
        &mut decision,
    );
    (decision, next)
}

/// Nodes to add for pending pods as the capacity model plans them (`None`: no new node would
/// help them; the usage signals still decide), and the group to grow.
fn for_pending_modelled(
    v: &model::PendingVerdict,
    cfg: &PolicyConfig,
    up_cooldown: Option<i64>,
    reasons: &mut Vec<String>,
) -> Option<(u32, Option<usize>)> {
    let Some((gi, add)) = v.grow else {
        return (v.waiting > 0).then_some((0, None));
    };
    if let Some(left) = up_cooldown.filter(|_| cfg.cooldown_applies_to_pending) {
        reasons.push(format!(
            "pending pods need nodes, but scale-up cooldown has {left}s left"
        ));
        return Some((0, None));
    }
    Some((add, Some(gi)))
}

/// Nodes to add for pending pods, or `None` when no new node could help them (all larger than
/// a node): then the usage signals still decide, one oversized pod must not mute them.
fn for_pending(
    obs: &Observation,
    cfg: &PolicyConfig,
    in_flight: u32,
    up_cooldown: Option<i64>,
    reasons: &mut Vec<String>,
) -> Option<u32> {
    let pending = obs.pending.len() as u32;
    let step = if pending > 5 { 2 } else { 1 };
    let mut wanted = step;
    if cfg.pending_pods_binpack {
        let node = obs
            .groups
            .iter()
            .find(|g| g.desired < g.max && g.backoff.is_none())
            .or(obs.groups.first())
            .map(|g| g.node_allocatable)
            .unwrap_or_default();
        let requests: Vec<_> = obs.pending.iter().map(|p| p.requests).collect();
        let (need, too_big) = binpack::nodes_needed(&requests, node);
        if too_big > 0 {
            reasons.push(format!(
                "{too_big} pending pods request more than one node offers; no scale-up helps them"
            ));
        }
        if need == 0 {
            return None;
        }
        wanted = wanted.max(need);
    }
    if in_flight >= wanted {
        reasons.push(format!(
            "{pending} pending pods wait for {in_flight} nodes already booting"
        ));
        return Some(0);
    }
    if let Some(left) = up_cooldown.filter(|_| cfg.cooldown_applies_to_pending) {
        reasons.push(format!(
            "{pending} pending pods, but scale-up cooldown has {left}s left"
        ));
        return Some(0);
    }
    reasons.push(format!(
        "{pending} pending pods need {wanted} nodes, {in_flight} already booting"
    ));
    Some(wanted - in_flight)
}

/// How many nodes to add (0 for none) and, when the capacity model chose it, to which group;
/// with the reasons.
#[allow(clippy::too_many_arguments)]
fn scale_up_count(
    obs: &Observation,
    verdict: Option<&model::PendingVerdict>,
    mem: &Memory,
    next: &Memory,
    cfg: &PolicyConfig,
    in_flight: u32,
    now: i64,
    reasons: &mut Vec<String>,
) -> (u32, Option<usize>) {
    let up_cooldown = cooling(mem.last_scale_up, cfg.after_scale_up, now);
    if let Some(v) = verdict {
        if let Some(grow) = for_pending_modelled(v, cfg, up_cooldown, reasons) {
            return grow;
        }
    } else if cfg.pending_pods
        && !obs.pending.is_empty()
        && let Some(add) = for_pending(obs, cfg, in_flight, up_cooldown, reasons)
    {
        return (add, None);
    }

    let mut why = Vec::new();
    if next.high_cpu_checks >= cfg.cpu_checks {
        why.push(format!(
            "CPU above {}% for {} checks",
            cfg.cpu_above, next.high_cpu_checks
        ));
    }
    if let Some(m) = obs.usage.memory.value().filter(|m| *m > cfg.memory_above) {
        why.push(format!("memory {m:.1}% above {}%", cfg.memory_above));
    }
    for c in &obs.usage.custom {
        if let (Some(v), Some(t)) = (c.value.value(), c.scale_up_above)
            && v > t
        {
            why.push(format!("{} {v} above {t}", c.name));
        }
    }
    if why.is_empty() {
        return (0, None);
    }
    if in_flight > 0 {
        reasons.push(format!(
            "{}; waiting for {in_flight} nodes already booting",
            why.join("; ")
        ));
        return (0, None);
    }
    if let Some(left) = up_cooldown {
        reasons.push(format!(
            "{}; scale-up cooldown has {left}s left",
            why.join("; ")
        ));
        return (0, None);
    }
    reasons.extend(why);
    (1, None)
}

#[allow(clippy::too_many_arguments)]
fn scale_down(
    obs: &Observation,
    model: Option<&mut CapacityModel>,
    pending: usize,
    next: &mut Memory,
    cfg: &PolicyConfig,
    in_flight: u32,
    now: i64,
    d: &mut Decision,
) {
    let block = |next: &mut Memory, d: &mut Decision, why: String| {
        next.low_since = None;
        d.reasons.push(why);
    };
    if pending > 0 {
        return block(next, d, format!("{pending} pods pending"));
    }
    if in_flight > 0 || !d.rollback.is_empty() {
        return block(next, d, format!("{in_flight} nodes still booting"));
    }
    if !d.replace.is_empty() {
        return block(next, d, "a broken node is being replaced".to_string());
    }
    // One removal at a time: while a node drains, its pods still need room that the fit check
    // below cannot see (they are on a cordoned node).
    let draining = obs
        .groups
        .iter()
        .flat_map(|g| &g.instances)
        .filter(|i| i.lifecycle == Lifecycle::Terminating)
        .count();
    if draining > 0 {
        return block(next, d, format!("{draining} nodes still draining"));
    }
    let (cpu, memory) = match (&obs.usage.cpu, &obs.usage.memory) {
        (Reading::Value(c), Reading::Value(m)) => (*c, *m),
        (c, m) => {
            let missing: Vec<String> = [("cpu", c), ("memory", m)]
                .into_iter()
                .filter_map(|(n, r)| match r {
                    Reading::Missing(why) => Some(format!("{n} signal missing ({why})")),
                    Reading::Value(_) => None,
                })
                .collect();
            return block(next, d, format!("no scale-down: {}", missing.join(", ")));
        }
    };
    let mut custom_low = true;
    for c in &obs.usage.custom {
        match (&c.value, c.scale_down_below, c.scale_up_above) {
            (Reading::Missing(why), Some(_), _) | (Reading::Missing(why), _, Some(_)) => {
                return block(
                    next,
                    d,
                    format!("no scale-down: {} missing ({why})", c.name),
                );
            }
            (Reading::Value(v), below, above)
                if below.is_some_and(|t| *v >= t) || above.is_some_and(|t| *v > t) =>
            {
                custom_low = false;
            }
            _ => {}
        }
    }
    let usage_low = cpu < cfg.cpu_below && memory < cfg.memory_below && custom_low;

    let limits = disruption_limits(obs, next, cfg, now);
    let candidate = match victim::choose(obs, model, &limits) {
        Ok(c) => c,
        Err(why) => {
            // Nothing may go now because of the controls alone: keep the sustained window
            // running, so the node goes as soon as they allow it.
            let only_controls = why.contains("disruption budget") || why.contains("younger than");
            if !only_controls {
                next.low_since = None;
            }
            d.reasons.push(why);
            for spent in limits.budget_spent.iter().flatten() {
                d.reasons.push(spent.clone());
            }
            return;
        }
    };
    let consolidates = cfg.consolidate && custom_low && {
        let total = obs
            .nodes
            .iter()
            .filter(|n| n.ready)
            .fold(super::Resources::ZERO, |a, n| a.plus(n.allocatable));
        let left = total.minus(candidate.allocatable);
        let after = |usage: f64, t: f64, l: f64| {
            if l > 0.0 {
                usage * t / l
            } else {
                f64::INFINITY
            }
        };
        after(cpu, total.cpu, left.cpu) < cfg.cpu_above - CONSOLIDATION_MARGIN
            && after(memory, total.memory, left.memory) < cfg.memory_above - CONSOLIDATION_MARGIN
    };
    if !usage_low && !consolidates {
        return block(
            next,
            d,
            format!("usage too high to remove a node (CPU {cpu:.1}%, memory {memory:.1}%)"),
        );
    }
    let low_since = *next.low_since.get_or_insert(now);
    let held = now - low_since;
    if let Some(why) = prewarm::holds(obs, next, in_flight, &candidate.victim.node, now) {
        d.reasons.push(why);
        return;
    }
    if held < cfg.sustained.as_secs() as i64 {
        d.reasons.push(format!(
            "{} can go; low for {held}s of {}s",
            candidate.victim.node,
            cfg.sustained.as_secs()
        ));
        return;
    }
    for (last, window, what) in [
        (next.last_scale_up, cfg.after_scale_up, "scale-up"),
        (next.last_scale_down, cfg.after_scale_down, "scale-down"),
    ] {
        if let Some(left) = cooling(last, window, now) {
            d.reasons.push(format!(
                "{} can go, but {what} cooldown has {left}s left",
                candidate.victim.node
            ));
            return;
        }
    }
    let g = &obs.groups[candidate.group];
    d.action = super::Action::ScaleDown;
    d.group = candidate.group;
    d.from = g.desired;
    d.to = g.desired - 1;
    d.reasons.push(if usage_low {
        format!(
            "CPU {cpu:.1}% < {}% and memory {memory:.1}% < {}% for {held}s",
            cfg.cpu_below, cfg.memory_below
        )
    } else {
        format!(
            "{}'s pods fit on the other nodes for {held}s",
            candidate.victim.node
        )
    });
    d.reasons.push(format!(
        "removing least-utilised node {} ({})",
        candidate.victim.node, candidate.victim.instance_id
    ));
    d.victim = Some(candidate.victim);
    next.last_scale_down = Some(now);
    next.removals
        .entry(g.asg_name.clone())
        .or_default()
        .push(now);
}

/// The disruption controls now: the node age limit, and per group whether its budget is spent
/// (forgetting removals older than the window).
fn disruption_limits(
    obs: &Observation,
    next: &mut Memory,
    cfg: &PolicyConfig,
    now: i64,
) -> victim::Limits {
    let budget = &cfg.disruption_budget;
    let window = budget.window.as_secs() as i64;
    next.removals.retain(|group, times| {
        times.retain(|t| now - t < window);
        !times.is_empty() && obs.groups.iter().any(|g| &g.asg_name == group)
    });
    let budget_spent = obs
        .groups
        .iter()
        .map(|g| {
            let allowed = budget.allowed(g.desired)?;
            let used = next.removals.get(&g.asg_name).map_or(0, Vec::len) as u32;
            (used >= allowed).then(|| {
                format!(
                    "{}: disruption budget spent ({used} of {allowed} removals in the last {window}s)",
                    g.asg_name
                )
            })
        })
        .collect();
    victim::Limits {
        now,
        min_age_s: cfg.consolidate_after.as_secs() as i64,
        budget_spent,
    }
}
