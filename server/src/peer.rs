//! Turns for workflows another server owns go to that server: the `Peer`
//! service, and the client that calls it. Every turn that changes a
//! workflow (a client's start, assert, retract or cancel, a function's
//! result, a child's start or end, a routed signal, an upgrade) goes
//! through `Runtime::routed`, which applies it here or forwards it once;
//! the owner applies it locally or answers `moved`, and the caller looks
//! again after the next lease tick. A repeat is safe: starts carry their
//! request ids, results their invocation ids.
//!
//! Servers of a cluster trust each other through the secret kept in their
//! database; the service refuses calls without it, so a tenant cannot
//! reach it with its own token.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use stoa_engine::workflow::{Input, Meta, Origin, Outcome};
use stoa_engine::{InvocationId, WorkflowId};
use stoa_proto::v1 as pb;
use stoa_rules::testcase::FactSpec;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::error::ApiError;
use crate::runtime::Runtime;

/// The metadata key of the cluster's secret.
const SECRET: &str = "x-stoa-cluster";
/// Set on a status that means "not here (any more)": look again.
const MOVED: &str = "x-stoa-moved";

/// A turn, as one server asks another to make it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Op {
    Start { tenant: String, pack: String, facts: Vec<FactSpec>, request_id: String, origin: Origin },
    Turn { tenant: String, workflow: WorkflowId, input: Input, key: Option<String> },
    Deliver { invocation: InvocationId, outcome: Outcome },
    Upgrade { workflow: WorkflowId, pack: String, version: String },
}

/// What the owner answers.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    Started {
        workflow: WorkflowId,
        created: bool,
    },
    /// A turn's summary (what clients are told of a turn).
    Turned {
        turn: u64,
        error: Option<String>,
        meta: Option<Box<Meta>>,
    },
    Delivered(bool),
    /// The upgrade's turn (its error and firings), if it made one.
    Upgraded(Option<(Option<String>, u64)>),
}

/// Connections to the other servers, one channel per address (HTTP/2
/// multiplexes the calls).
pub(crate) struct Peers {
    secret: String,
    channels: DashMap<String, Channel>,
}

impl Peers {
    pub fn new(secret: String) -> Peers {
        Peers { secret, channels: DashMap::new() }
    }

    pub fn channel(&self, address: &str) -> Result<Channel, ApiError> {
        if let Some(c) = self.channels.get(address) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| ApiError::Internal(format!("peer address {address}: {e}")))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(60))
            .tcp_nodelay(true);
        let channel = endpoint.connect_lazy();
        self.channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }

    /// Asks the server at `address` to make the turn.
    pub async fn forward(&self, address: &str, op: &Op) -> Result<Reply, ApiError> {
        let body = serde_json::to_vec(op).map_err(|e| ApiError::Internal(format!("encoding a forwarded turn: {e}")))?;
        let mut req = Request::new(pb::PeerCall { op_json: body });
        let secret = self.secret.parse().map_err(|_| ApiError::Internal("the cluster's secret is not ASCII".into()))?;
        req.metadata_mut().insert(SECRET, secret);
        stoa_telemetry::inject(&tracing::Span::current(), req.metadata_mut());
        let mut client = pb::peer_client::PeerClient::new(self.channel(address)?);
        match client.forward(req).await {
            Ok(r) => serde_json::from_slice(&r.into_inner().reply_json)
                .map_err(|e| ApiError::Internal(format!("decoding the answer of {address}: {e}"))),
            Err(s) => Err(from_status(address, s)),
        }
    }
}

/// A status from a peer, as the error it stands for. Unreachable peers
/// (dead, restarting) count as moved: their partitions are about to be
/// claimed by another server.
fn from_status(address: &str, s: Status) -> ApiError {
    let m = s.message().to_string();
    if s.metadata().get(MOVED).is_some() {
        return ApiError::Moved(m);
    }
    match s.code() {
        tonic::Code::NotFound => ApiError::NotFound(m),
        tonic::Code::InvalidArgument => ApiError::InvalidArgument(m),
        tonic::Code::FailedPrecondition => ApiError::FailedPrecondition(m),
        tonic::Code::ResourceExhausted => ApiError::ResourceExhausted(m),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled | tonic::Code::Unknown => {
            ApiError::Moved(format!("server {address} did not answer: {m}"))
        }
        _ => ApiError::Internal(format!("server {address}: {m}")),
    }
}

/// An error, as a status a peer can read back (see `from_status`).
fn to_status(e: ApiError) -> Status {
    match e {
        ApiError::Moved(m) => {
            let mut s = Status::unavailable(m);
            s.metadata_mut().insert(MOVED, tonic::metadata::MetadataValue::from_static("1"));
            s
        }
        // Its message, not "internal error": the caller logs it.
        ApiError::Internal(m) => Status::internal(m),
        e => e.into(),
    }
}

pub(crate) struct PeerService {
    pub runtime: Arc<Runtime>,
    pub secret: String,
}

#[tonic::async_trait]
impl pb::peer_server::Peer for PeerService {
    async fn forward(&self, req: Request<pb::PeerCall>) -> Result<Response<pb::PeerReply>, Status> {
        let shown = req.metadata().get(SECRET).map(|v| v.as_bytes()).unwrap_or_default();
        if !same(shown, self.secret.as_bytes()) {
            return Err(Status::permission_denied("not a server of this cluster"));
        }
        let op: Op = serde_json::from_slice(&req.into_inner().op_json)
            .map_err(|e| Status::invalid_argument(format!("op_json: {e}")))?;
        let rt = self.runtime.clone();
        // Detached: a caller that gives up does not cut a turn short.
        let reply = tokio::spawn(async move { rt.apply_here(op).await })
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(to_status)?;
        let body = serde_json::to_vec(&reply).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::PeerReply { reply_json: body }))
    }
}

/// Compares secrets in time independent of where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && !b.is_empty() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moved_survives_the_wire_and_unreachable_peers_count_as_moved() {
        let s = to_status(ApiError::Moved("partition 3 moved".into()));
        assert!(matches!(from_status("a:1", s), ApiError::Moved(m) if m == "partition 3 moved"));
        let gone = Status::unavailable("connection refused");
        assert!(matches!(from_status("a:1", gone), ApiError::Moved(m) if m.contains("a:1")));
        let s = to_status(ApiError::NotFound("workflow x does not exist".into()));
        assert!(matches!(from_status("a:1", s), ApiError::NotFound(_)));
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"", b""));
    }
}
