//! From pack files to a compiled `Pack`: rules with classified constraints
//! (alpha tests, a hash-join key, beta tests; native or Rhai), compiled
//! sections, parsed tests, and every diagnostic found on the way.

use std::any::Any;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::diagnostic::{Code, Diagnostic, Pos, Severity, SourceMap};
use crate::expr::{self, BinOp, BindingKind, Expr};
use crate::limits::Ceilings;
use crate::manifest::{parse_manifest, Manifest};
use crate::native::{self, NativeAction};
use crate::sandbox::{CompileError, CompileErrorKind, Sandbox, Script};
use crate::schema_check::PackCheck;
use crate::syntax::{parse_rules, AggFn, ConditionAst, PatternAst, RuleAst, Text};
use crate::testcase::{parse_tests, TestCase};
use crate::value::Sym;

/// The files of a pack, by path relative to the pack root.
#[derive(Clone, Debug, Default)]
pub struct PackSource {
    /// Shown in diagnostics before each relative path.
    pub root: PathBuf,
    /// Relative path to file text.
    pub files: BTreeMap<PathBuf, String>,
}

impl PackSource {
    /// Reads `pack.toml`, every `*.rules` file and `tests/**/*.toml`.
    pub fn read_dir(root: &Path) -> std::io::Result<PackSource> {
        let mut files = BTreeMap::new();
        fn walk(root: &Path, dir: &Path, files: &mut BTreeMap<PathBuf, String>) -> std::io::Result<()> {
            let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
            entries.sort_by_key(|e| e.path());
            for e in entries {
                let p = e.path();
                let rel = p.strip_prefix(root).unwrap_or(&p).to_path_buf();
                if e.file_type()?.is_dir() {
                    if !e.file_name().to_string_lossy().starts_with('.') {
                        walk(root, &p, files)?;
                    }
                } else if rel == Path::new("pack.toml")
                    || p.extension().is_some_and(|x| x == "rules")
                    || (rel.starts_with("tests") && p.extension().is_some_and(|x| x == "toml"))
                {
                    let text = file_text(&p, std::fs::read(&p)?)
                        .map_err(|d| std::io::Error::new(std::io::ErrorKind::InvalidData, d.to_string()))?;
                    files.insert(rel, text);
                }
            }
            Ok(())
        }
        walk(root, root, &mut files)?;
        Ok(PackSource { root: root.to_path_buf(), files })
    }

    pub fn display_path(&self, rel: &Path) -> PathBuf {
        self.root.join(rel)
    }

    /// The text of a file, by the path diagnostics show.
    pub fn text_at(&self, shown: &Path) -> Option<&str> {
        let rel = shown.strip_prefix(&self.root).unwrap_or(shown);
        self.files.get(rel).map(String::as_str)
    }

    /// Each diagnostic rendered with its source line (`Diagnostic::render`),
    /// reading each file once however many diagnostics it has.
    pub fn render<'d>(&self, diags: impl IntoIterator<Item = &'d Diagnostic>) -> Vec<String> {
        let mut maps: BTreeMap<&Path, Option<SourceMap>> = BTreeMap::new();
        diags
            .into_iter()
            .map(|d| {
                let map = maps.entry(&d.path).or_insert_with(|| self.text_at(&d.path).map(SourceMap::new));
                d.render_in(map.as_ref())
            })
            .collect()
    }
}

/// The text of a pack file: its bytes if they are UTF-8, else an error at
/// the line and column of the first byte that is not (where bytes from a
/// disk or a request become text).
pub fn file_text(path: &Path, bytes: Vec<u8>) -> Result<String, Diagnostic> {
    String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        let valid = e.utf8_error().valid_up_to();
        let head = std::str::from_utf8(&bytes[..valid]).unwrap_or_default();
        let pos = crate::diagnostic::SourceMap::new(head).pos(valid);
        let msg = format!("not UTF-8 text (byte {:#04x}); pack files are UTF-8", bytes[valid]);
        Diagnostic::error(path, pos, Code::Pack, msg)
    })
}

/// A constraint, evaluated natively when it can be.
#[derive(Clone, Debug)]
pub enum Constraint {
    Native(Expr),
    /// A Rhai expression; its variables are `this` then the rule's named
    /// slots in order (see `Rule::script_slots`).
    Script {
        script: Script,
        text: String,
    },
}

