//! A fake IMDSv2 per emulated instance, and a fleet that starts one per instance of the AWS model.
//!
//! The agent finds its IMDS through the standard `AWS_EC2_METADATA_SERVICE_ENDPOINT`, so each
//! [`FakeImds`] is a plain HTTP server on 127.0.0.1 that answers like the real one with
//! `HttpTokens=required`: a session token from `PUT /latest/api/token`, 401 on every GET without
//! a valid one. `autoscaling/target-lifecycle-state` is read live from the AWS model, so the
//! agent sees `Terminated` as soon as the ASG puts its instance in `Terminating:Wait`. Tests
//! inject spot interruptions and rebalance recommendations, and take the service down.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jiff::Timestamp;
use rand::Rng;
use rand::distr::Alphanumeric;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::aws::{ModelClient, ModelInstance};
use crate::{Error, Result};

/// The header that carries a session token on every metadata request.
pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
/// The header that asks for (and echoes) a token's lifetime.
pub const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
/// AWS's bounds for a token's lifetime.
pub const MAX_TOKEN_TTL_SECONDS: u64 = 21_600;
/// How many requests [`FakeImds::requests`] keeps (the oldest tenth goes first).
const MAX_LOGGED_REQUESTS: usize = 10_000;
/// How often the fleet asks the model for new instances.
const FLEET_POLL: Duration = Duration::from_millis(250);

/// What one instance's IMDS reports about it.
#[derive(Debug, Clone, PartialEq)]
pub struct ImdsInstance {
    pub instance_id: String,
    pub region: String,
    pub availability_zone: String,
    pub instance_type: String,
    /// `spot` or `on-demand` (`instance-life-cycle`).
    pub life_cycle: String,
    /// The Auto Scaling group, if any (`tags/instance/aws:autoscaling:groupName`, and whether
    /// `autoscaling/target-lifecycle-state` exists at all).
    pub asg_name: Option<String>,
    pub ami_id: String,
    pub account_id: String,
}

impl ImdsInstance {
    /// A stand-alone instance (no ASG) with plausible values, for tests that need no model.
    pub fn example(instance_id: &str) -> Self {
        ImdsInstance {
            instance_id: instance_id.to_string(),
            region: "us-east-1".to_string(),
            availability_zone: "us-east-1a".to_string(),
            instance_type: "t3.medium".to_string(),
            life_cycle: "on-demand".to_string(),
            asg_name: None,
            ami_id: "ami-12c6146b".to_string(),
            account_id: "123456789012".to_string(),
        }
    }

    /// What the model says about one of its instances.
    pub fn from_model(instance: &ModelInstance) -> Self {
        let region = instance.region.clone().unwrap_or_else(|| {
            // An AZ name is its region plus one letter.
            let az = &instance.availability_zone;
            az.strip_suffix(|c: char| c.is_ascii_lowercase())
                .unwrap_or(az)
                .to_string()
        });
        ImdsInstance {
            instance_id: instance.instance_id.clone(),
            region,
            availability_zone: instance.availability_zone.clone(),
            instance_type: instance.instance_type.clone(),
            life_cycle: instance.market.clone(),
            asg_name: instance.asg_name.clone(),
            ami_id: "ami-12c6146b".to_string(),
            account_id: "123456789012".to_string(),
        }
    }
}

/// How a [`FakeImds`] is started.
#[derive(Debug, Clone)]
pub struct ImdsOptions {
    pub instance: ImdsInstance,
    /// Where `autoscaling/target-lifecycle-state` is read from. Without a model it is whatever
    /// [`FakeImds::set_target_lifecycle_state`] set (`InService` at first).
    pub model: Option<ModelClient>,
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
}

impl ImdsOptions {
    pub fn new(instance: ImdsInstance) -> Self {
        ImdsOptions {
            instance,
            model: None,
            port: 0,
        }
    }

    pub fn with_model(mut self, model: ModelClient) -> Self {
        self.model = Some(model);
        self
    }
}

/// Whether the service answers: real IMDS outages look like refused connections or 503s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Up,
    /// Nothing listens on the port: connections are refused.
    Refused,
    /// Every request gets 503 Service Unavailable.
    Unavailable,
}

