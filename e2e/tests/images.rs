//! Kiln's own images (`images/`), built by kilnd with `e2e/env/images`: the
//! same inputs give the same digests, the configs say how the images run,
//! and the binaries run in containers made from them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read as _;
use std::path::Path;
use std::process::Command;

use kiln_e2e::{Kilnd, Registry, buildctl_dockerfile, run, unique};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What `eval "$(e2e/env/images)"` exported.
fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run `cargo build --release -p kiln-builder -p kiln-operator` and \
             `eval \"$(e2e/env/images)\"` first (the README's test command does both)"
        )
    })
}

/// An image reference `HOST/NAME:TAG@DIGEST` taken apart.
struct Image {
    reference: String,
    name: String,
    digest: String,
}

impl Image {
    fn from_env(var_name: &str) -> Self {
        Self::parse(&var(var_name))
    }

    fn parse(reference: &str) -> Self {
        let (named, digest) = reference.split_once('@').unwrap_or_else(|| panic!("{reference}: no digest"));
        let (_, path) = named.split_once('/').unwrap();
        let (name, _tag) = path.rsplit_once(':').unwrap();
        Self { reference: reference.to_owned(), name: name.to_owned(), digest: digest.to_owned() }
    }

    /// The manifest and the config, as the registry serves them.
    fn manifest_and_config(&self) -> (serde_json::Value, serde_json::Value) {
        let registry = Registry::plain();
        let manifest = registry.manifest(&self.name, &self.digest).unwrap().json;
        let url = format!(
            "http://{}/v2/{}/blobs/{}",
            registry.host,
            self.name,
            manifest["config"]["digest"].as_str().unwrap()
        );
        let mut body = String::new();
        ureq::get(&url).call().unwrap().body_mut().as_reader().read_to_string(&mut body).unwrap();
        (manifest, serde_json::from_str(&body).unwrap())
    }
}

/// The `export NAME='VALUE'` lines of an environment script.
fn exports(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
        .collect()
}

#[test]
fn a_second_build_on_a_fresh_builder_gives_the_same_digests() {
    let kiln = Image::from_env("KILN_IMAGE_KILN");
    let kilnd = Image::from_env("KILN_IMAGE_KILND");
    let binaries = var("KILN_IMAGES_BINARIES");
    let epoch = var("KILN_IMAGES_SOURCE_DATE_EPOCH");

    // The same bytes, copied anew so their file times are now: the
    // images' times come from SOURCE_DATE_EPOCH, not from the files.
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for name in ["kiln", "kilnd"] {
        std::fs::copy(Path::new(&binaries).join(name), bin.join(name)).unwrap();
    }
    // A builder with no cache, under another tag.
    let tag = unique("repro");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("env/images");
    let out = run(Command::new(script)
        .env("KILN_IMAGES_BINARIES", &bin)
        .env("KILN_IMAGES_STATE", dir.path().join("state"))
        .env("KILN_IMAGES_TAG", &tag)
        .env("SOURCE_DATE_EPOCH", &epoch));
    let again = exports(&out);
    let get =
        |k: &str| again.iter().find(|(n, _)| n == k).unwrap_or_else(|| panic!("no {k} in:\n{out}")).1.clone();
    for (first, key) in [(&kiln, "KILN_IMAGE_KILN"), (&kilnd, "KILN_IMAGE_KILND")] {
        let second = Image::parse(&get(key));
        assert!(second.reference.contains(&format!(":{tag}@")), "{}", second.reference);
        assert_eq!(
            second.digest, first.digest,
            "{} was built again as {}",
            first.reference, second.reference
        );
        // The registry serves the new tag as that very manifest.
        let by_tag = Registry::plain().manifest(&second.name, &tag).unwrap();
        assert_eq!(by_tag.digest, first.digest);
    }
}

