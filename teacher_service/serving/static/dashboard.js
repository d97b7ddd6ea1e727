"use strict";
// The dashboard: polls the inspection API every few seconds. Charts are uPlot (vendored, see
// vendor/uplot/VERSION); maze cells, task pairs and the Adroit top view are drawn on <canvas>.

const params = new URLSearchParams(location.search);
// Within 10 ms and a day: a browser's timer wraps beyond 2^31 ms and would fire at once.
const REFRESH_MS = 1000 * Math.min(Math.max(Number(params.get("refresh")) || 5, 0.01), 86400);
// A refresh reads whole-history aggregates, so it costs the service more as a run grows (about 0.4 s of its CPU
// at 80,000 episodes, bench/dashboard_load.py): the next one waits at least SLOWDOWN times as long as the last
// took, so an open page never takes more than about 1/SLOWDOWN of the service.
const SLOWDOWN = 20;
const BUCKETS = 40; // stretches of time the sliders step through
const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
const GRAD_SIGNALS = ["grad_norm_mean", "grad_norm_episode", "critic_grad_norm_mean", "critic_grad_norm_episode"];
const $ = (id) => document.getElementById(id);

function chartBox(id, title) {
  const el = Object.assign(document.createElement("div"), { id, className: "chart small" });
  el.dataset.title = title;
  return el;
}

// The token comes once in the address (#token=, which browsers never send, or ?token=) and then leaves
// it, or from the form; localStorage keeps it.
const fragment = new URLSearchParams(location.hash.slice(1));
const given = fragment.get("token") || params.get("token");
if (given) {
  localStorage.setItem("teacherToken", given);
  params.delete("token");
  history.replaceState(null, "", location.pathname + (params.size ? "?" + params : ""));
}

class Unauthorized extends Error {}

async function request(path, accept = "application/json") {
  // Without a token the request goes without one: a service run with --insecure answers it, any other says 401.
  const token = localStorage.getItem("teacherToken");
  const headers = token ? { Authorization: "Bearer " + token, Accept: accept } : { Accept: accept };
  const response = await fetch(path, { headers });
  if (response.status === 401) throw new Unauthorized();
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response;
}

const api = async (path) => (await request(path)).json();

async function download(filename, text) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
  link.download = filename;
  link.click();
  URL.revokeObjectURL(link.href);
}

// ---------------------------------------------------------------- charts (uPlot)

const charts = new Map(); // element id -> {plot, signature}

// Points [[x, y]] of several lines onto one sorted x axis, null where a line has no value.
function align(lines) {
  const xs = [...new Set(lines.flatMap((l) => l.points.map((p) => p[0])))].sort((a, b) => a - b);
  const at = (pairs) => { const m = new Map(pairs); return xs.map((x) => (m.has(x) ? m.get(x) : null)); };
  return { xs, at };
}

// lines: [{label, color, points: [[x, y]], band?: [[x, low, high]], dash?: [on, off]}]; kind "bars" for histograms;
// xRange: a fixed [min, max] of the x axis (a histogram's whole range).
function drawChart(id, lines, { xLabel = "", yLabel = "", kind = "line", height = 220, xRange = null } = {}) {
  const el = $(id);
  const { xs, at } = align(lines);
  const series = [{ label: xLabel }];
  const data = [xs];
  const bands = [], mainIndex = []; // series index of each line's own values (bands sit between them)
  lines.forEach((line) => {
    mainIndex.push(series.length);
    series.push({
      label: line.label, stroke: line.color, width: kind === "bars" ? 1 : 2, spanGaps: true, dash: line.dash,
      fill: kind === "bars" ? line.color + "99" : undefined,
      paths: kind === "bars" ? uPlot.paths.bars({ size: [0.9, 60] }) : undefined,
      points: { show: kind !== "bars" && xs.length < 60, size: 5 },
    });
    data.push(at(line.points));
    if (line.band) {
      for (const k of [1, 2]) {
        series.push({ label: `${line.label} ${k === 1 ? "min" : "max"}`, stroke: "transparent", spanGaps: true,
          points: { show: false } });
        data.push(at(line.band.map((b) => [b[0], b[k]])));
      }
      bands.push({ series: [series.length - 1, series.length - 2], fill: line.color + "33" });
    }
  });
  el.dataset.points = lines.reduce((n, l) => n + l.points.filter((p) => p[1] !== null).length, 0);
  el.dataset.series = lines.map((l) => l.label).join("\n");
  el.dataset.yLabel = yLabel;
  const signature = JSON.stringify([series.map((s) => s.label + s.stroke), kind, xLabel, yLabel, xRange]);
  const known = charts.get(id);
  if (known && known.signature === signature) {
    known.plot.setData(data);
    return;
  }
  if (known) known.plot.destroy();
  el.replaceChildren();
  if (el.dataset.title) el.append(Object.assign(document.createElement("div"), { className: "title", textContent: el.dataset.title }));
  const legend = document.createElement("div");
  legend.className = "legend";
  const values = lines.map((line) => {
    const item = document.createElement("span");
    const swatch = Object.assign(document.createElement("i"), { className: "swatch" });
    swatch.style.background = line.color;
    const value = Object.assign(document.createElement("b"), { className: "value" });
    item.append(swatch, line.label, " ", value);
    legend.append(item);
    return value;
  });
  const plot = new uPlot({
    width: Math.max(el.clientWidth - 10, 280), height,
    scales: { x: xRange ? { time: false, range: () => xRange } : { time: false },
      y: { range: kind === "bars" ? (u, min, max) => [0, Math.max(max, 1) * 1.05] : yRange } },
    series, bands,
    axes: [{ label: xLabel, size: 40 }, { label: yLabel, size: 56 }],
    legend: { show: false },
    cursor: { drag: { x: true, y: false } }, // drag to zoom, double-click to reset
    hooks: { setCursor: [(u) => {
      const i = u.cursor.idx;
      mainIndex.forEach((s, k) => {
        const v = i === null || i === undefined ? null : u.data[s][i];
        values[k].textContent = v === null || v === undefined ? "" : `${fmt(v)} at ${fmt(u.data[0][i])}`;
      });
    }] },
  }, data, el);
  el.append(legend);
  if (!xs.length) el.append(Object.assign(document.createElement("div"), { className: "empty", textContent: "no data yet" }));
  charts.set(id, { plot, signature });
}

