//! TLS client settings (rustls with aws-lc-rs).
//!
//! - Opportunistic, for ordinary port-25 delivery: any certificate is accepted (there is no
//!   way to know the right name without DANE or MTA-STS), but the handshake and its signatures
//!   are real, so the session is encrypted and a passive listener learns nothing
//!   (ferry_tls::AcceptAny, shared with ferryctl check).
//! - Verified, for the domains of `tlsdestinations`: the certificate must chain to a known root
//!   (the system bundle /etc/ssl/certs/ca-certificates.crt, else the compiled-in webpki roots,
//!   plus the certificates of control/tlsca) and name the MX host; otherwise the mail waits
//!   rather than go in the clear.

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};
use std::sync::Arc;

pub struct TlsConfigs {
    pub opportunistic: Arc<ClientConfig>,
    pub verified: Arc<ClientConfig>,
}

const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// `extra`: control/tlsca, more trust anchors for the verified configuration.
pub fn configs(extra: Option<&std::path::Path>) -> Result<TlsConfigs, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] =
        &[&rustls::version::TLS13, &rustls::version::TLS12];
    let opportunistic = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ferry_tls::AcceptAny(provider.clone())))
        .with_no_client_auth();
    let mut roots = RootCertStore::empty();
    if let Ok(iter) = CertificateDer::pem_file_iter(SYSTEM_BUNDLE) {
        for c in iter.flatten() {
            let _ = roots.add(c);
        }
    }
    if roots.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(path) = extra {
        let mut added = 0;
        for c in CertificateDer::pem_file_iter(path).map_err(|e| format!("control/tlsca: {e}"))? {
            let c = c.map_err(|e| format!("control/tlsca: {e}"))?;
            roots
                .add(c)
                .map_err(|e| format!("control/tlsca: not a usable CA certificate: {e}"))?;
            added += 1;
        }
        if added == 0 {
            return Err("control/tlsca holds no certificate".into());
        }
    }
    let verified = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConfigs {
        opportunistic: Arc::new(opportunistic),
        verified: Arc::new(verified),
    })
}

/// "TLSv1.3 TLS13_AES_256_GCM_SHA384".
pub fn describe(conn: &rustls::ClientConnection) -> String {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(v) => format!("{v:?}"),
        None => "TLS".to_string(),
    };
    match conn.negotiated_cipher_suite() {
        Some(s) => format!("{version} {:?}", s.suite()),
        None => version,
    }
}
