//! `stoa init NAME`: a new pack that passes `stoa check` and `stoa test`
//! as it is, to edit from there.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

#[derive(clap::Args)]
pub struct Args {
    /// The pack's name (letters, digits, `-`, `_`, `.`); also the
    /// directory made for it, unless --dir names another.
    name: String,
    /// Where to make the pack. Default: ./NAME. Refused if it exists and is
    /// not empty.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !stoa_rules::manifest::valid_pack_name(&args.name) {
        return Err(crate::exit::usage(format!(
            "`{}` is not a pack name: use 1 to 128 letters, digits, `-`, `_` or `.`",
            stoa_rules::diagnostic::shown(&args.name)
        )));
    }
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists() {
        let mut entries = std::fs::read_dir(&dir).with_context(|| format!("{} is not a directory", dir.display()))?;
        if entries.next().is_some() {
            anyhow::bail!("{} exists and is not empty; nothing was written", dir.display());
        }
    }
    for (path, text) in files(&args.name) {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("making {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let d = dir.display();
    println!("made pack {} in {d}", args.name);
    println!("  {d}/pack.toml          the manifest: the function the rule calls, the Order schema");
    println!("  {d}/orders.rules       a rule that calls the function and completes with its answer");
    println!("  {d}/tests/orders.toml  tests with a mocked function");
    println!("  {d}/facts.json, {d}/mocks.toml  for `stoa run`");
    println!("next: stoa check {d} && stoa test {d}");
    println!("      stoa run {d} --facts {d}/facts.json --mocks {d}/mocks.toml");
    Ok(ExitCode::SUCCESS)
}

/// The files of a new pack, by path in its directory.
fn files(name: &str) -> Vec<(&'static str, String)> {
    let function = format!("{name}.process");
    let manifest = format!(
        r#"[pack]
name = "{name}"
version = "0.1.0"
description = "An order is processed by a function; its answer completes the workflow."

# Every function the rules call: the timeout of one attempt, and the retry
# policy the dispatcher applies before the rule's `error` section runs.
[functions."{function}"]
timeout = "1m"
retry = {{ max_attempts = 3, initial_backoff = "1s", max_backoff = "30s" }}

# Facts of a declared type are checked against their schema, in requests
# and in rules (`?` marks an optional field; see docs/rules.md, "Fact schemas").
[facts.Order]
id = "string"
status = "string"
receipt = "string?"
"#
    );
    let rules = format!(
        r#"// A new order is sent to `{function}`; its answer completes the
// workflow, and a failure (after the retries of pack.toml) fails it.

rule "process order" {{
    match {{ o: Order(status == "new") }}
    action {{
        modify(o, #{{ status: "processing" }});
        call("{function}", #{{ id: o.id }});
    }}
    reaction {{
        modify(o, #{{ status: "done", receipt: result.receipt }});
        complete(#{{ order: o.id, receipt: result.receipt }});
    }}
    error {{
        modify(o, #{{ status: "failed" }});
        fail("order " + o.id + ": " + error.message);
    }}
}}
"#
    );
    let tests = format!(
        r#"# `stoa test` runs each [[test]]: it starts a workflow with `facts`,
# answers its calls from the mocks, and checks `expect` (docs/rules.md,
# "Test files").

[[test]]
name = "an order is processed and completes"
facts = [{{ type = "Order", fields = {{ id = "o-1", status = "new" }} }}]

[[test.mock]]
function = "{function}"
returns = {{ receipt = "r-1" }}

[test.expect]
status = "completed"
result = {{ order = "o-1", receipt = "r-1" }}
fired = ["process order"]
calls = {{ "{function}" = 1 }}
facts = [{{ type = "Order", fields = {{ status = "done", receipt = "r-1" }} }}]

[[test]]
name = "a failing function fails the order"
facts = [{{ type = "Order", fields = {{ id = "o-2", status = "new" }} }}]

[[test.mock]]
function = "{function}"
error = {{ message = "out of stock", retryable = false }}

[test.expect]
status = "failed"
reason = "out of stock"
facts = [{{ type = "Order", fields = {{ status = "failed" }} }}]
"#
    );
    let facts = r#"[
  { "type": "Order", "fields": { "id": "o-1", "status": "new" } }
]
"#
    .to_string();
    let mocks = format!(
        r#"# Answers for `stoa run`: the same [[mock]] format as test files.
[[mock]]
function = "{function}"
returns = {{ receipt = "r-1" }}
"#
    );
    vec![
        ("pack.toml", manifest),
        ("orders.rules", rules),
        ("tests/orders.toml", tests),
        ("facts.json", facts),
        ("mocks.toml", mocks),
    ]
}
