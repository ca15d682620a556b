//! [`Executor`] on an OCI runtime binary (`runc`, or one that takes the same
//! command line): one bundle per exec, `runc run` in the foreground with the
//! process's stdio on pipes, `runc kill` on cancellation, `runc delete` and
//! bundle removal on every way out (`executor/runcexecutor/executor.go`
//! upstream).

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span, debug, instrument, warn};

use super::netfiles::{self, HOST_RESOLV_CONF};
use super::network::{Attachment, Networks};
use super::spec::{self, HostFacts, Inputs};
use super::stubs::MountStubs;
use super::user::{self, ExecUser};
use super::{
    DEFAULT_HOSTNAME, ExecOutcome, ExecSpec, Executor, ExecutorError, OutputChunk, ProcessIo, Stream, cgroup,
    rootpath,
};

const CONFIG: &str = "config.json";
const RUNTIME_LOG: &str = "runtime-log.json";
/// How often a kill is retried while the runtime is still creating the container.
const KILL_RETRY: Duration = Duration::from_millis(50);
/// How long a killed container may take to be reported gone before the
/// runtime process itself is killed (and `delete --force` finishes the job).
const KILL_GRACE: Duration = Duration::from_secs(10);
/// When no exit status can be had (upstream's `UnknownExitStatus`).
const UNKNOWN_EXIT: u32 = 255;

/// Runs each exec as its own container through an OCI runtime binary.
#[derive(Debug)]
pub struct RuncExecutor {
    runtime: PathBuf,
    /// The runtime's `--root`: its state for kilnd's containers only.
    runtime_root: PathBuf,
    bundles: PathBuf,
    host: HostFacts,
    networks: Networks,
    /// Makes container ids unique across daemons that share a host.
    instance: String,
    next: AtomicU64,
}

impl RuncExecutor {
    /// An executor keeping its bundles and the runtime's state under
    /// `state_dir`, its steps on `networks`, sandboxed steps under the default
    /// seccomp profile when the kernel has seccomp.
    pub fn new(
        runtime_binary: impl Into<PathBuf>,
        state_dir: impl Into<PathBuf>,
        networks: Networks,
    ) -> Result<Self, ExecutorError> {
        let state_dir = state_dir.into();
        let runtime: PathBuf = runtime_binary.into();
        let runtime_root = state_dir.join("runc");
        let bundles = state_dir.join("bundles");
        for dir in [&state_dir, &runtime_root, &bundles] {
            DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(dir)
                .map_err(|source| ExecutorError::CreateStateDir { path: dir.clone(), source })?;
        }
        remove_leftover_containers(&runtime, &runtime_root, &bundles);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
        let instance = format!("{:x}-{:x}", std::process::id(), nanos & 0xffff_ffff);
        Ok(Self {
            runtime,
            runtime_root,
            bundles,
            host: HostFacts::probe(),
            networks,
            instance,
            next: AtomicU64::new(1),
        })
    }

    /// Sandboxed steps run without a seccomp filter (for hosts whose
    /// runtime cannot apply one).
    pub fn without_seccomp(mut self) -> Self {
        self.host.seccomp = None;
        self
    }

    /// Steps share kilnd's process namespace and its `/proc`
    /// (`--oci-worker-no-process-sandbox`).
    pub fn without_process_sandbox(mut self) -> Self {
        self.host.process_sandbox = false;
        self
    }

    /// Whether sandboxed steps get the default seccomp profile.
    pub fn seccomp(&self) -> bool {
        self.host.seccomp.is_some()
    }

    fn new_id(&self) -> String {
        format!("kiln-{}-{}", self.instance, self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// Everything before the runtime starts: user, working directory, the
    /// generated network files and `config.json` in the bundle.
    fn prepare(
        &self,
        exec: &ExecSpec,
        network: &Attachment,
        container: &mut Container,
    ) -> Result<(), ExecutorError> {
        match fs::metadata(&exec.rootfs) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(ExecutorError::Rootfs {
                    path: exec.rootfs.clone(),
                    source: io::Error::from(io::ErrorKind::NotADirectory),
                });
            }
            Err(source) => return Err(ExecutorError::Rootfs { path: exec.rootfs.clone(), source }),
        }
        DirBuilder::new()
            .mode(0o711)
            .create(&container.bundle)
            .map_err(|source| ExecutorError::CreateBundle { path: container.bundle.clone(), source })?;
        container.bundle_created = true;

        let user = user::resolve(&exec.rootfs, &exec.user)
            .map_err(|source| ExecutorError::ResolveUser { user: exec.user.clone(), source })?;
        let cwd = spec::clean_container_path(&exec.cwd);
        ensure_workdir(&exec.rootfs, &cwd, &user)?;

        let mut dests = vec!["/etc/resolv.conf".to_owned(), "/etc/hosts".to_owned()];
        dests.extend(exec.mounts.iter().map(|m| spec::clean_container_path(&m.dest)));
        container.stubs = Some(MountStubs::record(
            &exec.rootfs,
            dests.iter().map(String::as_str),
            exec.remove_mount_stubs_recursive,
        ));

        let hostname = exec.hostname.as_deref().filter(|h| !h.is_empty()).unwrap_or(DEFAULT_HOSTNAME);
        let hosts_file = container.bundle.join("hosts");
        write_file(&hosts_file, netfiles::hosts_file(hostname, &exec.extra_hosts).as_bytes(), 0o644)?;
        let resolv_conf = container.bundle.join("resolv.conf");
        write_file(&resolv_conf, container_resolv_conf(network.is_host())?.as_bytes(), 0o644)?;

        // Rootless steps get no cgroup (the spec has no `cgroupsPath`), so
        // there is none to remove.
        if !self.host.rootless {
            container.cgroup_bases = cgroup::own_cgroup_dirs().unwrap_or_else(|e| {
                warn!(error = %e, "cannot read this process's cgroups; leftover cgroup directories will not be removed");
                Vec::new()
            });
        }
        let config = spec::generate(&Inputs {
            exec,
            user: &user,
            cwd: &cwd,
            hosts_file: &hosts_file,
            resolv_conf: &resolv_conf,
            // Relative, so the container nests under kilnd's own cgroup.
            cgroups_path: &container.id,
            host: &self.host,
            network: (!network.is_host()).then(|| network.namespace_path()),
        });
        let json = serde_json::to_vec(&config).map_err(ExecutorError::EncodeConfig)?;
        // The environment may hold secrets.
        write_file(&container.bundle.join(CONFIG), &json, 0o600)
    }

