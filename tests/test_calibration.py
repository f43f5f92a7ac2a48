"""Classification scores: accuracy, top-5, NLL and expected calibration error (15 bins)."""

import numpy as np
import pytest

from dblocks_jax.evaluation import calibration


def test_ece_of_a_hand_computed_example():
    # Confidences 0.9 (right), 0.9 (wrong), 0.6 (right): bins (0.867, 0.933] and (0.533, 0.6].
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6]])
    labels = np.array([0, 1, 1])
    bins = calibration.reliability_bins(probs, labels)
    assert bins["count"].sum() == 3 and bins["count"][13] == 2 and bins["count"][8] == 1
    # 2/3 |0.5 - 0.9| + 1/3 |1 - 0.6|
    assert calibration.expected_calibration_error(probs, labels) == pytest.approx(2 / 3 * 0.4 + 1 / 3 * 0.4)


def test_ece_is_near_zero_when_labels_follow_the_predicted_probabilities_and_large_when_overconfident():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(20_000, 5)) * 2.0
    probs = calibration.softmax(logits)
    labels = np.array([rng.choice(5, p=p) for p in probs])  # calibrated by construction
    assert calibration.expected_calibration_error(probs, labels) < 0.02
    sharpened = calibration.softmax(logits * 4.0)  # same ranking, far too confident
    assert calibration.expected_calibration_error(sharpened, labels) > 0.15


def test_scores_match_their_definitions():
    logits = np.array([[3.0, 1.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0, -8.0],
                       [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1e4]])
    labels = np.array([4, 10])
    scores = calibration.classification_scores(logits, labels)
    assert scores["accuracy"] == 0.5 and scores["top5"] == 1.0  # label 4 is fifth in row 0
    assert calibration.top_k_accuracy(logits, labels, 4) == 0.5
    log_p = logits[0] - np.log(np.exp(logits[0]).sum())
    assert scores["nll"] == pytest.approx(-log_p[4] / 2)  # row 1 contributes -log(1) = 0
    assert np.isfinite(scores["ece"])
    assert calibration.classification_scores(logits[:, :10], np.array([4, 0]))["top5"] is None  # 10 classes
    with pytest.raises(ValueError, match="expected \\(N, C\\) logits"):
        calibration.classification_scores(logits[0], labels)
