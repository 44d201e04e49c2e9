//! A fake `Workers` server: the test drives each session by hand, sending
//! server messages and reading the worker's. It runs on its own thread and
//! runtime so that `stop` can drop every connection at once, as a crash does.

use std::net::SocketAddr;
use std::time::Duration;

use stoa_proto::v1::workers_server::{Workers, WorkersServer};
use stoa_proto::v1::{
    invocation_result::Outcome, server_message, worker_message, Cancel, Drain, FailureKind, Hello, Invocation,
    InvocationBatch, InvocationResult, ServerMessage, Welcome, WorkerMessage,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

pub const TOKEN: &str = "t-secret";
/// Every wait in these tests ends by this, so a bug fails a test, not CI.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct FakeServer {
    pub addr: SocketAddr,
    sessions: mpsc::UnboundedReceiver<Session>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeServer {
    /// Starts on an ephemeral loopback port.
    pub fn start() -> FakeServer {
        FakeServer::start_on("127.0.0.1:0".parse().unwrap())
    }

    /// Starts on `addr` (to restart a server where it was).
    pub fn start_on(addr: SocketAddr) -> FakeServer {
        let listener = std::net::TcpListener::bind(addr).expect("bind the fake server");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (sessions_tx, sessions) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let service = WorkersServer::new(Fake { sessions: sessions_tx });
                let serve = tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming(TcpListenerStream::new(listener));
                tokio::select! {
                    _ = serve => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime drops every connection task: the workers
            // see their streams break, as when a server dies.
            drop(runtime);
        });
        FakeServer { addr, sessions, stop: Some(stop), thread: Some(thread) }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next session a worker opened (after its Hello).
    pub async fn session(&mut self) -> Session {
        tokio::time::timeout(WAIT, self.sessions.recv())
            .await
            .expect("no session within the wait")
            .expect("the fake server is gone")
    }

    /// Stops the server, dropping every connection.
    pub fn stop(mut self) -> SocketAddr {
        self.shutdown();
        self.addr
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Fake {
    sessions: mpsc::UnboundedSender<Session>,
}

#[tonic::async_trait]
impl Workers for Fake {
    type SessionStream = ReceiverStream<Result<ServerMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<WorkerMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let authorization = request.metadata().get("authorization").and_then(|value| value.to_str().ok());
        if authorization != Some(format!("Bearer {TOKEN}").as_str()) {
            return Err(Status::unauthenticated("bad token"));
        }
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(WorkerMessage { msg: Some(worker_message::Msg::Hello(hello)) }) => hello,
            other => return Err(Status::invalid_argument(format!("expected Hello, got {other:?}"))),
        };
        let (to_worker, mut from_test) = mpsc::channel::<Result<ServerMessage, Status>>(64);
        let (out, response) = mpsc::channel(64);
        let (from_worker_tx, from_worker) = mpsc::unbounded_channel();
        let welcome = Welcome { session_id: "s-1".into(), max_in_flight: hello.max_in_flight, members: Vec::new() };
        out.send(Ok(ServerMessage { msg: Some(server_message::Msg::Welcome(welcome)) })).await.unwrap();
        // Relays both ways; when the worker ends its side, ends ours, as the
        // real server does.
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    message = from_test.recv() => match message {
                        Some(message) => { let _ = out.send(message).await; }
                        None => break,
                    },
                    message = inbound.message() => match message {
                        Ok(Some(message)) => { let _ = from_worker_tx.send(message); }
                        _ => break,
                    },
                }
            }
        });
        let _ = self.sessions.send(Session { hello, to_worker, from_worker, drains: 0 });
        Ok(Response::new(ReceiverStream::new(response)))
    }
}

/// One worker session, driven by the test.
pub struct Session {
    pub hello: Hello,
    to_worker: mpsc::Sender<Result<ServerMessage, Status>>,
    from_worker: mpsc::UnboundedReceiver<WorkerMessage>,
    /// Drain messages the worker sent, seen by `result` or `closed`.
    pub drains: usize,
}

impl Session {
    pub async fn send(&self, msg: server_message::Msg) {
        self.to_worker.send(Ok(ServerMessage { msg: Some(msg) })).await.expect("session gone");
    }

