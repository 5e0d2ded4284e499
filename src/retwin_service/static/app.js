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
    cards_hint: "情景值 · 与基准之差及百分比（配对）· 各次重复的 p5–p95 · 走势线：实线为情景，虚线为基准",
    all_kpis: "全部指标（分组，所选年份）", unit: "单位", targets_hint: "各目标按模型设定的年份列出；数值为各次重复的平均值。",
    target: "目标", goal: "目标值", baseline: "基准", whatif: "情景", markets: "价格、利润率与库存可用天数",
    flows_hint: "默认显示变化开始生效的第一年；左为基准。", bottlenecks: "各环节逐年的制约因素",
    series: "各环节月度产量（实线为情景，阴影为各次重复中该环节合计的 p5–p95，虚线为基准）", reps: "次重复", changes_n: "项变化",
    target_only: "目标年份：", stage: "环节", plant: "工厂", action: "操作", capacity: "年产能",
    ramp: "爬坡天数", name: "名称", plant_id: "编号", side: "方向", quota: "配额", material: "物料",
    segment: "需求板块", market: "市场", plant_id_retire: "工厂",
    why: "为何变化？（各项变化对差值的贡献）", why_button: "分解差值", card: "指标卡",
    why_hint: "以相同随机种子和重复次数分别单独运行每项变化（三项及以上时还运行“去掉其中一项”），与同一基准配对，把每张指标卡的差值分解到各项变化及其交互作用。",
    change: "变化",
    plants_title: "各工厂月度产量（实线为情景及其 p5–p95 区间，虚线为基准）", plants: "工厂", all: "全部",
    none_ticked: "请勾选要显示的工厂。",
    bn_hint: "每格：基准的制约因素 → 情景的制约因素（该环节当年最紧的约束）；有变化的格子高亮。",
  },
  en: {},
};
const t = (key, fallback) => (I18N[state.lang] || {})[key] || fallback || key;

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function options(sel, values, selected) {
  sel.replaceChildren(...values.map((v) => el("option", { value: v }, v)));
  if (selected !== undefined) sel.value = selected;
}

// --- changes -------------------------------------------------------------------------------
// One form per change kind, with the fields that kind has (retwin.scenario.schema) and honest
// defaults: every date is filled in where it can be seen (nothing silently runs to the end of
// the horizon), an outage takes the plant down unless a partial share is chosen, and a line
// under each row says in plain words what the change will do.

const ZH = () => state.lang === "zh";
// The model as the form needs it (GET /models/{name}/outline): ids, names, stages, capacities.
const sc = () => state.model || { plants: [], materials: [], quotas: [], markets: [], demand: [],
  targets: [] };
const IDS = { plant_ids: "plants", material_ids: "materials", quota_ids: "quotas", market_ids: "markets",
  segment_ids: "demand" };
const byId = (list, id) => (list || []).find((x) => x.id === id);
const nameOf = (list, id) => {
  const x = byId(list, id);
  if (!x) return id;
  return (ZH() && x.name_zh) || x.name || id;
};
const STAGE_ZH = { mining: "采选", recycling: "回收", separation: "冶炼分离", metal: "金属",
  magnet: "磁材", materials: "功能材料", motor: "电机", end_product: "终端产品" };
const stageName = (s) => (!s ? "?" : ZH() ? STAGE_ZH[s] || s : s.replace("_", " "));
const unitOf = (materialId) => ((byId(sc().materials, materialId) || {}).unit || "t");
const plantUnit = (plantId) => {
  const p = byId(sc().plants, plantId);
  return p ? unitOf(p.output) : "t";
};
const modelStart = () => (state.model ? String(state.model.start) : "2024-01-01");
const modelEnd = () => (state.model ? String(state.model.end) : "2030-12-31");
// The first day of the year after the model's start: a what-if usually starts there.
const nextYear = () => `${Number(modelStart().slice(0, 4)) + 1}-01-01`;
const num = (v) => Number(v).toLocaleString("en-US", { maximumFractionDigits: 3 });
const pct = (f) => `${f >= 1 ? "+" : "−"}${num(Math.abs(f - 1) * 100)} %`;

// A field of a form: [name, label en, label zh, kind of input, default (a function of the row)]
const F = {
  amount: (modes, dflt) => ({ name: "mode", modes, dflt }),
};
const FORMS = {
  quota: {
    target: ["quota", "quota_ids"],
    modes: [["factor", "× factor", "倍数", 0.9], ["set_t_reo", "set to t REO/yr", "设为 吨REO/年", null],
            ["delta_t_reo", "add t REO/yr", "增加 吨REO/年", -10000]],
  },
  price: {
    target: ["material", "material_ids"],
    modes: [["factor", "× factor", "倍数", 1.2], ["value_cny_per_unit", "set to CNY per unit", "设为 元/单位", null]],
    ramp: 90,
  },
  capacity: {
    target: ["plant", "plant_ids"], scope: true,
    modes: [["factor", "× factor", "倍数", 1.2], ["set_tpa", "set to per year", "设为 每年", null],
            ["delta_tpa", "add per year", "增加 每年", 10000]],
    ramp: 180,
  },
  plant: { action: true },
  outage: { target: ["plant", "plant_ids"], outage: true },
  demand: {
    target: ["segment", "segment_ids"],
    modes: [["factor", "× factor", "倍数", 1.1], ["growth_frac_per_year", "growth per year", "年增长率", 0.1]],
  },
  trade: {
    target: ["market", "market_ids"], side: true,
    modes: [["factor", "× factor", "倍数", 0.5], ["cap_tpa", "cap per year", "上限 每年", 0]],
  },
  reserve: {
    target: ["material", "material_ids"],
    modes: [["delta_t", "add t", "增加 吨", 1000], ["reserve_t", "set to t", "设为 吨", 1000]],
  },
};
const KIND_ZH = { quota: "配额", price: "价格", capacity: "产能", plant: "工厂", outage: "停产",
  demand: "需求", trade: "贸易", reserve: "储备" };

// The current value of a mode's default (a set-to mode starts at today's level where known).
function modeDefault(form, mode, target) {
  const m = form.modes.find((x) => x[0] === mode);
  if (m[3] !== null) return m[3];
  if (mode === "set_t_reo") {
    const q = byId(sc().quotas, target);
    const v = q && Object.values(q.annual_t_reo || {})[0];
    return v ? Math.round(v * 0.9) : 0;
  }
  if (mode === "value_cny_per_unit") {
    const m2 = byId(sc().materials, target);
    return m2 ? Math.round(m2.base_cny_per_unit * 1.2) : 0;
  }
  if (mode === "set_tpa") {
    const p = byId(sc().plants, target);
    return p ? Math.round(p.capacity_tpa * 1.2) : 0;
  }
  return 0;
}

function field(label, input, errName) {
  return [el("label", {}, label + " ", input), el("span", { class: "err", "data-field": errName })];
}

function input(name, type, value, extra = {}) {
  return el("input", Object.assign({ name, type, value: value === undefined ? "" : String(value) },
    type === "number" ? { step: "any" } : {}, extra));
}

function select(name, values, selected, labels) {
  const s = el("select", { name });
  s.replaceChildren(...values.map((v, i) => el("option", { value: v }, labels ? labels[i] : v)));
  if (selected !== undefined && values.includes(selected)) s.value = selected;
  return s;
}

