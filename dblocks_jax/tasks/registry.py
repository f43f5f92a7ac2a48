"""One registry: task name -> Task class.

The package's own tasks are listed here by module path and imported on first use; a task outside
the package registers through the entry-point group `dblocks_jax.tasks` of its distribution
(`importlib.metadata`, as pytest finds its plug-ins): the entry point's name is the task's name,
its value the Task class (`my_package.task:MyTask`). Everything the shell knows about tasks, their
names, config sections, presets and flags, comes from here.
"""

from __future__ import annotations

import functools
import importlib
from importlib import metadata
from typing import Callable

GROUP = "dblocks_jax.tasks"
BUILTIN = {
    "image_generation": "dblocks_jax.tasks.image_generation:ImageGeneration",
    "image_classification": "dblocks_jax.tasks.image_classification:ImageClassification",
    "masked_lm": "dblocks_jax.tasks.masked_lm:MaskedLM",
    "autoregressive_lm": "dblocks_jax.tasks.autoregressive_lm:AutoregressiveLM",
    "recurrent_lm": "dblocks_jax.tasks.recurrent_lm:RecurrentLM",
}


def _import(path: str) -> type:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


@functools.cache
def _sources() -> dict[str, tuple[str, Callable[[], type]]]:
    """{name: (where it comes from, loader)}: the package's tasks, then the entry points."""
    sources = {name: (f"dblocks_jax ({path})", functools.partial(_import, path)) for name, path in BUILTIN.items()}
    for ep in sorted(metadata.entry_points(group=GROUP), key=lambda e: e.name):
        dist = getattr(ep.dist, "name", None) or "an unnamed distribution"
        where = f"entry point {ep.name} = {ep.value} of {dist}"
        if ep.name in sources and sources[ep.name][0] != where:
            raise ValueError(f"two tasks are registered as {ep.name!r}: {sources[ep.name][0]} and {where}")
        sources[ep.name] = (where, ep.load)
    return sources


def task_names() -> tuple[str, ...]:
    """Every registered task: the package's, then the plug-ins' in name order."""
    return tuple(_sources())


@functools.cache
def task_class(name: str) -> type:
    """The Task class registered under `name` (imported on first use and checked)."""
    from dblocks_jax.tasks.base import Task

    sources = _sources()
    if name not in sources:
        raise ValueError(f"unknown task {name!r}; allowed: {', '.join(sources)}")
    where, load = sources[name]
    try:
        cls = load()
    except Exception as err:  # a plug-in that fails to import: say which one
        raise ValueError(f"task {name!r} ({where}) failed to load: {type(err).__name__}: {err}") from err
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ValueError(f"task {name!r} ({where}) is not a dblocks_jax.tasks.base.Task subclass: {cls!r}")
    if getattr(cls, "name", None) != name:
        raise ValueError(f"task {name!r} ({where}) calls itself {getattr(cls, 'name', None)!r}: the registered "
                         f"name and the class's `name` must agree")
    cls.check_declarations()
    return cls


def task_classes() -> dict[str, type]:
    """{name: Task class} of every registered task (imports them all; checks that tasks sharing a
    config section name share its class)."""
    classes = {name: task_class(name) for name in task_names()}
    section_owners(classes)
    return classes


def section_owners(classes: dict[str, type] | None = None) -> dict[str, tuple[type, tuple[str, ...]]]:
    """{section name: (its class, the tasks that declare it)}; tasks that share a section (the
    language tasks' `text`) must declare the same class."""
    owners: dict[str, tuple[type, tuple[str, ...]]] = {}
    for name, cls in (task_classes() if classes is None else classes).items():
        for section in cls.sections:
            path = section._path
            known, tasks = owners.get(path, (section, ()))
            if known is not section:
                raise ValueError(f"tasks {', '.join(tasks)} and {name} declare different config sections named "
                                 f"{path!r} ({known.__module__}.{known.__name__} vs {section.__module__}."
                                 f"{section.__name__})")
            owners[path] = (section, (*tasks, name))
    return owners


def refresh() -> None:
    """Forget what was found (after a distribution was added to `sys.path`)."""
    importlib.invalidate_caches()
    _sources.cache_clear()
    task_class.cache_clear()
