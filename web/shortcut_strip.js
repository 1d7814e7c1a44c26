// MIGM-Shortcut in the front end:
// - samplers: a strip under the widgets with the N steps (base-model steps orange, shortcut steps blue), the
//   expected speedup from the per-call ratio measured for the connected weights, a named problem when the budget
//   is out of range, and after a run its measured time, calls and speedup over the estimated vanilla time;
// - presets: choosing one fills the widgets it sets (visibly); editing one of them sets the menu back to custom;
// - Masked Class Label: its class list follows the connected generator;
// - recorders: what the dataset folder holds after a run.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { AUTO, clampBudget, describeSchedule, parseFullSteps, stripLines, wrapLines } from "./schedule.js";

const SAMPLERS = ["MIGMShortcutSampler", "MIGMShortcutSamplerAdvanced", "MIGMShortcutMaskedSampler"];
const RECORDERS = ["MIGMRecordTrajectories", "MIGMTrajectoryRecorder"];
const CLASS_LABEL = "MIGMClassLabel";
const GENERATOR_LOADER = "MIGMLoadMaskedGenerator";
const SHORTCUT_LOADER = "MIGMLoadShortcutWeights";
const CYCLE = "(cycle through all classes)";
const PRESET_GENERATOR = "generator defaults";
const PRESET_WIDGETS = ["steps", "budget", "cfg", "cfg_ramp", "sm_temp", "r_temp", "schedule", "full_step_rule"];
const ROUTE = "/migm_shortcut";
const FONT = "11px sans-serif";
const LINE = 14;
const BAR = 22;
const COLORS = {
  full: "#f0a030",
  shortcut: "#3d6f99",
  vanilla: "#8a8a8a",
  text: "#dddddd",
  dim: "#9aa4ad",
  warn: "#ff6b6b",
  refused: "#6b3b3b",
  frame: "#555555",
};

function widget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

function linkOf(graph, id) {
  return graph?._links?.get?.(id) ?? graph?.links?.get?.(id) ?? graph?.links?.[id] ?? null;
}

// The node feeding input `name` (through legacy Reroute nodes), or null.
function upstream(node, name) {
  let current = node;
  let slotName = name;
  for (let hops = 0; hops < 16 && current; hops++) {
    const slot = current.inputs?.findIndex((i) => i.name === slotName || i.type === slotName) ?? -1;
    const source = slot >= 0 ? current.getInputNode?.(slot) : null;
    if (!source || source.type !== "Reroute") return source ?? null;
    current = source;
    slotName = source.inputs?.[0]?.name;
  }
  return null;
}

// Nodes fed (directly or through Reroutes) by `node`'s outputs.
function downstream(node) {
  const found = [];
  const visit = (n, depth) => {
    for (const output of n.outputs ?? []) {
      for (const id of output.links ?? []) {
        const target = n.graph?.getNodeById(linkOf(n.graph, id)?.target_id);
        if (!target) continue;
        if (target.type === "Reroute" && depth < 16) visit(target, depth + 1);
        else found.push(target);
      }
    }
  };
  visit(node, 0);
  return found;
}

function generatorName(node) {
  const loader = upstream(node, "generator");
  return loader?.type === GENERATOR_LOADER ? widget(loader, "generator_name")?.value ?? null : null;
}

const cache = new Map();
async function getJSON(path) {
  if (!cache.has(path)) {
    cache.set(path, api.fetchApi(path).then(async (r) => {
      const body = await r.json().catch(() => ({}));
      if (!r.ok) cache.delete(path);
      return r.ok ? body : { error: body.error ?? `${r.status}` };
    }).catch((err) => {
      cache.delete(path);
      return { error: String(err) };
    }));
  }
  return cache.get(path);
}

function generatorInfo(name) {
  return getJSON(`${ROUTE}/generator?name=${encodeURIComponent(name)}`);
}

function redraw(node) {
  node.setDirtyCanvas?.(true, true);
  node.graph?.setDirtyCanvas?.(true, true);
}

// ------------------------------------------------------------------------------------------------ presets

function customValue(node) {
  return widget(node, "preset")?.options?.values?.[0] ?? "custom";
}

async function presetValues(node, name) {
  if (name === PRESET_GENERATOR) {
    const generator = generatorName(node);
    if (!generator) return { error: "connect a Load Masked Generator to use its defaults" };
    const info = await generatorInfo(generator);
    return info.error ? info : info.defaults;
  }
  const table = await getJSON(`${ROUTE}/presets`);
  return table[name]?.values ?? null;
}

