//! BuildKit's shell-word lexer (`frontend/dockerfile/shell/lex.go`): quote
//! removal, escapes and `$VAR` / `${VAR<modifier>}` expansion as Dockerfile
//! instructions see them, plus word splitting. It is not a shell: no command
//! substitution, no globbing of file names, no arithmetic.
//!
//! Upstream quirks kept on purpose, because Dockerfiles observe them:
//! * in word splitting, a `${VAR<modifier>…}` drops the part of the current
//!   word that precedes it (upstream shares one buffer between nested scans);
//! * `${VAR//p/r}` interprets `$0`/`$name` in `r` as regexp group references
//!   (only `$0`, the whole match, exists), `${VAR/p/r}` does not;
//! * `*` and `?` in patterns never match a newline.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::BuildHasher;

use crate::frontend::llb::EnvList;
use crate::util::strconv::quote;

/// The escape character of a Dockerfile without an `# escape=` directive.
pub(crate) const DEFAULT_ESCAPE: char = '\\';

/// Variables visible to an expansion.
pub(crate) trait Env {
    /// The value of `name`, or `None` when it is unset (set-but-empty is `Some("")`).
    fn lookup(&self, name: &str) -> Option<&str>;
}

impl<S: BuildHasher> Env for HashMap<String, String, S> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

impl Env for BTreeMap<String, String> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

/// An ordered list of variables; a later entry for the same name wins, as in
/// an image's `Env` list.
impl Env for [(String, String)] {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

impl Env for Vec<(String, String)> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.as_slice().lookup(name)
    }
}

/// A state's environment (upstream: `llb.EnvList` satisfies the lexer's
/// `EnvGetter`; the LLB builder knows nothing of the lexer).
impl Env for EnvList {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name)
    }
}

/// No variables at all.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct NoEnv;

impl Env for NoEnv {
    fn lookup(&self, _name: &str) -> Option<&str> {
        None
    }
}

/// Why a word could not be processed; the texts are upstream's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ShellErrorKind {
    #[error("syntax error: missing '}}'")]
    MissingBrace,
    #[error("syntax error: bad substitution")]
    BadSubstitution,
    #[error("syntax error: missing '/' in ${{}}")]
    MissingSlash,
    #[error("unsupported modifier ({0}) in substitution")]
    UnsupportedModifier(String),
    /// `${VAR?message}` / `${VAR:?message}` on an unset (or empty) variable.
    #[error("{name}: {message}")]
    Required { name: String, message: String },
    #[error("invalid pattern ({pattern}) in substitution: invalid escape '\\{escaped}'")]
    InvalidPattern { pattern: String, escaped: char },
    #[error("unexpected end of statement while looking for matching single-quote")]
    UnterminatedSingleQuote,
    #[error("unexpected end of statement while looking for matching double-quote")]
    UnterminatedDoubleQuote,
    #[error("unexpected end of statement while looking for matching {0}")]
    UnexpectedEnd(char),
}

/// A word that failed to expand, as upstream reports it:
/// `failed to process "<word>": <reason>`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("failed to process {}: {reason}", quote(.word))]
pub(crate) struct ShellError {
    pub word: String,
    pub reason: ShellErrorKind,
}

/// The result of expanding one word, with the variables it referenced: the
/// `UndefinedVar` lint reports `unmatched` (buildkit `ProcessWordWithMatches`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Expansion {
    pub result: String,
    /// Referenced variables that were set (possibly to "").
    pub matched: BTreeSet<String>,
    /// Referenced variables that were unset.
    pub unmatched: BTreeSet<String>,
}

/// The lexer; its switches are upstream's `Lex` fields.
#[derive(Clone, Debug)]
pub(crate) struct Lexer {
    escape: char,
    /// Keep quote characters in the output (quotes still group words).
    pub raw_quotes: bool,
    /// Keep escape characters in the output.
    pub raw_escapes: bool,
    /// Treat quotes as ordinary characters.
    pub skip_process_quotes: bool,
    /// Leave references to unset variables as written (`$X`, `${X:-y}`).
    pub skip_unset_env: bool,
}

