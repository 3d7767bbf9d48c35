//! Chat-shaped inputs, one embedding per conversation, as vLLM serves CLIP on `/v1/embeddings`
//! (`messages`, batched `messages`, chat messages inside `input`) and Cohere's `inputs` of
//! content parts on `/v2/embed`.
//!
//! A conversation is a list of messages `{"role", "content"}`; `content` is a string or a list of
//! parts `{"type": "text", "text"}` and `{"type": "image_url", "image_url": {"url"}}` (a data URI,
//! or an http(s) URL fetched only with `--fetch-image-urls`). What vLLM does for CLIP, read from its
//! source (`model_executor/models/clip.py`, `chat_templates/template_basic.jinja`,
//! `entrypoints/chat_utils.py`):
//!
//! - a message's text parts are joined with `"\n"`, and messages follow one another with nothing
//!   between them (the `template_basic.jinja` chat template vLLM uses for CLIP);
//! - CLIP embeds a text or an image, never both: a conversation with an image and any text that is
//!   not blank is refused with vLLM's own words ("CLIP accepts text-only or image-only inputs, not
//!   both!");
//! - at most one image per conversation (vLLM's `limit_mm_per_prompt` for CLIP is 1).

use serde_json::Value;

use super::{
    error::ApiError,
    inputs::{self, Input, invalid, kind},
};
use crate::embed::Item;

/// vLLM's refusal of a conversation with both modalities (`CLIPMultiModalProcessor.apply`).
pub const MIXED: &str = "CLIP accepts text-only or image-only inputs, not both! \
    You must pass an image with an empty token prompt.";

/// A chat message: an object with a string `role` (vLLM's `_is_chat_message`).
fn is_message(v: &Value) -> bool {
    v.get("role").is_some_and(Value::is_string)
}

/// A non-empty list of chat messages: one conversation.
pub fn is_conversation(values: &[Value]) -> bool {
    !values.is_empty() && values.iter().all(is_message)
}

/// A non-empty list of conversations.
pub fn is_batch(values: &[Value]) -> bool {
    !values.is_empty()
        && values
            .iter()
            .all(|v| v.as_array().is_some_and(|c| is_conversation(c)))
}

/// What a conversation's parts add up to, before the CLIP rule is applied.
#[derive(Default)]
struct Parts {
    text: String,
    /// Whether any text part (or string content) was seen.
    any_text: bool,
    images: Vec<Input>,
}

/// One content part (`at` names it: `messages[0].content[1]`).
fn part(
    param: &'static str,
    at: &str,
    v: Value,
    texts: &mut Vec<String>,
    parts: &mut Parts,
) -> Result<(), ApiError> {
    let Value::Object(mut map) = v else {
        return Err(invalid(
            param,
            at,
            format!(
                "a content part must be an object with `type`, got {}",
                kind(&v)
            ),
        ));
    };
    let string = |map: &mut serde_json::Map<String, Value>, key: &str| match map.remove(key) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(invalid(
            param,
            at,
            format!("`{key}` must be a string, got {}", kind(&other)),
        )),
        None => Err(invalid(param, at, format!("a {key} part needs `{key}`"))),
    };
    let kind_of = match map.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(other) => {
            return Err(invalid(
                param,
                at,
                format!("`type` must be a string, got {}", kind(other)),
            ));
        }
        None => return Err(invalid(param, at, "a content part needs `type`")),
    };
    match kind_of.as_str() {
        "text" => {
            texts.push(string(&mut map, "text")?);
            parts.any_text = true;
        }
        "image_url" => {
            let url = match map.remove("image_url") {
                Some(Value::Object(mut image)) => string(&mut image, "url")?,
                // A bare string, as some clients send.
                Some(Value::String(url)) => url,
                Some(other) => {
                    return Err(invalid(
                        param,
                        at,
                        format!(
                            "`image_url` must be an object with `url`, got {}",
                            kind(&other)
                        ),
                    ));
                }
                None => return Err(invalid(param, at, "an image_url part needs `image_url`")),
            };
            parts.images.push(inputs::parse_image(param, at, &url)?);
        }
        other => {
            return Err(invalid(
                param,
                at,
                format!(
                    "content part type {other:?} is not supported; CLIP takes \"text\" and \"image_url\" parts"
                ),
            ));
        }
    }
    Ok(())
}

