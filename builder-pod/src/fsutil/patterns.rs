//! dockerignore-style path patterns, as moby/patternmatcher evaluates them:
//! `.dockerignore`, the include/exclude filters of a FileSync upload
//! (docs/protocol.md §4.1) and `COPY --exclude`.
//!
//! A pattern is cleaned like Go's `filepath.Clean`, then matched against a
//! clean, `/`-separated relative path. `*` and `?` never cross a `/`, `**`
//! spans any number of directories, `[...]` is a character class (`^`
//! negates it), `\` escapes the next character, and a leading `!` turns the
//! pattern into an exception. Patterns apply in order, so a later pattern
//! overrides an earlier one; a path also matches when one of its parent
//! directories matches (`MatchesOrParentMatches` upstream).

use std::fmt;

use crate::util::gopath;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatternError {
    #[error("illegal exclusion pattern: \"!\"")]
    LoneExclamation,
    #[error("invalid pattern {pattern:?}: {reason}")]
    Syntax { pattern: String, reason: &'static str },
}

/// An ordered list of patterns, some of them `!` exceptions.
#[derive(Debug, Clone, Default)]
pub(crate) struct PatternMatcher {
    patterns: Vec<Pattern>,
    exclusions: bool,
}

/// One cleaned pattern.
#[derive(Clone)]
pub(crate) struct Pattern {
    cleaned: String,
    exclusion: bool,
    kind: Kind,
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bang = if self.exclusion { "!" } else { "" };
        write!(f, "Pattern({bang}{})", self.cleaned)
    }
}

/// The cheap special cases upstream detects before falling back to a full
/// automaton (`patternmatcher.go`, `compile`).
#[derive(Clone)]
enum Kind {
    Exact,
    /// A literal pattern ending in `**`: the text before the `**`.
    Prefix(String),
    /// A pattern starting with `**`: the text after the `**`.
    Suffix(String),
    Program(Program),
}

/// Whether each pattern matched a directory or one of its parents, carried
/// down a walk so a child is tested against its own path only.
#[derive(Debug, Clone, Default)]
pub(crate) struct MatchInfo {
    matched: Vec<bool>,
}

impl PatternMatcher {
    /// Compiles `patterns`; blank ones are skipped. A syntax error (an open
    /// `[`, a trailing `\`, a lone `!`) is reported here, never at match time.
    pub(crate) fn new<I, S>(patterns: I) -> Result<Self, PatternError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out = Self::default();
        for raw in patterns {
            let trimmed = raw.as_ref().trim();
            if trimmed.is_empty() {
                continue;
            }
            // Upstream cleans before it strips the `!`, so `!./a` keeps its `./`.
            let cleaned = gopath::clean(trimmed);
            let (exclusion, text) = match cleaned.strip_prefix('!') {
                Some("") => return Err(PatternError::LoneExclamation),
                Some(rest) => (true, rest.to_owned()),
                None => (false, cleaned),
            };
            out.exclusions |= exclusion;
            let kind = compile_kind(&text)?;
            out.patterns.push(Pattern { cleaned: text, exclusion, kind });
        }
        Ok(out)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    pub(crate) fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// Whether any pattern is a `!` exception.
    pub(crate) fn has_exclusions(&self) -> bool {
        self.exclusions
    }

    /// Whether `path` (clean, relative, `/`-separated) or one of its parent
    /// directories is matched, after every exception has been applied.
    pub(crate) fn matches_or_parent_matches(&self, path: &str) -> bool {
        let mut matched = false;
        for pattern in &self.patterns {
            // An include can only change an unmatched path, an exception only a matched one.
            if pattern.exclusion != matched {
                continue;
            }
            if pattern.matches(path) || ancestors(path).any(|dir| pattern.matches(dir)) {
                matched = !pattern.exclusion;
            }
        }
        matched
    }

