//! The `kiln` Helm chart: `helm lint` and kubeconform (against the test API
//! server's own schemas) accept every value set in `charts/kiln/ci/`, each
//! renders what it says, bad values are refused with a message that says
//! what to change, a real `helm install` keeps its CA and server certificate
//! across upgrades and leaves nothing behind on uninstall, and the steps of
//! its NOTES.txt (`kiln client-cert`, then the printed `docker buildx create`
//! line) give a buildx that builds through a gateway serving the chart's
//! certificate, while a client the pool does not list is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use kiln_e2e::cluster::{Namespace, install_crds, kubectl};
use kiln_e2e::{Buildx, Gateway, TestEnv, kubeconform, run, run_unchecked, streams, unique, workspace_bin};
use serde::Deserialize;
use serde_json::Value;

/// The Kubernetes the cluster tier runs (e2e/env/versions.sh).
const KUBE_VERSION: &str = "1.34.4";

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/kiln")
}

/// The value sets in charts/kiln/ci/, by file name.
fn value_sets() -> Vec<(String, PathBuf)> {
    let mut sets: Vec<(String, PathBuf)> = std::fs::read_dir(chart().join("ci"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), p))
        .collect();
    sets.sort();
    sets
}

fn helm() -> Command {
    let env = TestEnv::get();
    let mut cmd = env.command("helm");
    cmd.env("KUBECONFIG", env.kubeconfig());
    cmd
}

/// `helm template RELEASE charts/kiln -n NAMESPACE ARGS…`.
fn template(release: &str, namespace: &str, args: &[&str]) -> Output {
    run_unchecked(
        helm()
            .args(["template", release])
            .arg(chart())
            .args(["--namespace", namespace, "--kube-version", KUBE_VERSION])
            .args(args),
    )
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The objects of a multi-document YAML stream.
fn objects(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} among {} objects", objects.len()))
}

fn kinds(objects: &[Value]) -> Vec<String> {
    let mut kinds: Vec<String> = objects
        .iter()
        .map(|o| format!("{}/{}", o["kind"].as_str().unwrap(), o["metadata"]["name"].as_str().unwrap()))
        .collect();
    kinds.sort();
    kinds
}

/// kubeconform's schemas, made once from the test API server's OpenAPI with
/// Kiln's CRDs installed.
fn schemas() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        install_crds();
        let openapi: Value =
            serde_json::from_str(&run(kubectl().args(["get", "--raw", "/openapi/v2"]))).unwrap();
        let dir = tempfile::Builder::new().prefix("kiln-kubeconform-").tempdir().unwrap();
        let written = kubeconform::write_schemas(&openapi, dir.path()).unwrap();
        for kind in
            ["deployment-apps-v1.json", "service-v1.json", "builder-kiln-v1alpha1.json", "role-rbac-v1.json"]
        {
            assert!(written.iter().any(|w| w == kind), "no schema {kind} among {written:?}");
        }
        dir
    })
    .path()
}

/// The kinds that have no schema on the test API server: their CRDs
/// (cert-manager's, the Prometheus Operator's) are not installed there.
const NOT_INSTALLED: [&str; 2] = ["Certificate", "ServiceMonitor"];

fn kubeconform(rendered: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, rendered).unwrap();
    run_unchecked(
        TestEnv::get()
            .command("kubeconform")
            .args(["-strict", "-summary", "-output", "text", "-schema-location"])
            .arg(kubeconform::schema_location(schemas()))
            .args(["-skip", &NOT_INSTALLED.join(",")])
            .arg(&file),
    )
}

#[test]
fn every_value_set_passes_helm_lint_and_kubeconform() {
    for (name, values) in value_sets() {
        let lint =
            run_unchecked(helm().args(["lint", "--strict"]).arg(chart()).arg("-f").arg(&values).args([
                "--namespace",
                "kiln",
                "--kube-version",
                KUBE_VERSION,
            ]));
        let text = stdout(&lint);
        assert!(lint.status.success(), "helm lint {name}\n{}", streams(&lint));
        // lint reports a template's `fail` as [INFO]; a value set must not hit one.
        assert!(
            !text.contains("[ERROR]") && !text.contains("[WARNING]") && !text.contains("Fail:"),
            "{name}: {text}"
        );

        let out = template("kiln", "kiln", &["-f", values.to_str().unwrap()]);
        assert!(out.status.success(), "helm template {name}\n{}", streams(&out));
        let rendered = stdout(&out);
        let not_installed =
            objects(&rendered).iter().filter(|o| NOT_INSTALLED.iter().any(|k| o["kind"] == *k)).count();
        let checked = kubeconform(&rendered);
        let summary = stdout(&checked);
        assert!(checked.status.success(), "kubeconform {name}\n{}", streams(&checked));
        assert!(summary.contains("Invalid: 0, Errors: 0"), "{name}: {summary}");
        assert!(
            summary.contains(&format!("Skipped: {not_installed}\n")),
            "{name}: only {NOT_INSTALLED:?} skipped: {summary}"
        );
        eprintln!("{name}: {}", summary.trim());
    }
}

