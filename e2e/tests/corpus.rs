//! The Dockerfile corpus (`e2e/corpus/<case>/`) built with real buildx by
//! kilnd and by the reference buildkitd: for every case the exported file
//! trees (`-o type=local`), the images' file systems and configs (`-o
//! type=oci`) must match, and no secret value may be in kilnd's outputs.
//! docs/compatibility.md lists what is compared and the known differences.
//!
//! A case is a directory: the context, with a `Dockerfile` and an optional
//! `case.json`: `{"dockerfile": "other.Dockerfile", "build_args": {"K": "v"},
//! "target": "stage", "secrets": {"id": "value"}, "flags": ["--…"]}`.
//! Every build gets `BASE`, `BASE_V2S2`, `BASE_MULTI` (the seeded images of
//! the local registry) and `BASE_BY_DIGEST` (`BASE` pinned by its digest) as
//! build args; in `flags`, `{BASE}` and the like stand for the same values
//! and `{CASE}` for the case's directory. `KILN_CORPUS=a,b` runs only the
//! cases whose names contain one of the comma-separated words.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kiln_e2e::{Buildkitd, Buildx, Gateway, Kilnd, Registry, TestEnv, repo_and_tag};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Cases whose difference from buildkitd is known, each with the section of
/// docs/compatibility.md that gives the reason. They are still built and
/// compared; their result is reported but does not fail the test.
const EXCLUDED: &[(&str, &str)] = &[];

/// How many lines of differences a case prints at most per section.
const MAX_DIFF_LINES: usize = 60;

#[derive(Debug)]
struct Case {
    name: String,
    dir: PathBuf,
    dockerfile: PathBuf,
    build_args: Vec<(String, String)>,
    target: Option<String>,
    secrets: Vec<(String, String)>,
    flags: Vec<String>,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

fn string_map(json: &Value, key: &str, case: &str) -> Vec<(String, String)> {
    match json.get(key) {
        None => Vec::new(),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| {
                let v = v.as_str().unwrap_or_else(|| panic!("{case}/case.json: {key}.{k} is not a string"));
                (k.clone(), v.to_owned())
            })
            .collect(),
        Some(other) => panic!("{case}/case.json: {key} is not an object: {other}"),
    }
}

fn load_cases() -> Vec<Case> {
    let filter: Vec<String> = std::env::var("KILN_CORPUS")
        .map(|f| f.split(',').filter(|w| !w.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    let mut cases = Vec::new();
    for entry in std::fs::read_dir(corpus_dir()).unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        if !filter.is_empty() && !filter.iter().any(|w| name.contains(w.as_str())) {
            continue;
        }
        let spec = match std::fs::read(dir.join("case.json")) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{name}/case.json is not JSON: {e}"))
            }
            Err(_) => Value::Object(serde_json::Map::new()),
        };
        for key in spec.as_object().unwrap().keys() {
            assert!(
                ["dockerfile", "build_args", "target", "secrets", "flags"].contains(&key.as_str()),
                "{name}/case.json: unknown key {key}"
            );
        }
        let flags = spec.get("flags").map_or_else(Vec::new, |f| {
            f.as_array()
                .unwrap_or_else(|| panic!("{name}/case.json: flags is not a list"))
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect()
        });
        let dockerfile = dir.join(spec.get("dockerfile").map_or("Dockerfile", |d| d.as_str().unwrap()));
        assert!(dockerfile.is_file(), "corpus case {name} has no {}", dockerfile.display());
        cases.push(Case {
            dockerfile,
            build_args: string_map(&spec, "build_args", &name),
            target: spec.get("target").map(|t| t.as_str().unwrap().to_owned()),
            secrets: string_map(&spec, "secrets", &name),
            flags,
            name,
            dir,
        });
    }
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    for (name, doc) in EXCLUDED {
        assert!(corpus_dir().join(name).is_dir(), "excluded case {name} ({doc}) is not in the corpus");
    }
    cases
}

