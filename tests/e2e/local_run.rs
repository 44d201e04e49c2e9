//! `stoa run` scripted: steps, signals and a virtual clock, so a local run
//! reaches a 15-minute timer at once, and mocks that answer late.

use std::path::Path;

use crate::support::stoa;

fn write(dir: &Path, files: &[(&str, &str)]) {
    for (name, text) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }
}

const PACK: &str = "[pack]\nname = \"remind\"\nversion = \"1\"\n[functions.\"mail.send\"]\ntimeout = \"1m\"\nretry = { max_attempts = 1 }\n";
const RULES: &str = r#"
rule "go" {
    match { s: Signal(name == "go") j: Job(state == "new") }
    action { modify(j, #{ state: "waiting", n: s.payload.n }); after("15m", "Remind", #{}); }
}
rule "remind" {
    match { r: Remind() j: Job(state == "waiting") }
    action { call("mail.send", #{ n: j.n }); }
    reaction { modify(j, #{ state: "reminded" }); }
    error { fail(error.message); }
}
rule "done" {
    match { j: Job(state == "reminded") not Hold() }
    action { complete(#{ n: j.n }); }
}
"#;

fn run(dir: &Path, extra: &[&str]) -> (bool, String) {
    let out = stoa()
        .arg("run")
        .arg(dir.join("pack"))
        .arg("--facts")
        .arg(dir.join("facts.json"))
        .arg("--mocks")
        .arg(dir.join("mocks.toml"))
        .args(extra)
        .output()
        .expect("stoa run");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn a_scripted_local_run_signals_and_advances_a_virtual_clock() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    write(
        dir,
        &[
            ("pack/pack.toml", PACK),
            ("pack/main.rules", RULES),
            ("facts.json", r#"[{"type": "Job", "fields": {"state": "new"}}, {"type": "Hold", "fields": {}}]"#),
            ("mocks.toml", "[[mock]]\nfunction = \"mail.send\"\nafter = \"30s\"\nreturns = {}\n"),
            ("steps.toml", "[[step]]\nretract = { type = \"Hold\" }\n"),
        ],
    );

    // Without steps the run ends where the signal is awaited.
    let (ok, out) = run(dir, &[]);
    assert!(ok, "{out}");
    assert!(out.contains("running, 0 invocation(s) waiting"), "{out}");

    // The signal, then 20 minutes of virtual time: the timer fires, the
    // mail is answered 30 s later, and the Hold the steps file retracts
    // lets it complete — at once, not in 15 real minutes.
    let t = std::time::Instant::now();
    let (ok, out) = run(
        dir,
        &["--steps", &dir.join("steps.toml").display().to_string(), "--signal", r#"go={"n": 7}"#, "--advance", "20m"],
    );
    assert!(ok, "{out}");
    assert!(out.contains(r#"completed result {"n":7}"#), "{out}");
    assert!(t.elapsed() < std::time::Duration::from_secs(60), "virtual time does not wait");

    // Advanced only 15m10s: the answer, due 30 s after the timer, is still
    // out; the mail is waiting.
    let (ok, out) = run(dir, &["--signal", r#"go={"n": 7}"#, "--advance", "15m10s"]);
    assert!(ok, "{out}");
    assert!(out.contains("running, 1 invocation(s) waiting"), "{out}");

    // A mock slower than the function's timeout: the attempt times out.
    write(dir, &[("mocks.toml", "[[mock]]\nfunction = \"mail.send\"\nafter = \"5m\"\nreturns = {}\n")]);
    let (ok, out) = run(dir, &["--signal", r#"go={"n": 7}"#, "--advance", "1h"]);
    assert!(!ok, "{out}");
    assert!(out.contains("failed: attempt 1 ran past its start-to-close timeout"), "{out}");

    // Bad scripts are refused with their place.
    write(dir, &[("bad.toml", "[[step]]\nadvance = \"soon\"\n"), ("worse.toml", "[[step]]\nwait = 1\n")]);
    let (ok, out) = run(dir, &["--steps", &dir.join("bad.toml").display().to_string()]);
    assert!(!ok && out.contains("bad.toml: step 1: `advance = \"soon\"` is not a duration"), "{out}");
    let (ok, out) = run(dir, &["--steps", &dir.join("worse.toml").display().to_string()]);
    assert!(!ok && out.contains("worse.toml:2:1: unknown field `wait`"), "{out}");
    let (ok, out) = run(dir, &["--signal", "go={not json"]);
    assert!(!ok && out.contains("--signal go: the payload is not JSON"), "{out}");
    // A step that selects nothing says so.
    write(dir, &[("none.toml", "[[step]]\nretract = { type = \"Nothing\" }\n")]);
    let (ok, out) = run(dir, &["--steps", &dir.join("none.toml").display().to_string()]);
    assert!(!ok && out.contains("step 1: no Nothing fact"), "{out}");
}
