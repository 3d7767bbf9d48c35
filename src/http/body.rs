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
    admission::{
        bytes::{ByteBudget, BytesPermit},
        connections::{PeerPlace, PeerShares},
    },
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
    /// `--max-body-readers`: bodies being read at once ...
    readers: Arc<Semaphore>,
    max_readers: usize,
    /// ... of which one peer (an IPv4 address or IPv6 /64) may read a quarter.
    peers: PeerShares,
}

/// A body-reading place, and its peer's share, held while a body is read.
struct Reading {
    _place: tokio::sync::OwnedSemaphorePermit,
    _peer: Option<PeerPlace>,
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
            // A quarter of the places, so a client that trickles many bodies cannot take them all.
            peers: PeerShares::new(Self::per_peer(readers.max(1))),
        }
    }

    /// The most bodies one peer may have read at once, of `max_readers`.
    fn per_peer(max_readers: usize) -> usize {
        (max_readers / 4).max(1)
    }

    /// A place to read a body from `peer` (its address, when known), or 503.
    fn reading(&self, peer: Option<std::net::IpAddr>) -> Result<Reading, ApiError> {
        let busy = |what: String| ApiError::from(ServiceError::Unavailable(what));
        let place = Arc::clone(&self.readers).try_acquire_owned().map_err(|_| {
            busy(format!(
                "too many request bodies are being read at once (--max-body-readers {}); retry later",
                self.max_readers
            ))
        })?;
        let peer_place = match peer {
            None => None,
            Some(ip) => Some(self.peers.try_take(ip).ok_or_else(|| {
                busy(format!(
                    "this client has {} request bodies being read already, a quarter of --max-body-readers {}; retry later",
                    Self::per_peer(self.max_readers),
                    self.max_readers
                ))
            })?),
        };
        Ok(Reading {
            _place: place,
            _peer: peer_place,
        })
    }

    /// Refuses a body arriving below the minimum rate, `received` bytes after `elapsed`.
    fn check_rate(&self, received: usize, elapsed: Duration) -> Result<(), ApiError> {
        if crate::admission::below_min_rate(self.min_rate, received as u64, elapsed) {
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
/// otherwise), and at most `--max-body-readers` bodies are read at once, a quarter of them for one
/// peer (503 beyond). Whatever a refused body held is freed with it.
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
    let _reading = rules.reading(super::call::current_peer())?;
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

/// The bounds a body is parsed under, all checked by the deserializer as it goes (a body over one
/// is refused before the rest is read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JsonLimits {
    /// Elements of each [`Items`] list.
    pub max_items: usize,
    /// The flag named when an [`Items`] list is over `max_items`.
    pub items_flag: &'static str,
    /// Elements of each [`Labels`] and [`Strings`] list.
    pub max_labels: usize,
    /// Nesting of free-form JSON (an item, a document, a query): `--max-json-depth`.
    pub max_depth: usize,
    /// Memory the free-form JSON of one body may take once parsed besides its strings' bytes
    /// (which are never more than the body's), estimated while it is parsed (every value's slot,
    /// object entries, string buffers' overhead): `--max-json-bytes`.
    pub max_value_bytes: usize,
    /// Key and value bytes of each metadata or filter map: `--max-metadata-bytes`.
    pub max_metadata_bytes: usize,
}

/// `--max-json-depth`'s default.
pub const DEFAULT_MAX_JSON_DEPTH: usize = 32;
/// `--max-json-bytes`'s default.
pub const DEFAULT_MAX_JSON_BYTES: usize = 64 << 20;

impl Default for JsonLimits {
    fn default() -> Self {
        JsonLimits {
            max_items: usize::MAX,
            items_flag: "--max-items-per-request",
            max_labels: usize::MAX,
            max_depth: DEFAULT_MAX_JSON_DEPTH,
            max_value_bytes: DEFAULT_MAX_JSON_BYTES,
            max_metadata_bytes: usize::MAX,
        }
    }
}

thread_local! {
    /// The limits the body being parsed on this thread is held to (outside [`parse_bounded`]:
    /// no memory bound, so what is charged there never adds up to a refusal).
    static LIMITS: Cell<JsonLimits> = Cell::new(JsonLimits {
        max_value_bytes: usize::MAX,
        ..JsonLimits::default()
    });
    /// Bytes of free-form JSON the body being parsed on this thread holds so far.
    static CHARGED: Cell<usize> = const { Cell::new(0) };
}

fn limits() -> JsonLimits {
    LIMITS.with(Cell::get)
}

/// Parses `bytes` as `T` under `limits` (see [`JsonLimits`]).
pub fn parse_bounded<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    limits: JsonLimits,
) -> Result<T, serde_json::Error> {
    let previous = LIMITS.with(|l| l.replace(limits));
    let charged = CHARGED.with(|c| c.replace(0));
    let parsed = serde_json::from_slice(bytes);
    LIMITS.with(|l| l.set(previous));
    CHARGED.with(|c| c.set(charged));
    parsed
}

