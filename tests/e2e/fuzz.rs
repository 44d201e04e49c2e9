//! A seeded campaign of random and mangled requests against a real server:
//! every `stoa.v1.Stoa` RPC and the `Workers` session, from two tenants,
//! each trying the other's names and ids. No call may answer INTERNAL (or
//! UNKNOWN, a handler that panicked) or take longer than a bound; no
//! answer to one tenant may carry the other's data; afterwards the server
//! is up, healthy, and both tenants' workflows still complete.
//!
//! A few seconds by default. `STOA_TEST_SEED=N` replays a run (the seed
//! is printed first); `STOA_FUZZ_CALLS=N` runs a longer campaign.

use std::time::{Duration, Instant};

use prost::bytes::{Buf, BufMut};
use prost::Message;
use stoa_proto::v1 as pb;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::client::{channel, RawWorker};
use crate::support::{Rng, Server, TOKEN_A, TOKEN_B};

/// Each call answers within this, on a loaded 2-core CI machine running a
/// debug build; calls take milliseconds.
const BOUND: Duration = Duration::from_secs(15);

fn calls() -> usize {
    std::env::var("STOA_FUZZ_CALLS").ok().and_then(|s| s.parse().ok()).unwrap_or(300)
}

// ---- raw gRPC: request bytes as they are, answers as bytes

#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

fn authorized<T>(body: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(body);
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
    req
}

/// One unary call, or the first answers of a stream (a watch stays open
/// while its workflow runs: what came within a moment is the answer).
async fn raw_call(
    ch: &Channel,
    token: &str,
    path: &str,
    body: Vec<u8>,
    streaming: bool,
) -> Result<Vec<Vec<u8>>, Status> {
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready().await.map_err(|e| Status::unavailable(format!("not ready: {e}")))?;
    let path = PathAndQuery::try_from(path.to_string()).expect("path");
    if !streaming {
        return grpc.unary(authorized(body, token), path, Raw).await.map(|r| vec![r.into_inner()]);
    }
    let mut stream = grpc.server_streaming(authorized(body, token), path, Raw).await?.into_inner();
    let mut out = Vec::new();
    while out.len() < 50 {
        match tokio::time::timeout(Duration::from_millis(200), stream.message()).await {
            Ok(Ok(Some(m))) => out.push(m),
            Ok(Ok(None)) | Err(_) => break,
            Ok(Err(e)) => return Err(e),
        }
    }
    Ok(out)
}

// ---- what each tenant knows

/// One tenant's names and ids, and the marker its data carries: answers to
/// the other tenant must never contain it.
#[derive(Clone, Debug, Default)]
struct Known {
    tenant: &'static str,
    token: &'static str,
    marker: String,
    packs: Vec<String>,
    workflows: Vec<String>,
    /// Workflows held for the final check: only the other tenant's
    /// generator sees them (it tries them all).
    reserved: Vec<String>,
    invocations: Vec<String>,
    /// The invocations of the reserved workflows (for the other tenant).
    reserved_invocations: Vec<String>,
    signals: Vec<String>,
    schedules: Vec<String>,
    fact_ids: Vec<u64>,
}

impl Known {
    /// What the other tenant may aim at: everything, reserved ids included.
    fn targets(&self) -> Vec<String> {
        let mut v = self.packs.clone();
        let ids =
            self.workflows.iter().chain(&self.reserved).chain(&self.invocations).chain(&self.reserved_invocations);
        v.extend(ids.chain(&self.signals).cloned());
        v.extend(self.schedules.iter().cloned());
        v
    }

    fn own(&self) -> Vec<String> {
        let mut v = self.packs.clone();
        v.extend(self.workflows.iter().chain(&self.signals).chain(&self.schedules).cloned());
        v
    }
}

fn pick<T: Clone>(rng: &mut Rng, v: &[T]) -> Option<T> {
    (!v.is_empty()).then(|| v[rng.below(v.len() as u64) as usize].clone())
}

