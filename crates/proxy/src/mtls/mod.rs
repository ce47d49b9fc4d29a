//! Mutual TLS between node proxies, in the shape of Istio's ambient mode: a connection to
//! an endpoint on another node leaves this node inside an HTTP/2 CONNECT tunnel (HBONE)
//! to that node's proxy on port 15008, over TLS 1.3 where both ends show a certificate of
//! the cluster CA. The client shows the source workload's identity
//! (`spiffe://cluster.local/ns/NS/sa/SA`; the node's own for traffic that does not come
//! from a pod), the server the node's, which the client checks against the node it meant
//! to reach. The receiving proxy takes the source identity from the certificate, not from
//! an address, judges AuthorizationPolicy with it, and connects to its local pod.
//!
//! Certificates ([`certs`]) live a day and are renewed at half-life ([`identities`]);
//! a proxy gets them from the API server, which signs a workload identity only for the
//! node that runs a pod with that service account (or signs them itself on the server's
//! own node).

pub mod certs;
pub mod identities;
pub mod tunnel;

use std::fmt;
use std::str::FromStr;

/// Where every node proxy accepts tunnels (Istio's HBONE port).
pub const TUNNEL_PORT: u16 = 15008;

/// Where a proxy asks the API server to sign its certificate requests.
pub const SIGNING_PATH: &str = "/corral/v1/mesh-certificate";

/// An identity in the mesh.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SpiffeId {
    /// A service account's pods: `spiffe://TD/ns/NS/sa/SA`.
    Workload {
        trust_domain: String,
        namespace: String,
        service_account: String,
    },
    /// A node's proxy: `spiffe://TD/node/NAME`.
    Node { trust_domain: String, name: String },
}

impl SpiffeId {
    pub fn workload(trust_domain: &str, namespace: &str, service_account: &str) -> SpiffeId {
        SpiffeId::Workload {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        }
    }

    pub fn node(trust_domain: &str, name: &str) -> SpiffeId {
        SpiffeId::Node {
            trust_domain: trust_domain.into(),
            name: name.into(),
        }
    }

    pub fn trust_domain(&self) -> &str {
        match self {
            SpiffeId::Workload { trust_domain, .. } | SpiffeId::Node { trust_domain, .. } => {
                trust_domain
            }
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpiffeId::Workload {
                trust_domain,
                namespace,
                service_account,
            } => write!(
                f,
                "spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"
            ),
            SpiffeId::Node { trust_domain, name } => {
                write!(f, "spiffe://{trust_domain}/node/{name}")
            }
        }
    }
}

/// A DNS-1123 subdomain: what names of namespaces, service accounts and nodes are.
fn dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

impl FromStr for SpiffeId {
    type Err = String;

    fn from_str(s: &str) -> Result<SpiffeId, String> {
        let bad = || {
            format!(
                "{s:?} is not spiffe://TRUST_DOMAIN/ns/NS/sa/SA or spiffe://TRUST_DOMAIN/node/NAME"
            )
        };
        let rest = s.strip_prefix("spiffe://").ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split('/').collect();
        if !parts
            .iter()
            .all(|p| dns_subdomain(p) || matches!(*p, "ns" | "sa" | "node"))
        {
            return Err(bad());
        }
        match parts[..] {
            [td, "ns", ns, "sa", sa] => Ok(SpiffeId::workload(td, ns, sa)),
            [td, "node", name] => Ok(SpiffeId::node(td, name)),
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_round_trip_and_reject_what_is_not_one() {
        for s in [
            "spiffe://cluster.local/ns/shop/sa/web",
            "spiffe://cluster.local/node/node-b",
        ] {
            assert_eq!(s.parse::<SpiffeId>().unwrap().to_string(), s);
        }
        for s in [
            "spiffe://cluster.local/ns/shop",
            "spiffe://cluster.local/ns/Shop/sa/web",
            "spiffe://cluster.local/ns/shop/sa/web/x",
            "https://cluster.local/ns/shop/sa/web",
            "spiffe:///ns/shop/sa/web",
            "spiffe://cluster.local/node/",
        ] {
            assert!(s.parse::<SpiffeId>().is_err(), "{s}");
        }
    }
}
