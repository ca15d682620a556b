//! Owners of what an action writes: a `ChownOpt` resolved to numeric ids,
//! names looked up in a root's /etc/passwd and /etc/group (BuildKit
//! `solver/llbsolver/ops/user_linux.go` `readUser`).

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use kiln_proto::buildkit::pb::{ChownOpt, UserOpt, user_opt};

use super::FileOpError;
use super::root::{resolve, shown};

/// BuildKit refuses passwd and group files larger than this.
const MAX_USER_FILE: u64 = 10 << 20;

/// Numeric owner for the entries an action writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// Where user and group names of a `ChownOpt` are looked up: the root
/// directories whose /etc/passwd and /etc/group are read. BuildKit reads them
/// from the input a `NamedUserOpt` points at, for Dockerfiles the
/// destination. Without a root, a name is an error; ids always work.
#[derive(Debug, Clone, Default)]
pub(crate) struct UserLookup {
    users: Option<PathBuf>,
    groups: Option<PathBuf>,
}

impl UserLookup {
    /// Names looked up in `root` for users and groups alike.
    #[cfg(test)]
    pub(crate) fn in_root(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        Self { users: Some(root.clone()), groups: Some(root) }
    }

    /// Separate roots for user and group names, as `NamedUserOpt.input` may
    /// name different inputs.
    pub(crate) fn with_roots(users: Option<PathBuf>, groups: Option<PathBuf>) -> Self {
        Self { users, groups }
    }

    /// The numeric owner `owner` asks for; `None` when it asks for nothing,
    /// so copies keep their source's ids and new entries stay root's.
    ///
    /// As in BuildKit: a user given by id gets that id as group too; a user
    /// name takes uid and primary gid from /etc/passwd; a group, by id or
    /// name from /etc/group, then overrides the gid. A name that is not in
    /// the file (or no file at all) resolves to 0, as BuildKit's does.
    pub(crate) fn resolve(&self, owner: Option<&ChownOpt>) -> Result<Option<Owner>, FileOpError> {
        let Some(owner) = owner else { return Ok(None) };
        let mut out = Owner { uid: 0, gid: 0 };
        match owner.user.as_ref().and_then(|u: &UserOpt| u.user.as_ref()) {
            Some(user_opt::User::ById(id)) => out = Owner { uid: *id, gid: *id },
            Some(user_opt::User::ByName(named)) => {
                let root = self.users.as_deref().ok_or(FileOpError::MissingUserRoot { what: "user" })?;
                if let Some(entry) = find_entry(root, "/etc/passwd", &named.name)? {
                    out = Owner { uid: id_field(&entry, 2), gid: id_field(&entry, 3) };
                }
            }
            None => {}
        }
        match owner.group.as_ref().and_then(|g: &UserOpt| g.user.as_ref()) {
            Some(user_opt::User::ById(id)) => out.gid = *id,
            Some(user_opt::User::ByName(named)) => {
                let root = self.groups.as_deref().ok_or(FileOpError::MissingUserRoot { what: "group" })?;
                if let Some(entry) = find_entry(root, "/etc/group", &named.name)? {
                    out.gid = id_field(&entry, 2);
                }
            }
            None => {}
        }
        Ok(Some(out))
    }
}

/// Field `i` of a colon-separated entry as an id; unparsable is 0 (Go `Atoi`
/// with its error ignored, as moby/sys/user does).
fn id_field(entry: &[String], i: usize) -> u32 {
    entry.get(i).and_then(|f| f.parse().ok()).unwrap_or(0)
}

