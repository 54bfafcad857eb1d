//! Proxy mode's settings, checked: the sidecar's TLS, the identity it calls as, the
//! upstreams and their VIPs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use murmur_protocol::NodeName;

use crate::config::upstream::DEFAULT_PROXY_PORT;
use crate::config::{ConfigError, ServiceSpec, Settings, UpstreamSpec};
use crate::error::chain;
use crate::tls::{CheckError, LoadError, TlsMaterial};

/// The PEM files of a sidecar's mutual TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA (`--tls-ca`): every certificate in it is trusted.
    pub ca: std::path::PathBuf,
    /// This node's certificate (`--tls-cert`), issued by that CA.
    pub cert: std::path::PathBuf,
    /// The certificate's private key (`--tls-key`).
    pub key: std::path::PathBuf,
}

/// Why the TLS files were not reloaded (the old ones then stay in service).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The sidecar runs without TLS files (no proxy, or `--insecure`).
    #[error("no TLS files to reload (the sidecar runs without --tls-cert)")]
    NoFiles,
    /// A file could not be read.
    #[error("{}", .0.setting().flag())]
    Load(#[source] LoadError),
    /// The new certificate does not fit this node.
    #[error("--tls-cert")]
    Check(#[source] CheckError),
    /// The new material does not make a QUIC config.
    #[error("the new TLS files do not make a QUIC config")]
    Apply(#[source] super::ProxyError),
}

impl TlsFiles {
    /// Reads the files again and checks the certificate as at start: it chains to the
    /// CA and names `node` (and `identity`, when given).
    pub fn reload(&self, node: &str, identity: Option<&str>) -> Result<TlsMaterial, ReloadError> {
        let tls = TlsMaterial::load(&self.ca, &self.cert, &self.key).map_err(ReloadError::Load)?;
        tls.check(node, identity).map_err(ReloadError::Check)?;
        Ok(tls)
    }
}

/// Proxy-mode settings; present only when the sidecar proxy runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// QUIC address of the inbound listener.
    pub bind: SocketAddr,
    /// What the sidecar's TLS is built from.
    pub tls: TlsMaterial,
    /// The files `tls` was read from, read again on SIGHUP (`None`: built in memory,
    /// as with `--insecure`).
    pub tls_files: Option<TlsFiles>,
    /// The service this sidecar calls as.
    pub identity: Option<murmur_protocol::ServiceName>,
    /// Upstreams the local app calls.
    pub upstreams: Vec<UpstreamSpec>,
    /// First VIP and how many there are.
    pub vip_base: Ipv4Addr,
    /// Size of the VIP range.
    pub vip_count: u32,
    /// Hosts file to write the aliases into.
    pub hosts_file: Option<std::path::PathBuf>,
    /// Where to write one JSON line per proxied connection or UDP flow (`-`: stdout).
    pub access_log: Option<std::path::PathBuf>,
}

impl Config {
    /// Proxy mode's part of the settings: `None` unless there are upstreams, TLS files or
    /// a proxy bind. `name` and `advertise` are the node's; `services` are the instances
    /// registered at start (the first one is the default identity).
    pub fn from_settings(
        s: &Settings,
        name: &NodeName,
        advertise: IpAddr,
        services: &[ServiceSpec],
    ) -> Result<Option<Config>, ConfigError> {
        if s.upstreams.is_none() && s.proxy_bind.is_none() && s.tls_cert.is_none() {
            return Ok(None);
        }
        let (tls, tls_files) = tls_material(s, name)?;
        // The identity to call as: the flag, else the first service, else the one service
        // the certificate names (a caller-only task needs no flag).
        let named = if tls.is_mutual() { tls.services_named() } else { Vec::new() };
        let from_cert = match named.as_slice() {
            [one] => murmur_protocol::ServiceName::new(one).ok(),
            _ => None,
        };
        let identity = s.proxy_identity.clone().or_else(|| services.first().map(|s| s.name.clone())).or(from_cert);
        tls.check(name.as_str(), identity.as_ref().map(|s| s.as_str()))
            .map_err(|e| ConfigError::new("--tls-cert", chain(&e)))?;
        let upstreams = s.upstreams.clone().unwrap_or_default();
        if identity.is_none() && !upstreams.is_empty() {
            let why = match named.len() {
                0 => "upstreams need an identity to call as: register a --service, set --proxy-identity, \
                      or issue the certificate with one --service"
                    .to_owned(),
                _ => format!(
                    "upstreams need an identity to call as, and the certificate names several services ({}): \
                     choose one with --proxy-identity",
                    named.join(", ")
                ),
            };
            return Err(ConfigError::new("--proxy-identity", why));
        }
        let (vip_base, vip_count) = s.vip_range;
        let mut aliases = std::collections::BTreeSet::new();
        for (i, u) in upstreams.iter().enumerate() {
            if !aliases.insert((u.alias.clone(), u.port)) {
                return Err(ConfigError::new(
                    format!("upstream[{i}]"),
                    format!("alias `{}` port {} is used twice", u.alias, u.port),
                ));
            }
        }
        if upstreams.len() as u64 > u64::from(vip_count) {
            return Err(ConfigError::new("--vip-range", "has fewer addresses than there are upstreams"));
        }
        Ok(Some(Config {
            bind: s.proxy_bind.unwrap_or(SocketAddr::new(advertise, DEFAULT_PROXY_PORT)),
            tls,
            tls_files,
            identity,
            upstreams,
            vip_base,
            vip_count,
            hosts_file: s.hosts_file.clone(),
            access_log: s.access_log.clone(),
        }))
    }
}

/// The sidecar's TLS and the files it was read from: the three files, or with
/// `--insecure` a throwaway certificate (no files).
fn tls_material(s: &Settings, name: &NodeName) -> Result<(TlsMaterial, Option<TlsFiles>), ConfigError> {
    match (&s.tls_ca, &s.tls_cert, &s.tls_key) {
        (Some(ca), Some(cert), Some(key)) => {
            let files = TlsFiles { ca: ca.clone(), cert: cert.clone(), key: key.clone() };
            let tls = TlsMaterial::load(ca, cert, key).map_err(|e| ConfigError::new(e.setting().flag(), chain(&e)))?;
            Ok((tls, Some(files)))
        }
        (None, None, None) if s.insecure => {
            let tls = TlsMaterial::insecure(name).map_err(|e| ConfigError::new("--tls-cert", chain(&e)))?;
            Ok((tls, None))
        }
        (None, None, None) => Err(ConfigError::new(
            "--tls-cert",
            "proxy mode needs --tls-ca, --tls-cert and --tls-key (`murmur ca init`, `murmur cert issue`), \
             or --insecure",
        )),
        _ => Err(ConfigError::new("--tls-cert", "give all three of --tls-ca, --tls-cert and --tls-key")),
    }
}
