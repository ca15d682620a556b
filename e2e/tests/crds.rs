//! Kiln's CustomResourceDefinitions on the real API server: the chart that
//! `kiln crdgen` writes installs, `kubectl` shows Builders with their columns,
//! the CEL rules refuse bad specs with their messages, and `kubectl scale`
//! works through the /scale subresource.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use kiln_crds::Builder;
use kiln_e2e::cluster::{Namespace, builder_yaml, crd_chart, install_crds, kubectl};
use kiln_e2e::{TestEnv, run, run_unchecked};

fn chart() -> PathBuf {
    crd_chart()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_crds_are_established_with_their_short_name() {
    install_crds();
    let names = run(kubectl().args([
        "get",
        "crd",
        "builders.kiln.dev",
        "-o",
        "jsonpath={.status.acceptedNames.shortNames}",
    ]));
    assert_eq!(names, r#"["bldr"]"#);
    let resources = run(kubectl().args(["api-resources", "--api-group=kiln.dev", "--no-headers"]));
    let mut lines: Vec<Vec<&str>> = resources.lines().map(|l| l.split_whitespace().collect()).collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            vec!["builders", "bldr", "kiln.dev/v1alpha1", "true", "Builder"],
            vec!["builds", "kiln.dev/v1alpha1", "true", "Build"]
        ]
    );
}

#[test]
fn a_valid_builder_is_stored_with_defaults_and_listed_with_its_columns() {
    let ns = Namespace::new("kiln-crds-get");
    let out = ns.apply(&builder_yaml(
        "pool",
        "  replicas:\n    min: 1\n    max: 4\n  platforms: [linux/amd64]\n  cache:\n    size: 50Gi\n",
    ));
    assert!(out.status.success(), "a valid Builder was refused: {}", stderr(&out));

    // The API server filled in the schema's defaults, and the stored object
    // reads back into the Rust types and passes their validation.
    let json = run(&mut ns.kubectl(&["get", "builder", "pool", "-o", "json"]));
    let stored: Builder = serde_json::from_str(&json).unwrap();
    assert_eq!(stored.spec.idle_timeout, "10m");
    assert_eq!(stored.spec.max_parallel_builds, 4);
    assert_eq!(stored.spec.cache.size.0, "50Gi");
    assert!(stored.spec.cache.retain);
    assert_eq!(stored.spec.template.security_mode, kiln_crds::builder::SecurityMode::Privileged);
    stored.spec.validate().unwrap();

    // What the controller will write into status shows in the columns.
    run(&mut ns.kubectl(&[
        "patch",
        "bldr",
        "pool",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Ready","replicas":2,"readyReplicas":2,"busyReplicas":1,"endpoint":"tcp://kiln-gateway:1234"}}"#,
    ]));
    let table = run(&mut ns.kubectl(&["get", "bldr"]));
    eprintln!("{table}");
    let rows: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0], ["NAME", "PHASE", "READY", "REPLICAS", "BUSY", "MIN", "MAX", "AGE"]);
    assert_eq!(rows[1][..7], ["pool", "Ready", "2", "2", "1", "1", "4"]);

    let wide = run(&mut ns.kubectl(&["get", "bldr", "pool", "-o", "wide"]));
    eprintln!("{wide}");
    let rows: Vec<Vec<&str>> = wide.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        rows[0],
        ["NAME", "PHASE", "READY", "REPLICAS", "BUSY", "MIN", "MAX", "DESIRED", "ENDPOINT", "AGE"]
    );
    // DESIRED is empty until something scales the pool.
    assert_eq!(rows[1][..8], ["pool", "Ready", "2", "2", "1", "1", "4", "tcp://kiln-gateway:1234"]);
}

#[test]
fn the_api_server_refuses_bad_specs_with_the_cel_messages() {
    let ns = Namespace::new("kiln-crds-cel");
    let out = ns.apply(&builder_yaml("upside-down", "  replicas:\n    min: 3\n    max: 2\n"));
    assert!(!out.status.success(), "min > max was accepted");
    let err = stderr(&out);
    assert!(err.contains("spec.replicas"), "{err}");
    assert!(err.contains("replicas.min must not be greater than replicas.max"), "{err}");

    let out = ns.apply(&builder_yaml("overfull", "  cache:\n    size: 50Gi\n  gc:\n    keepBytes: 60Gi\n"));
    assert!(!out.status.success(), "keepBytes > size was accepted");
    let err = stderr(&out);
    assert!(err.contains("gc.keepBytes (60Gi) must not be greater than cache.size (50Gi)"), "{err}");

    let out = ns.apply(&builder_yaml("no-size", "  cache:\n    size: lots\n"));
    assert!(!out.status.success(), "a size that is no quantity was accepted");
    assert!(stderr(&out).contains("must be a size such as 20Gi"), "{}", stderr(&out));

    // A change the cache volumes cannot follow is refused on update.
    let cached = |size: &str, class: &str| {
        builder_yaml("cached", &format!("  cache:\n    size: {size}\n    storageClassName: {class}\n"))
    };
    let ok = ns.apply(&cached("50Gi", "fast"));
    assert!(ok.status.success(), "{}", stderr(&ok));
    let out = ns.apply(&cached("40Gi", "fast"));
    assert!(!out.status.success(), "shrinking the cache was accepted");
    assert!(stderr(&out).contains("cache.size cannot shrink"), "{}", stderr(&out));
    let out = ns.apply(&cached("50Gi", "slow"));
    assert!(!out.status.success(), "changing the storage class was accepted");
    assert!(stderr(&out).contains("cache.storageClassName cannot change"), "{}", stderr(&out));
    let grown = ns.apply(&cached("60Gi", "fast"));
    assert!(grown.status.success(), "growing the cache was refused: {}", stderr(&grown));

    // None of the refused objects exist.
    let names = run(&mut ns.kubectl(&["get", "bldr", "-o", "jsonpath={.items[*].metadata.name}"]));
    assert_eq!(names, "cached");
}

