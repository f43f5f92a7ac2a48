"""Typed, frozen run configuration, named presets and `field=value` overrides.

One flat dataclass so that every knob can be set the same way from Python
(`get_config("shapes", num_blocks=2)`) and from the CLI (`--set num_blocks=2`). Validation runs in
`__post_init__`, so a bad value fails with the field's name and the allowed values before JAX
traces or compiles anything.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

from dblocks_jax import data

PARTITIONS = ("equiprobable", "uniform_log")
SCHEDULES = ("interleaved", "sequential", "parallel")
SOLVERS = ("euler", "heun")
GRIDS = ("equiprobable", "karras")
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that defines a run. `steps` counts optimizer steps *per block* (compute parity,
    DESIGN.md section 3): an end-to-end run (num_blocks=1) of N steps evaluates every layer
    N times, and so does a DiffusionBlocks run where each block takes N steps."""

    # Data.
    dataset: str = "shapes"
    image_size: int = 16
    # Architecture (DESIGN.md section 3): num_layers in total, num_layers // num_blocks per block.
    num_layers: int = 8
    num_blocks: int = 4
    layer_split: str = ""  # layers per block, e.g. "3,6,3" (the paper's Table 4); empty: num_layers / num_blocks each
    width: int = 96
    num_heads: int = 4
    patch_size: int = 2
    mlp_ratio: float = 4.0
    class_conditional: bool = True
    label_dropout: float = 0.1
    dtype: str = "float32"  # compute dtype of the matmuls; parameters stay float32
    remat: bool = False  # jax.checkpoint around every transformer layer
    # Noise model (DESIGN.md section 2).
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2
    partition: str = "equiprobable"
    overlap: float = 0.05
    # Optimisation: AdamW, linear warmup then cosine decay, global-norm clipping.
    schedule: str = "interleaved"
    steps: int = 700
    batch_size: int = 64
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    ema_decay: float = 0.995  # of the parameters that sampling uses; 0 samples from the raw parameters
    seed: int = 0
    log_every: int = 50
    # Block parallelism (schedule="parallel"): a ('block', 'data') device mesh. block_shards devices
    # split the blocks (0: as many as the devices allow), data_shards devices split each batch.
    block_shards: int = 0
    data_shards: int = 1
    # Checkpoints: every `checkpoint_every` steps of the run (0: only when a block finishes), the
    # newest `keep_checkpoints` kept per block, so that --resume can fall back past a bad one.
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    # Sampling.
    sample_steps: int = 50
    solver: str = "euler"
    grid: str = "equiprobable"
    guidance: float = 2.0
    num_samples: int = 64

    def __post_init__(self):
        _validate(self)

    @property
    def block_depths(self) -> tuple[int, ...]:
        """Layers of each block: `layer_split`, or num_layers / num_blocks each."""
        if self.layer_split:
            return tuple(int(v) for v in self.layer_split.split(","))
        return (self.num_layers // self.num_blocks,) * self.num_blocks

    @property
    def layers_per_block(self) -> int:
        """Layers a block is built with: the deepest block's (DESIGN.md section 3; with an uneven
        split, shallower blocks skip their extra layers)."""
        return max(self.block_depths)

    @property
    def uneven(self) -> bool:
        return len(set(self.block_depths)) > 1

    @property
    def dataset_info(self) -> data.DatasetInfo:
        return data.dataset_info(self.dataset)

    @property
    def num_classes(self) -> int:
        """Classes the model is conditioned on; 0 for an unconditional model."""
        return self.dataset_info.num_classes if self.class_conditional else 0

    def replace(self, **overrides: Any) -> "Config":
        _check_fields(overrides)
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        _check_fields(values)
        return cls(**values)


# Fields that only affect sampling, logging or checkpoint cadence: a resumed run may change them.
RESUMABLE_CHANGES = frozenset({"sample_steps", "solver", "grid", "guidance", "num_samples", "log_every",
                               "checkpoint_every", "keep_checkpoints", "block_shards", "data_shards"})


def config_differences(a: Config, b: Config, ignore=RESUMABLE_CHANGES) -> list[str]:
    """`field: a -> b` for every field (outside `ignore`) where two configs disagree."""
    da, db = a.to_dict(), b.to_dict()
    return [f"{k}: {da[k]!r} -> {db[k]!r}" for k in da if k not in ignore and da[k] != db[k]]


def get_config(name: str, **overrides: Any) -> Config:
    """The preset called `name`, with `overrides` applied (and validated)."""
    if name not in PRESETS:
        raise ValueError(f"unknown config preset {name!r}; allowed: {', '.join(sorted(PRESETS))}")
    return PRESETS[name].replace(**overrides)


def parse_overrides(assignments: list[str]) -> dict[str, Any]:
    """Parse CLI `field=value` strings into typed values using the dataclass annotations."""
    types = typing.get_type_hints(Config)
    overrides: dict[str, Any] = {}
    for assignment in assignments:
        field, sep, raw = assignment.partition("=")
        field = field.strip()
        if not sep:
            raise ValueError(f"--set expects field=value, got {assignment!r}")
        _check_fields({field: None})
        overrides[field] = _parse_value(field, raw.strip(), types[field])
    return overrides


def _parse_value(field: str, raw: str, kind: type) -> Any:
    if kind is bool:
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{field} must be a boolean (true/false), got {raw!r}")
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{field} must be of type {kind.__name__}, got {raw!r}") from None


def _check_fields(values: dict) -> None:
    names = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown config field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")


def _require(ok: bool, field: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ValueError(f"invalid config: {field}={value!r}; allowed: {allowed}")


def _validate(c: Config) -> None:
    types = typing.get_type_hints(Config)
    for f in dataclasses.fields(c):
        value, kind = getattr(c, f.name), types[f.name]
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        _require(ok, f.name, value, f"a value of type {kind.__name__}")

    _require(c.dataset in data.dataset_names() or c.dataset.startswith("tfds:"), "dataset", c.dataset,
             f"one of {', '.join(data.dataset_names())} or tfds:<name>")
    try:
        c.dataset_info  # noqa: B018 -- for tfds:<name>, reads the builder's metadata (no download)
    except ValueError as err:
        raise ValueError(f"invalid config: dataset={c.dataset!r}; {err}") from None
    _require(c.image_size >= 1, "image_size", c.image_size, "an integer >= 1")
    _require(c.num_blocks >= 1, "num_blocks", c.num_blocks, "an integer >= 1 that divides num_layers")
    _require(c.num_layers >= 1, "num_layers", c.num_layers, "an integer >= 1")
    if c.layer_split:
        try:
            depths = [int(v) for v in c.layer_split.split(",")]
        except ValueError:
            depths = []
        _require(len(depths) == c.num_blocks and min(depths, default=0) >= 1 and sum(depths) == c.num_layers,
                 "layer_split", c.layer_split, f"{c.num_blocks} comma-separated integers >= 1 that sum to "
                                               f"num_layers={c.num_layers}, e.g. 3,6,3 (or empty: equal blocks)")
    else:
        _require(c.num_layers % c.num_blocks == 0, "num_layers", c.num_layers,
                 f"a multiple of num_blocks={c.num_blocks} (every block gets num_layers / num_blocks layers), "
                 f"or set layer_split")
    _require(c.width >= 1 and c.num_heads >= 1 and c.width % c.num_heads == 0, "width", c.width,
             f"a positive multiple of num_heads={c.num_heads}")
    _require(c.patch_size >= 1 and c.image_size % c.patch_size == 0, "patch_size", c.patch_size,
             f"a positive divisor of image_size={c.image_size}")
    _require(c.mlp_ratio > 0, "mlp_ratio", c.mlp_ratio, "a number > 0")
    _require(0.0 <= c.label_dropout < 1.0, "label_dropout", c.label_dropout, "a number in [0, 1)")
    _require(c.dtype in DTYPES, "dtype", c.dtype, ", ".join(DTYPES))
    _require(0 < c.sigma_min < c.sigma_max, "sigma_min", c.sigma_min,
             f"a number in (0, sigma_max={c.sigma_max}), i.e. sigma_min < sigma_max")
    _require(c.sigma_data > 0, "sigma_data", c.sigma_data, "a number > 0")
    _require(c.p_std > 0, "p_std", c.p_std, "a number > 0")
    _require(c.partition in PARTITIONS, "partition", c.partition, ", ".join(PARTITIONS))
    _require(0.0 <= c.overlap < 0.5, "overlap", c.overlap, "a number in [0, 0.5)")
    _require(c.schedule in SCHEDULES, "schedule", c.schedule, ", ".join(SCHEDULES))
    _require(c.steps >= 1, "steps", c.steps, "an integer >= 1")
    _require(c.batch_size >= 1, "batch_size", c.batch_size, "an integer >= 1")
    _require(c.learning_rate > 0, "learning_rate", c.learning_rate, "a number > 0")
    _require(c.warmup_steps >= 0, "warmup_steps", c.warmup_steps, "an integer >= 0")
    _require(c.weight_decay >= 0, "weight_decay", c.weight_decay, "a number >= 0")
    _require(c.grad_clip > 0, "grad_clip", c.grad_clip, "a number > 0")
    _require(0 <= c.adam_b1 < 1, "adam_b1", c.adam_b1, "a number in [0, 1)")
    _require(0 <= c.adam_b2 < 1, "adam_b2", c.adam_b2, "a number in [0, 1)")
    _require(0 <= c.ema_decay < 1, "ema_decay", c.ema_decay, "a number in [0, 1) (0 disables the EMA)")
    _require(c.log_every >= 1, "log_every", c.log_every, "an integer >= 1")
    _require(c.block_shards >= 0 and (c.block_shards == 0 or c.num_blocks % c.block_shards == 0), "block_shards",
             c.block_shards, f"0 (automatic) or a divisor of num_blocks={c.num_blocks} (every device trains "
                             f"the same number of blocks)")
    _require(c.data_shards >= 1 and c.batch_size % c.data_shards == 0, "data_shards", c.data_shards,
             f"a positive divisor of batch_size={c.batch_size}")
    _require(c.schedule == "parallel" or (c.block_shards in (0, 1) and c.data_shards == 1), "schedule", c.schedule,
             f"'parallel' when block_shards={c.block_shards} or data_shards={c.data_shards} asks for a device mesh")
    _require(c.checkpoint_every >= 0, "checkpoint_every", c.checkpoint_every, "an integer >= 0 (0: at block ends)")
    _require(c.keep_checkpoints >= 1, "keep_checkpoints", c.keep_checkpoints, "an integer >= 1")
    _require(c.sample_steps >= 1, "sample_steps", c.sample_steps, "an integer >= 1")
    _require(c.solver in SOLVERS, "solver", c.solver, ", ".join(SOLVERS))
    _require(c.grid in GRIDS, "grid", c.grid, ", ".join(GRIDS))
    _require(c.guidance >= 0, "guidance", c.guidance, "a number >= 0 (1 = plain conditional sampling)")
    _require(c.num_samples >= 1, "num_samples", c.num_samples, "an integer >= 1")


PRESETS: dict[str, Config] = {
    # Tiny DiT (8 layers, width 96) on the embedded shapes dataset: B = 4 trains on a 2-core CPU in
    # about 6 minutes and draws recognisable shapes (README, "Quickstart").
    "shapes": Config(),
    # The paper's DiT-S/2 CIFAR-10 setting (DESIGN.md section 6), for GPU/TPU.
    "cifar10_dit_s": Config(
        dataset="tfds:cifar10",
        image_size=32,
        num_layers=12,
        num_blocks=3,
        width=384,
        num_heads=6,
        patch_size=2,
        batch_size=512,
        learning_rate=1e-4,
        warmup_steps=0,
        steps=400_000,
        guidance=2.0,
        ema_decay=0.9999,
        log_every=100,
    ),
}
