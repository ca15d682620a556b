//! Go's `strconv`: BuildKit reads numbers and booleans from LLB attributes,
//! frontend options and Dockerfile flags with it, accepting exactly what it
//! accepts, and its messages embed values the way `Quote` writes them.

/// Why a number or boolean did not parse (Go's `*strconv.NumError`); it
/// prints as Go does, e.g. `strconv.ParseInt: parsing "x": invalid syntax`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("strconv.{func}: parsing {}: {kind}", quote(.num))]
pub(crate) struct NumError {
    /// The Go function that failed: `ParseInt`, `ParseUint`, `Atoi`, `ParseBool`.
    pub func: &'static str,
    /// The input as given.
    pub num: String,
    pub kind: NumErrorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NumErrorKind {
    #[error("invalid syntax")]
    Syntax,
    #[error("value out of range")]
    Range,
    #[error("invalid base {0}")]
    Base(u32),
    #[error("invalid bit size {0}")]
    BitSize(u32),
}

impl NumError {
    fn new(func: &'static str, num: &str, kind: NumErrorKind) -> Self {
        Self { func, num: num.to_owned(), kind }
    }
}

/// `strconv.ParseUint(s, base, bit_size)`: no sign; `base` 2 to 36, or 0 to
/// take it from the prefix (`0b`, `0o` or `0`, `0x`, else decimal) and allow
/// `_` between digits as Go literals do; `bit_size` 1 to 64, 0 meaning 64.
pub(crate) fn parse_uint(s: &str, base: u32, bit_size: u32) -> Result<u64, NumError> {
    parse_unsigned(s, base, bit_size).map_err(|kind| NumError::new("ParseUint", s, kind))
}

/// `strconv.ParseInt(s, base, bit_size)`: [`parse_uint`]'s digits after an
/// optional `+` or `-`, in range for a signed integer of `bit_size` bits.
pub(crate) fn parse_int(s: &str, base: u32, bit_size: u32) -> Result<i64, NumError> {
    let fail = |kind| NumError::new("ParseInt", s, kind);
    let (negative, digits) = match s.as_bytes().first() {
        Some(b'+') => (false, &s[1..]),
        Some(b'-') => (true, &s[1..]),
        _ => (false, s),
    };
    if s.is_empty() {
        return Err(fail(NumErrorKind::Syntax));
    }
    // An unsigned overflow is still a range error for the signed result.
    let magnitude = match parse_unsigned(digits, base, bit_size) {
        Ok(n) => n,
        Err(NumErrorKind::Range) => u64::MAX,
        Err(kind) => return Err(fail(kind)),
    };
    let bits = if bit_size == 0 { 64 } else { bit_size };
    let cutoff = 1u64 << (bits - 1);
    if (!negative && magnitude >= cutoff) || (negative && magnitude > cutoff) {
        return Err(fail(NumErrorKind::Range));
    }
    // In range: `magnitude` fits, and so does its negation (down to -cutoff).
    let value = i128::from(magnitude);
    i64::try_from(if negative { -value } else { value }).map_err(|_| fail(NumErrorKind::Range))
}

/// `strconv.Atoi`: a decimal `int` (64 bits), with an optional sign.
pub(crate) fn atoi(s: &str) -> Result<i64, NumError> {
    parse_int(s, 10, 0).map_err(|e| NumError { func: "Atoi", ..e })
}

/// `strconv.ParseBool`: `1`, `t`, `T`, `true`, `TRUE`, `True` and their false
/// counterparts; nothing else.
pub(crate) fn parse_bool(s: &str) -> Result<bool, NumError> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(NumError::new("ParseBool", s, NumErrorKind::Syntax)),
    }
}

