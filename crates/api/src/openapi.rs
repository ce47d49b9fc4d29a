//! OpenAPI v3 documents (`/openapi/v3` index and one document per group-version), built from
//! k8s-openapi's schemas for built-in kinds and from CRD schemas for custom resources.
//! kubectl needs them: `apply`/`create` look for a `fieldValidation` parameter on each
//! kind's PATCH operation to leave validation to the server, and `explain` reads the
//! component schemas tagged with `x-kubernetes-group-version-kind`.

use crate::builtin;
use crate::registry::{Registry, Resource};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

pub struct OpenApi {
    registry: Registry,
    /// Schemas of all built-in definitions (and what they reference).
    builtin: Arc<Map<String, Value>>,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    generation: u64,
    v2: Option<Arc<Vec<u8>>>,
    docs: BTreeMap<String, (Arc<Vec<u8>>, String)>,
    components: Option<Arc<Map<String, Value>>>,
}

impl OpenApi {
    pub fn new(registry: Registry) -> Self {
        let mut gen = builtin::openapi_generator();
        builtin::add_schemas(&mut gen);
        let mut defs: Map<String, Value> = gen
            .definitions()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        annotate_patch_strategies(&mut defs);
        for r in registry.all() {
            if let Some(def) = r.definition {
                if let Some(s) = defs.get_mut(def) {
                    let gvks = s
                        .as_object_mut()
                        .map(|m| {
                            m.entry("x-kubernetes-group-version-kind")
                                .or_insert_with(|| json!([]))
                        })
                        .and_then(Value::as_array_mut);
                    if let Some(list) = gvks {
                        list.push(json!({"group": r.group, "version": r.version, "kind": r.kind}));
                    }
                }
            }
        }
        OpenApi {
            registry,
            builtin: Arc::new(defs),
            cache: Mutex::new(Cache::default()),
        }
    }

    /// The schema of one definition, for validation.
    pub fn definition(&self, name: &str) -> Option<Value> {
        self.builtin.get(name).cloned()
    }

    pub fn components(&self) -> Arc<Map<String, Value>> {
        self.builtin.clone()
    }

    fn refresh(&self) -> std::sync::MutexGuard<'_, Cache> {
        let mut c = self.cache.lock().unwrap();
        let g = self.registry.generation();
        if c.generation != g || c.components.is_none() {
            c.generation = g;
            c.docs.clear();
            c.v2 = None;
            c.components = Some(self.builtin.clone());
        }
        c
    }

    fn doc_for(&self, gv_path: &str) -> Option<(Arc<Vec<u8>>, String)> {
        let mut c = self.refresh();
        if let Some(d) = c.docs.get(gv_path) {
            return Some(d.clone());
        }
        let resources: Vec<Resource> = self
            .registry
            .all()
            .into_iter()
            .filter(|r| gv_path_of(r) == gv_path)
            .collect();
        if resources.is_empty() {
            return None;
        }
        let doc = build_gv_doc(&self.builtin, &resources);
        let bytes = serde_json::to_vec(&doc).unwrap_or_default();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut h);
        let hash = format!("{:016X}", h.finish());
        let entry = (Arc::new(bytes), hash);
        c.docs.insert(gv_path.to_string(), entry.clone());
        Some(entry)
    }

    /// `/openapi/v3`: an index of group-version documents with content hashes.
    pub fn index(&self) -> Value {
        let mut paths = BTreeSet::new();
        for r in self.registry.all() {
            paths.insert(gv_path_of(&r));
        }
        let mut out = Map::new();
        for p in paths {
            if let Some((_, hash)) = self.doc_for(&p) {
                out.insert(
                    p.clone(),
                    json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash}")}),
                );
            }
        }
        json!({ "paths": out })
    }

    /// `/openapi/v2` as JSON (Swagger 2.0): every group-version in one document, for clients
    /// that read it (kubectl asks for protobuf, which is not served).
    pub fn v2(&self) -> Arc<Vec<u8>> {
        if let Some(d) = self.refresh().v2.clone() {
            return d;
        }
        let mut paths = Map::new();
        let mut defs = Map::new();
        let gvs: BTreeSet<String> = self.registry.all().iter().map(gv_path_of).collect();
        for gv in gvs {
            let Some((bytes, _)) = self.doc_for(&gv) else {
                continue;
            };
            let Ok(doc) = serde_json::from_slice::<Value>(&bytes) else {
                continue;
            };
            if let Some(p) = doc["paths"].as_object() {
                paths.extend(p.clone());
            }
            if let Some(d) = doc["components"]["schemas"].as_object() {
                defs.extend(d.clone());
            }
        }
        let mut doc = json!({
            "swagger": "2.0",
            "info": {"title": "Kubernetes", "version": "v1.33.0"},
            "paths": paths,
            "definitions": defs,
        });
        rewrite_refs(&mut doc);
        let bytes = Arc::new(serde_json::to_vec(&doc).unwrap_or_default());
        self.refresh().v2 = Some(bytes.clone());
        bytes
    }

    /// `/openapi/v3/<gv_path>`, e.g. `api/v1` or `apis/apps/v1`.
    pub fn document(&self, gv_path: &str) -> Option<Arc<Vec<u8>>> {
        self.doc_for(gv_path).map(|(d, _)| d)
    }
}

