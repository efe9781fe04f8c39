// The operator's page: reads are open, commands need the API token (kept in this tab's
// sessionStorage only, never in the page's URL or in localStorage). Plain JS, no build.
"use strict";

const TOKEN_KEY = "mxrc-api-token";
const SAMPLES = 120; // 2 per second: one minute of sparkline
const EVENT_ROWS = 50;
const STATE_POLL_MS = 1000;
const TELEMETRY_POLL_MS = 500;

const $ = (id) => document.getElementById(id);
const view = { state: null, svgState: null, lastSeq: 0, wake: [], error: [], source: null };

function text(id, value) {
  $(id).textContent = value === null || value === undefined || value === "" ? "–" : String(value);
}

async function getJson(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

function ago(iso) {
  if (!iso) return "";
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 90) return `${seconds.toFixed(0)} s ago`;
  if (seconds < 5400) return `${(seconds / 60).toFixed(0)} min ago`;
  return `${(seconds / 3600).toFixed(1)} h ago`;
}

// ---------------------------------------------------------------- state and chart

async function refreshState() {
  let s;
  try {
    s = await getJson("/v1/state");
  } catch (err) {
    setConnection(false, "API unreachable");
    return;
  }
  text("node", s.node);
  text("chart-ref", s.chart);
  const badge = $("state");
  badge.textContent = s.state;
  badge.dataset.state = s.state;
  text("since", s.since ? `${new Date(s.since).toLocaleString()} (${ago(s.since)}, seq ${s.since_seq})` : null);
  text("cause", s.cause);
  text("leader", `${s.leader ? "leader" : "not leader"}${s.quorum ? ", quorum" : ", no quorum"}` +
    (s.holder ? ` (holder ${s.holder})` : ""));
  text("token-value", s.token);
  text("lease", s.lease_remaining_s === null ? "no lease" : `${s.lease_remaining_s.toFixed(1)} s`);
  text("rt", s.rt ? `${s.rt.attached ? "attached" : "not attached"}${s.rt.driving ? ", driving" : ""}` : null);
  text("legal", (s.legal_triggers || []).join(", ") || "none");
  text("conditions", (s.active_conditions || []).join("; ") || "none");
  for (const button of document.querySelectorAll("button.command")) {
    const trigger = button.dataset.command === "safe_mode" ? "fault" : button.dataset.command;
    button.classList.toggle("legal", (s.legal_triggers || []).includes(trigger));
  }
  view.state = s.state;
  if (view.svgState !== s.state) await refreshChart(s.state);
}

