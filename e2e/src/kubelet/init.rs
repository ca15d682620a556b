//! `kiln-kubelet-standin container-init`: what runs between `unshare` and the
//! container's program, inside the pod's fresh private mount namespace. It
//! ties its life to the stand-in (parent-death signal), binds each volume at
//! its mountPath — so two pods can both have /var/lib/kilnd — and execs.

use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{MsFlags, mount};
use nix::sys::prctl;
use nix::sys::signal::Signal;
use nix::unistd::getppid;

use super::Error;

/// One volume bind: host `source` at `target`, read-only or not.
#[derive(Debug, Clone)]
pub struct Bind {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

#[derive(Debug, Clone)]
pub struct InitArgs {
    /// The stand-in's pid: if it is already gone, the container must not start.
    pub parent: u32,
    pub binds: Vec<Bind>,
    pub workdir: PathBuf,
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

/// Mounts and execs; returns only on failure.
pub fn container_init(args: &InitArgs) -> Error {
    // The stand-in may be SIGKILLed; its containers must not outlive it.
    if let Err(source) = prctl::set_pdeathsig(Signal::SIGKILL) {
        return Error::ParentDeathSignal { source };
    }
    if getppid().as_raw() != args.parent as i32 {
        return Error::StandInGone { parent: args.parent };
    }
    for bind in &args.binds {
        if let Err(e) = bind_mount(bind) {
            return e;
        }
    }
    if let Err(source) = std::env::set_current_dir(&args.workdir) {
        return Error::WorkingDir { path: args.workdir.clone(), source };
    }
    let source = Command::new(&args.program).args(&args.args).exec();
    Error::Exec { program: args.program.clone(), source }
}

fn bind_mount(bind: &Bind) -> Result<(), Error> {
    make_mount_point(&bind.source, &bind.target)?;
    let mount_err =
        |source| Error::Mount { source_path: bind.source.clone(), target: bind.target.clone(), source };
    mount(Some(&bind.source), &bind.target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .map_err(mount_err)?;
    if bind.read_only {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount(None::<&str>, &bind.target, None::<&str>, flags, None::<&str>).map_err(mount_err)?;
    }
    Ok(())
}

/// A bind needs its target to exist as the same kind (dir or file) as its source.
fn make_mount_point(source: &Path, target: &Path) -> Result<(), Error> {
    let create = |path: &Path, source| Error::MountPoint { path: path.to_owned(), source };
    if source.is_dir() {
        return std::fs::create_dir_all(target).map_err(|e| create(target, e));
    }
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(|e| create(parent, e))?;
    }
    if !target.exists() {
        std::fs::File::create(target).map_err(|e| create(target, e))?;
    }
    Ok(())
}