/// A hash-join: `field` of the current fact equals `key` computed from the
/// earlier bindings.
#[derive(Clone, Debug)]
pub struct JoinKey {
    pub field: Sym,
    pub key: Expr,
}

#[derive(Clone, Debug)]
pub struct Pattern {
    pub ty: Sym,
    /// Tests on the fact alone.
    pub alpha: Vec<Constraint>,
    /// Every equality join of the pattern: together they key its hash
    /// indexes (a composite key when there are several).
    pub joins: Vec<JoinKey>,
    /// Tests that read earlier bindings.
    pub beta: Vec<Constraint>,
    /// The constraints as written, for explanations: `alpha`, `joins` and
    /// `beta` each have their text at the same index.
    pub text: PatternText,
}

/// The source text of a pattern's constraints, by where each went.
#[derive(Clone, Debug, Default)]
pub struct PatternText {
    pub alpha: Vec<Text>,
    pub joins: Vec<Text>,
    pub beta: Vec<Text>,
}

/// A condition as written, for explanations (`explain` shows which one
/// stops a rule and where it is).
#[derive(Clone, Debug)]
pub struct ConditionText {
    pub pos: Pos,
    /// The condition with its whitespace collapsed, e.g.
    /// `c: Chunk(status == "pending", job == j.id)`.
    pub text: String,
    /// The aggregate's operand or the `test` expression, as written.
    pub expr: Option<Text>,
}

#[derive(Clone, Debug)]
pub enum Condition {
    Pattern { slot: usize, pattern: Pattern },
    Not(Pattern),
    Exists(Pattern),
    Aggregate { slot: usize, func: AggFn, pattern: Pattern, over: Option<Constraint> },
    Test(Constraint),
}

#[derive(Clone, Debug)]
pub struct Slot {
    pub name: Option<String>,
    pub kind: BindingKind,
}

#[derive(Clone, Debug)]
pub struct Section {
    pub script: Script,
    /// The same action as native steps, when it is only fact changes.
    pub native: Option<Arc<NativeAction>>,
    pub file: PathBuf,
    pub pos: Pos,
}

#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    /// Declaration order in the pack.
    pub index: usize,
    pub salience: i32,
    pub no_loop: bool,
    pub slots: Vec<Slot>,
    pub conditions: Vec<Condition>,
    /// Each condition as written, at the same index as `conditions`.
    pub condition_text: Vec<ConditionText>,
    pub action: Option<Section>,
    pub reaction: Option<Section>,
    pub error: Option<Section>,
    /// Stable hash of the rule's text: same identity, same rule (used to
    /// decide what already fired when a pack version changes).
    pub identity: u64,
    pub file: PathBuf,
    pub pos: Pos,
}

impl Rule {
    /// Slots visible to scripts (named ones), in order.
    pub fn script_slots(&self) -> impl Iterator<Item = (usize, &str)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| s.name.as_deref().map(|n| (i, n)))
    }
}

#[derive(Debug)]
pub struct Pack {
    pub manifest: Manifest,
    pub rules: Vec<Rule>,
    pub tests: Vec<(PathBuf, TestCase)>,
    pub sandbox: Arc<Sandbox>,
    pub source: PackSource,
    /// Stable hash of every file of the pack.
    pub digest: u64,
    /// What the engine derives from the rules alone (its network plan),
    /// made once and shared by every workflow of the pack.
    pub derived: Derived,
}

/// A value derived from a pack once, on first use, and shared for as long
/// as the pack lives: the engine keeps its network plan here, so that the
/// workflows of a pack do not each rebuild it. This crate does not know
/// what it holds (the engine depends on it, not the other way round).
#[derive(Default)]
pub struct Derived(OnceLock<Arc<dyn Any + Send + Sync>>);

