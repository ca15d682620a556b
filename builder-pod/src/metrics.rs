//! kilnd's Prometheus metrics, served on `--debugaddr` at `/metrics`.

use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    rpcs: IntCounterVec,
    local_files: IntCounterVec,
    local_bytes: IntCounterVec,
}

impl Metrics {
    pub(crate) fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let rpcs = IntCounterVec::new(
            Opts::new("kilnd_grpc_requests_total", "gRPC calls received, by service and method"),
            &["service", "method"],
        )?;
        registry.register(Box::new(rpcs.clone()))?;
        let local_files = IntCounterVec::new(
            Opts::new(
                "kilnd_local_files_transferred_total",
                "files received from clients' local directories, by local name (unchanged files are not sent)",
            ),
            &["local"],
        )?;
        registry.register(Box::new(local_files.clone()))?;
        let local_bytes = IntCounterVec::new(
            Opts::new(
                "kilnd_local_bytes_transferred_total",
                "bytes received from clients' local directories",
            ),
            &["local"],
        )?;
        registry.register(Box::new(local_bytes.clone()))?;
        let info = IntGaugeVec::new(Opts::new("kilnd_build_info", "kilnd's version"), &["version"])?;
        registry.register(Box::new(info.clone()))?;
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        Ok(Self { registry, rpcs, local_files, local_bytes })
    }

    /// Counts one call of `service`/`method`.
    pub(crate) fn rpc(&self, service: &str, method: &str) {
        self.rpcs.with_label_values(&[service, method]).inc();
    }

    /// Counts a local directory transfer.
    pub(crate) fn local_transfer(&self, local: &str, files: u64, bytes: u64) {
        self.local_files.with_label_values(&[local]).inc_by(files);
        self.local_bytes.with_label_values(&[local]).inc_by(bytes);
    }

    /// The text exposition format.
    pub(crate) fn encode(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_counted_by_method() {
        let m = Metrics::new().unwrap();
        m.rpc("Control", "Info");
        m.rpc("Control", "Info");
        let text = m.encode();
        assert!(text.contains(r#"kilnd_grpc_requests_total{method="Info",service="Control"} 2"#), "{text}");
        assert!(text.contains("kilnd_build_info{version="), "{text}");
    }
}
