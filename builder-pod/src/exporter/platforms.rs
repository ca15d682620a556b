//! The file system a `local` or `tar` export sends. A result per platform
//! is one directory per platform (`linux_arm64`: the id with `/` made
//! `_`), presented the way fsutil's `SubDirFS` presents it to BuildKit's
//! local and tar exporters: an absolute symlink inside a platform's
//! directory points into that directory, hardlinks name their full path.

use std::ffi::OsStr;
use std::io::{Read, Seek, Write};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use kiln_proto::buildkit::fsutil::types::Stat;
use nix::mount::{MntFlags, MsFlags};

use super::{ExportError, ExportSource};
use crate::cache::mount::{MountError, Mounted, mount};
use crate::cache::{CacheManager, Snapshot};
use crate::fsutil::stat::go_mode;
use crate::snapshot::{DiffOptions, diff_to_tar};
use crate::util::gopath;

/// A mounted export: the root to send and, for a result per platform,
/// each platform's directory name and its own root.
pub(super) struct ExportTree {
    pub root: PathBuf,
    pub parts: Vec<(String, PathBuf)>,
    /// Declared before the views: the bind mounts go before what they show.
    binds: Vec<BindMount>,
    views: Vec<Mounted>,
    combined: Option<tempfile::TempDir>,
}

/// A bind mount, lazily unmounted when dropped.
struct BindMount(PathBuf);

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, MntFlags::MNT_DETACH);
    }
}

impl ExportTree {
    /// Mounts the result read-only; results per platform are bind-mounted
    /// side by side under one temporary directory.
    pub(super) fn mount(cache: &CacheManager, source: &ExportSource) -> Result<Self, ExportError> {
        let scratch = Snapshot::default();
        let platforms = match source {
            ExportSource::Single { snapshot, .. } => {
                let view = mount(cache, snapshot.as_ref().unwrap_or(&scratch), None)?;
                let root = view.path().to_owned();
                return Ok(Self {
                    root,
                    parts: Vec::new(),
                    binds: Vec::new(),
                    views: vec![view],
                    combined: None,
                });
            }
            ExportSource::Platforms(platforms) => platforms,
        };
        let combined = cache.temp_dir("export-").map_err(MountError::from)?;
        let mut tree = Self {
            root: combined.path().to_owned(),
            parts: Vec::new(),
            binds: Vec::new(),
            views: Vec::new(),
            combined: None,
        };
        for p in platforms {
            let view = mount(cache, p.snapshot.as_ref().unwrap_or(&scratch), None)?;
            let name = p.id.replace('/', "_");
            let dir = combined.path().join(&name);
            std::fs::create_dir(&dir)
                .map_err(|source| ExportError::PlatformDir { path: dir.clone(), source })?;
            nix::mount::mount(
                Some(view.path()),
                &dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|source| ExportError::BindMount {
                platform: p.id.clone(),
                path: dir.clone(),
                source,
            })?;
            tree.binds.push(BindMount(dir));
            tree.parts.push((name, view.path().to_owned()));
            tree.views.push(view);
        }
        tree.combined = Some(combined);
        Ok(tree)
    }
}

/// `SubDirFS`: an absolute symlink target inside a platform's directory
/// gets that directory in front (`/bin/sh` in `linux_arm64/` is
/// `/linux_arm64/bin/sh`). Stats are relative to the export root.
pub(super) fn rebase_symlink(stat: &mut Stat) {
    if stat.mode & go_mode::SYMLINK == 0 || !stat.linkname.starts_with('/') {
        return;
    }
    if let Some((dir, _)) = stat.path.split_once('/') {
        stat.linkname = gopath::join(&[&format!("/{dir}"), &stat.linkname]);
    }
}

/// `-o type=tar` of results per platform: each platform's tree (written
/// to a spool file in `spool_dir` first) under its directory.
pub(super) fn platforms_tar<W: Write>(
    parts: &[(String, PathBuf)],
    spool_dir: &Path,
    writer: W,
) -> Result<W, ExportError> {
    let mut out = tar::Builder::new(writer);
    for (dir, root) in parts {
        let fail = |source| ExportError::PlatformTar { platform: dir.clone(), source };
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        header.set_mtime(0);
        out.append_data(&mut header, format!("{dir}/"), std::io::empty()).map_err(fail)?;
        let spool = tempfile::tempfile_in(spool_dir).map_err(fail)?;
        let mut spool = diff_to_tar(root, spool, &DiffOptions::default()).map_err(ExportError::Tar)?;
        spool.rewind().map_err(fail)?;
        append_under(&mut out, dir, spool).map_err(fail)?;
    }
    out.into_inner().map_err(|source| ExportError::PlatformTar { platform: String::new(), source })
}

/// Copies the entries of the tar `from` into `out` under `dir/`, with the
/// link targets `SubDirFS` gives them and their extended attributes.
fn append_under<W: Write>(out: &mut tar::Builder<W>, dir: &str, from: impl Read) -> std::io::Result<()> {
    let mut archive = tar::Archive::new(from);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let mut xattrs = Vec::new();
        if let Some(extensions) = entry.pax_extensions()? {
            for ext in extensions {
                let ext = ext?;
                if ext.key_bytes().starts_with(b"SCHILY.xattr.") {
                    xattrs.push((ext.key_bytes().to_vec(), ext.value_bytes().to_vec()));
                }
            }
        }
        if !xattrs.is_empty() {
            append_pax(out, &xattrs)?;
        }
        let mut path = format!("{dir}/").into_bytes();
        path.extend_from_slice(&entry.path_bytes());
        let path = PathBuf::from(OsStr::from_bytes(&path));
        let mut header = entry.header().clone();
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        match (header.entry_type(), link) {
            (tar::EntryType::Symlink, Some(target)) => {
                let target = match std::str::from_utf8(&target) {
                    Ok(t) if t.starts_with('/') => gopath::join(&[&format!("/{dir}"), t]).into_bytes(),
                    _ => target,
                };
                out.append_link(&mut header, &path, OsStr::from_bytes(&target))?;
            }
            (tar::EntryType::Link, Some(target)) => {
                let mut full = format!("{dir}/").into_bytes();
                full.extend_from_slice(&target);
                out.append_link(&mut header, &path, OsStr::from_bytes(&full))?;
            }
            _ => out.append_data(&mut header, &path, &mut entry)?,
        }
    }
    Ok(())
}

