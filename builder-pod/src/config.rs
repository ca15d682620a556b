//! kilnd's configuration: command-line flags shaped like buildkitd's, over a
//! TOML file shaped like `buildkitd.toml`, over defaults.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use crate::source::image::HostConfig;

/// Where kilnd keeps its state when neither `--root` nor the file says.
pub const DEFAULT_ROOT: &str = "/var/lib/kilnd";
/// The socket kilnd listens on when neither `--addr` nor the file names one.
pub const DEFAULT_SOCKET: &str = "/run/kilnd/kilnd.sock";
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
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("TLS needs both a certificate and a key (got only one of them)")]
    TlsIncomplete,
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
            (true, true) => vec![ListenAddr::Unix(DEFAULT_SOCKET.into())],
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
        Ok(Self {
            addrs,
            root: args.root.or(file.root).unwrap_or_else(|| DEFAULT_ROOT.into()),
            debug_addr: args.debugaddr.or(file.debug_address),
            tls,
            oci_binary: args.oci_worker_binary.or(file.worker.oci.binary).unwrap_or_else(|| "runc".into()),
            worker_labels: file.worker.oci.labels,
            shutdown_grace: Duration::from_secs(args.shutdown_grace),
            debug: args.debug || file.debug.unwrap_or(false),
            registries: file.registry,
        })
    }
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
}