impl Lexer {
    pub(crate) fn new(escape: char) -> Self {
        Self {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_process_quotes: false,
            skip_unset_env: false,
        }
    }

    /// Expands `word` to a single string; spaces are kept.
    pub(crate) fn process_word(&self, word: &str, env: &dyn Env) -> Result<String, ShellError> {
        self.process_word_with_matches(word, env).map(|e| e.result)
    }

    /// Expands `word` and reports which variables it referenced.
    pub(crate) fn process_word_with_matches(
        &self,
        word: &str,
        env: &dyn Env,
    ) -> Result<Expansion, ShellError> {
        let mut sw = ShellWord::new(self, word, env, true);
        let (result, _) = sw.process(word)?;
        Ok(Expansion { result, matched: sw.matched, unmatched: sw.unmatched })
    }

    /// Expands `word` and splits it into words after expansion, honouring
    /// quotes (`a "b c"` is two words); used for EXPOSE and heredoc detection.
    pub(crate) fn process_words(&self, word: &str, env: &dyn Env) -> Result<Vec<String>, ShellError> {
        let mut sw = ShellWord::new(self, word, env, false);
        sw.process(word).map(|(_, words)| words)
    }
}

/// One scan over a word; `words_buf` is shared by nested scans on purpose
/// (see the module comment).
struct ShellWord<'a> {
    lex: &'a Lexer,
    chars: Vec<char>,
    pos: usize,
    env: &'a dyn Env,
    raw_escapes: bool,
    capture: bool,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
    words_buf: String,
}

/// Words completed by one scan; the word in progress lives in `words_buf`.
#[derive(Default)]
struct Words {
    words: Vec<String>,
    in_word: bool,
}

impl<'a> ShellWord<'a> {
    fn new(lex: &'a Lexer, word: &str, env: &'a dyn Env, capture: bool) -> Self {
        // Go's text/scanner skips a byte-order mark at the very start.
        let word = word.strip_prefix('\u{feff}').unwrap_or(word);
        Self {
            lex,
            chars: word.chars().collect(),
            pos: 0,
            env,
            raw_escapes: lex.raw_escapes,
            capture,
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
            words_buf: String::new(),
        }
    }

