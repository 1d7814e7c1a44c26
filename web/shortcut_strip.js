// MIGM-Shortcut: a strip under the Shortcut Masked Sampler's widgets showing its N steps, the full steps
// (base-model calls) marked, the base-call count and the expected speedup; keeps budget <= steps.
// The Trajectory Recorder gets a line with what its dataset folder holds after a run.
import { app } from "../../scripts/app.js";
import { describeSchedule, presetStepsBudget } from "./schedule.js";

const SAMPLER = "MIGMShortcutMaskedSampler";
const RECORDER = "MIGMTrajectoryRecorder";
const STRIP_HEIGHT = 54;
const COLORS = {
  full: "#f0a030",
  shortcut: "#3d6f99",
  vanilla: "#8a8a8a",
  text: "#dddddd",
  dim: "#9aa4ad",
  warn: "#ff6b6b",
  frame: "#555555",
};

function widget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

function shortcutConnected(node) {
  const input = node.inputs?.find((i) => i.name === "shortcut");
  return input != null && input.link != null;
}

// The schedule the strip shows for the node's current widget values.
export function nodeSchedule(node) {
  const preset = presetStepsBudget(widget(node, "preset")?.value);
  const steps = preset ? preset.steps : widget(node, "steps")?.value;
  const budget = preset ? preset.budget : widget(node, "budget")?.value;
  const method = widget(node, "method")?.value ?? "shortcut";
  const stats = node.__migmStats;
  const sameRun = stats && stats.steps === steps && stats.budget === budget && (stats.method ?? "shortcut") === method;
  return describeSchedule({
    steps,
    budget,
    rule: preset ? "official" : widget(node, "full_step_rule")?.value,
    shortcut: shortcutConnected(node),
    measuredCost: sameRun ? stats.measured_ratio ?? null : null,
    method,
    measuredFull: sameRun ? stats.full_steps : null,
  });
}

function fitText(ctx, text, width) {
  if (ctx.measureText(text).width <= width) return text;
  let cut = text;
  while (cut.length > 1 && ctx.measureText(cut + "…").width > width) cut = cut.slice(0, -1);
  return cut + "…";
}

function drawStrip(ctx, node, width, y) {
  const s = nodeSchedule(node);
  const margin = 15;
  const inner = Math.max(10, width - 2 * margin);
  const boxH = 16;
  const gap = s.steps <= 48 ? 2 : 0;
  const cell = inner / s.steps;
  ctx.save();
  ctx.fillStyle = "rgba(0,0,0,0.25)";
  ctx.fillRect(margin - 3, y, inner + 6, STRIP_HEIGHT - 2);
  for (let i = 0; i < s.steps; i++) {
    ctx.fillStyle = s.isFull[i] ? (s.vanilla ? COLORS.vanilla : COLORS.full) : COLORS.shortcut;
    const x = margin + i * cell;
    ctx.fillRect(x, y + 4, Math.max(1, cell - gap), boxH);
  }
  ctx.strokeStyle = COLORS.frame;
  ctx.strokeRect(margin - 0.5, y + 3.5, inner + 1, boxH + 1);
  ctx.font = "11px sans-serif";
  ctx.textBaseline = "alphabetic";
  ctx.textAlign = "left";
  let line1;
  if (s.vanilla) {
    line1 = shortcutConnected(node) || s.method !== "shortcut"
      ? `vanilla: all ${s.steps} steps run the base model (budget = steps)`
      : `vanilla: no shortcut connected, all ${s.steps} steps run the base model`;
  } else if (s.method === "fewer_steps") {
    line1 = `fewer steps: ${s.steps} of ${s.requestedSteps} steps, all run the base model`;
  } else {
    const where = s.fullKnown ? `full steps ${s.full.join(",")}` : "full steps searched (shown after a run)";
    line1 = `${s.baseCalls} base calls + ${s.shortcutCalls} ${s.method} calls · ${where}`;
  }
  ctx.fillStyle = s.budgetOutOfRange && shortcutConnected(node) ? COLORS.warn : COLORS.text;
  ctx.fillText(fitText(ctx, line1, inner), margin, y + boxH + 18);
  const costText = s.costMeasured
    ? `c = ${s.cost.toFixed(3)} measured on the last run`
    : s.cost === 0 ? "c = 0 assumed (no network)" : "c = 1/24 assumed (shortcut call vs base call)";
  let line2 = `expected speedup ${s.speedup.toFixed(2)}x = N / (B + (N-B)·c), ${costText}`;
  if (s.vanilla) line2 = "speedup 1.00x (vanilla sampler)";
  else if (s.method === "fewer_steps") line2 = `expected speedup ${s.speedup.toFixed(2)}x = N / B`;
  ctx.fillStyle = COLORS.dim;
  ctx.fillText(fitText(ctx, line2, inner), margin, y + boxH + 32);
  ctx.restore();
}

