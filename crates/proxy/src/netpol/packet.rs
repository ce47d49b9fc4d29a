//! NetworkPolicy and PeerAuthentication STRICT for traffic between pods of this node that
//! goes straight over the node bridge and so never meets the proxy: each local pod that a
//! policy isolates (or that STRICT covers) gets an ordered rule list per direction, which
//! [`super::bpf`] turns into a small program on the host end of the pod's veth.
//!
//! Without connection tracking, the rules judge only what starts a conversation:
//!
//! - TCP: segments with SYN set and ACK clear (a new connection). Everything else passes,
//!   so replies to connections a pod opened itself, and established connections, flow.
//! - UDP and SCTP: every datagram (a reply cannot be told from a new flow). To keep the
//!   common replies working, datagrams from addresses outside the node's pod network (the
//!   DNS server's and Services' replies come from their own addresses) pass towards an
//!   isolated pod, and an egress-isolated pod may send from the UDP/SCTP ports its
//!   containers declare (answers to its clients). A UDP exchange straight between two pods
//!   otherwise needs rules both ways.
//! - Anything else (ICMP, ARP, IPv6) and non-first IP fragments pass.
//!
//! Per direction, first match wins, and nothing matched passes:
//!
//! - Towards the pod (its ingress): the node's addresses pass; STRICT ports drop TCP
//!   SYNs; then, when isolated, what the policies allow passes, other TCP SYNs drop, and
//!   UDP/SCTP from the node's pod network drops.
//! - From the pod (its egress), when isolated: the node's addresses pass (the proxy judges
//!   what goes through it); what the policies allow passes; UDP/SCTP from declared ports
//!   passes; TCP SYNs and UDP/SCTP to the node's pod network or to the cluster DNS address
//!   drop. Other destinations are Service addresses (the proxy judges them) or outside
//!   the cluster, which pods cannot reach anyway (nothing routes or NATs them out).
//!
//! "The pod network" is every pod range a pod can reach past the proxy: the node's own
//! bridge network and the ranges of other nodes that it routes to (host-gw), so a policy
//! judges a pod of another node by its address just as a local one.

use super::{Direction, NetPolicies, Peer, Policy, PortMatch, Rule};
use crate::mesh::peerauth::PeerAuthn;
use crate::pods::PodMeta;
use crate::view::Protocol;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

pub use super::cidr::Ipv4Net;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    Pass,
    Drop,
}

/// IP protocol numbers of the transports the rules judge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum L4 {
    Tcp = 6,
    Udp = 17,
    Sctp = 132,
}

impl From<Protocol> for L4 {
    fn from(p: Protocol) -> L4 {
        match p {
            Protocol::Tcp => L4::Tcp,
            Protocol::Udp => L4::Udp,
            Protocol::Sctp => L4::Sctp,
        }
    }
}

/// One rule. `peer` is the other end: the source of packets towards the pod, the
/// destination of packets from it. Unset fields match anything.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PacketRule {
    pub verdict: Verdict,
    pub proto: Option<L4>,
    pub peer: Option<Ipv4Net>,
    pub dst_ports: Option<(u16, u16)>,
    pub src_ports: Option<(u16, u16)>,
}

impl PacketRule {
    fn new(verdict: Verdict) -> PacketRule {
        PacketRule {
            verdict,
            proto: None,
            peer: None,
            dst_ports: None,
            src_ports: None,
        }
    }
}

/// Which way a rule list looks: at packets going to the pod (the bridge's transmit side
/// of the veth) or coming from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    ToPod,
    FromPod,
}

/// What the rules need to know about this node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Local {
    /// The node's addresses that pods see traffic from: the bridge gateway, the node IP.
    pub host: Vec<Ipv4Addr>,
    /// The pod networks: the one on the node's bridge and the other nodes' ranges it
    /// routes to (pods reach those directly by IP, past the proxy).
    pub pod_nets: Vec<Ipv4Net>,
    pub cluster_dns: Option<Ipv4Addr>,
}

/// A packet as the rules see it (for the model below and tests).
#[derive(Clone, Copy, Debug)]
pub struct Packet {
    pub proto: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    /// TCP flags (SYN 0x02, ACK 0x10).
    pub tcp_flags: u8,
}

/// What the program generated from `rules` does with `p` (its model: the tests hold the
/// two to the same answers).
pub fn judge(rules: &[PacketRule], hook: Hook, p: &Packet) -> Verdict {
    match p.proto {
        6 if p.tcp_flags & 0x12 != 0x02 => return Verdict::Pass,
        6 | 17 | 132 => {}
        _ => return Verdict::Pass,
    }
    let peer = match hook {
        Hook::ToPod => p.src,
        Hook::FromPod => p.dst,
    };
    let within = |r: Option<(u16, u16)>, v: u16| r.is_none_or(|(lo, hi)| lo <= v && v <= hi);
    for r in rules {
        if r.proto.is_none_or(|l| l as u8 == p.proto)
            && r.peer.is_none_or(|n| n.contains(peer))
            && within(r.dst_ports, p.dst_port)
            && within(r.src_ports, p.src_port)
        {
            return r.verdict;
        }
    }
    Verdict::Pass
}

