// Incidents: the list (open on top, paged by the server), a row's timeline, and ack.
"use strict";

import { ago, api, clock, el, emit, nodeText, post, rank, severityChip, when } from "./util.js";

const PAGE = 50;
const rows = new Map();          // incident id -> { record, tr, detail }
let cursor = null;
let counts = { total: 0, open: 0 };
let drawnOnce = false;
const dirty = new Set();
let flushing = null;

function filters() {
  const form = document.getElementById("filters");
  const params = new URLSearchParams();
  for (const [key, value] of new FormData(form)) {
    if (!value) continue;
    if (key === "from" || key === "to") params.set(key, new Date(value).toISOString());
    else params.set(key, value);
  }
  return params;
}

function passes(record) {
  // The filters, applied to a record that arrives live (the server applies them to pages).
  const f = Object.fromEntries(filters());
  if (f.state && record.state !== f.state) return false;
  if (f.severity && rank(record.peak_severity) < rank(f.severity)) return false;
  for (const key of ["kind", "site"]) if (f[key] && record[key] !== f[key]) return false;
  if (f.node && record.node_id !== f.node) return false;
  if (f.from && record.last_seen < f.from) return false;
  if (f.to && record.first_seen > f.to) return false;
  return true;
}

function order(a, b) {  // open first, then the latest seen: as the server pages them
  if (a.state !== b.state) return a.state === "open" ? -1 : 1;
  if (a.last_seen !== b.last_seen) return a.last_seen < b.last_seen ? 1 : -1;
  return a.incident < b.incident ? 1 : -1;
}

function callChip(ng112) {
  if (!ng112) return "";
  const label = { awaiting_confirm: "awaiting confirmation", pending: "queued", sending: "calling",
    retrying: "retrying", delivered: "delivered", failed: "failed", dismissed: "cancelled",
    unconfirmed: "unconfirmed", skipped: "not sent", merged: "merged into the next" }[ng112.state] || ng112.state;
  const detail = Object.entries(ng112.calls).map(([state, n]) => `${n} ${state}`).join(", ");
  return el("span", { class: `call call-${ng112.state}`, title: `NG112: ${detail}` }, `112 ${label}`);
}

function ackCell(record) {
  if (record.acked_at) {
    const text = record.escalated_since_ack ? `acked by ${record.acked_by} — worse since` : `acked by ${record.acked_by}`;
    const acked = el("span", { class: record.escalated_since_ack ? "acked escalated" : "acked",
      title: `at ${when(record.acked_at)}` }, text);
    // worse since: the operator acknowledges what it has become
    return record.escalated_since_ack ? el("span", {}, acked, " ", ackButton(record, "acknowledge again")) : acked;
  }
  return ackButton(record, "acknowledge");
}

function ackButton(record, label) {
  const button = el("button", { type: "button", class: "ack" }, label);
  const refused = el("div", { class: "ack-refused", role: "alert" });  // a wrong token, a read-only store
  button.addEventListener("click", async (event) => {
    event.stopPropagation();
    button.disabled = true;
    refused.textContent = "";
    try {
      const done = await post(`/api/incidents/${encodeURIComponent(record.incident)}/ack`, { by: "operator" });
      applyAck(done);
    } catch (err) {
      button.disabled = false;
      refused.textContent = `not acknowledged: ${err.message}`;
      console.warn(err);
    }
  });
  return el("span", {}, button, refused);
}

function renderRow(record, fresh) {
  const current = record.severity !== record.peak_severity
    ? el("small", { class: "dim" }, ` now ${record.severity}`) : null;
  const tr = el("tr", {
    class: `incident state-${record.state}${record.acked_at ? " is-acked" : ""}${fresh ? " fresh" : ""}`,
    "data-incident": record.incident, tabIndex: 0, "aria-expanded": "false",
  },
  el("td", {}, severityChip(record.peak_severity), current),
  el("td", { class: "title" }, nodeText(record.title),
    record.status !== "Actual" ? el("span", { class: "drill", title: "CAP status" }, record.status) : null),
  el("td", {}, record.kind),
  el("td", { class: "where" }, `${record.site}/${record.node_id}`,
    record.zone ? el("div", { class: "dim" }, record.zone) : null),
  el("td", { class: record.state === "open" ? "open" : "dim" }, record.state),
  el("td", { title: when(record.first_seen) }, clock(record.first_seen)),
  el("td", { class: "last-seen", title: when(record.last_seen), "data-ts": record.last_seen }, ago(record.last_seen)),
  el("td", { class: "num", title: `${record.alerts} messages, ${record.updates} updates` }, String(record.updates)),
  el("td", {}, callChip(record.ng112)),
  el("td", { class: "ack-cell" }, ackCell(record)));
  tr.addEventListener("click", () => toggle(record.incident));
  tr.addEventListener("keydown", (e) => { if (e.key === "Enter") toggle(record.incident); });
  return tr;
}

