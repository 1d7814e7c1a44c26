// node --test tests/web/ : the strip's schedule maths and text (web/schedule.js) against the official code's
// vectors (fixtures meta.json) and against shortcut_core (full_steps, expected_speedup) run in Python.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import {
  clampBudget, describeSchedule, expectedSpeedup, fullSteps, METHODS, parseFullSteps, pyRound, stripLines, wrapLines,
} from "../../web/schedule.js";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const FIXTURES = process.env.SHORTCUT_FIXTURES
  ? resolve(process.env.SHORTCUT_FIXTURES)
  : resolve(ROOT, "tests", "fixtures", "upstream");

function python(lines) {
  const script = ["import json, sys", `sys.path.insert(0, ${JSON.stringify(ROOT)})`, ...lines].join("\n");
  return JSON.parse(execFileSync(process.env.PYTHON || "python3", ["-c", script],
                                 { encoding: "utf8", maxBuffer: 64 << 20 }));
}

function texts(lines) {
  return lines.map((l) => `${l.tone}: ${l.text}`);
}

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
  assert.deepEqual(fullSteps(10, 4), [0, 2, 5, 8]);
  assert.deepEqual(fullSteps(6, 4), [0, 2, 3, 4]);
});

test("budget = steps runs every step; budget 1 only step 0", () => {
  for (const n of [1, 2, 7, 15, 64]) {
    assert.deepEqual(fullSteps(n, n), Array.from({ length: n }, (_, i) => i));
    assert.deepEqual(fullSteps(n, 1), [0]);
  }
});

test("an out-of-range budget is named on the strip, not shown as the vanilla sampler (issue 18)", () => {
  assert.throws(() => fullSteps(8, 9), RangeError);
  const d = describeSchedule({ steps: 8, budget: 12 });
  assert.equal(d.vanilla, false);
  assert.deepEqual(texts(stripLines(d)),
                   ["warn: budget 12 is not between 1 and steps (8): the run will be refused. Set budget to 1..8."]);
  assert.match(describeSchedule({ steps: 8, budget: 0 }).problem, /budget 0 is not between 1 and steps \(8\)/);
  assert.equal(clampBudget(8, 12), 8);
  assert.equal(clampBudget(8, 0), 1);
});

test("the expected speedup uses the measured per-call ratio and says where it comes from; none is assumed", () => {
  assert.ok(Math.abs(expectedSpeedup(15, 7, 1 / 24) - 15 / (7 + 8 / 24)) < 1e-12);
  assert.equal(expectedSpeedup(16, 16, null), 1);
  const unknown = describeSchedule({ steps: 16, budget: 6 });
  assert.equal(unknown.speedup, null);
  assert.deepEqual(texts(stripLines(unknown)), [
    "text: 6 base + 10 shortcut calls · full steps 0,3,5,8,11,13",
    "dim: expected at most 2.67x (N/B) · the shortcut call's cost is not measured yet: queue once",
  ]);
  const fitted = describeSchedule({ steps: 16, budget: 6, cost: 1 / 14.9, costSource: "fitted" });
  assert.ok(Math.abs(fitted.speedup - 16 / (6 + 10 / 14.9)) < 1e-12);
  assert.equal(stripLines(fitted)[1].text,
               "expected 2.40x faster · a shortcut call = 1/15 base call, measured when fitted");
  const here = describeSchedule({ steps: 16, budget: 6, cost: 0.25, costSource: "measured" });
  assert.equal(stripLines(here)[1].text,
               "expected 1.88x faster · a shortcut call = 1/4.0 base call, measured here on the last run");
});

test("the expected speedup is shortcut_core.speed.expected_speedup", (t) => {
  let table;
  try {
    table = python([
      "from shortcut_core.speed import expected_speedup",
      "cases = [(n, b, c, m) for n in (8, 15, 16, 64) for b in (1, 4, 7, n) if b <= n",
      "         for c in (None, 0.0, 1 / 24, 0.3) for m in ('shortcut', 'fewer_steps', 'reuse')]",
      "print(json.dumps([[n, b, c, m, expected_speedup(n, b, c, m)] for n, b, c, m in cases]))",
    ]);
  } catch (err) {
    t.skip(`python with shortcut_core unavailable: ${String(err).split("\n")[0]}`);
    return;
  }
  for (const [n, b, c, m, expected] of table) {
    const d = describeSchedule({ steps: n, budget: b, cost: c, costSource: c == null ? null : "fitted", method: m });
    if (expected == null) assert.equal(d.speedup, null, `${n},${b},${c},${m}`);
    else assert.ok(Math.abs(d.speedup - expected) < 1e-12, `${n},${b},${c},${m}`);
  }
});

test("no shortcut connected: the vanilla sampler, every step full", () => {
  const d = describeSchedule({ steps: 12, budget: 4, shortcut: false });
  assert.equal(d.baseCalls, 12);
  assert.equal(d.isFull.every(Boolean), true);
  assert.equal(d.speedup, 1);
  assert.deepEqual(texts(stripLines(d)), ["text: no shortcut connected: vanilla sampler, all 12 steps run the base model"]);
});

