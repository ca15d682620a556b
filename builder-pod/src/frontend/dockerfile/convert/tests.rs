//! Dockerfiles converted with a fake resolver, checked through the solver's
//! own LLB reader: what a daemon would run, and the image config it would write.

use std::collections::BTreeMap;
use std::sync::Mutex;

use kiln_proto::buildkit::pb;
use pb::file_action::Action;
use prost::Message;
use serde_json::{Value, json};

use super::*;
use crate::frontend::llb::format_platform;
use crate::solver::llb::{Graph, Vertex, digest_of};

const LAYER: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

/// Images by short name; the config's architecture follows the platform
/// asked for unless the image pins one. Names it does not know fail like a
/// registry would.
#[derive(Default)]
struct FakeResolver {
    calls: Mutex<Vec<(String, String)>>,
}

fn pinned(reference: &str) -> String {
    format!("{reference}@sha256:{}", hex::encode(Sha256::digest(reference.as_bytes())))
}

#[async_trait]
impl ImageResolver for FakeResolver {
    async fn resolve(&self, reference: &str, platform: &Platform) -> Result<ResolvedConfig, BoxError> {
        self.calls.lock().unwrap().push((reference.to_owned(), format_platform(platform)));
        let repo = reference.split(['@']).next().unwrap_or_default();
        let name = repo.rsplit('/').next().unwrap_or_default().split(':').next().unwrap_or_default();
        let arch = platform.architecture.clone();
        let mut config = json!({
            "created": "2024-01-01T00:00:00Z",
            "architecture": arch,
            "os": "linux",
            "container": "ignored",
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": ["sh"],
                "Hostname": "ignored"
            },
            "rootfs": {"type": "layers", "diff_ids": [LAYER]},
            "history": [
                {"created": "2024-01-01T00:00:00Z", "created_by": "ADD rootfs.tar /"},
                {"created": "2024-01-01T00:00:00Z", "created_by": "CMD [\"sh\"]", "empty_layer": true}
            ]
        });
        match name {
            "busybox" | "alpine" | "golang" | "debian" => {}
            "amd64only" => config["architecture"] = json!("amd64"),
            "triggers" => {
                config["config"]["OnBuild"] = json!(["RUN echo triggered", "COPY --from=busybox /bin/sh /sh"])
            }
            "empty" => {
                config["rootfs"]["diff_ids"] = json!([]);
                config["history"] = json!([{"created_by": "nothing", "empty_layer": true}]);
            }
            "app" => {
                config["config"]["User"] = json!("app");
                config["config"]["WorkingDir"] = json!("/srv");
                config["config"]["Env"] = json!(["FOO=base", "PATH=/bin"]);
                config["config"]["Entrypoint"] = json!(["/entry"]);
                config["config"]["Labels"] = json!({"from.base": "yes"});
            }
            _ => return Err(format!("failed to resolve source metadata for {reference}: not found").into()),
        }
        Ok(ResolvedConfig {
            pinned_reference: pinned(reference),
            config: serde_json::to_vec(&config).unwrap(),
        })
    }
}

fn amd64() -> Platform {
    Platform::new("linux", "amd64", None)
}

fn arm64() -> Platform {
    Platform::new("linux", "arm64", None)
}

fn opts() -> ConvertOptions {
    ConvertOptions { session_id: "sess1".into(), build_platform: amd64(), ..ConvertOptions::default() }
}

async fn conv_with(df: &str, o: &ConvertOptions) -> Converted {
    match convert(df, o, &FakeResolver::default()).await {
        Ok(c) => c,
        Err(e) => panic!("converting failed: {e}\n{df}"),
    }
}

async fn conv(df: &str) -> Converted {
    conv_with(df, &opts()).await
}

async fn conv_err_with(df: &str, o: &ConvertOptions) -> ConvertError {
    match convert(df, o, &FakeResolver::default()).await {
        Ok(_) => panic!("converting should fail:\n{df}"),
        Err(e) => e,
    }
}

async fn conv_err(df: &str) -> ConvertError {
    conv_err_with(df, &opts()).await
}

