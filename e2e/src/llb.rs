//! LLB definitions for tests and benchmarks, built from the wire types
//! directly: what `buildctl build` reads on stdin.

use kiln_proto::buildkit::pb;
use prost::Message;
use sha2::{Digest, Sha256};

/// Ops in the order they are added; each op's digest is that of its bytes.
#[derive(Debug, Default)]
pub struct Llb {
    ops: Vec<Vec<u8>>,
}

/// An op's output, to use as another op's input.
#[derive(Debug, Clone)]
pub struct Output(pb::Input);

impl Llb {
    fn add(&mut self, op: pb::Op) -> Output {
        let bytes = op.encode_to_vec();
        let digest = digest_of(&bytes);
        self.ops.push(bytes);
        Output(pb::Input { digest, index: 0 })
    }

    /// `docker-image://REFERENCE` for linux/amd64.
    pub fn image(&mut self, reference: &str) -> Output {
        self.add(pb::Op {
            op: Some(pb::op::Op::Source(pb::SourceOp {
                identifier: format!("docker-image://{reference}"),
                ..Default::default()
            })),
            platform: Some(pb::Platform {
                os: "linux".into(),
                architecture: "amd64".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// `local://NAME`: a directory the client sends (`buildctl --local NAME=DIR`).
    pub fn local(&mut self, name: &str) -> Output {
        let attrs = [("local.sharedkeyhint".to_owned(), name.to_owned())].into();
        self.add(pb::Op {
            op: Some(pb::op::Op::Source(pb::SourceOp { identifier: format!("local://{name}"), attrs })),
            ..Default::default()
        })
    }

    /// `/bin/sh -c SCRIPT` on `root`; its output is the changed root.
    pub fn run(&mut self, root: &Output, script: &str) -> Output {
        self.add(pb::Op {
            inputs: vec![root.0.clone()],
            op: Some(pb::op::Op::Exec(pb::ExecOp {
                meta: Some(pb::Meta {
                    args: vec!["/bin/sh".into(), "-c".into(), script.into()],
                    env: vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".into()],
                    cwd: "/".into(),
                    ..Default::default()
                }),
                mounts: vec![pb::Mount { input: 0, dest: "/".into(), output: 0, ..Default::default() }],
                ..Default::default()
            })),
            ..Default::default()
        })
    }

    /// Copies `src` of `from` to `dest` in `onto`.
    pub fn copy(&mut self, onto: &Output, from: &Output, src: &str, dest: &str) -> Output {
        let action = pb::FileAction {
            input: 0,
            secondary_input: 1,
            output: 0,
            action: Some(pb::file_action::Action::Copy(pb::FileActionCopy {
                src: src.into(),
                dest: dest.into(),
                mode: -1,
                timestamp: -1,
                follow_symlink: true,
                dir_copy_contents: true,
                create_dest_path: true,
                allow_wildcard: true,
                allow_empty_wildcard: true,
                ..Default::default()
            })),
        };
        self.add(pb::Op {
            inputs: vec![onto.0.clone(), from.0.clone()],
            op: Some(pb::op::Op::File(pb::FileOp { actions: vec![action] })),
            ..Default::default()
        })
    }

    /// The definition whose result is `result`.
    pub fn finish(mut self, result: &Output) -> pb::Definition {
        self.add(pb::Op { inputs: vec![result.0.clone()], ..Default::default() });
        pb::Definition { def: self.ops, ..Default::default() }
    }
}

/// An op's digest: sha256 of its bytes.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The base image, then `sh -c SCRIPT` on it.
pub fn image_and_run(image: &str, script: &str) -> pb::Definition {
    let mut llb = Llb::default();
    let base = llb.image(image);
    let out = llb.run(&base, script);
    llb.finish(&out)
}
