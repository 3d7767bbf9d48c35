//! The input items HTTP clients send, turned into texts and image bytes: plain strings (text),
//! `data:image/...;base64,` strings (Haystack's image embedder sends these with no modality field),
//! `{"text": s}`, `{"image": url | raw base64 | data URI}`, `{"url": ...}` and `{"bytes": base64}`
//! (LangChain's and LlamaIndex's image paths). Image URLs are fetched with `--fetch-image-urls`
//! (the domain's [`Fetcher`] checks them), all of a request's at once after the body parses;
//! without it they get a 400 that names the item.
//!
//! Parsing is synchronous ([`parse_item`] and friends give [`Input`]s, URLs still to fetch);
//! [`items`], [`item`] and [`image`] parse and fetch.

use base64::{
    Engine as _, alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use serde_json::Value;

use super::error::ApiError;
use crate::embed::{
    Item,
    fetch::{FetchError, Fetcher},
};

/// An input as parsed: an item, or an image URL to fetch.
#[derive(Debug)]
pub enum Input {
    Item(Item),
    Url(String),
}

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

/// An image given as a string: a data URI, raw base64 or an http(s) URL.
pub fn parse_image(param: &'static str, at: &str, s: &str) -> Result<Input, ApiError> {
    let bytes = if is_url(s) {
        return Ok(Input::Url(s.to_string()));
    } else if is_data_uri(s) {
        data_uri(param, at, s)?
    } else {
        base64_bytes(param, at, s)?
    };
    Ok(Input::Item(Item::Image(bytes::Bytes::from(bytes))))
}

/// [`parse_image`], fetched.
pub async fn image(
    fetcher: Option<&Fetcher>,
    param: &'static str,
    at: &str,
    s: &str,
) -> Result<bytes::Bytes, ApiError> {
    let input = parse_image(param, at, s)?;
    match resolve(fetcher, param, vec![(at.to_string(), input)])
        .await?
        .pop()
    {
        Some(Item::Image(bytes)) => Ok(bytes),
        _ => Err(invalid(param, at, "expected an image")),
    }
}

/// [`parse_item`], fetched.
pub async fn item(
    fetcher: Option<&Fetcher>,
    param: &'static str,
    at: &str,
    v: Value,
) -> Result<Item, ApiError> {
    let input = parse_item(param, at, v)?;
    resolve(fetcher, param, vec![(at.to_string(), input)])
        .await?
        .pop()
        .ok_or_else(|| invalid(param, at, "expected an item"))
}

fn fetch_failed(param: &'static str, at: &str, e: &FetchError) -> ApiError {
    let what = match e {
        FetchError::Busy(_) => {
            return ApiError::from(crate::common::ServiceError::ResourceExhausted(format!(
                "{at}: the image URL: {e}"
            )));
        }
        FetchError::Refused(_) => "the image URL was refused",
        FetchError::Failed(_) => "fetching the image URL failed",
        FetchError::TooLarge(_) | FetchError::Timeout(_) => "the image URL",
    };
    invalid(param, at, format!("{what}: {e}"))
}

/// The items of `inputs` (each with its name, `input[3]`), their URLs fetched (a request's share
/// of the fetch slots at once, see [`Fetcher::fetch_all`]), in order. Without a fetcher a URL is
/// refused by name.
pub async fn resolve(
    fetcher: Option<&Fetcher>,
    param: &'static str,
    inputs: Vec<(String, Input)>,
) -> Result<Vec<Item>, ApiError> {
    let mut urls = Vec::new();
    let mut items: Vec<Option<Item>> = Vec::with_capacity(inputs.len());
    let mut names = Vec::with_capacity(inputs.len());
    for (at, input) in inputs {
        match input {
            Input::Item(item) => items.push(Some(item)),
            Input::Url(url) => {
                if fetcher.is_none() {
                    return Err(invalid(param, &at, NO_URLS));
                }
                urls.push((items.len(), url));
                items.push(None);
            }
        }
        names.push(at);
    }
    if let Some(fetcher) = fetcher
        && !urls.is_empty()
    {
        let (at, urls): (Vec<usize>, Vec<String>) = urls.into_iter().unzip();
        // The first failure in input order is the one reported.
        for (i, fetched) in at.into_iter().zip(fetcher.fetch_all(urls).await) {
            match fetched {
                Ok(bytes) => items[i] = Some(Item::Image(bytes)),
                Err(e) => return Err(fetch_failed(param, &names[i], &e)),
            }
        }
    }
    Ok(items.into_iter().flatten().collect())
}

/// One input item (see the module docs). `param` is the request field, `at` its rendering
/// (`input[3]`).
pub fn parse_item(param: &'static str, at: &str, v: Value) -> Result<Input, ApiError> {
    let image = |b: Vec<u8>| Input::Item(Item::Image(bytes::Bytes::from(b)));
    let string = |key: &str, v: Value| match v {
        Value::String(s) => Ok(s),
        other => Err(invalid(
            param,
            at,
            format!("`{key}` must be a string, got {}", kind(&other)),
        )),
    };
    match v {
        Value::String(s) if is_data_uri(&s) => data_uri(param, at, &s).map(image),
        Value::String(s) => Ok(Input::Item(Item::Text(s))),
        Value::Object(mut map) => {
            if let Some(text) = map.remove("text") {
                return string("text", text).map(|t| Input::Item(Item::Text(t)));
            }
            if let Some(v) = map.remove("image") {
                return parse_image(param, at, &string("image", v)?);
            }
            if let Some(v) = map.remove("url") {
                let url = string("url", v)?;
                return if is_data_uri(&url) {
                    data_uri(param, at, &url).map(image)
                } else if is_url(&url) {
                    Ok(Input::Url(url))
                } else {
                    Err(invalid(
                        param,
                        at,
                        "`url` must be an http(s) URL or a data:image/...;base64,... URI",
                    ))
                };
            }
            if let Some(v) = map.remove("bytes") {
                return base64_bytes(param, at, &string("bytes", v)?).map(image);
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
pub fn parse_items(
    param: &'static str,
    values: Vec<Value>,
) -> Result<Vec<(String, Input)>, ApiError> {
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let at = format!("{param}[{i}]");
            parse_item(param, &at, v).map(|input| (at, input))
        })
        .collect()
}

/// [`parse_items`], fetched.
pub async fn items(
    fetcher: Option<&Fetcher>,
    param: &'static str,
    values: Vec<Value>,
) -> Result<Vec<Item>, ApiError> {
    resolve(fetcher, param, parse_items(param, values)?).await
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn one(v: Value) -> Result<Item, ApiError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(item(None, "input", "input[0]", v))
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
        let e = parse_items("input", vec![json!("a"), json!([1, 2])]).unwrap_err();
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
