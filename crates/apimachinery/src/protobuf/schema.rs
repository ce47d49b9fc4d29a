//! The message layouts of the built-in kinds, loaded once from `data/proto_meta.json`
//! (generated from the Go struct tags by `tools/gen_proto_meta.py`).

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::Value;

const DATA: &str = include_str!("../../data/proto_meta.json");

/// Scalar kinds, named after their .proto types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scalar {
    String,
    Bool,
    Int32,
    Int64,
    Uint32,
    Uint64,
    Double,
    Float,
    /// Go `[]byte`: JSON carries it as a base64 string.
    Bytes,
}

impl Scalar {
    fn parse(s: &str) -> Option<Scalar> {
        Some(match s {
            "string" => Scalar::String,
            "bool" => Scalar::Bool,
            "int32" => Scalar::Int32,
            "int64" => Scalar::Int64,
            "uint32" => Scalar::Uint32,
            "uint64" => Scalar::Uint64,
            "double" => Scalar::Double,
            "float" => Scalar::Float,
            "bytes" => Scalar::Bytes,
            _ => return None,
        })
    }

    /// Numeric kinds may arrive packed (one length-delimited run) when repeated.
    pub(crate) fn packable(self) -> bool {
        !matches!(self, Scalar::String | Scalar::Bytes)
    }
}

/// Types whose protobuf and JSON forms are hand-written in apimachinery rather than
/// derived from their fields, so the decoder converts them itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Special {
    Time,
    MicroTime,
    Duration,
    FieldsV1,
    IntOrString,
    Quantity,
    RawExtension,
}

impl Special {
    fn parse(name: &str) -> Option<Special> {
        Some(match name {
            "io.k8s.apimachinery.pkg.apis.meta.v1.Time" => Special::Time,
            "io.k8s.apimachinery.pkg.apis.meta.v1.MicroTime" => Special::MicroTime,
            "io.k8s.apimachinery.pkg.apis.meta.v1.Duration" => Special::Duration,
            "io.k8s.apimachinery.pkg.apis.meta.v1.FieldsV1" => Special::FieldsV1,
            "io.k8s.apimachinery.pkg.util.intstr.IntOrString" => Special::IntOrString,
            "io.k8s.apimachinery.pkg.api.resource.Quantity" => Special::Quantity,
            "io.k8s.apimachinery.pkg.runtime.RawExtension" => Special::RawExtension,
            _ => return None,
        })
    }
}

/// A message type: a struct with a field table, or one of the special types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MessageRef {
    Struct(String),
    Special(Special),
}

impl MessageRef {
    fn parse(name: &str) -> MessageRef {
        match Special::parse(name) {
            Some(s) => MessageRef::Special(s),
            None => MessageRef::Struct(name.to_string()),
        }
    }
}

/// What a map entry's value (field 2) holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MapValue {
    Scalar(Scalar),
    Message(MessageRef),
    /// A named Go slice (ExtraValue): gogo wraps it in a message whose field 1 repeats.
    Wrapped(Scalar),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FieldKind {
    Scalar(Scalar),
    Message(MessageRef),
    Map(MapValue),
}

#[derive(Debug, Clone)]
pub(crate) struct Field {
    pub(crate) number: u32,
    pub(crate) json: String,
    pub(crate) kind: FieldKind,
    /// A Go slice.
    pub(crate) repeated: bool,
    /// The json tag has `omitempty`.
    pub(crate) omitempty: bool,
    /// A Go pointer: absent means nil, present means set (even to a zero value).
    pub(crate) pointer: bool,
    /// `json:",inline"`: the message's JSON fields belong to the parent object.
    pub(crate) inline: bool,
}

pub(crate) struct Schema {
    /// apiVersion -> kind -> root message type; "*" holds the meta/v1 kinds that every
    /// group version registers (DeleteOptions...).
    roots: HashMap<String, HashMap<String, String>>,
    types: HashMap<String, Vec<Field>>,
}

