//! Kubernetes in the test world: the real control plane of a pinned release
//! ([`control_plane`]), simulated kubelets ([`kubelet`]), what a K3s server adds on top
//! ([`k3s`]: joins, node passwords, its cloud controller), the world's certificates ([`pki`]),
//! kubeconfigs ([`kubeconfig`]) and manifests applied as `kubectl apply` would ([`manifests`]).

pub mod control_plane;
pub mod k3s;
pub mod k3s_agent;
pub mod kubeconfig;
pub mod kubelet;
pub mod manifests;
pub mod pki;

pub use control_plane::{AuditEvent, ControlPlane, ControlPlaneOptions, KUBERNETES_VERSION};
pub use k3s::{JoinRefused, JoinRequest, K3sOptions, K3sServer};
pub use kubeconfig::{Credential, Kubeconfig};
pub use kubelet::{Kubelet, KubeletOptions};

use crate::{Error, Result};
use std::path::Path;

/// A kube client for a kubeconfig file. kube's own retry of 429/503/504 is off: a test must see
/// the API server's answer (a PDB-refused eviction is a 429), not kube-rs backing off for
/// minutes in its place (15 retries, doubling from 5 ms: about 5 minutes of one call).
pub async fn client_for(path: &Path) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(path)
        .map_err(|e| Error::Invalid(format!("reading the kubeconfig {}: {e}", path.display())))?;
    let mut cfg =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|e| Error::Invalid(format!("kubeconfig {}: {e}", path.display())))?;
    cfg.default_retry = false;
    kube::Client::try_from(cfg).map_err(|e| Error::Invalid(format!("kube client: {e}")))
}
