//! Printers for the core (`v1`) kinds other than Pod and Event: Namespace, Service, Endpoints,
//! ConfigMap, Secret, ServiceAccount, Node, PersistentVolume(Claim), ResourceQuota,
//! ReplicationController, PodTemplate and ComponentStatus.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::age::since;
use super::descriptions as d;
use super::fields::{
    arr_at, at, bool_at, created, deleting, i64_at, map_at, map_len, name, opt_i64, opt_str, or,
    str_at,
};
use super::format::{access_modes, container_cells, format_labels, join_host_port};
use super::quantity::canonical_opt;
use super::{Column, KindPrinter};

pub(super) fn printer(kind: &str) -> Option<KindPrinter> {
    Some(match kind {
        "Namespace" => KindPrinter::new(namespace_columns, namespace_cells),
        "Service" => KindPrinter::new(service_columns, service_cells),
        "Endpoints" => KindPrinter::new(endpoints_columns, endpoints_cells),
        "ConfigMap" => KindPrinter::new(config_map_columns, config_map_cells),
        "Secret" => KindPrinter::new(secret_columns, secret_cells),
        "ServiceAccount" => KindPrinter::new(service_account_columns, service_account_cells),
        "Node" => KindPrinter::new(node_columns, node_cells),
        "PersistentVolume" => KindPrinter::new(pv_columns, pv_cells),
        "PersistentVolumeClaim" => KindPrinter::new(pvc_columns, pvc_cells),
        "ResourceQuota" => KindPrinter::new(quota_columns, quota_cells),
        "ReplicationController" => KindPrinter::new(rc_columns, rc_cells),
        "PodTemplate" => KindPrinter::new(pod_template_columns, pod_template_cells),
        "ComponentStatus" => KindPrinter::new(component_status_columns, component_status_cells),
        _ => return None,
    })
}

fn age(obj: &Value, now: DateTime<Utc>) -> Value {
    since(Some(created(obj)), now).into()
}

fn namespace_columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::new("Status", "string", "The status of the namespace"),
        Column::age(),
    ]
}

fn namespace_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    // Namespaces are created Active.
    let phase = or(str_at(obj, "status.phase"), "Active");
    vec![name(obj).into(), phase.into(), age(obj, now)]
}

fn service_columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::new("Type", "string", d::SVC_SPEC_TYPE),
        Column::new("Cluster-IP", "string", d::SVC_SPEC_CLUSTER_IP),
        Column::new("External-IP", "string", d::SVC_SPEC_EXTERNAL_IPS),
        Column::new("Port(s)", "string", d::SVC_SPEC_PORTS),
        Column::age(),
        Column::wide("Selector", "string", d::SVC_SPEC_SELECTOR),
    ]
}

/// `loadBalancerStatusStringer` with `wide` set (the server always renders wide): the unique
/// ingress IPs, or hostnames where there is no IP, sorted and joined with ",".
pub(super) fn load_balancer_addresses(ingress: &[Value]) -> String {
    let set: BTreeSet<&str> = ingress
        .iter()
        .filter_map(|i| {
            let ip = str_at(i, "ip");
            let host = str_at(i, "hostname");
            [ip, host].into_iter().find(|s| !s.is_empty())
        })
        .collect();
    set.into_iter().collect::<Vec<_>>().join(",")
}

/// `getServiceExternalIP`.
fn service_external_ip(obj: &Value, svc_type: &str) -> String {
    let external: Vec<&str> = arr_at(obj, "spec.externalIPs")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    match svc_type {
        "ClusterIP" | "NodePort" if external.is_empty() => "<none>".to_string(),
        "ClusterIP" | "NodePort" => external.join(","),
        "LoadBalancer" => {
            let lb = load_balancer_addresses(arr_at(obj, "status.loadBalancer.ingress"));
            if !external.is_empty() {
                let mut all: Vec<&str> = Vec::new();
                if !lb.is_empty() {
                    all.extend(lb.split(','));
                }
                all.extend(external);
                all.join(",")
            } else if !lb.is_empty() {
                lb
            } else {
                "<pending>".to_string()
            }
        }
        "ExternalName" => str_at(obj, "spec.externalName").to_string(),
        _ => "<unknown>".to_string(),
    }
}

