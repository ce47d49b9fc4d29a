//! Events, in both the `v1` and the `events.k8s.io/v1` shape.

use serde_json::json;

use super::{cells, headers, wide_headers};

#[test]
fn core_event() {
    assert_eq!(
        headers("", "Event"),
        ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    );
    assert_eq!(
        wide_headers("", "Event"),
        ["SUBOBJECT", "SOURCE", "FIRST SEEN", "COUNT", "NAME"]
    );
    let ev = json!({"apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "web-7d4b9c8f5-x2x9k.17c9a1b2c3d4e5f6", "namespace": "default",
                     "creationTimestamp": "2024-05-10T11:40:00Z"},
        "involvedObject": {"kind": "Pod", "namespace": "default", "name": "web-7d4b9c8f5-x2x9k",
                           "fieldPath": "spec.containers{web}"},
        "reason": "BackOff", "type": "Warning",
        "message": "Back-off restarting failed container web in pod web-7d4b9c8f5-x2x9k\n",
        "source": {"component": "kubelet", "host": "node-1"},
        "firstTimestamp": "2024-05-10T11:40:00Z", "lastTimestamp": "2024-05-10T11:58:00Z",
        "count": 12});
    assert_eq!(
        cells("", "Event", &ev),
        [
            json!("2m"),
            json!("Warning"),
            json!("BackOff"),
            json!("pod/web-7d4b9c8f5-x2x9k"),
            json!("spec.containers{web}"),
            json!("kubelet, node-1"),
            json!("Back-off restarting failed container web in pod web-7d4b9c8f5-x2x9k"),
            json!("20m"),
            json!(12),
            json!("web-7d4b9c8f5-x2x9k.17c9a1b2c3d4e5f6"),
        ]
    );
}

#[test]
fn series_and_event_time() {
    // Events from the new recorder: eventTime and a series, no legacy timestamps or count.
    let ev = json!({"apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "x.1"},
        "involvedObject": {"kind": "Node", "name": "node-1"},
        "reason": "NodeNotReady", "type": "Normal", "message": "Node node-1 status is now: NodeNotReady",
        "eventTime": "2024-05-10T10:00:00.123456Z",
        "series": {"count": 4, "lastObservedTime": "2024-05-10T11:59:30.000000Z"},
        "reportingComponent": "node-controller", "reportingInstance": ""});
    let c = cells("", "Event", &ev);
    assert_eq!(c[0], json!("30s"));
    assert_eq!(c[3], json!("node/node-1"));
    assert_eq!(c[5], json!("node-controller"));
    assert_eq!(c[7], json!("119m"));
    assert_eq!(c[8], json!(4));

    let singleton = json!({"metadata": {"name": "y"}, "involvedObject": {"kind": "Namespace"},
        "eventTime": "2024-05-10T11:59:00.000000Z"});
    let c = cells("", "Event", &singleton);
    assert_eq!(
        &c[..4],
        &[json!("60s"), json!(""), json!(""), json!("namespace")]
    );
    assert_eq!(c[8], json!(1));
}

#[test]
fn events_k8s_io_event() {
    assert_eq!(headers("events.k8s.io", "Event"), headers("", "Event"));
    let ev = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": "web.17c9", "namespace": "default"},
        "eventTime": null,
        "regarding": {"kind": "Deployment", "namespace": "default", "name": "web"},
        "note": "Scaled up replica set web-7d4b9c8f5 to 3", "reason": "ScalingReplicaSet",
        "type": "Normal", "reportingController": "deployment-controller",
        "reportingInstance": "",
        "deprecatedSource": {"component": "deployment-controller"},
        "deprecatedFirstTimestamp": "2024-05-10T11:00:00Z",
        "deprecatedLastTimestamp": "2024-05-10T11:30:00Z",
        "deprecatedCount": 2});
    assert_eq!(
        cells("events.k8s.io", "Event", &ev),
        [
            json!("30m"),
            json!("Normal"),
            json!("ScalingReplicaSet"),
            json!("deployment/web"),
            json!(""),
            json!("deployment-controller"),
            json!("Scaled up replica set web-7d4b9c8f5 to 3"),
            json!("60m"),
            json!(2),
            json!("web.17c9"),
        ]
    );
}
