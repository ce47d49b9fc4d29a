//! Schema-driven conversion of one protobuf message into JSON, reproducing how Go's
//! encoding/json writes the same value (zero values, nil slices, omitempty, inline structs),
//! plus the hand-written types (Time, IntOrString, Quantity...).

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::{Map, Number, Value};

use super::schema::{Field, FieldKind, MapValue, MessageRef, Scalar, Schema, Special};
use super::wire::{FieldReader, WireValue};
use super::{decode_nested, lossy, ProtoError, MAGIC};

/// Deepest message nesting accepted. Built-in kinds nest about fifteen levels
/// (CronJob..VolumeSource..); the bound only matters for RawExtensions that carry protobuf
/// objects, which could otherwise recurse until the stack runs out.
const MAX_DEPTH: usize = 100;

/// Unix seconds of Go's zero `time.Time` (0001-01-01T00:00:00Z), which JSON writes as null.
const GO_ZERO_TIME_UNIX: i64 = -62_135_596_800;

pub(crate) struct Decoder<'s> {
    pub(crate) schema: &'s Schema,
    pub(crate) depth: usize,
}

impl Decoder<'_> {
    fn nested(&self) -> Result<Decoder<'_>, ProtoError> {
        if self.depth >= MAX_DEPTH {
            return Err(ProtoError::invalid(format!(
                "nested deeper than {MAX_DEPTH} messages"
            )));
        }
        Ok(Decoder {
            schema: self.schema,
            depth: self.depth + 1,
        })
    }

    /// A struct message as a JSON object, fields in Go struct order.
    pub(crate) fn message(
        &self,
        type_name: &str,
        buf: &[u8],
    ) -> Result<Map<String, Value>, ProtoError> {
        let fields = self
            .schema
            .fields(type_name)
            .ok_or_else(|| ProtoError::invalid(format!("no schema for message {type_name}")))?;
        let wire = FieldReader::all(buf)?;
        let mut out = Map::new();
        let mut values = Vec::new();
        for f in fields {
            values.clear();
            values.extend(wire.iter().filter(|(n, _)| *n == f.number).map(|(_, v)| *v));
            if f.inline {
                // An embedded struct: its JSON fields sit in this object; a nil embedded
                // pointer contributes nothing, as in encoding/json.
                match self.field(f, &values)? {
                    Some(Value::Object(inner)) => out.extend(inner),
                    None | Some(Value::Null) => {}
                    Some(_) => {
                        return Err(ProtoError::invalid("inline field is not an object").at(&f.json))
                    }
                }
                continue;
            }
            if let Some(v) = self.field(f, &values).map_err(|e| e.at(&f.json))? {
                out.insert(f.json.clone(), v);
            }
        }
        Ok(out)
    }

    /// One field's JSON value from all its occurrences on the wire, or `None` to leave it out.
    fn field(&self, f: &Field, values: &[WireValue]) -> Result<Option<Value>, ProtoError> {
        // A nil pointer, slice or map: encoding/json writes null unless omitempty.
        let nil = || if f.omitempty { None } else { Some(Value::Null) };
        match &f.kind {
            FieldKind::Map(value_kind) => {
                if values.is_empty() {
                    return Ok(nil());
                }
                self.map(value_kind, values).map(Some)
            }
            FieldKind::Message(r) if f.repeated => {
                if values.is_empty() {
                    return Ok(nil());
                }
                let mut items = Vec::with_capacity(values.len());
                for (i, v) in values.iter().enumerate() {
                    let item = bytes_of(v).and_then(|b| self.typed(r, b));
                    items.push(item.map_err(|e| e.at(&format!("[{i}]")))?);
                }
                Ok(Some(Value::Array(items)))
            }
            FieldKind::Message(r) => {
                if values.is_empty() && f.pointer {
                    return Ok(nil());
                }
                // A non-repeated message seen twice is merged, which on the wire is the same
                // as decoding the concatenation; one occurrence (the usual case) is borrowed.
                let buf: Cow<[u8]> = match values {
                    [] => Cow::Borrowed(&[]),
                    [one] => Cow::Borrowed(bytes_of(one)?),
                    many => {
                        let mut joined = Vec::new();
                        for v in many {
                            joined.extend_from_slice(bytes_of(v)?);
                        }
                        Cow::Owned(joined)
                    }
                };
                self.typed(r, &buf).map(Some)
            }
            FieldKind::Scalar(s) if f.repeated => {
                if values.is_empty() {
                    return Ok(nil());
                }
                let mut items = Vec::with_capacity(values.len());
                for v in values {
                    match v {
                        WireValue::Bytes(b) if s.packable() => unpack(*s, b, &mut items)?,
                        _ => items.push(scalar(*s, v)?),
                    }
                }
                Ok(Some(Value::Array(items)))
            }
            FieldKind::Scalar(Scalar::Bytes) => match values.last() {
                // A nil []byte is null; an empty one is "" (dropped by omitempty).
                None => Ok(nil()),
                Some(v) => {
                    let b = bytes_of(v)?;
                    if b.is_empty() && f.omitempty {
                        return Ok(None);
                    }
                    Ok(Some(Value::String(base64(b))))
                }
            },
            FieldKind::Scalar(s) => {
                // Proto2 "last one wins" for repeated occurrences of a singular field.
                let v = match values.last() {
                    None if f.pointer => return Ok(nil()),
                    None => zero(*s),
                    Some(w) => scalar(*s, w)?,
                };
                // gogo writes non-pointer zero values that the JSON form leaves out.
                if !f.pointer && f.omitempty && is_zero(&v) {
                    return Ok(None);
                }
                Ok(Some(v))
            }
        }
    }

    /// Map entries are messages {1: key, 2: value}; Go writes map keys sorted.
    fn map(&self, value_kind: &MapValue, values: &[WireValue]) -> Result<Value, ProtoError> {
        let mut entries = BTreeMap::new();
        for (i, v) in values.iter().enumerate() {
            let entry = bytes_of(v).map_err(|e| e.at(&format!("[{i}]")))?;
            let mut key = String::new();
            let mut value = None;
            for (n, w) in FieldReader::all(entry).map_err(|e| e.at(&format!("[{i}]")))? {
                match n {
                    1 => key = lossy(bytes_of(&w).map_err(|e| e.at(&format!("[{i}].key")))?),
                    2 => value = Some(w),
                    _ => {}
                }
            }
            let decoded = match value_kind {
                MapValue::Scalar(s) => match value {
                    None => Ok(zero(*s)),
                    Some(w) => scalar(*s, &w),
                },
                MapValue::Message(r) => match value {
                    None => self.typed(r, &[]),
                    Some(w) => bytes_of(&w).and_then(|b| self.typed(r, b)),
                },
                MapValue::Wrapped(s) => match value {
                    None => Ok(Value::Null),
                    Some(w) => bytes_of(&w).and_then(|b| wrapped_list(*s, b)),
                },
            };
            let decoded = decoded.map_err(|e| e.at(&format!("[{key:?}]")))?;
            entries.insert(key, decoded);
        }
        Ok(Value::Object(entries.into_iter().collect()))
    }

    fn typed(&self, r: &MessageRef, buf: &[u8]) -> Result<Value, ProtoError> {
        match r {
            MessageRef::Struct(name) => self.nested()?.message(name, buf).map(Value::Object),
            MessageRef::Special(s) => self.special(*s, buf),
        }
    }

    /// The apimachinery types with hand-written protobuf and JSON forms.
    fn special(&self, s: Special, buf: &[u8]) -> Result<Value, ProtoError> {
        let fields = FieldReader::all(buf)?;
        let last = |n: u32| fields.iter().rev().find(|(k, _)| *k == n).map(|(_, v)| *v);
        match s {
            // {1 seconds, 2 nanos}; an empty message is the zero time, which JSON writes as
            // null. metav1.Time drops nanos on both encodings (JSON has whole seconds).
            Special::Time if buf.is_empty() => Ok(Value::Null),
            Special::Time => format_time(int64(last(1), "seconds")?, 0, false),
            Special::MicroTime if buf.is_empty() => Ok(Value::Null),
            Special::MicroTime => {
                let nanos = int64(last(2), "nanos")? as i32;
                // Go truncates to microseconds when decoding MicroTime.
                format_time(
                    int64(last(1), "seconds")?,
                    i64::from(nanos) / 1000 * 1000,
                    true,
                )
            }
            // {1 duration int64 nanoseconds}; JSON is Go's time.Duration.String().
            Special::Duration => Ok(Value::String(go_duration(int64(last(1), "duration")?))),
            Special::FieldsV1 => match last(1) {
                None => Ok(Value::Null),
                Some(w) => parse_json(bytes_of(&w)?).map_err(|e| e.at("Raw")),
            },
            // {1 type (0 int, 1 string), 2 intVal, 3 strVal}.
            Special::IntOrString => match int64(last(1), "type")? {
                0 => Ok(Value::from(int64(last(2), "intVal")? as i32)),
                1 => match last(3) {
                    None => Ok(Value::String(String::new())),
                    Some(w) => Ok(Value::String(lossy(bytes_of(&w)?))),
                },
                other => Err(ProtoError::invalid(format!(
                    "IntOrString type {other} is neither 0 (int) nor 1 (string)"
                ))),
            },
            // {1 string}: the canonical string form; absent is the zero quantity.
            Special::Quantity => match last(1) {
                None => Ok(Value::String("0".into())),
                Some(w) => {
                    let b = bytes_of(&w)?;
                    if b.is_empty() {
                        // Go's ParseQuantity rejects "" and so fails the whole decode.
                        return Err(ProtoError::invalid("empty quantity string"));
                    }
                    Ok(Value::String(lossy(b)))
                }
            },
            // {1 raw}: the embedded object's own bytes, JSON or (rarely) protobuf.
            Special::RawExtension => match last(1) {
                None => Ok(Value::Null),
                Some(w) => {
                    let raw = bytes_of(&w)?;
                    if raw.is_empty() {
                        Ok(Value::Null)
                    } else if raw.starts_with(MAGIC) {
                        self.nested()?;
                        decode_nested(raw, self.depth + 1).map_err(|e| e.at("raw"))
                    } else {
                        parse_json(raw).map_err(|e| e.at("raw"))
                    }
                }
            },
        }
    }
}

