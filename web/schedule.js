// Which sampling steps run the base model, and what that buys: the same rules as
// shortcut_core/schedules.py (full_steps), kept free of ComfyUI so `node --test` can import it.
//
// official: step 0, then t_k = max(t_{k-1} + 1, round(N k / B)) with Python's round (half to even),
//           as the released MIGM-Shortcut code does.
// paper:    floor(j N / B) for j = 0..B-1 (the paper's 1 + floor(j N / B), 0-based).

export const FULL_STEP_RULES = ["official", "paper"];
// Chosen from the step-error table stored with the shortcut weights (shortcut_core/schedules.py
// search_full_steps); the page cannot know it before a run reports the steps it used.
export const SEARCHED = "searched";

// What runs on the non-full steps (shortcut_core/predictors.py METHODS). "fewer_steps" runs B vanilla steps.
export const METHODS = ["shortcut", "fewer_steps", "reuse", "taylor1", "taylor2"];
const TRAINING_FREE = ["reuse", "taylor1", "taylor2"];

// Cost of one shortcut call relative to one base-model call, assumed until a run measures it
// (MIGM-Shortcut paper: about 1/24 for MaskGIT).
export const ASSUMED_SHORTCUT_COST = 1 / 24;

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

// Expected speedup over the vanilla sampler: N / (B + (N - B) c).
export function expectedSpeedup(steps, budget, cost = ASSUMED_SHORTCUT_COST) {
  return steps / (budget + (steps - budget) * cost);
}

// Steps and budget a named sampler preset sets (shortcut_core/presets.py names them
// <model>-N<steps> for the vanilla sampler and <model>-N<steps>-B<budget>); null for other choices.
export function presetStepsBudget(name) {
  const match = /-N(\d+)(?:-B(\d+))?$/.exec(String(name ?? ""));
  if (!match) return null;
  const steps = Number(match[1]);
  return { steps, budget: match[2] === undefined ? steps : Number(match[2]) };
}

// Budget kept inside 1..steps (what the node UI enforces).
export function clampBudget(steps, budget) {
  const n = Math.max(1, Math.round(Number(steps) || 1));
  const b = Math.round(Number(budget) || 1);
  return Math.min(Math.max(b, 1), n);
}

// Everything the sampler node's strip shows. `shortcut` false = no shortcut weights connected: with the
// shortcut method every step is full (the vanilla sampler); the training-free methods need no weights.
// `measuredCost` (a predicted step's call / a base call, from the last run) replaces the assumption (1/24 for
// the shortcut, 0 for reuse and TaylorSeer) when given. With the searched rule, `measuredFull` (the full steps a
// run with these steps and budget used) is shown; until then the uniform steps stand in (`fullKnown` false).
export function describeSchedule({ steps, budget, rule = "official", shortcut = true, measuredCost = null,
                                   method = "shortcut", measuredFull = null }) {
  const n = Math.max(1, Math.round(Number(steps) || 1));
  const requested = Math.round(Number(budget) || 1);
  const m = METHODS.includes(method) ? method : "shortcut";
  const predicts = m === "shortcut" ? shortcut : m !== "fewer_steps";
  const b = predicts || m === "fewer_steps" ? clampBudget(n, requested) : n;
  const stepsRun = m === "fewer_steps" ? b : n;
  let full;
  let fullKnown = true;
  if (m === "fewer_steps" || b === n) {
    full = Array.from({ length: stepsRun }, (_, i) => i);
  } else if (rule === SEARCHED) {
    const usable = Array.isArray(measuredFull) && measuredFull.length === b && measuredFull[0] === 0 &&
      measuredFull.every((v) => Number.isInteger(v) && v < n);
    full = usable ? [...measuredFull] : fullSteps(n, b, "official");
    fullKnown = usable;
  } else {
    full = fullSteps(n, b, FULL_STEP_RULES.includes(rule) ? rule : "official");
  }
  const measured = typeof measuredCost === "number" && Number.isFinite(measuredCost) && measuredCost >= 0 &&
    (measuredCost > 0 || TRAINING_FREE.includes(m));
  const cost = measured ? measuredCost : TRAINING_FREE.includes(m) ? 0 : ASSUMED_SHORTCUT_COST;
  return {
    steps: stepsRun,
    requestedSteps: n,
    budget: b,
    method: m,
    budgetOutOfRange: requested < 1 || requested > n,
    vanilla: b === n,
    full,
    fullKnown,
    isFull: Array.from({ length: stepsRun }, (_, i) => full.includes(i)),
    baseCalls: b,
    shortcutCalls: stepsRun - b,
    cost,
    costMeasured: measured,
    speedup: m === "fewer_steps" ? n / b : expectedSpeedup(n, b, cost),
  };
}