test("every (N <= 96, B <= N) and both rules agree with shortcut_core.schedules.full_steps", (t) => {
  let table;
  try {
    table = python([
      "from shortcut_core.schedules import full_steps",
      "print(json.dumps({f'{n},{b},{r}': full_steps(n, b, r) for n in range(1, 97) for b in range(1, n + 1)",
      "                  for r in ('official', 'paper')}))",
    ]);
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

test("the method list is the sampler's (shortcut_core.predictors.METHODS)", () => {
  assert.deepEqual(python(["from shortcut_core.predictors import METHODS", "print(json.dumps(list(METHODS)))"]),
                   METHODS);
});

test("fewer_steps shows B steps, all full, and speedup N / B", () => {
  const d = describeSchedule({ steps: 16, budget: 4, method: "fewer_steps", shortcut: false });
  assert.equal(d.steps, 4);
  assert.equal(d.isFull.every(Boolean), true);
  assert.equal(d.predictedCalls, 0);
  assert.equal(d.speedup, 4);
  assert.equal(d.vanilla, false);
  assert.deepEqual(texts(stripLines(d)),
                   ["text: fewer steps: 4 of 16 steps, all on the base model · expected 4.00x faster (N/B)"]);
});

test("training-free methods need no weights; their cost is only known once a run measured it", () => {
  const d = describeSchedule({ steps: 16, budget: 4, method: "taylor2", shortcut: false });
  assert.deepEqual(d.full, fullSteps(16, 4, "official"));
  assert.equal(d.predictedCalls, 12);
  assert.equal(d.speedup, null);
  const measured = describeSchedule({ steps: 16, budget: 4, method: "reuse", shortcut: false, cost: 0.01,
                                     costSource: "measured" });
  assert.equal(measured.speedup, expectedSpeedup(16, 4, 0.01));
});

test("searched and auto rules show the server's searched steps; auto without a table is official", () => {
  const before = describeSchedule({ steps: 16, budget: 6, rule: "searched" });
  assert.equal(before.fullKnown, false);
  assert.match(stripLines(before)[0].text, /searched full steps/);
  const after = describeSchedule({ steps: 16, budget: 6, rule: "searched", searchedFull: [0, 2, 3, 5, 8, 12] });
  assert.equal(after.fullKnown, true);
  assert.deepEqual(after.full, [0, 2, 3, 5, 8, 12]);
  const auto = describeSchedule({ steps: 16, budget: 6, rule: "auto", searchedFull: [0, 2, 3, 5, 8, 12] });
  assert.equal(auto.ruleUsed, "searched");
  assert.deepEqual(auto.full, [0, 2, 3, 5, 8, 12]);
  const plain = describeSchedule({ steps: 16, budget: 6, rule: "auto" });
  assert.equal(plain.ruleUsed, "official");
  assert.deepEqual(plain.full, fullSteps(16, 6));
});

test("explicit full steps are parsed, shown, and checked against the budget", () => {
  assert.equal(parseFullSteps(" "), null);
  assert.deepEqual(parseFullSteps("0, 5 3,3"), [0, 3, 5]);
  assert.match(parseFullSteps("0;x"), /full_steps must be step numbers/);
  const d = describeSchedule({ steps: 16, budget: 3, explicitFull: [0, 3, 5] });
  assert.deepEqual(d.full, [0, 3, 5]);
  assert.equal(d.problem, null);
  assert.equal(describeSchedule({ steps: 16, budget: 4, explicitFull: [0, 3, 5] }).problem,
               "full_steps lists 3 steps but budget is 4");
  assert.match(describeSchedule({ steps: 8, budget: 2, explicitFull: [1, 3] }).problem, /must start with step 0/);
  assert.match(describeSchedule({ steps: 8, budget: 2, explicitFull: [0, 9] }).problem, /must lie in 0..7/);
});

test("after a run the strip holds the measured time, the calls and the speedup over the estimated vanilla time", () => {
  const d = describeSchedule({ steps: 16, budget: 6, cost: 0.07, costSource: "measured" });
  const run = { seconds: 1.405, base_calls: 6, shortcut_calls: 10, method: "shortcut", steps: 16, steps_run: 16,
                speedup: 2.09, vanilla_seconds: 2.934, note: null };
  const lines = stripLines(d, run);
  assert.equal(lines.at(-1).text,
               "last run: 1.41 s, 6 base + 10 shortcut calls · 2.09x vs vanilla ≈ 2.93 s (estimated)");
  const vanilla = stripLines(describeSchedule({ steps: 16, budget: 16 }),
                             { ...run, base_calls: 16, shortcut_calls: 0, speedup: 1, vanilla_seconds: 1.405 });
  assert.equal(vanilla.at(-1).text, "last run: 1.41 s, 16 base + 0 shortcut calls");
  const noted = stripLines(d, { ...run, note: "the widgets cfg differ from preset 'x': the widgets ran" });
  assert.deepEqual(noted.at(-1), { text: "note: the widgets cfg differ from preset 'x': the widgets ran", tone: "warn" });
});

test("lines wrap at spaces to the node width instead of being cut off", () => {
  const measure = (s) => s.length * 6; // 6 px a character
  const lines = stripLines(describeSchedule({ steps: 16, budget: 6, cost: 1 / 14.9, costSource: "fitted" }));
  const wrapped = wrapLines(lines, 240, measure);
  assert.ok(wrapped.length > lines.length);
  assert.ok(wrapped.every((l) => measure(l.text) <= 240 || !l.text.includes(" ")));
  assert.equal(wrapped.map((l) => l.text).join(" "), lines.map((l) => l.text).join(" "));
  assert.equal(wrapLines(lines, 10000, measure).length, lines.length);
});
