//! Exec ops (`client/llb/exec.go`): a process run on a root filesystem with
//! extra mounts, secrets and SSH sockets.

use std::sync::Arc;

use kiln_proto::buildkit::pb;

use super::marshal::{Marshaler, marshal_constraints};
use super::state::{Constraints, EnvList, Meta, OpMetadata, Output, State, Vertex, VertexKind};
use super::{LlbError, NetMode, SecurityMode, caps};

/// An `/etc/hosts` entry added to the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HostIp {
    pub host: String,
    /// The address as text, already in canonical form.
    pub ip: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Ulimit {
    pub name: String,
    pub soft: i64,
    pub hard: i64,
}

/// Proxy variables handed to the process outside its cache key (`pb.ProxyEnv`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ProxyEnv {
    pub http_proxy: String,
    pub https_proxy: String,
    pub ftp_proxy: String,
    pub no_proxy: String,
    pub all_proxy: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum CacheSharing {
    #[default]
    Shared,
    Private,
    Locked,
}

/// A secret exposed to the process as a file, an environment variable or both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SecretInfo {
    pub id: String,
    pub target: Option<String>,
    pub env: Option<String>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub optional: bool,
}

impl SecretInfo {
    /// A secret with the defaults of `llb.AddSecretWithDest` (mode 0400).
    pub(crate) fn new(id: &str, target: Option<&str>) -> Self {
        Self {
            id: id.to_owned(),
            target: target.map(str::to_owned),
            env: None,
            mode: 0o400,
            uid: 0,
            gid: 0,
            optional: false,
        }
    }
}

/// A forwarded SSH agent socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SshInfo {
    pub id: String,
    /// Empty: `/run/buildkit/ssh_agent.<n>`.
    pub target: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub optional: bool,
}

