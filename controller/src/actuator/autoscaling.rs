//! The actuator: the only code that changes the worker Auto Scaling groups. Scale-up sets the
//! desired capacity; scale-down terminates the instance the policy chose (so the ASG's terminate
//! lifecycle hook holds it while the node's agent drains it). Dry-run never writes.

use crate::metrics::AwsCalls;
use crate::policy::{Group, Instance, Lifecycle, Resources};
use crate::{Error, Result};
use aws_sdk_autoscaling::error::DisplayErrorContext;
use std::collections::HashMap;

/// One group as Auto Scaling reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct AsgState {
    pub name: String,
    pub min: u32,
    pub max: u32,
    pub desired: u32,
    /// Instance id → (lifecycle, raw lifecycle state, instance type).
    pub instances: Vec<(String, Lifecycle, String)>,
}

impl AsgState {
    /// The policy's view, with `first_seen` times from the controller's memory.
    pub fn to_group(
        &self,
        cfg_min: u32,
        cfg_max: u32,
        allocatable: Resources,
        first_seen: &HashMap<String, i64>,
        ever_ready: &HashMap<String, i64>,
        now: i64,
    ) -> Group {
        Group {
            asg_name: self.name.clone(),
            // The tighter of the config's and the ASG's own bounds: never ask AWS for the impossible.
            min: cfg_min.max(self.min),
            max: cfg_max.min(self.max),
            desired: self.desired,
            node_allocatable: allocatable,
            instances: self
                .instances
                .iter()
                .map(|(id, lifecycle, _)| Instance {
                    id: id.clone(),
                    lifecycle: *lifecycle,
                    first_seen: first_seen.get(id).copied().unwrap_or(now),
                    ever_ready: ever_ready.contains_key(id),
                })
                .collect(),
        }
    }
}

/// Maps AWS lifecycle states to what matters for scaling.
pub fn lifecycle(state: &str) -> Lifecycle {
    match state {
        "Pending" | "Pending:Wait" | "Pending:Proceed" => Lifecycle::Launching,
        "InService" => Lifecycle::InService,
        s if s.starts_with("Terminat") => Lifecycle::Terminating,
        _ => Lifecycle::Other,
    }
}

pub struct Actuator {
    client: aws_sdk_autoscaling::Client,
    dry_run: bool,
    calls: AwsCalls,
}

impl Actuator {
    pub fn new(sdk: &aws_config::SdkConfig, dry_run: bool, calls: AwsCalls) -> Actuator {
        Actuator {
            client: aws_sdk_autoscaling::Client::new(sdk),
            dry_run,
            calls,
        }
    }

    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// Describes every configured group in one call.
    #[tracing::instrument(skip(self))]
    pub async fn describe(&self, names: &[String]) -> Result<Vec<AsgState>> {
        self.calls.count("autoscaling", "DescribeAutoScalingGroups");
        let out = self
            .client
            .describe_auto_scaling_groups()
            .set_auto_scaling_group_names(Some(names.to_vec()))
            .send()
            .await
            .map_err(|e| Error::aws("DescribeAutoScalingGroups", DisplayErrorContext(e)))?;
        let mut found = Vec::new();
        for g in out.auto_scaling_groups() {
            let n = |v: Option<i32>| v.unwrap_or(0).max(0) as u32;
            found.push(AsgState {
                name: g.auto_scaling_group_name().unwrap_or_default().to_string(),
                min: n(g.min_size()),
                max: n(g.max_size()),
                desired: n(g.desired_capacity()),
                instances: g
                    .instances()
                    .iter()
                    .map(|i| {
                        let state = i.lifecycle_state().map(|s| s.as_str()).unwrap_or("");
                        (
                            i.instance_id().unwrap_or_default().to_string(),
                            lifecycle(state),
                            i.instance_type().unwrap_or_default().to_string(),
                        )
                    })
                    .collect(),
            });
        }
        let missing: Vec<&String> = names
            .iter()
            .filter(|n| !found.iter().any(|g| &g.name == *n))
            .collect();
        if !missing.is_empty() {
            return Err(Error::aws(
                "DescribeAutoScalingGroups",
                format!(
                    "Auto Scaling group(s) {missing:?} not found in this region; check node_groups[].asg_name and AWS_REGION"
                ),
            ));
        }
        Ok(found)
    }

    /// SetDesiredCapacity(HonorCooldown=false). The ASG's own cooldown would only delay what the
    /// policy already decided with its own cooldowns.
    #[tracing::instrument(skip(self))]
    pub async fn set_desired(&self, asg: &str, desired: u32) -> Result<()> {
        if self.dry_run {
            tracing::info!(asg, desired, "dry-run: not calling SetDesiredCapacity");
            return Ok(());
        }
        self.calls.count("autoscaling", "SetDesiredCapacity");
        self.client
            .set_desired_capacity()
            .auto_scaling_group_name(asg)
            .desired_capacity(desired as i32)
            .honor_cooldown(false)
            .send()
            .await
            .map_err(|e| Error::aws("SetDesiredCapacity", DisplayErrorContext(e)))?;
        Ok(())
    }

    /// TerminateInstanceInAutoScalingGroup for the chosen instance. `decrement` lowers desired
    /// capacity with it (scale-down); without it the ASG replaces the instance.
    #[tracing::instrument(skip(self))]
    pub async fn terminate(&self, instance_id: &str, decrement: bool) -> Result<()> {
        if self.dry_run {
            tracing::info!(
                instance_id,
                "dry-run: not calling TerminateInstanceInAutoScalingGroup"
            );
            return Ok(());
        }
        self.calls
            .count("autoscaling", "TerminateInstanceInAutoScalingGroup");
        self.client
            .terminate_instance_in_auto_scaling_group()
            .instance_id(instance_id)
            .should_decrement_desired_capacity(decrement)
            .send()
            .await
            .map_err(|e| {
                Error::aws(
                    "TerminateInstanceInAutoScalingGroup",
                    DisplayErrorContext(e),
                )
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_states_map() {
        assert_eq!(lifecycle("Pending:Wait"), Lifecycle::Launching);
        assert_eq!(lifecycle("InService"), Lifecycle::InService);
        assert_eq!(lifecycle("Terminating:Wait"), Lifecycle::Terminating);
        assert_eq!(lifecycle("Standby"), Lifecycle::Other);
    }
}
