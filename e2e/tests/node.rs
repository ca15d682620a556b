//! The real node (`e2e/env/node-up`): a kubelet and kube-proxy at the pinned
//! Kubernetes version, Debian's containerd and the CNI bridge, on this
//! machine, in the cluster of `e2e/env/cluster-up`. What a cluster user
//! checks first: the node is Ready; a pod from an image of the local registry
//! runs, its logs read and `kubectl exec` works; a privileged pod mounts a
//! tmpfs and an overlayfs on an emptyDir (and an unprivileged one may not);
//! pods reach each other, a ClusterIP Service reaches its pod from a pod and
//! from the host; a pod reaches the API server through the `kubernetes`
//! Service with its service account.
//!
//! Every pod selects the node by its hostname label: the kubelet stand-in's
//! Nodes share the cluster. The tests skip, saying so, when `KILN_NODE` is not
//! set (the tier is not up); `e2e/test` brings it up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Output;
use std::time::Duration;

use kiln_e2e::cluster::{Namespace, kubectl, wait_for};
use kiln_e2e::{Registry, TestEnv, repo_and_tag, run, run_unchecked, streams};
use serde_json::Value;

/// What `eval "$(e2e/env/node-up)"` exported.
struct Node {
    name: String,
    ip: String,
}

/// The node, or None (with a line saying why the test skips) when the tier is not up.
fn node() -> Option<Node> {
    match (std::env::var("KILN_NODE"), std::env::var("KILN_NODE_IP")) {
        (Ok(name), Ok(ip)) => Some(Node { name, ip }),
        _ => {
            eprintln!(
                "SKIPPED: the real-node tier is not up (KILN_NODE is not set): run \
                 `eval \"$(e2e/env/node-up)\"` after cluster-up (e2e/test does)"
            );
            None
        }
    }
}

/// The pod's description and the namespace's events, for failure messages.
fn describe(ns: &Namespace, pod: &str) -> String {
    let describe = run_unchecked(&mut ns.kubectl(&["describe", "pod", pod]));
    let events = run_unchecked(&mut ns.kubectl(&["get", "events", "--sort-by=.lastTimestamp"]));
    format!("{}\n{}", streams(&describe), streams(&events))
}

/// `kubectl apply` of `yaml`; panics unless it succeeds.
fn apply(ns: &Namespace, yaml: &str) {
    let out = ns.apply(yaml);
    assert!(out.status.success(), "kubectl apply failed:\n{}\n{yaml}", streams(&out));
}

/// Waits until `pod` satisfies `check`; panics with its description after two minutes.
fn wait_pod(ns: &Namespace, pod: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    wait_for(
        Duration::from_secs(120),
        &format!("pod {pod} {what}"),
        || {
            let out = ns.kubectl(&["get", "pod", pod, "-o", "json"]).output().unwrap();
            let json: Value = serde_json::from_slice(&out.stdout).ok()?;
            check(&json).then_some(json)
        },
        || describe(ns, pod),
    )
}

fn wait_ready(ns: &Namespace, pod: &str) -> Value {
    wait_pod(ns, pod, "Ready", |p| condition(p, "Ready") == Some("True"))
}

fn wait_succeeded(ns: &Namespace, pod: &str) -> Value {
    wait_pod(ns, pod, "Succeeded", |p| {
        assert_ne!(p["status"]["phase"], "Failed", "pod {pod} failed:\n{}", describe(ns, pod));
        p["status"]["phase"] == "Succeeded"
    })
}

/// `kubectl exec POD -- sh -c SCRIPT`, unchecked.
fn exec(ns: &Namespace, pod: &str, script: &str) -> Output {
    run_unchecked(&mut ns.kubectl(&["exec", pod, "--", "sh", "-c", script]))
}

/// The same; panics unless it succeeds, returns its stdout.
fn exec_ok(ns: &Namespace, pod: &str, script: &str) -> String {
    let out = exec(ns, pod, script);
    assert!(out.status.success(), "exec in {pod} failed: {script}\n{}", streams(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn condition<'a>(object: &'a Value, type_: &str) -> Option<&'a str> {
    object["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)?["status"].as_str()
}

/// A pod on the node running `script` in the base image; `extra` is added to
/// its spec, `container_extra` to its container (both indented as there).
fn pod_yaml(node: &Node, name: &str, script: &str, extra: &str, container_extra: &str) -> String {
    let image = &TestEnv::get().base_image;
    let script = serde_json::to_string(script).unwrap();
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: {name}}}}}
spec:
  nodeSelector: {{kubernetes.io/hostname: {node}}}
  terminationGracePeriodSeconds: 1
{extra}  containers:
  - name: main
    image: {image}
    command: [sh, -c, {script}]
{container_extra}",
        node = node.name
    )
}

/// The pinned Kubernetes version of e2e/env/versions.sh.
fn pinned_kubernetes() -> String {
    let versions = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/env/versions.sh")).unwrap();
    versions
        .lines()
        .find_map(|l| l.strip_prefix("KUBERNETES_VERSION="))
        .expect("KUBERNETES_VERSION in versions.sh")
        .to_owned()
}

