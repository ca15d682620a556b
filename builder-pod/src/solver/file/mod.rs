//! The file-system half of LLB's FileOp: mkdir, mkfile, rm, symlink and copy
//! on directories the solver has mounted (BuildKit
//! `solver/llbsolver/file/backend.go`, with fsutil's `copy` package).
//!
//! Every path of an action is interpreted inside its root: symlinks resolve
//! within it and `..` stops at it ([`root`]), so nothing an image or a build
//! context contains can make an action touch the host. Errors name paths as
//! the action sees them (`/etc/passwd`), never as host paths.
//!
//! These functions block; run them off the async runtime.

mod copier;
mod meta;
mod mode;
mod pattern;
mod root;
mod unpack;
mod user;

#[cfg(test)]
mod tests;

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use kiln_proto::buildkit::pb::{
    FileActionCopy, FileActionMkDir, FileActionMkFile, FileActionRm, FileActionSymlink,
};

pub(crate) use self::user::UserLookup;

use self::meta::{Timestamp, chmod, chown_to, mkdir_all, remove_all, set_time};
use self::root::{resolve, shown};
use crate::util::gopath;

#[derive(Debug, thiserror::Error)]
pub(crate) enum FileOpError {
    #[error("resolve {path}: {}", os_text(source))]
    Resolve { path: String, source: io::Error },
    #[error("mkdir {path}: {}", os_text(source))]
    Mkdir { path: String, source: io::Error },
    #[error("mkfile {path}: {}", os_text(source))]
    Mkfile { path: String, source: io::Error },
    #[error("symlink {oldpath} {path}: {}", os_text(source))]
    Symlink { oldpath: String, path: String, source: io::Error },
    #[error("rm {path}: {}", os_text(source))]
    Remove { path: String, source: io::Error },
    #[error("rm: invalid empty path")]
    RemoveRoot,
    #[error("chown {path} to {uid}:{gid}: {}", os_text(source))]
    Chown { path: String, uid: u32, gid: u32, source: io::Error },
    #[error("chmod {path}: {}", os_text(source))]
    Chmod { path: String, source: io::Error },
    #[error("set times of {path}: {}", os_text(source))]
    SetTimes { path: String, source: io::Error },
    #[error("invalid missing {what} mount")]
    MissingUserRoot { what: &'static str },
    #[error("read {path}: {}", os_text(source))]
    ReadUserFile { path: String, source: io::Error },
    #[error("{path} is not a regular file")]
    UserFileNotRegular { path: String },
    #[error("{path:?} exceeds {limit} bytes")]
    UserFileTooLarge { path: String, limit: u64 },
    #[error("lstat {path}: {}", os_text(source))]
    Walk { path: String, source: io::Error },
    #[error("copy {path}: {}", os_text(source))]
    CopySource { path: String, source: io::Error },
    #[error("{pattern} not found")]
    NoMatch { pattern: String },
    #[error("failed to stat {dest}: lstat {parent}: {}", os_text(source))]
    DestParent { dest: String, parent: String, source: io::Error },
    #[error("copy {src} to {dest}: {}", os_text(source))]
    CopyEntry { src: String, dest: String, source: io::Error },
    #[error("cannot replace to directory {path} with file")]
    ReplaceDirWithFile { path: String },
    #[error("cannot copy to non-directory: {path}")]
    CopyToNonDir { path: String },
    #[error("invalid mode {mode:?}: invalid syntax")]
    InvalidMode { mode: String },
    #[error("invalid {kind} pattern {pattern:?}: {reason}")]
    InvalidPattern { kind: &'static str, pattern: String, reason: &'static str },
    #[error("{path:?}: not found")]
    RequiredPathMissing { path: String },
    #[error("unpack {archive}: {entry}: {}", os_text(source))]
    Unpack { archive: String, entry: String, source: io::Error },
}

/// An OS error as Go prints it (`no such file or directory`), which is what
/// BuildKit's messages carry; other errors as they are.
fn os_text(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => {
            let desc = nix::errno::Errno::from_raw(code).desc();
            let mut chars = desc.chars();
            match chars.next() {
                Some(first) => first.to_lowercase().chain(chars).collect(),
                None => e.to_string(),
            }
        }
        None => e.to_string(),
    }
}

/// Resolves an action's path (taken as absolute) inside `root`.
fn resolve_action_path(
    root: &Path,
    path: &str,
    follow_last: bool,
) -> Result<std::path::PathBuf, FileOpError> {
    let p = gopath::join(&["/", path]);
    resolve(root, Path::new(&p), follow_last).map_err(|source| FileOpError::Resolve { path: p, source })
}

