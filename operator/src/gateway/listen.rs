//! Where the gateway listens and how it reaches builders: `tcp://HOST:PORT`
//! or `unix:///PATH`. A unix socket is how a pool on one machine stays its
//! owner's: the file's mode and group say who may connect (`kiln up` makes
//! it root's alone by default, as buildkitd's socket is).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use super::Error;

/// A parsed address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    /// `HOST:PORT`.
    Tcp(String),
    Unix(PathBuf),
}

impl Addr {
    pub fn parse(addr: &str) -> Result<Self, Error> {
        if let Some(hp) = addr.strip_prefix("tcp://").filter(|hp| hp.contains(':')) {
            return Ok(Self::Tcp(hp.to_owned()));
        }
        if let Some(path) = addr.strip_prefix("unix://").filter(|p| p.starts_with('/')) {
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        Err(Error::BadAddr(addr.to_owned()))
    }
}

/// Who may connect to a unix socket the gateway listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SocketAccess {
    /// The socket's group, which may connect too (mode 0660); `None`: the
    /// owner only (0600).
    pub group: Option<u32>,
}

/// A bound listener.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// One accepted or opened connection, whatever its transport.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Listener {
    /// Binds `addr`. A unix socket left by a gateway that died is replaced;
    /// the new one gets the mode and group of `access`.
    pub async fn bind(addr: &str, access: SocketAccess) -> Result<Self, Error> {
        let failed = |source| Error::Listen { addr: addr.to_owned(), source };
        match Addr::parse(addr)? {
            Addr::Tcp(hp) => Ok(Self::Tcp(TcpListener::bind(hp).await.map_err(failed)?)),
            Addr::Unix(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(failed)?;
                }
                remove_stale(&path).map_err(failed)?;
                let listener = UnixListener::bind(&path).map_err(failed)?;
                restrict(&path, access).map_err(failed)?;
                Ok(Self::Unix(listener))
            }
        }
    }

    pub async fn accept(&self) -> std::io::Result<(Stream, String)> {
        match self {
            Self::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok((Stream::Tcp(s), peer.to_string()))
            }
            Self::Unix(l) => {
                let (s, _) = l.accept().await?;
                let peer =
                    s.peer_cred().map(|c| format!("uid {}", c.uid())).unwrap_or_else(|_| "unix".into());
                Ok((Stream::Unix(s), peer))
            }
        }
    }
}

impl Stream {
    /// Opens a connection to `addr` (a builder's).
    pub async fn connect(addr: &str) -> Result<Self, std::io::Error> {
        match Addr::parse(addr)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?
        {
            Addr::Tcp(hp) => {
                let s = TcpStream::connect(hp).await?;
                // Session traffic is many small writes; Nagle would hold them.
                let _ = s.set_nodelay(true);
                Ok(Self::Tcp(s))
            }
            Addr::Unix(path) => Ok(Self::Unix(UnixStream::connect(path).await?)),
        }
    }
}

/// Mode 0600 (0660 with a group), owned by the group when given.
fn restrict(path: &Path, access: SocketAccess) -> std::io::Result<()> {
    let mode = if access.group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    if let Some(gid) = access.group {
        std::os::unix::fs::chown(path, None, Some(gid))?;
    }
    Ok(())
}

/// A socket file nobody serves is removed; a served one, or anything else
/// at that path, is an error.
fn remove_stale(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another process serves this socket",
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

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Tcp(s) => s.is_write_vectored(),
            Self::Unix(s) => s.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn addresses_parse_and_bad_ones_are_named() {
        assert_eq!(Addr::parse("tcp://127.0.0.1:1234").unwrap(), Addr::Tcp("127.0.0.1:1234".into()));
        assert_eq!(
            Addr::parse("unix:///run/kiln/kiln.sock").unwrap(),
            Addr::Unix("/run/kiln/kiln.sock".into())
        );
        for bad in ["127.0.0.1:1234", "tcp://nohost", "unix://relative.sock", "http://x:1"] {
            assert!(Addr::parse(bad).unwrap_err().to_string().contains(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_unix_socket_is_its_owners_alone_unless_a_group_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.sock");
        let addr = format!("unix://{}", path.display());
        let listener = Listener::bind(&addr, SocketAccess::default()).await.unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert!(
            Listener::bind(&addr, SocketAccess::default()).await.is_err(),
            "a served socket is not taken over"
        );
        drop(listener);
        // Left behind by a gateway that is gone: replaced.
        let group = Listener::bind(&addr, SocketAccess { group: Some(meta.gid()) }).await.unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o660);
        let (connected, accepted) = tokio::join!(Stream::connect(&addr), group.accept());
        assert!(connected.is_ok() && accepted.is_ok());
    }
}
