//! `kiln gateway` and `kiln up` as a user sees them: real buildx and
//! buildctl pointed at one address, the builds landing on the builders
//! behind it (the routing in `operator/src/gateway/`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kiln_e2e::{
    Buildx, Gateway, Kilnd, TestEnv, buildctl_llb, progress_steps, run, run_unchecked, streams, workspace_bin,
};

/// Files of the build context a builder received (unchanged files are not sent).
const CONTEXT_FILES: &str = "kilnd_local_files_transferred_total{local=\"context\"}";

/// A gateway in front of `n` builders and a buildx builder `gw` pointing at it.
struct Setup {
    gw: Gateway,
    buildx: Buildx,
}

impl Setup {
    fn new(n: usize) -> Self {
        Self::with(n, &[])
    }

    fn with(n: usize, args: &[&str]) -> Self {
        let gw = Gateway::start_with(n, args);
        let buildx = Buildx::new();
        buildx.create_remote("gw", &gw.addr);
        Self { gw, buildx }
    }

    fn build_command(&self, ctx: &Path) -> Command {
        let mut cmd = self.buildx.command();
        cmd.args(["build", "--builder", "gw", "--progress", "plain"]).arg(ctx);
        cmd
    }

    /// A build that must work; returns its progress output.
    fn build(&self, ctx: &Path) -> String {
        let out = run_unchecked(&mut self.build_command(ctx));
        assert!(out.status.success(), "build of {} failed:\n{}", ctx.display(), streams(&out));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Starts a build in the background, its progress going to `log`.
    fn spawn_build(&self, ctx: &Path, log: &Path) -> Child {
        let file = std::fs::File::create(log).unwrap();
        self.build_command(ctx).stdin(Stdio::null()).stdout(Stdio::null()).stderr(file).spawn().unwrap()
    }

    /// The builder (by index) of the last session of the project in `ctx`:
    /// buildx's shared key is the directory's name and the client's node.
    fn builder_of(&self, ctx: &Path) -> usize {
        let name = format!("{}:", ctx.file_name().unwrap().to_string_lossy());
        let sessions = self.gw.sessions();
        let found = sessions.iter().rev().find(|(key, _)| key.starts_with(&name));
        found.unwrap_or_else(|| panic!("no session of {name} in {sessions:?}")).1
    }

    /// The builders of the sessions that carried a project (not buildx's probes).
    fn project_sessions(&self) -> Vec<usize> {
        self.gw.sessions().into_iter().filter(|(key, _)| !key.is_empty()).map(|(_, b)| b).collect()
    }

    /// The gateway's own metrics.
    fn gateway_metrics(&self) -> String {
        http_get(&format!("http://{}/metrics", self.gw.metrics_addr))
    }
}

fn http_get(url: &str) -> String {
    ureq::get(url).call().unwrap().body_mut().read_to_string().unwrap()
}

/// The value of the sample `series` (name and labels as exposed), 0 when absent.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics.lines().find_map(|l| l.strip_prefix(&format!("{series} "))).map_or(0.0, |v| v.parse().unwrap())
}

fn builder_metric(b: &Kilnd, series: &str) -> f64 {
    sample(&b.debug_get("/metrics").1, series)
}

/// Builds running on `b` now (its `/load`).
fn running_builds(b: &Kilnd) -> u64 {
    let (_, body) = b.debug_get("/load");
    let load: serde_json::Value = serde_json::from_str(&body).unwrap();
    load["builds"].as_u64().unwrap()
}

/// A context with a Dockerfile `FROM <base image>` + `steps` and `files`.
fn context(steps: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
    let ctx = tempfile::Builder::new().prefix("kiln-gw-ctx-").tempdir().unwrap();
    std::fs::write(ctx.path().join("Dockerfile"), format!("FROM {}\n{steps}", TestEnv::get().base_image))
        .unwrap();
    for (name, content) in files {
        std::fs::write(ctx.path().join(name), content).unwrap();
    }
    ctx
}

