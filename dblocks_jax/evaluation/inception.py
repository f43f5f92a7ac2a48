"""Standard FID features: the FID variant of InceptionV3 in Flax NNX (NHWC), and its pretrained
weights loaded without torch (`torch_weights`).

FID (Heusel et al. 2017, "GANs trained by a two time-scale update rule converge to a local Nash
equilibrium") is only comparable across papers when computed with one fixed network: the
InceptionV3 graph of TensorFlow's 2015-12-05 release, as used by the reference TF FID code and
ported to PyTorch by pytorch-fid (github.com/mseitzer/pytorch-fid, whose release asset
`pt_inception-2015-12-05-6726825d.pth` is the weights file loaded here). It differs from
torchvision's InceptionV3 in three places, and the features (hence the FID) change if any is
missed: the 3x3 average pools inside the Inception A, C and first E blocks divide by the number of
*real* pixels in the window (no zero padding counted), the last E block pools with a 3x3 max
instead of an average, and BatchNorm uses eps 1e-3. The feature is pool3: the 2048-d global
average of the last block.

Module and attribute names follow the state dict of that file (`Mixed_5b.branch5x5_1.conv.weight`
is `model.Mixed_5b.branch5x5_1.conv.kernel` here), so loading is a rename plus a transpose.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dblocks_jax.evaluation.torch_weights import read_state_dict

FEATURE_DIM = 2048
INPUT_SIZE = 299
WEIGHTS_ENV = "DBLOCKS_INCEPTION_WEIGHTS"
WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_FILE}"
HOW_TO_GET = (f"download pytorch-fid's {WEIGHTS_FILE} ({WEIGHTS_URL}) on a machine with network access, "
              f"copy it here and pass its path (`dblocks evaluate --inception-weights PATH`, or "
              f"inception_weights=PATH) or set {WEIGHTS_ENV}=PATH")
_EXPECTED = f"Expected pytorch-fid's {WEIGHTS_FILE} (or an .npz with its key names): {HOW_TO_GET}"


# --------------------------------------------------------------------------------------------------
# The network


class ConvBN(nnx.Module):
    """Conv (no bias) -> BatchNorm (inference statistics, eps 1e-3) -> ReLU: every conv of InceptionV3.

    Convolutions run at float32 `HIGHEST` precision so that a GPU's TF32 default does not shift the
    features away from the reference implementation's."""

    def __init__(self, in_features: int, out_features: int, kernel_size: tuple[int, int],
                 strides: int = 1, padding: tuple[int, int] = (0, 0), *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(in_features, out_features, kernel_size, strides=strides,
                             padding=((padding[0], padding[0]), (padding[1], padding[1])), use_bias=False,
                             precision=jax.lax.Precision.HIGHEST,
                             kernel_init=nnx.initializers.he_normal(), rngs=rngs)
        self.bn = nnx.BatchNorm(out_features, use_running_average=True, epsilon=1e-3, rngs=rngs)

    def __call__(self, x):
        return jax.nn.relu(self.bn(self.conv(x)))


def _avg_pool_3x3(x):
    """3x3, stride 1, 'same' average that counts only the real pixels of each window (the FID
    blocks; torchvision counts the zero padding too)."""
    return nnx.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x, stride: int, padding: int = 0):
    return nnx.max_pool(x, (3, 3), strides=(stride, stride), padding=((padding, padding), (padding, padding)))


class InceptionA(nnx.Module):
    """35x35 block (Mixed_5b/c/d): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avg-pool-1x1."""

    def __init__(self, in_features: int, pool_features: int, *, rngs: nnx.Rngs):
        self.branch1x1 = ConvBN(in_features, 64, (1, 1), rngs=rngs)
        self.branch5x5_1 = ConvBN(in_features, 48, (1, 1), rngs=rngs)
        self.branch5x5_2 = ConvBN(48, 64, (5, 5), padding=(2, 2), rngs=rngs)
        self.branch3x3dbl_1 = ConvBN(in_features, 64, (1, 1), rngs=rngs)
        self.branch3x3dbl_2 = ConvBN(64, 96, (3, 3), padding=(1, 1), rngs=rngs)
        self.branch3x3dbl_3 = ConvBN(96, 96, (3, 3), padding=(1, 1), rngs=rngs)
        self.branch_pool = ConvBN(in_features, pool_features, (1, 1), rngs=rngs)

    def __call__(self, x):
        return jnp.concatenate([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool_3x3(x)),
        ], axis=-1)


