//! The cluster's TLS files: where the cluster file says they are, and
//! making a new set (a CA and one member identity) for a new cluster.
//!
//! ```text
//!  DIR/ca.pem          the cluster CA's certificate: every process and client needs it
//!  DIR/ca-key.pem      the CA's key: only to issue more member certificates
//!  DIR/member.pem      a member certificate (names proto's MEMBER_NAME), signed by the CA
//!  DIR/member-key.pem  its key
//! ```
//!
//! The certificates made here are for a cluster's own use: they do not
//! expire, and anyone holding `member-key.pem` is a member. An operator may
//! use certificates from their own CA instead, as long as members'
//! certificates name [`MEMBER_NAME`] and allow both server and client
//! authentication.

use std::path::{Path, PathBuf};

use proto::transport::tls::{TlsError, TlsSettings, MEMBER_NAME};
use proto::transport::{ClientConfig, ServerConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde::{Deserialize, Serialize};

use crate::data_dir::{write_atomically, DataDirError};

/// The `[tls]` section of a cluster file. Relative paths are relative to
/// the cluster file's directory.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsEntry {
    /// The cluster CA's certificate.
    pub ca: PathBuf,
    /// This process's member certificate; without it the process is a
    /// client, which may send client requests only and cannot serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsFilesError {
    #[error("making a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("writing the TLS files: {0}")]
    Write(#[from] DataDirError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("the [tls] section names a cert without a key, or a key without a cert")]
    HalfIdentity,
}

impl TlsEntry {
    /// The same entry with relative paths made relative to `dir`.
    pub fn resolved_against(&self, dir: &Path) -> TlsEntry {
        let resolve = |p: &PathBuf| dir.join(p);
        TlsEntry {
            ca: resolve(&self.ca),
            cert: self.cert.as_ref().map(resolve),
            key: self.key.as_ref().map(resolve),
        }
    }

    /// Reads the files into TLS settings.
    pub fn settings(&self) -> Result<TlsSettings, TlsFilesError> {
        let identity = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
            (None, None) => None,
            _ => return Err(TlsFilesError::HalfIdentity),
        };
        Ok(TlsSettings::load(&self.ca, identity)?)
    }
}

/// How a process calls others: over TLS when the cluster uses it.
pub fn client_config(tls: Option<&TlsSettings>) -> ClientConfig {
    ClientConfig {
        tls: tls.map(TlsSettings::client),
        ..ClientConfig::default()
    }
}

/// How a process serves: over TLS when the cluster uses it, which takes a
/// member identity. Without TLS every peer is trusted.
pub fn server_config(tls: Option<&TlsSettings>) -> Result<ServerConfig, TlsError> {
    Ok(ServerConfig {
        tls: tls.map(TlsSettings::server).transpose()?,
        ..ServerConfig::default()
    })
}

/// Makes a new cluster CA and a member identity in `dir` (created if
/// missing); returns the entry naming them, with absolute paths.
pub fn generate(dir: &Path) -> Result<TlsEntry, TlsFilesError> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "teamlog cluster CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;

    let member_key = KeyPair::generate()?;
    let mut member_params = CertificateParams::new(vec![MEMBER_NAME.to_string()])?;
    member_params
        .distinguished_name
        .push(DnType::CommonName, "teamlog member");
    member_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    member_params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let issuer = Issuer::new(ca_params, &ca_key);
    let member_cert = member_params.signed_by(&member_key, &issuer)?;

    std::fs::create_dir_all(dir).map_err(|source| DataDirError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let dir = std::path::absolute(dir).map_err(|source| DataDirError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let entry = TlsEntry {
        ca: dir.join("ca.pem"),
        cert: Some(dir.join("member.pem")),
        key: Some(dir.join("member-key.pem")),
    };
    write_secret(&dir.join("ca-key.pem"), ca_key.serialize_pem().as_bytes())?;
    write_secret(
        entry.key.as_ref().expect("set above"),
        member_key.serialize_pem().as_bytes(),
    )?;
    write_atomically(&entry.ca, ca_cert.pem().as_bytes())?;
    write_atomically(
        entry.cert.as_ref().expect("set above"),
        member_cert.pem().as_bytes(),
    )?;
    Ok(entry)
}

/// Writes a key, readable by its owner only.
fn write_secret(path: &Path, contents: &[u8]) -> Result<(), DataDirError> {
    use std::os::unix::fs::PermissionsExt;
    write_atomically(path, contents)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        DataDirError::Io {
            path: path.to_path_buf(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_files_load_as_a_member_that_can_serve() {
        let dir = tempfile::tempdir().unwrap();
        let entry = generate(dir.path()).unwrap();
        let settings = entry.settings().unwrap();
        assert!(settings.server().is_ok());
        assert!(client_config(Some(&settings)).tls.is_some());
        assert!(server_config(Some(&settings)).unwrap().tls.is_some());

        let client_only = TlsEntry {
            cert: None,
            key: None,
            ..entry.clone()
        };
        let settings = client_only.settings().unwrap();
        assert!(client_config(Some(&settings)).tls.is_some());
        assert!(matches!(
            server_config(Some(&settings)),
            Err(TlsError::NoIdentity)
        ));

        let half = TlsEntry { key: None, ..entry };
        assert!(matches!(half.settings(), Err(TlsFilesError::HalfIdentity)));
    }
}
