//! Which deployed version of a pack runs: `stable` for every workflow,
//! except a canary fraction (chosen by a hash of the workflow id, so a
//! workflow stays in or out) that runs the canary version; and the plans
//! that move workflows from one version to another. Data only: acting on a
//! rollout is `upgrade`'s.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use stoa_engine::workflow::UpgradePlan;
use stoa_engine::WorkflowId;
use stoa_rules::compile::{fnv1a, Pack};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub stable: String,
    pub canary: Option<Canary>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Canary {
    pub version: String,
    pub fraction: f64,
}

/// Whether a workflow is in a canary of `fraction` (stable per id).
pub fn in_fraction(id: &WorkflowId, fraction: f64) -> bool {
    let bucket = fnv1a(id.as_str().as_bytes(), 0x9e3779b97f4a7c15) % 10_000;
    (bucket as f64) < fraction * 10_000.0
}

/// Upgrade plans by the version they move from, made once per upgrade job
/// (or preview) and shared by its workflows.
#[derive(Clone, Default)]
pub(crate) struct Plans(Arc<std::sync::Mutex<std::collections::HashMap<u64, Arc<UpgradePlan>>>>);

impl Plans {
    pub fn get(&self, from: &Pack, to: &Arc<Pack>) -> Arc<UpgradePlan> {
        let mut plans = self.0.lock().expect("plans lock");
        let plan = plans.entry(from.digest).or_insert_with(|| Arc::new(UpgradePlan::between(from, to)));
        if Arc::ptr_eq(plan.to(), to) {
            return plan.clone();
        }
        Arc::new(UpgradePlan::between(from, to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_canary_fraction_selects_about_that_share_and_always_the_same_workflows() {
        let ids: Vec<WorkflowId> = (0..20_000).map(|i| WorkflowId::new(format!("a.{i:016x}"))).collect();
        for f in [0.01, 0.1, 0.5] {
            let n = ids.iter().filter(|id| in_fraction(id, f)).count() as f64 / ids.len() as f64;
            assert!((n - f).abs() < f * 0.2 + 0.002, "fraction {f}: {n}");
        }
        // Growing a canary keeps the workflows already in it.
        assert!(ids.iter().filter(|id| in_fraction(id, 0.1)).all(|id| in_fraction(id, 0.5)));
        assert!(ids.iter().all(|id| in_fraction(id, 1.0)));
    }
}
