"""A task written only for the tests: denoising points of a 2-D Gaussian mixture with MLP blocks.

It plugs into the task-free engine (`dblocks_jax.engine`) through `dblocks_jax.tasks.base.Task`
alone, without any change to the package: used directly (tests/test_toy_task.py) or registered as
a plug-in through the `dblocks_jax.tasks` entry point (tests/test_plugin.py), where the CLI trains,
evaluates, samples, benches, resumes and assembles it. docs/architecture.md ("How to add a task")
walks through it. The data: `NUM_MODES` isotropic Gaussians of standard deviation `MODE_STD` whose
means lie evenly on a circle of radius `RADIUS`.

- Level law: EDM's truncated log-normal over sigma (`engine.edm.EDM`, from the config's `noise`
  section; `toy_config` sets sigma_data to the data's per-coordinate standard deviation).
- Block: a residual MLP F(c_in z, c_noise) (no attention), `model.width` wide and
  `model.layers_per_block` deep; the denoiser is D = c_skip z + c_out F (EDM Table 1).
- Loss: lambda(sigma) ||D - y||^2 per example, in F-space (EDM eq. 8 with lambda c_out^2 = 1).
- Chain: `engine.solvers.make_ode_sampler` with the config's `sampling` section.
- Its own config section `mixture` (one field, `eval_samples`), a preset `toy_mixture`, a flag
  (`--num-samples` for sample and evaluate), and the shell's hooks: `evaluate` (mean distance of
  the samples to the nearest mode), `write_samples` (.npy), `train_summary`, `inference`.

`data.dataset` must be "mixture" (the task validates its data); `data.batch_size` is the batch of
a block step; the image and attention fields of `model` are refused (`unused_fields`).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dblocks_jax.engine.chain import stack_blocks
from dblocks_jax.engine.edm import add_noise
from dblocks_jax.engine.settings import SAMPLING, Section, require, setting
from dblocks_jax.engine.solvers import evaluations_per_sample, make_ode_sampler
from dblocks_jax.tasks.base import Inference
from dblocks_jax.tasks.edm_task import EDMTask
from dblocks_jax.tasks.plugin import Flag, Preset, Request

NUM_MODES = 4
RADIUS = 1.0
MODE_STD = 0.05
CENTRES = RADIUS * np.stack([np.cos(2 * np.pi * np.arange(NUM_MODES) / NUM_MODES),
                             np.sin(2 * np.pi * np.arange(NUM_MODES) / NUM_MODES)], axis=1).astype(np.float32)
DATA_STD = float(np.sqrt(RADIUS**2 / 2 + MODE_STD**2))  # per coordinate: the EDM sigma_data


def mixture_points(rng: np.random.Generator, n: int) -> np.ndarray:
    """n points of the mixture, (n, 2) float32."""
    modes = rng.integers(0, NUM_MODES, n)
    return (CENTRES[modes] + MODE_STD * rng.standard_normal((n, 2))).astype(np.float32)


def distance_to_mixture(points) -> float:
    """Mean distance of `points` (n, 2) to the nearest mode centre."""
    points = np.asarray(points, np.float64)
    return float(np.linalg.norm(points[:, None, :] - CENTRES[None], axis=-1).min(axis=1).mean())


def optimal_denoiser(z, sigma):
    """The Bayes-optimal D(z, sigma) = E[y | y + sigma eps = z] of the mixture, in closed form:
    mode k has posterior weight proportional to N(z; mu_k, (s^2 + sigma^2) I) and posterior mean
    mu_k + s^2 / (s^2 + sigma^2) (z - mu_k). z (N, 2), sigma (N,)."""
    var = MODE_STD**2 + sigma[:, None] ** 2  # (N, 1)
    offset = z[:, None, :] - CENTRES[None]  # (N, K, 2)
    weights = jax.nn.softmax(-jnp.sum(offset**2, axis=-1) / (2 * var), axis=1)  # (N, K)
    means = CENTRES[None] + (MODE_STD**2 / var)[..., None] * offset
    return jnp.sum(weights[..., None] * means, axis=1)


@dataclasses.dataclass(frozen=True)
class MixtureConfig(Section):
    """The toy task's own config section."""

    _path = "mixture"
    eval_samples: int = setting(512, SAMPLING, "points sampled per seed by evaluate")

    def check(self):
        require(self.eval_samples >= 1, self.field("eval_samples"), self.eval_samples, "an integer >= 1")


