//! Facts JSON, values and test files: random and deeply nested JSON, huge
//! numbers, unicode and reserved keys. Values round-trip through JSON
//! (non-finite floats, which JSON cannot carry, become null); equal values
//! hash alike; nesting past serde_json's limit of 128 is refused, not
//! crashed on; test files parse or say where they are wrong.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::select;
use stoa_rules::testcase::parse_tests;
use stoa_rules::{Fields, Value};

use crate::mutate::{apply, mutations, TOML_TOKENS};
use crate::support::{bounded, check, check_file_diagnostics};

fn key() -> BoxedStrategy<String> {
    prop_oneof![
        4 => "[a-z]{1,6}",
        1 => select(&["_id", "_type", "_", "", " ", "é", "𝕏", "\u{0}", "a.b", "$__toml_private_datetime"][..]).prop_map(String::from),
        1 => "\\PC{0,8}",
    ]
    .boxed()
}

fn number() -> BoxedStrategy<f64> {
    prop_oneof![
        any::<f64>(),
        select(
            &[
                0.0,
                -0.0,
                1.0,
                0.5,
                1e308,
                -1e308,
                9007199254740992.0,
                9007199254740993.0,
                9.223372036854776e18,
                -9.223372036854776e18,
                f64::NAN,
                f64::INFINITY,
                f64::NEG_INFINITY,
                f64::MIN_POSITIVE
            ][..]
        ),
    ]
    .boxed()
}

fn int() -> BoxedStrategy<i64> {
    prop_oneof![
        any::<i64>(),
        select(
            &[
                0,
                1,
                -1,
                i64::MAX,
                i64::MIN,
                9007199254740992,
                9007199254740993,
                -9007199254740993,
                9_000_000_000_000_001
            ][..]
        ),
    ]
    .boxed()
}

pub fn value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        int().prop_map(Value::Int),
        number().prop_map(Value::Float),
        key().prop_map(|s| Value::str(&s)),
    ];
    leaf.prop_recursive(6, 64, 6, |v| {
        prop_oneof![
            vec(v.clone(), 0..6).prop_map(|a| Value::Array(Arc::new(a))),
            btree_map(key().prop_map(|k| Arc::<str>::from(k.as_str())), v, 0..6).prop_map(|m| Value::Map(Arc::new(m))),
        ]
    })
    .boxed()
}

/// The value JSON carries for `v`: non-finite floats become null.
fn finite(v: &Value) -> Value {
    match v {
        Value::Float(f) if !f.is_finite() => Value::Null,
        Value::Array(a) => Value::Array(Arc::new(a.iter().map(finite).collect())),
        Value::Map(m) => Value::Map(Arc::new(m.iter().map(|(k, v)| (k.clone(), finite(v))).collect())),
        v => v.clone(),
    }
}

/// Equality that tells 1 from 1.0 and -0.0 from 0.0 (what JSON keeps).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
        (Value::Int(x), Value::Int(y)) => x == y,
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y.iter()).all(|(a, b)| same(a, b)),
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len() && x.iter().zip(y.iter()).all(|((k, a), (l, b))| k == l && same(a, b))
        }
        (Value::Int(_) | Value::Float(_), _) | (_, Value::Int(_) | Value::Float(_)) => false,
        _ => a == b,
    }
}

