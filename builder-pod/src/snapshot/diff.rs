//! Overlay upper dir → layer tar.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use tar::{EntryType, Header};

use super::{
    OPAQUE_WHITEOUT, SnapshotError, WHITEOUT_PREFIX, is_opaque, is_whiteout, read_xattrs, sorted_entries,
};

/// How entry mtimes are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MtimePolicy {
    /// As on disk (whole seconds).
    #[default]
    Keep,
    /// Every entry gets this time (seconds since the epoch).
    Fixed(u64),
    /// Times later than this become this; BuildKit's `rewrite-timestamp`
    /// with `SOURCE_DATE_EPOCH` does the same for reproducible layers.
    Clamp(u64),
}

impl MtimePolicy {
    fn apply(self, secs: i64) -> u64 {
        let secs = u64::try_from(secs).unwrap_or(0);
        match self {
            Self::Keep => secs,
            Self::Fixed(t) => t,
            Self::Clamp(t) => secs.min(t),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct DiffOptions {
    pub mtime: MtimePolicy,
}

/// Writes the overlay upper dir `diff_dir` as an OCI layer tar into
/// `writer` and hands the writer back. Entries come in byte order of their
/// names, parents before children, so the same tree always gives the same
/// bytes: 0/0 character devices become `.wh.NAME`, opaque directories get a
/// `.wh..wh..opq` entry, xattrs travel as PAX `SCHILY.xattr.*` records, and
/// files sharing an inode become hardlinks to the first one written. Sockets
/// cannot be stored in a tar and are left out, as containerd does.
pub fn diff_to_tar<W: Write>(diff_dir: &Path, writer: W, options: &DiffOptions) -> Result<W, SnapshotError> {
    let mut walker = Walker { builder: tar::Builder::new(writer), options, links: HashMap::new() };
    walker.walk(diff_dir, b"")?;
    walker.builder.into_inner().map_err(|source| SnapshotError::WriteTar { source })
}

struct Walker<'a, W: Write> {
    builder: tar::Builder<W>,
    options: &'a DiffOptions,
    /// (dev, inode) of multiply-linked files → the name written first.
    links: HashMap<(u64, u64), Vec<u8>>,
}

impl<W: Write> Walker<'_, W> {
    fn walk(&mut self, dir: &Path, prefix: &[u8]) -> Result<(), SnapshotError> {
        for name in sorted_entries(dir)? {
            let path = dir.join(&name);
            let meta = std::fs::symlink_metadata(&path)
                .map_err(|source| SnapshotError::ReadTree { path: path.clone(), source })?;
            let mut rel = prefix.to_vec();
            rel.extend_from_slice(name.as_bytes());
            let file_type = meta.file_type();
            let mut header = self.header(&meta);

            if is_whiteout(&meta) {
                let mut whiteout = prefix.to_vec();
                whiteout.extend_from_slice(WHITEOUT_PREFIX.as_bytes());
                whiteout.extend_from_slice(name.as_bytes());
                header.set_entry_type(EntryType::Regular);
                header.set_mode(0o600);
                self.append(header, &whiteout, None, io::empty())?;
                continue;
            }
            if file_type.is_socket() {
                tracing::debug!(path = %path.display(), "socket left out of the layer");
                continue;
            }
            self.append_xattrs(&path, &rel)?;
            if file_type.is_dir() {
                let mut dir_name = rel.clone();
                dir_name.push(b'/');
                header.set_entry_type(EntryType::Directory);
                self.append(header.clone(), &dir_name, None, io::empty())?;
                if is_opaque(&path)? {
                    let mut marker = dir_name.clone();
                    marker.extend_from_slice(OPAQUE_WHITEOUT.as_bytes());
                    header.set_entry_type(EntryType::Regular);
                    self.append(header, &marker, None, io::empty())?;
                }
                self.walk(&path, &dir_name)?;
            } else if file_type.is_file() {
                if meta.nlink() > 1 {
                    if let Some(first) = self.links.get(&(meta.dev(), meta.ino())).cloned() {
                        header.set_entry_type(EntryType::Link);
                        self.append(header, &rel, Some(&first), io::empty())?;
                        continue;
                    }
                    self.links.insert((meta.dev(), meta.ino()), rel.clone());
                }
                header.set_entry_type(EntryType::Regular);
                header.set_size(meta.len());
                let file = std::fs::File::open(&path)
                    .map_err(|source| SnapshotError::ReadTree { path: path.clone(), source })?;
                // A file that changes size under us would corrupt the tar:
                // read exactly the size in the header, and fail if short.
                let mut exact = ExactReader { inner: file.take(meta.len()), left: meta.len() };
                self.append(header, &rel, None, &mut exact)?;
            } else if file_type.is_symlink() {
                let target = std::fs::read_link(&path)
                    .map_err(|source| SnapshotError::ReadTree { path: path.clone(), source })?;
                header.set_entry_type(EntryType::Symlink);
                self.append(header, &rel, Some(target.as_os_str().as_bytes()), io::empty())?;
            } else {
                let kind = if file_type.is_char_device() {
                    EntryType::Char
                } else if file_type.is_block_device() {
                    EntryType::Block
                } else {
                    EntryType::Fifo
                };
                header.set_entry_type(kind);
                let rdev = meta.rdev();
                let set = header
                    .set_device_major(rustix::fs::major(rdev))
                    .and_then(|()| header.set_device_minor(rustix::fs::minor(rdev)));
                set.map_err(|source| SnapshotError::WriteTar { source })?;
                self.append(header, &rel, None, io::empty())?;
            }
        }
        Ok(())
    }

    fn header(&self, meta: &std::fs::Metadata) -> Header {
        let mut header = Header::new_gnu();
        header.set_mode(meta.mode() & 0o7777);
        header.set_uid(meta.uid().into());
        header.set_gid(meta.gid().into());
        header.set_mtime(self.options.mtime.apply(meta.mtime()));
        header.set_size(0);
        header
    }

    fn append_xattrs(&mut self, path: &Path, rel: &[u8]) -> Result<(), SnapshotError> {
        let xattrs = read_xattrs(path)?;
        if xattrs.is_empty() {
            return Ok(());
        }
        let mut records = Vec::new();
        for (name, value) in &xattrs {
            records.extend(pax_record(&format!("SCHILY.xattr.{name}"), value));
        }
        let mut header = Header::new_ustar();
        header.set_entry_type(EntryType::XHeader);
        header.set_mode(0o644);
        header.set_size(records.len() as u64);
        // Readers ignore an extended header's own name; Go names it like this.
        let base = rel.rsplit(|b| *b == b'/').next().unwrap_or(rel);
        let mut name = b"PaxHeaders.0/".to_vec();
        name.extend_from_slice(&base[..base.len().min(80)]);
        set_name_field(&mut header, &name);
        header.set_cksum();
        self.builder.append(&header, &records[..]).map_err(|source| SnapshotError::WriteTar { source })
    }

    /// Appends one entry, putting names and link targets that do not fit the
    /// 100-byte header fields into GNU long-name records first.
    fn append(
        &mut self,
        mut header: Header,
        name: &[u8],
        link: Option<&[u8]>,
        data: impl Read,
    ) -> Result<(), SnapshotError> {
        let write_err = |source| SnapshotError::WriteTar { source };
        if name.len() > 100 {
            self.long_record(EntryType::GNULongName, name)?;
        }
        set_name_field(&mut header, &name[..name.len().min(100)]);
        if let Some(link) = link {
            if link.len() > 100 {
                self.long_record(EntryType::GNULongLink, link)?;
            }
            let len = link.len().min(100);
            if let Some(gnu) = header.as_gnu_mut() {
                gnu.linkname = [0; 100];
                gnu.linkname[..len].copy_from_slice(&link[..len]);
            }
        }
        header.set_cksum();
        self.builder.append(&header, data).map_err(write_err)
    }

    fn long_record(&mut self, kind: EntryType, value: &[u8]) -> Result<(), SnapshotError> {
        let mut header = Header::new_gnu();
        set_name_field(&mut header, b"././@LongLink");
        header.set_entry_type(kind);
        header.set_mode(0o644);
        let mut data = value.to_vec();
        data.push(0);
        header.set_size(data.len() as u64);
        header.set_cksum();
        self.builder.append(&header, &data[..]).map_err(|source| SnapshotError::WriteTar { source })
    }
}

fn set_name_field(header: &mut Header, name: &[u8]) {
    let field = &mut header.as_old_mut().name;
    *field = [0; 100];
    let len = name.len().min(field.len());
    field[..len].copy_from_slice(&name[..len]);
}

/// One PAX extended-header record: `"<len> <key>=<value>\n"`, where `<len>`
/// counts the whole record including its own digits.
pub(super) fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    let mut record = format!("{len} {key}=").into_bytes();
    record.extend_from_slice(value);
    record.push(b'\n');
    record
}

