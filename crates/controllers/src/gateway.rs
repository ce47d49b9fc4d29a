//! Gateway API status for corral's GatewayClasses (controllerName
//! `corral.dev/gateway-controller`), as upstream's conformance expects: the class is
//! Accepted; each Gateway is Accepted and Programmed, lists the Ready nodes' addresses
//! (every node's proxy serves it) and, per listener, its conditions, supported kinds and
//! attached routes; each HTTPRoute gets one `status.parents` entry per parentRef that
//! names a Gateway of ours (or a missing one), with Accepted and ResolvedRefs. Entries of
//! other controllers are left alone.
//!
//! Attachment is decided by `corral_apimachinery::gateway`, the same rules the node proxy
//! routes by. Everything is recomputed on any change: the rules are global (a route's
//! namespace labels, a listener's conflicts with another Gateway's), and clusters hold few
//! Gateways.

use crate::informer::{Informer, Key};
use crate::queue::{Outcome, Queue};
use corral_apimachinery::gateway::{self as gw, Obj, Verdict};
use k8s_openapi::api::core::v1::{Namespace, Node, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

/// A Gateway API object with its spec and status kept as JSON: the typed view is
/// `corral_apimachinery::gateway`'s.
macro_rules! gateway_kind {
    ($t:ident, $kind:literal, $plural:literal, $version:literal, $scope:ty) => {
        #[derive(Clone, Debug, Default, Deserialize, Serialize)]
        pub struct $t {
            pub metadata: ObjectMeta,
            #[serde(default)]
            pub spec: Value,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub status: Option<Value>,
        }

        impl Resource for $t {
            type DynamicType = ();
            type Scope = $scope;
            fn kind(_: &()) -> Cow<'_, str> {
                $kind.into()
            }
            fn group(_: &()) -> Cow<'_, str> {
                gw::GROUP.into()
            }
            fn version(_: &()) -> Cow<'_, str> {
                $version.into()
            }
            fn plural(_: &()) -> Cow<'_, str> {
                $plural.into()
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope};
gateway_kind!(
    GatewayClass,
    "GatewayClass",
    "gatewayclasses",
    "v1",
    ClusterResourceScope
);
gateway_kind!(Gateway, "Gateway", "gateways", "v1", NamespaceResourceScope);
gateway_kind!(
    HttpRoute,
    "HTTPRoute",
    "httproutes",
    "v1",
    NamespaceResourceScope
);
gateway_kind!(
    ReferenceGrant,
    "ReferenceGrant",
    "referencegrants",
    "v1beta1",
    NamespaceResourceScope
);

pub struct Controller {
    client: Client,
    pub classes: Informer<GatewayClass>,
    pub gateways: Informer<Gateway>,
    pub routes: Informer<HttpRoute>,
    pub grants: Informer<ReferenceGrant>,
    pub secrets: Informer<Secret>,
    namespaces: Informer<Namespace>,
    services: Informer<Service>,
    nodes: Informer<Node>,
    queue: Queue,
}

fn all() -> Key {
    Key::new("", "all")
}

fn obj<S: serde::de::DeserializeOwned + Default>(meta: &ObjectMeta, spec: &Value) -> Obj<S> {
    Obj {
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        created: meta
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
        generation: meta.generation.unwrap_or(0),
        spec: serde_json::from_value(spec.clone()).unwrap_or_default(),
    }
}

