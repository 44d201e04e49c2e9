//! Running properties: case counts, a bounded stack and time per case, and
//! the checks every diagnostic must pass.

use std::fmt::{Debug, Display};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use stoa_rules::compile::PackSource;
use stoa_rules::Diagnostic;

/// A normal thread's stack: what a server thread parsing a request has.
pub const STACK: usize = 2 << 20;

/// How long one case may take in a debug build on a loaded 2-core machine
/// before it counts as an endless loop. Cases take milliseconds.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Cases per property: `PROPTEST_CASES` when set (long campaigns), else the
/// property's own default, sized so the whole suite stays a few seconds.
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// Runs `test` on `cases(default)` values of `strategy`; a failure is shrunk
/// to a small input, which the panic message shows.
pub fn check<S>(name: &str, default: u32, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: Debug,
{
    let config = Config {
        cases: cases(default),
        // Failures become regression tests next to the code they found,
        // not files written into the source tree.
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    if let Err(e) = runner.run(&strategy, test) {
        panic!("property `{name}` failed: {e}");
    }
}

/// Runs `f` on a thread with a 2 MiB stack and waits at most `DEADLINE`.
/// A panic in `f` is re-raised here (so proptest shrinks it); a stack
/// overflow aborts the test binary, which is the point.
pub fn bounded<T: Send + 'static>(what: impl Display, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("bounded".into())
        .stack_size(STACK)
        .spawn(move || {
            let _ = tx.send(f());
        })
        .expect("spawn");
    match rx.recv_timeout(DEADLINE) {
        Ok(v) => {
            let _ = handle.join();
            v
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the thread sends before it ends"),
        },
        // The thread is left running: the test fails anyway.
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: no answer within {DEADLINE:?} (an endless loop?)"),
    }
}

/// Whether a position lies in `text`: a line that exists (or the one after
/// the last, for "end of file"), a column at most one past its last
/// character.
pub fn inside(text: &str, line: u32, col: u32) -> Result<(), String> {
    let lines: Vec<&str> = text.split('\n').collect();
    if line == 0 || col == 0 {
        return Err(format!("{line}:{col} is not 1-based"));
    }
    let Some(l) = lines.get(line as usize - 1) else {
        return Err(format!("line {line} is past the end ({} lines)", lines.len()));
    };
    let width = l.trim_end_matches('\r').chars().count() + 1;
    if col as usize > width + 1 {
        return Err(format!("{line}:{col} is past the end of its line ({} characters)", width - 1));
    }
    Ok(())
}

/// The checks every diagnostic of a pack passes: it names a file of the
/// pack (or the pack), its position is in that file, its message is one
/// non-empty line, and it renders with its source line.
pub fn check_diagnostics(source: &PackSource, diags: &[Diagnostic]) -> Result<(), TestCaseError> {
    for d in diags {
        let shown = d.to_string();
        if d.message.trim().is_empty() || d.message.contains(|c: char| c.is_control()) {
            return Err(TestCaseError::fail(format!("not a one-line message: {shown:?}")));
        }
        if d.message.len() > stoa_rules::diagnostic::MAX_MESSAGE + '…'.len_utf8() {
            return Err(TestCaseError::fail(format!("a {}-byte message: {shown:.200}", d.message.len())));
        }
        if d.path != source.root {
            let Some(text) = source.text_at(&d.path) else {
                return Err(TestCaseError::fail(format!("names no file of the pack: {shown}")));
            };
            inside(text, d.pos.line, d.pos.col).map_err(|e| TestCaseError::fail(format!("{shown}: {e}")))?;
        }
        let rendered = d.render(source.text_at(&d.path));
        if !rendered.starts_with(&shown) {
            return Err(TestCaseError::fail(format!("renders as {rendered:?}")));
        }
    }
    Ok(())
}

/// `check_diagnostics` for one file's diagnostics.
pub fn check_file_diagnostics(path: &Path, text: &str, diags: &[Diagnostic]) -> Result<(), TestCaseError> {
    let source = PackSource {
        root: Path::new("").to_path_buf(),
        files: [(path.to_path_buf(), text.to_string())].into_iter().collect(),
    };
    let outside: Vec<_> = diags.iter().filter(|d| d.path != path).collect();
    if !outside.is_empty() {
        return Err(TestCaseError::fail(format!("names another file: {}", outside[0])));
    }
    check_diagnostics(&source, diags)
}

/// A pack source in memory, under the root `p`.
pub fn source(files: &[(&str, String)]) -> PackSource {
    PackSource {
        root: Path::new("p").to_path_buf(),
        files: files.iter().map(|(p, t)| (Path::new(p).to_path_buf(), t.clone())).collect(),
    }
}
