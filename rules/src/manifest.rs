//! `pack.toml`: the pack's name and version, the functions its rules may
//! call (with timeout and retry policy), optional fact schemas and limits.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::diagnostic::{shown, Code, Diagnostic, SourceMap};
use crate::limits::Explicit;
pub use crate::limits::Limits;
use crate::value::{Fields, Sym, Value};

mod compat;
mod schedule;
pub use compat::{renames, schema_changes, SchemaChange};
use schedule::{schedules, RawSchedule};
pub use schedule::{valid_schedule_name, CatchUp, ScheduleSpec};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub description: String,
    pub functions: BTreeMap<String, FunctionSpec>,
    pub facts: BTreeMap<String, Schema>,
    /// `[facts] strict = true`: every fact type must have a schema (the
    /// built-in `Signal` excepted); `stoa check` and the engine refuse others.
    #[serde(default)]
    pub strict_facts: bool,
    pub limits: Limits,
    /// Which limits the pack sets itself, and where (ceilings reject those
    /// above them and lower the others).
    #[serde(skip)]
    pub limits_set: Explicit,
    /// What signals of each name do to this pack (`[signals."name"]`).
    #[serde(default)]
    pub signals: BTreeMap<String, SignalSub>,
    /// `[schedules.NAME]`: workflows this pack starts on a clock.
    #[serde(default)]
    pub schedules: BTreeMap<String, ScheduleSpec>,
    /// `[tests]`: what `stoa test` requires of the pack's tests.
    #[serde(default)]
    pub tests: TestSettings,
    /// `[run_strategy]`: what a start does while other workflows of the
    /// pack run (enforced by the server that starts them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_strategy: Option<RunStrategy>,
}

/// `[run_strategy]` in pack.toml: what happens to a new workflow of the
/// pack while others of it (of the same tenant) are running.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum RunStrategy {
    /// At most `limit` run at once; later starts wait in a queue, in order.
    Parallel { limit: u32 },
    /// One at a time, in the order they were started.
    Sequential,
    /// One at a time; a failed one stops the queue until a restart of it
    /// completes.
    StrictSequential,
    /// A start while one runs is refused.
    FirstOnly,
    /// A start cancels those running.
    LastOnly,
}

impl RunStrategy {
    /// The modes as written.
    pub const MODES: [&'static str; 5] = ["parallel", "sequential", "strict_sequential", "first_only", "last_only"];

    /// How many may run at once; `None`: no queue (first and last only).
    pub fn limit(self) -> Option<u32> {
        match self {
            RunStrategy::Parallel { limit } => Some(limit),
            RunStrategy::Sequential | RunStrategy::StrictSequential => Some(1),
            RunStrategy::FirstOnly | RunStrategy::LastOnly => None,
        }
    }

    pub fn mode(self) -> &'static str {
        match self {
            RunStrategy::Parallel { .. } => "parallel",
            RunStrategy::Sequential => "sequential",
            RunStrategy::StrictSequential => "strict_sequential",
            RunStrategy::FirstOnly => "first_only",
            RunStrategy::LastOnly => "last_only",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRunStrategy {
    mode: toml::Spanned<String>,
    limit: Option<toml::Spanned<i64>>,
}

fn run_strategy(
    path: &Path,
    map: &SourceMap,
    raw: &toml::Spanned<RawRunStrategy>,
    diags: &mut Vec<Diagnostic>,
) -> Option<RunStrategy> {
    let r = raw.get_ref();
    let mut err = |span: std::ops::Range<usize>, msg: String| {
        diags.push(Diagnostic::error(path, map.pos(span.start), Code::Manifest, msg));
    };
    let limit = match &r.limit {
        Some(l) if (1..=1_000_000).contains(l.get_ref()) => Some(*l.get_ref() as u32),
        Some(l) => {
            err(l.span(), format!("[run_strategy] limit = {}: from 1 to 1000000", l.get_ref()));
            return None;
        }
        None => None,
    };
    let s = match (r.mode.get_ref().as_str(), limit) {
        ("parallel", Some(limit)) => RunStrategy::Parallel { limit },
        ("parallel", None) => {
            err(
                raw.span(),
                "[run_strategy] mode = \"parallel\" needs a `limit` (at most that many run at once)".into(),
            );
            return None;
        }
        (m @ ("sequential" | "strict_sequential" | "first_only" | "last_only"), Some(_)) => {
            let l = r.limit.as_ref().map_or(raw.span(), |l| l.span());
            err(l, format!("[run_strategy] `limit` is for mode \"parallel\"; mode \"{m}\" runs one at a time"));
            return None;
        }
        ("sequential", None) => RunStrategy::Sequential,
        ("strict_sequential", None) => RunStrategy::StrictSequential,
        ("first_only", None) => RunStrategy::FirstOnly,
        ("last_only", None) => RunStrategy::LastOnly,
        (m, _) => {
            err(
                r.mode.span(),
                format!("[run_strategy] mode `{}`: expected one of {}", shown(m), RunStrategy::MODES.join(", ")),
            );
            return None;
        }
    };
    Some(s)
}

/// `[tests]` in pack.toml.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TestSettings {
    /// `stoa test` fails when the tests' coverage (percent, see
    /// docs/rules.md) is below this.
    pub min_coverage: Option<f64>,
}

/// A pack's subscription to one signal name.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct SignalSub {
    /// Start one workflow per signal id, with the signal as its first fact.
    pub start: bool,
    /// Assert the signal as a fact into every running workflow of the pack.
    pub deliver: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FunctionSpec {
    /// Start-to-close timeout of one attempt.
    #[serde(with = "millis")]
    pub timeout: Duration,
    /// A running attempt must heartbeat at least this often (zero: never).
    #[serde(with = "millis", default)]
    pub heartbeat: Duration,
    pub retry: RetryPolicy,
    /// What `call` must pass (a map that fits this schema), if declared:
    /// checked by `stoa check` where the map is written out, and at run
    /// time (defaults filled in) before the call is made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Schema>,
    /// At most this many calls of the function running at once for the
    /// tenant (across its workflows); none: as many as workers take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 means no retry.
    pub max_attempts: u32,
    #[serde(with = "millis")]
    pub initial_backoff: Duration,
    #[serde(with = "millis")]
    pub max_backoff: Duration,
    pub multiplier: f64,
    /// Attempts whose worker was lost (crashed, disconnected) after which
    /// the invocation fails with kind `lost`; none: a lost attempt is
    /// offered again without end, not counted against `max_attempts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lost: Option<u32>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            multiplier: 2.0,
            max_lost: None,
        }
    }
}

