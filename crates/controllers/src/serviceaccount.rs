//! Per-namespace defaults Kubernetes' controller manager provides: the `default`
//! ServiceAccount (serviceaccount controller) and the `kube-root-ca.crt` ConfigMap holding
//! the cluster CA (root-ca-cert-publisher), recreated if deleted and corrected if edited.

use crate::informer::Key;
use crate::queue::Outcome;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";

pub struct Controller {
    client: Client,
    namespaces: crate::informer::Informer<Namespace>,
    root_ca_pem: Option<String>,
}

impl Controller {
    pub fn new(
        client: Client,
        namespaces: crate::informer::Informer<Namespace>,
        root_ca_pem: Option<String>,
    ) -> Controller {
        Controller {
            client,
            namespaces,
            root_ca_pem,
        }
    }

    /// Reconciles one namespace (the key's name).
    pub async fn reconcile(&self, key: Key) -> Outcome {
        let Some(ns) = self.namespaces.get(&Key::new("", key.name.clone())) else {
            return Ok(None);
        };
        if ns.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let name = key.name;
        let sa: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &name);
        if sa.get_opt("default").await?.is_none() {
            let obj = ServiceAccount {
                metadata: ObjectMeta {
                    name: Some("default".into()),
                    ..Default::default()
                },
                ..Default::default()
            };
            ignore_exists(sa.create(&PostParams::default(), &obj).await)?;
        }
        if let Some(ca) = &self.root_ca_pem {
            let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), &name);
            match cms.get_opt(ROOT_CA_CONFIGMAP).await? {
                None => {
                    let cm = ConfigMap {
                        metadata: ObjectMeta {
                            name: Some(ROOT_CA_CONFIGMAP.into()),
                            annotations: Some(
                                [(
                                    "kubernetes.io/description".to_string(),
                                    "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.".to_string(),
                                )]
                                .into(),
                            ),
                            ..Default::default()
                        },
                        data: Some([("ca.crt".to_string(), ca.clone())].into()),
                        ..Default::default()
                    };
                    ignore_exists(cms.create(&PostParams::default(), &cm).await)?;
                }
                Some(cm) if cm.data.as_ref().and_then(|d| d.get("ca.crt")) != Some(ca) => {
                    let patch = json!({"data": {"ca.crt": ca}});
                    cms.patch(
                        ROOT_CA_CONFIGMAP,
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await?;
                }
                Some(_) => {}
            }
        }
        Ok(None)
    }
}

fn ignore_exists<T>(r: Result<T, kube::Error>) -> Result<(), crate::Error> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        // The namespace is being deleted: nothing to provide.
        Err(kube::Error::Api(e)) if e.code == 403 || e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