fn bytes_of<'a>(v: &WireValue<'a>) -> Result<&'a [u8], ProtoError> {
    match v {
        WireValue::Bytes(b) => Ok(b),
        other => Err(wrong_wire("length-delimited", other)),
    }
}

fn wrong_wire(expected: &str, found: &WireValue) -> ProtoError {
    ProtoError::Malformed {
        path: String::new(),
        reason: format!("expected {expected}, found {}", found.wire_name()),
    }
}

fn int64(v: Option<WireValue>, what: &str) -> Result<i64, ProtoError> {
    match v {
        None => Ok(0),
        Some(WireValue::Varint(x)) => Ok(x as i64),
        Some(other) => Err(wrong_wire("varint", &other).at(what)),
    }
}

fn scalar(s: Scalar, w: &WireValue) -> Result<Value, ProtoError> {
    // The `as` casts are the protobuf conversions: int32 travels sign-extended to 64 bits.
    Ok(match (s, w) {
        (Scalar::String, WireValue::Bytes(b)) => Value::String(lossy(b)),
        (Scalar::Bytes, WireValue::Bytes(b)) => Value::String(base64(b)),
        (Scalar::Bool, WireValue::Varint(v)) => Value::Bool(*v != 0),
        (Scalar::Int32, WireValue::Varint(v)) => Value::from(*v as i32),
        (Scalar::Int64, WireValue::Varint(v)) => Value::from(*v as i64),
        (Scalar::Uint32, WireValue::Varint(v)) => Value::from(*v as u32),
        (Scalar::Uint64, WireValue::Varint(v)) => Value::from(*v),
        (Scalar::Double, WireValue::Fixed64(v)) => float(f64::from_bits(*v))?,
        (Scalar::Float, WireValue::Fixed32(v)) => {
            // Go formats float32 at 32-bit precision (0.1, not 0.10000000149011612); the
            // shortest round-trip text of the f32 gives the same number.
            let text = f32::from_bits(*v).to_string();
            float(text.parse::<f64>().unwrap_or(f64::NAN))?
        }
        (s, w) => {
            let expected = match s {
                Scalar::String | Scalar::Bytes => "length-delimited",
                Scalar::Double => "fixed64",
                Scalar::Float => "fixed32",
                _ => "varint",
            };
            return Err(wrong_wire(expected, w));
        }
    })
}

