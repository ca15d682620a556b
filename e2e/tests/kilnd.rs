//! kilnd as real clients see it: buildx's remote driver and buildctl.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use kiln_e2e::llb::image_and_run;
use kiln_e2e::{
    Buildx, Kilnd, TestEnv, buildctl_dockerfile, buildctl_llb, run, run_unchecked, workspace_bin,
};

const VERSION: &str = concat!("v", env!("CARGO_PKG_VERSION"));

#[test]
fn buildx_inspect_bootstrap_shows_kilnd_running_with_its_platforms() {
    let kilnd = Kilnd::start();
    let buildx = Buildx::new();
    buildx.create_remote("kilnd", &kilnd.addr);
    let out = run(buildx.command().args(["inspect", "--bootstrap", "kilnd"]));
    eprintln!("{out}");
    let line = |key: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(key).map(str::trim))
            .unwrap_or_else(|| panic!("no {key:?} line in:\n{out}"))
            .to_owned()
    };
    assert_eq!(line("Driver:"), "remote");
    assert_eq!(line("Status:"), "running");
    assert_eq!(line("BuildKit version:"), VERSION);
    assert!(line("Platforms:").starts_with("linux/amd64"), "{out}");
    assert!(out.contains("org.mobyproject.buildkit.worker.executor:"), "{out}");

    // `buildx ls` reads the same node data.
    let ls = run(buildx.command().arg("ls"));
    assert!(ls.lines().any(|l| l.contains("kilnd") && l.contains("running") && l.contains(VERSION)), "{ls}");

    // The calls were served and counted.
    let (code, metrics) = kilnd.debug_get("/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains(r#"kilnd_grpc_requests_total{method="ListWorkers",service="Control"}"#),
        "{metrics}"
    );
}

#[test]
fn buildctl_lists_the_worker_and_the_version() {
    let kilnd = Kilnd::start();
    let buildctl = || {
        let mut cmd = TestEnv::get().command("buildctl");
        cmd.args(["--addr", &kilnd.addr]);
        cmd
    };
    let workers = run(buildctl().args(["debug", "workers", "-v"]));
    assert!(workers.contains("linux/amd64"), "{workers}");
    assert!(workers.contains("org.mobyproject.buildkit.worker.executor"), "{workers}");
    let info = run(buildctl().args(["debug", "info"]));
    assert!(info.contains("kiln.dev/kilnd") && info.contains(VERSION), "{info}");
    // Nothing is cached yet: du answers with no records instead of an error.
    run(buildctl().arg("du"));
}

#[test]
fn sigterm_stops_accepting_and_exits_cleanly() {
    let mut kilnd = Kilnd::start();
    assert_eq!(kilnd.debug_get("/readyz").0, 200);
    let start = Instant::now();
    assert!(
        kilnd.daemon.stop(Duration::from_secs(10)),
        "kilnd ignored SIGTERM:\n{}",
        kilnd.daemon.log_text()
    );
    assert!(start.elapsed() < Duration::from_secs(5), "idle kilnd took {:?} to stop", start.elapsed());
    let log = kilnd.daemon.log_text();
    assert!(log.contains("draining") && log.contains("exiting"), "{log}");
}

#[test]
fn a_second_daemon_on_the_same_root_is_refused() {
    let kilnd = Kilnd::start();
    let out = run_unchecked(
        Command::new(workspace_bin("kilnd"))
            .args(["--addr", "tcp://127.0.0.1:1"])
            .arg("--root")
            .arg(kilnd.root.path().join("state")),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("another kilnd is using root directory"), "{stderr}");
}

#[test]
fn bad_command_lines_are_named() {
    let out = run_unchecked(Command::new(workspace_bin("kilnd")).args(["--addr", "127.0.0.1:1234"]));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("expected tcp://HOST:PORT or unix:///PATH"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kilnd.toml");
    std::fs::write(&config, "[grpc]\nadress = [\"tcp://127.0.0.1:1\"]\n").unwrap();
    let out = run_unchecked(Command::new(workspace_bin("kilnd")).arg("--config").arg(&config));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("adress") && stderr.contains("kilnd.toml"), "{stderr}");
}

