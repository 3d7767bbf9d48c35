//! gRPC request messages as a client can send them: decoded by prost, then through the domain's
//! validation that needs no model (item counts and sizes, labels, templates, label-set specs). The
//! first byte picks the message.

use clip_serve::{
    classify::{PromptLimits, prompts},
    common::List,
    embed::Limits,
    grpc::pb,
};
use prost::Message;

const LIMITS: Limits = Limits {
    max_items_per_request: 64,
    max_image_bytes: 16 << 20,
    max_image_pixels: 40_000_000,
    max_text_bytes: 16 * 1024,
    max_message_bytes: 32 << 20,
    max_concurrent_requests: 64,
};
const PROMPTS: PromptLimits = PromptLimits {
    max_labels: 1000,
    max_templates: 100,
    max_text_bytes: 16 * 1024,
};

pub fn run(data: &[u8]) {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 6 {
        0 => {
            if let Ok(r) = pb::EmbedImagesRequest::decode(bytes) {
                let _ = LIMITS
                    .check_count(List::Images, r.images.len())
                    .and_then(|()| LIMITS.check_images(&r.images));
            }
        }
        1 => {
            if let Ok(r) = pb::EmbedTextsRequest::decode(bytes) {
                let _ = LIMITS
                    .check_count(List::Texts, r.texts.len())
                    .and_then(|()| LIMITS.check_texts(&r.texts));
            }
        }
        2 => {
            if let Ok(r) = pb::ClassifyRequest::decode(bytes) {
                let _ = prompts::check_labels(&r.labels, &PROMPTS);
                if let Ok(t) = prompts::check_templates(r.templates, &PROMPTS) {
                    let _ = prompts::check_prompt_length(&r.labels, &t, &PROMPTS);
                }
            }
        }
        3 => {
            if let Ok(r) = pb::CreateLabelSetRequest::decode(bytes) {
                let _ = clip_serve::common::check_name("label set", &r.name);
                let _ = prompts::check_labels(&r.labels, &PROMPTS);
            }
        }
        4 => {
            let _ = pb::UpsertRequest::decode(bytes);
            let _ = pb::SearchRequest::decode(bytes);
        }
        _ => {
            let _ = pb::EmbedStreamRequest::decode(bytes);
            let _ = pb::RankRequest::decode(bytes);
        }
    }
}