impl SshInfo {
    /// A socket with the defaults of `llb.AddSSHSocket` (mode 0600).
    pub(crate) fn new(id: &str) -> Self {
        Self { id: id.to_owned(), target: String::new(), mode: 0o600, uid: 0, gid: 0, optional: false }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CdiDevice {
    pub name: String,
    pub optional: bool,
}

/// A mount besides the root filesystem (`llb.AddMount` and its options).
#[derive(Clone, Debug)]
pub(crate) struct Mount {
    pub target: String,
    pub source: State,
    pub selector: String,
    pub readonly: bool,
    pub no_output: bool,
    pub cache: Option<(String, CacheSharing)>,
    pub tmpfs: Option<i64>,
}

impl Mount {
    /// `source` bind-mounted read-write at `target`.
    pub(crate) fn new(target: &str, source: &State) -> Self {
        Self {
            target: target.to_owned(),
            source: source.clone(),
            selector: String::new(),
            readonly: false,
            no_output: false,
            cache: None,
            tmpfs: None,
        }
    }

    pub(crate) fn readonly(mut self) -> Self {
        self.readonly = true;
        self
    }

    /// `llb.SourcePath`: mount this path of the source.
    pub(crate) fn selector(mut self, path: &str) -> Self {
        self.selector = path.to_owned();
        self
    }

    /// `llb.ForceNoOutput`: writable, but the changes are discarded.
    pub(crate) fn no_output(mut self) -> Self {
        self.no_output = true;
        self
    }

    /// `llb.AsPersistentCacheDir`.
    pub(crate) fn cache(mut self, id: &str, sharing: CacheSharing) -> Self {
        self.cache = Some((id.to_owned(), sharing));
        self
    }

    /// `llb.Tmpfs` with a size in bytes (0 = default).
    pub(crate) fn tmpfs(mut self, size: i64) -> Self {
        self.tmpfs = Some(size);
        self
    }
}

/// What `State::run` takes (`llb.RunOption`s). Settings here apply to this
/// exec only; the state returned by [`ExecState::root`] keeps the settings
/// of the state it ran on.
#[derive(Clone, Debug, Default)]
pub(crate) struct ExecOptions {
    pub args: Vec<String>,
    pub proxy_env: Option<ProxyEnv>,
    pub readonly_rootfs: bool,
    pub network: Option<NetMode>,
    pub security: Option<SecurityMode>,
    /// Appended to the state's extra hosts.
    pub extra_hosts: Vec<HostIp>,
    /// Appended to the state's ulimits.
    pub ulimits: Vec<Ulimit>,
    pub cgroup_parent: Option<String>,
    pub hostname: Option<String>,
    pub valid_exit_codes: Option<Vec<i32>>,
    pub secrets: Vec<SecretInfo>,
    pub ssh: Vec<SshInfo>,
    pub cdi_devices: Vec<CdiDevice>,
    pub constraints: Constraints,
}

#[derive(Debug)]
pub(super) struct MountEntry {
    pub target: String,
    pub source: Option<Output>,
    pub selector: String,
    pub readonly: bool,
    pub no_output: bool,
    pub cache: Option<(String, CacheSharing)>,
    pub tmpfs: Option<i64>,
}

impl MountEntry {
    fn has_output(&self) -> bool {
        !self.no_output && !self.readonly && self.cache.is_none() && self.tmpfs.is_none()
    }
}

#[derive(Debug)]
pub(super) struct ExecVertex {
    pub meta: Meta,
    pub args: Vec<String>,
    pub valid_exit_codes: Option<Vec<i32>>,
    /// Root first in practice: sorted by target, as upstream sorts them.
    pub mounts: Vec<MountEntry>,
    pub proxy_env: Option<ProxyEnv>,
    pub secrets: Vec<SecretInfo>,
    pub ssh: Vec<SshInfo>,
    pub cdi_devices: Vec<CdiDevice>,
}

/// The result of [`State::run`]: the new root.
#[derive(Clone, Debug)]
pub(crate) struct ExecState {
    root: State,
}

impl ExecState {
    /// The root filesystem after the process ran.
    pub(crate) fn root(&self) -> State {
        self.root.clone()
    }
}

impl State {
    /// Runs a process on this state (`State.Run`).
    pub(crate) fn run(&self, opts: ExecOptions, mounts: Vec<Mount>) -> ExecState {
        let mut meta = self.meta.clone();
        if let Some(n) = opts.network {
            meta.network = n;
        }
        if let Some(s) = opts.security {
            meta.security = s;
        }
        meta.extra_hosts.extend(opts.extra_hosts.iter().cloned());
        meta.ulimits.extend(opts.ulimits.iter().cloned());
        if let Some(c) = &opts.cgroup_parent {
            meta.cgroup_parent.clone_from(c);
        }
        if let Some(h) = &opts.hostname {
            meta.hostname.clone_from(h);
        }

        let root = MountEntry {
            target: "/".to_owned(),
            source: self.output.clone(),
            selector: String::new(),
            readonly: opts.readonly_rootfs,
            no_output: false,
            cache: None,
            tmpfs: None,
        };
        // (entry, is it the root mount)
        let mut entries = vec![(root, true)];
        for m in mounts {
            let entry = MountEntry {
                target: m.target,
                source: m.source.output,
                selector: m.selector,
                readonly: m.readonly,
                no_output: m.no_output,
                cache: m.cache,
                tmpfs: m.tmpfs,
            };
            entries.push((entry, false));
        }
        entries.sort_by(|a, b| a.0.target.cmp(&b.0.target));
        // The root's output is numbered over the mounts before it that
        // produce one (`getMountIndexFn`).
        let root_index =
            entries.iter().take_while(|(_, is_root)| !is_root).filter(|(m, _)| m.has_output()).count();

        let platform = opts.constraints.platform.clone();
        let vertex = Arc::new(Vertex {
            kind: VertexKind::Exec(ExecVertex {
                meta,
                args: opts.args,
                valid_exit_codes: opts.valid_exit_codes,
                mounts: entries.into_iter().map(|(entry, _)| entry).collect(),
                proxy_env: opts.proxy_env,
                secrets: opts.secrets,
                ssh: opts.ssh,
                cdi_devices: opts.cdi_devices,
            }),
            constraints: opts.constraints,
        });
        // Read-only, the root is the state itself.
        let output = if opts.readonly_rootfs {
            self.output.clone()
        } else {
            Some(Output::new(vertex, root_index as i64, platform))
        };
        ExecState { root: self.with_output(output) }
    }
}

/// `ExecOp.Marshal`.
pub(super) fn marshal_exec(
    e: &ExecVertex,
    own: &Constraints,
    m: &mut Marshaler<'_>,
) -> Result<(pb::Op, OpMetadata), LlbError> {
    if e.args.is_empty() {
        return Err(LlbError::NoArgs);
    }
    if e.meta.dir.is_empty() {
        return Err(LlbError::NoWorkingDir);
    }
    let mut c = own.clone();
    let mut env: EnvList = e.meta.env.clone();
    let ssh: Vec<SshInfo> = e
        .ssh
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut s = s.clone();
            if s.target.is_empty() {
                s.target = format!("/run/buildkit/ssh_agent.{i}");
            }
            s
        })
        .collect();
    if let Some(first) = ssh.first() {
        env.set_default("SSH_AUTH_SOCK", &first.target);
    }
    if let Some(supported) = m.caps() {
        if supported.contains(caps::EXEC_META_SETS_DEFAULT_PATH) {
            c.add_cap(caps::EXEC_META_SETS_DEFAULT_PATH);
        } else {
            let os = m
                .platform()
                .map(|p| p.os.clone())
                .or_else(|| c.platform.as_ref().map(|p| p.os.clone()))
                .unwrap_or_else(|| "linux".to_owned());
            // Windows keeps its own PATH (moby/buildkit#5445).
            if os != "windows" {
                env.set_default("PATH", super::DEFAULT_PATH_UNIX);
            }
        }
    }
    let mut meta = pb::Meta {
        args: e.args.clone(),
        env: env.to_array(),
        cwd: e.meta.dir.clone(),
        user: e.meta.user.clone(),
        hostname: e.meta.hostname.clone(),
        cgroup_parent: e.meta.cgroup_parent.clone(),
        remove_mount_stubs_recursive: true,
        ..pb::Meta::default()
    };
    if let Some(codes) = &e.valid_exit_codes {
        meta.valid_exit_codes = codes.clone();
        c.add_cap(caps::EXEC_VALID_EXIT_CODE);
    }
    meta.extra_hosts =
        e.meta.extra_hosts.iter().map(|h| pb::HostIp { host: h.host.clone(), ip: h.ip.clone() }).collect();
    if !e.meta.ulimits.is_empty() {
        c.add_cap(caps::EXEC_META_ULIMIT);
        meta.ulimit = e
            .meta
            .ulimits
            .iter()
            .map(|u| pb::Ulimit { name: u.name.clone(), soft: u.soft, hard: u.hard })
            .collect();
    }
    if e.meta.network != NetMode::Unset {
        c.add_cap(caps::EXEC_META_NETWORK);
    }
    if e.meta.security != SecurityMode::Sandbox {
        c.add_cap(caps::EXEC_META_SECURITY);
    }
    if let Some(p) = &e.proxy_env {
        meta.proxy_env = Some(pb::ProxyEnv {
            http_proxy: p.http_proxy.clone(),
            https_proxy: p.https_proxy.clone(),
            ftp_proxy: p.ftp_proxy.clone(),
            no_proxy: p.no_proxy.clone(),
            all_proxy: p.all_proxy.clone(),
        });
        c.add_cap(caps::EXEC_META_PROXY);
    }
    c.add_cap(caps::EXEC_META_BASE);
    for mount in &e.mounts {
        if !mount.selector.is_empty() {
            c.add_cap(caps::EXEC_MOUNT_SELECTOR);
        }
        if mount.cache.is_some() {
            c.add_cap(caps::EXEC_MOUNT_CACHE);
            c.add_cap(caps::EXEC_MOUNT_CACHE_SHARING);
        } else if let Some(size) = mount.tmpfs {
            c.add_cap(caps::EXEC_MOUNT_TMPFS);
            if size > 0 {
                c.add_cap(caps::EXEC_MOUNT_TMPFS_SIZE);
            }
        } else if mount.source.is_some() {
            c.add_cap(caps::EXEC_MOUNT_BIND);
        }
    }
    if !e.secrets.is_empty() {
        c.add_cap(caps::EXEC_MOUNT_SECRET);
        if e.secrets.iter().any(|s| s.env.is_some()) {
            c.add_cap(caps::EXEC_SECRET_ENV);
        }
    }
    if !ssh.is_empty() {
        c.add_cap(caps::EXEC_MOUNT_SSH);
    }
    let mut exec = pb::ExecOp {
        meta: None,
        mounts: Vec::new(),
        network: e.meta.network as i32,
        security: e.meta.security as i32,
        secretenv: Vec::new(),
        cdi_devices: Vec::new(),
    };
    if !e.cdi_devices.is_empty() {
        c.add_cap(caps::EXEC_META_CDI);
        exec.cdi_devices = e
            .cdi_devices
            .iter()
            .map(|d| pb::CdiDevice { name: d.name.clone(), optional: d.optional })
            .collect();
    }
    if c.platform.is_none() {
        c.platform.clone_from(&e.meta.platform);
    }
    exec.meta = Some(meta);

