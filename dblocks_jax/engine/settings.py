"""Typed, frozen config sections whose fields declare their role once, next to the field.

A run's configuration is a tree of frozen dataclass *sections* (`optim`, `schedule`, ...), each
field made with `setting(default, role)`. The role says what a change of that field means, and
every consumer reads it from here instead of keeping its own list:

- `ASSEMBLY`: the model's identity across runs (architecture, data, noise law, partition): blocks
  trained in separate runs may be assembled into one model only if these agree; a resume with a
  different value is refused.
- `IDENTITY`: how the parameters were trained (seed, optimizer, steps): a resume with a different
  value is refused (the checkpoints would mix two trainings); assembled blocks may differ.
- `SAMPLING`: how samples are drawn; free to change on resume, part of what an experiment measures.
- `FREE`: bookkeeping (logging and checkpoint cadence, device layout); free to change.

This module is task-free: the engine's own sections live here; the other common sections (data,
model, noise) and the per-task config classes in `dblocks_jax.config`, each task's own sections
in its module.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Iterable

from dblocks_jax.engine.chain import GRIDS
from dblocks_jax.engine.partition import STRATEGIES
from dblocks_jax.engine.solvers import SOLVERS

ASSEMBLY, IDENTITY, SAMPLING, FREE = "assembly", "identity", "sampling", "free"
ROLES = (ASSEMBLY, IDENTITY, SAMPLING, FREE)
TRAINING_ROLES = (ASSEMBLY, IDENTITY)  # a change invalidates checkpoints


def setting(default: Any, role: str, doc: str = "") -> Any:
    """A config field with its role (and a one-line description for `--help`-style listings)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; allowed: {', '.join(ROLES)}")
    return dataclasses.field(default=default, metadata={"role": role, "doc": doc})


def section(cls: type) -> Any:
    """A section-valued field of a config (its default is the section's defaults)."""
    return dataclasses.field(default_factory=cls)


def require(ok: bool, path: str, value: Any, allowed: str) -> None:
    """Raise the project's one config error form: the field's path, its value and what is allowed."""
    if not ok:
        raise ValueError(f"invalid config: {path}={value!r}; allowed: {allowed}")


class Section:
    """Base of a config section: type checks every field on construction (a float field accepts
    an int; numbers must be finite), then runs the section's own `check`."""

    _path: typing.ClassVar[str] = ""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), hints[f.name]
            path = f"{self._path}.{f.name}" if self._path else f.name
            if dataclasses.is_dataclass(kind):
                require(isinstance(value, kind), path, value, f"a {kind.__name__} section")
                continue
            ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                ok = True
            require(ok, path, value, f"a value of type {kind.__name__}")
            if kind is float:
                require(math.isfinite(value), path, value, "a finite number")
        self.check()

    def check(self) -> None:
        """Ranges and choices of this section's fields (override)."""

    def field(self, name: str) -> str:
        return f"{self._path}.{name}"


# --------------------------------------------------------------------------------------------------
# The engine's sections


@dataclasses.dataclass(frozen=True)
class PartitionConfig(Section):
    _path = "partition"
    strategy: str = setting("equiprobable", ASSEMBLY, "equiprobable: equal training mass per band; uniform_log")
    overlap: float = setting(0.05, ASSEMBLY, "gamma: each band widened by this fraction of its log-width")

    def check(self):
        require(self.strategy in STRATEGIES, self.field("strategy"), self.strategy, ", ".join(STRATEGIES))
        require(0.0 <= self.overlap < 0.5, self.field("overlap"), self.overlap, "a number in [0, 0.5)")


