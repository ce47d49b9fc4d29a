//! Server-side printing: the `meta.k8s.io/v1` `Table` that `kubectl get` asks for.
//!
//! Column definitions and cell values follow the Kubernetes 1.32/1.33 API server:
//! `pkg/printers/internalversion/printers.go` for built-in kinds, the apiextensions table
//! convertor for custom resources, and the generic NAME / CREATED AT convertor for everything
//! else (Role, ClusterRole, LimitRange, CustomResourceDefinition, ...). The server always
//! generates the wide (`-o wide`) cells; `kubectl` hides columns with priority > 0 unless asked.
//!
//! Cells are typed as the real server sends them: a Go `int64` cell is a JSON number even when
//! its column says "string" (e.g. Deployment UP-TO-DATE), and a Go string is a JSON string even
//! under an "integer" or "boolean" column (e.g. CronJob SUSPEND).
//!
//! Objects are read as JSON, so a field that is absent reads as Go's zero value. Where the real
//! API server always fills a field in through defaulting (a Service's type, a Deployment's
//! replicas, ...), the printers fall back to that default so an object corral stored without
//! defaulting still prints the way a real cluster would show it.

mod age;
mod apps;
mod autoscaling;
mod batch;
mod cluster;
mod core;
mod crd;
mod descriptions;
mod event;
mod fields;
mod format;
mod jsonpath;
mod networking;
mod pod;
mod quantity;
mod rbac;
mod storage;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};

pub use age::{human_age, human_duration};
pub use crd::{crd_columns, crd_row_cells};
pub use jsonpath::{EvalError, JsonPath, ParseError};

use descriptions as d;

/// One column of a `Table` (`meta.k8s.io/v1` `TableColumnDefinition`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Human-readable header, e.g. "Name" or "Nominated Node" (kubectl upper-cases it).
    pub name: String,
    /// OpenAPI type: "string", "integer", "number", "boolean" or "date".
    pub type_: String,
    /// OpenAPI format: "name" for the column holding the object's name, otherwise usually "".
    pub format: String,
    /// What the column shows.
    pub description: String,
    /// 0 for default columns, 1 for those shown only with `-o wide`.
    pub priority: i32,
}

impl Column {
    /// A default-priority column.
    pub fn new(name: &str, type_: &str, description: &str) -> Self {
        Column {
            name: name.to_string(),
            type_: type_.to_string(),
            format: String::new(),
            description: description.to_string(),
            priority: 0,
        }
    }

    /// A column shown only with `-o wide` (priority 1).
    pub fn wide(name: &str, type_: &str, description: &str) -> Self {
        Column {
            priority: 1,
            ..Column::new(name, type_, description)
        }
    }

    /// The standard NAME column (`format: name`).
    pub fn name() -> Self {
        Column {
            format: "name".to_string(),
            ..Column::new("Name", "string", d::META_NAME)
        }
    }

    /// The standard AGE column (a string such as "5d", built from `creationTimestamp`).
    pub fn age() -> Self {
        Column::new("Age", "string", d::META_CREATION)
    }

    /// The `TableColumnDefinition` JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "type": self.type_,
            "format": self.format,
            "description": self.description,
            "priority": self.priority,
        })
    }
}

/// How one kind prints: its columns and the cells of one object.
#[derive(Clone, Copy)]
pub(crate) struct KindPrinter {
    pub columns: fn() -> Vec<Column>,
    pub cells: fn(&Value, DateTime<Utc>) -> Vec<Value>,
    /// Row conditions (only Pods have them: a finished Pod's row is marked Completed).
    pub conditions: Option<fn(&Value) -> Option<Value>>,
}

impl KindPrinter {
    pub const fn new(
        columns: fn() -> Vec<Column>,
        cells: fn(&Value, DateTime<Utc>) -> Vec<Value>,
    ) -> Self {
        KindPrinter {
            columns,
            cells,
            conditions: None,
        }
    }
}