/// Polls `done` every 100 ms; panics with `what` after `timeout`.
fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "{what}: not after {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn finish(child: Child, log: &Path) -> (bool, String) {
    let out: Output = child.wait_with_output().unwrap();
    let progress = read(log);
    eprintln!("--- {}\n{progress}", log.display());
    (out.status.success(), progress)
}

#[test]
fn rebuilding_a_project_lands_on_its_builder_and_sends_only_what_changed() {
    let s = Setup::new(3);
    let ctx = context(
        "COPY . /src\nRUN cat /src/a.txt /src/b.txt > /joined\n",
        &[("a.txt", "a\n"), ("b.txt", "b\n"), ("c.txt", "c\n")],
    );

    let first = s.build(ctx.path());
    assert!(
        progress_steps(&first).iter().all(|(_, cached)| !cached),
        "a fresh builder runs every step:\n{first}"
    );
    let home = s.builder_of(ctx.path());
    let sent = builder_metric(&s.gw.builders[home], CONTEXT_FILES);
    assert!(sent >= 4.0, "the whole context went to builder {home} first: {sent} files");

    // Unchanged: the same builder, every step cached, no file sent again.
    let second = s.build(ctx.path());
    assert_eq!(s.builder_of(ctx.path()), home, "the rebuild went elsewhere: {:?}", s.gw.sessions());
    let all = progress_steps(&second);
    assert_eq!(all.len(), 3, "FROM, COPY, RUN: {all:?}\n{second}");
    assert!(all.iter().all(|(_, cached)| *cached), "{all:?}");
    assert_eq!(builder_metric(&s.gw.builders[home], CONTEXT_FILES), sent, "an unchanged context was sent");

    // One file changed: only that file travels, and only what reads it runs.
    std::fs::write(ctx.path().join("c.txt"), "c changed\n").unwrap();
    let third = s.build(ctx.path());
    assert_eq!(s.builder_of(ctx.path()), home);
    let cached: Vec<bool> = progress_steps(&third).into_iter().map(|(_, c)| c).collect();
    assert_eq!(cached, [true, false, false], "{third}");
    assert_eq!(builder_metric(&s.gw.builders[home], CONTEXT_FILES), sent + 1.0);
    for (i, b) in s.gw.builders.iter().enumerate().filter(|(i, _)| *i != home) {
        assert_eq!(builder_metric(b, CONTEXT_FILES), 0.0, "builder {i} received the context too");
    }
    let hits = s
        .gateway_metrics()
        .lines()
        .filter(|l| l.starts_with("kiln_gateway_sessions_total{") && l.contains("choice=\"affinity_hit\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum::<f64>();
    assert_eq!(hits, 2.0, "both rebuilds are counted as affinity hits");
}

#[test]
fn twenty_projects_spread_over_three_builders_with_none_over_half() {
    let s = Setup::new(3);
    let projects: Vec<_> = (0..20)
        .map(|i| {
            let dir = tempfile::Builder::new().prefix(&format!("kiln-gw-project-{i}-")).tempdir().unwrap();
            std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\nCOPY project.txt /\n").unwrap();
            std::fs::write(dir.path().join("project.txt"), format!("project {i}\n")).unwrap();
            dir
        })
        .collect();
    for p in &projects {
        s.build(p.path());
    }
    let placed = s.project_sessions();
    assert_eq!(placed.len(), 20, "one session per project: {:?}", s.gw.sessions());
    let per: Vec<usize> = (0..3).map(|i| placed.iter().filter(|&&b| b == i).count()).collect();
    eprintln!("builds per builder: {per:?}");
    assert!(per.iter().all(|&n| n > 0), "a builder took no project: {per:?}");
    assert!(per.iter().all(|&n| n <= 10), "a builder took more than half: {per:?}");
}

#[test]
fn bake_targets_sharing_one_context_spread_over_the_builders() {
    let s = Setup::new(3);
    let base = &TestEnv::get().base_image;
    let mut dockerfile = String::new();
    for t in ["one", "two", "three"] {
        // Long enough that the three targets' sessions are open together.
        dockerfile.push_str(&format!(
            "FROM {base} AS {t}\nCOPY shared.txt /\nRUN sleep 2 && echo {t} > /target && cat /shared.txt >> /target\n"
        ));
    }
    let ctx = context("", &[("shared.txt", "shared\n"), (".dockerignore", "out\n")]);
    std::fs::write(ctx.path().join("Dockerfile"), dockerfile).unwrap();
    // As in a project: the bake file next to the Dockerfile, paths relative to it.
    let mut hcl = String::from("group \"default\" {\n  targets = [\"one\", \"two\", \"three\"]\n}\n");
    for t in ["one", "two", "three"] {
        hcl.push_str(&format!(
            "target \"{t}\" {{\n  context = \".\"\n  target = \"{t}\"\n  output = [\"type=local,dest=out/{t}\"]\n}}\n"
        ));
    }
    std::fs::write(ctx.path().join("docker-bake.hcl"), hcl).unwrap();

    run(s.buildx.command().current_dir(ctx.path()).args(["bake", "--builder", "gw", "--progress", "plain"]));
    for t in ["one", "two", "three"] {
        let built = std::fs::read_to_string(ctx.path().join("out").join(t).join("target")).unwrap();
        assert_eq!(built, format!("{t}\nshared\n"));
    }
    let mut used = s.project_sessions();
    assert!(used.len() >= 3, "a session per target at least: {:?}", s.gw.sessions());
    used.sort_unstable();
    used.dedup();
    assert!(used.len() > 1, "all three targets went to builder {used:?}");
}

#[test]
fn a_builder_killed_mid_build_fails_only_its_build_and_is_avoided_afterwards() {
    let s = Setup::new(3);
    let logs = tempfile::tempdir().unwrap();
    let victim_ctx = context("RUN echo start && sleep 20\n", &[]);
    let victim_log = logs.path().join("victim.log");
    let victim_build = s.spawn_build(victim_ctx.path(), &victim_log);
    wait_for("the long step started", Duration::from_secs(30), || {
        read(&victim_log).contains("RUN echo start")
    });
    let victim = s.builder_of(victim_ctx.path());
    assert_eq!(running_builds(&s.gw.builders[victim]), 1, "the gateway log and builder {victim} disagree");

    // Two builds running meanwhile on the other builders.
    let others: Vec<_> = (0..2)
        .map(|i| {
            let ctx = context(&format!("RUN sleep 10 && echo other {i} > /other\n"), &[]);
            let log = logs.path().join(format!("other-{i}.log"));
            let child = s.spawn_build(ctx.path(), &log);
            (ctx, log, child)
        })
        .collect();
    // Their project sessions placed (after buildx's probes) and their builds running.
    wait_for("the other builds run on the other builders", Duration::from_secs(30), || {
        let placed = s.gw.sessions();
        others.iter().all(|(ctx, _, _)| {
            let name = format!("{}:", ctx.path().file_name().unwrap().to_string_lossy());
            placed.iter().any(|(key, _)| key.starts_with(&name))
        }) && s.gw.builders.iter().enumerate().all(|(i, b)| i == victim || running_builds(b) == 1)
    });
    let mut placed: Vec<usize> = others.iter().map(|(ctx, _, _)| s.builder_of(ctx.path())).collect();
    placed.sort_unstable();
    assert!(!placed.contains(&victim) && placed[0] != placed[1], "not one build per builder: {placed:?}");

    kill(s.gw.builders[victim].daemon.pid(), nix::sys::signal::Signal::SIGKILL);
    let killed_at = Instant::now();
    let (ok, progress) = finish(victim_build, &victim_log);
    assert!(!ok, "the build on the killed builder succeeded:\n{progress}");
    let lost = format!("builder {} was lost", s.gw.builders[victim].addr);
    assert!(progress.contains(&lost), "the error does not say {lost:?}:\n{progress}");
    let not_ready = format!("builder={} ready=false", s.gw.builders[victim].addr);
    wait_for("the gateway marks the dead builder not ready", Duration::from_secs(4), || {
        s.gw.daemon.log_text().contains(&not_ready)
    });
    eprintln!("marked not ready {:?} after the kill", killed_at.elapsed());
    for (_, log, child) in others {
        let (ok, progress) = finish(child, &log);
        assert!(ok, "a build on a healthy builder failed:\n{progress}");
    }

    // The same project again: its home is gone, it builds on another builder.
    std::fs::write(
        victim_ctx.path().join("Dockerfile"),
        format!("FROM {}\nRUN echo again\n", TestEnv::get().base_image),
    )
    .unwrap();
    s.build(victim_ctx.path());
    assert_ne!(s.builder_of(victim_ctx.path()), victim, "the project went back to the dead builder");
    for i in 0..3 {
        let ctx = context(&format!("RUN echo after {i}\n"), &[]);
        s.build(ctx.path());
        assert_ne!(s.builder_of(ctx.path()), victim, "a build went to the dead builder");
    }
    unmount_leftovers(s.gw.builders[victim].root.path());
}

/// Lazily unmounts what a killed kilnd left mounted under `root` (its step's
/// rootfs), so its temporary directory can go.
fn unmount_leftovers(root: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|p| Path::new(p).starts_with(root))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount").arg("-l").arg(p).status();
    }
}

