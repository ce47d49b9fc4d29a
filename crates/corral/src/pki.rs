//! The cluster's certificates: a CA, a serving certificate for the API and an admin client
//! certificate, created on first start under the data directory and reused afterwards, plus
//! the kubeconfig that points kubectl at the server with the admin identity.

use anyhow::{Context, Result};
use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::fs;
use std::path::{Path, PathBuf};

pub struct Pki {
    pub ca_pem: String,
    /// The CA's key: signs the kubelet serving certificates of nodes.
    pub ca_key_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
    /// A bearer token with admin rights, for clients that prefer tokens.
    pub admin_token: String,
}

fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

fn dn(cn: &str, org: Option<&str>) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::CommonName, cn);
    if let Some(o) = org {
        d.push(DnType::OrganizationName, o);
    }
    d
}

fn validity(params: &mut CertificateParams, days: u64) {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
    params.not_before = now - std::time::Duration::from_secs(3600);
    params.not_after = now + std::time::Duration::from_secs(days * 86400);
}

pub fn dir_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("pki"), dir.join("kubeconfig.yaml"))
}

/// Load the PKI from `dir/pki`, creating it on first start.
pub fn ensure(dir: &Path, extra_sans: &[String]) -> Result<Pki> {
    let (pki_dir, _) = dir_paths(dir);
    fs::create_dir_all(&pki_dir)?;
    let read = |n: &str| fs::read_to_string(pki_dir.join(n));
    if let (Ok(ca), Ok(cak), Ok(sc), Ok(sk), Ok(ac), Ok(ak), Ok(tok)) = (
        read("ca.crt"),
        read("ca.key"),
        read("server.crt"),
        read("server.key"),
        read("admin.crt"),
        read("admin.key"),
        read("admin.token"),
    ) {
        return Ok(Pki {
            ca_pem: ca,
            ca_key_pem: cak,
            server_cert_pem: sc,
            server_key_pem: sk,
            admin_cert_pem: ac,
            admin_key_pem: ak,
            admin_token: tok.trim().to_string(),
        });
    }
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = dn("corral-ca", None);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut ca_params, 3650);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let server_key = KeyPair::generate()?;
    let mut sp = CertificateParams::default();
    sp.distinguished_name = dn("corral-apiserver", None);
    let mut names = vec![
        "localhost".to_string(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        "kubernetes.default.svc.cluster.local".into(),
    ];
    if let Ok(h) = fs::read_to_string("/etc/hostname") {
        let h = h.trim();
        if !h.is_empty() {
            names.push(h.to_string());
        }
    }
    names.extend(
        extra_sans
            .iter()
            .filter(|s| s.parse::<std::net::IpAddr>().is_err())
            .cloned(),
    );
    sp.subject_alt_names = names
        .into_iter()
        .filter_map(|n| n.try_into().ok().map(SanType::DnsName))
        .collect();
    let mut ips: Vec<std::net::IpAddr> = vec![
        "127.0.0.1".parse().unwrap(),
        "::1".parse().unwrap(),
        "10.43.0.1".parse().unwrap(),
    ];
    ips.extend(
        extra_sans
            .iter()
            .filter_map(|s| s.parse::<std::net::IpAddr>().ok()),
    );
    sp.subject_alt_names
        .extend(ips.into_iter().map(SanType::IpAddress));
    sp.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut sp, 3650);
    let server_cert = sp.signed_by(&server_key, &issuer)?;

    let admin_key = KeyPair::generate()?;
    let mut ap = CertificateParams::default();
    ap.distinguished_name = dn("corral-admin", Some("system:masters"));
    ap.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    ap.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut ap, 3650);
    let admin_cert = ap.signed_by(&admin_key, &issuer)?;

    let token = {
        let mut b = [0u8; 24];
        getrandom(&mut b)?;
        hex(&b)
    };
    let pki = Pki {
        ca_pem: ca_cert.pem(),
        server_cert_pem: server_cert.pem(),
        server_key_pem: server_key.serialize_pem(),
        admin_cert_pem: admin_cert.pem(),
        admin_key_pem: admin_key.serialize_pem(),
        admin_token: token,
        ca_key_pem: ca_key.serialize_pem(),
    };
    write_private(&pki_dir.join("ca.key"), &pki.ca_key_pem)?;
    write_private(&pki_dir.join("server.key"), &pki.server_key_pem)?;
    write_private(&pki_dir.join("admin.key"), &pki.admin_key_pem)?;
    write_private(&pki_dir.join("admin.token"), &pki.admin_token)?;
    write_private(&pki_dir.join("server.crt"), &pki.server_cert_pem)?;
    write_private(&pki_dir.join("admin.crt"), &pki.admin_cert_pem)?;
    // The CA certificate last: its presence marks a complete set.
    write_private(&pki_dir.join("ca.crt"), &pki.ca_pem)?;
    Ok(pki)
}

fn getrandom(buf: &mut [u8]) -> Result<()> {
    use std::io::Read;
    fs::File::open("/dev/urandom")?.read_exact(buf)?;
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Write `dir/kubeconfig.yaml` for the admin identity.
pub fn write_kubeconfig(dir: &Path, pki: &Pki, server_url: &str) -> Result<PathBuf> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: corral
  cluster:
    server: {server_url}
    certificate-authority-data: {}
users:
- name: corral-admin
  user:
    client-certificate-data: {}
    client-key-data: {}
contexts:
- name: corral
  context:
    cluster: corral
    user: corral-admin
    namespace: default
current-context: corral
",
        b64(&pki.ca_pem),
        b64(&pki.admin_cert_pem),
        b64(&pki.admin_key_pem)
    );
    let (_, path) = dir_paths(dir);
    write_private(&path, &text)?;
    Ok(path)
}
