//! Runs a pack's test cases in-process on virtual time and checks their
//! expectations; used by `stoa test`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use stoa_rules::compile::Pack;
use stoa_rules::testcase::{partial_match, Step, TestCase};

use crate::dispatch::MockDispatcher;
use crate::explain;
use crate::fact::WorkflowId;
use crate::local::{self, Local};
use crate::network::fields_value;
use crate::timeline::{Entry, Event, SectionKind};
use crate::workflow::{Input, Rejected, Signal};

/// The outcome of one test case.
#[derive(Debug)]
pub struct Report {
    pub file: PathBuf,
    pub name: String,
    /// Every failed expectation, as readable text.
    pub failures: Vec<String>,
    pub timeline: Vec<Entry>,
    /// Rules whose action fired, in order.
    pub fired: Vec<String>,
    /// Per rule (by index), the most conditions a partial match passed.
    pub reached: Vec<u16>,
    /// Why the rules a failed expectation names did not fire as expected
    /// (`explain`, as text).
    pub explained: Vec<String>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// The timeline lines a reader needs next to a failure: all of a short
    /// run, or the end of a long one.
    pub fn timeline_excerpt(&self, max_lines: usize) -> Vec<String> {
        let lines: Vec<String> = self.timeline.iter().map(Entry::line).collect();
        if lines.len() <= max_lines {
            return lines;
        }
        let mut out = vec![format!("  … {} earlier line(s) …", lines.len() - max_lines)];
        out.extend(lines[lines.len() - max_lines..].iter().cloned());
        out
    }
}

/// Runs the pack's tests whose name contains `filter`.
pub fn run_tests(pack: &Arc<Pack>, filter: Option<&str>) -> Vec<Report> {
    pack.tests
        .iter()
        .filter(|(_, t)| filter.is_none_or(|f| t.name.contains(f)))
        .map(|(file, t)| run_case(pack, file, t))
        .collect()
}

pub fn run_case(pack: &Arc<Pack>, file: &std::path::Path, case: &TestCase) -> Report {
    let mut dispatcher = MockDispatcher::new(&case.mocks);
    let facts = case.facts.iter().map(|f| f.get_ref().clone()).collect();
    let mut report = Report {
        file: file.to_path_buf(),
        name: case.name.clone(),
        failures: Vec::new(),
        timeline: Vec::new(),
        fired: Vec::new(),
        reached: Vec::new(),
        explained: Vec::new(),
    };
    let run = Local::create(pack.clone(), WorkflowId::new("test"), None, true).and_then(|mut l| {
        l.workflow.track_reach();
        l.apply(Input::Start { facts }, &mut dispatcher)?;
        l.drive(&mut dispatcher, &mut |_| {})?;
        for (n, step) in case.steps.iter().enumerate() {
            run_step(&mut l, n, step, &mut dispatcher)?;
        }
        Ok(l)
    });
    let local = match run {
        Ok(l) => l,
        Err(e) => {
            report.failures.push(format!("the workflow could not run: {e}"));
            return report;
        }
    };
    report.timeline = local.timeline.clone();
    report.fired = fired(&report.timeline);
    report.reached = local.workflow.reached().map(<[u16]>::to_vec).unwrap_or_default();
    for (f, args) in &dispatcher.unmocked {
        report.failures.push(format!("no mock answers `{f}` with args {args}; add a [[test.mock]] for it"));
    }
    check_expectations(case, &local, &mut report);
    if !report.passed() {
        report.explained = explain_missed(case, &local, &report);
    }
    report
}

/// Explanations of the rules a test expected to fire more than they did.
fn explain_missed(case: &TestCase, local: &Local, r: &Report) -> Vec<String> {
    let x = &case.expect;
    let count = |rule: &str| r.fired.iter().filter(|f| *f == rule).count() as u64;
    let mut missed: Vec<&str> = Vec::new();
    for rule in x.fired.iter().flatten() {
        if count(rule.get_ref()) == 0 && !missed.contains(&rule.get_ref().as_str()) {
            missed.push(rule.get_ref());
        }
    }
    for (rule, n) in x.fired_count.iter().flatten() {
        if count(rule.get_ref()) < *n && !missed.contains(&rule.get_ref().as_str()) {
            missed.push(rule.get_ref());
        }
    }
    let subject = explain::Subject::of_workflow(&local.workflow);
    missed
        .into_iter()
        .take(5)
        .filter_map(|rule| {
            let history = explain::History::of(&r.timeline, Some(rule));
            explain::rule(&subject, &history, rule).ok().map(|e| explain::rule_text(&e))
        })
        .collect()
}

