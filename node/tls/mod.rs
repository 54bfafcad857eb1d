//! Mutual TLS between sidecars: rustls configs for quinn, built from the cluster CA and
//! this node's certificate, and the check that a peer's certificate names the service it
//! claims to call as. The only module besides `proxy/` that knows rustls and quinn.

pub mod ca;

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

pub use ca::{node_server_name, service_identity, Ca, CaError, Identity};

/// ALPN of the sidecar protocol; a peer speaking anything else is refused.
pub const ALPN: &[u8] = b"murmur/1";

/// What the sidecar's TLS is built from.
#[derive(Clone, Debug)]
pub enum TlsMaterial {
    /// The cluster CA and this node's certificate: mutual TLS.
    Mutual {
        /// Trust anchors: the cluster CA, or during a CA change the old one and the new
        /// one (every certificate in `--tls-ca`).
        ca: Vec<CertificateDer<'static>>,
        /// This node's certificate and key.
        identity: Identity,
    },
    /// `--insecure` without certificates: encrypted, but nobody is authenticated.
    Insecure {
        /// A throwaway self-signed identity.
        identity: Identity,
    },
}

/// One of the three TLS settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsSetting {
    /// `--tls-ca`.
    Ca,
    /// `--tls-cert`.
    Cert,
    /// `--tls-key`.
    Key,
}

impl TlsSetting {
    /// The flag that sets it.
    pub fn flag(self) -> &'static str {
        match self {
            TlsSetting::Ca => "--tls-ca",
            TlsSetting::Cert => "--tls-cert",
            TlsSetting::Key => "--tls-key",
        }
    }
}

/// Why the TLS files could not be loaded; [`LoadError::setting`] says which one to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// A setting's PEM could not be read: a path that cannot be read, or no PEM item in
    /// it. Where it came from is named, never its text (it may be a private key).
    #[error("cannot read {what} from {from}")]
    Pem {
        /// Which setting.
        setting: TlsSetting,
        /// "a certificate" or "a key".
        what: &'static str,
        /// The path, or "the PEM text given in place of a path".
        from: String,
        /// What the PEM reader found.
        source: rustls::pki_types::pem::Error,
    },
    /// The certificate and the key do not make a TLS config (a key that is not the
    /// certificate's, an unsupported key type).
    #[error("the certificate and key are not usable")]
    Unusable(#[source] BuildError),
}

