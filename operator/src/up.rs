//! `kiln up`: a pool on this machine. Starts N kilnd builders, each with its
//! own state directory and unix socket, and the gateway in front of them,
//! then prints the `docker buildx create` line that points buildx at it.
//! SIGINT or SIGTERM stops the gateway and drains the builders.
//!
//! Builds run as root, so by default only root may reach the pool: the
//! gateway listens on a socket of mode 0600 (0660 with `--group`), as
//! buildkitd's does, and the builders on sockets in the state directory.
//! TCP is there on request, with a warning.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::gateway;
use crate::metrics::{self, Metrics};

/// Start a local pool of kilnd builders behind a gateway.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How many kilnd builders to run.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub builders: u16,

    /// Where buildx connects: unix:///PATH (mode 0600: root's alone, as the
    /// builds run as root), or tcp://HOST:PORT, which every local user can
    /// reach.
    #[arg(long, default_value = DEFAULT_ADDR)]
    pub addr: String,

    /// A group (name or id) whose members may use the socket too (mode 0660).
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,

    /// State of the builders (one directory each, kept across runs so the
    /// cache survives). [default: $XDG_STATE_HOME/kiln/up or ~/.local/state/kiln/up]
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,

    /// The kilnd binary. [default: next to this kiln binary, else kilnd on PATH]
    #[arg(long, value_name = "PATH", env = "KILN_KILND")]
    pub kilnd: Option<PathBuf>,

    /// A kilnd configuration file for every builder (for example registries
    /// that speak plain HTTP).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Builds one builder runs at once; more wait in the gateway.
    #[arg(long, default_value_t = 4)]
    pub max_parallel_builds: usize,

    /// Serve the gateway's /metrics on HOST:PORT.
    #[arg(long)]
    pub metrics_addr: Option<String>,
}

/// Where the pool listens unless told otherwise.
pub const DEFAULT_ADDR: &str = "unix:///run/kiln/kiln.sock";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--group {0:?}: no such group")]
    Group(String),
    #[error("creating {path}: {source}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("finding a free loopback port: {0}")]
    Port(#[source] std::io::Error),
    #[error("starting {binary}: {source} (pass --kilnd, or put kilnd on PATH)")]
    Spawn { binary: PathBuf, source: std::io::Error },
    #[error("builder {index} exited while starting ({status}); its log {log}:\n{tail}")]
    Exited { index: usize, status: std::process::ExitStatus, log: PathBuf, tail: String },
    #[error("builder {index} not ready after {waited:?}; its log {log}:\n{tail}")]
    NotReady { index: usize, waited: Duration, log: PathBuf, tail: String },
    #[error(transparent)]
    Gateway(#[from] gateway::Error),
    #[error("setting up metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

fn default_state() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(dir).join("kiln/up");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/var/lib"), PathBuf::from);
    home.join(".local/state/kiln/up")
}

fn find_kilnd(given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join("kilnd")))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("kilnd"))
    })
}

/// How buildx is run here: Docker's plugin when it answers, else a
/// standalone `buildx` on PATH or the one the test environment installs,
/// else Docker's (with a hint where to get it: [`buildx_hint`]).
pub(crate) fn buildx_command() -> String {
    if works(&["docker", "buildx", "version"]) {
        return "docker buildx".into();
    }
    if works(&["buildx", "version"]) {
        return "buildx".into();
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let cached = home.join(".cache/kiln/tools/bin/buildx");
    if cached.is_file() {
        return cached.display().to_string();
    }
    "docker buildx".into()
}

/// Where to get buildx, when `buildx` (from [`buildx_command`]) is Docker's
/// plugin and it does not answer here; else nothing.
pub(crate) fn buildx_hint(buildx: &str) -> &'static str {
    if buildx == "docker buildx" && !works(&["docker", "buildx", "version"]) {
        "(buildx is Docker's build client: install Docker's buildx plugin, or get the standalone \
         binary from github.com/docker/buildx; e2e/env/up puts one in ~/.cache/kiln/tools/bin.)\n"
    } else {
        ""
    }
}

/// The command runs and succeeds.
fn works(argv: &[&str]) -> bool {
    std::process::Command::new(argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The group `--group` names, by name or id.
fn group_id(group: &str) -> Result<u32, Error> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        _ => Err(Error::Group(group.to_owned())),
    }
}

fn free_port() -> Result<u16, Error> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(Error::Port)?;
    Ok(listener.local_addr().map_err(Error::Port)?.port())
}

/// The end of a builder's log, without a backtrace that would push the
/// error itself out of view.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let text = text.split("Stack backtrace:").next().unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// One kilnd the pool runs.
#[derive(Debug)]
struct Builder {
    index: usize,
    addr: String,
    debug: String,
    log: PathBuf,
    child: Child,
}

async fn start_builder(index: usize, args: &Args, kilnd: &Path, state: &Path) -> Result<Builder, Error> {
    let root = state.join(format!("builder-{index}"));
    std::fs::create_dir_all(&root).map_err(|source| Error::CreateDir { path: root.clone(), source })?;
    // A socket in the state directory: the builders are the gateway's alone.
    let addr = format!("unix://{}", root.join("kilnd.sock").display());
    let debug = format!("127.0.0.1:{}", free_port()?);
    let log = state.join(format!("builder-{index}.log"));
    let file =
        std::fs::File::create(&log).map_err(|source| Error::CreateDir { path: log.clone(), source })?;
    let err = file.try_clone().map_err(|source| Error::CreateDir { path: log.clone(), source })?;
    let mut cmd = Command::new(kilnd);
    cmd.arg("--addr").arg(&addr).arg("--root").arg(root.join("state")).arg("--debugaddr").arg(&debug);
    if let Some(config) = &args.config {
        cmd.arg("--config").arg(config);
    }
    let child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(file)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| Error::Spawn { binary: kilnd.to_owned(), source })?;
    Ok(Builder { index, addr, debug, log, child })
}