/// The mutable part of one instance's metadata.
#[derive(Debug, Default)]
struct Injected {
    /// Token → expiry on the IMDS clock.
    tokens: HashMap<String, Instant>,
    /// Added to `Instant::now()` so tests can expire tokens without waiting.
    clock_offset: Duration,
    spot_action: Option<(String, Timestamp)>,
    rebalance: Option<Timestamp>,
    target_lifecycle_state: Option<String>,
    requests: Vec<(String, String, u16)>,
}

#[derive(Debug)]
struct ImdsState {
    instance: ImdsInstance,
    model: Option<ModelClient>,
    unavailable: AtomicBool,
    injected: Mutex<Injected>,
}

impl ImdsState {
    fn injected(&self) -> MutexGuard<'_, Injected> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.injected
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn now(&self) -> Instant {
        Instant::now() + self.injected().clock_offset
    }
}

/// A serving task and the switch that stops it.
#[derive(Debug)]
struct Serving {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// One instance's IMDSv2 on 127.0.0.1. Stops serving when dropped.
#[derive(Debug)]
pub struct FakeImds {
    state: Arc<ImdsState>,
    address: SocketAddr,
    serving: Mutex<Option<Serving>>,
}

impl FakeImds {
    /// Bind 127.0.0.1 (`opts.port`, 0 = any free port) and serve. Needs a Tokio runtime.
    pub async fn start(opts: ImdsOptions) -> Result<Self> {
        let listener = bind(opts.port).await?;
        let address = listener
            .local_addr()
            .map_err(|e| Error::io("reading the fake IMDS address", e))?;
        let state = Arc::new(ImdsState {
            instance: opts.instance,
            model: opts.model,
            unavailable: AtomicBool::new(false),
            injected: Mutex::new(Injected::default()),
        });
        let serving = serve(listener, state.clone());
        tracing::debug!(%address, instance = %state.instance.instance_id, "fake IMDS listening");
        Ok(FakeImds {
            state,
            address,
            serving: Mutex::new(Some(serving)),
        })
    }

    /// The fake IMDS for one of the model's instances, reading its lifecycle state from the model.
    pub async fn for_model_instance(model: &ModelClient, instance_id: &str) -> Result<Self> {
        let instance = model.instance(instance_id).await?.ok_or_else(|| {
            Error::Invalid(format!("the AWS model knows no instance {instance_id}"))
        })?;
        Self::start(ImdsOptions::new(ImdsInstance::from_model(&instance)).with_model(model.clone()))
            .await
    }

    /// `http://127.0.0.1:PORT/`: the value for `AWS_EC2_METADATA_SERVICE_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}/", self.address)
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn instance(&self) -> &ImdsInstance {
        &self.state.instance
    }

    /// Make `spot/instance-action` answer `{"action": action, "time": time}` (AWS's two-minute
    /// warning; `action` is `terminate`, `stop` or `hibernate`).
    pub fn inject_spot_instance_action(&self, action: &str, time: Timestamp) {
        self.state.injected().spot_action = Some((action.to_string(), time));
    }

    /// Make `spot/instance-action` 404 again.
    pub fn clear_spot_instance_action(&self) {
        self.state.injected().spot_action = None;
    }

    /// Make `events/recommendations/rebalance` answer `{"noticeTime": notice_time}`.
    pub fn inject_rebalance_recommendation(&self, notice_time: Timestamp) {
        self.state.injected().rebalance = Some(notice_time);
    }

    /// Make `events/recommendations/rebalance` 404 again.
    pub fn clear_rebalance_recommendation(&self) {
        self.state.injected().rebalance = None;
    }

    /// Override `autoscaling/target-lifecycle-state` (`None`: follow the model again, or
    /// `InService` without one).
    pub fn set_target_lifecycle_state(&self, state: Option<&str>) {
        self.state.injected().target_lifecycle_state = state.map(str::to_string);
    }

    /// Move the IMDS clock forward, so tokens expire without waiting for their TTL.
    pub fn advance_clock(&self, by: Duration) {
        self.state.injected().clock_offset += by;
    }

    /// Requests so far (the last 10,000 at most): method, path, status answered.
    pub fn requests(&self) -> Vec<(String, String, u16)> {
        self.state.injected().requests.clone()
    }