impl Schema {
    pub(crate) fn get() -> &'static Schema {
        static SCHEMA: OnceLock<Schema> = OnceLock::new();
        // The data is compiled in and checked by tests, so a broken file is a build bug.
        SCHEMA.get_or_init(|| Schema::parse(DATA).expect("data/proto_meta.json is valid"))
    }

    pub(crate) fn root(&self, api_version: &str, kind: &str) -> Option<&str> {
        self.roots
            .get(api_version)
            .and_then(|kinds| kinds.get(kind))
            .or_else(|| self.roots.get("*").and_then(|kinds| kinds.get(kind)))
            .map(String::as_str)
    }

    pub(crate) fn fields(&self, type_name: &str) -> Option<&[Field]> {
        self.types.get(type_name).map(Vec::as_slice)
    }

    pub(crate) fn parse(data: &str) -> Result<Schema, String> {
        let doc: Value = serde_json::from_str(data).map_err(|e| e.to_string())?;
        let mut roots = HashMap::new();
        for (api_version, kinds) in doc["roots"].as_object().ok_or("no roots")? {
            let kinds = kinds
                .as_object()
                .ok_or("roots entry is not an object")?
                .iter()
                .map(|(k, v)| {
                    Ok((
                        k.clone(),
                        v.as_str().ok_or("root is not a string")?.to_string(),
                    ))
                })
                .collect::<Result<HashMap<_, _>, String>>()?;
            roots.insert(api_version.clone(), kinds);
        }
        let mut types = HashMap::new();
        for (name, fields) in doc["types"].as_object().ok_or("no types")? {
            let fields = fields
                .as_array()
                .ok_or_else(|| format!("{name}: fields are not a list"))?
                .iter()
                .map(|f| parse_field(f).map_err(|e| format!("{name}: {e}: {f}")))
                .collect::<Result<Vec<_>, _>>()?;
            types.insert(name.clone(), fields);
        }
        let schema = Schema { roots, types };
        schema.check_references()?;
        Ok(schema)
    }

    /// Every struct a field or root names must have a table, so a lookup during decoding
    /// can only fail on a broken data file, which this turns into a load-time error.
    fn check_references(&self) -> Result<(), String> {
        let known = |r: &MessageRef| match r {
            MessageRef::Struct(n) => self.types.contains_key(n),
            MessageRef::Special(_) => true,
        };
        for kinds in self.roots.values() {
            for root in kinds.values() {
                if !self.types.contains_key(root) {
                    return Err(format!("root type {root} has no table"));
                }
            }
        }
        for (name, fields) in &self.types {
            for f in fields {
                let ok = match &f.kind {
                    FieldKind::Message(r) | FieldKind::Map(MapValue::Message(r)) => known(r),
                    _ => true,
                };
                if !ok {
                    return Err(format!("{name}.{} names a type with no table", f.json));
                }
            }
        }
        Ok(())
    }
}

fn parse_field(f: &Value) -> Result<Field, String> {
    let number = f[0]
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or("bad number")?;
    let json = f[1].as_str().ok_or("bad json name")?.to_string();
    let kind = f[2].as_str().ok_or("bad kind")?;
    let flags = f[3].as_str().ok_or("bad flags")?;
    let type_ref = f.get(4).and_then(Value::as_str);
    let kind = match kind {
        "message" => FieldKind::Message(MessageRef::parse(type_ref.ok_or("message without type")?)),
        "map" => {
            let v = type_ref.ok_or("map without value type")?;
            FieldKind::Map(if let Some(inner) = v.strip_prefix("[]") {
                MapValue::Wrapped(Scalar::parse(inner).ok_or("bad wrapped kind")?)
            } else if let Some(s) = Scalar::parse(v) {
                MapValue::Scalar(s)
            } else {
                MapValue::Message(MessageRef::parse(v))
            })
        }
        other => FieldKind::Scalar(Scalar::parse(other).ok_or("unknown kind")?),
    };
    Ok(Field {
        number,
        json,
        kind,
        repeated: flags.contains('r'),
        omitempty: flags.contains('o'),
        pointer: flags.contains('p'),
        inline: flags.contains('i'),
    })
}
