import json
import os

import numpy as np
import pytest
import scipy.ndimage
from conftest import tiny_config
from scipy.stats import ortho_group

from dblocks_jax import cli, data, metrics, train

FAST = metrics.ClassifierSettings(steps=300)


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DBLOCKS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def test_frechet_distance_matches_the_closed_form_for_commuting_covariances():
    rng = np.random.default_rng(0)
    q = ortho_group.rvs(6, random_state=1)
    a, b = rng.uniform(0.1, 2.0, 6), rng.uniform(0.1, 2.0, 6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = metrics.frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    np.testing.assert_allclose(got, expected, rtol=1e-8)
    assert metrics.frechet_distance(mu1, q @ np.diag(a) @ q.T, mu1, q @ np.diag(a) @ q.T) == pytest.approx(0, abs=1e-8)


def test_frechet_distance_of_sample_statistics_converges():
    rng = np.random.default_rng(2)
    x = rng.normal([0.0, 1.0], [1.0, 2.0], size=(200_000, 2))
    y = rng.normal([1.0, 1.0], [1.0, 1.0], size=(200_000, 2))
    got = metrics.frechet_distance(*metrics.gaussian_stats(x), *metrics.gaussian_stats(y))
    assert got == pytest.approx(1.0 + (2.0 - 1.0) ** 2, rel=0.02)


@pytest.mark.parametrize("dataset", ["shapes", "digits", "patterns"])
def test_score_ranks_real_above_blurred_above_noise_beyond_seed_spread(dataset):
    classifier = metrics.FeatureClassifier(dataset, 16, FAST)
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
            scores[name].append(metrics.feature_frechet_distance(classifier, images, reference))
    mean = {k: np.mean(v) for k, v in scores.items()}
    spread = max(np.std(v) for v in scores.values())
    assert mean["real"] + 2 * spread < mean["blurred"], scores
    assert mean["blurred"] + 2 * spread < mean["noise"], scores


def test_classifier_is_cached_deterministic_and_a_broken_cache_names_its_path():
    first = metrics.FeatureClassifier("digits", 8, metrics.ClassifierSettings(steps=20))
    images, _ = data.load_split("digits", "test", 8)
    again = metrics.FeatureClassifier("digits", 8, metrics.ClassifierSettings(steps=20))  # from the cache
    np.testing.assert_array_equal(first.features(images), again.features(images))
    assert again.accuracy == first.accuracy
    for root, _, files in os.walk(os.path.join(first.path, "params")):
        for name in files:
            open(os.path.join(root, name), "wb").write(b"broken")
    with pytest.raises(ValueError, match=first.path):
        metrics.FeatureClassifier("digits", 8, metrics.ClassifierSettings(steps=20))


def test_evaluate_reports_mean_and_std_over_seeds(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics, "ClassifierSettings", lambda: metrics.ClassifierSettings(steps=50))
    config = tiny_config(dataset="digits", steps=2, sample_steps=2)
    train(config, str(tmp_path), progress=False, write_samples=False)
    assert cli.main(["evaluate", "--workdir", str(tmp_path), "--seeds", "0,1", "--num-samples", "40"]) == 0
    result = json.load(open(tmp_path / "evaluation.json"))
    assert result["seeds"] == [0, 1] and result["num_samples"] == 40 and result["num_reference"] == 297
    assert len(result["frechet_distance"]["values"]) == 2 and result["frechet_distance"]["std"] >= 0
    assert 0 <= result["conditional_accuracy"]["mean"] <= 1
    assert result["checkpoint_steps"] == [2, 2] and result["sampler"]["steps"] == 2
    assert cli.main(["evaluate", "--workdir", str(tmp_path), "--seeds", "0", "--num-samples", "40",
                     "--untrained"]) == 0
    baseline = json.load(open(tmp_path / "evaluation_untrained.json"))
    assert baseline["untrained"] and baseline["checkpoint_steps"] == [0, 0]
