//! NetworkPolicy semantics, with cases from the Kubernetes documentation ("Network
//! Policies", "Declare Network Policy") and upstream's e2e suite (test/e2e/network/netpol),
//! then the packet rules and their eBPF programs held to the same answers.

use super::packet::{self, Hook, Local, Packet, PacketRule, Verdict, L4};
use super::*;
use crate::mesh::peerauth::{PeerAuthentication, PeerAuthn};
use crate::pods::PodPort;
use serde_json::json;
use std::net::Ipv4Addr;

const NODE: &str = "10.0.0.5";
const GATEWAY: &str = "10.42.0.1";
const DNS: &str = "10.43.0.10";
const SVC: &str = "10.43.0.20";

struct Cluster {
    view: ClusterView,
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

impl Cluster {
    fn new() -> Cluster {
        let mut view = ClusterView::default();
        let mut nss = HashMap::new();
        for (ns, labels) in [
            ("x", json!({"team": "x"})),
            ("y", json!({"team": "y", "project": "myproject"})),
            ("z", json!({"team": "z"})),
        ] {
            let labels: BTreeMap<String, String> = serde_json::from_value(labels).unwrap();
            nss.insert(ns.to_string(), Arc::new(labels));
        }
        view.namespaces = Arc::new(nss);
        // A Service address (the proxy's) and the cluster DNS address.
        for (name, addr) in [("web", SVC), ("kube-dns", DNS)] {
            let key = crate::view::ServiceKey {
                namespace: "x".into(),
                name: name.into(),
            };
            view.services.insert(
                key.clone(),
                crate::view::ServiceInfo {
                    key,
                    kind: crate::view::ServiceType::ClusterIp,
                    cluster_ips: vec![ip(addr)],
                    headless: false,
                    external_name: None,
                    ports: vec![],
                    affinity: None,
                    publish_not_ready: false,
                    traffic: Default::default(),
                    endpoints: vec![],
                },
            );
        }
        let mut c = Cluster { view };
        // Upstream's e2e model: pods a, b, c in namespaces x, y, z, serving 80 and 81.
        let mut n = 10;
        for ns in ["x", "y", "z"] {
            for pod in ["a", "b", "c"] {
                c.pod(ns, pod, &format!("10.42.0.{n}"), json!({"pod": pod}));
                n += 1;
            }
        }
        c
    }

    fn pod(&mut self, ns: &str, name: &str, addr: &str, labels: serde_json::Value) {
        let meta = PodMeta {
            namespace: ns.into(),
            name: name.into(),
            labels: Arc::new(serde_json::from_value(labels).unwrap()),
            ips: vec![ip(addr)],
            uid: format!("uid-{ns}-{name}"),
            node_name: Some("n1".into()),
            ports: Arc::new(vec![
                PodPort {
                    name: "serve-80-tcp".into(),
                    protocol: Protocol::Tcp,
                    port: 80,
                },
                PodPort {
                    name: "serve-81-tcp".into(),
                    protocol: Protocol::Tcp,
                    port: 81,
                },
                PodPort {
                    name: "serve-81-udp".into(),
                    protocol: Protocol::Udp,
                    port: 81,
                },
            ]),
            ..Default::default()
        };
        Arc::make_mut(&mut self.view.pods_by_ip).insert(ip(addr), Arc::new(meta));
    }

