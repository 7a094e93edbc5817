// persona-axis chat page: streams replies from /v1/chat/completions and draws each assistant
// turn's projection on the Assistant Axis (before/after capping) with the drift rule's level
// (none / watch / warning / alarm, computed by the server from the whole conversation), marks
// where the on-drift cap armed, and can answer a message with and without the cap side by side.
"use strict";

const LEVEL_COLOURS = { none: "#cdebd3", watch: "#fbe7b5", warning: "#f7b267", alarm: "#e5484d" };
const ON_DRIFT = "on-drift";

const state = { info: null, messages: [], turns: [], busy: false };
const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

function fmt(x) {
  return x === null || x === undefined ? "–" : Number(x).toFixed(2);
}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

async function loadInfo() {
  let res;
  try {
    res = await fetch("/v1/persona_axis", { headers: headers() });
  } catch (err) {
    $("model-name").textContent = "server unreachable";
    return;
  }
  if (!res.ok) {
    $("model-name").textContent = res.status === 401 ? "enter the API key, then reload settings" : "server error";
    return;
  }
  const info = await res.json();
  state.info = info;
  $("model-name").textContent = info.model;
  $("layer").textContent = info.target_layer;
  $("max-tokens").max = info.limits.max_tokens;
  $("max-tokens").value = Math.min(64, info.limits.max_tokens);
  const select = $("cap-setting");
  select.replaceChildren();
  const names = Object.keys(info.caps);
  for (const name of names) {
    const option = el("option", null, name);
    option.value = name;
    select.append(option);
  }
  if (info.recommended_cap) {
    const option = el("option", null, `${ON_DRIFT} (${info.recommended_cap} once drifting)`);
    option.value = ON_DRIFT;
    select.append(option);
  }
  const preferred = info.default_cap !== "none" ? info.default_cap : info.recommended_cap;
  if (preferred && (names.includes(preferred) || preferred === ON_DRIFT)) select.value = preferred;
  $("cap-toggle").checked = info.default_cap !== "none" && names.length > 0;
  $("cap-toggle").disabled = names.length === 0;
  select.disabled = names.length === 0;
  updateCapNote();
  const rule = info.rule;
  $("rule-desc").textContent = rule && rule.has_levels
    ? `watch ≥ ${fmt(rule.watch)}, warning ≥ ${fmt(rule.warning)}, alarm CUSUM ≥ ${fmt(rule.h)}; ${rule.source}`
    : "this bundle has no drift reference (benign profile or build percentiles): no levels";
  drawChart();
}

function updateCapNote() {
  const info = state.info;
  if (!info) return;
  const names = Object.keys(info.caps);
  if (names.length === 0) {
    $("cap-note").textContent = "This bundle has no cap settings.";
    return;
  }
  const on = $("cap-toggle").checked;
  if (on && $("cap-setting").value === ON_DRIFT) {
    $("cap-note").textContent = `Off until the drift rule reaches warning, then ${info.recommended_cap} (decided by the server from the conversation).`;
    return;
  }
  const cap = info.caps[$("cap-setting").value];
  const layers = cap ? cap.layers : [];
  const span = layers.length ? `layers ${layers[0]}–${layers[layers.length - 1]}` : "";
  const upstream = layers.length && !layers.includes(info.target_layer)
    ? ` The meter's layer ${info.target_layer} is ${layers[0] > info.target_layer ? "upstream of" : "downstream of"} the capped layers.`
    : "";
  $("cap-note").textContent = on ? `Floors on ${span}.${upstream}` : "No cap: the model runs unchanged.";
}

function capValue() {
  return $("cap-toggle").checked && $("cap-setting").value ? $("cap-setting").value : "none";
}

function addMessage(role, text) {
  const box = el("div", "msg " + role);
  box.append(el("div", "text", text));
  $("log").append(box);
  $("log").scrollTop = $("log").scrollHeight;
  return box;
}

function showError(message) {
  const box = addMessage("error", message);
  box.dataset.testid = "error";
}

function level(t) {
  return (t.drift_reading && t.drift_reading.level) || "none";
}

