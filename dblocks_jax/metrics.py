"""Sample quality: a Frechet distance in the feature space of a small classifier trained on the
dataset's own labels, and conditional accuracy (the share of class-conditioned samples that this
classifier assigns to the requested class).

InceptionV3 features (standard FID) mean nothing on 16x16 shapes or 8x8 digits. A classifier trained
on the dataset itself ranks what matters there: held-out real data above blurred data above noise
(tests/test_metrics.py checks this on every bundled dataset). The classifier is trained once per
(dataset, image size), deterministically, and cached as an orbax checkpoint with its held-out
accuracy.

For TFDS datasets (CIFAR-10: the paper's setting) `evaluate_run` also reports the standard FID
(`dblocks_jax.inception`) when the pretrained InceptionV3 weights file is configured.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import scipy.linalg
from flax import nnx

from dblocks_jax import data, inception

FEATURE_DIM = 64


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """||mu1 - mu2||^2 + Tr(C1 + C2 - 2 (C1 C2)^(1/2)), the Frechet (2-Wasserstein) distance between
    two Gaussians, in float64."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    covmean = scipy.linalg.sqrtm(cov1 @ cov2)
    if not np.isfinite(covmean).all():  # singular product: regularise, as the reference FID code does
        eps = np.eye(len(cov1)) * 1e-6
        covmean = scipy.linalg.sqrtm((cov1 + eps) @ (cov2 + eps))
    covmean = np.real(covmean)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(covmean))


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features, np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