// Fill the widgets a preset sets; the menu keeps the preset's name until one of them is edited.
async function applyPreset(node, name) {
  const values = await presetValues(node, name);
  if (!values || values.error) {
    node.__migmPresetError = values?.error ?? null;
    redraw(node);
    return;
  }
  node.__migmPresetError = null;
  node.__migmApplying = true;
  try {
    for (const [key, value] of Object.entries(values)) {
      const w = widget(node, key);
      if (!w) continue;
      if (w.options?.values && !w.options.values.includes(value)) continue;
      w.value = value;
    }
    const steps = widget(node, "steps");
    const budget = widget(node, "budget");
    if (steps && budget) {
      budget.options.max = Math.max(1, steps.value);
      if (values.budget === undefined) budget.value = clampBudget(steps.value, budget.value);
    }
    const explicit = widget(node, "full_steps");
    if (explicit && "full_step_rule" in values) explicit.value = "";
  } finally {
    node.__migmApplying = false;
  }
  refreshSpeed(node);
  redraw(node);
}

function watchWidget(node, name, after) {
  const w = widget(node, name);
  if (!w) return;
  const original = w.callback;
  w.callback = function (...args) {
    const result = original?.apply(this, args);
    after(w, ...args);
    return result;
  };
}

function setupPresets(node) {
  watchWidget(node, "preset", (w) => {
    if (w.value !== customValue(node)) applyPreset(node, w.value);
  });
  for (const name of PRESET_WIDGETS) {
    watchWidget(node, name, () => {
      const preset = widget(node, "preset");
      if (preset && !node.__migmApplying && preset.value !== customValue(node)) preset.value = customValue(node);
    });
  }
}

// ------------------------------------------------------------------------------------------------ samplers

function shortcutConnected(node) {
  return upstream(node, "shortcut") != null;
}

// Per-call ratio and searched full steps for the connected weights, from the server (fit time, or this
// machine's last run).
async function refreshSpeed(node) {
  const loader = upstream(node, "shortcut");
  const name = loader?.type === SHORTCUT_LOADER ? widget(loader, "shortcut_name")?.value : null;
  if (!name) {
    node.__migmSpeed = null;
    redraw(node);
    return;
  }
  const params = new URLSearchParams({ name, steps: String(widget(node, "steps")?.value ?? ""),
                                       budget: String(widget(node, "budget")?.value ?? "") });
  const generator = generatorName(node);
  if (generator) params.set("generator", generator);
  const path = `${ROUTE}/shortcut?${params}`;
  cache.delete(path); // measured ratios change after every run
  const info = await getJSON(path);
  node.__migmSpeed = info.error ? null : info;
  redraw(node);
}

function nodeSchedule(node) {
  const method = widget(node, "method")?.value ?? "shortcut";
  const speed = node.__migmSpeed;
  const stats = node.__migmStats;
  let cost = null;
  let costSource = null;
  if (method === "shortcut" && speed?.measured?.ratio != null) {
    cost = speed.measured.ratio;
    costSource = "measured";
  } else if (method === "shortcut" && speed?.fitted_ratio != null) {
    cost = speed.fitted_ratio;
    costSource = "fitted";
  } else if (method !== "shortcut" && stats?.method === method && stats.measured_ratio != null) {
    cost = stats.measured_ratio;
    costSource = "measured";
  }
  const explicitText = widget(node, "full_steps")?.value;
  return describeSchedule({
    steps: widget(node, "steps")?.value,
    budget: widget(node, "budget")?.value,
    rule: widget(node, "full_step_rule")?.value ?? AUTO,
    shortcut: shortcutConnected(node),
    method,
    cost,
    costSource,
    searchedFull: speed?.searched ?? null,
    explicitFull: parseFullSteps(explicitText),
  });
}

let measureContext = null;
function measure(text) {
  measureContext ??= document.createElement("canvas").getContext("2d");
  measureContext.font = FONT;
  return measureContext.measureText(text).width;
}

function stripText(node, width) {
  const lines = stripLines(nodeSchedule(node), node.__migmStats ?? null);
  if (node.__migmPresetError) lines.push({ text: node.__migmPresetError, tone: "warn" });
  return wrapLines(lines, Math.max(60, width - 30), measure);
}