function measurementText(m) {
  return `${m.quantity} ${typeof m.value === "number" ? +m.value.toFixed(3) : m.value} ${m.unit}`
    + (m.sensor ? ` (${m.sensor})` : "");
}

function timeline(body) {
  const steps = body.timeline.map((a) => el("tr", { "data-alert": a.id, class: `step step-${a.state}` },
    el("td", {}, when(a.ts)),
    el("td", {}, el("span", { class: `step-state ${a.state}` }, a.state)),
    el("td", {}, severityChip(a.severity)),
    el("td", {}, nodeText(a.headline), a.detail ? el("div", { class: "dim" }, a.detail) : null),
    el("td", { class: "measurements" }, ...(a.measurements || []).map((m) => el("div", {}, measurementText(m))),
      a.detection ? el("div", { class: "dim" },
        `${a.detection.label} × ${a.detection.count}${a.detection.rule ? ` (${a.detection.rule})` : ""}`) : null)));
  // a long incident: the server sends the first message and the latest, and says how many lie between
  const items = body.timeline_omitted > 0
    ? [steps[0], el("tr", { class: "step omitted" }, el("td", { colSpan: 5, class: "dim" },
        `… ${body.timeline_omitted} updates between (raw alerts has them all)`)), ...steps.slice(1)]
    : steps;
  return el("div", { class: "timeline" },
    el("table", {}, el("thead", {}, el("tr", {}, ...["time", "message", "severity", "what", "measurements"]
      .map((h) => el("th", {}, h)))), el("tbody", {}, ...items)),
    el("div", { class: "dim" }, `${body.alerts} messages · `,
      el("a", { href: `#log:${body.incident}`, class: "raw-link",
        onclick: (e) => { e.preventDefault(); emit("show-log", { incident: body.incident }); } },
      "raw alerts")));
}

async function toggle(id) {
  const entry = rows.get(id);
  if (!entry) return;
  if (entry.detail) {
    entry.detail.remove();
    entry.detail = null;
    entry.tr.setAttribute("aria-expanded", "false");
    return;
  }
  entry.detail = el("tr", { class: "detail", "data-detail": id }, el("td", { colSpan: 10 }, "loading…"));
  entry.tr.after(entry.detail);
  entry.tr.setAttribute("aria-expanded", "true");
  await fillDetail(id);
}

async function fillDetail(id) {
  const entry = rows.get(id);
  if (!entry || !entry.detail) return;
  try {
    const body = await api(`/api/incidents/${encodeURIComponent(id)}`);
    if (entry.detail) entry.detail.firstChild.replaceChildren(timeline(body));
  } catch (err) {
    if (entry.detail) entry.detail.firstChild.textContent = String(err);
  }
}

function place(record, fresh) {
  const body = document.querySelector("#incidents tbody");
  const old = rows.get(record.incident);
  const tr = renderRow(record, fresh);
  if (old) {
    old.tr.replaceWith(tr);
    old.record = record;
    old.tr = tr;
    if (old.detail) { tr.after(old.detail); tr.setAttribute("aria-expanded", "true"); fillDetail(record.incident); }
  } else {
    rows.set(record.incident, { record, tr, detail: null });
  }
  // move it to where the order puts it
  const entry = rows.get(record.incident);
  const before = [...rows.values()].filter((e) => e !== entry && e.tr.isConnected)
    .map((e) => e.record).sort(order).find((r) => order(record, r) < 0);
  const anchor = before ? rows.get(before.incident).tr : null;
  body.insertBefore(entry.tr, anchor);
  if (entry.detail) entry.tr.after(entry.detail);
}

// The counts as the server makes them, for an incident the rows do not hold: whether it is
// new or on a page not loaded, only the server can tell.
async function recount() {
  const params = filters();
  params.set("limit", 1);
  const body = await api(`/api/incidents?${params}`);
  counts = { total: body.total, open: body.open };
}

function showCounts() {
  document.getElementById("incident-count").textContent =
    `${counts.open} open · ${counts.total} in all${rows.size < counts.total ? ` · ${rows.size} shown` : ""}`;
}

