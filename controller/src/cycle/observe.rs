//! Reading every source and turning it into the policy's view; exporting that view as metrics.

use super::Context;
use crate::actuator::AsgState;
use crate::metrics::{
    DecisionLabels, GroupLabels, NodeCostLabels, NodeInfoLabels, NodeLabels, PriceLabels,
    SignalLabels, TransitionLabels,
};
use crate::policy::{Decision, Lifecycle, Observation, Resources};
use crate::signals::cluster::ClusterSnapshot;
use crate::signals::prices::Priced;
use crate::signals::prometheus::PromSignals;
use crate::state::StoredState;
use crate::{Error, Result};

/// Default node size when neither the config nor a Ready node tells (t3.medium-like).
const FALLBACK_ALLOCATABLE: Resources = Resources {
    cpu: 2.0,
    memory: 4.0,
};

/// Reads every source. Prometheus failures become missing readings; AWS and Kubernetes
/// failures are errors (without them no decision is safe).
pub(super) async fn observe(
    ctx: &Context,
) -> Result<(PromSignals, Vec<AsgState>, ClusterSnapshot)> {
    let names = ctx.cfg.asg_names();
    let (prom, asgs) = tokio::join!(ctx.prometheus.read(), ctx.actuator.describe(&names));
    let prom_ok = prom.healthy();
    ctx.health(
        "prometheus",
        prom_ok,
        if prom_ok {
            "ok".to_string()
        } else {
            format!("{:?}", [&prom.usage.cpu, &prom.usage.memory])
        },
    )
    .await;
    if !prom_ok {
        ctx.metrics.error("prometheus");
    }
    let asgs = match asgs {
        Ok(a) => {
            ctx.health("autoscaling", true, "ok").await;
            a
        }
        Err(e) => {
            ctx.health("autoscaling", false, e.to_string()).await;
            return Err(e);
        }
    };
    if !ctx.cluster.healthy() {
        ctx.health("kubernetes", false, "watch failing; see logs")
            .await;
        return Err(Error::Kubernetes(
            "the Kubernetes watch is failing; no decision without the cluster's state".into(),
        ));
    }
    ctx.health("kubernetes", true, "ok").await;
    let snap = ctx.cluster.snapshot();
    if !snap.unhelpable.is_empty() {
        tracing::info!(
            pods = ?snap.unhelpable,
            "unschedulable pods that a new worker could not take either (node selector or extended resource); not scaling up for them"
        );
    }
    Ok((prom, asgs, snap))
}

/// Allocatable of one node of the group: configured, else the largest Ready node's, else a default.
fn allocatable(ctx: &Context, gi: usize, asg: &AsgState, snap: &ClusterSnapshot) -> Resources {
    if let Some(a) = ctx.cfg.node_groups[gi].allocatable {
        return a;
    }
    snap.nodes
        .iter()
        .filter(|n| {
            n.ready
                && n.instance_id
                    .as_ref()
                    .is_some_and(|id| asg.instances.iter().any(|i| &i.id == id))
        })
        .map(|n| n.allocatable)
        .reduce(Resources::max)
        .unwrap_or(FALLBACK_ALLOCATABLE)
}

/// The policy's view. `safety` holds each group's unresolved problems (they block its
/// scale-down); backoffs come from `state`.
pub(super) fn build_observation(
    ctx: &Context,
    prom: &PromSignals,
    asgs: &[AsgState],
    snap: &ClusterSnapshot,
    state: &mut StoredState,
    safety: &std::collections::HashMap<String, crate::actuator::GroupSafety>,
    now: i64,
) -> Observation {
    // Remember when each not-yet-Ready instance was first seen; forget the rest.
    let ready: std::collections::HashSet<&str> = snap
        .nodes
        .iter()
        .filter(|n| n.ready)
        .filter_map(|n| n.instance_id.as_deref())
        .collect();
    let booting: Vec<&str> = asgs
        .iter()
        .flat_map(|g| g.live())
        .filter(|i| !ready.contains(i.id.as_str()))
        .map(|i| i.id.as_str())
        .collect();
    state
        .first_seen
        .retain(|id, _| booting.contains(&id.as_str()));
    for id in &booting {
        state.first_seen.entry(id.to_string()).or_insert(now);
    }
    // And which live instances have been Ready nodes at least once.
    let live: std::collections::HashSet<&str> = asgs
        .iter()
        .flat_map(|g| g.live())
        .map(|i| i.id.as_str())
        .collect();
    state.ever_ready.retain(|id, _| live.contains(id.as_str()));
    for id in live.intersection(&ready) {
        state.ever_ready.entry(id.to_string()).or_insert(now);
    }
    let groups = ctx
        .cfg
        .node_groups
        .iter()
        .enumerate()
        .filter_map(|(gi, g)| {
            let asg = asgs.iter().find(|a| a.name == g.asg_name)?;
            let mut group = asg.to_group(
                g.min,
                g.max,
                allocatable(ctx, gi, asg, snap),
                &state.first_seen,
                &state.ever_ready,
                now,
            );
            group.scale_down_blocked = safety
                .get(&g.asg_name)
                .filter(|s| !s.problems.is_empty())
                .map(|s| s.problems.join("; "));
            group.backoff = state
                .backoff
                .get(&g.asg_name)
                .filter(|b| b.until > now)
                .map(|b| format!("{} (until {}s from now)", b.reason, b.until - now));
            Some(group)
        })
        .collect();
    Observation {
        usage: prom.usage.clone(),
        nodes: snap.nodes.clone(),
        pending: snap.pending.clone(),
        groups,
    }
}

