#!/usr/bin/env python3
"""Real client libraries against a running clip-serve (started by scripts/clients_test.sh with
`--model-alias jina-clip-v2,rerank-v3.5,embed-v4.0` and an API key):

- cohere `ClientV2(base_url=...).rerank` (texts) and `Client` v1 `.rerank(return_documents=True)`: the order and
  scores equal the cosines of the server's own /v1/embeddings vectors; a wrong key raises the SDK's 401 error;
- cohere `ClientV2.embed` (texts, data-URI images and content-part inputs; float, int8, uint8, binary, ubinary
  and base64 types) and `Client` v1 `.embed`: floats equal the server's /v1/embeddings vectors (exact float32,
  read as base64), int8 = round(127 x) half away from zero, uint8 = int8 + 128, ubinary = packbits(x >= 0)
  most significant bit first, binary = ubinary - 128 (the rules src/http/cohere.rs documents);
- huggingface_hub `InferenceClient(model=url)`: `.zero_shot_image_classification` equals /v1/classify's
  probabilities, `.feature_extraction` equals /v1/embeddings; a wrong token raises HfHubHTTPError;
- LangChain `JinaEmbeddings` (langchain-community), repointed through its module constant: `embed_documents`,
  `embed_query` and `embed_images` (a local file, sent as `{"bytes"}`) equal /v1/embeddings; a wrong key raises
  RuntimeError carrying the server's `detail`.
Exits non-zero with a message on the first mismatch.
"""

import argparse
import base64
import json
import math
import struct
import sys
import urllib.error
import urllib.request

import cohere
import huggingface_hub
import langchain_community.embeddings.jina as lc_jina
from huggingface_hub import InferenceClient


