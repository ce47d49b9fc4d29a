//! The DNS server loop: one task reads the UDP socket and accepts TCP connections. Cluster
//! names are answered inline from the current [`ClusterView`] snapshot (no I/O, so no query
//! waits behind another); anything that needs an upstream runs in its own task, bounded, so
//! a slow resolver never delays a cluster answer. TCP carries 2-byte length-prefixed
//! messages, several per connection and answered as they complete (RFC 7766), and closes
//! after an idle timeout.

use super::forward::{upstreams_from_resolv_conf, Forwarder};
use super::resolve::{resolve, Resolution, Zone};
use super::wire::*;
use crate::view::ClusterView;
use crate::ProxyConfig;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

/// CoreDNS's default TTL for the `kubernetes` plugin.
pub const DEFAULT_TTL: u32 = 5;

#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// The cluster domain (`cluster.local`).
    pub domain: String,
    /// Where other names go, tried in order.
    pub upstreams: Vec<SocketAddr>,
    /// The address this server answers on, published as the zone's nameserver glue.
    pub nameserver: Option<IpAddr>,
    pub ttl: u32,
    /// How long one upstream may stay silent before the next is asked.
    pub upstream_timeout: Duration,
    /// A TCP connection with no query for this long is closed.
    pub tcp_idle_timeout: Duration,
    /// Upstream exchanges in flight at once; beyond, UDP queries get SERVFAIL at once.
    pub max_forwards: usize,
    /// TCP connections at once; beyond, new ones are closed.
    pub max_tcp_connections: usize,
    pub stats: Arc<DnsStats>,
}

impl DnsConfig {
    pub fn new(domain: impl Into<String>, upstreams: Vec<SocketAddr>) -> DnsConfig {
        DnsConfig {
            domain: domain.into(),
            upstreams,
            nameserver: None,
            ttl: DEFAULT_TTL,
            upstream_timeout: Duration::from_secs(2),
            tcp_idle_timeout: Duration::from_secs(10),
            max_forwards: 512,
            max_tcp_connections: 256,
            stats: Arc::new(DnsStats::default()),
        }
    }

    /// The proxy's settings: its domain, its cluster DNS address, and its upstreams or else
    /// the host's resolv.conf nameservers (read here, once).
    pub fn from_proxy(cfg: &ProxyConfig) -> DnsConfig {
        let host = if cfg.dns_upstreams.is_empty() {
            std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()
        } else {
            String::new()
        };
        DnsConfig::from_proxy_with_resolv_conf(cfg, &host)
    }

    /// As [`DnsConfig::from_proxy`], with the host's resolv.conf given.
    pub fn from_proxy_with_resolv_conf(cfg: &ProxyConfig, resolv_conf: &str) -> DnsConfig {
        let own: Vec<IpAddr> = cfg.cluster_dns.into_iter().collect();
        let upstreams = if cfg.dns_upstreams.is_empty() {
            upstreams_from_resolv_conf(resolv_conf, &own)
        } else {
            cfg.dns_upstreams
                .iter()
                .copied()
                .filter(|a| !(own.contains(&a.ip()) && a.port() == 53))
                .collect()
        };
        let mut d = DnsConfig::new(cfg.cluster_domain.clone(), upstreams);
        d.nameserver = cfg.cluster_dns;
        d
    }
}

/// Counters the proxy exports as metrics.
#[derive(Debug, Default)]
pub struct DnsStats {
    pub udp_queries: AtomicU64,
    pub tcp_queries: AtomicU64,
    /// Queries sent to the upstreams (ExternalName targets included).
    pub forwarded: AtomicU64,
    /// Forwarded queries no upstream answered.
    pub upstream_failures: AtomicU64,
    /// Replies cut to the question with TC=1.
    pub truncated: AtomicU64,
    /// Messages not answered at all (shorter than a header, or responses).
    pub dropped: AtomicU64,
    /// Queries refused for lack of room (forwards or TCP connections at their limit).
    pub busy: AtomicU64,
    /// Replies by response code 0..=15 (the header's four bits).
    responses: [AtomicU64; 16],
}

impl DnsStats {
    /// Replies sent with this response code (its low four bits).
    pub fn responses(&self, rcode: u16) -> u64 {
        self.responses[(rcode & 0xf) as usize].load(Ordering::Relaxed)
    }

