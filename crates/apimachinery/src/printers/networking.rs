//! Printers for `networking.k8s.io` and `discovery.k8s.io` kinds: Ingress, IngressClass,
//! NetworkPolicy, EndpointSlice, ServiceCIDR and IPAddress.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::age::since;
use super::core::load_balancer_addresses;
use super::descriptions as d;
use super::fields::{arr_at, at, created, name, opt_i64, opt_str, str_at};
use super::format::{format_label_selector, list_with_more};
use super::{Column, KindPrinter};

pub(super) fn printer(kind: &str) -> Option<KindPrinter> {
    Some(match kind {
        "Ingress" => KindPrinter::new(ingress_columns, ingress_cells),
        "IngressClass" => KindPrinter::new(ingress_class_columns, ingress_class_cells),
        "NetworkPolicy" => KindPrinter::new(network_policy_columns, network_policy_cells),
        "EndpointSlice" => KindPrinter::new(endpoint_slice_columns, endpoint_slice_cells),
        "ServiceCIDR" => KindPrinter::new(service_cidr_columns, service_cidr_cells),
        "IPAddress" => KindPrinter::new(ip_address_columns, ip_address_cells),
        _ => return None,
    })
}

fn age(obj: &Value, now: DateTime<Utc>) -> Value {
    since(Some(created(obj)), now).into()
}

fn ingress_columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::new(
            "Class",
            "string",
            "The name of the IngressClass resource that should be used for additional configuration",
        ),
        Column::new(
            "Hosts",
            "string",
            "Hosts that incoming requests are matched against before the ingress rule",
        ),
        Column::new(
            "Address",
            "string",
            "Address is a list containing ingress points for the load-balancer",
        ),
        Column::new("Ports", "string", "Ports of TLS configurations that open"),
        Column::age(),
    ]
}

/// `formatHosts`: up to three rule hosts, "*" when no rule names a host. Once three hosts are
/// listed, any further rule (with a host or not) makes it "+ N more...", N counting all rules.
fn format_hosts(rules: &[Value]) -> String {
    const MAX: usize = 3;
    let mut list: Vec<&str> = Vec::new();
    let mut more = false;
    for rule in rules {
        if list.len() == MAX {
            more = true;
            break;
        }
        let host = str_at(rule, "host");
        if !host.is_empty() {
            list.push(host);
        }
    }
    if list.is_empty() {
        return "*".to_string();
    }
    let ret = list.join(",");
    if more {
        format!("{ret} + {} more...", rules.len() - MAX)
    } else {
        ret
    }
}

fn ingress_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let ports = if arr_at(obj, "spec.tls").is_empty() {
        "80"
    } else {
        "80, 443"
    };
    vec![
        name(obj).into(),
        opt_str(obj, "spec.ingressClassName")
            .unwrap_or("<none>")
            .into(),
        format_hosts(arr_at(obj, "spec.rules")).into(),
        load_balancer_addresses(arr_at(obj, "status.loadBalancer.ingress")).into(),
        ports.into(),
        age(obj, now),
    ]
}

fn ingress_class_columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::new(
            "Controller",
            "string",
            "Controller that is responsible for handling this class",
        ),
        Column::new(
            "Parameters",
            "string",
            "A reference to a resource with additional parameters",
        ),
        Column::age(),
    ]
}

fn ingress_class_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let parameters = match at(obj, "spec.parameters") {
        Some(p) => {
            let kind = match opt_str(p, "apiGroup") {
                Some(group) => format!("{}.{group}", str_at(p, "kind")),
                None => str_at(p, "kind").to_string(),
            };
            format!("{kind}/{}", str_at(p, "name"))
        }
        None => "<none>".to_string(),
    };
    vec![
        name(obj).into(),
        str_at(obj, "spec.controller").into(),
        parameters.into(),
        age(obj, now),
    ]
}

