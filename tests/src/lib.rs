//! SmartScale's test world: every surface the product talks to, emulated on one machine.
//!
//! - [`aws`]: the AWS model (moto + our lifecycle-hook layer, a Python process) and its control API.
//! - [`imds`]: a fake IMDSv2 per emulated instance.
//! - [`apiserver`]: a fake Kubernetes API server with a simulated scheduler and kubelet.
//! - [`prometheus`]: real Prometheus fixtures (backfilled history or a live synthetic exporter).
//! - [`world`]: all of them wired into one small cluster for end-to-end tests.

pub mod aemm;
pub mod apiserver;
pub mod aws;
pub mod error;
pub mod imds;
pub mod kubernetes;
pub mod process;
pub mod prometheus;
pub mod world;

pub use error::{Error, Result};
