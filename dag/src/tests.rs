//! The definition format by example: diagnostics as snapshots, the
//! compiled pack of a small DAG, and compiled packs run on the engine.

use std::path::Path;

use expect_test::{expect, Expect};

use super::*;

/// Every diagnostic of a definition, rendered with its source line.
fn check_diags(yaml: &str, expected: Expect) {
    let (_, diags) = check(Path::new("workflow.yaml"), yaml);
    let map = SourceMap::new(yaml);
    let text: Vec<String> = diags.iter().map(|d| d.render_in(Some(&map))).collect();
    expected.assert_eq(&text.join("\n"));
}

#[test]
fn a_good_definition_has_no_diagnostics() {
    check_diags(
        r#"
id: etl
params:
  day: { type: string, default: "2026-01-01" }
steps:
  - id: extract
    function: etl.extract
    params: { day: "${day}" }
    outputs: [rows]
  - id: load
    function: etl.load
    depends_on: [extract]
    params: { rows: "${rows@extract}" }
"#,
        expect![""],
    );
}

/// Compiles a definition directory and runs its tests on the engine,
/// returning a line per failure.
fn run_dir(dir: &Path) -> Vec<String> {
    let source = Source::read(dir).unwrap_or_else(|d| panic!("{d}"));
    let (pack, diags) = source.compile(dir);
    let Some(pack) = pack else {
        panic!("{}: {}", dir.display(), diags.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))
    };
    let (compiled, diags) = stoa_rules::compile::compile(&pack);
    let errors: Vec<String> = pack.render(diags.iter().filter(|d| d.is_error() || true));
    let Some(compiled) = compiled else {
        panic!(
            "{}: the compiled pack does not compile:\n{}\n{}",
            dir.display(),
            errors.join("\n"),
            pack.files[Path::new("workflow.rules")]
        )
    };
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    let compiled = std::sync::Arc::new(compiled);
    assert!(!compiled.tests.is_empty(), "{}: no tests", dir.display());
    let reports = stoa_engine::harness::run_tests(&compiled, None);
    reports
        .iter()
        .filter(|r| !r.passed())
        .map(|r| {
            format!(
                "{}: {}: {}\n  {}",
                dir.display(),
                r.name,
                r.failures.join("\n  "),
                r.timeline_excerpt(40).join("\n  ")
            )
        })
        .collect()
}

#[test]
fn the_examples_compile_and_their_tests_pass() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/dags");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .expect("examples/dags")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 3, "{dirs:?}");
    let failures: Vec<String> = dirs.iter().flat_map(|d| run_dir(d)).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
