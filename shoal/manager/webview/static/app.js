// Shoal's web view: state from server-sent events, drawn at most once per frame.
// Node columns are virtualized (only the ones in view exist in the DOM), so a
// cluster of 1,000 nodes and 10,000 tasks stays responsive.
"use strict";

const COL_WIDTH = 150;
const MAX_CARDS = 40;
const LIVE_DESIRED = new Set(["running", "ready", "accepted", "assigned", "pending", "new"]);

const S = {
  nodes: new Map(), services: new Map(), tasks: new Map(),
  byNode: new Map(),  // node id -> Set of task ids
  usage: {}, revision: 0, runningOnly: false,
};
let dirty = false;
let nodeOrder = null;  // sorted node list, rebuilt only when nodes change
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function schedule() {
  if (!dirty) { dirty = true; requestAnimationFrame(render); }
}

function indexTask(t) {
  const old = S.tasks.get(t.id);
  if (old && old.node !== t.node) S.byNode.get(old.node)?.delete(t.id);
  S.tasks.set(t.id, t);
  let set = S.byNode.get(t.node);
  if (!set) { set = new Set(); S.byNode.set(t.node, set); }
  set.add(t.id);
}

function dropTask(id) {
  const old = S.tasks.get(id);
  if (old) { S.byNode.get(old.node)?.delete(id); S.tasks.delete(id); }
}

function load(snap) {
  S.nodes.clear(); S.services.clear(); S.tasks.clear(); S.byNode.clear();
  for (const n of snap.nodes) S.nodes.set(n.id, n);
  for (const s of snap.services) S.services.set(s.id, s);
  for (const t of snap.tasks) indexTask(t);
  S.usage = snap.usage || {};
  S.revision = snap.revision;
  nodeOrder = null;
}

function apply(batch) {
  for (const n of batch.upserts.nodes) S.nodes.set(n.id, n);
  for (const s of batch.upserts.services) S.services.set(s.id, s);
  for (const t of batch.upserts.tasks) indexTask(t);
  for (const id of batch.removed.nodes) S.nodes.delete(id);
  for (const id of batch.removed.services) S.services.delete(id);
  for (const id of batch.removed.tasks) dropTask(id);
  if (batch.upserts.nodes.length || batch.removed.nodes.length) nodeOrder = null;
  S.revision = batch.revision;
}

function visible(t) {
  if (S.runningOnly) return t.state === "running" && t.desired === "running";
  // Live tasks, and ones still on their way down; history stays out of the way.
  return LIVE_DESIRED.has(t.desired) || ["running", "starting", "preparing"].includes(t.state);
}

function bar(cls, frac, title) {
  const pct = Math.max(0, Math.min(100, Math.round(frac * 100)));
  return `<span class="bar ${cls}" title="${esc(title)}"><i style="width:${pct}%"></i></span>`;
}

function gib(b) { return (b / 1073741824).toFixed(1) + " GiB"; }

function sortedNodes() {
  if (nodeOrder === null) {
    nodeOrder = [...S.nodes.values()];
    nodeOrder.sort((a, b) => (a.role === b.role ? 0 : a.role === "manager" ? -1 : 1)
      || (a.hostname < b.hostname ? -1 : a.hostname > b.hostname ? 1 : 0));
  }
  const list = nodeOrder.slice();
  const pending = S.byNode.get("");
  if (pending && [...pending].some((id) => visible(S.tasks.get(id)))) {
    list.push({ id: "", hostname: "(unassigned)", role: "", status: "", availability: "" });
  }
  return list;
}

function columnHtml(n, x) {
  const u = S.usage[n.id];
  const bars = u
    ? `<div>${bar("cpu", u[0], `CPU ${(u[0] * 100).toFixed(0)}%`)} cpu</div>` +
      `<div>${bar("mem", u[2] ? u[1] / u[2] : 0, `memory ${gib(u[1])} of ${gib(u[2])}`)} mem</div>`
    : `<div class="meta">no usage reported</div>`;
  const cards = [];
  let shown = 0, hidden = 0;
  for (const id of S.byNode.get(n.id) || []) {
    const t = S.tasks.get(id);
    if (!visible(t)) continue;
    if (shown >= MAX_CARDS) { hidden++; continue; }
    shown++;
    const cls = t.health === "unhealthy" ? "card unhealthy" : "card";
    cards.push(`<div class="${cls}" data-id="${t.id}" data-state="${t.state}" ` +
      `title="${esc(t.name)}: ${t.state}${t.err ? " - " + esc(t.err) : ""}">${esc(t.name)}</div>`);
  }
  if (hidden) cards.push(`<div class="more">+${hidden} more</div>`);
  const leader = n.leader ? " (leader)" : "";
  return `<div class="col ${esc(n.status)}" data-node="${esc(n.id)}" style="left:${x}px">` +
    `<h3 title="${esc(n.id)}">${esc(n.hostname)}</h3>` +
    `<div class="meta">${esc(n.role)}${leader} ${esc(n.status)} ${esc(n.availability)}</div>` +
    (n.id && n.role !== "manager" ? bars : "") + cards.join("") + `</div>`;
}

