//! The harness of Kiln's end-to-end suites: the environment `e2e/env/up`
//! made, real daemons started and stopped per test, and the registry checks
//! a user would make.
//!
//! Tests panic with a message that says what to do when the environment is
//! missing; they never skip.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

pub mod cluster;
pub mod grpc;
pub mod kubeconform;
pub mod kubelet;
pub mod llb;

use std::fmt::Write as _;
use std::io::Read as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// What `eval "$(e2e/env/up)"` exported.
#[derive(Debug)]
pub struct TestEnv {
    pub tools: PathBuf,
    pub registry: String,
    pub auth_registry: String,
    pub auth_user: String,
    pub auth_password: String,
    pub base_image: String,
    pub base_image_v2s2: String,
    pub base_image_multi: String,
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run `eval \"$(e2e/env/up)\"` first (the README's test command does this)")
    })
}

impl TestEnv {
    pub fn get() -> &'static TestEnv {
        static ENV: OnceLock<TestEnv> = OnceLock::new();
        ENV.get_or_init(|| TestEnv {
            tools: var("KILN_TOOLS").into(),
            registry: var("KILN_REGISTRY"),
            auth_registry: var("KILN_AUTH_REGISTRY"),
            auth_user: var("KILN_AUTH_REGISTRY_USER"),
            auth_password: var("KILN_AUTH_REGISTRY_PASSWORD"),
            base_image: var("KILN_BASE_IMAGE"),
            base_image_v2s2: var("KILN_BASE_IMAGE_V2S2"),
            base_image_multi: var("KILN_BASE_IMAGE_MULTI"),
        })
    }

    /// A tool from `$KILN_TOOLS`; panics with a hint when it is missing.
    pub fn tool(&self, name: &str) -> PathBuf {
        let path = self.tools.join(name);
        assert!(path.exists(), "{} is missing: run e2e/env/up", path.display());
        path
    }

    pub fn command(&self, tool: &str) -> Command {
        Command::new(self.tool(tool))
    }

    /// `KUBECONFIG` from `e2e/env/cluster-up`.
    pub fn kubeconfig(&self) -> PathBuf {
        var("KUBECONFIG").into()
    }
}

