"""Data sources: each turns something on disk (or embedded) into one :class:`Dataset`.

One module per source kind. :func:`load_dataset` is the single entry point; a
:class:`DataSpec` says which source, where, and how to split, and is what
``RUN/dataset.json`` records so that later stages reload the very same data.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from cleanpipe.data import cifar, digits, folder, mnist, npz, table
from cleanpipe.data.base import Dataset, index_ids, stratified_split
from cleanpipe.errors import CleanpipeError
from cleanpipe.labels import EXCLUDED, read_labels, test_split_conflicts
from cleanpipe.validation import ParameterError, check_number

__all__ = ["Dataset", "DataSpec", "SOURCES", "Source", "load_dataset", "index_ids", "stratified_split"]


@dataclass(frozen=True)
class DataSpec:
    """Everything needed to rebuild a run's dataset.

    Parameters
    ----------
    source : str
        A key of :data:`SOURCES`.
    path : str or None
        File or directory for sources that read from disk (absolute once resolved).
    test_fraction : float
        Share held out as the test split when the source has no test files of its own; 0 holds
        nothing out, so that every example is checked (and no test accuracy is measured).
    split_seed : int
        Seed of that hold-out split.
    image_size : int
        Side length that ``folder`` images are resized to.
    label_column : str
        Column holding the label in ``table`` files.
    labels : str or None
        A user's own training labels (.npy/.csv/.json) replacing the source's; examples labeled
        ``-1`` there are left out of the training split (``cleanpipe apply`` marks exclusions so).
    """

    source: str
    path: str | None = None
    test_fraction: float = 0.2
    split_seed: int = 0
    image_size: int = 32
    label_column: str = "label"
    labels: str | None = None

    def __post_init__(self) -> None:  # the boundary: a spec names a known source and a usable size
        if self.source not in SOURCES:
            raise CleanpipeError(
                f"unknown dataset {self.source!r}; choose one of {', '.join(SOURCES)} (see `cleanpipe datasets`)"
            )
        check_number(self.image_size, "image_size", low=4)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "DataSpec":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass(frozen=True)
class Source:
    """A source kind: its loader, whether it needs ``--data``, and how to point it at data.

    ``natural_images``: its images are photographs of scenes, which a mirror image leaves valid, so
    training may flip them (``cleanpipe.recipes``); digits, characters and arbitrary arrays stay as they are.
    """

    load: Callable[[DataSpec], Dataset]
    needs_path: bool
    summary: str
    layout: str
    options: tuple[str, ...] = field(default_factory=tuple)
    natural_images: bool = False


SOURCES: dict[str, Source] = {
    "digits": Source(
        digits.load, False,
        "scikit-learn's 8x8 handwritten digits (1,797 images), embedded: the default",
        "no --data needed",
        ("--test-fraction", "--split-seed"),
    ),
    "mnist": Source(
        mnist.load, True,
        "MNIST / Fashion-MNIST IDX files (gzipped or not)",
        "--data DIR holding t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz] and/or the train-* pair; "
        "with both pairs the official split is used, otherwise a stratified hold-out",
        ("--test-fraction", "--split-seed"),
    ),
    "cifar10": Source(
        cifar.load, True,
        "CIFAR-10, python pickle batches",
        "--data DIR = cifar-10-batches-py (data_batch_1..5, test_batch, batches.meta)",
        natural_images=True,
    ),
    "cifar100": Source(
        cifar.load, True,
        "CIFAR-100 (fine labels), python pickle batches",
        "--data DIR = cifar-100-python (train, test, meta)",
        natural_images=True,
    ),
    "folder": Source(
        folder.load, True,
        "an image folder with one sub-folder per class; IDs are relative paths",
        "--data DIR with DIR/<class>/<image> (or DIR/train/<class>/... and DIR/test/<class>/...); "
        "images are resized to --image-size",
        ("--image-size", "--test-fraction", "--split-seed"),
        natural_images=True,
    ),
    "table": Source(
        table.load, True,
        "a CSV or Parquet table with numeric feature columns",
        "--data FILE.csv|FILE.parquet with --label-column NAME (default 'label'); string labels keep their names",
        ("--label-column", "--test-fraction", "--split-seed"),
    ),
    "npz": Source(
        npz.load, True,
        "a NumPy .npz archive of arrays X and y (optionally X_test, y_test, class_names)",
        "--data FILE.npz; X as uint8 N x C x H x W (or N x H x W) images or N x D features",
        ("--test-fraction", "--split-seed"),
    ),
}


def load_dataset(spec: DataSpec) -> Dataset:
    """Load the dataset a :class:`DataSpec` describes, with ``spec.labels`` applied.

    Raises
    ------
    CleanpipeError
        Unknown source, missing or unreadable data, or a labels file that does not fit.
    """
    src = SOURCES[spec.source]  # a DataSpec names a known source
    if src.needs_path:
        if not spec.path:
            raise ParameterError("data", f"dataset {spec.source!r} needs {{name}}: {src.layout}")
        if not os.path.exists(spec.path):
            raise ParameterError("data", f"{{name}} {spec.path}: no such file or directory")
    try:
        ds = src.load(spec)
    except CleanpipeError:
        raise
    except (OSError, ValueError, KeyError, EOFError, IndexError) as e:
        raise CleanpipeError(f"could not read {spec.source} data at {spec.path}: {e}") from None
    if spec.labels:
        labels = read_labels(
            Path(spec.labels), n=len(ds.y_train), ids=ds.ids_train, class_names=ds.class_names, allow_excluded=True
        )
        moved = test_split_conflicts(Path(spec.labels), ds.ids_test, ds.y_test, ds.class_names)
        if moved:
            raise CleanpipeError(
                f"labels file {spec.labels} relabels or excludes {moved:,} example(s) that are in this run's test split, "
                "where --labels does not reach; use the --test-fraction and --split-seed of the run it came from "
                "(`cleanpipe apply` printed them), e.g. --test-fraction 0"
            )
        ds.meta["labels_file"] = str(spec.labels)
        kept = labels != EXCLUDED
        if not kept.all():  # examples a reviewer excluded (`cleanpipe apply`): gone from every stage
            if kept.sum() < 2:
                raise CleanpipeError(f"labels file {spec.labels} excludes all but {int(kept.sum())} examples; nothing is left to train on")
            ds.X_train, ds.ids_train = ds.X_train[kept], ds.ids_train[kept]
            ds.meta["n_excluded"] = int((~kept).sum())
        ds.y_train = labels[kept]
    return ds
