//! `kiln client-cert`: issues a client certificate for the gateway from the
//! client CA that the `kiln` chart keeps in a Secret, writes it with the CA
//! buildx verifies the gateway with, and prints the `docker buildx create`
//! line that uses them.
//!
//! The certificate's common name is the client's identity: the gateway
//! admits a client to a pool only when the pool's `access.clients` lists that
//! name. buildx sends the pool's name as the TLS server name, and checks the
//! gateway's certificate against it (docs/install.md, "TLS").

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Node, Secret, Service};
use kube::Api;
use kube::api::ListParams;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

/// Issue a client certificate for the gateway and print the buildx line.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Example, after `helm install kiln charts/kiln --namespace kiln`:

  kiln client-cert --name ci --pool default.kiln --out ./kiln-ci

writes ./kiln-ci/ca.pem, cert.pem and key.pem and prints

  docker buildx create --name kiln --driver remote \\
    --driver-opt cacert=$PWD/kiln-ci/ca.pem,cert=$PWD/kiln-ci/cert.pem,key=$PWD/kiln-ci/key.pem,servername=default.kiln \\
    tcp://ADDRESS:1234

The pool serves the client only if its access.clients lists the name (or \"*\").
Reading the CA's Secret is the permission to make clients: grant it to those
who hand out access, no one else.")]
pub struct Args {
    /// The client's identity, the certificate's common name: what a pool's
    /// access.clients lists (a team, a CI system, a person).
    #[arg(long, value_name = "IDENTITY")]
    pub name: String,

    /// The pool to build on, NAME.NAMESPACE (or NAME when it is unique): buildx
    /// sends it as the TLS server name. Default: default.<--namespace>.
    #[arg(long, value_name = "NAME.NAMESPACE")]
    pub pool: Option<String>,

    /// Where to write ca.pem, cert.pem and key.pem (key.pem readable by you
    /// only). Default: ./kiln-<IDENTITY>.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// How long the certificate is valid (never past the CA's own end).
    #[arg(long, value_name = "DAYS", default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..))]
    pub days: u32,

    /// The namespace Kiln's chart is installed in.
    #[arg(long, short = 'n', env = "KILN_RELEASE_NAMESPACE", default_value = "kiln")]
    pub namespace: String,

    /// The Secret holding the client CA: tls.crt and tls.key (the chart's
    /// <release>-ca, or tls.clientCA.existingSecret).
    #[arg(long, value_name = "SECRET", default_value = "kiln-ca")]
    pub ca_secret: String,

    /// The Secret of the gateway's server certificate: its ca.crt becomes
    /// ca.pem, what buildx verifies the gateway with (none: the system's).
    #[arg(long, value_name = "SECRET", default_value = "kiln-gateway-tls")]
    pub server_secret: String,

    /// The gateway's Service, whose address goes into the buildx line.
    #[arg(long, value_name = "SERVICE", default_value = "kiln-gateway")]
    pub service: String,

    /// The gateway's address for buildx, instead of the Service's (a load
    /// balancer's name, a port-forward: tcp://127.0.0.1:1234).
    #[arg(long, value_name = "tcp://HOST:PORT")]
    pub gateway: Option<String>,

    /// The name of the buildx builder in the printed line.
    #[arg(long, value_name = "NAME", default_value = "kiln")]
    pub builder_name: String,

    /// Replace the files of an earlier certificate in --out.
    #[arg(long)]
    pub force: bool,
}

/// What made `kiln client-cert` fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to the Kubernetes API (KUBECONFIG or the in-cluster service account): {0}")]
    Client(#[source] kube::Error),
    #[error(
        "reading the Secret {namespace}/{name}: {source} (is Kiln installed in namespace {namespace}? \
         --namespace, --ca-secret and --server-secret name where its Secrets are)"
    )]
    ReadSecret { namespace: String, name: String, source: kube::Error },
    #[error("the Secret {secret} has no {key}{hint}")]
    MissingKey { secret: String, key: &'static str, hint: &'static str },
    #[error(
        "reading the gateway's Service {namespace}/{name}: {source} (--gateway gives the address instead)"
    )]
    ReadService { namespace: String, name: String, source: kube::Error },
    #[error("the CA certificate in {secret}: {detail}")]
    CaCertificate { secret: String, detail: String },
    #[error("the CA key in {secret}: {detail}")]
    CaKey { secret: String, detail: String },
    #[error("signing the certificate for {name:?}: {source}")]
    Sign { name: String, source: rcgen::Error },
    #[error("{name:?} cannot be a client identity: {reason}")]
    BadName { name: String, reason: &'static str },
    #[error("{} holds a certificate already; --force replaces it", path.display())]
    Exists { path: PathBuf },
    #[error("creating {}: {source}", path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("writing {}: {source}", path.display())]
    WriteFile { path: PathBuf, source: io::Error },
}