// The y range with 5% margins; a span too small for float ticks (a constant such as a ratio of 1.0
// with 1e-7 noise) is widened, else uPlot's tick splitting does not end.
function yRange(u, min, max) {
  if (min === null || max === null) return [0, 1];
  const floor = 1e-6 * Math.max(Math.abs(min), Math.abs(max), 1e-6);
  if (max - min < floor) return [min - Math.max(floor, Math.abs(min) * 0.01), max + Math.max(floor, Math.abs(max) * 0.01)];
  return [min - (max - min) * 0.05, max + (max - min) * 0.05];
}

function fmt(v, digits = 3) {
  if (v === null || v === undefined) return "";
  return Math.abs(v) >= 1e4 || Number.isInteger(v) ? String(Math.round(v)) : Number(v).toPrecision(digits);
}

// One point per window of episodes (at the window's middle), with its min-max band.
function windowLine(signals, name, label, color) {
  const s = signals.series[name];
  const xs = signals.windows.map((w) => w.first_episode + w.episodes / 2);
  const keep = (_, i) => s.mean[i] !== null;
  return { label, color, points: xs.map((x, i) => [x, s.mean[i]]).filter(keep),
    band: xs.map((x, i) => [x, s.min[i], s.max[i]]).filter(keep) };
}

// Counts of values in `bins` equal bins over [low, high], as bar-chart points at bin centres.
function histogram(values, low, high, bins = 20) {
  const width = (high - low) / bins || 1, counts = new Array(bins).fill(0);
  for (const v of values) counts[Math.min(Math.max(Math.floor((v - low) / width), 0), bins - 1)] += 1;
  return counts.map((n, i) => [Number((low + (i + 0.5) * width).toPrecision(6)), n]);
}

// ---------------------------------------------------------------- canvas drawing

function context2d(canvas) {
  // Sharp on high-DPI screens: draw in CSS pixels on a backing store scaled by devicePixelRatio.
  const ratio = window.devicePixelRatio || 1;
  const width = Number(canvas.dataset.width || canvas.width), height = Number(canvas.dataset.height || canvas.height);
  Object.assign(canvas.dataset, { width, height });
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  canvas.style.width = width + "px";
  canvas.style.height = height + "px";
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, width, height);
  return { ctx, width, height };
}

function heatColor(t) {
  // white -> amber -> red
  const stops = [[255, 255, 255], [253, 200, 70], [200, 30, 30]];
  const x = Math.min(Math.max(t, 0), 1) * 2, i = Math.min(Math.floor(x), 1), f = x - i;
  const c = stops[i].map((v, k) => Math.round(v + (stops[i + 1][k] - v) * f));
  return `rgb(${c})`;
}

