// Node health at a glance: one row per node, problems first; a node's own panel on a click.
"use strict";

import { ago, api, el, emit, figure, nodeText, severityChip, when } from "./util.js";

const STAGE_COLOURS = ["#7fb8e6", "#6fd08c", "#f0d050", "#f08c3c", "#c387e6", "#e5484d", "#8a929c"];
const STATE_ORDER = { offline: 0, stale: 1, unknown: 2, online: 3 };
const PAGE = 1000;  // the API's largest page of nodes
let latest = [];

export function stagesBar(stages) {
  // one bar per camera: each stage's median share of the frame's time, with its figure on hover
  const cameras = Object.entries(stages || {});
  if (!cameras.length) return el("span", { class: "dim" }, "—");
  return el("div", { class: "stages" }, ...cameras.map(([camera, parts]) => {
    const entries = Object.entries(parts);
    const total = entries.reduce((sum, [, ms]) => sum + ms, 0) || 1;
    return el("div", { class: "stage-row", title: `${camera}: ` + entries.map(([s, ms]) => `${s} ${ms} ms`).join(", ") },
      el("span", { class: "stage-cam" }, camera),
      el("span", { class: "stage-bar", role: "img", "aria-label": `${camera} stage timings` },
        ...entries.map(([stage, ms], i) => el("span", {
          class: "stage", title: `${stage} ${ms} ms`, "data-stage": stage,
          style: `width:${(100 * ms / total).toFixed(1)}%;background:${STAGE_COLOURS[i % STAGE_COLOURS.length]}`,
        }))),
      el("span", { class: "stage-total" }, `${figure(total)} ms`));
  }));
}

function badges(node) {
  if (!node.problems.length) return el("span", { class: "badge ok" }, "OK");
  return el("div", { class: "badges" }, ...node.problems.map((p) =>
    el("span", { class: "badge bad", title: p.reason }, `${p.part}: ${p.reason}`)));
}

function stateChip(node) {
  return el("span", { class: `cond cond-${node.condition}`, title: `last heartbeat ${when(node.heartbeat_at)}` },
    node.condition);
}

function row(n) {
  const v = n.vitals;
  const tr = el("tr", { "data-node": `${n.site}/${n.node_id}`, class: `cond-row-${n.condition}`, tabIndex: 0 },
    el("td", {}, el("b", {}, n.node_id), el("div", { class: "dim" }, n.site)),
    el("td", {}, stateChip(n), el("div", { class: "dim heartbeat" }, ago(n.heartbeat_at))),
    el("td", { class: "num" }, figure(v.camera_fps)),
    el("td", { class: "num" }, figure(v.inference_ms)),
    el("td", { class: "num" }, v.cpu_percent === undefined ? "—" : `${figure(v.cpu_percent, 0)} %`),
    el("td", { class: "num" }, v.mem_mb === undefined ? "—" : `${figure(v.mem_mb, 0)} MB`),
    el("td", { class: "num" }, v.soc_temp_c === undefined ? "—" : `${figure(v.soc_temp_c, 0)} °C`),
    el("td", { class: "num" }, figure(v.outbox_depth)),
    el("td", {}, stagesBar(n.stages_ms)),
    el("td", {}, badges(n)));
  tr.addEventListener("click", () => emit("select-node", { site: n.site, node_id: n.node_id }));
  return tr;
}

export function render(nodes) {
  latest = nodes;
  const sorted = [...nodes].sort((a, b) => (b.problems.length > 0) - (a.problems.length > 0)
    || STATE_ORDER[a.condition] - STATE_ORDER[b.condition]
    || a.site.localeCompare(b.site) || a.node_id.localeCompare(b.node_id));
  document.querySelector("#nodes tbody").replaceChildren(...sorted.map(row));
  const by = (c) => nodes.filter((n) => n.condition === c).length;
  const trouble = nodes.filter((n) => n.problems.length).length;
  document.getElementById("node-count").textContent =
    `${by("online")} online · ${by("stale")} stale · ${by("offline")} offline · ${trouble} need attention`;
}

export function find(site, nodeId) {
  return latest.find((n) => n.site === site && n.node_id === nodeId);
}

export function detail(node, incidents) {
  const v = node.vitals;
  const vital = (label, value) => el("div", { class: "vital" }, el("span", { class: "dim" }, label), el("b", {}, value));
  return el("div", {},
    el("div", { class: "detail-head" },
      el("h3", {}, `${node.site}/${node.node_id}`), stateChip(node),
      el("button", { type: "button", class: "close", "aria-label": "close", onclick: () => emit("close-node") }, "×")),
    el("div", { class: "dim" }, node.location
      ? `${node.location.lat.toFixed(5)}, ${node.location.lon.toFixed(5)}`
      : "no position yet (nodes report theirs with their alerts)",
    ...(node.location && node.location.zone ? [" · ", nodeText(node.location.zone)] : []),
    " · version ", nodeText(node.version || "—"), ` · heartbeat ${ago(node.heartbeat_at)}`),
    badges(node),
    el("div", { class: "vitals" },
      vital("camera", `${figure(v.camera_fps)} fps`), vital("inference", `${figure(v.inference_ms)} ms`),
      vital("CPU", `${figure(v.cpu_percent, 0)} %`), vital("memory", `${figure(v.mem_mb, 0)} MB`),
      vital("SoC", `${figure(v.soc_temp_c, 0)} °C`), vital("outbox", figure(v.outbox_depth)),
      vital("dropped frames", figure(v.dropped_frames)), vital("uptime", v.uptime_s ? `${Math.round(v.uptime_s / 3600)} h` : "—")),
    stagesBar(node.stages_ms),
    Object.keys(node.parts).length ? el("div", { class: "parts" }, ...Object.entries(node.parts).map(([part, state]) =>
      el("span", { class: /^(fault|failed|error)/.test(state) ? "part bad" : "part" }, `${part}: ${state}`))) : null,
    el("h4", {}, "Incidents ", el("a", { href: "#", onclick: (e) => { e.preventDefault(); emit("filter-node", node); } },
      "filter the list")),
    incidents.length ? el("ul", { class: "node-incidents" }, ...incidents.map((r) =>
      el("li", { "data-incident": r.incident }, severityChip(r.peak_severity), " ", nodeText(r.title), " ",
        el("span", { class: "dim" }, `${r.state} · ${ago(r.last_seen)}`))))
      : el("div", { class: "dim" }, "none"),
    el("h4", {}, "Sensor trends ", el("small", { class: "dim" }, "(up to 6 h: 1-min mean, min-max band, reference thresholds)")),
    el("div", { id: "trends", class: "trends" }, "loading…"));
}

export async function load() {
  // the whole fleet, a page at a time: the counts and the problems-first order are over every node
  const nodes = [];
  let cursor = null;
  do {
    const params = new URLSearchParams({ limit: PAGE });
    if (cursor) params.set("cursor", cursor);
    const body = await api(`/api/nodes?${params}`);
    nodes.push(...body.nodes);
    cursor = body.next_cursor;
  } while (cursor);
  render(nodes);
  return nodes;
}
