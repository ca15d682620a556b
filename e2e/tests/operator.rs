//! The Builder controller on the real API server, scheduler and
//! controller-manager, its pods run by the kubelet stand-in as local kilnd
//! processes: pools come up Ready with their caches, scale through
//! `kubectl scale`, roll without killing a busy builder, drain on deletion,
//! report bad specs, and survive a controller crash with one leader.
//!
//! The tests take turns (one stand-in at a time hands out the loopback pod
//! addresses); each has its own namespace, node and controller.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use kiln_e2e::cluster::{Controller, Namespace, builder_yaml, wait_for};
use kiln_e2e::kubelet::{Handle, KubeletStandIn, Options};
use kiln_e2e::{TestEnv, run, run_unchecked, streams, unique, workspace_bin};
use serde_json::Value;

const IMAGE: &str = "kiln/kilnd:dev";
const WAIT: Duration = Duration::from_secs(90);

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A namespace, a stand-in node of its own and a controller: one pool's world.
struct World {
    ns: Namespace,
    kubelet: Handle,
    controller: Controller,
    _state: tempfile::TempDir,
    _turn: MutexGuard<'static, ()>,
}

impl World {
    fn new(prefix: &str) -> Self {
        Self::with_controller(prefix, |ns| Controller::start(ns, "first", IMAGE))
    }

    fn with_controller(prefix: &str, controller: impl FnOnce(&Namespace) -> Controller) -> Self {
        let turn = serial();
        let env = TestEnv::get();
        let ns = Namespace::new(prefix);
        let state = tempfile::Builder::new().prefix("kiln-standin-").tempdir().unwrap();
        let options = Options::new(workspace_bin("kiln-kubelet-standin"), env.kubeconfig(), state.path())
            .node(unique("node"))
            .image("kiln/kilnd", workspace_bin("kilnd"));
        let kubelet = KubeletStandIn::spawn(&options).unwrap();
        let controller = controller(&ns);
        Self { ns, kubelet, controller, _state: state, _turn: turn }
    }

    /// A Builder spec whose pods land on this world's node and reach the
    /// local registries; `extra` is more YAML under `spec:`.
    fn builder(&self, name: &str, extra: &str) -> String {
        let env = TestEnv::get();
        let mut spec =
            format!("  template:\n    nodeSelector: {{kubernetes.io/hostname: {}}}\n", self.kubelet.node())
                + extra
                + &format!("  config: |\n    [registry.\"{}\"]\n    http = true\n", env.registry);
        // Every client, unless the test says who; an empty list admits nobody.
        if !extra.contains("access:") {
            spec += "  access: {clients: [\"*\"]}\n";
        }
        builder_yaml(name, &spec)
    }

    fn apply(&self, yaml: &str) {
        let out = self.ns.apply(yaml);
        assert!(out.status.success(), "kubectl apply failed\n{}", streams(&out));
    }

    fn status(&self, name: &str) -> Value {
        self.ns.get_json(&["builder", name])["status"].clone()
    }

    fn pods(&self, name: &str) -> Vec<Value> {
        self.ns.list("pods", &format!("kiln.dev/builder={name}"))
    }

    /// What a person would look at when a wait fails.
    fn describe(&self) -> String {
        let get = |args: &[&str]| {
            String::from_utf8_lossy(&run_unchecked(&mut self.ns.kubectl(args)).stdout).into_owned()
        };
        format!(
            "{}\n{}\n{}\n--- controller log\n{}\n--- kubelet stand-in log (tail)\n{}",
            get(&["get", "bldr,pods,pvc", "-o", "wide"]),
            get(&["get", "bldr", "-o", "yaml"]),
            get(&["get", "events", "--sort-by=.lastTimestamp"]),
            self.controller.daemon.log_text(),
            tail(&self.kubelet.log_text(), 40),
        )
    }

    /// Waits until the pool has exactly `n` live pods, all Ready and current,
    /// and its status says so.
    fn wait_ready(&self, name: &str, n: i64) {
        wait_for(
            WAIT,
            &format!("Builder {name} has {n} Ready pods"),
            || {
                let s = self.status(name);
                let pods = self.pods(name);
                let live = pods.iter().filter(|p| p["metadata"]["deletionTimestamp"].is_null()).count();
                (s["readyReplicas"] == n && s["replicas"] == n && s["phase"] == "Ready" && live as i64 == n)
                    .then_some(())
            },
            || self.describe(),
        );
    }

    fn pod_ip(&self, pod: &str) -> String {
        self.ns.get_json(&["pod", pod])["status"]["podIP"].as_str().unwrap().to_owned()
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn names(items: &[Value]) -> Vec<String> {
    let mut v: Vec<String> =
        items.iter().map(|i| i["metadata"]["name"].as_str().unwrap().to_owned()).collect();
    v.sort();
    v
}

/// `buildctl build` of `dockerfile` on the kilnd at `ip`; the progress output.
fn build_on(ip: &str, dockerfile: &str) -> String {
    let env = TestEnv::get();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
    let out = run_unchecked(
        env.command("buildctl")
            .args(["--addr", &format!("tcp://{ip}:1234"), "build", "--frontend", "dockerfile.v0"])
            .args(["--progress", "plain", "--local"])
            .arg(format!("context={}", dir.path().display()))
            .arg("--local")
            .arg(format!("dockerfile={}", dir.path().display())),
    );
    assert!(out.status.success(), "build on {ip} failed\n{}", streams(&out));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn dockerfile(step: &str) -> String {
    format!("FROM {}\nRUN {step}\n", TestEnv::get().base_image)
}

#[test]
fn a_pool_with_min_two_comes_up_ready_with_a_cache_volume_each() {
    let w = World::new("op-min2");
    w.apply(&w.builder("pool", "  replicas: {min: 2, max: 4}\n"));
    w.wait_ready("pool", 2);

    assert_eq!(names(&w.pods("pool")), ["pool-0", "pool-1"]);
    let claims = w.ns.list("pvc", "kiln.dev/builder=pool");
    assert_eq!(names(&claims), ["cache-pool-0", "cache-pool-1"]);
    assert!(claims.iter().all(|c| c["status"]["phase"] == "Bound"), "{claims:#?}");

    let table = run(&mut w.ns.kubectl(&["get", "bldr"]));
    eprintln!("{table}");
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "PHASE", "READY", "REPLICAS", "BUSY", "MIN", "MAX", "AGE"]);
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..7], ["pool", "Ready", "2", "2", "0", "2", "4"]);

    let status = w.status("pool");
    let ready = status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap();
    assert_eq!(
        (ready["status"].as_str(), ready["message"].as_str()),
        (Some("True"), Some("2 of 2 builders ready"))
    );

    // The pods are real builders: each answers buildctl on its own address.
    for pod in ["pool-0", "pool-1"] {
        let ip = w.pod_ip(pod);
        let workers = run(TestEnv::get().command("buildctl").args([
            "--addr",
            &format!("tcp://{ip}:1234"),
            "debug",
            "workers",
        ]));
        assert!(workers.contains("linux/amd64") || workers.contains("linux/"), "{workers}");
    }
}

