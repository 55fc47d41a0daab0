//! Signals: what the controller reads before deciding. Read-only, every source with a timeout.
//!
//! - `prometheus`: usage signals (CPU, memory, pending pods, node count, custom PromQL).
//! - `cluster`: the Kubernetes API's nodes, pods and PodDisruptionBudgets.
//! - `prices`: what each worker costs (Price List API, spot price history), cached.
//! - `quantity`: Kubernetes resource quantities (`500m`, `4Gi`) as numbers.

pub mod cluster;
pub mod prices;
pub mod prometheus;
pub mod quantity;
