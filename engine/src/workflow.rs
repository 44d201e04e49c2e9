//! A workflow: the working memory of one pack instance and its turns.
//!
//! A turn applies one input, fires rules to quiescence and yields a
//! `TurnOutput`: the exact delta to commit (facts, waiting activations,
//! metadata), its timeline entries and its outgoing invocations. If any rule
//! fails (a script error, a sandbox limit, the firing limit, a schema
//! violation) the turn is rolled back whole: the workflow keeps the facts it
//! had before the turn and is marked failed with the error.
//!
//! Invariant: no I/O here. Time comes in with the input.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use stoa_rules::budget;
use stoa_rules::compile::{Condition, Pack, Rule, Section};
use stoa_rules::diagnostic::shown;
use stoa_rules::expr::{Env, Expr as NativeExpr};
use stoa_rules::manifest::RetryPolicy;
use stoa_rules::native::{NativeAction, Step};
use stoa_rules::sandbox::{CallOptions, Due, Effect, NextIds, ScriptValue};
use stoa_rules::testcase::FactSpec;
use stoa_rules::{Fields, Sym, Value};

use crate::fact::{Fact, FactId, InvocationId, WorkflowId};
use crate::network::{Bound, Network};
use crate::timeline::{self, Entry, Event, SectionKind};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Running,
    Completed,
    Failed,
    /// Ended by `Input::Cancel` (after the pack's cleanup) or
    /// `Input::Terminate`.
    Cancelled,
}

impl Status {
    pub fn is_finished(self) -> bool {
        self != Status::Running
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }
}

/// Everything about a workflow except its facts, waiting activations and
/// timeline; committed with every turn.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub id: WorkflowId,
    pub pack: String,
    pub pack_version: String,
    pub status: Status,
    pub result: Value,
    pub reason: Option<String>,
    pub next_fact_id: FactId,
    pub next_invocation: u64,
    pub turn: u64,
    pub timeline_seq: u64,
    /// The clock of fact changes, for recency (`Fact::tag`).
    #[serde(default)]
    pub next_tag: u64,
    pub created_ms: u64,
    pub updated_ms: u64,
    #[serde(default = "one")]
    pub next_timer: u64,
    #[serde(default = "one")]
    pub next_signal: u64,
    /// What started this workflow.
    #[serde(default)]
    pub origin: Origin,
    /// The client request id that started it (`tenant/id`), so that the
    /// record of the request goes with the workflow when it is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// Set while a cancellation runs the pack's cleanup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelling: Option<Cancelling>,
    /// The trace context it was started in (W3C `traceparent`, opaque to
    /// the engine): turns with no other parent join this trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Invocations (and children) it waits on after its last turn, and
    /// its pending timers: kept on the meta so that a store's list index
    /// can tell "waiting on an invocation" from "waiting on a timer"
    /// without reading anything else (see `store::index`).
    #[serde(default, skip_serializing_if = "is_zero32")]
    pub waiting: u32,
    #[serde(default, skip_serializing_if = "is_zero32")]
    pub timers: u32,
}

fn is_zero32(n: &u32) -> bool {
    *n == 0
}

/// A cancellation under way: the pack's rules react to the `Cancelled`
/// fact until nothing is left to wait for, or the deadline terminates it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cancelling {
    pub reason: String,
    pub deadline_ms: u64,
    /// The durable timer that ends it at the deadline.
    pub deadline_timer: u64,
}

/// The fact a cancellation asserts, for cleanup rules to match (one of
/// `stoa_rules::manifest::BUILTIN_TYPES`).
pub const CANCELLED_TYPE: &str = "Cancelled";
/// How long cleanup may take when the canceller does not say.
pub const DEFAULT_CANCEL_GRACE_MS: u64 = 5 * 60_000;
/// The rule name the timeline shows for the deadline timer.
const CANCEL_DEADLINE: &str = "(cancellation deadline)";

fn one() -> u64 {
    1
}

/// What started a workflow: lineage for `stoa lineage` and for cancelling
/// children with their parent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "lowercase")]
pub enum Origin {
    /// A client's start request.
    #[default]
    Request,
    /// A parent workflow's `start_workflow`; the parent awaits `invocation`.
    Parent {
        invocation: InvocationId,
        /// Packs from the root workflow down to the parent (cycle check).
        ancestry: Vec<String>,
    },
    /// A signal this pack subscribes to with `start = true`.
    Signal { signal: String },
    /// A tick of a cron schedule.
    Schedule { schedule: String },
}

impl Origin {
    /// How many workflows are above this one.
    pub fn depth(&self) -> usize {
        match self {
            Origin::Parent { ancestry, .. } => ancestry.len(),
            _ => 0,
        }
    }
}

/// A durable timer: when due, a turn inserts its fact.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timer {
    pub workflow: WorkflowId,
    /// Unique within the workflow.
    pub id: u64,
    pub due_ms: u64,
    #[serde(rename = "type")]
    pub ty: Sym,
    pub fields: Fields,
    pub rule: String,
}

/// A named signal with a payload: sent through the API or emitted by a rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    /// Unique per tenant; the same id is acted on once.
    pub id: String,
    pub name: String,
    pub payload: Value,
    /// The workflow whose rule emitted it.
    pub from: Option<WorkflowId>,
    pub at_ms: u64,
}

impl Signal {
    /// The fact a signal becomes in a workflow: `Signal { name, id, payload, from }`.
    pub fn fact(&self) -> FactSpec {
        let mut fields = Fields::new();
        fields.set(Sym::new("name"), Value::str(&self.name));
        fields.set(Sym::new("id"), Value::str(&self.id));
        fields.set(Sym::new("payload"), self.payload.clone());
        if let Some(f) = &self.from {
            fields.set(Sym::new("from"), Value::str(f.as_str()));
        }
        FactSpec { ty: "Signal".into(), fields }
    }
}

/// The function name under which a child workflow of `pack` is awaited.
pub const CHILD_PREFIX: &str = "workflow:";

/// How deep workflows may start workflows (the root is depth 0).
pub const MAX_CHILD_DEPTH: usize = 8;

/// Work handed to a function worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Invocation {
    pub id: InvocationId,
    pub workflow: WorkflowId,
    pub function: String,
    pub args: Value,
    pub priority: i64,
    pub timeout_ms: u64,
    /// Heartbeat timeout of an attempt; zero: none.
    #[serde(default)]
    pub heartbeat_ms: u64,
    pub retry: RetryPolicy,
    pub rule: String,
    pub created_ms: u64,
    /// The trace context of the turn that made it (W3C `traceparent`,
    /// opaque to the engine), so that its dispatch, and the turn that
    /// applies its answer, join that trace even after a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The function's `concurrency` in its pack: at most this many of the
    /// tenant's calls of it run at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
}

/// What a waiting activation bound, slot by slot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Binding {
    Fact(FactId),
    Value(Value),
    Unbound,
}

/// Whether setting field `k` to `v` changes `fields` (null removes a field,
/// even one that holds null).
/// `args` checked against the function's declared arguments, defaults
/// filled in: what the worker receives always fits the schema.
fn checked_args(function: &str, schema: &stoa_rules::manifest::Schema, args: Value) -> Result<Value, TurnError> {
    let label = stoa_rules::manifest::args_label(function);
    let Some(mut fields) = stoa_rules::Fields::from_json(&args.to_json()) else {
        return Err(TurnError(format!("call(\"{function}\"): the arguments must be a map (its schema is {label})")));
    };
    schema.fill_defaults(&mut fields);
    let problems = schema.violations(&label, &fields);
    if !problems.is_empty() {
        return Err(TurnError(format!("call(\"{function}\"): {}", problems.join("; "))));
    }
    Ok(Value::from_json(&fields.to_json()))
}

/// Why strict mode refuses a fact of a type without a schema.
fn undeclared(ty: &str) -> String {
    format!("{} has no schema in pack.toml, and the pack is strict (`[facts] strict = true`)", shown(ty))
}

fn changes_field(fields: &Fields, k: Sym, v: &Value) -> bool {
    match fields.get(k) {
        Some(prev) => prev != v || matches!(prev, Value::Null),
        None => !matches!(v, Value::Null),
    }
}

/// What a native action reads: its rule's bindings, facts lent by the network.
struct BindingEnv<'a> {
    net: &'a Network,
    bindings: &'a [Binding],
}

impl Env for BindingEnv<'_> {
    fn field(&self, _: Sym) -> Option<std::borrow::Cow<'_, Value>> {
        None
    }

    fn bound_field(&self, binding: usize, name: Sym) -> Option<std::borrow::Cow<'_, Value>> {
        match self.bindings.get(binding)? {
            Binding::Fact(id) => self.net.fact(*id)?.fields.get(name).map(std::borrow::Cow::Borrowed),
            _ => None,
        }
    }

    fn bound(&self, binding: usize) -> std::borrow::Cow<'_, Value> {
        match self.bindings.get(binding) {
            Some(Binding::Value(v)) => std::borrow::Cow::Borrowed(v),
            _ => std::borrow::Cow::Owned(Value::Null),
        }
    }
}

/// An activation waiting for the answer of one invocation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Waiting {
    pub invocation: Invocation,
    pub rule: String,
    pub bindings: Vec<Binding>,
    /// Facts matched when the action fired (ids and versions).
    pub matched: Vec<(FactId, u32)>,
}

/// How an invocation ended, as the dispatcher reports it after retries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum Outcome {
    Ok {
        value: Value,
        attempts: u32,
        /// Attempts before this outcome that failed (recorded on the
        /// timeline before the result).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        failed: Vec<FailedAttempt>,
    },
    Error {
        kind: ErrorKind,
        message: String,
        attempts: u32,
        retryable: bool,
        /// Attempts before the last one that failed.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        failed: Vec<FailedAttempt>,
    },
}

/// An attempt of an invocation that failed (or was lost with its worker)
/// and was tried again, as the dispatcher saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FailedAttempt {
    pub attempt: u32,
    /// When it ended, in ms since the epoch.
    pub at_ms: u64,
    pub error: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorKind {
    /// The function reported an error.
    Failed,
    /// An attempt ran past its start-to-close or heartbeat timeout.
    Timeout,
    /// The worker running an attempt was lost (it crashed or disconnected)
    /// as many times as the function's `max_lost` allows.
    Lost,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Input {
    Start {
        facts: Vec<FactSpec>,
    },
    Assert {
        facts: Vec<FactSpec>,
    },
    Retract {
        ids: Vec<FactId>,
    },
    /// Changes fields of a fact from outside (a test step, `stoa run`), as
    /// a rule's `modify` would: null removes a field.
    Modify {
        id: FactId,
        fields: Fields,
    },
    Result {
        invocation: InvocationId,
        outcome: Outcome,
    },
    /// Cancel: if the pack has rules over `Cancelled` facts, assert one
    /// and let them clean up (waiting invocations and timers are dropped
    /// first) for at most `grace_ms`; else end at once. Ends `cancelled`.
    Cancel {
        reason: String,
        /// Default `DEFAULT_CANCEL_GRACE_MS`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grace_ms: Option<u64>,
    },
    /// End now as `cancelled`, running no rule.
    Terminate {
        reason: String,
    },
    /// Timers are due: those of one workflow due at the same instant fire
    /// in one turn, in id order.
    Timers {
        ids: Vec<u64>,
    },
    /// A signal arrives: asserted as a `Signal` fact.
    Signal {
        signal: Signal,
    },
}

impl Input {
    fn summary(&self) -> String {
        match self {
            Input::Start { facts } => format!("start with {} fact(s)", facts.len()),
            Input::Assert { facts } => format!("assert {} fact(s)", facts.len()),
            Input::Retract { ids } => format!("retract {ids:?}"),
            Input::Modify { id, .. } => format!("modify f{id}"),
            Input::Result { invocation, outcome: Outcome::Ok { .. } } => format!("result of {invocation}"),
            Input::Result { invocation, outcome: Outcome::Error { kind, .. } } => {
                format!("error ({kind:?}) of {invocation}").to_lowercase()
            }
            Input::Cancel { reason, .. } => format!("cancel: {reason}"),
            Input::Terminate { reason } => format!("terminate: {reason}"),
            Input::Timers { ids } => match ids.as_slice() {
                [id] => format!("timer {id} is due"),
                _ => format!("timers {ids:?} are due"),
            },
            Input::Signal { signal } => format!("signal {} ({})", signal.name, signal.id),
        }
    }
}

/// An input the workflow refuses; nothing changes and no turn is recorded.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Rejected {
    #[error("workflow is {0}, not running")]
    NotRunning(&'static str),
    #[error("invocation {0} is not awaited by this workflow (already answered, cancelled, or unknown)")]
    UnknownInvocation(InvocationId),
    #[error("{0}")]
    InvalidFacts(InvalidFacts),
    #[error("fact f{0} does not exist")]
    UnknownFact(FactId),
    #[error("timer {0} is not pending (already fired or cancelled)")]
    UnknownTimer(u64),
    #[error("the workflow is already being cancelled (its cleanup ends by {0} ms since the epoch); terminate it to end it now")]
    AlreadyCancelling(u64),
    /// The host stopped the turn (a server shutting down): nothing of it
    /// happened, and the in-memory workflow is to be reloaded.
    #[error("the turn was interrupted: the server is stopping")]
    Interrupted,
}

/// The problems of facts a client gave: (index of the fact, what is wrong),
/// in order, each naming its field.
#[derive(Clone, Debug, PartialEq)]
pub struct InvalidFacts(pub Vec<(usize, String)>);

impl std::fmt::Display for InvalidFacts {
    /// `fact 0: …` for one problem; `3 problems: fact 0: …; fact 2: …` for
    /// more (the first 20, then how many more).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOWN: usize = 20;
        if self.0.len() > 1 {
            write!(f, "{} problems: ", self.0.len())?;
        }
        for (n, (i, e)) in self.0.iter().take(SHOWN).enumerate() {
            if n > 0 {
                f.write_str("; ")?;
            }
            write!(f, "fact {i}: {e}")?;
        }
        if self.0.len() > SHOWN {
            write!(f, "; and {} more", self.0.len() - SHOWN)?;
        }
        Ok(())
    }
}

/// The delta of one committed turn.
#[derive(Clone, Debug, Default)]
pub struct TurnOutput {
    pub turn: u64,
    /// The turn was rolled back; the workflow failed with this error.
    pub error: Option<String>,
    pub entries: Vec<Entry>,
    pub facts_put: Vec<Fact>,
    pub facts_deleted: Vec<FactId>,
    pub waiting_put: Vec<Waiting>,
    pub waiting_deleted: Vec<InvocationId>,
    /// New invocations, for the outbox.
    pub invocations: Vec<Invocation>,
    /// Invocations no longer awaited (their answers will be ignored).
    pub cancelled: Vec<InvocationId>,
    pub timers_put: Vec<Timer>,
    /// For each instant a timer put or deleted was due at, the workflow's
    /// timers due then (none: the instant has no timer left). The store
    /// keeps a workflow's timers by instant, since those fire in one turn.
    pub timer_groups: Vec<(u64, Vec<Timer>)>,
    /// Signals emitted by rules, to route after commit.
    pub signals: Vec<Signal>,
    pub meta: Option<Meta>,
    pub firings: u64,
}

/// Rules of a new pack version compared with the old, by name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RuleChanges {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

/// A failure inside a turn: the turn is rolled back.
struct TurnError(String);

impl<E: std::fmt::Display> From<E> for TurnError {
    fn from(e: E) -> TurnError {
        TurnError(e.to_string())
    }
}

pub struct Workflow {
    pack: Arc<Pack>,
    net: Network,
    meta: Meta,
    waiting: BTreeMap<InvocationId, Waiting>,
    /// Waiting invocations by the facts they bound (to cancel on retract).
    waiting_by_fact: FxHashMap<FactId, Vec<InvocationId>>,
    timers: BTreeMap<u64, Timer>,
    /// Estimated heap bytes of the facts (see `memory_estimate`).
    fact_bytes: usize,
    turn: TurnState,
    /// The trace context the invocations of the next turns carry (set by
    /// the host before a turn; opaque here).
    trace: Option<String>,
}

/// What a fact costs besides its values: its slot, its id in the maps, its
/// entries in alpha memories (measured over the engine benchmark's facts).
const FACT_BYTES: usize = 160;
/// What a partial match costs: its token and its place in a memory.
const TOKEN_BYTES: usize = 96;

