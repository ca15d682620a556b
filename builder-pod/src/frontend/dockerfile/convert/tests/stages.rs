//! Stages, their names and their sources.

use super::*;

#[tokio::test]
async fn a_run_on_an_image_becomes_an_exec_on_the_pinned_image() {
    let resolver = FakeResolver::default();
    let c = convert("FROM busybox\nRUN echo hi\n", &opts(), &resolver).await.unwrap();
    assert_eq!(
        *resolver.calls.lock().unwrap(),
        [("docker.io/library/busybox:latest".to_owned(), "linux/amd64".to_owned())]
    );
    let g = graph(&c);
    assert_eq!(names(&g), [format!("[1/2] {}", busybox_from()), "[2/2] RUN echo hi".to_owned()]);
    let from = &g.vertices[0];
    assert_eq!(
        source(from).identifier,
        format!("docker-image://{}", pinned("docker.io/library/busybox:latest"))
    );
    assert_eq!(from.metadata.description["com.docker.dockerfile.v1.command"], "FROM busybox");
    let run = result(&g);
    let m = meta(run);
    assert_eq!(m.args, ["/bin/sh", "-c", "echo hi"]);
    assert_eq!(m.env, [format!("PATH={}", llb::DEFAULT_PATH_UNIX)]);
    assert_eq!((m.cwd.as_str(), m.user.as_str()), ("/", ""));
    let root = &exec(run).mounts[0];
    assert_eq!((root.dest.as_str(), root.input, root.output), ("/", 0, 0));
    assert_eq!(run.metadata.description["com.docker.dockerfile.v1.command"], "RUN echo hi");
    assert_eq!(run.op.platform.as_ref().unwrap().architecture, "amd64");
    assert!(run.metadata.caps.contains_key("exec.meta.setsdefaultpath"));
}

#[tokio::test]
async fn exec_form_runs_without_a_shell_and_shell_changes_the_shell_form() {
    let c = conv("FROM busybox\nRUN [\"echo\", \"a b\"]\nSHELL [\"/bin/bash\", \"-eux\"]\nRUN echo $HOME\n")
        .await;
    let g = graph(&c);
    assert_eq!(meta(by_name(&g, "[2/3] RUN [\"echo\", \"a b\"]")).args, ["echo", "a b"]);
    assert_eq!(meta(result(&g)).args, ["/bin/bash", "-eux", "echo $HOME"]);
    assert_eq!(config(&c)["config"]["Shell"], json!(["/bin/bash", "-eux"]));
}

#[tokio::test]
async fn converting_twice_gives_identical_bytes() {
    let df = "FROM busybox AS b\nRUN --mount=type=cache,target=/c make\nFROM alpine\nCOPY --link --from=b /out /out\nCOPY . /src\nWORKDIR /src\nRUN ls\n";
    let (a, b) = (conv(df).await, conv(df).await);
    assert_eq!(a.definition.encode_to_vec(), b.definition.encode_to_vec());
    assert_eq!(a.image_config, b.image_config);
}

#[tokio::test]
async fn the_target_stage_needs_only_the_stages_it_uses() {
    let df = "FROM busybox AS base\nRUN echo base\nFROM alpine AS other\nRUN echo other\nFROM base AS final\nRUN echo final\n";
    let mut o = opts();
    o.target = Some("final".into());
    let resolver = FakeResolver::default();
    let c = convert(df, &o, &resolver).await.unwrap();
    let g = graph(&c);
    assert_eq!(
        names(&g),
        [
            format!("[base 1/2] {}", busybox_from()),
            "[base 2/2] RUN echo base".to_owned(),
            "[final 1/1] RUN echo final".to_owned()
        ]
    );
    assert_eq!(resolver.calls.lock().unwrap().len(), 1, "alpine is not resolved");
    // FROM base: the final stage's exec runs on the base stage's exec.
    let final_run = result(&g);
    assert_eq!(input_vertex(&g, final_run, 0).name(), "[base 2/2] RUN echo base");

    o.target = Some("other".into());
    let g = graph(&conv_with(df, &o).await);
    assert_eq!(sources(&g), [format!("docker-image://{}", pinned("docker.io/library/alpine:latest"))]);
}

#[tokio::test]
async fn an_unknown_target_is_named_with_a_suggestion() {
    let mut o = opts();
    o.target = Some("buidler".into());
    let err = conv_err_with("FROM busybox AS builder\nFROM alpine\n", &o).await;
    assert_eq!(err.to_string(), "target stage \"buidler\" could not be found (did you mean builder?)");
    assert_eq!(err.lines, None);
}

