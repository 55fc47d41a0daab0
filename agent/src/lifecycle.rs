//! Answering the Auto Scaling group's lifecycle hooks for this instance, by instance id (the
//! agent never sees the action token): `CompleteLifecycleAction` with CONTINUE or ABANDON, and
//! `RecordLifecycleActionHeartbeat` while `join` waits for the Node and while the drain runs,
//! until the action is answered.
//!
//! Heartbeats: the first one at once (before the hook's timeouts are even read), then every
//! [`HookTiming::interval`]: `heartbeat_interval` if set, never more than a third of the hook's
//! HeartbeatTimeout. A heartbeat that fails is tried again within seconds (1 s, 2 s, 4 s…, at
//! most a quarter of the period), not a period later: one lost call must not let the action
//! expire.
//!
//! Exactly once: the pipeline records a completion on disk and never sends it again. The SDK
//! retries transient failures; if a retried call finds no action any more ("No active Lifecycle
//! Action"), the first attempt went through (or the hook timed out): that is
//! [`Completion::NoActiveAction`], not an error. Other failures (throttling beyond the SDK's
//! retries, AccessDenied, a wrong hook name) are retried by [`complete_until`] with backoff while
//! the heartbeats keep the action alive, until the action ends or its time is up.

use crate::aws::describe;
use crate::metrics::Metrics;
use crate::{Error, Result};
use aws_sdk_autoscaling::error::ProvideErrorMetadata;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The heartbeat period while the hook's heartbeat timeout is not known (not read yet, or it cannot
/// be read): a third of AWS's minimum HeartbeatTimeout (30 s), so safe for any hook.
pub const FALLBACK_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
/// The first retry of a failed heartbeat; the wait doubles, up to [`heartbeat_retry`]'s cap.
pub const HEARTBEAT_RETRY_FIRST: Duration = Duration::from_secs(1);
/// No lifecycle action outlives this (AWS: GlobalTimeout is at most 48 hours): the bound when the
/// hook's own global timeout cannot be read.
pub const MAX_GLOBAL_TIMEOUT: Duration = Duration::from_secs(48 * 3600);
/// Backoff between retries of `CompleteLifecycleAction`.
pub const COMPLETE_RETRY_FIRST: Duration = Duration::from_secs(1);
pub const COMPLETE_RETRY_MAX: Duration = Duration::from_secs(30);

/// Lifecycle states of an instance whose launch went through: its launch action is over and the
/// group keeps it (`join` succeeded even if its own CONTINUE answer was lost).
pub const LAUNCHED_STATES: &[&str] = &[
    "InService",
    "Pending:Proceed",
    "Warmed:Pending:Proceed",
    "Warmed:Running",
    "Warmed:Stopped",
    "Warmed:Hibernated",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionResult {
    Continue,
    Abandon,
}

impl ActionResult {
    fn as_str(self) -> &'static str {
        match self {
            ActionResult::Continue => "CONTINUE",
            ActionResult::Abandon => "ABANDON",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    Completed,
    /// No action was waiting: already completed, timed out, or the instance is not in a wait state.
    NoActiveAction(String),
}

/// A hook's timing, from `DescribeLifecycleHooks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HookTiming {
    pub heartbeat_timeout: Duration,
    pub global_timeout: Duration,
}

impl HookTiming {
    /// The heartbeat period: `configured` (SSM `heartbeat_interval`; the stack writes a fifth of
    /// the timeout), but never more than a third of the heartbeat timeout, so that two heartbeats
    /// can fail outright before the action expires; a third of it if nothing is configured. While
    /// the timeout is unknown, at most [`FALLBACK_HEARTBEAT_INTERVAL`].
    pub fn interval(timing: Option<HookTiming>, configured: Option<Duration>) -> Duration {
        let bound = timing.map_or(FALLBACK_HEARTBEAT_INTERVAL, |t| t.heartbeat_timeout / 3);
        configured.map_or(bound, |c| c.min(bound))
    }
}

/// How long to wait before trying a failed heartbeat again, after `failures` failures in a row:
/// [`HEARTBEAT_RETRY_FIRST`] doubling, capped at a quarter of the heartbeat `interval` (at least
/// 100 ms), so a lost heartbeat is replaced within seconds, long before the action could expire.
pub fn heartbeat_retry(failures: u32, interval: Duration) -> Duration {
    let cap = (interval / 4).max(Duration::from_millis(100)).min(interval);
    HEARTBEAT_RETRY_FIRST
        .saturating_mul(1u32 << failures.saturating_sub(1).min(8))
        .min(cap)
}

/// This instance's lifecycle actions in its Auto Scaling group.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    client: aws_sdk_autoscaling::Client,
    asg_name: String,
    instance_id: String,
}

