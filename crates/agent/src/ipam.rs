//! Pod addresses from the node's podCIDR. The gateway (the bridge) takes the first host
//! address; pods get the rest. Nothing is stored: after a restart the set in use is rebuilt
//! from the runtime's sandboxes.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

#[derive(Debug)]
pub struct Ipam {
    network: u32,
    prefix_len: u8,
    /// pod uid by address.
    used: BTreeMap<u32, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("invalid pod CIDR {0:?}: want an IPv4 a.b.c.d/n with n between 8 and 30")]
    BadCidr(String),
    #[error("no free address left in pod CIDR {0}")]
    Exhausted(String),
}

impl Ipam {
    pub fn new(cidr: &str) -> Result<Ipam, IpamError> {
        let bad = || IpamError::BadCidr(cidr.to_string());
        let (addr, len) = cidr.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix_len: u8 = len.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix_len) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix_len);
        Ok(Ipam {
            network: u32::from(addr) & mask,
            prefix_len,
            used: BTreeMap::new(),
        })
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network + 1)
    }

    pub fn cidr(&self) -> String {
        format!("{}/{}", Ipv4Addr::from(self.network), self.prefix_len)
    }

    fn broadcast(&self) -> u32 {
        self.network | (u32::MAX >> self.prefix_len)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        ip > self.network + 1 && ip < self.broadcast()
    }

    /// Records an address already in use (a sandbox found at start).
    pub fn reserve(&mut self, ip: Ipv4Addr, uid: &str) {
        if self.contains(ip) {
            self.used.insert(u32::from(ip), uid.to_string());
        }
    }

    /// The pod's address: the one it holds, else the lowest free one.
    pub fn allocate(&mut self, uid: &str) -> Result<Ipv4Addr, IpamError> {
        if let Some((ip, _)) = self.used.iter().find(|(_, u)| *u == uid) {
            return Ok(Ipv4Addr::from(*ip));
        }
        let free = (self.network + 2..self.broadcast())
            .find(|ip| !self.used.contains_key(ip))
            .ok_or_else(|| IpamError::Exhausted(self.cidr()))?;
        self.used.insert(free, uid.to_string());
        Ok(Ipv4Addr::from(free))
    }

    pub fn release(&mut self, uid: &str) {
        self.used.retain(|_, u| u != uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_after_gateway_and_reuses() {
        let mut ipam = Ipam::new("10.42.0.7/24").unwrap();
        assert_eq!(ipam.gateway(), Ipv4Addr::new(10, 42, 0, 1));
        assert_eq!(ipam.cidr(), "10.42.0.0/24");
        ipam.reserve(Ipv4Addr::new(10, 42, 0, 2), "old");
        assert_eq!(ipam.allocate("a").unwrap(), Ipv4Addr::new(10, 42, 0, 3));
        assert_eq!(ipam.allocate("a").unwrap(), Ipv4Addr::new(10, 42, 0, 3));
        ipam.release("old");
        assert_eq!(ipam.allocate("b").unwrap(), Ipv4Addr::new(10, 42, 0, 2));
    }

    #[test]
    fn exhausts_and_rejects_bad_cidrs() {
        let mut ipam = Ipam::new("10.0.0.0/30").unwrap();
        assert_eq!(ipam.allocate("a").unwrap(), Ipv4Addr::new(10, 0, 0, 2));
        assert!(matches!(ipam.allocate("b"), Err(IpamError::Exhausted(_))));
        assert!(Ipam::new("10.0.0.0").is_err());
        assert!(Ipam::new("10.0.0.0/31").is_err());
        assert!(Ipam::new("fd00::/64").is_err());
    }
}
