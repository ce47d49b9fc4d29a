//! UDP frontends. UDP has no connection, so the proxy keeps a session per client address:
//! a socket connected to the chosen endpoint, whose replies go back to the client from
//! the Service address. A session ends after it has been idle for a while, like a
//! conntrack entry.

use crate::frontends::{Frontends, Listen};
use crate::stats::Stats;
use crate::view::Protocol;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::watch;

const SESSION_IDLE: Duration = Duration::from_secs(30);
const MAX_DATAGRAM: usize = 65_535;

pub fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let std = std::net::UdpSocket::bind(addr)?;
    std.set_nonblocking(true)?;
    UdpSocket::from_std(std)
}

struct Session {
    upstream: Arc<UdpSocket>,
    /// Milliseconds since `epoch` of the last datagram either way.
    last: Arc<AtomicU64>,
}

/// Relays datagrams on `socket` until the task is aborted.
pub async fn serve(
    socket: UdpSocket,
    listen: Listen,
    table: watch::Receiver<Arc<Frontends>>,
    stats: Arc<Stats>,
) {
    let socket = Arc::new(socket);
    let sessions: Arc<Mutex<HashMap<SocketAddr, Session>>> = Default::default();
    let epoch = Instant::now();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(%listen.addr, error = %e, "udp receive failed");
                continue;
            }
        };
        stats.datagrams.fetch_add(1, Ordering::Relaxed);
        let now = epoch.elapsed().as_millis() as u64;
        let existing = sessions
            .lock()
            .unwrap()
            .get(&peer)
            .map(|s| (s.upstream.clone(), s.last.clone()));
        let (upstream, last) = match existing {
            Some(s) => s,
            None => {
                let frontends = table.borrow().clone();
                let Some(fe) = frontends.by_listen.get(&listen).cloned() else {
                    continue;
                };
                let Some(backend) = fe.pick(peer.ip()).first().map(|b| b.addr) else {
                    continue;
                };
                let netpol = &frontends.netpol;
                if !netpol.allows(peer.ip(), backend.ip(), backend.port(), Protocol::Udp) {
                    continue;
                }
                let Ok(up) = connect(backend).await else {
                    continue;
                };
                fe.used(peer.ip(), backend);
                let up = Arc::new(up);
                let last = Arc::new(AtomicU64::new(now));
                sessions.lock().unwrap().insert(
                    peer,
                    Session {
                        upstream: up.clone(),
                        last: last.clone(),
                    },
                );
                tokio::spawn(replies(
                    socket.clone(),
                    up.clone(),
                    peer,
                    last.clone(),
                    epoch,
                    sessions.clone(),
                ));
                (up, last)
            }
        };
        last.store(now, Ordering::Relaxed);
        let _ = upstream.send(&buf[..n]).await;
    }
}

async fn connect(backend: SocketAddr) -> io::Result<UdpSocket> {
    let local: SocketAddr = if backend.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let s = UdpSocket::bind(local).await?;
    s.connect(backend).await?;
    Ok(s)
}

/// Carries one session's replies back to its client until the session goes idle.
async fn replies(
    socket: Arc<UdpSocket>,
    upstream: Arc<UdpSocket>,
    peer: SocketAddr,
    last: Arc<AtomicU64>,
    epoch: Instant,
    sessions: Arc<Mutex<HashMap<SocketAddr, Session>>>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let idle_for = epoch
            .elapsed()
            .saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
        if idle_for >= SESSION_IDLE {
            break;
        }
        match tokio::time::timeout(SESSION_IDLE - idle_for, upstream.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                last.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                let _ = socket.send_to(&buf[..n], peer).await;
            }
            // An ICMP error from the endpoint (port unreachable): drop the session so the
            // client's next datagram picks an endpoint again.
            Ok(Err(_)) => break,
            Err(_) => {}
        }
    }
    sessions.lock().unwrap().remove(&peer);
}
