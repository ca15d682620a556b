//! An LLB `pb.Definition` as a graph the solver can walk.
//!
//! Each entry of `Definition.def` is one marshalled `pb.Op`; its digest is the
//! sha256 of exactly those bytes (docs/protocol.md §7), which is how
//! inputs name each other and how progress names vertices. The bytes are
//! never re-encoded. The last op is the "return" op: its only input is the
//! build's result, and it has no input when the result is empty (scratch).

use std::collections::HashMap;

use kiln_proto::buildkit::pb;
use prost::Message;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum LlbError {
    #[error("invalid LLB: the definition has no ops")]
    Empty,
    #[error("invalid LLB: op {index} ({digest}) does not decode: {source}")]
    Decode { index: usize, digest: String, source: prost::DecodeError },
    #[error("invalid LLB: op {digest} has no operation")]
    NoOperation { digest: String },
    #[error("invalid LLB: op {digest} names input {input}, which is not in the definition")]
    MissingInput { digest: String, input: String },
    #[error("invalid LLB: op {digest} depends on itself")]
    Cycle { digest: String },
    #[error("invalid LLB: the return op has {0} inputs; it takes at most one")]
    Return(usize),
}

/// An input edge: output `output` of vertex `vertex` (an index into [`Graph::vertices`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Edge {
    pub vertex: usize,
    pub output: i64,
}

#[derive(Clone, Debug)]
pub(crate) struct Vertex {
    /// `sha256:<hex>` of the op's bytes as received.
    pub digest: String,
    pub op: pb::Op,
    pub inputs: Vec<Edge>,
    pub metadata: pb::OpMetadata,
}

impl Vertex {
    /// The operation; [`Graph::parse`] guarantees it is there.
    pub(crate) fn operation(&self) -> Option<&pb::op::Op> {
        self.op.op.as_ref()
    }

    /// The name progress shows: the frontend's `llb.customname`, else one made from the op.
    pub(crate) fn name(&self) -> String {
        if let Some(name) = self.metadata.description.get("llb.customname") {
            return name.clone();
        }
        match self.operation() {
            Some(pb::op::Op::Source(s)) => s.identifier.clone(),
            Some(pb::op::Op::Exec(e)) => e.meta.as_ref().map(|m| m.args.join(" ")).unwrap_or_default(),
            Some(pb::op::Op::File(f)) => {
                f.actions.iter().map(file_action_name).collect::<Vec<_>>().join(", ")
            }
            Some(pb::op::Op::Merge(_)) => "merge".into(),
            Some(pb::op::Op::Diff(_)) => "diff".into(),
            Some(pb::op::Op::Build(_)) => "build".into(),
            None => String::new(),
        }
    }

    pub(crate) fn ignore_cache(&self) -> bool {
        self.metadata.ignore_cache
    }
}

fn file_action_name(a: &pb::FileAction) -> String {
    use pb::file_action::Action;
    match &a.action {
        Some(Action::Copy(c)) => format!("copy {} {}", c.src, c.dest),
        Some(Action::Mkfile(m)) => format!("mkfile {}", m.path),
        Some(Action::Mkdir(m)) => format!("mkdir {}", m.path),
        Some(Action::Rm(r)) => format!("rm {}", r.path),
        Some(Action::Symlink(s)) => format!("symlink {} -> {}", s.newpath, s.oldpath),
        None => "file".into(),
    }
}

/// The vertices of a definition in dependency order (every vertex after its
/// inputs), and the result edge.
#[derive(Clone, Debug)]
pub(crate) struct Graph {
    pub vertices: Vec<Vertex>,
    pub result: Option<Edge>,
}