export async function load() {
  const params = filters();
  params.set("limit", PAGE);
  const body = await api(`/api/incidents?${params}`);
  for (const entry of rows.values()) { entry.tr.remove(); if (entry.detail) entry.detail.remove(); }
  rows.clear();
  const tbody = document.querySelector("#incidents tbody");
  tbody.replaceChildren(...body.incidents.map((record) => {
    const tr = renderRow(record, false);
    rows.set(record.incident, { record, tr, detail: null });
    return tr;
  }));
  cursor = body.next_cursor;
  counts = { total: body.total, open: body.open };
  document.getElementById("more").hidden = !cursor;
  document.getElementById("no-incidents").hidden = body.incidents.length > 0;
  showCounts();
  emit("incidents", [...rows.values()].map((e) => e.record));
  if (!drawnOnce) {
    drawnOnce = true;
    performance.mark("incidents-drawn");  // read by `s4edge bench console`
  }
}

async function more() {
  if (!cursor) return;
  const params = filters();
  params.set("limit", PAGE);
  params.set("cursor", cursor);
  const body = await api(`/api/incidents?${params}`);
  const tbody = document.querySelector("#incidents tbody");
  for (const record of body.incidents) {
    if (rows.has(record.incident)) continue;
    const tr = renderRow(record, false);
    rows.set(record.incident, { record, tr, detail: null });
    tbody.append(tr);
  }
  cursor = body.next_cursor;
  document.getElementById("more").hidden = !cursor;
  showCounts();
}

function applyAck(done) {
  const entry = rows.get(done.incident);
  if (!entry) return;
  place({ ...entry.record, acked_at: done.acked_at, acked_by: done.acked_by, escalated_since_ack: false }, false);
  emit("incident-changed", rows.get(done.incident).record);
}

// Live: an alert (or an NG112 change) marks its incident; the marked are fetched together.
export function touched(incident) {
  dirty.add(incident);
  if (!flushing) flushing = setTimeout(flush, 250);
}

async function flush() {
  const ids = [...dirty].slice(0, 100);
  ids.forEach((id) => dirty.delete(id));
  try {
    const params = new URLSearchParams(ids.map((id) => ["incident", id]));
    params.set("limit", ids.length);
    const body = await api(`/api/incidents?${params}`);
    const lastShown = [...rows.values()].map((e) => e.record).sort(order).at(-1);
    let unknown = false;  // one the rows do not hold: new, or on a page not loaded
    for (const record of body.incidents) {
      const known = rows.get(record.incident);
      const fits = passes(record) && (!cursor || !lastShown || order(record, lastShown) < 0);
      if (known && !passes(record)) {  // it left the filters
        known.tr.remove(); if (known.detail) known.detail.remove();
        rows.delete(record.incident);
        counts.total -= 1;
        if (known.record.state === "open") counts.open -= 1;
      } else if (known) {  // ended, or continued after its end (open again)
        if (known.record.state !== record.state) counts.open += record.state === "open" ? 1 : -1;
        place(record, false);
      } else {
        // new, or on a page not loaded (then counted already, and maybe leaving the filters)
        unknown = unknown || passes(record) || Boolean(cursor);
        if (fits) place(record, true);
      }
      emit("incident-changed", record);
    }
    if (unknown) await recount();
    document.getElementById("no-incidents").hidden = rows.size > 0;
    showCounts();
  } catch (err) {
    console.warn(err);
  } finally {
    flushing = dirty.size ? setTimeout(flush, 250) : null;
  }
}

export function onAck(data) {
  if (data.incident) applyAck(data);
}

export function refreshAges() {
  const now = Date.now();
  for (const cell of document.querySelectorAll("#incidents td.last-seen")) cell.textContent = ago(cell.dataset.ts, now);
}

export function setup() {
  const form = document.getElementById("filters");
  form.addEventListener("change", () => load().catch(console.warn));
  form.addEventListener("submit", (e) => { e.preventDefault(); load().catch(console.warn); });
  document.getElementById("more").addEventListener("click", () => more().catch(console.warn));
}

// Open an incident's timeline and bring its row into view: one the list does not hold (filtered
// out, or on a page not loaded) is looked for among its node's incidents, as "filter the list" does.
export async function reveal(id, site, node) {
  if (!rows.has(id)) await filterByNode(site, node);
  const entry = rows.get(id);
  if (!entry) return;
  if (!entry.detail) await toggle(id);
  entry.tr.scrollIntoView({ block: "nearest" });
  entry.tr.focus({ preventScroll: true });
}

export function filterByNode(site, node) {
  const form = document.getElementById("filters");
  form.elements.site.value = site;
  form.elements.node.value = node;
  return load();
}
