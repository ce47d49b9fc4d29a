//! The DNS server over real sockets on 127.0.0.1, as a pod's resolver would use it. Every
//! upstream here is a fake on 127.0.0.1: nothing leaves the machine.

use super::wire::*;
use super::*;
use crate::view::*;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{oneshot, watch};

struct Running {
    udp: SocketAddr,
    tcp: SocketAddr,
    stats: Arc<DnsStats>,
    _view: watch::Sender<Arc<ClusterView>>,
    _stop: oneshot::Sender<()>,
}

async fn start(view: ClusterView, upstreams: Vec<SocketAddr>) -> Running {
    start_with(view, upstreams, |_| {}).await
}

async fn start_with(
    view: ClusterView,
    upstreams: Vec<SocketAddr>,
    tune: impl FnOnce(&mut DnsConfig),
) -> Running {
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (udp_addr, tcp_addr) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
    let (tx, rx) = watch::channel(Arc::new(view));
    let mut cfg = DnsConfig::new("cluster.local", upstreams);
    cfg.upstream_timeout = Duration::from_millis(300);
    tune(&mut cfg);
    let stats = cfg.stats.clone();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    tokio::spawn(serve(udp, tcp, rx, cfg, async {
        let _ = stop_rx.await;
    }));
    Running {
        udp: udp_addr,
        tcp: tcp_addr,
        stats,
        _view: tx,
        _stop: stop_tx,
    }
}

fn query(name: &str, qtype: u16, edns: Option<u16>) -> Message {
    Message {
        header: Header {
            id: 0xbeef,
            rd: true,
            ..Header::default()
        },
        questions: vec![Question {
            name: Name::parse(name).unwrap(),
            qtype,
            qclass: CLASS_IN,
        }],
        edns: edns.map(|udp_size| Edns {
            udp_size,
            ext_rcode: 0,
            version: 0,
            dnssec_ok: false,
            options: vec![],
        }),
        ..Message::default()
    }
}

async fn udp_raw(server: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(bytes, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let (n, _) = tokio::time::timeout(Duration::from_secs(3), sock.recv_from(&mut buf))
        .await
        .ok()?
        .unwrap();
    buf.truncate(n);
    Some(buf)
}

async fn udp(server: SocketAddr, q: &Message) -> Message {
    let reply = udp_raw(server, &q.encode()).await.expect("a reply");
    let m = Message::parse(&reply).unwrap();
    assert_eq!(m.header.id, q.header.id);
    assert!(m.header.qr);
    assert_eq!(m.questions, q.questions);
    m
}

async fn tcp_send(s: &mut TcpStream, q: &Message) {
    let bytes = q.encode();
    s.write_all(&(bytes.len() as u16).to_be_bytes())
        .await
        .unwrap();
    s.write_all(&bytes).await.unwrap();
}

async fn tcp_recv(s: &mut TcpStream) -> Message {
    let n = s.read_u16().await.unwrap() as usize;
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).await.unwrap();
    Message::parse(&buf).unwrap()
}

async fn tcp(server: SocketAddr, q: &Message) -> Message {
    let mut s = TcpStream::connect(server).await.unwrap();
    tcp_send(&mut s, q).await;
    tcp_recv(&mut s).await
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn service(ns: &str, name: &str) -> ServiceInfo {
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

fn endpoint(addr: IpAddr, hostname: Option<&str>, ready: bool) -> Endpoint {
    Endpoint {
        labels: Default::default(),
        workload: None,
        addresses: vec![addr],
        hostname: hostname.map(Into::into),
        node_name: Some("node-1".into()),
        target: None,
        ready,
        serving: ready,
        terminating: false,
        ports: Arc::new(vec![EndpointPort {
            name: "peer".into(),
            protocol: Protocol::Tcp,
            port: 2380,
        }]),
    }
}

fn cluster() -> ClusterView {
    let mut web = service("shop", "web");
    web.cluster_ips = vec![ip("10.43.0.20")];
    web.ports = vec![
        ServicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            node_port: None,
            app_protocol: None,
            target_port: None,
        },
        ServicePort {
            name: "".into(),
            protocol: Protocol::Udp,
            port: 9999,
            node_port: None,
            app_protocol: None,
            target_port: None,
        },
    ];
    let mut etcd = service("shop", "etcd");
    etcd.headless = true;
    etcd.endpoints = vec![
        endpoint(ip("10.42.0.10"), Some("etcd-0"), true),
        endpoint(ip("10.42.0.11"), Some("etcd-1"), true),
        endpoint(ip("10.42.0.12"), Some("etcd-2"), false),
    ];
    let mut ext = service("shop", "ext");
    ext.kind = ServiceType::ExternalName;
    ext.external_name = Some("db.example.test".into());
    let mut big = service("shop", "big");
    big.headless = true;
    big.endpoints = (0..200u32)
        .map(|i| endpoint(IpAddr::V4(Ipv4Addr::from(0x0a2a_0100 + i)), None, true))
        .collect();
    let mut v = ClusterView::default();
    for s in [web, etcd, ext, big] {
        v.services.insert(s.key.clone(), s);
    }
    v
}

fn a_records(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| match r.data {
            RData::A(a) => Some(a.to_string()),
            RData::Aaaa(a) => Some(a.to_string()),
            _ => None,
        })
        .collect()
}

