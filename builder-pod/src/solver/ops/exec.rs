//! ExecOp: a step run in a container over its input snapshots.
//!
//! Every bind mount is an overlayfs mount of its input; a mount with an
//! output gets a new upper layer that becomes that output, a writable mount
//! without one gets a throwaway upper. Cache mounts are directories kept
//! under the cache root across builds; secrets live on a tmpfs for the
//! length of the step and never reach a layer.

use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_proto::buildkit::pb;
use nix::mount::MsFlags;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::cache::mount::{MountError, Mounted, mount};
use crate::cache::{CacheError, CacheManager, PendingLayer, Snapshot};
use crate::executor::{
    ExecMount, ExecSpec, Executor, ExecutorError, MountKind, NetworkMode, ProcessFailed, ProcessIo, Rlimit,
    SecurityMode,
};
use crate::locks::KeyedLocks;
use crate::session::secrets::{SecretError, get_secret};
use crate::session::sshforward::{self, AgentSocket, SshError};
use crate::solver::entitlements::{self, EntitlementError};
use crate::solver::scheduler::BuildContext;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ExecOpError {
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Executor(#[from] ExecutorError),
    #[error(transparent)]
    Failed(#[from] ProcessFailed),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("exec op has no arguments")]
    NoMeta,
    #[error("mount {dest}: input {input} is not an input of the op")]
    MountInput { dest: String, input: i64 },
    #[error("mount {dest}: unknown mount type {kind}")]
    MountType { dest: String, kind: i32 },
    #[error("secret {id} not found")]
    SecretNotFound { id: String },
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error(transparent)]
    Entitlement(#[from] EntitlementError),
    #[error("preparing {path}: {source}")]
    Prepare { path: PathBuf, source: std::io::Error },
    #[error("mounting a tmpfs for secrets at {path}: {source}")]
    SecretTmpfs { path: PathBuf, source: nix::Error },
}

fn prepare_err(path: &Path) -> impl FnOnce(std::io::Error) -> ExecOpError + '_ {
    move |source| ExecOpError::Prepare { path: path.to_owned(), source }
}

/// Persistent `RUN --mount=type=cache` directories with their sharing modes.
#[derive(Debug, Default)]
pub(crate) struct CacheMounts {
    locks: KeyedLocks,
}

/// What a step holds while it runs: mounts, upper layers, locks.
#[derive(Default)]
struct Held {
    mounts: Vec<Mounted>,
    outputs: Vec<(i64, Snapshot, PendingLayer)>,
    throwaway: Vec<PendingLayer>,
    locks: Vec<tokio::sync::OwnedMutexGuard<()>>,
    private_dirs: Vec<tempfile::TempDir>,
    secrets: Option<SecretDir>,
    /// Declared before its directory, so the socket closes before the directory goes.
    agents: Vec<(AgentSocket, tempfile::TempDir)>,
}

/// A tmpfs holding the step's secrets, unmounted when the step ends.
struct SecretDir {
    dir: tempfile::TempDir,
    count: usize,
}

impl Drop for SecretDir {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

pub(crate) struct ExecContext<'a> {
    pub cache: &'a CacheManager,
    pub cache_mounts: &'a CacheMounts,
    pub executor: &'a dyn Executor,
    pub secrets_dir: &'a Path,
    pub digest: &'a str,
}

impl std::fmt::Debug for ExecContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecContext").field("digest", &self.digest).finish_non_exhaustive()
    }
}

