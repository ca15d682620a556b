//! File ops (`client/llb/fileop.go`): a chain of mkdir, mkfile, rm, symlink
//! and copy actions applied to one state.

use std::sync::Arc;

use kiln_proto::buildkit::pb;
use pb::file_action::Action;

use super::marshal::{Marshaler, marshal_constraints};
use super::state::{Constraints, OpMetadata, Output, State, Vertex, VertexKind, dedup};
use super::{LlbError, caps};
use crate::util::{gopath, strconv};

/// A user or group, by id or by name (looked up in the state's /etc files).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum UserOpt {
    Id(u32),
    Name(String),
}

/// Owner of created files (`llb.ChownOpt`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ChownOpt {
    pub user: Option<UserOpt>,
    pub group: Option<UserOpt>,
}

impl ChownOpt {
    /// `llb.WithUser`: `user[:group]`, each a number (or `root`) or a name.
    pub(crate) fn from_user(spec: &str) -> Self {
        let parse = |v: &str| {
            if v == "root" {
                return UserOpt::Id(0);
            }
            // A signed 32-bit id, stored as uint32, as upstream's cast does.
            match strconv::parse_int(v, 10, 32) {
                Ok(id) => UserOpt::Id(id as u32),
                _ => UserOpt::Name(v.to_owned()),
            }
        };
        let mut parts = spec.splitn(2, ':');
        let user = parts.next().map(parse);
        let group = parts.next().map(parse);
        Self { user, group }
    }

    /// `llb.WithUIDGID`.
    pub(crate) fn ids(uid: u32, gid: u32) -> Self {
        Self { user: Some(UserOpt::Id(uid)), group: Some(UserOpt::Id(gid)) }
    }

    fn to_pb(&self, base: i64) -> pb::ChownOpt {
        let one = |u: &Option<UserOpt>| {
            u.as_ref().map(|u| pb::UserOpt {
                user: Some(match u {
                    UserOpt::Id(id) => pb::user_opt::User::ById(*id),
                    UserOpt::Name(name) => {
                        pb::user_opt::User::ByName(pb::NamedUserOpt { name: name.clone(), input: base })
                    }
                }),
            })
        };
        pb::ChownOpt { user: one(&self.user), group: one(&self.group) }
    }
}

/// `--chmod` of a copy: an octal mode or a symbolic one (`u+x`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ChmodOpt {
    pub mode: u32,
    pub mode_str: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct MkdirInfo {
    pub make_parents: bool,
    pub chown: Option<ChownOpt>,
    /// Nanoseconds since the epoch.
    pub created_time: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct MkfileInfo {
    pub chown: Option<ChownOpt>,
    pub created_time: Option<i64>,
}

/// Options of a copy (`llb.CopyInfo`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CopyInfo {
    pub mode: Option<ChmodOpt>,
    pub follow_symlinks: bool,
    pub copy_dir_contents_only: bool,
    pub include_patterns: Vec<String>,
    pub exclude_patterns: Vec<String>,
    pub required_paths: Vec<String>,
    pub attempt_unpack: bool,
    pub create_dest_path: bool,
    pub allow_wildcard: bool,
    pub allow_empty_wildcard: bool,
    pub chown: Option<ChownOpt>,
    pub created_time: Option<i64>,
    pub always_replace_existing_dest_paths: bool,
}

#[derive(Clone, Debug)]
enum FileStep {
    Mkdir { path: String, mode: u32, info: MkdirInfo },
    Mkfile { path: String, mode: u32, data: Vec<u8>, info: MkfileInfo },
    Copy(Box<CopyStep>),
}

#[derive(Clone, Debug)]
struct CopyStep {
    source: State,
    src: String,
    dest: String,
    info: CopyInfo,
}

/// A chain of file actions, applied in order by [`State::file`]. Relative
/// paths are taken from the working directory of the state the chain is
/// applied to.
#[derive(Clone, Debug, Default)]
pub(crate) struct FileAction {
    steps: Vec<FileStep>,
}

impl FileAction {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn mkdir(mut self, path: &str, mode: u32, info: MkdirInfo) -> Self {
        self.steps.push(FileStep::Mkdir { path: path.to_owned(), mode, info });
        self
    }

    pub(crate) fn mkfile(mut self, path: &str, mode: u32, data: &[u8], info: MkfileInfo) -> Self {
        self.steps.push(FileStep::Mkfile { path: path.to_owned(), mode, data: data.to_vec(), info });
        self
    }

    /// Copies `src` of `from` (relative to `from`'s working directory) to `dest`.
    pub(crate) fn copy(mut self, from: &State, src: &str, dest: &str, info: CopyInfo) -> Self {
        self.steps.push(FileStep::Copy(Box::new(CopyStep {
            source: from.clone(),
            src: src.to_owned(),
            dest: dest.to_owned(),
            info,
        })));
        self
    }
}

#[derive(Debug)]
pub(super) struct FileVertex {
    base: State,
    steps: Vec<FileStep>,
}

impl FileVertex {
    /// Upstream's `allOutputs`: from the last action back, each action's
    /// base and copy source.
    pub(super) fn inputs(&self) -> Vec<Output> {
        let mut outputs = Vec::new();
        for step in self.steps.iter().rev() {
            outputs.extend(self.base.output.clone());
            if let FileStep::Copy(copy) = step {
                outputs.extend(copy.source.output.clone());
            }
        }
        dedup(outputs.into_iter())
    }
}

