//! Errors and lint checks.

use super::*;

#[tokio::test]
async fn errors_name_the_dockerfile_line() {
    type Case<'a> = (&'a str, &'a str, Option<(usize, usize)>);
    let cases: &[Case<'_>] = &[
        ("", "the Dockerfile cannot be empty", None),
        ("# only a comment\n", "Dockerfile:1: file with no instructions", Some((1, 1))),
        ("ARG A=1\n", "dockerfile contains no stages to build", None),
        (
            "FROM busybox\nRUNN x\n",
            "Dockerfile:2: dockerfile parse error on line 2: unknown instruction: RUNN (did you mean RUN?)",
            Some((2, 2)),
        ),
        ("ARG X\nFROM ${X}\n", "Dockerfile:2: base name (${X}) should not be blank", Some((2, 2))),
        ("FROM Busybox\n", "Dockerfile:1: failed to parse stage name \"Busybox\"", Some((1, 1))),
        (
            "FROM busybox\n\nFROM nosuchimage\n",
            "Dockerfile:3: nosuchimage: failed to resolve source metadata for docker.io/library/nosuchimage:latest: not found",
            Some((3, 3)),
        ),
        (
            "FROM busybox\nCOPY --from=busybx /a /a\n",
            "Dockerfile:2: busybx: failed to resolve source metadata for docker.io/library/busybx:latest: not found (did you mean busybox?)",
            Some((2, 2)),
        ),
        (
            "FROM busybox AS a\nCOPY --from=b /x /x\nFROM busybox AS b\nCOPY --from=a /y /y\n",
            "Dockerfile:2: circular dependency detected on stage: a",
            Some((2, 2)),
        ),
        (
            "FROM busybox\nEXPOSE 80/xyz\n",
            "Dockerfile:2: invalid port: \"80/xyz\": invalid proto: xyz",
            Some((2, 2)),
        ),
        ("FROM busybox\nEXPOSE 70000\n", "Dockerfile:2: invalid containerPort: 70000", Some((2, 2))),
        (
            "FROM busybox\nVOLUME $NOTHING\n",
            "Dockerfile:2: VOLUME specified can not be an empty string",
            Some((2, 2)),
        ),
        (
            "FROM busybox\nRUN echo ${X:?must be set}\nENV A=${B:?nope}\n",
            "Dockerfile:3: failed to process \"${B:?nope}\": B: nope",
            Some((3, 3)),
        ),
        (
            "FROM --platform=$NOPE busybox\n",
            "Dockerfile:1: empty platform value from expression $NOPE",
            Some((1, 1)),
        ),
        (
            "FROM --platform=linux/a/b/c/d busybox\n",
            "Dockerfile:1: failed to parse platform linux/a/b/c/d",
            Some((1, 1)),
        ),
    ];
    for (df, want, lines) in cases {
        let err = conv_err(df).await;
        assert!(err.to_string().starts_with(want), "{df:?}\n got: {err}\nwant: {want}");
        assert_eq!(err.lines, *lines, "{df:?}");
    }
}

