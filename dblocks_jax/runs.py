"""Runs from a config: train one, read one back, assemble several, evaluate one. The glue between
the config, the task registry and the engine, shared by the CLI, the notebooks and the experiments.

Task hooks read runs through `READER` (passed to them in a `tasks.plugin.Request`), so that the
task layer never imports this one."""

from __future__ import annotations

import os
from typing import Any, Sequence

from dblocks_jax.config import Config, check_paths
from dblocks_jax.engine import rundir
from dblocks_jax.engine.loop import TrainResult
from dblocks_jax.engine.loop import train as train_task
from dblocks_jax.engine.settings import SAMPLING, leaves
from dblocks_jax.engine.trainer import BlockTrainer
from dblocks_jax.tasks import make_task
from dblocks_jax.tasks.plugin import Request, at_least


def train(config: Config, workdir: str | None = None, **kwargs: Any) -> TrainResult:
    """Train `config`'s task (see `engine.loop.train` for the keyword arguments)."""
    return train_task(make_task(config), workdir, **kwargs)


def default_workdir(config: Config) -> str:
    """runs/<data><task suffix>_B<B>_<schedule>_seed<seed>; a file source is named by its file
    (textfile:a/b.txt -> textfile_b); the task's `workdir_suffix` keeps runs of different tasks on
    the same data apart."""
    kind, sep, rest = config.data.dataset.partition(":")
    name = f"{kind}_{os.path.splitext(os.path.basename(rest))[0]}" if sep else kind
    name += type(config).task_class.workdir_suffix(config)
    return os.path.join("runs", f"{name}_B{config.model.num_blocks}_{config.schedule.name}_seed{config.run.seed}")


def _workdirs(workdirs: str | Sequence[str]) -> list[str]:
    return [workdirs] if isinstance(workdirs, str) else list(workdirs)


def read_run_config(workdirs: str | Sequence[str], overrides: dict[str, Any] | None = None) -> Config:
    """The config of a run directory (or of several whose blocks form one model, checked to agree),
    with {path: value} `overrides` (sampling settings, for instance)."""
    config = rundir.read_runs_config(_workdirs(workdirs), Config)
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
    params, steps = rundir.restore_run(_workdirs(workdirs), trainer)
    return task, params, steps


class RunReader:
    """`tasks.plugin.RunReader`: how task hooks read run directories."""

    @staticmethod
    def config(workdirs, overrides=None) -> Config:
        return read_run_config(workdirs, dict(overrides or {}))

    @staticmethod
    def load(workdirs, overrides=None, untrained: bool = False) -> tuple:
        return load_run(workdirs, dict(overrides or {}), untrained=untrained)


READER = RunReader()


def request(command: str, workdirs: str | Sequence[str], **kwargs: Any) -> Request:
    """A `Request` for a task hook on these run directories, read through `READER` (unchecked:
    `request_for` checks what a user gave)."""
    return Request(command, tuple(_workdirs(workdirs)), READER, **kwargs)


def request_for(config: Config, command: str, workdirs: str | Sequence[str], *,
                options: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None,
                **kwargs: Any) -> Request:
    """A checked `Request` of `command` on the run of `config`: `options` must be flags its task
    declares for the command (by key); a flag that stands for a config field becomes that override
    (over the same field in `overrides`); every override must be a sampling-role field of the run's
    config, since the rest defined the training."""
    task_cls = type(config).task_class
    own = {f.key: f for f in task_cls.flags if command in f.commands}
    options = {k: v for k, v in (options or {}).items() if v is not None}
    unknown = sorted(set(options) - set(own))
    if unknown:
        raise ValueError(f"task {task_cls.name} takes no {command} option {', '.join(unknown)}; it takes "
                         f"{', '.join(sorted(own)) or 'none'}")
    for key, value in options.items():
        if own[key].least is not None:
            at_least(own[key].name, value, own[key].least)
    overrides = dict(overrides or {})
    check_paths(overrides, type(config))
    overrides.update({own[k].field: v for k, v in options.items() if own[k].field})
    roles = {p: f.metadata["role"] for p, (_, f) in leaves(config).items()}
    fixed = [p for p in overrides if roles[p] != SAMPLING]
    if fixed:
        raise ValueError(f"{command} may change sampling fields only; {', '.join(fixed)} defined the training")
    return request(command, workdirs, options=options, overrides=overrides, **kwargs)


def evaluate(workdir: str, *, seeds: Sequence[int] = (0, 1, 2), untrained: bool = False,
             overrides: dict[str, Any] | None = None, output: str | None = None, progress: bool = True,
             **options: Any) -> dict:
    """The run's task's evaluation (`Task.evaluate`), as `dblocks evaluate` runs it: `options` are
    its flags by key (e.g. `steps="3,6"`, `num_samples=100`), `overrides` sampling-role fields."""
    config = read_run_config(workdir)
    return type(config).task_class.evaluate(request_for(
        config, "evaluate", workdir, options=options, overrides=overrides, seeds=tuple(seeds), untrained=untrained,
        output=output, progress=progress))


def partial_blocks(workdirs: str | Sequence[str], config: Config) -> dict[int, int]:
    """{block: its newest checkpoint's step} of the blocks that stopped before `optim.steps` (a run
    interrupted, or trained with --blocks elsewhere and assembled early)."""
    from dblocks_jax.engine import checkpoint

    sources = rundir.find_blocks(_workdirs(workdirs), config.model.num_blocks)
    steps = {b: checkpoint.latest_step(w, b) for b, w in sources.items()}
    return {b: n for b, n in steps.items() if n < config.optim.steps}


def check_same_data(workdirs: str | Sequence[str], config: Config) -> None:
    """Refuse to use a run's blocks on data other than they were trained on (a text file edited in
    place since): the task's data fingerprint against the one run.json recorded, as a resume does."""
    now = None
    for workdir in _workdirs(workdirs):
        saved = (rundir.read_run_record(workdir) or {}).get("data") or {}
        if not saved:
            continue
        now = make_task(config).data_fingerprint() if now is None else now
        changed = [f"{k}: {saved[k]!r} -> {now.get(k)!r}" for k in saved if saved[k] != now.get(k)]
        if changed:
            raise ValueError(f"{workdir} was trained on other data than {config.data.dataset} holds now (saved -> "
                             f"now): {'; '.join(changed)}; its scores and samples would mix two texts")


def assemble(workdirs: Sequence[str], out: str, overwrite: bool = False) -> dict[int, str]:
    """Gather blocks trained in separate runs into one run directory (see `engine.rundir.assemble`)."""
    return rundir.assemble(workdirs, out, Config, overwrite)