#[test]
fn scaling_keeps_the_cache_volumes_and_a_returning_builder_finds_its_cache() {
    let w = World::new("op-scale");
    w.apply(&w.builder("pool", "  replicas: {min: 1, max: 4}\n  idleTimeout: 1s\n"));
    w.wait_ready("pool", 1);

    run(&mut w.ns.kubectl(&["scale", "bldr/pool", "--replicas=4"]));
    w.wait_ready("pool", 4);
    let step = format!("echo {} > /stamp", unique("cached"));
    let first = build_on(&w.pod_ip("pool-3"), &dockerfile(&step));
    assert!(!first.contains("CACHED"), "the first build runs its step:\n{first}");

    run(&mut w.ns.kubectl(&["scale", "bldr/pool", "--replicas=1"]));
    w.wait_ready("pool", 1);
    assert_eq!(names(&w.pods("pool")), ["pool-0"]);
    let claims = w.ns.list("pvc", "kiln.dev/builder=pool");
    assert_eq!(
        names(&claims),
        ["cache-pool-0", "cache-pool-1", "cache-pool-2", "cache-pool-3"],
        "scale-down keeps every cache"
    );

    run(&mut w.ns.kubectl(&["scale", "bldr/pool", "--replicas=4"]));
    w.wait_ready("pool", 4);
    let again = build_on(&w.pod_ip("pool-3"), &dockerfile(&step));
    let run_line = again.lines().find(|l| l.contains("RUN ")).unwrap_or_default().to_owned();
    assert!(again.contains("CACHED"), "pool-3 came back on its volume, so its step is cached:\n{again}");
    eprintln!("{run_line}");

    // Events tell the story of the scaling.
    let events = run(&mut w.ns.kubectl(&["get", "events", "--field-selector", "involvedObject.name=pool"]));
    for reason in ["Created", "Draining", "Deleted"] {
        assert!(events.contains(reason), "no {reason} event:\n{events}");
    }
}

#[test]
fn a_template_change_rolls_the_pool_without_killing_a_busy_builder() {
    let w = World::new("op-roll");
    w.apply(&w.builder("pool", "  replicas: {min: 2, max: 2}\n"));
    w.wait_ready("pool", 2);
    let hash_of =
        |pod: &Value| pod["metadata"]["labels"]["kiln.dev/template-hash"].as_str().unwrap().to_owned();
    let old_hash = hash_of(&w.pods("pool")[0]);
    let busy_uid = w.ns.get_json(&["pod", "pool-0"])["metadata"]["uid"].clone();

    // A long build on pool-0, then a template change while it runs.
    let ip = w.pod_ip("pool-0");
    let build = std::thread::spawn(move || {
        build_on(&ip, &dockerfile(&format!("sleep 20 && echo {}", unique("long"))))
    });
    wait_for(
        Duration::from_secs(30),
        "the long build runs on pool-0",
        || w.status("pool")["busyReplicas"].as_i64().filter(|&n| n >= 1),
        || w.describe(),
    );
    let changed = w
        .builder("pool", "  replicas: {min: 2, max: 2}\n")
        .replace("http = true\n", "http = true\n    [worker.oci]\n    labels = { rolled = \"yes\" }\n");
    w.apply(&changed);

    // pool-1 (idle) is replaced first; pool-0 drains and waits for its build.
    wait_for(
        WAIT,
        "pool-1 is replaced and pool-0 drains",
        || {
            let pods = w.pods("pool");
            let p0 = pods.iter().find(|p| p["metadata"]["name"] == "pool-0")?;
            let p1 = pods.iter().find(|p| p["metadata"]["name"] == "pool-1")?;
            (hash_of(p1) != old_hash && p0["metadata"]["labels"]["kiln.dev/draining"] == "true").then_some(())
        },
        || w.describe(),
    );
    assert_eq!(w.ns.get_json(&["pod", "pool-0"])["metadata"]["uid"], busy_uid, "the busy pod is still there");

    let output = build.join().unwrap();
    assert!(output.contains("DONE"), "the long build finished:\n{output}");
    w.wait_ready("pool", 2);
    assert!(w.pods("pool").iter().all(|p| hash_of(p) != old_hash), "every pod runs the new template");
    assert_ne!(
        w.ns.get_json(&["pod", "pool-0"])["metadata"]["uid"],
        busy_uid,
        "pool-0 was replaced after its build"
    );
}

