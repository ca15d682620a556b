//! Builders reachable only through the gateway: every pool's kilnd serves
//! TLS with a certificate the controller issues from the builder CA and
//! accepts only clients that CA signed — the gateway, whose client
//! certificate the controller issues too. A pod elsewhere in the cluster
//! that dials a builder directly has no such certificate and is refused in
//! the handshake, whatever the network lets through (the per-pool
//! NetworkPolicy keeps it from getting that far where the CNI enforces it).
//!
//! Certificates live 90 days and are issued again after two thirds of that
//! (sooner when the CA ends first);
//! a pool's certificate is part of its pod template, so a new one rolls the
//! pool the drain-aware way. The CA is a Secret the chart makes and keeps.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kiln_crds::builder::Builder;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::desired;
use crate::certs::{self, Usage};

/// How long an issued certificate is valid.
const VALID_DAYS: u32 = 90;
/// A certificate is issued again when this share of its life has passed
/// (60 of 90 days; sooner when the CA ends first and cut it short).
const RENEW_AT: f64 = 2.0 / 3.0;
/// The common name of the gateway's client certificate.
pub const GATEWAY_CLIENT: &str = "kiln-gateway";
/// When a Secret's certificate is due to be issued again (RFC 3339), so
/// renewal needs no certificate parsing.
const ANNOTATION_RENEW_AFTER: &str = "kiln.dev/renew-after";
/// Which CA signed it (SHA-256 of the CA certificate), so a new CA reissues.
const ANNOTATION_CA: &str = "kiln.dev/ca";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading the builder CA Secret {secret}: {source}")]
    ReadCa { secret: String, source: kube::Error },
    #[error("the builder CA Secret {secret} has no {key}")]
    MissingKey { secret: String, key: &'static str },
    #[error("--builder-ca-secret {0:?} is not NAMESPACE/NAME")]
    BadSecretName(String),
    #[error(transparent)]
    Issue(#[from] certs::Error),
    #[error("writing the Secret {name}: {source}")]
    Apply { name: String, source: kube::Error },
}

/// The builder CA: it signs kilnd's server certificates and the gateway's
/// client certificate, and nothing else trusts it.
#[derive(Clone)]
pub struct BuilderCa {
    secret: String,
    cert_pem: String,
    key_pem: String,
    /// SHA-256 of the certificate, hex.
    fingerprint: String,
}

impl std::fmt::Debug for BuilderCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuilderCa")
            .field("secret", &self.secret)
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

/// The name kilnd's certificate carries and the gateway checks: the pool
/// is named, not the pod's address, which changes.
pub fn server_name(namespace: &str, builder: &str) -> String {
    format!("{builder}.{namespace}.builders.kiln")
}

/// `namespace/name` → its parts.
pub fn secret_ref(text: &str) -> Result<(String, String), TlsError> {
    text.split_once('/')
        .filter(|(ns, n)| !ns.is_empty() && !n.is_empty())
        .map(|(ns, n)| (ns.to_owned(), n.to_owned()))
        .ok_or_else(|| TlsError::BadSecretName(text.to_owned()))
}

impl BuilderCa {
    /// The CA from Secret `namespace/name` (`tls.crt`, `tls.key`).
    pub async fn load(client: &Client, namespace: &str, name: &str) -> Result<Self, TlsError> {
        let secret = format!("{namespace}/{name}");
        let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let found =
            api.get(name).await.map_err(|source| TlsError::ReadCa { secret: secret.clone(), source })?;
        let data = found.data.unwrap_or_default();
        let text = |key: &'static str| {
            data.get(key)
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                .ok_or_else(|| TlsError::MissingKey { secret: secret.clone(), key })
        };
        Ok(Self::new(secret.clone(), text("tls.crt")?, text("tls.key")?))
    }

    pub fn new(secret: String, cert_pem: String, key_pem: String) -> Self {
        let fingerprint = hex::encode(Sha256::digest(cert_pem.as_bytes()));
        Self { secret, cert_pem, key_pem, fingerprint }
    }

    fn issue(&self, name: &str, usage: &Usage, now: OffsetDateTime) -> Result<certs::Issued, TlsError> {
        Ok(certs::issue_for(&self.secret, &self.cert_pem, &self.key_pem, name, usage, VALID_DAYS, now)?)
    }

    /// Whether `secret` holds a certificate of this CA that is not yet due.
    pub fn is_current(&self, secret: Option<&Secret>, now: OffsetDateTime) -> bool {
        let Some(annotations) = secret.and_then(|s| s.metadata.annotations.as_ref()) else { return false };
        let signed_here = annotations.get(ANNOTATION_CA) == Some(&self.fingerprint);
        let renew_after = annotations
            .get(ANNOTATION_RENEW_AFTER)
            .and_then(|t| OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok());
        signed_here && renew_after.is_some_and(|due| due > now)
    }

    /// A Secret for kilnd of Builder `b`: its server certificate and key and
    /// the CA its clients must be signed by.
    pub fn kilnd_secret(&self, b: &Builder, now: OffsetDateTime) -> Result<Secret, TlsError> {
        let namespace = b.namespace().unwrap_or_default();
        let name = server_name(&namespace, &b.name_any());
        let issued = self.issue(&name, &Usage::Server(vec![name.clone()]), now)?;
        let mut secret = self.secret_of(desired::tls_secret_name(b), &issued, now);
        secret.metadata.namespace = b.namespace();
        secret.metadata.labels = Some(desired::selector(b));
        secret.metadata.owner_references = desired::owner(b).map(|o| vec![o]);
        Ok(secret)
    }

    /// A Secret `namespace/name` for the gateway: its client certificate and
    /// key, and the CA its builders' certificates are signed by.
    pub fn gateway_secret(
        &self,
        namespace: &str,
        name: &str,
        now: OffsetDateTime,
    ) -> Result<Secret, TlsError> {
        let issued = self.issue(GATEWAY_CLIENT, &Usage::Client, now)?;
        let mut secret = self.secret_of(name.to_owned(), &issued, now);
        secret.metadata.namespace = Some(namespace.to_owned());
        Ok(secret)
    }

    fn secret_of(&self, name: String, issued: &certs::Issued, now: OffsetDateTime) -> Secret {
        let renew_after = now + (issued.not_after - now) * RENEW_AT;
        let renew_after =
            renew_after.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
        Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name),
                annotations: Some(BTreeMap::from([
                    (ANNOTATION_RENEW_AFTER.to_owned(), renew_after),
                    (ANNOTATION_CA.to_owned(), self.fingerprint.clone()),
                ])),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(BTreeMap::from([
                ("tls.crt".to_owned(), bytes(&issued.cert_pem)),
                ("tls.key".to_owned(), bytes(&issued.key_pem)),
                ("ca.crt".to_owned(), bytes(&self.cert_pem)),
            ])),
            ..Default::default()
        }
    }
}

