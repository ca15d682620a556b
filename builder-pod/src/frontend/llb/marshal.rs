//! From a state to a `pb.Definition` (`client/llb/marshal.go`,
//! `State.Marshal`, `sourcemap.go`).
//!
//! Ops are written inputs first (a depth-first walk in upstream's input
//! order), each distinct op once, then the return op whose only input is the
//! state's output. Metadata is keyed by op digest; the return op's metadata
//! carries the `constraints`/`platform` caps and the `meta.*` caps of
//! whatever metadata the graph uses.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use kiln_proto::buildkit::pb;
use prost::Message;

use super::exec::marshal_exec;
use super::file::marshal_file;
use super::source::marshal_source;
use super::state::{Constraints, OpMetadata, Output, State, Vertex, VertexKind};
use super::{LlbError, Platform, caps, default_platform};
use crate::solver::llb::digest_of;

/// A source file ops point back into, e.g. the Dockerfile (`llb.SourceMap`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SourceMap {
    pub filename: String,
    pub language: String,
    pub data: Vec<u8>,
    /// The LLB that loads the file, when known.
    pub definition: Option<pb::Definition>,
}

/// Lines of a [`SourceMap`] an op comes from.
#[derive(Clone, Debug)]
pub(crate) struct SourceLocation {
    pub map: Arc<SourceMap>,
    pub ranges: Vec<pb::Range>,
}

/// Marshal-wide defaults (`State.SetMarshalDefaults` / `Marshal` options).
#[derive(Clone, Debug, Default)]
pub(crate) struct MarshalOptions {
    /// The platform of ops that set none; the host's when unset.
    pub platform: Option<Platform>,
    /// The LLB caps the daemon supports (`llb.WithCaps`); `None` when unknown.
    pub caps: Option<BTreeSet<String>>,
    /// `local.unique` for local sources without a session.
    pub local_unique_id: String,
}

struct Marshalled {
    digest: String,
    bytes: Vec<u8>,
    metadata: OpMetadata,
    locations: Vec<SourceLocation>,
}

pub(super) struct Marshaler<'a> {
    opts: &'a MarshalOptions,
    base: Constraints,
    done: HashMap<usize, Arc<Marshalled>>,
}

impl<'a> Marshaler<'a> {
    fn new(opts: &'a MarshalOptions) -> Self {
        let base = Constraints {
            platform: Some(opts.platform.clone().unwrap_or_else(default_platform)),
            ..Constraints::default()
        };
        Self { opts, base, done: HashMap::new() }
    }

    pub(super) fn base(&self) -> &Constraints {
        &self.base
    }

    pub(super) fn caps(&self) -> Option<&BTreeSet<String>> {
        self.opts.caps.as_ref()
    }

    pub(super) fn platform(&self) -> Option<&Platform> {
        self.base.platform.as_ref()
    }

    pub(super) fn local_unique_id(&self) -> &str {
        &self.opts.local_unique_id
    }

    /// The `pb.Input` naming `output`.
    pub(super) fn input(&mut self, output: &Output) -> Result<pb::Input, LlbError> {
        let (vertex, index) = output.resolve()?;
        let vertex = Arc::clone(vertex);
        let m = self.vertex(&vertex)?;
        Ok(pb::Input { digest: m.digest.clone(), index })
    }

