"""What the tasks whose corruption is Gaussian noise share: EDM's level law over sigma (Karras et
al. 2022: ln sigma ~ N(noise.p_mean, noise.p_std^2) truncated to [sigma_min, sigma_max]) and its
preconditioning, built from the config's `noise` section. Image generation, classification, the
autoregressive and the recurrent-depth LMs build on it; masked diffusion has its own law."""

from __future__ import annotations

import dataclasses

from dblocks_jax.engine.edm import EDM
from dblocks_jax.tasks.base import Task


class EDMTask(Task):
    """A `Task` whose level law is EDM's; `edm` is that law with its scalings and loss weight."""

    def make_law(self) -> EDM:
        return EDM(**dataclasses.asdict(self.config.noise))

    @property
    def edm(self) -> EDM:
        return self.law
