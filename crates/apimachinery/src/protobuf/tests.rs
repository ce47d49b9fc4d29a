//! Tests: real kubectl v1.32 request bodies (testdata/), messages built by hand with field
//! numbers read from generated.proto, and round trips through a gogo-like encoder.

use super::decode::{base64, go_duration};
use super::schema::{Field, FieldKind, MapValue, MessageRef, Scalar, Schema, Special};
use super::*;
use serde_json::json;

// ---- a minimal protobuf writer (tests only) ----

#[derive(Default, Clone)]
struct Msg(Vec<u8>);

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

impl Msg {
    fn new() -> Msg {
        Msg::default()
    }
    fn key(&mut self, n: u32, wire: u64) {
        put_varint(&mut self.0, (u64::from(n) << 3) | wire);
    }
    fn varint(mut self, n: u32, v: u64) -> Msg {
        self.key(n, 0);
        put_varint(&mut self.0, v);
        self
    }
    fn int(self, n: u32, v: i64) -> Msg {
        self.varint(n, v as u64)
    }
    fn bytes(mut self, n: u32, b: &[u8]) -> Msg {
        self.key(n, 2);
        put_varint(&mut self.0, b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    fn str(self, n: u32, s: &str) -> Msg {
        self.bytes(n, s.as_bytes())
    }
    fn msg(self, n: u32, m: Msg) -> Msg {
        self.bytes(n, &m.0)
    }
    fn fixed64(mut self, n: u32, v: u64) -> Msg {
        self.key(n, 1);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn fixed32(mut self, n: u32, v: u32) -> Msg {
        self.key(n, 5);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// A map entry {1: key, 2: value}.
    fn entry(self, n: u32, k: &str, v: &[u8]) -> Msg {
        self.msg(n, Msg::new().str(1, k).bytes(2, v))
    }
}

/// MAGIC + runtime.Unknown, laid out like kubectl's (empty contentEncoding/contentType).
fn envelope(api_version: &str, kind: &str, raw: &Msg) -> Vec<u8> {
    let unknown = Msg::new()
        .msg(1, Msg::new().str(1, api_version).str(2, kind))
        .bytes(2, &raw.0)
        .str(3, "")
        .str(4, "");
    [MAGIC, unknown.0.as_slice()].concat()
}

fn unix(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp()
}

// ---- real kubectl bodies ----

/// Every testdata/<name>.bin is a body kubectl v1.32.4 POSTed to a capture server; <name>.json
/// is `kubectl create ... --dry-run=client -o json` for the same command (token.json, which
/// has no dry-run, is written from the Go types).
#[test]
fn decodes_real_kubectl_bodies() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/protobuf/testdata");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".bin").map(str::to_string))
        .collect();
    names.sort();
    assert!(names.len() >= 20, "fixtures missing: {names:?}");
    for name in names {
        let body = std::fs::read(dir.join(format!("{name}.bin"))).unwrap();
        let want: Value =
            serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.json"))).unwrap())
                .unwrap();
        let got = decode(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got, want, "{name}:\n got {got}\nwant {want}");
    }
}

#[test]
fn real_body_keeps_go_field_order() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/protobuf/testdata");
    let got = decode(&std::fs::read(dir.join("deployment.bin")).unwrap()).unwrap();
    let keys: Vec<_> = got.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["kind", "apiVersion", "metadata", "spec", "status"]);
    let spec: Vec<_> = got["spec"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(spec, ["replicas", "selector", "template", "strategy"]);
}

// ---- hand-built messages (field numbers from generated.proto, independent of the table) ----

#[test]
fn deployment_intstr_pointer_zero_and_time() {
    let meta = Msg::new()
        .str(1, "web")
        .str(2, "")
        .str(3, "prod")
        .int(7, 0)
        .msg(8, Msg::new().int(1, unix("2024-05-01T10:20:30Z")))
        .entry(11, "tier", b"fe")
        .entry(11, "app", b"web");
    let rolling = Msg::new()
        .msg(1, Msg::new().int(1, 1).int(2, 0).str(3, "25%"))
        .msg(2, Msg::new().int(1, 0).int(2, 1).str(3, ""));
    let spec = Msg::new()
        .int(1, 0) // replicas is *int32: a present 0 stays
        .msg(4, Msg::new().str(1, "RollingUpdate").msg(2, rolling))
        .int(5, 0) // minReadySeconds int32 omitempty: dropped
        .varint(7, 0); // paused bool omitempty: dropped
    let raw = Msg::new().msg(1, meta).msg(2, spec).msg(3, Msg::new());
    let got = decode(&envelope("apps/v1", "Deployment", &raw)).unwrap();
    assert_eq!(
        got,
        json!({
            "kind": "Deployment", "apiVersion": "apps/v1",
            "metadata": {"name": "web", "namespace": "prod",
                         "creationTimestamp": "2024-05-01T10:20:30Z",
                         "labels": {"app": "web", "tier": "fe"}},
            "spec": {
                "replicas": 0,
                // selector is a nil pointer without omitempty; template is a zero struct.
                "selector": null,
                "template": {"metadata": {"creationTimestamp": null},
                             "spec": {"containers": null}},
                "strategy": {"type": "RollingUpdate",
                             "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": 1}}
            },
            "status": {}
        })
    );
    // Map keys come out sorted, as Go writes them.
    let labels: Vec<_> = got["metadata"]["labels"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(labels, ["app", "tier"]);
}

#[test]
fn configmap_binary_data_and_unknown_fields_skipped() {
    let meta = Msg::new()
        .str(1, "c")
        .varint(99, 5)
        .fixed64(98, 1)
        .fixed32(97, 1)
        .str(96, "future");
    let raw = Msg::new()
        .msg(1, meta)
        .entry(2, "a", b"1")
        .entry(3, "bin", &[0, 1, 2, 255])
        .entry(3, "empty", b"")
        .msg(77, Msg::new().str(1, "nested unknown"));
    let got = decode(&envelope("v1", "ConfigMap", &raw)).unwrap();
    assert_eq!(
        got,
        json!({"kind": "ConfigMap", "apiVersion": "v1",
               "metadata": {"name": "c", "creationTimestamp": null},
               "data": {"a": "1"},
               "binaryData": {"bin": "AAEC/w==", "empty": ""}})
    );
}

#[test]
fn secret_data_is_base64_and_type_kept() {
    let raw = Msg::new()
        .msg(1, Msg::new().str(1, "s"))
        .entry(2, "password", b"hunter2")
        .str(3, "Opaque");
    let got = decode(&envelope("v1", "Secret", &raw)).unwrap();
    assert_eq!(got["data"], json!({"password": "aHVudGVyMg=="}));
    assert_eq!(got["type"], json!("Opaque"));
}

#[test]
fn repeated_message_merge_and_last_scalar_wins() {
    // ObjectMeta sent in two pieces merges; a singular scalar repeated takes the last value.
    let raw = Msg::new()
        .msg(1, Msg::new().str(1, "first").entry(11, "a", b"1"))
        .msg(1, Msg::new().str(1, "second").entry(11, "b", b"2"));
    let got = decode(&envelope("v1", "Namespace", &raw)).unwrap();
    assert_eq!(got["metadata"]["name"], json!("second"));
    assert_eq!(got["metadata"]["labels"], json!({"a": "1", "b": "2"}));
}

#[test]
fn packed_repeated_numbers_are_accepted() {
    // PodSecurityContext.supplementalGroups (field 4) is `repeated int64`: gogo writes it
    // unpacked, a proto3 writer packed; both, even mixed, decode to one list.
    let mut packed = Vec::new();
    for v in [1000u64, 2000, 3000] {
        put_varint(&mut packed, v);
    }
    let psc = Msg::new().bytes(4, &packed).int(4, 4000);
    let spec = Msg::new().msg(14, psc);
    let raw = Msg::new().msg(1, Msg::new().str(1, "p")).msg(2, spec);
    let got = decode(&envelope("v1", "Pod", &raw)).unwrap();
    assert_eq!(
        got["spec"]["securityContext"]["supplementalGroups"],
        json!([1000, 2000, 3000, 4000])
    );
}

#[test]
fn negative_numbers() {
    // PriorityClass.value is int32 (field 2); -5 travels as a ten-byte varint.
    // gogo writes globalDefault (a non-pointer bool) even when false; it is omitempty.
    let raw = Msg::new()
        .msg(1, Msg::new().str(1, "low"))
        .int(2, -5)
        .varint(3, 0);
    let got = decode(&envelope("scheduling.k8s.io/v1", "PriorityClass", &raw)).unwrap();
    assert_eq!(
        got,
        json!({"kind": "PriorityClass", "apiVersion": "scheduling.k8s.io/v1",
               "metadata": {"name": "low", "creationTimestamp": null}, "value": -5})
    );
}

#[test]
fn raw_extension_holds_json_or_nested_protobuf() {
    let inner = envelope(
        "v1",
        "ConfigMap",
        &Msg::new().msg(1, Msg::new().str(1, "inner")),
    );
    let raw = Msg::new()
        .msg(1, Msg::new().str(1, "rev"))
        .msg(2, Msg::new().bytes(1, br#"{"spec":{"x":1}}"#))
        .int(3, 2);
    let got = decode(&envelope("apps/v1", "ControllerRevision", &raw)).unwrap();
    assert_eq!(got["data"], json!({"spec": {"x": 1}}));
    assert_eq!(got["revision"], json!(2));
    let raw = Msg::new()
        .msg(1, Msg::new().str(1, "rev"))
        .msg(2, Msg::new().bytes(1, &inner));
    let got = decode(&envelope("apps/v1", "ControllerRevision", &raw)).unwrap();
    assert_eq!(got["data"]["metadata"]["name"], json!("inner"));
    assert_eq!(got["data"]["kind"], json!("ConfigMap"));
    let raw = Msg::new()
        .msg(1, Msg::new().str(1, "rev"))
        .msg(2, Msg::new().bytes(1, b"{nope"));
    let err = decode(&envelope("apps/v1", "ControllerRevision", &raw)).unwrap_err();
    assert!(
        err.to_string().contains("ControllerRevision.data.raw"),
        "{err}"
    );
}

#[test]
fn managed_fields_carry_fieldsv1_json() {
    let mf = Msg::new()
        .str(1, "kubectl")
        .str(2, "Apply")
        .str(3, "v1")
        .msg(4, Msg::new().int(1, unix("2024-01-01T00:00:00Z")))
        .str(6, "FieldsV1")
        .msg(7, Msg::new().bytes(1, br#"{"f:data":{}}"#));
    let raw = Msg::new().msg(1, Msg::new().str(1, "c").msg(17, mf));
    let got = decode(&envelope("v1", "ConfigMap", &raw)).unwrap();
    assert_eq!(
        got["metadata"]["managedFields"],
        json!([{"manager": "kubectl", "operation": "Apply", "apiVersion": "v1",
                "time": "2024-01-01T00:00:00Z", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:data": {}}}])
    );
}

#[test]
fn delete_options_resolve_under_any_group_version() {
    let raw = Msg::new().int(1, 0).str(4, "Foreground").str(5, "All");
    for av in ["v1", "apps/v1", "meta.k8s.io/v1"] {
        let got = decode(&envelope(av, "DeleteOptions", &raw)).unwrap();
        assert_eq!(
            got,
            json!({"kind": "DeleteOptions", "apiVersion": av, "gracePeriodSeconds": 0,
                   "propagationPolicy": "Foreground", "dryRun": ["All"]})
        );
    }
}

#[test]
fn json_inside_the_envelope() {
    let unknown = Msg::new()
        .msg(1, Msg::new().str(1, "v1").str(2, "ConfigMap"))
        .bytes(2, br#"{"metadata":{"name":"j"},"data":{"a":"b"}}"#)
        .str(4, "application/json");
    let body = [MAGIC, unknown.0.as_slice()].concat();
    assert_eq!(
        decode(&body).unwrap(),
        json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "j"}, "data": {"a": "b"}})
    );
}

// ---- errors ----

#[test]
fn errors_name_what_was_wrong() {
    assert_eq!(decode(b"{\"kind\":\"Pod\"}"), Err(ProtoError::MissingMagic));
    assert_eq!(
        decode(&envelope("example.com/v1", "Widget", &Msg::new())),
        Err(ProtoError::UnknownKind {
            api_version: "example.com/v1".into(),
            kind: "Widget".into()
        })
    );
    // Namespace exists only in core v1.
    assert!(matches!(
        decode(&envelope("apps/v1", "Namespace", &Msg::new())),
        Err(ProtoError::UnknownKind { .. })
    ));

    // ObjectMeta.name sent as a varint.
    let raw = Msg::new().msg(1, Msg::new().varint(1, 3));
    let err = decode(&envelope("v1", "ConfigMap", &raw)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "malformed protobuf at ConfigMap.metadata.name: expected length-delimited, found varint"
    );

    // A container port with a bad wire type, deep in a list.
    let ports = Msg::new().str(3, "eighty");
    let container = Msg::new()
        .str(1, "c")
        .msg(6, Msg::new().int(3, 1))
        .msg(6, ports);
    let raw = Msg::new().msg(2, Msg::new().msg(2, container));
    let err = decode(&envelope("v1", "Pod", &raw)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "malformed protobuf at Pod.spec.containers[0].ports[1].containerPort: expected varint, found length-delimited"
    );

    // Map value errors name the key.
    let raw = Msg::new().msg(1, Msg::new().msg(11, Msg::new().str(1, "app").int(2, 1)));
    let err = decode(&envelope("v1", "Namespace", &raw)).unwrap_err();
    assert_eq!(err.to_string(), "malformed protobuf at Namespace.metadata.labels[\"app\"]: expected length-delimited, found varint");

    // Truncated body.
    let mut body = envelope(
        "v1",
        "Namespace",
        &Msg::new().msg(1, Msg::new().str(1, "abc")),
    );
    body.truncate(body.len() - 6);
    assert!(
        matches!(decode(&body), Err(ProtoError::Malformed { .. })),
        "{:?}",
        decode(&body)
    );

    // IntOrString with an impossible type.
    let rolling = Msg::new().msg(2, Msg::new().int(1, 7));
    let raw = Msg::new().msg(2, Msg::new().msg(4, Msg::new().msg(2, rolling)));
    let err = decode(&envelope("apps/v1", "Deployment", &raw)).unwrap_err();
    assert!(
        err.to_string()
            .contains("Deployment.spec.strategy.rollingUpdate.maxSurge"),
        "{err}"
    );

    // An empty quantity string is rejected like Go's ParseQuantity("").
    let raw = Msg::new().msg(2, Msg::new().entry(1, "pods", &Msg::new().str(1, "").0));
    let err = decode(&envelope("v1", "ResourceQuota", &raw)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid value at ResourceQuota.spec.hard[\"pods\"]: empty quantity string"
    );

    // Unsupported envelope encodings.
    let unknown = Msg::new()
        .msg(1, Msg::new().str(1, "v1").str(2, "Pod"))
        .str(3, "gzip");
    let body = [MAGIC, unknown.0.as_slice()].concat();
    assert!(matches!(decode(&body), Err(ProtoError::Unsupported(_))));
}

#[test]
fn nested_raw_extensions_are_bounded() {
    let mut body = envelope("v1", "ConfigMap", &Msg::new());
    for _ in 0..200 {
        let raw = Msg::new().msg(2, Msg::new().bytes(1, &body));
        body = envelope("apps/v1", "ControllerRevision", &raw);
    }
    let err = decode(&body).unwrap_err();
    assert!(err.to_string().contains("nested deeper"), "{err}");
}

#[test]
fn content_type_detection() {
    assert!(is_protobuf_content_type(
        "application/vnd.kubernetes.protobuf"
    ));
    assert!(is_protobuf_content_type(
        "application/vnd.kubernetes.protobuf; charset=utf-8"
    ));
    assert!(is_protobuf_content_type(
        "Application/VND.Kubernetes.Protobuf;stream=watch"
    ));
    assert!(!is_protobuf_content_type("application/json"));
    assert!(!is_protobuf_content_type(
        "application/vnd.kubernetes.protobuf+json"
    ));
    assert!(!is_protobuf_content_type(""));
}

#[test]
fn helpers_match_go() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"foob"), "Zm9vYg==");
    for (nanos, want) in [
        (0, "0s"),
        (1, "1ns"),
        (1_100, "1.1µs"),
        (2_200_000, "2.2ms"),
        (1_500_000_000, "1.5s"),
        (60_000_000_000, "1m0s"),
        (3_600_000_000_000, "1h0m0s"),
        (5_400_000_000_000, "1h30m0s"),
        (-90_000_000_000, "-1m30s"),
        (i64::MIN, "-2562047h47m16.854775808s"),
    ] {
        assert_eq!(go_duration(nanos), want, "{nanos}");
    }
}

#[test]
fn schema_loads_and_covers_the_kubectl_create_kinds() {
    let s = Schema::get();
    for (av, kind) in [
        ("v1", "Namespace"),
        ("v1", "ConfigMap"),
        ("v1", "Secret"),
        ("v1", "Service"),
        ("v1", "ServiceAccount"),
        ("v1", "ResourceQuota"),
        ("v1", "Pod"),
        ("apps/v1", "Deployment"),
        ("batch/v1", "Job"),
        ("batch/v1", "CronJob"),
        ("rbac.authorization.k8s.io/v1", "Role"),
        ("rbac.authorization.k8s.io/v1", "RoleBinding"),
        ("rbac.authorization.k8s.io/v1", "ClusterRole"),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
        ("networking.k8s.io/v1", "Ingress"),
        ("policy/v1", "PodDisruptionBudget"),
        ("policy/v1", "Eviction"),
        ("scheduling.k8s.io/v1", "PriorityClass"),
        ("storage.k8s.io/v1", "StorageClass"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
        ("autoscaling/v1", "Scale"),
        ("coordination.k8s.io/v1", "Lease"),
        ("events.k8s.io/v1", "Event"),
        ("discovery.k8s.io/v1", "EndpointSlice"),
        ("authentication.k8s.io/v1", "TokenRequest"),
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview"),
        ("certificates.k8s.io/v1", "CertificateSigningRequest"),
    ] {
        assert!(s.root(av, kind).is_some(), "{av} {kind}");
    }
}

// ---- round trips through a gogo-like encoder driven by the schema ----

/// Encodes Go-shaped JSON the way gogo-protobuf marshals the Go value: non-pointer scalars
/// and structs always, pointers when set, slices element by element, maps as entries.
fn encode_fields(fields: &[Field], obj: &Map<String, Value>) -> Msg {
    let schema = Schema::get();
    let mut m = Msg::new();
    for f in fields {
        if f.inline {
            // An embedded struct reads its fields from the parent object.
            let FieldKind::Message(MessageRef::Struct(name)) = &f.kind else {
                panic!("inline {}", f.json)
            };
            m = m.msg(f.number, encode_fields(schema.fields(name).unwrap(), obj));
            continue;
        }
        let v = obj.get(&f.json).filter(|v| !v.is_null());
        let items = || v.map(|v| v.as_array().unwrap().clone()).unwrap_or_default();
        match &f.kind {
            FieldKind::Scalar(s) if f.repeated => {
                for item in items() {
                    m = put_scalar(m, f.number, *s, &item);
                }
            }
            FieldKind::Scalar(s) => match v {
                Some(v) => m = put_scalar(m, f.number, *s, v),
                None if f.pointer || *s == Scalar::Bytes => {}
                None => m = put_scalar(m, f.number, *s, &zero_json(*s)),
            },
            FieldKind::Message(r) if f.repeated => {
                for item in items() {
                    m = m.msg(f.number, encode_typed(r, &item));
                }
            }
            FieldKind::Message(r) => match v {
                Some(v) => m = m.msg(f.number, encode_typed(r, v)),
                None if f.pointer => {}
                None => m = m.msg(f.number, encode_typed(r, &Value::Null)),
            },
            FieldKind::Map(mv) => {
                for (k, item) in v.and_then(Value::as_object).cloned().unwrap_or_default() {
                    let entry = Msg::new().str(1, &k);
                    let entry = match mv {
                        MapValue::Scalar(s) => put_scalar(entry, 2, *s, &item),
                        MapValue::Message(r) => entry.msg(2, encode_typed(r, &item)),
                        MapValue::Wrapped(s) => {
                            let mut w = Msg::new();
                            for x in item.as_array().unwrap() {
                                w = put_scalar(w, 1, *s, x);
                            }
                            entry.msg(2, w)
                        }
                    };
                    m = m.msg(f.number, entry);
                }
            }
        }
    }
    m
}

fn encode_typed(r: &MessageRef, v: &Value) -> Msg {
    match r {
        MessageRef::Struct(name) => {
            let empty = Map::new();
            encode_fields(
                Schema::get().fields(name).unwrap(),
                v.as_object().unwrap_or(&empty),
            )
        }
        MessageRef::Special(s) => match (s, v) {
            (Special::Time | Special::MicroTime, Value::Null) => Msg::new(),
            (Special::Time, Value::String(t)) => Msg::new().int(1, unix(t)),
            (Special::MicroTime, Value::String(t)) => {
                let t = chrono::DateTime::parse_from_rfc3339(t).unwrap();
                Msg::new()
                    .int(1, t.timestamp())
                    .int(2, i64::from(t.timestamp_subsec_nanos()))
            }
            (Special::IntOrString, Value::Number(n)) => {
                Msg::new().int(1, 0).int(2, n.as_i64().unwrap()).str(3, "")
            }
            (Special::IntOrString, Value::String(s)) => Msg::new().int(1, 1).int(2, 0).str(3, s),
            (Special::IntOrString, Value::Null) => Msg::new().int(1, 0).int(2, 0).str(3, ""),
            (Special::Quantity, Value::String(q)) => Msg::new().str(1, q),
            (Special::Quantity, Value::Null) => Msg::new().str(1, "0"),
            (Special::RawExtension | Special::FieldsV1, Value::Null) => Msg::new(),
            (Special::RawExtension | Special::FieldsV1, v) => {
                Msg::new().bytes(1, v.to_string().as_bytes())
            }
            (s, v) => panic!("test encoder: {s:?} from {v}"),
        },
    }
}

fn zero_json(s: Scalar) -> Value {
    match s {
        Scalar::String => json!(""),
        Scalar::Bool => json!(false),
        _ => json!(0),
    }
}

fn put_scalar(m: Msg, n: u32, s: Scalar, v: &Value) -> Msg {
    match s {
        Scalar::String => m.str(n, v.as_str().unwrap()),
        Scalar::Bytes => m.bytes(n, &unbase64(v.as_str().unwrap())),
        Scalar::Bool => m.varint(n, u64::from(v.as_bool().unwrap())),
        Scalar::Int32 | Scalar::Int64 => m.int(n, v.as_i64().unwrap()),
        Scalar::Uint32 | Scalar::Uint64 => m.varint(n, v.as_u64().unwrap()),
        Scalar::Double => m.fixed64(n, v.as_f64().unwrap().to_bits()),
        Scalar::Float => m.fixed32(n, (v.as_f64().unwrap() as f32).to_bits()),
    }
}

fn unbase64(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|&c| c != b'=') {
        bits = (bits << 6) | ALPHABET.iter().position(|&a| a == c).unwrap() as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

/// Encodes `want` (the JSON Go's encoding/json writes for the object) and decodes it back.
fn roundtrip(want: Value) {
    let av = want["apiVersion"].as_str().unwrap();
    let kind = want["kind"].as_str().unwrap();
    let root = Schema::get().root(av, kind).unwrap();
    let raw = encode_typed(&MessageRef::Struct(root.to_string()), &want);
    let got = decode(&envelope(av, kind, &raw)).unwrap();
    assert_eq!(got, want, "\n got {got}\nwant {want}");
}

#[test]
fn roundtrip_rich_deployment() {
    roundtrip(json!({
        "kind": "Deployment", "apiVersion": "apps/v1",
        "metadata": {"name": "web", "namespace": "prod", "uid": "1234", "resourceVersion": "7",
            "generation": 3, "creationTimestamp": "2024-05-01T10:20:30Z",
            "labels": {"app": "web", "tier": "fe"}, "annotations": {"note": "x"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Thing", "name": "o", "uid": "u1", "controller": true}],
            "finalizers": ["f1"]},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"},
                         "matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe", "be"]}]},
            "template": {
                "metadata": {"creationTimestamp": null, "labels": {"app": "web"}},
                "spec": {
                    "volumes": [
                        {"name": "cfg", "configMap": {"name": "c", "defaultMode": 420}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}
                    ],
                    "containers": [{
                        "name": "nginx", "image": "nginx:1.27", "command": ["nginx"], "args": ["-g", "daemon off;"],
                        "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP"},
                                  {"hostPort": 8443, "containerPort": 443, "protocol": "UDP"}],
                        "env": [{"name": "A", "value": "b"},
                                {"name": "POD", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}],
                        "resources": {"limits": {"cpu": "500m", "memory": "128Mi"},
                                      "requests": {"cpu": "250m", "memory": "64Mi"}},
                        "volumeMounts": [{"name": "cfg", "readOnly": true, "mountPath": "/etc/cfg"}],
                        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP"},
                            "initialDelaySeconds": 5, "timeoutSeconds": 1, "periodSeconds": 10,
                            "successThreshold": 1, "failureThreshold": 3},
                        "readinessProbe": {"tcpSocket": {"port": 80}, "timeoutSeconds": 1},
                        "terminationMessagePath": "/dev/termination-log", "imagePullPolicy": "IfNotPresent",
                        "securityContext": {"runAsUser": 0, "runAsNonRoot": true, "allowPrivilegeEscalation": false}
                    }],
                    "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
                    "nodeSelector": {"disk": "ssd"}, "securityContext": {}, "schedulerName": "default-scheduler",
                    "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 60}]
                }
            },
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": 1}},
            "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600
        },
        "status": {"observedGeneration": 3, "replicas": 3,
                   "conditions": [{"type": "Available", "status": "True",
                                   "lastUpdateTime": "2024-05-01T10:21:00Z",
                                   "lastTransitionTime": "2024-05-01T10:21:00Z", "reason": "MinimumReplicasAvailable"}]}
    }));
}

