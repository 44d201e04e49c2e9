//! The `stoa` client commands as a shell user meets them.

use std::process::Stdio;

use crate::support::{repo, stoa, Server, TOKEN_A};

/// `stoa deploy PACK | head -1` and `stoa ls --json | head -2`: the command
/// ends when its reader goes, without a panic.
#[test]
fn a_closed_pipe_ends_a_command_quietly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let conn = ["--server", server.addr.as_str(), "--token", TOKEN_A];
    // The reader goes before the command prints (it first connects), so
    // its first line already meets a closed pipe.
    for args in [
        vec!["deploy".to_string(), repo().join("examples/packs/video-encode").display().to_string()],
        vec!["packs".into(), "--json".into()],
    ] {
        let mut child =
            stoa().args(&args).args(conn).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn stoa");
        drop(child.stdout.take());
        let done = child.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&done.stderr);
        assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{args:?}: {err}");
        assert_ne!(done.status.code(), Some(101), "{args:?}: {err}");
    }
}

/// A second `stoa serve` on a data directory in use says so at once, in
/// words, then gives up with the same words.
#[test]
fn a_second_server_on_a_locked_data_directory_says_so() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = Server::start(dir.path());
    let mut second = stoa()
        .args(["serve", "--listen", "127.0.0.1:0", "--token", "a=token-tenant-a", "--data"])
        .arg(dir.path())
        .env_remove("STOA_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn stoa serve");
    let (tx, rx) = std::sync::mpsc::channel();
    let err = second.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first_line = rx.recv_timeout(std::time::Duration::from_secs(5)).expect("a line within 5 s");
    assert!(first_line.contains("the data directory is locked"), "{first_line}");
    let status = second.wait().expect("wait");
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(!status.success());
    assert!(rest.iter().any(|l| l.contains("locked by another process")), "{rest:?}");
    assert!(!rest.iter().any(|l| l.contains("Os {")), "{rest:?}");
}

/// `stoa dag check` and `stoa dag compile` on the example definitions,
/// and on a broken one: the compiled pack passes `stoa test`, as does the
/// definition directory itself (compiled in memory); a definition with an
/// error exits 3 with its diagnostics, and nothing is written.
#[test]
fn dag_definitions_check_compile_and_test() {
    let run = |args: &[&str]| {
        let out = stoa().args(args).output().expect("run stoa");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let etl = repo().join("examples/dags/etl");
    let etl = etl.to_str().expect("utf-8 path");
    let (code, stdout, stderr) = run(&["dag", "check", etl]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("etl 1: compiles to"), "{stdout}");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("pack");
    let (code, stdout, stderr) = run(&["dag", "compile", etl, "--out", out.to_str().expect("utf-8")]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(out.join("workflow.rules").is_file() && out.join("tests/etl.toml").is_file());
    for pack in [out.to_str().expect("utf-8"), etl] {
        let (code, stdout, stderr) = run(&["test", pack]);
        assert_eq!(code, Some(0), "{stdout}{stderr}");
        assert!(stdout.contains("5 passed, 0 failed"), "{stdout}");
    }
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).expect("mkdir");
    std::fs::write(
        bad.join("workflow.yaml"),
        "id: bad\nsteps:\n  - { id: a, type: noop, depends_on: [b] }\n  - { id: b, type: noop, depends_on: [a] }\n",
    )
    .expect("write");
    let bad_out = dir.path().join("bad-pack");
    let (code, stdout, stderr) =
        run(&["dag", "compile", bad.to_str().expect("utf-8"), "--out", bad_out.to_str().expect("utf-8")]);
    assert_eq!(code, Some(3), "{stdout}{stderr}");
    assert!(
        stderr.contains("workflow.yaml:4:39: error[E0019]: the dependencies form a cycle: `a` → `b` → `a`"),
        "{stderr}"
    );
    assert!(!bad_out.exists());
    let (code, _, stderr) = run(&["test", bad.to_str().expect("utf-8")]);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("error[E0019]"), "{stderr}");
}
