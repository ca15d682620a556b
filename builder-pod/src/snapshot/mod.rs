//! Layers in overlayfs format: the directory an overlay mount uses as its
//! upper dir, where a deleted path is a 0/0 character device of the same
//! name and a directory that hides everything below it carries
//! `trusted.overlay.opaque=y` (containerd's overlay snapshotter, and the
//! kernel's Documentation/filesystems/overlayfs.rst).
//!
//! [`apply_layer`] turns an OCI layer tar into such a directory,
//! [`diff_to_tar`] turns one back into a layer tar, [`compress`] and
//! [`decompress`] handle the blob encodings, and [`flatten`] merges a stack of
//! diffs into one plain tree where no overlay mount can be had.
//!
//! Whiteout names in tars follow the OCI image spec, layer.md "Whiteouts".
//!
//! Everything here is blocking file I/O: async callers run it on
//! `tokio::task::spawn_blocking`.

mod apply;
mod compression;
mod diff;
mod flatten;
mod pgzip;

use std::io;
use std::path::{Path, PathBuf};

pub use apply::apply_layer;
pub use compression::{CompressWriter, Compression, LayerDigests, compress, decompress};
pub use diff::{DiffOptions, MtimePolicy, diff_to_tar};
pub use flatten::flatten;

/// The xattr overlayfs reads to make a directory opaque:
/// `trusted.overlay.opaque` as root, `user.overlay.opaque` for kilnd's
/// `userxattr` mounts in a user namespace (rootless; docs/rootless.md). A
/// root is written by one kind of kilnd: the two do not share roots.
pub fn opaque_xattr() -> &'static str {
    if crate::rootless::in_user_namespace() { "user.overlay.opaque" } else { "trusted.overlay.opaque" }
}
/// Prefix of a whiteout in a layer tar.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the marker entry that makes its directory opaque in a layer tar.
pub const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
/// Prefix of the AUFS metadata names, which are never real files.
const WHITEOUT_META_PREFIX: &str = ".wh..wh.";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("reading the layer tar: {source}")]
    ReadTar { source: io::Error },
    #[error("layer entry {entry:?}: {reason}")]
    UnsafeEntry { entry: String, reason: &'static str },
    #[error("layer entry {entry:?} has unsupported type {kind:?}")]
    UnsupportedEntry { entry: String, kind: char },
    #[error("layer entry {entry:?} links to {target:?}: {reason}")]
    HardlinkTarget { entry: String, target: String, reason: &'static str },
    #[error("creating {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("removing {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
    #[error("setting metadata of {path}: {source}")]
    SetMetadata { path: PathBuf, source: io::Error },
    #[error("setting xattr {name} on {path}: {source}")]
    SetXattr { path: PathBuf, name: String, source: io::Error },
    #[error("reading xattrs of {path}: {source}")]
    ReadXattr { path: PathBuf, source: io::Error },
    #[error("reading {path}: {source}")]
    ReadTree { path: PathBuf, source: io::Error },
    #[error("copying {from} to {to}: {source}")]
    Copy { from: PathBuf, to: PathBuf, source: io::Error },
    #[error("writing the layer tar: {source}")]
    WriteTar { source: io::Error },
    #[error("unsupported layer media type {media_type:?}")]
    UnsupportedMediaType { media_type: String },
    #[error("reading the compressed layer: {source}")]
    Decompress { source: io::Error },
    #[error("compression level {level} is out of range for {algorithm} ({range})")]
    CompressionLevel { algorithm: &'static str, level: i32, range: &'static str },
    #[error("compressing the layer: {source}")]
    Compress { source: io::Error },
}

/// Ownership, permissions and times of one file, applied in the order the
/// kernel needs: chown clears set-id bits and file capabilities, so mode and
/// xattrs come after it, and the mtime last.
#[derive(Debug, Clone)]
struct Attrs {
    uid: u32,
    gid: u32,
    /// Permission and set-id bits (`0o7777`).
    mode: u32,
    mtime: Timestamp,
    xattrs: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Timestamp {
    secs: i64,
    nanos: u32,
}

impl Attrs {
    /// Everything but the mtime, which callers set on directories only after
    /// their children exist.
    fn apply_ownership_and_mode(&self, path: &Path, is_symlink: bool) -> Result<(), SnapshotError> {
        let meta_err = |source| SnapshotError::SetMetadata { path: path.to_owned(), source };
        std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid)).map_err(meta_err)?;
        if !is_symlink {
            let mode = rustix::fs::Mode::from_bits_truncate(self.mode & 0o7777);
            rustix::fs::chmodat(rustix::fs::CWD, path, mode, rustix::fs::AtFlags::empty())
                .map_err(|e| meta_err(e.into()))?;
        }
        for (name, value) in &self.xattrs {
            set_xattr(path, name, value)?;
        }
        Ok(())
    }
}

