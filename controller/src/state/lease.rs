//! The lease: one replica acts at a time. Expiring (unlike the seed's lock, which a crashed
//! holder kept forever) and fenced: each acquisition increments `fencing_token`, and every write
//! checks it.
//!
//! - Its expiry is `lease_expires_at`, not the table's TTL attribute (`expires_at`): DynamoDB
//!   would delete an expired lease and the fencing token would start again at 1.
//! - `renewed` is stamped before the request goes out, so our monotonic view of the lease can
//!   only be older than the truth, never younger.
//! - An acquisition or renewal whose answer was lost (timeout, retry) is recognised on the next
//!   read: the item names this replica.
//! - Taking over a lease that expired (its holder died or paused, rather than handing it back)
//!   waits `takeover_grace` before the first AWS write: the old holder's last request may still
//!   be in flight, and AWS calls cannot carry a fencing token.

use super::{Store, n, s};
use crate::{Error, Result};
use aws_sdk_dynamodb::error::DisplayErrorContext;
use std::time::{Duration, Instant};

/// The lease record's expiry attribute (unix seconds).
pub const LEASE_EXPIRY: &str = "lease_expires_at";
/// The table's TTL attribute: the lease must never carry it.
const TTL_ATTRIBUTE: &str = "expires_at";

/// A lease we hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub token: u64,
    /// Unix seconds when the lease runs out unless renewed.
    pub expires_at: f64,
    /// Local monotonic time just before the request that last renewed it: we stop acting well
    /// before the lease could have expired by our own clock, whatever the wall clock says.
    pub renewed: Instant,
    /// Not before this instant may we write to AWS (a takeover of an expired lease).
    pub act_after: Option<Instant>,
    /// Who held it before us, when we took it over from an expired holder.
    pub took_over_from: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LeaseStatus {
    Held(Lease),
    Other { holder: String, expires_at: f64 },
}

impl Lease {
    /// Whether it is still safe to act: less than half the TTL since we renewed it.
    pub fn fresh(&self, ttl: Duration) -> bool {
        self.renewed.elapsed() < ttl / 2
    }

    /// How long a new holder must still wait before its first AWS write; `None` once it may.
    pub fn takeover_wait(&self) -> Option<Duration> {
        let at = self.act_after?;
        at.checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    }
}

/// The lease record as read.
struct Seen {
    token: u64,
    expires_at: f64,
    holder: String,
}

fn conditional_failed<E: std::fmt::Debug>(e: &E) -> bool {
    format!("{e:?}").contains("ConditionalCheckFailed")
}

impl Store {
    async fn read_lease(&self) -> Result<Option<Seen>> {
        Ok(self.get(&self.record_name("lease")).await?.map(|i| Seen {
            token: super::records::num(&i, "fencing_token").unwrap_or(0),
            // Records written before the rename carry the TTL attribute only.
            expires_at: super::records::float(&i, LEASE_EXPIRY)
                .or_else(|| super::records::float(&i, TTL_ATTRIBUTE))
                .unwrap_or(0.0),
            holder: super::records::text(&i, "holder").unwrap_or_default(),
        }))
    }