function drawStrip(ctx, node, width, y) {
  const s = nodeSchedule(node);
  const margin = 15;
  const inner = Math.max(10, width - 2 * margin);
  const lines = stripText(node, width);
  node.__migmStripLines = lines; // what the strip shows now (the live test reads it)
  const height = BAR + lines.length * LINE + 6;
  ctx.save();
  ctx.fillStyle = "rgba(0,0,0,0.25)";
  ctx.fillRect(margin - 3, y, inner + 6, height);
  const cell = inner / s.steps;
  const gap = s.steps <= 48 ? 2 : 0;
  for (let i = 0; i < s.steps; i++) {
    ctx.fillStyle = s.problem ? COLORS.refused
      : s.isFull[i] ? (s.vanilla || s.noShortcut ? COLORS.vanilla : COLORS.full) : COLORS.shortcut;
    ctx.fillRect(margin + i * cell, y + 4, Math.max(1, cell - gap), 14);
  }
  ctx.strokeStyle = COLORS.frame;
  ctx.strokeRect(margin - 0.5, y + 3.5, inner + 1, 15);
  ctx.font = FONT;
  ctx.textAlign = "left";
  ctx.textBaseline = "alphabetic";
  lines.forEach((line, i) => {
    ctx.fillStyle = COLORS[line.tone] ?? COLORS.text;
    ctx.fillText(line.text, margin, y + BAR + 10 + i * LINE);
  });
  ctx.restore();
  if (height !== node.__migmStripHeight) {
    node.__migmStripHeight = height;
    requestAnimationFrame(() => fitNode(node, 0, true));
  }
}

// Tall enough for every widget and the strip's lines (exactly that tall with `exact`, as the strip's line count
// changes); at least minWidth wide.
function fitNode(node, minWidth, exact = false) {
  const needed = node.computeSize?.();
  if (!needed) return;
  const height = exact ? needed[1] : Math.max(needed[1], node.size?.[1] ?? 0);
  node.setSize?.([Math.max(node.size?.[0] ?? 0, needed[0], minWidth), height]);
  redraw(node);
}

// ComfyUI 0.3.64 lists a pack's templates in directory order; this pack's are numbered in the order to open
// them, so the template browser gets them sorted by name.
function sortOwnTemplates() {
  const pack = decodeURIComponent(new URL(import.meta.url).pathname.split("/").slice(-2, -1)[0] ?? "");
  const original = api.getWorkflowTemplates;
  if (!pack || typeof original !== "function") return;
  api.getWorkflowTemplates = async function (...args) {
    const lists = await original.apply(this, args);
    if (Array.isArray(lists?.[pack])) lists[pack] = [...lists[pack]].sort();
    return lists;
  };
}

function setupSampler(node) {
  setupPresets(node);
  const budget = widget(node, "budget");
  if (budget) budget.options.max = Math.max(1, widget(node, "steps")?.value ?? 1);
  for (const name of ["steps", "budget", "full_step_rule", "full_steps", "method"]) {
    watchWidget(node, name, () => {
      const steps = widget(node, "steps");
      const budget = widget(node, "budget");
      if (steps && budget) {
        budget.options.max = Math.max(1, steps.value);
        if (name === "steps" && budget.value > steps.value) budget.value = steps.value;
        const explicit = parseFullSteps(widget(node, "full_steps")?.value);
        if (name === "full_steps" && Array.isArray(explicit)) budget.value = clampBudget(steps.value, explicit.length);
      }
      if (name === "steps" || name === "budget" || name === "full_steps") refreshSpeed(node);
      redraw(node);
    });
  }
  node.addCustomWidget({
    name: "shortcut_schedule",
    type: "migm_schedule_strip",
    value: null,
    serialize: false,
    options: { serialize: false },
    draw(ctx, n, width, y) {
      drawStrip(ctx, n, width, y);
    },
    computeSize(width) {
      return [width ?? 0, BAR + stripText(node, width ?? node.size?.[0] ?? 400).length * LINE + 6];
    },
  });
  fitNode(node, 420);
}

// ------------------------------------------------------------------------------------------------ class label

// The class list of the connected generator; `interactive` (the user changed the connection or the generator)
// also moves a value the new generator does not have to the cycle entry, visibly.
async function refreshClasses(node, interactive) {
  const w = widget(node, "class_name");
  const name = generatorName(node);
  if (!w || !name) return;
  const info = await generatorInfo(name);
  if (info.error) {
    node.__migmClassNote = info.error;
  } else if (info.condition_kind !== "class") {
    node.__migmClassNote = `${name} is text-to-image: use Masked Text Prompt instead`;
    w.options.values = [CYCLE];
  } else {
    node.__migmClassNote = null;
    w.options.values = [CYCLE, ...info.class_names];
  }
  if (interactive && !w.options.values.includes(w.value)) w.value = CYCLE;
  redraw(node);
}