/// Runs the step and returns one snapshot per output index.
pub(crate) async fn run(
    cx: ExecContext<'_>,
    op: &pb::ExecOp,
    inputs: &[Snapshot],
    ctx: &BuildContext,
) -> Result<Vec<Snapshot>, ExecOpError> {
    let meta = op.meta.as_ref().filter(|m| !m.args.is_empty()).ok_or(ExecOpError::NoMeta)?;
    // The solver checked the whole graph before it started; this is the
    // last line should a step ever reach here another way.
    if let Some(entitlement) = entitlements::needs(op).find(|e| !ctx.entitlements.contains(*e)) {
        let step = meta.args.join(" ");
        return Err(EntitlementError::NotGranted { entitlement, step }.into());
    }
    let network = match pb::NetMode::try_from(op.network).unwrap_or(pb::NetMode::Unset) {
        pb::NetMode::Host => NetworkMode::Host,
        pb::NetMode::None => NetworkMode::None,
        pb::NetMode::Unset => NetworkMode::Default,
    };
    let security = match pb::SecurityMode::try_from(op.security).unwrap_or(pb::SecurityMode::Sandbox) {
        pb::SecurityMode::Insecure => SecurityMode::Insecure,
        pb::SecurityMode::Sandbox => SecurityMode::Sandbox,
    };

    let mut held = Held::default();
    let mut rootfs: Option<PathBuf> = None;
    let mut mounts = Vec::new();
    // The root mount first: the others are mounted inside it by the runtime.
    let mut order: Vec<&pb::Mount> = op.mounts.iter().collect();
    order.sort_by_key(|m| m.dest != "/");
    for m in order {
        let kind = pb::MountType::try_from(m.mount_type)
            .map_err(|_| ExecOpError::MountType { dest: m.dest.clone(), kind: m.mount_type })?;
        let source = match kind {
            pb::MountType::Bind => bind_source(&cx, m, inputs, &mut held)?,
            pb::MountType::Cache => cache_source(&cx, m, inputs, &mut held).await?,
            pb::MountType::Tmpfs => {
                let size = m.tmpfs_opt.as_ref().map(|t| t.size).filter(|s| *s > 0).map(|s| s as u64);
                mounts.push(ExecMount {
                    dest: m.dest.clone(),
                    kind: MountKind::Tmpfs { size, readonly: m.readonly },
                });
                continue;
            }
            pb::MountType::Secret => match secret_source(&cx, m, ctx, &mut held).await? {
                Some(path) => path,
                None => continue,
            },
            pb::MountType::Ssh => match ssh_source(&cx, m, ctx, &mut held).await? {
                Some(path) => path,
                None => continue,
            },
        };
        if m.dest == "/" {
            rootfs = Some(source);
        } else {
            let readonly = m.readonly || kind == pb::MountType::Secret;
            mounts.push(ExecMount { dest: m.dest.clone(), kind: MountKind::Bind { source, readonly } });
        }
    }
    let rootfs = match rootfs {
        Some(r) => r,
        // No root mount: a scratch root that nobody keeps.
        None => bind_source(
            &cx,
            &pb::Mount { input: -1, dest: "/".into(), output: -1, ..Default::default() },
            inputs,
            &mut held,
        )?,
    };

    let mut secret_env = Vec::new();
    for s in &op.secretenv {
        match get_secret(&ctx.sessions, &s.id).await? {
            Some(value) => secret_env.push((s.name.clone(), String::from_utf8_lossy(&value).into_owned())),
            None if s.optional => {}
            None => return Err(ExecOpError::SecretNotFound { id: s.id.clone() }),
        }
    }

    let mut spec = ExecSpec::new(rootfs, meta.args.clone());
    spec.env = meta.env.clone();
    spec.env.extend(meta.proxy_env.as_ref().map(proxy_env_list).unwrap_or_default());
    spec.cwd = meta.cwd.clone();
    spec.user = meta.user.clone();
    spec.hostname = Some(meta.hostname.clone()).filter(|h| !h.is_empty());
    spec.mounts = mounts;
    spec.network = network;
    spec.security = security;
    spec.secret_env = secret_env;
    spec.extra_hosts =
        meta.extra_hosts.iter().filter_map(|h| Some((h.host.clone(), h.ip.parse().ok()?))).collect();
    spec.rlimits = meta
        .ulimit
        .iter()
        .map(|u| Rlimit { name: u.name.clone(), soft: u.soft.max(0) as u64, hard: u.hard.max(0) as u64 })
        .collect();
    if !meta.valid_exit_codes.is_empty() {
        spec.valid_exit_codes = Some(meta.valid_exit_codes.iter().map(|c| *c as u32).collect());
    }
    spec.remove_mount_stubs_recursive = meta.remove_mount_stubs_recursive;

    // Output goes to the client as the step's logs.
    let (tx, mut rx) = mpsc::channel(64);
    let progress = Arc::clone(&ctx.job);
    let digest = cx.digest.to_owned();
    let forward = tokio::spawn(async move {
        while let Some(chunk) = rx.recv().await {
            let chunk: crate::executor::OutputChunk = chunk;
            progress.progress.log(&digest, chunk.stream.fd(), chunk.data.to_vec());
        }
    });
    let outcome = cx.executor.run(&spec, ProcessIo::new(tx), ctx.cancel.clone()).await;
    let _ = forward.await;
    outcome?.check(&spec)?;

    // Unmount before the upper layers are moved into place.
    held.mounts.clear();
    let mut outputs: Vec<(i64, Snapshot)> = Vec::new();
    for (index, base, layer) in held.outputs.drain(..) {
        outputs.push((index, cx.cache.commit_layer_over(layer, &base)?));
    }
    outputs.sort_by_key(|(i, _)| *i);
    Ok(outputs.into_iter().map(|(_, s)| s).collect())
}