fn kill(pid: u32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()), signal).unwrap();
}

#[test]
fn with_one_slot_a_second_build_waits_in_the_gateway_and_both_succeed() {
    let s = Setup::with(1, &["--max-parallel-builds", "1"]);
    let logs = tempfile::tempdir().unwrap();
    // Longer than the gateway's usual wait for a build's session (6 s): the
    // second build's Solve and Status wait as long as its session is queued.
    let first_ctx = context("RUN echo first && sleep 9\n", &[]);
    let first_log = logs.path().join("first.log");
    let first = s.spawn_build(first_ctx.path(), &first_log);
    wait_for("the first build runs", Duration::from_secs(30), || read(&first_log).contains("RUN echo first"));
    let second_ctx = context("RUN echo second\n", &[]);
    let second_log = logs.path().join("second.log");
    let second = s.spawn_build(second_ctx.path(), &second_log);
    wait_for("the second session is queued", Duration::from_secs(10), || {
        sample(&s.gateway_metrics(), "kiln_gateway_queued_sessions") == 1.0
    });
    let load: serde_json::Value = serde_json::from_str(&s.gw.builders[0].debug_get("/load").1).unwrap();
    assert_eq!(load["sessions"], 1, "the builder holds one session, not two: {load}");
    // A third client gives up while queued: it leaves the queue.
    let third_ctx = context("RUN echo third\n", &[]);
    let third_log = logs.path().join("third.log");
    let mut third = s.spawn_build(third_ctx.path(), &third_log);
    wait_for("the third session is queued", Duration::from_secs(10), || {
        sample(&s.gateway_metrics(), "kiln_gateway_queued_sessions") == 2.0
    });
    third.kill().unwrap();
    third.wait().unwrap();
    wait_for("the gateway forgets the third session", Duration::from_secs(5), || {
        sample(&s.gateway_metrics(), "kiln_gateway_queued_sessions") == 1.0
    });

    let (ok, progress) = finish(first, &first_log);
    assert!(ok, "{progress}");
    let (ok, progress) = finish(second, &second_log);
    assert!(ok, "{progress}");

    let metrics = s.gateway_metrics();
    let count = sample(&metrics, "kiln_gateway_queue_wait_seconds_count");
    let quick = sample(&metrics, "kiln_gateway_queue_wait_seconds_bucket{le=\"5\"}");
    assert!(count >= 2.0, "{metrics}");
    assert!(quick < count, "no session waited 5 s:\n{metrics}");
    assert_eq!(sample(&metrics, "kiln_gateway_queued_sessions"), 0.0);
}

