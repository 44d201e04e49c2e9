//! Whether a rollout's schemas fit the facts its live workflows hold: the
//! schema changes from each version they run to the version they would
//! move to (`stoa_rules::manifest::schema_changes`), with how many of
//! those workflows, and of their facts, each change reaches. A deploy's
//! dry run reports them; a rollout, a deploy or a rollback that would move
//! live facts across an incompatible change is refused unless forced.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use stoa_engine::workflow::{Status, Workflow};
use stoa_engine::WorkflowId;
use stoa_rules::compile::Pack;
use stoa_rules::manifest::{schema_changes, SchemaChange, BUILTIN_TYPES};

use crate::error::ApiError;
use crate::rollout::in_fraction;
use crate::runtime::Runtime;
use crate::upgrade::Mode;

/// One schema change and what it reaches.
#[derive(Clone, Debug, PartialEq)]
pub struct Impact {
    pub change: SchemaChange,
    /// The version the workflows run now.
    pub from: String,
    /// Live workflows on `from` the rollout moves that hold facts of the
    /// changed type (for strict mode, of a type without a schema).
    pub workflows: u64,
    pub facts: u64,
}

impl Impact {
    /// Whether this change stops the rollout (unless forced).
    pub fn blocks(&self) -> bool {
        !self.change.compatible && self.facts > 0
    }

    pub fn describe(&self) -> String {
        let at = match &self.change.field {
            Some(f) => format!("{}.{f}", self.change.ty),
            None => self.change.ty.clone(),
        };
        format!(
            "{at}: {} (from version {}; {} fact(s) in {} live workflow(s))",
            self.change.what, self.from, self.facts, self.workflows
        )
    }
}

/// Refuses a rollout that `impacts` block, naming each blocking change.
pub fn refuse_blocking(impacts: &[Impact], what: &str) -> Result<(), ApiError> {
    let blocking: Vec<String> = impacts.iter().filter(|i| i.blocks()).map(|i| format!("  {}", i.describe())).collect();
    if blocking.is_empty() {
        return Ok(());
    }
    Err(ApiError::FailedPrecondition(format!(
        "{what} would move live facts across {} incompatible schema change(s); nothing was changed \
         (force it, or roll out to new workflows only):\n{}",
        blocking.len(),
        blocking.join("\n")
    )))
}

impl Runtime {
    /// The schema changes moving `name`'s live workflows that `mode`
    /// selects to `target` would cross. Workflows are loaded (to count
    /// their facts) only when some version differs in its schemas, and,
    /// unless `all`, only for incompatible changes.
    pub(crate) async fn schema_impact(
        self: &Arc<Self>,
        tenant: &str,
        name: &str,
        target: &Arc<Pack>,
        mode: Mode,
        all: bool,
    ) -> Result<Vec<Impact>, ApiError> {
        if mode == Mode::NewOnly {
            return Ok(Vec::new());
        }
        let to = &target.manifest;
        // Live workflows the rollout moves, by the version they run.
        let mut by_version: BTreeMap<String, Vec<WorkflowId>> = BTreeMap::new();
        let mut after: Option<WorkflowId> = None;
        loop {
            let page = self.list(tenant, after.as_ref(), 1000)?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            for m in page {
                let moved = match mode {
                    Mode::Canary(f) => in_fraction(&m.id, f),
                    _ => true,
                };
                if m.pack == name && m.status == Status::Running && moved && m.pack_version != to.version {
                    by_version.entry(m.pack_version).or_default().push(m.id);
                }
            }
        }
        let mut out = Vec::new();
        for (from, ids) in by_version {
            let Some(old) = self.pack_version(tenant, name, &from) else {
                // A version no longer kept: its schemas cannot be read.
                continue;
            };
            let changes: Vec<SchemaChange> =
                schema_changes(&old.manifest, to).into_iter().filter(|c| all || !c.compatible).collect();
            if changes.is_empty() {
                continue;
            }
            let mut impacts: Vec<Impact> = changes
                .into_iter()
                .map(|change| Impact { change, from: from.clone(), workflows: 0, facts: 0 })
                .collect();
            let declared: Vec<String> = to.facts.keys().cloned().collect();
            for id in ids {
                let counts = self
                    .inspect(&id, |wf: &Workflow| {
                        let mut n: HashMap<String, u64> = HashMap::new();
                        for f in wf.facts() {
                            *n.entry(f.ty.name().to_string()).or_default() += 1;
                        }
                        n
                    })
                    .await?;
                let Some(counts) = counts else { continue };
                for i in &mut impacts {
                    let facts: u64 = match i.change.ty.as_str() {
                        // Strict mode: facts of types it would refuse.
                        "*" => counts
                            .iter()
                            .filter(|(ty, _)| !declared.contains(ty) && !BUILTIN_TYPES.contains(&ty.as_str()))
                            .map(|(_, n)| n)
                            .sum(),
                        ty => counts.get(ty).copied().unwrap_or(0),
                    };
                    if facts > 0 {
                        i.workflows += 1;
                        i.facts += facts;
                    }
                }
            }
            out.extend(impacts);
        }
        Ok(out)
    }
}