impl RetryPolicy {
    /// Backoff before attempt `attempt + 1` (attempts count from 1), without
    /// jitter: `initial_backoff * multiplier^(attempt - 1)`, at most
    /// `max_backoff`. Saturates rather than overflows, whatever the policy
    /// (`Duration::mul_f64` panics on a product past what a `Duration` holds).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = self.initial_backoff.as_secs_f64() * self.multiplier.max(1.0).powi(exp);
        if secs < self.max_backoff.as_secs_f64() {
            Duration::try_from_secs_f64(secs).unwrap_or(self.max_backoff)
        } else {
            self.max_backoff
        }
    }
}

/// The longest duration `pack.toml` takes (a timeout, a heartbeat, a
/// backoff): a year. Anything longer is a mistake, and durations near
/// `u64::MAX` seconds overflow the `Instant` of whoever schedules with them.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// Field types a schema can require.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    String,
    Int,
    Float,
    Number,
    Bool,
    Array,
    Map,
    Any,
}

impl FieldType {
    pub fn name(self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Int => "int",
            FieldType::Float => "float",
            FieldType::Number => "number",
            FieldType::Bool => "bool",
            FieldType::Array => "array",
            FieldType::Map => "map",
            FieldType::Any => "any",
        }
    }

    /// Whether a value of this type may be stored in a field of type `self`.
    pub fn accepts(self, v: &Value) -> bool {
        matches!(
            (self, v),
            (FieldType::Any, _)
                | (FieldType::String, Value::Str(_))
                | (FieldType::Int, Value::Int(_))
                | (FieldType::Float | FieldType::Number, Value::Float(_) | Value::Int(_))
                | (FieldType::Bool, Value::Bool(_))
                | (FieldType::Array, Value::Array(_))
                | (FieldType::Map, Value::Map(_))
        )
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FieldSpec {
    pub ty: FieldType,
    pub optional: bool,
    /// Filled in when a new fact lacks the field (as CLIPS's slot defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// The field's name in earlier versions: an upgrade renames it in the
    /// facts of live workflows (and a rollback renames it back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

impl FieldSpec {
    /// Whether a new fact may leave the field out.
    pub fn may_be_absent(&self) -> bool {
        self.optional || self.default.is_some()
    }
}

/// The fact types the engine asserts itself (`Signal`, and `Cancelled`
/// when a workflow is cancelled): never declared, always allowed, in
/// strict mode too.
pub const BUILTIN_TYPES: &[&str] = &["Signal", "Cancelled"];

/// A fact schema: declared fields with types; unknown fields are rejected.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct Schema {
    pub fields: BTreeMap<String, FieldSpec>,
}

impl Schema {
    /// Sets each defaulted field a new fact lacks (or holds as null).
    pub fn fill_defaults(&self, fields: &mut Fields) {
        for (name, spec) in &self.fields {
            if let Some(d) = &spec.default {
                let k = Sym::new(name);
                if matches!(fields.get(k), None | Some(Value::Null)) {
                    fields.set(k, d.clone());
                }
            }
        }
    }

    /// `violations` of a new fact, its defaults filled in first.
    pub fn violations_new(&self, ty: &str, fields: &Fields) -> Vec<String> {
        if self.fields.values().any(|f| f.default.is_some()) {
            let mut filled = fields.clone();
            self.fill_defaults(&mut filled);
            return self.violations(ty, &filled);
        }
        self.violations(ty, fields)
    }

    /// Checks a whole fact; the message names the field.
    pub fn check(&self, ty: &str, fields: &Fields) -> Result<(), String> {
        match self.violations(ty, fields).into_iter().next() {
            Some(v) => Err(v),
            None => Ok(()),
        }
    }

    /// `check` of a fact a `modify` changed (`before` is the fact as it
    /// was): a field the schema does not know that the fact already held,
    /// unchanged, is kept. It was set under another version of the pack
    /// (a version that added it, then rolled back): a compatible addition
    /// must not fail the workflows that used it.
    pub fn check_modified(&self, ty: &str, fields: &Fields, before: &Fields) -> Result<(), String> {
        match self.violations_carrying(ty, fields, Some(before)).into_iter().next() {
            Some(v) => Err(v),
            None => Ok(()),
        }
    }

    /// Every way a fact violates the schema, each naming its field.
    pub fn violations(&self, ty: &str, fields: &Fields) -> Vec<String> {
        self.violations_carrying(ty, fields, None)
    }

    fn violations_carrying(&self, ty: &str, fields: &Fields, before: Option<&Fields>) -> Vec<String> {
        let mut out = Vec::new();
        for (name, spec) in &self.fields {
            match fields.get(Sym::new(name)) {
                None | Some(Value::Null) if spec.optional => {}
                None => out.push(format!("{ty}.{name} is required by the schema")),
                Some(v) if !spec.ty.accepts(v) => {
                    out.push(format!("{ty}.{name} must be {}, found {} {v}", spec.ty.name(), v.type_name()))
                }
                Some(_) => {}
            }
        }
        for (k, v) in fields.iter() {
            let carried = before.is_some_and(|b| b.get(k) == Some(v));
            if !carried && !self.fields.contains_key(&*k.name()) {
                out.push(format!("{ty}.{k} is not a field of the schema of {ty}"));
            }
        }
        out
    }
}

mod millis {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(serde::Deserialize::deserialize(d)?))
    }
}

