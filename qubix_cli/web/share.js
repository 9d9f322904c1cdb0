// The "Share My GPU" page: register this browser as a provider (WebGPU, else WebGL), or
// download the native installer for this OS and follow the worker until it is online.
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const TIMEOUT_S = Number(params.get("timeoutS")) || 300; // 5 minutes, as the installers wait
const KEY = "qubix.";
const INSTALLERS = { windows: ".bat", macos: ".sh", linux: ".sh" };

class UserError extends Error {}

const price = $("price");
price.value = localStorage.getItem(KEY + "price") || "";
price.addEventListener("input", () => localStorage.setItem(KEY + "price", price.value));
const address = $("address");
address.value = localStorage.getItem(KEY + "address") || "";
address.addEventListener("input", () => {
  address.value = address.value.toUpperCase().replace(/\s+/g, "");
  localStorage.setItem(KEY + "address", address.value);
  checkShape();
});
checkShape();

function checkShape() {
  const value = address.value;
  let message = "";
  if (value && /[^A-Z]/.test(value)) message = "Only the letters A to Z.";
  else if (value && value.length !== 60) message = `${value.length} of 60 letters.`;
  else if (value) message = "Looks right; the server checks its checksum.";
  $("address-help").textContent = message;
  const ok = /^[A-Z]{60}$/.test(value);
  address.setAttribute("aria-invalid", String(Boolean(value) && !ok));
  return ok;
}

function show(kind, ...parts) {
  const box = $("status");
  box.hidden = false;
  box.className = kind;
  box.replaceChildren(...parts.map((part) => {
    if (typeof part !== "string") return part;
    const p = document.createElement("p");
    p.textContent = part;
    return p;
  }));
}

function element(tag, text, attributes = {}) {
  const node = document.createElement(tag);
  node.textContent = text;
  Object.entries(attributes).forEach(([name, value]) => node.setAttribute(name, value));
  return node;
}

async function api(path, options = {}) {
  let answer;
  try {
    answer = await fetch(path, options);
  } catch {
    throw new UserError(`Cannot reach the Qubix server at ${location.origin}. Check your connection and try again.`);
  }
  if (answer.ok) return answer;
  let message = answer.statusText;
  try { message = (await answer.json()).message; } catch { /* not JSON */ }
  // The server names the field it refuses ("body.qubicAddress: this is ..."): the page
  // has one field, so the sentence alone says it ("This is ...").
  message = message.replace(/^body\.[\w.]+: (\w)/, (_, first) => first.toUpperCase());
  if (answer.status >= 500) message = `The server failed (${answer.status}). Please try again in a minute.`;
  const error = new UserError(message);
  error.status = answer.status;
  throw error;
}

function vendorOf(text) {
  const lowered = (text || "").toLowerCase();
  for (const vendor of ["nvidia", "amd", "apple", "intel"]) if (lowered.includes(vendor)) return vendor;
  return lowered.includes("radeon") ? "amd" : "other";
}

// The page shares through a Web Worker (browser-worker.js) that runs jobs on WebGPU; a
// browser with only WebGL registers, says it cannot compute, and offers the native worker.
const SOFTWARE = /swiftshader|llvmpipe|lavapipe|softpipe|basic render|software/i;
let webWorker = null;

function detectWebGl() {
  try {
    const canvas = document.createElement("canvas");
    const gl = canvas.getContext("webgl2") || canvas.getContext("webgl");
    if (gl) {
      const ext = gl.getExtension("WEBGL_debug_renderer_info");
      const vendor = gl.getParameter(ext ? ext.UNMASKED_VENDOR_WEBGL : gl.VENDOR);
      const model = gl.getParameter(ext ? ext.UNMASKED_RENDERER_WEBGL : gl.RENDERER) || "WebGL renderer";
      return { api: "WebGL", vendor: vendorOf(`${vendor} ${model}`), model, software: SOFTWARE.test(`${vendor} ${model}`) };
    }
  } catch { /* no GPU in this browser */ }
  return null;
}

// What WebGPU offers inside the Web Worker (where the jobs run), or null.
function probeWebGpu() {
  return new Promise((resolve) => {
    let worker;
    try {
      worker = new Worker("/static/browser-worker.js");
    } catch {
      resolve(null);
      return;
    }
    const timer = setTimeout(() => { worker.terminate(); resolve(null); }, 15000);
    worker.onmessage = (event) => {
      if (event.data.type !== "probe") return;
      clearTimeout(timer);
      if (!event.data.webgpu) { worker.terminate(); resolve(null); return; }
      resolve({ worker, ...event.data.webgpu });
    };
    worker.onerror = () => { clearTimeout(timer); resolve(null); };
    worker.postMessage({ type: "probe" });
  });
}

async function detectGpu() {
  const webgpu = await probeWebGpu();
  if (webgpu) {
    const { worker, model, vendor, software, limits, capabilities } = webgpu;
    return { api: "WebGPU", vendor: vendorOf(`${vendor} ${model}`), model, software, limits, capabilities, worker };
  }
  return detectWebGl();
}

