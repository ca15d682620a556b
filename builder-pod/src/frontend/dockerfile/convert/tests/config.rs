//! WORKDIR, USER and the image config.

use super::*;

#[tokio::test]
async fn workdir_creates_its_directory_with_parents_and_the_user() {
    let c = conv("FROM busybox\nUSER app:staff\nWORKDIR /app/data\nWORKDIR sub\nWORKDIR /\nRUN pwd\n").await;
    let g = graph(&c);
    let mk = by_name(&g, "[2/5] WORKDIR /app/data");
    let Some(Action::Mkdir(m)) = &file(mk).actions[0].action else { panic!() };
    assert_eq!((m.path.as_str(), m.mode, m.make_parents), ("/app/data", 0o755, true));
    let owner = m.owner.as_ref().unwrap();
    assert_eq!(
        owner.user.as_ref().unwrap().user,
        Some(pb::user_opt::User::ByName(pb::NamedUserOpt { name: "app".into(), input: 0 }))
    );
    by_name(&g, "[3/5] WORKDIR sub");
    // `WORKDIR /` makes no directory and takes no number, though it counts in the total.
    let run = by_name(&g, "[4/5] RUN pwd");
    assert_eq!((meta(run).cwd.as_str(), meta(run).user.as_str()), ("/", "app:staff"));
    let cfg = config(&c);
    assert_eq!(
        (cfg["config"]["WorkingDir"].as_str(), cfg["config"]["User"].as_str()),
        (Some("/"), Some("app:staff"))
    );
    let history: Vec<(String, bool)> = cfg["history"]
        .as_array()
        .unwrap()
        .iter()
        .skip(2)
        .map(|h| (h["created_by"].as_str().unwrap().to_owned(), h["empty_layer"].as_bool().unwrap_or(false)))
        .collect();
    assert_eq!(
        history,
        [
            ("USER app:staff".to_owned(), true),
            ("WORKDIR /app/data".to_owned(), false),
            ("WORKDIR /app/data/sub".to_owned(), false),
            ("WORKDIR /".to_owned(), true),
            ("RUN /bin/sh -c pwd # buildkit".to_owned(), false),
        ]
    );
}

