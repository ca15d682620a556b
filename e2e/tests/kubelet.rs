//! The kubelet stand-in against the real API server and the real scheduler
//! (`e2e/env/cluster-up`): kilnd pods scheduled onto the stand-in's Node run
//! as local processes with their PVC and ConfigMap mounted, become Ready
//! through their probe, serve buildctl on their pod IP, and drain on
//! deletion; unmapped images and crashing containers show what the kubelet
//! would show.
//!
//! Each test has its own stand-in (its own Node; the pods select it by
//! hostname) and its own namespace.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_e2e::kubelet::{Handle, KubeletStandIn, LOG_ANNOTATION, Options, STORAGE_CLASS};
use kiln_e2e::llb::image_and_run;
use kiln_e2e::{TestEnv, buildctl_llb, run, run_unchecked, unique, workspace_bin};
use serde_json::Value;
use tempfile::TempDir;

fn kubectl() -> Command {
    let env = TestEnv::get();
    let mut cmd = env.command("kubectl");
    cmd.arg("--kubeconfig").arg(env.kubeconfig());
    cmd
}

/// A namespace and a stand-in of the test's own. The namespace goes first
/// when dropped, while the stand-in still runs to stop its pods.
struct Cluster {
    namespace: String,
    standin: Handle,
    _state: TempDir,
}

impl Cluster {
    fn new(prefix: &str) -> Self {
        let env = TestEnv::get();
        let state = tempfile::Builder::new().prefix("kiln-standin-").tempdir().unwrap();
        let options =
            Options::new(env!("CARGO_BIN_EXE_kiln-kubelet-standin"), env.kubeconfig(), state.path())
                .node(unique("kiln-node"))
                .image("kiln/kilnd", workspace_bin("kilnd"))
                .image("kiln-test/sh", "/bin/sh");
        let standin = KubeletStandIn::spawn(&options).unwrap_or_else(|e| panic!("{e}"));
        let namespace = unique(prefix);
        run(kubectl().args(["create", "namespace", &namespace]));
        // Pods are refused until the namespace's default ServiceAccount exists.
        wait_until("the default service account", Duration::from_secs(30), || {
            run_unchecked(kubectl().args(["-n", &namespace, "get", "serviceaccount", "default"]))
                .status
                .success()
        });
        Self { namespace, standin, _state: state }
    }

    fn kubectl(&self, args: &[&str]) -> Command {
        let mut cmd = kubectl();
        cmd.args(["-n", &self.namespace]).args(args);
        cmd
    }

    fn apply(&self, yaml: &str) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("objects.yaml");
        std::fs::write(&file, yaml).unwrap();
        run(self.kubectl(&["apply", "-f"]).arg(&file));
    }

    /// `kubectl get KIND/NAME -o json`, or None when it does not exist.
    fn get(&self, object: &str) -> Option<Value> {
        let out = self.kubectl(&["get", object, "-o", "json"]).output().unwrap();
        out.status.success().then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    /// Waits until `object` satisfies `check`; panics with the object and the stand-in's log.
    fn wait_for(&self, object: &str, timeout: Duration, check: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        let mut last = None;
        while start.elapsed() < timeout {
            last = self.get(object);
            if let Some(v) = &last
                && check(v)
            {
                return v.clone();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "{object} not as expected after {timeout:?}:\n{}\n--- kubelet stand-in log\n{}",
            serde_json::to_string_pretty(&last).unwrap(),
            self.standin.log_text()
        );
    }

    /// The pod's output, from the file its annotation names.
    fn pod_log(&self, pod: &Value) -> (PathBuf, String) {
        let path = pod["metadata"]["annotations"][LOG_ANNOTATION].as_str().expect("the log annotation");
        (path.into(), std::fs::read_to_string(path).unwrap_or_default())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // While the stand-in runs, it stops the pods (and its provisioner
        // reclaims the claims' volumes): wait for the pods. Without it, the pod
        // GC removes them later.
        if self.standin.is_running() {
            let _ = self.kubectl(&["delete", "pods,pvc", "--all", "--timeout=30s"]).output();
        }
        let _ = kubectl().args(["delete", "namespace", &self.namespace, "--wait=false"]).output();
    }
}

fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "{what}: not after {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn condition<'a>(pod: &'a Value, type_: &str) -> Option<&'a str> {
    pod["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)?["status"].as_str()
}

/// A kilnd pod with its own cache PVC and the shared config map, as the operator makes them.
fn kilnd_pod(name: &str, node: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: cache-{name}}}
spec:
  storageClassName: {STORAGE_CLASS}
  accessModes: [ReadWriteOnce]
  resources: {{requests: {{storage: 1Gi}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {node}}}
  terminationGracePeriodSeconds: 15
  containers:
  - name: kilnd
    image: kiln/kilnd:dev
    env:
    - name: POD_IP
      valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}
    - name: GRPC_ADDR
      value: tcp://$(POD_IP):1234
    args: [--addr, $(GRPC_ADDR), --debugaddr, "$(POD_IP):6060", --root, /var/lib/kilnd,
           --config, /etc/kiln/kilnd.toml, --shutdown-grace, "5"]
    ports:
    - {{name: grpc, containerPort: 1234}}
    - {{name: debug, containerPort: 6060}}
    readinessProbe:
      httpGet: {{path: /readyz, port: debug}}
      periodSeconds: 1
      failureThreshold: 1
    volumeMounts:
    - {{name: cache, mountPath: /var/lib/kilnd}}
    - {{name: config, mountPath: /etc/kiln, readOnly: true}}
  volumes:
  - name: cache
    persistentVolumeClaim: {{claimName: cache-{name}}}
  - name: config
    configMap: {{name: kilnd-config}}