# Small MLP blocks, EDM constants for data of scale ~0.7 and a fast schedule.
PRESET = Preset("toy_mixture", "2-D Gaussian-mixture denoising with MLP blocks (the tests' plug-in task)", {
    "data.dataset": "mixture", "model.num_blocks": 2, "model.num_layers": 4, "model.width": 64,
    "data.batch_size": 256, "noise.sigma_data": round(DATA_STD, 3), "noise.sigma_max": 20.0, "optim.steps": 150,
    "optim.learning_rate": 1e-2, "optim.warmup_steps": 10, "optim.ema_decay": 0.99, "sampling.steps": 16,
    "sampling.solver": "heun", "sampling.grid": "karras", "sampling.num_samples": 256, "run.log_every": 50,
    "run.checkpoint_every": 0})



class MixtureStream:
    """Block `block`'s endless, resumable training stream: batch k is drawn from its own
    generator seeded by (seed, block, k), so `state()` is just k."""

    def __init__(self, batch_size: int, seed: int, block: int):
        self.batch_size, self.seed, self.block, self.position = batch_size, seed, block, 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        rng = np.random.default_rng([self.seed, self.block, self.position])
        self.position += 1
        return {"x": mixture_points(rng, self.batch_size)}

    def state(self) -> dict:
        return {"position": self.position}

    def restore(self, state: dict) -> None:
        self.position = int(state["position"])


FREQUENCIES = np.array([1.0, 2.0, 4.0, 8.0], np.float32)


def noise_embedding(c_noise):
    """Sinusoidal features (N, 8) of c_noise = ln(sigma) / 4, in [-1.55, 0.75] here: periods from
    0.8 to 6.3, from a third of that range to about three times it. (DiT's timestep embedding,
    tuned for images, puts most of its features at periods far below the range.)"""
    args = c_noise.astype(jnp.float32)[:, None] * FREQUENCIES[None, :]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class MLPBlock(nnx.Module):
    """F(x, c_noise): x (N, 2) and sinusoidal features of c_noise, then `depth` residual
    SiLU layers of `width`, then a zero-initialised read-out (a fresh block is D = c_skip z)."""

    def __init__(self, width: int, depth: int, *, rngs: nnx.Rngs):
        self.inp = nnx.Linear(2 + 2 * len(FREQUENCIES), width, rngs=rngs)
        self.hidden = nnx.List([nnx.Linear(width, width, rngs=rngs) for _ in range(depth)])
        self.out = nnx.Linear(width, 2, kernel_init=nnx.initializers.zeros_init(), rngs=rngs)

    def __call__(self, x, c_noise):
        h = self.inp(jnp.concatenate([x, noise_embedding(c_noise)], axis=-1))
        for layer in self.hidden:
            h = h + layer(jax.nn.silu(h))
        return self.out(jax.nn.silu(h))