/// The base images every case may use, by build arg name.
fn bases() -> &'static [(String, String)] {
    static BASES: OnceLock<Vec<(String, String)>> = OnceLock::new();
    BASES.get_or_init(|| {
        let env = TestEnv::get();
        let (name, tag) = repo_and_tag(&env.base_image);
        let digest = Registry::plain()
            .manifest(name, tag)
            .unwrap_or_else(|code| panic!("{name}:{tag}: {code}"))
            .digest;
        let repo = env.base_image.rsplit_once(':').map_or(env.base_image.as_str(), |(repo, _)| repo);
        vec![
            ("BASE".to_owned(), env.base_image.clone()),
            ("BASE_V2S2".to_owned(), env.base_image_v2s2.clone()),
            ("BASE_MULTI".to_owned(), env.base_image_multi.clone()),
            ("BASE_BY_DIGEST".to_owned(), format!("{repo}@{digest}")),
        ]
    })
}

/// One build's outputs, in `dir`.
struct Outputs {
    tree: PathBuf,
    image: PathBuf,
}

/// Builds `case` on the buildx builder `builder`; Err holds the build's output.
fn build(buildx: &Buildx, builder: &str, case: &Case, dir: &Path) -> Result<Outputs, String> {
    let outputs = Outputs { tree: dir.join("tree"), image: dir.join("image.tar") };
    let mut cmd = buildx.command();
    cmd.args(["build", "--builder", builder, "--progress", "plain"]);
    for (k, v) in bases().iter().chain(&case.build_args) {
        cmd.args(["--build-arg", &format!("{k}={v}")]);
    }
    if let Some(target) = &case.target {
        cmd.args(["--target", target]);
    }
    for (id, value) in &case.secrets {
        let src = dir.join(format!("secret-{id}"));
        std::fs::write(&src, value).unwrap();
        cmd.args(["--secret", &format!("id={id},src={}", src.display())]);
    }
    for flag in &case.flags {
        let mut flag = flag.replace("{CASE}", &case.dir.to_string_lossy());
        for (k, v) in bases() {
            flag = flag.replace(&format!("{{{k}}}"), v);
        }
        cmd.arg(flag);
    }
    cmd.arg("--file")
        .arg(&case.dockerfile)
        .arg("--output")
        .arg(format!("type=local,dest={}", outputs.tree.display()))
        .arg("--output")
        .arg(format!("type=oci,dest={},name=corpus/{}:{builder}", outputs.image.display(), case.name))
        .arg(&case.dir);
    let out: Output = cmd.stdin(Stdio::null()).output().unwrap();
    if out.status.success() {
        Ok(outputs)
    } else {
        Err(format!("{}\n{}", out.status, String::from_utf8_lossy(&out.stderr)))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Dir,
    /// `text` is the content of a short UTF-8 file, shown in differences.
    File {
        size: u64,
        sha256: String,
        text: Option<String>,
    },
    Symlink(PathBuf),
    Fifo,
    Socket,
    CharDevice(u64),
    BlockDevice(u64),
}

/// What a user can tell apart in an exported file: everything but times.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    /// The first path (in sorted order) of this file's hardlink group within the tree.
    hardlink_of: Option<String>,
}

