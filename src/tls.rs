//! TLS for every listener and for backend connections: certificates and keys from PEM files
//! (each failure names the file), the acceptor the HTTP and SQL listeners use, and the
//! connector for backends with the verification the config asks for.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::{BackendTls, Verify};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificates from {path}: {reason}")]
    Certificates { path: String, reason: String },
    #[error("no certificate in {0}")]
    NoCertificate(String),
    #[error("cannot read a private key from {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("certificate and key do not go together: {0}")]
    Mismatch(String),
    #[error("TLS set-up: {0}")]
    Setup(String),
}

/// ALPN offered by the HTTP listener; the SQL listener offers none (MySQL clients send none).
pub const HTTP_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Certificates { path: path.display().to_string(), reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.display().to_string()));
    }
    Ok(certs)
}

/// Builds an acceptor from a certificate chain and its key, offering `alpn`.
pub fn acceptor(cert: &Path, key: &Path, alpn: &[&[u8]]) -> Result<TlsAcceptor, TlsError> {
    server_config(cert, key, alpn).map(TlsAcceptor::from)
}

/// The server side of TLS from a certificate chain and its key, offering `alpn`.
pub fn server_config(cert: &Path, key: &Path, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::Key { path: key.display().to_string(), reason: e.to_string() })?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Mismatch(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Mismatch(e.to_string()))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// How rwproxy connects to one backend over TLS: the connector and the name it verifies.
#[derive(Clone)]
pub struct Client {
    pub connector: TlsConnector,
    pub server_name: ServerName<'static>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("tls::Client").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

/// The connector for a backend at `address` (`host:port`). `verify = "full"` checks the chain
/// against `ca` and the name (`server_name`, else the address's host); `"ca"` the chain only;
/// `"none"` nothing (signatures of the handshake are still checked).
pub fn client(tls: &BackendTls, address: &str) -> Result<Client, TlsError> {
    let host = tls.server_name.clone().unwrap_or_else(|| {
        address.rsplit_once(':').map_or(address, |(h, _)| h).trim_matches(['[', ']']).to_string()
    });
    let server_name = ServerName::try_from(host.clone())
        .map_err(|e| TlsError::Setup(format!("server name {host:?}: {e}")))?;
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match tls.verify {
        Verify::None => Arc::new(NoVerification(provider.clone())),
        Verify::Ca | Verify::Full => {
            let Some(ca) = &tls.ca else {
                return Err(TlsError::Setup("verify = \"full\" or \"ca\" needs ca = <PEM file>".into()));
            };
            let mut roots = RootCertStore::empty();
            for cert in certificates(Path::new(ca))? {
                roots
                    .add(cert)
                    .map_err(|e| TlsError::Certificates { path: ca.clone(), reason: e.to_string() })?;
            }
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| TlsError::Setup(e.to_string()))?;
            if tls.verify == Verify::Full { webpki } else { Arc::new(ChainOnly(webpki)) }
        }
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Client { connector: TlsConnector::from(Arc::new(config)), server_name })
}

/// `verify = "ca"`: the chain must lead to the CA; the name in the certificate is not checked
/// (servers whose certificates name something other than the address rwproxy dials).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `verify = "none"`: encryption without authentication of the server (self-signed test
/// set-ups). Said in the log at start.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
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
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
