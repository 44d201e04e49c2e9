//! Names, ids and facts from clients: required where they must be,
//! bounded in length, plain characters, and errors that quote at most a
//! short prefix of what was sent (a megabyte-long name must not come back
//! whole in a status, which travels in gRPC metadata).

use stoa_proto::v1 as pb;
use stoa_rules::diagnostic::shown;
use stoa_rules::testcase::FactSpec;
use stoa_rules::Fields;
use tonic::Status;

fn bad(field: &str, value: &str, rule: &str) -> Status {
    if value.is_empty() {
        return Status::invalid_argument(format!("{field}: required; {rule}"));
    }
    Status::invalid_argument(format!("{field}: `{}` is not valid; {rule}", shown(value)))
}

pub fn pack_name(field: &str, s: &str) -> Result<(), Status> {
    if stoa_rules::manifest::valid_pack_name(s) {
        return Ok(());
    }
    Err(bad(field, s, "a pack name is 1 to 128 letters, digits, `-`, `_` or `.`"))
}

pub fn version(field: &str, s: &str) -> Result<(), Status> {
    if stoa_rules::manifest::valid_version(s) {
        return Ok(());
    }
    Err(bad(field, s, "a version is 1 to 64 characters, without spaces"))
}

pub fn fact_type(field: &str, s: &str) -> Result<(), Status> {
    if stoa_rules::value::valid_type_name(s) {
        return Ok(());
    }
    Err(bad(field, s, stoa_rules::sandbox::TYPE_NAME_RULE))
}

/// A field name of a fact from a client: 1 to 128 bytes, no control
/// characters, not reserved (`_id`, `_type`).
pub fn field_name(field: &str, s: &str) -> Result<(), Status> {
    if s.is_empty() || s.len() > 128 || s.chars().any(char::is_control) {
        return Err(bad(field, s, "a field name is 1 to 128 characters, none of them a control character"));
    }
    if s.starts_with('_') {
        return Err(bad(field, s, "names starting with `_` are reserved"));
    }
    Ok(())
}

/// An id chosen by the client (a request id): 1 to 256 bytes, no control
/// characters.
pub fn client_id(field: &str, s: &str) -> Result<(), Status> {
    if s.is_empty() || s.len() > 256 || s.chars().any(char::is_control) {
        return Err(bad(field, s, "1 to 256 bytes, without control characters"));
    }
    Ok(())
}

