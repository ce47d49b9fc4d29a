//! Printers for cluster-control kinds: Lease, PodDisruptionBudget, PriorityClass, RuntimeClass,
//! CertificateSigningRequest, admission webhook and policy configurations, and API priority and
//! fairness (FlowSchema, PriorityLevelConfiguration).

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;

use super::age::{human_duration, since};
use super::descriptions as d;
use super::fields::{arr_at, at, bool_at, created, i64_at, map_at, name, opt_i64, opt_str, str_at};
use super::format::int_or_string;
use super::{Column, KindPrinter};

pub(super) fn printer(group: &str, kind: &str) -> Option<KindPrinter> {
    Some(match (group, kind) {
        ("coordination.k8s.io", "Lease") => KindPrinter::new(lease_columns, lease_cells),
        ("policy", "PodDisruptionBudget") => KindPrinter::new(pdb_columns, pdb_cells),
        ("scheduling.k8s.io", "PriorityClass") => {
            KindPrinter::new(priority_class_columns, priority_class_cells)
        }
        ("node.k8s.io", "RuntimeClass") => {
            KindPrinter::new(runtime_class_columns, runtime_class_cells)
        }
        ("certificates.k8s.io", "CertificateSigningRequest") => {
            KindPrinter::new(csr_columns, csr_cells)
        }
        (
            "admissionregistration.k8s.io",
            "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration",
        ) => KindPrinter::new(webhook_columns, webhook_cells),
        ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy") => {
            KindPrinter::new(validating_policy_columns, validating_policy_cells)
        }
        ("admissionregistration.k8s.io", "MutatingAdmissionPolicy") => {
            KindPrinter::new(mutating_policy_columns, mutating_policy_cells)
        }
        (
            "admissionregistration.k8s.io",
            "ValidatingAdmissionPolicyBinding" | "MutatingAdmissionPolicyBinding",
        ) => KindPrinter::new(policy_binding_columns, policy_binding_cells),
        ("flowcontrol.apiserver.k8s.io", "FlowSchema") => {
            KindPrinter::new(flow_schema_columns, flow_schema_cells)
        }
        ("flowcontrol.apiserver.k8s.io", "PriorityLevelConfiguration") => {
            KindPrinter::new(priority_level_columns, priority_level_cells)
        }
        _ => return None,
    })
}

fn age(obj: &Value, now: DateTime<Utc>) -> Value {
    since(Some(created(obj)), now).into()
}

fn lease_columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::new("Holder", "string", d::LEASE_HOLDER),
        Column::age(),
    ]
}

fn lease_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    vec![
        name(obj).into(),
        str_at(obj, "spec.holderIdentity").into(),
        age(obj, now),
    ]
}

fn pdb_columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::new(
            "Min Available",
            "string",
            "The minimum number of pods that must be available.",
        ),
        Column::new(
            "Max Unavailable",
            "string",
            "The maximum number of pods that may be unavailable.",
        ),
        Column::new(
            "Allowed Disruptions",
            "integer",
            "Calculated number of pods that may be disrupted at this time.",
        ),
        Column::age(),
    ]
}

fn pdb_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let bound = |path: &str| at(obj, path).map_or_else(|| "N/A".to_string(), int_or_string);
    vec![
        name(obj).into(),
        bound("spec.minAvailable").into(),
        bound("spec.maxUnavailable").into(),
        i64_at(obj, "status.disruptionsAllowed").into(),
        age(obj, now),
    ]
}

fn priority_class_columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::new("Value", "integer", d::PC_VALUE),
        Column::new("Global-Default", "boolean", d::PC_GLOBAL_DEFAULT),
        Column::age(),
        Column::new("PreemptionPolicy", "string", d::PC_PREEMPTION),
    ]
}

fn priority_class_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    vec![
        name(obj).into(),
        i64_at(obj, "value").into(),
        bool_at(obj, "globalDefault").into(),
        age(obj, now),
        // preemptionPolicy defaults to PreemptLowerPriority.
        opt_str(obj, "preemptionPolicy")
            .unwrap_or("PreemptLowerPriority")
            .into(),
    ]
}