fn snapshot(root: &Path) -> BTreeMap<String, Entry> {
    let mut entries = BTreeMap::new();
    let mut inodes: HashMap<(u64, u64), Vec<String>> = HashMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let ft = meta.file_type();
            let kind = if ft.is_dir() {
                stack.push(path.clone());
                Kind::Dir
            } else if ft.is_symlink() {
                Kind::Symlink(std::fs::read_link(&path).unwrap())
            } else if ft.is_file() {
                file_kind(&mut std::fs::File::open(&path).unwrap())
            } else if ft.is_fifo() {
                Kind::Fifo
            } else if ft.is_socket() {
                Kind::Socket
            } else if ft.is_char_device() {
                Kind::CharDevice(meta.rdev())
            } else {
                Kind::BlockDevice(meta.rdev())
            };
            if !ft.is_dir() && meta.nlink() > 1 {
                inodes.entry((meta.dev(), meta.ino())).or_default().push(rel.clone());
            }
            let entry = Entry {
                kind,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                hardlink_of: None,
            };
            entries.insert(rel, entry);
        }
    }
    for mut group in inodes.into_values().filter(|g| g.len() > 1) {
        group.sort();
        for path in &group {
            entries.get_mut(path).unwrap().hardlink_of = Some(group[0].clone());
        }
    }
    entries
}

/// The file system an image's layers make, applied in order with their
/// whiteouts: unlike the local export (which buildx writes with the
/// caller's ownership), it has the owners the image really has.
fn image_tree(layers: &[Vec<u8>]) -> BTreeMap<String, Entry> {
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    // Hardlinked paths and the path whose inode they share.
    let mut links: BTreeMap<String, String> = BTreeMap::new();
    let remove_under = |entries: &mut BTreeMap<String, Entry>, dir: &str, keep: &[String]| {
        let prefix = format!("{dir}/");
        entries.retain(|p, _| !p.starts_with(&prefix) || keep.contains(p));
    };
    for layer in layers {
        let mut added: Vec<String> = Vec::new();
        let mut archive = tar::Archive::new(&layer[..]);
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let raw = entry.path().unwrap().to_string_lossy().into_owned();
            let path = raw.trim_start_matches("./").trim_matches('/').to_owned();
            let (parent, name) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
            if path.is_empty() {
                continue;
            }
            if name == ".wh..wh..opq" {
                // Opaque: what lower layers had in the directory is gone.
                let keep = added.clone();
                remove_under(&mut entries, parent, &keep);
                continue;
            }
            if let Some(hidden) = name.strip_prefix(".wh.") {
                let gone = if parent.is_empty() { hidden.to_owned() } else { format!("{parent}/{hidden}") };
                entries.remove(&gone);
                links.remove(&gone);
                remove_under(&mut entries, &gone, &[]);
                continue;
            }
            let header = entry.header().clone();
            let kind = match header.entry_type() {
                tar::EntryType::Directory => Kind::Dir,
                tar::EntryType::Symlink => Kind::Symlink(header.link_name().unwrap().unwrap().into_owned()),
                tar::EntryType::Link => {
                    let target = header.link_name().unwrap().unwrap().to_string_lossy().into_owned();
                    let target = target.trim_start_matches("./").trim_matches('/').to_owned();
                    let inode = links.get(&target).cloned().unwrap_or_else(|| target.clone());
                    links.insert(target.clone(), inode.clone());
                    links.insert(path.clone(), inode);
                    let shared =
                        entries.get(&target).unwrap_or_else(|| panic!("hardlink {path} to missing {target}"));
                    let copy = Entry { hardlink_of: None, ..shared.clone() };
                    entries.insert(path.clone(), copy);
                    added.push(path);
                    continue;
                }
                tar::EntryType::Fifo => Kind::Fifo,
                tar::EntryType::Char => Kind::CharDevice(device(&header)),
                tar::EntryType::Block => Kind::BlockDevice(device(&header)),
                _ => file_kind(&mut entry),
            };
            if kind != Kind::Dir {
                remove_under(&mut entries, &path, &[]);
            }
            links.remove(&path);
            let entry = Entry {
                kind,
                mode: header.mode().unwrap() & 0o7777,
                uid: u32::try_from(header.uid().unwrap()).unwrap(),
                gid: u32::try_from(header.gid().unwrap()).unwrap(),
                hardlink_of: None,
            };
            entries.insert(path.clone(), entry);
            added.push(path);
        }
    }
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (path, inode) in links {
        if entries.contains_key(&path) {
            groups.entry(inode).or_default().push(path);
        }
    }
    for group in groups.into_values().filter(|g| g.len() > 1) {
        for path in &group {
            entries.get_mut(path).unwrap().hardlink_of = Some(group[0].clone());
        }
    }
    entries
}

