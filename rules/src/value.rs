//! The data model of facts: compact JSON-like values and interned field names.
//!
//! Facts are JSON objects, but the matching core compares and hashes their
//! fields millions of times per second, so they are kept as `Value`s (cheap to
//! clone: strings and containers are reference counted) with field names
//! interned to `Sym`s.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock, RwLock};

use rustc_hash::FxHashMap;
use smallvec::SmallVec;

mod serde_impls;

/// An interned name (fact type or field). Interning is process-wide so that
/// names compare as integers everywhere.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sym(u32);

struct Interner {
    ids: FxHashMap<Arc<str>, u32>,
    names: Vec<Arc<str>>,
}

fn interner() -> &'static RwLock<Interner> {
    static I: OnceLock<RwLock<Interner>> = OnceLock::new();
    I.get_or_init(|| RwLock::new(Interner { ids: FxHashMap::default(), names: Vec::new() }))
}

impl Sym {
    pub fn new(name: &str) -> Sym {
        if let Some(&id) = interner().read().expect("interner").ids.get(name) {
            return Sym(id);
        }
        let mut w = interner().write().expect("interner");
        if let Some(&id) = w.ids.get(name) {
            return Sym(id);
        }
        let id = w.names.len() as u32;
        let name: Arc<str> = Arc::from(name);
        w.names.push(name.clone());
        w.ids.insert(name, id);
        Sym(id)
    }

    pub fn name(self) -> Arc<str> {
        interner().read().expect("interner").names[self.0 as usize].clone()
    }

    /// Calls `f` with the name, without cloning it (hot paths).
    pub fn with_name<R>(self, f: impl FnOnce(&str) -> R) -> R {
        f(&interner().read().expect("interner").names[self.0 as usize])
    }

    /// Appends the name's key (see `Value::write_key`): its interned
    /// number, valid for the process.
    pub fn write_key(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0.to_le_bytes());
    }
}

impl fmt::Debug for Sym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl fmt::Display for Sym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl serde::Serialize for Sym {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Sym {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(Sym::new(&s))
    }
}

/// A JSON-like value. Numbers keep the integer/float distinction of JSON;
/// equality and hashing treat `1` and `1.0` as the same number so joins on
/// numbers behave as users expect.
#[derive(Clone, Default)]
pub enum Value {
    #[default]
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Arc<str>),
    Array(Arc<Vec<Value>>),
    Map(Arc<BTreeMap<Arc<str>, Value>>),
}

impl Value {
    pub fn str(s: &str) -> Value {
        Value::Str(Arc::from(s))
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Int(i) => Some(i as f64),
            Value::Float(f) => Some(f),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_truthy(&self) -> bool {
        matches!(self, Value::Bool(true))
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "string",
            Value::Array(_) => "array",
            Value::Map(_) => "map",
        }
    }

    /// Heap bytes the value holds, roughly: what a memory budget counts
    /// (shared parts are counted at each place, an overestimate).
    pub fn heap_bytes(&self) -> usize {
        const SLOT: usize = std::mem::size_of::<Value>();
        match self {
            Value::Null | Value::Bool(_) | Value::Int(_) | Value::Float(_) => 0,
            Value::Str(s) => 16 + s.len(),
            Value::Array(a) => 16 + a.iter().map(|v| SLOT + v.heap_bytes()).sum::<usize>(),
            Value::Map(m) => 16 + m.iter().map(|(k, v)| 48 + k.len() + v.heap_bytes()).sum::<usize>(),
        }
    }

