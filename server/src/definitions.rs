//! DAG definitions deployed through the API: a `DeployPack` whose files
//! are a `workflow.yaml` or `workflow.json` (and tests), without a
//! `pack.toml`, is compiled here to the pack it becomes, as `stoa dag
//! compile` would, so that programs can deploy a definition as JSON
//! without the CLI. The definition file stays among the pack's files (the
//! compiler reads `.rules` and tests only), so the deployed version keeps
//! its source. A definition with foreach blocks or templates is several
//! packs, deployed in order (bodies first) as the CLI does. A definition
//! with an error is refused whole, with every diagnostic at its place in
//! the definition, as INVALID_ARGUMENT.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::ApiError;

/// The packs to deploy, in order: `files` themselves, or the packs a
/// definition among them compiles to (its foreach bodies and templates
/// first, its own last). The request's other `.yaml` and `.json` files are
/// what the definition may `import`.
pub(crate) fn expand(files: BTreeMap<String, String>) -> Result<Vec<BTreeMap<String, String>>, ApiError> {
    if files.contains_key("pack.toml") {
        return Ok(vec![files]);
    }
    let Some(name) = [stoa_dag::FILE, stoa_dag::JSON_FILE].into_iter().find(|f| files.contains_key(*f)) else {
        return Ok(vec![files]);
    };
    let tests: BTreeMap<PathBuf, String> = files
        .iter()
        .filter(|(p, _)| p.starts_with("tests/") && p.ends_with(".toml"))
        .map(|(p, t)| (PathBuf::from(p), t.clone()))
        .collect();
    let imports: stoa_dag::Imports = files
        .iter()
        .filter(|(p, _)| p.as_str() != name && (p.ends_with(".yaml") || p.ends_with(".json")))
        .map(|(p, t)| (p.clone(), (PathBuf::from(p), t.clone())))
        .collect();
    let source = stoa_dag::Source { path: PathBuf::from(name), text: files[name].clone(), tests, imports };
    let (packs, diags) = source.compile_all(Path::new(""));
    let Some(packs) = packs else {
        let errors: Vec<String> = diags.iter().filter(|d| d.is_error()).map(|d| source.render(d)).collect();
        return Err(ApiError::InvalidArgument(format!(
            "the definition has {} error(s); nothing was deployed\n{}",
            errors.len(),
            errors.join("\n\n")
        )));
    };
    let last = packs.len().saturating_sub(1);
    Ok(packs
        .into_iter()
        .enumerate()
        .map(|(i, pack)| {
            let mut out: BTreeMap<String, String> = pack
                .files
                .into_iter()
                .map(|(p, t)| (p.strip_prefix(&pack.root).unwrap_or(&p).to_string_lossy().replace('\\', "/"), t))
                .collect();
            if i == last {
                out.insert(name.to_string(), source.text.clone());
            }
            out
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_definition_becomes_its_pack_and_a_bad_one_says_where() {
        let files: BTreeMap<String, String> = [(
            "workflow.json".to_string(),
            r#"{"id": "j", "steps": [{"id": "a", "type": "noop"}, {"id": "b", "type": "noop", "depends_on": ["a"]}]}"#
                .to_string(),
        )]
        .into();
        let out = expand(files).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].keys().collect::<Vec<_>>(), ["pack.toml", "workflow.json", "workflow.rules"]);
        let foreach = r#"{"id": "f", "params": {"xs": {"type": "list", "default": [1, 2]}},
            "steps": [{"id": "each", "foreach": {"over": "${xs}", "as": "x", "steps": [{"id": "a", "type": "noop"}]}}]}"#;
        let packs = expand([("workflow.json".to_string(), foreach.to_string())].into()).unwrap();
        let names: Vec<bool> = packs.iter().map(|p| p.contains_key("workflow.json")).collect();
        assert_eq!(names, [false, true], "the body's pack first, then the definition's own with its source");
        assert!(packs[0]["pack.toml"].contains("name = \"f.each\""), "{}", packs[0]["pack.toml"]);
        let bad: BTreeMap<String, String> = [(
            "workflow.json".to_string(),
            "{\"id\": \"j\",\n \"steps\": [{\"id\": \"a\", \"tpye\": \"noop\"}]}".to_string(),
        )]
        .into();
        let err = expand(bad).unwrap_err().to_string();
        assert!(
            err.starts_with("the definition has 2 error(s); nothing was deployed\nworkflow.json:2:12: error[E0016]: step `a` has no `type`"),
            "{err}"
        );
        assert!(err.contains("workflow.json:2:24: error[E0016]: unknown key `tpye` in a step"), "{err}");
    }
}
