//! Runs one LLB `ExecOp` (a Dockerfile `RUN` step) in an OCI container.
//!
//! The trait and its vocabulary live here; `runc` holds the implementation
//! that drives an OCI runtime binary. What the container looks like (mounts,
//! capabilities, masked paths, hostname, `/etc/hosts`, `/etc/resolv.conf`,
//! user lookup) follows what BuildKit generates in `executor/oci/` upstream,
//! so a `RUN` behaves the same under kilnd as under buildkitd.

mod cgroup;
mod netfiles;
pub(crate) mod network;
pub(crate) mod rootpath;
mod runc;
pub(crate) mod rundir;
mod seccomp;
mod spec;
mod stubs;
mod user;

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncRead;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub(crate) use runc::RuncExecutor;
pub(crate) use user::UserError;

/// The hostname a build container gets unless the op names one
/// (`executor/oci/hosts.go` upstream).
pub(crate) const DEFAULT_HOSTNAME: &str = "buildkitsandbox";

/// The `PATH` a process gets when its environment has none
/// (`util/system/path.go` upstream, added in `solver/llbsolver/ops/exec.go`).
pub(crate) const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything that decides how one process runs.
#[derive(Clone)]
pub(crate) struct ExecSpec {
    /// A prepared root directory (the caller mounts the overlay). Writes the
    /// process makes outside its mounts land here.
    pub rootfs: PathBuf,
    pub args: Vec<String>,
    /// `NAME=value` entries. `PATH` is added when absent.
    pub env: Vec<String>,
    /// Working directory inside the container; created (owned by the
    /// process's user) when missing. Empty means `/`.
    pub cwd: String,
    /// `""` (root), `name`, `uid`, `uid:gid`, `name:group`, resolved against
    /// the rootfs's `/etc/passwd` and `/etc/group`.
    pub user: String,
    /// `None` gives [`DEFAULT_HOSTNAME`].
    pub hostname: Option<String>,
    pub mounts: Vec<ExecMount>,
    pub network: NetworkMode,
    pub security: SecurityMode,
    pub readonly_rootfs: bool,
    /// Extra `/etc/hosts` lines (`--add-host`).
    pub extra_hosts: Vec<(String, IpAddr)>,
    /// Secrets exposed as environment variables; never logged.
    pub secret_env: Vec<(String, String)>,
    /// Resource limits; empty leaves the daemon's own limits in place, as
    /// BuildKit does.
    pub rlimits: Vec<Rlimit>,
    /// Exit codes that count as success; `None` means only 0 (LLB `validExitCodes`).
    pub valid_exit_codes: Option<Vec<u32>>,
    /// Remove the mount-point stubs the runtime created, including parent
    /// directories it had to create (LLB `removeMountStubsRecursive`).
    pub remove_mount_stubs_recursive: bool,
}

impl ExecSpec {
    /// A spec with BuildKit's defaults: root user, `/` as working directory,
    /// the default network, sandboxed security, no mounts.
    pub(crate) fn new(rootfs: impl Into<PathBuf>, args: Vec<String>) -> Self {
        Self {
            rootfs: rootfs.into(),
            args,
            env: Vec::new(),
            cwd: "/".into(),
            user: String::new(),
            hostname: None,
            mounts: Vec::new(),
            network: NetworkMode::Default,
            security: SecurityMode::Sandbox,
            readonly_rootfs: false,
            extra_hosts: Vec::new(),
            secret_env: Vec::new(),
            rlimits: Vec::new(),
            valid_exit_codes: None,
            remove_mount_stubs_recursive: false,
        }
    }

    /// The command as BuildKit prints it in errors: the args joined by spaces.
    pub(crate) fn command_line(&self) -> String {
        self.args.join(" ")
    }
}

