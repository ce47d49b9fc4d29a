//! Strategic merge patch tests with the patches kubectl and client libraries really send,
//! against the built-in metadata.

use proptest::prelude::*;
use serde_json::{json, Value};

use crate::patch::{builtin_patch_schema, merge_patch, strategic_merge_patch, PatchError};

const DEPLOYMENT: &str = "io.k8s.api.apps.v1.Deployment";
const SERVICE: &str = "io.k8s.api.core.v1.Service";
const POD: &str = "io.k8s.api.core.v1.Pod";

fn smp(original: &Value, patch: &Value, root: &str) -> Result<Value, PatchError> {
    strategic_merge_patch(original, patch, builtin_patch_schema(), root)
}

/// Applies and checks that no directive leaked into the result.
fn apply(original: Value, patch: Value, root: &str) -> Value {
    let out = smp(&original, &patch, root).unwrap_or_else(|e| panic!("patch {patch} failed: {e}"));
    assert_no_directives(&out);
    out
}

fn assert_no_directives(v: &Value) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                assert!(!k.starts_with('$'), "directive {k} leaked");
                assert_no_directives(v);
            }
        }
        Value::Array(a) => a.iter().for_each(assert_no_directives),
        _ => {}
    }
}

fn deployment() -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "labels": {"app": "web", "tier": "frontend"},
            "finalizers": ["a.example.com/x", "b.example.com/y"]
        },
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}
            },
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "image": "nginx:1.25",
                            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}, {"name": "C", "value": "3"}],
                            "ports": [{"containerPort": 80, "protocol": "TCP"}]
                        },
                        {"name": "sidecar", "image": "envoy:1"}
                    ],
                    "volumes": [{"name": "data", "emptyDir": {}}],
                    "tolerations": [{"key": "k1", "operator": "Exists"}]
                }
            }
        }
    })
}

fn containers(d: &Value) -> &Vec<Value> {
    d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
}

#[test]
fn kubectl_apply_three_way_patch_changes_one_image() {
    // What `kubectl apply` sends after the image of "app" changed in the manifest.
    let patch = json!({
        "metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}"}},
        "spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "app"}, {"name": "sidecar"}],
            "containers": [{"image": "nginx:1.26", "name": "app"}]
        }}}
    });
    let out = apply(deployment(), patch, DEPLOYMENT);
    let cs = containers(&out);
    assert_eq!(cs.len(), 2);
    assert_eq!(cs[0]["name"], "app");
    assert_eq!(cs[0]["image"], "nginx:1.26");
    // The rest of the container is kept (merge, not replace).
    assert_eq!(cs[0]["env"].as_array().unwrap().len(), 3);
    assert_eq!(
        cs[0]["ports"],
        json!([{"containerPort": 80, "protocol": "TCP"}])
    );
    assert_eq!(cs[1], json!({"name": "sidecar", "image": "envoy:1"}));
    assert_eq!(
        out["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"],
        "{...}"
    );
    // Untouched parts survive verbatim.
    assert_eq!(out["spec"]["strategy"], deployment()["spec"]["strategy"]);
}

#[test]
fn set_element_order_reorders_and_inserts() {
    // The manifest now lists sidecar first and adds "init" between them.
    let patch = json!({"spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "metrics"}, {"name": "app"}],
        "containers": [{"name": "metrics", "image": "prom:2"}]
    }}}});
    let out = apply(deployment(), patch, DEPLOYMENT);
    let names: Vec<&str> = containers(&out)
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["sidecar", "metrics", "app"]);
}

#[test]
fn kubectl_apply_removes_a_container_and_an_env_var() {
    let patch = json!({"spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "app"}],
        "containers": [
            {
                "$setElementOrder/env": [{"name": "A"}, {"name": "C"}],
                "env": [{"$patch": "delete", "name": "B"}],
                "name": "app"
            },
            {"$patch": "delete", "name": "sidecar"}
        ]
    }}}});
    let out = apply(deployment(), patch, DEPLOYMENT);
    let cs = containers(&out);
    assert_eq!(cs.len(), 1);
    assert_eq!(
        cs[0]["env"],
        json!([{"name": "A", "value": "1"}, {"name": "C", "value": "3"}])
    );
}