function onDriftText(t) {
  const gate = t.on_drift;
  if (!gate) return "";
  return gate.armed ? ` · on-drift: armed since turn ${gate.since_turn}` : " · on-drift: not armed";
}

function meterText(t) {
  if (t.projection_before === null) return `layer ${t.layer}: no reply tokens to measure`;
  let text = `layer ${t.layer}: before ${fmt(t.projection_before)} → after ${fmt(t.projection_after)}`;
  text += ` · level ${level(t)}`;
  if (t.cap) text += ` · cap ${t.cap} raised ${(100 * (t.cap_touched_fraction || 0)).toFixed(0)}% of token×layer values`;
  else text += " · no cap";
  return text + onDriftText(t);
}

function domain(values) {
  const all = values.filter((v) => v !== null && v !== undefined);
  if (all.length === 0) return [0, 1];
  let lo = Math.min(...all);
  let hi = Math.max(...all);
  const pad = Math.max((hi - lo) * 0.1, 1e-3);
  return [lo - pad, hi + pad];
}

function renderMeter(box, t) {
  const meter = el("div", "meter");
  const reading = t.drift_reading || {};
  const [lo, hi] = domain([t.projection_before, t.projection_after, reading.expected]);
  const x = (v) => `${(100 * (v - lo)) / (hi - lo)}%`;
  const track = el("div", "track level-" + level(t));
  if (reading.expected !== null && reading.expected !== undefined) {
    const tick = el("div", "tick");
    tick.style.left = x(reading.expected);
    tick.title = `expected for a benign turn like this: ${fmt(reading.expected)}`;
    track.append(tick);
  }
  for (const [cls, value] of [["before", t.projection_before], ["after", t.projection_after]]) {
    if (value === null || value === undefined) continue;
    const mark = el("div", "mark " + cls);
    mark.style.left = x(value);
    mark.title = `${cls} capping: ${fmt(value)}`;
    track.append(mark);
  }
  const badge = el("span", "level " + level(t), level(t));
  badge.dataset.testid = "drift-level";
  const label = el("div", "zone-label", meterText(t));
  label.dataset.testid = "meter-value";
  meter.append(track, badge, label);
  box.append(meter);
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

function drawChart() {
  const chart = $("chart");
  chart.replaceChildren();
  const width = 320;
  const height = 160;
  const values = state.turns.flatMap((t) => [t.projection_before, t.projection_after]);
  const [lo, hi] = domain(values);
  const y = (v) => height - 8 - ((height - 16) * (v - lo)) / (hi - lo);
  const n = Math.max(state.turns.length, 1);
  const x = (i) => 12 + ((width - 24) * (n === 1 ? 0.5 : i / (n - 1)));
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none" });
  state.turns.forEach((t, i) => {  // one stripe per turn, coloured by the rule's level
    const half = (width - 24) / (2 * n);
    root.append(svg("rect", { x: Math.max(0, x(i) - half), width: 2 * half, y: 0, height, fill: LEVEL_COLOURS[level(t)], opacity: 0.5 }));
  });
  const armed = state.turns.findIndex((t) => t.on_drift && t.on_drift.armed);
  if (armed >= 0) {  // the cap armed before this reply
    const line = svg("line", { x1: x(armed), x2: x(armed), y1: 0, y2: height, stroke: "#b42318", "stroke-width": 2 });
    line.classList.add("armed");
    root.append(line);
    $("armed-note").textContent = `on-drift cap armed from turn ${armed + 1}`;
  } else {
    $("armed-note").textContent = "";
  }
  for (const [key, dash, fill] of [["projection_before", "4 3", "#fff"], ["projection_after", "", "#1d2330"]]) {
    const points = state.turns
      .map((t, i) => [i, t[key]])
      .filter(([, v]) => v !== null && v !== undefined);
    if (points.length > 1) {
      root.append(svg("polyline", {
        points: points.map(([i, v]) => `${x(i)},${y(v)}`).join(" "),
        fill: "none", stroke: "#1d2330", "stroke-width": 1.2, "stroke-dasharray": dash,
      }));
    }
    for (const [i, v] of points) {
      root.append(svg("circle", { cx: x(i), cy: y(v), r: 3.5, fill, stroke: "#1d2330", "stroke-width": 1.2 }));
    }
  }
  chart.append(root);
}

async function readStream(res, onDelta) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let telemetry = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const raw = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of raw.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return telemetry;
        const event = JSON.parse(data);
        if (event.error) throw new Error(event.error.message);
        const choice = event.choices && event.choices[0];
        if (choice && choice.delta && choice.delta.content) onDelta(choice.delta.content);
        if (event.persona_axis) telemetry = event.persona_axis;
      }
    }
  }
  return telemetry;
}

