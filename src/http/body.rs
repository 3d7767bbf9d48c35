//! Request bodies, read only after the API key has been checked, limited while they stream in,
//! and parsed into typed requests whose item lists are counted while parsing (a 32 MiB body of
//! tiny items never becomes millions of allocations).

use std::{cell::Cell, sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes},
    http::{HeaderMap, StatusCode, header},
};
use bytes::BytesMut;
use http_body_util::BodyExt;
use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
use serde_json::Value;
use tokio::{sync::Semaphore, time::Instant};

use super::error::ApiError;
use crate::{
    admission::bytes::{ByteBudget, BytesPermit},
    common::ServiceError,
};

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

fn too_slow(message: String) -> ApiError {
    ApiError {
        status: StatusCode::REQUEST_TIMEOUT,
        kind: "invalid_request_error",
        code: "request_timeout",
        param: None,
        message,
        grpc_code: "DEADLINE_EXCEEDED",
    }
}

/// A body slower than the minimum rate is cut off only after this long (a client's first bytes
/// may wait on its own scheduling or a TCP slow start).
const MIN_RATE_GRACE: Duration = Duration::from_secs(5);

/// How request bodies are read: bounded in size, in time, in rate, in bytes held and in how many
/// are read at once.
#[derive(Clone)]
pub struct BodyRules {
    /// `--max-message-bytes`.
    pub limit: usize,
    /// `--max-inflight-bytes`: bytes are charged to it as they arrive.
    pub budget: ByteBudget,
    /// `--body-read-timeout`: the whole body arrives within it.
    pub timeout: Duration,
    /// `--body-min-rate` (bytes/s, 0: none): after a grace of 5 s, a body whose average rate is
    /// below it is cut off.
    pub min_rate: u64,
    /// `--max-body-readers`: bodies being read at once.
    readers: Arc<Semaphore>,
    max_readers: usize,
}

impl BodyRules {
    pub fn new(
        limit: usize,
        budget: ByteBudget,
        timeout: Duration,
        min_rate: u64,
        readers: usize,
    ) -> Self {
        BodyRules {
            limit,
            budget,
            timeout,
            min_rate,
            readers: Arc::new(Semaphore::new(readers.max(1))),
            max_readers: readers.max(1),
        }
    }

    /// Refuses a body arriving below the minimum rate, `received` bytes after `elapsed`.
    fn check_rate(&self, received: usize, elapsed: Duration) -> Result<(), ApiError> {
        if self.min_rate == 0 || elapsed < MIN_RATE_GRACE {
            return Ok(());
        }
        let expected = self.min_rate as f64 * elapsed.as_secs_f64();
        if (received as f64) < expected {
            return Err(too_slow(format!(
                "the body arrived at {:.0} bytes/s, below the minimum of {} bytes/s (--body-min-rate)",
                received as f64 / elapsed.as_secs_f64(),
                self.min_rate
            )));
        }
        Ok(())
    }
}