/// Counts launches that ended while their launch lifecycle action waited: an instance seen in
/// `Pending:Wait` that is terminating now never served (the action timed out, the agent
/// abandoned it, or the controller rolled it back). Every group's counters exist from the
/// start, at 0 (`terminating` stays 0 here: only the agent sees a drain run out of time).
pub(super) fn count_launch_timeouts(ctx: &Context, asgs: &[AsgState]) {
    let mut last = ctx.last_states.lock().unwrap_or_else(|p| p.into_inner());
    for asg in asgs {
        for transition in ["launching", "terminating"] {
            ctx.metrics
                .lifecycle_timeouts
                .get_or_create(&TransitionLabels {
                    node_group: asg.name.clone(),
                    transition: transition.to_string(),
                })
                .inc_by(0);
        }
        for i in &asg.instances {
            if last.get(&i.id).map(String::as_str) == Some("Pending:Wait")
                && i.lifecycle == Lifecycle::Terminating
            {
                ctx.metrics
                    .lifecycle_timeouts
                    .get_or_create(&TransitionLabels {
                        node_group: asg.name.clone(),
                        transition: "launching".to_string(),
                    })
                    .inc();
            }
        }
    }
    *last = asgs
        .iter()
        .flat_map(|a| a.instances.iter())
        .map(|i| (i.id.clone(), i.state.clone()))
        .collect();
}