#[test]
fn disk_usage_and_prune_through_the_gateway_cover_every_builder() {
    let gw = Gateway::start(3);
    let base = &TestEnv::get().base_image;
    // A distinct cache record on each builder, built on it directly.
    for (i, b) in gw.builders.iter().enumerate() {
        let def = kiln_e2e::llb::image_and_run(base, &format!("echo on-builder-{i} > /where"));
        let out = buildctl_llb(&b.addr, &def, &[]);
        assert!(out.status.success(), "{}", streams(&out));
    }
    let buildctl = |addr: &str| {
        let mut cmd = TestEnv::get().command("buildctl");
        cmd.args(["--addr", addr]);
        cmd
    };
    let du = run(buildctl(&gw.addr).args(["du", "-v"]));
    for i in 0..3 {
        assert!(
            du.contains(&format!("echo on-builder-{i} > /where")),
            "builder {i}'s record is missing:\n{du}"
        );
    }

    let records: Vec<String> = gw
        .builders
        .iter()
        .enumerate()
        .map(|(i, b)| record_id(&run(buildctl(&b.addr).args(["du", "-v"])), &format!("on-builder-{i}")))
        .collect();

    let pruned = run(buildctl(&gw.addr).arg("prune"));
    for (i, id) in records.iter().enumerate() {
        assert!(pruned.contains(id.as_str()), "builder {i}'s record {id} was not pruned:\n{pruned}");
    }
    for (i, b) in gw.builders.iter().enumerate() {
        let du = run(buildctl(&b.addr).args(["du", "-v"]));
        assert!(!du.contains("on-builder-"), "builder {i} still holds its record:\n{du}");
    }
    let du = run(buildctl(&gw.addr).args(["du", "-v"]));
    assert!(!du.contains("on-builder-"), "{du}");
}