/// A fake upstream resolver on 127.0.0.1 (UDP and TCP on the same port): answers every A
/// question with 192.0.2.1 (TTL 300), or only with TC=1 over UDP when `truncate_udp`.
async fn fake_upstream(truncate_udp: bool) -> SocketAddr {
    // The kernel picks a free UDP port; the same TCP port may be taken: try again.
    let (sock, addr, listener) = {
        let mut tries = 0;
        loop {
            let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = sock.local_addr().unwrap();
            match TcpListener::bind(addr).await {
                Ok(l) => break (sock, addr, l),
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                }
                Err(e) => panic!("no port free for both UDP and TCP: {e}"),
            }
        }
    };
    let answer = |q: &Message| {
        let mut m = Message::reply_to(q);
        m.header.ra = true;
        let name = q.questions[0].name.clone();
        m.answers.push(Record::new(
            name.clone(),
            300,
            RData::A(Ipv4Addr::new(192, 0, 2, 1)),
        ));
        m.answers.push(Record::new(
            name,
            300,
            RData::A(Ipv4Addr::new(192, 0, 2, 2)),
        ));
        m
    };
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
            let Ok(q) = Message::parse(&buf[..n]) else {
                continue;
            };
            let mut m = answer(&q);
            if truncate_udp {
                m.answers.clear();
                m.header.tc = true;
            }
            let _ = sock.send_to(&m.encode(), peer).await;
        }
    });
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                while let Ok(n) = s.read_u16().await {
                    let mut buf = vec![0u8; n as usize];
                    if s.read_exact(&mut buf).await.is_err() {
                        return;
                    }
                    let Ok(q) = Message::parse(&buf) else { return };
                    let bytes = answer(&q).encode();
                    let _ = s.write_all(&(bytes.len() as u16).to_be_bytes()).await;
                    let _ = s.write_all(&bytes).await;
                }
            });
        }
    });
    addr
}

/// An upstream that takes queries and never answers.
async fn silent_upstream() -> (SocketAddr, UdpSocket) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    (sock.local_addr().unwrap(), sock)
}

#[tokio::test]
async fn a_record_for_a_cluster_ip_service() {
    let s = start(cluster(), vec![]).await;
    let m = udp(s.udp, &query("web.shop.svc.cluster.local", TYPE_A, None)).await;
    assert_eq!(m.rcode(), NOERROR);
    assert!(m.header.aa && m.header.rd && m.header.ra);
    assert_eq!(a_records(&m), ["10.43.0.20"]);
    assert_eq!(m.answers[0].ttl, 5);
    assert!(m.edns.is_none(), "no OPT unless the query had one");
    // With EDNS: the OPT record is echoed.
    let m = udp(
        s.udp,
        &query("web.shop.svc.cluster.local", TYPE_A, Some(1232)),
    )
    .await;
    assert_eq!(m.edns.as_ref().unwrap().udp_size, OUR_UDP_SIZE);
    // Same over TCP.
    let m = tcp(s.tcp, &query("web.shop.svc.cluster.local", TYPE_A, None)).await;
    assert_eq!(a_records(&m), ["10.43.0.20"]);
}