fn device(header: &tar::Header) -> u64 {
    let major = u64::from(header.device_major().unwrap().unwrap_or(0));
    let minor = u64::from(header.device_minor().unwrap().unwrap_or(0));
    (major << 8) | minor
}

fn file_kind(content: &mut impl Read) -> Kind {
    const SHOWN: usize = 200;
    let mut hasher = Sha256::new();
    let mut head = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = content.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        let keep = n.min((SHOWN + 1).saturating_sub(head.len()));
        head.extend_from_slice(&buf[..keep]);
        size += n as u64;
    }
    let text = if head.len() <= SHOWN { String::from_utf8(head).ok() } else { None };
    Kind::File { size, sha256: hex::encode(hasher.finalize()), text }
}

fn describe(e: &Entry) -> String {
    let kind = match &e.kind {
        Kind::Dir => "dir".to_owned(),
        Kind::File { size, sha256, text: Some(text) } => {
            format!("file {size} bytes sha256:{} {text:?}", &sha256[..12])
        }
        Kind::File { size, sha256, text: None } => format!("file {size} bytes sha256:{}", &sha256[..12]),
        Kind::Symlink(target) => format!("symlink -> {}", target.display()),
        Kind::Fifo => "fifo".to_owned(),
        Kind::Socket => "socket".to_owned(),
        Kind::CharDevice(rdev) => format!("char device {rdev:#x}"),
        Kind::BlockDevice(rdev) => format!("block device {rdev:#x}"),
    };
    let link = e.hardlink_of.as_ref().map(|p| format!(" hardlink of {p}")).unwrap_or_default();
    format!("{kind} {:04o} {}:{}{link}", e.mode, e.uid, e.gid)
}

/// Differences between kilnd's tree (`ours`) and buildkitd's (`theirs`).
fn diff_trees(ours: &BTreeMap<String, Entry>, theirs: &BTreeMap<String, Entry>) -> Vec<String> {
    let mut diffs = Vec::new();
    for (path, e) in ours {
        match theirs.get(path) {
            None => diffs.push(format!("  only kilnd:     /{path} ({})", describe(e))),
            Some(t) if t != e => {
                diffs.push(format!(
                    "  differs:        /{path}\n    kilnd:     {}\n    buildkitd: {}",
                    describe(e),
                    describe(t)
                ));
            }
            Some(_) => {}
        }
    }
    for (path, t) in theirs {
        if !ours.contains_key(path) {
            diffs.push(format!("  only buildkitd: /{path} ({})", describe(t)));
        }
    }
    diffs
}

/// The blobs of an OCI layout tar, by path inside it.
fn read_tar(path: &Path) -> HashMap<String, Vec<u8>> {
    let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
    let mut files = HashMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        files.insert(name, data);
    }
    files
}

/// An exported image: its config document and its layers, uncompressed.
struct Image {
    config: Value,
    layers: Vec<Vec<u8>>,
}

fn blob(files: &HashMap<String, Vec<u8>>, digest: &str) -> Vec<u8> {
    let (algo, hex) = digest.split_once(':').unwrap();
    files
        .get(&format!("blobs/{algo}/{hex}"))
        .unwrap_or_else(|| panic!("no blob {digest} in the OCI tar"))
        .clone()
}