/// `ParseUint` without the error's wrapping, so `ParseInt` can rename it.
fn parse_unsigned(s: &str, base: u32, bit_size: u32) -> Result<u64, NumErrorKind> {
    if s.is_empty() {
        return Err(NumErrorKind::Syntax);
    }
    let prefixed = base == 0;
    let (digits, base) = match base {
        2..=36 => (s, base),
        0 => {
            let bytes = s.as_bytes();
            match (bytes[0], bytes.get(1).map(u8::to_ascii_lowercase)) {
                (b'0', Some(b'b')) if s.len() >= 3 => (&s[2..], 2),
                (b'0', Some(b'o')) if s.len() >= 3 => (&s[2..], 8),
                (b'0', Some(b'x')) if s.len() >= 3 => (&s[2..], 16),
                (b'0', _) => (&s[1..], 8),
                _ => (s, 10),
            }
        }
        _ => return Err(NumErrorKind::Base(base)),
    };
    let bits = match bit_size {
        0 => 64,
        1..=64 => bit_size,
        _ => return Err(NumErrorKind::BitSize(bit_size)),
    };
    let max = if bits == 64 { u64::MAX } else { (1u64 << bits) - 1 };
    let mut underscores = false;
    let mut n: u64 = 0;
    for c in digits.bytes() {
        if c == b'_' && prefixed {
            underscores = true;
            continue;
        }
        // Go reports the first problem it meets from the left: a bad digit
        // after an overflow is still "out of range".
        let d = match c.to_ascii_lowercase() {
            c @ b'0'..=b'9' => u32::from(c - b'0'),
            c @ b'a'..=b'z' => u32::from(c - b'a') + 10,
            _ => return Err(NumErrorKind::Syntax),
        };
        if d >= base {
            return Err(NumErrorKind::Syntax);
        }
        n = n
            .checked_mul(u64::from(base))
            .and_then(|n| n.checked_add(u64::from(d)))
            .filter(|n| *n <= max)
            .ok_or(NumErrorKind::Range)?;
    }
    if underscores && !underscores_ok(s) {
        return Err(NumErrorKind::Syntax);
    }
    Ok(n)
}

/// Go's `underscoreOK`: every `_` stands between two digits, or between the
/// base prefix and a digit.
fn underscores_ok(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s).as_bytes();
    // What came last: the start, a digit (or the base prefix), `_`, or other.
    #[derive(PartialEq)]
    enum Saw {
        Start,
        Digit,
        Underscore,
        Other,
    }
    let mut saw = Saw::Start;
    let mut hex = false;
    let mut rest = s;
    if s.len() >= 2 && s[0] == b'0' && matches!(s[1].to_ascii_lowercase(), b'b' | b'o' | b'x') {
        hex = s[1].eq_ignore_ascii_case(&b'x');
        saw = Saw::Digit;
        rest = &s[2..];
    }
    for &c in rest {
        if c.is_ascii_digit() || (hex && c.is_ascii_hexdigit()) {
            saw = Saw::Digit;
        } else if c == b'_' {
            if saw != Saw::Digit {
                return false;
            }
            saw = Saw::Underscore;
        } else if saw == Saw::Underscore {
            return false;
        } else {
            saw = Saw::Other;
        }
    }
    saw != Saw::Underscore
}

/// `strconv.Quote` (`%q` of a string): double-quoted, with Go's escapes for
/// control and non-printable characters.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        escape(c, '"', &mut out);
    }
    out.push('"');
    out
}

/// `strconv.QuoteRune` as `%q` applies it to an integer: a single-quoted
/// character literal, U+FFFD for a value that is no character.
pub(crate) fn quote_rune(v: i64) -> String {
    let c = u32::try_from(v).ok().and_then(char::from_u32).unwrap_or('\u{fffd}');
    let mut out = String::from("'");
    escape(c, '\'', &mut out);
    out.push('\'');
    out
}

