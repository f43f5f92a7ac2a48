"""Text corpora from TFDS (`tfds:tiny_shakespeare`, `tfds:lm1b`, any dataset with a `text` feature).

Why a separate corpus type: lm1b holds ~30M training sentences, too many to hold as one id array
the way `text.TextCorpus` does, so the training windows are streamed from the whole train split
through Grain, while only two bounded arrays are kept in memory:
- `test`: the dataset's own `test` split (capped), the held-out text, never trained on;
- `train`: a sample, the first `count_records` training documents, used only for what needs
  training symbols in memory (the unigram floor's counts, length checks); it is not what trains.

Every document is its text followed by one newline, mapped by the vocabulary (text8 makes the
newline a space): the held-out text and the training windows share that format. The data are
read with `images.tfds_source`, which never downloads and fails at once when a dataset is not
prepared.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
from typing import Any, Iterator, Sequence

import grain
import numpy as np

from dblocks_jax.data import text
from dblocks_jax.data.images import tfds_source

SHUFFLE_SYMBOLS = 1 << 20  # windows are shuffled within buffers of about this many symbols
PREFETCH_DOCUMENTS = 16  # bounded: a tiny_shakespeare document is the whole 1M-character split


@dataclasses.dataclass(frozen=True)
class TfdsTextCorpus(text.TextCorpus):
    """A TFDS text dataset: `test` is its test split, `train` only a sample (see the module doc);
    `batches` streams the whole train split."""

    tfds_version: str = ""
    train_records: int = 0
    shuffle_symbols: int = SHUFFLE_SYMBOLS

    def batches(self, seq_len: int, batch_size: int, seed) -> Iterator[dict[str, np.ndarray]]:
        """The endless, resumable stream of training windows of the whole train split (Grain's
        `get_state()` / `set_state()`, JSON-serialisable), deterministic per `seed`."""
        return window_batches(tfds_source(self.name, "train"), self.vocabulary, seq_len, batch_size, seed,
                              shuffle_symbols=self.shuffle_symbols)

    def fingerprint(self) -> dict:
        """Identifies the dataset without hashing all of it: its version and size, and a hash of
        the training sample (plus the shuffle buffer, which changes the stream a state points into)."""
        return {"source": self.name, "vocabulary": self.vocabulary, "tfds_version": self.tfds_version,
                "train_records": self.train_records, "train_sample_symbols": int(len(self.train)),
                "train_sample_sha256": hashlib.sha256(np.ascontiguousarray(self.train).tobytes()).hexdigest(),
                "shuffle_symbols": self.shuffle_symbols}


def tfds_corpus(source: str, vocabulary: str, *, max_test_symbols: int = 2_000_000,
                count_records: int = 20_000, shuffle_symbols: int = SHUFFLE_SYMBOLS) -> TfdsTextCorpus:
    """`tfds:NAME` as a corpus: its test split (the first `max_test_symbols` symbols) held out, the
    first `count_records` training documents as the in-memory sample."""
    text.check_vocabulary(vocabulary)
    if max_test_symbols < 1 or count_records < 1 or shuffle_symbols < 1:
        raise ValueError(f"max_test_symbols={max_test_symbols}, count_records={count_records}, "
                         f"shuffle_symbols={shuffle_symbols}; allowed: positive integers")
    version = check_text_dataset(source)
    train_source = tfds_source(source, "train")
    test = _read_ids(tfds_source(source, "test"), vocabulary, max_symbols=max_test_symbols)
    train = _read_ids(train_source, vocabulary, max_records=count_records)
    if len(test) == 0 or len(train) == 0:
        raise ValueError(f"text source {source}: its train or test split is empty")
    return TfdsTextCorpus(source, vocabulary, train, test, tfds_version=version,
                          train_records=len(train_source), shuffle_symbols=shuffle_symbols)


def check_text_dataset(source: str) -> str:
    """Refuses a dataset without a `text` feature before reading any of it (from the builder's
    metadata, available offline); returns the dataset's version."""
    import tensorflow_datasets as tfds

    name = source.partition(":")[2]
    info = tfds.builder(name, data_dir=os.environ.get("TFDS_DATA_DIR"), try_gcs=False).info
    features = sorted(info.features.keys())
    if "text" not in features:
        raise ValueError(f"TFDS dataset {name!r} has features {features}; a text dataset needs a `text` feature")
    return str(info.version)


def record_text(record: dict[str, Any]) -> str:
    """A record's `text` as str: TFDS gives bytes (decoded as UTF-8, bad bytes replaced) or str."""
    value = record["text"]
    if isinstance(value, np.ndarray):
        value = value.item()
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def document_ids(record: dict[str, Any], vocabulary: str) -> np.ndarray:
    """A document's ids (uint8) ending in the separator, the newline's mapping."""
    return text.encode(record_text(record) + "\n", vocabulary)