/// The ID of the record whose description contains `needle`, in `buildctl du -v`'s output.
fn record_id(du: &str, needle: &str) -> String {
    let block = du.split("\n\n").find(|b| b.contains("Description:") && b.contains(needle));
    let block = block.unwrap_or_else(|| panic!("no record of {needle}:\n{du}"));
    let id = block.lines().find_map(|l| l.strip_prefix("ID:")).map(str::trim);
    id.unwrap_or_else(|| panic!("a record without ID:\n{block}")).to_owned()
}

/// `kiln up` with its state in a temporary directory; SIGTERM when dropped.
struct Up {
    child: Child,
    state: tempfile::TempDir,
    stdout: std::sync::mpsc::Receiver<String>,
}

impl Drop for Up {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            kill(self.child.id(), nix::sys::signal::Signal::SIGTERM);
            let _ = self.child.wait();
        }
    }
}

/// The pids of processes whose command line names `dir`.
fn processes_under(dir: &Path) -> Vec<String> {
    let out = Command::new("pgrep").arg("-f").arg(dir).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect()
}

impl Up {
    /// `kiln up` with two builders on `state`, listening on `addr`, once it
    /// has printed its buildx line; that line's arguments after `buildx`.
    fn start(state: tempfile::TempDir, addr: &str) -> (Self, Vec<String>) {
        let env = TestEnv::get();
        let config = state.path().join("kilnd.toml");
        // The local registries speak plain HTTP.
        std::fs::write(
            &config,
            format!(
                "[registry.\"{}\"]\nhttp = true\n[registry.\"{}\"]\nhttp = true\n",
                env.registry, env.auth_registry
            ),
        )
        .unwrap();
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(state.path().join("up.log")).unwrap();
        let mut child = Command::new(workspace_bin("kiln"))
            .args(["up", "--builders", "2", "--addr", addr])
            .arg("--state")
            .arg(state.path().join("pool"))
            .arg("--config")
            .arg(&config)
            .arg("--kilnd")
            .arg(workspace_bin("kilnd"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                eprintln!("kiln up: {line}");
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let up = Up { child, state, stdout: rx };
        let create = loop {
            let line = up.stdout.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
                panic!("kiln up printed no buildx line:\n{}", read(&up.state.path().join("up.log")))
            });
            if let Some((_, rest)) = line.split_once("buildx create ") {
                break format!("create {rest}");
            }
        };
        let args: Vec<String> = create.split_whitespace().map(str::to_owned).collect();
        assert_eq!(&args[..3], ["create", "--name", "kiln"], "{create}");
        assert!(args.iter().any(|a| a == "remote") && args.iter().any(|a| a == addr), "{create}");
        (up, args)
    }