// A grid of cells: fill(r, c) gives null (a wall, dark) or a count; the counts are colored and written.
// Returns the context, the cell size and the labels' margin, for drawing over it.
function drawGrid(canvas, rows, cols, value, labels = null) {
  const { ctx, width, height } = context2d(canvas);
  const margin = labels ? 34 : 0;
  const size = Math.floor(Math.min((width - margin) / cols, (height - margin) / rows));
  const all = [];
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) all.push(value(r, c) || 0);
  const max = Math.max(1e-12, ...all);
  ctx.font = `${Math.max(8, Math.min(13, Math.floor(size / 3)))}px sans-serif`;
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const v = value(r, c), x = margin + c * size, y = margin + r * size;
      ctx.fillStyle = v === null ? "#3b3b3b" : heatColor(v / max);
      ctx.fillRect(x, y, size, size);
      ctx.strokeStyle = "#bbb";
      ctx.strokeRect(x + 0.5, y + 0.5, size - 1, size - 1);
      if (v && size >= 14) {
        ctx.fillStyle = v / max > 0.6 ? "#fff" : "#222";
        ctx.fillText(Number.isInteger(v) ? String(v) : v.toFixed(2).replace(/^0/, ""), x + size / 2, y + size / 2);
      }
    }
  }
  if (labels && size >= 10) {
    ctx.fillStyle = "#555";
    ctx.font = "9px sans-serif";
    labels.forEach((label, i) => {
      ctx.fillText(label, margin / 2, margin + i * size + size / 2);
      ctx.save();
      ctx.translate(margin + i * size + size / 2, margin / 2);
      ctx.rotate(-Math.PI / 4);
      ctx.fillText(label, 0, 0);
      ctx.restore();
    });
  }
  return { ctx, size, margin };
}

// The maze with an arrow from the start cell to the goal cell of each target task (reset options);
// each arrow sits a little to its right, so that a pair and its reverse stay apart.
function drawTargetMap(layout, targets) {
  const rows = layout.length, cols = layout[0].length;
  const { ctx, size } = drawGrid($("target-map"), rows, cols, (r, c) => (layout[r][c] === 1 ? null : 0));
  const centre = ([r, c]) => [c * size + size / 2, r * size + size / 2];
  ctx.lineWidth = 2;
  for (const { reset_cell: start, goal_cell: goal } of targets) {
    let [x0, y0] = centre(start), [x1, y1] = centre(goal);
    const length = Math.hypot(x1 - x0, y1 - y0) || 1, ux = (x1 - x0) / length, uy = (y1 - y0) / length;
    const shift = size * 0.12;
    [x0, y0, x1, y1] = [x0 - uy * shift, y0 + ux * shift, x1 - uy * shift, y1 + ux * shift];
    ctx.strokeStyle = ctx.fillStyle = COLORS[3];
    ctx.beginPath(); ctx.moveTo(x0, y0); ctx.lineTo(x1, y1); ctx.stroke();
    const head = Math.max(5, size * 0.2);
    ctx.beginPath();
    ctx.moveTo(x1, y1);
    ctx.lineTo(x1 - head * ux + head * 0.5 * uy, y1 - head * uy - head * 0.5 * ux);
    ctx.lineTo(x1 - head * ux - head * 0.5 * uy, y1 - head * uy + head * 0.5 * ux);
    ctx.fill();
    ctx.fillStyle = COLORS[2];
    ctx.beginPath(); ctx.arc(x0, y0, Math.max(3, size * 0.08), 0, 2 * Math.PI); ctx.fill();
  }
}

// ---------------------------------------------------------------- a time slider over buckets

function slider(id, cumulativeId, onChange) {
  const input = $(id);
  input.addEventListener("input", onChange);
  $(cumulativeId).addEventListener("change", onChange);
  return {
    // The stretch of buckets to show; stays on the newest while the slider is at its end.
    setCount(n) {
      const following = Number(input.value) >= Number(input.max);
      input.max = Math.max(n - 1, 0);
      if (following) input.value = input.max;
    },
    range() {
      const upTo = Number(input.value);
      return [$(cumulativeId).checked ? 0 : upTo, upTo];
    },
  };
}

// ---------------------------------------------------------------- maze view

let maze = null; // {layout, free, values, buckets, paths, policy}

const mazeSlider = slider("time-slider", "cumulative", drawMaze);

