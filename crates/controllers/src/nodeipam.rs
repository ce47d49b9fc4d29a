//! Node IPAM, as kube-controller-manager's node-ipam controller with `--allocate-node-cidrs`:
//! every Node without `spec.podCIDR` gets the first free block of the cluster's pod range
//! (a /24 of 10.42.0.0/16 by default, as k3s), so an agent joining with `corral agent` needs
//! no per-node flag. A block is taken once: nodes that chose their own range (`corral
//! server --pod-cidr`) are honoured and never handed out again.

use crate::informer::{Informer, Key};
use crate::queue::{Outcome, Queue};
use crate::{events::Recorder, Error};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

/// An IPv4 block, `addr/len` with the host bits clear.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: u32,
    pub len: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: want an IPv4 CIDR such as 10.42.0.0/16"))?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("{s:?}: {a:?} is not an IPv4 address"))?;
        let len: u8 = l
            .parse()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or_else(|| format!("{s:?}: prefix length must be 0-32"))?;
        let addr = u32::from(addr) & Self::mask(len);
        Ok(Cidr { addr, len })
    }

    fn mask(len: u8) -> u32 {
        if len == 0 {
            0
        } else {
            u32::MAX << (32 - len)
        }
    }

    fn last(&self) -> u32 {
        self.addr | !Self::mask(self.len)
    }

    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.addr <= other.last() && other.addr <= self.last()
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.addr), self.len)
    }
}

/// The first `block_len` block of `range` that overlaps none of `used`.
pub fn first_free(range: Cidr, block_len: u8, used: &[Cidr]) -> Option<Cidr> {
    if block_len < range.len || block_len > 32 {
        return None;
    }
    let count = 1u64 << (block_len - range.len);
    let step = 1u64 << (32 - block_len);
    (0..count)
        .map(|i| Cidr {
            addr: (range.addr as u64 + i * step) as u32,
            len: block_len,
        })
        .find(|c| !used.iter().any(|u| u.overlaps(c)))
}

pub struct Controller {
    client: Client,
    nodes: Informer<Node>,
    recorder: Recorder,
    range: Cidr,
    block_len: u8,
    /// Blocks handed out that the node cache may not show yet, so two nodes registering
    /// together never get the same one.
    given: Mutex<BTreeMap<String, Cidr>>,
    queue: Queue,
}

impl Controller {
    pub fn new(
        client: Client,
        nodes: Informer<Node>,
        recorder: Recorder,
        range: Cidr,
        block_len: u8,
    ) -> Controller {
        Controller {
            client,
            nodes,
            recorder,
            range,
            block_len,
            given: Mutex::new(BTreeMap::new()),
            queue: Queue::new("nodeipam"),
        }
    }

    pub fn register(self: &Arc<Self>) -> Queue {
        let q = self.queue.clone();
        self.nodes
            .on_change(move |c| q.add(Key::new("", c.object().name_any())));
        self.queue.clone()
    }

    fn node_cidrs(node: &Node) -> Vec<Cidr> {
        let spec = node.spec.as_ref();
        spec.and_then(|s| s.pod_cidr.iter().chain(s.pod_cidrs.iter().flatten()).next())
            .and_then(|c| Cidr::parse(c).ok())
            .into_iter()
            .collect()
    }

    pub async fn reconcile(&self, key: Key) -> Outcome {
        let Some(node) = self.nodes.get(&key) else {
            self.given.lock().unwrap().remove(&key.name);
            return Ok(None);
        };
        if node
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidr.as_ref())
            .is_some()
        {
            self.given.lock().unwrap().remove(&key.name);
            return Ok(None);
        }
        let block = {
            let mut given = self.given.lock().unwrap();
            if let Some(b) = given.get(&key.name) {
                *b
            } else {
                let mut used: Vec<Cidr> = self
                    .nodes
                    .list(|n| n.name_any() != key.name)
                    .iter()
                    .flat_map(|n| Self::node_cidrs(n))
                    .collect();
                used.extend(given.values().copied());
                match first_free(self.range, self.block_len, &used) {
                    Some(b) => {
                        given.insert(key.name.clone(), b);
                        b
                    }
                    None => {
                        drop(given);
                        let msg = format!(
                            "No pod range left in the cluster range {} for node {}",
                            self.range, key.name
                        );
                        self.recorder
                            .warning(&*node, "CIDRNotAvailable", msg.clone());
                        return Err(Error::Other(msg));
                    }
                }
            }
        };
        let patch =
            json!({"spec": {"podCIDR": block.to_string(), "podCIDRs": [block.to_string()]}});
        Api::<Node>::all(self.client.clone())
            .patch(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        tracing::info!(node = %key.name, pod_cidr = %block, "assigned the node's pod range");
        self.recorder.normal(
            &*node,
            "CIDRAssignmentSucceeded",
            format!("Node {} got pod range {block}", key.name),
        );
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_skip_taken_and_overlapping_ranges() {
        let range = Cidr::parse("10.42.0.0/16").unwrap();
        assert_eq!(
            first_free(range, 24, &[]).unwrap().to_string(),
            "10.42.0.0/24"
        );
        let used = [
            Cidr::parse("10.42.0.0/24").unwrap(),
            Cidr::parse("10.42.1.128/25").unwrap(),
            Cidr::parse("192.168.0.0/24").unwrap(),
        ];
        assert_eq!(
            first_free(range, 24, &used).unwrap().to_string(),
            "10.42.2.0/24"
        );
        let full = [Cidr::parse("10.0.0.0/8").unwrap()];
        assert_eq!(first_free(range, 24, &full), None);
        assert_eq!(first_free(range, 8, &[]), None);
    }

    #[test]
    fn cidrs_parse_and_clear_host_bits() {
        assert_eq!(
            Cidr::parse("10.42.3.7/16").unwrap().to_string(),
            "10.42.0.0/16"
        );
        assert!(Cidr::parse("10.42.0.0").is_err());
        assert!(Cidr::parse("10.42.0.0/33").is_err());
        assert!(Cidr::parse("fd00::/64").is_err());
    }
}
