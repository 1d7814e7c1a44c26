"""The source of the bundled templates in ``example_workflows/``: each graph, its note and the files it needs.

The live test builds every template in the real front end from these specs and checks the committed JSON is what
the front end saves for it (``MIGM_REGENERATE_WORKFLOWS=1`` rewrites the files). File names are the titles the
template browser shows, numbered in the order to open them. Files to download are listed as ComfyUI's
missing-models dialog reads them: ``properties.models`` on the node whose widget names the file, and the
workflow's top-level ``models`` for files no widget names (the VQGAN beside the MaskGIT transformer, the config
file that marks a Hugging Face folder as downloaded).
"""
from __future__ import annotations

CYCLE = "(cycle through all classes)"

DEMO_FIRST = "01 Start here - demo shapes with the shortcut (CPU, nothing to download)"
DEMO_VS = "02 Demo - vanilla vs shortcut, same seed"
DEMO_RECORD = "03 Demo - record trajectories for fitting"
MASKGIT = "04 MaskGIT-512 - ImageNet class to image, the paper's preset"
DIMOO = "05 Lumina-DiMOO - text to image with DiMOO-Shortcut"
AMUSED_RECORD = "06 aMUSEd step 1 - record trajectories"
AMUSED_SAMPLE = "07 aMUSEd step 3 - text to image with your fitted shortcut"
MEISSONIC_RECORD = "08 Meissonic step 1 - record trajectories"
MEISSONIC_SAMPLE = "09 Meissonic step 3 - vanilla vs your fitted shortcut"

MASKGIT_TRANSFORMER = "pretrained_maskgit/MaskGIT/MaskGIT_ImageNet_512.pth"
MASKGIT_VQGAN = "pretrained_maskgit/VQGAN/last.ckpt"
MASKGIT_SHORTCUT = "maskgit-shortcut.pth"
DIMOO_FOLDER = "Lumina-DiMOO"
DIMOO_SHORTCUT = "dimoo-shortcut.pth"
AMUSED_FOLDER = "amused-256"
AMUSED_SHORTCUT = "amused-256-shortcut.safetensors"
AMUSED_DATASET = "amused256_trajectories"
MEISSONIC_FOLDER = "Meissonic"
MEISSONIC_SHORTCUT = "meissonic-shortcut.safetensors"
MEISSONIC_DATASET = "meissonic_trajectories"

HF = "https://huggingface.co"
MASKGIT_REPO = f"{HF}/llvictorll/Maskgit-pytorch/resolve/main"
SHORTCUT_REPO = f"{HF}/Kaiwen-Zhu/MIGM-Shortcut/resolve/main"


def model(name: str, url: str, directory: str) -> dict:
    return {"name": name, "url": url, "directory": directory}


NOTE_DEMO = """## Start here: the MIGM-Shortcut demo

Everything here ships with the pack and runs on a CPU in seconds.

* **Load Masked Generator** `demo`: a small MaskGIT-style generator (10 shape classes, 64x64 px).
* **Load Shortcut Weights** `demo`: the shortcut network fitted for it.
* **Masked Class Label**: what to draw. The cycle entry gives image i class i, so 10 images draw every shape once.
* **Shortcut Sampler**: `budget` of the `steps` steps run the base model (orange in the strip under the widgets),
  the others run the shortcut (blue). After a run the strip shows the measured time and the speedup.

Next: open *02 Demo - vanilla vs shortcut* to compare with the vanilla sampler."""

NOTE_VS = """## Vanilla vs shortcut, same seed

Both samplers draw the same 5 classes with the same seed.

* **Left**: no shortcut connected, so all 16 steps run the base model (the vanilla sampler).
* **Right**: the demo shortcut weights; 6 of the 16 steps run the base model.

Queue, then compare the two images and the times the strips report. Lower `budget` on the right sampler to trade
faithfulness for speed."""

NOTE_RECORD = """## Record trajectories (training data for shortcut weights)

**Record Trajectories** runs the sampler with every step on the base model and stores each step's features in
`ComfyUI/output/migm_demo_trajectories/` (safetensors shards and an index). Queue again with a larger
`batches` value to add batches: the recorded ones are kept.

Fit shortcut weights on the folder from a terminal with `train/fit_shortcut.py` (see the pack's
docs/recording-and-fitting.md), then put the result in `ComfyUI/models/shortcut/`."""