    pub fn availability(&self) -> Availability {
        if self.lock_serving().is_none() {
            Availability::Refused
        } else if self.state.unavailable.load(Ordering::SeqCst) {
            Availability::Unavailable
        } else {
            Availability::Up
        }
    }

    /// Take the service down (refused connections or 503s) or bring it back on the same port.
    pub async fn set_availability(&self, availability: Availability) -> Result<()> {
        self.state
            .unavailable
            .store(availability == Availability::Unavailable, Ordering::SeqCst);
        let running = self.lock_serving().is_some();
        match (availability, running) {
            (Availability::Refused, true) => {
                let serving = self.lock_serving().take();
                if let Some(serving) = serving {
                    stop_serving(serving).await;
                }
            }
            (Availability::Up | Availability::Unavailable, false) => {
                let listener = bind(self.address.port()).await?;
                let serving = serve(listener, self.state.clone());
                *self.lock_serving() = Some(serving);
            }
            _ => {}
        }
        tracing::debug!(instance = %self.state.instance.instance_id, ?availability, "fake IMDS availability changed");
        Ok(())
    }

    /// Stop serving and wait (briefly) for open connections to close.
    pub async fn shutdown(self) {
        let serving = self.lock_serving().take();
        if let Some(serving) = serving {
            stop_serving(serving).await;
        }
    }

    fn lock_serving(&self) -> MutexGuard<'_, Option<Serving>> {
        self.serving
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for FakeImds {
    fn drop(&mut self) {
        if let Some(serving) = self.lock_serving().take() {
            let _ = serving.stop.send(true);
            serving.task.abort();
        }
    }
}

async fn bind(port: u16) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                Error::PortInUse(port)
            } else {
                Error::io(format!("binding a fake IMDS to 127.0.0.1:{port}"), e)
            }
        })
}

fn serve(listener: tokio::net::TcpListener, state: Arc<ImdsState>) -> Serving {
    let (stop, mut stopped) = watch::channel(false);
    let router = axum::Router::new().fallback(handle).with_state(state);
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "fake IMDS stopped with an error");
        }
    });
    Serving { stop, task }
}

async fn stop_serving(serving: Serving) {
    let _ = serving.stop.send(true);
    let mut task = serving.task;
    if tokio::time::timeout(Duration::from_secs(2), &mut task)
        .await
        .is_err()
    {
        task.abort();
    }
}

/// One request, answered as IMDSv2 with `HttpTokens=required` would.
async fn handle(
    State(state): State<Arc<ImdsState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let path = uri.path().to_string();
    let response = answer(&state, &method, &path, &headers).await;
    let status = response.status().as_u16();
    let mut injected = state.injected();
    // Bounded, for an agent polling a long-running `up` for days.
    if injected.requests.len() >= MAX_LOGGED_REQUESTS {
        injected.requests.drain(..MAX_LOGGED_REQUESTS / 10);
    }
    injected.requests.push((method.to_string(), path, status));
    drop(injected);
    response
}

async fn answer(state: &ImdsState, method: &Method, path: &str, headers: &HeaderMap) -> Response {
    if state.unavailable.load(Ordering::SeqCst) {
        return status_only(StatusCode::SERVICE_UNAVAILABLE);
    }
    if path == "/latest/api/token" {
        return if method == Method::PUT {
            issue_token(state, headers)
        } else {
            status_only(StatusCode::METHOD_NOT_ALLOWED)
        };
    }
    if method != Method::GET && method != Method::HEAD {
        return status_only(StatusCode::METHOD_NOT_ALLOWED);
    }
    if !token_valid(state, headers) {
        return status_only(StatusCode::UNAUTHORIZED);
    }
    let Some(rest) = path.strip_prefix("/latest/") else {
        return match path {
            "/" | "" => text("latest".to_string()),
            _ => status_only(StatusCode::NOT_FOUND),
        };
    };
    match lookup(state, rest).await {
        Ok(Some(body)) => text(body),
        Ok(None) => status_only(StatusCode::NOT_FOUND),
        Err(e) => {
            tracing::warn!(error = %e, "fake IMDS could not read the AWS model");
            status_only(StatusCode::SERVICE_UNAVAILABLE)
        }
    }
}

