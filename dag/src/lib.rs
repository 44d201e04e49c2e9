//! Maestro-style DAG definitions: a `workflow.yaml` of steps with
//! dependencies, parameters and outputs, checked with `file:line:col`
//! diagnostics and compiled to a rule pack (`pack.toml` and
//! `workflow.rules`) that `stoa_rules::compile` accepts. No I/O but
//! reading a definition's directory; no network, no engine.
//!
//! ```text
//! workflow.yaml ─► yaml (spanned nodes) ─► model (Dag) ─► validate (Graph)
//!                                                      └─► emit (pack files)
//! ```

#![deny(missing_docs)]

mod breakpoints;
mod compute;
mod emit;
mod expr;
mod foreach;
/// The definition model.
#[allow(missing_docs)]
pub mod model;
pub mod restart;
mod strategy;
mod triggers;
mod types;
mod validate;
mod yaml;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use stoa_rules::compile::PackSource;
use stoa_rules::diagnostic::SourceMap;
use stoa_rules::{Code, Diagnostic};

pub use emit::Emitted;
pub use model::{Dag, MAX_FOREACH_DEPTH, MAX_ITERATIONS, MAX_STEPS};
pub use validate::Graph;

/// The file a definition directory holds.
pub const FILE: &str = "workflow.yaml";

/// The same definition written as JSON (which is YAML, so it is read, and
/// its diagnostics placed, the same way): what the API takes from
/// programs. A directory with both is read from `workflow.yaml`.
pub const JSON_FILE: &str = "workflow.json";

/// The definition file of a directory, if it has one.
pub fn definition_file(dir: &Path) -> Option<PathBuf> {
    [FILE, JSON_FILE].iter().map(|f| dir.join(f)).find(|p| p.is_file())
}

/// A definition that passed every check, ready to compile.
pub struct Definition {
    /// The model read from the YAML.
    pub dag: Dag,
    /// Its dependency graph.
    pub graph: Graph,
    /// The file's name as the compiled pack's comments cite it.
    source_name: String,
    /// The templates its steps run, each compiled to a pack of its own.
    templates: Vec<Definition>,
}

/// Checks a definition's text; `path` is shown in diagnostics. Returns the
/// definition if it has no error, and every diagnostic, sorted by position.
pub fn check(path: &Path, text: &str) -> (Option<Definition>, Vec<Diagnostic>) {
    check_with(path, text, &Imports::new())
}

/// The files a definition's `import` names, by the name as written: the
/// path diagnostics show, and the text.
pub type Imports = BTreeMap<String, (PathBuf, String)>;

/// `check`, with the text of the files the definition imports.
pub fn check_with(path: &Path, text: &str, imports: &Imports) -> (Option<Definition>, Vec<Diagnostic>) {
    let mut r = model::Reader { path, diags: Vec::new() };
    let root = match yaml::parse(text) {
        Ok(n) => n,
        Err(e) => {
            r.error(e.pos, Code::DagFormat, format!("YAML: {}", e.message));
            return (None, r.diags);
        }
    };
    // Imported definitions are templates: checked on their own first (a
    // template imports nothing), so that steps using them are checked
    // against their parameters.
    let mut templates = Vec::new();
    for (name, (tpath, ttext)) in imports {
        if !types::is_template(ttext) {
            continue;
        }
        let (def, diags) = check_with(tpath, ttext, &Imports::new());
        r.diags.extend(diags);
        match def {
            Some(d) => templates.push((name.clone(), d)),
            None => r.diags.push(Diagnostic::error(
                path,
                stoa_rules::Pos::new(1, 1),
                Code::DagReference,
                format!("the imported template `{name}` has errors (shown at its lines)"),
            )),
        }
    }
    let signatures: Vec<types::TypeDecl> = templates.iter().map(|(_, d)| types::signature(&d.dag)).collect();
    let dag = model::read(&mut r, &root, imports, &signatures);
    if let Some(d) = &dag {
        triggers::check(&mut r, d);
    }
    let map = SourceMap::new(text);
    let graph = dag.as_ref().map(|d| validate::check(&mut r, &map, d));
    let mut diags = r.diags;
    diags.sort_by(|a, b| (a.path != path, &a.path, a.pos).cmp(&(b.path != path, &b.path, b.pos)));
    let ok = !diags.iter().any(Diagnostic::is_error);
    let source_name = path.file_name().map_or(FILE.to_string(), |f| f.to_string_lossy().into_owned());
    let def = match (dag, graph) {
        (Some(dag), Some(graph)) if ok => {
            // Only the templates a step uses are compiled with it.
            let used = |id: &str| dag_uses(&dag, id);
            let templates = templates.into_iter().map(|(_, d)| d).filter(|d| used(&d.dag.id.text)).collect();
            Some(Definition { dag, graph, source_name, templates })
        }
        _ => None,
    };
    (def, diags)
}

/// Whether a step of `dag` (or of a foreach body in it) runs template `id`.
fn dag_uses(dag: &Dag, id: &str) -> bool {
    dag.steps.iter().any(|s| match &s.ty {
        model::StepType::Subworkflow(w) => s.typed.as_ref().is_some_and(|t| t.name == id) && w.as_str() == Some(id),
        model::StepType::Foreach(f) => dag_uses(&f.body, id),
        _ => false,
    })
}

impl Definition {
    /// The packs the definition compiles to: one per foreach body
    /// (innermost first), then its own, last.
    pub fn emit(&self) -> Vec<Emitted> {
        let mut out: Vec<Emitted> = self.templates.iter().flat_map(Definition::emit).collect();
        out.extend(emit::emit(&self.dag, &self.graph, &self.source_name));
        out
    }
}

