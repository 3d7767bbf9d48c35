//! Cohere's embed API on `/v2/embed` (`cohere.ClientV2.embed`) and `/v1/embed` (`cohere.Client.embed`),
//! in the shapes the cohere SDK parses (src/http/CLIENTS.md §5), through the same service as gRPC.
//!
//! Request: `{"model"?, "input_type"?, "texts" | "images" | "inputs", "embedding_types"?,
//! "output_dimension"?, "truncate"?, "max_tokens"?, "priority"?}`; exactly one of `texts`,
//! `images` (data URIs; http(s) URLs only with `--fetch-image-urls`) and `inputs` (`{"content":
//! [parts]}`, each one embedding by the CLIP rule of [`super::chat`]: text or one image, not both).
//! `input_type` must be one of Cohere's (`search_document`, `search_query`, `classification`,
//! `clustering`, `image`); CLIP has no per-task prompts, so it changes nothing. `output_dimension`
//! must be the model's dimension. `truncate`: `END` (the default: open_clip keeps the first
//! tokens), `NONE` (a text over the context is refused), `START` (the text's last words that fit
//! are kept: whole words, so a word cut by the boundary is dropped too). `max_tokens` below the
//! context length is refused (not supported); `priority` is read as vLLM's Cohere endpoint reads
//! it, as vLLM's priority (below 0 high, 0 normal, above 0 low), as far as the key allows.
//!
//! Embedding types, derived from the L2-normalized float embedding `x` (what gRPC returns):
//! - `float`; `base64`: the little-endian float32 bytes, base64-encoded;
//! - `binary` / `ubinary`: one bit per dimension, 1 where `x >= 0`, packed eight to a byte
//!   most significant bit first; `ubinary` is the byte (0..255), `binary` the byte minus 128
//!   (-128..127). This is what vLLM's Cohere endpoint does (`_pack_binary_embeddings`: numpy's
//!   `packbits(x >= 0)`, signed = unsigned - 128), and what Cohere documents ("1/8 the length").
//! - `int8` / `uint8`: Cohere calibrates its scales per model and does not publish them, and
//!   vLLM's endpoint does not offer these types. Here: `int8 = round(127 * x)` (half away from
//!   zero; a unit vector's components are in -1..1, so it never clips) and `uint8 = int8 + 128`.
//!   One fixed scale for every vector, so int8 dot products rank as the float ones do (up to
//!   rounding).
//!
//! Reply, v2: `{"id", "embeddings": {<type>: [...]}, "texts"?, "meta": {"api_version",
//! "billed_units": {"input_tokens", "images"}}, "response_type": "embeddings_by_type"}`. v1: the
//! same with version 1 when `embedding_types` is given, else `{"response_type":
//! "embeddings_floats", "id", "embeddings": [[...]], "texts", "meta"}`.

use axum::{
    Json, Router,
    body::Body,
    extract::State,
    http::HeaderMap,
    response::{IntoResponse, Response},
    routing::post,
};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{
    api::Api,
    body::{Items, Strings},
    chat,
    error::ApiError,
    inputs::{self, Input, invalid, kind},
};
use crate::{
    batch::priority::{self, Priority},
    common::Field,
    embed::{Admission, Embedded, Item},
    preprocess::text::ClipTokenizer,
};

