//! `stoa serve --store postgres://…` on a throwaway PostgreSQL (started from
//! the installed binaries; a missing install fails these tests, it never
//! skips them): the SIGKILL test of `server_crash`; PostgreSQL itself
//! killed mid-run (the server stops acknowledging, says why, and recovers
//! once it is back, losing nothing acknowledged); bad store URLs and a
//! database newer than the binary.

use std::time::{Duration, Instant};

use stoa_pgstore::throwaway::{Durability, TempPostgres};
use stoa_proto::v1 as pb;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::client::{client, deploy, media_worker, video_facts};
use crate::storage::wait_health;
use crate::support::{stoa, Server, TOKEN_A};

fn postgres(db: &str) -> (TempPostgres, String) {
    let pg = TempPostgres::start(Durability::Fast).expect("a throwaway PostgreSQL");
    pg.create_database(db).expect("database");
    let url = pg.url(db);
    (pg, url)
}

#[test]
fn server_sigkill_with_100_workflows_in_flight_on_postgres() {
    let (_pg, url) = postgres("crash");
    crate::server_crash::sigkill_with_100_workflows_in_flight(&|| Server::start_on(&url, &[]));
}

#[test]
fn postgres_killed_mid_run_the_server_recovers_losing_nothing_acknowledged() {
    let (mut pg, url) = postgres("outage");
    let server = Server::start_on(&url, &[]);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    rt.block_on(async {
        let mut a = client(&server.addr, TOKEN_A).await;
        deploy(&mut a, "examples/packs/video-encode").await;
        let stop = CancellationToken::new();
        let worker = tokio::spawn(media_worker(server.addr.clone(), TOKEN_A, Duration::from_millis(2), stop.clone()));
        let start = |i: usize| pb::StartWorkflowRequest {
            pack: "video-encode".into(),
            facts: video_facts(&format!("s3://in/{i}.mov")),
            request_id: format!("outage-{i}"),
        };
        let mut acked = Vec::new();
        for i in 0..30 {
            acked.push(a.start_workflow(start(i)).await.expect("start").into_inner().workflow_id);
        }
        pg.kill();
        // Within a few seconds every start is refused as retryable, and
        // health says the server cannot serve.
        let deadline = Instant::now() + Duration::from_secs(20);
        let refused = loop {
            match a.start_workflow(start(1000)).await {
                Err(e) => break e,
                Ok(_) => {
                    assert!(Instant::now() < deadline, "starts are still acknowledged with the database gone");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        wait_health(&server.addr, ServingStatus::NotServing, Duration::from_secs(10)).await;
        pg.restart().expect("postgres restarts");
        wait_health(&server.addr, ServingStatus::Serving, Duration::from_secs(20)).await;
        // A retry of a start refused meanwhile is answered once.
        let again = a.start_workflow(start(1000)).await.expect("start after the outage").into_inner().workflow_id;
        acked.push(again);
        crate::server_crash::all_completed_once(&mut a, &acked, Duration::from_secs(90), 6).await;
        stop.cancel();
        let _ = worker.await;
    });
}

/// `stoa serve` with `args`: it exits with an error, whose text is returned.
fn refused(args: &[&str]) -> String {
    let out = stoa()
        .args(["serve", "--listen", "127.0.0.1:0", "--token", &format!("a={TOKEN_A}")])
        .args(args)
        .output()
        .expect("stoa serve");
    assert!(!out.status.success(), "{args:?} was accepted");
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

#[test]
fn bad_stores_are_refused_with_the_reason() {
    let err = refused(&["--store", "mysql://root:secret@db/stoa"]);
    assert!(err.contains("store `mysql…`: expected sled:DIR or postgres://USER@HOST/DATABASE"), "{err}");
    assert!(!err.contains("secret"), "the password is not echoed: {err}");
    let dir = tempfile::tempdir().unwrap();
    let nowhere = format!(
        "postgresql://postgres@{}/none?connect_timeout=2",
        dir.path().display().to_string().replace('/', "%2F")
    );
    let err = refused(&["--store", &nowhere]);
    assert!(err.contains("opening the PostgreSQL store: postgres"), "{err}");
    let (pg, url) = postgres("newer");
    drop(Server::start_on(&url, &[]));
    pg.psql("newer", "INSERT INTO stoa_schema (version) VALUES (7)").unwrap();
    let err = refused(&["--store", &url]);
    assert!(
        err.contains("the database's Stoa schema is version 7, newer than this build's (3): run a newer stoa"),
        "{err}"
    );
}
