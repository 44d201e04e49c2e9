//! Child workflows: a rule's `start_workflow(pack, facts)` is an invocation
//! whose function is `workflow:<pack>`. The server starts the child with
//! the invocation id as its request id (so a restart cannot start it
//! twice), answers the parent when the child ends, and cancels the child
//! when the parent stops waiting for it. Each step is tried again while the
//! store cannot write (`retry`), until `stop`.

use std::sync::Arc;
use stoa_engine::workflow::{ErrorKind, Input, Invocation, Origin, Outcome, Status, CHILD_PREFIX};
use stoa_engine::InvocationId;
use stoa_rules::testcase::FactSpec;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::retry::until_stored;
use crate::runtime::{child_outcome, tenant_of, Runtime};

fn child_request(inv: &InvocationId) -> String {
    format!("child:{inv}")
}

impl Runtime {
    pub(crate) async fn start_child(self: &Arc<Self>, inv: Invocation, stop: &CancellationToken) {
        let tenant = tenant_of(&inv.workflow).to_string();
        let pack = &inv.function[CHILD_PREFIX.len()..];
        let args = inv.args.to_json();
        let facts: Result<Vec<FactSpec>, _> = serde_json::from_value(args["facts"].clone());
        let ancestry: Vec<String> = serde_json::from_value(args["ancestry"].clone()).unwrap_or_default();
        let fail = |message: String| Outcome::Error {
            kind: ErrorKind::Failed,
            message,
            attempts: 1,
            retryable: false,
            failed: vec![],
        };
        let origin = Origin::Parent { invocation: inv.id.clone(), ancestry };
        let what = format!("starting the child of {}", inv.id);
        let request = child_request(&inv.id);
        let started = match facts {
            Err(e) => Err(ApiError::InvalidArgument(format!("facts: {e}"))),
            Ok(facts) => {
                let start = || self.start_as(&tenant, pack, facts.clone(), &request, origin.clone());
                until_stored(&*self.store, &self.clock, stop, &what, start).await
            }
        };
        let pending = || async { self.store.pending(&inv.id).map_err(ApiError::from) };
        let outcome = match started {
            // The parent stopped waiting while the child was starting.
            Ok((child, _)) if !until_stored(&*self.store, &self.clock, stop, &what, pending).await.unwrap_or(true) => {
                let reason = format!("its parent {} no longer waits for it", inv.workflow);
                let cancel = || self.turn(&tenant, &child, Input::Cancel { reason: reason.clone(), grace_ms: None });
                let _ = until_stored(&*self.store, &self.clock, stop, &what, cancel).await;
                return;
            }
            // A new child answers when it ends (see `after_commit`).
            Ok((_, true)) => return,
            // Started before a restart: if it already ended, answer now.
            Ok((child, false)) => {
                let read = || async { self.get(&tenant, &child) };
                match until_stored(&*self.store, &self.clock, stop, &what, read).await {
                    Ok(snap) if snap.meta.status != Status::Running => child_outcome(&snap.meta),
                    _ => return,
                }
            }
            // Stopping: the parent's invocation, still stored, starts it
            // after the restart.
            Err(ApiError::Unavailable(_)) => return,
            Err(e) => fail(format!("start_workflow(\"{pack}\"): {e}")),
        };
        let what = format!("answering parent invocation {}", inv.id);
        if let Err(e) =
            until_stored(&*self.store, &self.clock, stop, &what, || self.deliver(&inv.id, outcome.clone())).await
        {
            tracing::error!(invocation = %inv.id, error = %e, "answering a parent");
        }
    }

    /// The parent no longer waits for `inv`; if it was a child, cancel it
    /// (its own children follow the same way).
    pub(crate) async fn cancel_child(self: &Arc<Self>, inv: InvocationId, stop: &CancellationToken) {
        let Some(parent) = inv.workflow() else { return };
        let tenant = tenant_of(&parent).to_string();
        // A function's invocation has no workflow under that id: NOT_FOUND.
        let reason = format!("its parent {parent} no longer waits for it");
        let what = format!("cancelling the child of {inv}");
        let cancel = || async {
            let child = self.workflow_for_request(&tenant, &child_request(&inv))?;
            self.turn(&tenant, &child, Input::Cancel { reason: reason.clone(), grace_ms: None }).await
        };
        let _ = until_stored(&*self.store, &self.clock, stop, &what, cancel).await;
    }
}
