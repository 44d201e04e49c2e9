//! Test coverage of a pack (`stoa test --coverage`): per rule, how often
//! each section ran across the tests, the first condition no partial match
//! ever passed, and the functions no rule called.
//!
//! The overall figure counts items: each section a rule has (a rule without
//! `action` counts its firing as one), and each condition of each rule. A
//! section is covered when it ran in some test, a condition when some
//! partial match passed it. It is the share covered, in percent.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use stoa_rules::compile::Pack;

use crate::harness::Report;
use crate::timeline::{Event, SectionKind};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Coverage {
    /// Covered items over all items, in percent (see the module).
    pub percent: f64,
    pub covered: u64,
    pub items: u64,
    pub rules: Vec<RuleCoverage>,
    /// Functions the manifest declares that no test called.
    pub functions_never_called: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleCoverage {
    pub rule: String,
    /// `file:line:col`.
    pub at: String,
    /// Runs of each section across the tests; `None` when the rule has no
    /// such section.
    pub action: Option<u64>,
    pub reaction: Option<u64>,
    pub error: Option<u64>,
    /// Firings (action runs, or matches of a rule without `action`).
    pub fired: u64,
    pub conditions: usize,
    /// The most conditions a partial match passed in any test.
    pub deepest: usize,
    /// The first condition never passed, as written, with its position.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub never_matched: Option<(String, String)>,
}

/// The coverage of `reports` (one per test) of `pack`.
pub fn coverage(pack: &Pack, reports: &[Report]) -> Coverage {
    let mut runs: HashMap<(&str, SectionKind), u64> = HashMap::new();
    let mut called: BTreeMap<&str, u64> = BTreeMap::new();
    let mut deepest = vec![0usize; pack.rules.len()];
    for r in reports {
        for e in &r.timeline {
            match &e.event {
                Event::Fired { rule, section, .. } => *runs.entry((rule.as_str(), *section)).or_default() += 1,
                Event::Invoked(i) => *called.entry(i.function.as_str()).or_default() += 1,
                _ => {}
            }
        }
        for (d, &reached) in deepest.iter_mut().zip(&r.reached) {
            *d = (*d).max(reached as usize);
        }
    }
    let (mut covered, mut items) = (0u64, 0u64);
    let mut rules = Vec::with_capacity(pack.rules.len());
    for (i, rule) in pack.rules.iter().enumerate() {
        let ran = |s: SectionKind| runs.get(&(rule.name.as_str(), s)).copied().unwrap_or(0);
        let fired = ran(SectionKind::Action);
        let action = rule.action.as_ref().map(|_| fired);
        let reaction = rule.reaction.as_ref().map(|_| ran(SectionKind::Reaction));
        let error = rule.error.as_ref().map(|_| ran(SectionKind::Error));
        for n in [Some(fired), reaction, error].into_iter().flatten() {
            items += 1;
            covered += u64::from(n > 0);
        }
        // A rule that fired passed every condition, whatever the network
        // recorded (a rebuilt network counts from its rebuild).
        let deep = if fired > 0 { rule.conditions.len() } else { deepest[i].min(rule.conditions.len()) };
        items += rule.conditions.len() as u64;
        covered += deep as u64;
        let never_matched = rule
            .condition_text
            .get(deep)
            .map(|c| (c.text.clone(), format!("{}:{}:{}", rule.file.display(), c.pos.line, c.pos.col)));
        rules.push(RuleCoverage {
            rule: rule.name.clone(),
            at: format!("{}:{}:{}", rule.file.display(), rule.pos.line, rule.pos.col),
            action,
            reaction,
            error,
            fired,
            conditions: rule.conditions.len(),
            deepest: deep,
            never_matched,
        });
    }
    let functions_never_called =
        pack.manifest.functions.keys().filter(|f| !called.contains_key(f.as_str())).cloned().collect();
    let percent = if items == 0 { 100.0 } else { (covered as f64 * 1000.0 / items as f64).floor() / 10.0 };
    Coverage { percent, covered, items, rules, functions_never_called }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::run_tests;
    use crate::testing::pack_with_tests;

    #[test]
    fn an_untested_error_section_and_an_unmatched_condition_are_reported() {
        let rules = r#"
rule "encode" {
    match { c: Chunk(done != true) }
    action { call("media.encode", #{ n: c.n }); }
    reaction { modify(c, #{ done: true }); }
    error { fail("encode failed"); }
}
rule "never" {
    match { c: Chunk(done == true) j: Job(id == c.job) }
    action { log("never"); }
}
"#;
        let p = pack_with_tests(
            rules,
            r#"
[[test]]
name = "encodes"
facts = [{ type = "Chunk", fields = { n = 1, job = "j1" } }]
[[test.mock]]
function = "media.encode"
returns = { ok = true }
"#,
        );
        let reports = run_tests(&p, None);
        assert!(reports.iter().all(Report::passed), "{:?}", reports[0].failures);
        let c = coverage(&p, &reports);
        let encode = &c.rules[0];
        assert_eq!((encode.action, encode.reaction, encode.error), (Some(1), Some(1), Some(0)));
        let never = &c.rules[1];
        assert_eq!((never.fired, never.deepest), (0, 1));
        assert_eq!(never.never_matched.as_ref().unwrap().0, "j: Job(id == c.job)");
        assert_eq!(c.functions_never_called, ["media.split"]);
        // Items: encode 3 sections + 1 condition, never 1 firing + 2
        // conditions; covered: 2 sections + 1 condition, 1 condition.
        assert_eq!((c.covered, c.items), (4, 7));
        assert_eq!(c.percent, 57.1);
    }
}
