//! The HTTP API's JSON bodies (embeddings, classify, rerank, Hugging Face, Weaviate): parsed with item
//! lists counted while parsing, then turned into the domain's inputs (texts, data: URIs, base64
//! images), as the routes do before any model work.

pub fn run(data: &[u8]) {
    clip_serve::http::openai::fuzz_embeddings_body(data, 64);
}
