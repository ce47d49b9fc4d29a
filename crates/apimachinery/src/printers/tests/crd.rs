//! Custom resources printed from a CRD's `additionalPrinterColumns`.

use serde_json::{json, Value};

use super::{crd_columns, crd_row_cells, now};

/// Printer columns in the style of a typical operator's CRD (cert-manager's Certificate).
fn certificate_columns() -> Value {
    json!([
        {"name": "Ready", "type": "string",
         "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
        {"name": "Secret", "type": "string", "jsonPath": ".spec.secretName"},
        {"name": "Issuer", "type": "string", "jsonPath": ".spec.issuerRef.name", "priority": 1},
        {"name": "Status", "type": "string", "priority": 1,
         "jsonPath": ".status.conditions[?(@.type==\"Ready\")].message"},
        {"name": "Renewals", "type": "integer", "jsonPath": ".status.renewals"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp",
         "description": "CreationTimestamp is a timestamp representing the server time"}
    ])
}

fn certificate() -> Value {
    json!({"apiVersion": "cert-manager.io/v1", "kind": "Certificate",
        "metadata": {"name": "shop-tls", "namespace": "shop", "creationTimestamp": "2024-04-25T12:00:00Z"},
        "spec": {"secretName": "shop-tls", "dnsNames": ["shop.example.com"],
                 "issuerRef": {"name": "letsencrypt", "kind": "ClusterIssuer"}},
        "status": {"renewals": 2.0, "conditions": [
            {"type": "Issuing", "status": "False"},
            {"type": "Ready", "status": "True", "message": "Certificate is up to date and has not expired"}]}})
}

#[test]
fn columns_from_printer_columns() {
    let cols = crd_columns(&certificate_columns());
    let names: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["Name", "Ready", "Secret", "Issuer", "Status", "Renewals", "Age"]
    );
    assert_eq!(cols[0].format, "name");
    assert_eq!(cols[3].priority, 1);
    assert_eq!(cols[5].type_, "integer");
    assert_eq!(
        cols[1].description,
        "Custom resource definition column (in JSONPath format): .status.conditions[?(@.type==\"Ready\")].status"
    );
    assert_eq!(
        cols[6].description,
        "CreationTimestamp is a timestamp representing the server time"
    );
}

#[test]
fn cells_from_json_paths() {
    assert_eq!(
        crd_row_cells(&certificate_columns(), &certificate(), now()),
        [
            json!("shop-tls"),
            json!("True"),
            json!("shop-tls"),
            json!("letsencrypt"),
            json!("Certificate is up to date and has not expired"),
            json!(2),
            json!("15d"),
        ]
    );
    // Before the controller has reported anything, status cells are empty (null).
    let mut fresh = certificate();
    fresh.as_object_mut().unwrap().remove("status");
    let c = crd_row_cells(&certificate_columns(), &fresh, now());
    assert_eq!(c[1], Value::Null);
    assert_eq!(c[5], Value::Null);
}

#[test]
fn no_declared_columns_means_age_only() {
    let cols = crd_columns(&json!([]));
    let names: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["Name", "Age"]);
    assert_eq!(cols[1].type_, "date");
    assert_eq!(crd_columns(&Value::Null).len(), 2);
    let widget = json!({"metadata": {"name": "w1", "creationTimestamp": "2024-05-10T11:59:15Z"}});
    assert_eq!(
        crd_row_cells(&Value::Null, &widget, now()),
        [json!("w1"), json!("45s")]
    );
}

#[test]
fn declared_columns_without_age_get_no_age() {
    // The real server appends AGE only when a CRD declares no columns at all.
    let apc = json!([{"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"}]);
    let names: Vec<String> = crd_columns(&apc).into_iter().map(|c| c.name).collect();
    assert_eq!(names, ["Name", "Replicas"]);
}

#[test]
fn typed_cells() {
    let apc = json!([
        {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
        {"name": "Ratio", "type": "number", "jsonPath": ".spec.ratio"},
        {"name": "Whole", "type": "number", "jsonPath": ".spec.replicas"},
        {"name": "Paused", "type": "boolean", "jsonPath": ".spec.paused"},
        {"name": "Replicas Text", "type": "string", "jsonPath": ".spec.replicas"},
        {"name": "Selector", "type": "string", "jsonPath": ".spec.selector"},
        {"name": "First Node", "type": "string", "jsonPath": ".status.nodes[0]"},
        {"name": "Last Node", "type": "string", "jsonPath": ".status.nodes[-1]"},
        {"name": "Missing Node", "type": "string", "jsonPath": ".status.nodes[9]"},
        {"name": "Wrong Type", "type": "integer", "jsonPath": ".spec.paused"},
        {"name": "Last Backup", "type": "date", "jsonPath": ".status.lastBackup"},
        {"name": "Bad Date", "type": "date", "jsonPath": ".status.badDate"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    ]);
    let db = json!({"metadata": {"name": "pg"},
        "spec": {"replicas": 3, "ratio": 0.75, "paused": true,
                 "selector": {"matchLabels": {"app": "pg"}}},
        "status": {"nodes": ["pg-0", "pg-1"], "lastBackup": "2024-05-10T09:00:00Z",
                   "badDate": "yesterday", "phase": null}});
    assert_eq!(
        crd_row_cells(&apc, &db, now()),
        [
            json!("pg"),
            json!(3),
            json!(0.75),
            json!(3),
            json!(true),
            json!("3"),
            json!(r#"{"matchLabels":{"app":"pg"}}"#),
            json!("pg-0"),
            json!("pg-1"),
            Value::Null,
            Value::Null,
            json!("3h"),
            json!("<invalid>"),
            json!("<no value>"),
        ]
    );
}
