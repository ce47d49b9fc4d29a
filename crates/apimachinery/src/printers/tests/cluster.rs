//! RBAC, autoscaling, coordination, policy, storage and other cluster-level kinds, plus the
//! kinds that use the generic NAME / CREATED AT table.

use serde_json::json;

use super::{cells, headers, wide_headers};

#[test]
fn role_binding_and_cluster_role_binding() {
    for kind in ["RoleBinding", "ClusterRoleBinding"] {
        assert_eq!(
            headers("rbac.authorization.k8s.io", kind),
            ["NAME", "ROLE", "AGE"]
        );
        assert_eq!(
            wide_headers("rbac.authorization.k8s.io", kind),
            ["USERS", "GROUPS", "SERVICEACCOUNTS"]
        );
    }
    let crb = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "cluster-admin", "creationTimestamp": "2024-03-01T08:00:00Z"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "system:masters"},
                     {"kind": "User", "name": "alice"}, {"kind": "User", "name": "bob"},
                     {"kind": "ServiceAccount", "namespace": "kube-system", "name": "admin"}]});
    assert_eq!(
        cells("rbac.authorization.k8s.io", "ClusterRoleBinding", &crb),
        [
            json!("cluster-admin"),
            json!("ClusterRole/cluster-admin"),
            json!("70d"),
            json!("alice, bob"),
            json!("system:masters"),
            json!("kube-system/admin"),
        ]
    );
    let rb = json!({"metadata": {"name": "read-pods", "namespace": "default"},
        "roleRef": {"kind": "Role", "name": "pod-reader"}});
    assert_eq!(
        cells("rbac.authorization.k8s.io", "RoleBinding", &rb),
        [
            json!("read-pods"),
            json!("Role/pod-reader"),
            json!("<unknown>"),
            json!(""),
            json!(""),
            json!("")
        ]
    );
}

#[test]
fn generic_table_kinds() {
    let cases = [
        ("rbac.authorization.k8s.io", "Role"),
        ("rbac.authorization.k8s.io", "ClusterRole"),
        ("apiextensions.k8s.io", "CustomResourceDefinition"),
        ("", "LimitRange"),
        ("example.com", "Widget"),
    ];
    for (group, kind) in cases {
        assert_eq!(
            headers(group, kind),
            ["NAME", "CREATED AT"],
            "{group}/{kind}"
        );
    }
    let cr = json!({"metadata": {"name": "system:controller:job-controller",
                                 "creationTimestamp": "2024-03-01T08:00:00.000Z"},
        "rules": []});
    assert_eq!(
        cells("rbac.authorization.k8s.io", "ClusterRole", &cr),
        [
            json!("system:controller:job-controller"),
            json!("2024-03-01T08:00:00Z")
        ]
    );
    let crd = json!({"metadata": {"name": "widgets.example.com"}});
    assert_eq!(
        cells("apiextensions.k8s.io", "CustomResourceDefinition", &crd),
        [json!("widgets.example.com"), json!("0001-01-01T00:00:00Z")]
    );
}

#[test]
fn horizontal_pod_autoscaler() {
    assert_eq!(
        headers("autoscaling", "HorizontalPodAutoscaler"),
        [
            "NAME",
            "REFERENCE",
            "TARGETS",
            "MINPODS",
            "MAXPODS",
            "REPLICAS",
            "AGE"
        ]
    );
    let hpa = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web", "creationTimestamp": "2024-05-09T12:00:00Z"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                 "minReplicas": 2, "maxReplicas": 10,
                 "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                              "target": {"type": "Utilization", "averageUtilization": 70}}}]},
        "status": {"currentReplicas": 3, "desiredReplicas": 3,
                   "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu",
                       "current": {"averageUtilization": 45, "averageValue": "225m"}}}]}});
    assert_eq!(
        cells("autoscaling", "HorizontalPodAutoscaler", &hpa),
        [
            json!("web"),
            json!("Deployment/web"),
            json!("cpu: 45%/70%"),
            json!("2"),
            json!(10),
            json!(3),
            json!("24h"),
        ]
    );
    // autoscaling/v1 shape: one CPU target, converted as the server does.
    let v1 = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "php"},
        "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "php-apache"},
                 "maxReplicas": 5, "targetCPUUtilizationPercentage": 50},
        "status": {"currentReplicas": 1}});
    let c = cells("autoscaling", "HorizontalPodAutoscaler", &v1);
    assert_eq!(
        &c[2..6],
        &[json!("cpu: <unknown>/50%"), json!("1"), json!(5), json!(1)]
    );
}

#[test]
fn lease() {
    assert_eq!(
        headers("coordination.k8s.io", "Lease"),
        ["NAME", "HOLDER", "AGE"]
    );
    let lease = json!({"metadata": {"name": "kube-controller-manager", "namespace": "kube-system",
                                    "creationTimestamp": "2024-05-10T11:59:58Z"},
        "spec": {"holderIdentity": "cp-1_6a4f0a9e-5b8e-4b1e-9c52-0f1e2d3c4b5a",
                 "leaseDurationSeconds": 15, "renewTime": "2024-05-10T11:59:59.000000Z"}});
    assert_eq!(
        cells("coordination.k8s.io", "Lease", &lease),
        [
            json!("kube-controller-manager"),
            json!("cp-1_6a4f0a9e-5b8e-4b1e-9c52-0f1e2d3c4b5a"),
            json!("2s")
        ]
    );
    let unheld = json!({"metadata": {"name": "free"}, "spec": {}});
    assert_eq!(cells("coordination.k8s.io", "Lease", &unheld)[1], json!(""));
}