NOTE_MASKGIT = """## MaskGIT-512 with the official MaskGIT-Shortcut weights

ComfyUI lists the files to download when this template opens. Put them here (docs/maskgit.md):

* `models/masked_generators/pretrained_maskgit/MaskGIT/MaskGIT_ImageNet_512.pth` and
  `models/masked_generators/pretrained_maskgit/VQGAN/last.ckpt` (HF `llvictorll/Maskgit-pytorch`)
* `models/shortcut/maskgit-shortcut.pth` (HF `Kaiwen-Zhu/MIGM-Shortcut`, folder `MaskGIT-Shortcut`)

The Advanced sampler's preset `maskgit512-N15-B7` filled its widgets with the paper's run: 15 steps, 7 on the base
model, cfg 2.8 with ramp, r_temp 7, arccos (paper: 1.94x, FID 8.90 against 7.60 for all 15 steps).
`class_name`: any ImageNet class."""

NOTE_DIMOO = """## Lumina-DiMOO text to image with DiMOO-Shortcut

ComfyUI lists the files to download when this template opens (docs/lumina-dimoo.md):

* `models/masked_generators/Lumina-DiMOO/`: the whole HF repository `Alpha-VLLM/Lumina-DiMOO`, for example
  with `hf download Alpha-VLLM/Lumina-DiMOO --local-dir ComfyUI/models/masked_generators/Lumina-DiMOO`
* `models/shortcut/dimoo-shortcut.pth` (HF `Kaiwen-Zhu/MIGM-Shortcut`, folder `DiMOO-Shortcut`)

The Shortcut Sampler uses DiMOO's own temperature and schedule; 64 steps with budget 14 is the paper's 4.0x at
almost unchanged ImageReward (budget 9: 5.8x). About 16 GB of weights in bf16: a 24 GB GPU is the practical
minimum."""

NOTE_AMUSED_RECORD = """## aMUSEd, step 1 of 3: record trajectories

No shortcut weights are published for aMUSEd: record, fit, then sample (docs/amused.md).

* `models/masked_generators/amused-256/`: the whole HF repository `amused/amused-256`.
* The recorder runs all 12 steps on the base model and writes `output/amused256_trajectories/`: 2 trajectories
  (cond, uncond) of 4.7 MB (fp16) per image. One prompt per run: change it, raise `batches`, queue again.

Step 2, fit, in a terminal in the pack's folder with ComfyUI's python:

```
python train/fit_shortcut.py --data ../../output/amused256_trajectories
    --generator ../../models/masked_generators/amused-256
    --out ../../models/shortcut/amused-256-shortcut.safetensors
```

Step 3: press R, then open *07 aMUSEd step 3*."""

NOTE_AMUSED_SAMPLE = """## aMUSEd, step 3 of 3: sample with your fitted shortcut

* `models/masked_generators/amused-256/`: the HF repository `amused/amused-256`.
* `models/shortcut/amused-256-shortcut.safetensors`: written in step 2 (template *06*). Load Shortcut Weights
  refuses weights fitted for another model.

The Shortcut Sampler uses aMUSEd's own schedule and temperature; cfg 9 is the pipeline's guidance 10. 12 steps,
6 on the base model, 256 x 256 px (amused-512: 512, multiples of 32)."""

NOTE_MEISSONIC_RECORD = """## Meissonic, step 1 of 3: record trajectories

No shortcut weights are published for Meissonic: record, fit, then sample (docs/meissonic.md).

* `models/masked_generators/Meissonic/`: the whole HF repository `MeissonFlow/Meissonic`, listed as `Meissonic/`.
* Record Trajectories runs all 64 steps on the base model (the official settings: guidance 9 = cfg 8) and writes
  `output/meissonic_trajectories/`: 2 trajectories (cond, uncond) of 0.54 GB (fp16) per image, 4.3 GB here.
* For many prompts, fit online instead (nothing stored): `train/fit_shortcut.py --online --prompts FILE`.

Step 2, fit, in a terminal in the pack's folder with ComfyUI's python:

```
python train/fit_shortcut.py --data ../../output/meissonic_trajectories
    --generator ../../models/masked_generators/Meissonic
    --out ../../models/shortcut/meissonic-shortcut.safetensors
```

Step 3: press R, then open *09 Meissonic step 3*."""

NOTE_MEISSONIC_SAMPLE = """## Meissonic: vanilla against your fitted shortcut

* `models/masked_generators/Meissonic/`: the HF repository `MeissonFlow/Meissonic` (about 3.3 GB in bf16; an
  8 GB GPU should do).
* `models/shortcut/meissonic-shortcut.safetensors`: written in step 2 (template *08*). Load Shortcut Weights
  refuses weights fitted for another model.

Both Shortcut Samplers use Meissonic's own sampler (its draws and re-masking; cfg 8 is guidance 9): with the same
seed the vanilla one gives the official pipeline's image. Left: all 64 steps on the base model; right: 16 of 64.
Width and height: multiples of 32 px, 1024 by default."""

