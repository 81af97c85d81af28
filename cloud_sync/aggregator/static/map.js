// The site map (Leaflet, vendored): nodes and open incidents at their coordinates. With no tile
// URL configured the map fetches nothing: a plain Web Mercator background with a graticule
// and a scale, so that positions and distances still read right offline.
"use strict";

import { clock, el, emit, nodeText, rank, severityChip } from "./util.js";

const NODE_COLOURS = { online: "#6fd08c", stale: "#f0b040", offline: "#8a929c", unknown: "#8a929c" };
const SEVERITY_COLOURS = { Minor: "#7fb8e6", Moderate: "#f0d050", Severe: "#f08c3c", Extreme: "#e5484d" };
const TOOLTIP_INCIDENTS = 5;  // a node's incidents named on hover; a click lists every one
const STEPS = [10, 5, 2, 1, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001, 0.0005, 0.0002, 0.0001];

let map = null;
let graticule = null;
let nodeLayer = null;
let incidentLayer = null;
let listPopup = null;
const nodeMarkers = new Map();   // "site/node" -> marker
const incidentsAt = new Map();   // "site/node" -> Map(incident -> record), the open ones
const incidentMarks = new Map(); // "site/node" -> { rings: Map(severity -> ring), badge, count }
let listed = null;               // the node whose incidents the popup lists
let fitted = false;

function drawGraticule() {
  if (!graticule) return;
  graticule.clearLayers();
  const b = map.getBounds();
  const span = Math.max(b.getNorth() - b.getSouth(), b.getEast() - b.getWest());
  const step = STEPS.find((s) => span / s >= 4) || STEPS.at(-1);
  const line = { color: "#2f3844", weight: 1, interactive: false, className: "graticule" };
  for (let lat = Math.floor(b.getSouth() / step) * step; lat <= b.getNorth(); lat += step) {
    graticule.addLayer(L.polyline([[lat, b.getWest() - step], [lat, b.getEast() + step]], line));
  }
  for (let lon = Math.floor(b.getWest() / step) * step; lon <= b.getEast(); lon += step) {
    graticule.addLayer(L.polyline([[b.getSouth() - step, lon], [b.getNorth() + step, lon]], line));
  }
}

export function setup(config) {
  if (typeof L === "undefined") {
    document.getElementById("map").textContent = "the map library did not load";
    return;
  }
  map = L.map("map", { zoomSnap: 0.25, worldCopyJump: true }).setView([20, 0], 2);
  if (config.tiles) {
    L.tileLayer(config.tiles.url, { attribution: config.tiles.attribution || "", maxZoom: 20 }).addTo(map);
  } else {
    document.getElementById("map").classList.add("plain");
    graticule = L.layerGroup().addTo(map);
    map.on("moveend", drawGraticule);
    map.attributionControl.addAttribution("no tiles: plain Web Mercator background");
  }
  L.control.scale({ imperial: false, maxWidth: 160 }).addTo(map);
  incidentLayer = L.layerGroup().addTo(map);
  nodeLayer = L.layerGroup().addTo(map);
  // above the rings and the count, not over them
  listPopup = L.popup({ className: "incident-list", maxWidth: 320, minWidth: 200, offset: [0, -20] });
  map.on("popupclose", (e) => { if (e.popup === listPopup) listed = null; });
  drawGraticule();
  window.s4edge.map = map;
}

function tagged(marker, attrs) {
  const path = marker.getElement();
  if (path) for (const [key, value] of Object.entries(attrs)) path.setAttribute(key, value);
}