/// A client certificate and its private key, PEM.
#[derive(Debug)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub not_after: OffsetDateTime,
}

/// Tolerance for clocks that run behind the signer's.
const BACKDATE: time::Duration = time::Duration::minutes(5);

/// What a certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Usage {
    /// A client whose identity is its common name.
    Client,
    /// A server reached by these DNS names.
    Server(Vec<String>),
}

/// Issues a certificate for the client `name`, valid `days` from `now` (or
/// until the CA's end), signed by the CA `ca_cert_pem`/`ca_key_pem`; `ca`
/// names the Secret in errors. The key is a fresh ECDSA P-256 key.
pub fn issue(
    ca: &str,
    ca_cert_pem: &str,
    ca_key_pem: &str,
    name: &str,
    days: u32,
    now: OffsetDateTime,
) -> Result<Issued, Error> {
    check_name(name)?;
    issue_for(ca, ca_cert_pem, ca_key_pem, name, &Usage::Client, days, now)
}

/// Issues a certificate named `name` for `usage`; see [`issue`].
pub fn issue_for(
    ca: &str,
    ca_cert_pem: &str,
    ca_key_pem: &str,
    name: &str,
    usage: &Usage,
    days: u32,
    now: OffsetDateTime,
) -> Result<Issued, Error> {
    let cert_err = |detail: String| Error::CaCertificate { secret: ca.to_owned(), detail };
    let pem = rustls::pki_types::CertificateDer::from_pem_slice(ca_cert_pem.as_bytes())
        .map_err(|e| cert_err(format!("not a PEM certificate ({e})")))?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(&pem).map_err(|e| cert_err(format!("not X.509 ({e})")))?;
    if !parsed.is_ca() {
        return Err(cert_err("it is not a CA certificate (no basicConstraints CA:TRUE)".into()));
    }
    let ca_end = parsed.validity().not_after.to_datetime();
    if ca_end <= now {
        return Err(cert_err(format!("it expired at {ca_end}")));
    }
    let signing_key = ca_key_pair(ca, ca_key_pem)?;
    let issuer = Issuer::from_ca_cert_der(&pem, signing_key)
        .map_err(|e| cert_err(format!("rcgen cannot sign with it ({e})")))?;

    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match usage {
        Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        Usage::Server(names) => {
            let sign = |source| Error::Sign { name: name.to_owned(), source };
            params.subject_alt_names = CertificateParams::new(names.clone()).map_err(sign)?.subject_alt_names;
            vec![ExtendedKeyUsagePurpose::ServerAuth]
        }
    };
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - BACKDATE;
    params.not_after = (now + time::Duration::days(i64::from(days))).min(ca_end);
    let sign = |source| Error::Sign { name: name.to_owned(), source };
    let key = KeyPair::generate().map_err(sign)?;
    let cert = params.signed_by(&key, &issuer).map_err(sign)?;
    Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem(), not_after: params.not_after })
}

/// The gateway compares the common name with `access.clients` verbatim.
fn check_name(name: &str) -> Result<(), Error> {
    let bad = |reason| Err(Error::BadName { name: name.to_owned(), reason });
    if name.is_empty() || name.len() > 253 {
        return bad("it must be 1 to 253 characters (what access.clients takes)");
    }
    if name == "*" {
        return bad("\"*\" in access.clients means every client; a client needs a name of its own");
    }
    if name.trim() != name || name.chars().any(char::is_control) {
        return bad("no leading or trailing spaces, no control characters");
    }
    Ok(())
}

