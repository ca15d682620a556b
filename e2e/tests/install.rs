//! The install journey on the real node (`e2e/env/node-up`), as the README's
//! cluster section tells it, with Kiln's images built by kilnd
//! (`e2e/env/images`) in the local registry:
//!
//! - `helm install` of charts/kiln with the README's flags: the controller
//!   (2), the gateway (2) and the default pool Ready on the node, all from
//!   those images (the image digests the pods run are checked);
//! - the NOTES steps: a client certificate from `kiln client-cert` and the
//!   `docker buildx create` line it prints; a build through the gateway's
//!   Service that pushes an image, which then runs on the node; a client
//!   with no certificate, and one the pool does not list, refused;
//! - `kubectl apply` of a second Builder: served by its name (SNI) without
//!   a gateway restart, while a build on the default pool goes on; deleted,
//!   no longer served;
//! - `helm upgrade` to a new kilnd image, then to a new kiln image (both
//!   built through the gateway: a label on top of the images under test),
//!   each while five builds run: all builds succeed, the pool (then the
//!   controller and the gateway) run the new image, and every project built
//!   before is CACHED when built again;
//! - `helm uninstall`: its pre-delete hook deletes the pool while the
//!   controller drains it; nothing of the release is left in its namespace
//!   or the cluster but the pool's cache claim, as docs/install.md says.
//!
//! Skips, saying so, when `KILN_NODE` is not set (the tier is not up); needs
//! `KILN_IMAGE_KILN` and `KILN_IMAGE_KILND` from `e2e/env/images` (e2e/test
//! exports both).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kiln_e2e::cluster::{kubectl, wait_for};
use kiln_e2e::{
    Buildx, Registry, TestEnv, progress_steps, run, run_unchecked, streams, unique, workspace_bin,
};
use serde_json::Value;

/// The README's names: release `kiln` in namespace `kiln`.
const RELEASE: &str = "kiln";
const NAMESPACE: &str = "kiln";
/// The StorageClass of the pools' cache claims, backed by volumes the test
/// makes on the node (the test cluster has no provisioner for a real node).
const STORAGE_CLASS: &str = "kiln-install-test";
/// Builds run at once during each upgrade.
const CONCURRENT_BUILDS: usize = 5;
/// Builders of the default pool. One: with two, a project whose first build
/// a gateway replica placed away from its rendezvous choice (for load) is
/// sent to that choice, without its cache, by a replica that has not seen
/// it, as every replica after a gateway upgrade (docs/install.md, "Upgrade").
const POOL_BUILDERS: usize = 1;
const CONTROLLER: &str = "app.kubernetes.io/instance=kiln,app.kubernetes.io/component=controller";
const GATEWAY: &str = "app.kubernetes.io/instance=kiln,app.kubernetes.io/component=gateway";
const DEFAULT_POOL: &str = "kiln.dev/builder=default";
/// The label of the test's volumes.
const TEST_LABEL: &str = "kiln.dev/test: install";

/// What the node tier and e2e/env/images exported.
struct Env {
    node: String,
    node_ip: String,
    /// The registry on the node's address, where kilnd in a pod pulls and pushes.
    node_registry: String,
    kiln_image: String,
    kilnd_image: String,
}

fn env() -> Option<Env> {
    let Ok(node) = std::env::var("KILN_NODE") else {
        eprintln!(
            "SKIPPED: the real-node tier is not up (KILN_NODE is not set): run \
             `eval \"$(e2e/env/node-up)\"` after cluster-up (e2e/test does)"
        );
        return None;
    };
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: run `cargo build --release -p kiln-builder -p kiln-operator` and \
                 `eval \"$(e2e/env/images)\"` (and node-up for KILN_NODE_*) first; e2e/test does"
            )
        })
    };
    Some(Env {
        node,
        node_ip: var("KILN_NODE_IP"),
        node_registry: var("KILN_NODE_REGISTRY"),
        kiln_image: var("KILN_IMAGE_KILN"),
        kilnd_image: var("KILN_IMAGE_KILND"),
    })
}

/// An image of the local registry: `HOST/NAME:TAG` and its digest.
#[derive(Debug, Clone)]
struct Image {
    /// HOST/NAME
    repository: String,
    tag: String,
    digest: String,
}

impl Image {
    /// `HOST/NAME:TAG@DIGEST`, as e2e/env/images exports it.
    fn parse(reference: &str) -> Self {
        let (named, digest) = reference.split_once('@').unwrap_or_else(|| panic!("{reference}: no digest"));
        let (repository, tag) = named.rsplit_once(':').unwrap();
        Self { repository: repository.to_owned(), tag: tag.to_owned(), digest: digest.to_owned() }
    }

