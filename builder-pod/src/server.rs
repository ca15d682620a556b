//! The gRPC listeners: every `--addr`, TLS when configured, one shared set of services.

use std::path::Path;
use std::time::Duration;

use kiln_proto::buildkit::health::health_server::HealthServer;
use kiln_proto::buildkit::moby::buildkit::v1::control_server::ControlServer;
use kiln_proto::buildkit::moby::buildkit::v1::frontend::llb_bridge_server::LlbBridgeServer;
use tokio::net::{TcpListener, UnixListener};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::config::{ListenAddr, TlsFiles};
use crate::control::{ControlService, HealthService, LlbBridgeService};
use crate::session::MAX_MESSAGE_SIZE;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ServerError {
    #[error("listening on {addr}: {source}")]
    Bind { addr: ListenAddr, source: std::io::Error },
    #[error("reading TLS file {path}: {source}")]
    TlsFile { path: std::path::PathBuf, source: std::io::Error },
    #[error("configuring TLS: {0}")]
    Tls(#[source] tonic::transport::Error),
    #[error("serving gRPC on {addr}: {source}")]
    Serve { addr: ListenAddr, source: tonic::transport::Error },
}

/// A bound listener, not yet serving.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

pub(crate) async fn bind(addr: &ListenAddr) -> Result<Listener, ServerError> {
    let wrap = |source| ServerError::Bind { addr: addr.clone(), source };
    match addr {
        ListenAddr::Tcp(hostport) => {
            Ok(Listener::Tcp(TcpListener::bind(hostport.as_str()).await.map_err(wrap)?))
        }
        ListenAddr::Unix(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(wrap)?;
            }
            remove_stale_socket(path).map_err(wrap)?;
            Ok(Listener::Unix(UnixListener::bind(path).map_err(wrap)?))
        }
    }
}

/// A socket file left by a daemon that died is removed; anything else at that path is kept.
fn remove_stale_socket(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another daemon serves this socket",
                ));
            }
            std::fs::remove_file(path)
        }
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "a file that is not a socket is there",
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

pub(crate) fn tls_config(files: &TlsFiles) -> Result<ServerTlsConfig, ServerError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| ServerError::TlsFile { path: path.into(), source })
    };
    let mut cfg = ServerTlsConfig::new();
    if let (Some(cert), Some(key)) = (&files.cert, &files.key) {
        cfg = cfg.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    if let Some(ca) = &files.ca {
        cfg = cfg.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(cfg)
}

/// The services every listener serves.
#[derive(Debug, Clone)]
pub(crate) struct Services {
    pub control: ControlService,
    pub bridge: LlbBridgeService,
    pub health: HealthService,
    pub tls: Option<ServerTlsConfig>,
}

/// Serves until `shutdown` fires, then lets in-flight calls finish.
pub(crate) async fn serve(
    addr: ListenAddr,
    listener: Listener,
    services: Services,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    // The client's uploads (context, files) arrive on its Session stream: a
    // receive window the size of tonic's default would cap them far below
    // what loopback and the fsutil stream can carry.
    let mut builder = Server::builder()
        .initial_stream_window_size(crate::session::STREAM_WINDOW)
        .initial_connection_window_size(crate::session::CONNECTION_WINDOW)
        .max_frame_size(crate::session::MAX_FRAME)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    if let Some(tls) = services.tls {
        builder = builder.tls_config(tls).map_err(ServerError::Tls)?;
    }
    let router = builder
        .add_service(
            ControlServer::new(services.control)
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
        )
        .add_service(
            LlbBridgeServer::new(services.bridge)
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
        )
        .add_service(HealthServer::new(services.health));
    let signal = shutdown.cancelled_owned();
    let result = match listener {
        Listener::Tcp(l) => {
            // Session traffic is many small writes both ways (HTTP/2 inside
            // gRPC); Nagle's algorithm would hold each one for a delayed ACK.
            let incoming = TcpListenerStream::new(l).map(|conn| {
                conn.inspect(|c| {
                    let _ = c.set_nodelay(true);
                })
            });
            router.serve_with_incoming_shutdown(incoming, signal).await
        }
        Listener::Unix(l) => router.serve_with_incoming_shutdown(UnixListenerStream::new(l), signal).await,
    };
    if let ListenAddr::Unix(path) = &addr {
        let _ = std::fs::remove_file(path);
    }
    result.map_err(|source| ServerError::Serve { addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_socket_is_not_taken_over_and_a_stale_one_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.sock");
        let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert_eq!(remove_stale_socket(&path).unwrap_err().kind(), std::io::ErrorKind::AddrInUse);
        drop(live);
        remove_stale_socket(&path).unwrap();
        assert!(!path.exists());

        std::fs::write(&path, "not a socket").unwrap();
        assert!(remove_stale_socket(&path).is_err());
        assert!(path.exists());
    }
}
