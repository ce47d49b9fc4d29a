//! ClusterIP and NodePort allocation. Each allocated value is a key in the store created
//! with an "absent" precondition, so two servers sharing one etcd can never hand out the
//! same address, and nothing is kept in memory that a restart would lose.

use crate::error::{ApiError, ApiResult, Cause};
use bytes::Bytes;
use corral_store::{Compare, Store, TxnOutcome};
use serde_json::{json, Value};
use std::net::Ipv4Addr;

#[derive(Clone, Debug)]
pub struct Ranges {
    pub service_net: Ipv4Addr,
    pub service_prefix: u8,
    pub node_ports: (u16, u16),
}

impl Default for Ranges {
    fn default() -> Self {
        Ranges {
            service_net: Ipv4Addr::new(10, 43, 0, 0),
            service_prefix: 16,
            node_ports: (30000, 32767),
        }
    }
}

impl Ranges {
    pub fn size(&self) -> u32 {
        1u32 << (32 - self.service_prefix as u32)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.service_prefix as u32);
        (u32::from(ip) & mask) == (u32::from(self.service_net) & mask)
    }

    /// The `kubernetes` service's address: the first in the range.
    pub fn first(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.service_net) + 1)
    }

    /// The cluster DNS Service's (`kube-system/kube-dns`) address: the tenth in the range,
    /// where kubeadm and k3s put it (10.43.0.10 for 10.43.0.0/16); in a range too small for
    /// that, the last before the broadcast address.
    pub fn cluster_dns(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.service_net) + self.cluster_dns_offset())
    }

    fn cluster_dns_offset(&self) -> u32 {
        10.min(self.size().saturating_sub(2))
    }
}

/// Who may hold [`Ranges::cluster_dns`]: node proxies answer that address as DNS, so no
/// other Service may have it.
pub const CLUSTER_DNS_OWNER: &str = "kube-system/kube-dns";

fn ip_key(ip: &str) -> Vec<u8> {
    format!("/registry/ranges/serviceips/{ip}").into_bytes()
}

fn port_key(port: u16) -> Vec<u8> {
    format!("/registry/ranges/servicenodeports/{port}").into_bytes()
}

async fn claim(store: &Store, key: &[u8], owner: &str) -> ApiResult<bool> {
    let out = store
        .put(key, Bytes::from(owner.to_string()), Compare::Absent)
        .await?;
    Ok(matches!(out, TxnOutcome::Committed { .. }))
}

pub async fn release(store: &Store, key: &[u8]) {
    let _ = store.delete(key, Compare::Any).await;
}

/// Give a Service its cluster IP and node ports; returns the keys claimed (released again
/// if the Service is not stored).
pub async fn allocate_service(
    store: &Store,
    ranges: &Ranges,
    svc: &mut Value,
) -> ApiResult<Vec<Vec<u8>>> {
    let mut claimed = Vec::new();
    let owner = format!(
        "{}/{}",
        svc["metadata"]["namespace"].as_str().unwrap_or(""),
        svc["metadata"]["name"].as_str().unwrap_or("")
    );
    let name = svc["metadata"]["name"].as_str().unwrap_or("").to_string();
    let ty = svc["spec"]["type"]
        .as_str()
        .unwrap_or("ClusterIP")
        .to_string();
    if ty != "ExternalName" {
        match svc["spec"]["clusterIP"].as_str() {
            Some("None") => {
                svc["spec"]["clusterIPs"] = json!(["None"]);
            }
            Some(ip) if !ip.is_empty() => {
                let parsed: Ipv4Addr = ip.parse().map_err(|_| {
                    invalid(
                        &name,
                        Cause::invalid(
                            "spec.clusterIPs[0]",
                            &json!(ip),
                            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                        ),
                    )
                })?;
                let reserved = parsed == ranges.cluster_dns() && owner != CLUSTER_DNS_OWNER;
                if !ranges.contains(parsed) {
                    return Err(invalid(&name, Cause::invalid("spec.clusterIPs", &json!([ip]), format!("failed to allocate IP {ip}: provided IP is not in the valid range. The range of valid IPs is {}/{}", ranges.service_net, ranges.service_prefix))));
                }
                if reserved || !claim(store, &ip_key(ip), &owner).await? {
                    return Err(invalid(
                        &name,
                        Cause::invalid(
                            "spec.clusterIPs",
                            &json!([ip]),
                            format!("failed to allocate IP {ip}: provided IP is already allocated"),
                        ),
                    ));
                }
                claimed.push(ip_key(ip));
                svc["spec"]["clusterIPs"] = json!([ip]);
            }
            _ => {
                let ip = pick_ip(store, ranges, &owner).await?;
                claimed.push(ip_key(&ip));
                svc["spec"]["clusterIP"] = json!(ip);
                svc["spec"]["clusterIPs"] = json!([ip]);
            }
        }
    }
    if ty == "NodePort" || ty == "LoadBalancer" {
        let ports = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
        for (i, mut p) in ports.into_iter().enumerate() {
            let port = match p["nodePort"].as_u64() {
                Some(n) if n != 0 => {
                    let n = n as u16;
                    if n < ranges.node_ports.0 || n > ranges.node_ports.1 {
                        release_all(store, &claimed).await;
                        return Err(invalid(&name, Cause::invalid(format!("spec.ports[{i}].nodePort"), &json!(n), format!("provided port is not in the valid range. The range of valid ports is {}-{}", ranges.node_ports.0, ranges.node_ports.1))));
                    }
                    if !claim(store, &port_key(n), &owner).await? {
                        release_all(store, &claimed).await;
                        return Err(invalid(
                            &name,
                            Cause::invalid(
                                format!("spec.ports[{i}].nodePort"),
                                &json!(n),
                                "provided port is already allocated",
                            ),
                        ));
                    }
                    n
                }
                _ if !allocates_node_ports(svc) => continue,
                _ => match pick_port(store, ranges, &owner).await {
                    Ok(n) => n,
                    Err(e) => {
                        release_all(store, &claimed).await;
                        return Err(e);
                    }
                },
            };
            claimed.push(port_key(port));
            p["nodePort"] = json!(port);
            svc["spec"]["ports"][i] = p;
        }
    }
    if let Err(e) = health_check_port(store, ranges, None, svc, &owner, &mut claimed).await {
        release_all(store, &claimed).await;
        return Err(e);
    }
    Ok(claimed)
}

