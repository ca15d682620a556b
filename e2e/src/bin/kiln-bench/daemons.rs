//! The daemons under test, the client builds that drive them, and what
//! `/proc` says about their processes.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kiln_e2e::{Buildkitd, Gateway, Kilnd, TestEnv, free_port, workspace_bin};
use kiln_proto::buildkit::pb;

/// Neither daemon collects garbage mid-run (the harness's buildkitd has the same).
pub const KILND_CONFIG: &str = "[worker.oci]\ngc = false\n";

#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Kind {
    Kilnd,
    Buildkitd,
    /// kilnd behind `kiln gateway` with one builder: what a `kiln up` user talks to.
    KilndViaGateway,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Self::Kilnd => "kilnd",
            Self::Buildkitd => "buildkitd",
            Self::KilndViaGateway => "kilnd via gateway",
        }
    }
}

/// A running daemon of some kind, stopped when dropped.
pub enum Daemon {
    Kilnd(Kilnd),
    Buildkitd(Buildkitd),
    Gateway(Gateway),
    /// Spawned by the bench itself, to time its startup (see `spawn_bare`).
    Bare {
        addr: String,
        daemon: kiln_e2e::Daemon,
        _root: tempfile::TempDir,
    },
}

impl Daemon {
    /// A fresh daemon with an empty state directory.
    pub fn start(kind: Kind) -> Self {
        match kind {
            Kind::Kilnd => Self::Kilnd(Kilnd::start_configured(KILND_CONFIG, |_| {})),
            Kind::Buildkitd => Self::Buildkitd(Buildkitd::start()),
            Kind::KilndViaGateway => Self::Gateway(Gateway::start_configured(1, KILND_CONFIG, &[])),
        }
    }

    pub fn addr(&self) -> &str {
        match self {
            Self::Kilnd(d) => &d.addr,
            Self::Buildkitd(d) => &d.addr,
            Self::Gateway(g) => &g.addr,
            Self::Bare { addr, .. } => addr,
        }
    }

    /// The process that builds: kilnd or buildkitd (the gateway's builder).
    pub fn builder_pid(&self) -> u32 {
        match self {
            Self::Kilnd(d) => d.daemon.pid(),
            Self::Buildkitd(d) => d.daemon.pid(),
            Self::Gateway(g) => g.builders[0].daemon.pid(),
            Self::Bare { daemon, .. } => daemon.pid(),
        }
    }

    fn pids(&self) -> Vec<u32> {
        match self {
            Self::Gateway(g) => g.builders.iter().map(|b| b.daemon.pid()).chain([g.daemon.pid()]).collect(),
            _ => vec![self.builder_pid()],
        }
    }

    /// User + system CPU seconds of the daemon(s) and their reaped children.
    pub fn cpu(&self) -> f64 {
        self.pids().into_iter().map(cpu_of).sum()
    }

    /// A field of the builder's `/proc/PID/status` in bytes (`VmRSS`, `VmHWM`).
    pub fn memory(&self, field: &str) -> f64 {
        memory_of(self.builder_pid(), field)
    }
}

fn cpu_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the 12th, then stime, cutime, cstime.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0.0)).collect();
    f.get(11..15).map_or(0.0, |t| t.iter().sum::<f64>()) / 100.0
}

fn memory_of(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    kib * 1024.0
}

/// What one row measured in one run: seconds (with the daemon's CPU) or bytes.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub value: f64,
    pub cpu: Option<f64>,
}

impl Sample {
    pub fn bytes(value: f64) -> Self {
        Self { value, cpu: None }
    }
}

/// One `buildctl build`: its arguments, and the LLB on stdin when there is no frontend.
#[derive(Clone, Debug)]
pub struct Build {
    args: Vec<String>,
    llb: Option<pb::Definition>,
}

impl Build {
    /// LLB on stdin, no frontend.
    pub fn llb(def: pb::Definition) -> Self {
        Self { args: Vec::new(), llb: Some(def) }
    }

    /// The Dockerfile frontend (built into both daemons) on `context` and
    /// the Dockerfile in `dockerfile_dir`.
    pub fn dockerfile(context: &Path, dockerfile_dir: &Path) -> Self {
        Self {
            args: vec![
                "--frontend".into(),
                "dockerfile.v0".into(),
                "--local".into(),
                format!("context={}", context.display()),
                "--local".into(),
                format!("dockerfile={}", dockerfile_dir.display()),
            ],
            llb: None,
        }
    }

