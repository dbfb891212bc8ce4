"""Files on disk: the one atomic write, digests, and readers that never unpickle.

A leaf: it imports nothing of cleanpipe's but the error type. Every file cleanpipe writes in place (a
stage's staging folder aside) goes through :func:`atomic_path`: written under a temporary name beside
its destination, then renamed over it, so an interrupted write leaves the old file or none, never half.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from cleanpipe.errors import CleanpipeError


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix, so ``np.savez`` adds nothing) renamed over it on success.

    >>> with atomic_path(Path("x.npz")) as tmp:  # doctest: +SKIP
    ...     np.savez(tmp, a=a)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # on disk before the rename makes it the file
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, as hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_npy(path: Path, *, what: str = "array") -> np.ndarray:
    """``np.load`` that never unpickles and turns a corrupt file into a clear error."""
    if not path.is_file():
        raise CleanpipeError(f"{path}: no such file")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError:
        raise CleanpipeError(
            f"{path}: not a .npy file of plain numbers (text, another format, or pickled objects, which cleanpipe "
            f"never loads); save the {what} with numpy.save"
        ) from None
    except (OSError, EOFError) as e:
        raise CleanpipeError(f"{path}: unreadable or corrupt .npy file ({e})") from None


def read_json(path: Path) -> dict:
    """A JSON file's object, or one clear error for a missing or corrupt file."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise CleanpipeError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CleanpipeError(f"{path}: corrupt JSON ({e}); re-run the stage that wrote it") from None
