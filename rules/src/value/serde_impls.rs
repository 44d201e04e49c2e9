//! Serde for values and fields, straight to and from the serializer: no
//! `serde_json::Value` tree in between. Every fact change and timeline
//! entry a turn records passes through here on its way to the store, and
//! building the tree first cost an allocation per field and value.
//!
//! The output is what the tree gave, byte for byte: maps and fields in key
//! order, non-finite floats as null (JSON cannot carry them). Reading
//! keeps `from_json`'s rules: integers past `i64` become floats, a
//! repeated key keeps its last value, fields come sorted by name.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::de::{MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smallvec::SmallVec;

use super::{FieldList, Fields, Sym, Value};

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::Float(f) if f.is_finite() => s.serialize_f64(*f),
            Value::Float(_) => s.serialize_unit(),
            Value::Str(x) => s.serialize_str(x),
            Value::Array(a) => s.collect_seq(a.iter()),
            Value::Map(m) => s.collect_map(m.iter().map(|(k, v)| (&**k, v))),
        }
    }
}

/// Fields as a map in name order (they are kept in insertion order).
fn serialize_fields<S: Serializer>(fields: &[(Sym, Value)], s: S) -> Result<S::Ok, S::Error> {
    let mut sorted: SmallVec<[(Arc<str>, &Value); 8]> = fields.iter().map(|(k, v)| (k.name(), v)).collect();
    sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    s.collect_map(sorted.iter().map(|(k, v)| (&**k, *v)))
}

impl Serialize for Fields {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_fields(&self.0, s)
    }
}

impl Serialize for FieldList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_fields(&self.0, s)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, i: i64) -> Result<Value, E> {
        Ok(Value::Int(i))
    }

    fn visit_u64<E>(self, u: u64) -> Result<Value, E> {
        Ok(i64::try_from(u).map_or(Value::Float(u as f64), Value::Int))
    }

    fn visit_f64<E>(self, f: f64) -> Result<Value, E> {
        // As `serde_json::Value` has it: a number JSON cannot carry is null.
        Ok(if f.is_finite() { Value::Float(f) } else { Value::Null })
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::str(s))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(v) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(Arc::new(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut m = BTreeMap::new();
        while let Some((k, v)) = map.next_entry::<Key, Value>()? {
            m.insert(Arc::from(k.0.as_ref()), v);
        }
        Ok(Value::Map(Arc::new(m)))
    }
}

/// A map key, borrowed from the input when it can be.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <std::borrow::Cow<'de, str>>::deserialize(d).map(Key)
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("fact fields (an object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
        let mut entries: SmallVec<[(Key<'de>, Value); 8]> = SmallVec::new();
        while let Some(e) = map.next_entry()? {
            entries.push(e);
        }
        // Stable: of a repeated key, the last stays last, and is the one kept.
        entries.sort_by(|a, b| a.0 .0.cmp(&b.0 .0));
        let mut fields: SmallVec<[(Sym, Value); 2]> = SmallVec::with_capacity(entries.len());
        let mut last: Option<Key<'de>> = None;
        for (k, v) in entries {
            if last.as_ref().is_some_and(|l| l.0 == k.0) {
                fields.last_mut().expect("pushed with `last`").1 = v;
            } else {
                fields.push((Sym::new(&k.0), v));
                last = Some(k);
            }
        }
        Ok(Fields(fields))
    }
}

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(FieldsVisitor)
    }
}

impl<'de> Deserialize<'de> for FieldList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Fields::deserialize(d).map(FieldList::from)
    }
}
