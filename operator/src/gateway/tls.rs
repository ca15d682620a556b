//! TLS for the gateway: the server certificate, optional client
//! certificates (mTLS) checked against a CA, the server name (SNI) that
//! picks the pool, and the client certificate's common name that the pool's
//! access list names. buildx's remote driver offers no ALPN, so HTTP/2 is
//! spoken after the handshake whatever was (not) negotiated.
//!
//! A client verifies the server name it sends, which names the pool, against
//! the gateway's certificate, so every pool name must be in a certificate.
//! Pools come and go with Builders; with a pool issuer (`--tls-issuer-cert`,
//! a CA the clients trust) the gateway makes a certificate for a pool's name
//! when a client first asks for it, signed by that CA, and keeps it a day.
//! Names that are no pool's get the configured certificate.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

/// How long a certificate made for a pool name is used before a new one.
const REISSUE_AFTER: Duration = Duration::from_secs(24 * 3600);
/// How long such a certificate is valid: longer than it is used, so a
/// connection made just before the reissue stays good.
const VALID_FOR: time::Duration = time::Duration::days(7);
/// Certificates kept, so clients asking for names that come and go cannot
/// grow the set without bound.
const KEPT: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {what} from {path}: {detail}")]
    Pem { what: &'static str, path: PathBuf, detail: String },
    #[error("TLS setup: {0}")]
    Config(String),
}

fn certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |detail: String| TlsError::Pem { what, path: path.to_owned(), detail };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem("no certificate in it".into()));
    }
    Ok(certs)
}

/// Says whether a server name names a pool.
pub type IsPool = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// The CA that signs certificates for pool names, and who asks.
pub struct PoolIssuer {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub is_pool: IsPool,
}

/// The acceptor for `cert`/`key`; with `client_ca`, clients must present a
/// certificate that CA signed; with `issuer`, pool names get certificates
/// of their own.
pub fn acceptor(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    issuer: Option<PoolIssuer>,
) -> Result<TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs(cert, "the server certificate")?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Pem {
        what: "the server key",
        path: key.to_owned(),
        detail: e.to_string(),
    })?;
    let fallback = Arc::new(
        CertifiedKey::from_der(chain, key, &provider)
            .map_err(|e| TlsError::Config(format!("the server certificate and key: {e}")))?,
    );
    let resolver: Arc<dyn ResolvesServerCert> = match issuer {
        Some(issuer) => Arc::new(PoolCertificates::new(issuer, fallback, Arc::clone(&provider))?),
        None => Arc::new(Fixed(fallback)),
    };
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca, "the client CA")? {
                roots.add(c).map_err(|e| TlsError::Config(format!("client CA {}: {e}", ca.display())))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    // Offered to clients that ask (buildctl); buildx asks for none.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The one configured certificate, whatever the name.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

/// Certificates for pool names, made on demand.
struct PoolCertificates {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    fallback: Arc<CertifiedKey>,
    is_pool: IsPool,
    made: Mutex<HashMap<String, (Instant, Arc<CertifiedKey>)>>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for PoolCertificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolCertificates").finish_non_exhaustive()
    }
}

impl PoolCertificates {
    fn new(
        issuer: PoolIssuer,
        fallback: Arc<CertifiedKey>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let read = |path: &Path, what: &'static str| {
            std::fs::read_to_string(path).map_err(|e| TlsError::Pem {
                what,
                path: path.to_owned(),
                detail: e.to_string(),
            })
        };
        let pem = |path: &Path, what: &'static str| {
            let path = path.to_owned();
            move |e: rcgen::Error| TlsError::Pem { what, path, detail: e.to_string() }
        };
        let key = rcgen::KeyPair::from_pem(&read(&issuer.key, "the pool issuer's key")?)
            .map_err(pem(&issuer.key, "the pool issuer's key"))?;
        let ca = rcgen::Issuer::from_ca_cert_pem(&read(&issuer.cert, "the pool issuer's certificate")?, key)
            .map_err(pem(&issuer.cert, "the pool issuer's certificate"))?;
        Ok(Self { issuer: ca, fallback, is_pool: issuer.is_pool, made: Mutex::default(), provider })
    }

    /// A certificate for `name`, signed by the issuer.
    fn make(&self, name: &str) -> Result<CertifiedKey, String> {
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(|e| e.to_string())?;
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + VALID_FOR;
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let cert = params.signed_by(&key, &self.issuer).map_err(|e| e.to_string())?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        CertifiedKey::from_der(vec![cert.der().clone()], der, &self.provider).map_err(|e| e.to_string())
    }
}

impl ResolvesServerCert for PoolCertificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name().filter(|n| (self.is_pool)(n)) else {
            return Some(Arc::clone(&self.fallback));
        };
        let mut made = self.made.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((at, cert)) = made.get(name)
            && at.elapsed() < REISSUE_AFTER
        {
            return Some(Arc::clone(cert));
        }
        match self.make(name) {
            Ok(cert) => {
                if made.len() >= KEPT {
                    made.retain(|_, (at, _)| at.elapsed() < REISSUE_AFTER);
                    if made.len() >= KEPT {
                        made.clear();
                    }
                }
                let cert = Arc::new(cert);
                made.insert(name.to_owned(), (Instant::now(), Arc::clone(&cert)));
                debug!(server_name = name, "made a certificate for a pool");
                Some(cert)
            }
            Err(e) => {
                warn!(server_name = name, error = %e, "making a certificate for a pool name");
                Some(Arc::clone(&self.fallback))
            }
        }
    }
}