/// buildx runs a hidden probe build before every build (Session, Solve,
/// Status, LLBBridge Ping and Return); then the real build runs the
/// Dockerfile frontend through the LLBBridge and exports to the client.
#[test]
fn buildx_builds_a_dockerfile_after_its_probe_build() {
    let env = TestEnv::get();
    let kilnd = Kilnd::start();
    let buildx = Buildx::new();
    buildx.create_remote("kilnd", &kilnd.addr);
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM {}\nWORKDIR /app\nCOPY a.txt .\nRUN echo \"ran $(cat a.txt)\" > out\n", env.base_image),
    )
    .unwrap();
    std::fs::write(ctx.path().join("a.txt"), "hello\n").unwrap();
    let dest = ctx.path().join("out");
    let out = run(buildx
        .command()
        .args(["build", "--builder", "kilnd", "--progress", "plain"])
        .arg("--output")
        .arg(format!("type=local,dest={}", dest.display()))
        .arg(ctx.path()));
    let _ = out;
    assert_eq!(std::fs::read_to_string(dest.join("app/out")).unwrap(), "ran hello\n");
    assert_eq!(std::fs::read_to_string(dest.join("app/a.txt")).unwrap(), "hello\n");

    let (_, metrics) = kilnd.debug_get("/metrics");
    let count = |method: &str, service: &str| -> u64 {
        let key = format!("kilnd_grpc_requests_total{{method=\"{method}\",service=\"{service}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&key)).map_or(0, |n| n.parse().unwrap())
    };
    // The probe build and the real build each open a session, solve, ping and return.
    assert_eq!(count("Session", "Control"), 2, "{metrics}");
    assert_eq!(count("Solve", "Control"), 2, "{metrics}");
    assert_eq!(count("Ping", "LLBBridge"), 2, "{metrics}");
    assert_eq!(count("Return", "LLBBridge"), 2, "{metrics}");
    assert_eq!(count("Solve", "LLBBridge"), 1, "the real build ran the frontend once: {metrics}");
    assert!(!kilnd.daemon.log_text().contains("panicked"), "{}", kilnd.daemon.log_text());
}