    /// SIGTERM; it must exit cleanly within 30 s.
    fn stop(mut self) -> tempfile::TempDir {
        kill(self.child.id(), nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "kiln up still runs 30 s after SIGTERM");
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            status.success(),
            "kiln up exited with {status}:\n{}",
            read(&self.state.path().join("up.log"))
        );
        let state = tempfile::Builder::new().prefix("kiln-up-").tempdir().unwrap();
        std::mem::replace(&mut self.state, state)
    }
}

/// A build on the `kiln` builder of `buildx`: its progress output.
fn build_on_up(buildx: &Buildx, ctx: &Path, out: &Path) -> String {
    let result = run_unchecked(
        buildx
            .command()
            .args(["build", "--builder", "kiln", "--progress", "plain", "--output"])
            .arg(format!("type=local,dest={}", out.display()))
            .arg(ctx),
    );
    assert!(result.status.success(), "{}", streams(&result));
    String::from_utf8_lossy(&result.stderr).into_owned()
}

#[test]
fn kiln_up_runs_a_local_pool_on_a_root_only_socket_that_buildx_builds_on_and_stops_it_on_sigterm() {
    let state = tempfile::Builder::new().prefix("kiln-up-").tempdir().unwrap();
    let socket = state.path().join("run/kiln.sock");
    let addr = format!("unix://{}", socket.display());
    let pool = state.path().join("pool");
    let (up, args) = Up::start(state, &addr);
    // Root's alone, as buildkitd's socket is: builds run as root.
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.uid()), (0o600, 0), "the socket is root's alone");
    let up_pid = up.child.id().to_string();
    let running: Vec<String> = processes_under(&pool).into_iter().filter(|p| *p != up_pid).collect();
    assert_eq!(running.len(), 2, "two kilnd: {running:?}");
    // The builders are the gateway's alone too: sockets in the state directory.
    for i in 0..2 {
        let socket = pool.join(format!("builder-{i}/kilnd.sock"));
        assert!(std::fs::symlink_metadata(&socket).unwrap().file_type().is_socket(), "{}", socket.display());
    }

    let buildx = Buildx::new();
    run(buildx.command().args(&args));
    let ctx = context("RUN echo built on the local pool > /out\n", &[]);
    let out_dir = tempfile::tempdir().unwrap();
    build_on_up(&buildx, ctx.path(), out_dir.path());
    assert_eq!(std::fs::read_to_string(out_dir.path().join("out")).unwrap(), "built on the local pool\n");

    let _ = up.stop();
    let left = processes_under(&pool);
    assert!(
        left.is_empty(),
        "processes of the pool still run after kiln up stopped: {left:?} (were {running:?})"
    );
}

