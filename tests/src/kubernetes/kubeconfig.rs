//! Kubeconfig files for the world's identities: TLS to the API server with the server CA, and a
//! client certificate (components, nodes, admin) or a bearer token (service accounts).

use super::pki::ClientCert;
use crate::{Error, Result};
use base64::Engine;
use std::path::Path;

/// How a client proves who it is.
#[derive(Clone)]
pub enum Credential {
    Certificate(ClientCert),
    Token(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Certificate(_) => f.write_str("Certificate(..)"),
            Credential::Token(_) => f.write_str("Token(..)"),
        }
    }
}

/// One cluster, one user, one context.
#[derive(Debug, Clone)]
pub struct Kubeconfig {
    pub server: String,
    ca_pem: String,
    credential: Credential,
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

impl Kubeconfig {
    pub fn new(server: &str, ca_pem: &str, credential: Credential) -> Self {
        Kubeconfig {
            server: server.to_string(),
            ca_pem: ca_pem.to_string(),
            credential,
        }
    }

    /// The same identity through another address (a gate or proxy in front of the API server);
    /// TLS still verifies the API server's certificate, which names 127.0.0.1.
    pub fn with_server(mut self, server: &str) -> Self {
        self.server = server.to_string();
        self
    }

    pub fn to_yaml(&self) -> String {
        let user = match &self.credential {
            Credential::Certificate(c) => format!(
                "    client-certificate-data: {}\n    client-key-data: {}\n",
                b64(&c.cert_pem),
                b64(&c.key_pem)
            ),
            Credential::Token(t) => format!("    token: {t}\n"),
        };
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: world\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\ncontexts:\n- name: world\n  context:\n    cluster: world\n    user: user\ncurrent-context: world\nusers:\n- name: user\n  user:\n{user}",
            server = self.server,
            ca = b64(&self.ca_pem),
        )
    }

    /// Writes the file with mode 0600 (it holds a key or a token), atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        smartscale_common::files::write_private(path, self.to_yaml().as_bytes())
            .map_err(|e| Error::Invalid(format!("writing the kubeconfig {}: {e}", path.display())))
    }
}