    /// Total order used by `min`/`max` aggregates and comparisons: numbers
    /// compare numerically, strings lexically; other mixes are unordered.
    pub fn partial_cmp_value(&self, other: &Value) -> Option<std::cmp::Ordering> {
        match (self, other) {
            (Value::Int(a), Value::Int(b)) => Some(a.cmp(b)),
            (Value::Str(a), Value::Str(b)) => Some(a.cmp(b)),
            (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
            (Value::Float(a), Value::Float(b)) => a.partial_cmp(b),
            (Value::Int(a), Value::Float(b)) => cmp_int_float(*a, *b),
            (Value::Float(a), Value::Int(b)) => cmp_int_float(*b, *a).map(std::cmp::Ordering::reverse),
            _ => None,
        }
    }

    pub fn from_json(v: &serde_json::Value) -> Value {
        match v {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => Value::str(s),
            serde_json::Value::Array(a) => Value::Array(Arc::new(a.iter().map(Value::from_json).collect())),
            serde_json::Value::Object(o) => {
                Value::Map(Arc::new(o.iter().map(|(k, v)| (Arc::from(k.as_str()), Value::from_json(v))).collect()))
            }
        }
    }

    /// Appends a canonical key of the value: two values write the same bytes
    /// exactly when they are the same literal. Unlike `==`, kinds stay
    /// apart (`2` is not `2.0`: they divide differently) and floats compare
    /// by bits (`-0.0` is not `0.0`, a NaN is itself), so that an expression
    /// over one behaves as the same expression over the other in every
    /// operation. Each part is tagged and sized, so keys of different
    /// values never run into each other.
    pub fn write_key(&self, out: &mut Vec<u8>) {
        fn len(n: usize, out: &mut Vec<u8>) {
            out.extend_from_slice(&(n as u64).to_le_bytes());
        }
        match self {
            Value::Null => out.push(0),
            Value::Bool(b) => out.extend_from_slice(&[1, *b as u8]),
            Value::Int(i) => {
                out.push(2);
                out.extend_from_slice(&i.to_le_bytes());
            }
            Value::Float(f) => {
                out.push(3);
                out.extend_from_slice(&f.to_bits().to_le_bytes());
            }
            Value::Str(s) => {
                out.push(4);
                len(s.len(), out);
                out.extend_from_slice(s.as_bytes());
            }
            Value::Array(a) => {
                out.push(5);
                len(a.len(), out);
                for v in a.iter() {
                    v.write_key(out);
                }
            }
            Value::Map(m) => {
                out.push(6);
                len(m.len(), out);
                for (k, v) in m.iter() {
                    len(k.len(), out);
                    out.extend_from_slice(k.as_bytes());
                    v.write_key(out);
                }
            }
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Float(f) => {
                serde_json::Number::from_f64(*f).map(serde_json::Value::Number).unwrap_or(serde_json::Value::Null)
            }
            Value::Str(s) => serde_json::Value::String(s.to_string()),
            Value::Array(a) => serde_json::Value::Array(a.iter().map(Value::to_json).collect()),
            Value::Map(m) => serde_json::Value::Object(m.iter().map(|(k, v)| (k.to_string(), v.to_json())).collect()),
        }
    }
}

/// `i` against `f`, exactly: past 2^53 not every integer is a float, and
/// rounding `i` to a float would make `2^53 + 1` equal `2^53` (as a float)
/// while `2^53` (as an integer) differs from both: equality would not be
/// transitive, and equal values would hash apart.
fn cmp_int_float(i: i64, f: f64) -> Option<std::cmp::Ordering> {
    use std::cmp::Ordering::*;
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if f.is_nan() {
        return None;
    }
    if f >= TWO_63 {
        return Some(Less);
    }
    if f < -TWO_63 {
        return Some(Greater);
    }
    let whole = f.trunc();
    // In range, so the cast is exact.
    Some(i.cmp(&(whole as i64)).then(if f > whole {
        Less
    } else if f < whole {
        Greater
    } else {
        Equal
    }))
}

/// The integer a float equals, if any (what it hashes as).
fn float_as_int(f: f64) -> Option<i64> {
    (f.fract() == 0.0 && (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&f)).then_some(f as i64)
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Str(a), Value::Str(b)) => Arc::ptr_eq(a, b) || a == b,
            (Value::Array(a), Value::Array(b)) => a == b,
            (Value::Map(a), Value::Map(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a == b,
            (Value::Int(_) | Value::Float(_), Value::Int(_) | Value::Float(_)) => {
                self.partial_cmp_value(other) == Some(std::cmp::Ordering::Equal)
            }
            _ => false,
        }
    }
}

impl Eq for Value {}

impl Hash for Value {
    fn hash<H: Hasher>(&self, h: &mut H) {
        match self {
            Value::Null => 0u8.hash(h),
            Value::Bool(b) => b.hash(h),
            Value::Int(i) => i.hash(h),
            // A whole float hashes like the integer it equals.
            Value::Float(f) => match float_as_int(*f) {
                Some(i) => i.hash(h),
                None => f.to_bits().hash(h),
            },
            Value::Str(s) => s.hash(h),
            Value::Array(a) => a.hash(h),
            Value::Map(m) => {
                for (k, v) in m.iter() {
                    k.hash(h);
                    v.hash(h);
                }
            }
        }
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_json())
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_json())
    }
}

/// Longest fact type name.
pub const MAX_TYPE_NAME: usize = 128;

