//! The two kinds of pattern a file op uses: Go `filepath.Match` globs for
//! wildcard sources and `rm` paths, and dockerignore-style include/exclude
//! lists for copies (moby/patternmatcher, as fsutil's copier uses it).

use crate::util::gopath;

/// One element of a compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Char(char),
    /// `*`: any run of characters but `/`.
    Star,
    /// `?`: one character but `/`.
    AnyChar,
    /// `[...]`: one character in (or, negated, not in) the ranges.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    /// `**/` inside a list pattern: any number of whole leading directories.
    AnyDirs,
    /// `**` ending a list pattern: anything at all.
    AnyTail,
}

/// Parses the inside of a `[...]` starting after `[`; returns the token and
/// the index after `]`. `None` for a malformed class (Go's `ErrBadPattern`).
fn parse_class(p: &[char], mut i: usize) -> Option<(Token, usize)> {
    let negated = p.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    loop {
        if p.get(i) == Some(&']') && !ranges.is_empty() {
            return Some((Token::Class { negated, ranges }, i + 1));
        }
        let (lo, next) = class_char(p, i)?;
        i = next;
        let mut hi = lo;
        if p.get(i) == Some(&'-') {
            (hi, i) = class_char(p, i + 1)?;
        }
        ranges.push((lo, hi));
    }
}

/// One possibly escaped character of a class; a bare `-` or `]` is malformed.
fn class_char(p: &[char], i: usize) -> Option<(char, usize)> {
    match p.get(i)? {
        '-' | ']' => None,
        '\\' => Some((*p.get(i + 1)?, i + 2)),
        c => Some((*c, i + 1)),
    }
}

fn class_matches(negated: bool, ranges: &[(char, char)], c: char) -> bool {
    ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != negated
}

fn match_tokens(tokens: &[Token], name: &[char]) -> bool {
    let Some((first, rest)) = tokens.split_first() else {
        return name.is_empty();
    };
    match first {
        Token::Char(c) => name.first() == Some(c) && match_tokens(rest, &name[1..]),
        Token::AnyChar => name.first().is_some_and(|c| *c != '/') && match_tokens(rest, &name[1..]),
        Token::Class { negated, ranges } => {
            name.first().is_some_and(|c| class_matches(*negated, ranges, *c))
                && match_tokens(rest, &name[1..])
        }
        Token::Star => {
            for k in 0..=name.len() {
                if match_tokens(rest, &name[k..]) {
                    return true;
                }
                if name.get(k) == Some(&'/') {
                    break;
                }
            }
            false
        }
        Token::AnyDirs => {
            // Nothing, or any prefix that ends with `/`.
            match_tokens(rest, name)
                || (0..name.len()).any(|k| name[k] == '/' && match_tokens(rest, &name[k + 1..]))
        }
        Token::AnyTail => true,
    }
}

/// A Go `filepath.Match` pattern. Malformed patterns match nothing, as
/// fsutil ignores `filepath.Match`'s error when it resolves wildcards.
#[derive(Debug, Clone)]
pub(super) struct Glob {
    tokens: Option<Vec<Token>>,
}

impl Glob {
    pub(super) fn new(pattern: &str) -> Self {
        Self { tokens: glob_tokens(pattern) }
    }

    pub(super) fn matches(&self, name: &str) -> bool {
        let name: Vec<char> = name.chars().collect();
        self.tokens.as_deref().is_some_and(|t| match_tokens(t, &name))
    }
}

fn glob_tokens(pattern: &str) -> Option<Vec<Token>> {
    let p: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '*' => {
                if tokens.last() != Some(&Token::Star) {
                    tokens.push(Token::Star);
                }
                i += 1;
            }
            '?' => {
                tokens.push(Token::AnyChar);
                i += 1;
            }
            '[' => {
                let (t, next) = parse_class(&p, i + 1)?;
                tokens.push(t);
                i = next;
            }
            '\\' => {
                tokens.push(Token::Char(*p.get(i + 1)?));
                i += 2;
            }
            c => {
                tokens.push(Token::Char(c));
                i += 1;
            }
        }
    }
    Some(tokens)
}

/// How a list pattern compares with a path (patternmatcher's match types).
#[derive(Debug, Clone)]
enum Matcher {
    Exact(String),
    /// `dir/**`: the path starts with the text before `**`.
    Prefix(String),
    /// `**/name`: the path ends with the text after `**`.
    Suffix(String),
    Tokens(Vec<Token>),
}

