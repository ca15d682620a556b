//! Layer tar → overlay upper dir.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

use super::{
    Attrs, OPAQUE_WHITEOUT, SnapshotError, Timestamp, WHITEOUT_META_PREFIX, WHITEOUT_PREFIX, make_node,
    make_whiteout, opaque_xattr, remove_any, set_mtime, set_xattr,
};

/// Writes an uncompressed layer tar into `diff_dir` in overlay format.
///
/// Paths are taken relative to `diff_dir` whatever they say: a leading `/`
/// is dropped and `..` cannot climb above the root (the lexical clean
/// containerd applies). An entry whose parent path runs through a symlink is
/// refused, so a hostile layer cannot plant `x -> /etc` and then write
/// `x/passwd`; hardlinks must point at an entry inside the layer. The layer's
/// root entry (`./`) is skipped: the snapshotter owns the diff dir itself.
pub fn apply_layer(reader: impl Read, diff_dir: &Path) -> Result<(), SnapshotError> {
    std::fs::create_dir_all(diff_dir)
        .map_err(|source| SnapshotError::Create { path: diff_dir.to_owned(), source })?;
    let mut archive = tar::Archive::new(reader);
    let mut dir_mtimes = Vec::new();
    let entries = archive.entries().map_err(|source| SnapshotError::ReadTar { source })?;
    for entry in entries {
        let mut entry = entry.map_err(|source| SnapshotError::ReadTar { source })?;
        apply_entry(&mut entry, diff_dir, &mut dir_mtimes)?;
    }
    // Creating children bumps a directory's mtime, so directories get theirs
    // once everything is in place.
    for (path, mtime) in dir_mtimes.into_iter().rev() {
        set_mtime(&path, mtime)?;
    }
    Ok(())
}

