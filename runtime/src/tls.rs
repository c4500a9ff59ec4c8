//! TLS for orch (docs/security.md): the cluster's certificates
//! (`orchctl tls init|node`), mutual TLS on the cluster link and the data
//! plane, and TLS on the admin API.
//!
//! A node certificate names its node twice: as a DNS name (for ordinary
//! host name checks) and as the URI `urn:orch:node:{name}`, which is the
//! identity the cluster link checks against the name the peer gives in the
//! ractor_cluster handshake. A certificate that may serve as master also
//! carries `urn:orch:role:master`. Keys are written with mode 0600.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use orch_actors::identity::Identity;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// URI SAN prefix of a node certificate's identity.
pub const NODE_URI: &str = "urn:orch:node:";
/// URI SAN of a certificate that may serve as master.
pub const MASTER_URI: &str = "urn:orch:role:master";
/// Largest certificate or key file read.
const MAX_PEM: u64 = 1 << 20;

/// The files of `[cluster] tls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// A node's TLS material, loaded and checked.
#[derive(Clone)]
pub struct Tls {
    /// Who this node's certificate says it is.
    pub identity: Identity,
    /// Cluster port and data plane: a client certificate of the cluster's CA is required.
    pub mutual: Arc<ServerConfig>,
    /// Dialing peers and data planes: presents this node's certificate,
    /// accepts any node certificate of the cluster's CA.
    pub client: Arc<ClientConfig>,
    /// The admin API: this node's certificate, no client certificate.
    pub admin: Arc<ServerConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read_pem(what: &str, path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let f = std::fs::File::open(path)
        .map_err(|e| format!("cannot read the {what} `{}`: {e}", path.display()))?;
    let mut bytes = Vec::new();
    f.take(MAX_PEM + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the {what} `{}`: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_PEM {
        return Err(format!(
            "the {what} `{}` is larger than {MAX_PEM} bytes; expected a PEM file",
            path.display()
        ));
    }
    Ok(bytes)
}

fn certs(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read_pem(what, path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the {what} `{}` is not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "the {what} `{}` holds no `BEGIN CERTIFICATE` block",
            path.display()
        ));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = read_pem("key", path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        format!(
            "the key `{}` holds no private key in PEM: {e}",
            path.display()
        )
    })
}

/// Who a certificate names: its `urn:orch:node:` URI, and whether it may be master.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<Identity, String> {
    use x509_parser::extensions::GeneralName;
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let mut name = None;
    let mut master = false;
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::URI(uri) = n {
                if let Some(node) = uri.strip_prefix(NODE_URI) {
                    if name.replace(node.to_string()).is_some() {
                        return Err("it names more than one orch node".into());
                    }
                } else if *uri == MASTER_URI {
                    master = true;
                }
            }
        }
    }
    match name {
        Some(name) if !name.is_empty() => Ok(Identity { name, master }),
        _ => Err(format!(
            "it names no orch node (no `{NODE_URI}NAME` subject alternative name; make node certificates with `orchctl tls node`)"
        )),
    }
}

/// The identity of the peer of an established TLS connection.
pub fn peer_identity(conn: &rustls::CommonState) -> Result<Identity, String> {
    let cert = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("the peer presented no certificate")?;
    identity_of(cert).map_err(|e| format!("the peer's certificate is not an orch node's: {e}"))
}