pub(crate) fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl Graph {
    pub(crate) fn parse(def: &pb::Definition) -> Result<Self, LlbError> {
        let (last, ops) = def.def.split_last().ok_or(LlbError::Empty)?;
        let mut decoded: HashMap<String, pb::Op> = HashMap::new();
        // Order of first appearance keeps the result stable for equal inputs.
        let mut order = Vec::new();
        for (index, bytes) in ops.iter().enumerate() {
            let digest = digest_of(bytes);
            if decoded.contains_key(&digest) {
                continue;
            }
            let op = pb::Op::decode(bytes.as_slice()).map_err(|source| LlbError::Decode {
                index,
                digest: digest.clone(),
                source,
            })?;
            if op.op.is_none() {
                return Err(LlbError::NoOperation { digest });
            }
            order.push(digest.clone());
            decoded.insert(digest, op);
        }
        let ret = pb::Op::decode(last.as_slice()).map_err(|source| LlbError::Decode {
            index: ops.len(),
            digest: digest_of(last),
            source,
        })?;
        if ret.inputs.len() > 1 {
            return Err(LlbError::Return(ret.inputs.len()));
        }

        // Depth-first from every op, emitting a vertex after its inputs.
        let mut index_of: HashMap<String, usize> = HashMap::new();
        let mut vertices = Vec::new();
        let mut visiting = std::collections::HashSet::new();
        for digest in &order {
            visit(digest, &decoded, def, &mut index_of, &mut vertices, &mut visiting)?;
        }
        let result = match ret.inputs.first() {
            None => None,
            Some(input) => Some(Edge {
                vertex: *index_of.get(&input.digest).ok_or_else(|| LlbError::MissingInput {
                    digest: digest_of(last),
                    input: input.digest.clone(),
                })?,
                output: input.index,
            }),
        };
        Ok(Self { vertices, result })
    }
}

