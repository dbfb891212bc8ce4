"""Unlabeled examples shaped like a run's data: Noisy Student's extra data (``--unlabeled PATH``) and
the new data ``cleanpipe predict`` labels (``--data PATH``).

They must look like the run's training data:

* ``.npz`` with an array ``X`` (as the npz source reads it: uint8 images N x H x W or N x C x H x W, or
  N x D features) and optionally ``ids`` (strings);
* ``.csv`` / ``.parquet`` for table runs: the run's feature columns (by name, any order; a label column
  or other extra columns are ignored);
* a directory of images for image runs (any nesting; resized like the ``folder`` source).

IDs are ``<prefix><i>`` (row number) or ``<prefix><relative path>``, unless the archive gives them; the
prefix is ``unlabeled/`` for Noisy Student (so they never clash with training IDs) and empty for predict.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from cleanpipe.data.folder import (
    image_extensions,
    read_images,
    relative_ids,
    walk_files,
)
from cleanpipe.data.npz import image_or_feature_array
from cleanpipe.data.table import feature_array, read_table
from cleanpipe.errors import CleanpipeError

KINDS = ("folder", "npz", "table")  # what load_unlabeled reads; None: by the path (a folder, .npz, .csv/.parquet)


def load_unlabeled(path: Path, ds, image_size: int = 32, *, kind: str | None = None, flag: str = "--unlabeled",
                   prefix: str = "unlabeled/") -> tuple[np.ndarray, np.ndarray]:
    """Features shaped like ``ds.X_train`` and their IDs: ``(X, ids)``, X uint8 (M, C, H, W) or float32 (M, D).

    ``kind`` (one of :data:`KINDS`) says how to read ``path``, else its form does; ``flag`` names the
    option in error messages, ``prefix`` starts every ID.
    """
    path = Path(path)
    if not path.exists():
        raise CleanpipeError(f"{flag} {path}: no such file or directory")
    suffix = path.suffix.lower()
    if kind is None:
        kind = "folder" if path.is_dir() else "npz" if suffix == ".npz" else "table" if suffix in (".csv", ".parquet", ".pq") else None
    if kind not in KINDS:
        raise CleanpipeError(f"{flag} {path}: give an .npz archive (array X), a .csv/.parquet table or a folder of images")
    if (kind == "folder") != path.is_dir():
        raise CleanpipeError(f"{flag} {path}: " + ("--dataset folder reads a directory of images" if kind == "folder"
                                                    else f"is a directory; --dataset {kind} reads a file"))
    readers = {"folder": lambda: _folder(path, ds, image_size, flag, prefix), "npz": lambda: _npz(path, flag, prefix),
               "table": lambda: _table(path, ds, flag, prefix)}
    X, ids = readers[kind]()
    if len(X) == 0:
        raise CleanpipeError(f"{flag} {path}: holds no examples")
    want = tuple(ds.input_shape)
    if tuple(X.shape[1:]) != want or (X.dtype == np.uint8) != ds.is_image:
        what = "uint8 images" if X.dtype == np.uint8 else "features"
        raise CleanpipeError(
            f"{flag} {path}: its {what} are {X.shape[1:]} per example but the run's data is "
            f"{'uint8 images' if ds.is_image else 'features'} {want}; give data shaped like the run's"
        )
    if len(set(ids.tolist())) != len(ids):
        raise CleanpipeError(f"{flag} {path}: its IDs repeat; give each example its own ID")
    return X, ids


def _npz(path: Path, flag: str, prefix: str) -> tuple[np.ndarray, np.ndarray]:

    if not zipfile.is_zipfile(path):
        raise CleanpipeError(f"{flag} {path}: not an .npz archive; write one with np.savez(path, X=...)")
    try:
        with np.load(path) as z:  # no allow_pickle: object arrays are refused
            if "X" not in z.files:
                raise CleanpipeError(f"{flag} {path}: no array 'X'; the archive holds {', '.join(z.files) or 'nothing'}")
            X = z["X"]
            ids = z["ids"] if "ids" in z.files else None
    except ValueError as e:
        raise CleanpipeError(f"{flag} {path}: not a readable .npz archive of plain arrays ({e})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise CleanpipeError(f"{flag} {path}: not a readable .npz archive ({e})") from None
    X = image_or_feature_array(X, path, "X")
    if ids is None:
        ids = np.char.add(prefix, np.arange(len(X)).astype(str))
    elif ids.ndim != 1 or len(ids) != len(X) or ids.dtype.kind not in "USiu":
        raise CleanpipeError(f"{flag} {path}: 'ids' must be a 1-D array of one ID per row of X")
    return X, ids.astype(str)


def _table(path: Path, ds, flag: str, prefix: str) -> tuple[np.ndarray, np.ndarray]:

    names = ds.meta.get("feature_names")
    if ds.is_image or not names:
        raise CleanpipeError(f"{flag} {path}: a table fits only a run on a table dataset; give an .npz or a folder of images")
    df = read_table(path)
    missing = [c for c in names if c not in set(map(str, df.columns))]
    if missing:
        raise CleanpipeError(f"{flag} {path}: lacks the run's feature column(s) {', '.join(missing[:5])}")
    df.columns = [str(c) for c in df.columns]
    X = feature_array(df[names], path, "label")
    return X, np.char.add(prefix, np.arange(len(X)).astype(str))


def _folder(path: Path, ds, image_size: int, flag: str, prefix: str) -> tuple[np.ndarray, np.ndarray]:

    if not ds.is_image:
        raise CleanpipeError(f"{flag} {path}: a folder of images fits only an image run; give a .csv/.parquet table")
    exts = image_extensions()
    files = [f for f in walk_files(path) if f.suffix.lower() in exts]
    if not files:
        raise CleanpipeError(f"{flag} {path}: no images in the folder")
    X = read_images(files, image_size)
    C = ds.input_shape[0]
    if X.shape[1] != C:  # grey folder for a colour run, or the other way round
        X = np.repeat(X, 3, axis=1) if C == 3 else X.mean(axis=1, keepdims=True).round().astype(np.uint8)
    return X, np.char.add(prefix, relative_ids(files, path))