impl Derived {
    /// The value `init` makes, made by the first call; later calls share
    /// it. (A value of another type, already there, stays: then `init`'s
    /// is made again on every call, unshared.)
    pub fn get_or_init<T: Any + Send + Sync>(&self, init: impl FnOnce() -> T) -> Arc<T> {
        let mut init = Some(init);
        let stored = self.0.get_or_init(|| match init.take() {
            Some(f) => Arc::new(f()),
            None => unreachable!("`get_or_init` runs its closure once"),
        });
        match (stored.clone().downcast::<T>(), init) {
            (Ok(v), _) => v,
            (Err(_), Some(f)) => Arc::new(f()),
            (Err(_), None) => unreachable!("the value just stored has type T"),
        }
    }
}

impl std::fmt::Debug for Derived {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() { "Derived(made)" } else { "Derived(not yet)" })
    }
}

/// FNV-1a: a fixed, documented hash, so identities persist across builds.
pub fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}
const FNV_SEED: u64 = 0xcbf29ce484222325;

/// The most diagnostics one compile returns: a pack written to fail in
/// every line must not make its deploy answer megabytes (every one is
/// found; the rest are counted).
pub const MAX_DIAGNOSTICS: usize = 200;

/// Compiles a pack; returns it only if there is no error. Diagnostics (errors
/// and warnings) are sorted by file and position.
pub fn compile(source: &PackSource) -> (Option<Pack>, Vec<Diagnostic>) {
    compile_within(source, None)
}

/// `compile`, with the pack's limits under `ceilings` (a server's, for the
/// tenant deploying it): the compiled pack runs with the effective limits.
pub fn compile_within(source: &PackSource, ceilings: Option<&Ceilings<'_>>) -> (Option<Pack>, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let manifest_path = source.display_path(Path::new("pack.toml"));
    let mut manifest = match source.files.get(Path::new("pack.toml")) {
        None => {
            diags.push(Diagnostic::error(&manifest_path, Pos::new(1, 1), Code::Pack, "the pack has no pack.toml"));
            None
        }
        Some(text) => match parse_manifest(&manifest_path, text) {
            Ok(m) => Some(m),
            Err(ds) => {
                diags.extend(ds);
                None
            }
        },
    };
    if let (Some(m), Some(c)) = (manifest.as_mut(), ceilings) {
        match c.apply(&manifest_path, &m.limits, &m.limits_set) {
            Ok(effective) => m.limits = effective,
            Err(errors) => diags.extend(errors),
        }
    }
    let limits = manifest.as_ref().map(|m| m.limits.clone()).unwrap_or_default();
    let mut schemas = manifest.as_ref().map(PackCheck::new);
    let sandbox = Arc::new(Sandbox::new(&limits));
    let mut rules: Vec<Rule> = Vec::new();
    let mut seen: BTreeMap<String, (PathBuf, Pos)> = BTreeMap::new();
    let rule_files: Vec<_> = source.files.iter().filter(|(p, _)| p.extension().is_some_and(|x| x == "rules")).collect();
    if rule_files.is_empty() {
        diags.push(Diagnostic::error(&source.root, Pos::new(1, 1), Code::Pack, "the pack has no `*.rules` file"));
    }
    for (rel, text) in rule_files {
        let path = source.display_path(rel);
        let parsed = parse_rules(text);
        for e in parsed.errors {
            diags.push(Diagnostic::error(&path, e.pos, Code::Syntax, e.message));
        }
        for (name, pos) in parsed.broken {
            seen.entry(name).or_insert((path.clone(), pos));
        }
        let asts = parsed.rules;
        let map = crate::diagnostic::SourceMap::new(text);
        for ast in asts {
            let duplicate = seen.get(&ast.name).cloned();
            match &duplicate {
                Some((p, at)) => diags.push(Diagnostic::error(
                    &path,
                    ast.pos,
                    Code::DuplicateRule,
                    format!("rule \"{}\" is already defined at {}:{}:{}", ast.name, p.display(), at.line, at.col),
                )),
                None => {
                    seen.insert(ast.name.clone(), (path.clone(), ast.pos));
                }
            }
            // A duplicate is still compiled, so its own errors show too.
            let mut c = RuleCompiler {
                sandbox: &sandbox,
                map: &map,
                path: &path,
                diags: &mut diags,
                slots: Vec::new(),
                schemas: schemas.as_mut(),
            };
            let compiled = c.rule(&ast, rules.len());
            if duplicate.is_some() {
                continue;
            }
            if let Some(rule) = compiled {
                if let Some(m) = &manifest {
                    for s in [&rule.action, &rule.reaction, &rule.error].into_iter().flatten() {
                        for (f, p) in Sandbox::called_functions(&s.script) {
                            if !m.functions.contains_key(&f) {
                                let declared: Vec<_> = m.functions.keys().map(|k| format!("`{k}`")).collect();
                                diags.push(Diagnostic::error(
                                    &path,
                                    file_pos(s.pos, p),
                                    Code::UndeclaredFunction,
                                    format!(
                                        "function `{f}` is not declared in pack.toml (declared: {})",
                                        if declared.is_empty() { "none".to_string() } else { declared.join(", ") }
                                    ),
                                ));
                            }
                        }
                    }
                }
                if rule.reaction.is_some() || rule.error.is_some() {
                    let calls = rule.action.as_ref().is_some_and(|a| {
                        !Sandbox::called_functions(&a.script).is_empty() || Sandbox::starts_children(&a.script)
                    });
                    if !calls {
                        diags.push(Diagnostic::warning(
                            &path,
                            rule.pos,
                            Code::Script,
                            format!(
                                "rule \"{}\" has a `reaction` or `error` section but its action calls no function",
                                rule.name
                            ),
                        ));
                    }
                }
                rules.push(rule);
            }
        }
    }
    let mut tests = Vec::new();
    for (rel, text) in source.files.iter().filter(|(p, _)| p.starts_with("tests")) {
        let path = source.display_path(rel);
        match parse_tests(&path, text) {
            Err(d) => diags.push(d),
            Ok(cases) => {
                check_tests(&path, text, &cases, manifest.as_ref(), &seen, &mut diags);
                tests.extend(cases.into_iter().map(|c| (path.clone(), c)));
            }
        }
    }
    if let Some(s) = schemas {
        s.finish(&tests, &mut diags);
    }
    diags.sort_by(|a, b| (&a.path, a.pos).cmp(&(&b.path, b.pos)));
    let ok = !diags.iter().any(Diagnostic::is_error);
    if diags.len() > MAX_DIAGNOSTICS {
        let more = diags.len() - MAX_DIAGNOSTICS;
        diags.truncate(MAX_DIAGNOSTICS);
        let msg = format!("{more} more diagnostic(s) not shown; fix these first");
        diags.push(Diagnostic {
            severity: if ok { Severity::Warning } else { Severity::Error },
            ..Diagnostic::error(&source.root, Pos::new(1, 1), Code::Pack, msg)
        });
    }
    let digest =
        source.files.iter().fold(FNV_SEED, |h, (p, t)| fnv1a(t.as_bytes(), fnv1a(p.to_string_lossy().as_bytes(), h)));
    let pack = match (ok, manifest) {
        (true, Some(manifest)) => {
            Some(Pack { manifest, rules, tests, sandbox, source: source.clone(), digest, derived: Derived::default() })
        }
        _ => None,
    };
    (pack, diags)
}

