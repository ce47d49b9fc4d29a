//! `batch` kinds: Job and CronJob.

use serde_json::json;

use super::{cells, headers, wide_headers};

#[test]
fn job_complete() {
    assert_eq!(
        headers("batch", "Job"),
        ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"]
    );
    assert_eq!(
        wide_headers("batch", "Job"),
        ["CONTAINERS", "IMAGES", "SELECTOR"]
    );
    let job = json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "pi", "creationTimestamp": "2024-05-10T11:00:00Z"},
        "spec": {"completions": 1, "parallelism": 1,
                 "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "8c5e"}},
                 "template": {"spec": {"restartPolicy": "Never",
                              "containers": [{"name": "pi", "image": "perl:5.34"}]}}},
        "status": {"startTime": "2024-05-10T11:00:01Z", "completionTime": "2024-05-10T11:00:35Z",
                   "succeeded": 1,
                   "conditions": [{"type": "SuccessCriteriaMet", "status": "True"},
                                  {"type": "Complete", "status": "True"}]}});
    assert_eq!(
        cells("batch", "Job", &job),
        [
            json!("pi"),
            json!("Complete"),
            json!("1/1"),
            json!("34s"),
            json!("60m"),
            json!("pi"),
            json!("perl:5.34"),
            json!("batch.kubernetes.io/controller-uid=8c5e"),
        ]
    );
}

#[test]
fn job_states() {
    let running = json!({"metadata": {"name": "work"},
        "spec": {"parallelism": 4, "template": {"spec": {"containers": []}}},
        "status": {"startTime": "2024-05-10T11:57:00Z", "active": 4, "succeeded": 0}});
    let c = cells("batch", "Job", &running);
    assert_eq!(
        &c[1..4],
        &[json!("Running"), json!("0/1 of 4"), json!("3m")]
    );

    let failed = json!({"metadata": {"name": "bad"},
        "spec": {"completions": 3},
        "status": {"startTime": "2024-05-10T10:00:00Z", "succeeded": 1, "failed": 6,
                   "conditions": [{"type": "FailureTarget", "status": "True"},
                                  {"type": "Failed", "status": "True"}]}});
    assert_eq!(
        cells("batch", "Job", &failed)[1..3],
        [json!("Failed"), json!("1/3")]
    );

    let suspended = json!({"metadata": {"name": "held"}, "spec": {"suspend": true},
        "status": {"conditions": [{"type": "Suspended", "status": "True"}]}});
    let c = cells("batch", "Job", &suspended);
    assert_eq!(&c[1..4], &[json!("Suspended"), json!("0/1"), json!("")]);

    let mut deleting = suspended.clone();
    deleting["metadata"]["deletionTimestamp"] = json!("2024-05-10T11:59:00Z");
    assert_eq!(cells("batch", "Job", &deleting)[1], json!("Terminating"));

    let failing = json!({"metadata": {"name": "f"},
        "status": {"conditions": [{"type": "FailureTarget", "status": "True"}]}});
    assert_eq!(cells("batch", "Job", &failing)[1], json!("FailureTarget"));
}

#[test]
fn cron_job() {
    assert_eq!(
        headers("batch", "CronJob"),
        [
            "NAME",
            "SCHEDULE",
            "TIMEZONE",
            "SUSPEND",
            "ACTIVE",
            "LAST SCHEDULE",
            "AGE"
        ]
    );
    let cj = json!({"apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": "backup", "creationTimestamp": "2024-04-10T12:00:00Z"},
        "spec": {"schedule": "*/15 * * * *", "suspend": false, "concurrencyPolicy": "Forbid",
                 "jobTemplate": {"spec": {"template": {"spec": {
                     "containers": [{"name": "backup", "image": "restic/restic:0.17"}]}}}}},
        "status": {"active": [{"kind": "Job", "name": "backup-28590000"}],
                   "lastScheduleTime": "2024-05-10T11:45:00Z"}});
    assert_eq!(
        cells("batch", "CronJob", &cj),
        [
            json!("backup"),
            json!("*/15 * * * *"),
            json!("<none>"),
            json!("False"),
            json!(1),
            json!("15m"),
            json!("30d"),
            json!("backup"),
            json!("restic/restic:0.17"),
            json!("<none>"),
        ]
    );
    let tz = json!({"metadata": {"name": "nightly"},
        "spec": {"schedule": "0 3 * * *", "timeZone": "Europe/Berlin", "suspend": true}});
    let c = cells("batch", "CronJob", &tz);
    assert_eq!(
        &c[2..6],
        &[
            json!("Europe/Berlin"),
            json!("True"),
            json!(0),
            json!("<none>")
        ]
    );
}
