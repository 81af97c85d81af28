// Small helpers the console's modules share: elements, times, the API with the operator token.
"use strict";

export const SEVERITIES = ["Minor", "Moderate", "Severe", "Extreme"];
export const rank = (severity) => SEVERITIES.indexOf(severity) + 1;

export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("data-") || key.startsWith("aria-") || key === "role") node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

// Text a node sent (a title, zone, version) in its own bidi isolate, HTML's <bdi>: a right-to-left
// name, or an override character in one (U+202E), cannot reorder the console's words beside it.
export function nodeText(text) {
  return el("bdi", {}, text);
}

export function when(iso) {
  if (!iso) return "—";
  return new Date(iso).toLocaleString(undefined, { hour12: false });
}

export function clock(iso) {
  if (!iso) return "—";
  return new Date(iso).toLocaleTimeString(undefined, { hour12: false });
}

export function ago(iso, now = Date.now()) {
  if (!iso) return "—";
  const s = Math.max(0, Math.round((now - new Date(iso).getTime()) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 36000) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

export function figure(value, digits = 1) {
  if (value === null || value === undefined) return "—";
  return Number.isInteger(value) ? String(value) : value.toFixed(digits);
}

export function severityChip(severity, extra = "") {
  return el("span", { class: `sev sev-${severity} ${extra}`.trim(), title: severity }, severity);
}

// -- the operator token: asked for in a dialog when an act is refused, kept for this tab ------
const TOKEN_KEY = "s4edge-operator-token";

function askToken() {
  const dialog = document.getElementById("token-dialog");
  const input = document.getElementById("token-input");
  if (!dialog || typeof dialog.showModal !== "function") {
    return Promise.resolve(window.prompt("Operator token for this aggregator:"));
  }
  input.value = "";
  dialog.showModal();
  input.focus();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok" ? input.value.trim() : null),
      { once: true });
  });
}

export async function authorisedFetch(path, options = {}) {
  const send = () => {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = { ...(options.headers || {}), ...(token ? { Authorization: `Bearer ${token}` } : {}) };
    return fetch(path, { ...options, headers });
  };
  let response = await send();
  for (let tries = 0; response.status === 401 && tries < 2; tries += 1) {
    const token = await askToken();
    if (!token) return response;
    sessionStorage.setItem(TOKEN_KEY, token);
    response = await send();
    if (response.status === 401) sessionStorage.removeItem(TOKEN_KEY);
  }
  return response;
}

export async function api(path, options) {
  const response = await authorisedFetch(path, options);
  if (!response.ok) {
    let detail = "";
    try { detail = (await response.json()).detail; } catch { /* not JSON */ }
    throw new Error(`${path}: HTTP ${response.status}${detail ? ` (${JSON.stringify(detail)})` : ""}`);
  }
  return response.json();
}

export function post(path, body) {
  return api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}

// -- live events: one EventSource for the page, handlers by event name ------------------------
const handlers = new Map();
export function on(event, handler) {
  if (!handlers.has(event)) handlers.set(event, []);
  handlers.get(event).push(handler);
}
export function emit(event, data) {
  for (const handler of handlers.get(event) || []) {
    try { handler(data); } catch (err) { console.warn(err); }
  }
}