    /// Starts the runtime and waits for the process, or kills it on `cancel`.
    async fn execute(
        &self,
        exec: &ExecSpec,
        container: &mut Container,
        io: ProcessIo,
        cancel: CancellationToken,
    ) -> Result<ExecOutcome, ExecutorError> {
        let log = container.bundle.join(RUNTIME_LOG);
        let mut command = Command::new(&self.runtime);
        command
            .arg("--root")
            .arg(&self.runtime_root)
            .arg("--log")
            .arg(&log)
            .args(["--log-format", "json", "run", "--pid-file"])
            .arg(container.bundle.join(INIT_PID_FILE))
            .arg("--bundle")
            .arg(&container.bundle)
            .arg(&container.id)
            .stdin(if io.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Keeps a Ctrl-C meant for kilnd away from the runtime.
            .process_group(0);
        let mut child = command
            .spawn()
            .map_err(|source| ExecutorError::SpawnRuntime { binary: self.runtime.clone(), source })?;
        container.spawned = true;
        let pid_file = container.bundle.join(INIT_PID_FILE);
        let reaper = (!self.host.process_sandbox)
            .then(|| tokio::spawn(end_group_after_init(pid_file.clone()).instrument(Span::current())));

        let pumps = [
            spawn_pump(child.stdout.take(), Stream::Stdout, io.output.clone()),
            spawn_pump(child.stderr.take(), Stream::Stderr, io.output),
        ];
        let feeder = match (io.stdin, child.stdin.take()) {
            (Some(mut input), Some(mut pipe)) => Some(tokio::spawn(
                async move {
                    if let Err(e) = tokio::io::copy(&mut input, &mut pipe).await {
                        debug!(error = %e, "feeding stdin stopped");
                    }
                }
                .instrument(Span::current()),
            )),
            _ => None,
        };

        let waited = tokio::select! {
            status = child.wait() => Some(status),
            () = cancel.cancelled() => None,
        };
        if let Some(feeder) = feeder {
            feeder.abort();
        }
        if let Some(reaper) = reaper {
            reaper.abort();
        }
        let Some(status) = waited else {
            if !self.host.process_sandbox {
                kill_init_group(&pid_file);
            }
            self.kill(&container.id, &mut child).await;
            for pump in pumps.into_iter().flatten() {
                pump.abort();
            }
            return Err(ExecutorError::Cancelled { id: container.id.clone() });
        };
        let status = status.map_err(|source| ExecutorError::Wait { id: container.id.clone(), source })?;
        // The runtime has exited, so every process of the container is gone
        // and the pipes end.
        for pump in pumps.into_iter().flatten() {
            if let Err(e) = pump.await {
                warn!(error = %e, "output pump failed");
            }
        }
        let exit_code = exit_code(status);
        if exit_code != 0
            && let Some(message) = runtime_error(&log)
        {
            return Err(ExecutorError::Start { command: exec.command_line(), message });
        }
        Ok(ExecOutcome { exit_code })
    }

    /// Kills the container's process and waits for the runtime to report it
    /// gone. Until the runtime has created the container there is nothing to
    /// kill, so the kill is retried.
    async fn kill(&self, id: &str, child: &mut Child) {
        let deadline = tokio::time::Instant::now() + KILL_GRACE;
        loop {
            let killed = Command::new(&self.runtime)
                .arg("--root")
                .arg(&self.runtime_root)
                .args(["kill", id, "KILL"])
                .stdin(Stdio::null())
                .output()
                .await
                .map(|out| out.status.success())
                .unwrap_or(false);
            if killed || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::select! {
                _ = child.wait() => return,
                () = tokio::time::sleep(KILL_RETRY) => {}
            }
        }
        if tokio::time::timeout_at(deadline, child.wait()).await.is_err() {
            warn!(container.id = id, "runtime did not exit after kill; killing it");
            if let Err(e) = child.start_kill() {
                warn!(error = %e, "killing the runtime process");
            }
            if let Err(e) = child.wait().await {
                warn!(error = %e, "waiting for the killed runtime process");
            }
        }
    }
}

/// Where the runtime writes the pid of a step's first process.
const INIT_PID_FILE: &str = "init.pid";

/// Without a process sandbox a step has no process namespace whose end
/// ends its processes: what its first process leaves running (in the
/// session and process group the runtime gives that process) would keep
/// the step, and the runtime waiting for it, alive. Once the first process
/// has exited, the rest of its group is killed, as BuildKit does in this
/// mode. Polled: the pid is only known from the runtime's pid file.
async fn end_group_after_init(pid_file: PathBuf) {
    let pid = loop {
        if let Some(pid) = read_pid(&pid_file) {
            break pid;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    while nix::sys::signal::kill(pid, None).is_ok() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    kill_group(pid);
}

/// Kills the process group of a step's first process, if it has started.
fn kill_init_group(pid_file: &Path) {
    if let Some(pid) = read_pid(pid_file) {
        kill_group(pid);
    }
}

fn read_pid(pid_file: &Path) -> Option<nix::unistd::Pid> {
    let text = fs::read_to_string(pid_file).ok()?;
    text.trim().parse::<i32>().ok().filter(|p| *p > 1).map(nix::unistd::Pid::from_raw)
}

fn kill_group(pid: nix::unistd::Pid) {
    match nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => warn!(error = %e, "killing what a step left running"),
    }
}

#[async_trait]
impl Executor for RuncExecutor {
    #[instrument(skip_all, fields(container.id = tracing::field::Empty))]
    async fn run(
        &self,
        spec: &ExecSpec,
        io: ProcessIo,
        cancel: CancellationToken,
    ) -> Result<ExecOutcome, ExecutorError> {
        if spec.args.is_empty() {
            return Err(ExecutorError::NoArgs);
        }
        let id = self.new_id();
        Span::current().record("container.id", id.as_str());
        if cancel.is_cancelled() {
            return Err(ExecutorError::Cancelled { id });
        }
        let mut container = Container::new(self, id);
        let outcome = match self.networks.attach(spec.network, spec.security).await {
            Ok(network) => {
                let prepared = self.prepare(spec, &network, &mut container);
                // Given back only once the container's processes are gone.
                container.network = Some(network);
                match prepared {
                    Ok(()) => self.execute(spec, &mut container, io, cancel).await,
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e.into()),
        };
        let id = container.id.clone();
        let released = tokio::task::spawn_blocking(move || container.release())
            .await
            .unwrap_or_else(|e| Err(ExecutorError::Delete { id, message: e.to_string() }));
        match (outcome, released) {
            (Err(e), Err(cleanup)) => {
                warn!(error = %cleanup, "cleaning up after a failed exec");
                Err(e)
            }
            (Err(e), Ok(())) | (Ok(_), Err(e)) => Err(e),
            (Ok(outcome), Ok(())) => Ok(outcome),
        }
    }
}

/// One container's footprint, removed on every way out: after the run, on
/// errors, and when the caller drops the future mid-run.
#[derive(Debug)]
struct Container {
    runtime: PathBuf,
    runtime_root: PathBuf,
    id: String,
    bundle: PathBuf,
    bundle_created: bool,
    spawned: bool,
    cgroup_bases: Vec<PathBuf>,
    stubs: Option<MountStubs>,
    network: Option<Attachment>,
    released: bool,
}

impl Container {
    fn new(executor: &RuncExecutor, id: String) -> Self {
        Self {
            runtime: executor.runtime.clone(),
            runtime_root: executor.runtime_root.clone(),
            bundle: executor.bundles.join(&id),
            id,
            bundle_created: false,
            spawned: false,
            cgroup_bases: Vec::new(),
            stubs: None,
            network: None,
            released: false,
        }
    }

    /// Deletes the container (killing it if it still runs), then removes its
    /// cgroup directories, mount stubs and bundle. Blocking.
    fn release(&mut self) -> Result<(), ExecutorError> {
        if self.released {
            return Ok(());
        }
        self.released = true;
        let deleted = if self.spawned { self.delete() } else { Ok(()) };
        if self.spawned {
            cgroup::remove_leftovers(&self.cgroup_bases, &self.id);
        }
        self.network = None;
        if let Some(stubs) = &self.stubs {
            stubs.remove();
        }
        if self.bundle_created
            && let Err(e) = fs::remove_dir_all(&self.bundle)
            && e.kind() != io::ErrorKind::NotFound
        {
            warn!(bundle = %self.bundle.display(), error = %e, "removing bundle");
        }
        deleted
    }

    fn delete(&self) -> Result<(), ExecutorError> {
        let out = std::process::Command::new(&self.runtime)
            .arg("--root")
            .arg(&self.runtime_root)
            .args(["delete", "--force", &self.id])
            .stdin(Stdio::null())
            .output();
        let message = match out {
            Ok(out) if out.status.success() => return Ok(()),
            Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            Err(e) => e.to_string(),
        };
        // `runc run` deletes what it ran; a container that is gone is fine.
        if self.runtime_root.join(&self.id).exists() {
            Err(ExecutorError::Delete { id: self.id.clone(), message })
        } else {
            Ok(())
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            warn!(error = %e, "cleaning up a dropped exec");
        }
    }
}

/// Creates a missing working directory and the parents it needs, owned by
/// the process's user with mode 0755, as BuildKit does.
fn ensure_workdir(rootfs: &Path, cwd: &str, user: &ExecUser) -> Result<(), ExecutorError> {
    let host = rootpath::resolve(rootfs, cwd).map_err(|source| ExecutorError::ResolvePath {
        root: rootfs.to_path_buf(),
        path: cwd.to_owned(),
        source,
    })?;
    if fs::metadata(&host).is_ok() {
        return Ok(());
    }
    let missing: Vec<&Path> =
        host.ancestors().take_while(|p| *p != rootfs && fs::symlink_metadata(p).is_err()).collect();
    let fail = |source| ExecutorError::CreateWorkdir { path: PathBuf::from(cwd), source };
    fs::create_dir_all(&host).map_err(fail)?;
    for dir in missing {
        std::os::unix::fs::chown(dir, Some(user.uid), Some(user.gid)).map_err(fail)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(fail)?;
    }
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ExecutorError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|source| ExecutorError::WriteFile { path: path.to_path_buf(), source })
}

fn read_host_file(path: &Path) -> Result<String, ExecutorError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(ExecutorError::ReadHostFile { path: path.to_path_buf(), source }),
    }
}

