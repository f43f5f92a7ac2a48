"""Standard FID features: the FID variant of InceptionV3 in Flax NNX (NHWC), and a torch-free loader
for the weights file everybody uses.

Published FIDs come from one fixed network: the
InceptionV3 graph of TensorFlow's 2015-12-05 release, as used by the reference TF FID code and
ported to PyTorch by pytorch-fid (`pt_inception-2015-12-05-6726825d.pth`). It differs from
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
import pickle
import struct
import zipfile
from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

FEATURE_DIM = 2048
INPUT_SIZE = 299
WEIGHTS_ENV = "DBLOCKS_INCEPTION_WEIGHTS"
WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_FILE}"
HOW_TO_GET = (f"download pytorch-fid's {WEIGHTS_FILE} ({WEIGHTS_URL}) on a machine with network access, "
              f"copy it here and pass its path (`dblocks evaluate --inception-weights PATH`, or "
              f"inception_weights=PATH) or set {WEIGHTS_ENV}=PATH")


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
# Weight files: torch-free readers for PyTorch state dicts (zip and legacy format) and .npz


_TORCH_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_, "UntypedStorage": np.uint8,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class _StorageType:
    __slots__ = ("name", "dtype")

    def __init__(self, name: str):
        self.name, self.dtype = name, np.dtype(_TORCH_STORAGE_DTYPES[name])


class _Storage:
    """A flat typed buffer; its bytes arrive at once (zip) or after the pickle (legacy format)."""

    __slots__ = ("dtype", "numel", "data")  # no __dict__: a pickle's BUILD cannot add attributes

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype, self.numel, self.data = dtype, int(numel), None


class _TensorRef:
    """What `torch._utils._rebuild_tensor_v2` stands for: a strided view of a storage. Everything
    is validated when the array is made, since the file controls every field."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def numpy(self) -> np.ndarray:
        data = self.storage.data if isinstance(self.storage, _Storage) else None
        if not isinstance(data, np.ndarray) or data.ndim != 1:
            raise ValueError("a tensor without storage data")
        offset, size, stride = int(self.offset), tuple(map(int, self.size)), tuple(map(int, self.stride))
        if len(size) != len(stride) or offset < 0 or min(size + stride, default=0) < 0:
            raise ValueError(f"malformed tensor: size {size}, stride {stride}, offset {offset}")
        if 0 in size:
            return np.zeros(size, data.dtype)
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= len(data):  # checked: as_strided would read outside the buffer
            raise ValueError(f"tensor of size {size} reads past its storage of {len(data)} elements")
        view = np.lib.stride_tricks.as_strided(data[offset:], size, tuple(s * data.itemsize for s in stride),
                                               writeable=False)
        return np.array(view)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _StateDictUnpickler(pickle.Unpickler):
    """Resolves only OrderedDict, the tensor-rebuild functions and storage types: a file that names
    anything else (os.system, builtins.eval, ...) is refused, so an untrusted file cannot run code."""

    def __init__(self, file, persistent_load=None):
        super().__init__(file, encoding="utf-8")
        self._persistent = persistent_load

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if module == "torch" and name in _TORCH_STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load the global {module}.{name} (a state dict of tensors "
                                     f"needs none but OrderedDict, torch._utils._rebuild_tensor_v2 and storages)")

    def persistent_load(self, pid):
        if self._persistent is None:
            raise pickle.UnpicklingError("unexpected persistent id")
        return self._persistent(pid)


def _storage_from_pid(pid, storages: dict, expected_len: int) -> tuple[_Storage, str, tuple | None]:
    if not isinstance(pid, tuple) or len(pid) != expected_len or pid[0] not in ("storage", b"storage"):
        raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
    storage_type, key, _location, numel = pid[1:5]
    if not isinstance(storage_type, _StorageType) or not isinstance(numel, int) or numel < 0:
        raise pickle.UnpicklingError(f"unexpected storage {pid!r:.80}")
    key = key.decode() if isinstance(key, bytes) else str(key)
    if key not in storages:
        storages[key] = _Storage(storage_type.dtype, numel)
    return storages[key], key, (pid[5] if len(pid) > 5 else None)