/// Why a rustls config could not be built from the material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A CA certificate is not one rustls can trust.
    #[error("a certificate in --tls-ca is not a usable CA certificate")]
    Roots(#[source] rustls::Error),
    /// The client-certificate verifier could not be built from the CAs.
    #[error("cannot verify client certificates with the CAs in --tls-ca")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    /// The crypto provider refused TLS 1.3.
    #[error("the crypto provider does not offer TLS 1.3")]
    Versions(#[source] rustls::Error),
    /// The key is not the certificate's, or of a type rustls does not take.
    #[error("the certificate and the key do not match")]
    KeyMismatch(#[source] rustls::Error),
}

/// Why a certificate does not fit this node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// The CAs could not be used to verify.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The certificate was not issued by a CA in `--tls-ca` (or has expired).
    #[error("the certificate does not chain to the CA in --tls-ca")]
    Chain(#[source] rustls::Error),
    /// The certificate does not parse as an X.509 end-entity certificate.
    #[error("not a certificate")]
    NotACertificate(#[source] webpki::Error),
    /// The node name does not make a DNS name.
    #[error("node name {node} is not a DNS name")]
    NodeName {
        /// The node name.
        node: String,
        /// Why it is not.
        source: rustls::pki_types::InvalidDnsNameError,
    },
    /// The certificate names another node.
    #[error("the certificate is not for node {node}; issue one with `murmur cert issue --name {node}`")]
    WrongNode {
        /// This node.
        node: String,
    },
    /// The certificate does not name the service the sidecar calls as.
    #[error("the certificate does not name service {service}; add --service {service} when issuing it")]
    MissingService {
        /// The service.
        service: String,
    },
}

impl LoadError {
    /// The setting to fix.
    pub fn setting(&self) -> TlsSetting {
        match self {
            LoadError::Pem { setting, .. } => *setting,
            LoadError::Unusable(_) => TlsSetting::Cert,
        }
    }
}

/// A trust store holding only the cluster CA (or CAs).
fn roots(ca: &[CertificateDer<'static>]) -> Result<RootCertStore, BuildError> {
    let mut roots = RootCertStore::empty();
    for c in ca {
        roots.add(c.clone()).map_err(BuildError::Roots)?;
    }
    Ok(roots)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsMaterial {
    /// Loads `--tls-ca`, `--tls-cert` and `--tls-key`.
    ///
    /// Each setting is a path, or the PEM text itself when it starts with `-----BEGIN`
    /// (ECS hands secrets to a container only as environment variables).
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<TlsMaterial, LoadError> {
        let unreadable = |setting, what| move |(from, source)| LoadError::Pem { setting, what, from, source };
        let ca = pem_certificates(ca).map_err(unreadable(TlsSetting::Ca, "a certificate"))?;
        let cert_der = pem::<CertificateDer>(cert).map_err(unreadable(TlsSetting::Cert, "a certificate"))?;
        let key = pem::<PrivateKeyDer>(key).map_err(unreadable(TlsSetting::Key, "a key"))?;
        // The key must match the certificate; `check` (run by config) then checks the
        // certificate against the CA and the node's names, so mistakes fail at start.
        let material = TlsMaterial::Mutual { ca, identity: Identity { cert: cert_der, key } };
        material.server_config().map_err(LoadError::Unusable)?;
        Ok(material)
    }
}

/// Every certificate of a PEM setting (a CA bundle), read as [`pem`] reads one.
fn pem_certificates(setting: &Path) -> Result<Vec<CertificateDer<'static>>, (String, rustls::pki_types::pem::Error)> {
    let text = setting.as_os_str().as_encoded_bytes();
    let (from, all) = if text.trim_ascii_start().starts_with(b"-----BEGIN") {
        ("the PEM text given in place of a path".to_owned(), CertificateDer::pem_slice_iter(text).collect())
    } else {
        match CertificateDer::pem_file_iter(setting) {
            Ok(iter) => (setting.display().to_string(), iter.collect()),
            Err(e) => return Err((setting.display().to_string(), e)),
        }
    };
    match all {
        Ok(v) if Vec::is_empty(&v) => Err((from, rustls::pki_types::pem::Error::NoItemsFound)),
        Ok(v) => Ok(v),
        Err(e) => Err((from, e)),
    }
}

/// Reads a PEM setting: the text itself when it starts with `-----BEGIN`, else a path. The
/// error names where it came from, never the text (it may be a private key).
fn pem<T: PemObject>(setting: &Path) -> Result<T, (String, rustls::pki_types::pem::Error)> {
    let text = setting.as_os_str().as_encoded_bytes();
    if text.trim_ascii_start().starts_with(b"-----BEGIN") {
        T::from_pem_slice(text).map_err(|e| ("the PEM text given in place of a path".to_owned(), e))
    } else {
        T::from_pem_file(setting).map_err(|e| (setting.display().to_string(), e))
    }
}

impl TlsMaterial {
    /// Checks that the certificate chains to the CA, names node `node` and, when given,
    /// the service the sidecar calls as. Nothing to check without mutual TLS.
    pub fn check(&self, node: &str, identity: Option<&str>) -> Result<(), CheckError> {
        let TlsMaterial::Mutual { ca, identity: id } = self else { return Ok(()) };
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
            .build()
            .map_err(BuildError::Verifier)?;
        verifier.verify_client_cert(&id.cert, &[], UnixTime::now()).map_err(CheckError::Chain)?;
        let ee = webpki::EndEntityCert::try_from(&id.cert).map_err(CheckError::NotACertificate)?;
        let name = ServerName::try_from(node_server_name(node))
            .map_err(|source| CheckError::NodeName { node: node.to_owned(), source })?;
        ee.verify_is_valid_for_subject_name(&name).map_err(|_| CheckError::WrongNode { node: node.to_owned() })?;
        if let Some(service) = identity {
            if !cert_names_service(&id.cert, service) {
                return Err(CheckError::MissingService { service: service.to_owned() });
            }
        }
        Ok(())
    }

    /// Throwaway material for `--insecure` proxying.
    pub fn insecure(node: &murmur_protocol::NodeName) -> Result<TlsMaterial, CaError> {
        let ca = Ca::generate()?;
        Ok(TlsMaterial::Insecure { identity: ca.issue(node, &[])? })
    }

    /// The services this node's own certificate names.
    pub fn services_named(&self) -> Vec<String> {
        services_named(&self.identity().cert)
    }

    /// Whether peers are authenticated.
    pub fn is_mutual(&self) -> bool {
        matches!(self, TlsMaterial::Mutual { .. })
    }

    fn identity(&self) -> &Identity {
        match self {
            TlsMaterial::Mutual { identity, .. } | TlsMaterial::Insecure { identity } => identity,
        }
    }

    /// The rustls server config (TLS 1.3, client certificates required under mutual TLS).
    pub fn server_config(&self) -> Result<rustls::ServerConfig, BuildError> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(BuildError::Versions)?;
        let id = self.identity();
        let mut config = match self {
            TlsMaterial::Mutual { ca, .. } => {
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                    .build()
                    .map_err(BuildError::Verifier)?;
                builder.with_client_cert_verifier(verifier)
            }
            TlsMaterial::Insecure { .. } => builder.with_no_client_auth(),
        }
        .with_single_cert(vec![id.cert.clone()], id.key.clone_key())
        .map_err(BuildError::KeyMismatch)?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// The rustls client config (TLS 1.3, presenting this node's certificate).
    pub fn client_config(&self) -> Result<rustls::ClientConfig, BuildError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(BuildError::Versions)?;
        let id = self.identity();
        let mut config = match self {
            TlsMaterial::Mutual { ca, .. } => builder
                .with_root_certificates(roots(ca)?)
                .with_client_auth_cert(vec![id.cert.clone()], id.key.clone_key()),
            TlsMaterial::Insecure { .. } => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider())))
                .with_client_auth_cert(vec![id.cert.clone()], id.key.clone_key()),
        }
        .map_err(BuildError::KeyMismatch)?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }
}

