//! Start-up reconciliation: what we last set against what the ASG says.

use super::{Context, history, lease, now_parts};
use crate::Result;
use crate::state::HistoryRecord;

/// At start-up, compares what we last set with what the ASG says, and records any drift.
pub async fn reconcile(ctx: &Context) -> Result<()> {
    let mut held = ctx.held.lock().await;
    let (_, _, now_f) = now_parts();
    let Some(lease) = lease(ctx, &mut held, now_f).await? else {
        return Ok(());
    };
    let state = ctx.store.load().await?;
    let names = ctx.cfg.asg_names();
    let asgs = ctx.actuator.describe(&names).await?;
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
