"""Training-free baselines as sampler methods, and the searched full-step schedule."""
import itertools
import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, tiny_generator, tiny_shortcut
from shortcut_core import Condition, SamplerSettings, ShortcutError, load_generator, load_shortcut, sample
from shortcut_core.predictors import METHODS, TaylorExtrapolation
from shortcut_core.recording import TrajectoryDataset, record
from shortcut_core.registry import ASSETS, DEMO_SHORTCUT
from shortcut_core.schedule_search import measure_step_errors
from shortcut_core.schedules import full_steps, schedule_error, search_full_steps, searched_full_steps
from shortcut_core.weights import ShortcutWeights, save_shortcut

DEMO_CONDITION = Condition(labels=[0, 3, 6, 9])


@pytest.fixture(scope="module")
def demo():
    return load_generator("demo", device="cpu"), load_shortcut(DEMO_SHORTCUT)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_makes_images_with_its_documented_number_of_base_calls(demo, method):
    generator, shortcut = demo
    settings = SamplerSettings(steps=12, budget=4, cfg_scale=2.0, seed=3, method=method)
    result = sample(generator, DEMO_CONDITION, settings, shortcut=shortcut)
    assert result.base_calls == 4
    if method == "fewer_steps":
        assert result.steps_run == 4 and result.shortcut_calls == 0
        vanilla = sample(generator, DEMO_CONDITION, SamplerSettings(steps=4, cfg_scale=2.0, seed=3))
        assert torch.equal(result.codes, vanilla.codes)  # it is the vanilla sampler with B steps
    else:
        assert result.steps_run == 12 and result.shortcut_calls == 8
        assert result.full_steps == full_steps(12, 4)
    assert bool((result.decode_order >= 0).all())  # every token decoded
    images = generator.decode(result.codes)
    assert images.shape == (4, 3, 64, 64)
    assert 0 <= float(images.min()) and float(images.max()) <= 1
    assert float(images.std(dim=(1, 2, 3)).min()) > 0.05  # a picture, not a flat colour


def test_training_free_methods_need_no_weights_and_the_shortcut_asks_for_them(demo):
    generator, _ = demo
    for method in ("reuse", "taylor1", "taylor2", "fewer_steps"):
        sample(generator, Condition(labels=[1]), SamplerSettings(steps=6, budget=2, method=method))
    with pytest.raises(ShortcutError, match="needs shortcut weights"):
        sample(generator, Condition(labels=[1]), SamplerSettings(steps=6, budget=2))
    with pytest.raises(ShortcutError, match="method must be one of"):
        sample(generator, Condition(labels=[1]), SamplerSettings(steps=6, budget=2, method="magic"))


def test_reuse_repeats_the_last_full_feature_on_predicted_steps(demo):
    generator, _ = demo
    seen = []
    sample(generator, Condition(labels=[2]), SamplerSettings(steps=8, budget=3, method="reuse"),
           callback=lambda info: seen.append((info.is_full, info.feature)))
    last_full = None
    for is_full, feature in seen:
        if is_full:
            last_full = feature
        else:
            assert torch.equal(feature, last_full)


def test_taylor_extrapolation_is_exact_for_polynomials_of_its_order_on_uneven_steps():
    a, b, c = torch.randn(3, 2, 5, 4)  # float32: the predictor computes in float32 (default float32 tolerances)

    def quadratic(s):
        return a + b * s + c * s * s

    second = TaylorExtrapolation(2)
    first = TaylorExtrapolation(1)
    for s in (0, 3, 5):  # uneven spacing, as the official full-step rule gives
        second.observe(s, quadratic(s))
        first.observe(s, a + b * s)
    for index in (6, 7, 9):
        torch.testing.assert_close(second.predict(index, None, None, None, None), quadratic(index))
        torch.testing.assert_close(first.predict(index, None, None, None, None), a + b * index)
    lone = TaylorExtrapolation(2)
    lone.observe(0, a)
    assert torch.equal(lone.predict(1, None, None, None, None), a)  # one full step seen: order 0 (reuse)