/// A string a client could send: names and ids of either tenant, mangled
/// ones, odd characters, nothing, a megabyte.
fn text(rng: &mut Rng, me: &Known, other: &Known) -> String {
    let odd = ["é", "𝕏", "\u{0}", "\n", "\u{7f}", "\u{202e}", "/", "..", " ", "\\", "%", "*", "\u{feff}"];
    match rng.below(20) {
        0 | 1 => String::new(),
        2..=6 => pick(rng, &me.own()).unwrap_or_default(),
        7..=9 => pick(rng, &other.targets()).unwrap_or_default(),
        10 => (0..rng.below(24)).map(|_| (b' ' + rng.below(95) as u8) as char).collect(),
        11 => (0..1 + rng.below(6)).map(|_| odd[rng.below(odd.len() as u64) as usize]).collect(),
        12 => "n".repeat(rng.below(400) as usize),
        13 => "h".repeat(1 << 20),
        14 => {
            let mut s = pick(rng, &other.targets()).unwrap_or_default().into_bytes();
            if !s.is_empty() {
                let i = rng.below(s.len() as u64) as usize;
                s[i] = b'a' + rng.below(26) as u8;
            }
            String::from_utf8_lossy(&s).into_owned()
        }
        15 => format!("wf_{}.{}", other.tenant, rng.below(1 << 40)),
        16 => format!("{}/{}", other.tenant, pick(rng, &other.targets()).unwrap_or_default()),
        17 => ["../x", "/etc/passwd", "a/../../b", "-1", "1e400", "NaN", "inv_", "wf_", "wf_.", "scratch"]
            [rng.below(10) as usize]
            .into(),
        _ => format!("{}-{}", me.tenant, rng.below(1000)),
    }
}

fn json(rng: &mut Rng, me: &Known) -> String {
    match rng.below(14) {
        0 => String::new(),
        1 => "{".into(),
        2 => "[1, 2]".into(),
        3 => format!("{}1{}", "[".repeat(200), "]".repeat(200)),
        4 => format!("{{\"a\":{}1{}}}", "[".repeat(100_000), "]".repeat(100_000)),
        5 => "{\"n\": 1e400}".into(),
        6 => "{\"n\": 18446744073709551616, \"m\": -9223372036854775809}".into(),
        7 => "{\"_id\": 1, \"_type\": \"X\"}".into(),
        8 => format!("{{\"big\": \"{}\"}}", "b".repeat(1 << 20)),
        9 => "{\"\": 1, \"é\": [null, true], \"\\u0000\": {}}".into(),
        10 => "null".into(),
        _ => serde_json::json!({"n": rng.below(100), "secret": me.marker}).to_string(),
    }
}

fn facts(rng: &mut Rng, me: &Known, other: &Known) -> Vec<pb::FactInput> {
    let types = ["Go", "Quick", "Signal", "Job"];
    (0..rng.below(4))
        .map(|_| pb::FactInput {
            r#type: if rng.below(4) == 0 { text(rng, me, other) } else { types[rng.below(4) as usize].into() },
            fields_json: json(rng, me),
        })
        .collect()
}

fn wf_id(rng: &mut Rng, me: &Known, other: &Known) -> String {
    match rng.below(6) {
        0..=2 => pick(rng, &me.workflows).unwrap_or_default(),
        3 | 4 => pick(rng, &[other.workflows.clone(), other.reserved.clone()].concat()).unwrap_or_default(),
        _ => text(rng, me, other),
    }
}

fn number(rng: &mut Rng) -> u64 {
    match rng.below(5) {
        0 => 0,
        1 => u64::MAX,
        2 => 1 << rng.below(64),
        _ => rng.below(2000),
    }
}

fn fraction(rng: &mut Rng) -> f64 {
    [0.0, 0.5, 1.0, 1.5, -0.0, -1.0, f64::NAN, f64::INFINITY, f64::MIN_POSITIVE, 1e-300][rng.below(10) as usize]
}

/// A pack to mangle: named `scratch`, so no mangling turns it into the
/// pack the final check relies on.
fn scratch_pack() -> Vec<(String, Vec<u8>)> {
    vec![
        (
            "pack.toml".into(),
            b"[pack]\nname = \"scratch\"\nversion = \"1\"\n\n[functions.\"secret.fn\"]\ntimeout = \"1h\"\nretry = { max_attempts = 3, multiplier = 2.0 }\n\n[limits]\nmax_operations = 100000\n\n[schedules.tick]\ncron = \"0 0 3 * * *\"\ntimezone = \"Europe/Paris\"\nfacts = [{ type = \"Quick\", fields = { n = 1 } }]\n".to_vec(),
        ),
        (
            "main.rules".into(),
            b"rule \"quick\" {\n    match { q: Quick(n > 0, kind in [\"a\", \"b\"] || kind == ()) }\n    action { complete(#{ n: q.n }); }\n}\nrule \"agg\" {\n    match { n: count(Go()) test(n > 1) }\n    action { log(`n = ${n}`); }\n}\n".to_vec(),
        ),
        ("tests/t.toml".into(), b"[[test]]\nname = \"q\"\nfacts = [{ type = \"Quick\", fields = { n = 1 } }]\n[test.expect]\nstatus = \"completed\"\n".to_vec()),
    ]
}

