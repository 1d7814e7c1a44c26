"""Train the demo classifier (shape class of a 64x64 demo image) and compute the reference statistics that demo FID
is measured against; writes shortcut_core/assets/demo_classifier.safetensors.

    OMP_NUM_THREADS=1 python train/train_classifier.py --vq runs/demo/vq.safetensors \
        --out shortcut_core/assets/demo_classifier.safetensors

Data: images rendered by train/shapes.py with their own seeds (training 101, held-out 102, reference 103; the
demo generator was trained on seed 0), plus, with --vq, VQ reconstructions of some of them: encoded with the
demo tokenizer's encoder (kept by train/train_demo.py in its --work folder, not shipped) and decoded by the
shipped demo generator, so the classifier also sees the blur and halos every generated image has. Training adds
random Gaussian blur and noise. Everything is deterministic from --seed (one thread).
"""
from __future__ import annotations

import argparse
import logging
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from shapes import CLASS_NAMES, render_dataset  # noqa: E402
from shortcut_core.backends.vqgan import VQConfig, VQModel  # noqa: E402
from shortcut_core.metrics import (CLASSIFIER_FORMAT, DemoClassifier, DemoClassifierConfig,  # noqa: E402
                                   ReferenceStatistics, classifier_outputs, classifier_tensors, feature_statistics,
                                   frechet_distance)
from shortcut_core.registry import load_generator  # noqa: E402
from shortcut_core.files import load_tensors, read_metadata, save_safetensors  # noqa: E402
from shortcut_core.generator import ShortcutError  # noqa: E402
from shortcut_core.outputs import check_output_file  # noqa: E402
from shortcut_core.validation import (ArgumentParser, add_debug_flag, arg_number, arg_seed, positive_int,  # noqa: E402
                                      run_command)

log = logging.getLogger("train_classifier")


