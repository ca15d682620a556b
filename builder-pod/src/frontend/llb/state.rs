//! States, outputs and per-op constraints (`client/llb/state.go`, `meta.go`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, OnceLock};

use kiln_proto::buildkit::pb;

use super::exec::{ExecVertex, HostIp, Ulimit};
use super::file::FileVertex;
use super::marshal::SourceLocation;
use super::source::SourceVertex;
use super::{LlbError, NetMode, Platform, SecurityMode, caps};
use crate::util::gopath;

/// Environment variables in the order a process sees them: setting a key
/// again moves it to the end, as `llb.EnvList` orders keys by their last set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct EnvList(Vec<(String, String)>);

impl EnvList {
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// `AddOrReplace`.
    pub(crate) fn set(&mut self, key: &str, value: &str) {
        self.0.retain(|(k, _)| k != key);
        self.0.push((key.to_owned(), value.to_owned()));
    }

    /// `SetDefault`: sets `key` only when it is unset.
    pub(crate) fn set_default(&mut self, key: &str, value: &str) {
        if self.get(key).is_none() {
            self.set(key, value);
        }
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// `KEY=value` strings, as `Meta.env` carries them.
    pub(crate) fn to_array(&self) -> Vec<String> {
        self.0.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }
}

/// What a state carries besides its output (`llb.State`'s value keys).
#[derive(Clone, Debug, Default)]
pub(super) struct Meta {
    pub env: EnvList,
    pub dir: String,
    pub user: String,
    pub hostname: String,
    pub platform: Option<Platform>,
    pub network: NetMode,
    pub security: SecurityMode,
    pub extra_hosts: Vec<HostIp>,
    pub ulimits: Vec<Ulimit>,
    pub cgroup_parent: String,
}

/// One output of an op, or a [`Placeholder`] filled in later.
#[derive(Clone)]
pub(crate) struct Output {
    pub(super) inner: OutputRef,
}

#[derive(Clone)]
pub(super) enum OutputRef {
    Op { vertex: Arc<Vertex>, index: i64, platform: Option<Platform> },
    Placeholder(Arc<OnceLock<Output>>),
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            OutputRef::Op { vertex, index, .. } => {
                write!(f, "Output({} {:?})", vertex.kind_name(), index)
            }
            OutputRef::Placeholder(cell) => match cell.get() {
                Some(o) => write!(f, "Placeholder({o:?})"),
                None => f.write_str("Placeholder(empty)"),
            },
        }
    }
}

impl Output {
    pub(super) fn new(vertex: Arc<Vertex>, index: i64, platform: Option<Platform>) -> Self {
        Self { inner: OutputRef::Op { vertex, index, platform } }
    }

    /// The op behind this output and its index, looking through placeholders.
    pub(super) fn resolve(&self) -> Result<(&Arc<Vertex>, i64), LlbError> {
        match &self.inner {
            OutputRef::Op { vertex, index, .. } => Ok((vertex, *index)),
            OutputRef::Placeholder(cell) => cell.get().ok_or(LlbError::EmptyPlaceholder)?.resolve(),
        }
    }

    /// The vertex for graph walks, looking through placeholders.
    pub(super) fn vertex(&self) -> Result<&Arc<Vertex>, LlbError> {
        match &self.inner {
            OutputRef::Op { vertex, .. } => Ok(vertex),
            OutputRef::Placeholder(cell) => cell.get().ok_or(LlbError::EmptyPlaceholder)?.vertex(),
        }
    }

    /// Identity for de-duplicating inputs the way upstream compares `Output` values.
    pub(super) fn identity(&self) -> usize {
        match &self.inner {
            OutputRef::Op { vertex, .. } => Arc::as_ptr(vertex) as usize,
            OutputRef::Placeholder(cell) => Arc::as_ptr(cell) as usize,
        }
    }

    pub(super) fn platform(&self) -> Option<&Platform> {
        match &self.inner {
            OutputRef::Op { platform, .. } => platform.as_ref(),
            OutputRef::Placeholder(_) => None,
        }
    }
}

/// A state whose output is decided later, like the Dockerfile frontend's
/// build context: every COPY refers to it while the paths it needs are
/// still being collected.
#[derive(Clone, Debug, Default)]
pub(crate) struct Placeholder(Arc<OnceLock<Output>>);