#[test]
fn patch_delete_directive_removes_env_var() {
    // `kubectl patch deploy web -p '{"spec":...{"env":[{"name":"B","$patch":"delete"}]}}'`
    let patch = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "app", "env": [{"name": "B", "$patch": "delete"}, {"name": "D", "value": "4"}]}
    ]}}}});
    let out = apply(deployment(), patch, DEPLOYMENT);
    let env = &containers(&out)[0]["env"];
    // Without `$setElementOrder`, Kubernetes places patch items before live-only ones that
    // have no live position relative to them: the new D comes first.
    assert_eq!(
        env,
        &json!([{"name": "D", "value": "4"}, {"name": "A", "value": "1"}, {"name": "C", "value": "3"}])
    );
}

#[test]
fn apply_that_adds_and_deletes_keeps_kubernetes_order() {
    // Live containers a, b, d (d was added by someone else, e.g. an injected sidecar); the
    // manifest drops a and adds c after b. Kubernetes answers [b, d, c]: its order
    // reference sees the live slice after the in-place delete and append.
    let pod = json!({"spec": {"containers": [
        {"name": "a"}, {"name": "b", "image": "b"}, {"name": "d", "image": "d"}
    ]}});
    let patch = json!({"spec": {
        "$setElementOrder/containers": [{"name": "b"}, {"name": "c"}],
        "containers": [{"name": "c", "image": "c"}, {"name": "a", "$patch": "delete"}]
    }});
    let out = apply(pod, patch, POD);
    let names: Vec<&str> = out["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["b", "d", "c"]);
}

#[test]
fn kubectl_set_image_patch() {
    // `kubectl set image deploy/web sidecar=envoy:2` sends only name and image.
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "sidecar", "image": "envoy:2"}]}}}});
    let out = apply(deployment(), patch, DEPLOYMENT);
    let cs = containers(&out);
    assert_eq!(cs[0]["image"], "nginx:1.25");
    assert_eq!(cs[1]["image"], "envoy:2");
    assert_eq!(cs.len(), 2);
}

#[test]
fn service_ports_merge_by_port() {
    let svc = json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
        "spec": {
            "selector": {"app": "web"},
            "ports": [
                {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                {"name": "https", "port": 443, "targetPort": 8443, "protocol": "TCP"}
            ]
        }
    });
    let patch = json!({"spec": {"ports": [{"port": 443, "targetPort": 9443}, {"name": "metrics", "port": 9090}]}});
    let out = apply(svc.clone(), patch, SERVICE);
    // kubernetes orders the patched items by the patch and keeps live order around them:
    // 80 (server only) then the patched 443, then the new 9090.
    assert_eq!(
        out["spec"]["ports"],
        json!([
            {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
            {"name": "https", "port": 443, "targetPort": 9443, "protocol": "TCP"},
            {"name": "metrics", "port": 9090}
        ])
    );
    // Deleting a port by its merge key.
    let out = apply(
        svc,
        json!({"spec": {"ports": [{"port": 80, "$patch": "delete"}]}}),
        SERVICE,
    );
    assert_eq!(out["spec"]["ports"].as_array().unwrap().len(), 1);
    assert_eq!(out["spec"]["ports"][0]["port"], 443);
}

#[test]
fn labels_deleted_by_null() {
    let patch = json!({"metadata": {"labels": {"tier": null, "env": "prod"}}});
    let out = apply(deployment(), patch, DEPLOYMENT);
    assert_eq!(
        out["metadata"]["labels"],
        json!({"app": "web", "env": "prod"})
    );
    // A null for a key that is not there is simply dropped (no null in the result).
    let out = apply(
        deployment(),
        json!({"metadata": {"annotations": {"x": null, "y": "1"}}}),
        DEPLOYMENT,
    );
    assert_eq!(out["metadata"]["annotations"], json!({"y": "1"}));
    let out = apply(
        deployment(),
        json!({"metadata": {"labels": null}}),
        DEPLOYMENT,
    );
    assert!(out["metadata"].get("labels").is_none());
}

#[test]
fn finalizers_union_and_delete_from_primitive_list() {
    let out = apply(
        deployment(),
        json!({"metadata": {"finalizers": ["c.example.com/z", "a.example.com/x"]}}),
        DEPLOYMENT,
    );
    // Union without duplicates; patch items keep patch order, live-only items their place.
    assert_eq!(
        out["metadata"]["finalizers"],
        json!(["c.example.com/z", "a.example.com/x", "b.example.com/y"])
    );

    // kubectl apply removing one finalizer and keeping the other.
    let patch = json!({"metadata": {
        "$setElementOrder/finalizers": ["b.example.com/y"],
        "$deleteFromPrimitiveList/finalizers": ["a.example.com/x"]
    }});
    let out = apply(deployment(), patch, DEPLOYMENT);
    assert_eq!(out["metadata"]["finalizers"], json!(["b.example.com/y"]));

    // A deletion list for a field that is not there is a no-op.
    let out = apply(
        json!({"metadata": {}}),
        json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]}}),
        DEPLOYMENT,
    );
    assert_eq!(out, json!({"metadata": {}}));
}