impl State {
    /// Applies `action` to this state (`State.File`). An empty chain fails
    /// when the graph is marshalled, as upstream's nil action does.
    pub(crate) fn file(&self, action: FileAction, c: Constraints) -> State {
        let vertex = Arc::new(Vertex {
            kind: VertexKind::File(FileVertex { base: self.clone(), steps: action.steps }),
            constraints: c,
        });
        self.with_output(Some(Output::new(vertex, 0, None)))
    }
}

fn timestamp(t: Option<i64>) -> i64 {
    t.unwrap_or(-1)
}

/// `FileOp.Marshal`.
pub(super) fn marshal_file(
    f: &FileVertex,
    own: &Constraints,
    m: &mut Marshaler<'_>,
) -> Result<(pb::Op, OpMetadata), LlbError> {
    if f.steps.is_empty() {
        return Err(LlbError::NoFileAction);
    }
    let mut c = own.clone();
    // Upstream's per-action caps (patterns, symlink, …) are collected from a
    // list that is still empty at that point, so only `file.base` is ever set.
    c.add_cap(caps::FILE_BASE);
    if c.platform.is_none() {
        c.platform.clone_from(&f.base.meta.platform);
    }
    let (mut op, md) = marshal_constraints(m.base(), &c);
    op.platform = None;

    let mut inputs: Vec<pb::Input> = Vec::new();
    let mut add = |o: &Output, m: &mut Marshaler<'_>| -> Result<i64, LlbError> {
        let input = m.input(o)?;
        Ok(match inputs.iter().position(|i| *i == input) {
            Some(i) => i as i64,
            None => {
                inputs.push(input);
                inputs.len() as i64 - 1
            }
        })
    };
    // (base, secondary) per action, in the order upstream adds inputs.
    let mut indexes = Vec::with_capacity(f.steps.len());
    for step in &f.steps {
        let base = match &f.base.output {
            Some(o) => add(o, m)?,
            None => -1,
        };
        let secondary = match step {
            FileStep::Copy(copy) => match &copy.source.output {
                Some(o) => add(o, m)?,
                None => -1,
            },
            _ => -1,
        };
        indexes.push((base, secondary));
    }
    let n_inputs = inputs.len() as i64;
    let parent = f.base.get_dir();
    let mut actions = Vec::with_capacity(f.steps.len());
    for (i, (step, (base, secondary))) in f.steps.iter().zip(indexes).enumerate() {
        let action = match step {
            FileStep::Mkdir { path, mode, info } => Action::Mkdir(pb::FileActionMkDir {
                path: gopath::llb_normalize_path(parent, path, false),
                mode: (*mode & 0o777) as i32,
                make_parents: info.make_parents,
                owner: info.chown.as_ref().map(|o| o.to_pb(base)),
                timestamp: timestamp(info.created_time),
            }),
            FileStep::Mkfile { path, mode, data, info } => Action::Mkfile(pb::FileActionMkFile {
                path: gopath::llb_normalize_path(parent, path, false),
                mode: (*mode & 0o777) as i32,
                data: data.clone(),
                owner: info.chown.as_ref().map(|o| o.to_pb(base)),
                timestamp: timestamp(info.created_time),
            }),
            FileStep::Copy(copy) => {
                let CopyStep { source, src, dest, info } = copy.as_ref();
                let cleaned = gopath::clean(src);
                let src = if cleaned.starts_with('/') {
                    gopath::join(&["/", &cleaned])
                } else {
                    gopath::join(&[source.get_dir(), &cleaned])
                };
                let (mode, mode_str) = match &info.mode {
                    Some(m) if !m.mode_str.is_empty() => (0, m.mode_str.clone()),
                    Some(m) => (m.mode as i32, String::new()),
                    None => (-1, String::new()),
                };
                Action::Copy(pb::FileActionCopy {
                    src,
                    dest: gopath::llb_normalize_path(parent, dest, true),
                    owner: info.chown.as_ref().map(|o| o.to_pb(base)),
                    mode,
                    follow_symlink: info.follow_symlinks,
                    dir_copy_contents: info.copy_dir_contents_only,
                    attempt_unpack_docker_compatibility: info.attempt_unpack,
                    create_dest_path: info.create_dest_path,
                    allow_wildcard: info.allow_wildcard,
                    allow_empty_wildcard: info.allow_empty_wildcard,
                    timestamp: timestamp(info.created_time),
                    include_patterns: info.include_patterns.clone(),
                    exclude_patterns: info.exclude_patterns.clone(),
                    always_replace_existing_dest_paths: info.always_replace_existing_dest_paths,
                    mode_str,
                    required_paths: info.required_paths.clone(),
                })
            }
        };
        actions.push(pb::FileAction {
            input: if i == 0 { base } else { n_inputs + i as i64 - 1 },
            secondary_input: secondary,
            output: if i + 1 == f.steps.len() { 0 } else { -1 },
            action: Some(action),
        });
    }
    op.inputs = inputs;
    op.op = Some(pb::op::Op::File(pb::FileOp { actions }));
    Ok((op, md))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chown_specs_split_into_ids_and_names() {
        assert_eq!(ChownOpt::from_user("1000:root"), ChownOpt::ids(1000, 0));
        assert_eq!(
            ChownOpt::from_user("app"),
            ChownOpt { user: Some(UserOpt::Name("app".into())), group: None }
        );
        assert_eq!(
            ChownOpt::from_user("app:staff:x"),
            ChownOpt {
                user: Some(UserOpt::Name("app".into())),
                group: Some(UserOpt::Name("staff:x".into()))
            }
        );
        assert_eq!(ChownOpt::from_user("-1").user, Some(UserOpt::Id(u32::MAX)));
    }
}