function setupClassLabel(node) {
  node.addCustomWidget({
    name: "class_note",
    type: "migm_class_note",
    value: null,
    serialize: false,
    options: { serialize: false },
    draw(ctx, n, width, y) {
      if (!n.__migmClassNote) return;
      ctx.save();
      ctx.font = FONT;
      ctx.fillStyle = COLORS.warn;
      wrapLines([{ text: n.__migmClassNote, tone: "warn" }], width - 30, measure).forEach((line, i) => {
        ctx.fillText(line.text, 15, y + 12 + i * LINE);
      });
      ctx.restore();
    },
    computeSize(width) {
      return [width ?? 0, node.__migmClassNote ? 2 * LINE + 4 : 0];
    },
  });
}

// ------------------------------------------------------------------------------------------------ recorder

function setupRecorder(node) {
  setupPresets(node);
  node.addCustomWidget({
    name: "dataset_report",
    type: "migm_dataset_report",
    value: null,
    serialize: false,
    options: { serialize: false },
    draw(ctx, n, width, y) {
      const text = n.__migmReport ?? "dataset: not recorded yet in this session";
      const lines = wrapLines(text.split("; ").map((t, i) => ({ text: t, tone: n.__migmReport && i === 0 ? "text" : "dim" })),
                              width - 30, measure);
      ctx.save();
      ctx.font = FONT;
      lines.forEach((line, i) => {
        ctx.fillStyle = COLORS[line.tone];
        ctx.fillText(line.text, 15, y + 14 + LINE * i);
      });
      ctx.restore();
    },
    computeSize(width) {
      const text = node.__migmReport ?? "dataset: not recorded yet in this session";
      const lines = wrapLines(text.split("; ").map((t) => ({ text: t, tone: "text" })), (width ?? 360) - 30, measure);
      return [width ?? 0, lines.length * LINE + 8];
    },
  });
  fitNode(node, 360);
}

// ------------------------------------------------------------------------------------------------ wiring

function chain(target, name, after) {
  const before = target[name];
  target[name] = function (...args) {
    const result = before?.apply(this, args);
    after.apply(this, args);
    return result;
  };
}

function refreshNode(node, interactive) {
  if (node.type === CLASS_LABEL) refreshClasses(node, interactive);
  else if (SAMPLERS.includes(node.type)) refreshSpeed(node);
}

app.registerExtension({
  name: "migm.shortcut.Nodes",
  setup() {
    sortOwnTemplates();
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const type = nodeData.name;
    if (SAMPLERS.includes(type)) {
      chain(nodeType.prototype, "onNodeCreated", function () {
        setupSampler(this);
      });
      chain(nodeType.prototype, "onExecuted", function (message) {
        const stats = message?.shortcut_stats?.[0];
        if (stats) {
          this.__migmStats = stats;
          if (stats.method === "shortcut" && stats.measured_ratio != null && this.__migmSpeed) {
            this.__migmSpeed = { ...this.__migmSpeed, measured: { ratio: stats.measured_ratio } };
          }
        }
        redraw(this);
      });
    } else if (RECORDERS.includes(type)) {
      chain(nodeType.prototype, "onNodeCreated", function () {
        setupRecorder(this);
      });
      chain(nodeType.prototype, "onExecuted", function (message) {
        const text = message?.text?.[0];
        if (text) this.__migmReport = text;
        fitNode(this, 0);
      });
    } else if (type === CLASS_LABEL) {
      chain(nodeType.prototype, "onNodeCreated", function () {
        setupClassLabel(this);
      });
    } else if (type === GENERATOR_LOADER || type === SHORTCUT_LOADER) {
      chain(nodeType.prototype, "onNodeCreated", function () {
        const node = this;
        watchWidget(node, type === GENERATOR_LOADER ? "generator_name" : "shortcut_name", () => {
          for (const target of downstream(node)) {
            refreshNode(target, true);
            for (const next of downstream(target)) refreshNode(next, true); // a sampler behind Load Shortcut Weights
          }
        });
      });
    }
    if (type === CLASS_LABEL || SAMPLERS.includes(type) || RECORDERS.includes(type)) {
      chain(nodeType.prototype, "onConnectionsChange", function (kind, index, connected) {
        const input = kind === 1 ? this.inputs?.[index] : null; // LiteGraph.INPUT
        if (input) setTimeout(() => refreshNode(this, connected), 0);
        redraw(this);
      });
    }
  },
  // After a workflow loads: class lists and measured ratios for every node, saved values kept.
  async afterConfigureGraph() {
    for (const node of app.graph?.nodes ?? []) refreshNode(node, false);
  },
});