#[test]
fn the_node_is_ready_with_the_pinned_kubelet_and_containerd() {
    let Some(node) = node() else { return };
    let json: Value =
        serde_json::from_str(&run(kubectl().args(["get", "node", &node.name, "-o", "json"]))).unwrap();
    assert_eq!(condition(&json, "Ready"), Some("True"), "{json:#}");
    assert_ne!(json["spec"]["unschedulable"], true, "the node is cordoned: {json:#}");
    let info = &json["status"]["nodeInfo"];
    assert_eq!(info["kubeletVersion"], pinned_kubernetes().as_str(), "{info:#}");
    assert!(info["containerRuntimeVersion"].as_str().unwrap().starts_with("containerd://1."), "{info:#}");
    let addresses = json["status"]["addresses"].as_array().unwrap();
    let internal: Vec<&str> = addresses
        .iter()
        .filter(|a| a["type"] == "InternalIP")
        .filter_map(|a| a["address"].as_str())
        .collect();
    assert_eq!(internal, [node.ip.as_str()], "the node's InternalIP is the machine's address: {addresses:?}");
    assert!(!node.ip.starts_with("127."), "the node's address must not be loopback");
}

#[test]
fn a_pod_from_the_local_registry_runs_its_logs_read_and_exec_works() {
    let Some(node) = node() else { return };
    let ns = Namespace::for_pods("kiln-node-pod");
    apply(&ns, &pod_yaml(&node, "hello", "echo hello from $(hostname); exec sleep inf", "", ""));
    let pod = wait_ready(&ns, "hello");

    // The image came from the local registry, under the digest it serves there.
    let env = TestEnv::get();
    let (name, tag) = repo_and_tag(&env.base_image);
    let digest = Registry::plain().manifest(name, tag).unwrap().digest;
    let status = &pod["status"]["containerStatuses"][0];
    assert_eq!(status["image"], env.base_image.as_str(), "{status:#}");
    assert!(
        status["imageID"].as_str().unwrap().ends_with(&format!("@{digest}")),
        "the pulled image is the registry's {digest}: {status:#}"
    );
    let ip = pod["status"]["podIP"].as_str().unwrap();
    assert!(ip.starts_with("10.88."), "a pod IP from the CNI bridge's range: {ip}");

    let logs = run(&mut ns.kubectl(&["logs", "hello"]));
    assert_eq!(logs, "hello from hello\n");

    let out = exec_ok(&ns, "hello", "echo $((6 * 7)) > /tmp/answer && cat /tmp/answer && id -u && hostname");
    assert_eq!(out, "42\n0\nhello\n");
    let failed = exec(&ns, "hello", "exit 3");
    assert_eq!(failed.status.code(), Some(3), "exec passes the exit code on: {}", streams(&failed));

    // An image the registry does not have is not found anywhere else.
    let missing = format!("{}/kiln-test/absent:nope", env.registry);
    apply(&ns, &pod_yaml(&node, "absent", "true", "", "").replace(&env.base_image, &missing));
    let pod = wait_pod(&ns, "absent", "failing to pull", |p| {
        let reason = p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"].as_str();
        matches!(reason, Some("ErrImagePull" | "ImagePullBackOff"))
    });
    let message =
        pod["status"]["containerStatuses"][0]["state"]["waiting"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(&missing) && message.contains("not found"), "{message}");
}

#[test]
fn a_privileged_pod_mounts_tmpfs_and_overlayfs_on_an_emptydir() {
    let Some(node) = node() else { return };
    let ns = Namespace::for_pods("kiln-node-mounts");
    let volume = "  volumes: [{name: work, emptyDir: {}}]\n";
    let mount = "    volumeMounts: [{name: work, mountPath: /work}]\n";
    apply(
        &ns,
        &pod_yaml(
            &node,
            "privileged",
            "exec sleep inf",
            volume,
            &format!("{mount}    securityContext: {{privileged: true}}\n"),
        ),
    );
    apply(&ns, &pod_yaml(&node, "plain", "exec sleep inf", volume, mount));
    wait_ready(&ns, "privileged");
    wait_ready(&ns, "plain");

    let out = exec_ok(
        &ns,
        "privileged",
        "mkdir -p /t && mount -t tmpfs -o size=1m tmpfs /t && echo in-tmpfs > /t/f && cat /t/f && grep ' /t ' /proc/mounts",
    );
    assert!(out.starts_with("in-tmpfs\ntmpfs /t tmpfs "), "{out}");

    let out = exec_ok(
        &ns,
        "privileged",
        "cd /work && mkdir lower upper work merged && echo base > lower/kept && echo old > lower/gone && \
         mount -t overlay overlay -o lowerdir=/work/lower,upperdir=/work/upper,workdir=/work/work /work/merged && \
         echo new > merged/added && rm merged/gone && ls merged && cat merged/kept && \
         ls -l upper | grep ' gone$' | cut -c1 && cat upper/added && ls lower",
    );
    assert_eq!(
        out, "added\nkept\nbase\nc\nnew\ngone\nkept\n",
        "merged = lower + changes; the upper holds the new file and a whiteout (character device) for the removed one"
    );

    let denied = exec(&ns, "plain", "mkdir -p /t && mount -t tmpfs tmpfs /t");
    assert!(!denied.status.success(), "an unprivileged pod mounted a tmpfs: {}", streams(&denied));
    assert!(String::from_utf8_lossy(&denied.stderr).contains("ermission denied"), "{}", streams(&denied));
}

