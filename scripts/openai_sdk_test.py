#!/usr/bin/env python3
"""The official `openai` Python SDK against a running clip-serve (started by scripts/openai_sdk_test.sh):

- text embeddings from `client.embeddings.create` (the SDK's default base64 transfer, and `float`) equal
  the gRPC EmbedTexts vectors for the same texts (read with grpcurl), and `usage` counts their tokens;
- image embeddings (`extra_body={"modality": "image"}`, data: URIs) equal gRPC EmbedImages;
- a wrong key is refused on both interfaces (openai.AuthenticationError / gRPC Unauthenticated);
- `client.models.list()` lists the served model;
- the Batch API: `client.files.create` uploads a JSONL of 1,000 requests (texts and data-URI images),
  `client.batches.create` / `retrieve` poll it to `completed`, `client.files.content` downloads the
  output: every custom_id once, and each line equals `client.embeddings.create` with the same body.
- vLLM's example client for multimodal embeddings (`examples/pooling/embed/vision_embedding_online.py`,
  `run_clip`: `client.post("/embeddings", cast_to=CreateEmbeddingResponse, body={"messages", "model",
  "encoding_format"})`) works unchanged: a text and an image conversation equal gRPC's vectors, a batch of
  conversations gives one embedding each, and a conversation mixing text and an image is refused (400) as vLLM
  refuses it for CLIP.
Exits non-zero with a message on the first mismatch.
"""

import argparse
import base64
import json
import struct
import subprocess
import sys

import openai
from openai.types.create_embedding_response import CreateEmbeddingResponse


def grpc(args, method, body, key):
    out = subprocess.run(
        [args.grpcurl, "-plaintext", "-H", f"authorization: Bearer {key}", "-d", json.dumps(body),
         args.grpc, method],
        capture_output=True, text=True)
    return out


def floats(embedding):
    """The SDK decodes base64 itself when it chose the format; asked for explicitly, it hands the string on."""
    if isinstance(embedding, str):
        raw = base64.b64decode(embedding)
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    return embedding


def create_chat_embeddings(client, *, messages, model, encoding_format="float"):
    """vLLM's helper (vision_embedding_online.py), verbatim in what it sends."""
    return client.post(
        "/embeddings",
        cast_to=CreateEmbeddingResponse,
        body={"messages": messages, "model": model, "encoding_format": encoding_format},
    )


def check_vllm_client(client, model, uri, image_ref, args):
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}}]}]
    text = [{"role": "user", "content": [{"type": "text", "text": "a photo of a cat"}]}]
    ref = grpc(args, "clip.v1.Embed/EmbedTexts", {"texts": ["a photo of a cat"]}, args.key)
    assert ref.returncode == 0, ref.stderr
    text_ref = json.loads(ref.stdout)["embeddings"][0]["values"]
    close = lambda got, want: max(abs(a - b) for a, b in zip(got, want)) < 1e-6 and len(got) == len(want)
    got = create_chat_embeddings(client, messages=image, model=model, encoding_format="float").data[0].embedding
    assert close(got, image_ref), "vLLM image conversation"
    got = create_chat_embeddings(client, messages=text, model=model, encoding_format="float").data[0].embedding
    assert close(got, text_ref), "vLLM text conversation"
    both = create_chat_embeddings(client, messages=[text, image], model=model, encoding_format="float").data
    assert len(both) == 2 and close(both[0].embedding, text_ref) and close(both[1].embedding, image_ref)
    mixed = [{"role": "user", "content": text[0]["content"] + image[0]["content"]}]
    try:
        create_chat_embeddings(client, messages=mixed, model=model, encoding_format="float")
        raise AssertionError("a conversation of text and an image was accepted")
    except openai.BadRequestError as e:
        assert "CLIP accepts text-only or image-only inputs" in str(e), e


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--http", required=True, help="http://127.0.0.1:PORT")
    ap.add_argument("--grpc", required=True, help="127.0.0.1:PORT")
    ap.add_argument("--key", required=True)
    ap.add_argument("--grpcurl", required=True)
    ap.add_argument("--image", required=True)
    args = ap.parse_args()

    client = openai.OpenAI(base_url=args.http + "/v1", api_key=args.key, max_retries=0)
    models = [m.id for m in client.models.list()]
    assert len(models) == 1, models
    model = models[0]

    texts = ["a photo of a cat", "a diagram of an engine", "Ünïcode & <b>html</b>"]
    ref = grpc(args, "clip.v1.Embed/EmbedTexts", {"texts": texts}, args.key)
    assert ref.returncode == 0, ref.stderr
    ref = json.loads(ref.stdout)["embeddings"]
    for fmt in ("base64", "float"):
        resp = client.embeddings.create(model=model, input=texts, encoding_format=fmt)
        assert len(resp.data) == len(texts), resp
        for i, (d, r) in enumerate(zip(resp.data, ref)):
            assert d.index == i, d.index
            got = floats(d.embedding)
            diff = max(abs(a - b) for a, b in zip(got, r["values"]))
            assert len(got) == len(r["values"]) and diff < 1e-6, (fmt, i, diff)
        tokens = sum(int(r.get("tokenCount", 0)) for r in ref)
        assert resp.usage.prompt_tokens == tokens and resp.usage.total_tokens == tokens, resp.usage
    # The SDK's default (no encoding_format) works too.
    one = client.embeddings.create(model=model, input=texts[0]).data[0].embedding
    assert max(abs(a - b) for a, b in zip(one, ref[0]["values"])) < 1e-6

    image = open(args.image, "rb").read()
    ref = grpc(args, "clip.v1.Embed/EmbedImages", {"images": [base64.b64encode(image).decode()]}, args.key)
    assert ref.returncode == 0, ref.stderr
    ref = json.loads(ref.stdout)["embeddings"][0]["values"]
    uri = "data:image/jpeg;base64," + base64.b64encode(image).decode()
    got = client.embeddings.create(model=model, input=[uri], extra_body={"modality": "image"}).data[0].embedding
    assert max(abs(a - b) for a, b in zip(got, ref)) < 1e-6

    check_vllm_client(client, model, uri, ref, args)

    bad = openai.OpenAI(base_url=args.http + "/v1", api_key="not-the-key", max_retries=0)
    try:
        bad.embeddings.create(model=model, input="a")
        raise AssertionError("a wrong key was accepted over HTTP")
    except openai.AuthenticationError:
        pass
    refused = grpc(args, "clip.v1.Embed/EmbedTexts", {"texts": ["a"]}, "not-the-key")
    assert refused.returncode != 0 and "Unauthenticated" in refused.stderr, refused.stderr

    try:
        client.embeddings.create(model=model, input="a", dimensions=8)
        raise AssertionError("dimensions=8 was accepted")
    except openai.BadRequestError as e:
        assert "dimensions" in str(e), e
    check_batches(client, model, uri)
    print(f"openai {openai.__version__}: embeddings equal gRPC's for {len(texts)} texts and an image; "
          "vLLM's chat embeddings client: ok; wrong keys refused on both interfaces; "
          "a batch of embeddings equals the live answers")
    return 0