pub fn routes(state: Api) -> Router {
    Router::new()
        .route("/v1/embed", post(embed_v1))
        .route("/v2/embed", post(embed_v2))
        .with_state(state)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(super) struct EmbedRequest {
    #[serde(default)]
    model: Option<String>,
    /// `search_document`, `search_query`, `classification`, `clustering` or `image` (no effect on
    /// CLIP).
    #[serde(default)]
    input_type: Option<String>,
    /// Texts to embed.
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    texts: Option<Items>,
    /// Images as `data:image/...;base64,...` URIs.
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    images: Option<Items>,
    /// `{"content": [{"type": "text", "text"} | {"type": "image_url", "image_url": {"url"}}]}`,
    /// one embedding each.
    #[serde(default)]
    #[schema(value_type = Option<Vec<serde_json::Value>>)]
    inputs: Option<Items>,
    /// Any of `float`, `int8`, `uint8`, `binary`, `ubinary`, `base64` (default `float`).
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    embedding_types: Option<Strings>,
    /// The model's dimension only (no shortening).
    #[serde(default)]
    output_dimension: Option<u64>,
    /// `NONE`, `START` or `END` (default).
    #[serde(default)]
    truncate: Option<String>,
    /// At least the model's context length (77): a smaller one is refused.
    #[serde(default)]
    max_tokens: Option<u64>,
    /// vLLM's priority: below 0 high, 0 normal, above 0 low (as far as the key allows).
    #[serde(default)]
    priority: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// Cohere's embedding types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    Float,
    Int8,
    Uint8,
    Binary,
    Ubinary,
    Base64,
}

const TYPES: [(&str, Type); 6] = [
    ("float", Type::Float),
    ("int8", Type::Int8),
    ("uint8", Type::Uint8),
    ("binary", Type::Binary),
    ("ubinary", Type::Ubinary),
    ("base64", Type::Base64),
];

const INPUT_TYPES: [&str; 5] = [
    "search_document",
    "search_query",
    "classification",
    "clustering",
    "image",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Truncate {
    None,
    Start,
    End,
}

/// `int8 = round(127 x)` (module docs).
pub fn int8(values: &[f32]) -> Vec<i8> {
    values
        .iter()
        .map(|&x| (f64::from(x) * 127.0).round().clamp(-128.0, 127.0) as i8)
        .collect()
}

/// `uint8 = int8 + 128`.
pub fn uint8(values: &[f32]) -> Vec<u8> {
    int8(values)
        .into_iter()
        .map(|q| (i16::from(q) + 128) as u8)
        .collect()
}

/// Bits `x >= 0`, eight to a byte, most significant first (numpy's `packbits`).
pub fn ubinary(values: &[f32]) -> Vec<u8> {
    values
        .chunks(8)
        .map(|chunk| {
            chunk
                .iter()
                .enumerate()
                .fold(0u8, |byte, (i, &x)| byte | (u8::from(x >= 0.0) << (7 - i)))
        })
        .collect()
}

/// [`ubinary`] minus 128.
pub fn binary(values: &[f32]) -> Vec<i8> {
    ubinary(values)
        .into_iter()
        .map(|b| (i16::from(b) - 128) as i8)
        .collect()
}

fn base64_of(values: &[f32]) -> String {
    let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The embeddings of every type asked for, keyed by its name.
fn by_type(vectors: &[Vec<f32>], types: &[Type]) -> Map<String, Value> {
    let mut out = Map::new();
    for &t in types {
        let (name, _) = TYPES
            .iter()
            .find(|(_, k)| *k == t)
            .copied()
            .unwrap_or(("float", t));
        let list: Vec<Value> = vectors
            .iter()
            .map(|v| match t {
                Type::Float => json!(v),
                Type::Int8 => json!(int8(v)),
                Type::Uint8 => json!(uint8(v)),
                Type::Binary => json!(binary(v)),
                Type::Ubinary => json!(ubinary(v)),
                Type::Base64 => json!(base64_of(v)),
            })
            .collect();
        out.insert(name.to_string(), Value::Array(list));
    }
    out
}

/// The fields that need no model, checked: the embedding types (in order, once each), the
/// truncation, and the items with the field they came in.
struct Checked {
    types: Option<Vec<Type>>,
    truncate: Truncate,
    param: &'static str,
    items: Vec<(String, Input)>,
    texts: Option<Vec<String>>,
}

fn check(request: EmbedRequest) -> Result<Checked, ApiError> {
    if let Some(t) = request.input_type.as_deref()
        && !INPUT_TYPES.contains(&t)
    {
        return Err(ApiError::invalid(
            Some("input_type"),
            format!(
                "input_type {t:?}: use one of {} (CLIP has no per-task prompts; it changes nothing)",
                INPUT_TYPES.join(", ")
            ),
        ));
    }
    let types = match request.embedding_types {
        None => None,
        Some(Strings(names)) => {
            let mut types = Vec::new();
            for name in names {
                let Some(&(_, t)) = TYPES.iter().find(|(n, _)| *n == name) else {
                    return Err(ApiError::invalid(
                        Some("embedding_types"),
                        format!(
                            "embedding type {name:?} is not one of float, int8, uint8, binary, ubinary, base64"
                        ),
                    ));
                };
                if !types.contains(&t) {
                    types.push(t);
                }
            }
            if types.is_empty() {
                return Err(ApiError::invalid(
                    Some("embedding_types"),
                    "embedding_types is empty; ask for at least one type (or leave it out for float)",
                ));
            }
            Some(types)
        }
    };
    let truncate = match request
        .truncate
        .as_deref()
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        None | Some("END") => Truncate::End,
        Some("START") => Truncate::Start,
        Some("NONE") => Truncate::None,
        Some(_) => {
            return Err(ApiError::invalid(
                Some("truncate"),
                format!(
                    "truncate {:?}: use NONE, START or END",
                    request.truncate.unwrap_or_default()
                ),
            ));
        }
    };
    let lists = [
        ("texts", request.texts),
        ("images", request.images),
        ("inputs", request.inputs),
    ];
    let given: Vec<(&'static str, Items)> = lists
        .into_iter()
        .filter_map(|(name, list)| list.map(|l| (name, l)))
        .collect();
    let [(param, Items(values))] = <[_; 1]>::try_from(given).map_err(|given| {
        let names: Vec<&str> = given.iter().map(|(n, _)| *n).collect();
        ApiError::invalid(
            Some("texts"),
            format!(
                "send exactly one of texts, images and inputs (got {})",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ),
        )
    })?;
    if values.is_empty() {
        return Err(ApiError::invalid(
            Some(param),
            format!("{param} is empty; send at least one item"),
        ));
    }
    let mut texts = (param == "texts").then(Vec::new);
    let items = values
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let at = format!("{param}[{i}]");
            let input = match (param, v) {
                ("texts", Value::String(s)) => {
                    if let Some(texts) = texts.as_mut() {
                        texts.push(s.clone());
                    }
                    Ok(Input::Item(Item::Text(s)))
                }
                ("images", Value::String(s)) => inputs::parse_image(param, &at, &s),
                ("inputs", v) => chat::cohere_input(param, &at, v),
                (_, other) => Err(invalid(
                    param,
                    &at,
                    format!("expected a string, got {}", kind(&other)),
                )),
            }?;
            Ok((at, input))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(Checked {
        types,
        truncate,
        param,
        items,
        texts,
    })
}

/// Applies `truncate` NONE (refuse) or START (keep the last words that fit) to the text items.
fn truncate_texts(
    tokenizer: &ClipTokenizer,
    truncate: Truncate,
    items: &mut [(String, Input)],
    param: &'static str,
) -> Result<(), ApiError> {
    if truncate == Truncate::End {
        return Ok(());
    }
    let context = tokenizer.context_length();
    for (at, input) in items.iter_mut() {
        let Input::Item(Item::Text(text)) = input else {
            continue;
        };
        let tokens = tokenizer.encode(text);
        if !tokens.truncated {
            continue;
        }
        if truncate == Truncate::None {
            return Err(invalid(
                param,
                at,
                format!(
                    "{} tokens, over the model's context of {context}; truncate NONE refuses a text \
                     that does not fit (END or START shortens it)",
                    tokens.token_count
                ),
            ));
        }
        // The fewest leading words to drop so that the rest fits (token counts only fall as
        // words are dropped: CLIP's BPE works word by word).
        let words: Vec<&str> = text.split_whitespace().collect();
        let fits = |k: usize| !tokenizer.encode(&words[k..].join(" ")).truncated;
        let (mut lo, mut hi) = (0, words.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if fits(mid) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        *text = words[lo..].join(" ");
    }
    Ok(())
}

/// Cohere embed v2 (`ClientV2.embed`).
#[utoipa::path(post, path = "/v2/embed", tag = "cohere", request_body(content = EmbedRequest, example = json!({"input_type": "search_query", "texts": ["a photo of a cat"], "embedding_types": ["float", "int8", "binary"]})),
    responses((status = 200, description = "`{id, embeddings: {float?, int8?, uint8?, binary?, ubinary?, base64?}, texts?, meta: {api_version, billed_units}, response_type}`", body = serde_json::Value),
        (status = "4XX", description = "An error (OpenAI shape: `{error: {message, type, param, code}, detail}`), naming the offending field"),
    ))]
pub(super) async fn embed_v2(State(state): State<Api>, headers: HeaderMap, body: Body) -> Response {
    handle(state, headers, body, Version::V2).await
}

/// Cohere embed v1 (`Client.embed`).
#[utoipa::path(post, path = "/v1/embed", tag = "cohere", request_body(content = EmbedRequest, example = json!({"input_type": "search_document", "texts": ["a photo of a cat", "a red car"]})),
    responses((status = 200, description = "`{response_type: embeddings_floats, id, embeddings: [[...]], texts, meta}`, or `embeddings_by_type` with `embedding_types`", body = serde_json::Value),
        (status = "4XX", description = "An error (OpenAI shape: `{error: {message, type, param, code}, detail}`), naming the offending field"),
    ))]
