use expect_test::{expect, Expect};
use stoa_rules::testcase::FactSpec;
use stoa_rules::{Fields, Sym, Value};

use super::*;
use crate::network::Network;
use crate::testing::{pack, run_to_end};
use crate::workflow::Input;
use crate::WorkflowId;

fn fact(ty: &str, fields: &[(&str, Value)]) -> FactSpec {
    let mut f = Fields::new();
    for (k, v) in fields {
        f.set(Sym::new(k), v.clone());
    }
    FactSpec { ty: ty.into(), fields: f }
}

fn s(v: &str) -> Value {
    Value::Str(v.into())
}

/// Runs `rules` over `facts` to the end and explains `rule`.
fn explain_rule(rules: &str, facts: Vec<FactSpec>, rule_name: &str) -> String {
    let (wf, timeline) = run_to_end(pack(rules, ""), facts);
    let history = History::of(&timeline, Some(rule_name));
    let e = rule(&Subject::of_workflow(&wf), &history, rule_name).unwrap();
    // The JSON form reads back as what it was.
    let json = serde_json::to_string(&e).unwrap();
    assert_eq!(serde_json::from_str::<RuleExplain>(&json).unwrap(), e);
    rule_text(&e)
}

fn check(rules: &str, facts: Vec<FactSpec>, rule_name: &str, expect: Expect) {
    expect.assert_eq(&explain_rule(rules, facts, rule_name));
}

