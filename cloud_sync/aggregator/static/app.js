// s4edge dashboard: plain JS, no build step, no external assets (works offline).
"use strict";

const MAX_ALERTS = 200;
const NODE_REFRESH_MS = 10000;   // stale flags age even when no event arrives
const alertRows = new Map();     // alert id -> <tr>

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child ?? "");
  return node;
}

function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { hour12: false });
}

const TOKEN_KEY = "s4edge-operator-token";

// Actions need the operator token when the aggregator has one: asked once, kept for this tab.
async function authorisedFetch(path, options = {}) {
  const send = () => {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = { ...(options.headers || {}), ...(token ? { Authorization: `Bearer ${token}` } : {}) };
    return fetch(path, { ...options, headers });
  };
  let response = await send();
  if (response.status === 401) {
    const token = window.prompt("Operator token for this aggregator:");
    if (!token) return response;
    sessionStorage.setItem(TOKEN_KEY, token.trim());
    response = await send();
    if (response.status === 401) sessionStorage.removeItem(TOKEN_KEY);
  }
  return response;
}
window.s4edgeFetch = authorisedFetch;

async function api(path, options) {
  const response = await authorisedFetch(path, options);
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

function renderNodes(nodes) {
  const body = document.querySelector("#nodes tbody");
  body.replaceChildren(...nodes.map((n) => {
    const state = n.state || "unknown";
    const stateCell = el("td", {}, el("span", { class: `state-${state}` }, state));
    if (n.stale) stateCell.append(" ", el("span", { class: "stale", title: "heartbeats stopped" }, "stale"));
    const figure = (v) => (typeof v === "number" && !Number.isInteger(v) ? v.toFixed(1) : v);
    const health = n.health ? Object.entries(n.health)
      .filter(([, v]) => v !== null && typeof v !== "object")
      .map(([k, v]) => `${k}=${figure(v)}`).join(" ") : "";
    // sources and sensors report their own states (ok, warming up, fault: …): show them too
    const sensors = n.health && n.health.sensors ? Object.entries(n.health.sensors)
      .map(([k, v]) => el("span", { class: String(v).startsWith("fault") ? "sensor-fault" : "sensor" }, `${k}: ${v}`))
      : [];
    return el("tr", { "data-node": `${n.site}/${n.node_id}`, class: n.stale ? "is-stale" : "" },
      el("td", {}, n.site), el("td", {}, n.node_id), stateCell,
      el("td", { class: "heartbeat" }, when(n.heartbeat_at)),
      el("td", {}, health, el("div", { class: "sensors" }, ...sensors)));
  }));
  document.getElementById("node-count").textContent = `(${nodes.length})`;
}

let nodesPending = null;
function refreshNodes(delay = 0) {
  // Node events can come in bursts (a fleet's heartbeats): reload at most once per delay.
  if (nodesPending) return;
  nodesPending = setTimeout(async () => {
    try { renderNodes((await api("/api/nodes")).nodes); }
    catch (err) { console.warn(err); }
    finally { nodesPending = null; }
  }, delay);
}

function markAcked(row, by) {
  row.classList.add("acked");
  const button = row.querySelector("button");
  button.disabled = true;
  button.textContent = `acked by ${by}`;
}

function alertRow(a, fresh) {
  const button = el("button", { type: "button", class: "ack" }, "acknowledge");
  const row = el("tr", { "data-alert": a.id, class: fresh ? "fresh" : "" },
    el("td", {}, when(a.ts)),
    el("td", {}, el("span", { class: `sev sev-${a.severity}` }, a.severity)),
    el("td", {}, a.kind), el("td", {}, a.state),
    el("td", {}, `${a.site}/${a.node_id}`), el("td", {}, a.zone || ""),
    el("td", {}, a.title || ""), el("td", {}, button));
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      const acked = await api(`/api/alerts/${encodeURIComponent(a.id)}/ack`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ by: "operator" }),
      });
      markAcked(row, acked.acked_by);
    } catch (err) {
      button.disabled = false;
      console.warn(err);
    }
  });
  if (a.acked_at) markAcked(row, a.acked_by);
  return row;
}

function addAlert(a, fresh) {
  if (alertRows.has(a.id)) return;
  const body = document.querySelector("#alerts tbody");
  const row = alertRow(a, fresh);
  alertRows.set(a.id, row);
  // Keep newest first by the node's timestamp, as the API orders them.
  const later = [...body.children].find((r) => r.dataset.ts < a.ts);
  row.dataset.ts = a.ts;
  body.insertBefore(row, later || null);
  while (body.children.length > MAX_ALERTS) {
    const last = body.lastElementChild;
    alertRows.delete(last.dataset.alert);
    last.remove();
  }
  document.getElementById("alert-count").textContent = `(${alertRows.size} shown)`;
}

async function loadAlerts() {
  const { alerts } = await api(`/api/alerts?limit=${MAX_ALERTS}`);
  for (const a of alerts.reverse()) addAlert(a, false);
}

function connect() {
  const link = document.getElementById("link");
  const source = new EventSource("/api/stream");
  source.onopen = () => {
    link.textContent = "live";
    link.className = "link up";
    // Catch up on whatever happened while the stream was down.
    refreshNodes();
    loadAlerts().catch(console.warn);
  };
  source.onerror = () => {
    link.textContent = "reconnecting…";
    link.className = "link down";
  };
  source.addEventListener("alert", (e) => addAlert(JSON.parse(e.data), true));
  source.addEventListener("node", () => refreshNodes(500));
  source.addEventListener("ack", (e) => {
    const ack = JSON.parse(e.data);
    const row = alertRows.get(ack.id);
    if (row) markAcked(row, ack.acked_by);
  });
}

refreshNodes();
loadAlerts().catch(console.warn);
setInterval(() => refreshNodes(), NODE_REFRESH_MS);
connect();
