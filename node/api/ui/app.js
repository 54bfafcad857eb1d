// murmur's dashboard: polls /v1/ui/state once a second and redraws the tables. Every
// value from the cluster is written as text (textContent), never parsed as markup.
"use strict";

const POLL_MS = 1000;
let last = null;

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function matches(filter, values) {
  if (!filter) return true;
  return values.some((v) => v != null && String(v).toLowerCase().includes(filter));
}

function fill(id, rows) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren(...rows);
}

function since(ms) {
  if (!ms) return "";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 120) return `${s} s ago`;
  if (s < 7200) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

function bytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

function render(state) {
  const filter = document.getElementById("filter").value.trim().toLowerCase();
  document.getElementById("where").textContent = `${state.node} · cluster ${state.cluster} · ${state.version}`;

  const members = state.members
    .filter((m) => matches(filter, [m.name, m.zone, m.status, m.address]))
    .map((m) => {
      const tr = document.createElement("tr");
      tr.dataset.name = m.name;
      tr.dataset.status = m.status;
      cell(tr, m.name);
      cell(tr, m.status, m.status);
      cell(tr, m.zone || "–");
      cell(tr, m.address, "num");
      cell(tr, m.generation ? `${m.generation} (${new Date(m.generation).toISOString().replace(".000", "")})` : "", "num");
      cell(tr, m.version || "");
      cell(tr, m.instances, "num");
      return tr;
    });
  fill("members", members);
  const alive = state.members.filter((m) => m.status === "alive").length;
  document.getElementById("members-count").textContent = `${alive} alive of ${state.members.length}`;

  const instances = [];
  let total = 0;
  for (const s of state.services) {
    for (const i of s.instances) {
      total++;
      if (!matches(filter, [s.name, i.instance, i.node, i.zone, i.health, i.address, ...i.tags])) continue;
      const tr = document.createElement("tr");
      tr.dataset.service = s.name;
      tr.dataset.instance = i.instance;
      tr.dataset.health = i.health;
      cell(tr, s.name);
      cell(tr, i.instance);
      cell(tr, i.node);
      cell(tr, i.zone || "–");
      cell(tr, `${i.address}:${i.port}`, "num");
      cell(tr, i.health, i.health);
      cell(tr, since(i.health_since_unix_ms), "num");
      cell(tr, i.health_output, "output");
      instances.push(tr);
    }
  }
  fill("services", instances);
  document.getElementById("services-count").textContent = `${state.services.length} services, ${total} instances`;

  const endpoints = [];
  for (const u of state.upstreams) {
    for (const e of u.endpoints) {
      if (!matches(filter, [u.alias, u.service, e.instance, e.via, e.state])) continue;
      const tr = document.createElement("tr");
      tr.dataset.upstream = u.alias;
      tr.dataset.instance = e.instance;
      tr.dataset.connections = e.connections;
      tr.dataset.bytes = e.bytes_sent + e.bytes_received;
      cell(tr, `${u.alias} → ${u.service}`);
      cell(tr, e.instance);
      cell(tr, e.via, "num");
      cell(tr, e.state, e.state);
      cell(tr, e.active, "num");
      cell(tr, e.connections, "num");
      cell(tr, `${bytes(e.bytes_sent)} / ${bytes(e.bytes_received)}`, "num");
      cell(tr, `${e.connect_latency.p50_ms.toFixed(2)} / ${e.connect_latency.p99_ms.toFixed(2)} ms`, "num");
      const failures = Object.entries(e.failures).map(([k, v]) => `${k} ${v}`).join(", ");
      cell(tr, failures || "0", failures ? "critical" : "");
      cell(tr, e.ejections, "num");
      endpoints.push(tr);
    }
  }
  fill("upstreams", endpoints);
  document.getElementById("no-upstreams").hidden = state.upstreams.length > 0;
  document.getElementById("upstreams").hidden = state.upstreams.length === 0;
  document.getElementById("upstreams-count").textContent = state.upstreams.length ? `${state.upstreams.length}` : "";
}

async function poll() {
  const status = document.getElementById("status");
  try {
    const reply = await fetch("/v1/ui/state", { cache: "no-store" });
    if (!reply.ok) throw new Error(`HTTP ${reply.status}`);
    last = await reply.json();
    render(last);
    status.textContent = `updated ${new Date().toLocaleTimeString()}`;
    status.className = "";
  } catch (e) {
    status.textContent = `agent unreachable (${e.message}); retrying`;
    status.className = "stale";
  }
  setTimeout(poll, POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("filter").addEventListener("input", () => { if (last) render(last); });
  poll();
});