function plantLabels(ids) { return ids.map((id) => `${nameOf(sc().plants, id)} (${id})`); }

function targetSelect(form, init) {
  const [name, idsKey] = form.target;
  const ids = (sc()[IDS[idsKey]] || []).map((x) => x.id);
  const labels = idsKey === "plant_ids" ? plantLabels(ids)
    : idsKey === "material_ids" ? ids.map((id) => `${nameOf(sc().materials, id)} (${id})`)
      : idsKey === "segment_ids" ? ids.map((id) => `${nameOf(sc().demand, id)} (${id})`)
        : idsKey === "quota_ids" ? ids.map((id) => `${nameOf(sc().quotas, id)} (${id})`) : ids;
  // a price change most often asks about PrNd oxide
  const dflt = init[name] || (idsKey === "material_ids" && ids.includes("prnd_oxide") ? "prnd_oxide" : undefined);
  return select(name, ids, dflt, labels);
}

function dates(fields, init, { from, to, toNeeded = true }) {
  fields.append(...field(t("from", "from"), input("from", "date", init.from || from,
    { required: "" }), "from"));
  if (toNeeded) {
    fields.append(...field(t("to", "to"), input("to", "date", init.to || to, { required: "" }), "to"));
  }
}

function addChange(init = {}) {
  const row = el("div", { class: "change" });
  const kind = select("kind", Object.keys(FORMS), init.kind || "quota",
    Object.keys(FORMS).map((k) => (ZH() ? KIND_ZH[k] : k)));
  const fields = el("span", { class: "fields" });
  const plain = el("div", { class: "plain", "data-role": "plain" });
  const err = el("span", { class: "err", "data-role": "err" });
  const draw = (first) => {
    const k = kind.value;
    const form = FORMS[k];
    const i = first ? init : {};
    fields.replaceChildren();
    if (form.action) {
      const action = select("action", ["add", "retire"], i.action || "add",
        ZH() ? ["新建", "退役"] : ["add a plant", "retire a plant"]);
      fields.append(...field(t("action", "action"), action, "action"));
      const sub = el("span", { class: "sub" });
      fields.append(sub);
      const drawPlant = () => {
        sub.replaceChildren();
        if (action.value === "retire") {
          sub.append(...field(t("plant", "plant"), targetSelect({ target: ["plant_id", "plant_ids"] }, i),
            "plant_id"));
          dates(sub, i, { from: nextYear(), toNeeded: false });
        } else {
          const stages = [...new Set(sc().plants.map((p) => p.stage))];
          const stage = select("stage", stages, (i.plant && i.plant.stage) || "magnet",
            stages.map(stageName));
          const capacity = input("capacity_tpa", "number", "", { min: "0" });
          const id = input("plant_id_new", "text", "", { maxlength: "64", size: "18" });
          const name = input("plant_name", "text", "", { maxlength: "200", size: "18" });
          const template = () => sc().plants.filter((p) => p.stage === stage.value)
            .sort((a, b) => b.capacity_tpa - a.capacity_tpa)[0];
          const fill = () => {
            const tp = template();
            capacity.value = tp ? String(Math.round(tp.capacity_tpa / 2)) : "10000";
            id.value = `new_${stage.value}_plant`;
            name.value = ZH() ? `新建${stageName(stage.value)}厂` : `New ${stageName(stage.value)} plant`;
            row.dataset.template = tp ? tp.id : "";
          };
          stage.addEventListener("change", () => { fill(); update(); });
          fill();
          fullModel().then(update).catch(() => {});
          if (i.plant) {
            capacity.value = String(i.plant.capacity_tpa);
            id.value = i.plant.id;
            name.value = i.plant.name;
          }
          sub.append(...field(t("stage", "stage"), stage, "stage"),
            ...field(t("plant_id", "id"), id, "id"), ...field(t("name", "name"), name, "name"),
            ...field(t("capacity", "capacity per year"), capacity, "capacity_tpa"));
          dates(sub, i, { from: nextYear(), toNeeded: false });
          sub.append(...field(t("ramp", "ramp days"), input("ramp_days", "number",
            i.plant ? i.plant.ramp_days : 180, { min: "0", max: "3650", step: "1" }), "ramp_days"));
        }
        update();
      };
      action.addEventListener("change", drawPlant);
      drawPlant();
      return;
    }
    if (form.scope) {
      const scope = select("scope", ["plant", "stage"], i.stage ? "stage" : "plant",
        ZH() ? ["一家工厂", "整个环节"] : ["one plant", "every plant of a stage"]);
      const holder = el("span");
      const drawScope = () => {
        if (scope.value === "stage") {
          const stages = [...new Set(sc().plants.map((p) => p.stage))];
          holder.replaceChildren(...field(t("stage", "stage"),
            select("stage", stages, i.stage, stages.map(stageName)), "stage"));
        } else {
          holder.replaceChildren(...field(t("plant", "plant"), targetSelect(form, i), "plant"));
        }
        update();
      };
      scope.addEventListener("change", drawScope);
      fields.append(scope, holder);
      drawScope();
    } else {
      fields.append(...field(t(form.target[0], form.target[0]), targetSelect(form, i), form.target[0]));
    }
    if (form.side) {
      fields.append(...field(t("side", "side"), select("side", ["import", "export"], i.side || "export",
        ZH() ? ["进口", "出口"] : ["import", "export"]), "side"));
    }
    if (form.outage) {
      const how = select("how", ["down", "partial"], i.capacity_frac ? "partial" : "down",
        ZH() ? ["完全停产（产能 0）", "部分停产"] : ["down (capacity 0)", "partial: keeps a share"]);
      const share = input("capacity_frac", "number", i.capacity_frac || 0.5,
        { min: "0", max: "0.99", step: "0.05" });
      const shareLabel = el("label", {}, (ZH() ? "保留产能比例" : "share kept") + " ", share);
      const showShare = () => { shareLabel.hidden = how.value !== "partial"; update(); };
      how.addEventListener("change", showShare);
      fields.append(how, shareLabel, el("span", { class: "err", "data-field": "capacity_frac" }));
      showShare();
      const y = nextYear().slice(0, 4);
      dates(fields, i, { from: `${y}-04-01`, to: `${y}-06-30` });
    } else {
      const modeNames = form.modes.map((m) => m[0]);
      const given = modeNames.find((m) => i[m] !== undefined && i[m] !== null);
      const mode = select("mode", modeNames, given || modeNames[0],
        form.modes.map((m) => (ZH() ? m[2] : m[1])));
      const targetOf = () => { const s = fields.querySelector(`[name="${form.target[0]}"]`); return s && s.value; };
      const value = input("value", "number", given ? i[given] : modeDefault(form, mode.value, targetOf()));
      mode.addEventListener("change", () => {
        value.value = String(modeDefault(form, mode.value, targetOf()));
        update();
      });
      fields.append(mode, value, ...modeNames.map((m) => el("span", { class: "err", "data-field": m })));
      if (form.ramp !== undefined) {
        fields.append(...field(t("ramp", "ramp days"), input("ramp_days", "number",
          i.ramp_days !== undefined ? i.ramp_days : form.ramp, { min: "0", max: "3650", step: "1" }),
        "ramp_days"));
      }
      dates(fields, i, { from: nextYear(), to: modelEnd() });
    }
    update();
  };
  const update = () => { plain.textContent = describe(readChange(row)); };
  kind.addEventListener("change", () => draw(false));
  row.addEventListener("input", update);
  row.addEventListener("change", update);
  row.append(el("label", {}, t("kind", "kind") + " ", kind), fields,
    el("button", { type: "button", class: "remove", onclick: () => row.remove() }, t("remove", "remove")),
    err, plain);
  $("#changes").append(row);
  draw(true);
  return row;
}