    let (mut op, md) = marshal_constraints(m.base(), &c);
    let mut next_output = 0;
    for mount in &e.mounts {
        let input = match &mount.source {
            Some(source) => {
                if mount.tmpfs.is_some() {
                    return Err(LlbError::TmpfsSource);
                }
                let input = m.input(source)?;
                match op.inputs.iter().position(|i| *i == input) {
                    Some(i) => i as i64,
                    None => {
                        op.inputs.push(input);
                        op.inputs.len() as i64 - 1
                    }
                }
            }
            None => -1,
        };
        let output = if mount.has_output() {
            next_output += 1;
            next_output - 1
        } else {
            -1
        };
        let mut pm = pb::Mount {
            input,
            selector: mount.selector.clone(),
            dest: mount.target.clone(),
            output,
            readonly: mount.readonly,
            ..pb::Mount::default()
        };
        if let Some((id, sharing)) = &mount.cache {
            pm.mount_type = pb::MountType::Cache as i32;
            pm.cache_opt = Some(pb::CacheOpt {
                id: id.clone(),
                sharing: match sharing {
                    CacheSharing::Shared => pb::CacheSharingOpt::Shared,
                    CacheSharing::Private => pb::CacheSharingOpt::Private,
                    CacheSharing::Locked => pb::CacheSharingOpt::Locked,
                } as i32,
            });
        }
        if let Some(size) = mount.tmpfs {
            pm.mount_type = pb::MountType::Tmpfs as i32;
            pm.tmpfs_opt = Some(pb::TmpfsOpt { size });
        }
        exec.mounts.push(pm);
    }
    for s in &e.secrets {
        if let Some(name) = &s.env {
            exec.secretenv.push(pb::SecretEnv { id: s.id.clone(), name: name.clone(), optional: s.optional });
        }
        if let Some(target) = &s.target {
            exec.mounts.push(pb::Mount {
                input: -1,
                dest: target.clone(),
                mount_type: pb::MountType::Secret as i32,
                secret_opt: Some(pb::SecretOpt {
                    id: s.id.clone(),
                    uid: s.uid,
                    gid: s.gid,
                    mode: s.mode,
                    optional: s.optional,
                }),
                ..pb::Mount::default()
            });
        }
    }
    for s in &ssh {
        exec.mounts.push(pb::Mount {
            input: -1,
            dest: s.target.clone(),
            mount_type: pb::MountType::Ssh as i32,
            ssh_opt: Some(pb::SshOpt {
                id: s.id.clone(),
                uid: s.uid,
                gid: s.gid,
                mode: s.mode,
                optional: s.optional,
            }),
            ..pb::Mount::default()
        });
    }
    op.op = Some(pb::op::Op::Exec(exec));
    Ok((op, md))
}
