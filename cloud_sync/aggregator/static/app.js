// s4edge operator's console: plain ES modules, no build step, nothing fetched from outside.
// Incidents are the unit (incidents.js); the map (map.js), node health (nodes.js), trends
// (trends.js) and the raw log (log.js) hang off them; live changes come over one SSE stream.
"use strict";

import * as incidents from "./incidents.js";
import * as log from "./log.js";
import * as map from "./map.js";
import * as nodes from "./nodes.js";
import * as trends from "./trends.js";
import { api, authorisedFetch, el, emit, on } from "./util.js";

const NODE_REFRESH_MS = 10000;   // stale flags age even when no event arrives
const TREND_REFRESH_MS = 60000;  // a bucket is a minute
const MAP_INCIDENTS = 300;       // open incidents drawn on the map, most recent first
const STREAM_RETRY_MS = 5000;    // a new EventSource after one that gave up

window.s4edge = { charts: new Map(), map: null, on };
window.s4edgeFetch = authorisedFetch;  // the NG112 panel acts through it too
let selected = null;

async function openNode(site, nodeId) {
  selected = { site, node_id: nodeId };
  const box = document.getElementById("node-detail");
  box.hidden = false;
  const key = `${encodeURIComponent(site)}/${encodeURIComponent(nodeId)}`;
  const [node, list] = await Promise.all([
    api(`/api/nodes/${key}`),
    api(`/api/incidents?site=${encodeURIComponent(site)}&node=${encodeURIComponent(nodeId)}&limit=8`),
  ]);
  if (!selected || selected.site !== site || selected.node_id !== nodeId) return;
  box.replaceChildren(nodes.detail(node, list.incidents));
  box.dataset.node = `${site}/${nodeId}`;
  map.focus(node.location);
  await trends.draw(site, nodeId);
}

function closeNode() {
  selected = null;
  const box = document.getElementById("node-detail");
  box.hidden = true;
  delete box.dataset.node;
}

let nodesPending = null;
function refreshNodes(delay = 0) {
  // node events come in bursts (a fleet's heartbeats): reload at most once per delay
  if (nodesPending) return;
  nodesPending = setTimeout(async () => {
    try { map.setNodes(await nodes.load()); }
    catch (err) { console.warn(err); }
    finally { nodesPending = null; }
  }, delay);
}

async function loadMapIncidents() {
  const body = await api(`/api/incidents?state=open&limit=${MAP_INCIDENTS}`);
  map.setOpenIncidents(body.incidents);
}

let streamOpened = false;  // once: every later open catches up

function connect() {
  const link = document.getElementById("link");
  const source = new EventSource("/api/stream");
  source.onopen = () => {
    link.textContent = "live";
    link.className = "link up";
    if (streamOpened) {  // catch up on whatever happened while the stream was down
      refreshNodes();
      incidents.load().catch(console.warn);
      loadMapIncidents().catch(console.warn);
    }
    streamOpened = true;
  };
  source.onerror = () => {
    link.textContent = "reconnecting…";
    link.className = "link down";
    // An answer other than 200 (a proxy's 502 while the aggregator restarts) ends an EventSource
    // for good (WHATWG HTML §9.2.3, "fail the connection"): it only retries a lost connection.
    if (source.readyState === EventSource.CLOSED) setTimeout(connect, STREAM_RETRY_MS);
  };
  source.addEventListener("alert", (e) => {
    const alert = JSON.parse(e.data);
    incidents.touched(alert.incident);
    log.live(alert);
  });
  source.addEventListener("node", () => refreshNodes(500));
  source.addEventListener("ack", (e) => incidents.onAck(JSON.parse(e.data)));
  source.addEventListener("ng112", (e) => {
    const forward = JSON.parse(e.data);
    if (forward.incident) incidents.touched(forward.incident);
    emit("ng112", forward);
  });
}

// What /healthz says is wrong, in the operator's words: the store not committing (a full
// disk, a read-only file) or the broker lost. Alerts then wait at the broker and on their
// nodes, unreceipted: the page says so, and why, until /healthz answers 200 again.
async function checkHealth() {
  const banner = document.getElementById("health");
  let problems = [];
  try {
    const response = await authorisedFetch("/healthz");
    if (response.status === 503) {
      const { detail } = await response.json();
      if (detail.store !== "ok") problems.push(`New alerts are not being stored: ${detail.store}.`);
      if (detail.broker !== "ok") problems.push("The aggregator has lost the broker: no new alerts arrive.");
      if (problems.length) problems.push("Nodes keep their alerts until the aggregator takes them; nothing is lost.");
    }
  } catch {
    problems = [];  // the aggregator itself unreachable: the live-stream badge says so
  }
  banner.textContent = problems.join(" ");
  banner.hidden = problems.length === 0;
}

function loadPanel(config) {
  if (config.ng112_panel) document.body.append(el("script", { src: config.ng112_panel }));
}

async function start() {
  incidents.setup();
  log.setup();
  on("select-node", ({ site, node_id: nodeId }) => openNode(site, nodeId).catch(console.warn));
  on("close-node", closeNode);
  on("filter-node", (node) => incidents.filterByNode(node.site, node.node_id).catch(console.warn));
  on("show-log", ({ incident }) => log.open(incident).catch(console.warn));
  on("incident-changed", (record) => map.setIncident(record));
  on("open-incident", ({ incident, site, node_id: nodeId }) => {  // one of a node's incidents, from the map
    openNode(site, nodeId).catch(console.warn);
    incidents.reveal(incident, site, nodeId).catch(console.warn);
  });
  connect();
  // the list first: it is what the operator came for
  const first = incidents.load().catch((err) => console.warn(err));
  const config = await api("/api/console").catch(() => ({ tiles: null }));
  map.setup(config);
  loadPanel(config);
  await first;
  refreshNodes();
  loadMapIncidents().catch(console.warn);
  setInterval(() => refreshNodes(), NODE_REFRESH_MS);
  checkHealth();
  setInterval(checkHealth, NODE_REFRESH_MS);
  setInterval(incidents.refreshAges, 15000);
  setInterval(() => { if (selected) trends.draw(selected.site, selected.node_id).catch(console.warn); },
    TREND_REFRESH_MS);
}

start();
