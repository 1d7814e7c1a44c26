// node --test tests/web/ : the strip's schedule maths (web/schedule.js) against the official code's vectors
// (fixtures meta.json) and against shortcut_core.schedules.full_steps run in Python.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import {
  ASSUMED_SHORTCUT_COST, clampBudget, describeSchedule, expectedSpeedup, fullSteps, METHODS, presetStepsBudget, pyRound,
} from "../../web/schedule.js";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const FIXTURES = process.env.SHORTCUT_FIXTURES
  ? resolve(process.env.SHORTCUT_FIXTURES)
  : resolve(ROOT, "tests", "fixtures", "upstream");

test("pyRound rounds half to even like Python", () => {
  assert.equal(pyRound(0.5), 0);
  assert.equal(pyRound(1.5), 2);
  assert.equal(pyRound(2.5), 2);
  assert.equal(pyRound(3.5), 4);
  assert.equal(pyRound(2.4999), 2);
  assert.equal(pyRound(2.5001), 3);
  assert.equal(pyRound(7), 7);
});

test("official full steps match the official code's vectors (meta.json)", (t) => {
  const meta = join(FIXTURES, "meta.json");
  if (!existsSync(meta)) {
    t.skip(`no fixtures at ${FIXTURES} (set SHORTCUT_FIXTURES)`);
    return;
  }
  const vectors = JSON.parse(readFileSync(meta, "utf8")).official_full_steps;
  assert.ok(Object.keys(vectors).length >= 5);
  for (const [key, expected] of Object.entries(vectors)) {
    const [steps, budget] = key.split(",").map(Number);
    assert.deepEqual(fullSteps(steps, budget, "official"), expected, `N=${steps}, B=${budget}`);
  }
});

test("ties round half to even, not up as Math.round does", () => {
  // N=10, B=4: 10k/4 = 2.5, 5, 7.5 -> 2, 5, 8 (Math.round would give 3 at k = 1).
  assert.deepEqual(fullSteps(10, 4), [0, 2, 5, 8]);
  // N=6, B=4: 1.5, 3, 4.5 -> 2, 3, 4.
  assert.deepEqual(fullSteps(6, 4), [0, 2, 3, 4]);
});

test("budget = steps runs every step; budget 1 only step 0", () => {
  for (const n of [1, 2, 7, 15, 64]) {
    assert.deepEqual(fullSteps(n, n), Array.from({ length: n }, (_, i) => i));
    assert.deepEqual(fullSteps(n, 1), [0]);
  }
});

test("out-of-range budgets are refused and clamped for the UI", () => {
  assert.throws(() => fullSteps(8, 9), RangeError);
  assert.throws(() => fullSteps(8, 0), RangeError);
  assert.equal(clampBudget(8, 12), 8);
  assert.equal(clampBudget(8, 0), 1);
  const d = describeSchedule({ steps: 8, budget: 12 });
  assert.equal(d.budget, 8);
  assert.equal(d.budgetOutOfRange, true);
  assert.equal(d.vanilla, true);
});

test("speedup N / (B + (N - B) c) with c = 1/24 unless measured", () => {
  assert.equal(ASSUMED_SHORTCUT_COST, 1 / 24);
  assert.ok(Math.abs(expectedSpeedup(15, 7) - 15 / (7 + 8 / 24)) < 1e-12);
  assert.equal(expectedSpeedup(16, 16), 1);
  const assumed = describeSchedule({ steps: 32, budget: 8 });
  assert.equal(assumed.costMeasured, false);
  assert.ok(Math.abs(assumed.speedup - 32 / (8 + 24 / 24)) < 1e-12);
  const measured = describeSchedule({ steps: 32, budget: 8, measuredCost: 0.5 });
  assert.equal(measured.costMeasured, true);
  assert.ok(Math.abs(measured.speedup - 32 / (8 + 24 * 0.5)) < 1e-12);
});

test("no shortcut connected: the vanilla sampler, every step full", () => {
  const d = describeSchedule({ steps: 12, budget: 4, shortcut: false });
  assert.equal(d.vanilla, true);
  assert.equal(d.baseCalls, 12);
  assert.equal(d.isFull.every(Boolean), true);
  assert.equal(d.speedup, 1);
});

function pythonTable() {
  const python = process.env.PYTHON || "python3";
  const script = [
    "import json, sys",
    `sys.path.insert(0, ${JSON.stringify(ROOT)})`,
    "from shortcut_core.schedules import full_steps",
    "print(json.dumps({f'{n},{b},{r}': full_steps(n, b, r) for n in range(1, 97) for b in range(1, n + 1)",
    "                  for r in ('official', 'paper')}))",
  ].join("\n");
  return JSON.parse(execFileSync(python, ["-c", script], { encoding: "utf8", maxBuffer: 64 << 20 }));
}

