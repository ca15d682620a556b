//! Resolving container paths on the host, the way `continuity/fs.RootPath`
//! does for BuildKit: symlinks are followed as if the rootfs were `/`, and
//! `..` never climbs out of it, so a hostile image cannot make kilnd touch
//! host files through `/etc/passwd -> /host/file` or `WORKDIR ../../x`.

use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Linux gives up after 40 links (ELOOP); so do we.
const MAX_LINKS: usize = 40;

/// The host path of `path` (absolute or not, taken from `/`) inside `root`.
/// Components that do not exist are appended as written.
pub(crate) fn resolve(root: &Path, path: &str) -> io::Result<PathBuf> {
    let mut resolved: Vec<OsString> = Vec::new();
    let mut pending: Vec<OsString> = Vec::new();
    push_components(&mut pending, Path::new(path));
    let mut links = 0;
    let mut missing = false;

    // `pending` is a stack: the next component is at the end.
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        resolved.push(part);
        if missing {
            continue;
        }
        let host = join(root, &resolved);
        match std::fs::symlink_metadata(&host) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(io::Error::other(format!(
                        "too many levels of symbolic links resolving {path}"
                    )));
                }
                let target = std::fs::read_link(&host)?;
                resolved.pop();
                if target.is_absolute() {
                    resolved.clear();
                }
                push_components(&mut pending, &target);
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::NotADirectory => {
                missing = true;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(join(root, &resolved))
}

/// Pushes the components of `path` so that the first one is popped first.
fn push_components(stack: &mut Vec<OsString>, path: &Path) {
    let parts: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    stack.extend(parts.into_iter().rev());
}

fn join(root: &Path, parts: &[OsString]) -> PathBuf {
    let mut path = root.to_path_buf();
    path.extend(parts);
    path
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn plain_paths_join_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        assert_eq!(resolve(r, "/etc/passwd").unwrap(), r.join("etc/passwd"));
        assert_eq!(resolve(r, "etc/./passwd").unwrap(), r.join("etc/passwd"));
        assert_eq!(resolve(r, "/").unwrap(), r.to_path_buf());
        assert_eq!(resolve(r, "").unwrap(), r.to_path_buf());
    }

    #[test]
    fn dot_dot_stops_at_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        assert_eq!(resolve(r, "/../../etc/shadow").unwrap(), r.join("etc/shadow"));
        assert_eq!(resolve(r, "/a/b/../../../c").unwrap(), r.join("c"));
    }

    #[test]
    fn absolute_symlinks_stay_inside() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("usr/app")).unwrap();
        symlink("/usr/app", r.join("app")).unwrap();
        symlink("/etc/hostname", r.join("escape")).unwrap();
        assert_eq!(resolve(r, "/app/src").unwrap(), r.join("usr/app/src"));
        assert_eq!(resolve(r, "/escape").unwrap(), r.join("etc/hostname"));
    }

    #[test]
    fn relative_symlinks_cannot_climb_out() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        symlink("../../../../../etc/shadow", r.join("etc/passwd")).unwrap();
        assert_eq!(resolve(r, "/etc/passwd").unwrap(), r.join("etc/shadow"));
    }

    #[test]
    fn symlink_loops_are_an_error_not_a_hang() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        symlink("/b", r.join("a")).unwrap();
        symlink("/a", r.join("b")).unwrap();
        let err = resolve(r, "/a/x").unwrap_err();
        assert!(err.to_string().contains("too many levels of symbolic links"), "{err}");
    }

    #[test]
    fn a_file_in_the_middle_ends_resolution() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::write(r.join("file"), "x").unwrap();
        assert_eq!(resolve(r, "/file/below").unwrap(), r.join("file/below"));
    }
}
