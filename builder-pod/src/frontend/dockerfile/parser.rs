//! Dockerfile text to AST (`frontend/dockerfile/parser`): parser directives,
//! line continuations, comments, flags, per-instruction argument splitting
//! and heredocs, with the line numbers BuildKit reports.
//!
//! Where upstream works on bytes (flag extraction, the HEALTHCHECK type), this
//! does too, including its treatment of bytes 0x85 and 0xA0 as spaces and of
//! each non-ASCII byte in a flag as a Latin-1 character.

mod directives;

pub(crate) use self::directives::DirectiveParser;
use self::directives::is_re_space;
pub(crate) use self::directives::{Directive, detect_syntax, parse_directive};
use super::json::{self, ExecForm};
use super::linter::{Warning, rules};
use super::shell::{DEFAULT_ESCAPE, Lexer, NoEnv, ShellError};
use crate::util::strconv::quote;

/// bufio.Scanner's default maximum token size: longer lines end the scan.
const MAX_LINE: usize = 64 * 1024;

/// Instructions whose line may open heredocs.
const HEREDOC_INSTRUCTIONS: [&str; 3] = ["add", "copy", "run"];

/// A heredoc attached to an instruction (`<<EOF` … `EOF`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Heredoc {
    /// The delimiter word, quotes removed.
    pub name: String,
    /// The descriptor before `<<` (`3<<EOF`), 0 when absent.
    pub file_descriptor: u64,
    /// False when any part of the delimiter was quoted: no variable expansion in the body.
    pub expand: bool,
    /// `<<-`: leading tabs are stripped (from the terminator when parsing, from the body later).
    pub chomp: bool,
    /// The body, each line with its newline, terminator excluded.
    pub content: String,
}

/// One `KEY=value` (or legacy `KEY value`) of ENV or LABEL, quotes still in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyValueArg {
    pub key: String,
    pub value: String,
    /// The legacy whitespace form (`ENV key value`) was used.
    pub legacy: bool,
}

/// An instruction's arguments, split the way BuildKit splits each instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Args {
    /// Words: whitespace-split (FROM, EXPOSE, shell-form ADD/COPY/VOLUME),
    /// quote-aware (ARG), a JSON array (exec form), or the whole rest as one
    /// string (shell-form RUN/CMD/ENTRYPOINT/SHELL, USER, WORKDIR, …).
    List(Vec<String>),
    /// ENV and LABEL.
    KeyValues(Vec<KeyValueArg>),
    /// The instruction wrapped by ONBUILD.
    Trigger(Box<Node>),
}