/// The CA's signing key, from PKCS#8, or from the PKCS#1 (RSA) and SEC1 (EC)
/// forms that Helm's sprig, cert-manager and `openssl genrsa -traditional`
/// write, which ring reads only inside PKCS#8.
fn ca_key_pair(ca: &str, pem: &str) -> Result<KeyPair, Error> {
    let key_err = |detail: String| Error::CaKey { secret: ca.to_owned(), detail };
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| key_err(format!("not a PEM private key ({e})")))?;
    let candidates = match &key {
        PrivateKeyDer::Pkcs8(k) => vec![k.secret_pkcs8_der().to_vec()],
        PrivateKeyDer::Pkcs1(k) => vec![pkcs8::wrap(pkcs8::RSA, k.secret_pkcs1_der())],
        PrivateKeyDer::Sec1(k) => {
            pkcs8::EC_CURVES.iter().map(|c| pkcs8::wrap(c, k.secret_sec1_der())).collect()
        }
        _ => return Err(key_err("an unknown kind of private key".into())),
    };
    candidates
        .into_iter()
        .find_map(|der| KeyPair::try_from(&PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der))).ok())
        .ok_or_else(|| key_err("not an RSA, ECDSA P-256/P-384 or Ed25519 key".into()))
}

/// PKCS#8 (RFC 5208) around a key in its algorithm's own form.
mod pkcs8 {
    /// The AlgorithmIdentifier of RSA: rsaEncryption, NULL parameters.
    pub const RSA: &[u8] = &[0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00];
    /// The AlgorithmIdentifiers of EC keys: id-ecPublicKey, then the named
    /// curve (P-256, P-384): a SEC1 key may leave its curve out, so each is tried.
    pub const EC_CURVES: [&[u8]; 2] = [
        &[
            0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d,
            0x03, 0x01, 0x07,
        ],
        &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
    ];

    /// PrivateKeyInfo { version 0, algorithm, privateKey OCTET STRING }.
    pub fn wrap(algorithm: &[u8], key: &[u8]) -> Vec<u8> {
        let mut info = vec![0x02, 0x01, 0x00];
        info.extend(der(0x30, algorithm));
        info.extend(der(0x04, key));
        der(0x30, &info)
    }

    /// A DER value: tag, definite length, contents.
    fn der(tag: u8, contents: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = contents.len().to_be_bytes();
        let first = len.iter().position(|b| *b != 0).unwrap_or(len.len() - 1);
        if contents.len() < 0x80 {
            out.push(len[len.len() - 1]);
        } else {
            out.push(0x80 | u8::try_from(len.len() - first).unwrap_or(0));
            out.extend_from_slice(&len[first..]);
        }
        out.extend_from_slice(contents);
        out
    }
}

/// Where buildx reaches the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// An address outside the cluster reaches it (a load balancer, a node port).
    Reachable(String),
    /// Only inside the cluster; from elsewhere, through a port-forward.
    InCluster { addr: String, port: i32 },
}

/// The address of the gateway's Service `svc` in `namespace`: its load
/// balancer, a node's address and the node port, or its cluster DNS name.
pub fn service_address(namespace: &str, svc: &Service, nodes: &[Node]) -> Address {
    let name = svc.metadata.name.as_deref().unwrap_or("kiln-gateway");
    let spec = svc.spec.clone().unwrap_or_default();
    let port = spec.ports.as_deref().and_then(<[_]>::first);
    let service_port = port.map_or(1234, |p| p.port);
    let in_cluster = Address::InCluster {
        addr: format!("tcp://{name}.{namespace}.svc:{service_port}"),
        port: service_port,
    };
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .and_then(<[_]>::first)
        .and_then(|i| i.hostname.clone().or_else(|| i.ip.clone()));
    match (spec.type_.as_deref(), ingress) {
        (Some("LoadBalancer"), Some(host)) => {
            Address::Reachable(format!("tcp://{}:{service_port}", host_port(&host)))
        }
        (Some("NodePort" | "LoadBalancer"), _) => {
            match (port.and_then(|p| p.node_port), node_address(nodes)) {
                (Some(node_port), Some(host)) => {
                    Address::Reachable(format!("tcp://{}:{node_port}", host_port(&host)))
                }
                _ => in_cluster,
            }
        }
        _ => in_cluster,
    }
}

