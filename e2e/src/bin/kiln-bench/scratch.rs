//! A file system made fresh for each run: the daemons' state directories
//! and the client's outputs are made on it (every temporary directory of
//! the run is), so no run inherits another's freed inodes, fragmentation or
//! dirty pages. On one long-lived file system the 100,000-file runs varied
//! 3–5× with how recently the previous run had deleted its files.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Size of the sparse image: room for the largest workload (a 512 MiB layer
/// with its blobs, on either daemon) many times over; only what is written
/// takes disk space.
const IMAGE_BYTES: u64 = 32 << 30;

/// Where the runs' temporary directories go, fixed for the whole suite.
pub struct Scratch {
    mountpoint: PathBuf,
    image: PathBuf,
    /// Why no file system could be made: the runs then share the plain
    /// temporary directory.
    unavailable: Option<String>,
}

impl Scratch {
    /// Points every later temporary directory of this process at
    /// `mountpoint`, under the system's temporary directory.
    pub fn new() -> Self {
        let tmp = std::env::temp_dir();
        clean_up_after_killed_runs(&tmp);
        let mountpoint = tmp.join(format!("kiln-bench-scratch-{}", std::process::id()));
        let image = tmp.join(format!("kiln-bench-scratch-{}.img", std::process::id()));
        std::fs::create_dir_all(&mountpoint).unwrap();
        tempfile::env::override_temp_dir(&mountpoint).expect("the temporary directory is set once");
        let mut scratch = Self { mountpoint, image, unavailable: None };
        // One trial, so a machine that cannot mount a loop device says so once.
        match scratch.make() {
            Ok(()) => scratch.unmount(),
            Err(e) => {
                eprintln!("[bench] no fresh file system per run ({e}); every run shares {}", tmp.display());
                scratch.unavailable = Some(e);
            }
        }
        scratch
    }

    /// A fresh ext4 (the default `mkfs.ext4`, journal included) mounted for
    /// one run; unmounted and deleted when the guard drops.
    pub fn fresh(&self) -> Option<Mounted<'_>> {
        if self.unavailable.is_some() {
            return None;
        }
        self.make().unwrap_or_else(|e| panic!("making the run's scratch file system: {e}"));
        Some(Mounted(self))
    }

    pub fn describe(&self) -> String {
        match &self.unavailable {
            None => format!("a fresh ext4 per run (loop device, {} GiB sparse image)", IMAGE_BYTES >> 30),
            Some(e) => format!("the shared temporary directory ({e})"),
        }
    }

    fn make(&self) -> Result<(), String> {
        let file =
            std::fs::File::create(&self.image).map_err(|e| format!("{}: {e}", self.image.display()))?;
        file.set_len(IMAGE_BYTES).map_err(|e| format!("{}: {e}", self.image.display()))?;
        drop(file);
        // Inode tables and the journal are zeroed lazily; `noinit_itable`
        // keeps the kernel from doing it in the background during the run.
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1"])
            .arg(&self.image))?;
        run(Command::new("mount").args(["-o", "loop,noinit_itable"]).arg(&self.image).arg(&self.mountpoint))
    }

    fn unmount(&self) {
        if run(Command::new("umount").arg(&self.mountpoint)).is_err() {
            // Something still holds it (a daemon's leftover mount): detach it lazily.
            let _ = run(Command::new("umount").arg("-l").arg(&self.mountpoint));
        }
        let _ = std::fs::remove_file(&self.image);
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.mountpoint);
    }
}

/// The file system of one run.
pub struct Mounted<'a>(&'a Scratch);

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        self.0.unmount();
    }
}

/// Unmounts and deletes the scratch file systems of bench processes that
/// were killed (a guard that never dropped leaves its mount behind).
fn clean_up_after_killed_runs(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("kiln-bench-scratch-").and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = run(Command::new("umount").arg("-l").arg(entry.path()));
        let _ = std::fs::remove_dir(entry.path());
        let _ = std::fs::remove_file(tmp.join(format!("kiln-bench-scratch-{pid}.img")));
        eprintln!("[bench] removed the scratch file system of killed run {pid}");
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}
