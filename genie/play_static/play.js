// genie play: one tab = one session. Key press → {"type":"step"} over the WebSocket → a binary frame
// message (uint32 LE header length, JSON header, raw RGB) drawn on the canvas. Latency is measured here,
// from the key press (performance.now()) to the animation frame that shows the new frame.
"use strict";

const $ = (id) => document.getElementById(id);
const play = (window.geniePlay = {
  sid: null, ws: null, info: null, seq: 0,
  inflight: null,   // {seq, action, t0}: one step at a time
  queued: null,     // the latest press made while a step was in flight
  held: null,       // action of a key held down: stepped again as soon as a frame arrives
  latencies: [], modelMs: [], arrivals: [], steps: 0, length: 0, header: null, errors: [], ready: false,
});

async function api(path, options) {
  const r = await fetch(path, options);
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || `${r.status} ${r.statusText}`);
  return body;
}

function status(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
  if (isError) play.errors.push(text);
}

// ---- session and socket ---------------------------------------------------------------------------
async function newSession() {
  const { session } = await api("/api/session", { method: "POST" });
  play.sid = session;
  connect();
  updateButtons();
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws?session=${encodeURIComponent(play.sid)}`);
  ws.binaryType = "arraybuffer";
  ws.onmessage = (ev) => (typeof ev.data === "string" ? onText(JSON.parse(ev.data)) : onFrame(ev.data));
  ws.onclose = (ev) => {
    play.ready = false;
    if (ev.code === 4404) newSession().catch((e) => status(e.message, true)); // expired: start afresh
    else status("disconnected from the server: reload the page", true);
  };
  play.ws = ws;
}

function send(msg) {
  if (play.ws && play.ws.readyState === WebSocket.OPEN) play.ws.send(JSON.stringify(msg));
}

function onText(msg) {
  if (msg.type === "ready") {
    play.ready = true;
    status(play.length ? "" : "pick a prompt: a dataset frame or an upload");
  } else if (msg.type === "settings") {
    $("steps").value = msg.steps;
    $("temperature").value = msg.temperature;
    status(`settings: ${msg.steps} MaskGIT steps, temperature ${msg.temperature}`);
  } else if (msg.type === "error") {
    status(`${msg.status}: ${msg.error}`, true);
    if (play.inflight) { play.inflight = null; play.queued = null; }
  }
}

// ---- frames -----------------------------------------------------------------------------------------
function draw(rgb, w, h) {
  const canvas = $("screen");
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w, h);
  for (let i = 0, j = 0; i < rgb.length; i += 3, j += 4) {
    img.data[j] = rgb[i]; img.data[j + 1] = rgb[i + 1]; img.data[j + 2] = rgb[i + 2]; img.data[j + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}

function onFrame(buf) {
  const n = new DataView(buf).getUint32(0, true);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, n)));
  draw(new Uint8Array(buf, 4 + n), header.width, header.height);
  play.header = header;
  play.length = header.length;
  const mine = play.inflight && header.seq === play.inflight.seq;
  if (mine) {
    const t0 = play.inflight.t0;
    play.inflight = null;
    // on screen: the animation frame that paints the new canvas content
    requestAnimationFrame(() => {
      const now = performance.now();
      play.latencies.push(now - t0);
      play.modelMs.push(header.model_ms);
      play.arrivals.push(now);
      play.steps += 1;
      showStats();
    });
    if (play.queued) {
      const q = play.queued; play.queued = null;
      requestStep(q.action, q.t0);
    } else if (play.held !== null) {
      requestStep(play.held, performance.now());
    }
  } else {
    showStats();
  }
  $("frame-index").textContent = `${header.index} / ${header.length - 1}`;
  $("actions").textContent = header.actions.length ? header.actions.join(",") : "–";
  status(`${header.prompt_source}` + (header.index ? `, frame ${header.index}` : ""));
  updateButtons();
}

function median(xs) {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

function showStats() {
  const lat = play.latencies;
  $("latency").textContent = lat.length ? lat[lat.length - 1].toFixed(0) : "–";
  $("median").textContent = lat.length ? median(lat).toFixed(0) : "–";
  $("latency-count").textContent = `${lat.length} presses`;
  const ms = play.modelMs[play.modelMs.length - 1];
  $("model-ms").textContent = ms != null ? ms.toFixed(0) : "–";
  // frames/s over the frames of the last 2 s (keys held or pressed quickly)
  const now = performance.now();
  const recent = play.arrivals.filter((t) => now - t < 2000);
  $("fps").textContent = recent.length >= 2
    ? ((recent.length - 1) / ((recent[recent.length - 1] - recent[0]) / 1000)).toFixed(1)
    : lat.length ? (1000 / lat[lat.length - 1]).toFixed(1) : "–";
}

// ---- actions ---------------------------------------------------------------------------------------
function requestStep(action, t0) {
  if (!play.ready) return;
  if (play.inflight) { play.queued = { action, t0 }; return; } // keep only the latest press
  play.inflight = { seq: ++play.seq, action, t0 };
  send({ type: "step", action, seq: play.seq });
}

function pressAction(action, t0) {
  if (!play.length) { status("pick a prompt first", true); return; }
  const b = document.querySelector(`button.action[data-action="${action}"]`);
  if (b) { b.classList.add("pressed"); setTimeout(() => b.classList.remove("pressed"), 120); }
  requestStep(action, t0);
}

const keyToAction = new Map();

function buildControls() {
  const box = $("controls");
  for (const c of play.info.controls) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "action";
    b.dataset.action = c.action;
    const names = c.keys.map((k) => ({ ArrowLeft: "←", ArrowRight: "→", ArrowUp: "↑", ArrowDown: "↓", " ": "Space" })[k] || k.toUpperCase());
    b.innerHTML = `<span></span><small></small>`;
    b.querySelector("span").textContent = c.label;
    b.querySelector("small").textContent = names.join(" ");
    b.title = c.real ? `${c.real}: latent action ${c.action} (the action map)` : `latent action ${c.action}`;
    b.addEventListener("click", () => pressAction(c.action, performance.now()));
    box.appendChild(b);
    for (const k of c.keys) keyToAction.set(k, c.action);
  }
}

function buildPrompts() {
  const box = $("data-prompts");
  for (let i = 0; i < play.info.prompts; i++) {
    const img = document.createElement("img");
    img.src = `/api/prompts/${i}.png`;
    img.alt = `dataset prompt ${i}`;
    img.dataset.index = i;
    img.addEventListener("click", () => {
      box.querySelectorAll("img").forEach((x) => x.classList.toggle("selected", x === img));
      send({ type: "prompt", source: "data", index: i });
    });
    box.appendChild(img);
  }
  if (!play.info.prompts) box.textContent = "start genie play with --data DIR for a grid of held-out frames";
}

function updateButtons() {
  const has = play.length > 0;
  $("undo").disabled = play.length < 2;
  $("reset").disabled = play.length < 2;
  $("from-last").disabled = !has;
  for (const [id, name] of [["dl-mp4", "clip.mp4"], ["dl-gif", "clip.gif"], ["dl-actions", "actions.json"], ["dl-prompt", "prompt.png"]]) {
    const a = $(id);
    a.href = `/api/session/${play.sid}/${name}`;
    a.setAttribute("download", `genie-${name}`);
    a.classList.toggle("disabled", !has);
  }
}

async function upload(file) {
  try {
    await api(`/api/session/${play.sid}/prompt`, {
      method: "POST", headers: { "Content-Type": file.type || "application/octet-stream" }, body: file,
    });
    document.querySelectorAll("#data-prompts img").forEach((x) => x.classList.remove("selected"));
    send({ type: "sync" });
  } catch (e) {
    status(`upload refused: ${e.message}`, true);
  }
}

function sendSettings() {
  const steps = Number($("steps").value), temperature = Number($("temperature").value);
  if (!Number.isInteger(steps) || !Number.isFinite(temperature)) { status("steps must be an integer, temperature a number", true); return; }
  send({ type: "settings", steps, temperature });
}

document.addEventListener("keydown", (e) => {
  if (e.target.closest && e.target.closest("input, select, textarea") || e.ctrlKey || e.metaKey || e.altKey) return;
  const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
  if (keyToAction.has(key)) {
    e.preventDefault();
    const action = keyToAction.get(key);
    if (e.repeat) {
      // the key is held (the browser repeats it): step again as soon as each frame arrives (onFrame),
      // as fast as frames come; a tap gives exactly one frame however fast the model is
      play.held = action;
      if (!play.inflight && !play.queued) requestStep(action, performance.now());
      return;
    }
    play.held = null;
    pressAction(action, performance.now());
  } else if (key === "u" || key === "Backspace") {
    e.preventDefault(); send({ type: "undo" });
  } else if (key === "r") {
    send({ type: "reset" });
  }
});
document.addEventListener("keyup", (e) => {
  const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
  if (keyToAction.get(key) === play.held) play.held = null;
});
window.addEventListener("blur", () => { play.held = null; });

async function start() {
  try {
    play.info = await api("/api/info");
  } catch (e) {
    status(`cannot reach the server: ${e.message}`, true);
    return;
  }
  const i = play.info;
  $("model-info").textContent = `${i.model} · ${i.device} · ${i.num_actions} latent actions` +
    `${i.action_map ? " (action map)" : i.keymap ? " (keymap)" : ""} · context ${i.context}/${i.window} frames`;
  if (i.action_map) {
    $("keys-hint").textContent = "Keys: arrows/WASD are the real directions (↑ jumps), Space NOOP, Q E Z C the " +
      "diagonals; 1–9 the latent actions; U undo, R reset.";
  }
  $("steps").value = i.steps; $("steps").max = i.max_steps;
  $("temperature").value = i.temperature; $("temperature").max = i.max_temperature;
  buildControls();
  buildPrompts();
  $("undo").addEventListener("click", () => send({ type: "undo" }));
  $("reset").addEventListener("click", () => send({ type: "reset" }));
  $("from-last").addEventListener("click", () => send({ type: "prompt", source: "last" }));
  $("steps").addEventListener("change", sendSettings);
  $("temperature").addEventListener("change", sendSettings);
  $("upload").addEventListener("change", (e) => { if (e.target.files[0]) upload(e.target.files[0]); e.target.value = ""; });
  await newSession().catch((e) => status(e.message, true));
}

start();
