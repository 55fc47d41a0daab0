//! SmartScale's test world: every surface the product talks to, on one machine — the real thing
//! wherever it can run here, our own model only where nothing real can.
//!
//! - [`kubernetes`]: the real control plane (etcd, kube-apiserver, kube-controller-manager,
//!   kube-scheduler of a pinned release), simulated kubelets, and what a K3s server adds.
//! - [`aws`]: the AWS model (moto + our layer: lifecycle hooks, AZ rebalancing, launch failures,
//!   DynamoDB TTL, faults; a Python process) and its control API.
//! - [`aemm`]: amazon-ec2-metadata-mock, the IMDS mock AWS maintains.
//! - [`imds`]: our fake IMDSv2, for what AEMM cannot do (follow the ASG model live, fail).
//! - [`prometheus`]: real Prometheus fixtures (backfilled history or a live synthetic exporter).
//! - [`world`]: all of them wired into one small cluster for end-to-end tests.

pub mod aemm;
pub mod aws;
pub mod error;
pub mod imds;
pub mod kubernetes;
pub mod lambda_rie;
pub mod process;
pub mod prometheus;
pub mod world;

pub use error::{Error, Result};