// The change a row stands for, as the API takes it (every date explicit).
function readChange(row) {
  const get = (n) => { const e = row.querySelector(`[name="${n}"]`); return e ? e.value : undefined; };
  const k = get("kind");
  const ch = { kind: k };
  const from = get("from");
  const to = get("to");
  if (from !== undefined) ch.from = from;
  if (to !== undefined) ch.to = to;
  const numOr = (v) => (v === "" || v === undefined ? v : Number(v));
  if (k === "plant") {
    ch.action = get("action");
    if (ch.action === "retire") { ch.plant_id = get("plant_id"); return ch; }
    // the template's whole plant (its recipe, availability…) comes from the full model
    // document, asked for once a plant is added; until it is here, its main output names the unit
    const full = state.full && state.full.name === (state.model || {}).name ? state.full.scenario.plants : [];
    const brief = byId(sc().plants, row.dataset.template);
    const tp = byId(full, row.dataset.template) || (brief ? { id: brief.id, recipe: { outputs: { [brief.output]: 1 } } } : {});
    const plant = JSON.parse(JSON.stringify(tp));
    Object.assign(plant, {
      id: get("plant_id_new"), name: get("plant_name"), name_zh: "", stage: get("stage"),
      capacity_tpa: numOr(get("capacity_tpa")), ramp_days: numOr(get("ramp_days")),
      commissioning: from || null, retirement: null,
      availability: tp.availability ? Object.assign({}, tp.availability, { planned_outages: [] }) : undefined,
      source: `added on the planner's page from the template ${tp.id || "?"}`,
    });
    for (const key of Object.keys(plant)) if (plant[key] === undefined) delete plant[key];
    ch.plant = plant;
    return ch;
  }
  if (k === "outage") {
    ch.plant = get("plant");
    ch.capacity_frac = get("how") === "partial" ? numOr(get("capacity_frac")) : 0;
    return ch;
  }
  const form = FORMS[k];
  if (form.scope) {
    if (get("scope") === "stage") ch.stage = get("stage"); else ch.plant = get("plant");
  } else {
    ch[form.target[0]] = get(form.target[0]);
  }
  if (form.side) ch.side = get("side");
  ch[get("mode")] = numOr(get("value"));
  if (form.ramp !== undefined) ch.ramp_days = numOr(get("ramp_days"));
  return ch;
}

// What a change will do, in one plain sentence.
function describe(given) {
  const zh = ZH();
  // a stored request names every field, the ones not given as null
  const ch = Object.fromEntries(Object.entries(given).filter(([, v]) => v !== null && v !== ""));
  const when = ch.to ? `${ch.from || "?"} → ${ch.to}` : (zh ? `自 ${ch.from || "?"} 起` : `from ${ch.from || "?"}`);
  const ramp = ch.ramp_days ? (zh ? `，${ch.ramp_days} 天内逐步达到` : `, reached over ${ch.ramp_days} days`) : "";
  const amount = (unit) => {
    if (ch.factor !== undefined) return `× ${num(ch.factor)} (${pct(ch.factor)})`;
    for (const [key, verb, verbZh] of [["set_t_reo", "set to", "设为"], ["set_tpa", "set to", "设为"],
      ["value_cny_per_unit", "set to", "设为"], ["cap_tpa", "capped at", "上限"], ["reserve_t", "set to", "设为"]]) {
      if (ch[key] !== undefined) return `${zh ? verbZh : verb} ${num(ch[key])} ${unit}`;
    }
    for (const key of ["delta_t_reo", "delta_tpa", "delta_t"]) {
      if (ch[key] !== undefined) return `${ch[key] >= 0 ? "+" : "−"}${num(Math.abs(ch[key]))} ${unit}`;
    }
    if (ch.growth_frac_per_year !== undefined) {
      return zh ? `年增长率改为 ${num(ch.growth_frac_per_year * 100)} %` : `grows ${num(ch.growth_frac_per_year * 100)} % a year`;
    }
    return "?";
  };
  switch (ch.kind) {
    case "outage":
      return ch.capacity_frac
        ? `${nameOf(sc().plants, ch.plant)} ${zh ? `降至 ${num(ch.capacity_frac * 100)} % 产能` : `at ${num(ch.capacity_frac * 100)} % of capacity`} ${when}`
        : `${nameOf(sc().plants, ch.plant)} ${zh ? "停产" : "down"} ${when}`;
    case "quota":
      return `${nameOf(sc().quotas, ch.quota)} ${amount("t REO/yr")} ${when}`;
    case "price": {
      const mat = nameOf(sc().materials, ch.material);
      const mkt = sc().markets_on;
      const how = mkt ? (zh ? "（市场模式：改变外部价格，本地价格经市场跟随）"
        : " (markets on: moves the outside price; the local price follows through the market)") : "";
      return `${mat} ${zh ? "价格" : "price"} ${amount(`CNY/${unitOf(ch.material)}`)} ${when}${ramp}${how}`;
    }
    case "capacity": {
      const who = ch.stage ? (zh ? `${stageName(ch.stage)}环节全部工厂` : `every ${stageName(ch.stage)} plant`)
        : nameOf(sc().plants, ch.plant);
      return `${who} ${zh ? "产能" : "capacity"} ${amount(`${ch.plant ? plantUnit(ch.plant) : "t"}/yr`)} ${when}${ramp}`;
    }
    case "plant":
      if (ch.action === "retire") return `${nameOf(sc().plants, ch.plant_id)} ${zh ? "退役，自" : "retired from"} ${ch.from || "?"}`;
      {
        const u = unitOf(Object.keys((ch.plant.recipe || { outputs: { t: 1 } }).outputs)[0]);
        return zh
          ? `新建${stageName(ch.plant.stage)}厂 ${ch.plant.name}（${ch.plant.id}），产能 ${num(ch.plant.capacity_tpa)} ${u}/年，${ch.from || "?"} 投产，${ch.plant.ramp_days} 天达产；工艺参照 ${row_template(ch)}`
          : `Add ${ch.plant.name} (${ch.plant.id}), a ${stageName(ch.plant.stage)} plant of ${num(ch.plant.capacity_tpa)} ${u}/yr, starts ${ch.from || "?"}, full after ${ch.plant.ramp_days} days; recipe of ${row_template(ch)}`;
      }
    case "demand":
      return `${nameOf(sc().demand, ch.segment)} ${zh ? "需求" : "demand"} ${amount("")} ${when}`;
    case "trade":
      return `${nameOf(sc().markets, ch.market)} ${ch.side === "import" ? (zh ? "进口" : "imports") : (zh ? "出口" : "exports")} ${amount("t/yr")} ${when}`;
    case "reserve":
      return `${nameOf(sc().materials, ch.material)} ${zh ? "战略储备" : "strategic reserve"} ${amount("t")} ${when}`;
    default:
      return "";
  }
}
const row_template = (ch) => {
  const src = (ch.plant && ch.plant.source) || "";
  const m = /template (\S+)$/.exec(src);
  return m ? nameOf(sc().plants, m[1]) : "?";
};