fn set_mtime(path: &Path, mtime: Timestamp) -> Result<(), SnapshotError> {
    let ts = rustix::fs::Timespec { tv_sec: mtime.secs, tv_nsec: mtime.nanos.into() };
    let times = rustix::fs::Timestamps { last_access: ts, last_modification: ts };
    rustix::fs::utimensat(rustix::fs::CWD, path, &times, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| SnapshotError::SetMetadata { path: path.to_owned(), source: e.into() })
}

/// Sets one xattr on the path itself (never a symlink's target). A
/// filesystem without xattr support skips it, as containerd's applier does;
/// any other failure is an error.
fn set_xattr(path: &Path, name: &str, value: &[u8]) -> Result<(), SnapshotError> {
    match rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty()) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::NOTSUP) => {
            tracing::debug!(path = %path.display(), xattr = name, "filesystem does not support this xattr; skipped");
            Ok(())
        }
        Err(e) => {
            Err(SnapshotError::SetXattr { path: path.to_owned(), name: name.to_owned(), source: e.into() })
        }
    }
}

/// All xattrs of the path itself, sorted by name, without overlayfs' own
/// (`trusted.overlay.*`, `user.overlay.*`), which describe the snapshot and
/// are not part of the file.
fn read_xattrs(path: &Path) -> Result<Vec<(String, Vec<u8>)>, SnapshotError> {
    let err = |e: rustix::io::Errno| SnapshotError::ReadXattr { path: path.to_owned(), source: e.into() };
    let size = match rustix::fs::llistxattr_query(path) {
        Ok(size) => size,
        Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(err(e)),
    };
    if size == 0 {
        return Ok(Vec::new());
    }
    let mut names = vec![0u8; size];
    let len = rustix::fs::llistxattr(path, &mut names[..]).map_err(err)?;
    names.truncate(len);
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(name) = std::str::from_utf8(name) else { continue };
        if name.starts_with("trusted.overlay.") || name.starts_with("user.overlay.") {
            continue;
        }
        out.push((name.to_owned(), get_xattr(path, name)?.unwrap_or_default()));
    }
    out.sort();
    Ok(out)
}

fn get_xattr(path: &Path, name: &str) -> Result<Option<Vec<u8>>, SnapshotError> {
    let err = |e: rustix::io::Errno| SnapshotError::ReadXattr { path: path.to_owned(), source: e.into() };
    let size = match rustix::fs::lgetxattr_query(path, name) {
        Ok(size) => size,
        Err(rustix::io::Errno::NODATA | rustix::io::Errno::NOTSUP) => return Ok(None),
        Err(e) => return Err(err(e)),
    };
    let mut value = vec![0u8; size];
    let len = rustix::fs::lgetxattr(path, name, &mut value[..]).map_err(err)?;
    value.truncate(len);
    Ok(Some(value))
}

fn is_opaque(path: &Path) -> Result<bool, SnapshotError> {
    Ok(get_xattr(path, opaque_xattr())?.is_some_and(|v| v == b"y"))
}

/// Makes a 0/0 character device, overlayfs' mark of a deleted path.
pub(crate) fn make_whiteout(path: &Path) -> Result<(), SnapshotError> {
    make_node(path, rustix::fs::FileType::CharacterDevice, 0, 0)
}

fn make_node(path: &Path, kind: rustix::fs::FileType, mode: u32, rdev: u64) -> Result<(), SnapshotError> {
    let mode = rustix::fs::Mode::from_bits_truncate(mode & 0o7777);
    rustix::fs::mknodat(rustix::fs::CWD, path, kind, mode, rdev)
        .map_err(|e| SnapshotError::Create { path: path.to_owned(), source: e.into() })
}

fn is_whiteout(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// Removes whatever is at `path` (a directory with its contents; a symlink
/// itself, never its target). Nothing there is fine.
fn remove_any(path: &Path) -> Result<(), SnapshotError> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
    };
    result.map_err(|source| SnapshotError::Remove { path: path.to_owned(), source })
}

/// Entries of a directory sorted by their bytes, so walks are reproducible.
fn sorted_entries(dir: &Path) -> Result<Vec<std::ffi::OsString>, SnapshotError> {
    let err = |source| SnapshotError::ReadTree { path: dir.to_owned(), source };
    let mut names = std::fs::read_dir(dir)
        .map_err(err)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    names.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
    Ok(names)
}

#[cfg(test)]
mod test_support;