/// Parses `bytes` as `T` with every [`Items`] list in it bounded to `max_items` elements (and
/// every [`Labels`] list to as many), free-form JSON under the default depth and memory bounds.
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
    parse_bounded(
        bytes,
        JsonLimits {
            max_items,
            max_labels,
            ..JsonLimits::default()
        },
    )
}

/// Adds `bytes` to what the body being parsed holds; an error naming `--max-json-bytes` past it.
fn charge<E: de::Error>(bytes: usize) -> Result<(), E> {
    let max = limits().max_value_bytes;
    let total = CHARGED.with(|c| {
        let total = c.get().saturating_add(bytes);
        c.set(total);
        total
    });
    if total > max {
        return Err(E::custom(format!(
            "the body's JSON would take more than {max} bytes once parsed, over the limit \
             (--max-json-bytes)"
        )));
    }
    Ok(())
}

fn refund(bytes: usize) {
    CHARGED.with(|c| c.set(c.get().saturating_sub(bytes)));
}

/// What one object entry costs besides its key: the key's `String`, the value's slot and the
/// map's node overhead (a B-tree node, or an index map's hash slot, per entry).
const ENTRY_BYTES: usize = std::mem::size_of::<String>() + std::mem::size_of::<Value>() + 32;
/// One value's slot in its list.
const VALUE_BYTES: usize = std::mem::size_of::<Value>();

/// What a string costs besides its bytes (which the body limit bounds already: a parsed string
/// is never longer than its JSON): the allocator's overhead on its buffer.
fn string_bytes(s: &str) -> usize {
    if s.is_empty() { 0 } else { 16 }
}

/// A free-form JSON value (an item, a document, a query) parsed under the body's
/// [`JsonLimits`]: nested at most `max_depth` deep, and charged to `max_value_bytes` as it is
/// built (a list's slots as it grows, object entries, string buffers), so a body of tiny values
/// never becomes many times its size in memory.
#[derive(Clone, Copy)]
struct BoundedValue {
    /// Arrays and objects this value is inside.
    depth: usize,
}

impl BoundedValue {
    fn enter<E: de::Error>(self) -> Result<BoundedValue, E> {
        let max = limits().max_depth;
        if self.depth >= max {
            return Err(E::custom(format!(
                "JSON nested more than {max} levels deep, over the limit (--max-json-depth)"
            )));
        }
        Ok(BoundedValue {
            depth: self.depth + 1,
        })
    }
}

impl<'de> de::DeserializeSeed<'de> for BoundedValue {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for BoundedValue {
    type Value = Value;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        charge(string_bytes(v))?;
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        charge(string_bytes(&v))?;
        Ok(Value::String(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.enter()?;
        let mut values: Vec<Value> = Vec::new();
        // The list's slots are charged before they are allocated, spare capacity included.
        let mut slots = 0;
        loop {
            if values.len() == values.capacity() {
                let grow = values.capacity().max(4);
                charge(grow * VALUE_BYTES)?;
                slots += grow;
                values.reserve_exact(grow);
            }
            match seq.next_element_seed(inner)? {
                Some(v) => values.push(v),
                None => break,
            }
        }
        values.shrink_to_fit();
        refund(slots.saturating_sub(values.capacity()) * VALUE_BYTES);
        Ok(Value::Array(values))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = self.enter()?;
        let mut values = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            charge(ENTRY_BYTES + string_bytes(&key))?;
            let value = map.next_value_seed(inner)?;
            values.insert(key, value);
        }
        Ok(Value::Object(values))
    }
}

/// A free-form JSON value parsed under the body's [`JsonLimits`] (`#[serde(deserialize_with)]`).
pub fn value<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
    charge(VALUE_BYTES)?;
    de::DeserializeSeed::deserialize(BoundedValue { depth: 0 }, deserializer)
}

