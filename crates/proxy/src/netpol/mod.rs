//! NetworkPolicy (networking.k8s.io/v1), compiled from a [`ClusterView`] into one
//! decision, [`NetPolicies::allows`]: may `src` open a connection (or send a datagram) to
//! `dst:port`? It has Kubernetes' meaning:
//!
//! - A pod selected by some policy whose policyTypes include Ingress is isolated for
//!   ingress and accepts only what a rule of one of those policies allows; likewise for
//!   egress on the source pod. Both must allow. policyTypes default as upstream: Ingress
//!   always, Egress when the policy has egress rules.
//! - Peers: a podSelector (pods of the policy's namespace), a namespaceSelector (every pod
//!   of the namespaces it selects, by their labels, `kubernetes.io/metadata.name`
//!   included), both (pods matching the one in namespaces matching the other), or an
//!   ipBlock (cidr minus except). No `from`/`to` means every peer, no `ports` every port.
//! - Ports: a number, a number with endPort (a range), or a name, resolved against the
//!   destination pod's container ports of that protocol; protocol TCP unless given.
//! - The node itself (its address, the bridge gateway it reaches pods from, loopback and
//!   the Service addresses the proxy owns) may always connect to its pods, as kubelet
//!   probes need and most CNIs allow. Egress to those addresses is not judged either:
//!   they lead to the proxy, which judges the endpoint it connects to. The cluster DNS
//!   address is the exception: it is not a pod, so egress to it is allowed only by a rule
//!   that allows its address (an ipBlock) or its port with no `to`, as users write for
//!   DNS in Kubernetes.
//!
//! Two places enforce the decision: the proxy, for every connection or request it makes to
//! an endpoint on a client's behalf (so a Service is no way around a policy), and
//! [`packet`], for traffic from pod to pod straight over the node bridge.

pub mod bpf;
mod cidr;
pub mod enforcer;
pub mod packet;
mod selector;
#[cfg(test)]
mod tests;

pub use cidr::Ipv4Net;
pub use selector::Selector;

use crate::pods::PodMeta;
use crate::view::{ClusterView, Protocol};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt as _;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

/// The label every namespace carries with its own name (the API server sets it; it is
/// assumed when missing, so a namespace the proxy has not seen yet still matches).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

