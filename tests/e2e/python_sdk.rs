//! The Python SDK (`functions/python`, package `stoa-worker`) as installed
//! by `functions/python/setup.sh`: its unit tests (pytest, including a wheel
//! build), and workers built on it against a real server: async and sync
//! handlers, retryable and fatal failures, a drain on SIGTERM that finishes
//! the work in flight, a reconnect after a server restart, and the runnable
//! example of functions/README.md.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use stoa_proto::v1 as pb;

use crate::client::{client, deploy, facts, Client};
use crate::support::{python, repo, Proc, Server, TOKEN_A};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

#[test]
fn python_sdk_unit_tests_pass() {
    let out = Command::new(python())
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "functions/python/tests"])
        .current_dir(repo())
        .output()
        .expect("run pytest");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{text}");
    assert!(out.status.success(), "the Python SDK's unit tests failed:\n{text}");
    assert!(text.contains(" passed"), "{text}");
}

fn e2e_worker(addr: &str) -> Proc {
    Proc(
        Command::new(python())
            .arg(repo().join("functions/python/tests/e2e_worker.py"))
            .args([addr, TOKEN_A])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the Python e2e worker"),
    )
}

async fn start(c: &mut Client, request_id: &str, job: Value) -> String {
    c.start_workflow(pb::StartWorkflowRequest {
        pack: "pysdk".into(),
        facts: facts(json!([{ "type": "Job", "fields": job }])),
        request_id: request_id.into(),
    })
    .await
    .expect("start")
    .into_inner()
    .workflow_id
}

/// The workflow's result once it ends (it must complete).
async fn result(c: &mut Client, id: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let w = c
            .get_workflow(pb::GetWorkflowRequest { workflow_id: id.into(), without_facts: true })
            .await
            .expect("get")
            .into_inner();
        if w.status != "running" {
            assert_eq!(w.status, "completed", "{id}: {}", w.reason);
            return serde_json::from_str(&w.result_json).expect("result JSON");
        }
        assert!(Instant::now() < deadline, "{id} still running after {within:?}: {w:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn wait_for_file(path: &Path, within: Duration) {
    let deadline = Instant::now() + within;
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} did not appear within {within:?}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sigterm(child: &std::process::Child) {
    let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().expect("kill");
    assert!(status.success());
}

fn wait_exit(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "the worker did not exit within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn python_sdk_handlers_failures_and_a_drain_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let mut worker = e2e_worker(&server.addr);
    let marker = dir.path().join("slow-started");
    rt().block_on(async {
        let mut c = client(&server.addr, TOKEN_A).await;
        deploy(&mut c, "tests/packs/pysdk").await;
        let mul = start(&mut c, "mul", json!({"kind": "mul", "state": "new", "a": 6, "b": 7})).await;
        let add = start(&mut c, "add", json!({"kind": "add", "state": "new", "a": 2, "b": 3})).await;
        let flaky = start(&mut c, "flaky", json!({"kind": "flaky", "state": "new", "id": "f"})).await;
        let declined = start(&mut c, "declined", json!({"kind": "declined", "state": "new", "id": "d"})).await;
        let within = Duration::from_secs(30);

        // An async handler.
        assert_eq!(result(&mut c, &mul, within).await, json!({"product": 42, "attempt": 1, "async": true}));
        // A sync handler, on a thread of its own.
        let sum = result(&mut c, &add, within).await;
        assert_eq!((sum["sum"].as_i64(), sum["thread"].as_str()), (Some(5), Some("stoa-py.add")), "{sum}");
        assert_eq!(sum["pid"].as_u64(), Some(u64::from(worker.0.id())));
        // A Failure, then any exception, are retried; the third attempt answers.
        assert_eq!(result(&mut c, &flaky, within).await, json!({"attempt": 3}));
        // Failure.fatal is not retried: the error section runs after attempt 1.
        assert_eq!(result(&mut c, &declined, within).await, json!({"error": "card declined on attempt 1"}));

        // SIGTERM while a call runs: the worker finishes and answers it,
        // then exits (there is no other worker to take it).
        let slow = start(
            &mut c,
            "slow",
            json!({"kind": "slow", "state": "new", "seconds": 1.5, "marker": marker.to_string_lossy()}),
        )
        .await;
        wait_for_file(&marker, within);
        sigterm(&worker.0);
        let status = wait_exit(&mut worker.0, Duration::from_secs(20));
        assert!(status.success(), "the worker exits cleanly after draining: {status}");
        let answer = tokio::time::timeout(Duration::from_secs(5), result(&mut c, &slow, within)).await;
        let answer = answer.expect("answered before the worker exited");
        assert_eq!((answer["slept"].as_f64(), answer["attempt"].as_u64()), (Some(1.5), Some(1)), "{answer}");
    });
}

#[test]
fn python_sdk_reconnects_after_a_server_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(dir.path());
    let listen = server.addr.trim_start_matches("http://").to_string();
    let worker = e2e_worker(&server.addr);
    let rt = rt();
    rt.block_on(async {
        let mut c = client(&server.addr, TOKEN_A).await;
        deploy(&mut c, "tests/packs/pysdk").await;
        let add = start(&mut c, "before", json!({"kind": "add", "state": "new", "a": 1, "b": 1})).await;
        assert_eq!(result(&mut c, &add, Duration::from_secs(30)).await["sum"], 2);
    });
    // A graceful stop (the server asks its workers to drain), then a server
    // on the same address and data: the worker comes back by itself.
    assert!(server.terminate().success());
    drop(server);
    let server = Server::start_listening(dir.path(), &listen);
    rt.block_on(async {
        let mut c = client(&server.addr, TOKEN_A).await;
        let add = start(&mut c, "after", json!({"kind": "add", "state": "new", "a": 20, "b": 22})).await;
        let sum = result(&mut c, &add, Duration::from_secs(30)).await;
        assert_eq!(sum["sum"], 42);
        assert_eq!(sum["pid"].as_u64(), Some(u64::from(worker.0.id())), "the same worker process");
    });
}

