//! Printers for `batch` kinds: Job (STATUS, COMPLETIONS, DURATION) and CronJob.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::age::{human_duration, parse_time, since};
use super::descriptions as d;
use super::fields::{arr_at, at, created, deleting, i64_at, name, opt_i64, opt_str};
use super::format::{condition_true, container_cells, format_label_selector, go_bool};
use super::{Column, KindPrinter};

pub(super) fn printer(kind: &str) -> Option<KindPrinter> {
    Some(match kind {
        "Job" => KindPrinter::new(job_columns, job_cells),
        "CronJob" => KindPrinter::new(cron_job_columns, cron_job_cells),
        _ => return None,
    })
}

fn template_columns() -> [Column; 3] {
    [
        Column::wide(
            "Containers",
            "string",
            "Names of each container in the template.",
        ),
        Column::wide(
            "Images",
            "string",
            "Images referenced by each container in the template.",
        ),
        Column::wide("Selector", "string", d::JOB_SPEC_SELECTOR),
    ]
}

fn job_columns() -> Vec<Column> {
    let mut cols = vec![
        Column::name(),
        Column::new("Status", "string", "Status of the job."),
        Column::new("Completions", "string", d::JOB_STATUS_SUCCEEDED),
        Column::new("Duration", "string", "Time required to complete the job."),
        Column::age(),
    ];
    cols.extend(template_columns());
    cols
}

/// "2/3", or for a work-queue job without `completions` "0/1" or "0/1 of 4".
fn completions(job: &Value) -> String {
    let succeeded = i64_at(job, "status.succeeded");
    if let Some(want) = opt_i64(job, "spec.completions") {
        return format!("{succeeded}/{want}");
    }
    // Parallelism defaults to 1.
    let parallelism = opt_i64(job, "spec.parallelism").unwrap_or(1);
    if parallelism > 1 {
        format!("{succeeded}/1 of {parallelism}")
    } else {
        format!("{succeeded}/1")
    }
}

/// Running time so far, or start-to-completion once finished; "" before the job starts.
fn duration(job: &Value, now: DateTime<Utc>) -> String {
    let Some(start) = opt_str(job, "status.startTime").and_then(parse_time) else {
        return String::new();
    };
    match opt_str(job, "status.completionTime").and_then(parse_time) {
        Some(end) => human_duration(end - start),
        None => human_duration(now - start),
    }
}

/// The precedence `printJob` uses: finished conditions first, then deletion, then suspension.
fn status(job: &Value) -> &'static str {
    let conditions = arr_at(job, "status.conditions");
    if condition_true(conditions, "Complete") {
        "Complete"
    } else if condition_true(conditions, "Failed") {
        "Failed"
    } else if deleting(job) {
        "Terminating"
    } else if condition_true(conditions, "Suspended") {
        "Suspended"
    } else if condition_true(conditions, "FailureTarget") {
        "FailureTarget"
    } else {
        "Running"
    }
}

fn job_cells(job: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let (names, images) = container_cells(arr_at(job, "spec.template.spec.containers"));
    vec![
        name(job).into(),
        status(job).into(),
        completions(job).into(),
        duration(job, now).into(),
        since(Some(created(job)), now).into(),
        names.into(),
        images.into(),
        format_label_selector(at(job, "spec.selector")).into(),
    ]
}

fn cron_job_columns() -> Vec<Column> {
    let mut cols = vec![
        Column::name(),
        Column::new("Schedule", "string", d::CJ_SPEC_SCHEDULE),
        Column::new("Timezone", "string", d::CJ_SPEC_TIMEZONE),
        Column::new("Suspend", "boolean", d::CJ_SPEC_SUSPEND),
        Column::new("Active", "integer", d::CJ_STATUS_ACTIVE),
        Column::new("Last Schedule", "string", d::CJ_STATUS_LAST_SCHEDULE),
        Column::age(),
    ];
    cols.extend(template_columns());
    cols
}

fn cron_job_cells(cj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let last_schedule = match opt_str(cj, "status.lastScheduleTime") {
        Some(t) => since(Some(t), now),
        None => "<none>".to_string(),
    };
    // `suspend` defaults to false; the cell is the string "True"/"False" despite the column type.
    let suspend = at(cj, "spec.suspend")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let (names, images) =
        container_cells(arr_at(cj, "spec.jobTemplate.spec.template.spec.containers"));
    vec![
        name(cj).into(),
        opt_str(cj, "spec.schedule").unwrap_or("").into(),
        opt_str(cj, "spec.timeZone").unwrap_or("<none>").into(),
        go_bool(suspend).into(),
        (arr_at(cj, "status.active").len() as i64).into(),
        last_schedule.into(),
        since(Some(created(cj)), now).into(),
        names.into(),
        images.into(),
        format_label_selector(at(cj, "spec.jobTemplate.spec.selector")).into(),
    ]
}
