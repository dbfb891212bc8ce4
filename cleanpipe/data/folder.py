"""An image folder with one sub-folder per class; each example's ID is its relative path.

Layouts
-------
``DIR/<class>/<image>`` is split by a seeded stratified hold-out; ``DIR/train/<class>/...``
plus ``DIR/test/<class>/...`` (and nothing else in DIR) keeps that split. IDs are paths
relative to DIR with ``/`` separators (``cat/001.png`` or ``train/cat/001.png``), which is
what a Confident-Learning-style ``{path: label}`` JSON is matched against. Class names are
the sorted class sub-folder names; images may sit in nested folders below a class folder.
Hidden files and folders are skipped, and so are files whose extension is not an image
format Pillow knows (their count goes to ``meta["skipped_files"]``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cleanpipe.data.base import Dataset, stratified_split
from cleanpipe.errors import CleanpipeError
from cleanpipe.files import atomic_write_bytes
from cleanpipe.validation import ParameterError

# Pillow modes that hold one grey channel; anything else is read as RGB.
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
JUNK = {"thumbs.db", "desktop.ini"}


def load(spec) -> Dataset:
    """Read every image, resized to ``spec.image_size`` square (bilinear).

    Parameters
    ----------
    spec : DataSpec
        ``spec.path`` is the folder; ``spec.image_size``, ``spec.test_fraction`` and
        ``spec.split_seed`` apply.

    Returns
    -------
    Dataset
        uint8 (N, C, S, S) with S = ``spec.image_size``; C = 1 when every image is greyscale,
        else 3. Labels int64 (N,), IDs str (N,) as described in the module docstring.
    """
    root = Path(spec.path)
    if not root.is_dir():
        raise ParameterError("data", f"{{name}} {root}: folder expects a directory with one sub-folder per class")
    top = _subdirs(root)
    if [d.name for d in top] == ["test", "train"] and all(_subdirs(d) for d in top):
        return _load_split(root, spec.image_size)
    if not top:
        raise ParameterError("data", f"{{name}} {root}: no class sub-folders; expected {root}/<class name>/<image>")
    classes = [d.name for d in top]
    files, y, skipped = _scan(root, root, classes)
    X = read_images(files, spec.image_size)
    ids = relative_ids(files, root)
    Xtr, ytr, idtr, Xte, yte, idte = stratified_split(X, y, ids, test_fraction=spec.test_fraction, seed=spec.split_seed)
    return Dataset(Xtr, ytr, Xte, yte, idtr, idte, classes, "folder", {"split": "holdout", "skipped_files": skipped})


def _load_split(root: Path, size: int) -> Dataset:
    classes = [d.name for d in _subdirs(root / "train")]
    unknown = sorted({d.name for d in _subdirs(root / "test")} - set(classes))
    if unknown:
        raise ParameterError("data", f"{{name}} {root}: test/ has class folders missing from train/: {', '.join(unknown)}")
    ftr, ytr, s1 = _scan(root / "train", root, classes)
    fte, yte, s2 = _scan(root / "test", root, classes, allow_empty=True)
    if not fte:
        raise ParameterError("data", f"{{name}} {root}: test/ holds no images")
    X = read_images(ftr + fte, size)  # one pass, so train and test share the channel count
    return Dataset(
        X[: len(ftr)], ytr, X[len(ftr):], yte, relative_ids(ftr, root), relative_ids(fte, root),
        classes, "folder", {"split": "official", "skipped_files": s1 + s2},
    )


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan(base: Path, root: Path, classes: list[str], allow_empty: bool = False) -> tuple[list[Path], np.ndarray, int]:
    """Image files under ``base/<class>/`` in sorted order, their labels int64 (N,), and the skip count."""
    extensions = image_extensions()
    files: list[Path] = []
    labels: list[int] = []
    skipped = 0
    for k, name in enumerate(classes):
        found = []
        for f in walk_files(base / name):
            if f.suffix.lower() in extensions:
                found.append(f)
            else:
                skipped += 1
        if not found and not allow_empty:
            raise CleanpipeError(f"class folder {(base / name).relative_to(root).as_posix()}/ holds no images; add some or remove it")
        files += found
        labels += [k] * len(found)
    return files, np.asarray(labels, dtype=np.int64), skipped


def walk_files(folder: Path) -> list[Path]:
    # os.walk with sorted, non-hidden entries: the order (and so the IDs' order) is deterministic.
    if not folder.is_dir():
        return []
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".") and f.lower() not in JUNK]
    return sorted(out)


def image_extensions() -> set[str]:
    from PIL import Image

    return {ext.lower() for ext in Image.registered_extensions()}


def cache_dir() -> Path:
    """Where decoded image folders are kept: ``$CLEANPIPE_CACHE``, else ``$XDG_CACHE_HOME/cleanpipe``, else ``~/.cache/cleanpipe``."""
    if os.environ.get("CLEANPIPE_CACHE"):
        return Path(os.environ["CLEANPIPE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cleanpipe"


def _cache_key(files: list[Path], size: int) -> str:
    """The file list, each file's size and modification time, and the image size: any change makes a new key."""
    import hashlib

    h = hashlib.sha256(f"cleanpipe-images-1\n{size}\n".encode())
    for f in map(os.path.abspath, map(str, files)):  # plain strings: pathlib costs more than the stat
        st = os.stat(f)  # size, modification and change times, inode: a rewrite that keeps the mtime still shows
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}\n".encode())
    return h.hexdigest()


