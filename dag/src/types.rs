//! Step types: a function the workers serve behind a typed parameter
//! schema, so that a step reads `type: video-encode` with a few checked
//! parameters instead of a function name and free-form arguments.
//!
//! ```yaml
//! types:
//!   video-encode:
//!     function: media.encode
//!     params:
//!       uri: string
//!       codec: { type: string, default: h264 }
//!       index: int
//!     outputs: [uri]
//!     timeout: 10m
//!     retry: { error: { attempts: 3, backoff: 30s } }
//! ```
//!
//! Declared in a definition's `types:` or in a file it `import`s (shared
//! by many definitions). A step of a type is a function step: its params
//! are checked at push time (unknown and missing names, literal values of
//! the wrong type), the type's defaults fill the params it leaves out,
//! and its outputs, timeout and retry are the type's unless it gives its
//! own. Values computed at run time (references) are checked when the
//! step starts: a wrong type fails the step, naming the param.

use stoa_rules::diagnostic::{closest, shown};
use stoa_rules::Code;

use crate::model::{read_param, read_retry, Name, Param, ParamType, Reader, Retry};
use crate::yaml::{Kind, Node, Scalar};

/// Names a step type may not take: the built-in kinds.
pub const BUILT_IN: [&str; 5] = ["function", "noop", "sleep", "subworkflow", "foreach"];

#[derive(Clone, Debug, PartialEq)]
pub struct TypeDecl {
    pub name: Name,
    /// The function it calls, or for a template the pack it starts.
    pub function: Name,
    /// A template: an imported definition, run as a sub-workflow.
    pub template: bool,
    pub params: Vec<Param>,
    pub outputs: Vec<Name>,
    pub timeout: Option<Name>,
    pub retry: Retry,
}

/// What a step of a type is checked against when it starts: each param
/// whose value is computed, with its declared type.
#[derive(Clone, Debug, PartialEq)]
pub struct Typed {
    pub name: String,
    /// A template's instance checks its own parameters when it starts.
    pub template: bool,
    pub checks: Vec<(String, ParamType)>,
}

const KEYS: &[&str] = &["function", "params", "outputs", "timeout", "retry", "description"];

/// Reads a `types:` map, adding to `into` (a name given twice is an error,
/// in one file or across imports).
pub(crate) fn read(r: &mut Reader<'_>, node: &Node, into: &mut Vec<TypeDecl>) {
    for (name, decl) in r.map(node, "`types`", &[]) {
        if !r.check_ident(&name, "a step type name", &['-', '.']) {
            continue;
        }
        if BUILT_IN.contains(&name.text.as_str()) {
            r.error(
                name.pos,
                Code::DagDuplicate,
                format!("`{}` is a built-in step type; name yours otherwise", name.text),
            );
            continue;
        }
        if let Some(first) = into.iter().find(|t| t.name.text == name.text) {
            r.error(
                name.pos,
                Code::DagDuplicate,
                format!("step type `{}` is declared twice (first on line {})", name.text, first.name.pos.line),
            );
            continue;
        }
        let what = format!("step type `{}`", name.text);
        let m = r.map(decl, &what, KEYS);
        let get = |k: &str| m.iter().find(|(n, _)| n.text == k).map(|(_, v)| *v);
        let Some(function) = get("function").and_then(|f| r.string(f, "`function`")) else {
            if get("function").is_none() {
                r.format(decl.pos, format!("{what} names no `function`"));
            }
            continue;
        };
        let mut params = Vec::new();
        if let Some(p) = get("params") {
            for (pname, pdecl) in r.map(p, &format!("the params of {what}"), &[]) {
                if let Some(param) = read_param(r, pname, pdecl) {
                    params.push(param);
                }
            }
        }
        let mut outputs = Vec::new();
        if let Some(o) = get("outputs") {
            for item in r.list(o, "`outputs`") {
                if let Some(n) = r.ident(item, "an output name", &[]) {
                    outputs.push(n);
                }
            }
        }
        let timeout = get("timeout").and_then(|t| r.duration(t, "`timeout`"));
        let retry = get("retry").map(|rt| read_retry(r, rt)).unwrap_or_default();
        into.push(TypeDecl { name, function, template: false, params, outputs, timeout, retry });
    }
}

impl TypeDecl {
    fn kind(&self) -> &'static str {
        if self.template {
            "template"
        } else {
            "step type"
        }
    }
}

