//! The examples of docs/rules.md are packs: each group of consecutive
//! ```rules / ```toml pack / ```toml test blocks is compiled, and its tests
//! must pass, so the reference cannot drift from the engine.

use std::path::PathBuf;
use std::sync::Arc;

use stoa_engine::harness::run_tests;
use stoa_rules::compile::{compile, PackSource};

use crate::support::repo;

#[derive(Default)]
struct Example {
    line: usize,
    rules: Vec<String>,
    pack: Option<String>,
    tests: Vec<String>,
    /// ```text explain ARGS blocks: what `stoa explain WF ARGS` prints in
    /// the end state of the example's first test.
    explains: Vec<(usize, String, String)>,
}

fn examples(doc: &str) -> Vec<Example> {
    let mut out: Vec<Example> = Vec::new();
    let mut prose_since_block = true;
    let mut lines = doc.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        let tag = line.strip_prefix("```").map(str::trim);
        if let Some(args) = tag.and_then(|t| t.strip_prefix("text explain ")) {
            let body: Vec<&str> = lines.by_ref().map(|(_, l)| l).take_while(|l| !l.starts_with("```")).collect();
            let ex = out.last_mut().expect("an explain block follows an example");
            ex.explains.push((n + 1, args.to_string(), body.join("\n")));
            continue;
        }
        match tag {
            Some(t @ ("rules" | "toml pack" | "toml test")) => {
                let mut body = String::new();
                for (_, l) in lines.by_ref() {
                    if l.starts_with("```") {
                        break;
                    }
                    body.push_str(l);
                    body.push('\n');
                }
                if prose_since_block {
                    out.push(Example { line: n + 1, ..Example::default() });
                }
                let ex = out.last_mut().expect("pushed");
                match t {
                    "rules" => ex.rules.push(body),
                    "toml pack" => ex.pack = Some(body),
                    _ => ex.tests.push(body),
                }
                prose_since_block = false;
            }
            Some(_) => {
                // Another kind of block: skip it, it separates examples.
                for (_, l) in lines.by_ref() {
                    if l.starts_with("```") {
                        break;
                    }
                }
                prose_since_block = true;
            }
            None if !line.trim().is_empty() => prose_since_block = true,
            None => {}
        }
    }
    out
}

#[test]
fn docs_examples_compile_and_their_tests_pass() {
    let path = repo().join("docs/rules.md");
    let doc = std::fs::read_to_string(&path).expect("docs/rules.md");
    let examples = examples(&doc);
    assert!(examples.len() >= 5, "found only {} examples", examples.len());
    for ex in examples {
        let at = format!("docs/rules.md:{}", ex.line);
        assert!(!ex.rules.is_empty(), "{at}: an example without a ```rules block");
        assert!(!ex.tests.is_empty(), "{at}: an example without a ```toml test block");
        let mut src = PackSource { root: PathBuf::from(&at), ..PackSource::default() };
        let manifest = ex.pack.clone().unwrap_or_else(|| "[pack]\nname = \"doc\"\nversion = \"1\"\n".into());
        src.files.insert("pack.toml".into(), manifest);
        for (i, r) in ex.rules.iter().enumerate() {
            src.files.insert(format!("example{i}.rules").into(), r.clone());
        }
        for (i, t) in ex.tests.iter().enumerate() {
            src.files.insert(format!("tests/example{i}.toml").into(), t.clone());
        }
        let (pack, diags) = compile(&src);
        let errors: Vec<String> = diags.iter().filter(|d| d.is_error()).map(|d| d.to_string()).collect();
        let pack =
            Arc::new(pack.unwrap_or_else(|| panic!("{at}: the example does not compile:\n{}", errors.join("\n"))));
        // Examples are clean: `stoa check` has no warning for them either.
        let warnings: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
        assert!(warnings.is_empty(), "{at}: `stoa check` warns:\n{}", warnings.join("\n"));
        for r in run_tests(&pack, None) {
            assert!(
                r.passed(),
                "{at}: test \"{}\" failed:\n{}\n{}",
                r.name,
                r.failures.join("\n"),
                r.timeline_excerpt(30).join("\n")
            );
        }
        if !ex.explains.is_empty() {
            // Shown paths are the pack's own (`pack/…`), not the doc's.
            src.root = PathBuf::from("pack");
            let pack = Arc::new(compile(&src).0.expect("compiled above"));
            for (line, args, want) in &ex.explains {
                let got = explain_after_first_test(&pack, args);
                assert_eq!(got.trim_end(), want.trim_end(), "docs/rules.md:{line}: `stoa explain WF {args}` prints");
            }
        }
    }
}

/// Runs the pack's first test and explains, in its end state, a rule or
/// (`--fact N`) a fact.
fn explain_after_first_test(pack: &Arc<stoa_rules::compile::Pack>, args: &str) -> String {
    use stoa_engine::explain::{self, History, Subject};
    let case = &pack.tests[0].1;
    let mut dispatcher = stoa_engine::dispatch::MockDispatcher::new(&case.mocks);
    let facts = case.facts.iter().map(|f| f.get_ref().clone()).collect();
    let id = stoa_engine::WorkflowId::new("test");
    let mut local =
        stoa_engine::local::Local::start(pack.clone(), id, facts, None, true, &mut dispatcher).expect("start");
    local.drive(&mut dispatcher, &mut |_| {}).expect("drive");
    let subject = Subject::of_workflow(&local.workflow);
    match args.strip_prefix("--fact ") {
        Some(f) => {
            let history = History::of(&local.timeline, None);
            explain::fact_text(&explain::fact(&subject, &history, f.parse().expect("fact id")).expect("fact"))
        }
        None => {
            let history = History::of(&local.timeline, Some(args));
            explain::rule_text(&explain::rule(&subject, &history, args).expect("rule"))
        }
    }
}

/// Every ```toml config block of docs/operations.md is a config the server
/// accepts, and its defaults are the server's.
#[test]
fn operations_config_examples_are_valid_configs() {
    let path = repo().join("docs/operations.md");
    let doc = std::fs::read_to_string(&path).expect("docs/operations.md");
    let mut blocks = Vec::new();
    let mut lines = doc.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        if line.trim() == "```toml config" {
            let body: Vec<&str> = lines.by_ref().map(|(_, l)| l).take_while(|l| !l.starts_with("```")).collect();
            blocks.push((n + 1, body.join("\n")));
        }
    }
    assert!(!blocks.is_empty(), "no ```toml config block");
    for (line, text) in blocks {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), &text).expect("write");
        let config =
            stoa_server::Config::load(file.path()).unwrap_or_else(|e| panic!("docs/operations.md:{line}: {e}"));
        config.validate().unwrap_or_else(|e| panic!("docs/operations.md:{line}: {e}"));
        // The values shown are the defaults.
        let defaults = stoa_server::Config::default();
        assert_eq!(config.ceilings, defaults.ceilings, "docs/operations.md:{line}: [ceilings] are not the defaults");
        assert_eq!(config.quotas, defaults.quotas, "docs/operations.md:{line}: [quotas] are not the defaults");
        assert_eq!(
            format!("{:?}", config.limits),
            format!("{:?}", defaults.limits),
            "docs/operations.md:{line}: [limits]"
        );
    }
}
