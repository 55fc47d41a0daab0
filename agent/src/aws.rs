//! AWS from the standard chain (env, profile, web identity, instance role via IMDS): the SDK
//! configuration, the settings in SSM Parameter Store, the join token in Secrets Manager, and
//! the instance's Auto Scaling group when IMDS does not expose instance tags.

use crate::config::Settings;
use crate::imds::InstanceInfo;
use crate::{Error, Result};
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_autoscaling::error::{ProvideErrorMetadata, SdkError};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The SDK configuration: region from the environment, else the instance's region from IMDS.
pub async fn sdk_config(instance: &InstanceInfo) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::standard().with_max_attempts(4))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(Duration::from_secs(10))
                .operation_timeout(Duration::from_secs(30))
                .build(),
        );
    let env_region = ["AWS_REGION", "AWS_DEFAULT_REGION"]
        .iter()
        .any(|k| std::env::var(k).is_ok_and(|v| !v.is_empty()));
    if !env_region {
        loader = loader.region(Region::new(instance.region.clone()));
    }
    loader.load().await
}

/// An SDK error in one line: `Code: message` for an AWS answer, else the cause chain
/// (dispatch failure: connection refused, timeout).
pub fn describe<E, R>(e: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    if let SdkError::ServiceError(service) = e {
        let err = service.err();
        return format!(
            "{}: {}",
            err.code().unwrap_or("error"),
            err.message().unwrap_or("(no message)")
        );
    }
    smartscale_common::error_chain(e)
}

/// Reads every String parameter directly under `path` and parses them into [`Settings`] for `run`
/// and `drain` ([`Settings::parse_for_running`]: what only `join` uses may be wrong).
pub async fn load_settings(sdk: &SdkConfig, path: &str) -> Result<Settings> {
    let params = settings_params(sdk, path).await?;
    report(path, Settings::parse_for_running(&params))
}

/// Every String parameter directly under `path`: name (relative to the path) → value.
pub async fn settings_params(sdk: &SdkConfig, path: &str) -> Result<BTreeMap<String, String>> {
    let client = aws_sdk_ssm::Client::new(sdk);
    let mut params = BTreeMap::new();
    let mut next: Option<String> = None;
    loop {
        let page = client
            .get_parameters_by_path()
            .path(path)
            .recursive(false)
            .with_decryption(true)
            .set_next_token(next.take())
            .send()
            .await
            .map_err(|e| Error::Ssm {
                path: path.to_string(),
                message: format!("GetParametersByPath failed: {}", describe(&e)),
            })?;
        for p in page.parameters() {
            let (Some(name), Some(value)) = (p.name(), p.value()) else {
                continue;
            };
            let short = name.rsplit('/').next().unwrap_or(name).to_string();
            params.insert(short, value.to_string());
        }
        match page.next_token() {
            Some(t) if !t.is_empty() => next = Some(t.to_string()),
            _ => break,
        }
    }
    if params.is_empty() {
        return Err(Error::Ssm {
            path: path.to_string(),
            message: "no parameters found; check ssm_path and the instance role's ssm:GetParametersByPath on it".into(),
        });
    }
    Ok(params)
}

/// [`Settings::parse`] (every setting checked, as `join` needs), its warnings logged, its
/// problems an [`Error::Settings`].
pub fn parse_settings(path: &str, params: &BTreeMap<String, String>) -> Result<Settings> {
    report(path, Settings::parse(params))
}

fn report(
    path: &str,
    parsed: std::result::Result<(Settings, Vec<String>), Vec<String>>,
) -> Result<Settings> {
    match parsed {
        Ok((settings, warnings)) => {
            for w in warnings {
                tracing::warn!(path, "{w}");
            }
            Ok(settings)
        }
        Err(problems) => Err(Error::Settings {
            path: path.to_string(),
            problems,
        }),
    }
}

/// Text that must not leak: the K3s join token, and the k3s config holding it. Its `Debug`
/// shows no content, it has no `Display`, and it is wiped (best effort) when dropped.
pub struct Secret(String);

impl Secret {
    pub fn new(text: String) -> Self {
        Secret(text)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // SAFETY: zero bytes are valid UTF-8; volatile so the write is not optimised away.
        unsafe {
            for b in self.0.as_bytes_mut() {
                std::ptr::write_volatile(b, 0);
            }
        }
    }
}

/// Waits between `GetSecretValue` calls while the secret does not exist yet: doubling to this.
const SECRET_RETRY_MAX: Duration = Duration::from_secs(10);

