//! Prometheus instant queries. Every failure becomes a `Reading::Missing` with the reason:
//! a missing signal can block a scale-down, never cause a scaling action.

use crate::config::{CustomSignal, PrometheusConfig};
use crate::policy::{CustomReading, Reading, Usage};
use serde::Deserialize;
use std::time::Duration;

/// Usage signals plus the two the policy does not use directly (kept for metrics and history).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PromSignals {
    pub usage: Usage,
    pub pending_pods: Reading,
    pub nodes: Reading,
}

impl PromSignals {
    /// Whether the signals a scale-down needs (CPU and memory) are there. Pending pods and the
    /// node count are informational: the policy takes both from the Kubernetes API.
    pub fn healthy(&self) -> bool {
        self.usage.cpu.value().is_some() && self.usage.memory.value().is_some()
    }
}

pub struct Prometheus {
    http: reqwest::Client,
    cfg: PrometheusConfig,
    custom: Vec<CustomSignal>,
}

#[derive(Deserialize)]
struct Response {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: serde_json::Value,
}

#[derive(Deserialize)]
struct VectorSample {
    value: (f64, String),
}

impl Prometheus {
    pub fn new(cfg: PrometheusConfig, custom: Vec<CustomSignal>) -> crate::Result<Prometheus> {
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(3)))
            .build()
            .map_err(|e| crate::Error::Other(format!("HTTP client: {e}")))?;
        Ok(Prometheus { http, cfg, custom })
    }

    /// Runs one instant query; a single number or why there is none.
    pub async fn query(&self, promql: &str) -> Reading {
        match self.query_inner(promql).await {
            Ok(r) => r,
            Err(why) => {
                tracing::warn!(query = promql, %why, "Prometheus query failed");
                Reading::Missing(why)
            }
        }
    }

    async fn query_inner(&self, promql: &str) -> Result<Reading, String> {
        let mut url = self
            .cfg
            .url
            .join("api/v1/query")
            .map_err(|e| format!("bad Prometheus URL: {e}"))?;
        url.query_pairs_mut().append_pair("query", promql);
        let resp = self.http.get(url).send().await.map_err(|e| {
            if e.is_timeout() {
                format!("timed out after {:?}", self.cfg.timeout)
            } else {
                format!("unreachable: {}", e.without_url())
            }
        })?;
        let status = resp.status();
        let body: Response = resp
            .json()
            .await
            .map_err(|e| format!("HTTP {status}, unparsable answer: {}", e.without_url()))?;
        if body.status != "success" {
            return Err(format!(
                "HTTP {status}: {}",
                body.error.unwrap_or_else(|| "query failed".into())
            ));
        }
        let data = body.data.ok_or("answer without data")?;
        let text = match data.result_type.as_str() {
            "vector" => {
                let v: Vec<VectorSample> = serde_json::from_value(data.result)
                    .map_err(|e| format!("unparsable vector: {e}"))?;
                match v.as_slice() {
                    [one] => one.value.1.clone(),
                    [] => return Ok(Reading::Missing("no data".into())),
                    many => {
                        return Ok(Reading::Missing(format!(
                            "{} series; the query must return one number (wrap it in sum() or avg())",
                            many.len()
                        )));
                    }
                }
            }
            "scalar" => {
                let (_, v): (f64, String) = serde_json::from_value(data.result)
                    .map_err(|e| format!("unparsable scalar: {e}"))?;
                v
            }
            other => {
                return Err(format!(
                    "the query returned a {other}; it must return an instant vector or a scalar"
                ));
            }
        };
        match text.parse::<f64>() {
            Ok(v) => Ok(Reading::from_f64(v)),
            Err(_) => Ok(Reading::Missing(format!("unparsable value `{text}`"))),
        }
    }

    /// Every signal, queried concurrently.
    pub async fn read(&self) -> PromSignals {
        let q = &self.cfg.queries;
        let (cpu, memory, pending_pods, nodes, custom) = tokio::join!(
            self.query(&q.cpu),
            self.query(&q.memory),
            self.query(&q.pending_pods),
            self.query(&q.nodes),
            futures::future::join_all(self.custom.iter().map(|c| async move {
                CustomReading {
                    name: c.name.clone(),
                    value: self.query(&c.query).await,
                    scale_up_above: c.scale_up_above,
                    scale_down_below: c.scale_down_below,
                }
            }))
        );
        PromSignals {
            usage: Usage {
                cpu,
                memory,
                custom,
            },
            pending_pods,
            nodes,
        }
    }
}
