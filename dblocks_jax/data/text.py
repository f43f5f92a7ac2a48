"""Text data for the language tasks: character vocabularies, corpora that need no network, the
held-out tail, fixed-length sequences and a resumable stream of training windows.

Vocabularies:
- `text8`: the 27 symbols of text8 (Mahoney's preprocessing of Wikipedia): a-z and space, id 0 is
  the space; letters are lowercased, every other character becomes a space and runs of spaces
  collapse to one.
- `bytes`: the UTF-8 bytes of the text, 256 symbols (for text that is not English prose).

Sources:
- `pydoc`: Python's own `pydoc_data.topics` (always installed; about 465k characters, 376k
  after the text8 mapping; repetitive: its unigram entropy is 4.10 bits and lzma reaches 1.46).
- `textfile:PATH`: any UTF-8 file.
- `text8:PATH`: the text8 file (or its zip); its standard split is the first 90M characters for
  training, the next 5M for validation and the last 5M for test, i.e. 0.90 / 0.05 / 0.05.
- `tfds:NAME`: a prepared TFDS dataset with a `text` feature, e.g. `tfds:tiny_shakespeare` (each
  split one document) or `tfds:lm1b` (a sentence per record, ~30M for training): its test split
  is held out and training streams the whole train split (see `text_tfds`).

The held-out text is the tail of the corpus (the last `holdout` of it, or text8's last 10 %) or,
for TFDS, the dataset's test split; it is never trained on: a model that has seen it would report
a likelihood it did not earn.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import zipfile
from typing import Iterator

import numpy as np

VOCABULARIES = ("text8", "bytes")
TEXT8_SYMBOLS = " abcdefghijklmnopqrstuvwxyz"
TEXT8_SPLIT = (0.90, 0.05, 0.05)  # train / validation / test of the standard text8 file
MIN_CHARACTERS = 64


@dataclasses.dataclass(frozen=True)
class TextCorpus:
    """A corpus as token ids (uint8): `train` is the head, `test` the held-out tail."""

    name: str
    vocabulary: str
    train: np.ndarray
    test: np.ndarray

    @property
    def vocab_size(self) -> int:
        return vocab_size(self.vocabulary)

    def batches(self, seq_len: int, batch_size: int, seed) -> "TextBatches":
        """The endless, resumable stream of training windows (seeded by `seed`)."""
        return TextBatches(self.train, seq_len, batch_size, seed)

    def fingerprint(self) -> dict:
        """What identifies the training text: recorded with a run, so that a resume on changed
        text (or another vocabulary) is refused instead of silently mixing two corpora."""
        return {"source": self.name, "vocabulary": self.vocabulary, "train_symbols": int(len(self.train)),
                "train_sha256": hashlib.sha256(np.ascontiguousarray(self.train).tobytes()).hexdigest()}


def is_text_source(source: str) -> bool:
    """Whether `source` names a text corpus (tfds:<name> may be text or images: the task decides)."""
    return source == "pydoc" or (source.partition(":")[0] in ("textfile", "text8", "tfds")
                                 and len(source.partition(":")[2]) > 0)


def vocab_size(vocabulary: str) -> int:
    check_vocabulary(vocabulary)
    return len(TEXT8_SYMBOLS) if vocabulary == "text8" else 256


def check_vocabulary(vocabulary: str) -> None:
    if vocabulary not in VOCABULARIES:
        raise ValueError(f"unknown vocabulary {vocabulary!r}; allowed: {', '.join(VOCABULARIES)}")


def text8_normalize(text: str) -> str:
    """Lowercase a-z kept, everything else a space, runs of spaces collapsed (text8's mapping)."""
    return re.sub(r"[^a-z]+", " ", text.lower())


def encode(text: str, vocabulary: str) -> np.ndarray:
    """Token ids (uint8) of `text`; text8 normalises it first."""
    check_vocabulary(vocabulary)
    if vocabulary == "bytes":
        return np.frombuffer(text.encode("utf-8"), np.uint8).copy()
    codes = np.frombuffer(text8_normalize(text).encode("ascii"), np.uint8)
    return np.where(codes == ord(" "), 0, codes.astype(np.int16) - ord("a") + 1).astype(np.uint8)


def decode(ids, vocabulary: str) -> str:
    """The text of token ids (bytes that do not form UTF-8 are replaced)."""
    check_vocabulary(vocabulary)
    ids = np.asarray(ids, np.uint8)
    if vocabulary == "bytes":
        return ids.tobytes().decode("utf-8", errors="replace")
    return np.frombuffer(TEXT8_SYMBOLS.encode("ascii"), np.uint8)[ids].tobytes().decode("ascii")  # a table lookup


def read_text(source: str) -> str:
    """The raw text of a source: `pydoc`, `textfile:PATH` or `text8:PATH` (file or zip)."""
    if source == "pydoc":
        import pydoc_data.topics

        return "".join(pydoc_data.topics.topics.values())
    kind, sep, path = source.partition(":")
    if kind == "tfds" and path:
        raise ValueError(f"text source {source} is read by load_text (a TFDS dataset is streamed, not one string)")
    if not sep or kind not in ("textfile", "text8") or not path:
        raise ValueError(f"unknown text source {source!r}; allowed: pydoc, textfile:PATH, text8:PATH, tfds:NAME")
    if os.path.isdir(path):
        raise ValueError(f"text source {source}: {path} is a directory; give a text file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"text source {source}: no such file {path}")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if not n.endswith("/")]
            if len(names) != 1:
                raise ValueError(f"text source {source}: expected one file in the zip, found {len(names)}")
            if kind == "text8" and os.path.basename(names[0]) != "text8":
                raise ValueError(f"text source {source}: the zip holds {names[0]!r}, not text8 (the corpus text8.zip "
                                 f"holds one file named text8); for another text use textfile:{path}")
            raw = archive.read(names[0])
    else:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:4] == b"PK\x03\x04":  # a zip's first bytes, but no readable archive: cut short or damaged
            raise ValueError(f"text source {source}: {path} starts like a zip archive but cannot be read as one "
                             f"(truncated or damaged?)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"text source {source}: {path} is not UTF-8 text (byte {err.start}: {err.reason})") from None


def load_text(source: str, vocabulary: str = "text8", holdout: float = 0.1) -> TextCorpus:
    """A file source as ids, its tail held out: the last `holdout` of it (text8: its standard test
    split, the last 5 %, with the 5 % before it, validation, trained on by no one). TFDS sources
    are read by `data.corpus.load_corpus`, which takes every kind."""
    if not 0 < holdout < 1:
        raise ValueError(f"holdout={holdout}; allowed: a fraction in (0, 1)")
    ids = encode(read_text(source), vocabulary)
    if len(ids) < MIN_CHARACTERS:
        raise ValueError(f"text source {source} holds {len(ids)} symbols after the {vocabulary} mapping; "
                         f"allowed: at least {MIN_CHARACTERS}")
    if source.startswith("text8:"):
        train_end = int(round(TEXT8_SPLIT[0] * len(ids)))
        test_start = int(round((TEXT8_SPLIT[0] + TEXT8_SPLIT[1]) * len(ids)))
        return TextCorpus(source, vocabulary, ids[:train_end], ids[test_start:])
    cut = len(ids) - max(1, int(round(holdout * len(ids))))
    return TextCorpus(source, vocabulary, ids[:cut], ids[cut:])


def sequences(ids: np.ndarray, seq_len: int) -> np.ndarray:
    """Non-overlapping windows (N, seq_len) that cover `ids` (the remainder is dropped): how
    held-out text is scored, each symbol once."""
    if seq_len < 1 or seq_len > len(ids):
        raise ValueError(f"sequence length {seq_len}; allowed: 1..{len(ids)} (the text holds {len(ids)} symbols)")
    n = len(ids) // seq_len
    return ids[:n * seq_len].reshape(n, seq_len)


def unigram_bpc(corpus: TextCorpus) -> float:
    """Bits per symbol of the held-out text under the training text's symbol frequencies (add-one
    smoothing): the floor any model must beat."""
    counts = np.bincount(corpus.train, minlength=corpus.vocab_size).astype(np.float64) + 1.0
    log_p = np.log2(counts / counts.sum())
    return float(-np.mean(log_p[corpus.test]))


class TextBatches:
    """Endless batches of random windows {"tokens": (batch, seq_len) int32} of the training text,
    deterministic per seed and resumable (`state()` / `restore()`): batch i's windows are drawn
    from a generator seeded by (seed, i)."""

    def __init__(self, ids: np.ndarray, seq_len: int, batch_size: int, seed):
        if seq_len < 1 or seq_len > len(ids):
            raise ValueError(f"sequence length {seq_len}; allowed: 1..{len(ids)} (the training text's length)")
        self.ids, self.seq_len, self.batch_size, self.seed = ids, seq_len, batch_size, seed
        self.position = 0

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([*np.atleast_1d(self.seed).tolist(), self.position])
        starts = rng.integers(0, len(self.ids) - self.seq_len + 1, self.batch_size)
        self.position += 1
        return {"tokens": self.ids[starts[:, None] + np.arange(self.seq_len)[None, :]].astype(np.int32)}

    def state(self) -> dict[str, int]:
        return {"position": self.position}

    def restore(self, state: dict[str, int]) -> None:
        self.position = int(state["position"])