/// The images of an OCI layout tar: one (its platform not named), or one
/// per entry of the nested index of a multi-platform build, each with the
/// platform (`os/arch[/variant]`) the index gives it.
fn read_images(path: &Path) -> Vec<(String, Image)> {
    let files = read_tar(path);
    let index: Value =
        serde_json::from_slice(files.get("index.json").expect("index.json in the OCI tar")).unwrap();
    let is_index =
        |d: &Value| d["mediaType"].as_str().is_some_and(|m| m.contains("index") || m.contains("list"));
    let top = index["manifests"][0].clone();
    if !is_index(&top) {
        return vec![(String::new(), read_image(&files, &top))];
    }
    let nested: Value = serde_json::from_slice(&blob(&files, top["digest"].as_str().unwrap())).unwrap();
    nested["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|desc| {
            let p = &desc["platform"];
            let label = [&p["os"], &p["architecture"], &p["variant"]]
                .iter()
                .filter_map(|v| v.as_str())
                .filter(|v| !v.is_empty())
                .collect::<Vec<_>>()
                .join("/");
            (label, read_image(&files, desc))
        })
        .collect()
}

fn read_image(files: &HashMap<String, Vec<u8>>, desc: &Value) -> Image {
    let manifest: Value = serde_json::from_slice(&blob(files, desc["digest"].as_str().unwrap())).unwrap();
    let config =
        serde_json::from_slice(&blob(files, manifest["config"]["digest"].as_str().unwrap())).unwrap();
    let layers = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let data = blob(files, l["digest"].as_str().unwrap());
            let media_type = l["mediaType"].as_str().unwrap_or_default();
            if media_type.ends_with("gzip") {
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(&data[..]).read_to_end(&mut out).unwrap();
                out
            } else {
                data
            }
        })
        .collect();
    Image { config, layers }
}

/// The config fields a user sees in `docker inspect` and `docker history`.
/// Absent, null and empty are the same to a user.
fn config_fields(image: &Image) -> BTreeMap<String, Value> {
    const FIELDS: &[&str] = &[
        "Env",
        "Cmd",
        "Entrypoint",
        "WorkingDir",
        "User",
        "Labels",
        "ExposedPorts",
        "Volumes",
        "StopSignal",
        "Healthcheck",
        "OnBuild",
        "Shell",
    ];
    let c = &image.config;
    let mut fields = BTreeMap::new();
    for field in FIELDS {
        fields.insert(format!("config.{field}"), c["config"][field].clone());
    }
    for field in ["os", "architecture", "variant"] {
        fields.insert(field.to_owned(), c[field].clone());
    }
    fields.insert("layers".to_owned(), Value::from(image.layers.len()));
    let history: Vec<Value> = c["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .map(|e| serde_json::json!([e["created_by"], e["empty_layer"].as_bool().unwrap_or(false)]))
                .collect()
        })
        .unwrap_or_default();
    fields.insert("history (created_by, empty_layer)".to_owned(), Value::from(history));
    fields.retain(|_, v| match v {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    });
    fields
}

fn diff_configs(ours: &BTreeMap<String, Value>, theirs: &BTreeMap<String, Value>) -> Vec<String> {
    let mut keys: Vec<&String> = ours.keys().chain(theirs.keys()).collect();
    keys.sort();
    keys.dedup();
    let show = |v: Option<&Value>| v.map_or_else(|| "(absent)".to_owned(), Value::to_string);
    keys.into_iter()
        .filter(|k| ours.get(*k) != theirs.get(*k))
        .map(|k| {
            format!("  {k}\n    kilnd:     {}\n    buildkitd: {}", show(ours.get(k)), show(theirs.get(k)))
        })
        .collect()
}

/// Where a secret's value shows up in an output: file paths and layer indexes.
fn secret_leaks(tree: &Path, image: &Image, secret: &str) -> Vec<String> {
    let needle = secret.as_bytes();
    let contains = |hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    let mut leaks = Vec::new();
    let mut stack = vec![tree.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() && contains(&std::fs::read(&path).unwrap()) {
                leaks.push(path.display().to_string());
            }
        }
    }
    for (i, layer) in image.layers.iter().enumerate() {
        if contains(layer) {
            leaks.push(format!("layer {i} of the image"));
        }
    }
    if contains(image.config.to_string().as_bytes()) {
        leaks.push("the image config".to_owned());
    }
    leaks
}