    fn process(&mut self, source: &str) -> Result<(String, Vec<String>), ShellError> {
        self.process_stop_on(None, self.lex.raw_escapes)
            .map_err(|reason| ShellError { word: source.to_owned(), reason })
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    fn add_char(&mut self, words: &mut Words, c: char) {
        if c.is_whitespace() {
            if words.in_word && !self.words_buf.is_empty() {
                words.words.push(std::mem::take(&mut self.words_buf));
                words.in_word = false;
            }
        } else {
            self.add_raw_char(words, c);
        }
    }

    fn add_raw_char(&mut self, words: &mut Words, c: char) {
        self.words_buf.push(c);
        words.in_word = true;
    }

    fn add_raw_string(&mut self, words: &mut Words, s: &str) {
        self.words_buf.push_str(s);
        words.in_word = true;
    }

    fn finish_words(&mut self, mut words: Words) -> Vec<String> {
        if !self.words_buf.is_empty() {
            words.words.push(std::mem::take(&mut self.words_buf));
        }
        words.words
    }

    /// Scans until `stop` (consumed) or the end of the word.
    fn process_stop_on(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Result<(String, Vec<String>), ShellErrorKind> {
        let saved = std::mem::replace(&mut self.raw_escapes, raw_escapes);
        let result = self.scan(stop);
        self.raw_escapes = saved;
        result
    }

    fn scan(&mut self, stop: Option<char>) -> Result<(String, Vec<String>), ShellErrorKind> {
        let mut result = String::new();
        self.words_buf.clear();
        let mut words = Words::default();
        while let Some(c) = self.peek() {
            if stop == Some(c) {
                self.next();
                return Ok((result, self.finish_words(words)));
            }
            match c {
                '$' => {
                    let value = self.process_dollar()?;
                    result.push_str(&value);
                    for ch in value.chars() {
                        self.add_char(&mut words, ch);
                    }
                }
                '<' => {
                    let value = self.process_possible_heredoc();
                    result.push_str(&value);
                    self.add_raw_string(&mut words, &value);
                }
                '\'' | '"' if !self.lex.skip_process_quotes => {
                    let value =
                        if c == '\'' { self.process_single_quote()? } else { self.process_double_quote()? };
                    result.push_str(&value);
                    self.add_raw_string(&mut words, &value);
                }
                _ => {
                    self.next();
                    if c == self.lex.escape {
                        if self.raw_escapes {
                            self.add_raw_char(&mut words, c);
                            result.push(c);
                        }
                        // An escape at the very end is dropped.
                        let Some(escaped) = self.next() else { break };
                        self.add_raw_char(&mut words, escaped);
                        result.push(escaped);
                    } else {
                        self.add_char(&mut words, c);
                        result.push(c);
                    }
                }
            }
        }
        if let Some(stop) = stop {
            return Err(ShellErrorKind::UnexpectedEnd(stop));
        }
        Ok((result, self.finish_words(words)))
    }

    fn process_single_quote(&mut self) -> Result<String, ShellErrorKind> {
        let mut out = String::new();
        let open = self.next();
        if self.lex.raw_quotes {
            out.extend(open);
        }
        loop {
            match self.next() {
                None => return Err(ShellErrorKind::UnterminatedSingleQuote),
                Some('\'') => {
                    if self.lex.raw_quotes {
                        out.push('\'');
                    }
                    return Ok(out);
                }
                Some(c) => out.push(c),
            }
        }
    }

    fn process_double_quote(&mut self) -> Result<String, ShellErrorKind> {
        let mut out = String::new();
        let open = self.next();
        if self.lex.raw_quotes {
            out.extend(open);
        }
        loop {
            match self.peek() {
                None => return Err(ShellErrorKind::UnterminatedDoubleQuote),
                Some('"') => {
                    self.next();
                    if self.lex.raw_quotes {
                        out.push('"');
                    }
                    return Ok(out);
                }
                Some('$') => out.push_str(&self.process_dollar()?),
                Some(mut c) => {
                    self.next();
                    if c == self.lex.escape {
                        if self.raw_escapes {
                            out.push(c);
                        }
                        match self.peek() {
                            // The loop reports the missing quote.
                            None => continue,
                            // Only these can be escaped inside double quotes.
                            Some(e) if e == '"' || e == '$' || e == self.lex.escape => {
                                self.next();
                                c = e;
                            }
                            Some(_) => {}
                        }
                    }
                    out.push(c);
                }
            }
        }
    }

    fn process_possible_heredoc(&mut self) -> String {
        self.next();
        if self.peek() != Some('<') {
            return "<".to_owned();
        }
        self.next();
        // Whitespace between `<<` and the delimiter stays with the operator.
        let mut out = "<<".to_owned();
        while let Some(c @ (' ' | '\t' | '\r')) = self.peek() {
            out.push(c);
            self.next();
        }
        out
    }

    fn get_env(&mut self, name: &str) -> Option<String> {
        let value = self.env.lookup(name).map(str::to_owned);
        if self.capture {
            if value.is_some() {
                self.matched.insert(name.to_owned());
            } else {
                self.unmatched.insert(name.to_owned());
            }
        }
        value
    }

    fn process_dollar(&mut self) -> Result<String, ShellErrorKind> {
        self.next();
        if self.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".to_owned());
            }
            return Ok(match self.get_env(&name) {
                Some(v) => v,
                None if self.lex.skip_unset_env => format!("${name}"),
                None => String::new(),
            });
        }
        self.next();
        match self.peek() {
            None => return Err(ShellErrorKind::MissingBrace),
            Some('{' | '}' | ':') => return Err(ShellErrorKind::BadSubstitution),
            Some(_) => {}
        }
        let name = self.process_name();
        // Go's scanner returns EOF (-1) here, which prints as U+FFFD.
        let mut modifier = self.next().unwrap_or('\u{fffd}');
        let mut chs = modifier.to_string();
        let mut null_is_unset = false;
        match modifier {
            '}' => Ok(match self.get_env(&name) {
                Some(v) => v,
                None if self.lex.skip_unset_env => format!("${{{name}}}"),
                None => String::new(),
            }),
            ':' | '+' | '-' | '?' | '#' | '%' => {
                if modifier == ':' {
                    null_is_unset = true;
                    modifier = self.next().unwrap_or('\u{fffd}');
                    chs.push(modifier);
                }
                let raw = modifier == '#' || modifier == '%';
                if null_is_unset && raw {
                    return Err(ShellErrorKind::UnsupportedModifier(chs));
                }
                let word = self.stop_on_brace('}', raw, ShellErrorKind::MissingBrace)?;
                let value = self.get_env(&name);
                if self.lex.skip_unset_env && value.is_none() {
                    return Ok(format!("${{{name}{chs}{word}}}"));
                }
                let empty_as_unset =
                    |v: &Option<String>| v.is_none() || (null_is_unset && v.as_deref() == Some(""));
                match modifier {
                    '-' => Ok(if empty_as_unset(&value) { word } else { value.unwrap_or_default() }),
                    '+' => Ok(if empty_as_unset(&value) { String::new() } else { word }),
                    '?' => match value {
                        None => Err(required(name, word, "is not allowed to be unset")),
                        Some(v) if null_is_unset && v.is_empty() => {
                            Err(required(name, word, "is not allowed to be empty"))
                        }
                        Some(v) => Ok(v),
                    },
                    '%' | '#' => {
                        // `%`/`#` remove the shortest match, `%%`/`##` the longest.
                        let (greedy, pattern) = match word.strip_prefix(modifier) {
                            Some(rest) => (true, rest),
                            None => (false, word.as_str()),
                        };
                        let value = value.unwrap_or_default();
                        if modifier == '%' {
                            trim_suffix(pattern, &value, greedy)
                        } else {
                            trim_prefix(pattern, &value, greedy)
                        }
                    }
                    _ => Err(ShellErrorKind::UnsupportedModifier(chs)),
                }
            }
            '/' => {
                let all = self.peek() == Some('/');
                if all {
                    self.next();
                }
                let pattern = self.stop_on_brace('/', true, ShellErrorKind::MissingSlash)?;
                let replacement = self.stop_on_brace('}', true, ShellErrorKind::MissingBrace)?;
                let value = self.get_env(&name);
                if self.lex.skip_unset_env && value.is_none() {
                    return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
                }
                replace(&pattern, &value.unwrap_or_default(), &replacement, all)
            }
            _ => Err(ShellErrorKind::UnsupportedModifier(chs)),
        }
    }