fn issue_token(state: &ImdsState, headers: &HeaderMap) -> Response {
    // IMDS refuses token requests that went through a proxy.
    if headers.contains_key("x-forwarded-for") {
        return status_only(StatusCode::FORBIDDEN);
    }
    let ttl = headers
        .get(TTL_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .filter(|ttl| (1..=MAX_TOKEN_TTL_SECONDS).contains(ttl));
    let Some(ttl) = ttl else {
        return status_only(StatusCode::BAD_REQUEST);
    };
    let random: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(51)
        .map(char::from)
        .collect();
    let token = format!("AQAEA{random}==");
    let expires = state.now() + Duration::from_secs(ttl);
    {
        let mut injected = state.injected();
        let now = Instant::now() + injected.clock_offset;
        injected.tokens.retain(|_, expiry| *expiry > now);
        injected.tokens.insert(token.clone(), expires);
    }
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/plain")
        .header(TTL_HEADER, ttl.to_string())
        .body(Body::from(token))
        .unwrap_or_else(|_| status_only(StatusCode::INTERNAL_SERVER_ERROR))
}

fn token_valid(state: &ImdsState, headers: &HeaderMap) -> bool {
    let Some(token) = headers
        .get(TOKEN_HEADER)
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    let injected = state.injected();
    let now = Instant::now() + injected.clock_offset;
    injected
        .tokens
        .get(token)
        .is_some_and(|expiry| *expiry > now)
}

/// The document at `path` (below `/latest/`): `Ok(None)` is a 404.
async fn lookup(state: &ImdsState, path: &str) -> Result<Option<String>> {
    let instance = &state.instance;
    let (spot, rebalance, pinned_target) = {
        let injected = state.injected();
        (
            injected.spot_action.clone(),
            injected.rebalance,
            injected.target_lifecycle_state.clone(),
        )
    };
    let iso = |t: Timestamp| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let private_ip = private_ip(instance);
    let hostname = local_hostname(instance);

    let mut listing: Vec<&str> = Vec::new();
    let body = match path.trim_end_matches('/') {
        "" => Some("dynamic\nmeta-data".to_string()),
        "meta-data" => {
            listing.extend(["ami-id"]);
            if instance.asg_name.is_some() {
                listing.push("autoscaling/");
            }
            listing.extend([
                "events/",
                "hostname",
                "instance-id",
                "instance-life-cycle",
                "instance-type",
                "local-hostname",
                "local-ipv4",
                "placement/",
            ]);
            if spot.is_some() {
                listing.push("spot/");
            }
            if instance.asg_name.is_some() {
                listing.push("tags/");
            }
            Some(listing.join("\n"))
        }
        "meta-data/ami-id" => Some(instance.ami_id.clone()),
        "meta-data/instance-id" => Some(instance.instance_id.clone()),
        "meta-data/instance-type" => Some(instance.instance_type.clone()),
        "meta-data/instance-life-cycle" => Some(instance.life_cycle.clone()),
        "meta-data/hostname" | "meta-data/local-hostname" => Some(hostname),
        "meta-data/local-ipv4" => Some(private_ip),
        "meta-data/placement" => Some("availability-zone\nregion".to_string()),
        "meta-data/placement/availability-zone" => Some(instance.availability_zone.clone()),
        "meta-data/placement/region" => Some(instance.region.clone()),
        "meta-data/autoscaling" if instance.asg_name.is_some() => {
            Some("target-lifecycle-state".to_string())
        }
        "meta-data/autoscaling/target-lifecycle-state" if instance.asg_name.is_some() => {
            match (pinned_target, &state.model) {
                (Some(pinned), _) => Some(pinned),
                (None, Some(model)) => model
                    .instance(&instance.instance_id)
                    .await?
                    .map(|found| found.target_lifecycle_state),
                (None, None) => Some("InService".to_string()),
            }
        }
        "meta-data/tags" if instance.asg_name.is_some() => Some("instance/".to_string()),
        "meta-data/tags/instance" if instance.asg_name.is_some() => {
            Some("aws:autoscaling:groupName".to_string())
        }
        "meta-data/tags/instance/aws:autoscaling:groupName" => instance.asg_name.clone(),
        "meta-data/events" => Some("recommendations/".to_string()),
        "meta-data/events/recommendations" => {
            Some(if rebalance.is_some() { "rebalance" } else { "" }.to_string())
        }
        "meta-data/events/recommendations/rebalance" => {
            rebalance.map(|notice| json!({ "noticeTime": iso(notice) }).to_string())
        }
        "meta-data/spot" if spot.is_some() => Some("instance-action\ntermination-time".to_string()),
        "meta-data/spot/instance-action" => {
            spot.map(|(action, time)| json!({ "action": action, "time": iso(time) }).to_string())
        }
        "meta-data/spot/termination-time" => spot
            .filter(|(action, _)| action == "terminate")
            .map(|(_, time)| iso(time)),
        "dynamic" => Some("instance-identity/".to_string()),
        "dynamic/instance-identity" => Some("document".to_string()),
        "dynamic/instance-identity/document" => Some(
            serde_json::to_string_pretty(&json!({
                "accountId": instance.account_id,
                "architecture": "x86_64",
                "availabilityZone": instance.availability_zone,
                "imageId": instance.ami_id,
                "instanceId": instance.instance_id,
                "instanceType": instance.instance_type,
                "pendingTime": "2026-01-01T00:00:00Z",
                "privateIp": private_ip,
                "region": instance.region,
                "version": "2017-09-30",
            }))
            .unwrap_or_default(),
        ),
        _ => None,
    };
    Ok(body)
}

/// A stable private address derived from the instance id (moto assigns none we can see here).
/// The instance's private IPv4 address (`local-ipv4`): derived from its id, stable.
pub fn private_ip(instance: &ImdsInstance) -> String {
    let hash = instance.instance_id.bytes().fold(0u32, |hash, byte| {
        hash.wrapping_mul(31).wrapping_add(u32::from(byte))
    });
    format!("10.0.{}.{}", (hash >> 8) % 250, hash % 250 + 4)
}

/// The instance's private DNS name (`local-hostname`), what K3s takes as the node name. AWS's
/// names: `ip-a-b-c-d.ec2.internal` in us-east-1, `….<region>.compute.internal` elsewhere (Amazon
/// VPC User Guide, "DNS attributes for your VPC").
pub fn local_hostname(instance: &ImdsInstance) -> String {
    let dashed = private_ip(instance).replace('.', "-");
    match instance.region.as_str() {
        "us-east-1" => format!("ip-{dashed}.ec2.internal"),
        region => format!("ip-{dashed}.{region}.compute.internal"),
    }
}

fn text(body: String) -> Response {
    ([("content-type", "text/plain")], body).into_response()
}

fn status_only(status: StatusCode) -> Response {
    match error_page(status) {
        Some(page) => (
            status,
            [("content-type", "text/plain; charset=utf-8")],
            page,
        )
            .into_response(),
        None => status.into_response(),
    }
}

/// The pages IMDS sends with a 400, 401 or 404, as amazon-ec2-metadata-mock reproduces them
/// (byte for byte, with its trailing newline; the parity test compares them).
fn error_page(status: StatusCode) -> Option<&'static str> {
    match status {
        StatusCode::NOT_FOUND => Some(concat!(
            "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n",
            "<!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Transitional//EN\"\n",
            "\t\"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd\">\n",
            "<html xmlns=\"http://www.w3.org/1999/xhtml\" xml:lang=\"en\" lang=\"en\">\n",
            " <head>\n  <title>404 - Not Found</title>\n </head>\n",
            " <body>\n  <h1>404 - Not Found</h1>\n </body>\n</html>\n",
        )),
        StatusCode::UNAUTHORIZED => Some(concat!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n",
            "<!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Transitional//EN\" ",
            "\"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd\">\n",
            "<html xmlns=\"http://www.w3.org/1999/xhtml\" xml:lang=\"en\" lang=\"en\">\n",
            "   <head>\n      <title>401 - Unauthorized</title>\n   </head>\n",
            "   <body>\n      <h1>401 - Unauthorized</h1>\n   </body>\n</html>\n",
        )),
        StatusCode::BAD_REQUEST => Some(concat!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n",
            "<!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Transitional//EN\" ",
            "\"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd\">\n",
            "<html xmlns=\"http://www.w3.org/1999/xhtml\" xml:lang=\"en\" lang=\"en\">\n",
            "   <head>\n      <title>400 - Bad Request</title>\n   </head>\n",
            "   <body>\n      <h1>400 - Bad Request</h1>\n   </body>\n</html>\n",
        )),
        _ => None,
    }
}

