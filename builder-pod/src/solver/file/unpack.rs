//! `ADD` of a local tar archive: with `attempt_unpack_docker_compatibility`
//! a source that is a tar (plain, gzip, bzip2, xz or zstd) is extracted into the
//! destination instead of copied (BuildKit `solver/llbsolver/file/unpack.go`,
//! extraction as moby/go-archive `Unpack` does it under `chrootarchive`).

use std::fs;
use std::io::{self, BufReader, Cursor, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, makedev, mknod};

use super::meta::{Timestamp, chmod, chown, lstat, mkdir_all, remove_all, set_times};
use super::root::{path_of, resolve, shown};
use super::user::Owner;
use super::{FileOpError, resolve_action_path};

const BLOCK: usize = 512;

/// Extracts `src` into `dest` when it is a tar archive, returning the
/// archive's path as the source root shows it; `None` when it is not one
/// (then the caller copies it as a file).
pub(super) fn unpack(
    src_root: &Path,
    src: &str,
    dest_root: &Path,
    dest: &str,
    owner: Option<Owner>,
    times: Option<Timestamp>,
) -> Result<Option<String>, FileOpError> {
    let archive = resolve_action_path(src_root, src, true)?;
    let Some(stream) = open_tar(&archive) else { return Ok(None) };
    let shown_archive = shown(src_root, &archive);

    let dir = resolve_action_path(dest_root, dest, true)?;
    mkdir_all(dest_root, &dir, 0o755, owner, times)?;

    let mut x = Extractor { dest_root, dir: &dir, owner, archive: &shown_archive, dirs: Vec::new() };
    x.extract(stream)?;
    Ok(Some(shown_archive))
}

/// A reader of the decompressed archive, when `path` is a regular file whose
/// (decompressed) start is a valid tar header (go-archive `isArchivePath`).
fn open_tar(path: &Path) -> Option<Box<dyn Read>> {
    if !fs::symlink_metadata(path).ok()?.is_file() {
        return None;
    }
    let mut reader = decompressed(fs::File::open(path).ok()?).ok()?;
    let mut first = vec![0u8; BLOCK];
    reader.read_exact(&mut first).ok()?;
    if !valid_header(&first) {
        return None;
    }
    Some(Box::new(Cursor::new(first).chain(reader)))
}

/// The stream inside `file` by its magic number (go-archive
/// `DecompressStream`); uncompressed when it has none. xz has no streaming
/// decoder here, so it is decoded into an unnamed temporary file first.
fn decompressed(mut file: fs::File) -> io::Result<Box<dyn Read>> {
    let mut magic = [0u8; 8];
    let mut n = 0;
    while n < magic.len() {
        match file.read(&mut magic[n..])? {
            0 => break,
            k => n += k,
        }
    }
    file.seek(SeekFrom::Start(0))?;
    let magic = &magic[..n];
    let input = BufReader::new(file);
    Ok(if magic.starts_with(&[0x1f, 0x8b, 0x08]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(input))
    } else if magic.starts_with(b"BZh") {
        Box::new(bzip2::bufread::MultiBzDecoder::new(input))
    } else if is_zstd(magic) {
        Box::new(zstd::stream::read::Decoder::with_buffer(input)?)
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        let mut plain = tempfile::tempfile()?;
        lzma_rs::xz_decompress(&mut { input }, &mut plain)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        plain.seek(SeekFrom::Start(0))?;
        Box::new(BufReader::new(plain))
    } else {
        Box::new(input)
    })
}

/// A zstd frame, or a skippable frame (magic 0x184D2A50 to 0x184D2A5F,
/// little-endian) that a zstd stream may start with (go-archive `zstdMatcher`).
fn is_zstd(magic: &[u8]) -> bool {
    if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return true;
    }
    magic.len() >= 8 && magic[0] & 0xf0 == 0x50 && magic[1..4] == [0x2a, 0x4d, 0x18]
}

/// A tar header block: not all zeros (the end marker), and its checksum
/// (bytes summed with the checksum field as spaces, unsigned or signed as Go
/// accepts) matches the octal one it carries.
fn valid_header(block: &[u8]) -> bool {
    if block.len() < BLOCK || block.iter().all(|b| *b == 0) {
        return false;
    }
    let field = &block[148..156];
    let digits: String = field.iter().map(|b| *b as char).filter(|c| !matches!(c, ' ' | '\0')).collect();
    let Ok(want) = i64::from_str_radix(&digits, 8) else { return false };
    let blank = |i: usize, b: u8| if (148..156).contains(&i) { b' ' } else { b };
    let unsigned: i64 = block.iter().enumerate().map(|(i, b)| i64::from(blank(i, *b))).sum();
    let signed: i64 = block.iter().enumerate().map(|(i, b)| i64::from(blank(i, *b) as i8)).sum();
    want == unsigned || want == signed
}

