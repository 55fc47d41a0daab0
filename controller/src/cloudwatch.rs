//! Opt-in CloudWatch metrics (`cloudwatch.enabled`), the figures the original design published:
//! ClusterCPU, NodeCount, ScaleUpEvents and the execution time, plus ClusterMemory, PendingPods,
//! ScaleDownEvents, CycleDuration and Errors. Every datum carries the dimension
//! `ClusterId=<cluster_id>`; one PutMetricData per cycle carries them all. The dashboards stay
//! on Prometheus: this is for operators who already live in CloudWatch.
//!
//! A failed put never fails the cycle: it is logged, counted (`kind="cloudwatch"`) and returned
//! to the caller, which reports it (the Lambda mode puts it in the invocation result).

use crate::config::Config;
use crate::cycle::{Context, Outcome};
use crate::metrics::NodeLabels;
use crate::{Error, Result};
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};

/// The `kind` label CloudWatch failures are counted under.
pub const ERROR_KIND: &str = "cloudwatch";
pub const DIMENSION: &str = "ClusterId";

/// What one cycle publishes. `None` is left out (a missing reading is not a zero).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    pub cluster_cpu: Option<f64>,
    pub cluster_memory: Option<f64>,
    pub node_count: Option<f64>,
    pub pending_pods: Option<f64>,
    pub scale_up_events: f64,
    pub scale_down_events: f64,
    /// The cycle alone.
    pub cycle_seconds: f64,
    /// The whole run (a Lambda invocation: configuration, connections, cycle, notifications).
    pub execution_ms: Option<f64>,
    /// Failures this cycle: the cycle itself, and problems reported beside a decision.
    pub errors: f64,
}

impl Figures {
    /// The figures of a finished cycle. Node and pod counts come from what the cycle exported,
    /// and only when this replica led the cycle (a standby has not counted them).
    pub fn of(
        ctx: &Context,
        outcome: &Result<Outcome>,
        cycle_seconds: f64,
        errors: usize,
    ) -> Figures {
        let mut f = Figures {
            cycle_seconds,
            errors: errors as f64 + f64::from(u8::from(outcome.is_err())),
            ..Figures::default()
        };
        let Ok(o) = outcome else { return f };
        let reading = |path: &[&str]| {
            let mut v = &o.signals;
            for p in path {
                v = v.get(p)?;
            }
            v.get("value").and_then(serde_json::Value::as_f64)
        };
        f.cluster_cpu = reading(&["usage", "cpu"]);
        f.cluster_memory = reading(&["usage", "memory"]);
        let executed = o.leader && !o.dry_run;
        f.scale_up_events = f64::from(u8::from(executed && o.action == "scale_up"));
        f.scale_down_events = f64::from(u8::from(executed && o.action == "scale_down"));
        if o.leader {
            let current: i64 = ctx
                .cfg
                .node_groups
                .iter()
                .map(|g| {
                    ctx.metrics
                        .nodes
                        .get_or_create(&NodeLabels {
                            node_group: g.asg_name.clone(),
                            state: "current".into(),
                        })
                        .get()
                })
                .sum();
            f.node_count = Some(current as f64);
            f.pending_pods = Some(ctx.metrics.pending_pods.get() as f64);
        }
        f
    }
}

