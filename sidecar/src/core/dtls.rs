//! str0m's DTLS (dimpl on aws-lc) with dimpl's configuration made once per
//! process instead of once per link.
//!
//! str0m's own aws-lc provider builds a fresh `dimpl::Config` for every
//! link, and building one checks the crypto provider end to end: two key
//! exchanges on each of X25519, P-256 and P-384 and the signature checks of
//! every cipher suite. That is more public-key work than the link's own
//! handshake, and on a small ARM board it is what a new link waits for. The
//! configuration holds nothing per link (no certificate, no clock), so one
//! serves them all; the certificate and the DTLS state stay per link.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use str0m::crypto::dtls::{
    DtlsCert, DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, DtlsVersion, ProtocolVersion,
};
use str0m::crypto::{CryptoError, CryptoProvider};

/// str0m's crypto provider for every link: its own, with [`SharedConfig`]
/// for DTLS.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let stock = str0m::crypto::from_feature_flags();
            Arc::new(CryptoProvider { dtls_provider: &SharedConfig, ..stock })
        })
        .clone()
}

#[derive(Debug)]
struct SharedConfig;

/// The configuration for the MTU str0m asked for first (it always asks for
/// the same one unless an `RtcConfig` sets another).
static CONFIG: OnceLock<(Option<usize>, Arc<dimpl::Config>)> = OnceLock::new();

fn make_config(mtu: Option<usize>) -> Result<Arc<dimpl::Config>, CryptoError> {
    // ICE has checked the peer's return path before DTLS starts, so the
    // server's cookie exchange would only add a round trip.
    let mut builder = dimpl::Config::builder().use_server_cookie(false);
    if let Some(mtu) = mtu {
        builder = builder.mtu(mtu);
    }
    builder.build().map(Arc::new).map_err(|e| CryptoError::Other(format!("DTLS configuration: {e}")))
}

/// Makes the configuration for the MTU links ask for (str0m's default)
/// before the first link does. The shell calls it on its startup helper
/// thread, next to the certificate, so that it overlaps the token exchange:
/// made by the first link, it held that link up by 9 ms on the development
/// VM, half of a new sidecar's time to its first DataChannel.
pub fn prepare() {
    if let Err(e) = config_for(Some(str0m::DATAGRAM_MTU_TARGET)) {
        log::warn!("{e}");
    }
}

fn config_for(mtu: Option<usize>) -> Result<Arc<dimpl::Config>, CryptoError> {
    if let Some((cached_mtu, config)) = CONFIG.get() {
        if *cached_mtu == mtu {
            return Ok(config.clone());
        }
        return make_config(mtu);
    }
    let config = make_config(mtu)?;
    Ok(CONFIG.get_or_init(|| (mtu, config)).1.clone())
}

impl DtlsProvider for SharedConfig {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        str0m::crypto::from_feature_flags().dtls_provider.generate_certificate()
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        #[cfg(test)]
        tests::MTU_ASKED.set(Some(mtu));
        let config = config_for(mtu)?;
        let dtls = match version {
            DtlsVersion::Dtls12 => dimpl::Dtls::new_12(config, cert.clone(), now),
            DtlsVersion::Dtls13 => dimpl::Dtls::new_13(config, cert.clone(), now),
            DtlsVersion::Auto => dimpl::Dtls::new_auto(config, cert.clone(), now),
            other => return Err(CryptoError::Other(format!("unsupported DTLS version: {other}"))),
        };
        Ok(Box::new(Link(dtls)))
    }
}

/// One link's DTLS state; str0m drives it through this trait.
struct Link(dimpl::Dtls);

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dtls::Link")
    }
}

impl DtlsInstance for Link {
    fn set_active(&mut self, active: bool) {
        self.0.set_active(active)
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.0.handle_packet(packet)
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        self.0.poll_output(buf)
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.0.handle_timeout(now)
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        self.0.send_application_data(data)
    }

    fn is_active(&self) -> bool {
        self.0.is_active()
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.0.protocol_version()
    }

    fn is_closing(&self) -> bool {
        self.0.is_closing()
    }

    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.0.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// The MTU of this thread's last link, as str0m asked for it.
        pub(super) static MTU_ASKED: std::cell::Cell<Option<Option<usize>>> = const { std::cell::Cell::new(None) };
    }

    #[test]
    fn a_link_asks_for_the_mtu_that_is_prepared() {
        prepare();
        assert_eq!(CONFIG.get().expect("made by prepare").0, Some(str0m::DATAGRAM_MTU_TARGET));
        let config = crate::core::peer::LinkConfig::default();
        let (link, _offer) = crate::core::peer::PeerLink::new_offerer(&[], &config, crate::core::sim::start()).unwrap();
        // Counting references to the shared configuration would race with
        // the links of tests running alongside; what this link asked for
        // is its own.
        assert_eq!(MTU_ASKED.get(), Some(Some(str0m::DATAGRAM_MTU_TARGET)));
        drop(link);
    }

    #[test]
    fn links_share_one_configuration() {
        let provider = crypto_provider();
        let cert = provider.dtls_provider.generate_certificate().expect("a certificate");
        let now = crate::core::sim::start();
        prepare();
        let (mtu, config) = CONFIG.get().expect("made by prepare");
        let a = provider.dtls_provider.new_dtls(&cert, now, DtlsVersion::Auto, *mtu).unwrap();
        let b = provider.dtls_provider.new_dtls(&cert, now, DtlsVersion::Dtls12, *mtu).unwrap();
        // The cache's, and both links'.
        assert!(Arc::strong_count(config) >= 3, "{}", Arc::strong_count(config));
        assert!(Arc::ptr_eq(&config_for(*mtu).unwrap(), config));
        // Another MTU gets a configuration of its own.
        let other = mtu.map_or(Some(1200), |m| Some(m + 1));
        assert!(!Arc::ptr_eq(&config_for(other).unwrap(), config));
        drop((a, b));
    }
}