/// The gateway's side of TLS to builders: its client certificate, and the
/// CA its builders' certificates are signed by. The files are read again
/// for every new connection, so a renewed certificate (a mounted Secret is
/// updated in place) is used without a restart.
#[derive(Debug, Clone)]
pub struct BuilderClient {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

impl BuilderClient {
    /// Checks the files once, so a bad one fails the start, not a build.
    pub fn new(cert: PathBuf, key: PathBuf, ca: PathBuf) -> Result<Self, TlsError> {
        let client = Self { cert, key, ca };
        client.config()?;
        Ok(client)
    }

    fn config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(&self.ca, "the builders' CA")? {
            roots.add(c).map_err(|e| TlsError::Config(format!("builders' CA {}: {e}", self.ca.display())))?;
        }
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| TlsError::Pem {
            what: "the gateway's client key",
            path: self.key.clone(),
            detail: e.to_string(),
        })?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs(&self.cert, "the gateway's client certificate")?, key)
            .map_err(|e| TlsError::Config(format!("the gateway's client certificate: {e}")))?;
        // kilnd (tonic) speaks HTTP/2 after ALPN says so.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    /// A TLS connection over `stream` to the builder named `server_name`.
    pub async fn connect<S>(
        &self,
        server_name: &str,
        stream: S,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<S>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
        let config = self.config().map_err(|e| invalid(e.to_string()))?;
        let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
            .map_err(|e| invalid(e.to_string()))?;
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, stream).await
    }
}

/// The common name of a client certificate's subject.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `cn`, made with the openssl CLI.
    fn self_signed(dir: &Path, cn: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join(format!("{cn}.crt")), dir.join(format!("{cn}.key")));
        let status = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
            .args(["-days", "1", "-subj", &format!("/O=kiln/CN={cn}"), "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        (cert, key)
    }

    /// A CA and a gateway certificate it signed for `gateway.test`, as PEM files.
    fn ca_and_gateway(dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "kiln pools");
        let ca = params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.pem(), ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["gateway.test".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let files = [("ca.crt", ca.pem()), ("ca.key", issuer.key().serialize_pem())]
            .into_iter()
            .chain([("gw.crt", cert.pem()), ("gw.key", key.serialize_pem())])
            .map(|(name, pem)| {
                let path = dir.join(name);
                std::fs::write(&path, pem).unwrap();
                path
            })
            .collect::<Vec<_>>();
        (files[0].clone(), files[1].clone(), files[2].clone(), files[3].clone())
    }

    /// Whether a client trusting `ca` completes a handshake asking for `name`.
    async fn handshake(acceptor: &TlsAcceptor, ca: &Path, name: &str) -> bool {
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(ca, "ca").unwrap() {
            roots.add(c).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (client, server) = tokio::io::duplex(64 << 10);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let acceptor = acceptor.clone();
        let server = tokio::spawn(async move { acceptor.accept(server).await.is_ok() });
        let client = connector.connect(name, client).await.is_ok();
        let _ = server.await;
        client
    }

    #[tokio::test]
    async fn a_pool_name_gets_a_certificate_of_its_own_from_the_issuer() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, ca_key, gw, gw_key) = ca_and_gateway(dir.path());
        let is_pool: IsPool = Arc::new(|name| name == "fast.team-a");
        let issuer = PoolIssuer { cert: ca.clone(), key: ca_key, is_pool };
        let acceptor = acceptor(&gw, &gw_key, None, Some(issuer)).unwrap();
        assert!(handshake(&acceptor, &ca, "fast.team-a").await, "a pool's name is certified");
        assert!(handshake(&acceptor, &ca, "fast.team-a").await, "and again, from the kept certificate");
        assert!(handshake(&acceptor, &ca, "gateway.test").await, "other names get the gateway's own");
        assert!(
            !handshake(&acceptor, &ca, "not-a-pool").await,
            "no certificate is made for a name that is no pool's"
        );

        let plain = super::acceptor(&gw, &gw_key, None, None).unwrap();
        assert!(!handshake(&plain, &ca, "fast.team-a").await, "without an issuer only the gateway's names");
    }

    #[test]
    fn the_common_name_is_the_subjects() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = self_signed(dir.path(), "ci-team");
        let der = certs(&cert, "test").unwrap().remove(0);
        assert_eq!(common_name(&der).as_deref(), Some("ci-team"));
    }

    #[test]
    fn an_acceptor_is_built_from_pem_files_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(dir.path(), "gateway");
        acceptor(&cert, &key, None, None).unwrap();
        acceptor(&cert, &key, Some(&cert), None).unwrap();
        let missing = dir.path().join("missing.pem");
        let err = acceptor(&missing, &key, None, None).err().unwrap().to_string();
        assert!(err.contains("server certificate") && err.contains("missing.pem"), "{err}");
    }
}