MEISSONIC_PROMPT = {"prompt": "a red fox sitting in a snowy forest at golden hour, detailed fur",
                    "negative_prompt": "worst quality, low quality, blurry, watermark, text"}

DEMO_GENERATOR = {"generator_name": "demo", "device": "auto", "dtype": "auto"}
PROMPT = {"prompt": "a photo of a corgi on the beach, sunny day", "negative_prompt": "blurry, low quality"}
AMUSED_SETTINGS = {"preset": "generator defaults", "steps": 12, "cfg": 9.0, "cfg_ramp": False, "sm_temp": 1.0,
                   "r_temp": 2.0, "schedule": "amused_cosine", "control_after_generate": "fixed"}


def node(key, type_, pos, widgets=None, size=None, title=None, models=None) -> dict:
    spec = {"key": key, "type": type_, "pos": pos, "widgets": widgets or {}}
    if size:
        spec["size"] = size
    if title:
        spec["title"] = title
    if models:
        spec["models"] = models
    return spec


def simple_sampler(key, pos, steps, budget, cfg, seed, batch, title=None) -> dict:
    return node(key, "MIGMShortcutSampler", pos, {"seed": seed, "control_after_generate": "fixed", "steps": steps,
                                                  "budget": budget, "cfg": cfg, "batch_size": batch}, title=title)


def loaders(generator: dict, shortcut: str, y: int, generator_models=None, shortcut_models=None) -> list:
    return [node("gen", "MIGMLoadMaskedGenerator", [40, y], generator, size=[400, 110], models=generator_models),
            node("sc", "MIGMLoadShortcutWeights", [40, y + 150], {"shortcut_name": shortcut}, size=[400, 80],
                 models=shortcut_models)]


SAMPLE_LINKS = [["gen", 0, "sc", "generator"], ["gen", 0, "sampler", "generator"], ["sc", 0, "sampler", "shortcut"],
                ["cond", 0, "sampler", "conditioning"], ["sampler", 0, "save", "images"]]

