#!/usr/bin/env python3
"""The playground and /docs in headless Chromium (Playwright on the system browser; no browser download).

The expected top label comes from the server's own /v1/classify for the same image and labels (the
fixture model's weights are random): the page must show it on its top bar. Writes a screenshot.
"""
import argparse
import base64
import json
import sys
import urllib.request

from playwright.sync_api import sync_playwright

LABELS = ["a photo of a cat", "a photo of a dog", "a photo of a rocket", "a bowl of soup"]
# Small committed photos for the collection search (their data URIs fit in --max-metadata-bytes as
# thumbnails).
PHOTOS = ["chelsea_tiny_13x9.png", "astronaut_1x1.png", "coffee_1bit_miniswhite.tif", "chelsea_extraneous_bytes.jpg"]


def post_json(url, body, key):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("Authorization", "Bearer " + key)
    with urllib.request.urlopen(request) as response:
        return json.load(response)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--http", required=True)
    p.add_argument("--chromium", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--key", default="")
    p.add_argument("--screenshot", required=True)
    args = p.parse_args()

    with open(args.image, "rb") as f:
        photo = base64.b64encode(f.read()).decode()
    expected = post_json(args.http + "/v1/classify",
                         {"input": [{"image": photo}], "labels": LABELS}, args.key)["data"][0]["prediction"]
    print(f"browser-test: /v1/classify says the top label is {expected!r}")

    # A collection of photos, each with its own data URI as the thumbnail the page shows.
    folder = args.image.rsplit("/", 1)[0]
    post_json(args.http + "/v1/collections", {"name": "photos"}, args.key)
    items = []
    for name in PHOTOS:
        with open(f"{folder}/{name}", "rb") as f:
            data = base64.b64encode(f.read()).decode()
        mime = {"png": "image/png", "jpg": "image/jpeg", "tif": "image/tiff"}[name.rsplit(".", 1)[1]]
        thumb = f"data:{mime};base64,{data}" if mime != "image/tiff" else ""
        items.append({"id": name, "image": data, "metadata": {"thumbnail": thumb} if thumb else {}})
    post_json(args.http + "/v1/collections/photos/items", {"items": items}, args.key)
    hits = post_json(args.http + "/v1/collections/photos/search",
                     {"query": {"text": "a cat"}, "top_k": 4}, args.key)["hits"]
    expected_hits = [h["id"] for h in hits]
    print(f"browser-test: the collection search says {expected_hits}")

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1200, "height": 820})
        problems = []
        page.on("console", lambda m: m.type == "error" and problems.append("console: " + m.text))
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))

        # The playground.
        response = page.goto(args.http + "/")
        assert response.status == 200, response.status
        assert "default-src 'self'" in response.headers.get("content-security-policy", "")
        assert page.title() == "clip-serve playground", page.title()
        if args.key:
            page.fill("#key", args.key)
        page.set_input_files("#file", args.image)
        page.wait_for_selector("#preview:not([hidden])")
        page.fill("#labels", ", ".join(LABELS))
        page.click("#classify-button")
        page.wait_for_selector("#bars li")
        shown = page.locator("#bars li .label").all_inner_texts()
        assert sorted(shown) == sorted(LABELS), shown
        top = shown[0]
        print(f"browser-test: the page's top bar is {top!r}")
        assert top == expected, f"the page shows {top!r} on top, /v1/classify says {expected!r}"
        # Collection search: a missing collection is a message, not a crash.
        page.fill("#collection", "browser-test-missing")
        page.fill("#query", "a cat")
        page.click("#search-button")
        page.locator("#search-status", has_text="No such collection").wait_for()
        print("browser-test: a missing collection says: " + page.inner_text("#search-status"))
        # The photos collection: the hits in the API's order, with thumbnails.
        page.fill("#collection", "photos")
        page.click("#search-button")
        page.locator("#search-status", has_text="result(s)").wait_for()
        imgs = page.locator("#hits li img")
        shown_hits = [imgs.nth(i).get_attribute("alt") for i in range(imgs.count())]
        assert shown_hits == expected_hits, (shown_hits, expected_hits)
        loaded = page.locator("#hits li img[src^='data:image/']").count()
        assert loaded == len([i for i in items if i["metadata"]]), loaded
        print(f"browser-test: the page shows {shown_hits} ({loaded} thumbnails)")
        page.evaluate("document.activeElement.blur()")
        page.screenshot(path=args.screenshot, full_page=True)
        print(f"browser-test: wrote {args.screenshot}")
        # Expected console errors: the missing collection's 404, and the 401 of the model-name lookup the
        # page makes on load, before the key is typed. Anything else (a CSP refusal, a script error) is not.
        unexpected = [m for m in problems if "status of 404" not in m and "status of 401" not in m]
        assert not unexpected, unexpected

        # /docs: Swagger UI's assets load and it renders (even if /openapi.json is missing).
        problems.clear()
        assets = {}
        page.on("response", lambda r: assets.__setitem__(r.url.rsplit("/", 1)[-1], r.status))
        response = page.goto(args.http + "/docs")
        assert response.status == 200, response.status
        page.wait_for_selector(".swagger-ui", timeout=15000)
        assert page.evaluate("typeof window.SwaggerUIBundle") == "function"
        for name in ["swagger-ui-bundle.js", "swagger-ui.css", "docs.js"]:
            assert assets.get(name) == 200, (name, assets)
        page.wait_for_timeout(500)
        spec = assets.get("openapi.json")
        print(f"browser-test: /docs renders Swagger UI (/openapi.json: {spec})")
        csp = [m for m in problems if "Content Security Policy" in m or "page error" in m]
        assert not csp, csp
        browser.close()
    print("browser-test: passed")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"browser-test: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