#[derive(Default)]
struct TurnState {
    now: u64,
    entries: Vec<Entry>,
    /// Pre-turn state of every older fact touched (facts from `first_new`
    /// on were made in this turn: they did not exist before it).
    undo_facts: FxHashMap<FactId, Option<Fact>>,
    first_new: FactId,
    undo_waiting: FxHashMap<InvocationId, Option<Waiting>>,
    undo_timers: FxHashMap<u64, Option<Timer>>,
    signals: Vec<Signal>,
    invocations: Vec<Invocation>,
    cancelled: Vec<InvocationId>,
    firings: u64,
    /// Firings of this turn by rule index (to explain a rolled-back turn).
    fired_by_rule: Vec<u64>,
    /// Heap bytes of the values copied into this turn's timeline entries.
    entry_bytes: usize,
}

/// A workflow as stored: enough to rebuild it exactly.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub meta: Meta,
    pub facts: Vec<Fact>,
    pub waiting: Vec<Waiting>,
    pub timers: Vec<Timer>,
}

impl Workflow {
    /// A new workflow; call `apply(Input::Start { .. })` next.
    pub fn new(id: WorkflowId, pack: Arc<Pack>, now_ms: u64) -> Workflow {
        let meta = Meta {
            id,
            pack: pack.manifest.name.clone(),
            pack_version: pack.manifest.version.clone(),
            status: Status::Running,
            result: Value::Null,
            reason: None,
            next_fact_id: 1,
            next_invocation: 1,
            turn: 0,
            timeline_seq: 0,
            next_tag: 1,
            created_ms: now_ms,
            updated_ms: now_ms,
            next_timer: 1,
            next_signal: 1,
            origin: Origin::Request,
            request: None,
            cancelling: None,
            traceparent: None,
            waiting: 0,
            timers: 0,
        };
        Workflow {
            net: Network::new(pack.clone()),
            pack,
            meta,
            waiting: BTreeMap::new(),
            waiting_by_fact: FxHashMap::default(),
            timers: BTreeMap::new(),
            fact_bytes: 0,
            turn: TurnState::default(),
            trace: None,
        }
    }

    /// Sets what started the workflow; call before its start turn.
    pub fn with_origin(mut self, origin: Origin) -> Workflow {
        self.meta.origin = origin;
        self
    }

    /// Sets the request id that starts the workflow; call before its start
    /// turn.
    pub fn with_request(mut self, request: String) -> Workflow {
        self.meta.request = Some(request);
        self
    }

    /// Sets the trace context the workflow is started in (kept in its
    /// meta); call before its start turn.
    pub fn with_traceparent(mut self, traceparent: Option<String>) -> Workflow {
        self.meta.traceparent = traceparent;
        self
    }

    /// The trace context that the invocations made by the next turns carry
    /// (the host's span of the turn); `None`: untraced.
    pub fn set_turn_trace(&mut self, traceparent: Option<String>) {
        self.trace = traceparent;
    }

    /// Rebuilds a workflow from its stored state. The state was committed at
    /// quiescence, so every match found now has already fired.
    pub fn restore(pack: Arc<Pack>, snap: Snapshot) -> Result<Workflow, String> {
        let mut wf = Workflow::new(snap.meta.id.clone(), pack, snap.meta.created_ms);
        wf.meta = snap.meta;
        let mut facts = snap.facts;
        facts.sort_by_key(|f| f.id);
        wf.rebuild(facts, &[]).map_err(|e| e.0)?;
        for w in snap.waiting {
            wf.index_waiting(&w);
            wf.waiting.insert(w.invocation.id.clone(), w);
        }
        wf.timers = snap.timers.into_iter().map(|t| (t.id, t)).collect();
        Ok(wf)
    }

    /// A network over `facts` in which every match has already fired, but
    /// those of the rules flagged in `fresh` (by index), which are scheduled.
    fn rebuild(&mut self, facts: Vec<Fact>, fresh: &[bool]) -> Result<(), TurnError> {
        let mut net = Network::new(self.pack.clone());
        if let Some(r) = self.net.take_reached() {
            // A pack upgrade renumbers rules: what was reached is dropped.
            net.track_reach(Some(r).filter(|r| r.len() == self.pack.rules.len()));
        }
        net.refract_all = true;
        net.fresh_rules = fresh.to_vec();
        net.prime()?;
        for f in facts {
            net.insert(f)?;
        }
        net.refract_all = false;
        net.fresh_rules = Vec::new();
        self.net = net;
        self.fact_bytes = self.net.facts().map(|f| FACT_BYTES + f.fields.heap_bytes()).sum();
        Ok(())
    }

    pub fn id(&self) -> &WorkflowId {
        &self.meta.id
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    pub fn pack(&self) -> &Arc<Pack> {
        &self.pack
    }

    pub fn status(&self) -> Status {
        self.meta.status
    }

    /// Facts in id order.
    pub fn facts(&self) -> Vec<&Fact> {
        let mut v: Vec<&Fact> = self.net.facts().collect();
        v.sort_by_key(|f| f.id);
        v
    }

    pub fn fact(&self, id: FactId) -> Option<&Fact> {
        self.net.fact(id)
    }

    pub fn fact_count(&self) -> usize {
        self.net.fact_count()
    }

    pub fn waiting(&self) -> impl Iterator<Item = &Waiting> {
        self.waiting.values()
    }

    /// Records, from now on, how far each rule's matching gets (for test
    /// coverage): see `reached`.
    pub fn track_reach(&mut self) {
        self.net.track_reach(None);
    }

    /// Per rule (by index), the most conditions a partial match has passed
    /// since `track_reach`, if on.
    pub fn reached(&self) -> Option<&[u16]> {
        self.net.reached()
    }

    /// Activations on the agenda, in firing order (rule index, matched
    /// facts): empty between turns, since committed state is quiescent.
    pub fn queued(&self) -> Vec<(usize, Vec<(FactId, u32)>)> {
        self.net.queued()
    }

    /// The activation waiting for `id`'s answer, if any.
    pub fn waiting_for(&self, id: &InvocationId) -> Option<&Waiting> {
        self.waiting.get(id)
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            meta: self.meta.clone(),
            facts: self.facts().into_iter().cloned().collect(),
            waiting: self.waiting.values().cloned().collect(),
            timers: self.timers.values().cloned().collect(),
        }
    }

    pub fn timers(&self) -> impl Iterator<Item = &Timer> {
        self.timers.values()
    }

    /// Every problem of every fact, not only the first: a client fixing
    /// its input learns all of them at once.
    fn validate(&self, facts: &[FactSpec]) -> Result<(), Rejected> {
        let mut problems = Vec::new();
        for (i, f) in facts.iter().enumerate() {
            if !stoa_rules::value::valid_type_name(&f.ty) {
                let (ty, rule) = (stoa_rules::diagnostic::shown(&f.ty), stoa_rules::sandbox::TYPE_NAME_RULE);
                problems.push((i, format!("type `{ty}`: {rule}")));
                continue;
            }
            for (k, _) in f.fields.iter().filter(|(k, _)| k.with_name(|n| n.starts_with('_'))) {
                problems.push((i, format!("field `{k}` starts with `_`, which is reserved")));
            }
            match self.pack.manifest.facts.get(&f.ty) {
                Some(schema) => problems.extend(schema.violations_new(&f.ty, &f.fields).into_iter().map(|e| (i, e))),
                None if self.strict_refuses(&f.ty) => problems.push((i, undeclared(&f.ty))),
                None => {}
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Rejected::InvalidFacts(InvalidFacts(problems)))
        }
    }

