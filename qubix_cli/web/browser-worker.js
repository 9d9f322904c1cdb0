// The browser worker: a Web Worker that the "Share My GPU" page starts. It heartbeats,
// long-polls for jobs with the worker token, runs them on WebGPU (one at a time) and
// reports each once, as the native agent does (docs/web.md). The page talks to it with
// messages: {type: "probe"} -> what WebGPU offers here; {type: "start", workerId, token};
// {type: "stop"} hands a running job back and stops. It answers with {type: "state", ...}.

const MAX_RUN_S = 300; // a job runs at most this long in a browser, whatever its timeout
const GPU_JOB_TYPES = ["matmul", "wgsl"];
// What a `wgsl` job must fit, as the registration advertises it (docs/api.md).
const LIMITS = [
  "maxBufferSize",
  "maxStorageBufferBindingSize",
  "maxComputeWorkgroupsPerDimension",
  "maxComputeInvocationsPerWorkgroup",
  "maxStorageBuffersPerShaderStage",
];
const SOFTWARE = /swiftshader|llvmpipe|lavapipe|softpipe|basic render|software/i;

let device = null;
let session = null; // {workerId, token}
let sharing = null; // the session the loops serve; null once stopped
let current = null; // the running job: {id, attempt, type, abort(reason)}
let heartbeatS = 30;
let pollWaitS = 25;
let jobsDone = 0;
let poller = null; // the long-poll's AbortController

// A failure of the job's own (a shader that does not compile: charged), or, with `by`
// "worker", of this browser's (free, and the job runs again): docs/billing.md.
class JobError extends Error {
  constructor(message, by = "job") {
    super(message);
    this.by = by;
  }
}