/// One fake IMDS per instance of the AWS model, started as instances appear, and a directory
/// server listing them (`GET /instances` → `{instance_id: endpoint}`), for `up` and for tests
/// that run the agent against the whole world.
#[derive(Debug)]
pub struct ImdsFleet {
    inner: Arc<FleetInner>,
    address: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

#[derive(Debug)]
struct FleetInner {
    model: ModelClient,
    servers: tokio::sync::Mutex<BTreeMap<String, Arc<FakeImds>>>,
}

impl ImdsFleet {
    /// Serve the directory on 127.0.0.1:`directory_port` (0: any) and start following the model.
    pub async fn start(model: ModelClient, directory_port: u16) -> Result<Self> {
        let listener = bind(directory_port).await?;
        let address = listener
            .local_addr()
            .map_err(|e| Error::io("reading the IMDS directory address", e))?;
        let inner = Arc::new(FleetInner {
            model,
            servers: tokio::sync::Mutex::new(BTreeMap::new()),
        });
        let (stop, stopped) = watch::channel(false);
        let router = axum::Router::new()
            .route("/instances", get(directory))
            .route("/instances/{id}/spot-instance-action", post(inject_spot))
            .route("/instances/{id}/rebalance", post(inject_rebalance))
            .route("/instances/{id}/availability", post(change_availability))
            .with_state(inner.clone());
        let mut until_stopped = stopped.clone();
        let server = tokio::spawn(async move {
            let shutdown = async move {
                let _ = until_stopped.wait_for(|stop| *stop).await;
            };
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "IMDS directory stopped with an error");
            }
        });
        let follower = tokio::spawn(follow_model(inner.clone(), stopped));
        tracing::info!(%address, "IMDS directory listening");
        Ok(ImdsFleet {
            inner,
            address,
            stop,
            tasks: vec![server, follower],
        })
    }

    /// `http://127.0.0.1:PORT/instances`: the JSON map from instance id to IMDS endpoint.
    pub fn directory_url(&self) -> String {
        format!("http://{}/instances", self.address)
    }

    /// Start IMDS servers for instances the model has and the fleet lacks, now.
    pub async fn sync(&self) -> Result<()> {
        sync_once(&self.inner).await
    }

    /// The IMDS endpoint of one instance, if it has one yet.
    pub async fn endpoint(&self, instance_id: &str) -> Option<String> {
        self.inner
            .servers
            .lock()
            .await
            .get(instance_id)
            .map(|imds| imds.endpoint())
    }

    /// One instance's IMDS, to inject events into it.
    pub async fn imds(&self, instance_id: &str) -> Option<Arc<FakeImds>> {
        self.inner.servers.lock().await.get(instance_id).cloned()
    }

    /// Every instance id → IMDS endpoint.
    pub async fn endpoints(&self) -> BTreeMap<String, String> {
        endpoints(&self.inner).await
    }

    /// Stop the directory, the follower and every IMDS.
    pub async fn shutdown(mut self) {
        self.stop_tasks();
        let servers = std::mem::take(&mut *self.inner.servers.lock().await);
        for (_, imds) in servers {
            if let Ok(imds) = Arc::try_unwrap(imds) {
                imds.shutdown().await;
            }
        }
    }

    fn stop_tasks(&mut self) {
        let _ = self.stop.send(true);
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

impl Drop for ImdsFleet {
    fn drop(&mut self) {
        self.stop_tasks();
    }
}

async fn endpoints(inner: &FleetInner) -> BTreeMap<String, String> {
    inner
        .servers
        .lock()
        .await
        .iter()
        .map(|(id, imds)| (id.clone(), imds.endpoint()))
        .collect()
}

async fn follow_model(inner: Arc<FleetInner>, mut stopped: watch::Receiver<bool>) {
    loop {
        if let Err(e) = sync_once(&inner).await {
            tracing::debug!(error = %e, "IMDS fleet could not list the model's instances");
        }
        tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => return,
            () = tokio::time::sleep(FLEET_POLL) => {}
        }
    }
}