/// A list of content parts (a message's `content`, a Cohere input's `content`), appended to
/// `parts` as one message: its texts joined with `"\n"`.
fn content(param: &'static str, at: &str, v: Value, parts: &mut Parts) -> Result<(), ApiError> {
    let mut texts = Vec::new();
    match v {
        Value::String(s) => {
            texts.push(s);
            parts.any_text = true;
        }
        Value::Array(list) => {
            for (j, p) in list.into_iter().enumerate() {
                part(param, &format!("{at}[{j}]"), p, &mut texts, parts)?;
            }
        }
        Value::Null => {}
        other => {
            return Err(invalid(
                param,
                at,
                format!(
                    "content must be a string or a list of parts, got {}",
                    kind(&other)
                ),
            ));
        }
    }
    parts.text.push_str(&texts.join("\n"));
    Ok(())
}

/// The one item a conversation's parts make, by the CLIP rule (module docs).
fn item_of(param: &'static str, at: &str, parts: Parts) -> Result<Input, ApiError> {
    let Parts {
        text,
        any_text,
        mut images,
    } = parts;
    match images.len() {
        0 if any_text => Ok(Input::Item(Item::Text(text))),
        0 => Err(invalid(param, at, "no text and no image to embed")),
        1 if text.trim().is_empty() => Ok(images.remove(0)),
        1 => Err(invalid(param, at, MIXED)),
        n => Err(invalid(
            param,
            at,
            format!(
                "{n} images: at most 1 image(s) may be provided in one prompt (CLIP embeds one image)"
            ),
        )),
    }
}

/// One conversation (`at` names it: `messages`, `messages[2]`, `input`).
pub fn conversation(
    param: &'static str,
    at: &str,
    messages: Vec<Value>,
) -> Result<Input, ApiError> {
    let mut parts = Parts::default();
    for (i, message) in messages.into_iter().enumerate() {
        let here = format!("{at}[{i}]");
        let Value::Object(mut message) = message else {
            return Err(invalid(
                param,
                &here,
                "a message must be an object with `role` and `content`",
            ));
        };
        if !message.get("role").is_some_and(Value::is_string) {
            return Err(invalid(param, &here, "a message needs a string `role`"));
        }
        let body = message.remove("content").unwrap_or(Value::Null);
        content(param, &format!("{here}.content"), body, &mut parts)?;
    }
    item_of(param, at, parts)
}

/// The items of `values`, a conversation (one item) or a batch of them (one each); `param` is the
/// field they came in (`messages`, `input`).
pub fn conversations(
    param: &'static str,
    values: Vec<Value>,
) -> Result<Vec<(String, Input)>, ApiError> {
    if is_batch(&values) {
        return values
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                let at = format!("{param}[{i}]");
                let messages = match v {
                    Value::Array(m) => m,
                    _ => Vec::new(),
                };
                conversation(param, &at, messages).map(|input| (at, input))
            })
            .collect();
    }
    if values.is_empty() {
        return Err(ApiError::invalid(
            Some(param),
            format!("{param}: empty; send a conversation (a list of messages) or a list of them"),
        ));
    }
    if !values.iter().all(|v| v.is_object()) {
        return Err(ApiError::invalid(
            Some(param),
            format!(
                "{param}: expected a list of messages `{{role, content}}` or a list of such lists"
            ),
        ));
    }
    let at = param.to_string();
    Ok(vec![(at.clone(), conversation(param, &at, values)?)])
}