function drawMaze() {
  if (!maze) return;
  const [from, to] = mazeSlider.range();
  const shown = maze.buckets.slice(from, to + 1);
  const starts = new Map(), goals = new Map(), pairs = new Map(), distances = [];
  let proposals = 0;
  for (const bucket of shown) {
    for (const [index, n] of Object.entries(bucket.counts)) {
      const [sr, sc, gr, gc] = maze.values[index];
      starts.set(`${sr},${sc}`, (starts.get(`${sr},${sc}`) || 0) + n);
      goals.set(`${gr},${gc}`, (goals.get(`${gr},${gc}`) || 0) + n);
      pairs.set(`${sr},${sc}>${gr},${gc}`, n + (pairs.get(`${sr},${sc}>${gr},${gc}`) || 0));
      for (let k = 0; k < n; k++) distances.push(maze.paths[index]);
      proposals += n;
    }
  }
  const rows = maze.layout.length, cols = maze.layout[0].length;
  const cell = (counts) => (r, c) => (maze.layout[r][c] === 1 ? null : counts.get(`${r},${c}`) || 0);
  drawGrid($("heat-start"), rows, cols, cell(starts));
  drawGrid($("heat-goal"), rows, cols, cell(goals));
  const labels = maze.free.map(([r, c]) => `${r},${c}`);
  const pairValue = (source) => (i, j) => (i === j ? null : source.get(`${labels[i]}>${labels[j]}`) || 0);
  const grid = drawGrid($("pairs"), labels.length, labels.length, pairValue(pairs), labels);
  // The target tasks' cells outlined, to read the proposals against them.
  grid.ctx.strokeStyle = COLORS[3];
  grid.ctx.lineWidth = 2;
  for (const { reset_cell: start, goal_cell: goal } of maze.targets) {
    const [i, j] = [labels.indexOf(start.join()), labels.indexOf(goal.join())];
    grid.ctx.strokeRect(grid.margin + j * grid.size + 1, grid.margin + i * grid.size + 1, grid.size - 2, grid.size - 2);
  }
  if (maze.policy) drawGrid($("policy"), labels.length, labels.length, pairValue(maze.policy), labels);
  const longest = Math.max(1, ...maze.paths);
  drawChart("chart-path-hist", [{ label: "proposals", color: COLORS[2],
    points: histogram(distances, 0.5, longest + 0.5, longest) }],
  { xLabel: "shortest path (cells)", kind: "bars", height: 200, xRange: [0.5, longest + 0.5] });
  $("maze").dataset.shown = proposals;
  const first = shown[0], last = shown[shown.length - 1];
  $("time-label").textContent = first
    ? `${proposals} proposals, ${new Date(first.first_at).toLocaleTimeString()} to ${new Date(last.last_at).toLocaleTimeString()}`
    : "no proposals yet";
}

// Mean shortest-path distance of the proposals in each stretch of time, with its range.
function mazeDistanceLine(distribution) {
  let seen = 0;
  const points = [], band = [];
  for (const bucket of distribution.buckets) {
    const ds = Object.entries(bucket.counts).flatMap(([index, n]) => new Array(n).fill(distribution.shortest_path[index]));
    seen += bucket.proposals;
    points.push([seen, ds.reduce((a, b) => a + b, 0) / ds.length]);
    band.push([seen, Math.min(...ds), Math.max(...ds)]);
  }
  return { label: "shortest path, start to goal (cells)", color: COLORS[1], points, band };
}

let playing = null;
$("play").addEventListener("click", () => {
  if (playing !== null) {
    clearInterval(playing);
    playing = null;
    $("play").textContent = "Play";
    return;
  }
  const input = $("time-slider");
  input.value = 0;
  drawMaze();
  $("play").textContent = "Stop";
  playing = setInterval(() => {
    if (Number(input.value) >= Number(input.max)) return $("play").click();
    input.value = Number(input.value) + 1;
    drawMaze();
  }, 400);
});

// ---------------------------------------------------------------- Adroit view

// Proposals read once and then only the new ones (history's cursor): [seq, created_at, values].
let adroit = { curriculum: null, after: null, items: [], space: null };

const adroitSlider = slider("adroit-slider", "adroit-cumulative", drawAdroit);

async function loadAdroit(base, key) {
  if (adroit.curriculum !== key) adroit = { curriculum: key, after: null, items: [], space: null };
  adroit.space = adroit.space || await api(`${base}/distribution?source=proposals&samples=1`);
  for (;;) {
    const page = await api(`${base}/history?limit=10000${adroit.after === null ? "" : "&after=" + adroit.after}`);
    for (const item of page.items) if (item.task_values) adroit.items.push([item.seq, item.created_at, item.task_values]);
    if (page.items.length) adroit.after = page.items[page.items.length - 1].seq;
    if (page.next_after === null) break;
  }
  adroitSlider.setCount(Math.min(BUCKETS, adroit.items.length));
  drawAdroit();
}

