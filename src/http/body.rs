//! Request bodies, read only after the API key has been checked, limited while they stream in,
//! and parsed into typed requests whose item lists are counted while parsing (a 32 MiB body of
//! tiny items never becomes millions of allocations).

use std::cell::Cell;

use axum::{
    body::{Body, Bytes},
    http::{HeaderMap, StatusCode, header},
};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
use serde_json::Value;

use super::error::ApiError;
use crate::admission::bytes::{ByteBudget, BytesPermit};

fn too_large(limit: usize) -> ApiError {
    ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        kind: "invalid_request_error",
        code: "request_too_large",
        param: None,
        message: format!(
            "the body is over the limit of {limit} bytes (--max-message-bytes bounds the body)"
        ),
        grpc_code: "OUT_OF_RANGE",
    }
}

/// The body, at most `limit` bytes: a declared length over it is refused before anything is read,
/// an undeclared one as soon as the bytes read pass it. A declared body is held against
/// `--max-inflight-bytes` before it is read (429 when it does not fit); an undeclared one once read.
pub async fn read(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    budget: &ByteBudget,
) -> Result<(Bytes, BytesPermit), ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    let held = declared.map(|n| budget.try_take(n)).transpose()?;
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large(limit)),
        Err(e) => {
            return Err(ApiError::invalid(
                None,
                format!("reading the body failed: {e}"),
            ));
        }
    };
    let held = match held {
        Some(held) => held,
        None => budget.try_take(bytes.len() as u64)?,
    };
    Ok((bytes, held))
}

thread_local! {
    /// The item limit [`Items`] enforces while a body is parsed on this thread.
    static MAX_ITEMS: Cell<usize> = const { Cell::new(usize::MAX) };
    /// The label limit [`Labels`] enforces while a body is parsed on this thread.
    static MAX_LABELS: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Parses `bytes` as `T` with every [`Items`] list in it bounded to `max_items` elements (and
/// every [`Labels`] list to as many).
pub fn parse<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    max_items: usize,
) -> Result<T, serde_json::Error> {
    parse_with_labels(bytes, max_items, max_items)
}

/// [`parse`] with [`Labels`] lists bounded to `max_labels` (`--max-labels`).
pub fn parse_with_labels<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    max_items: usize,
    max_labels: usize,
) -> Result<T, serde_json::Error> {
    let previous = MAX_ITEMS.with(|m| m.replace(max_items));
    let previous_labels = MAX_LABELS.with(|m| m.replace(max_labels));
    let parsed = serde_json::from_slice(bytes);
    MAX_ITEMS.with(|m| m.set(previous));
    MAX_LABELS.with(|m| m.set(previous_labels));
    parsed
}

/// A list of labels: an array of strings, or one string of comma-separated labels (what older
/// huggingface_hub versions send), counted while parsed (refused past `--max-labels`).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Labels(pub Vec<String>);

/// A list of strings (templates) bounded as [`Labels`] are; one string is a list of one.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Strings(pub Vec<String>);

impl<'de> Deserialize<'de> for Strings {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let visitor = LabelsVisitor {
            max: MAX_LABELS.with(Cell::get),
            split: false,
        };
        deserializer.deserialize_any(visitor).map(|l| Strings(l.0))
    }
}

struct LabelsVisitor {
    max: usize,
    /// A string is comma-separated labels (else: one string).
    split: bool,
}

impl<'de> Visitor<'de> for LabelsVisitor {
    type Value = Labels;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of strings or a string")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Labels, E> {
        if !self.split {
            return Ok(Labels(vec![s.to_string()]));
        }
        let labels: Vec<String> = s
            .split(',')
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        if labels.len() > self.max {
            return Err(de::Error::custom(format!(
                "more than {} labels, over the limit (--max-labels)",
                self.max
            )));
        }
        Ok(Labels(labels))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Labels, A::Error> {
        let max = self.max;
        let mut labels = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(max));
        while let Some(label) = seq.next_element::<String>()? {
            if labels.len() == max {
                return Err(de::Error::custom(format!(
                    "more than {max} labels, over the limit (--max-labels)"
                )));
            }
            labels.push(label);
        }
        Ok(Labels(labels))
    }
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(LabelsVisitor {
            max: MAX_LABELS.with(Cell::get),
            split: true,
        })
    }
}