/// Load and check `[cluster] tls`; `node`: the node's configured name,
/// which its certificate must carry.
pub fn load(paths: &TlsPaths, node: &str) -> Result<Tls, String> {
    let chain = certs("certificate", &paths.cert)?;
    let key = key(&paths.key)?;
    let ca = certs("CA certificate", &paths.ca)?;
    let identity = identity_of(&chain[0])
        .map_err(|e| format!("the certificate `{}`: {e}", paths.cert.display()))?;
    if identity.name != node {
        return Err(format!(
            "the certificate `{}` names node `{}`, but this node is `{node}` (`node.name`); make one with `orchctl tls node DIR {node}`",
            paths.cert.display(),
            identity.name
        ));
    }
    let mut roots = RootCertStore::empty();
    for c in &ca {
        roots.add(c.clone()).map_err(|e| {
            format!(
                "the CA certificate `{}` is not usable: {e}",
                paths.ca.display()
            )
        })?;
    }
    let roots = Arc::new(roots);
    let provider = provider();
    // The node's own certificate must chain to the CA it trusts.
    let check = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| format!("the CA certificate `{}`: {e}", paths.ca.display()))?;
    check
        .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
        .map_err(|e| {
            format!(
                "the certificate `{}` is not signed by the CA `{}` (or has expired): {e}",
                paths.cert.display(),
                paths.ca.display()
            )
        })?;
    let versions = rustls::DEFAULT_VERSIONS;
    // Between nodes TLS 1.2 (ECDHE with AEAD ciphers only, as rustls
    // offers): a peer without a certificate of the CA is then refused
    // within the handshake, which every client reports as a failure.
    // Under TLS 1.3 a server can refuse only after the client has
    // finished its side, and `openssl s_client` says `Verify return
    // code: 0 (ok)` before it reads the alert.
    let mutual = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(check)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| {
            format!(
                "the key `{}` does not fit the certificate `{}`: {e}",
                paths.key.display(),
                paths.cert.display()
            )
        })?;
    let admin = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| e.to_string())?;
    let verifier = NodeVerifier::new(roots, provider.clone())?;
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain, key)
        .map_err(|e| e.to_string())?;
    Ok(Tls {
        identity,
        mutual: Arc::new(mutual),
        client: Arc::new(client),
        admin: Arc::new(admin),
    })
}

/// A client configuration that trusts the CA in `ca` and checks the
/// server's host name as usual (`orchctl` against an admin API over TLS).
pub fn admin_client(ca: &Path) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    for c in certs("CA certificate", ca)? {
        roots
            .add(c)
            .map_err(|e| format!("the CA certificate `{}` is not usable: {e}", ca.display()))?;
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Accepts a server certificate of the cluster's CA for any orch node: the
/// name is checked against the one the certificate itself carries, and the
/// cluster link then checks that name against the peer's handshake name.
#[derive(Debug)]
struct NodeVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    provider: Arc<CryptoProvider>,
}

impl NodeVerifier {
    fn new(roots: Arc<RootCertStore>, provider: Arc<CryptoProvider>) -> Result<Self, String> {
        let inner =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| e.to_string())?;
        Ok(Self { inner, provider })
    }
}

impl ServerCertVerifier for NodeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let id = identity_of(end_entity).map_err(rustls::Error::General)?;
        let name = ServerName::try_from(id.name.clone()).map_err(|_| {
            rustls::Error::General(format!("node name `{}` is not a DNS name", id.name))
        })?;
        self.inner
            .verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The server name a dialer presents: any valid one (see [`NodeVerifier`]).
pub fn dial_name() -> ServerName<'static> {
    ServerName::try_from("orch-node").expect("a valid DNS name")
}

// ---- certificates: `orchctl tls init DIR`, `orchctl tls node DIR NAME` ----

/// The CA files in `dir`.
pub fn ca_files(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("ca.crt"), dir.join("ca.key"))
}

/// A node's files in `dir`.
pub fn node_files(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    )
}

/// Write `text` to a new file `path` (never over an existing one) with `mode`.
fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => format!(
                "`{}` exists; it is left as it is (remove it first to make a new one)",
                path.display()
            ),
            _ => format!("cannot create `{}`: {e}", path.display()),
        })?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("cannot write `{}`: {e}", path.display()))
}

fn validity(params: &mut rcgen::CertificateParams, days: u32) {
    let now = std::time::SystemTime::now();
    // An hour back: clocks of a farm's hosts differ a little.
    params.not_before = (now - std::time::Duration::from_secs(3600)).into();
    params.not_after = (now + std::time::Duration::from_secs(u64::from(days) * 86_400)).into();
}

/// Make a cluster CA in `dir`: `ca.crt` and `ca.key` (0600). Existing files are never replaced.
pub fn init_ca(dir: &Path, days: u32) -> Result<Vec<PathBuf>, String> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
    let (crt, key_path) = ca_files(dir);
    for p in [&crt, &key_path] {
        if p.exists() {
            return Err(format!(
                "`{}` exists; a CA is made once (remove it first to make a new one, then every node certificate anew)",
                p.display()
            ));
        }
    }
    let key = KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "orch cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, days);
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("cannot sign the CA certificate: {e}"))?;
    write_new(&key_path, &key.serialize_pem(), 0o600)?;
    write_new(&crt, &cert.pem(), 0o644)?;
    Ok(vec![crt, key_path])
}

