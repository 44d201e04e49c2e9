//! Prometheus metrics: every metric's name, type, unit and help text
//! (`DESCRIBED`, described once), the handles the server's parts count
//! with, and the bounds on what a tenant can make labels of.
//!
//! Off unless `--metrics-listen` is given: every handle is then a no-op
//! (`Metrics::off`). On, each server has a recorder of its own rather than
//! the process-wide one of the `metrics` crate, so that servers sharing a
//! process (the tests) count apart and none of them changes the others.
//!
//! Counters and histograms count when things happen, through handles cached
//! per tenant, function, pack and rule, so that hot paths build no label.
//! Gauges of state (the backlog, workers, loaded workflows) are gathered at
//! each scrape from the parts' own state (`scrape`), so they cannot drift;
//! a series gathered once and absent later reads 0.
//!
//! Labels a tenant chooses (function, pack and rule names, priorities) are
//! capped per tenant: the first values of each kind get series of their
//! own, later ones count as `other` (`stoa_metrics_labels_folded_total`
//! says how often). Workflow and invocation ids are never labels.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

/// Metric names, in Prometheus conventions (base units, `_total` counters).
pub mod name {
    pub const INVOCATIONS_PENDING: &str = "stoa_invocations_pending";
    pub const OLDEST_QUEUED: &str = "stoa_invocations_oldest_queued_seconds";
    pub const ATTEMPTS: &str = "stoa_invocation_attempts_total";
    pub const FINISHED: &str = "stoa_invocations_finished_total";
    pub const SCHEDULE_TO_START: &str = "stoa_invocation_schedule_to_start_seconds";
    pub const START_TO_CLOSE: &str = "stoa_invocation_start_to_close_seconds";
    pub const WORKERS: &str = "stoa_workers_connected";
    pub const SLOTS_FREE: &str = "stoa_worker_slots_free";
    pub const TURNS_COMMITTED: &str = "stoa_turns_committed_total";
    pub const TURN_FAILURES: &str = "stoa_turn_failures_total";
    pub const COMMIT_BATCH: &str = "stoa_commit_batch_turns";
    pub const COMMIT_FLUSH: &str = "stoa_commit_flush_seconds";
    pub const COMMIT_FAILURES: &str = "stoa_commit_failures_total";
    pub const FIRINGS: &str = "stoa_rule_firings_total";
    pub const WORKFLOWS_LIVE: &str = "stoa_workflows_live";
    pub const WORKFLOWS_LOADED: &str = "stoa_workflows_loaded";
    pub const TIMERS_PENDING: &str = "stoa_timers_pending";
    pub const TIMER_LATENESS: &str = "stoa_timer_lateness_seconds";
    pub const UPGRADE_JOBS: &str = "stoa_upgrade_jobs_running";
    pub const UPGRADE_WORKFLOWS: &str = "stoa_upgrade_workflows_total";
    pub const TICK_LATENESS: &str = "stoa_schedule_tick_lateness_seconds";
    pub const STORE_SIZE: &str = "stoa_store_size_bytes";
    pub const LABELS_FOLDED: &str = "stoa_metrics_labels_folded_total";
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric: name, kind, unit, help text. docs/operations.md lists the
/// same, with labels (a test checks that every name here is there).
const DESCRIBED: &[(&str, Kind, Unit, &str)] = &[
    (name::INVOCATIONS_PENDING, Kind::Gauge, Unit::Count, "Invocations this server holds, by state: queued (ready, waiting for a worker), backoff (waiting to be retried) or running (leased to a worker). The backlog an autoscaler reads."),
    (name::OLDEST_QUEUED, Kind::Gauge, Unit::Seconds, "How long the oldest invocation waiting for a worker has waited (0 when none waits)."),
    (name::ATTEMPTS, Kind::Counter, Unit::Count, "Attempts that ended, by outcome: ok, error (failed, no retry left), retry (failed, tried again after a backoff), timeout (ran past its start-to-close or heartbeat timeout), lost_worker, not_started (the worker refused it), cancelled."),
    (name::FINISHED, Kind::Counter, Unit::Count, "Final outcomes handed to workflows, by result: ok or error."),
    (name::SCHEDULE_TO_START, Kind::Histogram, Unit::Seconds, "From an attempt being ready (queued, or its backoff over) to its lease to a worker."),
    (name::START_TO_CLOSE, Kind::Histogram, Unit::Seconds, "From an attempt's lease to the worker's answer (value or failure)."),
    (name::WORKERS, Kind::Gauge, Unit::Count, "Worker sessions connected that serve the function (draining ones excluded)."),
    (name::SLOTS_FREE, Kind::Gauge, Unit::Count, "Free slots (max in flight less leased) of the sessions serving the function; a session serving several functions counts for each."),
    (name::TURNS_COMMITTED, Kind::Counter, Unit::Count, "Turns made durable."),
    (name::TURN_FAILURES, Kind::Counter, Unit::Count, "Turns that failed, by kind: time_limit, memory_limit, firings_limit, facts_limit, rule_error, panic, interrupted."),
    (name::COMMIT_BATCH, Kind::Histogram, Unit::Count, "Turns per group commit (flush)."),
    (name::COMMIT_FLUSH, Kind::Histogram, Unit::Seconds, "Duration of one group commit (attempt records and turns)."),
    (name::COMMIT_FAILURES, Kind::Counter, Unit::Count, "Group commits that failed (their turns are answered with the error)."),
    (name::FIRINGS, Kind::Counter, Unit::Count, "Rule sections run in turns made here, by pack, rule and section (action, reaction, error)."),
    (name::WORKFLOWS_LIVE, Kind::Gauge, Unit::Count, "Running workflows, as counted against max_live_workflows."),
    (name::WORKFLOWS_LOADED, Kind::Gauge, Unit::Count, "Workflows in memory (a cache of the store)."),
    (name::TIMERS_PENDING, Kind::Gauge, Unit::Count, "Timers waiting to fire on this server."),
    (name::TIMER_LATENESS, Kind::Histogram, Unit::Seconds, "How late a timer's turn started after the timer was due."),
    (name::UPGRADE_JOBS, Kind::Gauge, Unit::Count, "Upgrade jobs running on this server."),
    (name::UPGRADE_WORKFLOWS, Kind::Counter, Unit::Count, "Workflows an upgrade job walked, by result: upgraded, failed, skipped."),
    (name::TICK_LATENESS, Kind::Histogram, Unit::Seconds, "How late a schedule's tick started its workflow after it was due."),
    (name::STORE_SIZE, Kind::Gauge, Unit::Bytes, "Size of the store (sled: on disk; PostgreSQL: the database)."),
    (name::LABELS_FOLDED, Kind::Counter, Unit::Count, "Label values a tenant chose past its cap, counted as `other`, by label."),
];

/// Latency buckets, in seconds: a millisecond to an hour.
const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0,
];
/// Turns per group commit: one to the committer's batch limit (4096).
const BATCH: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0];

