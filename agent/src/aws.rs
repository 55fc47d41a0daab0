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
use std::time::Duration;

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

/// Reads every String parameter directly under `path` and parses them into [`Settings`].
pub async fn load_settings(sdk: &SdkConfig, path: &str) -> Result<Settings> {
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
    match Settings::parse(&params) {
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

/// `GetSecretValue(secret_id)`: the SecretString, trimmed.
pub async fn join_token(sdk: &SdkConfig, secret_id: &str) -> Result<Secret> {
    let client = aws_sdk_secretsmanager::Client::new(sdk);
    let out = client
        .get_secret_value()
        .secret_id(secret_id)
        .send()
        .await
        .map_err(|e| Error::Secret {
            id: secret_id.to_string(),
            message: format!("GetSecretValue failed: {}", describe(&e)),
        })?;
    let token = out
        .secret_string()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Error::Secret {
            id: secret_id.to_string(),
            message: "has no SecretString (the token must be stored as text)".into(),
        })?;
    if token.contains(['\n', '\r']) {
        return Err(Error::Secret {
            id: secret_id.to_string(),
            message: "holds more than one line; store the bare K3s token".into(),
        });
    }
    Ok(Secret(token.to_string()))
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
