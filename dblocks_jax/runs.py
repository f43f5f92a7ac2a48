"""Runs from a config: train one, read one back, assemble several. The glue between the config,
the task registry and the engine, shared by the CLI, the notebooks and the experiments."""

from __future__ import annotations

import os
from typing import Any, Sequence

from dblocks_jax.config import Config
from dblocks_jax.engine import rundir
from dblocks_jax.engine.loop import TrainResult
from dblocks_jax.engine.loop import train as train_task
from dblocks_jax.engine.trainer import BlockTrainer
from dblocks_jax.tasks import make_task


def train(config: Config, workdir: str | None = None, **kwargs: Any) -> TrainResult:
    """Train `config`'s task (see `engine.loop.train` for the keyword arguments)."""
    return train_task(make_task(config), workdir, **kwargs)


def default_workdir(config: Config) -> str:
    """runs/<data>_B<B>_<schedule>_seed<seed>; a file source is named by its file (textfile:a/b.txt -> textfile_b).
    Autoregressive runs add _ar (or _ar_plain), recurrent-depth ones _recurrent_<method>, so that they never meet
    a masked LM's run on the same text."""
    kind, sep, rest = config.data.dataset.partition(":")
    name = f"{kind}_{os.path.splitext(os.path.basename(rest))[0]}" if sep else kind
    if config.task == "autoregressive_lm":
        name += "_ar_plain" if config.ar.objective == "plain" else "_ar"
    if config.task == "recurrent_lm":
        name += f"_recurrent_{config.recurrent.method}"
    return os.path.join("runs", f"{name}_B{config.model.num_blocks}_{config.schedule.name}_seed{config.run.seed}")


def read_run_config(workdirs: str | Sequence[str], overrides: dict[str, Any] | None = None) -> Config:
    """The config of a run directory (or of several whose blocks form one model, checked to agree),
    with {path: value} `overrides` (sampling settings, for instance)."""
    workdirs = [workdirs] if isinstance(workdirs, str) else list(workdirs)
    config = rundir.read_runs_config(workdirs, Config)
    return config.override(overrides or {})


def load_run(workdirs: str | Sequence[str], overrides: dict[str, Any] | None = None, untrained: bool = False):
    """(task, block parameters, block steps) of a trained run, ready to sample; `untrained`: freshly
    initialised blocks of the same config instead (the baseline to beat)."""
    import jax

    task = make_task(read_run_config(workdirs, overrides))
    trainer = BlockTrainer(task)
    if untrained:
        params = [jax.device_get(trainer.init_state(b).ema) for b in range(task.num_blocks)]
        return task, params, [0] * task.num_blocks
    params, steps = rundir.restore_run(workdirs, trainer)
    return task, params, steps


def assemble(workdirs: Sequence[str], out: str, overwrite: bool = False) -> dict[int, str]:
    """Gather blocks trained in separate runs into one run directory (see `engine.rundir.assemble`)."""
    return rundir.assemble(workdirs, out, Config, overwrite)
