//! Foreach semantics on real packs: a parent and every iteration it starts
//! run in process, each iteration a workflow of its compiled body pack, as
//! a server runs them (child workflows answered to the parent when they
//! end), with functions answered by the test and timers on a virtual clock.
//! What a server adds (persistence, dispatch) is covered by tests/dag_server.rs.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use stoa_engine::workflow::{ErrorKind, Origin, Outcome, CHILD_PREFIX};
use stoa_engine::{Input, InvocationId, Status, Workflow, WorkflowId};
use stoa_rules::compile::Pack;
use stoa_rules::testcase::FactSpec;
use stoa_rules::value::Value;

use crate::Source;

/// A function's answer, by name and arguments.
type Functions<'a> = dyn FnMut(&str, &serde_json::Value) -> Outcome + 'a;

pub fn ok(v: serde_json::Value) -> Outcome {
    Outcome::Ok { value: Value::from_json(&v), attempts: 1, failed: vec![] }
}

pub fn err(kind: ErrorKind, message: &str) -> Outcome {
    Outcome::Error { kind, message: message.into(), attempts: 1, retryable: true, failed: vec![] }
}

/// Every pack a definition compiles to, by name.
pub fn packs(yaml: &str) -> HashMap<String, Arc<Pack>> {
    let source = Source {
        path: "workflow.yaml".into(),
        text: yaml.to_string(),
        tests: Default::default(),
        imports: Default::default(),
    };
    let (packs, diags) = source.compile_all(Path::new("p"));
    let packs = packs.unwrap_or_else(|| panic!("{diags:?}"));
    packs
        .into_iter()
        .map(|p| {
            let (compiled, diags) = stoa_rules::compile::compile(&p);
            let compiled = compiled.unwrap_or_else(|| panic!("{diags:?}\n{}", p.files[Path::new("workflow.rules")]));
            (compiled.manifest.name.clone(), Arc::new(compiled))
        })
        .collect()
}

/// A workflow of the family and who waits for it.
struct Member {
    wf: Workflow,
    parent: Option<(usize, InvocationId)>,
    /// The `index` param it was started with (iterations only).
    index: Option<i64>,
}

pub struct Family {
    packs: HashMap<String, Arc<Pack>>,
    members: Vec<Member>,
    queue: VecDeque<(usize, Input)>,
    now: u64,
    /// Per parent, its children running now, and the most at once.
    running: HashMap<usize, (usize, usize)>,
    /// Per parent, the `index` of each child in the order they started.
    pub started: HashMap<usize, Vec<i64>>,
    /// Turns applied, to bound a runaway test.
    turns: usize,
}

impl Family {
    pub fn new(packs: HashMap<String, Arc<Pack>>) -> Family {
        Family {
            packs,
            members: Vec::new(),
            queue: VecDeque::new(),
            now: 1,
            running: HashMap::new(),
            started: HashMap::new(),
            turns: 0,
        }
    }

    /// Starts a workflow of `pack` with a `Params` fact; returns its number.
    pub fn start(&mut self, pack: &str, params: serde_json::Value) -> usize {
        let facts = vec![FactSpec { ty: "Params".into(), fields: fields(&params) }];
        self.spawn(pack, facts, Origin::Request, None)
    }

    fn spawn(
        &mut self,
        pack: &str,
        facts: Vec<FactSpec>,
        origin: Origin,
        parent: Option<(usize, InvocationId)>,
    ) -> usize {
        let p = self.packs.get(pack).unwrap_or_else(|| panic!("no pack {pack}")).clone();
        let n = self.members.len();
        let index = facts.first().and_then(|f| f.fields.to_json().get("index").and_then(|v| v.as_i64()));
        let wf = Workflow::new(WorkflowId::new(format!("wf_{n}")), p, self.now).with_origin(origin);
        self.members.push(Member { wf, parent, index });
        self.queue.push_back((n, Input::Start { facts }));
        n
    }

    pub fn status(&self, n: usize) -> Status {
        self.members[n].wf.status()
    }

    pub fn meta(&self, n: usize) -> &stoa_engine::workflow::Meta {
        self.members[n].wf.meta()
    }