fn hash(v: &Value) -> u64 {
    let mut h = DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

#[test]
fn values_round_trip_through_json() {
    check("JSON round trip", 512, value(), |v| {
        let json = v.to_json();
        let back = Value::from_json(&json);
        prop_assert!(same(&back, &finite(&v)), "{:?} came back as {:?}", v, back);
        // Through text too, as requests and records carry it.
        let text = serde_json::to_string(&v).expect("serializes");
        let parsed: Value = serde_json::from_str(&text).expect("parses");
        prop_assert!(same(&parsed, &finite(&v)), "{} came back as {:?}", text, parsed);
        Ok(())
    });
}

#[test]
fn equal_values_hash_alike_and_compare_consistently() {
    let numeric = prop_oneof![int().prop_map(Value::Int), number().prop_map(Value::Float)];
    check("Eq and Hash", 2048, (numeric.clone(), numeric.clone(), numeric), |(a, b, c)| {
        if a == b {
            prop_assert_eq!(hash(&a), hash(&b), "{:?} == {:?} but their hashes differ", a, b);
            prop_assert_eq!(a.partial_cmp_value(&b), Some(std::cmp::Ordering::Equal), "{:?} == {:?}", a, b);
            if b == c {
                prop_assert!(a == c, "{:?} == {:?} == {:?} but not the first and the last", a, b, c);
            }
        }
        if let Some(o) = a.partial_cmp_value(&b) {
            prop_assert_eq!(b.partial_cmp_value(&a), Some(o.reverse()), "{:?} vs {:?}", a, b);
            prop_assert_eq!(o == std::cmp::Ordering::Equal, a == b, "{:?} vs {:?}", a, b);
        }
        Ok(())
    });
    check("Eq and Hash of values", 512, (value(), value()), |(a, b)| {
        prop_assert!(has_nan(&a) || a == a.clone(), "{:?} is not equal to itself", a);
        if a == b {
            prop_assert_eq!(hash(&a), hash(&b));
        }
        Ok(())
    });
}

/// Values and fields serialize, and read back, straight through serde; the
/// text and the values are those of the `serde_json::Value` tree.
#[test]
fn serde_agrees_with_the_json_tree() {
    check("serde and to_json/from_json", 512, value(), |v| {
        let text = serde_json::to_string(&v).expect("serializes");
        prop_assert_eq!(&text, &serde_json::to_string(&v.to_json()).expect("serializes"));
        let direct: Value = serde_json::from_str(&text).expect("parses");
        let tree = Value::from_json(&serde_json::from_str(&text).expect("parses"));
        prop_assert!(same(&direct, &tree), "{} read as {:?}, not {:?}", text, direct, tree);
        Ok(())
    });
    // Objects written by hand, so that keys repeat: the last one counts.
    let entries = vec((select(&["a", "b", "é", "_id", ""][..]), value()), 0..8);
    check("Fields serde and from_json", 512, entries, |entries| {
        let body: Vec<String> = entries
            .iter()
            .map(|(k, v)| format!("{}:{}", serde_json::to_string(k).unwrap(), serde_json::to_string(v).unwrap()))
            .collect();
        let text = format!("{{{}}}", body.join(","));
        let direct: Fields = serde_json::from_str(&text).expect("parses");
        let tree = Fields::from_json(&serde_json::from_str(&text).expect("parses")).expect("an object");
        prop_assert_eq!(serde_json::to_string(&direct).unwrap(), serde_json::to_string(&tree.to_json()).unwrap());
        prop_assert_eq!(
            direct.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            tree.iter().map(|(k, _)| k).collect::<Vec<_>>()
        );
        Ok(())
    });
    for text in ["1", "[]", "null", "\"x\""] {
        let e = serde_json::from_str::<Fields>(text).unwrap_err().to_string();
        assert!(e.contains("expected fact fields (an object)"), "{text}: {e}");
    }
}

fn has_nan(v: &Value) -> bool {
    match v {
        Value::Float(f) => f.is_nan(),
        Value::Array(a) => a.iter().any(has_nan),
        Value::Map(m) => m.values().any(has_nan),
        _ => false,
    }
}

#[test]
fn fields_from_json_keep_every_key_and_refuse_non_objects() {
    check("Fields::from_json", 256, value(), |v| {
        let json = v.to_json();
        match (&v, Fields::from_json(&json)) {
            (Value::Map(m), Some(f)) => {
                prop_assert_eq!(f.len(), m.len());
                prop_assert_eq!(f.to_json(), json);
            }
            (Value::Map(_), None) => return Err(TestCaseError::fail("an object was refused")),
            (_, Some(_)) => return Err(TestCaseError::fail("a non-object was taken")),
            (_, None) => {}
        }
        Ok(())
    });
}

#[test]
fn json_text_deeper_than_serde_json_allows_is_refused_not_crashed_on() {
    for n in [127, 128, 129, 1_000, 1_000_000] {
        for (open, close) in [("[", "]"), ("{\"a\":", "}")] {
            let text = format!("{}1{}", open.repeat(n), close.repeat(n));
            let r = bounded(n, move || {
                serde_json::from_str::<serde_json::Value>(&text).map(|v| {
                    let value = Value::from_json(&v);
                    let fields = Fields::from_json(&v).map(|f| f.len());
                    (value.to_json() == v, fields)
                })
            });
            match r {
                Ok((round_trip, _)) => assert!(n <= 128 && round_trip, "{n} deep was taken"),
                Err(e) => {
                    assert!(n > 127, "{n} deep was refused: {e}");
                    assert!(e.to_string().contains("recursion limit exceeded"), "{e}");
                }
            }
        }
    }
}

#[test]
fn huge_numbers_become_floats_or_are_refused() {
    for (text, expect) in [
        ("9223372036854775807", Some(Value::Int(i64::MAX))),
        ("-9223372036854775808", Some(Value::Int(i64::MIN))),
        ("9223372036854775808", Some(Value::Float(9223372036854775808.0))),
        ("18446744073709551616", Some(Value::Float(18446744073709551616.0))),
        ("1e308", Some(Value::Float(1e308))),
        ("1e309", None),
        ("-1e400", None),
        ("1.0", Some(Value::Float(1.0))),
        (&"9".repeat(100_000), None),
    ] {
        let got = serde_json::from_str::<serde_json::Value>(text).ok().map(|v| Value::from_json(&v));
        assert!(
            got.as_ref().zip(expect.as_ref()).is_none_or(|(g, e)| same(g, e)),
            "{}: {got:?}",
            &text[..20.min(text.len())]
        );
        assert_eq!(got.is_some(), expect.is_some(), "{}", &text[..20.min(text.len())]);
    }
}

// ---- test files

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn toml_value() -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        (0i64..100).prop_map(|i| i.to_string()),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<f64>().prop_map(|f| toml::Value::Float(f).to_string()),
        key().prop_map(|s| toml_str(&s)),
        select(&["true", "nan", "inf", "1979-05-27T07:32:00Z", "07:32:00", "'lit'", "\"\"\"multi\nline\"\"\""][..])
            .prop_map(String::from),
    ];
    leaf.prop_recursive(4, 24, 4, |v| {
        prop_oneof![
            vec(v.clone(), 0..4).prop_map(|a| format!("[{}]", a.join(", "))),
            vec((key(), v), 0..4).prop_map(|kv| {
                let mut seen = std::collections::BTreeSet::new();
                let kv: Vec<String> = kv
                    .into_iter()
                    .filter(|(k, _)| seen.insert(k.clone()))
                    .map(|(k, v)| format!("{} = {v}", toml_str(&k)))
                    .collect();
                format!("{{ {} }}", kv.join(", "))
            }),
        ]
    })
    .boxed()
}