    /// `HOST/NAME:TAG`: what the chart is given and the pods name.
    fn reference(&self) -> String {
        format!("{}:{}", self.repository, self.tag)
    }

    /// NAME, the repository in the registry.
    fn name(&self) -> &str {
        self.repository.split_once('/').unwrap().1
    }
}

fn helm() -> Command {
    let env = TestEnv::get();
    let mut cmd = env.command("helm");
    cmd.env("KUBECONFIG", env.kubeconfig());
    cmd
}

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/kiln")
}

fn ns_kubectl(args: &[&str]) -> Command {
    let mut cmd = kubectl();
    cmd.args(["-n", NAMESPACE]).args(args);
    cmd
}

fn get_json(args: &[&str]) -> Value {
    let out = run_unchecked(&mut ns_kubectl(&[&["get", "-o", "json"][..], args].concat()));
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// The namespace's pods, Builders and events, for failure messages.
fn describe() -> String {
    let pods = run_unchecked(&mut ns_kubectl(&["get", "pods", "-o", "wide"]));
    let builders = run_unchecked(&mut ns_kubectl(&["get", "builders", "-o", "yaml"]));
    let events = run_unchecked(&mut ns_kubectl(&["get", "events", "--sort-by=.lastTimestamp"]));
    format!("{}\n{}\n{}", streams(&pods), streams(&builders), streams(&events))
}

fn items(list: &Value) -> Vec<Value> {
    list["items"].as_array().cloned().unwrap_or_default()
}

fn ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// Whether `pod` is Ready on `node`, not going, and runs `image` (its tag and its digest).
fn runs(pod: &Value, image: &Image, node: &str) -> bool {
    let status = &pod["status"]["containerStatuses"][0];
    ready(pod)
        && pod["metadata"]["deletionTimestamp"].is_null()
        && pod["spec"]["nodeName"] == node
        && pod["spec"]["containers"][0]["image"] == image.reference().as_str()
        && status["imageID"].as_str().is_some_and(|id| id.ends_with(&image.digest))
}

/// Waits until `count` pods of `selector` run `image` on the node, Ready, and no other pod of it is left.
fn wait_running(what: &str, selector: &str, image: &Image, node: &str, count: usize) -> Vec<Value> {
    wait_for(
        Duration::from_secs(300),
        &format!("{what}: {count} Ready on {node} from {}@{}", image.reference(), image.digest),
        || {
            let pods = items(&get_json(&["pods", "-l", selector]));
            (pods.len() == count && pods.iter().all(|p| runs(p, image, node))).then_some(pods)
        },
        describe,
    )
}

fn names(pods: &[Value]) -> Vec<String> {
    let mut names: Vec<String> =
        pods.iter().map(|p| p["metadata"]["name"].as_str().unwrap().to_owned()).collect();
    names.sort();
    names
}

/// Volumes for the pools' cache claims: hostPath directories on the node,
/// of the test's StorageClass, and their clean-up.
struct Volumes {
    dir: tempfile::TempDir,
    names: Vec<String>,
}

impl Volumes {
    fn make(count: usize) -> Self {
        let dir = tempfile::Builder::new().prefix("kiln-install-volumes-").tempdir().unwrap();
        let mut yaml = format!(
            "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {{name: {STORAGE_CLASS}}}\n\
             provisioner: kubernetes.io/no-provisioner\nvolumeBindingMode: Immediate\nreclaimPolicy: Retain\n"
        );
        let names: Vec<String> = (0..count).map(|i| format!("{}-{i}", unique("kiln-install"))).collect();
        for name in &names {
            let path = dir.path().join(name);
            std::fs::create_dir(&path).unwrap();
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: {name}, labels: {{{TEST_LABEL}}}}}\nspec:\n  \
                 storageClassName: {STORAGE_CLASS}\n  capacity: {{storage: 4Gi}}\n  accessModes: [ReadWriteOnce]\n  \
                 persistentVolumeReclaimPolicy: Retain\n  hostPath: {{path: {}, type: Directory}}\n",
                path.display()
            ));
        }
        let file = dir.path().join("volumes.yaml");
        std::fs::write(&file, yaml).unwrap();
        run(kubectl().args(["apply", "-f"]).arg(&file));
        Self { dir, names }
    }
}

impl Drop for Volumes {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = run_unchecked(kubectl().args(["delete", "pv", name, "--wait=false"]));
        }
        eprintln!("removing {}", self.dir.path().display());
    }
}