/// Distinct values per tenant that get a series of their own; later ones
/// are `other`. Functions and packs are few in practice; a pack may have
/// thousands of rules (up to `max_rules_per_pack`), most never firing.
pub const MAX_FUNCTIONS: usize = 100;
pub const MAX_PACKS: usize = 100;
pub const MAX_RULES: usize = 1000;
pub const MAX_PRIORITIES: usize = 10;
/// Label values longer than this are cut (at a character boundary).
const MAX_LABEL_BYTES: usize = 128;
pub const OTHER: &str = "other";
/// The `section` label of a firing, by index: which section of the rule ran.
pub const SECTIONS: [&str; 3] = ["action", "reaction", "error"];

const META: Metadata<'static> = Metadata::new("stoa", Level::INFO, None);

/// The first `max` distinct values of a label per tenant, and `other` after.
/// Once given its own series a value keeps it, so counters stay continuous.
struct Cap {
    label: &'static str,
    max: usize,
    seen: Mutex<HashMap<String, HashSet<Arc<str>>>>,
}

impl Cap {
    fn new(label: &'static str, max: usize) -> Cap {
        Cap { label, max, seen: Mutex::new(HashMap::new()) }
    }

    /// The label value for `value`; `None`: folded into `other`.
    fn admit(&self, tenant: &str, value: &str) -> Option<Arc<str>> {
        let mut seen = self.seen.lock().expect("cap lock");
        let set = match seen.get_mut(tenant) {
            Some(s) => s,
            None => seen.entry(tenant.to_string()).or_default(),
        };
        if let Some(v) = set.get(value) {
            return Some(v.clone());
        }
        if set.len() >= self.max {
            return None;
        }
        let v: Arc<str> = Arc::from(value);
        set.insert(v.clone());
        Some(v)
    }
}

