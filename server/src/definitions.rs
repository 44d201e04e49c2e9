//! DAG definitions deployed through the API: a `DeployPack` whose files
//! are a `workflow.yaml` or `workflow.json` (and tests), without a
//! `pack.toml`, is compiled here to the pack it becomes, as `stoa dag
//! compile` would, so that programs can deploy a definition as JSON
//! without the CLI. The definition file stays among the pack's files (the
//! compiler reads `.rules` and tests only), so the deployed version keeps
//! its source. A definition with an error is refused whole, with every
//! diagnostic at its place in the definition, as INVALID_ARGUMENT.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use stoa_rules::diagnostic::SourceMap;

use crate::error::ApiError;

/// The files of the pack to compile: `files` themselves, or those a
/// definition among them compiles to.
pub(crate) fn expand(files: BTreeMap<String, String>) -> Result<BTreeMap<String, String>, ApiError> {
    if files.contains_key("pack.toml") {
        return Ok(files);
    }
    let Some(name) = [stoa_dag::FILE, stoa_dag::JSON_FILE].into_iter().find(|f| files.contains_key(*f)) else {
        return Ok(files);
    };
    let tests: BTreeMap<PathBuf, String> = files
        .iter()
        .filter(|(p, _)| p.starts_with("tests/") && p.ends_with(".toml"))
        .map(|(p, t)| (PathBuf::from(p), t.clone()))
        .collect();
    let text = files[name].clone();
    let source = stoa_dag::Source { path: PathBuf::from(name), text, tests };
    let (pack, diags) = source.compile(Path::new(""));
    let Some(pack) = pack else {
        let map = SourceMap::new(&source.text);
        let errors: Vec<String> = diags.iter().filter(|d| d.is_error()).map(|d| d.render_in(Some(&map))).collect();
        return Err(ApiError::InvalidArgument(format!(
            "the definition has {} error(s); nothing was deployed\n{}",
            errors.len(),
            errors.join("\n\n")
        )));
    };
    let mut out: BTreeMap<String, String> =
        pack.files.into_iter().map(|(p, t)| (p.to_string_lossy().replace('\\', "/"), t)).collect();
    out.insert(name.to_string(), source.text);
    Ok(out)
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
        assert_eq!(out.keys().collect::<Vec<_>>(), ["pack.toml", "workflow.json", "workflow.rules"]);
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
