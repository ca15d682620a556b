use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// The environment upstream's `envVarTest` runs with.
fn test_env() -> Vec<(String, String)> {
    env(&[("PWD", "/home"), ("SHELL", "bash"), ("KOREAN", "한국어"), ("NULL", "")])
}

fn word(input: &str) -> Result<String, ShellError> {
    Lexer::new('\\').process_word(input, &test_env())
}

#[test]
fn quotes_and_escapes() {
    let cases = [
        ("hello", "hello"),
        ("a'b c'd", "ab cd"),
        (r"x\'y", "x'y"),
        (r"tab\tx", "tabtx"),
        (r#""tab\tx""#, r"tab\tx"),
        (r#""two\\x""#, r"two\x"),
        (r"'lit\tx'", r"lit\tx"),
        (r"end\", "end"),
        (r"end\\", r"end\"),
        (r#""it's""#, "it's"),
        (r#""q\"q""#, r#"q"q"#),
        (r#"'"dq"'"#, r#""dq""#),
        (r#""''""#, "''"),
        ("'a\\'", "a\\"),
        ("안'녕'", "안녕"),
        ("\u{feff}bom", "bom"),
    ];
    for (input, want) in cases {
        assert_eq!(word(input).unwrap(), want, "{input}");
    }
}

#[test]
fn plain_variables() {
    let cases = [
        ("$PWD", "/home"),
        ("x${PWD}y", "x/homey"),
        ("$PWD.", "/home."),
        ("$pwd.", "."),
        ("$.", "$."),
        ("a$", "a$"),
        (r"\$PWD", "$PWD"),
        (r"\\$PWD", r"\/home"),
        (r#""\$PWD""#, "$PWD"),
        ("'$PWD'", "$PWD"),
        (r#""'$PWD'""#, "'/home'"),
        (r"\${}", "${}"),
        ("${aaa}}", "}"),
        ("$KOREAN!", "한국어!"),
        ("$1x", "x"),
        ("$001aaa", "aaa"),
        ("${999}b", "b"),
        ("$@@@", "@@"),
        ("$$", ""),
        ("${#}", ""),
        ("${?:-q}", "q"),
        ("$-x", "x"),
        ("$NULL|", "|"),
    ];
    for (input, want) in cases {
        assert_eq!(word(input).unwrap(), want, "{input}");
    }
}

#[test]
fn default_alternative_and_required_forms() {
    let cases = [
        ("${XXX:-000}", "000"),
        ("${PWD:-000}", "/home"),
        ("${NULL:-d}", "d"),
        ("${NULL-d}", ""),
        ("${XXX-d}", "d"),
        ("${XXX:-$PWD}", "/home"),
        ("${XXX:-${YYY:-yyy}}", "yyy"),
        ("${XXX:+x}", ""),
        ("${PWD:+x}", "x"),
        ("${NULL:+x}", ""),
        ("${NULL+x}", "x"),
        ("${PWD:+${SHELL}}", "bash"),
        ("${PWD:+${PWD}:}", "/home:"),
        (r"${XXX:-\$PWD:}", "$PWD:"),
        (r"${XXX:-\${PWD}z}", "${PWDz}"),
        ("${aaa:-bbb {foo}", "bbb {foo"),
        ("${aaa:-bbb}}", "bbb}"),
        ("${PWD?}", "/home"),
        ("${PWD:?}", "/home"),
        ("${NULL?}", ""),
        ("${1:-bbb}", "bbb"),
        ("${1:+bbb}", ""),
        ("${@:-bbb}aaa", "bbbaaa"),
    ];
    for (input, want) in cases {
        assert_eq!(word(input).unwrap(), want, "{input}");
    }
}

#[test]
fn errors_carry_upstream_texts() {
    let cases = [
        ("${}", "syntax error: bad substitution"),
        ("${:}", "syntax error: bad substitution"),
        ("${{aaa}", "syntax error: bad substitution"),
        ("x${", "syntax error: missing '}'"),
        ("${aaa", "unsupported modifier (\u{fffd}) in substitution"),
        ("${aaa:-bbb", "syntax error: missing '}'"),
        ("${aaa:-bbb ${foo}", "syntax error: missing '}'"),
        ("${.}", "unsupported modifier (.) in substitution"),
        ("${XXX:YYY}", "unsupported modifier (:Y) in substitution"),
        ("${PWD:=000}", "unsupported modifier (:=) in substitution"),
        ("${X=a}", "unsupported modifier (=) in substitution"),
        ("${X:#a}", "unsupported modifier (:#) in substitution"),
        ("${X:%%a}", "unsupported modifier (:%) in substitution"),
        ("${XXX?}", "XXX: is not allowed to be unset"),
        ("${XXX:?}", "XXX: is not allowed to be unset"),
        ("${NULL:?}", "NULL: is not allowed to be empty"),
        ("${XXX?custom $SHELL}", "XXX: custom bash"),
        ("he'llo", "unexpected end of statement while looking for matching single-quote"),
        (r"he\\'llo", "unexpected end of statement while looking for matching single-quote"),
        ("\"hello", "unexpected end of statement while looking for matching double-quote"),
        (r#""hello\""#, "unexpected end of statement while looking for matching double-quote"),
        ("${X//ww}", "syntax error: missing '/' in ${}"),
        ("${X//}", "syntax error: missing '/' in ${}"),
        ("${PWD#\\x}", "invalid pattern (\\x) in substitution: invalid escape '\\x'"),
        ("${PWD#\\\\\\}", "syntax error: missing '}'"),
    ];
    for (input, want) in cases {
        let err = word(input).unwrap_err();
        assert_eq!(err.reason.to_string(), want, "{input}");
        assert_eq!(err.to_string(), format!("failed to process {}: {want}", quote(input)));
    }
    // A pattern can only end in a lone backslash through a variable.
    let err = Lexer::new('\\').process_word("${V#$BS}", &env(&[("BS", "\\")])).unwrap_err();
    assert_eq!(err.reason.to_string(), "invalid pattern (\\) in substitution: invalid escape '\\\u{fffd}'");
}

#[test]
fn pattern_removal() {
    let cases: &[(&str, &str, &str)] = &[
        ("${V#*x*y}", "xxyy", "y"),
        ("${V##*x}", "xxyy", "yy"),
        ("${V#*}", "xxyy", "xxyy"),
        ("${V##*}", "xxyy", ""),
        ("${V#}", "xxyy", "xxyy"),
        ("${V#x}", "xxyy", "xyy"),
        ("${V#?\\?}", "???y", "?y"),
        ("${V%x}", "xxyy", "xxyy"),
        ("${V%y}", "xxyy", "xxy"),
        ("${V%%y*}", "xxyy", "xx"),
        ("${V%y*}", "xxyy", "xxy"),
        ("${V%%\\**}", "xx**", "xx"),
        ("${V%%\\**\\*}", "a***yy*", "a"),
        ("${V%.*}", "archive.tar.gz", "archive.tar"),
        ("${V%%.*}", "archive.tar.gz", "archive"),
        ("${V#*/}", "a/b/c", "b/c"),
        ("${V##*/}", "a/b/c", "c"),
        ("${V#()[]{\\}^$.\\*\\?|\\\\}", "()[]{}^$.*?|\\x", "x"),
        // Wildcards stop at newlines, as Go's `.` does.
        ("${V#*b}", "a\nb", "a\nb"),
        ("${V#a?b}", "a\nb", "a\nb"),
        ("${V%%b*}", "ab\nb", "ab\n"),
    ];
    for (input, value, want) in cases {
        let got = Lexer::new('\\').process_word(input, &env(&[("V", value)])).unwrap();
        assert_eq!(&got, want, "{input} on {value:?}");
    }
}

#[test]
fn substitution() {
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case<'_>] = &[
        ("${F/$N/.} - ${F//$N/.}", &[("F", "/foo*/*/*.txt"), ("N", "\\*/")], "/foo.*/*.txt - /foo..*.txt"),
        ("${F/$N/} - ${F//$N/}", &[("F", "/tmp/tmp/bar.txt"), ("N", "/tmp")], "/tmp/bar.txt - /bar.txt"),
        (
            "${F/$N/$R} - ${F//$N/$R}",
            &[("F", "/a/foo/b/c.txt"), ("N", "/?/"), ("R", "/")],
            "/foo/b/c.txt - /foo/c.txt",
        ),
        ("${F//\\//\\/}", &[("F", "/tmp/foo.txt")], "\\/tmp\\/foo.txt"),
        ("${F/$B/ww}", &[("F", "xxyy"), ("B", "")], "wwxxyy"),
        ("${F///}", &[("F", "xxyy")], "xxyy"),
        ("${F///}", &[], ""),
        ("${F//x*/-}", &[("F", "axbxc")], "a-"),
        ("${F/x?/-}", &[("F", "axbxc")], "a-xc"),
        ("${F//x?/-}", &[("F", "axbxc")], "a--"),
        // An empty pattern matches between every character with `//`.
        ("${F///-}", &[("F", "ab")], "-a-b-"),
        // `//` expands `$0` to the match; `/` keeps it literal.
        ("${F//b/[$R]}", &[("F", "abc"), ("R", "$0")], "a[b]c"),
        ("${F/b/[$R]}", &[("F", "abc"), ("R", "$0")], "a[$0]c"),
        ("${F//b/$R}", &[("F", "abc"), ("R", "$1${x}$$")], "a$c"),
        ("${F//b/$R}", &[("F", "abc"), ("R", "$ ${")], "a$ ${c"),
    ];
    for (input, vars, want) in cases {
        let got = Lexer::new('\\').process_word(input, &env(vars)).unwrap();
        assert_eq!(&got, want, "{input}");
    }
}

#[test]
fn matches_are_tracked() {
    let e = env(&[("FOO", "xxx"), ("BAR", "")]);
    let lex = Lexer::new('\\');
    let got = lex.process_word_with_matches("${FOO-a} ${BAR-b} ${BAZ-c} $BAZ ${QUX:+q}", &e).unwrap();
    assert_eq!(got.result, "xxx  c  ");
    assert_eq!(got.matched, BTreeSet::from(["FOO".to_owned(), "BAR".to_owned()]));
    assert_eq!(got.unmatched, BTreeSet::from(["BAZ".to_owned(), "QUX".to_owned()]));

    let got = lex.process_word_with_matches("${FOO#$BAR}'$NOPE'", &e).unwrap();
    assert_eq!(got.result, "xxx$NOPE");
    assert_eq!(got.matched.len(), 2);
    assert!(got.unmatched.is_empty());

    let release = "pkg-${V}.${OS}-${ARCH}${VARIANT:+-${VARIANT}}.tgz";
    let vars = env(&[("V", "1.2"), ("OS", "linux"), ("ARCH", "arm"), ("VARIANT", "v7")]);
    assert_eq!(lex.process_word(release, &vars).unwrap(), "pkg-1.2.linux-arm-v7.tgz");
    let vars = env(&[("V", "1.2"), ("OS", "linux"), ("ARCH", "arm64")]);
    assert_eq!(lex.process_word(release, &vars).unwrap(), "pkg-1.2.linux-arm64.tgz");
}

#[test]
fn later_entries_win_and_maps_work() {
    let list = env(&[("car", "hat"), ("car", "bike")]);
    assert_eq!(Lexer::new('\\').process_word("$car", &list).unwrap(), "bike");
    let map: HashMap<String, String> = HashMap::from([("A".to_owned(), "1".to_owned())]);
    assert_eq!(Lexer::new('\\').process_word("$A$B", &map).unwrap(), "1");
    assert_eq!(Lexer::new('\\').process_word("$A", &NoEnv).unwrap(), "");
}

#[test]
fn word_splitting() {
    let vars = env(&[("hi", "hi"), ("space", "abc  def"), ("leading", "  ab c"), ("trailing", "ab c   ")]);
    let cases: &[(&str, &[&str])] = &[
        ("hello", &["hello"]),
        ("hello${nope}bye", &["hellobye"]),
        ("hello${hi}bye", &["hellohibye"]),
        ("hello${space}bye", &["helloabc", "defbye"]),
        ("hello\"${space}\"bye", &["helloabc  defbye"]),
        ("hello \"${space}\"bye", &["hello", "abc  defbye"]),
        ("hello${leading}def", &["hello", "ab", "cdef"]),
        ("hello\"${leading}\" def", &["hello  ab c", "def"]),
        ("hello${trailing}d", &["helloab", "c", "d"]),
        ("hel\"lo${trailing}\"", &["helloab c   "]),
        ("hello\" there  \"", &["hello there  "]),
        ("hello there     ", &["hello", "there"]),
        (r"hello\ there", &["hello there"]),
        (r#"hello\" there"#, &["hello\"", "there"]),
        (r#"hello"\\there""#, &[r"hello\there"]),
        (r"hello'\\there'", &[r"hello\\there"]),
        ("a \"\" b", &["a", "b"]),
        ("cat <<EOF x", &["cat", "<<EOF", "x"]),
        ("cat << EOF", &["cat", "<< EOF"]),
        // Upstream quirk: a modifier expansion drops the word's earlier part.
        ("hello${x:-a}b c", &["ab", "c"]),
    ];
    let lex = Lexer::new('\\');
    for (input, want) in cases {
        assert_eq!(&lex.process_words(input, &vars).unwrap(), want, "{input}");
    }
    assert_eq!(
        lex.process_words("hello\" there", &vars).unwrap_err().reason,
        ShellErrorKind::UnterminatedDoubleQuote
    );
}

#[test]
fn raw_modes_and_skip_unset() {
    let mut lex = Lexer::new('\\');
    lex.raw_quotes = true;
    lex.skip_unset_env = true;
    let vars = env(&[("A", "x y")]);
    let cases: &[(&str, &[&str])] = &[
        ("'q $A' \"$A\"", &["'q $A'", "\"x y\""]),
        ("$B ${B} ${B:-d} ${B/a/b}", &["$B", "${B}", "${B:-d}", "${B/a/b}"]),
        ("${B//a/b}", &["${B/a/b}"]),
        ("$A", &["x", "y"]),
    ];
    for (input, want) in cases {
        assert_eq!(&lex.process_words(input, &vars).unwrap(), want, "{input}");
    }
    let mut lex = Lexer::new('\\');
    lex.raw_escapes = true;
    assert_eq!(lex.process_word(r#"a\b "c\d\"""#, &NoEnv).unwrap(), r#"a\b c\\d\""#);
    let mut lex = Lexer::new('\\');
    lex.skip_process_quotes = true;
    assert_eq!(lex.process_word("'$A'", &vars).unwrap(), "'x y'");
}

#[test]
fn backtick_escape() {
    let lex = Lexer::new('`');
    let vars = env(&[("A", "1")]);
    let cases = [
        ("a`$A", "a$A"),
        (r"C:\path\$A", r"C:\path\1"),
        ("\"q`\"q\"", "q\"q"),
        ("\"``\"", "`"),
        ("end`", "end"),
    ];
    for (input, want) in cases {
        assert_eq!(lex.process_word(input, &vars).unwrap(), want, "{input}");
    }
}

#[test]
fn pattern_helpers() {
    assert_eq!(reverse_pattern(r"a\*c"), r"c\*a");
    assert_eq!(reverse_pattern(r"\\\ab"), r"b\a\\");
    assert_eq!(reverse_pattern(r"ab\"), r"\ba");
    assert_eq!(reverse_pattern(""), "");
    assert_eq!(compile_pattern(r"\}a").unwrap(), vec![Tok::Lit('}'), Tok::Lit('a')]);
    assert!(compile_pattern(r"\").is_err());
    assert!(compile_pattern(r"\x").is_err());
    // A long text with a hopeless pattern stays fast thanks to memoisation.
    let text: Vec<char> = "a".repeat(3000).chars().collect();
    let toks = compile_pattern("*a*a*a*b").unwrap();
    assert_eq!(Matcher::new(&toks, &text, true).find(0), None);
}