fn cut(s: &str) -> &str {
    if s.len() <= MAX_LABEL_BYTES {
        return s;
    }
    let mut end = MAX_LABEL_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// How an attempt ended (`stoa_invocation_attempts_total`'s `outcome`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    Ok,
    Error,
    Retry,
    Timeout,
    LostWorker,
    NotStarted,
    Cancelled,
}

impl Attempt {
    const ALL: [Attempt; 7] = [
        Attempt::Ok,
        Attempt::Error,
        Attempt::Retry,
        Attempt::Timeout,
        Attempt::LostWorker,
        Attempt::NotStarted,
        Attempt::Cancelled,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Attempt::Ok => "ok",
            Attempt::Error => "error",
            Attempt::Retry => "retry",
            Attempt::Timeout => "timeout",
            Attempt::LostWorker => "lost_worker",
            Attempt::NotStarted => "not_started",
            Attempt::Cancelled => "cancelled",
        }
    }
}

/// The handles of one tenant's function, kept by the dispatcher with each
/// invocation so that counting an outcome looks nothing up.
pub struct FunctionMetrics {
    /// The `function` label (the name, or `other` past the cap).
    pub function: SharedString,
    attempts: [Counter; 7],
    finished_ok: Counter,
    finished_error: Counter,
    pub schedule_to_start: Histogram,
    pub start_to_close: Histogram,
}

impl FunctionMetrics {
    pub fn attempt(&self, a: Attempt) {
        self.attempts[a as usize].increment(1);
    }

    pub fn finished(&self, ok: bool) {
        if ok { &self.finished_ok } else { &self.finished_error }.increment(1);
    }
}

/// The handles of one tenant, for what is counted per tenant only.
pub struct TenantMetrics {
    pub turns_committed: Counter,
    pub timer_lateness: Histogram,
    pub tick_lateness: Histogram,
    pub upgrade_jobs: Gauge,
    upgraded: Counter,
    upgrade_failed: Counter,
    upgrade_skipped: Counter,
}

/// What an upgrade job did with one workflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upgraded {
    Upgraded,
    Failed,
    Skipped,
}

impl TenantMetrics {
    pub fn upgrade(&self, r: Upgraded) {
        match r {
            Upgraded::Upgraded => &self.upgraded,
            Upgraded::Failed => &self.upgrade_failed,
            Upgraded::Skipped => &self.upgrade_skipped,
        }
        .increment(1);
    }
}

/// The committer's handles.
pub struct CommitMetrics {
    pub batch: Histogram,
    pub flush: Histogram,
    pub failures: Counter,
}

/// Gauges gathered for one scrape.
#[derive(Default)]
pub struct Gauges(HashMap<Key, f64>);

impl Gauges {
    pub fn set(&mut self, name: &'static str, labels: Vec<Label>, value: f64) {
        self.0.insert(Key::from_parts(name, labels), value);
    }

    /// Adds to the series (values folded into `other` add up).
    pub fn add(&mut self, name: &'static str, labels: Vec<Label>, value: f64) {
        *self.0.entry(Key::from_parts(name, labels)).or_default() += value;
    }

    pub fn extend(&mut self, other: Gauges) {
        self.0.extend(other.0);
    }
}

/// A rule's firings counters, by `SECTIONS` index, made at first use.
type BySection = [Option<Counter>; 3];

struct Inner {
    recorder: PrometheusRecorder,
    functions: Cap,
    packs: Cap,
    rules: Cap,
    priorities: Cap,
    tenants: DashMap<String, Arc<TenantMetrics>>,
    /// Per `tenant\0pack`: rule name → its firings counter per section.
    firings: DashMap<String, Mutex<HashMap<String, BySection>>>,
    timers_pending: Gauge,
    /// The gauge series the last scrape set (those absent now read 0).
    gauges: Mutex<HashSet<Key>>,
}

/// The server's metrics; cheap to clone. `Default` is off.
#[derive(Clone, Default)]
pub struct Metrics(Option<Arc<Inner>>);

pub fn tenant_label(tenant: &str) -> Label {
    Label::new("tenant", tenant.to_string())
}

