//! kilnd's configuration: command-line flags shaped like buildkitd's, over a
//! TOML file shaped like `buildkitd.toml`, over defaults.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use crate::executor::network::{self, DefaultNetwork, Egress, NetworkConfig};
use crate::solver::entitlements::Entitlements;
use crate::source::image::HostConfig;

/// Where kilnd keeps its state when neither `--root` nor the file says.
pub const DEFAULT_ROOT: &str = "/var/lib/kilnd";
/// The socket kilnd listens on when neither `--addr` nor the file names one.
pub const DEFAULT_SOCKET: &str = "/run/kilnd/kilnd.sock";

/// The socket kilnd listens on when no address is given: `DEFAULT_SOCKET`,
/// or, rootless, `kilnd.sock` below the user's run base.
fn default_socket() -> PathBuf {
    if crate::rootless::in_user_namespace() {
        crate::rootless::run_base().join("kilnd.sock")
    } else {
        DEFAULT_SOCKET.into()
    }
}
/// The configuration file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG: &str = "/etc/kilnd/kilnd.toml";

/// A BuildKit-compatible build daemon: point `docker buildx` (remote driver)
/// or `buildctl` at one of its addresses.
#[derive(Debug, Parser)]
#[command(name = "kilnd", version, about, long_about = None)]
pub struct Args {
    /// Address to serve the BuildKit API on: tcp://HOST:PORT or unix:///PATH.
    /// Repeat for several. [default: unix:///run/kilnd/kilnd.sock]
    #[arg(long = "addr", value_name = "ADDR", env = "KILND_ADDR", value_delimiter = ',')]
    pub addr: Vec<ListenAddr>,

    /// Directory for all of kilnd's state (cache, snapshots, metadata).
    /// [default: /var/lib/kilnd]
    #[arg(long, value_name = "DIR", env = "KILND_ROOT")]
    pub root: Option<PathBuf>,

    /// TOML configuration file (buildkitd.toml-shaped; flags override it).
    /// [default: /etc/kilnd/kilnd.toml if it exists]
    #[arg(long, value_name = "FILE", env = "KILND_CONFIG")]
    pub config: Option<PathBuf>,

    /// Serve /metrics (Prometheus), /healthz and /readyz over HTTP on HOST:PORT.
    #[arg(long, value_name = "HOST:PORT", env = "KILND_DEBUGADDR")]
    pub debugaddr: Option<String>,

    /// CA certificate: clients must present a certificate it signed (mTLS).
    #[arg(long, value_name = "FILE", requires = "tlscert")]
    pub tlscacert: Option<PathBuf>,

    /// Server certificate (PEM); serving TLS needs --tlskey too.
    #[arg(long, value_name = "FILE", requires = "tlskey")]
    pub tlscert: Option<PathBuf>,

    /// Server private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tlscert")]
    pub tlskey: Option<PathBuf>,

    /// OCI runtime binary that runs build steps (name in PATH, or a path).
    /// [default: runc]
    #[arg(long, value_name = "PATH", env = "KILND_OCI_WORKER_BINARY")]
    pub oci_worker_binary: Option<String>,

    /// The network RUN steps get by default: `auto` or `bridge` (a namespace
    /// of their own on kilnd's bridge, egress through NAT), or `host` (kilnd's
    /// own). [default: auto]
    #[arg(long, value_name = "MODE", env = "KILND_OCI_WORKER_NET")]
    pub oci_worker_net: Option<String>,

    /// Run RUN steps without the default seccomp profile (for hosts whose
    /// runtime cannot apply one). Insecure steps never have one.
    #[arg(long, env = "KILND_OCI_WORKER_NO_SECCOMP")]
    pub oci_worker_no_seccomp: bool,

    /// Run RUN steps in kilnd's own process namespace, with kilnd's `/proc`
    /// bound in, instead of a namespace and a fresh procfs of their own: for
    /// rootless kilnd in a container whose `/proc` is masked (an
    /// unprivileged pod), where no procfs can be mounted. Steps then see
    /// kilnd's processes (docs/rootless.md).
    #[arg(long, env = "KILND_OCI_WORKER_NO_PROCESS_SANDBOX")]
    pub oci_worker_no_process_sandbox: bool,