// Dates are required: an empty one is reported next to its field before anything is sent.
function checkRows() {
  let ok = true;
  for (const row of document.querySelectorAll("#changes .change")) {
    for (const name of ["from", "to"]) {
      const e = row.querySelector(`[name="${name}"]`);
      if (e && !e.value) {
        ok = false;
        row.classList.add("invalid");
        row.querySelector(`[data-field="${name}"]`).textContent = ZH() ? "请填写日期" : `${name} is required (a date)`;
      }
    }
  }
  return ok;
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

const kpiLabel = (name) => {
  const d = state.kpis && state.kpis[name];
  return d ? (state.lang === "zh" ? d.label_zh : d.label) : name;
};
// The KPI catalogue (labels, units, groups): asked for when the KPI table is first opened.
async function loadKpis() {
  if (!state.kpis) state.kpis = Object.fromEntries((await api("/kpis")).map((k) => [k.name, k]));
}

// --- the flow ------------------------------------------------------------------------------

async function loadModels() {
  const models = await api("/models");
  options($("#model"), models.data.map((m) => m.name), models.data.some((m) => m.name === "baotou-2024") ? "baotou-2024" : undefined);
  await loadModel();
}

async function loadModel() {
  state.model = await api(`/models/${encodeURIComponent($("#model").value)}/outline`);
  $("#changes").replaceChildren();
  window.retwinModel = state.model.name;
}

// The whole model document: only a new plant needs it (its template's recipe and availability).
async function fullModel() {
  const name = state.model.name;
  if (!state.full || state.full.name !== name) {
    const full = await api(`/models/${encodeURIComponent(name)}`);
    if (state.model && state.model.name === name) state.full = full;
  }
  return state.full;
}

async function submit(ev) {
  ev.preventDefault();
  clearErrors();
  $("#message").textContent = "";
  if (!checkRows()) return;
  try {
    if (document.querySelector('#changes [name="action"]')) await fullModel();
  } catch (e) { $("#message").textContent = e.message; return; }
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
    // the compact answer: status, then the first screen's numbers (not every KPI)
    const run = await api(`/runs/${encodeURIComponent(id)}/summary?wait=2`);
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

// --- numbers -------------------------------------------------------------------------------

// Sensible rounding: no float noise; three significant digits below 100, whole numbers above.
function fmtNum(v, unit) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (unit === "fraction") return `${(v * 100).toLocaleString("en-US", { maximumFractionDigits: 1, minimumFractionDigits: 1 })} %`;
  const a = Math.abs(v);
  if (a < 1e-9) return "0";
  if (a >= 100) return Math.round(v).toLocaleString("en-US");
  return Number(v.toPrecision(3)).toLocaleString("en-US", { maximumSignificantDigits: 3 });
}
function fmtDelta(v, unit, ref) {
  if (v === null || v === undefined) return "–";
  // a difference below a billionth of the value it changes is float noise: no change
  if (Math.abs(v) <= 1e-9 * Math.max(1, Math.abs(ref || 0))) return "0";
  if (unit === "fraction") {
    const pp = v * 100;
    return `${pp > 0 ? "+" : "−"}${Math.abs(pp).toLocaleString("en-US", { maximumFractionDigits: 1, minimumFractionDigits: 1 })} pp`;
  }
  return (v > 0 ? "+" : "−") + fmtNum(Math.abs(v), unit);
}
function fmtPct(v) {
  if (v === null || v === undefined) return "–";
  if (Math.abs(v) < 0.05) return "0 %";
  return `${v > 0 ? "+" : "−"}${Math.abs(v).toLocaleString("en-US", { maximumFractionDigits: 1, minimumFractionDigits: 1 })} %`;
}
// the unit beside a number (a share is printed as a percentage, its % already written)
const unitText = (u) => (u === "fraction" ? "" : u || "");
const sign = (v, ref) => (v === null || v === undefined || Math.abs(v) <= 1e-9 * Math.max(1, Math.abs(ref || 0)) ? "" : (v > 0 ? "pos" : "neg"));

// --- the answer ----------------------------------------------------------------------------

function showRun(run) {
  state.run = run;
  const r = run.result;
  $("#result").hidden = false;
  $("#run-link").textContent = run.id;
  $("#run-link").href = `#run=${run.id}`;
  const n = (run.request.changes || []).length;
  $("#run-meta").textContent = `${run.model} · ${r.start} – ${r.end} · ${t("seed", "seed")} ${r.seed} · ` +
    `${r.replications} ${t("reps", "replications")} · ${n} ${t("changes_n", "change(s)")}` +
    (run.request.changes || []).map((c) => `\n• ${describe(c)}`).join("");
  $("#notes").replaceChildren(...(r.notes || []).map((x) => el("li", {}, x)));
  options($("#year"), r.years.map(String), String(r.focus_year));
  const dl = [];
  for (const table of ["kpis", "series", "flows"]) {
    for (const f of ["csv", "parquet"]) {
      dl.push(el("a", { href: `${API}/runs/${run.id}/${table}?format=${f}`, download: "",
        class: "download", "data-table": table, "data-format": f }, `${table}.${f}`));
    }
  }
  $("#downloads").replaceChildren(...dl);
  drawCards();
  drawTargets();
  if ($("#kpi-details").open) drawKpiTable();
  drawBottlenecks();
  $("#why-panel").hidden = !(run.request.changes || []).length;
  if (!state.why || state.why.run !== run.id) {
    state.why = null;
    $("#why-status").textContent = "";
    $("#why-table").replaceChildren();
    Plotly.purge("why");
    options($("#why-card"), []);
  } else {
    drawWhy();
  }
  window.retwinShown = { id: run.id, status: run.status, year: r.focus_year };
  drawCharts();
}

function sparkline(c, i) {
  const w = 150, h = 36;
  const vals = [...c.mean, ...c.base, ...c.p5, ...c.p95].filter((v) => v !== null && v !== undefined);
  if (!vals.length) return el("span");
  const lo = Math.min(...vals), hi = Math.max(...vals);
  const x = (k) => 2 + (k * (w - 4)) / Math.max(1, c.years.length - 1);
  const y = (v) => h - 2 - ((v - lo) / ((hi - lo) || 1)) * (h - 4);
  const path = (arr) => arr.map((v, k) => (v === null ? "" : `${k && arr[k - 1] !== null ? "L" : "M"}${x(k).toFixed(1)},${y(v).toFixed(1)}`)).join("");
  const band = c.p5.map((v, k) => `${k ? "L" : "M"}${x(k).toFixed(1)},${y(v ?? lo).toFixed(1)}`).join("") +
    [...c.p95].reverse().map((v, k) => `L${x(c.years.length - 1 - k).toFixed(1)},${y(v ?? lo).toFixed(1)}`).join("") + "Z";
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("class", "spark");
  const add = (d, cls) => { const e = document.createElementNS(ns, "path"); e.setAttribute("d", d); e.setAttribute("class", cls); svg.append(e); };
  add(band, "band");
  if (c.base.some((v) => v !== null)) add(path(c.base), "base");
  add(path(c.mean), "what");
  const dot = document.createElementNS(ns, "circle");
  dot.setAttribute("cx", x(i)); dot.setAttribute("cy", y(c.mean[i] ?? lo)); dot.setAttribute("r", "2.5");
  svg.append(dot);
  return svg;
}

function drawCards() {
  const r = state.run.result;
  const year = Number($("#year").value);
  const i = r.years.indexOf(year);
  $("#cards").replaceChildren(...r.cards.map((c) => {
    const goal = c.targets.find((g) => g.year === year);
    const other = c.targets.filter((g) => g.year !== year).map((g) => g.year);
    let target = "";
    let tcls = "";
    if (goal) {
      const met = goal.kind === "at_most" ? c.mean[i] <= goal.goal : c.mean[i] >= goal.goal;
      target = `${t("target", "target")} ${fmtNum(goal.goal, c.unit)} · ${met ? t("attained", "attained") : t("missed", "missed")}`;
      tcls = met ? "ok" : "bad";
    } else if (other.length) {
      target = `${t("target_only", "target set for")} ${other.join(", ")}`;
    }
    return el("div", { class: "card", "data-card": c.id },
      el("div", { class: "card-title", title: c.sum_of ? `${c.kpi} (sum of rows in ${c.sum_of})` : `${c.kpi} · ${c.key}` },
        ZH() ? c.label_zh : c.label),
      el("div", { class: "card-value" }, el("span", { class: "v", "data-value": String(c.mean[i]) }, fmtNum(c.mean[i], c.unit)),
        " ", el("span", { class: "unit" }, unitText(c.unit))),
      el("div", { class: `card-delta ${sign(c.delta[i], c.base[i])}` },
        el("span", { class: "d", "data-value": String(c.delta[i]) }, fmtDelta(c.delta[i], c.unit, c.base[i])), " · ",
        el("span", { class: "dp" }, fmtPct(c.delta_pct[i]))),
      el("div", { class: "card-band" }, `p5–p95 ${fmtNum(c.p5[i], c.unit)} – ${fmtNum(c.p95[i], c.unit)}`),
      sparkline(c, i),
      el("div", { class: `card-target ${tcls}` }, target));
  }));
}

function drawTargets() {
  const r = state.run.result;
  $("#target-table tbody").replaceChildren(...r.targets.map((g) => el("tr",
    { class: g.attained ? "ok" : "bad" }, el("td", {}, (ZH() && (byId(sc().targets, g.target) || {}).name_zh) || g.name),
    el("td", {}, String(g.year)),
    el("td", { class: "num" }, `${fmtNum(g.goal, g.unit)} ${unitText(g.unit)}`),
    el("td", { class: "num" }, g.baseline_value === null || g.baseline_value === undefined ? "–" : fmtNum(g.baseline_value, g.unit)),
    el("td", { class: "num" }, fmtNum(g.value, g.unit)),
    el("td", {}, g.attained ? t("attained", "attained") : t("missed", "missed")))));
}

// The full KPI table: asked for only when opened, for the chosen year only.
async function drawKpiTable() {
  await loadKpis();
  const year = $("#year").value;
  const id = encodeURIComponent(state.run.id);
  const q = `from=${year}&to=${year}&limit=10000`;
  const [sum, diff] = await Promise.all([api(`/runs/${id}/kpis?${q}`),
    api(`/runs/${id}/kpis?view=difference&${q}`).catch(() => ({ rows: [] }))]);
  const d = new Map(diff.rows.map((x) => [`${x.kpi}|${x.key}`, x.mean]));
  const groups = new Map();
  for (const row of sum.rows) {
    const decl = (state.kpis || {})[row.kpi] || { group: "other", group_label: "Other", group_label_zh: "其他" };
    if (!groups.has(decl.group)) groups.set(decl.group, { decl, rows: [] });
    groups.get(decl.group).rows.push(row);
  }
  const bodies = [...groups.values()].map(({ decl, rows }) => el("tbody", {},
    el("tr", { class: "group" }, el("th", { colspan: "7" }, ZH() ? decl.group_label_zh : decl.group_label)),
    ...rows.map((k) => {
      const dv = d.get(`${k.kpi}|${k.key}`);
      const unit = k.unit === "CNY per unit" ? `CNY/${unitOf(k.key)}` : k.unit;
      const base = dv === undefined || k.mean === null ? null : k.mean - dv;
      return el("tr", {},
        el("td", { title: k.kpi }, kpiLabel(k.kpi)), el("td", { title: k.key }, keyName(k.kpi, k.key)),
        el("td", {}, unit === "fraction" ? "%" : unitText(unit)),
        el("td", { class: "num kpi-value", "data-kpi": k.kpi, "data-key": k.key, "data-value": String(k.mean) }, fmtNum(k.mean, unit)),
        el("td", { class: "num" }, state.run.result.replications > 1 ? `${fmtNum(k.p5, unit)} – ${fmtNum(k.p95, unit)}` : ""),
        el("td", { class: `num ${sign(dv, base)}` }, dv === undefined ? "" : fmtDelta(dv, unit, base)),
        el("td", { class: "num" }, dv === undefined || !base ? "" : fmtPct((100 * dv) / Math.abs(base))));
    })));
  $("#kpi-table").replaceChildren($("#kpi-table thead"), ...bodies);
}

function keyName(kpi, key) {
  if (kpi.endsWith(".stage")) return stageName(key);
  if (kpi.endsWith(".plant")) return nameOf(sc().plants, key);
  if (kpi.endsWith(".material")) return nameOf(sc().materials, key);
  if (kpi.endsWith(".segment")) return nameOf(sc().demand, key);
  if (kpi.endsWith(".market")) return nameOf(sc().markets, key);
  if (kpi.endsWith(".group")) return ZH() ? ({ raw_materials: "原材料", new_materials: "新材料", applications: "应用", total: "合计" })[key] || key : key.replace("_", " ");
  return key;
}

// The bottleneck of each stage and year, baseline beside what-if; a change shows in colour.
function drawBottlenecks() {
  const r = state.run.result;
  const cell = (rows) => new Map((rows || []).map((b) => [`${b.stage}|${b.year}`, b]));
  const w = cell(r.bottlenecks), b = cell(r.baseline_bottlenecks);
  const stages = [...new Set(sc().plants.map((p) => p.stage))];
  const head = el("tr", {}, el("th", {}, t("stage", "stage")), ...r.years.map((y) => el("th", {}, String(y))));
  const rows = stages.filter((s) => r.years.some((y) => w.has(`${s}|${y}`) || b.has(`${s}|${y}`))).map((s) => el("tr", {},
    el("th", {}, stageName(s)), ...r.years.map((y) => {
      const x = w.get(`${s}|${y}`), z = b.get(`${s}|${y}`);
      const wx = x ? x.constraint : "", bz = z ? z.constraint : "";
      const changed = r.baseline_bottlenecks && wx !== bz;
      return el("td", { class: changed ? "changed" : "", title: `${t("baseline", "baseline")}: ${bz || "–"} · ${t("whatif", "what-if")}: ${wx || "–"}` },
        r.baseline_bottlenecks ? `${bz || "–"} → ${wx || "–"}` : wx || "–");
    })));
  $("#bottlenecks").replaceChildren(el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows)),
    el("p", { class: "meta" }, t("bn_hint", "Each cell: the baseline's binding constraint → the what-if's (the stage's most binding one that year); a change is highlighted.")));
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
  const s = await chart("sankey", { year: year || state.run.result.focus_year });
  options($("#sankey-year"), s.years.map(String), String(s.year));
  const [what, base] = s.figures;
  if (base) {
    base.layout.title.text += ` — ${ZH() ? "基准" : "baseline"}`;
    what.layout.title.text += ` — ${ZH() ? "情景" : "what-if"}`;
    $("#sankey-baseline").hidden = false;
    plot("sankey-baseline", base);
  } else {
    $("#sankey-baseline").hidden = true;
  }
  plot("sankey", what);
  $("#sankey").dataset.year = String(s.year);
}

