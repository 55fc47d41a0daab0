//! The HTTP API (axum): health, metrics, status, history, and authenticated manual scaling.

use crate::cycle::{self, Context, ManualRequest};
use crate::policy::Action;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Dependencies the controller cannot act safely without.
const NEEDED: [&str; 4] = ["prometheus", "kubernetes", "autoscaling", "dynamodb"];
/// A manual scaling request is a few dozen bytes; nothing bigger is read.
const MAX_BODY: usize = 16 * 1024;
/// `/history` needs no authentication, so it must not be a DynamoDB query per request: answers
/// are served from the last query for this long.
const HISTORY_CACHE: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Api {
    ctx: Arc<Context>,
    /// Bearer token for `POST /scale`; `None` disables manual scaling.
    token: Option<Arc<str>>,
    /// The last history query: when, how many records it asked for, and what came back.
    history: Arc<tokio::sync::Mutex<Option<CachedHistory>>>,
}

type CachedHistory = (Instant, u32, Vec<crate::state::HistoryRecord>);

pub fn router(ctx: Arc<Context>, token: Option<String>) -> Router {
    let api = Api {
        ctx,
        token: token.map(Arc::from),
        history: Arc::default(),
    };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/history", get(history))
        .route("/scale", post(scale))
        .with_state(api)
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, axum::Json(json!({ "error": message.into() }))).into_response()
}

async fn healthz(State(api): State<Api>) -> Response {
    let st = api.ctx.status.read().await;
    let mut deps = serde_json::Map::new();
    let mut ok = true;
    for name in NEEDED {
        let (up, detail) = match st.dependencies.get(name) {
            Some(h) => (h.ok, h.detail.clone()),
            None => (false, "not checked yet (first cycle pending)".to_string()),
        };
        ok &= up;
        deps.insert(name.to_string(), json!({ "ok": up, "detail": detail }));
    }
    let body = json!({
        "status": if ok { "ok" } else { "degraded" },
        "dependencies": deps,
        "lease_holder": st.lease_holder,
    });
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

async fn metrics(State(api): State<Api>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        api.ctx.metrics.encode(),
    )
        .into_response()
}

async fn status(State(api): State<Api>) -> Response {
    let st = api.ctx.status.read().await.clone();
    let cfg = &api.ctx.cfg;
    axum::Json(json!({
        "cluster_id": cfg.cluster_id,
        "replica": api.ctx.store.replica,
        "dry_run": api.ctx.dry_run(),
        "interval_s": cfg.interval.as_secs_f64(),
        "node_groups": cfg.node_groups.iter().map(|g| json!({"asg_name": g.asg_name, "min": g.min, "max": g.max})).collect::<Vec<_>>(),
        "action_in_flight": api.ctx.action_in_flight(),
        "status": st,
    }))
    .into_response()
}

#[derive(Deserialize)]
struct HistoryQuery {
    limit: Option<String>,
}

async fn history(State(api): State<Api>, Query(q): Query<HistoryQuery>) -> Response {
    let limit = match q.limit.as_deref().map(str::parse::<u32>) {
        None => 20,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "limit must be a whole number from 1 to 1000",
            );
        }
    };
    let mut cache = api.history.lock().await;
    if let Some((at, cached_limit, records)) = cache.as_ref()
        && at.elapsed() < HISTORY_CACHE
        && *cached_limit >= limit
    {
        let records: Vec<_> = records.iter().take(limit as usize).collect();
        return axum::Json(json!({ "history": records })).into_response();
    }
    match api.ctx.store.history(limit).await {
        Ok(records) => {
            let body = axum::Json(json!({ "history": records })).into_response();
            *cache = Some((Instant::now(), limit, records));
            body
        }
        Err(e) => error(StatusCode::BAD_GATEWAY, e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScaleBody {
    action: String,
    #[serde(default = "one")]
    count: u32,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    node_group: Option<String>,
}

fn one() -> u32 {
    1
}

/// Compares in time independent of where the strings differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `POST /scale`. The token is checked before a byte of the body is read, and at most
/// [`MAX_BODY`] bytes are read.
async fn scale(State(api): State<Api>, headers: HeaderMap, body: axum::body::Body) -> Response {
    let Some(token) = api.token.as_deref() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "manual scaling is disabled: no API token configured (set api.token_file or SMARTSCALE_API_TOKEN)",
        );
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !presented.is_some_and(|p| same(p.trim().as_bytes(), token.as_bytes())) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            axum::Json(json!({"error": "missing or wrong bearer token"})),
        )
            .into_response();
    }
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the body is over {MAX_BODY} bytes (or was cut off); a request is a few dozen"
                ),
            );
        }
    };
    let req: ScaleBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "bad JSON body ({e}); expected {{\"action\": \"scale_up\"|\"scale_down\", \"count\": N, \"reason\": \"...\"}}"
                ),
            );
        }
    };
    let action = match req.action.as_str() {
        "scale_up" => Action::ScaleUp,
        "scale_down" => Action::ScaleDown,
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("action `{other}` is not `scale_up` or `scale_down`"),
            );
        }
    };
    if !(1..=1000).contains(&req.count) {
        return error(StatusCode::BAD_REQUEST, "count must be from 1 to 1000");
    }
    let Some(slot) = api.ctx.manual_slot() else {
        return error(
            StatusCode::CONFLICT,
            "another scaling action is in flight; retry when it is recorded",
        );
    };
    // Only the lease holder acts; a standby would accept and then never run it.
    let holder = api.ctx.status.read().await.lease_holder.clone();
    if holder.as_deref() != Some(api.ctx.store.replica.as_str()) {
        return error(
            StatusCode::CONFLICT,
            format!(
                "this replica does not hold the lease (holder: {}); send the request to the holder",
                holder.unwrap_or_else(|| "unknown yet".into())
            ),
        );
    }
    let manual = ManualRequest {
        action,
        count: req.count,
        reason: if req.reason.is_empty() {
            "no reason given".into()
        } else {
            req.reason
        },
        node_group: req.node_group,
    };
    let (gi, from, to, clamp) = match cycle::plan_manual(&api.ctx, &manual).await {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let group = api.ctx.cfg.node_groups[gi].asg_name.clone();
    if to == from {
        return (
            StatusCode::OK,
            axum::Json(json!({"accepted": false, "node_group": group, "from": from, "to": to, "clamped": clamp, "reason": "already at the group's bound; nothing to do"})),
        )
            .into_response();
    }
    tracing::info!(action = action.as_str(), count = manual.count, reason = %manual.reason, "manual scaling accepted");
    let ctx = api.ctx.clone();
    tokio::spawn(async move {
        let _ = cycle::run_manual(&ctx, manual, gi, slot).await;
    });
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({
            "accepted": true,
            "action": action.as_str(),
            "node_group": group,
            "from": from,
            "to": to,
            "clamped": clamp,
            "dry_run": api.ctx.dry_run(),
        })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_comparison() {
        assert!(super::same(b"abc", b"abc"));
        assert!(!super::same(b"abc", b"abd"));
        assert!(!super::same(b"abc", b"abcd"));
    }
}
