// The raw alert log: every message as it came (new, update, end), newest first, paged.
"use strict";

import { api, el, severityChip, when } from "./util.js";

let cursor = null;
let incident = null;
const shown = new Set();
// Left open all shift, the log keeps the newest messages that came live, not every one since:
// at one a second, 43,000 rows by morning. The section's data-max-rows may set another bound.
const MAX_ROWS = 1000;

function row(a, fresh) {
  return el("tr", { "data-alert": a.id, class: fresh ? "fresh" : "" },
    el("td", {}, when(a.ts)), el("td", {}, severityChip(a.severity)), el("td", {}, a.kind),
    el("td", {}, a.state), el("td", {}, `${a.site}/${a.node_id}`), el("td", {}, a.zone || ""),
    el("td", {}, a.headline || a.title || ""), el("td", { class: "dim mono" }, a.incident),
    el("td", {}, a.acked_at ? `acked by ${a.acked_by}` : ""));
}

async function page(reset) {
  const params = new URLSearchParams({ limit: "100" });
  if (incident) params.set("incident", incident);
  if (!reset && cursor) params.set("cursor", cursor);
  const body = await api(`/api/alerts?${params}`);
  const tbody = document.querySelector("#log tbody");
  if (reset) { tbody.replaceChildren(); shown.clear(); }
  for (const a of body.alerts) {
    if (shown.has(a.id)) continue;
    shown.add(a.id);
    tbody.append(row(a, false));
  }
  cursor = body.next_cursor;
  document.getElementById("log-more").hidden = !cursor;
  document.getElementById("log-scope").textContent = incident ? `incident ${incident}` : "every message";
}

export function open(forIncident = null) {
  incident = forIncident;
  const section = document.getElementById("log");
  section.hidden = false;
  section.scrollIntoView({ block: "start" });
  return page(true);
}

export function close() {
  document.getElementById("log").hidden = true;
}

export function live(a) {
  const section = document.getElementById("log");
  if (section.hidden || shown.has(a.id) || (incident && a.incident !== incident)) return;
  shown.add(a.id);
  const tbody = document.querySelector("#log tbody");
  tbody.prepend(row(a, true));
  const max = Number(section.dataset.maxRows) || MAX_ROWS;
  if (tbody.rows.length <= max) return;
  while (tbody.rows.length > max) {
    shown.delete(tbody.lastElementChild.dataset.alert);
    tbody.lastElementChild.remove();
  }
  // the older pages now start below what was let go: paging on from the cursor would skip it
  cursor = null;
  document.getElementById("log-more").hidden = true;
  document.getElementById("log-scope").textContent =
    `${incident ? `incident ${incident}` : "every message"}: the newest ${max}; reopen the log to page back`;
}

export function setup() {
  document.getElementById("show-log").addEventListener("click", () => {
    if (document.getElementById("log").hidden) open().catch(console.warn);
    else close();
  });
  document.getElementById("log-all").addEventListener("click", () => open().catch(console.warn));
  document.getElementById("log-close").addEventListener("click", close);
  document.getElementById("log-more").addEventListener("click", () => page(false).catch(console.warn));
}
