//! The HTTPS listener: TLS with optional client certificates (verified against the cluster
//! CA), HTTP/1.1 and HTTP/2 by ALPN, upgrades kept for exec/port-forward, and the caller's
//! identity (certificate CN/O, or a bearer token) attached to each request before it reaches
//! the API router. Requests with neither get no identity, and the API answers 401.

use anyhow::{Context, Result};
use axum::Router;
use corral_api::Identity;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

pub struct TlsFiles<'a> {
    pub ca_pem: &'a str,
    pub cert_pem: &'a str,
    pub key_pem: &'a str,
}

fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("parsing certificate PEM")
}

pub fn tls_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(files.ca_pem)? {
        roots.add(c)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut files.key_pem.as_bytes())?
        .context("no private key in PEM")?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(files.cert_pem)?, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The identity in a verified client certificate: CN is the user, O entries the groups.
fn identity_from_cert(der: &[u8]) -> Option<Identity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let user = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())?
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(String::from))
        .collect();
    Some(Identity { user, groups })
}

/// How callers are recognised, the CA that `/cacerts` hands to joining agents, and its key
/// that signs their serving certificates.
#[derive(Clone)]
pub struct Auth {
    pub tokens: Arc<crate::tokens::Tokens>,
    pub ca_pem: Arc<String>,
    pub ca_key_pem: Arc<String>,
    /// The mesh's trust domain (the cluster domain), for signing mesh certificates.
    pub trust_domain: Arc<str>,
    /// An in-process admin client: signing a workload identity looks at its pods.
    pub client: kube::Client,
}

/// Accept connections until `stop` fires; each connection is served on its own task.
pub async fn run(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    auth: Auth,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.changed() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let auth = auth.clone();
        let mut conn_stop = stop.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(tcp),
            )
            .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let cert_identity = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| identity_from_cert(c.as_ref()));
            let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                let router = router.clone();
                let ident = cert_identity
                    .clone()
                    .or_else(|| bearer_identity(&req, &auth.tokens));
                // The cluster CA, public, for agents that verify it against their token.
                let cacerts = (req.uri().path() == "/cacerts").then(|| auth.ca_pem.clone());
                let signing = (req.uri().path() == crate::join::SERVING_CERT_PATH)
                    .then(|| (auth.ca_pem.clone(), auth.ca_key_pem.clone()));
                let mesh_signing =
                    (req.uri().path() == corral_proxy::mtls::SIGNING_PATH).then(|| auth.clone());
                async move {
                    if let Some(pem) = cacerts {
                        return Ok(axum::response::IntoResponse::into_response((
                            [(hyper::header::CONTENT_TYPE, "application/x-pem-file")],
                            pem.to_string(),
                        )));
                    }
                    if let Some((ca, key)) = signing {
                        return Ok(crate::join::sign_serving_cert(ident, req, &ca, &key).await);
                    }
                    if let Some(auth) = mesh_signing {
                        return Ok(crate::join::sign_mesh_cert(ident, req, &auth).await);
                    }
                    if let Some(i) = ident {
                        req.extensions_mut().insert(i);
                    }
                    let req = req.map(axum::body::Body::new);
                    router.oneshot(req).await
                }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "connection ended with error");
                    }
                }
                _ = conn_stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn).await;
                }
            }
        });
    }
}

fn bearer_identity(req: &Request<Incoming>, tokens: &crate::tokens::Tokens) -> Option<Identity> {
    let h = req
        .headers()
        .get(hyper::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    tokens.identify(h.strip_prefix("Bearer ")?.trim())
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// How the API server reaches node agents: it trusts the cluster CA for their serving
/// certificates and presents a client certificate signed by the same CA.
pub fn kubelet_client_config(pki: &crate::pki::Pki) -> Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(&pki.ca_pem)? {
        roots.add(c)?;
    }
    let key: PrivateKeyDer<'static> =
        rustls_pemfile::private_key(&mut pki.admin_key_pem.as_bytes())?
            .context("no private key in PEM")?;
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs(&pki.admin_cert_pem)?, key)?;
    Ok(Arc::new(cfg))
}
