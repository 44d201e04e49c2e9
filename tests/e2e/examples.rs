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

/// `examples/cluster.sh` shows a takeover: three servers on a throwaway
/// PostgreSQL, one killed, every workflow completed by the other two.
#[cfg(target_os = "linux")]
#[test]
fn the_cluster_example_shows_a_takeover() {
    let bin = crate::support::worker_bin();
    let dir = bin.parent().expect("the binaries' directory");
    let out = std::process::Command::new("timeout")
        .args(["300", "examples/cluster.sh"])
        .current_dir(repo())
        .env("STOA_BIN", dir)
        .env("STOA_CLUSTER_WORKFLOWS", "30")
        .env("STOA_CLUSTER_WORK_SCALE", "1")
        .output()
        .expect("run examples/cluster.sh");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "examples/cluster.sh failed:\n{text}");
    assert!(text.contains("killed server 2"), "{text}");
    assert!(text.contains("all 30 workflows completed"), "{text}");
    // After the kill, two servers hold every partition.
    let last = text.lines().rev().find(|l| l.contains("partitions {")).expect("a status line");
    assert_eq!(last.matches(": ").count(), 2, "{last}");
}
