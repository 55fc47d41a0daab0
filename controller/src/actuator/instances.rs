//! EC2's word on instances: the only authority on whether one still exists. A Node is deleted
//! only once EC2 says its instance is terminated (or no longer knows it), never while it exists
//! (a detached instance keeps running outside its group).

use super::Actuator;
use crate::{Error, Result};
use aws_sdk_ec2::error::DisplayErrorContext;
use std::collections::HashMap;

/// DescribeInstances takes at most 1,000 instance ids per call.
const BATCH: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    /// pending, running, stopping, stopped, shutting-down: it still exists.
    Exists,
    /// terminated, or unknown to EC2 (terminated instances are forgotten after about an hour).
    Gone,
}

impl Actuator {
    /// The state of each instance in `ids`.
    #[tracing::instrument(skip(self, ids), fields(count = ids.len()))]
    pub async fn instance_states(&self, ids: &[String]) -> Result<HashMap<String, InstanceState>> {
        let mut states: HashMap<String, InstanceState> = ids
            .iter()
            .map(|id| (id.clone(), InstanceState::Gone))
            .collect();
        for batch in ids.chunks(BATCH) {
            self.calls.count("ec2", "DescribeInstances");
            // With a filter, ids EC2 no longer knows are simply absent from the answer rather
            // than failing the whole call (InvalidInstanceID.NotFound).
            let out = self
                .ec2
                .describe_instances()
                .filters(
                    aws_sdk_ec2::types::Filter::builder()
                        .name("instance-id")
                        .set_values(Some(batch.to_vec()))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| Error::aws("DescribeInstances", DisplayErrorContext(e)))?;
            for reservation in out.reservations() {
                for i in reservation.instances() {
                    let Some(id) = i.instance_id() else { continue };
                    let terminated = i
                        .state()
                        .and_then(|s| s.name())
                        .is_some_and(|n| n.as_str() == "terminated");
                    states.insert(
                        id.to_string(),
                        if terminated {
                            InstanceState::Gone
                        } else {
                            InstanceState::Exists
                        },
                    );
                }
            }
        }
        Ok(states)
    }
}
