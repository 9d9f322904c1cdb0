// The marketplace: providers, filterable, updated live from /api/events (reconnecting).
const $ = (id) => document.getElementById(id);
const providers = new Map();
let retryS = 1;

function ago(at) {
  if (!at) return "never";
  const seconds = Math.max(0, Math.round(Date.now() / 1000 - at));
  return seconds < 120 ? `${seconds} s ago` : `${Math.round(seconds / 60)} min ago`;
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
}

// Whether it runs renters' own code, and how: what a renter with secrets must know.
function userCode(p) {
  if (p.type === "browser") return (p.capabilities || []).includes("wgsl") ? "WebGPU" : "no";
  if (!(p.capabilities || []).includes("command")) return "no";
  return p.sandbox === "bubblewrap" ? "sandboxed" : "unsandboxed";
}

// What the coordinator has checked of it (docs/trust.md).
function trustText(p) {
  const t = p.trust;
  if (!t) return "-";
  if (t.quarantined) return "quarantined";
  return `${t.claim}, ${t.reputation.toFixed(2)}`;
}

function render() {
  const status = $("filter-status").value;
  const minVramMb = Number($("filter-vram").value || 0) * 1024;
  const gpu = $("filter-gpu").value.trim().toLowerCase();
  const body = $("providers").tBodies[0];
  body.replaceChildren();
  for (const p of providers.values()) {
    const best = Math.max(0, ...p.gpus.filter((g) => !g.software).map((g) => g.vramMb));
    if (status && p.status !== status) continue;
    if (best < minVramMb) continue;
    if (gpu && !p.gpus.some((g) => g.model.toLowerCase().includes(gpu))) continue;
    const row = body.insertRow();
    row.dataset.workerId = p.workerId;
    const name = row.insertCell().appendChild(document.createElement("a"));
    name.href = `/providers/${encodeURIComponent(p.workerId)}`;
    name.textContent = p.name ? `${p.name} (${p.workerId})` : p.workerId;
    cell(row, p.outdated ? `${p.status}, outdated` : p.status, `s-${p.status}`);
    cell(row, p.gpus.map((g) => (g.software ? `${g.model} (software, not a GPU)` : g.model)).join(", ") || "none");
    cell(row, p.type === "browser" ? "unknown" : `${Math.round(best / 1024)} GB`);
    cell(row, userCode(p), `code-${userCode(p)}`);
    cell(row, p.pricePerHour == null ? "-" : String(p.pricePerHour));
    cell(row, p.location || "-");
    cell(row, trustText(p), p.trust && p.trust.quarantined ? "code-unsandboxed" : "");
    cell(row, ago(p.lastSeenAt));
  }
}

async function load() {
  try {
    const all = new Map();
    let cursor = null;
    do { // a page at a time, as the server sends them
      const query = `limit=1000${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`;
      const answer = await fetch(`/api/providers?${query}`);
      if (!answer.ok) throw new Error(`the server answered ${answer.status}`);
      const page = await answer.json();
      for (const p of page.providers) all.set(p.workerId, p);
      cursor = page.nextCursor;
    } while (cursor);
    providers.clear();
    for (const [id, p] of all) providers.set(id, p);
    $("error").hidden = true;
    render();
  } catch (error) {
    $("error").hidden = false;
    $("error").textContent = `Cannot load the providers (${error.message}); retrying.`;
  }
}

function connect() {
  const socket = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/events`);
  socket.onopen = () => { retryS = 1; $("live").textContent = "● live"; load(); };
  socket.onmessage = (message) => {
    const event = JSON.parse(message.data);
    if (!event.type.startsWith("PROVIDER_")) return;
    if (event.data.deleted) providers.delete(event.data.workerId);
    else providers.set(event.data.workerId, event.data);
    render();
  };
  socket.onclose = () => {
    $("live").textContent = `reconnecting in ${retryS} s…`;
    setTimeout(connect, retryS * 1000);
    retryS = Math.min(retryS * 2, 15);
  };
}

for (const id of ["filter-status", "filter-vram", "filter-gpu"]) $(id).addEventListener("input", render);
$("filters").addEventListener("submit", (event) => event.preventDefault());
setInterval(render, 5000); // keep "last seen" current
connect();