"#
    )
}

#[test]
fn kilnd_pods_run_ready_on_their_own_ips_build_and_drain_on_delete() {
    let env = TestEnv::get();
    let cluster = Cluster::new("kiln-kubelet");
    let node = cluster.standin.node().to_owned();
    // The local registries speak plain HTTP; kilnd learns it from the mounted config.
    cluster.apply(&format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: kilnd-config}}\ndata:\n  kilnd.toml: |\n    \
         [registry.\"{}\"]\n    http = true\n",
        env.registry
    ));
    cluster.apply(&(kilnd_pod("kilnd-0", &node) + "---\n" + &kilnd_pod("kilnd-1", &node)));

    let ready = |p: &Value| condition(p, "Ready") == Some("True");
    let pods: Vec<Value> = ["pod/kilnd-0", "pod/kilnd-1"]
        .iter()
        .map(|p| cluster.wait_for(p, Duration::from_secs(60), ready))
        .collect();
    let mut ips = Vec::new();
    for pod in &pods {
        assert_eq!(pod["spec"]["nodeName"], node.as_str(), "the scheduler bound it to the stand-in's node");
        assert_eq!(pod["status"]["phase"], "Running");
        assert_eq!(pod["status"]["hostIP"], "127.0.0.1");
        let ip = pod["status"]["podIP"].as_str().unwrap().to_owned();
        let last: u8 = ip.strip_prefix("127.0.0.").expect("a loopback pod IP").parse().unwrap();
        assert!(last >= 10, "{ip}");
        let status = &pod["status"]["containerStatuses"][0];
        assert_eq!(status["ready"], true);
        assert_eq!(status["started"], true);
        assert_eq!(status["restartCount"], 0);
        assert!(status["state"]["running"]["startedAt"].is_string(), "{status}");
        ips.push(ip);
    }
    assert_ne!(ips[0], ips[1], "each pod has its own address");

    for name in ["cache-kilnd-0", "cache-kilnd-1"] {
        let pvc = cluster.get(&format!("pvc/{name}")).unwrap();
        assert_eq!(pvc["status"]["phase"], "Bound", "{pvc}");
    }

    let addr = format!("tcp://{}:1234", ips[0]);
    let workers = run(env.command("buildctl").args(["--addr", &addr, "debug", "workers"]));
    assert!(workers.lines().count() >= 2, "a header and a worker: {workers}");

    // A build step runs runc on overlayfs inside the pod's mount namespace, and
    // the cache lands on the PV behind /var/lib/kilnd.
    let out = buildctl_llb(&addr, &image_and_run(&env.base_image, "echo built-in-a-pod > /x && cat /x"), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{}", cluster.pod_log(&pods[0]).1);
    assert!(stderr.contains("built-in-a-pod"), "{stderr}");
    let pvc = cluster.get("pvc/cache-kilnd-0").unwrap();
    let pv = run(kubectl().args(["get", "pv", pvc["spec"]["volumeName"].as_str().unwrap(), "-o", "json"]));
    let pv: Value = serde_json::from_str(&pv).unwrap();
    let host_dir = Path::new(pv["spec"]["hostPath"]["path"].as_str().unwrap());
    assert!(
        std::fs::read_dir(host_dir).unwrap().next().is_some(),
        "kilnd's state is on the PV at {}",
        host_dir.display()
    );
    assert!(
        !Path::new("/var/lib/kilnd").read_dir().is_ok_and(|mut d| d.next().is_some()),
        "nothing leaked to the host's /var/lib/kilnd"
    );

    // Deletion: SIGTERM, kilnd drains and exits 0, the pod disappears.
    run(&mut cluster.kubectl(&["delete", "pod", "kilnd-0", "--timeout=30s"]));
    assert!(cluster.get("pod/kilnd-0").is_none(), "the pod is gone after the delete returned");
    let (path, log) = cluster.pod_log(&pods[0]);
    assert!(log.contains("SIGTERM: draining"), "{}:\n{log}", path.display());
    assert!(
        log.contains("container kilnd exited with code 0 on the pod's stop"),
        "{}:\n{log}",
        path.display()
    );
    let other = cluster.get("pod/kilnd-1").unwrap();
    assert_eq!(condition(&other, "Ready"), Some("True"), "the other pod runs on");

    // The claim's end releases the PV; the provisioner stand-in deletes it and its directory.
    let pv_name = pv["metadata"]["name"].as_str().unwrap().to_owned();
    run(&mut cluster.kubectl(&["delete", "pvc", "cache-kilnd-0", "--timeout=30s"]));
    wait_until("the released PV is deleted", Duration::from_secs(30), || {
        !run_unchecked(kubectl().args(["get", "pv", &pv_name])).status.success()
    });
    assert!(!host_dir.exists(), "{} is removed with its PV", host_dir.display());
}