test("every (N <= 96, B <= N) and both rules agree with shortcut_core.schedules.full_steps", (t) => {
  let table;
  try {
    table = pythonTable();
  } catch (err) {
    t.skip(`python with shortcut_core unavailable: ${String(err).split("\n")[0]}`);
    return;
  }
  let compared = 0;
  for (const [key, expected] of Object.entries(table)) {
    const [n, b, rule] = key.split(",");
    assert.deepEqual(fullSteps(Number(n), Number(b), rule), expected, key);
    compared++;
  }
  assert.equal(compared, 2 * (96 * 97) / 2);
});

test("named presets give their steps and budget; other choices none", () => {
  assert.deepEqual(presetStepsBudget("maskgit512-N15-B7"), { steps: 15, budget: 7 });
  assert.deepEqual(presetStepsBudget("maskgit512-N32"), { steps: 32, budget: 32 });
  assert.equal(presetStepsBudget("none (use the widgets)"), null);
  assert.equal(presetStepsBudget("generator defaults"), null);
  assert.equal(presetStepsBudget(undefined), null);
});

test("every preset name in shortcut_core.presets parses to its own steps and budget", (t) => {
  const python = process.env.PYTHON || "python3";
  const script = [
    "import json, sys",
    `sys.path.insert(0, ${JSON.stringify(ROOT)})`,
    "from shortcut_core.presets import PRESETS",
    "print(json.dumps({k: [v[0]['steps'], v[0]['budget']] for k, v in PRESETS.items()}))",
  ].join("\n");
  let presets;
  try {
    presets = JSON.parse(execFileSync(python, ["-c", script], { encoding: "utf8" }));
  } catch (err) {
    t.skip(`python with shortcut_core unavailable: ${String(err).split("\n")[0]}`);
    return;
  }
  assert.ok(Object.keys(presets).length > 0);
  for (const [name, [steps, budget]] of Object.entries(presets)) {
    assert.deepEqual(presetStepsBudget(name), { steps, budget }, name);
  }
});

test("the method list is the sampler's (shortcut_core.predictors.METHODS)", () => {
  const python = process.env.PYTHON || "python3";
  const script = `import json, sys; sys.path.insert(0, ${JSON.stringify(ROOT)}); ` +
    "from shortcut_core.predictors import METHODS; print(json.dumps(list(METHODS)))";
  assert.deepEqual(JSON.parse(execFileSync(python, ["-c", script], { encoding: "utf8" })), METHODS);
});

test("fewer_steps shows B steps, all full, and speedup N / B", () => {
  const d = describeSchedule({ steps: 16, budget: 4, method: "fewer_steps", shortcut: false });
  assert.equal(d.steps, 4);
  assert.equal(d.isFull.every(Boolean), true);
  assert.equal(d.baseCalls, 4);
  assert.equal(d.shortcutCalls, 0);
  assert.equal(d.speedup, 4);
  assert.equal(d.vanilla, false);
});

test("training-free methods need no shortcut weights and assume c = 0 until measured", () => {
  const d = describeSchedule({ steps: 16, budget: 4, method: "taylor2", shortcut: false });
  assert.deepEqual(d.full, fullSteps(16, 4, "official"));
  assert.equal(d.shortcutCalls, 12);
  assert.equal(d.speedup, 4);
  const measured = describeSchedule({ steps: 16, budget: 4, method: "reuse", shortcut: false, measuredCost: 0.01 });
  assert.equal(measured.speedup, expectedSpeedup(16, 4, 0.01));
});

test("searched full steps are shown once a run reported them, the uniform ones stand in before", () => {
  const before = describeSchedule({ steps: 16, budget: 6, rule: "searched" });
  assert.equal(before.fullKnown, false);
  assert.deepEqual(before.full, fullSteps(16, 6, "official"));
  const after = describeSchedule({ steps: 16, budget: 6, rule: "searched", measuredFull: [0, 2, 3, 5, 8, 12] });
  assert.equal(after.fullKnown, true);
  assert.deepEqual(after.full, [0, 2, 3, 5, 8, 12]);
  const stale = describeSchedule({ steps: 16, budget: 6, rule: "searched", measuredFull: [0, 4, 8] });
  assert.equal(stale.fullKnown, false);
});
