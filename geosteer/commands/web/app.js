// geosteer serve: the search page. Plain JS, no libraries, nothing fetched
// from anywhere but this service (/search, /image/<i>, /health).
"use strict";

// One colour per query part, the same in the legend and the boxes.
const COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324"];

const $ = (sel) => document.querySelector(sel);

function setStatus(text, isError) {
  const el = $("#status");
  el.textContent = text;
  el.className = isError ? "error" : "";
}

// A 422 carries {"detail": [{"loc": [...], "msg": ...}], "message": "k: ..."}; a 400 / 404 {"detail": "..."}.
function errorMessage(body, status) {
  if (body && typeof body.message === "string") return body.message;
  if (body && typeof body.detail === "string") return body.detail;
  if (body && Array.isArray(body.detail)) {
    return body.detail.map((d) => `${(d.loc || []).filter((x) => x !== "body").join(".")}: ${d.msg}`).join("; ");
  }
  return `HTTP ${status}`;
}

function fmt(x) {
  return typeof x === "number" ? x.toFixed(3) : "–";
}

function renderParts(parts) {
  const box = $("#parts");
  box.replaceChildren();
  parts.forEach((text, p) => {
    const chip = document.createElement("span");
    chip.className = "part";
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.borderColor = COLOURS[p % COLOURS.length];
    chip.append(sw, document.createTextNode(`part ${p + 1}: ${text}`));
    box.append(chip);
  });
}

// One result: the thumbnail with the matched regions drawn over it as
// absolutely positioned boxes in percent of the image, so they follow the
// thumbnail at any size.
function renderHit(hit, column) {
  const fig = document.createElement("figure");
  fig.className = "hit";
  fig.dataset.id = hit.id;
  const thumb = document.createElement("div");
  thumb.className = "thumb";
  const img = document.createElement("img");
  img.className = "result";
  img.src = `/image/${hit.id}`;
  img.alt = hit.path;
  img.title = hit.path;
  thumb.append(img);
  for (const m of hit.matches || []) {
    if (!m.box_frac) continue; // the image's size is unknown (its file moved): no box to place
    const [x0, y0, x1, y1] = m.box_frac;
    const colour = COLOURS[m.part % COLOURS.length];
    const b = document.createElement("div");
    b.className = "box";
    b.style.left = `${100 * x0}%`;
    b.style.top = `${100 * y0}%`;
    b.style.width = `${100 * (x1 - x0)}%`;
    b.style.height = `${100 * (y1 - y0)}%`;
    b.style.borderColor = colour;
    b.title = `part ${m.part + 1}: ${m.text}`;
    const label = document.createElement("span");
    label.style.background = colour;
    label.textContent = String(m.part + 1);
    b.append(label);
    thumb.append(b);
  }
  const cap = document.createElement("figcaption");
  const head = document.createElement("b");
  head.textContent = `#${hit.rank}`;
  cap.append(head, document.createTextNode(` ${hit.path}`), document.createElement("br"));
  if (column === "after") {
    cap.append(document.createTextNode(`S ${fmt(hit.score)} · cos ${fmt(hit.first_stage)} · A ${fmt(hit.alignment)}`));
    if (hit.structure) cap.append(document.createTextNode(` · R ${fmt(hit.structure)}`));
    // rank_before: its rank by cosine among all K candidates the head re-ranked
    const move = document.createElement("span");
    if (hit.rank_before !== hit.rank) {
      move.className = hit.rank_before > hit.rank ? "moved-up" : "moved-down";
      move.textContent = ` (cosine #${hit.rank_before})`;
    }
    cap.append(move);
  } else {
    cap.append(document.createTextNode(`cos ${fmt(hit.score)}`));
  }
  fig.append(thumb, cap);
  return fig;
}

function renderColumn(id, hits) {
  const grid = document.querySelector(`#${id} .grid`);
  grid.replaceChildren(...hits.map((h) => renderHit(h, id)));
}

async function search(query, method, k) {
  document.body.dataset.status = "loading";
  setStatus(`searching "${query}" …`);
  const t0 = performance.now();
  let response, body;
  try {
    response = await fetch("/search", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ query, method, k }),
    });
    body = await response.json().catch(() => null);
  } catch (err) {
    document.body.dataset.status = "error";
    setStatus(`request failed: ${err}`, true);
    return;
  }
  if (!response.ok) {
    document.body.dataset.status = "error";
    setStatus(errorMessage(body, response.status), true);
    return;
  }
  // The body is the one JSON form of a search (`geosteer search --json` prints it too): one entry in queries.
  const result = body.queries[0];
  renderParts(result.parts);
  renderColumn("before", result.cosine);
  renderColumn("after", result.reranked);
  document.querySelectorAll(".k").forEach((el) => (el.textContent = body.k));
  document.querySelectorAll(".method").forEach((el) => (el.textContent = body.method));
  const ms = performance.now() - t0;
  const n = result.parts.length;
  setStatus(`${result.reranked.length} results for "${result.query}" (${n} part${n === 1 ? "" : "s"}) in ${ms.toFixed(0)} ms (server ${body.server_ms.toFixed(0)} ms)`);
  document.body.dataset.status = "done";
}

function runFromForm() {
  const query = $("#q").value.trim();
  const method = $("#method").value;
  const k = parseInt($("#k").value, 10);
  // Keep the search in the URL so a result page can be shared or reloaded.
  const url = new URL(window.location.href);
  url.searchParams.set("q", query);
  url.searchParams.set("method", method);
  url.searchParams.set("k", String(k));
  history.replaceState(null, "", url);
  return search(query, method, k);
}

async function init() {
  try {
    const health = await (await fetch("/health")).json();
    $("#info").textContent = `${health.images} images · model ${health.encoder} · regions ${health.regions} · k ≤ ${health.k_max}`;
    $("#k").max = health.k_max;
    $("#method").value = health.method;
  } catch (err) {
    $("#info").textContent = "service not reachable";
  }
  $("#search-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    runFromForm();
  });
  // /?q=...&method=...&k=... runs that search on load (the browser test uses it).
  const params = new URLSearchParams(window.location.search);
  if (params.get("method")) $("#method").value = params.get("method");
  if (params.get("k")) $("#k").value = params.get("k");
  if (params.get("q")) {
    $("#q").value = params.get("q");
    runFromForm();
  }
}

init();
