//! TLS to a `https://` / `wss://` registry: rustls with the aws-lc-rs
//! provider, which str0m links for DTLS anyway (no second crypto library).
//!
//! The trust roots are loaded once, at startup, and only when a registry
//! URL needs them: the system store (rustls-native-certs, which honours
//! `SSL_CERT_FILE` and `SSL_CERT_DIR`) plus, when `REGISTRY_CA_FILE` is set,
//! the certificates of that PEM file. Both clients use the same roots and
//! the same provider: the WebSocket through [`Tls::client_config`] (one
//! shared `Arc<ClientConfig>`), ureq through [`Tls::ureq_config`], since
//! ureq builds its rustls configuration itself from roots and a provider.
//! There is no way to turn verification off.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::ClientConfig;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

/// Trust roots and the client configuration built from them. Cheap to clone.
#[derive(Clone)]
pub struct Tls {
    config: Arc<ClientConfig>,
    /// The same roots for ureq, in its own certificate type.
    ureq_roots: Arc<Vec<ureq::tls::Certificate<'static>>>,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tls {{ {} roots }}", self.ureq_roots.len())
    }
}

/// Whether `url` needs TLS (`https://` or `wss://`, any case).
pub fn needs_tls(url: &str) -> bool {
    url.split_once("://").is_some_and(|(s, _)| s.eq_ignore_ascii_case("https") || s.eq_ignore_ascii_case("wss"))
}

/// The trust roots `urls` need, loaded once at startup: `None` when all of
/// them are plain. A `ca_file` is checked even then, so that a typo shows
/// now rather than when the URLs change.
pub fn for_urls(urls: &[&str], ca_file: Option<&Path>) -> Result<Option<Tls>, String> {
    if urls.iter().any(|u| needs_tls(u)) {
        return Tls::load(ca_file).map(Some);
    }
    if let Some(path) = ca_file {
        read_ca_file(path)?;
        log::info!("REGISTRY_CA_FILE is set, but the registry URLs are plain http:// / ws://");
    }
    Ok(None)
}

impl Tls {
    /// The system store plus the certificates of `ca_file`. A missing,
    /// unreadable or certificate-less `ca_file` is an error naming it; an
    /// empty system store is not (the CA file may be all that is trusted).
    pub fn load(ca_file: Option<&Path>) -> Result<Tls, String> {
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            log::warn!("system trust store: {e}");
        }
        let mut roots = native.certs;
        let from_system = roots.len();
        if let Some(path) = ca_file {
            roots.extend(read_ca_file(path)?);
        }
        if roots.is_empty() {
            log::warn!(
                "no trusted CA certificates (system store empty, no REGISTRY_CA_FILE): https:// and wss:// \
                 connections will fail"
            );
        }
        let tls = Tls::with_roots(roots)?;
        log::debug!("TLS trust roots: {from_system} from the system store, {} in all", tls.ureq_roots.len());
        Ok(tls)
    }

    /// A configuration trusting exactly `roots` (unparsable ones are
    /// skipped, as every TLS client does with system stores).
    pub fn with_roots(roots: Vec<CertificateDer<'static>>) -> Result<Tls, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut store = RootCertStore::empty();
        let (_, ignored) = store.add_parsable_certificates(roots.iter().cloned());
        if ignored > 0 {
            log::debug!("{ignored} trust roots could not be parsed and are ignored");
        }
        let config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(store)
            .with_no_client_auth();
        let ureq_roots = roots.iter().map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned()).collect();
        Ok(Tls { config: Arc::new(config), ureq_roots: Arc::new(ureq_roots), provider })
    }

    /// The configuration of the signaling WebSocket.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// ureq's TLS settings: the same roots and provider.
    pub fn ureq_config(&self) -> ureq::tls::TlsConfig {
        ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .root_certs(ureq::tls::RootCerts::Specific(self.ureq_roots.clone()))
            .unversioned_rustls_crypto_provider(self.provider.clone())
            .build()
    }
}

