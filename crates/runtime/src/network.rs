//! Pod networking: a network namespace per pod, kept alive by a bind mount so it outlives the
//! agent, joined to the node bridge by a veth pair (eth0 inside, with the pod IP and a default
//! route via the bridge's gateway address).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use crate::netlink::Netlink;
use crate::spec::PodNetwork;
use crate::sys;

/// The host end's name: "veth" and 11 hex digits of a hash of the pod UID (15 bytes, the
/// longest a Linux interface name may be).
pub fn host_veth_name(pod_uid: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in pod_uid.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("veth{:011x}", h & 0xfff_ffff_ffff)
}

/// Creates a network namespace bind-mounted at `path`; returns a handle to it and a netlink
/// socket that acts inside it.
pub(crate) fn create_netns(path: &Path) -> io::Result<(OwnedFd, Netlink)> {
    std::fs::File::create(path)?;
    let path = path.to_path_buf();
    // unshare() moves only the calling thread, so a short-lived thread does it and leaves the
    // agent's threads where they are; the socket it opens stays bound to the new namespace.
    std::thread::spawn(move || -> io::Result<(OwnedFd, Netlink)> {
        sys::cvt(unsafe { libc::unshare(libc::CLONE_NEWNET) })?;
        sys::mount(
            Some(Path::new("/proc/thread-self/ns/net")),
            &path,
            None,
            libc::MS_BIND,
            None,
        )?;
        let nl = Netlink::open()?;
        let ns = open_netns(&path)?;
        Ok((ns, nl))
    })
    .join()
    .map_err(|_| io::Error::other("netns thread panicked"))?
}

pub(crate) fn open_netns(path: &Path) -> io::Result<OwnedFd> {
    let c = sys::cstr(path)?;
    let fd = sys::cvt(unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ignore_exists(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r,
    }
}

/// A locally administered MAC derived from an address, so neighbours' ARP caches stay
/// right when the address is reused by a new pod (or the bridge is recreated).
fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let ip = ip.octets();
    [0x0a, 0x58, ip[0], ip[1], ip[2], ip[3]]
}

/// A link's MAC address as sysfs shows it, or None when it cannot be read.
fn current_mac(link: &str) -> Option<[u8; 6]> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{link}/address")).ok()?;
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Makes sure the bridge exists, is up and has the gateway address; returns whether it was
/// created by this call.
pub(crate) fn ensure_bridge(host: &mut Netlink, net: &PodNetwork) -> io::Result<(i32, bool)> {
    let mut created = false;
    let index = match host.link_index(&net.bridge)? {
        Some(i) => i,
        None => {
            match host.create_bridge(&net.bridge) {
                Ok(()) => created = true,
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(e),
            }
            host.link_index(&net.bridge)?
                .ok_or_else(|| io::Error::other("bridge vanished after creation"))?
        }
    };
    ignore_exists(host.add_address(index, net.gateway, net.prefix_len))?;
    // Pinned, and checked on every call so a bridge from an older run is fixed too: with a
    // MAC borrowed from a port, deleting that pod's veth changed the gateway's MAC and every
    // pod that had it cached sent into the void until its ARP entry went stale. Set only
    // when it differs: a MAC change flushes the bridge's neighbour table.
    let mac = mac_for(net.gateway);
    if current_mac(&net.bridge).as_ref() != Some(&mac) {
        host.set_mac(index, mac)?;
    }
    if created {
        host.set_up(index)?;
    }
    Ok((index, created))
}

/// Wires the pod's namespace to the bridge and configures lo and eth0 inside it.
pub(crate) fn attach_pod(
    host: &mut Netlink,
    pod: &mut Netlink,
    netns: &OwnedFd,
    bridge_index: i32,
    host_veth: &str,
    net: &PodNetwork,
) -> io::Result<()> {
    let mac = mac_for(net.pod_ip);
    match host.create_veth(
        host_veth,
        bridge_index,
        "eth0",
        netns.as_raw_fd(),
        Some(mac),
    ) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            // Left over from a sandbox that was not removed; it is ours by name.
            host.delete_link(host_veth)?;
            host.create_veth(
                host_veth,
                bridge_index,
                "eth0",
                netns.as_raw_fd(),
                Some(mac),
            )?;
        }
        r => r?,
    }
    pod.set_up(1)?; // lo is always index 1 in a new namespace
    let eth0 = pod
        .link_index("eth0")?
        .ok_or_else(|| io::Error::other("eth0 missing in pod namespace"))?;
    pod.set_up(eth0)?;
    pod.add_address(eth0, net.pod_ip, net.prefix_len)?;
    pod.add_default_route(eth0, net.gateway)?;
    Ok(())
}

/// Deletes the pod's veth pair and its namespace mount; missing pieces are not an error.
pub(crate) fn remove_pod(host_veth: Option<&str>, netns_path: Option<&Path>) -> io::Result<()> {
    if let Some(veth) = host_veth {
        Netlink::open()?.delete_link(veth)?;
    }
    if let Some(path) = netns_path {
        match sys::umount(path, libc::MNT_DETACH) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {} // not mounted
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Deletes a bridge (for tests and node teardown); false when it did not exist.
pub fn delete_bridge(name: &str) -> io::Result<bool> {
    Netlink::open()?.delete_link(name)
}

#[cfg(test)]
mod tests {
    #[test]
    fn veth_names_fit_ifnamsiz() {
        let a = super::host_veth_name("7f0c1d2e-aaaa-bbbb-cccc-0123456789ab");
        assert_eq!(a.len(), 15);
        assert_ne!(a, super::host_veth_name("another"));
    }
}