fn apply_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    root: &Path,
    dir_mtimes: &mut Vec<(PathBuf, Timestamp)>,
) -> Result<(), SnapshotError> {
    let raw_name = entry.path_bytes().into_owned();
    let display = String::from_utf8_lossy(&raw_name).into_owned();
    let kind = entry.header().entry_type();
    if matches!(
        kind,
        EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName | EntryType::GNULongLink
    ) {
        return Ok(());
    }
    let Some(rel) = clean_path(&raw_name) else {
        return Ok(());
    };
    let name = rel.file_name().unwrap_or_default();

    if name.as_bytes().starts_with(WHITEOUT_PREFIX.as_bytes()) {
        let parent = prepare_parent(root, &rel, &display)?;
        if name == OPAQUE_WHITEOUT {
            return set_xattr(&parent, opaque_xattr(), b"y");
        }
        if name.as_bytes().starts_with(WHITEOUT_META_PREFIX.as_bytes()) {
            // AUFS bookkeeping (`.wh..wh.plnk`, …): nothing to apply.
            return Ok(());
        }
        let hidden = OsStr::from_bytes(&name.as_bytes()[WHITEOUT_PREFIX.len()..]);
        if hidden.is_empty() || hidden == ".." || hidden == "." {
            return Err(SnapshotError::UnsafeEntry { entry: display, reason: "whiteout of no file" });
        }
        let target = parent.join(hidden);
        remove_any(&target)?;
        make_whiteout(&target)?;
        // The marker keeps the time it was archived with, so a layer applied
        // and archived again gives the same bytes.
        return set_mtime(&target, entry_attrs(entry, &display)?.mtime);
    }

    let attrs = entry_attrs(entry, &display)?;
    let parent = prepare_parent(root, &rel, &display)?;
    let target = parent.join(name);
    let create_err = |source| SnapshotError::Create { path: target.clone(), source };

    match kind {
        EntryType::Directory => {
            let existing = std::fs::symlink_metadata(&target);
            if !existing.as_ref().is_ok_and(|m| m.is_dir()) {
                remove_any(&target)?;
                std::fs::create_dir(&target).map_err(create_err)?;
            }
            attrs.apply_ownership_and_mode(&target, false)?;
            dir_mtimes.push((target, attrs.mtime));
            return Ok(());
        }
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
            remove_any(&target)?;
            let mut file =
                std::fs::OpenOptions::new().write(true).create_new(true).open(&target).map_err(create_err)?;
            io::copy(entry, &mut file).map_err(|source| SnapshotError::ReadTar { source })?;
            attrs.apply_ownership_and_mode(&target, false)?;
        }
        EntryType::Symlink => {
            let link = entry.link_name_bytes().map(|l| l.into_owned()).unwrap_or_default();
            remove_any(&target)?;
            std::os::unix::fs::symlink(OsStr::from_bytes(&link), &target).map_err(create_err)?;
            attrs.apply_ownership_and_mode(&target, true)?;
        }
        EntryType::Link => {
            let link = entry.link_name_bytes().map(|l| l.into_owned()).unwrap_or_default();
            let link_display = String::from_utf8_lossy(&link).into_owned();
            let bad = |reason| SnapshotError::HardlinkTarget {
                entry: display.clone(),
                target: link_display.clone(),
                reason,
            };
            let source_rel = clean_path(&link).ok_or_else(|| bad("the layer root cannot be linked"))?;
            let source = existing_in_root(root, &source_rel).map_err(bad)?;
            if source == target {
                return Ok(());
            }
            remove_any(&target)?;
            std::fs::hard_link(&source, &target).map_err(create_err)?;
            // The link shares the inode of its source: no metadata of its own.
            return Ok(());
        }
        EntryType::Char | EntryType::Block | EntryType::Fifo => {
            let file_type = match kind {
                EntryType::Char => rustix::fs::FileType::CharacterDevice,
                EntryType::Block => rustix::fs::FileType::BlockDevice,
                _ => rustix::fs::FileType::Fifo,
            };
            // A FIFO has no device number; writers may leave the fields blank.
            let rdev = if kind == EntryType::Fifo {
                0
            } else {
                let header = entry.header();
                let major =
                    header.device_major().map_err(|source| SnapshotError::ReadTar { source })?.unwrap_or(0);
                let minor =
                    header.device_minor().map_err(|source| SnapshotError::ReadTar { source })?.unwrap_or(0);
                rustix::fs::makedev(major, minor)
            };
            remove_any(&target)?;
            match make_node(&target, file_type, attrs.mode, rdev) {
                // A user namespace may not make device nodes (rootless; as
                // containerd's archive, the layer goes on without them).
                Err(SnapshotError::Create { source, .. })
                    if kind != EntryType::Fifo
                        && source.raw_os_error() == Some(nix::errno::Errno::EPERM as i32)
                        && crate::rootless::in_user_namespace() =>
                {
                    tracing::debug!(path = %target.display(), "device node skipped: rootless kilnd may not make one");
                    return Ok(());
                }
                other => other?,
            }
            attrs.apply_ownership_and_mode(&target, false)?;
        }
        other => {
            return Err(SnapshotError::UnsupportedEntry { entry: display, kind: other.as_byte() as char });
        }
    }
    set_mtime(&target, attrs.mtime)
}

