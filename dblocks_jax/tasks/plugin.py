"""What a task brings to the shell besides its network and loss: its presets, its command-line
flags, and the request its command hooks receive.

The shell (config, runs, commands, cli) never names a task. It asks the registry for the task of
a run and hands it a `Request`; the task answers with its own evaluation, samples, summaries.
These types are plain values, so a task outside the package declares them without importing
anything above `dblocks_jax.tasks`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Protocol


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named config of the task that declares it: {"section.field": value} overrides of the
    field defaults (`dblocks train --config NAME`)."""

    name: str
    description: str
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Flag:
    """A command-line flag a task takes for some of its commands. The shell adds every registered
    task's flags to the parser and refuses a flag given to a run whose task does not declare it,
    naming the tasks that do. Several tasks may declare the same flag (same type) with their own
    help: `dblocks CMD --help` shows each. A flag with a `field` is a shorthand for `--set
    field=value` (it wins over one); the others reach the task's hook in `Request.options`."""

    name: str  # "--prompt"
    commands: tuple[str, ...]  # of: "sample", "evaluate" (`tasks.base.COMMANDS`)
    help: str
    type: Callable | None = str  # None: a switch (present or not)
    metavar: str | None = None
    choices: tuple | None = None
    dest: str | None = None  # the key in `Request.options` (default: the name without dashes, "-" -> "_")
    field: str | None = None  # a sampling-role config field the flag sets: the shell adds it to the overrides
    least: int | None = None  # an integer flag's smallest value, refused below it before any file is read

    @property
    def key(self) -> str:
        return self.dest or self.name.lstrip("-").replace("-", "_")


class RunReader(Protocol):
    """How a task's hooks read run directories: the shell passes its own (`dblocks_jax.runs.READER`),
    so that the task layer never imports the layers above it."""

    def config(self, workdirs, overrides: Mapping[str, Any] | None = None) -> Any:
        """The config of one run (or of several whose blocks form one model), with `overrides`."""

    def load(self, workdirs, overrides: Mapping[str, Any] | None = None, untrained: bool = False) -> tuple:
        """(task, block parameters, block steps) of a trained run; `untrained`: fresh blocks."""


@dataclasses.dataclass(frozen=True)
class Request:
    """One command on one run, as the shell hands it to a task hook (`Task.evaluate`,
    `Task.write_samples`). `options` holds the task's own flags that were given (by `Flag.key`);
    `overrides` the sampling-role `--set` fields, already checked against the run's config."""

    command: str
    workdirs: tuple[str, ...]
    reader: RunReader
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)  # evaluate: the sampling (or chain) seeds
    seed: int | None = None  # sample: the seed (None: the task's default)
    untrained: bool = False
    output: str | None = None  # sample --out, evaluate --json
    progress: bool = True

    @property
    def workdir(self) -> str:
        return self.workdirs[0]

    def option(self, key: str, default: Any = None) -> Any:
        value = self.options.get(key)
        return default if value is None else value

    def load(self, overrides: Mapping[str, Any] | None = None, untrained: bool | None = None) -> tuple:
        """(task, block parameters, block steps) of this request's run with its overrides (and
        `overrides` on top)."""
        return self.reader.load(self.workdirs, {**self.overrides, **(overrides or {})},
                                self.untrained if untrained is None else untrained)


def int_list(flag: str, text: str) -> tuple[int, ...]:
    """Comma-separated integers of a flag ("3,6,12"), or an error naming the flag."""
    try:
        values = tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{flag} expects comma-separated integers, got {text!r}") from None
    if not values:
        raise ValueError(f"{flag} expects at least one integer")
    return values


def one_int(flag: str, text: str | None) -> int | None:
    """The one integer of a flag that several tasks read as a list (`evaluate --steps`)."""
    if text is None:
        return None
    values = int_list(flag, text)
    if len(values) > 1:
        raise ValueError(f"{flag} {text}: one value for this task")
    return values[0]


def at_least(flag: str, value: int | None, least: int = 1) -> int | None:
    """`value` unless it is below `least` (an error naming the flag); None stays None."""
    if value is not None and value < least:
        raise ValueError(f"{flag} {value}; allowed: an integer >= {least}")
    return value