impl Placeholder {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// A fresh state (working directory `/`) on this placeholder's output.
    pub(crate) fn state(&self) -> State {
        State::from_output(Output { inner: OutputRef::Placeholder(Arc::clone(&self.0)) })
    }

    /// Gives the placeholder `state`'s output; marshalling then sees that op.
    pub(crate) fn fill(&self, state: &State) -> Result<(), LlbError> {
        let output = state.output.clone().ok_or(LlbError::PlaceholderFill)?;
        self.0.set(output).map_err(|_| LlbError::PlaceholderFill)
    }
}

/// An op of the graph with its own constraints.
#[derive(Debug)]
pub(super) struct Vertex {
    pub kind: VertexKind,
    pub constraints: Constraints,
}

#[derive(Debug)]
pub(super) enum VertexKind {
    Source(SourceVertex),
    Exec(ExecVertex),
    File(FileVertex),
    Merge(Vec<Output>),
    Definition(super::definition::DefinitionVertex),
}

impl Vertex {
    fn kind_name(&self) -> &'static str {
        match self.kind {
            VertexKind::Source(_) => "source",
            VertexKind::Exec(_) => "exec",
            VertexKind::File(_) => "file",
            VertexKind::Merge(_) => "merge",
            VertexKind::Definition(_) => "definition",
        }
    }

    /// Inputs in the order upstream's `Vertex.Inputs()` lists them, which
    /// fixes the order of ops in the definition.
    pub(super) fn inputs(&self) -> Vec<Output> {
        match &self.kind {
            VertexKind::Source(_) | VertexKind::Definition(_) => Vec::new(),
            VertexKind::Exec(e) => dedup(e.mounts.iter().filter_map(|m| m.source.clone())),
            VertexKind::File(f) => f.inputs(),
            VertexKind::Merge(inputs) => inputs.clone(),
        }
    }
}

pub(super) fn dedup(outputs: impl Iterator<Item = Output>) -> Vec<Output> {
    let mut seen = BTreeSet::new();
    outputs.filter(|o| seen.insert((o.identity(), o.resolve().map(|(_, i)| i).unwrap_or(i64::MIN)))).collect()
}

/// Per-op metadata (`pb.OpMetadata`), merged the way `mergeMetadata` does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct OpMetadata {
    pub ignore_cache: bool,
    pub description: BTreeMap<String, String>,
    pub export_cache: Option<bool>,
    pub caps: BTreeSet<String>,
    pub progress_group: Option<pb::ProgressGroup>,
}

impl OpMetadata {
    pub(super) fn merge(&mut self, other: &OpMetadata) {
        self.ignore_cache |= other.ignore_cache;
        self.description.extend(other.description.iter().map(|(k, v)| (k.clone(), v.clone())));
        if other.export_cache.is_some() {
            self.export_cache = other.export_cache;
        }
        self.caps.extend(other.caps.iter().cloned());
        if other.progress_group.is_some() {
            self.progress_group.clone_from(&other.progress_group);
        }
    }

    pub(super) fn to_pb(&self) -> pb::OpMetadata {
        pb::OpMetadata {
            ignore_cache: self.ignore_cache,
            description: self.description.clone(),
            export_cache: self.export_cache.map(|value| pb::ExportCache { value }),
            caps: self.caps.iter().map(|c| (c.clone(), true)).collect(),
            progress_group: self.progress_group.clone(),
        }
    }
}

/// Options every op takes (`llb.ConstraintsOpt`): its platform, metadata
/// and where in a source file it comes from.
#[derive(Clone, Debug, Default)]
pub(crate) struct Constraints {
    pub platform: Option<Platform>,
    pub worker_constraints: Vec<String>,
    pub metadata: OpMetadata,
    pub locations: Vec<SourceLocation>,
}

impl Constraints {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// `llb.WithCustomName`: the name progress shows.
    pub(crate) fn custom_name(self, name: impl Into<String>) -> Self {
        self.description(super::CUSTOM_NAME, name)
    }

    /// `llb.WithDescription` with one entry.
    pub(crate) fn description(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.description.insert(key.into(), value.into());
        self
    }

    /// `llb.IgnoreCache`.
    pub(crate) fn ignore_cache(mut self) -> Self {
        self.metadata.ignore_cache = true;
        self
    }