const COLOURS = ["#1f4e9c", "#c2410c", "#15803d", "#7c3aed", "#b91c1c", "#0e7490", "#a16207", "#475569"];
function rgba(hex, a) { const n = parseInt(hex.slice(1), 16); return `rgba(${n >> 16},${(n >> 8) & 255},${n & 255},${a})`; }

// The chosen year, shaded on a monthly chart's date axes (one rectangle per x axis).
function yearShapes(axes) {
  const y = Number($("#year").value);
  if (!y) return [];
  return axes.map((ax) => ({ type: "rect", xref: `x${ax}`, yref: `y${ax} domain`, x0: `${y}-01-01`, x1: `${y + 1}-01-01`,
    y0: 0, y1: 1, fillcolor: "rgba(250,204,21,0.16)", line: { width: 0 }, layer: "below" }));
}

// Output per stage: one small chart per stage, each with its own unit on its axis; the band is
// the p5–p95 of the replications' stage totals (not the sum of the plants' bands).
async function drawStages() {
  const p = await api(`/runs/${encodeURIComponent(state.run.id)}/panels/stages`);
  state.stagesPanel = { run: state.run.id, p };
  const stages = p.stages.filter((s) => p.whatif[s]);
  const cols = 4, rows = Math.ceil(stages.length / cols);
  const data = [], layout = { height: 230 * rows, margin: { t: 30, l: 60, r: 10, b: 30 }, showlegend: false, annotations: [] };
  const x = p.months.map((m) => `${m}-01`);
  const axes = [];
  stages.forEach((s, k) => {
    const ax = k ? String(k + 1) : "";
    axes.push(ax);
    const row = Math.floor(k / cols), col = k % cols;
    const c = COLOURS[k % COLOURS.length];
    layout[`xaxis${ax}`] = { domain: [col / cols + 0.03, (col + 1) / cols - 0.02], anchor: `y${ax}`, type: "date" };
    layout[`yaxis${ax}`] = { domain: [1 - (row + 1) / rows + 0.08, 1 - row / rows - 0.06], anchor: `x${ax}`,
      title: { text: `${unitText(p.units[s])}/${ZH() ? "月" : "month"}`, font: { size: 10 } }, rangemode: "tozero" };
    layout.annotations.push({ text: `<b>${stageName(s)}</b>`, xref: `x${ax} domain`, yref: `y${ax} domain`, x: 0, y: 1.12, showarrow: false, xanchor: "left" });
    const band = p.bands && p.bands[s];
    if (band) data.push({ x: [...x, ...[...x].reverse()], y: [...band.p95, ...[...band.p5].reverse()], fill: "toself", fillcolor: rgba(c, 0.16), line: { width: 0 }, hoverinfo: "skip", xaxis: `x${ax}`, yaxis: `y${ax}`, name: `${s} p5–p95`, meta: "band", legendgroup: s });
    if (p.base) data.push({ x, y: p.base[s], xaxis: `x${ax}`, yaxis: `y${ax}`, mode: "lines", line: { color: c, dash: "dash", width: 1 }, name: `${s} baseline`, meta: "baseline", legendgroup: s });
    data.push({ x, y: p.whatif[s], xaxis: `x${ax}`, yaxis: `y${ax}`, mode: "lines", line: { color: c, width: 2 }, name: `${s} what-if`, meta: "whatif", legendgroup: s });
  });
  state.stageAxes = axes;
  layout.shapes = yearShapes(axes);
  Plotly.react("stages", data, layout, { displaylogo: false, responsive: true });
}