/// Checks test cases against the manifest (when it parsed) and the rule
/// names (every rule that parsed, compiled or not).
fn check_tests(
    path: &Path,
    text: &str,
    cases: &[TestCase],
    m: Option<&Manifest>,
    rule_names: &BTreeMap<String, (PathBuf, Pos)>,
    diags: &mut Vec<Diagnostic>,
) {
    let map = crate::diagnostic::SourceMap::new(text);
    let at = |span: std::ops::Range<usize>| map.pos(span.start);
    let mut error = |pos: Pos, code: Code, msg: String| diags.push(Diagnostic::error(path, pos, code, msg));
    for case in cases {
        let x = &case.expect;
        for f in &case.facts {
            let spec = f.get_ref();
            if !crate::value::valid_type_name(&spec.ty) {
                let (ty, rule) = (crate::diagnostic::shown(&spec.ty), crate::sandbox::TYPE_NAME_RULE);
                error(at(f.span()), Code::TestFile, format!("`{ty}` is not a fact type: {rule}"));
            }
            let strict = m.filter(|m| m.strict_facts && !crate::manifest::BUILTIN_TYPES.contains(&spec.ty.as_str()));
            if strict.is_some_and(|m| !m.facts.contains_key(&spec.ty)) && crate::value::valid_type_name(&spec.ty) {
                let msg = format!(
                    "test \"{}\": {} has no schema, and `[facts] strict = true` requires one",
                    case.name, spec.ty
                );
                error(at(f.span()), Code::UnknownType, msg);
            }
            if let Some(schema) = m.and_then(|m| m.facts.get(&spec.ty)) {
                for v in schema.violations_new(&spec.ty, &spec.fields) {
                    error(at(f.span()), Code::Schema, format!("test \"{}\": {v}", case.name));
                }
            }
        }
        let functions = case
            .mocks
            .iter()
            .map(|m| (&m.function, "mocks"))
            .chain(x.calls.iter().flatten().map(|(f, _)| (f, "expects calls of")));
        for (f, verb) in functions {
            // A child workflow is awaited (and mocked) as `workflow:PACK`.
            if m.is_some_and(|m| !m.functions.contains_key(f.get_ref())) && !f.get_ref().starts_with("workflow:") {
                error(
                    at(f.span()),
                    Code::UndeclaredFunction,
                    format!("test \"{}\" {verb} `{}`, which pack.toml does not declare", case.name, f.get_ref()),
                );
            }
        }
        let named = x.fired.iter().flatten().chain(&x.not_fired).chain(x.fired_count.iter().flatten().map(|(n, _)| n));
        for name in named {
            if !rule_names.contains_key(name.get_ref()) {
                error(at(name.span()), Code::TestFile, format!("no rule is named \"{}\"", name.get_ref()));
            }
        }
        if let Some(s) = &x.status {
            if !matches!(s.get_ref().as_str(), "running" | "completed" | "failed" | "cancelled") {
                error(
                    at(s.span()),
                    Code::TestFile,
                    format!(
                        "test \"{}\": status `{}` is not one of running, completed, failed, cancelled",
                        case.name,
                        s.get_ref()
                    ),
                );
            }
        }
    }
}

