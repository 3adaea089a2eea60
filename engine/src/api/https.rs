//! HTTPS on the HTTP API's listener: the certificate chain and key of
//! `http_tls_cert` and `http_tls_key` (PEM), read once at start so that a
//! file that cannot work stops the engine before it serves anything.
//! rustls with the `ring` provider; TLS 1.2 and 1.3; HTTP/1.1 by ALPN.

use jetsaga_protocol::ErrorCode;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// The certificate or key of the HTTP API cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}", code = ErrorCode::HttpTls)]
pub struct TlsError {
    /// What is wrong, naming the file.
    pub message: String,
}

impl TlsError {
    fn new(message: String) -> TlsError {
        TlsError { message }
    }
}

/// The acceptor of TLS connections with the chain in `cert` and the key in
/// `key`; an error names the file and what is wrong with it.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let chain = certificates(cert)?;
    let private = private_key(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::new(format!("no TLS protocol version to offer: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| {
            TlsError::new(format!(
                "the key in {} does not go with the certificate in {} ({e}); http_tls_key must be the private key of http_tls_cert's first certificate",
                key.display(),
                cert.display()
            ))
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn read(path: &Path, key: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path)
        .map_err(|e| TlsError::new(format!("{key}: cannot read {}: {e}", path.display())))
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path, "http_tls_cert")?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, "http_tls_cert", &e.to_string()))?;
    if chain.is_empty() {
        return Err(invalid(
            path,
            "http_tls_cert",
            "it holds no `BEGIN CERTIFICATE` block",
        ));
    }
    Ok(chain)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path, "http_tls_key")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        let why = match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "it holds no `BEGIN PRIVATE KEY` (PKCS#8), `BEGIN RSA PRIVATE KEY` or `BEGIN EC PRIVATE KEY` block".to_string()
            }
            e => e.to_string(),
        };
        invalid(path, "http_tls_key", &why)
    })
}

fn invalid(path: &Path, key: &str, why: &str) -> TlsError {
    TlsError::new(format!(
        "{key}: {} is not a usable PEM file: {why}",
        PathBuf::from(path).display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(cert: &Path, key: &Path) -> String {
        match acceptor(cert, key) {
            Ok(_) => panic!("{} and {} were accepted", cert.display(), key.display()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn unusable_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let missing = dir.path().join("missing.pem");
        let e = refused(&missing, &garbage);
        assert!(
            e.to_string()
                .starts_with("E-HTTP-TLS: http_tls_cert: cannot read"),
            "{e}"
        );
        let e = refused(&garbage, &garbage);
        assert!(e.to_string().contains("no `BEGIN CERTIFICATE`"), "{e}");
        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = refused(&broken, &missing);
        assert!(e.to_string().contains("http_tls_key: cannot read"), "{e}");
        let e = refused(&broken, &garbage);
        assert!(e.to_string().contains("http_tls_key"), "{e}");
    }
}