// The file format, as written by users.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    pack: RawPack,
    #[serde(default)]
    functions: BTreeMap<String, toml::Spanned<RawFunction>>,
    #[serde(default)]
    facts: BTreeMap<String, toml::Spanned<RawFacts>>,
    #[serde(default)]
    limits: BTreeMap<String, toml::Spanned<toml::Value>>,
    #[serde(default)]
    signals: BTreeMap<String, toml::Spanned<SignalSub>>,
    #[serde(default)]
    schedules: BTreeMap<String, toml::Spanned<RawSchedule>>,
    #[serde(default)]
    tests: Option<toml::Spanned<TestSettings>>,
    #[serde(default)]
    run_strategy: Option<toml::Spanned<RawRunStrategy>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPack {
    name: toml::Spanned<String>,
    version: toml::Spanned<String>,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFunction {
    timeout: Option<toml::Spanned<String>>,
    heartbeat: Option<toml::Spanned<String>>,
    #[serde(default)]
    retry: Option<RawRetry>,
    /// The arguments' schema, written as a fact schema's fields.
    #[serde(default)]
    args: Option<toml::Spanned<RawFacts>>,
    concurrency: Option<toml::Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    max_attempts: Option<u32>,
    initial_backoff: Option<toml::Spanned<String>>,
    max_backoff: Option<toml::Spanned<String>>,
    multiplier: Option<f64>,
    max_lost: Option<u32>,
}

/// An entry of `[facts]`: `strict = true`, or the schema of a type.
enum RawFacts {
    Strict(bool),
    Schema(BTreeMap<String, toml::Spanned<RawField>>),
}

/// A schema field: `"string?"`, or `{ type = "string", default = "new" }`.
enum RawField {
    Short(String),
    Long {
        ty: Option<toml::Spanned<String>>,
        default: Option<toml::Spanned<toml::Value>>,
        from: Option<toml::Spanned<String>>,
    },
}

// By hand rather than `#[serde(untagged)]`, which buffers its input and so
// loses the spans that diagnostics point with.
impl<'de> Deserialize<'de> for RawFacts {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawFacts;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a table of fields (`[facts.Order]`), or `strict = true` under `[facts]`")
            }
            fn visit_bool<E>(self, b: bool) -> Result<RawFacts, E> {
                Ok(RawFacts::Strict(b))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<RawFacts, A::Error> {
                let mut fields = BTreeMap::new();
                while let Some(k) = m.next_key::<String>()? {
                    let v = m.next_value()?;
                    fields.insert(k, v);
                }
                Ok(RawFacts::Schema(fields))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RawField {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawField;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a field type such as \"string\" or \"int?\", or { type = \"string\", default = \"new\" }")
            }
            fn visit_str<E>(self, s: &str) -> Result<RawField, E> {
                Ok(RawField::Short(s.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<RawField, A::Error> {
                let (mut ty, mut default, mut from) = (None, None, None);
                while let Some(k) = m.next_key::<String>()? {
                    match k.as_str() {
                        "type" => ty = Some(m.next_value()?),
                        "default" => default = Some(m.next_value()?),
                        "from" => from = Some(m.next_value()?),
                        other => {
                            return Err(serde::de::Error::unknown_field(other, &["type", "default", "from"]));
                        }
                    }
                }
                Ok(RawField::Long { ty, default, from })
            }
        }
        d.deserialize_any(V)
    }
}

/// Whether `s` can name a pack: 1 to 128 letters, digits, `-`, `_` or `.`.
pub fn valid_pack_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Whether `s` can be a pack version: 1 to 64 characters, none blank or
/// a control character.
pub fn valid_version(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Parses a manifest; on failure returns every problem found.
pub fn parse_manifest(path: &Path, src: &str) -> Result<Manifest, Vec<Diagnostic>> {
    let map = SourceMap::new(src);
    let at = |span: std::ops::Range<usize>| map.pos(span.start);
    let raw: RawManifest = match toml::from_str(src) {
        Ok(r) => r,
        Err(e) => {
            let pos = e.span().map(at).unwrap_or_default();
            let mut msg = crate::testcase::one_line(e.message());
            // A table only its subtables define (`[functions."f".args]`
            // with no `[functions."f"]`) has no place of its own, which the
            // TOML reader reports in its own words.
            if msg.contains("expected a borrowed string") {
                msg = "this table's parent is not written out: add its own header above it (e.g. \
                       `[functions.\"f\"]` before `[functions.\"f\".args]`), or write the table inline"
                    .into();
            }
            return Err(vec![Diagnostic::error(path, pos, Code::Manifest, msg)]);
        }
    };
    let diags = std::cell::RefCell::new(Vec::new());
    let duration = |s: &toml::Spanned<String>| match humantime::parse_duration(s.get_ref()) {
        // Whole milliseconds, as they are kept and used ("1ns" would be
        // stored as 0 and read back as another policy).
        Ok(d) if d <= MAX_DURATION => Some(Duration::from_millis(d.as_nanos().div_ceil(1_000_000) as u64)),
        Ok(_) => {
            diags.borrow_mut().push(Diagnostic::error(
                path,
                at(s.span()),
                Code::Manifest,
                format!("`{}` is longer than a year, the longest duration a pack may set", shown(s.get_ref())),
            ));
            None
        }
        Err(e) => {
            diags.borrow_mut().push(Diagnostic::error(
                path,
                at(s.span()),
                Code::Manifest,
                format!("`{}` is not a duration ({e}); write e.g. \"30s\", \"5m\", \"1h\"", s.get_ref()),
            ));
            None
        }
    };
    let name = raw.pack.name.get_ref().clone();
    let name_ok = valid_pack_name(&name);
    let mut functions = BTreeMap::new();
    for (fname, f) in &raw.functions {
        let span = f.span();
        let f = f.get_ref();
        let d = RetryPolicy::default();
        let retry = match &f.retry {
            None => d,
            Some(r) => RetryPolicy {
                max_attempts: r.max_attempts.unwrap_or(d.max_attempts).max(1),
                max_lost: r.max_lost.map(|n| n.max(1)),
                initial_backoff: r.initial_backoff.as_ref().and_then(duration).unwrap_or(d.initial_backoff),
                max_backoff: r.max_backoff.as_ref().and_then(duration).unwrap_or(d.max_backoff),
                multiplier: match r.multiplier {
                    None => d.multiplier,
                    // Below 1 a backoff would shrink: it stays the same.
                    Some(m) if m.is_finite() => m.max(1.0),
                    Some(m) => {
                        diags.borrow_mut().push(Diagnostic::error(
                            path,
                            at(span.clone()),
                            Code::Manifest,
                            format!("function `{}`: retry multiplier {m} is not a finite number", shown(fname)),
                        ));
                        d.multiplier
                    }
                },
            },
        };
        let timeout = f.timeout.as_ref().and_then(duration).unwrap_or(Duration::from_secs(300));
        if fname.is_empty() {
            diags.borrow_mut().push(Diagnostic::error(
                path,
                at(span),
                Code::Manifest,
                "a function name cannot be empty",
            ));
        }
        let heartbeat = f.heartbeat.as_ref().and_then(duration).unwrap_or(Duration::ZERO);
        let args = match f.args.as_ref().map(|a| (a.span(), a.get_ref())) {
            None => None,
            Some((_, RawFacts::Schema(fields))) => {
                Some(schema_of(path, &map, &args_label(fname), fields, &mut diags.borrow_mut()))
            }
            Some((span, RawFacts::Strict(_))) => {
                let msg = format!(
                    "function `{}`: args is a table of fields, e.g. args = {{ order = \"string\" }}",
                    shown(fname)
                );
                diags.borrow_mut().push(Diagnostic::error(path, at(span), Code::Manifest, msg));
                None
            }
        };
        let concurrency = match &f.concurrency {
            None => None,
            Some(c) if (1..=1_000_000).contains(c.get_ref()) => Some(*c.get_ref() as u32),
            Some(c) => {
                diags.borrow_mut().push(Diagnostic::error(
                    path,
                    at(c.span()),
                    Code::Manifest,
                    format!("function `{}`: concurrency must be from 1 to 1000000, not {}", shown(fname), c.get_ref()),
                ));
                None
            }
        };
        functions.insert(fname.clone(), FunctionSpec { timeout, heartbeat, retry, args, concurrency });
    }
    let mut diags = diags.into_inner();
    let (facts, strict_facts) = fact_schemas(path, &map, &raw.facts, &mut diags);
    if !name_ok {
        diags.push(Diagnostic::error(
            path,
            at(raw.pack.name.span()),
            Code::Manifest,
            "a pack name is 1 to 128 letters, digits, `-`, `_` or `.`",
        ));
    }
    if !valid_version(raw.pack.version.get_ref()) {
        diags.push(Diagnostic::error(
            path,
            at(raw.pack.version.span()),
            Code::Manifest,
            "a pack version is 1 to 64 characters, without spaces",
        ));
    }
    for (sig, sub) in &raw.signals {
        if !sub.get_ref().start && !sub.get_ref().deliver {
            diags.push(Diagnostic::error(
                path,
                at(sub.span()),
                Code::Manifest,
                format!("signal `{sig}`: set `start = true` (a workflow per signal), `deliver = true` (into running workflows), or both"),
            ));
        }
    }
    if let Some(t) = &raw.tests {
        if let Some(m) = t.get_ref().min_coverage.filter(|m| !(0.0..=100.0).contains(m)) {
            diags.push(Diagnostic::error(
                path,
                at(t.span()),
                Code::Manifest,
                format!("[tests] min_coverage = {m}: a coverage is a percentage, from 0 to 100"),
            ));
        }
    }
    let (limits, limits_set) = limits(path, &map, &raw.limits, &mut diags);
    let schedules = schedules(path, &map, &raw.schedules, &facts, strict_facts, &mut diags);
    let run_strategy = raw.run_strategy.as_ref().and_then(|r| run_strategy(path, &map, r, &mut diags));
    if !diags.is_empty() {
        diags.sort_by_key(|d| d.pos);
        return Err(diags);
    }
    Ok(Manifest {
        name,
        version: raw.pack.version.into_inner(),
        description: raw.pack.description,
        functions,
        facts,
        strict_facts,
        limits,
        limits_set,
        signals: raw.signals.into_iter().map(|(k, v)| (k, v.into_inner())).collect(),
        schedules,
        tests: raw.tests.map(|t| t.into_inner()).unwrap_or_default(),
        run_strategy,
    })
}

/// `[facts]`: a schema per type, and whether every type needs one.
fn fact_schemas(
    path: &Path,
    map: &SourceMap,
    raw: &BTreeMap<String, toml::Spanned<RawFacts>>,
    diags: &mut Vec<Diagnostic>,
) -> (BTreeMap<String, Schema>, bool) {
    let at = |span: std::ops::Range<usize>| map.pos(span.start);
    let mut facts = BTreeMap::new();
    let mut strict = false;
    for (ty, entry) in raw {
        let fields = match (ty.as_str(), entry.get_ref()) {
            ("strict", RawFacts::Strict(b)) => {
                strict = *b;
                continue;
            }
            (_, RawFacts::Schema(fields)) if crate::value::valid_type_name(ty) => fields,
            (_, RawFacts::Strict(_)) => {
                let msg = format!("[facts] {}: the only setting under [facts] is `strict`", shown(ty));
                diags.push(Diagnostic::error(path, at(entry.span()), Code::Manifest, msg));
                continue;
            }
            (_, RawFacts::Schema(fields)) => {
                // The table itself: it may have no field to point at (found by
                // the property tests: `[facts."a"]` alone was reported at 0:0).
                let (shown, rule) = (shown(ty), crate::sandbox::TYPE_NAME_RULE);
                let msg = if ty == "strict" {
                    "[facts] strict is `true` or `false`".to_string()
                } else {
                    format!("[facts.{shown}]: {rule}")
                };
                diags.push(Diagnostic::error(path, at(entry.span()), Code::Manifest, msg));
                fields
            }
        };
        facts.insert(ty.clone(), schema_of(path, map, ty, fields, diags));
    }
    (facts, strict)
}

/// How diagnostics and errors name the arguments of function `f`.
pub fn args_label(f: &str) -> String {
    format!("{f}(args)")
}

/// The schema `fields` declare; `owner` (a fact type, or a function's
/// arguments) names it in diagnostics.
fn schema_of(
    path: &Path,
    map: &SourceMap,
    owner: &str,
    fields: &BTreeMap<String, toml::Spanned<RawField>>,
    diags: &mut Vec<Diagnostic>,
) -> Schema {
    let at = |span: std::ops::Range<usize>| map.pos(span.start);
    let ty = owner;
    {
        let mut schema = Schema::default();
        for (fname, spec) in fields {
            let (text, span, default, from) = match spec.get_ref() {
                RawField::Short(t) => (t.trim(), spec.span(), None, None),
                RawField::Long { ty: Some(t), default, from } => {
                    (t.get_ref().trim(), t.span(), default.as_ref(), from.as_ref())
                }
                RawField::Long { ty: None, .. } => {
                    let msg = format!("{ty}.{fname}: a field written as a table needs `type`, e.g. {{ type = \"string\", default = \"new\" }}");
                    diags.push(Diagnostic::error(path, at(spec.span()), Code::Manifest, msg));
                    continue;
                }
            };
            let (base, optional) = match text.strip_suffix('?') {
                Some(b) => (b, true),
                None => (text, false),
            };
            let parsed: Result<FieldType, _> = serde_json::from_value(serde_json::Value::String(base.to_string()));
            let Ok(t) = parsed else {
                diags.push(Diagnostic::error(
                    path,
                    at(span),
                    Code::Manifest,
                    format!("unknown field type `{}` for {ty}.{fname}; expected string, int, float, number, bool, array, map or any (add `?` for optional)", shown(text)),
                ));
                continue;
            };
            let default = match default {
                None => None,
                Some(d) => match d.get_ref().clone().try_into::<Value>() {
                    Ok(v) if !matches!(v, Value::Null) && t.accepts(&v) => Some(v),
                    Ok(v) => {
                        let msg = format!("{ty}.{fname}: the default {} is not {}", shown(&v.to_string()), t.name());
                        diags.push(Diagnostic::error(path, at(d.span()), Code::Manifest, msg));
                        None
                    }
                    Err(e) => {
                        let msg = format!("{ty}.{fname}: the default is not a fact value: {}", e.message());
                        diags.push(Diagnostic::error(path, at(d.span()), Code::Manifest, msg));
                        None
                    }
                },
            };
            let from = match from {
                Some(f) if f.get_ref() == fname || fields.contains_key(f.get_ref()) => {
                    let msg = format!("{ty}.{fname}: `from = \"{}\"` names a field of this schema; it names the field's old name, gone from the schema", shown(f.get_ref()));
                    diags.push(Diagnostic::error(path, at(f.span()), Code::Manifest, msg));
                    None
                }
                Some(f) => Some(f.get_ref().clone()),
                None => None,
            };
            schema.fields.insert(fname.clone(), FieldSpec { ty: t, optional, default, from });
        }
        schema
    }
}

/// `[limits]`: known names, whole numbers from 1 (a zero would mean
/// "unlimited" to the script engine).
fn limits(
    path: &Path,
    map: &SourceMap,
    raw: &BTreeMap<String, toml::Spanned<toml::Value>>,
    diags: &mut Vec<Diagnostic>,
) -> (Limits, Explicit) {
    let mut limits = Limits::default();
    let mut explicit = Explicit::default();
    let known = Limits::default().entries().map(|(k, _)| k);
    for (name, v) in raw {
        let pos = map.pos(v.span().start);
        let Some(known) = known.iter().find(|k| **k == name) else {
            diags.push(Diagnostic::error(
                path,
                pos,
                Code::Manifest,
                format!("unknown limit `{name}`; expected one of {}", known.map(|k| format!("`{k}`")).join(", ")),
            ));
            continue;
        };
        match v.get_ref().as_integer() {
            Some(n) if n >= 1 => {
                limits.set(known, n as u64);
                explicit.0.insert(known, pos);
            }
            _ => diags.push(Diagnostic::error(
                path,
                pos,
                Code::Limit,
                format!("[limits] {name} must be a whole number from 1 up (there is no unlimited)"),
            )),
        }
    }
    (limits, explicit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(src: &str, expect: expect_test::Expect) {
        let got = match parse_manifest(Path::new("pack.toml"), src) {
            Ok(m) => format!("{m:?}"),
            Err(ds) => ds.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"),
        };
        expect.assert_eq(&got);
    }

    #[test]
    fn bad_durations_and_types_are_all_reported() {
        check(
            r#"
[pack]
name = "p"
version = "1"

[functions."media.encode"]
timeout = "ten minutes"
retry = { max_attempts = 5, initial_backoff = "2x" }

[facts.Chunk]
index = "integer"
"#,
            expect_test::expect![[r#"
                pack.toml:7:11: error[E0006]: `ten minutes` is not a duration (expected number at 0); write e.g. "30s", "5m", "1h"
                pack.toml:8:47: error[E0006]: `2x` is not a duration (unknown time unit "x", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations)); write e.g. "30s", "5m", "1h"
                pack.toml:11:9: error[E0006]: unknown field type `integer` for Chunk.index; expected string, int, float, number, bool, array, map or any (add `?` for optional)"#]],
        );
    }

    #[test]
    fn function_args_declare_a_schema_and_a_headerless_parent_is_explained() {
        let src = "[pack]\nname = \"p\"\nversion = \"1\"\n[functions.f]\n[functions.f.args]\nid = \"string\"\nn = { type = \"int\", default = 2 }\n";
        let m = parse_manifest(Path::new("pack.toml"), src).expect("parses");
        let args = m.functions["f"].args.as_ref().expect("an args schema");
        assert_eq!(args.fields["n"].default, Some(Value::Int(2)));
        assert!(!args.fields["id"].optional);
        check(
            "[pack]\nname = \"p\"\nversion = \"1\"\n[functions.f.args]\nid = \"str\"\n",
            expect_test::expect![[
                r#"pack.toml:4:14: error[E0006]: this table's parent is not written out: add its own header above it (e.g. `[functions."f"]` before `[functions."f".args]`), or write the table inline"#
            ]],
        );
        check(
            "[pack]\nname = \"p\"\nversion = \"1\"\n[functions.f]\nargs = { id = \"str\" }\n",
            expect_test::expect![[
                r#"pack.toml:5:15: error[E0006]: unknown field type `str` for f(args).id; expected string, int, float, number, bool, array, map or any (add `?` for optional)"#
            ]],
        );
    }

    #[test]
    fn unknown_keys_are_errors_with_position() {
        check(
            "[pack]\nname = \"p\"\nversion = \"1\"\nauthor = \"me\"\n",
            expect_test::expect![[
                r#"pack.toml:4:1: error[E0006]: unknown field `author`, expected one of `name`, `version`, `description`"#
            ]],
        );
    }

    #[test]
    fn schedules_are_parsed_and_checked() {
        let m = parse_manifest(
            Path::new("pack.toml"),
            r#"
[pack]
name = "p"
version = "1"

[schedules.nightly]
cron = "0 30 2 * * *"
timezone = "Europe/Paris"
facts = [{ type = "Report", fields = { kind = "daily" } }]
catch_up = "all"
max_catch_up = 3
"#,
        )
        .unwrap();
        let s = &m.schedules["nightly"];
        assert_eq!(
            (s.cron.as_str(), s.timezone.as_str(), s.catch_up, s.max_catch_up),
            ("0 30 2 * * *", "Europe/Paris", CatchUp::All, Some(3))
        );
        assert_eq!(s.facts[0].ty, "Report");
        check(
            r#"
[pack]
name = "p"
version = "1"

[schedules.a]
cron = "0 61 * * *"
timezone = "Europe/Pariss"

[schedules.b]
cron = "@hourly"
catch_up = "twice"
max_catch_up = 0

[schedules."bad name"]
cron = "@daily"
"#,
            expect_test::expect![[r#"
                pack.toml:7:8: error[E0011]: schedule `a`: cron: `0 61 * * *`: hour field `61`: 61 is out of range 0-23
                pack.toml:8:12: error[E0011]: schedule `a`: timezone: `Europe/Pariss` is not a time zone of the IANA database; write e.g. "UTC" or "Europe/Paris"
                pack.toml:12:12: error[E0011]: schedule `b`: catch_up `twice`: expected "skip", "one" or "all"
                pack.toml:13:16: error[E0011]: schedule `b`: max_catch_up must be between 1 and 100000
                pack.toml:15:1: error[E0011]: schedule name `bad name`: use letters, digits, `-`, `_` or `.` (at most 128)"#]],
        );
    }

    #[test]
    fn limits_are_whole_numbers_from_one_and_known_by_name() {
        check(
            "[pack]\nname = \"p\"\nversion = \"1\"\n[limits]\nmax_operations = 0\nmax_opps = 3\nmax_turn_ms = \"1s\"\n",
            expect_test::expect![[r#"
                pack.toml:5:18: error[E0012]: [limits] max_operations must be a whole number from 1 up (there is no unlimited)
                pack.toml:6:12: error[E0006]: unknown limit `max_opps`; expected one of `max_firings_per_turn`, `max_operations`, `max_call_depth`, `max_string_size`, `max_array_size`, `max_map_size`, `max_facts`, `max_turn_ms`, `max_memory_mb`
                pack.toml:7:15: error[E0012]: [limits] max_turn_ms must be a whole number from 1 up (there is no unlimited)"#]],
        );
        let m = parse_manifest(
            Path::new("pack.toml"),
            "[pack]\nname = \"p\"\nversion = \"1\"\n[limits]\nmax_turn_ms = 50\n",
        )
        .unwrap();
        assert_eq!((m.limits.max_turn_ms, m.limits.max_operations), (50, Limits::default().max_operations));
        assert_eq!(m.limits_set.0.keys().copied().collect::<Vec<_>>(), ["max_turn_ms"]);
    }

    /// Inputs the property tests (rules/tests/properties) found.
    #[test]
    fn hostile_values_found_by_the_property_tests() {
        check(
            r#"[pack]
name = "p"
version = "1"

[functions.a]
timeout = "600000000 years"
retry = { multiplier = nan, max_backoff = "18446744073709551615s" }

[functions.b]
retry = { multiplier = inf }

[facts."a"]

[schedules.s]
cron = "@every 300000000 years"
facts = [{ type = "job", fields = { _id = 1 } }, { type = "Job", fields = { n = "x" } }]

[facts.Job]
n = "int"
"#,
            expect_test::expect![[r#"
                pack.toml:5:1: error[E0006]: function `a`: retry multiplier NaN is not a finite number
                pack.toml:6:11: error[E0006]: `600000000 years` is longer than a year, the longest duration a pack may set
                pack.toml:7:43: error[E0006]: `18446744073709551615s` is longer than a year, the longest duration a pack may set
                pack.toml:9:1: error[E0006]: function `b`: retry multiplier inf is not a finite number
                pack.toml:12:1: error[E0006]: [facts.a]: a fact type is an upper-case letter, then letters, digits or `_` (at most 128)
                pack.toml:15:8: error[E0011]: schedule `s`: cron: `@every 300000000 years`: the interval must be at most 100 years
                pack.toml:16:10: error[E0011]: schedule `s`: `job` is not a fact type: a fact type is an upper-case letter, then letters, digits or `_` (at most 128)
                pack.toml:16:10: error[E0011]: schedule `s`: field `_id` starts with `_`, which is reserved
                pack.toml:16:50: error[E0011]: schedule `s`: Job.n must be int, found string "x""#]],
        );
        // Durations are whole milliseconds, as they are kept.
        let m = parse_manifest(
            Path::new("pack.toml"),
            "[pack]\nname = \"p\"\nversion = \"1\"\n[functions.f]\ntimeout = \"1ns\"\nretry = { multiplier = 0.5 }\n",
        )
        .unwrap();
        assert_eq!(m.functions["f"].timeout, Duration::from_millis(1));
        assert_eq!(m.functions["f"].retry.multiplier, 1.0);
    }

    #[test]
    fn backoff_saturates_instead_of_overflowing() {
        // `Duration::mul_f64` panicked past what a `Duration` holds: with the
        // default multiplier at attempt 66, at once with `inf`.
        let r = RetryPolicy::default();
        assert_eq!(r.backoff(66), r.max_backoff);
        assert_eq!(r.backoff(u32::MAX), r.max_backoff);
        assert_eq!(r.backoff(2), Duration::from_secs(2));
        let inf = RetryPolicy { multiplier: f64::INFINITY, max_backoff: Duration::MAX, ..r.clone() };
        assert_eq!(inf.backoff(3), Duration::MAX);
        let nan = RetryPolicy { multiplier: f64::NAN, ..r };
        assert_eq!(nan.backoff(5), Duration::from_secs(1));
    }

    #[test]
    fn defaults_are_of_their_field_type_and_strict_is_a_bool() {
        check(
            r#"[pack]
name = "p"
version = "1"

[facts]
strict = "yes"
"#,
            expect_test::expect![[
                r#"pack.toml:6:10: error[E0006]: invalid type: string "yes", expected a table of fields (`[facts.Order]`), or `strict = true` under `[facts]`"#
            ]],
        );
        check(
            r#"[pack]
name = "p"
version = "1"

[facts]
strict = true

[facts.Order]
status = { type = "string", default = 3 }
tries = { default = 0 }
note = { type = "strin?" }
at = { type = "int", default = 2026-01-01 }
"#,
            expect_test::expect![[r#"
                pack.toml:9:39: error[E0006]: Order.status: the default 3 is not string
                pack.toml:10:9: error[E0006]: Order.tries: a field written as a table needs `type`, e.g. { type = "string", default = "new" }
                pack.toml:11:17: error[E0006]: unknown field type `strin?` for Order.note; expected string, int, float, number, bool, array, map or any (add `?` for optional)
                pack.toml:12:32: error[E0006]: Order.at: the default "2026-01-01" is not int"#]],
        );
        check(
            "[pack]\nname = \"p\"\nversion = \"1\"\n[facts.O]\ns = { type = \"string\", defualt = \"x\" }\n",
            expect_test::expect![
                "pack.toml:5:5: error[E0006]: unknown field `defualt`, expected one of `type`, `default`, `from`"
            ],
        );
        let m = parse_manifest(
            Path::new("pack.toml"),
            "[pack]\nname = \"p\"\nversion = \"1\"\n[facts]\nstrict = true\n[facts.O]\ns = { type = \"string?\", default = \"new\" }\n",
        )
        .unwrap();
        assert!(m.strict_facts);
        let s = &m.facts["O"].fields["s"];
        assert_eq!((s.ty, s.optional, s.default.clone()), (FieldType::String, true, Some(Value::str("new"))));
    }

    #[test]
    fn a_modified_fact_keeps_fields_it_had_that_the_schema_does_not_know() {
        let mut s = Schema::default();
        s.fields.insert("n".into(), FieldSpec { ty: FieldType::Int, optional: false, default: None, from: None });
        let f = |j: serde_json::Value| Fields::from_json(&j).unwrap();
        let before = f(serde_json::json!({"n": 1, "extra": true}));
        assert_eq!(s.check_modified("C", &f(serde_json::json!({"n": 2, "extra": true})), &before), Ok(()));
        // Writing the unknown field, or a new one, is refused as ever.
        for after in [serde_json::json!({"n": 2, "extra": false}), serde_json::json!({"n": 2, "other": 1})] {
            assert!(s.check_modified("C", &f(after), &before).unwrap_err().contains("is not a field of the schema"));
        }
        assert!(s.check("C", &before).is_err(), "a new fact gets no such leeway");
    }

    #[test]
    fn schema_names_the_field() {
        let mut s = Schema::default();
        s.fields.insert("index".into(), FieldSpec { ty: FieldType::Int, optional: false, default: None, from: None });
        let f = Fields::from_json(&serde_json::json!({"index": "3"})).unwrap();
        assert_eq!(s.check("Chunk", &f).unwrap_err(), "Chunk.index must be int, found string \"3\"");
    }
}
