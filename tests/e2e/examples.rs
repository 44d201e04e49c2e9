//! Every example pack checks clean and passes its own tests through the
//! real `stoa` binary, and `stoa run` takes each through to its end.

use crate::support::{repo, stoa};

fn packs() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(repo().join("examples/packs"))
        .expect("examples/packs")
        .map(|e| format!("examples/packs/{}", e.expect("entry").file_name().to_string_lossy()))
        .collect();
    v.sort();
    v
}

#[test]
fn example_packs_check_and_pass_their_tests() {
    let packs = packs();
    assert!(!packs.is_empty());
    for pack in packs {
        let out = stoa().args(["check", &pack]).output().expect("stoa check");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "stoa check {pack}:\n{stderr}");
        assert!(!stderr.contains("warning"), "stoa check {pack} warns:\n{stderr}");
        let out = stoa().args(["test", &pack]).output().expect("stoa test");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "stoa test {pack}:\n{stdout}");
        let last = stdout.lines().last().unwrap_or_default();
        assert!(last.ends_with("passed, 0 failed") && !last.starts_with("0 passed"), "{pack}: {last}");
        assert!(!stdout.contains("rules no test fired"), "{pack}: some rules are not covered:\n{stdout}");
    }
}

#[test]
fn example_packs_run_to_completion_with_their_mocks() {
    for pack in packs() {
        let dir = repo().join(&pack);
        if !dir.join("facts.json").exists() {
            continue;
        }
        let out = stoa()
            .args(["run", &pack, "--facts", &format!("{pack}/facts.json"), "--mocks", &format!("{pack}/mocks.toml")])
            .output()
            .expect("stoa run");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "stoa run {pack}:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let last = stdout.lines().last().unwrap_or_default();
        assert!(last.contains(" completed"), "{pack}: {last}");
    }
}