/// Where `stoa dag compile --out DIR` puts a foreach body's or a template's pack: under a
/// dot-directory, which a pack directory's reader skips, so that `DIR`
/// stays the definition's own pack.
pub fn body_dir(root: &Path, name: &str) -> PathBuf {
    root.join(".packs").join(name)
}

/// A definition directory (or a `workflow.yaml` file) read from disk: the
/// definition's text and the test files beside it (`tests/**/*.toml`),
/// which the compiled pack keeps.
pub struct Source {
    /// The definition file, as diagnostics show it.
    pub path: PathBuf,
    /// Its text.
    pub text: String,
    /// Test files, by path relative to the directory.
    pub tests: BTreeMap<PathBuf, String>,
    /// The files its `import` names that could be read.
    pub imports: Imports,
}

/// The most files a definition may import, and their size.
const MAX_IMPORTS: usize = 32;
const MAX_IMPORT_BYTES: u64 = 1 << 20;

/// The files `import` names in a definition's text, read from `dir`; one
/// that cannot be read is left out (the check reports it at its place).
fn read_imports(dir: &Path, text: &str) -> Imports {
    let mut out = Imports::new();
    let Ok(root) = yaml::parse(text) else { return out };
    let yaml::Kind::Map(entries) = &root.kind else { return out };
    let Some((_, list)) = entries.iter().find(|(k, _)| k.as_str() == Some("import")) else { return out };
    let yaml::Kind::Seq(items) = &list.kind else { return out };
    for item in items.iter().take(MAX_IMPORTS) {
        let Some(name) = item.as_str() else { continue };
        let path = dir.join(name);
        let small = std::fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() <= MAX_IMPORT_BYTES);
        if let (true, Ok(bytes)) = (small, std::fs::read(&path)) {
            if let Ok(text) = stoa_rules::compile::file_text(&path, bytes) {
                out.insert(name.to_string(), (path, text));
            }
        }
    }
    out
}

impl Source {
    /// Reads `DIR/workflow.yaml` and `DIR/tests/**/*.toml`, or one file.
    pub fn read(at: &Path) -> Result<Source, Diagnostic> {
        let (dir, path) = if at.is_dir() {
            (at.to_path_buf(), definition_file(at).unwrap_or_else(|| at.join(FILE)))
        } else {
            (at.parent().unwrap_or(Path::new(".")).to_path_buf(), at.to_path_buf())
        };
        let io = |p: &Path, e: std::io::Error| {
            Diagnostic::error(p, stoa_rules::Pos::new(1, 1), Code::Pack, format!("cannot read: {e}"))
        };
        let bytes = std::fs::read(&path).map_err(|e| io(&path, e))?;
        let text = stoa_rules::compile::file_text(&path, bytes)?;
        let mut tests = BTreeMap::new();
        let tdir = dir.join("tests");
        if tdir.is_dir() && at.is_dir() {
            let mut stack = vec![tdir];
            while let Some(d) = stack.pop() {
                let entries = std::fs::read_dir(&d).map_err(|e| io(&d, e))?;
                for e in entries {
                    let e = e.map_err(|e| io(&d, e))?;
                    let p = e.path();
                    if p.is_dir() {
                        stack.push(p);
                    } else if p.extension().is_some_and(|x| x == "toml") {
                        let bytes = std::fs::read(&p).map_err(|e| io(&p, e))?;
                        let rel = p.strip_prefix(&dir).unwrap_or(&p).to_path_buf();
                        tests.insert(rel, stoa_rules::compile::file_text(&p, bytes)?);
                    }
                }
            }
        }
        let imports = read_imports(&dir, &text);
        Ok(Source { path, text, tests, imports })
    }

    /// Checks and compiles the definition into the files of a pack shown
    /// under `root` (the directory `stoa dag compile --out` writes, or the
    /// definition's own for a compile in memory): `pack.toml`,
    /// `workflow.rules` and the tests. `None` when the definition has an
    /// error; the diagnostics either way.
    pub fn compile(&self, root: &Path) -> (Option<PackSource>, Vec<Diagnostic>) {
        let (packs, diags) = self.compile_all(root);
        (packs.and_then(|mut p| p.pop()), diags)
    }

    /// Like `compile`, with the packs of the foreach bodies before the
    /// definition's own (last): the order to deploy them in. A body's
    /// pack is shown under `body_dir(root, name)`; the tests go with the
    /// definition's own.
    pub fn compile_all(&self, root: &Path) -> (Option<Vec<PackSource>>, Vec<Diagnostic>) {
        let (def, diags) = check_with(&self.path, &self.text, &self.imports);
        let Some(def) = def else { return (None, diags) };
        let emitted = def.emit();
        let last = emitted.len() - 1;
        let packs = emitted
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                let mut files = BTreeMap::new();
                files.insert(PathBuf::from("pack.toml"), e.manifest);
                files.insert(PathBuf::from("workflow.rules"), e.rules);
                let root = if i == last {
                    files.extend(self.tests.clone());
                    root.to_path_buf()
                } else {
                    body_dir(root, &e.name)
                };
                PackSource { root, files }
            })
            .collect();
        (Some(packs), diags)
    }
}

#[cfg(test)]
mod family_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_ops;

impl Source {
    /// A diagnostic rendered with its source line, from the definition or
    /// the imported file it is in.
    pub fn render(&self, d: &Diagnostic) -> String {
        let text = if d.path == self.path {
            Some(self.text.as_str())
        } else {
            self.imports.values().find(|(p, _)| *p == d.path).map(|(_, t)| t.as_str())
        };
        d.render_in(text.map(SourceMap::new).as_ref())
    }
}
