//! The schedule RPCs of the `Stoa` service: field checks and wire types.

use stoa_proto::v1 as pb;
use stoa_rules::manifest::{CatchUp, ScheduleSpec};
use tonic::Status;

use super::{Definition, Schedule, Scheduler};

fn out(s: &Schedule, next: Vec<i64>) -> pb::Schedule {
    pb::Schedule {
        name: s.name.clone(),
        pack: s.pack.clone(),
        cron: s.cron.clone(),
        timezone: s.timezone.clone(),
        facts: s
            .facts
            .iter()
            .map(|f| pb::FactInput { r#type: f.ty.clone(), fields_json: f.fields.to_json().to_string() })
            .collect(),
        catch_up: s.catch_up.as_str().into(),
        max_catch_up: s.max_catch_up.unwrap_or(0),
        paused: s.paused,
        from_pack: s.from_pack,
        created_ms: s.created_ms,
        updated_ms: s.updated_ms,
        done_until_ms: s.cursor_ms,
        next_ms: next,
        runs: s
            .runs
            .iter()
            .map(|r| pb::ScheduleRun {
                due_ms: r.due_ms,
                started_ms: r.started_ms,
                workflow_id: r.workflow_id.clone(),
                created: r.created,
                kind: r.kind.as_str().into(),
            })
            .collect(),
        last_error: s.last_error.clone().unwrap_or_default(),
    }
}

fn name(n: &str) -> Result<&str, Status> {
    if n.is_empty() {
        return Err(Status::invalid_argument("name: required"));
    }
    Ok(n)
}

pub fn put(s: &Scheduler, tenant: &str, req: pb::PutScheduleRequest) -> Result<pb::Schedule, Status> {
    if req.cron.trim().is_empty() {
        return Err(Status::invalid_argument("cron: required, e.g. \"0 */5 * * * *\" or \"@hourly\""));
    }
    let catch_up = CatchUp::parse(&req.catch_up).ok_or_else(|| {
        Status::invalid_argument(format!("catch_up: `{}`: expected \"skip\", \"one\" or \"all\"", req.catch_up))
    })?;
    if req.max_catch_up > 0 && catch_up != CatchUp::All {
        return Err(Status::invalid_argument("max_catch_up: applies only with catch_up = \"all\""));
    }
    let facts = crate::input::facts_in(req.facts)?;
    let def = Definition {
        name: req.name,
        pack: req.pack,
        spec: ScheduleSpec {
            cron: req.cron.trim().to_string(),
            timezone: if req.timezone.is_empty() { "UTC".into() } else { req.timezone },
            facts,
            catch_up,
            max_catch_up: (req.max_catch_up > 0).then_some(req.max_catch_up),
        },
        paused: req.paused,
    };
    let rec = s.put(tenant, def, false)?;
    let (rec, next) = s.get(tenant, &rec.name)?;
    Ok(out(&rec, next))
}

pub fn get(s: &Scheduler, tenant: &str, req: pb::ScheduleRef) -> Result<pb::Schedule, Status> {
    let (rec, next) = s.get(tenant, name(&req.name)?)?;
    Ok(out(&rec, next))
}

pub fn list(s: &Scheduler, tenant: &str) -> pb::ListSchedulesResponse {
    pb::ListSchedulesResponse { schedules: s.list(tenant).into_iter().map(|(r, n)| out(&r, n)).collect() }
}

pub fn pause(s: &Scheduler, tenant: &str, req: pb::ScheduleRef, paused: bool) -> Result<pb::Schedule, Status> {
    let n = name(&req.name)?;
    let rec = if paused { s.pause(tenant, n)? } else { s.resume(tenant, n)? };
    let (rec, next) = s.get(tenant, &rec.name)?;
    Ok(out(&rec, next))
}

pub async fn trigger(
    s: &Scheduler,
    tenant: &str,
    req: pb::TriggerScheduleRequest,
) -> Result<pb::TriggerScheduleResponse, Status> {
    let n = name(&req.name)?;
    let request = if req.request_id.is_empty() {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        t.to_string()
    } else {
        req.request_id
    };
    if request.len() > 128 {
        return Err(Status::invalid_argument("request_id: at most 128 bytes"));
    }
    let (workflow_id, created) = s.trigger(tenant, n, &request).await?;
    Ok(pb::TriggerScheduleResponse { workflow_id, created })
}

pub fn delete(s: &Scheduler, tenant: &str, req: pb::ScheduleRef) -> Result<pb::DeleteScheduleResponse, Status> {
    s.delete(tenant, name(&req.name)?)?;
    Ok(pb::DeleteScheduleResponse {})
}
