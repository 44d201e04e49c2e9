//! The example workers as processes: the Rust media worker, and the Python
//! one, which must answer exactly like it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use stoa_proto::v1::{Invocation, InvocationResult};

use crate::fake::{failure, failure_kind, invocation, value, FakeServer, Session, TOKEN, WAIT};

const FUNCTIONS: &str = "media.split,media.encode,media.assemble,media.index,bench.noop";

/// A worker process, killed if a test fails before stopping it.
struct Worker(std::process::Child);

impl Worker {
    fn start(mut command: Command, server: &FakeServer, work_scale: &str) -> Worker {
        command
            .args(["--server", &server.url(), "--token", TOKEN, "--concurrency", "8"])
            .args(["--work-scale", work_scale, "--functions", FUNCTIONS])
            .env("RUST_LOG", "warn")
            .env("LOG_LEVEL", "WARNING")
            .stdin(Stdio::null());
        Worker(command.spawn().expect("start the worker"))
    }

    /// Sends SIGTERM and waits for a clean exit.
    async fn terminate(self) {
        self.sigterm();
        self.exited().await;
    }

    fn sigterm(&self) {
        let status = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    async fn exited(mut self) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                assert!(status.success(), "the worker exited with {status}");
                return;
            }
            assert!(started.elapsed() < WAIT, "the worker did not exit after SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn calls() -> Vec<Invocation> {
    vec![
        invocation("split", "media.split", json!({ "uri": "s3://in/movie.mov", "chunk_seconds": 10 })),
        invocation(
            "encode_0",
            "media.encode",
            json!({ "uri": "s3://chunks/movie/0.mov", "codec": "h264", "index": 0 }),
        ),
        invocation("encode_7", "media.encode", json!({ "uri": "s3://chunks/movie/7.mov", "codec": "av1", "index": 7 })),
        invocation(
            "assemble",
            "media.assemble",
            json!({ "source": "s3://in/movie.mov", "parts": ["s3://encoded/a.mp4", "s3://encoded/b.mp4"] }),
        ),
        invocation("index", "media.index", json!({ "uri": "s3://out/movie-0123abcd.mp4" })),
        invocation("noop", "bench.noop", json!({ "any": ["thing", 1, 2.5, null] })),
        invocation(
            "bad_index",
            "media.encode",
            json!({ "uri": "s3://chunks/movie/1.mov", "codec": "h264", "index": "one" }),
        ),
        invocation("no_chunks", "media.split", json!({ "uri": "s3://in/movie.mov", "chunk_seconds": 0 })),
    ]
}

/// Runs `calls()` through a worker's session and stops the worker.
async fn exchange(worker: Worker, mut session: Session) -> BTreeMap<String, InvocationResult> {
    assert_eq!(session.hello.functions, FUNCTIONS.split(',').collect::<Vec<_>>());
    assert_eq!(session.hello.max_in_flight, 8);
    let calls = calls();
    let n = calls.len();
    session.invoke(calls).await;
    let results = session.results(n).await;
    worker.terminate().await;
    results
}

fn check_shapes(results: &BTreeMap<String, InvocationResult>) {
    let split = value(&results["split"]);
    let chunks = split["chunks"].as_u64().unwrap();
    assert!((6..=360).contains(&chunks), "{split}");
    assert!(split["prefix"].as_str().unwrap().starts_with("s3://chunks/movie-"), "{split}");
    assert!(value(&results["encode_7"])["uri"].as_str().unwrap().ends_with("/00007-av1.mp4"));
    assert!(value(&results["assemble"])["uri"].as_str().unwrap().starts_with("s3://out/movie-"));
    assert_eq!(value(&results["index"]), json!({ "index": "s3://out/movie-0123abcd.idx" }));
    assert_eq!(value(&results["noop"]), json!({ "any": ["thing", 1, 2.5, null] }));
    let (message, retryable) = failure(&results["bad_index"]);
    assert!(!retryable && message.contains("field `index`"), "{message}");
    let (message, retryable) = failure(&results["no_chunks"]);
    assert!(!retryable && message.contains("chunk_seconds"), "{message}");
}

async fn rust_results() -> BTreeMap<String, InvocationResult> {
    let mut server = FakeServer::start();
    let worker = Worker::start(Command::new(env!("CARGO_BIN_EXE_stoa-worker-media")), &server, "0");
    let session = server.session().await;
    exchange(worker, session).await
}

#[tokio::test]
async fn the_rust_media_worker_answers_and_stops_on_sigterm() {
    let results = rust_results().await;
    check_shapes(&results);
}

fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python")
}