#[derive(Debug, Clone)]
struct ListPattern {
    matcher: Matcher,
    exclusion: bool,
}

impl ListPattern {
    fn matches(&self, path: &str) -> bool {
        match &self.matcher {
            Matcher::Exact(p) => path == p,
            Matcher::Prefix(p) => path.starts_with(p.as_str()),
            Matcher::Suffix(s) => {
                path.ends_with(s.as_str()) || s.strip_prefix('/').is_some_and(|s| path == s)
            }
            Matcher::Tokens(t) => {
                let chars: Vec<char> = path.chars().collect();
                match_tokens(t, &chars)
            }
        }
    }
}

/// Compiles one cleaned list pattern; `None` when it is malformed.
fn compile(pattern: &str) -> Option<Matcher> {
    let p: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::new();
    let mut exact = true;
    let mut suffix = false;
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '*' if p.get(i + 1) == Some(&'*') => {
                let start = i;
                i += 2;
                if p.get(i) == Some(&'/') {
                    i += 1;
                }
                if i == p.len() {
                    if exact {
                        return Some(if start == 0 {
                            Matcher::Suffix(String::new())
                        } else {
                            Matcher::Prefix(p[..start].iter().collect())
                        });
                    }
                    tokens.push(Token::AnyTail);
                } else {
                    tokens.push(Token::AnyDirs);
                }
                exact = false;
                suffix = start == 0;
            }
            '*' => {
                tokens.push(Token::Star);
                exact = false;
                suffix = false;
                i += 1;
            }
            '?' => {
                tokens.push(Token::AnyChar);
                exact = false;
                suffix = false;
                i += 1;
            }
            '[' => {
                let (t, next) = parse_class(&p, i + 1)?;
                tokens.push(t);
                exact = false;
                suffix = false;
                i = next;
            }
            '\\' => {
                tokens.push(Token::Char(*p.get(i + 1)?));
                exact = false;
                suffix = false;
                i += 2;
            }
            c => {
                tokens.push(Token::Char(c));
                i += 1;
            }
        }
    }
    Some(if exact {
        Matcher::Exact(pattern.to_owned())
    } else if suffix {
        Matcher::Suffix(pattern[2..].to_owned())
    } else {
        Matcher::Tokens(tokens)
    })
}

/// An include or exclude list: a path is in it when the last pattern that
/// matches it (or one of its parent directories) is not a `!` exception.
#[derive(Debug, Clone)]
pub(super) struct PatternList {
    patterns: Vec<ListPattern>,
    exclusions: bool,
}

/// Why a pattern list was refused.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct BadPattern {
    pub(super) pattern: String,
    pub(super) reason: &'static str,
}

impl PatternList {
    /// `None` for an empty list: no filtering at all.
    pub(super) fn new(patterns: &[String]) -> Result<Option<Self>, BadPattern> {
        if patterns.is_empty() {
            return Ok(None);
        }
        let mut list = Self { patterns: Vec::new(), exclusions: false };
        for raw in patterns {
            let trimmed = raw.trim();
            if trimmed.is_empty() {
                continue;
            }
            let cleaned = gopath::clean(trimmed);
            let (exclusion, body) = match cleaned.strip_prefix('!') {
                Some("") => {
                    return Err(BadPattern { pattern: raw.clone(), reason: "illegal exclusion pattern" });
                }
                Some(rest) => (true, rest.to_owned()),
                None => (false, cleaned),
            };
            let matcher = compile(&body)
                .ok_or_else(|| BadPattern { pattern: raw.clone(), reason: "syntax error in pattern" })?;
            list.exclusions |= exclusion;
            list.patterns.push(ListPattern { matcher, exclusion });
        }
        Ok(Some(list))
    }

    /// Whether any pattern is a `!` exception, so excluded directories must
    /// still be walked for exceptions below them.
    pub(super) fn has_exclusions(&self) -> bool {
        self.exclusions
    }