    /// Let builds that ask for it have this entitlement (`network.host`,
    /// `security.insecure`); repeat for both. A build still has to ask
    /// (`buildx build --allow ...`). [default: none]
    #[arg(long, value_name = "ENTITLEMENT", env = "KILND_ALLOW_INSECURE_ENTITLEMENT", value_delimiter = ',')]
    pub allow_insecure_entitlement: Vec<String>,

    /// How long running builds may go on after SIGTERM before they are cancelled.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub shutdown_grace: u64,

    /// Log at debug level (RUST_LOG overrides).
    #[arg(long, env = "KILND_DEBUG")]
    pub debug: bool,
}

/// A listening address: `tcp://HOST:PORT` or `unix:///PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(String),
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(hostport) = s.strip_prefix("tcp://") {
            let ok = hostport.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok() && !port.is_empty()
            });
            if !ok {
                return Err(format!("{s:?}: a tcp address needs HOST:PORT, e.g. tcp://127.0.0.1:1234"));
            }
            Ok(Self::Tcp(hostport.to_owned()))
        } else if let Some(path) = s.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(format!("{s:?}: a unix address needs a path, e.g. unix:///run/kilnd/kilnd.sock"));
            }
            Ok(Self::Unix(PathBuf::from(path)))
        } else {
            Err(format!("{s:?}: expected tcp://HOST:PORT or unix:///PATH"))
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(hostport) => write!(f, "tcp://{hostport}"),
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// The TOML file. Keys follow buildkitd.toml where kilnd has the same notion.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileConfig {
    pub root: Option<PathBuf>,
    pub debug: Option<bool>,
    pub debug_address: Option<String>,
    #[serde(default)]
    pub grpc: GrpcConfig,
    #[serde(default)]
    pub worker: WorkerSection,
    /// `[registry."host:port"] http = true` for registries without TLS.
    #[serde(default)]
    pub registry: BTreeMap<String, HostConfig>,
    /// What builds may be granted beyond the sandbox (the flag replaces it).
    #[serde(default, rename = "insecure-entitlements")]
    pub insecure_entitlements: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcConfig {
    #[serde(default)]
    pub address: Vec<ListenAddr>,
    #[serde(default)]
    pub tls: TlsFiles,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSection {
    #[serde(default)]
    pub oci: OciWorkerConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OciWorkerConfig {
    pub binary: Option<String>,
    /// Extra labels reported by ListWorkers.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Automatic garbage collection; on unless `false`, as in buildkitd.
    pub gc: Option<bool>,
    /// buildkitd's older single limit: collect down to this size.
    pub gckeepstorage: Option<SizeValue>,
    /// The collection rules, applied in order.
    #[serde(default)]
    pub gcpolicy: Vec<GcPolicyConfig>,
    /// `auto`, `bridge` or `host` (buildkitd's `cni` is refused).
    #[serde(rename = "networkMode")]
    pub network_mode: Option<String>,
    #[serde(rename = "bridgeName")]
    pub bridge_name: Option<String>,
    #[serde(rename = "bridgeSubnet")]
    pub bridge_subnet: Option<String>,
    /// Network namespaces kept ready.
    #[serde(rename = "cniPoolSize")]
    pub cni_pool_size: Option<usize>,
    /// buildkitd's CNI files; kilnd sets its bridge up itself and says so.
    #[serde(rename = "cniConfigPath")]
    pub cni_config_path: Option<PathBuf>,
    #[serde(rename = "cniBinaryPath")]
    pub cni_binary_path: Option<PathBuf>,
    /// kilnd's own: the networks steps on the bridge may reach (CIDRs); all
    /// when unset, none when empty.
    #[serde(rename = "egressAllow")]
    pub egress_allow: Option<Vec<String>>,
    /// kilnd's own: `false` runs sandboxed steps without the default seccomp
    /// profile.
    pub seccomp: Option<bool>,
    /// buildkitd's `noProcessSandbox`: steps share kilnd's process namespace.
    #[serde(rename = "noProcessSandbox")]
    pub no_process_sandbox: Option<bool>,
}

/// `[[worker.oci.gcpolicy]]`, buildkitd.toml's keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GcPolicyConfig {
    #[serde(default)]
    pub all: bool,
    #[serde(default)]
    pub filters: Vec<String>,
    pub keep_duration: Option<DurationValue>,
    /// buildkitd before v0.17: collect down to this size.
    pub keep_bytes: Option<SizeValue>,
    pub reserved_space: Option<SizeValue>,
    pub max_used_space: Option<SizeValue>,
    pub min_free_space: Option<SizeValue>,
}

/// A size as buildkitd.toml writes it: bytes, or text such as `10GB`, `512MiB`
/// or `40Gi` (every unit counts in powers of 1024, as buildkitd's does).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum SizeValue {
    Bytes(u64),
    Text(String),
}

impl SizeValue {
    fn bytes(&self) -> Result<u64, String> {
        let text = match self {
            Self::Bytes(b) => return Ok(*b),
            Self::Text(t) => t.trim(),
        };
        let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: f64 =
            number.parse().map_err(|_| format!("{text:?} is not a size like 10GB or 512MiB"))?;
        let power = match unit.trim().to_ascii_lowercase().trim_end_matches('b').trim_end_matches('i') {
            "" => 0,
            "k" => 1,
            "m" => 2,
            "g" => 3,
            "t" => 4,
            "p" => 5,
            _ => {
                return Err(format!(
                    "{text:?}: unknown unit {unit:?} (use B, KB, MB, GB, TB, KiB … or Ki …)"
                ));
            }
        };
        Ok((number * 1024f64.powi(power)) as u64)
    }
}

/// A duration as buildkitd.toml writes it: seconds, or text such as `48h`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum DurationValue {
    Seconds(u64),
    Text(String),
}