/// What `orchctl tls node` puts in a node certificate.
#[derive(Debug, Clone, Default)]
pub struct NodeCert {
    pub name: String,
    /// May serve as master.
    pub master: bool,
    /// More host names and IP addresses (for the admin API's host name check).
    pub hosts: Vec<String>,
    pub days: u32,
}

/// Make a node certificate signed by the CA in `dir`: `{name}.crt` and
/// `{name}.key` (0600).
pub fn issue_node(dir: &Path, spec: &NodeCert) -> Result<Vec<PathBuf>, String> {
    use rcgen::{
        CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose,
        SanType,
    };
    let name = &spec.name;
    crate::config::check_node_name(name).map_err(|e| format!("node name `{name}`: {e}"))?;
    let (ca_crt, ca_key) = ca_files(dir);
    let ca_pem = String::from_utf8(read_pem("CA certificate", &ca_crt).map_err(|e| {
        format!(
            "{e} (make the CA first with `orchctl tls init {}`)",
            dir.display()
        )
    })?)
    .map_err(|_| format!("`{}` is not PEM text", ca_crt.display()))?;
    let ca_key_pem = String::from_utf8(read_pem("CA key", &ca_key)?)
        .map_err(|_| format!("`{}` is not PEM text", ca_key.display()))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)
        .map_err(|e| format!("the CA key `{}`: {e}", ca_key.display()))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)
        .map_err(|e| format!("the CA certificate `{}`: {e}", ca_crt.display()))?;
    let (crt, key_path) = node_files(dir, name);
    for p in [&crt, &key_path] {
        if p.exists() {
            return Err(format!(
                "`{}` exists; it is left as it is (remove it first to make a new one)",
                p.display()
            ));
        }
    }
    let ia5 = |s: &str| {
        rcgen::string::Ia5String::try_from(s.to_string())
            .map_err(|e| format!("`{s}` cannot go into a certificate: {e}"))
    };
    let mut sans = vec![
        SanType::DnsName(ia5(name)?),
        SanType::URI(ia5(&format!("{NODE_URI}{name}"))?),
        SanType::DnsName(ia5("localhost")?),
        SanType::IpAddress(IpAddr::from([127, 0, 0, 1])),
    ];
    if spec.master {
        sans.push(SanType::URI(ia5(MASTER_URI)?));
    }
    for h in &spec.hosts {
        sans.push(match h.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(ia5(h)?),
        });
    }
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, name.as_str());
    params.subject_alt_names = sans;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, spec.days);
    let key = KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| format!("cannot sign the certificate of `{name}`: {e}"))?;
    write_new(&key_path, &key.serialize_pem(), 0o600)?;
    write_new(&crt, &cert.pem(), 0o644)?;
    Ok(vec![crt, key_path])
}

// ---- serving HTTP over TLS (the admin API, the data plane) ----