    fn vertex(&mut self, v: &Arc<Vertex>) -> Result<Arc<Marshalled>, LlbError> {
        let key = Arc::as_ptr(v) as usize;
        if let Some(m) = self.done.get(&key) {
            return Ok(Arc::clone(m));
        }
        let built = |(op, metadata): (pb::Op, OpMetadata)| {
            let bytes = encode_op(&op);
            Marshalled {
                digest: digest_of(&bytes),
                bytes,
                metadata,
                locations: v.constraints.locations.clone(),
            }
        };
        let m = Arc::new(match &v.kind {
            VertexKind::Source(s) => built(marshal_source(s, &v.constraints, self)?),
            VertexKind::Exec(e) => built(marshal_exec(e, &v.constraints, self)?),
            VertexKind::File(f) => built(marshal_file(f, &v.constraints, self)?),
            VertexKind::Merge(inputs) => built(self.merge(inputs, &v.constraints)?),
            // Marshalled already: the op the definition returns is this vertex.
            VertexKind::Definition(d) => {
                let op = d.returned()?;
                Marshalled {
                    digest: op.digest.clone(),
                    bytes: op.bytes.clone(),
                    metadata: op.metadata.clone(),
                    locations: Vec::new(),
                }
            }
        });
        self.done.insert(key, Arc::clone(&m));
        Ok(m)
    }

    fn merge(&mut self, inputs: &[Output], c: &Constraints) -> Result<(pb::Op, OpMetadata), LlbError> {
        if inputs.len() < 2 {
            return Err(LlbError::MergeInputs);
        }
        let (mut op, md) = marshal_constraints(&self.base, c);
        op.platform = None;
        let mut merge = pb::MergeOp::default();
        for input in inputs {
            merge.inputs.push(pb::MergeInput { input: op.inputs.len() as i64 });
            op.inputs.push(self.input(input)?);
        }
        op.op = Some(pb::op::Op::Merge(merge));
        Ok((op, md))
    }
}

/// An op's bytes as BuildKit's Go encoder writes them: the plain fields in
/// field-number order, then the `op` oneof. prost would put the oneof (tags
/// 2–7) before `platform` (10) and `constraints` (11); same message,
/// different bytes, different digest.
pub(super) fn encode_op(op: &pb::Op) -> Vec<u8> {
    let mut buf = Vec::with_capacity(op.encoded_len());
    for input in &op.inputs {
        prost::encoding::message::encode(1, input, &mut buf);
    }
    if let Some(platform) = &op.platform {
        prost::encoding::message::encode(10, platform, &mut buf);
    }
    if let Some(constraints) = &op.constraints {
        prost::encoding::message::encode(11, constraints, &mut buf);
    }
    if let Some(oneof) = &op.op {
        oneof.encode(&mut buf);
    }
    buf
}

/// `llb.MarshalConstraints`: the op's platform (its own, else the default),
/// worker constraints, and its metadata merged over the defaults'.
pub(super) fn marshal_constraints(base: &Constraints, own: &Constraints) -> (pb::Op, OpMetadata) {
    let platform = own.platform.clone().or_else(|| base.platform.clone()).unwrap_or_else(default_platform);
    let mut filter = base.worker_constraints.clone();
    filter.extend(own.worker_constraints.iter().cloned());
    let mut metadata = base.metadata.clone();
    metadata.merge(&own.metadata);
    let op = pb::Op {
        inputs: Vec::new(),
        platform: Some(pb::Platform {
            architecture: platform.architecture.clone(),
            os: platform.os.clone(),
            variant: platform.variant.clone().unwrap_or_default(),
            os_version: platform.os_version.clone().unwrap_or_default(),
            os_features: platform.os_features.clone().unwrap_or_default(),
        }),
        constraints: Some(pb::WorkerConstraints { filter }),
        op: None,
    };
    (op, metadata)
}

struct Walk<'m, 'a> {
    m: &'m mut Marshaler<'a>,
    visited: HashSet<usize>,
    written: HashSet<String>,
    def: pb::Definition,
    metadata: BTreeMap<String, OpMetadata>,
    locations: Vec<(String, Vec<SourceLocation>)>,
}

