// The master's dashboard (served at `/` by master/src/http/dashboard.rs). It polls
// `/master/state` and `/metrics/snapshot` and renders the cluster: agents with their block
// pools and disks, frameworks, tasks, offers. `render` is a pure function of those two documents
// so that it can be tested outside a browser (master/tests/dashboard.rs runs it under node).

"use strict";

const POLL_MS = 2000;

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
  })[c]);
}

function fixed(value, digits) {
  return Number(value || 0).toFixed(digits);
}

function mb(value) {
  const v = Number(value || 0);
  return v >= 1024 ? `${fixed(v / 1024, 1)} GB` : `${fixed(v, 0)} MB`;
}

function table(headers, rows, empty) {
  if (rows.length === 0) return `<p class="empty">${esc(empty)}</p>`;
  const head = headers.map((h) => `<th>${esc(h)}</th>`).join("");
  const body = rows.map((r) => `<tr>${r.map((c) => `<td>${c}</td>`).join("")}</tr>`).join("");
  return `<table><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>`;
}

// The mesoblk disks among `resources` (a `*_resources_full` list): RAW pools and created disks.
function blockDisks(resources) {
  return (resources || [])
    .filter((r) => r.name === "disk" && r.disk && r.disk.source && r.disk.source.vendor === "mesoblk")
    .map((r) => ({
      type: r.disk.source.type,
      id: r.disk.source.id || "",
      profile: r.disk.source.profile || "",
      mb: r.scalar ? r.scalar.value : 0,
    }));
}

function agentDisks(agent) {
  const lists = [agent.unreserved_resources_full || []];
  for (const role of Object.keys(agent.reserved_resources_full || {})) {
    lists.push(agent.reserved_resources_full[role]);
  }
  return lists.flatMap(blockDisks);
}

function countTasks(state) {
  const counts = {};
  for (const f of state.frameworks || []) {
    for (const t of f.tasks || []) counts[t.state] = (counts[t.state] || 0) + 1;
  }
  return counts;
}

function card(label, value) {
  return `<div class="card"><div class="value">${esc(value)}</div><div class="label">${esc(label)}</div></div>`;
}

function summary(state, metrics) {
  const m = (name) => (metrics && metrics[name]) || 0;
  const counts = countTasks(state);
  return `<div class="cards">${[
    card("agents", (state.slaves || []).length),
    card("frameworks", (state.frameworks || []).length),
    card("tasks running", counts.TASK_RUNNING || 0),
    card("tasks finished", m("master/tasks_finished")),
    card("tasks failed", m("master/tasks_failed") + m("master/tasks_error")),
    card("CPUs used", `${fixed(m("master/cpus_used"), 1)} / ${fixed(m("master/cpus_total"), 1)}`),
    card("memory used", `${mb(m("master/mem_used"))} / ${mb(m("master/mem_total"))}`),
    card("disk used", `${mb(m("master/disk_used"))} / ${mb(m("master/disk_total"))}`),
  ].join("")}</div>`;
}

function agentsSection(state) {
  const rows = (state.slaves || []).map((a) => {
    const pools = agentDisks(a)
      .filter((d) => d.type === "RAW")
      .map((d) => `${esc(d.profile)}: ${mb(d.mb)} free`)
      .join("<br>");
    const used = a.used_resources || {};
    const total = a.resources || {};
    return [
      esc(a.hostname), `<code>${esc(a.id)}</code>`, a.active ? "yes" : "no",
      `${fixed(used.cpus, 1)} / ${fixed(total.cpus, 1)}`, `${mb(used.mem)} / ${mb(total.mem)}`,
      pools || "none", a.endpoint ? `<a href="${esc(a.endpoint)}/state">${esc(a.endpoint)}</a>` : "",
    ];
  });
  return table(["host", "id", "active", "CPUs", "memory", "block pools", "agent API"], rows, "No agents.");
}

function disksSection(state) {
  const rows = [];
  for (const a of state.slaves || []) {
    const inUse = new Set(blockDisks(a.used_resources_full).map((d) => d.id));
    for (const d of agentDisks(a).filter((x) => x.type !== "RAW")) {
      rows.push([`<code>${esc(d.id)}</code>`, esc(d.type), esc(d.profile), mb(d.mb), esc(a.hostname), inUse.has(d.id) ? "yes" : "no"]);
    }
  }
  return table(["disk", "kind", "profile", "size", "agent", "in use"], rows, "No disks made by CREATE_DISK.");
}