fn truncated(mut lines: Vec<String>) -> String {
    let total = lines.len();
    if total > MAX_DIFF_LINES {
        lines.truncate(MAX_DIFF_LINES);
        lines.push(format!("  … and {} more", total - MAX_DIFF_LINES));
    }
    lines.join("\n")
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Same,
    Differs,
    KilndFailed,
    BuildkitdFailed,
    SecretLeaked,
}

/// Builds one case on both daemons and compares; returns the verdict and a report.
fn run_case(buildx: &Buildx, case: &Case) -> (Verdict, String, Duration, Duration) {
    let work = tempfile::Builder::new().prefix(&format!("kiln-corpus-{}-", case.name)).tempdir().unwrap();
    let ours_dir = work.path().join("kilnd");
    let theirs_dir = work.path().join("buildkitd");
    std::fs::create_dir_all(&ours_dir).unwrap();
    std::fs::create_dir_all(&theirs_dir).unwrap();
    let start = Instant::now();
    let theirs = build(buildx, "buildkitd", case, &theirs_dir);
    let theirs_time = start.elapsed();
    let start = Instant::now();
    let ours = build(buildx, "kilnd", case, &ours_dir);
    let ours_time = start.elapsed();
    // A secret must not reach kilnd's outputs, whatever buildkitd did.
    let ours = ours.map(|o| {
        let images = read_images(&o.image);
        (o, images)
    });
    if let Ok((o, images)) = &ours {
        let leaks: Vec<String> = case
            .secrets
            .iter()
            .flat_map(|(id, value)| {
                images.iter().flat_map(move |(_, image)| {
                    secret_leaks(&o.tree, image, value).into_iter().map(move |l| format!("{id}: {l}"))
                })
            })
            .collect();
        if !leaks.is_empty() {
            let report = format!("kilnd's output holds secret values:\n  {}", leaks.join("\n  "));
            return (Verdict::SecretLeaked, report, ours_time, theirs_time);
        }
    }
    let ((ours, our_images), theirs) = match (ours, theirs) {
        (_, Err(log)) => {
            return (
                Verdict::BuildkitdFailed,
                format!("buildkitd failed (a corpus defect):\n{log}"),
                ours_time,
                theirs_time,
            );
        }
        (Err(log), Ok(_)) => {
            return (Verdict::KilndFailed, format!("kilnd failed:\n{log}"), ours_time, theirs_time);
        }
        (Ok(o), Ok(t)) => (o, t),
    };
    let mut report = String::new();
    let their_images = read_images(&theirs.image);
    let tree_diff = diff_trees(&snapshot(&ours.tree), &snapshot(&theirs.tree));
    if !tree_diff.is_empty() {
        let _ = writeln!(report, " file tree (-o type=local):\n{}", truncated(tree_diff));
    }
    let labels = |images: &[(String, Image)]| images.iter().map(|(l, _)| l.clone()).collect::<Vec<_>>();
    if labels(&our_images) != labels(&their_images) {
        let _ = writeln!(
            report,
            " image platforms:\n    kilnd:     {:?}\n    buildkitd: {:?}",
            labels(&our_images),
            labels(&their_images)
        );
    }
    for ((label, our_image), (_, their_image)) in our_images.iter().zip(&their_images) {
        let of = if our_images.len() > 1 { format!(" ({label})") } else { String::new() };
        let image_diff = diff_trees(&image_tree(&our_image.layers), &image_tree(&their_image.layers));
        let config_diff = diff_configs(&config_fields(our_image), &config_fields(their_image));
        if !image_diff.is_empty() {
            let _ = writeln!(
                report,
                " image file system{of} (the OCI layers applied):\n{}",
                truncated(image_diff)
            );
        }
        if !config_diff.is_empty() {
            let _ = writeln!(report, " image config{of}:\n{}", truncated(config_diff));
        }
    }
    let verdict = if report.is_empty() { Verdict::Same } else { Verdict::Differs };
    (verdict, report, ours_time, theirs_time)
}

