//! `stoa explain` over a real server and over a store `stoa run --data`
//! wrote: why a rule fired or not, a fact's derivation, precise errors.

use std::process::Output;

use stoa_proto::v1 as pb;
use tonic::Code;

use crate::client::{client, pack_files, video_facts};
use crate::support::{repo, stoa, Server, TOKEN_A, TOKEN_B};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

fn explain(server: &Server, token: &str, args: &[&str]) -> Output {
    stoa().arg("explain").args(args).args(["--server", &server.addr, "--token", token]).output().expect("stoa explain")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn explain_answers_from_a_server_and_names_what_is_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let wf = rt().block_on(async {
        let mut a = client(&server.addr, TOKEN_A).await;
        let files = pack_files("examples/packs/video-encode");
        a.deploy_pack(pb::DeployPackRequest { files, ..Default::default() }).await.expect("deploy");
        // No worker serves media.split: the workflow waits on it.
        let started = a
            .start_workflow(pb::StartWorkflowRequest {
                pack: "video-encode".into(),
                facts: video_facts("s3://in/a.mov"),
                request_id: "explain-1".into(),
            })
            .await
            .expect("start")
            .into_inner();
        let b_err = client(&server.addr, TOKEN_B)
            .await
            .explain(pb::ExplainRequest {
                workflow_id: started.workflow_id.clone(),
                rule: "split source".into(),
                fact: 0,
            })
            .await
            .expect_err("another tenant's workflow");
        assert_eq!(b_err.code(), Code::NotFound, "{b_err:?}");
        assert!(!b_err.message().contains("video-encode"), "leaks: {}", b_err.message());
        let both = a
            .explain(pb::ExplainRequest { workflow_id: started.workflow_id.clone(), rule: "x".into(), fact: 3 })
            .await
            .expect_err("rule and fact");
        assert_eq!(both.code(), Code::InvalidArgument, "{both:?}");
        started.workflow_id
    });

    // A rule that fired and waits on its invocation.
    let o = explain(&server, TOKEN_A, &[&wf, "split source"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("fired 1 time") && out.contains("waits on") && out.contains("(media.split)"), "{out}");

    // A rule that does not match: the failing constraint, with its values.
    let o = explain(&server, TOKEN_A, &[&wf, "encode chunk"]);
    let out = text(&o);
    assert!(out.contains("never fired"), "{out}");
    assert!(out.contains(r#"fails `status == "encoding"`"#) && out.contains(r#""splitting" == "encoding""#), "{out}");

    // JSON for tools: the same explanation, machine-readable.
    let o = explain(&server, TOKEN_A, &[&wf, "encode chunk", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["now"]["state"], "no_match");
    assert_eq!(v["now"]["dies_at"], 1);
    assert_eq!(v["conditions"][0]["passing"], 0);

    // A fact made by a firing, back to the inputs.
    let o = explain(&server, TOKEN_A, &[&wf, "--fact", "f3"]);
    let out = text(&o);
    assert!(out.contains(r#"inserted f3 Job v1"#) && out.contains(r#"by "start job""#), "{out}");
    assert!(out.contains("input (start with 2 fact(s))"), "{out}");

    // Bad input: precise errors, and a failing exit status.
    let o = explain(&server, TOKEN_A, &[&wf, "split sources"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(r#"has no rule "split sources" (did you mean "split source"?)"#), "{}", text(&o));
    let o = explain(&server, TOKEN_A, &[&wf, "--fact", "f99"]);
    assert!(text(&o).contains("has no fact f99"), "{}", text(&o));
    let o = explain(&server, TOKEN_A, &["wf_a.nope", "split source"]);
    assert!(text(&o).contains("NOT_FOUND (5)"), "{}", text(&o));
    let o = explain(&server, TOKEN_A, &[&wf, "--fact", "twelve"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("a fact id is like f12"), "{}", text(&o));
}

#[test]
fn explain_reads_a_workflow_stoa_run_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pack = repo().join("examples/packs/video-encode");
    let data = dir.path().join("runs");
    let run = stoa()
        .arg("run")
        .arg(&pack)
        .arg("--facts")
        .arg(pack.join("facts.json"))
        .arg("--mocks")
        .arg(pack.join("mocks.toml"))
        .arg("--data")
        .arg(&data)
        .args(["--id", "wf_local", "--explain", "give up"])
        .output()
        .expect("stoa run");
    let out = text(&run);
    assert!(run.status.success(), "{out}");
    assert!(out.contains(r#"rule "give up""#) && out.contains(r#""done" == "failed""#), "{out}");
    let o = stoa()
        .args(["explain", "wf_local", "assemble", "--data"])
        .arg(&data)
        .arg("--pack")
        .arg(&pack)
        .output()
        .expect("stoa explain");
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("fired 2 times") && out.contains("called media.assemble"), "{out}");
}

#[test]
fn stoa_test_explains_a_missed_rule_and_holds_the_coverage_minimum() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pack = dir.path();
    std::fs::create_dir_all(pack.join("tests")).expect("mkdir");
    std::fs::write(
        pack.join("pack.toml"),
        "[pack]\nname = \"cov\"\nversion = \"1\"\n[functions.\"media.encode\"]\n[tests]\nmin_coverage = 90\n",
    )
    .expect("write");
    std::fs::write(
        pack.join("main.rules"),
        r#"rule "encode" {
    match { c: Chunk(status == "pending") }
    action { call("media.encode", #{}); }
    reaction { modify(c, #{ status: "done" }); }
    error { modify(c, #{ status: "failed" }); }
}
"#,
    )
    .expect("write");
    let test = |expect: &str| {
        format!(
            "[[test]]\nname = \"t\"\nfacts = [{{ type = \"Chunk\", fields = {{ status = \"{expect}\" }} }}]\n[[test.mock]]\nfunction = \"media.encode\"\nreturns = {{}}\n[test.expect]\nfired = [\"encode\"]\n"
        )
    };
    // A test whose facts miss the rule: the failure says why.
    std::fs::write(pack.join("tests/t.toml"), test("new")).expect("write");
    let o = stoa().arg("test").arg(pack).output().expect("stoa test");
    let out = text(&o);
    assert_eq!(o.status.code(), Some(3), "{out}");
    assert!(out.contains("why:") && out.contains(r#""new" == "pending""#), "{out}");
    // Passing tests, but the error section never runs: 2 of 3 items.
    std::fs::write(pack.join("tests/t.toml"), test("pending")).expect("write");
    let o = stoa().arg("test").arg(pack).arg("--coverage").output().expect("stoa test");
    let out = text(&o);
    assert_eq!(o.status.code(), Some(3), "{out}");
    assert!(out.contains(r#"sections never run: "encode" error"#), "{out}");
    assert!(out.contains("coverage 75.0% is below the pack's [tests] min_coverage = 90"), "{out}");
    let o = stoa().arg("test").arg(pack).args(["--coverage", "--json"]).output().expect("stoa test");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["coverage"]["rules"][0]["error"], 0);
    assert_eq!(v["coverage"]["percent"], 75.0);
    assert_eq!(v["passed"], 1);
}
