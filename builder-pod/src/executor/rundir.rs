//! kilnd's run directory: a tmpfs of its own for what must never reach a
//! disk. The runtime's state and the bundles (whose `config.json` holds a
//! step's environment, `secretenv` values included) and the tmpfs each step
//! mounts for its secret files live here, outside kilnd's root, so no secret
//! is ever written to the persistent volume and nothing of one is under the
//! root after a `kill -9`. The directory is named after the root, so a kilnd
//! started again on the same root finds and clears what the last one left.

use std::fs::DirBuilder;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use sha2::{Digest, Sha256};
use tracing::warn;

use crate::mountinfo;

#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error("creating the run directory {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("mounting a tmpfs on the run directory {path}: {source}")]
    Mount { path: PathBuf, source: nix::Error },
}

/// The tmpfs; unmounted when dropped.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// The run directory of the kilnd whose root is `root` (canonical):
    /// mounted fresh, with whatever an earlier kilnd left there removed.
    pub fn open(root: &Path) -> Result<Self, RunDirError> {
        let hash = hex::encode(Sha256::digest(root.as_os_str().as_encoded_bytes()));
        // One per root below the run base (`crate::rootless::run_base`).
        Self::open_at(crate::rootless::run_base().join(&hash[..16]))
    }

    fn open_at(path: PathBuf) -> Result<Self, RunDirError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)
            .map_err(|source| RunDirError::Create { path: path.clone(), source })?;
        // What a killed kilnd left: its secret mounts, then its tmpfs.
        if let Ok(entries) = mountinfo::read() {
            for point in mountinfo::mounts_under(&entries, &path) {
                let _ = nix::mount::umount2(&point, MntFlags::MNT_DETACH);
            }
            if entries.iter().any(|e| e.mount_point == path) {
                warn!(path = %path.display(), "clearing a run directory left by an earlier kilnd");
                let _ = nix::mount::umount2(&path, MntFlags::MNT_DETACH);
            }
        }
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        nix::mount::mount(Some("tmpfs"), &path, Some("tmpfs"), flags, Some("mode=0700"))
            .map_err(|source| RunDirError::Mount { path: path.clone(), source })?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount2(&self.path, MntFlags::MNT_DETACH) {
            warn!(path = %self.path.display(), error = %e, "unmounting the run directory");
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_directory_is_a_fresh_tmpfs_and_goes_away() {
        let base = tempfile::tempdir().unwrap();
        let path = base.path().join("run");
        let dir = RunDir::open_at(path.clone()).unwrap();
        std::fs::write(dir.path().join("secret"), "s3cret").unwrap();
        let on = |p: &Path| mountinfo::read().unwrap().into_iter().filter(|e| e.mount_point == p).count();
        assert_eq!(on(&path), 1);

        // A kilnd killed with its run directory mounted: the next one clears it.
        std::mem::forget(dir);
        let again = RunDir::open_at(path.clone()).unwrap();
        assert!(!again.path().join("secret").exists());
        assert_eq!(on(&path), 1, "the old tmpfs was unmounted");
        drop(again);
        assert_eq!(on(&path), 0);
        assert!(!path.exists());
    }
}
