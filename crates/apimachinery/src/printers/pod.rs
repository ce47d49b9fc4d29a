//! The Pod printer: READY, the aggregate STATUS (init progress, waiting reasons, Terminating,
//! Completed, ...) and RESTARTS with the time of the last restart, as `printPod` computes them.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::age::{human_duration, parse_time, since};
use super::descriptions as d;
use super::fields::{arr_at, at, bool_at, created, deleting, has, i64_at, name, or, str_at};
use super::format::condition_true;
use super::{Column, KindPrinter};

pub(super) const PRINTER: KindPrinter = KindPrinter {
    columns,
    cells,
    conditions: Some(conditions),
};

fn columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::new(
            "Ready",
            "string",
            "The aggregate readiness state of this pod for accepting traffic.",
        ),
        Column::new(
            "Status",
            "string",
            "The aggregate status of the containers in this pod.",
        ),
        Column::new(
            "Restarts",
            "string",
            "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
        ),
        Column::age(),
        Column::wide("IP", "string", d::POD_STATUS_POD_IP),
        Column::wide("Node", "string", d::POD_SPEC_NODE_NAME),
        Column::wide("Nominated Node", "string", d::POD_STATUS_NOMINATED_NODE),
        Column::wide("Readiness Gates", "string", d::POD_SPEC_READINESS_GATES),
    ]
}

/// A sidecar: an init container with `restartPolicy: Always` keeps running beside the app
/// containers and counts towards READY.
fn is_restartable(init_specs: &[Value], container_name: &str) -> bool {
    init_specs
        .iter()
        .find(|c| str_at(c, "name") == container_name)
        .is_some_and(|c| str_at(c, "restartPolicy") == "Always")
}

/// The later of two optional restart times (`lastState.terminated.finishedAt`).
fn later(current: Option<DateTime<Utc>>, status: &Value) -> Option<DateTime<Utc>> {
    let finished =
        at(status, "lastState.terminated").and_then(|t| parse_time(str_at(t, "finishedAt")));
    match (current, finished) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// "Signal:9" or "ExitCode:137" for a terminated container that gave no reason.
fn exit_text(terminated: &Value) -> String {
    let signal = i64_at(terminated, "signal");
    if signal != 0 {
        format!("Signal:{signal}")
    } else {
        format!("ExitCode:{}", i64_at(terminated, "exitCode"))
    }
}

fn cells(pod: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let init_specs = arr_at(pod, "spec.initContainers");
    let conditions = arr_at(pod, "status.conditions");
    let total = arr_at(pod, "spec.containers").len()
        + init_specs
            .iter()
            .filter(|c| str_at(c, "restartPolicy") == "Always")
            .count();
    let mut ready = 0;
    let mut restarts = 0;
    let mut sidecar_restarts = 0;
    let mut last_restart = None;
    let mut last_sidecar_restart = None;

    // The API server sets phase Pending when it admits a Pod.
    let phase = or(str_at(pod, "status.phase"), "Pending");
    let mut reason = or(str_at(pod, "status.reason"), phase).to_string();
    if conditions
        .iter()
        .any(|c| str_at(c, "type") == "PodScheduled" && str_at(c, "reason") == "SchedulingGated")
    {
        reason = "SchedulingGated".to_string();
    }

    let mut initializing = false;
    for (i, status) in arr_at(pod, "status.initContainerStatuses")
        .iter()
        .enumerate()
    {
        let count = i64_at(status, "restartCount");
        restarts += count;
        last_restart = later(last_restart, status);
        let sidecar = is_restartable(init_specs, str_at(status, "name"));
        if sidecar {
            sidecar_restarts += count;
            last_sidecar_restart = later(last_sidecar_restart, status);
        }
        let terminated = at(status, "state.terminated");
        let waiting_reason = str_at(status, "state.waiting.reason");
        if terminated.is_some_and(|t| i64_at(t, "exitCode") == 0) {
            continue;
        }
        if sidecar && bool_at(status, "started") {
            if bool_at(status, "ready") {
                ready += 1;
            }
            continue;
        }
        reason = if let Some(t) = terminated {
            match str_at(t, "reason") {
                "" => format!("Init:{}", exit_text(t)),
                r => format!("Init:{r}"),
            }
        } else if !waiting_reason.is_empty() && waiting_reason != "PodInitializing" {
            format!("Init:{waiting_reason}")
        } else {
            format!("Init:{i}/{}", init_specs.len())
        };
        initializing = true;
        break;
    }

    if !initializing || condition_true(conditions, "Initialized") {
        // Init containers that ran to completion no longer count; sidecars still do.
        restarts = sidecar_restarts;
        last_restart = last_sidecar_restart;
        let mut has_running = false;
        // Walk backwards so the first container with something to report wins.
        for status in arr_at(pod, "status.containerStatuses").iter().rev() {
            restarts += i64_at(status, "restartCount");
            last_restart = later(last_restart, status);
            let waiting_reason = str_at(status, "state.waiting.reason");
            let terminated = at(status, "state.terminated");
            if !waiting_reason.is_empty() {
                reason = waiting_reason.to_string();
            } else if let Some(t) = terminated {
                reason = match str_at(t, "reason") {
                    "" => exit_text(t),
                    r => r.to_string(),
                };
            } else if bool_at(status, "ready") && has(status, "state.running") {
                has_running = true;
                ready += 1;
            }
        }
        // A container exited "Completed" while others still run: the pod as a whole is up.
        if reason == "Completed" && has_running {
            reason = if condition_true(conditions, "Ready") {
                "Running".to_string()
            } else {
                "NotReady".to_string()
            };
        }
    }

    if deleting(pod) && str_at(pod, "status.reason") == "NodeLost" {
        reason = "Unknown".to_string();
    } else if deleting(pod) && phase != "Failed" && phase != "Succeeded" {
        reason = "Terminating".to_string();
    }

    let restarts = match last_restart {
        Some(t) if restarts != 0 => format!("{restarts} ({} ago)", human_duration(now - t)),
        _ => restarts.to_string(),
    };
    // podIPs wins over the legacy podIP, as in the v1 -> internal conversion.
    let ip = arr_at(pod, "status.podIPs")
        .first()
        .map(|p| str_at(p, "ip"))
        .unwrap_or_else(|| str_at(pod, "status.podIP"));
    let gates = arr_at(pod, "spec.readinessGates");
    let readiness_gates = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let passing = gates
            .iter()
            .filter(|g| condition_true(conditions, str_at(g, "conditionType")))
            .count();
        format!("{passing}/{}", gates.len())
    };
    vec![
        name(pod).into(),
        format!("{ready}/{total}").into(),
        reason.into(),
        restarts.into(),
        since(Some(created(pod)), now).into(),
        or(ip, "<none>").into(),
        or(str_at(pod, "spec.nodeName"), "<none>").into(),
        or(str_at(pod, "status.nominatedNodeName"), "<none>").into(),
        readiness_gates.into(),
    ]
}