/// Most TLS handshakes in progress on one listener.
const MAX_HANDSHAKES: usize = 256;
/// A TLS handshake that takes longer than this is dropped.
const HANDSHAKE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// A listener that hands axum connections whose TLS handshake is done.
/// Handshakes run beside the accept loop (at most [`MAX_HANDSHAKES`] at
/// once, each within [`HANDSHAKE_DEADLINE`]), so a slow or silent client
/// never holds up the next one; failures are counted by `port` and logged
/// at most every 10 s.
pub struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        std::net::SocketAddr,
    )>,
    local: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsListener {
    pub fn new(
        listener: tokio::net::TcpListener,
        config: Arc<ServerConfig>,
        port: &'static str,
        node: String,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        let said = Arc::new(crate::cluster_port::Said::default());
        let task = tokio::spawn(async move {
            let mut backoff = None;
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(x) => {
                        backoff = None;
                        x
                    }
                    Err(_) => {
                        let wait = crate::cluster_port::accept_backoff(backoff);
                        backoff = Some(wait);
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    metrics::counter!(crate::metrics::TLS_HANDSHAKE_FAILURES, "port" => port, "reason" => "too_many").increment(1);
                    continue; // dropped: too many handshakes at once
                };
                let (acceptor, tx, said, node) =
                    (acceptor.clone(), tx.clone(), said.clone(), node.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let failed = |reason: &'static str, why: String| {
                        metrics::counter!(crate::metrics::TLS_HANDSHAKE_FAILURES, "port" => port, "reason" => reason).increment(1);
                        if let Some(n) = said.due() {
                            tracing::warn!(node_id = %node, addr = %peer, connections = n, "{port} connection refused: {why}");
                        }
                    };
                    match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(stream)).await {
                        Ok(Ok(conn)) => {
                            let _ = tx.send((conn, peer)).await;
                        }
                        Ok(Err(e)) => failed("handshake", format!("TLS handshake failed: {e}")),
                        Err(_) => failed(
                            "timeout",
                            format!("no TLS handshake within {HANDSHAKE_DEADLINE:?}"),
                        ),
                    }
                });
            }
        });
        Ok(Self { rx, local, task })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Serve `router` on `listener`, over TLS with `tls` when given, until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<(Arc<ServerConfig>, &'static str, String)>,
    router: axum::Router,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    match tls {
        None => {
            axum::serve(listener, router)
                .with_graceful_shutdown(stop)
                .await
        }
        Some((config, port, node)) => {
            let l = TlsListener::new(listener, config, port, node)?;
            axum::serve(l, router).with_graceful_shutdown(stop).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(dir: &Path, name: &str, master: bool) {
        issue_node(
            dir,
            &NodeCert {
                name: name.into(),
                master,
                hosts: vec!["render-01.example".into(), "10.0.0.5".into()],
                days: 30,
            },
        )
        .unwrap();
    }

    #[test]
    fn a_node_certificate_names_its_node_and_role_and_its_key_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), 365).unwrap();
        node(dir.path(), "node-0", true);
        node(dir.path(), "node-1", false);
        for k in ["ca.key", "node-0.key", "node-1.key"] {
            let mode = std::fs::metadata(dir.path().join(k))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{k}");
        }
        let paths = |n: &str| TlsPaths {
            cert: dir.path().join(format!("{n}.crt")),
            key: dir.path().join(format!("{n}.key")),
            ca: dir.path().join("ca.crt"),
        };
        let t0 = load(&paths("node-0"), "node-0").unwrap();
        assert_eq!(
            t0.identity,
            Identity {
                name: "node-0".into(),
                master: true
            }
        );
        let t1 = load(&paths("node-1"), "node-1").unwrap();
        assert_eq!(
            t1.identity,
            Identity {
                name: "node-1".into(),
                master: false
            }
        );
        // A certificate under another name is refused, naming both.
        let e = load(&paths("node-1"), "node-2").unwrap_err();
        assert!(
            e.contains("names node `node-1`") && e.contains("`node-2`"),
            "{e}"
        );
        // Nothing is overwritten.
        let e = init_ca(dir.path(), 365).unwrap_err();
        assert!(e.contains("exists"), "{e}");
        let e = issue_node(
            dir.path(),
            &NodeCert {
                name: "node-1".into(),
                days: 1,
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.contains("exists"), "{e}");
    }

    #[test]
    fn a_certificate_of_another_ca_is_refused_at_load() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        init_ca(a.path(), 365).unwrap();
        init_ca(b.path(), 365).unwrap();
        node(b.path(), "node-1", false);
        let e = load(
            &TlsPaths {
                cert: b.path().join("node-1.crt"),
                key: b.path().join("node-1.key"),
                ca: a.path().join("ca.crt"),
            },
            "node-1",
        )
        .unwrap_err();
        assert!(e.contains("is not signed by the CA"), "{e}");
    }

    #[test]
    fn garbage_in_place_of_pem_is_one_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.crt");
        for bytes in [
            &b""[..],
            b"hello",
            b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        ] {
            std::fs::write(&f, bytes).unwrap();
            let e = certs("certificate", &f).unwrap_err();
            assert!(e.contains("x.crt"), "{e}");
        }
        assert!(identity_of(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])).is_err());
    }
}
