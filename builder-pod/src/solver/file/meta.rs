//! Ownership, permissions and times of the entries an action writes, and the
//! directory creation every action shares (fsutil `copy/mkdir.go`).

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;

use super::FileOpError;
use super::root::shown;
use super::user::Owner;

/// A time an action sets on what it writes (`timestamp` fields, unix ns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Timestamp {
    pub(super) sec: i64,
    pub(super) nsec: i64,
}

impl Timestamp {
    /// `-1` is LLB's "no override" (`marshalTime` of a nil time); every other
    /// value, 0 included, is a time (`SOURCE_DATE_EPOCH=0` is 1970).
    pub(super) fn from_llb(ns: i64) -> Option<Self> {
        const NS: i64 = 1_000_000_000;
        (ns != -1).then_some(Self { sec: ns.div_euclid(NS), nsec: ns.rem_euclid(NS) })
    }

    fn spec(self) -> TimeSpec {
        TimeSpec::new(self.sec, self.nsec)
    }
}

/// Sets access and modification time of `path` itself (not a symlink's target).
pub(super) fn set_times(
    root: &Path,
    path: &Path,
    atime: Timestamp,
    mtime: Timestamp,
) -> Result<(), FileOpError> {
    utimensat(nix::fcntl::AT_FDCWD, path, &atime.spec(), &mtime.spec(), UtimensatFlags::NoFollowSymlink)
        .map_err(|e| FileOpError::SetTimes { path: shown(root, path), source: e.into() })
}

/// Sets both times of `path` to `t` when an override is given.
pub(super) fn set_time(root: &Path, path: &Path, t: Option<Timestamp>) -> Result<(), FileOpError> {
    match t {
        Some(t) => set_times(root, path, t, t),
        None => Ok(()),
    }
}

/// Changes the owner of `path` itself (lchown).
pub(super) fn chown(root: &Path, path: &Path, uid: u32, gid: u32) -> Result<(), FileOpError> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(|source| FileOpError::Chown {
        path: shown(root, path),
        uid,
        gid,
        source,
    })
}

/// Gives `path` the owner when one is set.
pub(super) fn chown_to(root: &Path, path: &Path, owner: Option<Owner>) -> Result<(), FileOpError> {
    match owner {
        Some(o) => chown(root, path, o.uid, o.gid),
        None => Ok(()),
    }
}

/// Sets the permission bits (`0o7777`) of `path`, which is never a symlink:
/// chmod would follow it.
pub(super) fn chmod(root: &Path, path: &Path, mode: u32) -> Result<(), FileOpError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))
        .map_err(|source| FileOpError::Chmod { path: shown(root, path), source })
}

/// The entry at `path` itself, or `None` when there is none.
pub(super) fn lstat(path: &Path) -> io::Result<Option<fs::Metadata>> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes whatever is at `path` (a directory with its contents, a symlink
/// itself); nothing there is fine (Go's `os.RemoveAll`).
pub(super) fn remove_all(path: &Path) -> io::Result<()> {
    let result = match lstat(path)? {
        None => return Ok(()),
        Some(m) if m.is_dir() => fs::remove_dir_all(path),
        Some(_) => fs::remove_file(path),
    };
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Creates `path` (a host path inside `root`, already resolved) and its
/// missing parents. Each new directory gets `perm`, `owner` and `times`, in
/// that order, as fsutil's `MkdirAll` does: so a parent's mtime moves again
/// when its child is made. An existing directory is fine; anything else in
/// the way is ENOTDIR. Returns the directories made, outermost first.
pub(super) fn mkdir_all(
    root: &Path,
    path: &Path,
    perm: u32,
    owner: Option<Owner>,
    times: Option<Timestamp>,
) -> Result<Vec<PathBuf>, FileOpError> {
    let mkdir_err = |source| FileOpError::Mkdir { path: shown(root, path), source };
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => return Ok(Vec::new()),
        Ok(_) => return Err(mkdir_err(io::Error::from_raw_os_error(nix::libc::ENOTDIR))),
        Err(_) => {}
    }
    let mut created = match path.parent() {
        Some(parent) if path != root && parent.starts_with(root) => {
            mkdir_all(root, parent, perm, owner, times)?
        }
        _ => Vec::new(),
    };
    if let Err(e) = fs::create_dir(path) {
        // "foo/." and races: fine when a directory is there now.
        return match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => Ok(created),
            _ => Err(mkdir_err(e)),
        };
    }
    // Our umask is not BuildKit's zero one: set the bits explicitly.
    chmod(root, path, perm)?;
    chown_to(root, path, owner)?;
    set_time(root, path, times)?;
    created.push(path.to_path_buf());
    Ok(created)
}

/// The times of an existing entry, to carry over to its copy.
pub(super) fn times_of(meta: &fs::Metadata) -> (Timestamp, Timestamp) {
    (
        Timestamp { sec: meta.atime(), nsec: meta.atime_nsec() },
        Timestamp { sec: meta.mtime(), nsec: meta.mtime_nsec() },
    )
}
