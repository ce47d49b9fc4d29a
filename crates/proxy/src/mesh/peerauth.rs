//! Istio's PeerAuthentication: which ports of a workload accept plaintext. In corral's
//! mesh (ambient-like: the node proxy connects to pods from the node, and will carry mTLS
//! between nodes' proxies), STRICT for a port means that only the node may open TCP
//! connections to it; plaintext connections from other pods straight to its address are
//! refused (the packet filter in `netpol::packet` drops their SYNs).
//!
//! Precedence as Istio's: a policy in the pod's namespace whose selector matches the pod
//! (workload-specific) over one in its namespace without a selector (namespace-wide) over
//! one without a selector in the root namespace `istio-system` (mesh-wide); the oldest
//! wins among several at one level. A mode of UNSET (or no `mtls`) inherits from the next
//! level; with nothing set the mode is PERMISSIVE. `portLevelMtls` counts only in a
//! workload-specific policy, and its UNSET ports inherit the workload's mode.

use crate::mesh::authz::{Selector, ROOT_NAMESPACE};
use crate::pods::PodMeta;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct PeerAuthenticationSpec {
    pub selector: Option<Selector>,
    pub mtls: Option<Mtls>,
    pub port_level_mtls: BTreeMap<String, Mtls>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Mtls {
    pub mode: Option<String>,
}

pub type PeerAuthentication = crate::view::MeshResource<PeerAuthenticationSpec>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Unset,
    Disable,
    Permissive,
    Strict,
}

impl Mode {
    fn of(m: Option<&Mtls>) -> Mode {
        match m.and_then(|m| m.mode.as_deref()) {
            Some("STRICT") => Mode::Strict,
            Some("PERMISSIVE") => Mode::Permissive,
            Some("DISABLE") => Mode::Disable,
            _ => Mode::Unset,
        }
    }

    /// This mode, or `parent` when unset.
    fn or(self, parent: Mode) -> Mode {
        if self == Mode::Unset {
            parent
        } else {
            self
        }
    }
}

/// The ports of one pod where plaintext from other pods is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StrictPorts {
    None,
    All { except: BTreeSet<u16> },
    Only(BTreeSet<u16>),
}

impl StrictPorts {
    pub fn is_strict(&self, port: u16) -> bool {
        match self {
            StrictPorts::None => false,
            StrictPorts::All { except } => !except.contains(&port),
            StrictPorts::Only(ports) => ports.contains(&port),
        }
    }

    /// The strict ports as inclusive ranges, in order.
    pub fn ranges(&self) -> Vec<(u16, u16)> {
        match self {
            StrictPorts::None => Vec::new(),
            StrictPorts::Only(ports) => ports.iter().map(|p| (*p, *p)).collect(),
            StrictPorts::All { except } => {
                let mut out = Vec::new();
                let mut start: u32 = 0;
                for e in except {
                    if u32::from(*e) > start {
                        out.push((start as u16, e - 1));
                    }
                    start = u32::from(*e) + 1;
                }
                if start <= 65535 {
                    out.push((start as u16, 65535));
                }
                out
            }
        }
    }
}

/// Every PeerAuthentication of the cluster, oldest first.
#[derive(Debug, Default)]
pub struct PeerAuthn {
    policies: Vec<Arc<PeerAuthentication>>,
}

fn workload_selector(p: &PeerAuthentication) -> Option<&Selector> {
    // An empty matchLabels selects no particular workload: Istio treats the policy as
    // namespace-wide.
    p.spec
        .selector
        .as_ref()
        .filter(|s| !s.match_labels.is_empty())
}