async fn wait_ready(b: &mut Builder, http: &reqwest::Client) -> Result<(), Error> {
    let waited = Duration::from_secs(30);
    let start = Instant::now();
    let url = format!("http://{}/readyz", b.debug);
    loop {
        if let Ok(Some(status)) = b.child.try_wait() {
            return Err(Error::Exited { index: b.index, status, log: b.log.clone(), tail: tail(&b.log) });
        }
        if http.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        if start.elapsed() > waited {
            return Err(Error::NotReady { index: b.index, waited, log: b.log.clone(), tail: tail(&b.log) });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGTERM each builder (they finish their builds), SIGKILL after `grace`.
async fn stop(builders: &mut [Builder], grace: Duration) {
    for b in builders.iter() {
        if let Some(pid) = b.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
    }
    for b in builders.iter_mut() {
        if tokio::time::timeout(grace, b.child.wait()).await.is_err() {
            warn!(builder = b.index, "still running after {grace:?}; killing it");
            let _ = b.child.kill().await;
        }
    }
}

/// Starts the builders one by one into `builders`, each once it is ready.
async fn start_builders(
    args: &Args,
    kilnd: &Path,
    state: &Path,
    http: &reqwest::Client,
    builders: &mut Vec<Builder>,
) -> Result<(), Error> {
    for index in 0..usize::from(args.builders) {
        // A free port can be taken by another program between our probe and
        // kilnd's bind: a builder that exits while starting gets new ports.
        let mut attempt = 0;
        let builder = loop {
            attempt += 1;
            let mut b = start_builder(index, args, kilnd, state).await?;
            match wait_ready(&mut b, http).await {
                Ok(()) => break b,
                Err(e @ Error::Exited { .. }) if attempt < 3 => {
                    warn!(builder = index, attempt, error = %e, "builder exited while starting; trying new ports");
                }
                Err(e) => return Err(e),
            }
        };
        info!(builder = index, addr = %builder.addr, log = %builder.log.display(), "builder ready");
        builders.push(builder);
    }
    Ok(())
}

/// How long running builds may go on after SIGINT or SIGTERM, in the
/// gateway and then in each builder: kilnd's own default.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(60);

/// Runs the pool until `shutdown`, then drains the gateway and stops the builders.
pub async fn run(args: Args, shutdown: CancellationToken) -> Result<(), Error> {
    let state = args.state.clone().unwrap_or_else(default_state);
    std::fs::create_dir_all(&state).map_err(|source| Error::CreateDir { path: state.clone(), source })?;
    let kilnd = find_kilnd(args.kilnd.clone());
    let access = gateway::listen::SocketAccess { group: args.group.as_deref().map(group_id).transpose()? };
    // Bind first: a taken address fails before any builder starts.
    let listener = gateway::listen::Listener::bind(&args.addr, access).await?;
    if args.addr.starts_with("tcp://") {
        warn!(
            addr = %args.addr,
            "listening on TCP without TLS: every user of this machine who can connect runs builds as root; \
             the default unix socket is root's alone"
        );
    }
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(1))
        .build()
        .ok()
        .unwrap_or_default();

    let mut builders: Vec<Builder> = Vec::new();
    let started = tokio::select! {
        started = start_builders(&args, &kilnd, &state, &http, &mut builders) => Some(started),
        () = shutdown.cancelled() => None,
    };
    match started {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            stop(&mut builders, Duration::from_secs(5)).await;
            return Err(e);
        }
        None => {
            info!("stopping the builders started so far");
            stop(&mut builders, Duration::from_secs(5)).await;
            return Ok(());
        }
    }

    let metrics = Arc::new(Metrics::new()?);
    let mut tasks = JoinSet::new();
    if let Some(addr) = &args.metrics_addr {
        metrics::serve(addr, Arc::clone(&metrics), metrics::always_ready(), &mut tasks)
            .await
            .map_err(|source| gateway::Error::Listen { addr: addr.clone(), source })?;
    }
    let backends: Vec<String> = builders.iter().map(|b| b.addr.clone()).collect();
    let gw = gateway::start(&backends, args.max_parallel_builds, Vec::new(), metrics, &mut tasks)?;
    let buildx = buildx_command();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "kiln: {} builder(s) ready behind {} (state in {})\n\
         Point buildx at it:\n  \
         {buildx} create --name kiln --driver remote {} --use\n  \
         {buildx} build .\n\
         {}\
         Stop with Ctrl-C.",
        builders.len(),
        args.addr,
        state.display(),
        args.addr,
        buildx_hint(&buildx),
    );
    let _ = out.flush();
    drop(out);

    gateway::serve(listener, gw, None, &shutdown, SHUTDOWN_GRACE).await;
    // The builders are going: their health checks would only report it.
    tasks.shutdown().await;
    info!("stopping the builders");
    stop(&mut builders, SHUTDOWN_GRACE).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        up: Args,
    }

    #[test]
    fn the_pool_listens_on_a_socket_only_root_may_use_by_default() {
        let cli = Cli::parse_from(["kiln-up"]);
        assert_eq!(cli.up.addr, "unix:///run/kiln/kiln.sock");
        assert!(matches!(gateway::listen::Addr::parse(&cli.up.addr), Ok(gateway::listen::Addr::Unix(_))));
        assert_eq!(cli.up.group, None);
    }

    #[test]
    fn a_group_is_found_by_name_or_id() {
        assert_eq!(group_id("0").unwrap(), 0);
        assert_eq!(group_id("root").unwrap(), 0);
        assert!(group_id("no-such-group-kiln").unwrap_err().to_string().contains("no such group"));
    }
}
