"""Tasks: each a plug-in on the task-free engine (`tasks.base.Task`), found by name in the registry
(`tasks.registry`: the package's own tasks and the `dblocks_jax.tasks` entry points)."""

from __future__ import annotations

from dblocks_jax.tasks.registry import task_class, task_classes, task_names


def make_task(config):
    """The task of `config`, built (its network's shapes known, nothing compiled)."""
    return type(config).task_class(config)


__all__ = ["make_task", "task_class", "task_classes", "task_names"]
