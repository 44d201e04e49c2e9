//! The rule-file grammar: rules, attributes, `match` conditions and the raw
//! Rhai text of the `action`, `reaction` and `error` sections.
//!
//! The parser never stops at the first problem: it records a diagnostic,
//! skips to the next rule and goes on.

use crate::diagnostic::{shown, Pos, SourceMap};

/// The longest rule name: names travel in timelines and API answers.
pub const MAX_RULE_NAME: usize = 256;
/// The longest binding or fact type name (as `MAX_TYPE_NAME`): a name is
/// interned for as long as the process runs.
pub const MAX_NAME: usize = 128;

/// A piece of source text with the position of its first character.
#[derive(Clone, Debug, PartialEq)]
pub struct Text {
    pub text: String,
    pub pos: Pos,
    /// Byte offset of the text in its file.
    pub offset: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AggFn {
    Count,
    Sum,
    Min,
    Max,
    Collect,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PatternAst {
    pub type_name: String,
    pub pos: Pos,
    pub constraints: Vec<Text>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ConditionAst {
    Pattern { binding: Option<Text>, pattern: PatternAst },
    Not(PatternAst),
    Exists(PatternAst),
    Aggregate { binding: Text, func: AggFn, pattern: PatternAst, over: Option<Text> },
    Test(Text),
}

#[derive(Clone, Debug, PartialEq)]
pub struct RuleAst {
    pub name: String,
    pub pos: Pos,
    pub salience: i32,
    pub no_loop: bool,
    pub conditions: Vec<ConditionAst>,
    pub action: Option<Text>,
    pub reaction: Option<Text>,
    pub error: Option<Text>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// The result of parsing a rule file.
#[derive(Debug, Default)]
pub struct Parsed {
    pub rules: Vec<RuleAst>,
    pub errors: Vec<SyntaxError>,
    /// Names (and positions) of rules that have syntax errors, so that
    /// references to them are not reported as unknown too.
    pub broken: Vec<(String, Pos)>,
}

pub fn parse_rules(src: &str) -> Parsed {
    let map = SourceMap::new(src);
    let mut p = P { src, b: src.as_bytes(), i: 0, map: &map, errors: Vec::new(), name: None };
    let mut broken = Vec::new();
    let mut rules = Vec::new();
    loop {
        p.skip_ws();
        if p.i >= p.b.len() {
            break;
        }
        let start = p.i;
        p.name = None;
        match p.rule() {
            Ok(r) => rules.push(r),
            Err(e) => {
                p.errors.push(e);
                broken.extend(p.name.take());
                // Recover: continue at the next `rule` keyword at line start.
                p.i = start + 1;
                p.recover();
            }
        }
    }
    Parsed { rules, errors: p.errors, broken }
}

struct P<'a> {
    src: &'a str,
    b: &'a [u8],
    i: usize,
    map: &'a SourceMap,
    errors: Vec<SyntaxError>,
    /// The name of the rule being parsed, once read.
    name: Option<(String, Pos)>,
}

type R<T> = Result<T, SyntaxError>;

impl<'a> P<'a> {
    fn err<T>(&self, at: usize, msg: impl Into<String>) -> R<T> {
        Err(SyntaxError { pos: self.map.pos(at), message: msg.into() })
    }

    fn recover(&mut self) {
        while self.i < self.b.len() {
            let at_line_start = self.i == 0 || self.b[self.i - 1] == b'\n';
            if at_line_start && self.src[self.i..].starts_with("rule") {
                return;
            }
            self.i += 1;
        }
    }

    fn skip_ws(&mut self) {
        loop {
            while self.i < self.b.len() && self.b[self.i].is_ascii_whitespace() {
                self.i += 1;
            }
            if self.src[self.i..].starts_with("//") || self.src[self.i..].starts_with('#') {
                while self.i < self.b.len() && self.b[self.i] != b'\n' {
                    self.i += 1;
                }
            } else if self.src[self.i..].starts_with("/*") {
                match self.src[self.i + 2..].find("*/") {
                    Some(e) => self.i += e + 4,
                    None => {
                        let pos = self.map.pos(self.i);
                        self.errors.push(SyntaxError { pos, message: "unclosed comment `/*`".into() });
                        self.i = self.b.len();
                    }
                }
            } else {
                return;
            }
        }
    }

    fn peek_word(&mut self) -> Option<&'a str> {
        self.skip_ws();
        let s = self.i;
        let mut e = s;
        while e < self.b.len() && (self.b[e].is_ascii_alphanumeric() || self.b[e] == b'_' || self.b[e] == b'-') {
            e += 1;
        }
        (e > s).then(|| &self.src[s..e])
    }

    fn word(&mut self) -> R<(&'a str, usize)> {
        match self.peek_word() {
            Some(w) => {
                let at = self.i;
                self.i += w.len();
                Ok((w, at))
            }
            None => self.err(self.i, format!("expected a name, found {}", self.found())),
        }
    }

    fn found(&self) -> String {
        let rest = &self.src[self.i..];
        let word: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '-').collect();
        match rest.chars().next() {
            None => "end of file".into(),
            Some(_) if !word.is_empty() => format!("`{}`", shown(&word)),
            Some(c) => format!("`{}`", shown(&c.to_string())),
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.skip_ws();
        if self.b.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> R<()> {
        if self.eat(c) {
            Ok(())
        } else {
            self.err(self.i, format!("expected `{}`, found {}", c as char, self.found()))
        }
    }

    fn string(&mut self) -> R<String> {
        self.skip_ws();
        if self.b.get(self.i) != Some(&b'"') {
            return self.err(self.i, format!("expected a quoted rule name, found {}", self.found()));
        }
        let start = self.i;
        self.i += 1;
        let mut out = String::new();
        while let Some(c) = self.src[self.i..].chars().next() {
            self.i += c.len_utf8();
            match c {
                '"' => return Ok(out),
                '\n' => break,
                '\\' => {
                    if let Some(n) = self.src[self.i..].chars().next() {
                        self.i += n.len_utf8();
                        out.push(n);
                    }
                }
                c => out.push(c),
            }
        }
        self.err(start, "unterminated string")
    }

    /// Text up to the bracket that closes the one just read, skipping
    /// strings and comments. Leaves `i` after the closer; returns the inner
    /// text. A mismatched closer, or a `rule "` at the start of a line,
    /// means the opener was never closed: the error points at it.
    fn balanced(&mut self, open: u8, close: u8, what: &str) -> R<Text> {
        self.balanced_at(self.i - 1, open, close, what)
    }

    /// `balanced`, for an opener at `open_at` (text may start later).
    fn balanced_at(&mut self, open_at: usize, open: u8, close: u8, what: &str) -> R<Text> {
        let start = self.i;
        let mut stack: Vec<(u8, usize)> = vec![(open, open_at)];
        let unclosed = |p: &Self, (c, at): (u8, usize)| {
            p.err::<Text>(
                at,
                format!(
                    "unclosed `{}` in {what}",
                    if c == b'{' && at > 0 && p.b[at - 1] == b'#' { "#{".to_string() } else { (c as char).to_string() }
                ),
            )
        };
        while self.i < self.b.len() {
            let c = self.b[self.i];
            let line_start = self.i == 0 || self.b[self.i - 1] == b'\n';
            if line_start && self.src[self.i..].starts_with("rule \"") {
                return unclosed(self, *stack.last().expect("non-empty"));
            }
            match c {
                b'"' | b'`' | b'\'' => {
                    let q = c;
                    let at = self.i;
                    self.i += 1;
                    while self.i < self.b.len() && self.b[self.i] != q && !(q != b'`' && self.b[self.i] == b'\n') {
                        if self.b[self.i] == b'\\' {
                            self.i += 1;
                        }
                        self.i += 1;
                    }
                    if self.i >= self.b.len() || self.b[self.i] != q {
                        return self.err(at, "unterminated string");
                    }
                }
                b'/' if self.b.get(self.i + 1) == Some(&b'/') => {
                    while self.i < self.b.len() && self.b[self.i] != b'\n' {
                        self.i += 1;
                    }
                    continue;
                }
                b'/' if self.b.get(self.i + 1) == Some(&b'*') => match self.src[self.i + 2..].find("*/") {
                    Some(e) => self.i += e + 3,
                    None => return self.err(self.i, "unclosed comment `/*`"),
                },
                b'(' | b'[' | b'{' => stack.push((c, self.i)),
                b')' | b']' | b'}' => {
                    let opener = match c {
                        b')' => b'(',
                        b']' => b'[',
                        _ => b'{',
                    };
                    let (o, at) = *stack.last().expect("non-empty");
                    if o != opener {
                        // If an outer bracket matches, the inner one was left
                        // open; otherwise this closer is the stray one.
                        // In a pattern (opened by `(`), the outer rule closes it.
                        return if stack.iter().any(|(x, _)| *x == opener) || (stack.len() == 1 && open == b'(') {
                            unclosed(self, (o, at))
                        } else {
                            self.err(self.i, format!("unexpected `{}`", c as char))
                        };
                    }
                    stack.pop();
                    if stack.is_empty() {
                        debug_assert_eq!(c, close);
                        let text = self.src[start..self.i].to_string();
                        self.i += 1;
                        return Ok(Text { text, pos: self.map.pos(start), offset: start });
                    }
                }
                _ => {}
            }
            self.i += 1;
        }
        unclosed(self, *stack.last().expect("non-empty"))
    }

    fn rule(&mut self) -> R<RuleAst> {
        let (kw, at) = self.word()?;
        if kw != "rule" {
            return self.err(at, format!("expected `rule`, found `{}`", shown(kw)));
        }
        let name_at = {
            self.skip_ws();
            self.i
        };
        let name = self.string()?;
        if name.trim().is_empty() {
            return self.err(name_at, "a rule name cannot be empty");
        }
        if name.len() > MAX_RULE_NAME {
            return self.err(name_at, format!("a rule name is at most {MAX_RULE_NAME} bytes: \"{}\"", shown(&name)));
        }
        self.name = Some((name.clone(), self.map.pos(name_at)));
        self.expect(b'{')?;
        let mut rule = RuleAst {
            name,
            pos: self.map.pos(name_at),
            salience: 0,
            no_loop: false,
            conditions: Vec::new(),
            action: None,
            reaction: None,
            error: None,
        };
        let mut seen_match = false;
        loop {
            if self.eat(b'}') {
                break;
            }
            if self.i >= self.b.len() {
                return self.err(name_at, "rule is not closed with `}`");
            }
            let (w, at) = self.word()?;
            match w {
                "salience" => {
                    self.skip_ws();
                    let s = self.i;
                    if self.b.get(self.i) == Some(&b'-') {
                        self.i += 1;
                    }
                    while self.i < self.b.len() && self.b[self.i].is_ascii_digit() {
                        self.i += 1;
                    }
                    rule.salience = match self.src[s..self.i].parse() {
                        Ok(v) => v,
                        Err(_) => return self.err(s, "`salience` takes an integer"),
                    };
                }
                "no-loop" => rule.no_loop = true,
                "match" => {
                    if seen_match {
                        return self.err(at, "a rule has one `match` section");
                    }
                    seen_match = true;
                    self.expect(b'{')?;
                    rule.conditions = self.conditions()?;
                }
                "action" | "reaction" | "error" => {
                    self.expect(b'{')?;
                    let body = self.balanced(b'{', b'}', "section")?;
                    let slot = match w {
                        "action" => &mut rule.action,
                        "reaction" => &mut rule.reaction,
                        _ => &mut rule.error,
                    };
                    if slot.is_some() {
                        return self.err(at, format!("a rule has one `{w}` section"));
                    }
                    *slot = Some(body);
                }
                other => {
                    return self.err(
                        at,
                        format!(
                            "unknown rule item `{}`; expected `salience`, `no-loop`, `match`, `action`, `reaction` or `error`",
                            shown(other)
                        ),
                    )
                }
            }
        }
        if rule.action.is_none() && (rule.reaction.is_some() || rule.error.is_some()) {
            return self.err(name_at, "`reaction` and `error` need an `action` that calls a function");
        }
        Ok(rule)
    }

    fn conditions(&mut self) -> R<Vec<ConditionAst>> {
        let mut out = Vec::new();
        loop {
            if self.eat(b'}') {
                return Ok(out);
            }
            if self.i >= self.b.len() {
                return self.err(self.i, "`match` is not closed with `}`");
            }
            let (w, at) = self.word()?;
            let cond = match w {
                "not" => ConditionAst::Not(self.pattern()?),
                "exists" => ConditionAst::Exists(self.pattern()?),
                "test" => {
                    self.expect(b'(')?;
                    ConditionAst::Test(self.balanced(b'(', b')', "test")?)
                }
                _ if self.eat(b':') => {
                    let binding = Text { text: w.to_string(), pos: self.map.pos(at), offset: at };
                    check_ident(self, w, at)?;
                    let agg = match self.peek_word() {
                        Some("count") => Some(AggFn::Count),
                        Some("sum") => Some(AggFn::Sum),
                        Some("min") => Some(AggFn::Min),
                        Some("max") => Some(AggFn::Max),
                        Some("collect") => Some(AggFn::Collect),
                        _ => None,
                    };
                    match agg {
                        Some(func) => {
                            let (name, func_at) = self.word()?;
                            self.expect(b'(')?;
                            let paren_at = self.i - 1;
                            let pattern = self.pattern()?;
                            let over = if self.eat(b',') {
                                self.skip_ws();
                                let t = self.balanced_at(paren_at, b'(', b')', "aggregate")?;
                                Some(Text { text: t.text.trim_end().to_string(), ..t })
                            } else {
                                self.expect(b')')?;
                                None
                            };
                            if matches!(func, AggFn::Sum | AggFn::Min | AggFn::Max) && over.is_none() {
                                return self.err(
                                    func_at,
                                    format!("`{name}` needs a field or expression: `{name}(Type(...), field)`"),
                                );
                            }
                            ConditionAst::Aggregate { binding, func, pattern, over }
                        }
                        None => ConditionAst::Pattern { binding: Some(binding), pattern: self.pattern()? },
                    }
                }
                _ => {
                    self.i = at;
                    ConditionAst::Pattern { binding: None, pattern: self.pattern()? }
                }
            };
            out.push(cond);
        }
    }

    fn pattern(&mut self) -> R<PatternAst> {
        let (ty, at) = self.word()?;
        check_ident(self, ty, at)?;
        if !ty.starts_with(|c: char| c.is_ascii_uppercase()) {
            return self.err(at, format!("a fact type starts with an upper-case letter: `{}`", shown(ty)));
        }
        if ty.len() > crate::value::MAX_TYPE_NAME {
            return self.err(at, format!("`{}`: {}", shown(ty), crate::sandbox::TYPE_NAME_RULE));
        }
        let mut constraints = Vec::new();
        if self.eat(b'(') {
            let inner = self.balanced(b'(', b')', "pattern")?;
            constraints = split_top_level(&inner, self.map);
        }
        Ok(PatternAst { type_name: ty.to_string(), pos: self.map.pos(at), constraints })
    }
}

fn check_ident(p: &P, w: &str, at: usize) -> R<()> {
    if w.contains('-') || w.starts_with(|c: char| c.is_ascii_digit()) {
        return p.err(at, format!("`{}` is not a valid name", shown(w)));
    }
    if w.len() > MAX_NAME {
        return p.err(at, format!("`{}` is longer than {MAX_NAME} bytes", shown(w)));
    }
    Ok(())
}

/// Splits `a == 1, b in [1, 2]` at the commas outside brackets and strings.
fn split_top_level(t: &Text, map: &SourceMap) -> Vec<Text> {
    let b = t.text.as_bytes();
    let mut out = Vec::new();
    let (mut depth, mut start, mut i) = (0i32, 0usize, 0usize);
    let mut push = |s: usize, e: usize| {
        let raw = &t.text[s..e];
        let lead = raw.len() - raw.trim_start().len();
        let text = raw.trim();
        if !text.is_empty() {
            let offset = t.offset + s + lead;
            out.push(Text { text: text.to_string(), pos: map.pos(offset), offset });
        }
    };
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            b',' if depth == 0 => {
                push(start, i);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    push(start, b.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(src: &str, expect: expect_test::Expect) {
        let Parsed { rules, errors, .. } = parse_rules(src);
        let mut out = String::new();
        for r in &rules {
            out.push_str(&format!(
                "rule {:?} @{}:{} salience={} no_loop={}\n",
                r.name, r.pos.line, r.pos.col, r.salience, r.no_loop
            ));
            for c in &r.conditions {
                out.push_str(&format!("  {c:?}\n"));
            }
            for (n, s) in [("action", &r.action), ("reaction", &r.reaction), ("error", &r.error)] {
                if let Some(s) = s {
                    out.push_str(&format!("  {n} @{}:{} {:?}\n", s.pos.line, s.pos.col, s.text.trim()));
                }
            }
        }
        for e in errors {
            out.push_str(&format!("error @{}:{}: {}\n", e.pos.line, e.pos.col, e.message));
        }
        expect.assert_eq(&out);
    }

    #[test]
    fn full_rule() {
        check(
            r#"
// comment
rule "encode chunk" {
    salience 10
    no-loop
    match {
        job: Job(status == "encoding")
        chunk: Chunk(job == job.id, status in ["a", "b"])
        not Pause(job == job.id)
        n: count(Chunk(job == job.id))
        total: sum(Chunk(), size * 2)
        test(n > 1)
    }
    action { call("media.encode", #{ uri: chunk.uri }); }
    reaction { modify(chunk, #{ status: "done" }) }
}
"#,
            expect_test::expect![[r#"
                rule "encode chunk" @3:6 salience=10 no_loop=true
                  Pattern { binding: Some(Text { text: "job", pos: Pos { line: 7, col: 9 }, offset: 82 }), pattern: PatternAst { type_name: "Job", pos: Pos { line: 7, col: 14 }, constraints: [Text { text: "status == \"encoding\"", pos: Pos { line: 7, col: 18 }, offset: 91 }] } }
                  Pattern { binding: Some(Text { text: "chunk", pos: Pos { line: 8, col: 9 }, offset: 121 }), pattern: PatternAst { type_name: "Chunk", pos: Pos { line: 8, col: 16 }, constraints: [Text { text: "job == job.id", pos: Pos { line: 8, col: 22 }, offset: 134 }, Text { text: "status in [\"a\", \"b\"]", pos: Pos { line: 8, col: 37 }, offset: 149 }] } }
                  Not(PatternAst { type_name: "Pause", pos: Pos { line: 9, col: 13 }, constraints: [Text { text: "job == job.id", pos: Pos { line: 9, col: 19 }, offset: 189 }] })
                  Aggregate { binding: Text { text: "n", pos: Pos { line: 10, col: 9 }, offset: 212 }, func: Count, pattern: PatternAst { type_name: "Chunk", pos: Pos { line: 10, col: 18 }, constraints: [Text { text: "job == job.id", pos: Pos { line: 10, col: 24 }, offset: 227 }] }, over: None }
                  Aggregate { binding: Text { text: "total", pos: Pos { line: 11, col: 9 }, offset: 251 }, func: Sum, pattern: PatternAst { type_name: "Chunk", pos: Pos { line: 11, col: 20 }, constraints: [] }, over: Some(Text { text: "size * 2", pos: Pos { line: 11, col: 29 }, offset: 271 }) }
                  Test(Text { text: "n > 1", pos: Pos { line: 12, col: 14 }, offset: 294 })
                  action @14:13 "call(\"media.encode\", #{ uri: chunk.uri });"
                  reaction @15:15 "modify(chunk, #{ status: \"done\" })"
            "#]],
        );
    }

    #[test]
    fn names_are_bounded_and_quoted_short() {
        // Found by the property tests: a megabyte-long binding compiled, and
        // its name would have been interned for the life of the server.
        let huge = "x".repeat(1 << 20);
        let src = format!(
            "rule \"a\" {{ match {{ {huge}: Job() }} }}\nrule \"b\" {{ match {{ J{huge}() }} }}\nrule \"{huge}\" {{ }}\nrule \"c\" {{ {huge} }}\n"
        );
        let errors: Vec<String> = parse_rules(&src).errors.into_iter().map(|e| e.message).collect();
        expect_test::expect![[r#"
            [
                "`xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx… (1048576 bytes)` is longer than 128 bytes",
                "`Jxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx… (1048577 bytes)` is longer than 128 bytes",
                "a rule name is at most 256 bytes: \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx… (1048576 bytes)\"",
                "unknown rule item `xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx… (1048576 bytes)`; expected `salience`, `no-loop`, `match`, `action`, `reaction` or `error`",
            ]
        "#]]
        .assert_debug_eq(&errors);
    }

    #[test]
    fn reports_every_broken_rule() {
        check(
            r#"rule "a" {
    salience high
}
rule "b" {
    match { job: job(x == 1) }
}
rule "ok" { action { log("hi") } }
rule "c" {
    match { J(a == "unterminated ) }
"#,
            expect_test::expect![[r#"
                rule "ok" @7:6 salience=0 no_loop=false
                  action @7:21 "log(\"hi\")"
                error @2:14: `salience` takes an integer
                error @5:18: a fact type starts with an upper-case letter: `job`
                error @9:20: unterminated string
            "#]],
        );
    }
}
