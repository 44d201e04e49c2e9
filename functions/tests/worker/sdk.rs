//! The SDK's protocol behaviour, one test per promise.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use stoa_functions::{Builder, Context, Error, Failure, Worker};
use stoa_proto::v1::{worker_message, Hello, Invocation};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use stoa_proto::v1::FailureKind;

use crate::fake::{failure, failure_kind, invocation, value, FakeServer, TOKEN, WAIT};

#[derive(Debug, Deserialize)]
struct EncodeArgs {
    uri: String,
    codec: String,
    index: u32,
}

#[derive(Debug, Serialize)]
struct EncodeResult {
    uri: String,
    invocation_id: String,
    attempt: u32,
    workflow_id: String,
}

fn builder(url: &str) -> Builder {
    Worker::builder(url).token(TOKEN).reconnect_backoff(Duration::from_millis(10), Duration::from_millis(200))
}

fn encode(builder: Builder) -> Builder {
    builder.function("media.encode", |args: EncodeArgs, ctx: Context| async move {
        if args.uri == "boom" {
            panic!("boom");
        }
        Ok::<_, Failure>(EncodeResult {
            uri: format!("{}#{}.{}", args.uri, args.index, args.codec),
            invocation_id: ctx.invocation_id().to_owned(),
            attempt: ctx.attempt(),
            workflow_id: ctx.workflow_id().to_owned(),
        })
    })
}

/// Runs the worker until the returned token is cancelled.
fn spawn(builder: Builder) -> (CancellationToken, JoinHandle<Result<(), Error>>) {
    let worker = builder.build().expect("valid worker");
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(worker.run(shutdown.clone()));
    (shutdown, run)
}

async fn stopped(shutdown: CancellationToken, run: JoinHandle<Result<(), Error>>) {
    shutdown.cancel();
    tokio::time::timeout(WAIT, run).await.expect("the worker did not stop").unwrap().expect("the worker failed");
}

/// A worker with one function, `slow`, that reports each start on the
/// channel and answers "finished" after `ms` milliseconds.
fn slow_worker(url: &str, ms: u64) -> (Builder, mpsc::UnboundedReceiver<()>) {
    let (started_tx, started) = mpsc::unbounded_channel();
    let worker = builder(url).function("slow", move |_: serde_json::Value, _ctx: Context| {
        let started = started_tx.clone();
        async move {
            let _ = started.send(());
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, Failure>(json!("finished"))
        }
    });
    (worker, started)
}

fn encode_call(id: &str, uri: &str, index: serde_json::Value) -> Invocation {
    invocation(id, "media.encode", json!({ "uri": uri, "codec": "h264", "index": index }))
}

#[tokio::test]
async fn hello_carries_functions_and_max_in_flight() {
    let mut server = FakeServer::start();
    let worker = encode(builder(&server.url()))
        .function("bench.noop", |args: serde_json::Value, _ctx: Context| async move { Ok::<_, Failure>(args) })
        .name("test-worker")
        .max_in_flight(3);
    let (shutdown, run) = spawn(worker);
    let session = server.session().await;
    let expected = Hello {
        functions: vec!["media.encode".into(), "bench.noop".into()],
        max_in_flight: 3,
        name: "test-worker".into(),
    };
    assert_eq!(session.hello, expected);
    stopped(shutdown, run).await;
}

#[tokio::test]
async fn a_batch_is_answered_with_typed_results() {
    let mut server = FakeServer::start();
    let (shutdown, run) = spawn(encode(builder(&server.url())));
    let mut session = server.session().await;
    let mut retry = encode_call("inv_2", "s3://b", json!(7));
    retry.attempt = 2;
    session.invoke(vec![encode_call("inv_1", "s3://a", json!(3)), retry]).await;
    let results = session.results(2).await;
    assert_eq!(
        value(&results["inv_1"]),
        json!({ "uri": "s3://a#3.h264", "invocation_id": "inv_1", "attempt": 1, "workflow_id": "wf_test" })
    );
    assert_eq!(results["inv_1"].attempt, 1);
    assert_eq!(value(&results["inv_2"])["uri"], "s3://b#7.h264");
    assert_eq!(results["inv_2"].attempt, 2, "the attempt is answered as received");
    stopped(shutdown, run).await;
}