class Classifier(nnx.Module):
    """A small CNN; `features` (the penultimate layer) is the space the Frechet distance uses."""

    def __init__(self, channels: int, num_classes: int, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(channels, 32, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, (3, 3), strides=(2, 2), rngs=rngs)
        self.conv3 = nnx.Conv(64, 64, (3, 3), strides=(2, 2), rngs=rngs)
        self.dense = nnx.Linear(64, FEATURE_DIM, rngs=rngs)
        self.head = nnx.Linear(FEATURE_DIM, num_classes, rngs=rngs)

    def features(self, x):
        x = nnx.gelu(self.conv3(nnx.gelu(self.conv2(nnx.gelu(self.conv1(x))))))
        return nnx.gelu(self.dense(x.mean(axis=(1, 2))))

    def __call__(self, x):
        return self.head(self.features(x))


@dataclasses.dataclass(frozen=True)
class ClassifierSettings:
    steps: int = 1500
    batch_size: int = 128
    learning_rate: float = 2e-3
    seed: int = 0


def cache_dir() -> str:
    """Where trained classifiers are kept: $DBLOCKS_CACHE, else ~/.cache/dblocks_jax."""
    return os.environ.get("DBLOCKS_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "dblocks_jax"))


class FeatureClassifier:
    """A trained classifier for one (dataset, image size): `features`, `predict`, `accuracy`."""

    def __init__(self, dataset: str, image_size: int, settings: ClassifierSettings = ClassifierSettings()):
        self.dataset, self.image_size, self.settings = dataset, image_size, settings
        info = data.dataset_info(dataset)
        abstract = nnx.eval_shape(lambda: Classifier(info.channels, info.num_classes, rngs=nnx.Rngs(0)))
        self.graphdef, abstract_params = nnx.split(abstract, nnx.Param)
        tag = f"{dataset.replace(':', '_')}_{image_size}px_s{settings.steps}_seed{settings.seed}"
        self.path = os.path.join(cache_dir(), "classifiers", tag)
        meta_path = os.path.join(self.path, "meta.json")
        if os.path.exists(meta_path):
            try:
                self.params = ocp.StandardCheckpointer().restore(
                    os.path.join(self.path, "params"), jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_params))
                with open(meta_path) as f:
                    self.accuracy = json.load(f)["held_out_accuracy"]
            except Exception as err:
                raise ValueError(f"cannot load the cached classifier in {self.path} ({err}); delete that "
                                 f"directory to retrain it") from err
        else:
            self.params, self.accuracy = self._train(info)
            checkpointer = ocp.StandardCheckpointer()
            checkpointer.save(os.path.join(self.path, "params"), self.params, force=True)
            checkpointer.wait_until_finished()
            with open(meta_path, "w") as f:
                json.dump({"dataset": dataset, "image_size": image_size, "held_out_accuracy": self.accuracy,
                           **dataclasses.asdict(settings)}, f, indent=1)
        self._features = jax.jit(lambda p, x: nnx.merge(self.graphdef, p).features(x))
        self._logits = jax.jit(lambda p, x: nnx.merge(self.graphdef, p)(x))

    def _train(self, info) -> tuple:
        s = self.settings
        images, labels = data.load_split(self.dataset, "train", self.image_size)
        graphdef = self.graphdef
        params = nnx.split(Classifier(info.channels, info.num_classes, rngs=nnx.Rngs(s.seed)), nnx.Param)[1]
        tx = optax.adam(optax.cosine_decay_schedule(s.learning_rate, s.steps))
        opt_state = tx.init(params)

        @jax.jit
        def step(params, opt_state, x, y):
            def loss_fn(p):
                logits = nnx.merge(graphdef, p)(x)
                return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

            grads = jax.grad(loss_fn)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        batches = data.Batches(images, labels, min(s.batch_size, len(images)), seed=(s.seed, 7))
        for _ in range(s.steps):
            batch = next(batches)
            params, opt_state = step(params, opt_state, batch["image"], batch["label"])
        test_images, test_labels = data.load_split(self.dataset, "test", self.image_size)
        logits = _batched(lambda x: nnx.merge(graphdef, params)(x), test_images)
        return params, float(np.mean(np.argmax(logits, -1) == test_labels))

    def features(self, images: np.ndarray) -> np.ndarray:
        return _batched(lambda x: self._features(self.params, x), images)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return np.argmax(_batched(lambda x: self._logits(self.params, x), images), axis=-1)


def _batched(fn, images: np.ndarray, batch: int = 512) -> np.ndarray:
    return np.concatenate([np.asarray(fn(jnp.asarray(images[i:i + batch], jnp.float32)))
                           for i in range(0, len(images), batch)])


def feature_frechet_distance(classifier: FeatureClassifier, images: np.ndarray, reference: np.ndarray) -> float:
    return frechet_distance(*gaussian_stats(classifier.features(images)),
                            *gaussian_stats(classifier.features(reference)))


def conditional_accuracy(classifier: FeatureClassifier, images: np.ndarray, requested: np.ndarray) -> float:
    return float(np.mean(classifier.predict(images) == np.asarray(requested)))


def inception_fid(extractor: inception.InceptionFeatures, images: np.ndarray, reference_stats: tuple) -> float:
    """Standard FID of `images` against precomputed `gaussian_stats` of the reference's pool3
    features (computed once per evaluation: the reference is the costly half when it is large)."""
    return frechet_distance(*gaussian_stats(extractor.features(images)), *reference_stats)


def inception_plan(dataset: str, inception_weights: str | None) -> tuple[str | None, str | None]:
    """(weights file to use, None) or (None, why standard FID is skipped).

    An explicit `inception_weights` is used for any dataset; otherwise TFDS datasets use
    $DBLOCKS_INCEPTION_WEIGHTS when set, and bundled datasets (8-32 px toys, where Inception features
    mean nothing) are skipped."""
    if inception_weights:
        return inception_weights, None
    if not dataset.startswith("tfds:"):
        return None, (f"bundled dataset {dataset!r}: InceptionV3 features mean nothing at this size "
                      f"(pass inception_weights to compute standard FID anyway)")
    if os.environ.get(inception.WEIGHTS_ENV):
        return os.environ[inception.WEIGHTS_ENV], None
    return None, f"no InceptionV3 weights configured: {inception.HOW_TO_GET}"


def evaluate_run(workdir: str, *, seeds=(0, 1, 2), num_samples: int | None = None, overrides: dict | None = None,
                 classifier_settings: ClassifierSettings = ClassifierSettings(), untrained: bool = False,
                 inception_weights: str | None = None, progress: bool = True) -> dict:
    """Score a trained run: the Frechet distance of its samples to the held-out split in classifier
    feature space and their conditional accuracy, mean and std over sampling seeds. `untrained`
    scores freshly initialised blocks of the same config instead (the baseline to beat).

    Standard FID (InceptionV3 pool3, same samples and seeds) is added under "fid" for TFDS datasets
    when weights are configured (`inception_plan`); otherwise "fid" is null and "fid_skipped" says
    why. Weights that are configured but cannot be loaded are an error, raised before sampling."""
    from dblocks_jax import training

    config = training.read_run_config(workdir, **(overrides or {}))
    weights, fid_skipped = inception_plan(config.dataset, inception_weights)
    extractor = inception.load_inception(weights) if weights else None
    if progress and fid_skipped and config.dataset.startswith("tfds:"):
        print(f"evaluate: standard FID skipped: {fid_skipped}", flush=True)
    reference, _ = data.load_split(config.dataset, "test", config.image_size)
    num_samples = num_samples or len(reference)
    classifier = FeatureClassifier(config.dataset, config.image_size, classifier_settings)
    trainer = training.BlockTrainer(config)
    if untrained:
        params = [jax.device_get(trainer.init_state(b).ema) for b in range(config.num_blocks)]
        steps = [0] * config.num_blocks
    else:
        params, steps = training.restore_run(workdir, trainer)
    reference_stats = None
    if extractor is not None:
        if progress:
            print(f"evaluate: InceptionV3 features of {len(reference)} held-out images "
                  f"(about 6 GFLOP each: slow without an accelerator)", flush=True)
        reference_stats = gaussian_stats(extractor.features(reference))
    fds, accs, fids = [], [], []
    for seed in seeds:
        if progress:
            print(f"evaluate: sampling {num_samples} images with seed {seed}", flush=True)
        images, labels = training.sample_from_config(config.replace(num_samples=num_samples, seed=seed),
                                                     trainer.model, params)
        fds.append(feature_frechet_distance(classifier, images, reference))
        if labels is not None:
            accs.append(conditional_accuracy(classifier, images, labels))
        if extractor is not None:
            fids.append(inception_fid(extractor, images, reference_stats))
    summary = lambda xs: {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
                          "values": xs}
    return {
        "workdir": os.path.abspath(workdir), "dataset": config.dataset, "image_size": config.image_size,
        "num_blocks": config.num_blocks, "untrained": untrained, "checkpoint_steps": steps, "num_samples": num_samples,
        "num_reference": len(reference), "seeds": list(seeds),
        "sampler": {"solver": config.solver, "grid": config.grid, "steps": config.sample_steps,
                    "guidance": config.guidance},
        "frechet_distance": summary(fds),
        "conditional_accuracy": summary(accs) if accs else None,
        "classifier": {"path": classifier.path, "held_out_accuracy": classifier.accuracy,
                       "feature_dim": FEATURE_DIM, **dataclasses.asdict(classifier_settings)},
        "fid": None if extractor is None else {
            **summary(fids), "weights": extractor.weights_path, "feature_dim": inception.FEATURE_DIM,
            "reference": f"test split at {config.image_size}x{config.image_size}, resized to "
                         f"{inception.INPUT_SIZE}x{inception.INPUT_SIZE}"},
        "fid_skipped": fid_skipped,
    }