#[test]
fn no_fact_of_a_type() {
    check(
        r#"rule "reserve" { match { o: Order() s: Stock(sku == o.sku) } action { log("r"); } }"#,
        vec![fact("Order", &[("sku", s("a"))])],
        "reserve",
        expect![[r#"
            rule "reserve" (test/main.rules:1:6, salience 0) in wf_test (test 1, running)

            never fired

            not matching now: condition 2: there is no Stock fact

               1  o: Order()              Order: 1 fact, 1 pass        → 1 partial
               2  s: Stock(sku == o.sku)  Stock: 0 facts, 0 pass       → 0 partial   ✗ every partial match dies here
        "#]],
    );
}

#[test]
fn a_constraint_failing_with_its_values() {
    check(
        r#"rule "encode" { match { c: Chunk(status == "pending", size > 0) } action { log("e"); } }"#,
        vec![fact("Chunk", &[("status", s("encoding")), ("size", Value::Int(3))])],
        "encode",
        expect![[r#"
            rule "encode" (test/main.rules:1:6, salience 0) in wf_test (test 1, running)

            never fired

            not matching now: condition 1: no Chunk fact passes the condition's own tests

               1  c: Chunk(status == "pending", size > 0)  Chunk: 1 fact, 0 pass        → 0 partial   ✗ every partial match dies here

            closest: trying f1 Chunk v1
              fails `status == "pending"` (test/main.rules:1:34)
                    "encoding" == "pending"
        "#]],
    );
}

#[test]
fn a_join_that_dies() {
    check(
        r#"rule "encode" { match { j: Job(state == "open") c: Chunk(job == j.id, n > j.min) } action { log("e"); } }"#,
        vec![
            fact("Job", &[("id", s("j1")), ("state", s("open")), ("min", Value::Int(0))]),
            fact("Chunk", &[("job", s("j2")), ("n", Value::Int(1))]),
            fact("Chunk", &[("job", s("j1")), ("n", Value::Int(0))]),
        ],
        "encode",
        expect![[r#"
            rule "encode" (test/main.rules:1:6, salience 0) in wf_test (test 1, running)

            never fired

            not matching now: condition 2: no Chunk fact joins any partial match

               1  j: Job(state == "open")           Job: 1 fact, 1 pass          → 1 partial
               2  c: Chunk(job == j.id, n > j.min)  Chunk: 2 facts, 2 pass       → 0 partial   ✗ every partial match dies here

            closest: j = f1 Job v1; trying f3 Chunk v1
              fails `n > j.min` (test/main.rules:1:71)
                    0 > 0
        "#]],
    );
}

#[test]
fn a_not_blocked() {
    check(
        r#"rule "ship" { match { o: Order() not Hold(order == o.id) } action { log("ship"); } }"#,
        vec![fact("Order", &[("id", s("o1"))]), fact("Hold", &[("order", s("o1"))])],
        "ship",
        expect![[r#"
            rule "ship" (test/main.rules:1:6, salience 0) in wf_test (test 1, running)

            never fired

            not matching now: condition 2: every partial match is blocked by a Hold fact

               1  o: Order()               Order: 1 fact, 1 pass        → 1 partial
               2  not Hold(order == o.id)  Hold: 1 fact, 1 pass         → 0 partial   ✗ every partial match dies here
                  blocked by f2 Hold v1
        "#]],
    );
}

#[test]
fn an_exists_with_nothing() {
    check(
        r#"rule "go" { match { o: Order() exists Approval(order == o.id) } action { log("go"); } }"#,
        vec![fact("Order", &[("id", s("o1"))]), fact("Approval", &[("order", s("o2"))])],
        "go",
        expect![[r#"
            rule "go" (test/main.rules:1:6, salience 0) in wf_test (test 1, running)

            never fired

            not matching now: condition 2: no Approval fact joins any partial match

               1  o: Order()                      Order: 1 fact, 1 pass        → 1 partial
               2  exists Approval(order == o.id)  Approval: 1 fact, 1 pass     → 0 partial   ✗ every partial match dies here

            closest: o = f1 Order v1; trying f2 Approval v1
              fails `order == o.id` (test/main.rules:1:48)
                    "o2" == "o1"
        "#]],
    );
}

#[test]
fn aggregates_and_a_failing_test() {
    check(
        r#"rule "big order" {
            match {
                o: Order()
                n: count(Line(order == o.id))
                total: sum(Line(order == o.id), qty)
                test(n > 2 && total >= 1)
            }
            action { log("big"); }
        }"#,
        vec![
            fact("Order", &[("id", s("o1"))]),
            fact("Line", &[("order", s("o1")), ("qty", Value::Int(2))]),
            fact("Line", &[("order", s("o1")), ("qty", Value::Int(3))]),
        ],
        "big order",
        expect![[r#"
            rule "big order" (test/main.rules:1:6, salience 0) in wf_test (test 1, running)

            never fired

            not matching now: condition 4: the test is false for every partial match

               1  o: Order()                            Order: 1 fact, 1 pass        → 1 partial
               2  n: count(Line(order == o.id))         Line: 2 facts, 2 pass        → 1 partial
               3  total: sum(Line(order == o.id), qty)  Line: 2 facts, 2 pass        → 1 partial
               4  test(n > 2 && total >= 1)                                          → 0 partial   ✗ every partial match dies here

            closest: o = f1 Order v1
              fails `n > 2 && total >= 1` (test/main.rules:6:22)
                    (2 > 2) && (5 >= 1)
        "#]],
    );
}

#[test]
fn min_of_nothing() {
    check(
        r#"rule "cheapest" { match { o: Order() m: min(Line(order == o.id), price) } action { log("m"); } }"#,
        vec![fact("Order", &[("id", s("o1"))])],
        "cheapest",
        expect![[r#"
            rule "cheapest" (test/main.rules:1:6, salience 0) in wf_test (test 1, running)

            never fired

            not matching now: condition 2: there is no Line fact

               1  o: Order()                          Order: 1 fact, 1 pass        → 1 partial
               2  m: min(Line(order == o.id), price)  Line: 0 facts, 0 pass        → 0 partial   ✗ every partial match dies here
        "#]],
    );
}

#[test]
fn refraction_lists_the_firing_and_what_it_changed() {
    check(
        r#"rule "tag" { match { o: Order(state == "new") } action { insert("Tag", #{ order: o.id }); log("tagged"); } }"#,
        vec![fact("Order", &[("id", s("o1")), ("state", s("new"))])],
        "tag",
        expect![[r#"
            rule "tag" (test/main.rules:1:6, salience 0) in wf_test (test 1, running)

            fired 1 time:
              turn 1 #3 action   matched f1 v1
                  inserted f2 Tag {"order":"o1"}

            matches now: 1 complete match
              f1 Order v1
                already fired for these facts (turn 1, #3): a rule fires once per match

               1  o: Order(state == "new")  Order: 1 fact, 1 pass        → 1 partial
        "#]],
    );
}

#[test]
fn a_match_waiting_on_an_invocation() {
    let p = pack(r#"rule "encode" { match { c: Chunk() } action { call("media.encode", #{ n: c.n }); } }"#, "");
    let mut wf = Workflow::new(WorkflowId::new("wf_w"), p, 0);
    let out = wf.apply(Input::Start { facts: vec![fact("Chunk", &[("n", Value::Int(1))])] }, 1).unwrap();
    let history = History::of(&out.entries, Some("encode"));
    let e = rule(&Subject::of_workflow(&wf), &history, "encode").unwrap();
    expect![[r#"
        rule "encode" (test/main.rules:1:6, salience 0) in wf_w (test 1, running)

        fired 1 time:
          turn 1 #3 action   matched f1 v1
              called media.encode (inv_w.1)

        matches now: 1 complete match
          f1 Chunk v1
            fired; its action waits on inv_w.1 (media.encode) for reaction or error

           1  c: Chunk()  Chunk: 1 fact, 1 pass        → 1 partial
    "#]]
    .assert_eq(&rule_text(&e));
}

#[test]
fn a_finished_workflow_fires_nothing() {
    check(
        r#"rule "done" { salience 10 match { o: Order() } action { complete(); } }
           rule "late" { match { o: Order() } action { log("late"); } }"#,
        vec![fact("Order", &[("id", s("o1"))])],
        "late",
        expect![[r#"
            rule "late" (test/main.rules:2:17, salience 0) in wf_test (test 1, completed)

            never fired

            matches now: 1 complete match
              f1 Order v1
                the workflow is completed: no rule fires

               1  o: Order()  Order: 1 fact, 1 pass        → 1 partial
        "#]],
    );
}

#[test]
fn queued_behind_higher_salience_between_firings() {
    let p = pack(
        r#"rule "low" { match { o: Order() } action { log("low"); } }
           rule "high" { salience 5 match { o: Order() } action { log("high"); } }"#,
        "",
    );
    let mut net = Network::new(p.clone());
    net.prime().unwrap();
    let mut fields = Fields::new();
    fields.set(Sym::new("id"), s("o1"));
    let order = Fact { id: 1, ty: Sym::new("Order"), version: 1, fields, tag: 1 };
    net.insert(order.clone()).unwrap();
    let meta = Workflow::new(WorkflowId::new("wf_q"), p.clone(), 0).meta().clone();
    let subject = Subject { pack: &p, meta: &meta, facts: vec![&order], waiting: Vec::new(), queued: net.queued() };
    let e = rule(&subject, &History::new(None), "low").unwrap();
    expect![[r#"
        rule "low" (test/main.rules:1:6, salience 0) in wf_q (test 1, running)

        never fired

        matches now: 1 complete match
          f1 Order v1
            on the agenda at position 2, behind: high

           1  o: Order()  Order: 1 fact, 1 pass        → 1 partial
    "#]]
    .assert_eq(&rule_text(&e));
}

#[test]
fn a_fact_derivation_goes_back_to_the_inputs() {
    let p = pack(
        r#"rule "split" { match { j: Job() } action { insert("Chunk", #{ job: j.id, n: 1 }); } }
           rule "encode" { match { c: Chunk(state == ()) } action { modify(c, #{ state: "done" }); } }"#,
        "",
    );
    let (wf, timeline) = run_to_end(p, vec![fact("Job", &[("id", s("j1"))])]);
    let history = History::of(&timeline, None);
    let e = super::fact(&Subject::of_workflow(&wf), &history, 2).unwrap();
    expect![[r#"
        fact f2 Chunk in wf_test: v2 now: {"job":"j1","n":1,"state":"done"}

          inserted f2 Chunk v1 at turn 1 #4: by "split" (#3) matching f1 v1
          modified f2 Chunk v2 at turn 1 #6: by "encode" (#5) matching f2 v1

        from:
          inserted f1 Job v1 at turn 1 #2: input (start with 1 fact(s))
    "#]]
    .assert_eq(&fact_text(&e));
}

#[test]
fn unknown_rules_and_facts_are_named() {
    let (wf, timeline) = run_to_end(pack(r#"rule "encode chunk" { action { log("x"); } }"#, ""), Vec::new());
    let history = History::of(&timeline, None);
    let subject = Subject::of_workflow(&wf);
    let err = rule(&subject, &history, "encode chunks").unwrap_err();
    expect![[r#"pack test 1 has no rule "encode chunks" (did you mean "encode chunk"?)"#]].assert_eq(&err.to_string());
    let err = super::fact(&subject, &history, 99).unwrap_err();
    expect!["workflow wf_test has no fact f99 and never had one"].assert_eq(&err.to_string());
}

#[test]
fn explaining_changes_nothing() {
    let p = pack(
        r#"rule "a" { match { o: Order() } action { insert("Tag", #{}); } }
           rule "b" { match { t: Tag() not Done() } action { insert("Done", #{}); } }"#,
        "",
    );
    let (wf, timeline) = run_to_end(p, vec![fact("Order", &[])]);
    let before = (wf.snapshot().facts, wf.meta().clone());
    let history = History::of(&timeline, None);
    for r in ["a", "b"] {
        rule(&Subject::of_workflow(&wf), &history, r).unwrap();
    }
    assert_eq!((wf.snapshot().facts, wf.meta().clone()), before);
}

#[test]
fn no_loop_keeps_its_own_change_from_firing_again() {
    check(
        r#"rule "count" { no-loop match { c: Counter() } action { modify(c, #{ n: c.n + 1 }); } }"#,
        vec![fact("Counter", &[("n", Value::Int(0))])],
        "count",
        expect![[r#"
            rule "count" (test/main.rules:1:6, salience 0) in wf_test (test 1, running)

            fired 1 time:
              turn 1 #3 action   matched f1 v1
                  modified f1 Counter to v2: {"n":1}

            matches now: 1 complete match
              f1 Counter v2
                no-loop: it fired for these facts (turn 1, #3) and its own change made these versions

               1  c: Counter()  Counter: 1 fact, 1 pass      → 1 partial
        "#]],
    );
}

#[test]
fn a_cross_product_is_cut_short_and_says_so() {
    // The facts alone (the network would spend the turn on this product).
    let p = pack(r#"rule "pairs" { match { a: A() b: B(n > a.n + 1000000) } action { log("p"); } }"#, "");
    let mk = |id: u64, ty: &str, n: i64| {
        let mut fields = Fields::new();
        fields.set(Sym::new("n"), Value::Int(n));
        Fact { id, ty: Sym::new(ty), version: 1, fields, tag: id }
    };
    let facts: Vec<Fact> =
        (0..2300u64).flat_map(|i| [mk(2 * i + 1, "A", i as i64), mk(2 * i + 2, "B", i as i64)]).collect();
    let meta = Workflow::new(WorkflowId::new("wf_x"), p.clone(), 0).meta().clone();
    let subject =
        Subject { pack: &p, meta: &meta, facts: facts.iter().collect(), waiting: Vec::new(), queued: Vec::new() };
    let e = rule(&subject, &History::new(None), "pairs").unwrap();
    // 5.3M pairs: more than one explanation tries.
    assert!(e.conditions[1].truncated, "{:?}", e.conditions);
    assert!(matches!(&e.now, Now::NoMatch { why, .. } if why.contains("lower bounds")), "{:?}", e.now);
}