/// functions/README.md's Python example, run as it says: the inventory pack
/// with `examples/payments_worker.py` serving `payments.charge`.
#[test]
fn the_python_example_worker_runs_the_inventory_pack() {
    let readme = std::fs::read_to_string(repo().join("functions/README.md")).expect("functions/README.md");
    let example_path = repo().join("functions/python/examples/payments_worker.py");
    let example = std::fs::read_to_string(&example_path).expect("payments_worker.py");
    let block = readme
        .split("```python\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("functions/README.md has a ```python block");
    assert!(
        example.contains(block.trim()),
        "functions/README.md's Python example is not in {}",
        example_path.display()
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let _worker = Proc(
        Command::new(python())
            .arg(&example_path)
            .args(["--server", &server.addr, "--token", TOKEN_A])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn payments_worker.py"),
    );
    rt().block_on(async {
        let mut c = client(&server.addr, TOKEN_A).await;
        deploy(&mut c, "examples/packs/inventory").await;
        let text = std::fs::read_to_string(repo().join("examples/packs/inventory/facts.json")).expect("facts");
        let id = c
            .start_workflow(pb::StartWorkflowRequest {
                pack: "inventory".into(),
                facts: facts(serde_json::from_str(&text).expect("facts JSON")),
                request_id: "inventory".into(),
            })
            .await
            .expect("start")
            .into_inner()
            .workflow_id;
        let summary = result(&mut c, &id, Duration::from_secs(30)).await;
        assert_eq!(summary["cancelled"], json!(["o4"]), "visa-0000 is declined: {summary}");
        assert!(summary["shipped"].as_array().is_some_and(|s| !s.is_empty()), "{summary}");
        let w = c
            .get_workflow(pb::GetWorkflowRequest { workflow_id: id.clone(), without_facts: false })
            .await
            .expect("get")
            .into_inner();
        let orders: Vec<Value> = w
            .facts
            .iter()
            .filter(|f| f.r#type == "Order")
            .map(|f| serde_json::from_str(&f.fields_json).expect("fields"))
            .collect();
        let o4 = orders.iter().find(|o| o["id"] == "o4").expect("o4");
        assert_eq!(o4["reason"], "payment failed: card declined");
        let charged: Vec<&Value> =
            orders.iter().filter(|o| o["charge"].as_str().is_some_and(|c| c.starts_with("ch_"))).collect();
        assert!(!charged.is_empty(), "some orders were charged by the Python worker: {orders:?}");
    });
}
