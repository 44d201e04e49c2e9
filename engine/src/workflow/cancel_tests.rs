//! Cancellation: cleanup rules over the `Cancelled` fact, the deadline,
//! termination.

use expect_test::{expect, Expect};

use super::*;
use crate::testing::pack;

const RESERVING: &str = r#"
rule "reserve" {
    match { o: Order(state == "new") }
    action {
        insert("Reservation", #{ order: o.id });
        modify(o, #{ state: "encoding" });
        call("media.encode", #{ order: o.id });
    }
    reaction { modify(o, #{ state: "done" }); complete(); }
}
"#;

const CLEANUP: &str = r#"
rule "release" {
    match { c: Cancelled() r: Reservation() }
    action { call("media.split", #{ release: r.order }); }
    reaction { retract(r); }
}
"#;

fn order() -> Vec<FactSpec> {
    serde_json::from_value(serde_json::json!([{"type": "Order", "fields": {"id": "o1", "state": "new"}}])).unwrap()
}

/// An input made from the workflow's state (an answer to what it waits on).
type Step = Box<dyn Fn(&Workflow) -> Input>;

/// Starts `rules` on one order, applies `inputs` at 1000, 2000, ...: the
/// timeline and the end state.
fn run(rules: &str, inputs: Vec<Step>, expect: Expect) {
    let mut wf = Workflow::new(WorkflowId::new("c"), pack(rules, ""), 0);
    let mut lines: Vec<String> = Vec::new();
    let out = wf.apply(Input::Start { facts: order() }, 1).unwrap();
    lines.extend(out.entries.iter().map(Entry::line));
    for (i, input) in inputs.iter().enumerate() {
        match wf.apply(input(&wf), 1000 * (i as u64 + 1)) {
            Ok(out) => lines.extend(out.entries.iter().map(Entry::line)),
            Err(e) => lines.push(format!("rejected: {e}")),
        }
    }
    lines.push(format!("status: {} {}", wf.status().as_str(), wf.meta().reason.clone().unwrap_or_default()));
    expect.assert_eq(&(lines.join("\n") + "\n"));
}

fn cancel(grace_ms: Option<u64>) -> Step {
    Box::new(move |_| Input::Cancel { reason: "customer asked".into(), grace_ms })
}

/// The answer to the one waiting invocation.
fn answer() -> Step {
    Box::new(|wf| {
        let w = wf.waiting().next().expect("a waiting invocation");
        Input::Result {
            invocation: w.invocation.id.clone(),
            outcome: Outcome::Ok { value: Value::Null, attempts: 1, failed: vec![] },
        }
    })
}

fn deadline() -> Step {
    Box::new(|wf| Input::Timers { ids: vec![wf.meta().cancelling.as_ref().expect("cancelling").deadline_timer] })
}

#[test]
fn without_cleanup_rules_a_cancel_ends_at_once() {
    run(
        RESERVING,
        vec![cancel(None)],
        expect![[r#"
            turn 1 ── start with 1 fact(s)
              +      f1 Order {"id":"o1","state":"new"}
              fire   reserve (f1@1)
              +      f2 Reservation {"order":"o1"}
              ~      f1@2 Order {"state":"new"} -> {"state":"encoding"}
              call   media.encode {"order":"o1"} (priority 0) inv_c.1
              commit (1 firing(s))
            turn 2 ── cancel: customer asked
              done   cancelled: customer asked
              cancel inv_c.1: workflow cancelled
              commit (0 firing(s))
            status: cancelled cancelled: customer asked
        "#]],
    );
}

#[test]
fn cleanup_rules_release_what_the_workflow_holds_then_it_ends_cancelled() {
    run(
        &format!("{RESERVING}{CLEANUP}"),
        vec![cancel(None), cancel(None), answer()],
        expect![[r#"
            turn 1 ── start with 1 fact(s)
              +      f1 Order {"id":"o1","state":"new"}
              fire   reserve (f1@1)
              +      f2 Reservation {"order":"o1"}
              ~      f1@2 Order {"state":"new"} -> {"state":"encoding"}
              call   media.encode {"order":"o1"} (priority 0) inv_c.1
              commit (1 firing(s))
            turn 2 ── cancel: customer asked
              cancel inv_c.1: workflow cancelling
              timer  1 Cancelled due at +5m
              +      f3 Cancelled {"deadline":301000,"reason":"customer asked"}
              fire   release (f3@1, f2@1)
              call   media.split {"release":"o1"} (priority 0) inv_c.2
              commit (1 firing(s))
            rejected: the workflow is already being cancelled (its cleanup ends by 301000 ms since the epoch); terminate it to end it now
            turn 3 ── result of inv_c.2
              result  inv_c.2 after 1 attempt(s): null
              fire   release [reaction] (f3@1, f2@1)
              -      f2@1 Reservation
              done   cancelled: customer asked
              commit (0 firing(s))
            status: cancelled cancelled: customer asked
        "#]],
    );
}

#[test]
fn a_cleanup_past_its_deadline_is_terminated() {
    run(
        &format!("{RESERVING}{CLEANUP}"),
        vec![cancel(Some(60_000)), deadline()],
        expect![[r#"
        turn 1 ── start with 1 fact(s)
          +      f1 Order {"id":"o1","state":"new"}
          fire   reserve (f1@1)
          +      f2 Reservation {"order":"o1"}
          ~      f1@2 Order {"state":"new"} -> {"state":"encoding"}
          call   media.encode {"order":"o1"} (priority 0) inv_c.1
          commit (1 firing(s))
        turn 2 ── cancel: customer asked
          cancel inv_c.1: workflow cancelling
          timer  1 Cancelled due at +1m
          +      f3 Cancelled {"deadline":61000,"reason":"customer asked"}
          fire   release (f3@1, f2@1)
          call   media.split {"release":"o1"} (priority 0) inv_c.2
          commit (1 firing(s))
        turn 3 ── timer 1 is due
          timer  1 Cancelled fired
          done   cancelled: customer asked (its cleanup did not end in time)
          cancel inv_c.2: workflow cancelled
          commit (0 firing(s))
        status: cancelled cancelled: customer asked (its cleanup did not end in time)
    "#]],
    );
}

#[test]
fn terminate_runs_no_rule() {
    run(
        &format!("{RESERVING}{CLEANUP}"),
        vec![Box::new(|_| Input::Terminate { reason: "stuck".into() })],
        expect![[r#"
            turn 1 ── start with 1 fact(s)
              +      f1 Order {"id":"o1","state":"new"}
              fire   reserve (f1@1)
              +      f2 Reservation {"order":"o1"}
              ~      f1@2 Order {"state":"new"} -> {"state":"encoding"}
              call   media.encode {"order":"o1"} (priority 0) inv_c.1
              commit (1 firing(s))
            turn 2 ── terminate: stuck
              done   terminated: stuck
              cancel inv_c.1: workflow cancelled
              commit (0 firing(s))
            status: cancelled terminated: stuck
        "#]],
    );
}

#[test]
fn a_cleanup_that_completes_ends_cancelled() {
    let rules = format!(
        "{RESERVING}{}",
        r#"rule "give up" { match { c: Cancelled() } action { complete(#{ refunded: true }); } }"#
    );
    run(
        &rules,
        vec![cancel(None)],
        expect![[r#"
        turn 1 ── start with 1 fact(s)
          +      f1 Order {"id":"o1","state":"new"}
          fire   reserve (f1@1)
          +      f2 Reservation {"order":"o1"}
          ~      f1@2 Order {"state":"new"} -> {"state":"encoding"}
          call   media.encode {"order":"o1"} (priority 0) inv_c.1
          commit (1 firing(s))
        turn 2 ── cancel: customer asked
          cancel inv_c.1: workflow cancelling
          timer  1 Cancelled due at +5m
          +      f3 Cancelled {"deadline":301000,"reason":"customer asked"}
          fire   give up (f3@1)
          done   cancelled: customer asked
          commit (1 firing(s))
        status: cancelled cancelled: customer asked
    "#]],
    );
}
