//! Answers for the cluster domain from a [`ClusterView`], as the Kubernetes DNS
//! specification (kubernetes/dns docs/specification.md) and CoreDNS's `kubernetes` plugin
//! (with `pods insecure`, as k3s configures it) do:
//!
//! - `<svc>.<ns>.svc.<zone>`: A/AAAA of the cluster IPs; of the ready endpoints for a
//!   headless Service (NXDOMAIN when it has none); CNAME for an ExternalName Service.
//! - `<endpoint>.<svc>.<ns>.svc.<zone>`: an endpoint by hostname or dashed address.
//! - `_<port>._<proto>.<svc>.<ns>.svc.<zone>` SRV (and SRV on the bare service name for
//!   every named port), with the targets' addresses as additional records.
//! - `<a-b-c-d>.<ns>.pod.<zone>`: the address spelled in the name.
//! - PTR for cluster IPs and endpoint addresses; other reverse names go upstream.
//! - `dns-version.<zone>` TXT, the zone's SOA and NS.
//!
//! Names that do not exist get NXDOMAIN, existing names without the asked type NODATA, both
//! with the zone's SOA so resolvers cache the negative answer for the same short TTL.

use super::wire::*;
use crate::view::{ClusterView, Endpoint, Protocol, ServiceInfo, ServiceType};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The schema version of the specification followed.
const SCHEMA_VERSION: &[u8] = b"1.1.0";
/// How many CNAMEs inside the zone are followed before giving up.
const MAX_CHAIN: usize = 8;

/// The cluster domain this server is authoritative for.
#[derive(Clone, Debug)]
pub struct Zone {
    pub domain: Name,
    pub ttl: u32,
    /// This server's address, for the glue of `ns.dns.<zone>`.
    pub nameserver: Option<IpAddr>,
    soa: Record,
}

impl Zone {
    pub fn new(domain: &str, ttl: u32, nameserver: Option<IpAddr>) -> Result<Zone, WireError> {
        let domain = Name::parse(&domain.to_ascii_lowercase())?;
        let serial = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs() as u32);
        let soa = Record::new(
            domain.clone(),
            ttl,
            RData::Soa(Soa {
                mname: domain.child("dns")?.child("ns")?,
                rname: domain.child("hostmaster")?,
                serial,
                refresh: 7200,
                retry: 1800,
                expire: 86400,
                minimum: ttl,
            }),
        );
        Ok(Zone {
            domain,
            ttl,
            nameserver,
            soa,
        })
    }

    pub fn soa(&self) -> &Record {
        &self.soa
    }
}

/// What to do with one question.
#[derive(Debug, PartialEq)]
pub enum Resolution {
    /// Answered here, authoritatively.
    Answer(Answer),
    /// Not a name of the cluster: ask the upstream resolvers.
    Forward,
    /// An ExternalName Service pointing out of the cluster: reply with `chain` (the CNAMEs)
    /// followed by what the upstreams say about `target`.
    External { chain: Vec<Record>, target: Name },
}

#[derive(Debug, Default, PartialEq)]
pub struct Answer {
    pub rcode: u16,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    pub additional: Vec<Record>,
}

/// What one name holds for one type.
enum Lookup {
    Records {
        answers: Vec<Record>,
        additional: Vec<Record>,
    },
    NoData,
    NxDomain,
    Alias(Name),
    NotOurs,
    Refused,
}

