//! The config file as written: everything optional or defaulted, so that `validate` can find
//! every problem instead of stopping at the first.

use crate::policy::PolicyConfig;
use crate::simulator::SimOptions;
use serde::{Deserialize, Serialize};
use smartscale_common::Dur;
use smartscale_common::logging::LogFormat;
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct Raw {
    pub(super) cluster_id: Option<String>,
    pub(super) interval: Dur,
    pub(super) dry_run: bool,
    pub(super) log_format: LogFormat,
    pub(super) prometheus: RawPrometheus,
    pub(super) custom_signals: Vec<RawCustom>,
    pub(super) state: RawState,
    pub(super) node_groups: Vec<RawGroup>,
    pub(super) policy: RawPolicy,
    pub(super) api: RawApi,
    pub(super) notifications: RawNotifications,
    pub(super) cloudwatch: RawCloudWatch,
    pub(super) prices: RawPrices,
    pub(super) simulate: SimOptions,
}

impl Default for Raw {
    fn default() -> Self {
        Raw {
            cluster_id: None,
            interval: Dur::secs(30),
            dry_run: false,
            log_format: LogFormat::Text,
            prometheus: RawPrometheus::default(),
            custom_signals: vec![],
            state: RawState::default(),
            node_groups: vec![],
            policy: RawPolicy::default(),
            api: RawApi::default(),
            notifications: RawNotifications::default(),
            cloudwatch: RawCloudWatch::default(),
            prices: RawPrices::default(),
            simulate: SimOptions::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct RawPrometheus {
    pub(super) url: Option<String>,
    pub(super) timeout: Dur,
    pub(super) queries: Queries,
}

impl Default for RawPrometheus {
    fn default() -> Self {
        RawPrometheus {
            url: None,
            timeout: Dur::secs(5),
            queries: Queries::default(),
        }
    }
}

/// PromQL for the built-in signals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Queries {
    /// The corrected query: busy = 1 - idle share, averaged over every CPU (DESIGN.md).
    pub cpu: String,
    pub memory: String,
    pub pending_pods: String,
    pub nodes: String,
}

impl Default for Queries {
    fn default() -> Self {
        Queries {
            // Workers only: the shipped scrape config gives every worker's node-exporter target a
            // `node_group` label and the K3s server's none (it runs Prometheus, Grafana and the
            // control plane; averaged in, a one-worker cluster would read half server).
            cpu: r#"(1 - avg(rate(node_cpu_seconds_total{mode="idle",node_group!=""}[5m]))) * 100"#
                .into(),
            memory: r#"(1 - avg(node_memory_MemAvailable_bytes{node_group!=""} / node_memory_MemTotal_bytes{node_group!=""})) * 100"#
                .into(),
            pending_pods: r#"sum(kube_pod_status_phase{phase="Pending"})"#.into(),
            nodes: "count(kube_node_info)".into(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct RawCustom {
    pub(super) name: Option<String>,
    pub(super) query: Option<String>,
    pub(super) scale_up_above: Option<f64>,
    pub(super) scale_down_below: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct RawState {
    pub(super) table: Option<String>,
    pub(super) lease_ttl: Dur,
    pub(super) history_retention: Dur,
}

impl Default for RawState {
    fn default() -> Self {
        RawState {
            table: None,
            lease_ttl: Dur::secs(90),
            history_retention: Dur::secs(30 * 86_400),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct RawGroup {
    pub(super) asg_name: Option<String>,
    pub(super) min: Option<i64>,
    pub(super) max: Option<i64>,
    pub(super) instance_type: Option<String>,
    pub(super) allocatable: Option<RawAllocatable>,
    pub(super) hourly_price: Option<f64>,
    pub(super) priority: Option<i64>,
    pub(super) suspend_az_rebalance: Option<bool>,
    pub(super) protect_from_scale_in: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct RawAllocatable {
    pub(super) cpu: Option<f64>,
    pub(super) memory_gib: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct RawPolicy {
    pub(super) scale_up: RawScaleUp,
    pub(super) scale_down: RawScaleDown,
    pub(super) cooldown: RawCooldown,
    pub(super) max_node_provision_time: Dur,
    pub(super) replace_unready_after: Dur,
    pub(super) backoff: RawBackoff,
    pub(super) forecast: RawForecast,
}

/// `policy.forecast`: predictive pre-warming.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct RawForecast {
    pub(super) enabled: bool,
    pub(super) lead: Dur,
}

impl Default for RawForecast {
    fn default() -> Self {
        RawPolicy::default().forecast
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct RawBackoff {
    pub(super) initial: Dur,
    pub(super) max: Dur,
}

impl Default for RawBackoff {
    fn default() -> Self {
        RawPolicy::default().backoff
    }
}

impl Default for RawPolicy {
    fn default() -> Self {
        let d = PolicyConfig::default();
        RawPolicy {
            scale_up: RawScaleUp {
                cpu_above: d.cpu_above,
                cpu_checks: d.cpu_checks as i64,
                memory_above: d.memory_above,
                pending_pods: d.pending_pods,
                pending_pods_binpack: d.pending_pods_binpack,
                expander: "least-waste".into(),
            },
            scale_down: RawScaleDown {
                cpu_below: d.cpu_below,
                memory_below: d.memory_below,
                sustained: Dur(d.sustained),
                consolidate: d.consolidate,
                consolidate_after: Dur(d.consolidate_after),
                budget: RawBudget {
                    nodes: d.disruption_budget.nodes,
                    percent: d.disruption_budget.percent,
                    window: Dur(d.disruption_budget.window),
                },
                skip_nodes_with_local_storage: true,
                skip_nodes_with_system_pods: true,
                skip_nodes_with_custom_controller_pods: true,
            },
            cooldown: RawCooldown {
                after_scale_up: Dur(d.after_scale_up),
                after_scale_down: Dur(d.after_scale_down),
                applies_to_pending_pods: d.cooldown_applies_to_pending,
            },
            max_node_provision_time: Dur(d.max_node_provision_time),
            replace_unready_after: Dur(d.replace_unready_after),
            backoff: RawBackoff {
                initial: Dur(d.backoff_initial),
                max: Dur(d.backoff_max),
            },
            forecast: RawForecast {
                enabled: d.forecast.enabled,
                lead: Dur(d.forecast.lead),
            },
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct RawScaleUp {
    pub(super) cpu_above: f64,
    pub(super) cpu_checks: i64,
    pub(super) memory_above: f64,
    pub(super) pending_pods: bool,
    pub(super) pending_pods_binpack: bool,
    pub(super) expander: String,
}

impl Default for RawScaleUp {
    fn default() -> Self {
        RawPolicy::default().scale_up
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct RawScaleDown {
    pub(super) cpu_below: f64,
    pub(super) memory_below: f64,
    pub(super) sustained: Dur,
    pub(super) consolidate: bool,
    pub(super) consolidate_after: Dur,
    pub(super) budget: RawBudget,
    pub(super) skip_nodes_with_local_storage: bool,
    pub(super) skip_nodes_with_system_pods: bool,
    pub(super) skip_nodes_with_custom_controller_pods: bool,
}

impl Default for RawScaleDown {
    fn default() -> Self {
        RawPolicy::default().scale_down
    }
}

/// `policy.scale_down.budget`: the disruption budget.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct RawBudget {
    pub(super) nodes: Option<u32>,
    pub(super) percent: Option<f64>,
    pub(super) window: Dur,
}

impl Default for RawBudget {
    fn default() -> Self {
        RawPolicy::default().scale_down.budget
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct RawCooldown {
    pub(super) after_scale_up: Dur,
    pub(super) after_scale_down: Dur,
    pub(super) applies_to_pending_pods: bool,
}

impl Default for RawCooldown {
    fn default() -> Self {
        RawPolicy::default().cooldown
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct RawApi {
    pub(super) listen: String,
    pub(super) token_file: Option<PathBuf>,
}

impl Default for RawApi {
    fn default() -> Self {
        RawApi {
            listen: "127.0.0.1:8080".into(),
            token_file: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct RawNotifications {
    pub(super) webhook_url: Option<String>,
    pub(super) sns_topic_arn: Option<String>,
    pub(super) error_threshold: i64,
}

impl Default for RawNotifications {
    fn default() -> Self {
        RawNotifications {
            webhook_url: None,
            sns_topic_arn: None,
            error_threshold: 3,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct RawCloudWatch {
    pub(super) enabled: bool,
    pub(super) namespace: String,
}

impl Default for RawCloudWatch {
    fn default() -> Self {
        RawCloudWatch {
            enabled: false,
            namespace: super::CLOUDWATCH_NAMESPACE.into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct RawPrices {
    pub(super) lookup: bool,
    pub(super) refresh: Dur,
}

impl Default for RawPrices {
    fn default() -> Self {
        RawPrices {
            lookup: true,
            refresh: Dur::secs(3600),
        }
    }
}
