"""The run directory: config.json, run.json, metrics.jsonl, checkpoints/block_XXX/<step>.

What may go into a directory, what a resume must agree with, where a resume starts, and how
blocks of separately trained runs come together. Which config fields must agree is read from
their declared roles (`engine.settings`): a resume needs every ASSEMBLY and IDENTITY field
unchanged, an assembly only the ASSEMBLY fields.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Sequence

import jax

from dblocks_jax.engine import checkpoint, distributed, settings
from dblocks_jax.engine.lock import LOCK_NAME, RunLock


def config_path(workdir: str) -> str:
    return os.path.join(workdir, "config.json")


def read_config(workdir: str, config_cls: type) -> Any:
    """The config a run directory was trained with; a missing, broken or foreign file is named."""
    path = config_path(workdir)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: --workdir must be a run directory written by `train`")
    try:
        with open(path) as f:
            values = json.load(f)
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); it should be the config `train` wrote") from None
    return config_cls.from_dict(values, source=path)


RUN_MARKERS = ("checkpoints", "metrics.jsonl", "config.json", "run.json")  # what says a directory holds a run


def _json_object(path: str) -> dict:
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def written_by_train(workdir: str) -> bool:
    """Whether `workdir` is a run directory this package wrote: its config.json names a task or a
    config format, or its run.json lists blocks. A `config.json` or `checkpoints/` of another
    program is not enough (`--overwrite` must never empty a project folder)."""
    config = _json_object(config_path(workdir))
    return "task" in config or "format" in config or "blocks" in _json_object(os.path.join(workdir, "run.json"))


def prepare(workdir: str, config: Any, overwrite: bool = False) -> None:
    """Create the run directory; refuse to mix a new run into an old one unless asked to overwrite.
    Overwriting empties the directory first (but for its lock): the old run's results (samples,
    scores, evaluations) must not outlive it beside the new run's checkpoints, even when the new run
    fails or is interrupted. Only a directory `train` or `assemble` wrote is emptied."""
    existing = [n for n in RUN_MARKERS if os.path.exists(os.path.join(workdir, n))]
    if existing and not overwrite:
        raise FileExistsError(f"{workdir} already holds a run ({', '.join(existing)}); choose another "
                              f"--workdir or pass --overwrite to replace it")
    if existing and not written_by_train(workdir):
        raise FileExistsError(f"{workdir} holds {', '.join(existing)} but no config.json or run.json of a dblocks "
                              f"run; --overwrite empties only a run directory that dblocks wrote: choose another "
                              f"--workdir (nothing was touched)")
    if existing:
        for name in os.listdir(workdir):
            if name != LOCK_NAME:
                path = os.path.join(workdir, name)
                shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
    os.makedirs(workdir, exist_ok=True)
    write_config(workdir, config)


def write_config(workdir: str, config: Any) -> None:
    """config.json, written to a temporary name and renamed (a reader sees all or nothing)."""
    tmp = config_path(workdir) + f".tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(config.to_json())
    os.replace(tmp, config_path(workdir))


def write_run_record(workdir: str, blocks: list[int], partition, data: dict | None = None) -> None:
    """run.json: what this run trains and where (config.json holds the rest); the partition's band
    edges are written out so that a reader needs no code to see which block owns which levels, and
    the task's data fingerprint (`Task.data_fingerprint`), which a resume must match."""
    record = {"blocks": blocks, "process_count": jax.process_count(), "device_count": jax.device_count(),
              "partition_boundaries": partition.boundaries.tolist(), "data": data or {}}
    with open(os.path.join(workdir, "run.json"), "w") as f:
        json.dump(record, f, indent=1)