fn mangle(rng: &mut Rng, bytes: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(bytes.len() as u64 + 1) as usize;
        match rng.below(7) {
            0 => bytes.truncate(at),
            1 => {
                let end = (at + rng.below(16) as usize).min(bytes.len());
                bytes.drain(at..end);
            }
            2 => {
                if let Some(b) = bytes.get_mut(at) {
                    *b ^= 1 << rng.below(8);
                }
            }
            3 => {
                let piece: Vec<u8> = (0..1 + rng.below(8)).map(|_| rng.below(256) as u8).collect();
                bytes.splice(at..at, piece);
            }
            4 => {
                let tok = ["{", "}", "(", "[", "\"", "\n", "rule \"", "\\", "\u{0}", "#{"][rng.below(10) as usize];
                bytes.splice(at..at, tok.repeat(1 + rng.below(3000) as usize).into_bytes());
            }
            5 => {
                // A field with a length that runs past the end.
                bytes.splice(at..at, [0x0a, 0xff, 0xff, 0xff, 0x7f]);
            }
            _ => {
                let end = (at + rng.below(64) as usize).min(bytes.len());
                let piece = bytes[at..end].to_vec();
                bytes.splice(at..at, piece);
            }
        }
    }
}

fn deploy_request(rng: &mut Rng, me: &Known, other: &Known) -> pb::DeployPackRequest {
    let mut files = scratch_pack();
    match rng.below(4) {
        0 => {}
        1 | 2 => {
            let i = rng.below(files.len() as u64) as usize;
            mangle(rng, &mut files[i].1);
        }
        _ => {
            for f in files.iter_mut() {
                if rng.below(2) == 0 {
                    f.0 = text(rng, me, other);
                }
            }
        }
    }
    pb::DeployPackRequest {
        files: files.into_iter().map(|(path, content)| pb::PackFile { path, content }).collect(),
        dry_run: rng.below(2) == 0,
        rollout: rng.below(5) as i32 - 1,
        canary_fraction: fraction(rng),
        force: rng.below(2) == 0,
    }
}

const CRONS: [&str; 12] = [
    "@hourly",
    "0 0 3 * * *",
    "*/5 * * * *",
    "@every 300000000 years",
    "@every 0s",
    "0 0 30 2 *",
    "61 * * * *",
    "* * * * * * *",
    "@every 1s",
    "0 0 29 2 mon",
    "L W # * *",
    "",
];