fn escape(c: char, quote: char, out: &mut String) {
    match c {
        c if c == quote || c == '\\' => {
            out.push('\\');
            out.push(c);
        }
        '\u{7}' => out.push_str("\\a"),
        '\u{8}' => out.push_str("\\b"),
        '\u{c}' => out.push_str("\\f"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\u{b}' => out.push_str("\\v"),
        c if is_print(c) => out.push(c),
        c if (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
        c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
        c => out.push_str(&format!("\\U{:08x}", c as u32)),
    }
}

/// Approximates Go's `strconv.IsPrint`: graphic characters and the ASCII
/// space. Non-ASCII format characters that Go escapes are listed; unassigned
/// code points are not known here and print as themselves.
fn is_print(c: char) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn int(s: &str, base: u32, bits: u32) -> Result<i64, String> {
        parse_int(s, base, bits).map_err(|e| e.to_string())
    }

    fn uint(s: &str, base: u32, bits: u32) -> Result<u64, String> {
        parse_uint(s, base, bits).map_err(|e| e.to_string())
    }

    /// "The string may begin with a leading sign"; "If s is empty or contains
    /// invalid digits, err.Err = ErrSyntax"; a value that does not fit the bit
    /// size is ErrRange. Cases from Go's `atoi_test.go` for base 10.
    #[test]
    fn parse_int_decimal_follows_go() {
        let syntax = |s: &str| Err(format!("strconv.ParseInt: parsing {}: invalid syntax", quote(s)));
        let range = |s: &str| Err(format!("strconv.ParseInt: parsing {}: value out of range", quote(s)));
        let cases = [
            ("", 64, syntax("")),
            ("0", 64, Ok(0)),
            ("-0", 64, Ok(0)),
            ("+0", 64, Ok(0)),
            ("1", 64, Ok(1)),
            ("-1", 64, Ok(-1)),
            ("+42", 32, Ok(42)),
            ("12345", 64, Ok(12345)),
            ("-12345", 64, Ok(-12345)),
            ("012345", 64, Ok(12345)),
            ("98765432100", 64, Ok(98_765_432_100)),
            ("9223372036854775807", 64, Ok(i64::MAX)),
            ("-9223372036854775808", 64, Ok(i64::MIN)),
            ("9223372036854775808", 64, range("9223372036854775808")),
            ("-9223372036854775809", 64, range("-9223372036854775809")),
            ("2147483647", 32, Ok(i64::from(i32::MAX))),
            ("-2147483648", 32, Ok(i64::from(i32::MIN))),
            ("3000000000", 32, range("3000000000")),
            ("-2147483649", 32, range("-2147483649")),
            ("18446744073709551616", 0, range("18446744073709551616")),
            ("+", 64, syntax("+")),
            ("-", 64, syntax("-")),
            ("--1", 64, syntax("--1")),
            ("12a", 64, syntax("12a")),
            (" 1", 64, syntax(" 1")),
            // Underscores are for base 0 only.
            ("1_000", 64, syntax("1_000")),
            ("0x10", 64, syntax("0x10")),
        ];
        for (input, bits, want) in cases {
            assert_eq!(int(input, 10, bits), want, "{input:?}/{bits}");
        }
    }

    /// "If the base argument is 0, the true base is implied by the string's
    /// prefix following the sign: 2 for "0b", 8 for "0" or "0o", 16 for "0x",
    /// and 10 otherwise. Also, for argument base 0 only, underscore characters
    /// are permitted as defined by the Go syntax for integer literals."
    #[test]
    fn parse_int_base_zero_takes_the_prefix_and_underscores() {
        let cases = [
            ("0", Some(0)),
            ("0644", Some(0o644)),
            ("-0644", Some(-0o644)),
            ("0o755", Some(0o755)),
            ("0O755", Some(0o755)),
            ("0x1ff", Some(0x1ff)),
            ("0X1FF", Some(0x1ff)),
            ("0b101", Some(5)),
            ("+0b101", Some(5)),
            ("493", Some(493)),
            ("1_000", Some(1000)),
            ("0x_1f", Some(0x1f)),
            ("0_7", Some(7)),
            ("08", None),
            ("0b2", None),
            ("0x", None),
            ("0b", None),
            ("_1", None),
            ("1_", None),
            ("1__0", None),
            ("0x1f_", None),
            ("_", None),
            ("0xg", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_int(input, 0, 64).ok(), want, "{input:?}");
        }
    }

    /// "ParseUint is like ParseInt but for unsigned numbers. A sign prefix is
    /// not permitted."
    #[test]
    fn parse_uint_takes_no_sign() {
        assert_eq!(uint("0755", 8, 32), Ok(0o755));
        assert_eq!(uint("4294967295", 10, 32), Ok(u64::from(u32::MAX)));
        assert_eq!(uint("z", 36, 64), Ok(35));
        assert_eq!(uint("8", 8, 32), Err(r#"strconv.ParseUint: parsing "8": invalid syntax"#.to_owned()));
        assert_eq!(uint("+7", 8, 32), Err(r#"strconv.ParseUint: parsing "+7": invalid syntax"#.to_owned()));
        assert_eq!(uint("-1", 10, 64), Err(r#"strconv.ParseUint: parsing "-1": invalid syntax"#.to_owned()));
        assert_eq!(
            uint("4294967296", 10, 32),
            Err(r#"strconv.ParseUint: parsing "4294967296": value out of range"#.to_owned())
        );
        assert_eq!(uint("18446744073709551615", 10, 64), Ok(u64::MAX));
        // Go scans from the left, so an overflow is found before a later bad digit.
        assert_eq!(
            uint("99999999999999999999x", 10, 64),
            Err(r#"strconv.ParseUint: parsing "99999999999999999999x": value out of range"#.to_owned())
        );
    }

    /// The base must be 0 or 2 to 36 and the bit size 0 to 64.
    #[test]
    fn bad_bases_and_bit_sizes_are_errors() {
        assert_eq!(int("1", 1, 64), Err(r#"strconv.ParseInt: parsing "1": invalid base 1"#.to_owned()));
        assert_eq!(uint("1", 37, 64), Err(r#"strconv.ParseUint: parsing "1": invalid base 37"#.to_owned()));
        assert_eq!(int("1", 10, 65), Err(r#"strconv.ParseInt: parsing "1": invalid bit size 65"#.to_owned()));
    }

    /// "Atoi is equivalent to ParseInt(s, 10, 0), converted to type int."
    #[test]
    fn atoi_is_decimal_parse_int() {
        assert_eq!(atoi("-12"), Ok(-12));
        assert_eq!(atoi("+3"), Ok(3));
        assert_eq!(
            atoi("0x1").map_err(|e| e.to_string()),
            Err(r#"strconv.Atoi: parsing "0x1": invalid syntax"#.into())
        );
        assert!(atoi("1_0").is_err());
        assert!(atoi("9223372036854775808").is_err());
    }

    /// "It accepts 1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False.
    /// Any other value returns an error."
    #[test]
    fn parse_bool_accepts_go_spellings_only() {
        for s in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_bool(s), Ok(true), "{s}");
        }
        for s in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_bool(s), Ok(false), "{s}");
        }
        for s in ["", "yes", "tRUE", "2", " true"] {
            assert!(parse_bool(s).is_err(), "{s}");
        }
        assert_eq!(
            parse_bool("yes").unwrap_err().to_string(),
            r#"strconv.ParseBool: parsing "yes": invalid syntax"#
        );
    }

    /// "Quote returns a double-quoted Go string literal representing s. The
    /// returned string uses Go escape sequences (\t, \n, \xFF, \u0100) for
    /// control characters and non-printable characters as defined by IsPrint."
    #[test]
    fn quote_follows_go() {
        let cases = [
            ("plain", r#""plain""#),
            ("a\"b\\c", r#""a\"b\\c""#),
            ("it's", r#""it's""#),
            ("tab\there\n", r#""tab\there\n""#),
            ("\u{7}\u{8}\u{c}\r\u{b}", r#""\a\b\f\r\v""#),
            ("\u{1b}[0m", r#""\x1b[0m""#),
            ("\u{7f}", r#""\x7f""#),
            ("한국어", "\"한국어\""),
            ("\u{a0}\u{200b}", r#""\u00a0\u200b""#),
            ("\u{f0000}", r#""\U000f0000""#),
            ("", r#""""#),
        ];
        for (input, want) in cases {
            assert_eq!(quote(input), want, "{input:?}");
        }
    }

    /// "QuoteRune returns a single-quoted Go character literal representing
    /// the rune"; `%q` of an integer that is no valid rune gives U+FFFD.
    #[test]
    fn quote_rune_follows_go() {
        let cases = [
            (65, "'A'"),
            (3, r"'\x03'"),
            (0, r"'\x00'"),
            (10, r"'\n'"),
            (39, r"'\''"),
            (34, "'\"'"),
            (92, r"'\\'"),
            (0x80, r"'\u0080'"),
            (0x263a, "'☺'"),
            (-1, "'\u{fffd}'"),
            (0xd800, "'\u{fffd}'"),
        ];
        for (input, want) in cases {
            assert_eq!(quote_rune(input), want, "{input}");
        }
    }
}
