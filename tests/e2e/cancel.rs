//! Cancellation over a real server: cleanup rules react to the `Cancelled`
//! fact and release what the workflow holds, a cleanup past its grace is
//! terminated, `--terminate` runs no rule; `cancelled` is a status of its own.

use std::time::{Duration, Instant};

use stoa_proto::v1 as pb;

use crate::client::{client, Client, RawWorker};
use crate::support::{stoa, Server, TOKEN_A};

const PACK: &str = r#"
rule "hold" {
    match { o: Order(state == "new") }
    action {
        insert("Hold", #{ order: o.id });
        modify(o, #{ state: "held" });
        call("stock.ship", #{ order: o.id });
    }
    reaction { modify(o, #{ state: "shipped" }); complete(); }
}

rule "release" {
    match { c: Cancelled() h: Hold() }
    action { call("stock.release", #{ order: h.order, why: c.reason }); }
    reaction { retract(h); }
}
"#;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

async fn start(c: &mut Client, id: &str) -> String {
    let facts =
        vec![pb::FactInput { r#type: "Order".into(), fields_json: format!(r#"{{"id":"{id}","state":"new"}}"#) }];
    c.start_workflow(pb::StartWorkflowRequest { pack: "shop".into(), facts, request_id: id.into() })
        .await
        .expect("start")
        .into_inner()
        .workflow_id
}

/// Takes invocations until `wf`'s call of `function` comes.
async fn call_of(w: &mut RawWorker, wf: &str, function: &str) -> pb::Invocation {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let batch = w.invocations(Duration::from_secs(1)).await;
        if let Some(i) = batch.into_iter().find(|i| i.workflow_id == wf && i.function == function) {
            return i;
        }
    }
    panic!("no {function} call of {wf}");
}

async fn wait_status(c: &mut Client, wf: &str, status: &str) -> pb::Workflow {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let w = c
            .get_workflow(pb::GetWorkflowRequest { workflow_id: wf.into(), without_facts: false })
            .await
            .expect("get")
            .into_inner();
        if w.status == status {
            return w;
        }
        assert!(Instant::now() < deadline, "{wf} is {} ({}), not {status}", w.status, w.reason);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn cancel(server: &Server, wf: &str, extra: &[&str]) -> String {
    let o = stoa()
        .args(["cancel", wf, "--reason", "customer asked", "--server", &server.addr, "--token", TOKEN_A])
        .args(extra)
        .output()
        .expect("stoa cancel");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn cleanup_rules_run_on_cancel_and_terminate_skips_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    rt().block_on(async {
        let mut c = client(&server.addr, TOKEN_A).await;
        let files = vec![
            pb::PackFile {
                path: "pack.toml".into(),
                content: b"[pack]\nname = \"shop\"\nversion = \"1\"\n[functions.\"stock.ship\"]\n[functions.\"stock.release\"]\n".to_vec(),
            },
            pb::PackFile { path: "shop.rules".into(), content: PACK.as_bytes().to_vec() },
        ];
        c.deploy_pack(pb::DeployPackRequest { files, ..Default::default() }).await.expect("deploy");
        let mut w = RawWorker::connect(&server.addr, TOKEN_A, &["stock.ship", "stock.release"], 64).await.expect("w");

        // Cancel with cleanup: the ship call is cancelled at the worker,
        // the release call comes, and once answered the workflow ends.
        let wf = start(&mut c, "o1").await;
        let ship = w.invocations(Duration::from_secs(10)).await;
        assert_eq!(ship.iter().map(|i| i.function.as_str()).collect::<Vec<_>>(), ["stock.ship"]);
        assert!(cancel(&server, &wf, &[]).contains("running"), "cleanup under way");
        let mut cancelled_at_worker = false;
        let mut release = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        while release.is_none() && Instant::now() < deadline {
            match w.next(Duration::from_secs(1)).await.and_then(|m| m.msg) {
                Some(pb::server_message::Msg::Cancel(x)) => cancelled_at_worker |= x.invocation_id == ship[0].id,
                Some(pb::server_message::Msg::Invocations(b)) => release = b.invocations.into_iter().next(),
                _ => {}
            }
        }
        let release = release.expect("the release call");
        assert!(cancelled_at_worker, "the waiting ship call was cancelled at the worker");
        assert_eq!(release.function, "stock.release");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&release.args_json).unwrap(),
            serde_json::json!({"order": "o1", "why": "customer asked"})
        );
        assert!(w.answer(&release, serde_json::json!({"released": true})).await);
        let done = wait_status(&mut c, &wf, "cancelled").await;
        assert_eq!(done.reason, "cancelled: customer asked");
        assert!(!done.facts.iter().any(|f| f.r#type == "Hold"), "the hold was released: {:?}", done.facts);

        // A cleanup that does not end within its grace is terminated.
        let slow = start(&mut c, "o2").await;
        call_of(&mut w, &slow, "stock.ship").await;
        cancel(&server, &slow, &["--grace", "1s"]);
        let late = wait_status(&mut c, &slow, "cancelled").await;
        assert!(late.reason.contains("did not end in time"), "{}", late.reason);

        // Terminate: at once, no rule runs.
        let stuck = start(&mut c, "o3").await;
        call_of(&mut w, &stuck, "stock.ship").await;
        assert!(cancel(&server, &stuck, &["--terminate"]).contains("cancelled"));
        let t = wait_status(&mut c, &stuck, "cancelled").await;
        assert_eq!(t.reason, "terminated: customer asked");
        let calls = w.invocations(Duration::from_millis(500)).await;
        assert!(calls.iter().all(|i| i.workflow_id != stuck), "terminate ran a rule: {calls:?}");

        // `cancelled` is a status to filter on.
        let ls = stoa()
            .args(["ls", "--status", "cancelled", "--server", &server.addr, "--token", TOKEN_A])
            .output()
            .expect("stoa ls");
        let out = String::from_utf8_lossy(&ls.stdout);
        assert!([&wf, &slow, &stuck].iter().all(|id| out.contains(id.as_str())), "{out}");
    });
}
