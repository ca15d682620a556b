//! Go's `path` package (slash-separated paths, whatever the host) and the two
//! normalisations BuildKit builds on it: paths in LLB, in Dockerfile
//! instructions and on fsutil's wire are cleaned this way upstream, and the
//! cleaned text ends up in cache keys and messages.

/// `path.Clean`: the shortest path equivalent to `p` by purely lexical
/// processing. Doubled slashes and `.` elements go, an inner `..` takes the
/// element before it, a `..` at the start of a rooted path goes, and the
/// result ends in a slash only when it is `/`. An empty result is `.`.
pub(crate) fn clean(p: &str) -> String {
    if p.is_empty() {
        return ".".to_owned();
    }
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|last| *last != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

/// `path.Join`: the non-empty elements joined with `/`, then cleaned; empty
/// when every element is empty. `join(&["/", p])` is `p` made absolute, with
/// no way to climb above the root.
pub(crate) fn join(parts: &[&str]) -> String {
    let joined = parts.iter().filter(|p| !p.is_empty()).copied().collect::<Vec<_>>().join("/");
    if joined.is_empty() { String::new() } else { clean(&joined) }
}

/// `path.Base`: the last element, trailing slashes removed first; `.` for an
/// empty path and `/` for one made only of slashes.
pub(crate) fn base(p: &str) -> &str {
    if p.is_empty() {
        return ".";
    }
    let trimmed = p.trim_end_matches('/');
    if trimmed.is_empty() {
        return "/";
    }
    match trimmed.rfind('/') {
        Some(i) => &trimmed[i + 1..],
        None => trimmed,
    }
}

/// BuildKit's `client/llb` `normalizePath`: `p` cleaned, a relative one
/// joined below `/` and `parent`; with `keep_slash` a trailing `/` or `/.`
/// survives the cleaning. The solver's file backend (`cleanPath`) is this
/// with parent `/` and `keep_slash`.
pub(crate) fn llb_normalize_path(parent: &str, p: &str, keep_slash: bool) -> String {
    let mut out = clean(p);
    if !out.starts_with('/') {
        out = join(&["/", parent, &out]);
    }
    if keep_slash { keep_trailing_slash(p, out) } else { out }
}

/// BuildKit's `util/system` `NormalizePath` for Unix paths: unlike
/// [`llb_normalize_path`] an absolute `p` stays as written, an empty one is
/// the parent, and a relative parent is taken from `/`.
pub(crate) fn system_normalize_path(parent: &str, p: &str, keep_slash: bool) -> String {
    let parent = if parent.is_empty() { "/" } else { parent };
    let parent = if parent.starts_with('/') { parent.to_owned() } else { join(&["/", parent]) };
    let mut out = if p.is_empty() { parent.clone() } else { p.to_owned() };
    if !out.starts_with('/') {
        out = join(&[&parent, &out]);
    }
    if keep_slash { keep_trailing_slash(p, out) } else { out }
}

/// Puts back the trailing `/` or `/.` of `orig` that cleaning removed: to a
/// copy both say "a directory".
fn keep_trailing_slash(orig: &str, mut cleaned: String) -> String {
    if orig.ends_with('/') && !cleaned.ends_with('/') {
        cleaned.push('/');
    } else if orig.ends_with("/.") {
        if cleaned != "/" {
            cleaned.push('/');
        }
        cleaned.push('.');
    }
    cleaned
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table of Go's `path` tests for `Clean`, grouped by the rule of
    /// the documentation each case shows.
    #[test]
    fn clean_follows_the_rules_of_go_path_clean() {
        let cases = [
            // Already clean; the empty path is ".".
            ("", "."),
            ("abc", "abc"),
            ("abc/def", "abc/def"),
            (".", "."),
            ("..", ".."),
            ("../..", "../.."),
            ("../../abc", "../../abc"),
            ("/abc", "/abc"),
            ("/", "/"),
            // Only the root ends in a slash.
            ("abc/", "abc"),
            ("abc/def/", "abc/def"),
            ("./", "."),
            ("../", ".."),
            ("/abc/", "/abc"),
            // Multiple slashes become one.
            ("abc//def//ghi", "abc/def/ghi"),
            ("//abc", "/abc"),
            ("///abc", "/abc"),
            ("//abc//", "/abc"),
            // `.` elements go.
            ("abc/./def", "abc/def"),
            ("/./abc/def", "/abc/def"),
            ("abc/.", "abc"),
            // An inner `..` takes the element before it.
            ("abc/def/ghi/../jkl", "abc/def/jkl"),
            ("abc/def/../ghi/../jkl", "abc/jkl"),
            ("abc/def/..", "abc"),
            ("abc/def/../..", "."),
            ("abc/def/../../..", ".."),
            ("abc/def/../../../ghi/jkl/../../../mno", "../../mno"),
            // `..` at the start of a rooted path goes.
            ("/abc/def/../..", "/"),
            ("/abc/def/../../..", "/"),
            ("/../a", "/a"),
            // Combinations.
            ("a/../../b/./c/", "../b/c"),
            ("//a//b/", "/a/b"),
            ("abc/./../def", "def"),
            ("abc//./../def", "def"),
            ("abc/../../././../def", "../../def"),
        ];
        for (input, want) in cases {
            assert_eq!(clean(input), want, "{input:?}");
        }
    }

    /// Go's `path.Join` examples: empty elements are ignored, the result is
    /// cleaned, and all-empty input gives "".
    #[test]
    fn join_follows_go_path_join() {
        let cases: [(&[&str], &str); 11] = [
            (&["a", "b", "c"], "a/b/c"),
            (&["a", "b/c"], "a/b/c"),
            (&["a/b", "c"], "a/b/c"),
            (&["a/b", "../../../xyz"], "../xyz"),
            (&["", ""], ""),
            (&[], ""),
            (&["a", ""], "a"),
            (&["", "a"], "a"),
            (&["/", "..", "x"], "/x"),
            (&["/", "a/", "./b/"], "/a/b"),
            (&["/", "a", "", "b/"], "/a/b"),
        ];
        for (parts, want) in cases {
            assert_eq!(join(parts), want, "{parts:?}");
        }
    }

    /// Go's `path.Base` tests: trailing slashes go first, "" is "." and a
    /// path of slashes is "/".
    #[test]
    fn base_follows_go_path_base() {
        let cases = [
            ("", "."),
            (".", "."),
            ("/.", "."),
            ("/", "/"),
            ("////", "/"),
            ("x/", "x"),
            ("abc", "abc"),
            ("abc/def", "def"),
            ("a/b/.x", ".x"),
            ("a/b/c.", "c."),
            ("a/b/c.x", "c.x"),
            ("/a/b/", "b"),
        ];
        for (input, want) in cases {
            assert_eq!(base(input), want, "{input:?}");
        }
    }

    #[test]
    fn llb_paths_join_the_parent_and_keep_directory_markers() {
        let cases = [
            ("/work", "a/b", false, "/work/a/b"),
            ("/work", "/abs/../x", false, "/x"),
            ("/work", "../../..", false, "/"),
            ("", "a", false, "/a"),
            ("/work", "dir/", false, "/work/dir"),
            ("/work", "dir/", true, "/work/dir/"),
            ("/work", "dir/.", true, "/work/dir/."),
            ("/", "/.", true, "/."),
            ("/", ".", true, "/"),
            ("/", "", true, "/"),
            ("/", "/", true, "/"),
            ("/", "../../x", true, "/x"),
            ("/", "/a/./b/../c", true, "/a/c"),
            ("/work", "a/../b", false, "/work/b"),
            ("/work", "/x/./y/", false, "/x/y"),
            ("/work", "out/", true, "/work/out/"),
            ("/", "./", true, "/"),
            ("/w", "d/.", true, "/w/d/."),
            // The solver's file backend (`cleanPath`): parent `/`, markers kept.
            ("/", "a/b", true, "/a/b"),
            ("/", "dir/", true, "/dir/"),
            ("/", "dir/.", true, "/dir/."),
        ];
        for (parent, p, keep_slash, want) in cases {
            assert_eq!(llb_normalize_path(parent, p, keep_slash), want, "{parent:?} {p:?} {keep_slash}");
        }
    }

    #[test]
    fn system_paths_keep_absolute_ones_as_written() {
        let cases = [
            ("/app", "bin", true, "/app/bin"),
            ("/app", "bin/", true, "/app/bin/"),
            ("/app", "./", true, "/app/"),
            ("/app", "/etc//x/../y", false, "/etc//x/../y"),
            ("/app", "", false, "/app"),
            ("", "a", false, "/a"),
            ("rel", "a", false, "/rel/a"),
            ("/app", "x/.", true, "/app/x/."),
        ];
        for (parent, p, keep_slash, want) in cases {
            assert_eq!(system_normalize_path(parent, p, keep_slash), want, "{parent:?} {p:?} {keep_slash}");
        }
    }
}
