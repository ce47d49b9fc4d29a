//! Host-side /32 addresses on `lo`: how the node proxy makes a Service's cluster IP a local
//! address (bindable, and reached by pods through their bridge gateway) without iptables.

use crate::netlink::Netlink;
use std::io;
use std::net::Ipv4Addr;

fn loopback(nl: &mut Netlink) -> io::Result<i32> {
    nl.link_index("lo")?
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no loopback link"))
}

/// Adds `ip/32` to `lo` in the calling thread's network namespace; Ok if already there.
pub fn add(ip: Ipv4Addr) -> io::Result<()> {
    let mut nl = Netlink::open()?;
    let lo = loopback(&mut nl)?;
    match nl.add_address(lo, ip, 32) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r,
    }
}

/// Removes `ip/32` from `lo`; Ok if it was not there.
pub fn remove(ip: Ipv4Addr) -> io::Result<()> {
    let mut nl = Netlink::open()?;
    let lo = loopback(&mut nl)?;
    match nl.delete_address(lo, ip, 32) {
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(()),
        r => r,
    }
}