impl DurationValue {
    fn duration(&self) -> Result<Duration, String> {
        match self {
            Self::Seconds(s) => Ok(Duration::from_secs(*s)),
            Self::Text(t) => {
                humantime::parse_duration(t).map_err(|e| format!("{t:?} is not a duration like 48h: {e}"))
            }
        }
    }
}

impl OciWorkerConfig {
    /// The policies kilnd collects by: the file's, else buildkitd's defaults
    /// (two months of age, then 60% of the filesystem); none when `gc = false`.
    fn gc_policies(&self, disk_bytes: u64) -> Result<Vec<crate::gc::Policy>, String> {
        if self.gc == Some(false) {
            return Ok(Vec::new());
        }
        let mut policies = Vec::new();
        for (i, p) in self.gcpolicy.iter().enumerate() {
            let at = |e: String| format!("worker.oci.gcpolicy[{i}]: {e}");
            if !p.filters.is_empty() {
                return Err(at("filters are not supported by kilnd yet; leave them out".into()));
            }
            let size = |v: &Option<SizeValue>| v.as_ref().map(SizeValue::bytes).transpose().map_err(at);
            policies.push(crate::gc::Policy {
                keep_duration: p
                    .keep_duration
                    .as_ref()
                    .map(DurationValue::duration)
                    .transpose()
                    .map_err(at)?,
                max_used_space: size(&p.max_used_space)?.or(size(&p.keep_bytes)?),
                reserved_space: size(&p.reserved_space)?,
                min_free_space: size(&p.min_free_space)?,
                all: p.all,
            });
        }
        if let Some(keep) = &self.gckeepstorage {
            let bytes = keep.bytes().map_err(|e| format!("worker.oci.gckeepstorage: {e}"))?;
            policies.push(crate::gc::Policy { max_used_space: Some(bytes), ..crate::gc::Policy::default() });
        }
        if policies.is_empty() {
            policies = vec![
                crate::gc::Policy {
                    keep_duration: Some(Duration::from_secs(60 * 24 * 3600)),
                    ..Default::default()
                },
                crate::gc::Policy { max_used_space: Some(disk_bytes / 10 * 6), ..Default::default() },
            ];
        }
        Ok(policies)
    }
}