#[test]
fn pod_disruption_budget() {
    assert_eq!(
        headers("policy", "PodDisruptionBudget"),
        [
            "NAME",
            "MIN AVAILABLE",
            "MAX UNAVAILABLE",
            "ALLOWED DISRUPTIONS",
            "AGE"
        ]
    );
    let pdb = json!({"metadata": {"name": "web-pdb", "creationTimestamp": "2024-05-10T10:00:00Z"},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}},
        "status": {"disruptionsAllowed": 1, "currentHealthy": 3, "desiredHealthy": 2,
                   "expectedPods": 3}});
    assert_eq!(
        cells("policy", "PodDisruptionBudget", &pdb),
        [
            json!("web-pdb"),
            json!("2"),
            json!("N/A"),
            json!(1),
            json!("120m")
        ]
    );
    let pct = json!({"metadata": {"name": "p"}, "spec": {"maxUnavailable": "25%"}});
    assert_eq!(
        &cells("policy", "PodDisruptionBudget", &pct)[1..4],
        &[json!("N/A"), json!("25%"), json!(0)]
    );
}

#[test]
fn storage_class() {
    assert_eq!(
        headers("storage.k8s.io", "StorageClass"),
        [
            "NAME",
            "PROVISIONER",
            "RECLAIMPOLICY",
            "VOLUMEBINDINGMODE",
            "ALLOWVOLUMEEXPANSION",
            "AGE"
        ]
    );
    let sc = json!({"metadata": {"name": "standard", "creationTimestamp": "2024-03-01T08:00:00Z",
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": "rancher.io/local-path", "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer"});
    assert_eq!(
        cells("storage.k8s.io", "StorageClass", &sc),
        [
            json!("standard (default)"),
            json!("rancher.io/local-path"),
            json!("Delete"),
            json!("WaitForFirstConsumer"),
            json!(false),
            json!("70d"),
        ]
    );
}

#[test]
fn other_cluster_kinds() {
    let pc = json!({"metadata": {"name": "system-cluster-critical"}, "value": 2000000000,
        "globalDefault": false, "preemptionPolicy": "PreemptLowerPriority"});
    assert_eq!(
        cells("scheduling.k8s.io", "PriorityClass", &pc),
        [
            json!("system-cluster-critical"),
            json!(2000000000),
            json!(false),
            json!("<unknown>"),
            json!("PreemptLowerPriority")
        ]
    );
    let csr = json!({"metadata": {"name": "csr-8xk2p", "creationTimestamp": "2024-05-10T11:50:00Z"},
        "spec": {"signerName": "kubernetes.io/kube-apiserver-client-kubelet",
                 "username": "system:node:node-1", "expirationSeconds": 86400},
        "status": {"conditions": [{"type": "Approved", "status": "True"}], "certificate": "LS0t"}});
    assert_eq!(
        cells("certificates.k8s.io", "CertificateSigningRequest", &csr),
        [
            json!("csr-8xk2p"),
            json!("10m"),
            json!("kubernetes.io/kube-apiserver-client-kubelet"),
            json!("system:node:node-1"),
            json!("24h"),
            json!("Approved,Issued")
        ]
    );
    let webhook = json!({"metadata": {"name": "cert-manager-webhook"},
        "webhooks": [{"name": "webhook.cert-manager.io"}]});
    assert_eq!(
        cells(
            "admissionregistration.k8s.io",
            "ValidatingWebhookConfiguration",
            &webhook
        )[1],
        json!(1)
    );
    let binding = json!({"metadata": {"name": "b"},
        "spec": {"policyName": "replicalimit", "paramRef": {"name": "limits"}}});
    assert_eq!(
        cells(
            "admissionregistration.k8s.io",
            "ValidatingAdmissionPolicyBinding",
            &binding
        )[1..3],
        [json!("replicalimit"), json!("*/limits")]
    );
    let plc = json!({"metadata": {"name": "workload-low"},
        "spec": {"type": "Limited", "limited": {"nominalConcurrencyShares": 100,
                 "limitResponse": {"type": "Queue", "queuing": {"queues": 128, "handSize": 6,
                                                                 "queueLengthLimit": 50}}}}});
    assert_eq!(
        cells(
            "flowcontrol.apiserver.k8s.io",
            "PriorityLevelConfiguration",
            &plc
        )[1..6],
        [
            json!("Limited"),
            json!(100),
            json!(128),
            json!(6),
            json!(50)
        ]
    );
    let exempt = json!({"metadata": {"name": "exempt"}, "spec": {"type": "Exempt"}});
    assert_eq!(
        cells(
            "flowcontrol.apiserver.k8s.io",
            "PriorityLevelConfiguration",
            &exempt
        )[2],
        json!("<none>")
    );
    let va = json!({"metadata": {"name": "csi-123"},
        "spec": {"attacher": "ebs.csi.aws.com", "nodeName": "node-1",
                 "source": {"persistentVolumeName": "pvc-3f1c"}},
        "status": {"attached": true}});
    assert_eq!(
        cells("storage.k8s.io", "VolumeAttachment", &va)[1..5],
        [
            json!("ebs.csi.aws.com"),
            json!("pvc-3f1c"),
            json!("node-1"),
            json!(true)
        ]
    );
}