impl Metrics {
    /// No recorder: every handle does nothing.
    pub fn off() -> Metrics {
        Metrics(None)
    }

    /// A recorder of this server's own, with every metric described.
    pub fn on() -> Metrics {
        let mut b = PrometheusBuilder::new();
        b = b.set_buckets(SECONDS).expect("buckets");
        b = b.set_buckets_for_metric(Matcher::Full(name::COMMIT_BATCH.into()), BATCH).expect("buckets");
        let recorder = b.build_recorder();
        for (n, kind, unit, help) in DESCRIBED {
            let (n, unit, help) = (metrics::KeyName::from_const_str(n), Some(*unit), SharedString::const_str(help));
            match kind {
                Kind::Counter => recorder.describe_counter(n, unit, help),
                Kind::Gauge => recorder.describe_gauge(n, unit, help),
                Kind::Histogram => recorder.describe_histogram(n, unit, help),
            }
        }
        let timers_pending = recorder.register_gauge(&Key::from_static_name(name::TIMERS_PENDING), &META);
        Metrics(Some(Arc::new(Inner {
            recorder,
            functions: Cap::new("function", MAX_FUNCTIONS),
            packs: Cap::new("pack", MAX_PACKS),
            rules: Cap::new("rule", MAX_RULES),
            priorities: Cap::new("priority", MAX_PRIORITIES),
            tenants: DashMap::new(),
            firings: DashMap::new(),
            timers_pending,
            gauges: Mutex::new(HashSet::new()),
        })))
    }

    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        match &self.0 {
            Some(m) => m.recorder.register_counter(&Key::from_parts(name, labels), &META),
            None => Counter::noop(),
        }
    }

    fn histogram(&self, name: &'static str, labels: Vec<Label>) -> Histogram {
        match &self.0 {
            Some(m) => m.recorder.register_histogram(&Key::from_parts(name, labels), &META),
            None => Histogram::noop(),
        }
    }

    fn gauge(&self, name: &'static str, labels: Vec<Label>) -> Gauge {
        match &self.0 {
            Some(m) => m.recorder.register_gauge(&Key::from_parts(name, labels), &META),
            None => Gauge::noop(),
        }
    }

    /// A tenant's value of a capped label: itself, or `other` past the cap
    /// (counted in `stoa_metrics_labels_folded_total`).
    /// Counted once per handle made: a scrape's labels (`count: false`)
    /// would count the same values again at every scrape.
    fn capped(&self, cap: impl Fn(&Inner) -> &Cap, tenant: &str, value: &str, count: bool) -> SharedString {
        self.admitted(cap, tenant, value, count).unwrap_or(SharedString::const_str(OTHER))
    }

    /// `capped`; `None` for `other`.
    fn admitted(&self, cap: impl Fn(&Inner) -> &Cap, tenant: &str, value: &str, count: bool) -> Option<SharedString> {
        let m = self.0.as_ref()?;
        let cap = cap(m);
        let admitted = cap.admit(tenant, value).map(SharedString::from_shared);
        if admitted.is_none() && count {
            let label = Label::new("label", SharedString::const_str(cap.label));
            self.counter(name::LABELS_FOLDED, vec![tenant_label(tenant), label]).increment(1);
        }
        admitted
    }

    /// The `function` label of a tenant's function (capped), for a gauge.
    pub fn function_label(&self, tenant: &str, function: &str) -> SharedString {
        self.capped(|m| &m.functions, tenant, cut(function), false)
    }

    /// The `priority` label of a tenant's priority (capped), for a gauge.
    pub fn priority_label(&self, tenant: &str, priority: i64) -> SharedString {
        if self.0.is_none() {
            return SharedString::const_str(OTHER);
        }
        self.capped(|m| &m.priorities, tenant, &priority.to_string(), false)
    }

    /// The handles of a tenant's function (the caller keeps them).
    pub fn function(&self, tenant: &str, function: &str) -> FunctionMetrics {
        let f = self.capped(|m| &m.functions, tenant, cut(function), true);
        let labels = || vec![tenant_label(tenant), Label::new("function", f.clone())];
        let attempts = Attempt::ALL.map(|a| {
            let mut l = labels();
            l.push(Label::new("outcome", SharedString::const_str(a.as_str())));
            self.counter(name::ATTEMPTS, l)
        });
        let finished = |r: &'static str| {
            let mut l = labels();
            l.push(Label::new("result", SharedString::const_str(r)));
            self.counter(name::FINISHED, l)
        };
        FunctionMetrics {
            attempts,
            finished_ok: finished("ok"),
            finished_error: finished("error"),
            schedule_to_start: self.histogram(name::SCHEDULE_TO_START, labels()),
            start_to_close: self.histogram(name::START_TO_CLOSE, labels()),
            function: f,
        }
    }

    /// The handles of a tenant, made once.
    pub fn tenant(&self, tenant: &str) -> Arc<TenantMetrics> {
        let make = || {
            let t = || vec![tenant_label(tenant)];
            let upgrade = |r: &'static str| {
                self.counter(name::UPGRADE_WORKFLOWS, vec![tenant_label(tenant), Label::new("result", r)])
            };
            Arc::new(TenantMetrics {
                turns_committed: self.counter(name::TURNS_COMMITTED, t()),
                timer_lateness: self.histogram(name::TIMER_LATENESS, t()),
                tick_lateness: self.histogram(name::TICK_LATENESS, t()),
                upgrade_jobs: self.gauge(name::UPGRADE_JOBS, t()),
                upgraded: upgrade("upgraded"),
                upgrade_failed: upgrade("failed"),
                upgrade_skipped: upgrade("skipped"),
            })
        };
        match &self.0 {
            Some(m) => match m.tenants.get(tenant) {
                Some(h) => h.clone(),
                None => m.tenants.entry(tenant.to_string()).or_insert_with(make).clone(),
            },
            // Off: one set of no-op handles for all (turns ask per turn).
            None => {
                static NOOP: std::sync::OnceLock<Arc<TenantMetrics>> = std::sync::OnceLock::new();
                NOOP.get_or_init(make).clone()
            }
        }
    }

    pub fn commit(&self) -> CommitMetrics {
        CommitMetrics {
            batch: self.histogram(name::COMMIT_BATCH, vec![]),
            flush: self.histogram(name::COMMIT_FLUSH, vec![]),
            failures: self.counter(name::COMMIT_FAILURES, vec![]),
        }
    }

    /// Counts a turn's firings, given the rule of each.
    /// `rules`: the rule and section (`SECTIONS`) of each.
    pub fn fired<'a>(&self, tenant: &str, pack: &str, rules: impl Iterator<Item = (&'a str, usize)>) {
        let Some(m) = &self.0 else { return };
        let mut rules = rules.peekable();
        if rules.peek().is_none() {
            return;
        }
        let key = format!("{tenant}\0{pack}");
        let entry = match m.firings.get(&key) {
            Some(e) => e,
            None => {
                m.firings.entry(key.clone()).or_default();
                m.firings.get(&key).expect("inserted")
            }
        };
        let mut counters = entry.lock().expect("firings lock");
        for (rule, section) in rules {
            if let Some(c) = counters.get(rule).and_then(|by_section| by_section[section].as_ref()) {
                c.increment(1);
                continue;
            }
            let pack_label = self.admitted(|m| &m.packs, tenant, cut(pack), true);
            let rule_label = pack_label
                .as_ref()
                .and_then(|_| self.admitted(|m| &m.rules, tenant, &format!("{}\0{}", cut(pack), cut(rule)), true))
                .map(|_| SharedString::from_owned(cut(rule).to_string()));
            let other = || SharedString::const_str(OTHER);
            let labels = vec![
                tenant_label(tenant),
                Label::new("pack", pack_label.unwrap_or_else(other)),
                Label::new("rule", rule_label.unwrap_or_else(other)),
                Label::new("section", SECTIONS[section]),
            ];
            let c = self.counter(name::FIRINGS, labels);
            c.increment(1);
            match counters.get_mut(rule) {
                Some(by_section) => by_section[section] = Some(c),
                None => {
                    let mut by_section = [None, None, None];
                    by_section[section] = Some(c);
                    counters.insert(rule.to_string(), by_section);
                }
            }
        }
    }

    /// Counts a failed turn, by what failed it.
    pub fn turn_failed(&self, tenant: &str, kind: &'static str) {
        if self.0.is_some() {
            self.counter(name::TURN_FAILURES, vec![tenant_label(tenant), Label::new("kind", kind)]).increment(1);
        }
    }

    pub fn timers_pending(&self, n: usize) {
        if let Some(m) = &self.0 {
            m.timers_pending.set(n as f64);
        }
    }

    /// Sets the gathered gauges; series gathered before and absent now
    /// read 0 (a gauge of the `metrics` crate keeps its last value), but
    /// those named in `stale` (their part did not answer) keep theirs.
    pub fn publish(&self, gauges: Gauges, stale: &[&str]) {
        let Some(m) = &self.0 else { return };
        let mut last = m.gauges.lock().expect("gauges lock");
        let now: HashSet<Key> = gauges.0.keys().cloned().collect();
        for gone in last.difference(&now).filter(|k| !stale.contains(&k.name())) {
            m.recorder.register_gauge(gone, &META).set(0.0);
        }
        for (k, v) in gauges.0 {
            m.recorder.register_gauge(&k, &META).set(v);
        }
        // What was zeroed stays a series (bounded by the caps), at 0.
        last.extend(now);
    }

    /// The Prometheus text of everything counted.
    pub fn render(&self) -> String {
        match &self.0 {
            Some(m) => m.recorder.handle().render(),
            None => String::new(),
        }
    }

    /// Drains histogram samples into their buckets, as a scrape does; run
    /// every few seconds so that memory stays bounded between scrapes.
    pub async fn upkeep(self, shutdown: tokio_util::sync::CancellationToken) {
        let Some(m) = &self.0 else { return };
        let handle = m.recorder.handle();
        crate::clock::every(Duration::from_secs(5), shutdown, || handle.run_upkeep()).await
    }
}