impl OciWorkerConfig {
    /// The step network the flags and this section ask for; `warnings`
    /// collects settings kilnd accepts but does not act on.
    fn network(
        &self,
        flag_mode: Option<&str>,
        protected_ports: Vec<u16>,
        warnings: &mut Vec<String>,
    ) -> Result<NetworkConfig, String> {
        let default = match flag_mode.or(self.network_mode.as_deref()).unwrap_or("auto") {
            // Rootless, kilnd may not make a bridge in a network namespace
            // its user namespace does not own (RootlessKit's `--net=host`):
            // `auto` is kilnd's own network there, as in rootless BuildKit.
            "auto" if crate::rootless::in_user_namespace() => DefaultNetwork::Host,
            "auto" | "bridge" => DefaultNetwork::Bridge,
            "host" => DefaultNetwork::Host,
            "cni" => {
                return Err("networkMode \"cni\" is not supported: kilnd sets up its own bridge for RUN \
                            steps (networkMode = \"bridge\", with bridgeName and bridgeSubnet), or gives \
                            them its own network (networkMode = \"host\")"
                    .into());
            }
            other => {
                return Err(format!("networkMode {other:?} is not one of auto, bridge, host"));
            }
        };
        for (key, set) in [("cniConfigPath", &self.cni_config_path), ("cniBinaryPath", &self.cni_binary_path)]
        {
            if let Some(path) = set {
                warnings.push(format!(
                    "[worker.oci] {key} = {:?} is ignored: kilnd sets up its own bridge for RUN steps \
                     without CNI plugins",
                    path.display()
                ));
            }
        }
        if let Some(name) = &self.bridge_name {
            let valid = !name.is_empty()
                && name.len() <= 15
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid {
                return Err(format!(
                    "bridgeName {name:?} is not a network interface name (1 to 15 letters, digits, - or _)"
                ));
            }
        }
        let cidr = |key: &str, text: &str| {
            text.parse::<ipnet::Ipv4Net>()
                .map(|net| net.trunc())
                .map_err(|_| format!("{key} {text:?} is not an IPv4 network like 10.214.0.0/24"))
        };
        let bridge_subnet = self.bridge_subnet.as_deref().map(|s| cidr("bridgeSubnet", s)).transpose()?;
        let egress = match &self.egress_allow {
            None => Egress::Any,
            Some(list) => {
                Egress::Only(list.iter().map(|s| cidr("egressAllow", s)).collect::<Result<_, _>>()?)
            }
        };
        Ok(NetworkConfig {
            default,
            bridge_name: self.bridge_name.clone(),
            bridge_subnet,
            pool_size: self.cni_pool_size.unwrap_or(network::DEFAULT_POOL_SIZE),
            egress,
            protected_ports,
        })
    }
}

