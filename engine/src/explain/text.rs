//! Explanations as text for people (`stoa explain`, `stoa test` failures).

use std::fmt::Write;

use super::{By, ConditionKind, FactExplain, FactRef, Firing, Now, Origin, Reason, RuleExplain};
use crate::fact::FactId;
use crate::timeline::SectionKind;

fn facts(fs: &[FactRef]) -> String {
    fs.iter().map(|f| format!("f{} {} v{}", f.id, f.ty, f.version)).collect::<Vec<_>>().join(", ")
}

fn matched(fs: &[(FactId, u32)]) -> String {
    if fs.is_empty() {
        return "no fact".into();
    }
    fs.iter().map(|(id, v)| format!("f{id} v{v}")).collect::<Vec<_>>().join(", ")
}

fn section(s: SectionKind) -> &'static str {
    s.as_str()
}

fn firing(out: &mut String, f: &Firing) {
    let _ = writeln!(out, "  turn {} #{} {:<8} matched {}", f.turn, f.seq, section(f.section), matched(&f.matched));
    for c in &f.changes {
        let _ = writeln!(out, "      {c}");
    }
}

/// A rule's explanation as text.
pub fn rule_text(e: &RuleExplain) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "rule \"{}\" ({}, salience {}) in {} ({} {}, {})",
        e.rule, e.at, e.salience, e.workflow, e.pack, e.version, e.status
    );
    out.push('\n');
    match e.fired {
        0 => out.push_str("never fired\n"),
        n => {
            let shown = e.firings.len() as u64;
            let _ = writeln!(
                out,
                "fired {n} time{}{}:",
                if n == 1 { "" } else { "s" },
                if shown < n { format!(" (last {shown})") } else { String::new() }
            );
            for f in &e.firings {
                firing(&mut out, f);
            }
        }
    }
    out.push('\n');
    match &e.now {
        Now::Matches { total, matches } => {
            let _ = writeln!(out, "matches now: {total} complete match{}", if *total == 1 { "" } else { "es" });
            for m in matches {
                let values: Vec<String> = m.values.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                let what = match (m.facts.is_empty(), values.is_empty()) {
                    (true, true) => "(no fact)".to_string(),
                    (false, true) => facts(&m.facts),
                    (true, false) => values.join(", "),
                    (false, false) => format!("{}; {}", facts(&m.facts), values.join(", ")),
                };
                let _ = writeln!(out, "  {what}");
                let _ = writeln!(out, "    {}", reason(&m.reason));
            }
        }
        Now::NoMatch { dies_at, why, .. } => {
            let _ = writeln!(out, "not matching now: condition {dies_at}: {why}");
        }
    }
    out.push('\n');
    let width = e.conditions.iter().map(|c| c.text.chars().count()).max().unwrap_or(0).min(60);
    for c in &e.conditions {
        let counts = match (&c.kind, &c.ty) {
            (ConditionKind::Test, _) | (_, None) => String::new(),
            (_, Some(ty)) => {
                format!("{ty}: {} fact{}, {} pass", c.facts, if c.facts == 1 { "" } else { "s" }, c.passing)
            }
        };
        let partial = match c.partial_matches {
            Some(n) => format!("→ {n}{} partial", if c.truncated { "+" } else { "" }),
            None => "(not reached)".into(),
        };
        let mark = match &e.now {
            Now::NoMatch { dies_at, .. } if *dies_at == c.index => "   ✗ every partial match dies here",
            _ => "",
        };
        let _ = writeln!(out, "  {:>2}  {:<width$}  {counts:<28} {partial}{mark}", c.index, c.text);
        if !c.blockers.is_empty() {
            let _ = writeln!(out, "      blocked by {}", facts(&c.blockers));
        }
    }
    if let Now::NoMatch { closest: Some(cl), .. } = &e.now {
        out.push('\n');
        let bound: Vec<String> =
            cl.bound.iter().map(|(n, f)| format!("{n} = f{} {} v{}", f.id, f.ty, f.version)).collect();
        let mut head = "closest:".to_string();
        if !bound.is_empty() {
            let _ = write!(head, " {}", bound.join(", "));
        }
        if let Some(c) = &cl.candidate {
            let _ =
                write!(head, "{} trying f{} {} v{}", if bound.is_empty() { "" } else { ";" }, c.id, c.ty, c.version);
        }
        let _ = writeln!(out, "{head}");
        let _ = writeln!(out, "  fails `{}` ({})", cl.constraint, cl.at);
        let _ = writeln!(out, "        {}", cl.evaluated);
    }
    out
}

fn reason(r: &Reason) -> String {
    match r {
        Reason::AlreadyFired { turn, seq } => {
            format!("already fired for these facts (turn {turn}, #{seq}): a rule fires once per match")
        }
        Reason::NoLoop { turn, seq } => {
            format!("no-loop: it fired for these facts (turn {turn}, #{seq}) and its own change made these versions")
        }
        Reason::Waiting { invocation, function } => {
            format!("fired; its action waits on {invocation} ({function}) for reaction or error")
        }
        Reason::Queued { position, ahead } => {
            format!("on the agenda at position {position}, behind: {}", ahead.join(", "))
        }
        Reason::Finished { status } => format!("the workflow is {status}: no rule fires"),
        Reason::Refracted => "matched when the workflow was loaded or upgraded, and counted as fired".into(),
    }
}

fn origin(o: &Origin) -> String {
    let what = format!("{} f{} {} v{}", o.change, o.fact.id, o.fact.ty, o.fact.version);
    match &o.by {
        By::Firing { rule, section, seq, matched: m } => {
            let sec = if *section == SectionKind::Action { String::new() } else { format!(" [{}]", section.as_str()) };
            format!("{what} at turn {} #{}: by \"{rule}\"{sec} (#{seq}) matching {}", o.turn, o.seq, matched(m))
        }
        By::Input { input } => format!("{what} at turn {} #{}: input ({input})", o.turn, o.seq),
    }
}

/// A fact's derivation as text.
pub fn fact_text(e: &FactExplain) -> String {
    let mut out = String::new();
    let now = match (e.current, &e.fields) {
        (Some(v), Some(fields)) => format!("v{v} now: {fields}"),
        _ => "retracted".to_string(),
    };
    let _ = writeln!(out, "fact f{} {} in {}: {now}", e.fact, e.ty, e.workflow);
    out.push('\n');
    for v in &e.versions {
        let _ = writeln!(out, "  {}", origin(v));
    }
    if !e.derivation.is_empty() {
        out.push_str("\nfrom:\n");
        for o in &e.derivation {
            let _ = writeln!(out, "  {}", origin(o));
        }
        if e.truncated {
            let _ = writeln!(out, "  ... (stopped after {} versions)", e.derivation.len());
        }
    }
    out
}
