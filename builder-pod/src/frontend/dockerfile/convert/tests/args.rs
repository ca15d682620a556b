//! ARG and ENV.

use super::*;

#[tokio::test]
async fn global_args_expand_in_from_and_build_args_override_them() {
    let df = "ARG VERSION=1.36\nFROM busybox:${VERSION}\nRUN echo\n";
    let resolver = FakeResolver::default();
    convert(df, &opts(), &resolver).await.unwrap();
    let mut o = opts();
    o.build_args.insert("VERSION".into(), "1.37".into());
    convert(df, &o, &resolver).await.unwrap();
    let refs: Vec<String> = resolver.calls.lock().unwrap().iter().map(|c| c.0.clone()).collect();
    assert_eq!(refs, ["docker.io/library/busybox:1.36", "docker.io/library/busybox:1.37"]);
}

#[tokio::test]
async fn build_args_reach_the_env_only_when_declared() {
    let mut o = opts();
    o.build_args.insert("FOO".into(), "bar".into());
    o.build_args.insert("UNUSED".into(), "x".into());
    let c = conv_with("FROM busybox\nRUN echo one\nARG FOO\nARG BAZ=$FOO-z\nRUN echo two\n", &o).await;
    let g = graph(&c);
    assert!(!meta(by_name(&g, "[2/3] RUN echo one")).env.iter().any(|e| e.starts_with("FOO")));
    assert_eq!(meta(result(&g)).env[1..], ["FOO=bar", "BAZ=bar-z"]);
    let history = config(&c)["history"].clone();
    let last = history.as_array().unwrap().last().unwrap()["created_by"].as_str().unwrap().to_owned();
    assert_eq!(last, "RUN |2 FOO=bar BAZ=bar-z /bin/sh -c echo two # buildkit");
    assert_eq!(history[3]["created_by"], "ARG FOO=bar");
}

#[tokio::test]
async fn a_stage_arg_without_default_inherits_the_global_value() {
    let c = conv("ARG V=1\nFROM busybox\nRUN echo $V\nARG V\nRUN echo $V\n").await;
    let g = graph(&c);
    assert_eq!(names(&g)[1], "[2/3] RUN echo $V", "undeclared: left as written in the name");
    assert_eq!(names(&g)[2], "[3/3] RUN echo 1");
    assert!(meta(result(&g)).env.contains(&"V=1".to_owned()));
}

#[tokio::test]
async fn proxy_args_go_to_the_proxy_env_not_the_env() {
    let mut o = opts();
    o.build_args.insert("HTTP_PROXY".into(), "http://proxy:3128".into());
    o.build_args.insert("no_proxy".into(), "localhost".into());
    let g = graph(&conv_with("FROM busybox\nRUN wget x\n", &o).await);
    let run = result(&g);
    let proxy = meta(run).proxy_env.clone().unwrap();
    assert_eq!((proxy.http_proxy.as_str(), proxy.no_proxy.as_str()), ("http://proxy:3128", "localhost"));
    assert_eq!(meta(run).env.len(), 1);
    assert!(run.metadata.caps.contains_key("exec.meta.proxyenv"));
}

#[tokio::test]
async fn automatic_platform_args_describe_build_and_target() {
    let mut o = opts();
    o.target_platform = Some(arm64());
    let df = "FROM --platform=$BUILDPLATFORM busybox\nARG TARGETPLATFORM TARGETARCH BUILDPLATFORM\nRUN echo $TARGETARCH\n";
    let resolver = FakeResolver::default();
    let c = convert(df, &o, &resolver).await.unwrap();
    assert_eq!(
        resolver.calls.lock().unwrap()[0].1,
        "linux/amd64",
        "FROM --platform picks the build platform"
    );
    let g = graph(&c);
    let run = result(&g);
    assert_eq!(
        meta(run).env[1..],
        ["TARGETPLATFORM=linux/arm64", "TARGETARCH=arm64", "BUILDPLATFORM=linux/amd64"]
    );
    assert_eq!(run.op.platform.as_ref().unwrap().architecture, "amd64");
    assert_eq!(run.name(), "[2/2] RUN echo arm64");
    let cfg = config(&c);
    assert_eq!((cfg["os"].as_str(), cfg["architecture"].as_str()), (Some("linux"), Some("arm64")));
}

#[tokio::test]
async fn env_expands_in_later_instructions_and_keeps_the_image_order() {
    let c = conv("FROM busybox\nENV A=1 B=${A}2\nENV A=3\nWORKDIR /w/$B\nRUN echo $A\n").await;
    let g = graph(&c);
    let run = result(&g);
    // One ENV line expands with the env from before it.
    assert_eq!(meta(run).env[1..], ["B=2", "A=3"]);
    assert_eq!(meta(run).cwd, "/w/2");
    let env = config(&c)["config"]["Env"].clone();
    assert_eq!(env, json!([format!("PATH={}", llb::DEFAULT_PATH_UNIX), "A=3", "B=2"]));
    assert_eq!(config(&c)["history"][2]["created_by"], "ENV A=1 B=2");
    let c = conv("FROM busybox\nENV A=1\nENV B=${A}2\n").await;
    assert_eq!(config(&c)["config"]["Env"][2], "B=12");
}

#[tokio::test]
async fn source_date_epoch_stamps_history_and_created_dirs() {
    let mut o = opts();
    o.build_args.insert("SOURCE_DATE_EPOCH".into(), "1700000000".into());
    let c = conv_with("ARG SOURCE_DATE_EPOCH\nFROM busybox\nWORKDIR /app\n", &o).await;
    assert_eq!(config(&c)["history"][2]["created"], "2023-11-14T22:13:20Z");
    let g = graph(&c);
    let Some(Action::Mkdir(m)) = &file(result(&g)).actions[0].action else { panic!() };
    assert_eq!(m.timestamp, 1_700_000_000_000_000_000);
    o.build_args.insert("SOURCE_DATE_EPOCH".into(), "soon".into());
    let err = conv_err_with("ARG SOURCE_DATE_EPOCH\nFROM busybox\n", &o).await;
    assert_eq!(
        err.to_string(),
        "invalid SOURCE_DATE_EPOCH: soon: strconv.ParseInt: parsing \"soon\": invalid syntax"
    );
}
