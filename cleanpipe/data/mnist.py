"""MNIST and Fashion-MNIST from their IDX files (gzipped or not).

IDX layout (big-endian): two zero bytes, a type code (0x08 = uint8), the number
of dimensions, one uint32 per dimension, then the values. Images are
``0x00000803`` (N x 28 x 28), labels ``0x00000801`` (N).

IDs
---
With both the ``train-*`` and the ``t10k-*`` pair the official split is used and
IDs are ``"train/<i>"`` and ``"t10k/<i>"`` (``i`` = index in that file). With only
one pair, a stratified hold-out is made and IDs are ``"<i>"``, the index in the file.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from cleanpipe.data.base import Dataset, index_ids, stratified_split
from cleanpipe.errors import CleanpipeError
from cleanpipe.validation import ParameterError

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

# (images, labels) stems per split; the loader also accepts ".gz" and the
# "train-images.idx3-ubyte" spelling some mirrors use.
PAIRS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def load(spec) -> Dataset:
    """Load an MNIST-format directory.

    Parameters
    ----------
    spec : DataSpec
        ``spec.path`` is a directory with the ``t10k-*`` and/or ``train-*`` IDX pairs.

    Returns
    -------
    Dataset
        Images uint8 (N, 1, 28, 28), labels int64 (N,), class names ``"0".."9"``.

    Raises
    ------
    CleanpipeError
        No complete pair, a half pair, or a corrupt/truncated/mismatched IDX file.
    """
    root = Path(spec.path)
    if not root.is_dir():
        raise ParameterError("data", f"{{name}} {root}: the mnist source needs a directory of IDX files")
    found = {split: _find_pair(root, split) for split in PAIRS}
    pairs = {split: p for split, p in found.items() if p is not None}
    if not pairs:
        expected = ", ".join(f"{n}[.gz]" for stems in PAIRS.values() for n in stems)
        raise ParameterError("data", f"{{name}} {root}: no MNIST IDX files found; expected {expected}")
    data = {split: _read_pair(*paths) for split, paths in pairs.items()}
    names = [str(d) for d in range(10)]
    if len(data) == 2:
        (Xtr, ytr), (Xte, yte) = data["train"], data["t10k"]
        ids_tr = np.char.add("train/", index_ids(len(ytr)))
        ids_te = np.char.add("t10k/", index_ids(len(yte)))
        split = "official"
    else:
        ((X, y),) = data.values()
        Xtr, ytr, ids_tr, Xte, yte, ids_te = stratified_split(
            X, y, index_ids(len(y)), test_fraction=spec.test_fraction, seed=spec.split_seed
        )
        split = f"hold-out of {next(iter(data))}"
    k = max(int(ytr.max(initial=0)), int(yte.max(initial=0))) + 1
    if k > 10:
        names = [str(d) for d in range(k)]  # not MNIST proper, but an IDX set with more classes
    return Dataset(Xtr, ytr, Xte, yte, ids_tr, ids_te, names, spec.source, meta={"split": split})


def _find_pair(root: Path, split: str) -> tuple[Path, Path] | None:
    """The (images, labels) files of one split, None if neither exists; a half pair is an error."""
    paths = [_find_file(root, stem) for stem in PAIRS[split]]
    if all(p is None for p in paths):
        return None
    if any(p is None for p in paths):
        missing = next(stem for stem, p in zip(PAIRS[split], paths) if p is None)
        present = next(p for p in paths if p is not None)
        raise ParameterError("data", f"{{name}} {root}: found {present.name} but not its IDX partner {missing}[.gz]")
    return paths[0], paths[1]


def _find_file(root: Path, stem: str) -> Path | None:
    alt = stem.replace("-idx", ".idx")  # "train-images.idx3-ubyte" as some mirrors name it
    for name in (stem, stem + ".gz", alt, alt + ".gz"):
        if (root / name).is_file():
            return root / name
    return None


def _read_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 1, H, W) images and int64 (N,) labels of one split, checked to match."""
    X = read_idx(images_path, IMAGES_MAGIC)
    y = read_idx(labels_path, LABELS_MAGIC)
    if len(X) != len(y):
        raise CleanpipeError(
            f"{images_path.name} holds {len(X):,} images but {labels_path.name} holds {len(y):,} labels; "
            "the two files must come from the same split"
        )
    if len(y) == 0:
        raise CleanpipeError(f"{images_path.name} holds no images")
    return X[:, None, :, :], y.astype(np.int64)


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse one uint8 IDX file.

    Parameters
    ----------
    path : Path
        The file, gzipped (detected by content, not name) or not.
    magic : int
        Expected magic number: ``0x00000803`` for images, ``0x00000801`` for labels.

    Returns
    -------
    np.ndarray
        uint8 of shape (N, H, W) for images or (N,) for labels.
    """
    raw = _read_bytes(path)
    kind = "images" if magic == IMAGES_MAGIC else "labels"
    if len(raw) < 4:
        raise CleanpipeError(f"{path}: truncated IDX file ({len(raw)} bytes); download it again")
    got = int.from_bytes(raw[:4], "big")
    if got != magic:
        raise CleanpipeError(
            f"{path}: not an IDX {kind} file (magic number 0x{got:08x}, expected 0x{magic:08x}); "
            "check that images and labels files are not swapped or corrupt"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CleanpipeError(f"{path}: truncated IDX header; download it again")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64))
    body = len(raw) - header
    if body != expected:
        raise CleanpipeError(
            f"{path}: IDX header promises {' x '.join(map(str, dims))} = {expected:,} bytes of data "
            f"but the file has {body:,}; it is truncated or corrupt, download it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _read_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise CleanpipeError(f"{path}: unreadable or truncated gzip file ({e}); download it again") from None
    return raw