/// kubectl computes client-side apply and edit patches from these extensions (without
/// them every list is atomic and re-applying an unchanged file reports "configured").
fn annotate_patch_strategies(defs: &mut Map<String, Value>) {
    for (ty, field, meta) in corral_apimachinery::patch::builtin_patch_schema().entries() {
        let Some(prop) = defs
            .get_mut(ty)
            .and_then(|s| s.get_mut("properties"))
            .and_then(|p| p.get_mut(field))
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        if let Some(strategy) = &meta.strategy {
            prop.insert("x-kubernetes-patch-strategy".into(), json!(strategy));
        }
        if let Some(key) = &meta.key {
            prop.insert("x-kubernetes-patch-merge-key".into(), json!(key));
        }
    }
}

fn rewrite_refs(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get_mut("$ref") {
                if let Some(name) = r.strip_prefix("#/components/schemas/") {
                    *r = format!("#/definitions/{name}");
                }
            }
            m.values_mut().for_each(rewrite_refs);
        }
        Value::Array(a) => a.iter_mut().for_each(rewrite_refs),
        _ => {}
    }
}

pub fn gv_path_of(r: &Resource) -> String {
    if r.group.is_empty() {
        format!("api/{}", r.version)
    } else {
        format!("apis/{}/{}", r.group, r.version)
    }
}

/// The component name of a custom resource's schema, `com.example.v1.Widget` style.
fn crd_definition_name(r: &Resource) -> String {
    let rev: Vec<&str> = r.group.split('.').rev().collect();
    format!("{}.{}.{}", rev.join("."), r.version, r.kind)
}

