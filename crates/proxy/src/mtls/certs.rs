//! The mesh's certificates, issued by the cluster CA: one per workload identity
//! (`spiffe://<trust domain>/ns/<ns>/sa/<sa>`) and one per node proxy
//! (`spiffe://<trust domain>/node/<name>`, with the node name as a DNS name too, which is
//! what a proxy checks when it connects to another node's tunnel). Every certificate is
//! for both ends of TLS (clientAuth and serverAuth), short-lived, and carries only the
//! names asked for after they were checked.

use super::SpiffeId;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How long a mesh certificate is valid. Proxies renew at half of it.
pub const CERT_TTL: Duration = Duration::from_secs(24 * 3600);

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// A fresh key and a certificate request for `id`, both PEM. The key never leaves the
/// node that made it.
pub fn request(id: &SpiffeId) -> Result<(String, String), String> {
    let key = rcgen::KeyPair::generate().map_err(|x| err("key", x))?;
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = sans(id)?;
    let csr = params
        .serialize_request(&key)
        .map_err(|x| err("certificate request", x))?;
    Ok((
        key.serialize_pem(),
        csr.pem().map_err(|x| err("certificate request", x))?,
    ))
}

fn sans(id: &SpiffeId) -> Result<Vec<rcgen::SanType>, String> {
    let uri = id.to_string().try_into().map_err(|x| err("SPIFFE ID", x))?;
    let mut v = vec![rcgen::SanType::URI(uri)];
    if let SpiffeId::Node { name, .. } = id {
        v.push(rcgen::SanType::DnsName(
            name.clone().try_into().map_err(|x| err("node name", x))?,
        ));
    }
    Ok(v)
}

/// The identity a certificate request asks for: exactly one SPIFFE URI (and, for a node,
/// its name as a DNS name), nothing else.
pub fn requested_identity(csr_pem: &str) -> Result<SpiffeId, String> {
    let req = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|x| err("certificate request", x))?;
    let uris: Vec<&str> = req
        .params
        .subject_alt_names
        .iter()
        .filter_map(|s| match s {
            rcgen::SanType::URI(u) => Some(u.as_str()),
            _ => None,
        })
        .collect();
    let [uri] = uris[..] else {
        return Err(format!(
            "the request must name exactly one spiffe:// URI, it names {}",
            uris.len()
        ));
    };
    uri.parse()
}

/// Signs a request for `id` (already authorized by the caller) with the cluster CA. The
/// certificate gets `id`'s names and nothing else the request may have asked for.
pub fn sign(
    ca_pem: &str,
    ca_key_pem: &str,
    csr_pem: &str,
    id: &SpiffeId,
) -> Result<String, String> {
    let ca_key = rcgen::KeyPair::from_pem(ca_key_pem).map_err(|x| err("cluster CA key", x))?;
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(ca_pem, ca_key).map_err(|x| err("cluster CA", x))?;
    let mut req = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|x| err("certificate request", x))?;
    let since_epoch = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
    let p = &mut req.params;
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.subject_alt_names = sans(id)?;
    p.not_before = now - Duration::from_secs(300);
    p.not_after = now + CERT_TTL;
    p.is_ca = rcgen::IsCa::ExplicitNoCa;
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.custom_extensions.clear();
    let cert = req
        .signed_by(&issuer)
        .map_err(|x| err("signing the certificate", x))?;
    Ok(cert.pem())
}

/// A certificate and its key, as TLS needs them, with when it stops being valid.
#[derive(Clone, Debug)]
pub struct Credential {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivatePkcs8KeyDer<'static>>,
    pub not_after: SystemTime,
}

impl Credential {
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Credential, String> {
        let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|x| err("certificate", x))?;
        let first = chain.first().ok_or("no certificate in the PEM")?;
        let (_, x) = x509_parser::parse_x509_certificate(first.as_ref())
            .map_err(|x| err("certificate", x))?;
        let secs = x.validity().not_after.timestamp().max(0) as u64;
        let key = rcgen::KeyPair::from_pem(key_pem).map_err(|x| err("key", x))?;
        Ok(Credential {
            chain,
            key: Arc::new(PrivatePkcs8KeyDer::from(key.serialize_der())),
            not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
        })
    }

    /// Whether it is past half its life (or expired): time to get a new one.
    pub fn due(&self) -> bool {
        self.not_after
            .duration_since(SystemTime::now())
            .map_or(true, |left| left < CERT_TTL / 2)
    }

    fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

fn roots(ca_pem: &str) -> Result<Arc<rustls::RootCertStore>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots
            .add(c.map_err(|x| err("cluster CA", x))?)
            .map_err(|x| err("cluster CA", x))?;
    }
    Ok(Arc::new(roots))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The tunnel's server side: the node's certificate; clients must present one of the
/// cluster CA's, or the handshake fails (plaintext and unknown clients never get in).
/// TLS 1.3 only, HTTP/2 only.
pub fn server_config(ca_pem: &str, node: &Credential) -> Result<Arc<rustls::ServerConfig>, String> {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider())
            .build()
            .map_err(|x| err("client verifier", x))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|x| err("TLS", x))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(node.chain.clone(), node.key_der())
        .map_err(|x| err("TLS", x))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// The tunnel's client side for one source identity: presents `cred`, trusts only the
/// cluster CA, and (through the server name it is used with) only the node it dials.
pub fn client_config(ca_pem: &str, cred: &Credential) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|x| err("TLS", x))?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(cred.chain.clone(), cred.key_der())
        .map_err(|x| err("TLS", x))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// The name a node's tunnel certificate is checked against.
pub fn node_server_name(node: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(node.to_string()).map_err(|x| err("node name", x))
}

/// The SPIFFE identity in a (verified) peer certificate.
pub fn peer_identity(cert: &CertificateDer<'_>) -> Option<SpiffeId> {
    let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = x.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) => u.parse().ok(),
        _ => None,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn test_ca() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "test-ca");
        let cert = p.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_workload_request_is_signed_with_only_its_identity_for_both_ends() {
        let (ca, ca_key) = test_ca();
        let id: SpiffeId = "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap();
        let (key, csr) = request(&id).unwrap();
        assert_eq!(requested_identity(&csr).unwrap(), id);
        let pem = sign(&ca, &ca_key, &csr, &id).unwrap();
        let cred = Credential::from_pem(&pem, &key).unwrap();
        assert_eq!(peer_identity(&cred.chain[0]), Some(id));
        assert!(!cred.due());
        let (_, x) = x509_parser::parse_x509_certificate(cred.chain[0].as_ref()).unwrap();
        let eku = x.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(x.subject().iter_common_name().next().is_none());
        assert!(client_config(&ca, &cred).is_ok());
        assert!(server_config(&ca, &cred).is_ok());
    }

    #[test]
    fn requests_without_exactly_one_spiffe_uri_are_refused() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "admin");
        let none = p.serialize_request(&key).unwrap().pem().unwrap();
        assert!(requested_identity(&none)
            .unwrap_err()
            .contains("exactly one"));
        p.subject_alt_names = vec![rcgen::SanType::URI(
            "https://example.com/x".try_into().unwrap(),
        )];
        let http = p.serialize_request(&key).unwrap().pem().unwrap();
        assert!(requested_identity(&http).is_err());
        assert!(requested_identity("garbage").is_err());
    }
}