fn host_port(host: &str) -> String {
    if host.contains(':') { format!("[{host}]") } else { host.to_owned() }
}

/// A Ready node's external address, else its internal one.
fn node_address(nodes: &[Node]) -> Option<String> {
    let ready = |n: &&Node| {
        n.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };
    let addresses: Vec<_> = nodes
        .iter()
        .filter(ready)
        .flat_map(|n| n.status.as_ref().and_then(|s| s.addresses.clone()))
        .flatten()
        .collect();
    ["ExternalIP", "InternalIP"]
        .iter()
        .find_map(|kind| addresses.iter().find(|a| a.type_ == *kind).map(|a| a.address.clone()))
}

/// The `docker buildx create` line for the files in `dir`.
pub fn buildx_line(builder: &str, dir: &Path, with_ca: bool, pool: &str, addr: &str) -> String {
    let file = |name: &str| dir.join(name).display().to_string();
    let ca = if with_ca { format!("cacert={},", file("ca.pem")) } else { String::new() };
    format!(
        "docker buildx create --name {builder} --driver remote --driver-opt {ca}cert={},key={},servername={pool} {addr}",
        file("cert.pem"),
        file("key.pem"),
    )
}

/// Writes `contents` to `path`, created with `mode`, refusing to replace a
/// file unless `force`.
fn write_file(path: &Path, contents: &str, mode: u32, force: bool) -> Result<(), Error> {
    let write_err = |source| Error::WriteFile { path: path.to_owned(), source };
    if force {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(write_err(e)),
        }
    }
    let mut file =
        fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                Error::Exists { path: path.to_owned() }
            } else {
                write_err(e)
            }
        })?;
    file.write_all(contents.as_bytes()).map_err(write_err)
}

/// Reads `key` of a Secret's data as text.
fn secret_key(secret: &Secret, name: &str, key: &'static str, hint: &'static str) -> Result<String, Error> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        .ok_or_else(|| Error::MissingKey { secret: name.to_owned(), key, hint })
}