/// The body, at most `rules.limit` bytes: a declared length over it is refused before anything is
/// read, an undeclared one as soon as the bytes read pass it. Nothing is reserved for bytes that
/// have not arrived: they are charged to `--max-inflight-bytes` as they come (429 when they do not
/// fit), the body must arrive within `--body-read-timeout` and at least at `--body-min-rate` (408
/// otherwise), and at most `--max-body-readers` bodies are read at once (503 beyond). Whatever a
/// refused body held is freed with it.
pub async fn read(
    headers: &HeaderMap,
    mut body: Body,
    rules: &BodyRules,
) -> Result<(Bytes, BytesPermit), ApiError> {
    let limit = rules.limit;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    let _reading = Arc::clone(&rules.readers).try_acquire_owned().map_err(|_| {
        ApiError::from(ServiceError::Unavailable(format!(
            "too many request bodies are being read at once (--max-body-readers {}); retry later",
            rules.max_readers
        )))
    })?;
    let mut held = rules.budget.arriving();
    let mut buf = BytesMut::new();
    let started = Instant::now();
    let deadline = started + rules.timeout;
    loop {
        // Wake at least every second to check the rate of a body whose bytes stopped coming.
        let check = deadline.min(Instant::now() + Duration::from_secs(1));
        let frame = match tokio::time::timeout_at(check, body.frame()).await {
            Ok(frame) => frame,
            Err(_) => {
                if Instant::now() >= deadline {
                    return Err(too_slow(format!(
                        "the body did not arrive within {:?} (--body-read-timeout)",
                        rules.timeout
                    )));
                }
                rules.check_rate(buf.len(), started.elapsed())?;
                continue;
            }
        };
        let data = match frame {
            None => break,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                // Trailers: nothing to keep.
                Err(_) => continue,
            },
            Some(Err(e)) => {
                return Err(ApiError::invalid(
                    None,
                    format!("reading the body failed: {e}"),
                ));
            }
        };
        let total = buf.len() + data.len();
        if total > limit {
            return Err(too_large(limit));
        }
        rules.budget.try_grow(&mut held, total as u64)?;
        if buf.capacity() < total {
            // Doubling, but never past the declared length nor reserving ahead of it.
            let want = total.max(buf.len() * 2).max(64 * 1024);
            let want = declared.map_or(want, |d| want.min(d as usize)).max(total);
            buf.reserve(want - buf.len());
        }
        buf.extend_from_slice(&data);
        rules.check_rate(buf.len(), started.elapsed())?;
    }
    Ok((buf.freeze(), held))
}

thread_local! {
    /// The item limit [`Items`] enforces while a body is parsed on this thread.
    static MAX_ITEMS: Cell<usize> = const { Cell::new(usize::MAX) };
    /// The label limit [`Labels`] enforces while a body is parsed on this thread.
    static MAX_LABELS: Cell<usize> = const { Cell::new(usize::MAX) };
    /// The flag named when an [`Items`] list is over its limit.
    static ITEMS_FLAG: Cell<&'static str> = const { Cell::new("--max-items-per-request") };
}

/// Parses `bytes` as `T` with every [`Items`] list in it bounded to `max_items` elements (and
/// every [`Labels`] list to as many).
pub fn parse<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    max_items: usize,
) -> Result<T, serde_json::Error> {
    parse_with_labels(bytes, max_items, max_items)
}

