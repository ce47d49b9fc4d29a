//! The node's TLS: a serving certificate signed by the cluster CA for the node's
//! addresses, and client certificates checked against the same CA (requests without one
//! get 401 from `serve`).

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

const NODE_PREFIX: &str = "system:node:";

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// A server config for a node reachable at `ips`, its certificate issued now by the CA
/// (the server's own node, which holds the CA key).
pub fn node_server_config(
    ca_pem: &str,
    ca_key_pem: &str,
    node_name: &str,
    ips: &[IpAddr],
) -> Result<Arc<rustls::ServerConfig>, String> {
    let (key_pem, csr_pem) = node_csr(node_name, ips)?;
    let cert_pem = sign_node_csr(ca_pem, ca_key_pem, &csr_pem)?;
    server_config(ca_pem, &cert_pem, &key_pem)
}

/// A fresh key and a certificate request for the node's serving certificate (CN
/// `system:node:<name>`, the addresses and the name as SANs), both PEM: a joining node
/// sends the request to the server, the key never leaves it.
pub fn node_csr(node_name: &str, ips: &[IpAddr]) -> Result<(String, String), String> {
    let key = rcgen::KeyPair::generate().map_err(|x| err("key", x))?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("{NODE_PREFIX}{node_name}"),
    );
    params.subject_alt_names = ips
        .iter()
        .map(|ip| rcgen::SanType::IpAddress(*ip))
        .collect();
    if let Ok(dns) = node_name.to_string().try_into() {
        params.subject_alt_names.push(rcgen::SanType::DnsName(dns));
    }
    let csr = params
        .serialize_request(&key)
        .map_err(|x| err("certificate request", x))?;
    Ok((
        key.serialize_pem(),
        csr.pem().map_err(|x| err("certificate request", x))?,
    ))
}

/// Signs a node's serving-certificate request with the cluster CA (a year's validity).
/// Only node certificates are issued: the subject must be `system:node:<name>`, and the
/// certificate is for serving alone, whatever the request asks.
pub fn sign_node_csr(ca_pem: &str, ca_key_pem: &str, csr_pem: &str) -> Result<String, String> {
    let ca_key = rcgen::KeyPair::from_pem(ca_key_pem).map_err(|x| err("cluster CA key", x))?;
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(ca_pem, ca_key).map_err(|x| err("cluster CA", x))?;
    let mut req = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|x| err("certificate request", x))?;
    let cn = req
        .params
        .distinguished_name
        .get(&rcgen::DnType::CommonName)
        .and_then(dn_text)
        .unwrap_or_default();
    let name = cn
        .strip_prefix(NODE_PREFIX)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| format!("the request's subject {cn:?} is not system:node:<name>"))?;
    if name.len() > 253 {
        return Err("the node name is longer than 253 characters".into());
    }
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
    req.params.not_before = now - Duration::from_secs(300);
    req.params.not_after = now + Duration::from_secs(365 * 86400);
    req.params.is_ca = rcgen::IsCa::ExplicitNoCa;
    req.params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    req.params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    req.params.custom_extensions.clear();
    let cert = req
        .signed_by(&issuer)
        .map_err(|x| err("signing the node certificate", x))?;
    Ok(cert.pem())
}

fn dn_text(v: &rcgen::DnValue) -> Option<String> {
    match v {
        rcgen::DnValue::Utf8String(s) => Some(s.clone()),
        rcgen::DnValue::PrintableString(s) => Some(s.as_str().to_string()),
        rcgen::DnValue::Ia5String(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// The kubelet API's TLS: serving `cert_pem`/`key_pem`, client certificates checked
/// against the cluster CA (requests without one are let through, and `serve` answers them
/// 401).
pub fn server_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in pem_certs(ca_pem) {
        roots.add(c).map_err(|x| err("cluster CA", x))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|x| err("client verifier", x))?;
    let key = rcgen::KeyPair::from_pem(key_pem).map_err(|x| err("node key", x))?;
    let chain = pem_certs(cert_pem);
    if chain.is_empty() {
        return Err("no certificate in the node's serving certificate PEM".into());
    }
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|x| err("TLS", x))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            chain,
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .map_err(|x| err("TLS", x))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn test_ca() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "test-ca");
        let cert = p.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_node_request_is_signed_for_serving_and_others_are_refused() {
        let (ca, ca_key) = test_ca();
        let ip: IpAddr = "10.250.1.2".parse().unwrap();
        let (key, csr) = node_csr("node-b", &[ip]).unwrap();
        let cert = sign_node_csr(&ca, &ca_key, &csr).unwrap();
        let der = pem_certs(&cert).remove(0);
        let (_, x) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        let cn = x.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), "system:node:node-b");
        let eku = x.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        assert!(server_config(&ca, &cert, &key).is_ok());

        // Anything but a node's serving certificate is refused.
        let other = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "kubernetes-admin");
        let admin_csr = p.serialize_request(&other).unwrap().pem().unwrap();
        let e = sign_node_csr(&ca, &ca_key, &admin_csr).unwrap_err();
        assert!(e.contains("not system:node:<name>"), "{e}");
        assert!(sign_node_csr(&ca, &ca_key, "garbage").is_err());
    }
}
