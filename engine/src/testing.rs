//! Helpers for the engine's own tests: packs from strings and a loop that
//! answers invocations until the workflow settles.

use std::path::PathBuf;
use std::sync::Arc;

use stoa_rules::compile::{compile, Pack, PackSource};
use stoa_rules::testcase::FactSpec;
use stoa_rules::Value;

use crate::timeline::Entry;
use crate::workflow::{Input, Outcome, Workflow};
use crate::WorkflowId;

/// A pack with one rule file and a manifest declaring `media.*` functions.
pub fn pack(rules: &str, manifest_extra: &str) -> Arc<Pack> {
    pack_version(rules, manifest_extra, "1")
}

/// `pack` at a given version, for upgrades.
pub fn pack_version(rules: &str, manifest_extra: &str, version: &str) -> Arc<Pack> {
    pack_files(rules, manifest_extra, version, &[])
}

/// `pack` with a test file `tests/t.toml`.
pub fn pack_with_tests(rules: &str, tests: &str) -> Arc<Pack> {
    pack_files(rules, "", "1", &[("tests/t.toml", tests)])
}

fn pack_files(rules: &str, manifest_extra: &str, version: &str, files: &[(&str, &str)]) -> Arc<Pack> {
    let mut src = PackSource { root: PathBuf::from("test"), ..PackSource::default() };
    src.files.insert(
        PathBuf::from("pack.toml"),
        format!(
            "[pack]\nname = \"test\"\nversion = \"{version}\"\n\n[functions.\"media.encode\"]\ntimeout = \"1m\"\n\n[functions.\"media.split\"]\n{manifest_extra}"
        ),
    );
    src.files.insert(PathBuf::from("main.rules"), rules.to_string());
    for (path, text) in files {
        src.files.insert(PathBuf::from(path), text.to_string());
    }
    let (pack, diags) = compile(&src);
    assert!(pack.is_some(), "{}", diags.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"));
    Arc::new(pack.unwrap())
}

/// Every function answers `{"echo": args}`.
fn echo(args: &Value) -> Outcome {
    let mut m = std::collections::BTreeMap::new();
    m.insert(Arc::from("echo"), args.clone());
    Outcome::Ok { value: Value::Map(Arc::new(m)), attempts: 1, failed: vec![] }
}

/// Runs a workflow, answering its invocations in the order they were made.
pub fn run_to_end(pack: Arc<Pack>, facts: Vec<FactSpec>) -> (Workflow, Vec<Entry>) {
    let mut wf = Workflow::new(WorkflowId::new("test"), pack, 0);
    let mut timeline = Vec::new();
    let mut queue = std::collections::VecDeque::new();
    let mut input = Some(Input::Start { facts });
    let mut now = 0;
    while let Some(i) = input.take() {
        now += 1;
        if let Ok(out) = wf.apply(i, now) {
            timeline.extend(out.entries);
            queue.extend(out.invocations);
        }
        while let Some(inv) = queue.pop_front() {
            if wf.waiting().any(|w| w.invocation.id == inv.id) {
                input = Some(Input::Result { outcome: echo(&inv.args), invocation: inv.id });
                break;
            }
        }
    }
    (wf, timeline)
}
