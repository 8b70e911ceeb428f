//! JSON in Mesos's mapping: what Mesos's stout library writes (`jsonify(JSON::Protobuf(m))`) and
//! reads (`protobuf::parse<T>(json)`), which differs from the proto3 JSON mapping.
//!
//! Writing ([`to_json`]):
//! - keys are proto field names (`framework_id`, not `frameworkId`), in declaration order;
//! - a singular field is written when it is set, *or* when it declares an explicit default and is
//!   not deprecated (so `Filters.refuse_seconds` is always there, `Resource.role` only when set);
//!   repeated fields when non-empty; maps as objects keyed by the stringified key;
//! - enums as their value names; `bytes` as standard base64 with padding;
//! - 64-bit integers as plain JSON numbers (not strings);
//! - doubles as C's `%#.15g` with trailing zeros trimmed, keeping one digit after the point
//!   (`2.0`, `0.1`, `1712345678.9`); infinities as the strings `"Infinity"`/`"-Infinity"` (which
//!   stout's reader accepts; its writer would emit invalid JSON), NaN as `null`;
//! - strings escaped as stout does (`"`, `\`, `/` and control characters).
//!
//! Reading ([`from_json`]):
//! - the top level must be an object; members are matched by proto field name, unknown ones are
//!   ignored; `null` leaves a field unset;
//! - a repeated field takes an array or a single element; a map takes an object;
//! - numbers may also be given as strings (`"5"`, and `"Infinity"` for doubles), booleans as
//!   `"true"`/`"false"`;
//! - an unknown enum name is dropped (the field stays unset) unless the field is required, which
//!   is an error: proto2's rule, which stout follows;
//! - once parsed, missing required fields are an error listing their paths
//!   (`Missing required fields: subscribe.framework_info.user`).
//!
//! Nothing here panics on any input: every mismatch is a [`JsonError`].

use std::fmt::Write as _;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, ReflectMessage, Value,
};

/// Why a JSON body could not become a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JsonError {
    /// The body is not JSON at all; carries the parser's description.
    #[error("{0}")]
    Syntax(String),
    /// The JSON does not fit the message (wrong shape, bad enum, missing required fields...);
    /// the text is the one Mesos gives for the same problem.
    #[error("{0}")]
    Convert(String),
}

/// Decoding of `bytes` fields: standard alphabet, padding optional, input ends at the first `=`
/// (stout stops there too).
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Nesting limit for parsed JSON, far above any Mesos message's depth; protects the recursive
/// walk from stack exhaustion on hostile input.
const DEPTH_MAX: usize = 64;

/// Writes `message` as Mesos JSON.
pub fn to_json<M: ReflectMessage>(message: &M) -> String {
    to_json_dynamic(&message.transcode_to_dynamic())
}

/// Writes a dynamic message as Mesos JSON.
pub fn to_json_dynamic(message: &DynamicMessage) -> String {
    let mut out = String::with_capacity(256);
    write_message(&mut out, message);
    out
}

/// Parses Mesos JSON into `M`.
pub fn from_json<M: ReflectMessage + Default>(body: &[u8]) -> Result<M, JsonError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| JsonError::Syntax(e.to_string()))?;
    from_json_value(&value)
}

/// Converts an already parsed JSON value into `M` (see the module docs for the rules).
pub fn from_json_value<M: ReflectMessage + Default>(
    value: &serde_json::Value,
) -> Result<M, JsonError> {
    let dynamic = dynamic_from_json_value(M::default().descriptor(), value)?;
    dynamic.transcode_to::<M>().map_err(|e| {
        JsonError::Convert(format!(
            "Failed to convert to {}: {e}",
            std::any::type_name::<M>()
        ))
    })
}

/// Converts a JSON value into a dynamic message of type `descriptor`.
pub fn dynamic_from_json_value(
    descriptor: MessageDescriptor,
    value: &serde_json::Value,
) -> Result<DynamicMessage, JsonError> {
    let serde_json::Value::Object(object) = value else {
        return Err(JsonError::Convert("Expecting a JSON object".into()));
    };
    let mut message = DynamicMessage::new(descriptor);
    parse_object(&mut message, object, 0).map_err(JsonError::Convert)?;
    let missing = missing_required_fields(&message);
    if !missing.is_empty() {
        return Err(JsonError::Convert(format!(
            "Missing required fields: {}",
            missing.join(", ")
        )));
    }
    Ok(message)
}