function say(state, extra = {}) {
  postMessage({ type: "state", state, jobsDone, ...extra });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function adapter() {
  if (!self.navigator || !navigator.gpu) return null;
  return navigator.gpu.requestAdapter();
}

async function gpu() {
  if (device) return device;
  const found = await adapter();
  if (!found) throw new JobError("WebGPU has no adapter any more", "worker");
  const requiredLimits = Object.fromEntries(LIMITS.map((name) => [name, found.limits[name]]));
  device = await found.requestDevice({ requiredLimits });
  device.lost.then(() => { device = null; });
  return device;
}

// What this browser can offer: its adapter, whether it is a software renderer, its limits.
async function probe() {
  try {
    const found = await adapter();
    if (!found) return { webgpu: null };
    const info = found.info || {};
    const model = info.description || [info.vendor, info.architecture, info.device].filter(Boolean).join(" ") || "WebGPU adapter";
    const software = Boolean(info.isFallbackAdapter || found.isFallbackAdapter) || SOFTWARE.test(`${info.vendor} ${info.architecture} ${model}`);
    const limits = Object.fromEntries(LIMITS.map((name) => [name, Number(found.limits[name])]));
    return { webgpu: { model, vendor: info.vendor || "", software, limits, capabilities: GPU_JOB_TYPES } };
  } catch (error) {
    return { webgpu: null, error: String(error) };
  }
}

async function call(method, path, body, signal) {
  const headers = { Authorization: `Bearer ${session.token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  return fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal });
}

// -- the verifiable job: the seeded integer product of worker/engine.py, on the GPU -------

function matrices(seed, n) {
  let s = (seed >>> 0) || 0x9e3779b9;
  const a = new Uint32Array(n * n);
  const b = new Uint32Array(n * n);
  for (let i = 0; i < 2 * n * n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    if (i < n * n) a[i] = s & 0xff;
    else b[i - n * n] = s & 0xff;
  }
  return [a, b];
}

const MATMUL = `
struct Dims { n: u32 }
@group(0) @binding(0) var<storage, read> a: array<u32>;
@group(0) @binding(1) var<storage, read> b: array<u32>;
@group(0) @binding(2) var<storage, read_write> c: array<u32>;
@group(0) @binding(3) var<uniform> dims: Dims;
@compute @workgroup_size(16, 16)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
  let n = dims.n;
  if (id.x >= n || id.y >= n) { return; }
  var sum = 0u;
  for (var k = 0u; k < n; k = k + 1u) { sum = sum + a[id.y * n + k] * b[k * n + id.x]; }
  c[id.y * n + id.x] = sum;
}`;

async function runMatmul(job) {
  const { seed, n } = job.payload;
  const [a, b] = matrices(seed, n);
  const gpuDevice = await gpu();
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST;
  const upload = (data, use) => {
    const buffer = gpuDevice.createBuffer({ size: data.byteLength, usage: use });
    gpuDevice.queue.writeBuffer(buffer, 0, data);
    return buffer;
  };
  const started = performance.now();
  const bufferA = upload(a, usage);
  const bufferB = upload(b, usage);
  const dims = upload(new Uint32Array([n, 0, 0, 0]), GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST);
  const bufferC = gpuDevice.createBuffer({ size: 4 * n * n, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC });
  const module = gpuDevice.createShaderModule({ code: MATMUL });
  const pipeline = await gpuDevice.createComputePipelineAsync({ layout: "auto", compute: { module, entryPoint: "main" } });
  const group = gpuDevice.createBindGroup({
    layout: pipeline.getBindGroupLayout(0),
    entries: [bufferA, bufferB, bufferC, dims].map((buffer, binding) => ({ binding, resource: { buffer } })),
  });
  const tiles = Math.ceil(n / 16);
  const c = new Uint32Array(await dispatch(gpuDevice, pipeline, group, [tiles, tiles, 1], [bufferC]).then((outs) => outs[0]));
  const computeS = (performance.now() - started) / 1000;
  const digest = await crypto.subtle.digest("SHA-256", c.buffer); // little-endian uint32, as engine.py
  [bufferA, bufferB, bufferC, dims].forEach((buffer) => buffer.destroy());
  return { digest: hex(digest), engine: "webgpu", computeS: Math.round(computeS * 1e6) / 1e6, n };
}

// One dispatch, then each of `outputs` copied back: their bytes, in order.
async function dispatch(gpuDevice, pipeline, group, workgroups, outputs) {
  const encoder = gpuDevice.createCommandEncoder();
  const pass = encoder.beginComputePass();
  pass.setPipeline(pipeline);
  pass.setBindGroup(0, group);
  pass.dispatchWorkgroups(...workgroups);
  pass.end();
  const reads = outputs.map((buffer) => {
    const read = gpuDevice.createBuffer({ size: buffer.size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    encoder.copyBufferToBuffer(buffer, 0, read, 0, buffer.size);
    return read;
  });
  gpuDevice.queue.submit([encoder.finish()]);
  const bytes = [];
  for (const read of reads) {
    await read.mapAsync(GPUMapMode.READ);
    bytes.push(read.getMappedRange().slice(0));
    read.destroy();
  }
  return bytes;
}

// -- a renter's compute shader --------------------------------------------------------

async function runWgsl(job) {
  const { shader, entryPoint = "main", workgroups, buffers } = job.payload;
  const gpuDevice = await gpu();
  const module = gpuDevice.createShaderModule({ code: shader });
  const errors = (await module.getCompilationInfo()).messages.filter((m) => m.type === "error");
  if (errors.length) {
    throw new JobError(`the shader does not compile: ${errors.slice(0, 3).map((m) => `line ${m.lineNum}: ${m.message}`).join("; ")}`);
  }
  let pipeline;
  try {
    pipeline = await gpuDevice.createComputePipelineAsync({ layout: "auto", compute: { module, entryPoint } });
  } catch (error) {
    throw new JobError(`the shader cannot run: ${error.message}`);
  }
  const started = performance.now();
  gpuDevice.pushErrorScope("validation");
  const made = buffers.map((spec) => {
    const buffer = gpuDevice.createBuffer({ size: spec.sizeBytes, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
    if (spec.input) {
      const bytes = fromBase64(spec.input);
      const padded = new Uint8Array(Math.ceil(bytes.length / 4) * 4);
      padded.set(bytes);
      gpuDevice.queue.writeBuffer(buffer, 0, padded);
    }
    return buffer;
  });
  const group = gpuDevice.createBindGroup({
    layout: pipeline.getBindGroupLayout(0),
    entries: buffers.map((spec, i) => ({ binding: spec.binding, resource: { buffer: made[i] } })),
  });
  const invalid = await gpuDevice.popErrorScope();
  if (invalid) {
    made.forEach((buffer) => buffer.destroy());
    throw new JobError(`the buffers do not fit the shader: ${invalid.message.split("\n")[0]}`);
  }
  const size = [workgroups[0], workgroups[1] || 1, workgroups[2] || 1];
  const wanted = buffers.map((spec, i) => [spec, made[i]]).filter(([spec]) => spec.output);
  const bytes = await dispatch(gpuDevice, pipeline, group, size, wanted.map(([, buffer]) => buffer));
  const outputs = Object.fromEntries(wanted.map(([spec], i) => [String(spec.binding), toBase64(bytes[i])]));
  made.forEach((buffer) => buffer.destroy());
  return { outputs, computeS: Math.round((performance.now() - started) / 1000 * 1e6) / 1e6 };
}

const RUNNERS = { matmul: runMatmul, wgsl: runWgsl };

function hex(buffer) {
  return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
}

function fromBase64(text) {
  return Uint8Array.from(atob(text), (ch) => ch.charCodeAt(0));
}

function toBase64(buffer) {
  const bytes = new Uint8Array(buffer);
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

// -- the job: run within its time, report once ------------------------------------------

async function runJob(lease) {
  const { job, attempt } = lease;
  const limitS = Math.min(job.timeoutS || MAX_RUN_S, MAX_RUN_S);
  let stop;
  const stopped = new Promise((resolve) => { stop = resolve; });
  current = { id: job.id, attempt, type: job.type, abort: (outcome) => stop(outcome) };
  say("running", { jobId: job.id, jobType: job.type });
  heartbeat(); // renew the lease at once, as the native agent does
  const ownLimit = limitS === job.timeoutS; // its own timeout, not this browser's cap
  const abandoned = { error: `abandoned after ${limitS} s: a browser job runs at most that long`, failedBy: ownLimit ? "job" : "worker" };
  const timer = setTimeout(() => stop(["failed", abandoned]), limitS * 1000);
  const work = (async () => {
    const runner = RUNNERS[job.type];
    if (!runner) return ["failed", { error: `this browser does not run ${job.type} jobs`, failedBy: "worker" }];
    try {
      return ["completed", await runner(job)];
    } catch (error) {
      const ours = error instanceof JobError;
      return ["failed", { error: ours ? error.message : `WebGPU failed: ${error.message || error}`, failedBy: ours ? error.by : "worker" }];
    }
  })();
  const [status, result] = await Promise.race([work, stopped]);
  clearTimeout(timer);
  if (status !== "completed" && device) {
    device.destroy(); // whatever still runs on the GPU for it ends here
    device = null;
  }
  await report(job.id, attempt, status, result);
  current = null;
  if (status !== "preempted") jobsDone += 1;
  say("idle");
}

async function report(jobId, attempt, status, result) {
  for (let tries = 0; tries < 8; tries++) {
    try {
      const answer = await call("POST", `/api/jobs/${jobId}/complete`, { attempt, status, result });
      if (answer.ok || answer.status === 409 || answer.status === 404) return; // done, or no longer ours
    } catch { /* the network: try again */ }
    await sleep(Math.min(30000, 500 * 2 ** tries));
  }
}

async function heartbeat() {
  if (!sharing) return;
  try {
    const body = { status: current ? "busy" : "online", currentJobIds: current ? [current.id] : [] };
    const answer = await call("POST", `/api/providers/${session.workerId}/heartbeat`, body);
    if (answer.status === 404) {
      postMessage({ type: "lost" }); // forgotten: the page registers again and restarts
      return;
    }
    if (answer.ok) {
      const beat = await answer.json();
      heartbeatS = beat.heartbeatIntervalS;
      pollWaitS = beat.pollWaitS;
      if (current && beat.cancelJobIds.includes(current.id)) current.abort(["failed", { error: "cancelled" }]);
    }
  } catch { /* the next beat tries again */ }
}

async function beatForever(mine) {
  while (sharing === mine) {
    await heartbeat();
    await sleep(heartbeatS * 1000);
  }
}

async function pollForever(mine) {
  let failures = 0;
  while (sharing === mine) {
    if (current) { await sleep(200); continue; }
    poller = new AbortController();
    try {
      const answer = await call("GET", `/api/jobs/pending/${mine.workerId}?wait=${pollWaitS}`, undefined, poller.signal);
      failures = 0;
      if (answer.status === 200) await runJob(await answer.json());
      else if (answer.status !== 204) await sleep(Math.min(30000, 1000 * 2 ** Math.min(failures++, 5)));
    } catch {
      if (sharing !== mine) return;
      await sleep(Math.min(30000, 1000 * 2 ** Math.min(failures++, 5)));
    }
  }
}

onmessage = async (event) => {
  const message = event.data;
  if (message.type === "probe") {
    postMessage({ type: "probe", ...(await probe()) });
  } else if (message.type === "start") {
    session = sharing = { workerId: message.workerId, token: message.token };
    say("idle");
    beatForever(sharing);
    pollForever(sharing);
  } else if (message.type === "stop") {
    sharing = null;
    if (poller) poller.abort();
    if (current) {
      current.abort(["preempted", { reason: "the sharer stopped sharing" }]); // handed back
      while (current) await sleep(50);
    }
    say("stopped");
  }
};
