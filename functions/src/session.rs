//! One session with the server: connect, `Hello`, `Welcome`, then run the
//! invocations that arrive and answer them on the same stream, until the
//! stream breaks or a shutdown has drained the work in flight.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use stoa_proto::v1 as proto;
use stoa_proto::v1::workers_client::WorkersClient;
use stoa_proto::v1::{invocation_result::Outcome, server_message, worker_message};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::{self, AbortHandle, JoinError, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use tonic::{Code, Status, Streaming};
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::handler::{Answer, Handler};
use crate::worker::Config;
use crate::{Context, Failure};

/// How long the server has to answer `Hello`.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing session waits for the server to end its side.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a session ended other than by a finished shutdown.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    /// With its causes spelled out: tonic's own message is only "transport error".
    #[error("could not connect: {0}")]
    Connect(String),
    #[error("refused: {0}")]
    Refused(Status),
    #[error("stream broke: {0}")]
    Broken(Status),
    #[error("the server ended the session")]
    Ended,
    /// The server asked for a drain (it is going away); the work in flight
    /// was answered.
    #[error("drained at the server's request")]
    Drained,
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// Runs one session. `Ok` means a shutdown was asked for and is done.
pub(crate) async fn run(
    config: &Config,
    endpoint: &Endpoint,
    members: &(dyn Fn(Vec<String>) + Sync),
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
) -> Result<(), SessionError> {
    let channel = tokio::select! {
        connected = endpoint.connect() => connected.map_err(|error| SessionError::Connect(crate::error::chain(&error)))?,
        () = shutdown.cancelled() => return Ok(()),
    };
    let mut client = WorkersClient::new(channel);

    // Room for every in-flight answer plus heartbeats, so that answering
    // rarely waits on the network (bounded for absurd max_in_flight values).
    let (outbound, requests) = mpsc::channel((config.max_in_flight as usize).min(4096) * 2 + 64);
    let hello = proto::Hello {
        functions: config.function_names.clone(),
        max_in_flight: config.max_in_flight,
        name: config.name.clone(),
    };
    // Queued before the call, since a server may wait for Hello before it
    // sends its response headers.
    if outbound.try_send(message(worker_message::Msg::Hello(hello))).is_err() {
        unreachable!("a new channel has room for one message");
    }
    let mut request = tonic::Request::new(ReceiverStream::new(requests));
    request.metadata_mut().insert("authorization", config.authorization.clone());

    let response = tokio::select! {
        response = client.session(request) => response.map_err(classify)?,
        () = shutdown.cancelled() => return Ok(()),
    };
    let mut inbound = response.into_inner();
    let first = tokio::select! {
        first = tokio::time::timeout(WELCOME_TIMEOUT, inbound.message()) => first,
        () = shutdown.cancelled() => return Ok(()),
    };
    let welcome = match first {
        Ok(Ok(Some(proto::ServerMessage { msg: Some(server_message::Msg::Welcome(welcome)) }))) => welcome,
        Ok(Ok(Some(other))) => return Err(SessionError::Protocol(format!("expected Welcome, got {other:?}"))),
        Ok(Ok(None)) => return Err(SessionError::Ended),
        Ok(Err(status)) => return Err(classify(status)),
        Err(_) => return Err(SessionError::Protocol(format!("no Welcome within {WELCOME_TIMEOUT:?}"))),
    };
    backoff.reset();
    if !welcome.members.is_empty() {
        members(welcome.members.clone());
    }
    tracing::info!(
        server = %endpoint.uri(),
        session_id = %welcome.session_id,
        functions = ?config.function_names,
        max_in_flight = welcome.max_in_flight,
        "session open"
    );
    if welcome.max_in_flight != 0 && welcome.max_in_flight < config.max_in_flight {
        tracing::warn!(
            asked = config.max_in_flight,
            granted = welcome.max_in_flight,
            "the server leases fewer invocations at once than asked"
        );
    }

    let session = Session {
        config,
        members,
        outbound,
        slots: Arc::new(Semaphore::new(config.max_in_flight as usize)),
        tasks: JoinSet::new(),
        by_task: HashMap::new(),
        by_invocation: HashMap::new(),
        draining: None,
    };
    session.serve(inbound, shutdown).await
}

/// The state of an open session. Dropping it aborts the handlers still
/// running: an answer that cannot reach the server is worth nothing, and the
/// server hands the invocation out again when its lease runs out.
struct Session<'a> {
    config: &'a Config,
    /// Told the cluster's members whenever the server names them.
    members: &'a (dyn Fn(Vec<String>) + Sync),
    outbound: mpsc::Sender<proto::WorkerMessage>,
    /// Guards `max_in_flight` even against a server that sends more.
    slots: Arc<Semaphore>,
    tasks: JoinSet<Answer>,
    by_task: HashMap<task::Id, Running>,
    /// Each running invocation's attempt and task.
    by_invocation: HashMap<String, (u32, AbortHandle)>,
    /// Set once draining: who asked for it.
    draining: Option<Drain>,
}

