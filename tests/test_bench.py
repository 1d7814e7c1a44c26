"""The benchmark sweep on the embedded demo, shrunk to seconds: every variant measured, figures consistent."""
import json

import pytest

from shortcut_core.cli import main


def test_bench_sweeps_every_variant_and_writes_json_table_and_plot(tmp_path, caplog):
    out = tmp_path / "bench"
    code = main(["bench", "--steps", "6", "--budgets", "2,3", "--images", "6", "--batch", "2", "--quality-batch", "6",
                 "--repeats", "1", "--warmup", "0", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "results.json").read_text())
    rows = {(r["variant"], r["budget"]): r for r in report["rows"]}
    # the demo weights carry a step-error table for N = 16 only: the searched variant is left out, and says so
    assert "shortcut_searched" in caplog.text
    expected = {("vanilla", 6)} | {(v, b) for v in ("shortcut", "shortcut_no_cross", "fewer_steps", "reuse", "taylor1",
                                                    "taylor2") for b in (2, 3)}
    assert set(rows) == expected
    for (variant, budget), row in rows.items():
        assert row["base_calls"] == budget
        assert row["predicted_calls"] == (0 if variant in ("fewer_steps", "vanilla") else 6 - budget)
        assert row["images"] == 6 and 0 <= row["accuracy"] <= 1 and row["fid"] > 0
        assert row["efficiency"] == pytest.approx(row["speedup"] / row["bound"])
        if variant == "vanilla":
            assert row["token_agreement_with_vanilla"] == 1.0 and row["psnr_vs_vanilla_db"] is None
        else:
            assert row["token_agreement_with_vanilla"] < 1.0 and row["psnr_vs_vanilla_db"] > 0
        if row["predicted_calls"]:
            assert 0 < row["cost_ratio"] < 1
            assert row["bound"] == pytest.approx(6 / (budget + (6 - budget) * row["cost_ratio"]))
            assert set(map(int, row["drift"])) == set(range(6)) - set(row["full_steps"])
            assert -1 <= row["mean_cosine"] <= 1 and row["mean_kl"] >= 0
    assert rows[("fewer_steps", 2)]["bound"] == pytest.approx(3.0)
    table = (out / "table.md").read_text().splitlines()
    assert len(table) == 2 + len(rows)
    pytest.importorskip("matplotlib")
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_refuses_budgets_outside_the_steps(capsys):
    assert main(["bench", "--steps", "6", "--budgets", "2,9"]) == 2
    assert "--budgets must lie in 1..steps (6)" in capsys.readouterr().err
