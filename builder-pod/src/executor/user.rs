//! Turning a Dockerfile `USER` into uid, gid and supplementary groups by
//! reading the rootfs's own `/etc/passwd` and `/etc/group`, with the rules
//! of `executor/oci/user.go` upstream (which uses `moby/sys/user`).

use std::io::{self, Read};
use std::path::Path;

use super::rootpath;

/// `moby/sys/user` reads at most this much of each file.
const MAX_FILE_BYTES: u64 = 10 << 20;
/// Ids are kept in the range every libc accepts.
const MAX_ID: i64 = i32::MAX as i64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UserError {
    #[error("unable to find user {0}: no matching entries in passwd file")]
    NoSuchUser(String),
    #[error("unable to find group {0}: no matching entries in group file")]
    NoSuchGroup(String),
    #[error("uids and gids must be in range 0-{MAX_ID}")]
    OutOfRange,
    #[error("{path} exceeds {MAX_FILE_BYTES} bytes")]
    FileTooLarge { path: String },
    #[error("reading {path}: {message}")]
    Read { path: String, message: String },
}

/// The identity the process runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    /// Always starts with `gid` (containerd's `ensureAdditionalGids`).
    pub additional_gids: Vec<u32>,
}

impl ExecUser {
    fn new(uid: u32, gid: u32, mut supplementary: Vec<u32>) -> Self {
        if !supplementary.contains(&gid) {
            supplementary.insert(0, gid);
        }
        Self { uid, gid, additional_gids: supplementary }
    }
}

/// Resolves `spec` (`""`, `name`, `uid`, `uid:gid`, `name:group`, ...)
/// against the user database inside `rootfs`.
pub(crate) fn resolve(rootfs: &Path, spec: &str) -> Result<ExecUser, UserError> {
    let (spec, is_default) = if spec.is_empty() { ("0", true) } else { (spec, false) };
    // Both ids given: no lookup at all, and no supplementary groups.
    if let Some((uid, gid)) = numeric_pair(spec) {
        return Ok(ExecUser::new(uid, gid, Vec::new()));
    }
    let passwd = read_db(rootfs, "/etc/passwd")?;
    let group = read_db(rootfs, "/etc/group")?;
    match lookup(spec, passwd.as_deref(), group.as_deref()) {
        Ok(user) => Ok(user),
        // An image without a passwd entry for root still runs as root.
        Err(_) if is_default => Ok(ExecUser::new(0, 0, Vec::new())),
        Err(e) => Err(e),
    }
}

/// `uid:gid` where both parts are numbers (or `root`).
fn numeric_pair(spec: &str) -> Option<(u32, u32)> {
    let (user, group) = spec.split_once(':')?;
    let id = |s: &str| if s == "root" { Some(0) } else { s.parse::<u32>().ok() };
    Some((id(user)?, id(group)?))
}

/// The file's text, `None` when the image has no such regular file.
fn read_db(rootfs: &Path, path: &str) -> Result<Option<String>, UserError> {
    let read_err = |e: io::Error| UserError::Read { path: path.into(), message: e.to_string() };
    let host = rootpath::resolve(rootfs, path).map_err(read_err)?;
    let file = match std::fs::File::open(&host) {
        Ok(file) => file,
        Err(_) => return Ok(None),
    };
    match file.metadata() {
        Ok(meta) if meta.is_file() => {}
        _ => return Ok(None),
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(read_err)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(UserError::FileTooLarge { path: path.into() });
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: i64,
    gid: i64,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: i64,
    members: Vec<&'a str>,
}

/// Lines of a colon-separated database, trimmed, blanks skipped.
fn records(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).map(|l| l.split(':').collect())
}

/// A malformed number reads as 0, as in `moby/sys/user`.
fn field_id(fields: &[&str], i: usize) -> i64 {
    fields.get(i).and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn passwd_entries(text: &str) -> Vec<PasswdEntry<'_>> {
    records(text)
        .map(|f| PasswdEntry {
            name: f.first().copied().unwrap_or(""),
            uid: field_id(&f, 2),
            gid: field_id(&f, 3),
        })
        .collect()
}

fn group_entries(text: &str) -> Vec<GroupEntry<'_>> {
    records(text)
        .map(|f| GroupEntry {
            name: f.first().copied().unwrap_or(""),
            gid: field_id(&f, 2),
            members: f.get(3).map(|m| m.split(',').filter(|s| !s.is_empty()).collect()).unwrap_or_default(),
        })
        .collect()
}

fn in_range(id: i64) -> Result<u32, UserError> {
    if (0..=MAX_ID).contains(&id) {
        u32::try_from(id).map_err(|_| UserError::OutOfRange)
    } else {
        Err(UserError::OutOfRange)
    }
}

