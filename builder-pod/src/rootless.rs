//! Rootless kilnd: kilnd started by a user without privileges runs inside a
//! user namespace that RootlessKit makes (`rootlesskit kilnd …`), where it is
//! uid 0 over the user's subordinate ids and may mount, but only what the
//! namespace owns. What changes there (docs/rootless.md):
//!
//! - overlay mounts take `userxattr`, and overlay's own xattrs (an opaque
//!   directory's mark) are `user.overlay.*` instead of `trusted.overlay.*`;
//! - the run directory and the bridge's locks go under `$XDG_RUNTIME_DIR`,
//!   since `/run` is not the user's;
//! - RUN steps get no cgroup of their own, and share kilnd's network
//!   namespace unless a step asks for none (`networkMode = "auto"` means
//!   host there, as in rootless BuildKit);
//! - a step's `/sys` is the namespace's view bound read-only when the step
//!   shares kilnd's network namespace (sysfs cannot be mounted for a network
//!   namespace the user namespace does not own).
//!
//! Whether kilnd is rootless is a fact of the process, found once.

use std::path::PathBuf;
use std::sync::OnceLock;

/// The run base of a kilnd with privileges.
const ROOTFUL_RUN_BASE: &str = "/run/kilnd";

/// Whether this process runs in a user namespace other than the initial one
/// (whose uid map is the identity over every id).
pub fn in_user_namespace() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| {
        std::fs::read_to_string("/proc/self/uid_map").is_ok_and(|map| !is_initial_uid_map(&map))
    })
}

fn is_initial_uid_map(map: &str) -> bool {
    let fields: Vec<&str> = map.split_whitespace().collect();
    fields == ["0", "0", "4294967295"]
}

/// Why kilnd cannot run as it was started: as a user without privileges
/// outside a user namespace, where it can mount nothing.
pub fn check_privileges() -> Result<(), String> {
    let euid = nix::unistd::geteuid();
    if euid.is_root() || in_user_namespace() {
        return Ok(());
    }
    Err(format!(
        "kilnd runs as uid {} without privileges: start it as root, or rootless inside a user \
         namespace with `rootlesskit --net=host kilnd …` (the user needs ranges in /etc/subuid and \
         /etc/subgid; docs/rootless.md)",
        euid
    ))
}

/// Where kilnd's run directories go: `/run/kilnd`, or, rootless,
/// `$XDG_RUNTIME_DIR/kilnd` (RootlessKit passes the user's on).
pub fn run_base() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if in_user_namespace() && !dir.is_empty() => PathBuf::from(dir).join("kilnd"),
        _ => PathBuf::from(ROOTFUL_RUN_BASE),
    }
}

/// Options an overlay mount of this process needs besides its directories.
pub fn overlay_mount_options() -> &'static str {
    if in_user_namespace() { ",userxattr" } else { "" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_identity_over_every_id_is_the_initial_namespace() {
        assert!(is_initial_uid_map("         0          0 4294967295\n"));
        assert!(!is_initial_uid_map("         0       1000          1\n         1     100000      65536\n"));
        assert!(!is_initial_uid_map(""));
    }
}
