//! Printers for `storage.k8s.io` kinds: StorageClass, CSIDriver, CSINode and VolumeAttachment.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::age::since;
use super::descriptions as d;
use super::fields::{arr_at, at, bool_at, created, map_at, name, opt_str, or, str_at};
use super::{Column, KindPrinter};

pub(super) fn printer(kind: &str) -> Option<KindPrinter> {
    Some(match kind {
        "StorageClass" => KindPrinter::new(storage_class_columns, storage_class_cells),
        "CSIDriver" => KindPrinter::new(csi_driver_columns, csi_driver_cells),
        "CSINode" => KindPrinter::new(csi_node_columns, csi_node_cells),
        "VolumeAttachment" => KindPrinter::new(volume_attachment_columns, volume_attachment_cells),
        _ => return None,
    })
}

fn age(obj: &Value, now: DateTime<Utc>) -> Value {
    since(Some(created(obj)), now).into()
}

fn storage_class_columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::new("Provisioner", "string", d::SC_PROVISIONER),
        Column::new("ReclaimPolicy", "string", d::SC_RECLAIM),
        Column::new("VolumeBindingMode", "string", d::SC_BINDING_MODE),
        Column::new("AllowVolumeExpansion", "string", d::SC_EXPANSION),
        Column::age(),
    ]
}

/// `storageutil.IsDefaultAnnotation`: the GA or beta default-class annotation set to "true".
fn is_default_class(obj: &Value) -> bool {
    let annotations = map_at(obj, "metadata.annotations");
    [
        "storageclass.kubernetes.io/is-default-class",
        "storageclass.beta.kubernetes.io/is-default-class",
    ]
    .iter()
    .any(|k| annotations.and_then(|a| a.get(*k)).and_then(Value::as_str) == Some("true"))
}

fn storage_class_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let mut class_name = name(obj).to_string();
    if is_default_class(obj) {
        class_name.push_str(" (default)");
    }
    vec![
        class_name.into(),
        str_at(obj, "provisioner").into(),
        or(str_at(obj, "reclaimPolicy"), "Delete").into(),
        or(str_at(obj, "volumeBindingMode"), "Immediate").into(),
        bool_at(obj, "allowVolumeExpansion").into(),
        age(obj, now),
    ]
}

fn csi_driver_columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::new("AttachRequired", "boolean", d::CSI_ATTACH_REQUIRED),
        Column::new("PodInfoOnMount", "boolean", d::CSI_POD_INFO),
        Column::new("StorageCapacity", "boolean", d::CSI_STORAGE_CAPACITY),
        Column::new("TokenRequests", "string", d::CSI_TOKEN_REQUESTS),
        Column::new("RequiresRepublish", "boolean", d::CSI_REQUIRES_REPUBLISH),
        Column::new("Modes", "string", d::CSI_MODES),
        Column::age(),
    ]
}

fn csi_driver_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let token_requests = match at(obj, "spec.tokenRequests").and_then(Value::as_array) {
        Some(reqs) => reqs
            .iter()
            .map(|t| str_at(t, "audience"))
            .collect::<Vec<_>>()
            .join(","),
        None => "<unset>".to_string(),
    };
    let modes: Vec<&str> = arr_at(obj, "spec.volumeLifecycleModes")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    // volumeLifecycleModes defaults to [Persistent].
    let modes = if modes.is_empty() {
        "Persistent".to_string()
    } else {
        modes.join(",")
    };
    let attach_required = at(obj, "spec.attachRequired")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    vec![
        name(obj).into(),
        attach_required.into(),
        bool_at(obj, "spec.podInfoOnMount").into(),
        bool_at(obj, "spec.storageCapacity").into(),
        token_requests.into(),
        bool_at(obj, "spec.requiresRepublish").into(),
        modes.into(),
        age(obj, now),
    ]
}

fn csi_node_columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::new(
            "Drivers",
            "integer",
            "Drivers indicates the number of CSI drivers registered on the node",
        ),
        Column::age(),
    ]
}

fn csi_node_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let drivers = arr_at(obj, "spec.drivers").len() as i64;
    vec![name(obj).into(), drivers.into(), age(obj, now)]
}

fn volume_attachment_columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column {
            format: "name".to_string(),
            ..Column::new("Attacher", "string", d::VA_ATTACHER)
        },
        Column::new("PV", "string", d::VA_PV),
        Column::new("Node", "string", d::VA_NODE),
        Column::new("Attached", "boolean", d::VA_ATTACHED),
        Column::age(),
    ]
}

fn volume_attachment_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    vec![
        name(obj).into(),
        str_at(obj, "spec.attacher").into(),
        opt_str(obj, "spec.source.persistentVolumeName")
            .unwrap_or("")
            .into(),
        str_at(obj, "spec.nodeName").into(),
        bool_at(obj, "status.attached").into(),
        age(obj, now),
    ]
}