fn container_resolv_conf(host_network: bool) -> Result<String, ExecutorError> {
    let etc = read_host_file(Path::new(HOST_RESOLV_CONF))?;
    let source = netfiles::host_source(&etc, host_network);
    let host = if source == HOST_RESOLV_CONF { etc } else { read_host_file(Path::new(source))? };
    Ok(netfiles::resolv_conf(&host, host_network))
}

fn spawn_pump(
    pipe: Option<impl AsyncRead + Unpin + Send + 'static>,
    stream: Stream,
    mut sink: Option<mpsc::Sender<OutputChunk>>,
) -> Option<JoinHandle<()>> {
    let mut pipe = pipe?;
    let task = async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = match pipe.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    debug!(error = %e, ?stream, "reading process output");
                    break;
                }
            };
            if let Some(tx) = &sink {
                let chunk = OutputChunk { stream, data: Bytes::copy_from_slice(&buf[..n]) };
                // A receiver that went away stops the forwarding, not the
                // draining: the process must never block on a full pipe.
                if tx.send(chunk).await.is_err() {
                    sink = None;
                }
            }
        }
    };
    Some(tokio::spawn(task.instrument(Span::current())))
}

/// The runtime passes the process's exit code through; a signal N reads as
/// 128+N like a shell reports it.
fn exit_code(status: ExitStatus) -> u32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u32::try_from(code).unwrap_or(UNKNOWN_EXIT),
        (None, Some(signal)) => 128 + u32::try_from(signal).unwrap_or(0),
        (None, None) => UNKNOWN_EXIT,
    }
}

