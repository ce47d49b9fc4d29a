//! Pod IPs across nodes: keeps a route to every other node's pod range via that node's
//! InternalIP (see `corral_runtime::node_routes`), following the Node objects. A node whose
//! address is not on a link this node shares gets no route (the kernel refuses it); that
//! is said once in the log, and its pods stay reachable through Services, which the node
//! proxies tunnel.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use corral_runtime::node_routes::{sync_pod_routes, PodRoute};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio::sync::watch;

/// How often the routes are checked when no Node changes (someone may have removed one).
const RESYNC: Duration = Duration::from_secs(30);

pub struct NodeRoutes {
    pub client: Client,
    pub node_name: String,
    pub pod_cidr: String,
    pub node_ip: IpAddr,
    pub bridge: String,
}

impl NodeRoutes {
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let own = parse_cidr(&self.pod_cidr);
        let (reader, writer) = reflector::store();
        let stream = reflector::reflector(
            writer,
            watcher(
                Api::<Node>::all(self.client.clone()),
                watcher::Config::default(),
            )
            .default_backoff(),
        )
        .touched_objects();
        let (changed_tx, mut changed) = watch::channel(());
        let feed = tokio::spawn(stream.for_each(move |_| {
            let _ = changed_tx.send(());
            futures::future::ready(())
        }));
        let mut applied: Option<BTreeSet<PodRoute>> = None;
        let mut told: BTreeSet<PodRoute> = BTreeSet::new();
        let mut next_check = RESYNC;
        let mut bridge_retry = Duration::from_secs(1);
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                r = changed.changed() => if r.is_err() { break },
                _ = tokio::time::sleep(next_check) => applied = None,
            }
            next_check = RESYNC;
            // Let a burst of Node updates settle into one sync.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let want: BTreeSet<PodRoute> = reader
                .state()
                .iter()
                .filter(|n| n.metadata.name.as_deref() != Some(&self.node_name))
                .filter_map(|n| route_to(n, own, self.node_ip))
                .collect();
            if applied.as_ref() == Some(&want) {
                continue;
            }
            let bridge = self.bridge.clone();
            let list: Vec<PodRoute> = want.iter().copied().collect();
            match tokio::task::spawn_blocking(move || sync_pod_routes(&bridge, &list)).await {
                Ok(Ok(report)) => {
                    if report.removed > 0 || report.installed != want.len() {
                        tracing::info!(
                            installed = report.installed,
                            removed = report.removed,
                            unreachable = report.failed.len(),
                            "routes to other nodes' pods synced"
                        );
                    }
                    // Said once per route, and briefly: a cluster of simulated nodes (the
                    // scheduler benchmark's) has thousands of unreachable addresses.
                    let new: Vec<_> = report
                        .failed
                        .iter()
                        .filter(|(route, _)| told.insert(*route))
                        .collect();
                    for (route, e) in new.iter().take(3) {
                        tracing::warn!(
                            pod_cidr = %format!("{}/{}", route.dst, route.prefix), via = %route.via, error = %e,
                            "no route to a node's pods: its address is not on a network this node shares; \
                             its pods are reachable through Services only"
                        );
                    }
                    if new.len() > 3 {
                        tracing::warn!(more = new.len() - 3, "more nodes' pods without a route");
                    }
                    if report.bridge_forwarding {
                        applied = Some(want);
                        bridge_retry = Duration::from_secs(1);
                    } else {
                        // Routes are in, the bridge comes with the first pod: look again
                        // soon, less often the longer the node stays without pods.
                        applied = None;
                        next_check = bridge_retry;
                        bridge_retry = (bridge_retry * 2).min(RESYNC);
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "syncing routes to other nodes' pods failed");
                    applied = None;
                    next_check = Duration::from_secs(5);
                }
                Err(e) => tracing::warn!(error = %e, "route sync task failed"),
            }
        }
        feed.abort();
    }
}

/// The route to `node`'s pods: its (first IPv4) pod range via its InternalIP; none for a
/// node without both, one at this node's own address, or a range overlapping ours.
fn route_to(node: &Node, own: Option<(Ipv4Addr, u8)>, own_ip: IpAddr) -> Option<PodRoute> {
    let spec = node.spec.as_ref()?;
    let (dst, prefix) = spec
        .pod_cidrs
        .iter()
        .flatten()
        .chain(spec.pod_cidr.iter())
        .find_map(|c| parse_cidr(c))?;
    let via: Ipv4Addr = node
        .status
        .as_ref()?
        .addresses
        .iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse().ok())?;
    if IpAddr::V4(via) == own_ip || own.is_some_and(|o| overlaps(o, (dst, prefix))) {
        return None;
    }
    Some(PodRoute { dst, prefix, via })
}

fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, prefix) = s.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
    Some((Ipv4Addr::from(u32::from(addr) & mask(prefix)), prefix))
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

fn overlaps(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let m = mask(a.1.min(b.1));
    u32::from(a.0) & m == u32::from(b.0) & m
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, cidr: &str, ip: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
            "status": {"addresses": [
                {"type": "Hostname", "address": name},
                {"type": "InternalIP", "address": ip}
            ]}
        }))
        .unwrap()
    }

    #[test]
    fn a_route_per_other_node_with_a_range_and_an_address() {
        let own = parse_cidr("10.42.0.0/24");
        let me: IpAddr = "10.0.0.1".parse().unwrap();
        let r = route_to(&node("b", "10.42.1.0/24", "10.0.0.2"), own, me).unwrap();
        assert_eq!(
            r,
            PodRoute {
                dst: Ipv4Addr::new(10, 42, 1, 0),
                prefix: 24,
                via: Ipv4Addr::new(10, 0, 0, 2)
            }
        );
        // Same address as ours (nodes simulated on this host), overlapping ranges, IPv6,
        // garbage: no route.
        assert!(route_to(&node("c", "10.42.2.0/24", "10.0.0.1"), own, me).is_none());
        assert!(route_to(&node("d", "10.42.0.128/25", "10.0.0.3"), own, me).is_none());
        assert!(route_to(&node("e", "10.0.0.0/8", "10.0.0.4"), own, me).is_none());
        assert!(route_to(&node("f", "fd00::/64", "10.0.0.5"), own, me).is_none());
        assert!(route_to(&node("g", "10.42.7.0/24", "not-an-ip"), own, me).is_none());
        assert!(route_to(&node("h", "10.42.8.0/33", "10.0.0.6"), own, me).is_none());
        let bare: Node = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
        assert!(route_to(&bare, own, me).is_none());
    }
}