async function complete(messages, cap, onDelta) {
  const res = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: headers(),
    body: JSON.stringify({
      model: state.info.model,
      messages,
      stream: true,
      max_tokens: Number($("max-tokens").value) || 64,
      persona_axis: { cap },
    }),
  });
  if (!res.ok) {
    const body = await res.json().catch(() => null);
    throw new Error(body && body.error ? body.error.message : `HTTP ${res.status}`);
  }
  let reply = "";
  const telemetry = await readStream(res, (delta) => {
    reply += delta;
    onDelta(reply);
  });
  return { reply, telemetry };
}

function comparedCap() {
  // the cap of the "with cap" column: the chosen setting, else the recommended cap
  const chosen = capValue();
  if (chosen !== "none") return chosen;
  return state.info.recommended_cap || Object.keys(state.info.caps)[0] || "none";
}

async function send(text) {
  if (!state.info) await loadInfo();
  if (!state.info) {
    showError("Could not read the server settings (check the API key).");
    return;
  }
  state.busy = true;
  $("send").disabled = true;
  state.messages.push({ role: "user", content: text });
  addMessage("user", text);
  const system = $("system").value.trim();
  const messages = system ? [{ role: "system", content: system }, ...state.messages] : [...state.messages];
  const compare = $("compare").checked;
  const box = compare ? el("div", "compare") : addMessage("assistant", "");
  const columns = [];
  if (compare) {
    const cap = comparedCap();
    for (const [setting, title] of [[cap, `with cap (${cap})`], ["none", "without cap"]]) {
      const column = el("div", "msg assistant");
      column.dataset.testid = setting === "none" ? "compare-uncapped" : "compare-capped";
      column.append(el("div", "column-title", title), el("div", "text", ""));
      box.append(column);
      columns.push([column, setting]);
    }
    $("log").append(box);
  } else {
    columns.push([box, capValue()]);
  }
  try {
    const results = await Promise.all(columns.map(([column, cap]) => {
      const node = column.querySelector(".text");
      return complete(messages, cap, (reply) => {
        node.textContent = reply;
        $("log").scrollTop = $("log").scrollHeight;
      });
    }));
    results.forEach(({ telemetry }, i) => { if (telemetry) renderMeter(columns[i][0], telemetry); });
    const { reply, telemetry } = results[0];  // the conversation goes on with the first column
    state.messages.push({ role: "assistant", content: reply });
    if (telemetry) {
      state.turns.push(telemetry);
      $("last-meter").textContent = `turn ${state.turns.length}: ${meterText(telemetry)}`;
      drawChart();
    }
  } catch (err) {
    box.remove();
    state.messages.pop();
    showError(err.message);
  } finally {
    state.busy = false;
    $("send").disabled = false;
  }
}

function reset() {
  state.messages = [];
  state.turns = [];
  $("log").replaceChildren();
  $("last-meter").textContent = "no reply yet";
  drawChart();
}

document.addEventListener("DOMContentLoaded", () => {
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("input").value.trim();
    if (!text || state.busy) return;
    $("input").value = "";
    send(text);
  });
  $("input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("cap-toggle").addEventListener("change", updateCapNote);
  $("cap-setting").addEventListener("change", updateCapNote);
  $("api-key").addEventListener("change", loadInfo);
  $("reset").addEventListener("click", reset);
  loadInfo();
});
