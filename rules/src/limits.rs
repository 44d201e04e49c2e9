//! The limits of a pack's turns and scripts (`[limits]` in `pack.toml`), and
//! how they meet the ceilings an operator sets per tenant: a pack may lower
//! any limit, never raise one past its tenant's ceiling. Every limit is a
//! positive number; none has an "unlimited" value.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::diagnostic::{Code, Diagnostic, Pos};

/// Limits on one workflow's turns and scripts.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Rule firings in one turn.
    pub max_firings_per_turn: u64,
    /// Rhai operations in one section or constraint run.
    pub max_operations: u64,
    /// Nested function calls in a script.
    pub max_call_depth: usize,
    /// Bytes of a string a script builds.
    pub max_string_size: usize,
    /// Elements of the arrays a script builds (nested ones counted in).
    pub max_array_size: usize,
    /// Entries of the maps a script builds (nested ones counted in).
    pub max_map_size: usize,
    /// Facts in one workflow.
    pub max_facts: usize,
    /// Wall-clock time of one turn, in milliseconds.
    pub max_turn_ms: u64,
    /// Estimated memory of one workflow during a turn (facts and their
    /// values, partial matches, the turn's timeline), in MiB.
    pub max_memory_mb: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_firings_per_turn: 1_000_000,
            max_operations: 1_000_000,
            max_call_depth: 32,
            max_string_size: 1 << 20,
            max_array_size: 100_000,
            max_map_size: 10_000,
            max_facts: 10_000_000,
            max_turn_ms: 10_000,
            max_memory_mb: 256,
        }
    }
}

impl Limits {
    /// The highest ceilings a server uses unless its operator says
    /// otherwise (see docs/operations.md).
    pub fn default_ceilings() -> Limits {
        Limits {
            max_firings_per_turn: 10_000_000,
            max_operations: 5_000_000,
            max_call_depth: 256,
            max_string_size: 16 << 20,
            max_array_size: 1_000_000,
            max_map_size: 100_000,
            max_facts: 10_000_000,
            max_turn_ms: 60_000,
            max_memory_mb: 1024,
        }
    }

    /// Every limit by its `pack.toml` name.
    pub fn entries(&self) -> [(&'static str, u64); 9] {
        [
            ("max_firings_per_turn", self.max_firings_per_turn),
            ("max_operations", self.max_operations),
            ("max_call_depth", self.max_call_depth as u64),
            ("max_string_size", self.max_string_size as u64),
            ("max_array_size", self.max_array_size as u64),
            ("max_map_size", self.max_map_size as u64),
            ("max_facts", self.max_facts as u64),
            ("max_turn_ms", self.max_turn_ms),
            ("max_memory_mb", self.max_memory_mb),
        ]
    }

    pub(crate) fn set(&mut self, name: &str, v: u64) {
        let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        match name {
            "max_firings_per_turn" => self.max_firings_per_turn = v,
            "max_operations" => self.max_operations = v,
            "max_call_depth" => self.max_call_depth = size(v),
            "max_string_size" => self.max_string_size = size(v),
            "max_array_size" => self.max_array_size = size(v),
            "max_map_size" => self.max_map_size = size(v),
            "max_facts" => self.max_facts = size(v),
            "max_turn_ms" => self.max_turn_ms = v,
            "max_memory_mb" => self.max_memory_mb = v,
            other => unreachable!("no limit named {other}"),
        }
    }

    /// The names of limits that are zero (which would mean "unlimited" to
    /// the script engine: never accepted).
    pub fn zeros(&self) -> Vec<&'static str> {
        self.entries().into_iter().filter(|(_, v)| *v == 0).map(|(k, _)| k).collect()
    }

    /// Each limit lowered to its ceiling.
    pub fn clamped(&self, ceilings: &Limits) -> Limits {
        let mut out = self.clone();
        for ((name, v), (_, c)) in self.entries().into_iter().zip(ceilings.entries()) {
            if v > c {
                out.set(name, c);
            }
        }
        out
    }
}

/// The limits a pack sets itself, with where it sets them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Explicit(pub BTreeMap<&'static str, Pos>);

/// What a pack's limits become under its tenant's ceilings.
pub struct Ceilings<'a> {
    pub limits: &'a Limits,
    /// Who sets them, for messages ("tenant `acme`").
    pub owner: &'a str,
    /// Whether a limit the pack sets above its ceiling is an error (a
    /// deploy), or lowered like the others (a stored pack whose ceilings
    /// were lowered since: its workflows exist).
    pub reject_explicit: bool,
}

impl Ceilings<'_> {
    /// The effective limits: a limit the pack sets above its ceiling is an
    /// error (at its line in `pack.toml`); one it leaves at the default is
    /// lowered to the ceiling silently.
    pub fn apply(
        &self,
        path: &std::path::Path,
        limits: &Limits,
        explicit: &Explicit,
    ) -> Result<Limits, Vec<Diagnostic>> {
        let mut errors = Vec::new();
        for ((name, v), (_, c)) in limits.entries().into_iter().zip(self.limits.entries()) {
            if let Some(pos) = explicit.0.get(name).filter(|_| v > c && self.reject_explicit) {
                errors.push(Diagnostic::error(
                    path,
                    *pos,
                    Code::Limit,
                    format!(
                        "[limits] {name} = {v} is above the ceiling of {} ({c}); lower it or ask the operator",
                        self.owner
                    ),
                ));
            }
        }
        if errors.is_empty() {
            Ok(limits.clamped(self.limits))
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fit_under_the_default_ceilings() {
        let (d, c) = (Limits::default(), Limits::default_ceilings());
        assert_eq!(d.clamped(&c), d);
        assert!(d.zeros().is_empty() && c.zeros().is_empty());
    }

    #[test]
    fn an_explicit_limit_above_its_ceiling_is_an_error_and_a_default_one_is_lowered() {
        let ceilings = Limits { max_operations: 1000, max_call_depth: 8, ..Limits::default_ceilings() };
        let c = Ceilings { limits: &ceilings, owner: "tenant `a`", reject_explicit: true };
        let path = std::path::Path::new("pack.toml");
        let mut explicit = Explicit::default();
        let ok = c.apply(path, &Limits::default(), &explicit).unwrap();
        assert_eq!((ok.max_operations, ok.max_call_depth), (1000, 8));
        explicit.0.insert("max_operations", Pos::new(7, 1));
        let errs = c.apply(path, &Limits::default(), &explicit).unwrap_err();
        assert_eq!(
            errs.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
            ["pack.toml:7:1: error[E0012]: [limits] max_operations = 1000000 is above the ceiling of tenant `a` (1000); lower it or ask the operator"]
        );
        let stored = Ceilings { reject_explicit: false, ..c };
        assert_eq!(stored.apply(path, &Limits::default(), &explicit).unwrap().max_operations, 1000);
    }
}