fn conditions(pod: &Value) -> Option<Value> {
    let (reason, message) = match str_at(pod, "status.phase") {
        "Succeeded" => ("Succeeded", "The pod has completed successfully."),
        "Failed" => ("Failed", "The pod failed."),
        _ => return None,
    };
    Some(json!([{
        "type": "Completed",
        "status": "True",
        "reason": reason,
        "message": message,
    }]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::printers::age::parse_time;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        parse_time("2024-05-10T12:00:00Z").unwrap()
    }

    fn pod(spec: Value, status: Value) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web-7d4b9c8f5-x2x9k", "namespace": "default",
                          "creationTimestamp": "2024-05-09T12:00:00Z"},
            "spec": spec,
            "status": status,
        })
    }

    fn one_container() -> Value {
        json!({"containers": [{"name": "web", "image": "nginx:1.27"}], "nodeName": "node-1"})
    }

    /// READY, STATUS and RESTARTS.
    fn summary(p: &Value) -> (String, String, String) {
        let c = cells(p, now());
        (
            c[1].as_str().unwrap().to_string(),
            c[2].as_str().unwrap().to_string(),
            c[3].as_str().unwrap().to_string(),
        )
    }

    fn s(a: &str, b: &str, c: &str) -> (String, String, String) {
        (a.to_string(), b.to_string(), c.to_string())
    }

    #[test]
    fn running_pod_full_row() {
        let p = pod(
            one_container(),
            json!({
                "phase": "Running",
                "podIP": "10.244.1.7",
                "podIPs": [{"ip": "10.244.1.7"}, {"ip": "fd00::7"}],
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{
                    "name": "web", "ready": true, "restartCount": 0, "started": true,
                    "state": {"running": {"startedAt": "2024-05-09T12:00:05Z"}}
                }]
            }),
        );
        assert_eq!(
            cells(&p, now()),
            vec![
                json!("web-7d4b9c8f5-x2x9k"),
                json!("1/1"),
                json!("Running"),
                json!("0"),
                json!("24h"),
                json!("10.244.1.7"),
                json!("node-1"),
                json!("<none>"),
                json!("<none>"),
            ]
        );
        assert_eq!(conditions(&p), None);
    }

    #[test]
    fn crash_loop_with_last_restart_time() {
        let p = pod(
            one_container(),
            json!({
                "phase": "Running",
                "containerStatuses": [{
                    "name": "web", "ready": false, "restartCount": 5,
                    "state": {"waiting": {"reason": "CrashLoopBackOff",
                                          "message": "back-off 2m40s restarting failed container"}},
                    "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                                                 "finishedAt": "2024-05-10T11:58:00Z"}}
                }]
            }),
        );
        assert_eq!(summary(&p), s("0/1", "CrashLoopBackOff", "5 (2m ago)"));
    }

    #[test]
    fn image_pull_and_container_creating() {
        let waiting = |reason: &str| {
            pod(
                one_container(),
                json!({"phase": "Pending", "containerStatuses": [{
                    "name": "web", "ready": false, "restartCount": 0,
                    "state": {"waiting": {"reason": reason}}
                }]}),
            )
        };
        assert_eq!(
            summary(&waiting("ImagePullBackOff")),
            s("0/1", "ImagePullBackOff", "0")
        );
        assert_eq!(
            summary(&waiting("ErrImagePull")),
            s("0/1", "ErrImagePull", "0")
        );
        assert_eq!(
            summary(&waiting("ContainerCreating")),
            s("0/1", "ContainerCreating", "0")
        );
    }

    #[test]
    fn pending_without_statuses() {
        let p = pod(one_container(), json!({"phase": "Pending"}));
        assert_eq!(summary(&p), s("0/1", "Pending", "0"));
        // No status at all: the server would have set phase Pending on admission.
        let mut bare = pod(one_container(), json!({}));
        bare.as_object_mut().unwrap().remove("status");
        assert_eq!(summary(&bare), s("0/1", "Pending", "0"));
        let c = cells(&bare, now());
        assert_eq!(c[5], json!("<none>"));
    }

    fn with_init() -> Value {
        json!({
            "initContainers": [{"name": "migrate", "image": "app:1"}],
            "containers": [{"name": "app", "image": "app:1"}]
        })
    }

    #[test]
    fn init_container_progress() {
        let running_init = pod(
            with_init(),
            json!({"phase": "Pending",
                "conditions": [{"type": "Initialized", "status": "False"}],
                "initContainerStatuses": [{"name": "migrate", "ready": false, "restartCount": 0,
                    "state": {"running": {"startedAt": "2024-05-10T11:59:00Z"}}}],
                "containerStatuses": [{"name": "app", "ready": false, "restartCount": 0,
                    "state": {"waiting": {"reason": "PodInitializing"}}}]
            }),
        );
        assert_eq!(summary(&running_init), s("0/1", "Init:0/1", "0"));

        let crashing_init = pod(
            with_init(),
            json!({"phase": "Pending",
                "initContainerStatuses": [{"name": "migrate", "ready": false, "restartCount": 3,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                                                 "finishedAt": "2024-05-10T11:55:00Z"}}}],
                "containerStatuses": [{"name": "app", "ready": false, "restartCount": 0,
                    "state": {"waiting": {"reason": "PodInitializing"}}}]
            }),
        );
        assert_eq!(
            summary(&crashing_init),
            s("0/1", "Init:CrashLoopBackOff", "3 (5m ago)")
        );

        let failed_init = pod(
            with_init(),
            json!({"phase": "Pending",
                "initContainerStatuses": [{"name": "migrate", "restartCount": 0,
                    "state": {"terminated": {"exitCode": 2, "reason": "Error"}}}]}),
        );
        assert_eq!(summary(&failed_init).1, "Init:Error");

        let killed_init = pod(
            with_init(),
            json!({"phase": "Pending",
                "initContainerStatuses": [{"name": "migrate", "restartCount": 0,
                    "state": {"terminated": {"exitCode": 137, "signal": 9}}}]}),
        );
        assert_eq!(summary(&killed_init).1, "Init:Signal:9");

        let done_init = pod(
            with_init(),
            json!({"phase": "Running",
                "conditions": [{"type": "Initialized", "status": "True"},
                               {"type": "Ready", "status": "True"}],
                "initContainerStatuses": [{"name": "migrate", "restartCount": 1,
                    "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}],
                "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0,
                    "state": {"running": {}}}]}),
        );
        // Restarts of a finished init container are no longer counted.
        assert_eq!(summary(&done_init), s("1/1", "Running", "0"));
    }

    #[test]
    fn sidecar_counts_towards_ready() {
        let p = pod(
            json!({
                "initContainers": [{"name": "proxy", "image": "envoy", "restartPolicy": "Always"}],
                "containers": [{"name": "app", "image": "app:1"}]
            }),
            json!({"phase": "Running",
                "conditions": [{"type": "Initialized", "status": "True"},
                               {"type": "Ready", "status": "True"}],
                "initContainerStatuses": [{"name": "proxy", "ready": true, "started": true,
                    "restartCount": 2, "state": {"running": {}},
                    "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2024-05-10T09:00:00Z"}}}],
                "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0,
                    "state": {"running": {}}}]}),
        );
        assert_eq!(summary(&p), s("2/2", "Running", "2 (3h ago)"));
    }

    #[test]
    fn terminating_and_node_lost() {
        let mut p = pod(
            one_container(),
            json!({"phase": "Running", "containerStatuses": [{"name": "web", "ready": true,
                "restartCount": 0, "state": {"running": {}}}]}),
        );
        p["metadata"]["deletionTimestamp"] = json!("2024-05-10T11:59:30Z");
        assert_eq!(summary(&p), s("1/1", "Terminating", "0"));
        p["status"]["reason"] = json!("NodeLost");
        assert_eq!(summary(&p).1, "Unknown");
    }

    #[test]
    fn completed_job_pod() {
        let p = pod(
            one_container(),
            json!({"phase": "Succeeded", "containerStatuses": [{"name": "web", "ready": false,
                "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}),
        );
        assert_eq!(summary(&p), s("0/1", "Completed", "0"));
        assert_eq!(
            conditions(&p),
            Some(
                json!([{"type": "Completed", "status": "True", "reason": "Succeeded",
                         "message": "The pod has completed successfully."}])
            )
        );
        // Deleting a finished pod does not make it "Terminating".
        let mut deleted = p.clone();
        deleted["metadata"]["deletionTimestamp"] = json!("2024-05-10T11:59:30Z");
        assert_eq!(summary(&deleted).1, "Completed");
    }

    #[test]
    fn completed_container_beside_running_one() {
        let p = pod(
            json!({"containers": [{"name": "a"}, {"name": "b"}]}),
            json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [
                {"name": "a", "ready": false, "restartCount": 0,
                 "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
                {"name": "b", "ready": true, "restartCount": 0, "state": {"running": {}}}
            ]}),
        );
        assert_eq!(summary(&p), s("1/2", "NotReady", "0"));
    }

    #[test]
    fn exit_code_evicted_and_gated() {
        let p = pod(
            one_container(),
            json!({"phase": "Running", "containerStatuses": [{"name": "web", "ready": false,
                "restartCount": 0, "state": {"terminated": {"exitCode": 137}}}]}),
        );
        assert_eq!(summary(&p).1, "ExitCode:137");

        let evicted = pod(
            one_container(),
            json!({"phase": "Failed", "reason": "Evicted",
                   "message": "The node was low on resource: memory."}),
        );
        assert_eq!(summary(&evicted), s("0/1", "Evicted", "0"));
        assert_eq!(conditions(&evicted).unwrap()[0]["reason"], json!("Failed"));

        let gated = pod(
            one_container(),
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                "reason": "SchedulingGated"}]}),
        );
        assert_eq!(summary(&gated).1, "SchedulingGated");
    }

    #[test]
    fn wide_columns() {
        let p = pod(
            json!({"containers": [{"name": "web"}],
                   "readinessGates": [{"conditionType": "example.com/lb"},
                                      {"conditionType": "example.com/dns"}]}),
            json!({"phase": "Pending", "podIP": "10.0.0.9", "nominatedNodeName": "node-2",
                   "conditions": [{"type": "example.com/lb", "status": "True"},
                                  {"type": "example.com/dns", "status": "False"}]}),
        );
        let c = cells(&p, now());
        assert_eq!(c.len(), columns().len());
        assert_eq!(
            &c[5..],
            &[
                json!("10.0.0.9"),
                json!("<none>"),
                json!("node-2"),
                json!("1/2")
            ]
        );
    }
}