#[tokio::test]
async fn conversion_checks_are_reported_with_lines() {
    let c = conv("FROM busybox\nARG API_TOKEN\nENV foo bar\nWORKDIR app\nENV X=$UNDEFINED_X\nCMD a\nCMD b\n")
        .await;
    let found: Vec<(&str, String, usize)> =
        c.warnings.iter().map(|w| (w.rule.name, w.message.clone(), w.start_line)).collect();
    let expect = [
        (
            "SecretsUsedInArgOrEnv",
            "Do not use ARG or ENV instructions for sensitive data (ARG \"API_TOKEN\")",
            2,
        ),
        (
            "LegacyKeyValueFormat",
            "\"ENV key=value\" should be used instead of legacy \"ENV key value\" format",
            3,
        ),
        (
            "WorkdirRelativePath",
            "Relative workdir \"app\" can have unexpected results if the base image changes",
            4,
        ),
        ("UndefinedVar", "Usage of undefined variable '$UNDEFINED_X'", 5),
        (
            "JSONArgsRecommended",
            "JSON arguments recommended for CMD to prevent unintended behavior related to OS signals",
            6,
        ),
        (
            "MultipleInstructionsDisallowed",
            "Multiple CMD instructions should not be used in the same stage because only the last one will be used",
            6,
        ),
    ];
    for (rule, message, line) in expect {
        assert!(found.contains(&(rule, message.to_owned(), line)), "missing {rule} at {line}: {found:#?}");
    }
    let c = conv("FROM --platform=linux/amd64 busybox\nRUN echo $TARGETARC\n").await;
    assert!(rules(&c).contains(&"FromPlatformFlagConstDisallowed"));
    let c = conv("FROM --platform=$TARGETPLATFORM busybox AS b\n").await;
    assert!(rules(&c).contains(&"RedundantTargetPlatform"));
    let c = conv("FROM busybox${VERSON}\n").await;
    let w = c.warnings.iter().find(|w| w.rule.name == "UndefinedArgInFrom").unwrap();
    assert_eq!(w.message, "FROM argument 'VERSON' is not declared");
}

#[tokio::test]
async fn checks_can_be_skipped_or_turned_into_errors() {
    let c = conv("# check=skip=JSONArgsRecommended\nFROM busybox\nCMD a\n").await;
    assert!(!rules(&c).contains(&"JSONArgsRecommended"));
    let err = conv_err("# check=error=true\nFROM busybox\nCMD a\n").await;
    assert_eq!(err.to_string(), "lint violation found for rules: JSONArgsRecommended");
    let mut o = opts();
    o.dockerignore = vec!["secret.txt".into()];
    let c = conv_with("FROM busybox\nCOPY secret.txt /\n", &o).await;
    let w = c.warnings.iter().find(|w| w.rule.name == "CopyIgnoredFile").unwrap();
    assert_eq!(w.message, "Attempting to Copy file \"secret.txt\" that is excluded by .dockerignore");
    let c = conv("FROM busybox\nEXPOSE 127.0.0.1:80:80/TCP\n").await;
    assert!(rules(&c).contains(&"ExposeInvalidFormat") && rules(&c).contains(&"ExposeProtoCasing"));
}

#[tokio::test]
async fn pull_mode_and_context_name_are_honoured() {
    let mut o = opts();
    o.image_resolve_mode = ResolveMode::ForcePull;
    o.context_name = "ctx".into();
    o.shared_key_hint = Some("hint".into());
    let g = graph(&conv_with("FROM busybox\nCOPY a /a\n", &o).await);
    let from = g.vertices.iter().find(|v| source_is(v, "docker-image://")).unwrap();
    assert_eq!(source(from).attrs["image.resolvemode"], "pull");
    let ctx = context_source(&g);
    assert_eq!((ctx.identifier.as_str(), ctx.attrs["local.sharedkeyhint"].as_str()), ("local://ctx", "hint"));
}