    /// Same answer as [`Self::matches_or_parent_matches`], but the parent
    /// directories' results come from `parent` (`None` for a top-level path),
    /// so a walk tests each pattern once per entry. The returned info is what
    /// the children of `path` need.
    pub(crate) fn matches_with_parent(&self, path: &str, parent: Option<&MatchInfo>) -> (bool, MatchInfo) {
        let parent_matched = |i: usize| parent.and_then(|p| p.matched.get(i)).copied().unwrap_or(false);
        let info = MatchInfo {
            matched: self
                .patterns
                .iter()
                .enumerate()
                .map(|(i, pattern)| parent_matched(i) || pattern.matches(path))
                .collect(),
        };
        let mut matched = false;
        for (pattern, hit) in self.patterns.iter().zip(&info.matched) {
            if pattern.exclusion == matched && *hit {
                matched = !pattern.exclusion;
            }
        }
        (matched, info)
    }
}

impl Pattern {
    /// The cleaned pattern, without its leading `!`.
    pub(crate) fn as_str(&self) -> &str {
        &self.cleaned
    }

    pub(crate) fn is_exclusion(&self) -> bool {
        self.exclusion
    }

    /// Whether this single pattern matches `path` itself.
    pub(crate) fn matches(&self, path: &str) -> bool {
        match &self.kind {
            Kind::Exact => path == self.cleaned,
            Kind::Prefix(prefix) => path.starts_with(prefix.as_str()),
            Kind::Suffix(suffix) => {
                // `**/foo` also matches a top-level `foo`.
                path.ends_with(suffix.as_str()) || suffix.strip_prefix('/').is_some_and(|s| s == path)
            }
            Kind::Program(program) => program.matches(path),
        }
    }
}

/// `a/b/c` → `a`, `a/b`: every parent directory of a relative path.
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i]).filter(|dir| !dir.is_empty())
}

/// The patterns of a `.dockerignore` file (moby/patternmatcher
/// `ignorefile.ReadAll`): `#` comments and blank lines dropped, each pattern
/// trimmed and cleaned, a leading `/` removed so `/a` and `a` are the same.
pub(crate) fn parse_ignore_file(content: &str) -> Vec<String> {
    let content = content.strip_prefix('\u{feff}').unwrap_or(content);
    let mut out = Vec::new();
    for line in content.lines() {
        if line.starts_with('#') {
            continue;
        }
        let mut pattern = line.trim();
        if pattern.is_empty() {
            continue;
        }
        let invert = pattern.starts_with('!');
        if invert {
            pattern = pattern[1..].trim();
        }
        let mut cleaned = String::new();
        if !pattern.is_empty() {
            cleaned = gopath::clean(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
        }
        out.push(if invert { format!("!{cleaned}") } else { cleaned });
    }
    out
}

/// Whether a single path component uses `*`, `?` or `[` (an escaped one does
/// not count), as fsutil's `followlinks.go` decides.
pub(crate) fn contains_wildcards(name: &str) -> bool {
    let mut chars = name.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '*' | '?' | '[' => return true,
            _ => {}
        }
    }
    false
}

/// Go's `filepath.Match` for one path component, used to expand wildcards
/// in followpaths.
pub(crate) fn match_name(pattern: &str, name: &str) -> Result<bool, PatternError> {
    Ok(compile(pattern, Flavor::FilepathMatch)?.1.matches(name))
}