// Output per plant of one stage: the planner picks the stage and ticks the plants to draw ("all"
// by default). The choice is kept, per stage, when the year, the run or the language changes.
const plantPick = { stage: null, chosen: {} }; // chosen[stage]: the ticked ids; absent = all

function defaultStage(stages) {
  for (const ch of (state.run.request.changes || [])) {
    const id = ch.plant && typeof ch.plant === "object" ? ch.plant.id : ch.plant || ch.plant_id;
    const p = id && byId(sc().plants, id);
    const s = ch.stage || (p && p.stage) || (ch.plant && ch.plant.stage);
    if (s && stages.includes(s)) return s;
  }
  return stages.includes("magnet") ? "magnet" : stages[0];
}

async function drawPlants() {
  const run = state.run;
  const stages = state.stagesPanel.p.stages.filter((s) => state.stagesPanel.p.whatif[s]);
  if (!stages.length) return;
  if (!stages.includes(plantPick.stage)) plantPick.stage = defaultStage(stages);
  const stage = plantPick.stage;
  options($("#plant-stage"), stages, stage);
  [...$("#plant-stage").options].forEach((o) => { o.textContent = stageName(o.value); });
  let cached = state.plantPanel;
  if (!cached || cached.run !== run.id || cached.stage !== stage) {
    const p = await api(`/runs/${encodeURIComponent(run.id)}/panels/stages/${encodeURIComponent(stage)}`);
    if (state.run !== run) return;
    cached = state.plantPanel = { run: run.id, stage, p };
  }
  const p = cached.p;
  const ids = p.plants.map((x) => x.id);
  let chosen = plantPick.chosen[stage];
  // a run of another model may not have the plants ticked before: then all of them
  if (chosen && chosen.length && !chosen.some((id) => ids.includes(id))) chosen = undefined;
  const ticked = new Set(chosen ? chosen.filter((id) => ids.includes(id)) : ids);
  const nameOfPlant = (x) => (ZH() && x.name_zh) || x.name || x.id;
  const box = (value, checked, label, cls) => el("label", { class: "plant-choice" },
    el("input", Object.assign({ type: "checkbox", class: cls, value }, checked ? { checked: "" } : {})), ` ${label}`);
  $("#plant-list").replaceChildren(el("legend", {}, t("plants", "Plants")),
    box("*", !chosen, t("all", "all"), "plant-all"),
    ...p.plants.map((x) => box(x.id, ticked.has(x.id), nameOfPlant(x), "plant-box")));
  const x = p.months.map((m) => `${m}-01`);
  const data = [];
  p.plants.forEach((pl, k) => {
    if (!ticked.has(pl.id)) return;
    const c = COLOURS[k % COLOURS.length];
    const name = nameOfPlant(pl);
    const band = p.bands && p.bands[pl.id];
    if (band) data.push({ x: [...x, ...[...x].reverse()], y: [...band.p95, ...[...band.p5].reverse()], fill: "toself", fillcolor: rgba(c, 0.14), line: { width: 0 }, hoverinfo: "skip", showlegend: false, name: `${name} p5–p95`, meta: "band", legendgroup: pl.id });
    if (p.base && p.base[pl.id]) data.push({ x, y: p.base[pl.id], mode: "lines", line: { color: c, dash: "dash", width: 1 }, showlegend: false, name: `${name} (${t("baseline", "baseline")})`, meta: "baseline", legendgroup: pl.id });
    data.push({ x, y: p.whatif[pl.id], mode: "lines", line: { color: c, width: 2 }, name, meta: "whatif", legendgroup: pl.id });
  });
  const layout = { height: 360, margin: { t: 20, l: 70, r: 10, b: 40 }, legend: { orientation: "h", y: -0.15, font: { size: 10 } },
    xaxis: { type: "date" }, yaxis: { title: { text: `${unitText(p.unit)}/${ZH() ? "月" : "month"}` }, rangemode: "tozero" },
    shapes: yearShapes([""]),
    annotations: ticked.size ? [] : [{ text: t("none_ticked", "Tick a plant to draw it."), xref: "paper", yref: "paper", x: 0.5, y: 0.5, showarrow: false }] };
  Plotly.react("plants", data, layout, { displaylogo: false, responsive: true });
  const drawn = p.plants.filter((pl) => ticked.has(pl.id)).map((pl) => pl.id);
  $("#plants").dataset.stage = stage;
  $("#plants").dataset.plants = drawn.join(",");
  window.retwinPlants = { run: run.id, stage, plants: drawn, year: Number($("#year").value) };
}