    /// The most children of `n` that ran at once.
    pub fn max_running(&self, n: usize) -> usize {
        self.running.get(&n).map_or(0, |r| r.1)
    }

    pub fn count(&self) -> usize {
        self.members.len()
    }

    /// The `Step` facts of a workflow: id to (state, outputs).
    pub fn steps(&self, n: usize) -> BTreeMap<String, (String, serde_json::Value)> {
        self.members[n]
            .wf
            .facts()
            .iter()
            .filter(|f| f.ty.to_string() == "Step")
            .map(|f| {
                let j = f.fields.to_json();
                (
                    j["id"].as_str().unwrap_or("").to_string(),
                    (j["state"].as_str().unwrap_or("").to_string(), j["outputs"].clone()),
                )
            })
            .collect()
    }

    /// Runs until nothing is left to do: inputs first, then the earliest
    /// timer (the clock jumps to it).
    pub fn run(&mut self, functions: &mut Functions<'_>) {
        loop {
            while let Some((n, input)) = self.queue.pop_front() {
                self.turn(n, input, functions);
            }
            let next = self
                .members
                .iter()
                .enumerate()
                .filter(|(_, m)| !m.wf.status().is_finished())
                .flat_map(|(i, m)| m.wf.timers().map(move |t| (t.due_ms, i, t.id)))
                .min();
            let Some((due, n, _)) = next else { return };
            self.now = self.now.max(due);
            let ids: Vec<u64> = self.members[n].wf.timers().filter(|t| t.due_ms <= self.now).map(|t| t.id).collect();
            self.queue.push_back((n, Input::Timers { ids }));
        }
    }

    fn turn(&mut self, n: usize, input: Input, functions: &mut Functions<'_>) {
        self.turns += 1;
        assert!(self.turns < 2_000_000, "the family runs away");
        if self.members[n].wf.status().is_finished() {
            return;
        }
        self.now += 1;
        let out = match self.members[n].wf.apply(input, self.now) {
            Ok(o) => o,
            Err(e) => panic!("wf_{n}: {e:?}"),
        };
        for inv in out.invocations {
            if let Some(pack) = inv.function.strip_prefix(CHILD_PREFIX) {
                let args = inv.args.to_json();
                let facts: Vec<FactSpec> = serde_json::from_value(args["facts"].clone()).expect("facts");
                let ancestry: Vec<String> = serde_json::from_value(args["ancestry"].clone()).expect("ancestry");
                let origin = Origin::Parent { invocation: inv.id.clone(), ancestry };
                let c = self.spawn(pack, facts, origin, Some((n, inv.id.clone())));
                let r = self.running.entry(n).or_default();
                r.0 += 1;
                r.1 = r.1.max(r.0);
                let index = self.members[c].index.unwrap_or(-1);
                self.started.entry(n).or_default().push(index);
            } else {
                let outcome = functions(&inv.function, &inv.args.to_json());
                self.queue.push_back((n, Input::Result { invocation: inv.id, outcome }));
            }
        }
        let m = &self.members[n];
        if m.wf.status().is_finished() {
            if let Some((p, inv)) = m.parent.clone() {
                let meta = m.wf.meta();
                let outcome = match meta.status {
                    Status::Completed => Outcome::Ok { value: meta.result.clone(), attempts: 1, failed: vec![] },
                    _ => Outcome::Error {
                        kind: ErrorKind::Failed,
                        message: format!(
                            "child workflow {} failed: {}",
                            meta.id,
                            meta.reason.clone().unwrap_or_default()
                        ),
                        attempts: 1,
                        retryable: false,
                        failed: vec![],
                    },
                };
                if let Some(r) = self.running.get_mut(&p) {
                    r.0 -= 1;
                }
                self.queue.push_back((p, Input::Result { invocation: inv, outcome }));
            }
        }
    }
}

fn fields(v: &serde_json::Value) -> stoa_rules::value::Fields {
    stoa_rules::value::Fields::from_json(v).expect("an object")
}

const NESTED: &str = r#"
id: grid
params:
  rows: int
  cols: int
