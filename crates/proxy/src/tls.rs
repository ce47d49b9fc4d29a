//! TLS termination for Ingress: certificates from Secrets, chosen per connection by SNI
//! from the configuration current at the handshake, so a renewed Secret applies to the
//! next connection without restarting the listener.

use crate::frontends::Frontends;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::watch;

/// Parses the certificates the Ingresses name; a Secret that does not parse is skipped
/// with a log line (its hosts then get no certificate and the handshake fails).
pub fn certified_keys(
    hosts: &crate::ingress::TlsHosts,
    secrets: &crate::view::TlsSecrets,
) -> HashMap<String, Arc<CertifiedKey>> {
    let mut parsed: HashMap<(String, String), Option<Arc<CertifiedKey>>> = HashMap::new();
    let mut out = HashMap::new();
    for (host, secret) in hosts {
        let key = parsed
            .entry(secret.clone())
            .or_insert_with(|| {
                let (cert, key) = &**secrets.get(secret)?;
                match certified_key(cert, key) {
                    Ok(k) => Some(Arc::new(k)),
                    Err(e) => {
                        tracing::warn!(secret = %format!("{}/{}", secret.0, secret.1), error = %e,
                            "ignoring an Ingress TLS Secret");
                        None
                    }
                }
            })
            .clone();
        if let Some(k) = key {
            out.insert(host.clone(), k);
        }
    }
    out
}

/// The certificate of one TLS Secret (a Gateway listener's certificateRef), if it parses.
pub fn certified_key_of(
    secrets: &crate::view::TlsSecrets,
    namespace: &str,
    name: &str,
) -> Option<Arc<CertifiedKey>> {
    let (cert, key) = &**secrets.get(&(namespace.to_string(), name.to_string()))?;
    match certified_key(cert, key) {
        Ok(k) => Some(Arc::new(k)),
        Err(e) => {
            tracing::warn!(secret = %format!("{namespace}/{name}"), error = %e,
                "ignoring a Gateway listener's TLS Secret");
            None
        }
    }
}

fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, String> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt: {e}"))?;
    if certs.is_empty() {
        return Err("tls.crt holds no certificate".into());
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| format!("tls.key: {e}"))?
        .ok_or("tls.key holds no private key")?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("tls.key: {e}"))?;
    Ok(CertifiedKey::new(certs, signer))
}

/// Picks the certificate for the SNI name: first a Gateway listener's on this port (exact
/// hostname, then wildcards from the closest, then the listener without a hostname), then
/// an Ingress's (exact, then the wildcard one label up).
#[derive(Debug)]
struct BySni(watch::Receiver<Arc<Frontends>>, u16);

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name().map(str::to_ascii_lowercase);
        let table = self.0.borrow();
        if let Some(certs) = table.gateway_certs.get(&self.1) {
            if let Some(name) = &sni {
                if let Some(k) = certs.get(name) {
                    return Some(k.clone());
                }
                let mut rest = name.as_str();
                while let Some((_, parent)) = rest.split_once('.') {
                    if let Some(k) = certs.get(&format!("*.{parent}")) {
                        return Some(k.clone());
                    }
                    rest = parent;
                }
            }
            if let Some(k) = certs.get("") {
                return Some(k.clone());
            }
        }
        let name = sni?;
        if let Some(k) = table.certs.get(&name) {
            return Some(k.clone());
        }
        let (_, parent) = name.split_once('.')?;
        table.certs.get(&format!("*.{parent}")).cloned()
    }
}

pub fn server_config(
    table: watch::Receiver<Arc<Frontends>>,
    port: u16,
) -> Arc<rustls::ServerConfig> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default versions")
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(BySni(table, port)));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(cfg)
}
