"""The run configuration: the common sections, one task's own sections, `--set section.field=value`.

A run's config is `config_class(task)`: the common sections every task has (`data`, `model`,
`noise` from `dblocks_jax.sections`; `partition`, `optim`, `schedule`, `sampling`, `run` from
`dblocks_jax.engine.settings`) plus the sections its task declares (`Task.sections`, e.g. a
classifier's `classify`). config.json holds exactly those. A field of a section this task does not
own is refused naming the task that owns it, before anything compiles.

Every field declares its role next to it (see `engine.settings`): resume, assembly and the
experiment sweeps read roles from there. Validation is pure (no I/O): a bad value fails with its
path and the allowed values; what needs I/O (a TFDS dataset's metadata) is checked when the task
opens its data, still before compiling. Config files of version 0.2 (format 2, every task's
sections in every config) load with a note: the other tasks' sections dropped, renamed fields moved,
and unread fields that 0.2 let through off their defaults reset.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from typing import Any, ClassVar

from dblocks_jax.engine import settings
from dblocks_jax.engine.settings import (ASSEMBLY, OptimConfig, PartitionConfig, RunConfig, SamplingConfig,
                                         ScheduleConfig, Section, require, section, setting)
from dblocks_jax.sections import DataConfig, ModelConfig, NoiseConfig
from dblocks_jax.tasks import registry
from dblocks_jax.tasks.base import COMMON_SECTIONS

FORMAT = 3  # of config.json; 2: version 0.2 (every task's sections), 1: the flat config of version 0.1


@dataclasses.dataclass(frozen=True)
class Config(Section):
    """The common part of every run's config; a run's config is an instance of `config_class(task)`,
    which adds the task's own sections. `override` takes dotted paths:
    `config.override({"optim.steps": 3})` (a "task" entry switches to that task's class)."""

    task_class: ClassVar[type | None] = None  # set on each task's config class

    task: str = setting("", ASSEMBLY, "the task (`dblocks list`)")
    data: DataConfig = section(DataConfig)
    model: ModelConfig = section(ModelConfig)
    noise: NoiseConfig = section(NoiseConfig)
    partition: PartitionConfig = section(PartitionConfig)
    optim: OptimConfig = section(OptimConfig)
    schedule: ScheduleConfig = section(ScheduleConfig)
    sampling: SamplingConfig = section(SamplingConfig)
    run: RunConfig = section(RunConfig)

    def check(self):
        task = type(self).task_class
        if task is None:
            raise ValueError(f"Config is the part every task shares; a run's config is config_class(task), "
                             f"task one of {', '.join(registry.task_names())}")
        require(self.task == task.name, "task", self.task, f"{task.name} (this config class's task)")
        s = self.schedule
        require(s.block_shards == 0 or self.model.num_blocks % s.block_shards == 0, "schedule.block_shards",
                s.block_shards, f"0 (automatic) or a divisor of model.num_blocks={self.model.num_blocks} (every "
                                f"device trains the same number of blocks)")
        require(self.data.batch_size % s.data_shards == 0, "schedule.data_shards", s.data_shards,
                f"a positive divisor of data.batch_size={self.data.batch_size}")
        values = settings.leaves(self)
        for path in task.unused_fields:
            value, f = values[path]
            require(value == f.default, path, value, f"{f.default!r}, its default: task {self.task} does not use it")
        task.validate(self)

    def override(self, overrides: dict[str, Any]) -> "Config":
        overrides = dict(overrides)
        task = overrides.pop("task", self.task)
        cls = type(self) if task == self.task else config_class(task)
        check_paths(overrides, cls)
        if cls is type(self):
            return settings.with_overrides(self, overrides)
        # Another task: the common sections carry over, its own sections start at their defaults.
        common = {p: v for p, (v, _) in settings.leaves(self).items() if p.split(".")[0] in COMMON_SECTIONS}
        return settings.build(cls, {**common, **overrides})

    def replace(self, **overrides: Any) -> "Config":
        return self.override(overrides)

    def to_dict(self) -> dict:
        return {"format": FORMAT, **dataclasses.asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> "Config":
        """A config from `to_dict()`'s form (format 3), or from a config.json of version 0.2
        (`upgrade`). A flat config of version 0.1 is refused with what wrote it: its checkpoints
        hold unstacked layers this version cannot read."""
        if not isinstance(values, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(values).__name__}")
        fmt = values.get("format", 1)
        if fmt == 1:
            raise ValueError(f"{source} was written by dblocks-jax 0.1 (flat config format 1); this version "
                             f"(config format {FORMAT}, scanned layer stacks) cannot read its checkpoints. Retrain "
                             f"with this version, or sample it with dblocks-jax 0.1")
        if fmt not in (2, FORMAT):
            raise ValueError(f"{source} has config format {fmt!r}; this version of dblocks-jax reads formats 2 "
                             f"and {FORMAT}")
        name = values.get("task")
        if not isinstance(name, str):
            raise ValueError(f"{source} names no task (a \"task\" entry)")
        mine = cls.task_class is not None and cls.task_class.name == name  # also for an unregistered task
        try:
            target = cls if mine else config_class(name)
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None
        values, changes = upgrade(values, target.task_class)
        if changes:
            _note(f"note: {source} was written by dblocks-jax 0.2, whose config held every task's sections: "
                  f"{'; '.join(changes)}")
        overrides = {}
        for head, value in values.items():
            if isinstance(value, dict):
                overrides.update({f"{head}.{k}": v for k, v in value.items()})
            elif head not in ("format", "task"):
                overrides[head] = value
        try:
            check_paths(overrides, target)
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None
        return settings.build(target, overrides)


@functools.cache
def _task_config_class(task_cls: type) -> type:
    task_cls.check_declarations()
    fields = [("task", str, setting(task_cls.name, ASSEMBLY, "the task (`dblocks list`)"))]
    fields += [(s._path, s, section(s)) for s in task_cls.sections]
    title = "".join(part.title() for part in task_cls.name.split("_"))
    cls = dataclasses.make_dataclass(f"{title}Config", fields, bases=(Config,), frozen=True,
                                     namespace={"task_class": task_cls, "__module__": __name__})
    fields = settings.defaults(cls)
    named = (*task_cls.unused_fields, *task_cls.renamed_fields.values(),
             *(f.field for f in task_cls.flags if f.field))
    missing = [p for p in named if p not in fields]
    if missing:
        raise ValueError(f"task {task_cls.name} names config fields its config does not have: {', '.join(missing)} "
                         f"(in unused_fields, renamed_fields or a flag's field)")
    fixed = [f"{f.name} -> {f.field}" for f in task_cls.flags
             if f.field and fields[f.field][1].metadata["role"] != settings.SAMPLING]
    if fixed:
        raise ValueError(f"task {task_cls.name}: a flag may set sampling-role fields only, not {', '.join(fixed)}")
    return cls


def config_class(task: str | type) -> type:
    """The config class of a task, by registered name or Task class (an unregistered task, such
    as one under test, gets its class too): `Config` plus the task's own sections."""
    if isinstance(task, str):
        require(task in registry.task_names(), "task", task, ", ".join(registry.task_names()))
        task = registry.task_class(task)
    return _task_config_class(task)


def make_config(task: str | type, overrides: dict[str, Any] | None = None) -> Config:
    """The config of `task` with {path: value} `overrides` on the field defaults (validated once)."""
    cls = config_class(task)
    overrides = dict(overrides or {})
    overrides.pop("task", None)
    check_paths(overrides, cls)
    return settings.build(cls, overrides)


def upgrade(values: dict, task_cls: type) -> tuple[dict, list[str]]:
    """A format-2 config dict (version 0.2) in this version's form, and what changed, in words: the
    other tasks' sections are dropped, `model.family` goes (the task's now), fields the task renamed
    (`Task.renamed_fields`) move, and a field the task never reads (`Task.unused_fields`) that 0.2
    let through off its default goes back to it (it never had an effect; this version refuses such
    a value). A format-3 dict comes back unchanged, with nothing said."""
    if values.get("format") != 2:
        return values, []
    values = {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}
    values.get("model", {}).pop("family", None)
    moved = []
    for old, new in task_cls.renamed_fields.items():
        (section_old, name_old), (section_new, name_new) = old.split("."), new.split(".")
        if name_old in values.get(section_old, {}):
            values.setdefault(section_new, {})[name_new] = values[section_old].pop(name_old)
            moved.append(f"{old} -> {new}")
    own = {s._path for s in task_cls.sections} | set(COMMON_SECTIONS)
    dropped = sorted(k for k, v in values.items() if isinstance(v, dict) and k not in own)
    values = {k: v for k, v in values.items() if k not in dropped}
    defaults, reset = settings.defaults(_task_config_class(task_cls)), []
    for path in task_cls.unused_fields:
        head, _, name = path.partition(".")
        if name in values.get(head, {}) and values[head][name] != defaults[path][0]:
            reset.append(f"{path}={values[head].pop(name)!r}")
    values["format"] = FORMAT
    said = [f"moved {', '.join(moved)}"] if moved else []
    said += [f"dropped the sections {', '.join(dropped)}, which task {task_cls.name} never reads"] if dropped else []
    said += [f"reset {', '.join(reset)} to the default (task {task_cls.name} never reads them)"] if reset else []
    return values, said


_NOTED: set[str] = set()


def _note(message: str) -> None:
    if message not in _NOTED:
        _NOTED.add(message)
        print(message, file=sys.stderr, flush=True)


def owners_of(path: str) -> tuple[str, ...]:
    """The registered tasks whose config has `path` in one of their own sections."""
    head, _, name = path.partition(".")
    section_cls, tasks = registry.section_owners().get(head, (None, ()))
    if section_cls is None or name not in {f.name for f in dataclasses.fields(section_cls)}:
        return ()
    return tasks


def check_paths(overrides: dict[str, Any], cls: type) -> None:
    """Refuse a path the config class `cls` does not have: a field of another task's section names
    its owner; an old flat name gets its new path; anything else lists the allowed paths."""
    known = settings.field_types(cls)
    unknown = sorted(set(overrides) - set(known))
    if not unknown:
        return
    this = cls.task_class.name if cls.task_class else "task-less"
    foreign = [(p, owners_of(p)) for p in unknown]
    if all(owners for _, owners in foreign):
        raise ValueError("invalid config: " + "; ".join(f"{p} belongs to {', '.join(owners)}" for p, owners in foreign)
                         + f"; this run is {this}")
    renamed = {old: new for name in registry.task_names() for old, new in
               registry.task_class(name).renamed_fields.items()}
    hints = []
    for name in unknown:
        moved = FLAT_NAMES.get(name) or next((p for p in known if p.endswith("." + name)), None)
        if name in renamed:  # a field version 0.2 kept elsewhere: where it is now, and whose it is
            moved = renamed[name] if renamed[name] in known else (
                f"{renamed[name]}, which belongs to {', '.join(owners_of(renamed[name]))}")
        owners = owners_of(name)
        hints.append(f"{name} (now {moved})" if moved else f"{name} (belongs to {', '.join(owners)})" if owners
                     else f"{name} (the network family is the task's: {this} builds {cls.task_class.family})"
                     if name == "model.family" and cls.task_class else name)
    raise ValueError(f"unknown config field(s) {', '.join(hints)} for task {this}; allowed: {', '.join(sorted(known))}")


# Where each field of the flat 0.1 config went (names that did not change their last part are
# found by suffix).
FLAT_NAMES = {"dataset": "data.dataset", "image_size": "data.image_size", "batch_size": "data.batch_size",
              "partition": "partition.strategy", "schedule": "schedule.name", "steps": "optim.steps",
              "seed": "run.seed", "sample_steps": "sampling.steps", "solver": "sampling.solver",
              "grid": "sampling.grid", "guidance": "sampling.guidance", "num_samples": "sampling.num_samples"}


def flat_to_nested(flat: dict) -> dict[str, Any]:
    """{path: value} of a 0.1 flat config (used to compare old experiment records with new runs);
    0.1 had the common sections only."""
    known = settings.field_types(Config)
    out = {}
    for name, value in flat.items():
        path = FLAT_NAMES.get(name) or next((p for p in known if p.endswith("." + name)), None)
        if path is not None:
            out[path] = value
    return out


def parse_overrides(assignments: list[str], cls: type) -> dict[str, Any]:
    """CLI `section.field=value` strings as typed {path: value} for the config class `cls`."""
    types = settings.field_types(cls)
    overrides: dict[str, Any] = {}
    for assignment in assignments:
        path, sep, raw = assignment.partition("=")
        path = path.strip()
        if not sep:
            raise ValueError(f"--set expects section.field=value, got {assignment!r}")
        check_paths({path: None}, cls)
        overrides[path] = settings.parse_value(path, raw.strip(), types[path])
    return overrides
