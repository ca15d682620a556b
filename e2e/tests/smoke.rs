//! Proves every peer of the test environment works before any Kiln code
//! depends on it: the reference buildkitd driven by buildctl and by buildx,
//! the seeded registries, the Kubernetes API server and helm.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use kiln_e2e::{Buildkitd, Buildx, Registry, TestEnv, repo_and_tag, run, run_unchecked, unique};

/// A one-step build on the seeded base image; the RUN proves runc works.
fn write_context(dir: &Path, who: &str) {
    let env = TestEnv::get();
    std::fs::write(
        dir.join("Dockerfile"),
        format!(
            "FROM {}\nRUN echo \"built by {who}\" > /hello && cat /hello\nCOPY greeting.txt /greeting.txt\n",
            env.base_image
        ),
    )
    .unwrap();
    std::fs::write(dir.join("greeting.txt"), format!("hello from {who}\n")).unwrap();
}

/// The pushed image is in the registry under the digest the client reported,
/// with the base layer, the RUN layer and the COPY layer.
fn assert_pushed(image: &str, reported_digest: &str) {
    let (name, tag) = repo_and_tag(image);
    let manifest =
        Registry::plain().manifest(name, tag).unwrap_or_else(|code| panic!("{image}: HTTP {code}"));
    eprintln!("pushed {image}@{}", manifest.digest);
    assert_eq!(
        manifest.digest, reported_digest,
        "the registry serves another manifest than the client reported"
    );
    let layers = manifest.json["layers"].as_array().expect("an image manifest with layers");
    assert_eq!(layers.len(), 3, "base + RUN + COPY layers: {}", manifest.json);
}

fn metadata_digest(path: &Path) -> String {
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    json["containerimage.digest"]
        .as_str()
        .unwrap_or_else(|| panic!("no containerimage.digest in {json}"))
        .to_owned()
}

#[test]
fn reference_buildkitd_builds_and_pushes_with_buildctl() {
    let env = TestEnv::get();
    let daemon = Buildkitd::start();
    let ctx = tempfile::tempdir().unwrap();
    write_context(ctx.path(), "buildctl");
    let image = format!("{}/{}:smoke", env.registry, unique("kiln-smoke/buildctl"));
    let metadata = ctx.path().join("metadata.json");
    run(daemon
        .buildctl()
        .args(["build", "--progress", "plain", "--frontend", "dockerfile.v0"])
        .arg("--local")
        .arg(format!("context={}", ctx.path().display()))
        .arg("--local")
        .arg(format!("dockerfile={}", ctx.path().display()))
        .arg("--output")
        .arg(format!("type=image,name={image},push=true"))
        .arg("--metadata-file")
        .arg(&metadata));
    assert_pushed(&image, &metadata_digest(&metadata));
}

#[test]
fn reference_buildkitd_builds_and_pushes_with_buildx_remote_driver() {
    let env = TestEnv::get();
    let daemon = Buildkitd::start();
    let buildx = Buildx::new();
    buildx.create_remote("smoke", &daemon.addr);
    let inspect = run(buildx.command().args(["inspect", "--bootstrap", "smoke"]));
    assert!(inspect.contains("Status:") && inspect.contains("running"), "{inspect}");
    assert!(inspect.contains(&format!("BuildKit version: {}", "v0.29.0")), "{inspect}");

    let ctx = tempfile::tempdir().unwrap();
    write_context(ctx.path(), "buildx");
    let image = format!("{}/{}:smoke", env.registry, unique("kiln-smoke/buildx"));
    let metadata = ctx.path().join("metadata.json");
    run(buildx
        .command()
        .args(["build", "--builder", "smoke", "--progress", "plain", "--push", "-t", &image])
        .arg("--metadata-file")
        .arg(&metadata)
        .arg(ctx.path()));
    assert_pushed(&image, &metadata_digest(&metadata));
}

