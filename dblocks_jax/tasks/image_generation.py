"""Image generation (the paper's DiT experiments): each block a class-conditional EDM denoiser of
images for its band of sigma, chained at inference by a probability-flow ODE sampler.

- Level law: EDM's truncated log-normal over sigma (`engine.edm.EDM`), preconditioned denoiser
  D(z, sigma) = c_skip z + c_out F(c_in z, c_noise, class) (EDM Table 1).
- Block loss: lambda(sigma) ||D - y||^2 per example, computed in the numerically kinder F-space
  form ||F - (y - c_skip z) / c_out||^2 (EDM eq. 8). Labels are replaced by the null class with
  probability `model.label_dropout`, so that one network gives both terms of classifier-free
  guidance (Ho & Salimans 2022): D = D_null + s (D_cond - D_null).
- Chain: Euler (the paper's), Heun, or EDM's stochastic sampler over the level grid
  (`engine.solvers`), each step run by the block that owns its sigma.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dblocks_jax.engine import solvers
from dblocks_jax.engine.chain import per_example_normal, stack_blocks
from dblocks_jax.engine.edm import add_noise, per_example
from dblocks_jax.evaluation.stats import describe
from dblocks_jax.models.dit import DiT
from dblocks_jax.tasks import flags
from dblocks_jax.tasks.base import Inference
from dblocks_jax.tasks.image_task import ImageTask
from dblocks_jax.tasks.plugin import Flag, Preset, Request, one_int

PRESETS = (
    Preset("shapes", "tiny DiT, B = 4, on the embedded shapes dataset: trains on a 2-core CPU in minutes",
           {"data.dataset": "shapes"}),
    Preset("cifar10_dit_s", "the paper's DiT-S/2 CIFAR-10 setting (12 layers, width 384, B = 3), for GPU/TPU", {
        "data.dataset": "tfds:cifar10", "data.image_size": 32, "data.batch_size": 512,
        "model.num_layers": 12, "model.num_blocks": 3, "model.width": 384, "model.num_heads": 6,
        "model.patch_size": 2, "optim.learning_rate": 1e-4, "optim.warmup_steps": 0, "optim.steps": 400_000,
        "optim.ema_decay": 0.9999, "sampling.guidance": 2.0, "run.log_every": 100}),
)
FLAGS = (
    dataclasses.replace(flags.NUM_SAMPLES, commands=("sample",)), flags.GRID, flags.BATCH_SIZE,
    Flag("--num-samples", ("evaluate",), "samples per seed (default: the held-out split's size)", int,
         least=1),
    Flag("--steps", ("sample",), "sampling.steps: chain steps K", int, field="sampling.steps"),
    Flag("--steps", ("evaluate",), "sampling.steps: chain steps K (one value)"),
    Flag("--solver", ("sample",), "sampling.solver", choices=solvers.SOLVERS, field="sampling.solver"),
    Flag("--guidance", ("sample", "evaluate"), "sampling.guidance: classifier-free guidance (1 = conditional)", float,
         field="sampling.guidance"),
    Flag("--class", ("sample",), "draw every sample of this class (default: a balanced grid over the classes)", int,
         dest="class_label"),
    Flag("--inception-weights", ("evaluate",), "pytorch-fid's pt_inception-2015-12-05-6726825d.pth (or an .npz with "
                                               "its keys): adds the standard FID (InceptionV3). tfds: datasets default "
                                               "to $DBLOCKS_INCEPTION_WEIGHTS; bundled datasets only with this flag",
         metavar="PATH"),
)


def check_samples(images: np.ndarray, limit: float = 10.0) -> None:
    """Warn (stderr) when samples are non-finite or far outside the data range [-1, 1]: the mark
    of a diverged model or sampler, which a grid of clipped pixels would hide."""
    finite = np.isfinite(images)
    if not finite.all():
        print(f"warning: {np.size(images) - int(finite.sum()):,} non-finite values in the samples (a diverged "
              f"model or sampler?)", file=sys.stderr, flush=True)
    elif np.abs(images).max() > limit:
        print(f"warning: samples reach {np.abs(images).max():.3g}, far outside the data range [-1, 1] (a diverged "
              f"model or sampler?)", file=sys.stderr, flush=True)


def balanced_labels(num_samples: int, num_classes: int) -> np.ndarray:
    """Class labels in contiguous, equal-sized groups (a grid reads class by class)."""
    return (np.arange(num_samples) * max(num_classes, 1) // num_samples).astype(np.int32)


class ImageGeneration(ImageTask):
    name = "image_generation"
    family = "dit"
    description = "class-conditional image generation (DiT; paper Table 2): Frechet distance, FID, samples"
    presets = PRESETS
    flags = FLAGS
    sample_formats = (".png", ".npz", ".npy")
    unused_fields = ImageTask.unused_fields + ("model.dropout",)  # DiT has no dropout

    def __init__(self, config):
        super().__init__(config)
        self._samplers: dict[tuple, Callable] = {}

    # -- the pieces the engine asks for -------------------------------------------------------------

    def make_block(self, rngs: nnx.Rngs) -> DiT:
        m, d = self.config.model, self.config.data
        return DiT(image_size=d.image_size, channels=self.info.channels, patch_size=m.patch_size, width=m.width,
                   depth=m.layers_per_block, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
                   num_classes=self.num_classes, **m.stack_options, rngs=rngs)

    @property
    def num_classes(self) -> int:
        """Classes the model is conditioned on; 0 for an unconditional model."""
        return self.info.num_classes if self.config.model.class_conditional else 0

    @property
    def null_label(self) -> int:
        return self.num_classes

    def draw(self, key, block, batch_spec) -> dict:
        """Sigmas from the block's own (widened) band, the Gaussian noise and the label-dropout mask."""
        k_sigma, k_eps, k_drop = jax.random.split(key, 3)
        shape = batch_spec["image"].shape
        return {"sigma": self.partition.sample_level(k_sigma, block, shape[:1]),
                "eps": jax.random.normal(k_eps, shape, jnp.float32),
                "drop": jax.random.bernoulli(k_drop, self.config.model.label_dropout, shape[:1])}

    def loss(self, params, batch, draw, block) -> jax.Array:
        """lambda(sigma) ||D - y||^2 per example, in F-space: mean ||F - (y - c_skip z) / c_out||^2."""
        y = batch["image"].astype(jnp.float32)
        sigma = draw["sigma"]
        z = add_noise(y, sigma, draw["eps"])
        labels = jnp.where(draw["drop"], self.null_label, batch["label"]) if self.num_classes else None
        _, _, c_in, c_noise = self.edm.scalings(sigma)
        f = self.network(params)(per_example(c_in, z) * z, c_noise, labels, self.block_depth(block))
        return jnp.mean((f.astype(jnp.float32) - self.edm.f_target(y, z, sigma)) ** 2, axis=(1, 2, 3))

    # -- the denoiser and the chain -----------------------------------------------------------------

    def denoise(self, params, z, sigma, labels=None, block=None) -> jax.Array:
        """The preconditioned denoiser D(z, sigma) (float32), sigma one value per example."""
        net = self.network(params)
        return self.edm.denoise(lambda x, c_noise: net(x, c_noise, labels, self.block_depth(block)), z, sigma)

    def guided_denoise(self, params, z, sigma, labels, guidance: float, block=None) -> jax.Array:
        """Classifier-free guidance D = D_null + s (D_cond - D_null); one batched pass for both."""
        if not self.num_classes or guidance == 1.0:
            return self.denoise(params, z, sigma, labels if self.num_classes else None, block)
        null = jnp.full_like(labels, self.null_label)
        both = self.denoise(params, jnp.concatenate([z, z]), jnp.concatenate([sigma, sigma]),
                            jnp.concatenate([labels, null]), block)
        d_cond, d_null = jnp.split(both, 2)
        return d_null + guidance * (d_cond - d_null)

    def sampler(self, sampling) -> Callable:
        """The compiled chain `sample(stacked_params, noise, labels, key)` for these sampler settings
        (one compilation per settings, reused across seeds and calls)."""
        key = dataclasses.astuple(dataclasses.replace(sampling, num_samples=1))  # any count, one compilation
        if key not in self._samplers:
            guidance = float(sampling.guidance)
            denoise = lambda params, z, sigma, labels, b: self.guided_denoise(params, z, sigma, labels, guidance, b)
            self._samplers[key] = solvers.make_ode_sampler(
                denoise, self.partition, num_steps=sampling.steps, solver=sampling.solver, grid=sampling.grid,
                s_churn=sampling.s_churn, s_tmin=sampling.s_tmin, s_tmax=sampling.s_tmax, s_noise=sampling.s_noise)
        return self._samplers[key]

    def sampler_and_inputs(self, block_params: list, *, num_samples: int, seed: int = 0, labels=None,
                           sampling=None) -> tuple[Callable, tuple]:
        """What `generate` runs, unrun: the compiled sampler and its arguments (stacked parameters,
        seeded noise, labels, chain key), so that callers can lower, compile and time it."""
        if len(block_params) != self.num_blocks:
            raise ValueError(f"got parameters for {len(block_params)} blocks; the partition has {self.num_blocks}")
        sampling = sampling or self.config.sampling
        if self.num_classes and labels is None:
            labels = balanced_labels(num_samples, self.num_classes)
        labels = None if labels is None or not self.num_classes else jnp.asarray(labels, jnp.int32)
        return self.sampler(sampling), (stack_blocks(block_params), self.noise(seed, 0, num_samples), labels,
                                        self.chain_key(seed, 0))

    def noise(self, seed: int, start: int, count: int) -> jax.Array:
        """The starting noise of samples start..start+count-1, each from its own key, so a sample
        does not depend on the batch it is drawn in."""
        return per_example_normal(seed, start, count, self.image_shape)

    @staticmethod
    def chain_key(seed: int, start: int) -> jax.Array:
        """The stochastic solver's key for the batch that starts at sample `start`."""
        return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 1), start)

    def generate(self, block_params: list, *, num_samples: int, seed: int = 0, labels=None,
                 sampling=None) -> jax.Array:
        """Samples of a trained model (one parameter tree per block); class-conditional models get
        balanced labels unless `labels` is given."""
        sampler, args = self.sampler_and_inputs(block_params, num_samples=num_samples, seed=seed, labels=labels,
                                                sampling=sampling)
        return sampler(*args)

    def sample_batches(self, block_params: list, labels=None, sampling=None, seed: int | None = None,
                       num_samples: int | None = None, batch_size: int = 256):
        """Samples with the config's sampler settings (seed: run.seed), `batch_size` at a time:
        yields (images, labels) per batch, so any number of samples fits in memory. The chain key
        is the sampling seed's, each sample's noise its own: the samples do not depend on the
        batch size. The stochastic solver's per-step noise is drawn per batch."""
        sampling = sampling or self.config.sampling
        n = num_samples or sampling.num_samples
        seed = self.config.run.seed if seed is None else seed
        if labels is None and self.num_classes:
            labels = balanced_labels(n, self.num_classes)
        stacked = stack_blocks(block_params)
        sampler = self.sampler(sampling)
        for start in range(0, n, batch_size):
            count = min(batch_size, n - start)
            part = None if labels is None else np.asarray(labels[start:start + count])
            cond = None if part is None or not self.num_classes else jnp.asarray(part, jnp.int32)
            images = np.asarray(sampler(stacked, self.noise(seed, start, count), cond, self.chain_key(seed, start)))
            check_samples(images)
            yield images, part

    def samples(self, block_params: list, labels=None, sampling=None, seed: int | None = None,
                num_samples: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """All samples at once (see `sample_batches`); (images, labels)."""
        parts = list(self.sample_batches(block_params, labels, sampling, seed, num_samples, batch_size=4096))
        images = np.concatenate([p[0] for p in parts])
        return images, (None if parts[0][1] is None else np.concatenate([p[1] for p in parts]))

    def write_artifacts(self, workdir: str, block_params: list) -> None:
        from dblocks_jax.evaluation.plots import save_image_grid

        images, _ = self.samples(block_params)
        save_image_grid(os.path.join(workdir, "samples.png"), images)

    def inference(self, block_params: list, *, batch: int, steps: int) -> Inference:
        """`batch` images from the Euler chain of `steps` steps, without guidance (one pass a step)."""
        sampling = dataclasses.replace(self.config.sampling, steps=steps, solver="euler", grid="equiprobable",
                                       guidance=1.0)
        fn, args = self.sampler_and_inputs(block_params, num_samples=batch, sampling=sampling)
        return Inference(fn, args, batch, "images", solvers.evaluations_per_sample("euler", steps))

    # -- the shell's hooks ----------------------------------------------------------------------------

    @classmethod
    def train_summary(cls, workdir: str) -> list[str]:
        return [f"samples: {os.path.join(workdir, 'samples.png')}"]

    @classmethod
    def evaluate(cls, request: Request) -> dict:
        from dblocks_jax.tasks.image_generation_eval import evaluate_run

        steps = one_int("--steps", request.option("steps"))
        overrides = {} if steps is None else {"sampling.steps": steps}
        return evaluate_run(dataclasses.replace(request, overrides={**request.overrides, **overrides}),
                            num_samples=request.option("num_samples"),
                            inception_weights=request.option("inception_weights"), progress=request.progress)

    @classmethod
    def report(cls, result: dict) -> list[str]:
        fd, acc = result["frechet_distance"], result["conditional_accuracy"]
        lines = [f"Frechet distance (classifier features, {result['num_samples']} samples vs "
                 f"{result['num_reference']} held-out): {describe(fd, 3)} over "
                 f"{len(result['seeds'])} seeds"]
        if acc:
            lines.append(f"conditional accuracy: {describe(acc, 3)} (classifier's own held-out "
                         f"accuracy: {result['classifier']['held_out_accuracy']:.3f})")
        fid = result["fid"]
        if fid:
            lines.append(f"FID (InceptionV3 pool3, {result['num_samples']} samples vs {result['num_reference']} "
                         f"held-out): {describe(fid, 2)} over {len(result['seeds'])} seeds "
                         f"(weights: {fid['weights']})")
        elif result["dataset"].startswith("tfds:"):
            lines.append(f"FID not computed: {result['fid_skipped']}")
        return lines

    @classmethod
    def write_samples(cls, request: Request) -> list[str]:
        """A PNG grid, an .npz (images, labels) or an .npy written batch by batch (any number of
        samples fits in memory)."""
        from dblocks_jax.evaluation.plots import save_image_grid

        task, params, _ = request.load()
        s, out, label = task.config.sampling, request.output, request.option("class_label")
        labels = None
        if label is not None:
            if not 0 <= label < task.num_classes:
                raise ValueError(f"--class {label}; allowed: 0..{task.num_classes - 1} for this run "
                                 f"(model.class_conditional: {task.config.model.class_conditional})")
            labels = np.full(s.num_samples, label, np.int32)
        batches = task.sample_batches(params, labels=labels, seed=request.seed,
                                      batch_size=request.option("batch_size", 256))
        if out.endswith(".npy"):  # streamed: written batch by batch, never all in memory
            array = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32,
                                              shape=(s.num_samples, *task.image_shape))
            start = 0
            for images, _ in batches:
                array[start:start + len(images)] = images
                start += len(images)
            array.flush()
        else:
            parts = list(batches)
            images = np.concatenate([p[0] for p in parts])
            labels = None if parts[0][1] is None else np.concatenate([p[1] for p in parts])
            if out.endswith(".png"):
                save_image_grid(out, images)
            else:
                np.savez(out, images=images, labels=labels if labels is not None else np.zeros(0, np.int32))
        return [f"wrote {s.num_samples} samples ({s.solver}, {s.steps} steps, {s.grid} grid, guidance {s.guidance}) "
                f"to {out}"]
