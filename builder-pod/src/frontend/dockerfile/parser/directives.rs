//! Parser directives (`frontend/dockerfile/parser/directives.go`): `# syntax=`,
//! `# escape=` and `# check=` in the leading comments, and the syntax
//! forms `DetectSyntax` accepts.

use super::ParseErrorKind;
use crate::frontend::dockerfile::json;

/// A parser directive (`# syntax=…`, `# escape=…`, `# check=…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Directive {
    /// Lower-cased name.
    pub name: String,
    pub value: String,
    /// 1-based line.
    pub line: usize,
}

/// Recognises directives in the leading comment lines (`DirectiveParser`):
/// the first line that is not a known `key=value` comment ends them.
#[derive(Debug)]
pub(crate) struct DirectiveParser {
    prefix: &'static str,
    line: usize,
    done: bool,
    seen: Vec<String>,
}

impl DirectiveParser {
    pub(crate) fn with_prefix(prefix: &'static str) -> Self {
        Self { prefix, line: 0, done: false, seen: Vec::new() }
    }

    pub(crate) fn parse_line(&mut self, line: &str) -> Result<Option<Directive>, ParseErrorKind> {
        self.line += 1;
        if self.done {
            return Ok(None);
        }
        let Some(rest) = line.strip_prefix(self.prefix) else {
            self.done = true;
            return Ok(None);
        };
        let Some((key, value)) = match_directive(rest.trim_start()) else {
            self.done = true;
            return Ok(None);
        };
        let name = key.to_lowercase();
        if !matches!(name.as_str(), "syntax" | "escape" | "check") {
            self.done = true;
            return Ok(None);
        }
        if self.seen.contains(&name) {
            return Err(ParseErrorKind::DuplicateDirective(name));
        }
        self.seen.push(name.clone());
        Ok(Some(Directive { name, value: value.to_owned(), line: self.line }))
    }
}

/// RE2's `\s`.
pub(super) fn is_re_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\u{c}' | '\r')
}

/// `^([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$`
fn match_directive(s: &str) -> Option<(&str, &str)> {
    if !s.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let key_len = s.find(|c: char| !c.is_ascii_alphanumeric()).unwrap_or(s.len());
    let (key, rest) = s.split_at(key_len);
    let rest = rest.trim_start_matches(is_re_space).strip_prefix('=')?;
    let value = rest.trim_start_matches(is_re_space);
    if value.is_empty() {
        // The value needs one character, so an all-space rest keeps its last one.
        let last = rest.chars().next_back()?;
        return Some((key, &rest[rest.len() - last.len_utf8()..]));
    }
    Some((key, value.trim_end_matches(is_re_space)))
}

/// The value of directive `key` as BuildKit's frontend reads it
/// (`parser.ParseDirective`): from the leading `#` comments, after a
/// byte-order mark and a `#!` line are skipped.
pub(crate) fn parse_directive(key: &str, text: &str) -> Option<Directive> {
    let (text, offset) = skip_bom_and_shebang(text);
    directive_with_prefix(key, text, offset, "#")
}

/// The `syntax` directive in any of the forms `DetectSyntax` accepts:
/// `# syntax=`, `// syntax=`, or a JSON object `{"syntax": "…"}`. The value
/// may carry options after a space (`docker/dockerfile:1 key=value`).
pub(crate) fn detect_syntax(text: &str) -> Option<Directive> {
    let (text, offset) = skip_bom_and_shebang(text);
    directive_with_prefix("syntax", text, offset, "#")
        .or_else(|| directive_with_prefix("syntax", text, offset, "//"))
        .or_else(|| {
            let value = json::object_string_field(text, "syntax")?;
            Some(Directive { name: "syntax".to_owned(), value, line: offset })
        })
}

fn skip_bom_and_shebang(text: &str) -> (&str, usize) {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let (first, rest) = text.split_once('\n').unwrap_or((text, ""));
    if first.starts_with("#!") { (rest, 1) } else { (text, 0) }
}

fn directive_with_prefix(key: &str, text: &str, offset: usize, prefix: &'static str) -> Option<Directive> {
    let mut parser = DirectiveParser::with_prefix(prefix);
    parser.line = offset;
    for line in text.lines() {
        if parser.done {
            break;
        }
        match parser.parse_line(line) {
            Ok(Some(d)) if d.name == key => return Some(d),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    None
}
