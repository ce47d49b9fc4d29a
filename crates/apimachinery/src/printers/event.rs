//! The Event printer, shared by `v1` and `events.k8s.io/v1` Events: the real server stores both
//! as one internal type, so both print LAST SEEN / TYPE / REASON / OBJECT / MESSAGE alike.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::age::{parse_time, since};
use super::descriptions as d;
use super::fields::{at, i64_at, name, str_at};
use super::{Column, KindPrinter};

pub(super) const PRINTER: KindPrinter = KindPrinter::new(columns, cells);

fn columns() -> Vec<Column> {
    vec![
        Column::new("Last Seen", "string", d::EVENT_LAST_TIMESTAMP),
        Column::new("Type", "string", d::EVENT_TYPE),
        Column::new("Reason", "string", d::EVENT_REASON),
        Column::new("Object", "string", d::EVENT_INVOLVED_OBJECT),
        Column::wide("Subobject", "string", d::OBJREF_FIELD_PATH),
        Column::wide("Source", "string", d::EVENT_SOURCE),
        Column::new("Message", "string", d::EVENT_MESSAGE),
        Column::wide("First Seen", "string", d::EVENT_FIRST_TIMESTAMP),
        Column::wide("Count", "string", d::EVENT_COUNT),
        Column {
            format: "name".to_string(),
            ..Column::wide("Name", "string", d::META_NAME)
        },
    ]
}

/// The fields the printer needs, under their internal (`core.Event`) meaning.
struct EventView<'a> {
    involved: Option<&'a Value>,
    message: &'a str,
    first: &'a str,
    last: &'a str,
    count: i64,
    source_component: &'a str,
    source_host: &'a str,
    reporting_controller: &'a str,
    reporting_instance: &'a str,
}

/// `events.k8s.io/v1` renamed most fields (regarding, note, deprecated*); `v1` keeps the
/// originals. Whichever form the object is in, read it the way the internal type sees it.
fn view(obj: &Value) -> EventView<'_> {
    let new_api = str_at(obj, "apiVersion").starts_with("events.k8s.io/")
        || at(obj, "regarding").is_some()
        || at(obj, "note").is_some();
    if new_api {
        EventView {
            involved: at(obj, "regarding"),
            message: str_at(obj, "note"),
            first: str_at(obj, "deprecatedFirstTimestamp"),
            last: str_at(obj, "deprecatedLastTimestamp"),
            count: i64_at(obj, "deprecatedCount"),
            source_component: str_at(obj, "deprecatedSource.component"),
            source_host: str_at(obj, "deprecatedSource.host"),
            reporting_controller: str_at(obj, "reportingController"),
            reporting_instance: str_at(obj, "reportingInstance"),
        }
    } else {
        EventView {
            involved: at(obj, "involvedObject"),
            message: str_at(obj, "message"),
            first: str_at(obj, "firstTimestamp"),
            last: str_at(obj, "lastTimestamp"),
            count: i64_at(obj, "count"),
            source_component: str_at(obj, "source.component"),
            source_host: str_at(obj, "source.host"),
            // v1 serialises the internal ReportingController as reportingComponent.
            reporting_controller: str_at(obj, "reportingComponent"),
            reporting_instance: str_at(obj, "reportingInstance"),
        }
    }
}

/// `formatEventSource`: "component, host", falling back to the reporting controller/instance.
fn source(v: &EventView) -> String {
    let component = if v.source_component.is_empty() {
        v.reporting_controller
    } else {
        v.source_component
    };
    let instance = if v.source_host.is_empty() {
        v.reporting_instance
    } else {
        v.source_host
    };
    if instance.is_empty() {
        component.to_string()
    } else {
        format!("{component}, {instance}")
    }
}

fn cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let v = view(obj);
    let first = if parse_time(v.first).is_some() {
        since(Some(v.first), now)
    } else {
        // New-style events only carry eventTime (a MicroTime).
        since(at(obj, "eventTime").and_then(Value::as_str), now)
    };
    let mut last = if parse_time(v.last).is_some() {
        since(Some(v.last), now)
    } else {
        first.clone()
    };
    let mut count = v.count;
    if let Some(series) = at(obj, "series") {
        last = since(at(series, "lastObservedTime").and_then(Value::as_str), now);
        count = i64_at(series, "count");
    } else if count == 0 {
        // Singleton events don't have a count set in the new API.
        count = 1;
    }
    let (kind, involved_name, field_path) = match v.involved {
        Some(o) => (str_at(o, "kind"), str_at(o, "name"), str_at(o, "fieldPath")),
        None => ("", "", ""),
    };
    let target = if involved_name.is_empty() {
        kind.to_lowercase()
    } else {
        format!("{}/{involved_name}", kind.to_lowercase())
    };
    vec![
        last.into(),
        str_at(obj, "type").into(),
        str_at(obj, "reason").into(),
        target.into(),
        field_path.into(),
        source(&v).into(),
        v.message.trim().into(),
        first.into(),
        count.into(),
        name(obj).into(),
    ]
}