/// `makePortString`: "80/TCP", or "80:30080/TCP" when a node port is allocated.
fn service_ports(ports: &[Value]) -> String {
    ports
        .iter()
        .map(|p| {
            let port = i64_at(p, "port");
            // Protocol defaults to TCP on admission.
            let proto = or(str_at(p, "protocol"), "TCP");
            match i64_at(p, "nodePort") {
                n if n > 0 => format!("{port}:{n}/{proto}"),
                _ => format!("{port}/{proto}"),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn service_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let svc_type = or(str_at(obj, "spec.type"), "ClusterIP");
    // clusterIPs[0] is the primary address; older objects may only carry clusterIP.
    let cluster_ip = arr_at(obj, "spec.clusterIPs")
        .first()
        .and_then(Value::as_str)
        .unwrap_or_else(|| str_at(obj, "spec.clusterIP"));
    let ports = service_ports(arr_at(obj, "spec.ports"));
    vec![
        name(obj).into(),
        svc_type.into(),
        or(cluster_ip, "<none>").into(),
        service_external_ip(obj, svc_type).into(),
        or(&ports, "<none>").into(),
        age(obj, now),
        format_labels(map_at(obj, "spec.selector")).into(),
    ]
}

fn endpoints_columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::new("Endpoints", "string", d::ENDPOINTS_SUBSETS),
        Column::age(),
    ]
}

/// `formatEndpoints` for all ports: up to three `ip:port` pairs, then "+ N more...".
fn format_endpoints(obj: &Value) -> String {
    let subsets = arr_at(obj, "subsets");
    if subsets.is_empty() {
        return "<none>".to_string();
    }
    const MAX: usize = 3;
    let mut list: Vec<String> = Vec::new();
    let mut count = 0;
    for ss in subsets {
        let addresses = arr_at(ss, "addresses");
        let ports = arr_at(ss, "ports");
        if ports.is_empty() {
            // Headless services may have no ports: list the bare IPs.
            count += addresses.len();
            for a in addresses {
                if list.len() == MAX {
                    break;
                }
                list.push(str_at(a, "ip").to_string());
            }
            continue;
        }
        for port in ports {
            count += addresses.len();
            for a in addresses {
                if list.len() == MAX {
                    break;
                }
                list.push(join_host_port(str_at(a, "ip"), i64_at(port, "port")));
            }
        }
    }
    let ret = list.join(",");
    if count > MAX {
        format!("{ret} + {} more...", count - MAX)
    } else {
        ret
    }
}

fn endpoints_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    vec![
        name(obj).into(),
        format_endpoints(obj).into(),
        age(obj, now),
    ]
}

fn config_map_columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::new("Data", "string", d::CM_DATA),
        Column::age(),
    ]
}

fn config_map_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let entries = map_len(obj, "data") + map_len(obj, "binaryData");
    vec![name(obj).into(), (entries as i64).into(), age(obj, now)]
}

fn secret_columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::new("Type", "string", d::SECRET_TYPE),
        Column::new("Data", "string", d::SECRET_DATA),
        Column::age(),
    ]
}

fn secret_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    vec![
        name(obj).into(),
        or(str_at(obj, "type"), "Opaque").into(),
        (map_len(obj, "data") as i64).into(),
        age(obj, now),
    ]
}

fn service_account_columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::new("Secrets", "string", d::SA_SECRETS),
        Column::age(),
    ]
}

fn service_account_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let secrets = arr_at(obj, "secrets").len() as i64;
    vec![name(obj).into(), secrets.into(), age(obj, now)]
}

fn node_columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::new("Status", "string", "The status of the node"),
        Column::new("Roles", "string", "The roles of the node"),
        Column::age(),
        Column::new("Version", "string", d::NODE_INFO_KUBELET),
        Column::wide("Internal-IP", "string", d::NODE_STATUS_ADDRESSES),
        Column::wide("External-IP", "string", d::NODE_STATUS_ADDRESSES),
        Column::wide("OS-Image", "string", d::NODE_INFO_OS_IMAGE),
        Column::wide("Kernel-Version", "string", d::NODE_INFO_KERNEL),
        Column::wide("Container-Runtime", "string", d::NODE_INFO_RUNTIME),
    ]
}

/// `findNodeRoles`: `node-role.kubernetes.io/<role>` label keys and the `kubernetes.io/role`
/// label value, sorted and de-duplicated.
fn node_roles(obj: &Value) -> String {
    let mut roles = BTreeSet::new();
    for (k, v) in map_at(obj, "metadata.labels").into_iter().flatten() {
        if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
            if !role.is_empty() {
                roles.insert(role.to_string());
            }
        } else if k == "kubernetes.io/role" {
            if let Some(v) = v.as_str().filter(|v| !v.is_empty()) {
                roles.insert(v.to_string());
            }
        }
    }
    let roles = roles.into_iter().collect::<Vec<_>>().join(",");
    or(&roles, "<none>").to_string()
}

