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

mod args;
mod config;
mod copy;
mod errors;
mod named;
mod run;
mod stages;

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

fn source_is(v: &Vertex, prefix: &str) -> bool {
    matches!(v.operation(), Some(pb::op::Op::Source(s)) if s.identifier.starts_with(prefix))
}