/// The data of one PutMetricData (pure: unit-tested).
pub fn data(cluster_id: &str, f: &Figures) -> Vec<MetricDatum> {
    let dimension = Dimension::builder()
        .name(DIMENSION)
        .value(cluster_id)
        .build();
    let now = aws_sdk_cloudwatch::primitives::DateTime::from_millis(
        jiff::Timestamp::now().as_millisecond(),
    );
    let mut out = Vec::new();
    let mut put = |name: &str, value: Option<f64>, unit: StandardUnit| {
        if let Some(v) = value.filter(|v| v.is_finite()) {
            out.push(
                MetricDatum::builder()
                    .metric_name(name)
                    .dimensions(dimension.clone())
                    .timestamp(now)
                    .value(v)
                    .unit(unit)
                    .build(),
            );
        }
    };
    put("ClusterCPU", f.cluster_cpu, StandardUnit::Percent);
    put("ClusterMemory", f.cluster_memory, StandardUnit::Percent);
    put("NodeCount", f.node_count, StandardUnit::Count);
    put("PendingPods", f.pending_pods, StandardUnit::Count);
    put(
        "ScaleUpEvents",
        Some(f.scale_up_events),
        StandardUnit::Count,
    );
    put(
        "ScaleDownEvents",
        Some(f.scale_down_events),
        StandardUnit::Count,
    );
    put(
        "CycleDuration",
        Some(f.cycle_seconds),
        StandardUnit::Seconds,
    );
    put("ExecutionTime", f.execution_ms, StandardUnit::Milliseconds);
    put("Errors", Some(f.errors), StandardUnit::Count);
    out
}

/// Publishes the figures of each cycle, when `cloudwatch.enabled`.
#[derive(Clone)]
pub struct CloudWatch {
    client: aws_sdk_cloudwatch::Client,
    namespace: String,
    cluster_id: String,
}

impl CloudWatch {
    /// `None` unless `cloudwatch.enabled`.
    pub fn from_config(cfg: &Config, sdk: &aws_config::SdkConfig) -> Option<CloudWatch> {
        cfg.cloudwatch.enabled.then(|| CloudWatch {
            client: aws_sdk_cloudwatch::Client::new(sdk),
            namespace: cfg.cloudwatch.namespace.clone(),
            cluster_id: cfg.cluster_id.clone(),
        })
    }

    /// One PutMetricData with every figure. Logged and counted on failure.
    #[tracing::instrument(skip_all, fields(namespace = %self.namespace))]
    pub async fn publish(&self, ctx: &Context, f: &Figures) -> Result<()> {
        let data = data(&self.cluster_id, f);
        ctx.metrics.aws_calls.count("cloudwatch", "PutMetricData");
        let r = self
            .client
            .put_metric_data()
            .namespace(&self.namespace)
            .set_metric_data(Some(data))
            .send()
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) => {
                let err = Error::aws(
                    "PutMetricData",
                    aws_sdk_cloudwatch::error::DisplayErrorContext(e),
                );
                tracing::warn!(error = %err, "CloudWatch metrics not published");
                ctx.metrics.error(ERROR_KIND);
                Err(err)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_datum_has_the_cluster_dimension_and_missing_readings_are_left_out() {
        let f = Figures {
            cluster_cpu: Some(56.0),
            cluster_memory: None,
            node_count: Some(3.0),
            pending_pods: Some(0.0),
            scale_up_events: 1.0,
            scale_down_events: 0.0,
            cycle_seconds: 0.25,
            execution_ms: Some(480.0),
            errors: 0.0,
        };
        let d = data("prod", &f);
        let names: Vec<&str> = d.iter().filter_map(|m| m.metric_name()).collect();
        assert_eq!(
            names,
            [
                "ClusterCPU",
                "NodeCount",
                "PendingPods",
                "ScaleUpEvents",
                "ScaleDownEvents",
                "CycleDuration",
                "ExecutionTime",
                "Errors"
            ]
        );
        for m in &d {
            let dims = m.dimensions();
            assert_eq!(dims.len(), 1);
            assert_eq!(dims[0].name(), Some(DIMENSION));
            assert_eq!(dims[0].value(), Some("prod"));
        }
        let cpu = &d[0];
        assert_eq!(cpu.value(), Some(56.0));
        assert_eq!(cpu.unit(), Some(&StandardUnit::Percent));
        assert!(
            data(
                "prod",
                &Figures {
                    cluster_cpu: Some(f64::NAN),
                    ..f
                }
            )
            .iter()
            .all(|m| m.metric_name() != Some("ClusterCPU"))
        );
    }
}