fn no_active_action<E: ProvideErrorMetadata>(e: &E) -> Option<String> {
    let message = e.message().unwrap_or_default();
    (e.code() == Some("ValidationError") && message.contains("No active Lifecycle Action"))
        .then(|| message.to_string())
}

impl Lifecycle {
    pub fn new(sdk: &aws_config::SdkConfig, asg_name: &str, instance_id: &str) -> Self {
        Lifecycle {
            client: aws_sdk_autoscaling::Client::new(sdk),
            asg_name: asg_name.to_string(),
            instance_id: instance_id.to_string(),
        }
    }

    pub fn asg_name(&self) -> &str {
        &self.asg_name
    }

    /// `CompleteLifecycleAction(hook, result)` for this instance.
    #[tracing::instrument(skip(self), fields(asg = %self.asg_name, instance = %self.instance_id))]
    pub async fn complete(&self, hook: &str, result: ActionResult) -> Result<Completion> {
        let answer = self
            .client
            .complete_lifecycle_action()
            .auto_scaling_group_name(&self.asg_name)
            .lifecycle_hook_name(hook)
            .instance_id(&self.instance_id)
            .lifecycle_action_result(result.as_str())
            .send()
            .await;
        match answer {
            Ok(_) => {
                tracing::info!(hook, result = result.as_str(), "lifecycle action completed");
                Ok(Completion::Completed)
            }
            Err(e) => match no_active_action(&e) {
                Some(message) => {
                    tracing::warn!(hook, %message, "no lifecycle action was waiting; nothing to complete");
                    Ok(Completion::NoActiveAction(message))
                }
                None => Err(Error::AutoScaling {
                    action: "CompleteLifecycleAction",
                    message: format!("{hook} {}: {}", result.as_str(), describe(&e)),
                }),
            },
        }
    }

    /// [`Lifecycle::complete`] retried by [`complete_until`] with the agent's backoff
    /// ([`COMPLETE_RETRY_FIRST`] doubling to [`COMPLETE_RETRY_MAX`]) until `until`, stopping early
    /// when the heartbeats behind `status` learn the action is gone.
    pub async fn complete_retried(
        &self,
        what: &str,
        hook: &str,
        result: ActionResult,
        status: Option<watch::Receiver<HeartbeatState>>,
        until: Instant,
    ) -> Retried {
        let policy = RetryPolicy {
            first: COMPLETE_RETRY_FIRST,
            max: COMPLETE_RETRY_MAX,
            until,
        };
        complete_until(what, || self.complete(hook, result), status, policy).await
    }

    /// `RecordLifecycleActionHeartbeat(hook)`: `Ok(false)` if no action is waiting any more.
    pub async fn heartbeat(&self, hook: &str) -> Result<bool> {
        let answer = self
            .client
            .record_lifecycle_action_heartbeat()
            .auto_scaling_group_name(&self.asg_name)
            .lifecycle_hook_name(hook)
            .instance_id(&self.instance_id)
            .send()
            .await;
        match answer {
            Ok(_) => Ok(true),
            Err(e) if no_active_action(&e).is_some() => Ok(false),
            Err(e) => Err(Error::AutoScaling {
                action: "RecordLifecycleActionHeartbeat",
                message: format!("{hook}: {}", describe(&e)),
            }),
        }
    }

    /// This instance's lifecycle state in its group (`InService`, `Terminating:Wait`, …;
    /// `DescribeAutoScalingInstances`), `None` if the group no longer lists it.
    pub async fn instance_state(&self) -> Result<Option<String>> {
        let out = self
            .client
            .describe_auto_scaling_instances()
            .instance_ids(&self.instance_id)
            .send()
            .await
            .map_err(|e| Error::AutoScaling {
                action: "DescribeAutoScalingInstances",
                message: describe(&e),
            })?;
        Ok(out
            .auto_scaling_instances()
            .first()
            .and_then(|i| i.lifecycle_state())
            .map(str::to_string))
    }