/// Runs step `n` (from 0) of a test, or of a scripted `stoa run`.
pub fn run_step(l: &mut Local, n: usize, step: &Step, dispatcher: &mut MockDispatcher) -> Result<(), local::Error> {
    let ignore_finished = |r: Result<_, local::Error>| match r {
        Err(local::Error::Rejected(Rejected::NotRunning(_))) => Ok(()),
        Err(e) => Err(e),
        Ok(_) => Ok(()),
    };
    if !step.assert.is_empty() {
        ignore_finished(l.apply(Input::Assert { facts: step.assert.clone() }, dispatcher))?;
    }
    if let Some(sig) = &step.signal {
        let signal = Signal {
            id: sig.id.clone().unwrap_or_else(|| format!("test-signal-{}", n + 1)),
            name: sig.name.clone(),
            payload: sig.payload.clone(),
            from: None,
            at_ms: 0,
        };
        ignore_finished(l.apply(Input::Signal { signal }, dispatcher))?;
    }
    if let Some(reason) = &step.cancel {
        ignore_finished(l.apply(Input::Cancel { reason: reason.clone(), grace_ms: None }, dispatcher))?;
    }
    if let Some(change) = &step.modify {
        for id in selected(l, n, &change.ty, change.fields.as_ref())? {
            ignore_finished(l.apply(Input::Modify { id, fields: change.set.clone() }, dispatcher))?;
        }
    }
    if let Some(which) = &step.retract {
        let ids = selected(l, n, &which.ty, which.fields.as_ref())?;
        ignore_finished(l.apply(Input::Retract { ids }, dispatcher))?;
    }
    l.drive(dispatcher, &mut |_| {})?;
    if let Some(d) = &step.advance {
        // Checked by `stoa check` (compile), so a bad duration here is a bug.
        let by = humantime::parse_duration(d.get_ref()).map(|d| d.as_millis() as u64).unwrap_or(0);
        l.advance(by, dispatcher, &mut |_| {})?;
    }
    Ok(())
}

/// The ids of the facts of type `ty` whose fields contain `fields`; a step
/// that selects none is an error (a test that modifies nothing would pass
/// for the wrong reason).
fn selected(l: &Local, n: usize, ty: &str, fields: Option<&stoa_rules::Value>) -> Result<Vec<u64>, local::Error> {
    let ids: Vec<u64> = l
        .workflow
        .facts()
        .into_iter()
        .filter(|f| *f.ty.name() == *ty)
        .filter(|f| fields.is_none_or(|want| partial_match(want, &fields_value(&f.fields))))
        .map(|f| f.id)
        .collect();
    if ids.is_empty() {
        let with = fields.map(|f| format!(" with {f}")).unwrap_or_default();
        return Err(local::Error::Step(format!("step {}: no {ty} fact{with}", n + 1)));
    }
    Ok(ids)
}

fn fired(timeline: &[Entry]) -> Vec<String> {
    timeline
        .iter()
        .filter_map(|e| match &e.event {
            Event::Fired { rule, section: SectionKind::Action, .. } => Some(rule.clone()),
            _ => None,
        })
        .collect()
}

