//! The node's TLS: a serving certificate signed by the cluster CA for the node's
//! addresses, and client certificates checked against the same CA (requests without one
//! get 401 from `serve`).

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::IpAddr;
use std::sync::Arc;

/// A server config for a node reachable at `ips`, its certificate issued now by the CA.
pub fn node_server_config(
    ca_pem: &str,
    ca_key_pem: &str,
    node_name: &str,
    ips: &[IpAddr],
) -> Result<Arc<rustls::ServerConfig>, String> {
    let e = |what: &str, err: &dyn std::fmt::Display| format!("{what}: {err}");
    let ca_key = rcgen::KeyPair::from_pem(ca_key_pem).map_err(|x| e("cluster CA key", &x))?;
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(ca_pem, ca_key).map_err(|x| e("cluster CA", &x))?;
    let key = rcgen::KeyPair::generate().map_err(|x| e("key", &x))?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("system:node:{node_name}"),
    );
    params.subject_alt_names = ips
        .iter()
        .map(|ip| rcgen::SanType::IpAddress(*ip))
        .collect();
    if let Ok(dns) = node_name.to_string().try_into() {
        params.subject_alt_names.push(rcgen::SanType::DnsName(dns));
    }
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|x| e("signing the node certificate", &x))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in pem_certs(ca_pem) {
        roots.add(c).map_err(|x| e("cluster CA", &x))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|x| e("client verifier", &x))?;
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|x| e("TLS", &x))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .map_err(|x| e("TLS", &x))?;
    Ok(Arc::new(cfg))
}

/// The DER certificates in a PEM text.
pub fn pem_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    use base64::Engine;
    pem.split("-----BEGIN CERTIFICATE-----")
        .skip(1)
        .filter_map(|rest| rest.split("-----END CERTIFICATE-----").next())
        .filter_map(|b64| {
            let clean: String = b64.chars().filter(|c| !c.is_whitespace()).collect();
            base64::engine::general_purpose::STANDARD.decode(clean).ok()
        })
        .map(CertificateDer::from)
        .collect()
}