// A tick: the plants ticked are kept for this stage ("all" ticked again = every plant, also later ones).
function pickPlants(ev) {
  const stage = plantPick.stage;
  if (ev.target.classList.contains("plant-all")) {
    plantPick.chosen[stage] = ev.target.checked ? undefined : [];
  } else {
    const boxes = [...document.querySelectorAll("#plant-list .plant-box")];
    const on = boxes.filter((b) => b.checked).map((b) => b.value);
    plantPick.chosen[stage] = on.length === boxes.length ? undefined : on;
  }
  drawPlants().catch((e) => { $("#message").textContent = e.message; });
}

// The year changed: move the shading of the monthly charts (nothing else of them changes).
function markYear() {
  if (state.stageAxes && $("#stages").data) Plotly.relayout("stages", { shapes: yearShapes(state.stageAxes) });
  if ($("#plants").data) Plotly.relayout("plants", { shapes: yearShapes([""]) });
  if (window.retwinPlants) window.retwinPlants = Object.assign({}, window.retwinPlants, { year: Number($("#year").value) });
}

// Prices (monthly, p5–p95 bands), margins per stage and stock cover (annual), baseline dashed.
async function drawMarkets() {
  const p = await api(`/runs/${encodeURIComponent(state.run.id)}/panels/markets`);
  const x = p.months.map((m) => `${m}-01`);
  const yx = p.years.map((y) => `${y}-07-01`);
  const data = [];
  const mats = Object.keys(p.whatif.price);
  const mname = (m) => (ZH() && p.materials[m].name_zh) || p.materials[m].name;
  mats.forEach((m, k) => {
    const c = COLOURS[k % COLOURS.length];
    const w = p.whatif.price[m];
    // one unit per axis: a price relative to its baseline's first month (= 100)
    const ref = ((p.base && p.base.price[m]) || w).mean.find((v) => v) || 1;
    const idx = (arr) => arr.map((v) => (v === null ? null : (100 * v) / ref));
    data.push({ x: [...x, ...[...x].reverse()], y: [...idx(w.p95), ...idx(w.p5).reverse()], fill: "toself", fillcolor: rgba(c, 0.12), line: { width: 0 }, hoverinfo: "skip", showlegend: false, xaxis: "x", yaxis: "y", meta: "band" });
    if (p.base) data.push({ x, y: idx(p.base.price[m].mean), mode: "lines", line: { color: c, dash: "dash", width: 1 }, name: `${mname(m)} (${t("baseline", "baseline")})`, showlegend: false, xaxis: "x", yaxis: "y", meta: "baseline" });
    data.push({ x, y: idx(w.mean), mode: "lines", line: { color: c, width: 2 }, name: `${mname(m)} (${fmtNum(ref)} ${p.materials[m].unit} = 100)`, xaxis: "x", yaxis: "y", meta: "whatif" });
  });
  Object.keys(p.whatif.margin).forEach((s, k) => {
    const c = COLOURS[k % COLOURS.length];
    if (p.base && p.base.margin[s]) data.push({ x: yx, y: p.base.margin[s].mean.map((v) => v * 100), mode: "lines+markers", line: { color: c, dash: "dash", width: 1 }, marker: { size: 4 }, showlegend: false, name: `${stageName(s)} (${t("baseline", "baseline")})`, xaxis: "x2", yaxis: "y2", meta: "baseline" });
    data.push({ x: yx, y: p.whatif.margin[s].mean.map((v) => v * 100), mode: "lines+markers", line: { color: c, width: 2 }, marker: { size: 5 }, name: stageName(s), legendgroup: "margin", xaxis: "x2", yaxis: "y2", meta: "whatif" });
  });
  Object.keys(p.whatif.cover).forEach((m, k) => {
    const c = COLOURS[k % COLOURS.length];
    if (p.base && p.base.cover[m]) data.push({ x: yx, y: p.base.cover[m].mean, mode: "lines", line: { color: c, dash: "dash", width: 1 }, showlegend: false, name: `${mname(m)} (${t("baseline", "baseline")})`, xaxis: "x3", yaxis: "y3", meta: "baseline" });
    data.push({ x: yx, y: p.whatif.cover[m].mean, mode: "lines+markers", line: { color: c, width: 2 }, marker: { size: 5 }, showlegend: false, name: mname(m), xaxis: "x3", yaxis: "y3", meta: "whatif" });
  });
  const layout = {
    height: 420, margin: { t: 40, l: 60, r: 10, b: 40 }, legend: { orientation: "h", y: -0.15, font: { size: 10 } },
    xaxis: { domain: [0, 0.42], type: "date", anchor: "y" }, yaxis: { title: { text: ZH() ? "价格指数（基准首月 = 100）" : "price index (baseline's first month = 100)" } },
    xaxis2: { domain: [0.5, 0.73], type: "date", anchor: "y2" }, yaxis2: { anchor: "x2", title: { text: ZH() ? "利润率 %" : "margin %" } },
    xaxis3: { domain: [0.8, 1], type: "date", anchor: "y3" }, yaxis3: { anchor: "x3", title: { text: ZH() ? "库存可用天数" : "stock cover, days" } },
    annotations: [[0, ZH() ? "价格（月度，p5–p95）" : "Prices (monthly, p5–p95)"], [0.5, ZH() ? "各环节利润率（年度）" : "Margin per stage (annual)"], [0.8, ZH() ? "库存可用天数（年度）" : "Stock cover (annual)"]]
      .map(([xx, text]) => ({ text: `<b>${text}</b>`, xref: "paper", yref: "paper", x: xx, y: 1.08, showarrow: false, xanchor: "left" })),
  };
  Plotly.react("markets", data, layout, { displaylogo: false, responsive: true });
}

// --- why: the Δ of each card, change by change ---------------------------------------------