/// A request to a random RPC: (method, encoded message, server-streaming).
fn request(rng: &mut Rng, me: &Known, other: &Known) -> (&'static str, Vec<u8>, bool) {
    let t = |rng: &mut Rng| text(rng, me, other);
    let pack = |rng: &mut Rng| if rng.below(2) == 0 { pick(rng, &me.packs).unwrap_or_default() } else { t(rng) };
    let sched = |rng: &mut Rng| match rng.below(3) {
        0 => pick(rng, &me.schedules).unwrap_or_default(),
        1 => pick(rng, &other.schedules).unwrap_or_default(),
        _ => t(rng),
    };
    let (method, bytes, streaming) = match rng.below(22) {
        0 => ("DeployPack", deploy_request(rng, me, other).encode_to_vec(), false),
        1 => ("ListPacks", pb::ListPacksRequest {}.encode_to_vec(), false),
        2 | 3 => {
            let r = pb::StartWorkflowRequest { pack: pack(rng), facts: facts(rng, me, other), request_id: t(rng) };
            ("StartWorkflow", r.encode_to_vec(), false)
        }
        4 => (
            "AssertFacts",
            pb::AssertFactsRequest { workflow_id: wf_id(rng, me, other), facts: facts(rng, me, other) }.encode_to_vec(),
            false,
        ),
        5 => {
            let mut ids: Vec<u64> = (0..rng.below(4)).map(|_| number(rng)).collect();
            ids.extend(pick(rng, &other.fact_ids));
            (
                "RetractFacts",
                pb::RetractFactsRequest { workflow_id: wf_id(rng, me, other), fact_ids: ids }.encode_to_vec(),
                false,
            )
        }
        6 | 7 => {
            let r = pb::GetWorkflowRequest { workflow_id: wf_id(rng, me, other), without_facts: rng.below(2) == 0 };
            ("GetWorkflow", r.encode_to_vec(), false)
        }
        8 => {
            let r = pb::ListWorkflowsRequest {
                pack: pack(rng),
                status: ["", "running", "completed", "failed", "x"][rng.below(5) as usize].into(),
                page_size: number(rng) as u32,
                page_token: wf_id(rng, me, other),
                newest_first: rng.below(2) == 0,
            };
            ("ListWorkflows", r.encode_to_vec(), false)
        }
        9 => (
            "WatchWorkflow",
            pb::WatchWorkflowRequest { workflow_id: wf_id(rng, me, other), from_seq: number(rng) }.encode_to_vec(),
            true,
        ),
        10 => {
            let r = pb::GetTimelineRequest {
                workflow_id: wf_id(rng, me, other),
                from_seq: number(rng),
                limit: number(rng) as u32,
            };
            ("GetTimeline", r.encode_to_vec(), false)
        }
        11 => (
            "CancelWorkflow",
            pb::CancelWorkflowRequest {
                workflow_id: wf_id(rng, me, other),
                reason: t(rng),
                terminate: rng.below(2) == 0,
                grace_ms: number(rng),
            }
            .encode_to_vec(),
            false,
        ),
        12 => {
            let r = pb::RolloutPackRequest {
                name: pack(rng),
                version: t(rng),
                rollout: rng.below(5) as i32 - 1,
                canary_fraction: fraction(rng),
                force: rng.below(2) == 0,
            };
            ("RolloutPack", r.encode_to_vec(), false)
        }
        13 => (
            "RollbackPack",
            pb::RollbackPackRequest { name: pack(rng), force: rng.below(2) == 0 }.encode_to_vec(),
            false,
        ),
        14 => ("GetUpgrade", pb::GetUpgradeRequest { name: pack(rng) }.encode_to_vec(), false),
        15 => {
            let r = pb::SendSignalRequest {
                name: if rng.below(2) == 0 { "ping".into() } else { t(rng) },
                signal_id: t(rng),
                payload_json: json(rng, me),
                workflow_id: if rng.below(2) == 0 { String::new() } else { wf_id(rng, me, other) },
            };
            ("SendSignal", r.encode_to_vec(), false)
        }
        16 => ("GetLineage", pb::GetLineageRequest { signal_id: t(rng) }.encode_to_vec(), false),
        17 => {
            let r = pb::PutScheduleRequest {
                name: sched(rng),
                pack: pack(rng),
                cron: if rng.below(3) == 0 { t(rng) } else { CRONS[rng.below(CRONS.len() as u64) as usize].into() },
                timezone: ["", "UTC", "Europe/Paris", "Mars/Olympus", "../../etc/passwd"][rng.below(5) as usize].into(),
                facts: facts(rng, me, other),
                catch_up: ["", "skip", "one", "all", "twice"][rng.below(5) as usize].into(),
                max_catch_up: number(rng) as u32,
                paused: rng.below(2) == 0,
            };
            ("PutSchedule", r.encode_to_vec(), false)
        }
        18 => ("ListSchedules", pb::ListSchedulesRequest {}.encode_to_vec(), false),
        19 => {
            let method = ["GetSchedule", "PauseSchedule", "ResumeSchedule", "DeleteSchedule"][rng.below(4) as usize];
            (method, pb::ScheduleRef { name: sched(rng) }.encode_to_vec(), false)
        }
        20 => (
            "TriggerSchedule",
            pb::TriggerScheduleRequest { name: sched(rng), request_id: t(rng) }.encode_to_vec(),
            false,
        ),
        _ => {
            // Bytes that are no message at all.
            let n = rng.below(64) as usize;
            const ANY: [&str; 4] = ["GetWorkflow", "StartWorkflow", "DeployPack", "PutSchedule"];
            (ANY[rng.below(4) as usize], (0..n).map(|_| rng.below(256) as u8).collect(), false)
        }
    };
    let mut bytes = bytes;
    if rng.below(5) == 0 {
        mangle(rng, &mut bytes);
    }
    (method, bytes, streaming)
}

