//! `meta-data/events/recommendations/rebalance`: `{"noticeTime": "…Z"}` when EC2 sees an
//! elevated risk of spot interruption; 404 otherwise. Off unless `rebalance_enabled`.

use super::{Event, Source};
use crate::Result;
use crate::imds::Imds;

pub const PATH: &str = "meta-data/events/recommendations/rebalance";

pub async fn check(imds: &Imds) -> Result<Option<Event>> {
    Ok(imds.get(PATH).await?.map(|body| Event {
        source: Source::Rebalance,
        detail: format!("rebalance recommendation {}", body.trim()),
        ends_at: None,
    }))
}