@dataclasses.dataclass(frozen=True)
class OptimConfig(Section):
    """AdamW on linear warm-up then cosine decay, after global-norm clipping; one state per block.
    `steps` counts optimizer steps *per block*: compute parity with an end-to-end run of `steps`."""

    _path = "optim"
    steps: int = setting(700, IDENTITY, "optimizer steps per block")
    learning_rate: float = setting(2e-3, IDENTITY)
    warmup_steps: int = setting(100, IDENTITY)
    weight_decay: float = setting(0.0, IDENTITY)
    grad_clip: float = setting(1.0, IDENTITY, "global-norm clipping")
    adam_b1: float = setting(0.9, IDENTITY)
    adam_b2: float = setting(0.999, IDENTITY)
    ema_decay: float = setting(0.995, IDENTITY, "EMA of the parameters that sampling uses; 0: none")

    def check(self):
        require(self.steps >= 1, self.field("steps"), self.steps, "an integer >= 1")
        require(self.learning_rate > 0, self.field("learning_rate"), self.learning_rate, "a number > 0")
        require(self.warmup_steps >= 0, self.field("warmup_steps"), self.warmup_steps, "an integer >= 0")
        require(self.weight_decay >= 0, self.field("weight_decay"), self.weight_decay, "a number >= 0")
        require(self.grad_clip > 0, self.field("grad_clip"), self.grad_clip, "a number > 0")
        require(0 <= self.adam_b1 < 1, self.field("adam_b1"), self.adam_b1, "a number in [0, 1)")
        require(0 <= self.adam_b2 < 1, self.field("adam_b2"), self.adam_b2, "a number in [0, 1)")
        require(0 <= self.ema_decay < 1, self.field("ema_decay"), self.ema_decay,
                "a number in [0, 1) (0 disables the EMA)")


SCHEDULES = ("interleaved", "sequential", "parallel")
SEED_LIMIT = 2**32  # what jax.random.key takes


@dataclasses.dataclass(frozen=True)
class ScheduleConfig(Section):
    """Which block trains when, and where. `parallel` uses a ('block', 'data') device mesh:
    `block_shards` devices split the blocks (0: as many as fit), `data_shards` split each batch."""

    _path = "schedule"
    name: str = setting("interleaved", IDENTITY, "interleaved (the paper's), sequential, parallel")
    block_shards: int = setting(0, FREE)
    data_shards: int = setting(1, FREE)

    def check(self):
        require(self.name in SCHEDULES, self.field("name"), self.name, ", ".join(SCHEDULES))
        require(self.block_shards >= 0, self.field("block_shards"), self.block_shards, "an integer >= 0 (0: auto)")
        require(self.data_shards >= 1, self.field("data_shards"), self.data_shards, "an integer >= 1")
        require(self.name == "parallel" or (self.block_shards in (0, 1) and self.data_shards == 1),
                self.field("name"), self.name, f"'parallel' when block_shards={self.block_shards} or "
                                               f"data_shards={self.data_shards} asks for a device mesh")




@dataclasses.dataclass(frozen=True)
class SamplingConfig(Section):
    """The chain: K steps on a level grid, one solver. `edm_stochastic` is EDM's Algorithm 2
    (Karras et al. 2022, as NVlabs/edm runs it): churn S_churn spread over the K + 1 levels and
    applied at those in [S_tmin, S_tmax], fresh noise scaled by S_noise."""

    _path = "sampling"
    steps: int = setting(50, SAMPLING, "chain steps K")
    solver: str = setting("euler", SAMPLING, ", ".join(SOLVERS))
    grid: str = setting("equiprobable", SAMPLING, ", ".join(GRIDS))
    guidance: float = setting(2.0, SAMPLING, "classifier-free guidance scale (1: plain conditional)")
    num_samples: int = setting(64, SAMPLING)
    s_churn: float = setting(0.0, SAMPLING)
    s_tmin: float = setting(0.0, SAMPLING)
    s_tmax: float = setting(float(1e30), SAMPLING)
    s_noise: float = setting(1.0, SAMPLING)

    def check(self):
        require(self.steps >= 1, self.field("steps"), self.steps, "an integer >= 1")
        require(self.solver in SOLVERS, self.field("solver"), self.solver, ", ".join(SOLVERS))
        require(self.grid in GRIDS, self.field("grid"), self.grid, ", ".join(GRIDS))
        require(self.guidance >= 0, self.field("guidance"), self.guidance, "a number >= 0 (1 = plain conditional)")
        require(self.num_samples >= 1, self.field("num_samples"), self.num_samples, "an integer >= 1")
        require(self.s_churn >= 0, self.field("s_churn"), self.s_churn, "a number >= 0")
        require(0 <= self.s_tmin <= self.s_tmax, self.field("s_tmin"), self.s_tmin, "a number in [0, s_tmax]")
        require(self.s_noise > 0, self.field("s_noise"), self.s_noise, "a number > 0")