TEMPLATES = {
    DEMO_FIRST: {
        "nodes": [node("note", "MarkdownNote", [40, 40], size=[440, 330]),
                  *loaders(DEMO_GENERATOR, "demo", 420),
                  node("cond", "MIGMClassLabel", [40, 720], {"class_name": CYCLE}, size=[360, 80]),
                  simple_sampler("sampler", [520, 40], 16, 6, 2.0, 42, 10),
                  node("save", "SaveImage", [1000, 40], {"filename_prefix": "migm_demo_shortcut"}, [440, 440])],
        "links": SAMPLE_LINKS + [["gen", 0, "cond", "generator"]],
        "note": NOTE_DEMO},
    DEMO_VS: {
        "nodes": [node("note", "MarkdownNote", [40, 40], size=[440, 250]),
                  *loaders(DEMO_GENERATOR, "demo", 340),
                  node("cond", "MIGMClassLabel", [40, 640], {"class_name": CYCLE}, size=[360, 80]),
                  simple_sampler("vanilla", [520, 40], 16, 16, 2.0, 7, 5, "Vanilla: 16 of 16 steps on the base model"),
                  simple_sampler("fast", [1000, 40], 16, 6, 2.0, 7, 5, "Shortcut: 6 of 16 steps on the base model"),
                  node("save_v", "SaveImage", [520, 560], {"filename_prefix": "migm_vanilla"}, [440, 300], "Vanilla"),
                  node("save_s", "SaveImage", [1000, 560], {"filename_prefix": "migm_shortcut"}, [440, 300],
                       "Shortcut")],
        "links": [["gen", 0, "sc", "generator"], ["gen", 0, "cond", "generator"], ["gen", 0, "vanilla", "generator"],
                  ["gen", 0, "fast", "generator"], ["cond", 0, "vanilla", "conditioning"],
                  ["cond", 0, "fast", "conditioning"], ["sc", 0, "fast", "shortcut"],
                  ["vanilla", 0, "save_v", "images"], ["fast", 0, "save_s", "images"]],
        "note": NOTE_VS},
    DEMO_RECORD: {
        "nodes": [node("note", "MarkdownNote", [40, 40], size=[440, 280]),
                  node("gen", "MIGMLoadMaskedGenerator", [40, 360], DEMO_GENERATOR, size=[400, 110]),
                  node("cond", "MIGMClassLabel", [40, 510], {"class_name": CYCLE}, size=[360, 80]),
                  node("rec", "MIGMRecordTrajectories", [520, 40],
                       {"dataset_name": "migm_demo_trajectories", "batches": 2, "storage": "fp16", "preset": "custom",
                        "seed": 0, "control_after_generate": "fixed", "steps": 16, "cfg": 2.0, "cfg_ramp": True,
                        "sm_temp": 1.0, "r_temp": 3.0, "schedule": "auto", "batch_size": 5})],
        "links": [["gen", 0, "cond", "generator"], ["gen", 0, "rec", "generator"], ["cond", 0, "rec", "conditioning"]],
        "note": NOTE_RECORD},
    MASKGIT: {
        "nodes": [node("note", "MarkdownNote", [40, 40], size=[440, 380]),
                  *loaders({"generator_name": MASKGIT_TRANSFORMER, "device": "auto", "dtype": "auto"},
                           MASKGIT_SHORTCUT, 460,
                           [model(MASKGIT_TRANSFORMER, f"{MASKGIT_REPO}/{MASKGIT_TRANSFORMER}", "masked_generators")],
                           [model(MASKGIT_SHORTCUT, f"{SHORTCUT_REPO}/MaskGIT-Shortcut/{MASKGIT_SHORTCUT}", "shortcut")]),
                  node("cond", "MIGMClassLabel", [40, 760], {"class_name": "tabby"}, size=[360, 80]),
                  node("sampler", "MIGMShortcutSamplerAdvanced", [520, 40],
                       {"preset": "maskgit512-N15-B7", "seed": 0, "control_after_generate": "fixed", "steps": 15,
                        "budget": 7, "full_step_rule": "official", "full_steps": "", "method": "shortcut",
                        "cfg": 2.8, "cfg_ramp": True, "sm_temp": 1.0, "r_temp": 7.0, "schedule": "arccos",
                        "batch_size": 4}),
                  node("save", "SaveImage", [1000, 40], {"filename_prefix": "migm_maskgit512"}, [440, 440])],
        "links": SAMPLE_LINKS + [["gen", 0, "cond", "generator"]],
        "models": [model(MASKGIT_VQGAN, f"{MASKGIT_REPO}/{MASKGIT_VQGAN}", "masked_generators")],
        "note": NOTE_MASKGIT},
    DIMOO: {
        "nodes": [node("note", "MarkdownNote", [40, 40], size=[440, 380]),
                  *loaders({"generator_name": DIMOO_FOLDER + "/", "device": "auto", "dtype": "auto"}, DIMOO_SHORTCUT,
                           460, None,
                           [model(DIMOO_SHORTCUT, f"{SHORTCUT_REPO}/DiMOO-Shortcut/{DIMOO_SHORTCUT}", "shortcut")]),
                  node("cond", "MIGMTextPrompt", [40, 760],
                       {"prompt": "A red fox sitting in a snowy forest at golden hour, detailed fur, soft light",
                        "negative_prompt": "blurry, low quality, distorted", "width": 1024, "height": 1024},
                       size=[440, 300]),
                  simple_sampler("sampler", [520, 40], 64, 14, 4.0, 0, 1),
                  node("save", "SaveImage", [1000, 40], {"filename_prefix": "migm_dimoo"}, [440, 440])],
        "links": SAMPLE_LINKS,
        "models": [model(f"{DIMOO_FOLDER}/config.json", f"{HF}/Alpha-VLLM/Lumina-DiMOO", "masked_generators")],
        "note": NOTE_DIMOO},
    AMUSED_RECORD: {
        "nodes": [node("note", "MarkdownNote", [40, 40], size=[440, 420]),
                  node("gen", "MIGMLoadMaskedGenerator", [40, 500],
                       {"generator_name": AMUSED_FOLDER + "/", "device": "auto", "dtype": "auto"}, size=[400, 110]),
                  node("cond", "MIGMTextPrompt", [40, 650], {**PROMPT, "width": 0, "height": 0}, size=[440, 300]),
                  node("rec", "MIGMRecordTrajectories", [520, 40],
                       {**AMUSED_SETTINGS, "dataset_name": AMUSED_DATASET, "batches": 4, "storage": "fp16",
                        "seed": 0, "batch_size": 8})],
        "links": [["gen", 0, "rec", "generator"], ["cond", 0, "rec", "conditioning"]],
        "models": [model(f"{AMUSED_FOLDER}/model_index.json", f"{HF}/amused/amused-256", "masked_generators")],
        "note": NOTE_AMUSED_RECORD},
    AMUSED_SAMPLE: {
        "nodes": [node("note", "MarkdownNote", [40, 40], size=[440, 330]),
                  *loaders({"generator_name": AMUSED_FOLDER + "/", "device": "auto", "dtype": "auto"},
                           AMUSED_SHORTCUT, 420),
                  node("cond", "MIGMTextPrompt", [40, 720], {**PROMPT, "width": 256, "height": 256}, size=[440, 300]),
                  simple_sampler("sampler", [520, 40], 12, 6, 9.0, 0, 2),
                  node("save", "SaveImage", [1000, 40], {"filename_prefix": "migm_amused"}, [440, 440])],
        "links": SAMPLE_LINKS,
        "models": [model(f"{AMUSED_FOLDER}/model_index.json", f"{HF}/amused/amused-256", "masked_generators")],
        "note": NOTE_AMUSED_SAMPLE},
    MEISSONIC_RECORD: {
        "nodes": [node("note", "MarkdownNote", [40, 40], size=[440, 460]),
                  node("gen", "MIGMLoadMaskedGenerator", [40, 540],
                       {"generator_name": MEISSONIC_FOLDER + "/", "device": "auto", "dtype": "auto"}, size=[400, 110]),
                  node("cond", "MIGMTextPrompt", [40, 690], {**MEISSONIC_PROMPT, "width": 0, "height": 0},
                       size=[440, 300]),
                  node("rec", "MIGMRecordTrajectories", [520, 40],
                       {"preset": "generator defaults", "steps": 64, "cfg": 8.0, "cfg_ramp": False, "sm_temp": 1.0,
                        "r_temp": 2.0, "schedule": "amused_cosine", "control_after_generate": "fixed",
                        "dataset_name": MEISSONIC_DATASET, "batches": 2, "storage": "fp16", "seed": 0,
                        "batch_size": 2})],
        "links": [["gen", 0, "rec", "generator"], ["cond", 0, "rec", "conditioning"]],
        "models": [model(f"{MEISSONIC_FOLDER}/model_index.json", f"{HF}/MeissonFlow/Meissonic", "masked_generators")],
        "note": NOTE_MEISSONIC_RECORD},
    MEISSONIC_SAMPLE: {
        "nodes": [node("note", "MarkdownNote", [40, 40], size=[440, 330]),
                  *loaders({"generator_name": MEISSONIC_FOLDER + "/", "device": "auto", "dtype": "auto"},
                           MEISSONIC_SHORTCUT, 420),
                  node("cond", "MIGMTextPrompt", [40, 720], {**MEISSONIC_PROMPT, "width": 1024, "height": 1024},
                       size=[440, 300]),
                  simple_sampler("vanilla", [520, 40], 64, 64, 8.0, 0, 1, "Vanilla: 64 of 64 steps on the base model"),
                  simple_sampler("sampler", [1000, 40], 64, 16, 8.0, 0, 1, "Shortcut: 16 of 64 steps on the base model"),
                  node("save_v", "SaveImage", [520, 560], {"filename_prefix": "migm_meissonic_vanilla"}, [440, 440],
                       "Vanilla"),
                  node("save", "SaveImage", [1000, 560], {"filename_prefix": "migm_meissonic_shortcut"}, [440, 440],
                       "Shortcut")],
        "links": [*SAMPLE_LINKS, ["gen", 0, "vanilla", "generator"], ["cond", 0, "vanilla", "conditioning"],
                  ["vanilla", 0, "save_v", "images"]],
        "models": [model(f"{MEISSONIC_FOLDER}/model_index.json", f"{HF}/MeissonFlow/Meissonic", "masked_generators")],
        "note": NOTE_MEISSONIC_SAMPLE},
}

# Templates whose thumbnail is a screenshot of the graph (the real models draw nothing on this machine); the demo
# templates' thumbnails are images the demo drew.
GRAPH_THUMBNAILS = {DEMO_RECORD, MASKGIT, DIMOO, AMUSED_RECORD, AMUSED_SAMPLE, MEISSONIC_RECORD, MEISSONIC_SAMPLE}
# Real-model templates: what each needs that only the live test's tiny stand-ins provide.
NEEDS_DIFFUSERS = {DIMOO, AMUSED_RECORD, AMUSED_SAMPLE, MEISSONIC_RECORD, MEISSONIC_SAMPLE}
# The guides' three steps: (record template, sample template, model folder, fitted shortcut, dataset)
RECORD_FIT_SAMPLE = {"amused": (AMUSED_RECORD, AMUSED_SAMPLE, AMUSED_FOLDER, AMUSED_SHORTCUT, AMUSED_DATASET),
                     "meissonic": (MEISSONIC_RECORD, MEISSONIC_SAMPLE, MEISSONIC_FOLDER, MEISSONIC_SHORTCUT,
                                   MEISSONIC_DATASET)}