async function explain() {
  const id = state.run.id;
  $("#why-status").textContent = ZH() ? "计算中…" : "running the parts…";
  try {
    for (;;) {
      const w = await api(`/runs/${encodeURIComponent(id)}/why?wait=5`, { method: "POST" });
      if (!state.run || state.run.id !== id) return;
      const done = w.parts.filter((p) => p.status === "done").length;
      $("#why-status").textContent = `${done} / ${w.parts.length} ${ZH() ? "个分解运行已完成" : "parts done"}`;
      if (w.status === "done") { state.why = w; break; }
    }
  } catch (e) { $("#why-status").textContent = e.message; return; }
  const cards = state.why.cards;
  const year = Number($("#year").value);
  // open on the card the changes move most, relative to its baseline
  const rel = (c) => { const i = c.years.indexOf(year); return c.base[i] ? Math.abs(c.total[i] / c.base[i]) : 0; };
  const top = [...cards].sort((a, b) => rel(b) - rel(a))[0];
  options($("#why-card"), cards.map((c) => c.id), top.id);
  [...$("#why-card").options].forEach((o, k) => { o.textContent = ZH() ? cards[k].label_zh : cards[k].label; });
  drawWhy();
}

function drawWhy() {
  const w = state.why;
  if (!w || !state.run || w.run !== state.run.id) return;
  const c = w.cards.find((x) => x.id === $("#why-card").value) || w.cards[0];
  const year = Number($("#year").value);
  const i = c.years.indexOf(year);
  const names = w.changes.map((ch, k) => `${k + 1}. ${describe(ch)}`);
  // an axis label: the sentence's first words, on lines of about 22 characters
  const short = (text) => text.slice(0, 64).split(" ").reduce((lines, word) => {
    const last = lines[lines.length - 1];
    if (last.length + word.length > 22 && last) lines.push(word); else lines[lines.length - 1] = last ? `${last} ${word}` : word;
    return lines;
  }, [""]).slice(0, 3).join("<br>");
  const steps = c.one.map((o) => o[i]);
  const x = [ZH() ? "基准" : "baseline", ...names.map(short), ZH() ? "交互作用" : "interaction", ZH() ? "情景" : "what-if"];
  const y = [c.base[i], ...steps, c.interaction[i], c.mean[i]];
  const fig = [{ type: "waterfall", x, y, measure: ["absolute", ...steps.map(() => "relative"), "relative", "total"],
    text: y.map((v, k) => (k === 0 || k === y.length - 1 ? fmtNum(v, c.unit) : fmtDelta(v, c.unit, c.base[i]))),
    textposition: "outside", connector: { line: { color: "#94a3b8" } },
    increasing: { marker: { color: "#15803d" } }, decreasing: { marker: { color: "#b91c1c" } },
    totals: { marker: { color: "#1f4e9c" } } }];
  const lo = Math.min(c.base[i], c.mean[i]), hi = Math.max(c.base[i], c.mean[i]);
  const pad = Math.max((hi - lo) * 1.5, Math.abs(hi) * 0.01, 1e-9);
  Plotly.react("why", fig, {
    title: { text: `${ZH() ? c.label_zh : c.label} · ${year}` }, height: 380,
    margin: { t: 50, l: 80, r: 20, b: 70 }, showlegend: false, xaxis: { tickangle: 0 },
    yaxis: { range: [lo - pad, hi + pad], title: { text: unitText(c.unit) || "%" } },
  }, { displaylogo: false, responsive: true });
  $("#why").dataset.card = c.id;
  $("#why-table").replaceChildren(el("thead", {}, el("tr", {}, el("th", {}, t("change", "change")),
    el("th", {}, ZH() ? "单独作用" : "alone"), el("th", {}, ZH() ? "在其他变化之上的增量" : "added to the others"))),
  el("tbody", {}, ...w.changes.map((ch, k) => el("tr", {}, el("td", {}, names[k]),
    el("td", { class: `num ${sign(c.one[k][i], c.base[i])}` }, fmtDelta(c.one[k][i], c.unit, c.base[i])),
    el("td", { class: `num ${sign(c.marginal[k][i], c.base[i])}` }, fmtDelta(c.marginal[k][i], c.unit, c.base[i]))))));
}

async function drawCharts() {
  await Promise.all([drawSankey(), drawStages().then(drawPlants), drawMarkets()])
    .catch((e) => { $("#message").textContent = e.message; });
  window.retwinDrawn = state.run.id;
}

async function loadRuns() {
  const runs = await api("/runs?limit=30");
  $("#runs tbody").replaceChildren(...runs.data.map((r) => el("tr", {},
    el("td", {}, el("input", { type: "checkbox", class: "pick", value: r.id })),
    el("td", {}, el("a", { href: `#run=${r.id}` }, r.id)), el("td", {}, r.model),
    el("td", {}, r.label), el("td", {}, r.status), el("td", {}, (r.created_at || "").slice(0, 19)))));
}

// Two runs side by side: their headline cards in the first year either run's changes act.
async function compare() {
  const ids = [...document.querySelectorAll(".pick:checked")].map((c) => c.value);
  const out = $("#compare-result");
  if (ids.length !== 2) { out.textContent = ZH() ? "请勾选两次运行。" : "Tick exactly two runs."; return; }
  try {
    const [a, b] = await Promise.all(ids.map((id) => api(`/runs/${encodeURIComponent(id)}/summary`)));
    if (!a.result || !b.result) { out.textContent = ZH() ? "两次运行都须已完成。" : "Both runs must be done."; return; }
    const year = Math.min(a.result.focus_year, b.result.focus_year);
    const cb = new Map(b.result.cards.map((c) => [c.id, c]));
    const head = el("tr", {}, el("th", {}, String(year)), el("th", {}, a.label || a.id), el("th", {}, b.label || b.id),
      el("th", {}, `${ZH() ? "差" : "a − b"}`), el("th", {}, t("unit", "unit")));
    const rows = a.result.cards.filter((c) => cb.has(c.id)).map((c) => {
      const d = cb.get(c.id);
      const i = c.years.indexOf(year), j = d.years.indexOf(year);
      const va = c.mean[i], vb = d.mean[j];
      const diff = va === null || vb === null ? null : va - vb;
      return el("tr", {}, el("td", {}, ZH() ? c.label_zh : c.label), el("td", { class: "num" }, fmtNum(va, c.unit)),
        el("td", { class: "num" }, fmtNum(vb, c.unit)), el("td", { class: `num ${sign(diff, vb)}` }, fmtDelta(diff, c.unit, vb)),
        el("td", {}, unitText(c.unit)));
    });
    out.replaceChildren(el("table", { class: "compare" }, el("thead", {}, head), el("tbody", {}, ...rows)));
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
$("#year").addEventListener("change", () => { drawCards(); drawWhy(); markYear(); if ($("#kpi-details").open) drawKpiTable(); });
$("#plant-stage").addEventListener("change", (e) => { plantPick.stage = e.target.value; drawPlants().catch((x) => { $("#message").textContent = x.message; }); });
$("#plant-list").addEventListener("change", pickPlants);
$("#kpi-details").addEventListener("toggle", () => { if ($("#kpi-details").open && state.run) drawKpiTable(); });
$("#compare-button").addEventListener("click", compare);
$("#why-button").addEventListener("click", explain);
$("#why-card").addEventListener("change", drawWhy);
window.addEventListener("hashchange", fromHash);

applyLang();
loadModels().then(loadRuns).then(fromHash).catch((e) => { $("#message").textContent = e.message; });