pub(super) async fn embed_v1(State(state): State<Api>, headers: HeaderMap, body: Body) -> Response {
    handle(state, headers, body, Version::V1).await
}

async fn handle(state: Api, headers: HeaderMap, body: Body, version: Version) -> Response {
    state
        .call(("Cohere", "embed"), &headers, async {
            let (request, _held) = state
                .read_json::<EmbedRequest>(&headers, body, "embed request")
                .await?;
            let asked = request.priority.map(Priority::from_vllm);
            priority::requested(asked, run(&state, request, version)).await
        })
        .await
}

async fn run(api: &Api, request: EmbedRequest, version: Version) -> Result<Response, ApiError> {
    api.check_model(request.model.as_deref())?;
    let dim = api.embed_dim()?;
    if let Some(d) = request.output_dimension
        && d != dim as u64
    {
        return Err(ApiError::invalid(
            Some("output_dimension"),
            format!(
                "output_dimension {d}: this model's embeddings have {dim} dimensions; shortening is not supported"
            ),
        ));
    }
    let loaded = api.service.loaded_model()?;
    let max_tokens = request.max_tokens;
    let Checked {
        types,
        truncate,
        param,
        mut items,
        texts,
    } = check(request)?;
    let wants_bits = types
        .iter()
        .flatten()
        .any(|t| matches!(t, Type::Binary | Type::Ubinary));
    if wants_bits && dim % 8 != 0 {
        return Err(ApiError::invalid(
            Some("embedding_types"),
            format!("binary types need a dimension that is a multiple of 8; this model's is {dim}"),
        ));
    }
    if let Some(text) = loaded.text.as_ref() {
        let context = text.tokenizer.context_length();
        if let Some(m) = max_tokens
            && m < context as u64
        {
            return Err(ApiError::invalid(
                Some("max_tokens"),
                format!(
                    "max_tokens {m}: texts are embedded up to the model's context of {context} tokens; a smaller max_tokens is not supported"
                ),
            ));
        }
        if truncate != Truncate::End && param != "images" {
            let model = loaded.clone();
            items = tokio::task::spawn_blocking(move || {
                if let Some(text) = model.text.as_ref() {
                    truncate_texts(&text.tokenizer, truncate, &mut items, param)?;
                }
                Ok::<_, ApiError>(items)
            })
            .await
            .map_err(|e| crate::common::ServiceError::Internal(format!("truncation: {e}")))??;
        }
    }
    super::call::charge(items.len()).await?;
    let items = inputs::resolve(api.fetcher.as_ref(), param, items).await?;
    let images = items.iter().filter(|i| matches!(i, Item::Image(_))).count();
    let permit = api.service.admit(Admission::TryNow).await?;
    let embedded = api
        .service
        .embed_items(items, None, permit)
        .await
        .map_err(|e| {
            ApiError::from_service_named(e, &|f| match f {
                Field::List(_) => Some(param),
                _ => None,
            })
        })?;
    Ok(Json(reply(embedded, types, texts, images, version)).into_response())
}

