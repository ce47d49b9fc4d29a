//! Keeps the eBPF programs on local pods' veths equal to the desired rule lists: one
//! program per (veth, direction) that has rules, none elsewhere. Only what differs is
//! touched: an unchanged rule list leaves its program alone, a changed one is replaced
//! atomically, a direction that needs nothing any more is detached. A pod's programs go
//! with its veth when it is deleted; [`Enforcer::stop`] detaches everything at shutdown.
//!
//! After a restart the applied state is rebuilt from the devices themselves: the first
//! time the enforcer sees a local veth it lists the corral programs on it (tcx
//! attachments outlive the process), keeps one whose name (a hash of its rules) is the
//! desired one, and replaces or detaches the others. So a restart neither opens a hole
//! nor reloads programs that are already right.

use super::bpf;
use super::packet::{Hook, PacketRule};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::CString;
use std::io;
use std::sync::Arc;

/// What should be enforced on this node: rule lists by (veth name, direction), and every
/// local pod's veth (to clean programs a previous run left where none are wanted now).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Desired {
    pub rules: BTreeMap<(String, Hook), Arc<Vec<PacketRule>>>,
    pub veths: Vec<String>,
}

struct Applied {
    ifindex: u32,
    prog: bpf::Program,
}

#[derive(Default)]
pub struct Enforcer {
    applied: HashMap<(String, Hook), Applied>,
    /// Veths already checked for programs of an earlier run, with their index then.
    seen: HashMap<String, u32>,
    /// Set once loading programs is impossible here (no root, no tcx): said once.
    unavailable: Option<String>,
    /// Errors already logged, so a retry does not log them again.
    logged: HashSet<String>,
}

fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: a valid C string; the call only reads it.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// Errors that mean the device (and so everything attached to it) is gone.
fn device_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENODEV) | Some(libc::ENXIO) | Some(libc::ENOENT)
    )
}

impl Enforcer {
    pub fn new() -> Enforcer {
        Enforcer::default()
    }

    /// Number of programs attached now.
    pub fn programs(&self) -> usize {
        self.applied.len()
    }

    fn warn_once(&mut self, key: String, msg: impl FnOnce()) {
        if self.logged.insert(key) {
            msg();
        }
    }

    /// Makes the devices match `want`. Returns true when something could not be done yet
    /// (a veth not there yet, a failed attach) and a retry is due.
    pub fn reconcile(&mut self, want: &Desired) -> bool {
        if self.unavailable.is_some() {
            return false;
        }
        let mut retry = false;
        // Veths met for the first time (or recreated): adopt or clear what is on them.
        for veth in &want.veths {
            let Some(index) = ifindex(veth) else {
                self.seen.remove(veth);
                continue;
            };
            if self.seen.get(veth) == Some(&index) {
                continue;
            }
            for hook in [Hook::ToPod, Hook::FromPod] {
                let key = (veth.clone(), hook);
                self.applied.remove(&key);
                match bpf::attached(index, hook) {
                    Ok(progs) => {
                        // Keep one (the right one when it is there), detach the rest.
                        let wanted = want.rules.get(&key).map(|r| bpf::program_name(r, hook));
                        let keep_at = wanted
                            .as_ref()
                            .map(|w| progs.iter().position(|p| &p.name == w).unwrap_or(0));
                        for (i, p) in progs.into_iter().enumerate() {
                            if Some(i) == keep_at {
                                self.applied.insert(
                                    key.clone(),
                                    Applied {
                                        ifindex: index,
                                        prog: p,
                                    },
                                );
                            } else if let Err(e) = bpf::detach(index, hook, &p) {
                                tracing::debug!(%veth, error = %e, "cannot detach an old packet policy");
                            }
                        }
                    }
                    Err(e) if device_gone(&e) => {}
                    Err(e) => {
                        if self.fatal(&e) {
                            return false;
                        }
                        retry = true;
                    }
                }
            }
            self.seen.insert(veth.clone(), index);
        }
        let live: HashSet<&String> = want.veths.iter().collect();
        self.seen.retain(|v, _| live.contains(v));
        // Programs no longer wanted.
        let stale: Vec<(String, Hook)> = self
            .applied
            .keys()
            .filter(|k| !want.rules.contains_key(*k))
            .cloned()
            .collect();
        for key in stale {
            let a = self.applied.remove(&key).expect("listed above");
            match bpf::detach(a.ifindex, key.1, &a.prog) {
                Ok(()) => tracing::debug!(veth = %key.0, hook = ?key.1, "packet policy removed"),
                Err(e) if device_gone(&e) => {}
                Err(e) => {
                    tracing::warn!(veth = %key.0, error = %e, "cannot detach a packet policy")
                }
            }
        }
        for (key, rules) in &want.rules {
            let (veth, hook) = (&key.0, key.1);
            let Some(index) = ifindex(veth) else {
                // The pod's network is not set up yet (or already gone).
                retry = true;
                continue;
            };
            let name = bpf::program_name(rules, hook);
            let current = self.applied.get(key).filter(|a| a.ifindex == index);
            if current.is_some_and(|a| a.prog.name == name) {
                continue;
            }
            let prog = match bpf::program(rules, hook).and_then(|code| bpf::load(&code, &name)) {
                Ok(p) => p,
                Err(e) => {
                    if self.fatal(&e) {
                        return false;
                    }
                    let msg = e.to_string();
                    self.warn_once(format!("load {msg}"), || {
                        tracing::warn!(%veth, error = %msg, "cannot load a packet policy program")
                    });
                    retry = true;
                    continue;
                }
            };
            match bpf::attach(index, hook, &prog, current.map(|a| &a.prog)) {
                Ok(()) => {
                    tracing::debug!(%veth, ?hook, rules = rules.len(), program = %name,
                        "packet policy applied");
                    self.applied.insert(
                        key.clone(),
                        Applied {
                            ifindex: index,
                            prog,
                        },
                    );
                }
                Err(e) => {
                    if !device_gone(&e) {
                        let msg = e.to_string();
                        self.warn_once(format!("attach {veth} {msg}"), || {
                            tracing::warn!(%veth, error = %msg, "cannot attach a packet policy program")
                        });
                    }
                    retry = true;
                }
            }
        }
        retry
    }