#[test]
fn roundtrip_configmap_secret_service() {
    roundtrip(json!({"kind": "ConfigMap", "apiVersion": "v1",
        "metadata": {"name": "c", "creationTimestamp": null}, "immutable": false,
        "data": {"a": "1", "b": ""}, "binaryData": {"bin": "AAECAw=="}}));
    roundtrip(json!({"kind": "Secret", "apiVersion": "v1",
        "metadata": {"name": "s", "creationTimestamp": null},
        "data": {"tls.crt": "LS0tLS1CRUdJTg==", "tls.key": "a2V5"}, "type": "kubernetes.io/tls"}));
    roundtrip(json!({"kind": "Service", "apiVersion": "v1",
        "metadata": {"name": "s", "creationTimestamp": null},
        "spec": {
            "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": "web"},
                      {"name": "m", "protocol": "TCP", "port": 9090, "targetPort": 9091, "nodePort": 30001}],
            "selector": {"app": "x"}, "clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.1"], "type": "NodePort",
            "sessionAffinity": "ClientIP", "externalTrafficPolicy": "Cluster",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 10800}},
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster"},
        "status": {"loadBalancer": {}}}));
}

#[test]
fn roundtrip_jobs() {
    roundtrip(json!({"kind": "Job", "apiVersion": "batch/v1",
        "metadata": {"name": "j", "creationTimestamp": "2024-01-02T03:04:05Z"},
        "spec": {"parallelism": 2, "completions": 4, "backoffLimit": 6,
            "template": {"metadata": {"creationTimestamp": null},
                "spec": {"containers": [{"name": "c", "image": "busybox", "resources": {}}], "restartPolicy": "Never"}},
            "ttlSecondsAfterFinished": 100},
        "status": {"startTime": "2024-01-02T03:04:06Z", "active": 1, "ready": 0}}));
    roundtrip(json!({"kind": "CronJob", "apiVersion": "batch/v1",
        "metadata": {"name": "cj", "creationTimestamp": null},
        "spec": {"schedule": "*/5 * * * *", "timeZone": "Etc/UTC", "concurrencyPolicy": "Forbid", "suspend": false,
            "jobTemplate": {"metadata": {"creationTimestamp": null},
                "spec": {"template": {"metadata": {"creationTimestamp": null},
                    "spec": {"containers": [{"name": "c", "image": "busybox", "resources": {}}],
                             "restartPolicy": "OnFailure"}}}},
            "successfulJobsHistoryLimit": 3, "failedJobsHistoryLimit": 1},
        "status": {"lastScheduleTime": "2024-01-02T03:00:00Z"}}));
}

