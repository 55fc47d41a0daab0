//! The worker Auto Scaling groups: reading them, and the only calls that change them. Scale-up
//! sets the desired capacity; scale-down terminates the instance the policy chose (so the ASG's
//! terminate lifecycle hook holds it while the node's agent drains it). Dry-run never writes.
//!
//! Guards against AWS acting on its own ([`Actuator::secure_group`]): the terminate hook must
//! exist, `AZRebalance` is suspended (else AWS launches in the short zone after a termination and
//! then terminates an instance of *its* choosing), and every instance is protected from scale-in,
//! so that no SetDesiredCapacity (a late one from a paused old leader, an operator's) can remove
//! an instance: only the controller's explicit, chosen terminations do.

use super::Actuator;
use crate::policy::{Group, Instance, Lifecycle, Resources};
use crate::{Error, Result};
use aws_sdk_autoscaling::error::DisplayErrorContext;
use std::collections::HashMap;

/// The lifecycle transition of a terminate hook.
const TERMINATING: &str = "autoscaling:EC2_INSTANCE_TERMINATING";
/// The process that lets AWS pick victims of its own.
pub const AZ_REBALANCE: &str = "AZRebalance";
/// SetInstanceProtection takes at most 50 instance ids per call.
const PROTECTION_BATCH: usize = 50;

/// One instance as the group reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct AsgInstance {
    pub id: String,
    pub lifecycle: Lifecycle,
    /// The raw lifecycle state (`Pending:Wait`, `InService`, ...).
    pub state: String,
    pub instance_type: String,
    pub zone: String,
    pub protected: bool,
}

/// One group as Auto Scaling reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct AsgState {
    pub name: String,
    pub min: u32,
    pub max: u32,
    pub desired: u32,
    pub instances: Vec<AsgInstance>,
    /// Suspended processes (`AZRebalance`, `Launch`, ...).
    pub suspended: Vec<String>,
    pub new_instances_protected: bool,
    /// The zones of the group's subnets.
    pub zones: Vec<String>,
    /// The group's tags (cluster-autoscaler's node-template tags among them).
    pub tags: std::collections::BTreeMap<String, String>,
    /// A mixed-instances policy's instance types (empty for a plain launch template).
    pub instance_types: Vec<String>,
}

/// What the controller found wrong with a group and could not fix; each blocks scale-down of
/// that group (scale-up stays safe).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupSafety {
    pub problems: Vec<String>,
    /// What was changed to make the group safe (for the log and `/status`).
    pub fixed: Vec<String>,
}

impl AsgState {
    /// Instances that hold or will hold a node: launching or in service.
    pub fn live(&self) -> impl Iterator<Item = &AsgInstance> {
        self.instances
            .iter()
            .filter(|i| matches!(i.lifecycle, Lifecycle::Launching | Lifecycle::InService))
    }

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
                .map(|i| Instance {
                    id: i.id.clone(),
                    lifecycle: i.lifecycle,
                    first_seen: first_seen.get(&i.id).copied().unwrap_or(now),
                    ever_ready: ever_ready.contains_key(&i.id),
                })
                .collect(),
            scale_down_blocked: None,
            backoff: None,
        }
    }
}

/// Maps AWS lifecycle states to what matters for scaling. `Warmed:*` (a warm pool's instances)
/// are `Other`: an instance counts once it leaves the pool for the group (`Pending`).
pub fn lifecycle(state: &str) -> Lifecycle {
    match state {
        "Pending" | "Pending:Wait" | "Pending:Proceed" => Lifecycle::Launching,
        "InService" => Lifecycle::InService,
        s if s.starts_with("Terminat") => Lifecycle::Terminating,
        _ => Lifecycle::Other,
    }
}

/// A failed launch the group reported (DescribeScalingActivities).
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchFailure {
    /// Unix seconds.
    pub at: i64,
    pub message: String,
}