    fn policy(&mut self, ns: &str, name: &str, spec: serde_json::Value) -> &mut Self {
        let np: NetworkPolicy = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns}, "spec": spec
        }))
        .unwrap();
        self.view.network_policies.push(Arc::new(np));
        self
    }

    fn compile(&self) -> NetPolicies {
        NetPolicies::compile(&self.view, &[ip(NODE), ip(GATEWAY)], Some(ip(DNS)))
    }

    fn addr(&self, ns: &str, name: &str) -> IpAddr {
        self.view
            .pods_by_ip
            .iter()
            .find(|(_, p)| p.namespace == ns && p.name == name)
            .map(|(i, _)| *i)
            .unwrap()
    }

    /// The reachability matrix over every pair of pods on TCP `port`, as upstream's e2e
    /// suite prints it: "x/a->y/b" for each allowed pair.
    fn reachable(&self, port: u16, proto: Protocol) -> Vec<String> {
        let np = self.compile();
        let mut pods: Vec<&PodMeta> = self.view.pods_by_ip.values().map(|p| &**p).collect();
        pods.sort_by_key(|p| (p.namespace.clone(), p.name.clone()));
        let mut out = Vec::new();
        for from in &pods {
            for to in &pods {
                if from.name == to.name && from.namespace == to.namespace {
                    continue;
                }
                if np.allows(from.ips[0], to.ips[0], port, proto) {
                    out.push(format!(
                        "{}/{}->{}/{}",
                        from.namespace, from.name, to.namespace, to.name
                    ));
                }
            }
        }
        out
    }

    fn allows(&self, from: (&str, &str), to: (&str, &str), port: u16) -> bool {
        self.compile().allows(
            self.addr(from.0, from.1),
            self.addr(to.0, to.1),
            port,
            Protocol::Tcp,
        )
    }
}

const ALL_PAIRS: usize = 9 * 8;

#[test]
fn no_policy_allows_everything() {
    let c = Cluster::new();
    assert_eq!(c.reachable(80, Protocol::Tcp).len(), ALL_PAIRS);
}

#[test]
fn default_deny_ingress_isolates_the_namespace_but_not_from_the_node() {
    let mut c = Cluster::new();
    c.policy(
        "x",
        "deny",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    );
    let r = c.reachable(80, Protocol::Tcp);
    assert!(r.iter().all(|p| !p.contains("->x/")), "{r:?}");
    assert_eq!(r.len(), ALL_PAIRS - 8 * 3);
    let np = c.compile();
    let xa = c.addr("x", "a");
    for node in [NODE, GATEWAY, "127.0.0.1", SVC] {
        assert!(np.allows(ip(node), xa, 80, Protocol::Tcp), "{node}");
    }
    assert!(
        !np.allows(ip(DNS), xa, 80, Protocol::Tcp),
        "the DNS address is no node address"
    );
    assert!(np.allows(xa, xa, 80, Protocol::Tcp), "a pod reaches itself");
    assert!(
        !np.allows(ip("192.0.2.7"), xa, 80, Protocol::Tcp),
        "an outside client"
    );
}

#[test]
fn allow_from_pod_selector_is_same_namespace_only() {
    let mut c = Cluster::new();
    c.policy(
        "x",
        "allow-b",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    );
    assert!(c.allows(("x", "b"), ("x", "a"), 80));
    assert!(!c.allows(("x", "c"), ("x", "a"), 80));
    assert!(
        !c.allows(("y", "b"), ("x", "a"), 80),
        "podSelector alone is the policy's namespace"
    );
    assert!(c.allows(("y", "c"), ("x", "b"), 80), "x/b is not selected");
}

#[test]
fn namespace_selector_and_pod_selector_and_versus_or() {
    // The documentation's "behavior of to and from selectors": one peer with both
    // selectors is an AND, two peers an OR.
    let mut and = Cluster::new();
    and.policy(
        "x",
        "and",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "y"}},
                                       "podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    );
    assert!(and.allows(("y", "b"), ("x", "a"), 80));
    assert!(!and.allows(("y", "c"), ("x", "a"), 80));
    assert!(!and.allows(("x", "b"), ("x", "a"), 80));
    let mut or = Cluster::new();
    or.policy(
        "x",
        "or",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "y"}}},
                                      {"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    );
    assert!(or.allows(("y", "c"), ("x", "a"), 80));
    assert!(or.allows(("x", "b"), ("x", "a"), 80));
    assert!(!or.allows(("x", "c"), ("x", "a"), 80));
    assert!(!or.allows(("z", "b"), ("x", "a"), 80));
}

