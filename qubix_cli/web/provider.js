// A provider's own page (/providers/{workerId}) or all workers of one Qubic address
// (/address/{qubicAddress}): status, why it gets no jobs, hardware, trust, its last jobs
// and its earnings; live over the public events, refreshed every 30 s besides.
const $ = (id) => document.getElementById(id);
const [, kind, rawKey] = location.pathname.split("/");
const key = decodeURIComponent(rawKey || "");
const TOKEN_KEY = "qubix.token"; // the Share page's own browser worker keeps its token here
let retryS = 1;
let provider = null;

function ago(at) {
  if (!at) return "never";
  const seconds = Math.max(0, Math.round(Date.now() / 1000 - at));
  if (seconds < 120) return `${seconds} s ago`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min ago`;
  return `${Math.round(seconds / 3600)} h ago`;
}

function when(at) {
  return new Date(at * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

function amount(value) {
  return Number(value).toLocaleString("en", { maximumFractionDigits: 6 });
}

function facts(list, pairs) {
  list.replaceChildren();
  for (const [term, value] of pairs) {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = value;
    list.append(dt, dd);
  }
}

function row(body, values, link) {
  const tr = body.insertRow();
  values.forEach((value, i) => {
    const td = tr.insertCell();
    if (i === 0 && link) {
      const a = document.createElement("a");
      a.href = link;
      a.textContent = value;
      td.append(a);
    } else td.textContent = value;
    if (i === 1) td.className = `s-${value}`;
  });
}

async function get(path, token) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const answer = await fetch(path, { headers });
  if (answer.status === 404) throw new Error(kind === "providers" ? `There is no worker ${key} here: it may have been removed.` : "Not found.");
  if (!answer.ok) throw new Error(`the server answered ${answer.status}`);
  return answer.json();
}

function gpuText(p) {
  const one = (g) => (g.software ? `${g.model} (software, not a GPU)` : p.type === "browser" ? g.model : `${g.model} (${Math.round(g.vramMb / 1024)} GB)`);
  return p.gpus.map(one).join(", ") || "no GPU";
}

function trustText(t) {
  if (t.quarantined) return "quarantined";
  return `${t.claim}, reputation ${t.reputation.toFixed(2)}`;
}

// What anyone can tell from the provider's public record, in plain words.
function publicReasons(p) {
  const t = p.trust;
  const reasons = [];
  if (p.status === "paused") reasons.push(`It is paused ${p.pausedReason || "by the provider"} ${p.pausedUntil ? `until ${when(p.pausedUntil)}` : "until it is resumed"}: it takes no jobs meanwhile.`);
  if (p.status === "offline") reasons.push(`It is offline since ${p.lastSeenAt ? when(p.lastSeenAt) : "the server started"}: start the worker, and check that it reaches this server.`);
  if (t.quarantined) reasons.push(`It is quarantined: it answered a check wrongly. It gets only checks until it passes them; a worker that computes correctly does.`);
  if (p.status === "busy") reasons.push(`It is running ${p.currentJobIds.length} job(s).`);
  if (p.status === "online" && !t.quarantined) reasons.push("It is online and asks for work: it is handed the next job it fits.");
  return reasons;
}

async function why(p) {
  const token = localStorage.getItem(TOKEN_KEY);
  if (token && localStorage.getItem("qubix.workerId") === p.workerId) {
    try { return (await get(`/api/providers/${encodeURIComponent(p.workerId)}/diagnosis`, token)).reasons; } catch { /* the public words below */ }
  }
  return publicReasons(p);
}

async function showEarnings(query) {
  const found = await get(`/api/earnings/${encodeURIComponent(query.address)}${query.workerId ? `?workerId=${encodeURIComponent(query.workerId)}` : ""}`);
  facts($("earnings"), [
    ["Today", amount(found.today)],
    ["7 days", amount(found.last7Days)],
    ["30 days", amount(found.last30Days)],
    ["All time", amount(found.allTime)],
  ]);
}

async function showProvider() {
  provider = (await get(`/api/providers/${encodeURIComponent(key)}`)).provider;
  const p = provider;
  document.title = `${p.name || p.workerId} · Qubix`;
  $("title").textContent = p.name ? `${p.name} (${p.workerId})` : p.workerId;
  const summary = $("summary");
  summary.replaceChildren();
  const status = document.createElement("strong");
  status.className = `s-${p.status}`;
  status.textContent = p.status;
  const address = document.createElement("a");
  address.href = `/address/${p.qubicAddress}`;
  address.textContent = "all workers of its address";
  summary.append(status, `, last seen ${ago(p.lastSeenAt)} · `, address);
  $("why-box").hidden = false;
  $("why").replaceChildren(...(await why(p)).map((text) => Object.assign(document.createElement("li"), { textContent: text })));
  $("hardware-box").hidden = false;
  facts($("hardware"), [
    ["GPUs", gpuText(p)],
    ["CPU", `${p.cpu.model}, ${p.cpu.cores} cores`],
    ["Memory", `${Math.round(p.ramMb / 1024)} GB`],
    ["System", p.os ? `${p.os.system} ${p.os.release}` : "-"],
    ["Renters' code", (p.capabilities || []).includes("command") ? (p.sandbox === "bubblewrap" ? "sandboxed" : "unsandboxed") : "no"],
    ["Price / h", p.pricePerHour == null ? "0" : amount(p.pricePerHour)],
    ["Agent", p.agentVersion || "-"],
  ]);
  const t = p.trust;
  $("trust-box").hidden = false;
  facts($("trust"), [
    ["Standing", trustText(t)],
    ["GPU claim", t.claim],
    ["Checks", `${t.canariesPassed} passed, ${t.canariesFailed} failed`],
    ["Jobs", `${t.completed} completed, ${t.failed} failed, ${t.lost} lost`],
  ]);
  const jobs = (await get(`/api/providers/${encodeURIComponent(p.workerId)}/jobs`)).jobs;
  $("jobs-box").hidden = false;
  const body = $("jobs").tBodies[0];
  body.replaceChildren();
  for (const j of jobs) row(body, [j.type, j.status, ago(j.leasedAt), j.durationS == null ? "running" : `${j.durationS.toFixed(1)} s`, amount(j.earned)]);
  $("no-jobs").hidden = jobs.length > 0;
  await showEarnings({ address: p.qubicAddress, workerId: p.workerId });
}

async function showAddress() {
  document.title = "Address · Qubix";
  $("title").textContent = "Workers of an address";
  $("summary").textContent = key;
  $("summary").classList.add("address");
  const found = [];
  let cursor = null;
  do {
    const page = await get(`/api/providers?limit=1000&qubicAddress=${encodeURIComponent(key)}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
    found.push(...page.providers);
    cursor = page.nextCursor;
  } while (cursor);
  $("workers-box").hidden = false;
  const body = $("workers").tBodies[0];
  body.replaceChildren();
  for (const p of found) row(body, [p.name ? `${p.name} (${p.workerId})` : p.workerId, p.status, gpuText(p), trustText(p.trust), ago(p.lastSeenAt)], `/providers/${encodeURIComponent(p.workerId)}`);
  await showEarnings({ address: key });
}

async function refresh() {
  try {
    await (kind === "address" ? showAddress() : showProvider());
    $("error").hidden = true;
  } catch (error) {
    $("error").hidden = false;
    $("error").textContent = `${error.message} The page keeps trying.`;
  }
}

function connect() {
  const socket = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/events`);
  socket.onopen = () => { retryS = 1; $("live").textContent = "● live"; refresh(); };
  socket.onmessage = (message) => {
    const event = JSON.parse(message.data);
    if (!event.type.startsWith("PROVIDER_")) return;
    const mine = kind === "address" ? event.data.qubicAddress === key : event.data.workerId === key;
    if (mine) refresh();
  };
  socket.onclose = () => {
    $("live").textContent = `reconnecting in ${retryS} s…`;
    setTimeout(connect, retryS * 1000);
    retryS = Math.min(retryS * 2, 15);
  };
}

setInterval(refresh, 30_000);
connect();