struct Extractor<'a> {
    dest_root: &'a Path,
    /// The extraction directory: entries resolve inside it as if chrooted.
    dir: &'a Path,
    owner: Option<Owner>,
    archive: &'a str,
    /// Directories with the times to give them once everything is in.
    dirs: Vec<(PathBuf, Timestamp, Timestamp)>,
}

/// An entry's error, named by the entry.
fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

impl Extractor<'_> {
    fn err(&self, entry: &str, source: io::Error) -> FileOpError {
        FileOpError::Unpack { archive: self.archive.to_owned(), entry: entry.to_owned(), source }
    }

    fn extract(&mut self, stream: Box<dyn Read>) -> Result<(), FileOpError> {
        let mut archive = tar::Archive::new(stream);
        let entries = archive.entries().map_err(|e| self.err("", e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| self.err("", e))?;
            let raw_name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            self.extract_entry(&mut entry, &raw_name).map_err(|e| match e {
                Failure::Io(source) => self.err(&raw_name, source),
                Failure::Op(op) => op,
            })?;
        }
        for (dir, atime, mtime) in std::mem::take(&mut self.dirs) {
            set_times(self.dest_root, &dir, atime, mtime)?;
        }
        Ok(())
    }

    fn extract_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw_name: &str,
    ) -> Result<(), Failure> {
        let header = entry.header().clone();
        let kind = header.entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        // Leading `/` stripped, then cleaned; the extraction root itself is
        // skipped and nothing may climb out of it.
        let Some(name) = local_name(raw_name.trim_start_matches('/')) else {
            return Err(Failure::Io(invalid("invalid entry name")));
        };
        if name.is_empty() {
            return Ok(());
        }
        let dst = self.resolve_parent(&name)?;

        if let Some(existing) = lstat(&dst)?
            && !(existing.is_dir() && kind.is_dir())
        {
            remove_all(&dst)?;
        }
        if let Some(parent) = dst.parent() {
            mkdir_all(self.dest_root, parent, 0o755, None, None)?;
        }

        let mode = number(header.mode().map(u64::from), &header.as_old().mode)? as u32 & 0o7777;
        let mut link_target = None;
        match kind {
            tar::EntryType::Directory => {
                if !lstat(&dst)?.is_some_and(|m| m.is_dir()) {
                    fs::create_dir(&dst)?;
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let mut f =
                    fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&dst)?;
                io::copy(entry, &mut f)?;
            }
            tar::EntryType::Block | tar::EntryType::Char | tar::EntryType::Fifo => {
                let flag = match kind {
                    tar::EntryType::Block => SFlag::S_IFBLK,
                    tar::EntryType::Char => SFlag::S_IFCHR,
                    _ => SFlag::S_IFIFO,
                };
                let dev = makedev(
                    u64::from(header.device_major()?.unwrap_or(0)),
                    u64::from(header.device_minor()?.unwrap_or(0)),
                );
                mknod(&dst, flag, Mode::from_bits_truncate(mode), dev).map_err(io::Error::from)?;
            }
            tar::EntryType::Link => {
                let target = entry.link_name_bytes().ok_or_else(|| invalid("hardlink without target"))?;
                let target = String::from_utf8_lossy(&target).into_owned();
                let Some(rel) = local_name(target.trim_start_matches('/')).filter(|r| !r.is_empty()) else {
                    return Err(Failure::Io(invalid(&format!("invalid hardlink target {target:?}"))));
                };
                let target = self.resolve_parent(&rel)?;
                fs::hard_link(&target, &dst)?;
                link_target = Some(target);
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name_bytes().ok_or_else(|| invalid("symlink without target"))?;
                std::os::unix::fs::symlink(path_of(&target), &dst)?;
            }
            other => {
                return Err(Failure::Io(invalid(&format!("unhandled tar header type {}", other.as_byte()))));
            }
        }

        let (uid, gid) = match self.owner {
            Some(o) => (o.uid, o.gid),
            None => (
                id(number(header.uid(), &header.as_old().uid)?)?,
                id(number(header.gid(), &header.as_old().gid)?)?,
            ),
        };
        chown(self.dest_root, &dst, uid, gid)?;
        self.set_xattrs(entry, &dst)?;

        let (atime, mtime) = entry_times(entry, &header)?;
        // A hardlink to a symlink must leave that symlink's target alone.
        let follows_symlink = match &link_target {
            Some(t) => lstat(t)?.is_some_and(|m| m.file_type().is_symlink()),
            None => kind.is_symlink(),
        };
        if !follows_symlink {
            chmod(self.dest_root, &dst, mode)?;
        }
        if kind.is_dir() {
            self.dirs.push((dst, atime, mtime));
        } else if !(link_target.is_some() && follows_symlink) {
            set_times(self.dest_root, &dst, atime, mtime)?;
        }
        Ok(())
    }

    /// The host path of `name` (relative, clean) in the extraction
    /// directory: its parent resolved there as in a chroot, the last
    /// component as it is.
    fn resolve_parent(&self, name: &str) -> io::Result<PathBuf> {
        let (parent, file) = match name.rfind('/') {
            Some(i) => (&name[..i], &name[i + 1..]),
            None => ("", name),
        };
        Ok(resolve(self.dir, Path::new(parent), true)?.join(file))
    }

    /// `SCHILY.xattr.*` PAX records. Like BuildKit (`BestEffortXattrs`),
    /// a file system that refuses them is not an error.
    fn set_xattrs<R: Read>(&self, entry: &mut tar::Entry<'_, R>, dst: &Path) -> Result<(), Failure> {
        let Some(records) = entry.pax_extensions()? else { return Ok(()) };
        for record in records {
            let record = record?;
            let Some(name) = record.key_bytes().strip_prefix(b"SCHILY.xattr.") else { continue };
            let name = std::ffi::OsStr::new(std::str::from_utf8(name).map_err(|_| invalid("xattr name"))?);
            if let Err(e) = xattr::set(dst, name, record.value_bytes()) {
                let refused = matches!(e.raw_os_error(), Some(nix::libc::ENOTSUP | nix::libc::EPERM));
                if !refused {
                    return Err(Failure::Io(e));
                }
                tracing::warn!(path = %dst.display(), error = %e, "extended attribute from archive not set");
            }
        }
        Ok(())
    }
}