fn graph(c: &Converted) -> Graph {
    Graph::parse(&c.definition).unwrap()
}

fn names(g: &Graph) -> Vec<String> {
    g.vertices.iter().map(Vertex::name).collect()
}

fn by_name<'a>(g: &'a Graph, name: &str) -> &'a Vertex {
    g.vertices
        .iter()
        .find(|v| v.name() == name)
        .unwrap_or_else(|| panic!("no vertex {name:?} in {:?}", names(g)))
}

fn result(g: &Graph) -> &Vertex {
    &g.vertices[g.result.unwrap().vertex]
}

fn exec(v: &Vertex) -> &pb::ExecOp {
    match v.operation() {
        Some(pb::op::Op::Exec(e)) => e,
        other => panic!("{} is not an exec: {other:?}", v.name()),
    }
}

fn meta(v: &Vertex) -> &pb::Meta {
    exec(v).meta.as_ref().unwrap()
}

fn file(v: &Vertex) -> &pb::FileOp {
    match v.operation() {
        Some(pb::op::Op::File(f)) => f,
        other => panic!("{} is not a file op: {other:?}", v.name()),
    }
}

fn copy_action(v: &Vertex, n: usize) -> &pb::FileActionCopy {
    match &file(v).actions[n].action {
        Some(Action::Copy(c)) => c,
        other => panic!("action {n} of {} is not a copy: {other:?}", v.name()),
    }
}

fn source(v: &Vertex) -> &pb::SourceOp {
    match v.operation() {
        Some(pb::op::Op::Source(s)) => s,
        other => panic!("{} is not a source: {other:?}", v.name()),
    }
}

fn sources(g: &Graph) -> Vec<String> {
    g.vertices
        .iter()
        .filter_map(|v| match v.operation() {
            Some(pb::op::Op::Source(s)) => Some(s.identifier.clone()),
            _ => None,
        })
        .collect()
}

fn context_source(g: &Graph) -> &pb::SourceOp {
    source(by_name(g, "[internal] load build context"))
}

fn config(c: &Converted) -> Value {
    serde_json::from_slice(&c.image_config).unwrap()
}

fn busybox_from() -> String {
    format!("FROM {}", pinned("docker.io/library/busybox:latest"))
}

fn input_vertex<'a>(g: &'a Graph, v: &Vertex, n: usize) -> &'a Vertex {
    &g.vertices[v.inputs[n].vertex]
}

fn rules(c: &Converted) -> Vec<&'static str> {
    c.warnings.iter().map(|w| w.rule.name).collect()
}

// --- stages, names, sources -------------------------------------------------

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
    let base: Value = serde_json::from_slice(c.base_image_config.as_ref().unwrap()).unwrap();
    assert_eq!(base["history"].as_array().unwrap().len(), 2);
}

// --- args and env ------------------------------------------------------------

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
    assert_eq!(c.epoch, Some(1_700_000_000));
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

// --- WORKDIR, USER, image config ----------------------------------------------

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

// --- COPY and ADD --------------------------------------------------------------