#[tokio::test]
async fn bad_arguments_are_a_fatal_failure_naming_the_field() {
    let mut server = FakeServer::start();
    let (shutdown, run) = spawn(encode(builder(&server.url())));
    let mut session = server.session().await;
    session
        .invoke(vec![
            encode_call("wrong_type", "s3://a", json!("three")),
            invocation("missing", "media.encode", json!({ "uri": "s3://a", "index": 1 })),
        ])
        .await;
    let results = session.results(2).await;
    let (message, retryable) = failure(&results["wrong_type"]);
    assert!(!retryable);
    assert!(message.contains("field `index`"), "{message}");
    let (message, retryable) = failure(&results["missing"]);
    assert!(!retryable);
    assert!(message.contains("missing field `codec`"), "{message}");
    stopped(shutdown, run).await;
}

#[tokio::test]
async fn a_panicking_handler_is_a_retryable_failure_and_the_worker_goes_on() {
    let mut server = FakeServer::start();
    let (shutdown, run) = spawn(encode(builder(&server.url())));
    let mut session = server.session().await;
    session.invoke(vec![encode_call("inv_boom", "boom", json!(1))]).await;
    let result = session.result().await;
    assert_eq!(failure(&result), ("handler panicked: boom".to_owned(), true));
    session.invoke(vec![encode_call("inv_ok", "s3://a", json!(1))]).await;
    assert_eq!(value(&session.result().await)["uri"], "s3://a#1.h264");
    stopped(shutdown, run).await;
}

#[tokio::test]
async fn an_unknown_function_is_not_started() {
    let mut server = FakeServer::start();
    let (shutdown, run) = spawn(encode(builder(&server.url())));
    let mut session = server.session().await;
    session.invoke(vec![invocation("inv_1", "media.unknown", json!({}))]).await;
    let result = session.result().await;
    assert_eq!(failure_kind(&result), FailureKind::NotStarted);
    let (message, _) = failure(&result);
    assert!(message.contains("media.unknown"), "{message}");
    stopped(shutdown, run).await;
}

#[tokio::test]
async fn concurrency_never_exceeds_max_in_flight() {
    let mut server = FakeServer::start();
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (running_in, peak_in) = (Arc::clone(&running), Arc::clone(&peak));
    let worker =
        builder(&server.url()).max_in_flight(3).function("slow", move |_: serde_json::Value, _ctx: Context| {
            let (running, peak) = (Arc::clone(&running_in), Arc::clone(&peak_in));
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(30)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, Failure>(json!(null))
            }
        });
    let (shutdown, run) = spawn(worker);
    let mut session = server.session().await;
    // More than max_in_flight at once, as a misbehaving server might send.
    let calls =
        |range: std::ops::Range<u32>| range.map(|i| invocation(&format!("inv_{i}"), "slow", json!({}))).collect();
    session.invoke(calls(0..8)).await;
    session.invoke(calls(8..12)).await;
    let results = session.results(12).await;
    assert!(results.values().all(|result| value(result).is_null()));
    assert_eq!(peak.load(Ordering::SeqCst), 3, "at most max_in_flight at once, and that many");
    stopped(shutdown, run).await;
}

/// Tells its channel when dropped: proves a handler was aborted.
struct DropSignal(mpsc::UnboundedSender<&'static str>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        let _ = self.0.send("dropped");
    }
}