/// `FileActionMkDir`. Without `make_parents` an existing entry of any kind is
/// left alone, as BuildKit does; with it, parents get the same mode, owner
/// and time, and a non-directory in the way is an error.
#[tracing::instrument(skip_all, fields(path = %a.path))]
pub(crate) fn mkdir(root: &Path, a: &FileActionMkDir, users: &UserLookup) -> Result<(), FileOpError> {
    let p = resolve_action_path(root, &a.path, true)?;
    let owner = users.resolve(a.owner.as_ref())?;
    let times = Timestamp::from_llb(a.timestamp);
    let perm = a.mode as u32 & 0o777;
    if a.make_parents {
        mkdir_all(root, &p, perm, owner, times)?;
        return Ok(());
    }
    match fs::create_dir(&p) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(source) => return Err(FileOpError::Mkdir { path: shown(root, &p), source }),
    }
    chmod(root, &p, perm)?;
    chown_to(root, &p, owner)?;
    set_time(root, &p, times)
}

/// `FileActionMkFile`: creates the file, or truncates and rewrites an
/// existing one (keeping its mode, like Go's `os.WriteFile`).
#[tracing::instrument(skip_all, fields(path = %a.path))]
pub(crate) fn mkfile(root: &Path, a: &FileActionMkFile, users: &UserLookup) -> Result<(), FileOpError> {
    let p = resolve_action_path(root, &a.path, true)?;
    let owner = users.resolve(a.owner.as_ref())?;
    let perm = a.mode as u32 & 0o777;
    let err = |source| FileOpError::Mkfile { path: shown(root, &p), source };
    let (mut f, created) = match fs::OpenOptions::new().write(true).create_new(true).mode(perm).open(&p) {
        Ok(f) => (f, true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            (fs::OpenOptions::new().write(true).truncate(true).open(&p).map_err(err)?, false)
        }
        Err(e) => return Err(err(e)),
    };
    f.write_all(&a.data).map_err(err)?;
    drop(f);
    if created {
        chmod(root, &p, perm)?;
    }
    chown_to(root, &p, owner)?;
    set_time(root, &p, Timestamp::from_llb(a.timestamp))
}

/// `FileActionSymlink`: a link at `newpath` whose target is `oldpath`,
/// stored verbatim.
#[tracing::instrument(skip_all, fields(path = %a.newpath))]
pub(crate) fn symlink(root: &Path, a: &FileActionSymlink, users: &UserLookup) -> Result<(), FileOpError> {
    let p = resolve_action_path(root, &a.newpath, true)?;
    let owner = users.resolve(a.owner.as_ref())?;
    std::os::unix::fs::symlink(&a.oldpath, &p).map_err(|source| FileOpError::Symlink {
        oldpath: a.oldpath.clone(),
        path: shown(root, &p),
        source,
    })?;
    chown_to(root, &p, owner)?;
    set_time(root, &p, Timestamp::from_llb(a.timestamp))
}

/// `FileActionRm`: removes the path (a symlink itself, a directory with its
/// contents). With `allow_wildcard` every match of the glob goes, and no
/// match is no error.
#[tracing::instrument(skip_all, fields(path = %a.path))]
pub(crate) fn rm(root: &Path, a: &FileActionRm) -> Result<(), FileOpError> {
    if a.allow_wildcard {
        for m in copier::resolve_wildcards(root, &gopath::llb_normalize_path("/", &a.path, true), false)? {
            rm_path(root, &m, a.allow_not_found)?;
        }
        return Ok(());
    }
    rm_path(root, &a.path, a.allow_not_found)
}

fn rm_path(root: &Path, path: &str, allow_not_found: bool) -> Result<(), FileOpError> {
    let p = gopath::join(&["/", path]);
    let (dir, name) = root::split(&p);
    if name.is_empty() {
        return Err(FileOpError::RemoveRoot);
    }
    let target = resolve_action_path(root, dir, true)?.join(name);
    let err = |source| FileOpError::Remove { path: shown(root, &target), source };
    if !allow_not_found {
        // Like BuildKit's os.Stat this follows a final symlink, but within the root.
        let followed = resolve_action_path(root, &p, true)?;
        fs::metadata(&followed).map_err(err)?;
    }
    remove_all(&target).map_err(err)
}

/// `FileActionCopy`: copies `src` from `src_root` to `dest` in `dest_root`.
#[tracing::instrument(skip_all, fields(src = %a.src, dest = %a.dest))]
pub(crate) fn copy(
    src_root: &Path,
    dest_root: &Path,
    a: &FileActionCopy,
    users: &UserLookup,
) -> Result<(), FileOpError> {
    copier::copy(src_root, dest_root, a, users)
}