/// [`parse`] with the limit set by `flag` (named when a list is over it: `--max-upsert-items`).
pub fn parse_limited_by<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    max_items: usize,
    flag: &'static str,
) -> Result<T, serde_json::Error> {
    let previous = ITEMS_FLAG.with(|f| f.replace(flag));
    let parsed = parse(bytes, max_items);
    ITEMS_FLAG.with(|f| f.set(previous));
    parsed
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
        struct ItemsVisitor(usize, &'static str);
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
                            "a list of more than {max} items, over the limit per request ({})",
                            self.1
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
        deserializer.deserialize_any(ItemsVisitor(
            MAX_ITEMS.with(Cell::get),
            ITEMS_FLAG.with(Cell::get),
        ))
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

    fn rules(budget: &ByteBudget, limit: usize) -> BodyRules {
        BodyRules::new(limit, budget.clone(), Duration::from_secs(30), 1024, 4)
    }

    #[tokio::test]
    async fn bodies_are_limited_while_they_stream_and_held_against_the_budget() {
        let budget = ByteBudget::new(4096, prometheus::IntGauge::new("b", "t").unwrap());
        let budget = &rules(&budget, 10);
        let mut headers = HeaderMap::new();
        let (ok, held) = read(&headers, Body::from("0123456789"), budget)
            .await
            .unwrap();
        assert_eq!(&ok[..], b"0123456789");
        let e = read(&headers, Body::from("0123456789x"), budget)
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        headers.insert(header::CONTENT_LENGTH, "11".parse().unwrap());
        let e = read(&headers, Body::empty(), budget).await.unwrap_err();
        assert_eq!(
            e.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "refused from the header alone"
        );
        // The budget is 4 KiB and the first body holds 1 KiB of it.
        let _big = budget.budget.try_take(3 * 1024).unwrap();
        headers.insert(header::CONTENT_LENGTH, "5".parse().unwrap());
        let e = read(&headers, Body::from("hello"), budget)
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        drop(held);
        assert!(read(&headers, Body::from("hello"), budget).await.is_ok());
    }

    /// A body whose chunks come from `rx` (a client sending at its own pace).
    fn trickle() -> (tokio::sync::mpsc::Sender<&'static [u8]>, Body) {
        let (tx, rx) = tokio::sync::mpsc::channel::<&'static [u8]>(1);
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx)
            .map(|b| Ok::<_, std::io::Error>(Bytes::from_static(b)));
        (tx, Body::from_stream(stream))
    }

    use tokio_stream::StreamExt as _;

    #[tokio::test(start_paused = true)]
    async fn a_declared_length_reserves_nothing_and_a_silent_body_times_out_freeing_what_it_held() {
        let budget = ByteBudget::new(64 * 1024, prometheus::IntGauge::new("b", "t").unwrap());
        let rules = BodyRules::new(1 << 20, budget.clone(), Duration::from_secs(30), 0, 4);
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, "1048576".parse().unwrap());
        let (tx, body) = trickle();
        let reading = tokio::spawn({
            let (headers, rules) = (headers.clone(), rules.clone());
            async move { read(&headers, body, &rules).await.map(|_| ()) }
        });
        tx.send(b"01234567890").await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        // 11 bytes arrived of a declared MiB: one KiB is held, the rest of the budget is free.
        assert!(
            budget.try_take(63 * 1024).is_ok(),
            "the declared length reserved nothing"
        );
        let e = reading.await.unwrap().unwrap_err();
        assert_eq!(e.status, StatusCode::REQUEST_TIMEOUT);
        assert!(e.message.contains("--body-read-timeout"), "{}", e.message);
        assert!(budget.try_take(64 * 1024).is_ok(), "freed with the body");
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickling_body_is_cut_off_below_the_minimum_rate() {
        let budget = ByteBudget::new(64 * 1024, prometheus::IntGauge::new("b", "t").unwrap());
        let rules = BodyRules::new(1 << 20, budget, Duration::from_secs(30), 1024, 4);
        let (tx, body) = trickle();
        let reading = tokio::spawn(async move {
            let started = Instant::now();
            (
                read(&HeaderMap::new(), body, &rules).await.map(|_| ()),
                started.elapsed(),
            )
        });
        // One byte a second: well below 1 KiB/s.
        let sender = tokio::spawn(async move {
            while tx.send(b"x").await.is_ok() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let (result, took) = reading.await.unwrap();
        let e = result.unwrap_err();
        assert_eq!(e.status, StatusCode::REQUEST_TIMEOUT);
        assert!(e.message.contains("--body-min-rate"), "{}", e.message);
        assert!(
            took < Duration::from_secs(7),
            "cut off after the grace: {took:?}"
        );
        sender.abort();
    }

    #[tokio::test]
    async fn bodies_read_at_once_are_bounded() {
        let budget = ByteBudget::new(64 * 1024, prometheus::IntGauge::new("b", "t").unwrap());
        let rules = BodyRules::new(1 << 20, budget, Duration::from_secs(30), 0, 1);
        let (tx, body) = trickle();
        let first = tokio::spawn({
            let rules = rules.clone();
            async move { read(&HeaderMap::new(), body, &rules).await.map(|(b, _)| b) }
        });
        tx.send(b"a").await.unwrap();
        while rules.readers.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        let e = read(&HeaderMap::new(), Body::from("b"), &rules)
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(e.message.contains("--max-body-readers"), "{}", e.message);
        drop(tx);
        assert_eq!(&first.await.unwrap().unwrap()[..], b"a");
        assert!(
            read(&HeaderMap::new(), Body::from("b"), &rules)
                .await
                .is_ok()
        );
    }
}