/// A packed run of numeric values (proto3 style); gogo writes k8s' proto2 unpacked, but a
/// decoder must accept both.
fn unpack(s: Scalar, b: &[u8], out: &mut Vec<Value>) -> Result<(), ProtoError> {
    let width = match s {
        Scalar::Double => 8,
        Scalar::Float => 4,
        _ => 0,
    };
    if width == 0 {
        let mut r = FieldReader::new(b);
        while !r.at_end() {
            out.push(scalar(s, &WireValue::Varint(r.varint()?))?);
        }
        return Ok(());
    }
    if !b.len().is_multiple_of(width) {
        return Err(wrong_wire(
            "a whole number of packed fixed values",
            &WireValue::Bytes(b),
        ));
    }
    for chunk in b.chunks_exact(width) {
        let w = if width == 8 {
            WireValue::Fixed64(u64::from_le_bytes(chunk.try_into().expect("8 bytes")))
        } else {
            WireValue::Fixed32(u32::from_le_bytes(chunk.try_into().expect("4 bytes")))
        };
        out.push(scalar(s, &w)?);
    }
    Ok(())
}

/// gogo's wrapper message for a named slice map value (ExtraValue): {1 repeated items}.
fn wrapped_list(s: Scalar, b: &[u8]) -> Result<Value, ProtoError> {
    let mut items = Vec::new();
    for (n, w) in FieldReader::all(b)? {
        if n == 1 {
            items.push(scalar(s, &w)?);
        }
    }
    // No items decodes to a nil slice in Go, which JSON writes as null.
    Ok(if items.is_empty() {
        Value::Null
    } else {
        Value::Array(items)
    })
}