fn reply(
    embedded: Embedded,
    types: Option<Vec<Type>>,
    texts: Option<Vec<String>>,
    images: usize,
    version: Version,
) -> Value {
    let tokens: u64 = embedded
        .embeddings
        .iter()
        .map(|e| u64::from(e.token_count))
        .sum();
    let vectors: Vec<Vec<f32>> = embedded.embeddings.into_iter().map(|e| e.values).collect();
    let api_version = match version {
        Version::V1 => "1",
        Version::V2 => "2",
    };
    let meta = json!({
        "api_version": {"version": api_version},
        "billed_units": {"input_tokens": tokens, "images": images},
    });
    let id = uuid::Uuid::new_v4().to_string();
    match (version, types) {
        (Version::V1, None) => json!({
            "response_type": "embeddings_floats",
            "id": id,
            "embeddings": vectors,
            "texts": texts.unwrap_or_default(),
            "meta": meta,
        }),
        (_, types) => {
            let types = types.unwrap_or_else(|| vec![Type::Float]);
            let mut reply = json!({
                "response_type": "embeddings_by_type",
                "id": id,
                "embeddings": by_type(&vectors, &types),
                "meta": meta,
            });
            if let Some(texts) = texts {
                reply["texts"] = json!(texts);
            }
            reply
        }
    }
}

