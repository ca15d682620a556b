//! Rootless kilnd (docs/rootless.md): kilnd run by a user without privileges
//! inside RootlessKit's user namespace builds and pushes what a kilnd run as
//! root does, for a stock buildx. The user is `KILN_ROOTLESS_USER`, which
//! e2e/env/up makes with its own subordinate ids.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use kiln_e2e::{Buildx, Kilnd, TestEnv, run, run_unchecked, streams, unique, workspace_bin};

fn rootless_user() -> String {
    std::env::var("KILN_ROOTLESS_USER")
        .expect("KILN_ROOTLESS_USER is not set: run `eval \"$(e2e/env/up)\"` first")
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// A build of `dockerfile` on the builder `name`, with `args`.
fn build(buildx: &Buildx, name: &str, dockerfile: &str, args: &[&str]) {
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("Dockerfile"), dockerfile).unwrap();
    run(buildx
        .command()
        .args(["build", "--builder", name, "--progress", "plain"])
        .args(args)
        .arg(ctx.path()));
}

#[test]
fn a_rootless_kilnd_builds_and_pushes_what_a_rootful_one_does() {
    let env = TestEnv::get();
    let user = rootless_user();
    let rootless = Kilnd::start_rootless(&user, |_| {});
    let rootful = Kilnd::start();
    let uid = run(Command::new("id").args(["-u", &user])).trim().to_owned();
    let buildx = Buildx::new();
    buildx.create_remote("rootless", &rootless.addr);
    buildx.create_remote("rootful", &rootful.addr);

    // What a step sees of its ids, files owned by another user, a deleted
    // file (a whiteout), a directory made again (an opaque directory) and
    // the network (rootless steps share kilnd's: the host's here).
    let first = |nonce: &str| {
        format!(
            "FROM {base}\n\
             ARG NONCE={nonce}\n\
             RUN mkdir -p /data/old && echo old > /data/old/f && chown -R 1000:1000 /data \
                 && cat /proc/self/uid_map > /uid_map && id -u > /step_uid\n\
             RUN rm /etc/group && rm -rf /data && mkdir /data && echo new > /data/new && chown 1000:1000 /data/new\n\
             RUN wget -q -O /registry_answer http://{registry}/v2/ 2>/dev/null || echo unreachable > /registry_answer\n",
            base = env.base_image,
            registry = env.registry,
        )
    };
    let check = |image: &str| {
        format!(
            "FROM {image}\n\
             RUN ls /data > /listing && stat -c %u:%g /data/new > /owner \
                 && (test -e /etc/group && echo present || echo deleted) > /group\n\
             FROM scratch\n\
             COPY --from=0 /listing /owner /group /uid_map /step_uid /registry_answer /\n"
        )
    };

    for daemon in ["rootless", "rootful"] {
        let nonce = unique(daemon);
        let image = format!("{}/kiln-test/rootless:{nonce}", env.registry);
        build(&buildx, daemon, &first(&nonce), &["-o", &format!("type=image,name={image},push=true")]);
        // The pushed image, built on again by the rootless kilnd, has the
        // first build's files, owners, deletions and opaque directory.
        let out = tempfile::tempdir().unwrap();
        build(
            &buildx,
            "rootless",
            &check(&image),
            &["-o", &format!("type=local,dest={}", out.path().display())],
        );
        assert_eq!(
            read(out.path(), "listing"),
            "new\n",
            "{daemon}: /data was made again, its old files are gone"
        );
        assert_eq!(read(out.path(), "owner"), "1000:1000\n", "{daemon}");
        assert_eq!(read(out.path(), "group"), "deleted\n", "{daemon}: the whiteout of /etc/group");
        assert_eq!(read(out.path(), "step_uid"), "0\n", "{daemon}: a step runs as root of its namespace");
        // The registry listens on the host's loopback: a rootless step shares
        // kilnd's network (the host's, under `--net=host`), a rootful one has
        // a namespace of its own, whose loopback is its own.
        let expected = if daemon == "rootless" { "{}" } else { "unreachable\n" };
        assert_eq!(read(out.path(), "registry_answer"), expected, "{daemon}: the step's network");
        let uid_map: Vec<String> =
            read(out.path(), "uid_map").split_whitespace().map(str::to_owned).collect();
        if daemon == "rootless" {
            // Root in the step is the user outside (the map's first line is
            // `0 UID 1`), not the host's root.
            assert_eq!(uid_map[..3], ["0", uid.as_str(), "1"], "{daemon}: {uid_map:?}");
        } else {
            assert_eq!(uid_map, ["0", "0", "4294967295"], "{daemon}");
        }
    }

    // Everything rootless kilnd wrote is the user's or its subordinate ids':
    // nothing under its root belongs to the host's root.
    let state = rootless.root.path().join("state");
    let owned_by_root = run(Command::new("find").arg(&state).args(["-uid", "0", "-print", "-quit"]));
    assert_eq!(owned_by_root.trim(), "", "a file under the rootless kilnd's root belongs to root");
    let owner = run(Command::new("stat").args(["-c", "%u"]).arg(&state));
    assert_eq!(owner.trim(), uid);
}

#[test]
fn kilnd_without_privileges_and_without_a_user_namespace_says_how_to_run_it() {
    let user = rootless_user();
    let dir = tempfile::tempdir().unwrap();
    let kilnd = dir.path().join("kilnd");
    std::fs::copy(workspace_bin("kilnd"), &kilnd).unwrap();
    run(Command::new("chown").arg("-R").arg(format!("{user}:")).arg(dir.path()));
    let out = run_unchecked(
        Command::new("runuser")
            .args(["-u", &user, "--"])
            .arg(&kilnd)
            .arg("--root")
            .arg(dir.path().join("state"))
            .arg("--addr")
            .arg(format!("unix://{}", dir.path().join("kilnd.sock").display())),
    );
    assert!(!out.status.success());
    let text = streams(&out);
    assert!(text.contains("without privileges") && text.contains("rootlesskit"), "{text}");
}

/// In an unprivileged pod `/proc` is masked and no procfs can be mounted, so
/// rootless pools run kilnd with `--oci-worker-no-process-sandbox`: steps
/// share kilnd's processes and `/proc`. What a step leaves running is still
/// ended with it.
#[test]
fn without_a_process_sandbox_steps_see_kilnd_and_leave_nothing_running() {
    let env = TestEnv::get();
    let user = rootless_user();
    let kilnd = Kilnd::start_rootless(&user, |cmd| {
        cmd.arg("--oci-worker-no-process-sandbox");
    });
    let buildx = Buildx::new();
    buildx.create_remote("rootless", &kilnd.addr);
    let marker = unique("left-running");
    let dockerfile = format!(
        "FROM {base}\n\
         RUN (sleep 600; echo {marker}) & ps -o comm > /processes\n\
         FROM scratch\n\
         COPY --from=0 /processes /\n",
        base = env.base_image,
    );
    let out = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    build(&buildx, "rootless", &dockerfile, &["-o", &format!("type=local,dest={}", out.path().display())]);
    assert!(started.elapsed().as_secs() < 120, "the step waited for what it left running");
    let processes = read(out.path(), "processes");
    assert!(processes.lines().any(|p| p == "kilnd"), "the step does not see kilnd's processes:\n{processes}");
    let left = run_unchecked(Command::new("pgrep").args(["-u", &user, "-f", "sleep 600"]));
    assert!(!left.status.success(), "a step's process outlived it: {}", streams(&left));
}
