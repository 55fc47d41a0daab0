//! Manual scaling from `POST /scale`: checked against the group's bounds at once, executed in
//! the background through the same lease, victim rules, fencing and history as the loop.

use super::{Context, ManualSlot, act, build_observation, lease, now_parts, observe};
use crate::policy::{self, Action, Decision};
use crate::{Error, Result};

/// A manual request from `POST /scale`.
#[derive(Debug, Clone)]
pub struct ManualRequest {
    pub action: Action,
    pub count: u32,
    pub reason: String,
    pub node_group: Option<String>,
}

/// Checks a manual request against the group's bounds. Returns (group index, from, to, clamp note).
pub async fn plan_manual(
    ctx: &Context,
    req: &ManualRequest,
) -> Result<(usize, u32, u32, Option<String>)> {
    let gi = match &req.node_group {
        Some(n) => ctx
            .cfg
            .node_groups
            .iter()
            .position(|g| &g.asg_name == n)
            .ok_or_else(|| Error::Other(format!("unknown node_group `{n}`")))?,
        None => 0,
    };
    let g = &ctx.cfg.node_groups[gi];
    let asg = ctx
        .actuator
        .describe(std::slice::from_ref(&g.asg_name))
        .await?;
    let asg = &asg[0];
    let (min, max) = (g.min.max(asg.min), g.max.min(asg.max));
    if min > max {
        return Err(Error::Other(format!(
            "the bounds of {} contradict each other: config [{}, {}] and the ASG's MinSize/MaxSize [{}, {}] leave no valid size; fix one of them",
            g.asg_name, g.min, g.max, asg.min, asg.max
        )));
    }
    let desired = asg.desired as i64;
    // A scale-up never lowers the group (e.g. when desired is above a lowered max), a
    // scale-down never raises it: the ASG would pick victims itself.
    let (wanted, to) = match req.action {
        Action::ScaleUp => {
            let wanted = desired + req.count as i64;
            (wanted, wanted.min(max as i64).max(desired))
        }
        _ => {
            let wanted = desired - req.count as i64;
            (wanted, wanted.max(min as i64).min(desired))
        }
    };
    let to = to as u32;
    let note = (to as i64 != wanted)
        .then(|| format!("requested {wanted} clamped to {to} (group bounds [{min}, {max}])"));
    Ok((gi, asg.desired, to, note))
}

/// Executes an accepted manual request (in the background; the API has already answered and
/// hands over the slot, freed when this returns).
pub async fn run_manual(
    ctx: &Context,
    req: ManualRequest,
    gi: usize,
    _slot: ManualSlot,
) -> Result<()> {
    let mut held = ctx.held.lock().await;
    let (_, now, now_f) = now_parts();
    let result = async {
        let Some(lease) = lease(ctx, &mut held, now_f).await? else {
            return Err(Error::Other(
                "not the lease holder; send manual requests to the replica that holds the lease"
                    .into(),
            ));
        };
        let mut state = match held.state.take() {
            Some(s) => s,
            None => ctx.store.load().await?,
        };
        let (prom, asgs, snap) = observe(ctx).await?;
        let safety = super::guards::secure_groups(ctx, &asgs).await;
        let mut obs = build_observation(ctx, &prom, &asgs, &snap, &mut state, &safety, now);
        let mut capacity = super::capacity_model(ctx, &asgs, &snap);
        let g = obs.groups[gi].clone();
        let reason = format!("manual: {}", req.reason);
        let (to, victims) = match req.action {
            Action::ScaleUp => ((g.desired + req.count).min(g.max).max(g.desired), vec![]),
            _ => {
                let mut victims = Vec::new();
                for _ in 0..req.count {
                    match policy::victim::choose(
                        &obs,
                        capacity.as_mut(),
                        &policy::victim::Limits::none(),
                    ) {
                        Ok(c) if c.group == gi => {
                            policy::victim::remove(&mut obs, &c.victim.node);
                            if let (Some(m), Some(removal)) = (capacity.as_mut(), &c.removal) {
                                m.apply(removal);
                            }
                            obs.groups[gi].desired -= 1;
                            victims.push(c.victim);
                        }
                        Ok(_) | Err(_) => break,
                    }
                }
                (g.desired - victims.len() as u32, victims)
            }
        };
        if to == g.desired {
            held.state = Some(state);
            return Err(Error::Other(format!(
                "nothing to do: {} stays at {to} (bounds or no removable node)",
                g.asg_name
            )));
        }
        let decision = Decision {
            action: req.action,
            group: gi,
            from: g.desired,
            to,
            victim: victims.first().cloned(),
            rollback: vec![],
            replace: vec![],
            in_flight: 0,
            reasons: vec![reason.clone()],
            unhelpable: vec![],
        };
        // Cooldowns start from a manual action too, once it went through.
        let now_rec = jiff::Timestamp::now().as_second();
        let mut memory = state.memory.clone();
        match req.action {
            Action::ScaleUp => memory.last_scale_up = Some(now_rec),
            _ => memory.last_scale_down = Some(now_rec),
        }
        let r = if victims.len() > 1 {
            // One record per removed node, each through the same write-ahead path.
            let mut r = Ok(());
            for (i, v) in victims.iter().enumerate() {
                let d = Decision {
                    from: g.desired - i as u32,
                    to: g.desired - i as u32 - 1,
                    victim: Some(v.clone()),
                    ..decision.clone()
                };
                r = act(
                    ctx,
                    &lease,
                    &mut state,
                    &d,
                    memory.clone(),
                    Some(&g),
                    serde_json::Value::Null,
                    "api",
                )
                .await;
                if r.is_err() {
                    break;
                }
            }
            r
        } else {
            act(
                ctx,
                &lease,
                &mut state,
                &decision,
                memory,
                Some(&g),
                serde_json::Value::Null,
                "api",
            )
            .await
        };
        held.state = Some(state);
        r
    }
    .await;
    if let Err(e) = &result {
        tracing::error!(error = %e, "manual scaling failed");
        ctx.failed(e).await;
    }
    result
}