/// Maps a position inside a script that starts at `start` to the file.
pub(crate) fn file_pos(start: Pos, rel: Pos) -> Pos {
    if rel.line <= 1 {
        Pos::new(start.line, start.col + rel.col.saturating_sub(1))
    } else {
        Pos::new(start.line + rel.line - 1, rel.col)
    }
}

struct RuleCompiler<'a, 'm> {
    sandbox: &'a Sandbox,
    map: &'a crate::diagnostic::SourceMap,
    path: &'a Path,
    diags: &'a mut Vec<Diagnostic>,
    slots: Vec<Slot>,
    /// The schema checks, when the manifest parsed.
    schemas: Option<&'a mut PackCheck<'m>>,
}

/// The scope for parsing constraints: the slots bound so far.
struct SlotScope<'a> {
    slots: &'a [Slot],
    current_fact: bool,
}

impl expr::Scope for SlotScope<'_> {
    fn binding(&self, name: &str) -> Option<(usize, BindingKind)> {
        self.slots.iter().position(|s| s.name.as_deref() == Some(name)).map(|i| (i, self.slots[i].kind))
    }
    fn has_current_fact(&self) -> bool {
        self.current_fact
    }
}

impl RuleCompiler<'_, '_> {
    fn error(&mut self, pos: Pos, code: Code, msg: impl Into<String>) {
        self.diags.push(Diagnostic::error(self.path, pos, code, msg));
    }

    /// Reports script errors; `to_file` maps a position in the script to the file.
    fn script_errors(&mut self, errs: Vec<CompileError>, to_file: impl Fn(Pos) -> Pos) {
        for e in errs {
            let code = match e.kind {
                CompileErrorKind::Syntax => Code::Script,
                CompileErrorKind::UndefinedVariable => Code::UndefinedVariable,
                CompileErrorKind::UnknownFunction => Code::UnknownFunction,
            };
            self.error(to_file(e.pos), code, e.message);
        }
    }

