//! `pack.toml`: generated manifests with every section (functions and
//! retry, fact schemas, limits, signals, schedules) and hostile values, then
//! mangled. Parsing never panics or hangs, diagnostics are inside the file,
//! and a manifest that parses holds only sane values: limits from 1 up,
//! bounded durations, finite multipliers, schedules whose next tick comes.

use std::path::Path;
use std::time::Duration;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use stoa_rules::cron::Spec;
use stoa_rules::manifest::{parse_manifest, Manifest, MAX_DURATION};

use crate::mutate::{apply, mutations, TOML_TOKENS};
use crate::support::{bounded, check, check_file_diagnostics};

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn name() -> BoxedStrategy<String> {
    prop_oneof![
        6 => "[a-z][a-z0-9._-]{0,12}",
        1 => Just(String::new()),
        1 => "\\PC{0,10}",
        1 => Just("x".repeat(200)),
        1 => select(&["a b", "a/b", "..", "é", "\u{0}", "_"][..]).prop_map(String::from),
    ]
    .boxed()
}

pub fn duration() -> BoxedStrategy<String> {
    prop_oneof![
        4 => select(&["30s", "5m", "1h 30m", "0s", "1ms", "10d", "1y"][..]).prop_map(String::from),
        3 => "[0-9]{1,24} ?(ns|us|ms|s|sec|m|min|h|hours|d|days|w|weeks|M|months|y|years)",
        1 => select(&["", "-1s", "1e9s", "ten minutes", "584942417355 years", "600000000 years", "18446744073709551615s"][..])
            .prop_map(String::from),
        1 => "\\PC{0,8}",
    ]
    .boxed()
}

fn toml_int() -> BoxedStrategy<String> {
    prop_oneof![
        4 => (1i64..100_000).prop_map(|i| i.to_string()),
        2 => any::<i64>().prop_map(|i| i.to_string()),
        2 => select(&["0", "-1", "9223372036854775807", "-9223372036854775808", "4294967296", "1.5", "\"3\"", "true", "[1]", "nan", "inf", "{ a = 1 }"][..])
            .prop_map(String::from),
    ]
    .boxed()
}

fn toml_float() -> BoxedStrategy<String> {
    prop_oneof![
        2 => (1.0f64..10.0).prop_map(|f| format!("{f:?}")),
        2 => any::<f64>().prop_map(|f| toml::Value::Float(f).to_string()),
        2 => select(&["nan", "inf", "-inf", "-0.0", "0.0", "1e308", "-2.0", "1", "\"2\""][..]).prop_map(String::from),
    ]
    .boxed()
}

fn function() -> BoxedStrategy<String> {
    (
        name(),
        proptest::option::of(duration()),
        proptest::option::of(duration()),
        proptest::option::of((
            proptest::option::of(toml_int()),
            proptest::option::of(duration()),
            proptest::option::of(duration()),
            proptest::option::of(toml_float()),
        )),
    )
        .prop_map(|(n, timeout, heartbeat, retry)| {
            let mut s = format!("\n[functions.{}]\n", toml_str(&n));
            if let Some(t) = timeout {
                s.push_str(&format!("timeout = {}\n", toml_str(&t)));
            }
            if let Some(h) = heartbeat {
                s.push_str(&format!("heartbeat = {}\n", toml_str(&h)));
            }
            if let Some((a, i, m, x)) = retry {
                let mut parts = Vec::new();
                if let Some(a) = a {
                    parts.push(format!("max_attempts = {a}"));
                }
                if let Some(i) = i {
                    parts.push(format!("initial_backoff = {}", toml_str(&i)));
                }
                if let Some(m) = m {
                    parts.push(format!("max_backoff = {}", toml_str(&m)));
                }
                if let Some(x) = x {
                    parts.push(format!("multiplier = {x}"));
                }
                s.push_str(&format!("retry = {{ {} }}\n", parts.join(", ")));
            }
            s
        })
        .boxed()
}

fn schema() -> BoxedStrategy<String> {
    let ty = prop_oneof![
        4 => select(&["string", "int", "float", "number", "bool", "array", "map", "any", "string?", "int?"][..]).prop_map(String::from),
        1 => "\\PC{0,6}",
    ];
    (prop_oneof![4 => "[A-Z][a-z]{0,6}", 1 => name()], vec((prop_oneof![4 => "[a-z]{1,6}", 1 => name()], ty), 0..4))
        .prop_map(|(t, fields)| {
            let mut s = format!("\n[facts.{}]\n", toml_str(&t));
            for (f, ty) in fields {
                s.push_str(&format!("{} = {}\n", toml_str(&f), toml_str(&ty)));
            }
            s
        })
        .boxed()
}

const LIMITS: &[&str] = &[
    "max_firings_per_turn",
    "max_operations",
    "max_call_depth",
    "max_string_size",
    "max_array_size",
    "max_map_size",
    "max_facts",
    "max_turn_ms",
    "max_memory_mb",
];

