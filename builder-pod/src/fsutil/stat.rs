//! `fsutil.types.Stat` ⇄ the local filesystem. `Stat.mode` carries Go
//! `os.FileMode` bits, not a Unix `st_mode` (docs/protocol.md §4.1).

use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use kiln_proto::buildkit::fsutil::types::Stat;

use super::FsutilError;

/// Go `os.FileMode` flag bits (`io/fs/fs.go`).
pub(crate) mod go_mode {
    pub(crate) const DIR: u32 = 1 << 31;
    pub(crate) const SYMLINK: u32 = 1 << 27;
    pub(crate) const DEVICE: u32 = 1 << 26;
    pub(crate) const NAMED_PIPE: u32 = 1 << 25;
    pub(crate) const SOCKET: u32 = 1 << 24;
    pub(crate) const SETUID: u32 = 1 << 23;
    pub(crate) const SETGID: u32 = 1 << 22;
    pub(crate) const CHAR_DEVICE: u32 = 1 << 21;
    pub(crate) const STICKY: u32 = 1 << 20;
    pub(crate) const IRREGULAR: u32 = 1 << 19;
    /// Every bit that makes an entry something other than a regular file.
    pub(crate) const TYPE: u32 = DIR | SYMLINK | NAMED_PIPE | SOCKET | DEVICE | CHAR_DEVICE | IRREGULAR;
    pub(crate) const PERM: u32 = 0o777;
}

/// Unix permission-and-special bits (`S_ISUID` …).
const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;
const S_ISVTX: u32 = 0o1000;

/// What an entry is, decoded from its Go mode bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryKind {
    Regular,
    Dir,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
}

/// Whether the receiver may ask for this entry's content: only entries
/// with no type bits (fsutil `fileCanRequestData`, which must agree on both
/// sides).
pub(crate) fn can_request_data(mode: u32) -> bool {
    mode & go_mode::TYPE == 0
}

/// The entry kind a Go mode denotes; sockets and "irregular" entries are
/// never sent by a conforming sender and are rejected.
pub(crate) fn kind_of(mode: u32) -> Option<EntryKind> {
    let types = mode & go_mode::TYPE;
    Some(match types {
        0 => EntryKind::Regular,
        go_mode::DIR => EntryKind::Dir,
        go_mode::SYMLINK => EntryKind::Symlink,
        go_mode::NAMED_PIPE => EntryKind::Fifo,
        go_mode::DEVICE => EntryKind::BlockDevice,
        t if t == go_mode::DEVICE | go_mode::CHAR_DEVICE => EntryKind::CharDevice,
        _ => return None,
    })
}

/// Go `os.FileMode` from a Unix `st_mode` (Go's `fillFileStatFromSys`).
pub(crate) fn go_mode_from_unix(st_mode: u32) -> u32 {
    let mut mode = st_mode & go_mode::PERM;
    mode |= match st_mode & libc_fmt::S_IFMT {
        libc_fmt::S_IFBLK => go_mode::DEVICE,
        libc_fmt::S_IFCHR => go_mode::DEVICE | go_mode::CHAR_DEVICE,
        libc_fmt::S_IFDIR => go_mode::DIR,
        libc_fmt::S_IFIFO => go_mode::NAMED_PIPE,
        libc_fmt::S_IFLNK => go_mode::SYMLINK,
        libc_fmt::S_IFSOCK => go_mode::SOCKET,
        _ => 0,
    };
    if st_mode & S_ISUID != 0 {
        mode |= go_mode::SETUID;
    }
    if st_mode & S_ISGID != 0 {
        mode |= go_mode::SETGID;
    }
    if st_mode & S_ISVTX != 0 {
        mode |= go_mode::STICKY;
    }
    mode
}

/// The Unix permission bits (`0o7777`) for `chmod` from a Go mode (Go's
/// `syscallMode`).
pub(crate) fn unix_permissions(mode: u32) -> u32 {
    let mut perm = mode & go_mode::PERM;
    if mode & go_mode::SETUID != 0 {
        perm |= S_ISUID;
    }
    if mode & go_mode::SETGID != 0 {
        perm |= S_ISGID;
    }
    if mode & go_mode::STICKY != 0 {
        perm |= S_ISVTX;
    }
    perm
}

