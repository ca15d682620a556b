use super::*;

fn dumps(text: &str) -> Vec<String> {
    parse(text).unwrap().nodes.iter().map(Node::dump).collect()
}

fn error(text: &str) -> (String, usize, usize) {
    let e = parse(text).unwrap_err();
    (e.to_string(), e.start_line, e.end_line)
}

#[test]
fn splits_arguments_per_instruction() {
    let cases: &[(&str, &str)] = &[
        ("FROM alpine:3 AS build", r#"from "alpine:3" "AS" "build""#),
        ("FROM  --platform=$BUILDPLATFORM  golang", r#"from ["--platform=$BUILDPLATFORM"] "golang""#),
        ("RUN echo  hi   there", r#"run "echo  hi   there""#),
        (r#"RUN ["echo", "hi there"]"#, r#"run "echo" "hi there""#),
        (r#"RUN [ "unterminated"#, r#"run "[ \"unterminated""#),
        ("RUN ['single']", r#"run "['single']""#),
        ("CMD []", "cmd"),
        ("CMD", "cmd"),
        ("COPY a  b\tc", r#"copy "a" "b" "c""#),
        (r#"COPY ["a b", "c"]"#, r#"copy "a b" "c""#),
        (r#"ADD --chown=1:1 "a b" c"#, r#"add ["--chown=1:1"] "\"a" "b\"" "c""#),
        ("VOLUME /a /b", r#"volume "/a" "/b""#),
        (r#"ENV A=1 B="two words" C="#, r#"env "A" "1" "=" "B" "\"two words\"" "=" "C" "" "=""#),
        ("ENV PATH /usr/bin:$PATH  x", r#"env "PATH" "/usr/bin:$PATH  x" """#),
        (r#"LABEL "maintainer"="x <x@y>""#, r#"label "\"maintainer\"" "\"x <x@y>\"" "=""#),
        (r#"ARG A B=2 "C=x y" D\ E"#, r#"arg "A" "B=2" "\"C=x y\"" "D\\ E""#),
        ("EXPOSE 80  443/udp", r#"expose "80" "443/udp""#),
        ("HEALTHCHECK --interval=5s CMD curl -f x", r#"healthcheck ["--interval=5s"] "CMD" "curl -f x""#),
        (r#"HEALTHCHECK CMD ["curl", "x"]"#, r#"healthcheck "CMD" "curl" "x""#),
        ("HEALTHCHECK NONE", r#"healthcheck "NONE""#),
        ("ONBUILD RUN echo hi", r#"onbuild (run "echo hi")"#),
        ("ONBUILD COPY --from=x a b", r#"onbuild (copy ["--from=x"] "a" "b")"#),
        ("WORKDIR /a b", r#"workdir "/a b""#),
        ("USER app:app", r#"user "app:app""#),
        ("STOPSIGNAL SIGKILL", r#"stopsignal "SIGKILL""#),
        ("MAINTAINER Jane <j@x>", r#"maintainer "Jane <j@x>""#),
        ("SHELL [\"pwsh\", \"-c\"]", r#"shell "pwsh" "-c""#),
        (
            "RUN --mount=type=cache,target=/x -- --not-a-flag",
            r#"run ["--mount=type=cache,target=/x"] "--not-a-flag""#,
        ),
        (r#"COPY --chown="a b" x y"#, r#"copy ["--chown=a b"] "x" "y""#),
        (r#"COPY "--chown=a b" x"#, r#"copy "\"--chown=a" "b\"" "x""#),
        ("COPY --from=a\\ b x y", r#"copy ["--from=a b"] "x" "y""#),
        ("RUN -x y", r#"run "-x y""#),
        ("FOO bar baz", r#"foo """#),
        ("run lower", r#"run "lower""#),
    ];
    for (input, want) in cases {
        assert_eq!(dumps(input), vec![(*want).to_owned()], "{input}");
    }
}

#[test]
fn exec_form_is_detected_per_instruction() {
    let ast = parse("RUN [\"a\"]\nRUN a\nCMD []\nHEALTHCHECK CMD [\"a\"]\nEXPOSE [\"80\"]\n").unwrap();
    let json: Vec<bool> = ast.nodes.iter().map(|n| n.json).collect();
    assert_eq!(json, [true, false, true, true, false]);
    assert_eq!(ast.nodes[4].dump(), r#"expose "[\"80\"]""#);
}

#[test]
fn keyword_case_is_kept_alongside_the_name() {
    let node = &parse("Run x").unwrap().nodes[0];
    assert_eq!((node.name.as_str(), node.keyword.as_str()), ("run", "Run"));
    let Args::KeyValues(pairs) = &parse("ENV a b").unwrap().nodes[0].args else { panic!() };
    assert_eq!(pairs, &[KeyValueArg { key: "a".into(), value: "b".into(), legacy: true }]);
}

#[test]
fn continuations_comments_and_line_numbers() {
    let text = "# top\nFROM a\n\nRUN a \\\n  b \\\n# inside\n  c\n\n# about\n# env\nENV X=1 \\\n    Y=2\n";
    let ast = parse(text).unwrap();
    let summary: Vec<(String, usize, usize, Vec<String>)> = ast
        .nodes
        .iter()
        .map(|n| (n.original.clone(), n.start_line, n.end_line, n.comments.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            ("FROM a".to_owned(), 2, 2, vec!["top".to_owned()]),
            ("RUN a   b   c".to_owned(), 4, 7, vec![]),
            ("ENV X=1     Y=2".to_owned(), 11, 12, vec!["about".to_owned(), "env".to_owned()]),
        ]
    );
    assert!(ast.warnings.is_empty());
    // A bare `#` starts the comment block over.
    let ast = parse("# a\n#\n# b\nFROM x").unwrap();
    assert_eq!(ast.nodes[0].comments, ["b"]);
}

#[test]
fn empty_continuation_lines_warn() {
    let ast = parse("FROM a\nRUN a \\\n\n  \\\n b\n").unwrap();
    // A continuation line keeps its indentation and the space before its escape.
    assert_eq!(ast.nodes[1].original, "RUN a    b");
    assert_eq!((ast.nodes[1].start_line, ast.nodes[1].end_line), (2, 5));
    assert_eq!(ast.warnings.len(), 1);
    let w = &ast.warnings[0];
    assert_eq!(
        (w.rule.name, w.message.as_str(), w.start_line),
        ("NoEmptyContinuation", "Empty continuation line", 5)
    );
}

#[test]
fn continuation_edge_cases() {
    let cases: &[(&str, &[&str])] = &[
        ("RUN a\\\\\nRUN b", &[r#"run "a\\\\""#, r#"run "b""#]),
        ("RUN a \\  \t\nb", &[r#"run "a b""#]),
        ("RUN a \\", &[r#"run "a""#]),
        ("\\\nRUN a", &[r#"run "a""#]),
        ("RUN a\r\nRUN b\r\n", &[r#"run "a""#, r#"run "b""#]),
        ("  \t RUN indented", &[r#"run "indented""#]),
    ];
    for (input, want) in cases {
        assert_eq!(&dumps(input), want, "{input:?}");
    }
}

#[test]
fn escape_directive() {
    let ast = parse("# escape=`\nFROM a\nRUN dir c:\\ `\n  /w\nRUN b\\\n").unwrap();
    assert_eq!(ast.escape_token, '`');
    let dumps: Vec<String> = ast.nodes.iter().map(Node::dump).collect();
    assert_eq!(dumps, [r#"from "a""#, r#"run "dir c:\\   /w""#, r#"run "b\\""#]);
    assert_eq!(ast.directives, [Directive { name: "escape".into(), value: "`".into(), line: 1 }]);

    // Directives only count before anything else, blank lines included.
    for text in ["# hello\n# escape=`\nRUN a `", "\n# escape=`\nRUN a `", "FROM a\n# escape=`\nRUN a `"] {
        assert_eq!(parse(text).unwrap().escape_token, '\\', "{text:?}");
    }
    let ast = parse("\u{feff}#  ESCAPE = ` \nRUN a `\nb").unwrap();
    assert_eq!(ast.escape_token, '`');
    assert_eq!(ast.nodes[0].original, "RUN a b");
    // The directive line is not a comment of the first instruction.
    assert!(ast.nodes[0].comments.is_empty());
}

#[test]
fn directive_errors_carry_upstreams_lines() {
    assert_eq!(
        error("# escape=`\n# escape=\\\nFROM a"),
        ("only one escape parser directive can be used".to_owned(), 1, 1)
    );
    assert_eq!(error("# syntax=a\n# SYNTAX=b\nFROM a").0, "only one syntax parser directive can be used");
    assert_eq!(
        error("# escape=x\nFROM a"),
        ("invalid escape token 'x' does not match ` or \\".to_owned(), 0, 0)
    );
}

#[test]
fn directives_for_the_frontend() {
    let text = "#!/usr/bin/env buildctl\n# syntax=docker/dockerfile:1 opt=1\n# check=skip=all\nFROM a\n";
    let syntax = parse_directive("syntax", text).unwrap();
    assert_eq!((syntax.value.as_str(), syntax.line), ("docker/dockerfile:1 opt=1", 2));
    assert_eq!(parse_directive("check", text).unwrap().value, "skip=all");
    assert_eq!(detect_syntax(text).unwrap().value, "docker/dockerfile:1 opt=1");
    // The parser itself does not skip the shebang, so it sees no directives.
    assert!(parse(text).unwrap().directives.is_empty());
    assert_eq!(detect_syntax("// syntax = x/y\nFROM a").unwrap().value, "x/y");
    assert_eq!(detect_syntax(r#"{"syntax": "json/form", "x": 1}"#).unwrap().value, "json/form");
    assert_eq!(parse_directive("syntax", "// syntax=x\n"), None);
    assert_eq!(parse_directive("syntax", "FROM a\n# syntax=x\n"), None);
    assert_eq!(parse_directive("check", "# syntax=x\n# unknown=1\n# check=a\n"), None);
}

#[test]
fn heredocs() {
    let ast = parse(
        "FROM a\nRUN <<EOF\necho $x\nEOF\nRUN <<-'EOT' cat\n\t\tx\n\tEOT\nRUN 3<<\"A\" <<B\na\nA\nb\nB\n",
    )
    .unwrap();
    let docs: Vec<(&str, bool, bool, u64, &str)> = ast.nodes[1..]
        .iter()
        .flat_map(|n| n.heredocs.iter())
        .map(|h| (h.name.as_str(), h.expand, h.chomp, h.file_descriptor, h.content.as_str()))
        .collect();
    assert_eq!(
        docs,
        [
            ("EOF", true, false, 0, "echo $x\n"),
            ("EOT", false, true, 0, "\t\tx\n"),
            ("A", false, false, 3, "a\n"),
            ("B", true, false, 0, "b\n"),
        ]
    );
    let lines: Vec<(usize, usize)> = ast.nodes.iter().map(|n| (n.start_line, n.end_line)).collect();
    assert_eq!(lines, [(1, 1), (2, 4), (5, 7), (8, 12)]);
    assert_eq!(ast.nodes[2].dump(), r#"run "<<-'EOT' cat""#);
}

#[test]
fn heredocs_only_where_allowed() {
    // CMD cannot take heredocs, nor can exec form: the body lines become instructions.
    assert_eq!(dumps("CMD <<EOF\nx\nEOF"), [r#"cmd "<<EOF""#, r#"x """#, r#"eof """#]);
    assert_eq!(dumps("RUN [\"<<EOF\"]\nEOF"), [r#"run "<<EOF""#, r#"eof """#]);
    let ast = parse("ONBUILD RUN <<EOF\nx\nEOF\nCOPY <<A <<B /d\n1\nA\n2\nB\n").unwrap();
    assert_eq!(ast.nodes[0].heredocs[0].content, "x\n");
    assert_eq!(ast.nodes[1].heredocs.len(), 2);
    // `<<` with spaces before the word is one operator.
    assert_eq!(parse("RUN cat << EOF\nx\nEOF").unwrap().nodes[0].heredocs[0].name, "EOF");
    // A line whose words do not lex has no heredocs.
    assert_eq!(dumps("RUN <<EOF '\nEOF").len(), 2);
}

#[test]
fn heredoc_words() {
    type Case<'a> = (&'a str, Option<(&'a str, bool, bool, u64)>);
    let cases: &[Case<'_>] = &[
        ("<<EOF", Some(("EOF", true, false, 0))),
        ("<<-EOF", Some(("EOF", true, true, 0))),
        ("<<'EOF'", Some(("EOF", false, false, 0))),
        ("<<E\"O\"F", Some(("EOF", false, false, 0))),
        ("10<<EOF", Some(("EOF", true, false, 10))),
        ("99999999999999999999<<EOF", Some(("EOF", true, false, u64::MAX))),
        ("<<", None),
        ("<<<EOF", None),
        ("<<EOF x", None),
        ("x<<EOF", None),
        ("EOF", None),
    ];
    for (word, want) in cases {
        let got = parse_heredoc(word).unwrap();
        let got = got.as_ref().map(|h| (h.name.as_str(), h.expand, h.chomp, h.file_descriptor));
        assert_eq!(got, *want, "{word}");
    }
    assert_eq!(
        parse_heredoc("<<'EOF").unwrap_err().to_string(),
        "failed to process \"'EOF\": unexpected end of statement while looking for matching single-quote"
    );
    assert_eq!(chomp_heredoc_content("\t\ta\n\tb\nc\t\n"), "a\nb\nc\t\n");
}

#[test]
fn parse_errors() {
    let cases: &[(&str, &str, usize, usize)] = &[
        ("", "file with no instructions", 0, 0),
        ("# only\n\n", "file with no instructions", 2, 2),
        ("FROM a\nRUN <<EOF\nx\n", "unterminated heredoc", 2, 3),
        ("RUN [\"a\", 1]", "when using JSON array syntax, arrays must be comprised of strings only", 1, 1),
        (
            "FROM a\nCMD [\"a\", {\"b\": 1}]",
            "when using JSON array syntax, arrays must be comprised of strings only",
            2,
            2,
        ),
        ("FROM a\nENV A", "ENV must have two arguments", 2, 2),
        ("LABEL a", "LABEL must have two arguments", 1, 1),
        ("ENV a=b \\\n c", "Syntax error - can't find = in \"c\". Must be of the form: name=value", 1, 2),
    ];
    for (input, message, start, end) in cases {
        assert_eq!(error(input), ((*message).to_owned(), *start, *end), "{input:?}");
    }
    let long = format!("FROM a\nRUN {}\n", "x".repeat(MAX_LINE));
    assert_eq!(error(&long), ("dockerfile line greater than max allowed size of 65535".to_owned(), 1, 1));
    let fits = format!("RUN {}\n", "x".repeat(MAX_LINE - 5));
    assert!(parse(&fits).is_ok());
}

#[test]
fn flags_are_read_byte_wise_like_upstream() {
    // Each non-ASCII byte of a flag becomes its own Latin-1 character.
    assert_eq!(parse("COPY --chown=é a b").unwrap().nodes[0].flags, ["--chown=Ã©"]);
    assert_eq!(parse("COPY --a='x y' --b=\"\" c d").unwrap().nodes[0].flags, ["--a=x y", "--b="]);
}
