//! A small rtnetlink client over a raw NETLINK_ROUTE socket: just the link, address and route
//! requests pod networking needs. One request costs a syscall pair instead of an `ip` process.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;

const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_TABLE: u16 = 15;
const RT_TABLE_MAIN: u8 = 254;

const IFF_UP: u32 = 1;

/// A netlink route socket; it acts in the network namespace it was opened in.
pub(crate) struct Netlink {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

/// Builds one netlink message: header, fixed part, then nested attributes.
struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

impl Msg {
    fn new(ty: u16, flags: u16) -> Msg {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, filled by finish
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // seq
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
        Msg {
            buf,
            nests: Vec::new(),
        }
    }

    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }

    /// struct ifinfomsg
    fn ifinfo(&mut self, index: i32, flags: u32, change: u32) -> &mut Self {
        self.bytes(&[libc::AF_UNSPEC as u8, 0])
            .bytes(&0u16.to_ne_bytes())
            .bytes(&index.to_ne_bytes())
            .bytes(&flags.to_ne_bytes())
            .bytes(&change.to_ne_bytes())
    }

    fn attr(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    fn attr_str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.attr(ty, &v)
    }

    fn attr_u32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_ne_bytes())
    }

    fn nest(&mut self, ty: u16) -> &mut Self {
        self.nests.push(self.buf.len());
        self.attr(ty, &[])
    }

    fn end(&mut self) -> &mut Self {
        let start = self.nests.pop().expect("balanced nests");
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    fn finish(&mut self, seq: u32) -> &[u8] {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        &self.buf
    }
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Netlink> {
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Netlink {
            fd,
            seq: 0,
            buf: vec![0; 32 * 1024],
        })
    }

    /// Sends one request and returns the payload of the reply message, if any, once the
    /// kernel acknowledged it.
    fn request(&mut self, msg: &mut Msg) -> io::Result<Option<Vec<u8>>> {
        Ok(self.request_all(msg)?.pop())
    }

    /// Sends one request and returns the payloads of every reply message (a dump has
    /// many) once the kernel acknowledged it or ended the dump.
    fn request_all(&mut self, msg: &mut Msg) -> io::Result<Vec<Vec<u8>>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let bytes = msg.finish(seq);
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                bytes.as_ptr() as *const libc::c_void,
                bytes.len(),
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut replies = Vec::new();
        loop {
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr() as *mut libc::c_void,
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut data = &self.buf[..n as usize];
            while data.len() >= 16 {
                let len = u32::from_ne_bytes(data[0..4].try_into().unwrap()) as usize;
                let ty = u16::from_ne_bytes(data[4..6].try_into().unwrap());
                let mseq = u32::from_ne_bytes(data[8..12].try_into().unwrap());
                if len < 16 || len > data.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "short netlink message",
                    ));
                }
                let payload = &data[16..len];
                if mseq == seq {
                    match ty {
                        NLMSG_ERROR => {
                            let code = i32::from_ne_bytes(payload[0..4].try_into().unwrap());
                            return if code == 0 {
                                Ok(replies)
                            } else {
                                Err(errno(-code))
                            };
                        }
                        NLMSG_DONE => return Ok(replies),
                        _ => replies.push(payload.to_vec()),
                    }
                }
                data = &data[align4(len).min(data.len())..];
            }
        }
    }

    /// The index of the link called `name`, or None.
    pub fn link_index(&mut self, name: &str) -> io::Result<Option<i32>> {
        let mut m = Msg::new(RTM_GETLINK, 0);
        m.ifinfo(0, 0, 0).attr_str(IFLA_IFNAME, name);
        match self.request(&mut m) {
            Ok(Some(p)) if p.len() >= 8 => {
                Ok(Some(i32::from_ne_bytes(p[4..8].try_into().unwrap())))
            }
            Ok(_) => Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn create_bridge(&mut self, name: &str) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
        m.ifinfo(0, IFF_UP, IFF_UP)
            .attr_str(IFLA_IFNAME, name)
            .nest(IFLA_LINKINFO)
            .attr_str(IFLA_INFO_KIND, "bridge")
            .end();
        self.request(&mut m).map(drop)
    }

    /// Creates a veth pair: `host` here, up and enslaved to `master`; `peer` moved into the
    /// network namespace `netns_fd`.
    pub fn create_veth(
        &mut self,
        host: &str,
        master: i32,
        peer: &str,
        netns_fd: RawFd,
        mac: Option<[u8; 6]>,
    ) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
        m.ifinfo(0, IFF_UP, IFF_UP)
            .attr_str(IFLA_IFNAME, host)
            .attr_u32(IFLA_MASTER, master as u32)
            .nest(IFLA_LINKINFO)
            .attr_str(IFLA_INFO_KIND, "veth")
            .nest(IFLA_INFO_DATA)
            .nest(VETH_INFO_PEER)
            .ifinfo(0, 0, 0)
            .attr_str(IFLA_IFNAME, peer)
            .attr_u32(IFLA_NET_NS_FD, netns_fd as u32);
        if let Some(mac) = mac {
            m.attr(IFLA_ADDRESS, &mac);
        }
        m.end().end().end();
        self.request(&mut m).map(drop)
    }

    /// Sets a link's MAC address. On a bridge this also pins it: a bridge without an
    /// address of its own takes the lowest of its ports' and changes when that port goes.
    pub fn set_mac(&mut self, index: i32, mac: [u8; 6]) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWLINK, 0);
        m.ifinfo(index, 0, 0).attr(IFLA_ADDRESS, &mac);
        self.request(&mut m).map(drop)
    }

    pub fn set_up(&mut self, index: i32) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWLINK, 0);
        m.ifinfo(index, IFF_UP, IFF_UP);
        self.request(&mut m).map(drop)
    }

    pub fn delete_link(&mut self, name: &str) -> io::Result<bool> {
        let mut m = Msg::new(RTM_DELLINK, 0);
        m.ifinfo(0, 0, 0).attr_str(IFLA_IFNAME, name);
        match self.request(&mut m) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Adds `addr/prefix` to a link (EEXIST when it is there already).
    pub fn add_address(&mut self, index: i32, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix as u32)
        };
        let brd = Ipv4Addr::from(u32::from(addr) | !mask);
        let mut m = Msg::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL);
        m.bytes(&[libc::AF_INET as u8, prefix, 0, 0])
            .bytes(&(index as u32).to_ne_bytes())
            .attr(IFA_LOCAL, &addr.octets())
            .attr(IFA_ADDRESS, &addr.octets())
            .attr(IFA_BROADCAST, &brd.octets());
        self.request(&mut m).map(drop)
    }

    /// Removes `addr/prefix` from a link (EADDRNOTAVAIL when it is not there).
    pub fn delete_address(&mut self, index: i32, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let mut m = Msg::new(RTM_DELADDR, 0);
        m.bytes(&[libc::AF_INET as u8, prefix, 0, 0])
            .bytes(&(index as u32).to_ne_bytes())
            .attr(IFA_LOCAL, &addr.octets())
            .attr(IFA_ADDRESS, &addr.octets());
        self.request(&mut m).map(drop)
    }

    pub fn add_default_route(&mut self, index: i32, gateway: Ipv4Addr) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL);
        // struct rtmsg: family, dst_len, src_len, tos, table (main), protocol (boot),
        // scope (universe), type (unicast), flags.
        m.bytes(&[libc::AF_INET as u8, 0, 0, 0, 254, 3, 0, 1])
            .bytes(&0u32.to_ne_bytes())
            .attr(RTA_GATEWAY, &gateway.octets())
            .attr_u32(RTA_OIF, index as u32);
        self.request(&mut m).map(drop)
    }

    /// The name of the link with `index`, or None.
    pub fn link_name(&mut self, index: i32) -> io::Result<Option<String>> {
        let mut m = Msg::new(RTM_GETLINK, 0);
        m.ifinfo(index, 0, 0);
        let p = match self.request(&mut m) {
            Ok(Some(p)) if p.len() >= 16 => p,
            Ok(_) => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Ok(None),
            Err(e) => return Err(e),
        };
        let name = attrs(&p[16..])
            .find(|(ty, _)| *ty == IFLA_IFNAME)
            .map(|(_, v)| {
                String::from_utf8_lossy(v.split(|b| *b == 0).next().unwrap_or(v)).into_owned()
            });
        Ok(name)
    }

    /// Adds, or replaces, the main table's route to `dst/prefix` via `gateway`, marked with
    /// `protocol` so the routes of their owner can be told from everyone else's.
    pub fn replace_route(
        &mut self,
        dst: Ipv4Addr,
        prefix: u8,
        gateway: Ipv4Addr,
        protocol: u8,
    ) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE);
        // rtmsg: family, dst_len, src_len, tos, table, protocol, scope (universe),
        // type (unicast), flags.
        m.bytes(&[
            libc::AF_INET as u8,
            prefix,
            0,
            0,
            RT_TABLE_MAIN,
            protocol,
            0,
            1,
        ])
        .bytes(&0u32.to_ne_bytes())
        .attr(RTA_DST, &dst.octets())
        .attr(RTA_GATEWAY, &gateway.octets());
        self.request(&mut m).map(drop)
    }

    /// Deletes the main table's route to `dst/prefix` made with `protocol`.
    pub fn delete_route(&mut self, dst: Ipv4Addr, prefix: u8, protocol: u8) -> io::Result<()> {
        let mut m = Msg::new(RTM_DELROUTE, 0);
        // Scope "nowhere" matches a route of any scope, as `ip route del` does.
        m.bytes(&[
            libc::AF_INET as u8,
            prefix,
            0,
            0,
            RT_TABLE_MAIN,
            protocol,
            255,
            1,
        ])
        .bytes(&0u32.to_ne_bytes())
        .attr(RTA_DST, &dst.octets());
        self.request(&mut m).map(drop)
    }

    /// The main table's IPv4 routes made with `protocol`: (destination, prefix, gateway).
    pub fn routes(&mut self, protocol: u8) -> io::Result<Vec<(Ipv4Addr, u8, Option<Ipv4Addr>)>> {
        let mut m = Msg::new(RTM_GETROUTE, NLM_F_DUMP);
        m.bytes(&[libc::AF_INET as u8, 0, 0, 0, 0, 0, 0, 0])
            .bytes(&0u32.to_ne_bytes());
        let mut out = Vec::new();
        for p in self.request_all(&mut m)? {
            if p.len() < 12 || p[0] != libc::AF_INET as u8 || p[5] != protocol {
                continue;
            }
            let mut table = p[4] as u32;
            let (mut dst, mut gw) = (Ipv4Addr::UNSPECIFIED, None);
            for (ty, v) in attrs(&p[12..]) {
                match (ty, v.len()) {
                    (RTA_DST, 4) => dst = Ipv4Addr::new(v[0], v[1], v[2], v[3]),
                    (RTA_GATEWAY, 4) => gw = Some(Ipv4Addr::new(v[0], v[1], v[2], v[3])),
                    (RTA_TABLE, 4) => table = u32::from_ne_bytes(v.try_into().unwrap()),
                    _ => {}
                }
            }
            if table == RT_TABLE_MAIN as u32 {
                out.push((dst, p[1], gw));
            }
        }
        Ok(out)
    }

    /// The index of the interface the kernel would send a packet to `to` through.
    pub fn route_oif(&mut self, to: Ipv4Addr) -> io::Result<Option<i32>> {
        let mut m = Msg::new(RTM_GETROUTE, 0);
        m.bytes(&[libc::AF_INET as u8, 32, 0, 0, 0, 0, 0, 0])
            .bytes(&0u32.to_ne_bytes())
            .attr(RTA_DST, &to.octets());
        let Some(p) = self.request(&mut m)? else {
            return Ok(None);
        };
        let oif = attrs(p.get(12..).unwrap_or_default())
            .find(|(ty, v)| *ty == RTA_OIF && v.len() == 4)
            .map(|(_, v)| i32::from_ne_bytes(v.try_into().unwrap()));
        Ok(oif)
    }
}

/// The (type, value) attributes of a netlink message's attribute area.
fn attrs(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let ty = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        if len < 4 || len > data.len() {
            return None;
        }
        let value = &data[4..len];
        data = &data[align4(len).min(data.len())..];
        Some((ty, value))
    })
}