/// A release left by an earlier run that failed, and its namespace, removed
/// (Builders' finalizers lifted: no controller may be left to drain them).
fn remove_leftovers() {
    let _ = run_unchecked(helm().args(["uninstall", RELEASE, "-n", NAMESPACE, "--no-hooks", "--wait"]));
    let builders = run_unchecked(&mut ns_kubectl(&["get", "builders", "-o", "name"]));
    for b in String::from_utf8_lossy(&builders.stdout).lines() {
        let _ = run_unchecked(&mut ns_kubectl(&[
            "patch",
            b,
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ]));
    }
    let _ = run_unchecked(kubectl().args(["delete", "namespace", NAMESPACE, "--wait", "--timeout=120s"]));
    let _ = run_unchecked(kubectl().args(["delete", "pv", "-l", "kiln.dev/test=install", "--wait=false"]));
    let _ = run_unchecked(kubectl().args(["delete", "storageclass", STORAGE_CLASS]));
}

/// A pool spec for the test cluster: on the real node, its cache on the
/// test's volumes, the node's registry over plain HTTP.
fn pool_spec(env: &Env, indent: &str, builders: usize, client: &str, retain: bool) -> String {
    let node = &env.node;
    [
        format!("replicas: {{min: {builders}, max: {builders}}}"),
        format!("access: {{clients: [{client}]}}"),
        "maxParallelBuilds: 8".to_owned(),
        format!("cache: {{size: 1Gi, storageClassName: {STORAGE_CLASS}, retain: {retain}}}"),
        format!("template: {{nodeSelector: {{kubernetes.io/hostname: {node}}}}}"),
        "config: |".to_owned(),
        format!("  [registry.\"{}\"]", env.node_registry),
        "  http = true".to_owned(),
    ]
    .iter()
    .map(|l| format!("{indent}{l}\n"))
    .collect()
}

/// The test's values, besides the README's flags: everything on the real
/// node, and the pool's cache and registry settings for the test cluster.
fn values(env: &Env) -> String {
    let node = &env.node;
    format!(
        "logLevel: info,kiln_operator=debug\n\
         controller:\n  nodeSelector: {{kubernetes.io/hostname: {node}}}\n\
         gateway:\n  nodeSelector: {{kubernetes.io/hostname: {node}}}\n  shutdownGraceSeconds: 120\n\
         pools:\n- name: default\n  spec:\n{}",
        pool_spec(env, "    ", POOL_BUILDERS, "admin", true)
    )
}

/// A context directory with `dockerfile` and a file that makes it a project of its own.
fn context(dir: &Path, name: &str, dockerfile: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(&path).unwrap();
    std::fs::write(path.join("Dockerfile"), dockerfile).unwrap();
    std::fs::write(path.join("project"), name).unwrap();
    path
}