def test_search_returns_budget_distinct_steps_with_step_zero_and_never_more_error_than_uniform():
    generator = torch.Generator().manual_seed(0)
    for steps, budget in [(8, 2), (8, 3), (9, 4), (16, 6), (16, 15), (5, 5), (5, 1)]:
        errors = torch.rand(steps, steps, generator=generator)
        chosen = search_full_steps(errors, budget)
        assert chosen[0] == 0 and len(set(chosen)) == budget == len(chosen) and max(chosen) < steps
        assert schedule_error(errors, chosen) <= schedule_error(errors, full_steps(steps, budget)) + 1e-12
        if steps <= 9:  # exhaustive check: the dynamic programme finds the optimum
            best = min(schedule_error(errors, [0, *rest])
                       for rest in itertools.combinations(range(1, steps), budget - 1))
            assert schedule_error(errors, chosen) == pytest.approx(best)


def test_searched_rule_needs_a_table_for_the_requested_step_count():
    with pytest.raises(ShortcutError, match="step-error table"):
        searched_full_steps(8, 3, {})
    with pytest.raises(ShortcutError, match="measured for steps \\[16\\], not 8"):
        searched_full_steps(8, 3, {16: torch.rand(16, 16)})


def test_measured_table_travels_with_the_weights_and_drives_the_sampler(tmp_path):
    generator = tiny_generator(identity="tiny-search")
    network = tiny_shortcut()
    settings = SamplerSettings(steps=6, cfg_scale=1.5, seed=0)
    folder = tmp_path / "heldout"
    record(generator, folder, [Condition(labels=[0, 1]), Condition(labels=[2, 3])], settings)
    tables = measure_step_errors(generator, network, TrajectoryDataset(folder), batch_size=3)
    table = tables[6]
    assert table.shape == (6, 6)
    upper = torch.triu(torch.ones(6, 6, dtype=torch.bool), diagonal=1)
    assert bool((table[upper] > 0).all()) and bool((table[~upper] == 0).all())

    # with a network that returns its input, entry (i, j) is the squared distance between the recorded features
    # of steps i and j over the positions still masked before step j: recompute (2, 5) from the shards
    identity = lambda prev, new, ratio, padding=None: prev  # noqa: E731
    identity.eval = lambda: None
    reuse_table = measure_step_errors(generator, identity, TrajectoryDataset(folder))[6]
    dataset = TrajectoryDataset(folder)
    total = count = 0.0
    for item in dataset:
        still = (item["order"].long() > 4) | (item["order"] < 0)
        squared = (item["features"][2, :-1].float() - item["features"][5, :-1].float()).pow(2).mean(-1)
        total, count = total + float(squared[still].sum()), count + float(still.sum())
    assert float(reuse_table[2, 5]) == pytest.approx(total / count, rel=1e-5)

    path = tmp_path / "with_table.safetensors"
    save_shortcut(path, ShortcutWeights(network, generator_info={"generator": generator.identity},
                                        step_errors={6: table.float()}, step_errors_info={"metric": "test"}))
    loaded = load_shortcut(path, generator)
    assert torch.equal(loaded.step_errors[6], table.float())
    result = sample(generator, Condition(labels=[4]), SamplerSettings(steps=6, budget=3, full_step_rule="searched"),
                    shortcut=loaded)
    assert result.full_steps == search_full_steps(table.float(), 3)


def test_embedded_demo_weights_carry_a_searched_schedule_and_the_cli_uses_it(tmp_path):
    demo = load_shortcut(DEMO_SHORTCUT)
    assert 16 in demo.step_errors
    out = subprocess.run([sys.executable, "-m", "shortcut_core", "sample", "--steps", "16", "--budget", "6",
                          "--full-step-rule", "searched", "--batch", "1", "--json", "--out", str(tmp_path / "s.png")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["full_steps"] == search_full_steps(demo.step_errors[16], 6)
    assert summary["base_calls"] == 6


def test_embedded_ablation_has_no_cross_attention_and_samples(demo):
    generator, _ = demo
    ablation = load_shortcut(ASSETS / "demo_shortcut_no_cross.safetensors", generator)
    assert not ablation.config.cross_attention
    assert not any("cross_attn" in name for name, _ in ablation.network.named_parameters())
    result = sample(generator, Condition(labels=[5]), SamplerSettings(steps=8, budget=3), shortcut=ablation)
    assert result.base_calls == 3 and result.shortcut_calls == 5