def to_unit_range(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in 0..1 (the layout generator.decode returns)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


def load_vq_encoder(path: Path, generator) -> VQModel:
    """The demo tokenizer with its encoder; refuses one whose decoder is not the shipped generator's."""
    metadata = read_metadata(path)
    if "config" not in metadata:
        raise SystemExit(f"{path}: not a VQ stage file of train/train_demo.py (no 'config' in its metadata)")
    vq = VQModel(VQConfig(**metadata["config"]))
    vq.load_state_dict(load_tensors(path))
    shipped = generator.vq.state_dict()
    for name, tensor in vq.state_dict().items():
        if name in shipped and not torch.equal(tensor.half().float(), shipped[name].float()):
            raise SystemExit(f"{path}: its decoder ({name}) differs from the shipped demo generator's; use the VQ "
                             "the demo generator was built from (train_demo.py --work folder)")
    return vq.eval()


@torch.no_grad()
def vq_reconstruct(vq: VQModel, generator, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Images in 0..1 -> demo codes -> images decoded by the shipped generator, in 0..1."""
    out = []
    for start in tqdm(range(0, len(images), batch), desc="VQ reconstruct", unit="batch"):
        codes = vq.encode(images[start:start + batch] * 2 - 1)
        out.append(generator.decode(codes.flatten(1)))
    return torch.cat(out)


def augment(images: torch.Tensor, rng: torch.Generator, blur_prob: float, noise_prob: float) -> torch.Tensor:
    """Random Gaussian blur (sigma 0.3..1.5 px, per image) and Gaussian noise (std 0..0.04), each on a share of
    the batch, then clipped to 0..1."""
    batch = images.shape[0]
    blur = torch.rand(batch, generator=rng) < blur_prob
    sigma = 0.3 + 1.2 * torch.rand(batch, generator=rng)
    noisy = torch.rand(batch, generator=rng) < noise_prob
    noise_std = 0.04 * torch.rand(batch, generator=rng)
    noise = torch.randn(images.shape, generator=rng)
    if blur.any():
        radius = 3
        offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-offsets[None] ** 2 / (2 * sigma[blur, None] ** 2))
        kernel = kernel / kernel.sum(dim=1, keepdim=True)  # [n, 7]
        chosen = images[blur]
        n, channels, height, width = chosen.shape
        flat = F.pad(chosen.reshape(1, n * channels, height, width), (radius,) * 4, mode="replicate")
        per_channel = kernel.repeat_interleave(channels, dim=0)
        flat = F.conv2d(flat, per_channel[:, None, None, :], groups=n * channels)
        flat = F.conv2d(flat, per_channel[:, None, :, None], groups=n * channels)
        images = images.clone()
        images[blur] = flat.reshape(n, channels, height, width)
    images = images + noise * (noise_std * noisy)[:, None, None, None]
    return images.clamp(0, 1)


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))


def accuracy(classifier: DemoClassifier, images: torch.Tensor, labels: np.ndarray) -> tuple[float, list[float]]:
    _, predictions = classifier_outputs(classifier, images)
    per_class = [float((predictions[labels == c] == c).mean()) for c in range(len(CLASS_NAMES))]
    return float((predictions == labels).mean()), per_class


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="shortcut_core/assets/demo_classifier.safetensors")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    parser.add_argument("--seed", type=arg_seed, default=0, help="weight init, batch order and augmentation")
    parser.add_argument("--train-images", type=positive_int, default=20000)
    parser.add_argument("--train-seed", type=arg_seed, default=101, help="render seed of the training images")
    parser.add_argument("--val-images", type=positive_int, default=2000)
    parser.add_argument("--val-seed", type=arg_seed, default=102, help="render seed of the held-out images")
    parser.add_argument("--reference-images", type=positive_int, default=10000)
    parser.add_argument("--reference-seed", type=arg_seed, default=103, help="render seed of the reference images")
    parser.add_argument("--vq", type=Path, default=None,
                        help="the demo VQ with its encoder (train_demo.py writes WORK/vq.safetensors); adds VQ "
                             "reconstructions to training and to the held-out checks")
    parser.add_argument("--vq-train-images", type=positive_int, default=2000, help="training images also given as VQ "
                                                                          "reconstructions")
    parser.add_argument("--vq-val-images", type=positive_int, default=1000, help="held-out images checked as VQ "
                                                                        "reconstructions")
    parser.add_argument("--epochs", type=positive_int, default=3)
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--lr", type=arg_number(float, 0, low_open=True), default=2e-3)
    parser.add_argument("--weight-decay", type=arg_number(float, 0), default=5e-4)
    parser.add_argument("--blur-prob", type=arg_number(float, 0, 1), default=0.4)
    parser.add_argument("--noise-prob", type=arg_number(float, 0, 1), default=0.4)
    parser.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads (1 = reproducible bit for bit)")
    add_debug_flag(parser)
    return parser


def main(argv=None) -> int:
    return run_command(lambda: train(build_parser().parse_args(argv)), argv)


def check_arguments(args) -> None:
    """Before anything is rendered: the output can be written and the VQ file exists."""
    check_output_file(args.out, args.force, (".safetensors",))
    if args.vq is not None and not Path(args.vq).is_file():
        raise ShortcutError(f"--vq {args.vq} does not exist; give the VQ file train_demo.py keeps in its --work "
                            "folder (vq.safetensors)")


def train(args) -> int:
    check_arguments(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    started = time.time()

    log.info("rendering %d training, %d held-out, %d reference images", args.train_images, args.val_images,
             args.reference_images)
    train_np, train_labels = render_dataset(args.train_images, args.train_seed)
    val_np, val_labels = render_dataset(args.val_images, args.val_seed)
    train_images, val_images = to_unit_range(train_np), to_unit_range(val_np)
    del train_np, val_np

    vq_info = None
    val_recon = None
    if args.vq is not None:
        generator = load_generator("demo", device="cpu")
        vq = load_vq_encoder(args.vq, generator)
        train_recon = vq_reconstruct(vq, generator, train_images[: args.vq_train_images])
        val_recon = vq_reconstruct(vq, generator, val_images[: args.vq_val_images])
        train_images = torch.cat([train_images, train_recon])
        train_labels = np.concatenate([train_labels, train_labels[: args.vq_train_images]])
        vq_info = {"file": args.vq.name, "generator": generator.identity, "train_images": len(train_recon),
                   "val_images": len(val_recon)}
        del generator, vq, train_recon
    data_seconds = time.time() - started  # rendering and VQ reconstruction

    torch.manual_seed(args.seed)
    config = DemoClassifierConfig(num_classes=len(CLASS_NAMES))
    classifier = DemoClassifier(config)
    parameters = sum(p.numel() for p in classifier.parameters())
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    rng = torch.Generator().manual_seed(args.seed)
    labels_tensor = torch.from_numpy(train_labels)
    steps_per_epoch = len(train_images) // args.batch_size
    total = steps_per_epoch * args.epochs
    warmup = min(100, total // 10)
    log.info("training %d parameters for %d steps (%d images, batch %d)", parameters, total, len(train_images),
             args.batch_size)
    fit_started = time.time()
    classifier.train()
    step = 0
    losses = []
    bar = tqdm(total=total, desc="classifier", unit="step")
    for _ in range(args.epochs):
        order = torch.randperm(len(train_images), generator=rng)
        for batch_index in range(steps_per_epoch):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total, args.lr, warmup)
            idx = order[batch_index * args.batch_size:(batch_index + 1) * args.batch_size]
            x = augment(train_images[idx], rng, args.blur_prob, args.noise_prob)
            loss = F.cross_entropy(classifier(x), labels_tensor[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    bar.close()
    fit_seconds = time.time() - fit_started
    classifier.eval()

    val_accuracy, val_per_class = accuracy(classifier, val_images, val_labels)
    log.info("held-out accuracy on rendered images: %.4f", val_accuracy)
    recon_accuracy = None
    if val_recon is not None:
        recon_accuracy, recon_per_class = accuracy(classifier, val_recon, val_labels[: len(val_recon)])
        log.info("held-out accuracy on VQ reconstructions: %.4f", recon_accuracy)

    log.info("reference statistics over %d images (seed %d)", args.reference_images, args.reference_seed)
    ref_np, _ = render_dataset(args.reference_images, args.reference_seed)
    ref_features, _ = classifier_outputs(classifier, to_unit_range(ref_np))
    del ref_np
    mean, cov = feature_statistics(ref_features)

    def fid_of(images: torch.Tensor) -> float:
        features, _ = classifier_outputs(classifier, images)
        return round(frechet_distance(*feature_statistics(features), mean, cov), 4)

    checks = {f"real_{len(val_images)}": fid_of(val_images), "real_1000": fid_of(val_images[:1000]),
              "real_200": fid_of(val_images[:200]),
              "one_class_circle_200": fid_of(val_images[torch.from_numpy(val_labels == 0)][:200]),
              "uniform_noise_200": fid_of(torch.rand(200, 3, 64, 64, generator=torch.Generator().manual_seed(1)))}
    if val_recon is not None:
        checks[f"vq_reconstruction_{len(val_recon)}"] = fid_of(val_recon)
        checks[f"real_{len(val_recon)}_same_images"] = fid_of(val_images[: len(val_recon)])
    log.info("FID against the reference: %s", checks)

    training = {
        "seed": args.seed, "epochs": args.epochs, "steps": total, "batch_size": args.batch_size, "lr": args.lr,
        "weight_decay": args.weight_decay, "blur_prob": args.blur_prob, "noise_prob": args.noise_prob,
        "train_images": args.train_images, "train_seed": args.train_seed, "vq": vq_info,
        "val_images": args.val_images, "val_seed": args.val_seed,
        "val_accuracy": round(val_accuracy, 5), "val_accuracy_per_class": [round(v, 4) for v in val_per_class],
        "final_loss": round(float(np.mean(losses[-50:])), 5), "parameters": parameters,
        "data_seconds": round(data_seconds, 1), "fit_seconds": round(fit_seconds, 1),
        "threads": args.threads, "torch": torch.__version__, "python": platform.python_version(),
        "reference_checks": {"what": "FID of these image sets against the reference statistics", **checks},
    }
    if recon_accuracy is not None:
        training["val_vq_reconstruction_accuracy"] = round(recon_accuracy, 5)
        training["val_vq_reconstruction_accuracy_per_class"] = [round(v, 4) for v in recon_per_class]
    reference = ReferenceStatistics(mean=mean, cov=cov, count=args.reference_images, seed=args.reference_seed)
    reference_info = {"count": args.reference_images, "seed": args.reference_seed, "feature_dim": config.feature_dim,
                      "images": "train/shapes.py render_dataset(count, seed), 64x64, classes balanced",
                      "features": "DemoClassifier.features (global average of the last conv stage, after ReLU)",
                      "covariance": "float64, unbiased (ddof = 1)"}
    metadata = {"format": CLASSIFIER_FORMAT, "format_version": "1", "config": config.to_dict(),
                "classes": CLASS_NAMES, "training": training, "reference": reference_info}
    save_safetensors(Path(args.out), classifier_tensors(classifier, reference), metadata)
    log.info("wrote %s in %.0f s: %s", args.out, time.time() - started,
             {k: training[k] for k in ("val_accuracy", "fit_seconds")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
