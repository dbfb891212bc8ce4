"""CIFAR-10 and CIFAR-100 in their python pickle batch format, read without trusting the pickles.

The batches are pickled dicts (bytes keys, as Python 2 wrote them) holding a uint8
``data`` array of shape (N, 3072) -- per row 1024 red, 1024 green, then 1024 blue
values, each plane row-major 32 x 32 -- and a list of integer labels.

A plain ``pickle.load`` runs whatever callable a tampered file names, so
:class:`SafeUnpickler` resolves only the globals needed to rebuild NumPy arrays and
refuses every other one with a :class:`CleanpipeError`.

IDs
---
``"<batch file>/<index in that batch>"``: ``data_batch_1/0`` .. ``data_batch_5/9999``
and ``test_batch/<i>`` for CIFAR-10, ``train/<i>`` and ``test/<i>`` for CIFAR-100.
Indices are unique and fixed by the distributed files; the batches' own
``filenames`` are not used because nothing guarantees they are unique.
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cleanpipe.data.base import Dataset
from cleanpipe.errors import CleanpipeError
from cleanpipe.validation import ParameterError

# source -> (folder name as distributed, train files, test files, label key, meta file, names key)
LAYOUTS = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "labels", "batches.meta", "label_names"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", "meta", "fine_label_names"),
}


def _numpy_attr(modules: tuple[str, ...], name: str) -> Callable:
    # NumPy 2 moved numpy.core to numpy._core; resolve whichever this NumPy has.
    for module in modules:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy has no {name}")


def _latin1_encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Python 3 pickles bytes at protocol < 3 as _codecs.encode(str, "latin1"); allow only that.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise pickle.UnpicklingError("_codecs.encode used for something other than latin-1 bytes")
    return text.encode("latin-1")


_reconstruct = _numpy_attr(("numpy._core.multiarray", "numpy.core.multiarray"), "_reconstruct")
_frombuffer = _numpy_attr(("numpy._core.numeric", "numpy.core.numeric"), "_frombuffer")

# Every global a CIFAR batch (or a NumPy array pickled at protocol 2..5) can need.
ALLOWED_GLOBALS: dict[tuple[str, str], Callable] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class SafeUnpickler(pickle.Unpickler):
    """Unpickles plain containers and NumPy arrays; any other global raises CleanpipeError."""

    def find_class(self, module: str, name: str) -> Callable:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise CleanpipeError(
                f"refusing to load {self.path}: it asks for {module}.{name}, which no CIFAR batch contains "
                "(a tampered or foreign pickle); use the files as distributed"
            ) from None

    def __init__(self, file, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self.path = path


def read_batch(path: Path) -> dict[str, Any]:
    """One pickled batch as a dict with str keys (values as stored; strings stay bytes).

    Raises
    ------
    CleanpipeError
        Disallowed global, corrupt or truncated file, or not a dict.
    """
    try:
        with open(path, "rb") as f:
            obj = SafeUnpickler(f, path).load()
    except CleanpipeError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure decoding an untrusted file is a bad file
        raise CleanpipeError(f"{path}: unreadable or corrupt CIFAR batch ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise CleanpipeError(f"{path}: not a CIFAR batch (expected a pickled dict, got {type(obj).__name__})")
    return {k.decode("latin-1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def load(spec) -> Dataset:
    """Load CIFAR-10 (``spec.source == "cifar10"``) or CIFAR-100 (fine labels), official split.

    Parameters
    ----------
    spec : DataSpec
        ``spec.path`` is ``cifar-10-batches-py`` / ``cifar-100-python`` or the folder holding it.

    Returns
    -------
    Dataset
        Images uint8 (N, 3, 32, 32), labels int64 (N,). CIFAR-100 also records
        ``meta["coarse_of_fine"]`` (list of 100 ints, the superclass of each fine class,
        -1 for one never seen) and ``meta["coarse_names"]``.
    """
    folder, train_files, test_files, label_key, meta_file, names_key = LAYOUTS[spec.source]
    root = _root(Path(spec.path), folder, train_files[0])
    _require(root, train_files + test_files + [meta_file], folder)
    meta = read_batch(root / meta_file)
    names = _strings(meta, names_key, root / meta_file)
    Xtr, ytr, ids_tr, ctr = _read_part(root, train_files, label_key)
    Xte, yte, ids_te, cte = _read_part(root, test_files, label_key)
    extra: dict[str, Any] = {"split": "official"}
    if spec.source == "cifar100" and ctr is not None and cte is not None:
        extra["coarse_of_fine"] = _coarse_of_fine(np.concatenate([ytr, yte]), np.concatenate([ctr, cte]), len(names))
        if "coarse_label_names" in meta:
            extra["coarse_names"] = _strings(meta, "coarse_label_names", root / meta_file)
    return Dataset(Xtr, ytr, Xte, yte, ids_tr, ids_te, names, spec.source, extra)


def _root(path: Path, folder: str, probe: str) -> Path:
    # Accept the folder that holds the extracted archive as well as the archive folder itself.
    if not (path / probe).exists() and (path / folder / probe).exists():
        return path / folder
    return path


def _require(root: Path, files: list[str], folder: str) -> None:
    if not root.is_dir():
        raise ParameterError("data", f"{{name}} {root}: expected a directory, the extracted {folder}")
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        raise ParameterError(
            "data", f"{{name}} {root}: missing {', '.join(missing)}; expected the python version's {folder} "
            f"folder with {', '.join(files)}"
        )


def _read_part(root: Path, files: list[str], label_key: str):
    """Images (N, 3, 32, 32) uint8, labels (N,) int64, IDs (N,) str and coarse labels or None."""
    X, y, ids, coarse = [], [], [], []
    for name in files:
        path = root / name
        batch = read_batch(path)
        images = _images(batch, path)
        X.append(images)
        y.append(_labels(batch, label_key, len(images), path))
        ids.append(np.char.add(f"{name}/", np.arange(len(images)).astype(str)))
        if "coarse_labels" in batch:
            coarse.append(_labels(batch, "coarse_labels", len(images), path))
    c = np.concatenate(coarse) if len(coarse) == len(files) else None
    return np.concatenate(X), np.concatenate(y), np.concatenate(ids), c


def _images(batch: dict, path: Path) -> np.ndarray:
    data = batch.get("data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise CleanpipeError(f"{path}: 'data' must be a uint8 N x 3072 array (32x32 RGB planes), got {got}")
    # Each row is the R, G and B planes in turn, each row-major: exactly C x H x W order.
    return data.reshape(-1, 3, 32, 32)


def _labels(batch: dict, key: str, n: int, path: Path) -> np.ndarray:
    if key not in batch:
        raise CleanpipeError(f"{path}: no {key!r} entry; is this the right CIFAR version?")
    try:
        y = np.asarray(batch[key])
    except (TypeError, ValueError) as e:
        raise CleanpipeError(f"{path}: {key!r} is not a list of integers ({e})") from None
    if y.ndim != 1 or y.dtype.kind not in "iu" or len(y) != n:
        raise CleanpipeError(f"{path}: {key!r} must list one integer label per image ({n}), got {y.dtype} {y.shape}")
    return y.astype(np.int64)


def _strings(meta: dict, key: str, path: Path) -> list[str]:
    values = meta.get(key)
    if not isinstance(values, (list, tuple)) or not values:
        raise CleanpipeError(f"{path}: no {key!r} list")
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]


def _coarse_of_fine(fine: np.ndarray, coarse: np.ndarray, k: int) -> list[int]:
    pairs = np.unique(np.stack([fine, coarse], axis=1), axis=0)
    if len(np.unique(pairs[:, 0])) != len(pairs):
        raise CleanpipeError("CIFAR-100: a fine class appears under two coarse classes; the batches are inconsistent")
    pairs = pairs[(pairs[:, 0] >= 0) & (pairs[:, 0] < k)]  # out-of-range labels are reported by Dataset
    out = np.full(k, -1, dtype=np.int64)
    out[pairs[:, 0]] = pairs[:, 1]
    return out.tolist()