impl Actuator {
    /// Describes every configured group in one call.
    #[tracing::instrument(skip(self))]
    pub async fn describe(&self, names: &[String]) -> Result<Vec<AsgState>> {
        self.calls.count("autoscaling", "DescribeAutoScalingGroups");
        let out = self
            .autoscaling
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
                        AsgInstance {
                            id: i.instance_id().unwrap_or_default().to_string(),
                            lifecycle: lifecycle(state),
                            state: state.to_string(),
                            instance_type: i.instance_type().unwrap_or_default().to_string(),
                            zone: i.availability_zone().unwrap_or_default().to_string(),
                            protected: i.protected_from_scale_in().unwrap_or(false),
                        }
                    })
                    .collect(),
                suspended: g
                    .suspended_processes()
                    .iter()
                    .filter_map(|p| p.process_name().map(str::to_string))
                    .collect(),
                new_instances_protected: g.new_instances_protected_from_scale_in().unwrap_or(false),
                zones: g.availability_zones().to_vec(),
                tags: g
                    .tags()
                    .iter()
                    .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
                    .collect(),
                instance_types: g
                    .mixed_instances_policy()
                    .and_then(|m| m.launch_template())
                    .map(|lt| {
                        lt.overrides()
                            .iter()
                            .filter_map(|o| o.instance_type().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
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

    /// Makes `asg` safe to scale down, as far as it can: checks the terminate hook, suspends
    /// `AZRebalance` (when `suspend_az_rebalance`) and protects instances from scale-in (when
    /// `protect`). What it cannot fix is returned as a problem.
    #[tracing::instrument(skip(self, asg), fields(asg = %asg.name))]
    pub async fn secure_group(
        &self,
        asg: &AsgState,
        suspend_az_rebalance: bool,
        protect: bool,
    ) -> GroupSafety {
        let mut safety = GroupSafety::default();
        match self.has_terminate_hook(&asg.name).await {
            Ok(true) => {}
            Ok(false) => safety.problems.push(format!(
                "{} has no terminate lifecycle hook ({TERMINATING}): a scale-down would kill its node's pods without a drain; add the hook (docs/deploy.md) — scale-down of this group is off",
                asg.name
            )),
            Err(e) => safety.problems.push(format!(
                "could not read the lifecycle hooks of {} ({e}); scale-down of this group is off until they can be read",
                asg.name
            )),
        }
        if suspend_az_rebalance && !asg.suspended.iter().any(|p| p == AZ_REBALANCE) {
            if self.dry_run {
                // What a live replica would do; the dry run decides as if it had.
                safety.fixed.push(format!(
                    "dry-run: would suspend {AZ_REBALANCE} on {} (a live replica does)",
                    asg.name
                ));
            } else {
                match self.suspend(&asg.name, AZ_REBALANCE).await {
                    Ok(()) => safety.fixed.push(format!(
                        "suspended {AZ_REBALANCE} on {} so that AWS never terminates an instance of its own choosing",
                        asg.name
                    )),
                    Err(e) => safety.problems.push(format!(
                        "{AZ_REBALANCE} is active on {} and could not be suspended ({e}): AWS would pick its own victims after a scale-down — scale-down of this group is off; grant autoscaling:SuspendProcesses or suspend it yourself",
                        asg.name
                    )),
                }
            }
        }
        if protect && !self.dry_run {
            match self.protect_instances(asg).await {
                Ok(Some(done)) => safety.fixed.push(done),
                Ok(None) => {}
                Err(e) => safety.problems.push(format!(
                    "could not protect the instances of {} from scale-in ({e}): a SetDesiredCapacity below the instance count would let AWS choose whom to terminate — scale-down of this group is off",
                    asg.name
                )),
            }
        }
        safety
    }

    async fn has_terminate_hook(&self, asg: &str) -> Result<bool> {
        self.calls.count("autoscaling", "DescribeLifecycleHooks");
        let out = self
            .autoscaling
            .describe_lifecycle_hooks()
            .auto_scaling_group_name(asg)
            .send()
            .await
            .map_err(|e| Error::aws("DescribeLifecycleHooks", DisplayErrorContext(e)))?;
        Ok(out
            .lifecycle_hooks()
            .iter()
            .any(|h| h.lifecycle_transition() == Some(TERMINATING)))
    }

    async fn suspend(&self, asg: &str, process: &str) -> Result<()> {
        self.calls.count("autoscaling", "SuspendProcesses");
        self.autoscaling
            .suspend_processes()
            .auto_scaling_group_name(asg)
            .scaling_processes(process)
            .send()
            .await
            .map_err(|e| Error::aws("SuspendProcesses", DisplayErrorContext(e)))?;
        tracing::warn!(asg, process, "suspended the process");
        Ok(())
    }

    /// New instances protected by default, and every in-service instance protected now.
    async fn protect_instances(&self, asg: &AsgState) -> Result<Option<String>> {
        let mut done = Vec::new();
        if !asg.new_instances_protected {
            self.calls.count("autoscaling", "UpdateAutoScalingGroup");
            self.autoscaling
                .update_auto_scaling_group()
                .auto_scaling_group_name(&asg.name)
                .new_instances_protected_from_scale_in(true)
                .send()
                .await
                .map_err(|e| Error::aws("UpdateAutoScalingGroup", DisplayErrorContext(e)))?;
            done.push("new instances".to_string());
        }
        // AWS applies protection to InService instances only.
        let open: Vec<String> = asg
            .instances
            .iter()
            .filter(|i| i.lifecycle == Lifecycle::InService && !i.protected)
            .map(|i| i.id.clone())
            .collect();
        for batch in open.chunks(PROTECTION_BATCH) {
            self.calls.count("autoscaling", "SetInstanceProtection");
            self.autoscaling
                .set_instance_protection()
                .auto_scaling_group_name(&asg.name)
                .set_instance_ids(Some(batch.to_vec()))
                .protected_from_scale_in(true)
                .send()
                .await
                .map_err(|e| Error::aws("SetInstanceProtection", DisplayErrorContext(e)))?;
        }
        if !open.is_empty() {
            done.push(format!("{} instances", open.len()));
        }
        Ok((!done.is_empty()).then(|| {
            format!(
                "protected {} of {} from scale-in (only chosen terminations remove instances)",
                done.join(" and "),
                asg.name
            )
        }))
    }

    /// Failed launches of `asg` since `since` (unix seconds), newest first.
    #[tracing::instrument(skip(self))]
    pub async fn launch_failures(&self, asg: &str, since: i64) -> Result<Vec<LaunchFailure>> {
        self.calls.count("autoscaling", "DescribeScalingActivities");
        let out = self
            .autoscaling
            .describe_scaling_activities()
            .auto_scaling_group_name(asg)
            .max_records(20)
            .send()
            .await
            .map_err(|e| Error::aws("DescribeScalingActivities", DisplayErrorContext(e)))?;
        Ok(out
            .activities()
            .iter()
            .filter(|a| {
                a.status_code().map(|s| s.as_str()) == Some("Failed")
                    && a.description().is_some_and(|d| d.starts_with("Launching"))
            })
            .filter_map(|a| {
                let at = a.start_time()?.secs();
                (at >= since).then(|| LaunchFailure {
                    at,
                    message: a
                        .status_message()
                        .or(a.description())
                        .unwrap_or_default()
                        .to_string(),
                })
            })
            .collect())
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
        self.autoscaling
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
        self.autoscaling
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
        // A warm pool's instances (DescribeAutoScalingInstances lists them; DescribeAutoScaling-
        // Groups does not) are neither capacity nor in flight, whatever they do in the pool.
        for warmed in [
            "Warmed:Pending",
            "Warmed:Pending:Wait",
            "Warmed:Pending:Proceed",
            "Warmed:Stopped",
            "Warmed:Running",
            "Warmed:Terminating",
            "Warmed:Terminating:Wait",
            "Warmed:Terminated",
        ] {
            assert_eq!(lifecycle(warmed), Lifecycle::Other, "{warmed}");
        }
    }
}