#[test]
fn an_unmapped_image_is_err_image_pull_and_the_pod_stays_pending() {
    let cluster = Cluster::new("kiln-kubelet-pull");
    let node = cluster.standin.node().to_owned();
    cluster.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: nginx}}\nspec:\n  nodeSelector: {{kubernetes.io/hostname: {node}}}\n  \
         containers:\n  - {{name: web, image: \"nginx:1.27\"}}\n"
    ));
    let pod = cluster.wait_for("pod/nginx", Duration::from_secs(30), |p| {
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ErrImagePull"
    });
    let message = pod["status"]["containerStatuses"][0]["state"]["waiting"]["message"].as_str().unwrap();
    assert!(message.contains("\"nginx:1.27\""), "the message names the image: {message}");
    assert_eq!(pod["status"]["phase"], "Pending");
    assert_eq!(condition(&pod, "Ready"), Some("False"));
    run(&mut cluster.kubectl(&["delete", "pod", "nginx", "--timeout=20s"]));
}

#[test]
fn a_crashing_container_loops_with_back_off_and_counts_restarts() {
    let cluster = Cluster::new("kiln-kubelet-crash");
    let node = cluster.standin.node().to_owned();
    cluster.apply(&format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: crash-config}}
data: {{who: the-crash-test}}
---
apiVersion: v1
kind: Pod
metadata: {{name: crash}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {node}}}
  terminationGracePeriodSeconds: 2
  containers:
  - name: sh
    image: kiln-test/sh
    env:
    - name: WHO
      valueFrom: {{configMapKeyRef: {{name: crash-config, key: who}}}}
    - name: POD
      valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
    - name: WHERE
      value: $(POD) on the stand-in
    command: [sh, -c, 'echo crashing as $(WHO) in $(WHERE); exit 3']
"#
    ));
    let pod = cluster.wait_for("pod/crash", Duration::from_secs(30), |p| {
        let s = &p["status"]["containerStatuses"][0];
        s["state"]["waiting"]["reason"] == "CrashLoopBackOff" && s["restartCount"].as_u64() > Some(0)
    });
    let status = &pod["status"]["containerStatuses"][0];
    let message = status["state"]["waiting"]["message"].as_str().unwrap();
    assert!(message.contains("back-off") && message.contains("container=sh"), "{message}");
    assert_eq!(status["lastState"]["terminated"]["exitCode"], 3, "{status}");
    assert_eq!(status["lastState"]["terminated"]["reason"], "Error", "{status}");
    assert_eq!(status["ready"], false);
    let (_, log) = cluster.pod_log(&pod);
    // Env from a ConfigMap key and a field, expanded in env and args.
    assert!(log.lines().any(|l| l == "crashing as the-crash-test in crash on the stand-in"), "{log}");
    run(&mut cluster.kubectl(&["delete", "pod", "crash", "--timeout=20s"]));
}

/// A pod whose one container sleeps, so its process can be watched.
fn sleeper(name: &str, node: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeSelector: {{kubernetes.io/hostname: {node}}}\n  \
         terminationGracePeriodSeconds: 1\n  containers:\n  - name: sleep\n    image: kiln-test/sh\n    \
         command: [sh, -c, 'echo up; exec sleep 1000']\n{extra}"
    )
}

