"use strict";
// The dashboard: polls the inspection API every few seconds and draws on <canvas>; no libraries, no CDN.

const params = new URLSearchParams(location.search);
const REFRESH_MS = 1000 * (Number(params.get("refresh")) || 5);
const BUCKETS = 40; // stretches of time the heatmap slider steps through
const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
const $ = (id) => document.getElementById(id);

// The token comes once as ?token= (then leaves the address bar) or from the form; localStorage keeps it.
if (params.has("token")) {
  localStorage.setItem("teacherToken", params.get("token"));
  params.delete("token");
  history.replaceState(null, "", location.pathname + (params.size ? "?" + params : ""));
}

class Unauthorized extends Error {}

async function api(path) {
  const token = localStorage.getItem("teacherToken");
  if (!token) throw new Unauthorized();
  const response = await fetch(path, { headers: { Authorization: "Bearer " + token } });
  if (response.status === 401) throw new Unauthorized();
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

// ---------------------------------------------------------------- drawing

function context2d(canvas) {
  // Sharp on high-DPI screens: draw in CSS pixels on a backing store scaled by devicePixelRatio.
  const ratio = window.devicePixelRatio || 1;
  const width = Number(canvas.dataset.width || canvas.width), height = Number(canvas.dataset.height || canvas.height);
  canvas.dataset.width = width;
  canvas.dataset.height = height;
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

function drawMaze(canvas, layout, counts) {
  const { ctx, width, height } = context2d(canvas);
  const rows = layout.length, cols = layout[0].length;
  const size = Math.floor(Math.min(width / cols, height / rows));
  const max = Math.max(1, ...counts.values());
  ctx.font = `${Math.max(9, Math.floor(size / 3.5))}px sans-serif`;
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  layout.forEach((row, r) => row.forEach((cell, c) => {
    const n = counts.get(`${r},${c}`) || 0;
    ctx.fillStyle = cell === 1 ? "#3b3b3b" : heatColor(n / max);
    ctx.fillRect(c * size, r * size, size, size);
    ctx.strokeStyle = "#bbb";
    ctx.strokeRect(c * size + 0.5, r * size + 0.5, size - 1, size - 1);
    if (cell !== 1 && n > 0) {
      ctx.fillStyle = n / max > 0.6 ? "#fff" : "#222";
      ctx.fillText(String(n), c * size + size / 2, r * size + size / 2);
    }
  }));
}

function niceTicks(lo, hi, count = 5) {
  const step0 = (hi - lo) / count || 1, mag = 10 ** Math.floor(Math.log10(step0));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= step0);
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

// lines: [{label, color, points: [[x, y]], band: [[x, low, high]]}]
function lineChart(canvas, lines, xLabel) {
  const { ctx, width, height } = context2d(canvas);
  const pad = { left: 52, right: 22, top: 22, bottom: 34 };
  const all = lines.flatMap((l) => [...l.points, ...(l.band || []).flatMap(([x, lo, hi]) => [[x, lo], [x, hi]])])
    .filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
  canvas.dataset.points = lines.reduce((n, l) => n + l.points.length, 0);
  ctx.fillStyle = "#888";
  ctx.font = "12px sans-serif";
  if (!all.length) {
    ctx.fillText("no data yet", width / 2 - 30, height / 2);
    return;
  }
  let [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (y0 === y1) { y0 -= 1; y1 += 1; }
  const px = (x) => pad.left + ((x - x0) / (x1 - x0)) * (width - pad.left - pad.right);
  const py = (y) => height - pad.bottom - ((y - y0) / (y1 - y0)) * (height - pad.top - pad.bottom);

  ctx.strokeStyle = "#e4e4e4";
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (const y of niceTicks(y0, y1)) {
    ctx.beginPath(); ctx.moveTo(pad.left, py(y)); ctx.lineTo(width - pad.right, py(y)); ctx.stroke();
    ctx.fillText(String(y), pad.left - 4, py(y));
  }
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  for (const x of niceTicks(x0, x1)) ctx.fillText(String(x), px(x), height - pad.bottom + 4);
  ctx.fillText(xLabel, width / 2, height - 14);
  ctx.strokeStyle = "#888";
  ctx.strokeRect(pad.left, pad.top, width - pad.left - pad.right, height - pad.top - pad.bottom);

  lines.forEach((line, i) => {
    if (line.band && line.band.length) {
      ctx.fillStyle = line.color + "33";
      ctx.beginPath();
      line.band.forEach(([x, , hi], k) => (k ? ctx.lineTo(px(x), py(hi)) : ctx.moveTo(px(x), py(hi))));
      [...line.band].reverse().forEach(([x, lo]) => ctx.lineTo(px(x), py(lo)));
      ctx.fill();
    }
    ctx.strokeStyle = ctx.fillStyle = line.color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    line.points.forEach(([x, y], k) => (k ? ctx.lineTo(px(x), py(y)) : ctx.moveTo(px(x), py(y))));
    ctx.stroke();
    for (const [x, y] of line.points) ctx.fillRect(px(x) - 2, py(y) - 2, 4, 4);
    ctx.lineWidth = 1;
    ctx.textAlign = "left";
    ctx.fillText(line.label, pad.left + 6 + 110 * i, 4);
  });
}

// ---------------------------------------------------------------- views

let heat = null; // {layout, values, buckets} of the maze heatmap
let playing = null;

function windowSeries(signals, name) {
  // One point per window of episodes, at the window's middle episode.
  const s = signals.series[name];
  const xs = signals.windows.map((w) => w.first_episode + w.episodes / 2);
  const keep = (i) => s.mean[i] !== null;
  return {
    points: xs.map((x, i) => [x, s.mean[i]]).filter((_, i) => keep(i)),
    band: xs.map((x, i) => [x, s.min[i], s.max[i]]).filter((_, i) => keep(i)),
  };
}

function evaluationLines(evaluations, key) {
  const byStudent = new Map();
  for (const e of evaluations.items) {
    if (!byStudent.has(e.student_id)) byStudent.set(e.student_id, []);
    byStudent.get(e.student_id).push([e.env_steps, e[key]]);
  }
  return [...byStudent].map(([student, points], i) => ({
    label: student, color: COLORS[i % COLORS.length], points: points.sort((a, b) => a[0] - b[0]),
  }));
}

function drawHeat() {
  const slider = $("time-slider");
  const upTo = Number(slider.value), cumulative = $("cumulative").checked;
  const shown = heat.buckets.slice(cumulative ? 0 : upTo, upTo + 1);
  const starts = new Map(), goals = new Map();
  let proposals = 0;
  for (const bucket of shown) {
    for (const [index, n] of Object.entries(bucket.counts)) {
      const [sr, sc, gr, gc] = heat.values[index];
      starts.set(`${sr},${sc}`, (starts.get(`${sr},${sc}`) || 0) + n);
      goals.set(`${gr},${gc}`, (goals.get(`${gr},${gc}`) || 0) + n);
      proposals += n;
    }
  }
  drawMaze($("heat-start"), heat.layout, starts);
  drawMaze($("heat-goal"), heat.layout, goals);
  $("maze").dataset.shown = proposals;
  const first = shown[0], last = shown[shown.length - 1];
  $("time-label").textContent = first
    ? `${proposals} proposals, ${new Date(first.first_at).toLocaleTimeString()} to ${new Date(last.last_at).toLocaleTimeString()}`
    : "no proposals yet";
}

function renderStudents(students) {
  const fmt = (v, digits = 2) => (v === null || v === undefined ? "" : Number(v).toFixed(digits));
  $("students").querySelector("tbody").replaceChildren(...students.students.map((s) => {
    const tr = document.createElement("tr");
    tr.dataset.student = s.student_id;
    const e = s.last_evaluation;
    for (const text of [s.student_id, s.episodes, s.env_steps, fmt(e && e.success_rate), fmt(e && e.mean_return),
      new Date(s.last_seen).toLocaleTimeString(), s.active ? "yes" : "no"]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    return tr;
  }));
}

async function refresh() {
  const curricula = await api("/curricula");
  const select = $("curriculum");
  const wanted = select.value || params.get("curriculum");
  if (select.options.length !== curricula.length || [...select.options].some((o, i) => o.value !== curricula[i].name)) {
    select.replaceChildren(...curricula.map((c) => new Option(c.name, c.name)));
  }
  if (wanted && curricula.some((c) => c.name === wanted)) select.value = wanted;
  const info = curricula.find((c) => c.name === select.value);
  $("main").hidden = false;
  if (!info) {
    $("status").textContent = "no curricula yet";
    return;
  }
  const base = `/curricula/${encodeURIComponent(info.name)}`;
  const summary = info.task_space_summary;
  const adroit = summary.env_id === "AdroitHandRelocate-v1";
  const [teacher, signals, students, evaluations, distribution] = await Promise.all([
    api(`${base}/teacher`),
    api(`${base}/signals?signal=reward${adroit ? "&signal=ball_target_distance" : ""}`),
    api(`${base}/students`),
    api(`${base}/evaluations?limit=10000`),
    summary.maze_map ? api(`${base}/distribution?source=proposals&buckets=${BUCKETS}`) : null,
  ]);

  $("algorithm").textContent = teacher.algorithm;
  $("teacher-version").textContent = teacher.version;
  $("episodes").textContent = signals.episodes;
  $("reward-mean").textContent = teacher.rewards.mean === null ? "-" : teacher.rewards.mean.toPrecision(4);
  $("active-students").textContent = students.active;

  $("maze").hidden = !distribution;
  if (distribution) {
    const slider = $("time-slider");
    const following = playing === null && Number(slider.value) >= Number(slider.max); // stay on the newest
    heat = { layout: summary.maze_map, values: distribution.values, buckets: distribution.buckets };
    slider.max = Math.max(heat.buckets.length - 1, 0);
    if (following) slider.value = slider.max;
    $("maze").dataset.total = distribution.proposals;
    drawHeat();
  }
  lineChart($("chart-reward"), [{ label: `reward (${teacher.reward_signal})`, color: COLORS[0],
    ...windowSeries(signals, "reward") }], "episode");
  $("distance-figure").hidden = !adroit;
  if (adroit) {
    lineChart($("chart-distance"), [{ label: "ball to target", color: COLORS[1],
      ...windowSeries(signals, "ball_target_distance") }], "episode");
  }
  lineChart($("chart-success"), evaluationLines(evaluations, "success_rate"), "environment steps");
  lineChart($("chart-return"), evaluationLines(evaluations, "mean_return"), "environment steps");
  renderStudents(students);
  $("status").textContent = `updated ${new Date().toLocaleTimeString()}`;
  document.body.dataset.curriculum = info.name;
}

async function poll() {
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
    $("status").textContent = String(error);
  }
  setTimeout(poll, REFRESH_MS);
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
$("curriculum").addEventListener("change", () => refresh().catch((e) => ($("status").textContent = String(e))));
$("time-slider").addEventListener("input", drawHeat);
$("cumulative").addEventListener("change", drawHeat);
$("play").addEventListener("click", () => {
  if (playing !== null) {
    clearInterval(playing);
    playing = null;
    $("play").textContent = "Play";
    return;
  }
  const slider = $("time-slider");
  slider.value = 0;
  drawHeat();
  $("play").textContent = "Stop";
  playing = setInterval(() => {
    if (Number(slider.value) >= Number(slider.max)) {
      $("play").click();
      return;
    }
    slider.value = Number(slider.value) + 1;
    drawHeat();
  }, 400);
});

poll();