#[test]
fn pods_reach_a_pod_and_its_cluster_ip_service_from_pods_and_the_host() {
    let Some(node) = node() else { return };
    let ns = Namespace::for_pods("kiln-node-net");
    // busybox httpd serves the pod's name; `wget -T` of this busybox crashes, so `timeout`.
    apply(
        &ns,
        &format!(
            "{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: web}}\n\
         spec:\n  selector: {{app: web}}\n  ports: [{{port: 80, targetPort: 8080}}]\n",
            pod_yaml(
                &node,
                "web",
                "mkdir /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www",
                "",
                ""
            )
        ),
    );
    apply(&ns, &pod_yaml(&node, "client", "exec sleep inf", "", ""));
    let web = wait_ready(&ns, "web");
    let client = wait_ready(&ns, "client");
    let web_ip = web["status"]["podIP"].as_str().unwrap();
    assert_ne!(web_ip, client["status"]["podIP"].as_str().unwrap(), "each pod has its own address");

    let out = exec_ok(&ns, "client", &format!("timeout 10 wget -q -O - http://{web_ip}:8080/"));
    assert_eq!(out, "web\n", "pod to pod");

    let cluster_ip = ns.get_json(&["service/web"])["spec"]["clusterIP"].as_str().unwrap().to_owned();
    assert!(cluster_ip.starts_with("10.96."), "{cluster_ip}");
    // kube-proxy programs the Service once its endpoints are ready.
    let from_pod = wait_for(
        Duration::from_secs(60),
        "the Service from a pod",
        || {
            let out = exec(&ns, "client", &format!("timeout 5 wget -q -O - http://{cluster_ip}/"));
            out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        },
        || describe(&ns, "web"),
    );
    assert_eq!(from_pod, "web\n", "pod to ClusterIP Service");

    let agent: ureq::Agent =
        ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(5))).build().into();
    let url = format!("http://{cluster_ip}/");
    let from_host = wait_for(
        Duration::from_secs(30),
        "the Service from the host",
        || agent.get(&url).call().ok().map(|mut r| r.body_mut().read_to_string().unwrap()),
        || describe(&ns, "web"),
    );
    assert_eq!(from_host, "web\n", "host to ClusterIP Service");

    // A port the Service does not have is not answered.
    let closed = exec(&ns, "client", &format!("timeout 5 wget -q -O - http://{cluster_ip}:8080/"));
    assert!(!closed.status.success(), "{}", streams(&closed));
}

#[test]
fn a_pod_reaches_the_api_server_through_the_kubernetes_service() {
    let Some(node) = node() else { return };
    // The Service's endpoint is the API server on the machine's address.
    let slice: Value = serde_json::from_str(&run(kubectl().args([
        "-n",
        "default",
        "get",
        "endpointslice",
        "-l",
        "kubernetes.io/service-name=kubernetes",
        "-o",
        "json",
    ])))
    .unwrap();
    let addresses: Vec<&str> = slice["items"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["endpoints"].as_array().unwrap().iter())
        .flat_map(|e| e["addresses"].as_array().unwrap().iter())
        .filter_map(|a| a.as_str())
        .collect();
    assert_eq!(addresses, [node.ip.as_str()], "{slice:#}");

    let ns = Namespace::for_pods("kiln-node-api");
    // Who the API server says the pod is, asked with its service account
    // token at the address the kubelet gives every pod.
    let script = r#"echo "host=$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"
        token=$(cat /var/run/secrets/kubernetes.io/serviceaccount/token)
        exec timeout 20 wget -q -O - --no-check-certificate \
            --header "Authorization: Bearer $token" --header "Content-Type: application/json" \
            --post-data '{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}' \
            "https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/apis/authentication.k8s.io/v1/selfsubjectreviews""#;
    apply(&ns, &pod_yaml(&node, "whoami", script, "  restartPolicy: Never\n", ""));
    wait_succeeded(&ns, "whoami");
    let logs = run(&mut ns.kubectl(&["logs", "whoami"]));
    let (host, review) = logs.split_once('\n').unwrap();
    let service_ip = run(kubectl().args([
        "-n",
        "default",
        "get",
        "service",
        "kubernetes",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]));
    assert_eq!(host, format!("host={service_ip}:443"));
    let review: Value = serde_json::from_str(review).unwrap_or_else(|e| panic!("{e}: {review}"));
    let user = &review["status"]["userInfo"];
    assert_eq!(user["username"], format!("system:serviceaccount:{}:default", ns.name()), "{review:#}");
    assert_eq!(user["extra"]["authentication.kubernetes.io/pod-name"][0], "whoami", "{review:#}");
    assert_eq!(user["extra"]["authentication.kubernetes.io/node-name"][0], node.name.as_str(), "{review:#}");
}
