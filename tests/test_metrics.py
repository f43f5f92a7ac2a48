import json
import os

import numpy as np
import pytest
import scipy.linalg
import scipy.ndimage
from conftest import tiny_config
from scipy.stats import ortho_group

from dblocks_jax import cli, data, load_run, train
from dblocks_jax.evaluation import image_quality

FAST = image_quality.ClassifierSettings(steps=150)


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DBLOCKS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def test_frechet_distance_matches_the_closed_form_for_commuting_covariances():
    rng = np.random.default_rng(0)
    q = ortho_group.rvs(6, random_state=1)
    a, b = rng.uniform(0.1, 2.0, 6), rng.uniform(0.1, 2.0, 6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = image_quality.frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    np.testing.assert_allclose(got, expected, rtol=1e-8)
    same = image_quality.frechet_distance(mu1, q @ np.diag(a) @ q.T, mu1, q @ np.diag(a) @ q.T)
    assert same == pytest.approx(0, abs=1e-8)


def _trace_sqrt_reference(cov1, cov2):
    """Tr (C1 C2)^(1/2) without a non-symmetric square root: C1 C2 is similar to the symmetric
    S C2 S (S = C1^(1/2)), whose eigenvalues are real and non-negative."""
    w, v = np.linalg.eigh(cov1)
    s = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    return np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(s @ cov2 @ s), 0, None)))


@pytest.mark.parametrize("samples", [500, 12])  # full-rank, and singular (fewer samples than dimensions)
def test_frechet_distance_matches_an_eigenvalue_reference_for_non_commuting_covariances(samples):
    rng = np.random.default_rng(samples)
    x = rng.normal(size=(samples, 16)) @ rng.normal(size=(16, 16))
    y = np.maximum(rng.normal(size=(samples, 16)) @ rng.normal(size=(16, 16)), 0) * 3.0
    (mu1, cov1), (mu2, cov2) = image_quality.gaussian_stats(x), image_quality.gaussian_stats(y)
    assert not np.allclose(cov1 @ cov2, cov2 @ cov1)  # the commuting closed form would not apply
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * _trace_sqrt_reference(cov1, cov2)
    got = image_quality.frechet_distance(mu1, cov1, mu2, cov2)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # the tempting shortcut Tr(C1^(1/2) C2^(1/2)) agrees only for commuting covariances: far off here
    cross = np.real(scipy.linalg.sqrtm(cov1) @ scipy.linalg.sqrtm(cov2))
    shortcut = np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(cross)
    assert abs(shortcut - got) > 0.01 * got


def test_frechet_distance_refuses_covariances_with_a_large_imaginary_square_root():
    # a "covariance" with eigenvalue -1: sqrtm(C1 C2) = diag(1, 2, i), imaginary part 1 on the diagonal
    with pytest.raises(ValueError, match=r"imaginary component of 1 on its diagonal"):
        image_quality.frechet_distance(np.zeros(3), np.diag([1.0, 4.0, -1.0]), np.zeros(3), np.eye(3))
    rng = np.random.default_rng(0)
    q = ortho_group.rvs(8, random_state=3)
    broken = q @ np.diag([3.0, 2.0, 1.5, 1.0, 1.0, 0.5, 0.2, -0.5]) @ q.T
    a = rng.normal(size=(8, 8))
    with pytest.raises(ValueError, match="not positive semi-definite"):
        image_quality.frechet_distance(np.zeros(8), broken, np.zeros(8), a @ a.T + np.eye(8))
    # rounding-level negative eigenvalues (a singular covariance) are tolerated, and the real part used
    nearly = np.diag([1.0, 4.0, -1e-12])
    assert image_quality.frechet_distance(np.zeros(3), nearly, np.zeros(3), np.eye(3)) == pytest.approx(
        (1 - 1) ** 2 + (2 - 1) ** 2 + 1.0, abs=1e-5)


def test_frechet_distance_of_sample_statistics_converges():
    rng = np.random.default_rng(2)
    x = rng.normal([0.0, 1.0], [1.0, 2.0], size=(200_000, 2))
    y = rng.normal([1.0, 1.0], [1.0, 1.0], size=(200_000, 2))
    got = image_quality.frechet_distance(*image_quality.gaussian_stats(x), *image_quality.gaussian_stats(y))
    assert got == pytest.approx(1.0 + (2.0 - 1.0) ** 2, rel=0.02)