/// The first line of `file` (inside `root`) whose first field is `name`,
/// split at `:`. A missing file finds nothing.
fn find_entry(root: &Path, file: &str, name: &str) -> Result<Option<Vec<String>>, FileOpError> {
    let read_err = |path: &Path, source| FileOpError::ReadUserFile { path: shown(root, path), source };
    let path = resolve(root, Path::new(file), true).map_err(|e| read_err(Path::new(file), e))?;
    let f = match fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(nix::libc::ENOTDIR) => {
            return Ok(None);
        }
        Err(e) => return Err(read_err(&path, e)),
    };
    let meta = f.metadata().map_err(|e| read_err(&path, e))?;
    if !meta.is_file() {
        return Err(FileOpError::UserFileNotRegular { path: shown(root, &path) });
    }
    let mut data = Vec::new();
    f.take(MAX_USER_FILE + 1).read_to_end(&mut data).map_err(|e| read_err(&path, e))?;
    if data.len() as u64 > MAX_USER_FILE {
        return Err(FileOpError::UserFileTooLarge { path: shown(root, &path), limit: MAX_USER_FILE });
    }
    let text = String::from_utf8_lossy(&data);
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| l.split(':').map(str::to_owned).collect::<Vec<_>>())
        .find(|fields| fields.first().is_some_and(|n| n == name)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_proto::buildkit::pb::NamedUserOpt;

    fn by_name(name: &str) -> Option<UserOpt> {
        Some(UserOpt { user: Some(user_opt::User::ByName(NamedUserOpt { name: name.into(), input: 0 })) })
    }

    fn by_id(id: u32) -> Option<UserOpt> {
        Some(UserOpt { user: Some(user_opt::User::ById(id)) })
    }

    fn root_with_users() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("etc")).unwrap();
        fs::write(
            tmp.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\n\n  app:x:1000:1001::/home/app:/bin/sh  \nodd:x:abc:7::/:/bin/sh\n",
        )
        .unwrap();
        fs::write(tmp.path().join("etc/group"), "root:x:0:\nstaff:x:50:app\n").unwrap();
        tmp
    }

    #[test]
    fn owners_resolve_by_id_and_by_name_from_the_root() {
        let tmp = root_with_users();
        let users = UserLookup::in_root(tmp.path());
        let cases: &[(Option<UserOpt>, Option<UserOpt>, Owner)] = &[
            (by_id(42), None, Owner { uid: 42, gid: 42 }),
            (by_id(42), by_id(7), Owner { uid: 42, gid: 7 }),
            (by_name("app"), None, Owner { uid: 1000, gid: 1001 }),
            (by_name("app"), by_name("staff"), Owner { uid: 1000, gid: 50 }),
            (by_name("app"), by_id(3), Owner { uid: 1000, gid: 3 }),
            (None, by_name("staff"), Owner { uid: 0, gid: 50 }),
            (by_name("odd"), None, Owner { uid: 0, gid: 7 }),
            // Unknown names fall back to root, as BuildKit's readUser does.
            (by_name("nobody-here"), None, Owner { uid: 0, gid: 0 }),
            (by_name("app"), by_name("nogroup"), Owner { uid: 1000, gid: 1001 }),
        ];
        for (user, group, want) in cases {
            let opt = ChownOpt { user: user.clone(), group: group.clone() };
            assert_eq!(users.resolve(Some(&opt)).unwrap(), Some(*want), "{opt:?}");
        }
        assert_eq!(users.resolve(None).unwrap(), None);
    }

    #[test]
    fn users_and_groups_may_come_from_different_roots() {
        let users = root_with_users();
        let groups = tempfile::tempdir().unwrap();
        fs::create_dir(groups.path().join("etc")).unwrap();
        fs::write(groups.path().join("etc/group"), "staff:x:77:\n").unwrap();
        let lookup = UserLookup::with_roots(Some(users.path().into()), Some(groups.path().into()));
        let opt = ChownOpt { user: by_name("app"), group: by_name("staff") };
        assert_eq!(lookup.resolve(Some(&opt)).unwrap(), Some(Owner { uid: 1000, gid: 77 }));
        let no_groups = UserLookup::with_roots(Some(users.path().into()), None);
        assert_eq!(no_groups.resolve(Some(&opt)).unwrap_err().to_string(), "invalid missing group mount");
    }

    #[test]
    fn names_need_a_root_and_a_sane_passwd_file() {
        let opt = ChownOpt { user: by_name("app"), group: None };
        let err = UserLookup::default().resolve(Some(&opt)).unwrap_err();
        assert_eq!(err.to_string(), "invalid missing user mount");
        let ids = ChownOpt { user: by_id(5), group: None };
        assert_eq!(UserLookup::default().resolve(Some(&ids)).unwrap(), Some(Owner { uid: 5, gid: 5 }));

        // No /etc/passwd at all: the name is simply not found.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            UserLookup::in_root(empty.path()).resolve(Some(&opt)).unwrap(),
            Some(Owner { uid: 0, gid: 0 })
        );

        // A passwd that is a directory is refused.
        fs::create_dir_all(empty.path().join("etc/passwd")).unwrap();
        let err = UserLookup::in_root(empty.path()).resolve(Some(&opt)).unwrap_err();
        assert_eq!(err.to_string(), "/etc/passwd is not a regular file");

        // /etc as a symlink to the host's /etc still reads the root's own file.
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("real")).unwrap();
        fs::write(tmp.path().join("real/passwd"), "app:x:9:9::/:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("/real", tmp.path().join("etc")).unwrap();
        assert_eq!(
            UserLookup::in_root(tmp.path()).resolve(Some(&opt)).unwrap(),
            Some(Owner { uid: 9, gid: 9 })
        );
    }
}