/// A PAX extended header with `records` for the entry that follows.
fn append_pax<W: Write>(out: &mut tar::Builder<W>, records: &[(Vec<u8>, Vec<u8>)]) -> std::io::Result<()> {
    let mut data = Vec::new();
    for (key, value) in records {
        // "<len> <key>=<value>\n", where <len> counts itself.
        let rest = key.len() + value.len() + 3;
        let mut len = rest + 1;
        while len != rest + len.to_string().len() {
            len = rest + len.to_string().len();
        }
        data.extend_from_slice(format!("{len} ").as_bytes());
        data.extend_from_slice(key);
        data.push(b'=');
        data.extend_from_slice(value);
        data.push(b'\n');
    }
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::XHeader);
    header.set_mode(0o644);
    header.set_size(data.len() as u64);
    header.set_path("PaxHeaders/entry")?;
    header.set_cksum();
    out.append(&header, &data[..])
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn absolute_symlinks_point_into_their_platform_directory() {
        let mut stat = Stat {
            path: "linux_arm64/bin/sh".into(),
            mode: go_mode::SYMLINK | 0o777,
            linkname: "/bin/busybox".into(),
            ..Stat::default()
        };
        rebase_symlink(&mut stat);
        assert_eq!(stat.linkname, "/linux_arm64/bin/busybox");
        let mut relative = Stat { linkname: "busybox".into(), ..stat.clone() };
        rebase_symlink(&mut relative);
        assert_eq!(relative.linkname, "busybox");
        let mut hardlink = Stat { mode: 0o755, linkname: "linux_arm64/bin/busybox".into(), ..stat };
        rebase_symlink(&mut hardlink);
        assert_eq!(hardlink.linkname, "linux_arm64/bin/busybox", "hardlinks already name their full path");
    }

    #[test]
    fn a_tar_per_platform_nests_each_tree_and_rebases_its_links() {
        let amd = tempfile::tempdir().unwrap();
        let arm = tempfile::tempdir().unwrap();
        for (dir, content) in [(&amd, "amd64"), (&arm, "arm64")] {
            std::fs::create_dir(dir.path().join("bin")).unwrap();
            std::fs::write(dir.path().join("bin/busybox"), content).unwrap();
            std::fs::hard_link(dir.path().join("bin/busybox"), dir.path().join("bin/ls")).unwrap();
            symlink("/bin/busybox", dir.path().join("bin/sh")).unwrap();
            symlink("busybox", dir.path().join("bin/cat")).unwrap();
        }
        let spool = tempfile::tempdir().unwrap();
        let parts = vec![
            ("linux_amd64".to_owned(), amd.path().to_owned()),
            ("linux_arm64".to_owned(), arm.path().to_owned()),
        ];
        let bytes = platforms_tar(&parts, spool.path(), Vec::new()).unwrap();
        let mut entries = Vec::new();
        for entry in tar::Archive::new(&bytes[..]).entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let link = entry.link_name().unwrap().map(|l| l.to_string_lossy().into_owned());
            let mut data = String::new();
            entry.read_to_string(&mut data).unwrap();
            entries.push((path, entry.header().entry_type(), link, data));
        }
        let find = |p: &str| {
            entries
                .iter()
                .find(|e| e.0.trim_end_matches('/') == p)
                .unwrap_or_else(|| panic!("{p}: {entries:?}"))
        };
        assert_eq!(find("linux_amd64").1, tar::EntryType::Directory);
        assert_eq!(find("linux_arm64/bin/busybox").3, "arm64");
        assert_eq!(find("linux_amd64/bin/busybox").3, "amd64");
        assert_eq!(find("linux_arm64/bin/sh").2.as_deref(), Some("/linux_arm64/bin/busybox"));
        assert_eq!(find("linux_arm64/bin/cat").2.as_deref(), Some("busybox"));
        let ls = find("linux_amd64/bin/ls");
        assert_eq!((ls.1, ls.2.as_deref()), (tar::EntryType::Link, Some("linux_amd64/bin/busybox")));
    }

    #[test]
    fn pax_records_count_their_own_length() {
        let mut out = tar::Builder::new(Vec::new());
        append_pax(&mut out, &[(b"SCHILY.xattr.user.k".to_vec(), b"v".to_vec())]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        out.append_data(&mut h, "f", &b"x"[..]).unwrap();
        let bytes = out.into_inner().unwrap();
        let mut archive = tar::Archive::new(&bytes[..]);
        let mut entry = archive.entries().unwrap().next().unwrap().unwrap();
        let ext = entry.pax_extensions().unwrap().unwrap().next().unwrap().unwrap();
        assert_eq!((ext.key().unwrap(), ext.value_bytes()), ("SCHILY.xattr.user.k", &b"v"[..]));
        assert_eq!(entry.path().unwrap().to_str(), Some("f"));
    }
}