/// What buildkitd's own frontend (dockerfile2llb v0.29, run with an
/// equivalent fake resolver and the same context options) produced for these
/// Dockerfiles: the digest of the result op, which covers the bytes of every
/// op below it, and the sha256 of the image config JSON.
#[tokio::test]
async fn results_match_buildkitd_byte_for_byte() {
    struct Golden {
        dockerfile: &'static str,
        target_platform: Option<&'static str>,
        build_args: &'static [(&'static str, &'static str)],
        labels: &'static [(&'static str, &'static str)],
        cache_ns: &'static str,
        result: &'static str,
        image_config: &'static str,
    }
    let cases = [
        Golden {
            dockerfile: "FROM busybox\nRUN echo hi\n",
            target_platform: None,
            build_args: &[],
            labels: &[],
            cache_ns: "",
            result: "sha256:26895b52860fabeb30f47c6d896293b7c4b75fc88de504251e92c08feeec0514",
            image_config: "609c7d1bb7f91295ec56a6c2787f03d91ac44bbe77408ab003ca29677034b1f4",
        },
        Golden {
            dockerfile: "FROM busybox AS builder\nRUN make\nFROM alpine\nCOPY --from=builder /out /out\n",
            target_platform: None,
            build_args: &[],
            labels: &[],
            cache_ns: "",
            result: "sha256:cf553d866dcfb64a55da088b0a602288adb24e9a11e9ab88e9f8c83973998d74",
            image_config: "71b4b5a7b6cd6f18cb28f62f936b86570d5d70b8c355f66a5980d684eca9f1ed",
        },
        Golden {
            dockerfile: "FROM busybox\nRUN --mount=type=cache,target=/root/.cache/ --mount=type=cache,id=go,target=/go,sharing=locked go build\n",
            target_platform: None,
            build_args: &[],
            labels: &[],
            cache_ns: "ns",
            result: "sha256:c4a0226592ea8a1dd3cfd258389056d5b066ee8804dec427b638067bb286361c",
            image_config: "6e818d013a2e7f17230a6db5289f75be02f0f7c38fc29f969364c5cdc905c0dc",
        },
        Golden {
            dockerfile: "FROM busybox\nRUN --mount=type=secret,id=npm --mount=type=secret,id=tok,env=TOKEN,required --mount=type=secret,source=aws,target=/root/.aws/credentials,mode=0440,uid=5 echo $TOKEN\n",
            target_platform: None,
            build_args: &[],
            labels: &[],
            cache_ns: "",
            result: "sha256:0766ac48cd38813aae5c86a0f0e28ad18bca5a681ac27f266a978bf3c9ae8f64",
            image_config: "fdc86b0ef50b25dbfe2def2f43e97daab2f112dc0c3de4649118eb4c1e060ab7",
        },
        Golden {
            dockerfile: "FROM busybox\nRUN <<EOF\necho a\necho b\nEOF\nRUN <<-SCRIPT\n\t#!/usr/bin/env python3\n\tprint(1)\n\tSCRIPT\nRUN cat <<EOF > /x\nhello\nEOF\n",
            target_platform: None,
            build_args: &[],
            labels: &[],
            cache_ns: "",
            result: "sha256:187cd240faab4f8ba094a89644202ef5b63b0041caf62bad717d8679a0923774",
            image_config: "01ef252c31b8ded0c225f223d7266e89d0916b5be84f78d8976575aa58dbfa88",
        },
        Golden {
            dockerfile: "FROM busybox\nADD --checksum=sha256:abababababababababababababababababababababababababababababababab https://example.com/dl/tool.tar.gz?x=1 /usr/local/bin/\nADD --chmod=755 https://example.com/ /x\n",
            target_platform: None,
            build_args: &[],
            labels: &[],
            cache_ns: "",
            result: "sha256:ec2d7eac433d15cfbaae9352ff87dac494861d9953a54eab6d2fe86b24684ac4",
            image_config: "cc0a0d4d70c5770109d37539e66d16e2b2e0c13198d2916ec7d10b9a7b5dfd09",
        },
        Golden {
            dockerfile: "ARG VERSION=1.36\nFROM busybox:${VERSION}\nARG FOO\nARG BAZ=$FOO-z\nRUN echo $FOO $BAZ\nARG VERSION\nRUN echo $VERSION\n",
            target_platform: None,
            build_args: &[("FOO", "bar"), ("UNUSED", "x")],
            labels: &[],
            cache_ns: "",
            result: "sha256:e846bbaf17c32579d67addfef059e4afb55dd9a898d306a7d4840c73b0504648",
            image_config: "4e8fb4b61b570b621f91d14c8654cdeaa4ca3b4f510b9798b75560c51620455d",
        },
        Golden {
            dockerfile: "FROM --platform=$BUILDPLATFORM busybox\nARG TARGETPLATFORM TARGETARCH BUILDPLATFORM\nRUN echo $TARGETARCH\n",
            target_platform: Some("linux/arm64"),
            build_args: &[],
            labels: &[],
            cache_ns: "",
            result: "sha256:449fa7067f0813ad3233e5280a633b62ee7870342f8935cdb9cf3109e6aaa4fe",
            image_config: "1e4844f0a091fe160f40afad8336b3e77199842dfa69ac8f9f103e63fcafc085",
        },
        Golden {
            dockerfile: "FROM triggers\nRUN echo own\n",
            target_platform: None,
            build_args: &[],
            labels: &[],
            cache_ns: "",
            result: "sha256:b2d84ecd7e7d39ea0a395adae45780c2394a7c3c41238d3f8d0d425661bdea3c",
            image_config: "ccd61b449d15e872243b15755cd683551cef49bb225c77899f9e70398ac8ef74",
        },
        Golden {
            dockerfile: "FROM busybox\nRUN --mount=type=bind,from=alpine,target=/alp ls /alp\n",
            target_platform: None,
            build_args: &[],
            labels: &[],
            cache_ns: "",
            result: "sha256:c6d2bd7d835cdb106f2e6e48e2ecb943ae676e4445f6380fa1ef7dd3fc9fac61",
            image_config: "57a94a0d1920cdd9459e58537d1c5db96d40bc99b00f6dc3b8016221fee8fdd6",
        },
        Golden {
            dockerfile: "FROM busybox\nADD --chown=app:app git@github.com:moby/buildkit.git#main /src\nADD --checksum=abc123 https://github.com/moby/buildkit.git /b\n",
            target_platform: None,
            build_args: &[],
            labels: &[],
            cache_ns: "",
            result: "sha256:19c6856beec4914c36d39961bf1f8d00335d11dd37b4fb15eaad5bd16a9b3003",
            image_config: "13e79555a2c8087b36db31b0c8d5c3c1816279f0cb69590f64acec3a02c74981",
        },
        Golden {
            dockerfile: "FROM busybox AS build\nRUN make\nFROM busybox\nRUN --mount=from=build,source=/out,target=/in --mount=target=/src,rw ls /in /src\n",
            target_platform: None,
            build_args: &[],
            labels: &[],
            cache_ns: "",
            result: "sha256:dc596a361a43d48227359dc0b251eca13ef954da6a6c9899a41ac3636866b30c",
            image_config: "0234038a44f6017dd75c57c37365f94725665d2ee0c0260436c2366648289511",
        },
        Golden {
            dockerfile: "FROM busybox\nCOPY --parents --exclude=*.tmp src/./app/main.go logs/*.txt /dst/\n",
            target_platform: None,
            build_args: &[],
            labels: &[],
            cache_ns: "",
            result: "sha256:fd59e09e4104420ebd01b62ef9c966b071a1cd95fea750761311bf8416ecaa53",
            image_config: "6a21267f2b801f9fd95f971e5120e1e08077b9e8b3143968846decdfe3ec963b",
        },
        Golden {
            dockerfile: "FROM busybox\nRUN --mount=type=tmpfs,target=/t --mount=type=cache,target=/var/cache/apt,sharing=private true\n",
            target_platform: None,
            build_args: &[],
            labels: &[],
            cache_ns: "",
            result: "sha256:8ed3b11086f651cb036a62cd3b9dd3a67f7775554fbd9852e8a16437ae26434c",
            image_config: "45bc6393ffb9c4ea2e38de38b1b1e15f4f02f1447c15cb46bf0d04a15166d539",
        },
        Golden {
            dockerfile: "FROM busybox\nARG U=1000\nCOPY --chown=$U:$U --chmod=0755 a /b\nCOPY --chmod=u+x,g-w c /d\nCOPY --chown=app:grp e /f\n",
            target_platform: None,
            build_args: &[],
            labels: &[],
            cache_ns: "",
            result: "sha256:1e9521e323d45da25abf85a91fd59e1079299d2d1b4c34a0be7510c98429b35c",
            image_config: "34edfdd6b39252409548e2cde90edc56ed5178c6909202efc91eb73759d991c2",
        },
        Golden {
            dockerfile: "FROM busybox\nENV A=1 B=${A}2\nENV A=3\nWORKDIR /w/$B\nUSER app:staff\nWORKDIR sub\nWORKDIR /\nRUN echo $A\n",
            target_platform: None,
            build_args: &[],
            labels: &[],
            cache_ns: "",
            result: "sha256:19d3bfd2edc5d339e696399177c83196ed64a9d741b46adf14649df21bef63c2",
            image_config: "fc28daba0cfe2df4698ae11c56f1070176cfc44ba3185791c57fec00ca4c5b5f",
        },
        Golden {
            dockerfile: "FROM app\nCMD echo hi\nLABEL a=b \"c d\"=e\nEXPOSE 80 443/udp 8000-8001/TCP\nVOLUME /data /logs\nSTOPSIGNAL SIGTERM\nHEALTHCHECK --interval=5s --retries=3 CMD curl -f http://x/\nMAINTAINER me\n",
            target_platform: None,
            build_args: &[],
            labels: &[("org.opencontainers.image.title", "t")],
            cache_ns: "",
            result: "sha256:5fb487384fecd333b666e1fdbadeac31c36a5948f9ffdb68aeec1bc9612afdab",
            image_config: "d1527e8dd3ac734ed7f71e09b237f7870750ed4f915c5d527c85ceff0f145582",
        },
    ];
    for case in cases {
        let mut o = opts();
        o.target_platform = case.target_platform.map(|p| Platform::parse(p).unwrap());
        o.build_args = case.build_args.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        o.labels = case.labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        o.cache_id_namespace = case.cache_ns.to_owned();
        let c = conv_with(case.dockerfile, &o).await;
        let ret = pb::Op::decode(c.definition.def.last().unwrap().as_slice()).unwrap();
        assert_eq!(ret.inputs[0].digest, case.result, "{}", case.dockerfile);
        assert_eq!(hex::encode(Sha256::digest(&c.image_config)), case.image_config, "{}", case.dockerfile);
    }
}