/// The body handling up to the model, for the fuzzer.
pub(crate) fn fuzz_body(bytes: &[u8], max_items: usize) {
    if let Ok(request) = super::body::parse::<EmbedRequest>(bytes, max_items) {
        let _ = check(request);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantization_follows_the_documented_rules() {
        let x = [0.5, -0.5, 0.0, -0.0, 1.0, -1.0, 0.003, -0.004];
        assert_eq!(int8(&x), [64, -64, 0, 0, 127, -127, 0, -1]);
        assert_eq!(uint8(&x), [192, 64, 128, 128, 255, 1, 128, 127]);
        // >= 0 -> 1, MSB first: 1 0 1 1 1 0 1 0 = 0xBA.
        assert_eq!(ubinary(&x), [0xBA]);
        assert_eq!(binary(&x), [0xBA_u8.wrapping_sub(128) as i8]);
        let y: Vec<f32> = (0..16)
            .map(|i| if i % 3 == 0 { 1.0 } else { -1.0 })
            .collect();
        // 1001 0010 0100 1001
        assert_eq!(ubinary(&y), [0b1001_0010, 0b0100_1001]);
        let b = base64::engine::general_purpose::STANDARD
            .decode(base64_of(&[1.0, -2.5]))
            .unwrap();
        assert_eq!(b, [1.0f32.to_le_bytes(), (-2.5f32).to_le_bytes()].concat());
    }

    fn request(v: Value) -> EmbedRequest {
        super::super::body::parse(&serde_json::to_vec(&v).unwrap(), 64).unwrap()
    }

    #[test]
    fn requests_are_checked_by_name() {
        let err = |v: Value| match check(request(v)) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.message,
        };
        assert!(
            err(json!({"texts": ["a"], "embedding_types": ["int4"]}))
                .contains("\"int4\" is not one of")
        );
        assert!(
            err(json!({"texts": ["a"], "images": ["x"]}))
                .contains("exactly one of texts, images and inputs (got texts, images)")
        );
        assert!(err(json!({})).contains("(got none)"));
        assert!(err(json!({"texts": []})).contains("texts is empty"));
        assert!(
            err(json!({"texts": ["a"], "truncate": "MIDDLE"})).contains("use NONE, START or END")
        );
        assert!(
            err(json!({"texts": ["a"], "input_type": "query"})).contains("input_type \"query\"")
        );
        assert!(err(json!({"texts": [1]})).starts_with("texts[0]: expected a string"));
        let e = err(
            json!({"inputs": [{"content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAEC"}}]}]}),
        );
        assert!(
            e.starts_with("inputs[0]: CLIP accepts text-only or image-only"),
            "{e}"
        );
        let c = check(request(json!({"texts": ["a"], "embedding_types": ["int8", "float", "int8"], "truncate": "start"}))).unwrap();
        assert_eq!(c.types, Some(vec![Type::Int8, Type::Float]));
        assert_eq!(c.truncate, Truncate::Start);
        assert_eq!(c.texts, Some(vec!["a".to_string()]));
    }
}
