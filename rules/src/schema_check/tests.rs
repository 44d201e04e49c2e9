use std::path::PathBuf;

use expect_test::{expect, Expect};

use crate::compile::{compile, PackSource};

const MANIFEST: &str = r#"[pack]
name = "shop"
version = "1"

[functions."stock.reserve"]

[facts.Order]
id = "string"
status = "string"
amount = "number"
reservation = "string?"
tracking = "string?"
"#;

fn source(manifest: &str, rules: &str, tests: Option<&str>) -> PackSource {
    let mut files = std::collections::BTreeMap::new();
    files.insert(PathBuf::from("pack.toml"), manifest.to_string());
    files.insert(PathBuf::from("shop.rules"), rules.to_string());
    if let Some(t) = tests {
        files.insert(PathBuf::from("tests/shop.toml"), t.to_string());
    }
    PackSource { root: PathBuf::from("shop"), files }
}

/// Every diagnostic of the pack, rendered as `stoa check` prints them.
fn check_with(manifest: &str, rules: &str, tests: Option<&str>, expect: Expect) {
    let src = source(manifest, rules, tests);
    let (_, diags) = compile(&src);
    expect.assert_eq(&src.render(&diags).join("\n"));
}

fn check(rules: &str, expect: Expect) {
    check_with(MANIFEST, rules, None, expect);
}

