//! The world's certificates, laid out as K3s lays out its own (`/var/lib/rancher/k3s/server/tls`):
//! a server CA that signs the API server's serving certificate, a client CA that signs every
//! client identity (admin, controller manager, scheduler, and each node's kubelet as
//! `system:node:<name>` in `system:nodes`), and the key that signs service-account tokens.
//!
//! Keys are ECDSA P-256 (what K3s generates); private keys are written with mode 0600.

use crate::{Error, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};

/// A client identity: its certificate and key as PEM.
#[derive(Clone)]
pub struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCert").finish_non_exhaustive()
    }
}

/// The CAs (kept in memory to sign node identities later) and the files the components read.
#[derive(Clone)]
pub struct Pki {
    pub dir: PathBuf,
    pub server_ca_pem: String,
    client_ca: std::sync::Arc<Issuer<'static, KeyPair>>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").field("dir", &self.dir).finish()
    }
}

fn cert_err(what: &str, e: rcgen::Error) -> Error {
    Error::Invalid(format!("generating {what}: {e}"))
}

fn ca_params(common_name: &str) -> Result<CertificateParams> {
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| cert_err("CA parameters", e))?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn write(path: &Path, text: &str, private: bool) -> Result<()> {
    if private {
        smartscale_common::files::write_private(path, text.as_bytes())
            .map_err(|e| Error::Invalid(format!("writing {}: {e}", path.display())))
    } else {
        std::fs::write(path, text).map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }
}

impl Pki {
    /// Generates everything into `dir` (created if missing).
    pub fn generate(dir: &Path) -> Result<Pki> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let server_key = KeyPair::generate().map_err(|e| cert_err("the server CA key", e))?;
        let server_params = ca_params("k3s-server-ca")?;
        let server_cert = server_params
            .self_signed(&server_key)
            .map_err(|e| cert_err("the server CA", e))?;
        let client_key = KeyPair::generate().map_err(|e| cert_err("the client CA key", e))?;
        let client_params = ca_params("k3s-client-ca")?;
        let client_cert = client_params
            .self_signed(&client_key)
            .map_err(|e| cert_err("the client CA", e))?;
        write(&dir.join("server-ca.crt"), &server_cert.pem(), false)?;
        write(&dir.join("client-ca.crt"), &client_cert.pem(), false)?;

        // The API server's serving certificate: every name a client in the world uses.
        let server_issuer = Issuer::new(server_params, server_key);
        let serving_key = KeyPair::generate().map_err(|e| cert_err("the serving key", e))?;
        let mut serving = CertificateParams::new(vec![
            "localhost".to_string(),
            "kubernetes".to_string(),
            "kubernetes.default".to_string(),
            "kubernetes.default.svc".to_string(),
            "kubernetes.default.svc.cluster.local".to_string(),
        ])
        .map_err(|e| cert_err("serving parameters", e))?;
        serving
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        serving
            .subject_alt_names
            .push(SanType::IpAddress([10, 43, 0, 1].into()));
        serving
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        serving.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_cert = serving
            .signed_by(&serving_key, &server_issuer)
            .map_err(|e| cert_err("the serving certificate", e))?;
        write(
            &dir.join("serving-kube-apiserver.crt"),
            &serving_cert.pem(),
            false,
        )?;
        write(
            &dir.join("serving-kube-apiserver.key"),
            &serving_key.serialize_pem(),
            true,
        )?;

        // Service-account tokens: the API server verifies with the public key, the controller
        // manager's token controller signs with the private one.
        let sa_key = KeyPair::generate().map_err(|e| cert_err("the service-account key", e))?;
        write(&dir.join("service.key"), &sa_key.serialize_pem(), true)?;
        write(&dir.join("service.pub"), &sa_key.public_key_pem(), false)?;

        Ok(Pki {
            dir: dir.to_path_buf(),
            server_ca_pem: server_cert.pem(),
            client_ca: std::sync::Arc::new(Issuer::new(client_params, client_key)),
        })
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// A client certificate for user `common_name` in `group` (the certificate's one O), signed by
    /// the client CA (what the API server's `--client-ca-file` trusts).
    pub fn client_cert(&self, common_name: &str, group: Option<&str>) -> Result<ClientCert> {
        let key = KeyPair::generate().map_err(|e| cert_err("a client key", e))?;
        let mut params = CertificateParams::new(Vec::<String>::new())
            .map_err(|e| cert_err("client parameters", e))?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, common_name);
        if let Some(group) = group {
            name.push(DnType::OrganizationName, group);
        }
        params.distinguished_name = name;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(&key, &*self.client_ca)
            .map_err(|e| cert_err(&format!("the certificate of {common_name}"), e))?;
        Ok(ClientCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The kubelet identity of node `name`: `system:node:<name>` in `system:nodes`, as the Node
    /// authorizer and NodeRestriction expect.
    pub fn node_cert(&self, name: &str) -> Result<ClientCert> {
        self.client_cert(&format!("system:node:{name}"), Some("system:nodes"))
    }
}