pub fn resolve(view: &ClusterView, zone: &Zone, q: &Question) -> Resolution {
    let mut chain = Vec::new();
    let mut name = q.name.clone();
    let negative = |rcode, chain| {
        Resolution::Answer(Answer {
            rcode,
            answers: chain,
            authority: vec![zone.soa.clone()],
            additional: Vec::new(),
        })
    };
    for _ in 0..MAX_CHAIN {
        let found = if q.qclass != CLASS_IN && q.qclass != CLASS_ANY {
            if name.ends_with(&zone.domain) {
                Lookup::Refused
            } else {
                Lookup::NotOurs
            }
        } else if q.qtype == TYPE_AXFR || q.qtype == TYPE_IXFR {
            // No zone transfers: the zone is the cluster's state, not a file.
            if name.ends_with(&zone.domain) {
                Lookup::Refused
            } else {
                Lookup::NotOurs
            }
        } else {
            lookup(view, zone, &name, q.qtype)
        };
        match found {
            Lookup::Records {
                answers,
                additional,
            } => {
                chain.extend(answers);
                return Resolution::Answer(Answer {
                    rcode: NOERROR,
                    answers: chain,
                    authority: Vec::new(),
                    additional,
                });
            }
            Lookup::NoData => return negative(NOERROR, chain),
            Lookup::NxDomain => return negative(NXDOMAIN, chain),
            Lookup::Refused => {
                return Resolution::Answer(Answer {
                    rcode: REFUSED,
                    ..Answer::default()
                })
            }
            Lookup::NotOurs if chain.is_empty() => return Resolution::Forward,
            Lookup::NotOurs => {
                return Resolution::External {
                    chain,
                    target: name,
                }
            }
            Lookup::Alias(target) => {
                chain.push(Record::new(
                    name.clone(),
                    zone.ttl,
                    RData::Cname(target.clone()),
                ));
                if q.qtype == TYPE_CNAME {
                    return Resolution::Answer(Answer {
                        rcode: NOERROR,
                        answers: chain,
                        ..Answer::default()
                    });
                }
                if !target.ends_with(&zone.domain) {
                    return Resolution::External { chain, target };
                }
                name = target;
            }
        }
    }
    // A loop of ExternalName Services pointing at each other.
    Resolution::Answer(Answer {
        rcode: SERVFAIL,
        answers: chain,
        ..Answer::default()
    })
}

fn lookup(view: &ClusterView, zone: &Zone, name: &Name, qtype: u16) -> Lookup {
    if !name.ends_with(&zone.domain) {
        if qtype == TYPE_PTR {
            if let Some(ip) = reverse_ip(name) {
                let ptrs = ptr_names(view, zone, ip);
                if !ptrs.is_empty() {
                    return records(
                        ptrs.into_iter()
                            .map(|t| Record::new(name.clone(), zone.ttl, RData::Ptr(t)))
                            .collect(),
                        Vec::new(),
                    );
                }
            }
        }
        return Lookup::NotOurs;
    }
    let Some(labels) = name.lower_labels() else {
        return Lookup::NxDomain;
    };
    let rel_len = labels.len() - zone.domain.labels().len();
    // Nearest the zone first: ["svc", ns, svc, endpoint].
    let r: Vec<&str> = labels[..rel_len].iter().rev().map(String::as_str).collect();
    let answer = |data: Vec<RData>| rdata_records(name, zone.ttl, data);
    match r.as_slice() {
        [] => match qtype {
            TYPE_SOA | TYPE_ANY => records(vec![zone.soa.clone()], Vec::new()),
            TYPE_NS => {
                let ns = ns_name(zone);
                let glue = zone
                    .nameserver
                    .map(|ip| vec![Record::new(ns.clone(), zone.ttl, ip_rdata(ip))])
                    .unwrap_or_default();
                records(
                    vec![Record::new(name.clone(), zone.ttl, RData::Ns(ns))],
                    glue,
                )
            }
            _ => Lookup::NoData,
        },
        ["dns-version"] => match qtype {
            TYPE_TXT | TYPE_ANY => answer(vec![RData::Txt(vec![SCHEMA_VERSION.to_vec()])]),
            _ => Lookup::NoData,
        },
        ["dns"] => Lookup::NoData,
        ["dns", "ns"] => answer(
            zone.nameserver
                .into_iter()
                .filter(|ip| wants(qtype, *ip))
                .map(ip_rdata)
                .collect(),
        ),
        ["svc"] | ["pod"] => Lookup::NoData,
        ["svc", ns] | ["pod", ns] => {
            if namespace_known(view, ns) {
                Lookup::NoData
            } else {
                Lookup::NxDomain
            }
        }
        ["svc", ns, svc] => match view.service(ns, svc) {
            Some(s) => service(zone, s, name, qtype),
            None => Lookup::NxDomain,
        },
        ["svc", ns, svc, first] => match view.service(ns, svc) {
            Some(s) if s.kind != ServiceType::ExternalName => {
                if let Some(proto) = first.strip_prefix('_') {
                    // `_tcp.<svc>...`: exists (empty) if some named port uses it.
                    if srv_ports(s, None, proto).next().is_some() {
                        Lookup::NoData
                    } else {
                        Lookup::NxDomain
                    }
                } else {
                    endpoint(zone, s, first, name, qtype)
                }
            }
            _ => Lookup::NxDomain,
        },
        ["svc", ns, svc, proto, port] => match view.service(ns, svc) {
            Some(s) if s.kind != ServiceType::ExternalName => {
                match (proto.strip_prefix('_'), port.strip_prefix('_')) {
                    (Some(proto), Some(port)) => srv(zone, s, name, Some(port), proto, qtype),
                    _ => Lookup::NxDomain,
                }
            }
            _ => Lookup::NxDomain,
        },
        ["pod", _ns, ip] => match dashed_ip(ip) {
            Some(ip) if wants(qtype, ip) => answer(vec![ip_rdata(ip)]),
            Some(_) => Lookup::NoData,
            None => Lookup::NxDomain,
        },
        _ => Lookup::NxDomain,
    }
}