async function refreshChart(state) {
  view.svgState = state; // claimed before the fetch: one request per change
  try {
    const response = await fetch("/v1/statechart.svg", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const parsed = new DOMParser().parseFromString(await response.text(), "image/svg+xml");
    const svg = parsed.documentElement;
    if (svg.nodeName !== "svg") throw new Error("not an SVG picture");
    const box = $("chart");
    box.replaceChildren(document.importNode(svg, true));
    box.dataset.state = state;
  } catch (err) {
    view.svgState = null;
    $("chart").textContent = `statechart picture unavailable: ${err.message}`;
  }
}

// ---------------------------------------------------------------- telemetry

function spark(canvas, values, colour) {
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  ctx.clearRect(0, 0, width, height);
  ctx.fillStyle = "#f7f9fb";
  ctx.fillRect(0, 0, width, height);
  if (values.length < 2) return;
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  if (hi - lo < 1e-12) { hi += 1; lo -= 1; }
  const x = (i) => (i / (SAMPLES - 1)) * (width - 4) + 2;
  const y = (v) => height - 4 - ((v - lo) / (hi - lo)) * (height - 8);
  ctx.strokeStyle = colour;
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  const offset = SAMPLES - values.length;
  values.forEach((v, i) => (i === 0 ? ctx.moveTo(x(i + offset), y(v)) : ctx.lineTo(x(i + offset), y(v))));
  ctx.stroke();
}

function push(series, value) {
  series.push(value);
  if (series.length > SAMPLES) series.shift();
}

async function refreshTelemetry() {
  let t;
  try {
    t = await getJson("/v1/telemetry");
  } catch (err) {
    return;
  }
  if (t.cycle === undefined) {
    text("cycle-line", "no cycle figures yet (is mxrc rt running?)");
    return;
  }
  push(view.wake, t.wake_p99_us);
  push(view.error, t.tracking_error);
  text("wake-p99", t.wake_p99_us.toFixed(1));
  text("tracking-error", t.tracking_error.toExponential(3));
  text("cycle-line", `cycle ${t.cycle}, slot ${t.slot}, ${t.misses} misses, ` +
    `${t.driving ? "driving" : "holding outputs"}`);
  spark($("wake-spark"), view.wake, "#3182bd");
  spark($("error-spark"), view.error, "#e6550d");
}

// ---------------------------------------------------------------- events

function describe(record) {
  const p = record.payload || {};
  switch (record.type) {
    case "transition":
      return `${p.trigger}: ${p.source} → ${p.dest}${p.cause ? ` (${p.cause})` : ""} by ${p.actor}`;
    case "command_rejected":
      return `${p.trigger} refused in ${p.state}: ${p.message}`;
    case "datastore_write":
      return `${p.key} = ${JSON.stringify(p.value)} by ${p.actor}`;
    case "cycle_status":
      return `cycle ${p.cycle}, ${p.deadline_misses} deadline misses`;
    case "node_started":
      return `node started (previous shutdown: ${p.previous_shutdown}), recovered ${p.recovered_state}`;
    case "node_stopped":
      return `node stopped${p.reason ? ` (${p.reason})` : ""}`;
    default:
      return JSON.stringify(p).slice(0, 160);
  }
}

function addEvent(record) {
  if (document.querySelector(`#events tr[data-seq="${record.seq}"]`)) return;
  view.lastSeq = Math.max(view.lastSeq, record.seq);
  const row = document.createElement("tr");
  row.dataset.seq = record.seq;
  row.dataset.type = record.type;
  const cells = [record.seq, new Date(record.wall_ns / 1e6).toLocaleTimeString(), record.type, describe(record)];
  for (const value of cells) {
    const cell = document.createElement("td");
    cell.textContent = String(value);
    row.appendChild(cell);
  }
  const body = $("events");
  body.insertBefore(row, body.firstChild);
  while (body.children.length > EVENT_ROWS) body.removeChild(body.lastChild);
  if (record.type === "transition") refreshState();
}

async function startEvents() {
  try {
    const s = await getJson("/v1/state");
    const after = Math.max(0, s.last_seq - 20);
    const page = await getJson(`/v1/events?after=${after}&limit=20`);
    view.lastSeq = after;
    page.events.forEach(addEvent);
  } catch (err) {
    // the stream below still shows new records
  }
  const source = new EventSource(`/v1/events/stream?after=${view.lastSeq}`);
  view.source = source;
  source.onopen = () => setConnection(true, "live");
  source.onerror = () => setConnection(false, "reconnecting…");
  source.onmessage = (message) => addEvent(JSON.parse(message.data));
}

function setConnection(ok, label) {
  const pill = $("connection");
  pill.dataset.ok = String(ok);
  pill.textContent = label;
}

// ---------------------------------------------------------------- commands

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function showMode() {
  const enabled = token() !== "";
  const mode = $("mode");
  mode.dataset.mode = enabled ? "commands" : "read-only";
  mode.textContent = enabled
    ? "Commands enabled: the token is kept for this browser tab only."
    : "Read-only: paste the API token (the node's api.token_file) to enable commands.";
  for (const button of document.querySelectorAll("button.command")) button.disabled = !enabled;
  $("forget-token").disabled = !enabled;
}

function result(outcome, message) {
  const box = $("command-result");
  box.dataset.outcome = outcome;
  box.textContent = message;
}

async function send(command) {
  const cause = $("command-cause").value.trim();
  result("pending", `${command}…`);
  let response;
  try {
    response = await fetch(`/v1/commands/${encodeURIComponent(command)}`, {
      method: "POST",
      headers: { "Authorization": `Bearer ${token()}`, "Content-Type": "application/json" },
      body: JSON.stringify(cause ? { cause } : {}),
    });
  } catch (err) {
    result("error", `${command}: the API is unreachable (${err.message})`);
    return;
  }
  let body = {};
  try {
    body = await response.json();
  } catch (err) {
    body = { error: `HTTP ${response.status}` };
  }
  if (response.ok) {
    const p = body.payload || {};
    result("ok", `${command}: ${p.source} → ${p.dest} (seq ${body.seq})`);
  } else if (response.status === 409) {
    result("rejected", `409 ${command} refused in ${body.state}: ${body.error}. ` +
      `Legal now: ${(body.legal || []).join(", ") || "none"}` +
      (body.failed_guards && body.failed_guards.length ? `; failed guards: ${body.failed_guards.join(", ")}` : ""));
  } else if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    showMode();
    result("error", "401 the token was not accepted; paste the current one.");
  } else {
    result("error", `${response.status} ${command}: ${body.error || "failed"}`);
  }
  refreshState();
}

function wireCommands() {
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token").value.trim();
    $("token").value = "";
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    showMode();
  });
  $("forget-token").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showMode();
  });
  for (const button of document.querySelectorAll("button.command")) {
    button.addEventListener("click", () => send(button.dataset.command));
  }
  showMode();
}

// ---------------------------------------------------------------- start

window.addEventListener("DOMContentLoaded", async () => {
  wireCommands();
  await refreshState();
  startEvents();
  refreshTelemetry();
  setInterval(refreshState, STATE_POLL_MS);
  setInterval(refreshTelemetry, TELEMETRY_POLL_MS);
});