// Secret values stay out of logs and error reports.
impl fmt::Debug for ExecSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret_names: Vec<&str> = self.secret_env.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("ExecSpec")
            .field("rootfs", &self.rootfs)
            .field("args", &self.args)
            .field("env", &self.env)
            .field("cwd", &self.cwd)
            .field("user", &self.user)
            .field("hostname", &self.hostname)
            .field("mounts", &self.mounts)
            .field("network", &self.network)
            .field("security", &self.security)
            .field("readonly_rootfs", &self.readonly_rootfs)
            .field("extra_hosts", &self.extra_hosts)
            .field("secret_env", &secret_names)
            .field("rlimits", &self.rlimits)
            .field("valid_exit_codes", &self.valid_exit_codes)
            .field("remove_mount_stubs_recursive", &self.remove_mount_stubs_recursive)
            .finish()
    }
}

/// One mount on top of the rootfs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ExecMount {
    /// Absolute path inside the container.
    pub dest: String,
    pub kind: MountKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MountKind {
    /// A host directory or file (a snapshot, a cache directory, a secret file,
    /// an SSH agent socket).
    Bind { source: PathBuf, readonly: bool },
    /// A fresh tmpfs; `size` in bytes.
    Tmpfs { size: Option<u64>, readonly: bool },
}

/// Which network the process sees (LLB `NetMode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum NetworkMode {
    /// The daemon's default: a namespace of its own on kilnd's bridge, with
    /// egress through NAT (or kilnd's own namespace when the daemon is
    /// configured for host networking); see [`network`].
    #[default]
    Default,
    /// A namespace of its own with only `lo`, which is up (`--network=none`).
    None,
    /// The daemon's network namespace (entitlement `network.host`).
    Host,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum SecurityMode {
    /// BuildKit's default capabilities, masked and read-only `/proc` paths.
    #[default]
    Sandbox,
    /// Privileged (entitlement `security.insecure`): every capability, no
    /// masked paths, writable `/sys`, device access.
    Insecure,
}

/// A POSIX resource limit, `name` as in `ulimit` (`nofile`, `nproc`, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rlimit {
    pub name: String,
    pub soft: u64,
    pub hard: u64,
}

/// Output streams, numbered as in BuildKit's `VertexLog.stream`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    /// The file descriptor number a `VertexLog` carries.
    pub(crate) fn fd(self) -> i64 {
        match self {
            Stream::Stdout => 1,
            Stream::Stderr => 2,
        }
    }
}

/// A piece of output as the process wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OutputChunk {
    pub stream: Stream,
    pub data: Bytes,
}

/// Where the process's stdio goes. Output from both streams arrives on one
/// channel in the order it was read; a full channel slows the process down,
/// a closed one discards what follows.
#[derive(Default)]
pub(crate) struct ProcessIo {
    /// `None` gives the process `/dev/null`, as BuildKit's `ExecOp` does.
    pub stdin: Option<Box<dyn AsyncRead + Send + Unpin>>,
    /// `None` discards output.
    pub output: Option<mpsc::Sender<OutputChunk>>,
}

impl ProcessIo {
    pub(crate) fn new(output: mpsc::Sender<OutputChunk>) -> Self {
        Self { stdin: None, output: Some(output) }
    }
}

impl fmt::Debug for ProcessIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessIo")
            .field("stdin", &self.stdin.is_some())
            .field("output", &self.output.is_some())
            .finish()
    }
}

/// How a process that ran ended. A non-zero exit is an outcome, not an
/// error: [`ExecOutcome::check`] turns it into one when the op says so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ExecOutcome {
    /// The exit code; 128+N when a signal N ended the process.
    pub exit_code: u32,
}

impl ExecOutcome {
    /// Ok when the exit code is one the spec accepts (only 0 by default).
    pub(crate) fn check(&self, spec: &ExecSpec) -> Result<(), ProcessFailed> {
        let ok = match &spec.valid_exit_codes {
            None => self.exit_code == 0,
            Some(codes) => codes.contains(&self.exit_code),
        };
        if ok {
            Ok(())
        } else {
            Err(ProcessFailed { command: spec.command_line(), exit_code: self.exit_code })
        }
    }
}