/// The TCP ports kilnd serves on: steps may not connect to them.
fn own_ports(addrs: &[ListenAddr], debug_addr: Option<&str>) -> Vec<u16> {
    let tcp = addrs.iter().filter_map(|a| match a {
        ListenAddr::Tcp(hostport) => Some(hostport.as_str()),
        ListenAddr::Unix(_) => None,
    });
    let mut ports: Vec<u16> = tcp
        .chain(debug_addr)
        .filter_map(|hostport| hostport.rsplit_once(':').and_then(|(_, port)| port.parse().ok()))
        .filter(|port| *port != 0)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The effective configuration after flags, file and defaults are merged.
#[derive(Debug)]
pub struct Config {
    pub addrs: Vec<ListenAddr>,
    pub root: PathBuf,
    pub debug_addr: Option<String>,
    pub tls: Option<TlsFiles>,
    pub oci_binary: String,
    pub worker_labels: BTreeMap<String, String>,
    pub shutdown_grace: Duration,
    pub debug: bool,
    pub registries: BTreeMap<String, HostConfig>,
    /// Automatic collection rules; empty when it is off.
    pub gc: Vec<crate::gc::Policy>,
    /// The network RUN steps get.
    pub network: NetworkConfig,
    /// What builds may be granted beyond the sandbox.
    pub entitlements: Entitlements,
    /// Sandboxed steps get the default seccomp profile.
    pub seccomp: bool,
    /// Steps share kilnd's process namespace and `/proc`.
    pub process_sandbox: bool,
    /// Settings accepted but not acted on, to log once logging is up.
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("TLS needs both a certificate and a key (got only one of them)")]
    TlsIncomplete,
    #[error("garbage collection settings: {0}")]
    Gc(String),
    #[error("step network settings: {0}")]
    Network(String),
    #[error("allowed entitlements: {0}")]
    Entitlements(#[from] crate::solver::entitlements::EntitlementError),
}

impl Config {
    /// Merges the flags over the file (`--config`, or the default path when it
    /// exists) over the defaults.
    pub fn load(args: Args) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None if Path::new(DEFAULT_CONFIG).exists() => read_file(Path::new(DEFAULT_CONFIG))?,
            None => FileConfig::default(),
        };
        Self::merge(args, file)
    }

    fn merge(args: Args, file: FileConfig) -> Result<Self, ConfigError> {
        let addrs = match (args.addr.is_empty(), file.grpc.address.is_empty()) {
            (false, _) => args.addr,
            (true, false) => file.grpc.address,
            (true, true) => vec![ListenAddr::Unix(default_socket())],
        };
        let tls = TlsFiles {
            cert: args.tlscert.or(file.grpc.tls.cert),
            key: args.tlskey.or(file.grpc.tls.key),
            ca: args.tlscacert.or(file.grpc.tls.ca),
        };
        let tls = match (&tls.cert, &tls.key) {
            (None, None) => None,
            (Some(_), Some(_)) => Some(tls),
            _ => return Err(ConfigError::TlsIncomplete),
        };
        let root: PathBuf = args.root.or(file.root).unwrap_or_else(|| DEFAULT_ROOT.into());
        let disk = disk_size(&root);
        let gc = file.worker.oci.gc_policies(disk).map_err(ConfigError::Gc)?;
        let debug_addr = args.debugaddr.or(file.debug_address);
        let mut warnings = Vec::new();
        let network = file
            .worker
            .oci
            .network(args.oci_worker_net.as_deref(), own_ports(&addrs, debug_addr.as_deref()), &mut warnings)
            .map_err(ConfigError::Network)?;
        let entitlements = if args.allow_insecure_entitlement.is_empty() {
            Entitlements::parse(&file.insecure_entitlements)?
        } else {
            Entitlements::parse(&args.allow_insecure_entitlement)?
        };
        Ok(Self {
            addrs,
            root,
            debug_addr,
            tls,
            oci_binary: args.oci_worker_binary.or(file.worker.oci.binary).unwrap_or_else(|| "runc".into()),
            worker_labels: file.worker.oci.labels,
            shutdown_grace: Duration::from_secs(args.shutdown_grace),
            debug: args.debug || file.debug.unwrap_or(false),
            registries: file.registry,
            gc,
            network,
            entitlements,
            seccomp: !args.oci_worker_no_seccomp && file.worker.oci.seccomp.unwrap_or(true),
            process_sandbox: !args.oci_worker_no_process_sandbox
                && !file.worker.oci.no_process_sandbox.unwrap_or(false),
            warnings,
        })
    }
}

