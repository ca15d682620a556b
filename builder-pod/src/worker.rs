//! The one worker a kilnd runs: what `ListWorkers` reports and buildx shows in
//! `buildx inspect` (docs/protocol.md §2.1).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};

use kiln_proto::buildkit::moby::buildkit::v1::types::{BuildkitVersion, GcPolicy, WorkerRecord};
use kiln_proto::buildkit::pb::Platform;

/// The package name kilnd reports where buildkitd reports `github.com/moby/buildkit`.
pub(crate) const PACKAGE: &str = "kiln.dev/kilnd";

/// kilnd's own version, as `Info` and `ListWorkers` report it.
pub(crate) fn version() -> BuildkitVersion {
    BuildkitVersion {
        package: PACKAGE.into(),
        version: concat!("v", env!("CARGO_PKG_VERSION")).into(),
        revision: option_env!("KILN_REVISION").unwrap_or_default().into(),
    }
}

/// Label keys buildx knows (`worker/label/label.go` upstream).
mod label {
    pub(super) const EXECUTOR: &str = "org.mobyproject.buildkit.worker.executor";
    pub(super) const SNAPSHOTTER: &str = "org.mobyproject.buildkit.worker.snapshotter";
    pub(super) const HOSTNAME: &str = "org.mobyproject.buildkit.worker.hostname";
    pub(super) const OCI_PROCESS_MODE: &str = "org.mobyproject.buildkit.worker.oci.process-mode";
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum WorkerError {
    #[error("reading or creating the worker id file {path}: {source}")]
    WorkerId { path: PathBuf, source: io::Error },
    #[error("OCI runtime {binary:?} not found (set --oci-worker-binary to a path or install it)")]
    RuntimeMissing { binary: String },
}

/// The worker's identity and capabilities, fixed for the daemon's lifetime.
#[derive(Clone, Debug)]
pub(crate) struct Worker {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    pub platforms: Vec<Platform>,
    pub runtime: PathBuf,
    /// Automatic collection rules, as `ListWorkers` reports them.
    pub gc_policy: Vec<GcPolicy>,
}

impl Worker {
    /// Loads (or creates) the worker id under `root` and checks that the OCI
    /// runtime exists, so a misconfigured daemon fails at start, not mid-build.
    pub(crate) fn new(
        root: &Path,
        runtime: &str,
        extra_labels: &BTreeMap<String, String>,
    ) -> Result<Self, WorkerError> {
        let runtime =
            find_binary(runtime).ok_or_else(|| WorkerError::RuntimeMissing { binary: runtime.into() })?;
        let mut labels = BTreeMap::from([
            (label::EXECUTOR.to_owned(), "oci".to_owned()),
            (label::SNAPSHOTTER.to_owned(), "overlayfs".to_owned()),
            (label::HOSTNAME.to_owned(), hostname()),
            (label::OCI_PROCESS_MODE.to_owned(), "sandbox".to_owned()),
        ]);
        labels.extend(extra_labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(Self {
            id: worker_id(root)?,
            labels,
            platforms: vec![host_platform()],
            runtime,
            gc_policy: Vec::new(),
        })
    }

    pub(crate) fn record(&self) -> WorkerRecord {
        WorkerRecord {
            id: self.id.clone(),
            labels: self.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<HashMap<_, _>>(),
            platforms: self.platforms.clone(),
            gc_policy: self.gc_policy.clone(),
            buildkit_version: Some(version()),
            cdi_devices: Vec::new(),
        }
    }
}

/// The platform of the machine kilnd runs on, in OCI terms.
pub(crate) fn host_platform() -> Platform {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    Platform { architecture: architecture.into(), os: "linux".into(), ..Platform::default() }
}

/// A random id made once and kept under the root, like buildkitd's `workerid`.
fn worker_id(root: &Path) -> Result<String, WorkerError> {
    let path = root.join("workerid");
    let wrap = |source| WorkerError::WorkerId { path: path.clone(), source };
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(wrap(e)),
    }
    let id = random_id().map_err(wrap)?;
    // Written whole then renamed, so a crash never leaves a half id behind.
    let tmp = root.join("workerid.tmp");
    std::fs::write(&tmp, &id).and_then(|()| std::fs::rename(&tmp, &path)).map_err(wrap)?;
    Ok(id)
}

/// 25 base-36 characters, the shape of BuildKit's `identity.NewID()`.
pub(crate) fn random_id() -> io::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom").and_then(|mut f| io::Read::read_exact(&mut f, &mut bytes))?;
    let mut n = u128::from_le_bytes(bytes);
    let mut id = String::with_capacity(25);
    for _ in 0..25 {
        let digit = (n % 36) as u32;
        n /= 36;
        id.push(char::from_digit(digit, 36).unwrap_or('0'));
    }
    Ok(id)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default()
}

fn find_binary(name: &str) -> Option<PathBuf> {
    let is_exec = |p: &Path| p.is_file();
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_exec(&p).then_some(p);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| is_exec(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_id_is_made_once_and_kept() {
        let root = tempfile::tempdir().unwrap();
        let first = worker_id(root.path()).unwrap();
        assert_eq!(first.len(), 25);
        assert!(first.chars().all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()));
        assert_eq!(worker_id(root.path()).unwrap(), first);
        assert_ne!(random_id().unwrap(), first);
    }

    #[test]
    fn a_missing_runtime_is_named() {
        let root = tempfile::tempdir().unwrap();
        let err = Worker::new(root.path(), "no-such-runtime-kiln", &BTreeMap::new()).unwrap_err();
        assert!(err.to_string().contains("\"no-such-runtime-kiln\" not found"), "{err}");
    }

    #[test]
    fn the_record_carries_labels_platform_and_version() {
        let root = tempfile::tempdir().unwrap();
        let extra = BTreeMap::from([("team".to_owned(), "a".to_owned())]);
        let w = Worker::new(root.path(), "/bin/sh", &extra).unwrap();
        let r = w.record();
        assert_eq!(r.labels.get(label::EXECUTOR).map(String::as_str), Some("oci"));
        assert_eq!(r.labels.get("team").map(String::as_str), Some("a"));
        assert_eq!(r.platforms[0].os, "linux");
        assert_eq!(r.buildkit_version.unwrap().package, PACKAGE);
    }
}