#[tokio::test]
async fn cmd_entrypoint_and_metadata_instructions_fill_the_config() {
    let df = "FROM app\nCMD echo hi\nLABEL a=b \"c d\"=e\nEXPOSE 80 443/udp 8000-8001/TCP\nVOLUME /data /logs\nSTOPSIGNAL SIGTERM\nHEALTHCHECK --interval=5s --retries=3 CMD curl -f http://x/\nMAINTAINER me\n";
    let mut o = opts();
    o.labels.insert("org.opencontainers.image.title".into(), "t".into());
    let c = conv_with(df, &o).await;
    let cfg = config(&c)["config"].clone();
    assert_eq!(cfg["Cmd"], json!(["/bin/sh", "-c", "echo hi"]));
    assert_eq!(cfg["ArgsEscaped"], json!(true));
    assert_eq!(cfg["Entrypoint"], json!(["/entry"]), "inherited from the base image");
    assert_eq!(
        cfg["Labels"],
        json!({"a": "b", "c d": "e", "from.base": "yes", "org.opencontainers.image.title": "t"})
    );
    assert_eq!(cfg["ExposedPorts"], json!({"443/udp": {}, "80/tcp": {}, "8000/tcp": {}, "8001/tcp": {}}));
    assert_eq!(cfg["Volumes"], json!({"/data": {}, "/logs": {}}));
    assert_eq!(cfg["StopSignal"], "SIGTERM");
    assert_eq!(
        cfg["Healthcheck"],
        json!({"Test": ["CMD-SHELL", "curl -f http://x/"], "Interval": 5_000_000_000_i64, "Retries": 3})
    );
    assert_eq!(config(&c)["author"], "me");
    let history: Vec<String> = config(&c)["history"]
        .as_array()
        .unwrap()
        .iter()
        .skip(2)
        .map(|h| h["created_by"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        history,
        [
            "CMD [\"/bin/sh\" \"-c\" \"echo hi\"]",
            "LABEL a=b c d=e",
            "EXPOSE [443/udp 80/tcp 8000/tcp 8001/tcp]",
            "VOLUME [/data /logs]",
            "STOPSIGNAL SIGTERM",
            "HEALTHCHECK &{[\"CMD-SHELL\" \"curl -f http://x/\"] \"5s\" \"0s\" \"0s\" \"0s\" '\\x03'}",
            "MAINTAINER me",
        ]
    );
    assert!(rules(&c).contains(&"JSONArgsRecommended"));
    assert!(rules(&c).contains(&"MaintainerDeprecated"));
}

#[tokio::test]
async fn entrypoint_resets_an_inherited_cmd_but_not_one_set_in_the_stage() {
    let c = conv("FROM busybox\nENTRYPOINT [\"/app\"]\n").await;
    assert!(config(&c)["config"].get("Cmd").is_none(), "the base image's CMD is dropped");
    let c = conv("FROM busybox\nCMD [\"--help\"]\nENTRYPOINT /app\n").await;
    let cfg = config(&c)["config"].clone();
    assert_eq!(cfg["Cmd"], json!(["--help"]));
    assert_eq!(cfg["Entrypoint"], json!(["/bin/sh", "-c", "/app"]));
    let c = conv("FROM busybox\nENTRYPOINT [\"/a\"]\nCMD [\"b\"]\n").await;
    assert_eq!(config(&c)["config"]["Cmd"], json!(["b"]));
}

#[tokio::test]
async fn healthcheck_none_and_bad_signals() {
    let c = conv("FROM busybox\nHEALTHCHECK NONE\nSTOPSIGNAL 9\n").await;
    assert_eq!(config(&c)["config"]["Healthcheck"], json!({"Test": ["NONE"]}));
    assert_eq!(config(&c)["config"]["StopSignal"], "9");
    let err = conv_err("FROM busybox\nSTOPSIGNAL SIGNOPE\n").await;
    assert_eq!(err.to_string(), "Dockerfile:2: invalid signal: SIGNOPE");
    assert_eq!(err.lines, Some((2, 2)));
}

#[tokio::test]
async fn onbuild_triggers_of_a_base_image_run_in_the_child() {
    let c = conv("FROM triggers\nRUN echo own\n").await;
    let g = graph(&c);
    assert_eq!(
        names(&g).into_iter().filter(|n| n.starts_with('[')).collect::<Vec<_>>(),
        [
            // Named before the triggers joined the total, as upstream does.
            format!("[1/2] FROM {}", pinned("docker.io/library/triggers:latest")),
            "[2/4] ONBUILD RUN echo triggered".to_owned(),
            "[3/4] ONBUILD COPY --from=busybox /bin/sh /sh".to_owned(),
            "[4/4] RUN echo own".to_owned(),
        ]
    );
    assert!(config(&c)["config"].get("OnBuild").is_none(), "triggers are consumed");
}

#[tokio::test]
async fn onbuild_of_a_stage_runs_in_stages_built_on_it() {
    let c = conv("FROM busybox AS base\nONBUILD RUN echo child\nFROM base\nRUN echo own\n").await;
    let g = graph(&c);
    assert_eq!(meta(by_name(&g, "[stage-1 1/2] ONBUILD RUN echo child")).args[2], "echo child");
    by_name(&g, "[stage-1 2/2] RUN echo own");
    let mut o = opts();
    o.target = Some("base".into());
    let c = conv_with("FROM busybox AS base\nONBUILD RUN echo child\nFROM base\n", &o).await;
    assert_eq!(config(&c)["config"]["OnBuild"], json!(["RUN echo child"]));
}
