//! What a schedule runs when the scheduler reaches it: pure, given the
//! instant the schedule is done up to (its cursor) and the time now.

use serde::{Deserialize, Serialize};
use stoa_rules::cron::Spec;
use stoa_rules::manifest::CatchUp;

/// A tick reached more than this long after its due time counts as missed,
/// and the schedule's catch-up policy decides whether it runs.
pub const GRACE_MS: i64 = 1000;

/// `catch_up = "all"` without `max_catch_up` runs at most this many.
pub const DEFAULT_MAX_CATCH_UP: usize = 1000;

/// On-time ticks handled in one pass at most (an `@every 1s` schedule
/// reached after a long stall has at most GRACE_MS / 1s of them anyway).
const MAX_ON_TIME: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    OnTime,
    CatchUp,
    Manual,
    /// Started before a crash that came before it was recorded: found at
    /// the restart by its request id.
    Recovered,
}

impl RunKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::OnTime => "on_time",
            RunKind::CatchUp => "catch_up",
            RunKind::Manual => "manual",
            RunKind::Recovered => "recovered",
        }
    }
}

#[derive(Debug, PartialEq)]
pub struct Plan {
    /// Ticks to start, oldest first.
    pub run: Vec<(i64, RunKind)>,
    /// Every tick at or before this is decided once `run` has started.
    pub cursor: i64,
}

/// Ticks due in `(cursor, now]`: those within `GRACE_MS` of `now` run;
/// older ones are missed and run as the policy says.
pub fn plan(spec: &Spec, cursor: i64, now: i64, policy: CatchUp, max_catch_up: Option<u32>) -> Plan {
    if now <= cursor {
        return Plan { run: Vec::new(), cursor };
    }
    let late_edge = now - GRACE_MS;
    let mut run = Vec::new();
    if cursor < late_edge {
        let n = match policy {
            CatchUp::Skip => 0,
            CatchUp::One => 1,
            CatchUp::All => max_catch_up.map(|m| m as usize).unwrap_or(DEFAULT_MAX_CATCH_UP),
        };
        run.extend(spec.last_ticks(cursor, late_edge, n).into_iter().map(|t| (t, RunKind::CatchUp)));
    }
    run.extend(spec.ticks(cursor.max(late_edge), now, MAX_ON_TIME).into_iter().map(|t| (t, RunKind::OnTime)));
    Plan { run, cursor: now }
}

/// The deterministic request id of a tick: however often the tick is
/// attempted (a crash between starting its workflow and recording it), it
/// starts one workflow.
pub fn request_id(schedule: &str, due_ms: i64) -> String {
    format!("schedule:{schedule}:{due_ms}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1000;
    const T0: i64 = 1_800_000_000_000; // a whole second

    fn every_second() -> Spec {
        Spec::parse("* * * * * *", "").unwrap()
    }

    fn kinds(p: &Plan) -> Vec<(i64, &'static str)> {
        p.run.iter().map(|(t, k)| ((t - T0) / S, k.as_str())).collect()
    }

    #[test]
    fn on_time_ticks_run_whatever_the_policy() {
        for policy in [CatchUp::Skip, CatchUp::One, CatchUp::All] {
            // The scheduler woke 3 ms after the tick at T0+1s.
            let p = plan(&every_second(), T0, T0 + S + 3, policy, None);
            assert_eq!(kinds(&p), [(1, "on_time")]);
            assert_eq!(p.cursor, T0 + S + 3);
        }
    }

    #[test]
    fn after_downtime_each_policy() {
        // Done up to T0; back at T0 + 10.5 s: ticks 1..=9 are missed, 10 is on time.
        let now = T0 + 10 * S + 500;
        let p = |policy, max| kinds(&plan(&every_second(), T0, now, policy, max));
        assert_eq!(p(CatchUp::Skip, None), [(10, "on_time")]);
        assert_eq!(p(CatchUp::One, None), [(9, "catch_up"), (10, "on_time")]);
        let all = p(CatchUp::All, None);
        assert_eq!(all.len(), 10);
        assert_eq!(all[0], (1, "catch_up"));
        assert_eq!(all[8], (9, "catch_up"));
        assert_eq!(p(CatchUp::All, Some(2)), [(8, "catch_up"), (9, "catch_up"), (10, "on_time")]);
    }

    #[test]
    fn a_long_outage_of_a_frequent_schedule_is_cheap() {
        let week = 7 * 86_400 * S;
        let started = std::time::Instant::now();
        let p = plan(&every_second(), T0, T0 + week, CatchUp::One, None);
        assert_eq!(p.run.len(), 2);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn nothing_is_due_twice() {
        let s = Spec::parse("@every 2s", "").unwrap();
        let mut cursor = T0;
        let mut seen = Vec::new();
        // Wake at irregular moments; every tick runs exactly once.
        for now in [T0 + 1_500, T0 + 2_000, T0 + 2_000, T0 + 4_700, T0 + 5_000, T0 + 6_001] {
            let p = plan(&s, cursor, now, CatchUp::All, None);
            seen.extend(p.run.iter().map(|(t, _)| (t - T0) / S));
            cursor = p.cursor;
        }
        assert_eq!(seen, [2, 4, 6]);
    }
}
