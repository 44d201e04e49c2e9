//! Prometheus metrics over a real server (`--metrics-listen 127.0.0.1:0`):
//! the backlog rises while no worker serves the function and drains once
//! one does, the outcome counters match what the worker answered, the
//! latency histograms have a sample per attempt, and no label names a
//! workflow or an invocation; timers, schedule ticks and failed turns
//! are counted.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use stoa_proto::v1 as pb;

use crate::client::{client, deploy, facts, RawWorker};
use crate::support::{stoa, Server, TOKEN_A, TOKEN_B};

const WAIT: Duration = Duration::from_secs(30);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// `GET path` over HTTP/1.1 on loopback: (status line, headers, body).
fn get(addr: &str, path: &str) -> (String, String, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics listener");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("request");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a head and a body");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_ascii_lowercase(), body.to_string())
}

/// One scrape: series as (name, labels) → value.
struct Scraped {
    text: String,
    series: Vec<(String, BTreeMap<String, String>, f64)>,
}

fn scrape(addr: &str) -> Scraped {
    let (status, headers, text) = get(addr, "/metrics");
    assert!(status.contains("200"), "{status}");
    assert!(headers.contains("content-type: text/plain; version=0.0.4"), "{headers}");
    let series = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').expect("a value");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("not a number: {l}"));
            let (name, labels) = match key.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (key, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once("=\"").expect("k=\"v\"");
                    (k.to_string(), v.trim_end_matches('"').to_string())
                })
                .collect();
            (name.to_string(), labels, value)
        })
        .collect();
    Scraped { text, series }
}

impl Scraped {
    /// The sum of the series of `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.series
            .iter()
            .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
            .map(|s| s.2)
            .sum()
    }

    fn has(&self, name: &str) -> bool {
        self.series.iter().any(|(n, _, _)| n == name)
    }
}

/// Scrapes until `ok` holds, for up to `WAIT`.
fn scrape_until(addr: &str, what: &str, ok: impl Fn(&Scraped) -> bool) -> Scraped {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = scrape(addr);
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}\n{}", s.text);
        std::thread::sleep(Duration::from_millis(100));
    }
}

const WORK: [(&str, &str); 2] = [("tenant", "a"), ("function", "t.work")];

/// What the worker answers for job `n`: 0 and 1 a value, 2 and 3 a
/// retryable failure at the first attempt and a value at the second, 4 and
/// 5 a failure that is not retryable.
async fn answer(w: &RawWorker, inv: &pb::Invocation) {
    let args: serde_json::Value = serde_json::from_str(&inv.args_json).expect("args");
    let sent = match (args["n"].as_i64().expect("n"), inv.attempt) {
        (0 | 1, _) | (2 | 3, 2) => w.answer(inv, serde_json::json!({"done": true})).await,
        (2 | 3, _) => w.fail(inv, true, pb::FailureKind::Failed).await,
        _ => w.fail(inv, false, pb::FailureKind::Failed).await,
    };
    assert!(sent, "the session ended");
}