#[test]
fn kubeconform_refuses_what_the_api_server_would() {
    let rendered = stdout(&template("kiln", "kiln", &[]));
    let bad = rendered.replacen("      serviceAccountName:", "      serviceAccountNam:", 1);
    let out = kubeconform(&bad);
    assert!(!out.status.success(), "an unknown field passed\n{}", streams(&out));
    let bad = rendered.replacen("\n    min: 1\n", "\n    min: one\n", 1);
    assert!(bad != rendered, "the default pool's replicas.min is not where the test looks");
    assert!(!kubeconform(&bad).status.success(), "a Builder with a string for replicas.min passed");
}

#[test]
fn the_value_sets_render_what_they_say() {
    let render = |set: &str| {
        let out = template("kiln", "kiln", &["-f", chart().join("ci").join(set).to_str().unwrap()]);
        assert!(out.status.success(), "{set}\n{}", streams(&out));
        objects(&stdout(&out))
    };
    let args = |o: &Value| -> Vec<String> {
        o["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect()
    };

    // Defaults: the generated CA and certificate, every namespace, the default pool.
    let o = render("default-values.yaml");
    assert_eq!(
        kinds(&o),
        [
            "Builder/default",
            "ClusterRole/kiln-controller",
            "ClusterRole/kiln-gateway",
            "ClusterRoleBinding/kiln-controller",
            "ClusterRoleBinding/kiln-gateway",
            "Deployment/kiln-controller",
            "Deployment/kiln-gateway",
            "PodDisruptionBudget/kiln-gateway",
            "Role/kiln-controller-leader",
            "RoleBinding/kiln-controller-leader",
            "Secret/kiln-builder-ca",
            "Secret/kiln-ca",
            "Secret/kiln-gateway-tls",
            "Service/kiln-gateway",
            "ServiceAccount/kiln-controller",
            "ServiceAccount/kiln-gateway",
        ]
    );
    let gateway = find(&o, "Deployment", "kiln-gateway");
    assert_eq!(
        args(gateway),
        [
            "gateway",
            "--addr=tcp://0.0.0.0:1234",
            "--metrics-addr=0.0.0.0:8080",
            "--watch-builders",
            "--default-pool=default.kiln",
            "--tls-cert=/etc/kiln/tls/tls.crt",
            "--tls-key=/etc/kiln/tls/tls.key",
            "--tls-ca=/etc/kiln/client-ca/ca.crt",
            "--shutdown-grace=60",
            "--builder-tls-cert=/etc/kiln/builder-tls/tls.crt",
            "--builder-tls-key=/etc/kiln/builder-tls/tls.key",
            "--builder-tls-ca=/etc/kiln/builder-tls/ca.crt",
        ]
    );
    // Builders take the gateway alone: the controller issues the
    // certificates from the builder CA and fences each pool.
    let controller = args(find(&o, "Deployment", "kiln-controller"));
    for expected in [
        "--builder-ca-secret=kiln/kiln-builder-ca",
        "--gateway-client-secret=kiln/kiln-gateway-builder-tls",
        "--gateway-namespace=kiln",
        "--gateway-labels=app.kubernetes.io/name=kiln,app.kubernetes.io/instance=kiln,app.kubernetes.io/component=gateway",
    ] {
        assert!(controller.contains(&expected.to_owned()), "{expected} missing in {controller:?}");
    }
    let pod = &gateway["spec"]["template"]["spec"];
    assert_eq!(gateway["spec"]["replicas"], 2);
    assert_eq!(pod["terminationGracePeriodSeconds"], 80, "preStop 5 s + grace 60 s + 15 s");
    assert_eq!(pod["containers"][0]["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(pod["containers"][0]["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(pod["topologySpreadConstraints"][0]["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(
        pod["volumes"][1]["secret"]["items"],
        serde_json::json!([{"key": "tls.crt", "path": "ca.crt"}])
    );
    assert_eq!(
        find(&o, "Secret", "kiln-gateway-tls")["metadata"]["annotations"]["kiln.dev/dns-names"],
        "*.kiln,default,default.kiln,kiln-gateway,kiln-gateway.kiln,kiln-gateway.kiln.svc"
    );
    let rules = &find(&o, "ClusterRole", "kiln-gateway")["rules"];
    assert_eq!(
        rules,
        &serde_json::json!([
            {"apiGroups": ["kiln.dev"], "resources": ["builders"], "verbs": ["list", "watch", "patch"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}
        ])
    );
    assert_eq!(find(&o, "Builder", "default")["spec"]["access"]["clients"], serde_json::json!(["admin"]));

    // Secrets of the user's: no Secret rendered, the gateway mounts theirs.
    let o = render("existing-secret-values.yaml");
    assert!(o.iter().all(|x| x["kind"] != "Secret"), "{:?}", kinds(&o));
    let controller = args(find(&o, "Deployment", "kiln-controller"));
    assert!(
        !controller.iter().any(|a| a.starts_with("--builder-ca") || a.starts_with("--gateway-")),
        "{controller:?}"
    );
    let rules = find(&o, "ClusterRole", "kiln-controller")["rules"].to_string();
    assert!(!rules.contains("secrets") && !rules.contains("networkpolicies"), "{rules}");
    let pod = &find(&o, "Deployment", "kiln-gateway")["spec"]["template"]["spec"];
    assert_eq!(pod["volumes"][0]["secret"]["secretName"], "gateway-tls");
    assert_eq!(pod["volumes"][1]["secret"]["secretName"], "client-ca");
    let service = find(&o, "Service", "kiln-gateway");
    assert_eq!(service["spec"]["type"], "LoadBalancer");
    assert_eq!(service["spec"]["ports"][0]["port"], 443);

    // cert-manager: a Certificate for the server, the chart's CA for clients.
    let o = render("cert-manager-values.yaml");
    let certificate = find(&o, "Certificate", "kiln-gateway-tls");
    assert_eq!(certificate["spec"]["issuerRef"]["kind"], "ClusterIssuer");
    let names = certificate["spec"]["dnsNames"].as_array().unwrap();
    assert!(
        names.iter().any(|n| n == "builds.example.com") && names.iter().any(|n| n == "default.kiln"),
        "{names:?}"
    );
    assert!(find(&o, "Secret", "kiln-ca")["data"]["tls.key"].is_string());
    assert!(o.iter().all(|x| x["metadata"]["name"] != "kiln-gateway-tls" || x["kind"] == "Certificate"));
    find(&o, "ServiceMonitor", "kiln");
    find(&o, "Service", "kiln-gateway-metrics");
    assert_eq!(find(&o, "Service", "kiln-gateway")["spec"]["ports"][0]["nodePort"], 31234);

    // Several pools, one in another namespace; an explicit default pool.
    let o = render("pools-values.yaml");
    let pools: Vec<String> = o
        .iter()
        .filter(|x| x["kind"] == "Builder")
        .map(|b| {
            format!(
                "{}.{}",
                b["metadata"]["name"].as_str().unwrap(),
                b["metadata"]["namespace"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(pools, ["small.kiln", "arm.kiln", "team-a.team-a"]);
    assert!(args(find(&o, "Deployment", "kiln-gateway")).contains(&"--default-pool=small.kiln".to_owned()));
    assert!(
        args(find(&o, "Deployment", "kiln-controller"))
            .contains(&"--kilnd-image=registry.example.com/kiln/kilnd:0.1.0".to_owned())
    );
    assert_eq!(find(&o, "Builder", "arm")["metadata"]["labels"]["kiln.dev/tenant"], "platform");

    // Watched namespaces: a RoleBinding in each, no cluster-wide binding.
    let o = render("namespaces-values.yaml");
    let bindings: Vec<&str> = o
        .iter()
        .filter(|x| x["kind"] == "RoleBinding" && x["metadata"]["name"] == "kiln-gateway")
        .map(|b| b["metadata"]["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(bindings, ["kiln", "team-a"]);
    assert!(!o.iter().any(|x| x["kind"] == "ClusterRoleBinding" && x["metadata"]["name"] == "kiln-gateway"));
    let gateway = find(&o, "Deployment", "kiln-gateway");
    let a = args(gateway);
    for expected in
        ["--namespace=kiln", "--namespace=team-a", "--selector=kiln.dev/served=true", "--shutdown-grace=300"]
    {
        assert!(a.contains(&expected.to_owned()), "{expected} missing in {a:?}");
    }
    assert_eq!(gateway["spec"]["template"]["spec"]["terminationGracePeriodSeconds"], 320);
}

#[test]
fn bad_values_are_refused_with_a_message_that_says_what_to_change() {
    for (args, message) in [
        (
            &["--set", "gateway.service.type=Ingress"][..],
            "value must be one of 'ClusterIP', 'NodePort', 'LoadBalancer'",
        ),
        (&["--set", "gatway.replicas=3"], "additional properties 'gatway' not allowed"),
        (&["--set", "tls.certManager.enabled=true"], "at '/tls/certManager/issuerRef/name': minLength"),
        (
            &[
                "--set",
                "tls.existingSecret=mine",
                "--set",
                "tls.certManager.enabled=true",
                "--set",
                "tls.certManager.issuerRef.name=ca",
            ],
            "at '/tls': 'not' failed",
        ),
        (&["--set", "gateway.defaultPool=default"], "at '/gateway/defaultPool'"),
        (&["--set", "pools[0].name=Default"], "at '/pools/0/name'"),
        (&["--set", "tls.generated.certDays=7"], "at '/tls/generated/certDays': minimum"),
        (&["--set", "gateway.port=443"], "at '/gateway/port': minimum"),
        (
            &["--set", "gateway.watch.namespaces={builds}"],
            "pools: default lives in namespace kiln, which gateway.watch.namespaces (builds) leaves out",
        ),
        (
            &["--set-json", r#"pools=[{"name":"a"},{"name":"a","namespace":"kiln"}]"#],
            "pools: a.kiln is listed twice",
        ),
    ] {
        let out = template("kiln", "kiln", args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} rendered");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}

/// `kubectl get -o json` of `what` in the cluster.
fn get_json(what: &[&str]) -> Value {
    serde_json::from_str(&run(kubectl().args(["get", "-o", "json"]).args(what))).unwrap()
}

/// The data of a Secret (base64, as stored).
fn secret_data(namespace: &str, name: &str) -> Value {
    get_json(&["-n", namespace, "secret", name])["data"].clone()
}

/// Installs the chart as `release` into `ns` with nothing running (no
/// controller or gateway pods: the test tier has no node for them) and
/// returns helm's output, NOTES.txt included.
fn install(release: &str, ns: &Namespace, args: &[&str]) -> String {
    run(helm()
        .args(["install", release])
        .arg(chart())
        .args(["--namespace", ns.name(), "--wait", "--timeout", "60s"])
        .args(["--set", "controller.replicas=0", "--set", "gateway.replicas=0"])
        .args(args))
}

/// What of `release` is left in the cluster, as kind/name.
fn left_of(release: &str, ns: &Namespace) -> Vec<String> {
    let selector = format!("app.kubernetes.io/instance={release}");
    let mut left: Vec<String> = Vec::new();
    for (scope, kinds) in [
        (
            Some(ns.name()),
            "deployments,services,secrets,serviceaccounts,roles,rolebindings,poddisruptionbudgets,builders",
        ),
        (None, "clusterroles,clusterrolebindings"),
    ] {
        let mut args = vec!["get", kinds, "-l", &selector, "-o", "name"];
        if let Some(ns) = scope {
            args.extend(["-n", ns]);
        }
        left.extend(run(kubectl().args(&args)).lines().map(str::to_owned));
    }
    left
}

#[test]
fn an_upgrade_keeps_the_ca_and_the_certificate_and_an_uninstall_leaves_nothing() {
    let ns = Namespace::new("chart-upgrade");
    let release = unique("kiln").replace('-', "");
    let release = &release[..release.len().min(20)];
    install(release, &ns, &[]);
    let ca = secret_data(ns.name(), &format!("{release}-ca"));
    let server = secret_data(ns.name(), &format!("{release}-gateway-tls"));
    assert_eq!(server["ca.crt"], ca["tls.crt"], "the chart's CA signed the server certificate");
    let template_annotation = || {
        get_json(&["-n", ns.name(), "deployment", &format!("{release}-gateway")])["spec"]["template"]["metadata"]
            ["annotations"]["kiln.dev/server-certificate"]
            .clone()
    };
    let rolled = template_annotation();

    let upgrade = |args: &[&str]| {
        run(helm()
            .args(["upgrade", release])
            .arg(chart())
            .args(["--namespace", ns.name(), "--reuse-values"])
            .args(args));
    };
    let builder_ca = secret_data(ns.name(), &format!("{release}-builder-ca"));
    upgrade(&[]);
    assert_eq!(secret_data(ns.name(), &format!("{release}-ca")), ca, "the CA is kept");
    assert_eq!(
        secret_data(ns.name(), &format!("{release}-builder-ca")),
        builder_ca,
        "the builder CA is kept"
    );
    assert_eq!(secret_data(ns.name(), &format!("{release}-gateway-tls")), server, "the certificate is kept");
    assert_eq!(template_annotation(), rolled, "nothing changed: the gateway does not roll");

    // A new pool's names need a new server certificate, from the same CA.
    upgrade(&[
        "--set-json",
        r#"pools=[{"name":"default","spec":{"access":{"clients":["admin"]}}},{"name":"big"}]"#,
    ]);
    assert_eq!(secret_data(ns.name(), &format!("{release}-ca")), ca, "the CA is kept");
    let reissued = secret_data(ns.name(), &format!("{release}-gateway-tls"));
    assert_ne!(reissued["tls.crt"], server["tls.crt"]);
    assert_eq!(reissued["ca.crt"], ca["tls.crt"]);
    let names =
        get_json(&["-n", ns.name(), "secret", &format!("{release}-gateway-tls")])["metadata"]["annotations"]
            ["kiln.dev/dns-names"]
            .clone();
    assert!(names.as_str().unwrap().contains(&format!("big.{}", ns.name())), "{names}");
    assert_ne!(template_annotation(), rolled, "the gateway rolls onto the new certificate");

    assert!(!left_of(release, &ns).is_empty());
    run(helm().args(["uninstall", release, "--namespace", ns.name(), "--wait", "--timeout", "60s"]));
    assert_eq!(left_of(release, &ns), Vec::<String>::new(), "the release left objects behind");
}

/// The `kiln client-cert …` line of NOTES.txt, as arguments.
fn client_cert_step(notes: &str) -> Vec<String> {
    let line = notes
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("kiln client-cert "))
        .unwrap_or_else(|| panic!("no kiln client-cert step in NOTES:\n{notes}"));
    line.split_whitespace().skip(1).map(str::to_owned).collect()
}

/// The data of a Secret's `key`, decoded, written to `dir/file`.
fn secret_file(namespace: &str, secret: &str, key: &str, dir: &Path, file: &str) -> String {
    let template = format!(r#"go-template={{{{index .data "{key}" | base64decode}}}}"#);
    let pem = run(kubectl().args(["-n", namespace, "get", "secret", secret, "-o", &template]));
    let path = dir.join(file);
    std::fs::write(&path, pem).unwrap();
    path.display().to_string()
}

/// `step` (a `kiln client-cert` command line) for the client `name`, its
/// certificate in ./kiln-NAME.
fn for_client(step: &[String], name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut args = step.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--name" => {
                args.next();
                out.extend(["--name".to_owned(), name.to_owned()]);
            }
            "--out" => {
                args.next();
            }
            _ => out.push(arg.clone()),
        }
    }
    out
}

#[test]
fn the_notes_steps_give_a_buildx_that_builds_through_the_gateway_with_the_charts_tls() {
    let ns = Namespace::new("chart-tls");
    let release = unique("kiln").replace('-', "");
    let release = &release[..release.len().min(20)];
    let notes = install(release, &ns, &[]);
    let dir = tempfile::tempdir().unwrap();
    let (ca_secret, server_secret, service) =
        (format!("{release}-ca"), format!("{release}-gateway-tls"), format!("{release}-gateway"));

    // The gateway, serving the chart's certificate and checking clients
    // against the chart's CA, as the chart's Deployment would (static mode:
    // the cluster mode's pool watching is the gateway's own tests').
    let crt = secret_file(ns.name(), &server_secret, "tls.crt", dir.path(), "server.crt");
    let key = secret_file(ns.name(), &server_secret, "tls.key", dir.path(), "server.key");
    let client_ca = secret_file(ns.name(), &ca_secret, "tls.crt", dir.path(), "client-ca.crt");
    let gw = Gateway::start_with(
        1,
        &["--tls-cert", &crt, "--tls-key", &key, "--tls-ca", &client_ca, "--allow-client", "admin"],
    );

    // Step 2 of NOTES.txt, with the gateway's address given as for a port-forward.
    let step = client_cert_step(&notes);
    let pool = format!("default.{}", ns.name());
    assert_eq!(
        step,
        [
            "client-cert",
            "--namespace",
            ns.name(),
            "--ca-secret",
            &ca_secret,
            "--server-secret",
            &server_secret,
            "--service",
            &service,
            "--name",
            "admin",
            "--pool",
            &pool,
            "--out",
            "./kiln-admin"
        ]
    );
    let kiln = |args: &[String], extra: &[&str]| {
        run_unchecked(
            Command::new(workspace_bin("kiln"))
                .args(args)
                .args(extra)
                .current_dir(dir.path())
                .env("KUBECONFIG", TestEnv::get().kubeconfig()),
        )
    };
    let issued = kiln(&step, &["--gateway", &gw.addr]);
    assert!(issued.status.success(), "{}", streams(&issued));
    let out_dir = dir.path().join("kiln-admin");
    let mode = |f: &str| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(out_dir.join(f)).unwrap().permissions())
            & 0o777
    };
    assert_eq!(mode("key.pem"), 0o600);
    let line = stdout(&issued);
    let expected = format!(
        "docker buildx create --name kiln --driver remote --driver-opt cacert={d}/ca.pem,cert={d}/cert.pem,\
         key={d}/key.pem,servername={pool} {addr}\n",
        d = out_dir.display(),
        addr = gw.addr
    );
    assert_eq!(line, expected);

    // Step 3: the printed line, as printed; then a build through the gateway.
    let buildx = Buildx::new();
    let create: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(create[..2], ["docker", "buildx"]);
    run(buildx.command().args(&create[2..]));
    let context = dir.path().join("context");
    std::fs::create_dir(&context).unwrap();
    let dockerfile = format!("FROM {}\nRUN echo from-the-chart > /out.txt\n", TestEnv::get().base_image);
    std::fs::write(context.join("Dockerfile"), dockerfile).unwrap();
    let built = dir.path().join("built");
    run(buildx
        .command()
        .args(["build", "--builder", "kiln", "--progress", "plain", "-o"])
        .arg(format!("type=local,dest={}", built.display()))
        .arg(&context));
    assert_eq!(std::fs::read_to_string(built.join("out.txt")).unwrap(), "from-the-chart\n");

    // A client certificate for a name the pool does not list is refused.
    let intruder = kiln(&for_client(&step, "intruder"), &["--gateway", &gw.addr]);
    assert!(intruder.status.success(), "{}", streams(&intruder));
    let file = |f: &str| dir.path().join("kiln-intruder").join(f).display().to_string();
    let refused = run_unchecked(TestEnv::get().command("buildctl").args([
        "--addr",
        &gw.addr,
        "--tlscacert",
        &file("ca.pem"),
        "--tlscert",
        &file("cert.pem"),
        "--tlskey",
        &file("key.pem"),
        "--tlsservername",
        &pool,
        "debug",
        "workers",
    ]));
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains(r#"client "intruder" may not use this pool"#), "{stderr}");

    // Without --gateway, the address comes from the chart's ClusterIP Service.
    let in_cluster = kiln(&for_client(&step, "ci"), &[]);
    assert!(in_cluster.status.success(), "{}", streams(&in_cluster));
    assert!(stdout(&in_cluster).trim_end().ends_with(&format!(" tcp://{service}.{}.svc:1234", ns.name())));
    let hint = format!("port-forward service/{service} 1234:1234");
    assert!(String::from_utf8_lossy(&in_cluster.stderr).contains(&hint), "{}", streams(&in_cluster));
    let again = kiln(&for_client(&step, "ci"), &[]);
    assert!(!again.status.success(), "an earlier certificate was overwritten");
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force replaces it"), "{}", streams(&again));

    run(helm().args(["uninstall", release, "--namespace", ns.name(), "--wait"]));
}
