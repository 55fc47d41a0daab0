//! The invocation's event. EventBridge's scheduled event is what the stack sends; an empty
//! payload (`{}` or `null`, an operator's `aws lambda invoke`) is fine too. Anything else is
//! reported as a problem of the invocation, and the cycle runs all the same: the event carries
//! nothing the cycle needs (it reads every source itself), so a malformed one must not stop
//! scaling, nor pass silently.

use serde_json::Value;

/// `Some(why)` when `event` is neither a scheduled event nor empty.
pub fn check(event: &Value) -> Option<String> {
    match event {
        Value::Null => None,
        Value::Object(o) if o.is_empty() => None,
        Value::Object(o) => {
            let source = o.get("source").and_then(Value::as_str);
            let kind = o.get("detail-type").and_then(Value::as_str);
            match (source, kind) {
                (Some("aws.events"), Some("Scheduled Event")) => None,
                _ => Some(format!(
                    "not an EventBridge scheduled event (source {}, detail-type {}); ran the cycle anyway",
                    shown(source),
                    shown(kind)
                )),
            }
        }
        other => Some(format!(
            "the payload is a JSON {}, not an EventBridge scheduled event; ran the cycle anyway",
            match other {
                Value::Bool(_) => "boolean",
                Value::Number(_) => "number",
                Value::String(_) => "string",
                _ => "array",
            }
        )),
    }
}

fn shown(v: Option<&str>) -> String {
    match v {
        Some(s) => format!("`{}`", s.chars().take(64).collect::<String>()),
        None => "missing".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_scheduled_event_or_an_empty_payload_is_fine_anything_else_is_reported() {
        let scheduled = json!({
            "version": "0", "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
            "detail-type": "Scheduled Event", "source": "aws.events",
            "account": "123456789012", "time": "2026-01-01T00:00:00Z", "region": "us-east-1",
            "resources": ["arn:aws:events:us-east-1:123456789012:rule/smartscale-prod"], "detail": {}
        });
        assert_eq!(check(&scheduled), None);
        assert_eq!(check(&json!({})), None);
        assert_eq!(check(&Value::Null), None);
        let s3 = check(&json!({"source": "aws.s3", "detail-type": "Object Created"})).unwrap();
        assert!(
            s3.contains("`aws.s3`") && s3.contains("ran the cycle anyway"),
            "{s3}"
        );
        assert!(check(&json!("tick")).unwrap().contains("a JSON string"));
        assert!(check(&json!([1])).unwrap().contains("a JSON array"));
    }
}
