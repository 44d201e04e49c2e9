//! Durability under SIGKILL: a `stoa run --data` process committing turns is
//! killed at random moments, many times; after each kill the store must
//! hold every acknowledged turn, no half-applied turn, and no result applied
//! twice. The run then resumes from the store, until the workflow completes.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use stoa_engine::store::{SledStore, Store};
use stoa_engine::workflow::Status;
use stoa_engine::WorkflowId;
use stoa_rules::{Sym, Value};

use crate::support::{stoa, Rng};

const LIMIT: i64 = 2000;
const ROUNDS: usize = 25;

/// Checks the invariants of the counter pack on what the store holds;
/// returns (committed turn, steps done).
fn check_store(dir: &std::path::Path, acked: u64) -> Option<(u64, usize, Status)> {
    let store = SledStore::open(dir, 16).expect("store reopens after SIGKILL");
    let id = WorkflowId::new("crash");
    let Some(snap) = store.load(&id).expect("load") else {
        assert_eq!(acked, 0, "turn {acked} was acknowledged but the workflow is missing");
        return None;
    };
    assert!(snap.meta.turn >= acked, "acknowledged turn {acked} lost: store has turn {}", snap.meta.turn);
    let (lane, n) = (Sym::new("lane"), Sym::new("n"));
    let mut steps = 0;
    for l in ["a", "b"] {
        let lane_v = Value::str(l);
        let counter = snap
            .facts
            .iter()
            .find(|f| f.ty == Sym::new("Counter") && f.fields.get(lane) == Some(&lane_v))
            .expect("counter fact");
        let Some(Value::Int(count)) = counter.fields.get(n).cloned() else { panic!("counter n") };
        let done: Vec<i64> = snap
            .facts
            .iter()
            .filter(|f| f.ty == Sym::new("Done") && f.fields.get(lane) == Some(&lane_v))
            .map(|f| match f.fields.get(n) {
                Some(Value::Int(i)) => *i,
                other => panic!("Done.n {other:?}"),
            })
            .collect();
        let unique: BTreeSet<i64> = done.iter().copied().collect();
        assert_eq!(unique.len(), done.len(), "lane {l}: a result was applied twice: {done:?}");
        assert_eq!(
            done.len() as i64,
            count,
            "lane {l}: half-applied turn: {} Done facts, counter at {count}",
            done.len()
        );
        assert_eq!(unique, (0..count).collect(), "lane {l}: steps missing");
        steps += done.len();
        // One step of each unfinished lane is waiting, with its invocation in the outbox.
        let waiting = snap
            .waiting
            .iter()
            .filter(|w| w.invocation.args.to_string().contains(&format!("\"lane\":\"{l}\"")))
            .count();
        if snap.meta.status == Status::Running && count < LIMIT {
            assert!(waiting <= 1, "lane {l}: {waiting} invocations waiting");
        }
    }
    let outbox = store.outbox(&stoa_engine::store::Parts::All).expect("outbox");
    assert_eq!(outbox.len(), snap.waiting.len(), "outbox and waiting activations disagree");
    let timeline = store.timeline(&id, 1, usize::MAX).expect("timeline");
    assert_eq!(timeline.len() as u64, snap.meta.timeline_seq, "timeline has a gap or a torn turn");
    Some((snap.meta.turn, steps, snap.meta.status))
}