fn compile_kind(pattern: &str) -> Result<Kind, PatternError> {
    let (kind, program) = compile(pattern, Flavor::Ignore)?;
    Ok(match kind {
        Detected::Exact => Kind::Exact,
        Detected::Prefix => Kind::Prefix(pattern[..pattern.len() - 2].to_owned()),
        Detected::Suffix => Kind::Suffix(pattern[2..].to_owned()),
        Detected::Program => Kind::Program(program),
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    /// patternmatcher: `**` crosses directories.
    Ignore,
    /// `filepath.Match`: `**` is just two stars.
    FilepathMatch,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Detected {
    Exact,
    Prefix,
    Suffix,
    Program,
}

/// One instruction of a Thompson automaton; matching simulates all threads
/// at once, so time is linear in path length times pattern length.
#[derive(Clone, Debug)]
enum Inst {
    Char(char),
    NotSlash,
    /// Go's regexp `.`, which stops at a newline.
    NotNewline,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    Split(usize, usize),
    Jump(usize),
    Accept,
}

#[derive(Clone, Debug, Default)]
struct Program {
    insts: Vec<Inst>,
}

fn syntax(pattern: &str, reason: &'static str) -> PatternError {
    PatternError::Syntax { pattern: pattern.to_owned(), reason }
}

/// Translates a pattern the way patternmatcher builds its regexp: `*` is
/// `[^/]*`, `?` is `[^/]`, `**/` is `(.*/)?`, a trailing `**` is `.*`.
/// Unlike the regexp route, a `^` outside a class is an ordinary character,
/// as `filepath.Match` (which upstream uses to validate) treats it.
fn compile(pattern: &str, flavor: Flavor) -> Result<(Detected, Program), PatternError> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut prog = Program::default();
    let mut detected = Detected::Exact;
    let mut i = 0;
    let mut first = true;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '*' if flavor == Flavor::Ignore && chars.get(i) == Some(&'*') => {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                if i == chars.len() {
                    if detected == Detected::Exact {
                        detected = Detected::Prefix;
                    } else {
                        prog.star(Inst::NotNewline);
                        detected = Detected::Program;
                    }
                } else {
                    prog.any_dirs();
                    detected = Detected::Program;
                }
                if first {
                    detected = Detected::Suffix;
                }
            }
            '*' => {
                prog.star(Inst::NotSlash);
                detected = Detected::Program;
            }
            '?' => {
                prog.insts.push(Inst::NotSlash);
                detected = Detected::Program;
            }
            '\\' => {
                let escaped = *chars.get(i).ok_or_else(|| syntax(pattern, "trailing backslash"))?;
                i += 1;
                prog.insts.push(Inst::Char(escaped));
                detected = Detected::Program;
            }
            '[' => {
                let (class, next) = parse_class(pattern, &chars, i, flavor)?;
                i = next;
                prog.insts.push(class);
                detected = Detected::Program;
            }
            ']' => {
                prog.insts.push(Inst::Char(']'));
                detected = Detected::Program;
            }
            other => prog.insts.push(Inst::Char(other)),
        }
        first = false;
    }
    prog.insts.push(Inst::Accept);
    Ok((detected, prog))
}

/// Parses a class body starting after `[` with `filepath.Match`'s grammar:
/// an optional `^`, then characters or ranges; an unescaped `-` or `]` can't
/// be an endpoint, and the class must close.
fn parse_class(
    pattern: &str,
    chars: &[char],
    mut i: usize,
    flavor: Flavor,
) -> Result<(Inst, usize), PatternError> {
    let negated = chars.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    loop {
        if chars.get(i) == Some(&']') && !ranges.is_empty() {
            i += 1;
            break;
        }
        let (lo, next) = class_char(pattern, chars, i)?;
        i = next;
        let mut hi = lo;
        if chars.get(i) == Some(&'-') {
            (hi, i) = class_char(pattern, chars, i + 1)?;
        }
        if hi < lo {
            return Err(syntax(pattern, "character class range is out of order"));
        }
        ranges.push((lo, hi));
    }
    // filepath.Match never lets a negated class match the separator; the
    // regexp patternmatcher builds does.
    if negated && flavor == Flavor::FilepathMatch {
        ranges.push(('/', '/'));
    }
    Ok((Inst::Class { negated, ranges }, i))
}

fn class_char(pattern: &str, chars: &[char], mut i: usize) -> Result<(char, usize), PatternError> {
    let unclosed = || syntax(pattern, "character class is not closed");
    match chars.get(i) {
        None => return Err(unclosed()),
        Some('-') | Some(']') => return Err(syntax(pattern, "character class needs a character here")),
        Some('\\') => i += 1,
        Some(_) => {}
    }
    let c = *chars.get(i).ok_or_else(unclosed)?;
    i += 1;
    if i >= chars.len() {
        return Err(unclosed());
    }
    Ok((c, i))
}

impl Program {
    /// `x*`: loop over `x` zero or more times.
    fn star(&mut self, one: Inst) {
        let start = self.insts.len();
        self.insts.push(Inst::Split(start + 1, start + 3));
        self.insts.push(one);
        self.insts.push(Inst::Jump(start));
    }

