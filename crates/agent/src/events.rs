//! Events about pods, as the kubelet records them (source component `kubelet`, host = the
//! node), so `kubectl describe pod` shows what happened. A repeat of the same event for the
//! same object bumps its count instead of creating another, as Kubernetes' recorder does.
//! Recording never blocks or fails the caller: the write runs in a task, errors are logged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};

/// (object uid, reason, message) -> (event name, count).
type Seen = HashMap<(String, String, String), (String, i32)>;

#[derive(Clone)]
pub struct Recorder {
    client: Client,
    host: String,
    seen: Arc<Mutex<Seen>>,
}

impl Recorder {
    pub fn new(client: Client, host: String) -> Recorder {
        Recorder {
            client,
            host,
            seen: Default::default(),
        }
    }

    pub fn warning(&self, pod: &Pod, reason: &str, message: impl Into<String>) {
        self.record(pod, None, "Warning", reason, message.into())
    }

    /// An event about one container of the pod (`involvedObject.fieldPath`).
    pub fn container(
        &self,
        pod: &Pod,
        field_path: String,
        type_: &str,
        reason: &str,
        message: impl Into<String>,
    ) {
        self.record(pod, Some(field_path), type_, reason, message.into())
    }

    /// Forgets the counts kept for a pod that is gone.
    pub fn forget(&self, uid: &str) {
        self.seen.lock().unwrap().retain(|k, _| k.0 != uid);
    }

    fn record(
        &self,
        pod: &Pod,
        field_path: Option<String>,
        type_: &str,
        reason: &str,
        message: String,
    ) {
        let now = Timestamp::now();
        let ns = pod.namespace().unwrap_or_else(|| "default".into());
        let uid = pod.uid().unwrap_or_default();
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        let key = (uid.clone(), reason.to_string(), message.clone());
        let repeat = {
            let mut seen = self.seen.lock().unwrap();
            match seen.get_mut(&key) {
                Some((name, count)) => {
                    *count += 1;
                    Some((name.clone(), *count))
                }
                None => {
                    let name = format!("{}.{:x}", pod.name_any(), now.as_nanosecond());
                    seen.insert(key.clone(), (name, 1));
                    None
                }
            }
        };
        if let Some((name, count)) = repeat {
            let patch = serde_json::json!({
                "count": count,
                "lastTimestamp": Time(now),
            });
            tokio::spawn(async move {
                if let Err(e) = api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    tracing::debug!(error = %e, "updating an event failed");
                }
            });
            return;
        }
        let name = self.seen.lock().unwrap().get(&key).map(|v| v.0.clone());
        let ev = Event {
            metadata: ObjectMeta {
                name,
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name_any()),
                namespace: Some(ns),
                uid: Some(uid),
                resource_version: pod.resource_version(),
                field_path,
            },
            reason: Some(reason.into()),
            message: Some(message),
            type_: Some(type_.into()),
            source: Some(EventSource {
                component: Some("kubelet".into()),
                host: Some(self.host.clone()),
            }),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            count: Some(1),
            reporting_component: Some("kubelet".into()),
            reporting_instance: Some(self.host.clone()),
            ..Default::default()
        };
        tokio::spawn(async move {
            if let Err(e) = api.create(&PostParams::default(), &ev).await {
                tracing::debug!(error = %e, "recording an event failed");
            }
        });
    }
}
