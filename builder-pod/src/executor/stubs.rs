//! Mount-point stubs: the runtime creates an empty file or directory in the
//! rootfs for every mount whose destination is missing. Left there, they
//! would end up in the layer the step produces, so they are removed after
//! the run (`executor/stubs.go` upstream), restoring the parent's times for
//! reproducible layers.

use std::fs::{self, File, FileTimes};
use std::io;
use std::path::{Path, PathBuf};

use tracing::warn;

use super::rootpath;

/// Paths the runtime will have to create, recorded before it runs.
#[derive(Debug)]
pub(crate) struct MountStubs {
    root: PathBuf,
    paths: Vec<PathBuf>,
}

impl MountStubs {
    /// Records which of `dests` (container paths) do not exist yet; with
    /// `recursive`, missing parents too.
    pub(crate) fn record<'a>(root: &Path, dests: impl IntoIterator<Item = &'a str>, recursive: bool) -> Self {
        let mut paths = Vec::new();
        for dest in dests {
            let Ok(mut path) = rootpath::resolve(root, dest) else { continue };
            if path == root {
                continue;
            }
            loop {
                match fs::symlink_metadata(&path) {
                    Err(e) if is_missing(&e) => paths.push(path.clone()),
                    _ => break,
                }
                if !recursive {
                    break;
                }
                match path.parent() {
                    Some(parent) if parent != root && parent != path => path = parent.to_path_buf(),
                    _ => break,
                }
            }
        }
        Self { root: root.to_path_buf(), paths }
    }

    /// Removes the recorded paths that are still empty stubs.
    pub(crate) fn remove(&self) {
        for path in &self.paths {
            if let Err(e) = self.remove_one(path) {
                warn!(path = %path.display(), error = %e, "removing mount stub");
            }
        }
    }

    fn remove_one(&self, path: &Path) -> io::Result<()> {
        // Resolve again: the process may have swapped a parent for a symlink.
        let Ok(rel) = path.strip_prefix(&self.root) else { return Ok(()) };
        let real = rootpath::resolve(&self.root, &rel.to_string_lossy())?;
        if real != path {
            return Ok(());
        }
        let meta = match fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if is_missing(&e) => return Ok(()),
            Err(e) => return Err(e),
        };
        let empty = if meta.is_dir() { fs::read_dir(path)?.next().is_none() } else { meta.len() == 0 };
        if !empty {
            return Ok(());
        }
        let Some(parent) = path.parent() else { return Ok(()) };
        let parent_meta = fs::metadata(parent)?;
        if meta.is_dir() {
            fs::remove_dir(path)?;
        } else {
            fs::remove_file(path)?;
        }
        let times =
            FileTimes::new().set_accessed(parent_meta.accessed()?).set_modified(parent_meta.modified()?);
        File::open(parent)?.set_times(times)
    }
}

fn is_missing(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    #[test]
    fn empty_stubs_go_and_the_parent_keeps_its_times() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("etc")).unwrap();
        fs::write(r.join("etc/hosts"), "kept\n").unwrap();
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let stubs = MountStubs::record(r, ["/etc/hosts", "/etc/resolv.conf", "/mnt/cache", "/"], false);

        // What the runtime does: create the missing mount points.
        fs::write(r.join("etc/resolv.conf"), "").unwrap();
        fs::create_dir_all(r.join("mnt/cache")).unwrap();
        File::open(r.join("etc")).unwrap().set_times(FileTimes::new().set_modified(old)).unwrap();

        stubs.remove();
        assert_eq!(fs::read_to_string(r.join("etc/hosts")).unwrap(), "kept\n");
        assert!(!r.join("etc/resolv.conf").exists());
        assert!(!r.join("mnt/cache").exists());
        // Not recursive: the parent the runtime created stays.
        assert!(r.join("mnt").is_dir());
        assert_eq!(fs::metadata(r.join("etc")).unwrap().modified().unwrap(), old);
    }

    #[test]
    fn recursive_removes_created_parents() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let stubs = MountStubs::record(r, ["/a/b/c"], true);
        fs::create_dir_all(r.join("a/b/c")).unwrap();
        stubs.remove();
        assert!(!r.join("a").exists());
    }

    #[test]
    fn stubs_the_process_wrote_into_stay() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let stubs = MountStubs::record(r, ["/data", "/note"], false);
        fs::create_dir(r.join("data")).unwrap();
        fs::write(r.join("data/file"), "x").unwrap();
        fs::write(r.join("note"), "written").unwrap();
        stubs.remove();
        assert!(r.join("data/file").exists());
        assert!(r.join("note").exists());
    }
}
