//! Answering the Auto Scaling group's lifecycle hooks for this instance, by instance id (the
//! agent never sees the action token): `CompleteLifecycleAction` with CONTINUE or ABANDON, and
//! `RecordLifecycleActionHeartbeat` every half heartbeat timeout while the drain runs.
//!
//! Exactly once: [`Lifecycle::complete`] is called once per action by the pipeline, which also
//! records it on disk before acting on anything else. The SDK retries transient failures; if a
//! retried call finds no action any more ("No active Lifecycle Action"), the first attempt went
//! through (or the hook timed out): that is [`Completion::NoActiveAction`], not an error.

use crate::aws::describe;
use crate::metrics::Metrics;
use crate::{Error, Result};
use aws_sdk_autoscaling::error::ProvideErrorMetadata;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// When the hook's heartbeat timeout cannot be read: safe for any hook (AWS's minimum is 30 s).
pub const FALLBACK_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);

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

    /// Heartbeats every `interval` (first one at once) until the returned guard is dropped or
    /// no action is waiting any more.
    pub fn spawn_heartbeats(
        self: &Arc<Self>,
        hook: &str,
        interval: Duration,
        metrics: Arc<Metrics>,
    ) -> Heartbeats {
        let this = self.clone();
        let hook = hook.to_string();
        let task = tokio::spawn(async move {
            tracing::info!(
                hook,
                interval_ms = interval.as_millis() as u64,
                "heartbeating the lifecycle action"
            );
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                match this.heartbeat(&hook).await {
                    Ok(true) => {
                        metrics.heartbeat();
                        tracing::debug!(hook, "heartbeat recorded");
                    }
                    Ok(false) => {
                        tracing::warn!(
                            hook,
                            "no lifecycle action is waiting any more; heartbeats stop"
                        );
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "heartbeat failed; trying again next period")
                    }
                }
            }
        });
        Heartbeats { task }
    }
}

/// Running heartbeats; dropping it stops them.
#[derive(Debug)]
pub struct Heartbeats {
    task: JoinHandle<()>,
}

impl Drop for Heartbeats {
    fn drop(&mut self) {
        self.task.abort();
    }
}