/// A Cohere `inputs` entry: `{"content": [parts]}`, one item by the same CLIP rule.
pub fn cohere_input(param: &'static str, at: &str, v: Value) -> Result<Input, ApiError> {
    let Value::Object(mut map) = v else {
        return Err(invalid(
            param,
            at,
            format!("expected an object with `content`, got {}", kind(&v)),
        ));
    };
    let Some(list @ Value::Array(_)) = map.remove("content") else {
        return Err(invalid(param, at, "needs `content`, a list of parts"));
    };
    let mut parts = Parts::default();
    content(param, &format!("{at}.content"), list, &mut parts)?;
    item_of(param, at, parts)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn one(v: Value) -> Result<Input, ApiError> {
        let Value::Array(values) = v else { panic!() };
        conversations("messages", values).map(|mut c| {
            assert_eq!(c.len(), 1);
            c.remove(0).1
        })
    }

    const PNG: &str = "data:image/png;base64,AAEC";

    #[test]
    fn conversations_are_one_item_each_by_the_clip_rule() {
        let text = |v| match one(v) {
            Ok(Input::Item(Item::Text(t))) => t,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            text(json!([{"role": "user", "content": [{"type": "text", "text": "a cat"}]}])),
            "a cat"
        );
        assert_eq!(
            text(json!([
                {"role": "system", "content": "a"},
                {"role": "user", "content": [{"type": "text", "text": "b"}, {"type": "text", "text": "c"}]}
            ])),
            "ab\nc"
        );
        assert!(matches!(
            one(
                json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": PNG}}]}])
            ),
            Ok(Input::Item(Item::Image(_)))
        ));
        // Blank text beside the image is no text (vLLM: a prompt of special tokens only).
        assert!(matches!(
            one(
                json!([{"role": "user", "content": [{"type": "text", "text": " "}, {"type": "image_url", "image_url": {"url": PNG}}]}])
            ),
            Ok(Input::Item(Item::Image(_)))
        ));
        let batch = json!([
            [{"role": "user", "content": "a"}],
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": PNG}}]}]
        ]);
        let Value::Array(values) = batch else {
            panic!()
        };
        let items = conversations("messages", values).unwrap();
        assert_eq!(items[1].0, "messages[1]");
        assert!(matches!(items[1].1, Input::Item(Item::Image(_))));
    }

    #[test]
    fn mixed_unknown_and_extra_parts_are_refused_by_name() {
        let err = |v| one(v).unwrap_err().message;
        let e = err(
            json!([{"role": "user", "content": [{"type": "text", "text": "a cat"}, {"type": "image_url", "image_url": {"url": PNG}}]}]),
        );
        assert!(
            e.starts_with("messages: CLIP accepts text-only or image-only"),
            "{e}"
        );
        let e = err(
            json!([{"role": "user", "content": [{"type": "audio_url", "audio_url": {"url": "x"}}]}]),
        );
        assert!(
            e.starts_with("messages[0].content[0]: content part type \"audio_url\""),
            "{e}"
        );
        let two = json!({"type": "image_url", "image_url": {"url": PNG}});
        let e = err(json!([{"role": "user", "content": [two.clone(), two]}]));
        assert!(e.contains("at most 1 image"), "{e}");
        let e = err(json!([{"role": "user", "content": [{"type": "text"}]}]));
        assert!(e.contains("needs `text`"), "{e}");
        // An http(s) URL is left for the fetcher (refused later without one).
        assert!(matches!(
            one(
                json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}}]}])
            ),
            Ok(Input::Url(_))
        ));
        assert!(cohere_input("inputs", "inputs[0]", json!({"content": "x"})).is_err());
        assert!(matches!(
            cohere_input("inputs", "inputs[0]", json!({"content": [{"type": "text", "text": "a"}]})),
            Ok(Input::Item(Item::Text(t))) if t == "a"
        ));
    }
}
