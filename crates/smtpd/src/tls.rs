//! The TLS server configuration (rustls with aws-lc-rs): TLS 1.3 and 1.2, the certificate chain
//! of `control/tlscert` and the key of `control/tlskey` (PEM). Loaded at start and on HUP, from
//! the bytes root read (crate::tlskeys), so that a root-only key (certbot's) reloads too.

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;

/// The configuration of the PEM bytes of control/tlscert and control/tlskey (read by root:
/// crate::tlskeys). The key must belong to the first certificate.
pub fn server_config(cert: &[u8], key: &[u8]) -> Result<Arc<ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("control/tlscert: {e}"))?;
    if certs.is_empty() {
        return Err("control/tlscert: no certificate in it".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("control/tlskey: {e}"))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("control/tlscert and tlskey: {e}"))?;
    Ok(Arc::new(cfg))
}

/// "TLSv1.3 TLS13_AES_256_GCM_SHA384", for the Received line and the log.
pub fn describe(conn: &rustls::ServerConnection) -> String {
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