async fn sync_once(inner: &FleetInner) -> Result<()> {
    let instances = inner.model.instances().await?;
    let mut servers = inner.servers.lock().await;
    for instance in instances {
        // An instance already gone when first seen never runs an agent: no IMDS for it.
        if servers.contains_key(&instance.instance_id) || instance.ec2_state == "terminated" {
            continue;
        }
        let options =
            ImdsOptions::new(ImdsInstance::from_model(&instance)).with_model(inner.model.clone());
        let imds = FakeImds::start(options).await?;
        tracing::info!(instance = %instance.instance_id, endpoint = %imds.endpoint(), "fake IMDS started");
        servers.insert(instance.instance_id, Arc::new(imds));
    }
    Ok(())
}

async fn directory(State(inner): State<Arc<FleetInner>>) -> Response {
    axum::Json(endpoints(&inner).await).into_response()
}

/// Body of `POST /instances/{id}/spot-instance-action`; both fields optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpotBody {
    action: Option<String>,
    time: Option<Timestamp>,
}

/// Body of `POST /instances/{id}/rebalance`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RebalanceBody {
    notice_time: Option<Timestamp>,
}

/// Body of `POST /instances/{id}/availability`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AvailabilityBody {
    state: String,
}

/// An error answer of the directory's control endpoints.
type Refusal = (StatusCode, String);