    /// `(.*/)?`: nothing, or anything up to and including a `/`.
    fn any_dirs(&mut self) {
        let start = self.insts.len();
        let end = start + 5;
        self.insts.push(Inst::Split(start + 1, end));
        self.insts.push(Inst::Split(start + 2, start + 4));
        self.insts.push(Inst::NotNewline);
        self.insts.push(Inst::Jump(start + 1));
        self.insts.push(Inst::Char('/'));
    }

    fn matches(&self, input: &str) -> bool {
        let n = self.insts.len();
        let mut current = Vec::with_capacity(n);
        let mut next = Vec::with_capacity(n);
        let mut seen = vec![usize::MAX; n];
        let mut stack = Vec::new();
        self.add(&mut current, &mut seen, 0, 0, &mut stack);
        for (step, c) in input.chars().enumerate() {
            next.clear();
            for &pc in &current {
                let advance = match &self.insts[pc] {
                    Inst::Char(want) => *want == c,
                    Inst::NotSlash => c != '/',
                    Inst::NotNewline => c != '\n',
                    Inst::Class { negated, ranges } => {
                        ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negated
                    }
                    Inst::Split(..) | Inst::Jump(_) | Inst::Accept => false,
                };
                if advance {
                    self.add(&mut next, &mut seen, pc + 1, step + 1, &mut stack);
                }
            }
            std::mem::swap(&mut current, &mut next);
            if current.is_empty() {
                return false;
            }
        }
        current.iter().any(|&pc| matches!(self.insts[pc], Inst::Accept))
    }

