//! A state on an LLB definition someone else marshalled (`llb.NewDefinitionOp`):
//! what a frontend input (`input:NAME` named contexts, bake's target-to-target
//! contexts) arrives as. Its ops go into the new definition as they are.

use std::sync::Arc;

use kiln_proto::buildkit::pb;
use prost::Message;

use super::state::{Constraints, OpMetadata, Output, State, Vertex, VertexKind};
use super::{LlbError, Platform};
use crate::solver::llb::digest_of;

/// The ops of a definition, except its terminal op, in its order.
#[derive(Debug)]
pub(super) struct DefinitionVertex {
    pub ops: Vec<DefinedOp>,
    /// The op the terminal names: its output is this state's.
    pub head: usize,
}

#[derive(Debug)]
pub(super) struct DefinedOp {
    pub digest: String,
    pub bytes: Vec<u8>,
    pub metadata: OpMetadata,
}

impl DefinitionVertex {
    /// The op the definition returns.
    pub(super) fn returned(&self) -> Result<&DefinedOp, LlbError> {
        self.ops.get(self.head).ok_or_else(|| invalid("it returns no op"))
    }
}

fn invalid(reason: impl Into<String>) -> LlbError {
    LlbError::Definition(reason.into())
}

/// The state `def` returns; scratch when it has no ops.
pub(crate) fn from_definition(def: &pb::Definition) -> Result<State, LlbError> {
    let Some((terminal, ops)) = def.def.split_last() else {
        return Ok(State::scratch());
    };
    let terminal = pb::Op::decode(terminal.as_slice()).map_err(|e| invalid(format!("its last op: {e}")))?;
    let [input] = terminal.inputs.as_slice() else {
        return Err(invalid(format!("its last op has {} inputs, not one", terminal.inputs.len())));
    };
    let ops: Vec<DefinedOp> = ops
        .iter()
        .map(|bytes| {
            let digest = digest_of(bytes);
            let metadata = def.metadata.get(&digest).map(from_pb).unwrap_or_default();
            DefinedOp { digest, bytes: bytes.clone(), metadata }
        })
        .collect();
    let head = ops
        .iter()
        .position(|op| op.digest == input.digest)
        .ok_or_else(|| invalid(format!("it returns {}, which is none of its ops", input.digest)))?;
    let head_op = pb::Op::decode(ops[head].bytes.as_slice())
        .map_err(|e| invalid(format!("op {}: {e}", input.digest)))?;
    let platform = head_op.platform.map(|p| Platform {
        os: p.os,
        architecture: p.architecture,
        variant: (!p.variant.is_empty()).then_some(p.variant),
        os_version: (!p.os_version.is_empty()).then_some(p.os_version),
        os_features: (!p.os_features.is_empty()).then_some(p.os_features),
    });
    let vertex = Arc::new(Vertex {
        kind: VertexKind::Definition(DefinitionVertex { ops, head }),
        constraints: Constraints::new(),
    });
    Ok(State::from_output(Output::new(vertex, input.index, platform)))
}

fn from_pb(md: &pb::OpMetadata) -> OpMetadata {
    OpMetadata {
        ignore_cache: md.ignore_cache,
        description: md.description.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        export_cache: md.export_cache.as_ref().map(|e| e.value),
        caps: md.caps.iter().filter(|(_, on)| **on).map(|(c, _)| c.clone()).collect(),
        progress_group: md.progress_group.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::llb::{FileAction, ImageOptions, MarshalOptions, MkdirInfo, image, marshal};
    use crate::solver::llb::Graph;

    fn busybox_definition() -> pb::Definition {
        let state = image(
            "busybox",
            ImageOptions { constraints: Constraints::new().custom_name("base"), ..ImageOptions::default() },
        );
        marshal(&state, &MarshalOptions::default()).unwrap()
    }

    #[test]
    fn a_definition_marshals_back_to_itself_and_carries_its_ops_into_the_next() {
        let def = busybox_definition();
        let state = from_definition(&def).unwrap();
        let again = marshal(&state, &MarshalOptions::default()).unwrap();
        assert_eq!(again.def, def.def);
        assert_eq!(again.metadata, def.metadata);

        let mkdir = MkdirInfo { make_parents: true, chown: None, created_time: None };
        let next =
            state.file(FileAction::new().mkdir("/x", 0o755, mkdir), Constraints::new().custom_name("mkdir"));
        let def2 = marshal(&next, &MarshalOptions::default()).unwrap();
        let g = Graph::parse(&def2).unwrap();
        let names: Vec<String> = g.vertices.iter().map(|v| v.name()).collect();
        assert_eq!(names, ["base", "mkdir"]);
        let image_digest = digest_of(&def.def[0]);
        let file = &g.vertices[g.result.unwrap().vertex];
        assert_eq!(g.vertices[file.inputs[0].vertex].digest, image_digest);
        assert_eq!(def2.metadata[&image_digest].description["llb.customname"], "base");
    }

    #[test]
    fn an_empty_definition_is_scratch_and_broken_ones_are_errors() {
        assert!(from_definition(&pb::Definition::default()).unwrap().output().is_none());
        let mut def = busybox_definition();
        let terminal =
            pb::Op { inputs: vec![pb::Input { digest: "sha256:00".into(), index: 0 }], ..pb::Op::default() };
        *def.def.last_mut().unwrap() = terminal.encode_to_vec();
        let err = from_definition(&def).unwrap_err().to_string();
        assert_eq!(err, "invalid LLB definition: it returns sha256:00, which is none of its ops");
        *def.def.last_mut().unwrap() = pb::Op::default().encode_to_vec();
        let err = from_definition(&def).unwrap_err().to_string();
        assert_eq!(err, "invalid LLB definition: its last op has 0 inputs, not one");
        *def.def.last_mut().unwrap() = vec![0xff, 0xff];
        assert!(
            from_definition(&def)
                .unwrap_err()
                .to_string()
                .starts_with("invalid LLB definition: its last op:")
        );
    }
}