def read_images(files: list[Path], size: int) -> np.ndarray:
    """uint8 (N, C, size, size): C = 1 if every image is greyscale, else 3 (grey ones replicated).

    Decoded once, in parallel, then kept as a ``.npy`` in :func:`cache_dir` keyed by the file list and
    size: every later stage (and every later run on the same folder) loads that array instead.
    """
    key = _cache_key(files, size) if files else None
    cached = cache_dir() / "images" / f"{key}.npy" if key else None
    if cached is not None and cached.is_file():
        try:
            return np.load(cached, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            pass  # a torn cache file: decode again and replace it
    X = _decode_images(files, size)
    if cached is not None:
        try:
            import io

            buf = io.BytesIO()
            np.save(buf, X, allow_pickle=False)
            atomic_write_bytes(cached, buf.getvalue())
        except OSError:
            pass  # an unwritable cache only costs speed
    return X


def _decode_images(files: list[Path], size: int) -> np.ndarray:
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    resample = getattr(Image, "Resampling", Image).BILINEAR

    def decode(f: Path) -> tuple[bool, np.ndarray]:
        try:
            with Image.open(f) as im:
                grey = im.mode in GREY_MODES
                im = im.convert("L" if grey else "RGB").resize((size, size), resample)
                return grey, np.asarray(im, dtype=np.uint8)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise CleanpipeError(f"{f}: not a readable image ({e}); fix or remove it") from None

    grey = np.zeros(len(files), dtype=bool)
    out = np.empty((len(files), size, size, 3), dtype=np.uint8)
    # Pillow decodes without the GIL: threads use every core, and map keeps the files' order.
    with ThreadPoolExecutor(max_workers=min(32, os.cpu_count() or 1)) as pool:
        for i, (g, a) in enumerate(pool.map(decode, files, chunksize=64)):
            grey[i] = g
            out[i] = a[:, :, None] if g else a  # a grey image fills all three channels
    if len(files) and grey.all():
        return np.ascontiguousarray(out[:, None, :, :, 0])
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def relative_ids(files: list[Path], root: Path) -> np.ndarray:
    prefix = str(root).rstrip(os.sep) + os.sep
    names = [str(f) for f in files]
    if all(n.startswith(prefix) for n in names):  # the usual case, without pathlib's per-file parsing
        return np.array([n[len(prefix):].replace(os.sep, "/") for n in names], dtype=str)
    return np.array([f.relative_to(root).as_posix() for f in files], dtype=str)