/// The size of the filesystem that holds `path` (or its nearest existing
/// parent); 0 when it cannot be read.
fn disk_size(path: &Path) -> u64 {
    path.ancestors()
        .find_map(|p| nix::sys::statvfs::statvfs(p).ok())
        .map_or(0, |st| st.blocks().saturating_mul(st.fragment_size()))
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.into(), source: Box::new(source) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(argv: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("kilnd").chain(argv.iter().copied())).unwrap()
    }

    #[test]
    fn clap_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn addresses_parse_and_print_back() {
        for s in ["tcp://127.0.0.1:1234", "tcp://localhost:80", "tcp://[::1]:9", "unix:///run/k.sock"] {
            assert_eq!(s.parse::<ListenAddr>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn bad_addresses_say_what_is_expected() {
        let err = "127.0.0.1:1234".parse::<ListenAddr>().unwrap_err();
        assert!(err.contains("expected tcp://HOST:PORT or unix:///PATH"), "{err}");
        let err = "tcp://127.0.0.1".parse::<ListenAddr>().unwrap_err();
        assert!(err.contains("needs HOST:PORT"), "{err}");
        let err = "tcp://127.0.0.1:99999".parse::<ListenAddr>().unwrap_err();
        assert!(err.contains("needs HOST:PORT"), "{err}");
        assert!(Args::try_parse_from(["kilnd", "--addr", "http://x:1"]).is_err());
    }

    #[test]
    fn addr_is_repeatable() {
        let args = parse(&["--addr", "tcp://127.0.0.1:1", "--addr", "unix:///tmp/k.sock"]);
        assert_eq!(args.addr.len(), 2);
    }

    #[test]
    fn flags_override_the_file_and_the_file_overrides_defaults() {
        let file: FileConfig = toml::from_str(
            r#"
            root = "/from/file"
            debugAddress = "127.0.0.1:6060"
            [grpc]
            address = ["tcp://127.0.0.1:7000"]
            [worker.oci]
            binary = "crun"
            labels = { team = "a" }
            [registry."127.0.0.1:5000"]
            http = true
            "#,
        )
        .unwrap();
        let cfg = Config::merge(parse(&["--root", "/from/flag"]), file).unwrap();
        assert_eq!(cfg.root, PathBuf::from("/from/flag"));
        assert_eq!(cfg.addrs, vec![ListenAddr::Tcp("127.0.0.1:7000".into())]);
        assert_eq!(cfg.debug_addr.as_deref(), Some("127.0.0.1:6060"));
        assert_eq!(cfg.oci_binary, "crun");
        assert_eq!(cfg.worker_labels.get("team").map(String::as_str), Some("a"));
        assert!(cfg.registries["127.0.0.1:5000"].http);

        let cfg = Config::merge(parse(&[]), FileConfig::default()).unwrap();
        assert_eq!(cfg.root, PathBuf::from(DEFAULT_ROOT));
        assert_eq!(cfg.addrs, vec![ListenAddr::Unix("/run/kilnd/kilnd.sock".into())]);
        assert_eq!(cfg.oci_binary, "runc");
        assert!(cfg.tls.is_none());
    }

    #[test]
    fn unknown_keys_in_the_file_are_named() {
        let err = toml::from_str::<FileConfig>("rooot = \"/x\"").unwrap_err().to_string();
        assert!(err.contains("rooot"), "{err}");
    }

    #[test]
    fn tls_needs_cert_and_key() {
        let file = FileConfig {
            grpc: GrpcConfig {
                tls: TlsFiles { cert: Some("c.pem".into()), ..TlsFiles::default() },
                ..Default::default()
            },
            ..FileConfig::default()
        };
        assert!(matches!(Config::merge(parse(&[]), file), Err(ConfigError::TlsIncomplete)));
        assert!(Args::try_parse_from(["kilnd", "--tlscert", "c.pem"]).is_err());
    }

    fn gc_of(toml_text: &str) -> Result<Vec<crate::gc::Policy>, ConfigError> {
        let file: FileConfig = toml::from_str(toml_text).unwrap();
        Config::merge(parse(&["--root", "/tmp"]), file).map(|c| c.gc)
    }

    #[test]
    fn gc_policies_read_buildkitd_keys_and_the_operators_output() {
        let policies = gc_of(
            "[worker.oci]\ngc = true\n[[worker.oci.gcpolicy]]\nkeepDuration = \"168h\"\nmaxUsedSpace = \"40Gi\"\n\
             [[worker.oci.gcpolicy]]\nall = true\nkeepBytes = \"10GB\"\nreservedSpace = 1024\n",
        )
        .unwrap();
        assert_eq!(
            policies,
            [
                crate::gc::Policy {
                    keep_duration: Some(Duration::from_secs(168 * 3600)),
                    max_used_space: Some(40 << 30),
                    ..crate::gc::Policy::default()
                },
                crate::gc::Policy {
                    max_used_space: Some(10 << 30),
                    reserved_space: Some(1024),
                    all: true,
                    ..crate::gc::Policy::default()
                },
            ]
        );
    }

    fn network_of(argv: &[&str], toml_text: &str) -> Result<Config, ConfigError> {
        Config::merge(parse(argv), toml::from_str(toml_text).unwrap())
    }

    #[test]
    fn steps_get_a_bridge_by_default_and_kilnds_ports_are_guarded() {
        let cfg = network_of(&["--addr", "tcp://0.0.0.0:1234", "--debugaddr", "0.0.0.0:6060"], "").unwrap();
        assert_eq!(
            cfg.network,
            NetworkConfig {
                default: DefaultNetwork::Bridge,
                pool_size: network::DEFAULT_POOL_SIZE,
                protected_ports: vec![1234, 6060],
                ..NetworkConfig::default()
            }
        );
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    }

    #[test]
    fn network_settings_read_buildkitd_keys() {
        let cfg = network_of(
            &[],
            "[worker.oci]\nnetworkMode = \"bridge\"\nbridgeName = \"kb0\"\nbridgeSubnet = \"10.9.8.7/24\"\n\
             cniPoolSize = 2\negressAllow = [\"192.0.2.0/24\"]\ncniConfigPath = \"/etc/buildkit/cni.json\"\n",
        )
        .unwrap();
        assert_eq!(cfg.network.bridge_name.as_deref(), Some("kb0"));
        assert_eq!(cfg.network.bridge_subnet, Some("10.9.8.0/24".parse().unwrap()));
        assert_eq!(cfg.network.pool_size, 2);
        assert_eq!(cfg.network.egress, Egress::Only(vec!["192.0.2.0/24".parse().unwrap()]));
        assert_eq!(cfg.warnings.len(), 1);
        assert!(cfg.warnings[0].contains("cniConfigPath") && cfg.warnings[0].contains("ignored"));

        let cfg =
            network_of(&["--oci-worker-net", "host"], "[worker.oci]\nnetworkMode = \"bridge\"\n").unwrap();
        assert_eq!(cfg.network.default, DefaultNetwork::Host, "the flag wins");
    }

    #[test]
    fn bad_network_settings_say_what_is_wrong() {
        for (toml_text, expected) in [
            ("[worker.oci]\nnetworkMode = \"cni\"\n", "not supported"),
            ("[worker.oci]\nnetworkMode = \"bridged\"\n", "not one of auto, bridge, host"),
            ("[worker.oci]\nbridgeName = \"a-name-far-too-long\"\n", "not a network interface name"),
            ("[worker.oci]\nbridgeSubnet = \"10.0.0.0\"\n", "bridgeSubnet \"10.0.0.0\""),
            ("[worker.oci]\negressAllow = [\"everything\"]\n", "egressAllow \"everything\""),
        ] {
            let err = network_of(&[], toml_text).unwrap_err().to_string();
            assert!(err.starts_with("step network settings: ") && err.contains(expected), "{err}");
        }
    }

    #[test]
    fn no_entitlement_is_allowed_unless_the_flag_or_the_file_says_so() {
        let none = network_of(&[], "").unwrap();
        assert_eq!(none.entitlements, Entitlements::default());
        assert!(none.seccomp, "seccomp is on by default");
        assert!(!network_of(&["--oci-worker-no-seccomp"], "").unwrap().seccomp);
        assert!(!network_of(&[], "[worker.oci]\nseccomp = false\n").unwrap().seccomp);
        let file = network_of(&[], "insecure-entitlements = [\"network.host\"]\n").unwrap();
        assert_eq!(file.entitlements, Entitlements::parse(&["network.host"]).unwrap());
        let flag = network_of(
            &[
                "--allow-insecure-entitlement",
                "security.insecure",
                "--allow-insecure-entitlement",
                "network.host",
            ],
            "insecure-entitlements = [\"network.host\"]\n",
        )
        .unwrap();
        assert_eq!(flag.entitlements, Entitlements::parse(&["network.host", "security.insecure"]).unwrap());
        let err = network_of(&["--allow-insecure-entitlement", "everything"], "").unwrap_err().to_string();
        assert!(err.starts_with("allowed entitlements: unknown entitlement everything"), "{err}");
    }

    #[test]
    fn gc_is_on_by_default_and_off_when_asked() {
        let defaults = gc_of("").unwrap();
        assert_eq!(defaults.len(), 2, "{defaults:?}");
        assert!(defaults[1].max_used_space.is_some_and(|b| b > 0), "60% of the disk: {defaults:?}");
        assert!(gc_of("[worker.oci]\ngc = false\n").unwrap().is_empty());
    }

    #[test]
    fn bad_gc_settings_name_the_policy_and_the_value() {
        let e = gc_of("[[worker.oci.gcpolicy]]\nmaxUsedSpace = \"lots\"\n").unwrap_err().to_string();
        assert!(e.contains("gcpolicy[0]") && e.contains("lots"), "{e}");
        let e =
            gc_of("[[worker.oci.gcpolicy]]\nfilters = [\"type==source.local\"]\n").unwrap_err().to_string();
        assert!(e.contains("filters are not supported"), "{e}");
    }
}