#[tokio::test]
async fn cancel_aborts_the_handler_and_answers_nothing() {
    let mut server = FakeServer::start();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let worker = builder(&server.url())
        .function("hang", move |_: serde_json::Value, _ctx: Context| {
            let events = events_tx.clone();
            async move {
                let _signal = DropSignal(events.clone());
                let _ = events.send("started");
                tokio::time::sleep(Duration::from_secs(600)).await;
                Ok::<_, Failure>(json!("finished"))
            }
        })
        .function("quick", |_: serde_json::Value, _ctx: Context| async move { Ok::<_, Failure>(json!("quick")) });
    let (shutdown, run) = spawn(worker);
    let mut session = server.session().await;
    session.invoke(vec![invocation("inv_hang", "hang", json!({}))]).await;
    assert_eq!(tokio::time::timeout(WAIT, events.recv()).await.unwrap(), Some("started"));
    session.cancel("inv_hang").await;
    assert_eq!(tokio::time::timeout(WAIT, events.recv()).await.unwrap(), Some("dropped"));
    session.invoke(vec![invocation("inv_quick", "quick", json!({}))]).await;
    let result = session.result().await;
    assert_eq!(result.invocation_id, "inv_quick", "nothing is answered for a cancelled invocation");
    stopped(shutdown, run).await;
}