#[test]
fn namespace_selectors_match_labels_expressions_and_the_name_label() {
    let mut c = Cluster::new();
    c.policy(
        "x",
        "by-name",
        json!({"podSelector": {},
               "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [
                   {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["z"]}]}}]}]}),
    );
    assert!(c.allows(("z", "a"), ("x", "b"), 80));
    assert!(!c.allows(("y", "a"), ("x", "b"), 80));
    let mut c = Cluster::new();
    c.policy(
        "x",
        "all-namespaces",
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]}),
    );
    assert_eq!(c.reachable(80, Protocol::Tcp).len(), ALL_PAIRS);
    assert!(
        !c.compile()
            .allows(ip("192.0.2.7"), c.addr("x", "a"), 80, Protocol::Tcp),
        "namespaceSelector {{}} is every pod, not every address"
    );
}

#[test]
fn ip_block_with_except() {
    let mut c = Cluster::new();
    c.policy(
        "x",
        "block",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"ipBlock": {"cidr": "10.42.0.0/24",
                                                   "except": ["10.42.0.16/30"]}}]}]}),
    );
    let np = c.compile();
    let xa = c.addr("x", "a");
    assert!(np.allows(ip("10.42.0.11"), xa, 80, Protocol::Tcp));
    assert!(!np.allows(ip("10.42.0.17"), xa, 80, Protocol::Tcp));
    assert!(np.allows(ip("10.42.0.20"), xa, 80, Protocol::Tcp));
    assert!(!np.allows(ip("10.43.1.1"), xa, 80, Protocol::Tcp));
}

#[test]
fn ports_numbers_ranges_names_and_protocols() {
    let mut c = Cluster::new();
    c.policy(
        "x",
        "ports",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"ports": [{"port": 80},
                                       {"port": 2000, "endPort": 2010},
                                       {"port": "serve-81-udp", "protocol": "UDP"}]}]}),
    );
    let np = c.compile();
    let (xb, xa) = (c.addr("x", "b"), c.addr("x", "a"));
    assert!(np.allows(xb, xa, 80, Protocol::Tcp));
    assert!(
        !np.allows(xb, xa, 80, Protocol::Udp),
        "protocol defaults to TCP"
    );
    assert!(!np.allows(xb, xa, 81, Protocol::Tcp));
    assert!(
        np.allows(xb, xa, 81, Protocol::Udp),
        "named port resolved on the pod"
    );
    assert!(np.allows(xb, xa, 2000, Protocol::Tcp) && np.allows(xb, xa, 2010, Protocol::Tcp));
    assert!(!np.allows(xb, xa, 2011, Protocol::Tcp));
    // upstream: a named port the pod does not have allows nothing.
    let mut c = Cluster::new();
    c.policy(
        "x",
        "missing",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": "serve-82-tcp"}]}]}),
    );
    assert!(c
        .reachable(80, Protocol::Tcp)
        .iter()
        .all(|p| !p.contains("->x/")));
    // A port with only a protocol: every port of it.
    let mut c = Cluster::new();
    c.policy(
        "x",
        "udp",
        json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "UDP"}]}]}),
    );
    assert!(c
        .compile()
        .allows(c.addr("y", "a"), c.addr("x", "a"), 5353, Protocol::Udp));
    assert!(!c
        .compile()
        .allows(c.addr("y", "a"), c.addr("x", "a"), 80, Protocol::Tcp));
}

#[test]
fn empty_rule_allows_all_and_empty_list_denies_all() {
    let mut c = Cluster::new();
    c.policy("x", "deny", json!({"podSelector": {}, "ingress": []}));
    c.policy(
        "x",
        "allow-all",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{}]}),
    );
    assert!(c.allows(("z", "c"), ("x", "a"), 9999));
    assert!(!c.allows(("z", "c"), ("x", "b"), 80));
}

#[test]
fn policies_are_additive() {
    let mut c = Cluster::new();
    c.policy(
        "x",
        "from-b",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    );
    c.policy(
        "x",
        "from-y",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "y"}}}]}]}),
    );
    assert!(c.allows(("x", "b"), ("x", "a"), 80));
    assert!(c.allows(("y", "c"), ("x", "a"), 80));
    assert!(!c.allows(("x", "c"), ("x", "a"), 80));
}