fn runtime_class_columns() -> Vec<Column> {
    vec![
        Column::name(),
        // Kubernetes looks this description up on ObjectMeta, where it does not exist.
        Column::new("Handler", "string", ""),
        Column::age(),
    ]
}

fn runtime_class_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    vec![
        name(obj).into(),
        str_at(obj, "handler").into(),
        age(obj, now),
    ]
}

fn csr_columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::age(),
        Column::new("SignerName", "string", d::CSR_SIGNER),
        Column::new("Requestor", "string", d::CSR_REQUEST),
        Column::new("RequestedDuration", "string", d::CSR_EXPIRATION),
        Column::new("Condition", "string", d::CSR_CONDITIONS),
    ]
}

/// `extractCSRStatus`: Denied, Approved or Pending, then ",Failed" and ",Issued".
fn csr_status(obj: &Value) -> String {
    let has = |t: &str| {
        arr_at(obj, "status.conditions")
            .iter()
            .any(|c| str_at(c, "type") == t)
    };
    let mut status = if has("Denied") {
        "Denied".to_string()
    } else if has("Approved") {
        "Approved".to_string()
    } else {
        "Pending".to_string()
    };
    if has("Failed") {
        status.push_str(",Failed");
    }
    if !str_at(obj, "status.certificate").is_empty() {
        status.push_str(",Issued");
    }
    status
}

fn csr_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let requested = opt_i64(obj, "spec.expirationSeconds").map_or_else(
        || "<none>".to_string(),
        |s| human_duration(TimeDelta::seconds(s)),
    );
    let signer = opt_str(obj, "spec.signerName").filter(|s| !s.is_empty());
    vec![
        name(obj).into(),
        age(obj, now),
        signer.unwrap_or("<none>").into(),
        str_at(obj, "spec.username").into(),
        requested.into(),
        csr_status(obj).into(),
    ]
}

fn webhook_columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::new(
            "Webhooks",
            "integer",
            "Webhooks indicates the number of webhooks registered in this configuration",
        ),
        Column::age(),
    ]
}

fn webhook_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let webhooks = arr_at(obj, "webhooks").len() as i64;
    vec![name(obj).into(), webhooks.into(), age(obj, now)]
}

fn param_kind_column() -> Column {
    Column::new(
        "ParamKind",
        "string",
        "ParamKind specifies the kind of resources used to parameterize this policy",
    )
}

fn validating_policy_columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::new(
            "Validations",
            "integer",
            "Validations indicates the number of validation rules defined in this configuration",
        ),
        param_kind_column(),
        Column::age(),
    ]
}

fn mutating_policy_columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::new(
            "Mutations",
            "integer",
            "Mutation indicates the number of mutations rules defined in this configuration",
        ),
        param_kind_column(),
        Column::age(),
    ]
}

fn policy_cells(obj: &Value, rules: &str, now: DateTime<Utc>) -> Vec<Value> {
    let param_kind = match at(obj, "spec.paramKind") {
        Some(p) => format!("{}/{}", str_at(p, "apiVersion"), str_at(p, "kind")),
        None => "<unset>".to_string(),
    };
    vec![
        name(obj).into(),
        (arr_at(obj, rules).len() as i64).into(),
        param_kind.into(),
        age(obj, now),
    ]
}

fn validating_policy_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    policy_cells(obj, "spec.validations", now)
}

fn mutating_policy_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    policy_cells(obj, "spec.mutations", now)
}

fn policy_binding_columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::new(
            "PolicyName",
            "string",
            "PolicyName indicates the policy definition which the policy binding binded to",
        ),
        Column::new(
            "ParamRef",
            "string",
            "ParamRef indicates the param resource which sets the configration param",
        ),
        Column::age(),
    ]
}

