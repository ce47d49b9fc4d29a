//! The bridge from OpenAPI definition names to the typed k8s-openapi structs: decoding a body
//! through the real type is how wrong types are caught (with the field path) and how unknown
//! fields are dropped, exactly as a Go API server's decoder does; the same types yield the
//! JSON schemas served at /openapi/v3.

use k8s_openapi::api;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
use schemars::{generate::SchemaSettings, SchemaGenerator};
use serde_json::Value;

macro_rules! builtin_types {
    ($($def:literal => $ty:ty),* $(,)?) => {
        /// Decode `v` as the typed kind and encode it again: types are checked, unknown fields
        /// dropped. `Err` carries serde's message, which names the offending field.
        pub fn roundtrip(def: &str, v: Value) -> Result<Value, String> {
            match def {
                $($def => {
                    let typed: $ty = decode(v)?;
                    serde_json::to_value(&typed).map_err(|e| e.to_string())
                })*
                _ => Ok(v),
            }
        }

        /// Add the schema of every built-in kind to `gen`, returning (definition, schema ref).
        pub fn add_schemas(gen: &mut SchemaGenerator) {
            $( let _ = gen.subschema_for::<$ty>(); )*
        }
    };
}

fn decode<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, String> {
    let s = serde_json::to_string(&v).map_err(|e| e.to_string())?;
    let mut de = serde_json::Deserializer::from_str(&s);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde_json appends " at line 1 column N"; positions in our re-encoded text mean
        // nothing to the client.
        let inner = match inner.find(" at line ") {
            Some(i) => inner[..i].to_string(),
            None => inner,
        };
        if path == "." || path.is_empty() {
            inner
        } else {
            format!("{inner} (at .{path})")
        }
    })
}

builtin_types! {
    "io.k8s.api.core.v1.Namespace" => api::core::v1::Namespace,
    "io.k8s.api.core.v1.Pod" => api::core::v1::Pod,
    "io.k8s.api.core.v1.Service" => api::core::v1::Service,
    "io.k8s.api.core.v1.Endpoints" => api::core::v1::Endpoints,
    "io.k8s.api.core.v1.ConfigMap" => api::core::v1::ConfigMap,
    "io.k8s.api.core.v1.Secret" => api::core::v1::Secret,
    "io.k8s.api.core.v1.ServiceAccount" => api::core::v1::ServiceAccount,
    "io.k8s.api.core.v1.Event" => api::core::v1::Event,
    "io.k8s.api.core.v1.Node" => api::core::v1::Node,
    "io.k8s.api.core.v1.PersistentVolume" => api::core::v1::PersistentVolume,
    "io.k8s.api.core.v1.PersistentVolumeClaim" => api::core::v1::PersistentVolumeClaim,
    "io.k8s.api.core.v1.ResourceQuota" => api::core::v1::ResourceQuota,
    "io.k8s.api.core.v1.LimitRange" => api::core::v1::LimitRange,
    "io.k8s.api.core.v1.Binding" => api::core::v1::Binding,
    "io.k8s.api.apps.v1.Deployment" => api::apps::v1::Deployment,
    "io.k8s.api.apps.v1.ReplicaSet" => api::apps::v1::ReplicaSet,
    "io.k8s.api.apps.v1.StatefulSet" => api::apps::v1::StatefulSet,
    "io.k8s.api.apps.v1.DaemonSet" => api::apps::v1::DaemonSet,
    "io.k8s.api.apps.v1.ControllerRevision" => api::apps::v1::ControllerRevision,
    "io.k8s.api.batch.v1.Job" => api::batch::v1::Job,
    "io.k8s.api.batch.v1.CronJob" => api::batch::v1::CronJob,
    "io.k8s.api.networking.v1.Ingress" => api::networking::v1::Ingress,
    "io.k8s.api.networking.v1.IngressClass" => api::networking::v1::IngressClass,
    "io.k8s.api.networking.v1.NetworkPolicy" => api::networking::v1::NetworkPolicy,
    "io.k8s.api.discovery.v1.EndpointSlice" => api::discovery::v1::EndpointSlice,
    "io.k8s.api.autoscaling.v2.HorizontalPodAutoscaler" => api::autoscaling::v2::HorizontalPodAutoscaler,
    "io.k8s.api.autoscaling.v1.HorizontalPodAutoscaler" => api::autoscaling::v1::HorizontalPodAutoscaler,
    "io.k8s.api.autoscaling.v1.Scale" => api::autoscaling::v1::Scale,
    "io.k8s.api.coordination.v1.Lease" => api::coordination::v1::Lease,
    "io.k8s.api.events.v1.Event" => api::events::v1::Event,
    "io.k8s.api.rbac.v1.Role" => api::rbac::v1::Role,
    "io.k8s.api.rbac.v1.RoleBinding" => api::rbac::v1::RoleBinding,
    "io.k8s.api.rbac.v1.ClusterRole" => api::rbac::v1::ClusterRole,
    "io.k8s.api.rbac.v1.ClusterRoleBinding" => api::rbac::v1::ClusterRoleBinding,
    "io.k8s.api.policy.v1.PodDisruptionBudget" => api::policy::v1::PodDisruptionBudget,
    "io.k8s.api.storage.v1.StorageClass" => api::storage::v1::StorageClass,
    "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition" => apiext::CustomResourceDefinition,
}

/// A schema generator that writes OpenAPI 3.0 style (`nullable`, refs under
/// `#/components/schemas/`).
pub fn openapi_generator() -> SchemaGenerator {
    SchemaSettings::openapi3().into_generator()
}