/// `GetSecretValue(secret_id)`: the SecretString, trimmed, which must be a K3s token in the
/// secure format (`K10<CA hash>::<credentials>`: k3s then checks the server's CA against it). A
/// secret that does not exist yet (a new cluster's server publishes it once K3s runs) is asked
/// for again, with backoff, until `deadline`. The token is never part of an error or a log line.
pub async fn join_token(sdk: &SdkConfig, secret_id: &str, deadline: Instant) -> Result<Secret> {
    let client = aws_sdk_secretsmanager::Client::new(sdk);
    let fail = |message: String| Error::Secret {
        id: secret_id.to_string(),
        message,
    };
    let mut wait = Duration::from_secs(1);
    let mut tries = 0u32;
    let out = loop {
        tries += 1;
        match client.get_secret_value().secret_id(secret_id).send().await {
            Ok(out) => break out,
            Err(e) => {
                let missing = matches!(&e, SdkError::ServiceError(s) if s.err().is_resource_not_found_exception());
                let now = Instant::now();
                if !missing || now >= deadline {
                    let after = if missing && tries > 1 {
                        format!(" (still missing after {tries} tries, until join_timeout)")
                    } else {
                        String::new()
                    };
                    return Err(fail(format!(
                        "GetSecretValue failed: {}{after}",
                        describe(&e)
                    )));
                }
                let pause = wait.min(deadline - now);
                if tries == 1 {
                    tracing::warn!(
                        secret = secret_id,
                        "the join token's secret does not exist yet (the server publishes it once K3s runs); asking again until join_timeout"
                    );
                } else {
                    tracing::debug!(
                        secret = secret_id,
                        tries,
                        "the join token's secret still does not exist"
                    );
                }
                tokio::time::sleep(pause).await;
                wait = (wait * 2).min(SECRET_RETRY_MAX);
            }
        }
    };
    let token = out
        .secret_string()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| fail("has no SecretString (the token must be stored as text)".into()))?;
    if token.contains(['\n', '\r']) {
        return Err(fail(
            "holds more than one line; store the bare K3s token".into(),
        ));
    }
    if !is_secure_token(token) {
        return Err(fail(
            "does not hold a K3s token in the secure format `K10<CA hash>::<credentials>` (the value is not shown); store the agent token the K3s server publishes, which lets k3s check the server's CA".into(),
        ));
    }
    Ok(Secret(token.to_string()))
}

/// A K3s token in the secure format: `K10`, the CA hash, `::`, the credentials (`user:password`).
fn is_secure_token(token: &str) -> bool {
    token
        .strip_prefix("K10")
        .and_then(|rest| rest.split_once("::"))
        .is_some_and(|(hash, credentials)| {
            !hash.is_empty()
                && hash.chars().all(|c| c.is_ascii_alphanumeric())
                && !credentials.is_empty()
                && !credentials.chars().any(char::is_whitespace)
        })
}

/// The instance's Auto Scaling group: from IMDS tags, else `DescribeAutoScalingInstances`.
/// `None` if the instance is in no group.
pub async fn asg_name(sdk: &SdkConfig, instance: &InstanceInfo) -> Result<Option<String>> {
    if let Some(name) = &instance.asg_name {
        return Ok(Some(name.clone()));
    }
    let client = aws_sdk_autoscaling::Client::new(sdk);
    let out = client
        .describe_auto_scaling_instances()
        .instance_ids(&instance.instance_id)
        .send()
        .await
        .map_err(|e| Error::AutoScaling {
            action: "DescribeAutoScalingInstances",
            message: describe(&e),
        })?;
    Ok(out
        .auto_scaling_instances()
        .first()
        .and_then(|i| i.auto_scaling_group_name())
        .map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_secure_k3s_tokens_are_accepted() {
        for ok in [
            "K10c0ffee0123456789abcdef::server:9f8e7d6c5b4a39281706",
            "K10e2e::node:agent-token-0123456789",
            "K10wrong::server:0000",
        ] {
            assert!(is_secure_token(ok), "{ok}");
        }
        for bad in [
            "",
            "s3cr3t",
            "K10",
            "K10::server:x",
            "K10abc::",
            "K10abc:server:x",
            "K20abc::server:x",
            "K10ab c::server:x",
            "K10abc::server: x",
        ] {
            assert!(!is_secure_token(bad), "{bad}");
        }
    }
}
