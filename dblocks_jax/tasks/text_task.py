"""What the language tasks share: a text source (`data.text`), its held-out tail, the checks of
the window length against it, the training stream of windows and the memory a batch needs.
`MaskedLM` and `AutoregressiveLM` build on it."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dblocks_jax.data import dataset_names
from dblocks_jax.data import text
from dblocks_jax.engine.settings import require
from dblocks_jax.tasks.base import Task


class TextTask(Task):
    """A task whose batches are {"tokens": (N, text.seq_len) int32} windows of a text."""

    # Attention rows a token reads per window, in units of text.seq_len (the autoregressive task's
    # noisy tokens read the clean stream too).
    attention_width = 1

    @classmethod
    def validate(cls, config) -> None:
        dataset = config.data.dataset
        require(text.is_text_source(dataset) and dataset not in dataset_names(), "data.dataset", dataset,
                f"a text source for task {config.task}: pydoc, textfile:PATH, text8:PATH or tfds:<text dataset>")

    @staticmethod
    def require_generation_fits(config) -> None:
        """A prompt of ar.prompt_len plus ar.gen_len new symbols stays inside the trained context."""
        a, length = config.ar, config.text.seq_len
        require(a.prompt_len + a.gen_len <= length, "ar.gen_len", a.gen_len,
                f"at most text.seq_len - ar.prompt_len = {length - a.prompt_len} (generation stays inside the "
                f"trained context)")

    def __init__(self, config):
        self.vocab_size = text.vocab_size(config.text.vocabulary)  # make_block needs it; no I/O
        super().__init__(config)

    @functools.cached_property
    def corpus(self) -> text.TextCorpus:
        """The corpus: training head and held-out tail (read once per task)."""
        t = self.config.text
        return text.load_text(self.config.data.dataset, t.vocabulary, t.holdout)

    def check_data(self) -> None:
        """The text exists, decodes, and holds a training window and a held-out window."""
        corpus, length = self.corpus, self.config.text.seq_len
        for part, ids, fix in (("training", corpus.train, "a shorter text.seq_len or a longer text"),
                               ("held-out", corpus.test, "a shorter text.seq_len or a larger text.holdout")):
            if length > len(ids):
                raise ValueError(f"invalid config: text.seq_len={length}, but the {part} text of "
                                 f"{self.config.data.dataset} holds {len(ids)} symbols; allowed: {fix}")

    def data_fingerprint(self) -> dict:
        return self.corpus.fingerprint()

    def memory_floor(self) -> list[tuple[int, str, str]]:
        """One layer's attention logits and the output logits of one batch: both float32 and held at
        once during the backward pass, whatever else the step needs."""
        d, m, s, length = self.config.data, self.config.model, self.config.schedule, self.config.text.seq_len
        per_device = d.batch_size // (s.data_shards if s.name == "parallel" else 1)
        keys = self.attention_width * length
        return [(4 * per_device * length * (m.num_heads * keys + self.vocab_size), "device",
                 f"attention and output logits of {per_device} sequences of text.seq_len={length} "
                 f"(model.num_heads={m.num_heads}, {self.vocab_size} symbols)")]

    def train_batches(self, block: int):
        return self.corpus.batches(self.config.text.seq_len, self.config.data.batch_size,
                                   seed=(self.config.run.seed, block))

    def batch_spec(self, batch_size: int) -> dict:
        return {"tokens": jax.ShapeDtypeStruct((batch_size, self.config.text.seq_len), jnp.int32)}

    def decode(self, tokens) -> str:
        return text.decode(np.asarray(tokens), self.config.text.vocabulary)