    /// Adds `pc` and everything reachable from it without consuming input.
    fn add(
        &self,
        list: &mut Vec<usize>,
        seen: &mut [usize],
        pc: usize,
        generation: usize,
        stack: &mut Vec<usize>,
    ) {
        stack.push(pc);
        while let Some(pc) = stack.pop() {
            if seen[pc] == generation {
                continue;
            }
            seen[pc] = generation;
            match self.insts[pc] {
                Inst::Split(a, b) => {
                    stack.push(b);
                    stack.push(a);
                }
                Inst::Jump(to) => stack.push(to),
                _ => list.push(pc),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (patterns, path, expected) with MatchesOrParentMatches semantics.
    const CASES: &[(&[&str], &str, bool)] = &[
        (&["fileutils.go"], "fileutils.go", true),
        (&["*.go"], "fileutils.go", true),
        (&["*.go"], "sub/fileutils.go", false),
        (&["**/*.go"], "sub/fileutils.go", true),
        (&["**/*.go"], "fileutils.go", true),
        (&["**"], "anything/at/all", true),
        (&["**/foo"], "foo", true),
        (&["**/foo"], "a/b/foo", true),
        (&["**/foo"], "a/bfoo", false),
        (&["**/foo"], "foo/bar", true),
        (&["foo/**"], "foo/bar/baz", true),
        (&["foo/**"], "foobar", false),
        (&["foo/**/bar"], "foo/bar", true),
        (&["foo/**/bar"], "foo/x/y/bar", true),
        (&["foo/**/bar"], "foo/xbar", false),
        (&["a**b"], "a/x/b", true),
        (&["a**b"], "axb", false),
        (&["foo"], "foo/bar/baz", true),
        (&["foo/bar"], "foo", false),
        (&["f?o"], "foo", true),
        (&["f?o"], "f/o", false),
        (&["f*"], "f/o", true),
        (&["*"], "a/b", true),
        (&["[abc]x"], "bx", true),
        (&["[abc]x"], "dx", false),
        (&["[a-c]x"], "cx", true),
        (&["[^a-c]x"], "dx", true),
        (&["[^a-c]x"], "ax", false),
        (&["[\\]]"], "]", true),
        (&["a\\*b"], "a*b", true),
        (&["a\\*b"], "axb", false),
        (&["a.b"], "a.b", true),
        (&["a.b"], "axb", false),
        (&["a+(b)|{c}$"], "a+(b)|{c}$", true),
        (&["./foo"], "foo", true),
        (&["foo/"], "foo", true),
        (&["foo//bar/../baz"], "foo/baz", true),
        (&["/foo"], "foo", false),
        (&["  *.md  "], "README.md", true),
        (&["*.md", "!README.md"], "README.md", false),
        (&["*.md", "!README.md"], "CHANGES.md", true),
        (&["*.md", "!README.md", "README.md"], "README.md", true),
        (&["!README.md", "*.md"], "README.md", true),
        (&["docs", "!docs/keep.md"], "docs/keep.md", false),
        (&["docs", "!docs/keep.md"], "docs/other.md", true),
        (&["docs", "!docs/keep"], "docs/keep/inner.md", false),
        (&["a/b", "!a"], "a/b", false),
        (&["*", "!keep", "keep/drop"], "keep/drop/x", true),
        (&["*", "!keep", "keep/drop"], "keep/other", false),
        (&["dir/*/file"], "dir/sub/file", true),
        (&["dir/*/file"], "dir/a/b/file", false),
        (&["héllo*"], "héllo wörld", true),
        (&["??"], "é!", true),
        (&[], "anything", false),
    ];

    #[test]
    fn table_of_patterns_matches_like_patternmatcher() {
        for (patterns, path, want) in CASES {
            let matcher = PatternMatcher::new(patterns.iter()).unwrap();
            assert_eq!(matcher.matches_or_parent_matches(path), *want, "patterns {patterns:?} on {path:?}");
        }
    }

    #[test]
    fn walking_with_parent_results_agrees_with_the_direct_answer() {
        for (patterns, path, want) in CASES {
            let matcher = PatternMatcher::new(patterns.iter()).unwrap();
            let mut info: Option<MatchInfo> = None;
            let mut prefix = String::new();
            let mut last = false;
            for part in path.split('/') {
                if !prefix.is_empty() {
                    prefix.push('/');
                }
                prefix.push_str(part);
                let (m, next) = matcher.matches_with_parent(&prefix, info.as_ref());
                last = m;
                info = Some(next);
            }
            assert_eq!(last, *want, "patterns {patterns:?} on {path:?}");
        }
    }

    #[test]
    fn bad_patterns_are_rejected_when_compiled() {
        for bad in ["[", "a[", "[a", "[]", "[^]", "a\\", "[z-a]", "[-a]", "[a-]", "!"] {
            assert!(PatternMatcher::new([bad]).is_err(), "{bad:?} should be rejected");
        }
        let err = PatternMatcher::new(["!"]).unwrap_err().to_string();
        assert_eq!(err, "illegal exclusion pattern: \"!\"");
        let err = PatternMatcher::new(["src/[ab"]).unwrap_err().to_string();
        assert!(err.contains("src/[ab") && err.contains("not closed"), "{err}");
    }

    #[test]
    fn exceptions_and_pattern_text_are_reported() {
        let m = PatternMatcher::new(["a/./b/", "", "!c/**"]).unwrap();
        assert!(m.has_exclusions());
        let texts: Vec<_> = m.patterns().iter().map(|p| (p.as_str(), p.is_exclusion())).collect();
        assert_eq!(texts, [("a/b", false), ("c/**", true)]);
        assert!(!PatternMatcher::new(["x"]).unwrap().has_exclusions());
    }

    #[test]
    fn dockerignore_files_are_parsed_like_ignorefile() {
        let content =
            "\u{feff}# comment\n\n  node_modules  \n/abs/path\n! keep/me/\n*.log\r\n #not a comment\n/\n";
        assert_eq!(
            parse_ignore_file(content),
            ["node_modules", "abs/path", "!keep/me", "*.log", "#not a comment", "/"]
        );
    }

    #[test]
    fn name_globs_follow_filepath_match() {
        assert!(match_name("*.txt", "a.txt").unwrap());
        assert!(match_name("a**b", "axxb").unwrap());
        assert!(!match_name("[^a]", "/").unwrap());
        assert!(match_name("[!a]", "!").unwrap());
        assert!(match_name("[", "x").is_err());
        assert!(contains_wildcards("a*"));
        assert!(!contains_wildcards("a\\*"));
        assert!(contains_wildcards("[ab]"));
    }

    #[test]
    fn long_paths_and_many_stars_stay_linear() {
        let matcher = PatternMatcher::new(["**/*a*a*a*a*a*a*a*a*b"]).unwrap();
        let path = "a".repeat(10_000);
        assert!(!matcher.matches_or_parent_matches(&path));
    }
}