#[tokio::test]
async fn copy_from_a_stage_names_both_stages_in_progress() {
    let c = conv("FROM busybox AS builder\nRUN make\nFROM alpine\nCOPY --from=builder /out /out\n").await;
    let g = graph(&c);
    let copy = by_name(&g, "[stage-1 2/2] COPY --from=builder /out /out");
    assert_eq!(input_vertex(&g, copy, 1).name(), "[builder 2/2] RUN make");
    assert_eq!(
        input_vertex(&g, copy, 0).name(),
        format!("[stage-1 1/2] FROM {}", pinned("docker.io/library/alpine:latest"))
    );
    let a = copy_action(copy, 0);
    assert_eq!((a.src.as_str(), a.dest.as_str()), ("/out", "/out"));
    let action = &file(copy).actions[0];
    assert_eq!((action.input, action.secondary_input, action.output), (0, 1, 0));
    assert!(!names(&g).contains(&"[internal] load build context".to_owned()));
}

#[tokio::test]
async fn copy_from_an_image_or_an_index_and_errors_for_later_stages() {
    let g = graph(&conv("FROM alpine\nCOPY --from=busybox /bin/sh /sh\n").await);
    let copy = result(&g);
    assert_eq!(
        source(input_vertex(&g, copy, 1)).identifier,
        format!("docker-image://{}", pinned("docker.io/library/busybox:latest"))
    );
    assert_eq!(
        input_vertex(&g, copy, 1).name(),
        busybox_from(),
        "an image named by --from has no step number"
    );

    let g = graph(&conv("FROM busybox\nRUN touch /x\nFROM alpine\nCOPY --from=0 /x /x\n").await);
    assert_eq!(input_vertex(&g, result(&g), 1).name(), "[stage-0 2/2] RUN touch /x");

    let err = conv_err("FROM alpine AS a\nCOPY --from=b /x /x\nFROM busybox AS b\nFROM a\n").await;
    assert_eq!(
        err.to_string(),
        "Dockerfile:2: cannot copy from stage \"b\", it needs to be defined before current stage \"a\""
    );
    let err = conv_err("FROM alpine\nCOPY --from=$X /x /x\n").await;
    assert!(err.to_string().starts_with("variable expansion is not supported for --from"), "{err}");
    let err = conv_err("FROM alpine\nCOPY --from=7 /x /x\n").await;
    assert_eq!(err.to_string(), "invalid stage index 7");
}

#[tokio::test]
async fn scratch_stages_have_no_source_and_an_empty_image_config() {
    let c = conv("FROM scratch\nCOPY app /app\n").await;
    let g = graph(&c);
    assert_eq!(names(&g), ["[internal] load build context", "[1/1] COPY app /app"]);
    let action = &file(result(&g)).actions[0];
    assert_eq!((action.input, action.secondary_input), (-1, 0));
    assert_eq!(
        config(&c),
        json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": null},
            "history": [{"created_by": "COPY app /app # buildkit", "comment": "buildkit.dockerfile.v0"}],
            "config": {"Env": [format!("PATH={}", llb::DEFAULT_PATH_UNIX)], "WorkingDir": "/"}
        })
    );
    let c = conv("FROM scratch\nENV A=1\n").await;
    assert!(c.definition.def.is_empty(), "nothing to build");
    assert_eq!(config(&c)["config"]["Env"][1], "A=1");
}

#[tokio::test]
async fn the_image_config_is_written_as_go_writes_it() {
    let c = conv("FROM scratch\nCMD [\"/app\", \"<x>\"]\n").await;
    let text = String::from_utf8(c.image_config.clone()).unwrap();
    assert_eq!(
        text,
        format!(
            concat!(
                r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":null}},"#,
                r#""history":[{{"created_by":"CMD [\"/app\" \"\u003cx\u003e\"]","comment":"buildkit.dockerfile.v0","empty_layer":true}}],"#,
                r#""config":{{"Env":["PATH={}"],"Cmd":["/app","\u003cx\u003e"],"WorkingDir":"/","ArgsEscaped":true}}}}"#
            ),
            llb::DEFAULT_PATH_UNIX
        )
    );
}

#[tokio::test]
async fn a_base_image_without_layers_is_scratch() {
    let g = graph(&conv("FROM empty\nRUN true\n").await);
    assert!(sources(&g).is_empty());
    // The FROM counts in the total but, with no op, takes no number.
    assert_eq!(names(&g), ["[1/2] RUN true"]);
}

#[tokio::test]
async fn the_base_image_config_carries_over_without_its_unknown_fields() {
    let c = conv("FROM app\nRUN id\n").await;
    let g = graph(&c);
    let m = meta(result(&g));
    assert_eq!((m.user.as_str(), m.cwd.as_str()), ("app", "/srv"));
    assert_eq!(m.env, ["FOO=base", "PATH=/bin"]);
    let cfg = config(&c);
    assert_eq!(cfg["rootfs"]["diff_ids"], json!([LAYER]));
    assert_eq!(cfg["history"].as_array().unwrap().len(), 3);
    assert_eq!(cfg["history"][0]["created"], "2024-01-01T00:00:00Z");
    assert!(cfg.get("created").is_none() && cfg.get("container").is_none());
    assert!(cfg["config"].get("Hostname").is_none());
    assert_eq!(cfg["config"]["Labels"], json!({"from.base": "yes"}));
    assert_eq!(cfg["config"]["Entrypoint"], json!(["/entry"]));
}
