//! The input items HTTP clients send, turned into texts and image bytes: plain strings (text),
//! `data:image/...;base64,` strings (Haystack's image embedder sends these with no modality field),
//! `{"text": s}`, `{"image": url | raw base64 | data URI}`, `{"url": ...}` and `{"bytes": base64}`
//! (LangChain's and LlamaIndex's image paths). Image URLs are not fetched: they get a 400 that
//! names the item.

use base64::{
    Engine as _, alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use serde_json::Value;

use super::error::ApiError;
use crate::embed::Item;

/// Base64 with or without padding.
const LENIENT: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);

/// A 400 about the value at `at` (`input[3]`, `query`).
pub fn invalid(param: &'static str, at: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::invalid(Some(param), format!("{at}: {message}"))
}

pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn is_url(s: &str) -> bool {
    let head = s.get(..8).unwrap_or(s).to_ascii_lowercase();
    head.starts_with("http://") || head.starts_with("https://")
}

fn is_data_uri(s: &str) -> bool {
    s.get(..5).is_some_and(|h| h.eq_ignore_ascii_case("data:"))
}

const NO_URLS: &str = "image URL fetching is not enabled on this server (it would let clients make \
    it request arbitrary addresses); send the image itself as base64 or a data:image/...;base64,... URI";

/// Raw base64 (standard or URL-safe alphabet, padding optional, line breaks allowed).
pub fn base64_bytes(param: &'static str, at: &str, s: &str) -> Result<Vec<u8>, ApiError> {
    let s = s.trim();
    let joined;
    let s = if s.bytes().any(|b| b.is_ascii_whitespace()) {
        joined = s
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect::<String>();
        joined.as_str()
    } else {
        s
    };
    if s.is_empty() {
        return Err(invalid(param, at, "the image is empty"));
    }
    STANDARD
        .decode(s)
        .or_else(|_| URL_SAFE.decode(s))
        .map_err(|e| {
            invalid(
                param,
                at,
                format!("the image's base64 does not decode: {e}"),
            )
        })
}

/// The bytes of a `data:image/...;base64,...` URI.
pub fn data_uri(param: &'static str, at: &str, s: &str) -> Result<Vec<u8>, ApiError> {
    let rest = s
        .get(5..)
        .filter(|_| is_data_uri(s))
        .ok_or_else(|| invalid(param, at, "expected a data:image/...;base64,... URI"))?;
    let (meta, payload) = rest
        .split_once(',')
        .ok_or_else(|| invalid(param, at, "a data URI needs a comma before its payload"))?;
    let meta = meta.to_ascii_lowercase();
    if !meta.ends_with(";base64") {
        return Err(invalid(
            param,
            at,
            "only base64 data URIs are accepted (`;base64,`)",
        ));
    }
    if !meta.starts_with("image/") {
        return Err(invalid(
            param,
            at,
            format!(
                "media type {:?} is not an image",
                meta.trim_end_matches(";base64")
            ),
        ));
    }
    base64_bytes(param, at, payload)
}

/// An image given as a string: a data URI or raw base64; an http(s) URL is refused.
pub fn image(param: &'static str, at: &str, s: &str) -> Result<bytes::Bytes, ApiError> {
    if is_url(s) {
        Err(invalid(param, at, NO_URLS))
    } else if is_data_uri(s) {
        data_uri(param, at, s).map(bytes::Bytes::from)
    } else {
        base64_bytes(param, at, s).map(bytes::Bytes::from)
    }
}

/// One input item (see the module docs). `param` is the request field, `at` its rendering
/// (`input[3]`).
pub fn item(param: &'static str, at: &str, v: Value) -> Result<Item, ApiError> {
    let string = |key: &str, v: Value| match v {
        Value::String(s) => Ok(s),
        other => Err(invalid(
            param,
            at,
            format!("`{key}` must be a string, got {}", kind(&other)),
        )),
    };
    match v {
        Value::String(s) if is_data_uri(&s) => {
            data_uri(param, at, &s).map(|b| Item::Image(bytes::Bytes::from(b)))
        }
        Value::String(s) => Ok(Item::Text(s)),
        Value::Object(mut map) => {
            if let Some(text) = map.remove("text") {
                return string("text", text).map(Item::Text);
            }
            if let Some(v) = map.remove("image") {
                return image(param, at, &string("image", v)?).map(Item::Image);
            }
            if let Some(v) = map.remove("url") {
                let url = string("url", v)?;
                return if is_data_uri(&url) {
                    data_uri(param, at, &url).map(|b| Item::Image(bytes::Bytes::from(b)))
                } else {
                    Err(invalid(param, at, NO_URLS))
                };
            }
            if let Some(v) = map.remove("bytes") {
                return base64_bytes(param, at, &string("bytes", v)?)
                    .map(|b| Item::Image(bytes::Bytes::from(b)));
            }
            Err(invalid(
                param,
                at,
                "expected an object with `text`, `image`, `url` or `bytes`",
            ))
        }
        Value::Number(_) | Value::Array(_) => Err(invalid(
            param,
            at,
            "token ids are not accepted; send the text itself",
        )),
        other => Err(invalid(
            param,
            at,
            format!(
                "expected a string or an object with `text` or `image`, got {}",
                kind(&other)
            ),
        )),
    }
}

/// Every item of a list, as `param[i]`.
pub fn items(param: &'static str, values: Vec<Value>) -> Result<Vec<Item>, ApiError> {
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| item(param, &format!("{param}[{i}]"), v))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn one(v: Value) -> Result<Item, ApiError> {
        item("input", "input[0]", v)
    }

    #[test]
    fn every_client_shape_is_an_item() {
        assert!(matches!(one(json!("a cat")).unwrap(), Item::Text(t) if t == "a cat"));
        assert!(matches!(one(json!({"text": "a"})).unwrap(), Item::Text(t) if t == "a"));
        for v in [
            json!("data:image/png;base64,AAEC"),
            json!({"image": "AAEC"}),
            json!({"image": "data:image/png;base64,AAEC"}),
            json!({"url": "data:image/png;base64,AAEC"}),
            json!({"bytes": "AAEC"}),
            json!({"bytes": "AAE\nC"}),
            json!({"bytes": "AAE"}),
        ] {
            match one(v.clone()).unwrap() {
                Item::Image(b) => assert_eq!(b[..2], [0, 1], "{v}"),
                Item::Text(_) => panic!("{v} is an image"),
            }
        }
    }

    #[test]
    fn urls_and_bad_items_are_refused_by_name() {
        for v in [
            json!({"image": "https://example.com/cat.jpg"}),
            json!({"url": "http://example.com/cat.jpg"}),
        ] {
            let e = one(v).unwrap_err();
            assert!(
                e.message
                    .starts_with("input[0]: image URL fetching is not enabled"),
                "{}",
                e.message
            );
            assert_eq!(e.status.as_u16(), 400);
        }
        let e = items("input", vec![json!("a"), json!([1, 2])]).unwrap_err();
        assert!(
            e.message.starts_with("input[1]: token ids"),
            "{}",
            e.message
        );
        for bad in [
            json!({"x": 1}),
            json!({"text": 3}),
            json!(null),
            json!("data:text/plain;base64,AAEC"),
            json!("data:image/png,raw"),
            json!({"image": "@@"}),
            json!({"bytes": ""}),
        ] {
            assert!(one(bad.clone()).is_err(), "{bad}");
        }
    }
}