    pub async fn invoke(&self, invocations: Vec<Invocation>) {
        self.send(server_message::Msg::Invocations(InvocationBatch { invocations })).await;
    }

    pub async fn cancel(&self, invocation_id: &str) {
        self.cancel_attempt(invocation_id, 0).await;
    }

    pub async fn cancel_attempt(&self, invocation_id: &str, attempt: u32) {
        self.send(server_message::Msg::Cancel(Cancel { invocation_id: invocation_id.into(), attempt })).await;
    }

    /// Asks the worker to drain.
    pub async fn drain(&self, deadline_ms: u64) {
        self.send(server_message::Msg::Drain(Drain { reason: "test".into(), deadline_ms })).await;
    }

    /// The worker's next message; panics if none comes within the wait.
    pub async fn recv(&mut self) -> WorkerMessage {
        self.try_recv(WAIT).await.expect("no message from the worker within the wait")
    }

    /// The worker's next message within `wait`, if any.
    pub async fn try_recv(&mut self, wait: Duration) -> Option<WorkerMessage> {
        match tokio::time::timeout(wait, self.from_worker.recv()).await {
            Ok(Some(message)) => Some(message),
            Ok(None) => panic!("the worker closed the session"),
            Err(_) => None,
        }
    }

    /// The next result, skipping heartbeats and counting drains.
    pub async fn result(&mut self) -> InvocationResult {
        loop {
            match self.recv().await.msg {
                Some(worker_message::Msg::Result(result)) => return result,
                Some(worker_message::Msg::Heartbeat(_)) => continue,
                Some(worker_message::Msg::Drain(_)) => self.drains += 1,
                other => panic!("expected a result, got {other:?}"),
            }
        }
    }

    /// The next `n` results, by invocation id.
    pub async fn results(&mut self, n: usize) -> std::collections::BTreeMap<String, InvocationResult> {
        let mut results = std::collections::BTreeMap::new();
        while results.len() < n {
            let result = self.result().await;
            assert!(results.insert(result.invocation_id.clone(), result).is_none(), "answered twice");
        }
        results
    }

    /// Waits for the worker to end its side of the stream, failing on any
    /// message but heartbeats, drains (counted) and results (returned).
    pub async fn closed(&mut self) -> Vec<InvocationResult> {
        let mut results = Vec::new();
        let drains = &mut self.drains;
        let from_worker = &mut self.from_worker;
        let end = tokio::time::timeout(WAIT, async {
            while let Some(message) = from_worker.recv().await {
                match message.msg {
                    Some(worker_message::Msg::Result(result)) => results.push(result),
                    Some(worker_message::Msg::Heartbeat(_)) => {}
                    Some(worker_message::Msg::Drain(_)) => *drains += 1,
                    other => panic!("unexpected message while closing: {other:?}"),
                }
            }
        });
        end.await.expect("the worker did not close the session within the wait");
        results
    }
}

/// An invocation of `function` with `args` (JSON), attempt 1.
pub fn invocation(id: &str, function: &str, args: serde_json::Value) -> Invocation {
    Invocation {
        id: id.into(),
        function: function.into(),
        args_json: args.to_string(),
        attempt: 1,
        priority: 0,
        timeout_ms: 60_000,
        heartbeat_timeout_ms: 0,
        workflow_id: "wf_test".into(),
        traceparent: String::new(),
    }
}

/// The result's value as JSON; panics on a failure.
pub fn value(result: &InvocationResult) -> serde_json::Value {
    match &result.outcome {
        Some(Outcome::ValueJson(json)) => serde_json::from_str(json).expect("the value is JSON"),
        other => panic!("expected a value for {}, got {other:?}", result.invocation_id),
    }
}

/// The result's failure kind; panics on a value.
pub fn failure_kind(result: &InvocationResult) -> FailureKind {
    match &result.outcome {
        Some(Outcome::Failure(failure)) => failure.kind(),
        other => panic!("expected a failure for {}, got {other:?}", result.invocation_id),
    }
}

/// The result's failure as (message, retryable); panics on a value.
pub fn failure(result: &InvocationResult) -> (String, bool) {
    match &result.outcome {
        Some(Outcome::Failure(failure)) => (failure.message.clone(), failure.retryable),
        other => panic!("expected a failure for {}, got {other:?}", result.invocation_id),
    }
}