/// The certificates of a PEM file (`REGISTRY_CA_FILE`); other PEM sections
/// (keys, parameters) are skipped. Errors name the file.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let name = path.display();
    let pem = std::fs::read(path).map_err(|e| format!("REGISTRY_CA_FILE {name}: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("REGISTRY_CA_FILE {name}: not a PEM file: {e}"))?;
    if certs.is_empty() {
        return Err(format!("REGISTRY_CA_FILE {name}: no \"BEGIN CERTIFICATE\" section in the file"));
    }
    let mut store = RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        store.add(cert.clone()).map_err(|e| format!("REGISTRY_CA_FILE {name}: certificate {}: {e}", i + 1))?;
    }
    Ok(certs)
}

/// The name the server's certificate must match: the URL host, a DNS name
/// or an IP address.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_owned()).map_err(|e| format!("{host:?} is not a valid TLS server name: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str, content: &[u8]) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("chatixia-tls-test-{}-{name}", std::process::id()));
        std::fs::write(&path, content).unwrap();
        path
    }

    #[test]
    fn urls_that_need_tls() {
        assert!(needs_tls("https://h/api/token"));
        assert!(needs_tls("WSS://h/ws"));
        assert!(!needs_tls("http://h/api/token"));
        assert!(!needs_tls("ws://h/ws"));
        assert!(!needs_tls("nonsense"));
    }

    #[test]
    fn ca_file_errors_name_the_file() {
        let missing = std::env::temp_dir().join("chatixia-tls-test-does-not-exist.pem");
        let err = read_ca_file(&missing).unwrap_err();
        assert!(err.contains("REGISTRY_CA_FILE") && err.contains(&missing.display().to_string()), "{err}");
        assert!(err.contains("No such file"), "{err}");
        assert!(Tls::load(Some(&missing)).is_err());

        let empty = scratch("empty.pem", b"");
        let err = read_ca_file(&empty).unwrap_err();
        assert!(err.contains(&empty.display().to_string()) && err.contains("no \"BEGIN CERTIFICATE\""), "{err}");

        let truncated = scratch("truncated.pem", b"-----BEGIN CERTIFICATE-----\nMIIB\n");
        let err = read_ca_file(&truncated).unwrap_err();
        assert!(err.contains(&truncated.display().to_string()) && err.contains("not a PEM file"), "{err}");

        let garbage = scratch("garbage.pem", b"-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n");
        let err = read_ca_file(&garbage).unwrap_err();
        assert!(err.contains(&garbage.display().to_string()) && err.contains("certificate 1"), "{err}");
        for p in [empty, truncated, garbage] {
            std::fs::remove_file(p).unwrap();
        }
    }

    #[test]
    fn roots_are_loaded_only_for_tls_urls_and_a_ca_file_is_always_checked() {
        let ca = scratch("ca.pem", include_bytes!("../../../tests/fixtures/tls/ca.pem"));
        assert_eq!(read_ca_file(&ca).unwrap().len(), 1);
        let plain = ["http://h/api/token", "ws://h/ws"];
        assert!(for_urls(&plain, None).unwrap().is_none());
        assert!(for_urls(&plain, Some(&ca)).unwrap().is_none());
        let missing = std::env::temp_dir().join("chatixia-tls-test-does-not-exist.pem");
        assert!(for_urls(&plain, Some(&missing)).unwrap_err().contains("does-not-exist.pem"));
        assert!(for_urls(&["http://h/api/token", "wss://h/ws"], Some(&missing)).is_err());
        let tls = for_urls(&["https://h/api/token", "ws://h/ws"], Some(&ca)).unwrap().expect("roots");
        assert!(tls.ureq_roots.iter().any(|c| c.der() == read_ca_file(&ca).unwrap()[0].as_ref()));
        std::fs::remove_file(ca).unwrap();
    }

    #[test]
    fn server_names_of_hosts_and_addresses() {
        assert!(matches!(server_name("registry.example").unwrap(), ServerName::DnsName(_)));
        assert!(matches!(server_name("127.0.0.1").unwrap(), ServerName::IpAddress(_)));
        assert!(matches!(server_name("::1").unwrap(), ServerName::IpAddress(_)));
        assert!(server_name("bad name").is_err());
    }
}