/// The process ran and exited with a code the op does not accept. The text
/// is BuildKit's (`solver/llbsolver/ops/exec.go`), which clients show as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("process {command:?} did not complete successfully: exit code: {exit_code}")]
pub(crate) struct ProcessFailed {
    pub command: String,
    pub exit_code: u32,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ExecutorError {
    #[error("exec op has no command to run")]
    NoArgs,
    #[error("creating executor state directory {path}: {source}")]
    CreateStateDir { path: PathBuf, source: io::Error },
    #[error("root filesystem {path}: {source}")]
    Rootfs { path: PathBuf, source: io::Error },
    #[error("creating bundle directory {path}: {source}")]
    CreateBundle { path: PathBuf, source: io::Error },
    #[error("writing {path}: {source}")]
    WriteFile { path: PathBuf, source: io::Error },
    #[error("encoding the OCI runtime config: {0}")]
    EncodeConfig(#[source] serde_json::Error),
    #[error("resolving {path:?} in root filesystem {root}: {source}")]
    ResolvePath { root: PathBuf, path: String, source: io::Error },
    #[error("resolving user {user:?}: {source}")]
    ResolveUser { user: String, source: UserError },
    #[error("failed to create working directory {path}: {source}")]
    CreateWorkdir { path: PathBuf, source: io::Error },
    #[error("reading the host's {path}: {source}")]
    ReadHostFile { path: PathBuf, source: io::Error },
    #[error("starting OCI runtime {binary}: {source}")]
    SpawnRuntime { binary: PathBuf, source: io::Error },
    #[error("waiting for container {id}: {source}")]
    Wait { id: String, source: io::Error },
    /// The runtime could not start the process (missing executable, bad
    /// mount, ...); `message` is the runtime's own.
    #[error("process {command:?} did not complete successfully: {message}")]
    Start { command: String, message: String },
    #[error("deleting container {id}: {message}")]
    Delete { id: String, message: String },
    #[error("container {id} was cancelled")]
    Cancelled { id: String },
    #[error("setting up the step's network: {0}")]
    Network(#[from] network::NetworkError),
}

/// Runs processes in containers.
#[async_trait]
pub(crate) trait Executor: Send + Sync {
    /// Runs `spec` to completion and reports how it exited. When `cancel`
    /// fires the container is killed and [`ExecutorError::Cancelled`] comes
    /// back; either way nothing of the container is left behind.
    async fn run(
        &self,
        spec: &ExecSpec,
        io: ProcessIo,
        cancel: CancellationToken,
    ) -> Result<ExecOutcome, ExecutorError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_exit_reads_like_buildkit() {
        let spec = ExecSpec::new("/rootfs", vec!["/bin/sh".into(), "-c".into(), "false".into()]);
        let err = ExecOutcome { exit_code: 1 }.check(&spec).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"process "/bin/sh -c false" did not complete successfully: exit code: 1"#
        );
        assert!(ExecOutcome { exit_code: 0 }.check(&spec).is_ok());
    }

    #[test]
    fn valid_exit_codes_replace_zero() {
        let mut spec = ExecSpec::new("/rootfs", vec!["true".into()]);
        spec.valid_exit_codes = Some(vec![3]);
        assert!(ExecOutcome { exit_code: 3 }.check(&spec).is_ok());
        assert!(ExecOutcome { exit_code: 0 }.check(&spec).is_err());
    }

    #[test]
    fn quotes_in_the_command_are_escaped() {
        let spec = ExecSpec::new("/r", vec!["/bin/sh".into(), "-c".into(), r#"echo "hi""#.into()]);
        let err = ExecOutcome { exit_code: 2 }.check(&spec).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"process "/bin/sh -c echo \"hi\"" did not complete successfully: exit code: 2"#
        );
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let mut spec = ExecSpec::new("/r", vec!["env".into()]);
        spec.secret_env.push(("TOKEN".into(), "hunter2".into()));
        let shown = format!("{spec:?}");
        assert!(shown.contains("TOKEN"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn streams_carry_buildkit_fd_numbers() {
        assert_eq!(Stream::Stdout.fd(), 1);
        assert_eq!(Stream::Stderr.fd(), 2);
    }
}