/// Who asked the session to drain.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Drain {
    /// This worker is shutting down.
    Shutdown,
    /// The server asked; the worker reconnects afterwards.
    Server,
}

/// What to answer when a task ends.
struct Running {
    invocation_id: String,
    attempt: u32,
}

impl Session<'_> {
    async fn serve(
        mut self,
        mut inbound: Streaming<proto::ServerMessage>,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionError> {
        let mut drain_deadline = None;
        loop {
            if self.draining.is_some() && self.tasks.is_empty() {
                break;
            }
            tokio::select! {
                // Answers first: they free slots and renew nothing by waiting.
                biased;
                Some(joined) = self.tasks.join_next_with_id() => self.finished(joined).await,
                received = inbound.message() => match received {
                    Ok(Some(proto::ServerMessage { msg: Some(server_message::Msg::Drain(drain)) })) => {
                        if self.draining.is_none() {
                            tracing::info!(in_flight = self.tasks.len(), reason = %drain.reason, "the server asks for a drain: finishing the work in flight");
                            self.draining = Some(Drain::Server);
                            // The server stops taking answers at its deadline.
                            let theirs = (drain.deadline_ms > 0).then(|| Duration::from_millis(drain.deadline_ms));
                            drain_deadline = theirs.or(self.config.drain_timeout).map(|timeout| Instant::now() + timeout);
                        }
                    }
                    Ok(Some(message)) => self.received(message).await,
                    Ok(None) => return Err(SessionError::Ended),
                    Err(status) => return Err(classify(status)),
                },
                () = shutdown.cancelled(), if self.draining != Some(Drain::Shutdown) => {
                    tracing::info!(in_flight = self.tasks.len(), "shutting down: finishing the work in flight");
                    // Tells the server to lease nothing more here.
                    let drain = proto::Drain { reason: "the worker is shutting down".into(), deadline_ms: 0 };
                    let _ = self.outbound.send(message(worker_message::Msg::Drain(drain))).await;
                    if self.draining.is_none() {
                        drain_deadline = self.config.drain_timeout.map(|timeout| Instant::now() + timeout);
                    }
                    self.draining = Some(Drain::Shutdown);
                }
                () = sleep_until(drain_deadline), if drain_deadline.is_some() => {
                    tracing::warn!(dropped = self.tasks.len(), "drain timeout: dropping the work still in flight");
                    break;
                }
            }
        }
        let drained = self.draining;
        // Our side of the stream ends once its last sender is gone (contexts
        // hold only weak ones); the answers queued before still go out.
        drop(self);
        // Wait for the server to close its side: then it has read our answers.
        let closed = tokio::time::timeout(CLOSE_TIMEOUT, async {
            while let Ok(Some(message)) = inbound.message().await {
                tracing::debug!(?message, "ignored while closing");
            }
        });
        if closed.await.is_err() {
            tracing::warn!("the server did not close the session within {CLOSE_TIMEOUT:?}");
        }
        tracing::info!("session closed");
        match drained {
            Some(Drain::Server) if !shutdown.is_cancelled() => Err(SessionError::Drained),
            _ => Ok(()),
        }
    }

    async fn received(&mut self, message: proto::ServerMessage) {
        match message.msg {
            Some(server_message::Msg::Invocations(batch)) => {
                for invocation in batch.invocations {
                    self.start(invocation).await;
                }
            }
            Some(server_message::Msg::Cancel(cancel)) => match self.by_invocation.get(&cancel.invocation_id) {
                // The task's end is reaped in `finished`, which answers
                // nothing for an aborted task.
                Some((attempt, task)) if cancel.attempt == 0 || cancel.attempt == *attempt => {
                    task.abort();
                    self.by_invocation.remove(&cancel.invocation_id);
                    tracing::debug!(invocation_id = %cancel.invocation_id, attempt = cancel.attempt, "cancelled");
                }
                Some((attempt, _)) => tracing::debug!(
                    invocation_id = %cancel.invocation_id,
                    cancelled = cancel.attempt,
                    running = attempt,
                    "cancel for another attempt: the running one goes on"
                ),
                None => tracing::debug!(invocation_id = %cancel.invocation_id, "cancel for nothing in flight"),
            },
            Some(server_message::Msg::Rejected(rejected)) => {
                tracing::warn!(
                    invocation_id = %rejected.invocation_id,
                    attempt = rejected.attempt,
                    code = ?rejected.code(),
                    message = %rejected.message,
                    "server rejected a message"
                );
            }
            // Handled in `serve`, which owns the drain deadline.
            Some(server_message::Msg::Drain(_)) => {}
            Some(server_message::Msg::Welcome(_)) => tracing::warn!("ignored a second Welcome"),
            Some(server_message::Msg::Members(m)) => (self.members)(m.addresses),
            // A message kind newer than this SDK.
            None => tracing::debug!("ignored an empty server message"),
        }
    }

    async fn start(&mut self, invocation: proto::Invocation) {
        if self.draining.is_some() {
            // Running it would hold up the drain; dropping it would leave it
            // waiting for its lease to run out. Refusing it at once lets the
            // server give it to another worker now, as the same attempt.
            let failure = Failure::not_started("the worker is draining");
            return self.answer(invocation.id, invocation.attempt, Err(failure)).await;
        }
        let Some(handler) = self.config.functions.get(&invocation.function).map(Handler::clone) else {
            // Another worker may serve it (a rolling upgrade).
            let failure = Failure::not_started(format!("this worker does not serve `{}`", invocation.function));
            return self.answer(invocation.id, invocation.attempt, Err(failure)).await;
        };
        if let Some((_, previous)) = self.by_invocation.remove(&invocation.id) {
            // A newer attempt of something still running here: only the newer
            // attempt's answer counts.
            previous.abort();
            tracing::debug!(invocation_id = %invocation.id, attempt = invocation.attempt, "a newer attempt replaces the running one");
        }
        if self.tasks.len() >= self.config.max_in_flight as usize {
            tracing::warn!(
                invocation_id = %invocation.id,
                max_in_flight = self.config.max_in_flight,
                "the server sent more than max_in_flight; the extra invocation waits for a slot"
            );
        }
        let context = Context::new(&invocation, self.outbound.downgrade());
        let heartbeat_every = (invocation.heartbeat_timeout_ms > 0)
            .then(|| Duration::from_millis(invocation.heartbeat_timeout_ms / 3).max(Duration::from_millis(1)));
        let span = function_span(&invocation);
        let task = self.tasks.spawn(
            run_handler(handler, invocation.args_json, context, Arc::clone(&self.slots), heartbeat_every)
                .instrument(span),
        );
        self.by_task.insert(task.id(), Running { invocation_id: invocation.id.clone(), attempt: invocation.attempt });
        self.by_invocation.insert(invocation.id, (invocation.attempt, task));
    }

    async fn finished(&mut self, joined: Result<(task::Id, Answer), JoinError>) {
        let (id, answer) = match joined {
            Ok(done) => done,
            Err(error) if error.is_cancelled() => {
                self.forget(error.id());
                return;
            }
            Err(error) => {
                let id = error.id();
                let message = panic_message(error.into_panic());
                tracing::warn!(%message, "handler panicked");
                (id, Err(Failure::retryable(format!("handler panicked: {message}"))))
            }
        };
        if let Some(running) = self.forget(id) {
            self.answer(running.invocation_id, running.attempt, answer).await;
        }
    }

    fn forget(&mut self, id: task::Id) -> Option<Running> {
        let running = self.by_task.remove(&id)?;
        // Only if it is this task's: a newer attempt may have taken the slot.
        if self.by_invocation.get(&running.invocation_id).is_some_and(|(_, task)| task.id() == id) {
            self.by_invocation.remove(&running.invocation_id);
        }
        Some(running)
    }

    async fn answer(&self, invocation_id: String, attempt: u32, answer: Answer) {
        let outcome = match answer {
            Ok(value_json) => Outcome::ValueJson(value_json),
            Err(failure) => Outcome::Failure(failure.into_proto()),
        };
        let result = proto::InvocationResult { invocation_id, attempt, outcome: Some(outcome) };
        // A closed stream shows up on the inbound side, which ends the session.
        let _ = self.outbound.send(message(worker_message::Msg::Result(result))).await;
    }
}

