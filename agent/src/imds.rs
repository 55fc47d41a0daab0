//! One IMDSv2 session: a token from `PUT /latest/api/token`, renewed before it expires (and at
//! once if IMDS answers 401), sent with every `GET`. The endpoint is
//! `AWS_EC2_METADATA_SERVICE_ENDPOINT`, else the real `http://169.254.169.254`. Never through a
//! proxy (IMDS refuses proxied token requests).

use crate::{Error, Result};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

pub const ENDPOINT_ENV: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT";
pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
/// AWS's longest token lifetime.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(21_600);
const ATTEMPTS: u32 = 3;

/// An IMDSv2 client holding one session token.
#[derive(Debug)]
pub struct Imds {
    endpoint: String,
    http: reqwest::Client,
    ttl: Duration,
    token: Mutex<Option<Token>>,
}

#[derive(Debug, Clone)]
struct Token {
    value: String,
    /// When to fetch a new one: before the real expiry, by a tenth of the lifetime.
    renew_at: Instant,
}

/// What the agent learns about its instance at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    pub instance_id: String,
    pub availability_zone: String,
    pub region: String,
    pub instance_type: String,
    /// `spot` or `on-demand`.
    pub capacity_type: String,
    /// `local-hostname`: the node name (what the kubelet would choose on EC2).
    pub hostname: String,
    /// From the instance tag `aws:autoscaling:groupName` (needs instance metadata tags); `None`
    /// if not exposed, then looked up with DescribeAutoScalingInstances.
    pub asg_name: Option<String>,
}

impl InstanceInfo {
    /// `aws:///<az>/<instance-id>`, what the controller and the cloud provider expect.
    pub fn provider_id(&self) -> String {
        format!("aws:///{}/{}", self.availability_zone, self.instance_id)
    }
}

impl Imds {
    /// The client for `AWS_EC2_METADATA_SERVICE_ENDPOINT` or the real address.
    pub fn from_env() -> Result<Self> {
        Self::new(
            &endpoint(std::env::var(ENDPOINT_ENV).ok()),
            DEFAULT_TOKEN_TTL,
        )
    }