def check_batches(client, model, uri, lines=1000):
    """Files and batches through the SDK: a JSONL of `lines` embedding requests (texts, data-URI
    images), created, polled to `completed`, downloaded: every custom_id once,
    and each line equal to the synchronous answer for its body."""
    import io
    import time

    def body(i):
        kind = i % 5
        if kind == 0:
            return {"model": model, "input": [uri], "encoding_format": "float"}
        if kind == 1:
            return {"model": model, "input": [f"a photo of cat number {i % 37}"], "encoding_format": "float"}
        if kind == 2:
            return {"model": model, "input": f"a diagram of part {i % 41}", "encoding_format": "float"}
        return {"model": model, "input": [f"a red car {i % 29}", f"a dog {i % 31}"], "encoding_format": "float"}

    bodies = [body(i) for i in range(lines)]
    jsonl = "".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/embeddings", "body": b}) + "\n"
                    for i, b in enumerate(bodies))
    f = client.files.create(file=("requests.jsonl", io.BytesIO(jsonl.encode())), purpose="batch")
    assert f.purpose == "batch" and f.bytes == len(jsonl.encode()), f
    assert client.files.retrieve(f.id).id == f.id
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h",
                                  metadata={"check": "sdk"})
    assert batch.status == "validating" and batch.metadata == {"check": "sdk"}, batch
    deadline = time.time() + 300
    while batch.status not in ("completed", "failed", "cancelled", "expired"):
        assert time.time() < deadline, batch
        time.sleep(0.1)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed", batch
    counts = (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed)
    assert counts == (lines, lines, 0), counts
    assert batch.id in [b.id for b in client.batches.list(limit=10)]
    out = [json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]
    assert sorted(o["custom_id"] for o in out) == sorted(f"r{i}" for i in range(lines)), "each line once"
    live_answers = {}
    for o in out:
        b = bodies[int(o["custom_id"][1:])]
        assert o["response"]["status_code"] == 200 and o["error"] is None, o
        key = json.dumps(b, sort_keys=True)
        if key not in live_answers:
            live_answers[key] = client.embeddings.create(**b).data
        live = live_answers[key]
        got = o["response"]["body"]["data"]
        assert len(got) == len(live)
        for g, l in zip(got, live):
            assert max(abs(a - b) for a, b in zip(g["embedding"], l.embedding)) < 1e-6
    print(f"batches: {lines} lines completed, each equal to the synchronous answer "
          f"({len(live_answers)} distinct bodies)")
    assert client.files.delete(f.id).deleted


if __name__ == "__main__":
    sys.exit(main())
