//! Where a container's cgroup directories are, so none is left behind.
//!
//! Containers get a relative `cgroupsPath`, which the runtime nests under
//! its own cgroup (inherited from kilnd) in every hierarchy; an absolute path
//! would escape the limits kilnd itself runs under (its pod's, say).

use std::io;
use std::path::{Path, PathBuf};

use tracing::warn;

use crate::mountinfo::{self, MountEntry};

/// The directories of the calling process's own cgroups, one per mounted
/// hierarchy, read from `/proc/self/{mountinfo,cgroup}`.
pub(crate) fn own_cgroup_dirs() -> io::Result<Vec<PathBuf>> {
    let mountinfo = mountinfo::read()?;
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")?;
    Ok(cgroup_dirs(&mountinfo, &cgroup))
}

/// Removes `name` under each of `bases` if the runtime left it; a directory
/// still in use is reported, not forced.
pub(crate) fn remove_leftovers(bases: &[PathBuf], name: &str) {
    for base in bases {
        let dir = base.join(name);
        match std::fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warn!(dir = %dir.display(), error = %e, "removing a container's cgroup directory"),
        }
    }
}

struct CgroupMount<'a> {
    root: &'a str,
    mount_point: String,
    /// `None` for cgroup2; the super options (controllers, `name=`) for v1.
    options: Option<Vec<&'a str>>,
}

fn cgroup_mounts(mountinfo: &[MountEntry]) -> Vec<CgroupMount<'_>> {
    mountinfo
        .iter()
        .filter_map(|m| {
            let options = match m.fstype.as_str() {
                "cgroup2" => None,
                "cgroup" => Some(m.super_options.split(',').collect()),
                _ => return None,
            };
            Some(CgroupMount {
                root: &m.root,
                mount_point: m.mount_point.to_string_lossy().into_owned(),
                options,
            })
        })
        .collect()
}

fn cgroup_dirs(mountinfo: &[MountEntry], proc_cgroup: &str) -> Vec<PathBuf> {
    let mounts = cgroup_mounts(mountinfo);
    let mut dirs: Vec<PathBuf> = Vec::new();
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let mount = mounts.iter().find(|m| match &m.options {
            None => controllers.is_empty(),
            Some(options) => !controllers.is_empty() && controllers.split(',').all(|c| options.contains(&c)),
        });
        let Some(mount) = mount else { continue };
        let Ok(inner) = Path::new(path).strip_prefix(mount.root) else { continue };
        let dir = Path::new(&mount.mount_point).join(inner);
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    // The hybrid layout of the test machine: v1 controllers, a cgroup2 mount
    // holding nothing, and the daemon in a memory sub-cgroup.
    const MOUNTINFO: &str = "\
25 30 0:23 / /sys ro,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 25 0:24 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:8 - tmpfs tmpfs ro,mode=755
27 26 0:25 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
28 26 0:26 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,xattr,name=systemd
31 26 0:29 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,memory
32 26 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpu,cpuacct
33 26 0:31 /outer /mnt/my\\040cgroups rw,relatime shared:15 - cgroup cgroup rw,pids
";
    const PROC_CGROUP: &str = "\
9:name=systemd:/
8:pids:/outer/build
4:memory:/process_api/abc
2:cpu,cpuacct:/
0::/
";

    #[test]
    fn every_hierarchy_maps_to_its_directory() {
        assert_eq!(
            cgroup_dirs(&mountinfo::parse(MOUNTINFO), PROC_CGROUP),
            vec![
                PathBuf::from("/sys/fs/cgroup/systemd"),
                PathBuf::from("/mnt/my cgroups/build"),
                PathBuf::from("/sys/fs/cgroup/memory/process_api/abc"),
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"),
                PathBuf::from("/sys/fs/cgroup/unified"),
            ]
        );
    }

    #[test]
    fn leftover_directories_are_removed_and_missing_ones_ignored() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::create_dir(a.path().join("kiln-x")).unwrap();
        remove_leftovers(&[a.path().to_path_buf(), b.path().to_path_buf()], "kiln-x");
        assert!(!a.path().join("kiln-x").exists());
    }

    #[test]
    fn this_process_has_cgroup_directories_that_exist() {
        let dirs = own_cgroup_dirs().unwrap();
        assert!(!dirs.is_empty());
        for dir in dirs {
            assert!(dir.is_dir(), "{}", dir.display());
        }
    }
}