/// Reads exactly `left` bytes, failing if the source ends early.
struct ExactReader<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while it was being archived",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::super::test_support::TarBuilder;
    use super::super::{OPAQUE_XATTR, apply_layer, make_node, make_whiteout, set_xattr};
    use super::*;

    /// An upper dir with one of everything.
    fn sample_tree(root: &Path) {
        std::fs::create_dir_all(root.join("etc/ssl")).unwrap();
        std::fs::write(root.join("etc/hosts"), b"127.0.0.1 localhost\n").unwrap();
        std::fs::set_permissions(root.join("etc/hosts"), std::fs::Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::lchown(root.join("etc/hosts"), Some(12), Some(34)).unwrap();
        std::fs::hard_link(root.join("etc/hosts"), root.join("etc/hosts.bak")).unwrap();
        std::os::unix::fs::symlink("../usr/lib/os-release", root.join("etc/os-release")).unwrap();
        set_xattr(&root.join("etc/hosts"), "user.origin", b"kiln").unwrap();
        make_whiteout(&root.join("etc/removed")).unwrap();
        std::fs::create_dir(root.join("opt")).unwrap();
        set_xattr(&root.join("opt"), OPAQUE_XATTR, b"y").unwrap();
        std::fs::write(root.join("opt/only"), b"only me").unwrap();
        make_node(
            &root.join("etc/ssl/tty"),
            rustix::fs::FileType::CharacterDevice,
            0o620,
            rustix::fs::makedev(4, 1),
        )
        .unwrap();
        make_node(&root.join("etc/fifo"), rustix::fs::FileType::Fifo, 0o600, 0).unwrap();
        let deep = root.join("a".repeat(60)).join("b".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("c".repeat(50)), b"long").unwrap();
        std::os::unix::fs::symlink("t".repeat(150), deep.join("longlink")).unwrap();
    }

    fn entry_names(tar: &[u8]) -> Vec<(String, EntryType)> {
        let mut archive = tar::Archive::new(tar);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (String::from_utf8(e.path_bytes().into_owned()).unwrap(), e.header().entry_type())
            })
            .collect()
    }

    #[test]
    fn the_tar_carries_overlay_markers_as_oci_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        sample_tree(dir.path());
        let tar = diff_to_tar(dir.path(), Vec::new(), &DiffOptions::default()).unwrap();
        let names = entry_names(&tar);
        let find = |n: &str| names.iter().find(|(name, _)| name == n).map(|(_, k)| *k);
        assert_eq!(find("etc/"), Some(EntryType::Directory));
        assert_eq!(find("etc/.wh.removed"), Some(EntryType::Regular));
        assert_eq!(find("etc/removed"), None);
        assert_eq!(find("opt/.wh..wh..opq"), Some(EntryType::Regular));
        assert_eq!(find("etc/hosts"), Some(EntryType::Regular));
        assert_eq!(find("etc/hosts.bak"), Some(EntryType::Link), "{names:?}");
        assert_eq!(find("etc/os-release"), Some(EntryType::Symlink));
        assert_eq!(find("etc/ssl/tty"), Some(EntryType::Char));
        assert_eq!(find("etc/fifo"), Some(EntryType::Fifo));
        // Sorted, parents first.
        let plain: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
        let pos = |n: &str| plain.iter().position(|p| *p == n).unwrap();
        assert!(
            pos("etc/") < pos("etc/fifo")
                && pos("etc/fifo") < pos("etc/hosts")
                && pos("etc/hosts") < pos("opt/")
        );
    }

    #[test]
    fn apply_after_diff_gives_back_the_same_tree() {
        let dir = tempfile::tempdir().unwrap();
        let original = dir.path().join("original");
        sample_tree(&original);
        let tar = diff_to_tar(&original, Vec::new(), &DiffOptions::default()).unwrap();
        let copy = dir.path().join("copy");
        apply_layer(&tar[..], &copy).unwrap();
        assert_eq!(describe(&copy), describe(&original));
        // And the copy archives to the same bytes.
        assert_eq!(diff_to_tar(&copy, Vec::new(), &DiffOptions::default()).unwrap(), tar);
    }

    #[test]
    fn the_same_tree_gives_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        sample_tree(&a);
        sample_tree(&b);
        let options = DiffOptions { mtime: MtimePolicy::Fixed(1_700_000_000) };
        let tar_a = diff_to_tar(&a, Vec::new(), &options).unwrap();
        let tar_b = diff_to_tar(&b, Vec::new(), &options).unwrap();
        assert_eq!(tar_a, tar_b, "trees made at different times differ only in mtimes, which are fixed");
        let mut archive = tar::Archive::new(&tar_a[..]);
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            if entry.header().entry_type() != EntryType::XHeader {
                assert_eq!(entry.header().mtime().unwrap(), 1_700_000_000);
            }
        }
    }

    #[test]
    fn gnu_tar_reads_our_layers() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        sample_tree(&tree);
        let tar = diff_to_tar(&tree, Vec::new(), &DiffOptions::default()).unwrap();
        let layer = dir.path().join("layer.tar");
        std::fs::write(&layer, &tar).unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let status = std::process::Command::new("tar")
            .args(["--xattrs", "--xattrs-include=user.*", "-xpf"])
            .arg(&layer)
            .arg("-C")
            .arg(&out)
            .status()
            .unwrap();
        assert!(status.success());
        let deep = out.join("a".repeat(60)).join("b".repeat(60));
        assert_eq!(std::fs::read(deep.join("c".repeat(50))).unwrap(), b"long");
        assert_eq!(std::fs::read_link(deep.join("longlink")).unwrap(), Path::new(&"t".repeat(150)));
        assert_eq!(
            std::fs::metadata(out.join("etc/hosts")).unwrap().ino(),
            std::fs::metadata(out.join("etc/hosts.bak")).unwrap().ino()
        );
        assert_eq!(
            super::super::get_xattr(&out.join("etc/hosts"), "user.origin").unwrap().as_deref(),
            Some(&b"kiln"[..])
        );
        assert!(out.join("etc/.wh.removed").is_file() && out.join("opt/.wh..wh..opq").is_file());
    }

    #[test]
    fn clamping_only_lowers_newer_times() {
        assert_eq!(MtimePolicy::Clamp(100).apply(50), 50);
        assert_eq!(MtimePolicy::Clamp(100).apply(150), 100);
        assert_eq!(MtimePolicy::Keep.apply(-5), 0);
        assert_eq!(MtimePolicy::Fixed(7).apply(150), 7);
    }

    #[test]
    fn pax_records_count_their_own_length() {
        assert_eq!(pax_record("a", b"b"), b"6 a=b\n");
        // 99 bytes without the length field; its three digits make 102.
        let record = pax_record("k", &[b'v'; 95]);
        let text = String::from_utf8(record.clone()).unwrap();
        let len: usize = text.split(' ').next().unwrap().parse().unwrap();
        assert_eq!((len, record.len()), (102, 102));
    }

    #[test]
    fn apply_reads_what_an_independent_tar_writer_wrote() {
        // Cross-check our reader against entries written by the tar crate's own builder.
        let mut tar = TarBuilder::new();
        tar.dir("d/", 0o750, 0, 0, 9);
        tar.file("d/f", b"data", 0o644, 0, 0, 9);
        let dir = tempfile::tempdir().unwrap();
        apply_layer(&tar.finish()[..], dir.path()).unwrap();
        let out = diff_to_tar(dir.path(), Vec::new(), &DiffOptions::default()).unwrap();
        assert_eq!(
            entry_names(&out),
            vec![("d/".into(), EntryType::Directory), ("d/f".into(), EntryType::Regular)]
        );
    }

    /// Everything a user could observe about a tree, as text.
    pub(crate) fn describe(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        describe_into(root, Path::new(""), &mut out);
        out
    }

    fn describe_into(dir: &Path, rel: &Path, out: &mut Vec<String>) {
        for name in sorted_entries(dir).unwrap() {
            let path = dir.join(&name);
            let rel = rel.join(&name);
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let kind = if meta.is_dir() {
                "dir".to_string()
            } else if meta.is_symlink() {
                format!("link->{}", std::fs::read_link(&path).unwrap().display())
            } else if meta.is_file() {
                format!("file:{}", String::from_utf8_lossy(&std::fs::read(&path).unwrap()))
            } else {
                format!("node:{:o}:{}", meta.mode() & 0o170000, meta.rdev())
            };
            let xattrs = read_xattrs(&path).unwrap();
            let opaque = meta.is_dir() && is_opaque(&path).unwrap();
            let mode = if meta.is_symlink() { 0 } else { meta.mode() & 0o7777 };
            out.push(format!(
                "{} {kind} mode={mode:o} owner={}:{} mtime={} nlink={} xattrs={xattrs:?} opaque={opaque}",
                rel.display(),
                meta.uid(),
                meta.gid(),
                meta.mtime(),
                if meta.is_dir() { 0 } else { meta.nlink() },
            ));
            if meta.is_dir() {
                describe_into(&path, &rel, out);
            }
        }
    }
}