#[test]
fn registries_serve_the_seeded_base_images() {
    let env = TestEnv::get();
    let plain = Registry::plain();
    let (name, tag) = repo_and_tag(&env.base_image);
    let oci = plain.manifest(name, tag).unwrap();
    assert_eq!(oci.media_type, "application/vnd.oci.image.manifest.v1+json");

    let (name, tag) = repo_and_tag(&env.base_image_v2s2);
    let v2s2 = plain.manifest(name, tag).unwrap();
    assert_eq!(v2s2.media_type, "application/vnd.docker.distribution.manifest.v2+json");

    let (name, tag) = repo_and_tag(&env.base_image_multi);
    let multi = plain.manifest(name, tag).unwrap();
    assert_eq!(multi.media_type, "application/vnd.oci.image.index.v1+json");
    let mut arches: Vec<_> = multi.json["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap(),
                m["platform"]["architecture"].as_str().unwrap()
            )
        })
        .collect();
    arches.sort();
    assert_eq!(arches, ["linux/amd64", "linux/arm64"]);
    // Each platform's manifest is there too, and its config says the same platform.
    for m in multi.json["manifests"].as_array().unwrap() {
        let child = plain.manifest(name, m["digest"].as_str().unwrap()).unwrap();
        assert_eq!(child.media_type, "application/vnd.oci.image.manifest.v1+json");
    }

    let authed = Registry::with_auth();
    let anonymous = Registry { creds: None, ..authed.clone() };
    assert_eq!(anonymous.manifest("kiln-test/busybox", "latest").unwrap_err(), 401);
    let wrong = Registry { creds: Some((env.auth_user.clone(), "wrong".into())), ..authed.clone() };
    assert_eq!(wrong.manifest("kiln-test/busybox", "latest").unwrap_err(), 401);
    assert_eq!(authed.manifest("kiln-test/busybox", "latest").unwrap().digest, oci.digest);
}

#[test]
fn kubectl_creates_and_reads_a_namespace_on_the_api_server() {
    let env = TestEnv::get();
    let kubectl = || {
        let mut cmd = env.command("kubectl");
        cmd.arg("--kubeconfig").arg(env.kubeconfig());
        cmd
    };
    let version = run(kubectl().args(["version", "-o", "json"]));
    let version: serde_json::Value = serde_json::from_str(&version).unwrap();
    eprintln!("API server {}", version["serverVersion"]["gitVersion"]);
    assert_eq!(version["serverVersion"]["gitVersion"], "v1.34.4");

    let ns = unique("kiln-smoke");
    run(kubectl().args(["create", "namespace", &ns]));
    let got =
        run(kubectl().args(["get", "namespace", &ns, "-o", "jsonpath={.metadata.name} {.status.phase}"]));
    assert_eq!(got, format!("{ns} Active"));
    run(kubectl().args(["delete", "namespace", &ns, "--wait=false"]));

    let missing = run_unchecked(kubectl().args(["get", "namespace", "kiln-no-such-namespace"]));
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("NotFound"));
}

#[test]
fn helm_renders_a_chart_and_kubeconform_checks_it() {
    let env = TestEnv::get();
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/smoke-chart");
    let out = run(env
        .command("helm")
        .arg("template")
        .arg("smoke")
        .arg(&chart)
        .args(["--set", "greeting=hi there"]));
    assert!(out.contains("kind: ConfigMap"), "{out}");
    assert!(out.contains("name: smoke-greeting"), "{out}");
    assert!(out.contains("greeting: \"hi there\""), "{out}");

    // kubeconform checks the rendered YAML against a schema kept with the chart
    // (no schema is fetched from the internet).
    let dir = tempfile::tempdir().unwrap();
    let rendered = dir.path().join("rendered.yaml");
    std::fs::write(&rendered, &out).unwrap();
    let schemas = chart.join("schemas/{{ .ResourceKind }}.json");
    let summary = run(env
        .command("kubeconform")
        .args(["-strict", "-summary", "-schema-location"])
        .arg(&schemas)
        .arg(&rendered));
    assert!(summary.contains("Valid: 1,"), "{summary}");
    // And it does reject what the schema forbids.
    std::fs::write(&rendered, out.replace("kind: ConfigMap", "kind: ConfigMap\nbogus: 1")).unwrap();
    let bad = run_unchecked(
        Command::new(env.tool("kubeconform"))
            .args(["-strict", "-schema-location"])
            .arg(&schemas)
            .arg(&rendered),
    );
    assert!(!bad.status.success(), "kubeconform accepted an unknown field");
}
