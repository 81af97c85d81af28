// The raw alert log: every message as it came (new, update, end), newest first, paged.
"use strict";

import { api, el, severityChip, when } from "./util.js";

let cursor = null;
let incident = null;
const shown = new Set();

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
  document.querySelector("#log tbody").prepend(row(a, true));
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