/// Whether ports without a nodePort get one: not for a LoadBalancer that says
/// `allocateLoadBalancerNodePorts: false` (its balancer reaches the pods another way).
fn allocates_node_ports(svc: &Value) -> bool {
    !(svc["spec"]["type"] == "LoadBalancer"
        && svc["spec"]["allocateLoadBalancerNodePorts"] == json!(false))
}

/// Whether a Service gets a `healthCheckNodePort`: a LoadBalancer whose external traffic
/// stays on the node it arrives at, so an outside balancer must learn which nodes have
/// endpoints.
fn wants_health_check(svc: &Value) -> bool {
    svc["spec"]["type"] == "LoadBalancer" && svc["spec"]["externalTrafficPolicy"] == "Local"
}

/// Gives `svc` the health check node port it needs (keeping `current`'s, claiming the one
/// asked for, or picking one), or drops the field when it needs none. Claims go to
/// `claimed`.
async fn health_check_port(
    store: &Store,
    ranges: &Ranges,
    current: Option<&Value>,
    svc: &mut Value,
    owner: &str,
    claimed: &mut Vec<Vec<u8>>,
) -> ApiResult<()> {
    let name = svc["metadata"]["name"].as_str().unwrap_or("").to_string();
    let held = current.and_then(|c| c["spec"]["healthCheckNodePort"].as_u64());
    let asked = svc["spec"]["healthCheckNodePort"]
        .as_u64()
        .filter(|n| *n != 0);
    if !wants_health_check(svc) {
        // As upstream drops type-dependent fields: one the server allocated goes with the
        // type; one the user sets on a Service that cannot have it is refused.
        if asked.is_some() && asked != held {
            return Err(invalid(&name, Cause::invalid("spec.healthCheckNodePort", &json!(asked), "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'")));
        }
        if let Some(spec) = svc["spec"].as_object_mut() {
            spec.remove("healthCheckNodePort");
        }
        return Ok(());
    }
    let port = match asked {
        Some(n) if Some(n) == held => n as u16,
        Some(n) => {
            let n = u16::try_from(n).unwrap_or(0);
            if n < ranges.node_ports.0 || n > ranges.node_ports.1 {
                return Err(invalid(&name, Cause::invalid("spec.healthCheckNodePort", &json!(n), format!("provided port is not in the valid range. The range of valid ports is {}-{}", ranges.node_ports.0, ranges.node_ports.1))));
            }
            if !claim(store, &port_key(n), owner).await? {
                return Err(invalid(
                    &name,
                    Cause::invalid(
                        "spec.healthCheckNodePort",
                        &json!(n),
                        "provided port is already allocated",
                    ),
                ));
            }
            claimed.push(port_key(n));
            n
        }
        None => match held {
            Some(n) => n as u16,
            None => {
                let n = pick_port(store, ranges, owner).await?;
                claimed.push(port_key(n));
                n
            }
        },
    };
    svc["spec"]["healthCheckNodePort"] = json!(port);
    Ok(())
}

/// The ports a Service holds: its node ports and health check node port.
fn held_ports(svc: &Value) -> Vec<u16> {
    let mut ports: Vec<u16> = svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["nodePort"].as_u64())
        .chain(svc["spec"]["healthCheckNodePort"].as_u64())
        .filter_map(|n| u16::try_from(n).ok())
        .filter(|n| *n != 0)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// What an update of a Service claimed (to give back if the write fails) and what it no
/// longer holds (to give back once the write succeeds).
#[derive(Debug, Default)]
pub struct ServiceUpdate {
    pub claimed: Vec<Vec<u8>>,
    pub released: Vec<Vec<u8>>,
}

