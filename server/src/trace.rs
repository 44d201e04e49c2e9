//! The server's spans: a client's (or a peer's) request, each turn with its
//! firings as events (the reaction turns that apply answers included), the
//! wait for its commit, and each attempt's dispatch to a worker.
//!
//! A trace survives the process: a workflow keeps the context of its start
//! turn (`Meta::traceparent`) and each invocation that of the turn that
//! made it (`Invocation::traceparent`). A dispatch is a child of that
//! stored context, and so is the reaction turn that applies the answer (a
//! child, not a link: the answer continues the work the turn started, even
//! when it arrives hours later on a restarted server). A turn with no
//! caller to continue (a timer, a signal, an upgrade) is a child of its
//! workflow's stored context.
//!
//! With no exporter every span here is disabled at its call site: no
//! allocation, and the per-firing events are not even looked at.

use std::sync::{Arc, OnceLock};

use opentelemetry::trace::{Status, TraceContextExt};
use opentelemetry::KeyValue;
use stoa_engine::timeline::Event;
use stoa_engine::workflow::{Input, Invocation, TurnOutput, Workflow};
use stoa_engine::WorkflowId;
use stoa_telemetry::propagate::{from_headers, set_parent, traceparent};
use tonic::codegen::http;
use tracing::field::Empty;
use tracing::{info_span, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::runtime::tenant_of;

/// Firings shown as events of one turn; a turn may fire millions of times.
const MAX_FIRING_EVENTS: usize = 256;

/// The span of a gRPC request, a child of the caller's `traceparent`.
/// Clients' and peers' calls only: a worker's session lasts as long as the
/// worker (its work is traced per dispatch), and health checks are noise.
pub(crate) fn request_span(req: &http::Request<()>) -> Span {
    let path = req.uri().path();
    if !(path.starts_with("/stoa.v1.Stoa/") || path.starts_with("/stoa.v1.Peer/")) {
        return Span::none();
    }
    let span = info_span!(
        "request",
        otel.name = path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        otel.status_code = Empty,
    );
    let (tp, state) = from_headers(req.headers());
    set_parent(&span, tp, state);
    span
}

/// The span of one turn. Made on the turn thread once the parent is known
/// (the workflow is loaded only there), and only if that parent was
/// sampled: a turn of a trace the sampler left out makes no span at all and
/// hands the parent's context on unchanged, so the decision reaches the
/// dispatches and the workers without costing a span per turn.
#[derive(Clone)]
pub(crate) struct TurnSpan {
    /// The caller's span (a request) when there is one and spans are
    /// exported; `None` when nothing is exported.
    caller: Option<Span>,
    id: WorkflowId,
    span: Arc<OnceLock<Span>>,
}

impl TurnSpan {
    pub fn new(id: &WorkflowId) -> TurnSpan {
        // Free when nothing exports spans.
        let caller = stoa_telemetry::setup::spans_exported().then(|| {
            let current = Span::current();
            match current.id() {
                Some(_) => current,
                None => Span::none(),
            }
        });
        TurnSpan { caller, id: id.clone(), span: Arc::new(OnceLock::new()) }
    }

    fn make(&self) -> Span {
        info_span!(
            "turn",
            stoa.tenant = tenant_of(&self.id),
            stoa.workflow = %self.id,
            stoa.turn = Empty,
            stoa.input = Empty,
            stoa.firings = Empty,
            stoa.error = Empty,
        )
    }

    /// On the turn thread, before the turn applies `input`: the turn's
    /// parent is the turn that made the invocation it answers, else its
    /// caller, else its workflow's trace. Has the turn's invocations carry
    /// the turn's context (its parent's, when not sampled), and returns it.
    pub fn attach(&self, wf: &mut Workflow, input: Option<&Input>) -> Option<String> {
        let Some(caller) = &self.caller else {
            wf.set_turn_trace(None);
            return None;
        };
        let call = match input {
            Some(Input::Result { invocation, .. }) => wf.waiting_for(invocation),
            _ => None,
        };
        let stored = match call.and_then(|w| w.invocation.traceparent.clone()) {
            Some(made_by) => Some(made_by),
            None if caller.is_none() => wf.meta().traceparent.clone(),
            None => None,
        };
        let parent = match &stored {
            Some(tp) => Parent::Stored(tp),
            None if !caller.is_none() => Parent::Caller(caller),
            None => Parent::Root,
        };
        let tp = match parent {
            Parent::Stored(tp) if !sampled(tp) => Some(tp.clone()),
            Parent::Caller(c) if !c.context().span().span_context().is_sampled() => traceparent(c),
            parent => {
                let span = match parent {
                    Parent::Caller(c) => c.in_scope(|| self.make()),
                    _ => self.make(),
                };
                if let Parent::Stored(tp) = parent {
                    set_parent(&span, Some(tp), None);
                }
                let tp = traceparent(&span);
                let _ = self.span.set(span);
                tp
            }
        };
        wf.set_turn_trace(tp.clone());
        tp
    }

    /// After the turn: its number, input, firings (the first
    /// `MAX_FIRING_EVENTS` as events: rule, section, facts matched), error.
    pub fn record(&self, out: &TurnOutput) {
        let Some(span) = self.sampled() else { return };
        span.record("stoa.turn", out.turn);
        span.record("stoa.firings", out.firings);
        if let Some(e) = &out.error {
            span.record("stoa.error", e.as_str());
            span.set_status(Status::error(e.clone()));
        }
        let mut shown = 0;
        for e in &out.entries {
            match &e.event {
                Event::TurnStarted { input } => {
                    span.record("stoa.input", input.as_str());
                }
                Event::Fired { rule, section, facts } if shown < MAX_FIRING_EVENTS => {
                    let facts: Vec<String> = facts.iter().map(|(id, v)| format!("f{id}@{v}")).collect();
                    span.add_event(
                        "firing",
                        vec![
                            KeyValue::new("stoa.rule", rule.clone()),
                            KeyValue::new("stoa.section", section.as_str()),
                            KeyValue::new("stoa.facts", facts.join(",")),
                        ],
                    );
                    shown += 1;
                }
                _ => {}
            }
        }
    }

    /// The wait until the turn is durable (its share of a group commit).
    pub fn commit(&self) -> Span {
        match self.sampled() {
            Some(turn) => info_span!(parent: turn, "commit"),
            None => Span::none(),
        }
    }

    /// Whether the span is exported: a trace the sampler left out (the
    /// caller's choice, or the ratio's) gets no events and no child spans,
    /// which are most of the cost of tracing a turn.
    fn sampled(&self) -> Option<&Span> {
        self.span.get().filter(|s| !s.is_disabled() && s.context().span().span_context().is_sampled())
    }
}

/// Where a turn's span hangs.
enum Parent<'a> {
    /// A context kept in the store: of the turn that made the invocation
    /// answered, or of the workflow's start.
    Stored(&'a String),
    /// The span of the request that asked for the turn.
    Caller(&'a Span),
    /// Nothing: a new trace, if the sampler wants one.
    Root,
}

/// The span of one attempt at a worker, a child of the turn that made the
/// invocation; none for an invocation made untraced.
pub(crate) fn dispatch_span(inv: &Invocation, tenant: &str, attempt: u32) -> Span {
    let Some(tp) = inv.traceparent.as_deref().filter(|tp| sampled(tp)) else { return Span::none() };
    let span = info_span!(
        parent: None,
        "dispatch",
        otel.kind = "producer",
        stoa.tenant = tenant,
        stoa.workflow = %inv.workflow,
        stoa.invocation = %inv.id,
        stoa.function = %inv.function,
        stoa.attempt = attempt,
        stoa.outcome = Empty,
    );
    set_parent(&span, Some(tp), None);
    span
}

/// The span under which a child workflow starts: the child's trace is its
/// parent invocation's.
pub(crate) fn child_span(inv: &Invocation) -> Span {
    let Some(tp) = inv.traceparent.as_deref().filter(|tp| sampled(tp)) else { return Span::none() };
    let span = info_span!(parent: None, "start child", stoa.invocation = %inv.id, stoa.function = %inv.function);
    set_parent(&span, Some(tp), None);
    span
}

/// Whether a stored context was sampled: an invocation made in a trace the
/// sampler left out is dispatched without a span.
fn sampled(traceparent: &str) -> bool {
    stoa_telemetry::traceparent::TraceParent::parse(traceparent).is_some_and(|tp| tp.sampled())
}