function randomId() {
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  return "web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function register(gpu) {
  const workerId = localStorage.getItem(KEY + "workerId") || randomId();
  const token = localStorage.getItem(KEY + "token");
  const entry = { vendor: gpu.vendor, model: String(gpu.model).slice(0, 128), vramMb: 0 };
  if (gpu.software) entry.software = true;
  const body = {
    type: "browser",
    workerId,
    qubicAddress: address.value,
    gpus: [entry], // a browser cannot know its VRAM: 0, and the marketplace says "unknown"
    cpu: { model: "Web browser", cores: navigator.hardwareConcurrency || 1 },
    ramMb: Math.round((navigator.deviceMemory || 0) * 1024),
    capabilities: gpu.capabilities || [],
    agentVersion: "web-0.2.0",
  };
  if (gpu.limits) body.webgpu = gpu.limits;
  if (price.value !== "" && Number(price.value) >= 0) body.pricePerHour = Number(price.value);
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  try {
    const answer = await (await api("/api/providers/quick-register", { method: "POST", headers, body: JSON.stringify(body) })).json();
    localStorage.setItem(KEY + "workerId", workerId);
    if (answer.workerToken) localStorage.setItem(KEY + "token", answer.workerToken);
    return answer.provider;
  } catch (error) {
    if (error.status !== 409) throw error;
    localStorage.removeItem(KEY + "workerId"); // this id belongs to someone else: start afresh
    localStorage.removeItem(KEY + "token");
    return register(gpu);
  }
}

function providerLink(provider) {
  const line = document.createElement("p");
  line.append(element("a", "Its page: status, jobs and earnings", { href: `/providers/${encodeURIComponent(provider.workerId)}` }));
  return line;
}

async function earned(provider) {
  try {
    const query = `workerId=${encodeURIComponent(provider.workerId)}`;
    const totals = await (await api(`/api/earnings/${provider.qubicAddress}?${query}`)).json();
    return `${totals.allTime} QUBIC earned`;
  } catch {
    return "earnings not known yet";
  }
}

async function showSharing(provider, gpu, state) {
  const kind = gpu.software ? "a software renderer, not a GPU" : `via ${gpu.api}`;
  const doing = state.state === "running" ? `Running job ${state.jobId} (${state.jobType}).` : "Idle: waiting for a job.";
  const stop = element("button", "Stop sharing", { type: "button", id: "stop", class: "secondary" });
  stop.addEventListener("click", () => stopSharing(provider, gpu));
  show("ok", `Sharing: this browser computes with ${gpu.model} (${kind}) as ${provider.workerId}.`,
    element("p", doing, { id: "doing" }),
    `${state.jobsDone} job(s) done · ${await earned(provider)}. Keep this page open to stay online.`,
    providerLink(provider), stop);
}

function stopSharing(provider, gpu) {
  if (!webWorker) return;
  $("stop").disabled = true;
  $("doing").textContent = "Stopping: a running job is handed back to the marketplace…";
  webWorker.postMessage({ type: "stop" });
}

async function shareBrowser(gpu) {
  show("", `Found ${gpu.model} via ${gpu.api}; registering…`);
  if (!gpu.worker) return cannotCompute(await register(gpu), gpu);
  if (webWorker && webWorker !== gpu.worker) webWorker.terminate();
  webWorker = gpu.worker;
  let provider = await register(gpu);
  webWorker.onmessage = async (event) => {
    const message = event.data;
    if (message.type === "lost") { // the server forgot this browser: register again
      provider = await register(gpu);
      webWorker.postMessage({ type: "start", workerId: provider.workerId, token: localStorage.getItem(KEY + "token") });
    } else if (message.type === "state" && message.state === "stopped") {
      webWorker.terminate();
      webWorker = null;
      show("", `Stopped sharing. ${message.jobsDone} job(s) done; ${await earned(provider)}.`, providerLink(provider));
    } else if (message.type === "state") {
      await showSharing(provider, gpu, message);
    }
  };
  webWorker.postMessage({ type: "start", workerId: provider.workerId, token: localStorage.getItem(KEY + "token") });
}

// WebGL only: its float arithmetic cannot check a product exactly, so it runs no jobs.
function cannotCompute(provider, gpu) {
  const install = element("button", "Install the native worker", { type: "button", id: "install-instead" });
  install.addEventListener("click", () => guarded(installNative));
  show("error", `This browser has ${gpu.model} via WebGL only, and runs no jobs without WebGPU.`,
    `It is registered as ${provider.workerId}, able to run nothing, and not kept online. To earn, install the native worker (or use a browser with WebGPU).`,
    install);
}

function detectOs() {
  const platform = (navigator.userAgentData && navigator.userAgentData.platform) || navigator.userAgent;
  if (/android|iphone|ipad/i.test(platform)) return null;
  if (/win/i.test(platform)) return "windows";
  if (/mac/i.test(platform)) return "macos";
  if (/linux|x11|cros/i.test(platform)) return "linux";
  return null;
}