pub(super) fn export(
    ctx: &Context,
    prom: &PromSignals,
    obs: &Observation,
    asgs: &[AsgState],
    snap: &ClusterSnapshot,
    d: &Decision,
) {
    let m = &ctx.metrics;
    let mut signals = vec![
        ("cpu", &prom.usage.cpu),
        ("memory", &prom.usage.memory),
        ("pending_pods", &prom.pending_pods),
        ("nodes", &prom.nodes),
    ];
    signals.extend(
        prom.usage
            .custom
            .iter()
            .map(|c| (c.name.as_str(), &c.value)),
    );
    for (name, r) in signals {
        m.signal_value
            .get_or_create(&SignalLabels {
                signal: name.to_string(),
            })
            .set(r.value().unwrap_or(f64::NAN));
    }
    m.pending_pods.set(obs.pending.len() as i64);
    // The capacity model's verdict when it ran (with the reason per group), else the
    // requests-only view's.
    let unhelpable = if d.unhelpable.is_empty() {
        snap.unhelpable.len()
    } else {
        d.unhelpable.len()
    };
    m.unhelpable_pods.set(unhelpable as i64);
    m.node_info.clear();
    m.node_price.clear();
    m.node_cost.clear();
    let mut wanted = Vec::new();
    let mut prices_seen = std::collections::HashSet::new();
    let node_of: std::collections::HashMap<&str, _> = snap
        .nodes
        .iter()
        .zip(&snap.meta)
        .filter_map(|(n, meta)| Some((n.instance_id.as_deref()?, (n, meta))))
        .collect();
    for (gi, g) in obs.groups.iter().enumerate() {
        let ids: std::collections::HashSet<&str> =
            g.instances.iter().map(|i| i.id.as_str()).collect();
        let ready = obs
            .nodes
            .iter()
            .filter(|n| n.ready && n.instance_id.as_deref().is_some_and(|id| ids.contains(id)))
            .count() as i64;
        let live = g
            .instances
            .iter()
            .filter(|i| matches!(i.lifecycle, Lifecycle::Launching | Lifecycle::InService))
            .count() as i64;
        let set = |state: &str, v: i64| {
            m.nodes
                .get_or_create(&NodeLabels {
                    node_group: g.asg_name.clone(),
                    state: state.to_string(),
                })
                .set(v);
        };
        m.group_backoff
            .get_or_create(&GroupLabels {
                node_group: g.asg_name.clone(),
            })
            .set(i64::from(g.backoff.is_some()));
        set("current", live);
        set("desired", g.desired as i64);
        set("ready", ready);
        set(
            "in_flight",
            (live - ready).max(0) + (g.desired as i64 - live).max(0),
        );
        let fallback = ctx
            .cfg
            .node_groups
            .get(gi.min(ctx.cfg.node_groups.len().saturating_sub(1)))
            .and_then(|c| c.hourly_price);
        // Each instance at its own price: its type and zone, spot or on-demand as its node says
        // (no node yet: on-demand, the bound until the node says spot).
        let asg = asgs.iter().find(|a| a.name == g.asg_name);
        let mut group_cost = 0.0;
        for inst in g
            .instances
            .iter()
            .filter(|i| matches!(i.lifecycle, Lifecycle::Launching | Lifecycle::InService))
        {
            let node = node_of.get(inst.id.as_str()).copied();
            // Type and zone as Auto Scaling reports them: K3s's cloud provider labels every
            // node `node.kubernetes.io/instance-type=k3s`, so the label cannot price it. The
            // lifecycle comes from the agent's `smartscale.io/capacity-type` label.
            let asg = asg.and_then(|a| a.instances.iter().find(|i| i.id == inst.id));
            let known = |s: &str| !s.is_empty() && s != "unknown";
            let instance_type = asg
                .map(|a| a.instance_type.as_str())
                .filter(|t| known(t))
                .or(node.map(|(_, m)| m.instance_type.as_str()))
                .unwrap_or("unknown");
            let zone = asg
                .map(|a| a.zone.as_str())
                .filter(|z| known(z))
                .or(node.map(|(_, m)| m.zone.as_str()))
                .unwrap_or("unknown");
            let capacity_type = node.map_or("on-demand", |(_, m)| m.capacity_type.as_str());
            let priced = Priced::new(instance_type, zone, capacity_type);
            let quote = ctx.prices.quote(&priced, fallback);
            group_cost += quote.dollars;
            wanted.push(priced.clone());
            let Some((n, meta)) = node else { continue };
            m.node_info
                .get_or_create(&NodeInfoLabels {
                    node: n.name.clone(),
                    instance_id: inst.id.clone(),
                    instance_type: priced.instance_type.clone(),
                    capacity_type: meta.capacity_type.clone(),
                    zone: priced.zone.clone(),
                    node_group: g.asg_name.clone(),
                })
                .set(1);
            m.node_cost
                .get_or_create(&NodeCostLabels {
                    node: n.name.clone(),
                    instance_id: inst.id.clone(),
                    instance_type: priced.instance_type.clone(),
                    capacity_type: meta.capacity_type.clone(),
                    zone: priced.zone.clone(),
                    node_group: g.asg_name.clone(),
                    price_source: quote.source.as_str().to_string(),
                })
                .set(quote.dollars);
            // The group's price for this type and lifecycle (the dearest zone's, for spot), and
            // the type's on-demand price: what a static fleet of it would cost.
            let mut set_price = |capacity_type: &str, dollars: f64| {
                let gauge = m.node_price.get_or_create(&PriceLabels {
                    node_group: g.asg_name.clone(),
                    instance_type: priced.instance_type.clone(),
                    capacity_type: capacity_type.to_string(),
                });
                if prices_seen.insert((
                    g.asg_name.clone(),
                    priced.instance_type.clone(),
                    capacity_type.to_string(),
                )) {
                    gauge.set(dollars);
                } else {
                    gauge.set(gauge.get().max(dollars));
                }
            };
            set_price(&meta.capacity_type, quote.dollars);
            if priced.spot {
                let od = ctx.prices.quote(
                    &Priced::new(&priced.instance_type, &priced.zone, "on-demand"),
                    fallback,
                );
                set_price("on-demand", od.dollars);
            }
        }
        m.hourly_cost
            .get_or_create(&GroupLabels {
                node_group: g.asg_name.clone(),
            })
            .set(group_cost);
    }
    ctx.prices.refresh_in_background(wanted);
    m.decisions
        .get_or_create(&DecisionLabels {
            action: d.action.as_str().to_string(),
            node_group: obs
                .groups
                .get(d.group)
                .map(|g| g.asg_name.clone())
                .unwrap_or_default(),
            dry_run: ctx.dry_run().to_string(),
        })
        .inc();
}
