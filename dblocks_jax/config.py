"""The run configuration: frozen sections, named presets, `--set section.field=value` overrides.

`Config` composes the engine's sections (`partition`, `optim`, `schedule`, `sampling`, `run`,
from `dblocks_jax.engine.settings`) with the task-level ones defined here (`data`, `model`,
`noise`), and names the task. Every field declares its role next to it (see `engine.settings`):
resume, assembly and the experiment sweeps read roles from there. Validation is pure (no I/O):
a bad value fails with its path and the allowed values before JAX traces or compiles anything;
what needs I/O (a TFDS dataset's metadata) is checked when the task opens its data, still
before compiling.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax.numpy as jnp

from dblocks_jax.data.augment import AUGMENTS
from dblocks_jax.engine import settings
from dblocks_jax.engine.precision import DTYPES
from dblocks_jax.engine.settings import (ASSEMBLY, FREE, IDENTITY, SAMPLING, OptimConfig, PartitionConfig, RunConfig,
                                         SamplingConfig, ScheduleConfig, Section, require, section, setting)

FORMAT = 2  # of config.json; 1 was the flat config of dblocks-jax 0.1
TASKS = ("image_generation", "image_classification", "masked_lm", "autoregressive_lm", "recurrent_lm")
# The network family each task builds.
FAMILIES = {"image_generation": "dit", "image_classification": "vit", "masked_lm": "transformer",
            "autoregressive_lm": "transformer", "recurrent_lm": "transformer"}
POSITIONS = ("learned", "rope")
ATTENTIONS = ("auto", "xla", "cudnn")
OBJECTIVES = ("diffusion", "plain")
BRIDGES = ("soft", "normalised", "hard")
RECURRENT_METHODS = ("diffusion", "huginn")
RECURRENT_TARGETS = ("token", "prelude")
RECURRENT_WEIGHTINGS = ("edm", "none")


@dataclasses.dataclass(frozen=True)
class DataConfig(Section):
    _path = "data"
    dataset: str = setting("shapes", ASSEMBLY, "a bundled dataset (shapes, digits, patterns), tfds:<name>, or text: "
                                               "pydoc, textfile:PATH, text8:PATH")
    image_size: int = setting(16, ASSEMBLY, "every dataset is delivered at this size")
    batch_size: int = setting(64, IDENTITY, "examples per block step")
    augment: str = setting("none", IDENTITY, "training augmentation: " + ", ".join(AUGMENTS))

    def check(self):
        from dblocks_jax.data import dataset_names
        from dblocks_jax.data.text import is_text_source

        require(self.dataset in dataset_names() or is_text_source(self.dataset), self.field("dataset"), self.dataset,
                f"one of {', '.join(dataset_names())}, tfds:<name>, or a text source (pydoc, textfile:PATH, "
                f"text8:PATH)")
        require(self.image_size >= 1, self.field("image_size"), self.image_size, "an integer >= 1")
        require(self.batch_size >= 1, self.field("batch_size"), self.batch_size, "an integer >= 1")
        require(self.augment in AUGMENTS, self.field("augment"), self.augment, ", ".join(AUGMENTS))


@dataclasses.dataclass(frozen=True)
class ModelConfig(Section):
    """The network cut into blocks: `num_layers` in all, `num_layers / num_blocks` per block, or
    `layer_split` (e.g. "3,6,3", the paper's uneven splits). B = 1 is the end-to-end baseline."""

    _path = "model"
    family: str = setting("dit", ASSEMBLY, "network family of a block: dit (image_generation), vit "
                                           "(image_classification), transformer (the language tasks)")
    num_layers: int = setting(8, ASSEMBLY)
    num_blocks: int = setting(4, ASSEMBLY, "B (1: end-to-end)")
    layer_split: str = setting("", ASSEMBLY, "layers per block, e.g. 3,6,3; empty: equal blocks")
    width: int = setting(96, ASSEMBLY)
    num_heads: int = setting(4, ASSEMBLY)
    patch_size: int = setting(2, ASSEMBLY)
    mlp_ratio: float = setting(4.0, ASSEMBLY)
    class_conditional: bool = setting(True, ASSEMBLY, "condition on the class (with a null class for guidance)")
    label_dropout: float = setting(0.1, IDENTITY, "share of training labels replaced by the null class")
    dropout: float = setting(0.0, IDENTITY, "dropout on the embeddings and residual branches (vit, transformer)")
    positions: str = setting("learned", ASSEMBLY, "token positions of the transformer: learned (a table) or rope "
                                                  "(rotary, in every attention)")
    dtype: str = setting("auto", IDENTITY, "compute dtype of matmuls and activations (parameters, optimizer state, "
                                           "loss and softmax stay float32); auto: bfloat16 on GPU/TPU, float32 on "
                                           "CPU, resolved when the task is built")
    attention: str = setting("auto", FREE, "jax.nn.dot_product_attention implementation: auto (cuDNN flash "
                                           "attention where the GPU and shapes allow, XLA elsewhere), xla, cudnn")
    remat: bool = setting(False, IDENTITY, "jax.checkpoint around every layer")
    scan_layers: bool = setting(True, FREE, "apply the layers with lax.scan (compile time flat in depth); "
                                            "false: unrolled (less memory, compile time grows with depth)")

    def check(self):
        families = sorted(set(FAMILIES.values()))
        require(self.family in families, self.field("family"), self.family, ", ".join(families))
        require(self.positions in POSITIONS, self.field("positions"), self.positions, ", ".join(POSITIONS))
        require(self.num_blocks >= 1, self.field("num_blocks"), self.num_blocks, "an integer >= 1")
        require(self.num_layers >= 1, self.field("num_layers"), self.num_layers, "an integer >= 1")
        if self.layer_split:
            try:
                depths = [int(v) for v in self.layer_split.split(",")]
            except ValueError:
                depths = []
            require(len(depths) == self.num_blocks and min(depths, default=0) >= 1
                    and sum(depths) == self.num_layers, self.field("layer_split"), self.layer_split,
                    f"{self.num_blocks} comma-separated integers >= 1 that sum to num_layers={self.num_layers}, "
                    f"e.g. 3,6,3 (or empty: equal blocks)")
        else:
            require(self.num_layers % self.num_blocks == 0, self.field("num_layers"), self.num_layers,
                    f"a multiple of model.num_blocks={self.num_blocks} (every block gets num_layers / num_blocks "
                    f"layers), or set model.layer_split")
        require(self.width >= 1 and self.num_heads >= 1 and self.width % self.num_heads == 0, self.field("width"),
                self.width, f"a positive multiple of model.num_heads={self.num_heads}")
        require(self.patch_size >= 1, self.field("patch_size"), self.patch_size, "an integer >= 1")
        require(self.mlp_ratio > 0, self.field("mlp_ratio"), self.mlp_ratio, "a number > 0")
        require(0.0 <= self.label_dropout < 1.0, self.field("label_dropout"), self.label_dropout, "a number in [0, 1)")
        require(0.0 <= self.dropout < 1.0, self.field("dropout"), self.dropout, "a number in [0, 1)")
        require(self.dtype in DTYPES, self.field("dtype"), self.dtype, ", ".join(DTYPES))
        require(self.attention in ATTENTIONS, self.field("attention"), self.attention, ", ".join(ATTENTIONS))

    @property
    def block_depths(self) -> tuple[int, ...]:
        """Layers of each block: `layer_split`, or num_layers / num_blocks each."""
        if self.layer_split:
            return tuple(int(v) for v in self.layer_split.split(","))
        return (self.num_layers // self.num_blocks,) * self.num_blocks

    @property
    def stack_options(self) -> dict:
        """What every network family passes to its layer stack: compute dtype, remat, scan and the
        attention implementation (`dtype` must be resolved: a task resolves `auto` when built)."""
        return {"dtype": jnp.dtype(self.dtype), "remat": self.remat, "scan_layers": self.scan_layers,
                "attention": self.attention}

    @property
    def layers_per_block(self) -> int:
        """Layers a block is built with: the deepest block's (shallower blocks skip the rest)."""
        return max(self.block_depths)

    @property
    def uneven(self) -> bool:
        return len(set(self.block_depths)) > 1


@dataclasses.dataclass(frozen=True)
class NoiseConfig(Section):
    """EDM's constants (Karras et al. 2022): training levels ln sigma ~ N(p_mean, p_std^2) truncated
    to [sigma_min, sigma_max]; sigma_data scales the preconditioning."""

    _path = "noise"
    sigma_min: float = setting(0.002, ASSEMBLY)
    sigma_max: float = setting(80.0, ASSEMBLY)
    sigma_data: float = setting(0.5, ASSEMBLY)
    p_mean: float = setting(-1.2, ASSEMBLY)
    p_std: float = setting(1.2, ASSEMBLY)

    def check(self):
        require(0 < self.sigma_min < self.sigma_max, self.field("sigma_min"), self.sigma_min,
                f"a number in (0, noise.sigma_max={self.sigma_max}), i.e. sigma_min < sigma_max")
        require(self.sigma_data > 0, self.field("sigma_data"), self.sigma_data, "a number > 0")
        require(self.p_std > 0, self.field("p_std"), self.p_std, "a number > 0")


@dataclasses.dataclass(frozen=True)
class ClassifyConfig(Section):
    """Image classification (paper Table 1). `objective`: "diffusion" trains each block to denoise
    the label's normalised embedding (DiffusionBlocks; B = 1 is its end-to-end twin), "plain" is an
    ordinary ViT trained with cross-entropy (B = 1 only). The two `official_*` switches reproduce
    the released code's defects (DESIGN sec. 9), so that their cost can be measured."""

    _path = "classify"
    objective: str = setting("diffusion", ASSEMBLY, ", ".join(OBJECTIVES))
    num_classes: int = setting(0, ASSEMBLY, "0: the dataset's; otherwise checked against it")
    steps: int = setting(0, SAMPLING, "network calls of the inference chain (0: one per block, at least 2)")
    official_weight: bool = setting(False, IDENTITY, "released-code defect 1: the EDM weight as one per-batch "
                                                     "scalar, (ce * w[:, None]).mean()")
    official_table: bool = setting(False, SAMPLING, "released-code defect 2: inference mixes the un-normalised "
                                                    "label table")

    def check(self):
        require(self.objective in OBJECTIVES, self.field("objective"), self.objective, ", ".join(OBJECTIVES))
        require(self.num_classes == 0 or self.num_classes >= 2, self.field("num_classes"), self.num_classes,
                "0 (the dataset's) or an integer >= 2")
        require(self.steps == 0 or self.steps >= 2, self.field("steps"), self.steps,
                "0 (one call per block) or an integer >= 2")


@dataclasses.dataclass(frozen=True)
class TextConfig(Section):
    """The language tasks' data and masking (DESIGN secs. 10, 13). The held-out text is the tail
    of the corpus (`holdout` of it; text8: its standard test split; TFDS: its test split)."""

    _path = "text"
    vocabulary: str = setting("text8", ASSEMBLY, "text8 (27 symbols: a-z and space) or bytes (256)")
    seq_len: int = setting(128, ASSEMBLY, "symbols per sequence")
    holdout: float = setting(0.1, IDENTITY, "share of the corpus held out at its tail (never trained on)")
    mask_eps: float = setting(1e-4, ASSEMBLY, "MD4's eps: alpha_t = (1 - 2 eps)(1 - t) + eps")
    eval_sequences: int = setting(0, SAMPLING, "held-out windows scored by evaluate (0: all)")
    eval_draws: int = setting(4, SAMPLING, "values of t (and masks) per window and band when scoring")

    def check(self):
        from dblocks_jax.data.text import VOCABULARIES

        require(self.vocabulary in VOCABULARIES, self.field("vocabulary"), self.vocabulary, ", ".join(VOCABULARIES))
        require(self.seq_len >= 2, self.field("seq_len"), self.seq_len, "an integer >= 2")
        require(0.0 < self.holdout < 1.0, self.field("holdout"), self.holdout, "a fraction in (0, 1)")
        require(0.0 < self.mask_eps < 0.5, self.field("mask_eps"), self.mask_eps, "a number in (0, 0.5)")
        require(self.eval_draws >= 1, self.field("eval_draws"), self.eval_draws, "an integer >= 1")
        require(self.eval_sequences >= 0, self.field("eval_sequences"), self.eval_sequences,
                "0 (every held-out window) or an integer >= 1")


@dataclasses.dataclass(frozen=True)
class ARConfig(Section):
    """The autoregressive language model (paper Table 4, DESIGN sec. 11). `objective`: "diffusion"
    trains each block to denoise the next token's normalised embedding; "plain" is the ordinary
    next-token transformer (B = 1). `bridge` turns a block's logits into the state D the chain
    steps towards: soft = softmax @ E-hat (the paper's), normalised = the same rescaled to unit
    norm, hard = E-hat[argmax]."""

    _path = "ar"
    objective: str = setting("diffusion", ASSEMBLY, ", ".join(OBJECTIVES))
    bridge: str = setting("soft", SAMPLING, ", ".join(BRIDGES))
    steps: int = setting(0, SAMPLING, "network calls per generated token (0: one per block, at least 2)")
    temperature: float = setting(1.0, SAMPLING, "of the read-out's softmax when generating (0: greedy)")
    top_p: float = setting(1.0, SAMPLING, "nucleus sampling: the smallest set of tokens holding this mass")
    mc_draws: int = setting(8, SAMPLING, "chain starting noises per token for the Monte-Carlo likelihood")
    prompt_len: int = setting(16, SAMPLING, "held-out prompt symbols for the generation metrics")
    gen_len: int = setting(48, SAMPLING, "symbols generated per prompt by evaluate")

    def check(self):
        require(self.objective in OBJECTIVES, self.field("objective"), self.objective, ", ".join(OBJECTIVES))
        require(self.bridge in BRIDGES, self.field("bridge"), self.bridge, ", ".join(BRIDGES))
        require(self.steps == 0 or self.steps >= 2, self.field("steps"), self.steps,
                "0 (one call per block) or an integer >= 2")
        require(self.temperature >= 0, self.field("temperature"), self.temperature, "a number >= 0 (0: greedy)")
        require(0 < self.top_p <= 1, self.field("top_p"), self.top_p, "a number in (0, 1]")
        require(self.mc_draws >= 1, self.field("mc_draws"), self.mc_draws, "an integer >= 1")
        require(self.prompt_len >= 1, self.field("prompt_len"), self.prompt_len, "an integer >= 1")
        require(self.gen_len >= 1, self.field("gen_len"), self.gen_len, "an integer >= 1")


@dataclasses.dataclass(frozen=True)
class RecurrentConfig(Section):
    """The recurrent-depth LM (paper Table 5, DESIGN sec. 12): prelude, a core iterated K times,
    coda. `method`: "huginn" trains with K ~ Poisson-log-normal iterations from noise and
    backpropagates through the last `backprop_steps`; "diffusion" (DiffusionBlocks, B = 1) trains
    one core pass on a noisy target state. Generation reads `ar.temperature/top_p/prompt_len/gen_len`."""

    _path = "recurrent"
    method: str = setting("diffusion", ASSEMBLY, ", ".join(RECURRENT_METHODS))
    prelude: int = setting(2, ASSEMBLY, "prelude layers")
    core: int = setting(4, ASSEMBLY, "core layers (iterated)")
    coda: int = setting(2, ASSEMBLY, "coda layers")
    target: str = setting("token", ASSEMBLY, "diffusion's clean state: token (the next token's row of a learned "
                                             "table) or prelude (the prelude's output at the next position, without "
                                             "gradient); both normalised to RMS noise.sigma_data")
    weighting: str = setting("edm", IDENTITY, "diffusion: the cross-entropy's weight over sigma, edm (lambda(sigma), "
                                              "Karras et al. eq. 8) or none")
    mean_steps: float = setting(32.0, IDENTITY, "huginn: mean of the training iterations K")
    steps_sigma: float = setting(0.5, IDENTITY, "huginn: std of log-rate of K's Poisson-log-normal law")
    backprop_steps: int = setting(8, IDENTITY, "huginn: iterations backpropagated through (the last ones)")
    state_std: float = setting(0.63, IDENTITY, "huginn: std of the starting state s_0")
    steps: int = setting(32, SAMPLING, "core iterations at inference (K; diffusion: network calls of the chain)")
    mc_draws: int = setting(8, SAMPLING, "starting noises whose predictions are mixed into the likelihood (both "
                                        "methods, every K)")

    def check(self):
        require(self.method in RECURRENT_METHODS, self.field("method"), self.method, ", ".join(RECURRENT_METHODS))
        require(self.target in RECURRENT_TARGETS, self.field("target"), self.target, ", ".join(RECURRENT_TARGETS))
        require(self.weighting in RECURRENT_WEIGHTINGS, self.field("weighting"), self.weighting,
                ", ".join(RECURRENT_WEIGHTINGS))
        for name in ("prelude", "core", "coda", "backprop_steps", "steps", "mc_draws"):
            require(getattr(self, name) >= 1, self.field(name), getattr(self, name), "an integer >= 1")
        require(self.mean_steps >= 2, self.field("mean_steps"), self.mean_steps, "a number >= 2 (K = 1 + Poisson)")
        require(self.steps_sigma > 0, self.field("steps_sigma"), self.steps_sigma, "a number > 0")
        require(self.state_std > 0, self.field("state_std"), self.state_std, "a number > 0")


@dataclasses.dataclass(frozen=True)
class Config(Section):
    """Everything that defines a run. `replace` takes dotted paths: `config.replace(**{"optim.steps": 3})`
    or `config.override({"optim.steps": 3})`."""

    task: str = setting("image_generation", ASSEMBLY, ", ".join(TASKS))
    data: DataConfig = section(DataConfig)
    model: ModelConfig = section(ModelConfig)
    noise: NoiseConfig = section(NoiseConfig)
    classify: ClassifyConfig = section(ClassifyConfig)
    text: TextConfig = section(TextConfig)
    ar: ARConfig = section(ARConfig)
    recurrent: RecurrentConfig = section(RecurrentConfig)
    partition: PartitionConfig = section(PartitionConfig)
    optim: OptimConfig = section(OptimConfig)
    schedule: ScheduleConfig = section(ScheduleConfig)
    sampling: SamplingConfig = section(SamplingConfig)
    run: RunConfig = section(RunConfig)

    def check(self):
        require(self.task in TASKS, "task", self.task, ", ".join(TASKS))
        require(self.model.family == FAMILIES[self.task], "model.family", self.model.family,
                f"{FAMILIES[self.task]} (the family of task {self.task})")
        s = self.schedule
        require(s.block_shards == 0 or self.model.num_blocks % s.block_shards == 0, "schedule.block_shards",
                s.block_shards, f"0 (automatic) or a divisor of model.num_blocks={self.model.num_blocks} (every "
                                f"device trains the same number of blocks)")
        require(self.data.batch_size % s.data_shards == 0, "schedule.data_shards", s.data_shards,
                f"a positive divisor of data.batch_size={self.data.batch_size}")
        from dblocks_jax.tasks import task_class

        task = task_class(self.task)
        for path in task.unused_fields:
            section, name = path.split(".")
            value = getattr(getattr(self, section), name)
            default = {f.name: f.default for f in dataclasses.fields(type(getattr(self, section)))}[name]
            require(value == default, path, value, f"{default!r}, its default: task {self.task} does not use it")
        task.validate(self)

    def override(self, overrides: dict[str, Any]) -> "Config":
        check_paths(overrides)
        return settings.with_overrides(self, overrides)

    def replace(self, **overrides: Any) -> "Config":
        return self.override(overrides)

    def to_dict(self) -> dict:
        return {"format": FORMAT, **dataclasses.asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> "Config":
        """A config from `to_dict()`'s form. A flat config of dblocks-jax 0.1 (no "format") is
        refused with what wrote it: its checkpoints hold unstacked layers this version cannot read."""
        if not isinstance(values, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(values).__name__}")
        values = dict(values)
        fmt = values.pop("format", 1)
        if fmt != FORMAT and fmt != 1:
            raise ValueError(f"{source} has config format {fmt!r}; this version of dblocks-jax reads format {FORMAT}")
        if fmt != FORMAT:
            raise ValueError(f"{source} was written by dblocks-jax 0.1 (flat config format {fmt}); this is "
                             f"version 0.2 (config format {FORMAT}, scanned layer stacks), which cannot read its "
                             f"checkpoints. Retrain with this version, or sample it with dblocks-jax 0.1")
        overrides = {}
        for name, value in values.items():
            if isinstance(value, dict):
                overrides.update({f"{name}.{k}": v for k, v in value.items()})
            else:
                overrides[name] = value
        return cls().override(overrides)


def check_paths(overrides: dict[str, Any]) -> None:
    """Refuse unknown paths; an old flat name gets its new path."""
    known = settings.field_types(Config)
    unknown = sorted(set(overrides) - set(known))
    if not unknown:
        return
    hints = []
    for name in unknown:
        moved = FLAT_NAMES.get(name) or next((p for p in known if p.endswith("." + name)), None)
        hints.append(f"{name} (now {moved})" if moved else name)
    raise ValueError(f"unknown config field(s) {', '.join(hints)}; allowed: {', '.join(sorted(known))}")


# Where each field of the flat 0.1 config went (names that did not change their last part are
# found by suffix).
FLAT_NAMES = {"dataset": "data.dataset", "image_size": "data.image_size", "batch_size": "data.batch_size",
              "partition": "partition.strategy", "schedule": "schedule.name", "steps": "optim.steps",
              "seed": "run.seed", "sample_steps": "sampling.steps", "solver": "sampling.solver",
              "grid": "sampling.grid", "guidance": "sampling.guidance", "num_samples": "sampling.num_samples"}


def flat_to_nested(flat: dict) -> dict[str, Any]:
    """{path: value} of a 0.1 flat config (used to compare old experiment records with new runs)."""
    known = settings.field_types(Config)
    out = {}
    for name, value in flat.items():
        path = FLAT_NAMES.get(name) or next((p for p in known if p.endswith("." + name)), None)
        if path is not None:
            out[path] = value
    return out


def parse_overrides(assignments: list[str]) -> dict[str, Any]:
    """CLI `section.field=value` strings as typed {path: value}."""
    types = settings.field_types(Config)
    overrides: dict[str, Any] = {}
    for assignment in assignments:
        path, sep, raw = assignment.partition("=")
        path = path.strip()
        if not sep:
            raise ValueError(f"--set expects section.field=value, got {assignment!r}")
        check_paths({path: None})
        overrides[path] = settings.parse_value(path, raw.strip(), types[path])
    return overrides
