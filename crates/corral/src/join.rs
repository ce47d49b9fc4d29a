//! Joining nodes: `corral token create` (run beside a server, with its admin kubeconfig)
//! and the client a joining `corral agent` builds from a server URL and a join token.

use crate::tokens::{JoinTokenParts, SECRET_PREFIX, TOKEN_TYPE};
use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Api;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The admin client of the server whose data dir is `data_dir`.
pub async fn admin_client(data_dir: &Path) -> Result<kube::Client> {
    let path = data_dir.join("kubeconfig.yaml");
    let kc = Kubeconfig::read_from(&path).with_context(|| {
        format!(
            "reading {} (is a corral server using this --data-dir?)",
            path.display()
        )
    })?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(cfg)?)
}

fn random_chars(n: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let more = uuid::Uuid::new_v4().into_bytes();
    bytes
        .iter()
        .chain(more.iter())
        .take(n)
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// Creates a join token valid for `ttl` (none: until deleted) and returns it as printed.
pub async fn create_token(
    data_dir: &Path,
    ttl: Option<Duration>,
    description: &str,
) -> Result<String> {
    let ca_pem = std::fs::read_to_string(data_dir.join("pki/ca.crt"))
        .with_context(|| format!("reading the cluster CA in {}", data_dir.display()))?;
    let client = admin_client(data_dir).await?;
    let (id, secret) = (random_chars(6), random_chars(16));
    let mut data = std::collections::BTreeMap::from([
        ("token-id".to_string(), id.clone()),
        ("token-secret".to_string(), secret.clone()),
        (
            "usage-bootstrap-authentication".to_string(),
            "true".to_string(),
        ),
        ("description".to_string(), description.to_string()),
    ]);
    if let Some(ttl) = ttl {
        let at = k8s_openapi::jiff::Timestamp::now()
            + k8s_openapi::jiff::SignedDuration::from_secs(ttl.as_secs() as i64);
        data.insert("expiration".into(), at.to_string());
    }
    let s = Secret {
        metadata: ObjectMeta {
            name: Some(format!("{SECRET_PREFIX}{id}")),
            namespace: Some("kube-system".into()),
            ..Default::default()
        },
        type_: Some(TOKEN_TYPE.into()),
        string_data: Some(data),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client, "kube-system")
        .create(&PostParams::default(), &s)
        .await
        .context("creating the token Secret")?;
    Ok(format!(
        "K10{}::{id}.{secret}",
        sha256_hex(ca_pem.as_bytes())
    ))
}

pub use corral_agent::SERVING_CERT_PATH;

/// POST SERVING_CERT_PATH: signs a node's serving-certificate request (PEM PKCS#10 body)
/// with the cluster CA, for callers in system:nodes (join tokens) or system:masters. As
/// with k3s' node certificates, a join token may ask for any node name: whoever holds
/// one can join nodes.
pub async fn sign_serving_cert(
    ident: Option<corral_api::Identity>,
    req: http::Request<hyper::body::Incoming>,
    ca_pem: &str,
    ca_key_pem: &str,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (ident, csr) = match node_request(ident, req, "node serving certificates").await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    match corral_kubelet_api::certs::sign_node_csr(ca_pem, ca_key_pem, &csr) {
        Ok(cert) => {
            tracing::info!(user = %ident.user, "signed a node serving certificate");
            (
                [(http::header::CONTENT_TYPE, "application/x-pem-file")],
                cert,
            )
                .into_response()
        }
        Err(e) => status(http::StatusCode::BAD_REQUEST, "BadRequest", e),
    }
}

fn status(code: http::StatusCode, reason: &str, msg: String) -> axum::response::Response {
    use axum::response::IntoResponse;
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": msg, "reason": reason, "code": code.as_u16(),
    });
    (code, axum::Json(body)).into_response()
}

/// The caller (a node or an admin) and the PEM certificate request it POSTed, or the
/// response that refuses it.
async fn node_request(
    ident: Option<corral_api::Identity>,
    req: http::Request<hyper::body::Incoming>,
    what: &str,
) -> Result<(corral_api::Identity, String), axum::response::Response> {
    use http::StatusCode;
    let Some(ident) = ident else {
        return Err(status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized".into(),
        ));
    };
    if !ident
        .groups
        .iter()
        .any(|g| g == "system:nodes" || g == "system:masters")
    {
        return Err(status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!("user {:?} may not request {what}", ident.user),
        ));
    }
    if req.method() != http::Method::POST {
        return Err(status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "POST a PEM certificate request".into(),
        ));
    }
    match axum::body::to_bytes(axum::body::Body::new(req.into_body()), 64 * 1024).await {
        Ok(b) => Ok((ident, String::from_utf8_lossy(&b).into_owned())),
        Err(e) => Err(status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("reading the certificate request (at most 64 KiB): {e}"),
        )),
    }
}