    /// The hook's heartbeat and global timeouts.
    pub async fn timing(&self, hook: &str) -> Result<HookTiming> {
        let out = self
            .client
            .describe_lifecycle_hooks()
            .auto_scaling_group_name(&self.asg_name)
            .lifecycle_hook_names(hook)
            .send()
            .await
            .map_err(|e| Error::AutoScaling {
                action: "DescribeLifecycleHooks",
                message: describe(&e),
            })?;
        let found = out
            .lifecycle_hooks()
            .first()
            .ok_or_else(|| Error::AutoScaling {
                action: "DescribeLifecycleHooks",
                message: format!("group {} has no hook named {hook}", self.asg_name),
            })?;
        let heartbeat = found.heartbeat_timeout().unwrap_or(3600).max(1) as u64;
        let global = found
            .global_timeout()
            .map_or(heartbeat.saturating_mul(100).min(172_800), |g| {
                g.max(1) as u64
            });
        Ok(HookTiming {
            heartbeat_timeout: Duration::from_secs(heartbeat),
            global_timeout: Duration::from_secs(global),
        })
    }

    /// Heartbeats, the first one at once, then every [`HookTiming::interval`] (from `configured`
    /// and the hook's timing, which `timing` resolves to: read concurrently, so the first
    /// heartbeat does not wait for it), until the returned guard is dropped or no action is
    /// waiting any more. A failed heartbeat is retried within seconds ([`heartbeat_retry`]). Each
    /// accepted heartbeat keeps the action alive for the hook's heartbeat timeout, once known
    /// ([`HeartbeatState::alive_until`]).
    pub fn spawn_heartbeats(
        self: &Arc<Self>,
        hook: &str,
        configured: Option<Duration>,
        timing: impl Future<Output = Option<HookTiming>> + Send + 'static,
        metrics: Arc<Metrics>,
    ) -> Heartbeats {
        let this = self.clone();
        let hook = hook.to_string();
        let (state, status) = watch::channel(HeartbeatState::default());
        let task = tokio::spawn(async move {
            let mut interval = HookTiming::interval(None, configured);
            tracing::info!(
                hook,
                interval_ms = interval.as_millis() as u64,
                "heartbeating the lifecycle action (the first heartbeat now)"
            );
            let timing_lookup = timing;
            tokio::pin!(timing_lookup);
            let mut timing_pending = true;
            let mut heartbeat_timeout: Option<Duration> = None;
            let mut last_accepted: Option<Instant> = None;
            let mut last_attempt = Instant::now();
            let mut next = Instant::now();
            let mut failures = 0u32;
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(next.into()) => {}
                    timing = &mut timing_lookup, if timing_pending => {
                        timing_pending = false;
                        heartbeat_timeout = timing.map(|t| t.heartbeat_timeout);
                        interval = HookTiming::interval(timing, configured);
                        tracing::info!(
                            hook,
                            interval_ms = interval.as_millis() as u64,
                            heartbeat_timeout_s = heartbeat_timeout.map(|t| t.as_secs()),
                            "heartbeat period set from the hook's timeouts"
                        );
                        let alive_until = last_accepted.zip(heartbeat_timeout).map(|(at, t)| at + t);
                        state.send_modify(|s| {
                            s.timing = timing;
                            s.timing_read = true;
                            s.alive_until = alive_until;
                        });
                        next = if failures == 0 {
                            last_accepted.map_or(next, |at| (at + interval).min(next))
                        } else {
                            (last_attempt + heartbeat_retry(failures, interval)).min(next)
                        };
                        continue;
                    }
                }
                last_attempt = Instant::now();
                match this.heartbeat(&hook).await {
                    Ok(true) => {
                        let now = Instant::now();
                        metrics.heartbeat();
                        tracing::debug!(hook, "heartbeat recorded");
                        if std::mem::take(&mut failures) > 0 {
                            tracing::info!(hook, "heartbeats accepted again");
                        }
                        last_accepted = Some(now);
                        let until = heartbeat_timeout.map(|t| now + t);
                        state.send_modify(|s| s.alive_until = until);
                        next = now + interval;
                    }
                    Ok(false) => {
                        tracing::warn!(
                            hook,
                            "no lifecycle action is waiting any more; heartbeats stop"
                        );
                        state.send_modify(|s| s.gone = true);
                        return;
                    }
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        let wait = heartbeat_retry(failures, interval);
                        if failures == 1 {
                            tracing::warn!(
                                error = %e,
                                retry_in_ms = wait.as_millis() as u64,
                                "heartbeat failed; trying again within seconds"
                            );
                        } else {
                            tracing::debug!(error = %e, failures, retry_in_ms = wait.as_millis() as u64, "heartbeat failed again");
                        }
                        next = Instant::now() + wait;
                    }
                }
            }
        });
        Heartbeats { task, status }
    }
}

