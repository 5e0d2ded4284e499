// The planner's page: compose a what-if, follow it, and draw its charts (plain JS).
"use strict";

const API = "/api/v1";
const $ = (sel) => document.querySelector(sel);
const state = { lang: localStorage.getItem("retwin.lang") || "en", model: null, run: null };

const I18N = {
  zh: {
    title: "稀土产业链：情景推演", compose: "设置情景", model: "参考模型", add_change: "+ 添加变化",
    replications: "重复次数", seed: "随机种子", label: "标签", submit: "运行情景", past_runs: "历史运行",
    status: "状态", created: "创建时间", compare: "比较勾选的两次运行", result: "结果", download: "下载：",
    kpis: "主要指标", kpi: "指标", key: "对象", year: "年份", value: "数值", delta: "与基准之差",
    targets: "目标", flows: "物料流向（吨 REO）", series: "时间序列", series_kind: "序列", token: "API 令牌",
    remove: "删除", kind: "类型", from: "起", to: "止", attained: "达成", missed: "未达成",
  },
  en: {},
};
const t = (key, fallback) => (I18N[state.lang] || {})[key] || fallback || key;

// --- changes -------------------------------------------------------------------------------
// Per change kind: what it names (and where the model lists the ids), its extra choice, and
// the amounts it can take.
const KINDS = {
  quota: { target: "quota", ids: "quota_ids", amounts: ["factor", "set_t_reo", "delta_t_reo"] },
  price: { target: "material", ids: "material_ids", amounts: ["factor", "value_cny_per_unit"] },
  capacity: { target: "plant", ids: "plant_ids", amounts: ["factor", "set_tpa", "delta_tpa"] },
  // the form retires a plant; adding one takes a whole plant spec (API, CLI or a what-if file)
  plant: { target: "plant_id", ids: "plant_ids", extra: ["action", ["retire"]], amounts: [] },
  outage: { target: "plant", ids: "plant_ids", amounts: ["capacity_frac"] },
  demand: { target: "segment", ids: "segment_ids", amounts: ["factor", "growth_frac_per_year"] },
  trade: { target: "market", ids: "market_ids", extra: ["side", ["import", "export"]],
           amounts: ["factor", "cap_tpa"] },
  reserve: { target: "material", ids: "material_ids", amounts: ["reserve_t", "delta_t"] },
};

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function options(select, values, selected) {
  select.replaceChildren(...values.map((v) => el("option", { value: v }, v)));
  if (selected !== undefined) select.value = selected;
}

function addChange(init = {}) {
  const row = el("div", { class: "change" });
  const kind = el("select", { name: "kind" });
  options(kind, Object.keys(KINDS), init.kind || "quota");
  const fields = el("span");
  const err = el("span", { class: "err", "data-role": "err" });
  const draw = () => {
    const spec = KINDS[kind.value];
    const target = el("select", { name: spec.target });
    options(target, (state.model && state.model[spec.ids]) || []);
    fields.replaceChildren(el("label", {}, spec.target + " ", target),
      el("span", { class: "err", "data-field": spec.target }));
    if (spec.extra) {
      const x = el("select", { name: spec.extra[0] });
      options(x, spec.extra[1]);
      fields.append(el("label", {}, spec.extra[0] + " ", x),
        el("span", { class: "err", "data-field": spec.extra[0] }));
    }
    if (spec.amounts.length) {
      const which = el("select", { name: "amount" });
      options(which, spec.amounts);
      const value = el("input", { name: "value", type: "number", step: "any", value: "0.9" });
      fields.append(which, value);
      for (const a of spec.amounts) fields.append(el("span", { class: "err", "data-field": a }));
    }
    fields.append(el("label", {}, t("from", "from") + " ", el("input", { name: "from", type: "date", value: "2025-01-01" })),
      el("span", { class: "err", "data-field": "from" }),
      el("label", {}, t("to", "to") + " ", el("input", { name: "to", type: "date" })),
      el("span", { class: "err", "data-field": "to" }));
  };
  kind.addEventListener("change", draw);
  draw();
  row.append(el("label", {}, t("kind", "kind") + " ", kind), fields,
    el("button", { type: "button", onclick: () => row.remove() }, t("remove", "remove")), err);
  $("#changes").append(row);
  return row;
}