    fn replied(&self, reply: &[u8]) {
        if let Some(h) = Header::peek(reply) {
            self.responses[h.rcode as usize].fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

struct Server {
    zone: Zone,
    forwarder: Forwarder,
    view: watch::Receiver<Arc<ClusterView>>,
    stats: Arc<DnsStats>,
}

/// A query that waits on an upstream.
struct Pending {
    query: Message,
    raw: Vec<u8>,
    limit: usize,
    tcp: bool,
    /// An ExternalName alias out of the cluster: these CNAMEs, then the upstream's answer
    /// for `target`.
    alias: Option<(Vec<Record>, Name)>,
}

enum Step {
    Reply(Vec<u8>),
    Upstream(Box<Pending>),
    Nothing,
}

impl Server {
    fn step(&self, buf: &[u8], tcp: bool) -> Step {
        inc(if tcp {
            &self.stats.tcp_queries
        } else {
            &self.stats.udp_queries
        });
        let query = match classify(buf) {
            Incoming::Drop => {
                inc(&self.stats.dropped);
                return Step::Nothing;
            }
            Incoming::Reject(m) => return Step::Reply(self.encode(&m, MIN_UDP)),
            Incoming::Query(q) => q,
        };
        let limit = if tcp {
            u16::MAX as usize
        } else {
            query.max_udp_reply()
        };
        let view = self.view.borrow().clone();
        match resolve(&view, &self.zone, &query.questions[0]) {
            Resolution::Answer(a) => {
                let mut m = Message::reply_to(&query);
                m.header.aa = a.rcode != REFUSED && a.rcode != SERVFAIL;
                m.set_rcode(a.rcode);
                m.answers = a.answers;
                m.authority = a.authority;
                m.additional = a.additional;
                Step::Reply(self.encode(&m, limit))
            }
            Resolution::Forward => Step::Upstream(Box::new(Pending {
                query,
                raw: buf.to_vec(),
                limit,
                tcp,
                alias: None,
            })),
            Resolution::External { chain, target } => Step::Upstream(Box::new(Pending {
                query,
                raw: Vec::new(),
                limit,
                tcp,
                alias: Some((chain, target)),
            })),
        }
    }

    fn encode(&self, m: &Message, limit: usize) -> Vec<u8> {
        let (bytes, truncated) = m.encode_limited(limit);
        if truncated {
            inc(&self.stats.truncated);
        }
        self.stats.replied(&bytes);
        bytes
    }

    fn servfail(&self, query: &Message) -> Vec<u8> {
        let mut m = Message::reply_to(query);
        m.set_rcode(SERVFAIL);
        self.encode(&m, MIN_UDP)
    }

    async fn finish(&self, p: Box<Pending>) -> Vec<u8> {
        inc(&self.stats.forwarded);
        let Some((chain, target)) = p.alias else {
            return match self.forwarder.exchange(&p.raw, p.tcp).await {
                Some(reply) if reply.len() <= p.limit => {
                    self.stats.replied(&reply);
                    reply
                }
                Some(_) => {
                    // Full only over TCP: tell the client to come back that way.
                    let mut m = Message::reply_to(&p.query);
                    m.header.tc = true;
                    inc(&self.stats.truncated);
                    self.encode(&m, p.limit)
                }
                None => {
                    inc(&self.stats.upstream_failures);
                    self.servfail(&p.query)
                }
            };
        };
        let q = &p.query.questions[0];
        let ask = Message {
            header: Header {
                rd: true,
                ..Header::default()
            },
            questions: vec![Question {
                name: target,
                qtype: q.qtype,
                qclass: CLASS_IN,
            }],
            edns: Some(Edns {
                udp_size: OUR_UDP_SIZE,
                ext_rcode: 0,
                version: 0,
                dnssec_ok: false,
                options: Vec::new(),
            }),
            ..Message::default()
        };
        let mut m = Message::reply_to(&p.query);
        m.answers = chain;
        match self.forwarder.exchange(&ask.encode(), p.tcp).await {
            Some(reply) => {
                if let Ok(r) = Message::parse(&reply) {
                    if matches!(r.rcode(), NOERROR | NXDOMAIN) {
                        m.set_rcode(r.rcode());
                        // Data of unknown types may hold names compressed against the
                        // upstream's message: only re-send what was decoded.
                        let known = |rec: &Record| !matches!(rec.data, RData::Other { .. });
                        m.answers.extend(r.answers.into_iter().filter(known));
                        m.authority.extend(r.authority.into_iter().filter(known));
                    }
                }
            }
            // The alias alone: the client may resolve the target itself.
            None => inc(&self.stats.upstream_failures),
        }
        self.encode(&m, p.limit)
    }
}

/// Serves DNS on the given sockets until `shutdown` resolves: the cluster domain from
/// `view`, everything else through `cfg.upstreams`. Fails only when `cfg.domain` is not a
/// valid domain name.
pub async fn serve(
    udp: UdpSocket,
    tcp: TcpListener,
    view: watch::Receiver<Arc<ClusterView>>,
    cfg: DnsConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let zone = Zone::new(&cfg.domain, cfg.ttl, cfg.nameserver).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("cluster domain {:?}: {e}", cfg.domain),
        )
    })?;
    let server = Arc::new(Server {
        zone,
        forwarder: Forwarder::new(cfg.upstreams.clone(), cfg.upstream_timeout),
        view,
        stats: cfg.stats.clone(),
    });
    tracing::info!(
        loop_name = "dns",
        udp = ?udp.local_addr().ok(),
        tcp = ?tcp.local_addr().ok(),
        domain = %cfg.domain,
        upstreams = ?cfg.upstreams,
        "cluster DNS serving"
    );
    let udp = Arc::new(udp);
    let forwards = Arc::new(Semaphore::new(cfg.max_forwards.max(1)));
    let conns = Arc::new(Semaphore::new(cfg.max_tcp_connections.max(1)));
    // Dropped on return: every forward and connection still running ends with it.
    let mut tasks = JoinSet::new();
    let mut buf = vec![0u8; 65535];
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            r = udp.recv_from(&mut buf) => {
                let (n, peer) = match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!(loop_name = "dns", error = %e, "udp receive failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                match server.step(&buf[..n], false) {
                    Step::Reply(reply) => {
                        let _ = udp.send_to(&reply, peer).await;
                    }
                    Step::Upstream(p) => match forwards.clone().try_acquire_owned() {
                        Ok(permit) => {
                            let (server, udp) = (server.clone(), udp.clone());
                            tasks.spawn(async move {
                                let reply = server.finish(p).await;
                                let _ = udp.send_to(&reply, peer).await;
                                drop(permit);
                            });
                        }
                        Err(_) => {
                            inc(&server.stats.busy);
                            let _ = udp.send_to(&server.servfail(&p.query), peer).await;
                        }
                    },
                    Step::Nothing => {}
                }
            }
            r = tcp.accept() => match r {
                Ok((stream, _)) => match conns.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let (server, forwards) = (server.clone(), forwards.clone());
                        let idle = cfg.tcp_idle_timeout;
                        tasks.spawn(async move {
                            connection(server, stream, idle, forwards).await;
                            drop(permit);
                        });
                    }
                    Err(_) => inc(&server.stats.busy),
                },
                Err(e) => {
                    // Out of descriptors, most likely: let some connections end.
                    tracing::warn!(loop_name = "dns", error = %e, "tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    tracing::info!(loop_name = "dns", "cluster DNS stopped");
    Ok(())
}

/// One TCP client: reads queries until it goes quiet or away, answers each as soon as it
/// is ready (upstream answers may overtake one another; ids tell them apart).
async fn connection(
    server: Arc<Server>,
    stream: TcpStream,
    idle: Duration,
    forwards: Arc<Semaphore>,
) {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
    let writer = async move {
        while let Some(msg) = rx.recv().await {
            let mut framed = Vec::with_capacity(msg.len() + 2);
            framed.extend_from_slice(&(msg.len() as u16).to_be_bytes());
            framed.extend_from_slice(&msg);
            if wr.write_all(&framed).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    };
    let reader = async move {
        let mut upstream = JoinSet::new();
        loop {
            let Ok(Ok(len)) = tokio::time::timeout(idle, rd.read_u16()).await else {
                break;
            };
            let mut msg = vec![0u8; len as usize];
            if !matches!(
                tokio::time::timeout(idle, rd.read_exact(&mut msg)).await,
                Ok(Ok(_))
            ) {
                break;
            }
            match server.step(&msg, true) {
                Step::Reply(reply) => {
                    if tx.send(reply).await.is_err() {
                        break;
                    }
                }
                Step::Upstream(p) => {
                    // Waits for room rather than failing: TCP clients can be made to wait.
                    let Ok(permit) = forwards.clone().acquire_owned().await else {
                        break;
                    };
                    let (server, tx) = (server.clone(), tx.clone());
                    upstream.spawn(async move {
                        let reply = server.finish(p).await;
                        let _ = tx.send(reply).await;
                        drop(permit);
                    });
                }
                Step::Nothing => {}
            }
            while upstream.try_join_next().is_some() {}
        }
        drop(tx);
        // Answers still on their way are written before the connection closes.
        while upstream.join_next().await.is_some() {}
    };
    tokio::join!(reader, writer);
}
