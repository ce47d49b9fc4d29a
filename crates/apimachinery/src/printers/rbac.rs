//! Printers for `rbac.authorization.k8s.io` bindings: ROLE and AGE, with USERS, GROUPS and
//! SERVICEACCOUNTS in wide output. Role and ClusterRole have no printer of their own in
//! Kubernetes and fall back to NAME / CREATED AT.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::age::since;
use super::descriptions as d;
use super::fields::{arr_at, created, name, str_at};
use super::{Column, KindPrinter};

pub(super) fn printer(kind: &str) -> Option<KindPrinter> {
    match kind {
        "RoleBinding" => Some(KindPrinter::new(role_binding_columns, cells)),
        "ClusterRoleBinding" => Some(KindPrinter::new(cluster_role_binding_columns, cells)),
        _ => None,
    }
}

fn binding_columns(role_ref: &str, what: &str) -> Vec<Column> {
    vec![
        Column::name(),
        Column::new("Role", "string", role_ref),
        Column::age(),
        Column::wide("Users", "string", &format!("Users in the {what}")),
        Column::wide("Groups", "string", &format!("Groups in the {what}")),
        Column::wide(
            "ServiceAccounts",
            "string",
            &format!("ServiceAccounts in the {what}"),
        ),
    ]
}

fn role_binding_columns() -> Vec<Column> {
    binding_columns(d::RB_ROLE_REF, "roleBinding")
}

fn cluster_role_binding_columns() -> Vec<Column> {
    binding_columns(d::CRB_ROLE_REF, "clusterRoleBinding")
}

/// `rbac.SubjectsStrings`: users, groups and `namespace/name` service accounts, each joined
/// with ", ". Subjects of other kinds are not shown.
fn subjects(obj: &Value) -> [String; 3] {
    let (mut users, mut groups, mut sas) = (Vec::new(), Vec::new(), Vec::new());
    for s in arr_at(obj, "subjects") {
        let subject_name = str_at(s, "name");
        match str_at(s, "kind") {
            "ServiceAccount" => sas.push(format!("{}/{subject_name}", str_at(s, "namespace"))),
            "User" => users.push(subject_name.to_string()),
            "Group" => groups.push(subject_name.to_string()),
            _ => {}
        }
    }
    [users.join(", "), groups.join(", "), sas.join(", ")]
}

fn cells(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let role = format!(
        "{}/{}",
        str_at(obj, "roleRef.kind"),
        str_at(obj, "roleRef.name")
    );
    let [users, groups, sas] = subjects(obj);
    vec![
        name(obj).into(),
        role.into(),
        since(Some(created(obj)), now).into(),
        users.into(),
        groups.into(),
        sas.into(),
    ]
}