def _read_torch_zip(archive: zipfile.ZipFile) -> object:
    """torch.save's default format since PyTorch 1.6: <prefix>/data.pkl plus one raw little-endian
    (or <prefix>/byteorder) buffer per storage in <prefix>/data/<key>."""
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    prefix = pickles[0][: -len("data.pkl")]
    order = archive.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in names else "little"
    if order not in ("little", "big"):
        raise ValueError(f"unknown byte order {order!r}")
    storages: dict[str, _Storage] = {}

    def persistent_load(pid):
        storage, key, _ = _storage_from_pid(pid, storages, 5)
        if storage.data is None:
            record = f"{prefix}data/{key}"
            if record not in names:
                raise pickle.UnpicklingError(f"missing storage record {record}")
            raw = archive.read(record)
            if len(raw) < storage.numel * storage.dtype.itemsize:
                raise pickle.UnpicklingError(f"storage {record} holds {len(raw)} bytes, expected "
                                             f"{storage.numel * storage.dtype.itemsize}")
            dtype = storage.dtype.newbyteorder("<" if order == "little" else ">")
            storage.data = np.frombuffer(raw, dtype, storage.numel).astype(storage.dtype)
        return storage

    with archive.open(pickles[0]) as f:
        return _StateDictUnpickler(f, persistent_load).load()


def _read_torch_legacy(f) -> object:
    """torch.save's format before PyTorch 1.6 (`_use_new_zipfile_serialization=False`): pickled magic
    number, protocol and system info, the pickled object, the pickled list of storage keys, then
    each storage as an int64 element count and its raw bytes."""
    header = [_StateDictUnpickler(f).load() for _ in range(3)]
    if header[0] != _LEGACY_MAGIC or header[1] != _LEGACY_PROTOCOL or not isinstance(header[2], dict):
        raise ValueError("not a PyTorch legacy-format file (wrong magic number)")
    little = bool(header[2].get("little_endian", True))
    storages: dict[str, _Storage] = {}
    views = []

    def persistent_load(pid):
        storage, _, view = _storage_from_pid(pid, storages, 6)
        if view is None:
            return storage
        view_key, offset, size = view  # a storage that is a slice of another one (old PyTorch)
        views.append((storage, int(offset), int(size), _Storage(storage.dtype, size)))
        return views[-1][3]

    result = _StateDictUnpickler(f, persistent_load).load()
    keys = _StateDictUnpickler(f).load()
    if not isinstance(keys, list):
        raise ValueError("malformed storage key list")
    for key in keys:
        storage = storages.get(str(key))
        if storage is None:
            raise ValueError(f"storage {key!r} is listed but never used")
        (numel,) = struct.unpack("<q" if little else ">q", f.read(8))
        raw = f.read(numel * storage.dtype.itemsize)
        if numel != storage.numel or len(raw) != numel * storage.dtype.itemsize:
            raise ValueError(f"storage {key!r} is truncated or has the wrong size")
        storage.data = np.frombuffer(raw, storage.dtype.newbyteorder("<" if little else ">")).astype(storage.dtype)
    for root, offset, size, view in views:
        if root.data is None or offset + size > root.numel:
            raise ValueError("malformed storage view")
        view.data = root.data[offset:offset + size]
    return result


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """A PyTorch state dict (zip or legacy format) or an .npz, as {name: numpy array}, without torch.

    Raises FileNotFoundError / ValueError naming the file for anything else, and for pickles that
    name any global beyond tensors and OrderedDict."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"InceptionV3 weights file {path} does not exist: {HOW_TO_GET}")
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                if any(n.endswith("/data.pkl") and n.count("/") == 1 for n in names):
                    state = _read_torch_zip(archive)
                elif names and all(n.endswith(".npy") for n in names):
                    with np.load(path, allow_pickle=False) as npz:
                        return {k: np.asarray(npz[k]) for k in npz.files}
                else:
                    raise ValueError("a zip archive that is neither a PyTorch state dict (no <name>/data.pkl) "
                                     "nor an .npz (not only .npy entries)")
        else:
            with open(path, "rb") as f:
                if f.read(2) != b"\x80\x02":  # torch.save's legacy format starts with a protocol-2 pickle
                    raise ValueError("neither a zip archive (PyTorch >= 1.6 state dict, .npz) nor a "
                                     "legacy PyTorch file")
                f.seek(0)
                state = _read_torch_legacy(f)
        if not isinstance(state, dict) or not all(isinstance(k, str) and type(v) is _TensorRef
                                                  for k, v in state.items()):
            raise ValueError(f"the file holds a {type(state).__name__}, not a state dict of tensors")
        return {k: _TensorRef.numpy(v) for k, v in state.items()}
    except Exception as err:  # untrusted input: any parse failure is "cannot read this file"
        raise ValueError(f"cannot read InceptionV3 weights from {path}: {err}. Expected pytorch-fid's "
                         f"{WEIGHTS_FILE} (or an .npz with its key names): {HOW_TO_GET}") from err


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
    tensors = read_state_dict(path)
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
