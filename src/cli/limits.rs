//! Admission and request limits: items, image and text sizes, decode memory, message size, requests
//! and payload bytes held at once, stream readers and items in flight, free-form JSON bounds.

use clap::Args;

use super::{positive, to_usize};
use crate::embed::Limits;

/// What one request may carry and what the server holds at once.
#[derive(Debug, Clone, Args)]
pub struct LimitsArgs {
    /// Most items (images or texts) in one request.
    #[arg(
        long,
        env = "CLIP_SERVE_MAX_ITEMS_PER_REQUEST",
        default_value_t = 64,
        display_order = 150
    )]
    pub max_items_per_request: u32,

    /// Largest encoded image accepted, in bytes.
    #[arg(long, env = "CLIP_SERVE_MAX_IMAGE_BYTES", default_value_t = 16 * 1024 * 1024, display_order = 160)]
    pub max_image_bytes: u64,

    /// Largest decoded image accepted, in pixels (width x height), checked from the header before
    /// any pixel is allocated.
    #[arg(
        long,
        env = "CLIP_SERVE_MAX_IMAGE_PIXELS",
        default_value_t = 40_000_000,
        display_order = 240
    )]
    pub max_image_pixels: u64,

    /// Working memory of the image decodes running at once, in bytes. Each decode reserves what its
    /// header says it needs (about 12 bytes per pixel for JPEG and PNG) before it starts; an image
    /// needing more than the whole budget is refused (INVALID_ARGUMENT / 400).
    #[arg(long, env = "CLIP_SERVE_MAX_DECODE_BYTES", default_value_t = 768 * 1024 * 1024, display_order = 250)]
    pub max_decode_bytes: u64,

    /// Longest text accepted, in UTF-8 bytes. Longer texts would be cut at the context length anyway.
    #[arg(long, env = "CLIP_SERVE_MAX_TEXT_BYTES", default_value_t = 16 * 1024, display_order = 260)]
    pub max_text_bytes: u32,

    /// Largest gRPC message accepted or sent, in bytes.
    #[arg(long, env = "CLIP_SERVE_MAX_MESSAGE_BYTES", default_value_t = 32 * 1024 * 1024, display_order = 270)]
    pub max_message_bytes: u64,

    /// Requests processed at once; unary calls beyond it get RESOURCE_EXHAUSTED.
    #[arg(
        long,
        env = "CLIP_SERVE_MAX_CONCURRENT_REQUESTS",
        default_value_t = 64,
        display_order = 280
    )]
    pub max_concurrent_requests: u32,

    /// Request payload bytes held at once across both doors (gRPC messages, stream items, HTTP
    /// bodies): a unary call or body beyond it gets RESOURCE_EXHAUSTED / 429, a stream waits.
    #[arg(long, env = "CLIP_SERVE_MAX_INFLIGHT_BYTES", default_value_t = 256 * 1024 * 1024, display_order = 320)]
    pub max_inflight_bytes: u64,

    /// Streams reading a message at once: a message is held from the moment it is read until the
    /// byte budget admits it, so this bounds what streams hold beyond the budget; other streams
    /// wait unread (flow control holds their clients back).
    #[arg(
        long,
        env = "CLIP_SERVE_MAX_STREAM_READERS",
        default_value_t = 16,
        display_order = 330
    )]
    pub max_stream_readers: u32,

    /// Items of one EmbedStream processed at once; the stream stops reading beyond it.
    #[arg(
        long,
        env = "CLIP_SERVE_MAX_STREAM_IN_FLIGHT",
        default_value_t = 16,
        display_order = 440
    )]
    pub max_stream_in_flight: u32,

    /// Deepest nesting of free-form JSON in a request body (an item, a document, a query),
    /// checked while the body is parsed.
    #[arg(
        long,
        env = "CLIP_SERVE_MAX_JSON_DEPTH",
        default_value_t = 32,
        display_order = 720
    )]
    pub max_json_depth: u32,

    /// Memory the free-form JSON of one request body (items, documents, queries) may take once
    /// parsed besides its strings' bytes, estimated while it is parsed (each value's slot, object
    /// entries, string buffers): a body of tiny values is refused before it grows many times its
    /// size.
    #[arg(long, env = "CLIP_SERVE_MAX_JSON_BYTES", default_value_t = 64 * 1024 * 1024, display_order = 730)]
    pub max_json_bytes: u64,
}

impl LimitsArgs {
    /// The per-request limits of the embedding service, checked.
    pub(super) fn limits(&self) -> Result<Limits, String> {
        let max_message_bytes = to_usize("max-message-bytes", self.max_message_bytes)?;
        if max_message_bytes > u32::MAX as usize {
            return Err(format!(
                "--max-message-bytes {max_message_bytes} is over 4 GiB"
            ));
        }
        Ok(Limits {
            max_items_per_request: to_usize(
                "max-items-per-request",
                self.max_items_per_request.into(),
            )?,
            max_image_bytes: to_usize("max-image-bytes", self.max_image_bytes)?,
            max_image_pixels: positive("max-image-pixels", self.max_image_pixels)?,
            max_text_bytes: to_usize("max-text-bytes", self.max_text_bytes.into())?,
            max_message_bytes,
            max_concurrent_requests: to_usize(
                "max-concurrent-requests",
                self.max_concurrent_requests.into(),
            )?,
        })
    }
}