/// The `S_IFMT` values; fixed by the Linux ABI.
mod libc_fmt {
    pub(super) const S_IFMT: u32 = 0o170000;
    pub(super) const S_IFSOCK: u32 = 0o140000;
    pub(super) const S_IFLNK: u32 = 0o120000;
    pub(super) const S_IFBLK: u32 = 0o060000;
    pub(super) const S_IFDIR: u32 = 0o040000;
    pub(super) const S_IFCHR: u32 = 0o020000;
    pub(super) const S_IFIFO: u32 = 0o010000;
}

/// Unix nanoseconds of an entry's mtime, as `Stat.modTime` carries it.
pub(crate) fn mtime_ns(meta: &Metadata) -> i64 {
    meta.mtime().saturating_mul(1_000_000_000).saturating_add(meta.mtime_nsec())
}

/// Tracks inodes with more than one link so that the second and later paths
/// of a file become hardlinks to the first path seen (fsutil `setUnixOpt`).
#[derive(Debug, Default)]
pub(crate) struct InodeMap {
    first_path: HashMap<(u64, u64), String>,
}

impl InodeMap {
    /// The earlier path `meta`'s inode was seen at, or `None` after noting
    /// `rel` as that inode's first path.
    pub(crate) fn link_target(&mut self, rel: &str, meta: &Metadata) -> Option<String> {
        if meta.is_dir() || meta.file_type().is_symlink() || meta.nlink() < 2 {
            return None;
        }
        let key = (meta.dev(), meta.ino());
        if let Some(first) = self.first_path.get(&key) {
            return Some(first.clone());
        }
        self.first_path.insert(key, rel.to_owned());
        None
    }
}

/// How much of an entry to describe: the sender needs everything, the
/// receiver's comparison with its previous copy skips the xattrs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detail {
    Full,
    NoXattrs,
}

/// Builds the `Stat` fsutil's sender would send for the entry at `abs`
/// (lstat'ed as `meta`), recorded under the relative path `rel`.
pub(crate) fn stat_of(
    abs: &Path,
    rel: &str,
    meta: &Metadata,
    inodes: &mut InodeMap,
    detail: Detail,
) -> Result<Stat, FsutilError> {
    let file_type = meta.file_type();
    // Sockets cannot be archived; upstream drops the type bit and sends them
    // as empty regular files.
    let mode = go_mode_from_unix(meta.mode()) & !go_mode::SOCKET;
    let mut stat = Stat {
        path: rel.to_owned(),
        mode,
        uid: meta.uid(),
        gid: meta.gid(),
        size: if meta.is_dir() { 0 } else { i64::try_from(meta.size()).unwrap_or(i64::MAX) },
        mod_time: mtime_ns(meta),
        ..Stat::default()
    };
    if file_type.is_char_device() || file_type.is_block_device() {
        let dev = meta.rdev();
        stat.devmajor = i64::from(rustix::fs::major(dev));
        stat.devminor = i64::from(rustix::fs::minor(dev));
    }
    if file_type.is_symlink() {
        let target =
            std::fs::read_link(abs).map_err(|source| FsutilError::ReadLink { path: abs.into(), source })?;
        stat.linkname = target
            .into_os_string()
            .into_string()
            .map_err(|_| FsutilError::NonUtf8Path { path: abs.into() })?;
    } else if let Some(first) = inodes.link_target(rel, meta) {
        // Upstream keeps the real size on a hardlink; receivers ignore it.
        stat.linkname = first;
    }
    if detail == Detail::Full {
        stat.xattrs = read_xattrs(abs)?;
    }
    Ok(stat)
}

