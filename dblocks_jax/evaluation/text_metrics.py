"""Text metrics the language tasks share: held-out windows, bits per character, and cheap
readings of generated text (word validity, distinct n-grams)."""

from __future__ import annotations

import re

import numpy as np

from dblocks_jax.data import text


def held_out(task, max_sequences: int | None = None) -> np.ndarray:
    """The held-out text as non-overlapping windows (N, L) int32, the first `max_sequences` of
    them (`text.eval_sequences` when None; 0: all)."""
    limit = task.config.text.eval_sequences if max_sequences is None else max_sequences
    windows = text.sequences(task.corpus.test, task.config.text.seq_len).astype(np.int32)
    return windows[:limit] if limit else windows


def bits_per_character(task, windows_NL: np.ndarray) -> float:
    """Bits per symbol -> bits per character: 1 for character vocabularies; for bytes, the held-out
    text's bytes per character (UTF-8)."""
    if task.config.text.vocabulary != "bytes":
        return 1.0
    raw = windows_NL.astype(np.uint8).tobytes()
    return len(raw) / max(1, len(raw.decode("utf-8", errors="replace")))


def training_words(corpus) -> set[str]:
    """The words of the training text (runs of letters, lowercased)."""
    return set(re.findall(r"[a-z]+", text.decode(corpus.train, corpus.vocabulary).lower()))


def word_validity(samples: list[str], known: set[str]) -> float:
    """Share of the samples' whole words (the first and last word of a sample may be cut: dropped)
    that occur in the training text (`known`, from `training_words`): a cheap reading of
    generation quality for character models."""
    words = [w for s in samples for w in re.findall(r"[a-z]+", s.lower())[1:-1]]
    return float(np.mean([w in known for w in words])) if words else float("nan")


def distinct_n(samples: list[str], n: int) -> float:
    """Distinct-n (Li et al. 2016): unique word n-grams over all word n-grams of `samples`; low
    values mean repetitive generations. Words, not characters: character n-grams of a 27-symbol
    vocabulary repeat in any text."""
    grams = [tuple(w[i:i + n]) for s in samples for w in [s.split()] for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def write_continuations(path: str, prompts: list[str], continuations: list[str]) -> list[str]:
    """One "prompt|continuation" line per sample (the autoregressive tasks' samples.txt); returns the lines."""
    lines = [f"{p}|{c}" for p, c in zip(prompts, continuations)]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return lines
