//! The actuator: every write the controller makes outside its own state table, and the reads
//! that guard them.
//!
//! - `autoscaling`: the worker groups (desired capacity, chosen terminations, the guards that
//!   stop AWS from choosing victims of its own);
//! - `nodes`: the victim's Node before its termination (tainted and cordoned, as
//!   cluster-autoscaler's ToBeDeleted taint), and Nodes whose instance is gone (deleted: K3s
//!   never deletes them);
//! - `instances`: EC2's word on whether an instance still exists.
//!
//! Dry-run reads but never writes.

mod autoscaling;
mod events;
mod fence_window;
mod instances;
mod nodes;

pub use autoscaling::{AZ_REBALANCE, AsgInstance, AsgState, GroupSafety, LaunchFailure, lifecycle};
pub use fence_window::FenceWindow;
pub use instances::InstanceState;
pub use nodes::TO_BE_DELETED_TAINT;

use crate::metrics::AwsCalls;

pub struct Actuator {
    autoscaling: aws_sdk_autoscaling::Client,
    /// Stamped at each lease check; the SDK measures the time to the next write's transmit.
    pub fence_window: FenceWindow,
    ec2: aws_sdk_ec2::Client,
    kube: kube::Client,
    dry_run: bool,
    calls: AwsCalls,
    /// Events on pods no new node would help (`events`).
    events: kube::runtime::events::Recorder,
    /// When each pod's last such event went out.
    events_sent: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

impl Actuator {
    pub fn new(
        sdk: &aws_config::SdkConfig,
        kube: kube::Client,
        dry_run: bool,
        calls: AwsCalls,
        fence_histogram: prometheus_client::metrics::histogram::Histogram,
    ) -> Actuator {
        let fence_window = FenceWindow::default();
        let config = aws_sdk_autoscaling::config::Builder::from(sdk)
            .interceptor(fence_window::FenceWindowInterceptor {
                window: fence_window.clone(),
                histogram: fence_histogram,
            })
            .build();
        Actuator {
            autoscaling: aws_sdk_autoscaling::Client::from_conf(config),
            fence_window,
            ec2: aws_sdk_ec2::Client::new(sdk),
            events: kube::runtime::events::Recorder::new(
                kube.clone(),
                kube::runtime::events::Reporter {
                    controller: "smartscale-controller".into(),
                    instance: std::env::var("HOSTNAME").ok(),
                },
            ),
            events_sent: Default::default(),
            kube,
            dry_run,
            calls,
        }
    }

    pub fn dry_run(&self) -> bool {
        self.dry_run
    }
}
