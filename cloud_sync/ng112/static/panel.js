// NG112 panel for the s4edge console: calls in flight, delivered, failed and waiting for an
// operator, at the top of the page; confirm or cancel a call where the site's policy asks.
// Served by the ng112 router at /ng112/panel.js; fills the page's #ng112 section (or adds one).
"use strict";

(() => {
  const LABELS = { awaiting_confirm: "awaiting confirmation", pending: "queued", sending: "calling",
    retrying: "retrying", delivered: "delivered", failed: "failed", dismissed: "cancelled",
    unconfirmed: "unconfirmed", skipped: "not sent", merged: "merged into the next" };

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("data-")) node.setAttribute(key, value);
      else node[key] = value;
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  function section() {
    let wrap = document.getElementById("ng112");
    if (!wrap) {
      wrap = el("section", { id: "ng112", class: "ng112" });
      (document.querySelector("main") || document.body).before(wrap);
    }
    wrap.hidden = false;
    return wrap;
  }

  const time = (iso) => (iso ? new Date(iso).toLocaleTimeString(undefined, { hour12: false }) : "");

  function left(iso) {
    if (!iso) return "";
    const s = Math.round((new Date(iso).getTime() - Date.now()) / 1000);
    return s > 0 ? `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")} left` : "due";
  }

  async function decide(id, verb, button) {
    button.disabled = true;
    const send = window.s4edgeFetch || fetch;  // the console's, which asks for the operator token
    const response = await send(`/ng112/forwards/${encodeURIComponent(id)}/${verb}`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ by: "operator" }),
    });
    if (!response.ok) {
      button.disabled = false;
      console.warn(`ng112 ${verb}: HTTP ${response.status}`);
    }
    soon();
  }

  function row(f) {
    const actions = el("td", {});
    if (f.state === "awaiting_confirm") {
      const confirm = el("button", { type: "button", class: "confirm" }, "confirm call");
      const cancel = el("button", { type: "button", class: "cancel danger" }, "cancel call");
      confirm.addEventListener("click", () => decide(f.id, "confirm", confirm));
      cancel.addEventListener("click", () => decide(f.id, "dismiss", cancel));
      actions.append(confirm, " ", cancel);
    }
    const answer = f.code ? `${f.code}${f.reason ? ` ${f.reason}` : ""}` : (f.reason || "");
    return el("tr", { "data-forward": f.id, class: f.state === "awaiting_confirm" ? "awaiting" : "" },
      el("td", {}, time(f.created_at)),
      el("td", {}, el("span", { class: `sev sev-${f.severity}` }, f.severity)),
      // a node's text in its own bidi isolate, as the console's (util.js nodeText)
      el("td", {}, el("bdi", {}, f.headline || f.kind), f.status !== "Actual" ? el("span", { class: "drill" }, f.status) : null),
      el("td", {}, `${f.site}/${f.node_id}`),
      el("td", {}, f.msg_type || ""),
      el("td", {}, el("span", { class: `call call-${f.state}` }, LABELS[f.state] || f.state)),
      el("td", { class: "dim" }, f.state === "awaiting_confirm" ? left(f.confirm_by) : answer),
      el("td", { class: "dim" }, f.alertmsg_error || ""),
      el("td", { class: "num" }, String(f.attempts)),
      actions);
  }

  function table(rows) {
    return el("table", {},
      el("thead", {}, el("tr", {}, ...["created", "severity", "what", "node", "CAP", "call", "answer / time",
        "AlertMsg-Error", "tries", ""].map((h) => el("th", {}, h)))),
      el("tbody", {}, ...rows.map(row)));
  }

  function counter(n, label, kind) {
    return el("span", { class: `counter${n && kind ? ` ${kind}` : ""}`, "data-count": label },
      el("b", {}, String(n)), ` ${label}`);
  }

  let pending = null;
  let allOpen = false;
  let failedOpen = false;  // kept across the panel's rebuilds (every 15 s), as allOpen is
  async function load() {
    pending = null;
    const response = await fetch("/ng112/summary");
    if (!response.ok) return;  // NG112 forwarding is not attached to this aggregator
    const s = await response.json();
    const live = [...s.live].sort((a, b) => (a.state === "awaiting_confirm" ? 0 : 1) - (b.state === "awaiting_confirm" ? 0 : 1));
    const all = el("details", { open: allOpen }, el("summary", {}, "every call"), el("div", { class: "dim" }, "loading…"));
    all.addEventListener("toggle", async () => {
      allOpen = all.open;
      if (!all.open) return;
      const body = await (await fetch("/ng112/forwards?limit=100")).json();
      all.lastChild.replaceWith(table(body.forwards));
    });
    const failed = s.recent_failed.length
      ? el("details", { open: failedOpen }, el("summary", {}, `latest failed (${s.recent_failed.length})`), table(s.recent_failed))
      : null;
    if (failed) failed.addEventListener("toggle", () => { failedOpen = failed.open; });
    section().replaceChildren(...[
      el("div", { class: "counters" },
        el("b", {}, "Emergency calls (NG112)"),
        counter(s.awaiting_confirm, "awaiting confirmation", "hot"),
        counter(s.in_flight, "in flight", ""),
        counter(s.delivered, "delivered", ""),
        counter(s.failed, "failed", "bad")),
      live.length ? table(live) : el("div", { class: "dim" }, "no call in flight or waiting"),
      failed,
      all,
    ].filter(Boolean));
    if (allOpen) all.dispatchEvent(new Event("toggle"));
  }

  function soon() {
    if (!pending) pending = setTimeout(load, 300);
  }

  load();
  setInterval(soon, 15000);  // the countdowns, and calls whose state changed in another replica
  if (window.s4edge && window.s4edge.on) window.s4edge.on("ng112", soon);
  else new EventSource("/api/stream").addEventListener("ng112", soon);
})();