/// The facts of a request, or every problem of every fact in one
/// INVALID_ARGUMENT (the first 20, then how many more), each naming the
/// fact by index and the field.
pub(crate) fn facts_in(facts: Vec<pb::FactInput>) -> Result<Vec<FactSpec>, Status> {
    let mut problems: Vec<String> = Vec::new();
    let mut out = Vec::with_capacity(facts.len());
    for (i, f) in facts.into_iter().enumerate() {
        let mut ok = true;
        let mut check = |r: Result<(), Status>| {
            if let Err(s) = r {
                problems.push(s.message().to_string());
                ok = false;
            }
        };
        check(fact_type(&format!("facts[{i}].type"), &f.r#type));
        let json = if f.fields_json.trim().is_empty() { "{}" } else { f.fields_json.as_str() };
        let fields = match serde_json::from_str::<serde_json::Value>(json) {
            Err(e) => {
                check(Err(Status::invalid_argument(format!("facts[{i}].fields_json: not JSON: {e}"))));
                None
            }
            Ok(v) => match Fields::from_json(&v) {
                None => {
                    check(Err(Status::invalid_argument(format!("facts[{i}].fields_json: must be a JSON object"))));
                    None
                }
                Some(fields) => {
                    for (k, _) in fields.iter() {
                        check(k.with_name(|k| field_name(&format!("facts[{i}].fields_json"), k)));
                    }
                    Some(fields)
                }
            },
        };
        if let (true, Some(fields)) = (ok, fields) {
            out.push(FactSpec { ty: f.r#type, fields });
        }
    }
    match problems.len() {
        0 => Ok(out),
        1 => Err(Status::invalid_argument(problems.remove(0))),
        n => {
            const SHOWN: usize = 20;
            let more = if n > SHOWN { format!("; and {} more", n - SHOWN) } else { String::new() };
            problems.truncate(SHOWN);
            Err(Status::invalid_argument(format!("{n} problems: {}{more}", problems.join("; "))))
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::collection::vec;
    use proptest::prelude::*;
    use proptest::sample::select;
    use proptest::test_runner::{Config, TestRunner};

    use super::*;

    #[test]
    fn a_long_bad_name_is_quoted_short() {
        let long = "x".repeat(1 << 20);
        let e = pack_name("pack", &format!("{long}/")).unwrap_err();
        assert!(e.message().len() < 200, "{}", e.message().len());
        assert!(e.message().starts_with("pack: `xxxx"), "{}", e.message());
        assert!(e.message().contains("(1048577 bytes)"), "{}", e.message());
        let e = fact_type("facts[0].type", "Job\0").unwrap_err();
        assert_eq!(
            e.message(),
            "facts[0].type: `Job\u{fffd}… (4 bytes)` is not valid; a fact type is an upper-case letter, then letters, digits or `_` (at most 128)"
        );
        assert_eq!(pack_name("pack", "").unwrap_err().message().split(';').next(), Some("pack: required"));
        assert!(field_name("f", "_id").is_err() && client_id("r", "a\nb").is_err() && version("v", "1 0").is_err());
        assert!(pack_name("p", "video-encode").is_ok() && fact_type("t", "Job_2").is_ok());
    }

    /// Facts as clients send them: JSON values of any shape (objects mostly,
    /// unicode, reserved and empty keys, huge numbers), as text, sometimes
    /// cut or with a byte changed.
    fn fact_input() -> impl Strategy<Value = pb::FactInput> {
        let key = prop_oneof![
            4 => "[a-z]{1,6}",
            1 => select(&["_id", "_type", "_x", "", "é", "\u{0}", "a\nb"][..]).prop_map(String::from),
            1 => Just("k".repeat(129)),
        ];
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            "\\PC{0,8}".prop_map(serde_json::Value::from),
        ];
        let value = leaf.prop_recursive(5, 48, 5, move |v| {
            prop_oneof![
                vec(v.clone(), 0..5).prop_map(serde_json::Value::Array),
                vec((key.clone(), v), 0..5).prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
            ]
        });
        let text = prop_oneof![
            6 => value.prop_map(|v| v.to_string()),
            1 => (1usize..300).prop_map(|n| format!("{}{}", "[".repeat(n), "]".repeat(n))),
            1 => (1usize..300).prop_map(|n| format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n))),
            1 => select(&["", " ", "{", "1e400", "{\"n\": 1e999}", "[1]", "null", "\"x\"", "{\"a\":1,\"a\":2}"][..]).prop_map(String::from),
        ];
        let mangled = (text, any::<proptest::sample::Index>(), 0u8..3).prop_map(|(t, at, how)| {
            let mut b = t.into_bytes();
            let i = at.index(b.len() + 1);
            match how {
                0 => {}
                1 => b.truncate(i),
                _ => b.insert(i, b"{}[]\",:\\"[i % 8]),
            }
            String::from_utf8_lossy(&b).into_owned()
        });
        let ty = prop_oneof![
            4 => select(&["Job", "Go", "A1_b"][..]).prop_map(String::from),
            1 => "\\PC{0,10}",
        ];
        (ty, mangled).prop_map(|(r#type, fields_json)| pb::FactInput { r#type, fields_json })
    }

    #[test]
    fn facts_from_clients_are_taken_whole_or_refused_with_a_short_message() {
        let cases = std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(512);
        let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
        let result = runner.run(&vec(fact_input(), 0..4), |facts| {
            // A normal stack, as a request handler has.
            let out = std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn(move || facts_in(facts))
                .expect("spawn")
                .join()
                .expect("no panic");
            match out {
                Ok(specs) => {
                    for f in specs {
                        prop_assert!(stoa_rules::value::valid_type_name(&f.ty), "type {:?}", f.ty);
                        for (k, _) in f.fields.iter() {
                            prop_assert!(k.with_name(|k| field_name("f", k)).is_ok(), "field {:?}", k);
                        }
                    }
                }
                Err(s) => {
                    prop_assert_eq!(s.code(), tonic::Code::InvalidArgument);
                    // One problem, or several (each bounded): `N problems: facts[…`.
                    let m = s.message();
                    let first = m.split_once(" problems: ").map_or(m, |(_, rest)| rest);
                    prop_assert!(first.starts_with("facts["), "{}", m);
                    prop_assert!(m.len() < 400 * 20, "a {}-byte message", m.len());
                    prop_assert!(m.split("; facts[").all(|p| p.len() < 400), "{}", m);
                }
            }
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
    }

    #[test]
    fn every_problem_of_every_fact_is_reported_at_once() {
        let fact = |ty: &str, json: &str| pb::FactInput { r#type: ty.into(), fields_json: json.into() };
        let e =
            facts_in(vec![fact("Job", r#"{"_id": 1}"#), fact("Job", "{}"), fact("no spaces", "[1]"), fact("Job", "{")])
                .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let m = e.message();
        assert!(m.starts_with("4 problems: facts[0].fields_json: `_id`"), "{m}");
        for p in [
            "facts[2].type: `no spaces`",
            "facts[2].fields_json: must be a JSON object",
            "facts[3].fields_json: not JSON",
        ] {
            assert!(m.contains(p), "{p} in {m}");
        }
        assert!(!m.contains("facts[1]"), "{m}");
    }

    #[test]
    fn facts_nested_past_the_json_limit_are_refused() {
        for n in [128, 129, 100_000] {
            let deep = pb::FactInput {
                r#type: "A".into(),
                fields_json: format!("{{\"a\":{}1{}}}", "[".repeat(n), "]".repeat(n)),
            };
            let out =
                std::thread::Builder::new().stack_size(2 << 20).spawn(move || facts_in(vec![deep])).expect("spawn");
            let e = out.join().expect("no panic").expect_err("too deep");
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().contains("recursion limit exceeded"), "{}", e.message());
        }
    }
}