#[test]
fn retain_keys_switches_rolling_update_to_recreate() {
    // kubectl apply after changing strategy.type to Recreate and dropping rollingUpdate.
    let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": null, "type": "Recreate"}}});
    let out = apply(deployment(), patch, DEPLOYMENT);
    assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));

    // Without the null the directive alone clears the unlisted key.
    let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}});
    assert_eq!(
        apply(deployment(), patch, DEPLOYMENT)["spec"]["strategy"],
        json!({"type": "Recreate"})
    );

    // A key set by the patch but missing from $retainKeys is a bad request.
    let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": {}}}});
    let e = smp(&deployment(), &patch, DEPLOYMENT).unwrap_err();
    assert_eq!(
        e,
        PatchError::BadRequest("invalid patch format of retainKeys".into())
    );
    assert_eq!(e.status_code(), 400);
}

#[test]
fn retain_keys_on_volumes_switches_volume_source() {
    let patch = json!({"spec": {"template": {"spec": {
        "$setElementOrder/volumes": [{"name": "data"}],
        "volumes": [{"$retainKeys": ["configMap", "name"], "configMap": {"name": "cfg"}, "name": "data"}]
    }}}});
    let out = apply(deployment(), patch, DEPLOYMENT);
    assert_eq!(
        out["spec"]["template"]["spec"]["volumes"],
        json!([{"name": "data", "configMap": {"name": "cfg"}}])
    );
}

#[test]
fn lists_without_strategy_are_replaced() {
    let patch = json!({"spec": {"template": {"spec": {"tolerations": [{"key": "k2", "operator": "Equal", "value": "v"}]}}}});
    let out = apply(deployment(), patch, DEPLOYMENT);
    assert_eq!(
        out["spec"]["template"]["spec"]["tolerations"],
        json!([{"key": "k2", "operator": "Equal", "value": "v"}])
    );
    // Container args have no strategy either.
    let pod = json!({"spec": {"containers": [{"name": "c", "args": ["a", "b"]}]}});
    let out = apply(
        pod,
        json!({"spec": {"containers": [{"name": "c", "args": ["z"]}]}}),
        POD,
    );
    assert_eq!(out["spec"]["containers"][0]["args"], json!(["z"]));
}

#[test]
fn replace_directives() {
    // `$patch: replace` inside a merging list makes the patch items the whole list.
    let patch = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "only", "image": "busybox"}, {"$patch": "replace"}
    ]}}}});
    let out = apply(deployment(), patch, DEPLOYMENT);
    assert_eq!(
        containers(&out),
        &vec![json!({"name": "only", "image": "busybox"})]
    );

    // `$patch: replace` in a map replaces the map.
    let patch = json!({"metadata": {"labels": {"$patch": "replace", "new": "1"}}});
    assert_eq!(
        apply(deployment(), patch, DEPLOYMENT)["metadata"]["labels"],
        json!({"new": "1"})
    );

    // patchStrategy "replace" (PodDisruptionBudget selector): the map is not merged.
    let pdb = json!({"spec": {"selector": {"matchLabels": {"a": "1"}}, "minAvailable": 1}});
    let out = apply(
        pdb,
        json!({"spec": {"selector": {"matchLabels": {"b": "2"}}}}),
        "io.k8s.api.policy.v1.PodDisruptionBudget",
    );
    assert_eq!(out["spec"]["selector"], json!({"matchLabels": {"b": "2"}}));
}

#[test]
fn delete_directive_on_a_map() {
    let patch = json!({"spec": {"strategy": {"$patch": "delete"}}});
    let out = apply(deployment(), patch, DEPLOYMENT);
    assert!(out["spec"].get("strategy").is_none());
    assert_eq!(out["spec"]["replicas"], 2);
    // On a map that is not there it adds nothing.
    let out = apply(
        json!({"spec": {}}),
        json!({"spec": {"strategy": {"$patch": "delete"}}}),
        DEPLOYMENT,
    );
    assert_eq!(out, json!({"spec": {}}));
}

#[test]
fn owner_references_merge_by_uid() {
    let obj = json!({"metadata": {"ownerReferences": [
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs1", "uid": "u1", "controller": true}
    ]}});
    let patch = json!({"metadata": {"ownerReferences": [
        {"uid": "u1", "controller": false},
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "cm", "uid": "u2"}
    ]}});
    let out = apply(obj, patch, POD);
    assert_eq!(
        out["metadata"]["ownerReferences"],
        json!([
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs1", "uid": "u1", "controller": false},
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "cm", "uid": "u2"}
        ])
    );
}

