//! FileOp: file changes made through an overlay mount of each action's
//! input, so what an action writes or deletes becomes one new layer.

use kiln_proto::buildkit::pb;
use kiln_proto::buildkit::pb::file_action::Action;

use crate::cache::mount::{MountError, mount};
use crate::cache::{CacheError, CacheManager, Snapshot};
use crate::solver::file::{self, FileOpError, UserLookup};

#[derive(Debug, thiserror::Error)]
pub enum FileOpRunError {
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
}

/// Runs the actions in order and returns the snapshots of the op's outputs.
pub async fn run(
    cache: &CacheManager,
    op: &pb::FileOp,
    inputs: &[Snapshot],
) -> Result<Vec<Snapshot>, FileOpRunError> {
    let mut results: Vec<Snapshot> = Vec::with_capacity(op.actions.len());
    let mut outputs: Vec<(i64, Snapshot)> = Vec::new();
    for (i, action) in op.actions.iter().enumerate() {
        // Inputs are numbered first, then the results of earlier actions; -1 is scratch.
        let pick = |index: i64| -> Result<Snapshot, FileOpRunError> {
            if index < 0 {
                return Ok(Snapshot::default());
            }
            let index =
                usize::try_from(index).map_err(|_| FileOpRunError::Input { action: i, input: index })?;
            inputs
                .get(index)
                .or_else(|| index.checked_sub(inputs.len()).and_then(|j| results.get(j)))
                .cloned()
                .ok_or(FileOpRunError::Input { action: i, input: index as i64 })
        };
        let base = pick(action.input)?;
        let kind = action.action.clone().ok_or(FileOpRunError::Empty { action: i })?;
        let source = match &kind {
            Action::Copy(_) => Some(pick(action.secondary_input)?),
            _ => None,
        };

        let upper = cache.new_layer()?;
        {
            let dest = mount(cache, &base, Some(upper.path()))?;
            let src = source.as_ref().map(|s| mount(cache, s, None)).transpose()?;
            let dest_root = dest.path().to_owned();
            let src_root = src.as_ref().map(|m| m.path().to_owned());
            tokio::task::spawn_blocking(move || {
                let users = UserLookup::in_root(&dest_root);
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
        let result = base.with(cache.commit_layer(upper)?);
        if action.output >= 0 {
            outputs.push((action.output, result.clone()));
        }
        results.push(result);
    }
    outputs.sort_by_key(|(i, _)| *i);
    Ok(outputs.into_iter().map(|(_, s)| s).collect())
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