function devicesSection(state) {
  const rows = [];
  for (const a of state.slaves || []) {
    for (const d of a.mesoblk_devices || []) {
      const mib = (bytes) => fixed(Number(bytes || 0) / 1048576, 1);
      rows.push([
        esc(d.device), `<code>${esc(d.volume_id)}</code>`, esc(a.hostname), esc(d.profile),
        esc(d.task_id ? d.task_id.value : ""),
        `${fixed(d.read_ops_per_second, 0)} / ${fixed(d.write_ops_per_second, 0)}`,
        `${mib(d.read_bytes_per_second)} / ${mib(d.write_bytes_per_second)}`,
        `${fixed(d.latency_p50_us, 0)} / ${fixed(d.latency_p99_us, 0)} us`,
        d.cache_dirty_bytes ? `${mib(d.cache_dirty_bytes)} MiB` : "",
        esc(d.errors || 0),
      ]);
    }
  }
  return table(["device", "volume", "agent", "profile", "task", "IOPS r/w", "MiB/s r/w",
    "latency p50/p99", "dirty", "errors"], rows, "No devices serving tasks.");
}

function frameworksSection(state) {
  const rows = (state.frameworks || []).map((f) => [
    esc(f.name), `<code>${esc(f.id)}</code>`, esc(f.user), esc((f.roles || [f.role]).join(", ")),
    f.active ? "yes" : "no", (f.tasks || []).length,
    `${fixed((f.used_resources || {}).cpus, 1)} CPUs, ${mb((f.used_resources || {}).mem)}`,
  ]);
  return table(["name", "id", "user", "roles", "active", "tasks", "using"], rows, "No frameworks.");
}

function tasksSection(state) {
  const hosts = {};
  for (const a of state.slaves || []) hosts[a.id] = a.hostname;
  const names = {};
  const rows = [];
  for (const f of state.frameworks || []) {
    names[f.id] = f.name;
    for (const t of f.tasks || []) {
      const r = t.resources || {};
      rows.push([
        `<code>${esc(t.id)}</code>`, esc(f.name), esc(hosts[t.slave_id] || t.slave_id),
        `<span class="state ${esc(t.state)}">${esc(t.state)}</span>`,
        fixed(r.cpus, 2), mb(r.mem), r.disk ? mb(r.disk) : "",
      ]);
    }
  }
  return table(["task", "framework", "agent", "state", "CPUs", "memory", "disk"], rows, "No active tasks.");
}

function offersSection(state) {
  const rows = [];
  for (const f of state.frameworks || []) {
    for (const o of f.offers || []) {
      const r = o.resources || {};
      rows.push([`<code>${esc(o.id)}</code>`, esc(f.name), esc(o.slave_id), fixed(r.cpus, 1), mb(r.mem), mb(r.disk)]);
    }
  }
  return table(["offer", "framework", "agent", "CPUs", "memory", "disk"], rows, "No outstanding offers.");
}

// The dashboard's HTML for a `/master/state` document and a `/metrics/snapshot` document.
function render(state, metrics) {
  const sections = [
    ["Agents", agentsSection(state)],
    ["Block disks", disksSection(state)],
    ["Devices", devicesSection(state)],
    ["Frameworks", frameworksSection(state)],
    ["Tasks", tasksSection(state)],
    ["Offers", offersSection(state)],
  ];
  const header = `<p class="meta">master ${esc(state.hostname)} &middot; version ${esc(state.version)}` +
    ` &middot; up since ${esc(new Date((state.start_time || 0) * 1000).toISOString())}</p>`;
  return header + summary(state, metrics) +
    sections.map(([title, body]) => `<h2>${esc(title)}</h2>${body}`).join("");
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const [state, metrics] = await Promise.all(
      ["/master/state", "/metrics/snapshot"].map((url) => fetch(url).then((r) => {
        if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
        return r.json();
      })),
    );
    document.getElementById("cluster").innerHTML = render(state, metrics);
    status.textContent = `updated ${new Date().toLocaleTimeString()}`;
    status.className = "";
  } catch (e) {
    status.textContent = `cannot reach the master: ${e.message}`;
    status.className = "error";
  }
}

if (typeof document !== "undefined") {
  refresh();
  setInterval(refresh, POLL_MS);
}
if (typeof module !== "undefined") module.exports = { render };