fn collect_refs(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                if let Some(name) = r.strip_prefix("#/components/schemas/") {
                    out.insert(name.to_string());
                }
            }
            m.values().for_each(|x| collect_refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

fn build_gv_doc(builtin: &Map<String, Value>, resources: &[Resource]) -> Value {
    let mut schemas = Map::new();
    let mut want: BTreeSet<String> = BTreeSet::new();
    let mut paths = Map::new();
    for r in resources {
        let def_name = match (r.definition, &r.crd) {
            (Some(d), _) => d.to_string(),
            (None, Some(crd)) => {
                let name = crd_definition_name(r);
                let mut s = crd.schema.clone();
                if let Some(m) = s.as_object_mut() {
                    let props = m
                        .entry("properties")
                        .or_insert_with(|| json!({}))
                        .as_object_mut();
                    if let Some(props) = props {
                        props.insert("metadata".into(), json!({"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}));
                        props
                            .entry("apiVersion")
                            .or_insert(json!({"type": "string"}));
                        props.entry("kind").or_insert(json!({"type": "string"}));
                    }
                    m.insert(
                        "x-kubernetes-group-version-kind".into(),
                        json!([{"group": r.group, "version": r.version, "kind": r.kind}]),
                    );
                }
                schemas.insert(name.clone(), s);
                want.insert("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta".into());
                name
            }
            _ => continue,
        };
        want.insert(def_name.clone());
        add_paths(&mut paths, r, &def_name);
    }
    want.insert("io.k8s.apimachinery.pkg.apis.meta.v1.Status".into());
    want.insert("io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions".into());
    // Close over references so every $ref in the document resolves.
    let mut queue: Vec<String> = want.iter().cloned().collect();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    while let Some(n) = queue.pop() {
        if !seen.insert(n.clone()) {
            continue;
        }
        let s = schemas
            .get(&n)
            .cloned()
            .or_else(|| builtin.get(&n).cloned());
        if let Some(s) = s {
            let mut refs = BTreeSet::new();
            collect_refs(&s, &mut refs);
            queue.extend(refs);
            schemas.insert(n, s);
        }
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

fn param(name: &str, location: &str, desc: &str, required: bool) -> Value {
    json!({"name": name, "in": location, "description": desc, "required": required, "schema": {"type": "string", "uniqueItems": true}})
}

fn add_paths(paths: &mut Map<String, Value>, r: &Resource, def: &str) {
    let base = if r.group.is_empty() {
        format!("/api/{}", r.version)
    } else {
        format!("/apis/{}/{}", r.group, r.version)
    };
    let (coll, item) = if r.namespaced {
        (
            format!("{base}/namespaces/{{namespace}}/{}", r.plural),
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural),
        )
    } else {
        (
            format!("{base}/{}", r.plural),
            format!("{base}/{}/{{name}}", r.plural),
        )
    };
    let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
    let obj_ref = json!({"$ref": format!("#/components/schemas/{def}")});
    let ok = |code: &str| json!({ code: {"description": "OK", "content": {"application/json": {"schema": obj_ref.clone()}}}});
    let op = |action: &str, id: &str, extra: Vec<Value>, responses: Value, body: Option<Value>| {
        let mut o = json!({
            "operationId": format!("{id}{}", r.kind),
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk.clone(),
            "parameters": extra,
            "responses": responses,
        });
        if let Some(b) = body {
            o["requestBody"] = b;
        }
        o
    };
    let mut path_params = vec![];
    if r.namespaced {
        path_params.push(param(
            "namespace",
            "path",
            "object name and auth scope, such as for teams and projects",
            true,
        ));
    }
    let write_params = || {
        vec![
            param("dryRun", "query", "When present, indicates that modifications should not be persisted.", false),
            param("fieldManager", "query", "fieldManager is a name associated with the actor or entity that is making these changes.", false),
            param("fieldValidation", "query", "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: Ignore, Warn (default), Strict.", false),
        ]
    };
    let body = json!({"content": {"*/*": {"schema": obj_ref.clone()}}, "required": true});
    let mut patch_types = vec![
        "application/apply-patch+yaml",
        "application/json-patch+json",
        "application/merge-patch+json",
    ];
    // Custom resources take no strategic merge patch, and kubectl reads this list: with it,
    // `kubectl apply` on an existing custom resource sends one and gets 415.
    if r.crd.is_none() {
        patch_types.push("application/strategic-merge-patch+json");
    }
    let patch_content: Map<String, Value> = patch_types
        .into_iter()
        .map(|t| (t.to_string(), json!({"schema": {"type": "object"}})))
        .collect();
    let patch_body = json!({"content": patch_content, "required": true});
    let list_params = vec![
        param("labelSelector", "query", "A selector to restrict the list of returned objects by their labels.", false),
        param("fieldSelector", "query", "A selector to restrict the list of returned objects by their fields.", false),
        param("limit", "query", "limit is a maximum number of responses to return for a list call.", false),
        param("continue", "query", "The continue option should be set when retrieving more results from the server.", false),
        param("resourceVersion", "query", "resourceVersion sets a constraint on what resource versions a request may be served from.", false),
        param("watch", "query", "Watch for changes to the described resources and return them as a stream of add, update, and remove notifications.", false),
    ];
    let mut coll_item = Map::new();
    coll_item.insert("parameters".into(), json!(path_params.clone()));
    coll_item.insert(
        "get".into(),
        op(
            "list",
            "list",
            list_params,
            json!({"200": {"description": "OK"}}),
            None,
        ),
    );
    coll_item.insert(
        "post".into(),
        op(
            "post",
            "create",
            write_params(),
            ok("201"),
            Some(body.clone()),
        ),
    );
    coll_item.insert(
        "delete".into(),
        op(
            "deletecollection",
            "deleteCollection",
            vec![],
            json!({"200": {"description": "OK"}}),
            None,
        ),
    );
    paths.insert(coll, Value::Object(coll_item));
    let mut item_params = path_params;
    item_params.push(param("name", "path", "name of the resource", true));
    let mut patch_params = write_params();
    patch_params.push(param(
        "force",
        "query",
        "Force is going to \"force\" Apply requests.",
        false,
    ));
    let mut it = Map::new();
    it.insert("parameters".into(), json!(item_params));
    it.insert("get".into(), op("get", "read", vec![], ok("200"), None));
    it.insert(
        "put".into(),
        op("put", "replace", write_params(), ok("200"), Some(body)),
    );
    it.insert(
        "patch".into(),
        op("patch", "patch", patch_params, ok("200"), Some(patch_body)),
    );
    it.insert(
        "delete".into(),
        op(
            "delete",
            "delete",
            vec![param(
                "dryRun",
                "query",
                "When present, indicates that modifications should not be persisted.",
                false,
            )],
            ok("200"),
            None,
        ),
    );
    paths.insert(item, Value::Object(it));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_resources_offer_no_strategic_merge_patch() {
        let crd = json!({
            "metadata": {"name": "virtualservices.networking.istio.io"},
            "spec": {
                "group": "networking.istio.io",
                "scope": "Namespaced",
                "names": {"plural": "virtualservices", "kind": "VirtualService"},
                "versions": [{"name": "v1beta1", "served": true, "storage": true,
                              "schema": {"openAPIV3Schema": {"type": "object"}}}],
            },
        });
        let rs = crate::crd::resources_of(&crd);
        let doc = build_gv_doc(&Map::new(), &rs);
        let path =
            "/apis/networking.istio.io/v1beta1/namespaces/{namespace}/virtualservices/{name}";
        let content = doc["paths"][path]["patch"]["requestBody"]["content"]
            .as_object()
            .expect("a PATCH operation");
        let mut types: Vec<&str> = content.keys().map(String::as_str).collect();
        types.sort();
        assert_eq!(
            types,
            vec![
                "application/apply-patch+yaml",
                "application/json-patch+json",
                "application/merge-patch+json"
            ]
        );
        assert_eq!(
            doc["components"]["schemas"]["io.istio.networking.v1beta1.VirtualService"]
                ["x-kubernetes-group-version-kind"][0]["kind"],
            "VirtualService"
        );
    }
}