def post(args, path, body, key=None):
    req = urllib.request.Request(args.http + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer {key or args.key}"})
    with urllib.request.urlopen(req) as resp:
        return json.loads(resp.read())


def embed(args, inputs):
    data = post(args, "/v1/embeddings", {"input": inputs})["data"]
    return [d["embedding"] for d in sorted(data, key=lambda d: d["index"])]


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def same(a, b, what):
    c = cosine(a, b)
    assert c >= 0.99999, f"{what}: cosine {c}"


def check_cohere(args):
    query, docs = "a photo of a cat", ["a red car", "a cat on a sofa", "an astronaut", "a bowl of soup"]
    vectors = embed(args, [query] + docs)
    want = sorted(((cosine(vectors[0], v), i) for i, v in enumerate(vectors[1:])), key=lambda t: (-t[0], t[1]))
    v2 = cohere.ClientV2(api_key=args.key, base_url=args.http)
    r = v2.rerank(model="rerank-v3.5", query=query, documents=docs, top_n=3)
    got = [(x.relevance_score, x.index) for x in r.results]
    assert [i for _, i in got] == [i for _, i in want[:3]], (got, want)
    for (g, _), (w, _) in zip(got, want):
        assert abs(g - w) < 1e-5, (g, w)
    v1 = cohere.Client(api_key=args.key, base_url=args.http)
    r = v1.rerank(model="rerank-v3.5", query=query, documents=docs, return_documents=True)
    assert [x.index for x in r.results] == [i for _, i in want], r
    for x in r.results:
        assert x.document.text == docs[x.index], x
    try:
        cohere.ClientV2(api_key="wrong", base_url=args.http).rerank(model="rerank-v3.5", query=query, documents=docs)
        raise AssertionError("a wrong key was accepted")
    except cohere.core.api_error.ApiError as e:
        assert e.status_code == 401, e
    print("clients-test: cohere ClientV2 and Client rerank: ok")


def exact(args, inputs):
    """/v1/embeddings as exact float32 values (base64)."""
    data = post(args, "/v1/embeddings", {"input": inputs, "encoding_format": "base64"})["data"]
    out = []
    for d in sorted(data, key=lambda d: d["index"]):
        raw = base64.b64decode(d["embedding"])
        out.append(list(struct.unpack(f"<{len(raw) // 4}f", raw)))
    return out


def int8_of(x):
    """round(127 x), half away from zero (Rust's f64::round)."""
    out = []
    for v in x:
        a = abs(v * 127)
        q = math.floor(a) + (1 if a - math.floor(a) >= 0.5 else 0)
        out.append(int(math.copysign(q, v)))
    return out


def ubinary_of(x):
    return [sum(1 << (7 - i) for i, v in enumerate(x[j:j + 8]) if v >= 0) for j in range(0, len(x), 8)]


def check_cohere_embed(args):
    texts = ["a photo of a cat", "an astronaut"]
    with open(args.image, "rb") as f:
        uri = "data:image/jpeg;base64," + base64.b64encode(f.read()).decode()
    want = exact(args, texts + [uri])
    v2 = cohere.ClientV2(api_key=args.key, base_url=args.http)
    types = ["float", "int8", "uint8", "binary", "ubinary", "base64"]
    r = v2.embed(model="embed-v4.0", input_type="search_document", texts=texts, embedding_types=types)
    e = r.embeddings
    for i, w in enumerate(want[:2]):
        same(e.float_[i], w, "cohere float")
        raw = base64.b64decode(e.base64[i])
        assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == w, "cohere base64 is the exact float32"
        assert e.int8[i] == int8_of(w), (e.int8[i], int8_of(w))
        assert e.uint8[i] == [q + 128 for q in int8_of(w)], "uint8"
        assert e.ubinary[i] == ubinary_of(w), "ubinary"
        assert e.binary[i] == [b - 128 for b in ubinary_of(w)], "binary"
    assert r.texts == texts and r.meta.billed_units.input_tokens > 0, r
    r = v2.embed(model="embed-v4.0", input_type="image", images=[uri], embedding_types=["float", "int8", "binary"])
    same(r.embeddings.float_[0], want[2], "cohere image")
    assert r.embeddings.int8[0] == int8_of(want[2]) and r.embeddings.binary[0] == [b - 128 for b in ubinary_of(want[2])]
    inputs = [{"content": [{"type": "text", "text": texts[0]}]},
              {"content": [{"type": "image_url", "image_url": {"url": uri}}]}]
    r = v2.embed(model="embed-v4.0", input_type="search_query", inputs=inputs, embedding_types=["float"])
    same(r.embeddings.float_[0], want[0], "cohere inputs text")
    same(r.embeddings.float_[1], want[2], "cohere inputs image")
    r = cohere.Client(api_key=args.key, base_url=args.http).embed(texts=texts, model="embed-v4.0", input_type="search_query")
    assert r.response_type == "embeddings_floats", r
    same(r.embeddings[1], want[1], "cohere v1 float")
    try:
        v2.embed(model="embed-v4.0", input_type="search_query", texts=texts, embedding_types=["float"], output_dimension=1024)
        raise AssertionError("output_dimension 1024 was accepted")
    except cohere.core.api_error.ApiError as e:
        assert e.status_code == 400 and "output_dimension" in str(e.body), e
    print("clients-test: cohere ClientV2.embed (texts, images, inputs; every embedding type) and Client.embed: ok")


def check_hf(args):
    client = InferenceClient(model=args.http, token=args.key)
    labels = ["a cat", "an astronaut", "a car"]
    got = client.zero_shot_image_classification(args.image, candidate_labels=labels)
    with open(args.image, "rb") as f:
        b64 = base64.b64encode(f.read()).decode()
    want = post(args, "/v1/classify", {"input": [{"image": b64}], "labels": labels, "top_k": 3})
    want = want["data"][0]["predictions"]
    assert [g.label for g in got] == [w["label"] for w in want], (got, want)
    for g, w in zip(got, want):
        assert abs(g.score - w["score"]) < 1e-5, (g, w)
    features = client.feature_extraction("a photo of a cat")
    assert features.shape[0] == 1, features.shape
    same(list(features[0]), embed(args, ["a photo of a cat"])[0], "feature_extraction")
    try:
        InferenceClient(model=args.http, token="wrong").feature_extraction("a")
        raise AssertionError("a wrong token was accepted")
    except huggingface_hub.errors.HfHubHTTPError as e:
        assert e.response.status_code == 401, e
    print("clients-test: huggingface_hub InferenceClient zero-shot + feature extraction: ok")


def check_langchain_jina(args):
    lc_jina.JINA_API_URL = args.http + "/v1/embeddings"
    emb = lc_jina.JinaEmbeddings(jina_api_key=args.key, model_name="jina-clip-v2")
    texts = ["a photo of a cat", "an astronaut"]
    want = embed(args, texts)
    for g, w in zip(emb.embed_documents(texts), want):
        same(g, w, "embed_documents")
    same(emb.embed_query(texts[0]), want[0], "embed_query")
    with open(args.image, "rb") as f:
        b64 = base64.b64encode(f.read()).decode()
    same(emb.embed_images([args.image])[0], embed(args, [{"image": b64}])[0], "embed_images")
    try:
        lc_jina.JinaEmbeddings(jina_api_key="wrong", model_name="jina-clip-v2").embed_query("a")
        raise AssertionError("a wrong key was accepted")
    except RuntimeError as e:
        assert "key" in str(e).lower(), e
    print("clients-test: langchain-community JinaEmbeddings: ok")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--http", required=True, help="http://127.0.0.1:PORT")
    ap.add_argument("--key", required=True)
    ap.add_argument("--image", required=True)
    args = ap.parse_args()
    check_cohere(args)
    check_cohere_embed(args)
    check_hf(args)
    check_langchain_jina(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