/// Runs `cmd`, echoing its command line, and returns its stdout. A failure
/// panics with the exit status and both streams.
pub fn run(cmd: &mut Command) -> String {
    let out = run_unchecked(cmd);
    assert!(out.status.success(), "{} failed with {}\n{}", show(cmd), out.status, streams(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` and hands back its output whatever the exit status.
pub fn run_unchecked(cmd: &mut Command) -> Output {
    eprintln!("$ {}", show(cmd));
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("starting {}: {e}", show(cmd)));
    // Progress output is what a user would see; keep it in the test log.
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

pub fn streams(out: &Output) -> String {
    format!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        let _ = write!(s, " {}", arg.to_string_lossy());
    }
    s
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A unique suffix for names in shared places (registry repositories, namespaces).
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}-{}-{:x}", std::process::id(), nanos & 0xffff_ffff)
}

/// A daemon process that is sent SIGTERM (then SIGKILL after 10 s) when dropped.
#[derive(Debug)]
pub struct Daemon {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `cmd` with its output in `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({}): {e}", show(cmd)));
        eprintln!("started {name} (pid {}): {}", child.id(), show(cmd));
        Self { name: name.into(), child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `ready` until it holds; panics with the daemon's log after `timeout`.
    pub fn wait_until(&mut self, timeout: Duration, mut ready: impl FnMut() -> bool) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{} exited with {status} while starting:\n{}", self.name, self.log_text());
            }
            if ready() {
                eprintln!("{} ready after {:?}", self.name, start.elapsed());
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{} not ready after {timeout:?}:\n{}", self.name, self.log_text());
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(status) = self.child.try_wait().ok().flatten() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// SIGTERM, then SIGKILL after `grace`; returns whether it exited in time.
    pub fn stop(&mut self, grace: Duration) -> bool {
        if self.child.try_wait().ok().flatten().is_some() {
            return true;
        }
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let start = Instant::now();
        while start.elapsed() < grace {
            if self.child.try_wait().ok().flatten().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

/// The reference `buildkitd` from the test environment, as root with `runc`,
/// its state in a temporary directory, listening on a loopback TCP port.
#[derive(Debug)]
pub struct Buildkitd {
    pub addr: String,
    pub daemon: Daemon,
    pub root: TempDir,
}

impl Buildkitd {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts buildkitd with `args` added to its command line.
    pub fn start_with(args: &[&str]) -> Self {
        let root = tempfile::Builder::new().prefix("kiln-buildkitd-").tempdir().unwrap();
        Self::start_in(root, None, args)
    }

    /// Starts buildkitd rootless, as `user` under `rootlesskit --net=host`
    /// (BuildKit's docs/rootless.md), like `Kilnd::start_rootless`.
    pub fn start_rootless(user: &str) -> Self {
        let root = rootless_dir(user, "kiln-buildkitd-rootless-", &TestEnv::get().tool("buildkitd"));
        Self::start_in(root, Some(user), &[])
    }

    fn start_in(root: TempDir, rootless_user: Option<&str>, args: &[&str]) -> Self {
        let env = TestEnv::get();
        let config = root.path().join("buildkitd.toml");
        // The local registries speak plain HTTP.
        std::fs::write(
            &config,
            format!(
                "[worker.oci]\n  gc = false\n[worker.containerd]\n  enabled = false\n\
                 [registry.\"{}\"]\n  http = true\n[registry.\"{}\"]\n  http = true\n",
                env.registry, env.auth_registry
            ),
        )
        .unwrap();
        let addr = format!("tcp://127.0.0.1:{}", free_port());
        let mut cmd = match rootless_user {
            None => env.command("buildkitd"),
            Some(user) => rootless_command(user, root.path(), "buildkitd"),
        };
        let mut daemon = Daemon::spawn(
            "buildkitd",
            cmd.arg("--config")
                .arg(&config)
                .arg("--root")
                .arg(root.path().join("state"))
                .arg("--addr")
                .arg(&addr)
                .args(["--oci-worker-binary", "runc"])
                .args(args),
            root.path().join("buildkitd.log"),
        );
        daemon.wait_until(Duration::from_secs(30), || {
            env.command("buildctl")
                .args(["--addr", &addr, "debug", "workers"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        Self { addr, daemon, root }
    }

    pub fn buildctl(&self) -> Command {
        let mut cmd = TestEnv::get().command("buildctl");
        cmd.args(["--addr", &self.addr]);
        cmd
    }
}

/// Where the workspace's binaries are: next to the test executable's `deps/`.
pub fn workspace_bin(name: &str) -> PathBuf {
    if let Ok(path) = std::env::var(format!("KILN_{}", name.to_uppercase())) {
        return path.into();
    }
    // Tests run from `target/<profile>/deps/`, binaries from `target/<profile>/`.
    let exe = std::env::current_exe().unwrap();
    let dirs = exe.ancestors().skip(1).take(2);
    let candidates: Vec<PathBuf> = dirs.map(|d| d.join(name)).collect();
    candidates.iter().find(|p| p.is_file()).cloned().unwrap_or_else(|| {
        panic!("{name} is missing next to {}: run `cargo build --workspace --bins` first", exe.display())
    })
}

/// A temporary directory `user` owns, holding a copy of `binary` (which the
/// user may not reach where it is) and `xdg/` for `XDG_RUNTIME_DIR`.
fn rootless_dir(user: &str, prefix: &str, binary: &Path) -> TempDir {
    let root = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    let name = binary.file_name().unwrap();
    std::fs::copy(binary, root.path().join(name)).unwrap();
    std::fs::create_dir(root.path().join("xdg")).unwrap();
    run(Command::new("chown").arg("-R").arg(format!("{user}:")).arg(root.path()));
    root
}

/// `binary` in `root` run by `user` inside RootlessKit's user namespace with
/// the host's network (docs/rootless.md).
fn rootless_command(user: &str, root: &Path, binary: &str) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", user, "--", "env"])
        .arg(format!("XDG_RUNTIME_DIR={}", root.join("xdg").display()))
        .args(["rootlesskit", "--net=host"])
        .arg(root.join(binary));
    cmd
}

/// A `kilnd` from this workspace, its state in a temporary directory,
/// serving on a loopback TCP port, with its debug endpoint on another.
#[derive(Debug)]
pub struct Kilnd {
    pub addr: String,
    pub debug_addr: String,
    pub daemon: Daemon,
    pub root: TempDir,
}

impl Kilnd {
    pub fn start() -> Self {
        Self::start_with(|_| {})
    }

    /// Starts kilnd after `configure` has added its own arguments.
    pub fn start_with(configure: impl FnOnce(&mut Command)) -> Self {
        Self::start_configured("", configure)
    }

    /// Starts kilnd with `extra` TOML appended to its configuration file.
    pub fn start_configured(extra: &str, configure: impl FnOnce(&mut Command)) -> Self {
        let root = tempfile::Builder::new().prefix("kiln-kilnd-").tempdir().unwrap();
        std::fs::write(root.path().join("extra.toml"), extra).unwrap();
        Self::start_in(root, configure)
    }

    /// Starts kilnd rootless: as `user` (no privileges; `KILN_ROOTLESS_USER`
    /// from e2e/env/up) inside RootlessKit's user namespace, sharing the
    /// host's network (`rootlesskit --net=host`, docs/rootless.md). Its
    /// binary and state are in a directory the user owns.
    pub fn start_rootless(user: &str, configure: impl FnOnce(&mut Command)) -> Self {
        Self::start_rootless_configured(user, "", configure)
    }

    /// `start_rootless` with `extra` TOML appended to its configuration file.
    pub fn start_rootless_configured(user: &str, extra: &str, configure: impl FnOnce(&mut Command)) -> Self {
        let root = rootless_dir(user, "kiln-kilnd-rootless-", &workspace_bin("kilnd"));
        std::fs::write(root.path().join("extra.toml"), extra).unwrap();
        Self::start_as(root, Some(user), configure)
    }

    fn start_in(root: TempDir, configure: impl FnOnce(&mut Command)) -> Self {
        Self::start_as(root, None, configure)
    }

    fn start_as(root: TempDir, rootless_user: Option<&str>, configure: impl FnOnce(&mut Command)) -> Self {
        let addr = format!("tcp://127.0.0.1:{}", free_port());
        let debug_addr = format!("127.0.0.1:{}", free_port());
        let env = TestEnv::get();
        let config = root.path().join("kilnd.toml");
        // The local registries speak plain HTTP.
        let extra = std::fs::read_to_string(root.path().join("extra.toml")).unwrap_or_default();
        std::fs::write(
            &config,
            format!(
                "{extra}\n[registry.\"{}\"]\nhttp = true\n[registry.\"{}\"]\nhttp = true\n",
                env.registry, env.auth_registry
            ),
        )
        .unwrap();
        let mut cmd = match rootless_user {
            None => Command::new(workspace_bin("kilnd")),
            Some(user) => rootless_command(user, root.path(), "kilnd"),
        };
        cmd.arg("--addr")
            .arg(&addr)
            .arg("--root")
            .arg(root.path().join("state"))
            .arg("--config")
            .arg(&config);
        cmd.arg("--debugaddr").arg(&debug_addr);
        configure(&mut cmd);
        let mut daemon = Daemon::spawn("kilnd", &mut cmd, root.path().join("kilnd.log"));
        let url = format!("http://{debug_addr}/readyz");
        daemon.wait_until(Duration::from_secs(20), || ureq::get(&url).call().is_ok());
        Self { addr, debug_addr, daemon, root }
    }

    /// Starts kilnd again on the state of one that stopped or was killed.
    pub fn restart(old: Kilnd) -> Self {
        Self::restart_with(old, |_| {})
    }

    /// Starts kilnd again on the state of one that stopped, with other arguments.
    pub fn restart_with(mut old: Kilnd, configure: impl FnOnce(&mut Command)) -> Self {
        old.daemon.stop(Duration::from_secs(10));
        let Kilnd { root, .. } = old;
        Self::start_in(root, configure)
    }

    /// kilnd's run directory: the tmpfs with its runtime state, bundles and
    /// secrets, named after its root (`executor/rundir.rs`).
    pub fn run_dir(&self) -> PathBuf {
        let root = std::fs::canonicalize(self.root.path().join("state")).unwrap();
        let hash = sha256_hex(root.as_os_str().as_encoded_bytes());
        PathBuf::from("/run/kilnd").join(&hash[..16])
    }

    /// GET a path of the debug endpoint: (status, body).
    pub fn debug_get(&self, path: &str) -> (u16, String) {
        let url = format!("http://{}{path}", self.debug_addr);
        match ureq::get(&url).call() {
            Ok(mut r) => (r.status().as_u16(), r.body_mut().read_to_string().unwrap()),
            Err(ureq::Error::StatusCode(code)) => (code, String::new()),
            Err(e) => panic!("GET {url}: {e}"),
        }
    }
}

/// `kiln gateway` from this workspace in front of `n` fresh kilnd builders,
/// each with its debug endpoint, so a test can see which builder did what.
#[derive(Debug)]
pub struct Gateway {
    pub addr: String,
    pub metrics_addr: String,
    pub builders: Vec<Kilnd>,
    pub daemon: Daemon,
    _dir: TempDir,
}

impl Gateway {
    pub fn start(n: usize) -> Self {
        Self::start_with(n, &[])
    }

    /// Like `start`, with `args` added to `kiln gateway`'s command line.
    pub fn start_with(n: usize, args: &[&str]) -> Self {
        Self::start_configured(n, "", args)
    }

    /// Like `start_with`, each builder with `kilnd_extra` TOML appended to
    /// its configuration file.
    pub fn start_configured(n: usize, kilnd_extra: &str, args: &[&str]) -> Self {
        let builders: Vec<Kilnd> = std::thread::scope(|s| {
            let handles: Vec<_> =
                (0..n).map(|_| s.spawn(|| Kilnd::start_configured(kilnd_extra, |_| {}))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let dir = tempfile::Builder::new().prefix("kiln-gateway-").tempdir().unwrap();
        let addr = format!("tcp://127.0.0.1:{}", free_port());
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(workspace_bin("kiln"));
        cmd.args(["gateway", "--addr", &addr, "--metrics-addr", &metrics_addr]);
        for b in &builders {
            cmd.args(["--backend", &b.addr]);
        }
        cmd.args(args);
        let mut daemon = Daemon::spawn("kiln gateway", &mut cmd, dir.path().join("gateway.log"));
        // Ready once every builder passed its first health check.
        let url = format!("http://{metrics_addr}/healthz");
        daemon.wait_until(Duration::from_secs(20), || ureq::get(&url).call().is_ok());
        daemon.wait_until(Duration::from_secs(20), || daemon_log_count(&dir, "ready=true") == n);
        Self { addr, metrics_addr, builders, daemon, _dir: dir }
    }

    /// Which builder (by index) a log line of the gateway names.
    pub fn builder_index(&self, addr: &str) -> Option<usize> {
        self.builders.iter().position(|b| b.addr == addr)
    }

    /// The builders that ran Solves, by index, in order (from the gateway's log).
    pub fn solves(&self) -> Vec<usize> {
        self.daemon
            .log_text()
            .lines()
            .filter(|l| l.contains(" solve build="))
            .filter_map(|l| l.split("builder=").nth(1))
            .filter_map(|a| self.builder_index(a.split_whitespace().next().unwrap_or_default()))
            .collect()
    }

    /// The sessions the gateway placed, in order: (shared key, builder index).
    /// buildx opens a probe session with an empty key before each build.
    pub fn sessions(&self) -> Vec<(String, usize)> {
        self.daemon
            .log_text()
            .lines()
            .filter(|l| l.contains(" session session="))
            .filter_map(|l| {
                let field = |name: &str| {
                    l.split(&format!(" {name}=")).nth(1).and_then(|v| v.split(' ').next()).unwrap_or_default()
                };
                Some((field("shared_key").to_owned(), self.builder_index(field("builder"))?))
            })
            .collect()
    }
}

fn daemon_log_count(dir: &TempDir, needle: &str) -> usize {
    std::fs::read_to_string(dir.path().join("gateway.log")).unwrap_or_default().matches(needle).count()
}

/// A buildx with its own configuration directory, so tests never touch the
/// user's builders or docker config.
#[derive(Debug)]
pub struct Buildx {
    pub config: TempDir,
}

impl Default for Buildx {
    fn default() -> Self {
        Self::new()
    }
}

impl Buildx {
    pub fn new() -> Self {
        Self { config: tempfile::Builder::new().prefix("kiln-buildx-").tempdir().unwrap() }
    }

    pub fn command(&self) -> Command {
        let mut cmd = TestEnv::get().command("buildx");
        cmd.env("BUILDX_CONFIG", self.config.path().join("buildx"))
            .env("DOCKER_CONFIG", self.config.path().join("docker"))
            .env("BUILDX_NO_DEFAULT_ATTESTATIONS", "1")
            .env_remove("BUILDX_BUILDER");
        cmd
    }

    /// A buildx command line as Kiln prints it (`docker buildx create …`, or
    /// `PATH/buildx create …`), run as printed but with this buildx's
    /// configuration. Panics unless it names buildx.
    pub fn printed(&self, line: &str) -> Command {
        let words: Vec<&str> = line.split_whitespace().collect();
        let skip = match words.as_slice() {
            ["docker", "buildx", ..] => 2,
            [buildx, ..] if buildx.ends_with("buildx") => 1,
            _ => panic!("{line:?} is not a buildx command"),
        };
        let mut printed = Command::new(words[0]);
        printed.args(&words[1..]);
        if skip == 2 {
            // No Docker here: the test environment's buildx runs Docker's plugin's line.
            printed = self.command();
            printed.args(&words[2..]);
        }
        for (k, v) in self.command().get_envs() {
            match v {
                Some(v) => printed.env(k, v),
                None => printed.env_remove(k),
            };
        }
        printed
    }

    /// `buildx create --driver remote ADDR --name NAME`.
    pub fn create_remote(&self, name: &str, addr: &str) {
        run(self.command().args(["create", "--name", name, "--driver", "remote", addr]));
    }
}

/// One registry's HTTP API, with basic auth when it has credentials.
#[derive(Debug, Clone)]
pub struct Registry {
    pub host: String,
    pub creds: Option<(String, String)>,
}

pub const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// A manifest as the registry serves it.
#[derive(Debug)]
pub struct Manifest {
    pub digest: String,
    pub media_type: String,
    pub json: serde_json::Value,
}

impl Registry {
    pub fn plain() -> Self {
        Self { host: TestEnv::get().registry.clone(), creds: None }
    }

    pub fn with_auth() -> Self {
        let env = TestEnv::get();
        Self {
            host: env.auth_registry.clone(),
            creds: Some((env.auth_user.clone(), env.auth_password.clone())),
        }
    }

    /// GET /v2/<name>/manifests/<reference>; Err carries the HTTP status.
    pub fn manifest(&self, name: &str, reference: &str) -> Result<Manifest, u16> {
        let url = format!("http://{}/v2/{name}/manifests/{reference}", self.host);
        let mut req = ureq::get(&url).header("Accept", MANIFEST_TYPES);
        if let Some((user, password)) = &self.creds {
            req = req.header("Authorization", basic_auth(user, password));
        }
        let mut resp = match req.call() {
            Ok(r) => r,
            Err(ureq::Error::StatusCode(code)) => return Err(code),
            Err(e) => panic!("GET {url}: {e}"),
        };
        let media_type =
            resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let mut body = Vec::new();
        resp.body_mut().as_reader().read_to_end(&mut body).unwrap();
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
        let json =
            serde_json::from_slice(&body).unwrap_or_else(|e| panic!("manifest at {url} is not JSON: {e}"));
        Ok(Manifest { digest, media_type, json })
    }
}

fn basic_auth(user: &str, password: &str) -> String {
    format!("Basic {}", base64(&format!("{user}:{password}")))
}

/// The hex sha256 of `bytes`.
/// Every path under `dir` with its mode (file type bits included), its
/// content (a symlink's target; nothing for a directory), and its mtime in
/// seconds when `mtimes` says so for that path; sorted by path.
pub fn file_tree(dir: &Path, mtimes: impl Fn(&str) -> bool) -> Vec<(String, u32, Vec<u8>, Option<u64>)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            let rel = path.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let content = if meta.is_symlink() {
                std::fs::read_link(&path).unwrap().into_os_string().into_encoded_bytes()
            } else if meta.is_file() {
                std::fs::read(&path).unwrap()
            } else {
                stack.push(path.clone());
                Vec::new()
            };
            let mtime = mtimes(&rel)
                .then(|| meta.modified().unwrap().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs());
            out.push((rel, meta.mode() & 0o177_777, content, mtime));
        }
    }
    out.sort();
    out
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Standard base64 with padding, for auth headers and docker configs.
pub fn base64(input: &str) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.as_bytes().chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Splits `host/name:tag` into (name, tag).
pub fn repo_and_tag(image: &str) -> (&str, &str) {
    let path = image.split_once('/').map_or(image, |(_, p)| p);
    path.rsplit_once(':').unwrap_or((path, "latest"))
}

/// `buildctl build` with an LLB definition on stdin (what buildctl does when
/// no frontend is given), with `extra` arguments; its output is echoed.
pub fn buildctl_llb(addr: &str, def: &kiln_proto::buildkit::pb::Definition, extra: &[&str]) -> Output {
    use std::io::Write;
    let mut child = TestEnv::get()
        .command("buildctl")
        .args(["--addr", addr, "build", "--progress", "plain"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&prost::Message::encode_to_vec(def)).unwrap();
    let out = child.wait_with_output().unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// `buildctl build` of the Dockerfile in `dir` (also the context) with the
/// built-in frontend, exported as `output` (`--output`); its output is echoed.
pub fn buildctl_dockerfile(addr: &str, dir: &Path, output: &str) -> String {
    run(TestEnv::get()
        .command("buildctl")
        .args(["--addr", addr, "build", "--progress", "plain", "--frontend", "dockerfile.v0"])
        .arg("--local")
        .arg(format!("context={}", dir.display()))
        .arg("--local")
        .arg(format!("dockerfile={}", dir.display()))
        .args(["--output", output]))
}

/// A CA (`ca.crt`, `ca.key`) and certificates it signed, made with the
/// openssl CLI in `dir`: `server.crt`/`server.key` for `server_names` and
/// 127.0.0.1, and `NAME.crt`/`NAME.key` for each client, its common name
/// `NAME`.
pub fn certificates(dir: &Path, server_names: &[&str], clients: &[&str]) {
    let openssl = |args: &[&str]| {
        let out = run_unchecked(Command::new("openssl").current_dir(dir).args(args));
        assert!(out.status.success(), "openssl {args:?}\n{}", streams(&out));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &["-days", "1", "-subj", "/CN=kiln-test-ca", "-keyout", "ca.key", "-out", "ca.crt"],
        ]
        .concat(),
    );
    let sans: Vec<String> =
        server_names.iter().map(|n| format!("DNS:{n}")).chain(["IP:127.0.0.1".to_owned()]).collect();
    let server_ext = format!("subjectAltName={}\nextendedKeyUsage=serverAuth\n", sans.join(","));
    let certs = std::iter::once(("server".to_owned(), "gateway".to_owned(), server_ext)).chain(
        clients
            .iter()
            .map(|c| ((*c).to_owned(), (*c).to_owned(), "extendedKeyUsage=clientAuth\n".to_owned())),
    );
    for (name, cn, ext) in certs {
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        let subject = format!("/CN={cn}");
        let (key, csr, crt, extfile) =
            (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"), format!("{name}.ext"));
        openssl(&[&["req"][..], &ec, &["-subj", &subject, "-keyout", &key, "-out", &csr]].concat());
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            &crt,
            "-extfile",
            &extfile,
        ]);
    }
}

/// The gateway's TLS flags for the files [`certificates`] made in `dir`:
/// its certificate, and client certificates checked against the CA.
pub fn gateway_tls_args(dir: &Path) -> Vec<String> {
    let file = |name: &str| dir.join(name).display().to_string();
    ["--tls-cert", &file("server.crt"), "--tls-key", &file("server.key"), "--tls-ca", &file("ca.crt")]
        .map(str::to_owned)
        .into()
}

/// The steps of a plain-progress build (`[internal]` ones left out), in the
/// order they first appear, each with whether it was CACHED.
pub fn progress_steps(progress: &str) -> Vec<(String, bool)> {
    let mut names: Vec<(String, String)> = Vec::new();
    for line in progress.lines() {
        let Some((id, text)) = line.strip_prefix('#').and_then(|l| l.split_once(' ')) else { continue };
        if text.starts_with('[') && !text.starts_with("[internal]") && !names.iter().any(|(i, _)| i == id) {
            names.push((id.to_owned(), text.to_owned()));
        }
    }
    names
        .into_iter()
        .map(|(id, name)| {
            let cached = progress.lines().any(|l| l == format!("#{id} CACHED"));
            (name, cached)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_is_base64() {
        assert_eq!(basic_auth("Aladdin", "open sesame"), "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        assert_eq!(basic_auth("a", "b"), "Basic YTpi");
    }

    #[test]
    fn image_names_split() {
        assert_eq!(repo_and_tag("127.0.0.1:5000/kiln-test/busybox:latest"), ("kiln-test/busybox", "latest"));
        assert_eq!(repo_and_tag("127.0.0.1:5000/x/y"), ("x/y", "latest"));
    }
}