export function setNodes(nodes) {
  if (!map) return;
  const seen = new Set();
  const points = [];
  for (const n of nodes) {
    if (!n.location) continue;
    const key = `${n.site}/${n.node_id}`;
    const at = [n.location.lat, n.location.lon];
    seen.add(key);
    points.push(at);
    const style = {
      radius: 7, color: n.problems.length ? "#e5484d" : "#0b0e12", weight: n.problems.length ? 2.5 : 1.5,
      fillColor: NODE_COLOURS[n.condition] || NODE_COLOURS.unknown, fillOpacity: 0.95, className: "node-marker",
    };
    let marker = nodeMarkers.get(key);
    if (!marker) {
      marker = L.circleMarker(at, style).addTo(nodeLayer);
      marker.on("click", () => emit("select-node", { site: n.site, node_id: n.node_id }));
      nodeMarkers.set(key, marker);
    } else {
      marker.setLatLng(at);
      marker.setStyle(style);
    }
    // elements, never HTML strings: zone names and reasons come from the nodes
    marker.bindTooltip(el("div", {}, el("b", {}, key), ` — ${n.condition}`,
      n.location.zone ? el("div", {}, n.location.zone) : null,
      ...n.problems.map((p) => el("div", { class: "bad" }, `${p.part}: ${p.reason}`))), { direction: "top" });
    tagged(marker, { "data-node": key, "data-lat": at[0], "data-lon": at[1], "data-condition": n.condition });
  }
  for (const [key, marker] of nodeMarkers) {
    if (!seen.has(key)) { marker.remove(); nodeMarkers.delete(key); }
  }
  if (!fitted && points.length) {
    fitted = true;
    map.fitBounds(L.latLngBounds(points).pad(0.3), { maxZoom: 17 });
  }
}

// -- open incidents: one ring per severity at their node, a count once there is more than one,
// and a click lists them all, each opening its own row ---------------------------------------
function nodeKey(record) {
  return `${record.site}/${record.node_id}`;
}

function worstFirst(a, b) {
  return rank(b.peak_severity) - rank(a.peak_severity) || (a.last_seen < b.last_seen ? 1 : -1);
}

function openAt(key) {
  return [...(incidentsAt.get(key) || new Map()).values()].sort(worstFirst);
}

function incidentList(key) {
  const records = openAt(key);
  const item = (r) => {
    const li = el("li", { "data-incident": r.incident, tabIndex: 0, role: "button" },
      severityChip(r.peak_severity), " ", nodeText(r.title),
      el("div", { class: "dim" }, `${r.kind} · since ${clock(r.first_seen)}`
        + (r.acked_at ? ` · acked by ${r.acked_by}` : "")));
    const open = () => {
      map.closePopup(listPopup);
      emit("open-incident", { incident: r.incident, site: r.site, node_id: r.node_id });
    };
    li.addEventListener("click", open);
    li.addEventListener("keydown", (e) => { if (e.key === "Enter") open(); });
    return li;
  };
  return el("div", { class: "map-incidents", "data-node": key },
    el("b", {}, key), ` — ${records.length} open incident${records.length === 1 ? "" : "s"}`,
    el("ul", {}, ...records.map(item)));
}

function showList(key) {
  const records = openAt(key);
  if (!records.length) return;
  listed = key;
  listPopup.setLatLng([records[0].lat, records[0].lon]).setContent(incidentList(key)).openOn(map);
  emit("select-node", { site: records[0].site, node_id: records[0].node_id });
}

function summary(key, records) {
  // elements, never HTML strings: titles come from the nodes; the worst few, the list has them all
  const shown = records.slice(0, TOOLTIP_INCIDENTS);
  return el("div", {}, el("b", {}, key), ` — ${records.length} open`,
    ...shown.map((r) => el("div", {}, el("b", {}, r.peak_severity), " ", nodeText(r.title),
      r.acked_at ? el("span", { class: "dim" }, ` (acked by ${r.acked_by})`) : null)),
    records.length > shown.length ? el("div", {}, `… ${records.length - shown.length} more`) : null,
    records.length > 1 ? el("div", { class: "dim" }, "click for the list") : null);
}