#[tokio::test]
async fn copy_reads_the_context_with_dockerignore_and_follow_paths() {
    let mut o = opts();
    o.dockerignore = vec!["*.md".into(), "tmp".into()];
    let c = conv_with("FROM busybox\nWORKDIR /app\nCOPY src/ ./\nCOPY go.mod go.sum ./\n", &o).await;
    let g = graph(&c);
    let ctx = context_source(&g);
    assert_eq!(ctx.identifier, "local://context");
    assert_eq!(ctx.attrs["local.session"], "sess1");
    assert_eq!(ctx.attrs["local.sharedkeyhint"], "context");
    assert_eq!(ctx.attrs["local.excludepatterns"], r#"["*.md","tmp"]"#);
    assert_eq!(ctx.attrs["local.followpaths"], r#"["go.mod","go.sum","src"]"#);
    let copy = by_name(&g, "[3/4] COPY src/ ./");
    let a = copy_action(copy, 0);
    assert_eq!((a.src.as_str(), a.dest.as_str(), a.mode), ("/src", "/app/", -1));
    assert!(
        a.follow_symlink
            && a.dir_copy_contents
            && a.allow_wildcard
            && a.allow_empty_wildcard
            && a.create_dest_path
    );
    assert!(!a.attempt_unpack_docker_compatibility);
    let two = by_name(&g, "[4/4] COPY go.mod go.sum ./");
    let actions: Vec<(i64, i64, i64)> =
        file(two).actions.iter().map(|a| (a.input, a.secondary_input, a.output)).collect();
    assert_eq!(actions, [(0, 1, -1), (2, 1, 0)]);
    assert_eq!(config(&c)["history"][4]["created_by"], "COPY go.mod go.sum ./ # buildkit");

    let g = graph(&conv("FROM busybox\nCOPY . /src\n").await);
    assert!(!context_source(&g).attrs.contains_key("local.followpaths"), "the whole context is needed");
}

#[tokio::test]
async fn copy_owner_and_mode_flags() {
    let c =
        conv("FROM busybox\nARG U=1000\nCOPY --chown=$U:$U --chmod=0755 a /b\nCOPY --chmod=u+x,g-w c /d\n")
            .await;
    let g = graph(&c);
    let a = copy_action(by_name(&g, "[2/3] COPY --chown=1000:1000 --chmod=0755 a /b"), 0);
    assert_eq!(a.mode, 0o755);
    let owner = a.owner.as_ref().unwrap();
    assert_eq!(owner.user.as_ref().unwrap().user, Some(pb::user_opt::User::ById(1000)));
    assert_eq!(owner.group.as_ref().unwrap().user, Some(pb::user_opt::User::ById(1000)));
    let b = copy_action(result(&g), 0);
    assert_eq!((b.mode, b.mode_str.as_str()), (0, "u+x,g-w"));
    assert_eq!(config(&c)["history"][3]["created_by"], "COPY --chown=1000:1000 --chmod=0755 a /b # buildkit");
    let err = conv_err("FROM busybox\n\nCOPY --chmod=8 a /b\n").await;
    assert_eq!(
        err.to_string(),
        "Dockerfile:3: invalid chmod parameter: '8'. it should be octal string and between 0 and 07777"
    );
}

#[tokio::test]
async fn copy_link_builds_on_scratch_and_merges() {
    let c = conv("FROM busybox\nCOPY --link a /a\n").await;
    let g = graph(&c);
    let merge = result(&g);
    let Some(pb::op::Op::Merge(m)) = merge.operation() else { panic!("{:?}", names(&g)) };
    assert_eq!(m.inputs.len(), 2);
    assert_eq!(merge.name(), "[2/2] LINK COPY --link a /a");
    let copy = input_vertex(&g, merge, 1);
    assert_eq!(copy.name(), "[2/2] COPY --link a /a");
    assert_eq!(file(copy).actions[0].input, -1, "the copy starts from scratch");
    let (pg_copy, pg_merge) =
        (copy.metadata.progress_group.clone().unwrap(), merge.metadata.progress_group.clone().unwrap());
    assert_eq!(pg_copy.id, pg_merge.id);
    assert_eq!((pg_copy.weak, pg_merge.weak), (true, false));
    assert_eq!(pg_copy.name, "[2/2] COPY --link a /a");
    assert!(merge.metadata.caps.contains_key("mergeop"));
    // With --chmod, or on scratch, there is no merge.
    let g = graph(&conv("FROM busybox\nCOPY --link --chmod=644 a /a\n").await);
    assert!(matches!(result(&g).operation(), Some(pb::op::Op::File(_))));
    let g = graph(&conv("FROM scratch\nCOPY --link a /a\n").await);
    assert!(matches!(result(&g).operation(), Some(pb::op::Op::File(_))));
}

#[tokio::test]
async fn copy_parents_and_exclude_filter_what_is_copied() {
    let g = graph(
        &conv("FROM busybox\nCOPY --parents --exclude=*.tmp src/./app/main.go logs/*.txt /dst/\n").await,
    );
    let copy = result(&g);
    let first = copy_action(copy, 0);
    assert_eq!(
        (first.src.as_str(), first.include_patterns.clone()),
        ("/src", vec!["app/main.go".to_owned()])
    );
    assert_eq!(first.required_paths, ["/src/app/main.go"]);
    assert_eq!(first.exclude_patterns, ["*.tmp"]);
    let second = copy_action(copy, 1);
    assert_eq!((second.src.as_str(), second.include_patterns.clone()), ("/", vec!["logs/*.txt".to_owned()]));
    assert!(second.required_paths.is_empty(), "wildcards make nothing required");
}

#[tokio::test]
async fn copy_heredocs_become_inline_files() {
    let c =
        conv("FROM busybox\nARG NAME=world\nCOPY <<EOF <<'RAW' /etc/\nhello $NAME\nEOF\nkeep $NAME\nRAW\n")
            .await;
    let g = graph(&c);
    let copy = result(&g);
    let inline: Vec<&Vertex> =
        g.vertices.iter().filter(|v| v.name() == "[internal] preparing inline document").collect();
    assert_eq!(inline.len(), 2);
    let data: Vec<String> = inline
        .iter()
        .map(|v| match &file(v).actions[0].action {
            Some(Action::Mkfile(m)) => format!("{}={}", m.path, String::from_utf8_lossy(&m.data)),
            _ => panic!(),
        })
        .collect();
    let mut data = data;
    data.sort();
    assert_eq!(data, ["/EOF=hello world\n", "/RAW=keep $NAME\n"]);
    assert_eq!(copy_action(copy, 0).src, "/EOF");
    assert_eq!(copy_action(copy, 1).dest, "/etc/");
    assert_eq!(config(&c)["history"][3]["created_by"], "COPY <<EOF <<RAW /etc/ # buildkit");
}

#[tokio::test]
async fn add_unpacks_local_archives_unless_told_not_to() {
    let g = graph(&conv("FROM busybox\nADD app.tar.gz /opt/\nADD --unpack=false b.tar /b\n").await);
    assert!(copy_action(by_name(&g, "[2/3] ADD app.tar.gz /opt/"), 0).attempt_unpack_docker_compatibility);
    assert!(!copy_action(result(&g), 0).attempt_unpack_docker_compatibility);
    assert_eq!(context_source(&g).attrs["local.followpaths"], r#"["app.tar.gz","b.tar"]"#);
}

#[tokio::test]
async fn add_of_a_url_downloads_it() {
    let sum = format!("sha256:{}", "ab".repeat(32));
    let df = format!(
        "FROM busybox\nADD --checksum={sum} https://example.com/dl/tool.tar.gz?x=1 /usr/local/bin/\n"
    );
    let g = graph(&conv(&df).await);
    let name = format!("[2/2] ADD --checksum={sum} https://example.com/dl/tool.tar.gz?x=1 /usr/local/bin/");
    let http: Vec<&Vertex> = g.vertices.iter().filter(|v| v.name() == name).collect();
    assert_eq!(http.len(), 2, "the download and the copy share the step's name");
    let s = source(http[0]);
    assert_eq!(s.identifier, "https://example.com/dl/tool.tar.gz?x=1");
    assert_eq!(
        (s.attrs["http.filename"].as_str(), s.attrs["http.checksum"].as_str()),
        ("tool.tar.gz", sum.as_str())
    );
    let a = copy_action(result(&g), 0);
    assert_eq!((a.src.as_str(), a.dest.as_str()), ("/tool.tar.gz", "/usr/local/bin/"));
    assert!(!a.attempt_unpack_docker_compatibility, "downloads are not unpacked");
    assert!(!names(&g).contains(&"[internal] load build context".to_owned()));
}

#[tokio::test]
async fn add_of_a_git_repository_clones_it() {
    let g = graph(
        &conv(
            "FROM busybox\nADD --keep-git-dir=true https://github.com/moby/buildkit.git#v0.29.0:docs /src\n",
        )
        .await,
    );
    let git = g.vertices.iter().find(|v| source_is(v, "git://")).unwrap();
    let s = source(git);
    assert_eq!(s.identifier, "git://github.com/moby/buildkit.git#v0.29.0:docs");
    assert_eq!(s.attrs["git.fullurl"], "https://github.com/moby/buildkit.git");
    assert_eq!(s.attrs["git.keepgitdir"], "true");
    let a = copy_action(result(&g), 0);
    assert_eq!((a.src.as_str(), a.dest.as_str()), ("/", "/src"));
}

fn source_is(v: &Vertex, prefix: &str) -> bool {
    matches!(v.operation(), Some(pb::op::Op::Source(s)) if s.identifier.starts_with(prefix))
}

#[tokio::test]
async fn copy_and_add_source_errors_name_the_line() {
    let cases = [
        ("FROM busybox\nCOPY https://example.com/a /a\n", "Dockerfile:2: source can't be a URL for COPY"),
        (
            "FROM busybox\nCOPY git@github.com:a/b.git /a\n",
            "Dockerfile:2: source can't be a git ref for COPY",
        ),
        (
            "FROM busybox\nADD --checksum=sha256:00 a /a\n",
            "Dockerfile:2: checksum requires HTTP(S) or Git sources",
        ),
        (
            "FROM busybox\nADD --checksum=sha256:00 https://x/a https://x/b /\n",
            "Dockerfile:2: checksum can't be specified for multiple sources",
        ),
        ("FROM busybox\nADD --checksum=md5:00 https://x/a /\n", "Dockerfile:2: unsupported digest algorithm"),
        ("FROM busybox\nADD https://x/y.git?bogus=1 /\n", "Dockerfile:2: unexpected query \"bogus\""),
    ];
    for (df, want) in cases {
        assert_eq!(conv_err(df).await.to_string(), want, "{df}");
    }
}

// --- RUN mounts and options ------------------------------------------------------

#[tokio::test]
async fn cache_mounts_default_their_id_to_the_target() {
    let mut o = opts();
    o.cache_id_namespace = "ns".into();
    let c = conv_with("FROM busybox\nRUN --mount=type=cache,target=/root/.cache/ --mount=type=cache,id=go,target=/go,sharing=locked go build\n", &o).await;
    let g = graph(&c);
    let run = result(&g);
    assert_eq!(
        run.name(),
        "[stage-0 2/2] RUN --mount=type=cache,target=/root/.cache/ --mount=type=cache,id=go,target=/go,sharing=locked go build"
    );
    let mounts: Vec<(&str, i64, i64, Option<pb::CacheOpt>)> =
        exec(run).mounts.iter().map(|m| (m.dest.as_str(), m.input, m.output, m.cache_opt.clone())).collect();
    assert_eq!(
        mounts,
        [
            ("/", 0, 0, None),
            (
                "/go",
                -1,
                -1,
                Some(pb::CacheOpt { id: "ns/go".into(), sharing: pb::CacheSharingOpt::Locked as i32 })
            ),
            ("/root/.cache/", -1, -1, Some(pb::CacheOpt { id: "ns//root/.cache".into(), sharing: 0 })),
        ]
    );
    for cap in ["exec.mount.cache", "exec.mount.cache.sharing"] {
        assert!(run.metadata.caps.contains_key(cap));
    }
}

#[tokio::test]
async fn cache_mount_ownership_prepares_the_directory() {
    let g = graph(&conv("FROM busybox\nRUN --mount=type=cache,target=/c,uid=1000,mode=0700 true\n").await);
    let prep = by_name(&g, "[internal] setting cache mount permissions");
    let Some(Action::Mkdir(m)) = &file(prep).actions[0].action else { panic!() };
    assert_eq!((m.path.as_str(), m.mode), ("/cache", 0o700));
    assert_eq!(m.owner.as_ref().unwrap().user.as_ref().unwrap().user, Some(pb::user_opt::User::ById(1000)));
    let mount = &exec(result(&g)).mounts[1];
    assert_eq!((mount.dest.as_str(), mount.selector.as_str(), mount.input), ("/c", "/cache", 1));
}

#[tokio::test]
async fn secret_mounts_default_to_run_secrets() {
    let c = conv("FROM busybox\nRUN --mount=type=secret,id=npm --mount=type=secret,id=tok,env=TOKEN,required --mount=type=secret,source=aws,target=/root/.aws/credentials,mode=0440,uid=5 echo $TOKEN\n").await;
    let g = graph(&c);
    let run = result(&g);
    let secrets: Vec<(&str, pb::SecretOpt)> = exec(run)
        .mounts
        .iter()
        .filter(|m| m.mount_type == pb::MountType::Secret as i32)
        .map(|m| (m.dest.as_str(), m.secret_opt.clone().unwrap()))
        .collect();
    assert_eq!(
        secrets,
        [
            (
                "/run/secrets/npm",
                pb::SecretOpt { id: "npm".into(), uid: 0, gid: 0, mode: 0o400, optional: true }
            ),
            (
                "/root/.aws/credentials",
                pb::SecretOpt { id: "aws".into(), uid: 5, gid: 0, mode: 0o440, optional: true }
            ),
        ]
    );
    assert_eq!(
        exec(run).secretenv,
        [pb::SecretEnv { id: "tok".into(), name: "TOKEN".into(), optional: false }]
    );
    assert!(run.name().ends_with("echo ****"), "secret env values are masked in the name: {}", run.name());
    assert!(run.metadata.caps.contains_key("exec.secretenv"));
    let err = conv_err("FROM busybox\nRUN --mount=type=secret,required true\n").await;
    assert!(err.to_string().contains("one of source, target required"), "{err}");
}

#[tokio::test]
async fn ssh_mounts_get_the_agent_socket_and_env() {
    let g = graph(&conv("FROM busybox\nRUN --mount=type=ssh ssh-add -l\n").await);
    let run = result(&g);
    let ssh = exec(run).mounts.iter().find(|m| m.mount_type == pb::MountType::Ssh as i32).unwrap();
    assert_eq!(ssh.dest, "/run/buildkit/ssh_agent.0");
    assert_eq!(
        ssh.ssh_opt,
        Some(pb::SshOpt { id: String::new(), uid: 0, gid: 0, mode: 0o600, optional: true })
    );
    assert!(meta(run).env.contains(&"SSH_AUTH_SOCK=/run/buildkit/ssh_agent.0".to_owned()));
    let err = conv_err("FROM busybox\nRUN --mount=type=ssh,source=x true\n").await;
    assert_eq!(err.to_string(), "Dockerfile:2: ssh does not support source");
}

#[tokio::test]
async fn bind_mounts_read_other_stages_and_the_context() {
    let c = conv("FROM busybox AS build\nRUN make\nFROM busybox\nRUN --mount=from=build,source=/out,target=/in --mount=target=/src,rw ls /in /src\n").await;
    let g = graph(&c);
    let run = result(&g);
    let e = exec(run);
    let mounts: Vec<(&str, &str, bool, i64)> =
        e.mounts.iter().map(|m| (m.dest.as_str(), m.selector.as_str(), m.readonly, m.output)).collect();
    assert_eq!(mounts, [("/", "", false, 0), ("/in", "/out", true, -1), ("/src", "", false, -1)]);
    assert_eq!(input_vertex(&g, run, e.mounts[1].input as usize).name(), "[build 2/2] RUN make");
    assert_eq!(source(input_vertex(&g, run, e.mounts[2].input as usize)).identifier, "local://context");
    assert!(run.metadata.caps.contains_key("exec.mount.bind"));
    assert!(run.metadata.caps.contains_key("exec.mount.selector"));
    let err =
        conv_err("FROM busybox AS a\nRUN --mount=from=b,target=/x true\nFROM alpine AS b\nFROM a\n").await;
    assert_eq!(
        err.to_string(),
        "Dockerfile:2: cannot mount from stage \"b\" to \"/x\", stage needs to be defined before current command"
    );
    let err = conv_err("FROM busybox\nWORKDIR /\nRUN --mount=type=bind,target=. true\n").await;
    assert_eq!(err.to_string(), "Dockerfile:3: invalid mount target \"/\"");
}

#[tokio::test]
async fn tmpfs_mounts_are_sized_and_need_the_whole_context() {
    let g = graph(&conv("FROM busybox\nCOPY a /a\nRUN --mount=type=tmpfs,target=/tmp,size=1m true\n").await);
    let tmpfs = &exec(result(&g)).mounts[1];
    assert_eq!((tmpfs.dest.as_str(), tmpfs.input, tmpfs.output), ("/tmp", -1, -1));
    assert_eq!(tmpfs.tmpfs_opt, Some(pb::TmpfsOpt { size: 1 << 20 }));
    assert!(!context_source(&g).attrs.contains_key("local.followpaths"));
}

#[tokio::test]
async fn network_and_security_flags_and_daemon_options_reach_the_exec() {
    let mut o = opts();
    o.extra_hosts = vec![HostIp { host: "db".into(), ip: "10.0.0.2".into() }];
    o.hostname = "builder".into();
    o.ulimits = vec![Ulimit { name: "nofile".into(), soft: 1024, hard: 2048 }];
    o.shm_size = 64 << 20;
    o.cgroup_parent = "kiln".into();
    let g = graph(
        &conv_with(
            "FROM busybox\nRUN --network=none --security=insecure true\nRUN --network=host true\n",
            &o,
        )
        .await,
    );
    let first = by_name(&g, "[2/3] RUN --network=none --security=insecure true");
    let e = exec(first);
    assert_eq!((e.network, e.security), (NetMode::None as i32, pb::SecurityMode::Insecure as i32));
    let m = meta(first);
    assert_eq!(m.extra_hosts, [pb::HostIp { host: "db".into(), ip: "10.0.0.2".into() }]);
    assert_eq!((m.hostname.as_str(), m.cgroup_parent.as_str()), ("builder", "kiln"));
    assert_eq!(m.ulimit, [pb::Ulimit { name: "nofile".into(), soft: 1024, hard: 2048 }]);
    let shm = e.mounts.iter().find(|m| m.dest == "/dev/shm").unwrap();
    assert_eq!(shm.tmpfs_opt, Some(pb::TmpfsOpt { size: 64 << 20 }));
    for cap in ["exec.meta.network", "exec.meta.security", "exec.meta.ulimit"] {
        assert!(first.metadata.caps.contains_key(cap), "{cap}");
    }
    assert_eq!(exec(result(&g)).network, NetMode::Host as i32);

    let mut o = opts();
    o.force_network_mode = NetMode::None;
    let g = graph(&conv_with("FROM busybox\nRUN true\n", &o).await);
    assert_eq!(exec(result(&g)).network, NetMode::None as i32);
}

#[tokio::test]
async fn devices_need_the_labs_frontend() {
    let err = conv_err("FROM busybox\nRUN --device=nvidia.com/gpu=all true\n").await;
    assert_eq!(
        err.to_string(),
        "Dockerfile:2: device feature is only supported in Dockerfile frontend 1.14.0-labs or later"
    );
}

#[tokio::test]
async fn a_plain_heredoc_runs_its_body_in_the_shell() {
    let c = conv("FROM busybox\nRUN <<EOF\necho a\necho b\nEOF\n").await;
    let g = graph(&c);
    let run = result(&g);
    assert_eq!(run.name(), "[2/2] RUN <<EOF (echo a...)");
    assert_eq!(meta(run).args, ["/bin/sh", "-c", "echo a\necho b\n"]);
}

#[tokio::test]
async fn a_heredoc_with_a_shebang_runs_as_a_mounted_script() {
    let g =
        graph(&conv("FROM busybox\nRUN <<-SCRIPT\n\t#!/usr/bin/env python3\n\tprint(1)\n\tSCRIPT\n").await);
    let run = result(&g);
    assert_eq!(meta(run).args, ["/bin/sh", "-c", "/dev/pipes/SCRIPT"]);
    let pipe = exec(run).mounts.iter().find(|m| m.dest == "/dev/pipes/").unwrap();
    assert!(pipe.readonly);
    assert_eq!(pipe.selector, "/");
    let script = by_name(&g, "[internal] preparing inline document");
    let Some(Action::Mkfile(m)) = &file(script).actions[0].action else { panic!() };
    assert_eq!((m.path.as_str(), m.mode), ("/SCRIPT", 0o755));
    assert_eq!(String::from_utf8_lossy(&m.data), "#!/usr/bin/env python3\nprint(1)\n");
}

#[tokio::test]
async fn heredocs_feeding_commands_are_passed_to_the_shell_whole() {
    let g = graph(&conv("FROM busybox\nRUN cat <<EOF > /x\nhello\nEOF\n").await);
    assert_eq!(meta(result(&g)).args, ["/bin/sh", "-c", "cat <<EOF > /x\nhello\nEOF"]);
}

#[tokio::test]
async fn no_cache_stages_ignore_the_cache() {
    let df = "FROM busybox AS a\nRUN one\nFROM a AS b\nRUN two\nCOPY x /x\n";
    let mut o = opts();
    o.no_cache_stages = Some(vec!["B".into()]);
    let c = conv_with(df, &o).await;
    let g = graph(&c);
    assert!(!by_name(&g, "[a 2/2] RUN one").ignore_cache());
    assert!(by_name(&g, "[b 1/2] RUN two").ignore_cache());
    assert!(result(&g).ignore_cache());
    assert!(c.ignore_cache);
    let ret = c.definition.def.last().unwrap();
    assert!(c.definition.metadata[&digest_of(ret)].caps.contains_key("meta.ignorecache"));
    o.no_cache_stages = Some(Vec::new());
    let g = graph(&conv_with(df, &o).await);
    assert!(by_name(&g, "[a 2/2] RUN one").ignore_cache());
}

#[tokio::test]
async fn multi_platform_builds_name_the_platform() {
    let mut o = opts();
    o.multi_platform = true;
    o.target_platform = Some(arm64());
    let g = graph(&conv_with("FROM --platform=$BUILDPLATFORM busybox\nARG TARGETARCH\nRUN echo\n", &o).await);
    assert_eq!(names(&g)[1], "[linux/amd64->arm64 2/2] RUN echo");
    assert!(names(&g)[0].starts_with("[linux/amd64 1/2] FROM "));
}

#[tokio::test]
async fn an_image_for_another_supported_platform_is_kept_when_the_target_is_implicit() {
    let c = conv("FROM amd64only\n").await;
    assert_eq!(config(&c)["architecture"], "amd64");
    let mut o = opts();
    o.build_platform = arm64();
    let c = conv_with("FROM amd64only\n", &o).await;
    assert!(rules(&c).contains(&"InvalidBaseImagePlatform"));
    let w = c.warnings.iter().find(|w| w.rule.name == "InvalidBaseImagePlatform").unwrap();
    assert_eq!(
        w.message,
        "Base image amd64only was pulled with platform \"linux/amd64\", expected \"linux/arm64\" for current build"
    );
}

#[tokio::test]
async fn ops_point_back_to_their_dockerfile_lines() {
    let mut o = opts();
    o.dockerfile_name = "build.Dockerfile".into();
    let c = conv_with("FROM busybox\n\nRUN echo \\\n  hi\n", &o).await;
    let source = c.definition.source.clone().unwrap();
    assert_eq!(source.infos[0].filename, "build.Dockerfile");
    assert_eq!(source.infos[0].language, "Dockerfile");
    let run_digest = &graph(&c).vertices[1].digest;
    let lines: Vec<i32> =
        source.locations[run_digest].locations[0].ranges.iter().map(|r| r.start.unwrap().line).collect();
    assert_eq!(lines, [3, 4]);
}

// --- errors and checks ---------------------------------------------------------------

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

// --- named contexts (--build-context) ---------------------------------------

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
