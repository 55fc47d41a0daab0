//! `status` and `history`: what the state table says, without a running controller. The HTTP
//! API is a daemon feature; in Lambda mode (and from a laptop, in either mode) these read
//! DynamoDB directly: the lease (holder, fencing token, expiry), the stored state (the policy's
//! memory, a pending intent, backoffs) and the newest history records.

use crate::config::Config;
use crate::metrics::AwsCalls;
use crate::state::{HistoryRecord, LEASE_EXPIRY, Store, StoreOptions, StoredState};
use crate::{Error, Result};
use aws_sdk_dynamodb::types::AttributeValue;
use serde::Serialize;
use std::collections::HashMap;

/// The lease record as stored.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LeaseView {
    pub holder: String,
    pub fencing_token: u64,
    /// RFC 3339.
    pub expires_at: Option<String>,
    /// Seconds left (negative: expired; a replica takes it over at its next cycle).
    pub expires_in_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    pub cluster_id: String,
    pub table: String,
    pub dry_run: bool,
    /// `None`: nobody holds it (released, or never taken).
    pub lease: Option<LeaseView>,
    pub state: StoredState,
    /// The newest history record, if any.
    pub last: Option<HistoryRecord>,
}

fn store(cfg: &Config, sdk: &aws_config::SdkConfig, dry_run: bool) -> Store {
    Store::new(
        sdk,
        StoreOptions {
            table: cfg.state.table.clone(),
            cluster: cfg.cluster_id.clone(),
            // Only reads: never the holder of anything.
            replica: "inspect".into(),
            lease_ttl: cfg.state.lease_ttl,
            history_retention: cfg.state.history_retention,
            takeover_grace: std::time::Duration::ZERO,
            dry_run: dry_run || cfg.dry_run,
        },
        AwsCalls::default(),
    )
}

fn number(item: &HashMap<String, AttributeValue>, key: &str) -> Option<f64> {
    item.get(key)?.as_n().ok()?.parse().ok()
}

/// The lease view of a lease record at wall time `now` (unix seconds).
pub fn lease_view(item: &HashMap<String, AttributeValue>, now: f64) -> LeaseView {
    let expires = number(item, LEASE_EXPIRY).or_else(|| number(item, "expires_at"));
    LeaseView {
        holder: item
            .get("holder")
            .and_then(|v| v.as_s().ok())
            .cloned()
            .unwrap_or_default(),
        fencing_token: number(item, "fencing_token").unwrap_or(0.0) as u64,
        expires_at: expires.and_then(|e| {
            jiff::Timestamp::from_millisecond((e * 1000.0) as i64)
                .ok()
                .map(|t| t.to_string())
        }),
        expires_in_s: expires.map(|e| ((e - now) * 10.0).round() / 10.0),
    }
}

/// `smartscale-controller status`.
pub async fn status(
    cfg: &Config,
    sdk: &aws_config::SdkConfig,
    dry_run: bool,
) -> Result<StatusView> {
    let store = store(cfg, sdk, dry_run);
    let dry = dry_run || cfg.dry_run;
    let lease_record = if dry { "dry-run#lease" } else { "lease" };
    let now = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
    let (lease, state, last) =
        tokio::join!(store.get(lease_record), store.load(), store.history(1));
    Ok(StatusView {
        cluster_id: cfg.cluster_id.clone(),
        table: cfg.state.table.clone(),
        dry_run: dry,
        lease: lease?.map(|item| lease_view(&item, now)),
        state: state?,
        last: last?.into_iter().next(),
    })
}

/// `smartscale-controller history --limit N`: newest first.
pub async fn history(
    cfg: &Config,
    sdk: &aws_config::SdkConfig,
    limit: u32,
    dry_run: bool,
) -> Result<Vec<HistoryRecord>> {
    if !(1..=1000).contains(&limit) {
        return Err(Error::Config(vec![format!(
            "--limit {limit}: ask for 1–1000 records"
        )]));
    }
    store(cfg, sdk, dry_run).history(limit).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_view_tells_who_holds_it_and_for_how_long() {
        let item = HashMap::from([
            ("holder".to_string(), AttributeValue::S("lambda-a".into())),
            ("fencing_token".to_string(), AttributeValue::N("7".into())),
            (
                LEASE_EXPIRY.to_string(),
                AttributeValue::N("1767225690.5".into()),
            ),
        ]);
        let v = lease_view(&item, 1_767_225_600.0);
        assert_eq!(v.holder, "lambda-a");
        assert_eq!(v.fencing_token, 7);
        assert_eq!(v.expires_in_s, Some(90.5));
        assert_eq!(v.expires_at.as_deref(), Some("2026-01-01T00:01:30.5Z"));
    }
}