// ---- checks

/// What no answer may be: INTERNAL, UNKNOWN (a handler that panicked),
/// DATA_LOSS; and no status may quote more than a short message.
fn check_status(what: &str, e: &Status, other: &Known) {
    assert!(
        !matches!(e.code(), Code::Internal | Code::Unknown | Code::DataLoss),
        "{what}: {:?}: {}",
        e.code(),
        crate_shown(e.message())
    );
    assert!(
        e.message().len() <= 16 << 10,
        "{what}: a {}-byte status message: {}",
        e.message().len(),
        crate_shown(e.message())
    );
    assert!(!e.message().contains(&other.marker), "{what}: the other tenant's data in {}", crate_shown(e.message()));
}

fn crate_shown(s: &str) -> String {
    stoa_rules::diagnostic::shown(s)
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Answers to `me` carry nothing of `other`: not its marker; and the
/// workflows they name are `me`'s.
fn check_answer(what: &str, method: &str, answers: &[Vec<u8>], me: &Known, other: &Known) {
    let mine = format!("wf_{}.", me.tenant);
    for a in answers {
        assert!(!contains(a, &other.marker), "{what}: the other tenant's data in an answer");
        let ids: Vec<String> = match method {
            "GetWorkflow" => pb::Workflow::decode(&a[..]).map(|w| vec![w.id]).unwrap_or_default(),
            "ListWorkflows" => pb::ListWorkflowsResponse::decode(&a[..])
                .map(|r| r.workflows.into_iter().map(|w| w.id).collect())
                .unwrap_or_default(),
            "SendSignal" => {
                pb::SendSignalResponse::decode(&a[..]).map(|r| [r.started, r.delivered].concat()).unwrap_or_default()
            }
            "StartWorkflow" => {
                pb::StartWorkflowResponse::decode(&a[..]).map(|r| vec![r.workflow_id]).unwrap_or_default()
            }
            _ => vec![],
        };
        for id in ids {
            assert!(id.starts_with(&mine), "{what}: an answer names workflow {}", crate_shown(&id));
        }
    }
}

// ---- the campaign

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

const VAULT: &str = r#"[pack]
name = "vault"
version = "1"

# Chaotic sessions of the owner take invocations and drop them: each
# counts as an attempt.
[functions."secret.fn"]
timeout = "1h"
retry = { max_attempts = 1000000, initial_backoff = "1ms", max_backoff = "50ms" }

[signals.ping]
deliver = true
"#;

const VAULT_RULES: &str = r#"rule "hold" {
    match { g: Go(state == ()) }
    action { modify(g, #{ state: "held" }); call("secret.fn", #{ secret: g.secret }); }
    reaction { complete(#{ secret: result.secret }); }
}
rule "quick" {
    match { q: Quick() }
    action { complete(#{ n: q.n }); }
}
rule "ping" {
    match { s: Signal(name == "ping") }
    action { log("ping"); }
}
"#;

async fn setup(ch: &Channel, tenant: &'static str, token: &'static str, seed: u64) -> Known {
    let mut c =
        stoa_proto::v1::stoa_client::StoaClient::with_interceptor(ch.clone(), crate::client::Bearer(token.into()));
    let marker = format!("SECRET-{tenant}-{seed}");
    let files = [("pack.toml", VAULT), ("vault.rules", VAULT_RULES)]
        .map(|(p, t)| pb::PackFile { path: p.into(), content: t.as_bytes().to_vec() })
        .to_vec();
    c.deploy_pack(pb::DeployPackRequest { files, ..Default::default() }).await.expect("deploy vault");
    let mut k = Known {
        tenant,
        token,
        marker: marker.clone(),
        packs: vec!["vault".into(), "scratch".into()],
        ..Default::default()
    };
    for i in 0..4 {
        let facts = vec![pb::FactInput {
            r#type: "Go".into(),
            fields_json: serde_json::json!({ "secret": marker, "i": i }).to_string(),
        }];
        let r = c
            .start_workflow(pb::StartWorkflowRequest {
                pack: "vault".into(),
                facts,
                request_id: format!("{tenant}-setup-{i}"),
            })
            .await
            .expect("start")
            .into_inner();
        let wf = c
            .get_workflow(pb::GetWorkflowRequest { workflow_id: r.workflow_id.clone(), without_facts: false })
            .await
            .expect("get")
            .into_inner();
        k.fact_ids.extend(wf.facts.iter().map(|f| f.id));
        let invocations = wf.waiting.iter().map(|w| w.invocation_id.clone());
        if i < 2 {
            k.reserved.push(r.workflow_id);
            k.reserved_invocations.extend(invocations);
        } else {
            k.workflows.push(r.workflow_id);
            k.invocations.extend(invocations);
        }
    }
    let sig = format!("{tenant}-sig");
    c.send_signal(pb::SendSignalRequest {
        name: "ping".into(),
        signal_id: sig.clone(),
        payload_json: serde_json::json!({ "secret": marker }).to_string(),
        workflow_id: String::new(),
    })
    .await
    .expect("signal");
    k.signals.push(sig);
    let name = format!("{tenant}-sched");
    c.put_schedule(pb::PutScheduleRequest {
        name: name.clone(),
        pack: "vault".into(),
        cron: "0 0 3 * * *".into(),
        facts: vec![pb::FactInput {
            r#type: "Quick".into(),
            fields_json: serde_json::json!({ "n": 1, "secret": marker }).to_string(),
        }],
        paused: true,
        ..Default::default()
    })
    .await
    .expect("schedule");
    k.schedules.push(name);
    k
}

/// A worker session that says anything: hello or not, functions of either
/// tenant, results and heartbeats for invocations that are not its own,
/// huge payloads; then it hangs up. Whatever comes back is checked.
async fn chaotic_worker(ch: &Channel, rng: &mut Rng, me: &Known, other: &Known) {
    let mut msgs = Vec::new();
    let hello = pb::worker_message::Msg::Hello(pb::Hello {
        functions: match rng.below(4) {
            0 => vec![],
            1 => vec![text(rng, me, other)],
            _ => vec!["secret.fn".into()],
        },
        max_in_flight: number(rng) as u32,
        name: text(rng, me, other),
    });
    if rng.below(6) != 0 {
        msgs.push(pb::WorkerMessage { msg: Some(hello) }.encode_to_vec());
    }
    for _ in 0..rng.below(12) {
        let inv = match rng.below(3) {
            0 => {
                pick(rng, &[other.invocations.clone(), other.reserved_invocations.clone()].concat()).unwrap_or_default()
            }
            1 => pick(rng, &me.invocations).unwrap_or_default(),
            _ => text(rng, me, other),
        };
        let msg = match rng.below(7) {
            0 | 1 => pb::worker_message::Msg::Result(pb::InvocationResult {
                invocation_id: inv,
                attempt: number(rng) as u32,
                outcome: Some(pb::invocation_result::Outcome::ValueJson(match rng.below(3) {
                    0 => serde_json::json!({ "secret": "FORGED" }).to_string(),
                    1 => format!("\"{}\"", "v".repeat(3 << 20)),
                    _ => json(rng, me),
                })),
            }),
            2 => pb::worker_message::Msg::Result(pb::InvocationResult {
                invocation_id: inv,
                attempt: number(rng) as u32,
                outcome: Some(pb::invocation_result::Outcome::Failure(pb::Failure {
                    message: text(rng, me, other),
                    retryable: rng.below(2) == 0,
                    kind: rng.below(4) as i32 - 1,
                })),
            }),
            3 => {
                pb::worker_message::Msg::Result(pb::InvocationResult { invocation_id: inv, attempt: 1, outcome: None })
            }
            4 => pb::worker_message::Msg::Heartbeat(pb::Heartbeat { invocation_id: inv, attempt: number(rng) as u32 }),
            5 => pb::worker_message::Msg::Drain(pb::Drain { reason: text(rng, me, other), deadline_ms: number(rng) }),
            _ => pb::worker_message::Msg::Hello(pb::Hello {
                functions: vec![text(rng, me, other)],
                max_in_flight: 1,
                name: String::new(),
            }),
        };
        let mut bytes = pb::WorkerMessage { msg: Some(msg) }.encode_to_vec();
        if rng.below(6) == 0 {
            mangle(rng, &mut bytes);
        }
        msgs.push(bytes);
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready().await.expect("ready");
    let path = PathAndQuery::from_static("/stoa.v1.Workers/Session");
    let what = format!("worker session of {} ({} messages)", me.tenant, msgs.len());
    let sender = tokio::spawn(async move {
        for m in msgs {
            if tx.send(m).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
    let session = tokio::time::timeout(BOUND, async {
        let req = authorized(tokio_stream::wrappers::ReceiverStream::new(rx), me.token);
        match grpc.streaming(req, path, Raw).await {
            Err(e) => check_status(&what, &e, other),
            Ok(r) => {
                let mut stream = r.into_inner();
                loop {
                    match tokio::time::timeout(Duration::from_millis(300), stream.message()).await {
                        Ok(Ok(Some(m))) => check_answer(&what, "Session", &[m], me, other),
                        Ok(Ok(None)) | Err(_) => break,
                        Ok(Err(e)) => {
                            check_status(&what, &e, other);
                            break;
                        }
                    }
                }
            }
        }
    })
    .await;
    assert!(session.is_ok(), "{what}: no answer within {BOUND:?}");
    sender.abort();
}

/// `attacker`'s worker answers, fails, heartbeats and refuses `victim`'s
/// invocations by their ids: none of it reaches them.
async fn forged_answers(addr: &str, ch: &Channel, attacker: &Known, victim: &Known) {
    let mut w = RawWorker::connect(addr, attacker.token, &["secret.fn"], 64).await.expect("worker");
    for id in &victim.reserved_invocations {
        use pb::invocation_result::Outcome;
        let failure = |kind: pb::FailureKind| {
            Some(Outcome::Failure(pb::Failure { message: "forged".into(), retryable: false, kind: kind.into() }))
        };
        for outcome in [
            Some(Outcome::ValueJson(serde_json::json!({ "secret": "FORGED" }).to_string())),
            failure(pb::FailureKind::Failed),
            failure(pb::FailureKind::NotStarted),
            None,
        ] {
            for attempt in [0, 1, 2] {
                let r = pb::InvocationResult { invocation_id: id.clone(), attempt, outcome: outcome.clone() };
                w.send(pb::worker_message::Msg::Result(r)).await;
            }
        }
        w.send(pb::worker_message::Msg::Heartbeat(pb::Heartbeat { invocation_id: id.clone(), attempt: 1 })).await;
    }
    while let Some(m) = w.next(Duration::from_millis(300)).await {
        check_answer("the attacker's worker", "Session", &[m.encode_to_vec()], attacker, victim);
    }
    drop(w);
    let mut c = stoa_proto::v1::stoa_client::StoaClient::with_interceptor(
        ch.clone(),
        crate::client::Bearer(victim.token.into()),
    );
    for id in &victim.reserved {
        let wf = c
            .get_workflow(pb::GetWorkflowRequest { workflow_id: id.clone(), without_facts: true })
            .await
            .expect("get")
            .into_inner();
        assert_eq!(wf.status, "running", "{id} after {}'s forged answers: {}", attacker.tenant, wf.reason);
        assert_eq!(wf.waiting.len(), 1, "{id} after {}'s forged answers", attacker.tenant);
    }
}

/// Deploys whose errors are many, or quote long lines: refused with a
/// status message that stays short enough to travel.
async fn loud_deploys(ch: &Channel, k: &Known) {
    let manifest = b"[pack]\nname = \"loud\"\nversion = \"1\"\n".to_vec();
    for (what, rules) in [
        ("5,000 broken rules", "rule \"r\" { salience high }\n".repeat(5_000)),
        ("a broken megabyte-long line", format!("rule \"r\" {{ match {{ J({}) }} }}\n", "a ".repeat(1 << 19))),
        (
            "1,000 rules with a long broken line each",
            format!("rule \"r\" {{ salience {} }}\n", "x".repeat(2000)).repeat(1000),
        ),
    ] {
        let files = vec![
            pb::PackFile { path: "pack.toml".into(), content: manifest.clone() },
            pb::PackFile { path: "loud.rules".into(), content: rules.into_bytes() },
        ];
        let body = pb::DeployPackRequest { files, ..Default::default() }.encode_to_vec();
        let r = tokio::time::timeout(BOUND, raw_call(ch, k.token, "/stoa.v1.Stoa/DeployPack", body, false)).await;
        let e = r.unwrap_or_else(|_| panic!("{what}: no answer within {BOUND:?}")).expect_err(what);
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {}", crate_shown(e.message()));
        check_status(what, &e, k);
    }
}

async fn healthy(ch: &Channel) {
    for service in ["", "stoa.v1.Stoa"] {
        let r =
            HealthClient::new(ch.clone()).check(HealthCheckRequest { service: service.into() }).await.expect("health");
        assert_eq!(ServingStatus::try_from(r.into_inner().status), Ok(ServingStatus::Serving), "health of {service:?}");
    }
}

/// A real worker of `k`'s tenant answers its reserved workflows'
/// invocations: they complete with their own secret, whatever the other
/// tenant forged, and a new workflow completes too.
async fn still_works(addr: &str, ch: &Channel, k: &Known) {
    let mut c =
        stoa_proto::v1::stoa_client::StoaClient::with_interceptor(ch.clone(), crate::client::Bearer(k.token.into()));
    let mut w = RawWorker::connect(addr, k.token, &["secret.fn"], 64).await.expect("worker");
    let deadline = Instant::now() + BOUND;
    let status = |wf: &pb::Workflow| wf.status.clone();
    loop {
        for inv in w.invocations(Duration::from_millis(300)).await {
            let args: serde_json::Value = serde_json::from_str(&inv.args_json).expect("args");
            w.answer(&inv, serde_json::json!({ "secret": args["secret"] })).await;
        }
        let mut done = true;
        for id in &k.reserved {
            let wf = c
                .get_workflow(pb::GetWorkflowRequest { workflow_id: id.clone(), without_facts: true })
                .await
                .expect("get")
                .into_inner();
            if status(&wf) == "completed" {
                assert!(wf.result_json.contains(&k.marker), "{id} completed with {}", wf.result_json);
            } else {
                assert_eq!(status(&wf), "running", "{id}: {}", wf.reason);
                done = false;
            }
        }
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "the reserved workflows of {} did not complete", k.tenant);
    }
    let facts = vec![pb::FactInput { r#type: "Quick".into(), fields_json: "{\"n\": 7}".into() }];
    let r = c
        .start_workflow(pb::StartWorkflowRequest {
            pack: "vault".into(),
            facts,
            request_id: format!("{}-final", k.tenant),
        })
        .await
        .expect("start after the campaign")
        .into_inner();
    let wf = c
        .get_workflow(pb::GetWorkflowRequest { workflow_id: r.workflow_id, without_facts: true })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(wf.status, "completed", "{}", wf.reason);
}

#[test]
fn random_and_mangled_requests_from_two_tenants_never_get_internal_hang_or_leak() {
    let mut rng = Rng::from_env();
    let seed = rng.below(u64::MAX);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(&dir.path().join("data"));
    let addr = server.addr.clone();
    let n = calls();
    let started = Instant::now();
    rt().block_on(async {
        let ch = channel(&addr).await;
        let a = setup(&ch, "a", TOKEN_A, seed).await;
        let b = setup(&ch, "b", TOKEN_B, seed).await;
        forged_answers(&addr, &ch, &b, &a).await;
        forged_answers(&addr, &ch, &a, &b).await;
        loud_deploys(&ch, &a).await;
        let mut slowest = (Duration::ZERO, String::new());
        for i in 0..n {
            let (me, other) = if rng.below(2) == 0 { (&a, &b) } else { (&b, &a) };
            if rng.below(25) == 0 {
                chaotic_worker(&ch, &mut rng, me, other).await;
                continue;
            }
            let (method, body, streaming) = request(&mut rng, me, other);
            let what = format!("call {i}: {method} by {} ({} bytes)", me.tenant, body.len());
            let path = format!("/stoa.v1.Stoa/{method}");
            let t = Instant::now();
            let r = tokio::time::timeout(BOUND, raw_call(&ch, me.token, &path, body, streaming)).await;
            let took = t.elapsed();
            if took > slowest.0 {
                slowest = (took, what.clone());
            }
            match r {
                Err(_) => panic!("{what}: no answer within {BOUND:?}"),
                Ok(Ok(answers)) => check_answer(&what, method, &answers, me, other),
                Ok(Err(e)) => check_status(&what, &e, other),
            }
        }
        eprintln!("{n} calls in {:?}; the slowest took {:?}: {}", started.elapsed(), slowest.0, slowest.1);
        healthy(&ch).await;
        still_works(&addr, &ch, &a).await;
        still_works(&addr, &ch, &b).await;
    });
    assert!(server.child.try_wait().expect("wait").is_none(), "the server died");
}
