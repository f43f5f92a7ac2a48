"""What the subcommands share: the seed and output-path rules, the preset and `--set` of train and
bench, and the task flags: every registered task's flags are offered by the parser, and one
refusal path turns a flag the run's task does not declare into an error naming the tasks that do."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Any

from dblocks_jax import config as config_lib
from dblocks_jax import presets as presets_lib
from dblocks_jax import runs
from dblocks_jax.engine.settings import SEED_LIMIT
from dblocks_jax.tasks import registry
from dblocks_jax.tasks.plugin import Flag


def check_seed(flag: str, seed: int | None) -> None:
    """The one seed rule of every command: an integer in [0, 2**32)."""
    if seed is not None and not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"{flag} {seed}; allowed: an integer >= 0 and < 2**32")


def check_output(flag: str, path: str, overwrite: bool = False, also: tuple[str, ...] = ()) -> None:
    """The one rule for every file a command writes, checked before any work is done: its directory
    exists and is writable, and it replaces an existing file only with --overwrite (as `train` and
    `assemble` replace a run). `also`: files written beside it under the same rule."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"{flag} {path}: the directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise ValueError(f"{flag} {path}: the directory {directory} is not writable")
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path} is a directory; give a file name")
    present = [p for p in (path, *also) if os.path.exists(p)]
    if present and not overwrite:
        raise FileExistsError(f"{', '.join(present)} exist(s); pass --overwrite to replace, or choose another {flag}")


@contextlib.contextmanager
def written_whole(path: str):
    """A temporary name beside `path` (same extension) to write to; it becomes `path` only when the
    block completes, so an interrupted or failed command leaves no partial file under the name."""
    stem, ext = os.path.splitext(path)
    partial = f"{stem}.partial-{os.getpid()}{ext}"
    try:
        yield partial
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def preset_and_overrides(name: str | None, assignments: list[str]) -> tuple[str, dict]:
    """The preset (default: the first task's first) and the `--set` overrides, parsed against the
    config of the task that will run: the preset's, or the one `--set task=...` names."""
    name = name or presets_lib.default_preset()
    task = presets_lib.preset_task(name)
    for assignment in assignments:
        path, sep, value = assignment.partition("=")
        if sep and path.strip() == "task":
            task = value.strip()
    return name, config_lib.parse_overrides(assignments, config_lib.config_class(task))


def flag_values(args: argparse.Namespace, mapping: dict[str, str]) -> dict:
    """{config path: value} of the common flags that were given (`mapping`: flag dest -> path)."""
    return {path: getattr(args, dest) for dest, path in mapping.items() if getattr(args, dest, None) is not None}


def check_run_for_use(workdirs, config, untrained: bool = False) -> dict[int, int]:
    """Before a run's blocks are used (sample, evaluate): refuse them on changed data, and say which
    blocks stopped early. Returns those {block: steps} (none for fresh blocks)."""
    if untrained:
        return {}
    runs.check_same_data(workdirs, config)
    partial = runs.partial_blocks(workdirs, config)
    if partial:
        listed = ", ".join(f"block {b} at step {n}" for b, n in partial.items())
        print(f"warning: {len(partial)} of {config.model.num_blocks} block(s) stopped before optim.steps="
              f"{config.optim.steps} ({listed}): a partly trained model (resume the run to finish it)",
              file=sys.stderr, flush=True)
    return partial


def task_flags(command: str) -> dict[str, list[tuple[str, Flag]]]:
    """{flag name: [(task, its declaration)]} of every registered task's flags for `command`."""
    out: dict[str, list[tuple[str, Flag]]] = {}
    for name, cls in registry.task_classes().items():
        for flag in cls.flags:
            if command in flag.commands:
                out.setdefault(flag.name, []).append((name, flag))
    return out


def add_task_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """The flags tasks declare for `command`, each once, its help per task (their types must agree)."""
    flags = task_flags(command)
    if not flags:
        return
    group = parser.add_argument_group("task flags (for runs of the tasks named)")
    shell = {a.dest for a in parser._actions} | {s for a in parser._actions for s in a.option_strings}
    names_of_key: dict[str, set[str]] = {}
    for name, declared in flags.items():
        for _, flag in declared:
            names_of_key.setdefault(flag.key, set()).add(name)
    for key, names in names_of_key.items():
        if len(names) > 1:
            owners = sorted({t for name in names for t, _ in flags[name]})
            raise ValueError(f"{command} flags {', '.join(sorted(names))} (tasks {', '.join(owners)}) share the key "
                             f"{key!r}; a task flag needs a key of its own")
    for name, declared in sorted(flags.items()):
        first = declared[0][1]
        if name in shell or first.key in shell:
            raise ValueError(f"task {declared[0][0]} declares {name} (key {first.key!r}) for {command}, which the "
                             f"shell's own flags use; a task flag needs a name and key of its own")
        clash = [t for t, f in declared if (f.type, f.key, f.choices) != (first.type, first.key, first.choices)]
        if clash:
            raise ValueError(f"{command} {name}: tasks {declared[0][0]} and {', '.join(clash)} declare it with "
                             f"different types, destinations or choices")
        helps = {}
        for task, flag in declared:
            helps.setdefault(flag.help, []).append(task)
        text = "; ".join(f"{', '.join(tasks)}: {h}" for h, tasks in helps.items())
        kwargs = {"dest": first.key, "default": None, "help": text.replace("%", "%%")}
        if first.type is None:
            kwargs["action"] = "store_const"
            kwargs["const"] = True
        else:
            kwargs.update(type=first.type, metavar=first.metavar, choices=first.choices)
        group.add_argument(name, **kwargs)


def task_options(args: argparse.Namespace, command: str, task_cls: type, where: str) -> dict[str, Any]:
    """The task flags given to `command`, by key, after refusing those `task_cls` does not declare:
    the error names the tasks that do, and what this run takes."""
    declared = task_flags(command)
    own = {f.name: f for f in task_cls.flags if command in f.commands}
    foreign = [name for name, owners in declared.items()
               if name not in own and getattr(args, owners[0][1].key, None) is not None]
    if foreign:
        owners = sorted({t for name in foreign for t, _ in declared[name]})
        takes = ", ".join(sorted(own)) or "none of the task flags"
        raise ValueError(f"{', '.join(sorted(foreign))}: for {', '.join(owners)} runs; {where} holds a run of "
                         f"task {task_cls.name} ({command} takes {takes})")
    return {f.key: getattr(args, f.key) for f in own.values() if getattr(args, f.key, None) is not None}