fn limits() -> BoxedStrategy<String> {
    vec((prop_oneof![8 => select(LIMITS).prop_map(String::from), 1 => name()], toml_int()), 0..6)
        .prop_map(|entries| {
            let mut s = "\n[limits]\n".to_string();
            let mut seen = std::collections::BTreeSet::new();
            for (k, v) in entries {
                if seen.insert(k.clone()) {
                    s.push_str(&format!("{} = {v}\n", toml_str(&k)));
                }
            }
            s
        })
        .boxed()
}

fn signal() -> BoxedStrategy<String> {
    (name(), proptest::option::of(any::<bool>()), proptest::option::of(any::<bool>()), any::<bool>())
        .prop_map(|(n, start, deliver, extra)| {
            let mut s = format!("\n[signals.{}]\n", toml_str(&n));
            if let Some(b) = start {
                s.push_str(&format!("start = {b}\n"));
            }
            if let Some(b) = deliver {
                s.push_str(&format!("deliver = {b}\n"));
            }
            if extra {
                s.push_str("later = true\n");
            }
            s
        })
        .boxed()
}

fn fact_spec() -> BoxedStrategy<String> {
    (
        prop_oneof![4 => "[A-Z][a-z]{0,6}", 1 => name()],
        vec((prop_oneof![4 => "[a-z]{1,6}", 1 => Just("_id".to_string()), 1 => name()], toml_int()), 0..3),
    )
        .prop_map(|(t, fields)| {
            let f: Vec<String> = fields.into_iter().map(|(k, v)| format!("{} = {v}", toml_str(&k))).collect();
            format!("{{ type = {}, fields = {{ {} }} }}", toml_str(&t), f.join(", "))
        })
        .boxed()
}

fn schedule() -> BoxedStrategy<String> {
    (
        name(),
        crate::cron::expression(),
        proptest::option::of(crate::cron::time_zone()),
        proptest::option::of(
            prop_oneof![4 => select(&["skip", "one", "all", ""][..]).prop_map(String::from), 1 => name()],
        ),
        proptest::option::of(toml_int()),
        proptest::option::of(vec(fact_spec(), 0..3)),
    )
        .prop_map(|(n, cron, tz, catch_up, max, facts)| {
            let mut s = format!("\n[schedules.{}]\ncron = {}\n", toml_str(&n), toml_str(&cron));
            if let Some(tz) = tz {
                s.push_str(&format!("timezone = {}\n", toml_str(&tz)));
            }
            if let Some(c) = catch_up {
                s.push_str(&format!("catch_up = {}\n", toml_str(&c)));
            }
            if let Some(m) = max {
                s.push_str(&format!("max_catch_up = {m}\n"));
            }
            if let Some(f) = facts {
                s.push_str(&format!("facts = [{}]\n", f.join(", ")));
            }
            s
        })
        .boxed()
}

pub fn manifest() -> BoxedStrategy<String> {
    (
        (name(), prop_oneof![4 => "[0-9]{1,3}(\\.[0-9]{1,3}){0,2}", 1 => name()], proptest::option::of("\\PC{0,20}")),
        vec(function(), 0..3),
        vec(schema(), 0..2),
        proptest::option::of(limits()),
        vec(signal(), 0..2),
        vec(schedule(), 0..3),
    )
        .prop_map(|((n, v, d), functions, schemas, limits, signals, schedules)| {
            let mut s = format!("[pack]\nname = {}\nversion = {}\n", toml_str(&n), toml_str(&v));
            if let Some(d) = d {
                s.push_str(&format!("description = {}\n", toml_str(&d)));
            }
            for part in functions.iter().chain(&schemas).chain(&limits).chain(&signals).chain(&schedules) {
                s.push_str(part);
            }
            s
        })
        .boxed()
}

/// What a parsed manifest must hold, whatever its text was.
fn sane(m: &Manifest) -> Result<(), TestCaseError> {
    for (name, v) in m.limits.entries() {
        prop_assert!(v >= 1, "[limits] {} = {} in a parsed manifest", name, v);
        prop_assert!(v <= i64::MAX as u64, "[limits] {} = {}", name, v);
    }
    for (name, f) in &m.functions {
        let r = &f.retry;
        prop_assert!(r.max_attempts >= 1, "function {}: max_attempts {}", name, r.max_attempts);
        prop_assert!(r.multiplier.is_finite() && r.multiplier >= 1.0, "function {}: multiplier {}", name, r.multiplier);
        for d in [f.timeout, f.heartbeat, r.initial_backoff, r.max_backoff] {
            prop_assert!(d <= MAX_DURATION, "function {}: a duration of {:?}", name, d);
        }
        // What the dispatcher computes before each retry.
        for attempt in [0, 1, 2, 30, 64, 65, 1100, r.max_attempts, u32::MAX] {
            let b = r.backoff(attempt);
            prop_assert!(b <= r.max_backoff.max(r.initial_backoff), "backoff {:?} of attempt {}", b, attempt);
        }
    }
    for (name, s) in &m.schedules {
        let spec =
            Spec::parse(&s.cron, &s.timezone).map_err(|e| TestCaseError::fail(format!("schedule {name}: {e}")))?;
        let now = 1_767_225_600_000; // 2026-01-01
        if let Some(next) = spec.next_after(now) {
            prop_assert!(next > now, "schedule {}: next tick {} is not after {}", name, next, now);
        }
        for f in &s.facts {
            prop_assert!(stoa_rules::value::valid_type_name(&f.ty), "schedule {}: fact type {:?}", name, f.ty);
            for (k, _) in f.fields.iter() {
                prop_assert!(!k.name().starts_with('_'), "schedule {}: reserved field {}", name, k);
            }
        }
    }
    // A manifest serializes (JSON here): it must come back the same.
    let json = serde_json::to_string(m).map_err(|e| TestCaseError::fail(format!("to JSON: {e}")))?;
    let back: Manifest = serde_json::from_str(&json).map_err(|e| TestCaseError::fail(format!("from JSON: {e}")))?;
    prop_assert_eq!(&back.functions, &m.functions);
    prop_assert_eq!(&back.limits, &m.limits);
    Ok(())
}

