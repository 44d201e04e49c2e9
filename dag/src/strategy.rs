//! `run_strategy` (what a new instance does while others of the definition
//! run) and `concurrency` (how many steps of one instance run at once).
//!
//! The two live in different places on purpose. Steps of one instance are
//! facts of one working memory, so their limit is a condition of the
//! compiled rules: a step that would start waits while `concurrency` steps
//! are `running` (a count in its start rules), and starts when one ends.
//! Instances are separate workflows, which no rule sees together, so the
//! run strategy is a `[run_strategy]` table of the compiled manifest that
//! the server enforces when it starts a workflow of the pack (see
//! docs/dags.md, "Run strategy").

use std::fmt::Write;

use stoa_rules::manifest::RunStrategy;
use stoa_rules::{Code, Pos};

use crate::model::{Reader, Step, StepType};
use crate::yaml::{Kind, Node, Scalar};

/// A definition's strategy and step concurrency.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Strategy {
    pub run: Option<(RunStrategy, Pos)>,
    /// At most this many steps of an instance running at once.
    pub concurrency: Option<u32>,
}

/// The most steps a definition may allow to run at once (as many as it
/// may have).
const MAX_CONCURRENCY: i64 = crate::model::MAX_STEPS as i64;

/// Reads `run_strategy:` (`sequential`, or `{ mode: parallel, limit: 5 }`)
/// and `concurrency:`.
pub(crate) fn read(r: &mut Reader<'_>, run: Option<&Node>, concurrency: Option<&Node>) -> Strategy {
    let mut out = Strategy::default();
    if let Some(node) = run {
        let (mode, limit) = match &node.kind {
            Kind::Map(_) => {
                let m = r.map(node, "`run_strategy`", &["mode", "limit"]);
                let mode = m.iter().find(|(k, _)| k.text == "mode").and_then(|(_, v)| r.string(v, "`mode`"));
                let limit = m.iter().find(|(k, _)| k.text == "limit").map(|(_, v)| *v);
                if mode.is_none() && !m.iter().any(|(k, _)| k.text == "mode") {
                    r.format(node.pos, "`run_strategy` names no `mode`");
                }
                (mode, limit)
            }
            _ => (r.string(node, "`run_strategy`"), None),
        };
        let limit = limit.and_then(|l| match l.kind {
            Kind::Scalar(Scalar::Int(n)) if (1..=1_000_000).contains(&n) => Some(n as u32),
            _ => {
                r.error(
                    l.pos,
                    Code::DagType,
                    format!("`limit` must be a whole number from 1 to 1000000, found {}", l.what()),
                );
                None
            }
        });
        if let Some(mode) = mode {
            let s = match (mode.text.as_str(), limit) {
                ("parallel", Some(limit)) => Some(RunStrategy::Parallel { limit }),
                ("parallel", None) => {
                    r.format(mode.pos, "`run_strategy` parallel needs a `limit`: `{ mode: parallel, limit: 5 }`");
                    None
                }
                ("sequential", _) => Some(RunStrategy::Sequential),
                ("strict_sequential", _) => Some(RunStrategy::StrictSequential),
                ("first_only", _) => Some(RunStrategy::FirstOnly),
                ("last_only", _) => Some(RunStrategy::LastOnly),
                (other, _) => {
                    let hint = stoa_rules::diagnostic::closest(other, RunStrategy::MODES)
                        .map(|c| format!("; did you mean `{c}`?"))
                        .unwrap_or_else(|| format!("; expected one of {}", RunStrategy::MODES.join(", ")));
                    r.format(
                        mode.pos,
                        format!("unknown run strategy `{}`{hint}", stoa_rules::diagnostic::shown(other)),
                    );
                    None
                }
            };
            if let (Some(s), Some(_)) = (&s, limit) {
                if !matches!(s, RunStrategy::Parallel { .. }) {
                    r.format(mode.pos, format!("`limit` is for `parallel`; `{}` runs one at a time", s.mode()));
                }
            }
            out.run = s.map(|s| (s, mode.pos));
        }
    }
    if let Some(c) = concurrency {
        match c.kind {
            Kind::Scalar(Scalar::Int(n)) if (1..=MAX_CONCURRENCY).contains(&n) => out.concurrency = Some(n as u32),
            _ => r.error(
                c.pos,
                Code::DagType,
                format!("`concurrency` must be a whole number from 1 to {MAX_CONCURRENCY}, found {}", c.what()),
            ),
        }
    }
    out
}

/// The manifest's `[run_strategy]`.
pub fn manifest(out: &mut String, s: &Strategy, src: &str) {
    let Some((rs, pos)) = &s.run else { return };
    let _ = writeln!(
        out,
        "\n# run_strategy ({src}:{}:{}): enforced by the server at each start.\n[run_strategy]\nmode = \"{}\"",
        pos.line,
        pos.col,
        rs.mode()
    );
    if let RunStrategy::Parallel { limit } = rs {
        let _ = writeln!(out, "limit = {limit}");
    }
}

/// The `match` lines that hold a step while `concurrency` steps run (a
/// noop ends in the rule that starts it, so it is never held).
pub fn guard(out: &mut String, s: &Strategy, step: &Step) {
    let Some(n) = s.concurrency else { return };
    if step.ty == StepType::Noop {
        return;
    }
    let _ = writeln!(out, "        busy: count(Step(state == \"running\"))\n        test(busy < {n})");
}
