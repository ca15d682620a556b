//! The cluster tier's harness: `kubectl` against the API server of
//! `e2e/env/cluster-up`, Kiln's CRDs from the chart, a namespace per test,
//! and the `kiln controller` as a process.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Once;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Daemon, TestEnv, free_port, run, run_unchecked, unique, workspace_bin};

pub fn crd_chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/kiln-crds")
}

/// `kubectl --kubeconfig $KUBECONFIG`.
pub fn kubectl() -> Command {
    let env = TestEnv::get();
    let mut cmd = env.command("kubectl");
    cmd.arg("--kubeconfig").arg(env.kubeconfig());
    cmd
}

/// Applies the chart's CRDs once per test binary and waits until the API
/// server serves them.
pub fn install_crds() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        run(kubectl()
            .args(["apply", "--server-side", "--field-manager", "kiln-e2e", "-f"])
            .arg(crd_chart().join("templates")));
        run(kubectl().args([
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/builders.kiln.dev",
            "crd/builds.kiln.dev",
        ]));
    });
}

/// A namespace of its own for one test, deleted when it ends.
#[derive(Debug)]
pub struct Namespace(pub String);

impl Namespace {
    pub fn new(prefix: &str) -> Self {
        install_crds();
        let name = unique(prefix);
        run(kubectl().args(["create", "namespace", &name]));
        Self(name)
    }

    /// A namespace for pods, without Kiln's CRDs: returned once its default
    /// ServiceAccount exists (pods are refused until then).
    pub fn for_pods(prefix: &str) -> Self {
        let ns = Self(unique(prefix));
        run(kubectl().args(["create", "namespace", ns.name()]));
        wait_for(
            Duration::from_secs(30),
            "the default service account",
            || {
                run_unchecked(&mut ns.kubectl(&["get", "serviceaccount", "default"]))
                    .status
                    .success()
                    .then_some(())
            },
            String::new,
        );
        ns
    }

    pub fn name(&self) -> &str {
        &self.0
    }

    /// `kubectl -n NS ARGS…`
    pub fn kubectl(&self, args: &[&str]) -> Command {
        let mut cmd = kubectl();
        cmd.args(["-n", &self.0]).args(args);
        cmd
    }

    /// `kubectl apply --server-side` of `yaml`; the command's output.
    pub fn apply(&self, yaml: &str) -> Output {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("object.yaml");
        std::fs::write(&file, yaml).unwrap();
        run_unchecked(
            self.kubectl(&["apply", "--server-side", "--field-manager", "kiln-e2e", "-f"]).arg(&file),
        )
    }

    /// `kubectl get -o json` of `what` (a kind, `kind/name`, plus flags).
    pub fn get_json(&self, what: &[&str]) -> Value {
        let mut args = vec!["get", "-o", "json"];
        args.extend_from_slice(what);
        serde_json::from_str(&run(&mut self.kubectl(&args))).unwrap()
    }

    /// The items of `kubectl get KIND -l SELECTOR`.
    pub fn list(&self, kind: &str, selector: &str) -> Vec<Value> {
        let list = self.get_json(&[kind, "-l", selector]);
        list["items"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = run_unchecked(kubectl().args(["delete", "namespace", &self.0, "--wait=false"]));
    }
}

pub fn builder_yaml(name: &str, spec: &str) -> String {
    format!("apiVersion: kiln.dev/v1alpha1\nkind: Builder\nmetadata:\n  name: {name}\nspec:\n{spec}")
}

/// Polls `check` every 250 ms until it returns `Some`; panics naming `what`
/// and the last state `describe` gives after `timeout`.
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
    describe: impl Fn() -> String,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            eprintln!("{what}: after {:?}", start.elapsed());
            return v;
        }
        if start.elapsed() > timeout {
            panic!("{what}: not after {timeout:?}\n{}", describe());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `kiln controller` from this workspace, watching one namespace, its lease
/// in that namespace.
#[derive(Debug)]
pub struct Controller {
    pub daemon: Daemon,
    pub metrics_addr: String,
    _dir: tempfile::TempDir,
}

impl Controller {
    /// Starts a controller named `identity`; `kilnd_image` is its default image.
    pub fn start(ns: &Namespace, identity: &str, kilnd_image: &str) -> Self {
        Self::start_as(ns, identity, kilnd_image, &TestEnv::get().kubeconfig())
    }

    /// The same, with the credentials of `kubeconfig` (a service account's).
    pub fn start_as(ns: &Namespace, identity: &str, kilnd_image: &str, kubeconfig: &Path) -> Self {
        Self::start_with(ns, identity, kilnd_image, kubeconfig, &[])
    }

    /// The same, with more arguments.
    pub fn start_with(
        ns: &Namespace,
        identity: &str,
        kilnd_image: &str,
        kubeconfig: &Path,
        extra: &[&str],
    ) -> Self {
        let dir = tempfile::Builder::new().prefix("kiln-controller-").tempdir().unwrap();
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(workspace_bin("kiln"));
        cmd.args(["controller", "--namespace", ns.name(), "--lease-namespace", ns.name()])
            .args(["--identity", identity, "--kilnd-image", kilnd_image, "--lease-duration", "4"])
            .args(["--metrics-addr", &metrics_addr])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,kiln_operator=debug");
        let mut daemon =
            Daemon::spawn(&format!("kiln controller {identity}"), &mut cmd, dir.path().join("log"));
        let url = format!("http://{metrics_addr}/healthz");
        daemon.wait_until(Duration::from_secs(20), || ureq::get(&url).call().is_ok());
        Self { daemon, metrics_addr, _dir: dir }
    }

    pub fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.metrics_addr);
        ureq::get(&url)
            .call()
            .map(|mut r| r.body_mut().read_to_string().unwrap_or_default())
            .unwrap_or_default()
    }

    /// Whether this controller holds the lease (its `kiln_controller_leader`).
    pub fn is_leader(&self) -> bool {
        self.metrics().lines().any(|l| l == "kiln_controller_leader 1")
    }

    /// SIGKILL: no lease release, no clean-up, as a crash would.
    pub fn kill(&mut self) {
        let _ = Command::new("kill").arg("-KILL").arg(self.daemon.pid().to_string()).status();
        self.daemon.wait_exit(Duration::from_secs(5));
    }
}