@pytest.mark.parametrize("dataset", ["shapes", "digits", "patterns"])
def test_score_ranks_real_above_blurred_above_noise_beyond_seed_spread(dataset):
    classifier = image_quality.FeatureClassifier(dataset, 16, FAST)
    assert classifier.accuracy > 0.6
    reference, _ = data.load_split(dataset, "test", 16)
    train_images, _ = data.load_split(dataset, "train", 16)
    scores = {"real": [], "blurred": [], "noise": []}
    for seed in range(3):  # a perfect generator reproduces the training distribution
        rng = np.random.default_rng(seed)
        real = train_images[rng.choice(len(train_images), len(reference), replace=False)]
        candidates = {"real": real, "blurred": scipy.ndimage.gaussian_filter(real, sigma=(0, 1, 1, 0)),
                      "noise": rng.uniform(-1, 1, real.shape).astype(np.float32)}
        for name, images in candidates.items():
            scores[name].append(image_quality.feature_frechet_distance(classifier, images, reference))
    mean = {k: np.mean(v) for k, v in scores.items()}
    spread = max(np.std(v) for v in scores.values())
    assert mean["real"] + 2 * spread < mean["blurred"], scores
    assert mean["blurred"] + 2 * spread < mean["noise"], scores


def test_classifier_is_cached_deterministic_and_a_broken_cache_names_its_path(monkeypatch):
    settings = image_quality.ClassifierSettings(steps=20)
    first = image_quality.FeatureClassifier("digits", 8, settings)
    images, _ = data.load_split("digits", "test", 8)
    # training is deterministic, so equal features alone would not show the cache was used
    monkeypatch.setattr(image_quality.FeatureClassifier, "_train", lambda *a: pytest.fail("retrained"))
    again = image_quality.FeatureClassifier("digits", 8, settings)  # from the cache
    np.testing.assert_array_equal(first.features(images), again.features(images))
    assert again.accuracy == first.accuracy and again.path == first.path
    for root, _, files in os.walk(os.path.join(first.path, "params")):
        for name in files:
            open(os.path.join(root, name), "wb").write(b"broken")
    with pytest.raises(ValueError, match=first.path):
        image_quality.FeatureClassifier("digits", 8, settings)


def test_conditional_accuracy_is_high_for_true_labels_and_near_chance_for_shuffled_ones():
    classifier = image_quality.FeatureClassifier("digits", 16, FAST)
    assert classifier.accuracy > 0.8  # held out; chance is 0.1 with ten classes
    images, labels = data.load_split("digits", "test", 16)
    true = image_quality.conditional_accuracy(classifier, images, labels)
    assert true == pytest.approx(classifier.accuracy)  # the same held-out split, scored through predict
    assert true > 0.8
    shuffled = np.random.default_rng(0).permutation(labels)
    assert np.mean(shuffled == labels) < 0.3
    assert image_quality.conditional_accuracy(classifier, images, shuffled) < 0.3


def test_evaluate_reports_mean_and_std_over_seeds(tmp_path, monkeypatch):
    fast = image_quality.ClassifierSettings(steps=50)
    monkeypatch.setattr(image_quality, "ClassifierSettings", lambda: fast)  # what the CLI's evaluate builds
    config = tiny_config(dataset="digits", steps=2, sample_steps=2)
    train(config, str(tmp_path), progress=False, write_artifacts=False)
    assert cli.main(["evaluate", "--workdir", str(tmp_path), "--seeds", "0,1", "--num-samples", "40"]) == 0
    result = json.load(open(tmp_path / "evaluation.json"))
    assert result["seeds"] == [0, 1] and result["num_samples"] == 40 and result["num_reference"] == 297
    assert result["classifier"]["steps"] == 50  # the settings reached the code under test
    assert result["checkpoint_steps"] == [2, 2] and result["sampler"]["steps"] == 2
    # Seed 1's numbers, recomputed here from the checkpoints with the same classifier and seed.
    task, params, _ = load_run(str(tmp_path), {"sampling.steps": 2})
    images, labels = task.samples(params, seed=1, num_samples=40)
    classifier = image_quality.FeatureClassifier("digits", 8, fast)
    reference, _ = data.load_split("digits", "test", 8)
    fd = result["frechet_distance"]
    assert fd["values"][1] == pytest.approx(image_quality.feature_frechet_distance(classifier, images, reference),
                                            rel=1e-6)
    assert result["conditional_accuracy"]["values"][1] == pytest.approx(
        image_quality.conditional_accuracy(classifier, images, labels))
    assert fd["values"][0] != fd["values"][1] and fd["std"] == pytest.approx(np.std(fd["values"], ddof=1))
    assert cli.main(["evaluate", "--workdir", str(tmp_path), "--seeds", "0", "--num-samples", "40",
                     "--untrained"]) == 0
    baseline = json.load(open(tmp_path / "evaluation_untrained.json"))
    assert baseline["untrained"] and baseline["checkpoint_steps"] == [0, 0]
    assert baseline["frechet_distance"]["values"][0] != fd["values"][0]