fn fact() -> BoxedStrategy<String> {
    (prop_oneof![4 => "[A-Z][a-z]{0,5}", 1 => key()], toml_value())
        .prop_map(|(t, f)| format!("{{ type = {}, fields = {f} }}", toml_str(&t)))
        .boxed()
}

fn test_case() -> BoxedStrategy<String> {
    (
        key(),
        vec(fact(), 0..3),
        vec(
            (
                key(),
                proptest::option::of(toml_value()),
                prop_oneof![
                    Just("returns = 1".to_string()),
                    Just("error = { message = \"no\" }".to_string()),
                    Just("answers = [{ returns = 1 }, { error = { message = \"x\", retryable = false } }]".to_string())
                ],
            ),
            0..2,
        ),
        vec(
            prop_oneof![
                crate::manifest::duration().prop_map(|d| format!("advance = {}", toml_str(&d))),
                vec(fact(), 0..2).prop_map(|f| format!("assert = [{}]", f.join(", "))),
                (key(), toml_value())
                    .prop_map(|(n, p)| format!("signal = {{ name = {}, payload = {p} }}", toml_str(&n))),
            ],
            0..3,
        ),
        vec(
            prop_oneof![
                select(&["running", "completed", "failed", "asleep"][..])
                    .prop_map(|s| format!("status = {}", toml_str(s))),
                toml_value().prop_map(|v| format!("result = {v}")),
                vec(key(), 0..3).prop_map(|f| format!(
                    "fired = [{}]",
                    f.iter().map(|k| toml_str(k)).collect::<Vec<_>>().join(", ")
                )),
                (key(), any::<i64>()).prop_map(|(k, n)| format!("calls = {{ {} = {n} }}", toml_str(&k))),
                any::<i64>().prop_map(|n| format!("pending_timers = {n}")),
                (key(), any::<i64>())
                    .prop_map(|(t, n)| format!("facts = [{{ type = {}, count = {n} }}]", toml_str(&t))),
            ],
            0..4,
        ),
    )
        .prop_map(|(name, facts, mocks, steps, expect)| {
            let mut s = format!("[[test]]\nname = {}\nfacts = [{}]\n", toml_str(&name), facts.join(", "));
            for (f, args, answer) in mocks {
                s.push_str(&format!("[[test.mock]]\nfunction = {}\n{answer}\n", toml_str(&f)));
                if let Some(a) = args {
                    s.push_str(&format!("args = {a}\n"));
                }
            }
            for step in steps {
                s.push_str(&format!("[[test.step]]\n{step}\n"));
            }
            s.push_str("[test.expect]\n");
            let mut seen = std::collections::BTreeSet::new();
            for e in expect {
                if seen.insert(e.split(' ').next().unwrap_or_default().to_string()) {
                    s.push_str(&format!("{e}\n"));
                }
            }
            s
        })
        .boxed()
}