fn check_expectations(case: &TestCase, local: &Local, r: &mut Report) {
    let x = &case.expect;
    let wf = &local.workflow;
    let meta = wf.meta();
    if let Some(s) = &x.status {
        let s = s.get_ref();
        if s != meta.status.as_str() {
            let why = meta.reason.as_ref().map(|r| format!(" (reason: {r})")).unwrap_or_default();
            r.failures.push(format!("status: expected {s}, got {}{why}", meta.status.as_str()));
        }
    }
    if let Some(res) = &x.result {
        if !partial_match(res, &meta.result) {
            r.failures.push(format!("result: expected to contain {res}\n           got {}", meta.result));
        }
    }
    if let Some(reason) = &x.reason {
        let got = meta.reason.clone().unwrap_or_default();
        if !got.contains(reason.as_str()) {
            r.failures.push(format!("reason: expected to contain {reason:?}, got {got:?}"));
        }
    }
    if let Some(expected) = &x.fired {
        let expected: Vec<String> = expected.iter().map(|s| s.get_ref().clone()).collect();
        if expected != r.fired {
            r.failures.push(format!("fired rules differ (- expected, + actual):\n{}", diff(&expected, &r.fired)));
        }
    }
    if let Some(counts) = &x.fired_count {
        for (rule, n) in counts {
            let rule = rule.get_ref();
            let got = r.fired.iter().filter(|f| *f == rule).count() as u64;
            if got != *n {
                r.failures.push(format!("rule \"{rule}\" fired {got} time(s), expected {n}"));
            }
        }
    }
    for rule in &x.not_fired {
        let got = r.fired.iter().filter(|f| *f == rule.get_ref()).count();
        if got > 0 {
            r.failures.push(format!("rule \"{}\" fired {got} time(s), expected never", rule.get_ref()));
        }
    }
    if let Some(calls) = &x.calls {
        let mut got: BTreeMap<String, u64> = BTreeMap::new();
        for e in &r.timeline {
            if let Event::Invoked(i) = &e.event {
                let function = &i.function;
                *got.entry(function.clone()).or_default() += 1;
            }
        }
        for (f, n) in calls {
            let f = f.get_ref();
            let g = got.get(f).copied().unwrap_or(0);
            if g != *n {
                r.failures.push(format!("function `{f}` was called {g} time(s), expected {n}"));
            }
        }
    }
    if let Some(attempts) = &x.attempts {
        let mut function_of: BTreeMap<&crate::fact::InvocationId, &str> = BTreeMap::new();
        let mut got: BTreeMap<&str, u64> = BTreeMap::new();
        for e in &r.timeline {
            match &e.event {
                Event::Invoked(i) => {
                    function_of.insert(&i.invocation, &i.function);
                }
                Event::ResultApplied { invocation, attempts, .. } => {
                    if let Some(f) = function_of.get(invocation) {
                        *got.entry(f).or_default() += u64::from(*attempts);
                    }
                }
                _ => {}
            }
        }
        for (f, n) in attempts {
            let f = f.get_ref();
            let g = got.get(f.as_str()).copied().unwrap_or(0);
            if g != *n {
                r.failures.push(format!("function `{f}` was attempted {g} time(s), expected {n}"));
            }
        }
    }
    for fx in &x.facts {
        let matching: Vec<_> = wf
            .facts()
            .into_iter()
            .filter(|f| *f.ty.name() == *fx.ty)
            .filter(|f| fx.fields.as_ref().is_none_or(|want| partial_match(want, &fields_value(&f.fields))))
            .collect();
        let ok = match fx.count {
            Some(n) => matching.len() == n,
            None => !matching.is_empty(),
        };
        if !ok {
            let want = fx.fields.as_ref().map(|v| format!(" with {v}")).unwrap_or_default();
            let count = fx.count.map(|n| format!("exactly {n}")).unwrap_or_else(|| "at least one".into());
            let of_type: Vec<String> = wf
                .facts()
                .into_iter()
                .filter(|f| *f.ty.name() == *fx.ty)
                .take(10)
                .map(|f| format!("\n             f{} {:?}", f.id, f.fields))
                .collect();
            r.failures.push(format!(
                "facts: expected {count} {}{want}, found {}; {} fact(s) of that type{}",
                fx.ty,
                matching.len(),
                wf.facts().into_iter().filter(|f| *f.ty.name() == *fx.ty).count(),
                of_type.concat()
            ));
        }
    }
    if let Some(want) = &x.emitted {
        let got: Vec<String> = r
            .timeline
            .iter()
            .filter_map(|e| match &e.event {
                Event::SignalEmitted(e) => Some(e.name.clone()),
                _ => None,
            })
            .collect();
        if *want != got {
            r.failures.push(format!("emitted signals: expected {want:?}, got {got:?}"));
        }
    }
    if let Some(n) = x.pending_timers {
        let got = wf.timers().count();
        if got != n {
            r.failures.push(format!("pending timers: expected {n}, got {got}"));
        }
    }
    for ty in &x.no_facts {
        let n = wf.facts().into_iter().filter(|f| *f.ty.name() == **ty).count();
        if n > 0 {
            r.failures.push(format!("facts: expected no {ty}, found {n}"));
        }
    }
}

/// A line diff of two sequences (longest common subsequence).
fn diff(a: &[String], b: &[String]) -> String {
    let (n, m) = (a.len(), b.len());
    if n * m > 4_000_000 {
        return format!("  expected {n} firings, got {m} (too long to diff)");
    }
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push(format!("    {}", a[i]));
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push(format!("  + {}", b[j]));
            j += 1;
        } else {
            out.push(format!("  - {}", a[i]));
            i += 1;
        }
    }
    out.join("\n")
}

/// Rules of the pack that no report fired.
pub fn unfired_rules(pack: &Pack, reports: &[Report]) -> Vec<String> {
    pack.rules
        .iter()
        .filter(|r| !reports.iter().any(|rep| rep.fired.contains(&r.name)))
        .map(|r| r.name.clone())
        .collect()
}
