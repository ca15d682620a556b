//! kilnd when things go wrong: killed mid-build, stopped mid-build, its
//! client gone mid-build. State stays consistent and builds go on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_e2e::llb::image_and_run;
use kiln_e2e::{Kilnd, TestEnv, run};
use kiln_proto::buildkit::pb;
use prost::Message;

/// Starts `buildctl build` with the definition on stdin, in the background.
fn start_build(addr: &str, def: &pb::Definition) -> std::process::Child {
    let mut child = TestEnv::get()
        .command("buildctl")
        .args(["--addr", addr, "build", "--progress", "plain"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&def.encode_to_vec()).unwrap();
    child
}

fn build(addr: &str, def: &pb::Definition) -> (bool, String) {
    let out = start_build(addr, def).wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("{stderr}");
    (out.status.success(), stderr)
}

/// The containers kilnd's runtime knows about.
fn containers(kilnd: &Kilnd) -> Vec<String> {
    let root = kilnd.root.path().join("state/executor/runc");
    let out = run(Command::new("runc").arg("--root").arg(&root).args(["list", "-q"]));
    out.lines().map(str::to_owned).filter(|l| !l.is_empty()).collect()
}

fn mounts_under(path: &std::path::Path) -> usize {
    let canonical = std::fs::canonicalize(path).unwrap();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|p| p.starts_with(canonical.to_str().unwrap())))
        .count()
}

/// Waits until the build's step is running in a container.
fn wait_for_container(kilnd: &Kilnd) {
    let start = Instant::now();
    while containers(kilnd).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the step never started:\n{}",
            kilnd.daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_daemon_killed_mid_build_restarts_consistent_and_builds_again() {
    let kilnd = Kilnd::start();
    let state = kilnd.root.path().join("state");
    // A first build leaves cache to keep.
    let (ok, _) = build(&kilnd.addr, &image_and_run(&TestEnv::get().base_image, "echo first > /first"));
    assert!(ok);

    let mut client =
        start_build(&kilnd.addr, &image_and_run(&TestEnv::get().base_image, "echo started; sleep 60"));
    wait_for_container(&kilnd);
    assert!(mounts_under(&state) > 0, "the running step has its rootfs mounted");
    Command::new("kill").arg("-KILL").arg(kilnd.daemon.pid().to_string()).status().unwrap();
    let _ = client.wait();

    // Restart on the same root: leftovers are cleaned, cache is intact.
    let mut restarted = Kilnd::restart(kilnd);
    assert!(containers(&restarted).is_empty(), "the killed build's container was removed");
    assert_eq!(mounts_under(&state), 0, "the killed build's mounts were removed");
    assert_eq!(std::fs::read_dir(state.join("cache/tmp")).unwrap().count(), 0);
    let (ok, stderr) =
        build(&restarted.addr, &image_and_run(&TestEnv::get().base_image, "echo first > /first"));
    assert!(ok, "{stderr}");
    assert_eq!(stderr.matches("CACHED").count(), 2, "the earlier build's cache survived: {stderr}");
    let (ok, stderr) =
        build(&restarted.addr, &image_and_run(&TestEnv::get().base_image, "echo again; sleep 0.1"));
    assert!(ok, "{stderr}");
    assert!(restarted.daemon.stop(Duration::from_secs(10)));
}

#[test]
fn sigterm_lets_the_running_build_finish_then_exits() {
    let mut kilnd = Kilnd::start();
    let client = start_build(
        &kilnd.addr,
        &image_and_run(&TestEnv::get().base_image, "sleep 2; echo finished-after-sigterm"),
    );
    wait_for_container(&kilnd);
    Command::new("kill").arg("-TERM").arg(kilnd.daemon.pid().to_string()).status().unwrap();
    let out = client.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the running build completed: {stderr}");
    assert!(stderr.contains("finished-after-sigterm"), "{stderr}");
    let status = kilnd.daemon.wait_exit(Duration::from_secs(10)).expect("kilnd exits once its build is done");
    assert!(status.success(), "{status}");
    assert!(kilnd.daemon.log_text().contains("drained"), "{}", kilnd.daemon.log_text());
}

#[test]
fn a_client_that_goes_away_cancels_its_step() {
    let kilnd = Kilnd::start();
    let mut client = start_build(&kilnd.addr, &image_and_run(&TestEnv::get().base_image, "sleep 60"));
    wait_for_container(&kilnd);
    client.kill().unwrap();
    let _ = client.wait();
    let start = Instant::now();
    while !containers(&kilnd).is_empty() {
        assert!(start.elapsed() < Duration::from_secs(10), "the step kept running after its client left");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The daemon goes on serving.
    let (ok, stderr) = build(&kilnd.addr, &image_and_run(&TestEnv::get().base_image, "echo still-serving"));
    assert!(ok, "{stderr}");
}
