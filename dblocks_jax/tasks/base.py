"""The Task protocol: everything the engine and the shell need to know about a problem.

DiffusionBlocks is one method for many problems (image generation, classification, language
models, recurrent depth): "denoise a target y given a context x with a residual network cut into
blocks". A task supplies what differs (docs/architecture.md walks through one):

- for the engine: the level law of its corruption (`make_law`; the partition into bands is the
  engine's); the network of one block (`make_block`, an NNX module; blocks are self-contained and
  share a structure, so their parameters stack); each block's resumable training stream
  (`train_batches`), the batch's shapes (`batch_spec`), `check_data` and `data_fingerprint`; the
  step's randomness `draw(key, block, batch_spec)` and the per-example `loss(params, batch, draw,
  block)`; `write_artifacts` after training;
- for the shell, as class attributes and class-method hooks with defaults: its name, network
  family, config sections, presets and flags (`registry` finds the class by name), `validate`,
  `workdir_suffix`, `train_summary`, `evaluate` + `report`, `write_samples` (+ `sample_formats`),
  `bench_variant`, `flop_twin` and the bench's `inference` (checked first by `check_inference`).

The engine calls only the first group; it never sees an image, a label or a token. The shell
calls only the second; it never names a task.
"""

from __future__ import annotations

import abc
import dataclasses
import os
from typing import Any, Callable, ClassVar, Iterator, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from dblocks_jax.engine import precision
from dblocks_jax.engine.levels import LevelLaw
from dblocks_jax.engine.partition import BlockPartition
from dblocks_jax.engine.settings import Section, require
from dblocks_jax.tasks.plugin import Flag, Preset, Request

COMMANDS = ("sample", "evaluate")  # the commands that act on a run of one task: they take task flags
# Sections every config has (`dblocks_jax.config`): a task's own sections take other names.
COMMON_SECTIONS = ("data", "model", "noise", "partition", "optim", "schedule", "sampling", "run")
# EDM's stochastic sampler's fields: unused by every chain but the ODE solvers' (`unused_fields`).
CHURN_FIELDS = ("sampling.s_churn", "sampling.s_tmin", "sampling.s_tmax", "sampling.s_noise")


class Inference(NamedTuple):
    """What the bench times as a task's inference: `fn(*args)` produces `count` `unit`s (images,
    predictions, symbols) with `network_calls` block calls per unit."""

    fn: Callable
    args: tuple
    count: int
    unit: str
    network_calls: float