#[test]
fn deleting_a_builder_drains_its_pods_and_removes_unretained_caches() {
    let w = World::new("op-delete");
    w.apply(&w.builder("kept", "  replicas: {min: 1, max: 1}\n"));
    w.apply(&w.builder("gone", "  replicas: {min: 2, max: 2}\n  cache: {retain: false}\n"));
    w.wait_ready("kept", 1);
    w.wait_ready("gone", 2);

    run(&mut w.ns.kubectl(&["delete", "bldr", "kept", "gone", "--wait=true", "--timeout=90s"]));
    for name in ["kept", "gone"] {
        wait_for(
            WAIT,
            &format!("the pods of {name} are gone"),
            || w.pods(name).is_empty().then_some(()),
            || w.describe(),
        );
    }
    let kept = w.ns.list("pvc", "kiln.dev/builder=kept");
    assert_eq!(names(&kept), ["cache-kept-0"], "retain (the default) keeps the cache");
    wait_for(
        WAIT,
        "the caches of gone are deleted",
        || w.ns.list("pvc", "kiln.dev/builder=gone").is_empty().then_some(()),
        || w.describe(),
    );
}

#[test]
fn specs_the_controller_cannot_run_are_reported_in_conditions() {
    let mut w = World::new("op-invalid");
    // The schema cannot tell that this is not TOML; the controller can.
    w.apply(&builder_yaml("badconfig", "  config: \"[worker.oci\\n\"\n"));
    w.apply(&w.builder("badimage", "    image: kiln/does-not-exist:1\n"));

    let degraded = |name: &str, reason: &str| {
        wait_for(
            WAIT,
            &format!("{name} is Degraded with {reason}"),
            || {
                let s = w.status(name);
                let c = s["conditions"].as_array()?.iter().find(|c| c["type"] == "Degraded")?.clone();
                (c["status"] == "True" && c["reason"] == reason).then_some(c["message"].as_str()?.to_owned())
            },
            || w.describe(),
        )
    };
    let message = degraded("badconfig", "InvalidSpec");
    assert!(message.contains("spec.config") && message.contains("TOML"), "{message}");
    assert!(w.pods("badconfig").is_empty(), "nothing is started from a spec that cannot run");
    let message = degraded("badimage", "ImagePullFailed");
    assert!(message.contains("kiln/does-not-exist:1"), "{message}");

    assert!(
        w.controller.daemon.wait_exit(Duration::from_millis(100)).is_none(),
        "the controller keeps running"
    );
    let events =
        run(&mut w.ns.kubectl(&["get", "events", "--field-selector", "involvedObject.name=badimage"]));
    assert!(events.contains("ImagePullFailed"), "{events}");
}

#[test]
fn one_leader_acts_and_a_crashed_controller_converges_on_restart() {
    let mut w = World::new("op-leader");
    let second = Controller::start(&w.ns, "second", IMAGE);
    wait_for(
        Duration::from_secs(20),
        "one controller leads",
        || (w.controller.is_leader() != second.is_leader()).then_some(()),
        || w.describe(),
    );
    let (leader_is_first, mut standby) = (w.controller.is_leader(), second);
    assert!(leader_is_first, "the first controller started first and leads");

    w.apply(&w.builder("pool", "  replicas: {min: 3, max: 3}\n"));
    // Kill the leader as soon as it has started creating pods: mid-reconcile.
    wait_for(WAIT, "the first pod exists", || (!w.pods("pool").is_empty()).then_some(()), || w.describe());
    w.controller.kill();
    wait_for(
        Duration::from_secs(30),
        "the standby takes the lease",
        || standby.is_leader().then_some(()),
        || standby.daemon.log_text(),
    );
    w.wait_ready("pool", 3);
    assert_eq!(names(&w.pods("pool")), ["pool-0", "pool-1", "pool-2"], "no duplicate pods");

    // A third controller started later stands by while the second leads.
    let third = Controller::start(&w.ns, "third", IMAGE);
    std::thread::sleep(Duration::from_secs(3));
    assert!(!third.is_leader(), "only one leader");
    assert!(standby.is_leader());
    standby.daemon.stop(Duration::from_secs(10));
}

/// A kubeconfig that acts as service account `sa` of `ns` (a token from the
/// TokenRequest API), next to the admin one.
fn service_account_kubeconfig(ns: &Namespace, sa: &str, dir: &std::path::Path) -> std::path::PathBuf {
    let token = run(&mut ns.kubectl(&["create", "token", sa, "--duration=1h"])).trim().to_owned();
    let path = dir.join("sa.kubeconfig");
    std::fs::copy(TestEnv::get().kubeconfig(), &path).unwrap();
    let config = |args: &[&str]| {
        run(TestEnv::get().command("kubectl").arg("--kubeconfig").arg(&path).arg("config").args(args));
    };
    config(&["set-credentials", "kiln-controller", &format!("--token={token}")]);
    config(&["set-context", "--current", "--user=kiln-controller"]);
    path
}

/// The kiln chart as `release` in `ns`, without pods of its own (no
/// controller or gateway replicas, no pools): the tests run those as
/// processes, with the chart's service accounts.
fn apply_chart(ns: &Namespace, release: &str) {
    let chart = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/kiln");
    let rendered = run(TestEnv::get()
        .command("helm")
        .args(["template", release])
        .arg(&chart)
        .args(["--namespace", ns.name(), "--kube-version", "1.34.4"])
        .args(["--set", "controller.replicas=0", "--set", "gateway.replicas=0", "--set-json", "pools=[]"]));
    let out = ns.apply(&rendered);
    assert!(out.status.success(), "the API server takes the chart\n{}", streams(&out));
}

/// Removes what `apply_chart` made outside the namespace.
fn delete_cluster_roles(release: &str) {
    for component in ["controller", "gateway"] {
        let name = format!("{release}-{component}");
        let _ = run_unchecked(kiln_e2e::cluster::kubectl().args([
            "delete",
            "clusterrole,clusterrolebinding",
            &name,
        ]));
    }
}

