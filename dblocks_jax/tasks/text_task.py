"""What the language tasks share: the `text` config section (vocabulary, window length, held-out
share), a text source (`data.corpus`), its held-out tail, the checks of the window length against
it, the training stream of windows and the memory a batch needs; and the `generation` section of
the tasks that continue a prompt. `MaskedLM`, `AutoregressiveLM` and `RecurrentLM` build on it."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from dblocks_jax.data import corpus as corpora
from dblocks_jax.data import dataset_names, text
from dblocks_jax.engine.settings import ASSEMBLY, IDENTITY, SAMPLING, Section, require, setting
from dblocks_jax.tasks.base import CHURN_FIELDS, Task


@dataclasses.dataclass(frozen=True)
class TextConfig(Section):
    """The language tasks' data and masking. The held-out text is the tail of the corpus
    (`holdout` of it; text8: its standard test split; TFDS: its test split)."""

    _path = "text"
    vocabulary: str = setting("text8", ASSEMBLY, "text8 (27 symbols: a-z and space) or bytes (256)")
    seq_len: int = setting(128, ASSEMBLY, "symbols per sequence")
    holdout: float = setting(0.1, IDENTITY, "share of the corpus held out at its tail (never trained on)")
    mask_eps: float = setting(1e-4, ASSEMBLY, "masked_lm: MD4's eps, alpha_t = (1 - 2 eps)(1 - t) + eps")
    eval_sequences: int = setting(0, SAMPLING, "held-out windows scored by evaluate (0: all)")
    eval_draws: int = setting(4, SAMPLING, "masked_lm: values of t (and masks) per window and band when scoring")

    def check(self):
        require(self.vocabulary in text.VOCABULARIES, self.field("vocabulary"), self.vocabulary,
                ", ".join(text.VOCABULARIES))
        require(self.seq_len >= 2, self.field("seq_len"), self.seq_len, "an integer >= 2")
        require(0.0 < self.holdout < 1.0, self.field("holdout"), self.holdout, "a fraction in (0, 1)")
        require(0.0 < self.mask_eps < 0.5, self.field("mask_eps"), self.mask_eps, "a number in (0, 0.5)")
        require(self.eval_draws >= 1, self.field("eval_draws"), self.eval_draws, "an integer >= 1")
        require(self.eval_sequences >= 0, self.field("eval_sequences"), self.eval_sequences,
                "0 (every held-out window) or an integer >= 1")


@dataclasses.dataclass(frozen=True)
class GenerationConfig(Section):
    """How the tasks that continue a prompt generate (`evaluate`'s continuations of held-out
    prompts, `sample`): a prompt of `prompt_len` symbols, `gen_len` new ones, each drawn from the
    read-out's softmax at `temperature` inside the nucleus `top_p`."""

    _path = "generation"
    temperature: float = setting(1.0, SAMPLING, "of the read-out's softmax (0: greedy)")
    top_p: float = setting(1.0, SAMPLING, "nucleus sampling: the smallest set of symbols holding this mass")
    prompt_len: int = setting(16, SAMPLING, "held-out prompt symbols for the generation metrics")
    gen_len: int = setting(48, SAMPLING, "symbols generated per prompt")

    def check(self):
        require(self.temperature >= 0, self.field("temperature"), self.temperature, "a number >= 0 (0: greedy)")
        require(0 < self.top_p <= 1, self.field("top_p"), self.top_p, "a number in (0, 1]")
        require(self.prompt_len >= 1, self.field("prompt_len"), self.prompt_len, "an integer >= 1")
        require(self.gen_len >= 1, self.field("gen_len"), self.gen_len, "an integer >= 1")


# What the language tasks' presets share: the CPU scale on Python's bundled pydoc text, and the
# paper's LM1B setting (bytes: no subword tokenizer ships offline).
PYDOC_CPU = {"data.dataset": "pydoc", "data.batch_size": 32, "text.seq_len": 64, "model.width": 64,
             "model.num_heads": 4, "optim.learning_rate": 2e-3, "optim.warmup_steps": 100, "sampling.num_samples": 8,
             "run.log_every": 50}
LM1B = {"data.dataset": "tfds:lm1b", "text.vocabulary": "bytes", "data.batch_size": 256, "text.seq_len": 256,
        "generation.gen_len": 128, "generation.prompt_len": 32, "sampling.num_samples": 64,
        "text.eval_sequences": 2048, "run.log_every": 100, "run.checkpoint_every": 10_000}

# Where version 0.2 kept the generation settings (in the autoregressive task's section).
GENERATION_RENAMES = {f"ar.{name}": f"generation.{name}" for name in ("temperature", "top_p", "prompt_len", "gen_len")}


class TextTask(Task):
    """A task whose batches are {"tokens": (N, text.seq_len) int32} windows of a text."""

    family = "transformer"
    sections = (TextConfig,)
    # Text is neither an image nor class-conditioned, and no language chain is an ODE sampler.
    unused_fields = ("data.image_size", "data.augment", "model.class_conditional", "model.label_dropout",
                     "model.patch_size", "sampling.solver", "sampling.guidance", *CHURN_FIELDS)

    # Attention rows a token reads per window, in units of text.seq_len (the autoregressive task's
    # noisy tokens read the clean stream too).
    attention_width = 1

    @classmethod
    def validate(cls, config) -> None:
        dataset = config.data.dataset
        require(text.is_text_source(dataset) and dataset not in dataset_names(), "data.dataset", dataset,
                f"a text source for task {config.task}: pydoc, textfile:PATH, text8:PATH or tfds:<text dataset>")
        default = TextConfig().holdout
        require(not dataset.startswith(("text8:", "tfds:")) or config.text.holdout == default, "text.holdout",
                config.text.holdout, f"{default}, its default: {dataset} holds out its own test split (text8: its "
                                     f"last 5 %; TFDS: the test split), so no share is cut from it")

    @staticmethod
    def require_generation_fits(config) -> None:
        """A prompt of generation.prompt_len plus generation.gen_len new symbols stays inside the
        trained context."""
        g, length = config.generation, config.text.seq_len
        require(g.prompt_len + g.gen_len <= length, "generation.gen_len", g.gen_len,
                f"at most text.seq_len - generation.prompt_len = {length - g.prompt_len} (generation stays inside "
                f"the trained context)")

    def __init__(self, config):
        self.vocab_size = text.vocab_size(config.text.vocabulary)  # make_block needs it; no I/O
        super().__init__(config)

    @functools.cached_property
    def corpus(self) -> text.TextCorpus:
        """The corpus: training head and held-out tail (read once per task)."""
        t = self.config.text
        return corpora.load_corpus(self.config.data.dataset, t.vocabulary, t.holdout)

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
