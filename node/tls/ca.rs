//! The cluster CA and the certificates it issues (rcgen). A node's certificate names the
//! node (`<node>.node.murmur`, the TLS server name peers dial) and each service it may
//! act as (`<service>.svc.murmur`, checked against the caller named in a stream header).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use murmur_protocol::{NodeName, ServiceName};

/// The DNS name a node's certificate carries and peers verify.
pub fn node_server_name(node: &str) -> String {
    format!("{node}.node.murmur")
}

/// The DNS name that says a certificate may act as `service`.
pub fn service_identity(service: &str) -> String {
    format!("{service}.svc.murmur")
}

const CA_COMMON_NAME: &str = "murmur cluster CA";
/// File names inside a CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA key file, written with mode 0600.
pub const CA_KEY_FILE: &str = "ca-key.pem";

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2099, 1, 1);
    params
}

/// A node's certificate chain and key.
#[derive(Debug)]
pub struct Identity {
    /// The leaf certificate.
    pub cert: CertificateDer<'static>,
    /// Its private key (PKCS#8).
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self { cert: self.cert.clone(), key: self.key.clone_key() }
    }
}

/// Why a CA or certificate operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// rcgen could not make a key, a name or a signature.
    #[error("cannot {what}")]
    Rcgen {
        /// What was being done ("generate a key", "sign the CA certificate").
        what: &'static str,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// The CA certificate's own PEM did not parse back.
    #[error("the CA certificate is not usable")]
    CaCertificate(#[source] rustls::pki_types::pem::Error),
    /// The generated key is not a PKCS#8 key rustls takes.
    #[error("the generated key is not usable: {0}")]
    Key(&'static str),
    /// The CA directory already holds a CA.
    #[error("{} already holds a CA; remove it first or choose another --dir", dir.display())]
    Exists {
        /// The directory.
        dir: PathBuf,
    },
    /// The CA's key file is not a key.
    #[error("{} is not a key", path.display())]
    NotAKey {
        /// The file.
        path: PathBuf,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// A file or directory could not be read, written or made.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// "read", "write" or "create".
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

fn rcgen_error(what: &'static str) -> impl FnOnce(rcgen::Error) -> CaError {
    move |source| CaError::Rcgen { what, source }
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CaError {
    let path = path.to_owned();
    move |source| CaError::Io { action, path, source }
}

/// A cluster CA with its key, able to issue node certificates.
pub struct Ca {
    cert_pem: String,
    key: KeyPair,
}

impl Ca {
    /// A new CA with a fresh ECDSA P-256 key.
    pub fn generate() -> Result<Ca, CaError> {
        let key = KeyPair::generate().map_err(rcgen_error("generate a CA key"))?;
        let cert = ca_params().self_signed(&key).map_err(rcgen_error("sign the CA certificate"))?;
        Ok(Ca { cert_pem: cert.pem(), key })
    }

    /// The CA certificate in DER, for trust stores.
    pub fn cert_der(&self) -> Result<CertificateDer<'static>, CaError> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).map_err(CaError::CaCertificate)
    }

    /// Issues a certificate for `node` that may act as each of `services`.
    pub fn issue(&self, node: &NodeName, services: &[ServiceName]) -> Result<Identity, CaError> {
        let mut names = vec![node_server_name(node.as_str())];
        names.extend(services.iter().map(|s| service_identity(s.as_str())));
        let mut params = CertificateParams::new(names).map_err(rcgen_error("put the names in a certificate"))?;
        params.distinguished_name.push(DnType::CommonName, node.as_str());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2099, 1, 1);
        let key = KeyPair::generate().map_err(rcgen_error("generate a key"))?;
        // The issuer is rebuilt from the same parameters the CA certificate was made
        // from, so the leaf's issuer name matches the CA's subject byte for byte.
        let issuer = Issuer::new(ca_params(), &self.key);
        let cert = params.signed_by(&key, &issuer).map_err(rcgen_error("sign the certificate"))?;
        Ok(Identity {
            cert: cert.der().clone(),
            key: PrivateKeyDer::try_from(key.serialize_der()).map_err(CaError::Key)?,
        })
    }

    /// Writes `ca.pem` and `ca-key.pem` (0600) into `dir`, refusing to overwrite.
    pub fn save(&self, dir: &Path) -> Result<(), CaError> {
        std::fs::create_dir_all(dir).map_err(io_error("create", dir))?;
        let cert = dir.join(CA_CERT_FILE);
        let key = dir.join(CA_KEY_FILE);
        if cert.exists() || key.exists() {
            return Err(CaError::Exists { dir: dir.to_owned() });
        }
        write_file(&cert, &self.cert_pem, 0o644)?;
        write_file(&key, &self.key.serialize_pem(), 0o600)
    }

    /// Loads a CA written by [`Ca::save`].
    pub fn load(dir: &Path) -> Result<Ca, CaError> {
        let read = |path: &Path| std::fs::read_to_string(path).map_err(io_error("read", path));
        let cert_pem = read(&dir.join(CA_CERT_FILE))?;
        let key_path = dir.join(CA_KEY_FILE);
        let key = KeyPair::from_pem(&read(&key_path)?).map_err(|source| CaError::NotAKey { path: key_path, source })?;
        Ok(Ca { cert_pem, key })
    }

    /// The CA certificate as PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }
}

/// Writes `text` to `path` with `mode`.
pub fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), CaError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io_error("write", path))?;
    f.write_all(text.as_bytes()).map_err(io_error("write", path))
}

/// PEM text of a certificate.
pub fn cert_pem(cert: &CertificateDer<'_>) -> String {
    pem_block("CERTIFICATE", cert.as_ref())
}

/// PEM text of a PKCS#8 key.
pub fn key_pem(key: &PrivateKeyDer<'_>) -> String {
    pem_block("PRIVATE KEY", key.secret_der())
}

fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
