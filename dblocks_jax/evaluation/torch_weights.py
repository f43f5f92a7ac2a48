"""Torch-free readers for PyTorch state dicts (zip and legacy `torch.save` formats) and `.npz` files.

Why: the pretrained FID network ships as a PyTorch state dict (pytorch-fid's
`pt_inception-2015-12-05-6726825d.pth`), and this project should not depend on torch to read 95 MB
of float32 arrays. `torch.load` would also execute whatever a pickle names; the unpickler here
resolves only `OrderedDict`, the tensor-rebuild functions and storage types, so an untrusted file
cannot run code, and every field the file controls (sizes, strides, offsets, byte counts) is checked
before an array is made.
"""

from __future__ import annotations

import os
import pickle
import struct
import zipfile
from collections import OrderedDict

import numpy as np

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


def read_state_dict(path: str, *, what: str = "PyTorch state dict", hint: str = "") -> dict[str, np.ndarray]:
    """A PyTorch state dict (zip or legacy format) or an .npz, as {name: numpy array}, without torch.

    Raises FileNotFoundError / ValueError naming the file for anything else, and for pickles that
    name any global beyond tensors and OrderedDict. `what` names the file's role in those messages
    and `hint` (what was expected, and how to get it) ends them."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file {path} does not exist" + (f": {hint}" if hint else ""))
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
        raise ValueError(f"cannot read {what} from {path}: {err}" + (f". {hint}" if hint else "")) from err