impl PeerAuthn {
    /// `policies` as the view keeps them: sorted by creation time.
    pub fn new(policies: &[Arc<PeerAuthentication>]) -> PeerAuthn {
        PeerAuthn {
            policies: policies.to_vec(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    pub fn strict_ports(&self, pod: &PodMeta) -> StrictPorts {
        if self.policies.is_empty() {
            return StrictPorts::None;
        }
        let mesh = self
            .policies
            .iter()
            .find(|p| p.namespace == ROOT_NAMESPACE && workload_selector(p).is_none());
        let namespace = self
            .policies
            .iter()
            .find(|p| p.namespace == pod.namespace && workload_selector(p).is_none());
        let workload = self.policies.iter().find(|p| {
            p.namespace == pod.namespace
                && workload_selector(p).is_some_and(|s| {
                    s.match_labels
                        .iter()
                        .all(|(k, v)| pod.labels.get(k) == Some(v))
                })
        });
        let mesh_mode = Mode::of(mesh.and_then(|p| p.spec.mtls.as_ref())).or(Mode::Permissive);
        let ns_mode = Mode::of(namespace.and_then(|p| p.spec.mtls.as_ref())).or(mesh_mode);
        let mode = Mode::of(workload.and_then(|p| p.spec.mtls.as_ref())).or(ns_mode);
        let mut ports: BTreeMap<u16, Mode> = BTreeMap::new();
        for (port, m) in workload.iter().flat_map(|p| &p.spec.port_level_mtls) {
            if let Ok(port) = port.parse::<u16>() {
                ports.insert(port, Mode::of(Some(m)).or(mode));
            }
        }
        if mode == Mode::Strict {
            let except: BTreeSet<u16> = ports
                .iter()
                .filter(|(_, m)| **m != Mode::Strict)
                .map(|(p, _)| *p)
                .collect();
            StrictPorts::All { except }
        } else {
            let only: BTreeSet<u16> = ports
                .iter()
                .filter(|(_, m)| **m == Mode::Strict)
                .map(|(p, _)| *p)
                .collect();
            if only.is_empty() {
                StrictPorts::None
            } else {
                StrictPorts::Only(only)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ns: &str, labels: &[(&str, &str)]) -> PodMeta {
        PodMeta {
            namespace: ns.into(),
            name: "p".into(),
            labels: Arc::new(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn pa(ns: &str, name: &str, created: &str, spec: serde_json::Value) -> Arc<PeerAuthentication> {
        Arc::new(PeerAuthentication {
            namespace: ns.into(),
            name: name.into(),
            created: created.into(),
            spec: serde_json::from_value(spec).unwrap(),
        })
    }

    fn authn(mut ps: Vec<Arc<PeerAuthentication>>) -> PeerAuthn {
        ps.sort_by(|a, b| a.created.cmp(&b.created));
        PeerAuthn::new(&ps)
    }

    #[test]
    fn nothing_means_permissive() {
        assert_eq!(
            authn(vec![]).strict_ports(&pod("a", &[])),
            StrictPorts::None
        );
    }

    #[test]
    fn mesh_namespace_workload_precedence() {
        let a = authn(vec![
            pa(
                "istio-system",
                "mesh",
                "1",
                json!({"mtls": {"mode": "STRICT"}}),
            ),
            pa(
                "relaxed",
                "ns",
                "2",
                json!({"mtls": {"mode": "PERMISSIVE"}}),
            ),
            pa(
                "relaxed",
                "db",
                "3",
                json!({"selector": {"matchLabels": {"app": "db"}},
                                             "mtls": {"mode": "STRICT"}}),
            ),
            pa("unset", "ns", "4", json!({"mtls": {"mode": "UNSET"}})),
        ]);
        assert!(a.strict_ports(&pod("any", &[])).is_strict(80), "mesh-wide");
        assert!(
            a.strict_ports(&pod("unset", &[])).is_strict(80),
            "UNSET inherits"
        );
        assert_eq!(
            a.strict_ports(&pod("relaxed", &[("app", "web")])),
            StrictPorts::None
        );
        assert!(a
            .strict_ports(&pod("relaxed", &[("app", "db")]))
            .is_strict(5432));
        // A selector in the root namespace selects workloads there only.
        let b = authn(vec![pa(
            "istio-system",
            "sel",
            "1",
            json!({"selector": {"matchLabels": {"app": "db"}}, "mtls": {"mode": "STRICT"}}),
        )]);
        assert_eq!(
            b.strict_ports(&pod("shop", &[("app", "db")])),
            StrictPorts::None
        );
    }

    #[test]
    fn oldest_wins_at_one_level() {
        let a = authn(vec![
            pa("shop", "newer", "2", json!({"mtls": {"mode": "STRICT"}})),
            pa("shop", "older", "1", json!({"mtls": {"mode": "DISABLE"}})),
        ]);
        assert_eq!(a.strict_ports(&pod("shop", &[])), StrictPorts::None);
    }

    #[test]
    fn port_level() {
        let a = authn(vec![
            pa(
                "shop",
                "ns",
                "1",
                json!({"mtls": {"mode": "STRICT"},
                "portLevelMtls": {"9000": {"mode": "DISABLE"}}}),
            ),
            pa(
                "shop",
                "web",
                "2",
                json!({"selector": {"matchLabels": {"app": "web"}},
                "portLevelMtls": {"8080": {"mode": "PERMISSIVE"}, "8443": {"mode": "UNSET"}}}),
            ),
            pa(
                "shop",
                "db",
                "3",
                json!({"selector": {"matchLabels": {"app": "db"}},
                "mtls": {"mode": "PERMISSIVE"}, "portLevelMtls": {"5432": {"mode": "STRICT"}}}),
            ),
        ]);
        let web = a.strict_ports(&pod("shop", &[("app", "web")]));
        assert!(!web.is_strict(8080));
        assert!(web.is_strict(8443) && web.is_strict(80));
        assert_eq!(web.ranges(), vec![(0, 8079), (8081, 65535)]);
        // portLevelMtls of a namespace-wide policy does not count.
        assert!(a.strict_ports(&pod("shop", &[])).is_strict(9000));
        let db = a.strict_ports(&pod("shop", &[("app", "db")]));
        assert!(db.is_strict(5432) && !db.is_strict(80));
        assert_eq!(db.ranges(), vec![(5432, 5432)]);
        assert_eq!(
            StrictPorts::All {
                except: [0, 65535].into()
            }
            .ranges(),
            vec![(1, 65534)]
        );
    }
}