#[tokio::test]
async fn the_python_worker_answers_like_the_rust_worker() {
    let python = python_dir().join(".venv/bin/python");
    if !python.exists() {
        eprintln!("skipped: {} does not exist; run functions/python/setup.sh", python.display());
        return;
    }
    let expected = rust_results().await;

    let mut server = FakeServer::start();
    let mut command = Command::new(python);
    command.current_dir(python_dir()).arg("examples/media_worker.py");
    let worker = Worker::start(command, &server, "0");
    let session = server.session().await;
    let results = exchange(worker, session).await;
    check_shapes(&results);
    for (id, expected) in &expected {
        let actual = &results[id];
        assert_eq!(actual.attempt, expected.attempt, "{id}");
        match id.as_str() {
            // Failure messages are each language's own; the kind must agree.
            "bad_index" | "no_chunks" => assert_eq!(failure(actual).1, failure(expected).1, "{id}"),
            _ => assert_eq!(value(actual), value(expected), "{id}"),
        }
    }
}

#[tokio::test]
async fn the_python_worker_heartbeats_reconnects_and_drains_on_sigterm() {
    let python = python_dir().join(".venv/bin/python");
    if !python.exists() {
        eprintln!("skipped: {} does not exist; run functions/python/setup.sh", python.display());
        return;
    }
    let mut server = FakeServer::start();
    let mut command = Command::new(python);
    command.current_dir(python_dir()).arg("examples/media_worker.py");
    // Slow work (about half a second an AV1 chunk), to have something in flight.
    let worker = Worker::start(command, &server, "50");
    let session = server.session().await;

    // A crash and a restart where it was: the worker comes back by itself.
    drop(session);
    let addr = server.stop();
    let mut server = FakeServer::start_on(addr);
    let mut session = server.session().await;

    let mut encode =
        invocation("encode", "media.encode", json!({ "uri": "s3://chunks/m/0.mov", "codec": "av1", "index": 0 }));
    encode.heartbeat_timeout_ms = 90;
    session.invoke(vec![encode]).await;
    match session.recv().await.msg {
        Some(stoa_proto::v1::worker_message::Msg::Heartbeat(beat)) => assert_eq!(beat.invocation_id, "encode"),
        other => panic!("expected a heartbeat first, got {other:?}"),
    }
    // Stop while the encode runs: it is still answered, then the session ends.
    worker.sigterm();
    let results = session.closed().await;
    assert_eq!(results.len(), 1, "{results:?}");
    assert!(value(&results[0])["uri"].as_str().unwrap().ends_with("/00000-av1.mp4"));
    assert_eq!(session.drains, 1, "the worker announces its drain to the server");
    worker.exited().await;
}

#[tokio::test]
async fn the_python_worker_drains_when_the_server_asks_then_reconnects() {
    let python = python_dir().join(".venv/bin/python");
    if !python.exists() {
        eprintln!("skipped: {} does not exist; run functions/python/setup.sh", python.display());
        return;
    }
    let mut server = FakeServer::start();
    let mut command = Command::new(python);
    command.current_dir(python_dir()).arg("examples/media_worker.py");
    let worker = Worker::start(command, &server, "50");
    let mut session = server.session().await;
    let mut encode =
        invocation("encode", "media.encode", json!({ "uri": "s3://chunks/m/0.mov", "codec": "av1", "index": 0 }));
    encode.heartbeat_timeout_ms = 90;
    session.invoke(vec![encode]).await;
    match session.recv().await.msg {
        Some(stoa_proto::v1::worker_message::Msg::Heartbeat(beat)) => assert_eq!(beat.invocation_id, "encode"),
        other => panic!("expected a heartbeat first, got {other:?}"),
    }
    session.drain(10_000).await;
    let late = invocation("late", "bench.noop", json!({ "n": 1 }));
    session.invoke(vec![late.clone()]).await;
    // A cancel of another attempt than the running one changes nothing.
    session.cancel_attempt("encode", 9).await;
    let mut results = session.closed().await;
    results.sort_by(|a, b| a.invocation_id.cmp(&b.invocation_id));
    assert_eq!(results.len(), 2, "{results:?}");
    assert!(value(&results[0])["uri"].as_str().unwrap().ends_with("/00000-av1.mp4"));
    assert_eq!(failure_kind(&results[1]), stoa_proto::v1::FailureKind::NotStarted);
    assert_eq!(session.drains, 0, "the worker itself is not stopping");
    // It comes back for more.
    let mut again = server.session().await;
    again.invoke(vec![late]).await;
    value(&again.result().await);
    worker.terminate().await;
}