fn records(answers: Vec<Record>, additional: Vec<Record>) -> Lookup {
    if answers.is_empty() {
        Lookup::NoData
    } else {
        Lookup::Records {
            answers,
            additional,
        }
    }
}

fn rdata_records(name: &Name, ttl: u32, data: Vec<RData>) -> Lookup {
    records(
        data.into_iter()
            .map(|d| Record::new(name.clone(), ttl, d))
            .collect(),
        Vec::new(),
    )
}

fn ns_name(zone: &Zone) -> Name {
    match &zone.soa.data {
        RData::Soa(s) => s.mname.clone(),
        _ => zone.domain.clone(),
    }
}

/// Whether an address answers a question of this type.
fn wants(qtype: u16, ip: IpAddr) -> bool {
    matches!(
        (qtype, ip),
        (TYPE_A, IpAddr::V4(_)) | (TYPE_AAAA, IpAddr::V6(_)) | (TYPE_ANY, _)
    )
}

fn ip_rdata(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(v4) => RData::A(v4),
        IpAddr::V6(v6) => RData::Aaaa(v6),
    }
}

fn namespace_known(view: &ClusterView, ns: &str) -> bool {
    view.services.keys().any(|k| k.namespace == ns)
}

/// The endpoints DNS publishes: the ready ones, or all if the Service asks so.
fn published(s: &ServiceInfo) -> impl Iterator<Item = &Endpoint> {
    s.endpoints
        .iter()
        .filter(move |e| e.ready || s.publish_not_ready)
}

/// An endpoint's name under its Service: its hostname, else its address with dashes.
fn endpoint_label(e: &Endpoint, ip: IpAddr) -> String {
    match e.hostname.as_deref().filter(|h| !h.is_empty()) {
        Some(h) => h.to_ascii_lowercase(),
        None => dashed(ip),
    }
}

fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

fn dashed_ip(s: &str) -> Option<IpAddr> {
    if let Ok(v4) = s.replace('-', ".").parse::<Ipv4Addr>() {
        return Some(IpAddr::V4(v4));
    }
    s.replace('-', ":").parse::<Ipv6Addr>().ok().map(IpAddr::V6)
}

fn service_name(zone: &Zone, s: &ServiceInfo) -> Option<Name> {
    zone.domain
        .child("svc")
        .and_then(|n| n.child(&s.key.namespace))
        .and_then(|n| n.child(&s.key.name))
        .ok()
}

fn service(zone: &Zone, s: &ServiceInfo, name: &Name, qtype: u16) -> Lookup {
    if s.kind == ServiceType::ExternalName {
        return match s
            .external_name
            .as_deref()
            .and_then(|t| Name::parse(t).ok())
            .filter(|t| !t.is_root())
        {
            Some(target) => Lookup::Alias(target),
            None => Lookup::NoData,
        };
    }
    if qtype == TYPE_SRV {
        return srv(zone, s, name, None, "", qtype);
    }
    let ips: Vec<IpAddr> = if s.headless {
        let mut ips: Vec<IpAddr> = published(s)
            .flat_map(|e| e.addresses.iter().copied())
            .collect();
        if ips.is_empty() {
            // The specification: a headless Service without ready endpoints does not exist.
            return Lookup::NxDomain;
        }
        dedup(&mut ips);
        ips
    } else {
        s.cluster_ips.clone()
    };
    rdata_records(
        name,
        zone.ttl,
        ips.into_iter()
            .filter(|ip| wants(qtype, *ip))
            .map(ip_rdata)
            .collect(),
    )
}