    pub fn new(endpoint: &str, ttl: Duration) -> Result<Self> {
        let endpoint = endpoint.trim().trim_end_matches('/').to_string();
        if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
            return Err(Error::Imds {
                endpoint,
                message: format!("{ENDPOINT_ENV} must be an http:// URL"),
            });
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| Error::Imds {
                endpoint: endpoint.clone(),
                message: format!("cannot build an HTTP client: {e}"),
            })?;
        let ttl = ttl.clamp(Duration::from_secs(1), DEFAULT_TOKEN_TTL);
        Ok(Imds {
            endpoint,
            http,
            ttl,
            token: Mutex::new(None),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn error(&self, message: impl Into<String>) -> Error {
        Error::Imds {
            endpoint: self.endpoint.clone(),
            message: message.into(),
        }
    }

    /// The current token, fetching a new one if there is none or it is about to expire.
    async fn token(&self) -> Result<String> {
        let mut guard = self.token.lock().await;
        if let Some(token) = guard.as_ref()
            && Instant::now() < token.renew_at
        {
            return Ok(token.value.clone());
        }
        let response = self
            .http
            .put(format!("{}/latest/api/token", self.endpoint))
            .header(TTL_HEADER, self.ttl.as_secs().to_string())
            .send()
            .await
            .map_err(|e| self.error(format!("cannot get a session token: {}", describe(&e))))?;
        let status = response.status();
        if !status.is_success() {
            return Err(self.error(format!("token request answered {status}")));
        }
        let granted = response
            .headers()
            .get(TTL_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(self.ttl, Duration::from_secs);
        let value = response
            .text()
            .await
            .map_err(|e| self.error(format!("reading the session token: {e}")))?;
        let renew_at = Instant::now() + granted - granted / 10;
        tracing::debug!(ttl_s = granted.as_secs(), "IMDS session token obtained");
        *guard = Some(Token {
            value: value.clone(),
            renew_at,
        });
        Ok(value)
    }

    async fn forget_token(&self) {
        *self.token.lock().await = None;
    }

    /// `GET /latest/<path>`: `Ok(None)` on 404 (the document does not exist now), retried a few
    /// times on connection errors and 5xx.
    pub async fn get(&self, path: &str) -> Result<Option<String>> {
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
            match self.get_once(path).await {
                Ok(Some(answer)) => return Ok(answer),
                Ok(None) => {
                    // 401: the token expired or IMDS restarted; take a new one and retry.
                    self.forget_token().await;
                    last = format!("GET {path} answered 401 Unauthorized");
                }
                Err(message) => last = message,
            }
        }
        Err(self.error(last))
    }

    /// `Ok(Some(answer))`, `Ok(None)` for 401, `Err` for a transient failure.
    async fn get_once(&self, path: &str) -> std::result::Result<Option<Option<String>>, String> {
        let token = self.token().await.map_err(|e| match e {
            Error::Imds { message, .. } => message,
            other => other.to_string(),
        })?;
        let url = format!("{}/latest/{}", self.endpoint, path.trim_start_matches('/'));
        let response = self
            .http
            .get(&url)
            .header(TOKEN_HEADER, token)
            .send()
            .await
            .map_err(|e| format!("GET {path}: {}", describe(&e)))?;
        match response.status().as_u16() {
            200 => response
                .text()
                .await
                .map(|body| Some(Some(body)))
                .map_err(|e| format!("GET {path}: reading the answer: {e}")),
            404 => Ok(Some(None)),
            401 => Ok(None),
            status => Err(format!("GET {path} answered {status}")),
        }
    }

    /// `GET` that must exist.
    pub async fn require(&self, path: &str) -> Result<String> {
        self.get(path)
            .await?
            .map(|v| v.trim().to_string())
            .ok_or_else(|| self.error(format!("{path} does not exist (404)")))
    }

    /// Instance id, zone, region, type, capacity type, hostname and ASG name.
    pub async fn instance(&self) -> Result<InstanceInfo> {
        let instance_id = self.require("meta-data/instance-id").await?;
        let availability_zone = self
            .require("meta-data/placement/availability-zone")
            .await?;
        let region = match self.get("meta-data/placement/region").await? {
            Some(r) => r.trim().to_string(),
            // An AZ name is its region plus a letter.
            None => availability_zone[..availability_zone.len().saturating_sub(1)].to_string(),
        };
        let instance_type = self.require("meta-data/instance-type").await?;
        let capacity_type = match self.get("meta-data/instance-life-cycle").await? {
            Some(c) if c.trim() == "spot" => "spot",
            _ => "on-demand",
        }
        .to_string();
        let hostname = self.require("meta-data/local-hostname").await?;
        let asg_name = self
            .get("meta-data/tags/instance/aws:autoscaling:groupName")
            .await?
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        Ok(InstanceInfo {
            instance_id,
            availability_zone,
            region,
            instance_type,
            capacity_type,
            hostname,
            asg_name,
        })
    }
}

/// The endpoint for a value of `AWS_EC2_METADATA_SERVICE_ENDPOINT` (unset or empty: the real one).
fn endpoint(variable: Option<String>) -> String {
    variable
        .filter(|e| !e.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
}

/// A reqwest error with its cause (connection refused, timed out), which `Display` leaves out.
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_comes_from_the_standard_variable() {
        assert_eq!(endpoint(None), "http://169.254.169.254");
        assert_eq!(endpoint(Some(" ".into())), "http://169.254.169.254");
        let imds = Imds::new(
            &endpoint(Some("http://127.0.0.1:1234/".into())),
            DEFAULT_TOKEN_TTL,
        )
        .unwrap();
        assert_eq!(imds.endpoint(), "http://127.0.0.1:1234");
        assert!(Imds::new("169.254.169.254", DEFAULT_TOKEN_TTL).is_err());
    }
}
