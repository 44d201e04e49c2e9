//! Storage faults heal by themselves: a server whose data directory fills
//! up answers UNAVAILABLE (never INTERNAL) and reports NOT_SERVING; once
//! there is room again it serves again without a restart, every workflow
//! whose start it acknowledged is there (also after a restart), and a
//! function's answer that came while the disk was full is applied.
//!
//! The disk is a small tmpfs the test mounts, so it needs root; otherwise
//! it says why and passes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use stoa_proto::v1 as pb;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::client::{client, deploy, facts, Client, RawWorker};
use crate::support::{Server, TOKEN_A, TOKEN_B};

/// A tmpfs mounted on a fresh directory; unmounted when dropped, also when
/// the test fails.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a tmpfs on {} failed", dir.path().display());
        Tmpfs { dir }
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

/// Starts a `counter` workflow that completes at once (it calls nothing),
/// of about 2 KiB: the disk fills in a few hundred starts.
async fn start(c: &mut Client, request_id: &str) -> Result<String, tonic::Status> {
    let f = facts(serde_json::json!([{"type": "Counter", "fields": {"lane": "x".repeat(2000), "n": 0, "limit": 0}}]));
    let req = pb::StartWorkflowRequest { pack: "counter".into(), facts: f, request_id: request_id.into() };
    c.start_workflow(req).await.map(|r| r.into_inner().workflow_id)
}

async fn get(c: &mut Client, id: &str) -> Result<pb::Workflow, tonic::Status> {
    c.get_workflow(pb::GetWorkflowRequest { workflow_id: id.into(), without_facts: true }).await.map(|r| r.into_inner())
}

pub async fn health(addr: &str, service: &str) -> ServingStatus {
    let mut h = HealthClient::new(crate::client::channel(addr).await);
    let r = h.check(HealthCheckRequest { service: service.into() }).await.expect("health check");
    ServingStatus::try_from(r.into_inner().status).expect("a status")
}

/// Waits until both the server and `stoa.v1.Stoa` report `want`.
pub async fn wait_health(addr: &str, want: ServingStatus, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if health(addr, "").await == want && health(addr, "stoa.v1.Stoa").await == want {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "health is not {want:?} after {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn unavailable(what: &str, r: Result<impl std::fmt::Debug, tonic::Status>) {
    let e = r.err().unwrap_or_else(|| panic!("{what}: answered while the disk is full"));
    assert_eq!(e.code(), Code::Unavailable, "{what}: {e:?}");
}

/// Every acknowledged workflow is readable.
async fn all_there(c: &mut Client, acked: &[String], when: &str) {
    for id in acked {
        let w = get(c, id).await.unwrap_or_else(|e| panic!("{when}: acknowledged {id}: {e:?}"));
        assert_eq!(w.status, "completed", "{when}: {id}");
    }
}

/// Waits until a workflow has `status`.
async fn wait_status(c: &mut Client, id: &str, status: &str, within: Duration) {
    let start = Instant::now();
    loop {
        let now = get(c, id).await.map(|w| w.status);
        if now.as_ref().is_ok_and(|s| s == status) {
            return;
        }
        assert!(start.elapsed() < within, "{id} is not {status} after {within:?}: {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn a_full_disk_makes_the_server_unavailable_until_there_is_room_again() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: filling a disk needs a tmpfs, and mounting one needs root");
        return;
    }
    let started = Instant::now();
    let disk = Tmpfs::mount("8m");
    // Room to free later, taken first.
    let filler: PathBuf = disk.path().join("filler");
    std::fs::write(&filler, vec![1u8; 2 << 20]).expect("filler");
    let data = disk.path().join("data");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    // A workflow waiting for `t.work`, and not in the server's memory
    // (started before a restart): its answer will come while the disk is full.
    let waiting = {
        let server = Server::start(&data);
        rt.block_on(async {
            let mut a = client(&server.addr, TOKEN_A).await;
            let mut b = client(&server.addr, TOKEN_B).await;
            deploy(&mut a, "tests/packs/once").await;
            deploy(&mut a, "tests/packs/counter").await;
            deploy(&mut b, "tests/packs/counter").await;
            let job = facts(serde_json::json!([{"type": "Job", "fields": {"state": "new", "n": 1}}]));
            let req = pb::StartWorkflowRequest { pack: "once".into(), facts: job, request_id: "waiting".into() };
            a.start_workflow(req).await.expect("start").into_inner().workflow_id
        })
    };
    let mut server = Server::start(&data);
    let (acked, after) = rt.block_on(async {
        let mut a = client(&server.addr, TOKEN_A).await;
        let mut b = client(&server.addr, TOKEN_B).await;

        // Start workflows until the disk is full.
        let mut acked = Vec::new();
        let refused = loop {
            assert!(acked.len() < 10_000, "the disk never filled");
            match start(&mut a, &format!("fill-{}", acked.len())).await {
                Ok(id) => acked.push(id),
                Err(e) => break e,
            }
        };
        assert_eq!(refused.code(), Code::Unavailable, "a full disk is retryable: {refused:?}");
        assert!(acked.len() > 50, "the disk filled after {} starts", acked.len());
        eprintln!("the disk filled after {} starts ({:?})", acked.len(), started.elapsed());

        // Both tenants are told to retry, reads included; health says so.
        wait_health(&server.addr, ServingStatus::NotServing, Duration::from_secs(5)).await;
        assert_eq!(health(&server.addr, "stoa.v1.Workers").await, ServingStatus::Serving);
        unavailable("start", start(&mut a, "while-full").await);
        unavailable("get", get(&mut a, &acked[0]).await);
        unavailable("start of tenant b", start(&mut b, "b-while-full").await);
        unavailable("list of tenant b", b.list_workflows(pb::ListWorkflowsRequest::default()).await);
        // The function's answer comes now; it cannot be applied yet.
        let mut worker = RawWorker::connect(&server.addr, TOKEN_A, &["t.work"], 4).await.expect("worker");
        let invs = worker.invocations(Duration::from_secs(5)).await;
        assert_eq!(invs.len(), 1, "{invs:?}");
        assert_eq!(invs[0].workflow_id, waiting);
        assert!(worker.answer(&invs[0], serde_json::json!({"ok": true})).await);
        // It stays so while the disk is full.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(health(&server.addr, "").await, ServingStatus::NotServing);

        // Room again: the server heals without a restart.
        std::fs::remove_file(&filler).expect("free the filler");
        let took = wait_health(&server.addr, ServingStatus::Serving, Duration::from_secs(10)).await;
        eprintln!("healed {took:?} after the disk had room");
        all_there(&mut a, &acked, "healed").await;
        // The answer is applied: the retries of its turn find the store back.
        wait_status(&mut a, &waiting, "completed", Duration::from_secs(5)).await;
        let after = start(&mut a, "after-heal").await.expect("a start after healing");
        start(&mut b, "b-after-heal").await.expect("tenant b's start after healing");
        acked.push(after.clone());
        all_there(&mut a, &acked, "healed").await;
        (acked, after)
    });

    // Nothing acknowledged is lost to a crash either.
    server.kill();
    let server = Server::start(&data);
    rt.block_on(async {
        let mut a = client(&server.addr, TOKEN_A).await;
        all_there(&mut a, &acked, "restarted").await;
        assert!(acked.contains(&after));
        assert_eq!(get(&mut a, &waiting).await.expect("the answered workflow").status, "completed");
        assert_eq!(health(&server.addr, "").await, ServingStatus::Serving);
    });
    drop(server);
    eprintln!("took {:?}", started.elapsed());
}