#[test]
fn the_configs_say_how_the_images_run() {
    let epoch: i64 = var("KILN_IMAGES_SOURCE_DATE_EPOCH").parse().unwrap();
    for (key, entrypoint, user) in [
        ("KILN_IMAGE_KILN", "/usr/local/bin/kiln", Some("65532:65532")),
        ("KILN_IMAGE_KILND", "/usr/local/bin/kilnd", None),
    ] {
        let image = Image::from_env(key);
        let (manifest, config) = image.manifest_and_config();
        assert_eq!(
            manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json",
            "{}",
            image.reference
        );
        assert_eq!(config["architecture"], "amd64");
        assert_eq!(config["os"], "linux");
        assert_eq!(config["config"]["Entrypoint"], serde_json::json!([entrypoint]), "{config:#}");
        assert_eq!(config["config"]["User"].as_str(), user, "{config:#}");
        // Two layers, each with its history entry: the Debian base made by
        // e2e/env/images, then the binary's.
        assert_eq!(manifest["layers"].as_array().unwrap().len(), 2, "{manifest:#}");
        let history = config["history"].as_array().unwrap();
        let layered: Vec<_> =
            history.iter().filter(|h| !h["empty_layer"].as_bool().unwrap_or(false)).collect();
        assert_eq!(layered.len(), 2, "{config:#}");
        assert!(layered[0]["created_by"].as_str().unwrap().starts_with("debootstrap --variant=minbase"));
        assert!(layered[1]["created_by"].as_str().unwrap().starts_with("ADD "), "{config:#}");
        // Every time the build made is SOURCE_DATE_EPOCH.
        let time = rfc3339(epoch);
        assert_eq!(config["created"], time, "{config:#}");
        assert!(history[1..].iter().all(|h| h["created"] == time), "{config:#}");
    }
}

#[test]
fn kilnd_and_kiln_run_in_containers_made_from_their_images() {
    let kiln = Image::from_env("KILN_IMAGE_KILN");
    let kilnd = Image::from_env("KILN_IMAGE_KILND");
    let builder = Kilnd::start();
    let ctx = tempfile::tempdir().unwrap();
    // kilnd's image holds what kilnd runs; kiln's runs as its user. Each
    // command is traced to the build's log, so a failing one is named there.
    let dockerfile = format!(
        "FROM {kilnd} AS kilnd\n\
         RUN set -ex; {{ kilnd --version; runc --version; iptables-restore --version; git --version; \
             ssh -V 2>&1; test -s /etc/ssl/certs/ca-certificates.crt && echo ca-certificates; \
             test -z \"$(find /var/lib/apt/lists /usr/share/man /usr/share/locale -mindepth 1)\"; \
             test -z \"$(find /usr/share/doc -type f ! -name copyright)\" && echo stripped; }} > /out\n\
         FROM {kiln} AS kiln\n\
         RUN set -ex; {{ kiln --version; id -u; }} > /tmp/out\n\
         FROM scratch\n\
         COPY --from=kilnd /out /kilnd\n\
         COPY --from=kiln /tmp/out /kiln\n",
        kilnd = kilnd.reference,
        kiln = kiln.reference,
    );
    std::fs::write(ctx.path().join("Dockerfile"), dockerfile).unwrap();
    let dest = ctx.path().join("out");
    buildctl_dockerfile(&builder.addr, ctx.path(), &format!("type=local,dest={}", dest.display()));

    let out = std::fs::read_to_string(dest.join("kilnd")).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("kilnd {VERSION}"), "{out}");
    for want in
        ["runc version", "iptables-restore v", "git version", "OpenSSH_", "ca-certificates", "stripped"]
    {
        assert!(lines.iter().any(|l| l.starts_with(want)), "no {want:?} in:\n{out}");
    }
    let out = std::fs::read_to_string(dest.join("kiln")).unwrap();
    assert_eq!(out, format!("kiln {VERSION}\n65532\n"));
}

/// A Unix time as RFC 3339 in UTC, as image configs write it.
fn rfc3339(secs: i64) -> String {
    let out = run(Command::new("date").args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"]));
    out.trim().to_owned()
}
