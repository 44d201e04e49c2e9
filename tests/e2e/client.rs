//! A gRPC client for tests, and a scripted raw worker session.

use std::time::Duration;

use stoa_proto::v1 as pb;
use stoa_proto::v1::stoa_client::StoaClient;
use stoa_proto::v1::workers_client::WorkersClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

#[derive(Clone)]
pub struct Bearer(pub String);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", format!("Bearer {}", self.0).parse().expect("ascii"));
        Ok(req)
    }
}

pub type Client = StoaClient<InterceptedService<Channel, Bearer>>;

pub async fn channel(addr: &str) -> Channel {
    Channel::from_shared(addr.to_string()).expect("addr").connect().await.expect("connect")
}

pub async fn client(addr: &str, token: &str) -> Client {
    StoaClient::with_interceptor(channel(addr).await, Bearer(token.into()))
}

pub fn pack_files(dir: &str) -> Vec<pb::PackFile> {
    let src = stoa_rules::compile::PackSource::read_dir(&crate::support::repo().join(dir)).expect("pack");
    src.files
        .into_iter()
        .map(|(p, t)| pb::PackFile { path: p.to_string_lossy().into_owned(), content: t.into_bytes() })
        .collect()
}

pub fn facts(json: serde_json::Value) -> Vec<pb::FactInput> {
    json.as_array()
        .expect("array")
        .iter()
        .map(|f| pb::FactInput {
            r#type: f["type"].as_str().expect("type").into(),
            fields_json: f["fields"].to_string(),
        })
        .collect()
}

pub fn video_facts(uri: &str) -> Vec<pb::FactInput> {
    facts(serde_json::json!([
        {"type": "Source", "fields": {"uri": uri}},
        {"type": "Recipe", "fields": {"codec": "h264", "chunk_seconds": 10, "max_chunk_retries": 2}}
    ]))
}

/// A worker session driven by the test, message by message.
pub struct RawWorker {
    pub tx: mpsc::Sender<pb::WorkerMessage>,
    pub rx: tonic::Streaming<pb::ServerMessage>,
    pub welcome: pb::Welcome,
}

impl RawWorker {
    pub async fn connect(
        addr: &str,
        token: &str,
        functions: &[&str],
        max_in_flight: u32,
    ) -> Result<RawWorker, tonic::Status> {
        let mut c = WorkersClient::with_interceptor(channel(addr).await, Bearer(token.into()));
        let (tx, rx) = mpsc::channel(64);
        tx.send(pb::WorkerMessage {
            msg: Some(pb::worker_message::Msg::Hello(pb::Hello {
                functions: functions.iter().map(|s| s.to_string()).collect(),
                max_in_flight,
                name: "test".into(),
            })),
        })
        .await
        .expect("queue hello");
        let mut rx = c.session(ReceiverStream::new(rx)).await?.into_inner();
        let welcome = match rx.message().await? {
            Some(pb::ServerMessage { msg: Some(pb::server_message::Msg::Welcome(w)) }) => w,
            other => panic!("expected welcome, got {other:?}"),
        };
        Ok(RawWorker { tx, rx, welcome })
    }

    /// The next server message within `wait`, if any.
    pub async fn next(&mut self, wait: Duration) -> Option<pb::ServerMessage> {
        tokio::time::timeout(wait, self.rx.message()).await.ok().and_then(|r| r.ok().flatten())
    }

    /// The next invocations within `wait` (skipping other messages).
    pub async fn invocations(&mut self, wait: Duration) -> Vec<pb::Invocation> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(pb::ServerMessage { msg: Some(pb::server_message::Msg::Invocations(b)) }) => return b.invocations,
                Some(_) => continue,
                None => return vec![],
            }
        }
    }

    /// Sends a message; `false` if the session is gone.
    pub async fn send(&self, msg: pb::worker_message::Msg) -> bool {
        self.tx.send(pb::WorkerMessage { msg: Some(msg) }).await.is_ok()
    }

    /// Answers with a failure of `kind`.
    pub async fn fail(&self, inv: &pb::Invocation, retryable: bool, kind: pb::FailureKind) -> bool {
        self.send(pb::worker_message::Msg::Result(pb::InvocationResult {
            invocation_id: inv.id.clone(),
            attempt: inv.attempt,
            outcome: Some(pb::invocation_result::Outcome::Failure(pb::Failure {
                message: "test failure".into(),
                retryable,
                kind: kind.into(),
            })),
        }))
        .await
    }

    /// Sends a result; `false` if the session is gone.
    pub async fn answer(&self, inv: &pb::Invocation, value: serde_json::Value) -> bool {
        self.tx
            .send(pb::WorkerMessage {
                msg: Some(pb::worker_message::Msg::Result(pb::InvocationResult {
                    invocation_id: inv.id.clone(),
                    attempt: inv.attempt,
                    outcome: Some(pb::invocation_result::Outcome::ValueJson(value.to_string())),
                })),
            })
            .await
            .is_ok()
    }
}

/// What the example media functions answer (as the example worker would).
pub fn media_answer(inv: &pb::Invocation) -> serde_json::Value {
    let args: serde_json::Value = serde_json::from_str(&inv.args_json).unwrap_or_default();
    match inv.function.as_str() {
        "media.split" => {
            serde_json::json!({"chunks": 3, "prefix": format!("{}/chunks", args["uri"].as_str().unwrap_or(""))})
        }
        "media.encode" => serde_json::json!({"uri": format!("{}.mp4", args["uri"].as_str().unwrap_or(""))}),
        "media.assemble" => serde_json::json!({"uri": format!("{}.out.mp4", args["source"].as_str().unwrap_or(""))}),
        "media.index" => serde_json::json!({"index": format!("{}.idx", args["uri"].as_str().unwrap_or(""))}),
        _ => serde_json::json!({}),
    }
}

/// A worker inside the test: answers every media invocation, reconnecting
/// whenever the server goes away, until `stop` is cancelled.
pub async fn media_worker(
    addr: String,
    token: &'static str,
    delay: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    const ALL: [&str; 4] = ["media.split", "media.encode", "media.assemble", "media.index"];
    while !stop.is_cancelled() {
        let Ok(Ok(mut w)) =
            tokio::time::timeout(Duration::from_secs(2), RawWorker::connect(&addr, token, &ALL, 32)).await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        loop {
            let msg = tokio::select! {
                _ = stop.cancelled() => return,
                m = w.rx.message() => m,
            };
            match msg {
                Ok(Some(pb::ServerMessage { msg: Some(pb::server_message::Msg::Invocations(b)) })) => {
                    for inv in b.invocations {
                        tokio::time::sleep(delay).await;
                        if !w.answer(&inv, media_answer(&inv)).await {
                            break;
                        }
                    }
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
    }
}

/// Deploys a pack from the repository; panics on failure.
pub async fn deploy(c: &mut Client, dir: &str) -> pb::DeployPackResponse {
    c.deploy_pack(pb::DeployPackRequest { files: pack_files(dir), ..Default::default() })
        .await
        .expect("deploy")
        .into_inner()
}