class ToyTask(EDMTask):
    name = "toy_mixture"
    family = "mlp"
    description = "2-D Gaussian-mixture denoising (a test plug-in): distance of the samples to the modes"
    sections = (MixtureConfig,)
    presets = (PRESET,)
    flags = (Flag("--num-samples", ("sample", "evaluate"), "points to sample", int, least=1),)
    sample_formats = (".npy",)
    unused_fields = ("data.image_size", "data.augment", "model.num_heads", "model.patch_size", "model.mlp_ratio",
                     "model.class_conditional", "model.label_dropout", "model.dropout", "model.positions")

    @classmethod
    def validate(cls, config) -> None:
        require(config.data.dataset == "mixture", "data.dataset", config.data.dataset,
                f"mixture (the only data of task {cls.name})")

    def __init__(self, config):
        super().__init__(config)
        self._sampler = None

    # -- what the engine asks for -----------------------------------------------------------------

    def make_block(self, rngs: nnx.Rngs) -> MLPBlock:
        return MLPBlock(self.config.model.width, self.config.model.layers_per_block, rngs=rngs)

    def train_batches(self, block: int) -> MixtureStream:
        return MixtureStream(self.config.data.batch_size, self.config.run.seed, block)

    def batch_spec(self, batch_size: int) -> dict:
        return {"x": jax.ShapeDtypeStruct((batch_size, 2), jnp.float32)}

    def draw(self, key, block, batch_spec) -> dict:
        """sigma from the block's (widened) band of the law, and the Gaussian noise."""
        k_sigma, k_eps = jax.random.split(key)
        shape = batch_spec["x"].shape
        return {"sigma": self.partition.sample_level(k_sigma, block, shape[:1]),
                "eps": jax.random.normal(k_eps, shape, jnp.float32)}

    def loss(self, params, batch, draw, block) -> jax.Array:
        """mean ||F(c_in z, c_noise) - (y - c_skip z) / c_out||^2 per example."""
        y, sigma = batch["x"], draw["sigma"]
        z = add_noise(y, sigma, draw["eps"])
        _, _, c_in, c_noise = self.law.scalings(sigma)
        f = self.network(params)(c_in[:, None] * z, c_noise)
        return jnp.mean((f - self.edm.f_target(y, z, sigma)) ** 2, axis=1)

    def write_artifacts(self, workdir: str, block_params: list) -> None:
        np.save(os.path.join(workdir, "samples.npy"),
                self.sample(block_params, self.config.sampling.num_samples, self.config.run.seed))

    # -- the chain --------------------------------------------------------------------------------

    def denoise(self, params, z, sigma, cond=None, block=None) -> jax.Array:
        """D(z, sigma) = c_skip z + c_out F(c_in z, c_noise), sigma one value per example."""
        return self.law.denoise(self.network(params), z, sigma)

    def sample(self, block_params: list, n: int, seed: int = 0) -> np.ndarray:
        """n points from the chained blocks, (n, 2); the start noise comes from `seed`."""
        if self._sampler is None:
            s = self.config.sampling
            self._sampler = make_ode_sampler(self.denoise, self.partition, num_steps=s.steps, solver=s.solver,
                                             grid=s.grid, s_churn=s.s_churn, s_tmin=s.s_tmin, s_tmax=s.s_tmax,
                                             s_noise=s.s_noise)
        key = jax.random.key(seed)
        noise = jax.random.normal(key, (n, 2), jnp.float32)
        return np.asarray(self._sampler(stack_blocks(block_params), noise, None, jax.random.fold_in(key, 1)))

    def inference(self, block_params: list, *, batch: int, steps: int) -> Inference:
        s = dataclasses.replace(self.config.sampling, steps=steps, solver="euler")
        sampler = make_ode_sampler(self.denoise, self.partition, num_steps=s.steps, solver=s.solver, grid=s.grid)
        key = jax.random.key(0)
        args = (stack_blocks(block_params), jax.random.normal(key, (batch, 2), jnp.float32), None, key)
        return Inference(sampler, args, batch, "points", evaluations_per_sample("euler", steps))

    # -- what the shell asks for --------------------------------------------------------------------

    @classmethod
    def train_summary(cls, workdir: str) -> list[str]:
        points = np.load(os.path.join(workdir, "samples.npy"))
        return [f"mean distance of {len(points)} samples to the nearest mode: {distance_to_mixture(points):.4f}"]

    @classmethod
    def evaluate(cls, request: Request) -> dict:
        task, params, steps = request.load()
        n = request.option("num_samples") or task.config.mixture.eval_samples
        distances = [distance_to_mixture(task.sample(params, n, seed)) for seed in request.seeds]
        return {"task": cls.name, "seeds": list(request.seeds), "num_samples": n, "block_steps": steps,
                "untrained": request.untrained, "distance": distances}

    @classmethod
    def report(cls, result: dict) -> list[str]:
        return [f"mean distance to the nearest mode: {np.mean(result['distance']):.4f} over {len(result['seeds'])} "
                f"seed(s) of {result['num_samples']} points"]

    @classmethod
    def write_samples(cls, request: Request) -> list[str]:
        task, params, _ = request.load()
        n = request.option("num_samples") or task.config.sampling.num_samples
        np.save(request.output, task.sample(params, n, request.seed or 0))
        return [f"wrote {n} points to {request.output}"]