/// What the heartbeats know about the action they keep alive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeartbeatState {
    /// AWS answered that no action waits any more (completed, abandoned or timed out).
    pub gone: bool,
    /// The last accepted heartbeat keeps the action alive until then (if the hook's heartbeat
    /// timeout is known).
    pub alive_until: Option<Instant>,
    /// The hook's timeouts, once read (`None` also if they could not be read: see `timing_read`).
    pub timing: Option<HookTiming>,
    /// The lookup of the hook's timeouts has finished (successfully or not).
    pub timing_read: bool,
}

/// Running heartbeats; dropping it stops them.
#[derive(Debug)]
pub struct Heartbeats {
    task: JoinHandle<()>,
    status: watch::Receiver<HeartbeatState>,
}

impl Heartbeats {
    /// A view of the heartbeats' state, for [`complete_until`] and [`gone`].
    pub fn status(&self) -> watch::Receiver<HeartbeatState> {
        self.status.clone()
    }

    /// The hook's timeouts, once read (waits for the lookup, at most `limit`).
    pub async fn timing(&self, limit: Duration) -> Option<HookTiming> {
        let mut status = self.status.clone();
        let read = tokio::time::timeout(limit, status.wait_for(|s| s.timing_read || s.gone)).await;
        match read {
            Ok(Ok(s)) => s.timing,
            _ => self.status.borrow().timing,
        }
    }
}

