"""Scores of a classifier from its logits: accuracy (top-1, top-5), negative log-likelihood and
expected calibration error (ECE; Guo et al., "On Calibration of Modern Neural Networks", ICML
2017: 15 equal-width confidence bins, the gap |accuracy - confidence| of each bin weighted by its
share of the examples). A diffusion classifier's confidence is the softmax of its final logits.
"""

from __future__ import annotations

import numpy as np

NUM_BINS = 15


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 (stable for large logits)."""
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(logits))


def top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of examples whose label is among the k largest logits."""
    top = np.argsort(-np.asarray(logits), axis=-1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == np.asarray(labels)[:, None], axis=-1)))


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean -log p(label | x), nats."""
    return float(-np.mean(log_softmax(logits)[np.arange(len(labels)), labels]))


def reliability_bins(probs: np.ndarray, labels: np.ndarray, num_bins: int = NUM_BINS) -> dict[str, np.ndarray]:
    """Per confidence bin ((k/n, (k+1)/n], the first also holding 0): the number of examples, their
    accuracy and their mean confidence (both 0 in an empty bin)."""
    confidence = probs.max(axis=-1)
    correct = (probs.argmax(axis=-1) == labels).astype(np.float64)
    index = np.clip(np.ceil(confidence * num_bins).astype(int) - 1, 0, num_bins - 1)
    count = np.bincount(index, minlength=num_bins).astype(np.float64)
    safe = np.maximum(count, 1)
    return {"count": count, "accuracy": np.bincount(index, correct, num_bins) / safe,
            "confidence": np.bincount(index, confidence, num_bins) / safe,
            "edges": np.linspace(0.0, 1.0, num_bins + 1)}


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, num_bins: int = NUM_BINS) -> float:
    """sum_k n_k / N |accuracy_k - confidence_k| over equal-width confidence bins."""
    bins = reliability_bins(probs, labels, num_bins)
    return float(np.sum(bins["count"] / len(labels) * np.abs(bins["accuracy"] - bins["confidence"])))


def classification_scores(logits: np.ndarray, labels: np.ndarray, num_bins: int = NUM_BINS) -> dict:
    """{"accuracy", "top5" (None with 10 classes or fewer), "ece", "nll"} of (N, C) logits."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    if logits.ndim != 2 or len(logits) != len(labels):
        raise ValueError(f"expected (N, C) logits for N labels, got {logits.shape} for {labels.shape}")
    probs = softmax(logits)
    return {"accuracy": float(np.mean(probs.argmax(-1) == labels)),
            "top5": top_k_accuracy(logits, labels, 5) if logits.shape[1] > 10 else None,
            "ece": expected_calibration_error(probs, labels, num_bins),
            "nll": negative_log_likelihood(logits, labels)}