#[test]
fn roundtrip_rbac() {
    roundtrip(
        json!({"kind": "Role", "apiVersion": "rbac.authorization.k8s.io/v1",
        "metadata": {"name": "r", "namespace": "ns", "creationTimestamp": null},
        "rules": [{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods", "pods/log"]},
                  {"verbs": ["*"], "apiGroups": ["apps"], "resources": ["deployments"], "resourceNames": ["web"]}]}),
    );
    // `rules` has no omitempty: a Role without rules is null, as Go writes a nil slice.
    roundtrip(
        json!({"kind": "Role", "apiVersion": "rbac.authorization.k8s.io/v1",
        "metadata": {"name": "empty", "creationTimestamp": null}, "rules": null}),
    );
    roundtrip(
        json!({"kind": "RoleBinding", "apiVersion": "rbac.authorization.k8s.io/v1",
        "metadata": {"name": "rb", "creationTimestamp": null},
        "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "alice"},
                     {"kind": "ServiceAccount", "name": "sa", "namespace": "default"}],
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"}}),
    );
    roundtrip(
        json!({"kind": "ClusterRole", "apiVersion": "rbac.authorization.k8s.io/v1",
        "metadata": {"name": "agg", "creationTimestamp": null},
        "rules": null,
        "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"rbac.example.com/agg": "true"}}]}}),
    );
}

#[test]
fn roundtrip_ingress_pdb_event_lease() {
    roundtrip(
        json!({"kind": "Ingress", "apiVersion": "networking.k8s.io/v1",
        "metadata": {"name": "i", "creationTimestamp": null},
        "spec": {"ingressClassName": "nginx",
            "defaultBackend": {"service": {"name": "d", "port": {"name": "http"}}},
            "tls": [{"hosts": ["a.com"], "secretName": "s"}],
            "rules": [{"host": "a.com", "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "svc", "port": {"number": 80}}}}]}}]},
        "status": {"loadBalancer": {}}}),
    );
    roundtrip(
        json!({"kind": "PodDisruptionBudget", "apiVersion": "policy/v1",
        "metadata": {"name": "pdb", "creationTimestamp": null},
        "spec": {"minAvailable": "50%", "selector": {"matchLabels": {"app": "web"}}},
        "status": {"observedGeneration": 2, "disruptedPods": {"p1": "2024-01-01T00:00:00Z"},
            "disruptionsAllowed": 1, "currentHealthy": 3, "desiredHealthy": 2, "expectedPods": 3,
            "conditions": [{"type": "DisruptionAllowed", "status": "True", "observedGeneration": 2,
                "lastTransitionTime": "2024-01-01T00:00:00Z", "reason": "SufficientPods", "message": ""}]}}),
    );
    roundtrip(json!({"kind": "Event", "apiVersion": "events.k8s.io/v1",
        "metadata": {"name": "e", "namespace": "default", "creationTimestamp": null},
        "eventTime": "2024-03-04T05:06:07.123456Z",
        "series": {"count": 2, "lastObservedTime": "2024-03-04T05:06:08.000001Z"},
        "reportingController": "c", "reportingInstance": "i", "action": "A", "reason": "R",
        "regarding": {"kind": "Pod", "namespace": "default", "name": "p"},
        "note": "n", "type": "Normal", "deprecatedSource": {},
        "deprecatedFirstTimestamp": null, "deprecatedLastTimestamp": null}));
    roundtrip(
        json!({"kind": "Lease", "apiVersion": "coordination.k8s.io/v1",
        "metadata": {"name": "l", "creationTimestamp": null},
        "spec": {"holderIdentity": "me", "leaseDurationSeconds": 15,
                 "acquireTime": "2024-01-01T00:00:00.000000Z", "renewTime": "2024-01-01T00:00:10.500000Z",
                 "leaseTransitions": 0}}),
    );
}

#[test]
fn roundtrip_auth_and_autoscaling() {
    roundtrip(
        json!({"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": {"resourceAttributes": {"namespace": "default", "verb": "get", "resource": "pods"}},
        "status": {"allowed": false}}),
    );
    roundtrip(
        json!({"kind": "SubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": {"nonResourceAttributes": {"path": "/healthz", "verb": "get"}, "user": "u",
                 "extra": {"scopes": ["a", "b"]}},
        "status": {"allowed": true}}),
    );
    roundtrip(
        json!({"kind": "HorizontalPodAutoscaler", "apiVersion": "autoscaling/v2",
        "metadata": {"name": "h", "creationTimestamp": null},
        "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web", "apiVersion": "apps/v1"},
            "minReplicas": 1, "maxReplicas": 5,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "AverageValue", "averageValue": "100m"}}}]},
        "status": {"desiredReplicas": 0, "currentMetrics": null}}),
    );
}
