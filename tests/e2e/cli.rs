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
