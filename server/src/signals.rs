//! Signals: named events with a JSON payload, sent through the API or
//! emitted by rules (`emit`). A signal goes to one workflow, or else to the
//! packs that subscribe to its name in `pack.toml` (`start`: one workflow
//! per signal id; `deliver`: a `Signal` fact into each running workflow).
//!
//! Each signal id is acted on once per tenant: its record (`signal`,
//! `<tenant>/<id>`) is written before routing and marked routed after, and
//! starts use `signal:<id>:<pack>` as request id, so a repeat or a restart
//! in the middle starts nothing twice. The records are the lineage: what a
//! signal started and unblocked, and (`signal-by`) what each workflow
//! emitted.

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use stoa_engine::store::SIGNAL_OUTBOX;
use stoa_engine::workflow::{Input, Origin, Signal};
use stoa_engine::WorkflowId;

use crate::error::ApiError;
use crate::runtime::Runtime;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SignalRecord {
    pub signal: Signal,
    pub started: Vec<WorkflowId>,
    pub delivered: Vec<WorkflowId>,
    pub routed: bool,
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

/// Longest lineage chain shown, and most signals in it.
const MAX_DEPTH: u32 = 32;
const MAX_SIGNALS: usize = 1000;

impl Runtime {
    fn signal_record(&self, tenant: &str, id: &str) -> Result<Option<SignalRecord>, ApiError> {
        let v = self.store.get_aux("signal", &format!("{tenant}/{id}")).map_err(ApiError::from)?;
        v.map(|v| serde_json::from_value(v).map_err(internal)).transpose()
    }

    fn put_signal_record(&self, tenant: &str, rec: &SignalRecord) -> Result<(), ApiError> {
        let v = serde_json::to_value(rec).map_err(internal)?;
        self.store.put_aux("signal", &format!("{tenant}/{}", rec.signal.id), &v).map_err(ApiError::from)
    }

    /// Routes a signal once. Returns its record and whether this call
    /// routed it (false: the id was routed before).
    pub(crate) async fn route_signal(
        self: &Arc<Self>,
        tenant: &str,
        signal: Signal,
        target: Option<WorkflowId>,
    ) -> Result<(SignalRecord, bool), ApiError> {
        let _guard = self.route_locks.lock(&signal.id).await;
        let mut rec = match self.signal_record(tenant, &signal.id)? {
            Some(r) if r.routed => {
                self.forget_emitted(&signal);
                return Ok((r, false));
            }
            Some(r) => r,
            None => SignalRecord { signal: signal.clone(), started: vec![], delivered: vec![], routed: false },
        };
        self.put_signal_record(tenant, &rec)?;
        match target {
            Some(wf) => {
                let key = format!("signal/{tenant}/{}/{wf}", signal.id);
                if self.store.request(&key).map_err(ApiError::from)?.is_none() {
                    self.turn_keyed(tenant, &wf, Input::Signal { signal: signal.clone() }, Some(key)).await?;
                }
                rec.delivered.push(wf);
            }
            None => self.route_to_subscribers(tenant, &signal, &mut rec).await?,
        }
        rec.routed = true;
        self.put_signal_record(tenant, &rec)?;
        if let Some(from) = &signal.from {
            let key = format!("{tenant}/{from}/{}", signal.id);
            self.store
                .put_aux("signal-by", &key, &serde_json::Value::String(signal.id.clone()))
                .map_err(ApiError::from)?;
        }
        self.forget_emitted(&signal);
        Ok((rec, true))
    }

    fn forget_emitted(&self, signal: &Signal) {
        if signal.from.is_some() {
            if let Err(e) = self.store.delete_aux(SIGNAL_OUTBOX, &signal.id) {
                tracing::error!(error = %e, "dropping a routed signal");
            }
        }
    }

    async fn route_to_subscribers(
        self: &Arc<Self>,
        tenant: &str,
        signal: &Signal,
        rec: &mut SignalRecord,
    ) -> Result<(), ApiError> {
        if self.opts.placement.is_cluster() {
            // A subscribing pack may have been deployed through another
            // server a moment ago.
            let rt = self.clone();
            let t = tenant.to_string();
            self.blocking(move || rt.refresh_packs(&t)).await.map_err(internal)??;
        }
        let subscribers: Vec<(String, bool, bool)> = self
            .packs(tenant)
            .into_iter()
            .filter_map(|(name, _, pack)| pack.manifest.signals.get(&signal.name).map(|s| (name, s.start, s.deliver)))
            .collect();
        for (pack, start, deliver) in subscribers {
            if start {
                let request = format!("signal:{}:{pack}", signal.id);
                let origin = Origin::Signal { signal: signal.id.clone() };
                match self.start_as(tenant, &pack, vec![signal.fact()], &request, origin).await {
                    Ok((wf, _)) if !rec.started.contains(&wf) => rec.started.push(wf),
                    Ok(_) => {}
                    // The pack's run strategy drops this start (first_only
                    // while one runs): the signal still goes everywhere else.
                    Err(ApiError::FailedPrecondition(why)) if self.run_strategy_of(tenant, &pack).is_some() => {
                        tracing::info!(
                            tenant,
                            pack,
                            signal = signal.id,
                            why,
                            "a signal subscription's start was dropped"
                        );
                    }
                    Err(e) => return Err(e),
                }
            }
            if deliver {
                for wf in self.running_of(tenant, &pack)? {
                    if rec.delivered.contains(&wf) || rec.started.contains(&wf) {
                        continue;
                    }
                    // Applied before a restart interrupted this routing: not again.
                    let key = format!("signal/{tenant}/{}/{wf}", signal.id);
                    if self.store.request(&key).map_err(ApiError::from)?.is_some() {
                        rec.delivered.push(wf);
                        continue;
                    }
                    let input = Input::Signal { signal: signal.clone() };
                    match self.turn_keyed(tenant, &wf, input, Some(key)).await {
                        Ok(_) => rec.delivered.push(wf),
                        // Finished meanwhile: it no longer takes signals.
                        Err(ApiError::Rejected(_)) | Err(ApiError::NotFound(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(())
    }

    /// Running workflows of a pack, newest first, from the store's list
    /// index: as many reads as the pack has running workflows, not as the
    /// tenant has workflows (run strategies ask at every start and end).
    pub(crate) fn running_of(&self, tenant: &str, pack: &str) -> Result<Vec<WorkflowId>, ApiError> {
        use stoa_engine::store::{Family, ListQuery, ListStatus};
        let mut out: Vec<WorkflowId> = Vec::new();
        let mut last: Option<(u64, WorkflowId)> = None;
        loop {
            let q = ListQuery {
                tenant,
                family: Family::Pack(pack),
                status: Some(ListStatus::Running),
                since_ms: None,
                until_ms: None,
                before: last.as_ref().map(|(t, id)| (*t, id)),
                limit: 1000,
            };
            let page = self.store.list(&q).map_err(ApiError::from)?;
            let full = page.len() == q.limit;
            let next = page.last().map(|m| (m.created_ms, m.id.clone()));
            out.extend(page.into_iter().map(|m| m.id));
            match next {
                Some(n) if full => last = Some(n),
                _ => break,
            }
        }
        Ok(out)
    }

    /// The signals a workflow emitted that were routed (at most `limit`),
    /// with what each started and unblocked.
    pub fn emitted_by(&self, tenant: &str, wf: &WorkflowId, limit: usize) -> Result<Vec<SignalRecord>, ApiError> {
        let mut out = Vec::new();
        for (_, v) in self.store.scan_aux("signal-by", &format!("{tenant}/{wf}/")).map_err(ApiError::from)? {
            if out.len() >= limit {
                break;
            }
            if let Some(r) = v.as_str().and_then(|s| self.signal_record(tenant, s).ok().flatten()) {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The chain around a signal: the signals upstream of it (the one that
    /// started the workflow that emitted it, and so on), then it and what
    /// its workflows emitted, depth-first. Each with its depth.
    pub fn lineage(&self, tenant: &str, id: &str) -> Result<Vec<(u32, SignalRecord)>, ApiError> {
        let Some(rec) = self.signal_record(tenant, id)? else {
            return Err(ApiError::NotFound(format!("signal {id} was never sent")));
        };
        let mut upstream = Vec::new();
        let mut cur = rec.signal.from.clone();
        while let Some(wf) = cur.take() {
            if upstream.len() as u32 >= MAX_DEPTH {
                break;
            }
            let origin = self.get(tenant, &wf).ok().map(|s| s.meta.origin);
            let Some(Origin::Signal { signal }) = origin else { break };
            let Some(up) = self.signal_record(tenant, &signal)? else { break };
            cur = up.signal.from.clone();
            upstream.push(up);
        }
        upstream.reverse();
        let base = upstream.len() as u32;
        let mut out: Vec<(u32, SignalRecord)> = upstream.into_iter().enumerate().map(|(i, r)| (i as u32, r)).collect();
        let mut stack = vec![(base, rec)];
        while let Some((depth, r)) = stack.pop() {
            if out.len() >= MAX_SIGNALS {
                break;
            }
            let mut next = Vec::new();
            if depth < base + MAX_DEPTH {
                for wf in r.started.iter().chain(&r.delivered) {
                    for (_, v) in
                        self.store.scan_aux("signal-by", &format!("{tenant}/{wf}/")).map_err(ApiError::from)?
                    {
                        if let Some(s) = v.as_str().and_then(|s| self.signal_record(tenant, s).ok().flatten()) {
                            next.push((depth + 1, s));
                        }
                    }
                }
            }
            out.push((depth, r));
            stack.extend(next.into_iter().rev());
        }
        Ok(out)
    }
}