    /// A nested scan up to `stop`; running out of input is reported as `at_end`.
    fn stop_on_brace(
        &mut self,
        stop: char,
        raw_escapes: bool,
        at_end: ShellErrorKind,
    ) -> Result<String, ShellErrorKind> {
        match self.process_stop_on(Some(stop), raw_escapes) {
            Ok((word, _)) => Ok(word),
            Err(_) if self.peek().is_none() => Err(at_end),
            Err(e) => Err(e),
        }
    }

    /// A variable name: letters, digits and `_`; or a run of digits (a
    /// positional parameter); or one special parameter character.
    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if name.is_empty() && is_go_digit(c) {
                while let Some(d) = self.peek().filter(|d| is_go_digit(*d)) {
                    name.push(d);
                    self.next();
                }
                return name;
            }
            if name.is_empty() && matches!(c, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.next();
                return c.to_string();
            }
            if !c.is_alphabetic() && !is_go_digit(c) && c != '_' {
                break;
            }
            name.push(c);
            self.next();
        }
        name
    }
}

fn required(name: String, word: String, default: &str) -> ShellErrorKind {
    let message = if word.is_empty() { default.to_owned() } else { word };
    ShellErrorKind::Required { name, message }
}

/// Go's `unicode.IsDigit` (decimal digits); non-ASCII numerics are
/// approximated by `char::is_numeric`.
fn is_go_digit(c: char) -> bool {
    c.is_ascii_digit() || (!c.is_ascii() && c.is_numeric())
}

