//! Overlay upper dir → layer tar.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use super::{
    OPAQUE_WHITEOUT, SnapshotError, WHITEOUT_PREFIX, get_xattr, is_opaque, is_whiteout, read_xattrs,
    sorted_entries,
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
    /// The merged view of the layers the diff was made over. An entry the
    /// same as the one there (by `same_as_below`) is left out, and a
    /// directory only when nothing under it is written, as BuildKit's
    /// overlay differ does (`util/overlay/overlay_linux.go` `Changes`, with
    /// containerd's `ChangeWriter` adding the parents of what it writes).
    pub lower: Option<PathBuf>,
}

/// Writes the overlay upper dir `diff_dir` as an OCI layer tar into
/// `writer` and hands the writer back. Entries come in byte order of their
/// names, parents before children, so the same tree always gives the same
/// bytes: 0/0 character devices become `.wh.NAME`, opaque directories get a
/// `.wh..wh..opq` entry, xattrs travel as PAX `SCHILY.xattr.*` records, and
/// files sharing an inode become hardlinks to the first one written (so a
/// file whose other names were left out as unchanged is written whole).
/// Sockets cannot be stored in a tar and are left out, as containerd does.
/// Whiteouts and opaque directories are always written, and nothing under
/// an opaque directory is compared with the lower view, which it hides.
pub fn diff_to_tar<W: Write>(diff_dir: &Path, writer: W, options: &DiffOptions) -> Result<W, SnapshotError> {
    let mut walker =
        Walker { builder: tar::Builder::new(writer), options, links: HashMap::new(), unwritten: Vec::new() };
    walker.walk(diff_dir, b"", options.lower.as_deref())?;
    walker.builder.into_inner().map_err(|source| SnapshotError::WriteTar { source })
}

struct Walker<'a, W: Write> {
    builder: tar::Builder<W>,
    options: &'a DiffOptions,
    /// (dev, inode) of multiply-linked files → the name written first.
    links: HashMap<(u64, u64), Vec<u8>>,
    /// Unchanged directories on the way to the current entry, outermost
    /// first, written only once something under them is.
    unwritten: Vec<UnwrittenDir>,
}

struct UnwrittenDir {
    path: PathBuf,
    /// The name without its trailing slash.
    rel: Vec<u8>,
    header: Header,
}