/// POST corral_proxy::mtls::SIGNING_PATH: signs a node proxy's request for a mesh
/// identity. Admins may have any identity of the trust domain; nodes (join tokens, which
/// like k3s' are not bound to one node name) a node identity, or a service account's
/// identity only while some pod scheduled to a node runs as that account: a token holder
/// can speak for a workload that runs, never mint one for an account nothing uses.
pub async fn sign_mesh_cert(
    ident: Option<corral_api::Identity>,
    req: http::Request<hyper::body::Incoming>,
    auth: &crate::serve::Auth,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use corral_proxy::mtls::{certs, SpiffeId};
    use http::StatusCode;
    let (ident, csr) = match node_request(ident, req, "mesh certificates").await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let id = match certs::requested_identity(&csr) {
        Ok(id) => id,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e),
    };
    if id.trust_domain() != &*auth.trust_domain {
        return status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "{id} is outside this mesh's trust domain {:?}",
                auth.trust_domain
            ),
        );
    }
    let admin = ident.groups.iter().any(|g| g == "system:masters");
    if let (
        false,
        SpiffeId::Workload {
            namespace,
            service_account,
            ..
        },
    ) = (admin, &id)
    {
        match has_scheduled_pod(&auth.client, namespace, service_account).await {
            Ok(true) => {}
            Ok(false) => {
                return status(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    format!(
                        "no pod on a node runs as service account {namespace}/{service_account}"
                    ),
                )
            }
            Err(e) => {
                return status(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    format!("checking the pods of {namespace}: {e}"),
                )
            }
        }
    }
    match certs::sign(&auth.ca_pem, &auth.ca_key_pem, &csr, &id) {
        Ok(cert) => {
            tracing::info!(user = %ident.user, identity = %id, "signed a mesh certificate");
            (
                [(http::header::CONTENT_TYPE, "application/x-pem-file")],
                cert,
            )
                .into_response()
        }
        Err(e) => status(StatusCode::BAD_REQUEST, "BadRequest", e),
    }
}

async fn has_scheduled_pod(client: &kube::Client, ns: &str, sa: &str) -> Result<bool, kube::Error> {
    use k8s_openapi::api::core::v1::Pod;
    let pods = kube::Api::<Pod>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await?;
    Ok(pods.items.iter().any(|p| {
        p.spec.as_ref().is_some_and(|s| {
            s.node_name.is_some() && s.service_account_name.as_deref().unwrap_or("default") == sa
        })
    }))
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A client for a joining agent: fetches the CA from `server`, trusts it only if it
/// matches the token's hash, then authenticates with the token. Returns the CA (PEM) too.
pub async fn agent_client(server: &str, token: &str) -> Result<(kube::Client, String)> {
    let parts = JoinTokenParts::parse(token).map_err(anyhow::Error::msg)?;
    let url: http::Uri = server
        .parse()
        .with_context(|| format!("--server {server}"))?;
    if url.scheme_str() != Some("https") {
        bail!("--server {server}: must be an https:// URL");
    }
    let ca_pem = fetch_cacerts(&url).await?;
    let got = sha256_hex(ca_pem.as_bytes());
    if got != parts.ca_hash {
        bail!("the server at {server} presented a CA whose hash {got} is not the one in the token: refusing to join");
    }
    let ders = rustls_pemfile::certs(&mut ca_pem.as_bytes())
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut cfg = kube::Config::new(url);
    cfg.root_cert = Some(ders);
    cfg.auth_info.token = Some(parts.bearer().into());
    Ok((kube::Client::try_from(cfg)?, ca_pem))
}

/// GET /cacerts without verifying the server: what it returns is checked against the
/// token's hash before anything trusts it.
async fn fetch_cacerts(url: &http::Uri) -> Result<String> {
    let host = url
        .host()
        .context("--server has no host")?
        .trim_matches(['[', ']'])
        .to_string();
    let port = url.port_u16().unwrap_or(443);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .context("connecting to the server timed out")?
    .with_context(|| format!("connecting to {host}:{port}"))?;
    let name = ServerName::try_from(host.clone())?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await?;
    tls.write_all(
        format!("GET /cacerts HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut buf))
        .await
        .context("reading /cacerts timed out")?
        .ok();
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed /cacerts response")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {url}cacerts: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_string())
}

#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
