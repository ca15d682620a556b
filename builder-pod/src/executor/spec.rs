//! The OCI runtime config (`config.json`) for one exec: the subset of the
//! runtime spec kilnd uses, filled in as BuildKit's `executor/oci/spec.go`
//! (on containerd's default Unix spec) fills it.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::seccomp::{self, Seccomp};
use super::user::ExecUser;
use super::{DEFAULT_HOSTNAME, DEFAULT_PATH, ExecSpec, MountKind, SecurityMode};

const OCI_VERSION: &str = "1.0.2";

/// containerd's default capability set, which BuildKit keeps for sandboxed steps.
pub(crate) const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability by number.
const ALL_CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

const MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
];

const READONLY_PATHS: [&str; 5] = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// Character devices an insecure step gets (`util/entitlements/security` upstream).
const INSECURE_DEVICES: [(&str, i64, i64); 6] = [
    ("/dev/kmsg", 1, 11),
    ("/dev/cuse", 10, 203),
    ("/dev/fuse", 10, 229),
    ("/dev/kvm", 10, 232),
    ("/dev/net/tun", 10, 200),
    ("/dev/loop-control", 10, 237),
];
/// Loop block devices an insecure step gets; upstream asks the kernel for the
/// first free one and adds eight, kilnd gives the first eight.
const INSECURE_LOOP_DEVICES: i64 = 8;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Spec {
    pub oci_version: &'static str,
    pub process: Process,
    pub root: Root,
    pub hostname: String,
    pub mounts: Vec<Mount>,
    pub linux: Linux,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Process {
    pub terminal: bool,
    pub user: User,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub capabilities: Capabilities,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rlimits: Vec<PosixRlimit>,
    pub no_new_privileges: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct User {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

#[derive(Debug, Default, Serialize)]
pub(crate) struct Capabilities {
    pub bounding: Vec<String>,
    pub effective: Vec<String>,
    pub permitted: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inheritable: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ambient: Vec<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct PosixRlimit {
    #[serde(rename = "type")]
    pub kind: String,
    pub hard: u64,
    pub soft: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct Root {
    pub path: PathBuf,
    pub readonly: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Mount {
    pub destination: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

impl Mount {
    fn new(destination: &str, kind: &str, source: &str, options: &[&str]) -> Self {
        Self {
            destination: destination.into(),
            kind: kind.into(),
            source: source.into(),
            options: options.iter().map(|o| (*o).to_owned()).collect(),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Linux {
    pub namespaces: Vec<Namespace>,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    /// `None` rootless: the step gets no cgroup of its own there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroups_path: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<Device>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<Seccomp>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Namespace {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Join this namespace instead of making a new one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl Namespace {
    fn new(kind: &'static str) -> Self {
        Self { kind, path: None }
    }
}

/// The step's network namespace: `None` shares kilnd's, `Some(None)` is a
/// new one the runtime makes (loopback only), `Some(Some(path))` one to join.
pub(crate) type NetworkNamespace = Option<Option<String>>;

#[derive(Debug, Serialize)]
pub(crate) struct Resources {
    pub devices: Vec<DeviceRule>,
}

#[derive(Debug, Serialize)]
pub(crate) struct DeviceRule {
    pub allow: bool,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub access: &'static str,
}

#[derive(Debug, Serialize)]
pub(crate) struct Device {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub major: i64,
    pub minor: i64,
}

/// What the host decides about every container; probed once.
#[derive(Debug, Clone)]
pub(crate) struct HostFacts {
    /// What an insecure step gets.
    pub all_capabilities: Vec<String>,
    /// A cgroup namespace only works on a pure cgroup v2 host (moby/buildkit#4108).
    pub cgroup_namespace: bool,
    /// Sandboxed steps get the default seccomp profile for this platform;
    /// `None` when the kernel has no seccomp or the daemon turned it off.
    pub seccomp: Option<seccomp::Platform>,
    /// kilnd runs in a user namespace (docs/rootless.md): steps get no
    /// cgroup, and sysfs cannot be mounted for kilnd's own network namespace.
    pub rootless: bool,
    /// Steps get a process namespace and a procfs of their own; `false`
    /// shares kilnd's and binds its `/proc` (`--oci-worker-no-process-sandbox`).
    pub process_sandbox: bool,
}

impl HostFacts {
    pub(crate) fn probe() -> Self {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let all_capabilities = effective_capabilities(&status).unwrap_or_else(|| {
            tracing::warn!("cannot read this process's capabilities; insecure steps get the default set");
            DEFAULT_CAPABILITIES.iter().map(|c| (*c).to_owned()).collect()
        });
        let cgroup_namespace = Path::new("/proc/self/ns/cgroup").exists()
            && Path::new("/sys/fs/cgroup/cgroup.subtree_control").exists();
        let seccomp = seccomp::host_supports().then(seccomp::Platform::host);
        let rootless = crate::rootless::in_user_namespace();
        Self { all_capabilities, cgroup_namespace, seccomp, rootless, process_sandbox: true }
    }
}

/// The capabilities kilnd itself holds (`CapEff` in `/proc/self/status`):
/// a container cannot get more, so "all" means these, as containerd's
/// `cap.Current` does for BuildKit.
fn effective_capabilities(proc_status: &str) -> Option<Vec<String>> {
    let hex = proc_status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    let mask = u64::from_str_radix(hex, 16).ok()?;
    Some(
        ALL_CAPABILITIES
            .iter()
            .enumerate()
            .filter(|(bit, _)| mask & (1 << bit) != 0)
            .map(|(_, name)| (*name).to_owned())
            .collect(),
    )
}

/// Everything besides the exec spec that goes into the config.
#[derive(Debug)]
pub(crate) struct Inputs<'a> {
    pub exec: &'a ExecSpec,
    pub user: &'a ExecUser,
    /// Absolute, cleaned.
    pub cwd: &'a str,
    pub hosts_file: &'a Path,
    pub resolv_conf: &'a Path,
    pub cgroups_path: &'a str,
    pub host: &'a HostFacts,
    pub network: NetworkNamespace,
}

/// A container path made absolute and cleaned, as runc wants it.
pub(crate) fn clean_container_path(path: &str) -> String {
    crate::util::gopath::join(&["/", path])
}

fn env(exec: &ExecSpec) -> Vec<String> {
    let mut env = exec.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    env.extend(exec.secret_env.iter().map(|(k, v)| format!("{k}={v}")));
    env
}

/// A fresh sysfs, or, rootless in kilnd's own network namespace (which
/// the user namespace does not own, so sysfs cannot be mounted for it), the
/// namespace's `/sys` bound read-only, as rootless BuildKit does.
fn sys_mount(inputs: &Inputs<'_>, ro_unless_insecure: &str) -> Mount {
    if inputs.host.rootless && inputs.network.is_none() {
        Mount::new("/sys", "bind", "/sys", &["rbind", "nosuid", "noexec", "nodev", "ro"])
    } else {
        Mount::new("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", ro_unless_insecure])
    }
}

/// A fresh procfs for the step's process namespace, or kilnd's `/proc`
/// bound when steps share kilnd's (masked and read-only paths still apply).
fn proc_mount(inputs: &Inputs<'_>) -> Mount {
    if inputs.host.process_sandbox {
        Mount::new("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])
    } else {
        Mount::new("/proc", "bind", "/proc", &["rbind"])
    }
}

fn mounts(inputs: &Inputs<'_>) -> Vec<Mount> {
    let insecure = inputs.exec.security == SecurityMode::Insecure;
    // Insecure steps may write to /sys and the cgroup tree.
    let ro_unless_insecure = if insecure { "rw" } else { "ro" };
    // containerd's defaults without /run (moby/buildkit#429), then the
    // generated network files and the cgroup tree.
    let mut all = vec![
        proc_mount(inputs),
        Mount::new("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"]),
        Mount::new(
            "/dev/pts",
            "devpts",
            "devpts",
            &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        ),
        Mount::new("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
        Mount::new("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
        sys_mount(inputs, ro_unless_insecure),
        Mount::new(
            "/etc/resolv.conf",
            "bind",
            &inputs.resolv_conf.to_string_lossy(),
            &["nosuid", "noexec", "nodev", "rbind", "ro"],
        ),
        Mount::new(
            "/etc/hosts",
            "bind",
            &inputs.hosts_file.to_string_lossy(),
            &["nosuid", "noexec", "nodev", "rbind", "ro"],
        ),
        Mount::new("/sys/fs/cgroup", "cgroup", "cgroup", &[ro_unless_insecure, "nosuid", "noexec", "nodev"]),
    ];
    for m in &inputs.exec.mounts {
        let dest = clean_container_path(&m.dest);
        let mount = match &m.kind {
            MountKind::Bind { source, readonly } => {
                let mut opts = vec!["rbind"];
                if *readonly {
                    opts.push("ro");
                }
                Mount::new(&dest, "bind", &source.to_string_lossy(), &opts)
            }
            MountKind::Tmpfs { size, readonly } => {
                let mut opts = vec!["nosuid".to_owned()];
                if *readonly {
                    opts.push("ro".into());
                }
                if let Some(size) = size.filter(|s| *s > 0) {
                    opts.push(format!("size={size}"));
                }
                Mount { destination: dest, kind: "tmpfs".into(), source: "tmpfs".into(), options: opts }
            }
        };
        // A later mount on the same destination replaces the earlier one in place.
        match all.iter_mut().find(|existing| existing.destination == mount.destination) {
            Some(existing) => *existing = mount,
            None => all.push(mount),
        }
    }
    all
}

pub(crate) fn generate(inputs: &Inputs<'_>) -> Spec {
    let exec = inputs.exec;
    let insecure = exec.security == SecurityMode::Insecure;

    let capabilities = if insecure {
        let all = inputs.host.all_capabilities.clone();
        Capabilities {
            bounding: all.clone(),
            effective: all.clone(),
            permitted: all.clone(),
            inheritable: all.clone(),
            ambient: all,
        }
    } else {
        let default: Vec<String> = DEFAULT_CAPABILITIES.iter().map(|c| (*c).to_owned()).collect();
        Capabilities {
            bounding: default.clone(),
            effective: default.clone(),
            permitted: default,
            ..Default::default()
        }
    };
    let seccomp = match &inputs.host.seccomp {
        // Computed from the capabilities the step ends up with, as upstream.
        Some(platform) if !insecure => Some(seccomp::default_profile(platform, &capabilities.bounding)),
        _ => None,
    };

    let mut namespaces = ["pid", "ipc", "uts", "mount"].map(Namespace::new).to_vec();
    if !inputs.host.process_sandbox {
        namespaces.retain(|n| n.kind != "pid");
    }
    if let Some(path) = &inputs.network {
        namespaces.push(Namespace { kind: "network", path: path.clone() });
    }
    if inputs.host.cgroup_namespace {
        namespaces.push(Namespace::new("cgroup"));
    }

    let (masked_paths, readonly_paths, device_rules, devices) = if insecure {
        let mut devices: Vec<Device> = INSECURE_DEVICES
            .iter()
            .map(|(path, major, minor)| Device {
                path: (*path).into(),
                kind: "c",
                major: *major,
                minor: *minor,
            })
            .collect();
        devices.extend((0..INSECURE_LOOP_DEVICES).map(|i| Device {
            path: format!("/dev/loop{i}"),
            kind: "b",
            major: 7,
            minor: i,
        }));
        let rules = vec![
            DeviceRule { allow: true, kind: Some("c"), access: "rwm" },
            DeviceRule { allow: true, kind: Some("b"), access: "rwm" },
        ];
        (Vec::new(), Vec::new(), rules, devices)
    } else {
        (
            MASKED_PATHS.iter().map(|p| (*p).to_owned()).collect(),
            READONLY_PATHS.iter().map(|p| (*p).to_owned()).collect(),
            vec![DeviceRule { allow: false, kind: None, access: "rwm" }],
            Vec::new(),
        )
    };

    Spec {
        oci_version: OCI_VERSION,
        process: Process {
            terminal: false,
            user: User {
                uid: inputs.user.uid,
                gid: inputs.user.gid,
                additional_gids: inputs.user.additional_gids.clone(),
            },
            args: exec.args.clone(),
            env: env(exec),
            cwd: inputs.cwd.to_owned(),
            capabilities,
            rlimits: exec
                .rlimits
                .iter()
                .map(|r| PosixRlimit {
                    kind: format!("RLIMIT_{}", r.name.to_uppercase()),
                    hard: r.hard,
                    soft: r.soft,
                })
                .collect(),
            // BuildKit lets setuid binaries (sudo, su) work in RUN.
            no_new_privileges: false,
        },
        root: Root { path: exec.rootfs.clone(), readonly: exec.readonly_rootfs },
        hostname: exec.hostname.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| DEFAULT_HOSTNAME.into()),
        mounts: mounts(inputs),
        linux: Linux {
            namespaces,
            masked_paths,
            readonly_paths,
            resources: (!inputs.host.rootless).then_some(Resources { devices: device_rules }),
            cgroups_path: (!inputs.host.rootless).then(|| inputs.cgroups_path.to_owned()),
            devices,
            seccomp,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::{ExecMount, Rlimit};

    fn facts() -> HostFacts {
        HostFacts {
            all_capabilities: vec!["CAP_CHOWN".into(), "CAP_SYS_ADMIN".into()],
            cgroup_namespace: false,
            seccomp: Some(seccomp::Platform { arch: "amd64", kernel: (6, 1) }),
            rootless: false,
            process_sandbox: true,
        }
    }

    fn generated(exec: &ExecSpec, host: &HostFacts) -> serde_json::Value {
        generated_in(exec, host, Some(None))
    }

    fn generated_in(exec: &ExecSpec, host: &HostFacts, network: NetworkNamespace) -> serde_json::Value {
        let user = ExecUser { uid: 1000, gid: 1000, additional_gids: vec![1000, 10] };
        let inputs = Inputs {
            exec,
            user: &user,
            cwd: "/work",
            hosts_file: Path::new("/state/b/hosts"),
            resolv_conf: Path::new("/state/b/resolv.conf"),
            cgroups_path: "kiln-1",
            host,
            network,
        };
        serde_json::to_value(generate(&inputs)).unwrap()
    }

    fn exec() -> ExecSpec {
        ExecSpec::new("/rootfs", vec!["/bin/sh".into(), "-c".into(), "true".into()])
    }

    fn namespaces(spec: &serde_json::Value) -> Vec<&str> {
        spec["linux"]["namespaces"].as_array().unwrap().iter().map(|n| n["type"].as_str().unwrap()).collect()
    }

    fn destinations(spec: &serde_json::Value) -> Vec<String> {
        spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn a_sandboxed_step_looks_like_buildkits() {
        let spec = generated(&exec(), &facts());
        assert_eq!(spec["hostname"], "buildkitsandbox");
        assert_eq!(spec["process"]["user"]["additionalGids"], serde_json::json!([1000, 10]));
        assert_eq!(spec["process"]["cwd"], "/work");
        assert_eq!(spec["process"]["noNewPrivileges"], false);
        assert_eq!(spec["process"]["capabilities"]["bounding"].as_array().unwrap().len(), 14);
        assert!(spec["process"]["capabilities"].get("ambient").is_none());
        assert!(spec["process"].get("rlimits").is_none());
        assert_eq!(spec["linux"]["maskedPaths"].as_array().unwrap().len(), 11);
        assert_eq!(spec["linux"]["cgroupsPath"], "kiln-1");
        let ns = namespaces(&spec);
        assert_eq!(ns, ["pid", "ipc", "uts", "mount", "network"]);
        assert_eq!(
            destinations(&spec),
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/etc/resolv.conf",
                "/etc/hosts",
                "/sys/fs/cgroup"
            ]
        );
        assert_eq!(spec["mounts"][5]["options"][3], "ro");
        assert_eq!(spec["mounts"][6]["source"], "/state/b/resolv.conf");
        assert_eq!(spec["process"]["env"], serde_json::json!([format!("PATH={DEFAULT_PATH}")]));
        assert_eq!(spec["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(spec["linux"]["seccomp"]["syscalls"].as_array().unwrap().len(), 15);
    }

    #[test]
    fn an_insecure_step_is_privileged() {
        let mut e = exec();
        e.security = SecurityMode::Insecure;
        let spec = generated(&e, &facts());
        for set in ["bounding", "effective", "permitted", "inheritable", "ambient"] {
            assert_eq!(
                spec["process"]["capabilities"][set],
                serde_json::json!(["CAP_CHOWN", "CAP_SYS_ADMIN"])
            );
        }
        assert_eq!(spec["linux"]["maskedPaths"], serde_json::json!([]));
        assert_eq!(spec["linux"]["readonlyPaths"], serde_json::json!([]));
        assert_eq!(spec["mounts"][5]["options"][3], "rw");
        assert_eq!(spec["linux"]["resources"]["devices"][0]["allow"], true);
        assert_eq!(spec["linux"]["devices"].as_array().unwrap().len(), 14);
        assert!(spec["linux"].get("seccomp").is_none(), "an insecure step is not filtered");
    }

    #[test]
    fn host_network_shares_the_namespace_and_cgroup_ns_follows_the_host() {
        let host = HostFacts { cgroup_namespace: true, ..facts() };
        let spec = generated_in(&exec(), &host, None);
        let ns = namespaces(&spec);
        assert_eq!(ns, ["pid", "ipc", "uts", "mount", "cgroup"]);
    }

    #[test]
    fn rootless_steps_get_no_cgroup_and_bind_sys_when_sharing_kilnds_network() {
        let host = HostFacts { rootless: true, ..facts() };
        let sys = |spec: &serde_json::Value| {
            spec["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == "/sys").unwrap().clone()
        };
        let shared = generated_in(&exec(), &host, None);
        assert!(shared["linux"].get("resources").is_none());
        assert!(shared["linux"].get("cgroupsPath").is_none());
        assert_eq!(sys(&shared)["type"], "bind");
        assert_eq!(sys(&shared)["source"], "/sys");
        assert!(sys(&shared)["options"].as_array().unwrap().contains(&"ro".into()));
        // A namespace of the step's own is the user namespace's: sysfs mounts.
        let own = generated(&exec(), &host);
        assert_eq!(sys(&own)["type"], "sysfs");
        // With privileges, nothing changes.
        let rootful = generated_in(&exec(), &facts(), None);
        assert_eq!(rootful["linux"]["cgroupsPath"], "kiln-1");
        assert_eq!(sys(&rootful)["type"], "sysfs");
    }

    #[test]
    fn without_a_process_sandbox_steps_share_kilnds_processes_and_proc() {
        let host = HostFacts { process_sandbox: false, ..facts() };
        let spec = generated(&exec(), &host);
        let ns = namespaces(&spec);
        assert_eq!(ns, ["ipc", "uts", "mount", "network"]);
        assert_eq!(
            spec["mounts"][0],
            serde_json::json!({"destination": "/proc", "type": "bind", "source": "/proc", "options": ["rbind"]})
        );
        assert!(!spec["linux"]["maskedPaths"].as_array().unwrap().is_empty(), "masked paths still apply");
    }

    #[test]
    fn a_bridged_step_joins_the_namespace_it_was_given() {
        let spec = generated_in(&exec(), &facts(), Some(Some("/proc/42/fd/7".into())));
        assert_eq!(
            spec["linux"]["namespaces"][4],
            serde_json::json!({"type": "network", "path": "/proc/42/fd/7"})
        );
        let spec = generated(&exec(), &facts());
        assert_eq!(spec["linux"]["namespaces"][4], serde_json::json!({"type": "network"}));
    }

    #[test]
    fn env_keeps_a_given_path_and_appends_secrets() {
        let mut e = exec();
        e.env = vec!["PATH=/opt/bin".into(), "A=1".into()];
        e.secret_env = vec![("TOKEN".into(), "s3cret".into())];
        e.hostname = Some("builder".into());
        e.rlimits = vec![Rlimit { name: "nofile".into(), soft: 512, hard: 1024 }];
        let spec = generated(&e, &facts());
        assert_eq!(spec["process"]["env"], serde_json::json!(["PATH=/opt/bin", "A=1", "TOKEN=s3cret"]));
        assert_eq!(spec["hostname"], "builder");
        assert_eq!(
            spec["process"]["rlimits"],
            serde_json::json!([{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 512}])
        );
    }

    #[test]
    fn user_mounts_are_cleaned_and_replace_same_destination() {
        let mut e = exec();
        e.mounts = vec![
            ExecMount {
                dest: "cache/../data/".into(),
                kind: MountKind::Tmpfs { size: Some(1 << 20), readonly: false },
            },
            ExecMount {
                dest: "/etc/hosts".into(),
                kind: MountKind::Bind { source: "/my/hosts".into(), readonly: true },
            },
            ExecMount {
                dest: "/data".into(),
                kind: MountKind::Bind { source: "/snap".into(), readonly: false },
            },
            ExecMount { dest: "/frozen".into(), kind: MountKind::Tmpfs { size: Some(4096), readonly: true } },
            ExecMount { dest: "/scratch".into(), kind: MountKind::Tmpfs { size: None, readonly: false } },
        ];
        let spec = generated(&e, &facts());
        let mounts = spec["mounts"].as_array().unwrap();
        assert_eq!(mounts.len(), 12);
        assert_eq!(
            mounts[10],
            serde_json::json!({"destination": "/frozen", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "ro", "size=4096"]})
        );
        assert_eq!(mounts[11]["options"], serde_json::json!(["nosuid"]));
        assert_eq!(
            mounts[7],
            serde_json::json!({"destination": "/etc/hosts", "type": "bind", "source": "/my/hosts", "options": ["rbind", "ro"]})
        );
        assert_eq!(
            mounts[9],
            serde_json::json!({"destination": "/data", "type": "bind", "source": "/snap", "options": ["rbind"]})
        );
    }

    #[test]
    fn all_capabilities_are_the_ones_kilnd_holds() {
        let status = "Name:\tkilnd\nCapPrm:\t0000000000000003\nCapEff:\t0000000001000021\n";
        assert_eq!(
            effective_capabilities(status).unwrap(),
            ["CAP_CHOWN", "CAP_KILL", "CAP_SYS_RESOURCE"].map(String::from)
        );
        assert_eq!(effective_capabilities("Name:\tx\n"), None);
    }

    #[test]
    fn container_paths_are_absolute_and_clean() {
        assert_eq!(clean_container_path(""), "/");
        assert_eq!(clean_container_path("work"), "/work");
        assert_eq!(clean_container_path("/a/./b/../c/"), "/a/c");
        assert_eq!(clean_container_path("/../.."), "/");
    }
}