    /// Extends the lease we hold (`token`): `Ok(true)` renewed, `Ok(false)` no longer ours.
    async fn renew(&self, token: u64, expires: f64) -> Result<bool> {
        self.calls.count("dynamodb", "UpdateItem");
        let renewed = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(self.key(&self.record_name("lease"))))
            .condition_expression("holder = :me AND fencing_token = :tok")
            .update_expression("SET #exp = :exp REMOVE #ttl")
            .expression_attribute_names("#exp", LEASE_EXPIRY)
            .expression_attribute_names("#ttl", TTL_ATTRIBUTE)
            .expression_attribute_values(":me", s(&self.replica))
            .expression_attribute_values(":tok", n(token))
            .expression_attribute_values(":exp", n(expires))
            .send()
            .await;
        match renewed {
            Ok(_) => Ok(true),
            Err(e) if conditional_failed(&e) => Ok(false),
            Err(e) => Err(Error::State(format!(
                "renew lease: {}",
                DisplayErrorContext(e)
            ))),
        }
    }

    /// Renews the lease we hold, or acquires it if it is free or expired.
    #[tracing::instrument(skip(self, current), fields(replica = %self.replica))]
    pub async fn acquire(&self, current: Option<&Lease>, now: f64) -> Result<LeaseStatus> {
        let expires = now + self.lease_ttl.as_secs_f64();
        if let Some(lease) = current {
            let sent = Instant::now();
            if self.renew(lease.token, expires).await? {
                return Ok(LeaseStatus::Held(Lease {
                    token: lease.token,
                    expires_at: expires,
                    renewed: sent,
                    act_after: lease.act_after,
                    took_over_from: lease.took_over_from.clone(),
                }));
            }
            tracing::warn!(token = lease.token, "lease lost to another replica");
        }
        let seen = self.read_lease().await?;
        if let Some(seen) = &seen
            && seen.holder == self.replica
            && seen.expires_at > now
        {
            // Ours, though we did not know it: an acquisition whose answer was lost. Renew it
            // so our monotonic stamp is one we took ourselves.
            let sent = Instant::now();
            if self.renew(seen.token, expires).await? {
                tracing::info!(token = seen.token, "recognised our own lease");
                return Ok(LeaseStatus::Held(Lease {
                    token: seen.token,
                    expires_at: expires,
                    renewed: sent,
                    act_after: None,
                    took_over_from: None,
                }));
            }
        }
        if let Some(seen) = &seen
            && seen.expires_at > now
        {
            return Ok(LeaseStatus::Other {
                holder: seen.holder.clone(),
                expires_at: seen.expires_at,
            });
        }
        // Free or expired: take it, but only if nobody else changed it since we looked.
        let token = seen.as_ref().map_or(0, |s| s.token) + 1;
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(self.key(&self.record_name("lease"))))
            .update_expression("SET holder = :me, #exp = :exp, fencing_token = :new REMOVE #ttl")
            .expression_attribute_names("#exp", LEASE_EXPIRY)
            .expression_attribute_names("#ttl", TTL_ATTRIBUTE)
            .expression_attribute_values(":me", s(&self.replica))
            .expression_attribute_values(":exp", n(expires))
            .expression_attribute_values(":new", n(token));
        req = match &seen {
            // Still the lease we saw, and still expired now (its holder may have renewed it
            // since we read it).
            Some(seen) => req
                .condition_expression(
                    "fencing_token = :seen AND (#exp < :now OR (attribute_not_exists(#exp) AND (attribute_not_exists(#ttl) OR #ttl < :now)))",
                )
                .expression_attribute_values(":seen", n(seen.token))
                .expression_attribute_values(":now", n(now)),
            None => req
                .condition_expression("attribute_not_exists(#r)")
                .expression_attribute_names("#r", "record"),
        };
        self.calls.count("dynamodb", "UpdateItem");
        let sent = Instant::now();
        match req.send().await {
            Ok(_) => {
                // A lease handed back (expiry 0) needs no wait; one that ran out may still have
                // its old holder's last AWS call in flight.
                let takeover = seen
                    .as_ref()
                    .filter(|s| s.expires_at > 0.0 && !s.holder.is_empty())
                    .map(|s| s.holder.clone());
                if let Some(from) = &takeover {
                    tracing::warn!(token, from = %from, grace_s = self.takeover_grace.as_secs_f64(), "lease taken over from an expired holder; waiting before the first AWS write");
                } else {
                    tracing::info!(token, "lease acquired");
                }
                Ok(LeaseStatus::Held(Lease {
                    token,
                    expires_at: expires,
                    renewed: sent,
                    act_after: takeover.as_ref().map(|_| sent + self.takeover_grace),
                    took_over_from: takeover,
                }))
            }
            Err(e) if conditional_failed(&e) => {
                // Someone changed it since we looked: maybe us, on an earlier attempt whose
                // answer was lost. The next cycle's read tells.
                let now_seen = self.read_lease().await?;
                Ok(LeaseStatus::Other {
                    holder: now_seen
                        .as_ref()
                        .map(|s| s.holder.clone())
                        .unwrap_or_else(|| "another replica (just acquired)".into()),
                    expires_at: now_seen.map_or(expires, |s| s.expires_at),
                })
            }
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
            .set_key(Some(self.key(&self.record_name("lease"))))
            .condition_expression("holder = :me AND fencing_token = :tok")
            .update_expression("SET #exp = :zero")
            .expression_attribute_names("#exp", LEASE_EXPIRY)
            .expression_attribute_values(":me", s(&self.replica))
            .expression_attribute_values(":tok", n(lease.token))
            .expression_attribute_values(":zero", n(0))
            .send()
            .await
            .map_err(|e| Error::State(format!("release lease: {}", DisplayErrorContext(e))))?;
        Ok(())
    }
}