/// One instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    /// Lower-cased instruction name (`run`).
    pub name: String,
    /// The instruction as written (`Run`), for casing checks and messages.
    pub keyword: String,
    /// The logical line: continuations joined, comments dropped, heredoc bodies excluded.
    pub original: String,
    /// `--flag[=value]` words before the arguments, as written.
    pub flags: Vec<String>,
    pub args: Args,
    /// The arguments were a JSON array (exec form).
    pub json: bool,
    pub heredocs: Vec<Heredoc>,
    /// 1-based first line of the instruction.
    pub start_line: usize,
    /// 1-based last line, heredoc bodies included.
    pub end_line: usize,
    /// Comment lines directly above (cleared by a bare `#`), without the `#`.
    pub comments: Vec<String>,
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ast {
    pub nodes: Vec<Node>,
    /// `\` or `` ` `` as set by `# escape=`.
    pub escape_token: char,
    /// Directives at the top of the file, as the parser saw them (a shebang
    /// line ends them here; see [`parse_directive`] for `syntax`/`check`).
    pub directives: Vec<Directive>,
    /// Empty continuation lines (`NoEmptyContinuation`).
    pub warnings: Vec<Warning>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ParseErrorKind {
    #[error("only one {0} parser directive can be used")]
    DuplicateDirective(String),
    #[error("invalid escape token '{0}' does not match ` or \\")]
    InvalidEscapeToken(String),
    #[error("when using JSON array syntax, arrays must be comprised of strings only")]
    NotStringArray,
    #[error("{0} must have two arguments")]
    MustHaveTwoArguments(&'static str),
    #[error("Syntax error - can't find = in {}. Must be of the form: name=value", quote(.0))]
    MissingEquals(String),
    #[error("{0}")]
    HeredocWord(ShellError),
    #[error("internal lexing of heredoc produced inconsistent results: {0}")]
    InconsistentHeredoc(String),
    #[error("unterminated heredoc")]
    UnterminatedHeredoc,
    #[error("file with no instructions")]
    NoInstructions,
    #[error("dockerfile line greater than max allowed size of {}", MAX_LINE - 1)]
    LineTooLong,
}

/// A parse failure with the lines BuildKit attaches to it; the caller renders
/// `Dockerfile:LINE` and the snippet. Some upstream locations are 0-based
/// (directive errors name the line before); they are kept as upstream has them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub(crate) struct ParseError {
    pub kind: ParseErrorKind,
    pub start_line: usize,
    pub end_line: usize,
}

impl ParseError {
    fn at(kind: ParseErrorKind, start_line: usize, end_line: usize) -> Self {
        Self { kind, start_line, end_line: end_line.max(start_line) }
    }
}

impl Node {
    /// Arguments as upstream's flat list (`nodeArgs`): ENV/LABEL pairs become
    /// key, value, delimiter (`=` or empty); a trigger becomes its keyword and arguments.
    pub(crate) fn flat_args(&self) -> Vec<String> {
        match &self.args {
            Args::List(words) => words.clone(),
            Args::KeyValues(pairs) => pairs
                .iter()
                .flat_map(|p| [p.key.clone(), p.value.clone(), if p.legacy { "" } else { "=" }.to_owned()])
                .collect(),
            Args::Trigger(node) => std::iter::once(node.keyword.clone()).chain(node.flat_args()).collect(),
        }
    }

    /// The S-expression BuildKit's `Node.Dump` prints, e.g. `run "echo hi"`:
    /// what upstream's parser tests compare, and so ours.
    #[cfg(test)]
    pub(crate) fn dump(&self) -> String {
        let mut out = self.name.clone();
        if !self.flags.is_empty() {
            let flags: Vec<String> = self.flags.iter().map(|f| quote(f)).collect();
            out.push_str(&format!(" [{}]", flags.join(" ")));
        }
        match &self.args {
            Args::Trigger(node) => out.push_str(&format!(" ({})", node.dump())),
            _ => {
                for arg in self.flat_args() {
                    out.push(' ');
                    out.push_str(&quote(&arg));
                }
            }
        }
        out.trim().to_owned()
    }

    fn can_contain_heredoc(&self) -> bool {
        let node = match (&self.name[..], &self.args) {
            ("onbuild", Args::Trigger(inner)) => inner,
            _ => self,
        };
        HEREDOC_INSTRUCTIONS.contains(&node.name.as_str()) && !node.json
    }
}

/// Parses a Dockerfile.
pub(crate) fn parse(text: &str) -> Result<Ast, ParseError> {
    let mut state = State::new();
    let mut lines = Lines { rest: text, too_long: false };
    let mut current_line = 0;
    let mut nodes: Vec<Node> = Vec::new();
    let mut warnings = Vec::new();
    let mut comments: Vec<String> = Vec::new();

    while let Some(mut raw) = lines.scan() {
        if current_line == 0 {
            raw = raw.strip_prefix('\u{feff}').unwrap_or(raw);
        }
        if is_comment(raw) {
            // Upstream drops the first byte, whatever it is, before trimming.
            let comment = String::from_utf8_lossy(&raw.as_bytes()[1..]).trim().to_owned();
            if comment.is_empty() {
                comments.clear();
            } else {
                comments.push(comment);
            }
        }
        let (line, is_directive) =
            state.process_line(raw, true).map_err(|kind| ParseError::at(kind, current_line, 0))?;
        if is_directive {
            comments.pop();
        }
        current_line += 1;
        let start_line = current_line;

        let (line, mut end_of_line) = trim_continuation(line, state.escape);
        if end_of_line && line.is_empty() {
            continue;
        }
        let mut logical = line.to_owned();
        let mut empty_continuation = false;
        while !end_of_line {
            let Some(raw) = lines.scan() else { break };
            let (line, _) =
                state.process_line(raw, false).map_err(|kind| ParseError::at(kind, current_line, 0))?;
            current_line += 1;
            if is_comment(raw) {
                continue;
            }
            if line.trim_start().is_empty() {
                empty_continuation = true;
                continue;
            }
            let (line, end) = trim_continuation(line, state.escape);
            end_of_line = end;
            logical.push_str(line);
        }

        if empty_continuation {
            let message = rules::no_empty_continuation();
            warnings.push(Warning::new(&rules::NO_EMPTY_CONTINUATION, message, current_line, current_line));
        }

        let mut node = node_from_line(&logical, state.escape, std::mem::take(&mut comments))
            .map_err(|kind| ParseError::at(kind, start_line, current_line))?;

        if node.can_contain_heredoc() && logical.contains("<<") {
            let heredocs = heredocs_from_line(&logical)
                .map_err(|kind| ParseError::at(kind, start_line, current_line))?;
            for mut heredoc in heredocs {
                let mut terminated = false;
                while let Some(raw) = lines.scan() {
                    current_line += 1;
                    let mut candidate = raw.trim_end_matches(['\r', '\n']);
                    if heredoc.chomp {
                        candidate = candidate.trim_start_matches('\t');
                    }
                    if candidate == heredoc.name {
                        terminated = true;
                        break;
                    }
                    heredoc.content.push_str(raw);
                }
                if !terminated {
                    return Err(ParseError::at(
                        ParseErrorKind::UnterminatedHeredoc,
                        start_line,
                        current_line,
                    ));
                }
                node.heredocs.push(heredoc);
            }
        }

        node.set_lines(start_line, current_line);
        nodes.push(node);
    }

    if nodes.is_empty() {
        return Err(ParseError::at(ParseErrorKind::NoInstructions, current_line, 0));
    }
    if lines.too_long {
        return Err(ParseError::at(ParseErrorKind::LineTooLong, current_line, 0));
    }
    Ok(Ast { nodes, escape_token: state.escape, directives: state.directives, warnings })
}

impl Node {
    fn set_lines(&mut self, start: usize, end: usize) {
        self.start_line = start;
        self.end_line = end;
        if let Args::Trigger(inner) = &mut self.args {
            inner.set_lines(start, end);
        }
    }
}

/// Lines with their `\n`, as `bufio.Scanner` with upstream's `scanLines`
/// yields them; an over-long line stops the scan.
struct Lines<'a> {
    rest: &'a str,
    too_long: bool,
}