    /// `llb.ProgressGroup`.
    pub(crate) fn progress_group(mut self, id: &str, name: &str, weak: bool) -> Self {
        self.metadata.progress_group =
            Some(pb::ProgressGroup { id: id.to_owned(), name: name.to_owned(), weak });
        self
    }

    /// `llb.Platform`.
    pub(crate) fn platform(mut self, platform: Platform) -> Self {
        self.platform = Some(platform);
        self
    }

    /// `SourceMap.Location`: ties the op to lines of a source file.
    pub(crate) fn location(mut self, location: SourceLocation) -> Self {
        self.locations.push(location);
        self
    }

    pub(super) fn add_cap(&mut self, cap: &str) {
        self.metadata.caps.insert(cap.to_owned());
    }
}

/// An op output plus the settings later ops inherit. Scratch has no output.
#[derive(Clone, Debug)]
pub(crate) struct State {
    pub(super) output: Option<Output>,
    pub(super) meta: Meta,
}

impl Default for State {
    fn default() -> Self {
        Self::scratch()
    }
}

impl State {
    /// An empty filesystem (`llb.Scratch`).
    pub(crate) fn scratch() -> Self {
        Self { output: None, meta: Meta { dir: "/".to_owned(), ..Meta::default() } }
    }

    /// `llb.NewState`: a fresh state on `output`, working directory `/`,
    /// the output's platform if it has one.
    pub(crate) fn from_output(output: Output) -> Self {
        let mut s = Self::scratch();
        s.meta.platform = output.platform().map(Platform::normalize);
        s.output = Some(output);
        s
    }

    pub(crate) fn output(&self) -> Option<&Output> {
        self.output.as_ref()
    }

    /// `State.WithOutput`: this state's settings on another output.
    pub(crate) fn with_output(&self, output: Option<Output>) -> Self {
        let mut s = self.clone();
        if let Some(p) = output.as_ref().and_then(Output::platform) {
            s.meta.platform = Some(p.normalize());
        }
        s.output = output;
        s
    }

    pub(crate) fn add_env(&self, key: &str, value: &str) -> Self {
        let mut s = self.clone();
        s.meta.env.set(key, value);
        s
    }

    pub(crate) fn env(&self) -> &EnvList {
        &self.meta.env
    }

    /// Sets the working directory; a relative `dir` is joined to the current one.
    pub(crate) fn dir(&self, dir: &str) -> Self {
        let mut s = self.clone();
        s.meta.dir = if dir.starts_with('/') {
            dir.to_owned()
        } else {
            let prev = if self.meta.dir.is_empty() { "/" } else { &self.meta.dir };
            gopath::join(&[prev, dir])
        };
        s
    }

    pub(crate) fn get_dir(&self) -> &str {
        &self.meta.dir
    }

    pub(crate) fn user(&self, user: &str) -> Self {
        let mut s = self.clone();
        s.meta.user = user.to_owned();
        s
    }

    pub(crate) fn hostname(&self, hostname: &str) -> Self {
        let mut s = self.clone();
        s.meta.hostname = hostname.to_owned();
        s
    }

    pub(crate) fn platform(&self, platform: &Platform) -> Self {
        let mut s = self.clone();
        s.meta.platform = Some(platform.normalize());
        s
    }

    pub(crate) fn get_platform(&self) -> Option<&Platform> {
        self.meta.platform.as_ref()
    }

    pub(crate) fn network(&self, mode: NetMode) -> Self {
        let mut s = self.clone();
        s.meta.network = mode;
        s
    }
}

/// Layers `inputs` on top of each other (`llb.Merge`). Scratch inputs are
/// dropped; with one input left that input is the result.
pub(crate) fn merge(inputs: &[State], mut c: Constraints) -> State {
    let kept: Vec<&State> = inputs.iter().filter(|s| s.output.is_some()).collect();
    match kept.as_slice() {
        [] => State::scratch(),
        [one] => (*one).clone(),
        [first, ..] => {
            c.add_cap(caps::MERGE_OP);
            let outputs = kept.iter().filter_map(|s| s.output.clone()).collect();
            let vertex = Arc::new(Vertex { kind: VertexKind::Merge(outputs), constraints: c });
            first.with_output(Some(Output::new(vertex, 0, None)))
        }
    }
}
