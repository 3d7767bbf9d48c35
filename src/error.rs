//! The domain error of a request. Every failure a client can see is one of these variants; the
//! protocol layer maps them to gRPC codes in exactly one place (`grpc::status`).

use std::fmt;

/// What went wrong with a request, classified by who has to act on it.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request itself is wrong: empty, too many items, an undecodable or oversized image, a bad
    /// field. The message names the item index and the reason.
    #[error("{0}")]
    InvalidArgument(String),
    /// The server is at capacity (no request permit, queue full). Retrying later may succeed.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The model is still loading, or the server is shutting down.
    #[error("{0}")]
    Unavailable(String),
    /// The caller's deadline passed before the work was computed.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A named thing (collection, label set, id) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A named thing that must be new already exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request cannot work with what this server serves, e.g. a text request to an image-only model.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A bug or an ONNX Runtime failure. The detail is logged; clients get a generic message.
    #[error("{0}")]
    Internal(String),
}

impl ServiceError {
    /// An invalid item of a request: `images[3]: image is 31 MB, over the 16 MB limit`.
    pub fn invalid_item(field: &str, index: usize, reason: impl fmt::Display) -> Self {
        Self::InvalidArgument(format!("{field}[{index}]: {reason}"))
    }
}

/// The two modalities of a CLIP model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Modality {
    Image,
    Text,
}

impl Modality {
    pub fn as_str(self) -> &'static str {
        match self {
            Modality::Image => "image",
            Modality::Text => "text",
        }
    }
}

impl fmt::Display for Modality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
