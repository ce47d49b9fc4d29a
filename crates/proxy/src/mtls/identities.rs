//! The identities this proxy speaks for: its node's and those of the service accounts
//! whose pods run here, each a key made here and a certificate from the cluster CA, got
//! when first needed and renewed when past half its life. A lookup of a valid one is a
//! map read; getting a new one (a key, a request, a round trip to the API server) happens
//! once per identity per half-day, one at a time.

use super::certs::{self, Credential};
use super::SpiffeId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Who signs this proxy's certificate requests.
#[derive(Clone)]
pub enum Issuer {
    /// The server's own node, which holds the CA key.
    SignWith { ca_key_pem: String },
    /// A joining node: the API server signs, after checking that this node may have the
    /// identity (its own node name; a service account of a pod it runs).
    RequestFromServer { client: kube::Client },
}

/// One identity's credentials, in the forms TLS uses.
struct Held {
    cred: Credential,
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
}

pub struct Identities {
    ca_pem: String,
    issuer: Issuer,
    node: SpiffeId,
    held: Mutex<HashMap<SpiffeId, Arc<Held>>>,
    /// Serialises issuing, so a burst of connections asks for a certificate once.
    issuing: tokio::sync::Mutex<()>,
}

impl Identities {
    pub fn new(ca_pem: String, issuer: Issuer, trust_domain: &str, node_name: &str) -> Self {
        Identities {
            ca_pem,
            issuer,
            node: SpiffeId::node(trust_domain, node_name),
            held: Mutex::default(),
            issuing: tokio::sync::Mutex::new(()),
        }
    }

    pub fn node(&self) -> &SpiffeId {
        &self.node
    }

    pub fn trust_domain(&self) -> &str {
        self.node.trust_domain()
    }

    /// The TLS client config that presents `id`.
    pub async fn client_config(&self, id: &SpiffeId) -> Result<Arc<rustls::ClientConfig>, String> {
        Ok(self.get(id).await?.client.clone())
    }

    /// The tunnel's TLS server config: the node's certificate.
    pub async fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        Ok(self.get(&self.node.clone()).await?.server.clone())
    }

    /// Forgets the certificates of identities `keep` refuses (the node's own is always
    /// kept), so the service accounts of pods long gone do not pile up.
    pub fn retain(&self, keep: impl Fn(&SpiffeId) -> bool) {
        let node = &self.node;
        self.held
            .lock()
            .unwrap()
            .retain(|id, _| id == node || keep(id));
    }

    /// How many identities hold a certificate (for tests).
    pub fn held(&self) -> usize {
        self.held.lock().unwrap().len()
    }

    fn valid(&self, id: &SpiffeId) -> Option<Arc<Held>> {
        let held = self.held.lock().unwrap();
        held.get(id).filter(|h| !h.cred.due()).cloned()
    }

    async fn get(&self, id: &SpiffeId) -> Result<Arc<Held>, String> {
        if let Some(h) = self.valid(id) {
            return Ok(h);
        }
        let _one = self.issuing.lock().await;
        if let Some(h) = self.valid(id) {
            return Ok(h);
        }
        let (key_pem, csr_pem) = certs::request(id)?;
        let cert_pem = match &self.issuer {
            Issuer::SignWith { ca_key_pem } => certs::sign(&self.ca_pem, ca_key_pem, &csr_pem, id)?,
            Issuer::RequestFromServer { client } => {
                let req = http::Request::post(super::SIGNING_PATH)
                    .header(http::header::CONTENT_TYPE, "application/pkcs10")
                    .body(csr_pem.into_bytes())
                    .map_err(|e| e.to_string())?;
                client
                    .request_text(req)
                    .await
                    .map_err(|e| format!("requesting a certificate for {id}: {e}"))?
            }
        };
        let cred = Credential::from_pem(&cert_pem, &key_pem)?;
        let held = Arc::new(Held {
            client: certs::client_config(&self.ca_pem, &cred)?,
            server: certs::server_config(&self.ca_pem, &cred)?,
            cred,
        });
        tracing::info!(identity = %id, "mesh certificate issued");
        self.held.lock().unwrap().insert(id.clone(), held.clone());
        Ok(held)
    }
}