fn parse_checked(text: String) -> Result<(), TestCaseError> {
    let path = Path::new("tests/t.toml");
    let t = text.clone();
    match bounded("parse_tests", move || parse_tests(Path::new("tests/t.toml"), &t).map(|c| c.len())) {
        Ok(_) => Ok(()),
        Err(d) => check_file_diagnostics(path, &text, &[d]),
    }
}

#[test]
fn test_files_parse_or_say_where_they_are_wrong() {
    check("test files", 256, vec(test_case(), 0..3), |cases| parse_checked(cases.concat()));
    check("mangled test files", 256, (vec(test_case(), 1..3), mutations(TOML_TOKENS, 6)), |(cases, muts)| {
        let mut bytes = cases.concat().into_bytes();
        for m in &muts {
            apply(&mut bytes, m);
        }
        parse_checked(String::from_utf8_lossy(&bytes).into_owned())
    });
}

#[test]
fn deep_facts_in_test_files_are_refused_not_overflowed() {
    for n in [200, 100_000] {
        for (open, close) in [("[", "]"), ("{ a = ", " }")] {
            let text = format!(
                "[[test]]\nname = \"t\"\nfacts = [{{ type = \"A\", fields = {{ a = {}1{} }} }}]\n",
                open.repeat(n),
                close.repeat(n)
            );
            let t = text.clone();
            let d =
                bounded(n, move || parse_tests(Path::new("tests/t.toml"), &t).map(|c| c.len())).expect_err("too deep");
            check_file_diagnostics(Path::new("tests/t.toml"), &text, &[d]).unwrap_or_else(|e| panic!("{n}: {e}"));
        }
    }
}
