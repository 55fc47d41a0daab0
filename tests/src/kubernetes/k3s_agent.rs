//! The fake `k3s agent` (`smartscale-testworld k3s-agent`), run by the SmartScale agent as its
//! k3s start command in the test world. It does what k3s does with the files the agent wrote:
//! reads `/etc/rancher/k3s/config.yaml` (refusing one that others could read, as a token file
//! must not be), keeps a node password in its own file (created once, like
//! `/etc/rancher/node/password`), asks the server at `server:` to join
//! ([`super::k3s::K3sServer::serve`]) and writes the kubelet kubeconfig it gets back (0600).
//! The kubelet itself then runs inside the test world's process.
//!
//! Exit status: 0 joined; 1 refused (bad token, node password rejected, registration refused,
//! bad config). An unreachable server is retried until the process is stopped, as k3s does.

use super::k3s::JoinRequest;
use crate::{Error, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the fake k3s reads and writes.
#[derive(Debug, Clone)]
pub struct K3sAgentArgs {
    pub config: PathBuf,
    pub kubelet_kubeconfig: PathBuf,
    pub node_password_file: PathBuf,
    pub cpu: String,
    pub memory: String,
}

/// The k3s config keys the SmartScale agent writes (k3s's flag names).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct K3sConfig {
    server: String,
    token: String,
    node_name: String,
    #[serde(default)]
    kubelet_arg: Vec<String>,
    #[serde(default)]
    node_label: Vec<String>,
    #[serde(default)]
    node_taint: Vec<String>,
    #[serde(default)]
    node_ip: Option<String>,
}

fn refuse(message: String) -> Error {
    Error::Invalid(message)
}

/// `ip-10-0-1-23.ec2.internal` → `10.0.1.23`: EC2 hostnames carry the private address.
fn ip_from_hostname(hostname: &str) -> Option<String> {
    let dashed = hostname.split('.').next()?.strip_prefix("ip-")?;
    let ip = dashed.replace('-', ".");
    ip.parse::<std::net::Ipv4Addr>().ok().map(|a| a.to_string())
}

fn node_password(path: &Path) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(p) if !p.trim().is_empty() => Ok(p.trim().to_string()),
        _ => {
            let password = format!("{:032x}", rand::random::<u128>());
            smartscale_common::files::write_private(path, password.as_bytes()).map_err(|e| {
                refuse(format!("writing the node password {}: {e}", path.display()))
            })?;
            Ok(password)
        }
    }
}

/// Joins as k3s would; `Ok(())` once the kubelet kubeconfig is written.
pub async fn run(args: &K3sAgentArgs) -> Result<()> {
    let meta = std::fs::metadata(&args.config)
        .map_err(|e| Error::io(format!("reading {}", args.config.display()), e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(refuse(format!(
            "{} is mode {mode:o}: it holds the cluster token and must not be readable by others (0600)",
            args.config.display()
        )));
    }
    let text = std::fs::read_to_string(&args.config)
        .map_err(|e| Error::io(format!("reading {}", args.config.display()), e))?;
    let config: K3sConfig = serde_saphyr::from_str(&text).map_err(|e| {
        refuse(format!(
            "{} is not a valid k3s config: {e}",
            args.config.display()
        ))
    })?;
    let provider_id = config
        .kubelet_arg
        .iter()
        .find_map(|a| a.strip_prefix("provider-id="))
        .map(str::to_string);
    let mut labels = BTreeMap::new();
    for l in &config.node_label {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| refuse(format!("node-label {l:?} is not key=value")))?;
        labels.insert(k.to_string(), v.to_string());
    }
    let request = JoinRequest {
        token: config.token.clone(),
        node_name: config.node_name.clone(),
        node_password: node_password(&args.node_password_file)?,
        provider_id,
        labels,
        taints: config.node_taint.clone(),
        internal_ip: config
            .node_ip
            .clone()
            .or_else(|| ip_from_hostname(&config.node_name)),
        cpu: Some(args.cpu.clone()),
        memory: Some(args.memory.clone()),
    };
    let url = format!("{}/v1-k3s/join", config.server.trim_end_matches('/'));
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| refuse(format!("HTTP client: {e}")))?;
    loop {
        match http.post(&url).json(&request).send().await {
            Ok(response) => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                if status.is_success() {
                    smartscale_common::files::write_private(
                        &args.kubelet_kubeconfig,
                        body.as_bytes(),
                    )
                    .map_err(|e| {
                        refuse(format!(
                            "writing {}: {e}",
                            args.kubelet_kubeconfig.display()
                        ))
                    })?;
                    return Ok(());
                }
                return Err(refuse(format!(
                    "the server refused the join ({status}): {body}"
                )));
            }
            Err(e) => {
                eprintln!(
                    "k3s: cannot reach the server at {}: {}; retrying",
                    config.server,
                    smartscale_common::error_chain(&e)
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ip_from_hostname;

    #[test]
    fn ec2_hostnames_carry_the_private_address() {
        assert_eq!(
            ip_from_hostname("ip-10-0-1-23.ec2.internal").as_deref(),
            Some("10.0.1.23")
        );
        assert_eq!(
            ip_from_hostname("ip-10-0-7-4.eu-west-3.compute.internal").as_deref(),
            Some("10.0.7.4")
        );
        assert_eq!(ip_from_hostname("server"), None);
    }
}