    fn rule(&mut self, ast: &RuleAst, index: usize) -> Option<Rule> {
        let before = self.diags.len();
        if let Some(s) = self.schemas.as_deref_mut() {
            s.conditions(self.path, self.map, ast, self.diags);
        }
        let fact_bindings = PackCheck::bindings(ast);
        let mut conditions = Vec::new();
        let mut condition_text = Vec::new();
        for c in &ast.conditions {
            if let Some(compiled) = self.condition(c) {
                conditions.push(compiled);
                condition_text.push(condition_text_of(c));
            }
        }
        let names: Vec<String> = self.slots.iter().filter_map(|s| s.name.clone()).collect();
        let bound: Vec<(String, usize, BindingKind)> =
            (self.slots.iter().enumerate()).filter_map(|(i, s)| s.name.clone().map(|n| (n, i, s.kind))).collect();
        let mut section = |t: &Option<Text>, extra: Option<&str>| -> Option<Section> {
            let t = t.as_ref()?;
            let mut vars: Vec<&str> = names.iter().map(String::as_str).collect();
            if let Some(x) = extra {
                vars.push(x);
                vars.push("invocation");
            }
            match self.sandbox.compile_as_written(&t.text, &vars, false) {
                Ok((script, written)) => {
                    if let Some(s) = self.schemas.as_deref_mut() {
                        s.section(self.path, t.pos, &written, &fact_bindings, self.diags);
                    }
                    let native = match extra {
                        None => {
                            let bound: Vec<_> = bound.iter().map(|(n, i, k)| (n.as_str(), *i, *k)).collect();
                            native::translate(&script, &bound).map(Arc::new)
                        }
                        Some(_) => None,
                    };
                    Some(Section { script, native, file: self.path.to_path_buf(), pos: t.pos })
                }
                Err(errs) => {
                    self.script_errors(errs, |p| file_pos(t.pos, p));
                    None
                }
            }
        };
        let action = section(&ast.action, None);
        let reaction = section(&ast.reaction, Some("result"));
        let error = section(&ast.error, Some("error"));
        if self.diags[before..].iter().any(Diagnostic::is_error) {
            return None;
        }
        // Identity: the rule's own text, whitespace-normalized.
        let mut h = fnv1a(ast.name.as_bytes(), FNV_SEED);
        h = fnv1a(&ast.salience.to_le_bytes(), h);
        h = fnv1a(&[ast.no_loop as u8], h);
        h = fnv1a(format!("{:?}", strip_positions(&ast.conditions)).as_bytes(), h);
        for s in [&ast.action, &ast.reaction, &ast.error] {
            let norm: String =
                s.as_ref().map(|t| t.text.split_whitespace().collect::<Vec<_>>().join(" ")).unwrap_or_default();
            h = fnv1a(norm.as_bytes(), fnv1a(b"|", h));
        }
        Some(Rule {
            name: ast.name.clone(),
            index,
            salience: ast.salience,
            no_loop: ast.no_loop,
            slots: std::mem::take(&mut self.slots),
            conditions,
            condition_text,
            action,
            reaction,
            error,
            identity: h,
            file: self.path.to_path_buf(),
            pos: ast.pos,
        })
    }

    fn bind(&mut self, name: Option<&Text>, kind: BindingKind) -> usize {
        if let Some(n) = name {
            if self.slots.iter().any(|s| s.name.as_deref() == Some(&n.text)) {
                self.error(n.pos, Code::Syntax, format!("`{}` is already bound in this rule", n.text));
            }
            if matches!(n.text.as_str(), "this" | "result" | "error" | "invocation" | expr::CURRENT) {
                self.error(n.pos, Code::Syntax, format!("`{}` is reserved and cannot name a binding", n.text));
            }
        }
        self.slots.push(Slot { name: name.map(|n| n.text.clone()), kind });
        self.slots.len() - 1
    }

    fn condition(&mut self, c: &ConditionAst) -> Option<Condition> {
        Some(match c {
            // The binding is made even if the pattern has errors, so that
            // later uses of it are not reported as undefined too.
            ConditionAst::Pattern { binding, pattern } => {
                let p = self.pattern(pattern);
                let slot = self.bind(binding.as_ref(), BindingKind::Fact);
                Condition::Pattern { slot, pattern: p? }
            }
            ConditionAst::Not(p) => Condition::Not(self.pattern(p)?),
            ConditionAst::Exists(p) => Condition::Exists(self.pattern(p)?),
            ConditionAst::Aggregate { binding, func, pattern, over } => {
                let p = self.pattern(pattern);
                let over = over.as_ref().map(|t| self.constraint(t, true));
                let slot = self.bind(Some(binding), BindingKind::Value);
                let over = match over {
                    Some(c) => Some(c?),
                    None => None,
                };
                Condition::Aggregate { slot, func: *func, pattern: p?, over }
            }
            ConditionAst::Test(t) => Condition::Test(self.constraint(t, false)?),
        })
    }

