//! The HorizontalPodAutoscaler printer, with `formatHPAMetrics` for the TARGETS column
//! ("cpu: 42%/80%, memory: 120Mi/500Mi + 1 more...").

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::age::since;
use super::descriptions as d;
use super::fields::{arr_at, at, created, i64_at, name, opt_i64, str_at};
use super::quantity::canonical;
use super::{Column, KindPrinter};

pub(super) fn printer(kind: &str) -> Option<KindPrinter> {
    match kind {
        "HorizontalPodAutoscaler" => Some(KindPrinter::new(columns, cells)),
        _ => None,
    }
}

fn columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::new("Reference", "string", d::HPA_SPEC_TARGET_REF),
        Column::new("Targets", "string", d::HPA_SPEC_METRICS),
        Column::new("MinPods", "string", d::HPA_SPEC_MIN),
        Column::new("MaxPods", "string", d::HPA_SPEC_MAX),
        Column::new("Replicas", "string", d::HPA_STATUS_CURRENT),
        Column::age(),
    ]
}

/// A `*resource.Quantity`'s `String()`: Go prints "<nil>" for a nil pointer.
fn qty(v: Option<&Value>) -> String {
    v.map_or_else(|| "<nil>".to_string(), canonical)
}

/// The spec and status metric lists. autoscaling/v1 objects only carry a CPU utilisation
/// percentage, which the server converts into one Resource metric.
fn metrics(obj: &Value) -> (Vec<Value>, Vec<Value>) {
    if at(obj, "spec.metrics").is_some() || at(obj, "spec.targetCPUUtilizationPercentage").is_none()
    {
        return (
            arr_at(obj, "spec.metrics").to_vec(),
            arr_at(obj, "status.currentMetrics").to_vec(),
        );
    }
    let target = i64_at(obj, "spec.targetCPUUtilizationPercentage");
    let specs = vec![json!({
        "type": "Resource",
        "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": target}}
    })];
    let statuses = match opt_i64(obj, "status.currentCPUUtilizationPercentage") {
        Some(current) => vec![json!({
            "type": "Resource",
            "resource": {"name": "cpu", "current": {"averageUtilization": current}}
        })],
        None => Vec::new(),
    };
    (specs, statuses)
}

/// One metric's "current/target" text; `status` is the status entry at the same index.
fn format_metric(spec: &Value, status: Option<&Value>) -> String {
    // The status side only counts when it carries the same source type.
    let current = |source: &str| status.and_then(|s| at(s, source));
    match str_at(spec, "type") {
        source_type @ ("External" | "Object") => {
            let source = if source_type == "External" {
                "external"
            } else {
                "object"
            };
            let target = at(spec, &format!("{source}.target"));
            if let Some(avg) = target.and_then(|t| at(t, "averageValue")) {
                let cur = current(source)
                    .and_then(|s| at(s, "current.averageValue"))
                    .map_or_else(|| "<unknown>".to_string(), canonical);
                format!("{cur}/{} (avg)", canonical(avg))
            } else {
                let cur = current(source)
                    .map_or_else(|| "<unknown>".to_string(), |s| qty(at(s, "current.value")));
                format!("{cur}/{}", qty(target.and_then(|t| at(t, "value"))))
            }
        }
        "Pods" => {
            let cur = current("pods").map_or_else(
                || "<unknown>".to_string(),
                |s| qty(at(s, "current.averageValue")),
            );
            format!("{cur}/{}", qty(at(spec, "pods.target.averageValue")))
        }
        source_type @ ("Resource" | "ContainerResource") => {
            let source = if source_type == "Resource" {
                "resource"
            } else {
                "containerResource"
            };
            let resource = str_at(spec, &format!("{source}.name"));
            let target = at(spec, &format!("{source}.target"));
            if let Some(avg) = target.and_then(|t| at(t, "averageValue")) {
                let cur = current(source).map_or_else(
                    || "<unknown>".to_string(),
                    |s| qty(at(s, "current.averageValue")),
                );
                format!("{resource}: {cur}/{}", canonical(avg))
            } else {
                let cur = current(source)
                    .and_then(|s| opt_i64(s, "current.averageUtilization"))
                    .map_or_else(|| "<unknown>".to_string(), |p| format!("{p}%"));
                let want = target
                    .and_then(|t| opt_i64(t, "averageUtilization"))
                    .map_or_else(|| "<auto>".to_string(), |p| format!("{p}%"));
                format!("{resource}: {cur}/{want}")
            }
        }
        _ => "<unknown type>".to_string(),
    }
}

/// `formatHPAMetrics`: the first two metrics, then "+ N more...".
fn format_metrics(specs: &[Value], statuses: &[Value]) -> String {
    const MAX: usize = 2;
    if specs.is_empty() {
        return "<none>".to_string();
    }
    let list: Vec<String> = specs
        .iter()
        .enumerate()
        .take(MAX)
        .map(|(i, spec)| format_metric(spec, statuses.get(i)))
        .collect();
    let ret = list.join(", ");
    if specs.len() > MAX {
        format!("{ret} + {} more...", specs.len() - MAX)
    } else {
        ret
    }
}

fn cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let reference = format!(
        "{}/{}",
        str_at(obj, "spec.scaleTargetRef.kind"),
        str_at(obj, "spec.scaleTargetRef.name")
    );
    let (specs, statuses) = metrics(obj);
    // minReplicas defaults to 1; the cell is a string ("<unset>" when absent in Go).
    let min = opt_i64(obj, "spec.minReplicas").unwrap_or(1).to_string();
    vec![
        name(obj).into(),
        reference.into(),
        format_metrics(&specs, &statuses).into(),
        min.into(),
        i64_at(obj, "spec.maxReplicas").into(),
        i64_at(obj, "status.currentReplicas").into(),
        since(Some(created(obj)), now).into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_kinds() {
        let specs = vec![
            json!({"type": "Resource", "resource": {"name": "cpu",
                   "target": {"type": "Utilization", "averageUtilization": 80}}}),
            json!({"type": "Resource", "resource": {"name": "memory",
                   "target": {"type": "AverageValue", "averageValue": "500Mi"}}}),
            json!({"type": "Pods", "pods": {"metric": {"name": "rps"},
                   "target": {"type": "AverageValue", "averageValue": "1k"}}}),
        ];
        let statuses = vec![
            json!({"type": "Resource", "resource": {"name": "cpu",
                   "current": {"averageUtilization": 42, "averageValue": "210m"}}}),
            json!({"type": "Resource", "resource": {"name": "memory",
                   "current": {"averageValue": "125829120"}}}),
        ];
        assert_eq!(
            format_metrics(&specs, &statuses),
            // Controllers write raw byte counts, so the current value is not abbreviated.
            "cpu: 42%/80%, memory: 125829120/500Mi + 1 more..."
        );
        assert_eq!(format_metric(&specs[2], None), "<unknown>/1k");
        assert_eq!(format_metrics(&specs[..1], &[]), "cpu: <unknown>/80%");
        assert_eq!(format_metrics(&[], &[]), "<none>");
        let external = json!({"type": "External", "external": {"metric": {"name": "queue"},
            "target": {"type": "AverageValue", "averageValue": "30"}}});
        let external_status = json!({"type": "External", "external": {
            "current": {"averageValue": "12"}}});
        assert_eq!(
            format_metric(&external, Some(&external_status)),
            "12/30 (avg)"
        );
        let object =
            json!({"type": "Object", "object": {"target": {"type": "Value", "value": "2"}}});
        assert_eq!(format_metric(&object, None), "<unknown>/2");
    }
}