    /// Applies one input as a turn.
    pub fn apply(&mut self, input: Input, now_ms: u64) -> Result<TurnOutput, Rejected> {
        if self.meta.status != Status::Running {
            return Err(Rejected::NotRunning(self.meta.status.as_str()));
        }
        match &input {
            Input::Start { facts } | Input::Assert { facts } => self.validate(facts)?,
            Input::Retract { ids } => {
                if let Some(id) = ids.iter().find(|id| self.net.fact(**id).is_none()) {
                    return Err(Rejected::UnknownFact(*id));
                }
            }
            Input::Modify { id, .. } => {
                if self.net.fact(*id).is_none() {
                    return Err(Rejected::UnknownFact(*id));
                }
            }
            Input::Result { invocation, .. } => {
                if !self.waiting.contains_key(invocation) {
                    return Err(Rejected::UnknownInvocation(invocation.clone()));
                }
            }
            Input::Timers { ids } => {
                if ids.is_empty() {
                    return Err(Rejected::UnknownTimer(0));
                }
                if let Some(id) = ids.iter().find(|id| !self.timers.contains_key(id)) {
                    return Err(Rejected::UnknownTimer(*id));
                }
            }
            Input::Cancel { .. } => {
                if let Some(c) = &self.meta.cancelling {
                    return Err(Rejected::AlreadyCancelling(c.deadline_ms));
                }
            }
            Input::Terminate { .. } | Input::Signal { .. } => {}
        }
        let meta_before = self.begin_turn(now_ms, input.summary());
        let result = {
            let _deadline = budget::turn(self.pack.manifest.limits.max_turn_ms);
            self.run(input).and_then(|()| self.fire_all()).map(|()| self.settle_cancel())
        };
        let mut out = TurnOutput { turn: self.meta.turn, firings: self.turn.firings, ..TurnOutput::default() };
        match result {
            Ok(()) => self.committed(&mut out),
            Err(_) if budget::check_now() == Err(budget::Exceeded::Stopped) => {
                return Err(self.interrupted(meta_before))
            }
            Err(TurnError(error)) => {
                self.rollback(meta_before);
                let firings = self.turn.firings;
                let started = self.turn.entries.first().cloned();
                self.turn.entries.clear();
                self.meta.timeline_seq = started.as_ref().map(|e| e.seq - 1).unwrap_or(self.meta.timeline_seq);
                if let Some(s) = started {
                    self.record(s.event);
                }
                let mut fired: Vec<(String, u64)> = self
                    .turn
                    .fired_by_rule
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| **n > 0)
                    .map(|(r, n)| (self.pack.rules[r].name.clone(), *n))
                    .collect();
                fired.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                self.fail_turn(&mut out, error, firings, fired);
            }
        }
        Ok(self.end_turn(out, now_ms))
    }

    /// Fails the workflow in the turn under way, which commits nothing
    /// else: facts and waiting activations stay as they were; waiting
    /// invocations and timers are abandoned.
    fn fail_turn(&mut self, out: &mut TurnOutput, error: String, firings: u64, fired: Vec<(String, u64)>) {
        self.record(Event::TurnFailed { error: error.clone(), firings, fired });
        self.meta.status = Status::Failed;
        self.meta.reason = Some(error.clone());
        self.record(Event::Failed { reason: error.clone() });
        out.error = Some(error);
        self.turn.undo_facts.clear();
        self.turn.undo_waiting.clear();
        self.turn.invocations.clear();
        self.turn.cancelled.clear();
        self.turn.signals.clear();
        out.cancelled = self.waiting.keys().cloned().collect();
        let dues: BTreeSet<u64> = std::mem::take(&mut self.timers).values().map(|t| t.due_ms).collect();
        out.timer_groups = dues.into_iter().map(|due| (due, Vec::new())).collect();
    }

    /// Fails a running workflow from outside its rules, as a turn of its
    /// own (its host found it broken: a turn of it panicked). `None`: it is
    /// not running.
    pub fn abort(&mut self, reason: &str, now_ms: u64) -> Option<TurnOutput> {
        if self.meta.status != Status::Running {
            return None;
        }
        self.begin_turn(now_ms, "abort".into());
        let mut out = TurnOutput { turn: self.meta.turn, ..TurnOutput::default() };
        self.fail_turn(&mut out, reason.to_string(), 0, Vec::new());
        Some(self.end_turn(out, now_ms))
    }

    /// Undoes a turn its host stopped (not the workflow's doing): as if it
    /// never began.
    fn interrupted(&mut self, meta_before: Meta) -> Rejected {
        let seq = self.turn.entries.first().map(|e| e.seq - 1).unwrap_or(self.meta.timeline_seq);
        self.rollback(Meta { turn: meta_before.turn - 1, ..meta_before });
        self.meta.timeline_seq = seq;
        self.turn = TurnState::default();
        Rejected::Interrupted
    }

    /// Opens a turn; returns the metadata to restore if it is rolled back.
    fn begin_turn(&mut self, now_ms: u64, input: String) -> Meta {
        self.meta.turn += 1;
        self.turn = TurnState { now: now_ms, first_new: self.meta.next_fact_id, ..TurnState::default() };
        let before = self.meta.clone();
        self.record(Event::TurnStarted { input });
        before
    }

    fn committed(&mut self, out: &mut TurnOutput) {
        let firings = self.turn.firings;
        self.record(Event::TurnCommitted { firings });
        self.collect_delta(out);
    }

    /// Hands the turn's entries, invocations and signals to its output.
    fn end_turn(&mut self, mut out: TurnOutput, now_ms: u64) -> TurnOutput {
        self.meta.updated_ms = now_ms;
        self.meta.waiting = u32::try_from(self.waiting.len()).unwrap_or(u32::MAX);
        self.meta.timers = u32::try_from(self.timers.len()).unwrap_or(u32::MAX);
        out.entries = std::mem::take(&mut self.turn.entries);
        out.invocations = std::mem::take(&mut self.turn.invocations);
        out.cancelled.extend(std::mem::take(&mut self.turn.cancelled));
        out.signals = std::mem::take(&mut self.turn.signals);
        out.meta = Some(self.meta.clone());
        // What only the turn needed (the pre-turn copies of the facts it
        // touched, its firings by rule) is not kept until the next one.
        self.turn = TurnState::default();
        out
    }

    fn collect_delta(&mut self, out: &mut TurnOutput) {
        let mut ids: Vec<FactId> = self.turn.undo_facts.keys().copied().collect();
        ids.sort_unstable();
        let new = self.turn.first_new..self.meta.next_fact_id;
        out.facts_put.reserve(ids.len() + new.clone().count());
        for id in ids {
            match self.net.fact(id) {
                Some(f) => out.facts_put.push(f.clone()),
                None if self.turn.undo_facts[&id].is_some() => out.facts_deleted.push(id),
                None => {}
            }
        }
        out.facts_put.extend(new.filter_map(|id| self.net.fact(id).cloned()));
        let mut invs: Vec<InvocationId> = self.turn.undo_waiting.keys().cloned().collect();
        invs.sort();
        for inv in invs {
            match self.waiting.get(&inv) {
                Some(w) => out.waiting_put.push(w.clone()),
                None if self.turn.undo_waiting[&inv].is_some() => out.waiting_deleted.push(inv),
                None => {}
            }
        }
        let mut timers: Vec<u64> = self.turn.undo_timers.keys().copied().collect();
        timers.sort_unstable();
        let mut dues = BTreeSet::new();
        for id in timers {
            if let Some(t) = self.timers.get(&id) {
                dues.insert(t.due_ms);
                out.timers_put.push(t.clone());
            }
            if let Some(Some(before)) = self.turn.undo_timers.get(&id) {
                dues.insert(before.due_ms);
            }
        }
        if !dues.is_empty() {
            let mut groups: BTreeMap<u64, Vec<Timer>> = dues.into_iter().map(|d| (d, Vec::new())).collect();
            for t in self.timers.values() {
                if let Some(g) = groups.get_mut(&t.due_ms) {
                    g.push(t.clone());
                }
            }
            out.timer_groups = groups.into_iter().collect();
        }
    }

    fn rollback(&mut self, meta_before: Meta) {
        let first_new = self.turn.first_new;
        let mut facts: FxHashMap<FactId, Fact> =
            self.net.facts().filter(|f| f.id < first_new).map(|f| (f.id, f.clone())).collect();
        for (id, before) in self.turn.undo_facts.drain() {
            match before {
                Some(f) => facts.insert(id, f),
                None => facts.remove(&id),
            };
        }
        let mut facts: Vec<Fact> = facts.into_values().collect();
        facts.sort_by_key(|f| f.id);
        for (inv, before) in std::mem::take(&mut self.turn.undo_waiting) {
            match before {
                Some(w) => {
                    self.waiting.insert(inv, w);
                }
                None => {
                    self.waiting.remove(&inv);
                }
            }
        }
        for (id, before) in std::mem::take(&mut self.turn.undo_timers) {
            match before {
                Some(t) => {
                    self.timers.insert(id, t);
                }
                None => {
                    self.timers.remove(&id);
                }
            }
        }
        self.waiting_by_fact.clear();
        let ws: Vec<Waiting> = self.waiting.values().cloned().collect();
        for w in &ws {
            self.index_waiting(w);
        }
        let seq = self.meta.timeline_seq;
        self.meta = Meta { timeline_seq: seq, ..meta_before };
        // The pre-turn state was quiescent and valid, so rebuilding cannot fail.
        let _ = self.rebuild(facts, &[]);
    }

    fn record(&mut self, event: Event) {
        self.meta.timeline_seq += 1;
        self.turn.entries.push(Entry {
            seq: self.meta.timeline_seq,
            turn: self.meta.turn,
            at_ms: self.turn.now,
            at_us: 0,
            event,
        });
    }

    fn run(&mut self, input: Input) -> Result<(), TurnError> {
        match input {
            Input::Start { facts } => {
                self.net.prime()?;
                self.reserve(facts.len());
                for f in facts {
                    self.insert_new(f.sym(), f.fields)?;
                }
            }
            Input::Assert { facts } => {
                self.reserve(facts.len());
                for f in facts {
                    self.insert_new(f.sym(), f.fields)?;
                }
            }
            Input::Retract { ids } => {
                for id in ids {
                    self.retract(id, "retracted by request")?;
                }
            }
            Input::Modify { id, fields } => self.modify(id, fields)?,
            Input::Result { invocation, outcome } => self.apply_result(invocation, outcome)?,
            Input::Cancel { reason, grace_ms } => self.cancel(reason, grace_ms.unwrap_or(DEFAULT_CANCEL_GRACE_MS))?,
            Input::Terminate { reason } => {
                self.finish(Status::Cancelled, Value::Null, Some(format!("terminated: {reason}")));
            }
            Input::Timers { mut ids } => {
                ids.sort_unstable();
                ids.dedup();
                for id in ids {
                    let (ty, fields) = self.take_timer(id).expect("checked in apply");
                    self.record(Event::TimerFired { id, ty });
                    match &self.meta.cancelling {
                        Some(c) if c.deadline_timer == id => {
                            let reason = format!("cancelled: {} (its cleanup did not end in time)", c.reason);
                            self.finish(Status::Cancelled, Value::Null, Some(reason));
                            break;
                        }
                        _ => {
                            self.insert_new(ty, fields)?;
                        }
                    }
                }
            }
            Input::Signal { signal } => {
                let f = signal.fact();
                self.insert_new(f.sym(), f.fields)?;
            }
        }
        Ok(())
    }

    /// Room for `n` new facts in one turn: growing large tables by doubling
    /// touches (and, once freed, gives back and faults again) about twice
    /// their final memory.
    fn reserve(&mut self, n: usize) {
        self.net.reserve(n);
        self.turn.entries.reserve(n + 2);
    }

    fn fire_all(&mut self) -> Result<(), TurnError> {
        let limit = self.pack.manifest.limits.max_firings_per_turn;
        while self.meta.status == Status::Running {
            let Some(act) = self.net.pop() else { break };
            self.turn.firings += 1;
            if self.turn.fired_by_rule.len() <= act.rule {
                // Up to the rule that fired: a turn of a large pack that
                // fires a few rules counts a few.
                self.turn.fired_by_rule.resize(act.rule + 1, 0);
            }
            self.turn.fired_by_rule[act.rule] += 1;
            self.check_budget()?;
            if self.turn.firings > limit {
                return Err(TurnError(format!(
                    "the turn exceeded {limit} firings (limit `max_firings_per_turn`); last rule: \"{}\"",
                    self.pack.rules[act.rule].name
                )));
            }
            let pack = self.pack.clone();
            let rule = &pack.rules[act.rule];
            let bindings: Vec<Binding> = self
                .net
                .bindings(act.token)
                .into_iter()
                .map(|b| match b {
                    Bound::Fact(f) => Binding::Fact(f),
                    Bound::Value(v) => Binding::Value(v),
                    Bound::Unbound => Binding::Unbound,
                })
                .collect();
            let matched = self.net.matched_facts(act.token);
            self.record(Event::Fired { rule: rule.name.clone(), section: SectionKind::Action, facts: matched.clone() });
            if let Some(section) = &rule.action {
                match section.native.as_deref().and_then(|n| self.native_effects(n, &bindings)) {
                    Some(effects) => self.apply_section(rule, effects, &bindings, &matched)?,
                    None => {
                        let values = self.script_values(rule, &bindings, None);
                        self.run_section(rule, section, SectionKind::Action, values, &bindings, &matched)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The effects of a native action, or `None` to run its script instead
    /// (see `stoa_rules::native`): a bound fact is gone, an operation fails,
    /// or a value passes a sandbox limit.
    fn native_effects(&self, action: &NativeAction, bindings: &[Binding]) -> Option<Vec<Effect>> {
        let env = BindingEnv { net: &self.net, bindings };
        if bindings.iter().any(|b| matches!(b, Binding::Fact(id) if self.net.fact(*id).is_none())) {
            return None;
        }
        let limits = &self.pack.manifest.limits;
        let fields = |entries: &[(Sym, NativeExpr)]| -> Option<Fields> {
            let mut out = Fields::new();
            for (k, e) in entries {
                let v = e.eval(&env).ok()?;
                match &v {
                    Value::Str(s) if s.len() > limits.max_string_size => return None,
                    Value::Array(a) if a.len() > limits.max_array_size => return None,
                    _ => {}
                }
                out.set(*k, v);
            }
            Some(out)
        };
        let fact_id = |slot: usize| match bindings.get(slot) {
            Some(Binding::Fact(id)) => Some(*id),
            _ => None,
        };
        let mut next = self.meta.next_fact_id;
        let mut effects = Vec::with_capacity(action.steps.len());
        for step in &action.steps {
            effects.push(match step {
                Step::Insert { ty, fields: f } => {
                    next += 1;
                    Effect::Insert { id: next - 1, ty: *ty, fields: fields(f)? }
                }
                Step::Modify { slot, changes } => Effect::Modify { id: fact_id(*slot)?, changes: fields(changes)? },
                Step::Retract { slot } => Effect::Retract { id: fact_id(*slot)? },
            });
        }
        Some(effects)
    }

    fn script_values(&self, rule: &Rule, bindings: &[Binding], extra: Option<(Value, Value)>) -> Vec<ScriptValue> {
        let mut values: Vec<ScriptValue> = rule
            .script_slots()
            .map(|(slot, _)| match &bindings[slot] {
                Binding::Fact(id) => match self.net.fact(*id) {
                    Some(f) => ScriptValue::fact(f.id, f.ty, &f.fields),
                    None => ScriptValue::value(&Value::Null),
                },
                Binding::Value(v) => ScriptValue::value(v),
                Binding::Unbound => ScriptValue::value(&Value::Null),
            })
            .collect();
        if let Some((a, b)) = extra {
            values.push(ScriptValue::value(&a));
            values.push(ScriptValue::value(&b));
        }
        values
    }

    fn run_section(
        &mut self,
        rule: &Rule,
        section: &Section,
        kind: SectionKind,
        values: Vec<ScriptValue>,
        bindings: &[Binding],
        matched: &[(FactId, u32)],
    ) -> Result<(), TurnError> {
        let next = NextIds { fact: self.meta.next_fact_id, timer: self.meta.next_timer };
        let effects = self.pack.sandbox.run(&section.script, values, next).map_err(|e| {
            let at = e
                .pos
                .map(|p| {
                    let line = section.pos.line + p.line - 1;
                    let col = if p.line == 1 { section.pos.col + p.col - 1 } else { p.col };
                    format!(" at {}:{line}:{col}", section.file.display())
                })
                .unwrap_or_default();
            TurnError(format!("rule \"{}\" {}{at}: {}", rule.name, kind.as_str(), e.message))
        })?;
        self.apply_section(rule, effects, bindings, matched)
    }

    /// The facts that an effect after the first surely retracts: a `retract`,
    /// or a `modify` that changes the fact, when no other effect touches the
    /// fact (so the change is known before any is applied). See
    /// `Network::doom`.
    fn doomed_by(&self, effects: &[Effect]) -> Vec<FactId> {
        let touched = |e: &Effect| match e {
            Effect::Modify { id, .. } | Effect::Retract { id } => Some(*id),
            _ => None,
        };
        // Only effects on facts build matches.
        let Some(first) = effects.iter().position(|e| touched(e).is_some() || matches!(e, Effect::Insert { .. }))
        else {
            return Vec::new();
        };
        let mut times: FxHashMap<FactId, u32> = FxHashMap::default();
        for id in effects.iter().filter_map(touched) {
            *times.entry(id).or_default() += 1;
        }
        effects[first + 1..]
            .iter()
            .filter_map(|e| {
                let id = touched(e)?;
                let sure = times[&id] == 1
                    && match (e, self.net.fact(id)) {
                        (Effect::Modify { changes, .. }, Some(f)) => {
                            changes.iter().any(|(k, v)| changes_field(&f.fields, k, v))
                        }
                        (_, f) => f.is_some(),
                    };
                sure.then_some(id)
            })
            .collect()
    }

    /// Applies a section's effects (under the rule's `no-loop`).
    fn apply_section(
        &mut self,
        rule: &Rule,
        effects: Vec<Effect>,
        bindings: &[Binding],
        matched: &[(FactId, u32)],
    ) -> Result<(), TurnError> {
        if rule.no_loop {
            let mut ids: Vec<FactId> = matched.iter().map(|m| m.0).collect();
            ids.sort_unstable();
            self.net.suppress = Some((rule.index, ids));
        }
        let doomed = self.doomed_by(&effects);
        if !doomed.is_empty() {
            self.net.doom(&doomed);
        }
        let res = self.apply_effects(rule, effects, bindings, matched);
        self.net.suppress = None;
        if !doomed.is_empty() {
            self.net.undoom();
        }
        res.map_err(|TurnError(e)| TurnError(format!("rule \"{}\": {e}", rule.name)))
    }

    fn apply_effects(
        &mut self,
        rule: &Rule,
        effects: Vec<Effect>,
        bindings: &[Binding],
        matched: &[(FactId, u32)],
    ) -> Result<(), TurnError> {
        for e in effects {
            match e {
                Effect::Insert { id, ty, fields } => {
                    debug_assert_eq!(id, self.meta.next_fact_id);
                    self.insert_new(ty, fields)?;
                }
                Effect::Modify { id, changes } => self.modify(id, changes)?,
                Effect::Retract { id } => {
                    if self.net.fact(id).is_none() {
                        return Err(TurnError(format!("retract: fact f{id} does not exist")));
                    }
                    self.retract(id, &format!("rule \"{}\" retracted a fact it bound", rule.name))?;
                }
                Effect::Call { function, args, options } => {
                    let Some(spec) = self.pack.manifest.functions.get(&function) else {
                        return Err(TurnError(format!("call: function `{function}` is not declared in pack.toml")));
                    };
                    let args = match &spec.args {
                        Some(schema) => checked_args(&function, schema, args)?,
                        None => args,
                    };
                    let (timeout, heartbeat, retry) = (spec.timeout, spec.heartbeat, spec.retry.clone());
                    let concurrency = spec.concurrency;
                    let options = CallOptions {
                        timeout_ms: Some(options.timeout_ms.unwrap_or(timeout.as_millis() as u64)),
                        ..options
                    };
                    let limits = (heartbeat.as_millis() as u64, retry, concurrency);
                    self.invoke(rule, function, args, options, limits, bindings, matched);
                }
                Effect::StartChild { pack, facts, options } => {
                    let mut ancestry = match &self.meta.origin {
                        Origin::Parent { ancestry, .. } => ancestry.clone(),
                        _ => Vec::new(),
                    };
                    ancestry.push(self.meta.pack.clone());
                    if ancestry.contains(&pack) {
                        return Err(TurnError(format!(
                            "start_workflow: start cycle {} -> {pack}: a pack may not start itself, directly or through others",
                            ancestry.join(" -> ")
                        )));
                    }
                    if ancestry.len() >= MAX_CHILD_DEPTH {
                        return Err(TurnError(format!(
                            "start_workflow: workflows nest at most {MAX_CHILD_DEPTH} deep ({} -> {pack})",
                            ancestry.join(" -> ")
                        )));
                    }
                    let mut args = BTreeMap::new();
                    args.insert(Arc::from("facts"), facts);
                    args.insert(
                        Arc::from("ancestry"),
                        Value::Array(Arc::new(ancestry.iter().map(|p| Value::str(p)).collect())),
                    );
                    let args = Value::Map(Arc::new(args));
                    // A child is started once; its own rules handle its failures.
                    let retry = RetryPolicy { max_attempts: 1, ..RetryPolicy::default() };
                    self.invoke(
                        rule,
                        format!("{CHILD_PREFIX}{pack}"),
                        args,
                        options,
                        (0, retry, None),
                        bindings,
                        matched,
                    );
                }
                Effect::Timer { id, due, ty, fields } => {
                    debug_assert_eq!(id, self.meta.next_timer);
                    self.meta.next_timer += 1;
                    let due_ms = match due {
                        Due::After(ms) => self.turn.now.saturating_add(ms),
                        Due::At(ms) => ms,
                    };
                    // Checked as the fact it becomes (defaults filled when it fires).
                    let mut new = fields.clone();
                    self.with_defaults(ty, &mut new);
                    self.check_schema(ty, &new)?;
                    self.record(Event::TimerSet { id, due_ms, ty, rule: rule.name.clone() });
                    let t = Timer { workflow: self.meta.id.clone(), id, due_ms, ty, fields, rule: rule.name.clone() };
                    self.turn.undo_timers.entry(id).or_insert(None);
                    self.timers.insert(id, t);
                }
                Effect::CancelTimer { id } => {
                    // Cancelling a timer that already fired is a normal race: no error.
                    if self.take_timer(id).is_some() {
                        self.record(Event::TimerCancelled { id, rule: rule.name.clone() });
                    }
                }
                Effect::Emit { name, payload } => {
                    let id = format!("{}/s{}", self.meta.id, self.meta.next_signal);
                    self.meta.next_signal += 1;
                    self.record(Event::SignalEmitted(Box::new(timeline::SignalEmitted {
                        signal: id.clone(),
                        name: name.clone(),
                        payload: payload.clone(),
                    })));
                    let from = Some(self.meta.id.clone());
                    self.turn.signals.push(Signal { id, name, payload, from, at_ms: self.turn.now });
                }
                Effect::Complete { result } => self.finish(Status::Completed, result, None),
                Effect::Fail { reason } => self.finish(Status::Failed, Value::Null, Some(reason)),
                Effect::Log { message } => self.record(Event::Log { rule: rule.name.clone(), message }),
            }
            if self.net.fact_count() > self.pack.manifest.limits.max_facts {
                return Err(TurnError(format!(
                    "the workflow exceeded {} facts (limit `max_facts`)",
                    self.pack.manifest.limits.max_facts
                )));
            }
        }
        Ok(())
    }

    /// Estimated heap bytes of the workflow in the middle of a turn: its
    /// facts and their values, its partial matches, the turn's timeline.
    /// An estimate from counters kept as facts change, cheap enough to
    /// read at every firing.
    pub fn memory_estimate(&self) -> usize {
        self.fact_bytes
            + self.net.token_slots() * TOKEN_BYTES
            + self.turn.entries.len() * std::mem::size_of::<Entry>()
            + self.turn.entry_bytes
    }

    /// Ends the turn if it ran past its time or memory budget.
    fn check_budget(&self) -> Result<(), TurnError> {
        budget::check()?;
        let max_mb = self.pack.manifest.limits.max_memory_mb;
        let used = self.memory_estimate();
        if used as u64 > max_mb.saturating_mul(1 << 20) {
            return Err(TurnError(format!(
                "the workflow took more than its memory budget of {max_mb} MiB (limit `max_memory_mb`; {} facts, about {} MiB)",
                self.net.fact_count(),
                used >> 20
            )));
        }
        Ok(())
    }

    fn finish(&mut self, status: Status, result: Value, reason: Option<String>) {
        if self.meta.status != Status::Running {
            return;
        }
        // A cleanup that completes the workflow ends its cancellation.
        let (status, reason) = match (status, self.meta.cancelling.take()) {
            (Status::Completed, Some(c)) => (Status::Cancelled, Some(format!("cancelled: {}", c.reason))),
            (s, _) => (s, reason),
        };
        self.meta.status = status;
        match status {
            Status::Completed => self.record(Event::Completed { result: result.clone() }),
            Status::Cancelled => self.record(Event::Cancelled { reason: reason.clone().unwrap_or_default() }),
            _ => self.record(Event::Failed { reason: reason.clone().unwrap_or_default() }),
        }
        self.meta.result = result;
        self.meta.reason = reason;
        let timers: Vec<u64> = self.timers.keys().copied().collect();
        for id in timers {
            self.take_timer(id);
        }
        let pending: Vec<InvocationId> = self.waiting.keys().cloned().collect();
        for inv in pending {
            self.take_waiting(&inv);
            self.turn.cancelled.push(inv.clone());
            self.record(Event::InvocationCancelled {
                invocation: inv,
                reason: format!("workflow {}", status.as_str()),
            });
        }
    }

    /// Starts a cancellation (see `Input::Cancel`).
    fn cancel(&mut self, reason: String, grace_ms: u64) -> Result<(), TurnError> {
        let cancelled = Sym::new(CANCELLED_TYPE);
        let reacts = self.pack.rules.iter().any(|r| {
            r.conditions.iter().any(|c| match c {
                Condition::Pattern { pattern, .. } | Condition::Aggregate { pattern, .. } => pattern.ty == cancelled,
                Condition::Not(p) | Condition::Exists(p) => p.ty == cancelled,
                Condition::Test(_) => false,
            })
        });
        if !reacts {
            self.finish(Status::Cancelled, Value::Null, Some(format!("cancelled: {reason}")));
            return Ok(());
        }
        // What the workflow waited for is no longer wanted: its reactions
        // would run on a workflow that is going away.
        let pending: Vec<InvocationId> = self.waiting.keys().cloned().collect();
        for inv in pending {
            self.take_waiting(&inv);
            self.turn.cancelled.push(inv.clone());
            self.record(Event::InvocationCancelled { invocation: inv, reason: "workflow cancelling".into() });
        }
        let timers: Vec<u64> = self.timers.keys().copied().collect();
        for id in timers {
            self.take_timer(id);
            self.record(Event::TimerCancelled { id, rule: "(cancel)".into() });
        }
        let id = self.meta.next_timer;
        self.meta.next_timer += 1;
        let due_ms = self.turn.now.saturating_add(grace_ms);
        self.record(Event::TimerSet { id, due_ms, ty: cancelled, rule: CANCEL_DEADLINE.into() });
        let t = Timer {
            workflow: self.meta.id.clone(),
            id,
            due_ms,
            ty: cancelled,
            fields: Fields::new(),
            rule: CANCEL_DEADLINE.into(),
        };
        self.turn.undo_timers.entry(id).or_insert(None);
        self.timers.insert(id, t);
        self.meta.cancelling = Some(Cancelling { reason: reason.clone(), deadline_ms: due_ms, deadline_timer: id });
        let mut fields = Fields::new();
        fields.set(Sym::new("reason"), Value::str(&reason));
        fields.set(Sym::new("deadline"), Value::Int(due_ms as i64));
        self.insert_new(cancelled, fields)?;
        Ok(())
    }

    /// Ends a cancellation whose cleanup has nothing left to wait for: no
    /// invocation, no timer but the deadline.
    fn settle_cancel(&mut self) {
        let Some(c) = &self.meta.cancelling else { return };
        if self.meta.status != Status::Running
            || !self.waiting.is_empty()
            || self.timers.keys().any(|id| *id != c.deadline_timer)
        {
            return;
        }
        let reason = format!("cancelled: {}", c.reason);
        self.finish(Status::Cancelled, Value::Null, Some(reason));
    }

    fn touch_fact(&mut self, id: FactId) {
        if id < self.turn.first_new && !self.turn.undo_facts.contains_key(&id) {
            let before = self.net.fact(id).cloned();
            self.turn.undo_facts.insert(id, before);
        }
    }

    fn check_schema(&self, ty: Sym, fields: &Fields) -> Result<(), TurnError> {
        if self.pack.manifest.facts.is_empty() {
            return Ok(());
        }
        match self.pack.manifest.facts.get(&*ty.name()) {
            Some(schema) => schema.check(&ty.name(), fields).map_err(TurnError),
            None if self.strict_refuses(&ty.name()) => Err(TurnError(undeclared(&ty.name()))),
            None => Ok(()),
        }
    }

    /// Whether strict mode (`[facts] strict = true`) refuses a fact of a
    /// type without a schema.
    fn strict_refuses(&self, ty: &str) -> bool {
        self.pack.manifest.strict_facts && !stoa_rules::manifest::BUILTIN_TYPES.contains(&ty)
    }

    /// A new fact of a declared type, its defaults filled in.
    fn with_defaults(&self, ty: Sym, fields: &mut Fields) {
        if let Some(schema) = self.pack.manifest.facts.get(&*ty.name()) {
            schema.fill_defaults(fields);
        }
    }

    fn next_tag(&mut self) -> u64 {
        self.meta.next_tag += 1;
        self.meta.next_tag
    }

    fn insert_new(&mut self, ty: Sym, mut fields: Fields) -> Result<FactId, TurnError> {
        self.with_defaults(ty, &mut fields);
        self.check_schema(ty, &fields)?;
        let id = self.meta.next_fact_id;
        self.meta.next_fact_id += 1;
        self.touch_fact(id);
        let bytes = fields.heap_bytes();
        self.fact_bytes += FACT_BYTES + bytes;
        self.turn.entry_bytes += bytes;
        self.record(Event::Inserted { id, ty, fields: (&fields).into() });
        let tag = self.next_tag();
        self.net.insert(Fact { id, ty, version: 1, fields, tag })?;
        self.check_budget()?;
        Ok(id)
    }

    /// Renames the fields the move from `before`'s schemas to this pack's
    /// renames (`from` in either), in every fact that holds the old name,
    /// as a `modify`: rules that match the new name see the facts change.
    fn rename_fields(&mut self, before: &stoa_rules::manifest::Manifest) -> Result<(), TurnError> {
        let pack = self.pack.clone();
        for (ty, new) in &pack.manifest.facts {
            let Some(old) = before.facts.get(ty) else { continue };
            for (a, b) in stoa_rules::manifest::renames(old, new) {
                let (ka, kb) = (Sym::new(&a), Sym::new(&b));
                let held: Vec<(FactId, Value)> = self
                    .facts()
                    .into_iter()
                    .filter(|f| &*f.ty.name() == ty && f.fields.get(kb).is_none())
                    .filter_map(|f| Some((f.id, f.fields.get(ka)?.clone())))
                    .collect();
                for (id, v) in held {
                    let mut change = Fields::new();
                    change.set(kb, v);
                    change.set(ka, Value::Null);
                    self.modify(id, change)?;
                }
            }
        }
        Ok(())
    }

    fn modify(&mut self, id: FactId, changes: Fields) -> Result<(), TurnError> {
        let Some(old) = self.net.fact(id).cloned() else {
            return Err(TurnError(format!("modify: fact f{id} does not exist (was it retracted?)")));
        };
        let mut fields = old.fields.clone();
        let (mut before, mut after) = (Fields::new(), Fields::new());
        for (k, v) in changes.iter() {
            if !changes_field(&old.fields, k, v) {
                continue;
            }
            let prev = old.fields.get(k).cloned().unwrap_or(Value::Null);
            before.set(k, prev);
            after.set(k, v.clone());
            if matches!(v, Value::Null) {
                fields.remove(k);
            } else {
                fields.set(k, v.clone());
            }
        }
        if after.is_empty() {
            return Ok(()); // nothing changed: no new version, nothing re-activates
        }
        // A fact made before its schema gained a defaulted field (under an
        // older version) gets the default with its first change, as a new
        // fact would have.
        if let Some(schema) = self.pack.manifest.facts.get(&*old.ty.name()) {
            for (name, spec) in &schema.fields {
                let k = Sym::new(name);
                if let (Some(d), None) = (&spec.default, fields.get(k)) {
                    before.set(k, Value::Null);
                    after.set(k, d.clone());
                    fields.set(k, d.clone());
                }
            }
        }
        match self.pack.manifest.facts.get(&*old.ty.name()) {
            Some(schema) => schema.check_modified(&old.ty.name(), &fields, &old.fields).map_err(TurnError)?,
            None => self.check_schema(old.ty, &fields)?,
        }
        self.touch_fact(id);
        let version = old.version + 1;
        self.fact_bytes = (self.fact_bytes + fields.heap_bytes()).saturating_sub(old.fields.heap_bytes());
        self.turn.entry_bytes += before.heap_bytes() + after.heap_bytes();
        self.record(Event::Modified { id, ty: old.ty, version, before: before.into(), after: after.into() });
        let tag = self.next_tag();
        self.net.modify(Fact { id, ty: old.ty, version, fields, tag })?;
        self.check_budget()?;
        Ok(())
    }

    fn retract(&mut self, id: FactId, reason: &str) -> Result<(), TurnError> {
        self.touch_fact(id);
        if let Some(f) = self.net.retract(id)? {
            self.fact_bytes = self.fact_bytes.saturating_sub(FACT_BYTES + f.fields.heap_bytes());
            self.record(Event::Retracted { id, ty: f.ty, version: f.version });
        }
        // Activations waiting on this fact lose their purpose.
        if let Some(invs) = self.waiting_by_fact.get(&id).cloned() {
            for inv in invs {
                if self.take_waiting(&inv).is_some() {
                    self.turn.cancelled.push(inv.clone());
                    self.record(Event::InvocationCancelled {
                        invocation: inv,
                        reason: format!("fact f{id} it waited on was retracted ({reason})"),
                    });
                }
            }
        }
        Ok(())
    }

    fn index_waiting(&mut self, w: &Waiting) {
        for b in &w.bindings {
            if let Binding::Fact(f) = b {
                self.waiting_by_fact.entry(*f).or_default().push(w.invocation.id.clone());
            }
        }
    }

    fn put_waiting(&mut self, w: Waiting) {
        let id = w.invocation.id.clone();
        self.turn.undo_waiting.entry(id.clone()).or_insert(None);
        self.index_waiting(&w);
        self.waiting.insert(id, w);
    }

    /// Removes a timer (kept for a rollback); its fact's type and fields.
    fn take_timer(&mut self, id: u64) -> Option<(Sym, Fields)> {
        let t = self.timers.remove(&id)?;
        let fact = (t.ty, t.fields.clone());
        self.turn.undo_timers.entry(id).or_insert(Some(t));
        Some(fact)
    }

    /// Makes an invocation and the activation that waits for its answer.
    #[allow(clippy::too_many_arguments)]
    fn invoke(
        &mut self,
        rule: &Rule,
        function: String,
        args: Value,
        options: CallOptions,
        (heartbeat_ms, retry, concurrency): (u64, RetryPolicy, Option<u32>),
        bindings: &[Binding],
        matched: &[(FactId, u32)],
    ) {
        let id = InvocationId::of(&self.meta.id, self.meta.next_invocation);
        self.meta.next_invocation += 1;
        let inv = Invocation {
            id: id.clone(),
            workflow: self.meta.id.clone(),
            function: function.clone(),
            args: args.clone(),
            priority: options.priority,
            timeout_ms: options.timeout_ms.unwrap_or(0),
            heartbeat_ms,
            retry,
            rule: rule.name.clone(),
            created_ms: self.turn.now,
            traceparent: self.trace.clone(),
            concurrency,
        };
        self.record(Event::Invoked(Box::new(timeline::Invoked {
            invocation: id,
            function,
            args,
            priority: options.priority,
            rule: rule.name.clone(),
        })));
        let w = Waiting {
            invocation: inv.clone(),
            rule: rule.name.clone(),
            bindings: bindings.to_vec(),
            matched: matched.to_vec(),
        };
        self.put_waiting(w);
        self.turn.invocations.push(inv);
    }

    fn take_waiting(&mut self, inv: &InvocationId) -> Option<Waiting> {
        let w = self.waiting.remove(inv)?;
        self.turn.undo_waiting.entry(inv.clone()).or_insert_with(|| Some(w.clone()));
        for b in &w.bindings {
            if let Binding::Fact(f) = b {
                if let Some(v) = self.waiting_by_fact.get_mut(f) {
                    v.retain(|i| i != inv);
                    if v.is_empty() {
                        self.waiting_by_fact.remove(f);
                    }
                }
            }
        }
        Some(w)
    }

    /// What a change of pack does to rules: by name, which are new, which
    /// changed (same name, other identity) and which are gone.
    pub fn rule_changes(old: &Pack, new: &Pack) -> RuleChanges {
        let old_by_name: FxHashMap<&str, u64> = old.rules.iter().map(|r| (r.name.as_str(), r.identity)).collect();
        let new_names: rustc_hash::FxHashSet<&str> = new.rules.iter().map(|r| r.name.as_str()).collect();
        let mut c = RuleChanges::default();
        for r in &new.rules {
            match old_by_name.get(r.name.as_str()) {
                None => c.added.push(r.name.clone()),
                Some(id) if *id != r.identity => c.changed.push(r.name.clone()),
                Some(_) => {}
            }
        }
        c.removed = old.rules.iter().filter(|r| !new_names.contains(r.name.as_str())).map(|r| r.name.clone()).collect();
        c
    }

    /// Activations an upgrade to `pack` would schedule at once, by rule
    /// (what they then cause is not counted). Changes nothing.
    pub fn upgrade_preview(&self, pack: &Arc<Pack>) -> Result<BTreeMap<String, u64>, String> {
        self.upgrade_preview_by(&UpgradePlan::between(&self.pack, pack))
    }

    /// `upgrade_preview` with a plan made once for many workflows.
    pub fn upgrade_preview_by(&self, plan: &UpgradePlan) -> Result<BTreeMap<String, u64>, String> {
        let pack = &plan.to;
        let mut net = Network::new(pack.clone());
        net.refract_all = true;
        net.fresh_rules = plan.fresh_for(&self.pack);
        net.prime().map_err(|e| e.to_string())?;
        for f in self.facts() {
            net.insert(f.clone()).map_err(|e| e.to_string())?;
        }
        let mut out = BTreeMap::new();
        for (rule, n) in net.agenda_by_rule().into_iter().enumerate() {
            if n > 0 {
                out.insert(pack.rules[rule].name.clone(), n);
            }
        }
        Ok(out)
    }

    /// Moves the workflow to another version of its pack, as a turn: rules
    /// whose identity (name and text) is unknown to the current version fire
    /// on the facts as they are; unchanged rules do not fire again. Waiting
    /// activations of a removed rule are cancelled; those of a changed rule
    /// get the new version's `reaction`/`error`. If the turn fails it is
    /// rolled back and the workflow stays, running, on its version.
    pub fn upgrade(&mut self, pack: Arc<Pack>, now_ms: u64) -> Result<TurnOutput, Rejected> {
        self.upgrade_by(&UpgradePlan::between(&self.pack, &pack), now_ms)
    }

    /// `upgrade` with a plan made once for the many workflows an upgrade
    /// moves (at 50,000 rules, comparing them costs more than the turn).
    pub fn upgrade_by(&mut self, plan: &UpgradePlan, now_ms: u64) -> Result<TurnOutput, Rejected> {
        if self.meta.status != Status::Running {
            return Err(Rejected::NotRunning(self.meta.status.as_str()));
        }
        let pack = plan.to.clone();
        let (from, to) = (self.meta.pack_version.clone(), pack.manifest.version.clone());
        let meta_before = self.begin_turn(now_ms, format!("upgrade {} {from} -> {to}", pack.manifest.name));
        let owned;
        let changes = match plan.from == self.pack.digest {
            true => &plan.changes,
            false => {
                owned = Self::rule_changes(&self.pack, &pack);
                &owned
            }
        };
        let few = |names: &[String]| {
            let mut v: Vec<String> = names.iter().take(MAX_NAMES_SHOWN).cloned().collect();
            if names.len() > MAX_NAMES_SHOWN {
                v.push(format!("(and {} more)", names.len() - MAX_NAMES_SHOWN));
            }
            v
        };
        self.record(Event::Upgraded(Box::new(timeline::Upgraded {
            from: from.clone(),
            to: to.clone(),
            added: few(&changes.added),
            changed: few(&changes.changed),
            removed: few(&changes.removed),
        })));
        let old_pack = std::mem::replace(&mut self.pack, pack.clone());
        let _deadline = budget::turn(pack.manifest.limits.max_turn_ms);
        let result = (|| {
            let removed: rustc_hash::FxHashSet<&str> = changes.removed.iter().map(String::as_str).collect();
            let orphans: Vec<InvocationId> = self
                .waiting
                .values()
                .filter(|w| removed.contains(w.rule.as_str()))
                .map(|w| w.invocation.id.clone())
                .collect();
            for inv in orphans {
                let w = self.take_waiting(&inv).expect("listed above");
                self.turn.cancelled.push(inv.clone());
                self.record(Event::InvocationCancelled {
                    invocation: inv,
                    reason: format!("rule \"{}\" is not in version {to}", w.rule),
                });
            }
            let facts: Vec<Fact> = self.facts().into_iter().cloned().collect();
            let fresh = plan.fresh_for(&old_pack);
            self.rebuild(facts, &fresh)?;
            self.meta.pack_version = to.clone();
            self.rename_fields(&old_pack.manifest)?;
            self.fire_all()
        })();
        let mut out = TurnOutput { turn: self.meta.turn, firings: self.turn.firings, ..TurnOutput::default() };
        match result {
            Ok(()) => self.committed(&mut out),
            Err(_) if budget::check_now() == Err(budget::Exceeded::Stopped) => {
                self.pack = old_pack;
                return Err(self.interrupted(meta_before));
            }
            Err(TurnError(error)) => {
                self.pack = old_pack;
                self.rollback(meta_before);
                self.turn.entries.retain(|e| matches!(e.event, Event::TurnStarted { .. } | Event::Upgraded(_)));
                self.meta.timeline_seq = self.turn.entries.last().map(|e| e.seq).unwrap_or(self.meta.timeline_seq);
                self.record(Event::UpgradeFailed { to: to.clone(), error: error.clone() });
                self.turn.invocations.clear();
                self.turn.cancelled.clear();
                self.turn.signals.clear();
                out.error = Some(error);
            }
        }
        Ok(self.end_turn(out, now_ms))
    }
}

/// Rule names an upgrade entry lists at most, per list: the timeline of
/// every workflow an upgrade moves holds it.
const MAX_NAMES_SHOWN: usize = 100;

/// What moving workflows from one version of a pack to another changes:
/// made once for every workflow an upgrade moves.
pub struct UpgradePlan {
    to: Arc<Pack>,
    /// The digest of the version it was made from.
    from: u64,
    changes: RuleChanges,
    /// Rules of `to` whose identity `from` lacks: new work.
    fresh: Vec<bool>,
}

impl UpgradePlan {
    pub fn between(from: &Pack, to: &Arc<Pack>) -> UpgradePlan {
        let known: rustc_hash::FxHashSet<u64> = from.rules.iter().map(|r| r.identity).collect();
        UpgradePlan {
            to: to.clone(),
            from: from.digest,
            changes: Workflow::rule_changes(from, to),
            fresh: to.rules.iter().map(|r| !known.contains(&r.identity)).collect(),
        }
    }

    pub fn to(&self) -> &Arc<Pack> {
        &self.to
    }

    /// The digest of the version it moves workflows from.
    pub fn from(&self) -> u64 {
        self.from
    }

    /// The fresh rules for a workflow on `current` (the plan's own, unless
    /// it was made from another version).
    fn fresh_for(&self, current: &Pack) -> Vec<bool> {
        if current.digest == self.from {
            return self.fresh.clone();
        }
        UpgradePlan::between(current, &self.to).fresh
    }
}

impl Workflow {
    fn apply_result(&mut self, inv: InvocationId, outcome: Outcome) -> Result<(), TurnError> {
        let w = self.take_waiting(&inv).expect("checked in apply");
        let pack = self.pack.clone();
        debug_assert!(Arc::ptr_eq(self.net.pack(), &pack), "the network is of the workflow's pack");
        let Some(rule) = self.net.rule_named(&w.rule).map(|r| &pack.rules[r]) else {
            return Err(TurnError(format!("rule \"{}\" that made {inv} is no longer in the pack", w.rule)));
        };
        let invocation = {
            let mut m = BTreeMap::new();
            m.insert(Arc::from("id"), Value::str(inv.as_str()));
            m.insert(Arc::from("function"), Value::str(&w.invocation.function));
            m.insert(Arc::from("args"), w.invocation.args.clone());
            Value::Map(Arc::new(m))
        };
        let matched: Vec<(FactId, u32)> =
            w.matched.iter().map(|(id, v)| (*id, self.net.fact(*id).map(|f| f.version).unwrap_or(*v))).collect();
        let failed = match &outcome {
            Outcome::Ok { failed, .. } | Outcome::Error { failed, .. } => failed,
        };
        for f in failed {
            self.record(Event::AttemptFailed(Box::new(crate::timeline::AttemptFailed {
                invocation: inv.clone(),
                attempt: f.attempt,
                at_ms: f.at_ms,
                error: f.error.clone(),
            })));
        }
        match outcome {
            Outcome::Ok { value, attempts, .. } => {
                self.record(Event::ResultApplied { invocation: inv, ok: true, value: value.clone(), attempts });
                if let Some(section) = &rule.reaction {
                    self.record(Event::Fired {
                        rule: rule.name.clone(),
                        section: SectionKind::Reaction,
                        facts: matched.clone(),
                    });
                    let values = self.script_values(rule, &w.bindings, Some((value, invocation)));
                    self.run_section(rule, section, SectionKind::Reaction, values, &w.bindings, &matched)?;
                }
            }
            Outcome::Error { kind, message, attempts, retryable, .. } => {
                let err = {
                    let mut m = BTreeMap::new();
                    m.insert(Arc::from("kind"), Value::str(&format!("{kind:?}").to_lowercase()));
                    m.insert(Arc::from("message"), Value::str(&message));
                    m.insert(Arc::from("attempts"), Value::Int(attempts as i64));
                    m.insert(Arc::from("retryable"), Value::Bool(retryable));
                    Value::Map(Arc::new(m))
                };
                self.record(Event::ResultApplied { invocation: inv, ok: false, value: err.clone(), attempts });
                match &rule.error {
                    Some(section) => {
                        self.record(Event::Fired {
                            rule: rule.name.clone(),
                            section: SectionKind::Error,
                            facts: matched.clone(),
                        });
                        let values = self.script_values(rule, &w.bindings, Some((err, invocation)));
                        self.run_section(rule, section, SectionKind::Error, values, &w.bindings, &matched)?;
                    }
                    None => {
                        // An unhandled function error fails the workflow, like an
                        // uncaught exception: silently going on would hide it.
                        let reason = format!(
                            "rule \"{}\": function `{}` failed after {attempts} attempt(s) and the rule has no `error` section: {message}",
                            rule.name, w.invocation.function
                        );
                        self.finish(Status::Failed, Value::Null, Some(reason));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod cancel_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{pack, run_to_end};
    use expect_test::expect;

    fn facts(json: serde_json::Value) -> Vec<FactSpec> {
        serde_json::from_value(json).unwrap()
    }

    /// Runs a pack on facts; functions answer `{"echo": args}`; returns the
    /// timeline as text.
    fn check(rules: &str, start: serde_json::Value, expect: expect_test::Expect) {
        let p = pack(rules, "");
        let (wf, timeline) = run_to_end(p, facts(start));
        let mut out: Vec<String> = timeline.iter().map(|e| e.line()).collect();
        out.push(format!("status: {} {}", wf.status().as_str(), wf.meta().reason.clone().unwrap_or_default()));
        expect.assert_eq(&(out.join("\n") + "\n"));
    }

    #[test]
    fn alpha_tests_are_shared_only_when_identical() {
        // `2` and `2.0` are equal values, but divide differently.
        check(
            r#"
rule "int" {
    match { i: Item(n / 2 == 1) }
    action { log("int"); }
}
rule "float" {
    match { i: Item(n / 2.0 == 1) }
    action { log("float"); }
}
"#,
            serde_json::json!([{"type": "Item", "fields": {"n": 3}}]),
            expect_test::expect![[r#"
                turn 1 ── start with 1 fact(s)
                  +      f1 Item {"n":3}
                  fire   int (f1@1)
                  log    [int] int
                  commit (1 firing(s))
                status: running 
            "#]],
        );
    }

    #[test]
    fn retracting_a_fact_seen_by_a_not_and_an_exists_of_one_rule() {
        // Retracting the block ends the `not`, whose new match then meets
        // the `exists` while the block is still in its memory: the count
        // must account for it, and the block's leaving must empty it again.
        check(
            r#"
rule "none" {
    match {
        not Block(size > 0)
        exists Block(size > 1)
    }
    action { log("matched"); }
}
rule "drop" {
    match { b: Block() }
    action { retract(b); }
}
"#,
            serde_json::json!([{"type": "Block", "fields": {"size": 2}}]),
            expect_test::expect![[r#"
                turn 1 ── start with 1 fact(s)
                  +      f1 Block {"size":2}
                  fire   drop (f1@1)
                  -      f1@1 Block
                  commit (1 firing(s))
                status: running 
            "#]],
        );
    }

    #[test]
    fn a_not_looks_for_another_blocker_when_its_blocker_leaves() {
        // Each `not` keeps one blocking fact; when it is retracted, the
        // token searches for another before it may match.
        check(
            r#"
rule "top" {
    match {
        j: J()
        not J(bp > j.bp)
    }
    action { log(`top ${j.bp}`); retract(j); }
}
"#,
            serde_json::json!([
                {"type": "J", "fields": {"bp": 1}},
                {"type": "J", "fields": {"bp": 3}},
                {"type": "J", "fields": {"bp": 2}}
            ]),
            expect_test::expect![[r#"
                turn 1 ── start with 3 fact(s)
                  +      f1 J {"bp":1}
                  +      f2 J {"bp":3}
                  +      f3 J {"bp":2}
                  fire   top (f2@1)
                  log    [top] top 3
                  -      f2@1 J
                  fire   top (f3@1)
                  log    [top] top 2
                  -      f3@1 J
                  fire   top (f1@1)
                  log    [top] top 1
                  -      f1@1 J
                  commit (3 firing(s))
                status: running 
            "#]],
        );
    }

    #[test]
    fn a_not_or_exists_on_one_comparison_decides_on_the_extreme_fact() {
        // `not J(bp > j.bp)` and `exists J(bp < j.bp)` have no join key: they
        // test only the greatest (least) `bp`, kept as facts come and go, and
        // scan as usual when values of several kinds mix (a float, a string).
        // A join key that every fact shares keeps them scanning: the same
        // timeline either way.
        let rules = r#"
rule "top" {
    match { j: J() not J(bp > j.bp) }
    action { log(`top ${j.bp}`); retract(j); }
}
rule "has_lower" {
    salience 1
    match { j: J() exists J(bp < j.bp) }
    action { log(`${j.bp} has a lower one`); }
}
rule "more" {
    salience -1
    match { m: More(n > 0) }
    action {
        insert("J", #{ bp: m.n * 2, k: 1 });
        insert("J", #{ bp: m.n, k: 1 });
        modify(m, #{ n: m.n - 1 });
    }
}
rule "odd" {
    salience 2
    match { o: Odd() }
    action { insert("J", #{ bp: 2.5, k: 1 }); insert("J", #{ bp: "x", k: 1 }); retract(o); }
}
"#;
        let start = serde_json::json!([
            {"type": "J", "fields": {"bp": 1, "k": 1}},
            {"type": "J", "fields": {"bp": 3, "k": 1}},
            {"type": "J", "fields": {"bp": 2, "k": 1}},
            {"type": "J", "fields": {"bp": 3, "k": 1}},
            {"type": "More", "fields": {"n": 3}},
            {"type": "Odd", "fields": {}}
        ]);
        let (tracked, _) = timeline_of(rules, start.clone());
        let scanning =
            rules.replace("J(bp > j.bp)", "J(k == j.k, bp > j.bp)").replace("J(bp < j.bp)", "J(k == j.k, bp < j.bp)");
        let (scanned, _) = timeline_of(&scanning, start);
        assert_eq!(tracked, scanned);
        for line in ["top 3", "top 6", "top 2.5", "top x", "3 has a lower one", "2.5 has a lower one"] {
            assert!(tracked.iter().any(|l| l.ends_with(line)), "{line}: {tracked:#?}");
        }
    }

    #[test]
    fn conditions_of_one_shape_share_a_memory_across_rules_only() {
        // `a`, `b`, the `not` and "seen"'s pattern all read every Item:
        // "seen" shares with "pairs", whose own three conditions keep
        // separate memories, so retracting the top item reaches each once.
        check(
            r#"
rule "seen" {
    salience 1
    match { i: Item() }
    action { log(`seen ${i.n}`); }
}
rule "pairs" {
    match {
        a: Item()
        b: Item(n > a.n)
        not Item(n > b.n)
    }
    action { log(`${a.n} < ${b.n}, the top`); }
}
rule "drop" {
    salience -1
    match { i: Item(n == 3) }
    action { retract(i); }
}
"#,
            serde_json::json!([
                {"type": "Item", "fields": {"n": 1}},
                {"type": "Item", "fields": {"n": 2}},
                {"type": "Item", "fields": {"n": 3}}
            ]),
            expect_test::expect![[r#"
                turn 1 ── start with 3 fact(s)
                  +      f1 Item {"n":1}
                  +      f2 Item {"n":2}
                  +      f3 Item {"n":3}
                  fire   seen (f3@1)
                  log    [seen] seen 3
                  fire   seen (f2@1)
                  log    [seen] seen 2
                  fire   seen (f1@1)
                  log    [seen] seen 1
                  fire   pairs (f2@1, f3@1)
                  log    [pairs] 2 < 3, the top
                  fire   pairs (f1@1, f3@1)
                  log    [pairs] 1 < 3, the top
                  fire   drop (f3@1)
                  -      f3@1 Item
                  fire   pairs (f1@1, f2@1)
                  log    [pairs] 1 < 2, the top
                  commit (7 firing(s))
                status: running 
            "#]],
        );
    }

    #[test]
    fn matches_under_a_fact_a_later_effect_only_seems_to_change_are_built() {
        // The second modify changes nothing, so `ctx` stays: the new `c`
        // must match under it (a fact is passed over while an action runs
        // only if a later effect surely retracts it).
        check(
            r#"
rule "count" {
    match {
        ctx: Ctx(on == true)
        c: C(n < 3)
    }
    action { modify(c, #{ n: c.n + 1 }); modify(ctx, #{ on: true }); }
}
rule "switch" {
    salience -1
    match { ctx: Ctx(on == true) c: C(n == 3) }
    action { modify(c, #{ n: 4 }); modify(ctx, #{ on: false }); }
}
rule "off" {
    match { Ctx(on == false) c: C() }
    action { log(`off at ${c.n}`); }
}
"#,
            serde_json::json!([
                {"type": "Ctx", "fields": {"on": true}},
                {"type": "C", "fields": {"n": 0}}
            ]),
            expect_test::expect![[r#"
                turn 1 ── start with 2 fact(s)
                  +      f1 Ctx {"on":true}
                  +      f2 C {"n":0}
                  fire   count (f1@1, f2@1)
                  ~      f2@2 C {"n":0} -> {"n":1}
                  fire   count (f1@1, f2@2)
                  ~      f2@3 C {"n":1} -> {"n":2}
                  fire   count (f1@1, f2@3)
                  ~      f2@4 C {"n":2} -> {"n":3}
                  fire   switch (f1@1, f2@4)
                  ~      f2@5 C {"n":3} -> {"n":4}
                  ~      f1@2 Ctx {"on":true} -> {"on":false}
                  fire   off (f1@2, f2@5)
                  log    [off] off at 4
                  commit (5 firing(s))
                status: running 
            "#]],
        );
    }

    #[test]
    fn matches_through_a_fact_an_action_retracts_later_are_not_built_and_nothing_shows() {
        // `step` modifies `n`, then `ctx`: the matches the first rebuilds
        // under `ctx` are never built. Meanwhile `ctx` still blocks the
        // `not`, lets the `exists` through and is counted, so the firings and
        // their order are those of the same actions with a second, no-op
        // modify of `ctx` (touched twice, it is not passed over).
        let rules = r#"
rule "step" {
    match {
        ctx: Ctx(state == "run")
        n: N(v < 3)
        g: G()
    }
    action {
        insert("Out", #{ at: n.v, g: g.name });
        modify(n, #{ v: n.v + 1 });
        retract(g);
        modify(ctx, #{ state: "check" });
    }
}
rule "seen_running" {
    match { ctx: Ctx(state == "run") o: Out() }
    action { log(`running sees ${o.at}`); }
}
rule "nothing_running" {
    match { o: Out() not Ctx(state == "run") }
    action { log(`${o.at} with nothing running`); }
}
rule "something_running" {
    match { o: Out() exists Ctx(state == "run") }
    action { log(`${o.at} while running`); }
}
rule "runs" {
    match { o: Out() k: count(Ctx(state == "run")) }
    action { log(`${o.at} among ${k} running`); }
}
rule "back" {
    salience -1
    match { ctx: Ctx(state == "check") }
    action { modify(ctx, #{ state: "run" }); }
}
"#;
        let start = serde_json::json!([
            {"type": "Ctx", "fields": {"state": "run"}},
            {"type": "N", "fields": {"v": 0}},
            {"type": "G", "fields": {"name": "a"}},
            {"type": "G", "fields": {"name": "b"}},
            {"type": "G", "fields": {"name": "c"}}
        ]);
        let (doomed, _) = timeline_of(rules, start.clone());
        let kept = rules.replace(
            r#"modify(ctx, #{ state: "check" });"#,
            r#"modify(ctx, #{ state: "check" }); modify(ctx, #{ state: "check" });"#,
        );
        let (built, _) = timeline_of(&kept, start);
        assert_eq!(doomed, built);
        for line in ["with nothing running", "while running", "among 1 running", "among 0 running", "running sees"] {
            assert!(doomed.iter().any(|l| l.contains(line)), "{line}: {doomed:#?}");
        }
        assert_eq!(doomed.iter().filter(|l| l.contains("fire   step")).count(), 3, "{doomed:#?}");
    }

    /// The timeline of `rules` on `start`, and whether every action ran natively.
    fn timeline_of(rules: &str, start: serde_json::Value) -> (Vec<String>, bool) {
        let p = pack(rules, "");
        let native = p.rules.iter().all(|r| r.action.as_ref().is_none_or(|a| a.native.is_some()));
        let (_, timeline) = run_to_end(p, facts(start));
        (timeline.iter().map(|e| e.line()).collect(), native)
    }

    #[test]
    fn hashed_alpha_dispatch_fires_as_testing_every_memory_does() {
        // Twelve literals of `n`: facts reach the memories of their value's
        // literal only (and those without one). Written `K == n + 0`, the
        // same tests are evaluated for every fact: the same timeline.
        let mut rules = String::new();
        for k in 0..12 {
            rules.push_str(&format!(
                "rule \"is {k}\" {{ match {{ x: X(n == {k}) y: Y(n == {k}, x == x.id) }} action {{ log(`${{x.n}} ${{y.x}}`); }} }}\n"
            ));
        }
        rules.push_str(
            r#"
rule "step" {
    salience -1
    match { x: X(n < 11, left > 0) }
    action { modify(x, #{ n: x.n + 1, left: x.left - 1 }); }
}
rule "none at 3" {
    match { not X(n == 3) s: Start() }
    action { log("no 3"); retract(s); }
}
rule "big" {
    match { x: X(n > 9) }
    action { log(`big ${x.n}`); }
}
"#,
        );
        let start = serde_json::json!([
            {"type": "X", "fields": {"n": 0, "left": 5, "id": 1}},
            {"type": "X", "fields": {"n": 3.0, "left": 9, "id": 2}},
            {"type": "Y", "fields": {"n": 4, "x": 1}},
            {"type": "Y", "fields": {"n": 10, "x": 2}},
            {"type": "Y", "fields": {"n": 5, "x": 2}},
            {"type": "Start", "fields": {}}
        ]);
        let (hashed, _) = timeline_of(&rules, start.clone());
        let tested = rules.replace("X(n == ", "X(n + 0 == ").replace("Y(n == ", "Y(n + 0 == ");
        let (tested, _) = timeline_of(&tested, start);
        assert_eq!(hashed, tested);
        for line in ["4 1", "5.0 2", "10.0 2", "no 3", "big 10.0", "big 11.0"] {
            assert!(hashed.iter().any(|l| l.ends_with(line)), "{line}: {hashed:#?}");
        }
    }

    #[test]
    fn facts_asserted_before_the_start_match_at_the_start() {
        // No rule matches before the start primes the network; then the
        // facts already there match, with the start's own.
        let p = pack(
            r#"
rule "seen" { match { i: Item() } action { log(`seen ${i.n}`); } }
rule "none" { match { not Item(n > 5) } action { log("none above 5"); } }
"#,
            "",
        );
        let mut wf = Workflow::new(WorkflowId::new("early"), p, 0);
        let item = |n: i64| facts(serde_json::json!([{"type": "Item", "fields": {"n": n}}]));
        let inputs =
            [Input::Assert { facts: item(1) }, Input::Start { facts: item(2) }, Input::Assert { facts: item(3) }];
        let mut out = Vec::new();
        for (i, input) in inputs.into_iter().enumerate() {
            out.extend(wf.apply(input, i as u64 + 1).unwrap().entries.iter().map(|e| e.line()));
        }
        expect![[r#"
            turn 1 ── assert 1 fact(s)
              +      f1 Item {"n":1}
              commit (0 firing(s))
            turn 2 ── start with 1 fact(s)
              +      f2 Item {"n":2}
              fire   seen (f2@1)
              log    [seen] seen 2
              fire   seen (f1@1)
              log    [seen] seen 1
              fire   none ()
              log    [none] none above 5
              commit (3 firing(s))
            turn 3 ── assert 1 fact(s)
              +      f3 Item {"n":3}
              fire   seen (f3@1)
              log    [seen] seen 3
              commit (1 firing(s))"#]]
        .assert_eq(&out.join("\n"));
    }

    #[test]
    fn native_actions_change_facts_as_their_scripts_do() {
        let rules = r#"
rule "seat" {
    match {
        c: Count(n < 3)
        g: Guest()
    }
    action {
        insert("Seat", #{ guest: g.name, at: c.n * 2 + 1, ratio: c.n / 2.0, tags: [g.name, "x"], missing: g.nope });
        modify(c, #{ n: c.n + 1, last: g.name + "!" });
    }
}
rule "drop" {
    salience -1
    match { s: Seat(at > 3) }
    action { retract(s); }
}
"#;
        let start = serde_json::json!([
            {"type": "Count", "fields": {"n": 0}},
            {"type": "Guest", "fields": {"name": "ann"}},
            {"type": "Guest", "fields": {"name": "bob"}}
        ]);
        let (native, all_native) = timeline_of(rules, start.clone());
        assert!(all_native, "every action here is fact changes only");
        // The same actions with a statement that keeps them in Rhai.
        let scripted = rules.replace("action {", "action { let _rhai = 0;");
        let (rhai, none_native) = timeline_of(&scripted, start);
        assert!(!none_native);
        assert_eq!(native, rhai);
        assert!(native.iter().filter(|l| l.contains("+      f")).count() >= 5, "{native:#?}");
    }

    #[test]
    fn a_native_action_that_fails_reports_the_script_error() {
        // Integer overflow: the native step gives way to Rhai, whose error
        // (with the script position) is the one reported.
        let p = pack(
            r#"
rule "bump" {
    match { c: Count() }
    action { modify(c, #{ n: c.n + 1 }); }
}
"#,
            "",
        );
        assert!(p.rules[0].action.as_ref().unwrap().native.is_some());
        let mut wf = Workflow::new(WorkflowId::new("w"), p, 0);
        let out = wf
            .apply(Input::Start { facts: facts(serde_json::json!([{"type": "Count", "fields": {"n": i64::MAX}}])) }, 1)
            .expect("a failed turn is an output");
        let err = out.error.expect("the turn fails");
        assert!(err.contains("rule \"bump\" action at") && err.contains("main.rules:4:"), "{err}");
    }

    #[test]
    fn join_negation_and_salience() {
        check(
            r#"
rule "pair" {
    match {
        a: A()
        b: B(key == a.key)
        not Block(key == a.key)
    }
    action { insert("Pair", #{ a: a.n, b: b.n }); }
}
rule "urgent first" {
    salience 10
    match { b: B(n > 100) }
    action { log("urgent " + b.n); }
}
"#,
            serde_json::json!([
                {"type": "A", "fields": {"key": 1, "n": 1}},
                {"type": "A", "fields": {"key": 2, "n": 2}},
                {"type": "B", "fields": {"key": 1, "n": 10}},
                {"type": "B", "fields": {"key": 2, "n": 200}},
                {"type": "Block", "fields": {"key": 2}}
            ]),
            expect![[r#"
                turn 1 ── start with 5 fact(s)
                  +      f1 A {"key":1,"n":1}
                  +      f2 A {"key":2,"n":2}
                  +      f3 B {"key":1,"n":10}
                  +      f4 B {"key":2,"n":200}
                  +      f5 Block {"key":2}
                  fire   urgent first (f4@1)
                  log    [urgent first] urgent 200
                  fire   pair (f1@1, f3@1)
                  +      f6 Pair {"a":1,"b":10}
                  commit (2 firing(s))
                status: running 
            "#]],
        );
    }

    #[test]
    fn aggregates_follow_changes() {
        check(
            r#"
rule "count done" {
    match {
        job: Job()
        n: count(Task(job == job.name, done == true))
        total: count(Task(job == job.name))
        size: sum(Task(job == job.name), size)
        test(n == total)
    }
    action { complete(#{ tasks: n, size: size }); }
}
rule "do task" {
    match { t: Task(done == false) }
    action { modify(t, #{ done: true }); }
}
"#,
            serde_json::json!([
                {"type": "Job", "fields": {"name": "j"}},
                {"type": "Task", "fields": {"job": "j", "done": false, "size": 2}},
                {"type": "Task", "fields": {"job": "j", "done": false, "size": 3}}
            ]),
            expect![[r#"
                turn 1 ── start with 3 fact(s)
                  +      f1 Job {"name":"j"}
                  +      f2 Task {"done":false,"job":"j","size":2}
                  +      f3 Task {"done":false,"job":"j","size":3}
                  fire   do task (f3@1)
                  ~      f3@2 Task {"done":false} -> {"done":true}
                  fire   do task (f2@1)
                  ~      f2@2 Task {"done":false} -> {"done":true}
                  fire   count done (f1@1)
                  done   completed: {"size":5,"tasks":2}
                  commit (3 firing(s))
                status: completed 
            "#]],
        );
    }

    /// The host's trace context goes with the invocations of the turns it
    /// was set for, and the start's with the workflow; records made before
    /// either existed read as untraced.
    #[test]
    fn invocations_carry_the_trace_context_of_their_turn() {
        let rules = r#"
rule "encode" {
    match { c: Chunk(status == "pending") }
    action { modify(c, #{ status: "encoding" }); call("media.encode", #{ i: c.i }); }
}
"#;
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut wf = Workflow::new(WorkflowId::new("test"), pack(rules, ""), 0).with_traceparent(Some(tp.into()));
        wf.set_turn_trace(Some(tp.into()));
        let chunk = |i| facts(serde_json::json!([{"type": "Chunk", "fields": {"i": i, "status": "pending"}}]));
        let out = wf.apply(Input::Start { facts: chunk(1) }, 0).expect("start");
        assert_eq!(out.meta.as_ref().and_then(|m| m.traceparent.as_deref()), Some(tp));
        assert_eq!(out.invocations[0].traceparent.as_deref(), Some(tp));
        assert_eq!(out.waiting_put[0].invocation.traceparent.as_deref(), Some(tp));
        wf.set_turn_trace(None);
        let out = wf.apply(Input::Assert { facts: chunk(2) }, 1).expect("assert");
        assert_eq!(out.invocations[0].traceparent, None);
        let json = serde_json::to_value(&out.invocations[0]).expect("json");
        assert!(json.get("traceparent").is_none(), "untraced records stay as they were: {json}");
        let older: Invocation = serde_json::from_value(json).expect("a record without the field");
        assert_eq!(older.traceparent, None);
    }

    #[test]
    fn calls_wait_and_reactions_see_results() {
        check(
            r#"
rule "encode" {
    match { c: Chunk(status == "pending") }
    action { modify(c, #{ status: "encoding" }); call("media.encode", #{ i: c.i }); }
    reaction { modify(c, #{ status: "done", out: result.echo.i }); }
}
rule "all done" {
    match { not Chunk(status != "done") exists Chunk() }
    action { complete(); }
}
"#,
            serde_json::json!([
                {"type": "Chunk", "fields": {"i": 1, "status": "pending"}},
                {"type": "Chunk", "fields": {"i": 2, "status": "pending"}}
            ]),
            expect![[r#"
                turn 1 ── start with 2 fact(s)
                  +      f1 Chunk {"i":1,"status":"pending"}
                  +      f2 Chunk {"i":2,"status":"pending"}
                  fire   encode (f2@1)
                  ~      f2@2 Chunk {"status":"pending"} -> {"status":"encoding"}
                  call   media.encode {"i":2} (priority 0) inv_test.1
                  fire   encode (f1@1)
                  ~      f1@2 Chunk {"status":"pending"} -> {"status":"encoding"}
                  call   media.encode {"i":1} (priority 0) inv_test.2
                  commit (2 firing(s))
                turn 2 ── result of inv_test.1
                  result  inv_test.1 after 1 attempt(s): {"echo":{"i":2}}
                  fire   encode [reaction] (f2@2)
                  ~      f2@3 Chunk {"out":null,"status":"encoding"} -> {"out":2,"status":"done"}
                  commit (0 firing(s))
                turn 3 ── result of inv_test.2
                  result  inv_test.2 after 1 attempt(s): {"echo":{"i":1}}
                  fire   encode [reaction] (f1@2)
                  ~      f1@3 Chunk {"out":null,"status":"encoding"} -> {"out":1,"status":"done"}
                  fire   all done ()
                  done   completed: null
                  commit (1 firing(s))
                status: completed 
            "#]],
        );
    }

    #[test]
    fn runaway_rule_rolls_the_turn_back() {
        let p = pack(
            r#"
rule "spin" {
    match { c: Counter() }
    action { modify(c, #{ n: c.n + 1 }); }
}
"#,
            "[limits]\nmax_firings_per_turn = 50\n",
        );
        let (wf, timeline) = run_to_end(p, facts(serde_json::json!([{"type": "Counter", "fields": {"n": 0}}])));
        let lines: Vec<String> = timeline.iter().map(|e| e.line()).collect();
        expect![[r#"
            turn 1 ── start with 1 fact(s)
              ERROR  turn rolled back after 51 firing(s) [spin ×51]: the turn exceeded 50 firings (limit `max_firings_per_turn`); last rule: "spin"
              done   failed: the turn exceeded 50 firings (limit `max_firings_per_turn`); last rule: "spin""#]]
        .assert_eq(&lines.join("\n"));
        assert_eq!(wf.status(), Status::Failed);
        assert_eq!(wf.fact_count(), 0, "the start turn's facts are rolled back too");
    }

    fn failed_start(rules: &str, limits: &str, start: serde_json::Value) -> (Workflow, TurnOutput) {
        let p = pack(rules, limits);
        let mut wf = Workflow::new(WorkflowId::new("w"), p, 0);
        let out = wf.apply(Input::Start { facts: facts(start) }, 1).unwrap();
        assert_eq!(wf.status(), Status::Failed);
        assert!(out.facts_put.is_empty() && wf.fact_count() == 0, "the turn changes nothing");
        (wf, out)
    }

    #[test]
    fn a_turn_past_its_memory_budget_fails_and_changes_nothing() {
        let grow = r#"
rule "grow" {
    match { s: Seed() }
    action { modify(s, #{ n: s.n + 1 }); insert("Blob", #{ text: "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", n: s.n }); }
}
"#;
        let (_, out) = failed_start(
            grow,
            "[limits]\nmax_memory_mb = 1\n",
            serde_json::json!([{"type": "Seed", "fields": {"n": 0}}]),
        );
        let error = out.error.unwrap();
        assert!(error.contains("more than its memory budget of 1 MiB (limit `max_memory_mb`"), "{error}");
        // A large start is measured too, not only firings.
        let blobs: Vec<_> = (0..5000)
            .map(|n| serde_json::json!({"type": "Blob", "fields": {"n": n, "text": "y".repeat(400)}}))
            .collect();
        let (_, out) = failed_start(
            "rule \"r\" { match { b: Blob(n < 0) } action { } }",
            "[limits]\nmax_memory_mb = 1\n",
            blobs.into(),
        );
        assert!(out.error.unwrap().contains("limit `max_memory_mb`"));
    }

    #[test]
    fn a_turn_past_its_time_fails_with_the_limit_named() {
        let spin = "rule \"spin\" { match { s: Seed() } action { loop { } } }";
        let (_, out) = failed_start(
            spin,
            "[limits]\nmax_turn_ms = 50\nmax_operations = 5000000000\n",
            serde_json::json!([{"type": "Seed", "fields": {}}]),
        );
        let error = out.error.unwrap();
        assert!(error.contains("ran past its time limit of 50 ms (limit `max_turn_ms`)"), "{error}");
    }

    #[test]
    fn a_turn_its_host_stops_is_undone_as_if_it_never_began() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let p = pack(
            "rule \"spin\" { match { s: Seed(go == true) } action { loop { } } }",
            "[limits]\nmax_operations = 5000000000\nmax_turn_ms = 600000\n",
        );
        let mut wf = Workflow::new(WorkflowId::new("w"), p, 0);
        wf.apply(Input::Start { facts: facts(serde_json::json!([{"type": "Seed", "fields": {"go": false}}])) }, 1)
            .unwrap();
        let before = (wf.meta().clone(), wf.snapshot().facts);
        let stop = Arc::new(AtomicBool::new(false));
        let stopper = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(50));
                stop.store(true, Ordering::Relaxed);
            })
        };
        let wf = std::thread::spawn(move || {
            budget::stop_on(stop);
            let r = wf.apply(
                Input::Assert { facts: facts(serde_json::json!([{"type": "Seed", "fields": {"go": true}}])) },
                2,
            );
            assert_eq!(r.unwrap_err(), Rejected::Interrupted);
            wf
        })
        .join()
        .unwrap();
        stopper.join().unwrap();
        assert_eq!((wf.meta().clone(), wf.snapshot().facts), before);
    }

    #[test]
    fn an_unchanged_aggregate_does_not_fire_again_after_a_modify() {
        check(
            r#"
rule "count" {
    match { n: count(Item()) }
    action { log(`items: ${n}`); }
}
rule "see" {
    salience -1
    match { i: Item(seen == ()) }
    action { modify(i, #{ seen: true }); }
}
"#,
            serde_json::json!([{"type": "Item", "fields": {}}, {"type": "Item", "fields": {}}]),
            expect![[r#"
                turn 1 ── start with 2 fact(s)
                  +      f1 Item {}
                  +      f2 Item {}
                  fire   count ()
                  log    [count] items: 2
                  fire   see (f2@1)
                  ~      f2@2 Item {"seen":null} -> {"seen":true}
                  fire   see (f1@1)
                  ~      f1@2 Item {"seen":null} -> {"seen":true}
                  commit (3 firing(s))
                status: running 
            "#]],
        );
    }

    #[test]
    fn no_loop_blocks_only_the_same_facts() {
        // Reserving line 1 modifies the stock; the match of line 2 with the
        // new stock version must still fire.
        check(
            r#"
rule "reserve" {
    no-loop
    match {
        line: Line(status == "open")
        stock: Stock(sku == line.sku, qty >= line.qty)
    }
    action {
        modify(stock, #{ qty: stock.qty - line.qty });
        modify(line, #{ status: "reserved" });
    }
}
"#,
            serde_json::json!([
                {"type": "Stock", "fields": {"sku": "a", "qty": 5}},
                {"type": "Line", "fields": {"sku": "a", "qty": 2, "status": "open"}},
                {"type": "Line", "fields": {"sku": "a", "qty": 2, "status": "open"}}
            ]),
            expect![[r#"
                turn 1 ── start with 3 fact(s)
                  +      f1 Stock {"qty":5,"sku":"a"}
                  +      f2 Line {"qty":2,"sku":"a","status":"open"}
                  +      f3 Line {"qty":2,"sku":"a","status":"open"}
                  fire   reserve (f3@1, f1@1)
                  ~      f1@2 Stock {"qty":5} -> {"qty":3}
                  ~      f3@2 Line {"status":"open"} -> {"status":"reserved"}
                  fire   reserve (f2@1, f1@2)
                  ~      f1@3 Stock {"qty":3} -> {"qty":1}
                  ~      f2@2 Line {"status":"open"} -> {"status":"reserved"}
                  commit (2 firing(s))
                status: running 
            "#]],
        );
    }

    #[test]
    fn no_loop_stops_self_reactivation() {
        check(
            r#"
rule "bump" {
    no-loop
    match { c: Counter(n < 100) }
    action { modify(c, #{ n: c.n + 1 }); }
}
"#,
            serde_json::json!([{"type": "Counter", "fields": {"n": 0}}]),
            expect![[r#"
                turn 1 ── start with 1 fact(s)
                  +      f1 Counter {"n":0}
                  fire   bump (f1@1)
                  ~      f1@2 Counter {"n":0} -> {"n":1}
                  commit (1 firing(s))
                status: running 
            "#]],
        );
    }
}

#[cfg(test)]
mod sandbox_tests {
    use super::*;
    use crate::testing::pack;

    const RUNAWAYS: [(&str, &str); 4] = [
        ("an endless loop", "loop { }"),
        ("deep recursion", "fn f(x) { f(x + 1) } f(0);"),
        ("a huge string", r#"let s = "x"; loop { s += s; }"#),
        ("a huge array", "let a = [1]; loop { a += a; }"),
    ];

    /// Runs `body` in `section` of a rule that first changes a fact; the
    /// turn must fail with a sandbox error and leave the facts untouched.
    fn check(section: &str, what: &str, body: &str) {
        let rules = match section {
            "action" => format!(
                r#"rule "r" {{ match {{ c: C() }} action {{ modify(c, #{{ n: 1 }}); insert("X", #{{}}); {body} }} }}"#
            ),
            _ => format!(
                r#"rule "r" {{
                    match {{ c: C() }}
                    action {{ call("media.encode", #{{}}); }}
                    {section} {{ modify(c, #{{ n: 1 }}); insert("X", #{{}}); {body} }}
                }}"#
            ),
        };
        let p = pack(&rules, "[limits]\nmax_operations = 100000\nmax_array_size = 10000\nmax_string_size = 10000\n");
        let mut wf = Workflow::new(WorkflowId::new("sb"), p, 0);
        let start = vec![FactSpec { ty: "C".into(), fields: Fields::from_json(&serde_json::json!({"n": 0})).unwrap() }];
        let out = wf.apply(Input::Start { facts: start }, 1).unwrap();
        let before: Vec<Fact> = wf.facts().into_iter().cloned().collect();
        let out = if section == "action" {
            out
        } else {
            let inv = out.invocations[0].id.clone();
            let outcome = if section == "reaction" {
                Outcome::Ok { value: Value::Null, attempts: 1, failed: vec![] }
            } else {
                Outcome::Error {
                    kind: ErrorKind::Failed,
                    message: "x".into(),
                    attempts: 1,
                    retryable: false,
                    failed: vec![],
                }
            };
            wf.apply(Input::Result { invocation: inv, outcome }, 2).unwrap()
        };
        let err = out.error.unwrap_or_else(|| panic!("{section} with {what}: the turn did not fail"));
        assert!(err.contains(&format!("rule \"r\" {section} at test/main.rules:")), "{section} with {what}: {err}");
        assert!(
            err.contains("too many operations") || err.contains("call stack too deep") || err.contains("size limit"),
            "{section} with {what}: {err}"
        );
        assert!(out.facts_put.is_empty() && out.facts_deleted.is_empty(), "{section} with {what}: facts changed");
        let after: Vec<Fact> = wf.facts().into_iter().cloned().collect();
        let expected = if section == "action" { vec![] } else { before };
        assert_eq!(after, expected, "{section} with {what}: facts differ from before the turn");
        assert_eq!(wf.status(), Status::Failed);
    }

    #[test]
    fn runaway_scripts_end_the_turn_in_every_section() {
        for section in ["action", "reaction", "error"] {
            for (what, body) in RUNAWAYS {
                check(section, what, body);
            }
        }
    }
}

#[cfg(test)]
mod schema_tests {
    use super::*;
    use crate::testing::pack;

    #[test]
    fn a_rule_that_breaks_a_schema_fails_its_turn_and_changes_nothing() {
        let p = pack(
            // Not a literal: `stoa check` would refuse a literal string (E0014).
            r#"rule "bad" { match { c: C() } action { modify(c, #{ n: "tw" + "o" }); insert("C", #{ n: 3 }); } }"#,
            "[facts.C]\nn = \"int\"\n",
        );
        let mut wf = Workflow::new(WorkflowId::new("schema"), p, 0);
        let start = vec![FactSpec { ty: "C".into(), fields: Fields::from_json(&serde_json::json!({"n": 1})).unwrap() }];
        let out = wf.apply(Input::Start { facts: start }, 1).unwrap();
        assert_eq!(out.error.as_deref(), Some("rule \"bad\": C.n must be int, found string \"two\""));
        assert!(out.facts_put.is_empty() && wf.fact_count() == 0);
        // A request with a bad fact is refused before any turn.
        let mut wf = Workflow::new(WorkflowId::new("schema2"), wf.pack().clone(), 0);
        let bad = vec![FactSpec { ty: "C".into(), fields: Fields::from_json(&serde_json::json!({"n": 1.5})).unwrap() }];
        assert_eq!(
            wf.apply(Input::Start { facts: bad }, 1).unwrap_err().to_string(),
            "fact 0: C.n must be int, found float 1.5"
        );
        assert_eq!(wf.meta().turn, 0);
    }

    #[test]
    fn failed_attempts_of_an_outcome_go_on_the_timeline_before_it() {
        let p =
            pack(r#"rule "r" { match { c: C() } action { call("media.encode", #{}); } reaction { complete(); } }"#, "");
        let mut wf = Workflow::new(WorkflowId::new("attempts"), p, 0);
        let start = vec![FactSpec { ty: "C".into(), fields: Fields::default() }];
        let out = wf.apply(Input::Start { facts: start }, 1).unwrap();
        let invocation = out.invocations[0].id.clone();
        let failed = vec![FailedAttempt { attempt: 1, at_ms: 2, error: "worker crashed".into() }];
        let outcome = Outcome::Ok { value: Value::Null, attempts: 2, failed };
        let out = wf.apply(Input::Result { invocation, outcome }, 10).unwrap();
        let lines: Vec<String> = out.entries.iter().map(Entry::line).collect();
        assert_eq!(lines[1], "  failed inv_attempts.1 attempt 1 (8ms before): worker crashed", "{lines:#?}");
        assert!(lines[2].starts_with("  result  inv_attempts.1 after 2 attempt(s)"), "{lines:#?}");
    }

    #[test]
    fn a_request_with_bad_facts_is_refused_with_every_problem() {
        let p = pack(r#"rule "r" { match { c: C() } action { log("x"); } }"#, "[facts.C]\nn = \"int\"\n");
        let mut wf = Workflow::new(WorkflowId::new("all"), p, 0);
        let fact = |v: serde_json::Value| FactSpec { ty: "C".into(), fields: Fields::from_json(&v).unwrap() };
        let bad = vec![
            fact(serde_json::json!({"n": 1, "colour": "red"})),
            fact(serde_json::json!({"n": 2})),
            fact(serde_json::json!({"n": 3, "size": 4})),
            fact(serde_json::json!({"n": "three"})),
        ];
        assert_eq!(
            wf.apply(Input::Start { facts: bad }, 1).unwrap_err().to_string(),
            "3 problems: fact 0: C.colour is not a field of the schema of C; \
             fact 2: C.size is not a field of the schema of C; fact 3: C.n must be int, found string \"three\""
        );
        assert_eq!(wf.meta().turn, 0);
    }

    #[test]
    fn defaults_fill_new_facts_from_requests_rules_and_timers() {
        let p = pack(
            r#"rule "copy" { match { c: C(n == 1) } action { insert("C", #{ n: 2 }); after("1m", "C", #{ n: 3 }); } }"#,
            "[facts.C]\nn = \"int\"\nstate = { type = \"string\", default = \"new\" }\n",
        );
        let mut wf = Workflow::new(WorkflowId::new("defaults"), p, 0);
        let start = vec![FactSpec { ty: "C".into(), fields: Fields::from_json(&serde_json::json!({"n": 1})).unwrap() }];
        let out = wf.apply(Input::Start { facts: start }, 1).unwrap();
        assert_eq!(out.error, None);
        let due = wf.timers().map(|t| t.due_ms).min().unwrap();
        let ids = wf.timers().map(|t| t.id).collect();
        wf.apply(Input::Timers { ids }, due).unwrap();
        let mut facts: Vec<String> = wf.facts().iter().map(|f| f.fields.to_json().to_string()).collect();
        facts.sort();
        assert_eq!(
            facts,
            [r#"{"n":1,"state":"new"}"#, r#"{"n":2,"state":"new"}"#, r#"{"n":3,"state":"new"}"#],
            "every new C got the default"
        );
    }

    #[test]
    fn strict_packs_refuse_facts_without_a_schema() {
        let p = pack(
            r#"rule "r" { match { s: Signal() } action { insert(s.payload.ty, #{}); } }"#,
            "[facts]\nstrict = true\n[facts.C]\nn = \"int?\"\n",
        );
        let mut wf = Workflow::new(WorkflowId::new("strict"), p, 0);
        let job = vec![FactSpec { ty: "Job".into(), fields: Fields::new() }];
        assert_eq!(
            wf.apply(Input::Start { facts: job }, 1).unwrap_err().to_string(),
            "fact 0: Job has no schema in pack.toml, and the pack is strict (`[facts] strict = true`)"
        );
        let c = vec![FactSpec { ty: "C".into(), fields: Fields::new() }];
        wf.apply(Input::Start { facts: c }, 1).unwrap();
        let signal = |ty: &str| {
            vec![FactSpec {
                ty: "Signal".into(),
                fields: Fields::from_json(&serde_json::json!({"name": "s", "payload": {"ty": ty}})).unwrap(),
            }]
        };
        let out = wf.apply(Input::Assert { facts: signal("Job") }, 2).unwrap();
        assert_eq!(
            out.error.as_deref(),
            Some("rule \"r\": Job has no schema in pack.toml, and the pack is strict (`[facts] strict = true`)")
        );
    }
}

/// Timers, signals, child workflows and upgrades.
#[cfg(test)]
mod always_on_tests {
    use super::*;
    use crate::testing::{pack, pack_version};
    use expect_test::expect;

    fn facts(json: serde_json::Value) -> Vec<FactSpec> {
        serde_json::from_value(json).unwrap()
    }

    fn lines(out: &TurnOutput) -> String {
        out.entries.iter().map(|e| e.line()).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn timers_fire_once_as_facts_and_die_with_the_workflow() {
        let p = pack(
            r#"
rule "arm" {
    match { j: Job(state == "new") }
    action {
        modify(j, #{ state: "waiting" });
        let t = after("15m", "Timeout", #{ job: j.name });
        after("1h", "Late", #{});
        at(5000, "Early", #{});
        modify(j, #{ timer: t });
    }
}
rule "time out" {
    match { t: Timeout() j: Job(name == t.job, state == "waiting") }
    action { modify(j, #{ state: "timed out" }); retract(t); }
}
rule "disarm" {
    match { e: Early() j: Job(state == "timed out") }
    action { cancel_timer(j.timer); complete(); }
}
"#,
            "",
        );
        let mut wf = Workflow::new(WorkflowId::new("t"), p, 0);
        let start = facts(serde_json::json!([{"type": "Job", "fields": {"name": "a", "state": "new"}}]));
        let out = wf.apply(Input::Start { facts: start }, 1000).unwrap();
        assert_eq!(
            out.timers_put.iter().map(|t| (t.id, t.due_ms)).collect::<Vec<_>>(),
            [(1, 901_000), (2, 3_601_000), (3, 5000)]
        );
        expect![[r#"
            turn 1 ── start with 1 fact(s)
              +      f1 Job {"name":"a","state":"new"}
              fire   arm (f1@1)
              ~      f1@2 Job {"state":"new"} -> {"state":"waiting"}
              timer  1 Timeout due at +15m
              timer  2 Late due at +1h
              timer  3 Early due at +4s
              ~      f1@3 Job {"timer":null} -> {"timer":1}
              commit (1 firing(s))"#]]
        .assert_eq(&lines(&out));
        let group = |out: &TurnOutput| -> Vec<(u64, Vec<u64>)> {
            out.timer_groups.iter().map(|(due, ts)| (*due, ts.iter().map(|t| t.id).collect())).collect()
        };
        assert_eq!(group(&out), [(5000, vec![3]), (901_000, vec![1]), (3_601_000, vec![2])]);
        let out = wf.apply(Input::Timers { ids: vec![1] }, 901_000).unwrap();
        assert_eq!(group(&out), [(901_000, vec![])]);
        assert!(lines(&out).contains("timer  1 Timeout fired"), "{}", lines(&out));
        assert!(lines(&out).contains("fire   time out"), "{}", lines(&out));
        // Fired once: the same timer again is refused.
        assert_eq!(wf.apply(Input::Timers { ids: vec![1] }, 901_001).unwrap_err(), Rejected::UnknownTimer(1));
        // Restored from a snapshot, the pending timers come back.
        let snap = wf.snapshot();
        assert_eq!(snap.timers.len(), 2);
        let mut wf = Workflow::restore(wf.pack().clone(), snap).unwrap();
        let out = wf.apply(Input::Timers { ids: vec![3] }, 902_000).unwrap();
        assert_eq!(wf.status(), Status::Completed);
        // Completing drops the remaining timer (cancel_timer of a fired one is no error).
        assert_eq!(group(&out), [(5000, vec![]), (3_601_000, vec![])]);
        assert_eq!(wf.timers().count(), 0);
    }

    #[test]
    fn timers_due_at_the_same_instant_share_a_turn() {
        let p = pack(
            r#"
rule "arm" { match { j: Job() } action { at(100, "B", #{}); at(100, "A", #{}); at(200, "C", #{}); } }
rule "seen" { match { a: A() b: B() } action { log("both"); } }
"#,
            "",
        );
        let mut l = crate::local::Local::start(
            p,
            WorkflowId::new("t"),
            facts(serde_json::json!([{"type": "Job"}])),
            None,
            true,
            &mut crate::dispatch::MockDispatcher::new(&[]),
        )
        .unwrap();
        let mut turns = Vec::new();
        l.advance(1000, &mut crate::dispatch::MockDispatcher::new(&[]), &mut |out| turns.push(lines(out))).unwrap();
        expect![[r#"
            turn 2 ── timers [1, 2] are due
              timer  1 B fired
              +      f2 B {}
              timer  2 A fired
              +      f3 A {}
              fire   seen (f3@1, f2@1)
              log    [seen] both
              commit (1 firing(s))
            turn 3 ── timer 3 is due
              timer  3 C fired
              +      f4 C {}
              commit (0 firing(s))"#]]
        .assert_eq(&turns.join("\n"));
    }

    #[test]
    fn a_failed_turn_keeps_its_timers_out() {
        let p = pack(
            r#"
rule "arm and fail" {
    match { j: Job() }
    action { after("1m", "Tick", #{}); emit("started", #{ n: 1 }); let x = 1 / 0; }
}
"#,
            "",
        );
        let mut wf = Workflow::new(WorkflowId::new("t"), p, 0);
        let out = wf.apply(Input::Start { facts: facts(serde_json::json!([{"type": "Job"}])) }, 1).unwrap();
        assert!(out.error.is_some());
        assert!(out.timers_put.is_empty() && out.signals.is_empty());
    }

    #[test]
    fn signals_arrive_as_facts_and_rules_emit_them() {
        let p = pack(
            r#"
rule "gate" {
    match { s: Signal(name == "partition.ready") p: Partition(day == s.payload.day, ready != true) }
    action { modify(p, #{ ready: true }); emit("partition.loaded", #{ day: p.day }); }
}
"#,
            "",
        );
        let mut wf = Workflow::new(WorkflowId::new("acme.w"), p, 0);
        wf.apply(Input::Start { facts: facts(serde_json::json!([{"type": "Partition", "fields": {"day": 3}}])) }, 1)
            .unwrap();
        let signal = Signal {
            id: "sig-1".into(),
            name: "partition.ready".into(),
            payload: Value::from_json(&serde_json::json!({"day": 3})),
            from: None,
            at_ms: 2,
        };
        let out = wf.apply(Input::Signal { signal }, 2).unwrap();
        expect![[r#"
            turn 2 ── signal partition.ready (sig-1)
              +      f2 Signal {"id":"sig-1","name":"partition.ready","payload":{"day":3}}
              fire   gate (f2@1, f1@1)
              ~      f1@2 Partition {"ready":null} -> {"ready":true}
              emit   partition.loaded {"day":3} (wf_acme.w/s1)
              commit (1 firing(s))"#]]
        .assert_eq(&lines(&out));
        assert_eq!(out.signals.len(), 1);
        assert_eq!(out.signals[0].from.as_ref().map(|w| w.as_str()), Some("wf_acme.w"));
    }

    #[test]
    fn children_are_awaited_like_calls() {
        let p = pack(
            r#"
rule "fan out" {
    match { j: Job() }
    action { start_workflow("child", [#{ type: "Part", fields: #{ n: 1 } }]); }
    reaction { complete(#{ child: result }); }
}
"#,
            "",
        );
        let mut wf = Workflow::new(WorkflowId::new("p"), p, 0);
        let out = wf.apply(Input::Start { facts: facts(serde_json::json!([{"type": "Job"}])) }, 1).unwrap();
        let inv = &out.invocations[0];
        assert_eq!(inv.function, "workflow:child");
        assert_eq!(inv.args.to_string(), r#"{"ancestry":["test"],"facts":[{"fields":{"n":1},"type":"Part"}]}"#);
        assert_eq!(inv.retry.max_attempts, 1);
        let done = Outcome::Ok { value: Value::Int(7), attempts: 1, failed: vec![] };
        wf.apply(Input::Result { invocation: inv.id.clone(), outcome: done }, 2).unwrap();
        assert_eq!(wf.meta().result.to_string(), r#"{"child":7}"#);
    }

    #[test]
    fn a_start_cycle_fails_the_turn_with_the_chain() {
        let p = pack(r#"rule "again" { match { j: Job() } action { start_workflow("other", []); } }"#, "");
        let origin =
            Origin::Parent { invocation: InvocationId::of(&WorkflowId::new("a"), 1), ancestry: vec!["other".into()] };
        let mut wf = Workflow::new(WorkflowId::new("b"), p, 0).with_origin(origin);
        let out = wf.apply(Input::Start { facts: facts(serde_json::json!([{"type": "Job"}])) }, 1).unwrap();
        assert_eq!(
            out.error.as_deref(),
            Some("rule \"again\": start_workflow: start cycle other -> test -> other: a pack may not start itself, directly or through others")
        );
    }

    const V1: &str = r#"
rule "encode" {
    match { s: Source(state == "new") }
    action { modify(s, #{ state: "encoding" }); call("media.encode", #{ codec: "h264" }); }
    reaction { modify(s, #{ state: "encoded" }); insert("Rendition", #{ codec: "h264" }); }
}
rule "old" {
    match { s: Source(state == "encoding") }
    action { call("media.split", #{}); }
}
"#;

    const V2: &str = r#"
rule "encode" {
    match { s: Source(state == "new") }
    action { modify(s, #{ state: "encoding" }); call("media.encode", #{ codec: "h264" }); }
    reaction { modify(s, #{ state: "encoded" }); insert("Rendition", #{ codec: "h264" }); }
}
rule "av1" {
    match { s: Source(state == "encoded") not Rendition(codec == "av1") }
    action { insert("Rendition", #{ codec: "av1" }); }
}
"#;

    #[test]
    fn an_upgrade_fires_new_rules_only_and_a_rollback_keeps_the_facts() {
        let (v1, v2) = (pack_version(V1, "", "1"), pack_version(V2, "", "2"));
        let changes = Workflow::rule_changes(&v1, &v2);
        assert_eq!((changes.added, changes.changed, changes.removed), (vec!["av1".into()], vec![], vec!["old".into()]));
        let start = |id: &str| {
            let mut wf = Workflow::new(WorkflowId::new(id), v1.clone(), 0);
            let f = facts(serde_json::json!([{"type": "Source", "fields": {"state": "new"}}]));
            let out = wf.apply(Input::Start { facts: f }, 1).unwrap();
            (wf, out)
        };
        // One workflow already encoded, one still waiting on both calls.
        let (mut done, out) = start("done");
        for inv in &out.invocations {
            let _ = done.apply(
                Input::Result {
                    invocation: inv.id.clone(),
                    outcome: Outcome::Ok { value: Value::Null, attempts: 1, failed: vec![] },
                },
                2,
            );
        }
        let (mut busy, _) = start("busy");
        assert_eq!(busy.waiting().count(), 2);
        assert_eq!(done.upgrade_preview(&v2).unwrap(), BTreeMap::from([("av1".to_string(), 1)]));
        assert!(busy.upgrade_preview(&v2).unwrap().is_empty());

        let out = done.upgrade(v2.clone(), 10).unwrap();
        expect![[r#"
            turn 4 ── upgrade test 1 -> 2
              upgrade 1 -> 2; new: av1; removed: old
              fire   av1 (f1@3)
              +      f3 Rendition {"codec":"av1"}
              commit (1 firing(s))"#]]
        .assert_eq(&lines(&out));
        assert_eq!(done.meta().pack_version, "2");
        // The removed rule's waiting activation is cancelled; encode's stays.
        let out = busy.upgrade(v2.clone(), 10).unwrap();
        assert_eq!(out.cancelled.len(), 1);
        assert_eq!(busy.waiting().count(), 1);
        assert_eq!(out.firings, 0);

        // Back to v1: nothing fires, no fact is lost.
        let before = done.facts().len();
        let out = done.upgrade(v1.clone(), 11).unwrap();
        assert_eq!(out.firings, 0, "{}", lines(&out));
        assert_eq!(done.facts().len(), before);
        // Upgrading again to v2 does not redo av1: its work is in the facts.
        let out = done.upgrade(v2, 12).unwrap();
        assert_eq!(out.firings, 0, "{}", lines(&out));
    }

    /// Issue 13: a canary that adds an optional field, then a rollback. The
    /// facts keep the field the old version does not know, and its rules
    /// go on modifying them (the next turn used to fail the workflow with
    /// "Order.reminded is not a field of the schema of Order").
    #[test]
    fn a_rollback_of_a_field_addition_keeps_the_field_and_the_workflow_running() {
        const SHIP: &str = r#"rule "ship" { match { o: Order(status == "new") s: Ship() } action { modify(o, #{ status: "shipped" }); retract(s); } }"#;
        let v1 = pack_version(SHIP, "[facts.Order]\nid = \"string\"\nstatus = \"string\"\n", "1");
        let v2 = pack_version(
            &format!(
                r#"{SHIP} rule "remind" {{ match {{ o: Order(status == "new", reminded == ()) }} action {{ modify(o, #{{ reminded: true }}); }} }}"#
            ),
            "[facts.Order]\nid = \"string\"\nstatus = \"string\"\nreminded = \"bool?\"\n",
            "2",
        );
        let mut wf = Workflow::new(WorkflowId::new("canary"), v1.clone(), 0);
        let order = facts(serde_json::json!([{"type": "Order", "fields": {"id": "o1", "status": "new"}}]));
        wf.apply(Input::Start { facts: order }, 1).unwrap();
        let out = wf.upgrade(v2, 2).unwrap();
        assert_eq!((out.firings, out.error.clone()), (1, None), "{}", lines(&out));
        let out = wf.upgrade(v1, 3).unwrap();
        assert_eq!(out.error, None, "{}", lines(&out));
        let out = wf.apply(Input::Assert { facts: facts(serde_json::json!([{"type": "Ship"}])) }, 4).unwrap();
        assert_eq!(out.error, None, "{}", lines(&out));
        assert_eq!(wf.meta().status, Status::Running);
        let order = wf.facts().into_iter().find(|f| &*f.ty.name() == "Order").unwrap();
        assert_eq!(order.fields.to_json(), serde_json::json!({"id": "o1", "status": "shipped", "reminded": true}));
    }

    #[test]
    fn a_declared_rename_moves_live_facts_and_a_rollback_moves_them_back() {
        let v1 = pack_version(
            r#"rule "ship" { match { o: Order(status == "new") s: Ship() } action { modify(o, #{ status: "shipped" }); retract(s); } }"#,
            "[facts.Order]\nid = \"string\"\nstatus = \"string\"\n",
            "1",
        );
        let v2 = pack_version(
            r#"rule "ship" { match { o: Order(state == "new") s: Ship() } action { modify(o, #{ state: "shipped" }); retract(s); } }"#,
            "[facts.Order]\nid = \"string\"\nstate = { type = \"string\", from = \"status\" }\n",
            "2",
        );
        let mut wf = Workflow::new(WorkflowId::new("rename"), v1.clone(), 0);
        let order = facts(serde_json::json!([{"type": "Order", "fields": {"id": "o1", "status": "new"}}]));
        wf.apply(Input::Start { facts: order }, 1).unwrap();
        let out = wf.upgrade(v2, 2).unwrap();
        assert_eq!(out.error, None, "{}", lines(&out));
        assert_eq!(wf_order(&wf), serde_json::json!({"id": "o1", "state": "new"}));
        let out = wf.upgrade(v1, 3).unwrap();
        assert_eq!(out.error, None, "{}", lines(&out));
        assert_eq!(wf_order(&wf), serde_json::json!({"id": "o1", "status": "new"}));
        let out = wf.apply(Input::Assert { facts: facts(serde_json::json!([{"type": "Ship"}])) }, 4).unwrap();
        assert_eq!(out.error, None, "{}", lines(&out));
        assert_eq!(wf_order(&wf), serde_json::json!({"id": "o1", "status": "shipped"}));
    }

    fn wf_order(wf: &Workflow) -> serde_json::Value {
        wf.facts().into_iter().find(|f| &*f.ty.name() == "Order").unwrap().fields.to_json()
    }

    #[test]
    fn a_fact_older_than_a_defaulted_field_gets_the_default_with_its_first_change() {
        const SHIP: &str = r#"rule "ship" { match { o: Order(status == "new") s: Ship() } action { modify(o, #{ status: "shipped" }); retract(s); } }"#;
        let v1 = pack_version(SHIP, "[facts.Order]\nid = \"string\"\nstatus = \"string\"\n", "1");
        let v2 = pack_version(
            SHIP,
            "[facts.Order]\nid = \"string\"\nstatus = \"string\"\nsource = { type = \"string\", default = \"web\" }\n",
            "2",
        );
        let mut wf = Workflow::new(WorkflowId::new("defaults"), v1, 0);
        let order = facts(serde_json::json!([{"type": "Order", "fields": {"id": "o1", "status": "new"}}]));
        wf.apply(Input::Start { facts: order }, 1).unwrap();
        let out = wf.upgrade(v2, 2).unwrap();
        assert_eq!(out.error, None, "{}", lines(&out));
        let out = wf.apply(Input::Assert { facts: facts(serde_json::json!([{"type": "Ship"}])) }, 3).unwrap();
        assert_eq!(out.error, None, "{}", lines(&out));
        let order = wf.facts().into_iter().find(|f| &*f.ty.name() == "Order").unwrap();
        assert_eq!(order.fields.to_json(), serde_json::json!({"id": "o1", "status": "shipped", "source": "web"}));
    }

    #[test]
    fn a_failing_upgrade_is_rolled_back_and_the_workflow_keeps_running() {
        let v1 = pack_version(V2, "", "1");
        let broken = pack_version(
            &format!("{V2}\nrule \"boom\" {{ match {{ s: Source() }} action {{ let x = 1 / 0; }} }}"),
            "",
            "2",
        );
        let mut wf = Workflow::new(WorkflowId::new("w"), v1, 0);
        wf.apply(Input::Start { facts: facts(serde_json::json!([{"type": "Source", "fields": {"state": "x"}}])) }, 1)
            .unwrap();
        let out = wf.upgrade(broken, 2).unwrap();
        assert!(out.error.is_some());
        assert_eq!(wf.status(), Status::Running);
        assert_eq!(wf.meta().pack_version, "1");
        assert!(lines(&out).contains("ERROR  upgrade to 2 rolled back"), "{}", lines(&out));
        assert!(out.facts_put.is_empty());
    }
}
