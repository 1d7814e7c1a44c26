"""Full-step and token-count schedules against the official code's vectors (fixture meta.json)."""
import pytest

from shortcut_core.generator import ShortcutError
from shortcut_core.schedules import full_steps, mask_ratios, tokens_per_step


def test_official_full_steps_match_reference(upstream):
    _, meta = upstream
    for key, expected in meta["official_full_steps"].items():
        steps, budget = map(int, key.split(","))
        assert full_steps(steps, budget) == expected, key


def test_arccos_token_counts_match_reference(upstream):
    _, meta = upstream
    for key, expected in meta["arccos_tokens_per_step"].items():
        steps, tokens = map(int, key.split(","))
        assert tokens_per_step(steps, tokens, "arccos") == expected, key


def test_every_schedule_decodes_every_token():
    for schedule in ("arccos", "cosine", "linear", "square", "root"):
        for steps, tokens in ((8, 256), (16, 256), (15, 1024), (4, 16)):
            counts = tokens_per_step(steps, tokens, schedule)
            assert len(counts) == steps and sum(counts) == tokens
            assert all(c >= 1 for c in counts[:-1])


def test_paper_rule_differs_from_official_where_rounding_differs():
    # paper: 1 + floor(jN/B) (1-based); official rounds half to even: they differ for (15, 7)
    assert full_steps(15, 7, "paper") == [0, 2, 4, 6, 8, 10, 12]
    assert full_steps(15, 7, "official") == [0, 2, 4, 6, 9, 11, 13]


def test_budget_equal_steps_is_every_step_and_explicit_lists_are_checked():
    assert full_steps(12, 12) == list(range(12))
    assert full_steps(10, 3, explicit=[0, 7, 4]) == [0, 4, 7]
    with pytest.raises(ShortcutError, match="step 0"):
        full_steps(10, 2, explicit=[3, 5])
    with pytest.raises(ShortcutError, match="budget is 3"):
        full_steps(10, 3, explicit=[0, 5])
    with pytest.raises(ShortcutError, match="0..9"):
        full_steps(10, 2, explicit=[0, 10])


@pytest.mark.parametrize("steps,budget", [(8, 0), (8, 9), (0, 1), (8, -1)])
def test_bad_budget_or_steps_name_the_value(steps, budget):
    with pytest.raises(ShortcutError, match="budget|steps"):
        full_steps(steps, budget)


def test_mask_ratios_are_the_state_before_each_step():
    assert mask_ratios([1, 3, 4], 8) == [1.0, 7 / 8, 4 / 8]