#[tokio::test]
async fn aaaa_for_an_ipv4_service_is_nodata_with_soa() {
    let s = start(cluster(), vec![]).await;
    let m = udp(s.udp, &query("web.shop.svc.cluster.local", TYPE_AAAA, None)).await;
    assert_eq!(m.rcode(), NOERROR);
    assert!(m.answers.is_empty());
    assert_eq!(m.authority.len(), 1);
    match &m.authority[0].data {
        RData::Soa(soa) => {
            assert_eq!(soa.minimum, 5);
            assert_eq!(soa.mname.to_string(), "ns.dns.cluster.local.");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(m.authority[0].name.to_string(), "cluster.local.");
    assert_eq!(m.authority[0].ttl, 5);
}

#[tokio::test]
async fn srv_for_a_named_port() {
    let s = start(cluster(), vec![]).await;
    let m = udp(
        s.udp,
        &query("_http._tcp.web.shop.svc.cluster.local", TYPE_SRV, None),
    )
    .await;
    assert_eq!(m.rcode(), NOERROR);
    assert_eq!(m.answers.len(), 1);
    match &m.answers[0].data {
        RData::Srv { port, target, .. } => {
            assert_eq!(*port, 80);
            assert_eq!(target.to_string(), "web.shop.svc.cluster.local.");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(m.additional.len(), 1);
    assert_eq!(m.additional[0].data, RData::A(Ipv4Addr::new(10, 43, 0, 20)));
    // An unnamed port has no SRV record; an unknown one does not exist.
    let m = udp(
        s.udp,
        &query("_nope._tcp.web.shop.svc.cluster.local", TYPE_SRV, None),
    )
    .await;
    assert_eq!(m.rcode(), NXDOMAIN);
    // Headless: one record per ready endpoint, targets under the service.
    let m = udp(
        s.udp,
        &query("_peer._tcp.etcd.shop.svc.cluster.local", TYPE_SRV, None),
    )
    .await;
    let targets: Vec<String> = m
        .answers
        .iter()
        .map(|r| match &r.data {
            RData::Srv { target, port, .. } => format!("{target} {port}"),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        targets,
        [
            "etcd-0.etcd.shop.svc.cluster.local. 2380",
            "etcd-1.etcd.shop.svc.cluster.local. 2380"
        ]
    );
    assert_eq!(m.additional.len(), 2);
}

#[tokio::test]
async fn ptr_for_cluster_ips_and_endpoints() {
    let s = start(cluster(), vec![]).await;
    let m = udp(s.udp, &query("20.0.43.10.in-addr.arpa", TYPE_PTR, None)).await;
    assert_eq!(m.answers.len(), 1);
    assert_eq!(
        m.answers[0].data,
        RData::Ptr(Name::parse("web.shop.svc.cluster.local").unwrap())
    );
    let m = udp(s.udp, &query("11.0.42.10.in-addr.arpa", TYPE_PTR, None)).await;
    assert_eq!(
        m.answers[0].data,
        RData::Ptr(Name::parse("etcd-1.etcd.shop.svc.cluster.local").unwrap())
    );
    let m = udp(s.udp, &query("5.1.42.10.in-addr.arpa", TYPE_PTR, None)).await;
    assert_eq!(
        m.answers[0].data,
        RData::Ptr(Name::parse("10-42-1-5.big.shop.svc.cluster.local").unwrap())
    );
}

#[tokio::test]
async fn headless_statefulset_and_pod_names() {
    let s = start(cluster(), vec![]).await;
    let m = udp(s.udp, &query("etcd.shop.svc.cluster.local", TYPE_A, None)).await;
    assert_eq!(
        a_records(&m),
        ["10.42.0.10", "10.42.0.11"],
        "ready endpoints only"
    );
    let m = udp(
        s.udp,
        &query("etcd-1.etcd.shop.svc.cluster.local", TYPE_A, None),
    )
    .await;
    assert_eq!(a_records(&m), ["10.42.0.11"]);
    let m = udp(
        s.udp,
        &query("etcd-2.etcd.shop.svc.cluster.local", TYPE_A, None),
    )
    .await;
    assert_eq!(m.rcode(), NXDOMAIN, "not ready: not published");
    let m = udp(
        s.udp,
        &query("10-42-7-9.shop.pod.cluster.local", TYPE_A, None),
    )
    .await;
    assert_eq!(a_records(&m), ["10.42.7.9"]);
}

#[tokio::test]
async fn external_name_is_a_cname_followed_upstream() {
    let up = fake_upstream(false).await;
    let s = start(cluster(), vec![up]).await;
    let m = udp(s.udp, &query("ext.shop.svc.cluster.local", TYPE_A, None)).await;
    assert_eq!(m.rcode(), NOERROR);
    assert_eq!(
        m.answers[0].data,
        RData::Cname(Name::parse("db.example.test").unwrap())
    );
    assert_eq!(m.answers[0].name.to_string(), "ext.shop.svc.cluster.local.");
    assert_eq!(a_records(&m), ["192.0.2.1", "192.0.2.2"]);
    assert_eq!(m.answers[1].name.to_string(), "db.example.test.");
    // Without any upstream: the CNAME alone.
    let s = start(cluster(), vec![]).await;
    let m = udp(s.udp, &query("ext.shop.svc.cluster.local", TYPE_A, None)).await;
    assert_eq!(m.rcode(), NOERROR);
    assert_eq!(m.answers.len(), 1);
    assert!(matches!(m.answers[0].data, RData::Cname(_)));
}

#[tokio::test]
async fn unknown_names_are_nxdomain_with_soa() {
    let s = start(cluster(), vec![]).await;
    for name in [
        "nope.shop.svc.cluster.local",
        "web.other.svc.cluster.local",
        "x.y.web.shop.svc.cluster.local",
    ] {
        let m = udp(s.udp, &query(name, TYPE_A, None)).await;
        assert_eq!(m.rcode(), NXDOMAIN, "{name}");
        assert!(m.header.aa);
        assert!(matches!(m.authority[0].data, RData::Soa(_)), "{name}");
    }
    assert_eq!(s.stats.responses(NXDOMAIN), 3);
}

#[tokio::test]
async fn names_are_case_insensitive_and_echoed() {
    let s = start(cluster(), vec![]).await;
    let m = udp(s.udp, &query("WeB.SHOP.svc.Cluster.LOCAL", TYPE_A, None)).await;
    assert_eq!(a_records(&m), ["10.43.0.20"]);
    assert_eq!(m.answers[0].name.to_string(), "WeB.SHOP.svc.Cluster.LOCAL.");
    assert_eq!(
        m.questions[0].name.to_string(),
        "WeB.SHOP.svc.Cluster.LOCAL."
    );
}

#[tokio::test]
async fn large_answers_truncate_over_udp_and_come_whole_over_tcp() {
    let s = start(cluster(), vec![]).await;
    let q = query("big.shop.svc.cluster.local", TYPE_A, None);
    let m = udp(s.udp, &q).await;
    assert!(m.header.tc, "200 addresses do not fit in 512 octets");
    assert!(m.answers.is_empty());
    let m = tcp(s.tcp, &q).await;
    assert!(!m.header.tc);
    assert_eq!(m.answers.len(), 200);
    // An EDNS client with room for it gets it all over UDP.
    let m = udp(
        s.udp,
        &query("big.shop.svc.cluster.local", TYPE_A, Some(4096)),
    )
    .await;
    assert!(!m.header.tc);
    assert_eq!(m.answers.len(), 200);
    // 1232 is not enough: truncated, with the OPT record still there.
    let m = udp(
        s.udp,
        &query("big.shop.svc.cluster.local", TYPE_A, Some(1232)),
    )
    .await;
    assert!(m.header.tc && m.edns.is_some());
    assert_eq!(s.stats.truncated.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn other_names_are_forwarded() {
    let up = fake_upstream(false).await;
    let s = start(cluster(), vec![up]).await;
    let m = udp(s.udp, &query("www.example.test", TYPE_A, None)).await;
    assert_eq!(a_records(&m), ["192.0.2.1", "192.0.2.2"]);
    assert_eq!(m.answers[0].ttl, 300);
    let m = tcp(s.tcp, &query("www.example.test", TYPE_A, None)).await;
    assert_eq!(a_records(&m), ["192.0.2.1", "192.0.2.2"]);
    // A reverse name the cluster does not know falls through too.
    let m = udp(s.udp, &query("1.2.0.192.in-addr.arpa", TYPE_PTR, None)).await;
    assert_eq!(m.rcode(), NOERROR);
    assert_eq!(s.stats.forwarded.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn truncated_upstream_replies_are_asked_again_over_tcp() {
    let up = fake_upstream(true).await;
    let s = start(cluster(), vec![up]).await;
    let m = udp(s.udp, &query("www.example.test", TYPE_A, Some(1232))).await;
    assert!(!m.header.tc);
    assert_eq!(a_records(&m), ["192.0.2.1", "192.0.2.2"]);
}

#[tokio::test]
async fn silent_upstreams_mean_servfail_and_do_not_block_cluster_answers() {
    let (silent, _keep) = silent_upstream().await;
    let up = fake_upstream(false).await;
    // The silent one first: the second answers after the first's timeout.
    let s = start(cluster(), vec![silent, up]).await;
    let m = udp(s.udp, &query("www.example.test", TYPE_A, None)).await;
    assert_eq!(a_records(&m), ["192.0.2.1", "192.0.2.2"]);

    let s = start(cluster(), vec![silent]).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut slow = query("www.example.test", TYPE_A, None);
    slow.header.id = 1;
    let mut fast = query("web.shop.svc.cluster.local", TYPE_A, None);
    fast.header.id = 2;
    client.send_to(&slow.encode(), s.udp).await.unwrap();
    client.send_to(&fast.encode(), s.udp).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (n, _) = tokio::time::timeout(Duration::from_secs(3), client.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let m = Message::parse(&buf[..n]).unwrap();
        ids.push((m.header.id, m.rcode()));
    }
    assert_eq!(ids, [(2, NOERROR), (1, SERVFAIL)]);
    assert_eq!(s.stats.upstream_failures.load(Ordering::Relaxed), 1);

    // No upstream at all: SERVFAIL straight away.
    let s = start(cluster(), vec![]).await;
    let m = udp(s.udp, &query("www.example.test", TYPE_A, None)).await;
    assert_eq!(m.rcode(), SERVFAIL);
}

/// Sends `junk` and then a good query from one socket: the first reply must be the good
/// query's, since the server reads its socket in order and answers cluster names at once.
async fn assert_ignored(server: SocketAddr, junk: &[u8]) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(junk, server).await.unwrap();
    let mut good = query("web.shop.svc.cluster.local", TYPE_A, None);
    good.header.id = 0x4242;
    sock.send_to(&good.encode(), server).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(3), sock.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(Message::parse(&buf[..n]).unwrap().header.id, 0x4242);
}

#[tokio::test]
async fn malformed_queries() {
    let s = start(cluster(), vec![]).await;
    // Shorter than a header: no reply.
    assert_ignored(s.udp, &[1, 2, 3]).await;
    // A header and a broken name: FORMERR with the id kept.
    let mut bad = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    bad.extend_from_slice(&[5, b'a', b'b']);
    let m = Message::parse(&udp_raw(s.udp, &bad).await.unwrap()).unwrap();
    assert_eq!((m.header.id, m.rcode()), (0x1234, FORMERR));
    // A header with no question: FORMERR.
    let mut empty = bad[..12].to_vec();
    empty[5] = 0;
    let m = Message::parse(&udp_raw(s.udp, &empty).await.unwrap()).unwrap();
    assert_eq!(m.rcode(), FORMERR);
    // A response sent to us: ignored.
    let mut resp = query("web.shop.svc.cluster.local", TYPE_A, None);
    resp.header.qr = true;
    assert_ignored(s.udp, &resp.encode()).await;
    // Garbage over TCP, then a good query on the same connection.
    let mut c = TcpStream::connect(s.tcp).await.unwrap();
    c.write_all(&(bad.len() as u16).to_be_bytes())
        .await
        .unwrap();
    c.write_all(&bad).await.unwrap();
    assert_eq!(tcp_recv(&mut c).await.rcode(), FORMERR);
    tcp_send(&mut c, &query("web.shop.svc.cluster.local", TYPE_A, None)).await;
    assert_eq!(a_records(&tcp_recv(&mut c).await), ["10.43.0.20"]);
    // The server is still fine.
    let m = udp(s.udp, &query("web.shop.svc.cluster.local", TYPE_A, None)).await;
    assert_eq!(m.rcode(), NOERROR);
    assert_eq!(s.stats.dropped.load(Ordering::Relaxed), 2);
    assert_eq!(s.stats.responses(FORMERR), 3);
}

#[tokio::test]
async fn tcp_connections_carry_many_queries_and_close_when_idle() {
    let up = fake_upstream(false).await;
    let s = start_with(cluster(), vec![up], |c| {
        c.tcp_idle_timeout = Duration::from_millis(300)
    })
    .await;
    let mut c = TcpStream::connect(s.tcp).await.unwrap();
    // Pipelined: three queries written before reading any answer.
    let names = [
        "web.shop.svc.cluster.local",
        "www.example.test",
        "etcd-0.etcd.shop.svc.cluster.local",
    ];
    for (i, n) in names.iter().enumerate() {
        let mut q = query(n, TYPE_A, None);
        q.header.id = i as u16;
        tcp_send(&mut c, &q).await;
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        let m = tcp_recv(&mut c).await;
        got.push((m.header.id, a_records(&m)));
    }
    got.sort();
    assert_eq!(
        got,
        [
            (0, vec!["10.43.0.20".to_string()]),
            (1, vec!["192.0.2.1".to_string(), "192.0.2.2".to_string()]),
            (2, vec!["10.42.0.10".to_string()]),
        ]
    );
    // Quiet past the idle timeout: the server closes.
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(3), c.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn view_changes_are_seen_by_the_next_query() {
    let s = start(ClusterView::default(), vec![]).await;
    let m = udp(s.udp, &query("web.shop.svc.cluster.local", TYPE_A, None)).await;
    assert_eq!(m.rcode(), NXDOMAIN);
    s._view.send(Arc::new(cluster())).unwrap();
    let m = udp(s.udp, &query("web.shop.svc.cluster.local", TYPE_A, None)).await;
    assert_eq!(a_records(&m), ["10.43.0.20"]);
}

#[test]
fn proxy_config_picks_upstreams() {
    let mut cfg = crate::ProxyConfig {
        metrics_addr: None,
        ingress_http_port: None,
        ingress_https_port: None,
        node_name: "n".into(),
        node_ip: ip("192.0.2.10"),
        state_dir: "/tmp".into(),
        cluster_dns: Some(ip("10.43.0.10")),
        cluster_domain: "cluster.local".into(),
        dns_upstreams: vec![],
        bridge: None,
        mesh: None,
    };
    let host = "nameserver 10.43.0.10\nnameserver 127.0.0.53\n";
    let d = DnsConfig::from_proxy_with_resolv_conf(&cfg, host);
    assert_eq!(d.upstreams, vec!["127.0.0.53:53".parse().unwrap()]);
    assert_eq!(d.nameserver, Some(ip("10.43.0.10")));
    cfg.dns_upstreams = vec!["127.0.0.1:5300".parse().unwrap()];
    let d = DnsConfig::from_proxy_with_resolv_conf(&cfg, host);
    assert_eq!(d.upstreams, vec!["127.0.0.1:5300".parse().unwrap()]);
}

/// A real client against the server: busybox's nslookup, when the machine has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busybox_nslookup_resolves_cluster_names() {
    let Ok(out) = std::process::Command::new("busybox")
        .arg("nslookup")
        .output()
    else {
        eprintln!("no busybox: skipped");
        return;
    };
    let _ = out;
    let up = fake_upstream(false).await;
    // busybox sends UDP and TCP to the same port: bind both on one.
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = udp.local_addr().unwrap();
    let tcp = TcpListener::bind(addr).await.unwrap();
    let (_tx, rx) = watch::channel(Arc::new(cluster()));
    let (_stop, stop_rx) = oneshot::channel::<()>();
    tokio::spawn(serve(
        udp,
        tcp,
        rx,
        DnsConfig::new("cluster.local", vec![up]),
        async {
            let _ = stop_rx.await;
        },
    ));
    let run = |args: Vec<String>| async move {
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new("busybox")
                .arg("nslookup")
                .args(&args)
                .output()
                .unwrap();
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .await
        .unwrap()
    };
    let port = format!("-port={}", addr.port());
    let out = run(vec![
        port.clone(),
        "-type=a".into(),
        "web.shop.svc.cluster.local".into(),
        "127.0.0.1".into(),
    ])
    .await;
    assert!(out.contains("10.43.0.20"), "{out}");
    let out = run(vec![
        port.clone(),
        "-type=srv".into(),
        "_peer._tcp.etcd.shop.svc.cluster.local".into(),
        "127.0.0.1".into(),
    ])
    .await;
    assert!(out.contains("etcd-0.etcd.shop.svc.cluster.local"), "{out}");
    let out = run(vec![
        port.clone(),
        "-type=a".into(),
        "nope.shop.svc.cluster.local".into(),
        "127.0.0.1".into(),
    ])
    .await;
    assert!(out.contains("NXDOMAIN"), "{out}");
    let out = run(vec![
        port,
        "-type=a".into(),
        "www.example.test".into(),
        "127.0.0.1".into(),
    ])
    .await;
    assert!(out.contains("192.0.2.1"), "{out}");
}