impl<'a> Lines<'a> {
    fn scan(&mut self) -> Option<&'a str> {
        if self.too_long || self.rest.is_empty() {
            return None;
        }
        let (line, rest) = match self.rest.find('\n') {
            Some(i) => self.rest.split_at(i + 1),
            None => (self.rest, ""),
        };
        // A terminated line fits if it fills the buffer exactly; an
        // unterminated one needs room left to see the end of input.
        let fits = if line.ends_with('\n') { line.len() <= MAX_LINE } else { line.len() < MAX_LINE };
        if !fits {
            self.too_long = true;
            return None;
        }
        self.rest = rest;
        Some(line)
    }
}

/// Parser state: the escape token and the directive scanner.
struct State {
    escape: char,
    directive_parser: DirectiveParser,
    directives: Vec<Directive>,
}

impl State {
    fn new() -> Self {
        Self {
            escape: DEFAULT_ESCAPE,
            directive_parser: DirectiveParser::with_prefix("#"),
            directives: Vec::new(),
        }
    }

    /// Trims the line ending (and leading space for a new instruction), lets
    /// the directive scanner see it, and blanks comment lines.
    fn process_line<'a>(
        &mut self,
        raw: &'a str,
        strip_left: bool,
    ) -> Result<(&'a str, bool), ParseErrorKind> {
        let mut line = raw.trim_end_matches(['\r', '\n']);
        if strip_left {
            line = line.trim_start();
        }
        let directive = self.directive_parser.parse_line(line)?;
        let is_directive = directive.is_some();
        if let Some(directive) = directive {
            if directive.name == "escape" {
                self.escape = match directive.value.as_str() {
                    "`" => '`',
                    "\\" => '\\',
                    other => return Err(ParseErrorKind::InvalidEscapeToken(other.to_owned())),
                };
            }
            self.directives.push(directive);
        }
        Ok((if is_comment(line) { "" } else { line }, is_directive))
    }
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