    fn pattern(&mut self, p: &PatternAst) -> Option<Pattern> {
        let mut out = Pattern {
            ty: Sym::new(&p.type_name),
            alpha: Vec::new(),
            joins: Vec::new(),
            beta: Vec::new(),
            text: PatternText::default(),
        };
        let mut ok = true;
        for t in &p.constraints {
            let Some(c) = self.constraint(t, true) else {
                ok = false;
                continue;
            };
            match c {
                Constraint::Native(e) if !e.uses_bindings() => {
                    out.alpha.push(Constraint::Native(e));
                    out.text.alpha.push(t.clone());
                }
                Constraint::Native(Expr::Bin(BinOp::Eq, a, b)) if join_shape(&a, &b).is_some() => {
                    let (field, key) = join_shape(&a, &b).expect("checked");
                    out.joins.push(JoinKey { field, key });
                    out.text.joins.push(t.clone());
                }
                Constraint::Native(e) => {
                    out.beta.push(Constraint::Native(e));
                    out.text.beta.push(t.clone());
                }
                Constraint::Script { ref text, .. } => {
                    let reads_bindings = expr::free_identifiers(text).is_none_or(|ids| {
                        ids.iter().any(|id| self.slots.iter().any(|s| s.name.as_deref() == Some(id.as_str())))
                    });
                    if reads_bindings {
                        out.beta.push(c);
                        out.text.beta.push(t.clone());
                    } else {
                        out.alpha.push(c);
                        out.text.alpha.push(t.clone());
                    }
                }
            }
        }
        ok.then_some(out)
    }

    /// Parses a constraint natively, else compiles it as Rhai.
    fn constraint(&mut self, t: &Text, current_fact: bool) -> Option<Constraint> {
        let scope = SlotScope { slots: &self.slots, current_fact };
        if let Ok(e) = expr::parse(&t.text, &scope) {
            return Some(Constraint::Native(e));
        }
        let (code, inserted) = match current_fact.then(|| expr::rewrite_with_offsets(&t.text, &scope)).flatten() {
            Some(r) => r,
            None => (t.text.clone(), Vec::new()),
        };
        let mut vars: Vec<&str> = Vec::new();
        if current_fact {
            vars.push(expr::CURRENT);
        }
        vars.extend(self.slots.iter().filter_map(|s| s.name.as_deref()));
        match self.sandbox.compile(&code, &vars, true) {
            Ok(script) => Some(Constraint::Script { script, text: code }),
            Err(errs) => {
                // Map columns in the rewritten text back to the original.
                // Map positions in the rewritten text back through the
                // `__it.` insertions (5 bytes each) to the file.
                let rewritten = crate::diagnostic::SourceMap::new(&code);
                let (map, base) = (self.map, t.offset);
                let to_file = |p: Pos| {
                    let r = rewritten.offset(p);
                    let before = inserted.iter().enumerate().filter(|(k, off)| **off + 5 * (k + 1) <= r).count();
                    map.pos(base + r - 5 * before)
                };
                self.script_errors(errs, to_file);
                None
            }
        }
    }
}

/// `field == <expr over bindings>` (either way round).
fn join_shape(a: &Expr, b: &Expr) -> Option<(Sym, Expr)> {
    match (a, b) {
        (Expr::Field(f), k) | (k, Expr::Field(f))
            if k.uses_bindings() && {
                let mut fs = Vec::new();
                k.fields(&mut fs);
                fs.is_empty()
            } =>
        {
            Some((*f, k.clone()))
        }
        _ => None,
    }
}