/// Go's generated `LabelSelector.String()` (the protobuf debug form), which is what the binding
/// printer shows for a selector-based paramRef.
fn label_selector_debug(sel: &Value) -> String {
    let mut labels: Vec<(&String, &Value)> =
        map_at(sel, "matchLabels").into_iter().flatten().collect();
    labels.sort_by(|a, b| a.0.cmp(b.0));
    let labels: String = labels
        .iter()
        .map(|(k, v)| format!("{k}: {},", v.as_str().unwrap_or("")))
        .collect();
    let exprs: String = arr_at(sel, "matchExpressions")
        .iter()
        .map(|e| {
            let values: Vec<&str> = arr_at(e, "values")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            format!(
                "LabelSelectorRequirement{{Key:{},Operator:{},Values:[{}],}},",
                str_at(e, "key"),
                str_at(e, "operator"),
                values.join(" ")
            )
        })
        .collect();
    format!(
        "&LabelSelector{{MatchLabels:map[string]string{{{labels}}},MatchExpressions:[]LabelSelectorRequirement{{{exprs}}},}}"
    )
}

fn policy_binding_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let param = match at(obj, "spec.paramRef") {
        Some(p) if !str_at(p, "name").is_empty() => match str_at(p, "namespace") {
            // Without a namespace the param may be cluster-scoped or in any namespace.
            "" => format!("*/{}", str_at(p, "name")),
            ns => format!("{ns}/{}", str_at(p, "name")),
        },
        Some(p) => match at(p, "selector") {
            Some(sel) => label_selector_debug(sel),
            None => "<unset>".to_string(),
        },
        None => "<unset>".to_string(),
    };
    vec![
        name(obj).into(),
        str_at(obj, "spec.policyName").into(),
        param.into(),
        age(obj, now),
    ]
}

fn flow_schema_columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::new("PriorityLevel", "string", d::FS_PL_NAME),
        Column::new("MatchingPrecedence", "string", d::FS_PRECEDENCE),
        Column::new("DistinguisherMethod", "string", d::FS_DISTINGUISHER),
        Column::age(),
        Column::new(
            "MissingPL",
            "string",
            "references a broken or non-existent PriorityLevelConfiguration",
        ),
    ]
}

fn flow_schema_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let distinguisher = match at(obj, "spec.distinguisherMethod") {
        Some(m) => str_at(m, "type").to_string(),
        None => "<none>".to_string(),
    };
    let missing = arr_at(obj, "status.conditions")
        .iter()
        .find(|c| str_at(c, "type") == "Dangling")
        .map_or("?", |c| str_at(c, "status"));
    vec![
        name(obj).into(),
        str_at(obj, "spec.priorityLevelConfiguration.name").into(),
        i64_at(obj, "spec.matchingPrecedence").into(),
        distinguisher.into(),
        age(obj, now),
        missing.into(),
    ]
}

fn priority_level_columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::new("Type", "string", d::PLC_TYPE),
        Column::new("NominalConcurrencyShares", "string", d::PLC_NCS),
        Column::new("Queues", "string", d::PLC_QUEUES),
        Column::new("HandSize", "string", d::PLC_HAND_SIZE),
        Column::new("QueueLengthLimit", "string", d::PLC_QUEUE_LENGTH),
        Column::age(),
    ]
}

fn priority_level_cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let none = || Value::from("<none>");
    let (mut ncs, mut queues, mut hand_size, mut queue_length) = (none(), none(), none(), none());
    if let Some(limited) = at(obj, "spec.limited") {
        // nominalConcurrencyShares defaults to 30.
        ncs = opt_i64(limited, "nominalConcurrencyShares")
            .unwrap_or(30)
            .into();
        if let Some(q) = at(limited, "limitResponse.queuing") {
            queues = i64_at(q, "queues").into();
            hand_size = i64_at(q, "handSize").into();
            queue_length = i64_at(q, "queueLengthLimit").into();
        }
    }
    vec![
        name(obj).into(),
        str_at(obj, "spec.type").into(),
        ncs,
        queues,
        hand_size,
        queue_length,
        age(obj, now),
    ]
}
