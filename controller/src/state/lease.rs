//! The lease: one replica acts at a time. Expiring (unlike the seed's lock, which a crashed
//! holder kept forever) and fenced: each acquisition increments `fencing_token`, and every write
//! checks it.

use super::{Store, n, s};
use crate::{Error, Result};
use aws_sdk_dynamodb::error::DisplayErrorContext;
use std::time::Instant;

/// A lease we hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub token: u64,
    /// Unix seconds when the lease runs out unless renewed.
    pub expires_at: f64,
    /// Local monotonic time of the last renewal: we stop acting well before the lease could
    /// have expired by our own clock, whatever the wall clock says.
    pub renewed: Instant,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LeaseStatus {
    Held(Lease),
    Other { holder: String, expires_at: f64 },
}

impl Lease {
    /// Whether it is still safe to act: less than half the TTL since we renewed it.
    pub fn fresh(&self, ttl: std::time::Duration) -> bool {
        self.renewed.elapsed() < ttl / 2
    }
}

fn conditional_failed<E: std::fmt::Debug>(e: &E) -> bool {
    format!("{e:?}").contains("ConditionalCheckFailed")
}

impl Store {
    /// Renews the lease we hold, or acquires it if it is free or expired.
    #[tracing::instrument(skip(self, current), fields(replica = %self.replica))]
    pub async fn acquire(&self, current: Option<&Lease>, now: f64) -> Result<LeaseStatus> {
        let expires = now + self.lease_ttl.as_secs_f64();
        if let Some(lease) = current {
            self.calls.count("dynamodb", "UpdateItem");
            let renewed = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(self.key("lease")))
                .condition_expression("holder = :me AND fencing_token = :tok")
                .update_expression("SET expires_at = :exp")
                .expression_attribute_values(":me", s(&self.replica))
                .expression_attribute_values(":tok", n(lease.token))
                .expression_attribute_values(":exp", n(expires))
                .send()
                .await;
            match renewed {
                Ok(_) => {
                    return Ok(LeaseStatus::Held(Lease {
                        token: lease.token,
                        expires_at: expires,
                        renewed: Instant::now(),
                    }));
                }
                Err(e) if conditional_failed(&e) => {
                    tracing::warn!(token = lease.token, "lease lost to another replica");
                }
                Err(e) => {
                    return Err(Error::State(format!(
                        "renew lease: {}",
                        DisplayErrorContext(e)
                    )));
                }
            }
        }
        let item = self.get("lease").await?;
        let (seen_token, seen_expiry, holder) = match &item {
            Some(i) => (
                super::records::num(i, "fencing_token").unwrap_or(0),
                super::records::float(i, "expires_at").unwrap_or(0.0),
                super::records::text(i, "holder").unwrap_or_default(),
            ),
            None => (0, 0.0, String::new()),
        };
        if item.is_some() && seen_expiry > now {
            return Ok(LeaseStatus::Other {
                holder,
                expires_at: seen_expiry,
            });
        }
        // Free or expired: take it, but only if nobody else changed it since we looked.
        let token = seen_token + 1;
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(self.key("lease")))
            .update_expression("SET holder = :me, expires_at = :exp, fencing_token = :new")
            .expression_attribute_values(":me", s(&self.replica))
            .expression_attribute_values(":exp", n(expires))
            .expression_attribute_values(":new", n(token));
        req = if item.is_some() {
            req.condition_expression("fencing_token = :seen AND expires_at = :seen_exp")
                .expression_attribute_values(":seen", n(seen_token))
                .expression_attribute_values(":seen_exp", n(seen_expiry))
        } else {
            req.condition_expression("attribute_not_exists(#r)")
                .expression_attribute_names("#r", "record")
        };
        self.calls.count("dynamodb", "UpdateItem");
        match req.send().await {
            Ok(_) => {
                tracing::info!(token, "lease acquired");
                Ok(LeaseStatus::Held(Lease {
                    token,
                    expires_at: expires,
                    renewed: Instant::now(),
                }))
            }
            Err(e) if conditional_failed(&e) => Ok(LeaseStatus::Other {
                holder: "another replica (just acquired)".into(),
                expires_at: expires,
            }),
            Err(e) => Err(Error::State(format!(
                "acquire lease: {}",
                DisplayErrorContext(e)
            ))),
        }
    }

    /// Gives the lease up (on shutdown) so another replica takes over at once.
    pub async fn release(&self, lease: &Lease) -> Result<()> {
        self.calls.count("dynamodb", "UpdateItem");
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(self.key("lease")))
            .condition_expression("holder = :me AND fencing_token = :tok")
            .update_expression("SET expires_at = :zero")
            .expression_attribute_values(":me", s(&self.replica))
            .expression_attribute_values(":tok", n(lease.token))
            .expression_attribute_values(":zero", n(0))
            .send()
            .await
            .map_err(|e| Error::State(format!("release lease: {}", DisplayErrorContext(e))))?;
        Ok(())
    }
}