#[test]
fn policy_types_default_as_upstream() {
    // Egress rules without policyTypes: isolated both ways.
    let mut c = Cluster::new();
    c.policy(
        "x",
        "egress-only-rules",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "egress": [{"to": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    );
    assert!(c.allows(("x", "a"), ("x", "b"), 80));
    assert!(!c.allows(("x", "a"), ("x", "c"), 80));
    assert!(
        !c.allows(("x", "b"), ("x", "a"), 80),
        "Ingress is always a default type"
    );
    // Ingress rules only: egress stays open.
    let mut c = Cluster::new();
    c.policy(
        "x",
        "ingress",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{}]}),
    );
    assert!(c.allows(("x", "a"), ("z", "c"), 80));
    // Explicit types win: ingress rules of an Egress-only policy do nothing.
    let mut c = Cluster::new();
    c.policy(
        "x",
        "egress-type",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    );
    assert!(c.allows(("x", "c"), ("x", "a"), 80));
    assert!(!c.allows(("x", "a"), ("x", "c"), 80));
}

#[test]
fn egress_to_dns_needs_a_rule_for_its_address_or_port() {
    let mut c = Cluster::new();
    c.policy(
        "x",
        "deny-egress",
        json!({"podSelector": {}, "policyTypes": ["Egress"]}),
    );
    let np = c.compile();
    let xa = c.addr("x", "a");
    assert!(!np.allows(xa, ip(DNS), 53, Protocol::Udp));
    assert!(!np.allows(xa, c.addr("y", "a"), 80, Protocol::Tcp));
    assert!(
        np.allows(xa, ip(SVC), 80, Protocol::Tcp),
        "Service addresses lead to the proxy"
    );
    assert!(np.allows(xa, ip(GATEWAY), 10250, Protocol::Tcp), "the node");
    c.policy(
        "x",
        "dns",
        json!({"podSelector": {}, "policyTypes": ["Egress"],
               "egress": [{"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}]}),
    );
    let np = c.compile();
    assert!(np.allows(xa, ip(DNS), 53, Protocol::Udp));
    assert!(!np.allows(xa, ip(DNS), 54, Protocol::Udp));
    assert!(!np.allows(xa, c.addr("y", "a"), 80, Protocol::Tcp));
    // An ipBlock naming the DNS address works as well.
    let mut c = Cluster::new();
    c.policy(
        "x",
        "dns-block",
        json!({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.43.0.10/32"}}]}]}),
    );
    assert!(c
        .compile()
        .allows(c.addr("x", "a"), ip(DNS), 53, Protocol::Udp));
}

#[test]
fn egress_named_ports_resolve_on_the_destination() {
    let mut c = Cluster::new();
    c.pod("y", "odd", "10.42.0.50", json!({"pod": "odd"}));
    if let Some(p) = Arc::make_mut(&mut c.view.pods_by_ip).get_mut(&ip("10.42.0.50")) {
        Arc::make_mut(p).ports = Arc::new(vec![PodPort {
            name: "web".into(),
            protocol: Protocol::Tcp,
            port: 8080,
        }]);
    }
    c.policy(
        "x",
        "to-web",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
               "egress": [{"to": [{"namespaceSelector": {}}], "ports": [{"port": "web"}]}]}),
    );
    let np = c.compile();
    let xa = c.addr("x", "a");
    assert!(np.allows(xa, ip("10.42.0.50"), 8080, Protocol::Tcp));
    assert!(!np.allows(xa, ip("10.42.0.50"), 80, Protocol::Tcp));
    assert!(!np.allows(xa, c.addr("y", "b"), 8080, Protocol::Tcp));
}

#[test]
fn both_sides_must_allow() {
    let mut c = Cluster::new();
    c.policy(
        "x",
        "a-egress-to-y",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
               "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"team": "y"}}}]}]}),
    );
    c.policy(
        "y",
        "b-from-x-c",
        json!({"podSelector": {"matchLabels": {"pod": "b"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "x"}},
                                       "podSelector": {"matchLabels": {"pod": "c"}}}]}]}),
    );
    assert!(c.allows(("x", "a"), ("y", "a"), 80));
    assert!(!c.allows(("x", "a"), ("y", "b"), 80), "y/b refuses x/a");
    assert!(c.allows(("x", "c"), ("y", "b"), 80));
    assert!(
        !c.allows(("x", "a"), ("z", "a"), 80),
        "x/a may only reach y"
    );
}

