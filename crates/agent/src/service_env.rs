//! The Service environment variables the kubelet gives every container: for the
//! `kubernetes` Service always (in-cluster clients find the API with
//! KUBERNETES_SERVICE_HOST/PORT), and for each Service of the pod's namespace when
//! `enableServiceLinks` is on, in both the `_SERVICE_HOST` and the Docker-link forms.

use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use std::collections::BTreeMap;

/// Variables for a pod in `namespace`, by name. Services without a cluster IP (headless,
/// ExternalName) give none.
pub fn service_env<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    namespace: &str,
    enable_links: bool,
) -> BTreeMap<String, String> {
    let mut chosen: BTreeMap<String, &Service> = BTreeMap::new();
    for svc in services {
        let ip = svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref());
        if matches!(ip, None | Some("") | Some("None")) {
            continue;
        }
        let ns = svc.namespace().unwrap_or_default();
        let name = svc.name_any();
        if ns == "default" && name == "kubernetes" {
            chosen.entry(name).or_insert(svc);
        } else if ns == namespace && enable_links {
            chosen.insert(name, svc);
        }
    }
    let mut env = BTreeMap::new();
    for (name, svc) in chosen {
        let spec = svc.spec.as_ref().expect("checked above");
        let ip = spec.cluster_ip.clone().unwrap_or_default();
        let ports = spec.ports.as_deref().unwrap_or_default();
        let prefix = name.to_ascii_uppercase().replace('-', "_");
        env.insert(format!("{prefix}_SERVICE_HOST"), ip.clone());
        let Some(first) = ports.first() else {
            continue;
        };
        env.insert(format!("{prefix}_SERVICE_PORT"), first.port.to_string());
        for p in ports {
            if let Some(pn) = p.name.as_deref().filter(|n| !n.is_empty()) {
                let pn = pn.to_ascii_uppercase().replace('-', "_");
                env.insert(format!("{prefix}_SERVICE_PORT_{pn}"), p.port.to_string());
            }
        }
        let proto = |p: &k8s_openapi::api::core::v1::ServicePort| {
            p.protocol.as_deref().unwrap_or("TCP").to_string()
        };
        env.insert(
            format!("{prefix}_PORT"),
            format!(
                "{}://{ip}:{}",
                proto(first).to_ascii_lowercase(),
                first.port
            ),
        );
        for p in ports {
            let proto = proto(p);
            let base = format!("{prefix}_PORT_{}_{}", p.port, proto.to_ascii_uppercase());
            env.insert(
                base.clone(),
                format!("{}://{ip}:{}", proto.to_ascii_lowercase(), p.port),
            );
            env.insert(format!("{base}_PROTO"), proto.to_ascii_lowercase());
            env.insert(format!("{base}_PORT"), p.port.to_string());
            env.insert(format!("{base}_ADDR"), ip.clone());
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(ns: &str, name: &str, ip: &str, ports: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "ports": ports}
        }))
        .unwrap()
    }

    #[test]
    fn kubelet_variables() {
        let k = svc(
            "default",
            "kubernetes",
            "10.43.0.1",
            json!([{"name": "https", "port": 443, "protocol": "TCP"}]),
        );
        let web = svc(
            "shop",
            "web-front",
            "10.43.0.9",
            json!([{"name": "http", "port": 80}, {"name": "dns-udp", "port": 53, "protocol": "UDP"}]),
        );
        let headless = svc("shop", "db", "None", json!([{"port": 5432}]));
        let elsewhere = svc("other", "x", "10.43.0.7", json!([{"port": 1}]));
        let all = [k, web, headless, elsewhere];
        let env = service_env(&all, "shop", true);
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "10.43.0.1");
        assert_eq!(env["KUBERNETES_SERVICE_PORT"], "443");
        assert_eq!(env["KUBERNETES_SERVICE_PORT_HTTPS"], "443");
        assert_eq!(env["KUBERNETES_PORT"], "tcp://10.43.0.1:443");
        assert_eq!(env["KUBERNETES_PORT_443_TCP_ADDR"], "10.43.0.1");
        assert_eq!(env["WEB_FRONT_SERVICE_HOST"], "10.43.0.9");
        assert_eq!(env["WEB_FRONT_SERVICE_PORT_DNS_UDP"], "53");
        assert_eq!(env["WEB_FRONT_PORT_53_UDP"], "udp://10.43.0.9:53");
        assert_eq!(env["WEB_FRONT_PORT_53_UDP_PROTO"], "udp");
        assert!(!env
            .keys()
            .any(|k| k.starts_with("DB_") || k.starts_with("X_")));
        let off = service_env(&all, "shop", false);
        assert!(off.contains_key("KUBERNETES_SERVICE_HOST"));
        assert!(!off.contains_key("WEB_FRONT_SERVICE_HOST"));
    }
}
