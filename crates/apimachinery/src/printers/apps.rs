//! Printers for `apps` kinds: Deployment, ReplicaSet, StatefulSet, DaemonSet and
//! ControllerRevision.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::age::since;
use super::descriptions as d;
use super::fields::{arr_at, at, bool_at, created, i64_at, map_at, name, opt_i64, str_at};
use super::format::{container_cells, format_label_selector, format_labels, selector_string};
use super::{Column, KindPrinter};

pub(super) fn printer(kind: &str) -> Option<KindPrinter> {
    Some(match kind {
        "Deployment" => KindPrinter::new(deployment_columns, deployment_cells),
        "ReplicaSet" => KindPrinter::new(replica_set_columns, replica_set_cells),
        "StatefulSet" => KindPrinter::new(stateful_set_columns, stateful_set_cells),
        "DaemonSet" => KindPrinter::new(daemon_set_columns, daemon_set_cells),
        "ControllerRevision" => {
            KindPrinter::new(controller_revision_columns, controller_revision_cells)
        }
        _ => return None,
    })
}

fn age(obj: &Value, now: DateTime<Utc>) -> Value {
    since(Some(created(obj)), now).into()
}

/// `spec.replicas`, which the API server defaults to 1.
fn desired(obj: &Value) -> i64 {
    opt_i64(obj, "spec.replicas").unwrap_or(1)
}

fn containers(obj: &Value) -> (String, String) {
    container_cells(arr_at(obj, "spec.template.spec.containers"))
}

fn containers_column() -> Column {
    Column::wide(
        "Containers",
        "string",
        "Names of each container in the template.",
    )
}

fn images_column() -> Column {
    Column::wide(
        "Images",
        "string",
        "Images referenced by each container in the template.",
    )
}

fn deployment_columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::new("Ready", "string", "Number of the pod with ready state"),
        Column::new("Up-to-date", "string", d::DEPLOY_STATUS_UPDATED),
        Column::new("Available", "string", d::DEPLOY_STATUS_AVAILABLE),
        Column::age(),
        containers_column(),
        images_column(),
        Column::wide("Selector", "string", d::DEPLOY_SPEC_SELECTOR),
    ]
}

fn deployment_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let (names, images) = containers(obj);
    // Unlike most printers this one uses the raw selector string: empty, not "<none>".
    let selector =
        selector_string(at(obj, "spec.selector")).unwrap_or_else(|()| "<invalid>".into());
    vec![
        name(obj).into(),
        format!("{}/{}", i64_at(obj, "status.readyReplicas"), desired(obj)).into(),
        i64_at(obj, "status.updatedReplicas").into(),
        i64_at(obj, "status.availableReplicas").into(),
        age(obj, now),
        names.into(),
        images.into(),
        selector.into(),
    ]
}

fn replica_set_columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::new("Desired", "integer", d::RS_SPEC_REPLICAS),
        Column::new("Current", "integer", d::RS_STATUS_REPLICAS),
        Column::new("Ready", "integer", d::RS_STATUS_READY),
        Column::age(),
        containers_column(),
        images_column(),
        Column::wide("Selector", "string", d::RS_SPEC_SELECTOR),
    ]
}

fn replica_set_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let (names, images) = containers(obj);
    vec![
        name(obj).into(),
        desired(obj).into(),
        i64_at(obj, "status.replicas").into(),
        i64_at(obj, "status.readyReplicas").into(),
        age(obj, now),
        names.into(),
        images.into(),
        format_label_selector(at(obj, "spec.selector")).into(),
    ]
}

fn stateful_set_columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::new("Ready", "string", "Number of the pod with ready state"),
        Column::age(),
        containers_column(),
        images_column(),
    ]
}

fn stateful_set_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let (names, images) = containers(obj);
    vec![
        name(obj).into(),
        format!("{}/{}", i64_at(obj, "status.readyReplicas"), desired(obj)).into(),
        age(obj, now),
        names.into(),
        images.into(),
    ]
}

fn daemon_set_columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::new("Desired", "integer", d::DS_STATUS_DESIRED),
        Column::new("Current", "integer", d::DS_STATUS_CURRENT),
        Column::new("Ready", "integer", d::DS_STATUS_READY),
        Column::new("Up-to-date", "integer", d::DS_STATUS_UPDATED),
        Column::new("Available", "integer", d::DS_STATUS_AVAILABLE),
        Column::new("Node Selector", "string", d::POD_SPEC_NODE_SELECTOR),
        Column::age(),
        containers_column(),
        images_column(),
        Column::wide("Selector", "string", d::DS_SPEC_SELECTOR),
    ]
}

fn daemon_set_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let (names, images) = containers(obj);
    vec![
        name(obj).into(),
        i64_at(obj, "status.desiredNumberScheduled").into(),
        i64_at(obj, "status.currentNumberScheduled").into(),
        i64_at(obj, "status.numberReady").into(),
        i64_at(obj, "status.updatedNumberScheduled").into(),
        i64_at(obj, "status.numberAvailable").into(),
        format_labels(map_at(obj, "spec.template.spec.nodeSelector")).into(),
        age(obj, now),
        names.into(),
        images.into(),
        format_label_selector(at(obj, "spec.selector")).into(),
    ]
}

fn controller_revision_columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::new("Controller", "string", "Controller of the object"),
        Column::new("Revision", "string", d::CR_REVISION),
        Column::age(),
    ]
}

/// `kind.group/name` of the owner with `controller: true` (`formatResourceName`), or `<none>`.
fn controller_of(obj: &Value) -> String {
    let Some(owner) = arr_at(obj, "metadata.ownerReferences")
        .iter()
        .find(|o| bool_at(o, "controller"))
    else {
        return "<none>".to_string();
    };
    let api_version = str_at(owner, "apiVersion");
    let group = match api_version.split_once('/') {
        Some((group, _)) => group,
        None => "",
    };
    let kind = str_at(owner, "kind");
    let group_kind = if group.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{group}")
    };
    let owner_name = str_at(owner, "name");
    if group_kind.is_empty() {
        owner_name.to_string()
    } else {
        format!("{}/{owner_name}", group_kind.to_lowercase())
    }
}

fn controller_revision_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    vec![
        name(obj).into(),
        controller_of(obj).into(),
        i64_at(obj, "revision").into(),
        age(obj, now),
    ]
}