// ---- Patterns of `${VAR#p}`, `${VAR%p}` and `${VAR/p/r}` ----
//
// Upstream converts the shell pattern to a Go regexp (leftmost-first
// semantics); a backtracking matcher that explores alternatives in the same
// preference order finds the same match. Failed states are memoised, so the
// search is linear in pattern × text.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tok {
    Star,
    Any,
    Lit(char),
}

fn compile_pattern(pattern: &str) -> Result<Vec<Tok>, ShellErrorKind> {
    let pattern_chars = pattern.strip_prefix('\u{feff}').unwrap_or(pattern);
    let mut chars = pattern_chars.chars().peekable();
    let mut toks = Vec::new();
    while let Some(c) = chars.next() {
        match c {
            '*' => toks.push(Tok::Star),
            '?' => toks.push(Tok::Any),
            '\\' => {
                // `\}` and `\/` only protect the delimiters of `${}`.
                if matches!(chars.peek(), Some('}' | '/')) {
                    continue;
                }
                match chars.next() {
                    Some(e @ ('*' | '?' | '\\')) => toks.push(Tok::Lit(e)),
                    other => {
                        return Err(ShellErrorKind::InvalidPattern {
                            pattern: pattern.to_owned(),
                            escaped: other.unwrap_or('\u{fffd}'),
                        });
                    }
                }
            }
            c => toks.push(Tok::Lit(c)),
        }
    }
    Ok(toks)
}

struct Matcher<'a> {
    toks: &'a [Tok],
    text: &'a [char],
    greedy: bool,
    failed: HashSet<(usize, usize)>,
}

impl<'a> Matcher<'a> {
    fn new(toks: &'a [Tok], text: &'a [char], greedy: bool) -> Self {
        Self { toks, text, greedy, failed: HashSet::new() }
    }

    /// The end of the preferred match starting exactly at `start`.
    fn match_at(&mut self, start: usize) -> Option<usize> {
        let mut stack: Vec<(usize, usize, u8)> = vec![(0, start, 0)];
        while let Some(top) = stack.last_mut() {
            let (pi, ti, alt) = *top;
            if pi == self.toks.len() {
                return Some(ti);
            }
            top.2 += 1;
            let consumable = self.text.get(ti).copied();
            let step = match self.toks[pi] {
                Tok::Lit(c) if alt == 0 && consumable == Some(c) => Some((pi + 1, ti + 1)),
                Tok::Any if alt == 0 && consumable.is_some_and(|c| c != '\n') => Some((pi + 1, ti + 1)),
                Tok::Star if alt < 2 => {
                    let can_consume = consumable.is_some_and(|c| c != '\n');
                    // Greedy stars try consuming one more character first.
                    if (alt == 0) == self.greedy {
                        if can_consume { Some((pi, ti + 1)) } else { continue }
                    } else {
                        Some((pi + 1, ti))
                    }
                }
                _ => None,
            };
            match step {
                Some(state) if !self.failed.contains(&state) => stack.push((state.0, state.1, 0)),
                Some(_) => {}
                None => {
                    self.failed.insert((pi, ti));
                    stack.pop();
                }
            }
        }
        None
    }