/// The rules for one local pod and direction; None when nothing is to be enforced there.
pub fn pod_rules(
    np: &NetPolicies,
    pa: &PeerAuthn,
    local: &Local,
    pod: &PodMeta,
    hook: Hook,
) -> Option<Vec<PacketRule>> {
    let host = local.host.iter().map(|h| PacketRule {
        peer: Some(Ipv4Net::host(*h)),
        ..PacketRule::new(Verdict::Pass)
    });
    let judged = [L4::Tcp, L4::Udp, L4::Sctp];
    match hook {
        Hook::ToPod => {
            let strict = pa.strict_ports(pod).ranges();
            let isolated = np.isolated(pod, Direction::Ingress);
            if strict.is_empty() && !isolated {
                return None;
            }
            let mut rules: Vec<PacketRule> = host.collect();
            rules.extend(strict.into_iter().map(|r| PacketRule {
                proto: Some(L4::Tcp),
                dst_ports: Some(r),
                ..PacketRule::new(Verdict::Drop)
            }));
            if isolated {
                rules.extend(allowed(np, pod, Direction::Ingress));
                rules.push(PacketRule {
                    proto: Some(L4::Tcp),
                    ..PacketRule::new(Verdict::Drop)
                });
                for net in &local.pod_nets {
                    for proto in [L4::Udp, L4::Sctp] {
                        rules.push(PacketRule {
                            proto: Some(proto),
                            peer: Some(*net),
                            ..PacketRule::new(Verdict::Drop)
                        });
                    }
                }
            }
            Some(rules)
        }
        Hook::FromPod => {
            if !np.isolated(pod, Direction::Egress) {
                return None;
            }
            let mut rules: Vec<PacketRule> = host.collect();
            rules.extend(allowed(np, pod, Direction::Egress));
            let replies: BTreeSet<(L4, u16)> = pod
                .ports
                .iter()
                .filter(|p| p.protocol != Protocol::Tcp)
                .map(|p| (L4::from(p.protocol), p.port))
                .collect();
            rules.extend(replies.into_iter().map(|(proto, port)| PacketRule {
                proto: Some(proto),
                src_ports: Some((port, port)),
                ..PacketRule::new(Verdict::Pass)
            }));
            let guarded = local
                .pod_nets
                .iter()
                .copied()
                .chain(local.cluster_dns.map(Ipv4Net::host));
            for net in guarded {
                for proto in judged {
                    rules.push(PacketRule {
                        proto: Some(proto),
                        peer: Some(net),
                        ..PacketRule::new(Verdict::Drop)
                    });
                }
            }
            Some(rules)
        }
    }
}

/// Pass rules for what the policies isolating `pod` in `dir` allow, without repeats.
fn allowed(np: &NetPolicies, pod: &PodMeta, dir: Direction) -> Vec<PacketRule> {
    let mut out: BTreeSet<PacketRule> = BTreeSet::new();
    for policy in np.selecting(pod, dir) {
        let rules = match dir {
            Direction::Ingress => policy.ingress.as_deref(),
            Direction::Egress => policy.egress.as_deref(),
        };
        for rule in rules.into_iter().flatten() {
            rule_to_packets(np, policy, rule, pod, dir, &mut out);
        }
    }
    // Keep the policies' order irrelevant: a set, in a stable order.
    out.into_iter().collect()
}

/// Protocols with a port range (None: every port).
type PortList = Vec<(L4, Option<(u16, u16)>)>;

/// The (protocol, port range) pairs the `ports` entries allow on `pod` (named ports
/// resolved against it, skipped without it); None: every port of every protocol.
fn resolve_ports(ports: Option<&[&super::Port]>, pod: Option<&PodMeta>) -> Option<PortList> {
    let ports = ports?;
    let mut out = Vec::new();
    for p in ports {
        let proto = L4::from(p.protocol);
        match &p.port {
            PortMatch::Any => out.push((proto, None)),
            PortMatch::Range(lo, hi) => out.push((proto, Some((*lo, *hi)))),
            PortMatch::Named(name) => {
                for cp in pod.iter().flat_map(|pod| pod.ports.iter()) {
                    if cp.name == *name && cp.protocol == p.protocol {
                        out.push((proto, Some((cp.port, cp.port))));
                    }
                }
            }
            PortMatch::Nothing => {}
        }
    }
    Some(out)
}