@dataclasses.dataclass(frozen=True)
class RunConfig(Section):
    """Seed and bookkeeping. Checkpoints every `checkpoint_every` run steps (0: only when a block
    finishes), the newest `keep_checkpoints` kept per block so that a resume can fall back."""

    _path = "run"
    seed: int = setting(0, IDENTITY)
    log_every: int = setting(50, FREE)
    checkpoint_every: int = setting(500, FREE)
    keep_checkpoints: int = setting(2, FREE)
    prefetch: int = setting(2, FREE, "batches put on the device ahead of the step (0: none); single-device "
                                     "schedules")
    tensorboard: bool = setting(True, FREE, "TensorBoard event files in <workdir>/tensorboard (per block: loss, lr, "
                                            "grad_norm, steps/s; evaluation results)")

    def check(self):
        require(0 <= self.seed < SEED_LIMIT, self.field("seed"), self.seed, "an integer >= 0 and < 2**32")
        require(self.log_every >= 1, self.field("log_every"), self.log_every, "an integer >= 1")
        require(self.checkpoint_every >= 0, self.field("checkpoint_every"), self.checkpoint_every,
                "an integer >= 0 (0: at block ends)")
        require(self.keep_checkpoints >= 1, self.field("keep_checkpoints"), self.keep_checkpoints, "an integer >= 1")
        require(self.prefetch >= 0, self.field("prefetch"), self.prefetch, "an integer >= 0 (0: no prefetch)")


# --------------------------------------------------------------------------------------------------
# Walking a config tree by dotted paths


def leaves(config: Any, prefix: str = "") -> dict[str, tuple[Any, dataclasses.Field]]:
    """{"section.field": (value, field)} for every leaf field of a (nested) config."""
    out = {}
    for f in dataclasses.fields(config):
        value, path = getattr(config, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out.update(leaves(value, path + "."))
        else:
            out[path] = (value, f)
    return out


def values_with_roles(config: Any, roles: Iterable[str]) -> dict[str, Any]:
    """{path: value} of the fields whose role is one of `roles`."""
    roles = tuple(roles)
    return {p: v for p, (v, f) in leaves(config).items() if f.metadata.get("role") in roles}


def differences(a: Any, b: Any, roles: Iterable[str]) -> list[str]:
    """`path: a -> b` for every field with one of `roles` where two configs disagree."""
    va, vb = values_with_roles(a, roles), values_with_roles(b, roles)
    return [f"{p}: {va[p]!r} -> {vb.get(p)!r}" for p in va if va[p] != vb.get(p)]


def with_overrides(config: Any, overrides: dict[str, Any]) -> Any:
    """A copy of `config` with {"section.field": value} applied (validated by the sections)."""
    grouped: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for path, value in overrides.items():
        head, _, rest = path.partition(".")
        if rest:
            grouped.setdefault(head, {})[rest] = value
        else:
            top[path] = value
    for head, sub in grouped.items():
        top[head] = with_overrides(getattr(config, head), sub)
    return dataclasses.replace(config, **top)


def build(cls: type, values: dict[str, Any]) -> Any:
    """A fresh instance of the (nested) config class `cls`: {"section.field": value} set, every
    other field at its default; each section is validated once, then the whole."""
    grouped: dict[str, dict[str, Any]] = {}
    kwargs: dict[str, Any] = {}
    for path, value in values.items():
        head, _, rest = path.partition(".")
        if rest:
            grouped.setdefault(head, {})[rest] = value
        else:
            kwargs[path] = value
    hints = typing.get_type_hints(cls)
    for head, sub in grouped.items():
        kwargs[head] = build(hints[head], sub)
    return cls(**kwargs)


def defaults(cls: type, prefix: str = "") -> dict[str, tuple[Any, dataclasses.Field]]:
    """{"section.field": (default, field)} of every leaf field of a config class (no instance is
    built, so a class whose defaults alone are not a valid config still answers)."""
    out = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(defaults(hints[f.name], f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = (f.default, f)
    return out


def field_types(cls: type, prefix: str = "") -> dict[str, type]:
    """{"section.field": type} of every leaf field of a config class."""
    out = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            out.update(field_types(kind, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = kind
    return out


def parse_value(path: str, raw: str, kind: type) -> Any:
    """A `--set path=value` string as a value of the field's type."""
    if kind is bool:
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{path} must be a boolean (true/false), got {raw!r}")
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{path} must be of type {kind.__name__}, got {raw!r}") from None
    if kind is float and not math.isfinite(value):
        raise ValueError(f"{path} must be a finite number, got {raw!r}")
    return value