function drawAdroit() {
  const items = adroit.items, n = items.length, buckets = Math.min(BUCKETS, n);
  const [from, to] = adroitSlider.range();
  const shown = buckets ? items.slice(Math.floor((from * n) / buckets), Math.floor(((to + 1) * n) / buckets)) : [];
  const { ctx, width, height } = context2d($("topview"));
  // Ball and target share the x-y plane of the table; 0.6 m square around both default ranges.
  const [x0, x1, y0, y1] = [-0.3, 0.3, -0.25, 0.35], pad = 28;
  const px = (x) => pad + ((x - x0) / (x1 - x0)) * (width - 2 * pad);
  const py = (y) => height - pad - ((y - y0) / (y1 - y0)) * (height - 2 * pad);
  ctx.strokeStyle = "#ccc";
  ctx.fillStyle = "#666";
  ctx.font = "10px sans-serif";
  ctx.textAlign = "center";
  for (let v = -0.3; v <= 0.301; v += 0.1) {
    ctx.beginPath(); ctx.moveTo(px(v), py(y0)); ctx.lineTo(px(v), py(y1)); ctx.stroke();
    ctx.fillText(v.toFixed(1), px(v), height - pad + 12);
  }
  ctx.textAlign = "right";
  for (let v = -0.2; v <= 0.351; v += 0.1) {
    ctx.beginPath(); ctx.moveTo(px(x0), py(v)); ctx.lineTo(px(x1), py(v)); ctx.stroke();
    ctx.fillText(v.toFixed(1), pad - 3, py(v) + 3);
  }
  const { low, high } = adroit.space;
  ctx.setLineDash([5, 4]);
  for (const [i, color] of [[0, COLORS[0]], [2, COLORS[3]]]) {
    ctx.strokeStyle = color;
    ctx.strokeRect(px(low[i]), py(high[i + 1]), px(high[i]) - px(low[i]), py(low[i + 1]) - py(high[i + 1]));
  }
  ctx.setLineDash([]);
  ctx.globalAlpha = Math.max(0.15, Math.min(0.8, 30 / Math.max(shown.length, 1)));
  for (const [, , [bx, by, tx, ty]] of shown) {
    ctx.strokeStyle = "#999";
    ctx.beginPath(); ctx.moveTo(px(bx), py(by)); ctx.lineTo(px(tx), py(ty)); ctx.stroke();
    ctx.fillStyle = COLORS[0];
    ctx.beginPath(); ctx.arc(px(bx), py(by), 3, 0, 2 * Math.PI); ctx.fill();
    ctx.fillStyle = COLORS[3];
    ctx.beginPath(); ctx.arc(px(tx), py(ty), 3, 0, 2 * Math.PI); ctx.fill();
  }
  ctx.globalAlpha = 1;
  const names = adroit.space.names;
  if ($("adroit-hists").children.length !== names.length) {
    $("adroit-hists").replaceChildren(...names.map((name) => chartBox(`hist-${name}`, name)));
  }
  names.forEach((name, d) => drawChart(`hist-${name}`, [{ label: "proposals", color: d < 2 ? COLORS[0] : COLORS[3],
    points: histogram(shown.map((item) => item[2][d]), low[d], high[d]) }],
  { xLabel: name, kind: "bars", height: 160, xRange: [low[d], high[d]] }));
  $("adroit").dataset.shown = shown.length;
  $("adroit-label").textContent = shown.length
    ? `${shown.length} proposals, ${new Date(shown[0][1]).toLocaleTimeString()} to ${new Date(shown[shown.length - 1][1]).toLocaleTimeString()}`
    : "no proposals yet";
}

// ---------------------------------------------------------------- teacher internals

let updates = { curriculum: null, after: null, items: [] };

async function loadUpdates(base, key) {
  if (updates.curriculum !== key) {
    updates = { curriculum: key, after: null, items: [] };
    $("internals").replaceChildren(Object.assign(document.createElement("p"), { className: "muted", textContent: "no teacher update yet" }));
  }
  for (;;) {
    const page = await api(`${base}/updates?limit=10000${updates.after === null ? "" : "&after=" + updates.after}`);
    updates.items.push(...page.items);
    if (page.items.length) updates.after = page.items[page.items.length - 1].version;
    if (page.next_after === null) break;
  }
  const keys = [...new Set(updates.items.flatMap(Object.keys))].filter((k) => !["version", "at", "episodes"].includes(k));
  if (!keys.length) return;
  const container = $("internals");
  if ([...container.children].map((c) => c.id).join() !== keys.map((k) => `internal-${k}`).join()) {
    container.replaceChildren(...keys.map((k) => chartBox(`internal-${k}`, k.replaceAll("_", " "))));
  }
  keys.forEach((k, i) => drawChart(`internal-${k}`, [{ label: k, color: COLORS[i % COLORS.length],
    points: updates.items.filter((u) => u[k] !== undefined).map((u) => [u.version, u[k]]) }],
  { xLabel: "teacher version", height: 160 }));
}

// Permutation tests cost the service's request threads: recomputed at most every 30 s, or on a new curriculum.
let informative = { curriculum: null, at: 0, value: null };