    /// Adds `flag VALUE` (`--output …`, `--secret …`, `--local …`).
    pub fn with(mut self, flag: &str, value: impl Into<String>) -> Self {
        self.args.push(flag.into());
        self.args.push(value.into());
        self
    }

    /// Runs the build; its progress is kept quiet unless it fails.
    pub fn run(&self, addr: &str) -> Result<(), String> {
        let mut child = TestEnv::get()
            .command("buildctl")
            .args(["--addr", addr, "build", "--progress", "plain"])
            .args(&self.args)
            .stdin(if self.llb.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let (Some(def), Some(mut stdin)) = (&self.llb, child.stdin.take()) {
            stdin.write_all(&prost::Message::encode_to_vec(def)).unwrap();
        }
        let out: Output = child.wait_with_output().unwrap();
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "buildctl build {} failed with {}:\n{}",
                self.args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Runs the build on `daemon` and times it; a failure panics with the
    /// step's name (the row, or what an untimed build was for) and buildctl's output.
    pub fn timed(&self, daemon: &Daemon, step: &str) -> Sample {
        let cpu = daemon.cpu();
        let start = Instant::now();
        if let Err(e) = self.run(daemon.addr()) {
            panic!("{step}: {e}");
        }
        let wall = start.elapsed().as_secs_f64();
        Sample { value: wall, cpu: Some(daemon.cpu() - cpu) }
    }

    /// Runs the build on `daemon`, untimed; a failure panics like `timed`'s.
    pub fn untimed(&self, daemon: &Daemon, step: &str) {
        if let Err(e) = self.run(daemon.addr()) {
            panic!("{step}: {e}");
        }
    }
}

/// Starts a fresh daemon of `kind` (kilnd or buildkitd) without the harness's
/// readiness wait, and times from the spawn to the first `ListWorkers` it
/// answers, polling every 5 ms.
pub fn spawn_bare(kind: Kind) -> (Daemon, f64) {
    let env = TestEnv::get();
    let root = tempfile::Builder::new().prefix("kiln-bench-daemon-").tempdir().unwrap();
    let addr = format!("tcp://127.0.0.1:{}", free_port());
    let state = root.path().join("state");
    let config = root.path().join("config.toml");
    let registries = format!(
        "[registry.\"{}\"]\nhttp = true\n[registry.\"{}\"]\nhttp = true\n",
        env.registry, env.auth_registry
    );
    let mut cmd = match kind {
        Kind::Kilnd => {
            std::fs::write(&config, format!("{KILND_CONFIG}{registries}")).unwrap();
            Command::new(workspace_bin("kilnd"))
        }
        Kind::Buildkitd => {
            std::fs::write(
                &config,
                format!("{KILND_CONFIG}[worker.containerd]\nenabled = false\n{registries}"),
            )
            .unwrap();
            let mut cmd = env.command("buildkitd");
            cmd.args(["--oci-worker-binary", "runc"]);
            cmd
        }
        Kind::KilndViaGateway => panic!("startup is measured on kilnd and buildkitd only"),
    };
    cmd.arg("--addr").arg(&addr).arg("--root").arg(&state).arg("--config").arg(&config);
    let log = root.path().join("daemon.log");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let start = Instant::now();
    let daemon = kiln_e2e::Daemon::spawn(kind.label(), &mut cmd, log);
    let url = format!("http://{}", addr.trim_start_matches("tcp://"));
    let served = runtime.block_on(async {
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(channel) = tonic::transport::Channel::from_shared(url.clone()).unwrap().connect().await
            {
                let mut control = kiln_e2e::grpc::control(channel);
                let request = kiln_proto::buildkit::moby::buildkit::v1::ListWorkersRequest::default();
                if control.list_workers(request).await.is_ok_and(|r| !r.into_inner().record.is_empty()) {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    });
    let elapsed = start.elapsed().as_secs_f64();
    assert!(served, "{} answered no ListWorkers within 30 s:\n{}", kind.label(), daemon.log_text());
    (Daemon::Bare { addr, daemon, _root: root }, elapsed)
}
