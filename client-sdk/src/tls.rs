//! How the client decides to trust the homeserver's TLS certificate.
//!
//! Besides the usual public CAs, a self-hosted server often runs on a
//! self-signed certificate. It can be trusted through a CA file (its PEM
//! certificate works as its own CA) or by pinning the SHA-256 fingerprint of
//! the exact certificate, as `openssl x509 -fingerprint -sha256` shows it.
//! Pinning is a small rustls verifier written here: rustls checks the
//! handshake signatures, the verifier only compares the certificate's hash.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

use crate::ClientError;

/// Which server certificates the client accepts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TlsTrust {
    /// The platform's trusted CAs.
    #[default]
    System,
    /// Only certificates issued by the CAs in this PEM file (a self-signed
    /// certificate is its own CA).
    CaFile(PathBuf),
    /// Only the certificate with this SHA-256 fingerprint.
    Fingerprint([u8; 32]),
}

impl TlsTrust {
    /// Parses a SHA-256 fingerprint as 64 hex digits, with or without colons
    /// (`AB:CD:…` as OpenSSL prints it).
    pub fn fingerprint(text: &str) -> Result<Self, ClientError> {
        let hex: String = text.chars().filter(|c| *c != ':').collect();
        let bad = || ClientError::Config(format!("`{text}` is not a SHA-256 fingerprint (64 hex digits)"));
        if hex.len() != 64 || !hex.is_ascii() {
            return Err(bad());
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self::Fingerprint(bytes))
    }

    /// A reqwest client builder that trusts what `self` says.
    pub(crate) fn apply(&self, builder: reqwest::ClientBuilder) -> Result<reqwest::ClientBuilder, ClientError> {
        match self {
            Self::System => Ok(builder),
            Self::CaFile(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| ClientError::Config(format!("cannot read CA file {}: {e}", path.display())))?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                    ClientError::Config(format!("{} is not a PEM certificate file: {e}", path.display()))
                })?;
                if certs.is_empty() {
                    return Err(ClientError::Config(format!("{} holds no certificate", path.display())));
                }
                Ok(builder.tls_certs_only(certs))
            }
            Self::Fingerprint(fingerprint) => {
                let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
                let verifier = Arc::new(PinnedCertificate { fingerprint: *fingerprint, provider: provider.clone() });
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| ClientError::Config(format!("TLS configuration: {e}")))?
                    .dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_no_client_auth();
                Ok(builder.tls_backend_preconfigured(config))
            }
        }
    }
}

/// Accepts exactly the certificate with the pinned fingerprint.
#[derive(Debug)]
struct PinnedCertificate {
    fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let digest: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if digest == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("the server certificate does not have the pinned fingerprint".to_owned()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The SHA-256 fingerprint of a PEM certificate's first certificate, as
/// colon-separated hex (the form [`TlsTrust::fingerprint`] reads).
pub fn pem_fingerprint(pem: &[u8]) -> Result<String, ClientError> {
    let der = CertificateDer::pem_slice_iter(pem)
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| ClientError::Config("no certificate in the PEM file".to_owned()))?;
    let digest = Sha256::digest(der.as_ref());
    Ok(digest.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":"))
}