/// Extended attributes of `path` itself (not a symlink's target), minus
/// macOS's `com.apple.*` ones, as fsutil's `loadXattr` collects them.
pub(crate) fn read_xattrs(path: &Path) -> Result<HashMap<String, Vec<u8>>, FsutilError> {
    let mut out = HashMap::new();
    let list_error = |e: rustix::io::Errno| FsutilError::ListXattrs { path: path.into(), source: e.into() };
    // The list can grow between the size query and the read; ask again then.
    let names = loop {
        let size = match rustix::fs::llistxattr_query(path) {
            Ok(0) | Err(rustix::io::Errno::NOTSUP) => return Ok(out),
            Ok(n) => n,
            Err(e) => return Err(list_error(e)),
        };
        let mut names = vec![0u8; size];
        match rustix::fs::llistxattr(path, &mut names) {
            Ok(n) => {
                names.truncate(n);
                break names;
            }
            Err(rustix::io::Errno::RANGE) => continue,
            Err(e) => return Err(list_error(e)),
        }
    };
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(name) = std::str::from_utf8(name) else { continue };
        if name.starts_with("com.apple.") {
            continue;
        }
        // Like upstream, an attribute that vanished or can't be read is left out.
        let Ok(len) = rustix::fs::lgetxattr_query(path, name) else { continue };
        let mut value = vec![0u8; len];
        if let Ok(n) = rustix::fs::lgetxattr(path, name, &mut value) {
            value.truncate(n);
            out.insert(name.to_owned(), value);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_modes_map_to_go_file_modes_and_back() {
        let cases = [
            (0o100644, 0o644),
            (0o100755 | S_ISUID, 0o755 | go_mode::SETUID),
            (0o102755, 0o755 | go_mode::SETGID),
            (0o041777, go_mode::DIR | go_mode::STICKY | 0o777),
            (0o040755, go_mode::DIR | 0o755),
            (0o120777, go_mode::SYMLINK | 0o777),
            (0o020620, go_mode::DEVICE | go_mode::CHAR_DEVICE | 0o620),
            (0o060660, go_mode::DEVICE | 0o660),
            (0o010644, go_mode::NAMED_PIPE | 0o644),
            (0o140755, go_mode::SOCKET | 0o755),
        ];
        for (unix, go) in cases {
            assert_eq!(go_mode_from_unix(unix), go, "{unix:o}");
            assert_eq!(unix_permissions(go), unix & 0o7777, "{go:#x}");
        }
    }

    #[test]
    fn kinds_and_requestability_come_from_type_bits() {
        assert_eq!(kind_of(0o644), Some(EntryKind::Regular));
        assert_eq!(kind_of(go_mode::DIR | 0o755), Some(EntryKind::Dir));
        assert_eq!(kind_of(go_mode::SYMLINK | 0o777), Some(EntryKind::Symlink));
        assert_eq!(kind_of(go_mode::DEVICE | go_mode::CHAR_DEVICE), Some(EntryKind::CharDevice));
        assert_eq!(kind_of(go_mode::DEVICE), Some(EntryKind::BlockDevice));
        assert_eq!(kind_of(go_mode::NAMED_PIPE), Some(EntryKind::Fifo));
        assert_eq!(kind_of(go_mode::SOCKET), None);
        assert_eq!(kind_of(go_mode::DIR | go_mode::SYMLINK), None);
        assert!(can_request_data(0o755 | go_mode::SETUID | go_mode::STICKY));
        assert!(!can_request_data(go_mode::DIR | 0o755));
        assert!(!can_request_data(go_mode::IRREGULAR));
    }

    #[test]
    fn a_stat_describes_files_links_and_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"hello").unwrap();
        std::fs::hard_link(&file, dir.path().join("g")).unwrap();
        std::os::unix::fs::symlink("f", dir.path().join("l")).unwrap();
        let mut inodes = InodeMap::default();

        let meta = std::fs::symlink_metadata(&file).unwrap();
        let f = stat_of(&file, "f", &meta, &mut inodes, Detail::Full).unwrap();
        assert_eq!((f.size, f.linkname.as_str(), f.mode & go_mode::TYPE), (5, "", 0));
        assert_eq!(f.mod_time, mtime_ns(&meta));

        let g_path = dir.path().join("g");
        let g_meta = std::fs::symlink_metadata(&g_path).unwrap();
        let g = stat_of(&g_path, "g", &g_meta, &mut inodes, Detail::Full).unwrap();
        assert_eq!(g.linkname, "f");

        let l_path = dir.path().join("l");
        let l_meta = std::fs::symlink_metadata(&l_path).unwrap();
        let l = stat_of(&l_path, "l", &l_meta, &mut inodes, Detail::Full).unwrap();
        assert_eq!((l.linkname.as_str(), l.mode & go_mode::TYPE, l.size), ("f", go_mode::SYMLINK, 1));

        let d_meta = std::fs::symlink_metadata(dir.path()).unwrap();
        let d = stat_of(dir.path(), "d", &d_meta, &mut inodes, Detail::Full).unwrap();
        assert_eq!((d.size, d.mode & go_mode::TYPE), (0, go_mode::DIR));
    }
}
