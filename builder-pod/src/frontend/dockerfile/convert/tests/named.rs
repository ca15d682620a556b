//! Named contexts (`--build-context`).

use super::*;

fn with_contexts(pairs: &[(&str, &str)]) -> ConvertOptions {
    let mut o = opts();
    o.named_contexts.values = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    o
}

fn attr<'a>(s: &'a pb::SourceOp, key: &str) -> Option<&'a str> {
    s.attrs.get(key).map(String::as_str)
}

#[tokio::test]
async fn a_local_named_context_replaces_the_stage_for_copy_and_mounts() {
    let df = "FROM busybox AS extra\nRUN exit 1\n\
              FROM busybox\nCOPY --from=extra data.txt /d/\n\
              RUN --mount=type=bind,from=extra,target=/x cat /x/data.txt\n";
    let mut o = with_contexts(&[("extra", "local:extra-dir")]);
    o.named_contexts.shared_keys.insert("extra".into(), "ctxdir".into());
    o.named_contexts.local_excludes.insert("extra-dir".into(), vec!["*.tmp".into()]);
    let g = graph(&conv_with(df, &o).await);
    assert!(!names(&g).iter().any(|n| n.contains("exit 1")), "the replaced stage ran: {:?}", names(&g));
    let local = by_name(&g, "[context extra] load from client");
    let s = source(local);
    assert_eq!(s.identifier, "local://extra-dir");
    assert_eq!(attr(s, "local.session"), Some("sess1"));
    assert_eq!(attr(s, "local.sharedkeyhint"), Some("context:extra-ctxdir"));
    assert_eq!(attr(s, "local.excludepatterns"), Some(r#"["*.tmp"]"#));
    let copy = by_name(&g, "[stage-1 2/3] COPY --from=extra data.txt /d/");
    assert_eq!(input_vertex(&g, copy, 1).name(), "[context extra] load from client");
    assert_eq!(copy_action(copy, 0).src, "/data.txt");
    let run = result(&g);
    let mount = exec(run).mounts.iter().find(|m| m.dest == "/x").unwrap();
    assert_eq!(
        g.vertices[run.inputs[mount.input as usize].vertex].name(),
        "[context extra] load from client"
    );
}

#[tokio::test]
async fn an_image_named_context_replaces_a_from_image_with_its_config() {
    let resolver = FakeResolver::default();
    let o = with_contexts(&[("mybase", "docker-image://app:2")]);
    let c = convert("FROM mybase\nRUN echo hi\n", &o, &resolver).await.unwrap();
    assert_eq!(
        *resolver.calls.lock().unwrap(),
        [("docker.io/library/app:2".to_owned(), "linux/amd64".to_owned())],
        "mybase itself is never looked up"
    );
    let g = graph(&c);
    let from = by_name(&g, "[context mybase] app:2");
    assert_eq!(source(from).identifier, format!("docker-image://{}", pinned("docker.io/library/app:2")));
    let m = meta(result(&g));
    assert_eq!((m.user.as_str(), m.cwd.as_str()), ("app", "/srv"));
    assert!(m.env.contains(&"FOO=base".to_owned()), "{:?}", m.env);
    let cfg = config(&c);
    assert_eq!(cfg["config"]["Entrypoint"], json!(["/entry"]));
    assert_eq!(cfg["config"]["Labels"]["from.base"], "yes");
}

#[tokio::test]
async fn an_image_named_context_replacing_the_target_stage_gives_its_image() {
    let o = with_contexts(&[("final", "docker-image://app")]);
    let c = conv_with("FROM busybox AS final\nRUN exit 1\n", &o).await;
    let g = graph(&c);
    assert_eq!(names(&g), ["[context final] app"]);
    let cfg = config(&c);
    assert_eq!(cfg["config"]["User"], "app");
    assert_eq!(cfg["config"]["Entrypoint"], json!(["/entry"]));
}

#[tokio::test]
async fn the_platform_specific_named_context_wins_and_names_are_normalized() {
    let mut o = with_contexts(&[
        ("base::linux/arm64", "docker-image://debian"),
        ("base", "docker-image://alpine"),
        ("docker.io/library/other", "docker-image://golang"),
        ("other", "docker-image://debian"),
    ]);
    o.target_platform = Some(arm64());
    let g = graph(&conv_with("FROM base\nRUN true\n", &o).await);
    assert_eq!(names(&g)[0], "[context base::linux/arm64] debian");
    o.target_platform = Some(amd64());
    let g = graph(&conv_with("FROM base\nRUN true\n", &o).await);
    assert_eq!(names(&g)[0], "[context base] alpine");
    // `FROM docker.io/library/other:latest` is `other` to the lookup.
    let g = graph(&conv_with("FROM docker.io/library/other:latest\nRUN true\n", &o).await);
    assert_eq!(names(&g)[0], "[context other] debian");
}

#[tokio::test]
async fn scratch_and_context_are_never_replaced_and_unused_contexts_are_not_loaded() {
    let o = with_contexts(&[("scratch", "docker-image://alpine"), ("unused", "nonsense")]);
    let c = conv_with("FROM scratch\nCOPY a /a\n", &o).await;
    assert!(sources(&graph(&c)).iter().all(|s| !s.contains("alpine")), "{:?}", sources(&graph(&c)));
}

#[tokio::test]
async fn bad_or_unsupported_named_contexts_fail_with_their_name() {
    let cases = [
        ("nocolon", "Dockerfile:1: invalid context specifier nocolon for x"),
        ("ftp://host/x", "Dockerfile:1: unsupported context source ftp for x"),
        (
            "docker-image://unknown-image",
            "Dockerfile:1: named context x: failed to resolve source metadata for docker.io/library/unknown-image:latest: not found",
        ),
    ];
    for (value, want) in cases {
        let err = conv_err_with("FROM x\nRUN true\n", &with_contexts(&[("x", value)])).await;
        assert_eq!(err.to_string(), want, "{value}");
    }
    let err = conv_err_with("FROM x\n", &with_contexts(&[("x", "git@github.com:a/b.git")])).await;
    assert!(err.to_string().contains("git contexts are not supported by kilnd yet"), "{err}");
}

#[tokio::test]
async fn an_input_context_is_the_frontend_input_with_its_image_config() {
    use base64::Engine as _;
    // What bake hands over for a target another target names: its LLB and its image config.
    let parent = conv("FROM busybox\nRUN echo parent > /p\nUSER app\nWORKDIR /srv\n").await;
    let mut o = with_contexts(&[("parent", "input:parent")]);
    o.named_contexts.inputs.insert("parent".into(), parent.definition.clone());
    let encoded = base64::engine::general_purpose::STANDARD.encode(&parent.image_config);
    o.named_contexts
        .input_metadata
        .insert("parent".into(), json!({"containerimage.config": encoded}).to_string());
    let c = conv_with("FROM parent\nRUN echo child > /c\n", &o).await;
    let g = graph(&c);
    let run = result(&g);
    assert_eq!(meta(run).args, ["/bin/sh", "-c", "echo child > /c"]);
    assert_eq!((meta(run).user.as_str(), meta(run).cwd.as_str()), ("app", "/srv"));
    let parent_top = input_vertex(&g, run, 0);
    assert_eq!(parent_top.name(), "[3/3] WORKDIR /srv");
    assert_eq!(input_vertex(&g, parent_top, 0).name(), "[2/3] RUN echo parent > /p");
    assert_eq!(config(&c)["config"]["User"], "app");

    let err = conv_err_with("FROM parent\n", &with_contexts(&[("parent", "input:missing")])).await;
    assert_eq!(err.to_string(), "Dockerfile:1: invalid input missing for parent");
}

#[test]
fn named_contexts_come_from_the_frontend_attributes() {
    let attrs: BTreeMap<String, String> = [
        ("context:extra", "local:extra"),
        ("context:img::linux/arm64", "docker-image://alpine"),
        ("sharedkey:localdir:extra", "dir"),
        ("local-sessionid:extra", "other-session"),
        ("build-arg:context:x", "not a context"),
        ("input-metadata:parent", "{}"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let (o, _) = ConvertOptions::from_frontend_attrs(&attrs, "sess").unwrap();
    let n = &o.named_contexts;
    assert_eq!(n.values.len(), 2);
    assert_eq!(n.values["img::linux/arm64"], "docker-image://alpine");
    assert_eq!(n.shared_keys["extra"], "dir");
    assert_eq!(n.input_metadata["parent"], "{}");
    assert_eq!(n.local_dirs("sess"), [("extra".to_owned(), "extra".to_owned(), "other-session".to_owned())]);
}