/// The four misspellings of issue 13, each passed `stoa check` silently.
#[test]
fn misspelt_fields_and_types_are_found_where_they_are_written() {
    check(
        r#"rule "reserve" {
    match { o: Order(stauts == "new") }
    action {
        modify(o, #{ status: "reserving" });
        call("stock.reserve", #{ order: o.id, hold: o.reservaton });
    }
    reaction { modify(o, #{ trackng: result.tracking }); }
}

rule "ship" {
    match { o: Ordr(status == "reserved") }
    action { modify(o, #{ status: "shipped" }); }
}
"#,
        expect![[r#"
            shop/shop.rules:2:22: error[E0013]: `stauts` is not a field of Order: reading it always gives (); did you mean `status`?
              |
            2 |     match { o: Order(stauts == "new") }
              |                      ^
            shop/shop.rules:5:55: error[E0013]: `reservaton` is not a field of Order: reading it always gives (); did you mean `reservation`?
              |
            5 |         call("stock.reserve", #{ order: o.id, hold: o.reservaton });
              |                                                       ^
            shop/shop.rules:7:29: error[E0013]: modify: `trackng` is not a field of Order; did you mean `tracking`?
              |
            7 |     reaction { modify(o, #{ trackng: result.tracking }); }
              |                             ^
            shop/shop.rules:11:16: warning[E0015]: no schema declares `Ordr`, and no rule, test or schedule gives a fact of that type; did you mean `Order`?
               |
            11 |     match { o: Ordr(status == "reserved") }
               |                ^"#]],
    );
}

#[test]
fn every_way_of_reading_a_field_is_checked() {
    check(
        r#"rule "reads" {
    match {
        o: Order(this.amont > 0, id == "o1")
        n: count(Order(id == o.idd))
        s: sum(Order(status == o.status), amunt)
        test(o["statuss"] != () && n > 0)
    }
    action {
        let x = o.amount + o["amout"];
        log(`${o.stat.len()} ${o._id} ${o._type} ${o.status.len()}`);
        insert("Order", #{ id: "o2", status: "new", amount: 1, trackign: "t" });
    }
}
"#,
        expect![[r#"
            shop/shop.rules:3:23: error[E0013]: `amont` is not a field of Order: reading it always gives (); did you mean `amount`?
              |
            3 |         o: Order(this.amont > 0, id == "o1")
              |                       ^
            shop/shop.rules:4:32: error[E0013]: `idd` is not a field of Order: reading it always gives (); did you mean `id`?
              |
            4 |         n: count(Order(id == o.idd))
              |                                ^
            shop/shop.rules:5:43: error[E0013]: `amunt` is not a field of Order: reading it always gives (); did you mean `amount`?
              |
            5 |         s: sum(Order(status == o.status), amunt)
              |                                           ^
            shop/shop.rules:6:17: error[E0013]: `statuss` is not a field of Order: reading it always gives (); did you mean `status`?
              |
            6 |         test(o["statuss"] != () && n > 0)
              |                 ^
            shop/shop.rules:9:31: error[E0013]: `amout` is not a field of Order: reading it always gives (); did you mean `amount`?
              |
            9 |         let x = o.amount + o["amout"];
              |                               ^
            shop/shop.rules:10:18: error[E0013]: `stat` is not a field of Order: reading it always gives () (its fields: `amount`, `id`, `reservation`, `status` and `tracking`)
               |
            10 |         log(`${o.stat.len()} ${o._id} ${o._type} ${o.status.len()}`);
               |                  ^
            shop/shop.rules:11:64: error[E0013]: insert: `trackign` is not a field of Order; did you mean `tracking`?
               |
            11 |         insert("Order", #{ id: "o2", status: "new", amount: 1, trackign: "t" });
               |                                                                ^"#]],
    );
}

#[test]
fn literals_of_the_wrong_type_and_missing_required_fields() {
    check(
        r#"rule "types" {
    match {
        o: Order(amount == "x", "new" != status, status == 3 + 1, amount >= 2.5, reservation == ())
        p: Order(status == true || amount < "10")
    }
    action {
        modify(o, #{ amount: "ten", status: (), tracking: () });
        insert("Order", #{ id: "o3", amount: 2 });
        insert("Order", #{ id: 7, status: `s${1}`, amount: 1.5, reservation: [1] });
    }
}
"#,
        expect![[r#"
            shop/shop.rules:3:28: error[E0014]: Order.amount holds number values; comparing it with string "x" is always false
              |
            3 |         o: Order(amount == "x", "new" != status, status == 3 + 1, amount >= 2.5, reservation == ())
              |                            ^
            shop/shop.rules:4:28: error[E0014]: Order.status holds string values; comparing it with bool true is always false
              |
            4 |         p: Order(status == true || amount < "10")
              |                            ^
            shop/shop.rules:4:45: error[E0014]: Order.amount holds number values; comparing it with string "10" is always false
              |
            4 |         p: Order(status == true || amount < "10")
              |                                             ^
            shop/shop.rules:7:30: error[E0014]: modify: Order.amount must be number, found string
              |
            7 |         modify(o, #{ amount: "ten", status: (), tracking: () });
              |                              ^
            shop/shop.rules:7:45: error[E0008]: modify: Order.status is required by the schema; `()` would remove it
              |
            7 |         modify(o, #{ amount: "ten", status: (), tracking: () });
              |                                             ^
            shop/shop.rules:8:25: error[E0008]: insert: Order needs `status` (required by the schema, without a default)
              |
            8 |         insert("Order", #{ id: "o3", amount: 2 });
              |                         ^
            shop/shop.rules:9:32: error[E0014]: insert: Order.id must be string, found int
              |
            9 |         insert("Order", #{ id: 7, status: `s${1}`, amount: 1.5, reservation: [1] });
              |                                ^
            shop/shop.rules:9:78: error[E0014]: insert: Order.reservation must be string, found array
              |
            9 |         insert("Order", #{ id: 7, status: `s${1}`, amount: 1.5, reservation: [1] });
              |                                                                              ^"#]],
    );
}

#[test]
fn what_is_not_known_stays_unchecked() {
    // Free-form types, value bindings, locals that shadow a binding, writes
    // to a script's copy of a fact, and types no schema declares but some
    // rule or test gives.
    check_with(
        MANIFEST,
        r#"rule "free" {
    match {
        j: Job(anything == "x", o == 1)
        n: count(Order())
        l: Line(qty > 0)
    }
    action {
        let o = #{ whatever: 1 };
        log(`${o.whatever} ${j.more} ${n}`);
        insert("Lines", #{ n: 1 });
        insert("Audit", #{ n: 1 });
        modify(j, #{ whatever: 2 });
    }
}

rule "copy" {
    match { o: Order(this != (), "x" in this) p: Order() }
    action { o.scratch = 1; call("stock.reserve", o); p = #{ other: 1 }; log(p.other); }
}
"#,
        Some(
            r#"[[test]]
name = "lines"
facts = [{ type = "Line", fields = { qty = 1 } }, { type = "Job", fields = {} }]
[test.expect]
facts = [{ type = "Audit" }]
"#,
        ),
        expect![[r#"
            shop/shop.rules:10:16: warning[E0015]: no schema declares `Lines`, and no rule matches nor test expects a fact of that type; did you mean `Line`?
               |
            10 |         insert("Lines", #{ n: 1 });
               |                ^"#]],
    );
}

#[test]
fn an_inserted_type_no_rule_matches_close_to_a_declared_one_is_a_warning() {
    check(
        r#"rule "new" {
    match { not Order(id == "o1") }
    action { insert("Orders", #{ id: "o1" }); after("1h", "Ordr", #{ id: "o1" }); }
}
"#,
        expect![[r#"
            shop/shop.rules:3:21: warning[E0015]: no schema declares `Orders`, and no rule matches nor test expects a fact of that type; did you mean `Order`?
              |
            3 |     action { insert("Orders", #{ id: "o1" }); after("1h", "Ordr", #{ id: "o1" }); }
              |                     ^
            shop/shop.rules:3:59: warning[E0015]: no schema declares `Ordr`, and no rule matches nor test expects a fact of that type; did you mean `Order`?
              |
            3 |     action { insert("Orders", #{ id: "o1" }); after("1h", "Ordr", #{ id: "o1" }); }
              |                                                           ^"#]],
    );
}

#[test]
fn strict_mode_needs_a_schema_for_every_type() {
    let manifest = format!("{MANIFEST}\n[facts]\nstrict = true\n");
    check_with(
        &manifest,
        r#"rule "strict" {
    match { o: Order() j: Job() s: Signal() }
    action { insert("Audit", #{ n: 1 }); }
}
"#,
        Some(
            r#"[[test]]
name = "t"
facts = [{ type = "Job", fields = {} }, { type = "Order", fields = { id = "o", status = "new", amount = 1 } }]
"#,
        ),
        expect![[r#"
            shop/shop.rules:2:27: error[E0015]: Job has no schema, and `[facts] strict = true` requires one
              |
            2 |     match { o: Order() j: Job() s: Signal() }
              |                           ^
            shop/shop.rules:3:21: error[E0015]: Audit has no schema, and `[facts] strict = true` requires one
              |
            3 |     action { insert("Audit", #{ n: 1 }); }
              |                     ^
            shop/tests/shop.toml:3:10: error[E0015]: test "t": Job has no schema, and `[facts] strict = true` requires one
              |
            3 | facts = [{ type = "Job", fields = {} }, { type = "Order", fields = { id = "o", status = "new", amoun…
              |          ^"#]],
    );
}

#[test]
fn defaults_fill_missing_fields_of_new_facts() {
    let manifest = r#"[pack]
name = "shop"
version = "1"

[facts.Order]
id = "string"
status = { type = "string", default = "new" }
tries = { type = "int?", default = 0 }
"#;
    check_with(
        manifest,
        r#"rule "new" {
    match { o: Order(status == "new") }
    action { insert("Order", #{ id: "o2" }); }
}
"#,
        Some(
            r#"[[test]]
name = "t"
facts = [{ type = "Order", fields = { id = "o" } }]
"#,
        ),
        expect![[r#""#]],
    );
    let m = crate::manifest::parse_manifest(std::path::Path::new("pack.toml"), manifest).unwrap();
    let mut f = crate::value::Fields::from_json(&serde_json::json!({"id": "o", "tries": null})).unwrap();
    m.facts["Order"].fill_defaults(&mut f);
    assert_eq!(f.to_json().to_string(), r#"{"id":"o","status":"new","tries":0}"#);
}

/// `[functions."f".args]` declares what `call` passes: names, literal types
/// and required arguments are checked where the map is written.
#[test]
fn call_arguments_are_checked_against_the_function_args_schema() {
    let manifest = r#"[pack]
name = "shop"
version = "1"

[functions."stock.reserve"]
timeout = "1m"

[functions."stock.reserve".args]
order = "string"
qty = { type = "int", default = 1 }
note = "string?"

[facts.Order]
id = "string"
"#;
    check_with(
        manifest,
        r#"rule "reserve" {
    match { o: Order() }
    action {
        call("stock.reserve", #{ ordr: o.id, qty: "two" });
        call("stock.reserve", #{ order: o.id });
        call("stock.reserve", o);
    }
}
"#,
        None,
        expect![[r#"
            shop/shop.rules:4:31: error[E0008]: call: stock.reserve(args) needs `order` (required by the schema, without a default)
              |
            4 |         call("stock.reserve", #{ ordr: o.id, qty: "two" });
              |                               ^
            shop/shop.rules:4:34: error[E0013]: call: `ordr` is not a field of stock.reserve(args); did you mean `order`?
              |
            4 |         call("stock.reserve", #{ ordr: o.id, qty: "two" });
              |                                  ^
            shop/shop.rules:4:51: error[E0014]: call: stock.reserve(args).qty must be int, found string
              |
            4 |         call("stock.reserve", #{ ordr: o.id, qty: "two" });
              |                                                   ^"#]],
    );
}
