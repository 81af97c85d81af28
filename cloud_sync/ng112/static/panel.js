// NG112 panel for the s4edge dashboard: emergency calls, their outcome, and confirm/dismiss.
// Served by the ng112 router at /ng112/panel.js; adds its own section, needs nothing else.
"use strict";

(() => {
  const STATES_OPEN = new Set(["awaiting_confirm", "pending", "sending", "retrying"]);

  function cell(text) {
    const td = document.createElement("td");
    td.textContent = text ?? "";
    return td;
  }

  function section() {
    const found = document.getElementById("ng112");
    if (found) return found.querySelector("tbody");
    const wrap = document.createElement("section");
    wrap.id = "ng112";
    wrap.innerHTML =
      "<h2>Emergency calls (NG112)</h2><table><thead><tr><th>created</th><th>incident</th><th>kind</th>" +
      "<th>severity</th><th>CAP status</th><th>message</th><th>state</th><th>answer</th><th>AlertMsg-Error</th>" +
      "<th>latency</th><th>attempts</th><th></th></tr></thead><tbody></tbody></table>";
    (document.querySelector("main") || document.body).append(wrap);
    return wrap.querySelector("tbody");
  }

  async function decide(id, verb) {
    const send = window.s4edgeFetch || fetch;  // the dashboard's, which adds the operator token
    const response = await send(`/ng112/forwards/${encodeURIComponent(id)}/${verb}`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ by: "operator" }),
    });
    if (!response.ok) console.warn(`ng112 ${verb}: HTTP ${response.status}`);
    load();
  }

  function row(f) {
    const tr = document.createElement("tr");
    tr.dataset.forward = f.id;
    tr.className = STATES_OPEN.has(f.state) ? "ng112-open" : `ng112-${f.state}`;
    const answer = f.code ? `${f.code}` : (f.reason || "");
    tr.append(
      cell(f.created_at ? new Date(f.created_at).toLocaleString(undefined, { hour12: false }) : ""),
      cell(f.incident), cell(f.kind), cell(f.severity), cell(f.status), cell(f.msg_type || ""),
      cell(f.state), cell(answer), cell(f.alertmsg_error || ""),
      cell(f.latency_ms != null ? `${f.latency_ms.toFixed(1)} ms` : ""), cell(String(f.attempts)),
    );
    const actions = document.createElement("td");
    if (f.state === "awaiting_confirm") {
      for (const verb of ["confirm", "dismiss"]) {
        const button = document.createElement("button");
        button.type = "button";
        button.textContent = verb;
        button.addEventListener("click", () => { button.disabled = true; decide(f.id, verb); });
        actions.append(button);
      }
    }
    tr.append(actions);
    return tr;
  }

  let pending = null;
  async function load() {
    pending = null;
    const response = await fetch("/ng112/forwards?limit=100");
    if (!response.ok) return;  // NG112 forwarding is not attached to this aggregator
    const body = await response.json();
    section().replaceChildren(...body.forwards.map(row));
  }

  function soon() {
    if (!pending) pending = setTimeout(load, 300);
  }

  load();
  const stream = new EventSource("/api/stream");
  stream.addEventListener("ng112", soon);
})();