impl<W: Write> Walker<'_, W> {
    /// `lower` is the directory of the lower view at `dir`, when there is
    /// one to compare with.
    fn walk(&mut self, dir: &Path, prefix: &[u8], lower: Option<&Path>) -> Result<(), SnapshotError> {
        for name in sorted_entries(dir)? {
            let path = dir.join(&name);
            let meta = std::fs::symlink_metadata(&path)
                .map_err(|source| SnapshotError::ReadTree { path: path.clone(), source })?;
            let mut rel = prefix.to_vec();
            rel.extend_from_slice(name.as_bytes());
            let file_type = meta.file_type();
            let mut header = self.header(&meta);

            if is_whiteout(&meta) {
                self.write_unwritten_dirs()?;
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
            let below = match lower {
                Some(lower) => {
                    let lower_path = lower.join(&name);
                    lower_entry(&lower_path)?.map(|lower_meta| (lower_path, lower_meta))
                }
                None => None,
            };
            let unchanged = match &below {
                Some((lower_path, lower_meta)) => same_as_below(lower_meta, &meta, lower_path, &path)?,
                None => false,
            };
            if file_type.is_dir() {
                let mut dir_name = rel.clone();
                dir_name.push(b'/');
                header.set_entry_type(EntryType::Directory);
                let opaque = is_opaque(&path)?;
                // Only a real directory below is walked along: a symlink
                // there must never be followed out of the lower view.
                let lower_dir = match &below {
                    Some((lower_path, lower_meta)) if !opaque && lower_meta.is_dir() => {
                        Some(lower_path.as_path())
                    }
                    _ => None,
                };
                if unchanged && !opaque {
                    self.unwritten.push(UnwrittenDir { path: path.clone(), rel, header });
                    let depth = self.unwritten.len();
                    self.walk(&path, &dir_name, lower_dir)?;
                    // Still there when nothing under it was written.
                    self.unwritten.truncate(depth - 1);
                    continue;
                }
                self.write_unwritten_dirs()?;
                self.append_xattrs(&path, &rel)?;
                self.append(header.clone(), &dir_name, None, io::empty())?;
                if opaque {
                    let mut marker = dir_name.clone();
                    marker.extend_from_slice(OPAQUE_WHITEOUT.as_bytes());
                    header.set_entry_type(EntryType::Regular);
                    self.append(header, &marker, None, io::empty())?;
                }
                self.walk(&path, &dir_name, lower_dir)?;
                continue;
            }
            if unchanged {
                continue;
            }
            self.write_unwritten_dirs()?;
            self.append_xattrs(&path, &rel)?;
            if file_type.is_file() {
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

    /// Writes the unchanged directories the next entry is under.
    fn write_unwritten_dirs(&mut self) -> Result<(), SnapshotError> {
        for dir in std::mem::take(&mut self.unwritten) {
            self.append_xattrs(&dir.path, &dir.rel)?;
            let mut name = dir.rel;
            name.push(b'/');
            self.append(dir.header, &name, None, io::empty())?;
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

/// What the lower view has at `path`: nothing when the path or one of its
/// parents is missing or not a directory there.
fn lower_entry(path: &Path) -> Result<Option<std::fs::Metadata>, SnapshotError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::NotADirectory => Ok(None),
        Err(source) => Err(SnapshotError::ReadTree { path: path.to_owned(), source }),
    }
}

/// The capability xattr is the one xattr the overlay differ compares.
const CAPABILITY_XATTR: &str = "security.capability";

/// Whether the upper entry is the lower one unchanged, by the rule of
/// BuildKit's overlay differ (`util/overlay/overlay_linux.go` `sameDirent`):
/// the same type and permission bits, owners, device number and
/// `security.capability`; for a directory nothing more (its mtime moves
/// whenever something under it does); otherwise the same size and mtime, and
/// when both mtimes have no nanoseconds (as after a tar was unpacked, so
/// equal seconds prove little) the same symlink target or file content.
fn same_as_below(
    lower: &std::fs::Metadata,
    upper: &std::fs::Metadata,
    lower_path: &Path,
    upper_path: &Path,
) -> Result<bool, SnapshotError> {
    if (lower.mode(), lower.uid(), lower.gid(), lower.rdev())
        != (upper.mode(), upper.uid(), upper.gid(), upper.rdev())
    {
        return Ok(false);
    }
    if get_xattr(lower_path, CAPABILITY_XATTR)? != get_xattr(upper_path, CAPABILITY_XATTR)? {
        return Ok(false);
    }
    if lower.is_dir() {
        return Ok(true);
    }
    if lower.len() != upper.len()
        || lower.mtime() != upper.mtime()
        || lower.mtime_nsec() != upper.mtime_nsec()
    {
        return Ok(false);
    }
    if lower.mtime_nsec() != 0 {
        return Ok(true);
    }
    let read_err = |path: &Path| {
        let path = path.to_owned();
        move |source| SnapshotError::ReadTree { path, source }
    };
    if lower.file_type().is_symlink() {
        let lower_target = std::fs::read_link(lower_path).map_err(read_err(lower_path))?;
        return Ok(lower_target == std::fs::read_link(upper_path).map_err(read_err(upper_path))?);
    }
    if !lower.is_file() || lower.len() == 0 {
        return Ok(true);
    }
    let lower_file = std::fs::File::open(lower_path).map_err(read_err(lower_path))?;
    let upper_file = std::fs::File::open(upper_path).map_err(read_err(upper_path))?;
    same_content(lower_file, upper_file, lower.len()).map_err(read_err(upper_path))
}

/// Compares two readers of `len` bytes each, stopping at the first difference.
fn same_content(mut a: impl Read, mut b: impl Read, len: u64) -> io::Result<bool> {
    let (mut buf_a, mut buf_b) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left).map_or(buf_a.len(), |l| l.min(buf_a.len()));
        a.read_exact(&mut buf_a[..n])?;
        b.read_exact(&mut buf_b[..n])?;
        if buf_a[..n] != buf_b[..n] {
            return Ok(false);
        }
        left -= n as u64;
    }
    Ok(true)
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
    use super::super::{apply_layer, flatten, make_node, make_whiteout, opaque_xattr, set_xattr};
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
        set_xattr(&root.join("opt"), opaque_xattr(), b"y").unwrap();
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
        let options = DiffOptions { mtime: MtimePolicy::Fixed(1_700_000_000), ..DiffOptions::default() };
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
        assert_eq!(get_xattr(&out.join("etc/hosts"), "user.origin").unwrap().as_deref(), Some(&b"kiln"[..]));
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

    /// A file with the given content, mode and mtime (seconds, nanoseconds).
    fn put(path: &Path, data: &[u8], mode: u32, mtime: (i64, u32)) {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(path, data).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        stamp(path, mtime);
    }

    fn stamp(path: &Path, (secs, nanos): (i64, u32)) {
        super::super::set_mtime(path, super::super::Timestamp { secs, nanos }).unwrap();
    }

    fn diff_over(lower: &Path, upper: &Path) -> Vec<u8> {
        let options = DiffOptions { lower: Some(lower.to_owned()), ..DiffOptions::default() };
        diff_to_tar(upper, Vec::new(), &options).unwrap()
    }

    fn names(tar: &[u8]) -> Vec<String> {
        entry_names(tar).into_iter().filter(|(_, k)| *k != EntryType::XHeader).map(|(n, _)| n).collect()
    }

    const T: (i64, u32) = (1_600_000_000, 250);
    const WHOLE: (i64, u32) = (1_600_000_000, 0);

    #[test]
    fn entries_the_same_as_below_are_left_out_and_changed_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (lower, upper) = (dir.path().join("lower"), dir.path().join("upper"));
        for root in [&lower, &upper] {
            put(&root.join("bin/same"), b"same", 0o755, T);
            // Unpacked from a tar: whole seconds, so only the content tells.
            put(&root.join("bin/same-whole"), b"whole", 0o644, WHOLE);
            std::os::unix::fs::symlink("same", root.join("bin/sh")).unwrap();
            stamp(&root.join("bin/sh"), WHOLE);
            std::os::unix::fs::symlink("same", root.join("bin/sh2")).unwrap();
            stamp(&root.join("bin/sh2"), WHOLE);
        }
        put(&lower.join("bin/content"), b"abc", 0o644, WHOLE);
        put(&upper.join("bin/content"), b"xyz", 0o644, WHOLE);
        put(&lower.join("bin/mtime"), b"m", 0o644, T);
        put(&upper.join("bin/mtime"), b"m", 0o644, (T.0, T.1 + 1));
        put(&lower.join("bin/mode"), b"m", 0o644, T);
        put(&upper.join("bin/mode"), b"m", 0o600, T);
        put(&lower.join("bin/owner"), b"o", 0o644, T);
        put(&upper.join("bin/owner"), b"o", 0o644, T);
        std::os::unix::fs::lchown(upper.join("bin/owner"), Some(1), Some(1)).unwrap();
        stamp(&upper.join("bin/owner"), T);
        put(&lower.join("bin/size"), b"s", 0o644, T);
        put(&upper.join("bin/size"), b"ss", 0o644, T);
        put(&lower.join("bin/cap"), b"c", 0o755, T);
        put(&upper.join("bin/cap"), b"c", 0o755, T);
        // A version 2 capability set (CAP_NET_BIND_SERVICE permitted).
        let cap = [0, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        set_xattr(&upper.join("bin/cap"), "security.capability", &cap).unwrap();
        std::fs::remove_file(upper.join("bin/sh2")).unwrap();
        std::os::unix::fs::symlink("sam3", upper.join("bin/sh2")).unwrap();
        stamp(&upper.join("bin/sh2"), WHOLE);
        put(&upper.join("bin/new"), b"n", 0o644, T);
        stamp(&upper.join("bin"), (T.0 + 60, 0));

        let tar = diff_over(&lower, &upper);
        assert_eq!(
            names(&tar),
            [
                "bin/",
                "bin/cap",
                "bin/content",
                "bin/mode",
                "bin/mtime",
                "bin/new",
                "bin/owner",
                "bin/sh2",
                "bin/size"
            ]
        );
        // Without a lower view everything is written, as before.
        let all = diff_to_tar(&upper, Vec::new(), &DiffOptions::default()).unwrap();
        assert!(names(&all).contains(&"bin/same".to_owned()) && names(&all).contains(&"bin/sh".to_owned()));
    }

    #[test]
    fn a_directory_is_written_only_when_it_changed_or_something_under_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let (lower, upper) = (dir.path().join("lower"), dir.path().join("upper"));
        for root in [&lower, &upper] {
            for d in ["etc", "usr/lib", "opt", "srv"] {
                std::fs::create_dir_all(root.join(d)).unwrap();
            }
            put(&root.join("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n", 0o644, T);
            put(&root.join("opt/gone"), b"g", 0o644, T);
        }
        // /etc was only passed through: its mtime moved, nothing in it changed.
        stamp(&upper.join("etc"), (T.0 + 60, 0));
        put(&upper.join("usr/lib/libnew.so"), b"new", 0o755, T);
        std::fs::remove_file(upper.join("opt/gone")).unwrap();
        make_whiteout(&upper.join("opt/gone")).unwrap();
        std::fs::set_permissions(upper.join("srv"), std::fs::Permissions::from_mode(0o700)).unwrap();

        let tar = diff_over(&lower, &upper);
        assert_eq!(names(&tar), ["opt/", "opt/.wh.gone", "srv/", "usr/", "usr/lib/", "usr/lib/libnew.so"]);
        // The parents carry the upper directory's own metadata.
        let mut archive = tar::Archive::new(&tar[..]);
        let usr =
            archive.entries().unwrap().map(|e| e.unwrap()).find(|e| &*e.path_bytes() == b"usr/").unwrap();
        let upper_usr = std::fs::metadata(upper.join("usr")).unwrap();
        assert_eq!(usr.header().mtime().unwrap(), u64::try_from(upper_usr.mtime()).unwrap());
    }

    #[test]
    fn an_opaque_directory_is_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (lower, upper) = (dir.path().join("lower"), dir.path().join("upper"));
        for root in [&lower, &upper] {
            put(&root.join("data/keep"), b"k", 0o644, T);
        }
        put(&lower.join("data/old"), b"o", 0o644, T);
        set_xattr(&upper.join("data"), opaque_xattr(), b"y").unwrap();
        let tar = diff_over(&lower, &upper);
        assert_eq!(names(&tar), ["data/", "data/.wh..wh..opq", "data/keep"]);
    }

    #[test]
    fn a_hardlink_whose_other_name_is_unchanged_becomes_a_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let (lower, upper) = (dir.path().join("lower"), dir.path().join("upper"));
        put(&lower.join("bin/busybox"), b"#!busybox", 0o755, T);
        put(&upper.join("bin/busybox"), b"#!busybox", 0o755, T);
        std::fs::hard_link(upper.join("bin/busybox"), upper.join("bin/busybox-hardlink")).unwrap();
        // Both names new: the second stays a link to the first.
        put(&upper.join("bin/a"), b"pair", 0o755, T);
        std::fs::hard_link(upper.join("bin/a"), upper.join("bin/b")).unwrap();

        let tar = diff_over(&lower, &upper);
        let mut archive = tar::Archive::new(&tar[..]);
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            let name = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
            seen.push((name, entry.header().entry_type(), String::from_utf8(data).unwrap()));
        }
        let seen: Vec<(&str, EntryType, &str)> =
            seen.iter().map(|(n, k, d)| (n.as_str(), *k, d.as_str())).collect();
        assert_eq!(
            seen,
            [
                ("bin/", EntryType::Directory, ""),
                ("bin/a", EntryType::Regular, "pair"),
                ("bin/b", EntryType::Link, ""),
                ("bin/busybox-hardlink", EntryType::Regular, "#!busybox"),
            ]
        );
    }

    #[test]
    fn a_symlinked_directory_below_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let (lower, upper, outside) =
            (dir.path().join("lower"), dir.path().join("upper"), dir.path().join("out"));
        put(&outside.join("f"), b"x", 0o644, T);
        std::fs::create_dir_all(&lower).unwrap();
        std::os::unix::fs::symlink(&outside, lower.join("d")).unwrap();
        // The same file as outside/f, reached through the lower symlink, would be dropped.
        put(&upper.join("d/f"), b"x", 0o644, T);
        assert_eq!(names(&diff_over(&lower, &upper)), ["d/", "d/f"]);
    }

    /// An overlay mount of `lower` with `upper` over it, unmounted on drop.
    struct Overlay(PathBuf);

    impl Overlay {
        fn mount(lower: &Path, upper: &Path, work: &Path, target: &Path) -> Self {
            for d in [upper, work, target] {
                std::fs::create_dir_all(d).unwrap();
            }
            let options = format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.display(),
                upper.display(),
                work.display()
            );
            nix::mount::mount(
                Some("overlay"),
                target,
                Some("overlay"),
                nix::mount::MsFlags::empty(),
                Some(options.as_str()),
            )
            .unwrap();
            Self(target.to_owned())
        }
    }

    impl Drop for Overlay {
        fn drop(&mut self) {
            nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH).unwrap();
        }
    }

    /// Paths, types, contents, modes and owners: what the corpus compares.
    fn contents(root: &Path) -> Vec<String> {
        describe(root).into_iter().map(|line| line.split(" mtime=").next().unwrap().to_owned()).collect()
    }

    #[test]
    fn real_copy_ups_give_the_layers_buildkit_makes() {
        let dir = tempfile::tempdir().unwrap();
        let lower = dir.path().join("lower");
        put(&lower.join("bin/busybox"), b"#!busybox", 0o755, WHOLE);
        std::fs::hard_link(lower.join("bin/busybox"), lower.join("bin/ls")).unwrap();
        put(&lower.join("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n", 0o644, WHOLE);
        put(&lower.join("usr/bin/env"), b"#!env", 0o755, WHOLE);

        // RUN ln /bin/busybox /bin/busybox-hardlink
        let ln = dir.path().join("ln");
        {
            let root = Overlay::mount(&lower, &ln.join("upper"), &ln.join("work"), &ln.join("root"));
            std::fs::hard_link(root.0.join("bin/busybox"), root.0.join("bin/busybox-hardlink")).unwrap();
        }
        let upper = ln.join("upper");
        assert!(upper.join("bin/busybox").is_file(), "the kernel copied the link target up");
        let tar = diff_over(&lower, &upper);
        assert_eq!(names(&tar), ["bin/", "bin/busybox-hardlink"]);
        // The image's view (lower + this layer) has what the step's merged view has.
        let applied = dir.path().join("applied");
        apply_layer(&tar[..], &applied).unwrap();
        let (image, merged) = (dir.path().join("image"), dir.path().join("merged"));
        flatten(&[&lower, &applied], &image).unwrap();
        flatten(&[&lower, &upper], &merged).unwrap();
        assert_eq!(contents(&image), contents(&merged));

        // RUN chown -R root:root /bin /etc /usr, owners unchanged: an empty layer.
        let chown = dir.path().join("chown");
        {
            let root = Overlay::mount(&lower, &chown.join("upper"), &chown.join("work"), &chown.join("root"));
            for p in ["bin", "bin/busybox", "bin/ls", "etc", "etc/passwd", "usr", "usr/bin", "usr/bin/env"] {
                std::os::unix::fs::lchown(root.0.join(p), Some(0), Some(0)).unwrap();
            }
        }
        assert!(chown.join("upper/usr/bin/env").is_file(), "chown copies files up");
        assert_eq!(names(&diff_over(&lower, &chown.join("upper"))), Vec::<String>::new());
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