fn input_snapshot(m: &pb::Mount, inputs: &[Snapshot]) -> Result<Snapshot, ExecOpError> {
    if m.input < 0 {
        return Ok(Snapshot::default());
    }
    usize::try_from(m.input)
        .ok()
        .and_then(|i| inputs.get(i).cloned())
        .ok_or(ExecOpError::MountInput { dest: m.dest.clone(), input: m.input })
}

/// An overlay of the mount's input: read-only, or over a new upper layer.
fn bind_source(
    cx: &ExecContext<'_>,
    m: &pb::Mount,
    inputs: &[Snapshot],
    held: &mut Held,
) -> Result<PathBuf, ExecOpError> {
    let base = input_snapshot(m, inputs)?;
    let mounted = if m.readonly && m.output < 0 {
        mount(cx.cache, &base, None)?
    } else {
        let upper = cx.cache.new_layer()?;
        let mounted = mount(cx.cache, &base, Some(upper.path()))?;
        if m.output >= 0 {
            held.outputs.push((m.output, base, upper));
        } else {
            held.throwaway.push(upper);
        }
        mounted
    };
    let path = selected(mounted.path(), &m.selector);
    held.mounts.push(mounted);
    Ok(path)
}

fn selected(root: &Path, selector: &str) -> PathBuf {
    let rel = selector.trim_start_matches('/');
    if rel.is_empty() { root.to_owned() } else { root.join(rel) }
}

/// The persistent directory of a cache mount, honouring its sharing mode.
async fn cache_source(
    cx: &ExecContext<'_>,
    m: &pb::Mount,
    inputs: &[Snapshot],
    held: &mut Held,
) -> Result<PathBuf, ExecOpError> {
    let opt = m.cache_opt.clone().unwrap_or_default();
    let id = if opt.id.is_empty() { m.dest.clone() } else { opt.id.clone() };
    let dir = cx.cache.root().join("cache-mounts").join(hex::encode(Sha256::digest(id.as_bytes())));
    let lock = cx.cache_mounts.locks.get(&id);
    let dir = match pb::CacheSharingOpt::try_from(opt.sharing).unwrap_or(pb::CacheSharingOpt::Shared) {
        pb::CacheSharingOpt::Shared => dir,
        pb::CacheSharingOpt::Locked => {
            held.locks.push(lock.lock_owned().await);
            dir
        }
        pb::CacheSharingOpt::Private => match lock.try_lock_owned() {
            Ok(guard) => {
                held.locks.push(guard);
                dir
            }
            // In use by another step: this one gets a fresh directory of its own.
            Err(_) => {
                let private = cx.cache.temp_dir("cache-private-")?;
                let path = private.path().to_owned();
                held.private_dirs.push(private);
                path
            }
        },
    };
    if !dir.exists() {
        let tmp = cx.cache.temp_dir("cache-new-")?;
        let fresh = tmp.path().join("d");
        std::fs::create_dir(&fresh).map_err(prepare_err(&fresh))?;
        // A cache mount with a source starts from that source's contents.
        if m.input >= 0 {
            let view = mount(cx.cache, &input_snapshot(m, inputs)?, None)?;
            copy_tree(&selected(view.path(), &m.selector), &fresh)?;
        }
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent).map_err(prepare_err(parent))?;
        }
        // Another step may have made it meanwhile; theirs wins.
        if std::fs::rename(&fresh, &dir).is_err() && !dir.exists() {
            return Err(ExecOpError::Prepare {
                path: dir,
                source: std::io::Error::other("could not create"),
            });
        }
    }
    Ok(dir)
}

