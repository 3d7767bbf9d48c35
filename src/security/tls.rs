//! TLS for both listeners (`--tls-cert`, `--tls-key`, optional `--tls-client-ca` for client
//! certificates): PEM files read once at start-up, with errors naming the file. rustls with the ring
//! provider; tonic builds its own acceptor from the same PEM bytes (`grpc::transport`).

use std::{path::PathBuf, sync::Arc};

use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};

/// The PEM files, read.
#[derive(Clone)]
pub struct TlsFiles {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// When set, clients must present a certificate signed by one of these CAs (mTLS).
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("mtls", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Default)]
pub struct TlsPaths {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
}

impl TlsPaths {
    /// `None` when TLS is off; an error when only some of the files are given or one is unusable.
    pub fn load(&self) -> Result<Option<TlsFiles>, String> {
        let read = |flag: &str, p: &PathBuf| {
            std::fs::read(p).map_err(|e| format!("{flag} {}: {e}", p.display()))
        };
        let (cert, key) = match (&self.cert, &self.key) {
            (None, None) => {
                if self.client_ca.is_some() {
                    return Err("--tls-client-ca needs --tls-cert and --tls-key".into());
                }
                return Ok(None);
            }
            (Some(c), Some(k)) => (c, k),
            _ => return Err("--tls-cert and --tls-key go together".into()),
        };
        let files = TlsFiles {
            cert_pem: read("--tls-cert", cert)?,
            key_pem: read("--tls-key", key)?,
            client_ca_pem: self
                .client_ca
                .as_ref()
                .map(|p| read("--tls-client-ca", p))
                .transpose()?,
        };
        // Parse now, so a bad file is a start-up error rather than a failed handshake.
        files
            .rustls_config()
            .map_err(|e| format!("TLS files ({}, {}): {e}", cert.display(), key.display()))?;
        Ok(Some(files))
    }
}

impl TlsFiles {
    /// The rustls server configuration (HTTP/1.1 over TLS) for the HTTP listener.
    pub fn rustls_config(&self) -> Result<Arc<ServerConfig>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("certificate: {e}"))?;
        if certs.is_empty() {
            return Err("no certificate in the --tls-cert file".into());
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|e| format!("private key: {e}"))?;
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match &self.client_ca_pem {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(ca) {
                    let cert = cert.map_err(|e| format!("client CA: {e}"))?;
                    roots.add(cert).map_err(|e| format!("client CA: {e}"))?;
                }
                if roots.is_empty() {
                    return Err("no certificate in the --tls-client-ca file".into());
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| format!("client CA: {e}"))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| format!("certificate and key: {e}"))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}
