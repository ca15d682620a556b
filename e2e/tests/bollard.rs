//! bollard's BuildKit client (`BuildkitDaemon` driver, a third-party Rust
//! client with no Go at all) builds against kilnd: it opens a session, sends
//! the context as a tarball through `Upload/Pull`, and runs the in-daemon
//! `dockerfile.v0` frontend with a legacy exporter field
//! (docs/protocol.md §4.6; `fussybeaver/bollard:src/grpc/driver`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read as _, Write as _};

use bollard::grpc::build::{ImageBuildFrontendOptions, ImageBuildLoadInput};
use bollard::grpc::driver::buildkitd::{BuildkitDaemon, Endpoint};
use bollard::grpc::driver::{Export as _, Image as _, ImageExporterEnum};
use bollard::grpc::export::ImageExporterOutput;
use bollard::grpc::registry::ImageRegistryOutput;
use kiln_e2e::{Kilnd, Registry, TestEnv, unique};

/// A gzipped context built the way bollard's documentation builds one:
/// GNU headers with only path, size and mode set.
fn context(files: &[(&str, &str)]) -> bytes::Bytes {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_path(path).unwrap();
        header.set_size(content.len() as u64);
        header.set_mode(0o755);
        header.set_cksum();
        tar.append(&header, content.as_bytes()).unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar.into_inner().unwrap()).unwrap();
    gz.finish().unwrap().into()
}

fn driver(kilnd: &Kilnd) -> BuildkitDaemon {
    let addr = kilnd.addr.trim_start_matches("tcp://");
    BuildkitDaemon::new(Endpoint::from_shared(format!("http://{addr}")).unwrap())
}

/// The files of an OCI image layout tarball, by path.
fn tar_entries(bytes: &[u8]) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    for entry in tar::Archive::new(bytes).entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        out.insert(path, data);
    }
    out
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap()
}

/// The blob a descriptor names inside an OCI layout.
fn blob<'a>(
    layout: &'a std::collections::BTreeMap<String, Vec<u8>>,
    descriptor: &serde_json::Value,
) -> &'a [u8] {
    let digest = descriptor["digest"].as_str().unwrap();
    let path = format!("blobs/{}", digest.replace(':', "/"));
    layout.get(&path).unwrap_or_else(|| panic!("{path} missing from the layout")).as_slice()
}

#[test]
fn bollard_builds_and_exports_an_oci_tarball() {
    let env = TestEnv::get();
    let kilnd = Kilnd::start();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("image.tar");
    let dockerfile = format!(
        "FROM {}\nCOPY greeting.txt /greeting.txt\nRUN cat /greeting.txt > /built.txt && echo built by bollard >> /built.txt\n",
        env.base_image
    );
    let input = context(&[("Dockerfile", &dockerfile), ("greeting.txt", "hello from bollard\n")]);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let request = ImageExporterOutput::builder("kiln-test/bollard:latest").dest(&dest);
    runtime
        .block_on(driver(&kilnd).export(
            ImageExporterEnum::OCI(request),
            ImageBuildFrontendOptions::builder().build(),
            ImageBuildLoadInput::Upload(input),
            None,
            None,
        ))
        .unwrap();

    // The exported layout's image has the step's output in its top layer.
    let layout = tar_entries(&std::fs::read(&dest).unwrap());
    let index = json(&layout["index.json"]);
    let manifest = json(blob(&layout, &index["manifests"][0]));
    let config = json(blob(&layout, &manifest["config"]));
    assert_eq!(config["architecture"], "amd64", "{config}");
    let layers = manifest["layers"].as_array().unwrap();
    let top = blob(&layout, layers.last().unwrap());
    let files = tar_entries(&gunzip(top));
    assert_eq!(files["built.txt"], b"hello from bollard\nbuilt by bollard\n");
    assert!(!kilnd.daemon.log_text().contains("panicked"), "{}", kilnd.daemon.log_text());
}

#[test]
fn bollard_builds_and_pushes_to_a_registry() {
    let env = TestEnv::get();
    let kilnd = Kilnd::start();
    let repository = format!("kiln-test/{}", unique("bollard"));
    let name = format!("{}/{repository}:v1", env.registry);
    let dockerfile = format!("FROM {}\nCOPY app.txt /app/app.txt\nLABEL built.by=bollard\n", env.base_image);
    let input = context(&[("Dockerfile", &dockerfile), ("app.txt", "pushed\n")]);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let output = ImageRegistryOutput::builder(&name).push(true).insecure_registry(true).consume();
    runtime
        .block_on(driver(&kilnd).registry(
            output,
            ImageBuildFrontendOptions::builder().build(),
            ImageBuildLoadInput::Upload(input),
            None,
            None,
        ))
        .unwrap();

    let registry = Registry::plain();
    let manifest = registry.manifest(&repository, "v1").unwrap_or_else(|code| panic!("{name}: HTTP {code}"));
    let config_digest = manifest.json["config"]["digest"].as_str().unwrap();
    let config = fetch_blob(&registry, &repository, config_digest);
    assert_eq!(json(&config)["config"]["Labels"]["built.by"], "bollard");
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes).read_to_end(&mut out).unwrap();
    out
}

fn fetch_blob(registry: &Registry, repository: &str, digest: &str) -> Vec<u8> {
    let url = format!("http://{}/v2/{repository}/blobs/{digest}", registry.host);
    let mut body = Vec::new();
    ureq::get(&url).call().unwrap().body_mut().as_reader().read_to_end(&mut body).unwrap();
    body
}
