// The clip-serve playground: zero-shot classification (POST /v1/classify) and collection search
// (POST /v1/collections/{name}/search), with an optional API key sent as a Bearer token. Same
// origin only; no dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
let imageDataUri = null;

function headers() {
  const h = { "Content-Type": "application/json", Accept: "application/json" };
  const key = $("key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

function status(id, text, isError) {
  const el = $(id);
  el.textContent = text;
  el.classList.toggle("error", Boolean(isError));
}

// The error message of a JSON error body (OpenAI/Jina `{"error": {"message"}}` or `{"detail"}`).
async function errorText(response) {
  let text = await response.text();
  try {
    const body = JSON.parse(text);
    text = (body.error && (body.error.message || body.error)) || body.detail || body.message || text;
  } catch (_) { /* not JSON */ }
  return response.status + ": " + text;
}

function setImage(file) {
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => {
    imageDataUri = reader.result;
    $("preview").src = imageDataUri;
    $("preview").hidden = false;
    status("classify-status", file.name + " (" + file.size + " bytes)");
  };
  reader.readAsDataURL(file);
}

function showBars(predictions) {
  const list = $("bars");
  list.replaceChildren();
  const sorted = predictions.slice().sort((a, b) => b.score - a.score);
  for (const p of sorted) {
    const li = document.createElement("li");
    const label = document.createElement("div");
    label.className = "bar-label";
    const name = document.createElement("span");
    name.className = "label";
    name.textContent = p.label;
    const pct = document.createElement("span");
    pct.className = "score";
    pct.textContent = (100 * p.score).toFixed(1) + "%";
    label.append(name, pct);
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = Math.max(0, Math.min(100, 100 * p.score)).toFixed(2) + "%";
    bar.append(fill);
    li.append(label, bar);
    list.append(li);
  }
}

async function classify() {
  const labels = $("labels").value.split(",").map((l) => l.trim()).filter(Boolean);
  if (!imageDataUri) return status("classify-status", "Choose an image first.", true);
  if (labels.length === 0) return status("classify-status", "Type at least one label.", true);
  $("classify-button").disabled = true;
  status("classify-status", "Classifying…");
  try {
    const response = await fetch("/v1/classify", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify({ input: [{ image: imageDataUri }], labels }),
    });
    if (!response.ok) return status("classify-status", await errorText(response), true);
    const body = await response.json();
    const result = body.data && body.data[0];
    showBars((result && result.predictions) || []);
    status("classify-status", result ? "Top label: " + result.prediction : "No result.");
  } catch (e) {
    status("classify-status", "The request failed: " + e, true);
  } finally {
    $("classify-button").disabled = false;
  }
}

// A thumbnail for a hit: an image URL or data URI among its metadata, when there is one.
function thumbnailOf(hit) {
  const meta = hit.metadata || {};
  for (const key of ["thumbnail", "thumbnail_url", "image", "image_url", "url", "path"]) {
    const v = meta[key] || hit[key];
    if (typeof v === "string" && /^(https?:\/\/|data:image\/|\/)/.test(v)) return v;
  }
  return null;
}

async function search() {
  const name = $("collection").value.trim();
  const query = $("query").value.trim();
  const topK = parseInt($("top-k").value, 10) || 8;
  if (!name || !query) return status("search-status", "Type a collection and a query.", true);
  $("search-button").disabled = true;
  status("search-status", "Searching…");
  $("hits").replaceChildren();
  try {
    const response = await fetch("/v1/collections/" + encodeURIComponent(name) + "/search", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify({ query: { text: query }, top_k: topK }),
    });
    if (response.status === 404) {
      return status("search-status", "No such collection: " + (await errorText(response)) + " Create one with POST /v1/collections or `clip-serve index`.", true);
    }
    if (!response.ok) return status("search-status", await errorText(response), true);
    const body = await response.json();
    const hits = body.hits || [];
    for (const hit of hits) {
      const li = document.createElement("li");
      const src = thumbnailOf(hit);
      const img = document.createElement("img");
      img.alt = String(hit.id || "");
      if (src) img.src = src;
      const caption = document.createElement("div");
      const score = hit.score;
      caption.textContent = (hit.id || "?") + (score !== undefined ? " · " + Number(score).toFixed(3) : "");
      li.append(img, caption);
      $("hits").append(li);
    }
    status("search-status", hits.length + " result(s)");
  } catch (e) {
    status("search-status", "The request failed: " + e, true);
  } finally {
    $("search-button").disabled = false;
  }
}

async function showModel() {
  try {
    const response = await fetch("/v1/models", { headers: headers() });
    if (!response.ok) return;
    const body = await response.json();
    if (body.data && body.data[0]) $("model").textContent = body.data[0].id;
  } catch (_) { /* the header stays plain */ }
}

function init() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => setImage(e.target.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    setImage(e.dataTransfer.files[0]);
  });
  $("classify-button").addEventListener("click", classify);
  $("search-button").addEventListener("click", search);
  $("query").addEventListener("keydown", (e) => { if (e.key === "Enter") search(); });
  const saved = sessionStorage.getItem("clip-serve-key");
  if (saved) $("key").value = saved;
  $("key").addEventListener("change", () => { sessionStorage.setItem("clip-serve-key", $("key").value); showModel(); });
  showModel();
}

document.addEventListener("DOMContentLoaded", init);