/// The container's pid, from the stand-in's containerID.
fn container_pid(pod: &Value) -> u32 {
    let id = pod["status"]["containerStatuses"][0]["containerID"].as_str().unwrap();
    id.strip_prefix("kiln-stand-in://").unwrap().parse().unwrap()
}

/// Whether `pid` still runs (a zombie nobody reaped yet does not count).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}

#[test]
fn failing_liveness_and_startup_probes_restart_the_container() {
    let cluster = Cluster::new("kiln-kubelet-probe");
    let node = cluster.standin.node().to_owned();
    // Nothing listens on port 9 of the pods' addresses.
    let probe = |kind: &str| {
        format!(
            "    {kind}:\n      tcpSocket: {{port: 9}}\n      periodSeconds: 1\n      failureThreshold: 2\n"
        )
    };
    let live = sleeper("unhealthy", &node, &probe("livenessProbe"));
    let startup = sleeper("unstarted", &node, &probe("startupProbe"));
    cluster.apply(&format!("{live}---\n{startup}"));
    for (name, kind) in [("unhealthy", "Liveness"), ("unstarted", "Startup")] {
        let pod = cluster.wait_for(&format!("pod/{name}"), Duration::from_secs(30), |p| {
            let s = &p["status"]["containerStatuses"][0];
            s["restartCount"].as_u64() >= Some(1) && s["lastState"]["terminated"].is_object()
        });
        let status = &pod["status"]["containerStatuses"][0];
        // SIGTERM ended the sleep: 128 + 15.
        assert_eq!(status["lastState"]["terminated"]["exitCode"], 143, "{status}");
        if kind == "Startup" {
            assert_eq!(status["started"], false, "it never passed its startup probe: {status}");
            assert_eq!(status["ready"], false, "{status}");
        }
        let events = run(&mut cluster.kubectl(&[
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.name={name}"),
            "-o",
            "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
        ]));
        assert!(events.contains(&format!("Unhealthy: {kind} probe failed: dial tcp 127.0.0.")), "{events}");
        let killing =
            format!("Killing: Container sleep failed {} probe, will be restarted", kind.to_lowercase());
        assert!(events.contains(&killing), "{events}");
    }
}

#[test]
fn a_stopped_stand_in_leaves_no_process_and_no_node_behind() {
    let mut cluster = Cluster::new("kiln-kubelet-stop");
    let node = cluster.standin.node().to_owned();
    cluster.apply(&sleeper("sleeper", &node, ""));
    let pod = cluster.wait_for("pod/sleeper", Duration::from_secs(30), |p| p["status"]["phase"] == "Running");
    let pid = container_pid(&pod);
    assert!(alive(pid), "the container runs as pid {pid}");

    let status = cluster.standin.stop().expect("the stand-in stops on SIGTERM");
    assert!(status.success(), "{status}\n{}", cluster.standin.log_text());
    assert!(!alive(pid), "the container was killed with the stand-in");
    let out = run_unchecked(kubectl().args(["get", "node", &node]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"), "the Node is removed");
}

#[test]
fn a_killed_stand_in_takes_its_containers_along() {
    let cluster = Cluster::new("kiln-kubelet-kill");
    let node = cluster.standin.node().to_owned();
    cluster.apply(&sleeper("sleeper", &node, ""));
    let pod = cluster.wait_for("pod/sleeper", Duration::from_secs(30), |p| p["status"]["phase"] == "Running");
    let pid = container_pid(&pod);

    run(Command::new("kill").args(["-KILL", &cluster.standin.pid().to_string()]));
    // The parent-death signal reaches the container as soon as the stand-in is gone.
    wait_until("the container dies with the stand-in", Duration::from_secs(5), || !alive(pid));
    // Nothing removed the Node: a SIGKILLed kubelet leaves it too.
    run(kubectl().args(["delete", "node", &node]));
}

#[test]
fn a_pod_deleted_without_grace_has_its_process_killed() {
    let cluster = Cluster::new("kiln-kubelet-force");
    let node = cluster.standin.node().to_owned();
    cluster.apply(&sleeper("sleeper", &node, ""));
    let pod = cluster.wait_for("pod/sleeper", Duration::from_secs(30), |p| p["status"]["phase"] == "Running");
    let pid = container_pid(&pod);
    run(&mut cluster.kubectl(&["delete", "pod", "sleeper", "--grace-period=0", "--force"]));
    wait_until("the vanished pod's process is killed", Duration::from_secs(10), || !alive(pid));
}
