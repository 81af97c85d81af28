// The site map (Leaflet, vendored): nodes and open incidents at their coordinates. With no tile
// URL configured the map fetches nothing: a plain Web Mercator background with a graticule
// and a scale, so that positions and distances still read right offline.
"use strict";

import { el, emit, rank } from "./util.js";

const NODE_COLOURS = { online: "#6fd08c", stale: "#f0b040", offline: "#8a929c", unknown: "#8a929c" };
const SEVERITY_COLOURS = { Minor: "#7fb8e6", Moderate: "#f0d050", Severe: "#f08c3c", Extreme: "#e5484d" };
const STEPS = [10, 5, 2, 1, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001, 0.0005, 0.0002, 0.0001];

let map = null;
let graticule = null;
let nodeLayer = null;
let incidentLayer = null;
const nodeMarkers = new Map();     // "site/node" -> marker
const incidentMarkers = new Map(); // incident -> marker
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

export function setIncident(record) {
  if (!map) return;
  const old = incidentMarkers.get(record.incident);
  if (record.state !== "open") {
    if (old) { old.remove(); incidentMarkers.delete(record.incident); }
    return;
  }
  const style = {
    radius: 9 + 2 * rank(record.peak_severity), color: SEVERITY_COLOURS[record.peak_severity] || "#fff",
    weight: 3, fill: false, dashArray: record.acked_at ? "4 4" : null, className: "incident-marker",
  };
  const marker = old || L.circleMarker([record.lat, record.lon], style).addTo(incidentLayer);
  if (old) { marker.setLatLng([record.lat, record.lon]); marker.setStyle(style); }
  marker.bindTooltip(el("div", {}, el("b", {}, record.peak_severity), ` ${record.title}`,
    el("div", {}, `${record.site}/${record.node_id}`),
    record.acked_at ? el("div", {}, `acked by ${record.acked_by}`) : null), { direction: "top" });
  marker.off("click");
  marker.on("click", () => emit("select-node", { site: record.site, node_id: record.node_id }));
  incidentMarkers.set(record.incident, marker);
  tagged(marker, { "data-incident": record.incident, "data-severity": record.peak_severity });
}

export function setOpenIncidents(records) {
  if (!map) return;
  const keep = new Set(records.map((r) => r.incident));
  for (const [id, marker] of incidentMarkers) if (!keep.has(id)) { marker.remove(); incidentMarkers.delete(id); }
  for (const record of records) setIncident(record);
}

export function focus(location) {
  if (map && location) map.panTo([location.lat, location.lon]);
}