async function loadInformativeness(base, key) {
  if (informative.curriculum !== key || Date.now() - informative.at > 30_000) {
    informative = { curriculum: key, at: Date.now(), value: await api(`${base}/informativeness?last=2000&permutations=100`) };
  }
  return informative.value;
}

function renderInformativeness(info) {
  const fixed = (x, digits) => (x === null ? "-" : x.toFixed(digits));
  $("informativeness").querySelector("tbody").replaceChildren(...Object.entries(info.signals)
    .filter(([, r]) => r.reports > 0)
    .map(([signal, r]) => {
      const tr = document.createElement("tr");
      tr.dataset.signal = signal;
      for (const text of [signal, r.reports, r.tasks, fixed(r.r2, 3), fixed(r.adjusted_r2, 3), fixed(r.p_value, 3)]) {
        tr.append(Object.assign(document.createElement("td"), { textContent: text }));
      }
      return tr;
    }));
}

// ---------------------------------------------------------------- compare view

function compareSelection(curricula) {
  const box = $("compare-curricula");
  const names = curricula.map((c) => c.name);
  if ([...box.querySelectorAll("input")].map((i) => i.value).join() !== names.join()) {
    // The boxes already there keep what the user ticked; a new curriculum is ticked as the address says (all by default).
    const ticked = new Map([...box.querySelectorAll("input")].map((i) => [i.value, i.checked]));
    const wanted = params.get("compare") ? params.get("compare").split(",") : names;
    box.replaceChildren(...names.map((name) => {
      const label = document.createElement("label");
      const checked = ticked.has(name) ? ticked.get(name) : wanted.includes(name);
      const input = Object.assign(document.createElement("input"), { type: "checkbox", value: name, checked });
      input.addEventListener("change", () => refreshCompare().catch(showError));
      label.append(input, name);
      return label;
    }));
  }
  return [...box.querySelectorAll("input:checked")].map((i) => i.value);
}

// /compare takes at most 16 curricula (api/compare.py): more ticked are asked for in several calls, 16 at a time.
const COMPARE_MAX = 16;

function compareQueries() {
  const names = [...$("compare-curricula").querySelectorAll("input:checked")].map((i) => i.value);
  const onTarget = $("compare-on").value === "target";
  const queries = [];
  for (let i = 0; i < names.length; i += COMPARE_MAX) {
    const some = names.slice(i, i + COMPARE_MAX).map(encodeURIComponent).join(",");
    queries.push(`/compare?curricula=${some}&metric=${$("compare-metric").value}&on_target=${onTarget}`);
  }
  return queries;
}

async function refreshCompare() {
  const result = { curves: (await Promise.all(compareQueries().map(api))).flatMap((r) => r.curves) };
  const metric = $("compare-metric").selectedOptions[0].textContent;
  const on = $("compare-on").value === "target" ? "target tasks" : "default tasks";
  $("compare-distribution").textContent = $("compare-on").selectedOptions[0].textContent;
  drawChart("chart-compare", result.curves.map((curve, i) => ({
    label: `${curve.curriculum} (${curve.algorithm}, ${Math.max(0, ...curve.students)} students) on ${on}`,
    color: COLORS[i % COLORS.length],
    points: curve.env_steps.map((x, k) => [x, curve.mean[k]]),
    band: curve.env_steps.map((x, k) => [x, curve.min[k], curve.max[k]]),
  })), { xLabel: "environment steps", yLabel: metric, height: 280 });
}

// ---------------------------------------------------------------- curriculum view

function evaluationLines(evaluations, key) {
  const byStudent = new Map();
  for (const e of evaluations) {
    if (!byStudent.has(e.student_id)) byStudent.set(e.student_id, []);
    byStudent.get(e.student_id).push([e.env_steps, e[key]]);
  }
  return [...byStudent].map(([student, points], i) => ({ label: student, color: COLORS[i % COLORS.length], points }));
}

function renderStudents(students) {
  const select = $("student");
  const ids = students.students.map((s) => s.student_id);
  if ([...select.options].map((o) => o.value).join() !== ids.join()) {
    const keep = select.value;
    select.replaceChildren(...ids.map((id) => new Option(id, id)));
    if (ids.includes(keep)) select.value = keep;
  }
  $("students").querySelector("tbody").replaceChildren(...students.students.map((s) => {
    const tr = document.createElement("tr");
    tr.dataset.student = s.student_id;
    tr.addEventListener("click", () => { select.value = s.student_id; refreshStudent().catch(showError); });
    const e = s.last_evaluation, t = s.last_target_evaluation;
    const state = s.finished ? "finished" : s.active ? "active" : "idle";
    for (const text of [s.student_id, s.episodes, s.env_steps, e ? e.success_rate.toFixed(2) : "",
      e ? e.mean_return.toFixed(2) : "", t ? t.success_rate.toFixed(2) : "", new Date(s.last_seen).toLocaleTimeString(),
      state]) {
      tr.append(Object.assign(document.createElement("td"), { textContent: text }));
    }
    tr.lastChild.className = state;
    return tr;
  }));
}

