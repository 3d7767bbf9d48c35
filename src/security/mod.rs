//! What secures both doors, below them: API keys ([`keys`]: `--api-key`, `--api-key-file`,
//! constant-time checks, SIGHUP reload) and TLS material ([`tls`]: PEM files read and checked once
//! at start-up, the rustls configuration of the HTTP listener). The protocol layers apply them:
//! the gRPC interceptor and TLS acceptor in `grpc/transport.rs`, the HTTP check in `http/call.rs`.

pub mod keys;
pub mod quota;
pub mod tls;
pub mod usage_buffer;
pub mod usage_local;

pub use keys::{ApiKeys, AuthError, Caller, RateLimit};
pub use tls::{TlsFiles, TlsPaths};

/// A value that never shows in logs or `Debug` output.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_do_not_print() {
        let s = super::Secret("hunter2".into());
        assert_eq!(format!("{s:?}"), "Secret(..)");
    }
}