/// The paths of required fields that are unset in `message` or in any message inside it, in the
/// form protobuf's `InitializationErrorString` uses (`a.b`, `list[2].c`).
pub fn missing_required_fields(message: &DynamicMessage) -> Vec<String> {
    let mut missing = Vec::new();
    collect_missing(message, "", &mut missing);
    missing
}

fn collect_missing(message: &DynamicMessage, prefix: &str, missing: &mut Vec<String>) {
    for field in message.descriptor().fields() {
        if field.is_required() && !message.has_field(&field) {
            missing.push(format!("{prefix}{}", field.name()));
        }
    }
    for (field, value) in message.fields() {
        match value {
            Value::Message(inner) => {
                collect_missing(inner, &format!("{prefix}{}.", field.name()), missing);
            }
            Value::List(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let Value::Message(inner) = item {
                        collect_missing(inner, &format!("{prefix}{}[{i}].", field.name()), missing);
                    }
                }
            }
            Value::Map(entries) => {
                let mut keys: Vec<&MapKey> = entries.keys().collect();
                keys.sort();
                for (i, key) in keys.into_iter().enumerate() {
                    if let Some(Value::Message(inner)) = entries.get(key) {
                        let path = format!("{prefix}{}[{i}].value.", field.name());
                        collect_missing(inner, &path, missing);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Clears enum fields (and drops enum list elements and map values) whose number is not a value
/// of the enum, recursively: proto2's closed-enum rule, which Mesos's C++ parser applies to
/// protobuf input. Run on decoded protobuf so both encodings treat unknown values alike.
pub fn drop_unknown_enum_values(message: &mut DynamicMessage) {
    let fields: Vec<FieldDescriptor> = message.descriptor().fields().collect();
    for field in fields {
        if !message.has_field(&field) {
            continue;
        }
        let kind = field.kind();
        let value = message.get_field_mut(&field);
        match (value, &kind) {
            (Value::EnumNumber(n), Kind::Enum(e)) if e.get_value(*n).is_none() => {
                message.clear_field(&field);
            }
            (Value::List(items), _) => {
                if let Kind::Enum(e) = &kind {
                    items
                        .retain(|v| matches!(v, Value::EnumNumber(n) if e.get_value(*n).is_some()));
                }
                for item in items.iter_mut() {
                    if let Value::Message(inner) = item {
                        drop_unknown_enum_values(inner);
                    }
                }
            }
            (Value::Map(entries), _) => {
                if let Some(Kind::Enum(e)) = map_value_kind(&kind) {
                    entries.retain(
                        |_, v| matches!(v, Value::EnumNumber(n) if e.get_value(*n).is_some()),
                    );
                }
                for inner in entries.values_mut() {
                    if let Value::Message(inner) = inner {
                        drop_unknown_enum_values(inner);
                    }
                }
            }
            (Value::Message(inner), _) => drop_unknown_enum_values(inner),
            _ => {}
        }
    }
}

fn map_value_kind(map_kind: &Kind) -> Option<Kind> {
    match map_kind {
        Kind::Message(entry) => entry.map_entry_value_field().kind().into(),
        _ => None,
    }
}

// ---- Writing ----------------------------------------------------------------------------------

fn write_message(out: &mut String, message: &DynamicMessage) {
    let descriptor = message.descriptor();
    out.push('{');
    let mut first = true;
    // Declaration order, as stout iterates `Descriptor::field(i)`.
    for proto in &descriptor.descriptor_proto().field {
        let Some(field) = proto
            .number
            .and_then(|n| u32::try_from(n).ok())
            .and_then(|n| descriptor.get_field(n))
        else {
            continue;
        };
        let present = if field.is_list() || field.is_map() {
            message.has_field(&field)
        } else {
            let deprecated = proto
                .options
                .as_ref()
                .and_then(|o| o.deprecated)
                .unwrap_or(false);
            message.has_field(&field) || (proto.default_value.is_some() && !deprecated)
        };
        if !present {
            continue;
        }
        let value = message.get_field(&field);
        let mut field_json = String::new();
        if !write_field_value(&mut field_json, &field, &value) {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        write_string(out, field.name());
        out.push(':');
        out.push_str(&field_json);
    }
    out.push('}');
}

/// Writes one field's value; false when there is nothing to write (an enum number with no name,
/// which Mesos could never hold).
fn write_field_value(out: &mut String, field: &FieldDescriptor, value: &Value) -> bool {
    let kind = field.kind();
    match value {
        Value::List(items) => {
            out.push('[');
            let mut first = true;
            for item in items {
                let mut element = String::new();
                if write_scalar(&mut element, &kind, item) {
                    if !first {
                        out.push(',');
                    }
                    first = false;
                    out.push_str(&element);
                }
            }
            out.push(']');
            true
        }
        Value::Map(entries) => {
            let Some(value_kind) = map_value_kind(&kind) else {
                return false;
            };
            let mut keys: Vec<&MapKey> = entries.keys().collect();
            keys.sort();
            out.push('{');
            let mut first = true;
            for key in keys {
                let mut element = String::new();
                if !write_scalar(&mut element, &value_kind, &entries[key]) {
                    continue;
                }
                if !first {
                    out.push(',');
                }
                first = false;
                write_string(out, &map_key_string(key));
                out.push(':');
                out.push_str(&element);
            }
            out.push('}');
            true
        }
        single => write_scalar(out, &kind, single),
    }
}

fn map_key_string(key: &MapKey) -> String {
    match key {
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(n) => n.to_string(),
        MapKey::I64(n) => n.to_string(),
        MapKey::U32(n) => n.to_string(),
        MapKey::U64(n) => n.to_string(),
        MapKey::String(s) => s.clone(),
    }
}

fn write_scalar(out: &mut String, kind: &Kind, value: &Value) -> bool {
    match value {
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::I32(n) => {
            let _ = write!(out, "{n}");
        }
        Value::I64(n) => {
            let _ = write!(out, "{n}");
        }
        Value::U32(n) => {
            let _ = write!(out, "{n}");
        }
        Value::U64(n) => {
            let _ = write!(out, "{n}");
        }
        Value::F32(x) => out.push_str(&format_double(f64::from(*x))),
        Value::F64(x) => out.push_str(&format_double(*x)),
        Value::String(s) => write_string(out, s),
        Value::Bytes(b) => write_string(out, &STANDARD.encode(b)),
        Value::EnumNumber(n) => {
            let Kind::Enum(e) = kind else {
                return false;
            };
            match e.get_value(*n) {
                Some(v) => write_string(out, v.name()),
                None => return false,
            }
        }
        Value::Message(m) => write_message(out, m),
        Value::List(_) | Value::Map(_) => return false,
    }
    true
}

/// Formats a double as stout does: `printf("%#.15g")`, trailing zeros removed, and a `0` put back
/// after a trailing decimal point. Returns a JSON token (see the module docs for non-finite
/// values).
pub fn format_double(x: f64) -> String {
    if x.is_nan() {
        return "null".into();
    }
    if x.is_infinite() {
        // stout would print a bare `inf`, which is not JSON; its parser accepts these strings.
        return if x > 0.0 {
            "\"Infinity\"".into()
        } else {
            "\"-Infinity\"".into()
        };
    }
    const PRECISION: i32 = 15;
    if x == 0.0 {
        return if x.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    // `{:.14e}` rounds to 15 significant digits; its exponent decides %g's style.
    let sci = format!("{:.*e}", (PRECISION - 1) as usize, x);
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let mut s = if !(-4..PRECISION).contains(&exponent) {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.abs())
    } else {
        let decimals = usize::try_from(PRECISION - 1 - exponent).unwrap_or(0);
        format!("{x:.decimals$}")
    };
    if s.contains('e') {
        // stout trims from the very end, so an exponent form keeps its zeros.
        return s;
    }
    if !s.contains('.') {
        s.push('.');
    }
    while s.ends_with('0') {
        s.pop();
    }
    if s.ends_with('.') {
        s.push('0');
    }
    s
}

/// `s` as a JSON string literal with stout's escapes.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    write_string(&mut out, s);
    out
}

/// Writes a JSON string with stout's escapes.
fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '/' => out.push_str("\\/"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

// ---- Reading ----------------------------------------------------------------------------------

type Object = serde_json::Map<String, serde_json::Value>;

fn parse_object(message: &mut DynamicMessage, object: &Object, depth: usize) -> Result<(), String> {
    if depth > DEPTH_MAX {
        return Err(format!("JSON nested deeper than {DEPTH_MAX} levels"));
    }
    let descriptor = message.descriptor();
    for (name, value) in object {
        if let Some(field) = descriptor.get_field_by_name(name) {
            parse_field(message, &field, value, depth)?;
        }
    }
    Ok(())
}

fn parse_field(
    message: &mut DynamicMessage,
    field: &FieldDescriptor,
    value: &serde_json::Value,
    depth: usize,
) -> Result<(), String> {
    match value {
        serde_json::Value::Null => Ok(()),
        serde_json::Value::Array(items) => {
            if !field.is_list() && !field.is_map() {
                return Err(format!(
                    "Not expecting a JSON array for field '{}'",
                    field.name()
                ));
            }
            if depth > DEPTH_MAX {
                return Err(format!("JSON nested deeper than {DEPTH_MAX} levels"));
            }
            for item in items {
                parse_field(message, field, item, depth + 1)?;
            }
            Ok(())
        }
        single => parse_element(message, field, single, depth),
    }
}

/// Parses one value for `field`: sets a singular field, or adds to a repeated one.
fn parse_element(
    message: &mut DynamicMessage,
    field: &FieldDescriptor,
    value: &serde_json::Value,
    depth: usize,
) -> Result<(), String> {
    let kind = field.kind();
    if let serde_json::Value::Object(object) = value {
        let Kind::Message(inner_descriptor) = &kind else {
            return Err(format!(
                "Not expecting a JSON object for field '{}'",
                field.name()
            ));
        };
        if field.is_map() {
            return parse_map(message, field, inner_descriptor, object, depth);
        }
        if field.is_list() {
            let mut inner = DynamicMessage::new(inner_descriptor.clone());
            parse_object(&mut inner, object, depth + 1)?;
            push_value(message, field, Value::Message(inner));
            return Ok(());
        }
        // Merge into the existing sub-message, as `MutableMessage` does.
        let Value::Message(inner) = message.get_field_mut(field) else {
            return Err(format!(
                "Not expecting a JSON object for field '{}'",
                field.name()
            ));
        };
        return parse_object(inner, object, depth + 1);
    }
    if field.is_map() {
        return Err(format!(
            "Not expecting a JSON {} for field '{}'",
            json_type(value),
            field.name()
        ));
    }
    match scalar_from_json(field, &kind, value)? {
        Some(v) => {
            push_value(message, field, v);
            Ok(())
        }
        None => Ok(()),
    }
}

fn parse_map(
    message: &mut DynamicMessage,
    field: &FieldDescriptor,
    entry_descriptor: &MessageDescriptor,
    object: &Object,
    depth: usize,
) -> Result<(), String> {
    let key_field = entry_descriptor.map_entry_key_field();
    let value_field = entry_descriptor.map_entry_value_field();
    for (name, value) in object {
        let mut entry = DynamicMessage::new(entry_descriptor.clone());
        parse_element(
            &mut entry,
            &key_field,
            &serde_json::Value::String(name.clone()),
            depth + 1,
        )?;
        parse_field(&mut entry, &value_field, value, depth + 1)?;
        let key = match entry.get_field(&key_field).into_owned() {
            Value::Bool(b) => MapKey::Bool(b),
            Value::I32(n) => MapKey::I32(n),
            Value::I64(n) => MapKey::I64(n),
            Value::U32(n) => MapKey::U32(n),
            Value::U64(n) => MapKey::U64(n),
            Value::String(s) => MapKey::String(s),
            _ => return Err(format!("Invalid map key for field '{}'", field.name())),
        };
        let entry_value = entry.get_field(&value_field).into_owned();
        if let Value::Map(map) = message.get_field_mut(field) {
            map.insert(key, entry_value);
        }
    }
    Ok(())
}

fn push_value(message: &mut DynamicMessage, field: &FieldDescriptor, value: Value) {
    if field.is_list() {
        if let Value::List(items) = message.get_field_mut(field) {
            items.push(value);
        }
    } else {
        message.set_field(field, value);
    }
}

fn json_type(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

/// A non-message value for `field` from a JSON scalar; `None` when it is dropped (an unknown
/// enum name on a non-required field).
fn scalar_from_json(
    field: &FieldDescriptor,
    kind: &Kind,
    value: &serde_json::Value,
) -> Result<Option<Value>, String> {
    let name = field.name();
    match value {
        serde_json::Value::String(s) => match kind {
            Kind::String => Ok(Some(Value::String(s.clone()))),
            Kind::Bytes => {
                let encoded = s.split('=').next().unwrap_or("");
                LENIENT_BASE64
                    .decode(encoded)
                    .map(|b| Some(Value::Bytes(b.into())))
                    .map_err(|e| format!("Failed to base64 decode bytes field '{name}': {e}"))
            }
            Kind::Enum(e) => match e.get_value_by_name(s) {
                Some(v) => Ok(Some(Value::EnumNumber(v.number()))),
                None if field.is_required() => Err(format!("Failed to find enum for '{s}'")),
                None => Ok(None),
            },
            Kind::Double | Kind::Float if s == "Infinity" || s == "-Infinity" => {
                let x = if s == "Infinity" {
                    f64::INFINITY
                } else {
                    f64::NEG_INFINITY
                };
                number_value(field, kind, &NumberIn::Float(x)).map(Some)
            }
            Kind::Bool => match s.as_str() {
                "true" => Ok(Some(Value::Bool(true))),
                "false" => Ok(Some(Value::Bool(false))),
                _ => Err(format!(
                    "Failed to parse '{s}' as a JSON boolean for field '{name}'"
                )),
            },
            Kind::Message(_) => Err(format!("Not expecting a JSON string for field '{name}'")),
            _ => {
                let number: serde_json::Number = serde_json::from_str(s.trim()).map_err(|e| {
                    format!("Failed to parse '{s}' as a JSON number for field '{name}': {e}")
                })?;
                number_value(field, kind, &NumberIn::from(&number)).map(Some)
            }
        },
        serde_json::Value::Number(n) => number_value(field, kind, &NumberIn::from(n)).map(Some),
        serde_json::Value::Bool(b) => match kind {
            Kind::Bool => Ok(Some(Value::Bool(*b))),
            _ => Err(format!("Not expecting a JSON boolean for field '{name}'")),
        },
        other => Err(format!(
            "Not expecting a JSON {} for field '{name}'",
            json_type(other)
        )),
    }
}

/// A JSON number as stout holds it: signed, unsigned or floating.
enum NumberIn {
    Signed(i64),
    Unsigned(u64),
    Float(f64),
}

impl From<&serde_json::Number> for NumberIn {
    fn from(n: &serde_json::Number) -> Self {
        if let Some(i) = n.as_i64() {
            NumberIn::Signed(i)
        } else if let Some(u) = n.as_u64() {
            NumberIn::Unsigned(u)
        } else {
            NumberIn::Float(n.as_f64().unwrap_or(f64::NAN))
        }
    }
}

// The casts mirror stout's `JSON::Number::as<T>()`, a `static_cast` of the held value.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss
)]
fn number_value(field: &FieldDescriptor, kind: &Kind, n: &NumberIn) -> Result<Value, String> {
    let as_f64 = match n {
        NumberIn::Signed(i) => *i as f64,
        NumberIn::Unsigned(u) => *u as f64,
        NumberIn::Float(x) => *x,
    };
    let as_i64 = match n {
        NumberIn::Signed(i) => *i,
        NumberIn::Unsigned(u) => *u as i64,
        NumberIn::Float(x) => *x as i64,
    };
    let as_u64 = match n {
        NumberIn::Signed(i) => *i as u64,
        NumberIn::Unsigned(u) => *u,
        NumberIn::Float(x) => *x as u64,
    };
    Ok(match kind {
        Kind::Double => Value::F64(as_f64),
        Kind::Float => Value::F32(as_f64 as f32),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(as_i64),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(as_u64),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(as_i64 as i32),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(as_u64 as u32),
        _ => {
            return Err(format!(
                "Not expecting a JSON number for field '{}'",
                field.name()
            ))
        }
    })
}

#[cfg(test)]
mod tests;