// ---- packet rules ----

fn local() -> Local {
    Local {
        host: vec![v4(GATEWAY), v4(NODE)],
        pod_nets: vec![Ipv4Net::parse("10.42.0.0/24").unwrap()],
        cluster_dns: Some(v4(DNS)),
    }
}

fn syn(src: IpAddr, dst: IpAddr, port: u16) -> Packet {
    let (IpAddr::V4(src), IpAddr::V4(dst)) = (src, dst) else {
        unreachable!()
    };
    Packet {
        proto: 6,
        src,
        dst,
        src_port: 40000,
        dst_port: port,
        tcp_flags: 0x02,
    }
}

fn pa(policies: &[(&str, &str, serde_json::Value)]) -> PeerAuthn {
    let list: Vec<Arc<PeerAuthentication>> = policies
        .iter()
        .enumerate()
        .map(|(i, (ns, name, spec))| {
            Arc::new(PeerAuthentication {
                namespace: ns.to_string(),
                name: name.to_string(),
                created: i.to_string(),
                spec: serde_json::from_value(spec.clone()).unwrap(),
            })
        })
        .collect();
    PeerAuthn::new(&list)
}

/// Every new TCP connection between pods (and from the node and outside) gets the same
/// answer from the packet rules as from [`NetPolicies::allows`], with STRICT on top.
fn check_packets_agree(c: &Cluster, authn: &PeerAuthn) {
    let np = c.compile();
    let l = local();
    let mut sources: Vec<IpAddr> = c.view.pods_by_ip.keys().copied().collect();
    sources.extend([ip(GATEWAY), ip(NODE), ip("192.0.2.7"), ip("10.42.0.200")]);
    let mut destinations = sources.clone();
    destinations.push(ip(DNS));
    for pod in c.view.pods_by_ip.values() {
        let to_pod = packet::pod_rules(&np, authn, &l, pod, Hook::ToPod);
        let from_pod = packet::pod_rules(&np, authn, &l, pod, Hook::FromPod);
        let strict = authn.strict_ports(pod);
        let me = pod.ips[0];
        for src in &sources {
            if *src == me {
                // Never crosses the veth.
                continue;
            }
            for port in [80, 81, 443, 2005] {
                let want = np.ingress_allows(*src, me, port, Protocol::Tcp)
                    && (local().host.iter().any(|h| IpAddr::V4(*h) == *src)
                        || !strict.is_strict(port));
                let got = to_pod.as_deref().is_none_or(|r| {
                    packet::judge(r, Hook::ToPod, &syn(*src, me, port)) == Verdict::Pass
                });
                assert_eq!(got, want, "{src} -> {}/{} :{port}", pod.namespace, pod.name);
            }
        }
        for dst in &destinations {
            if *dst == me {
                continue;
            }
            for (port, proto) in [(80, 6), (81, 17), (53, 17), (8080, 6)] {
                let protocol = if proto == 6 {
                    Protocol::Tcp
                } else {
                    Protocol::Udp
                };
                // Only what the packet rules guard: this node's pods and the DNS address
                // (Service addresses and the node lead to the proxy).
                let guarded =
                    l.pod_nets[0].contains_ip(*dst) && !np.is_host(*dst) || *dst == ip(DNS);
                let want = !guarded || np.egress_allows(me, *dst, port, protocol);
                let mut p = syn(me, *dst, port);
                p.proto = proto;
                let got = from_pod
                    .as_deref()
                    .is_none_or(|r| packet::judge(r, Hook::FromPod, &p) == Verdict::Pass);
                assert_eq!(
                    got, want,
                    "{}/{} -> {dst}:{port}/{proto}",
                    pod.namespace, pod.name
                );
            }
        }
    }
}

