//! Start-up reconciliation: an action whose intent was recorded but whose outcome was not (the
//! controller stopped in between) is settled against what AWS shows; then what we last set is
//! compared with what the ASG says, and any drift recorded.

use super::{Context, history, lease, now_parts};
use crate::Result;
use crate::actuator::{AsgState, lifecycle};
use crate::policy::Lifecycle;
use crate::state::{HistoryRecord, PendingIntent};

/// Whether AWS shows the intended action as carried out.
fn carried_out(intent: &PendingIntent, asgs: &[AsgState]) -> bool {
    let Some(asg) = asgs.iter().find(|a| a.name == intent.node_group) else {
        return false;
    };
    let gone = |id: &str| {
        asg.instances
            .iter()
            .find(|i| i.id == id)
            .is_none_or(|i| lifecycle(&i.state) == Lifecycle::Terminating)
    };
    match intent.action.as_str() {
        "scale_up" => asg.desired >= intent.to,
        "scale_up_cancelled" => asg.desired <= intent.to,
        "scale_down" => intent.victim.as_deref().is_some_and(gone),
        // A rollback or replacement keeps desired capacity; its instance tells.
        _ => intent.victim.as_deref().is_some_and(gone),
    }
}

/// At start-up: settles an unfinished action, then records drift.
pub async fn reconcile(ctx: &Context) -> Result<()> {
    let mut held = ctx.held.lock().await;
    let (_, now, now_f) = now_parts();
    let Some(lease) = lease(ctx, &mut held, now_f).await? else {
        return Ok(());
    };
    let mut state = ctx.store.load().await?;
    let names = ctx.cfg.asg_names();
    let asgs = ctx.actuator.describe(&names).await?;
    if let Some(intent) = state.intent.take() {
        let done = carried_out(&intent, &asgs);
        tracing::warn!(
            action = %intent.action,
            asg = %intent.node_group,
            done,
            "an action was interrupted before its outcome was recorded; settled against AWS"
        );
        if done && !ctx.dry_run() {
            match intent.action.as_str() {
                "scale_up" | "scale_up_cancelled" | "scale_down" => {
                    state
                        .last_desired
                        .insert(intent.node_group.clone(), intent.to);
                }
                _ => {}
            }
            match intent.action.as_str() {
                "scale_up" => state.memory.last_scale_up = Some(now),
                "scale_down" => state.memory.last_scale_down = Some(now),
                _ => {}
            }
        }
        let rec = HistoryRecord {
            time: intent.time.clone(),
            victim: intent.victim.clone(),
            reasons: vec![format!(
                "settled at start-up: the controller stopped before recording the outcome; AWS shows it {}",
                if done {
                    "carried out"
                } else {
                    "not carried out"
                }
            )],
            source: intent.source.clone(),
            status: if done {
                "done".into()
            } else {
                "failed: not carried out (settled at start-up)".into()
            },
            ..history(
                ctx,
                &intent.action,
                &intent.node_group,
                intent.from,
                intent.to,
                lease.token,
            )
        };
        ctx.store.commit(&lease, &state, Some(&rec)).await?;
    }
    for asg in &asgs {
        if let Some(&recorded) = state.last_desired.get(&asg.name)
            && recorded != asg.desired
        {
            let why = format!(
                "drift: we last set desired capacity {recorded}, the ASG now says {} (changed outside SmartScale, or an instance was replaced)",
                asg.desired
            );
            tracing::warn!(asg = %asg.name, recorded, actual = asg.desired, "{why}");
            let rec = HistoryRecord {
                reasons: vec![why],
                source: "drift".to_string(),
                ..history(ctx, "drift", &asg.name, recorded, asg.desired, lease.token)
            };
            ctx.store.record(&lease, &rec).await?;
        }
    }
    held.state = Some(state);
    Ok(())
}