function drawIncidents(key) {
  const records = openAt(key);
  const marks = incidentMarks.get(key) || { rings: new Map(), badge: null, count: 0 };
  incidentMarks.set(key, marks);
  // where the latest says the node is (a node that moved reports its new place)
  const latest = records.reduce((a, b) => (b.last_seen > a.last_seen ? b : a), records[0] || null);
  const bySeverity = new Map();
  for (const r of records) bySeverity.set(r.peak_severity, [...(bySeverity.get(r.peak_severity) || []), r]);
  for (const [severity, ring] of marks.rings) {
    if (!bySeverity.has(severity)) { ring.remove(); marks.rings.delete(severity); }
  }
  if (!latest) {
    if (marks.badge) marks.badge.remove();
    incidentMarks.delete(key);
    if (listed === key) map.closePopup(listPopup);
    return;
  }
  const at = [latest.lat, latest.lon];
  for (const [severity, group] of bySeverity) {
    const style = {
      radius: 7 + 4 * rank(severity), color: SEVERITY_COLOURS[severity] || "#fff", weight: 3, fill: false,
      dashArray: group.every((r) => r.acked_at) ? "4 4" : null, className: "incident-marker",
    };
    let ring = marks.rings.get(severity);
    if (!ring) {
      ring = L.circleMarker(at, style).addTo(incidentLayer);
      ring.on("click", () => showList(key));
      marks.rings.set(severity, ring);
    } else {
      ring.setLatLng(at);
      ring.setStyle(style);
    }
    ring.bindTooltip(summary(key, records), { direction: "top" });
    tagged(ring, { "data-node": key, "data-severity": severity, "data-incidents": group.map((r) => r.incident).join(" ") });
  }
  if (records.length > 1) {
    // a count on the rings' upper right: several incidents at one node are more than one ring
    const icon = L.divIcon({ className: "incident-count", html: el("span", {}, String(records.length)),
      iconSize: [18, 18], iconAnchor: [-8, 26] });
    if (!marks.badge) {
      marks.badge = L.marker(at, { icon, keyboard: true, riseOnHover: true }).addTo(incidentLayer);
      marks.badge.on("click", () => showList(key));
    } else {
      marks.badge.setLatLng(at);
      // a new icon is a new element: only for a new count, so that a live update keeps its focus
      if (marks.count !== records.length) marks.badge.setIcon(icon);
    }
    marks.count = records.length;
    marks.badge.bindTooltip(summary(key, records), { direction: "top" });
    tagged(marks.badge, { "data-node": key, "data-count": records.length, role: "button",
      "aria-label": `${records.length} open incidents at ${key}: list them` });
  } else if (marks.badge) {
    marks.badge.remove();
    marks.badge = null;
  }
  if (listed === key && listPopup.isOpen()) listPopup.setContent(incidentList(key));
}

function forget(incident) {
  // the node that held it (an incident stays at one node), or null
  for (const [key, records] of incidentsAt) {
    if (records.delete(incident)) {
      if (!records.size) incidentsAt.delete(key);
      return key;
    }
  }
  return null;
}

export function setIncident(record) {
  if (!map) return;
  const was = forget(record.incident);
  const key = nodeKey(record);
  if (record.state === "open") {
    if (!incidentsAt.has(key)) incidentsAt.set(key, new Map());
    incidentsAt.get(key).set(record.incident, record);
  }
  if (was && was !== key) drawIncidents(was);
  drawIncidents(key);
}

export function setOpenIncidents(records) {
  if (!map) return;
  const drawn = new Set(incidentMarks.keys());
  incidentsAt.clear();
  for (const record of records) {
    if (record.state !== "open") continue;
    const key = nodeKey(record);
    if (!incidentsAt.has(key)) incidentsAt.set(key, new Map());
    incidentsAt.get(key).set(record.incident, record);
  }
  for (const key of new Set([...drawn, ...incidentsAt.keys()])) drawIncidents(key);
}

export function focus(location) {
  if (map && location) map.panTo([location.lat, location.lon]);
}