/// A step of type `t`: its params checked against the type's and
/// completed with the type's defaults; returns the run-time checks.
pub(crate) fn apply(
    r: &mut Reader<'_>,
    t: &TypeDecl,
    params: &mut Vec<(Name, Node)>,
    what: &str,
    at: stoa_rules::Pos,
) -> Typed {
    let mut checks = Vec::new();
    for (name, value) in params.iter() {
        let Some(decl) = t.params.iter().find(|p| p.name.text == name.text) else {
            let hint = closest(&name.text, t.params.iter().map(|p| p.name.text.as_str()))
                .map(|c| format!("; did you mean `{c}`?"))
                .unwrap_or_else(|| {
                    let names: Vec<&str> = t.params.iter().map(|p| p.name.text.as_str()).collect();
                    if names.is_empty() {
                        " (it takes none)".into()
                    } else {
                        format!(" (its params: {})", names.join(", "))
                    }
                });
            r.error(
                name.pos,
                Code::DagReference,
                format!(
                    "{what} gives `{}`, which {} `{}` does not take{hint}",
                    shown(&name.text),
                    t.kind(),
                    t.name.text
                ),
            );
            continue;
        };
        let computed = matches!(&value.kind, Kind::Scalar(Scalar::Str(s)) if s.contains("${"));
        if computed {
            // Text around a reference is a string whatever it reads.
            // A lone reference or `${{ expression }}` keeps its value's type.
            let lone = matches!(&value.kind, Kind::Scalar(Scalar::Str(s))
                if matches!(crate::expr::pieces(s).as_deref(), Ok([crate::expr::Piece::Ref(..) | crate::expr::Piece::Expr(..)])));
            if lone && decl.ty != ParamType::Any {
                checks.push((name.text.clone(), decl.ty));
            } else if !lone && !matches!(decl.ty, ParamType::String | ParamType::Any) {
                r.error(
                    value.pos,
                    Code::DagType,
                    format!(
                        "param `{}` of {} `{}` is {}, but this value is text",
                        name.text,
                        t.kind(),
                        t.name.text,
                        decl.ty.a()
                    ),
                );
            }
        } else if !decl.ty.holds(value) {
            r.error(
                value.pos,
                Code::DagType,
                format!(
                    "param `{}` of {} `{}` is {}, not {}",
                    name.text,
                    t.kind(),
                    t.name.text,
                    decl.ty.a(),
                    value.what()
                ),
            );
        }
    }
    for p in &t.params {
        if params.iter().any(|(n, _)| n.text == p.name.text) {
            continue;
        }
        match &p.default {
            Some(d) => params.push((Name { text: p.name.text.clone(), pos: at }, d.clone())),
            None => r.error(
                at,
                Code::DagReference,
                format!(
                    "{what} lacks param `{}`, which {} `{}` requires ({})",
                    p.name.text,
                    t.kind(),
                    t.name.text,
                    p.ty.a()
                ),
            ),
        }
    }
    Typed { name: t.name.text.clone(), template: t.template, checks }
}

/// Rhai over `args` that yields why a computed param has the wrong type,
/// or "" (in a step's action, before its call).
pub(crate) fn run_checks(t: &Typed) -> Option<String> {
    if t.checks.is_empty() || t.template {
        return None;
    }
    let mut out = String::from("let why = \"\";");
    for (name, ty) in &t.checks {
        let rhai_type = match ty {
            ParamType::String => "string",
            ParamType::Int => "i64",
            ParamType::Float => "f64",
            ParamType::Bool => "bool",
            ParamType::List => "array",
            ParamType::Map => "map",
            ParamType::Any => continue,
        };
        let key = crate::expr::rhai_str(name);
        let also = if *ty == ParamType::Float { format!(" && type_of(args[{key}]) != \"i64\"") } else { String::new() };
        out.push_str(&format!(
            " if why == \"\" && type_of(args[{key}]) != \"{rhai_type}\"{also} {{ why = \"param `{name}` of step type `{}` must be {}, not \" + type_of(args[{key}]); }}",
            t.name,
            ty.a()
        ));
    }
    Some(out)
}

/// Whether an imported file is a definition (a template), not a library
/// of step types: it has `steps`.
pub fn is_template(text: &str) -> bool {
    match crate::yaml::parse(text) {
        Ok(Node { kind: Kind::Map(entries), .. }) => entries.iter().any(|(k, _)| k.as_str() == Some("steps")),
        _ => false,
    }
}

/// A template as a step type: its parameters, and its outputs.
pub fn signature(dag: &crate::model::Dag) -> TypeDecl {
    TypeDecl {
        name: dag.id.clone(),
        function: dag.id.clone(),
        template: true,
        params: dag.params.clone(),
        outputs: dag.outputs.iter().map(|(n, _)| n.clone()).collect(),
        timeout: None,
        retry: Retry::default(),
    }
}