fn node_address(obj: &Value, kind: &str) -> String {
    arr_at(obj, "status.addresses")
        .iter()
        .find(|a| str_at(a, "type") == kind)
        .map_or("<none>", |a| str_at(a, "address"))
        .to_string()
}

fn node_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    // Only the Ready condition feeds STATUS; the last one of that type wins, as in Go's map.
    let ready = arr_at(obj, "status.conditions")
        .iter()
        .rfind(|c| str_at(c, "type") == "Ready");
    let mut status = vec![match ready {
        Some(c) if str_at(c, "status") == "True" => "Ready",
        Some(_) => "NotReady",
        None => "Unknown",
    }];
    if bool_at(obj, "spec.unschedulable") {
        status.push("SchedulingDisabled");
    }
    let info = |field: &str| {
        or(
            str_at(obj, &format!("status.nodeInfo.{field}")),
            "<unknown>",
        )
    };
    vec![
        name(obj).into(),
        status.join(",").into(),
        node_roles(obj).into(),
        age(obj, now),
        str_at(obj, "status.nodeInfo.kubeletVersion").into(),
        node_address(obj, "InternalIP").into(),
        node_address(obj, "ExternalIP").into(),
        info("osImage").into(),
        info("kernelVersion").into(),
        info("containerRuntimeVersion").into(),
    ]
}

fn pv_columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::new("Capacity", "string", d::PV_SPEC_CAPACITY),
        Column::new("Access Modes", "string", d::PV_SPEC_ACCESS_MODES),
        Column::new("Reclaim Policy", "string", d::PV_SPEC_RECLAIM),
        Column::new("Status", "string", d::PV_STATUS_PHASE),
        Column::new("Claim", "string", d::PV_SPEC_CLAIM_REF),
        Column::new("StorageClass", "string", "StorageClass of the pv"),
        Column::new(
            "VolumeAttributesClass",
            "string",
            "VolumeAttributesClass of the pv",
        ),
        Column::new("Reason", "string", d::PV_STATUS_REASON),
        Column::age(),
        Column::wide("VolumeMode", "string", d::PV_SPEC_VOLUME_MODE),
    ]
}

/// The beta storage-class annotation still wins over `storageClassName`, as in
/// `helper.GetPersistentVolumeClass`.
fn storage_class<'a>(obj: &'a Value, class_name: Option<&'a str>) -> &'a str {
    map_at(obj, "metadata.annotations")
        .and_then(|a| a.get("volume.beta.kubernetes.io/storage-class"))
        .and_then(Value::as_str)
        .or(class_name)
        .unwrap_or("")
}

fn pv_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let claim = match at(obj, "spec.claimRef") {
        Some(c) => format!("{}/{}", str_at(c, "namespace"), str_at(c, "name")),
        None => String::new(),
    };
    let phase = if deleting(obj) {
        "Terminating"
    } else {
        // The PV controller's first state; the API server creates PVs Pending.
        or(str_at(obj, "status.phase"), "Pending")
    };
    vec![
        name(obj).into(),
        canonical_opt(at(obj, "spec.capacity.storage")).into(),
        access_modes(arr_at(obj, "spec.accessModes")).into(),
        or(str_at(obj, "spec.persistentVolumeReclaimPolicy"), "Retain").into(),
        phase.into(),
        claim.into(),
        storage_class(obj, opt_str(obj, "spec.storageClassName")).into(),
        opt_str(obj, "spec.volumeAttributesClassName")
            .unwrap_or("<unset>")
            .into(),
        str_at(obj, "status.reason").into(),
        age(obj, now),
        or(str_at(obj, "spec.volumeMode"), "Filesystem").into(),
    ]
}

fn pvc_columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::new("Status", "string", d::PVC_STATUS_PHASE),
        Column::new("Volume", "string", d::PVC_SPEC_VOLUME_NAME),
        Column::new("Capacity", "string", d::PVC_STATUS_CAPACITY),
        Column::new("Access Modes", "string", d::PVC_STATUS_ACCESS_MODES),
        Column::new("StorageClass", "string", "StorageClass of the pvc"),
        Column::new(
            "VolumeAttributesClass",
            "string",
            "VolumeAttributesClass of the pvc",
        ),
        Column::age(),
        Column::wide("VolumeMode", "string", d::PVC_SPEC_VOLUME_MODE),
    ]
}