steps:
  - id: row
    foreach:
      range: { from: 0, to: "${rows}" }
      as: r
      index: ri
      concurrency: 3
      steps:
        - id: col
          foreach:
            range: { to: "${cols}" }
            as: c
            index: ci
            concurrency: 4
            steps:
              - { id: cell, function: grid.cell, params: { r: "${r}", c: "${c}" } }
        - { id: sum, type: noop, depends_on: [col], params: { cells: "${succeeded@col}" } }
  - { id: total, type: noop, depends_on: [row], params: { rows: "${succeeded@row}" } }
outputs:
  rows: ${succeeded@row}
"#;

#[test]
fn a_nested_foreach_runs_every_cell_within_both_caps() {
    let mut f = Family::new(packs(NESTED));
    let root = f.start("grid", serde_json::json!({ "rows": 7, "cols": 9 }));
    let mut cells = Vec::new();
    f.run(&mut |name, args| {
        assert_eq!(name, "grid.cell");
        cells.push((args["r"].as_i64().unwrap(), args["c"].as_i64().unwrap()));
        ok(serde_json::json!({}))
    });
    assert_eq!(f.status(root), Status::Completed, "{:?}", f.meta(root).reason);
    assert_eq!(f.meta(root).result.to_json(), serde_json::json!({ "rows": 7 }));
    cells.sort();
    let all: Vec<(i64, i64)> = (0..7).flat_map(|r| (0..9).map(move |c| (r, c))).collect();
    assert_eq!(cells, all, "every cell once");
    // 1 + 7 rows + 63 cells.
    assert_eq!(f.count(), 71);
    assert_eq!(f.max_running(root), 3);
    let rows: Vec<usize> = (0..f.count()).filter(|&n| f.meta(n).pack == "grid.row").collect();
    assert_eq!(rows.len(), 7);
    for n in rows {
        assert_eq!(f.max_running(n), 4, "row wf_{n}");
        assert_eq!(f.steps(n)["col"].1, serde_json::json!({ "total": 9, "succeeded": 9, "failed": 0 }));
    }
}

#[test]
fn a_sequential_foreach_runs_in_order_one_at_a_time() {
    let yaml = r#"
id: seq
params: { names: list }
steps:
  - id: each
    foreach:
      over: ${names}
      as: name
      sequential: true
      steps:
        - { id: greet, function: hello, params: { who: "${name}" } }
"#;
    let mut f = Family::new(packs(yaml));
    let root = f.start("seq", serde_json::json!({ "names": ["c", "a", "b", "d"] }));
    let mut order = Vec::new();
    f.run(&mut |_, args| {
        order.push(args["who"].as_str().unwrap().to_string());
        ok(serde_json::json!({}))
    });
    assert_eq!(f.status(root), Status::Completed);
    assert_eq!(order, ["c", "a", "b", "d"]);
    assert_eq!(f.started[&root], [0, 1, 2, 3]);
    assert_eq!(f.max_running(root), 1);
}

#[test]
fn the_concurrency_cap_holds_over_many_iterations() {
    let yaml = r#"
id: many
steps:
  - id: each
    foreach:
      range: { to: 3000 }
      concurrency: 250
      steps:
        - { id: work, type: sleep, params: { duration: 1s } }
"#;
    let mut f = Family::new(packs(yaml));
    let root = f.start("many", serde_json::json!({}));
    f.run(&mut |_, _| unreachable!());
    assert_eq!(f.status(root), Status::Completed, "{:?}", f.meta(root).reason);
    assert_eq!(f.max_running(root), 250);
    assert_eq!(f.started[&root], (0..3000).collect::<Vec<i64>>());
    assert_eq!(f.steps(root)["each"].1, serde_json::json!({ "total": 3000, "succeeded": 3000, "failed": 0 }));
    // The items' chunks and the counts are gone once the step ended.
    assert!(f.members[root].wf.facts().iter().all(|x| !x.ty.to_string().starts_with("Loop")));
}

const RETRIES: &str = r#"
id: flaky
params: { n: int }
steps:
  - id: each
    foreach:
      range: { to: "${n}" }
      on_failure: continue
      steps:
        - id: call
          function: flaky.call
          params: { i: "${index}" }
          retry:
            error: { attempts: 3, backoff: 10s }
            timeout: { attempts: 2 }
"#;