class InceptionB(nnx.Module):
    """Grid reduction 35 -> 17 (Mixed_6a): stride-2 3x3 | 1x1-3x3-stride-2 3x3 | stride-2 max-pool."""

    def __init__(self, in_features: int, *, rngs: nnx.Rngs):
        self.branch3x3 = ConvBN(in_features, 384, (3, 3), strides=2, rngs=rngs)
        self.branch3x3dbl_1 = ConvBN(in_features, 64, (1, 1), rngs=rngs)
        self.branch3x3dbl_2 = ConvBN(64, 96, (3, 3), padding=(1, 1), rngs=rngs)
        self.branch3x3dbl_3 = ConvBN(96, 96, (3, 3), strides=2, rngs=rngs)

    def __call__(self, x):
        return jnp.concatenate([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            _max_pool_3x3(x, stride=2),
        ], axis=-1)


class InceptionC(nnx.Module):
    """17x17 block with factorised 7x7 convolutions (1x7 then 7x1; Mixed_6b-e)."""

    def __init__(self, in_features: int, channels_7x7: int, *, rngs: nnx.Rngs):
        c7 = channels_7x7
        self.branch1x1 = ConvBN(in_features, 192, (1, 1), rngs=rngs)
        self.branch7x7_1 = ConvBN(in_features, c7, (1, 1), rngs=rngs)
        self.branch7x7_2 = ConvBN(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7_3 = ConvBN(c7, 192, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_1 = ConvBN(in_features, c7, (1, 1), rngs=rngs)
        self.branch7x7dbl_2 = ConvBN(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_3 = ConvBN(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7dbl_4 = ConvBN(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_5 = ConvBN(c7, 192, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch_pool = ConvBN(in_features, 192, (1, 1), rngs=rngs)

    def __call__(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7dbl = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            b7dbl = layer(b7dbl)
        return jnp.concatenate([self.branch1x1(x), b7, b7dbl, self.branch_pool(_avg_pool_3x3(x))], axis=-1)


class InceptionD(nnx.Module):
    """Grid reduction 17 -> 8 (Mixed_7a)."""

    def __init__(self, in_features: int, *, rngs: nnx.Rngs):
        self.branch3x3_1 = ConvBN(in_features, 192, (1, 1), rngs=rngs)
        self.branch3x3_2 = ConvBN(192, 320, (3, 3), strides=2, rngs=rngs)
        self.branch7x7x3_1 = ConvBN(in_features, 192, (1, 1), rngs=rngs)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7x3_4 = ConvBN(192, 192, (3, 3), strides=2, rngs=rngs)

    def __call__(self, x):
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return jnp.concatenate([self.branch3x3_2(self.branch3x3_1(x)), b7, _max_pool_3x3(x, stride=2)], axis=-1)


class InceptionE(nnx.Module):
    """8x8 block with expanded filter banks (Mixed_7b/c). `pool` is 'avg' in Mixed_7b and 'max' in
    Mixed_7c: the TF graph that published FIDs use pools with a max there."""

    def __init__(self, in_features: int, pool: str, *, rngs: nnx.Rngs):
        if pool not in ("avg", "max"):
            raise ValueError(f"pool={pool!r}; allowed: 'avg', 'max'")
        self.pool = pool
        self.branch1x1 = ConvBN(in_features, 320, (1, 1), rngs=rngs)
        self.branch3x3_1 = ConvBN(in_features, 384, (1, 1), rngs=rngs)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
        self.branch3x3dbl_1 = ConvBN(in_features, 448, (1, 1), rngs=rngs)
        self.branch3x3dbl_2 = ConvBN(448, 384, (3, 3), padding=(1, 1), rngs=rngs)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
        self.branch_pool = ConvBN(in_features, 192, (1, 1), rngs=rngs)

    def __call__(self, x):
        b3 = self.branch3x3_1(x)
        b3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = _avg_pool_3x3(x) if self.pool == "avg" else _max_pool_3x3(x, stride=1, padding=1)
        return jnp.concatenate([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(b3dbl), self.branch3x3dbl_3b(b3dbl),
            self.branch_pool(pooled),
        ], axis=-1)


class InceptionV3(nnx.Module):
    """The FID InceptionV3 up to pool3: (N, 299, 299, 3) in [-1, 1] -> (N, 2048).

    Random initialisation (He normal, identity BatchNorm) keeps activations at a usable scale for
    shape and plumbing tests; FID needs the real weights (`load_inception`)."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.Conv2d_1a_3x3 = ConvBN(3, 32, (3, 3), strides=2, rngs=rngs)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, (3, 3), rngs=rngs)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, (3, 3), padding=(1, 1), rngs=rngs)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, (1, 1), rngs=rngs)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, (3, 3), rngs=rngs)
        self.Mixed_5b = InceptionA(192, pool_features=32, rngs=rngs)
        self.Mixed_5c = InceptionA(256, pool_features=64, rngs=rngs)
        self.Mixed_5d = InceptionA(288, pool_features=64, rngs=rngs)
        self.Mixed_6a = InceptionB(288, rngs=rngs)
        self.Mixed_6b = InceptionC(768, channels_7x7=128, rngs=rngs)
        self.Mixed_6c = InceptionC(768, channels_7x7=160, rngs=rngs)
        self.Mixed_6d = InceptionC(768, channels_7x7=160, rngs=rngs)
        self.Mixed_6e = InceptionC(768, channels_7x7=192, rngs=rngs)
        self.Mixed_7a = InceptionD(768, rngs=rngs)
        self.Mixed_7b = InceptionE(1280, pool="avg", rngs=rngs)
        self.Mixed_7c = InceptionE(2048, pool="max", rngs=rngs)

    def __call__(self, x):
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # 299 -> 149 -> 147
        x = _max_pool_3x3(x, stride=2)  # 73
        x = _max_pool_3x3(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), stride=2)  # 71 -> 35
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a,  # 35 -> 17
                      self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a,  # 17 -> 8
                      self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return x.mean(axis=(1, 2))  # pool3


def preprocess(images):
    """Images in [-1, 1] (N, H, W, 1 or 3), any size -> (N, 299, 299, 3), as the reference FID code
    feeds its network.

    - clipped and rounded to 8-bit levels: published FIDs score saved uint8 images, and the
      held-out TFDS images already are uint8, so real and generated data go through the same path;
    - grey images repeated to three channels (the network was trained on RGB);
    - resized bilinearly (half-pixel centres, no anti-aliasing, as pytorch-fid's
      `F.interpolate(..., align_corners=False)`) to 299x299: InceptionV3's receptive fields and
      pool3 statistics belong to that scale, and only features taken there are comparable with
      published FIDs (a 32x32 CIFAR image is upsampled, not fed at 32x32)."""
    x = jnp.asarray(images, jnp.float32)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"Inception features need (N, H, W, 1 or 3) images, got shape {tuple(x.shape)}")
    x = jnp.round((jnp.clip(x, -1.0, 1.0) + 1.0) * 127.5) / 127.5 - 1.0
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    return jax.image.resize(x, (x.shape[0], INPUT_SIZE, INPUT_SIZE, 3), method="bilinear", antialias=False)


@functools.partial(jax.jit, static_argnums=0)
def _pool3(graphdef, state, images):
    return nnx.merge(graphdef, state)(preprocess(images))


class InceptionFeatures:
    """Jitted, batched pool3 features of one InceptionV3: `features(images) -> (N, 2048)` float32.

    Batches have a fixed size (the last one is padded), so a dataset compiles the network once.
    About 6 GFLOP per image: this project's two (busy) CPU cores managed 3 images/s, so 10k-sample
    FIDs (CIFAR-10's test split: 10k reference + 10k per seed) want an accelerator."""

    def __init__(self, model: InceptionV3, *, batch_size: int = 64, weights_path: str | None = None):
        self.graphdef, self.state = nnx.split(model)
        self.batch_size, self.weights_path = batch_size, weights_path

    def features(self, images) -> np.ndarray:
        images = np.asarray(images, np.float32)
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(f"Inception features need (N, H, W, 1 or 3) images, got shape {images.shape}")
        batch = max(1, min(self.batch_size, len(images)))
        out = []
        for start in range(0, len(images), batch):
            chunk = images[start:start + batch]
            padded = np.concatenate([chunk, np.zeros((batch - len(chunk),) + chunk.shape[1:], np.float32)])
            out.append(np.asarray(_pool3(self.graphdef, self.state, padded))[:len(chunk)])
        return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM), np.float32)

    __call__ = features


# --------------------------------------------------------------------------------------------------
# State dict <-> NNX


_IGNORED_KEYS = ("fc.weight", "fc.bias")  # the 1008-way ImageNet classifier after pool3: FID does not use it
_NNX_TO_TORCH = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
                 "var": "running_var"}


def _torch_key(path: tuple) -> str:
    return ".".join(str(p) for p in path[:-1]) + "." + _NNX_TO_TORCH[path[-1]]


def _to_torch_layout(path: tuple, array):
    return np.transpose(array, (3, 2, 0, 1)) if path[-1] == "kernel" else array  # HWIO -> OIHW


def state_dict(model: InceptionV3) -> dict[str, np.ndarray]:
    """The model's weights under pytorch-fid's names and layouts (conv kernels OIHW)."""
    return {_torch_key(path): _to_torch_layout(path, np.asarray(v.get_value()))
            for path, v in nnx.to_flat_state(nnx.state(model))}


@functools.lru_cache(maxsize=1)
def _abstract_model():
    """(graphdef, abstract state) of the network: shapes only, nothing initialised."""
    return nnx.split(nnx.eval_shape(lambda: InceptionV3(rngs=nnx.Rngs(0))))


def _build(values: dict[tuple, np.ndarray]) -> InceptionV3:
    """The network with the given {NNX path: array} values (every path present)."""
    graphdef, abstract = _abstract_model()
    return nnx.merge(graphdef, nnx.from_flat_state([(p, v.replace(jnp.asarray(values[p], jnp.float32)))
                                                    for p, v in nnx.to_flat_state(abstract)]))


def random_inception(seed: int = 0) -> InceptionV3:
    """He-normal kernels and identity BatchNorm, drawn with numpy: for shapes and plumbing tests,
    never for a reported FID. (NNX's eager per-module initialisers take tens of seconds for this
    network on a CPU; this takes well under one.)"""
    rng = np.random.default_rng(seed)
    values = {}
    for path, v in nnx.to_flat_state(_abstract_model()[1]):
        if path[-1] == "kernel":
            fan_in = int(np.prod(v.shape[:-1]))
            values[path] = rng.standard_normal(v.shape, np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        else:
            values[path] = (np.ones if path[-1] in ("scale", "var") else np.zeros)(v.shape, np.float32)
    return _build(values)


def load_inception(weights: str | None = None, *, batch_size: int = 64) -> InceptionFeatures:
    """The pretrained FID network from `weights`, else from $DBLOCKS_INCEPTION_WEIGHTS.

    Every key and shape of the file is checked against the model before anything is assigned;
    `num_batches_tracked` and the unused classifier (`fc.*`) are ignored."""
    path = weights or os.environ.get(WEIGHTS_ENV)
    if not path:
        raise ValueError(f"no InceptionV3 weights configured: {HOW_TO_GET}")
    path = os.path.expanduser(path)
    tensors = read_state_dict(path, what="InceptionV3 weights", hint=_EXPECTED)
    flat = list(nnx.to_flat_state(_abstract_model()[1]))
    expected = {_torch_key(p): p for p, _ in flat}
    torch_shape = {_torch_key(p): _to_torch_layout(p, np.empty(v.shape, np.int8)).shape for p, v in flat}
    extra = sorted(k for k in tensors if k not in expected and k not in _IGNORED_KEYS
                   and not k.endswith(".num_batches_tracked"))
    missing = sorted(k for k in expected if k not in tensors)
    wrong = [f"{k} has shape {tensors[k].shape}, expected {torch_shape[k]}" for k in expected
             if k in tensors and tensors[k].shape != torch_shape[k]]
    wrong += [f"{k} has dtype {tensors[k].dtype}" for k in expected
              if k in tensors and not np.issubdtype(tensors[k].dtype, np.floating)]
    if missing or extra or wrong:
        show = lambda xs: ", ".join(xs[:5]) + (f" and {len(xs) - 5} more" if len(xs) > 5 else "")
        problems = [f"{len(missing)} missing keys ({show(missing)})" if missing else "",
                    f"{len(extra)} unexpected keys ({show(extra)})" if extra else "",
                    f"{len(wrong)} wrong shapes or dtypes ({show(wrong)})" if wrong else ""]
        raise ValueError(f"{path} is not the FID InceptionV3 state dict: {'; '.join(p for p in problems if p)}. "
                         f"Expected pytorch-fid's {WEIGHTS_FILE}: {HOW_TO_GET}")
    model = _build({p: np.transpose(tensors[k], (2, 3, 1, 0)) if p[-1] == "kernel" else tensors[k]
                    for k, p in expected.items()})  # conv kernels OIHW -> HWIO
    return InceptionFeatures(model, batch_size=batch_size, weights_path=os.path.abspath(path))