#[test]
fn kubectl_scale_sets_desired_through_the_scale_subresource() {
    let ns = Namespace::new("kiln-crds-scale");
    let out = ns.apply(&builder_yaml("x", "  replicas:\n    min: 0\n    max: 4\n"));
    assert!(out.status.success(), "{}", stderr(&out));

    let scaled = run(&mut ns.kubectl(&["scale", "bldr/x", "--replicas=3"]));
    assert!(scaled.contains("scaled"), "{scaled}");
    let desired = run(&mut ns.kubectl(&["get", "bldr", "x", "-o", "jsonpath={.spec.replicas.desired}"]));
    assert_eq!(desired, "3");
    let scale = run(&mut ns.kubectl(&["get", "bldr", "x", "--subresource=scale", "-o", "json"]));
    let scale: serde_json::Value = serde_json::from_str(&scale).unwrap();
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 3);

    // Outside the bounds the scale is refused with the rule's message.
    let out = run_unchecked(&mut ns.kubectl(&["scale", "bldr/x", "--replicas=9"]));
    assert!(!out.status.success(), "scaling above max was accepted");
    assert!(
        stderr(&out).contains(
            "replicas.desired (what kubectl scale sets) must be between replicas.min and replicas.max"
        ),
        "{}",
        stderr(&out)
    );
    let desired = run(&mut ns.kubectl(&["get", "bldr", "x", "-o", "jsonpath={.spec.replicas.desired}"]));
    assert_eq!(desired, "3");
}

#[test]
fn a_build_needs_one_context_and_keeps_its_spec() {
    let ns = Namespace::new("kiln-crds-build");
    let build = |name: &str, context: &str, builder: &str| {
        format!(
            "apiVersion: kiln.dev/v1alpha1\nkind: Build\nmetadata:\n  name: {name}\nspec:\n  builderRef:\n    name: \
             {builder}\n  context:\n{context}  outputs:\n  - names: [registry.example/app:1]\n"
        )
    };
    let out = ns.apply(&build(
        "two",
        "    configMap:\n      name: src\n    inline:\n      dockerfile: FROM scratch\n",
        "ci",
    ));
    assert!(!out.status.success(), "two contexts were accepted");
    assert!(
        stderr(&out).contains("set exactly one of context.git, context.configMap and context.inline"),
        "{}",
        stderr(&out)
    );

    let out = ns.apply(&build("app", "    configMap:\n      name: src\n", "ci"));
    assert!(out.status.success(), "{}", stderr(&out));
    let timeout = run(&mut ns.kubectl(&["get", "build", "app", "-o", "jsonpath={.spec.timeout}"]));
    assert_eq!(timeout, "1h");
    let out = ns.apply(&build("app", "    configMap:\n      name: src\n", "other"));
    assert!(!out.status.success(), "a Build's spec changed");
    assert!(stderr(&out).contains("a Build's spec cannot change once created"), "{}", stderr(&out));

    let table = run(&mut ns.kubectl(&["get", "builds"]));
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "BUILDER", "PHASE", "AGE"]);
}

#[test]
fn helm_renders_the_crd_chart_for_the_supported_kubernetes_only() {
    let helm = || TestEnv::get().command("helm");
    let out = run(helm().args(["template", "kiln-crds", "--kube-version", "v1.34.4"]).arg(chart()));
    assert!(out.contains("name: builders.kiln.dev"), "{out}");
    assert!(out.contains("name: builds.kiln.dev"), "{out}");
    assert_eq!(out.matches("kind: CustomResourceDefinition").count(), 2);

    let old = run_unchecked(helm().args(["template", "kiln-crds", "--kube-version", "v1.33.0"]).arg(chart()));
    assert!(!old.status.success(), "the chart rendered for a Kubernetes older than k8s-openapi's v1_34");
    assert!(stderr(&old).contains("chart requires kubeVersion: >=1.34.0-0"), "{}", stderr(&old));
}