#[test]
fn iterations_retry_each_kind_of_failure_by_their_policy_and_the_rest_go_on() {
    // Iteration 1 errs twice then succeeds (within 3 attempts); 2 times
    // out once (within 2); 3 errs for good; 4 times out twice (past 2),
    // and fails first: a timeout is retried at once, an error after 10s.
    let mut f = Family::new(packs(RETRIES));
    let root = f.start("flaky", serde_json::json!({ "n": 6 }));
    let mut calls: HashMap<i64, u32> = HashMap::new();
    f.run(&mut |_, args| {
        let i = args["i"].as_i64().unwrap();
        let k = calls.entry(i).or_default();
        *k += 1;
        match (i, *k) {
            (1, 1 | 2) => err(ErrorKind::Failed, "busy"),
            (2, 1) => err(ErrorKind::Timeout, "start-to-close timeout"),
            (3, _) => err(ErrorKind::Failed, "corrupt input"),
            (4, _) => err(ErrorKind::Timeout, "start-to-close timeout"),
            _ => ok(serde_json::json!({})),
        }
    });
    assert_eq!(f.status(root), Status::Failed);
    assert_eq!(calls[&1], 3);
    assert_eq!(calls[&2], 2);
    assert_eq!(calls[&3], 3);
    assert_eq!(calls[&4], 2);
    assert_eq!(calls[&5], 1, "on_failure: continue runs every iteration");
    assert_eq!(f.steps(root)["each"].1, serde_json::json!({ "total": 6, "succeeded": 4, "failed": 2 }));
    let reason = f.meta(root).reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with("step each failed: 2 of 6 iterations failed; the first: child workflow wf_")
            && reason.ends_with("failed: iteration 4: step call failed: start-to-close timeout"),
        "{reason}"
    );
}

#[test]
fn a_foreach_over_an_upstream_output_passes_the_steps_params_in() {
    let yaml = r#"
id: fan
params: { prefix: string }
steps:
  - { id: list, function: ls, outputs: [files] }
  - id: each
    depends_on: [list]
    params: { bucket: "b-${prefix}" }
    foreach:
      over: ${files@list}
      as: file
      steps:
        - { id: copy, function: cp, params: { from: "${bucket}/${file}", n: "${index}", p: "${prefix}" } }
"#;
    let mut f = Family::new(packs(yaml));
    let root = f.start("fan", serde_json::json!({ "prefix": "x" }));
    let mut copies = Vec::new();
    f.run(&mut |name, args| match name {
        "ls" => ok(serde_json::json!({ "files": ["a.csv", "b.csv"] })),
        _ => {
            copies.push(args.clone());
            ok(serde_json::json!({}))
        }
    });
    assert_eq!(f.status(root), Status::Completed, "{:?}", f.meta(root).reason);
    assert_eq!(
        copies,
        [
            serde_json::json!({ "from": "b-x/a.csv", "n": 0, "p": "x" }),
            serde_json::json!({ "from": "b-x/b.csv", "n": 1, "p": "x" })
        ]
    );
}

#[test]
fn a_lost_worker_is_retried_by_the_platform_policy_not_the_error_one() {
    let yaml = r#"
id: lossy
steps:
  - id: each
    foreach:
      range: { to: 3 }
      on_failure: continue
      steps:
        - id: call
          function: crashy
          params: { i: "${index}" }
          retry:
            error: { attempts: 1 }
            platform: { attempts: 3 }
"#;
    // 0 loses its worker twice, then answers; 1 every time; 2 never.
    let mut f = Family::new(packs(yaml));
    let root = f.start("lossy", serde_json::json!({}));
    let mut calls: HashMap<i64, u32> = HashMap::new();
    f.run(&mut |_, args| {
        let i = args["i"].as_i64().unwrap();
        let k = calls.entry(i).or_default();
        *k += 1;
        match (i, *k) {
            (0, 1 | 2) | (1, _) => err(ErrorKind::Lost, "the worker running it was lost 1 time(s)"),
            _ => ok(serde_json::json!({})),
        }
    });
    assert_eq!((calls[&0], calls[&1], calls[&2]), (3, 3, 1));
    assert_eq!(f.steps(root)["each"].1, serde_json::json!({ "total": 3, "succeeded": 2, "failed": 1 }));
}
