//! The `Workers` service: one bidirectional stream per worker session.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use stoa_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::tenant;
use crate::dispatch_handle::{DispatchHandle, Event};

pub struct WorkersService {
    pub dispatch: DispatchHandle,
    pub next_session: Arc<AtomicU64>,
    /// Cancelled once the dispatcher has stopped: sessions end then.
    pub closed: CancellationToken,
    /// Whose members each worker is told (see `Welcome.members`).
    pub placement: Arc<crate::placement::Placement>,
}

type Out = Pin<Box<dyn Stream<Item = Result<pb::ServerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl pb::workers_server::Workers for WorkersService {
    type SessionStream = Out;

    async fn session(&self, req: Request<Streaming<pb::WorkerMessage>>) -> Result<Response<Out>, Status> {
        let tenant = tenant(&req)?;
        let mut inbound = req.into_inner();
        let hello = match inbound.next().await {
            Some(Ok(pb::WorkerMessage { msg: Some(pb::worker_message::Msg::Hello(h)) })) => h,
            Some(Ok(_)) => return Err(Status::invalid_argument("the first message of a session must be `hello`")),
            Some(Err(e)) => return Err(e),
            None => return Err(Status::invalid_argument("the session closed before `hello`")),
        };
        if hello.functions.is_empty() {
            return Err(Status::invalid_argument("hello.functions: name at least one function"));
        }
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        let max_in_flight = (hello.max_in_flight.max(1) as usize).min(10_000);
        // Room for a few batches plus control messages; past that the
        // dispatcher holds work back (backpressure on slow workers).
        let (tx, rx) = mpsc::channel(16);
        let welcome = pb::ServerMessage {
            msg: Some(pb::server_message::Msg::Welcome(pb::Welcome {
                session_id: session.to_string(),
                max_in_flight: max_in_flight as u32,
                members: self.placement.members(),
            })),
        };
        tx.send(welcome).await.map_err(|_| Status::unavailable("session closed"))?;
        tracing::info!(session, %tenant, name = %hello.name, functions = ?hello.functions, max_in_flight, "worker connected");
        self.dispatch.send(Event::Connect { session, tenant, functions: hello.functions, max_in_flight, tx });
        let dispatch = self.dispatch.clone();
        let closed = self.closed.clone();
        // The reader ends with the stream (or once the dispatcher stopped);
        // it owns nothing else, and always reports the disconnect.
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = closed.cancelled() => break,
                    m = inbound.next() => m,
                };
                match next {
                    Some(Ok(pb::WorkerMessage { msg: Some(pb::worker_message::Msg::Result(result)) })) => {
                        dispatch.send(Event::Result { session, result })
                    }
                    Some(Ok(pb::WorkerMessage { msg: Some(pb::worker_message::Msg::Heartbeat(h)) })) => {
                        dispatch.send(Event::Heartbeat { session, invocation: h.invocation_id, attempt: h.attempt })
                    }
                    Some(Ok(pb::WorkerMessage { msg: Some(pb::worker_message::Msg::Drain(d)) })) => {
                        tracing::info!(session, reason = %d.reason, "worker draining");
                        dispatch.send(Event::Drain(session))
                    }
                    Some(Ok(pb::WorkerMessage { msg: Some(pb::worker_message::Msg::Hello(_)) })) => {
                        dispatch.send(Event::Unexpected { session, what: "second hello".into() })
                    }
                    Some(Ok(pb::WorkerMessage { msg: None })) => {
                        dispatch.send(Event::Unexpected { session, what: "empty message".into() })
                    }
                    Some(Err(e)) => {
                        tracing::info!(session, error = %e, "worker stream broke");
                        break;
                    }
                    None => break,
                }
            }
            tracing::info!(session, "worker disconnected");
            dispatch.send(Event::Disconnect(session));
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(Ok))))
    }
}