/// `GetExecUser` of `moby/sys/user`: a numeric user is a uid even without a
/// passwd entry; supplementary groups come only from a matched user name and
/// only when no group was given explicitly.
fn lookup(spec: &str, passwd: Option<&str>, group: Option<&str>) -> Result<ExecUser, UserError> {
    let mut parts = spec.split(':');
    let user_arg = parts.next().unwrap_or("");
    let group_arg = parts.next().unwrap_or("");
    let user_num = user_arg.parse::<i64>().ok();
    let group_num = group_arg.parse::<i64>().ok();

    let (mut uid, mut gid) = (0i64, 0i64);
    let mut matched_name: Option<&str> = None;
    let users = passwd.map(passwd_entries).unwrap_or_default();
    let found = users.iter().find(|u| match user_num {
        _ if user_arg.is_empty() => u.uid == 0,
        Some(n) => u.uid == n,
        None => u.name == user_arg,
    });
    if let Some(u) = found {
        matched_name = Some(u.name);
        uid = u.uid;
        gid = u.gid;
    } else if !user_arg.is_empty() {
        uid = user_num.ok_or_else(|| UserError::NoSuchUser(user_arg.into()))?;
        in_range(uid)?;
    }

    let mut supplementary = Vec::new();
    if !group_arg.is_empty() || matched_name.is_some() {
        let groups = group.map(group_entries).unwrap_or_default();
        if !group_arg.is_empty() {
            let found = groups.iter().find(|g| match group_num {
                Some(n) => g.gid == n,
                None => g.name == group_arg,
            });
            gid = match (found, group_num) {
                (Some(g), _) => g.gid,
                (None, Some(n)) => n,
                (None, None) => return Err(UserError::NoSuchGroup(group_arg.into())),
            };
            in_range(gid)?;
        } else if let Some(name) = matched_name {
            for g in groups.iter().filter(|g| g.members.contains(&name)) {
                supplementary.push(in_range(g.gid)?);
            }
        }
    }
    Ok(ExecUser::new(in_range(uid)?, in_range(gid)?, supplementary))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          kiln:x:1000:1000:Kiln:/home/kiln:/bin/sh\n\
                          \n\
                          svc:x:2000:2000::/:/bin/false\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:root,kiln\nstaff:x:50:\nkiln:x:1000:\nextra:x:60:svc\n";

    fn user(uid: u32, gid: u32, additional: &[u32]) -> ExecUser {
        ExecUser { uid, gid, additional_gids: additional.to_vec() }
    }

    fn rootfs(passwd: Option<&str>, group: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        if let Some(p) = passwd {
            std::fs::write(dir.path().join("etc/passwd"), p).unwrap();
        }
        if let Some(g) = group {
            std::fs::write(dir.path().join("etc/group"), g).unwrap();
        }
        dir
    }

    #[test]
    fn a_name_gets_its_groups() {
        let r = rootfs(Some(PASSWD), Some(GROUP));
        assert_eq!(resolve(r.path(), "kiln").unwrap(), user(1000, 1000, &[1000, 10]));
        assert_eq!(resolve(r.path(), "").unwrap(), user(0, 0, &[0, 10]));
        assert_eq!(resolve(r.path(), "svc").unwrap(), user(2000, 2000, &[2000, 60]));
    }

    #[test]
    fn a_uid_is_looked_up_but_need_not_exist() {
        let r = rootfs(Some(PASSWD), Some(GROUP));
        assert_eq!(resolve(r.path(), "1000").unwrap(), user(1000, 1000, &[1000, 10]));
        assert_eq!(resolve(r.path(), "4242").unwrap(), user(4242, 0, &[0]));
    }

    #[test]
    fn an_explicit_group_drops_supplementary_groups() {
        let r = rootfs(Some(PASSWD), Some(GROUP));
        assert_eq!(resolve(r.path(), "kiln:staff").unwrap(), user(1000, 50, &[50]));
        assert_eq!(resolve(r.path(), "kiln:77").unwrap(), user(1000, 77, &[77]));
        assert_eq!(resolve(r.path(), "1000:50").unwrap(), user(1000, 50, &[50]));
        assert_eq!(resolve(r.path(), "root:root").unwrap(), user(0, 0, &[0]));
    }

    #[test]
    fn unknown_names_are_errors() {
        let r = rootfs(Some(PASSWD), Some(GROUP));
        assert_eq!(
            resolve(r.path(), "nobody").unwrap_err().to_string(),
            "unable to find user nobody: no matching entries in passwd file"
        );
        assert_eq!(
            resolve(r.path(), "kiln:nogroup").unwrap_err().to_string(),
            "unable to find group nogroup: no matching entries in group file"
        );
        assert_eq!(resolve(r.path(), "-1").unwrap_err(), UserError::OutOfRange);
    }

    #[test]
    fn an_image_without_user_files_still_runs_as_root_or_a_uid() {
        let r = rootfs(None, None);
        assert_eq!(resolve(r.path(), "").unwrap(), user(0, 0, &[0]));
        assert_eq!(resolve(r.path(), "1000").unwrap(), user(1000, 0, &[0]));
        assert!(matches!(resolve(r.path(), "kiln"), Err(UserError::NoSuchUser(_))));
    }

    #[test]
    fn the_user_files_are_read_through_rootfs_symlinks() {
        let r = rootfs(None, None);
        std::fs::write(r.path().join("etc/passwd.real"), PASSWD).unwrap();
        std::os::unix::fs::symlink("/etc/passwd.real", r.path().join("etc/passwd")).unwrap();
        assert_eq!(resolve(r.path(), "kiln").unwrap(), user(1000, 1000, &[1000]));
    }

    #[test]
    fn oversized_user_files_are_refused() {
        let r = rootfs(None, None);
        let big = "x".repeat((MAX_FILE_BYTES + 1) as usize);
        std::fs::write(r.path().join("etc/passwd"), big).unwrap();
        assert!(matches!(resolve(r.path(), "kiln"), Err(UserError::FileTooLarge { .. })));
    }
}