/// What failed a turn, from its error (`stoa_turn_failures_total`'s `kind`):
/// the limit it names, else the rule's own error.
pub fn failure_kind(error: &str) -> &'static str {
    const LIMITS: [(&str, &str); 4] = [
        ("(limit `max_turn_ms`", "time_limit"),
        ("(limit `max_memory_mb`", "memory_limit"),
        ("(limit `max_firings_per_turn`", "firings_limit"),
        ("(limit `max_facts`", "facts_limit"),
    ];
    if error.starts_with("internal error in the engine") {
        return "panic";
    }
    LIMITS.iter().find(|(needle, _)| error.contains(needle)).map_or("rule_error", |(_, kind)| kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(text: &str, prefix: &str) -> Vec<String> {
        text.lines().filter(|l| l.starts_with(prefix)).map(str::to_string).collect()
    }

    #[test]
    fn a_cap_admits_the_first_values_and_keeps_them() {
        let cap = Cap::new("function", 2);
        assert_eq!(cap.admit("a", "f1").as_deref(), Some("f1"));
        assert_eq!(cap.admit("a", "f2").as_deref(), Some("f2"));
        assert_eq!(cap.admit("a", "f3"), None, "past the cap");
        assert_eq!(cap.admit("a", "f1").as_deref(), Some("f1"), "admitted once, kept");
        assert_eq!(cap.admit("b", "f3").as_deref(), Some("f3"), "each tenant has its own");
    }

    #[test]
    fn long_names_are_cut_at_a_character_boundary() {
        let long = "é".repeat(100);
        let label = Metrics::on().function_label("t", &long);
        assert!(label.len() <= MAX_LABEL_BYTES && long.starts_with(&*label), "{label}");
        assert_eq!(&*Metrics::on().function_label("t", "short"), "short");
    }

    #[test]
    fn firings_past_the_caps_count_as_other() {
        let m = Metrics::on();
        for i in 0..MAX_RULES + 5 {
            let rule = format!("r{i}");
            m.fired("t", "p", [(rule.as_str(), 0), (rule.as_str(), 0)].into_iter());
        }
        for i in 0..MAX_PACKS {
            m.fired("t", &format!("pack{i}"), [("x", 1)].into_iter());
        }
        let text = m.render();
        let rules = series(&text, name::FIRINGS);
        // MAX_RULES series of the first pack, `other` of it; the other
        // packs' `x` got no rule label left, MAX_PACKS-1 packs more and
        // `other` for the last.
        assert!(
            rules.contains(&r#"stoa_rule_firings_total{tenant="t",pack="p",rule="r0",section="action"} 2"#.to_string())
        );
        assert!(rules
            .contains(&r#"stoa_rule_firings_total{tenant="t",pack="p",rule="other",section="action"} 10"#.to_string()));
        assert!(rules.contains(
            &r#"stoa_rule_firings_total{tenant="t",pack="other",rule="other",section="reaction"} 1"#.to_string()
        ));
        assert!(rules.len() <= MAX_RULES + MAX_PACKS + 2, "{} series", rules.len());
        assert!(text.contains(r#"stoa_metrics_labels_folded_total{tenant="t",label="rule"}"#), "{text}");
        assert!(text.contains(r#"stoa_metrics_labels_folded_total{tenant="t",label="pack"} 1"#), "{text}");
    }

    #[test]
    fn gauges_absent_from_a_gather_read_zero() {
        let m = Metrics::on();
        let mut g = Gauges::default();
        g.set(name::WORKFLOWS_LIVE, vec![tenant_label("a")], 3.0);
        g.set(name::WORKFLOWS_LIVE, vec![tenant_label("b")], 4.0);
        m.publish(g, &[]);
        let mut g = Gauges::default();
        g.add(name::WORKFLOWS_LIVE, vec![tenant_label("b")], 1.0);
        g.add(name::WORKFLOWS_LIVE, vec![tenant_label("b")], 1.0);
        m.publish(g, &[]);
        let text = m.render();
        let mut live = series(&text, name::WORKFLOWS_LIVE);
        live.sort();
        assert_eq!(live, [r#"stoa_workflows_live{tenant="a"} 0"#, r#"stoa_workflows_live{tenant="b"} 2"#]);
        assert!(text.contains("# HELP stoa_workflows_live Running workflows"), "{text}");
        assert!(text.contains("# TYPE stoa_workflows_live gauge"), "{text}");
    }

    #[test]
    fn function_handles_count_each_outcome_and_histograms_have_buckets() {
        let m = Metrics::on();
        let f = m.function("t", "media.encode");
        f.attempt(Attempt::Ok);
        f.attempt(Attempt::Retry);
        f.attempt(Attempt::Retry);
        f.finished(true);
        f.schedule_to_start.record(0.003);
        let text = m.render();
        assert!(
            text.contains(r#"stoa_invocation_attempts_total{tenant="t",function="media.encode",outcome="retry"} 2"#)
        );
        assert!(text.contains(r#"stoa_invocations_finished_total{tenant="t",function="media.encode",result="ok"} 1"#));
        assert!(text.contains(
            r#"stoa_invocation_schedule_to_start_seconds_bucket{tenant="t",function="media.encode",le="0.005"} 1"#
        ));
    }

    #[test]
    fn off_counts_nothing() {
        let m = Metrics::off();
        m.function("t", "f").attempt(Attempt::Ok);
        m.fired("t", "p", [("r", 0)].into_iter());
        assert_eq!(m.render(), "");
    }

    #[test]
    fn failure_kinds() {
        for (error, kind) in [
            ("the turn ran past its time limit of 10 ms (limit `max_turn_ms`)", "time_limit"),
            ("the workflow took more than its memory budget of 1 MiB (limit `max_memory_mb`; 3 facts)", "memory_limit"),
            ("the turn exceeded 50 firings (limit `max_firings_per_turn`); last rule: \"spin\"", "firings_limit"),
            ("the workflow exceeded 9 facts (limit `max_facts`)", "facts_limit"),
            ("rule \"r\" action at main.rules:3:5: division by zero", "rule_error"),
            ("internal error in the engine (a turn panicked: boom); see the server log", "panic"),
        ] {
            assert_eq!(failure_kind(error), kind, "{error}");
        }
    }

    #[test]
    fn every_metric_is_in_the_operations_guide() {
        let doc = include_str!("../../docs/operations.md");
        for (n, kind, _, _) in DESCRIBED {
            let kind = format!("{kind:?}").to_lowercase();
            assert!(doc.contains(&format!("| `{n}` | {kind} |")), "docs/operations.md lists no {kind} `{n}`");
        }
    }

    #[test]
    fn every_metric_is_described_once() {
        let mut names: Vec<&str> = DESCRIBED.iter().map(|d| d.0).collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n);
        for (n, kind, unit, _) in DESCRIBED {
            assert!(n.starts_with("stoa_"), "{n}");
            assert_eq!(*kind == Kind::Counter, n.ends_with("_total"), "{n}");
            assert_eq!(*unit == Unit::Seconds, n.ends_with("_seconds"), "{n}");
        }
    }
}
