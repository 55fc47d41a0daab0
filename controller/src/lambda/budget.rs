//! The invocation's time: Lambda stops the function at its deadline, wherever it is. The cycle
//! gets the time up to a *soft* deadline; what is left is kept for handing the lease back,
//! CloudWatch, notifications and the answer.

use std::time::{Duration, Instant, SystemTime};

/// The least and most kept back for the work after the cycle.
const MIN_RESERVE: Duration = Duration::from_millis(300);
const MAX_RESERVE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub started: Instant,
    /// The function's own time at the start of the invocation.
    pub remaining: Duration,
    /// The cycle must be done by then, or it is cancelled (when that is safe).
    pub soft: Instant,
    /// Just before Lambda's own deadline: everything ends by then.
    pub hard: Instant,
}

impl Budget {
    /// From Lambda's deadline (wall clock) as the invocation starts.
    pub fn new(deadline: SystemTime, now: SystemTime, started: Instant) -> Budget {
        let remaining = deadline.duration_since(now).unwrap_or(Duration::ZERO);
        let reserve = (remaining / 5)
            .clamp(MIN_RESERVE, MAX_RESERVE)
            .min(remaining / 2);
        let margin = (remaining / 20).min(Duration::from_millis(200));
        Budget {
            started,
            remaining,
            soft: started + remaining.saturating_sub(reserve),
            hard: started + remaining.saturating_sub(margin),
        }
    }

    /// Time left before the soft deadline.
    pub fn until_soft(&self) -> Duration {
        self.soft.saturating_duration_since(Instant::now())
    }

    /// Time left before the hard deadline.
    pub fn until_hard(&self) -> Duration {
        self.hard.saturating_duration_since(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(remaining_ms: u64) -> Budget {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        Budget::new(
            now + Duration::from_millis(remaining_ms),
            now,
            Instant::now(),
        )
    }

    #[test]
    fn the_cycle_gets_most_of_the_time_and_something_is_kept_for_the_end() {
        let b = budget(60_000);
        assert_eq!(b.soft - b.started, Duration::from_secs(57));
        assert_eq!(b.hard - b.started, Duration::from_millis(59_800));
        let b = budget(3_000);
        assert_eq!(b.soft - b.started, Duration::from_millis(2_400));
        assert_eq!(b.hard - b.started, Duration::from_millis(2_850));
        let b = budget(400);
        assert_eq!(b.soft - b.started, Duration::from_millis(200));
        // A deadline already past leaves nothing, and nothing panics.
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10);
        let b = Budget::new(now - Duration::from_secs(1), now, Instant::now());
        assert_eq!(b.remaining, Duration::ZERO);
        assert_eq!(b.soft, b.started);
    }
}
