//! Records Events (core/v1) about objects, as Kubernetes' event recorder does, so that
//! `kubectl describe` shows what a controller did. Recording never blocks or fails the
//! reconcile that records: it is sent from a task and a failure is only logged.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client, Resource, ResourceExt};

#[derive(Clone)]
pub struct Recorder {
    client: Client,
    component: &'static str,
}

impl Recorder {
    pub fn new(client: Client, component: &'static str) -> Recorder {
        Recorder { client, component }
    }

    pub fn with_component(&self, component: &'static str) -> Recorder {
        Recorder {
            client: self.client.clone(),
            component,
        }
    }

    pub fn normal<K: Resource<DynamicType = ()>>(&self, obj: &K, reason: &str, message: String) {
        self.record(obj, "Normal", reason, message)
    }

    pub fn warning<K: Resource<DynamicType = ()>>(&self, obj: &K, reason: &str, message: String) {
        self.record(obj, "Warning", reason, message)
    }

    fn record<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: &str,
        reason: &str,
        message: String,
    ) {
        let now = Timestamp::now();
        let ns = obj.namespace().unwrap_or_else(|| "default".into());
        let name = obj.name_any();
        let ev = Event {
            metadata: ObjectMeta {
                name: Some(format!("{name}.{:x}", now.as_nanosecond())),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some(K::api_version(&()).into_owned()),
                kind: Some(K::kind(&()).into_owned()),
                name: Some(name),
                namespace: obj.namespace(),
                uid: obj.meta().uid.clone(),
                resource_version: obj.meta().resource_version.clone(),
                ..Default::default()
            },
            reason: Some(reason.into()),
            message: Some(message),
            type_: Some(type_.into()),
            source: Some(EventSource {
                component: Some(self.component.into()),
                host: None,
            }),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: None::<MicroTime>,
            count: Some(1),
            reporting_component: Some(self.component.into()),
            reporting_instance: Some(self.component.into()),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        let component = self.component;
        tokio::spawn(async move {
            if let Err(e) = api.create(&PostParams::default(), &ev).await {
                tracing::debug!(component, error = %e, "recording an event failed");
            }
        });
    }
}