let base = null;

// Every evaluation of the curriculum, page by page: one page held only the oldest 10,000.
async function allEvaluations(base) {
  const items = [];
  let after = null;
  do {
    const page = await api(`${base}/evaluations?limit=10000${after === null ? "" : "&after=" + after}`);
    items.push(...page.items);
    after = page.next_after;
  } while (after !== null);
  return items;
}

async function refreshStudent() {
  const student = $("student").value;
  if (!base || !student) return;
  const names = ["episode_return", "success", ...GRAD_SIGNALS].map((s) => `&signal=${s}`).join("");
  const signals = await api(`${base}/signals?student=${encodeURIComponent(student)}${names}`);
  drawChart("chart-student-return", [windowLine(signals, "episode_return", "return", COLORS[0])], { xLabel: "episode" });
  const success = windowLine(signals, "success", "success rate", COLORS[2]);
  drawChart("chart-student-success", [{ ...success, band: undefined }], { xLabel: "episode" });
  drawChart("chart-student-grad", GRAD_SIGNALS.map((name, i) => ({ ...windowLine(signals, name, name, COLORS[i + 3]),
    band: undefined })), { xLabel: "episode" });
}

async function refresh() {
  const curricula = await api("/curricula");
  // Without curricula there is nothing to show: the last one deleted while the page was open takes its charts along.
  $("main").hidden = !curricula.length;
  compareSelection(curricula);
  const select = $("curriculum");
  const wanted = select.value || params.get("curriculum");
  if ([...select.options].map((o) => o.value).join() !== curricula.map((c) => c.name).join()) {
    select.replaceChildren(...curricula.map((c) => new Option(c.name, c.name)));
  }
  if (wanted && curricula.some((c) => c.name === wanted)) select.value = wanted;
  const info = curricula.find((c) => c.name === select.value);
  if (!info) {
    $("status").textContent = "no curricula yet";
    return;
  }
  base = `/curricula/${encodeURIComponent(info.name)}`;
  // What the page keeps of a curriculum (its updates, proposals) is keyed by its creation too: one deleted and created
  // again under its name is another, whose versions and cursors start again.
  const key = `${info.name} ${info.created_at}`;
  const summary = info.task_space_summary;
  const adroitSpace = summary.env_id === "AdroitHandRelocate-v1";
  const window_s = Number($("active-window").value) || 300;
  const [teacher, signals, students, evaluations, distribution, informativeness, target, targetMean] = await Promise.all([
    api(`${base}/teacher`),
    api(`${base}/signals?signal=reward${adroitSpace ? "&signal=ball_target_distance" : ""}`),
    api(`${base}/students?active_within_s=${window_s}`),
    allEvaluations(base),
    summary.maze_map ? api(`${base}/distribution?source=proposals&buckets=${BUCKETS}`) : null,
    loadInformativeness(base, key),
    info.target ? api(`${base}/target`) : null,
    info.target ? api(`/compare?curricula=${encodeURIComponent(info.name)}&on_target=true`) : null,
    refreshCompare(),
  ]);

  $("algorithm").textContent = teacher.algorithm;
  $("teacher-version").textContent = teacher.version;
  $("episodes").textContent = signals.episodes;
  $("reward-mean").textContent = teacher.rewards.mean === null ? "-" : teacher.rewards.mean.toPrecision(4);
  $("active-students").textContent = students.active;

  drawChart("chart-reward", [windowLine(signals, "reward", `reward (${teacher.reward_signal})`, COLORS[0])], { xLabel: "episode" });
  $("chart-distance").hidden = !(adroitSpace || distribution);
  if (adroitSpace) {
    drawChart("chart-distance", [windowLine(signals, "ball_target_distance", "ball to target (m)", COLORS[1])], { xLabel: "episode" });
  } else if (distribution) {
    drawChart("chart-distance", [mazeDistanceLine(distribution)], { xLabel: "proposals" });
  }
  const onDefault = evaluations.filter((e) => !e.on_target);
  drawChart("chart-success", evaluationLines(onDefault, "success_rate"), { xLabel: "environment steps", yLabel: "success rate" });
  drawChart("chart-return", evaluationLines(onDefault, "mean_return"), { xLabel: "environment steps", yLabel: "mean return" });
  $("chart-target-success").hidden = !target;
  if (target) {
    const { curves: [mean] } = targetMean;
    const meanPoints = mean.env_steps.map((x, k) => [x, mean.mean[k]]);
    $("chart-target-success").dataset.mean = JSON.stringify(meanPoints);
    drawChart("chart-target-success", [
      { label: "mean over students", color: "#222", dash: [6, 4], points: meanPoints },
      ...evaluationLines(evaluations.filter((e) => e.on_target), "success_rate"),
    ], { xLabel: "environment steps", yLabel: `success on ${target.reset_options.length} target tasks` });
  }

  $("maze").hidden = !distribution;
  if (distribution) {
    const free = summary.free_cells;
    const policy = teacher.state && teacher.state.probabilities;
    maze = { layout: summary.maze_map, free, values: distribution.values, buckets: distribution.buckets,
      paths: distribution.shortest_path, targets: target ? target.reset_options : [],
      policy: policy ? new Map(distribution.values.map(([a, b, c, d], i) => [`${a},${b}>${c},${d}`, policy[i]])) : null };
    $("policy-figure").hidden = !policy;
    $("target-figure").hidden = !target;
    if (target) {
      drawTargetMap(summary.maze_map, target.reset_options);
      const rule = info.target.farthest ? `the ${info.target.farthest} start-goal pairs farthest apart` : "as listed";
      $("target-caption").textContent = `target tasks: ${target.reset_options.length} start-to-goal pairs (${rule})`;
      $("target-figure").dataset.pairs = target.reset_options.length;
    }
    mazeSlider.setCount(maze.buckets.length);
    $("maze").dataset.total = distribution.proposals;
    drawMaze();
  }
  $("adroit").hidden = !adroitSpace;
  if (adroitSpace) await loadAdroit(base, key);
  await loadUpdates(base, key);
  renderInformativeness(informativeness);
  renderStudents(students);
  await refreshStudent();
  $("status").textContent = `updated ${new Date().toLocaleTimeString()}`;
  document.body.dataset.curriculum = info.name;
}