/// The entry's path as components below the root, or `None` for the root
/// itself. `..` stops at the root instead of leaving it.
fn clean_path(raw: &[u8]) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in Path::new(OsStr::from_bytes(raw)).components() {
        match component {
            Component::Normal(c) => out.push(c),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Walks the parent directories of `rel` below `root`, creating missing ones
/// (as containerd does for tars that omit them), and refuses to pass through
/// a symlink or a non-directory.
fn prepare_parent(root: &Path, rel: &Path, entry: &str) -> Result<PathBuf, SnapshotError> {
    let mut path = root.to_owned();
    let Some(parent) = rel.parent() else { return Ok(path) };
    for component in parent.components() {
        path.push(component);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(meta) if meta.is_symlink() => {
                return Err(SnapshotError::UnsafeEntry {
                    entry: entry.to_owned(),
                    reason: "its path runs through a symlink",
                });
            }
            Ok(_) => {
                return Err(SnapshotError::UnsafeEntry {
                    entry: entry.to_owned(),
                    reason: "a parent is not a directory",
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir(&path)
                    .map_err(|source| SnapshotError::Create { path: path.clone(), source })?;
            }
            Err(source) => return Err(SnapshotError::ReadTree { path, source }),
        }
    }
    Ok(path)
}

/// The path of an existing non-directory inside the root, reached without
/// following symlinks on the way.
fn existing_in_root(root: &Path, rel: &Path) -> Result<PathBuf, &'static str> {
    let mut path = root.to_owned();
    let count = rel.components().count();
    for (i, component) in rel.components().enumerate() {
        path.push(component);
        let meta = std::fs::symlink_metadata(&path).map_err(|_| "no such entry earlier in the layer")?;
        let last = i + 1 == count;
        if !last && !meta.is_dir() {
            return Err(if meta.is_symlink() {
                "its path runs through a symlink"
            } else {
                "a parent is not a directory"
            });
        }
        if last && meta.is_dir() {
            return Err("a directory cannot be hardlinked");
        }
    }
    Ok(path)
}

fn entry_attrs<R: Read>(entry: &mut tar::Entry<'_, R>, display: &str) -> Result<Attrs, SnapshotError> {
    let read_err = |source| SnapshotError::ReadTar { source };
    let header = entry.header();
    let uid = u32::try_from(header.uid().map_err(read_err)?)
        .map_err(|_| SnapshotError::UnsafeEntry { entry: display.to_owned(), reason: "uid out of range" })?;
    let gid = u32::try_from(header.gid().map_err(read_err)?)
        .map_err(|_| SnapshotError::UnsafeEntry { entry: display.to_owned(), reason: "gid out of range" })?;
    let mode = header.mode().map_err(read_err)?;
    let header_mtime = header.mtime().map_err(read_err)?;
    let mut attrs = Attrs {
        uid,
        gid,
        mode,
        mtime: Timestamp { secs: i64::try_from(header_mtime).unwrap_or(i64::MAX), nanos: 0 },
        xattrs: Vec::new(),
    };
    if let Some(pax) = entry.pax_extensions().map_err(read_err)? {
        for ext in pax {
            let ext = ext.map_err(read_err)?;
            let Ok(key) = ext.key() else { continue };
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                attrs.xattrs.push((name.to_owned(), ext.value_bytes().to_owned()));
            } else if key == "mtime"
                && let Some(mtime) = ext.value().ok().and_then(parse_pax_time)
            {
                attrs.mtime = mtime;
            }
        }
    }
    Ok(attrs)
}

/// PAX times are decimal seconds with an optional fraction, possibly
/// negative (POSIX pax, "mtime").
fn parse_pax_time(value: &str) -> Option<Timestamp> {
    let (int, frac) = value.split_once('.').unwrap_or((value, ""));
    let negative = int.starts_with('-');
    let secs: i64 = int.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let nanos: u32 = digits.parse().ok()?;
    if negative && nanos > 0 {
        // -1.25 is 1.25 s before the epoch: -2 s plus 0.75 s.
        return Some(Timestamp { secs: secs - 1, nanos: 1_000_000_000 - nanos });
    }
    Some(Timestamp { secs, nanos })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    use super::super::test_support::*;
    use super::*;

    #[test]
    fn every_entry_kind_lands_with_its_metadata() {
        let mut tar = TarBuilder::new();
        tar.dir("etc/", 0o755, 0, 0, 1_000_000);
        tar.xattrs(&[("user.kiln", b"yes")]);
        tar.file("etc/passwd", b"root:x:0:0\n", 0o644, 0, 0, 1_000_001);
        tar.file("bin/su", b"#!su", 0o4755, 0, 0, 1_000_002);
        tar.file("home/u/notes", b"mine", 0o600, 1000, 1001, 1_000_003);
        tar.symlink("etc/motd", "/usr/share/motd", 1_000_004);
        tar.hardlink("etc/passwd-", "etc/passwd");
        tar.device("dev/null", EntryType::Char, 1, 3, 0o666);
        tar.device("dev/loop0", EntryType::Block, 7, 0, 0o660);
        tar.device("run/fifo", EntryType::Fifo, 0, 0, 0o644);
        let dir = tempfile::tempdir().unwrap();
        apply_layer(&tar.finish()[..], dir.path()).unwrap();
        let root = dir.path();

        let passwd = std::fs::symlink_metadata(root.join("etc/passwd")).unwrap();
        assert_eq!(std::fs::read(root.join("etc/passwd")).unwrap(), b"root:x:0:0\n");
        assert_eq!(passwd.mode() & 0o7777, 0o644);
        assert_eq!(passwd.mtime(), 1_000_001);
        assert_eq!(passwd.nlink(), 2);
        assert_eq!(std::fs::symlink_metadata(root.join("etc/passwd-")).unwrap().ino(), passwd.ino());
        assert_eq!(
            super::super::get_xattr(&root.join("etc/passwd"), "user.kiln").unwrap().as_deref(),
            Some(&b"yes"[..])
        );

        let su = std::fs::metadata(root.join("bin/su")).unwrap();
        assert_eq!(su.permissions().mode() & 0o7777, 0o4755, "setuid survives the chown");
        let notes = std::fs::metadata(root.join("home/u/notes")).unwrap();
        assert_eq!((notes.uid(), notes.gid(), notes.mode() & 0o777), (1000, 1001, 0o600));
        assert_eq!(std::fs::read_link(root.join("etc/motd")).unwrap(), Path::new("/usr/share/motd"));
        assert_eq!(std::fs::symlink_metadata(root.join("etc/motd")).unwrap().mtime(), 1_000_004);

        let null = std::fs::symlink_metadata(root.join("dev/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!((rustix::fs::major(null.rdev()), rustix::fs::minor(null.rdev())), (1, 3));
        assert!(std::fs::symlink_metadata(root.join("dev/loop0")).unwrap().file_type().is_block_device());
        assert!(std::fs::symlink_metadata(root.join("run/fifo")).unwrap().file_type().is_fifo());
        // The directory keeps the tar's mtime although files were created in it afterwards.
        assert_eq!(std::fs::metadata(root.join("etc")).unwrap().mtime(), 1_000_000);
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts() {
        let mut tar = TarBuilder::new();
        tar.dir("var/", 0o755, 0, 0, 5);
        tar.file("var/.wh.cache", b"", 0o600, 0, 0, 5);
        tar.dir("opt/", 0o755, 0, 0, 5);
        tar.file("opt/.wh..wh..opq", b"", 0o600, 0, 0, 5);
        tar.file("opt/new", b"new", 0o644, 0, 0, 5);
        tar.file(".wh.top", b"", 0o600, 0, 0, 5);
        tar.file("usr/.wh..wh.plnk", b"", 0o600, 0, 0, 5);
        let dir = tempfile::tempdir().unwrap();
        apply_layer(&tar.finish()[..], dir.path()).unwrap();
        let root = dir.path();

        for deleted in ["var/cache", "top"] {
            let meta = std::fs::symlink_metadata(root.join(deleted)).unwrap();
            assert!(meta.file_type().is_char_device() && meta.rdev() == 0, "{deleted}");
        }
        assert!(!root.join("var/.wh.cache").exists());
        assert!(super::super::is_opaque(&root.join("opt")).unwrap());
        assert!(!super::super::is_opaque(&root.join("var")).unwrap());
        assert_eq!(std::fs::read(root.join("opt/new")).unwrap(), b"new");
        assert!(!root.join("opt/.wh..wh..opq").exists());
        assert_eq!(std::fs::read_dir(root.join("usr")).unwrap().count(), 0);
    }

    #[test]
    fn hostile_paths_stay_inside_the_diff_dir() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("diff");
        let mut tar = TarBuilder::new();
        tar.file_raw_name(b"../escape", b"x");
        tar.file_raw_name(b"/abs", b"x");
        tar.file_raw_name(b"a/../../../up", b"x");
        tar.file(".wh...", b"", 0o600, 0, 0, 0);
        apply_layer(&tar.finish()[..], &root).unwrap_err();
        assert!(!outer.path().join("escape").exists());
        assert!(root.join("escape").exists(), "`..` is cleaned to the root");
        assert!(root.join("abs").exists());
        assert!(root.join("up").exists());
        assert_eq!(std::fs::read_dir(outer.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_symlink_cannot_redirect_later_entries() {
        let outer = tempfile::tempdir().unwrap();
        let victim = outer.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        let root = outer.path().join("diff");

        let mut tar = TarBuilder::new();
        tar.symlink("evil", victim.to_str().unwrap(), 0);
        tar.file("evil/owned", b"pwned", 0o644, 0, 0, 0);
        let err = apply_layer(&tar.finish()[..], &root).unwrap_err().to_string();
        assert!(err.contains("evil/owned") && err.contains("symlink"), "{err}");
        assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0);

        // A relative symlink climbing out is refused the same way.
        let mut tar = TarBuilder::new();
        tar.symlink("up", "../victim", 0);
        tar.dir("up/sub/", 0o755, 0, 0, 0);
        apply_layer(&tar.finish()[..], &outer.path().join("diff2")).unwrap_err();
        assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0);

        // A file replacing a symlink replaces the link, not its target.
        std::fs::write(victim.join("keep"), b"safe").unwrap();
        let mut tar = TarBuilder::new();
        tar.symlink("k", victim.join("keep").to_str().unwrap(), 0);
        tar.file("k", b"replaced", 0o644, 0, 0, 0);
        let root3 = outer.path().join("diff3");
        apply_layer(&tar.finish()[..], &root3).unwrap();
        assert_eq!(std::fs::read(victim.join("keep")).unwrap(), b"safe");
        assert_eq!(std::fs::read(root3.join("k")).unwrap(), b"replaced");
    }

    #[test]
    fn hardlinks_must_point_inside_the_layer() {
        let outer = tempfile::tempdir().unwrap();
        std::fs::write(outer.path().join("secret"), b"s").unwrap();
        for target in ["../secret", "/etc/hostname", "missing"] {
            let mut tar = TarBuilder::new();
            tar.hardlink("link", target);
            let root = outer.path().join("diff");
            let err = apply_layer(&tar.finish()[..], &root).unwrap_err().to_string();
            assert!(err.contains("no such entry earlier in the layer"), "{target}: {err}");
            assert!(!root.join("link").exists());
        }
        let mut tar = TarBuilder::new();
        tar.dir("d/", 0o755, 0, 0, 0);
        tar.hardlink("link", "d");
        let err = apply_layer(&tar.finish()[..], &outer.path().join("diff2")).unwrap_err().to_string();
        assert!(err.contains("directory cannot be hardlinked"), "{err}");
    }

    #[test]
    fn later_entries_replace_earlier_ones() {
        let mut tar = TarBuilder::new();
        tar.dir("x/", 0o755, 0, 0, 0);
        tar.file("x/inner", b"1", 0o644, 0, 0, 0);
        tar.file("x", b"now a file", 0o644, 0, 0, 0);
        tar.file("y", b"first", 0o644, 0, 0, 0);
        tar.file("y", b"second", 0o644, 0, 0, 0);
        let dir = tempfile::tempdir().unwrap();
        apply_layer(&tar.finish()[..], dir.path()).unwrap();
        assert_eq!(std::fs::read(dir.path().join("x")).unwrap(), b"now a file");
        assert_eq!(std::fs::read(dir.path().join("y")).unwrap(), b"second");
    }

    #[test]
    fn a_truncated_tar_is_an_error() {
        let mut tar = TarBuilder::new();
        tar.file("big", &vec![7u8; 10_000], 0o644, 0, 0, 0);
        let bytes = tar.finish();
        let dir = tempfile::tempdir().unwrap();
        let err = apply_layer(&bytes[..3000], dir.path()).unwrap_err();
        assert!(matches!(err, SnapshotError::ReadTar { .. }), "{err}");
    }

    #[test]
    fn pax_times_parse_with_fractions() {
        assert_eq!(parse_pax_time("1700000000"), Some(Timestamp { secs: 1_700_000_000, nanos: 0 }));
        assert_eq!(parse_pax_time("1.5"), Some(Timestamp { secs: 1, nanos: 500_000_000 }));
        assert_eq!(parse_pax_time("-1.25"), Some(Timestamp { secs: -2, nanos: 750_000_000 }));
        assert_eq!(parse_pax_time("x"), None);
    }
}