/// Builds every case on the BuildKit endpoint `kilnd_addr` (kilnd, or the
/// gateway in front of kilnd builders) and on the reference buildkitd, and
/// fails on any case that differs and is not excluded. `logs` gives the
/// kilnd logs to check for panics.
fn corpus_against(kilnd_addr: &str, logs: impl Fn() -> String) {
    let cases = load_cases();
    assert!(!cases.is_empty(), "no corpus case matches KILN_CORPUS");
    let started = Instant::now();
    let buildkitd = Buildkitd::start();
    let buildx = Buildx::new();
    buildx.create_remote("kilnd", kilnd_addr);
    buildx.create_remote("buildkitd", &buildkitd.addr);
    let mut results = Vec::new();
    for case in &cases {
        let (verdict, report, ours, theirs) = run_case(&buildx, case);
        let excluded = EXCLUDED.iter().find(|(name, _)| *name == case.name).map(|(_, doc)| *doc);
        let label = match (&verdict, excluded) {
            (Verdict::SecretLeaked, _) => "FAIL: a secret leaked",
            (Verdict::Same, None) => "PASS",
            (Verdict::Same, Some(_)) => "PASS (excluded, but it matches now: lift the exclusion?)",
            (_, Some(_)) => "EXCLUDED",
            (Verdict::Differs, None) => "FAIL: differs",
            (Verdict::KilndFailed, None) => "FAIL: kilnd failed",
            (Verdict::BuildkitdFailed, None) => "FAIL: buildkitd failed",
        };
        println!(
            "{label:>8} {} (kilnd {:.1}s, buildkitd {:.1}s){}",
            case.name,
            ours.as_secs_f64(),
            theirs.as_secs_f64(),
            excluded.map(|doc| format!(" see {doc}")).unwrap_or_default()
        );
        if verdict != Verdict::Same {
            println!("{report}");
        }
        let fails = verdict != Verdict::Same && excluded.is_none()
            || matches!(verdict, Verdict::BuildkitdFailed | Verdict::SecretLeaked);
        results.push((case.name.clone(), label, fails));
    }

    println!("\ncorpus: {} cases in {:.0?}", results.len(), started.elapsed());
    for (name, label, _) in &results {
        println!("  {label:<8} {name}");
    }
    let failed: Vec<&str> = results.iter().filter(|r| r.2).map(|r| r.0.as_str()).collect();
    let logs = logs();
    assert!(!logs.contains("panicked"), "kilnd panicked:\n{logs}");
    assert!(failed.is_empty(), "corpus cases that failed: {failed:?} (reports above)");
}

#[test]
fn corpus_builds_the_same_on_kilnd_and_buildkitd() {
    let kilnd = Kilnd::start();
    corpus_against(&kilnd.addr, || kilnd.daemon.log_text());
}

#[test]
fn corpus_builds_the_same_through_the_gateway_in_front_of_three_builders() {
    let gateway = Gateway::start(3);
    corpus_against(&gateway.addr, || {
        gateway.builders.iter().map(|b| b.daemon.log_text()).chain([gateway.daemon.log_text()]).collect()
    });
    let solves = gateway.solves();
    let mut used: Vec<usize> = solves.clone();
    used.sort_unstable();
    used.dedup();
    println!("gateway: {} builds on builders {used:?}", solves.len());
    assert!(used.len() >= 2, "the corpus spread over the builders: {solves:?}");
}