#[test]
fn packet_rules_agree_with_the_policies() {
    let mut c = Cluster::new();
    check_packets_agree(&c, &pa(&[]));
    c.policy(
        "x",
        "mixed",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "y"}},
                                       "podSelector": {"matchLabels": {"pod": "b"}}},
                                      {"ipBlock": {"cidr": "10.42.0.0/28", "except": ["10.42.0.12/32"]}}],
                            "ports": [{"port": "serve-80-tcp"}, {"port": 443}]},
                           {"from": [{"podSelector": {}}], "ports": [{"port": 2000, "endPort": 2010}]}]}),
    );
    c.policy(
        "y",
        "egress",
        json!({"podSelector": {"matchLabels": {"pod": "c"}}, "policyTypes": ["Egress"],
               "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"team": "x"}}}],
                           "ports": [{"port": "serve-81-udp", "protocol": "UDP"}, {"port": 8080}]},
                          {"ports": [{"port": 53, "protocol": "UDP"}]}]}),
    );
    c.policy(
        "z",
        "deny",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    );
    check_packets_agree(&c, &pa(&[]));
    check_packets_agree(
        &c,
        &pa(&[
            ("x", "strict", json!({"mtls": {"mode": "STRICT"}})),
            (
                "y",
                "web",
                json!({"selector": {"matchLabels": {"pod": "a"}},
                                "portLevelMtls": {"81": {"mode": "STRICT"}}}),
            ),
        ]),
    );
}

#[test]
fn packet_rules_let_replies_and_the_node_through() {
    let mut c = Cluster::new();
    c.policy(
        "x",
        "deny",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    );
    let np = c.compile();
    let pod = c.view.pods_by_ip[&c.addr("x", "a")].clone();
    let to = packet::pod_rules(&np, &pa(&[]), &local(), &pod, Hook::ToPod).unwrap();
    let from = packet::pod_rules(&np, &pa(&[]), &local(), &pod, Hook::FromPod).unwrap();
    let peer = c.addr("y", "a");
    let mut p = syn(peer, pod.ips[0], 80);
    assert_eq!(packet::judge(&to, Hook::ToPod, &p), Verdict::Drop);
    p.tcp_flags = 0x12; // SYN-ACK: the answer to a connection the pod opened
    assert_eq!(packet::judge(&to, Hook::ToPod, &p), Verdict::Pass);
    p.tcp_flags = 0x10;
    assert_eq!(packet::judge(&to, Hook::ToPod, &p), Verdict::Pass);
    // UDP from Service and DNS addresses (their replies) passes; from pods it does not.
    let mut u = syn(ip(DNS), pod.ips[0], 40000);
    u.proto = 17;
    assert_eq!(packet::judge(&to, Hook::ToPod, &u), Verdict::Pass);
    u.src = v4("10.42.0.12");
    assert_eq!(packet::judge(&to, Hook::ToPod, &u), Verdict::Drop);
    // ICMP is not judged.
    u.proto = 1;
    assert_eq!(packet::judge(&to, Hook::ToPod, &u), Verdict::Pass);
    // The egress side: UDP answers from a declared UDP port pass.
    let mut r = syn(pod.ips[0], peer, 40000);
    r.proto = 17;
    r.src_port = 81;
    assert_eq!(packet::judge(&from, Hook::FromPod, &r), Verdict::Pass);
    r.src_port = 82;
    assert_eq!(packet::judge(&from, Hook::FromPod, &r), Verdict::Drop);
    // Pods nobody isolates get no rules at all.
    let free = c.view.pods_by_ip[&c.addr("y", "a")].clone();
    assert!(packet::pod_rules(&np, &pa(&[]), &local(), &free, Hook::ToPod).is_none());
    let desired = packet::node_rules(&np, &pa(&[]), &local(), "n1");
    assert_eq!(desired.veths.len(), 9);
    assert_eq!(desired.rules.len(), 6, "x's three pods, both ways");
    assert!(packet::node_rules(&np, &pa(&[]), &local(), "other")
        .rules
        .is_empty());
}

// ---- the eBPF programs, run in the kernel ----

