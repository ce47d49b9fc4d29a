//! The `Table` document and properties that hold for every registered kind.

use serde_json::{json, Value};

use super::*;

/// Every kind with a dedicated printer, as (group, kind).
const KINDS: &[(&str, &str)] = &[
    ("", "Pod"),
    ("", "PodTemplate"),
    ("", "ReplicationController"),
    ("", "Service"),
    ("", "Endpoints"),
    ("", "Node"),
    ("", "Event"),
    ("", "Namespace"),
    ("", "Secret"),
    ("", "ServiceAccount"),
    ("", "PersistentVolume"),
    ("", "PersistentVolumeClaim"),
    ("", "ComponentStatus"),
    ("", "ConfigMap"),
    ("", "ResourceQuota"),
    ("events.k8s.io", "Event"),
    ("apps", "Deployment"),
    ("apps", "ReplicaSet"),
    ("apps", "StatefulSet"),
    ("apps", "DaemonSet"),
    ("apps", "ControllerRevision"),
    ("batch", "Job"),
    ("batch", "CronJob"),
    ("networking.k8s.io", "Ingress"),
    ("networking.k8s.io", "IngressClass"),
    ("networking.k8s.io", "NetworkPolicy"),
    ("networking.k8s.io", "ServiceCIDR"),
    ("discovery.k8s.io", "EndpointSlice"),
    ("autoscaling", "HorizontalPodAutoscaler"),
    ("rbac.authorization.k8s.io", "RoleBinding"),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"),
    ("coordination.k8s.io", "Lease"),
    ("policy", "PodDisruptionBudget"),
    ("storage.k8s.io", "StorageClass"),
    ("storage.k8s.io", "CSIDriver"),
    ("storage.k8s.io", "CSINode"),
    ("storage.k8s.io", "VolumeAttachment"),
    ("scheduling.k8s.io", "PriorityClass"),
    ("node.k8s.io", "RuntimeClass"),
    ("certificates.k8s.io", "CertificateSigningRequest"),
    (
        "admissionregistration.k8s.io",
        "MutatingWebhookConfiguration",
    ),
    (
        "admissionregistration.k8s.io",
        "ValidatingWebhookConfiguration",
    ),
    ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy"),
    (
        "admissionregistration.k8s.io",
        "ValidatingAdmissionPolicyBinding",
    ),
    ("admissionregistration.k8s.io", "MutatingAdmissionPolicy"),
    (
        "admissionregistration.k8s.io",
        "MutatingAdmissionPolicyBinding",
    ),
    ("flowcontrol.apiserver.k8s.io", "FlowSchema"),
    ("flowcontrol.apiserver.k8s.io", "PriorityLevelConfiguration"),
];

#[test]
fn every_kind_prints_an_empty_object() {
    // Objects with only a name must not panic and must fill every column.
    let obj = json!({"metadata": {"name": "x"}});
    for (group, kind) in KINDS {
        let cols = columns_for(group, kind);
        assert!(cols.len() > 2, "{group}/{kind} has its own columns");
        assert_eq!(
            row_cells(group, kind, &obj, now()).len(),
            cols.len(),
            "{group}/{kind}"
        );
        // Exactly one column carries the object's name.
        assert_eq!(
            cols.iter()
                .filter(|c| c.format == "name" && c.name == "Name")
                .count(),
            1,
            "{group}/{kind}"
        );
        assert!(cols.iter().all(|c| !c.type_.is_empty()), "{group}/{kind}");
    }
    // A non-object does not panic either.
    assert_eq!(row_cells("", "Pod", &Value::Null, now()).len(), 9);
}

#[test]
fn table_document() {
    let cols = columns_for("", "ConfigMap");
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "app", "namespace": "default", "creationTimestamp": "2024-05-10T11:00:00Z"},
        "data": {"a": "1"}});
    let partial = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"name": "app", "namespace": "default"}});
    let rows = vec![(row_cells("", "ConfigMap", &cm, now()), partial.clone())];
    let t = table(&cols, rows, "12345", Some("eyJ2IjoibWV0YS5rOHMuaW8vdjEifQ"));
    assert_eq!(
        t,
        json!({
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": "12345", "continue": "eyJ2IjoibWV0YS5rOHMuaW8vdjEifQ"},
            "columnDefinitions": [
                {"name": "Name", "type": "string", "format": "name",
                 "description": descriptions::META_NAME, "priority": 0},
                {"name": "Data", "type": "string", "format": "",
                 "description": descriptions::CM_DATA, "priority": 0},
                {"name": "Age", "type": "string", "format": "",
                 "description": descriptions::META_CREATION, "priority": 0},
            ],
            "rows": [{"cells": ["app", 1, "60m"], "object": partial}],
        })
    );
    // Field order matches what the Go server writes.
    let keys: Vec<&String> = t.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "kind",
            "apiVersion",
            "metadata",
            "columnDefinitions",
            "rows"
        ]
    );

    let empty = table(&cols, Vec::new(), "", None);
    assert_eq!(empty["metadata"], json!({}));
    assert_eq!(empty["rows"], json!([]));
}

#[test]
fn pod_rows_carry_completed_conditions() {
    let done = json!({"metadata": {"name": "job-abc"}, "status": {"phase": "Succeeded"}});
    let running = json!({"metadata": {"name": "web"}, "status": {"phase": "Running"}});
    assert_eq!(row_conditions("", "ConfigMap", &done), None);
    assert_eq!(row_conditions("", "Pod", &running), None);
    let conditions = row_conditions("", "Pod", &done);
    let rows = vec![TableRow {
        cells: row_cells("", "Pod", &done, now()),
        conditions: conditions.clone(),
        object: Value::Null,
    }];
    let t = table_with_conditions(&columns_for("", "Pod"), rows, "7", None);
    assert_eq!(t["rows"][0]["conditions"], conditions.unwrap());
    assert_eq!(t["rows"][0]["conditions"][0]["type"], json!("Completed"));
    assert_eq!(t["rows"][0]["object"], Value::Null);
}

#[test]
fn human_age_is_public() {
    assert_eq!(human_age("2024-05-10T11:59:55Z", now()), "5s");
    assert_eq!(human_age("", now()), "<unknown>");
}