class Task(abc.ABC):
    name: ClassVar[str]
    family: ClassVar[str]  # the network family a block is (dit, vit, transformer, ...): `dblocks list`
    description: ClassVar[str] = ""
    # The config sections this task owns beside the common ones (frozen `Section` dataclasses, each
    # with its `_path`); a field of a section no task of this run owns is refused naming its owner.
    sections: ClassVar[tuple[type, ...]] = ()
    # Common-section fields this task never reads: a value other than the default is refused
    # (naming the field) instead of being silently ignored.
    unused_fields: ClassVar[tuple[str, ...]] = ()
    # Fields a config.json of version 0.2 holds under another path: {old path: new path}.
    renamed_fields: ClassVar[dict[str, str]] = {}
    presets: ClassVar[tuple[Preset, ...]] = ()
    flags: ClassVar[tuple[Flag, ...]] = ()
    sample_formats: ClassVar[tuple[str, ...]] = ()  # extensions `sample --out` takes; (): no sampler

    def __init__(self, config):
        self.config = config = precision.resolved(config)  # the dtype that runs is the one recorded
        self.law = self.make_law()
        self.partition = BlockPartition.make(config.partition.strategy, self.num_blocks, config.partition.overlap,
                                             self.law)
        # eval_shape: the block's structure and parameter shapes, nothing allocated.
        abstract = nnx.eval_shape(lambda: self.make_block(nnx.Rngs(0)))
        self.graphdef, self.abstract_params = nnx.split(abstract, nnx.Param)

    # -- declarations and validation ---------------------------------------------------------------

    @classmethod
    def check_declarations(cls) -> None:
        """What the registry checks of a task class before using it (a plug-in's mistakes named)."""
        where = f"task {getattr(cls, 'name', cls.__name__)} ({cls.__module__}.{cls.__name__})"
        if not isinstance(getattr(cls, "family", None), str) or not cls.family:
            raise ValueError(f"{where} declares no network family (class attribute `family`)")
        paths = [getattr(s, "_path", "") for s in cls.sections]
        for section, path in zip(cls.sections, paths):
            if not (dataclasses.is_dataclass(section) and issubclass(section, Section) and path):
                raise ValueError(f"{where}: config section {section!r} is not a frozen Section dataclass with a _path")
            if path in COMMON_SECTIONS or path in ("task", "format") or paths.count(path) > 1:
                raise ValueError(f"{where}: config section name {path!r} is taken (common sections: "
                                 f"{', '.join(COMMON_SECTIONS)})")
        names = [p.name for p in cls.presets]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice or any("task" in p.overrides for p in cls.presets):
            raise ValueError(f"{where}: presets must have distinct names and not set `task` ({', '.join(twice)})")
        for flag in cls.flags:
            if not flag.name.startswith("--") or not set(flag.commands) <= set(COMMANDS) or not flag.commands:
                raise ValueError(f"{where}: flag {flag.name} must start with -- and name commands of "
                                 f"{', '.join(COMMANDS)}")
        if cls.sample_formats and cls.write_samples.__func__ is Task.write_samples.__func__:
            raise ValueError(f"{where} declares sample_formats but no `write_samples` hook")

    @classmethod
    def validate(cls, config) -> None:
        """Cross-field checks this task needs, without I/O (raise ValueError naming the field); the
        data's name and form included (`data.dataset`)."""

    @staticmethod
    def require_end_to_end(config, field: str, objective: str) -> None:
        """A non-diffusion ("plain") objective trains one network end to end: B must be 1."""
        require(objective == "diffusion" or config.model.num_blocks == 1, field, objective,
                f"diffusion with model.num_blocks={config.model.num_blocks} (a plain model is trained end to "
                f"end: set model.num_blocks=1)")

    def check_data(self) -> None:
        """Check that the data exists and fits the config (may read metadata); before compiling."""

    def data_fingerprint(self) -> dict:
        """What identifies the training data beyond the config (JSON values; e.g. a text file's
        hash): recorded in run.json, and a resume on a different fingerprint is refused."""
        return {}

    def memory_floor(self) -> list[tuple[int, str, str]]:
        """Lower bounds of the memory a run needs, as (bytes, "device" or "host", what needs it,
        naming the config fields): the engine refuses a config that cannot fit before compiling.
        Lower bounds only, so that no config that would fit is refused."""
        return []

    # -- what the engine reads ----------------------------------------------------------------------

    @property
    def num_blocks(self) -> int:
        return self.config.model.num_blocks

    @property
    def num_layers(self) -> int:
        return self.config.model.num_layers

    @property
    def layers_per_block(self) -> int:
        return self.config.model.layers_per_block

    def init_params(self, key: jax.Array) -> Any:
        """Fresh parameters of one block (jit-able; every block gets its own key)."""
        return nnx.split(self.make_block(nnx.Rngs(key)), nnx.Param)[1]

    def network(self, params) -> nnx.Module:
        """The block module with `params` (inside a trace: a pure function of params)."""
        return nnx.merge(self.graphdef, params)

    def block_depth(self, block) -> jax.Array | None:
        """Layers block `block` runs: None (all it has) unless the layer split is uneven."""
        model = self.config.model
        if not model.uneven:
            return None
        if block is None:
            raise ValueError(f"model.layer_split={model.layer_split} is uneven: pass the block index")
        return jnp.asarray(model.block_depths)[block]

    def dropout_draw(self, key: jax.Array, n: int) -> dict:
        """With `model.dropout`, one dropout key per example (raw key data, so that the draw slices
        along the batch like an array under data parallelism); without, nothing."""
        return {"dropout": jax.random.key_data(jax.random.split(key, n))} if self.config.model.dropout else {}

    @staticmethod
    def dropout_keys(draw: dict) -> jax.Array | None:
        """The per-example dropout keys of a `draw` (None: no dropout)."""
        return jax.random.wrap_key_data(draw["dropout"]) if "dropout" in draw else None

    @abc.abstractmethod
    def make_law(self) -> LevelLaw:
        """The level law the blocks' bands partition."""

    @abc.abstractmethod
    def make_block(self, rngs: nnx.Rngs) -> nnx.Module:
        """The network of one block, built with the deepest block's structure."""

    @abc.abstractmethod
    def train_batches(self, block: int) -> Iterator[Any]:
        """Block `block`'s endless training stream, resumable (`state()/restore()` or
        `get_state()/set_state()`), seeded by (run.seed, block)."""

    @abc.abstractmethod
    def batch_spec(self, batch_size: int) -> Any:
        """The pytree of `jax.ShapeDtypeStruct` of one training batch."""

    @abc.abstractmethod
    def draw(self, key: jax.Array, block, batch_spec: Any) -> Any:
        """The random part of one training step of `block`, every leaf with a leading example axis."""

    @abc.abstractmethod
    def loss(self, params, batch, draw, block) -> jax.Array:
        """The block's loss on `batch` under `draw`, one value per example (the engine averages)."""

    def write_artifacts(self, workdir: str, block_params: list) -> None:
        """What a finished run leaves beside its checkpoints (e.g. a sample grid)."""

    # -- what the shell asks (hooks with defaults) ----------------------------------------------------

    @classmethod
    def workdir_suffix(cls, config) -> str:
        """Added to the default run directory's name, so that runs of different tasks (or objectives)
        on the same data never meet: runs/<data><suffix>_B<B>_<schedule>_seed<seed>."""
        return ""

    @classmethod
    def work_estimate(cls, config) -> str | None:
        """One line `train` prints before it starts when a step's work is not plain from the config
        (e.g. iterations drawn at random); None: nothing to add."""
        return None

    @classmethod
    def train_summary(cls, workdir: str) -> list[str]:
        """Lines `train` prints once every block is trained (what `write_artifacts` left)."""
        return [f"checkpoints: {os.path.join(workdir, 'checkpoints')}"]

    @classmethod
    def evaluate(cls, request: Request) -> dict:
        """`dblocks evaluate`: the task's scores of the run (JSON-ready)."""
        raise ValueError(f"task {cls.name} declares no evaluation")

    @classmethod
    def evaluation_outputs(cls, json_path: str) -> tuple[str, ...]:
        """Files `evaluate` writes beside its JSON (the shell applies its output rule to them too)."""
        return ()

    @classmethod
    def report(cls, result: dict) -> list[str]:
        """The lines `evaluate` prints for a result of `evaluate`."""
        return []

    @classmethod
    def write_samples(cls, request: Request) -> list[str]:
        """`dblocks sample`: write the run's samples to `request.output` (it ends in one of
        `sample_formats`); the lines to print."""
        raise ValueError(f"task {cls.name} has no sampler")

    @classmethod
    def bench_variant(cls, config, *, num_blocks: int, remat: bool):
        """The config a bench mode measures: the same network cut into `num_blocks` blocks (1: end
        to end), with every layer checkpointed or not. An uneven split is defined for its own B."""
        overrides = {"model.num_blocks": num_blocks, "model.remat": remat}
        if config.model.layer_split and num_blocks != config.model.num_blocks:
            overrides["model.layer_split"] = ""
        return config.override(overrides)

    @classmethod
    def flop_twin(cls, config):
        """The same step with unrolled layers, XLA attention and float32 compute, compiled (never
        run) for XLA's FLOP count: a scanned stack's loop body is counted once and a cuDNN call not
        at all; the model's FLOPs do not depend on the dtype."""
        return config.override({"model.scan_layers": False, "model.dtype": "float32", "model.attention": "xla"})

    @classmethod
    def check_inference(cls, config, steps: int) -> None:
        """Refuse, before the bench compiles anything, a number of chain steps `inference` cannot
        take for `config` (raise ValueError naming --sample-steps)."""

    def inference(self, block_params: list, *, batch: int, steps: int) -> Inference | None:
        """The task's inference on `batch` examples with `steps` chain steps, unrun, for the bench
        (None: the task declares none, and the bench says so)."""
        return None