fn push_rules(out: &mut BTreeSet<PacketRule>, peer: Option<Ipv4Net>, ports: &Option<PortList>) {
    match ports {
        None => {
            out.insert(PacketRule {
                peer,
                ..PacketRule::new(Verdict::Pass)
            });
        }
        Some(list) => {
            for (proto, range) in list {
                out.insert(PacketRule {
                    proto: Some(*proto),
                    peer,
                    dst_ports: *range,
                    ..PacketRule::new(Verdict::Pass)
                });
            }
        }
    }
}

fn rule_to_packets(
    np: &NetPolicies,
    policy: &Policy,
    rule: &Rule,
    pod: &PodMeta,
    dir: Direction,
    out: &mut BTreeSet<PacketRule>,
) {
    let all: Option<Vec<&super::Port>> = rule
        .ports
        .as_deref()
        .filter(|p| !p.is_empty())
        .map(|p| p.iter().collect());
    // A named port refers to the isolated pod's own ports for ingress, and to each
    // destination's for egress: there the numbered and named ports part ways.
    let (by_prefix, named): (Option<Vec<&super::Port>>, Vec<&super::Port>) = match (&all, dir) {
        (Some(ports), Direction::Egress) => (
            Some(
                ports
                    .iter()
                    .copied()
                    .filter(|p| !matches!(p.port, PortMatch::Named(_)))
                    .collect(),
            ),
            ports
                .iter()
                .copied()
                .filter(|p| matches!(p.port, PortMatch::Named(_)))
                .collect(),
        ),
        _ => (all.clone(), Vec::new()),
    };
    let ports = resolve_ports(by_prefix.as_deref(), Some(pod));
    if ports.as_ref().is_none_or(|p| !p.is_empty()) {
        match &rule.peers {
            None => push_rules(out, None, &ports),
            Some(peers) => {
                for peer in peers {
                    for net in peer_nets(np, policy, peer) {
                        push_rules(out, Some(net), &ports);
                    }
                }
            }
        }
    }
    if named.is_empty() {
        return;
    }
    for (other, ip) in distinct_pods(np) {
        let IpAddr::V4(v4) = ip else { continue };
        let matched = match &rule.peers {
            None => true,
            Some(peers) => peers
                .iter()
                .any(|peer| np.peer_matches(policy, peer, ip, Some(other))),
        };
        if !matched {
            continue;
        }
        let ports = resolve_ports(Some(&named), Some(other));
        if ports.as_ref().is_some_and(|p| !p.is_empty()) {
            push_rules(out, Some(Ipv4Net::host(v4)), &ports);
        }
    }
}

/// Every running pod with each of its IPv4 addresses.
fn distinct_pods(np: &NetPolicies) -> Vec<(&PodMeta, IpAddr)> {
    let mut v: Vec<(&PodMeta, IpAddr)> = np
        .pods_by_ip
        .iter()
        .filter(|(ip, _)| ip.is_ipv4())
        .map(|(ip, p)| (&**p, *ip))
        .collect();
    v.sort_by_key(|(_, ip)| *ip);
    v
}

/// The prefixes a peer stands for: the addresses of the pods it selects, or its block
/// without the exceptions.
fn peer_nets(np: &NetPolicies, policy: &Policy, peer: &Peer) -> Vec<Ipv4Net> {
    match peer {
        Peer::Nothing => Vec::new(),
        Peer::Block { cidr, except } => cidr.subtract(except),
        Peer::Pods { .. } => distinct_pods(np)
            .into_iter()
            .filter(|(pod, ip)| np.peer_matches(policy, peer, *ip, Some(pod)))
            .filter_map(|(_, ip)| match ip {
                IpAddr::V4(v4) => Some(Ipv4Net::host(v4)),
                IpAddr::V6(_) => None,
            })
            .collect(),
    }
}

/// The rule lists of every pod of `node`, by its veth, and the list of those veths.
pub fn node_rules(
    np: &NetPolicies,
    pa: &PeerAuthn,
    local: &Local,
    node: &str,
) -> super::enforcer::Desired {
    let mut out = super::enforcer::Desired::default();
    let mut seen = BTreeSet::new();
    let mut pods: Vec<&PodMeta> = np.pods_by_ip.values().map(|p| &**p).collect();
    pods.sort_by(|a, b| a.uid.cmp(&b.uid));
    for pod in pods {
        if pod.node_name.as_deref() != Some(node) || pod.uid.is_empty() || !seen.insert(&pod.uid) {
            continue;
        }
        let veth = corral_runtime::host_veth_name(&pod.uid);
        for hook in [Hook::ToPod, Hook::FromPod] {
            if let Some(rules) = pod_rules(np, pa, local, pod, hook) {
                out.rules
                    .insert((veth.clone(), hook), std::sync::Arc::new(rules));
            }
        }
        out.veths.push(veth);
    }
    out
}