/// A condition as written, whitespace collapsed.
fn condition_text_of(c: &ConditionAst) -> ConditionText {
    let norm = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
    let pat = |p: &PatternAst| {
        format!("{}({})", p.type_name, p.constraints.iter().map(|t| norm(&t.text)).collect::<Vec<_>>().join(", "))
    };
    let (pos, text, expr) = match c {
        ConditionAst::Pattern { binding, pattern } => {
            let pos = binding.as_ref().map_or(pattern.pos, |b| b.pos);
            let name = binding.as_ref().map(|b| format!("{}: ", b.text)).unwrap_or_default();
            (pos, format!("{name}{}", pat(pattern)), None)
        }
        ConditionAst::Not(p) => (p.pos, format!("not {}", pat(p)), None),
        ConditionAst::Exists(p) => (p.pos, format!("exists {}", pat(p)), None),
        ConditionAst::Aggregate { binding, func, pattern, over } => {
            let func = serde_json::to_value(func).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
            let over_text = over.as_ref().map(|t| format!(", {}", norm(&t.text))).unwrap_or_default();
            (binding.pos, format!("{}: {func}({}{over_text})", binding.text, pat(pattern)), over.clone())
        }
        ConditionAst::Test(t) => (t.pos, format!("test({})", norm(&t.text)), Some(t.clone())),
    };
    ConditionText { pos, text, expr }
}

/// Conditions without source positions, for rule identity.
fn strip_positions(cs: &[ConditionAst]) -> String {
    let norm = |t: &Text| t.text.split_whitespace().collect::<Vec<_>>().join(" ");
    let pat =
        |p: &PatternAst| format!("{}({})", p.type_name, p.constraints.iter().map(norm).collect::<Vec<_>>().join(","));
    cs.iter()
        .map(|c| match c {
            ConditionAst::Pattern { binding, pattern } => {
                format!("{}:{}", binding.as_ref().map(norm).unwrap_or_default(), pat(pattern))
            }
            ConditionAst::Not(p) => format!("not {}", pat(p)),
            ConditionAst::Exists(p) => format!("exists {}", pat(p)),
            ConditionAst::Aggregate { binding, func, pattern, over } => {
                format!("{}:{func:?}({},{})", norm(binding), pat(pattern), over.as_ref().map(norm).unwrap_or_default())
            }
            ConditionAst::Test(t) => format!("test({})", norm(t)),
        })
        .collect::<Vec<_>>()
        .join(";")
}

#[cfg(test)]
mod robustness {
    use super::*;

    /// Mangled versions of real packs (truncated, bytes flipped, brackets
    /// and quotes inserted) must give diagnostics, never a panic: a bad
    /// upload must not take a server down.
    #[test]
    fn mangled_packs_never_panic() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/packs");
        let mut sources = Vec::new();
        for pack in ["video-encode", "inventory"] {
            if let Ok(src) = PackSource::read_dir(&root.join(pack)) {
                sources.push(src);
            }
        }
        assert!(!sources.is_empty());
        let mut seed: u64 = 0x9e3779b97f4a7c15;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n.max(1) as u64) as usize
        };
        const INSERTS: [&str; 12] = ["{", "}", "(", ")", "\"", "`", "/*", "#{", ",", "\n", "rule \"", "é"];
        for round in 0..rounds() {
            let mut src = sources[round % sources.len()].clone();
            let keys: Vec<PathBuf> = src.files.keys().cloned().collect();
            let key = &keys[next(keys.len())];
            let text = src.files.get_mut(key).expect("file");
            for _ in 0..1 + next(4) {
                let mut at = next(text.len() + 1);
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                match next(3) {
                    0 => text.truncate(at),
                    1 => text.insert_str(at, INSERTS[next(INSERTS.len())]),
                    _ => {
                        let end = (at + next(20)).min(text.len());
                        let end = (end..=text.len()).find(|e| text.is_char_boundary(*e)).unwrap_or(text.len());
                        text.replace_range(at..end, "");
                    }
                }
            }
            let (_, diags) = compile(&src);
            for d in diags {
                // Rendering must not panic either, wherever the position is.
                let _ = d.render(src.text_at(&d.path));
            }
        }
    }

    fn rounds() -> usize {
        // STOA_FUZZ_ROUNDS runs longer, e.g. before a release.
        std::env::var("STOA_FUZZ_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(200)
    }
}
