// Which sampling steps run the base model, what that buys, and the text of the sampler node's strip: the same
// rules as shortcut_core/schedules.py (full_steps) and shortcut_core/speed.py (expected_speedup), kept free of
// ComfyUI so `node --test` can import it.
//
// official: step 0, then t_k = max(t_{k-1} + 1, round(N k / B)) with Python's round (half to even),
//           as the released MIGM-Shortcut code does.
// paper:    floor(j N / B) for j = 0..B-1 (the paper's 1 + floor(j N / B), 0-based).
// searched: chosen on the server from the step-error table stored with the shortcut weights.

export const FULL_STEP_RULES = ["official", "paper"];
export const SEARCHED = "searched";
export const AUTO = "auto";

// What runs on the non-full steps (shortcut_core/predictors.py METHODS). "fewer_steps" runs B vanilla steps.
export const METHODS = ["shortcut", "fewer_steps", "reuse", "taylor1", "taylor2"];

// Python 3 round(x) for a float: nearest integer, ties to the even one.
export function pyRound(x) {
  const floor = Math.floor(x);
  const diff = x - floor; // exact for the magnitudes used here
  if (diff > 0.5) return floor + 1;
  if (diff < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

export function checkStepsBudget(steps, budget) {
  if (!Number.isInteger(steps) || steps < 1) {
    throw new RangeError(`steps must be a whole number >= 1, got ${steps}`);
  }
  if (!Number.isInteger(budget) || budget < 1 || budget > steps) {
    throw new RangeError(`budget must be between 1 and steps (${steps}), got ${budget}`);
  }
}

// 0-based indices of the steps that run the base model.
export function fullSteps(steps, budget, rule = "official") {
  checkStepsBudget(steps, budget);
  if (rule === "official") {
    const chosen = [0];
    for (let k = 1; k < budget; k++) {
      // steps * k / budget: the same correctly rounded double as Python's true division of ints.
      chosen.push(Math.max(chosen[chosen.length - 1] + 1, pyRound((steps * k) / budget)));
    }
    return chosen;
  }
  if (rule === "paper") {
    const chosen = [];
    for (let j = 0; j < budget; j++) chosen.push(Math.floor((j * steps) / budget));
    return chosen;
  }
  throw new RangeError(`full-step rule must be one of ${FULL_STEP_RULES.join(", ")}, got ${rule}`);
}

// Expected speedup over the vanilla sampler: N / (B + (N - B) c); null when c is unknown.
export function expectedSpeedup(steps, budget, cost) {
  if (budget >= steps) return steps / budget;
  if (typeof cost !== "number" || !Number.isFinite(cost) || cost < 0) return null;
  return steps / (budget + (steps - budget) * cost);
}

// The explicit full-step list typed in the advanced node ("0,3,5,8"); null when empty, a message when unusable.
export function parseFullSteps(text) {
  const raw = String(text ?? "").trim();
  if (!raw) return null;
  const parts = raw.split(/[\s,]+/).filter(Boolean);
  if (!parts.every((p) => /^\d+$/.test(p))) return `full_steps must be step numbers like 0,3,5,8, got "${raw}"`;
  return [...new Set(parts.map(Number))].sort((a, b) => a - b);
}

function explicitProblem(list, steps, budget) {
  if (typeof list === "string") return list;
  if (list[0] !== 0) return `full_steps must start with step 0, got ${list.join(",")}`;
  if (list[list.length - 1] >= steps) return `full_steps must lie in 0..${steps - 1}, got ${list[list.length - 1]}`;
  if (list.length !== budget) return `full_steps lists ${list.length} steps but budget is ${budget}`;
  return null;
}

// Everything the strip shows for the node's widgets. `shortcut` false = no shortcut weights connected: with the
// shortcut method every step is full (the vanilla sampler). `cost` is a predicted call over a base call and
// `costSource` says where it comes from ("measured": a run on this machine, "fitted": stored in the weights);
// without it the speedup is unknown for the shortcut. `searchedFull` are the full steps the server chose from
// the weights' step-error table for these steps and budget (null when the weights carry none for N).
export function describeSchedule({ steps, budget, rule = "official", shortcut = true, method = "shortcut",
                                   cost = null, costSource = null, searchedFull = null, explicitFull = null }) {
  const n = Math.max(1, Math.round(Number(steps) || 1));
  const requested = Math.round(Number(budget));
  const m = METHODS.includes(method) ? method : "shortcut";
  let problem = null;
  if (!Number.isFinite(requested) || requested < 1 || requested > n) {
    problem = `budget ${Number.isFinite(requested) ? requested : budget} is not between 1 and steps (${n}): ` +
      `the run will be refused. Set budget to ${n > 1 ? `1..${n}` : "1"}.`;
  }
  const predicts = m === "shortcut" ? shortcut : m !== "fewer_steps";
  const b = problem ? n : predicts || m === "fewer_steps" ? requested : n;
  const stepsRun = m === "fewer_steps" && !problem ? b : n;
  let full;
  let fullKnown = true;
  let ruleUsed = rule;
  if (m === "fewer_steps" || b === n) {
    full = Array.from({ length: stepsRun }, (_, i) => i);
  } else if (explicitFull != null) {
    problem = explicitProblem(explicitFull, n, b);
    full = problem ? fullSteps(n, b, "official") : explicitFull;
    ruleUsed = "explicit";
  } else if (rule === SEARCHED || (rule === AUTO && searchedFull)) {
    const usable = Array.isArray(searchedFull) && searchedFull.length === b && searchedFull[0] === 0;
    full = usable ? [...searchedFull] : fullSteps(n, b, "official");
    fullKnown = usable;
    ruleUsed = SEARCHED;
  } else {
    ruleUsed = FULL_STEP_RULES.includes(rule) ? rule : "official";
    full = fullSteps(n, b, ruleUsed);
  }
  const known = typeof cost === "number" && Number.isFinite(cost) && cost >= 0;
  return {
    steps: stepsRun,
    requestedSteps: n,
    budget: b,
    method: m,
    problem,
    vanilla: b === n && !problem,
    noShortcut: m === "shortcut" && !shortcut,
    full,
    fullKnown,
    ruleUsed,
    isFull: Array.from({ length: stepsRun }, (_, i) => full.includes(i)),
    baseCalls: b,
    predictedCalls: stepsRun - b,
    cost: known ? cost : null,
    costSource: known ? costSource : null,
    speedup: m === "fewer_steps" ? n / b : expectedSpeedup(n, b, known ? cost : null),
  };
}

function fraction(cost) {
  return cost > 0 ? `1/${(1 / cost).toFixed(cost > 0.1 ? 1 : 0)}` : "0";
}

// The strip's text lines ({text, tone}: "text", "dim", "warn"), from describeSchedule and the last run's report
// (the node's ui.shortcut_stats). A line may be longer than the node: the drawing code wraps it.
export function stripLines(d, lastRun = null) {
  const lines = [];
  if (d.problem) {
    lines.push({ text: d.problem, tone: "warn" });
  } else if (d.noShortcut) {
    lines.push({ text: `no shortcut connected: vanilla sampler, all ${d.steps} steps run the base model`, tone: "text" });
  } else if (d.vanilla) {
    lines.push({ text: `budget = steps: vanilla sampler, all ${d.steps} steps run the base model`, tone: "text" });
  } else if (d.method === "fewer_steps") {
    lines.push({ text: `fewer steps: ${d.steps} of ${d.requestedSteps} steps, all on the base model · ` +
      `expected ${d.speedup.toFixed(2)}x faster (N/B)`, tone: "text" });
  } else {
    const where = d.fullKnown ? `full steps ${d.full.join(",")}` : "searched full steps (from the weights' table)";
    lines.push({ text: `${d.baseCalls} base + ${d.predictedCalls} ${d.method} calls · ${where}`, tone: "text" });
    if (d.speedup != null) {
      const source = d.costSource === "measured" ? "measured here on the last run" : "measured when fitted";
      lines.push({ text: `expected ${d.speedup.toFixed(2)}x faster · a ${d.method} call = ${fraction(d.cost)} ` +
        `base call, ${source}`, tone: "dim" });
    } else {
      const bound = d.requestedSteps / d.baseCalls;
      lines.push({ text: `expected at most ${bound.toFixed(2)}x (N/B) · the ${d.method} call's cost is not measured ` +
        "yet: queue once", tone: "dim" });
    }
  }
  if (lastRun && typeof lastRun.seconds === "number") {
    const calls = `${lastRun.base_calls} base + ${lastRun.shortcut_calls} ${lastRun.method ?? "shortcut"}`;
    let text = `last run: ${lastRun.seconds.toFixed(2)} s, ${calls} calls`;
    if (lastRun.shortcut_calls > 0 || lastRun.steps_run < lastRun.steps) {
      text += ` · ${lastRun.speedup.toFixed(2)}x vs vanilla ≈ ${lastRun.vanilla_seconds.toFixed(2)} s (estimated)`;
    }
    lines.push({ text, tone: "text" });
    if (lastRun.note) lines.push({ text: `note: ${lastRun.note}`, tone: "warn" });
  }
  return lines;
}

// Lines broken at spaces so each fits `width` as measured by `measure(text)` (a canvas's measureText).
export function wrapLines(lines, width, measure) {
  const out = [];
  for (const line of lines) {
    let current = "";
    for (const word of line.text.split(" ")) {
      const next = current ? `${current} ${word}` : word;
      if (current && measure(next) > width) {
        out.push({ text: current, tone: line.tone });
        current = word;
      } else {
        current = next;
      }
    }
    out.push({ text: current, tone: line.tone });
  }
  return out;
}

// Budget kept inside 1..steps when the user lowers the steps (a visible change).
export function clampBudget(steps, budget) {
  const n = Math.max(1, Math.round(Number(steps) || 1));
  const b = Math.round(Number(budget) || 1);
  return Math.min(Math.max(b, 1), n);
}
