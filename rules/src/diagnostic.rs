//! Diagnostics for user-written input: every problem carries a file, a
//! position and a stable code, and all of them are reported at once.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A position in a source file, 1-based like every editor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default, serde::Serialize, serde::Deserialize)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl Pos {
    pub fn new(line: u32, col: u32) -> Pos {
        Pos { line, col }
    }
}

/// Stable diagnostic codes; each is documented in `docs/rules.md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// Syntax error in a rule file.
    Syntax,
    /// Syntax error in a Rhai section or constraint.
    Script,
    /// A variable that is neither a binding, a local nor a builtin.
    UndefinedVariable,
    /// A function that is neither a builtin nor defined in the script.
    UnknownFunction,
    /// `call` names a function the manifest does not declare.
    UndeclaredFunction,
    /// Manifest (`pack.toml`) problem.
    Manifest,
    /// A test file problem.
    TestFile,
    /// A fact that violates its schema.
    Schema,
    /// Two rules with the same name.
    DuplicateRule,
    /// A pack-level problem (missing files, unreadable directory).
    Pack,
    /// A `[schedules.NAME]` entry of `pack.toml`: cron, time zone, policy.
    Schedule,
    /// A `[limits]` value that is zero or above its tenant's ceiling.
    Limit,
    /// A field that is not in the schema of its fact's type (read in a
    /// constraint or a section, or written by `insert`/`modify`).
    UnknownField,
    /// A literal of a type its field cannot hold (compared in a constraint,
    /// or written by `insert`/`modify`).
    FieldType,
    /// A fact type that looks misspelt, or, in strict mode, has no schema.
    UnknownType,
    /// A DAG definition (`workflow.yaml`) that is not well formed: YAML
    /// syntax, an unknown key, a value of the wrong shape.
    DagFormat,
    /// Two steps of a DAG with the same id.
    DagDuplicate,
    /// A DAG reference to a step, parameter or output that does not exist,
    /// or to a step that is not upstream of the one reading it.
    DagReference,
    /// A cycle among a DAG's dependencies.
    DagCycle,
    /// A DAG parameter value of the wrong type.
    DagType,
    /// A DAG past a limit (steps per definition).
    DagLimit,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Syntax => "E0001",
            Code::Script => "E0002",
            Code::UndefinedVariable => "E0003",
            Code::UnknownFunction => "E0004",
            Code::UndeclaredFunction => "E0005",
            Code::Manifest => "E0006",
            Code::TestFile => "E0007",
            Code::Schema => "E0008",
            Code::DuplicateRule => "E0009",
            Code::Pack => "E0010",
            Code::Schedule => "E0011",
            Code::Limit => "E0012",
            Code::UnknownField => "E0013",
            Code::FieldType => "E0014",
            Code::UnknownType => "E0015",
            Code::DagFormat => "E0016",
            Code::DagDuplicate => "E0017",
            Code::DagReference => "E0018",
            Code::DagCycle => "E0019",
            Code::DagType => "E0020",
            Code::DagLimit => "E0021",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub path: PathBuf,
    pub pos: Pos,
    pub severity: Severity,
    pub code: Code,
    pub message: String,
}

/// Some text a user gave, to quote in a message: whole if short, else its
/// first characters and its length, so that a megabyte of input never ends
/// up in an error (gRPC metadata, logs).
pub fn shown(s: &str) -> String {
    const MAX: usize = 48;
    if s.len() <= MAX && !s.chars().any(char::is_control) {
        return s.to_string();
    }
    let head: String = s.chars().take(MAX).map(|c| if c.is_control() { '\u{fffd}' } else { c }).collect();
    format!("{head}… ({} bytes)", s.len())
}

/// The longest diagnostic message, in bytes.
pub const MAX_MESSAGE: usize = 400;

impl Diagnostic {
    /// An error. Its message is one line of at most `MAX_MESSAGE` bytes,
    /// whatever it quotes (a parser's message may quote a whole token).
    pub fn error(path: &Path, pos: Pos, code: Code, message: impl Into<String>) -> Diagnostic {
        let mut message: String = message.into();
        if message.len() > MAX_MESSAGE || message.contains(|c: char| c.is_control()) {
            let mut short: String =
                message.chars().take(MAX_MESSAGE).map(|c| if c.is_control() { ' ' } else { c }).collect();
            if message.len() > MAX_MESSAGE {
                while short.len() > MAX_MESSAGE {
                    short.pop();
                }
                short.push('…');
            }
            message = short;
        }
        Diagnostic { path: path.to_path_buf(), pos, severity: Severity::Error, code, message }
    }

