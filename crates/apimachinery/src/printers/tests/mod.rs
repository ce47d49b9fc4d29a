//! Printer tests through the public API: realistic objects in, the cells `kubectl get` shows out.

mod apps;
mod batch;
mod cluster;
mod core;
mod crd;
mod event;
mod networking;
mod table;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::*;

/// The fixed "current time" all tests print at.
fn now() -> DateTime<Utc> {
    age::parse_time("2024-05-10T12:00:00Z").unwrap()
}

/// The cells for an object, checked to line up with the kind's columns.
fn cells(group: &str, kind: &str, obj: &Value) -> Vec<Value> {
    let cells = row_cells(group, kind, obj, now());
    assert_eq!(
        cells.len(),
        columns_for(group, kind).len(),
        "{group}/{kind}: one cell per column"
    );
    cells
}

/// Column headers as `kubectl get` would show them (upper-cased), default columns only.
fn headers(group: &str, kind: &str) -> Vec<String> {
    columns_for(group, kind)
        .iter()
        .filter(|c| c.priority == 0)
        .map(|c| c.name.to_uppercase())
        .collect()
}

/// Headers of the `-o wide` columns.
fn wide_headers(group: &str, kind: &str) -> Vec<String> {
    columns_for(group, kind)
        .iter()
        .filter(|c| c.priority == 1)
        .map(|c| c.name.to_uppercase())
        .collect()
}
