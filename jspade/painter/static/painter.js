// jspade painter: paint a label map of class ids, the server renders it. Vanilla JS, no build step.
(function () {
  "use strict";

  const RENDER_DELAY_MS = 300;   // debounce after the last change
  const MAX_UNDO = 60;
  const PAINT_WIDTH = 512;       // the label is painted at least this wide, sent at the model's size

  const $ = (id) => document.getElementById(id);
  const el = {
    status: $("status"), modelInfo: $("model-info"), palette: $("palette"), canvas: $("label-canvas"),
    brushSize: $("brush-size"), brushSizeValue: $("brush-size-value"), eraserClass: $("eraser-class"),
    undo: $("undo"), redo: $("redo"), clear: $("clear"), labelFile: $("label-file"), saveLabel: $("save-label"),
    result: $("result"), resultFrame: $("result-frame"), renderInfo: $("render-info"), download: $("download"),
    randomStyle: $("random-style"), seed: $("seed"), styleFile: $("style-file"), clearStyle: $("clear-style"),
    styleThumb: $("style-thumb"), styleName: $("style-name"), styleNote: $("style-note"),
    currentClass: $("current-class"), styleControls: $("style-controls"),
    clipControls: $("clip-controls"), clipStyles: $("clip-styles"), clipTextForm: $("clip-text-form"),
    clipText: $("clip-text"), clipInfo: $("clip-info"),
  };

  const state = {
    info: null, classes: [], modelW: 0, modelH: 0, W: 0, H: 0,
    ids: null, cls: 0, tool: "brush", eraserCls: 0,
    undo: [], redo: [],
    seed: 0, styleId: null, styleB64: null, styleName: "",
    clipStyle: null, clipText: null,  // a CLIP model's style: a bank centre or a prompt (null: the mean)
    seq: 0, inflight: null, timer: null, timerPending: false, renderCount: 0, resultUrl: null, statusSource: null,
    drawing: false, last: null, frameQueued: false,
  };

  // ---------- status ----------
  function setStatus(kind, text, source) {
    el.status.className = kind;
    el.status.textContent = text;
    state.statusSource = source || null;
  }
  function showError(text, source) {
    setStatus("error", text, source);
    console.error(text);
  }

  // ---------- bytes, base64, PNG ----------
  function toBase64(bytes) {
    let s = "";
    for (let i = 0; i < bytes.length; i += 0x8000) {
      s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(s);
  }
  function fromBase64(text) {
    const s = atob(text);
    const out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }

  const CRC_TABLE = (() => {
    const t = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      t[n] = c >>> 0;
    }
    return t;
  })();
  function crc32(bytes) {
    let c = 0xffffffff;
    for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  }
  function adler32(bytes) {
    let a = 1, b = 0;
    for (let i = 0; i < bytes.length; i += 4096) {
      const end = Math.min(bytes.length, i + 4096);
      for (let j = i; j < end; j++) { a += bytes[j]; b += a; }
      a %= 65521; b %= 65521;
    }
    return ((b << 16) | a) >>> 0;
  }
  async function zlib(raw) {
    if (typeof CompressionStream === "function") {
      try {
        const stream = new Blob([raw]).stream().pipeThrough(new CompressionStream("deflate"));
        return new Uint8Array(await new Response(stream).arrayBuffer());
      } catch (e) { /* fall through to stored blocks */ }
    }
    // zlib stream of stored (uncompressed) deflate blocks
    const nblocks = Math.max(1, Math.ceil(raw.length / 65535));
    const out = new Uint8Array(2 + raw.length + nblocks * 5 + 4);
    out[0] = 0x78; out[1] = 0x01;
    let o = 2;
    for (let i = 0; i < nblocks; i++) {
      const start = i * 65535, len = Math.min(65535, raw.length - start);
      out[o++] = i === nblocks - 1 ? 1 : 0;
      out[o++] = len & 0xff; out[o++] = len >>> 8;
      out[o++] = ~len & 0xff; out[o++] = (~len >>> 8) & 0xff;
      out.set(raw.subarray(start, start + len), o); o += len;
    }
    const ad = adler32(raw);
    out[o++] = ad >>> 24; out[o++] = (ad >>> 16) & 0xff; out[o++] = (ad >>> 8) & 0xff; out[o++] = ad & 0xff;
    return out;
  }
  function chunk(type, data) {
    const out = new Uint8Array(12 + data.length);
    const dv = new DataView(out.buffer);
    dv.setUint32(0, data.length);
    for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
    out.set(data, 8);
    dv.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
    return out;
  }
  // An 8-bit grayscale PNG whose pixel values are the class ids (the contest's label format).
  async function encodeGrayPNG(ids, w, h) {
    const raw = new Uint8Array((w + 1) * h);
    for (let y = 0; y < h; y++) {
      raw[y * (w + 1)] = 0;  // filter: none
      raw.set(ids.subarray(y * w, (y + 1) * w), y * (w + 1) + 1);
    }
    const ihdr = new Uint8Array(13);
    const dv = new DataView(ihdr.buffer);
    dv.setUint32(0, w); dv.setUint32(4, h);
    ihdr[8] = 8; ihdr[9] = 0; ihdr[10] = 0; ihdr[11] = 0; ihdr[12] = 0;
    const parts = [new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
      chunk("IHDR", ihdr), chunk("IDAT", await zlib(raw)), chunk("IEND", new Uint8Array(0))];
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let o = 0;
    for (const p of parts) { out.set(p, o); o += p.length; }
    return out;
  }

  // Nearest-neighbour resampling of an id map (pixel centres), as the server resizes labels.
  function resample(src, sw, sh, dw, dh) {
    if (sw === dw && sh === dh) return src;
    const out = new src.constructor(dw * dh);
    const xs = new Int32Array(dw);
    for (let x = 0; x < dw; x++) xs[x] = Math.min(sw - 1, Math.floor((x + 0.5) * sw / dw));
    for (let y = 0; y < dh; y++) {
      const sy = Math.min(sh - 1, Math.floor((y + 0.5) * sh / dh));
      const row = sy * sw, orow = y * dw;
      for (let x = 0; x < dw; x++) out[orow + x] = src[row + xs[x]];
    }
    return out;
  }

  // ---------- server calls ----------
  async function errorText(resp) {
    let msg = `${resp.status} ${resp.statusText}`.trim(), code = null;
    try {
      const body = await resp.json();
      if (body && body.error) { msg = `${body.error} (HTTP ${resp.status})`; code = body.code || null; }
    } catch (e) { /* not JSON: keep the status line */ }
    return { msg, code };
  }
  async function postJSON(path, body, signal) {
    let resp;
    try {
      resp = await fetch(path, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal,
      });
    } catch (e) {
      if (e.name === "AbortError") throw e;
      const err = new Error(`cannot reach the painter server (${e.message}); is it still running?`);
      err.network = true;
      throw err;
    }
    if (!resp.ok) {
      const { msg, code } = await errorText(resp);
      const err = new Error(msg);
      err.code = code; err.status = resp.status;
      throw err;
    }
    return resp;
  }
  function maxFileBytes() {
    // base64 (4/3) of the file, inside a JSON body, must stay under the server's body limit (/api/info)
    const body = state.info && state.info.limits && state.info.limits.max_body_bytes;
    return body ? Math.floor(body * 3 / 4) - 65536 : 4 * 1048576;
  }
  async function readFile(file, what) {
    const limit = maxFileBytes();
    if (file.size > limit) {
      throw new Error(`${what} ${file.name} is ${(file.size / 1048576).toFixed(1)} MB; at most ` +
        `${(limit / 1048576).toFixed(1)} MB is accepted`);
    }
    if (file.size === 0) throw new Error(`${what} ${file.name} is empty`);
    return new Uint8Array(await file.arrayBuffer());
  }

  // ---------- the label map ----------
  let ctx, imageData, pixels32, lut;
  function buildLut() {
    lut = new Uint32Array(256);  // unknown ids: black
    const little = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
    for (let i = 0; i < 256; i++) lut[i] = little ? 0xff000000 : 0x000000ff;
    for (const c of state.classes) {
      const [r, g, b] = c.color;
      lut[c.id] = little ? ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0 : ((r << 24) | (g << 16) | (b << 8) | 255) >>> 0;
    }
  }
  function redraw() {
    const ids = state.ids;
    for (let i = 0; i < ids.length; i++) pixels32[i] = lut[ids[i]];
    ctx.putImageData(imageData, 0, 0);
  }
  function queueRedraw() {
    if (state.frameQueued) return;
    state.frameQueued = true;
    requestAnimationFrame(() => { state.frameQueued = false; redraw(); });
  }
  function snapshot() {
    state.undo.push(state.ids.slice());
    if (state.undo.length > MAX_UNDO) state.undo.shift();
    state.redo = [];
    updateEditButtons();
  }
  function updateEditButtons() {
    el.undo.disabled = state.undo.length === 0;
    el.redo.disabled = state.redo.length === 0;
  }
  function changed(delay) {
    queueRedraw();
    scheduleRender(delay === undefined ? RENDER_DELAY_MS : delay);
  }
  // Undo and redo: move the current map onto one stack and take the other stack's top.
  function travel(from, to) {
    if (!from.length || state.drawing) return;
    to.push(state.ids);
    state.ids = from.pop();
    updateEditButtons();
    changed();
  }
  function undo() { travel(state.undo, state.redo); }
  function redo() { travel(state.redo, state.undo); }
  function paintClass() { return state.tool === "eraser" ? state.eraserCls : state.cls; }

  function stamp(cx, cy, cls) {
    const r = Number(el.brushSize.value) / 2, W = state.W, H = state.H, ids = state.ids;
    const x0 = Math.max(0, Math.floor(cx - r)), x1 = Math.min(W - 1, Math.ceil(cx + r));
    const y0 = Math.max(0, Math.floor(cy - r)), y1 = Math.min(H - 1, Math.ceil(cy + r));
    const r2 = Math.max(r * r, 0.5);
    for (let y = y0; y <= y1; y++) {
      const dy = y + 0.5 - cy;
      for (let x = x0; x <= x1; x++) {
        const dx = x + 0.5 - cx;
        if (dx * dx + dy * dy <= r2) ids[y * W + x] = cls;
      }
    }
  }
  function strokeTo(p) {
    const cls = paintClass(), a = state.last;
    const dist = Math.hypot(p.x - a.x, p.y - a.y);
    const step = Math.max(1, Number(el.brushSize.value) / 4);
    const n = Math.max(1, Math.ceil(dist / step));
    for (let i = 1; i <= n; i++) stamp(a.x + (p.x - a.x) * i / n, a.y + (p.y - a.y) * i / n, cls);
    state.last = p;
  }
  function floodFill(px, py, cls) {
    const W = state.W, H = state.H, ids = state.ids;
    const x0 = Math.floor(px), y0 = Math.floor(py);
    if (x0 < 0 || y0 < 0 || x0 >= W || y0 >= H) return false;
    const target = ids[y0 * W + x0];
    if (target === cls) return false;
    const stack = [x0, y0];
    while (stack.length) {
      const y = stack.pop(), x = stack.pop();
      let l = x, r = x;
      const row = y * W;
      if (ids[row + x] !== target) continue;
      while (l > 0 && ids[row + l - 1] === target) l--;
      while (r < W - 1 && ids[row + r + 1] === target) r++;
      for (let i = l; i <= r; i++) ids[row + i] = cls;
      for (const ny of [y - 1, y + 1]) {
        if (ny < 0 || ny >= H) continue;
        const nrow = ny * W;
        let inRun = false;
        for (let i = l; i <= r; i++) {
          const hit = ids[nrow + i] === target;
          if (hit && !inRun) stack.push(i, ny);
          inRun = hit;
        }
      }
    }
    return true;
  }
  function canvasPoint(ev) {
    const rect = el.canvas.getBoundingClientRect();
    return {
      x: (ev.clientX - rect.left) * state.W / rect.width,
      y: (ev.clientY - rect.top) * state.H / rect.height,
    };
  }
  function onPointerDown(ev) {
    if (!state.ids || ev.button !== 0) return;
    ev.preventDefault();
    const p = canvasPoint(ev);
    if (state.tool === "fill") {
      const before = state.ids.slice();
      if (floodFill(p.x, p.y, state.cls)) {
        state.undo.push(before);
        if (state.undo.length > MAX_UNDO) state.undo.shift();
        state.redo = [];
        updateEditButtons();
        changed(0);
      }
      return;
    }
    snapshot();
    state.drawing = true;
    state.last = p;
    stamp(p.x, p.y, paintClass());
    try { el.canvas.setPointerCapture(ev.pointerId); } catch (e) { /* synthetic events */ }
    changed();
  }
  function onPointerMove(ev) {
    if (!state.drawing) return;
    const events = ev.getCoalescedEvents ? ev.getCoalescedEvents() : [];
    for (const e of (events.length ? events : [ev])) strokeTo(canvasPoint(e));
    changed();
  }
  function onPointerUp() {
    if (!state.drawing) return;
    state.drawing = false;
    changed();
  }

  // ---------- rendering ----------
  function modelLabel() {
    return resample(state.ids, state.W, state.H, state.modelW, state.modelH);
  }
  // body[data-render]: pending (debouncing) | rendering | idle (the newest result is shown) | error
  function setRenderState(s) { document.body.dataset.render = s; }
  function scheduleRender(delay) {
    clearTimeout(state.timer);
    state.timerPending = true;
    setRenderState("pending");
    state.timer = setTimeout(() => { state.timerPending = false; render(); }, delay);
  }
  async function render(retried) {
    const seq = ++state.seq;  // responses to older requests are dropped
    if (state.inflight) state.inflight.abort();
    const ctrl = new AbortController();
    state.inflight = ctrl;
    el.renderInfo.textContent = "rendering…";
    setRenderState("rendering");
    const t0 = performance.now();
    try {
      const png = await encodeGrayPNG(modelLabel(), state.modelW, state.modelH);
      if (seq !== state.seq) return;
      const body = { label: toBase64(png), seed: state.seed };
      if (state.styleId) body.style_id = state.styleId;
      if (state.clipStyle !== null) body.clip_style = state.clipStyle;
      else if (state.clipText) body.clip_text = state.clipText;
      const resp = await postJSON("/api/render", body, ctrl.signal);
      const neighbours = resp.headers.get("X-Clip-Neighbours");
      if (neighbours) {
        el.clipInfo.textContent = "Prompt projected onto the training images " + neighbours.split(",").map((n) => {
          const [stem, w] = n.split(":");
          return `${decodeURIComponent(stem)} (${Number(w).toFixed(2)})`;
        }).join(", ");
      }
      const blob = await resp.blob();
      if (seq !== state.seq) return;
      const serverMs = resp.headers.get("X-Render-Ms");
      const url = URL.createObjectURL(blob);
      el.result.onload = () => {
        if (seq !== state.seq) return;
        state.renderCount += 1;
        el.result.dataset.renderCount = String(state.renderCount);
        el.result.dataset.seed = String(body.seed);
        el.result.dataset.style = body.style_id || "";
        el.result.dataset.clip = body.clip_style !== undefined ? `style ${body.clip_style}` :
          (body.clip_text ? `text ${body.clip_text}` : "");
        const total = performance.now() - t0;
        el.renderInfo.textContent = `${state.modelW}×${state.modelH}, seed ${body.seed}` +
          (state.styleName ? `, style of ${state.styleName}` : "") +
          ` — model ${serverMs ? Number(serverMs).toFixed(0) : "?"} ms, round trip ${total.toFixed(0)} ms`;
        if (state.statusSource === "render") setStatus("ok", "Rendering works again.", null);
        if (!state.timerPending) setRenderState("idle");
      };
      el.result.onerror = () => {
        if (seq !== state.seq) return;
        showError("the server's rendering could not be displayed (not a valid image)", "render");
        if (!state.timerPending) setRenderState("error");
      };
      el.result.src = url;
      el.download.href = url;
      el.download.download = `jspade_seed${body.seed}.png`;
      el.download.classList.remove("disabled");
      el.download.removeAttribute("aria-disabled");
      if (state.resultUrl) URL.revokeObjectURL(state.resultUrl);
      state.resultUrl = url;
    } catch (e) {
      if (e.name === "AbortError" || seq !== state.seq) return;
      if (e.code === "unknown_style" && state.styleB64 && !retried) {
        // The server restarted and forgot the style: upload it again, then render.
        try {
          await uploadStyle(state.styleB64, state.styleName);
          return render(true);
        } catch (e2) { e = e2; }
      }
      el.renderInfo.textContent = "render failed";
      showError(`Render failed: ${e.message}`, "render");
      if (!state.timerPending) setRenderState("error");
    } finally {
      if (state.inflight === ctrl) state.inflight = null;
    }
  }

  // ---------- style ----------
  async function uploadStyle(b64, name) {
    const resp = await postJSON("/api/style", { image: b64 });
    const out = await resp.json();
    state.styleId = out.style_id;
    state.styleB64 = b64;
    state.styleName = name;
    return out;
  }
  async function onStyleFile() {
    const file = el.styleFile.files[0];
    el.styleFile.value = "";
    if (!file) return;
    setStatus("busy", `Uploading style image ${file.name}…`, "style");
    try {
      const bytes = await readFile(file, "style image");
      const out = await uploadStyle(toBase64(bytes), file.name);
      el.styleThumb.src = `data:${file.type || "image/png"};base64,${state.styleB64}`;
      el.styleThumb.hidden = false;
      el.styleName.textContent = `${file.name} (${out.width}×${out.height})`;
      el.clearStyle.disabled = false;
      setStatus("ok", `Style image ${file.name} encoded; rendering with its style.`, "style");
      scheduleRender(0);
    } catch (e) {
      showError(`Style upload failed: ${e.message}`, "style");
    }
  }
  function clearStyle() {
    state.styleId = null; state.styleB64 = null; state.styleName = "";
    el.styleThumb.hidden = true;
    el.styleThumb.removeAttribute("src");
    el.styleName.textContent = "no style image";
    el.clearStyle.disabled = true;
    setStatus("info", "Style image removed: random style from the seed.", "style");
    scheduleRender(0);
  }
  // ---------- a CLIP model's style ----------
  function selectClipStyle(index) {
    state.clipStyle = index;
    state.clipText = null;
    for (const b of el.clipStyles.children) {
      b.setAttribute("aria-checked", String(b.dataset.index === String(index === null ? "mean" : index)));
    }
    el.clipInfo.textContent = index === null ? "No CLIP style: the training set's mean." :
      `Style bank centre ${index}.`;
    scheduleRender(0);
  }
  function onClipText(ev) {
    ev.preventDefault();
    const text = el.clipText.value.trim();
    if (!text) { selectClipStyle(null); return; }
    state.clipText = text;
    state.clipStyle = null;
    for (const b of el.clipStyles.children) b.setAttribute("aria-checked", "false");
    el.clipInfo.textContent = `Prompt: ${text}`;
    scheduleRender(0);
  }
  async function startClip(info) {
    if (!info.clip || !info.clip.supported) return;
    el.clipControls.hidden = false;
    el.clipTextForm.hidden = !info.clip.text;
    el.clipTextForm.addEventListener("submit", onClipText);
    let centres = [];
    try {
      const resp = await fetch("/api/clip/styles");
      if (!resp.ok) throw new Error((await errorText(resp)).msg);
      centres = (await resp.json()).centres;
    } catch (e) {
      showError(`Cannot load the style bank: ${e.message}`, "clip");
    }
    const add = (index, text, title, thumbnail) => {
      const b = document.createElement("button");
      b.type = "button";
      b.setAttribute("role", "radio");
      b.setAttribute("aria-checked", String(index === null));
      b.dataset.index = index === null ? "mean" : String(index);
      b.title = title;
      if (thumbnail) {
        const img = document.createElement("img");
        img.src = thumbnail;
        img.alt = "";
        b.appendChild(img);
      }
      b.appendChild(document.createTextNode(text));
      b.addEventListener("click", () => selectClipStyle(index));
      el.clipStyles.appendChild(b);
    };
    add(null, "mean", "no style: the training set's mean embedding", null);
    for (const c of centres) {
      add(c.index, `${c.index} (${c.count})`, `centre ${c.index}: ${c.count} training images, medoid ${c.medoid}`,
        c.thumbnail);
    }
    el.clipInfo.textContent = info.clip.text ? "Pick a style, or describe one." :
      "Pick a style (start the painter with --clip-weights for text prompts and photos through CLIP).";
  }

  function setSeed(seed) {
    state.seed = seed;
    el.seed.value = String(seed);
    scheduleRender(0);
  }

  // ---------- label files ----------
  async function onLabelFile() {
    const file = el.labelFile.files[0];
    el.labelFile.value = "";
    if (!file) return;
    setStatus("busy", `Loading label ${file.name}…`, "label");
    try {
      const bytes = await readFile(file, "label");
      const resp = await postJSON("/api/label/import", { label: toBase64(bytes) });
      const out = await resp.json();
      let ids = fromBase64(out.ids);
      if (out.dtype === "uint16") {
        const dv = new DataView(ids.buffer), wide = new Uint16Array(ids.length / 2);
        for (let i = 0; i < wide.length; i++) wide[i] = dv.getUint16(2 * i, true);
        ids = wide;
      }
      const fitted = Uint8Array.from(resample(ids, out.width, out.height, state.W, state.H));
      snapshot();
      state.ids = fitted;
      changed(0);
      const stretched = Math.abs(out.width / out.height - state.W / state.H) > 0.01;
      const names = out.classes.map((id) => (state.classes[id] || { name: String(id) }).name);
      setStatus("ok", `Loaded ${file.name} (${out.width}×${out.height}${stretched ? ", stretched to the model's aspect ratio" : ""}): ` +
        names.join(", "), "label");
    } catch (e) {
      showError(`Loading the label failed: ${e.message}`, "label");
    }
  }
  async function saveLabel() {
    try {
      const png = await encodeGrayPNG(state.ids, state.W, state.H);
      const url = URL.createObjectURL(new Blob([png], { type: "image/png" }));
      const a = document.createElement("a");
      a.href = url;
      a.download = "label.png";
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
      setStatus("ok", `Saved label.png (${state.W}×${state.H}, 8-bit grayscale class ids).`, "label");
    } catch (e) {
      showError(`Saving the label failed: ${e.message}`, "label");
    }
  }

  // ---------- UI ----------
  function selectClass(id) {
    state.cls = id;
    for (const b of el.palette.children) b.setAttribute("aria-pressed", String(Number(b.dataset.id) === id));
    const c = state.classes[id];
    el.currentClass.replaceChildren();
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = `rgb(${c.color.join(",")})`;
    el.currentClass.append("— ", sw, `${c.name} (${c.id})`);
    if (state.tool === "eraser") setTool("brush");
  }
  function setTool(tool) {
    state.tool = tool;
    for (const r of document.querySelectorAll('input[name="tool"]')) r.checked = r.value === tool;
  }
  function setBrush(size) {
    size = Math.max(1, Math.min(128, size));
    el.brushSize.value = String(size);
    el.brushSizeValue.textContent = String(size);
  }
  function buildPalette() {
    el.palette.replaceChildren();
    el.eraserClass.replaceChildren();
    for (const c of state.classes) {
      const b = document.createElement("button");
      b.type = "button";
      b.dataset.id = String(c.id);
      b.title = `${c.name} (id ${c.id})`;
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = `rgb(${c.color.join(",")})`;
      b.append(sw, c.name);
      b.addEventListener("click", () => selectClass(c.id));
      el.palette.append(b);
      const o = document.createElement("option");
      o.value = String(c.id);
      o.textContent = c.name;
      el.eraserClass.append(o);
    }
  }
  function initialScene() {
    const ids = new Uint8Array(state.W * state.H).fill(state.eraserCls);
    const byName = Object.fromEntries(state.classes.map((c) => [c.name, c.id]));
    if ("sky" in byName && "grass" in byName) {
      const horizon = Math.round(state.H * 0.6);
      ids.fill(byName.sky, 0, horizon * state.W);
      ids.fill(byName.grass, horizon * state.W);
    }
    return ids;
  }
  function onKey(ev) {
    const tag = (ev.target && ev.target.tagName) || "";
    if (["INPUT", "SELECT", "TEXTAREA"].includes(tag) && ev.target.type !== "range" && ev.target.type !== "radio") return;
    const mod = ev.ctrlKey || ev.metaKey;
    const k = ev.key.toLowerCase();
    if (mod && k === "z") { ev.preventDefault(); ev.shiftKey ? redo() : undo(); }
    else if (mod && k === "y") { ev.preventDefault(); redo(); }
    else if (mod) return;
    else if (k === "b") setTool("brush");
    else if (k === "f") setTool("fill");
    else if (k === "e") setTool("eraser");
    else if (k === "[") setBrush(Number(el.brushSize.value) - 4);
    else if (k === "]") setBrush(Number(el.brushSize.value) + 4);
  }

  function wire() {
    el.canvas.addEventListener("pointerdown", onPointerDown);
    el.canvas.addEventListener("pointermove", onPointerMove);
    el.canvas.addEventListener("pointerup", onPointerUp);
    el.canvas.addEventListener("pointercancel", onPointerUp);
    el.canvas.addEventListener("lostpointercapture", onPointerUp);
    for (const r of document.querySelectorAll('input[name="tool"]')) r.addEventListener("change", () => setTool(r.value));
    el.brushSize.addEventListener("input", () => setBrush(Number(el.brushSize.value)));
    el.eraserClass.addEventListener("change", () => { state.eraserCls = Number(el.eraserClass.value); });
    el.undo.addEventListener("click", undo);
    el.redo.addEventListener("click", redo);
    el.clear.addEventListener("click", () => { snapshot(); state.ids.fill(state.eraserCls); changed(0); });
    el.labelFile.addEventListener("change", onLabelFile);
    el.saveLabel.addEventListener("click", saveLabel);
    el.styleFile.addEventListener("change", onStyleFile);
    el.clearStyle.addEventListener("click", clearStyle);
    el.randomStyle.addEventListener("click", () => setSeed(Math.floor(Math.random() * 2147483647)));
    el.seed.addEventListener("change", () => {
      const v = Number(el.seed.value);
      if (!Number.isInteger(v) || v < 0 || v > 2147483647) {
        showError(`Seed must be a whole number within 0..2147483647, got ${el.seed.value}`, "seed");
        el.seed.value = String(state.seed);
        return;
      }
      setSeed(v);
    });
    document.addEventListener("keydown", onKey);
    window.addEventListener("unhandledrejection", (ev) => showError(`Unexpected error: ${ev.reason}`));
    window.addEventListener("error", (ev) => showError(`Unexpected error: ${ev.message}`));
  }

  async function start() {
    let info;
    try {
      const resp = await fetch("/api/info");
      if (!resp.ok) throw new Error((await errorText(resp)).msg);
      info = await resp.json();
    } catch (e) {
      el.modelInfo.textContent = "no server";
      showError(`Cannot load the model information from the painter server: ${e.message}`);
      return;
    }
    state.info = info;
    state.classes = info.classes;
    if (info.num_ids > 256) {
      showError(`This model has ${info.num_ids} classes; the painter handles at most 256.`);
      return;
    }
    state.modelW = info.model_size.width;
    state.modelH = info.model_size.height;
    state.W = Math.min(2048, Math.max(PAINT_WIDTH, state.modelW));
    state.H = Math.max(1, Math.round(state.W * state.modelH / state.modelW));
    el.canvas.width = state.W;
    el.canvas.height = state.H;
    el.resultFrame.style.aspectRatio = `${state.modelW} / ${state.modelH}`;
    ctx = el.canvas.getContext("2d");
    imageData = ctx.createImageData(state.W, state.H);
    pixels32 = new Uint32Array(imageData.data.buffer);
    buildLut();
    buildPalette();
    state.eraserCls = info.background_class;
    el.eraserClass.value = String(state.eraserCls);
    const byName = Object.fromEntries(state.classes.map((c) => [c.name, c.id]));
    selectClass("mountain" in byName ? byName.mountain : 0);
    setBrush(Number(el.brushSize.value));
    state.ids = initialScene();
    wire();
    updateEditButtons();
    redraw();
    el.modelInfo.textContent = `checkpoint ${info.checkpoint} · model ${state.modelW}×${state.modelH} · ` +
      `${info.num_ids} classes · painting at ${state.W}×${state.H}` +
      (info.timing && info.timing.median_ms ? ` · render ≈ ${Math.round(info.timing.median_ms)} ms` : "");
    if (!info.style_supported) {
      for (const b of [el.randomStyle, el.clearStyle, el.seed]) b.disabled = true;
      el.styleFile.disabled = true;
      document.querySelector('label[for="style-file"]').classList.add("disabled");
      el.styleNote.textContent = "This checkpoint has no style encoder (trained without the VAE): the style " +
        "comes from the label alone, so seeds and style images do not apply.";
    }
    await startClip(info);
    setStatus("info", "Ready: pick a class and paint. Ctrl+Z undoes, Ctrl+Shift+Z redoes.");
    scheduleRender(0);
  }

  start();
})();
