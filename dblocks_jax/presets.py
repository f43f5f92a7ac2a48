"""Named presets (`dblocks list`, `dblocks train --config NAME`). Each task declares its own
(`Task.presets`), a plug-in's included; here they are gathered from the registry by name, and
`get_config` builds one with further overrides."""

from __future__ import annotations

import dataclasses
from typing import Any

from dblocks_jax import config as config_lib
from dblocks_jax.engine import settings
from dblocks_jax.tasks import registry
from dblocks_jax.tasks.plugin import Preset


@dataclasses.dataclass(frozen=True)
class NamedPreset:
    """A preset with the task that declared it."""

    task: str
    preset: Preset

    @property
    def name(self) -> str:
        return self.preset.name

    @property
    def description(self) -> str:
        return self.preset.description

    @property
    def overrides(self) -> dict:
        return dict(self.preset.overrides)

    @property
    def config(self) -> config_lib.Config:
        return config_lib.make_config(self.task, self.overrides)


def presets() -> dict[str, NamedPreset]:
    """{name: preset} of every registered task, in registry order; a name two tasks declare is an
    error naming both."""
    out: dict[str, NamedPreset] = {}
    for task, cls in registry.task_classes().items():
        for preset in cls.presets:
            if preset.name in out:
                raise ValueError(f"preset {preset.name!r} is declared by tasks {out[preset.name].task} and {task}")
            out[preset.name] = NamedPreset(task, preset)
    return out


def __getattr__(name: str):
    if name == "PRESETS":  # computed on access: plug-ins may add presets
        return presets()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def default_preset() -> str:
    """What `train` and `bench` run without --config: the first preset of the first task."""
    return next(iter(presets()))


def preset_task(name: str) -> str:
    """The task that declares preset `name`."""
    return _find(name).task


def _find(name: str) -> NamedPreset:
    found = presets()
    if name not in found:
        raise ValueError(f"unknown config preset {name!r}; allowed: {', '.join(sorted(found))}")
    return found[name]


def get_config(name: str, overrides: dict[str, Any] | None = None, **kw: Any) -> config_lib.Config:
    """The preset called `name` with {path: value} `overrides` applied (and validated). A "task"
    entry switches to that task (its own sections start at their defaults)."""
    preset = _find(name)
    overrides = {**(overrides or {}), **kw}
    task = overrides.pop("task", preset.task)
    if task != preset.task:  # the preset's common fields carry over to the other task
        return preset.config.override({"task": task, **overrides})
    return config_lib.make_config(task, {**preset.overrides, **overrides})


def describe_presets() -> str:
    """The presets grouped by task, one line each (`dblocks list`)."""
    lines = []
    for task, cls in registry.task_classes().items():
        lines.append(f"{task} ({cls.family}){': ' + cls.description if cls.description else ''}")
        lines.extend(f"  {p.name:<16} {p.description}" for p in cls.presets)
    return "\n".join(lines)


def describe_fields() -> str:
    """Every config field with its type, default and role: the common sections, then each task's
    own sections (`dblocks list --fields`)."""
    def rows(cls, heads) -> list[str]:
        types = settings.field_types(cls)
        out = []
        for path, (default, f) in settings.defaults(cls).items():
            if path.split(".")[0] in heads:
                doc = f.metadata.get("doc")
                out.append(f"  {path}: {types[path].__name__} = {default!r} [{f.metadata['role']}]"
                           + (f"  {doc}" if doc else ""))
        return out

    common = [f.name for f in dataclasses.fields(config_lib.Config) if f.name != "task"]
    lines = ["fields (section.field: type = default [role])", "", "common to every task:",
             *rows(config_lib.Config, common)]
    for section, (_, tasks) in registry.section_owners().items():
        lines += ["", f"{section} (tasks: {', '.join(tasks)}):",
                  *rows(config_lib.config_class(tasks[0]), [section])]
    return "\n".join(lines)
