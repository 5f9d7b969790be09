//! Mutual TLS between cluster members (rustls, TLS 1.3, ring): a peer's
//! certificate decides what it may ask.
//!
//! ```text
//!  member ── presents a certificate the cluster CA signed ──▶ every request
//!  client ── presents none; checks the server against the CA ──▶ client requests only
//! ```
//!
//! Every member's certificate names [`MEMBER_NAME`] and is good for both
//! server and client authentication, so any member can serve and call any
//! other whatever its address. A server sends its certificate to everyone
//! and asks each peer for one; a peer that sends none is a client
//! ([`Message::is_client_request`](crate::rpc::Message::is_client_request)).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

/// The name every member's certificate carries, and that a caller checks
/// on the server it connects to.
pub const MEMBER_NAME: &str = "member.teamlog";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {reason}")]
    Pem { what: String, reason: String },
    #[error("TLS set-up: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("TLS client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// Serving takes a certificate and key; a process with only the CA can
    /// call, as a client.
    #[error("serving over TLS needs this process's certificate and key")]
    NoIdentity,
}

/// This process's part in the cluster's TLS: the cluster's CA, and for a
/// member its certificate and key.
#[derive(Clone, Debug)]
pub struct TlsSettings {
    client: Arc<rustls::ClientConfig>,
    server: Option<Arc<rustls::ServerConfig>>,
}

/// A certificate chain and its private key, PEM encoded.
pub struct PemIdentity<'a> {
    pub cert_chain: &'a [u8],
    pub key: &'a [u8],
}

impl TlsSettings {
    /// From PEM text: the CA certificate(s), and the member's identity if
    /// this process is one.
    pub fn from_pem(ca: &[u8], identity: Option<PemIdentity<'_>>) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca) {
            roots.add(cert.map_err(|e| pem_error("the CA certificate", e))?)?;
        }
        if roots.is_empty() {
            return Err(TlsError::Pem {
                what: "the CA certificate".into(),
                reason: "no certificate found".into(),
            });
        }
        let roots = Arc::new(roots);
        let identity = identity.map(parse_identity).transpose()?;

        let client = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(Arc::clone(&roots));
        let client = match &identity {
            Some((chain, key)) => client.with_client_auth_cert(chain.clone(), key.clone_key())?,
            None => client.with_no_client_auth(),
        };
        let server = match identity {
            Some((chain, key)) => Some(Arc::new(server_config(&provider, roots, chain, key)?)),
            None => None,
        };
        Ok(TlsSettings {
            client: Arc::new(client),
            server,
        })
    }

    /// From PEM files, as [`TlsSettings::from_pem`].
    pub fn load(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Self, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        let ca = read(ca)?;
        let identity = match identity {
            Some((cert, key)) => Some((read(cert)?, read(key)?)),
            None => None,
        };
        Self::from_pem(
            &ca,
            identity
                .as_ref()
                .map(|(cert_chain, key)| PemIdentity { cert_chain, key }),
        )
    }

    /// What this process calls others with.
    pub fn client(&self) -> Arc<rustls::ClientConfig> {
        Arc::clone(&self.client)
    }

    /// What this process serves with; only a member can serve.
    pub fn server(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        self.server.clone().ok_or(TlsError::NoIdentity)
    }
}

/// The name a caller checks the server's certificate against.
pub(super) fn member_server_name() -> ServerName<'static> {
    ServerName::try_from(MEMBER_NAME).expect("MEMBER_NAME is a valid DNS name")
}

type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn parse_identity(identity: PemIdentity<'_>) -> Result<Identity, TlsError> {
    let chain = CertificateDer::pem_slice_iter(identity.cert_chain)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error("the member certificate", e))?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            what: "the member certificate".into(),
            reason: "no certificate found".into(),
        });
    }
    let key =
        PrivateKeyDer::from_pem_slice(identity.key).map_err(|e| pem_error("the member key", e))?;
    Ok((chain, key))
}

fn server_config(
    provider: &Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig, TlsError> {
    // Peers without a certificate are let in as clients; one that presents
    // a certificate must chain to the cluster's CA.
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, Arc::clone(provider))
        .allow_unauthenticated()
        .build()?;
    Ok(
        rustls::ServerConfig::builder_with_provider(Arc::clone(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?,
    )
}

fn pem_error(what: &str, e: rustls::pki_types::pem::Error) -> TlsError {
    TlsError::Pem {
        what: what.into(),
        reason: e.to_string(),
    }
}
