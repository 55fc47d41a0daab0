//! State in DynamoDB: the lease that lets one replica act, the policy's memory, and history.
//!
//! Table keys: `cluster_id` (S) + `record` (S). Records: `lease`, `state`, `history#<time>`; a
//! dry-run replica uses its own `dry-run#lease`, `dry-run#state` and `dry-run#history#<time>`, so
//! `run --dry-run` with the production cluster id can never hold the live lease or change the
//! live state. Every write of state or history is a transaction whose first item checks that the
//! lease is still ours with our fencing token, so a replica that was paused past its lease (and
//! replaced) cannot write anything.

mod lease;
mod records;

pub use lease::{LEASE_EXPIRY, Lease, LeaseStatus};
pub use records::{Backoff, HistoryRecord, PendingIntent, StoredState, sortable_time};

use crate::metrics::AwsCalls;
use crate::{Error, Result};
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Put, TransactWriteItem};
use std::collections::HashMap;
use std::time::Duration;

pub struct Store {
    client: aws_sdk_dynamodb::Client,
    calls: AwsCalls,
    table: String,
    cluster: String,
    /// This replica's identity in the lease (host + pid + random suffix).
    pub replica: String,
    lease_ttl: Duration,
    history_retention: Duration,
    /// How long a replica that took an expired lease over waits before its first AWS write:
    /// the longest an AWS call of the old holder may still be in flight.
    takeover_grace: Duration,
    /// Records of a dry-run replica live apart from the live ones (module comment).
    dry_run: bool,
}

/// Who the store writes for, and its timings.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub table: String,
    pub cluster: String,
    pub replica: String,
    pub lease_ttl: Duration,
    pub history_retention: Duration,
    pub takeover_grace: Duration,
    pub dry_run: bool,
}

pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}
pub(crate) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

impl Store {
    pub fn new(sdk: &aws_config::SdkConfig, opts: StoreOptions, calls: AwsCalls) -> Store {
        Store {
            client: aws_sdk_dynamodb::Client::new(sdk),
            calls,
            table: opts.table,
            cluster: opts.cluster,
            replica: opts.replica,
            lease_ttl: opts.lease_ttl,
            history_retention: opts.history_retention,
            takeover_grace: opts.takeover_grace,
            dry_run: opts.dry_run,
        }
    }

    /// The record's name for this replica's mode (`lease` or `dry-run#lease`).
    fn record_name(&self, name: &str) -> String {
        if self.dry_run {
            format!("dry-run#{name}")
        } else {
            name.to_string()
        }
    }

    fn key(&self, record: &str) -> HashMap<String, AttributeValue> {
        HashMap::from([
            ("cluster_id".to_string(), s(&self.cluster)),
            ("record".to_string(), s(record)),
        ])
    }

    fn fence(&self, lease: &Lease) -> TransactWriteItem {
        let check = ConditionCheck::builder()
            .table_name(&self.table)
            .set_key(Some(self.key(&self.record_name("lease"))))
            .condition_expression("holder = :me AND fencing_token = :tok")
            .expression_attribute_values(":me", s(&self.replica))
            .expression_attribute_values(":tok", n(lease.token))
            .build();
        TransactWriteItem::builder()
            .set_condition_check(check.ok())
            .build()
    }

    /// One record, strongly consistent (a new lease holder must see the last write).
    pub(crate) async fn get(
        &self,
        record: &str,
    ) -> Result<Option<HashMap<String, AttributeValue>>> {
        self.calls.count("dynamodb", "GetItem");
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(self.key(record)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| Error::State(format!("GetItem {record}: {}", DisplayErrorContext(e))))?;
        Ok(out.item)
    }

    /// Loads the policy's memory.
    pub async fn load(&self) -> Result<StoredState> {
        Ok(self
            .get(&self.record_name("state"))
            .await?
            .as_ref()
            .map(StoredState::from_item)
            .unwrap_or_default())
    }

    /// Writes the state (and a history record) if and only if we still hold the lease.
    pub async fn commit(
        &self,
        lease: &Lease,
        state: &StoredState,
        history: Option<&HistoryRecord>,
    ) -> Result<()> {
        let mut items = vec![self.fence(lease)];
        let mut put = |item: HashMap<String, AttributeValue>| {
            let p = Put::builder()
                .table_name(&self.table)
                .set_item(Some(item))
                .build();
            items.push(TransactWriteItem::builder().set_put(p.ok()).build());
        };
        let mut st = self.key(&self.record_name("state"));
        st.extend(state.to_item(lease.token));
        put(st);
        if let Some(h) = history {
            let mut item = self.key(&self.record_name(&h.record_key()));
            item.extend(h.to_item(self.history_retention));
            put(item);
        }
        self.transact(lease, items).await
    }

    /// Records history alone (fenced), e.g. the outcome of an action.
    pub async fn record(&self, lease: &Lease, history: &HistoryRecord) -> Result<()> {
        let mut item = self.key(&self.record_name(&history.record_key()));
        item.extend(history.to_item(self.history_retention));
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .build();
        let items = vec![
            self.fence(lease),
            TransactWriteItem::builder().set_put(put.ok()).build(),
        ];
        self.transact(lease, items).await
    }

    /// Runs a fenced transaction. Only a failed fence (the lease item's condition) is
    /// [`Error::Fenced`]; a conflict with another transaction or throttling is an ordinary,
    /// retryable [`Error::State`]: the lease is still ours.
    async fn transact(&self, lease: &Lease, items: Vec<TransactWriteItem>) -> Result<()> {
        use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
        self.calls.count("dynamodb", "TransactWriteItems");
        let err = match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        let text = DisplayErrorContext(&err).to_string();
        if let Some(TransactWriteItemsError::TransactionCanceledException(c)) =
            err.as_service_error()
        {
            let codes: Vec<&str> = c
                .cancellation_reasons()
                .iter()
                .map(|r| r.code().unwrap_or("None"))
                .collect();
            // Item 0 is always the fence.
            if codes.first() == Some(&"ConditionalCheckFailed") {
                return Err(Error::Fenced {
                    ours: lease.token,
                    current: self.current_token().await.unwrap_or(0),
                });
            }
            return Err(Error::State(format!(
                "TransactWriteItems cancelled ({}); the lease is still ours, retried next cycle",
                codes.join(", ")
            )));
        }
        Err(Error::State(format!("TransactWriteItems: {text}")))
    }

    async fn current_token(&self) -> Option<u64> {
        records::num(
            &self.get(&self.record_name("lease")).await.ok()??,
            "fencing_token",
        )
    }

    /// Newest history records first.
    pub async fn history(&self, limit: u32) -> Result<Vec<HistoryRecord>> {
        self.calls.count("dynamodb", "Query");
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("cluster_id = :c AND begins_with(#r, :p)")
            .expression_attribute_names("#r", "record")
            .expression_attribute_values(":c", s(&self.cluster))
            .expression_attribute_values(":p", s(self.record_name("history#")))
            .scan_index_forward(false)
            .limit(limit.clamp(1, 1000) as i32)
            .send()
            .await
            .map_err(|e| Error::State(format!("Query history: {}", DisplayErrorContext(e))))?;
        Ok(out
            .items()
            .iter()
            .filter_map(HistoryRecord::from_item)
            .collect())
    }
}