function readChange(row) {
  const kind = row.querySelector("[name=kind]").value;
  const spec = KINDS[kind];
  const ch = { kind };
  ch[spec.target] = row.querySelector(`[name=${spec.target}]`).value;
  if (spec.extra) ch[spec.extra[0]] = row.querySelector(`[name=${spec.extra[0]}]`).value;
  const which = row.querySelector("[name=amount]");
  const value = row.querySelector("[name=value]");
  if (which && value.value !== "") ch[which.value] = Number(value.value);
  for (const k of ["from", "to"]) {
    const v = row.querySelector(`[name=${k}]`).value;
    if (v) ch[k] = v;
  }
  return ch;
}

// --- HTTP ----------------------------------------------------------------------------------

async function api(path, opts = {}) {
  const headers = Object.assign({ Accept: "application/json" }, opts.headers || {});
  const token = localStorage.getItem("retwin.token");
  if (token) headers.Authorization = `Bearer ${token}`;
  const res = await fetch(API + path, Object.assign({}, opts, { headers }));
  if (res.status === 401) {
    $("#token-button").hidden = false;
    const given = window.prompt("This service needs an API token (retwin token create NAME):");
    if (given) {
      localStorage.setItem("retwin.token", given.trim());
      return api(path, opts);
    }
  }
  let body = null;
  try { body = await res.json(); } catch (_) { body = null; }
  if (!res.ok) { const e = new Error(detailText(body) || res.statusText); e.status = res.status; e.body = body; throw e; }
  return body;
}

function detailText(body) {
  if (!body || body.detail === undefined) return "";
  if (typeof body.detail === "string") return body.detail;
  return body.detail.map((d) => d.msg).join("; ");
}

function clearErrors() {
  document.querySelectorAll(".err").forEach((e) => { e.textContent = ""; });
  document.querySelectorAll(".invalid").forEach((e) => e.classList.remove("invalid"));
}

// A 422's items name the field (loc: body, field path): show each next to its field.
function showErrors(detail) {
  const rows = [...document.querySelectorAll("#changes .change")];
  for (const d of detail) {
    const loc = (d.loc || []).filter((x) => x !== "body");
    let spot = null;
    if (loc[0] === "changes" && Number.isInteger(loc[1]) && rows[loc[1]]) {
      const row = rows[loc[1]];
      for (const part of loc.slice(2).reverse()) {
        spot = row.querySelector(`[data-field="${part}"]`);
        if (spot) break;
      }
      spot = spot || row.querySelector("[data-role=err]");
      row.classList.add("invalid");
    } else if (loc.length) {
      spot = document.querySelector(`#whatif-form [data-loc="${loc[0]}"]`);
      const input = document.querySelector(`#whatif-form [name="${loc[0]}"]`);
      if (input) input.classList.add("invalid");
    }
    spot = spot || document.querySelector('#whatif-form [data-loc="body"]');
    spot.textContent = (spot.textContent ? spot.textContent + "; " : "") + d.msg;
  }
}

// --- numbers -------------------------------------------------------------------------------

function fmt(v) {
  if (v === null || v === undefined) return "–";
  if (Math.abs(v) >= 100) return Math.round(v).toLocaleString("en-US");
  return Number(v.toPrecision(3)).toLocaleString("en-US", { maximumSignificantDigits: 3 });
}

const HEADLINE = ["output.stage", "value.group", "local_conversion", "fill_rate.segment",
  "element.la_ce_surplus", "element.dy_tb_deficit"];
// A KPI's label as the package declares it (GET /kpis); its name until that has loaded.
const kpiLabel = (name) => {
  const d = state.kpis && state.kpis[name];
  return d ? (state.lang === "zh" ? d.label_zh : d.label) : name;
};
async function loadKpis() {
  state.kpis = Object.fromEntries((await api("/kpis")).map((k) => [k.name, k]));
}

// --- the flow ------------------------------------------------------------------------------

async function loadModels() {
  const models = await api("/models");
  options($("#model"), models.data.map((m) => m.name), models.data.some((m) => m.name === "baotou-2024") ? "baotou-2024" : undefined);
  await loadModel();
}

async function loadModel() {
  state.model = await api(`/models/${encodeURIComponent($("#model").value)}`);
  $("#changes").replaceChildren();
}