fn parse_body<T: serde::de::DeserializeOwned + Default>(
    body: &str,
) -> std::result::Result<T, Refusal> {
    if body.trim().is_empty() {
        return Ok(T::default());
    }
    serde_json::from_str(body)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("bad JSON body: {e}\n")))
}

async fn find(inner: &FleetInner, id: &str) -> std::result::Result<Arc<FakeImds>, Refusal> {
    inner.servers.lock().await.get(id).cloned().ok_or_else(|| {
        (
            StatusCode::NOT_FOUND,
            format!("no IMDS for instance {id}\n"),
        )
    })
}

fn reply(result: std::result::Result<(), Refusal>) -> Response {
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

async fn inject_spot(
    State(inner): State<Arc<FleetInner>>,
    UrlPath(id): UrlPath<String>,
    body: String,
) -> Response {
    reply(
        async {
            let imds = find(&inner, &id).await?;
            let body: SpotBody = parse_body(&body)?;
            let action = body.action.unwrap_or_else(|| "terminate".to_string());
            if !["terminate", "stop", "hibernate"].contains(&action.as_str()) {
                return Err((
                    StatusCode::BAD_REQUEST,
                    "action must be terminate, stop or hibernate\n".to_string(),
                ));
            }
            // AWS gives two minutes' notice.
            let time = body
                .time
                .unwrap_or_else(|| Timestamp::now() + jiff::SignedDuration::from_secs(120));
            imds.inject_spot_instance_action(&action, time);
            Ok(())
        }
        .await,
    )
}

async fn inject_rebalance(
    State(inner): State<Arc<FleetInner>>,
    UrlPath(id): UrlPath<String>,
    body: String,
) -> Response {
    reply(
        async {
            let imds = find(&inner, &id).await?;
            let body: RebalanceBody = parse_body(&body)?;
            imds.inject_rebalance_recommendation(body.notice_time.unwrap_or_else(Timestamp::now));
            Ok(())
        }
        .await,
    )
}

async fn change_availability(
    State(inner): State<Arc<FleetInner>>,
    UrlPath(id): UrlPath<String>,
    body: String,
) -> Response {
    reply(
        async {
            let imds = find(&inner, &id).await?;
            let body: AvailabilityBody = serde_json::from_str(&body).map_err(|e| {
                let hint = r#"body must be {"state": "up"|"refused"|"unavailable"}"#;
                (StatusCode::BAD_REQUEST, format!("{hint}: {e}\n"))
            })?;
            let availability = match body.state.as_str() {
                "up" => Availability::Up,
                "refused" => Availability::Refused,
                "unavailable" => Availability::Unavailable,
                _ => {
                    return Err((
                        StatusCode::BAD_REQUEST,
                        "state must be up, refused or unavailable\n".to_string(),
                    ));
                }
            };
            imds.set_availability(availability)
                .await
                .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")))
        }
        .await,
    )
}