fn float(f: f64) -> Result<Value, ProtoError> {
    if !f.is_finite() {
        return Err(ProtoError::invalid(format!("{f} has no JSON form")));
    }
    // Go writes integral floats without a fraction (1, not 1.0); keep them integers while
    // the conversion is exact so the value compares equal to what a JSON client sends.
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        return Ok(Value::from(f as i64));
    }
    Ok(Number::from_f64(f)
        .map(Value::Number)
        .unwrap_or(Value::Null))
}

fn zero(s: Scalar) -> Value {
    match s {
        Scalar::String | Scalar::Bytes => Value::String(String::new()),
        Scalar::Bool => Value::Bool(false),
        _ => Value::from(0),
    }
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::String(s) => s.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Null => true,
        _ => false,
    }
}

fn parse_json(b: &[u8]) -> Result<Value, ProtoError> {
    serde_json::from_slice(b).map_err(|e| ProtoError::invalid(format!("embedded JSON: {e}")))
}

/// RFC 3339 in UTC as metav1.Time ("2006-01-02T15:04:05Z") or MicroTime (".000000Z") write it.
fn format_time(seconds: i64, nanos: i64, micro: bool) -> Result<Value, ProtoError> {
    let total = i128::from(seconds) * 1_000_000_000 + i128::from(nanos);
    if total == i128::from(GO_ZERO_TIME_UNIX) * 1_000_000_000 {
        return Ok(Value::Null);
    }
    let secs = total.div_euclid(1_000_000_000) as i64;
    let sub = total.rem_euclid(1_000_000_000) as u32;
    let t = chrono::DateTime::from_timestamp(secs, sub)
        .ok_or_else(|| ProtoError::invalid(format!("time {seconds}s is out of range")))?;
    let year = chrono::Datelike::year(&t);
    if !(0..=9999).contains(&year) {
        return Err(ProtoError::invalid(format!(
            "time year {year} is outside [0,9999]"
        )));
    }
    let fmt = if micro {
        "%Y-%m-%dT%H:%M:%S%.6fZ"
    } else {
        "%Y-%m-%dT%H:%M:%SZ"
    };
    Ok(Value::String(t.format(fmt).to_string()))
}

/// Go's `time.Duration.String()`: "1h0m0s", "1.5s", "300ms", "2µs", "0s".
pub(crate) fn go_duration(nanos: i64) -> String {
    let neg = nanos < 0;
    let u = nanos.unsigned_abs();
    // The integer part and ".fraction" (trailing zeros trimmed) of u / 10^prec.
    let split = |u: u64, prec: u32| {
        let p = 10u64.pow(prec);
        let frac = if prec == 0 {
            String::new()
        } else {
            let digits = format!("{:0width$}", u % p, width = prec as usize);
            let digits = digits.trim_end_matches('0');
            if digits.is_empty() {
                String::new()
            } else {
                format!(".{digits}")
            }
        };
        (u / p, frac)
    };
    let body = if u == 0 {
        return "0s".into();
    } else if u < 1_000_000_000 {
        let (prec, unit) = match u {
            0..=999 => (0, "ns"),
            1_000..=999_999 => (3, "µs"),
            _ => (6, "ms"),
        };
        let (int, frac) = split(u, prec);
        format!("{int}{frac}{unit}")
    } else {
        let (secs, frac) = split(u, 9);
        let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
        if h > 0 {
            format!("{h}h{m}m{s}{frac}s")
        } else if m > 0 {
            format!("{m}m{s}{frac}s")
        } else {
            format!("{s}{frac}s")
        }
    };
    if neg {
        format!("-{body}")
    } else {
        body
    }
}

/// Standard base64 with padding, as encoding/json writes []byte.
pub(crate) fn base64(b: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for chunk in b.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(chunk.get(1).copied().unwrap_or(0)) << 8)
            | u32::from(chunk.get(2).copied().unwrap_or(0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
