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

fn parse(state: &str) -> Option<Event> {
    // `Warmed:Terminated` is the warm-pool equivalent.
    matches!(state.trim(), "Terminated" | "Warmed:Terminated").then(|| Event {
        source: Source::TargetLifecycle,
        detail: format!("target-lifecycle-state {}", state.trim()),
        ends_at: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_terminated_is_a_notice() {
        assert!(parse("InService").is_none());
        assert!(parse("Pending").is_none());
        assert_eq!(
            parse("Terminated\n").map(|e| e.source),
            Some(Source::TargetLifecycle)
        );
    }
}
