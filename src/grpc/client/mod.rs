//! Command-line clients of a running server, on the generated gRPC client only (what any other
//! client could do): `clip-serve index` ([`index`], the bulk indexer) and `clip-serve search`
//! ([`search`]).

pub mod index;
pub mod search;

use anyhow::Context;
use tonic::{
    Request,
    metadata::{AsciiMetadataValue, MetadataValue},
    transport::Channel,
};

/// A connection to `addr` and the `authorization` value for `api_key`.
pub(crate) struct Connection {
    pub channel: Channel,
    authorization: Option<AsciiMetadataValue>,
    max_message_bytes: usize,
}

impl Connection {
    pub async fn open(addr: &str, api_key: Option<&str>) -> anyhow::Result<Self> {
        let authorization = api_key
            .map(|key| MetadataValue::try_from(format!("Bearer {key}")))
            .transpose()
            .context("the API key must be printable ASCII")?;
        let channel = Channel::from_shared(addr.to_string())
            .with_context(|| format!("--addr {addr:?} is not a URL (e.g. http://127.0.0.1:50051)"))?
            .connect()
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        Ok(Connection {
            channel,
            authorization,
            max_message_bytes: 64 << 20,
        })
    }

    /// `message` with the API key attached.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        request
    }

    pub fn retrieve(&self) -> super::pb::retrieve_client::RetrieveClient<Channel> {
        super::pb::retrieve_client::RetrieveClient::new(self.channel.clone())
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes)
    }

    pub fn info(&self) -> super::pb::info_client::InfoClient<Channel> {
        super::pb::info_client::InfoClient::new(self.channel.clone())
    }
}

/// `key=value` for `--filter`.
pub(crate) fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?}: expected KEY=VALUE")),
    }
}
