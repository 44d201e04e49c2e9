//! `Context`: what a handler knows about the invocation it runs, and its way
//! to keep the invocation's lease alive.

use std::sync::Arc;
use std::time::{Duration, Instant};

use stoa_proto::v1 as proto;
use stoa_proto::v1::worker_message::Msg;
use tokio::sync::mpsc;

/// The invocation a handler runs. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Context {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    invocation_id: String,
    function: String,
    attempt: u32,
    workflow_id: String,
    priority: i64,
    timeout: Option<Duration>,
    received: Instant,
    // Weak, so that a context a handler leaks (into a background task, say)
    // cannot keep a closed session's stream open.
    outbound: Option<mpsc::WeakSender<proto::WorkerMessage>>,
}

impl Context {
    pub(crate) fn new(invocation: &proto::Invocation, outbound: mpsc::WeakSender<proto::WorkerMessage>) -> Context {
        Context {
            inner: Arc::new(Inner {
                invocation_id: invocation.id.clone(),
                function: invocation.function.clone(),
                attempt: invocation.attempt,
                workflow_id: invocation.workflow_id.clone(),
                priority: invocation.priority,
                timeout: (invocation.timeout_ms > 0).then(|| Duration::from_millis(invocation.timeout_ms)),
                received: Instant::now(),
                outbound: Some(outbound),
            }),
        }
    }

    /// A context connected to no server, for calling handlers in unit tests;
    /// its heartbeats go nowhere.
    pub fn detached(function: impl Into<String>, invocation_id: impl Into<String>, attempt: u32) -> Context {
        Context {
            inner: Arc::new(Inner {
                invocation_id: invocation_id.into(),
                function: function.into(),
                attempt,
                workflow_id: String::new(),
                priority: 0,
                timeout: None,
                received: Instant::now(),
                outbound: None,
            }),
        }
    }

    /// The invocation's stable id (the same across attempts): the key for
    /// making side effects idempotent.
    pub fn invocation_id(&self) -> &str {
        &self.inner.invocation_id
    }

    /// The function called, e.g. `media.encode`.
    pub fn function(&self) -> &str {
        &self.inner.function
    }

    /// The attempt, 1 for the first.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// The workflow whose rule made the call.
    pub fn workflow_id(&self) -> &str {
        &self.inner.workflow_id
    }

    /// The invocation's priority (higher first).
    pub fn priority(&self) -> i64 {
        self.inner.priority
    }

    /// How long this attempt may take, if the server set a limit.
    pub fn timeout(&self) -> Option<Duration> {
        self.inner.timeout
    }

    /// When this attempt's time runs out, measured from its arrival here.
    pub fn deadline(&self) -> Option<Instant> {
        self.inner.timeout.map(|timeout| self.inner.received + timeout)
    }

    /// Tells the server this attempt is alive, renewing its lease. Never
    /// blocks: if the outgoing queue is full, messages are already flowing and
    /// this one is skipped; if the session is gone, there is no one to tell.
    /// The SDK also heartbeats by itself when the invocation asks for it.
    pub fn heartbeat(&self) {
        let Some(sender) = self.inner.outbound.as_ref().and_then(mpsc::WeakSender::upgrade) else { return };
        let beat = proto::Heartbeat { invocation_id: self.inner.invocation_id.clone(), attempt: self.inner.attempt };
        let _ = sender.try_send(proto::WorkerMessage { msg: Some(Msg::Heartbeat(beat)) });
    }
}