/// Whatever the Dockerfile, conversion returns a result or an error; it
/// never panics.
#[tokio::test]
async fn arbitrary_dockerfiles_never_panic() {
    const WORDS: &[&str] = &[
        "FROM busybox",
        "FROM scratch",
        "FROM a",
        "FROM nope",
        "AS a",
        "AS b",
        "RUN x",
        "COPY ",
        "ADD ",
        "ENV ",
        "ARG ",
        "WORKDIR ",
        "USER ",
        "ONBUILD ",
        "CMD ",
        "ENTRYPOINT ",
        "EXPOSE ",
        "VOLUME ",
        "LABEL ",
        "SHELL ",
        "HEALTHCHECK ",
        "STOPSIGNAL ",
        "--from=a ",
        "--from=0 ",
        "--from=busybox ",
        "--link ",
        "--parents ",
        "--chmod=",
        "--chown=",
        "--mount=",
        "type=cache,target=",
        "type=secret,",
        "type=ssh,",
        "type=tmpfs,",
        "from=a,",
        "source=",
        "target=",
        "--network=none ",
        "--platform=",
        "$BUILDPLATFORM",
        "${X:-y}",
        "$",
        "{",
        "}",
        "/",
        ".",
        "./",
        "/./",
        "*",
        "a",
        "b",
        "=",
        "\"",
        "'",
        "\\",
        "<<EOF",
        "EOF",
        "#!/bin/sh",
        "https://h/x",
        "git@h:a/b.git",
        "https://h/r.git#main",
        "80/tcp",
        "1-3",
        ":",
        ",",
        "[\"a\"]",
        "[]",
        "\n",
        " ",
        "\t",
    ];
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let resolver = FakeResolver::default();
    let mut o = opts();
    o.target_platform = Some(arm64());
    o.multi_platform = true;
    o.dockerignore = vec!["*.md".into()];
    for _ in 0..1500 {
        let mut text = String::from("FROM busybox AS a\n");
        for _ in 0..next(30) {
            text.push_str(WORDS[next(WORDS.len())]);
        }
        text.push('\n');
        let _ = convert(&text, &o, &resolver).await;
    }
}
