//! Overlayfs mounts of snapshots: read-only views, and writable ones whose
//! changes land in a new layer (the upper directory).

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use super::{CacheError, CacheManager, Snapshot};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("mounting overlayfs at {target} ({options}): {source}")]
    Mount { target: PathBuf, options: String, source: nix::Error },
    #[error("overlayfs options for {layers} layers are {len} bytes, over the kernel's page limit")]
    TooManyLayers { layers: usize, len: usize },
}

/// A mounted snapshot; unmounted (lazily, so a busy mount never blocks) when dropped.
#[derive(Debug)]
pub struct Mounted {
    dir: tempfile::TempDir,
    target: PathBuf,
}

impl Mounted {
    pub fn path(&self) -> &Path {
        &self.target
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.target, MntFlags::MNT_DETACH);
        // The overlay work dir holds a root-only `work/` entry; make it removable.
        let work = self.dir.path().join("work/work");
        if work.exists() {
            let _ = std::fs::set_permissions(&work, std::os::unix::fs::PermissionsExt::from_mode(0o700));
        }
    }
}

/// The kernel copies mount options into one page.
const MAX_OPTIONS: usize = 4000;

/// Mounts `snapshot` read-only, or writable over `upper` (a new layer's
/// directory on the same file system as the cache).
pub fn mount(cache: &CacheManager, snapshot: &Snapshot, upper: Option<&Path>) -> Result<Mounted, MountError> {
    let dir = cache.temp_dir("mnt-")?;
    let target = dir.path().join("rootfs");
    let work = dir.path().join("work");
    for d in [&target, &work] {
        std::fs::create_dir(d).map_err(|source| CacheError::Io { path: d.clone(), source })?;
    }
    // Nothing below a writable view: the upper directory itself is the view
    // (BuildKit's overlay snapshotter bind-mounts a parentless snapshot too).
    if let (Some(upper), true) = (upper, snapshot.layers.is_empty()) {
        bind(upper, &target, false)?;
        return Ok(Mounted { dir, target });
    }
    // One layer read-only: that directory is the view (nothing below it for
    // whiteouts or opaque markers to hide), without overlayfs on every lookup.
    if let (None, [layer]) = (upper, snapshot.layers.as_slice()) {
        bind(&cache.layer_path(layer), &target, true)?;
        return Ok(Mounted { dir, target });
    }
    let mut lowers: Vec<PathBuf> = snapshot.layers.iter().rev().map(|l| cache.layer_path(l)).collect();
    // Overlayfs needs a lower directory, and two when there is no upper one.
    let needed = if upper.is_some() { 1 } else { 2 };
    let mut pads = [cache.empty_dir(), cache.root().join("empty-2")].into_iter();
    while lowers.len() < needed {
        lowers.extend(pads.next());
    }
    let lower = lowers.iter().map(|p| p.to_string_lossy()).collect::<Vec<_>>().join(":");
    let (options, flags) = match upper {
        Some(upper) => (
            format!(
                "lowerdir={lower},upperdir={},workdir={}{}",
                upper.display(),
                work.display(),
                crate::rootless::overlay_mount_options()
            ),
            MsFlags::empty(),
        ),
        None => (format!("lowerdir={lower}{}", crate::rootless::overlay_mount_options()), MsFlags::MS_RDONLY),
    };
    if options.len() > MAX_OPTIONS {
        return Err(MountError::TooManyLayers { layers: snapshot.layers.len(), len: options.len() });
    }
    nix::mount::mount(Some("overlay"), &target, Some("overlay"), flags, Some(options.as_str()))
        .map_err(|source| MountError::Mount { target: target.clone(), options, source })?;
    Ok(Mounted { dir, target })
}

/// Bind-mounts `source` at `target`, read-only when asked (a second,
/// remounting call: the kernel ignores read-only on the bind itself).
fn bind(source: &Path, target: &Path, read_only: bool) -> Result<(), MountError> {
    let mount = |flags: MsFlags| {
        nix::mount::mount(Some(source), target, None::<&str>, flags, None::<&str>).map_err(|source_err| {
            MountError::Mount {
                target: target.to_owned(),
                options: format!("bind {}", source.display()),
                source: source_err,
            }
        })
    };
    mount(MsFlags::MS_BIND)?;
    if read_only && let Err(e) = mount(MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY) {
        let _ = nix::mount::umount2(target, MntFlags::MNT_DETACH);
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_through_a_mount_land_in_the_upper_layer_only() {
        let root = tempfile::tempdir().unwrap();
        let cache = CacheManager::open(root.path()).unwrap();
        let base = cache.new_layer().unwrap();
        std::fs::write(base.path().join("a"), "base").unwrap();
        let base = Snapshot::default().with(cache.commit_layer(base).unwrap());

        let upper = cache.new_layer().unwrap();
        {
            let m = mount(&cache, &base, Some(upper.path())).unwrap();
            assert_eq!(std::fs::read_to_string(m.path().join("a")).unwrap(), "base");
            std::fs::write(m.path().join("b"), "new").unwrap();
            std::fs::remove_file(m.path().join("a")).unwrap();
        }
        let next = base.with(cache.commit_layer(upper).unwrap());
        let top = cache.layer_path(next.layers.last().unwrap());
        assert_eq!(std::fs::read_to_string(top.join("b")).unwrap(), "new");
        // The deletion is an overlay whiteout in the upper layer; the base is untouched.
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::symlink_metadata(top.join("a")).unwrap().file_type().is_char_device());
        assert_eq!(std::fs::read_to_string(cache.layer_path(&base.layers[0]).join("a")).unwrap(), "base");

        let one = mount(&cache, &base, None).unwrap();
        assert_eq!(std::fs::read_to_string(one.path().join("a")).unwrap(), "base");
        assert!(std::fs::write(one.path().join("c"), "x").is_err(), "a one-layer view took a write");
        drop(one);

        let view = mount(&cache, &next, None).unwrap();
        assert!(!view.path().join("a").exists());
        assert_eq!(std::fs::read_to_string(view.path().join("b")).unwrap(), "new");
        assert!(std::fs::write(view.path().join("c"), "x").is_err(), "a read-only view took a write");
    }

    #[test]
    fn a_writable_view_of_scratch_writes_straight_into_the_layer() {
        let root = tempfile::tempdir().unwrap();
        let cache = CacheManager::open(root.path()).unwrap();
        let upper = cache.new_layer().unwrap();
        {
            let m = mount(&cache, &Snapshot::default(), Some(upper.path())).unwrap();
            // Not an overlay: creating many files through one with nothing
            // below measured 5× slower than in the directory itself.
            let fs = nix::sys::statfs::statfs(m.path()).unwrap().filesystem_type();
            assert_ne!(fs, nix::sys::statfs::OVERLAYFS_SUPER_MAGIC);
            std::fs::create_dir(m.path().join("d")).unwrap();
            std::fs::write(m.path().join("d/f"), "new").unwrap();
            std::fs::write(m.path().join("gone"), "x").unwrap();
            std::fs::remove_file(m.path().join("gone")).unwrap();
        }
        let top = cache.layer_path(&cache.commit_layer(upper).unwrap());
        assert_eq!(std::fs::read_to_string(top.join("d/f")).unwrap(), "new");
        let names: Vec<_> = std::fs::read_dir(&top).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["d"]);
    }

    #[test]
    fn scratch_mounts_empty() {
        let root = tempfile::tempdir().unwrap();
        let cache = CacheManager::open(root.path()).unwrap();
        let view = mount(&cache, &Snapshot::default(), None).unwrap();
        assert_eq!(std::fs::read_dir(view.path()).unwrap().count(), 0);
    }
}