/// What stops one entry: an I/O failure to name with the entry, or an
/// action's own error that already names its path.
enum Failure {
    Io(io::Error),
    Op(FileOpError),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<FileOpError> for Failure {
    fn from(e: FileOpError) -> Self {
        Self::Op(e)
    }
}

fn id(v: u64) -> io::Result<u32> {
    u32::try_from(v).map_err(|_| invalid("owner id out of range"))
}

/// `name` cleaned; `None` when it climbs out (`..`), empty for the root.
fn local_name(name: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// A numeric header field as Go's `archive/tar` reads it: one of only
/// spaces and NULs is 0. Clients that build a context tar by hand (bollard's
/// documented way) leave uid, gid and mtime unset.
fn number(parsed: io::Result<u64>, field: &[u8]) -> io::Result<u64> {
    if field.iter().all(|b| *b == b' ' || *b == 0) {
        return Ok(0);
    }
    parsed
}

/// Access and modification time of an entry: PAX records when present
/// (they keep fractions), else the header's; access never before
/// modification, and nothing before 1970 (go-archive `boundTime`).
fn entry_times<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    header: &tar::Header,
) -> io::Result<(Timestamp, Timestamp)> {
    let mtime = number(header.mtime(), &header.as_old().mtime)?;
    let mut mtime = Timestamp { sec: i64::try_from(mtime).unwrap_or(0), nsec: 0 };
    let mut atime = header
        .as_gnu()
        .and_then(|g| g.atime().ok())
        .map(|s| Timestamp { sec: i64::try_from(s).unwrap_or(0), nsec: 0 });
    if let Some(records) = entry.pax_extensions()? {
        for record in records {
            let record = record?;
            let parsed = record.value().ok().and_then(pax_time);
            match (record.key().ok(), parsed) {
                (Some("mtime"), Some(t)) => mtime = t,
                (Some("atime"), Some(t)) => atime = Some(t),
                _ => {}
            }
        }
    }
    let bound = |t: Timestamp| if t.sec < 0 { Timestamp { sec: 0, nsec: 0 } } else { t };
    let atime = atime.filter(|a| (a.sec, a.nsec) > (mtime.sec, mtime.nsec)).unwrap_or(mtime);
    Ok((bound(atime), bound(mtime)))
}

/// A PAX time: seconds with an optional decimal fraction.
fn pax_time(v: &str) -> Option<Timestamp> {
    let (sec, frac) = v.split_once('.').unwrap_or((v, ""));
    let sec: i64 = sec.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let nsec = if digits.is_empty() { 0 } else { format!("{digits:0<9}").parse().ok()? };
    Some(Timestamp { sec, nsec })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_times_are_read_like_go_archive() {
        assert_eq!(local_name("a/./b/"), Some("a/b".to_owned()));
        assert_eq!(local_name("a/../b"), Some("b".to_owned()));
        assert_eq!(local_name("."), Some(String::new()));
        assert_eq!(local_name("../x"), None);
        assert_eq!(local_name("a/../../x"), None);
        assert_eq!(pax_time("1700000000.5"), Some(Timestamp { sec: 1_700_000_000, nsec: 500_000_000 }));
        assert_eq!(pax_time("12"), Some(Timestamp { sec: 12, nsec: 0 }));
        assert_eq!(pax_time("x"), None);
        assert!(!valid_header(&[0u8; 512]));
        assert!(!valid_header(&[b'a'; 512]));
        let mut h = tar::Header::new_gnu();
        h.set_path("f").unwrap();
        h.set_cksum();
        assert!(valid_header(h.as_bytes()));
    }
}
