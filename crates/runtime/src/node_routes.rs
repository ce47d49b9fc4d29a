//! Routes to the pods of other nodes, "host-gw" style (flannel's backend of that name): each
//! node's pod range via that node's address, so a pod reaches any other pod by its IP and
//! the packets go node to node without encapsulation. The nodes must share a link (the
//! kernel refuses a gateway that is not on a directly connected network; such a node's
//! pods stay reachable through Services, whose traffic the node proxies tunnel).
//!
//! Forwarding is turned on per interface (the bridge, and the interfaces that lead to the
//! other nodes), never with the global `ip_forward`: packets that arrive on any other
//! interface of the host are still not routed.

use std::collections::BTreeMap;
use std::io;
use std::net::Ipv4Addr;

use crate::netlink::Netlink;

/// Marks corral's routes (the rtnetlink `protocol` field), so a sync removes only its own.
pub const ROUTE_PROTOCOL: u8 = 196; // unnamed in iproute2's rt_protos: `ip route` shows "proto 196"

/// One route: a pod range and the node address it is reached through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodRoute {
    pub dst: Ipv4Addr,
    pub prefix: u8,
    pub via: Ipv4Addr,
}

/// What a sync did not manage: routes the kernel refused, with why.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub installed: usize,
    pub removed: usize,
    pub failed: Vec<(PodRoute, io::Error)>,
    /// False while routes are installed but the bridge does not exist yet (it is made
    /// with the node's first pod): sync again once it does.
    pub bridge_forwarding: bool,
}

/// Makes corral's routes in this network namespace exactly `want` (others' routes are
/// never touched) and, while any is installed, lets `bridge` and the interfaces the
/// routes leave by forward packets.
pub fn sync_pod_routes(bridge: &str, want: &[PodRoute]) -> io::Result<SyncReport> {
    let mut nl = Netlink::open()?;
    let wanted: BTreeMap<(Ipv4Addr, u8), Ipv4Addr> =
        want.iter().map(|r| ((r.dst, r.prefix), r.via)).collect();
    let mut report = SyncReport {
        bridge_forwarding: want.is_empty(),
        ..SyncReport::default()
    };
    for (dst, prefix, via) in nl.routes(ROUTE_PROTOCOL)? {
        if wanted.get(&(dst, prefix)) != via.as_ref() {
            nl.delete_route(dst, prefix, ROUTE_PROTOCOL)?;
            report.removed += 1;
        }
    }
    let mut interfaces = Vec::new();
    for (&(dst, prefix), &via) in &wanted {
        let route = PodRoute { dst, prefix, via };
        match nl.replace_route(dst, prefix, via, ROUTE_PROTOCOL) {
            Ok(()) => {
                report.installed += 1;
                if let Some(name) = nl.route_oif(via)?.and_then(|i| nl.link_name(i).transpose()) {
                    interfaces.push(name?);
                }
            }
            Err(e) => report.failed.push((route, e)),
        }
    }
    if report.installed > 0 {
        if nl.link_index(bridge)?.is_some() {
            interfaces.push(bridge.to_string());
            report.bridge_forwarding = true;
        }
        interfaces.sort();
        interfaces.dedup();
        for name in interfaces {
            enable_forwarding(&name)?;
        }
    }
    Ok(report)
}

/// Lets packets that arrive on `interface` be routed on (IPv4 checks the flag of the
/// interface a packet came in by). /proc/sys/net is the caller's network namespace's.
fn enable_forwarding(interface: &str) -> io::Result<()> {
    let path = format!("/proc/sys/net/ipv4/conf/{interface}/forwarding");
    if std::fs::read_to_string(&path)?.trim() != "1" {
        std::fs::write(&path, "1")?;
    }
    Ok(())
}

/// The pod ranges of other nodes that corral routes in this network namespace.
pub fn routed_pod_ranges() -> io::Result<Vec<(Ipv4Addr, u8)>> {
    let mut ranges: Vec<(Ipv4Addr, u8)> = Netlink::open()?
        .routes(ROUTE_PROTOCOL)?
        .into_iter()
        .map(|(dst, prefix, _)| (dst, prefix))
        .collect();
    ranges.sort();
    Ok(ranges)
}

/// Wakes its owner when an IPv4 route of this network namespace changes (rtnetlink's
/// multicast group), so whoever derives something from [`routed_pod_ranges`] can look
/// again without polling.
pub struct RouteChanges {
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
}

impl RouteChanges {
    /// Must be called inside a tokio runtime.
    pub fn open() -> io::Result<RouteChanges> {
        use std::os::fd::FromRawFd;
        const RTMGRP_IPV4_ROUTE: u32 = 0x40;
        let fd = crate::sys::cvt(unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_ROUTE,
            )
        })?;
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = RTMGRP_IPV4_ROUTE;
        crate::sys::cvt(unsafe {
            libc::bind(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        })?;
        // SAFETY: the OwnedFd moves into the AsyncFd and stays open for its whole life.
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        }?;
        Ok(RouteChanges { fd })
    }

    /// Waits for the next change (a burst counts once: everything queued is read).
    pub async fn next(&mut self) -> io::Result<()> {
        let mut buf = [0u8; 8192];
        loop {
            let mut guard = self.fd.readable().await?;
            let mut got = false;
            loop {
                let n = unsafe {
                    libc::recv(
                        std::os::fd::AsRawFd::as_raw_fd(guard.get_inner()),
                        buf.as_mut_ptr() as *mut libc::c_void,
                        buf.len(),
                        0,
                    )
                };
                if n > 0 {
                    got = true;
                    continue;
                }
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => break,
                    Some(libc::EINTR) => continue,
                    // The socket's queue overflowed: changes were lost, so say "changed".
                    Some(libc::ENOBUFS) => {
                        got = true;
                        continue;
                    }
                    _ if n == 0 => break,
                    _ => return Err(e),
                }
            }
            guard.clear_ready();
            if got {
                return Ok(());
            }
        }
    }
}
