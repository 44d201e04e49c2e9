//! The heal path of `SledStore`: a failure refuses everything and is
//! reported; the healer reopens the database with backoff; every commit
//! that returned `Ok` is there afterwards. One test fills a real disk (a
//! small tmpfs, mounted when the tests run as root).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::testing::pack;
use crate::workflow::{Input, Workflow};
use stoa_rules::testcase::FactSpec;

const RULES: &str = r#"
rule "encode" {
    match { c: Chunk(status == "pending") }
    action { modify(c, #{ status: "encoding" }); call("media.encode", #{ i: c.i }); }
}
"#;

/// A started workflow whose facts weigh about `pad` bytes each.
fn started(id: &str, pad: usize) -> (WorkflowId, crate::workflow::TurnOutput) {
    let id = WorkflowId::new(id);
    let facts: Vec<FactSpec> = (0..2)
        .map(|i| {
            let f =
                serde_json::json!({"type": "Chunk", "fields": {"i": i, "status": "pending", "pad": "x".repeat(pad)}});
            serde_json::from_value(f).unwrap()
        })
        .collect();
    static PACK: std::sync::OnceLock<Arc<stoa_rules::compile::Pack>> = std::sync::OnceLock::new();
    let mut wf = Workflow::new(id.clone(), PACK.get_or_init(|| pack(RULES, "")).clone(), 0);
    let out = wf.apply(Input::Start { facts }, 1).unwrap();
    (id, out)
}

fn commit_start(store: &SledStore, id: &str, pad: usize) -> Result<WorkflowId, Error> {
    let (id, out) = started(id, pad);
    store.commit(&[Commit { workflow: &id, output: &out, request_id: None, epoch: None }]).map(|()| id)
}

/// Makes the store fail the way a sled error does: through an operation.
fn inject_failure(store: &SledStore) {
    let r: Result<(), Error> = store.with(|_| Err(Error::Io("injected".into())));
    assert!(r.is_err());
}

fn wait_for(store: &SledStore, health: Health, within: Duration) -> Duration {
    let start = Instant::now();
    while store.health() != health {
        assert!(start.elapsed() < within, "the store is not {health:?} after {within:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

fn watch(store: &SledStore) -> Arc<Mutex<Vec<Health>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    store.on_health(Box::new({
        let seen = seen.clone();
        move |h| seen.lock().unwrap().push(h)
    }));
    seen
}

#[test]
fn a_failed_store_refuses_everything_reports_it_and_heals_with_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), 8).unwrap();
    let seen = watch(&store);
    let acked = commit_start(&store, "acked", 10).unwrap();
    // Two reopenings fail: the third comes after 100 + 200 + 400 ms.
    store.shared.refuse_heals.store(2, Ordering::SeqCst);
    inject_failure(&store);
    assert_eq!(store.health(), Health::Failing);
    let refused = store.load(&acked).unwrap_err().to_string();
    assert_eq!(refused, "storage I/O: storage is failing and healing itself (after: injected)");
    assert!(commit_start(&store, "refused", 10).is_err());
    let took = wait_for(&store, Health::Serving, Duration::from_secs(10));
    assert!(took >= Duration::from_millis(600), "healed after {took:?}, before its backoff");
    assert_eq!(*seen.lock().unwrap(), vec![Health::Serving, Health::Failing, Health::Serving]);
    assert!(store.load(&acked).unwrap().is_some());
    assert!(store.load(&WorkflowId::new("refused")).unwrap().is_none());
    let after = commit_start(&store, "after", 10).unwrap();
    drop(store);
    let store = SledStore::open(dir.path(), 8).unwrap();
    assert!(store.load(&acked).unwrap().is_some() && store.load(&after).unwrap().is_some());
}

#[test]
fn dropping_a_failing_store_stops_its_healer_and_closes_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), 8).unwrap();
    let acked = commit_start(&store, "acked", 10).unwrap();
    store.shared.refuse_heals.store(u32::MAX, Ordering::SeqCst);
    inject_failure(&store);
    std::thread::sleep(Duration::from_millis(350));
    let start = Instant::now();
    drop(store);
    assert!(start.elapsed() < Duration::from_secs(1), "drop waited {:?}", start.elapsed());
    // Closed: its lock is free at once.
    let start = Instant::now();
    let store = SledStore::open(dir.path(), 8).unwrap();
    assert!(start.elapsed() < Duration::from_secs(1), "open waited {:?}", start.elapsed());
    assert!(store.load(&acked).unwrap().is_some());
}

/// A tmpfs mounted on a fresh directory, unmounted when dropped (also when
/// the test fails).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("mount failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("--lazy").arg(self.dir.path()).status();
    }
}

#[test]
fn a_full_disk_fails_the_store_and_it_heals_once_there_is_room() {
    let disk = match Tmpfs::mount("8m") {
        Ok(d) => d,
        Err(e) => return eprintln!("skipped: filling a disk needs a tmpfs, which needs root ({e})"),
    };
    // Room to free later, taken first.
    let filler: PathBuf = disk.path().join("filler");
    std::fs::write(&filler, vec![1u8; 2 << 20]).unwrap();
    let data = disk.path().join("data");
    let store = SledStore::open(&data, 8).unwrap();
    let seen = watch(&store);
    let mut acked = Vec::new();
    let full = loop {
        assert!(acked.len() < 20_000, "the disk never filled");
        match commit_start(&store, &format!("wf{}", acked.len()), 1000) {
            Ok(id) => acked.push(id),
            Err(e) => break e,
        }
    };
    assert!(matches!(&full, Error::Io(m) if m.contains("No space left")), "{full}");
    assert!(acked.len() > 100, "{} commits", acked.len());
    assert_eq!(store.health(), Health::Failing);
    assert!(matches!(store.load(&acked[0]), Err(Error::Io(_))), "a failing store serves no reads");
    // It does not heal while the disk is full: reopening fails.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(store.health(), Health::Failing);

    std::fs::remove_file(&filler).unwrap();
    wait_for(&store, Health::Serving, Duration::from_secs(10));
    assert_eq!(*seen.lock().unwrap(), vec![Health::Serving, Health::Failing, Health::Serving]);
    for id in &acked {
        assert!(store.load(id).unwrap().is_some(), "acknowledged {id} is lost");
    }
    let after = commit_start(&store, "after", 1000).unwrap();
    drop(store);
    let store = SledStore::open(&data, 8).unwrap();
    for id in acked.iter().chain([&after]) {
        assert!(store.load(id).unwrap().is_some(), "acknowledged {id} is lost after reopening");
    }
}