/// `command`, killed after `timeout`: a refused client must not hang.
fn run_with_timeout(command: &mut Command, timeout: Duration) -> Output {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > timeout {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

/// The client's buildx and its work directory.
struct Client<'a> {
    buildx: Buildx,
    dir: &'a Path,
}

impl Client<'_> {
    /// `kiln client-cert ARGS` in the work directory; returns the line it prints.
    fn client_cert(&self, args: &[&str]) -> String {
        run(Command::new(workspace_bin("kiln"))
            .arg("client-cert")
            .args(args)
            .current_dir(self.dir)
            .env("KUBECONFIG", TestEnv::get().kubeconfig()))
        .trim()
        .to_owned()
    }

    /// Runs a `buildx create` line `kiln client-cert` printed, as printed.
    fn create(&self, line: &str) {
        assert!(line.contains("buildx create --name "), "{line}");
        run(self.buildx.printed(line).current_dir(self.dir));
    }

    /// `buildx build --builder BUILDER` of `ctx` into a local directory.
    fn build(&self, builder: &str, ctx: &Path) -> Command {
        let mut cmd = self.buildx.command();
        let out = ctx.with_extension("out");
        cmd.args(["build", "--builder", builder, "--progress", "plain", "-o"])
            .arg(format!("type=local,dest={}", out.display()))
            .arg(ctx)
            .stdin(Stdio::null());
        cmd
    }

    /// Builds `ctx` on `builder`; panics unless it succeeds; returns the progress.
    fn build_ok(&self, builder: &str, ctx: &Path) -> String {
        let out = run_unchecked(&mut self.build(builder, ctx));
        assert!(
            out.status.success(),
            "building {} failed:\n{}\n{}",
            ctx.display(),
            streams(&out),
            describe()
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Starts building `ctx`, its progress into `ctx.log`.
    fn spawn_build(&self, builder: &str, ctx: &Path) -> Child {
        let log = std::fs::File::create(ctx.with_extension("log")).unwrap();
        self.build(builder, ctx).stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap()
    }

    /// A new image: `image` with a label, built through the gateway and
    /// pushed (through the node's registry, the same storage) as `tag`.
    fn relabel(&self, env: &Env, image: &Image, tag: &str) -> Image {
        let ctx = context(
            self.dir,
            &format!("relabel-{}-{tag}", image.name().replace('/', "-")),
            &format!(
                "FROM {}/{}@{}\nLABEL dev.kiln.test.upgrade=\"{tag}\"\n",
                env.node_registry,
                image.name(),
                image.digest
            ),
        );
        let pushed_as = format!("{}/{}:{tag}", env.node_registry, image.name());
        let out = run_unchecked(
            self.buildx
                .command()
                .args(["build", "--builder", "kiln", "--progress", "plain", "--push", "-t", &pushed_as])
                .arg(&ctx),
        );
        assert!(out.status.success(), "{}", streams(&out));
        let manifest = Registry::plain().manifest(image.name(), tag).expect("the relabelled image");
        assert_ne!(manifest.digest, image.digest);
        Image { repository: image.repository.clone(), tag: tag.to_owned(), digest: manifest.digest }
    }
}

/// Five projects built at once, each a RUN long enough to span an upgrade.
fn start_builds(client: &Client<'_>, round: &str) -> Vec<(PathBuf, Child)> {
    (0..CONCURRENT_BUILDS)
        .map(|i| {
            let ctx = context(
                client.dir,
                &format!("{round}-{i}"),
                &format!(
                    "FROM {base}\nCOPY project /project\nRUN sleep 40 && echo {round} {i} > /out.txt\n",
                    base = base_image()
                ),
            );
            let child = client.spawn_build("kiln", &ctx);
            (ctx, child)
        })
        .collect()
}

/// Waits until every build of `builds` runs its RUN step (it reached a builder).
fn wait_started(builds: &[(PathBuf, Child)]) {
    wait_for(
        Duration::from_secs(180),
        "every build running its RUN step",
        || {
            let started = builds
                .iter()
                .filter(|(ctx, _)| {
                    std::fs::read_to_string(ctx.with_extension("log"))
                        .is_ok_and(|l| l.contains("RUN sleep 40"))
                })
                .count();
            (started == builds.len()).then_some(())
        },
        describe,
    );
}

/// How many of `builds` are still running.
fn still_running(builds: &mut [(PathBuf, Child)]) -> usize {
    builds.iter_mut().map(|(_, child)| child.try_wait().unwrap().is_none()).filter(|running| *running).count()
}

/// Waits for the builds; returns how many failed, and asserts their outputs.
fn finish_builds(builds: Vec<(PathBuf, Child)>, round: &str) -> usize {
    let mut failed = 0;
    for (i, (ctx, mut child)) in builds.into_iter().enumerate() {
        let status = child.wait().unwrap();
        let log = std::fs::read_to_string(ctx.with_extension("log")).unwrap();
        if status.success() {
            let out = std::fs::read_to_string(ctx.with_extension("out").join("out.txt")).unwrap();
            assert_eq!(out, format!("{round} {i}\n"));
        } else {
            failed += 1;
            eprintln!("build {round} {i} FAILED:\n{log}");
        }
    }
    failed
}

/// Builds every project in `contexts` again; panics unless every step of each is CACHED.
fn assert_all_cached(client: &Client<'_>, contexts: &[PathBuf], when: &str) {
    for ctx in contexts {
        let progress = client.build_ok("kiln", ctx);
        let ran: Vec<_> = progress_steps(&progress).into_iter().filter(|(_, cached)| !cached).collect();
        assert!(!progress_steps(&progress).is_empty(), "{progress}");
        assert!(ran.is_empty(), "{} rebuilt {when}: {ran:?}\n{progress}", ctx.display());
    }
}

/// The base image of the test's projects, in the node's registry.
fn base_image() -> String {
    format!("{}/kiln-test/busybox:latest", std::env::var("KILN_NODE_REGISTRY").unwrap())
}

/// `helm upgrade --reuse-values --set ARGS --wait`; returns how long it took.
fn upgrade(set: &[String]) -> Duration {
    let start = Instant::now();
    let mut cmd = helm();
    cmd.args(["upgrade", RELEASE]).arg(chart()).args(["--namespace", NAMESPACE, "--reuse-values"]);
    for s in set {
        cmd.args(["--set", s]);
    }
    run(cmd.args(["--wait", "--timeout", "5m"]));
    start.elapsed()
}

/// The pods of the default pool: name → uid.
fn pool_pods() -> Vec<(String, String)> {
    let mut pods: Vec<(String, String)> = items(&get_json(&["pods", "-l", DEFAULT_POOL]))
        .iter()
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap().to_owned(),
                p["metadata"]["uid"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    pods.sort();
    pods
}

/// Every object left in the namespace (of every namespaced, listable kind)
/// and every cluster object labelled as the release's, as KIND/NAME.
fn objects_left() -> Vec<String> {
    let kinds = run(kubectl().args(["api-resources", "--verbs=list", "--namespaced", "-o", "name"]));
    let kinds: Vec<&str> = kinds.lines().filter(|k| !k.starts_with("events")).collect();
    let mut left: Vec<String> =
        run(&mut ns_kubectl(&["get", &kinds.join(","), "-o", "name"])).lines().map(str::to_owned).collect();
    let cluster = run(kubectl().args(["api-resources", "--verbs=list", "--namespaced=false", "-o", "name"]));
    let cluster: Vec<&str> = cluster.lines().collect();
    let selector = format!("app.kubernetes.io/instance={RELEASE}");
    left.extend(
        run(kubectl().args(["get", &cluster.join(","), "-l", &selector, "-o", "name"]))
            .lines()
            .map(str::to_owned),
    );
    left.sort();
    left
}

#[test]
fn install_build_upgrade_under_load_and_uninstall_on_the_real_node() {
    let Some(env) = env() else { return };
    let journey = Instant::now();
    let mut figures: Vec<String> = Vec::new();
    let mut since = Instant::now();
    let mut step = |what: String, since: &mut Instant| {
        eprintln!("== {what} ({:.1?})", since.elapsed());
        figures.push(format!("{what} ({:.1?})", since.elapsed()));
        *since = Instant::now();
    };
    remove_leftovers();
    let _volumes = Volumes::make(POOL_BUILDERS + 1);
    // Dropped first: whatever happens, the release and its namespace go.
    let _cleanup = Cleanup;
    let dir = tempfile::tempdir().unwrap();
    let client = Client { buildx: Buildx::new(), dir: dir.path() };
    let kiln = Image::parse(&env.kiln_image);
    let kilnd = Image::parse(&env.kilnd_image);

    // README step 2: helm install, with the test's values (the node, volumes, registry).
    let values_file = dir.path().join("values.yaml");
    std::fs::write(&values_file, values(&env)).unwrap();
    let notes = run(helm()
        .args(["install", RELEASE])
        .arg(chart())
        .args(["--namespace", NAMESPACE, "--create-namespace"])
        .args(["--set", &format!("image.repository={}", kiln.repository)])
        .args(["--set", &format!("image.tag={}", kiln.tag)])
        .args(["--set", &format!("kilndImage={}", kilnd.reference())])
        .args(["--set", "gateway.service.type=NodePort"])
        .args(["--wait", "--timeout", "5m", "-f"])
        .arg(&values_file));
    step("helm install --wait".into(), &mut since);
    // The README's (and NOTES') next two commands.
    run(&mut ns_kubectl(&["rollout", "status", "deployment/kiln-controller", "deployment/kiln-gateway"]));
    let listed =
        run(kubectl().args(["get", "builders", "--all-namespaces", "-l", "app.kubernetes.io/instance=kiln"]));
    assert!(listed.lines().any(|l| l.split_whitespace().take(2).eq(["kiln", "default"])), "{listed}");
    wait_running("the controller", CONTROLLER, &kiln, &env.node, 2);
    wait_running("the gateway", GATEWAY, &kiln, &env.node, 2);
    wait_for(
        Duration::from_secs(60),
        "a controller leads",
        || {
            let log = run_unchecked(&mut ns_kubectl(&["logs", "-l", CONTROLLER, "--tail=-1"]));
            String::from_utf8_lossy(&log.stdout).contains("leading: reconciling Builders").then_some(())
        },
        describe,
    );
    wait_running("the default pool", DEFAULT_POOL, &kilnd, &env.node, POOL_BUILDERS);
    wait_for(
        Duration::from_secs(120),
        "the default pool Ready",
        || (get_json(&["builder", "default"])["status"]["phase"] == "Ready").then_some(()),
        describe,
    );
    step(
        "controller (2, one leading), gateway (2) and the default pool Ready from the images".into(),
        &mut since,
    );

    // NOTES step 2: a client certificate; the line it prints has the node port.
    let client_cert = notes
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("kiln client-cert "))
        .unwrap_or_else(|| panic!("no kiln client-cert step in NOTES:\n{notes}"));
    assert_eq!(client_cert, "kiln client-cert --name admin --pool default.kiln --out ./kiln-admin");
    let line = client.client_cert(&client_cert.split_whitespace().skip(2).collect::<Vec<_>>());
    let node_port = get_json(&["service", "kiln-gateway"])["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
    let gateway_addr = format!("tcp://{}:{node_port}", env.node_ip);
    assert!(line.ends_with(&format!(" {gateway_addr}")), "{line}");

    // NOTES step 3: the printed line; a build through the Service, pushed.
    client.create(&line);
    let app = context(
        dir.path(),
        "app",
        &format!(
            "FROM {}\nRUN echo hello from kiln on a real node > /hello.txt\nCMD [\"cat\", \"/hello.txt\"]\n",
            base_image()
        ),
    );
    let tag = unique("app");
    let image = format!("{}/kiln-install/app:{tag}", env.node_registry);
    run(client
        .buildx
        .command()
        .args(["build", "--builder", "kiln", "--progress", "plain", "--push", "-t", &image])
        .arg(&app));
    let pushed = Registry::plain().manifest("kiln-install/app", &tag).expect("the pushed image");
    step("a build through the gateway's Service, pushed".into(), &mut since);

    // The pushed image runs on the node (pulled from the local registry).
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: app}}\nspec:\n  restartPolicy: Never\n  \
         nodeSelector: {{kubernetes.io/hostname: {node}}}\n  containers:\n  - name: app\n    image: {image}\n",
        node = env.node
    );
    let pod_file = dir.path().join("app-pod.yaml");
    std::fs::write(&pod_file, pod).unwrap();
    run(&mut ns_kubectl(&["apply", "-f", pod_file.to_str().unwrap()]));
    wait_for(
        Duration::from_secs(120),
        "the app pod Succeeded",
        || {
            let p = get_json(&["pod", "app"]);
            assert_ne!(p["status"]["phase"], "Failed", "{}", describe());
            (p["status"]["phase"] == "Succeeded").then_some(p)
        },
        describe,
    );
    assert_eq!(run(&mut ns_kubectl(&["logs", "app"])), "hello from kiln on a real node\n");
    let status = get_json(&["pod", "app"]);
    let image_id = status["status"]["containerStatuses"][0]["imageID"].as_str().unwrap();
    assert!(image_id.ends_with(&pushed.digest), "{image_id} is not {}", pushed.digest);
    run(&mut ns_kubectl(&["delete", "pod", "app", "--wait=false"]));
    step("the pushed image ran on the node".into(), &mut since);

    // Refused: a client with no certificate, and one the pool does not list.
    let probe = context(dir.path(), "probe", &format!("FROM {}\nRUN echo probe > /out.txt\n", base_image()));
    let ca = dir.path().join("kiln-admin/ca.pem");
    run(client
        .buildx
        .command()
        .args(["create", "--name", "anonymous", "--driver", "remote"])
        .arg(format!("--driver-opt=cacert={},servername=default.kiln", ca.display()))
        .arg(&gateway_addr));
    let anonymous = run_with_timeout(&mut client.build("anonymous", &probe), Duration::from_secs(60));
    assert!(!anonymous.status.success(), "a client without a certificate built:\n{}", streams(&anonymous));
    eprintln!("no certificate: {}", String::from_utf8_lossy(&anonymous.stderr).lines().last().unwrap_or(""));
    let logs = run(&mut ns_kubectl(&["logs", "-l", GATEWAY, "--tail=-1"]));
    let handshake = logs.lines().find(|l| l.contains("TLS handshake failed"));
    assert!(handshake.is_some(), "the gateway logged no failed handshake:\n{logs}");
    eprintln!("the gateway: {}", handshake.unwrap());
    client.create(&client.client_cert(&[
        "--name",
        "intruder",
        "--pool",
        "default.kiln",
        "--builder-name",
        "intruder",
    ]));
    let intruder = run_with_timeout(&mut client.build("intruder", &probe), Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&intruder.stderr);
    assert!(!intruder.status.success(), "a client the pool does not list built:\n{stderr}");
    assert!(stderr.contains(r#"client "intruder" may not use this pool"#), "{stderr}");
    step("refused: no certificate, and a client the pool does not list".into(), &mut since);

    // A second Builder, applied while a build runs on the default pool, for
    // the client `team-b` alone. A server name that is no pool's gets the
    // default pool, which refuses team-b: served or refused says which pool
    // the gateway routed to.
    let gateways = names(&items(&get_json(&["pods", "-l", GATEWAY])));
    client.create(&client.client_cert(&[
        "--name",
        "team-b",
        "--pool",
        "second.kiln",
        "--out",
        "./kiln-team-b",
        "--builder-name",
        "second",
    ]));
    let second_ctx = context(
        dir.path(),
        "second",
        &format!("FROM {}\nRUN echo on the second pool > /out.txt\n", base_image()),
    );
    let refused_team_b = |out: &Output| {
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains(r#"client "team-b" may not use this pool"#)
    };
    let before = run_with_timeout(&mut client.build("second", &second_ctx), Duration::from_secs(60));
    assert!(refused_team_b(&before), "second.kiln before its Builder exists:\n{}", streams(&before));
    let long = context(
        dir.path(),
        "long",
        &format!("FROM {}\nCOPY project /project\nRUN sleep 30 && echo long > /out.txt\n", base_image()),
    );
    let mut long_build = client.spawn_build("kiln", &long);
    let builder = format!(
        "apiVersion: kiln.dev/v1alpha1\nkind: Builder\nmetadata: {{name: second, namespace: {NAMESPACE}}}\nspec:\n{}",
        pool_spec(&env, "  ", 1, "team-b", false)
    );
    let builder_file = dir.path().join("second.yaml");
    std::fs::write(&builder_file, builder).unwrap();
    let applied = Instant::now();
    run(kubectl().args(["apply", "-f"]).arg(&builder_file));
    // The gateway answers for the pool (ListWorkers) before it has a builder.
    wait_for(
        Duration::from_secs(30),
        "the gateway serving second.kiln to team-b",
        || {
            let out = run_with_timeout(
                client.buildx.command().args(["inspect", "--bootstrap", "second"]),
                Duration::from_secs(10),
            );
            out.status.success().then_some(())
        },
        describe,
    );
    let served = applied.elapsed();
    let progress = client.build_ok("second", &second_ctx);
    assert_eq!(
        std::fs::read_to_string(second_ctx.with_extension("out").join("out.txt")).unwrap(),
        "on the second pool\n",
        "{progress}"
    );
    let built = applied.elapsed();
    assert_eq!(names(&items(&get_json(&["pods", "-l", GATEWAY]))), gateways, "the gateway pods changed");
    for p in items(&get_json(&["pods", "-l", GATEWAY])) {
        assert_eq!(p["status"]["containerStatuses"][0]["restartCount"], 0, "a gateway restarted");
    }
    let deleted = Instant::now();
    run(&mut ns_kubectl(&["delete", "builder", "second", "--wait", "--timeout=120s"]));
    let gone = deleted.elapsed();
    wait_for(
        Duration::from_secs(30),
        "second.kiln no longer served",
        || {
            refused_team_b(&run_with_timeout(
                &mut client.build("second", &second_ctx),
                Duration::from_secs(60),
            ))
            .then_some(())
        },
        describe,
    );
    let dropped = deleted.elapsed();
    assert!(
        long_build.wait().unwrap().success(),
        "the default pool's build failed while the second came and went:\n{}",
        std::fs::read_to_string(long.with_extension("log")).unwrap()
    );
    step(
        format!(
            "second Builder: served {served:.1?} after kubectl apply, first build done after {built:.1?}; \
             deleted (drained, gone) after {gone:.1?}, refused {dropped:.1?} after kubectl delete; \
             gateways not restarted; the default pool's build went on"
        ),
        &mut since,
    );

    // helm upgrade to a new kilnd image while five builds run.
    // A tag of its own each run: the node keeps what a tag named before.
    let kilnd_new = client.relabel(&env, &kilnd, &format!("{}-{}", kilnd.tag, unique("upgrade")));
    let mut first = start_builds(&client, "kilnd-upgrade");
    let first_contexts: Vec<PathBuf> = first.iter().map(|(c, _)| c.clone()).collect();
    wait_started(&first);
    let pods_before = pool_pods();
    let took = upgrade(&[format!("kilndImage={}", kilnd_new.reference())]);
    assert_eq!(still_running(&mut first), CONCURRENT_BUILDS, "the builds ended before the upgrade did");
    let failed = finish_builds(first, "kilnd-upgrade");
    assert_eq!(failed, 0, "builds failed during the kilnd upgrade\n{}", describe());
    wait_running("the default pool", DEFAULT_POOL, &kilnd_new, &env.node, POOL_BUILDERS);
    let pods_after = pool_pods();
    assert_ne!(pods_before, pods_after, "the pool's pods were not replaced");
    assert_eq!(
        pods_before.iter().map(|p| &p.0).collect::<Vec<_>>(),
        pods_after.iter().map(|p| &p.0).collect::<Vec<_>>()
    );
    step(
        format!(
            "helm upgrade to kilnd {}@{} (helm took {took:.1?}): {CONCURRENT_BUILDS} builds, {failed} failed; \
             the pool rolled ({pods_before:?} -> {pods_after:?})",
            kilnd_new.reference(),
            kilnd_new.digest
        ),
        &mut since,
    );
    assert_all_cached(&client, &first_contexts, "after the kilnd upgrade");
    step(
        format!("{} projects built again after the pool rolled: all CACHED", first_contexts.len()),
        &mut since,
    );

    // helm upgrade to a new kiln image (controller and gateway) while five builds run.
    let kiln_new = client.relabel(&env, &kiln, &format!("{}-{}", kiln.tag, unique("upgrade")));
    let mut second = start_builds(&client, "kiln-upgrade");
    let second_contexts: Vec<PathBuf> = second.iter().map(|(c, _)| c.clone()).collect();
    wait_started(&second);
    let took = upgrade(&[format!("image.tag={}", kiln_new.tag)]);
    assert_eq!(still_running(&mut second), CONCURRENT_BUILDS, "the builds ended before the upgrade did");
    // The old gateways drain: they stay, terminating, while their builds run.
    let draining: Vec<String> = items(&get_json(&["pods", "-l", GATEWAY]))
        .iter()
        .filter(|p| !p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    eprintln!("helm upgrade returned; 5 builds running; gateways terminating (draining): {draining:?}");
    let failed = finish_builds(second, "kiln-upgrade");
    assert_eq!(failed, 0, "builds failed during the kiln upgrade\n{}", describe());
    let controllers = wait_running("the controller", CONTROLLER, &kiln_new, &env.node, 2);
    let new_gateways = wait_running("the gateway", GATEWAY, &kiln_new, &env.node, 2);
    assert!(names(&new_gateways).iter().all(|n| !gateways.contains(n)), "the gateway did not roll");
    // The pool keeps its kilnd image: only the kiln image changed.
    wait_running("the default pool", DEFAULT_POOL, &kilnd_new, &env.node, POOL_BUILDERS);
    step(
        format!(
            "helm upgrade to kiln {}@{} (helm took {took:.1?}): {CONCURRENT_BUILDS} builds, {failed} failed; \
             controller {:?} and gateway {:?} rolled",
            kiln_new.reference(),
            kiln_new.digest,
            names(&controllers),
            names(&new_gateways)
        ),
        &mut since,
    );
    let all: Vec<PathBuf> = first_contexts.iter().chain(&second_contexts).cloned().collect();
    assert_all_cached(&client, &all, "after the gateway rolled");
    step(format!("{} projects built again after the gateway rolled: all CACHED", all.len()), &mut since);

    // helm uninstall: the hook deletes the pool, the controller drains it.
    run(helm().args(["uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "5m"]));
    step("helm uninstall --wait".into(), &mut since);
    let claims: Vec<String> =
        (0..POOL_BUILDERS).map(|i| format!("persistentvolumeclaim/cache-default-{i}")).collect();
    wait_for(
        Duration::from_secs(120),
        "nothing of the release left but the cache claims",
        || {
            let left = objects_left();
            let mut expected = claims.clone();
            expected.extend(["configmap/kube-root-ca.crt".to_owned(), "serviceaccount/default".to_owned()]);
            expected.sort();
            if left == expected {
                return Some(());
            }
            eprintln!("left: {left:?}");
            None
        },
        describe,
    );
    for claim in items(&get_json(&["pvc"])) {
        assert_eq!(claim["metadata"]["labels"]["kiln.dev/builder"], "default", "{claim:#}");
    }
    step(format!("nothing left but the pool's cache claims {claims:?}"), &mut since);
    // The README's last step: the cache's space back.
    run(&mut ns_kubectl(&["delete", "pvc", "-l", "kiln.dev/builder=default"]));
    assert_eq!(run(&mut ns_kubectl(&["get", "pvc", "-o", "name"])), "");
    eprintln!("install journey: {:.1?} in all", journey.elapsed());
    for f in &figures {
        eprintln!("  {f}");
    }
}

/// Removes the release and the namespace when the test ends, passed or not.
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_leftovers();
    }
}