async function submit(ev) {
  ev.preventDefault();
  clearErrors();
  $("#message").textContent = "";
  const body = {
    model: $("#model").value,
    changes: [...document.querySelectorAll("#changes .change")].map(readChange),
    replications: Number($("#replications").value),
    seed: Number($("#seed").value),
    label: $("#label").value,
  };
  try {
    const run = await api("/runs", { method: "POST", body: JSON.stringify(body),
      headers: { "Content-Type": "application/json" } });
    location.hash = `run=${run.id}`;
    await follow(run.id);
  } catch (e) {
    if (e.status === 422 && e.body && Array.isArray(e.body.detail)) showErrors(e.body.detail);
    else $("#message").textContent = e.message;
  }
}

async function follow(id) {
  $("#progress").hidden = false;
  for (;;) {
    const run = await api(`/runs/${encodeURIComponent(id)}?wait=2`);
    $("#progress-bar").value = run.progress || 0;
    $("#progress-text").textContent = `${run.status} ${Math.round((run.progress || 0) * 100)} %`;
    if (["done", "failed", "cancelled"].includes(run.status)) {
      $("#progress").hidden = run.status === "done";
      loadRuns();
      if (run.status === "done") return showRun(run);
      $("#message").textContent = `${run.status}: ${run.error || ""}`;
      return;
    }
  }
}

function showRun(run) {
  state.run = run;
  const r = run.result;
  $("#result").hidden = false;
  $("#run-link").textContent = run.id;
  $("#run-link").href = `#run=${run.id}`;
  $("#run-meta").textContent = `${run.model} · ${r.start} – ${r.end} · seed ${r.seed} · ` +
    `${r.replications} × · ${(run.request.changes || []).length} change(s)`;
  const dl = [];
  for (const table of ["kpis", "series", "flows"]) {
    for (const f of ["csv", "parquet"]) {
      dl.push(el("a", { href: `${API}/runs/${run.id}/${table}?format=${f}`, download: "",
        class: "download", "data-table": table, "data-format": f }, `${table}.${f}`));
    }
  }
  $("#downloads").replaceChildren(...dl);
  const diff = new Map((r.difference || []).map((d) => [`${d.kpi}|${d.key}|${d.year}`, d.mean]));
  const rows = r.kpis.filter((k) => HEADLINE.includes(k.kpi))
    .sort((a, b) => HEADLINE.indexOf(a.kpi) - HEADLINE.indexOf(b.kpi));
  $("#kpi-table tbody").replaceChildren(...rows.map((k) => {
    const d = diff.get(`${k.kpi}|${k.key}|${k.year}`);
    const cls = d === undefined || d === null || Math.abs(d) < 1e-9 ? "" : (d > 0 ? "pos" : "neg");
    return el("tr", {},
      el("td", { title: k.kpi }, kpiLabel(k.kpi)), el("td", {}, k.key), el("td", {}, String(k.year)),
      el("td", { class: "num kpi-value", "data-kpi": k.kpi, "data-key": k.key,
        "data-year": String(k.year), "data-value": String(k.mean) }, fmt(k.mean)),
      el("td", { class: "num" }, r.replications > 1 ? `${fmt(k.p5)} – ${fmt(k.p95)}` : ""),
      el("td", { class: `num ${cls}` }, d === undefined ? "" : (d > 0 ? "+" : "") + fmt(d)));
  }));
  $("#target-table tbody").replaceChildren(...r.targets.map((g) => el("tr",
    { class: g.attained ? "ok" : "bad" }, el("td", {}, g.name), el("td", {}, String(g.year)),
    el("td", { class: "num" }, `${fmt(g.value)} / ${fmt(g.goal)} ${g.unit}`),
    el("td", {}, g.attained ? t("attained", "attained") : t("missed", "missed")))));
  drawCharts();
}

async function chart(name, params = {}) {
  const q = new URLSearchParams(Object.assign({ lang: state.lang }, params));
  return api(`/runs/${encodeURIComponent(state.run.id)}/charts/${name}?${q}`);
}

function plot(div, fig) {
  Plotly.react(div, fig.data, Object.assign({}, fig.layout, { autosize: true }),
    { displaylogo: false, responsive: true });
}