fn sorted<K: Resource>(mut v: Vec<Arc<K>>) -> Vec<Arc<K>> {
    v.sort_by(|a, b| {
        let key = |o: &K| {
            (
                o.meta().creation_timestamp.as_ref().map(|t| t.0),
                o.meta().namespace.clone(),
                o.meta().name.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    v
}

impl Controller {
    pub fn new(
        client: Client,
        namespaces: Informer<Namespace>,
        services: Informer<Service>,
        nodes: Informer<Node>,
    ) -> Self {
        Controller {
            client,
            classes: Informer::new("GatewayClass"),
            gateways: Informer::new("Gateway"),
            routes: Informer::new("HTTPRoute"),
            grants: Informer::new("ReferenceGrant"),
            secrets: Informer::new("Secret"),
            namespaces,
            services,
            nodes,
            queue: Queue::new("gateway-status"),
        }
    }

    /// Everything that moves a status requeues the one key.
    pub fn register(self: &Arc<Self>) -> Queue {
        macro_rules! requeue_on {
            ($inf:expr) => {{
                let q = self.queue.clone();
                $inf.on_change(move |_| q.add(all()));
            }};
        }
        requeue_on!(self.classes);
        requeue_on!(self.gateways);
        requeue_on!(self.routes);
        requeue_on!(self.grants);
        requeue_on!(self.secrets);
        requeue_on!(self.namespaces);
        requeue_on!(self.services);
        let q = self.queue.clone();
        crate::servicelb::on_node_address_change(&self.nodes, move || q.add(all()));
        self.queue.clone()
    }

    pub async fn reconcile(&self, _key: Key) -> Outcome {
        let Some(writes) = self.desired() else {
            // Judging from a partial list would flap statuses.
            return Ok(Some(Duration::from_secs(1)));
        };
        for w in writes {
            let c = self.client.clone();
            match w {
                Write::Class(name, st) => patch(Api::<GatewayClass>::all(c), &name, st).await?,
                Write::Gateway(ns, name, st) => {
                    patch(Api::<Gateway>::namespaced(c, &ns), &name, st).await?
                }
                Write::Route(ns, name, st) => {
                    patch(Api::<HttpRoute>::namespaced(c, &ns), &name, st).await?
                }
            }
        }
        Ok(None)
    }

    /// The statuses that differ from what is stored; None until every list is in.
    fn desired(&self) -> Option<Vec<Write>> {
        let mut writes = Vec::new();
        let synced = self.classes.is_synced()
            && self.gateways.is_synced()
            && self.routes.is_synced()
            && self.grants.is_synced()
            && self.secrets.is_synced();
        if !synced {
            return None;
        }
        let classes = sorted(self.classes.list(|_| true));
        let gateways = sorted(self.gateways.list(|_| true));
        let routes = sorted(self.routes.list(|_| true));
        let grants = sorted(self.grants.list(|_| true));
        let class_objs: Vec<Obj<gw::GatewayClassSpec>> =
            classes.iter().map(|c| obj(&c.metadata, &c.spec)).collect();
        let gw_objs: Vec<Obj<gw::GatewaySpec>> =
            gateways.iter().map(|g| obj(&g.metadata, &g.spec)).collect();
        let route_objs: Vec<Obj<gw::HttpRouteSpec>> =
            routes.iter().map(|r| obj(&r.metadata, &r.spec)).collect();
        let grant_objs: Vec<Obj<gw::ReferenceGrantSpec>> =
            grants.iter().map(|g| obj(&g.metadata, &g.spec)).collect();
        let labels = |ns: &str| {
            self.namespaces
                .get(&Key::new("", ns))
                .map(|n| n.labels().clone())
        };
        let service_exists =
            |ns: &str, name: &str| self.services.get(&Key::new(ns, name)).is_some();
        let secret_exists = |ns: &str, name: &str| self.secrets.get(&Key::new(ns, name)).is_some();
        let w = gw::World {
            classes: &class_objs,
            gateways: &gw_objs,
            routes: &route_objs,
            grants: &grant_objs,
            namespace_labels: &labels,
            service_exists: &service_exists,
            tls_secret_exists: &secret_exists,
        };
        let att = gw::attach(&w);
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        for c in &classes {
            let o = obj::<gw::GatewayClassSpec>(&c.metadata, &c.spec);
            if o.spec.controller_name != gw::CONTROLLER {
                continue;
            }
            let old = c.status.clone().unwrap_or_default();
            let conds = vec![condition(
                &old["conditions"],
                "Accepted",
                &Verdict::Yes("Accepted"),
                "Handled by corral's node proxies",
                o.generation,
                &now,
            )];
            let mut status = old.clone();
            status["conditions"] = Value::Array(conds);
            if status != old {
                writes.push(Write::Class(o.name.clone(), status));
            }
        }
        let addresses: Vec<Value> = crate::servicelb::ready_node_ips(&self.nodes)
            .into_iter()
            .map(|ip| json!({"type": "IPAddress", "value": ip}))
            .collect();
        for (gi, gs) in &att.gateways {
            let g = &gateways[*gi];
            let spec = &gw_objs[*gi];
            let old = g.status.clone().unwrap_or_default();
            let gen = spec.generation;
            let mut listeners = Vec::new();
            for (li, ls) in gs.listeners.iter().enumerate() {
                let l = &spec.spec.listeners[li];
                let old_l = old["listeners"]
                    .as_array()
                    .and_then(|a| a.iter().find(|x| x["name"] == l.name.as_str()))
                    .cloned()
                    .unwrap_or_default();
                let kinds = l
                    .allowed_routes
                    .as_ref()
                    .map(|a| a.kinds.clone())
                    .unwrap_or_default();
                let http_ok = kinds.is_empty()
                    || kinds.iter().any(|k| {
                        k.kind == "HTTPRoute"
                            && k.group.as_deref().unwrap_or(gw::GROUP) == gw::GROUP
                    });
                let supported = if http_ok && ls.accepted.ok() {
                    json!([{"group": gw::GROUP, "kind": "HTTPRoute"}])
                } else {
                    json!([])
                };
                let mut resolved = ls.resolved_refs.clone();
                if resolved.ok() && (!http_ok || kinds.len() > 1) {
                    resolved =
                        Verdict::No("InvalidRouteKinds", "only HTTPRoutes are supported".into());
                }
                let conflicted = match &ls.conflicted {
                    Some((reason, msg)) => (Verdict::No(reason, msg.clone()), true),
                    None => (Verdict::Yes("NoConflicts"), false),
                };
                let programmed = if ls.serves() && gs.accepted.ok() {
                    Verdict::Yes("Programmed")
                } else {
                    Verdict::No("Invalid", "the listener is not served".into())
                };
                let oc = &old_l["conditions"];
                listeners.push(json!({
                    "name": l.name,
                    "supportedKinds": supported,
                    "attachedRoutes": ls.attached_routes,
                    "conditions": [
                        condition(oc, "Accepted", &ls.accepted, "", gen, &now),
                        condition(oc, "ResolvedRefs", &resolved, "", gen, &now),
                        conflict_condition(oc, &conflicted, gen, &now),
                        condition(oc, "Programmed", &programmed, "", gen, &now),
                    ],
                }));
            }
            let programmed = if !gs.accepted.ok() {
                Verdict::No("Invalid", "the Gateway is not accepted".into())
            } else if addresses.is_empty() {
                Verdict::No("AddressNotAssigned", "no node is Ready".into())
            } else {
                Verdict::Yes("Programmed")
            };
            let oc = &old["conditions"];
            let mut status = old.clone();
            status["conditions"] = json!([
                condition(oc, "Accepted", &gs.accepted, "", gen, &now),
                condition(
                    oc,
                    "Programmed",
                    &programmed,
                    "Served by every Ready node's proxy",
                    gen,
                    &now
                ),
            ]);
            status["addresses"] = Value::Array(addresses.clone());
            status["listeners"] = Value::Array(listeners);
            if status != old {
                writes.push(Write::Gateway(
                    gs.namespace.clone(),
                    gs.name.clone(),
                    status,
                ));
            }
        }
        for (ri, r) in routes.iter().enumerate() {
            let old = r.status.clone().unwrap_or_default();
            let old_parents = old["parents"].as_array().cloned().unwrap_or_default();
            let mut parents: Vec<Value> = old_parents
                .iter()
                .filter(|p| p["controllerName"] != gw::CONTROLLER)
                .cloned()
                .collect();
            let gen = route_objs[ri].generation;
            if let Some(rs) = att.routes.get(&ri) {
                for p in &rs.parents {
                    let parent_ref = serde_json::to_value(&p.parent).unwrap_or_default();
                    let oc = old_parents
                        .iter()
                        .find(|o| {
                            o["parentRef"] == parent_ref && o["controllerName"] == gw::CONTROLLER
                        })
                        .map(|o| o["conditions"].clone())
                        .unwrap_or_default();
                    parents.push(json!({
                        "parentRef": parent_ref,
                        "controllerName": gw::CONTROLLER,
                        "conditions": [
                            condition(&oc, "Accepted", &p.accepted, "", gen, &now),
                            condition(&oc, "ResolvedRefs", &p.resolved_refs, "", gen, &now),
                        ],
                    }));
                }
            }
            let mut status = old.clone();
            status["parents"] = Value::Array(parents);
            if status != old && !(old.get("parents").is_none() && status["parents"] == json!([])) {
                let ns = r.metadata.namespace.clone().unwrap_or_default();
                writes.push(Write::Route(ns, r.name_any(), status));
            }
        }
        Some(writes)
    }
}

enum Write {
    Class(String, Value),
    Gateway(String, String, Value),
    Route(String, String, Value),
}

async fn patch<K>(api: Api<K>, name: &str, status: Value) -> Result<(), crate::Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    // A JSON merge patch of the whole status: lists are replaced, as they should be.
    match api
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status})),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Deleted meanwhile: nothing to report.
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A metav1.Condition, keeping the old transition time while the status holds.
fn condition(old: &Value, ty: &str, v: &Verdict, ok_message: &str, gen: i64, now: &str) -> Value {
    let (status, reason, message) = match v {
        Verdict::Yes(r) => ("True", *r, ok_message.to_string()),
        Verdict::No(r, m) => ("False", *r, m.clone()),
    };
    make(old, ty, status, reason, &message, gen, now)
}

/// Conflicted is True when there is a conflict.
fn conflict_condition(old: &Value, c: &(Verdict, bool), gen: i64, now: &str) -> Value {
    let (status, reason, message) = match &c.0 {
        Verdict::Yes(r) => ("False", *r, String::new()),
        Verdict::No(r, m) => ("True", *r, m.clone()),
    };
    make(old, "Conflicted", status, reason, &message, gen, now)
}

fn make(
    old: &Value,
    ty: &str,
    status: &str,
    reason: &str,
    message: &str,
    gen: i64,
    now: &str,
) -> Value {
    let prev = old
        .as_array()
        .and_then(|a| a.iter().find(|c| c["type"] == ty));
    let since = prev
        .filter(|p| p["status"] == status)
        .and_then(|p| p["lastTransitionTime"].as_str())
        .unwrap_or(now);
    json!({"type": ty, "status": status, "reason": reason, "message": message,
           "observedGeneration": gen, "lastTransitionTime": since})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_keep_their_transition_time() {
        let old = json!([{"type": "Accepted", "status": "True", "lastTransitionTime": "then"}]);
        let c = condition(&old, "Accepted", &Verdict::Yes("Accepted"), "", 2, "now");
        assert_eq!(c["lastTransitionTime"], "then");
        assert_eq!(c["observedGeneration"], 2);
        let c = condition(
            &old,
            "Accepted",
            &Verdict::No("NotAllowedByListeners", "x".into()),
            "",
            2,
            "now",
        );
        assert_eq!(c["lastTransitionTime"], "now");
        assert_eq!(c["reason"], "NotAllowedByListeners");
    }

    #[test]
    fn objects_parse_from_the_wire() {
        let r: HttpRoute = serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "r", "namespace": "a", "generation": 3},
            "spec": {"parentRefs": [{"name": "gw"}]}
        }))
        .unwrap();
        let o: Obj<gw::HttpRouteSpec> = obj(&r.metadata, &r.spec);
        assert_eq!(o.spec.parent_refs[0].name, "gw");
        assert_eq!(o.generation, 3);
        assert_eq!(HttpRoute::plural(&()), "httproutes");
    }
}