    /// Whether `path` (relative, `/`-separated) is in the list. `parent` is
    /// what this call returned for the parent directory (`None` at the top
    /// of a walk); the second value is the same for `path`'s children.
    pub(super) fn matches(&self, path: &str, parent: Option<&[bool]>) -> (bool, Vec<bool>) {
        let mut matched = false;
        let mut info = vec![false; self.patterns.len()];
        for (i, pattern) in self.patterns.iter().enumerate() {
            let mut hit = parent.is_some_and(|p| p.get(i).copied().unwrap_or(false));
            if !hit {
                // An include cannot change a match already made, nor an
                // exception a miss.
                if pattern.exclusion != matched {
                    continue;
                }
                hit = pattern.matches(path);
                if !hit && parent.is_none() {
                    hit = parent_dirs(path).any(|dir| pattern.matches(dir));
                }
            }
            info[i] = hit;
            if hit {
                matched = !pattern.exclusion;
            }
        }
        (matched, info)
    }
}

/// `a`, `a/b` for `a/b/c`.
fn parent_dirs(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_go_filepath_match() {
        let cases: &[(&str, &str, bool)] = &[
            ("*.txt", "a.txt", true),
            ("*.txt", "dir/a.txt", false),
            ("a?c", "abc", true),
            ("a?c", "a/c", false),
            ("[a-c]x", "bx", true),
            ("[^a-c]x", "bx", false),
            ("[^a-c]x", "dx", true),
            ("d*/f*", "dir/file", true),
            ("\\*", "*", true),
            ("\\*", "a", false),
            ("[", "[", false),
            ("[]a]", "a", false),
            ("[z-a]", "m", false),
            ("*", "", true),
        ];
        for (pattern, name, want) in cases {
            assert_eq!(Glob::new(pattern).matches(name), *want, "{pattern} vs {name}");
        }
    }

    fn list(patterns: &[&str]) -> PatternList {
        PatternList::new(&patterns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap().unwrap()
    }

    /// Walks `paths` in order the way the copier does, handing each child
    /// its parent's results.
    fn walk(list: &PatternList, paths: &[&str]) -> Vec<bool> {
        let mut infos: std::collections::HashMap<String, Vec<bool>> = Default::default();
        paths
            .iter()
            .map(|p| {
                let parent = p.rfind('/').map(|i| &p[..i]);
                let (m, info) = list.matches(p, parent.and_then(|d| infos.get(d)).map(|v| v.as_slice()));
                infos.insert(p.to_string(), info);
                m
            })
            .collect()
    }

    #[test]
    fn lists_follow_dockerignore_rules() {
        let l = list(&["*.md", "!README.md"]);
        assert_eq!(walk(&l, &["a.md", "README.md", "b.txt"]), [true, false, false]);

        let l = list(&["build", "!build/keep"]);
        assert_eq!(walk(&l, &["build", "build/x", "build/keep", "build/keep/y"]), [true, true, false, false]);

        let l = list(&["**/*.go"]);
        assert_eq!(walk(&l, &["a.go", "x", "x/y", "x/y/b.go", "x/c.rs"]), [true, false, false, true, false]);

        let l = list(&["docs/**"]);
        assert_eq!(walk(&l, &["docs", "docs/a", "doc"]), [false, true, false]);

        let l = list(&["**/node_modules"]);
        assert_eq!(
            walk(&l, &["node_modules", "a", "a/node_modules", "a/node_modules/x"]),
            [true, false, true, true]
        );

        let l = list(&["./src/../lib/*.rs"]);
        assert_eq!(walk(&l, &["lib", "lib/a.rs", "lib/a.c"]), [false, true, false]);

        let l = list(&["a/*/c"]);
        assert_eq!(walk(&l, &["a", "a/b", "a/b/c", "a/b/d", "a/b/c/e"]), [false, false, true, false, true]);
        assert!(!l.has_exclusions());
        assert!(list(&["x", "!y"]).has_exclusions());
    }

    #[test]
    fn bad_lists_are_refused_and_empty_lists_filter_nothing() {
        assert!(PatternList::new(&[]).unwrap().is_none());
        assert!(PatternList::new(&["!".to_owned()]).is_err());
        assert!(PatternList::new(&["a[".to_owned()]).is_err());
        assert!(PatternList::new(&["a\\".to_owned()]).is_err());
        assert!(PatternList::new(&["[]a]".to_owned()]).is_err());
        // Blank entries are dropped but the list still filters: it includes nothing.
        let blank = PatternList::new(&["  ".to_owned()]).unwrap().unwrap();
        assert!(!blank.matches("a", None).0);
    }
}