/// The comparison itself: every property it claims to check makes a difference.
#[test]
fn tree_comparison_sees_what_a_user_would() {
    use std::os::unix::fs::{PermissionsExt as _, symlink};
    let make = |dir: &Path| {
        std::fs::create_dir_all(dir.join("d")).unwrap();
        std::fs::write(dir.join("d/f"), "data").unwrap();
        std::fs::hard_link(dir.join("d/f"), dir.join("h")).unwrap();
        symlink("d/f", dir.join("l")).unwrap();
    };
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    make(a.path());
    make(b.path());
    assert_eq!(diff_trees(&snapshot(a.path()), &snapshot(b.path())), Vec::<String>::new());
    // Times do not count.
    Command::new("touch").args(["-d", "2001-01-01"]).arg(b.path().join("d/f")).status().unwrap();
    assert!(diff_trees(&snapshot(a.path()), &snapshot(b.path())).is_empty());

    type Change = fn(&Path);
    let changes: [(&str, Change); 6] = [
        ("content", |p| std::fs::write(p.join("d/f"), "other").unwrap()),
        ("mode", |p| {
            std::fs::set_permissions(p.join("d/f"), std::fs::Permissions::from_mode(0o600)).unwrap()
        }),
        ("owner", |p| std::os::unix::fs::lchown(p.join("l"), Some(1000), Some(1000)).unwrap()),
        ("symlink target", |p| {
            std::fs::remove_file(p.join("l")).unwrap();
            symlink("h", p.join("l")).unwrap();
        }),
        ("hardlink", |p| {
            std::fs::remove_file(p.join("h")).unwrap();
            std::fs::write(p.join("h"), "data").unwrap();
        }),
        ("type", |p| {
            std::fs::remove_file(p.join("l")).unwrap();
            std::fs::write(p.join("l"), "d/f").unwrap();
        }),
    ];
    for (what, change) in changes {
        let c = tempfile::tempdir().unwrap();
        make(c.path());
        change(c.path());
        let diff = diff_trees(&snapshot(a.path()), &snapshot(c.path()));
        assert!(!diff.is_empty(), "a changed {what} went unnoticed");
        eprintln!("{what}:\n{}", diff.join("\n"));
    }
    std::fs::remove_file(b.path().join("h")).unwrap();
    let diff = diff_trees(&snapshot(a.path()), &snapshot(b.path()));
    assert!(diff.iter().any(|d| d.contains("only kilnd:") && d.contains("/h ")), "{diff:?}");
}

#[test]
fn config_comparison_treats_absent_null_and_empty_alike() {
    let image = |config: Value| Image { config, layers: vec![Vec::new()] };
    let a = image(serde_json::json!({"os": "linux", "config": {"Env": ["A=1"], "Labels": null, "Cmd": []}}));
    let b = image(serde_json::json!({"os": "linux", "config": {"Env": ["A=1"]}}));
    assert!(diff_configs(&config_fields(&a), &config_fields(&b)).is_empty());
    let c = image(serde_json::json!({"os": "linux", "config": {"Env": ["A=2"], "StopSignal": "SIGQUIT"}}));
    let diff = diff_configs(&config_fields(&a), &config_fields(&c));
    assert_eq!(diff.len(), 2, "{diff:?}");
    assert!(diff[0].contains("config.Env") && diff[1].contains("config.StopSignal"), "{diff:?}");
}

#[test]
fn secret_leaks_are_found_in_files_layers_and_the_config() {
    let tree = tempfile::tempdir().unwrap();
    std::fs::create_dir(tree.path().join("sub")).unwrap();
    std::fs::write(tree.path().join("sub/f"), "x the-secret y").unwrap();
    let image = Image {
        config: serde_json::json!({"config": {"Env": ["T=the-secret"]}}),
        layers: vec![b"clean".to_vec(), b"..the-secret..".to_vec()],
    };
    let leaks = secret_leaks(tree.path(), &image, "the-secret");
    assert_eq!(leaks.len(), 3, "{leaks:?}");
    assert!(leaks[0].ends_with("sub/f") && leaks[1] == "layer 1 of the image", "{leaks:?}");
    assert!(secret_leaks(tree.path(), &image, "not-there").is_empty());
}