#[test]
fn the_backlog_rises_and_drains_and_outcomes_match_the_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with(dir.path(), &["--metrics-listen", "127.0.0.1:0"]);
    let m = server.metrics.clone().expect("the server printed its metrics address");
    rt().block_on(async {
        let mut a = client(&server.addr, TOKEN_A).await;
        deploy(&mut a, "tests/packs/once").await;
        let mut ids = Vec::new();
        for n in 0..6 {
            let r = a
                .start_workflow(pb::StartWorkflowRequest {
                    pack: "once".into(),
                    facts: facts(serde_json::json!([{"type": "Job", "fields": {"n": n, "state": "new"}}])),
                    request_id: format!("m-{n}"),
                })
                .await
                .expect("start")
                .into_inner();
            ids.push(r.workflow_id);
        }

        // No worker serves t.work: the six wait, and the oldest ages.
        let queued = [WORK[0], WORK[1], ("priority", "0"), ("state", "queued")];
        let s = scrape_until(&m, "six queued, the oldest waiting 300 ms", |s| {
            s.sum("stoa_invocations_pending", &queued) == 6.0
                && s.sum("stoa_invocations_oldest_queued_seconds", &WORK) >= 0.3
        });
        assert_eq!(s.sum("stoa_invocations_pending", &[("state", "running")]), 0.0);
        assert_eq!(s.sum("stoa_workflows_live", &[("tenant", "a")]), 6.0);
        assert_eq!(s.sum("stoa_workers_connected", &WORK), 0.0);
        for id in &ids {
            let key = id.strip_prefix("wf_").expect("a workflow id");
            assert!(!s.text.contains(key), "a workflow id in the metrics:\n{}", s.text);
        }

        // A worker connects and answers as `answer` says, until all six
        // have a final outcome.
        let mut w = RawWorker::connect(&server.addr, TOKEN_A, &["t.work"], 8).await.expect("worker");
        let s = scrape(&m);
        assert_eq!(s.sum("stoa_workers_connected", &WORK), 1.0, "{}", s.text);
        let deadline = Instant::now() + WAIT;
        let mut answered = 0;
        while answered < 8 {
            assert!(Instant::now() < deadline, "8 attempts not offered within {WAIT:?}; {answered} were");
            for inv in w.invocations(Duration::from_secs(1)).await {
                answer(&w, &inv).await;
                answered += 1;
            }
        }
        let attempts = "stoa_invocation_attempts_total";
        let s = scrape_until(&m, "six final outcomes, nothing pending", |s| {
            s.sum("stoa_invocations_finished_total", &WORK) == 6.0 && s.sum("stoa_invocations_pending", &WORK) == 0.0
        });
        let outcome = |o: &str| s.sum(attempts, &[WORK[0], WORK[1], ("outcome", o)]);
        assert_eq!(
            ["ok", "retry", "error", "timeout", "lost_worker", "not_started", "cancelled"].map(outcome),
            [4.0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0],
            "{}",
            s.text
        );
        let finished = |r: &str| s.sum("stoa_invocations_finished_total", &[WORK[0], WORK[1], ("result", r)]);
        assert_eq!((finished("ok"), finished("error")), (4.0, 2.0));
        // A sample per attempt: six first attempts and two retries.
        for h in ["stoa_invocation_schedule_to_start_seconds", "stoa_invocation_start_to_close_seconds"] {
            assert_eq!(s.sum(&format!("{h}_count"), &WORK), 8.0, "{h}\n{}", s.text);
            assert_eq!(s.sum(&format!("{h}_bucket"), &[WORK[0], WORK[1], ("le", "+Inf")]), 8.0, "{h}");
        }
        // The first attempts waited for the worker at least 300 ms.
        let s2s = "stoa_invocation_schedule_to_start_seconds_bucket";
        assert!(s.sum(s2s, &[WORK[0], WORK[1], ("le", "0.25")]) <= 2.0, "{}", s.text);
        assert_eq!(s.sum("stoa_invocations_oldest_queued_seconds", &WORK), 0.0);
        assert_eq!(s.sum("stoa_worker_slots_free", &WORK), 8.0);

        // Six starts and six results at least, each a committed turn; the
        // rule's action ran six times, its reaction four (the failures
        // have no error section to run).
        let rule = [("tenant", "a"), ("pack", "once"), ("rule", "work")];
        let s = scrape_until(&m, "the workflows' last turns committed", |s| {
            s.sum("stoa_rule_firings_total", &[rule[0], rule[1], rule[2], ("section", "reaction")]) == 4.0
                && s.sum("stoa_turns_committed_total", &[("tenant", "a")]) >= 12.0
        });
        assert_eq!(s.sum("stoa_rule_firings_total", &[rule[0], rule[1], rule[2], ("section", "action")]), 6.0);
        assert!(s.sum("stoa_commit_batch_turns_count", &[]) >= 1.0);
        assert!(s.sum("stoa_commit_flush_seconds_count", &[]) >= 1.0);
        assert!(s.sum("stoa_store_size_bytes", &[]) > 0.0, "{}", s.text);
        assert!(s.has("stoa_workflows_loaded"));
        assert!(s.text.contains("# TYPE stoa_invocation_schedule_to_start_seconds histogram"));
        assert!(s.text.contains("# HELP stoa_invocations_pending Invocations this server holds"));
        for id in &ids {
            let key = id.strip_prefix("wf_").expect("a workflow id");
            assert!(!s.text.contains(key), "a workflow id in the metrics:\n{}", s.text);
        }
        assert!(!s.text.contains("inv_"), "an invocation id in the metrics:\n{}", s.text);

        // The other tenant has nothing of its own to show.
        let _b = client(&server.addr, TOKEN_B).await;
        assert_eq!(s.sum("stoa_invocation_attempts_total", &[("tenant", "b")]), 0.0);
    });

    let (status, _, body) = get(&m, "/nope");
    assert!(status.contains("404"), "{status}");
    assert!(body.contains("/metrics"), "{body}");
}