impl Drop for Heartbeats {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Resolves once the heartbeats learn that no action waits any more; never without them.
pub async fn gone(status: Option<watch::Receiver<HeartbeatState>>) {
    match status {
        Some(mut s) => {
            if s.wait_for(|s| s.gone).await.is_err() {
                // The heartbeats stopped (dropped) without learning anything.
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// How [`complete_until`] retries.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub first: Duration,
    pub max: Duration,
    /// Give up here: the action cannot outlive it.
    pub until: Instant,
}

/// How a retried completion ended.
#[derive(Debug)]
pub enum Retried {
    Answered(Completion),
    /// The heartbeats learned that no action waits any more (it ended: perhaps an earlier
    /// attempt of ours went through with its answer lost, perhaps it timed out).
    Gone,
    /// `until` passed, or the last accepted heartbeat's keep-alive ran out, with this last error.
    GaveUp(Error),
}

/// Calls `attempt` (one `CompleteLifecycleAction`) until AWS answers it, retrying failures with
/// exponential backoff. Stops early when the heartbeats in `status` learn the action is gone,
/// and gives up at `policy.until` or when the last accepted heartbeat's keep-alive has run out
/// (the action has timed out then).
pub async fn complete_until<F, Fut>(
    what: &str,
    mut attempt: F,
    status: Option<watch::Receiver<HeartbeatState>>,
    policy: RetryPolicy,
) -> Retried
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Completion>>,
{
    let mut wait = policy.first;
    let mut tries = 0u32;
    loop {
        let error = match attempt().await {
            Ok(c) => return Retried::Answered(c),
            Err(e) => e,
        };
        tries += 1;
        let state = status.as_ref().map(|s| *s.borrow()).unwrap_or_default();
        if state.gone {
            return Retried::Gone;
        }
        let now = Instant::now();
        let until = state
            .alive_until
            .map_or(policy.until, |a| a.min(policy.until));
        if now >= until {
            return Retried::GaveUp(error);
        }
        let pause = wait.min(until - now);
        tracing::warn!(
            error = %error,
            tries,
            retry_in_ms = pause.as_millis() as u64,
            give_up_in_s = (until - now).as_secs(),
            "could not complete the {what} lifecycle action; retrying"
        );
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = gone(status.clone()) => return Retried::Gone,
        }
        wait = (wait * 2).min(policy.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn denied() -> Error {
        Error::AutoScaling {
            action: "CompleteLifecycleAction",
            message: "AccessDenied".into(),
        }
    }

    fn policy(until: Duration) -> RetryPolicy {
        RetryPolicy {
            first: Duration::from_millis(10),
            max: Duration::from_millis(40),
            until: Instant::now() + until,
        }
    }

    #[tokio::test]
    async fn a_failed_completion_is_retried_until_aws_takes_it() {
        let calls = AtomicU32::new(0);
        let out = complete_until(
            "test",
            || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0..=2 => Err(denied()),
                    _ => Ok(Completion::Completed),
                }
            },
            None,
            policy(Duration::from_secs(10)),
        )
        .await;
        assert!(
            matches!(out, Retried::Answered(Completion::Completed)),
            "{out:?}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_permanent_error_gives_up_at_the_global_timeout() {
        let started = Instant::now();
        let calls = AtomicU32::new(0);
        let out = complete_until(
            "test",
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(denied())
            },
            None,
            policy(Duration::from_millis(300)),
        )
        .await;
        let took = started.elapsed();
        assert!(
            matches!(out, Retried::GaveUp(Error::AutoScaling { .. })),
            "{out:?}"
        );
        assert!(
            took >= Duration::from_millis(300),
            "gave up early: {took:?}"
        );
        assert!(took < Duration::from_secs(3), "gave up late: {took:?}");
        assert!(calls.load(Ordering::SeqCst) >= 3);
    }

    #[tokio::test]
    async fn heartbeats_that_find_no_action_stop_the_retries() {
        let (state, status) = watch::channel(HeartbeatState::default());
        let out = tokio::time::timeout(Duration::from_secs(5), async {
            let retried = complete_until(
                "test",
                || async { Err(denied()) },
                Some(status),
                policy(Duration::from_secs(60)),
            );
            tokio::pin!(retried);
            // Still retrying while the action is alive...
            assert!(
                tokio::time::timeout(Duration::from_millis(200), &mut retried)
                    .await
                    .is_err()
            );
            state.send_modify(|s| s.gone = true);
            retried.await
        })
        .await
        .expect("stops once the action is gone");
        assert!(matches!(out, Retried::Gone), "{out:?}");
    }

    #[tokio::test]
    async fn an_expired_keep_alive_ends_the_retries() {
        // The last accepted heartbeat kept the action alive until 100 ms from now; heartbeats fail
        // since (say AccessDenied too): the action has timed out then, long before `until`.
        let (_state, status) = watch::channel(HeartbeatState {
            gone: false,
            alive_until: Some(Instant::now() + Duration::from_millis(100)),
            ..HeartbeatState::default()
        });
        let started = Instant::now();
        let out = complete_until(
            "test",
            || async { Err(denied()) },
            Some(status),
            policy(Duration::from_secs(60)),
        )
        .await;
        assert!(matches!(out, Retried::GaveUp(_)), "{out:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn heartbeat_interval_is_configured_but_at_most_a_third_of_the_timeout() {
        let t = HookTiming {
            heartbeat_timeout: Duration::from_secs(300),
            global_timeout: Duration::from_secs(30000),
        };
        // Nothing configured: a third.
        assert_eq!(
            HookTiming::interval(Some(t), None),
            Duration::from_secs(100)
        );
        // The stack writes a fifth: respected.
        assert_eq!(
            HookTiming::interval(Some(t), Some(Duration::from_secs(60))),
            Duration::from_secs(60)
        );
        // Never longer than a third.
        assert_eq!(
            HookTiming::interval(Some(t), Some(Duration::from_secs(200))),
            Duration::from_secs(100)
        );
        // Unknown timeouts: at most a third of AWS's minimum (30 s).
        assert_eq!(
            HookTiming::interval(None, None),
            FALLBACK_HEARTBEAT_INTERVAL
        );
        assert_eq!(
            HookTiming::interval(None, Some(Duration::from_secs(60))),
            FALLBACK_HEARTBEAT_INTERVAL
        );
        assert_eq!(
            HookTiming::interval(None, Some(Duration::from_millis(500))),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn a_failed_heartbeat_is_retried_within_seconds() {
        let minute = Duration::from_secs(60);
        let waits: Vec<u64> = (1..=7)
            .map(|n| heartbeat_retry(n, minute).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 15, 15, 15]);
        // A short period: a quarter of it.
        assert_eq!(
            heartbeat_retry(1, Duration::from_secs(2)),
            Duration::from_millis(500)
        );
        assert_eq!(
            heartbeat_retry(1, Duration::from_millis(200)),
            Duration::from_millis(100)
        );
    }
}
