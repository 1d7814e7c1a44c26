"""Bad inputs are refused before any work, in one line, with nothing lost.

One parametrised test runs every case in ``CASES`` through its entry point (``python -m shortcut_core`` sample /
convert / bench, the ``train/`` scripts, the Python API) and checks: the exit status (2, a usage error) or the
ShortcutError an API call raises; that the message names the offending value; that no traceback is printed;
and that every file present before the call (a previous image, weights, a recorded dataset) is byte for byte
unchanged and no file was added. Command lines run in-process through their ``main(argv)`` (a few run end to end
in a subprocess below), so the whole table costs seconds.

``docs/bad_inputs.md`` is generated from ``CASES``: ``python tests/test_bad_inputs.py`` rewrites it, and
``test_bad_inputs_table_is_up_to_date`` fails when it is stale.

Also here: SIGKILL while an image or the benchmark's results are written leaves the previous files whole, and the
next run removes the killed run's temporary file.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from shortcut_core import Condition, SamplerSettings, ShortcutError, load_generator, load_shortcut, sample  # noqa: E402
from shortcut_core.fitting import FitSettings  # noqa: E402
from shortcut_core.registry import DEMO_SHORTCUT, save_generator  # noqa: E402
from shortcut_core.recording import condition_schedule, record  # noqa: E402
from shortcut_core.weights import ShortcutWeights, save_shortcut  # noqa: E402

TABLE = ROOT / "docs" / "bad_inputs.md"
BIG_SEED = str(2 ** 64)  # one past the largest 64-bit seed
UPSTREAM = Path(os.environ.get("SHORTCUT_FIXTURES", ROOT / "tests" / "fixtures" / "upstream"))


@dataclass
class Case:
    """One bad input: ``args`` for a command line (placeholders ``{ws}``, ``{data}``, ... filled from the
    workspace) or ``call`` for an API function; ``names`` must appear in the message."""

    entry: str  # sample, convert, bench, record, fit, search, train_demo, train_classifier, benchmark, api
    args: Union[list, Callable, None]
    names: str
    why: str

    @property
    def shown(self) -> str:
        if callable(self.args):
            return self.args.__doc__.strip()
        return " ".join(a if a and " " not in a else repr(a) for a in self.args)


def api(doc: str):
    """Decorate an API call so the table shows ``doc`` for it."""
    def wrap(fn):
        fn.__doc__ = doc
        return fn
    return wrap


NAN = float("nan")

CASES = [
    # --------------------------------------------------------------------------------------------- sample
    Case("sample", ["--steps", "0"], "'0'", "steps must be >= 1"),
    Case("sample", ["--steps", "-3"], "'-3'", "steps must be >= 1"),
    Case("sample", ["--steps", "abc"], "'abc'", "not a number"),
    Case("sample", ["--budget", "0"], "'0'", "budget must be >= 1"),
    Case("sample", ["--steps", "16", "--budget", "20"], "20", "budget above steps"),
    Case("sample", ["--cfg", "nan"], "'nan'", "NaN guidance"),
    Case("sample", ["--cfg", "inf"], "'inf'", "infinite guidance"),
    Case("sample", ["--cfg", "-1"], "'-1'", "negative guidance"),
    Case("sample", ["--r-temp", "nan"], "'nan'", "NaN confidence noise"),
    Case("sample", ["--sm-temp", "0"], "'0'", "temperature must be > 0"),
    Case("sample", ["--sm-temp=-inf"], "'-inf'", "infinite temperature"),
    Case("sample", ["--full-steps", "a,b"], "'a'", "full steps are not numbers"),
    Case("sample", ["--full-steps", "1,3"], "[1, 3]", "explicit full steps without step 0"),
    Case("sample", ["--steps", "16", "--full-steps", "0,99"], "99", "full step beyond the steps"),
    Case("sample", ["--full-steps", "0,4", "--budget", "3"], "--budget is 3", "full-step list and budget disagree"),
    Case("sample", ["--seed", BIG_SEED], BIG_SEED, "seed beyond 64 bits"),
    Case("sample", ["--seed", "-1"], "'-1'", "negative seed"),
    Case("sample", ["--batch", "0"], "'0'", "no images asked for"),
    Case("sample", ["--batch", "-2"], "'-2'", "negative batch"),
    Case("sample", ["--batch", "100000000"], "100000000", "batch too large for the free memory"),
    Case("sample", ["--classes", ""], "''", "empty class list"),
    Case("sample", ["--classes", "banana"], "'banana'", "unknown class name"),
    Case("sample", ["--classes", "11"], "11", "class number out of range"),
    Case("sample", ["--classes", "1,2,3", "--batch", "2"], "--classes gives 3", "more classes than images"),
    Case("sample", ["--prompt", "a red cat"], "'a red cat'", "prompt to a class-conditional generator"),
    Case("sample", ["--width", "512"], "512", "size for a fixed-size generator"),
    Case("sample", ["--device", "cuda:99"], "cuda:99", "a device this machine does not have"),
    Case("sample", ["--device", "quantum"], "'quantum'", "unknown device"),
    Case("sample", ["--dtype", "int8"], "'int8'", "unknown dtype"),
    Case("sample", ["--schedule", "zigzag"], "'zigzag'", "unknown token schedule"),
    Case("sample", ["--method", "magic"], "'magic'", "unknown method"),
    Case("sample", ["--colour", "red"], "--colour", "unknown flag"),
    Case("sample", ["--out", "{ws}/previous.png"], "previous.png", "existing image without --force"),
    Case("sample", ["--out", "{ws}/folder"], "folder", "output is an existing folder"),
    Case("sample", ["--out", "{ws}/out.xyz"], "'.xyz'", "unknown image extension"),
    Case("sample", ["--out", "{ws}/a_file/out.png"], "a_file", "output folder is a file"),
    Case("sample", ["--out", "{readonly}/out.png"], "out.png", "read-only folder"),
    Case("sample", ["--out", "{readonly}/missing/out.png"], "missing", "missing folder inside a read-only one"),
    Case("sample", ["--generator", "nope"], "'nope'", "unknown generator"),
    Case("sample", ["--generator", "{ws}/nan_generator.safetensors"], "nan_generator.safetensors",
         "generator weights holding NaN"),
    Case("sample", ["--budget", "6", "--shortcut", "{ws}/nan_shortcut.safetensors"], "nan_shortcut.safetensors",
         "shortcut weights holding NaN"),
    Case("sample", ["--budget", "6", "--shortcut", "{ws}/width64.safetensors"], "size 64",
         "shortcut weights of another feature size"),
    Case("sample", ["--budget", "6", "--shortcut", "{ws}/missing.safetensors"], "missing.safetensors",
         "shortcut file missing"),
    Case("sample", ["--preset", "nope"], "'nope'", "unknown preset"),
    Case("sample", ["--full-step-rule", "searched", "--steps", "12", "--budget", "4"], "not 12",
         "searched schedule for a step count without a measured table"),
    # --------------------------------------------------------------------------------------------- convert
    Case("convert", ["{ws}/missing.pth", "{ws}/x.safetensors"], "missing.pth", "source missing"),
    Case("convert", ["{upstream}/maskgit_shortcut.pth", "{ws}/x.pt"], "'.pt'", "destination not safetensors"),
    Case("convert", ["{upstream}/maskgit_shortcut.pth", "{ws}/weights.safetensors"], "weights.safetensors",
         "existing destination without --force"),
    Case("convert", ["{upstream}/maskgit_shortcut.pth", "{ws}/x.safetensors", "--heads", "0"], "'0'",
         "zero attention heads"),
    # --------------------------------------------------------------------------------------------- bench
    Case("bench", ["--budgets", "a"], "'a'", "budgets are not numbers"),
    Case("bench", ["--steps", "16", "--budgets", "2,20"], "20", "budget above steps"),
    Case("bench", ["--budgets", "0"], "0", "budget 0"),
    Case("bench", ["--images", "0"], "'0'", "no images"),
    Case("bench", ["--repeats", "-1"], "'-1'", "negative repeats"),
    Case("bench", ["--variants", "shortcut,magic"], "'magic'", "unknown variant"),
    Case("bench", ["--out", "{ws}/bench"], "results.json", "previous results without --force"),
    Case("bench", ["--seed", str(2 ** 64 - 1)], str(2 ** 64 - 1), "seed + batch beyond 64 bits"),
    Case("bench", ["--device", "cuda:99"], "cuda:99", "a device this machine does not have"),
    Case("bench", ["--batch", "100000000"], "100000000", "batch too large for the free memory"),
    # --------------------------------------------------------------------------------------------- record
    Case("record", ["--out", "{ws}/new_data", "--classes", "banana"], "'banana'", "unknown class name"),
    Case("record", ["--out", "{ws}/new_data", "--classes", ""], "''", "empty class list"),
    Case("record", ["--out", "{ws}/new_data", "--batch", "0"], "'0'", "no images per batch"),
    Case("record", ["--out", "{ws}/new_data", "--count", "0"], "'0'", "no images"),
    Case("record", ["--out", "{ws}/new_data", "--cfg", "nan"], "'nan'", "NaN guidance"),
    Case("record", ["--out", "{ws}/new_data", "--seed", BIG_SEED], BIG_SEED, "seed beyond 64 bits"),
    Case("record", ["--out", "{ws}/new_data", "--count", "40", "--batch", "2", "--seed", str(2 ** 64 - 5)],
         str(2 ** 64 - 5), "seed + batch index beyond 64 bits"),
    Case("record", ["--out", "{ws}/new_data", "--prompt", "a red cat"], "'a red cat'",
         "prompt to a class-conditional generator"),
    Case("record", ["--out", "{ws}/new_data", "--width", "64"], "--width", "size for a fixed-size generator"),
    Case("record", ["--out", "{ws}/new_data", "--batch", "100000000"], "100000000", "batch too large for memory"),
    Case("record", ["--out", "{ws}/new_data", "--rank", "2", "--world-size", "2"], "--rank 2", "rank beyond world"),
    Case("record", ["--out", "{ws}/new_data", "--device", "cuda:99"], "cuda:99", "a device this machine lacks"),
    Case("record", ["--out", "{ws}/new_data", "--storage", "fp8"], "'fp8'", "unknown storage dtype"),
    Case("record", ["--out", "{ws}/a_file"], "a_file", "dataset folder is a file"),
    Case("record", ["--out", "{data}", "--batch", "4"], "batch 2", "resume with another --batch"),
    Case("record", ["--out", "{data}", "--seed", "7"], "seed 1000", "resume with another --seed"),
    Case("record", ["--out", "{data}", "--steps", "5"], "steps 3", "resume with other steps"),
    Case("record", ["--out", "{data}", "--cfg", "1.5"], "cfg_scale 2.0", "resume with another guidance"),
    Case("record", ["--out", "{data}", "--classes", "3,4"], "conditions", "resume with other classes"),
    Case("record", ["--out", "{data}", "--storage", "fp32"], "fp16", "resume with another storage dtype"),
    Case("record", ["--out", "{data}", "--count", "3"], "--count", "resume with a count that resizes a batch"),
    # --------------------------------------------------------------------------------------------- fit
    Case("fit", ["--data", "{data}", "--out", "{ws}/new.safetensors", "--lr", "-1"], "'-1'", "negative learning rate"),
    Case("fit", ["--data", "{data}", "--out", "{ws}/new.safetensors", "--lr", "nan"], "'nan'", "NaN learning rate"),
    Case("fit", ["--data", "{data}", "--out", "{ws}/new.safetensors", "--ema", "2"], "'2'", "EMA decay above 1"),
    Case("fit", ["--data", "{data}", "--out", "{ws}/new.safetensors", "--ema", "1"], "'1'", "EMA decay 1 (frozen)"),
    Case("fit", ["--data", "{data}", "--out", "{ws}/new.safetensors", "--batch-size", "0"], "'0'", "empty batches"),
    Case("fit", ["--data", "{data}", "--out", "{ws}/new.safetensors", "--val-fraction", "1"], "'1'",
         "nothing left to train on"),
    Case("fit", ["--data", "{data}", "--out", "{ws}/new.safetensors", "--steps", "0"], "'0'", "no training steps"),
    Case("fit", ["--data", "{data}", "--out", "{ws}/new.safetensors", "--kl-temperature", "0"], "'0'",
         "KL temperature 0"),
    Case("fit", ["--data", "{data}", "--out", "{ws}/new.safetensors", "--mse-weight", "0"], "both 0",
         "no loss term left"),
    Case("fit", ["--data", "{data}", "--out", "{ws}/new.safetensors", "--bottleneck-ratio", "0"], "'0'",
         "bottleneck ratio 0"),
    Case("fit", ["--data", "{data}", "--out", "{ws}/new.safetensors", "--heads", "5"], "num_heads (5)",
         "heads that do not divide the width"),
    Case("fit", ["--data", "{data}", "--out", "{ws}/new.safetensors", "--device", "cuda:99"], "cuda:99",
         "a device this machine does not have"),
    Case("fit", ["--data", "{data}", "--out", "{ws}/weights.safetensors"], "weights.safetensors",
         "existing weights without --force or --resume"),
    Case("fit", ["--data", "{data}", "--out", "{ws}/folder"], "folder", "output is a folder"),
    Case("fit", ["--data", "{data}", "--out", "{ws}/new.pt"], "'.pt'", "output not safetensors"),
    Case("fit", ["--data", "{data}", "--out", "{ws}/new.safetensors", "--checkpoint", "{ws}/old.ckpt"], "old.ckpt",
         "existing checkpoint without --resume or --force"),
    Case("fit", ["--data", "{ws}/no_data", "--out", "{ws}/new.safetensors"], "no_data", "dataset folder missing"),
    Case("fit", ["--data", "{data}", "--online", "--out", "{ws}/new.safetensors"], "--online", "two data sources"),
    Case("fit", ["--data", "{nan_data}", "--out", "{ws}/new.safetensors", "--steps", "3", "--no-progress"],
         "shard-r00-000000.safetensors", "recorded features holding NaN (names shard and step)"),
    # --------------------------------------------------------------------------------------------- search_schedule
    Case("search", ["--shortcut", "{ws}/x.pth", "--data", "{data}"], "x.pth", "weights that are not safetensors"),
    Case("search", ["--shortcut", "{ws}/weights.safetensors", "--data", "{ws}/no_data"], "no_data", "data missing"),
    Case("search", ["--shortcut", "{ws}/weights.safetensors", "--data", "{data}", "--out",
                    "{ws}/nan_shortcut.safetensors"], "nan_shortcut.safetensors", "existing other output without --force"),
    Case("search", ["--shortcut", "demo", "--data", "{data}", "--batch-size", "0"], "'0'", "empty batches"),
    # --------------------------------------------------------------------------------------------- demo training
    Case("train_demo", ["--steps", "0"], "'0'", "no transformer steps"),
    Case("train_demo", ["--seed", "-1"], "'-1'", "negative seed"),
    Case("train_demo", ["--out", "{ws}/new.pt"], "'.pt'", "output not safetensors"),
    Case("train_demo", ["--out", "{ws}/weights.safetensors"], "weights.safetensors", "existing output without --force"),
    Case("train_classifier", ["--vq", "{ws}/no_vq.safetensors", "--out", "{ws}/new.safetensors"], "no_vq.safetensors",
         "VQ file missing"),
    Case("train_classifier", ["--blur-prob", "2"], "'2'", "probability above 1"),
    Case("train_classifier", ["--out", "{ws}/weights.safetensors"], "weights.safetensors",
         "existing output without --force"),
    # --------------------------------------------------------------------------------------------- benchmarks/
    Case("benchmark", ["fit_throughput", "--steps", "0"], "'0'", "no training steps to time"),
    Case("benchmark", ["fit_throughput", "--json", "{ws}/weights.safetensors"], "'.safetensors'",
         "results file that is not .json"),
    Case("benchmark", ["fit_throughput", "--json", "{ws}/folder"], "folder", "results path is a folder"),
    Case("benchmark", ["maskgit_fullsize", "--new-tokens", "5000"], "5000", "more new tokens than the 1024 of the grid"),
    Case("benchmark", ["maskgit_fullsize", "--repeats", "0"], "'0'", "nothing timed"),
    Case("benchmark", ["meissonic_estimates", "--size", "1000"], "1000", "size not a multiple of 32"),
    Case("benchmark", ["meissonic_estimates", "--budget", "99"], "99", "budget above the steps"),
    Case("benchmark", ["meissonic_estimates", "--rate", "nan"], "'nan'", "NaN throughput"),
]


@api("sample(demo, labels [0], SamplerSettings(cfg_scale=nan))")
def _api_cfg_nan(ws):
    sample(ws.demo, Condition(labels=[0]), SamplerSettings(cfg_scale=NAN))


@api("sample(demo, labels [0], SamplerSettings(r_temp=inf))")
def _api_r_temp_inf(ws):
    sample(ws.demo, Condition(labels=[0]), SamplerSettings(r_temp=float("inf")))


@api("sample(demo, labels [0], SamplerSettings(seed=2**64))")
def _api_seed(ws):
    sample(ws.demo, Condition(labels=[0]), SamplerSettings(seed=2 ** 64))


@api("sample(demo, labels [0], SamplerSettings(steps=1.5))")
def _api_steps_float(ws):
    sample(ws.demo, Condition(labels=[0]), SamplerSettings(steps=1.5))


@api("sample(demo, prompts ['a cat'], ...) on a class-conditional generator")
def _api_prompt(ws):
    sample(ws.demo, Condition(prompts=["a cat"]), SamplerSettings(steps=4))


@api("sample(demo, labels [], ...)")
def _api_no_labels(ws):
    sample(ws.demo, Condition(labels=[]), SamplerSettings(steps=4))


@api("sample(demo, ..., budget 4, shortcut=weights of feature size 64)")
def _api_other_size(ws):
    sample(ws.demo, Condition(labels=[0]), SamplerSettings(steps=8, budget=4), shortcut=ws.width64)


@api("load_shortcut(weights holding NaN)")
def _api_nan_shortcut(ws):
    load_shortcut(ws.root / "nan_shortcut.safetensors", ws.demo)


@api("load_generator(generator weights holding NaN)")
def _api_nan_generator(ws):
    load_generator(str(ws.root / "nan_generator.safetensors"), device="cpu")


@api("load_generator('demo', device='cuda:99')")
def _api_device(ws):
    load_generator("demo", device="cuda:99")


@api("FitSettings(ema=2).validate()")
def _api_ema(ws):
    FitSettings(ema=2).validate()


@api("FitSettings(lr=nan).validate()")
def _api_lr(ws):
    FitSettings(lr=NAN).validate()


@api("record(demo, 20 batches, SamplerSettings(seed=2**64 - 5))")
def _api_record_seed(ws):
    record(ws.demo, ws.root / "api_data", condition_schedule(ws.demo, 40, 2), SamplerSettings(seed=2 ** 64 - 5))


@api("condition_schedule(demo, 4, 2, classes='banana')")
def _api_classes(ws):
    condition_schedule(ws.demo, 4, 2, "banana")


CASES += [
    Case("api", _api_cfg_nan, "nan", "NaN guidance"),
    Case("api", _api_r_temp_inf, "inf", "infinite confidence noise"),
    Case("api", _api_seed, str(2 ** 64), "seed beyond 64 bits"),
    Case("api", _api_steps_float, "1.5", "fractional steps"),
    Case("api", _api_prompt, "'a cat'", "prompt to a class-conditional generator"),
    Case("api", _api_no_labels, "at least one", "empty batch"),
    Case("api", _api_other_size, "size 64", "shortcut of another feature size"),
    Case("api", _api_nan_shortcut, "nan_shortcut.safetensors", "shortcut weights holding NaN"),
    Case("api", _api_nan_generator, "nan_generator.safetensors", "generator weights holding NaN"),
    Case("api", _api_device, "cuda:99", "a device this machine does not have"),
    Case("api", _api_ema, "2", "EMA decay above 1"),
    Case("api", _api_lr, "nan", "NaN learning rate"),
    Case("api", _api_record_seed, str(2 ** 64 - 5), "seed + batch index beyond 64 bits"),
    Case("api", _api_classes, "'banana'", "unknown class name"),
]


# ------------------------------------------------------------------------------------------------ the workspace

def _module(path: Path):
    """A script loaded as a module (registered, so its dataclasses resolve; its folder on the path, so its
    sibling imports do)."""
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(f"_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _script(name: str):
    return _module(ROOT / "train" / f"{name}.py")


def _benchmark(name: str):
    return _module(ROOT / "benchmarks" / f"{name}.py")


def read_only_folder(base: Path) -> Path:
    """A folder nobody here can write into: chmod 555 for a normal user; root ignores modes, so it gets /sys."""
    if os.geteuid() == 0:
        return Path("/sys")
    folder = base / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


def _poison_shard(path: Path) -> None:
    """Overwrite the first value of every step of every trajectory in a shard with an fp16 NaN, in place (same
    size, readable header): what bit rot on disk does. Whichever pair training or validation draws from it meets
    the NaN."""
    with open(path, "r+b") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
        for key, entry in header.items():
            if not key.endswith(".features"):
                continue
            assert entry["dtype"] == "F16"
            steps, per_step = entry["shape"][0], entry["shape"][1] * entry["shape"][2] * 2
            for step in range(steps):
                handle.seek(8 + length + entry["data_offsets"][0] + step * per_step)
                handle.write(struct.pack("<e", NAN))


# What every case of an entry point starts from: outputs inside the workspace, the recording's own settings.
BASE_ARGS = {
    "sample": ["--out", "{ws}/new.png"],
    "bench": ["--out", "{ws}/new_bench"],
    "record": ["--generator", "demo", "--count", "4", "--batch", "2", "--steps", "3", "--no-disk-check"],
    "fit": ["--generator", "demo"],
}


@dataclass
class Workspace:
    root: Path
    demo: object
    width64: object
    data: Path
    readonly: Path
    scripts: dict

    def fill(self, args: list) -> list:
        values = {"ws": str(self.root), "data": str(self.data), "nan_data": str(self.root / "nan_data"),
                  "readonly": str(self.readonly), "upstream": str(UPSTREAM)}
        return [a.format(**values) for a in args]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    from conftest import tiny_generator, tiny_weights
    from PIL import Image

    root = tmp_path_factory.mktemp("bad_inputs")
    torch.set_num_threads(1)
    scripts = {name: _script(name) for name in ("record_trajectories", "fit_shortcut", "search_schedule",
                                                 "train_demo", "train_classifier")}
    demo = load_generator("demo", device="cpu")
    Image.new("RGB", (8, 8), (200, 30, 30)).save(root / "previous.png")
    shutil.copy(DEMO_SHORTCUT, root / "weights.safetensors")
    (root / "folder").mkdir()
    (root / "a_file").write_text("not a folder")
    (root / "old.ckpt").write_bytes(b"an earlier checkpoint")
    (root / "x.pth").write_bytes(b"not safetensors")
    (root / "bench").mkdir()
    for name in ("results.json", "table.md", "pareto.png"):
        (root / "bench" / name).write_text(f"earlier {name}")
    nan_shortcut = load_shortcut(DEMO_SHORTCUT, demo)
    with torch.no_grad():
        next(nan_shortcut.network.parameters()).view(-1)[0] = NAN
    save_shortcut(root / "nan_shortcut.safetensors", ShortcutWeights(nan_shortcut.network, demo.describe()))
    width64 = tiny_weights()
    save_shortcut(root / "width64.safetensors", width64)
    nan_generator = tiny_generator()
    with torch.no_grad():
        nan_generator.transformer.tok_emb.weight[0, 0] = NAN
    save_generator(root / "nan_generator.safetensors", nan_generator)
    data = root / "data"
    assert scripts["record_trajectories"].main(["--generator", "demo", "--count", "4", "--batch", "2", "--steps", "3",
                                                "--out", str(data), "--no-disk-check"]) == 0
    shutil.copytree(data, root / "nan_data")
    _poison_shard(root / "nan_data" / "shard-r00-000000.safetensors")
    return Workspace(root, demo, width64, data, read_only_folder(root), scripts)


def snapshot(root: Path) -> dict:
    """Every file under ``root``: size and sha1 (mtime too: a rewrite with the same bytes is still a rewrite)."""
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            stat = path.stat()
            files[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns,
                                                   hashlib.sha1(path.read_bytes()).hexdigest())
    return files


def run_case(case: Case, ws: Workspace) -> tuple[Optional[int], str]:
    """(exit status or None for API calls, message) of one case."""
    if case.entry == "api":
        with pytest.raises(ShortcutError) as raised:
            case.args(ws)
        return None, str(raised.value)
    from shortcut_core import cli
    argv = ws.fill(BASE_ARGS.get(case.entry, []) + case.args)  # a flag given twice: the case's value wins
    if case.entry in ("sample", "convert", "bench"):
        return cli.main([case.entry, *argv]), ""
    if case.entry == "benchmark":
        return _benchmark(argv[0]).main(argv[1:]), ""
    script = {"record": "record_trajectories", "fit": "fit_shortcut", "search": "search_schedule"}.get(case.entry,
                                                                                                       case.entry)
    return ws.scripts[script].main(argv), ""


@pytest.mark.parametrize("case", CASES, ids=[f"{c.entry}-{i:03d}" for i, c in enumerate(CASES)])
def test_bad_input_is_refused_in_one_line_and_nothing_is_lost(case, ws, capsys):
    before = snapshot(ws.root)
    status, message = run_case(case, ws)
    captured = capsys.readouterr()
    if status is not None:
        assert status == 2, f"exit status {status}; stderr: {captured.err[-2000:]}"
        errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, captured.err[-2000:]
        message = errors[0]
        assert "Traceback" not in captured.err and "Traceback" not in captured.out
    assert case.names in message, message
    assert snapshot(ws.root) == before


# ------------------------------------------------------------------------------------------------ end to end

def _run(args: list, env: Optional[dict] = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, **kwargs)


def test_command_lines_exit_2_in_one_line_and_debug_shows_the_traceback(tmp_path, monkeypatch):
    runs = {
        "sample": _run(["-m", "shortcut_core", "sample", "--cfg", "nan", "--out", str(tmp_path / "x.png")]),
        "fit": _run([str(ROOT / "train" / "fit_shortcut.py"), "--data", str(tmp_path), "--out",
                     str(tmp_path / "w.safetensors"), "--lr", "-1"]),
    }
    for name, run in runs.items():
        assert run.returncode == 2, (name, run.stderr)
        assert run.stderr.strip().count("\n") == 0 and run.stderr.startswith("error: "), (name, run.stderr)
        assert "'nan'" in run.stderr or "'-1'" in run.stderr
    assert not list(tmp_path.iterdir())
    from shortcut_core import cli
    monkeypatch.setenv("SHORTCUT_DEBUG", "1")  # the traceback is shown: the error propagates
    with pytest.raises(ShortcutError, match="'nan'"):
        cli.main(["sample", "--cfg", "nan"])
    monkeypatch.delenv("SHORTCUT_DEBUG")
    with pytest.raises(ShortcutError, match="'nan'"):
        cli.main(["--debug", "sample", "--cfg", "nan"])


def test_one_step_decodes_every_token(ws, tmp_path):
    """--steps 1 used to end in 'cannot convert float NaN to integer'."""
    from shortcut_core import cli
    out = tmp_path / "one.png"
    assert cli.main(["sample", "--steps", "1", "--out", str(out), "--json"]) == 0
    result = sample(ws.demo, Condition(labels=[0, 1]), SamplerSettings(steps=1))
    assert (result.decode_order == 0).all() and out.stat().st_size > 0


KILL_HOOK = """
import os, signal, sys
sys.path.insert(0, {root!r})
def write_part_then_die(target):
    with open(target, "wb") as handle:
        handle.write(b"partial")
        handle.flush()
    os.kill(os.getpid(), signal.SIGKILL)
{patch}
sys.argv = ["python -m shortcut_core", *sys.argv[1:]]
from shortcut_core.cli import main
main()
"""


def _killed_while_writing(patch: str, args: list) -> None:
    code = KILL_HOOK.format(root=str(ROOT), patch=patch)
    run = _run(["-c", code, *args])
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]


def test_sigkill_while_writing_an_image_keeps_the_previous_one(tmp_path):
    from shortcut_core import cli
    out = tmp_path / "out.png"
    args = ["sample", "--steps", "2", "--out", str(out)]
    assert cli.main(args) == 0
    previous = out.read_bytes()
    patch = "import PIL.Image\nPIL.Image.Image.save = lambda self, fp, *a, **k: write_part_then_die(fp)"
    _killed_while_writing(patch, [*args, "--seed", "1", "--force"])
    assert out.read_bytes() == previous
    assert len(list(tmp_path.glob(".out.png.*.tmp"))) == 1  # the killed run's partial file, beside it
    assert cli.main([*args, "--seed", "1", "--force"]) == 0
    assert out.read_bytes() != previous and not list(tmp_path.glob(".out.png.*"))  # replaced, orphan removed


def test_sigkill_while_writing_bench_results_keeps_every_file_whole(tmp_path):
    from shortcut_core import cli
    out = tmp_path / "bench"
    args = ["bench", "--steps", "4", "--budgets", "2", "--images", "2", "--batch", "1", "--quality-batch", "2",
            "--repeats", "1", "--warmup", "0", "--variants", "reuse", "--out", str(out)]
    assert cli.main(args) == 0
    previous = {name: (out / name).read_bytes() for name in ("results.json", "table.md", "pareto.png")}
    patch = ("import matplotlib.figure\n"
             "matplotlib.figure.Figure.savefig = lambda self, fname, *a, **k: write_part_then_die(fname)")
    _killed_while_writing(patch, [*args, "--seed", "5", "--force"])
    assert (out / "pareto.png").read_bytes() == previous["pareto.png"]  # killed while writing it: untouched
    report = json.loads((out / "results.json").read_text())  # written before the kill: whole, the new run's
    assert report["seed"] == 5 and (out / "table.md").read_text().count("\n") == len(report["rows"]) + 2


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path):
    from shortcut_core.fitting import save_checkpoint
    checkpoint = tmp_path / "fit.ckpt"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = tmp_path / f".fit.ckpt.{int(dead.stdout)}.abc123.tmp"
    orphan.write_bytes(b"half a checkpoint")
    alive = tmp_path / f".fit.ckpt.{os.getppid()}.def456.tmp"  # a live writer's file is never touched
    alive.write_bytes(b"being written")
    save_checkpoint(checkpoint, {"step": 1})
    assert checkpoint.exists() and not orphan.exists() and alive.exists()


# ------------------------------------------------------------------------------------------------ the table

def render_table() -> str:
    lines = ["# Bad inputs refused before any work starts", "",
             "Generated from `CASES` in `tests/test_bad_inputs.py` (`python tests/test_bad_inputs.py` rewrites this "
             "file; a test checks it is current). Every row is run by that test: the command exits with status 2 "
             "(the API raises `ShortcutError`) after printing one line that names the value, no traceback is "
             "printed (`--debug` or `SHORTCUT_DEBUG=1` shows it), and every file present before (a previous image, "
             "weights, a recorded dataset) is unchanged.", "",
             "Entry points: `sample`, `convert`, `bench` = `python -m shortcut_core <command>`; `record`, `fit`, "
             "`search` = `train/record_trajectories.py`, `train/fit_shortcut.py`, `train/search_schedule.py`; `train_demo`, `train_classifier` = the demo's `train/` scripts; "
             "`benchmark` = `python benchmarks/<script>.py` (the script named first); `api` = the Python functions. `{ws}` is a folder holding `previous.png`, `weights.safetensors` (the "
             "demo shortcut), `folder/`, `a_file`, `old.ckpt` and `bench/` with earlier results; `{data}` a dataset "
             "recorded with `--count 4 --batch 2 --steps 3 --seed 1000` (storage fp16, guidance 2.0); `{nan_data}` "
             "its copy with one feature value flipped to NaN on disk; `{readonly}` a folder nobody may write into.",
             "", f"{len(CASES)} inputs.", "",
             "| # | entry | input | what is wrong | the message names |", "|---|---|---|---|---|"]
    for i, case in enumerate(CASES, 1):
        shown = case.shown.replace("|", "\\|")
        lines.append(f"| {i} | {case.entry} | `{shown}` | {case.why} | `{case.names}` |")
    return "\n".join(lines) + "\n"


def test_bad_inputs_table_is_up_to_date():
    assert TABLE.read_text() == render_table(), "docs/bad_inputs.md is stale: run python tests/test_bad_inputs.py"


if __name__ == "__main__":
    TABLE.write_text(render_table())
    print(f"wrote {TABLE} ({len(CASES)} inputs)")
