use std::time::Duration;

use super::commands::{ArgDefinition, Device, ShellInlineFile, SourceContent};
use super::mounts::{csv_fields, ram_in_bytes};
use super::*;
use crate::frontend::dockerfile::linter::CheckConfig;
use crate::frontend::dockerfile::parser::{Ast, parse};

/// The stages and the ARGs before the first FROM, without the build checks.
fn parse_stages(ast: &Ast) -> Result<(Vec<Stage>, Vec<ArgCommand>), StageError> {
    let check = CheckConfig { skip_all: true, ..CheckConfig::default() };
    parse_stages_with_checks(ast, &check).map(|s| (s.stages, s.meta_args))
}

fn stages(text: &str) -> (Vec<Stage>, Vec<ArgCommand>) {
    parse_stages(&parse(text).unwrap()).unwrap()
}

/// The single command of a one-stage Dockerfile `FROM base\n<line>`.
fn command(line: &str) -> Instruction {
    let (mut stages, _) = stages(&format!("FROM base\n{line}\n"));
    stages.remove(0).commands.remove(0).instruction
}

fn error(text: &str) -> (String, usize) {
    match parse_stages(&parse(text).unwrap()).unwrap_err() {
        e @ StageError::Instruction(InstructionError { start_line, .. }) => (e.to_string(), start_line),
        e @ StageError::NoStage { start_line, .. } => (e.to_string(), start_line),
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn stages_and_meta_args() {
    let text = "ARG BASE=alpine\nARG V\n# build compiles\nFROM --platform=$BUILDPLATFORM ${BASE} AS Build\nRUN make\n\nfrom build\nCOPY --from=build /a /b\n";
    let (stages, meta) = stages(text);
    assert_eq!(meta.len(), 2);
    assert_eq!(
        meta[0].args[0],
        ArgDefinition { key: "BASE".into(), value: Some("alpine".into()), doc_comment: String::new() }
    );
    assert_eq!(meta[1].args[0].value, None);
    assert_eq!(stages.len(), 2);
    let s = &stages[0];
    assert_eq!(
        (s.name.as_str(), s.base_name.as_str(), s.platform.as_str(), s.orig_cmd.as_str()),
        ("build", "${BASE}", "$BUILDPLATFORM", "FROM")
    );
    assert_eq!((s.start_line, s.end_line, s.doc_comment.as_str()), (4, 4, "compiles"));
    assert_eq!(s.source_code, "FROM --platform=$BUILDPLATFORM ${BASE} AS Build");
    assert_eq!(s.commands.len(), 1);
    assert_eq!((s.commands[0].keyword.as_str(), s.commands[0].start_line), ("RUN", 5));
    assert_eq!((stages[1].name.as_str(), stages[1].orig_cmd.as_str()), ("", "from"));
    // ARGs after the first FROM belong to the stage.
    let (stages, meta) = stages_of("FROM a\nARG X\n");
    assert!(meta.is_empty());
    assert!(matches!(stages[0].commands[0].instruction, Instruction::Arg(_)));
}

fn stages_of(text: &str) -> (Vec<Stage>, Vec<ArgCommand>) {
    stages(text)
}

#[test]
fn run_flags_and_forms() {
    let Instruction::Run(run) = command(
        "RUN --network=none --security=insecure --mount=type=cache,target=/c --device=/dev/fuse,required make all",
    ) else {
        panic!()
    };
    assert_eq!(
        run.cmd,
        ShellDependentCmdLine { cmd_line: strings(&["make all"]), files: vec![], prepend_shell: true }
    );
    assert_eq!((run.network, run.security), (NetworkMode::None, Security::Insecure));
    assert_eq!(run.devices, [Device { name: "/dev/fuse".into(), required: true }]);
    assert_eq!(run.mount_specs, ["type=cache,target=/c"]);
    assert_eq!(run.flags_used, ["device", "mount", "network", "security"]);

    let Instruction::Run(run) = command(r#"RUN ["echo", "a b"]"#) else { panic!() };
    assert_eq!((run.cmd.cmd_line, run.cmd.prepend_shell), (strings(&["echo", "a b"]), false));
    assert_eq!((run.network, run.security), (NetworkMode::Default, Security::Sandbox));

    let Instruction::Run(run) = command("RUN <<-EOF bash\n\techo hi\n\tEOF") else { panic!() };
    assert_eq!(run.cmd.cmd_line, ["<<-EOF bash"]);
    assert_eq!(
        run.cmd.files,
        [ShellInlineFile { name: "EOF".into(), data: "\techo hi\n".into(), chomp: true }]
    );
    let Instruction::Run(run) = command("RUN --device=name=/dev/a,required=false true") else { panic!() };
    assert_eq!(run.devices, [Device { name: "/dev/a".into(), required: false }]);
}

fn mount(spec: &str) -> Result<Mount, String> {
    parse_mount(spec, Some(&mut |v: &str| Ok(v.replace("$DIR", "/expanded")))).map_err(|e| e.to_string())
}

#[test]
fn mounts_with_every_key() {
    let m = mount("type=cache,id=go,target=/root/.cache,sharing=locked,mode=0750,uid=1000,gid=1000,from=builder,source=/src").unwrap();
    assert_eq!(m.mount_type, MountType::Cache);
    assert_eq!(
        (m.cache_id.as_str(), m.target.as_str(), m.from.as_str(), m.source.as_str()),
        ("go", "/root/.cache", "builder", "/src")
    );
    assert_eq!(
        (m.cache_sharing, m.mode, m.uid, m.gid, m.read_only),
        (Some(ShareMode::Locked), Some(0o750), Some(1000), Some(1000), false)
    );

    let m = mount("type=secret,id=npm,env=NPM_TOKEN,required,dst=/run/s").unwrap();
    assert_eq!(
        (m.mount_type, m.required, m.env.as_deref(), m.target.as_str(), m.read_only),
        (MountType::Secret, true, Some("NPM_TOKEN"), "/run/s", true)
    );
    let m = mount("type=ssh,required=true").unwrap();
    assert!(m.required && m.read_only);
    let m = mount("type=tmpfs,destination=/t,size=64m").unwrap();
    assert_eq!((m.size_limit, m.read_only), (64 << 20, false));
    assert_eq!(mount("type=tmpfs,target=/t,size=1.5GiB").unwrap().size_limit, 3 << 29);
    assert_eq!(mount("type=tmpfs,target=/t,size=512 kb").unwrap().size_limit, 512 << 10);
    let m = mount("target=$DIR,src=x,ro=false").unwrap();
    assert_eq!((m.mount_type, m.target.as_str(), m.read_only), (MountType::Bind, "/expanded", false));
    assert!(mount("target=/a,readwrite").is_ok_and(|m| !m.read_only));
    assert!(mount("type=cache,target=/a,readonly").is_ok_and(|m| m.read_only));
    assert!(mount("type=cache,target=/a,rw=0").is_ok_and(|m| m.read_only));
    assert_eq!(
        mount("type=Cache,Target=/a,sharing=PRIVATE").unwrap().cache_sharing,
        Some(ShareMode::Private)
    );
    assert_eq!(mount(r#""target=/a,b",type=bind"#).unwrap().target, "/a,b");
}

#[test]
fn mount_errors() {
    let cases: &[(&str, &str)] = &[
        ("type=bnd", r#"unsupported mount type "bnd" (did you mean bind?)"#),
        ("type=volume", r#"unsupported mount type "volume""#),
        ("type=cache,sharing=sharred", r#"unsupported sharing value "sharred" (did you mean shared?)"#),
        ("tagret=/x", "unexpected key 'tagret' in 'tagret=/x' (did you mean target?)"),
        ("target", "invalid field 'target' must be a key=value pair"),
        ("required,type=secret,id=a", "unexpected key 'required' for mount type 'bind'"),
        ("type=bind,size=1", "unexpected key 'size' for mount type 'bind'"),
        ("type=tmpfs,size=lots", "invalid value for size: lots"),
        ("type=tmpfs,size=1x", "invalid value for size: 1x"),
        ("type=tmpfs,size=-1", "invalid value for size: -1"),
        ("ro=maybe", "invalid value for ro: maybe"),
        ("type=ssh,required=maybe", "invalid value for required: maybe"),
        ("type=cache,mode=9", "invalid value 9 for mode"),
        ("type=cache,uid=-1", "invalid value -1 for uid"),
        ("type=cache,gid=4294967296", "invalid value 4294967296 for gid"),
        ("type=bind,mode=0600", r#"mode not allowed for "bind" type mounts"#),
        ("type=tmpfs,uid=0", r#"uid not allowed for "tmpfs" type mounts"#),
        ("type=secret", "invalid secret mount. one of source, target required"),
        ("type=secret,id=a,from=b", "secret mount should not have a from"),
        ("type=secret,id=a,sharing=locked", "secret mount should not define sharing"),
        ("type=secret,src=a,id=b", "both source and id can't be set"),
        ("type=bind,sharing=locked", "invalid cache sharing set for bind mount"),
        ("", "failed to parse csv mounts: EOF"),
        ("a\"b", "failed to parse csv mounts: parse error on line 1, column 2: bare \" in non-quoted-field"),
        (
            "\"a\"b",
            "failed to parse csv mounts: parse error on line 1, column 3: extraneous or missing \" in quoted-field",
        ),
        (
            "\"ab",
            "failed to parse csv mounts: parse error on line 1, column 2: extraneous or missing \" in quoted-field",
        ),
    ];
    for (spec, want) in cases {
        assert_eq!(mount(spec).unwrap_err(), *want, "{spec}");
    }
    // Without an expander only what upstream checks at parse time fails.
    assert!(parse_mount("type=$T,target=$D", None).is_ok());
    assert_eq!(
        parse_mount("from=$STAGE", None).unwrap_err().to_string(),
        "'from' doesn't support variable expansion, define alias stage instead"
    );
    assert!(parse_mount("from=stage$", None).is_ok());
    // Expansion errors surface as they are.
    let err = parse_mount(
        "target=${X",
        Some(&mut |w: &str| {
            crate::frontend::dockerfile::shell::Lexer::new('\\')
                .process_word(w, &crate::frontend::dockerfile::shell::NoEnv)
        }),
    );
    assert_eq!(
        err.unwrap_err().to_string(),
        "failed to process \"${X\": unsupported modifier (\u{fffd}) in substitution"
    );
}

#[test]
fn run_mounts_expand_with_the_callers_variables() {
    let Instruction::Run(run) = command("RUN --mount=type=$T,target=/c --mount=type=bind,target=/b true")
    else {
        panic!()
    };
    let mounts = run.mounts(&mut |w| Ok(w.replace("$T", "cache"))).unwrap();
    assert_eq!(mounts.iter().map(|m| m.mount_type).collect::<Vec<_>>(), [MountType::Cache, MountType::Bind]);
}

#[test]
fn copy_and_add() {
    let Instruction::Copy(c) = command(
        "COPY --from=build --chown=1:2 --chmod=755 --link --parents --exclude=*.md --exclude=x a b /dst/",
    ) else {
        panic!()
    };
    assert_eq!(c.sources.source_paths, ["a", "b"]);
    assert_eq!(c.sources.dest_path, "/dst/");
    assert_eq!(
        (c.from.as_str(), c.chown.as_str(), c.chmod.as_str(), c.link, c.parents),
        ("build", "1:2", "755", true, true)
    );
    assert_eq!(c.exclude_patterns, ["*.md", "x"]);

    let Instruction::Copy(c) = command("COPY --link=false [\"a b\", \"/c\"]") else { panic!() };
    assert_eq!((c.sources.source_paths, c.link), (strings(&["a b"]), false));

    let Instruction::Copy(c) = command("COPY <<-EOF <<'RAW' src /dst\n\t\tx=$y\n\tEOF\n$z\nRAW") else {
        panic!()
    };
    assert_eq!(c.sources.source_paths, ["src"]);
    assert_eq!(
        c.sources.source_contents,
        [
            SourceContent { path: "EOF".into(), data: "x=$y\n".into(), expand: true },
            SourceContent { path: "RAW".into(), data: "$z\n".into(), expand: false },
        ]
    );

    let Instruction::Add(a) = command(
        "ADD --checksum=sha256:abc --keep-git-dir --unpack=false --chmod=644 --chown=u --link --exclude=e https://x/y.tgz /d",
    ) else {
        panic!()
    };
    assert_eq!(
        (a.checksum.as_str(), a.keep_git_dir, a.unpack, a.chmod.as_str(), a.chown.as_str(), a.link),
        ("sha256:abc", Some(true), Some(false), "644", "u", true)
    );
    assert_eq!(
        (a.sources.source_paths, a.exclude_patterns),
        (strings(&["https://x/y.tgz"]), strings(&["e"]))
    );
    let Instruction::Add(a) = command("ADD a b") else { panic!() };
    assert_eq!((a.keep_git_dir, a.unpack, a.link), (None, None, false));
}

#[test]
fn config_instructions() {
    let cases: Vec<(&str, Instruction)> = vec![
        (
            "ENV A=1 B=\"x y\"",
            Instruction::Env(vec![
                KeyValuePair { key: "A".into(), value: "1".into(), no_delim: false },
                KeyValuePair { key: "B".into(), value: "\"x y\"".into(), no_delim: false },
            ]),
        ),
        (
            "ENV A x y",
            Instruction::Env(vec![KeyValuePair { key: "A".into(), value: "x y".into(), no_delim: true }]),
        ),
        (
            "LABEL a.b=c",
            Instruction::Label(vec![KeyValuePair { key: "a.b".into(), value: "c".into(), no_delim: false }]),
        ),
        ("MAINTAINER Jane", Instruction::Maintainer("Jane".into())),
        ("WORKDIR /app", Instruction::Workdir("/app".into())),
        ("USER 1000:1000", Instruction::User("1000:1000".into())),
        ("STOPSIGNAL SIGINT", Instruction::StopSignal("SIGINT".into())),
        ("STOPSIGNAL --ignored SIGINT", Instruction::StopSignal("SIGINT".into())),
        ("EXPOSE 8080 443/tcp 80", Instruction::Expose(strings(&["443/tcp", "80", "8080"]))),
        ("VOLUME /a  /b", Instruction::Volume(strings(&["/a", "/b"]))),
        ("VOLUME [\"/data\"]", Instruction::Volume(strings(&["/data"]))),
        ("SHELL [\"/bin/bash\", \"-c\"]", Instruction::Shell(strings(&["/bin/bash", "-c"]))),
        (
            "CMD [\"run\"]",
            Instruction::Cmd(ShellDependentCmdLine {
                cmd_line: strings(&["run"]),
                files: vec![],
                prepend_shell: false,
            }),
        ),
        (
            "CMD serve  --port 1",
            Instruction::Cmd(ShellDependentCmdLine {
                cmd_line: strings(&["serve  --port 1"]),
                files: vec![],
                prepend_shell: true,
            }),
        ),
        (
            "CMD []",
            Instruction::Cmd(ShellDependentCmdLine { cmd_line: vec![], files: vec![], prepend_shell: false }),
        ),
        (
            "ENTRYPOINT []",
            Instruction::Entrypoint(ShellDependentCmdLine {
                cmd_line: vec![],
                files: vec![],
                prepend_shell: false,
            }),
        ),
        (
            "ENTRYPOINT exec app",
            Instruction::Entrypoint(ShellDependentCmdLine {
                cmd_line: strings(&["exec app"]),
                files: vec![],
                prepend_shell: true,
            }),
        ),
        ("ONBUILD   RUN make", Instruction::Onbuild("RUN make".into())),
        ("onbuild copy --from=x a b", Instruction::Onbuild("copy --from=x a b".into())),
        ("ONBUILD RUN <<EOF\necho\nEOF", Instruction::Onbuild("RUN <<EOF\necho\nEOF".into())),
        (
            "ARG A B=2 C=",
            Instruction::Arg(ArgCommand {
                args: vec![
                    ArgDefinition { key: "A".into(), value: None, doc_comment: String::new() },
                    ArgDefinition { key: "B".into(), value: Some("2".into()), doc_comment: String::new() },
                    ArgDefinition { key: "C".into(), value: Some(String::new()), doc_comment: String::new() },
                ],
                start_line: 2,
                end_line: 2,
            }),
        ),
    ];
    for (line, want) in cases {
        assert_eq!(command(line), want, "{line}");
    }
}

#[test]
fn healthchecks() {
    let Instruction::Healthcheck(h) = command(
        "HEALTHCHECK --interval=5s --timeout=1m30s --start-period=1.5h --start-interval=250ms --retries=3 CMD curl -f http://x/",
    ) else {
        panic!()
    };
    assert_eq!(h.test, ["CMD-SHELL", "curl -f http://x/"]);
    assert_eq!(
        (h.interval, h.timeout, h.start_period, h.start_interval, h.retries),
        (
            Duration::from_secs(5),
            Duration::from_secs(90),
            Duration::from_secs(5400),
            Duration::from_millis(250),
            3
        )
    );
    let Instruction::Healthcheck(h) = command("HEALTHCHECK CMD [\"/probe\", \"-q\"]") else { panic!() };
    assert_eq!((h.test, h.interval), (strings(&["CMD", "/probe", "-q"]), Duration::ZERO));
    let Instruction::Healthcheck(h) = command("HEALTHCHECK --bogus NONE") else { panic!() };
    assert_eq!(h.test, ["NONE"]);
    let Instruction::Healthcheck(h) = command("HEALTHCHECK --interval=0 --timeout=1.5us500ms CMD x") else {
        panic!()
    };
    assert_eq!((h.interval, h.timeout), (Duration::ZERO, Duration::from_nanos(500_001_500)));
    // Flags are read byte-wise upstream, so `µs` arrives mangled and fails there too.
    let (message, _) = error("FROM a\nHEALTHCHECK --timeout=1µs CMD x");
    assert!(
        message.ends_with(r#"unknown unit "\xc3\x82\xc2\xb5s" in duration "1\xc3\x82\xc2\xb5s""#),
        "{message}"
    );
}

#[test]
fn instruction_errors() {
    let cases: &[(&str, &str, usize)] = &[
        ("FROM a\nRUNN x", "unknown instruction: RUNN (did you mean RUN?)", 2),
        ("FROM a\nform x", "unknown instruction: form (did you mean from?)", 2),
        ("FROM a\nBOGUS x", "unknown instruction: BOGUS", 2),
        ("RUN x", "no build stage in current context", 1),
        ("FROM a\nRUN --mnt=x y", "unknown flag: --mnt (did you mean mount?)", 2),
        ("FROM a\nRUN --mount x", "missing a value on flag: --mount", 2),
        ("FROM a\nRUN --network=bad x", "invalid network mode \"bad\"", 2),
        ("FROM a\nRUN --network= x", "invalid network mode \"\"", 2),
        ("FROM a\nRUN --security=x x", "security \"x\" is not valid", 2),
        ("FROM a\nRUN --network=none --network=host x", "duplicate flag specified: --network", 2),
        ("FROM a\nRUN --device=a,b x", "invalid field 'b' must be a key=value pair", 2),
        ("FROM a\nRUN --device=name=a,name=b x", "device name already set to a", 2),
        ("FROM a\nRUN --device=a,foo=b x", "unexpected key 'foo' in 'foo=b'", 2),
        (
            "FROM a\nRUN --mount=from=$X x",
            "'from' doesn't support variable expansion, define alias stage instead",
            2,
        ),
        (
            "FROM a\nCOPY a",
            "COPY requires at least two arguments, but only one was provided. Destination could not be determined",
            2,
        ),
        (
            "FROM a\nADD a",
            "ADD requires at least two arguments, but only one was provided. Destination could not be determined",
            2,
        ),
        ("FROM a\nCOPY a <<EOF\nx\nEOF", "COPY cannot accept a heredoc as a destination", 2),
        ("FROM a\nCOPY --link=maybe a b", "expecting boolean value for flag --link, not: maybe", 2),
        ("FROM a\nCOPY --link= a b", "missing a value on flag: --link", 2),
        ("FROM a\nCOPY --chown a b", "missing a value on flag: --chown", 2),
        ("FROM a\nCOPY --checksum=x a b", "unknown flag: --checksum", 2),
        ("FROM a\nENV", "ENV requires at least one argument", 2),
        ("FROM a\nENV =x", "ENV names can not be blank", 2),
        ("FROM a\nENV --x a=b", "unknown flag: --x", 2),
        ("FROM a\nLABEL", "LABEL requires at least one argument", 2),
        ("ARG", "ARG requires at least one argument", 1),
        ("ARG =x", "ARG names can not be blank", 1),
        ("FROM a\nMAINTAINER", "MAINTAINER requires exactly one argument", 2),
        ("FROM a\nWORKDIR", "WORKDIR requires exactly one argument", 2),
        ("FROM a\nUSER", "USER requires exactly one argument", 2),
        ("FROM a\nSTOPSIGNAL", "STOPSIGNAL requires exactly one argument", 2),
        ("FROM a\nEXPOSE", "EXPOSE requires at least one argument", 2),
        ("FROM a\nVOLUME", "VOLUME requires at least one argument", 2),
        ("FROM a\nVOLUME [\"/a\", \" \"]", "VOLUME specified can not be an empty string", 2),
        ("FROM a\nSHELL sh -c", "SHELL requires the arguments to be in JSON form", 2),
        ("FROM a\nSHELL []", "SHELL requires at least one argument", 2),
        ("FROM a\nONBUILD", "ONBUILD requires at least one argument", 2),
        ("FROM a\nONBUILD ONBUILD RUN x", "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed", 2),
        ("FROM a\nONBUILD from x", "FROM isn't allowed as an ONBUILD trigger", 2),
        ("FROM a\nONBUILD MAINTAINER x", "MAINTAINER isn't allowed as an ONBUILD trigger", 2),
        ("FROM a\nHEALTHCHECK", "HEALTHCHECK requires at least one argument", 2),
        ("FROM a\nHEALTHCHECK NONE x", "HEALTHCHECK NONE takes no arguments", 2),
        ("FROM a\nHEALTHCHECK CMD", "Missing command after HEALTHCHECK CMD", 2),
        ("FROM a\nHEALTHCHECK CMD []", "Missing command after HEALTHCHECK CMD", 2),
        ("FROM a\nHEALTHCHECK TEST x", "Unknown type \"TEST\" in HEALTHCHECK (try CMD)", 2),
        ("FROM a\nHEALTHCHECK --interval=1ns CMD x", "Interval \"interval\" cannot be less than 1ms", 2),
        ("FROM a\nHEALTHCHECK --timeout=-5s CMD x", "Interval \"timeout\" cannot be less than 1ms", 2),
        ("FROM a\nHEALTHCHECK --interval=x CMD x", "time: invalid duration \"x\"", 2),
        ("FROM a\nHEALTHCHECK --interval=5 CMD x", "time: missing unit in duration \"5\"", 2),
        ("FROM a\nHEALTHCHECK --interval=5d CMD x", "time: unknown unit \"d\" in duration \"5d\"", 2),
        (
            "FROM a\nHEALTHCHECK --interval=5é CMD x",
            "time: unknown unit \"\\xc3\\x83\\xc2\\xa9\" in duration \"5\\xc3\\x83\\xc2\\xa9\"",
            2,
        ),
        ("FROM a\nHEALTHCHECK --retries=x CMD x", "strconv.ParseInt: parsing \"x\": invalid syntax", 2),
        (
            "FROM a\nHEALTHCHECK --retries=3000000000 CMD x",
            "strconv.ParseInt: parsing \"3000000000\": value out of range",
            2,
        ),
        ("FROM a\nHEALTHCHECK --retries=-1 CMD x", "--retries cannot be negative (-1)", 2),
        ("FROM", "FROM requires either one or three arguments", 1),
        ("FROM a b", "FROM requires either one or three arguments", 1),
        (
            "FROM a AS 1x",
            "invalid name for build stage: \"1x\", name can't start with a number or contain symbols",
            1,
        ),
        (
            "FROM a AS b$c",
            "invalid name for build stage: \"b$c\", name can't start with a number or contain symbols",
            1,
        ),
        ("FROM --bad a", "unknown flag: --bad", 1),
        (
            "FROM a\n\nRUN \\\n --mount=type=cache,target=/a,sharing=locked \\\n --network=nope x",
            "invalid network mode \"nope\"",
            3,
        ),
    ];
    for (text, message, line) in cases {
        let (got, got_line) = error(text);
        let want = if *message == "no build stage in current context" {
            (*message).to_owned()
        } else {
            format!("dockerfile parse error on line {line}: {message}")
        };
        assert_eq!((got, got_line), (want, *line), "{text:?}");
    }
}

#[test]
fn parse_command_rejects_stages() {
    let ast = parse("RUN echo\nFROM a").unwrap();
    assert!(matches!(parse_command(&ast.nodes[0]).unwrap().instruction, Instruction::Run(_)));
    assert_eq!(
        parse_command(&ast.nodes[1]).unwrap_err().to_string(),
        "*instructions.Stage is not a command type"
    );
    // Only a hand-made node can carry a flag without dashes.
    let mut node = parse("COPY a b").unwrap().nodes.remove(0);
    node.flags = vec!["-x".into()];
    assert_eq!(parse_command(&node).unwrap_err().to_string(), "arg should start with -- : -x");
    let err = parse_command(&parse("COPY x").unwrap().nodes[0]).unwrap_err();
    assert_eq!(
        (err.to_string().as_str(), err.start_line),
        (
            "COPY requires at least two arguments, but only one was provided. Destination could not be determined",
            1
        )
    );
}

fn warnings(text: &str, check: &CheckConfig) -> Vec<(String, String, usize)> {
    parse_stages_with_checks(&parse(text).unwrap(), check)
        .unwrap()
        .warnings
        .into_iter()
        .map(|w| (w.rule.name.to_owned(), w.message, w.start_line))
        .collect()
}

fn w(rule: &str, message: &str, line: usize) -> (String, String, usize) {
    (rule.to_owned(), message.to_owned(), line)
}

#[test]
fn build_checks() {
    let all = CheckConfig { experimental_all: true, ..CheckConfig::default() };
    let text = "FROM a AS Build\nMAINTAINER me\nfrom b as x\nFROM c as y\n# wrong words\nARG A\nFROM d AS scratch\nFROM e AS x\n";
    assert_eq!(
        warnings(text, &all),
        [
            w("StageNameCasing", "Stage name 'Build' should be lowercase", 1),
            w("MaintainerDeprecated", "Maintainer instruction is deprecated in favor of using label", 2),
            w("FromAsCasing", "'as' and 'FROM' keywords' casing do not match", 4),
            w(
                "InvalidDefinitionDescription",
                "Comment for ARG should follow the format: `# A <description>`",
                6
            ),
            w(
                "ReservedStageName",
                "Stage name should not use the same name as reserved stage \"scratch\"",
                7
            ),
            w("DuplicateStageName", "Duplicate stage name \"x\", stage names should be unique", 8),
            w(
                "ConsistentInstructionCasing",
                "Command 'from' should match the case of the command majority (uppercase)",
                3
            ),
        ]
    );
    // Experimental checks need opting in; skips apply globally and per instruction.
    let default = CheckConfig::default();
    assert!(!warnings(text, &default).iter().any(|w| w.0 == "InvalidDefinitionDescription"));
    let skip = CheckConfig::parse("skip=StageNameCasing,MaintainerDeprecated").unwrap();
    assert!(!warnings(text, &skip).iter().any(|w| w.0 == "StageNameCasing" || w.0 == "MaintainerDeprecated"));
    let text = "FROM a\n# check=skip=MaintainerDeprecated\nMAINTAINER me\nMAINTAINER you\n";
    assert_eq!(
        warnings(text, &default),
        [w("MaintainerDeprecated", "Maintainer instruction is deprecated in favor of using label", 4)]
    );
    // A matching description passes, and plain parse_stages reports nothing.
    assert!(warnings("# A the a\nARG A\n# b builds\nFROM x AS b\n", &all).is_empty());
    assert_eq!(stages("# stage doc\nFROM a AS stage\n").0[0].doc_comment, "doc");
}

#[test]
fn sizes_and_csv_parse_like_go() {
    assert_eq!(ram_in_bytes("1k"), Some(1024));
    assert_eq!(ram_in_bytes("2 MiB"), Some(2 << 20));
    assert_eq!(ram_in_bytes("10b"), Some(10));
    assert_eq!(ram_in_bytes("1kbb"), None);
    assert_eq!(ram_in_bytes("k"), None);
    assert_eq!(csv_fields("a,,\"b,\"\"c\"\"\",").unwrap(), ["a", "", "b,\"c\"", ""]);
}