/// The span of one attempt, a child of the server's dispatch span (the
/// invocation's `traceparent`). Disabled, and free, unless the worker's
/// subscriber exports spans (`stoa_telemetry::init` does when
/// OTEL_EXPORTER_OTLP_ENDPOINT is set).
fn function_span(invocation: &proto::Invocation) -> tracing::Span {
    let parent = Some(invocation.traceparent.as_str()).filter(|t| !t.is_empty());
    // A trace the server's sampler left out: no span here either.
    if parent.and_then(stoa_telemetry::TraceParent::parse).is_some_and(|tp| !tp.sampled()) {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        parent: None,
        "function",
        otel.name = %invocation.function,
        otel.kind = "consumer",
        stoa.function = %invocation.function,
        stoa.invocation = %invocation.id,
        stoa.workflow = %invocation.workflow_id,
        stoa.attempt = invocation.attempt,
        stoa.outcome = tracing::field::Empty,
    );
    stoa_telemetry::set_parent(&span, parent, None);
    span
}

/// Runs one handler once a slot is free, heartbeating meanwhile if the
/// invocation asked for it (at a third of its heartbeat timeout, so that one
/// late beat does not lose the lease).
async fn run_handler(
    handler: Handler,
    args_json: String,
    context: Context,
    slots: Arc<Semaphore>,
    heartbeat_every: Option<Duration>,
) -> Answer {
    let beat = context.clone();
    let running = async move {
        let Ok(_slot) = slots.acquire_owned().await else {
            return Err(Failure::retryable("the worker is closing"));
        };
        let answer = handler(args_json, context).await;
        let outcome = match &answer {
            Ok(_) => "ok",
            Err(f) if f.is_retryable() => "retryable failure",
            Err(_) => "failure",
        };
        tracing::Span::current().record("stoa.outcome", outcome);
        answer
    };
    let Some(period) = heartbeat_every else { return running.await };
    tokio::pin!(running);
    let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            answer = &mut running => return answer,
            _ = ticks.tick() => beat.heartbeat(),
        }
    }
}

/// Statuses that reconnecting with the same token and Hello cannot fix.
fn classify(status: Status) -> SessionError {
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied | Code::InvalidArgument => SessionError::Refused(status),
        _ => SessionError::Broken(status),
    }
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(message) => (*message).to_owned(),
            Err(_) => "(no message)".to_owned(),
        },
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn message(msg: worker_message::Msg) -> proto::WorkerMessage {
    proto::WorkerMessage { msg: Some(msg) }
}
