//! Walking a local tree in fsutil's order: depth-first pre-order, siblings
//! sorted byte-wise by name, which is the order of `compare_path` over full
//! paths (docs/protocol.md §4.1).

use std::cmp::Ordering;
use std::ffi::{OsStr, OsString};
use std::fs::Metadata;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::FsutilError;

/// A directory entry with its lstat metadata.
#[derive(Debug)]
pub(super) struct Listed {
    pub name: OsString,
    pub meta: Metadata,
}

/// Lists `dir` sorted by name bytes. An entry that vanishes between the
/// listing and its lstat is left out, like upstream's walk skips it.
pub(super) fn read_dir_sorted(dir: &Path) -> io::Result<Vec<Listed>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        match entry.metadata() {
            Ok(meta) => out.push(Listed { name: entry.file_name(), meta }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    out.sort_unstable_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    Ok(out)
}

/// fsutil's `ComparePath`: byte-wise, except that `/` sorts before every
/// other byte, so a directory's children come right after it.
pub(super) fn compare_path(a: &[u8], b: &[u8]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        if x != y {
            return match (*x == b'/', *y == b'/') {
                (true, _) => Ordering::Less,
                (_, true) => Ordering::Greater,
                _ => x.cmp(y),
            };
        }
    }
    a.len().cmp(&b.len())
}

/// One entry of the receiver's existing copy.
#[derive(Debug)]
pub(super) struct DestEntry {
    /// Relative path bytes; a non-UTF-8 name can never equal a wire path.
    pub rel: Vec<u8>,
    pub abs: PathBuf,
    pub meta: Metadata,
}

struct Frame {
    /// The directory's relative path followed by `/`, empty for the root.
    prefix: Vec<u8>,
    entries: std::vec::IntoIter<Listed>,
}

/// Lazily walks the receiver's existing tree alongside the incoming stats.
/// A directory is listed only when the walk steps into it, so files the
/// receiver creates in directories it has already listed are never seen.
pub(super) struct DestWalker {
    root: PathBuf,
    stack: Vec<Frame>,
    current: Option<DestEntry>,
}

impl DestWalker {
    pub(super) fn new(root: &Path) -> Result<Self, FsutilError> {
        let entries =
            read_dir_sorted(root).map_err(|source| FsutilError::ReadDir { path: root.into(), source })?;
        Ok(Self {
            root: root.to_owned(),
            stack: vec![Frame { prefix: Vec::new(), entries: entries.into_iter() }],
            current: None,
        })
    }

    pub(super) fn peek(&mut self) -> Option<&DestEntry> {
        if self.current.is_none() {
            while let Some(frame) = self.stack.last_mut() {
                if let Some(listed) = frame.entries.next() {
                    let mut rel = frame.prefix.clone();
                    rel.extend_from_slice(listed.name.as_bytes());
                    let abs = self.root.join(OsStr::from_bytes(&rel));
                    self.current = Some(DestEntry { rel, abs, meta: listed.meta });
                    break;
                }
                self.stack.pop();
            }
        }
        self.current.as_ref()
    }

    /// Moves past the current entry; with `descend`, into it if it is a
    /// directory.
    pub(super) fn advance(&mut self, descend: bool) -> Result<(), FsutilError> {
        let Some(entry) = self.current.take() else { return Ok(()) };
        if descend && entry.meta.is_dir() {
            let entries = read_dir_sorted(&entry.abs)
                .map_err(|source| FsutilError::ReadDir { path: entry.abs, source })?;
            let mut prefix = entry.rel;
            prefix.push(b'/');
            self.stack.push(Frame { prefix, entries: entries.into_iter() });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slash_sorts_before_every_other_byte() {
        let mut paths = vec!["a.txt", "b", "a/x", "a", "a/x/y", "a-b", "a/x.z"];
        paths.sort_by(|a, b| compare_path(a.as_bytes(), b.as_bytes()));
        assert_eq!(paths, ["a", "a/x", "a/x/y", "a/x.z", "a-b", "a.txt", "b"]);
    }

    #[test]
    fn the_dest_walk_is_pre_order_and_can_skip_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["a/x", "a.d/y", "b"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("a/x/f"), b"").unwrap();
        std::fs::write(dir.path().join("a.d/y/g"), b"").unwrap();

        let mut walker = DestWalker::new(dir.path()).unwrap();
        let mut seen = Vec::new();
        while let Some(entry) = walker.peek() {
            let rel = String::from_utf8(entry.rel.clone()).unwrap();
            let descend = rel != "a.d";
            seen.push(rel);
            walker.advance(descend).unwrap();
        }
        assert_eq!(seen, ["a", "a/x", "a/x/f", "a.d", "b"]);
    }
}