    /// Whether `e` means programs cannot be loaded here at all; says so once.
    fn fatal(&mut self, e: &io::Error) -> bool {
        let why = match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => {
                "no permission to load eBPF programs (corral runs without root?)"
            }
            Some(libc::ENOSYS) => "the kernel has no bpf(2)",
            Some(libc::EINVAL) if e.to_string().contains("verifier") => return false,
            Some(libc::EINVAL) => "the kernel has no tcx (Linux 6.6 or later is needed)",
            _ => return false,
        };
        tracing::warn!(error = %e, "NetworkPolicy and PeerAuthentication are not enforced between pods of this node: {why}; the proxy still enforces them on Service traffic");
        self.unavailable = Some(why.to_string());
        true
    }

    /// Detaches every program this enforcer attached.
    pub fn stop(&mut self) {
        for ((veth, hook), a) in self.applied.drain() {
            match bpf::detach(a.ifindex, hook, &a.prog) {
                Ok(()) => {}
                Err(e) if device_gone(&e) => {}
                Err(e) => tracing::warn!(%veth, error = %e, "cannot detach a packet policy"),
            }
        }
        self.seen.clear();
    }
}

/// The node's side of the rules: the bridge's IPv4 addresses (the gateway pods see the
/// node as, and the pod network behind it), the other nodes' pod ranges this node routes
/// to, and the node's own address.
pub fn local_net(
    bridge: Option<&str>,
    node_ip: std::net::IpAddr,
    cluster_dns: Option<std::net::IpAddr>,
) -> super::packet::Local {
    use std::net::{IpAddr, Ipv4Addr};
    let mut local = super::packet::Local::default();
    if let IpAddr::V4(v4) = node_ip {
        if !v4.is_loopback() && !v4.is_unspecified() {
            local.host.push(v4);
        }
    }
    if let Some(IpAddr::V4(dns)) = cluster_dns {
        local.cluster_dns = Some(dns);
    }
    let Some(bridge) = bridge else {
        return local;
    };
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list that is read below and freed once.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return local;
    }
    let v4 = |sa: *const libc::sockaddr| -> Option<Ipv4Addr> {
        // SAFETY: a non-null sockaddr from getifaddrs, read as sockaddr_in only when its
        // family says AF_INET.
        unsafe {
            if sa.is_null() || (*sa).sa_family as i32 != libc::AF_INET {
                return None;
            }
            let sin = sa as *const libc::sockaddr_in;
            Some(Ipv4Addr::from(u32::from_be((*sin).sin_addr.s_addr)))
        }
    };
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: a node of the list getifaddrs returned, valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        if name.to_bytes() == bridge.as_bytes() {
            if let Some(addr) = v4(ifa.ifa_addr) {
                let len = v4(ifa.ifa_netmask)
                    .map(|m| u32::from(m).count_ones() as u8)
                    .unwrap_or(32);
                if !local.host.contains(&addr) {
                    local.host.push(addr);
                }
                local.pod_nets.push(super::Ipv4Net::new(addr, len));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: the list from getifaddrs above, freed once.
    unsafe { libc::freeifaddrs(ifap) };
    for (addr, len) in corral_runtime::node_routes::routed_pod_ranges().unwrap_or_default() {
        local.pod_nets.push(super::Ipv4Net::new(addr, len));
    }
    local
}

/// Applies each new [`Desired`] until the sender is dropped, then detaches everything.
/// The syscalls run on the blocking pool.
pub async fn run(mut desired: tokio::sync::watch::Receiver<Arc<Desired>>) {
    const RETRY: std::time::Duration = std::time::Duration::from_secs(2);
    let mut enforcer = Enforcer::new();
    let mut retry = false;
    loop {
        tokio::select! {
            r = desired.changed() => if r.is_err() { break },
            _ = tokio::time::sleep(RETRY), if retry => {}
        }
        let want = desired.borrow_and_update().clone();
        let task = tokio::task::spawn_blocking(move || {
            let again = enforcer.reconcile(&want);
            (enforcer, again)
        });
        match task.await {
            Ok((e, again)) => {
                enforcer = e;
                retry = again;
            }
            Err(e) => {
                tracing::error!(error = %e, "packet policy enforcer failed");
                return;
            }
        }
        tracing::debug!(programs = enforcer.programs(), "packet policies reconciled");
    }
    let _ = tokio::task::spawn_blocking(move || enforcer.stop()).await;
    tracing::info!("packet policy enforcer stopped");
}