/// Node ports for an updated Service, as the API server allocates them on update: a type
/// that needs node ports gets one for every port without (a port the user names must be
/// free), a type that needs none drops those it had, and the health check node port
/// follows `type` and `externalTrafficPolicy`.
pub async fn update_service(
    store: &Store,
    ranges: &Ranges,
    current: &Value,
    svc: &mut Value,
) -> ApiResult<ServiceUpdate> {
    let owner = format!(
        "{}/{}",
        svc["metadata"]["namespace"].as_str().unwrap_or(""),
        svc["metadata"]["name"].as_str().unwrap_or("")
    );
    let name = svc["metadata"]["name"].as_str().unwrap_or("").to_string();
    let held = held_ports(current);
    let mut out = ServiceUpdate::default();
    let needs_node_ports = matches!(
        svc["spec"]["type"].as_str(),
        Some("NodePort") | Some("LoadBalancer")
    );
    let count = svc["spec"]["ports"].as_array().map_or(0, |a| a.len());
    let result: ApiResult<()> = async {
        for i in 0..count {
            let p = &mut svc["spec"]["ports"][i];
            if !needs_node_ports {
                if let Some(o) = p.as_object_mut() {
                    o.remove("nodePort");
                }
                continue;
            }
            match p["nodePort"].as_u64().filter(|n| *n != 0) {
                Some(n) if held.contains(&(n as u16)) => {}
                Some(n) => {
                    let n = u16::try_from(n).unwrap_or(0);
                    if n < ranges.node_ports.0 || n > ranges.node_ports.1 {
                        return Err(invalid(&name, Cause::invalid(format!("spec.ports[{i}].nodePort"), &json!(n), format!("provided port is not in the valid range. The range of valid ports is {}-{}", ranges.node_ports.0, ranges.node_ports.1))));
                    }
                    if !claim(store, &port_key(n), &owner).await? {
                        return Err(invalid(&name, Cause::invalid(format!("spec.ports[{i}].nodePort"), &json!(n), "provided port is already allocated")));
                    }
                    out.claimed.push(port_key(n));
                }
                None if !allocates_node_ports(svc) => {}
                None => {
                    let n = pick_port(store, ranges, &owner).await?;
                    out.claimed.push(port_key(n));
                    svc["spec"]["ports"][i]["nodePort"] = json!(n);
                }
            }
        }
        health_check_port(store, ranges, Some(current), svc, &owner, &mut out.claimed).await
    }
    .await;
    if let Err(e) = result {
        release_all(store, &out.claimed).await;
        return Err(e);
    }
    let now = held_ports(svc);
    out.released = held
        .into_iter()
        .filter(|n| !now.contains(n))
        .map(port_key)
        .collect();
    Ok(out)
}

fn invalid(name: &str, c: Cause) -> ApiError {
    ApiError::invalid("Service", "", name, vec![c])
}

pub async fn release_all(store: &Store, keys: &[Vec<u8>]) {
    for k in keys {
        release(store, k).await;
    }
}

/// Free what a deleted Service held.
pub async fn release_service(store: &Store, svc: &Value) {
    if let Some(ip) = svc["spec"]["clusterIP"].as_str() {
        if ip != "None" && !ip.is_empty() {
            release(store, &ip_key(ip)).await;
        }
    }
    for n in held_ports(svc) {
        release(store, &port_key(n)).await;
    }
}

async fn pick_ip(store: &Store, ranges: &Ranges, owner: &str) -> ApiResult<String> {
    let size = ranges.size();
    let base = u32::from(ranges.service_net);
    // Random probing first (cheap when the range is sparse), then a full scan.
    let start = (uuid::Uuid::new_v4().as_u128() as u32) % size.max(1);
    for i in 0..size {
        let off = (start + i) % size;
        if off < 2 || off == size - 1 || off == ranges.cluster_dns_offset() {
            continue; // network, the `kubernetes` service, broadcast, cluster DNS
        }
        let ip = Ipv4Addr::from(base + off).to_string();
        if claim(store, &ip_key(&ip), owner).await? {
            return Ok(ip);
        }
    }
    Err(ApiError::internal(
        "failed to allocate a serviceIP: range is full",
    ))
}

async fn pick_port(store: &Store, ranges: &Ranges, owner: &str) -> ApiResult<u16> {
    let (lo, hi) = ranges.node_ports;
    let n = (hi - lo + 1) as u32;
    let start = (uuid::Uuid::new_v4().as_u128() as u32) % n;
    for i in 0..n {
        let port = lo + ((start + i) % n) as u16;
        if claim(store, &port_key(port), owner).await? {
            return Ok(port);
        }
    }
    Err(ApiError::internal(
        "failed to allocate a nodePort: range is full",
    ))
}

/// Claim a specific address (the `kubernetes` service at start-up).
pub async fn claim_ip(store: &Store, ip: Ipv4Addr, owner: &str) -> ApiResult<bool> {
    claim(store, &ip_key(&ip.to_string()), owner).await
}

/// Which Service holds an address, if any (`namespace/name`).
pub async fn ip_owner(store: &Store, ip: Ipv4Addr) -> ApiResult<Option<String>> {
    Ok(store
        .get(&ip_key(&ip.to_string()))
        .await?
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
}
