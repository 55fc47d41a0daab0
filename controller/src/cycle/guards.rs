//! What the lease holder does each cycle besides deciding, so that AWS and K3s cannot act
//! behind the policy's back:
//!
//! - [`secure_groups`]: every few minutes per group, the terminate hook must exist, `AZRebalance`
//!   is suspended and instances are protected from scale-in; what cannot be fixed blocks that
//!   group's scale-down.
//! - [`update_backoffs`]: a group whose launches fail (its scaling activities say so) or that
//!   launched nothing within `max_node_provision_time` backs off; the capacity it will not get is
//!   taken back (desired lowered to what it has), so pending pods go to another group.
//! - [`collect_ghost_nodes`]: a Node whose instance EC2 says is gone is deleted (K3s never does),
//!   so it stops counting and a new instance may re-use its name.

use super::Context;
use crate::actuator::{AsgState, GroupSafety, InstanceState};
use crate::signals::cluster::{ClusterSnapshot, instance_id};
use crate::state::{Backoff, Lease, StoredState};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// How often each group's hooks, suspended processes and protection are checked again.
pub const GROUP_CHECK_INTERVAL: Duration = Duration::from_secs(300);
/// How long an instance EC2 said exists is not asked about again.
const INSTANCE_RECHECK: Duration = Duration::from_secs(300);

/// Per group: problems that block its scale-down (from the last check).
pub(super) async fn secure_groups(
    ctx: &Context,
    asgs: &[AsgState],
) -> HashMap<String, GroupSafety> {
    let mut out = HashMap::new();
    for g in &ctx.cfg.node_groups {
        let Some(asg) = asgs.iter().find(|a| a.name == g.asg_name) else {
            continue;
        };
        let cached = lock(&ctx.safety)
            .get(&g.asg_name)
            .filter(|(at, _)| at.elapsed() < GROUP_CHECK_INTERVAL)
            .map(|(_, s)| s.clone());
        let safety = match cached {
            Some(s) => s,
            None => {
                let s = ctx
                    .actuator
                    .secure_group(asg, g.suspend_az_rebalance, g.protect_from_scale_in)
                    .await;
                for f in &s.fixed {
                    tracing::warn!(asg = %g.asg_name, "{f}");
                }
                for p in &s.problems {
                    tracing::error!(asg = %g.asg_name, "{p}");
                }
                ctx.metrics.group_problems(&g.asg_name, s.problems.len());
                lock(&ctx.safety).insert(g.asg_name.clone(), (Instant::now(), s.clone()));
                s
            }
        };
        out.insert(g.asg_name.clone(), safety);
    }
    out
}

/// A group to shrink back to what it has, because its missing capacity is not coming.
pub(super) struct Cancel {
    pub group: String,
    pub from: u32,
    pub to: u32,
    pub reason: String,
}

/// Updates every group's backoff in `state`; returns the groups whose unlaunched desired
/// capacity should be taken back.
pub(super) async fn update_backoffs(
    ctx: &Context,
    asgs: &[AsgState],
    state: &mut StoredState,
    now: i64,
) -> Vec<Cancel> {
    let policy = &ctx.cfg.policy;
    let provision = policy.max_node_provision_time.as_secs() as i64;
    let mut cancels = Vec::new();
    for asg in asgs {
        let live = asg.live().count() as u32;
        if asg.desired <= live {
            state.unlaunched_since.remove(&asg.name);
            // A group that got what it asked for starts its next backoff from the bottom.
            if state.backoff.get(&asg.name).is_some_and(|b| b.until <= now) {
                state.backoff.remove(&asg.name);
            }
            continue;
        }
        let since = *state
            .unlaunched_since
            .entry(asg.name.clone())
            .or_insert(now);
        if state.backoff.get(&asg.name).is_some_and(|b| b.until > now) {
            continue;
        }
        let failed = match ctx.actuator.launch_failures(&asg.name, since - 60).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(asg = %asg.name, error = %e, "could not read scaling activities");
                Vec::new()
            }
        };
        let reason = match failed.first() {
            Some(f) => Some(format!("launches failed: {}", f.message)),
            None if now - since > provision => Some(format!(
                "{} of {} desired instances not launched within {provision}s",
                asg.desired - live,
                asg.desired
            )),
            None => None,
        };
        let Some(reason) = reason else { continue };
        let level = state.backoff.get(&asg.name).map_or(0, |b| b.level + 1);
        let wait = policy
            .backoff_initial
            .saturating_mul(1u32 << level.min(16))
            .min(policy.backoff_max);
        tracing::warn!(asg = %asg.name, level, wait_s = wait.as_secs(), "{reason}; backing off");
        state.backoff.insert(
            asg.name.clone(),
            Backoff {
                until: now + wait.as_secs() as i64,
                level,
                reason: reason.clone(),
            },
        );
        state.unlaunched_since.remove(&asg.name);
        cancels.push(Cancel {
            group: asg.name.clone(),
            from: asg.desired,
            to: live.max(asg.min),
            reason,
        });
    }
    cancels.retain(|c| c.to < c.from);
    cancels
}

/// Deletes the Nodes whose EC2 instance is gone. Only Nodes with an AWS providerID that no
/// group lists as live are asked about; EC2 is asked once per instance per few minutes.
pub(super) async fn collect_ghost_nodes(
    ctx: &Context,
    lease: &Lease,
    asgs: &[AsgState],
    snap: &ClusterSnapshot,
) -> Vec<String> {
    let live: HashSet<&str> = asgs
        .iter()
        .flat_map(|a| a.instances.iter())
        .map(|i| i.id.as_str())
        .collect();
    let candidates: Vec<(String, String, String)> = snap
        .meta
        .iter()
        .zip(&snap.nodes)
        .filter_map(|(m, n)| {
            let id = instance_id(&m.provider_id)?;
            (!live.contains(id.as_str())).then(|| (n.name.clone(), m.uid.clone(), id))
        })
        .filter(|(_, _, id)| {
            lock(&ctx.known_instances)
                .get(id)
                .is_none_or(|at| at.elapsed() >= INSTANCE_RECHECK)
        })
        .collect();
    if candidates.is_empty() {
        return Vec::new();
    }
    let ids: Vec<String> = candidates.iter().map(|(_, _, id)| id.clone()).collect();
    let states = match ctx.actuator.instance_states(&ids).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "could not ask EC2 about the instances of unmatched Nodes");
            return Vec::new();
        }
    };
    let mut deleted = Vec::new();
    for (node, uid, id) in candidates {
        match states.get(&id) {
            Some(InstanceState::Gone) => {
                if !lease.fresh(ctx.cfg.state.lease_ttl) {
                    break;
                }
                match ctx.actuator.delete_node(&node, &uid).await {
                    Ok(()) => {
                        tracing::info!(%node, instance = %id, "deleted the Node of a terminated instance");
                        ctx.metrics.ghost_nodes_deleted.inc();
                        deleted.push(node);
                    }
                    Err(e) => tracing::warn!(%node, error = %e, "could not delete a ghost Node"),
                }
            }
            _ => {
                lock(&ctx.known_instances).insert(id, Instant::now());
            }
        }
    }
    deleted
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
