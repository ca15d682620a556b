//! The pure front half of the Dockerfile frontend: text to AST (`parser`),
//! AST to typed instructions and stages (`instructions`), and BuildKit's
//! shell-word lexer for variable expansion (`shell`). Nothing here does I/O;
//! conversion to LLB builds on these types.
//!
//! Behaviour and error texts follow moby/buildkit v0.29
//! `frontend/dockerfile/{parser,shell,instructions,linter}` (buildkit-protocol.md §8.3),
//! including its quirks, so that a Dockerfile fails or warns under kilnd exactly
//! where it would under buildkitd.

pub mod instructions;
mod json;
pub mod linter;
pub mod parser;
pub mod shell;

/// Quotes `s` as Go's `strconv.Quote` (`%q`) does; BuildKit's messages embed
/// values this way, and users compare them.
pub(crate) fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if go_printable(c) => out.push(c),
            c if (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('"');
    out
}

/// Approximates Go's `strconv.IsPrint`: graphic characters and the ASCII
/// space. Non-ASCII format characters that Go escapes are listed; unassigned
/// code points are not known here and print as themselves.
fn go_printable(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    if c.is_control() || c.is_whitespace() {
        return false;
    }
    !matches!(c as u32,
        0xad | 0x600..=0x605 | 0x61c | 0x6dd | 0x70f | 0x180e | 0x200b..=0x200f | 0x202a..=0x202e
        | 0x2060..=0x2064 | 0x2066..=0x206f | 0xfeff | 0xfff9..=0xfffb | 0xe000..=0xf8ff
        | 0xd800..=0xdfff | 0xf0000..)
}

/// BuildKit's `util/suggest.Search`: the closest option within edit distance
/// 2, or nothing when `value` is itself an option. Ties go to the earlier
/// option (upstream iterates a map, so its tie-break is random).
pub(crate) fn suggest(value: &str, options: &[&str], case_sensitive: bool) -> Option<String> {
    let folded = if case_sensitive { value.to_owned() } else { value.to_lowercase() };
    let mut best: Option<String> = None;
    let mut min = 3;
    for option in options {
        let option = if case_sensitive { (*option).to_owned() } else { option.to_lowercase() };
        if folded == option {
            return None;
        }
        let distance = levenshtein(&folded, &option);
        if distance < min {
            min = distance;
            best = Some(if case_sensitive { option } else { match_case(&option, value) });
        }
    }
    best
}

fn match_case(option: &str, original: &str) -> String {
    if original == original.to_lowercase() {
        option.to_lowercase()
    } else if original == original.to_uppercase() {
        option.to_uppercase()
    } else {
        option.to_owned()
    }
}

/// Edit distance over characters with unit costs, as `agext/levenshtein` computes it by default.
fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_like_go() {
        let cases = [
            ("plain", r#""plain""#),
            ("a\"b\\c", r#""a\"b\\c""#),
            ("tab\there\n", r#""tab\there\n""#),
            ("\u{1b}[0m", r#""\x1b[0m""#),
            ("한국어", "\"한국어\""),
            ("\u{a0}\u{200b}", r#""\u00a0\u200b""#),
            ("", r#""""#),
        ];
        for (input, want) in cases {
            assert_eq!(go_quote(input), want, "{input:?}");
        }
    }

    #[test]
    fn suggests_close_names_only() {
        // Mixed case input gets the lower-cased option, as upstream's matchCase does.
        assert_eq!(suggest("RUm", &["RUN", "ARG"], false).as_deref(), Some("run"));
        assert_eq!(suggest("RUM", &["RUN", "ARG"], false).as_deref(), Some("RUN"));
        assert_eq!(suggest("rnu", &["RUN", "ARG"], false).as_deref(), Some("run"));
        assert_eq!(suggest("RUN", &["RUN", "ARG"], false), None);
        assert_eq!(suggest("xyzzy", &["RUN", "ARG"], false), None);
        assert_eq!(suggest("chmode", &["chown", "chmod"], true).as_deref(), Some("chmod"));
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("", "abc"), 3);
    }
}