/// Whether `s` can name a fact type: an upper-case ASCII letter, then
/// letters, digits or `_`, at most `MAX_TYPE_NAME` bytes.
pub fn valid_type_name(s: &str) -> bool {
    s.len() <= MAX_TYPE_NAME
        && s.starts_with(|c: char| c.is_ascii_uppercase())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The fields of one fact. Up to two live inline, in the fact itself: no
/// allocation for small facts (a million two-field facts take 60 bytes
/// less each), and no pointer to chase when matching reads them.
#[derive(Clone, Default, PartialEq)]
pub struct Fields(SmallVec<[(Sym, Value); 2]>);

impl Fields {
    pub fn new() -> Fields {
        Fields(SmallVec::new())
    }

    pub fn get(&self, name: Sym) -> Option<&Value> {
        // Facts have few fields: a linear scan beats a binary search here.
        self.0.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    pub fn set(&mut self, name: Sym, value: Value) {
        match self.0.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }

    pub fn remove(&mut self, name: Sym) {
        self.0.retain(|(k, _)| *k != name);
    }

    pub fn iter(&self) -> impl Iterator<Item = (Sym, &Value)> {
        self.0.iter().map(|(k, v)| (*k, v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Heap bytes of the fields, roughly (see `Value::heap_bytes`).
    pub fn heap_bytes(&self) -> usize {
        let spilled = if self.0.spilled() { self.0.capacity() * std::mem::size_of::<(Sym, Value)>() } else { 0 };
        spilled + self.0.iter().map(|(_, v)| v.heap_bytes()).sum::<usize>()
    }

    /// Fields from a JSON object; `None` if `v` is not an object.
    pub fn from_json(v: &serde_json::Value) -> Option<Fields> {
        let obj = v.as_object()?;
        Some(Fields(obj.iter().map(|(k, v)| (Sym::new(k), Value::from_json(v))).collect()))
    }

    pub fn to_json(&self) -> serde_json::Value {
        fields_json(&self.0)
    }
}

fn fields_json(fields: &[(Sym, Value)]) -> serde_json::Value {
    let mut sorted: Vec<_> = fields.iter().map(|(k, v)| (k.name(), v)).collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    serde_json::Value::Object(sorted.into_iter().map(|(k, v)| (k.to_string(), v.to_json())).collect())
}

/// Fields kept for the record (a timeline entry), not matched against: as
/// compact as they come, 16 bytes and one allocation of just their size.
/// Every timeline entry is as large as its largest kind, and a fact change
/// inlining two `Fields` made each of them 200 bytes. Serializes, and prints,
/// as `Fields`.
#[derive(Clone, Default, PartialEq)]
pub struct FieldList(Box<[(Sym, Value)]>);

impl From<Fields> for FieldList {
    fn from(f: Fields) -> FieldList {
        FieldList(f.0.into_iter().collect())
    }
}

impl From<&Fields> for FieldList {
    fn from(f: &Fields) -> FieldList {
        FieldList(f.0.iter().cloned().collect())
    }
}

impl fmt::Debug for FieldList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", fields_json(&self.0))
    }
}

impl FromIterator<(Sym, Value)> for Fields {
    fn from_iter<T: IntoIterator<Item = (Sym, Value)>>(iter: T) -> Self {
        let mut f = Fields::new();
        for (k, v) in iter {
            f.set(k, v);
        }
        f
    }
}

impl fmt::Debug for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_json())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_join_across_int_and_float() {
        use std::collections::hash_map::DefaultHasher;
        let h = |v: &Value| {
            let mut s = DefaultHasher::new();
            v.hash(&mut s);
            s.finish()
        };
        assert_eq!(Value::Int(3), Value::Float(3.0));
        assert_eq!(h(&Value::Int(3)), h(&Value::Float(3.0)));
        assert_ne!(Value::Int(3), Value::str("3"));
        // Past 2^53 an integer is compared with a float exactly (found by
        // the property tests: 2^53 + 1 equalled the float 2^53 and hashed
        // apart from it, while 2^53 did not equal 2^53 + 1).
        let (i, f) = (Value::Int(9_007_199_254_740_993), Value::Float(9_007_199_254_740_992.0));
        assert_ne!(i, f);
        assert_eq!(i.partial_cmp_value(&f), Some(std::cmp::Ordering::Greater));
        assert_eq!(Value::Int(9_007_199_254_740_992), f);
        assert_eq!(h(&Value::Int(9_007_199_254_740_992)), h(&f));
        assert_eq!(Value::Int(i64::MIN), Value::Float(-9_223_372_036_854_775_808.0));
        assert_ne!(Value::Int(i64::MAX), Value::Float(9_223_372_036_854_775_808.0));
        assert_eq!(Value::Int(1).partial_cmp_value(&Value::Float(1.5)), Some(std::cmp::Ordering::Less));
        assert_eq!(Value::Int(-1).partial_cmp_value(&Value::Float(-1.5)), Some(std::cmp::Ordering::Greater));
        assert_eq!(Value::Float(-0.0), Value::Int(0));
        assert_eq!(Value::Int(0).partial_cmp_value(&Value::Float(f64::NAN)), None);
    }

    #[test]
    fn fields_round_trip_json() {
        let j = serde_json::json!({"b": 1, "a": [true, null, "x"], "c": {"d": 2.5}});
        let f = Fields::from_json(&j).unwrap();
        assert_eq!(f.to_json(), j);
        assert_eq!(f.get(Sym::new("b")), Some(&Value::Int(1)));
    }
}