// ---------------------------------------------------------------- polling and controls

function showError(error) {
  $("status").textContent = String(error);
}

async function poll() {
  const started = performance.now();
  try {
    await refresh();
    document.body.dataset.refreshes = Number(document.body.dataset.refreshes || 0) + 1;
  } catch (error) {
    if (error instanceof Unauthorized) {
      $("token-form").hidden = false;
      $("main").hidden = true;
      if (localStorage.getItem("teacherToken")) $("token-error").textContent = "that token was refused";
      return; // polling resumes when a token is given
    }
    showError(error);
  }
  // Spaced after a failed refresh too: a service too busy to answer is the one to spare.
  const took = performance.now() - started;
  const wait = Math.min(Math.max(REFRESH_MS, Math.round(SLOWDOWN * took)), 86400_000);
  if (wait > REFRESH_MS) $("status").textContent += `, next in ${Math.round(wait / 1000)} s (${SLOWDOWN}x this refresh)`;
  Object.assign(document.body.dataset, { refreshMs: took, nextPollMs: wait });
  setTimeout(poll, wait);
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  localStorage.setItem("teacherToken", $("token").value.trim());
  $("token-form").hidden = true;
  $("token-error").textContent = "";
  poll();
});
$("forget-token").addEventListener("click", () => {
  localStorage.removeItem("teacherToken");
  location.reload();
});
$("curriculum").addEventListener("change", () => refresh().catch(showError));
$("student").addEventListener("change", () => refreshStudent().catch(showError));
$("compare-metric").addEventListener("change", () => refreshCompare().catch(showError));
$("compare-on").addEventListener("change", () => refreshCompare().catch(showError));
$("active-window").value = localStorage.getItem("activeWindow") || 300;
$("active-window").addEventListener("change", () => {
  localStorage.setItem("activeWindow", $("active-window").value);
  refresh().catch(showError);
});
$("compare-csv").addEventListener("click", async () => {
  // One file: the header once, then each call's rows.
  let text = "";
  for (const query of compareQueries()) {
    const part = await (await request(query + "&format=csv", "text/csv")).text();
    text += text ? part.slice(part.indexOf("\n") + 1) : part;
  }
  if (text) download("compare.csv", text);
});
$("history-csv").addEventListener("click", async () => {
  // Every page of the curriculum's history in one file: the header once, then the pages' rows.
  let text = "", after = null;
  do {
    const response = await request(`${base}/history?format=csv&limit=10000${after ? "&after=" + after : ""}`, "text/csv");
    const page = await response.text();
    text += text ? page.slice(page.indexOf("\n") + 1) : page;
    after = response.headers.get("X-Next-After");
  } while (after);
  download(`${document.body.dataset.curriculum}-history.csv`, text);
});

poll();
