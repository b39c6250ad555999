// notiflow dashboard: plain JavaScript, no build step, nothing from elsewhere.
// Signs in with an API key (kept in sessionStorage), reads the live stream
// (GET /v1/stream, Server-Sent Events over fetch so the key goes in a
// header), applies the snapshot then each delta, and redraws.
"use strict";

const SLOTS = ["accepted", "sent", "delivered", "read", "failed",
  "sent.marketing", "sent.utility", "sent.authentication", "sent.service"];
const WINDOW = 60;
const state = { key: null, who: null, client: null, minutes: new Map(), lastId: null, abort: null, retry: 2000 };
const $ = (id) => document.getElementById(id);

function headers() { return { "Authorization": "Bearer " + state.key }; }
function nowMinute() { return Math.floor(Date.now() / 60000); }
function minuteOf(rfc) { return Math.floor(Date.parse(rfc) / 60000); }

async function login(key) {
  const r = await fetch("/v1/whoami", { headers: { "Authorization": "Bearer " + key } });
  if (!r.ok) {
    const body = await r.json().catch(() => ({ message: r.statusText }));
    throw new Error(body.message || ("HTTP " + r.status));
  }
  state.key = key;
  state.who = await r.json();
  sessionStorage.setItem("notiflow.key", key);
  $("login").hidden = true;
  $("app").hidden = false;
  $("who").textContent = state.who.name + " (" + state.who.role + ")";
  const input = $("client");
  if (state.who.role === "viewer") {
    input.value = state.who.client;
    input.disabled = true;
  } else {
    $("top-section").hidden = false;
    pollTop();
  }
  input.addEventListener("change", () => follow(input.value.trim()));
  if (input.value) { follow(input.value); }
}

function follow(client) {
  if (state.abort) { state.abort.abort(); }
  state.client = client || null;
  state.minutes = new Map();
  state.lastId = null;
  draw();
  if (client) { connect(); }
}

async function connect() {
  const ctl = new AbortController();
  state.abort = ctl;
  const h = headers();
  if (state.lastId) { h["Last-Event-ID"] = state.lastId; }
  const url = "/v1/stream?client=" + encodeURIComponent(state.client);
  try {
    const r = await fetch(url, { headers: h, signal: ctl.signal });
    if (!r.ok) {
      const body = await r.json().catch(() => ({ message: r.statusText }));
      $("conn-state").textContent = "stream refused: " + body.message;
      $("conn-state").className = "err";
      if (r.status >= 500) { setTimeout(() => { if (state.abort === ctl) connect(); }, state.retry); }
      return;
    }
    $("conn-state").textContent = "live";
    $("conn-state").className = "muted";
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) { break; }
      buf += dec.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        handle(buf.slice(0, cut));
        buf = buf.slice(cut + 2);
      }
    }
  } catch (e) {
    if (ctl.signal.aborted) { return; }
  }
  if (state.abort === ctl) {
    $("conn-state").textContent = "reconnecting…";
    setTimeout(() => { if (state.abort === ctl) connect(); }, state.retry);
  }
}

function handle(block) {
  let event = "message", data = "", id = null;
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) { continue; }
    const i = line.indexOf(":");
    const field = i < 0 ? line : line.slice(0, i);
    const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
    if (field === "event") { event = value; }
    else if (field === "data") { data += value; }
    else if (field === "id") { id = value; }
    else if (field === "retry") { state.retry = parseInt(value, 10) || state.retry; }
  }
  if (id !== null) { state.lastId = id; }
  if (!data) { return; }
  const msg = JSON.parse(data);
  if (event === "snapshot") {
    state.minutes = new Map();
    if (msg.series) {
      for (const p of msg.series.points) { state.minutes.set(minuteOf(p.t), p.c.slice()); }
    }
  } else if (event === "delta") {
    for (const [client, minute, counts] of msg.c) {
      if (client !== state.client) { continue; }
      const cur = state.minutes.get(minute) || new Array(SLOTS.length).fill(0);
      for (let s = 0; s < SLOTS.length; s++) { cur[s] += counts[s]; }
      state.minutes.set(minute, cur);
    }
    $("last-event").textContent = new Date(msg.t).toISOString().slice(11, 19) + " UTC";
  }
  draw();
}

