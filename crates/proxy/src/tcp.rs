//! TCP frontends: accept on a Service address, connect to an endpoint, copy bytes both
//! ways. Each connection is its own task holding the frontend it started with, so a
//! configuration change or a closed listener never cuts a connection already made.

use crate::frontends::{Frontend, Frontends, Listen};
use crate::mesh::authz::Decision;
use crate::mtls::tunnel::Upstream;
use crate::stats::Stats;
use crate::telemetry::{Labels, Telemetry};
use crate::view::Protocol;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

/// How many endpoints one client connection tries before it is refused.
const CONNECT_ATTEMPTS: usize = 3;

pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // A restarted proxy must rebind while the old connections linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Accepts connections on `listener` until the task is aborted.
pub async fn serve(
    listener: TcpListener,
    listen: Listen,
    table: watch::Receiver<Arc<Frontends>>,
    stats: Arc<Stats>,
    telemetry: Arc<Telemetry>,
) {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: pause rather than spin.
                tracing::warn!(%listen.addr, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let frontends = table.borrow().clone();
        let frontend = frontends.by_listen.get(&listen).cloned();
        let stats = stats.clone();
        let telemetry = telemetry.clone();
        tokio::spawn(async move {
            match frontend {
                Some(fe) => {
                    let t = TcpTelemetry {
                        telemetry: &telemetry,
                        frontends: &frontends,
                    };
                    proxy(client, peer, fe, &stats, t).await
                }
                None => refuse(client),
            }
        });
    }
}

/// Where a connection's istio_tcp_* counts go.
struct TcpTelemetry<'a> {
    telemetry: &'a Telemetry,
    frontends: &'a Frontends,
}

async fn proxy(
    mut client: TcpStream,
    peer: SocketAddr,
    fe: Arc<Frontend>,
    stats: &Stats,
    t: TcpTelemetry<'_>,
) {
    let _ = client.set_nodelay(true);
    let Some((mut upstream, backend)) = connect(&fe, peer, t.frontends).await else {
        stats.refused();
        tracing::debug!(service = %fe.service, port = %fe.port_name, client = %peer,
            "no endpoint accepted the connection");
        refuse(client);
        return;
    };
    fe.used(peer.ip(), backend);
    stats.opened();
    let mut labels = Labels::new(
        t.frontends.workloads.get(&peer.ip()).map(|w| &**w),
        t.frontends.workloads.get(&backend.ip()).map(|w| &**w),
        &fe.service,
        &t.frontends.domain,
        "tcp",
    );
    if upstream.is_tunneled() {
        labels.connection_security_policy = "mutual_tls";
    }
    t.telemetry.tcp_opened.get_or_create(&labels).inc();
    let copied = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    let (up, down) = copied.unwrap_or((0, 0));
    stats.closed(up, down);
    t.telemetry.tcp_sent.get_or_create(&labels).inc_by(up);
    t.telemetry.tcp_received.get_or_create(&labels).inc_by(down);
    t.telemetry.tcp_closed.get_or_create(&labels).inc();
}

/// Connects to the frontend's endpoints in the order it prefers, moving on when one
/// refuses or does not answer in time.
async fn connect(
    fe: &Frontend,
    peer: SocketAddr,
    frontends: &Frontends,
) -> Option<(Upstream, SocketAddr)> {
    for backend in fe.pick(peer.ip()).into_iter().take(CONNECT_ATTEMPTS) {
        if let Decision::Deny(why) =
            frontends.authorize(peer.ip(), backend.addr.ip(), fe.service_port, None)
        {
            tracing::debug!(service = %fe.service, backend = %backend.addr, client = %peer, policy = %why, "connection denied");
            return None;
        }
        let (ip, port) = (backend.addr.ip(), backend.addr.port());
        if !frontends.netpol.allows(peer.ip(), ip, port, Protocol::Tcp) {
            tracing::debug!(service = %fe.service, backend = %backend.addr, client = %peer, "connection refused by NetworkPolicy");
            return None;
        }
        match frontends.dial(peer.ip(), backend.addr, false).await {
            Ok(s) => return Some((s, backend.addr)),
            Err(e) => {
                tracing::debug!(service = %fe.service, backend = %backend.addr, error = %e, "endpoint refused")
            }
        }
    }
    None
}

/// Closes with a reset, as kube-proxy's REJECT does for a Service without endpoints, so
/// the client fails at once instead of seeing an empty reply.
fn refuse(client: TcpStream) {
    // Deprecated because a positive linger blocks on drop; a zero linger resets at once.
    #[allow(deprecated)]
    let _ = client.set_linger(Some(Duration::ZERO));
    drop(client);
}
