//! `meta-data/spot/instance-action`: `{"action": "terminate"|"stop"|"hibernate", "time": "…Z"}`
//! two minutes before EC2 reclaims a spot instance; 404 otherwise.

use super::{Event, Source};
use crate::imds::Imds;
use crate::{Error, Result};
use jiff::Timestamp;
use serde::Deserialize;

pub const PATH: &str = "meta-data/spot/instance-action";

#[derive(Debug, Deserialize)]
struct InstanceAction {
    action: String,
    time: String,
}

pub async fn check(imds: &Imds) -> Result<Option<Event>> {
    match imds.get(PATH).await? {
        None => Ok(None),
        Some(body) => parse(&body).map(Some).map_err(|message| Error::Imds {
            endpoint: imds.endpoint().to_string(),
            message,
        }),
    }
}

fn parse(body: &str) -> std::result::Result<Event, String> {
    let action: InstanceAction = serde_json::from_str(body)
        .map_err(|e| format!("{PATH} is not the expected JSON ({e}): {body}"))?;
    let ends_at = action.time.parse::<Timestamp>().ok();
    Ok(Event {
        source: Source::SpotInterruption,
        detail: format!("spot instance-action {} at {}", action.action, action.time),
        ends_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_notice() {
        let e = parse(r#"{"action": "terminate", "time": "2026-01-01T00:02:00Z"}"#).unwrap();
        assert_eq!(e.source, Source::SpotInterruption);
        assert_eq!(e.ends_at, Some("2026-01-01T00:02:00Z".parse().unwrap()));
        assert!(parse("not json").is_err());
    }
}
