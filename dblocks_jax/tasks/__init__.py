"""Tasks: each a plug-in on the task-free engine (`tasks.base.Task`)."""

from __future__ import annotations


def task_class(name: str) -> type:
    """The Task class registered under `name` (imported on demand)."""
    if name == "image_generation":
        from dblocks_jax.tasks.image_generation import ImageGeneration

        return ImageGeneration
    if name == "image_classification":
        from dblocks_jax.tasks.image_classification import ImageClassification

        return ImageClassification
    if name == "masked_lm":
        from dblocks_jax.tasks.masked_lm import MaskedLM

        return MaskedLM
    if name == "autoregressive_lm":
        from dblocks_jax.tasks.autoregressive_lm import AutoregressiveLM

        return AutoregressiveLM
    if name == "recurrent_lm":
        from dblocks_jax.tasks.recurrent_lm import RecurrentLM

        return RecurrentLM
    raise ValueError(f"unknown task {name!r}; allowed: image_generation, image_classification, masked_lm, "
                     f"autoregressive_lm, recurrent_lm")


def make_task(config):
    """The task of `config`, built (its network's shapes known, nothing compiled)."""
    return task_class(config.task)(config)