fn dedup<T: PartialEq>(v: &mut Vec<T>) {
    let mut i = 0;
    while i < v.len() {
        if v[..i].contains(&v[i]) {
            v.remove(i);
        } else {
            i += 1;
        }
    }
}

fn endpoint(zone: &Zone, s: &ServiceInfo, label: &str, name: &Name, qtype: u16) -> Lookup {
    let mut ips = Vec::new();
    for e in published(s) {
        if e.hostname
            .as_deref()
            .is_some_and(|h| h.eq_ignore_ascii_case(label))
        {
            ips.extend(e.addresses.iter().copied());
        } else {
            ips.extend(
                e.addresses
                    .iter()
                    .copied()
                    .filter(|ip| dashed(*ip) == label),
            );
        }
    }
    if ips.is_empty() {
        return Lookup::NxDomain;
    }
    dedup(&mut ips);
    rdata_records(
        name,
        zone.ttl,
        ips.into_iter()
            .filter(|ip| wants(qtype, *ip))
            .map(ip_rdata)
            .collect(),
    )
}

fn proto_matches(p: Protocol, proto: &str) -> bool {
    proto.is_empty()
        || matches!(
            (p, proto.to_ascii_lowercase().as_str()),
            (Protocol::Tcp, "tcp") | (Protocol::Udp, "udp") | (Protocol::Sctp, "sctp")
        )
}