#[derive(Deserialize)]
struct LogLine {
    level: String,
    msg: String,
}

/// The runtime's own error, if it failed to run the process (rather than
/// the process exiting non-zero, which logs nothing).
fn runtime_error(log: &Path) -> Option<String> {
    let text = fs::read_to_string(log).ok()?;
    text.lines()
        .filter_map(|line| serde_json::from_str::<LogLine>(line).ok())
        .rfind(|l| l.level == "error" || l.level == "fatal")
        .map(|l| l.msg)
}

/// Containers and bundles of an earlier kilnd that was killed: its steps'
/// processes are killed and their state removed before this one starts. The
/// state directory belongs to one daemon (its root is locked), so nothing
/// here is anybody else's.
fn remove_leftover_containers(runtime: &Path, runtime_root: &Path, bundles: &Path) {
    let runc = |args: &[&str]| {
        std::process::Command::new(runtime)
            .arg("--root")
            .arg(runtime_root)
            .args(args)
            .stdin(Stdio::null())
            .output()
    };
    if let Ok(out) = runc(&["list", "-q"]) {
        for id in String::from_utf8_lossy(&out.stdout).lines().map(str::trim).filter(|l| !l.is_empty()) {
            warn!(container = id, "removing a container left by an earlier kilnd");
            let _ = runc(&["kill", id, "KILL"]);
            let _ = runc(&["delete", "--force", id]);
        }
    }
    if let Ok(entries) = fs::read_dir(bundles) {
        for entry in entries.flatten() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::os::unix::fs::MetadataExt;
    use std::time::Instant;

    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use std::sync::Arc;

    use super::*;
    use crate::executor::network::NetworkConfig;
    use crate::executor::{ExecMount, MountKind, NetworkMode, Rlimit, SecurityMode};

    const RUNC: &str = "/usr/sbin/runc";
    const BUSYBOX: &str = "/bin/busybox";

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nkiln:x:1000:1000:Kiln:/home/kiln:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:kiln\nstaff:x:50:\nkiln:x:1000:\n";

    /// A busybox root filesystem and an executor with its own state, so
    /// tests run in parallel without seeing each other's containers.
    struct Harness {
        dir: tempfile::TempDir,
        rootfs: PathBuf,
        executor: RuncExecutor,
    }

    #[derive(Debug)]
    struct Ran {
        result: Result<ExecOutcome, ExecutorError>,
        stdout: String,
        stderr: String,
    }

    impl Ran {
        fn code(&self) -> u32 {
            match &self.result {
                Ok(outcome) => outcome.exit_code,
                Err(e) => panic!("exec failed: {e}; stderr: {}", self.stderr),
            }
        }
    }

    impl Harness {
        /// Steps default to kilnd's own network.
        fn new() -> Self {
            Self::with_networks(Networks::host())
        }

        /// Steps default to a bridge of their own; `guarded` are ports
        /// steps may not connect to.
        async fn with_bridge(guarded: Vec<u16>) -> Self {
            let config = NetworkConfig { pool_size: 1, protected_ports: guarded, ..NetworkConfig::default() };
            Self::with_networks(Networks::start(&config).await.unwrap())
        }

        fn with_networks(networks: Networks) -> Self {
            assert!(
                Path::new(RUNC).exists() && Path::new(BUSYBOX).exists() && is_root(),
                "these tests need root, {RUNC} (Debian runc) and {BUSYBOX} (Debian busybox-static)"
            );
            let dir = tempfile::tempdir().unwrap();
            let rootfs = dir.path().join("rootfs");
            fs::create_dir(&rootfs).unwrap();
            // A non-root process must be able to reach its own `/`.
            fs::set_permissions(&rootfs, fs::Permissions::from_mode(0o755)).unwrap();
            fs::create_dir(rootfs.join("bin")).unwrap();
            fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
            let list = std::process::Command::new(BUSYBOX).arg("--list-full").output().unwrap();
            for applet in String::from_utf8(list.stdout).unwrap().lines() {
                let path = rootfs.join(applet);
                if path.symlink_metadata().is_ok() {
                    continue;
                }
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::os::unix::fs::symlink("/bin/busybox", &path).unwrap();
            }
            fs::create_dir_all(rootfs.join("etc")).unwrap();
            fs::create_dir_all(rootfs.join("tmp")).unwrap();
            fs::write(rootfs.join("etc/passwd"), PASSWD).unwrap();
            fs::write(rootfs.join("etc/group"), GROUP).unwrap();
            let executor = RuncExecutor::new(RUNC, dir.path().join("state"), networks).unwrap();
            Self { dir, rootfs, executor }
        }

        fn spec(&self, script: &str) -> ExecSpec {
            ExecSpec::new(&self.rootfs, vec!["/bin/sh".into(), "-c".into(), script.into()])
        }

        async fn run(&self, spec: &ExecSpec) -> Ran {
            self.run_with(spec, None, CancellationToken::new()).await
        }

        async fn run_with(
            &self,
            spec: &ExecSpec,
            stdin: Option<Box<dyn AsyncRead + Send + Unpin>>,
            cancel: CancellationToken,
        ) -> Ran {
            let (tx, rx) = mpsc::channel(16);
            let collect = tokio::spawn(collect(rx));
            let result = self.executor.run(spec, ProcessIo { stdin, output: Some(tx) }, cancel).await;
            let out = collect.await.unwrap();
            Ran { result, stdout: out[&Stream::Stdout].clone(), stderr: out[&Stream::Stderr].clone() }
        }

        /// No container, bundle or cgroup directory of this executor is left.
        fn assert_clean(&self) {
            let list = std::process::Command::new(RUNC)
                .arg("--root")
                .arg(&self.executor.runtime_root)
                .args(["list", "-q"])
                .output()
                .unwrap();
            assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
            assert_eq!(String::from_utf8_lossy(&list.stdout).trim(), "", "containers left");
            let bundles: Vec<_> = fs::read_dir(&self.executor.bundles).unwrap().collect();
            assert!(bundles.is_empty(), "bundles left: {bundles:?}");
            let prefix = format!("kiln-{}-", self.executor.instance);
            for base in cgroup::own_cgroup_dirs().unwrap() {
                for entry in fs::read_dir(&base).unwrap() {
                    let name = entry.unwrap().file_name();
                    assert!(!name.to_string_lossy().starts_with(&prefix), "cgroup left: {}", base.display());
                }
            }
        }
    }

    fn is_root() -> bool {
        fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
    }

    async fn collect(mut rx: mpsc::Receiver<OutputChunk>) -> HashMap<Stream, String> {
        let mut out = HashMap::from([(Stream::Stdout, String::new()), (Stream::Stderr, String::new())]);
        while let Some(chunk) = rx.recv().await {
            out.get_mut(&chunk.stream).unwrap().push_str(&String::from_utf8_lossy(&chunk.data));
        }
        out
    }

    #[tokio::test]
    async fn output_arrives_on_its_own_stream() {
        let h = Harness::new();
        let ran = h.run(&h.spec("echo to-out; echo to-err >&2; echo more-out")).await;
        assert_eq!(ran.code(), 0);
        assert_eq!(ran.stdout, "to-out\nmore-out\n");
        assert_eq!(ran.stderr, "to-err\n");
        h.assert_clean();
    }

    #[tokio::test]
    async fn exit_codes_come_back_and_read_like_buildkit() {
        let h = Harness::new();
        let spec = h.spec("exit 3");
        let ran = h.run(&spec).await;
        assert_eq!(ran.code(), 3);
        let err = ran.result.unwrap().check(&spec).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"process "/bin/sh -c exit 3" did not complete successfully: exit code: 3"#
        );
        h.assert_clean();
    }

    #[test]
    fn a_runtime_ended_by_a_signal_reads_as_128_plus_n() {
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
    }

    #[tokio::test]
    async fn env_cwd_and_default_path() {
        let h = Harness::new();
        let mut spec = h.spec(r#"echo "$FOO|$PATH|$(pwd)|$HOME|$TOKEN""#);
        spec.env = vec!["FOO=bar baz".into()];
        spec.cwd = "/work/sub".into();
        spec.secret_env = vec![("TOKEN".into(), "s3cret".into())];
        let ran = h.run(&spec).await;
        assert_eq!(ran.code(), 0, "{}", ran.stderr);
        assert_eq!(ran.stdout, format!("bar baz|{}|/work/sub|/root|s3cret\n", crate::executor::DEFAULT_PATH));
        assert!(h.rootfs.join("work/sub").is_dir());
        h.assert_clean();
    }

    #[tokio::test]
    async fn users_resolve_from_the_images_files() {
        let h = Harness::new();
        let cases = [
            ("", "uid=0(root) gid=0(root) groups=0(root)"),
            // The kernel keeps supplementary groups sorted.
            ("kiln", "uid=1000(kiln) gid=1000(kiln) groups=10(wheel),1000(kiln)"),
            ("1000", "uid=1000(kiln) gid=1000(kiln) groups=10(wheel),1000(kiln)"),
            ("1000:50", "uid=1000(kiln) gid=50(staff) groups=50(staff)"),
            ("kiln:staff", "uid=1000(kiln) gid=50(staff) groups=50(staff)"),
            ("4242", "uid=4242 gid=0(root) groups=0(root)"),
        ];
        for (user, expected) in cases {
            let mut spec = ExecSpec::new(&h.rootfs, vec!["id".into()]);
            spec.user = user.into();
            let ran = h.run(&spec).await;
            assert_eq!(ran.code(), 0, "{user}: {}", ran.stderr);
            assert_eq!(ran.stdout.trim(), expected, "user {user:?}");
        }

        let mut spec = ExecSpec::new(&h.rootfs, vec!["id".into()]);
        spec.user = "nobody".into();
        let err = h.run(&spec).await.result.unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"resolving user "nobody": unable to find user nobody: no matching entries in passwd file"#
        );
        h.assert_clean();
    }

    #[tokio::test]
    async fn a_missing_workdir_is_created_for_the_user() {
        let h = Harness::new();
        let mut spec = h.spec("pwd; touch mine");
        spec.user = "kiln".into();
        spec.cwd = "/home/kiln/project".into();
        let ran = h.run(&spec).await;
        assert_eq!(ran.code(), 0, "{}", ran.stderr);
        assert_eq!(ran.stdout, "/home/kiln/project\n");
        for dir in ["home", "home/kiln", "home/kiln/project"] {
            let meta = fs::metadata(h.rootfs.join(dir)).unwrap();
            assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o777), (1000, 1000, 0o755), "{dir}");
        }
        assert_eq!(fs::metadata(h.rootfs.join("home/kiln/project/mine")).unwrap().uid(), 1000);
        h.assert_clean();
    }

    #[tokio::test]
    async fn bind_and_tmpfs_mounts() {
        let h = Harness::new();
        let ro = h.dir.path().join("ro");
        let rw = h.dir.path().join("rw");
        fs::create_dir_all(&ro).unwrap();
        fs::create_dir_all(&rw).unwrap();
        fs::write(ro.join("file"), "from-host\n").unwrap();
        let mut spec = h.spec(
            "cat /mnt/ro/file; touch /mnt/ro/new 2>/dev/null && echo ro-writable; \
             echo written > /mnt/rw/new; grep ' /mnt/tmp ' /proc/mounts | cut -d' ' -f3",
        );
        spec.mounts = vec![
            ExecMount {
                dest: "/mnt/ro".into(),
                kind: MountKind::Bind { source: ro.clone(), readonly: true },
            },
            ExecMount {
                dest: "/mnt/rw".into(),
                kind: MountKind::Bind { source: rw.clone(), readonly: false },
            },
            ExecMount {
                dest: "/mnt/tmp".into(),
                kind: MountKind::Tmpfs { size: Some(1 << 20), readonly: false },
            },
        ];
        let ran = h.run(&spec).await;
        assert_eq!(ran.code(), 0, "{}", ran.stderr);
        assert_eq!(ran.stdout, "from-host\ntmpfs\n");
        assert!(!ro.join("new").exists());
        assert_eq!(fs::read_to_string(rw.join("new")).unwrap(), "written\n");
        // The mount points the runtime had to create are not left in the rootfs.
        for stub in ["mnt/ro", "mnt/rw", "mnt/tmp", "etc/hosts", "etc/resolv.conf"] {
            assert!(!h.rootfs.join(stub).exists(), "{stub} left in the rootfs");
        }
        assert!(h.rootfs.join("mnt").is_dir());

        spec.remove_mount_stubs_recursive = true;
        fs::remove_dir(h.rootfs.join("mnt")).unwrap();
        assert_eq!(h.run(&spec).await.code(), 0);
        assert!(!h.rootfs.join("mnt").exists());
        h.assert_clean();
    }

    /// A TCP server on `addr` that answers `pong` to whatever it reads.
    async fn pong_server(addr: &str) -> (u16, JoinHandle<()>) {
        let listener = TcpListener::bind(addr).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 5];
                if conn.read_exact(&mut buf).await.is_ok() {
                    let _ = conn.write_all(b"pong\n").await;
                }
            }
        });
        (port, server)
    }

    #[tokio::test]
    async fn network_none_has_only_loopback_and_host_shares_kilnds() {
        let h = Harness::new();
        let (port, server) = pong_server("127.0.0.1:0").await;

        let mut spec = h.spec("ip link; ip addr show lo");
        spec.network = NetworkMode::None;
        let ran = h.run(&spec).await;
        assert_eq!(ran.code(), 0, "{}", ran.stderr);
        let links: Vec<&str> = ran.stdout.lines().filter(|l| !l.starts_with(' ')).collect();
        assert_eq!(links.len(), 2, "{}", ran.stdout);
        assert!(links[0].starts_with("1: lo: <LOOPBACK,UP,LOWER_UP>"), "{}", ran.stdout);
        assert!(ran.stdout.contains("inet 127.0.0.1/8"), "{}", ran.stdout);

        let talk = format!("echo ping | nc -w 2 127.0.0.1 {port}");
        let mut spec = h.spec(&talk);
        spec.network = NetworkMode::None;
        let ran = h.run(&spec).await;
        assert_ne!(ran.code(), 0, "reached the host from --network=none: {}", ran.stdout);
        assert_eq!(ran.stdout, "");

        let mut spec = h.spec(&talk);
        spec.network = NetworkMode::Host;
        let ran = h.run(&spec).await;
        assert_eq!(ran.code(), 0, "{}", ran.stderr);
        assert_eq!(ran.stdout, "pong\n");
        server.abort();
        h.assert_clean();
    }

    #[tokio::test]
    async fn the_default_network_is_a_bridge_with_egress_that_guards_kilnd_and_other_steps() {
        let (guarded, guarded_server) = pong_server("0.0.0.0:0").await;
        let h = Harness::with_bridge(vec![guarded]).await;
        let bridge = Arc::clone(h.executor.networks.bridge().unwrap());
        let gateway = bridge.gateway();
        let (open, open_server) = pong_server("0.0.0.0:0").await;

        // An address of the bridge's subnet, a default route, a server of
        // the host on a non-loopback address, and not kilnd's own port.
        let script = format!(
            "ip -o -4 addr show eth0 | awk '{{print $4}}'; ip route | grep default; \
             echo ping | nc -w 2 {gateway} {open}; \
             echo ping | nc -w 2 {gateway} {guarded} || echo refused"
        );
        let ran = h.run(&h.spec(&script)).await;
        assert_eq!(ran.code(), 0, "{}", ran.stderr);
        let lines: Vec<&str> = ran.stdout.lines().collect();
        let address: ipnet::Ipv4Net = lines[0].parse().unwrap();
        assert!(bridge.subnet().contains(&address.addr()), "{address} outside {}", bridge.subnet());
        assert_eq!(address.prefix_len(), bridge.subnet().prefix_len());
        assert!(lines[1].starts_with(&format!("default via {gateway} dev eth0")), "{}", ran.stdout);
        assert_eq!(&lines[2..], ["pong", "refused"], "{}", ran.stdout);

        // Two steps at once: the second cannot reach the first.
        let cancel = CancellationToken::new();
        let (tx, mut rx) = mpsc::channel(16);
        let listener = h.spec("ip -o -4 addr show eth0 | awk '{print $4}' | cut -d/ -f1; nc -l -p 8080");
        let first = h.executor.run(&listener, ProcessIo::new(tx), cancel.clone());
        let second = async {
            let chunk = rx.recv().await.expect("the listening step printed its address");
            let ip = String::from_utf8_lossy(&chunk.data).trim().to_owned();
            let reach = |target: &str, port: u16| {
                h.spec(&format!("echo ping | nc -w 2 {target} {port} && echo reached || echo unreachable"))
            };
            let other = h.run(&reach(&ip, 8080)).await;
            // The same command reaches the host, so it is the step that is out of reach.
            let host = h.run(&reach(&gateway.to_string(), open)).await;
            cancel.cancel();
            (other.stdout, host.stdout)
        };
        let (first, (other, host)) = tokio::join!(first, second);
        assert!(matches!(first, Err(ExecutorError::Cancelled { .. })), "{first:?}");
        assert_eq!(other, "unreachable\n");
        assert_eq!(host, "pong\nreached\n");

        guarded_server.abort();
        open_server.abort();
        h.executor.networks.stop().await;
        h.assert_clean();
    }

    #[tokio::test]
    async fn hostname_hosts_and_resolv_conf() {
        let h = Harness::new();
        let script = "hostname; cat /etc/hosts; echo ---; cat /etc/resolv.conf";
        let ran = h.run(&h.spec(script)).await;
        assert_eq!(ran.code(), 0, "{}", ran.stderr);
        let expected_resolv = container_resolv_conf(true).unwrap();
        assert_eq!(
            ran.stdout,
            format!(
                "buildkitsandbox\n127.0.0.1\tlocalhost buildkitsandbox\n\
                 ::1\tlocalhost ip6-localhost ip6-loopback\n---\n{expected_resolv}"
            )
        );

        let mut spec = h.spec("hostname; grep db /etc/hosts");
        spec.hostname = Some("kiln-box".into());
        spec.extra_hosts = vec![("db".into(), "10.9.8.7".parse().unwrap())];
        let ran = h.run(&spec).await;
        assert_eq!(ran.stdout, "kiln-box\n10.9.8.7\tdb\n");
        h.assert_clean();
    }

    #[tokio::test]
    async fn stdin_reaches_the_process() {
        let h = Harness::new();
        let spec = ExecSpec::new(&h.rootfs, vec!["cat".into()]);
        let input: Box<dyn AsyncRead + Send + Unpin> = Box::new(&b"hello stdin"[..]);
        let ran = h.run_with(&spec, Some(input), CancellationToken::new()).await;
        assert_eq!(ran.code(), 0);
        assert_eq!(ran.stdout, "hello stdin");
        h.assert_clean();
    }

    #[tokio::test]
    async fn rlimits_apply() {
        let h = Harness::new();
        let mut spec = h.spec("ulimit -n");
        spec.rlimits = vec![Rlimit { name: "nofile".into(), soft: 512, hard: 1024 }];
        let ran = h.run(&spec).await;
        assert_eq!(ran.stdout, "512\n", "{}", ran.stderr);
        h.assert_clean();
    }

    #[tokio::test]
    async fn cancellation_kills_promptly_and_leaves_nothing() {
        let h = Harness::new();
        let spec = h.spec("echo started; sleep 60");
        let cancel = CancellationToken::new();
        let (tx, mut rx) = mpsc::channel(16);
        let run = h.executor.run(&spec, ProcessIo::new(tx), cancel.clone());
        let watcher = async {
            while let Some(chunk) = rx.recv().await {
                if chunk.data.starts_with(b"started") {
                    let at = Instant::now();
                    cancel.cancel();
                    return Some(at);
                }
            }
            None
        };
        let (result, cancelled_at) = tokio::join!(run, watcher);
        let took = cancelled_at.expect("the process never started").elapsed();
        assert!(matches!(result, Err(ExecutorError::Cancelled { .. })), "{result:?}");
        assert!(took < Duration::from_secs(2), "cancellation took {took:?}");
        h.assert_clean();
    }

    #[tokio::test]
    async fn cancelling_before_or_while_the_container_starts_still_cleans_up() {
        let h = Harness::new();
        let cancel = CancellationToken::new();
        cancel.cancel();
        let result = h.executor.run(&h.spec("sleep 60"), ProcessIo::default(), cancel).await;
        assert!(matches!(result, Err(ExecutorError::Cancelled { .. })), "{result:?}");

        // Cancelled while the runtime is still creating the container, when
        // there is nothing to kill yet.
        for delay_ms in [0, 5, 20] {
            let cancel = CancellationToken::new();
            let trigger = cancel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                trigger.cancel();
            });
            let started = Instant::now();
            let result = h.executor.run(&h.spec("sleep 60"), ProcessIo::default(), cancel).await;
            assert!(matches!(result, Err(ExecutorError::Cancelled { .. })), "{result:?}");
            assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
        }
        h.assert_clean();
    }

    #[tokio::test]
    async fn dropping_the_run_mid_way_leaves_nothing() {
        let h = Harness::new();
        let spec = h.spec("echo started; sleep 60");
        let (tx, mut rx) = mpsc::channel(16);
        let run = h.executor.run(&spec, ProcessIo::new(tx), CancellationToken::new());
        tokio::select! {
            _ = run => panic!("sleep 60 finished"),
            _ = rx.recv() => {}
        }
        h.assert_clean();
    }

    #[tokio::test]
    async fn a_missing_command_is_a_clear_error() {
        let h = Harness::new();
        let spec = ExecSpec::new(&h.rootfs, vec!["no-such-tool".into(), "--flag".into()]);
        let err = h.run(&spec).await.result.unwrap_err();
        assert_eq!(
            err.to_string(),
            "process \"no-such-tool --flag\" did not complete successfully: runc run failed: unable to start \
             container process: exec: \"no-such-tool\": executable file not found in $PATH"
        );
        let empty = ExecSpec::new(&h.rootfs, vec![]);
        let result = h.executor.run(&empty, ProcessIo::default(), CancellationToken::new()).await;
        assert!(matches!(result, Err(ExecutorError::NoArgs)), "{result:?}");
        h.assert_clean();
    }

    #[tokio::test]
    async fn a_missing_rootfs_is_a_clear_error() {
        let h = Harness::new();
        let spec = ExecSpec::new(h.dir.path().join("nope"), vec!["true".into()]);
        let err = h.run(&spec).await.result.unwrap_err();
        assert!(err.to_string().starts_with("root filesystem "), "{err}");
        assert!(!h.dir.path().join("nope").exists());
        h.assert_clean();
    }

    #[tokio::test]
    async fn writes_land_in_the_rootfs_unless_it_is_readonly() {
        let h = Harness::new();
        let ran = h.run(&h.spec("echo data > /out.txt && mkdir -p /var/lib/thing")).await;
        assert_eq!(ran.code(), 0, "{}", ran.stderr);
        assert_eq!(fs::read_to_string(h.rootfs.join("out.txt")).unwrap(), "data\n");
        assert!(h.rootfs.join("var/lib/thing").is_dir());

        let mut spec = h.spec("echo more > /other.txt");
        spec.readonly_rootfs = true;
        let ran = h.run(&spec).await;
        assert_ne!(ran.code(), 0);
        assert!(ran.stderr.contains("Read-only file system"), "{}", ran.stderr);
        assert!(!h.rootfs.join("other.txt").exists());
        h.assert_clean();
    }

    #[tokio::test]
    async fn sandboxed_steps_are_under_the_default_seccomp_profile() {
        // unshare(2) needs no capability for a user namespace, but the
        // default profile allows it only with CAP_SYS_ADMIN.
        let script = "unshare -U true && echo allowed";
        let h = Harness::new();
        assert!(h.executor.seccomp(), "this kernel has seccomp");
        let ran = h.run(&h.spec(script)).await;
        assert_ne!(ran.code(), 0, "{}", ran.stdout);
        assert!(ran.stderr.contains("Operation not permitted"), "{}", ran.stderr);

        let mut spec = h.spec(script);
        spec.security = SecurityMode::Insecure;
        assert_eq!(h.run(&spec).await.stdout, "allowed\n", "an insecure step has no filter");

        let unfiltered = Harness::new();
        let unfiltered = Harness { executor: unfiltered.executor.without_seccomp(), ..unfiltered };
        let ran = unfiltered.run(&unfiltered.spec(script)).await;
        assert_eq!(ran.stdout, "allowed\n", "the filter, not a capability, refused it: {}", ran.stderr);
        h.assert_clean();
        unfiltered.assert_clean();
    }

    #[tokio::test]
    async fn insecure_steps_are_privileged_and_sandboxed_ones_are_not() {
        let h = Harness::new();
        let script =
            "grep CapEff /proc/self/status | cut -f2; mount -t tmpfs none /tmp 2>/dev/null && echo mounted";
        let ran = h.run(&h.spec(script)).await;
        assert_eq!(ran.stdout, "00000000a80425fb\n", "{}", ran.stderr);

        let mut spec = h.spec(script);
        spec.security = SecurityMode::Insecure;
        let ran = h.run(&spec).await;
        // Everything kilnd itself holds.
        let status = fs::read_to_string("/proc/self/status").unwrap();
        let own = status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap().trim();
        assert_eq!(ran.stdout, format!("{own}\nmounted\n"), "{}", ran.stderr);
        h.assert_clean();
    }
}