#[test]
fn kiln_up_restarted_on_its_state_sends_each_project_where_its_cache_is() {
    let state = tempfile::Builder::new().prefix("kiln-up-").tempdir().unwrap();
    let addr = format!("unix://{}", state.path().join("kiln.sock").display());
    let (up, args) = Up::start(state, &addr);
    let buildx = Buildx::new();
    run(buildx.command().args(&args));
    let projects: Vec<_> = (0..4)
        .map(|i| context(&format!("COPY . /src\nRUN echo project {i} > /built\n"), &[("f", &format!("{i}"))]))
        .collect();
    let out = tempfile::tempdir().unwrap();
    for p in &projects {
        build_on_up(&buildx, p.path(), out.path());
    }
    let state = up.stop();
    let (up, _) = Up::start(state, &addr);
    for (i, p) in projects.iter().enumerate() {
        let progress = build_on_up(&buildx, p.path(), out.path());
        let ran: Vec<_> = progress_steps(&progress).into_iter().filter(|(_, cached)| !cached).collect();
        assert!(ran.is_empty(), "project {i} rebuilt after the restart: {ran:?}\n{progress}");
    }
    let _ = up.stop();
}

#[test]
fn tls_with_client_certificates_admits_only_the_pools_clients() {
    let dir = tempfile::tempdir().unwrap();
    kiln_e2e::certificates(dir.path(), &["pool-a"], &["ci", "intruder"]);
    let file = |name: &str| dir.path().join(name).display().to_string();
    let mut args = kiln_e2e::gateway_tls_args(dir.path());
    args.extend(["--allow-client".to_owned(), "ci".to_owned()]);
    let gw = Gateway::start_with(1, &args.iter().map(String::as_str).collect::<Vec<_>>());

    // buildx's remote driver with the client's certificate and the server
    // name (it offers no ALPN; the gateway speaks HTTP/2 anyway).
    let buildx = Buildx::new();
    run(buildx
        .command()
        .args(["create", "--name", "tls", "--driver", "remote"])
        .arg(format!(
            "--driver-opt=cacert={},cert={},key={},servername=pool-a",
            file("ca.crt"),
            file("ci.crt"),
            file("ci.key")
        ))
        .arg(&gw.addr));
    let ctx = context("RUN echo over-tls > /out.txt\n", &[]);
    let out_dir = dir.path().join("out");
    let out = run_unchecked(
        buildx
            .command()
            .args(["build", "--builder", "tls", "--progress", "plain", "-o"])
            .arg(format!("type=local,dest={}", out_dir.display()))
            .arg(ctx.path()),
    );
    assert!(out.status.success(), "{}", streams(&out));
    assert_eq!(read(&out_dir.join("out.txt")), "over-tls\n");

    // buildctl (which does offer ALPN h2) with another client's certificate:
    // the handshake succeeds, the pool refuses it by name.
    let buildctl = |cert: &str, key: &str| {
        run_unchecked(
            TestEnv::get()
                .command("buildctl")
                .args(["--addr", &gw.addr, "--tlscacert", &file("ca.crt"), "--tlsservername", "pool-a"])
                .args(["--tlscert", &file(cert), "--tlskey", &file(key), "debug", "workers"]),
        )
    };
    assert!(buildctl("ci.crt", "ci.key").status.success(), "the allowed client lists the workers");
    let refused = buildctl("intruder.crt", "intruder.key");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(stderr.contains(r#"client "intruder" may not use this pool"#), "{stderr}");
    assert!(
        !stderr.contains("linux/") && !stderr.contains("127.0.0.1:"),
        "nothing about the pool leaks: {stderr}"
    );

    // Without a client certificate the handshake itself fails.
    let anonymous = run_unchecked(
        TestEnv::get()
            .command("buildctl")
            .args(["--addr", &gw.addr, "--tlscacert", &file("ca.crt"), "--tlsservername", "pool-a"])
            .args(["--timeout", "10", "debug", "workers"]),
    );
    assert!(!anonymous.status.success(), "{}", streams(&anonymous));
}