/// An Ethernet + IPv4 + TCP/UDP frame.
fn frame(p: &Packet) -> Vec<u8> {
    let mut f = vec![0u8; 14];
    f[12] = 0x08;
    f[13] = 0x00;
    let l4_len = if p.proto == 6 { 20 } else { 8 };
    let total = 20 + l4_len + 4;
    let mut ip = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        1,
        0x40,
        0,
        64,
        p.proto,
        0,
        0,
    ];
    ip.extend_from_slice(&p.src.octets());
    ip.extend_from_slice(&p.dst.octets());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&p.src_port.to_be_bytes());
    f.extend_from_slice(&p.dst_port.to_be_bytes());
    if p.proto == 6 {
        f.extend_from_slice(&[
            0,
            0,
            0,
            1,
            0,
            0,
            0,
            0,
            0x50,
            p.tcp_flags,
            0xff,
            0xff,
            0,
            0,
            0,
            0,
        ]);
    } else {
        f.extend_from_slice(&[0, (l4_len + 4) as u8, 0, 0]);
    }
    f.extend_from_slice(b"data");
    f
}

/// Loads the program for `rules`; None (the test is skipped) without the privilege.
fn load(rules: &[PacketRule], hook: Hook) -> Option<bpf::Program> {
    let code = bpf::program(rules, hook).unwrap();
    match bpf::load(&code, &bpf::program_name(rules, hook)) {
        Ok(p) => Some(p),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) => {
            eprintln!("skipped: cannot load eBPF programs here ({e})");
            None
        }
        Err(e) => panic!("the verifier refused the program: {e}"),
    }
}

fn kernel_judges(prog: &bpf::Program, p: &Packet) -> Verdict {
    bpf::verdict_of(bpf::test_run(prog, &frame(p)).unwrap())
}

#[test]
fn programs_do_what_the_rules_say() {
    let mut c = Cluster::new();
    c.policy(
        "x",
        "mixed",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "y"}}},
                                      {"ipBlock": {"cidr": "10.42.0.0/28", "except": ["10.42.0.12/32"]}}],
                            "ports": [{"port": 80}, {"port": 2000, "endPort": 2010}, {"port": 81, "protocol": "UDP"}]}]}),
    );
    c.policy("x", "egress", json!({"podSelector": {}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"podSelector": {"matchLabels": {"pod": "b"}}}], "ports": [{"port": 80}]}]}));
    let np = c.compile();
    let authn = pa(&[(
        "x",
        "strict",
        json!({"selector": {"matchLabels": {"pod": "a"}},
        "portLevelMtls": {"443": {"mode": "STRICT"}}}),
    )]);
    let pod = c.view.pods_by_ip[&c.addr("x", "a")].clone();
    let me = match pod.ips[0] {
        IpAddr::V4(v) => v,
        _ => unreachable!(),
    };
    for hook in [Hook::ToPod, Hook::FromPod] {
        let rules = packet::pod_rules(&np, &authn, &local(), &pod, hook).unwrap();
        let Some(prog) = load(&rules, hook) else {
            return;
        };
        let mut peers: Vec<Ipv4Addr> = c
            .view
            .pods_by_ip
            .keys()
            .filter_map(|i| match i {
                IpAddr::V4(v) => Some(*v),
                _ => None,
            })
            .collect();
        peers.extend([
            v4(GATEWAY),
            v4(NODE),
            v4(DNS),
            v4("192.0.2.7"),
            v4("10.42.0.250"),
        ]);
        let mut dropped = 0;
        for peer in peers {
            for (proto, flags) in [(6, 0x02), (6, 0x12), (6, 0x10), (17, 0), (132, 0), (1, 0)] {
                for port in [53, 80, 81, 443, 1999, 2000, 2010, 2011, 40000] {
                    let (src, dst) = match hook {
                        Hook::ToPod => (peer, me),
                        Hook::FromPod => (me, peer),
                    };
                    let p = Packet {
                        proto,
                        src,
                        dst,
                        src_port: if hook == Hook::FromPod { 81 } else { 40000 },
                        dst_port: port,
                        tcp_flags: flags,
                    };
                    let want = packet::judge(&rules, hook, &p);
                    dropped += (want == Verdict::Drop) as usize;
                    assert_eq!(kernel_judges(&prog, &p), want, "{hook:?} {p:?}");
                }
            }
        }
        assert!(dropped > 0, "{hook:?}: the case drops something");
    }
}