/// The printer registered for a group and kind; `None` means the generic NAME / CREATED AT table.
fn printer_for(group: &str, kind: &str) -> Option<KindPrinter> {
    match group {
        "" => match kind {
            "Pod" => Some(pod::PRINTER),
            "Event" => Some(event::PRINTER),
            _ => core::printer(kind),
        },
        "events.k8s.io" if kind == "Event" => Some(event::PRINTER),
        // extensions/v1beta1 is long gone, but its kinds print like their successors.
        "apps" => apps::printer(kind),
        "extensions" => match kind {
            "Deployment" | "ReplicaSet" | "DaemonSet" => apps::printer(kind),
            "Ingress" | "NetworkPolicy" => networking::printer(kind),
            _ => None,
        },
        "batch" => batch::printer(kind),
        "networking.k8s.io" | "discovery.k8s.io" => networking::printer(kind),
        "autoscaling" => autoscaling::printer(kind),
        "rbac.authorization.k8s.io" => rbac::printer(kind),
        "storage.k8s.io" => storage::printer(kind),
        _ => cluster::printer(group, kind),
    }
}

/// Column definitions for a kind, identified by API group and kind (`("apps", "Deployment")`,
/// `("", "Pod")`). Kinds without a dedicated printer get NAME and CREATED AT.
pub fn columns_for(group: &str, kind: &str) -> Vec<Column> {
    match printer_for(group, kind) {
        Some(p) => (p.columns)(),
        None => default_columns(),
    }
}

/// One row's cells for an object, in the order of [`columns_for`], including the wide columns.
/// `now` is the current time, used for ages.
pub fn row_cells(group: &str, kind: &str, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    match printer_for(group, kind) {
        Some(p) => (p.cells)(obj, now),
        None => default_cells(obj),
    }
}

/// The row's `conditions`, when the kind sets any: a Pod in phase Succeeded or Failed is marked
/// `Completed` (clients may render such rows less prominently).
pub fn row_conditions(group: &str, kind: &str, obj: &Value) -> Option<Value> {
    let conditions = printer_for(group, kind)?.conditions?;
    conditions(obj)
}

/// The generic table's columns: NAME and CREATED AT (an RFC 3339 date).
pub fn default_columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::new("Created At", "date", d::META_CREATION),
    ]
}

/// The generic table's cells: the name and the creation time in UTC, to the second.
pub fn default_cells(obj: &Value) -> Vec<Value> {
    let created = fields::created(obj);
    let created = match age::parse_time(created) {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Secs, true),
        // Go formats its zero time when the object has no creation timestamp.
        None if created.is_empty() => "0001-01-01T00:00:00Z".to_string(),
        None => created.to_string(),
    };
    vec![Value::from(fields::name(obj)), Value::from(created)]
}

/// One row of a [`table_with_conditions`]: the cells, optional row conditions (see
/// [`row_conditions`]) and the object as the client asked for it (full, `PartialObjectMetadata`,
/// or `null` for `includeObject=None`).
#[derive(Debug, Clone, PartialEq)]
pub struct TableRow {
    pub cells: Vec<Value>,
    pub conditions: Option<Value>,
    pub object: Value,
}

/// The whole `meta.k8s.io/v1` `Table` for a list of rows, each given as its cells and its
/// (already reduced) object.
pub fn table(
    columns: &[Column],
    rows: Vec<(Vec<Value>, Value)>,
    resource_version: &str,
    continue_token: Option<&str>,
) -> Value {
    let rows = rows
        .into_iter()
        .map(|(cells, object)| TableRow {
            cells,
            conditions: None,
            object,
        })
        .collect();
    table_with_conditions(columns, rows, resource_version, continue_token)
}

/// Like [`table`], with row conditions.
pub fn table_with_conditions(
    columns: &[Column],
    rows: Vec<TableRow>,
    resource_version: &str,
    continue_token: Option<&str>,
) -> Value {
    // ListMeta fields are `omitempty` in Go.
    let mut metadata = Map::new();
    if !resource_version.is_empty() {
        metadata.insert("resourceVersion".into(), resource_version.into());
    }
    if let Some(c) = continue_token.filter(|c| !c.is_empty()) {
        metadata.insert("continue".into(), c.into());
    }
    let rows: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            let mut row = Map::new();
            row.insert("cells".into(), Value::Array(r.cells));
            if let Some(c) = r.conditions.filter(|c| !c.is_null()) {
                row.insert("conditions".into(), c);
            }
            row.insert("object".into(), r.object);
            Value::Object(row)
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": columns.iter().map(Column::to_json).collect::<Vec<_>>(),
        "rows": rows,
    })
}

#[cfg(test)]
mod tests;
