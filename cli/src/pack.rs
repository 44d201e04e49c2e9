//! Loading a pack from disk and printing its diagnostics.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use stoa_rules::compile::{compile, Pack, PackSource};
use stoa_rules::Diagnostic;

/// Compiles the pack at `dir`; prints every diagnostic (with the source line
/// and a caret) to stderr. Returns the pack if it has no error.
pub fn load(dir: &Path) -> anyhow::Result<(Option<Arc<Pack>>, Vec<Diagnostic>)> {
    if !dir.is_dir() {
        return Err(crate::exit::usage(format!("{}: not a pack directory", dir.display())));
    }
    let (source, mut diags) = read_source(dir)?;
    let Some(source) = source else { return Ok((None, diags)) };
    let (pack, more) = compile(&source);
    diags.extend(more);
    for d in source.render(&diags) {
        eprintln!("{d}\n");
    }
    Ok((pack.map(Arc::new), diags))
}

/// The files of the pack at `dir`; for a DAG definition directory
/// (`workflow.yaml` and no `pack.toml`), the pack it compiles to, in
/// memory, its diagnostics printed (`None` if it has an error).
pub fn read_source(dir: &Path) -> anyhow::Result<(Option<PackSource>, Vec<Diagnostic>)> {
    if crate::dag::is_definition(dir) {
        return crate::dag::source(dir, dir);
    }
    let source = PackSource::read_dir(dir).with_context(|| format!("reading pack {}", dir.display()))?;
    Ok((Some(source), Vec::new()))
}

/// Like `load`, but a pack with errors is an error (exit status 3, as
/// `stoa check` finding them).
pub fn load_ok(dir: &Path) -> anyhow::Result<Arc<Pack>> {
    let (pack, diags) = load(dir)?;
    let errors = diags.iter().filter(|d| d.is_error()).count();
    pack.ok_or_else(|| {
        anyhow::Error::new(crate::exit::CheckFailed(format!(
            "{}: {errors} error(s); fix them first (`stoa check` lists them)",
            dir.display()
        )))
    })
}