    pub fn warning(path: &Path, pos: Pos, code: Code, message: impl Into<String>) -> Diagnostic {
        Diagnostic { severity: Severity::Warning, ..Diagnostic::error(path, pos, code, message) }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// `path:line:col: error[CODE]: message`, then the source line and a caret
    /// under the column when the source is known. A long line shows only
    /// its part around the column (a deploy's errors travel in a gRPC
    /// status, and a rule file may hold a megabyte on one line); control
    /// characters show as `\u{fffd}`.
    pub fn render(&self, source: Option<&str>) -> String {
        self.render_line(source.and_then(|src| src.lines().nth(self.pos.line.saturating_sub(1) as usize)))
    }

    /// `render`, finding the line in a `SourceMap`: rendering many
    /// diagnostics of one file costs the file once, not once each (20,000
    /// errors in a 600 KB file took minutes; found by the e2e campaign).
    pub fn render_in(&self, map: Option<&SourceMap>) -> String {
        self.render_line(map.and_then(|m| m.line(self.pos.line)))
    }

    fn render_line(&self, line: Option<&str>) -> String {
        const WIDTH: usize = 100;
        let mut out = self.to_string();
        {
            if let Some(line) = line {
                let gutter = self.pos.line.to_string();
                let pad = " ".repeat(gutter.len());
                let col = self.pos.col.saturating_sub(1) as usize;
                // A line that fits is shown whole.
                let chars = line.chars().count();
                let skip = if chars > WIDTH { col.saturating_sub(WIDTH / 2).min(chars - WIDTH) } else { 0 };
                let (mut shown, mut caret_at) = if skip > 0 { ("…".to_string(), 1) } else { (String::new(), 0) };
                for (i, c) in line.chars().enumerate().skip(skip) {
                    if i == skip + WIDTH {
                        shown.push('…');
                        break;
                    }
                    let (text, width) = match c {
                        '\t' => ("    ".to_string(), 4),
                        c if c.is_control() => ('\u{fffd}'.to_string(), 1),
                        c => (c.to_string(), 1),
                    };
                    shown.push_str(&text);
                    if i < col {
                        caret_at += width;
                    }
                }
                out.push_str(&format!("\n{pad} |\n{gutter} | {shown}\n{pad} | {}^", " ".repeat(caret_at)));
            }
        }
        out
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {}[{}]: {}",
            self.path.display(),
            self.pos.line,
            self.pos.col,
            sev,
            self.code.as_str(),
            self.message
        )
    }
}

/// Maps byte offsets of one source text to line/column positions.
#[derive(Clone, Debug)]
pub struct SourceMap {
    pub text: Arc<str>,
    line_starts: Vec<usize>,
}

impl SourceMap {
    pub fn new(text: &str) -> SourceMap {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        SourceMap { text: Arc::from(text), line_starts }
    }

    /// The byte offset of a position (the inverse of `pos`).
    pub fn offset(&self, pos: Pos) -> usize {
        let line = (pos.line.max(1) as usize - 1).min(self.line_starts.len() - 1);
        let start = self.line_starts[line];
        let rest = &self.text[start..];
        start + rest.char_indices().nth(pos.col.max(1) as usize - 1).map(|(i, _)| i).unwrap_or(rest.len())
    }

    /// The text of a line (1-based), without its line break.
    pub fn line(&self, line: u32) -> Option<&str> {
        let i = (line as usize).checked_sub(1)?;
        let start = *self.line_starts.get(i)?;
        let end = self.line_starts.get(i + 1).map_or(self.text.len(), |e| e - 1);
        let text = &self.text[start..end];
        // As `str::lines`: no line after a final line break.
        (start < self.text.len()).then(|| text.strip_suffix('\r').unwrap_or(text))
    }

    pub fn pos(&self, offset: usize) -> Pos {
        let line = match self.line_starts.binary_search(&offset) {
            Ok(l) => l,
            Err(l) => l - 1,
        };
        let start = self.line_starts[line];
        let col = self.text[start..offset.min(self.text.len())].chars().count() + 1;
        Pos::new(line as u32 + 1, col as u32)
    }
}

/// The name in `names` nearest to `name` if it is near enough to be a typo
/// of it (for "did you mean"): within a third of its length in edits.
pub fn closest<'a>(name: &str, names: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).max(1);
    names
        .into_iter()
        .filter(|n| *n != name)
        .map(|n| (strsim::levenshtein(name, n), n))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_line_and_caret() {
        let d = Diagnostic::error(Path::new("p/r.rules"), Pos::new(2, 5), Code::Syntax, "expected `{`");
        expect_test::expect![[r#"
            p/r.rules:2:5: error[E0001]: expected `{`
              |
            2 | abc defg
              |     ^"#]]
        .assert_eq(&d.render(Some("first\nabc defg\n")));
    }

    #[test]
    fn a_long_line_shows_around_the_column() {
        let line = format!("{}x{}", "a".repeat(1 << 20), "b".repeat(1 << 20));
        let d = Diagnostic::error(Path::new("r.rules"), Pos::new(1, (1 << 20) + 1), Code::Syntax, "here");
        let r = d.render(Some(&line));
        assert!(r.len() < 400, "{} bytes", r.len());
        let lines: Vec<&str> = r.lines().collect();
        let x = lines[2].chars().position(|c| c == 'x').expect("the column is shown");
        assert_eq!(lines[3].chars().position(|c| c == '^'), Some(x), "{r}");
        let d = Diagnostic::error(Path::new("r.rules"), Pos::new(1, 3), Code::Syntax, "after a NUL and a tab");
        expect_test::expect![[r#"
            r.rules:1:3: error[E0001]: after a NUL and a tab
              |
            1 | a�    b
              |   ^"#]]
        .assert_eq(&d.render(Some("a\0\tb")));
    }

    #[test]
    fn offsets_map_to_positions() {
        let m = SourceMap::new("ab\ncdé\nx");
        assert_eq!(m.pos(0), Pos::new(1, 1));
        assert_eq!(m.pos(3), Pos::new(2, 1));
        assert_eq!(m.pos(8), Pos::new(3, 1));
    }
}
