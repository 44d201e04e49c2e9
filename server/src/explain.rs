//! The `Explain` RPC: why a rule of a workflow fired or does not, or where
//! a fact came from, read from the committed state in the store (any server
//! of a cluster answers, owner or not, and nothing of the workflow changes).
//!
//! Explaining evaluates the pack's constraints, tenant code: it runs on a
//! turn thread (`Pool`), under the tenant's turn time limit, like a turn.

use std::sync::Arc;

use stoa_engine::explain::{self, ExplainError, History, Subject};
use stoa_engine::WorkflowId;
use stoa_proto::v1 as pb;

use crate::error::ApiError;
use crate::runtime::Runtime;

/// Timeline entries read per store call, and at most in all: a longer
/// history is explained from its first `MAX_ENTRIES` entries.
const PAGE: usize = 10_000;
const MAX_ENTRIES: usize = 2_000_000;

pub(crate) async fn explain(
    rt: &Arc<Runtime>,
    tenant: &str,
    id: WorkflowId,
    req: pb::ExplainRequest,
) -> Result<String, ApiError> {
    let target = match (req.rule.is_empty(), req.fact) {
        (false, 0) => Ok(req.rule),
        (true, f) if f > 0 => Err(f),
        _ => return Err(ApiError::InvalidArgument("name either a rule or a fact (not both)".into())),
    };
    let (rt2, tenant2) = (rt.clone(), tenant.to_string());
    let job = move || -> Result<String, ApiError> {
        let snap = rt2.get(&tenant2, &id)?;
        // A version not in memory is compiled here, on the turn thread.
        let pack = rt2.pack(&tenant2, &snap.meta.pack, Some(&snap.meta.pack_version))?;
        let max_ms = pack.manifest.limits.max_turn_ms;
        let _budget = stoa_rules::budget::turn(max_ms);
        let focus = target.as_ref().ok().map(String::as_str);
        let mut history = History::new(focus);
        let mut from = 1;
        while from < MAX_ENTRIES as u64 {
            let page = rt2.timeline(&tenant2, &id, from, PAGE)?;
            let Some(last) = page.last() else { break };
            from = last.seq + 1;
            for e in &page {
                history.push(e);
            }
            if page.len() < PAGE {
                break;
            }
        }
        let subject = Subject::of_snapshot(&pack, &snap);
        let json = match &target {
            Ok(rule) => explain::rule(&subject, &history, rule).map(|e| serde_json::to_string(&e)),
            Err(fact) => explain::fact(&subject, &history, *fact).map(|e| serde_json::to_string(&e)),
        };
        match json {
            Ok(j) => j.map_err(|e| ApiError::Internal(format!("explain: {e}"))),
            Err(e @ (ExplainError::UnknownRule { .. } | ExplainError::UnknownFact { .. })) => {
                Err(ApiError::NotFound(e.to_string()))
            }
        }
    };
    rt.run_tenant_job(tenant, job).await?
}