function windowRows() {
  const end = nowMinute();
  const rows = [];
  for (let m = end - WINDOW + 1; m <= end; m++) {
    rows.push([m, state.minutes.get(m) || new Array(SLOTS.length).fill(0)]);
  }
  return rows;
}

function draw() {
  const rows = windowRows();
  const totals = new Array(SLOTS.length).fill(0);
  for (const [, c] of rows) { for (let s = 0; s < SLOTS.length; s++) { totals[s] += c[s]; } }
  const events = totals.slice(0, 5).reduce((a, b) => a + b, 0);
  $("total").textContent = events.toLocaleString("en-US");
  // Status mix.
  const mix = $("status-mix").tBodies[0];
  mix.innerHTML = "";
  for (let s = 0; s < 5; s++) {
    const share = events ? totals[s] / events : 0;
    const tr = mix.insertRow();
    tr.insertCell().textContent = SLOTS[s];
    tr.insertCell().textContent = totals[s].toLocaleString("en-US");
    const bar = tr.insertCell();
    bar.style.textAlign = "left";
    bar.innerHTML = '<span class="bar" style="width:' + Math.round(share * 120) + 'px"></span> ' + (share * 100).toFixed(1) + "%";
  }
  // Chart: accepted per minute.
  const svg = $("chart");
  const max = Math.max(1, ...rows.map(([, c]) => c[0]));
  const w = 600 / rows.length;
  let bars = "";
  rows.forEach(([m, c], i) => {
    const h = (c[0] / max) * 200;
    bars += '<rect class="minute-bar" data-minute="' + m + '" x="' + (i * w + 1).toFixed(1) + '" y="' + (210 - h).toFixed(1) +
      '" width="' + (w - 2).toFixed(1) + '" height="' + h.toFixed(1) + '" fill="#2563eb"><title>' + c[0] + "</title></rect>";
  });
  svg.innerHTML = '<line x1="0" y1="210" x2="600" y2="210" stroke="#e5e7eb"/>' + bars +
    '<text x="4" y="14" font-size="12" fill="#6b7280">max ' + max.toLocaleString("en-US") + "/min</text>";
  // Table: newest first, last 15 minutes.
  const body = $("minutes").tBodies[0];
  body.innerHTML = "";
  for (const [m, c] of rows.slice(-15).reverse()) {
    const tr = body.insertRow();
    tr.insertCell().textContent = new Date(m * 60000).toISOString().slice(11, 16);
    for (const n of c) { tr.insertCell().textContent = n.toLocaleString("en-US"); }
  }
}

async function pollTop() {
  try {
    const r = await fetch("/v1/top?limit=10", { headers: headers() });
    if (r.ok) {
      const top = await r.json();
      $("top-stale").textContent = top.stale ? "(stale: Redis unavailable)" : "";
      const body = $("top").tBodies[0];
      body.innerHTML = "";
      for (const e of top.clients) {
        const tr = body.insertRow();
        const a = document.createElement("a");
        a.href = "#";
        a.textContent = e.client;
        a.onclick = (ev) => { ev.preventDefault(); $("client").value = e.client; follow(e.client); };
        tr.insertCell().appendChild(a);
        tr.insertCell().textContent = e.events.toLocaleString("en-US");
      }
      if (!state.client && top.clients.length) {
        $("client").value = top.clients[0].client;
        follow(top.clients[0].client);
      }
    }
  } finally {
    setTimeout(pollTop, 5000);
  }
}

$("login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  $("login-error").textContent = "";
  login($("login-key").value.trim()).catch((e) => { $("login-error").textContent = e.message; });
});
$("logout").addEventListener("click", () => {
  sessionStorage.removeItem("notiflow.key");
  location.reload();
});
setInterval(draw, 10000);
// A link with "#key=..." (the demo prints one) signs in with that key; the
// fragment never reaches the server and is removed from the address bar.
const linked = new URLSearchParams(location.hash.slice(1)).get("key");
if (linked) { history.replaceState(null, "", location.pathname + location.search); }
const saved = linked || sessionStorage.getItem("notiflow.key");
if (saved) {
  login(saved).catch((e) => {
    sessionStorage.removeItem("notiflow.key");
    $("login-error").textContent = e.message;
  });
}