fn network_policy_columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::new("Pod-Selector", "string", d::NETPOL_POD_SELECTOR),
        Column::age(),
    ]
}

fn network_policy_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    // podSelector is not a pointer in Go: an absent one is the empty selector.
    let empty = Value::Object(Default::default());
    let selector = at(obj, "spec.podSelector").unwrap_or(&empty);
    vec![
        name(obj).into(),
        format_label_selector(Some(selector)).into(),
        age(obj, now),
    ]
}

fn endpoint_slice_columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::new("AddressType", "string", d::EPS_ADDRESS_TYPE),
        Column::new("Ports", "string", d::EPS_PORTS),
        Column::new("Endpoints", "string", d::EPS_ENDPOINTS),
        Column::age(),
    ]
}

/// `formatDiscoveryPorts`: port numbers (or names, or "*"), three at most.
fn discovery_ports(ports: &[Value]) -> String {
    let list: Vec<String> = ports
        .iter()
        .take(3)
        .map(|p| match (opt_i64(p, "port"), opt_str(p, "name")) {
            (Some(n), _) => n.to_string(),
            (None, Some(name)) => name.to_string(),
            (None, None) => "*".to_string(),
        })
        .collect();
    list_with_more(&list, ports.len(), 3)
}

/// `formatDiscoveryEndpoints`: the first three addresses across all endpoints.
fn discovery_endpoints(endpoints: &[Value]) -> String {
    let all: Vec<String> = endpoints
        .iter()
        .flat_map(|e| arr_at(e, "addresses"))
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    let list: Vec<String> = all.iter().take(3).cloned().collect();
    list_with_more(&list, all.len(), 3)
}

fn endpoint_slice_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    vec![
        name(obj).into(),
        str_at(obj, "addressType").into(),
        discovery_ports(arr_at(obj, "ports")).into(),
        discovery_endpoints(arr_at(obj, "endpoints")).into(),
        age(obj, now),
    ]
}

fn service_cidr_columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::new("CIDRs", "string", d::SVC_CIDR_CIDRS),
        Column::age(),
    ]
}

fn service_cidr_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let cidrs: Vec<&str> = arr_at(obj, "spec.cidrs")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    vec![name(obj).into(), cidrs.join(",").into(), age(obj, now)]
}

fn ip_address_columns() -> Vec<Column> {
    // Kubernetes declares only these two columns yet sends an AGE cell as well.
    vec![
        Column::name(),
        Column::new("ParentRef", "string", d::IPADDR_PARENT),
    ]
}

fn ip_address_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let parent = match at(obj, "spec.parentRef") {
        Some(p) => {
            let resource = str_at(p, "resource");
            let group_resource = match str_at(p, "group") {
                "" => resource.to_string(),
                group => format!("{resource}.{group}"),
            };
            let mut s = group_resource.to_lowercase();
            if let Some(ns) = opt_str(p, "namespace").filter(|n| !n.is_empty()) {
                s.push('/');
                s.push_str(ns);
            }
            s.push('/');
            s.push_str(str_at(p, "name"));
            s
        }
        None => "<none>".to_string(),
    };
    vec![name(obj).into(), parent.into(), age(obj, now)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hosts_list() {
        let rules =
            |hosts: &[&str]| -> Vec<Value> { hosts.iter().map(|h| json!({"host": h})).collect() };
        assert_eq!(format_hosts(&[]), "*");
        assert_eq!(format_hosts(&rules(&[""])), "*");
        assert_eq!(format_hosts(&rules(&["a.io", "", "b.io"])), "a.io,b.io");
        assert_eq!(format_hosts(&rules(&["a", "b", "c"])), "a,b,c");
        assert_eq!(format_hosts(&rules(&["a", "", "b", "c"])), "a,b,c");
        assert_eq!(
            format_hosts(&rules(&["a", "b", "c", "d", ""])),
            "a,b,c + 2 more..."
        );
    }
}