/// The services `cert` names (its `<service>.svc.murmur` names), each checked the way a
/// peer checks it.
pub fn services_named(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else { return Vec::new() };
    let suffix = service_identity("");
    let mut names: Vec<String> = ee
        .valid_dns_names()
        .filter_map(|n| n.strip_suffix(suffix.as_str()))
        .filter(|s| !s.is_empty() && cert_names_service(cert, s))
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Whether `cert` (already verified against the CA by the handshake) names `service`.
pub fn cert_names_service(cert: &CertificateDer<'_>, service: &str) -> bool {
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else { return false };
    let Ok(name) = ServerName::try_from(service_identity(service)) else { return false };
    ee.verify_is_valid_for_subject_name(&name).is_ok()
}

/// `--insecure` only: accepts any server certificate, still checking handshake
/// signatures so the session keys are bound to the presented key.
#[derive(Debug)]
struct AcceptAnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use murmur_protocol::{NodeName, ServiceName};

    #[test]
    fn issued_certificates_name_their_services_and_chain_to_the_ca() {
        let ca = Ca::generate().expect("ca");
        let id =
            ca.issue(&NodeName::new("n1").expect("valid"), &[ServiceName::new("web").expect("valid")]).expect("issue");
        assert!(cert_names_service(&id.cert, "web"));
        assert!(!cert_names_service(&id.cert, "orders"));
        assert_eq!(services_named(&id.cert), ["web"]);
        let two = [ServiceName::new("b").expect("valid"), ServiceName::new("a").expect("valid")];
        let both = ca.issue(&NodeName::new("n1").expect("valid"), &two).expect("issue");
        assert_eq!(services_named(&both.cert), ["a", "b"]);
        let none = ca.issue(&NodeName::new("n1").expect("valid"), &[]).expect("issue");
        assert!(services_named(&none.cert).is_empty(), "the node's own name is not a service");
        let m = TlsMaterial::Mutual { ca: vec![ca.cert_der().expect("der")], identity: id };
        assert!(m.server_config().is_ok());
        assert!(m.client_config().is_ok());
    }

    #[test]
    fn a_ca_survives_save_and_load() {
        let dir = std::env::temp_dir().join(format!("murmur-ca-{}-{}", std::process::id(), rand::random::<u32>()));
        let ca = Ca::generate().expect("ca");
        ca.save(&dir).expect("save");
        assert!(ca.save(&dir).is_err(), "no overwrite");
        let loaded = Ca::load(&dir).expect("load");
        let id = loaded.issue(&NodeName::new("n2").expect("valid"), &[]).expect("issue");
        // The reloaded CA still issues certificates that the original trusts.
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der().expect("der")).expect("root");
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build().expect("verifier");
        let now = UnixTime::now();
        assert!(verifier.verify_client_cert(&id.cert, &[], now).is_ok());
        let other = Ca::generate().expect("ca").issue(&NodeName::new("n3").expect("valid"), &[]).expect("issue");
        assert!(verifier.verify_client_cert(&other.cert, &[], now).is_err(), "another CA's certificate is refused");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn pem_text_in_place_of_a_path_loads_and_its_errors_never_show_it() {
        use crate::tls::ca::{cert_pem, key_pem};
        let ca = Ca::generate().expect("ca");
        let id = ca.issue(&NodeName::new("n1").expect("valid"), &[]).expect("issue");
        let text = |s: String| std::path::PathBuf::from(s);
        let (ca_pem, cert, key) = (text(ca.cert_pem().to_owned()), text(cert_pem(&id.cert)), text(key_pem(&id.key)));
        let m = TlsMaterial::load(&ca_pem, &cert, &key).expect("inline PEM loads");
        assert!(m.check("n1", None).is_ok());
        let broken = text(format!("{}garbage", &key_pem(&id.key)[..40]));
        let err = TlsMaterial::load(&ca_pem, &cert, &broken).expect_err("a torn key");
        assert_eq!(err.setting(), TlsSetting::Key);
        let err = format!("{err}: {}", std::error::Error::source(&err).expect("the PEM error"));
        assert!(err.starts_with("cannot read a key from the PEM text"), "{err}");
        assert!(!err.contains("garbage") && !err.contains("PRIVATE KEY-----"), "the key never shows: {err}");
    }

    #[test]
    fn a_ca_bundle_trusts_both_cas_while_the_ca_changes() {
        use crate::tls::ca::{cert_pem, key_pem};
        let (old, new) = (Ca::generate().expect("ca"), Ca::generate().expect("ca"));
        let node = NodeName::new("n1").expect("valid");
        let on_new = new.issue(&node, &[]).expect("issue");
        let text = |s: String| std::path::PathBuf::from(s);
        let bundle = text(format!("{}{}", old.cert_pem(), new.cert_pem()));
        let (cert, key) = (text(cert_pem(&on_new.cert)), text(key_pem(&on_new.key)));
        let m = TlsMaterial::load(&bundle, &cert, &key).expect("a bundle loads");
        assert!(matches!(&m, TlsMaterial::Mutual { ca, .. } if ca.len() == 2));
        assert!(m.check("n1", None).is_ok(), "a certificate of the new CA chains to the bundle");
        let only_old = TlsMaterial::load(&text(old.cert_pem().to_owned()), &cert, &key).expect("loads");
        assert!(only_old.check("n1", None).is_err(), "and not to the old CA alone");
        let none = TlsMaterial::load(&text("-----BEGIN nothing".into()), &cert, &key);
        assert!(none.is_err(), "a CA setting without a certificate is refused");
    }
}