#[test]
fn sigkill_while_committing_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut rng = Rng::from_env();
    let mut acked = 0u64;
    let mut kills = 0;
    let mut exists = false;
    for round in 0..=ROUNDS {
        let mut cmd = stoa();
        cmd.args([
            "run",
            "tests/packs/counter",
            "--mocks",
            "tests/packs/counter/mocks.toml",
            "--id",
            "crash",
            "--json",
        ])
        .arg("--data")
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        if !exists {
            cmd.args(["--facts", "tests/packs/counter/facts.json"]);
        }
        let mut child = cmd.spawn().expect("spawn stoa");
        let stdout = child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            // The highest turn whose commit line was printed: acknowledged.
            let mut acked = 0u64;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
                if v["event"]["kind"] == "turn_committed" {
                    acked = acked.max(v["turn"].as_u64().unwrap_or(0));
                }
            }
            acked
        });
        let last = round == ROUNDS;
        if !last {
            std::thread::sleep(Duration::from_millis(20 + rng.below(150)));
            if child.try_wait().expect("try_wait").is_none() {
                child.kill().expect("SIGKILL");
                kills += 1;
            }
        }
        let status = child.wait().expect("wait");
        acked = acked.max(reader.join().expect("reader"));
        if last {
            assert!(status.success(), "the final run failed: {status}");
        }
        if let Some((turn, steps, st)) = check_store(&data, acked) {
            exists = true;
            eprintln!("round {round}: acked turn {acked}, stored turn {turn}, {steps} steps, {st:?}");
            if st == Status::Completed {
                assert_eq!(steps as i64, 2 * LIMIT);
                if last || kills > 0 {
                    break;
                }
            }
        }
    }
    let (_, steps, status) = check_store(&data, acked).expect("workflow exists");
    assert_eq!(status, Status::Completed);
    assert_eq!(steps as i64, 2 * LIMIT);
    assert!(kills >= 3, "the run finished before enough kills ({kills}); raise LIMIT");
}

/// A first turn of 3,000 invocations is past the store's batch bound, so it
/// is committed through the journal; killed at random moments, the store
/// holds it whole or not at all, and whole if it was acknowledged.
#[test]
fn sigkill_during_a_large_commit_leaves_it_whole_or_absent() {
    const TASKS: usize = 3000;
    let dir = tempfile::tempdir().expect("tempdir");
    let facts = dir.path().join("facts.json");
    let tasks: Vec<_> =
        (0..TASKS).map(|n| serde_json::json!({"type": "Task", "fields": {"n": n, "state": "new"}})).collect();
    std::fs::write(&facts, serde_json::Value::Array(tasks).to_string()).expect("facts");
    let mut rng = Rng::from_env();
    let (mut whole, mut absent) = (0, 0);
    for round in 0..10 {
        let data = dir.path().join(format!("data-{round}"));
        let mut child = stoa()
            .args(["run", "bench/e2e/fanout", "--id", "big", "--json"])
            .arg("--facts")
            .arg(&facts)
            .arg("--data")
            .arg(&data)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn stoa");
        let stdout = child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout).lines().map_while(Result::ok).any(|l| l.contains("\"turn_committed\""))
        });
        std::thread::sleep(Duration::from_millis(50 + rng.below(1000)));
        let _ = child.kill();
        let _ = child.wait();
        let acked = reader.join().expect("reader");
        let store = SledStore::open(&data, 16).expect("store reopens after SIGKILL");
        let id = WorkflowId::new("big");
        let Some(snap) = store.load(&id).expect("load") else {
            assert!(!acked, "round {round}: the first turn was acknowledged but is missing");
            absent += 1;
            continue;
        };
        whole += 1;
        assert_eq!(snap.facts.len(), TASKS, "round {round}: a torn first turn");
        let timeline = store.timeline(&id, 1, usize::MAX).expect("timeline");
        assert_eq!(timeline.len() as u64, snap.meta.timeline_seq, "round {round}: a torn timeline");
        let running = snap.facts.iter().filter(|f| f.fields.get(Sym::new("state")) == Some(&Value::str("running")));
        if snap.meta.status == Status::Running {
            assert_eq!(running.count(), snap.waiting.len(), "round {round}: facts and waiting disagree");
            assert_eq!(store.outbox(&stoa_engine::store::Parts::All).expect("outbox").len(), snap.waiting.len());
        }
    }
    eprintln!("{whole} whole, {absent} absent");
}