// Keep budget inside 1..steps whatever the user types or drags; a named preset sets both.
function enforceBudget(node, changed) {
  const steps = widget(node, "steps");
  const budget = widget(node, "budget");
  if (!steps || !budget) return;
  const preset = presetStepsBudget(widget(node, "preset")?.value);
  if (preset && changed === "preset") {
    steps.value = preset.steps;
    budget.value = preset.budget;
  }
  budget.options = budget.options || {};
  budget.options.max = Math.max(1, steps.value);
  if (budget.value > steps.value) budget.value = steps.value;
  if (budget.value < 1) budget.value = 1;
}

function chain(target, name, after) {
  const before = target[name];
  target[name] = function (...args) {
    const result = before?.apply(this, args);
    after.apply(this, args);
    return result;
  };
}

function setupSampler(node) {
  for (const name of ["preset", "steps", "budget", "full_step_rule", "method"]) {
    const w = widget(node, name);
    if (!w) continue;
    const original = w.callback;
    w.callback = function (...args) {
      const result = original?.apply(this, args);
      enforceBudget(node, name);
      node.setDirtyCanvas?.(true, true);
      return result;
    };
  }
  enforceBudget(node);
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
      return [width ?? 0, STRIP_HEIGHT];
    },
  });
  fitNode(node, 440);
}

// Wide enough for the strip's text, tall enough for every widget.
function fitNode(node, minWidth) {
  const needed = node.computeSize?.();
  if (!needed) return;
  node.setSize?.([Math.max(node.size?.[0] ?? 0, needed[0], minWidth), Math.max(node.size?.[1] ?? 0, needed[1])]);
}

function setupRecorder(node) {
  node.addCustomWidget({
    name: "dataset_report",
    type: "migm_dataset_report",
    value: null,
    serialize: false,
    options: { serialize: false },
    draw(ctx, n, width, y) {
      // "<folder>: N trajectories, B bytes ... in S shards; A added this run in T s" on two lines
      const lines = (n.__migmReport ?? "dataset: not recorded yet in this session").split("; ");
      ctx.save();
      ctx.font = "11px sans-serif";
      lines.slice(0, 2).forEach((line, i) => {
        ctx.fillStyle = n.__migmReport && i === 0 ? COLORS.text : COLORS.dim;
        ctx.fillText(fitText(ctx, line, width - 30), 15, y + 14 + 14 * i);
      });
      ctx.restore();
    },
    computeSize(width) {
      return [width ?? 0, 34];
    },
  });
  fitNode(node, 360);
}

app.registerExtension({
  name: "migm.shortcut.ScheduleStrip",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name === SAMPLER) {
      chain(nodeType.prototype, "onNodeCreated", function () {
        setupSampler(this);
      });
      chain(nodeType.prototype, "onConfigure", function () {
        enforceBudget(this);
      });
      chain(nodeType.prototype, "onConnectionsChange", function () {
        this.setDirtyCanvas?.(true, true);
      });
      chain(nodeType.prototype, "onExecuted", function (message) {
        const stats = message?.shortcut_stats?.[0];
        if (stats) this.__migmStats = stats;
        this.setDirtyCanvas?.(true, true);
      });
    } else if (nodeData.name === RECORDER) {
      chain(nodeType.prototype, "onNodeCreated", function () {
        setupRecorder(this);
      });
      chain(nodeType.prototype, "onExecuted", function (message) {
        const text = message?.text?.[0];
        if (text) this.__migmReport = text;
        this.setDirtyCanvas?.(true, true);
      });
    }
  },
});
