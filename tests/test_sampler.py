"""The interleaved sampler on a tiny random MaskGIT: vanilla equivalence, schedule, determinism, batches,
callbacks and the errors users see."""
import pytest
import torch

from conftest import tiny_generator, tiny_weights
from shortcut_core import Condition, SamplerSettings, ShortcutError, sample, tokens_per_step
from shortcut_core.sampler import StepInfo
from shortcut_core.weights import ShortcutWeights

LABELS = Condition(labels=[0, 3, 7])


def test_budget_equal_to_steps_gives_the_vanilla_result_token_for_token(tiny):
    settings = SamplerSettings(steps=8, seed=5)
    vanilla = sample(tiny, LABELS, settings)
    with_shortcut = sample(tiny, LABELS, SamplerSettings(steps=8, budget=8, seed=5), shortcut=tiny_weights())
    assert torch.equal(vanilla.codes, with_shortcut.codes)
    assert with_shortcut.shortcut_calls == 0 and with_shortcut.base_calls == 8


def test_shortcut_steps_follow_the_full_step_schedule(tiny):
    seen = []
    result = sample(tiny, LABELS, SamplerSettings(steps=12, budget=5, seed=1), shortcut=tiny_weights(),
                    callback=lambda info: seen.append(info.is_full))
    assert result.full_steps == [0, 2, 5, 7, 10]
    assert [i for i, full in enumerate(seen) if full] == result.full_steps
    assert result.base_calls == 5 and result.shortcut_calls == 7


def test_each_step_decodes_the_scheduled_number_of_tokens(tiny):
    counts = []
    sample(tiny, LABELS, SamplerSettings(steps=8, schedule="cosine"),
           callback=lambda info: counts.append(int(info.new_map[0].sum())))
    assert counts == tokens_per_step(8, tiny.num_tokens, "cosine")


def test_every_position_is_decoded_once_and_codes_are_in_range(tiny):
    result = sample(tiny, LABELS, SamplerSettings(steps=6, budget=3), shortcut=tiny_weights())
    assert (result.decode_order >= 0).all()
    assert result.codes.min() >= 0 and result.codes.max() < tiny.codebook_size


def test_same_seed_same_tokens_other_seed_other_tokens(tiny):
    settings = SamplerSettings(steps=6, budget=3, seed=11)
    first = sample(tiny, LABELS, settings, shortcut=tiny_weights()).codes
    again = sample(tiny, LABELS, settings, shortcut=tiny_weights()).codes
    other = sample(tiny, LABELS, SamplerSettings(steps=6, budget=3, seed=12), shortcut=tiny_weights()).codes
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_shortcut_sees_previous_feature_new_tokens_and_mask_ratio_before_the_step(tiny):
    calls = []

    class Spy(torch.nn.Module):
        config = tiny.default_shortcut_config()  # what the sampler checks the weights against

        def forward(self, prev, new, mask_ratio, padding=None):
            calls.append((prev.clone(), new, mask_ratio.clone()))
            return prev

    infos: list[StepInfo] = []
    sample(tiny, LABELS, SamplerSettings(steps=5, budget=2, cfg_scale=2.0), shortcut=ShortcutWeights(Spy()),
           callback=infos.append)
    full = [0, 2]
    shortcut_steps = [i for i in range(5) if i not in full]
    assert len(calls) == len(shortcut_steps)
    for (prev, new, ratio), step in zip(calls, shortcut_steps):
        before = infos[step - 1]
        assert torch.equal(prev, before.feature)  # chained from the previous step's feature
        assert ratio.shape == (2 * 3,)  # both CFG branches
        torch.testing.assert_close(ratio[:3], before.masked.float().mean(1))
        decoded = before.new_map.sum(1)
        assert torch.equal(new.valid[:3].sum(1), decoded)


def test_guidance_off_uses_one_branch(tiny):
    rows = []
    sample(tiny, LABELS, SamplerSettings(steps=4, cfg_scale=0.0), callback=lambda i: rows.append(i.feature.shape[0]))
    assert rows == [3] * 4


def test_batch_rows_are_sampled_independently_of_class(tiny):
    result = sample(tiny, Condition(labels=[1, 1, 1, 1]), SamplerSettings(steps=4, seed=0))
    assert len({tuple(row.tolist()) for row in result.codes}) == 4  # same class, different noise per row


def test_bad_values_give_actionable_errors(tiny):
    with pytest.raises(ShortcutError, match="budget must be between 1 and steps"):
        sample(tiny, LABELS, SamplerSettings(steps=8, budget=9))
    with pytest.raises(ShortcutError, match="steps must be"):
        sample(tiny, LABELS, SamplerSettings(steps=0))
    with pytest.raises(ShortcutError, match="needs shortcut weights"):
        sample(tiny, LABELS, SamplerSettings(steps=8, budget=4))
    with pytest.raises(ShortcutError, match="class label 10 is out of range: allowed 0..9"):
        sample(tiny, Condition(labels=[10]), SamplerSettings(steps=4))
    with pytest.raises(ShortcutError, match="schedule must be one of"):
        sample(tiny, LABELS, SamplerSettings(steps=4, schedule="zigzag"))


def test_callback_exception_interrupts_the_run(tiny):
    class Stop(Exception):
        pass

    steps_seen = []

    def cancel(info):
        steps_seen.append(info.index)
        if info.index == 2:
            raise Stop

    with pytest.raises(Stop):
        sample(tiny, LABELS, SamplerSettings(steps=8), callback=cancel)
    assert steps_seen == [0, 1, 2]
    assert sample(tiny, LABELS, SamplerSettings(steps=8)).steps_run == 8  # the next run works


def test_decode_gives_images_in_unit_range(tiny):
    result = sample(tiny, LABELS, SamplerSettings(steps=4))
    images = tiny.decode(result.codes)
    assert images.shape == (3, 3, 32, 32)
    assert images.min() >= 0 and images.max() <= 1


def test_bfloat16_autocast_runs_on_cpu():
    generator = tiny_generator()
    result = sample(generator, LABELS, SamplerSettings(steps=4, budget=2, autocast="bf16"), shortcut=tiny_weights())
    assert result.steps_run == 4