fn parse_checked(text: String) -> Result<(), TestCaseError> {
    let t = text.clone();
    let parsed = bounded("parse_manifest", move || parse_manifest(Path::new("pack.toml"), &t));
    match parsed {
        Ok(m) => sane(&m),
        Err(diags) => {
            prop_assert!(!diags.is_empty(), "refused without a diagnostic");
            check_file_diagnostics(Path::new("pack.toml"), &text, &diags)
        }
    }
}

#[test]
fn generated_manifests_parse_to_sane_values_or_say_where_they_are_wrong() {
    check("generated manifests", 256, manifest(), parse_checked);
}

#[test]
fn mangled_manifests_never_panic_or_point_outside_the_file() {
    check("mangled manifests", 256, (manifest(), mutations(TOML_TOKENS, 6)), |(text, muts)| {
        let mut bytes = text.into_bytes();
        for m in &muts {
            apply(&mut bytes, m);
        }
        parse_checked(String::from_utf8_lossy(&bytes).into_owned())
    });
}

#[test]
fn deeply_nested_toml_is_refused_not_overflowed() {
    let n = 100_000;
    for (what, text) in [
        ("arrays", format!("[pack]\nname = \"p\"\nversion = \"1\"\ndescription = {}1{}\n", "[".repeat(n), "]".repeat(n))),
        ("inline tables", format!("[pack]\nname = \"p\"\nversion = \"1\"\nx = {}1{}\n", "{a=".repeat(n), "}".repeat(n))),
        (
            "schedule facts",
            format!(
                "[pack]\nname = \"p\"\nversion = \"1\"\n[schedules.s]\ncron = \"@daily\"\nfacts = [{{ type = \"A\", fields = {{ a = {}1{} }} }}]\n",
                "[".repeat(n),
                "]".repeat(n)
            ),
        ),
        ("dotted keys", format!("[pack]\nname = \"p\"\nversion = \"1\"\n[limits]\n{} = 1\n", vec!["a"; n].join("."))),
        ("table headers", format!("[{}]\n", vec!["a"; n].join("."))),
    ] {
        let t = text.clone();
        let diags = bounded(what, move || parse_manifest(Path::new("pack.toml"), &t)).expect_err(what);
        check_file_diagnostics(Path::new("pack.toml"), &text, &diags).unwrap_or_else(|e| panic!("{what}: {e}"));
    }
}

#[test]
fn limits_are_never_zero_or_negative() {
    check("limits", 256, (select(LIMITS), any::<i64>()), |(name, v)| {
        let text = format!("[pack]\nname = \"p\"\nversion = \"1\"\n[limits]\n{name} = {v}\n");
        match parse_manifest(Path::new("pack.toml"), &text) {
            Ok(m) => {
                let got = m.limits.entries().into_iter().find(|(k, _)| *k == name).map(|(_, v)| v);
                prop_assert!(v >= 1 && got == Some(v as u64), "{} = {} parsed as {:?}", name, v, got);
            }
            Err(d) => prop_assert!(v < 1, "{} = {} refused: {}", name, v, d[0]),
        }
        Ok(())
    });
}

#[test]
fn retry_backoff_is_bounded_for_any_policy() {
    let strategy = (any::<u32>(), 0u64..u64::MAX / 2, 0u64..u64::MAX / 2, any::<f64>(), any::<u32>());
    check("backoff", 1024, strategy, |(max_attempts, initial, max, multiplier, attempt)| {
        let r = stoa_rules::manifest::RetryPolicy {
            max_attempts,
            initial_backoff: Duration::from_millis(initial),
            max_backoff: Duration::from_millis(max),
            multiplier,
            max_lost: None,
        };
        let b = r.backoff(attempt);
        prop_assert!(b <= r.max_backoff.max(r.initial_backoff));
        Ok(())
    });
}