def read_run_record(workdir: str) -> dict | None:
    path = os.path.join(workdir, "run.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def check_resumable(workdir: str, config: Any, blocks: list[int], data: dict | None = None) -> None:
    """Refuse to resume with a different training config (the differing fields are listed), with
    another set of blocks, or on data whose fingerprint changed (a text file edited in place)."""
    saved = read_config(workdir, type(config))
    differing = settings.differences(saved, config, settings.TRAINING_ROLES)
    if differing:
        raise ValueError(f"cannot resume {workdir} with a different config; differing fields (saved -> now): "
                         + "; ".join(differing))
    record = read_run_record(workdir)
    if record and record["blocks"] != blocks:
        raise ValueError(f"cannot resume {workdir}: it trains blocks {record['blocks']}, not {blocks}")
    saved_data = (record or {}).get("data") or {}
    changed = [f"{k}: {saved_data[k]!r} -> {(data or {}).get(k)!r}" for k in saved_data
               if saved_data[k] != (data or {}).get(k)]
    if changed:
        raise ValueError(f"cannot resume {workdir}: its training data changed since it started (saved -> now): "
                         + "; ".join(changed))


def read_runs_config(workdirs: Sequence[str], config_cls: type) -> Any:
    """The config of one or several run directories whose blocks are to be used together: the
    first one's, after checking that every other agrees on every ASSEMBLY field."""
    configs = [read_config(w, config_cls) for w in workdirs]
    for workdir, other in zip(workdirs[1:], configs[1:]):
        if type(other) is not type(configs[0]):
            raise ValueError(f"these runs cannot be assembled into one model: {workdirs[0]} and {workdir} are runs of "
                             f"different tasks ({configs[0].task}, {other.task})")
        ours = settings.values_with_roles(configs[0], [settings.ASSEMBLY])
        theirs = settings.values_with_roles(other, [settings.ASSEMBLY])
        differing = [f"{k}: {ours[k]!r} in {workdirs[0]} vs {theirs[k]!r} in {workdir}" for k in ours
                     if ours[k] != theirs[k]]
        if differing:
            raise ValueError("these runs cannot be assembled into one model: their model-defining fields "
                             "disagree: " + "; ".join(differing))
    data = [((read_run_record(w) or {}).get("data") or None, w) for w in workdirs]
    recorded = [(d, w) for d, w in data if d]
    if any(d != recorded[0][0] for d, _ in recorded):
        raise ValueError("these runs cannot be assembled into one model: they trained on different data: "
                         + "; ".join(f"{w}: {d}" for d, w in recorded))
    return configs[0]


def find_blocks(workdirs: Sequence[str], num_blocks: int) -> dict[int, str]:
    """{block: the run directory holding its checkpoints}; every block exactly once."""
    found = {b: [w for w in workdirs if checkpoint.latest_step(w, b) is not None] for b in range(num_blocks)}
    missing = [b for b, ws in found.items() if not ws]
    if missing:
        raise FileNotFoundError(f"no checkpoint for block(s) {missing} in {', '.join(workdirs)}: train them "
                                f"(`dblocks train --blocks ...`) or add the run that has them")
    twice = {b: ws for b, ws in found.items() if len(ws) > 1}
    if twice:
        raise ValueError("block(s) found in more than one run, which to use is ambiguous: "
                         + "; ".join(f"block {b} in {', '.join(ws)}" for b, ws in twice.items()))
    return {b: ws[0] for b, ws in found.items()}


def restore_run(workdirs: str | Sequence[str], trainer) -> tuple[list, list[int]]:
    """Every block's EMA parameters (what sampling uses) from the newest checkpoints, and their
    steps. The blocks may come from several runs (trained separately): each must be in exactly one."""
    workdirs = [workdirs] if isinstance(workdirs, str) else list(workdirs)
    sources = find_blocks(workdirs, trainer.task.num_blocks)
    params, steps = [], []
    for b, workdir in sources.items():
        state, record = checkpoint.restore_block(workdir, b, trainer.abstract_state)
        params.append(state.ema)
        steps.append(int(record["block_step"]))
    return params, steps


def assemble(workdirs: Sequence[str], out: str, config_cls: type, overwrite: bool = False) -> dict[int, str]:
    """Gather the blocks of separately trained runs into one run directory `out` (config.json and
    each block's newest checkpoint), which `sample` and `evaluate` then use like any run."""
    real_out = os.path.realpath(out)
    for w in workdirs:
        real = os.path.realpath(w)
        if real_out == real or real_out.startswith(real + os.sep) or real.startswith(real_out + os.sep):
            raise ValueError(f"--out {out} overlaps the input run {w}: assemble into a new directory (nothing was "
                             f"touched)")
    config = read_runs_config(workdirs, config_cls)
    sources = find_blocks(workdirs, config.model.num_blocks)
    # The inputs' data fingerprint (they agree: `read_runs_config`), kept so that `sample` and
    # `evaluate` check the assembled run like any other.
    data = next((d for w in workdirs if (d := (read_run_record(w) or {}).get("data"))), {})
    with RunLock(out):
        _assemble_into(out, config, sources, overwrite, data)
    return sources


def _assemble_into(out: str, config: Any, sources: dict[int, str], overwrite: bool, data: dict) -> None:
    prepare(out, config, overwrite)
    for b, workdir in sources.items():
        step = checkpoint.latest_step(workdir, b)
        shutil.copytree(checkpoint.step_dir(workdir, b, step), checkpoint.step_dir(out, b, step))
    with open(os.path.join(out, "run.json"), "w") as f:
        json.dump({"blocks": list(sources), "assembled_from": {str(b): os.path.abspath(w) for b, w in sources.items()},
                   "data": data}, f, indent=1)


def stream_state(stream) -> Any:
    """The position of a data stream, JSON-serialisable: `state()` or Grain's `get_state()`."""
    if hasattr(stream, "state"):
        return stream.state()
    if hasattr(stream, "get_state"):
        return stream.get_state()
    return None


def restore_stream(stream, state: Any, block: int) -> None:
    if state is None:
        raise ValueError(f"cannot resume block {block}: its checkpoint holds no data-stream position")
    if hasattr(stream, "restore"):
        stream.restore(state)
    elif hasattr(stream, "set_state"):
        stream.set_state(state)
    else:
        raise ValueError(f"cannot resume block {block}: its data stream ({type(stream).__name__}) has neither "
                         f"restore() nor set_state()")


def resume_point(workdir: str, trainer, run) -> tuple[int, dict[int, tuple[Any, dict]]]:
    """The newest run step at which every block has an intact checkpoint, and those checkpoints
    (for the blocks this process holds). Candidates are the run steps recorded with the
    checkpoints, so a changed `checkpoint_every` does not matter. A checkpoint that fails to
    restore is reported and skipped; checkpoints past the chosen step (corrupted, unreadable, or
    from blocks saved ahead of the others) are moved to checkpoints/discarded/, never deleted."""
    available = {b: set(checkpoint.all_steps(workdir, b)) for b in run.blocks}
    recorded = {record["run_step"] for b in run.blocks for n in available[b]
                if (record := checkpoint.read_record(workdir, b, n)) and "run_step" in record}
    candidates = sorted((p for p in recorded if 0 < p <= run.length), reverse=True)
    if jax.process_count() > 1:  # process 0's view decides, so every process tries the same steps
        candidates = distributed.gather_json({0: candidates} if jax.process_index() == 0 else {})[0]
    bad: set[tuple[int, int]] = set()
    for position in candidates + [0]:
        needed = {b: n for b, n in run.block_steps_at(position).items() if n > 0}
        restored, ok = {}, True
        for b, n in needed.items():
            if b not in run.local_blocks:
                continue
            if n not in available[b] or (b, n) in bad:
                ok = False
                break
            try:
                restored[b] = checkpoint.restore_block(workdir, b, trainer.abstract_state, n)
            except checkpoint.CorruptCheckpointError as err:
                print(f"resume: {err}; falling back to an earlier checkpoint", flush=True)
                bad.add((b, n))
                ok = False
                break
        if not distributed.all_processes(ok):
            continue
        steps_at = run.block_steps_at(position)
        stale = {b: sorted(n for n in available[b] if n > steps_at[b]) for b in run.blocks}
        distributed.on_process_zero(lambda stale=stale: _discard(workdir, stale))
        if position:
            print(f"resume: continuing {workdir} after step {position} of {run.length}", flush=True)
        elif any(available.values()):
            print(f"resume: no step at which every block has an intact checkpoint in {workdir}; "
                  f"starting from step 0", flush=True)
        return position, restored
    raise AssertionError("unreachable: position 0 needs no checkpoint")


def _discard(workdir: str, stale: dict[int, list[int]]) -> None:
    for b, steps in stale.items():
        for path in checkpoint.discard_steps(workdir, b, steps):
            print(f"resume: moved {path}: it lies past the resume point and will be rewritten", flush=True)