#[test]
fn python_client_dict_patches() {
    // kubernetes-python's patch_namespaced_deployment(body={...}) sends plain dicts.
    let out = apply(deployment(), json!({"spec": {"replicas": 5}}), DEPLOYMENT);
    assert_eq!(out["spec"]["replicas"], 5);
    let out = apply(
        deployment(),
        json!({"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": "2024-01-01T00:00:00Z"}}}}}),
        DEPLOYMENT,
    );
    assert_eq!(
        out["spec"]["template"]["metadata"]["labels"],
        json!({"app": "web"})
    );
    assert_eq!(
        out["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"],
        "2024-01-01T00:00:00Z"
    );
    // Adding a container port merges by containerPort.
    let out = apply(
        deployment(),
        json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "ports": [{"containerPort": 9090, "name": "metrics"}]}]}}}}),
        DEPLOYMENT,
    );
    assert_eq!(containers(&out)[0]["ports"].as_array().unwrap().len(), 2);
}

#[test]
fn key_order_is_preserved() {
    let out = apply(
        deployment(),
        json!({"metadata": {"labels": {"app": "api", "z": "1"}}}),
        DEPLOYMENT,
    );
    let keys: Vec<&String> = out["metadata"]["labels"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(keys, ["app", "tier", "z"]);
    let top: Vec<&String> = out.as_object().unwrap().keys().collect();
    assert_eq!(top, ["apiVersion", "kind", "metadata", "spec"]);
}

#[test]
fn unknown_root_type_falls_back_to_merge_patch() {
    let cr = json!({
        "apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "w", "finalizers": ["a"]},
        "spec": {"items": [{"name": "x", "v": 1}, {"name": "y", "v": 2}], "size": 1, "drop": true}
    });
    let patch = json!({
        "metadata": {"finalizers": ["b"]},
        "spec": {"items": [{"name": "x", "v": 3}], "size": 2, "drop": null}
    });
    let out = apply(cr.clone(), patch.clone(), "com.example.v1.Widget");
    let mut expected = cr;
    merge_patch(&mut expected, &patch);
    assert_eq!(out, expected);
    // Lists are replaced whole, even metadata.finalizers.
    assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
    assert_eq!(out["spec"]["items"], json!([{"name": "x", "v": 3}]));
    // Directives are still understood and never stored.
    let out = apply(
        json!({"spec": {"a": {"b": 1}, "c": 1}}),
        json!({"spec": {"a": {"$patch": "delete"}, "l": [{"$patch": "replace"}, {"x": 1}]}}),
        "com.example.v1.Widget",
    );
    assert_eq!(out, json!({"spec": {"c": 1, "l": [{"x": 1}]}}));
}

#[test]
fn maps_of_structs_and_root_kinds() {
    // CRD schemas: `properties` is a map of JSONSchemaProps; nested merges work through it.
    let crd = json!({"spec": {"versions": [{"name": "v1", "schema": {"openAPIV3Schema": {"type": "object",
        "properties": {"spec": {"type": "object", "properties": {"a": {"type": "string"}}}}}}}]}});
    let patch = json!({"spec": {"versions": [{"name": "v1", "served": true}]}});
    let out = apply(
        crd,
        patch,
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition",
    );
    // versions has no merge strategy: replaced.
    assert_eq!(
        out["spec"]["versions"],
        json!([{"name": "v1", "served": true}])
    );
    // Null or absent originals are treated as empty objects.
    let out = apply(
        Value::Null,
        json!({"metadata": {"name": "x", "labels": {"a": null}}}),
        POD,
    );
    assert_eq!(out, json!({"metadata": {"name": "x", "labels": {}}}));
}

#[test]
fn errors_match_kubernetes() {
    let d = deployment();
    let err = |patch: Value| smp(&d, &patch, DEPLOYMENT).unwrap_err();

    let e = err(json!({"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}}));
    assert_eq!(
        e,
        PatchError::Internal("map: map[image:x] does not contain declared merge key: name".into())
    );
    assert_eq!(e.status_code(), 500);

    let e = err(
        json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "$patch": "frob"}]}}}}),
    );
    assert_eq!(
        e.to_string(),
        "unknown patch type: frob in map: map[$patch:frob name:app]"
    );

    let e = err(json!({"metadata": {"labels": {"$patch": "frob"}}}));
    assert_eq!(
        e.to_string(),
        "unknown patch type: frob in map: map[$patch:frob]"
    );

    let e = err(
        json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "$patch": "merge"}]}}}}),
    );
    assert_eq!(
        e.to_string(),
        "merging lists cannot yet be specified in the patch"
    );

    let e = err(json!({"spec": {"template": {"spec": {"$setElementOrder/containers": "app"}}}}));
    assert_eq!(
        e.to_string(),
        "expected a []interface {}, but received a string"
    );

    let e = err(json!({"spec": {"strategy": {"$retainKeys": "type"}}}));
    assert_eq!(
        e,
        PatchError::BadRequest("invalid patch format of retainKeys".into())
    );

    let e = err(json!({"metadata": {"$deleteFromPrimitiveListfinalizers": ["x"]}}));
    assert_eq!(
        e,
        PatchError::BadRequest("invalid patch format of primitive list".into())
    );

    let e = smp(
        &json!({"metadata": {"finalizers": [["a"]]}}),
        &json!({"metadata": {"finalizers": [["b"]]}}),
        DEPLOYMENT,
    )
    .unwrap_err();
    assert_eq!(
        e,
        PatchError::Unprocessable("lists of lists are not supported".into())
    );
    assert_eq!(e.status_code(), 422);
    let e = err(json!({"metadata": {"finalizers": [["nested"]]}}));
    assert!(
        e.to_string()
            .starts_with("list element types are not identical"),
        "{e}"
    );

    let e = err(json!({"spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "app"}],
        "containers": [{"name": "other", "image": "x"}]
    }}}}));
    assert!(e.to_string().starts_with("The order in patch list:"), "{e}");

    let e = smp(&d, &json!([1]), DEPLOYMENT).unwrap_err();
    assert_eq!(e, PatchError::BadRequest("invalid JSON document".into()));
}

