// Sensor trends (uPlot, vendored): gas %LEL, CO ppm, CO2 and temperature as small charts of
// the 1-minute mean with its min-max band, and the reference alarm thresholds drawn across.
"use strict";

import { api, el } from "./util.js";

const FAMILIES = { gas: "Flammable gas", co: "Carbon monoxide", co2: "CO₂", temperature: "Temperature" };
const SEVERITY_COLOURS = { Minor: "#7fb8e6", Moderate: "#f0d050", Severe: "#f08c3c", Extreme: "#e5484d" };
const charts = new Map();  // "quantity/sensor" -> uPlot
const MIN_SPAN_S = 1800;

function thresholdsPlugin(thresholds) {
  // a line per threshold within the y range; those above it are named at the top edge
  return {
    hooks: {
      draw: [(u) => {
        const { ctx } = u;
        const [lo, hi] = [u.scales.y.min, u.scales.y.max];
        ctx.save();
        ctx.font = `${10 * devicePixelRatio}px system-ui, sans-serif`;
        ctx.textAlign = "left";  // uPlot leaves its axes' alignment behind
        ctx.textBaseline = "alphabetic";
        let above = [];
        for (const t of thresholds) {
          if (t.value > hi) { above.push(t); continue; }
          if (t.value < lo) continue;
          const y = u.valToPos(t.value, "y", true);
          ctx.strokeStyle = SEVERITY_COLOURS[t.severity] || "#fff";
          ctx.fillStyle = ctx.strokeStyle;
          ctx.setLineDash([5 * devicePixelRatio, 4 * devicePixelRatio]);
          ctx.lineWidth = devicePixelRatio;
          ctx.beginPath();
          ctx.moveTo(u.bbox.left, y);
          ctx.lineTo(u.bbox.left + u.bbox.width, y);
          ctx.stroke();
          ctx.fillText(t.label, u.bbox.left + 4 * devicePixelRatio, y - 3 * devicePixelRatio);
        }
        if (above.length) {  // named at the top right, clear of the lines' own labels at the left
          ctx.fillStyle = "#8a929c";
          ctx.textAlign = "right";
          ctx.fillText(`↑ ${above.map((t) => t.label).join(", ")}`, u.bbox.left + u.bbox.width - 4 * devicePixelRatio,
            u.bbox.top + 11 * devicePixelRatio);
        }
        ctx.restore();
      }],
    },
  };
}

function chart(series, width, span) {
  const key = `${series.quantity}/${series.sensor || ""}`;
  const values = series.max.filter((v) => v !== null);
  const lows = series.min.filter((v) => v !== null);
  const top = Math.max(...values, 0);
  const bottom = Math.min(...lows, 0);
  // the y range shows the readings and the lowest threshold, so a quiet sensor still shows its margin
  const first = series.thresholds.length ? Math.min(...series.thresholds.map((t) => t.value)) : top;
  const hi = Math.max(top, first) * 1.25 || 1;
  const unit = series.unit;
  const opts = {
    width, height: 130, legend: { show: false }, cursor: { points: { show: false } },
    // the whole window asked for, so that every chart reads on the same time axis
    scales: { x: { time: true, range: span }, y: { range: [Math.min(bottom, 0), hi] } },
    axes: [
      { stroke: "#8a929c", grid: { stroke: "#222a33" }, ticks: { stroke: "#2a3038" }, size: 28 },
      { stroke: "#8a929c", grid: { stroke: "#222a33" }, ticks: { stroke: "#2a3038" }, size: 46,
        values: (u, ticks) => ticks.map((v) => `${+v.toFixed(2)}`) },
    ],
    series: [
      {},
      { label: "min", stroke: "transparent", points: { show: false } },
      { label: "mean", stroke: "#7fb8e6", width: 1.5, points: { show: false } },
      { label: "max", stroke: "transparent", points: { show: false } },
    ],
    bands: [{ series: [3, 1], fill: "rgba(127,184,230,0.18)" }],
    plugins: [thresholdsPlugin(series.thresholds)],
  };
  const data = [series.t, series.min, series.mean, series.max];
  const holder = el("div", { class: "chart", "data-quantity": series.quantity, "data-points": series.t.length });
  const last = series.mean.at(-1);
  const title = el("div", { class: "chart-title" },
    el("b", {}, FAMILIES[series.family] || series.quantity),
    ` ${series.quantity}${series.sensor ? ` (${series.sensor})` : ""} · `,
    el("span", { class: "chart-last" }, last === null || last === undefined ? "—" : `${+last.toFixed(2)} ${unit}`));
  const wrap = el("div", { class: "trend" }, title, holder);
  const plot = new uPlot(opts, data, holder);
  charts.set(key, plot);
  return wrap;
}

let drawing = 0;  // the latest draw: an earlier one whose answer comes later draws nothing

export async function draw(site, nodeId) {
  const box = document.getElementById("trends");
  if (!box) return;
  if (typeof uPlot === "undefined") { box.textContent = "the chart library did not load"; return; }
  const mine = ++drawing;
  const body = await api(`/api/nodes/${encodeURIComponent(site)}/${encodeURIComponent(nodeId)}/telemetry`);
  // two draws in flight (a node clicked during the minute's refresh, or two nodes in a row): the
  // last asked is the one shown, and the charts it replaces are destroyed, not left listening
  if (mine !== drawing) return;
  for (const plot of charts.values()) plot.destroy();
  charts.clear();
  const drawn = body.series.filter((s) => s.family && s.t.length);
  const others = body.series.filter((s) => !s.family && s.t.length);
  const width = Math.max(240, box.clientWidth - 8);
  box.replaceChildren();
  if (!drawn.length) box.append(el("div", { class: "dim" }, "no gas, CO, CO₂ or temperature readings in the last 6 h"));
  // from the first reading (at least the last half hour) to now: a node that has just started
  // does not draw as a dot at the right edge of six empty hours
  const to = Date.parse(body.to) / 1000;
  const first = Math.min(...drawn.map((s) => s.t[0]), to - MIN_SPAN_S);
  const span = [Math.max(Date.parse(body.from) / 1000, first), to];
  for (const series of drawn) box.append(chart(series, width, span));
  if (others.length) {
    box.append(el("div", { class: "dim" }, "also reported: ",
      others.map((s) => `${s.quantity} ${+(s.mean.at(-1) ?? 0).toFixed(2)} ${s.unit}`).join(" · ")));
  }
  window.s4edge.charts = charts;
}