#[tokio::test]
async fn heartbeats_come_by_themselves_and_on_request() {
    let mut server = FakeServer::start();
    let worker = builder(&server.url())
        .function("long", |_: serde_json::Value, _ctx: Context| async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            Ok::<_, Failure>(json!("done"))
        })
        .function("beat", |_: serde_json::Value, ctx: Context| async move {
            ctx.heartbeat();
            Ok::<_, Failure>(json!("done"))
        });
    let (shutdown, run) = spawn(worker);
    let mut session = server.session().await;

    let mut long = invocation("inv_long", "long", json!({}));
    long.attempt = 3;
    long.heartbeat_timeout_ms = 150;
    session.invoke(vec![long]).await;
    let mut beats = 0;
    loop {
        match session.recv().await.msg {
            Some(worker_message::Msg::Heartbeat(beat)) => {
                assert_eq!((beat.invocation_id.as_str(), beat.attempt), ("inv_long", 3));
                beats += 1;
            }
            Some(worker_message::Msg::Result(result)) => {
                assert_eq!(value(&result), json!("done"));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // Every 50 ms for 400 ms; allow for a slow machine.
    assert!((3..=8).contains(&beats), "{beats} heartbeats");

    session.invoke(vec![invocation("inv_beat", "beat", json!({}))]).await;
    match session.recv().await.msg {
        Some(worker_message::Msg::Heartbeat(beat)) => assert_eq!(beat.invocation_id, "inv_beat"),
        other => panic!("expected a heartbeat, got {other:?}"),
    }
    assert_eq!(session.result().await.invocation_id, "inv_beat");
    stopped(shutdown, run).await;
}

#[tokio::test]
async fn the_worker_reconnects_when_the_server_comes_up_and_after_it_restarts() {
    // A port with nothing listening: the worker must wait and retry.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (shutdown, run) = spawn(encode(builder(&format!("http://{addr}"))));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut server = FakeServer::start_on(addr);
    let mut session = server.session().await;
    session.invoke(vec![encode_call("inv_1", "s3://a", json!(1))]).await;
    assert_eq!(value(&session.result().await)["uri"], "s3://a#1.h264");

    // A crash: every connection drops; in-flight work is the server's to redeliver.
    drop(session);
    let addr = server.stop();
    let mut server = FakeServer::start_on(addr);
    let mut session = server.session().await;
    session.invoke(vec![encode_call("inv_2", "s3://b", json!(2))]).await;
    assert_eq!(value(&session.result().await)["uri"], "s3://b#2.h264");
    stopped(shutdown, run).await;
}

#[tokio::test]
async fn shutdown_finishes_the_work_in_flight_then_closes() {
    let mut server = FakeServer::start();
    let (worker, mut started) = slow_worker(&server.url(), 300);
    let (shutdown, run) = spawn(worker);
    let mut session = server.session().await;
    session.invoke(vec![invocation("inv_slow", "slow", json!({}))]).await;
    tokio::time::timeout(WAIT, started.recv()).await.unwrap().unwrap();
    shutdown.cancel();
    // Work that arrives after the shutdown began is handed back at once,
    // as not started.
    session.invoke(vec![invocation("inv_late", "slow", json!({}))]).await;
    let results = session.results(2).await;
    assert_eq!(value(&results["inv_slow"]), json!("finished"));
    assert_eq!(failure(&results["inv_late"]).0, "the worker is draining");
    assert_eq!(failure_kind(&results["inv_late"]), FailureKind::NotStarted);
    assert!(session.closed().await.is_empty());
    assert_eq!(session.drains, 1, "the worker announces its drain to the server");
    tokio::time::timeout(WAIT, run).await.expect("run did not return").unwrap().unwrap();
}

#[tokio::test]
async fn a_refused_token_stops_the_worker_with_an_error() {
    let mut server = FakeServer::start();
    let worker = encode(Worker::builder(server.url()).token("wrong")).build().unwrap();
    let outcome = tokio::time::timeout(WAIT, worker.run(CancellationToken::new())).await.expect("run did not return");
    match outcome {
        Err(Error::Refused { code, .. }) => assert_eq!(code, tonic::Code::Unauthenticated),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let no_session = tokio::time::timeout(Duration::from_millis(50), server.session());
    assert!(no_session.await.is_err());
}

#[tokio::test]
async fn a_cancel_of_another_attempt_leaves_the_running_one() {
    let mut server = FakeServer::start();
    let worker = builder(&server.url()).function("wait", |_: serde_json::Value, _ctx: Context| async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok::<_, Failure>(json!("done"))
    });
    let (shutdown, run) = spawn(worker);
    let mut session = server.session().await;
    let mut second = invocation("inv_1", "wait", json!({}));
    second.attempt = 2;
    session.invoke(vec![second]).await;
    session.cancel_attempt("inv_1", 1).await;
    let result = session.result().await;
    assert_eq!((result.attempt, value(&result)), (2, json!("done")));
    stopped(shutdown, run).await;
}

#[tokio::test]
async fn a_drain_from_the_server_finishes_the_work_then_reconnects() {
    let mut server = FakeServer::start();
    let (worker, mut started) = slow_worker(&server.url(), 200);
    let (shutdown, run) = spawn(worker);
    let mut session = server.session().await;
    session.invoke(vec![invocation("inv_slow", "slow", json!({}))]).await;
    tokio::time::timeout(WAIT, started.recv()).await.unwrap().unwrap();
    session.drain(10_000).await;
    session.invoke(vec![invocation("inv_late", "slow", json!({}))]).await;
    let results = session.results(2).await;
    assert_eq!(value(&results["inv_slow"]), json!("finished"));
    assert_eq!(failure_kind(&results["inv_late"]), FailureKind::NotStarted);
    assert!(session.closed().await.is_empty());
    assert_eq!(session.drains, 0, "the worker itself is not shutting down");
    // It comes back for more.
    let mut again = server.session().await;
    again.invoke(vec![invocation("inv_next", "slow", json!({}))]).await;
    assert_eq!(value(&again.result().await), json!("finished"));
    stopped(shutdown, run).await;
}

/// A cluster's server names its members: the worker opens a session to
/// each, serves the work each leases on that session, and lets go of a
/// member that left once its session fails.
#[tokio::test]
async fn a_worker_serves_every_member_a_server_names() {
    use stoa_proto::v1::{server_message::Msg, Members};
    let mut first = FakeServer::start();
    let mut second = FakeServer::start();
    let (shutdown, run) = spawn(encode(builder(&first.url())));
    let seed = first.session().await;
    let both = vec![first.addr.to_string(), second.addr.to_string()];
    seed.send(Msg::Members(Members { addresses: both.clone() })).await;
    let mut other = second.session().await;
    other.invoke(vec![encode_call("inv_9", "s3://z", json!(1))]).await;
    assert_eq!(value(&other.result().await)["uri"], "s3://z#1.h264");
    // Named again: no second session.
    seed.send(Msg::Members(Members { addresses: both })).await;
    assert!(tokio::time::timeout(Duration::from_millis(300), second.session()).await.is_err());
    // The second server leaves the cluster, then its process dies.
    seed.send(Msg::Members(Members { addresses: vec![first.addr.to_string()] })).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let addr = second.stop();
    let mut back = FakeServer::start_on(addr);
    assert!(
        tokio::time::timeout(Duration::from_secs(1), back.session()).await.is_err(),
        "a worker reconnected to a server that left"
    );
    stopped(shutdown, run).await;
}