function runCommand(os, file) {
  if (os === "windows") return `Double-click ${file} in your Downloads folder (or run it in cmd).`;
  return `In a terminal: sh ~/Downloads/${file}`;
}

// When the worker may work: the provider's preferences (docs/worker.md).
function preferencesHint(os, file) {
  if (os === "windows") {
    return "To choose when it may work (a schedule, only when the computer is idle, not on battery, a GPU temperature ceiling): "
      + "%USERPROFILE%\\.qubix\\venv\\Scripts\\python.exe %USERPROFILE%\\.qubix\\qubix_worker.pyz preferences --help";
  }
  return `To choose when it may work, add preferences, for example: sh ~/Downloads/${file} `
    + "--schedule 'mon-fri 18:00-08:00; sat,sun 00:00-24:00' --idle-only 10 --not-on-battery --max-gpu-temp 85 "
    + "(later: ~/.qubix/venv/bin/python ~/.qubix/qubix_worker.pyz preferences --help).";
}

async function sha256(blob, answer) {
  if (!crypto.subtle) return answer.headers.get("X-Checksum-Sha256");
  const digest = await crypto.subtle.digest("SHA-256", await blob.arrayBuffer());
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

function installerQuery() {
  return `qubicAddress=${address.value}`; // the server knows its own URL (--public-url)
}

async function installNative() {
  const os = detectOs();
  if (!os) {
    const links = element("p", "We could not tell which system this is. Download the installer for yours: ");
    for (const name of Object.keys(INSTALLERS)) {
      links.append(element("a", name, { href: `/api/installer/${name}?${installerQuery()}` }), " ");
    }
    show("error", links);
    return;
  }
  const answer = await api(`/api/installer/${os}?${installerQuery()}`);
  const blob = await answer.blob();
  const file = `qubix-installer-${os}${INSTALLERS[os]}`;
  const link = element("a", file, { href: URL.createObjectURL(blob), download: file });
  document.body.append(link);
  link.click();
  link.remove();
  show("", `Installer downloaded! Please run ${file}`, element("pre", runCommand(os, file)),
    element("p", `SHA-256: ${await sha256(blob, answer)}`), element("p", preferencesHint(os, file)));
  await followRegistration();
}

async function followRegistration() {
  const box = $("progress-box");
  box.hidden = false;
  const since = (await (await api("/healthz")).json()).serverTime;
  const started = Date.now();
  while ((Date.now() - started) / 1000 < TIMEOUT_S) {
    const elapsed = (Date.now() - started) / 1000;
    $("progress").value = Math.min(100, (100 * elapsed) / TIMEOUT_S);
    $("progress-text").textContent = `Waiting for the worker to come online… ${Math.round(elapsed)} s of ${Math.round(TIMEOUT_S)} s`;
    const wait = Math.max(1, Math.min(25, Math.floor(TIMEOUT_S - elapsed)));
    try {
      const query = `qubicAddress=${address.value}&since=${since}&wait=${wait}`;
      const found = (await (await api(`/api/providers/check-new?${query}`)).json()).providers;
      if (found.length) {
        box.hidden = true;
        const p = found[0];
        const gpus = p.gpus.map((g) => `${g.model} (${Math.round(g.vramMb / 1024)} GB)`).join(", ") || "no GPU";
        show("ok", `Online: worker ${p.workerId} is sharing ${gpus}.`,
          element("a", "Its page: status, jobs and earnings", { href: `/providers/${encodeURIComponent(p.workerId)}` }));
        return;
      }
    } catch (error) {
      $("progress-text").textContent = `${error.message} Still trying…`;
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  }
  box.hidden = true;
  const limit = TIMEOUT_S >= 60 ? `${Math.round(TIMEOUT_S / 6) / 10} minutes` : `${TIMEOUT_S} seconds`;
  show("error", `The worker has not come online within ${limit}.`,
    "Is the installer still running, or did it print an error? Its log is in ~/.qubix/worker.log (Windows: %USERPROFILE%\\.qubix\\worker.log).",
    `Can that computer reach ${location.origin}? A firewall or proxy may block it.`,
    "Is the Qubic address the same one you entered here? Then run the installer again.");
}

async function guarded(action) {
  if (!checkShape()) {
    show("error", "Enter your Qubic address: 60 capital letters A to Z.");
    address.focus();
    return;
  }
  $("share").disabled = $("native").disabled = true;
  try {
    await action();
  } catch (error) {
    show("error", error instanceof UserError ? error.message : `Something went wrong: ${error.message}`);
  } finally {
    $("share").disabled = $("native").disabled = false;
  }
}

$("share-form").addEventListener("submit", (event) => {
  event.preventDefault();
  guarded(async () => {
    const gpu = await detectGpu();
    if (gpu) await shareBrowser(gpu);
    else {
      show("", "This browser has neither WebGPU nor WebGL: installing the native worker instead.");
      await installNative();
    }
  });
});
$("native").addEventListener("click", () => guarded(installNative));
