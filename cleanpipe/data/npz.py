"""A NumPy ``.npz`` archive: arrays ``X`` and ``y``, optionally ``X_test``/``y_test`` and ``class_names``.

Loaded without ``allow_pickle``, so an archive holding object arrays is refused. Other
arrays in the archive are ignored.

``X`` may be
* uint8 (N, H, W): greyscale images, given a channel axis -> (N, 1, H, W);
* uint8 (N, C, H, W): images as they are -- except that when the last axis is 1 or 3 and
  the second is not, the array is taken as channels-last (N, H, W, C) and transposed;
* anything numeric of shape (N, D): features, cast to float32.

IDs: ``"<i>"`` (index in ``X``) for training examples; ``"test/<i>"`` for rows of ``X_test``
(or ``"<i>"`` of the hold-out when there is no ``X_test``).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from cleanpipe.data.base import Dataset, index_ids, stratified_split
from cleanpipe.errors import CleanpipeError
from cleanpipe.validation import ParameterError

KEYS = ("X", "y", "X_test", "y_test", "class_names")


def load(spec) -> Dataset:
    """Load ``spec.path``; see the module docstring for the accepted arrays.

    Returns
    -------
    Dataset
        X uint8 (N, C, H, W) or float32 (N, D); labels int64 (N,).
    """
    path = Path(spec.path)
    arrays, stored = _read(path)
    for key in ("X", "y"):
        if key not in arrays:
            raise CleanpipeError(f"{path}: no array {key!r} (the archive holds {', '.join(stored) or 'nothing'}); "
                                 "save the training arrays as X and y, e.g. np.savez(path, X=..., y=...)")
    if ("X_test" in arrays) != ("y_test" in arrays):
        raise CleanpipeError(f"{path}: has {'X_test' if 'X_test' in arrays else 'y_test'} without its partner; give both or neither")
    X, y = _pair(arrays, "X", "y", path)
    if "X_test" in arrays:
        Xte, yte = _pair(arrays, "X_test", "y_test", path)
        if Xte.shape[1:] != X.shape[1:] or Xte.dtype != X.dtype:
            raise CleanpipeError(f"{path}: X_test is {Xte.dtype} {Xte.shape[1:]} per example but X is {X.dtype} {X.shape[1:]}")
        Xtr, ytr, idtr, idte = X, y, index_ids(len(y)), np.char.add("test/", index_ids(len(yte)))
        split = "official"
    else:
        Xtr, ytr, idtr, Xte, yte, idte = stratified_split(
            X, y, index_ids(len(y)), test_fraction=spec.test_fraction, seed=spec.split_seed
        )
        split = "holdout"
    k = int(max(ytr.max(initial=0), yte.max(initial=0))) + 1
    names = _class_names(arrays.get("class_names"), k, path)
    return Dataset(Xtr, ytr, Xte, yte, idtr, idte, names, "npz", {"split": split})


def _read(path: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """The archive's arrays that cleanpipe reads, by name, and the names of all its arrays."""
    if path.is_dir():
        raise ParameterError("data", f"{{name}} {path}: the npz source reads a .npz file, not a directory")
    # np.load takes any non-zip, non-.npy file for a pickle; say what it really is instead.
    if not zipfile.is_zipfile(path):
        raise CleanpipeError(f"{path}: not an .npz archive; write one with np.savez(path, X=..., y=...)")
    try:
        with np.load(path) as z:  # allow_pickle defaults to False: object arrays raise ValueError
            return {k: z[k] for k in KEYS if k in z.files}, list(z.files)
    except ValueError as e:
        if "pickle" in str(e):
            raise CleanpipeError(
                f"{path}: holds pickled (object) arrays, which cleanpipe never loads; save plain numeric/string arrays"
            ) from None
        raise CleanpipeError(f"{path}: not a readable .npz archive ({e})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise CleanpipeError(f"{path}: not a readable .npz archive ({e})") from None


def _pair(arrays: dict, xkey: str, ykey: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    X, y = image_or_feature_array(arrays[xkey], path, xkey), _labels(arrays[ykey], path, ykey)
    if len(X) != len(y):
        raise CleanpipeError(f"{path}: {xkey} has {len(X)} rows but {ykey} has {len(y)} labels")
    return X, y


def image_or_feature_array(X: np.ndarray, path: Path, name: str) -> np.ndarray:
    """uint8 (N, C, H, W) images or float32 (N, D) features."""
    if X.dtype == np.uint8 and X.ndim == 3:
        return X[:, None]
    if X.dtype == np.uint8 and X.ndim == 4:
        if X.shape[-1] in (1, 3) and X.shape[1] not in (1, 3):  # channels-last
            return np.ascontiguousarray(X.transpose(0, 3, 1, 2))
        return X
    if X.dtype.kind not in "biuf":
        raise CleanpipeError(f"{path}: {name} must be numeric, got dtype {X.dtype}")
    if X.ndim != 2:
        raise CleanpipeError(
            f"{path}: {name} has shape {X.shape}; give uint8 images (N x H x W or N x C x H x W) "
            "or N x D features (flatten or convert images to uint8)"
        )
    X = X.astype(np.float32)
    if not np.isfinite(X).all():
        raise CleanpipeError(f"{path}: {name} has NaN or infinite values")
    return X


def _labels(y: np.ndarray, path: Path, name: str) -> np.ndarray:
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise CleanpipeError(f"{path}: {name} must be a 1-D integer vector of class ids, got {y.dtype} {y.shape}")
    if len(y) and y.min() < 0:
        raise CleanpipeError(f"{path}: {name} has negative labels ({y.min()}); class ids start at 0")
    return y.astype(np.int64)


def _class_names(names: np.ndarray | None, k: int, path: Path) -> list[str]:
    if names is None:
        return [str(i) for i in range(k)]
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise CleanpipeError(f"{path}: class_names must be a 1-D string array, got {names.dtype} {names.shape}")
    out = [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names.tolist()]
    if len(out) < k:
        raise CleanpipeError(f"{path}: class_names has {len(out)} names but the labels go up to {k - 1}")
    return out
