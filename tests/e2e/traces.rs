//! OpenTelemetry traces from the client to the workers: an OTLP/gRPC
//! receiver started here collects the spans of `stoa start` (the client),
//! the server, the Rust worker (serving media.encode) and the Python worker
//! (media.split, media.assemble, media.index) while one `video-encode`
//! workflow runs. Every process exports only when it stops gracefully or
//! its batch is due, so the flush at shutdown is part of what is checked.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use stoa_proto::v1 as pb;

use crate::client::{client, deploy};
use crate::support::{python, repo, stoa, worker_bin, Proc, Server, TOKEN_A};

/// One span as the receiver got it.
#[derive(Clone, Debug)]
struct Got {
    service: String,
    name: String,
    trace: String,
    id: String,
    parent: String,
    attrs: BTreeMap<String, String>,
    /// Event names with their attributes.
    events: Vec<(String, BTreeMap<String, String>)>,
}

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Got>>>);

fn text(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(i)) => i.to_string(),
                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                Some(any_value::Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().expect("spans");
        for rs in req.into_inner().resource_spans {
            let service =
                rs.resource.as_ref().and_then(|r| text(&r.attributes).remove("service.name")).unwrap_or_default();
            for s in rs.scope_spans.into_iter().flat_map(|ss| ss.spans) {
                got.push(Got {
                    service: service.clone(),
                    name: s.name.clone(),
                    trace: hex(&s.trace_id),
                    id: hex(&s.span_id),
                    parent: hex(&s.parent_span_id),
                    attrs: text(&s.attributes),
                    events: s.events.iter().map(|e| (e.name.clone(), text(&e.attributes))).collect(),
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Receiver {
    fn spans(&self) -> Vec<Got> {
        self.0.lock().expect("spans").clone()
    }
}

/// SIGTERM, then wait (bounded): a graceful stop exports what is batched.
fn stop(p: &mut std::process::Child, what: &str) {
    let _ = Command::new("kill").arg("-TERM").arg(p.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "{what} did not stop within 30 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The receiver, serving on `rt` at the endpoint returned.
fn receiver(rt: &tokio::runtime::Runtime) -> (Receiver, String) {
    let receiver = Receiver::default();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let serving = receiver.clone();
    rt.spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(serving))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    (receiver, endpoint)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// The workflow once it is no longer running (or after a minute).
async fn finished(addr: &str, wf: &str) -> pb::Workflow {
    let mut c = client(addr, TOKEN_A).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let w = c
            .get_workflow(pb::GetWorkflowRequest { workflow_id: wf.to_string(), without_facts: true })
            .await
            .expect("get")
            .into_inner();
        if w.status != "running" || Instant::now() > deadline {
            return w;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn one_video_encode_run_is_one_trace_from_client_to_both_workers() {
    let rt = runtime();
    let (receiver, endpoint) = receiver(&rt);
    let otel = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())];

    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start_env(&dir.path().join("data"), &[], &otel);
    rt.block_on(async { deploy(&mut client(&server.addr, TOKEN_A).await, "examples/packs/video-encode").await });
    let mut rust = Proc(
        Command::new(worker_bin())
            .args(["--server", &server.addr, "--token", TOKEN_A, "--work-scale", "0", "--functions", "media.encode"])
            .envs(otel)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn stoa-worker-media"),
    );
    let mut py = Proc(
        Command::new(python())
            .arg(repo().join("functions/python/examples/media_worker.py"))
            .args(["--server", &server.addr, "--token", TOKEN_A, "--work-scale", "0"])
            .args(["--functions", "media.split,media.assemble,media.index"])
            .envs(otel)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the Python worker"),
    );

    // The client: `stoa start`, exporting its own span, the trace's root.
    let facts = dir.path().join("facts.json");
    std::fs::write(
        &facts,
        r#"[{"type": "Source", "fields": {"uri": "s3://in/traced.mov"}},
            {"type": "Recipe", "fields": {"codec": "h264", "chunk_seconds": 120, "max_chunk_retries": 2}}]"#,
    )
    .expect("facts");
    let out = stoa()
        .args(["start", "video-encode", "--server", &server.addr, "--token", TOKEN_A, "--json", "--request-id", "t1"])
        .arg("--facts")
        .arg(&facts)
        .envs(otel)
        .env_remove("TRACEPARENT")
        .output()
        .expect("stoa start");
    assert!(out.status.success(), "stoa start: {}", String::from_utf8_lossy(&out.stderr));
    let started: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let wf = started["workflow_id"].as_str().expect("workflow id").to_string();

    let w = rt.block_on(finished(&server.addr, &wf));
    assert_eq!(w.status, "completed", "{}", w.reason);

    // A run its caller left out of sampling (flags 00) is traced nowhere:
    // not by the server's request, turns and dispatches, not by a worker.
    let unsampled = "00-5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e-00f067aa0ba902b7-00";
    let out = stoa()
        .args(["start", "video-encode", "--server", &server.addr, "--token", TOKEN_A, "--json", "--request-id", "t2"])
        .arg("--facts")
        .arg(&facts)
        .args(["--traceparent", unsampled])
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .output()
        .expect("stoa start");
    assert!(out.status.success(), "stoa start: {}", String::from_utf8_lossy(&out.stderr));
    let started: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let quiet = started["workflow_id"].as_str().expect("workflow id").to_string();

    let w = rt.block_on(finished(&server.addr, &quiet));
    assert_eq!(w.status, "completed", "{}", w.reason);

    // A caller's traceparent with this process not exporting: the
    // server's request span continues it as given.
    let given = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let out = stoa()
        .args(["get", &wf, "--server", &server.addr, "--token", TOKEN_A, "--no-facts", "--json"])
        .env("TRACEPARENT", given)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .output()
        .expect("stoa get");
    assert!(out.status.success(), "stoa get: {}", String::from_utf8_lossy(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let kept = got["traceparent"].as_str().expect("the workflow's traceparent").to_string();
    // A malformed one from the command line is refused, naming the flag...
    let out = stoa()
        .args(["get", &wf, "--server", &server.addr, "--token", TOKEN_A, "--traceparent", "00-nothex-01"])
        .output()
        .expect("stoa get");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--traceparent"), "{}", String::from_utf8_lossy(&out.stderr));
    // ...and one in a hostile client's metadata is ignored: the call works.
    rt.block_on(async {
        let mut c = client(&server.addr, TOKEN_A).await;
        for bad in ["00-zz".to_string(), "f".repeat(8000), format!("{given}-x")] {
            let mut req = tonic::Request::new(pb::GetWorkflowRequest { workflow_id: wf.clone(), without_facts: true });
            req.metadata_mut().insert("traceparent", bad.parse().expect("ascii"));
            req.metadata_mut().insert("tracestate", "a=b,".repeat(300).parse().expect("ascii"));
            c.get_workflow(req).await.expect("a call with a bad traceparent is served");
        }
    });

    stop(&mut rust.0, "the Rust worker");
    stop(&mut py.0, "the Python worker");
    stop(&mut server.child, "the server");

    // Everything was exported before each process ended.
    let spans = receiver.spans();
    let root = spans
        .iter()
        .find(|s| s.service == "stoa-cli" && s.name == "stoa start")
        .unwrap_or_else(|| panic!("no client span among {} spans", spans.len()));
    assert!(root.parent.is_empty(), "the client's span is the root: {root:?}");
    let trace = root.trace.clone();
    assert_eq!(&kept[3..35], trace, "GetWorkflow shows the run's trace: {kept}");
    let run: Vec<&Got> = spans.iter().filter(|s| s.trace == trace).collect();
    let names = |service: &str| -> BTreeSet<String> {
        run.iter().filter(|s| s.service == service).map(|s| s.name.clone()).collect()
    };
    let server_names = names("stoa-server");
    for want in ["stoa.v1.Stoa/StartWorkflow", "turn", "commit", "dispatch"] {
        assert!(server_names.contains(want), "no {want} span in the run's trace: {server_names:?}");
    }
    assert_eq!(names("stoa-worker-media"), BTreeSet::from(["media.encode".to_string()]));
    assert_eq!(
        names("stoa-worker-media.py"),
        ["media.assemble", "media.index", "media.split"].into_iter().map(String::from).collect()
    );

    // Nothing of the run strays into another trace: outside it are only
    // the test's own calls, each a root of its own.
    for s in spans.iter().filter(|s| s.trace != trace) {
        let own = s.service == "stoa-server"
            && s.parent.is_empty()
            && ["stoa.v1.Stoa/DeployPack", "stoa.v1.Stoa/GetWorkflow"].contains(&s.name.as_str());
        let continued = s.trace == given[3..35] && s.parent == given[36..52] && s.name == "stoa.v1.Stoa/GetWorkflow";
        assert!(own || continued, "a span outside the run's trace: {s:?}");
    }
    assert!(
        spans.iter().any(|s| s.trace == given[3..35] && s.parent == given[36..52]),
        "the server continued the --traceparent given to stoa get"
    );

    let leaked: Vec<&Got> = spans.iter().filter(|s| s.trace == unsampled[3..35]).collect();
    assert!(leaked.is_empty(), "spans of a trace sampled out: {leaked:?}");

    // The run's spans make one tree: every parent is there, one root.
    let ids: BTreeMap<&str, &Got> = run.iter().map(|s| (s.id.as_str(), *s)).collect();
    assert_eq!(ids.len(), run.len(), "span ids are unique");
    let roots: Vec<&&Got> = run.iter().filter(|s| s.parent.is_empty()).collect();
    assert_eq!(roots.len(), 1, "one root: {roots:?}");
    for s in &run {
        assert!(s.parent.is_empty() || ids.contains_key(s.parent.as_str()), "the parent of {s:?} is missing");
    }
    let parent = |s: &Got| ids[s.parent.as_str()].name.clone();
    // Each worker's span is a child of the server's dispatch of that call,
    // and each dispatch and each reaction turn (applying an answer) of the
    // turn that made the invocation.
    for s in run.iter().filter(|s| s.service.starts_with("stoa-worker-media")) {
        let d = ids[s.parent.as_str()];
        assert_eq!(d.name, "dispatch", "{s:?}");
        assert_eq!(d.attrs.get("stoa.invocation"), s.attrs.get("stoa.invocation"));
        assert_eq!(d.attrs.get("stoa.outcome").map(String::as_str), Some("ok"), "{d:?}");
    }
    for s in run.iter().filter(|s| s.name == "dispatch") {
        assert_eq!(parent(s), "turn", "{s:?}");
    }
    let turns: Vec<&&Got> = run.iter().filter(|s| s.name == "turn").collect();
    let reactions: Vec<&&&Got> =
        turns.iter().filter(|t| t.attrs.get("stoa.input").is_some_and(|i| i.starts_with("result of "))).collect();
    assert!(reactions.len() >= 4, "split, encodes, assemble, index: {} reaction turns", reactions.len());
    for r in &reactions {
        let inv = &r.attrs["stoa.input"]["result of ".len()..];
        let d = run
            .iter()
            .find(|s| s.name == "dispatch" && s.attrs.get("stoa.invocation").map(String::as_str) == Some(inv))
            .unwrap_or_else(|| panic!("no dispatch of {inv}"));
        assert_eq!(r.parent, d.parent, "the reaction to {inv} continues the turn that called it");
    }
    let start = turns.iter().find(|t| parent(t) == "stoa.v1.Stoa/StartWorkflow").expect("the start turn");
    assert_eq!(start.attrs.get("stoa.turn").map(String::as_str), Some("1"));
    assert_eq!(start.attrs.get("stoa.workflow"), Some(&wf));
    assert_eq!(parent(ids[start.parent.as_str()]), "stoa start");
    // Firings are events of their turn: rule, section, facts matched.
    let firings: Vec<&BTreeMap<String, String>> =
        turns.iter().flat_map(|t| t.events.iter()).filter(|(n, _)| n == "firing").map(|(_, a)| a).collect();
    assert!(!firings.is_empty(), "no firing events");
    assert!(firings.iter().all(|a| a.contains_key("stoa.rule") && a.contains_key("stoa.section")));
    assert!(firings.iter().any(|a| a["stoa.section"] == "reaction" && a["stoa.facts"].starts_with('f')), "{firings:?}");
}

/// `stoa serve --log-format json` at the default level: one JSON object a
/// line, few of them, and a failed workflow's line names its tenant,
/// workflow and trace.
#[test]
fn serve_logs_json_lines_with_tenant_workflow_and_trace_ids() {
    use std::io::BufRead;
    let rt = runtime();
    let (_receiver, endpoint) = receiver(&rt);
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("serve.log");
    let mut child = Proc(
        stoa()
            .args(["serve", "--listen", "127.0.0.1:0", "--token", &format!("a={TOKEN_A}"), "--log-format", "json"])
            .arg("--data")
            .arg(dir.path().join("data"))
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .env_remove("STOA_LOG")
            .env_remove("STOA_LOG_FORMAT")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn stoa serve"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let addr = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("listening on ").map(|a| format!("http://{a}")))
        .expect("the server's address");
    let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let wf = rt.block_on(async {
        let mut c = client(&addr, TOKEN_A).await;
        deploy(&mut c, "examples/packs/video-encode").await;
        let mut req = tonic::Request::new(pb::StartWorkflowRequest {
            pack: "video-encode".into(),
            facts: crate::client::video_facts("s3://in/logged.mov"),
            request_id: "logged".into(),
        });
        req.metadata_mut().insert("traceparent", given.parse().expect("ascii"));
        let wf = c.start_workflow(req).await.expect("start").into_inner().workflow_id;
        c.cancel_workflow(pb::CancelWorkflowRequest {
            workflow_id: wf.clone(),
            reason: "enough".into(),
            ..Default::default()
        })
        .await
        .expect("cancel");
        wf
    });
    stop(&mut child.0, "the server");

    let text = std::fs::read_to_string(&log).expect("log");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    assert!(lines.len() <= 10, "a short run at info logs a few lifecycle lines, not {}:\n{text}", lines.len());
    assert!(lines.iter().all(|l| ["INFO", "WARN", "ERROR"].contains(&l["level"].as_str().unwrap_or(""))), "{text}");
    assert!(lines.iter().any(|l| l["message"] == "serving" && l["traces_exported"] == true), "{text}");
    let failed = lines.iter().find(|l| l["message"] == "workflow cancelled").unwrap_or_else(|| panic!("{text}"));
    assert_eq!(failed["tenant"], "a", "{failed}");
    assert_eq!(failed["workflow"], wf.as_str(), "{failed}");
    assert_eq!(failed["trace_id"], &given[3..35], "{failed}");
}

/// An invocation made before a restart keeps its trace: after the server
/// is stopped with the split pending and started again, the dispatch, the
/// worker's span and the reaction join the trace of the turn that made the
/// call, made by the first server process.
#[test]
fn an_answer_after_a_restart_joins_the_trace_of_its_call() {
    let rt = runtime();
    let (receiver, endpoint) = receiver(&rt);
    let otel = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())];
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let given = "00-5bf92f3577b34da6a3ce929d0e0e4736-10f067aa0ba902b7-01";
    let mut first = Server::start_env(&data, &[], &otel);
    let wf = rt.block_on(async {
        let mut c = client(&first.addr, TOKEN_A).await;
        deploy(&mut c, "examples/packs/video-encode").await;
        let mut req = tonic::Request::new(pb::StartWorkflowRequest {
            pack: "video-encode".into(),
            facts: crate::client::video_facts("s3://in/restarted.mov"),
            request_id: "restarted".into(),
        });
        req.metadata_mut().insert("traceparent", given.parse().expect("ascii"));
        c.start_workflow(req).await.expect("start").into_inner().workflow_id
    });
    stop(&mut first.child, "the first server");

    let mut second = Server::start_env(&data, &[], &otel);
    let mut worker = Proc(
        Command::new(worker_bin())
            .args(["--server", &second.addr, "--token", TOKEN_A, "--work-scale", "0"])
            .envs(otel)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn stoa-worker-media"),
    );
    let w = rt.block_on(async {
        let mut c = client(&second.addr, TOKEN_A).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let w = c
                .get_workflow(pb::GetWorkflowRequest { workflow_id: wf.clone(), without_facts: true })
                .await
                .expect("get")
                .into_inner();
            if w.status != "running" || Instant::now() > deadline {
                return w;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert_eq!(w.status, "completed", "{}", w.reason);
    assert_eq!(&w.traceparent[3..35], &given[3..35], "the workflow keeps its trace across the restart");
    stop(&mut worker.0, "the worker");
    stop(&mut second.child, "the second server");

    let spans = receiver.spans();
    let run: Vec<&Got> = spans.iter().filter(|s| s.trace == given[3..35]).collect();
    let ids: BTreeMap<&str, &Got> = run.iter().map(|s| (s.id.as_str(), *s)).collect();
    for s in &run {
        assert!(ids.contains_key(s.parent.as_str()) || s.parent == given[36..52], "the parent of {s:?} is missing");
    }
    // The first turn (split called) was the first process's; its
    // invocation was dispatched, answered and applied by the second.
    let first_turn = run
        .iter()
        .find(|s| s.name == "turn" && s.attrs.get("stoa.turn").map(String::as_str) == Some("1"))
        .expect("the start turn");
    let children: Vec<&&Got> = run.iter().filter(|s| s.parent == first_turn.id).collect();
    let count = |name: &str, input: &str| {
        children
            .iter()
            .filter(|s| s.name == name && s.attrs.get("stoa.input").map_or("", String::as_str).starts_with(input))
            .count()
    };
    assert_eq!(count("dispatch", ""), 1, "the split's dispatch after the restart continues the start turn");
    assert_eq!(count("turn", "result of "), 1, "the reaction to the split after the restart continues the start turn");
    let split = run.iter().find(|s| s.name == "media.split").expect("the worker's span of the split");
    assert_eq!(ids[split.parent.as_str()].parent, first_turn.id);
    assert!(run.iter().filter(|s| s.name == "media.encode").count() >= 1);
    assert!(run.iter().any(|s| s.name == "media.index"), "the whole run is in the trace");
}