/// The fingerprint of the certificate in a kilnd Secret: what rolls the
/// pool when it changes.
pub fn certificate_fingerprint(secret: &Secret) -> String {
    let cert =
        secret.data.as_ref().and_then(|d| d.get("tls.crt")).map(|b| b.0.as_slice()).unwrap_or_default();
    hex::encode(&Sha256::digest(cert)[..8])
}

/// Keeps the gateway's client certificate current in Secret
/// `namespace/name`, until dropped; checked every hour (every minute
/// while writing it fails).
pub async fn keep_gateway_certificate(
    client: Client,
    ca: std::sync::Arc<BuilderCa>,
    namespace: String,
    name: String,
) {
    let api: Api<Secret> = Api::namespaced(client, &namespace);
    loop {
        let now = OffsetDateTime::now_utc();
        let mut wait = std::time::Duration::from_secs(3600);
        let current = api.get_opt(&name).await.ok().flatten();
        if !ca.is_current(current.as_ref(), now) {
            let written = match ca.gateway_secret(&namespace, &name, now) {
                Ok(secret) => api
                    .patch(&name, &PatchParams::apply(desired::FIELD_MANAGER).force(), &Patch::Apply(&secret))
                    .await
                    .map(drop)
                    .map_err(|source| TlsError::Apply { name: format!("{namespace}/{name}"), source }),
                Err(e) => Err(e),
            };
            match written {
                Ok(()) => {
                    tracing::info!(secret = %format!("{namespace}/{name}"), "issued the gateway's client certificate")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "issuing the gateway's client certificate; trying again in a minute");
                    wait = std::time::Duration::from_secs(60);
                }
            }
        }
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> BuilderCa {
        ca_ending(OffsetDateTime::now_utc() + time::Duration::days(3650))
    }

    fn ca_ending(end: OffsetDateTime) -> BuilderCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params.not_after = end;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "kiln builders");
        let cert = params.self_signed(&key).unwrap();
        BuilderCa::new("kiln/kiln-builder-ca".into(), cert.pem(), key.serialize_pem())
    }

    fn builder() -> Builder {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "kiln.dev/v1alpha1", "kind": "Builder",
            "metadata": {"name": "fast", "namespace": "team-a", "uid": "0b6f1c2e-0000-4000-8000-000000000001"},
            "spec": {}
        }))
        .unwrap()
    }

    #[test]
    fn a_certificate_cut_short_by_its_ca_is_kept_for_most_of_what_it_has() {
        // Renewing 30 days before the end would issue again on every pass.
        let now = OffsetDateTime::now_utc();
        let ca = ca_ending(now + time::Duration::days(1));
        let secret = ca.kilnd_secret(&builder(), now).unwrap();
        assert!(ca.is_current(Some(&secret), now + time::Duration::hours(15)));
        assert!(!ca.is_current(Some(&secret), now + time::Duration::hours(17)));
    }

    #[test]
    fn kilnds_certificate_names_the_pool_and_is_renewed_before_it_ends() {
        let ca = ca();
        let now = OffsetDateTime::now_utc();
        let secret = ca.kilnd_secret(&builder(), now).unwrap();
        assert_eq!(secret.metadata.name.as_deref(), Some("fast-kilnd-tls"));
        assert_eq!(secret.metadata.namespace.as_deref(), Some("team-a"));
        let data = secret.data.clone().unwrap();
        let pem = String::from_utf8(data["tls.crt"].0.clone()).unwrap();
        let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(sans, ["DNSName(fast.team-a.builders.kiln)"]);
        assert_eq!(data["ca.crt"].0, ca.cert_pem.as_bytes());

        assert!(ca.is_current(Some(&secret), now));
        assert!(ca.is_current(Some(&secret), now + time::Duration::days(59)));
        assert!(
            !ca.is_current(Some(&secret), now + time::Duration::days(61)),
            "renewed after two thirds of its 90 days"
        );
        assert!(!ca.is_current(None, now));
        assert!(!tests::ca().is_current(Some(&secret), now), "another CA issues again");
    }

    #[test]
    fn the_gateway_gets_a_client_certificate_of_the_same_ca() {
        let ca = ca();
        let secret = ca.gateway_secret("kiln", "kiln-gateway-builders", OffsetDateTime::now_utc()).unwrap();
        let data = secret.data.unwrap();
        let pem = String::from_utf8(data["tls.crt"].0.clone()).unwrap();
        let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(crate::gateway::tls::common_name(&der).as_deref(), Some(GATEWAY_CLIENT));
    }

    #[test]
    fn a_secret_reference_is_namespace_slash_name() {
        assert_eq!(secret_ref("kiln/ca").unwrap(), ("kiln".to_owned(), "ca".to_owned()));
        assert!(secret_ref("ca").unwrap_err().to_string().contains("NAMESPACE/NAME"));
    }

    use rustls::pki_types::pem::PemObject;
}
