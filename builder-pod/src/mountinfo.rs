//! `/proc/self/mountinfo`, read for the mounts kilnd must find: cgroup
//! hierarchies, and mounts a killed daemon left under its root.

use std::path::{Path, PathBuf};

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountEntry {
    /// The root of the mount within its file system.
    pub root: String,
    pub mount_point: PathBuf,
    pub fstype: String,
    /// The file system's own options (for cgroup v1: its controllers).
    pub super_options: String,
}

pub(crate) fn read() -> std::io::Result<Vec<MountEntry>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

pub(crate) fn parse(mountinfo: &str) -> Vec<MountEntry> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fields: Vec<&str> = before.split(' ').collect();
            let (root, mount_point) = (*fields.get(3)?, *fields.get(4)?);
            let mut tail = after.split(' ');
            let fstype = tail.next()?.to_owned();
            let _source = tail.next()?;
            let super_options = tail.next().unwrap_or("").to_owned();
            Some(MountEntry {
                root: unescape(root),
                mount_point: PathBuf::from(unescape(mount_point)),
                fstype,
                super_options,
            })
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = if bytes[i] == b'\\' { s.get(i + 1..i + 4) } else { None };
        if let Some(v) = octal.and_then(|o| u8::from_str_radix(o, 8).ok()) {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or below `dir`, deepest first (the order to unmount them in).
pub(crate) fn mounts_under(entries: &[MountEntry], dir: &Path) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> =
        entries.iter().filter(|m| m.mount_point.starts_with(dir)).map(|m| m.mount_point.clone()).collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
36 35 98:0 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
40 22 0:40 / /var/lib/kilnd/cache/tmp/mnt-a/rootfs rw,relatime - overlay overlay rw,lowerdir=/x
41 40 0:41 / /var/lib/kilnd/cache/tmp/mnt-a/rootfs/proc rw - proc proc rw
42 22 0:42 / /var/lib/kilnd\\040other/x rw - tmpfs tmpfs rw
";

    #[test]
    fn entries_parse_and_leftovers_unmount_deepest_first() {
        let entries = parse(SAMPLE);
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[0].fstype, "cgroup");
        assert_eq!(entries[0].super_options, "rw,memory");
        assert_eq!(entries[3].mount_point, Path::new("/var/lib/kilnd other/x"));
        let under = mounts_under(&entries, Path::new("/var/lib/kilnd/cache"));
        assert_eq!(
            under,
            [
                PathBuf::from("/var/lib/kilnd/cache/tmp/mnt-a/rootfs/proc"),
                PathBuf::from("/var/lib/kilnd/cache/tmp/mnt-a/rootfs")
            ]
        );
    }
}