#[test]
fn programs_pass_what_they_cannot_judge() {
    let rules = vec![PacketRule {
        verdict: Verdict::Drop,
        proto: None,
        peer: None,
        dst_ports: None,
        src_ports: None,
    }];
    let Some(prog) = load(&rules, Hook::ToPod) else {
        return;
    };
    let p = syn(ip("10.42.0.2"), ip("10.42.0.3"), 80);
    assert_eq!(kernel_judges(&prog, &p), Verdict::Drop);
    // An ARP frame.
    let mut arp = frame(&p);
    arp[12] = 0x08;
    arp[13] = 0x06;
    assert_eq!(
        bpf::verdict_of(bpf::test_run(&prog, &arp).unwrap()),
        Verdict::Pass
    );
    // A later fragment of a datagram: no transport header to judge.
    let mut frag = frame(&p);
    frag[14 + 6] = 0x00;
    frag[14 + 7] = 0x10;
    assert_eq!(
        bpf::verdict_of(bpf::test_run(&prog, &frag).unwrap()),
        Verdict::Pass
    );
    // A truncated TCP header.
    let short = &frame(&p)[..14 + 20 + 6];
    assert_eq!(
        bpf::verdict_of(bpf::test_run(&prog, short).unwrap()),
        Verdict::Pass
    );
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    fn net() -> impl Strategy<Value = Option<Ipv4Net>> {
        prop_oneof![
            Just(None),
            (0u8..4, 0u8..=32).prop_map(|(host, len)| Some(Ipv4Net::new(
                Ipv4Addr::new(10, 42, 0, host * 64 + 1),
                len
            ))),
            (any::<u32>(), 0u8..=32).prop_map(|(a, len)| Some(Ipv4Net::new(a.into(), len))),
        ]
    }

    fn ports() -> impl Strategy<Value = Option<(u16, u16)>> {
        prop_oneof![
            Just(None),
            (0u16..100).prop_map(|p| Some((p, p))),
            (0u16..100, 0u16..100).prop_map(|(a, b)| Some((a.min(b), a.max(b)))),
            Just(Some((0, 65535))),
        ]
    }

    fn rule() -> impl Strategy<Value = PacketRule> {
        (
            any::<bool>(),
            prop_oneof![
                Just(None),
                Just(Some(L4::Tcp)),
                Just(Some(L4::Udp)),
                Just(Some(L4::Sctp))
            ],
            net(),
            ports(),
            ports(),
        )
            .prop_map(|(drop, proto, peer, dst_ports, src_ports)| PacketRule {
                verdict: if drop { Verdict::Drop } else { Verdict::Pass },
                proto,
                peer,
                dst_ports,
                src_ports,
            })
    }

    fn packet() -> impl Strategy<Value = Packet> {
        (
            prop_oneof![Just(6u8), Just(17u8), Just(132u8), Just(1u8)],
            prop_oneof![
                (0u8..4).prop_map(|h| Ipv4Addr::new(10, 42, 0, h * 64 + 1)),
                any::<u32>().prop_map(Ipv4Addr::from)
            ],
            any::<u32>().prop_map(Ipv4Addr::from),
            0u16..100,
            prop_oneof![0u16..100, Just(65535u16)],
            prop_oneof![Just(0x02u8), Just(0x12u8), Just(0x10u8), any::<u8>()],
        )
            .prop_map(|(proto, src, dst, src_port, dst_port, tcp_flags)| Packet {
                proto,
                src,
                dst,
                src_port,
                dst_port,
                tcp_flags,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// The kernel runs the generated program exactly as the rule model reads.
        #[test]
        fn kernel_matches_the_model(
            rules in proptest::collection::vec(rule(), 0..12),
            packets in proptest::collection::vec(packet(), 1..24),
            to_pod in any::<bool>(),
        ) {
            let hook = if to_pod { Hook::ToPod } else { Hook::FromPod };
            let Some(prog) = load(&rules, hook) else { return Ok(()) };
            for mut p in packets {
                if hook == Hook::FromPod {
                    std::mem::swap(&mut p.src, &mut p.dst);
                }
                prop_assert_eq!(kernel_judges(&prog, &p), packet::judge(&rules, hook, &p), "{:?}", p);
            }
        }
    }
}
