//! `meta-data/autoscaling/target-lifecycle-state`: `InService` normally, `Terminated` once the
//! Auto Scaling group has begun terminating this instance (it then waits in `Terminating:Wait`
//! for our terminate hook). 404 outside an Auto Scaling group.

use super::{Event, Source};
use crate::Result;
use crate::imds::Imds;

pub const PATH: &str = "meta-data/autoscaling/target-lifecycle-state";

pub async fn check(imds: &Imds) -> Result<Option<Event>> {
    Ok(imds.get(PATH).await?.and_then(|state| parse(&state)))
}

/// The warm-pool state this instance is headed for (`Warmed:Stopped`, `Warmed:Running`,
/// `Warmed:Hibernated`), if it is being launched into, or returned to, the group's warm pool.
pub async fn warmed(imds: &Imds) -> Result<Option<String>> {
    Ok(imds
        .get(PATH)
        .await?
        .map(|s| s.trim().to_string())
        .filter(|s| s.starts_with("Warmed:")))
}

fn parse(state: &str) -> Option<Event> {
    // While this node serves, any warm-pool target means it is leaving the group: terminated
    // (`Warmed:Terminated`), or going back to the warm pool on scale-in (ReuseOnScaleIn:
    // `Warmed:Stopped` and the like) — drained either way.
    let state = state.trim();
    (state == "Terminated" || state.starts_with("Warmed:")).then(|| Event {
        source: Source::TargetLifecycle,
        detail: format!("target-lifecycle-state {state}"),
        ends_at: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminated_or_a_warm_pool_target_is_a_notice() {
        assert!(parse("InService").is_none());
        assert!(parse("Pending").is_none());
        assert_eq!(
            parse("Terminated\n").map(|e| e.source),
            Some(Source::TargetLifecycle)
        );
        for leaving in ["Warmed:Terminated", "Warmed:Stopped", "Warmed:Running"] {
            assert!(parse(leaving).is_some(), "{leaving}");
        }
    }
}
