//! A stack of overlay diffs → one plain directory, doing by copying what an
//! overlay mount does at lookup time.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::{
    Attrs, SnapshotError, Timestamp, is_opaque, is_whiteout, make_node, read_xattrs, remove_any, set_mtime,
    sorted_entries,
};

/// Applies `layers` (lowest first, each an overlay upper dir) onto `dest`:
/// later files replace earlier ones, a whiteout deletes what lies below it,
/// an opaque directory starts empty. `dest` is created if missing and may
/// already hold a tree to build on.
///
/// Ancestors of every path are handled before the path itself, and a layer's
/// directory replaces a lower non-directory at the same place, so nothing is
/// ever written through a symlink in `dest`.
pub fn flatten<P: AsRef<Path>>(layers: &[P], dest: &Path) -> Result<(), SnapshotError> {
    std::fs::create_dir_all(dest)
        .map_err(|source| SnapshotError::Create { path: dest.to_owned(), source })?;
    for layer in layers {
        let mut merge = Merge { links: HashMap::new(), dir_mtimes: Vec::new() };
        merge.dir(layer.as_ref(), dest)?;
        for (path, mtime) in merge.dir_mtimes.into_iter().rev() {
            set_mtime(&path, mtime)?;
        }
    }
    Ok(())
}

struct Merge {
    /// (dev, inode) of a multiply-linked file in this layer → where it went,
    /// so hardlinks within a layer stay hardlinks.
    links: HashMap<(u64, u64), PathBuf>,
    dir_mtimes: Vec<(PathBuf, Timestamp)>,
}

impl Merge {
    fn dir(&mut self, src_dir: &Path, dest_dir: &Path) -> Result<(), SnapshotError> {
        for name in sorted_entries(src_dir)? {
            let src = src_dir.join(&name);
            let dest = dest_dir.join(&name);
            let meta = std::fs::symlink_metadata(&src)
                .map_err(|source| SnapshotError::ReadTree { path: src.clone(), source })?;
            let file_type = meta.file_type();
            if is_whiteout(&meta) {
                remove_any(&dest)?;
                continue;
            }
            if file_type.is_socket() {
                continue;
            }
            let attrs = Attrs {
                uid: meta.uid(),
                gid: meta.gid(),
                mode: meta.mode() & 0o7777,
                mtime: Timestamp { secs: meta.mtime(), nanos: u32::try_from(meta.mtime_nsec()).unwrap_or(0) },
                xattrs: read_xattrs(&src)?,
            };
            let create_err = |source| SnapshotError::Create { path: dest.clone(), source };
            if file_type.is_dir() {
                let existing_dir = std::fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir());
                if !existing_dir || is_opaque(&src)? {
                    remove_any(&dest)?;
                    std::fs::create_dir(&dest).map_err(create_err)?;
                }
                attrs.apply_ownership_and_mode(&dest, false)?;
                self.dir(&src, &dest)?;
                self.dir_mtimes.push((dest, attrs.mtime));
                continue;
            }
            remove_any(&dest)?;
            if file_type.is_file() {
                if meta.nlink() > 1 {
                    let key = (meta.dev(), meta.ino());
                    if let Some(first) = self.links.get(&key) {
                        std::fs::hard_link(first, &dest).map_err(create_err)?;
                        continue;
                    }
                    self.links.insert(key, dest.clone());
                }
                copy_file(&src, &dest)?;
                attrs.apply_ownership_and_mode(&dest, false)?;
            } else if file_type.is_symlink() {
                let target = std::fs::read_link(&src)
                    .map_err(|source| SnapshotError::ReadTree { path: src.clone(), source })?;
                std::os::unix::fs::symlink(target, &dest).map_err(create_err)?;
                attrs.apply_ownership_and_mode(&dest, true)?;
            } else {
                let kind = rustix::fs::FileType::from_raw_mode(meta.mode());
                make_node(&dest, kind, attrs.mode, meta.rdev())?;
                attrs.apply_ownership_and_mode(&dest, false)?;
            }
            set_mtime(&dest, attrs.mtime)?;
        }
        Ok(())
    }
}

