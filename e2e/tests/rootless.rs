//! Rootless kilnd (docs/rootless.md): kilnd run by a user without privileges
//! inside RootlessKit's user namespace builds and pushes what a kilnd run as
//! root does, for a stock buildx. The user is `KILN_ROOTLESS_USER`, which
//! e2e/env/up makes with its own subordinate ids.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use std::time::Duration;

use kiln_e2e::cluster::{Controller, Namespace, builder_yaml, install_crds, wait_for};
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

/// A `securityMode: rootless` pool on the real node (`e2e/env/node-up`),
/// from the kilnd image `e2e/env/images` built: its pod is not privileged,
/// runs as uid 1000 under RootlessKit, and a buildx build on it runs steps,
/// deletes a file, makes a directory again and pushes. Skips, saying so,
/// when the real-node tier is not up.
#[test]
fn a_rootless_pool_runs_unprivileged_pods_on_the_real_node_and_builds() {
    let (Ok(node), Ok(node_registry), Ok(image)) =
        (std::env::var("KILN_NODE"), std::env::var("KILN_NODE_REGISTRY"), std::env::var("KILN_IMAGE_KILND"))
    else {
        eprintln!(
            "SKIPPED: needs the real-node tier and Kiln's images (KILN_NODE, KILN_NODE_REGISTRY from \
             e2e/env/node-up, KILN_IMAGE_KILND from e2e/env/images; e2e/test sets all three)"
        );
        return;
    };
    let env = TestEnv::get();
    // The node pulls from the registry's address on the node's network.
    let image = image.replacen(&env.registry, &node_registry, 1);
    install_crds();
    let ns = Namespace::for_pods("rootless");
    // The cache claim's volume: a directory on the node (the test cluster has
    // no provisioner for a real node), of a StorageClass of the test's own.
    // kubelet gives hostPath volumes no fsGroup, so the directory is the
    // pod's user's, as a provisioner honouring fsGroup would make it.
    let volume = tempfile::Builder::new().prefix("kiln-rootless-volume-").tempdir().unwrap();
    run(Command::new("chown").arg("1000:1000").arg(volume.path()));
    let class = ns.name().to_owned();
    let pv = format!(
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {{name: {class}}}\n\
         provisioner: kubernetes.io/no-provisioner\nvolumeBindingMode: Immediate\n---\n\
         apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: {class}}}\nspec:\n  storageClassName: {class}\n  \
         capacity: {{storage: 4Gi}}\n  accessModes: [ReadWriteOnce]\n  persistentVolumeReclaimPolicy: Delete\n  \
         hostPath: {{path: {}, type: Directory}}\n",
        volume.path().display()
    );
    let pv_file = volume.path().with_extension("yaml");
    std::fs::write(&pv_file, pv).unwrap();
    run(kiln_e2e::cluster::kubectl().args(["apply", "-f"]).arg(&pv_file));
    let _controller = Controller::start(&ns, "rootless", &image);
    let spec = format!(
        "  replicas: {{min: 1, max: 1}}\n\
         \x20 cache: {{size: 1Gi, storageClassName: {class}, retain: false}}\n\
         \x20 template:\n\
         \x20   securityMode: rootless\n\
         \x20   nodeSelector: {{kubernetes.io/hostname: {node}}}\n\
         \x20 config: |\n\
         \x20   [registry.\"{node_registry}\"]\n\
         \x20   http = true\n"
    );
    ns.apply(&builder_yaml("rl", &spec));
    let pod = wait_for(
        Duration::from_secs(180),
        "the rootless pool's pod Ready",
        || {
            let out = run_unchecked(&mut ns.kubectl(&["get", "-o", "json", "pod", "rl-0"]));
            let pod: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let ready = pod["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
            ready.then_some(pod)
        },
        || streams(&run_unchecked(&mut ns.kubectl(&["describe", "pod", "rl-0"]))),
    );
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["securityContext"]["privileged"], false, "{container}");
    assert_eq!(container["securityContext"]["runAsUser"], 1000);
    assert_eq!(pod["spec"]["containers"][0]["image"], image.as_str());
    // What the node runs: kilnd's process is uid 1000 outside its namespace.
    let status = run(&mut ns.kubectl(&["exec", "rl-0", "--", "cat", "/proc/1/status"]));
    assert!(
        status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("1000")),
        "{status}"
    );

    let addr = format!("tcp://{}:1234", pod["status"]["podIP"].as_str().unwrap());
    let buildx = Buildx::new();
    buildx.create_remote("pool", &addr);
    let pushed = format!("{node_registry}/kiln-test/rootless-pool:{}", unique("p"));
    let first = format!(
        "FROM {node_registry}/kiln-test/busybox:latest\n\
         RUN mkdir -p /data/old && echo old > /data/old/f && cat /proc/self/uid_map > /uid_map\n\
         RUN rm /etc/group && rm -rf /data && mkdir /data && echo new > /data/new\n"
    );
    build(&buildx, "pool", &first, &["-o", &format!("type=image,name={pushed},push=true")]);
    let check = format!(
        "FROM {pushed}\n\
         RUN ls /data > /listing && (test -e /etc/group && echo present || echo deleted) > /group\n\
         FROM scratch\n\
         COPY --from=0 /listing /group /uid_map /\n"
    );
    let out = tempfile::tempdir().unwrap();
    build(&buildx, "pool", &check, &["-o", &format!("type=local,dest={}", out.path().display())]);
    assert_eq!(read(out.path(), "listing"), "new\n");
    assert_eq!(read(out.path(), "group"), "deleted\n");
    let uid_map: Vec<String> = read(out.path(), "uid_map").split_whitespace().map(str::to_owned).collect();
    assert_eq!(uid_map[..3], ["0", "1000", "1"], "root in a step is uid 1000 on the node: {uid_map:?}");

    // Deleted, the pool drains and goes, its claim with it (`retain: false`).
    run(&mut ns.kubectl(&["delete", "builder", "rl", "--wait=false"]));
    wait_for(
        Duration::from_secs(120),
        "the rootless pool gone",
        || {
            let out = run_unchecked(&mut ns.kubectl(&["get", "builder,pod", "-o", "name"]));
            (out.status.success() && out.stdout.is_empty()).then_some(())
        },
        || streams(&run_unchecked(&mut ns.kubectl(&["get", "builder,pod", "-o", "wide"]))),
    );
    let _ = run_unchecked(kiln_e2e::cluster::kubectl().args(["delete", "pv", &class, "--wait=false"]));
    let _ = run_unchecked(kiln_e2e::cluster::kubectl().args(["delete", "storageclass", &class]));
    let _ = std::fs::remove_file(&pv_file);
}