/// `kubectl auth can-i ARGS` as the identity of `kubeconfig`.
fn can(kubeconfig: &std::path::Path, args: &[&str]) -> bool {
    let out = run_unchecked(
        TestEnv::get()
            .command("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["auth", "can-i"])
            .args(args),
    );
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

#[test]
fn the_charts_rbac_is_all_the_controller_needs() {
    let dir = tempfile::tempdir().unwrap();
    let release = unique("rel");
    let w = World::with_controller("op-rbac", |ns| {
        apply_chart(ns, &release);
        let kubeconfig = service_account_kubeconfig(ns, &format!("{release}-controller"), dir.path());
        let can = |args: &[&str]| can(&kubeconfig, args);
        assert!(can(&["patch", "builders.kiln.dev", "--subresource=status", "-n", ns.name()]));
        // kilnd's certificates: it reads and writes single Secrets, and
        // can neither list nor delete them.
        assert!(can(&["patch", "secrets", "-n", ns.name()]));
        assert!(!can(&["list", "secrets", "-n", ns.name()]), "the controller never lists secrets");
        assert!(!can(&["delete", "secrets", "-n", ns.name()]));
        assert!(!can(&["create", "leases.coordination.k8s.io", "-n", "default"]), "leases only at home");
        // As the chart's Deployment runs it.
        let (ca, gateway) = (
            format!("{}/{release}-builder-ca", ns.name()),
            format!("{}/{release}-gateway-builder-tls", ns.name()),
        );
        let labels = format!(
            "app.kubernetes.io/name=kiln,app.kubernetes.io/instance={release},app.kubernetes.io/component=gateway"
        );
        Controller::start_with(
            ns,
            "chart",
            IMAGE,
            &kubeconfig,
            &[
                "--builder-ca-secret",
                &ca,
                "--gateway-client-secret",
                &gateway,
                "--gateway-namespace",
                ns.name(),
                "--gateway-labels",
                &labels,
            ],
        )
    });
    w.apply(&w.builder("pool", "  replicas: {min: 1, max: 2}\n  cache: {retain: false}\n"));
    w.wait_ready("pool", 1);
    for what in [
        &["secret", "pool-kilnd-tls"][..],
        &["secret", &format!("{release}-gateway-builder-tls")],
        &["networkpolicy", "pool"],
    ] {
        let out = run_unchecked(&mut w.ns.kubectl(&[&["get"][..], what].concat()));
        assert!(out.status.success(), "{what:?}: {}", streams(&out));
    }
    run(&mut w.ns.kubectl(&["delete", "bldr", "pool", "--wait=true", "--timeout=60s"]));
    let log = w.controller.daemon.log_text();
    assert!(!log.contains("forbidden"), "the controller was refused something:\n{log}");
    delete_cluster_roles(&release);
}

#[test]
fn the_charts_rbac_is_all_the_gateway_needs() {
    let dir = tempfile::tempdir().unwrap();
    let release = unique("rel");
    let w = World::with_controller("gw-rbac", |ns| {
        apply_chart(ns, &release);
        Controller::start(ns, "first", IMAGE)
    });
    let kubeconfig = service_account_kubeconfig(&w.ns, &format!("{release}-gateway"), dir.path());
    let ns = w.ns.name();
    for verb in ["list", "watch"] {
        assert!(
            can(&kubeconfig, &[verb, "builders.kiln.dev", "--all-namespaces"]),
            "{verb} Builders everywhere"
        );
        assert!(can(&kubeconfig, &[verb, "pods", "--all-namespaces"]), "{verb} pods everywhere");
    }
    assert!(can(&kubeconfig, &["patch", "builders.kiln.dev", "-n", ns]), "the demand annotation");
    for forbidden in [
        &["get", "secrets", "-n", ns][..],
        &["patch", "builders.kiln.dev", "--subresource=status", "-n", ns],
        &["update", "builders.kiln.dev", "-n", ns],
        &["delete", "builders.kiln.dev", "-n", ns],
        &["create", "pods", "-n", ns],
        &["delete", "pods", "-n", ns],
        &["create", "leases.coordination.k8s.io", "-n", ns],
    ] {
        assert!(!can(&kubeconfig, forbidden), "the gateway may not {forbidden:?}");
    }

    // The gateway in cluster mode, as the chart's account, in front of a pool.
    w.apply(&w.builder("pool", "  replicas: {min: 1, max: 2}\n  cache: {retain: false}\n"));
    w.wait_ready("pool", 1);
    let port = kiln_e2e::free_port();
    let mut gateway = kiln_e2e::Daemon::spawn(
        "kiln gateway (chart's service account)",
        std::process::Command::new(workspace_bin("kiln"))
            .args(["gateway", "--addr", &format!("tcp://127.0.0.1:{port}"), "--watch-builders"])
            // As the chart runs it (its values' watched namespaces, or all).
            .args(["--namespace", ns])
            .env("KUBECONFIG", &kubeconfig),
        dir.path().join("gateway.log"),
    );
    gateway.wait_until(Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    wait_for(
        WAIT,
        "the gateway reports the pool's demand on the Builder",
        || {
            let annotations = w.ns.get_json(&["builder", "pool"])["metadata"]["annotations"].clone();
            annotations["kiln.dev/demand"].as_str().map(str::to_owned)
        },
        || format!("{}\n--- gateway log\n{}", w.describe(), gateway.log_text()),
    );
    // Its watches of the Builder and of the pool's pods keep going unrefused.
    std::thread::sleep(Duration::from_secs(3));
    let log = gateway.log_text();
    assert!(
        !log.contains("forbidden") && !log.contains("watching"),
        "the gateway was refused something:\n{log}"
    );
    gateway.stop(Duration::from_secs(10));
    run(&mut w.ns.kubectl(&["delete", "bldr", "pool", "--wait=true", "--timeout=60s"]));
    delete_cluster_roles(&release);
}

#[test]
fn a_pool_at_zero_scales_up_for_a_build_through_the_gateway_and_back_down() {
    let w = World::new("op-zero");
    w.apply(&w.builder("pool", "  replicas: {min: 0, max: 2}\n  idleTimeout: 5s\n"));
    wait_for(
        WAIT,
        "the pool is scaled to zero and Ready",
        || (w.status("pool")["phase"] == "Idle").then_some(()),
        || w.describe(),
    );
    assert!(w.pods("pool").is_empty());

    let dir = tempfile::tempdir().unwrap();
    let addr = format!("tcp://127.0.0.1:{}", kiln_e2e::free_port());
    let port = addr.trim_start_matches("tcp://").to_owned();
    let start_gateway = |log: &str| {
        let mut gateway = kiln_e2e::Daemon::spawn(
            "kiln gateway (cluster mode)",
            std::process::Command::new(workspace_bin("kiln"))
                .args(["gateway", "--addr", &addr, "--builder", &format!("{}/pool", w.ns.name())])
                .env("KUBECONFIG", TestEnv::get().kubeconfig()),
            dir.path().join(log),
        );
        gateway.wait_until(Duration::from_secs(20), || std::net::TcpStream::connect(&port).is_ok());
        gateway
    };
    let mut gateway = start_gateway("gateway.log");

    // buildx sees a running builder although no pod runs yet, and its build
    // waits in the gateway while the controller scales the pool up.
    let buildx = kiln_e2e::Buildx::new();
    buildx.create_remote("zero", &addr);
    let context = dir.path().join("ctx");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::write(context.join("Dockerfile"), dockerfile("echo from-zero > /out.txt")).unwrap();
    let build = |gateway: &kiln_e2e::Daemon| {
        let out = run_unchecked(
            buildx
                .command()
                .args(["build", "--builder", "zero", "--progress", "plain", "-o"])
                .arg(format!("type=local,dest={}", dir.path().join("out").display()))
                .arg(&context),
        );
        assert!(
            out.status.success(),
            "the client saw an error\n{}\n--- gateway log\n{}\n{}",
            streams(&out),
            gateway.log_text(),
            w.describe()
        );
        assert_eq!(std::fs::read_to_string(dir.path().join("out/out.txt")).unwrap(), "from-zero\n");
    };
    build(&gateway);
    let log = gateway.log_text();
    assert!(log.contains("reported demand builder=pool demand=1"), "{log}");

    // The gateway restarts without losing the pool: it is rebuilt from the
    // API server, and the next build goes through at once.
    let _ = std::process::Command::new("kill").arg("-KILL").arg(gateway.pid().to_string()).status();
    gateway.wait_exit(Duration::from_secs(5));
    let gateway = start_gateway("gateway-2.log");
    build(&gateway);

    // With no demand left, the pool goes back to zero after its idle timeout.
    wait_for(
        WAIT,
        "the pool scales back to zero",
        || (w.pods("pool").is_empty() && w.status("pool")["phase"] == "Idle").then_some(()),
        || format!("{}\n--- gateway log\n{}", w.describe(), gateway.log_text()),
    );
    let events = run(&mut w.ns.kubectl(&["get", "events", "--field-selector", "involvedObject.name=pool"]));
    assert!(events.contains("Created") && events.contains("Deleted"), "{events}");
}

#[test]
fn a_rolling_update_under_ten_concurrent_builds_fails_none() {
    let w = World::new("op-rollload");
    let spec = "  replicas: {min: 2, max: 2}\n  maxParallelBuilds: 3\n";
    w.apply(&w.builder("pool", spec));
    w.wait_ready("pool", 2);
    let hash_of =
        |pod: &Value| pod["metadata"]["labels"]["kiln.dev/template-hash"].as_str().unwrap().to_owned();
    let old_hash = hash_of(&w.pods("pool")[0]);

    let dir = tempfile::tempdir().unwrap();
    let addr = format!("tcp://127.0.0.1:{}", kiln_e2e::free_port());
    let port = addr.trim_start_matches("tcp://").to_owned();
    let mut gateway = kiln_e2e::Daemon::spawn(
        "kiln gateway (cluster mode)",
        std::process::Command::new(workspace_bin("kiln"))
            .args(["gateway", "--addr", &addr, "--builder", &format!("{}/pool", w.ns.name())])
            .env("KUBECONFIG", TestEnv::get().kubeconfig()),
        dir.path().join("gateway.log"),
    );
    gateway.wait_until(Duration::from_secs(20), || std::net::TcpStream::connect(&port).is_ok());
    let buildx = kiln_e2e::Buildx::new();
    buildx.create_remote("roll", &addr);

    // Ten builds of ten projects, each running a few seconds.
    let builds: Vec<_> = (0..10)
        .map(|i| {
            let context = dir.path().join(format!("project-{i}"));
            std::fs::create_dir_all(&context).unwrap();
            std::fs::write(context.join("Dockerfile"), dockerfile(&format!("sleep 4 && echo {i} > /n")))
                .unwrap();
            let out = dir.path().join(format!("out-{i}"));
            buildx
                .command()
                .args(["build", "--builder", "roll", "--progress", "plain", "-o"])
                .arg(format!("type=local,dest={}", out.display()))
                .arg(&context)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // The template changes while they run.
    std::thread::sleep(Duration::from_secs(2));
    w.apply(
        &w.builder("pool", spec)
            .replace("http = true\n", "http = true\n    [worker.oci]\n    labels = { rolled = \"yes\" }\n"),
    );

    for (i, child) in builds.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "build {i} failed during the rollout\n{}\n--- gateway log (tail)\n{}\n{}",
            streams(&out),
            tail(&gateway.log_text(), 60),
            w.describe()
        );
        assert_eq!(std::fs::read_to_string(dir.path().join(format!("out-{i}/n"))).unwrap(), format!("{i}\n"));
    }
    w.wait_ready("pool", 2);
    assert!(w.pods("pool").iter().all(|p| hash_of(p) != old_hash), "the rollout finished: {}", w.describe());
}

/// `kiln gateway --watch-builders` for `ns`, with TLS, client certificates
/// and per-pool server certificates from the test CA in `dir`, as `kubeconfig`.
fn watching_gateway(
    ns: &Namespace,
    dir: &std::path::Path,
    kubeconfig: &std::path::Path,
) -> (kiln_e2e::Daemon, String, String) {
    watching_gateway_with(ns, dir, kubeconfig, &[])
}

/// The same, with more arguments.
fn watching_gateway_with(
    ns: &Namespace,
    dir: &std::path::Path,
    kubeconfig: &std::path::Path,
    extra: &[String],
) -> (kiln_e2e::Daemon, String, String) {
    let file = |name: &str| dir.join(name).display().to_string();
    let addr = format!("tcp://127.0.0.1:{}", kiln_e2e::free_port());
    let metrics = format!("127.0.0.1:{}", kiln_e2e::free_port());
    let gateway = kiln_e2e::Daemon::spawn(
        "kiln gateway (watching Builders)",
        std::process::Command::new(workspace_bin("kiln"))
            .args(["gateway", "--addr", &addr, "--metrics-addr", &metrics, "--watch-builders"])
            .args(["--namespace", ns.name()])
            .args(kiln_e2e::gateway_tls_args(dir))
            .args(["--tls-issuer-cert", &file("ca.crt"), "--tls-issuer-key", &file("ca.key")])
            .args(extra)
            .env("KUBECONFIG", kubeconfig),
        dir.join(format!("gateway-{}.log", kiln_e2e::free_port())),
    );
    (gateway, addr, metrics)
}

/// `buildctl debug workers` through the gateway as `client`, naming `pool`.
fn workers_as(dir: &std::path::Path, addr: &str, client: &str, pool: &str) -> std::process::Output {
    let file = |name: &str| dir.join(name).display().to_string();
    run_unchecked(
        TestEnv::get()
            .command("buildctl")
            .args(["--addr", addr, "--tlscacert", &file("ca.crt"), "--tlsservername", pool])
            .args(["--tlscert", &file(&format!("{client}.crt")), "--tlskey", &file(&format!("{client}.key"))])
            .args(["--timeout", "10", "debug", "workers"]),
    )
}

#[test]
fn a_gateway_watching_builders_serves_them_live_by_name_and_access_list() {
    let w = World::new("op-watch");
    w.apply(&w.builder("open", "  replicas: {min: 1, max: 1}\n  cache: {retain: false}\n"));
    w.apply(&w.builder(
        "closed",
        "  replicas: {min: 1, max: 1}\n  cache: {retain: false}\n  access: {clients: []}\n",
    ));
    w.wait_ready("open", 1);
    w.wait_ready("closed", 1);
    let dir = tempfile::tempdir().unwrap();
    kiln_e2e::certificates(dir.path(), &["gateway.test"], &["ci", "other"]);
    let (mut gateway, addr, metrics) = watching_gateway(&w.ns, dir.path(), &TestEnv::get().kubeconfig());
    let ready = format!("http://{metrics}/readyz");
    gateway.wait_until(Duration::from_secs(20), || ureq::get(&ready).call().is_ok());
    let ns = w.ns.name();

    // A pool by NAME and by NAME.NAMESPACE, its certificate made for that name.
    for name in ["open".to_owned(), format!("open.{ns}")] {
        let out = workers_as(dir.path(), &addr, "ci", &name);
        assert!(out.status.success(), "{name}: {}\n{}", streams(&out), gateway.log_text());
        assert!(String::from_utf8_lossy(&out.stdout).contains("linux/"), "{}", streams(&out));
    }
    // An empty access list admits nobody.
    let refused = workers_as(dir.path(), &addr, "ci", "closed");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("its access list is empty, which admits nobody"), "{stderr}");

    // A Builder created now is served within seconds, without a restart, by
    // its access list; deleted, it is no longer served.
    w.apply(&w.builder(
        "late",
        "  replicas: {min: 1, max: 1}\n  cache: {retain: false}\n  access: {clients: [ci]}\n",
    ));
    wait_for(
        WAIT,
        "the new Builder is served by its name",
        || workers_as(dir.path(), &addr, "ci", "late").status.success().then_some(()),
        || format!("{}\n--- gateway log\n{}", w.describe(), gateway.log_text()),
    );
    let other = workers_as(dir.path(), &addr, "other", "late");
    assert!(
        String::from_utf8_lossy(&other.stderr).contains(r#"client "other" may not use this pool"#),
        "{}",
        streams(&other)
    );
    run(&mut w.ns.kubectl(&["delete", "bldr", "late", "--wait=true", "--timeout=60s"]));
    // A name that is no pool's gets no certificate of its own, so the
    // client cannot even complete the handshake.
    wait_for(
        Duration::from_secs(20),
        "the deleted Builder is no longer served",
        || (!workers_as(dir.path(), &addr, "ci", "late").status.success()).then_some(()),
        || gateway.log_text(),
    );
    let log = gateway.log_text();
    assert!(log.contains(&format!("no longer serving a pool builder={ns}/late")), "{log}");
    assert!(
        workers_as(dir.path(), &addr, "ci", "open").status.success(),
        "the other pools were not disturbed"
    );
}

#[test]
fn a_gateway_that_cannot_list_builders_serves_no_pool_even_with_its_pods_running() {
    let w = World::new("op-unsynced");
    w.apply(&w.builder("pool", "  replicas: {min: 1, max: 1}\n  cache: {retain: false}\n"));
    w.wait_ready("pool", 1);
    let dir = tempfile::tempdir().unwrap();
    kiln_e2e::certificates(dir.path(), &["gateway.test"], &["ci"]);
    // The gateway may watch pods but not (yet) Builders: its Builder watch
    // fails, as a slow or broken one would.
    let sa = unique("gw");
    let ns = w.ns.name().to_owned();
    run(&mut w.ns.kubectl(&["create", "serviceaccount", &sa]));
    run(&mut w.ns.kubectl(&["create", "role", &sa, "--verb=get,list,watch", "--resource=pods"]));
    run(&mut w.ns.kubectl(&[
        "create",
        "rolebinding",
        &sa,
        "--role",
        &sa,
        "--serviceaccount",
        &format!("{ns}:{sa}"),
    ]));
    let kubeconfig = service_account_kubeconfig(&w.ns, &sa, dir.path());
    let (gateway, addr, metrics) = watching_gateway(&w.ns, dir.path(), &kubeconfig);
    let ready = format!("http://{metrics}/readyz");
    let status = || match ureq::get(&ready).call() {
        Ok(r) => r.status().as_u16(),
        Err(ureq::Error::StatusCode(code)) => code,
        Err(_) => 0,
    };
    wait_for(
        Duration::from_secs(20),
        "the gateway answers /readyz",
        || (status() != 0).then_some(()),
        || gateway.log_text(),
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(status(), 503, "ready before it knew its pools\n{}", gateway.log_text());
    let out = workers_as(dir.path(), &addr, "ci", "pool");
    assert!(!out.status.success(), "a pool was served before its Builder was known\n{}", streams(&out));
    assert!(!gateway.log_text().contains("serving a pool"), "{}", gateway.log_text());

    // Allowed to see Builders, it serves the pool by its access list.
    run(&mut w.ns.kubectl(&[
        "create",
        "role",
        &format!("{sa}-builders"),
        "--verb=get,list,watch,patch",
        "--resource=builders.kiln.dev",
    ]));
    run(&mut w.ns.kubectl(&[
        "create",
        "rolebinding",
        &format!("{sa}-builders"),
        "--role",
        &format!("{sa}-builders"),
        "--serviceaccount",
        &format!("{ns}:{sa}"),
    ]));
    wait_for(
        WAIT,
        "the gateway serves the pool once it may list Builders",
        || (status() == 200 && workers_as(dir.path(), &addr, "ci", "pool").status.success()).then_some(()),
        || gateway.log_text(),
    );
}

#[test]
fn a_pool_grants_only_the_entitlements_its_spec_allows_refused_at_the_gateway() {
    let w = World::new("op-entitle");
    let pool = |name: &str, extra: &str| {
        w.builder(name, &format!("  replicas: {{min: 1, max: 1}}\n  cache: {{retain: false}}\n{extra}"))
    };
    w.apply(&pool("strict", ""));
    w.apply(&pool("loose", "  entitlements: [security.insecure]\n"));
    w.wait_ready("strict", 1);
    w.wait_ready("loose", 1);
    let dir = tempfile::tempdir().unwrap();
    kiln_e2e::certificates(dir.path(), &["gateway.test"], &["ci"]);
    let (mut gateway, addr, metrics) = watching_gateway(&w.ns, dir.path(), &TestEnv::get().kubeconfig());
    let ready = format!("http://{metrics}/readyz");
    gateway.wait_until(Duration::from_secs(20), || ureq::get(&ready).call().is_ok());
    let file = |name: &str| dir.path().join(name).display().to_string();
    let buildx = kiln_e2e::Buildx::new();
    for name in ["strict", "loose"] {
        run(buildx
            .command()
            .args(["create", "--name", name, "--driver", "remote"])
            .arg(format!(
                "--driver-opt=cacert={},cert={},key={},servername={name}",
                file("ca.crt"),
                file("ci.crt"),
                file("ci.key")
            ))
            .arg(&addr));
    }
    let context = dir.path().join("ctx");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::write(
        context.join("Dockerfile"),
        format!(
            "FROM {}\nRUN --security=insecure mkdir -p /m && mount -t tmpfs none /m && echo privileged > /out.txt\n",
            TestEnv::get().base_image
        ),
    )
    .unwrap();
    let build = |pool: &str| {
        run_unchecked(
            buildx
                .command()
                .args([
                    "build",
                    "--builder",
                    pool,
                    "--progress",
                    "plain",
                    "--allow",
                    "security.insecure",
                    "-o",
                ])
                .arg(format!("type=local,dest={}", dir.path().join(pool).display()))
                .arg(&context),
        )
    };
    let refused = build("strict");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr
            .contains("granting entitlement security.insecure is not allowed by build daemon configuration")
            && stderr.contains("pool \"strict\" does not allow it"),
        "{stderr}"
    );
    // Refused by the gateway, before the pool's builder saw the build.
    let counted =
        ureq::get(&format!("http://{metrics}/metrics")).call().unwrap().body_mut().read_to_string().unwrap();
    assert!(counted.contains(r#"kiln_gateway_errors_total{kind="entitlement_refused"} 1"#), "{counted}");
    let allowed = build("loose");
    assert!(allowed.status.success(), "{}\n{}", streams(&allowed), gateway.log_text());
    assert_eq!(std::fs::read_to_string(dir.path().join("loose/out.txt")).unwrap(), "privileged\n");
}

/// `buildctl debug workers` straight to the builder at `ip`, with `tls`
/// arguments (none: plain gRPC).
fn workers_direct(ip: &str, tls: &[String]) -> std::process::Output {
    run_unchecked(
        TestEnv::get().command("buildctl").args(["--addr", &format!("tcp://{ip}:1234")]).args(tls).args([
            "--timeout",
            "10",
            "debug",
            "workers",
        ]),
    )
}

#[test]
fn with_a_builder_ca_builders_take_the_gateway_alone() {
    let dir = tempfile::tempdir().unwrap();
    // The gateway's own CA, server certificate and a client "ci".
    kiln_e2e::certificates(dir.path(), &["gateway.test"], &["ci"]);
    // The builder CA, which only the controller reads.
    let builders = dir.path().join("builder-ca");
    std::fs::create_dir(&builders).unwrap();
    kiln_e2e::certificates(&builders, &[], &[]);
    let gateway_secret = "gateway-builder-tls";
    let w = World::with_controller("op-mtls", |ns| {
        let ca = |f: &str| builders.join(f).display().to_string();
        run(&mut ns.kubectl(&[
            "create",
            "secret",
            "tls",
            "builder-ca",
            "--cert",
            &ca("ca.crt"),
            "--key",
            &ca("ca.key"),
        ]));
        let (ca_secret, gw) =
            (format!("{}/builder-ca", ns.name()), format!("{}/{gateway_secret}", ns.name()));
        Controller::start_with(
            ns,
            "first",
            IMAGE,
            &TestEnv::get().kubeconfig(),
            &[
                "--builder-ca-secret",
                &ca_secret,
                "--gateway-client-secret",
                &gw,
                "--gateway-namespace",
                ns.name(),
                "--gateway-labels",
                "app.kubernetes.io/component=gateway,app.kubernetes.io/instance=kiln",
            ],
        )
    });
    w.apply(&w.builder(
        "pool",
        "  replicas: {min: 1, max: 1}\n  cache: {retain: false}\n  access: {clients: [ci]}\n",
    ));
    w.wait_ready("pool", 1);
    let ns = w.ns.name();

    // Only the gateway's pods may reach kilnd's API, where the CNI enforces it.
    let policy = w.ns.get_json(&["networkpolicy", "pool"]);
    let from = &policy["spec"]["ingress"][0]["from"][0];
    assert_eq!(from["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], ns, "{policy}");
    assert_eq!(from["podSelector"]["matchLabels"]["app.kubernetes.io/component"], "gateway", "{policy}");
    assert_eq!(policy["spec"]["ingress"][0]["ports"][0]["port"], "grpc", "{policy}");

    // The gateway's client certificate, from the Secret the controller keeps.
    wait_for(
        WAIT,
        "the controller issues the gateway's client certificate",
        || {
            run_unchecked(&mut w.ns.kubectl(&["get", "secret", gateway_secret]))
                .status
                .success()
                .then_some(())
        },
        || w.describe(),
    );
    // Owned by the builder CA's Secret: gone with it (helm uninstall).
    let owners = w.ns.get_json(&["secret", gateway_secret])["metadata"]["ownerReferences"].clone();
    assert_eq!(owners[0]["kind"], "Secret", "{owners}");
    assert_eq!(owners[0]["name"], "builder-ca", "{owners}");
    let write = |key: &str, file: &str| {
        let template = format!(r#"go-template={{{{index .data "{key}" | base64decode}}}}"#);
        let pem = run(&mut w.ns.kubectl(&["get", "secret", gateway_secret, "-o", &template]));
        let path = dir.path().join(file);
        std::fs::write(&path, pem).unwrap();
        path.display().to_string()
    };
    let (gw_crt, gw_key, builder_ca) = (
        write("tls.crt", "gw-client.crt"),
        write("tls.key", "gw-client.key"),
        write("ca.crt", "builders-ca.crt"),
    );
    let tls_args: Vec<String> =
        ["--builder-tls-cert", &gw_crt, "--builder-tls-key", &gw_key, "--builder-tls-ca", &builder_ca]
            .map(str::to_owned)
            .into();
    let (mut gateway, addr, metrics) =
        watching_gateway_with(&w.ns, dir.path(), &TestEnv::get().kubeconfig(), &tls_args);
    let ready = format!("http://{metrics}/readyz");
    gateway.wait_until(Duration::from_secs(20), || ureq::get(&ready).call().is_ok());

    // Through the gateway: a build, its session included, over TLS to kilnd.
    let out = workers_as(dir.path(), &addr, "ci", "pool");
    assert!(out.status.success(), "{}\n{}", streams(&out), gateway.log_text());
    let file = |name: &str| dir.path().join(name).display().to_string();
    let context = tempfile::tempdir().unwrap();
    std::fs::write(context.path().join("Dockerfile"), dockerfile("echo through-the-gateway > /out.txt"))
        .unwrap();
    let dest = dir.path().join("out");
    let built = run_unchecked(
        TestEnv::get()
            .command("buildctl")
            .args(["--addr", &addr, "--tlscacert", &file("ca.crt"), "--tlsservername", "pool"])
            .args(["--tlscert", &file("ci.crt"), "--tlskey", &file("ci.key")])
            .args(["build", "--frontend", "dockerfile.v0", "--progress", "plain"])
            .arg(format!("--local=context={}", context.path().display()))
            .arg(format!("--local=dockerfile={}", context.path().display()))
            .arg(format!("--output=type=local,dest={}", dest.display())),
    );
    assert!(built.status.success(), "{}\n{}", streams(&built), gateway.log_text());
    assert_eq!(std::fs::read_to_string(dest.join("out.txt")).unwrap(), "through-the-gateway\n");

    // Straight to the pod: refused without the gateway's certificate.
    let pod = w.pods("pool")[0]["metadata"]["name"].as_str().unwrap().to_owned();
    let ip = w.pod_ip(&pod);
    let server_name = format!("pool.{ns}.builders.kiln");
    let verified = |cert: Option<(&str, &str)>| -> Vec<String> {
        let mut args = vec![
            "--tlscacert".to_owned(),
            builder_ca.clone(),
            "--tlsservername".to_owned(),
            server_name.clone(),
        ];
        if let Some((crt, key)) = cert {
            args.extend(["--tlscert".to_owned(), crt.to_owned(), "--tlskey".to_owned(), key.to_owned()]);
        }
        args
    };
    let (ci_crt, ci_key) = (file("ci.crt"), file("ci.key"));
    for (what, args) in [
        ("plain gRPC", Vec::new()),
        ("TLS without a client certificate", verified(None)),
        ("a client certificate of the gateway's clients' CA", verified(Some((&ci_crt, &ci_key)))),
    ] {
        let out = workers_direct(&ip, &args);
        assert!(!out.status.success(), "{what} reached kilnd directly\n{}", streams(&out));
    }
    // The same call with the gateway's certificate works: what was refused
    // was the certificate, not the address.
    let out = workers_direct(&ip, &verified(Some((&gw_crt, &gw_key))));
    assert!(out.status.success(), "{}", streams(&out));
    gateway.stop(Duration::from_secs(10));
}