/// One policy, compiled.
#[derive(Debug)]
pub(crate) struct Policy {
    pub namespace: String,
    pub selector: Selector,
    /// Some when the policy isolates its pods for ingress (then only these rules allow).
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

#[derive(Debug)]
pub(crate) struct Rule {
    /// None: every peer.
    pub peers: Option<Vec<Peer>>,
    /// None: every port of every protocol.
    pub ports: Option<Vec<Port>>,
}

#[derive(Debug)]
pub(crate) enum Peer {
    /// Pods matching `pods` in the policy's namespace (`namespaces` None) or in the
    /// namespaces `namespaces` selects.
    Pods {
        namespaces: Option<Selector>,
        pods: Selector,
    },
    Block {
        cidr: Ipv4Net,
        except: Vec<Ipv4Net>,
    },
    /// A peer corral cannot match (an IPv6 block, a peer with no field set): none.
    Nothing,
}

#[derive(Debug)]
pub(crate) struct Port {
    pub protocol: Protocol,
    pub port: PortMatch,
}

#[derive(Debug, PartialEq)]
pub(crate) enum PortMatch {
    Any,
    Range(u16, u16),
    Named(String),
    /// An invalid port (0, out of range): matches nothing.
    Nothing,
}

/// Every NetworkPolicy of the cluster with what it is judged against.
#[derive(Debug, Default)]
pub struct NetPolicies {
    pub(crate) policies: Vec<Policy>,
    by_namespace: HashMap<String, Vec<usize>>,
    pub(crate) pods_by_ip: Arc<HashMap<IpAddr, Arc<PodMeta>>>,
    namespaces: HashMap<String, Arc<BTreeMap<String, String>>>,
    /// The node's own addresses (see the module comment).
    host: HashSet<IpAddr>,
}

impl NetPolicies {
    /// Compiles the view's policies. `host` lists the node's addresses (its IP, the
    /// bridge gateway); loopback and the Service addresses are added, except
    /// `cluster_dns`.
    pub fn compile(view: &ClusterView, host: &[IpAddr], cluster_dns: Option<IpAddr>) -> Self {
        let mut out = NetPolicies {
            pods_by_ip: view.pods_by_ip.clone(),
            ..Default::default()
        };
        for np in &view.network_policies {
            let p = compile_policy(np);
            out.by_namespace
                .entry(p.namespace.clone())
                .or_default()
                .push(out.policies.len());
            out.policies.push(p);
        }
        for (name, labels) in view.namespaces.iter() {
            let mut labels = labels.clone();
            if !labels.contains_key(NAMESPACE_NAME_LABEL) {
                Arc::make_mut(&mut labels).insert(NAMESPACE_NAME_LABEL.into(), name.clone());
            }
            out.namespaces.insert(name.clone(), labels);
        }
        out.host.extend(host.iter().copied());
        for svc in view.services.values() {
            out.host.extend(svc.cluster_ips.iter().copied());
        }
        if let Some(dns) = cluster_dns {
            out.host.remove(&dns);
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Whether `ip` is the node itself.
    pub fn is_host(&self, ip: IpAddr) -> bool {
        ip.is_loopback() || (self.host.contains(&ip) && !self.pods_by_ip.contains_key(&ip))
    }

    /// May `src` reach `dst:port` over `protocol`: egress of the source pod and ingress of
    /// the destination pod both allow it.
    pub fn allows(&self, src: IpAddr, dst: IpAddr, port: u16, protocol: Protocol) -> bool {
        if self.policies.is_empty() {
            return true;
        }
        self.egress_allows(src, dst, port, protocol)
            && self.ingress_allows(src, dst, port, protocol)
    }

    /// The destination pod's side: isolated for ingress, some rule must allow the source.
    pub fn ingress_allows(&self, src: IpAddr, dst: IpAddr, port: u16, protocol: Protocol) -> bool {
        let Some(pod) = self.pods_by_ip.get(&dst) else {
            return true;
        };
        if self.is_host(src) || src == dst {
            return true;
        }
        let peer = self.pods_by_ip.get(&src).map(|p| &**p);
        self.judge(pod, Direction::Ingress, |policy, rule| {
            self.rule_peers_match(policy, rule, src, peer)
                && ports_match(rule.ports.as_deref(), protocol, port, Some(pod))
        })
    }

    /// The source pod's side: isolated for egress, some rule must allow the destination.
    pub fn egress_allows(&self, src: IpAddr, dst: IpAddr, port: u16, protocol: Protocol) -> bool {
        let Some(pod) = self.pods_by_ip.get(&src) else {
            return true;
        };
        if self.is_host(dst) || src == dst {
            return true;
        }
        let peer = self.pods_by_ip.get(&dst).map(|p| &**p);
        self.judge(pod, Direction::Egress, |policy, rule| {
            self.rule_peers_match(policy, rule, dst, peer)
                && ports_match(rule.ports.as_deref(), protocol, port, peer)
        })
    }

    /// True when no policy isolates `pod` in `dir`, or a rule of one that does allows.
    fn judge(
        &self,
        pod: &PodMeta,
        dir: Direction,
        allowed: impl Fn(&Policy, &Rule) -> bool,
    ) -> bool {
        let mut isolated = false;
        for p in self.selecting(pod, dir) {
            isolated = true;
            let rules = match dir {
                Direction::Ingress => p.ingress.as_deref(),
                Direction::Egress => p.egress.as_deref(),
            };
            if rules.into_iter().flatten().any(|r| allowed(p, r)) {
                return true;
            }
        }
        !isolated
    }

    /// The policies that isolate `pod` in `dir`.
    pub(crate) fn selecting<'a>(
        &'a self,
        pod: &'a PodMeta,
        dir: Direction,
    ) -> impl Iterator<Item = &'a Policy> + 'a {
        self.by_namespace
            .get(&pod.namespace)
            .into_iter()
            .flatten()
            .map(|i| &self.policies[*i])
            .filter(move |p| match dir {
                Direction::Ingress => p.ingress.is_some(),
                Direction::Egress => p.egress.is_some(),
            })
            .filter(|p| p.selector.matches(&pod.labels))
    }

    pub fn isolated(&self, pod: &PodMeta, dir: Direction) -> bool {
        self.selecting(pod, dir).next().is_some()
    }

    fn rule_peers_match(
        &self,
        policy: &Policy,
        rule: &Rule,
        ip: IpAddr,
        pod: Option<&PodMeta>,
    ) -> bool {
        match &rule.peers {
            None => true,
            Some(peers) => peers
                .iter()
                .any(|peer| self.peer_matches(policy, peer, ip, pod)),
        }
    }

    pub(crate) fn peer_matches(
        &self,
        policy: &Policy,
        peer: &Peer,
        ip: IpAddr,
        pod: Option<&PodMeta>,
    ) -> bool {
        match peer {
            Peer::Nothing => false,
            Peer::Block { cidr, except } => {
                cidr.contains_ip(ip) && !except.iter().any(|e| e.contains_ip(ip))
            }
            Peer::Pods { namespaces, pods } => {
                let Some(pod) = pod else {
                    return false;
                };
                let ns_ok = match namespaces {
                    None => pod.namespace == policy.namespace,
                    Some(sel) => sel.matches(&self.namespace_labels(&pod.namespace)),
                };
                ns_ok && pods.matches(&pod.labels)
            }
        }
    }

    fn namespace_labels(&self, ns: &str) -> Arc<BTreeMap<String, String>> {
        self.namespaces.get(ns).cloned().unwrap_or_else(|| {
            Arc::new([(NAMESPACE_NAME_LABEL.to_string(), ns.to_string())].into())
        })
    }
}

/// No list or an empty one: every port; else one entry must match. A named port matches
/// when `pod` (the destination) has a container port of that name, protocol and number.
pub(crate) fn ports_match(
    ports: Option<&[Port]>,
    protocol: Protocol,
    port: u16,
    pod: Option<&PodMeta>,
) -> bool {
    let Some(ports) = ports.filter(|p| !p.is_empty()) else {
        return true;
    };
    ports.iter().any(|p| {
        p.protocol == protocol
            && match &p.port {
                PortMatch::Any => true,
                PortMatch::Range(lo, hi) => (*lo..=*hi).contains(&port),
                PortMatch::Named(name) => pod.is_some_and(|pod| {
                    pod.ports
                        .iter()
                        .any(|cp| cp.name == *name && cp.protocol == protocol && cp.port == port)
                }),
                PortMatch::Nothing => false,
            }
    })
}

fn compile_policy(np: &NetworkPolicy) -> Policy {
    let spec = np.spec.clone().unwrap_or_default();
    let types: Vec<String> = match spec.policy_types.as_deref() {
        Some(t) if !t.is_empty() => t.to_vec(),
        _ => {
            let mut t = vec!["Ingress".to_string()];
            if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) {
                t.push("Egress".into());
            }
            t
        }
    };
    let ingress = types.iter().any(|t| t == "Ingress").then(|| {
        spec.ingress
            .iter()
            .flatten()
            .map(|r| compile_rule(r.from.as_deref(), r.ports.as_deref()))
            .collect()
    });
    let egress = types.iter().any(|t| t == "Egress").then(|| {
        spec.egress
            .iter()
            .flatten()
            .map(|r| compile_rule(r.to.as_deref(), r.ports.as_deref()))
            .collect()
    });
    Policy {
        namespace: np.namespace().unwrap_or_default(),
        selector: spec
            .pod_selector
            .as_ref()
            .map(Selector::compile)
            .unwrap_or_else(Selector::everything),
        ingress,
        egress,
    }
}

fn compile_rule(peers: Option<&[NetworkPolicyPeer]>, ports: Option<&[NetworkPolicyPort]>) -> Rule {
    Rule {
        peers: peers
            .filter(|p| !p.is_empty())
            .map(|p| p.iter().map(compile_peer).collect()),
        ports: ports
            .filter(|p| !p.is_empty())
            .map(|p| p.iter().map(compile_port).collect()),
    }
}

fn compile_peer(p: &NetworkPolicyPeer) -> Peer {
    if let Some(b) = &p.ip_block {
        let Some(cidr) = Ipv4Net::parse(&b.cidr) else {
            return Peer::Nothing;
        };
        return Peer::Block {
            cidr,
            except: b
                .except
                .iter()
                .flatten()
                .filter_map(|e| Ipv4Net::parse(e))
                .collect(),
        };
    }
    match (&p.namespace_selector, &p.pod_selector) {
        (None, None) => Peer::Nothing,
        (ns, pods) => Peer::Pods {
            namespaces: ns.as_ref().map(Selector::compile),
            pods: pods
                .as_ref()
                .map(Selector::compile)
                .unwrap_or_else(Selector::everything),
        },
    }
}

fn compile_port(p: &NetworkPolicyPort) -> Port {
    let protocol = Protocol::parse(p.protocol.as_deref());
    let port = match &p.port {
        None => PortMatch::Any,
        Some(IntOrString::String(name)) => match name.parse::<u16>() {
            // A number written as a string is still a number.
            Ok(n) if n > 0 => PortMatch::Range(n, n),
            _ => PortMatch::Named(name.clone()),
        },
        Some(IntOrString::Int(n)) => match u16::try_from(*n) {
            Ok(n) if n > 0 => {
                let end = p
                    .end_port
                    .and_then(|e| u16::try_from(e).ok())
                    .filter(|e| *e >= n)
                    .unwrap_or(n);
                PortMatch::Range(n, end)
            }
            _ => PortMatch::Nothing,
        },
    };
    Port { protocol, port }
}