/// `cp -a SRC/. DEST`: the contents of a directory with owners, modes and times.
fn copy_tree(src: &Path, dest: &Path) -> Result<(), ExecOpError> {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", src.display()))
        .arg(dest)
        .status()
        .map_err(prepare_err(dest))?;
    if status.success() {
        Ok(())
    } else {
        Err(ExecOpError::Prepare {
            path: dest.to_owned(),
            source: std::io::Error::other(format!("cp -a exited {status}")),
        })
    }
}

/// A socket forwarding to the client's SSH agent; `None` when the mount is
/// optional and the client forwards no such agent.
async fn ssh_source(
    cx: &ExecContext<'_>,
    m: &pb::Mount,
    ctx: &BuildContext,
    held: &mut Held,
) -> Result<Option<PathBuf>, ExecOpError> {
    let opt = m.ssh_opt.clone().unwrap_or_default();
    let id = if opt.id.is_empty() { "default".to_owned() } else { opt.id.clone() };
    let Some(session) = sshforward::find(&ctx.sessions, &id).await? else {
        if opt.optional {
            return Ok(None);
        }
        return Err(SshError::NotForwarded { id }.into());
    };
    let dir = cx.cache.temp_dir("ssh-")?;
    let socket = sshforward::listen(session, &id, dir.path(), opt.uid, opt.gid, opt.mode)?;
    let path = socket.path.clone();
    held.agents.push((socket, dir));
    Ok(Some(path))
}

/// Writes the secret into the step's tmpfs; `None` when it is optional and absent.
async fn secret_source(
    cx: &ExecContext<'_>,
    m: &pb::Mount,
    ctx: &BuildContext,
    held: &mut Held,
) -> Result<Option<PathBuf>, ExecOpError> {
    let opt = m.secret_opt.clone().unwrap_or_default();
    let Some(value) = get_secret(&ctx.sessions, &opt.id).await? else {
        if opt.optional {
            return Ok(None);
        }
        return Err(ExecOpError::SecretNotFound { id: opt.id });
    };
    let secrets = match &mut held.secrets {
        Some(secrets) => secrets,
        None => {
            let dir = tempfile::Builder::new()
                .prefix("secrets-")
                .tempdir_in(cx.secrets_dir)
                .map_err(prepare_err(cx.secrets_dir))?;
            let flags = MsFlags::MS_NOEXEC | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
            nix::mount::mount(Some("tmpfs"), dir.path(), Some("tmpfs"), flags, Some("mode=0700,size=16m"))
                .map_err(|source| ExecOpError::SecretTmpfs { path: dir.path().to_owned(), source })?;
            held.secrets.insert(SecretDir { dir, count: 0 })
        }
    };
    secrets.count += 1;
    let path = secrets.dir.path().join(secrets.count.to_string());
    std::fs::write(&path, &value).map_err(prepare_err(&path))?;
    let mode = if opt.mode == 0 { 0o400 } else { opt.mode & 0o7777 };
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(prepare_err(&path))?;
    chown(&path, Some(opt.uid), Some(opt.gid)).map_err(prepare_err(&path))?;
    Ok(Some(path))
}

/// The proxy settings as the step's environment, upper and lower case
/// (`ops/exec.go` `proxyEnvList`); the Dockerfile frontend fills them from
/// the predefined `HTTP_PROXY`… build args.
fn proxy_env_list(p: &pb::ProxyEnv) -> Vec<String> {
    [
        ("HTTP_PROXY", "http_proxy", &p.http_proxy),
        ("HTTPS_PROXY", "https_proxy", &p.https_proxy),
        ("FTP_PROXY", "ftp_proxy", &p.ftp_proxy),
        ("NO_PROXY", "no_proxy", &p.no_proxy),
        ("ALL_PROXY", "all_proxy", &p.all_proxy),
    ]
    .into_iter()
    .filter(|(_, _, v)| !v.is_empty())
    .flat_map(|(upper, lower, v)| [format!("{upper}={v}"), format!("{lower}={v}")])
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_settings_become_upper_and_lower_case_variables() {
        let p = pb::ProxyEnv {
            http_proxy: "http://p:3128".into(),
            no_proxy: "localhost".into(),
            ..Default::default()
        };
        assert_eq!(
            proxy_env_list(&p),
            [
                "HTTP_PROXY=http://p:3128",
                "http_proxy=http://p:3128",
                "NO_PROXY=localhost",
                "no_proxy=localhost"
            ]
        );
        assert!(proxy_env_list(&pb::ProxyEnv::default()).is_empty());
    }
}
