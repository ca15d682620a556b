//! Paths of an action, resolved inside the root directory they belong to, the
//! way BuildKit's `fs.RootPath` (containerd/continuity `fs/path.go`) does:
//! every symlink is followed as if the root were `/`, and `..` never climbs
//! above the root. Nothing outside the root is ever looked at.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::fsutil::patterns::contains_wildcards;
use crate::util::gopath;

/// Symlinks one lookup may pass through before it fails with ELOOP
/// (continuity's limit).
const MAX_LINKS: usize = 255;

/// The host path of `path` inside `root`. With `follow_last` false the final
/// component is kept as it is even when it is a symlink (for actions on the
/// link itself); every other symlink is followed within the root. Missing
/// components are kept literally: they are what the action will create.
pub(super) fn resolve(root: &Path, path: &Path, follow_last: bool) -> io::Result<PathBuf> {
    let mut done: Vec<OsString> = Vec::new();
    let mut todo: VecDeque<OsString> = lexical_components(path).into();
    let mut links = 0;
    while let Some(name) = todo.pop_front() {
        if name == ".." {
            done.pop();
            continue;
        }
        if !follow_last && todo.is_empty() {
            done.push(name);
            break;
        }
        let here = join(root, &done).join(&name);
        match std::fs::symlink_metadata(&here) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(io::Error::from_raw_os_error(nix::libc::ELOOP));
                }
                let target = std::fs::read_link(&here)?;
                if target.is_absolute() {
                    done.clear();
                }
                // The link's own `..` are physical: they pop what is resolved so far.
                for part in target.components().rev() {
                    match part {
                        Component::Normal(n) => todo.push_front(n.to_owned()),
                        Component::ParentDir => todo.push_front(OsString::from("..")),
                        Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
                    }
                }
            }
            Ok(_) => done.push(name),
            Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(nix::libc::ENOTDIR) => {
                done.push(name)
            }
            Err(e) => return Err(e),
        }
    }
    Ok(join(root, &done))
}

fn join(root: &Path, parts: &[OsString]) -> PathBuf {
    let mut p = root.to_path_buf();
    p.extend(parts);
    p
}

/// The normal components of `path` after a lexical clean (Go's
/// `filepath.Join("/", path)`): `..` at the top is dropped.
fn lexical_components(path: &Path) -> Vec<OsString> {
    let mut out: Vec<OsString> = Vec::new();
    for part in path.components() {
        match part {
            Component::Normal(n) => out.push(n.to_owned()),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// Go's `filepath.Split`: everything up to and including the last `/`, and the rest.
pub(super) fn split(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(i) => (&path[..=i], &path[i + 1..]),
        None => ("", path),
    }
}

/// A host path inside `root` as the action sees it: `/` plus the path below
/// the root. Errors name paths this way so no host path leaks to the client.
pub(super) fn shown(root: &Path, path: &Path) -> String {
    match path.strip_prefix(root) {
        Ok(rel) if rel.as_os_str().is_empty() => "/".to_owned(),
        Ok(rel) => format!("/{}", rel.display()),
        Err(_) => path.display().to_string(),
    }
}

/// Splits a path at its first component with a glob character: the literal
/// directory to start from and the pattern below it (fsutil `splitWildcards`).
pub(super) fn split_wildcards(path: &str) -> (String, String) {
    let cleaned = gopath::join(&["/", path]);
    let mut literal = Vec::new();
    let mut pattern = Vec::new();
    for part in cleaned.split('/').filter(|p| !p.is_empty()) {
        if pattern.is_empty() && !contains_wildcards(part) {
            literal.push(part);
        } else {
            pattern.push(part);
        }
    }
    (format!("/{}", literal.join("/")), pattern.join("/"))
}

/// The bytes of a path as a `Path` (tar entry names are bytes).
pub(super) fn path_of(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn splits_keep_the_directory_markers_a_copy_needs() {
        assert_eq!(split("/a/b"), ("/a/", "b"));
        assert_eq!(split("/a/b/"), ("/a/b/", ""));
        assert_eq!(split_wildcards("/a/b*/c"), ("/a".to_owned(), "b*/c".to_owned()));
        assert_eq!(split_wildcards("/a/b"), ("/a/b".to_owned(), String::new()));
        assert_eq!(split_wildcards("/a/b\\*"), ("/a/b\\*".to_owned(), String::new()));
    }

    #[test]
    fn symlinks_resolve_inside_the_root_and_never_escape_it() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("real/sub")).unwrap();
        symlink("/real", root.join("abs")).unwrap();
        symlink("../../../../..", root.join("real/up")).unwrap();
        symlink("/etc", root.join("hostetc")).unwrap();
        symlink("sub", root.join("real/rel")).unwrap();
        symlink("loop", root.join("loop")).unwrap();

        let r = |p: &str, follow| resolve(&root, Path::new(p), follow).unwrap();
        assert_eq!(r("/abs/sub/x", true), root.join("real/sub/x"));
        assert_eq!(r("/real/up/etc/passwd", true), root.join("etc/passwd"));
        assert_eq!(r("/hostetc/passwd", true), root.join("etc/passwd"));
        assert_eq!(r("/hostetc", false), root.join("hostetc"));
        assert_eq!(r("/real/rel", true), root.join("real/sub"));
        assert_eq!(r("/real/rel", false), root.join("real/rel"));
        assert_eq!(r("/../../etc", false), root.join("etc"));
        assert_eq!(r("/missing/a/b", true), root.join("missing/a/b"));
        let err = resolve(&root, Path::new("/loop/x"), true).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(nix::libc::ELOOP));
        assert_eq!(shown(&root, &root.join("a/b")), "/a/b");
        assert_eq!(shown(&root, &root), "/");
    }
}