async function drawSankey(year) {
  const s = await chart("sankey", year ? { year } : {});
  if (!year) options($("#sankey-year"), s.years.map(String), String(s.year));
  const [what, base] = s.figures;
  if (base) {
    base.layout.title.text += ` — ${state.lang === "zh" ? "基准" : "baseline"}`;
    what.layout.title.text += ` — ${state.lang === "zh" ? "情景" : "what-if"}`;
    $("#sankey-baseline").hidden = false;
    plot("sankey-baseline", base);
  } else {
    $("#sankey-baseline").hidden = true;
  }
  plot("sankey", what);
}

async function drawSeries() {
  const s = await chart("timeseries", { kind: $("#ts-kind").value });
  plot("timeseries", s.figures[0]);
}

async function drawCharts() {
  await Promise.all([
    drawSankey(),
    drawSeries(),
    chart("elements").then((s) => plot("elements", s.figures[0])),
    chart("bottlenecks").then((s) => plot("bottlenecks", s.figures[0])),
  ]).catch((e) => { $("#message").textContent = e.message; });
}

async function loadRuns() {
  const runs = await api("/runs?limit=30");
  $("#runs tbody").replaceChildren(...runs.data.map((r) => el("tr", {},
    el("td", {}, el("input", { type: "checkbox", class: "pick", value: r.id })),
    el("td", {}, el("a", { href: `#run=${r.id}` }, r.id)), el("td", {}, r.model),
    el("td", {}, r.label), el("td", {}, r.status), el("td", {}, (r.created_at || "").slice(0, 19)))));
}

async function compare() {
  const ids = [...document.querySelectorAll(".pick:checked")].map((c) => c.value);
  const out = $("#compare-result");
  if (ids.length !== 2) { out.textContent = "Tick exactly two runs."; return; }
  try {
    const c = await api(`/runs/${ids[0]}/compare/${ids[1]}?kpi=output.stage&kpi=value.group&kpi=element.la_ce_surplus&kpi=element.dy_tb_deficit`);
    out.replaceChildren(el("p", {}, `${c.a} − ${c.b}${c.paired ? " (paired)" : ""}`),
      el("table", {}, el("thead", {}, el("tr", {}, ...["kpi", "key", "year", "a", "b", "a − b"].map((h) => el("th", {}, h)))),
        el("tbody", {}, ...c.rows.map((r) => el("tr", {}, el("td", {}, r.kpi), el("td", {}, r.key),
          el("td", {}, String(r.year)), el("td", { class: "num" }, fmt(r.a_mean)),
          el("td", { class: "num" }, fmt(r.b_mean)), el("td", { class: "num" }, fmt(r.mean)))))));
  } catch (e) { out.textContent = e.message; }
}

async function fromHash() {
  const m = /run=([^&]+)/.exec(location.hash);
  if (m && (!state.run || state.run.id !== m[1])) {
    try { await follow(decodeURIComponent(m[1])); } catch (e) { $("#message").textContent = e.message; }
  }
}

function applyLang() {
  document.documentElement.lang = state.lang;
  $("#lang-toggle").textContent = state.lang === "zh" ? "English" : "中文";
  document.querySelectorAll("[data-i18n]").forEach((e) => {
    if (!e.dataset.en) e.dataset.en = e.textContent;
    e.textContent = t(e.dataset.i18n, e.dataset.en);
  });
}

$("#lang-toggle").addEventListener("click", () => {
  state.lang = state.lang === "zh" ? "en" : "zh";
  localStorage.setItem("retwin.lang", state.lang);
  applyLang();
  if (state.run) showRun(state.run);
});
$("#token-button").addEventListener("click", () => {
  const given = window.prompt("API token:");
  if (given) { localStorage.setItem("retwin.token", given.trim()); loadModels().then(loadRuns); }
});
$("#model").addEventListener("change", loadModel);
$("#add-change").addEventListener("click", () => addChange());
$("#whatif-form").addEventListener("submit", submit);
$("#sankey-year").addEventListener("change", (e) => drawSankey(Number(e.target.value)));
$("#ts-kind").addEventListener("change", drawSeries);
$("#compare-button").addEventListener("click", compare);
window.addEventListener("hashchange", fromHash);

applyLang();
loadModels().then(loadKpis).then(loadRuns).then(fromHash).catch((e) => { $("#message").textContent = e.message; });