fn visit(
    digest: &str,
    ops: &HashMap<String, pb::Op>,
    def: &pb::Definition,
    index_of: &mut HashMap<String, usize>,
    vertices: &mut Vec<Vertex>,
    visiting: &mut std::collections::HashSet<String>,
) -> Result<usize, LlbError> {
    if let Some(&i) = index_of.get(digest) {
        return Ok(i);
    }
    if !visiting.insert(digest.to_owned()) {
        return Err(LlbError::Cycle { digest: digest.to_owned() });
    }
    let op = &ops[digest];
    let mut inputs = Vec::with_capacity(op.inputs.len());
    for input in &op.inputs {
        if !ops.contains_key(&input.digest) {
            return Err(LlbError::MissingInput { digest: digest.to_owned(), input: input.digest.clone() });
        }
        let vertex = visit(&input.digest, ops, def, index_of, vertices, visiting)?;
        inputs.push(Edge { vertex, output: input.index });
    }
    visiting.remove(digest);
    vertices.push(Vertex {
        digest: digest.to_owned(),
        op: op.clone(),
        inputs,
        metadata: def.metadata.get(digest).cloned().unwrap_or_default(),
    });
    let i = vertices.len() - 1;
    index_of.insert(digest.to_owned(), i);
    Ok(i)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds definitions the way BuildKit's client marshals them.
    #[derive(Default)]
    pub(crate) struct DefBuilder {
        pub def: pb::Definition,
    }

    impl DefBuilder {
        /// Adds an op and returns its digest.
        pub(crate) fn op(&mut self, op: pb::Op) -> String {
            let bytes = op.encode_to_vec();
            let digest = digest_of(&bytes);
            self.def.def.push(bytes);
            digest
        }

        pub(crate) fn named(&mut self, op: pb::Op, name: &str) -> String {
            let digest = self.op(op);
            let mut meta = pb::OpMetadata::default();
            meta.description.insert("llb.customname".into(), name.into());
            self.def.metadata.insert(digest.clone(), meta);
            digest
        }

        pub(crate) fn finish(mut self, result: Option<&str>) -> pb::Definition {
            let inputs = result.map(|d| pb::Input { digest: d.into(), index: 0 }).into_iter().collect();
            self.op(pb::Op { inputs, ..Default::default() });
            self.def
        }
    }

    pub(crate) fn source(identifier: &str) -> pb::Op {
        pb::Op {
            op: Some(pb::op::Op::Source(pb::SourceOp {
                identifier: identifier.into(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    pub(crate) fn mkfile(input: Option<&str>, path: &str, data: &str) -> pb::Op {
        let action = pb::FileAction {
            input: if input.is_some() { 0 } else { -1 },
            secondary_input: -1,
            output: 0,
            action: Some(pb::file_action::Action::Mkfile(pb::FileActionMkFile {
                path: path.into(),
                mode: 0o644,
                data: data.as_bytes().to_vec(),
                ..Default::default()
            })),
        };
        pb::Op {
            inputs: input.map(|d| pb::Input { digest: d.into(), index: 0 }).into_iter().collect(),
            op: Some(pb::op::Op::File(pb::FileOp { actions: vec![action] })),
            ..Default::default()
        }
    }

    #[test]
    fn a_chain_parses_in_dependency_order_with_digests_of_the_exact_bytes() {
        let mut b = DefBuilder::default();
        let base = b.named(source("docker-image://x/busybox:latest"), "base");
        let a = b.op(mkfile(Some(&base), "/a", "1"));
        let bytes = b.def.def[1].clone();
        let def = b.finish(Some(&a));
        let g = Graph::parse(&def).unwrap();
        assert_eq!(g.vertices.len(), 2);
        assert_eq!(g.vertices[0].digest, base);
        assert_eq!(g.vertices[0].name(), "base");
        assert_eq!(g.vertices[1].digest, digest_of(&bytes));
        assert_eq!(g.vertices[1].inputs, vec![Edge { vertex: 0, output: 0 }]);
        assert_eq!(g.vertices[1].name(), "mkfile /a");
        assert_eq!(g.result, Some(Edge { vertex: 1, output: 0 }));
    }

    #[test]
    fn inputs_listed_after_their_users_are_still_ordered_first() {
        let mut b = DefBuilder::default();
        let base_op = source("local://context");
        let base = digest_of(&base_op.encode_to_vec());
        let user = b.op(mkfile(Some(&base), "/a", "1"));
        b.op(base_op);
        let g = Graph::parse(&b.finish(Some(&user))).unwrap();
        assert_eq!(g.vertices[0].digest, base);
        assert_eq!(g.vertices[1].digest, user);
    }

    #[test]
    fn an_empty_result_is_scratch() {
        let g = Graph::parse(&DefBuilder::default().finish(None)).unwrap();
        assert!(g.vertices.is_empty() && g.result.is_none());
    }

    #[test]
    fn bad_definitions_are_named() {
        let err = Graph::parse(&pb::Definition::default()).unwrap_err();
        assert!(err.to_string().contains("no ops"));

        let mut b = DefBuilder::default();
        b.def.def.push(vec![0xff, 0xff, 0xff]);
        let err = Graph::parse(&b.finish(None)).unwrap_err();
        assert!(matches!(err, LlbError::Decode { index: 0, .. }), "{err}");

        let mut b = DefBuilder::default();
        let a = b.op(mkfile(Some("sha256:0000"), "/a", "1"));
        let err = Graph::parse(&b.finish(Some(&a))).unwrap_err();
        assert!(err.to_string().contains("names input sha256:0000"), "{err}");

        let b = DefBuilder::default();
        let err = Graph::parse(&b.finish(Some("sha256:1111"))).unwrap_err();
        assert!(matches!(err, LlbError::MissingInput { .. }), "{err}");

        let mut b = DefBuilder::default();
        let empty = b.op(pb::Op::default());
        let err = Graph::parse(&b.finish(Some(&empty))).unwrap_err();
        assert!(matches!(err, LlbError::NoOperation { .. }), "{err}");

        let mut b = DefBuilder::default();
        let x = b.op(source("local://a"));
        let y = b.op(source("local://b"));
        let ret = pb::Op {
            inputs: vec![pb::Input { digest: x, index: 0 }, pb::Input { digest: y, index: 0 }],
            ..Default::default()
        };
        b.op(ret);
        let err = Graph::parse(&b.def).unwrap_err();
        assert!(matches!(err, LlbError::Return(2)), "{err}");
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..2000 {
            let mut def = pb::Definition::default();
            for _ in 0..(seed % 4) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                def.def.push(seed.to_le_bytes()[..(seed % 8) as usize].to_vec());
            }
            let _ = Graph::parse(&def);
        }
    }
}