function renderNodes() {
  const box = $("nodes"), inner = $("nodes-inner");
  const nodes = sortedNodes();
  inner.style.width = nodes.length * COL_WIDTH + "px";
  const first = Math.max(0, Math.floor(box.scrollLeft / COL_WIDTH) - 1);
  const last = Math.min(nodes.length, Math.ceil((box.scrollLeft + box.clientWidth) / COL_WIDTH) + 1);
  const html = [];
  for (let i = first; i < last; i++) html.push(columnHtml(nodes[i], i * COL_WIDTH));
  inner.innerHTML = html.join("");
  let tallest = 120;
  for (const col of inner.children) tallest = Math.max(tallest, col.offsetHeight);
  inner.style.height = tallest + "px";
  $("node-range").textContent = nodes.length
    ? `${first + 1}-${last} of ${nodes.length} (scroll sideways for more)` : "";
}

function renderServices() {
  const rows = [...S.services.values()].sort((a, b) => a.name.localeCompare(b.name)).map((s) => {
    const u = s.update;
    const progress = u.state
      ? `${esc(u.state)} ${bar("upd", s.desired ? u.updated / s.desired : 1, u.message)} ` +
        `${u.updated}/${s.desired}` +
        (u.parallelism && u.state === "updating"
          ? ` batch ${Math.min(Math.floor(u.updated / u.parallelism) + 1,
                               Math.ceil(s.desired / u.parallelism))} of ` +
            `${Math.ceil(s.desired / u.parallelism)}` : "")
      : "";
    return `<tr data-service="${esc(s.name)}"><td>${esc(s.name)}</td><td>${esc(s.image)}</td>` +
      `<td>${esc(s.mode)}</td><td class="replicas">${s.running} / ${s.desired}</td>` +
      `<td>${s.healthy}</td><td>${progress}</td></tr>`;
  });
  $("services").tBodies[0].innerHTML = rows.join("");
}

function renderSummary() {
  const counts = {};
  for (const t of S.tasks.values()) if (visible(t)) counts[t.state] = (counts[t.state] || 0) + 1;
  const parts = Object.entries(counts).sort().map(([k, v]) => `${v} ${k}`);
  $("summary").textContent =
    `${S.nodes.size} nodes, ${S.services.size} services, tasks: ${parts.join(", ") || "none"}` +
    ` (revision ${S.revision})`;
}

function render() {
  dirty = false;
  renderServices();
  renderNodes();
  renderSummary();
}

async function showTask(id) {
  const panel = $("detail");
  panel.hidden = false;
  $("detail-title").textContent = id;
  $("detail-fields").innerHTML = "";
  $("detail-logs").textContent = "loading...";
  const r = await fetch(`api/tasks/${encodeURIComponent(id)}`);
  if (!r.ok) { $("detail-fields").textContent = await r.text(); return; }
  const t = await r.json();
  $("detail-title").textContent = t.name;
  const node = S.nodes.get(t.node);
  const fields = [["task", t.id], ["state", `${t.state} (desired ${t.desired})`],
    ["node", node ? node.hostname : t.node || "-"], ["image", t.image],
    ["message", t.message], ["last error", t.error || "-"], ["exit code", t.exit_code],
    ["addresses", (t.addresses || []).join(", ") || "-"]];
  $("detail-fields").innerHTML =
    fields.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join("");
  const logs = await fetch(`api/tasks/${encodeURIComponent(id)}/logs`);
  $("detail-logs").textContent = logs.ok ? (await logs.text()) || "(no output)" : await logs.text();
}

function connect() {
  const es = new EventSource("api/events");
  const conn = $("conn");
  es.onopen = () => { conn.textContent = "live"; conn.className = "conn up"; };
  es.onerror = () => { conn.textContent = "reconnecting"; conn.className = "conn down"; };
  es.addEventListener("snapshot", (e) => { load(JSON.parse(e.data)); schedule(); });
  es.addEventListener("batch", (e) => { apply(JSON.parse(e.data)); schedule(); });
  es.addEventListener("usage", (e) => { S.usage = JSON.parse(e.data); schedule(); });
}

$("nodes").addEventListener("scroll", schedule, { passive: true });
window.addEventListener("resize", schedule);
$("running-only").addEventListener("change", (e) => { S.runningOnly = e.target.checked; schedule(); });
$("nodes-inner").addEventListener("click", (e) => {
  const card = e.target.closest(".card");
  if (card) showTask(card.dataset.id);
});
$("close").addEventListener("click", () => { $("detail").hidden = true; });
connect();
