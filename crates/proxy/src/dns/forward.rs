//! Names outside the cluster go to the node's resolvers: the configured upstreams, else the
//! nameservers of the host's /etc/resolv.conf (never the cluster DNS address itself, which
//! would loop). Each query gets a fresh id and a fresh socket (so a fresh source port),
//! a reply counts only if its id and question match, and an upstream that stays silent for
//! the timeout, refuses or fails passes the query to the next one.

use super::wire::{peek_question, Header, Question, REFUSED, SERVFAIL};
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{timeout, Instant};

/// The nameservers a resolv.conf names, on port 53, leaving out `exclude` (the cluster DNS
/// address: a node whose resolv.conf points at it would otherwise forward to itself).
pub fn upstreams_from_resolv_conf(text: &str, exclude: &[IpAddr]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) else {
            continue;
        };
        let addr = SocketAddr::new(ip, 53);
        if !exclude.contains(&ip) && !out.contains(&addr) {
            out.push(addr);
        }
    }
    out
}

/// Query ids that an off-path attacker cannot guess: SipHash of a counter under a key
/// drawn at start-up.
struct Ids {
    key: RandomState,
    n: AtomicU64,
}

impl Ids {
    fn next(&self) -> u16 {
        let mut h = self.key.build_hasher();
        h.write_u64(self.n.fetch_add(1, Ordering::Relaxed));
        h.finish() as u16
    }
}

pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
    ids: Ids,
}

impl Forwarder {
    pub fn new(upstreams: Vec<SocketAddr>, timeout: Duration) -> Forwarder {
        Forwarder {
            upstreams,
            timeout,
            ids: Ids {
                key: RandomState::new(),
                n: AtomicU64::new(0),
            },
        }
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// Sends `query` (a whole message as the client sent it) upstream and returns the
    /// reply with the client's id, or None when no upstream answered. Over UDP unless
    /// `tcp`; a truncated UDP reply is asked again over TCP (the caller truncates again if
    /// the full reply does not fit its client).
    pub async fn exchange(&self, query: &[u8], tcp: bool) -> Option<Vec<u8>> {
        let (header, question) = peek_question(query)?;
        let question = question?;
        let mut fallback = None;
        for &up in &self.upstreams {
            let id = self.ids.next();
            let mut q = query.to_vec();
            q[..2].copy_from_slice(&id.to_be_bytes());
            let reply = if tcp {
                self.tcp(up, &q, id, &question).await
            } else {
                match self.udp(up, &q, id, &question).await {
                    Some(r) if Header::peek(&r).is_some_and(|h| h.tc) => {
                        self.tcp(up, &q, id, &question).await.or(Some(r))
                    }
                    other => other,
                }
            };
            let Some(mut reply) = reply else {
                continue;
            };
            reply[..2].copy_from_slice(&header.id.to_be_bytes());
            let rcode = (reply[3] & 0xf) as u16;
            if rcode == SERVFAIL || rcode == REFUSED {
                // Another upstream may do better; keep this answer in case none does.
                fallback = Some(reply);
                continue;
            }
            return Some(reply);
        }
        fallback
    }

    async fn udp(&self, up: SocketAddr, q: &[u8], id: u16, question: &Question) -> Option<Vec<u8>> {
        let local: SocketAddr = match up {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let sock = UdpSocket::bind(local).await.ok()?;
        sock.connect(up).await.ok()?;
        sock.send(q).await.ok()?;
        let deadline = Instant::now() + self.timeout;
        let mut buf = vec![0u8; 65535];
        loop {
            // A refused port (ICMP) ends the wait at once; a stranger's datagram does not.
            let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf))
                .await
                .ok()?
                .ok()?;
            if matches_query(&buf[..n], id, question) {
                buf.truncate(n);
                return Some(buf);
            }
        }
    }

    async fn tcp(&self, up: SocketAddr, q: &[u8], id: u16, question: &Question) -> Option<Vec<u8>> {
        let len = u16::try_from(q.len()).ok()?;
        let exchange = async {
            let mut s = TcpStream::connect(up).await.ok()?;
            let _ = s.set_nodelay(true);
            let mut framed = Vec::with_capacity(q.len() + 2);
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(q);
            s.write_all(&framed).await.ok()?;
            let n = s.read_u16().await.ok()? as usize;
            let mut buf = vec![0u8; n];
            s.read_exact(&mut buf).await.ok()?;
            Some(buf)
        };
        let buf = timeout(self.timeout, exchange).await.ok()??;
        matches_query(&buf, id, question).then_some(buf)
    }
}

fn matches_query(reply: &[u8], id: u16, question: &Question) -> bool {
    match peek_question(reply) {
        Some((h, Some(q))) => h.qr && h.id == id && q == *question,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers() {
        let text = "# generated\nsearch example.org\nnameserver 10.43.0.10\nnameserver 192.0.2.1\nnameserver  fd00::53 \nnameserver fe80::1%eth0\nnameserver 192.0.2.1\noptions ndots:2\n";
        let ups = upstreams_from_resolv_conf(text, &["10.43.0.10".parse().unwrap()]);
        assert_eq!(
            ups,
            vec![
                "192.0.2.1:53".parse::<SocketAddr>().unwrap(),
                "[fd00::53]:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn ids_vary() {
        let ids = Ids {
            key: RandomState::new(),
            n: AtomicU64::new(0),
        };
        let v: std::collections::HashSet<u16> = (0..100).map(|_| ids.next()).collect();
        assert!(v.len() > 90);
    }
}
