//! The Lambda mode's Kubernetes identity: the controller's ServiceAccount token, which the K3s
//! server stores in Secrets Manager at boot (`SMARTSCALE_KUBERNETES_SECRET`, a secret id or
//! ARN), with the cluster CA and the API server's address. The RBAC is the daemon's
//! (userdata/manifests/smartscale.yaml). Nothing of it is in the function's environment or code
//! package, and nothing is written to disk: the client is built in memory per invocation, so a
//! re-published token is used at the next one.
//!
//! The secret's value is JSON: `{"server": "https://10.20.0.10:6443", "ca_crt": "<base64 PEM,
//! as in the token Secret's data.ca.crt>", "token": "<the ServiceAccount token>"}`.

use crate::config::KUBERNETES_SECRET_ENV;
use crate::{Error, Result};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Identity {
    server: String,
    ca_crt: String,
    token: String,
}

/// Reads the secret named by `SMARTSCALE_KUBERNETES_SECRET` in `env` and builds a client.
pub async fn client(
    secrets: &aws_sdk_secretsmanager::Client,
    env: &[(String, String)],
) -> Result<kube::Client> {
    let id = env
        .iter()
        .find(|(k, _)| k == KUBERNETES_SECRET_ENV)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            Error::Kubernetes(format!(
                "no identity: set {KUBERNETES_SECRET_ENV} to the Secrets Manager secret the K3s server stores the controller's ServiceAccount token in"
            ))
        })?;
    let value = secrets
        .get_secret_value()
        .secret_id(&id)
        .send()
        .await
        .map_err(|e| {
            Error::Kubernetes(format!(
                "reading the identity secret {id}: {}",
                aws_sdk_secretsmanager::error::DisplayErrorContext(e)
            ))
        })?
        .secret_string
        .ok_or_else(|| {
            Error::Kubernetes(format!(
                "the identity secret {id} has no value yet: the K3s server writes it once its API is up"
            ))
        })?;
    from_secret(&id, &value).await
}

/// A client for the identity in `value` (the secret's JSON). Errors never quote the token.
pub async fn from_secret(id: &str, value: &str) -> Result<kube::Client> {
    let ident: Identity = serde_json::from_str(value).map_err(|e| {
        Error::Kubernetes(format!(
            "the identity secret {id} is not {{\"server\", \"ca_crt\", \"token\"}} JSON (line {}, column {}: {})",
            e.line(),
            e.column(),
            match e.classify() {
                serde_json::error::Category::Data => "wrong or missing field",
                _ => "not JSON",
            }
        ))
    })?;
    if !ident.server.starts_with("https://") {
        return Err(Error::Kubernetes(format!(
            "the identity secret {id}: server `{}` must be an https:// URL",
            ident.server
        )));
    }
    let kubeconfig: kube::config::Kubeconfig = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "k3s", "cluster": {
            "server": ident.server,
            "certificate-authority-data": ident.ca_crt.trim(),
        }}],
        "users": [{"name": "smartscale-controller", "user": {"token": ident.token.trim()}}],
        "contexts": [{"name": "smartscale-controller", "context": {
            "cluster": "k3s", "user": "smartscale-controller",
        }}],
        "current-context": "smartscale-controller",
    }))
    .map_err(|e| Error::Kubernetes(format!("the identity secret {id}: {e}")))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|e| Error::Kubernetes(format!("the identity secret {id}: {e}")))?;
    kube::Client::try_from(config)
        .map_err(|e| Error::Kubernetes(format!("a client for the identity in {id}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_malformed_secret_is_refused_without_quoting_it() {
        let secret = r#"{"server": "https://10.0.0.1:6443", "token": "s3cr3t-token"}"#;
        let Err(e) = from_secret("id", secret).await else {
            panic!("no CA, no client")
        };
        let text = e.to_string();
        assert!(text.contains("wrong or missing field"), "{text}");
        assert!(!text.contains("s3cr3t"), "{text}");
        let Err(e) = from_secret("id", "s3cr3t-token").await else {
            panic!("not JSON")
        };
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
        let plain = r#"{"server": "http://10.0.0.1:6443", "ca_crt": "", "token": "t"}"#;
        let Err(e) = from_secret("id", plain).await else {
            panic!("plain HTTP")
        };
        assert!(e.to_string().contains("https://"), "{e}");
    }
}