    /// The leftmost match at or after `from`.
    fn find(&mut self, from: usize) -> Option<(usize, usize)> {
        (from..=self.text.len()).find_map(|s| self.match_at(s).map(|e| (s, e)))
    }
}

fn trim_prefix(pattern: &str, value: &str, greedy: bool) -> Result<String, ShellErrorKind> {
    let toks = compile_pattern(pattern)?;
    let text: Vec<char> = value.chars().collect();
    Ok(match Matcher::new(&toks, &text, greedy).match_at(0) {
        Some(end) => text[end..].iter().collect(),
        None => value.to_owned(),
    })
}

/// Matching the shortest rightmost suffix is done as a prefix match on the
/// reversed text with the reversed pattern, as upstream does.
fn trim_suffix(pattern: &str, value: &str, greedy: bool) -> Result<String, ShellErrorKind> {
    let reversed: String = value.chars().rev().collect();
    let trimmed = trim_prefix(&reverse_pattern(pattern), &reversed, greedy)?;
    Ok(trimmed.chars().rev().collect())
}

/// Reverses a pattern but keeps each `\x` escape pair in order.
fn reverse_pattern(pattern: &str) -> String {
    let p: Vec<char> = pattern.chars().collect();
    let mut out = p.clone();
    let Some(last) = p.len().checked_sub(1) else { return String::new() };
    let mut i = 0;
    while i <= last {
        let out_idx = last - i;
        if p[i] == '\\' && i != last {
            out[out_idx - 1] = '\\';
            out[out_idx] = p[i + 1];
            i += 2;
        } else {
            out[out_idx] = p[i];
            i += 1;
        }
    }
    out.into_iter().collect()
}

fn replace(pattern: &str, value: &str, replacement: &str, all: bool) -> Result<String, ShellErrorKind> {
    let toks = compile_pattern(pattern)?;
    let text: Vec<char> = value.chars().collect();
    let mut matcher = Matcher::new(&toks, &text, true);
    if !all {
        return Ok(match matcher.find(0) {
            Some((s, e)) => {
                let mut out: String = text[..s].iter().collect();
                out.push_str(replacement);
                out.extend(&text[e..]);
                out
            }
            None => value.to_owned(),
        });
    }
    // Go's Regexp.ReplaceAllString: an empty match right after a previous
    // match is not replaced, and the search always advances.
    let mut out = String::new();
    let (mut last_end, mut search) = (0, 0);
    while search <= text.len() {
        let Some((s, e)) = matcher.find(search) else { break };
        out.extend(&text[last_end..s]);
        if e > last_end || s == 0 {
            expand_template(&mut out, replacement, &text[s..e]);
        }
        last_end = e;
        search = if search + 1 > e { search + 1 } else { e };
    }
    out.extend(&text[last_end..]);
    Ok(out)
}

/// Go's `Regexp.Expand` for a pattern without capture groups: `$$` is `$`,
/// `$0`/`${0}` the match, any other valid reference empty, and a malformed
/// one a literal `$`.
fn expand_template(out: &mut String, template: &str, whole: &[char]) {
    let mut rest = template;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        rest = &rest[dollar + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
            continue;
        }
        let (braced, body) = match rest.strip_prefix('{') {
            Some(b) => (true, b),
            None => (false, rest),
        };
        let name_len: usize = body
            .chars()
            .take_while(|c| c.is_alphabetic() || is_go_digit(*c) || *c == '_')
            .map(char::len_utf8)
            .sum();
        let closed = !braced || body[name_len..].starts_with('}');
        if name_len == 0 || !closed {
            out.push('$');
            continue;
        }
        if &body[..name_len] == "0" {
            out.extend(whole);
        }
        rest = &body[name_len + usize::from(braced)..];
    }
    out.push_str(rest);
}

#[cfg(test)]
mod tests;