#[test]
fn a_metrics_address_in_use_stops_the_start_with_its_cause() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = stoa()
        .args(["serve", "--listen", "127.0.0.1:0", "--token", &format!("a={TOKEN_A}"), "--metrics-listen", &addr])
        .arg("--data")
        .arg(dir.path())
        .output()
        .expect("run stoa serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("metrics listen on {addr}: ")), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening on"), "nothing was served");
}

/// A pack whose workflows wait on a 1 s timer, and whose `Boom` fails its turn.
fn clock_pack() -> Vec<pb::PackFile> {
    let file = |path: &str, text: &str| pb::PackFile { path: path.into(), content: text.as_bytes().to_vec() };
    vec![
        file("pack.toml", "[pack]\nname = \"clock\"\nversion = \"1\"\n"),
        file(
            "clock.rules",
            r#"
rule "wait" { match { j: Job(state == "new") } action { modify(j, #{ state: "waiting" }); after("1s", "Ring", #{ n: 1 }); } }
rule "ring" { match { r: Ring() } action { complete(#{ rang: true }); } }
rule "boom" { match { b: Boom() } action { let x = 1 / 0; } }
"#,
        ),
    ]
}

#[test]
fn timers_schedules_and_failed_turns_are_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with(dir.path(), &["--metrics-listen", "127.0.0.1:0"]);
    let m = server.metrics.clone().expect("the server printed its metrics address");
    rt().block_on(async {
        let mut b = client(&server.addr, TOKEN_B).await;
        b.deploy_pack(pb::DeployPackRequest { files: clock_pack(), ..Default::default() }).await.expect("deploy");
        for (i, ty) in ["Job", "Job", "Job", "Boom"].iter().enumerate() {
            b.start_workflow(pb::StartWorkflowRequest {
                pack: "clock".into(),
                facts: facts(serde_json::json!([{"type": ty, "fields": {"state": "new"}}])),
                request_id: format!("c-{i}"),
            })
            .await
            .expect("start");
        }
        let s = scrape_until(&m, "three timers pending", |s| s.sum("stoa_timers_pending", &[]) == 3.0);
        assert_eq!(s.sum("stoa_turn_failures_total", &[("tenant", "b"), ("kind", "rule_error")]), 1.0, "{}", s.text);
        let s = scrape_until(&m, "three timers fired", |s| {
            s.sum("stoa_timer_lateness_seconds_count", &[("tenant", "b")]) == 3.0
                && s.sum("stoa_timers_pending", &[]) == 0.0
        });
        assert_eq!(s.sum("stoa_timer_lateness_seconds_bucket", &[("tenant", "b"), ("le", "+Inf")]), 3.0);
        assert_eq!(s.sum("stoa_rule_firings_total", &[("tenant", "b"), ("pack", "clock"), ("rule", "ring")]), 3.0);

        // The ticker's schedule starts a workflow every second.
        deploy(&mut b, "tests/packs/ticker").await;
        scrape_until(&m, "a schedule tick", |s| {
            s.sum("stoa_schedule_tick_lateness_seconds_count", &[("tenant", "b")]) >= 1.0
        });
    });
}
