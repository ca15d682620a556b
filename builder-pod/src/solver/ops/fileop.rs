//! FileOp: file changes made through an overlay mount of each action's
//! input, so what a chain of actions writes or deletes becomes one new layer.

use kiln_proto::buildkit::pb;
use kiln_proto::buildkit::pb::file_action::Action;

use crate::cache::contenthash::{HashCache, content_hash};
use crate::cache::mount::{MountError, mount};
use crate::cache::{CacheError, CacheManager, PendingLayer, Snapshot};
use crate::solver::file::{self, FileOpError, UserLookup};

#[derive(Debug, thiserror::Error)]
pub(crate) enum FileOpRunError {
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Action(#[from] FileOpError),
    #[error("file action {action}: input {input} is neither an op input nor an earlier action")]
    Input { action: usize, input: i64 },
    #[error("file action {action} has no action")]
    Empty { action: usize },
    #[error("file action {action} panicked or was cancelled")]
    Join { action: usize },
    /// BuildKit's words (`ops/file.go` `loadUser`): an owner name with no
    /// input to look it up in, as `COPY --link --chown=NAME` gives.
    #[error("invalid user index: {index}")]
    UserIndex { action: usize, index: i64 },
    #[error("hashing {path} for the cache key: {source}")]
    Hash { path: std::path::PathBuf, source: std::io::Error },
}

/// For each op input read only as a copy source: a key of the content the
/// copies select from it (their source paths; for a wildcard, the directory
/// it searches). An input that an action also writes onto keeps its own key.
pub(crate) async fn selected_keys(
    cache: &CacheManager,
    hashes: &HashCache,
    op: &pb::FileOp,
    inputs: &[Snapshot],
) -> Result<Vec<Option<String>>, FileOpRunError> {
    let mut selections: Vec<Option<Vec<String>>> = vec![Some(Vec::new()); inputs.len()];
    for action in &op.actions {
        if let Some(i) = usize::try_from(action.input).ok().filter(|i| *i < inputs.len()) {
            selections[i] = None;
        }
        if let Some(Action::Copy(copy)) = &action.action
            && let Some(i) = usize::try_from(action.secondary_input).ok().filter(|i| *i < inputs.len())
            && let Some(paths) = &mut selections[i]
        {
            paths.push(selection_root(&copy.src));
        }
    }
    let mut keys = Vec::with_capacity(inputs.len());
    for (input, selection) in inputs.iter().zip(selections) {
        let Some(mut paths) = selection.filter(|p| !p.is_empty()) else {
            keys.push(None);
            continue;
        };
        paths.sort();
        paths.dedup();
        let view = mount(cache, input, None)?;
        let root = view.path().to_owned();
        let key = tokio::task::block_in_place(|| {
            let rels: Vec<&str> = paths.iter().map(String::as_str).collect();
            content_hash(&root, &rels, hashes)
        })
        .map_err(|(path, source)| FileOpRunError::Hash { path, source })?;
        keys.push(Some(key));
    }
    Ok(keys)
}

/// The part of a copy source whose content decides the copy: the path
/// itself, or for a wildcard the directory it is matched in.
fn selection_root(src: &str) -> String {
    let clean = src.trim_start_matches('/');
    match clean.find(['*', '?', '[']) {
        None => clean.trim_end_matches('/').to_owned(),
        Some(i) => clean[..i].rsplit_once('/').map_or(String::new(), |(dir, _)| dir.to_owned()),
    }
}

/// An action's result while the op runs.
enum Slot {
    Done(Snapshot),
    /// Not committed yet: the one action that reads it writes on into the
    /// same layer, as BuildKit passes a mutable ref along a chain of actions.
    Open {
        base: Snapshot,
        upper: PendingLayer,
    },
    /// An open result handed on to the action that read it.
    Taken,
}

/// Runs the actions in order and returns the snapshots of the op's outputs.
/// A chain of actions where each result is read only by the next one makes
/// one layer, not one per action (`ops/file.go` commits a result only when
/// it is an output or read twice).
pub(crate) async fn run(
    cache: &CacheManager,
    op: &pb::FileOp,
    inputs: &[Snapshot],
) -> Result<Vec<Snapshot>, FileOpRunError> {
    let mut reads = vec![0usize; op.actions.len()];
    for action in &op.actions {
        for index in [action.input, action.secondary_input] {
            if let Some(n) = result_index(index, inputs.len()).and_then(|j| reads.get_mut(j)) {
                *n += 1;
            }
        }
    }
    let mut results: Vec<Slot> = Vec::with_capacity(op.actions.len());
    let mut outputs: Vec<(i64, Snapshot)> = Vec::new();
    for (i, action) in op.actions.iter().enumerate() {
        let kind = action.action.clone().ok_or(FileOpRunError::Empty { action: i })?;
        let open = result_index(action.input, inputs.len())
            .and_then(|j| results.get_mut(j))
            .filter(|slot| matches!(slot, Slot::Open { .. }))
            .map(|slot| std::mem::replace(slot, Slot::Taken));
        let (base, upper) = match open {
            Some(Slot::Open { base, upper }) => (base, upper),
            _ => (committed(cache, inputs, &mut results, i, action.input)?, cache.new_layer()?),
        };
        let source = match &kind {
            Action::Copy(_) => Some(committed(cache, inputs, &mut results, i, action.secondary_input)?),
            _ => None,
        };
        {
            let dest = mount(cache, &base, Some(upper.path()))?;
            let src = source.as_ref().map(|s| mount(cache, s, None)).transpose()?;
            let dest_root = dest.path().to_owned();
            let src_root = src.as_ref().map(|m| m.path().to_owned());
            // Owner names are looked up in the input each names (`NamedUserOpt.input`).
            let mut lookup_mounts = Vec::new();
            let mut roots = [None, None];
            for (root, index) in roots.iter_mut().zip(owner_inputs(&kind)) {
                let Some(index) = index else { continue };
                if index < 0 {
                    return Err(FileOpRunError::UserIndex { action: i, index });
                }
                if index == action.input {
                    *root = Some(dest_root.clone());
                    continue;
                }
                let view = mount(cache, &committed(cache, inputs, &mut results, i, index)?, None)?;
                *root = Some(view.path().to_owned());
                lookup_mounts.push(view);
            }
            let [user_root, group_root] = roots;
            tokio::task::spawn_blocking(move || {
                let users = UserLookup::with_roots(user_root, group_root);
                match &kind {
                    Action::Mkdir(a) => file::mkdir(&dest_root, a, &users),
                    Action::Mkfile(a) => file::mkfile(&dest_root, a, &users),
                    Action::Rm(a) => file::rm(&dest_root, a),
                    Action::Symlink(a) => file::symlink(&dest_root, a, &users),
                    Action::Copy(a) => {
                        file::copy(src_root.as_deref().unwrap_or(&dest_root), &dest_root, a, &users)
                    }
                }
            })
            .await
            .map_err(|_| FileOpRunError::Join { action: i })??;
            // Both mounts end here, before the upper layer moves.
        }
        if action.output < 0 && reads[i] == 1 {
            results.push(Slot::Open { base, upper });
            continue;
        }
        let result = cache.commit_layer_over(upper, &base)?;
        if action.output >= 0 {
            outputs.push((action.output, result.clone()));
        }
        results.push(Slot::Done(result));
    }
    outputs.sort_by_key(|(i, _)| *i);
    Ok(outputs.into_iter().map(|(_, s)| s).collect())
}

/// The inputs an action's owner names are looked up in: (user, group).
fn owner_inputs(kind: &Action) -> [Option<i64>; 2] {
    let owner = match kind {
        Action::Mkdir(a) => a.owner.as_ref(),
        Action::Mkfile(a) => a.owner.as_ref(),
        Action::Symlink(a) => a.owner.as_ref(),
        Action::Copy(a) => a.owner.as_ref(),
        Action::Rm(_) => None,
    };
    let named = |u: Option<&pb::UserOpt>| match u.and_then(|u| u.user.as_ref()) {
        Some(pb::user_opt::User::ByName(n)) => Some(n.input),
        _ => None,
    };
    owner.map_or([None, None], |o| [named(o.user.as_ref()), named(o.group.as_ref())])
}

/// Inputs are numbered first, then the results of earlier actions.
fn result_index(index: i64, inputs: usize) -> Option<usize> {
    usize::try_from(index).ok()?.checked_sub(inputs)
}

/// The snapshot `index` names for action `action` (-1 is scratch); an open
/// result is committed first.
fn committed(
    cache: &CacheManager,
    inputs: &[Snapshot],
    results: &mut [Slot],
    action: usize,
    index: i64,
) -> Result<Snapshot, FileOpRunError> {
    if index < 0 {
        return Ok(Snapshot::default());
    }
    let bad = FileOpRunError::Input { action, input: index };
    let Some(j) = result_index(index, inputs.len()) else {
        return usize::try_from(index).ok().and_then(|i| inputs.get(i)).cloned().ok_or(bad);
    };
    let slot = results.get_mut(j).ok_or(bad)?;
    match std::mem::replace(slot, Slot::Taken) {
        Slot::Done(s) => {
            *slot = Slot::Done(s.clone());
            Ok(s)
        }
        Slot::Open { base, upper } => {
            let s = cache.commit_layer_over(upper, &base)?;
            *slot = Slot::Done(s.clone());
            Ok(s)
        }
        Slot::Taken => Err(FileOpRunError::Input { action, input: index }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mkfile(input: i64, output: i64, path: &str, data: &str) -> pb::FileAction {
        pb::FileAction {
            input,
            secondary_input: -1,
            output,
            action: Some(Action::Mkfile(pb::FileActionMkFile {
                path: path.into(),
                mode: 0o644,
                data: data.into(),
                timestamp: -1,
                ..Default::default()
            })),
        }
    }

    #[tokio::test]
    async fn actions_chain_and_copy_between_inputs() {
        let root = tempfile::tempdir().unwrap();
        let cache = CacheManager::open(root.path()).unwrap();
        // Action 0 makes /a on scratch; action 1 copies /a from action 0 onto input 0 at /b.
        let base =
            run(&cache, &pb::FileOp { actions: vec![mkfile(-1, 0, "/base", "x")] }, &[]).await.unwrap();
        let copy = pb::FileAction {
            input: 0,
            secondary_input: 1,
            output: 0,
            action: Some(Action::Copy(pb::FileActionCopy {
                src: "/a".into(),
                dest: "/b".into(),
                mode: -1,
                timestamp: -1,
                ..Default::default()
            })),
        };
        let op = pb::FileOp { actions: vec![mkfile(-1, -1, "/a", "from a"), copy] };
        let out = run(&cache, &op, &base).await.unwrap();
        assert_eq!(out.len(), 1);
        let view = mount(&cache, &out[0], None).unwrap();
        assert_eq!(std::fs::read_to_string(view.path().join("b")).unwrap(), "from a");
        assert_eq!(std::fs::read_to_string(view.path().join("base")).unwrap(), "x");
        assert!(!view.path().join("a").exists(), "/a was made on scratch, not on the input");
    }

    #[tokio::test]
    async fn a_chain_of_actions_makes_one_layer() {
        let root = tempfile::tempdir().unwrap();
        let cache = CacheManager::open(root.path()).unwrap();
        let base =
            run(&cache, &pb::FileOp { actions: vec![mkfile(-1, 0, "/base", "x")] }, &[]).await.unwrap();
        // Input 0, then actions 1..=3: each writes onto the previous one's result.
        let chain = pb::FileOp {
            actions: vec![mkfile(0, -1, "/a", "a"), mkfile(1, -1, "/b", "b"), mkfile(2, 0, "/c", "c")],
        };
        let out = run(&cache, &chain, &base).await.unwrap();
        assert_eq!(out[0].layers.len(), 2, "the base layer and one for the chain: {:?}", out[0].layers);
        let view = mount(&cache, &out[0], None).unwrap();
        for (file, data) in [("base", "x"), ("a", "a"), ("b", "b"), ("c", "c")] {
            assert_eq!(std::fs::read_to_string(view.path().join(file)).unwrap(), data);
        }
        drop(view);

        // A result that is also an output, or read twice, is a layer of its own.
        let split = pb::FileOp {
            actions: vec![mkfile(0, 0, "/a", "a"), mkfile(1, 1, "/b", "b"), mkfile(1, 2, "/c", "c")],
        };
        let out = run(&cache, &split, &base).await.unwrap();
        let layers: Vec<usize> = out.iter().map(|s| s.layers.len()).collect();
        assert_eq!(layers, [2, 3, 3]);
        let view = mount(&cache, &out[2], None).unwrap();
        assert!(view.path().join("a").exists() && !view.path().join("b").exists());
    }

    #[tokio::test]
    async fn owner_names_are_looked_up_in_the_input_they_name() {
        use std::os::unix::fs::MetadataExt as _;
        let root = tempfile::tempdir().unwrap();
        let cache = CacheManager::open(root.path()).unwrap();
        let passwd = mkfile(0, 0, "/etc/passwd", "app:x:1234:4321::/:/bin/sh\n");
        let users = run(&cache, &pb::FileOp { actions: vec![mkdir_etc(), passwd] }, &[]).await.unwrap();
        let named = |input: i64| {
            let mut a = mkfile(-1, 0, "/owned", "x");
            if let Some(Action::Mkfile(m)) = &mut a.action {
                m.owner = Some(pb::ChownOpt {
                    user: Some(pb::UserOpt {
                        user: Some(pb::user_opt::User::ByName(pb::NamedUserOpt {
                            name: "app".into(),
                            input,
                        })),
                    }),
                    group: None,
                });
            }
            pb::FileOp { actions: vec![a] }
        };
        // Written on scratch, the name is found in input 0.
        let out = run(&cache, &named(0), &users).await.unwrap();
        let view = mount(&cache, &out[0], None).unwrap();
        let meta = std::fs::metadata(view.path().join("owned")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (1234, 4321));
        drop(view);
        // No input to look it up in is an error, not root.
        let err = run(&cache, &named(-1), &users).await.unwrap_err();
        assert_eq!(err.to_string(), "invalid user index: -1");
    }

    fn mkdir_etc() -> pb::FileAction {
        pb::FileAction {
            input: -1,
            secondary_input: -1,
            output: -1,
            action: Some(Action::Mkdir(pb::FileActionMkDir {
                path: "/etc".into(),
                mode: 0o755,
                timestamp: -1,
                ..Default::default()
            })),
        }
    }

    #[test]
    fn a_wildcard_selects_the_directory_it_searches() {
        assert_eq!(selection_root("/a.txt"), "a.txt");
        assert_eq!(selection_root("/src/"), "src");
        assert_eq!(selection_root("/src/*.go"), "src");
        assert_eq!(selection_root("*.txt"), "");
        assert_eq!(selection_root("/"), "");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_copy_is_keyed_by_what_it_selects() {
        let root = tempfile::tempdir().unwrap();
        let cache = CacheManager::open(root.path()).unwrap();
        let hashes = HashCache::default();
        // Action 0 writes /a.txt on scratch, action 1 writes /b.txt onto it (input 0 + 1).
        let files = |a: &str, b: &str| pb::FileOp {
            actions: vec![mkfile(-1, -1, "/a.txt", a), mkfile(0, 0, "/b.txt", b)],
        };
        let ctx1 = run(&cache, &files("A", "B"), &[]).await.unwrap();
        let ctx2 = run(&cache, &files("A", "changed"), &[]).await.unwrap();
        let copy_a = pb::FileOp {
            actions: vec![pb::FileAction {
                input: -1,
                secondary_input: 0,
                output: 0,
                action: Some(Action::Copy(pb::FileActionCopy {
                    src: "/a.txt".into(),
                    dest: "/".into(),
                    ..Default::default()
                })),
            }],
        };
        let k1 = selected_keys(&cache, &hashes, &copy_a, &ctx1).await.unwrap();
        let k2 = selected_keys(&cache, &hashes, &copy_a, &ctx2).await.unwrap();
        assert!(k1[0].is_some());
        assert_eq!(k1, k2, "b.txt changed, a.txt did not");
        let mut copy_b = copy_a.clone();
        if let Some(Action::Copy(c)) = &mut copy_b.actions[0].action {
            c.src = "/b.txt".into();
        }
        let k1 = selected_keys(&cache, &hashes, &copy_b, &ctx1).await.unwrap();
        let k2 = selected_keys(&cache, &hashes, &copy_b, &ctx2).await.unwrap();
        assert_ne!(k1, k2);
        // An input the op also writes onto keeps its own key.
        let onto = pb::FileOp { actions: vec![mkfile(0, 0, "/c", "")] };
        assert_eq!(selected_keys(&cache, &hashes, &onto, &ctx1).await.unwrap(), vec![None]);
    }

    #[tokio::test]
    async fn a_failing_action_leaves_no_layer_behind() {
        let root = tempfile::tempdir().unwrap();
        let cache = CacheManager::open(root.path()).unwrap();
        let rm = pb::FileAction {
            input: -1,
            secondary_input: -1,
            output: 0,
            action: Some(Action::Rm(pb::FileActionRm { path: "/nope".into(), ..Default::default() })),
        };
        let err = run(&cache, &pb::FileOp { actions: vec![rm] }, &[]).await.unwrap_err();
        assert!(err.to_string().contains("/nope"), "{err}");
        assert_eq!(std::fs::read_dir(root.path().join("layers")).unwrap().count(), 0);
        let bad = pb::FileOp { actions: vec![mkfile(5, 0, "/x", "")] };
        assert!(matches!(run(&cache, &bad, &[]).await, Err(FileOpRunError::Input { input: 5, .. })));
    }
}
