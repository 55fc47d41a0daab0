//! SmartScale controller.
//!
//! The flow a cycle follows, one module each:
//! `signals` (Prometheus + Kubernetes, read-only) → `policy` (pure: data in, decision out)
//! → `actuator` (the worker Auto Scaling Group) → `state` (DynamoDB lease, state and history).
//! `cycle` strings them together once; `run` repeats it and serves `api`; `lambda` runs it once
//! per invocation as an AWS Lambda function (`cloudwatch`, `notify`: what it reports).
//! `simulator` is the digital twin: it drives the same `policy` with a simulated cluster.

pub mod actuator;
pub mod api;
pub mod capacity;
pub mod cloudwatch;
pub mod config;
pub mod cycle;
pub mod error;
pub mod inspect;
pub mod lambda;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod run;
pub mod serve;
pub mod signals;
pub mod simulator;
pub mod state;
pub mod testing;

pub use error::{Error, Result};
