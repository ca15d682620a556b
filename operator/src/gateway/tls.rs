//! TLS for the gateway: the server certificate, optional client
//! certificates (mTLS) checked against a CA, the server name (SNI) that
//! picks the pool, and the client certificate's common name that the pool's
//! access list names. buildx's remote driver offers no ALPN, so HTTP/2 is
//! spoken after the handshake whatever was (not) negotiated.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;

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

/// The acceptor for `cert`/`key`; with `client_ca`, clients must present a
/// certificate that CA signed.
pub fn acceptor(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs(cert, "the server certificate")?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Pem {
        what: "the server key",
        path: key.to_owned(),
        detail: e.to_string(),
    })?;
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
    let mut config = builder.with_single_cert(chain, key).map_err(|e| TlsError::Config(e.to_string()))?;
    // Offered to clients that ask (buildctl); buildx asks for none.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
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
        acceptor(&cert, &key, None).unwrap();
        acceptor(&cert, &key, Some(&cert)).unwrap();
        let missing = dir.path().join("missing.pem");
        let err = acceptor(&missing, &key, None).err().unwrap().to_string();
        assert!(err.contains("server certificate") && err.contains("missing.pem"), "{err}");
    }
}
