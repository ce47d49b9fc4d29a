//! IPv4 prefixes as NetworkPolicy ipBlocks write them, and the one operation a packet
//! filter needs from them: a block minus its `except` list, as a set of prefixes (a filter
//! can only say "in this prefix", never "not in that one").

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

/// An IPv4 prefix with its host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Net {
    addr: u32,
    len: u8,
}

impl Ipv4Net {
    pub fn new(addr: Ipv4Addr, len: u8) -> Ipv4Net {
        let len = len.min(32);
        Ipv4Net {
            addr: u32::from(addr) & mask(len),
            len,
        }
    }

    pub fn host(addr: Ipv4Addr) -> Ipv4Net {
        Ipv4Net::new(addr, 32)
    }

    /// `a.b.c.d/n`, or a bare address as /32. Upstream refuses host bits in an ipBlock at
    /// validation; here they are cleared, which is what a filter would do with them.
    pub fn parse(s: &str) -> Option<Ipv4Net> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, l.parse::<u8>().ok().filter(|l| *l <= 32)?),
            None => (s, 32),
        };
        Some(Ipv4Net::new(a.parse().ok()?, l))
    }

    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.addr)
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    pub fn mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask(self.len))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.len) == self.addr
    }

    pub fn contains_ip(&self, ip: IpAddr) -> bool {
        matches!(ip, IpAddr::V4(v4) if self.contains(v4))
    }

    pub fn covers(&self, other: &Ipv4Net) -> bool {
        other.len >= self.len && self.contains(other.addr())
    }

    /// The two halves one bit longer.
    fn split(&self) -> (Ipv4Net, Ipv4Net) {
        let len = self.len + 1;
        let low = Ipv4Net {
            addr: self.addr,
            len,
        };
        let high = Ipv4Net {
            addr: self.addr | (1u32 << (32 - len)),
            len,
        };
        (low, high)
    }

    /// The addresses of `self` outside every prefix of `except`, as disjoint prefixes.
    pub fn subtract(&self, except: &[Ipv4Net]) -> Vec<Ipv4Net> {
        let mut out = Vec::new();
        self.subtract_into(except, &mut out);
        out
    }

    fn subtract_into(&self, except: &[Ipv4Net], out: &mut Vec<Ipv4Net>) {
        if except.iter().any(|e| e.covers(self)) {
            return;
        }
        let inside: Vec<Ipv4Net> = except.iter().filter(|e| self.covers(e)).copied().collect();
        if inside.is_empty() {
            out.push(*self);
            return;
        }
        // Some exception lies strictly inside: the half that holds none stays whole.
        let (low, high) = self.split();
        low.subtract_into(&inside, out);
        high.subtract_into(&inside, out);
    }
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len as u32)
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr(), self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        Ipv4Net::parse(s).unwrap()
    }

    #[test]
    fn parse_and_contain() {
        assert_eq!(net("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert_eq!(net("10.1.2.3").to_string(), "10.1.2.3/32");
        assert!(net("0.0.0.0/0").contains("192.0.2.1".parse().unwrap()));
        assert!(!net("10.0.0.0/8").contains("11.0.0.1".parse().unwrap()));
        assert!(Ipv4Net::parse("10.0.0.0/33").is_none());
        assert!(Ipv4Net::parse("fd00::/8").is_none());
    }

    #[test]
    fn subtraction_covers_exactly_the_rest() {
        let block = net("172.17.0.0/16");
        let except = [net("172.17.1.0/24"), net("172.17.200.7/32")];
        let parts = block.subtract(&except);
        for probe in [
            "172.17.0.1",
            "172.17.1.1",
            "172.17.2.9",
            "172.17.200.7",
            "172.17.200.6",
            "172.17.255.255",
            "172.18.0.1",
        ] {
            let ip: Ipv4Addr = probe.parse().unwrap();
            let want = block.contains(ip) && !except.iter().any(|e| e.contains(ip));
            let got = parts.iter().filter(|p| p.contains(ip)).count();
            assert_eq!(got, want as usize, "{probe}: {parts:?}");
        }
        assert!(net("10.0.0.0/24")
            .subtract(&[net("10.0.0.0/16")])
            .is_empty());
        assert_eq!(
            net("10.0.0.0/24").subtract(&[net("11.0.0.0/8")]),
            vec![net("10.0.0.0/24")]
        );
    }
}