/// The named ports of a Service (its spec's for a ClusterIP Service, its endpoints' for a
/// headless one, as CoreDNS does) matching a name (None: any) and protocol ("": any).
fn srv_ports<'a>(
    s: &'a ServiceInfo,
    port: Option<&'a str>,
    proto: &'a str,
) -> impl Iterator<Item = (&'a str, Protocol)> + 'a {
    let spec = s.ports.iter().map(|p| (p.name.as_str(), p.protocol));
    let eps = s
        .endpoints
        .iter()
        .flat_map(|e| e.ports.iter())
        .map(|p| (p.name.as_str(), p.protocol));
    let all: Box<dyn Iterator<Item = (&str, Protocol)>> = if s.headless {
        Box::new(eps)
    } else {
        Box::new(spec)
    };
    all.filter(move |(n, p)| {
        !n.is_empty()
            && port.is_none_or(|want| n.eq_ignore_ascii_case(want))
            && proto_matches(*p, proto)
    })
}

fn srv(
    zone: &Zone,
    s: &ServiceInfo,
    name: &Name,
    port: Option<&str>,
    proto: &str,
    qtype: u16,
) -> Lookup {
    if srv_ports(s, port, proto).next().is_none() {
        // No such port: the name does not exist (on the bare service name, it exists but
        // has no SRV records).
        return if port.is_some() {
            Lookup::NxDomain
        } else {
            Lookup::NoData
        };
    }
    if qtype != TYPE_SRV && qtype != TYPE_ANY {
        return Lookup::NoData;
    }
    let Some(svc_name) = service_name(zone, s) else {
        return Lookup::NoData;
    };
    // (port, target, target's addresses)
    let mut targets: Vec<(u16, Name, Vec<IpAddr>)> = Vec::new();
    if s.headless {
        for e in published(s) {
            let ports: Vec<u16> = e
                .ports
                .iter()
                .filter(|p| {
                    !p.name.is_empty()
                        && port.is_none_or(|want| p.name.eq_ignore_ascii_case(want))
                        && proto_matches(p.protocol, proto)
                })
                .map(|p| p.port)
                .collect();
            let by_name: Vec<(String, Vec<IpAddr>)> =
                if e.hostname.as_deref().is_some_and(|h| !h.is_empty()) {
                    vec![(endpoint_label(e, e.addresses[0]), e.addresses.clone())]
                } else {
                    e.addresses
                        .iter()
                        .map(|ip| (endpoint_label(e, *ip), vec![*ip]))
                        .collect()
                };
            for (label, ips) in by_name {
                let Ok(target) = svc_name.child(&label) else {
                    continue;
                };
                for p in &ports {
                    targets.push((*p, target.clone(), ips.clone()));
                }
            }
        }
    } else {
        for p in s.ports.iter().filter(|p| {
            !p.name.is_empty()
                && port.is_none_or(|want| p.name.eq_ignore_ascii_case(want))
                && proto_matches(p.protocol, proto)
        }) {
            targets.push((p.port, svc_name.clone(), s.cluster_ips.clone()));
        }
    }
    dedup(&mut targets);
    if targets.is_empty() {
        // A headless Service with no ready endpoints.
        return Lookup::NxDomain;
    }
    let weight = (100 / targets.len()).max(1) as u16;
    let mut answers = Vec::new();
    let mut additional: Vec<Record> = Vec::new();
    for (port, target, ips) in targets {
        answers.push(Record::new(
            name.clone(),
            zone.ttl,
            RData::Srv {
                priority: 0,
                weight,
                port,
                target: target.clone(),
            },
        ));
        for ip in ips {
            let r = Record::new(target.clone(), zone.ttl, ip_rdata(ip));
            if !additional.contains(&r) {
                additional.push(r);
            }
        }
    }
    records(answers, additional)
}

/// The address a reverse name (`d.c.b.a.in-addr.arpa`, nibbles under `ip6.arpa`) spells.
fn reverse_ip(name: &Name) -> Option<IpAddr> {
    let labels = name.lower_labels()?;
    let n = labels.len();
    if n == 6 && labels[4] == "in-addr" && labels[5] == "arpa" {
        let mut o = [0u8; 4];
        for (i, l) in labels[..4].iter().rev().enumerate() {
            o[i] = l.parse().ok()?;
        }
        return Some(IpAddr::V4(Ipv4Addr::from(o)));
    }
    if n == 34 && labels[32] == "ip6" && labels[33] == "arpa" {
        let mut v: u128 = 0;
        for l in labels[..32].iter().rev() {
            if l.len() != 1 {
                return None;
            }
            v = v << 4 | u128::from(u8::from_str_radix(l, 16).ok()?);
        }
        return Some(IpAddr::V6(Ipv6Addr::from(v)));
    }
    None
}

/// The names an address has in the cluster: Services with it as a cluster IP, then the
/// endpoints with it.
fn ptr_names(view: &ClusterView, zone: &Zone, ip: IpAddr) -> Vec<Name> {
    let mut out = Vec::new();
    for s in view.services.values() {
        if s.kind != ServiceType::ExternalName && s.cluster_ips.contains(&ip) {
            out.extend(service_name(zone, s));
        }
    }
    for s in view.services.values() {
        if s.kind == ServiceType::ExternalName {
            continue;
        }
        for e in published(s).filter(|e| e.addresses.contains(&ip)) {
            if let Some(n) =
                service_name(zone, s).and_then(|n| n.child(&endpoint_label(e, ip)).ok())
            {
                out.push(n);
            }
        }
    }
    dedup(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{EndpointPort, ServiceKey, ServicePort};
    use std::sync::Arc;

    fn q(name: &str, qtype: u16) -> Question {
        Question {
            name: Name::parse(name).unwrap(),
            qtype,
            qclass: CLASS_IN,
        }
    }

    fn svc(ns: &str, name: &str) -> ServiceInfo {
        ServiceInfo {
            key: ServiceKey {
                namespace: ns.into(),
                name: name.into(),
            },
            kind: ServiceType::ClusterIp,
            cluster_ips: vec![],
            headless: false,
            external_name: None,
            ports: vec![],
            affinity: None,
            publish_not_ready: false,
            traffic: Default::default(),
            endpoints: vec![],
        }
    }

    fn ep(ip: &str, hostname: Option<&str>, ready: bool) -> Endpoint {
        Endpoint {
            labels: Default::default(),
            workload: None,
            addresses: vec![ip.parse().unwrap()],
            hostname: hostname.map(Into::into),
            node_name: None,
            target: None,
            ready,
            serving: ready,
            terminating: false,
            ports: Arc::new(vec![EndpointPort {
                name: "db".into(),
                protocol: Protocol::Tcp,
                port: 5432,
            }]),
        }
    }

    fn view() -> ClusterView {
        let mut web = svc("shop", "web");
        web.cluster_ips = vec!["10.43.0.5".parse().unwrap()];
        web.ports = vec![ServicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            node_port: None,
            app_protocol: None,
            target_port: None,
        }];
        let mut db = svc("shop", "db");
        db.headless = true;
        db.endpoints = vec![
            ep("10.42.0.7", Some("db-0"), true),
            ep("10.42.0.8", None, true),
            ep("10.42.0.9", Some("db-2"), false),
        ];
        let mut ext = svc("shop", "ext");
        ext.kind = ServiceType::ExternalName;
        ext.external_name = Some("www.example.org".into());
        let mut alias = svc("shop", "alias");
        alias.kind = ServiceType::ExternalName;
        alias.external_name = Some("web.shop.svc.cluster.local.".into());
        let mut v = ClusterView::default();
        for s in [web, db, ext, alias] {
            v.services.insert(s.key.clone(), s);
        }
        v
    }

    fn zone() -> Zone {
        Zone::new("cluster.local", 5, None).unwrap()
    }

    fn answer(r: Resolution) -> Answer {
        match r {
            Resolution::Answer(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cluster_ip_service() {
        let a = answer(resolve(
            &view(),
            &zone(),
            &q("web.shop.svc.cluster.local", TYPE_A),
        ));
        assert_eq!(a.rcode, NOERROR);
        assert_eq!(a.answers[0].data, RData::A(Ipv4Addr::new(10, 43, 0, 5)));
        assert_eq!(a.answers[0].ttl, 5);
        let a = answer(resolve(
            &view(),
            &zone(),
            &q("web.shop.svc.cluster.local", TYPE_AAAA),
        ));
        assert_eq!((a.rcode, a.answers.len()), (NOERROR, 0));
        assert!(matches!(a.authority[0].data, RData::Soa(_)));
    }

    #[test]
    fn headless_skips_unready_unless_published() {
        let z = zone();
        let a = answer(resolve(
            &view(),
            &z,
            &q("db.shop.svc.cluster.local", TYPE_A),
        ));
        assert_eq!(a.answers.len(), 2);
        let mut v = view();
        v.services
            .values_mut()
            .for_each(|s| s.publish_not_ready = true);
        let a = answer(resolve(&v, &z, &q("db.shop.svc.cluster.local", TYPE_A)));
        assert_eq!(a.answers.len(), 3);
        let a = answer(resolve(
            &view(),
            &z,
            &q("db-2.db.shop.svc.cluster.local", TYPE_A),
        ));
        assert_eq!(a.rcode, NXDOMAIN);
        let a = answer(resolve(
            &view(),
            &z,
            &q("10-42-0-8.db.shop.svc.cluster.local", TYPE_A),
        ));
        assert_eq!(a.answers[0].data, RData::A(Ipv4Addr::new(10, 42, 0, 8)));
        // No ready endpoints at all: NXDOMAIN, as the specification says.
        let mut v = view();
        v.services.values_mut().for_each(|s| s.endpoints.clear());
        let a = answer(resolve(&v, &z, &q("db.shop.svc.cluster.local", TYPE_A)));
        assert_eq!(a.rcode, NXDOMAIN);
    }

    #[test]
    fn srv_for_headless_names_each_endpoint() {
        let a = answer(resolve(
            &view(),
            &zone(),
            &q("_db._tcp.db.shop.svc.cluster.local", TYPE_SRV),
        ));
        let targets: Vec<String> = a
            .answers
            .iter()
            .map(|r| match &r.data {
                RData::Srv { target, port, .. } => format!("{target}:{port}"),
                _ => panic!(),
            })
            .collect();
        assert_eq!(
            targets,
            [
                "db-0.db.shop.svc.cluster.local.:5432",
                "10-42-0-8.db.shop.svc.cluster.local.:5432"
            ]
        );
        assert_eq!(a.additional.len(), 2);
        let a = answer(resolve(
            &view(),
            &zone(),
            &q("_db._udp.db.shop.svc.cluster.local", TYPE_SRV),
        ));
        assert_eq!(a.rcode, NXDOMAIN);
        let a = answer(resolve(
            &view(),
            &zone(),
            &q("_tcp.db.shop.svc.cluster.local", TYPE_SRV),
        ));
        assert_eq!((a.rcode, a.answers.len()), (NOERROR, 0));
    }

    #[test]
    fn ptr_and_reverse_fallthrough() {
        let z = zone();
        let a = answer(resolve(&view(), &z, &q("5.0.43.10.in-addr.arpa", TYPE_PTR)));
        assert_eq!(
            a.answers[0].data,
            RData::Ptr(Name::parse("web.shop.svc.cluster.local").unwrap())
        );
        let a = answer(resolve(&view(), &z, &q("7.0.42.10.in-addr.arpa", TYPE_PTR)));
        assert_eq!(
            a.answers[0].data,
            RData::Ptr(Name::parse("db-0.db.shop.svc.cluster.local").unwrap())
        );
        assert_eq!(
            resolve(&view(), &z, &q("8.8.8.8.in-addr.arpa", TYPE_PTR)),
            Resolution::Forward
        );
        assert_eq!(
            resolve(&view(), &z, &q("example.org", TYPE_A)),
            Resolution::Forward
        );
    }

    #[test]
    fn external_names() {
        let z = zone();
        match resolve(&view(), &z, &q("ext.shop.svc.cluster.local", TYPE_A)) {
            Resolution::External { chain, target } => {
                assert_eq!(target, Name::parse("www.example.org").unwrap());
                assert_eq!(chain.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        let a = answer(resolve(
            &view(),
            &z,
            &q("alias.shop.svc.cluster.local", TYPE_A),
        ));
        assert_eq!(a.answers.len(), 2, "{a:?}");
        assert_eq!(a.answers[1].data, RData::A(Ipv4Addr::new(10, 43, 0, 5)));
        let a = answer(resolve(
            &view(),
            &z,
            &q("alias.shop.svc.cluster.local", TYPE_CNAME),
        ));
        assert_eq!(a.answers.len(), 1);
    }

    #[test]
    fn negative_answers_and_case() {
        let z = zone();
        for (name, rcode) in [
            ("nope.shop.svc.cluster.local", NXDOMAIN),
            ("shop.svc.cluster.local", NOERROR),
            ("nons.svc.cluster.local", NXDOMAIN),
            ("svc.cluster.local", NOERROR),
            ("a.b.c.d.e.f.cluster.local", NXDOMAIN),
            ("10-42-0-x.shop.pod.cluster.local", NXDOMAIN),
        ] {
            let a = answer(resolve(&view(), &z, &q(name, TYPE_A)));
            assert_eq!(a.rcode, rcode, "{name}");
            assert!(a.answers.is_empty());
            assert_eq!(a.authority, vec![z.soa().clone()]);
        }
        let a = answer(resolve(
            &view(),
            &z,
            &q("WEB.Shop.SVC.Cluster.Local", TYPE_A),
        ));
        assert_eq!(a.answers.len(), 1);
        let a = answer(resolve(
            &view(),
            &z,
            &q("10-42-0-99.any.pod.cluster.local", TYPE_A),
        ));
        assert_eq!(a.answers[0].data, RData::A(Ipv4Addr::new(10, 42, 0, 99)));
        let a = answer(resolve(
            &view(),
            &z,
            &q("fd00--1.any.pod.cluster.local", TYPE_AAAA),
        ));
        assert_eq!(a.answers[0].data, RData::Aaaa("fd00::1".parse().unwrap()));
        let a = answer(resolve(
            &view(),
            &z,
            &q("dns-version.cluster.local", TYPE_TXT),
        ));
        assert_eq!(a.answers[0].data, RData::Txt(vec![b"1.1.0".to_vec()]));
    }
}