/// A request's item list (`input`, `documents`): one string, or a list of items counted while they are parsed (refused
/// past the limit before the rest is read).
#[derive(Debug, Default)]
pub struct Items(pub Vec<Value>);

impl<'de> Deserialize<'de> for Items {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ItemsVisitor(usize);
        impl<'de> Visitor<'de> for ItemsVisitor {
            type Value = Items;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or an array")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Items, E> {
                Ok(Items(vec![Value::String(s.to_string())]))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Items, E> {
                Ok(Items(vec![Value::String(s)]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Items, A::Error> {
                let max = self.0;
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(max));
                while let Some(item) = seq.next_element::<Value>()? {
                    if items.len() == max {
                        return Err(de::Error::custom(format!(
                            "a list of more than {max} items, over the limit per request (--max-items-per-request)"
                        )));
                    }
                    items.push(item);
                }
                Ok(Items(items))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<Items, A::Error> {
                Err(de::Error::custom(
                    "expected a string or an array, got an object",
                ))
            }
        }
        deserializer.deserialize_any(ItemsVisitor(MAX_ITEMS.with(Cell::get)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Request {
        input: Items,
    }

    #[test]
    fn items_are_counted_while_parsing() {
        let r: Request = parse(br#"{"input": ["a", "b"]}"#, 2).unwrap();
        assert_eq!(r.input.0.len(), 2);
        let r: Request = parse(br#"{"input": "one"}"#, 2).unwrap();
        assert_eq!(r.input.0, [Value::String("one".into())]);
        // The third item is refused before the parser reaches the broken fourth.
        let e = parse::<Request>(br#"{"input": ["a", "b", "c", !!!"#, 2).unwrap_err();
        assert!(e.to_string().contains("more than 2 items"), "{e}");
        let e = parse::<Request>(br#"{"input": {"x": 1}}"#, 2).unwrap_err();
        assert!(e.to_string().contains("got an object"), "{e}");
        // The limit is per call: the next parse on this thread is not bounded by this one's.
        let r: Request = parse(br#"{"input": ["a", "b", "c"]}"#, 3).unwrap();
        assert_eq!(r.input.0.len(), 3);
    }

    #[test]
    fn labels_are_lists_or_comma_strings_counted_while_parsing() {
        #[derive(Debug, serde::Deserialize)]
        struct Request {
            labels: Labels,
        }
        let r: Request = parse_with_labels(br#"{"labels": ["a", "b c"]}"#, 1, 2).unwrap();
        assert_eq!(r.labels.0, ["a", "b c"]);
        let r: Request = parse_with_labels(br#"{"labels": "cat, dog,"}"#, 1, 2).unwrap();
        assert_eq!(r.labels.0, ["cat", "dog"]);
        let e =
            parse_with_labels::<Request>(br#"{"labels": ["a", "b", "c", !!!"#, 1, 2).unwrap_err();
        assert!(e.to_string().contains("more than 2 labels"), "{e}");
        assert!(parse_with_labels::<Request>(br#"{"labels": "a,b,c"}"#, 1, 2).is_err());
    }

    #[tokio::test]
    async fn bodies_are_limited_while_they_stream_and_held_against_the_budget() {
        let budget = ByteBudget::new(4096, prometheus::IntGauge::new("b", "t").unwrap());
        let mut headers = HeaderMap::new();
        let (ok, held) = read(&headers, Body::from("0123456789"), 10, &budget)
            .await
            .unwrap();
        assert_eq!(&ok[..], b"0123456789");
        let e = read(&headers, Body::from("0123456789x"), 10, &budget)
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        headers.insert(header::CONTENT_LENGTH, "11".parse().unwrap());
        let e = read(&headers, Body::empty(), 10, &budget)
            .await
            .unwrap_err();
        assert_eq!(
            e.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "refused from the header alone"
        );
        // The budget is 4 KiB and the first body holds 1 KiB of it.
        let _big = budget.try_take(3 * 1024).unwrap();
        headers.insert(header::CONTENT_LENGTH, "5".parse().unwrap());
        let e = read(&headers, Body::from("hello"), 10, &budget)
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        drop(held);
        assert!(
            read(&headers, Body::from("hello"), 10, &budget)
                .await
                .is_ok()
        );
    }
}
