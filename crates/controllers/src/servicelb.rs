//! The service load balancer, as k3s' ServiceLB: a LoadBalancer Service is answered on
//! every node's address at its own port (each node's proxy binds it), so its
//! status.loadBalancer.ingress lists the InternalIPs of the nodes that are Ready. A
//! Service with a loadBalancerClass belongs to another implementation and is left alone.

use crate::informer::{Change, Informer, Key};
use crate::nodeutil::ready_status;
use crate::queue::{Outcome, Queue};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{json, Value};
use std::sync::Arc;

pub struct Controller {
    client: Client,
    services: Informer<Service>,
    nodes: Informer<Node>,
    queue: Queue,
}

fn is_ours(svc: &Service) -> bool {
    svc.spec.as_ref().is_some_and(|s| {
        s.type_.as_deref() == Some("LoadBalancer") && s.load_balancer_class.is_none()
    })
}

impl Controller {
    pub fn new(client: Client, services: Informer<Service>, nodes: Informer<Node>) -> Self {
        Controller {
            client,
            services,
            nodes,
            queue: Queue::new("servicelb"),
        }
    }

    pub fn register(self: &Arc<Self>) -> Queue {
        let q = self.queue.clone();
        self.services.on_change(move |c| {
            if let Change::Applied { new, .. } = c {
                q.add(Key::of(*new));
            }
        });
        let (q, services) = (self.queue.clone(), self.services.clone());
        on_node_address_change(&self.nodes, move || {
            for svc in services.list(is_ours) {
                q.add(Key::of(&*svc));
            }
        });
        self.queue.clone()
    }

    /// The ingress a LoadBalancer Service should show: one entry per Ready node.
    fn ingress(&self) -> Vec<Value> {
        ready_node_ips(&self.nodes)
            .into_iter()
            .map(|ip| json!({"ip": ip, "ipMode": "VIP"}))
            .collect()
    }

    pub async fn reconcile(&self, key: Key) -> Outcome {
        let Some(svc) = self.services.get(&key) else {
            return Ok(None);
        };
        let current = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.clone())
            .unwrap_or_default();
        let want = if is_ours(&svc) {
            self.ingress()
        } else if svc
            .spec
            .as_ref()
            .is_some_and(|s| s.type_.as_deref() != Some("LoadBalancer"))
        {
            // No longer a LoadBalancer: clear what this controller published.
            Vec::new()
        } else {
            return Ok(None);
        };
        let current: Vec<Value> = current
            .iter()
            .map(|i| serde_json::to_value(i).unwrap_or_default())
            .collect();
        if current == want {
            return Ok(None);
        }
        let patch = json!({"status": {"loadBalancer": {"ingress": want}}});
        Api::<Service>::namespaced(self.client.clone(), &key.namespace)
            .patch_status(
                &svc.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        Ok(None)
    }
}

/// The InternalIPs of the Ready nodes, sorted: where a LoadBalancer or Ingress answers.
pub(crate) fn ready_node_ips(nodes: &Informer<Node>) -> Vec<String> {
    let mut ips: Vec<String> = nodes
        .list(|n| ready_status(n) == Some("True"))
        .iter()
        .filter_map(|n| internal_ip(n))
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// Calls `requeue` when a node comes, goes, or changes readiness or address: what moves
/// the addresses published in statuses.
pub(crate) fn on_node_address_change(
    nodes: &Informer<Node>,
    requeue: impl Fn() + Send + Sync + 'static,
) {
    nodes.on_change(move |c| {
        let changed = match c {
            Change::Applied {
                old: Some(old),
                new,
            } => ready_status(old) != ready_status(new) || internal_ip(old) != internal_ip(new),
            _ => true,
        };
        if changed {
            requeue();
        }
    });
}

fn internal_ip(node: &Node) -> Option<String> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|a| a.type_ == "InternalIP")
        .map(|a| a.address.clone())
}

/// The same for Ingresses of the `corral` class (or of no class: corral's is the default):
/// every node answers them, so their status lists the Ready nodes' addresses and
/// `kubectl get ingress` shows where to send traffic.
pub struct IngressStatus {
    client: Client,
    ingresses: Informer<Ingress>,
    nodes: Informer<Node>,
    queue: Queue,
}

fn is_corral_ingress(ing: &Ingress) -> bool {
    let class = ing
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.clone())
        .or_else(|| {
            ing.annotations()
                .get("kubernetes.io/ingress.class")
                .cloned()
        });
    class.is_none_or(|c| c == "corral")
}

impl IngressStatus {
    pub fn new(client: Client, ingresses: Informer<Ingress>, nodes: Informer<Node>) -> Self {
        IngressStatus {
            client,
            ingresses,
            nodes,
            queue: Queue::new("ingress-status"),
        }
    }

    pub fn register(self: &Arc<Self>) -> Queue {
        let q = self.queue.clone();
        self.ingresses.on_change(move |c| {
            if let Change::Applied { new, .. } = c {
                q.add(Key::of(*new));
            }
        });
        let (q, ingresses) = (self.queue.clone(), self.ingresses.clone());
        on_node_address_change(&self.nodes, move || {
            for ing in ingresses.list(is_corral_ingress) {
                q.add(Key::of(&*ing));
            }
        });
        self.queue.clone()
    }

    pub async fn reconcile(&self, key: Key) -> Outcome {
        let Some(ing) = self.ingresses.get(&key) else {
            return Ok(None);
        };
        if !is_corral_ingress(&ing) {
            return Ok(None);
        }
        let want: Vec<Value> = ready_node_ips(&self.nodes)
            .into_iter()
            .map(|ip| json!({"ip": ip}))
            .collect();
        let current: Vec<Value> = ing
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .map(|i| serde_json::to_value(i).unwrap_or_default())
            .collect();
        if current == want {
            return Ok(None);
        }
        let patch = json!({"status": {"loadBalancer": {"ingress": want}}});
        Api::<Ingress>::namespaced(self.client.clone(), &key.namespace)
            .patch_status(
                &ing.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        Ok(None)
    }
}