def _read_ids(records: Sequence, vocabulary: str, *, max_records: int | None = None,
              max_symbols: int | None = None) -> np.ndarray:
    """The ids of the leading documents, up to `max_records` of them and `max_symbols` symbols:
    reads only what it keeps. (TFDS's batched `__getitems__` would read array_record ~4x faster,
    but `tfds.testing.mock_data` of tfds 4.9.10 breaks it, so the tests could not cover it.)"""
    parts, total = [], 0
    for index in range(min(len(records), max_records or len(records))):  # one by one: see the note
        parts.append(document_ids(records[index], vocabulary))
        total += len(parts[-1])
        if max_symbols is not None and total >= max_symbols:
            break
    ids = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
    return ids[:max_symbols]


def window_batches(records: Sequence, vocabulary: str, seq_len: int, batch_size: int, seed,
                   shuffle_symbols: int = SHUFFLE_SYMBOLS) -> Iterator[dict[str, np.ndarray]]:
    """Endless batches {"tokens": int32 (batch_size, seq_len)} of any random-access sequence of
    text records: the documents in a new order every epoch (seeded), concatenated and cut into
    windows, shuffled again within buffers of `shuffle_symbols` so that a batch does not hold
    neighbouring windows (a one-document dataset such as tiny_shakespeare would otherwise give
    batches of consecutive text, the same for every seed). Resumable through get_state()/set_state()."""
    if seq_len < 1 or batch_size < 1:
        raise ValueError(f"seq_len={seq_len}, batch_size={batch_size}; allowed: positive integers")
    seed = _grain_seed(seed)
    documents = (grain.MapDataset.source(records).seed(seed).shuffle().repeat(None)
                 .map(lambda record: document_ids(record, vocabulary))
                 .to_iter_dataset(grain.ReadOptions(num_threads=4, prefetch_buffer_size=PREFETCH_DOCUMENTS)))
    windows = grain.experimental.WindowShuffleIterDataset(
        PackedWindows(documents, seq_len), window_size=max(batch_size, shuffle_symbols // seq_len), seed=seed)
    batches = windows.batch(batch_size, drop_remainder=True,
                            batch_fn=lambda rows: {"tokens": np.stack(rows).astype(np.int32)})
    return iter(batches)


def _grain_seed(seed) -> int:
    """One 32-bit seed from an int or a tuple such as (run seed, block)."""
    return int(np.random.SeedSequence(np.atleast_1d(seed).tolist()).generate_state(1)[0])


class PackedWindowsIterator(grain.DatasetIterator):
    """Concatenates 1-D id arrays and cuts them into windows of `seq_len` (a document longer than a
    window spans many windows). Its state is the parent's state before the current document plus
    the offset in it: plain JSON, restored by re-reading that one document. (Grain's
    ConcatThenSplitIterDataset is not used: its state holds tuples, and after a JSON round trip it
    mistakes the empty slice (-1, -1), read back as a list, for a remainder and skips text.)"""

    def __init__(self, parent: grain.DatasetIterator, seq_len: int):
        super().__init__(parent)
        self._seq_len = seq_len
        self._document_state = parent.get_state()
        self._document = np.zeros(0, np.uint8)
        self._offset = 0

    def __next__(self) -> np.ndarray:
        window = np.empty(self._seq_len, np.uint8)
        filled = 0
        while filled < self._seq_len:
            if self._offset == len(self._document):
                self._document_state = self._parent.get_state()
                self._document, self._offset = next(self._parent), 0
            take = min(self._seq_len - filled, len(self._document) - self._offset)
            window[filled:filled + take] = self._document[self._offset:self._offset + take]
            filled, self._offset = filled + take, self._offset + take
        return window

    def get_state(self) -> dict[str, Any]:
        return {"document": copy.deepcopy(self._document_state), "offset": self._offset}

    def set_state(self, state: dict[str, Any]) -> None:
        self._document_state = copy.deepcopy(state["document"])
        self._parent.set_state(self._document_state)
        self._offset = int(state["offset"])
        self._document = next(self._parent) if self._offset > 0 else np.zeros(0, np.uint8)


class PackedWindows(grain.IterDataset):
    """Documents (1-D uint8 ids) packed into windows of `seq_len`, nothing dropped or padded."""

    def __init__(self, parent: grain.IterDataset, seq_len: int):
        super().__init__(parent)
        self._seq_len = seq_len

    def __iter__(self) -> PackedWindowsIterator:
        return PackedWindowsIterator(self._parent.__iter__(), self._seq_len)
