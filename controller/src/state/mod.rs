//! State in DynamoDB: the lease that lets one replica act, the policy's memory, and history.
//!
//! Table keys: `cluster_id` (S) + `record` (S). Records: `lease`, `state`, `history#<time>`.
//! Every write of state or history is a transaction whose first item checks that the lease is
//! still ours with our fencing token, so a replica that was paused past its lease (and replaced)
//! cannot write anything.

mod lease;
mod records;

pub use lease::{Lease, LeaseStatus};
pub use records::{HistoryRecord, StoredState, sortable_time};

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
}

pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}
pub(crate) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

impl Store {
    pub fn new(
        sdk: &aws_config::SdkConfig,
        table: &str,
        cluster: &str,
        replica: String,
        lease_ttl: Duration,
        history_retention: Duration,
        calls: AwsCalls,
    ) -> Store {
        Store {
            client: aws_sdk_dynamodb::Client::new(sdk),
            calls,
            table: table.to_string(),
            cluster: cluster.to_string(),
            replica,
            lease_ttl,
            history_retention,
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
            .set_key(Some(self.key("lease")))
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
            .get("state")
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
        let mut st = self.key("state");
        st.extend(state.to_item(lease.token));
        put(st);
        if let Some(h) = history {
            let mut item = self.key(&h.record_key());
            item.extend(h.to_item(self.history_retention));
            put(item);
        }
        self.transact(lease, items).await
    }

    /// Records history alone (fenced), e.g. the outcome of an action.
    pub async fn record(&self, lease: &Lease, history: &HistoryRecord) -> Result<()> {
        let mut item = self.key(&history.record_key());
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

    async fn transact(&self, lease: &Lease, items: Vec<TransactWriteItem>) -> Result<()> {
        self.calls.count("dynamodb", "TransactWriteItems");
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let text = DisplayErrorContext(&e).to_string();
                if text.contains("ConditionalCheckFailed") || text.contains("TransactionCanceled") {
                    Err(Error::Fenced {
                        ours: lease.token,
                        current: self.current_token().await.unwrap_or(0),
                    })
                } else {
                    Err(Error::State(format!("TransactWriteItems: {text}")))
                }
            }
        }
    }

    async fn current_token(&self) -> Option<u64> {
        records::num(&self.get("lease").await.ok()??, "fencing_token")
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
            .expression_attribute_values(":p", s("history#"))
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