#[test]
fn buildctl_solves_llb_from_stdin_and_bad_llb_is_a_clear_error() {
    use kiln_proto::buildkit::pb;
    let kilnd = Kilnd::start();

    // The empty definition: a return op with no input, i.e. scratch.
    let ret = prost::Message::encode_to_vec(&pb::Op::default());
    let empty = pb::Definition { def: vec![ret], ..Default::default() };
    let out = buildctl_llb(&kilnd.addr, &empty, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // An op that names an input the definition does not have.
    let dangling = pb::Op {
        inputs: vec![pb::Input { digest: "sha256:0000".into(), index: 0 }],
        op: Some(pb::op::Op::Merge(pb::MergeOp { inputs: vec![pb::MergeInput { input: 0 }] })),
        ..Default::default()
    };
    let bytes = prost::Message::encode_to_vec(&dangling);
    let ret = pb::Op {
        inputs: vec![pb::Input { digest: kiln_e2e::llb::digest_of(&bytes), index: 0 }],
        ..Default::default()
    };
    let bad = pb::Definition { def: vec![bytes, prost::Message::encode_to_vec(&ret)], ..Default::default() };
    let out = buildctl_llb(&kilnd.addr, &bad, &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid LLB") && stderr.contains("sha256:0000"), "{stderr}");

    // Bytes that are no op at all.
    let garbage = pb::Definition { def: vec![vec![0xff; 7], vec![]], ..Default::default() };
    let out = buildctl_llb(&kilnd.addr, &garbage, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not decode"));
    // The daemon is still serving.
    assert!(buildctl_llb(&kilnd.addr, &empty, &[]).status.success());
    assert!(!kilnd.daemon.log_text().contains("panicked"));
}

#[test]
fn buildctl_runs_a_step_on_a_pulled_image_and_a_rebuild_is_cached() {
    let kilnd = Kilnd::start();
    let def = image_and_run(&TestEnv::get().base_image, "echo built-by-kilnd > /hello && cat /hello");
    let out = buildctl_llb(&kilnd.addr, &def, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("built-by-kilnd"), "the step's output is shown: {stderr}");
    assert!(!stderr.contains("CACHED"), "{stderr}");

    let out = buildctl_llb(&kilnd.addr, &def, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.matches("CACHED").count(), 2, "both vertices are cached: {stderr}");

    // A failing step fails the build with the step's command and exit code.
    let out = buildctl_llb(
        &kilnd.addr,
        &image_and_run(&TestEnv::get().base_image, "echo about to fail; exit 3"),
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("did not complete successfully: exit code: 3"), "{stderr}");
}

#[test]
fn buildctl_exports_local_tar_oci_and_pushes_an_image() {
    let env = TestEnv::get();
    let kilnd = Kilnd::start();
    let def = image_and_run(
        &TestEnv::get().base_image,
        "echo exported > /hello && mkdir -p /d && ln -s ../hello /d/link",
    );
    let out_dir = tempfile::tempdir().unwrap();

    // -o type=local
    let local = out_dir.path().join("local");
    let out = buildctl_llb(&kilnd.addr, &def, &["--output", &format!("type=local,dest={}", local.display())]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(local.join("hello")).unwrap(), "exported\n");
    assert!(local.join("bin/busybox").is_file());
    assert_eq!(std::fs::read_link(local.join("d/link")).unwrap(), std::path::Path::new("../hello"));

    // -o type=tar
    let tar = out_dir.path().join("out.tar");
    let out = buildctl_llb(&kilnd.addr, &def, &["--output", &format!("type=tar,dest={}", tar.display())]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listing = run(Command::new("tar").arg("-tvf").arg(&tar));
    assert!(listing.lines().any(|l| l.ends_with(" hello")), "{listing}");
    assert!(listing.lines().any(|l| l.contains("d/link -> ../hello")), "{listing}");

    // -o type=oci
    let oci = out_dir.path().join("oci.tar");
    let out = buildctl_llb(
        &kilnd.addr,
        &def,
        &["--output", &format!("type=oci,dest={},name=kiln/oci:1", oci.display())],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listing = run(Command::new("tar").arg("-tf").arg(&oci));
    assert!(listing.contains("oci-layout") && listing.contains("index.json"), "{listing}");

    // -o type=image,push=true
    let image = format!("{}/{}:kilnd", env.registry, kiln_e2e::unique("kiln-e2e/llb"));
    let metadata = out_dir.path().join("metadata.json");
    let out = buildctl_llb(
        &kilnd.addr,
        &def,
        &[
            "--output",
            &format!("type=image,name={image},push=true"),
            "--metadata-file",
            metadata.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&metadata).unwrap()).unwrap();
    let digest = meta["containerimage.digest"].as_str().unwrap();
    let (name, tag) = kiln_e2e::repo_and_tag(&image);
    let manifest = kiln_e2e::Registry::plain().manifest(name, tag).unwrap();
    eprintln!("pushed {image}@{}", manifest.digest);
    assert_eq!(manifest.digest, digest);
    assert_eq!(manifest.json["layers"].as_array().unwrap().len(), 2, "base + RUN: {}", manifest.json);
    // The export's parts show under its step, as BuildKit's do.
    let progress = String::from_utf8_lossy(&out.stderr);
    for part in
        ["exporting layers", &format!("exporting manifest {digest}"), "pushing layers and manifest for"]
    {
        assert!(progress.lines().any(|l| l.contains(part) && l.ends_with("done")), "{part}:\n{progress}");
    }
}

#[test]
fn buildctl_du_lists_the_cache_and_prune_empties_it() {
    let kilnd = Kilnd::start();
    let out = buildctl_llb(&kilnd.addr, &image_and_run(&TestEnv::get().base_image, "echo du > /du"), &[]);
    assert!(out.status.success());
    let buildctl = || {
        let mut cmd = TestEnv::get().command("buildctl");
        cmd.args(["--addr", &kilnd.addr]);
        cmd
    };
    let du = run(buildctl().args(["du", "-v"]));
    assert!(du.contains("/bin/sh -c echo du > /du"), "{du}");
    let pruned = run(buildctl().arg("prune"));
    assert!(pruned.contains("Total:"), "{pruned}");
    let du = run(buildctl().args(["du", "-v"]));
    assert!(!du.contains("echo du"), "{du}");
    // The next build runs again from nothing, and works.
    let out = buildctl_llb(&kilnd.addr, &image_and_run(&TestEnv::get().base_image, "echo du > /du"), &[]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("CACHED"));
}

#[test]
fn garbage_collection_by_policy_keeps_the_cache_under_its_limit() {
    let kilnd = Kilnd::start_configured("[[worker.oci.gcpolicy]]\nmaxUsedSpace = \"64KB\"\n", |_| {});
    let buildctl = || {
        let mut cmd = TestEnv::get().command("buildctl");
        cmd.args(["--addr", &kilnd.addr]);
        cmd
    };
    let workers = run(buildctl().args(["debug", "workers", "-v"]));
    assert!(
        workers.contains("GC Policy") && workers.contains("Maximum used space:\t65.536kB"),
        "the policy is listed: {workers}"
    );

    // A 1 MB layer is over the limit: collected once the build ends.
    let def = image_and_run(&TestEnv::get().base_image, "head -c 1000000 /dev/zero > /big");
    assert!(buildctl_llb(&kilnd.addr, &def, &[]).status.success());
    let start = Instant::now();
    while run(buildctl().args(["du", "-v"])).contains("/big") {
        assert!(start.elapsed() < Duration::from_secs(10), "the layer is still cached after 10 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    let again = buildctl_llb(&kilnd.addr, &def, &[]);
    assert!(again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.matches("CACHED").count() < 2, "the step runs again: {stderr}");
    assert!(
        kilnd.daemon.log_text().contains("garbage collection freed cache"),
        "{}",
        kilnd.daemon.log_text()
    );
}

/// Two stages whose images resolve to the same manifest (the seeded index's
/// amd64 entry is the plain image) are pulled at once on an empty daemon:
/// both loads must find the resolved image.
#[test]
fn two_stages_resolving_to_one_image_pull_it_at_once() {
    let env = TestEnv::get();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!(
            "FROM {} AS a\nRUN echo a > /a\nFROM {} AS b\nRUN echo b > /b\n\
             FROM scratch\nCOPY --from=a /a /a\nCOPY --from=b /b /b\n",
            env.base_image, env.base_image_multi
        ),
    )
    .unwrap();
    for _ in 0..4 {
        let kilnd = Kilnd::start();
        let out = run_unchecked(
            env.command("buildctl")
                .args(["--addr", &kilnd.addr, "build", "--frontend", "dockerfile.v0", "--local"])
                .arg(format!("context={}", dir.path().display()))
                .arg("--local")
                .arg(format!("dockerfile={}", dir.path().display())),
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn buildctl_builds_with_the_dockerfile_frontend() {
    let env = TestEnv::get();
    let kilnd = Kilnd::start();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM {}\nCOPY hi.txt /hi.txt\nRUN cat /hi.txt > /copy\n", env.base_image),
    )
    .unwrap();
    std::fs::write(ctx.path().join("hi.txt"), "hi from buildctl\n").unwrap();
    let dest = ctx.path().join("out");
    buildctl_dockerfile(&kilnd.addr, ctx.path(), &format!("type=local,dest={}", dest.display()));
    assert_eq!(std::fs::read_to_string(dest.join("copy")).unwrap(), "hi from buildctl\n");
}

#[test]
fn a_local_source_naming_an_unknown_session_fails_clearly() {
    use kiln_proto::buildkit::pb;
    let kilnd = Kilnd::start();
    let source = pb::Op {
        op: Some(pb::op::Op::Source(pb::SourceOp {
            identifier: "local://context".into(),
            attrs: [("local.session".to_owned(), "no-such-session".to_owned())].into(),
        })),
        ..Default::default()
    };
    let bytes = prost::Message::encode_to_vec(&source);
    let ret = pb::Op {
        inputs: vec![pb::Input { digest: kiln_e2e::llb::digest_of(&bytes), index: 0 }],
        ..Default::default()
    };
    let def = pb::Definition { def: vec![bytes, prost::Message::encode_to_vec(&ret)], ..Default::default() };
    let out = buildctl_llb(&kilnd.addr, &def, &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // After waiting for the named session, kilnd falls back to the build's own, which has no files.
    assert!(stderr.contains("offers no local files"), "{stderr}");
    assert!(!kilnd.daemon.log_text().contains("panicked"));
}

#[test]
fn a_context_sent_again_after_edits_and_removals_is_exported_as_it_now_is() {
    let kilnd = Kilnd::start();
    let ctx = tempfile::tempdir().unwrap();
    let c = |rel: &str| ctx.path().join(rel);
    for i in 0..200 {
        std::fs::create_dir_all(c(&format!("d{}", i % 4))).unwrap();
        std::fs::write(c(&format!("d{}/f{i}.txt", i % 4)), format!("file {i}\n")).unwrap();
    }
    std::os::unix::fs::symlink("d0/f0.txt", c("link")).unwrap();
    let mut llb = kiln_e2e::llb::Llb::default();
    let local = llb.local("context");
    let def = llb.finish(&local);
    let context = format!("context={}", ctx.path().display());
    // Twelve generations of edits: more than kilnd stacks as layers of
    // changes before it snapshots the whole tree again.
    for generation in 0..12 {
        match generation {
            0 => {}
            1 => std::fs::remove_dir_all(c("d3")).unwrap(),
            2 => {
                std::fs::remove_file(c("link")).unwrap();
                std::os::unix::fs::symlink("d1/f1.txt", c("link")).unwrap();
            }
            3 => {
                std::fs::remove_file(c("d2/f2.txt")).unwrap();
                std::fs::create_dir(c("d2/f2.txt")).unwrap();
                std::fs::write(c("d2/f2.txt/inside"), "now a directory\n").unwrap();
            }
            4 => {
                std::fs::remove_dir_all(c("d2/f2.txt")).unwrap();
                std::fs::write(c("d2/f2.txt"), "a file again\n").unwrap();
            }
            g => {
                std::fs::write(c(&format!("d0/f{}.txt", g * 4)), format!("edited in {g}, longer\n")).unwrap();
                std::fs::remove_file(c(&format!("d1/f{}.txt", 1 + (g - 5) * 4))).unwrap();
                std::fs::create_dir_all(c(&format!("new/{g}"))).unwrap();
                std::fs::write(c(&format!("new/{g}/added")), format!("added in {g}\n")).unwrap();
            }
        }
        let out = tempfile::tempdir().unwrap();
        let dest = format!("type=local,dest={}", out.path().display());
        let built = buildctl_llb(&kilnd.addr, &def, &["--local", &context, "--output", &dest]);
        assert!(built.status.success(), "generation {generation}");
        let tree = |dir: &std::path::Path| kiln_e2e::file_tree(dir, |_| false);
        assert_eq!(tree(out.path()), tree(ctx.path()), "generation {generation}");
    }
    // The snapshots were stacked up to the limit, then made whole again.
    let log = kilnd.daemon.log_text();
    let layers: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("local source transferred"))
        .filter_map(|l| l.split("layers=").nth(1)?.split_whitespace().next())
        .collect();
    assert_eq!(layers, ["1", "2", "3", "4", "5", "6", "7", "8", "1", "2", "3", "4"], "{log}");
    assert!(!log.contains("panicked"));
}