#[test]
fn empty_patch_is_identity() {
    assert_eq!(apply(deployment(), json!({}), DEPLOYMENT), deployment());
}

/// JSON values without directive-looking keys; arrays hold scalars so that merge patch's
/// verbatim array copy and the strategic engine's null-free materialisation agree.
fn arb_json() -> impl Strategy<Value = Value> {
    let scalar = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-5i64..5).prop_map(|n| json!(n)),
        "[a-c]{0,2}".prop_map(Value::String),
    ];
    let list = prop::collection::vec(
        prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            "[a-c]{1,2}".prop_map(Value::String)
        ],
        0..3,
    )
    .prop_map(Value::Array);
    let leaf = prop_oneof![scalar, list];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop::collection::vec(("[a-d]", inner), 0..4)
            .prop_map(|kv| Value::Object(kv.into_iter().collect()))
    })
}

fn arb_object() -> impl Strategy<Value = Value> {
    prop::collection::vec(("[a-d]", arb_json()), 0..4)
        .prop_map(|kv| Value::Object(kv.into_iter().collect()))
}

fn strip_nulls(v: &mut Value) {
    if let Value::Object(m) = v {
        m.retain(|_, v| !v.is_null());
        m.values_mut().for_each(strip_nulls);
    }
}

proptest! {
    /// Without metadata the strategic engine is JSON merge patch.
    #[test]
    fn unknown_types_behave_like_merge_patch(original in arb_object(), patch in arb_object()) {
        // Merge patch keeps nulls that were already stored; kube objects never hold them.
        let mut original = original;
        strip_nulls(&mut original);
        let mut expected = original.clone();
        merge_patch(&mut expected, &patch);
        let got = smp(&original, &patch, "com.example.v1.Anything").unwrap();
        prop_assert_eq!(got, expected);
    }

    /// Applying a merge-key list patch never duplicates keys and keeps every live item.
    #[test]
    fn env_merge_keeps_unique_names(live in prop::collection::btree_set("[a-e]", 0..5), add in prop::collection::vec("[a-g]", 0..5)) {
        let env: Vec<Value> = live.iter().map(|n| json!({"name": n, "value": "live"})).collect();
        let patch_env: Vec<Value> = add.iter().map(|n| json!({"name": n, "value": "new"})).collect();
        let pod = json!({"spec": {"containers": [{"name": "c", "env": env}]}});
        let out = smp(&pod, &json!({"spec": {"containers": [{"name": "c", "env": patch_env}]}}), POD).unwrap();
        let names: Vec<&str> = out["spec"]["containers"][0]["env"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        prop_assert_eq!(unique.len(), names.len());
        for n in live.iter().chain(add.iter()) {
            prop_assert!(names.contains(&n.as_str()));
        }
    }
}