/// A metadata or filter map of strings, its key and value bytes counted while it is parsed
/// (refused past `--max-metadata-bytes` before the rest is read, so a map of a million keys is
/// never built).
pub fn string_map<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<std::collections::BTreeMap<String, String>, D::Error> {
    struct MapVisitor(usize);
    impl<'de> Visitor<'de> for MapVisitor {
        type Value = std::collections::BTreeMap<String, String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object of strings")
        }
        fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let max = self.0;
            let (mut bytes, mut entries) = (0usize, 0usize);
            let mut out = std::collections::BTreeMap::new();
            while let Some(key) = map.next_key::<String>()? {
                let value = map.next_value::<String>()?;
                bytes = bytes.saturating_add(key.len() + value.len());
                entries += 1;
                // Every entry but one (the empty key) takes at least a byte, so the entries are
                // bounded too, duplicates and all.
                if bytes > max || entries > max.saturating_add(1) {
                    return Err(de::Error::custom(format!(
                        "more than {max} bytes of keys and values, over the limit \
                         (--max-metadata-bytes)"
                    )));
                }
                out.insert(key, value);
            }
            Ok(out)
        }
    }
    deserializer.deserialize_map(MapVisitor(limits().max_metadata_bytes))
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
            max: limits().max_labels,
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
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of strings or a string")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Labels, E> {
        if !self.split {
            return Ok(Labels(vec![s.to_string()]));
        }
        // Counted before anything is split off: a string of a million commas builds nothing.
        let labels = || s.split(',').map(str::trim).filter(|l| !l.is_empty());
        if labels().take(self.max.saturating_add(1)).count() > self.max {
            return Err(de::Error::custom(format!(
                "more than {} labels, over the limit (--max-labels)",
                self.max
            )));
        }
        Ok(Labels(labels().map(str::to_string).collect()))
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
            max: limits().max_labels,
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
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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
                loop {
                    // Counted before the next item is parsed, and each item built bounded.
                    if items.len() == max {
                        if seq.next_element::<de::IgnoredAny>()?.is_none() {
                            break;
                        }
                        return Err(de::Error::custom(format!(
                            "a list of more than {max} items, over the limit per request ({})",
                            self.1
                        )));
                    }
                    charge(VALUE_BYTES)?;
                    match seq.next_element_seed(BoundedValue { depth: 0 })? {
                        Some(item) => items.push(item),
                        None => break,
                    }
                }
                Ok(Items(items))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<Items, A::Error> {
                Err(de::Error::custom(
                    "expected a string or an array, got an object",
                ))
            }
        }
        let limits = limits();
        deserializer.deserialize_any(ItemsVisitor(limits.max_items, limits.items_flag))
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

    /// The limits a server with default flags parses under.
    fn defaults() -> JsonLimits {
        JsonLimits {
            max_items: 64,
            max_labels: 1000,
            max_metadata_bytes: 16 * 1024,
            ..JsonLimits::default()
        }
    }

    /// A 32 MiB body: `head`, then `unit` repeated, then `tail`.
    fn body_of(head: &str, unit: &str, tail: &str) -> Vec<u8> {
        let n = (32usize << 20).saturating_sub(head.len() + tail.len()) / unit.len();
        let mut body = Vec::with_capacity(32 << 20);
        body.extend_from_slice(head.as_bytes());
        for _ in 0..n {
            body.extend_from_slice(unit.as_bytes());
        }
        body.extend_from_slice(tail.as_bytes());
        body
    }

    /// Parses `body` as `T` under `limits`: the error, and the peak bytes the parse allocated.
    fn refused<T: for<'de> Deserialize<'de>>(
        body: &[u8],
        limits: JsonLimits,
    ) -> (String, u64, std::time::Duration) {
        let started = std::time::Instant::now();
        let mut error = String::new();
        let peak = crate::preprocess::image::peak_of(|| {
            error = match parse_bounded::<T>(body, limits) {
                Ok(_) => "parsed: not refused".to_string(),
                Err(e) => e.to_string(),
            };
        });
        (error, peak, started.elapsed())
    }

    /// The worst shapes of a 32 MiB body are refused while they are parsed, each with an error
    /// naming its limit, holding a bounded multiple of the body at most (today's parser built
    /// hundreds of MiB from some of them), and quickly.
    #[test]
    fn hostile_bodies_are_refused_within_bounded_memory() {
        #[derive(Debug, serde::Deserialize)]
        struct Classify {
            #[allow(dead_code)]
            input: Items,
            #[allow(dead_code)]
            labels: Labels,
        }
        use crate::http::collections::{SearchRequest, UpsertRequest};
        let mib = |n: u64| n << 20;
        /// Name, body, its parse, what the error names, the most the parse may allocate.
        type Case = (&'static str, Vec<u8>, Parse, &'static str, u64);
        type Parse = fn(&[u8]) -> (String, u64, std::time::Duration);
        let cases: Vec<Case> = vec![
            (
                "many tiny items",
                body_of(r#"{"input": ["#, r#""","#, r#""x"]}"#),
                |b| refused::<Request>(b, defaults()),
                "more than 64 items",
                mib(1),
            ),
            (
                "a million numbers in one item",
                body_of(r#"{"input": [["#, "0,", "0]]}"),
                |b| refused::<Request>(b, defaults()),
                "(--max-json-bytes)",
                mib(160),
            ),
            (
                "a vector of a million numbers in an upserted item",
                body_of(r#"{"items": [{"id": "a", "vector": ["#, "0,", "0]}]}"),
                |b| refused::<UpsertRequest>(b, defaults()),
                "(--max-json-bytes)",
                mib(160),
            ),
            (
                "deeply nested arrays",
                body_of(r#"{"input": ["#, "[", "]"),
                |b| refused::<Request>(b, defaults()),
                "more than 32 levels deep, over the limit (--max-json-depth)",
                mib(1),
            ),
            (
                "metadata of a million keys",
                {
                    let mut body = br#"{"items": [{"id": "a", "metadata": {"#.to_vec();
                    for i in 0..2_000_000 {
                        body.extend_from_slice(format!(r#""k{i}":"","#).as_bytes());
                    }
                    body.extend_from_slice(br#""z":""}}]}"#);
                    body
                },
                |b| refused::<UpsertRequest>(b, defaults()),
                "(--max-json-bytes)",
                mib(160),
            ),
            (
                "a filter of a million keys",
                {
                    let mut body = br#"{"filter": {"#.to_vec();
                    for i in 0..2_000_000 {
                        body.extend_from_slice(format!(r#""k{i}":"","#).as_bytes());
                    }
                    body.extend_from_slice(br#""z":""}}"#);
                    body
                },
                |b| refused::<SearchRequest>(b, defaults()),
                "over the limit (--max-metadata-bytes)",
                mib(1),
            ),
            (
                "a comma string of a million labels",
                body_of(r#"{"input": "x", "labels": ""#, "a,", r#"a"}"#),
                |b| refused::<Classify>(b, defaults()),
                "more than 1000 labels, over the limit (--max-labels)",
                mib(1),
            ),
        ];
        let mut failures = Vec::new();
        for (name, body, parse, expected, max_peak) in cases {
            assert!(body.len() <= 32 << 20, "{name}: {} bytes", body.len());
            let (error, peak, took) = parse(&body);
            if !error.contains(expected) {
                failures.push(format!("{name}: {error:?} does not name {expected:?}"));
            }
            if peak > max_peak {
                failures.push(format!(
                    "{name}: parsing peaked at {} MiB, over {} MiB",
                    peak >> 20,
                    max_peak >> 20
                ));
            }
            if took > std::time::Duration::from_secs(10) {
                failures.push(format!("{name}: took {took:?}"));
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }

    #[test]
    fn free_form_json_within_the_limits_parses_as_before() {
        #[derive(Debug, serde::Deserialize)]
        struct Query {
            #[serde(deserialize_with = "value")]
            query: Value,
        }
        let text = br#"{"query": {"a": [1, -2, 2.5, "s", null, true, {"b": []}]}}"#;
        let q: Query = parse_bounded(text, defaults()).unwrap();
        let expected: Value = serde_json::from_slice::<Value>(text).unwrap()["query"].clone();
        assert_eq!(q.query, expected);
        // 32 levels pass, 33 do not.
        let nested = |n: usize| format!(r#"{{"query": {}{}}}"#, "[".repeat(n), "]".repeat(n));
        assert!(parse_bounded::<Query>(nested(32).as_bytes(), defaults()).is_ok());
        let e = parse_bounded::<Query>(nested(33).as_bytes(), defaults()).unwrap_err();
        assert!(e.to_string().contains("--max-json-depth"), "{e}");
        // The memory estimate is per body: two values that fit alone do not fit together.
        let limits = JsonLimits {
            max_value_bytes: 3000,
            ..defaults()
        };
        let list = |n: usize| format!("[{}0]", "0,".repeat(n - 1));
        let one = format!(r#"{{"input": [{}]}}"#, list(60));
        let r: Request = parse_bounded(one.as_bytes(), limits).unwrap();
        assert_eq!(r.input.0[0].as_array().map(Vec::len), Some(60));
        let two = format!(r#"{{"input": [{}, {}]}}"#, list(60), list(60));
        let e = parse_bounded::<Request>(two.as_bytes(), limits).unwrap_err();
        assert!(e.to_string().contains("--max-json-bytes"), "{e}");
        // The next body starts from nothing.
        assert!(parse_bounded::<Request>(one.as_bytes(), limits).is_ok());
    }

    #[test]
    fn filter_maps_are_bounded_by_their_bytes_while_parsing() {
        use crate::http::collections::SearchRequest;
        let limits = JsonLimits {
            max_metadata_bytes: 8,
            ..defaults()
        };
        let r: SearchRequest =
            parse_bounded(br#"{"filter": {"k": "v", "kk": "vv"}}"#, limits).unwrap();
        assert_eq!(r.filter.len(), 2);
        let e = parse_bounded::<SearchRequest>(br#"{"filter": {"k": "v", "kkkk": "vvv"}}"#, limits)
            .unwrap_err();
        assert!(e.to_string().contains("--max-metadata-bytes"), "{e}");
        // A repeated key counts every time.
        let repeated = format!(r#"{{"filter": {{{}"a": ""}}}}"#, r#""a": "","#.repeat(20));
        assert!(parse_bounded::<SearchRequest>(repeated.as_bytes(), limits).is_err());
        let r: SearchRequest = parse_bounded(br#"{}"#, limits).unwrap();
        assert!(r.filter.is_empty());
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

    #[test]
    fn one_peer_reads_at_most_a_quarter_of_the_bodies() {
        let budget = ByteBudget::new(64 * 1024, prometheus::IntGauge::new("b", "t").unwrap());
        let rules = BodyRules::new(1 << 20, budget, Duration::from_secs(30), 0, 8);
        let a: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let b: std::net::IpAddr = "192.0.2.2".parse().unwrap();
        let held: Vec<_> = (0..2).map(|_| rules.reading(Some(a)).unwrap()).collect();
        let e = rules.reading(Some(a)).err().unwrap();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            e.message.contains("a quarter of --max-body-readers 8"),
            "{}",
            e.message
        );
        // Another peer, and a caller of unknown address, still read.
        let _b = rules.reading(Some(b)).unwrap();
        let _unknown = rules.reading(None).unwrap();
        assert_eq!(rules.readers.available_permits(), 8 - 4);
        drop(held);
        assert!(rules.reading(Some(a)).is_ok(), "A's places came back");
        assert_eq!(rules.peers.peers(), 1, "only B holds a place now");
    }
}