fn copy_file(src: &Path, dest: &Path) -> Result<(), SnapshotError> {
    let err = |source: io::Error| SnapshotError::Copy { from: src.to_owned(), to: dest.to_owned(), source };
    let mut from = std::fs::File::open(src).map_err(err)?;
    let mut to = std::fs::OpenOptions::new().write(true).create_new(true).open(dest).map_err(err)?;
    io::copy(&mut from, &mut to).map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::super::test_support::TarBuilder;
    use super::super::{apply_layer, get_xattr, opaque_xattr};
    use super::*;

    fn layer(dir: &Path, name: &str, build: impl FnOnce(&mut TarBuilder)) -> PathBuf {
        let mut tar = TarBuilder::new();
        build(&mut tar);
        let path = dir.join(name);
        apply_layer(&tar.finish()[..], &path).unwrap();
        path
    }

    fn tree(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) {
            for name in sorted_entries(dir).unwrap() {
                let path = dir.join(&name);
                let rel = format!("{rel}{}", name.to_string_lossy());
                let meta = std::fs::symlink_metadata(&path).unwrap();
                if meta.is_dir() {
                    out.push(format!("{rel}/"));
                    walk(&path, &format!("{rel}/"), out);
                } else if meta.is_symlink() {
                    out.push(format!("{rel} -> {}", std::fs::read_link(&path).unwrap().display()));
                } else {
                    out.push(format!("{rel} = {}", String::from_utf8_lossy(&std::fs::read(&path).unwrap())));
                }
            }
        }
        walk(root, "", &mut out);
        out
    }

    #[test]
    fn whiteouts_delete_and_opaque_dirs_clear_what_is_below() {
        let dir = tempfile::tempdir().unwrap();
        let base = layer(dir.path(), "l1", |t| {
            t.dir("etc/", 0o755, 0, 0, 1);
            t.file("etc/keep", b"1", 0o644, 0, 0, 1);
            t.file("etc/gone", b"1", 0o644, 0, 0, 1);
            t.dir("cache/", 0o755, 0, 0, 1);
            t.file("cache/old", b"1", 0o644, 0, 0, 1);
            t.dir("tree/sub/", 0o755, 0, 0, 1);
            t.file("tree/sub/x", b"1", 0o644, 0, 0, 1);
            t.symlink("lib", "usr/lib", 1);
            t.dir("var/", 0o755, 0, 0, 1);
        });
        let top = layer(dir.path(), "l2", |t| {
            t.file("etc/.wh.gone", b"", 0o600, 0, 0, 2);
            t.file("etc/keep", b"2", 0o644, 0, 0, 2);
            t.file("cache/.wh..wh..opq", b"", 0o600, 0, 0, 2);
            t.file("cache/new", b"2", 0o644, 0, 0, 2);
            t.file(".wh.tree", b"", 0o600, 0, 0, 2);
            t.dir("lib/", 0o755, 0, 0, 2);
            t.file("lib/libc.so", b"2", 0o755, 0, 0, 2);
        });
        let dest = dir.path().join("rootfs");
        flatten(&[&base, &top], &dest).unwrap();
        assert_eq!(
            tree(&dest),
            ["cache/", "cache/new = 2", "etc/", "etc/keep = 2", "lib/", "lib/libc.so = 2", "var/"],
            "a directory in an upper layer replaces a lower symlink rather than writing through it"
        );
        assert!(
            get_xattr(&dest.join("cache"), opaque_xattr()).unwrap().is_none(),
            "overlay markers stay out of the rootfs"
        );
        assert_eq!(std::fs::metadata(dest.join("var")).unwrap().mtime(), 1, "directories keep their mtime");
    }

    #[test]
    fn hardlinks_within_a_layer_stay_linked() {
        let dir = tempfile::tempdir().unwrap();
        let l = layer(dir.path(), "l1", |t| {
            t.file("a", b"same", 0o644, 0, 0, 1);
            t.hardlink("b", "a");
        });
        let dest = dir.path().join("rootfs");
        flatten(&[&l], &dest).unwrap();
        let (a, b) = (std::fs::metadata(dest.join("a")).unwrap(), std::fs::metadata(dest.join("b")).unwrap());
        assert_eq!(a.ino(), b.ino());
    }

    #[test]
    fn a_lower_symlink_never_redirects_an_upper_file() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let l1 = layer(dir.path(), "l1", |t| t.symlink("x", outside.to_str().unwrap(), 1));
        let l2 = layer(dir.path(), "l2", |t| {
            t.dir("x/", 0o755, 0, 0, 1);
            t.file("x/f", b"inside", 0o644, 0, 0, 1);
        });
        let dest = dir.path().join("rootfs");
        flatten(&[&l1, &l2], &dest).unwrap();
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        assert_eq!(std::fs::read(dest.join("x/f")).unwrap(), b"inside");
    }
}