impl Walk<'_, '_> {
    fn visit(&mut self, v: &Arc<Vertex>) -> Result<(), LlbError> {
        let key = Arc::as_ptr(v) as usize;
        if self.visited.contains(&key) {
            return Ok(());
        }
        for input in v.inputs() {
            let vertex = Arc::clone(input.vertex()?);
            self.visit(&vertex)?;
        }
        if let VertexKind::Definition(d) = &v.kind {
            // Its ops come in its own order, which already has inputs first.
            for op in &d.ops {
                self.metadata.entry(op.digest.clone()).or_default().merge(&op.metadata);
                if self.written.insert(op.digest.clone()) {
                    self.def.def.push(op.bytes.clone());
                }
            }
        }
        let m = self.m.vertex(v)?;
        self.visited.insert(key);
        self.metadata.entry(m.digest.clone()).or_default().merge(&m.metadata);
        self.locations.push((m.digest.clone(), m.locations.clone()));
        if self.written.insert(m.digest.clone()) {
            self.def.def.push(m.bytes.clone());
        }
        Ok(())
    }
}

/// Marshals the graph below `state`. A scratch state gives a definition
/// with no ops at all, as upstream's does.
pub(crate) fn marshal(state: &State, opts: &MarshalOptions) -> Result<pb::Definition, LlbError> {
    let Some(output) = state.output() else {
        return Ok(pb::Definition::default());
    };
    let mut m = Marshaler::new(opts);
    let mut walk = Walk {
        m: &mut m,
        visited: HashSet::new(),
        written: HashSet::new(),
        def: pb::Definition::default(),
        metadata: BTreeMap::new(),
        locations: Vec::new(),
    };
    let head = Arc::clone(output.vertex()?);
    walk.visit(&head)?;
    let input = walk.m.input(output)?;
    let Walk { mut def, mut metadata, locations, .. } = walk;

    let ret = pb::Op { inputs: vec![input], ..pb::Op::default() }.encode_to_vec();
    let mut ret_md = metadata.get(&digest_of(&ret)).cloned().unwrap_or_default();
    ret_md.caps.insert(caps::CONSTRAINTS.to_owned());
    ret_md.caps.insert(caps::PLATFORM.to_owned());
    for md in metadata.values() {
        if md.ignore_cache {
            ret_md.caps.insert(caps::META_IGNORE_CACHE.to_owned());
        }
        if !md.description.is_empty() {
            ret_md.caps.insert(caps::META_DESCRIPTION.to_owned());
        }
        if md.export_cache.is_some() {
            ret_md.caps.insert(caps::META_EXPORT_CACHE.to_owned());
        }
    }
    metadata.insert(digest_of(&ret), ret_md);
    def.def.push(ret);
    def.metadata = metadata.into_iter().map(|(k, v)| (k, v.to_pb())).collect();
    def.source = Some(source_info(locations));
    Ok(def)
}

/// `sourceMapCollector.Marshal`: each distinct source file once, and per op
/// digest the line ranges pointing into it.
fn source_info(locations: Vec<(String, Vec<SourceLocation>)>) -> pb::Source {
    let mut maps: Vec<Arc<SourceMap>> = Vec::new();
    let mut out = pb::Source::default();
    for (digest, locs) in locations {
        // Upstream's collector gives every op an entry, empty ones included;
        // prost leaves an empty message out of a map entry, which Go then
        // decodes as nil and buildx's `NewDefinitionOp` dereferences. An op
        // without locations gets no entry.
        if locs.is_empty() {
            continue;
        }
        let entry = out.locations.entry(digest).or_default();
        for loc in locs {
            let index = match maps.iter().position(|m| Arc::ptr_eq(m, &loc.map) || **m == *loc.map) {
                Some(i) => i,
                None => {
                    maps.push(Arc::clone(&loc.map));
                    maps.len() - 1
                }
            };
            entry.locations.push(pb::Location { source_index: index as i32, ranges: loc.ranges.clone() });
        }
    }
    out.infos = maps
        .iter()
        .map(|m| pb::SourceInfo {
            filename: m.filename.clone(),
            data: m.data.clone(),
            definition: m.definition.clone(),
            language: m.language.clone(),
        })
        .collect();
    out
}