/// Strips a trailing escape token (and the spaces after it) that continues
/// the line. An escaped escape token (`\\`) does not continue it; upstream's
/// regexp cannot tell `\\\` apart either, so that does not continue it.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let body = line.trim_end_matches([' ', '\t']);
    let Some(before) = body.strip_suffix(escape) else { return (line, true) };
    if before.is_empty() || !before.ends_with(escape) { (before, false) } else { (line, true) }
}

/// `unicode.IsSpace` of a byte taken as a Latin-1 character.
fn is_latin1_space(b: u8) -> bool {
    matches!(b, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ' | 0x85 | 0xa0)
}

/// The whitespace `[\t\v\f\r ]+` that splits words in several instructions.
fn is_word_space(c: char) -> bool {
    matches!(c, '\t' | '\u{b}' | '\u{c}' | '\r' | ' ')
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn node_from_line(line: &str, escape: char, comments: Vec<String>) -> Result<Node, ParseErrorKind> {
    let trimmed = line.trim();
    let (keyword, (rest, flags)) = match trimmed.find(is_word_space) {
        Some(i) => {
            (&trimmed[..i], extract_builder_flags(trimmed[i..].trim_start_matches(is_word_space), escape))
        }
        None => (trimmed, (String::new(), Vec::new())),
    };
    let rest = rest.trim();
    let name = keyword.to_lowercase();
    let (args, json) = match name.as_str() {
        "add" | "copy" | "volume" => maybe_json_to_list(rest)?,
        "arg" => (Args::List(parse_words(rest, escape)), false),
        "cmd" | "entrypoint" | "run" | "shell" => maybe_json(rest)?,
        "env" => (parse_name_val(rest, "ENV", escape)?, false),
        "label" => (parse_name_val(rest, "LABEL", escape)?, false),
        "expose" | "from" => (Args::List(split_whitespace(rest)), false),
        "healthcheck" => parse_health_config(rest)?,
        "maintainer" | "stopsignal" | "user" | "workdir" => {
            (Args::List(if rest.is_empty() { Vec::new() } else { vec![rest.to_owned()] }), false)
        }
        "onbuild" if rest.is_empty() => (Args::List(Vec::new()), false),
        "onbuild" => (Args::Trigger(Box::new(node_from_line(rest, escape, Vec::new())?)), false),
        // Unknown instructions parse; the instruction stage rejects them.
        _ => (Args::List(vec![String::new()]), false),
    };
    Ok(Node {
        name,
        keyword: keyword.to_owned(),
        original: line.to_owned(),
        flags,
        args,
        json,
        heredocs: Vec::new(),
        start_line: 0,
        end_line: 0,
        comments,
    })
}

/// Takes the leading `--flag` words off `line` (`extractBuilderFlags`),
/// byte by byte as upstream does. `--` alone ends the flags.
fn extract_builder_flags(line: &str, escape: char) -> (String, Vec<String>) {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let b = line.as_bytes();
    let n = b.len();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut quote = 0u8;
    let mut blank_ok = false;
    let is_escape = |c: u8| char::from(c) == escape;
    let mut pos = 0;
    while pos <= n {
        if phase == Phase::Spaces {
            if pos == n {
                break;
            }
            if is_latin1_space(b[pos]) {
                pos += 1;
                continue;
            }
            if b[pos] != b'-' || pos + 1 == n || b[pos + 1] != b'-' {
                return (lossy(&b[pos..]), words);
            }
            phase = Phase::Word;
        }
        if pos == n {
            if word != "--" && (blank_ok || !word.is_empty()) {
                words.push(word);
            }
            break;
        }
        let mut ch = b[pos];
        if phase == Phase::Word {
            if is_latin1_space(ch) {
                phase = Phase::Spaces;
                if word == "--" {
                    return (lossy(&b[pos..]), words);
                }
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                word.clear();
                blank_ok = false;
                pos += 1;
                continue;
            }
            if ch == b'\'' || ch == b'"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
                pos += 1;
                continue;
            }
            if is_escape(ch) {
                if pos + 1 == n {
                    pos += 1;
                    continue;
                }
                pos += 1;
                ch = b[pos];
            }
            word.push(char::from(ch));
            pos += 1;
            continue;
        }
        // Phase::Quote
        if ch == quote {
            phase = Phase::Word;
            pos += 1;
            continue;
        }
        if is_escape(ch) {
            if pos + 1 == n {
                phase = Phase::Word;
                pos += 1;
                continue;
            }
            pos += 1;
            ch = b[pos];
        }
        word.push(char::from(ch));
        pos += 1;
    }
    (String::new(), words)
}

/// Splits on spaces outside quotes, keeping quotes and escapes in the words
/// (`parseWords`); later expansion removes them.
fn parse_words(rest: &str, escape: char) -> Vec<String> {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let chars: Vec<char> = rest.chars().collect();
    let n = chars.len();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut word = String::new();
    let mut pos = 0;
    while pos <= n {
        if phase == Phase::Spaces {
            if pos == n {
                break;
            }
            if chars[pos].is_whitespace() {
                pos += 1;
                continue;
            }
            phase = Phase::Word;
        }
        if pos == n {
            if blank_ok || !word.is_empty() {
                words.push(word);
            }
            break;
        }
        let mut ch = chars[pos];
        if phase == Phase::Word {
            if ch.is_whitespace() {
                phase = Phase::Spaces;
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                blank_ok = false;
                pos += 1;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
            }
            if ch == escape {
                if pos + 1 == n {
                    pos += 1;
                    continue;
                }
                // An escaped character, even a quote, stays in the word as written.
                word.push(ch);
                pos += 1;
                ch = chars[pos];
            }
            word.push(ch);
            pos += 1;
            continue;
        }
        // Phase::Quote: nothing is escaped inside single quotes.
        if ch == quote {
            phase = Phase::Word;
        }
        if ch == escape && quote != '\'' {
            if pos + 1 == n {
                phase = Phase::Word;
                pos += 1;
                continue;
            }
            pos += 1;
            word.push(ch);
            ch = chars[pos];
        }
        word.push(ch);
        pos += 1;
    }
    words
}

fn split_whitespace(rest: &str) -> Vec<String> {
    rest.split(is_word_space).filter(|w| !w.is_empty()).map(str::to_owned).collect()
}

/// ENV and LABEL: `k=v k2="v 2"`, or the legacy `k v` when the first word
/// has no `=`.
fn parse_name_val(rest: &str, instruction: &'static str, escape: char) -> Result<Args, ParseErrorKind> {
    let words = parse_words(rest, escape);
    let Some(first) = words.first() else { return Ok(Args::KeyValues(Vec::new())) };
    if !first.contains('=') {
        let Some(i) = rest.find(is_word_space) else {
            return Err(ParseErrorKind::MustHaveTwoArguments(instruction));
        };
        let value = rest[i..].trim_start_matches(is_word_space);
        return Ok(Args::KeyValues(vec![KeyValueArg {
            key: rest[..i].to_owned(),
            value: value.to_owned(),
            legacy: true,
        }]));
    }
    let mut pairs = Vec::with_capacity(words.len());
    for word in words {
        let Some((key, value)) = word.split_once('=') else {
            return Err(ParseErrorKind::MissingEquals(word));
        };
        pairs.push(KeyValueArg { key: key.to_owned(), value: value.to_owned(), legacy: false });
    }
    Ok(Args::KeyValues(pairs))
}

/// `Some` when `rest` is a JSON array of strings; `None` for shell form.
fn parse_json(rest: &str) -> Result<Option<Vec<String>>, ParseErrorKind> {
    let rest = rest.trim_start();
    if !rest.starts_with('[') {
        return Ok(None);
    }
    match json::parse_exec_form(rest) {
        ExecForm::Strings(words) => Ok(Some(words)),
        ExecForm::NotStrings => Err(ParseErrorKind::NotStringArray),
        ExecForm::Invalid => Ok(None),
    }
}

/// RUN, CMD, ENTRYPOINT, SHELL: exec form, or the whole rest as one string.
fn maybe_json(rest: &str) -> Result<(Args, bool), ParseErrorKind> {
    if rest.is_empty() {
        return Ok((Args::List(Vec::new()), false));
    }
    Ok(match parse_json(rest)? {
        Some(words) => (Args::List(words), true),
        None => (Args::List(vec![rest.to_owned()]), false),
    })
}

/// ADD, COPY, VOLUME: exec form, or whitespace-split words.
fn maybe_json_to_list(rest: &str) -> Result<(Args, bool), ParseErrorKind> {
    Ok(match parse_json(rest)? {
        Some(words) => (Args::List(words), true),
        None => (Args::List(split_whitespace(rest)), false),
    })
}

/// HEALTHCHECK: a type word (`CMD`/`NONE`) then a RUN-like command.
fn parse_health_config(rest: &str) -> Result<(Args, bool), ParseErrorKind> {
    let b = rest.as_bytes();
    let sep = b.iter().position(|c| is_latin1_space(*c)).unwrap_or(b.len());
    if sep == 0 {
        return Ok((Args::List(Vec::new()), false));
    }
    let next = b[sep..].iter().position(|c| !is_latin1_space(*c)).map_or(b.len(), |i| sep + i);
    let (command, json) = maybe_json(&lossy(&b[next..]))?;
    let mut args = vec![lossy(&b[..sep])];
    if let Args::List(words) = command {
        args.extend(words);
    }
    Ok((Args::List(args), json))
}

/// Finds heredoc operators in a RUN/COPY/ADD line (`heredocsFromLine`).
fn heredocs_from_line(line: &str) -> Result<Vec<Heredoc>, ParseErrorKind> {
    let mut lexer = Lexer::new('\\');
    lexer.raw_quotes = true;
    lexer.raw_escapes = true;
    lexer.skip_unset_env = true;
    // Upstream ignores lexing errors here: such a line simply has no heredocs.
    let words = lexer.process_words(line, &NoEnv).unwrap_or_default();
    let mut docs = Vec::new();
    for word in words {
        if let Some(heredoc) = parse_heredoc(&word)? {
            docs.push(heredoc);
        }
    }
    Ok(docs)
}

/// Parses one heredoc operator word such as `<<EOF`, `<<-"EOF"` or `3<<EOF`
/// (`parser.ParseHeredoc`); `None` when `word` is not one.
pub(crate) fn parse_heredoc(word: &str) -> Result<Option<Heredoc>, ParseErrorKind> {
    let digits_len = word.find(|c: char| !c.is_ascii_digit()).unwrap_or(word.len());
    let (digits, rest) = word.split_at(digits_len);
    let Some(rest) = rest.strip_prefix("<<") else { return Ok(None) };
    let (chomp, rest) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let rest = rest.trim_start_matches(is_re_space);
    if rest.is_empty() || rest.contains('<') {
        return Ok(None);
    }
    // ParseUint's result on overflow is the maximum value, which upstream keeps.
    let file_descriptor = if digits.is_empty() { 0 } else { digits.parse().unwrap_or(u64::MAX) };

    let mut lexer = Lexer::new('\\');
    lexer.skip_unset_env = true;
    let words = lexer.process_words(rest, &NoEnv).map_err(ParseErrorKind::HeredocWord)?;
    let Ok([name]) = <[String; 1]>::try_from(words) else { return Ok(None) };
    lexer.raw_quotes = true;
    let raw = lexer.process_words(rest, &NoEnv).map_err(ParseErrorKind::HeredocWord)?;
    let Ok([raw_name]) = <[String; 1]>::try_from(raw) else {
        return Err(ParseErrorKind::InconsistentHeredoc(rest.to_owned()));
    };
    // Any quoting in the delimiter turns expansion of the body off.
    let quotes = |s: &str| s.chars().filter(|c| matches!(c, '\'' | '"')).count();
    Ok(Some(Heredoc {
        expand: quotes(&name) == quotes(&raw_name),
        name,
        file_descriptor,
        chomp,
        content: String::new(),
    }))
}

/// Strips leading tabs from every line of a `<<-` heredoc body.
pub(crate) fn chomp_heredoc_content(content: &str) -> String {
    content.split_inclusive('\n').map(|line| line.trim_start_matches('\t')).collect()
}

#[cfg(test)]
mod tests;
