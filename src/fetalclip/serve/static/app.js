// The page of `fetalclip serve`: one scan in, its answer drawn. Plain JavaScript, no build step, no CDN.
// Everything shown comes from the service's JSON: /v1/predict (the answer), /v1/explain (the scan as the model
// sees it and its Grad-CAM), /v1/growth/hc (the WHO chart), /v1/model (the model line).
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  const KEY_STORE = "fetalclip-api-key";
  let chart = null; // the WHO curves, fetched once
  let camGrid = null;

  function setState(state) { document.body.dataset.state = state; }

  function headers() {
    const key = $("key-input").value.trim();
    return key ? { "X-API-Key": key } : {};
  }

  async function api(path, options) {
    const response = await fetch(path, Object.assign({ headers: headers() }, options || {}));
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok) {
      if (response.status === 401) { $("key-box").open = true; }
      const message = body && body.error ? body.error : "the service answered " + response.status;
      const error = new Error(message);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  function svg(tag, attributes, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function percent(p) { return (100 * p).toFixed(1) + "%"; }

  function showError(message) {
    const box = $("error");
    box.textContent = message;
    box.hidden = !message;
  }

  // -- the model line -------------------------------------------------------------------------------------
  async function loadModel() {
    try {
      const info = await api("/v1/model");
      const calibration = info.calibration ? "calibrated" : "uncalibrated (raw zero-shot softmax)";
      const licence = info.licence ? ", weights licence " + info.licence : "";
      $("model-line").textContent = info.model + " (weights " + info.fingerprint.slice(0, 12) + licence + "), " + calibration;
    } catch (error) {
      $("model-line").textContent = error.status === 401 ? "an API key is needed: enter it below" : "model: " + error.message;
    }
  }

  // -- plane probabilities as bars ------------------------------------------------------------------------
  function drawPlaneChart(plane) {
    const box = $("plane-chart");
    box.textContent = "";
    const rows = Object.entries(plane.probabilities).sort((a, b) => b[1] - a[1]);
    const rowHeight = 26, labelWidth = 110, barWidth = 300, width = labelWidth + barWidth + 70;
    const root = svg("svg", { viewBox: "0 0 " + width + " " + rows.length * rowHeight, "data-plane": plane.label });
    rows.forEach(([name, p], i) => {
      const y = i * rowHeight;
      root.appendChild(svg("text", { x: labelWidth - 8, y: y + 17, "text-anchor": "end", class: "chart-text" }, name));
      const bar = svg("rect", { x: labelWidth, y: y + 5, height: rowHeight - 10, width: Math.max(1, p * barWidth),
                                class: name === plane.label ? "bar top" : "bar" });
      bar.appendChild(svg("title", {}, name + ": " + percent(p)));
      root.appendChild(bar);
      root.appendChild(svg("text", { x: labelWidth + p * barWidth + 6, y: y + 17, class: "chart-text" }, percent(p)));
    });
    box.setAttribute("aria-label", "Plane probabilities: " + rows.map(([n, p]) => n + " " + percent(p)).join(", "));
    box.appendChild(root);
  }

  // -- the WHO head-circumference chart with the age -----------------------------------------------------
  async function drawAgeChart(age, hcMm) {
    const box = $("ga-chart");
    box.textContent = "";
    if (!chart) chart = await api("/v1/growth/hc");
    const W = 600, H = 330, left = 48, right = 12, top = 26, bottom = 36;
    const weeks = chart.weeks, low = chart.centiles["0.025"], mid = chart.centiles["0.5"], high = chart.centiles["0.975"];
    const x0 = weeks[0], x1 = weeks[weeks.length - 1];
    const y0 = 50, y1 = Math.ceil(Math.max(...high) / 50) * 50;
    const X = (w) => left + (w - x0) / (x1 - x0) * (W - left - right);
    const Y = (mm) => H - bottom - (mm - y0) / (y1 - y0) * (H - top - bottom);
    const root = svg("svg", { viewBox: "0 0 " + W + " " + H });
    root.appendChild(svg("line", { x1: left, y1: H - bottom, x2: W - right, y2: H - bottom, class: "axis" }));
    root.appendChild(svg("line", { x1: left, y1: top, x2: left, y2: H - bottom, class: "axis" }));
    for (let w = 15; w <= x1; w += 5) {
      root.appendChild(svg("text", { x: X(w), y: H - bottom + 16, "text-anchor": "middle", class: "chart-text" }, String(w)));
    }
    for (let mm = 100; mm <= y1; mm += 100) {
      root.appendChild(svg("text", { x: left - 6, y: Y(mm) + 4, "text-anchor": "end", class: "chart-text" }, String(mm)));
    }
    root.appendChild(svg("text", { x: (W + left) / 2, y: H - 4, "text-anchor": "middle", class: "chart-text" }, "gestational age (weeks)"));
    root.appendChild(svg("text", { x: 4, y: 14, class: "chart-text" }, "head circumference (mm)"));
    if (age.range_days) {
      const a = X(age.range_days[0] / 7), b = X(age.range_days[1] / 7);
      root.appendChild(svg("rect", { x: a, y: top, width: Math.max(2, b - a), height: H - top - bottom, class: "ga-band" }));
    }
    [[low, "centile"], [mid, "centile median"], [high, "centile"]].forEach(([values, cls]) => {
      const points = weeks.map((w, i) => X(w).toFixed(1) + "," + Y(values[i]).toFixed(1)).join(" ");
      root.appendChild(svg("polyline", { points: points, class: cls }));
    });
    const ga = age.days / 7;
    root.appendChild(svg("line", { x1: X(ga), y1: top, x2: X(ga), y2: H - bottom, class: "ga-line" }));
    if (hcMm) root.appendChild(svg("circle", { cx: X(ga), cy: Y(hcMm), r: 5, class: "hc-point" }));
    box.setAttribute("aria-label", "WHO head circumference chart (2.5th, 50th, 97.5th centiles) with the estimated age "
      + age.weeks_days + (age.range_weeks_days ? ", range " + age.range_weeks_days.join(" to ") : ""));
    box.appendChild(root);
  }

  // -- the scan and its Grad-CAM --------------------------------------------------------------------------
  function drawScan(dataUrl) {
    return new Promise((resolve) => {
      const image = new Image();
      image.onload = () => {
        const canvas = $("scan-canvas");
        canvas.getContext("2d").drawImage(image, 0, 0, canvas.width, canvas.height);
        resolve();
      };
      image.onerror = () => resolve();
      image.src = dataUrl;
    });
  }

  function heat(v) { // a blue -> green -> red ramp; strong evidence opaque, weak transparent
    const r = Math.round(255 * Math.min(1, Math.max(0, 2 * v - 0.5)));
    const g = Math.round(255 * Math.max(0, 1 - Math.abs(2 * v - 1)));
    const b = Math.round(255 * Math.min(1, Math.max(0, 1.5 - 2 * v)));
    return [r, g, b, Math.round(180 * v)];
  }

  function drawCam(grid) {
    const rows = grid.length, cols = grid[0].length;
    const small = document.createElement("canvas");
    small.width = cols; small.height = rows;
    const context = small.getContext("2d");
    const pixels = context.createImageData(cols, rows);
    grid.forEach((row, y) => row.forEach((v, x) => pixels.data.set(heat(v), 4 * (y * cols + x))));
    context.putImageData(pixels, 0, 0);
    const canvas = $("cam-canvas");
    const target = canvas.getContext("2d");
    target.clearRect(0, 0, canvas.width, canvas.height);
    target.imageSmoothingEnabled = true;
    target.drawImage(small, 0, 0, canvas.width, canvas.height);
  }

  async function explain(file, frame) {
    const form = new FormData();
    form.append("file", file);
    form.append("frame", String(frame));
    try {
      const result = await api("/v1/explain", { method: "POST", body: form });
      await drawScan(result.image);
      drawEllipse(shownBiometry, result.original_size);
      camGrid = result.cam;
      drawCam(camGrid);
      $("cam-toggle").disabled = false;
      $("cam-canvas").hidden = !$("cam-toggle").checked;
    } catch (error) {
      $("frame-line").textContent = "no scan preview: " + error.message;
    }
  }

  // -- biometry (when a segmenter is loaded) -------------------------------------------------------------
  let shownBiometry = null;

  function biometryOf(scan) {
    return scan.biometry || scan.head_biometry || scan.head_measurement || null;
  }

  function drawBiometry(bio) {
    shownBiometry = bio;
    const list = $("biometry-list");
    list.textContent = "";
    $("ellipse-layer").textContent = "";
    if (!bio) { $("biometry-box").hidden = true; return; }
    const mm = (v) => (v === undefined || v === null ? null : Number(v).toFixed(1) + " mm");
    const rows = [["HC", mm(bio.hc_mm)], ["BPD", mm(bio.bpd_mm)], ["OFD", mm(bio.ofd_mm)],
      ["GA from HC (WHO)", bio.ga_who_weeks_days || null],
      ["HC centile (WHO)", bio.hc_percentile === undefined || bio.hc_percentile === null ? null : Number(bio.hc_percentile).toFixed(0)],
      ["Note", bio.reason || (bio.quality && bio.quality.ok === false ? "ellipse fit is poor: " + (bio.quality.reason || "") : null)]];
    rows.forEach(([name, value]) => {
      if (value === null) return;
      list.appendChild(Object.assign(document.createElement("dt"), { textContent: name }));
      list.appendChild(Object.assign(document.createElement("dd"), { textContent: value }));
    });
    $("biometry-box").hidden = list.childElementCount === 0;
  }

  // Probe heads (saved linear probes loaded with the model): each head's top class.
  function drawHeads(heads) {
    const box = $("heads-box"), list = $("heads-list");
    list.textContent = "";
    Object.entries(heads || {}).forEach(([name, head]) => {
      const p = head.probabilities && head.probabilities[head.label];
      list.appendChild(Object.assign(document.createElement("dt"), { textContent: name }));
      list.appendChild(Object.assign(document.createElement("dd"), { textContent: head.label + (p === undefined ? "" : " (" + percent(p) + ")") }));
    });
    box.hidden = list.childElementCount === 0;
  }

  // The fitted ellipse (centre, semi-axes a >= b, angle in radians; pixels of the original image) drawn on the
  // square model image: the original is centred in a square of its longer side, then scaled to the canvas.
  function drawEllipse(bio, originalSize) {
    const layer = $("ellipse-layer");
    layer.textContent = "";
    const e = bio && bio.ellipse;
    if (!e || !originalSize || e.a === undefined) return;
    const [width, height] = originalSize, side = Math.max(width, height), scale = 448 / side;
    const cx = (e.cx + (side - width) / 2) * scale, cy = (e.cy + (side - height) / 2) * scale;
    layer.appendChild(svg("ellipse", { cx: cx, cy: cy, rx: e.a * scale, ry: e.b * scale,
      transform: "rotate(" + (e.angle || 0) * 180 / Math.PI + " " + cx + " " + cy + ")",
      fill: "none", stroke: "#ffd400", "stroke-width": 2 }));
  }

  // -- one answer -----------------------------------------------------------------------------------------
  async function renderScan(scan) {
    const plane = scan.plane;
    $("plane-line").textContent = plane.label + " (" + percent(plane.probability) + ")";
    const standard = $("standard-line");
    standard.textContent = "";
    if (plane.standard_plane === false) {
      standard.appendChild(Object.assign(document.createElement("span"), { className: "badge warn", textContent: "not a standard plane" }));
    } else if (plane.standard_plane === true) {
      standard.appendChild(Object.assign(document.createElement("span"), { className: "badge ok", textContent: "standard plane" }));
    }
    $("calibration-line").textContent = plane.calibrated
      ? "calibrated probabilities" + (plane.prediction_set ? "; " + percent(plane.coverage) + " set: " + plane.prediction_set.join(", ") : "")
      : "uncalibrated: raw zero-shot softmax, not a probability";
    drawPlaneChart(plane);
    $("brain-box").hidden = !scan.brain_plane;
    if (scan.brain_plane) $("brain-line").textContent = scan.brain_plane.label;
    const bio = biometryOf(scan);
    drawBiometry(bio);
    drawHeads(scan.heads);
    const age = scan.gestational_age;
    $("age-box").hidden = !age;
    if (age) {
      $("age-line").textContent = age.days !== null
        ? age.weeks_days + (age.range_weeks_days ? " (range " + age.range_weeks_days.join(" to ") + ")" : "")
        : age.reason;
      if (age.days !== null) await drawAgeChart(age, bio && bio.hc_mm); else $("ga-chart").textContent = "";
    }
    const notes = $("notes");
    notes.textContent = "";
    [plane.reason, ...(scan.notes || [])].filter(Boolean).forEach((text) => {
      notes.appendChild(Object.assign(document.createElement("li"), { textContent: text }));
    });
  }

  function renderSweep(answer) {
    const body = $("sweep-table").querySelector("tbody");
    body.textContent = "";
    Object.entries(answer.best_frames).forEach(([plane, best]) => {
      const row = document.createElement("tr");
      [plane, String(best.frame), percent(best.probability)].forEach((text) => {
        row.appendChild(Object.assign(document.createElement("td"), { textContent: text }));
      });
      body.appendChild(row);
    });
    $("sweep-box").hidden = false;
  }

  function addClipHeads(heads) { // a sweep's clip heads, after the shown frame's own
    if (!heads) return;
    const merged = {};
    Object.entries(heads).forEach(([name, head]) => { merged[name + " (whole loop)"] = head; });
    const list = $("heads-list");
    const before = list.innerHTML;
    drawHeads(merged);
    list.insertAdjacentHTML("afterbegin", before);
    $("heads-box").hidden = list.childElementCount === 0;
  }

  // The frame to show for a sweep: the best head frame, else the most confident best frame, else the first.
  function shownFrame(answer) {
    const best = Object.entries(answer.best_frames);
    if (answer.best_frames.brain) return answer.best_frames.brain.frame;
    if (!best.length) return 0;
    return best.sort((a, b) => b[1].probability - a[1].probability)[0][1].frame;
  }

  async function answerFor(file) {
    showError("");
    setState("busy");
    $("submit-button").disabled = true;
    $("status").textContent = "reading " + file.name + "\u2026";
    const form = new FormData();
    form.append("file", file);
    const spacing = $("spacing-input").value.trim();
    if (spacing) form.append("spacing_mm", spacing);
    try {
      const answer = await api("/v1/predict", { method: "POST", body: form });
      $("raw-json").textContent = JSON.stringify(answer, null, 2);
      $("results").hidden = false;
      $("cam-toggle").disabled = true;
      $("sweep-box").hidden = true;
      let frame = 0;
      if (answer.frames) {
        renderSweep(answer);
        frame = shownFrame(answer);
        if (answer.head) await renderScan(answer.head); else renderFrameOnly(answer.frames[frame]);
        addClipHeads(answer.heads);
        $("frame-line").textContent = "frame " + frame + " of " + answer.frames.length;
      } else {
        await renderScan(answer);
        $("frame-line").textContent = "";
      }
      $("status").textContent = "answered: " + file.name;
      setState("answered");
      $("results").focus();
      await explain(file, frame);
    } catch (error) {
      showError(error.message);
      $("status").textContent = "";
      setState("error");
    } finally {
      $("submit-button").disabled = false;
    }
  }

  function renderFrameOnly(frame) { // a sweep with no head frame: the shown frame's plane, without probabilities
    $("plane-line").textContent = frame.plane + " (" + percent(frame.probability) + ")";
    $("plane-chart").textContent = "";
    $("standard-line").textContent = frame.standard_plane === false ? "not a standard plane" : "";
    $("age-box").hidden = true;
    $("brain-box").hidden = true;
    drawBiometry(null);
    drawHeads(null);
  }

  // -- wiring ---------------------------------------------------------------------------------------------
  function init() {
    const keyInput = $("key-input");
    keyInput.value = sessionStorage.getItem(KEY_STORE) || "";
    keyInput.addEventListener("change", () => { sessionStorage.setItem(KEY_STORE, keyInput.value.trim()); loadModel(); });
    const input = $("file-input");
    input.addEventListener("change", () => { if (input.files.length) answerFor(input.files[0]); });
    $("scan-form").addEventListener("submit", (event) => {
      event.preventDefault();
      if (input.files.length) answerFor(input.files[0]); else showError("choose a scan first");
    });
    const zone = $("drop-zone");
    ["dragenter", "dragover"].forEach((name) => zone.addEventListener(name, (event) => { event.preventDefault(); zone.classList.add("over"); }));
    ["dragleave", "drop"].forEach((name) => zone.addEventListener(name, () => zone.classList.remove("over")));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      if (event.dataTransfer.files.length) answerFor(event.dataTransfer.files[0]);
    });
    $("cam-toggle").addEventListener("change", () => { $("cam-canvas").hidden = !$("cam-toggle").checked || !camGrid; });
    setState("ready");
    loadModel();
  }

  document.addEventListener("DOMContentLoaded", init);
})();