fn pvc_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let phase = if deleting(obj) {
        "Terminating"
    } else {
        // Claims are created Pending.
        or(str_at(obj, "status.phase"), "Pending")
    };
    let volume = str_at(obj, "spec.volumeName");
    // Capacity and access modes are only shown once the claim is bound to a volume.
    let (capacity, modes) = if volume.is_empty() {
        (String::new(), String::new())
    } else {
        (
            canonical_opt(at(obj, "status.capacity.storage")),
            access_modes(arr_at(obj, "status.accessModes")),
        )
    };
    vec![
        name(obj).into(),
        phase.into(),
        volume.into(),
        capacity.into(),
        modes.into(),
        storage_class(obj, opt_str(obj, "spec.storageClassName")).into(),
        opt_str(obj, "spec.volumeAttributesClassName")
            .unwrap_or("<unset>")
            .into(),
        age(obj, now),
        or(str_at(obj, "spec.volumeMode"), "Filesystem").into(),
    ]
}

fn quota_columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::new(
            "Request",
            "string",
            "Request represents a minimum amount of cpu/memory that a container may consume.",
        ),
        Column::new(
            "Limit",
            "string",
            "Limits control the maximum amount of cpu/memory that a container may use independent of contention on the node.",
        ),
        Column::age(),
    ]
}

fn quota_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let mut hard: Vec<(&String, &Value)> =
        map_at(obj, "status.hard").into_iter().flatten().collect();
    hard.sort_by(|a, b| a.0.cmp(b.0));
    let used = map_at(obj, "status.used");
    let (mut requests, mut limits) = (Vec::new(), Vec::new());
    for (resource, hard_qty) in hard {
        let used_qty = canonical_opt(used.and_then(|u| u.get(resource)));
        let text = format!("{resource}: {used_qty}/{}", canonical_opt(Some(hard_qty)));
        // `limits.*` resources go to LIMIT, everything else (pods, requests.cpu, ...) to REQUEST.
        let mut pieces = resource.split('.');
        if pieces.next() == Some("limits") && pieces.next().is_some() {
            limits.push(text);
        } else {
            requests.push(text);
        }
    }
    vec![
        name(obj).into(),
        requests.join(", ").into(),
        limits.join(", ").into(),
        age(obj, now),
    ]
}

fn rc_columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::new("Desired", "integer", d::RC_SPEC_REPLICAS),
        Column::new("Current", "integer", d::RC_STATUS_REPLICAS),
        Column::new("Ready", "integer", d::RC_STATUS_READY),
        Column::age(),
        Column::wide(
            "Containers",
            "string",
            "Names of each container in the template.",
        ),
        Column::wide(
            "Images",
            "string",
            "Images referenced by each container in the template.",
        ),
        Column::wide("Selector", "string", d::RC_SPEC_SELECTOR),
    ]
}

fn rc_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let (names, images) = container_cells(arr_at(obj, "spec.template.spec.containers"));
    vec![
        name(obj).into(),
        opt_i64(obj, "spec.replicas").unwrap_or(1).into(),
        i64_at(obj, "status.replicas").into(),
        i64_at(obj, "status.readyReplicas").into(),
        age(obj, now),
        names.into(),
        images.into(),
        format_labels(map_at(obj, "spec.selector")).into(),
    ]
}

fn pod_template_columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::new(
            "Containers",
            "string",
            "Names of each container in the template.",
        ),
        Column::new(
            "Images",
            "string",
            "Images referenced by each container in the template.",
        ),
        Column::new("Pod Labels", "string", "The labels for the pod template."),
    ]
}

fn pod_template_cells(obj: &Value, _now: DateTime<Utc>) -> Vec<Value> {
    let (names, images) = container_cells(arr_at(obj, "template.spec.containers"));
    vec![
        name(obj).into(),
        names.into(),
        images.into(),
        format_labels(map_at(obj, "template.metadata.labels")).into(),
    ]
}

fn component_status_columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::new("Status", "string", "Status of the component conditions"),
        Column::new("Message", "string", "Message of the component conditions"),
        Column::new("Error", "string", "Error of the component conditions"),
    ]
}

fn component_status_cells(obj: &Value, _now: DateTime<Utc>) -> Vec<Value> {
    let healthy = arr_at(obj, "conditions")
        .iter()
        .find(|c| str_at(c, "type") == "Healthy");
    let (status, message, error) = match healthy {
        Some(c) => (
            if str_at(c, "status") == "True" {
                "Healthy"
            } else {
                "Unhealthy"
            },
            str_at(c, "message"),
            str_at(c, "error"),
        ),
        None => ("Unknown", "", ""),
    };
    vec![
        name(obj).into(),
        status.into(),
        message.into(),
        error.into(),
    ]
}