/// `kiln client-cert`.
pub async fn run(args: Args) -> Result<(), Error> {
    check_name(&args.name)?;
    let client = kube::Client::try_default().await.map_err(Error::Client)?;
    let ns = &args.namespace;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let read = |name: &str| {
        let secrets = secrets.clone();
        let name = name.to_owned();
        async move {
            secrets.get(&name).await.map_err(|source| Error::ReadSecret {
                namespace: ns.clone(),
                name,
                source,
            })
        }
    };
    let ca_secret = read(&args.ca_secret).await?;
    let ca_cert = secret_key(&ca_secret, &args.ca_secret, "tls.crt", "")?;
    let ca_key = secret_key(
        &ca_secret,
        &args.ca_secret,
        "tls.key",
        ": without the CA's key, sign client certificates where the key is (common name = identity)",
    )?;
    let server_secret = read(&args.server_secret).await?;
    let server_ca = server_secret.data.as_ref().and_then(|d| d.get("ca.crt")).map(|v| v.0.clone());

    let addr = match &args.gateway {
        Some(addr) => Address::Reachable(addr.clone()),
        None => {
            let services: Api<Service> = Api::namespaced(client.clone(), ns);
            let svc = services.get(&args.service).await.map_err(|source| Error::ReadService {
                namespace: ns.clone(),
                name: args.service.clone(),
                source,
            })?;
            let node_port = svc.spec.as_ref().and_then(|s| s.type_.as_deref()) != Some("ClusterIP");
            // Listing nodes is only for a node port, and may be forbidden:
            // then the in-cluster address is what there is.
            let nodes = if node_port {
                let list = Api::<Node>::all(client).list(&ListParams::default()).await;
                list.map(|l| l.items).unwrap_or_default()
            } else {
                Vec::new()
            };
            service_address(ns, &svc, &nodes)
        }
    };

    let issued = issue(&args.ca_secret, &ca_cert, &ca_key, &args.name, args.days, OffsetDateTime::now_utc())?;
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from(format!("kiln-{}", args.name)));
    let out = std::path::absolute(&out).unwrap_or(out);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&out)
        .map_err(|source| Error::CreateDir { path: out.clone(), source })?;
    if let Some(ca) = &server_ca {
        write_file(&out.join("ca.pem"), &String::from_utf8_lossy(ca), 0o644, args.force)?;
    }
    write_file(&out.join("key.pem"), &issued.key_pem, 0o600, args.force)?;
    write_file(&out.join("cert.pem"), &issued.cert_pem, 0o644, args.force)?;

    let pool = args.pool.clone().unwrap_or_else(|| format!("default.{ns}"));
    let (addr, hint) = match addr {
        Address::Reachable(addr) => (addr, None),
        Address::InCluster { addr, port } => (
            addr,
            Some(format!(
                "The Service {} is reachable inside the cluster only. From elsewhere run\n  \
                 kubectl -n {ns} port-forward service/{} {port}:{port}\n\
                 and use tcp://127.0.0.1:{port} instead (or pass --gateway).",
                args.service, args.service
            )),
        ),
    };
    let ca_note = if server_ca.is_some() { "ca.pem, " } else { "" };
    eprintln!(
        "Wrote {ca_note}cert.pem and key.pem into {} for client {:?}, valid until {}.{}",
        out.display(),
        args.name,
        issued.not_after.date(),
        if server_ca.is_none() {
            format!(
                " {} has no ca.crt: buildx verifies the gateway with the system's CAs.",
                args.server_secret
            )
        } else {
            String::new()
        }
    );
    if let Some(hint) = hint {
        eprintln!("{hint}");
    }
    eprintln!(
        "Pool {pool} serves the client if its access.clients lists {:?} (or \"*\"). Create the builder:",
        args.name
    );
    let mut stdout = io::stdout().lock();
    let _ = writeln!(stdout, "{}", buildx_line(&args.builder_name, &out, server_ca.is_some(), &pool, &addr));
    let _ = stdout.flush();
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::{NodeAddress, NodeCondition, NodeStatus};
    use rustls::pki_types::{CertificateDer, UnixTime};
    use rustls::server::WebPkiClientVerifier;
    use serde_json::json;
    use x509_parser::extensions::ParsedExtension;

    use super::*;

    /// A CA made by rcgen itself: (certificate PEM, PKCS#8 key PEM).
    fn rcgen_ca(days: i64) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "test CA");
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        params.not_before = OffsetDateTime::now_utc() - time::Duration::days(1);
        params.not_after = OffsetDateTime::now_utc() + time::Duration::days(days);
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    /// A CA made with the openssl CLI from a key `genkey` writes: (certificate
    /// PEM, key PEM as written).
    fn openssl_ca(genkey: &[&str]) -> (String, String) {
        let dir = tempfile::tempdir().unwrap();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl").current_dir(dir.path()).args(args).output().unwrap();
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        openssl(genkey);
        openssl(&[
            "req",
            "-x509",
            "-key",
            "ca.key",
            "-days",
            "2",
            "-subj",
            "/O=kiln/CN=openssl CA",
            "-out",
            "ca.crt",
        ]);
        let read = |f: &str| fs::read_to_string(dir.path().join(f)).unwrap();
        (read("ca.crt"), read("ca.key"))
    }

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    /// What the gateway does with a client certificate: rustls's client
    /// verifier with the CA as the only root (chain, validity, clientAuth).
    fn gateway_accepts(ca_pem: &str, cert_pem: &str) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der(ca_pem)).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
        verifier.verify_client_cert(&der(cert_pem), &[], UnixTime::now()).map(|_| ())
    }

    #[test]
    fn the_certificate_verifies_against_the_ca_as_a_client_of_that_name() {
        let (ca, ca_key) = rcgen_ca(30);
        let issued = issue("kiln-ca", &ca, &ca_key, "team-a-ci", 7, OffsetDateTime::now_utc()).unwrap();
        gateway_accepts(&ca, &issued.cert_pem).unwrap();
        assert!(issued.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8: {}", issued.key_pem);

        let cert = der(&issued.cert_pem);
        assert_eq!(crate::gateway::tls::common_name(&cert).as_deref(), Some("team-a-ci"));
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert).unwrap();
        assert!(!parsed.is_ca());
        let eku = parsed.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth, "{eku:?}");
        let usage = parsed.key_usage().unwrap().unwrap().value;
        assert!(usage.digital_signature() && !usage.key_cert_sign(), "{usage:?}");
        assert!(
            parsed
                .extensions()
                .iter()
                .any(|e| matches!(e.parsed_extension(), ParsedExtension::AuthorityKeyIdentifier(_))),
            "the authority key identifier points at the CA"
        );
        let days = (parsed.validity().not_after.to_datetime() - OffsetDateTime::now_utc()).whole_hours();
        assert!((7 * 24 - 1..=7 * 24).contains(&days), "{days} hours");

        let (other_ca, _) = rcgen_ca(30);
        assert!(gateway_accepts(&other_ca, &issued.cert_pem).is_err(), "another CA does not vouch for it");
    }

    #[test]
    fn the_ca_key_may_be_pkcs1_sec1_or_pkcs8_as_helm_cert_manager_and_openssl_write_it() {
        for (what, genkey) in [
            ("RSA PKCS#1", &["genrsa", "-traditional", "-out", "ca.key", "2048"][..]),
            (
                "RSA PKCS#8",
                &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "ca.key"],
            ),
            ("P-256 SEC1", &["ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", "ca.key"]),
            ("P-384 SEC1", &["ecparam", "-genkey", "-name", "secp384r1", "-noout", "-out", "ca.key"]),
            (
                "P-256 PKCS#8",
                &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "ca.key"],
            ),
            ("Ed25519", &["genpkey", "-algorithm", "ed25519", "-out", "ca.key"]),
        ] {
            let (ca, ca_key) = openssl_ca(genkey);
            let issued = issue("kiln-ca", &ca, &ca_key, "ci", 1, OffsetDateTime::now_utc())
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            gateway_accepts(&ca, &issued.cert_pem).unwrap_or_else(|e| panic!("{what}: {e}"));
        }
    }

    #[test]
    fn the_certificate_ends_with_its_ca() {
        let (ca, ca_key) = rcgen_ca(3);
        let issued = issue("kiln-ca", &ca, &ca_key, "ci", 365, OffsetDateTime::now_utc()).unwrap();
        let ca_end =
            x509_parser::parse_x509_certificate(&der(&ca)).unwrap().1.validity().not_after.to_datetime();
        assert_eq!(issued.not_after, ca_end);
        gateway_accepts(&ca, &issued.cert_pem).unwrap();
    }

    #[test]
    fn what_cannot_sign_is_named() {
        let (ca, ca_key) = rcgen_ca(30);
        let now = OffsetDateTime::now_utc();
        let err = |r: Result<Issued, Error>| r.unwrap_err().to_string();

        let leaf = issue("kiln-ca", &ca, &ca_key, "leaf", 1, now).unwrap();
        let e = err(issue("my-ca", &leaf.cert_pem, &leaf.key_pem, "ci", 1, now));
        assert!(e.contains("the CA certificate in my-ca: it is not a CA certificate"), "{e}");
        let e = err(issue("my-ca", &ca, "not a key", "ci", 1, now));
        assert!(e.starts_with("the CA key in my-ca: not a PEM private key"), "{e}");
        let e = err(issue("my-ca", "garbage", &ca_key, "ci", 1, now));
        assert!(e.starts_with("the CA certificate in my-ca: not a PEM certificate"), "{e}");
        let e = err(issue("my-ca", &ca, &ca_key, "ci", 1, now + time::Duration::days(31)));
        assert!(e.contains("it expired at"), "{e}");
        for name in ["", "*", " ci", "c\ni"] {
            let e = err(issue("my-ca", &ca, &ca_key, name, 1, now));
            assert!(e.contains("cannot be a client identity"), "{name:?}: {e}");
        }
    }

    #[test]
    fn a_long_key_gets_a_long_form_der_length() {
        let key = vec![7u8; 300];
        let wrapped = pkcs8::wrap(pkcs8::RSA, &key);
        // SEQUENCE, 2-byte length; version; AlgorithmIdentifier; OCTET STRING, 2-byte length.
        assert_eq!(&wrapped[..2], &[0x30, 0x82]);
        assert_eq!(usize::from(u16::from_be_bytes([wrapped[2], wrapped[3]])), wrapped.len() - 4);
        let octets = 4 + 3 + 2 + pkcs8::RSA.len();
        assert_eq!(&wrapped[octets..octets + 4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(&wrapped[octets + 4..], &key[..]);
        assert_eq!(
            &pkcs8::wrap(&[], &[1])[..],
            &[0x30, 0x08, 0x02, 0x01, 0x00, 0x30, 0x00, 0x04, 0x01, 0x01]
        );
    }

    fn service(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    fn node(ready: bool, addresses: &[(&str, &str)]) -> Node {
        Node {
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                addresses: Some(
                    addresses
                        .iter()
                        .map(|(t, a)| NodeAddress { type_: (*t).into(), address: (*a).into() })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_address_is_the_load_balancers_a_nodes_or_the_services_in_the_cluster() {
        let lb = |ingress: serde_json::Value| {
            service(json!({"metadata": {"name": "gw"}, "spec": {"type": "LoadBalancer",
                "ports": [{"port": 443, "nodePort": 31234}]}, "status": {"loadBalancer": {"ingress": ingress}}}))
        };
        assert_eq!(
            service_address("kiln", &lb(json!([{"ip": "203.0.113.7"}])), &[]),
            Address::Reachable("tcp://203.0.113.7:443".into())
        );
        assert_eq!(
            service_address("kiln", &lb(json!([{"hostname": "gw.example.com", "ip": "203.0.113.7"}])), &[]),
            Address::Reachable("tcp://gw.example.com:443".into())
        );
        let nodes = [
            node(false, &[("ExternalIP", "198.51.100.1")]),
            node(true, &[("InternalIP", "10.0.0.2"), ("Hostname", "n2")]),
            node(true, &[("InternalIP", "10.0.0.3"), ("ExternalIP", "2001:db8::3")]),
        ];
        assert_eq!(
            service_address("kiln", &lb(json!([])), &nodes),
            Address::Reachable("tcp://[2001:db8::3]:31234".into()),
            "a load balancer still pending: its node port, on a ready node, external first"
        );
        let node_port = service(
            json!({"metadata": {"name": "gw"}, "spec": {"type": "NodePort", "ports": [{"port": 1234, "nodePort": 30000}]}}),
        );
        assert_eq!(
            service_address("kiln", &node_port, &nodes[1..2]),
            Address::Reachable("tcp://10.0.0.2:30000".into())
        );
        let in_cluster = Address::InCluster { addr: "tcp://gw.kiln.svc:1234".into(), port: 1234 };
        assert_eq!(service_address("kiln", &node_port, &[]), in_cluster, "no node to name");
        let cluster_ip = service(
            json!({"metadata": {"name": "gw"}, "spec": {"type": "ClusterIP", "ports": [{"port": 1234}]}}),
        );
        assert_eq!(service_address("kiln", &cluster_ip, &nodes), in_cluster);
    }

    #[test]
    fn the_buildx_line_names_the_files_the_pool_and_the_gateway() {
        let dir = Path::new("/home/me/kiln-ci");
        assert_eq!(
            buildx_line("kiln", dir, true, "default.kiln", "tcp://203.0.113.7:1234"),
            "docker buildx create --name kiln --driver remote --driver-opt \
             cacert=/home/me/kiln-ci/ca.pem,cert=/home/me/kiln-ci/cert.pem,key=/home/me/kiln-ci/key.pem,\
             servername=default.kiln tcp://203.0.113.7:1234"
        );
        assert_eq!(
            buildx_line("ci", dir, false, "big.builds", "tcp://gw:443"),
            "docker buildx create --name ci --driver remote --driver-opt \
             cert=/home/me/kiln-ci/cert.pem,key=/home/me/kiln-ci/key.pem,servername=big.builds tcp://gw:443"
        );
    }

    #[test]
    fn the_key_is_private_and_an_earlier_certificate_is_kept_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        write_file(&key, "first", 0o600, false).unwrap();
        assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        let e = write_file(&key, "second", 0o600, false).unwrap_err();
        assert!(matches!(e, Error::Exists { .. }), "{e}");
        assert_eq!(fs::read_to_string(&key).unwrap(), "first");
        write_file(&key, "second", 0o600, true).unwrap();
        assert_eq!(fs::read_to_string(&key).unwrap(), "second");
        assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
