"""A CSV or Parquet table: numeric feature columns and one label column, one row per example.

IDs are row numbers (``"0"``, ``"1"``, ... in file order), whatever index the file carries.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cleanpipe.data.base import Dataset, index_ids, stratified_split
from cleanpipe.errors import CleanpipeError
from cleanpipe.validation import ParameterError

SUFFIXES = (".csv", ".parquet", ".pq")


def load(spec) -> Dataset:
    """Load ``spec.path`` with ``spec.label_column`` as labels and every other column as a feature.

    Returns
    -------
    Dataset
        Features float32 (N, D), labels int64 (N,); ``meta["feature_names"]`` lists the D columns.
    """
    path = Path(spec.path)
    df = read_table(path)
    if len(df) == 0:
        raise CleanpipeError(f"{path}: the table has no rows")
    col = spec.label_column
    if col not in df.columns:
        raise CleanpipeError(
            f"{path}: no label column {col!r}; choose --label-column from {', '.join(map(str, df.columns))}"
        )
    labels = df[col]
    if labels.isna().any():
        row = int(np.flatnonzero(labels.isna().to_numpy())[0])
        raise CleanpipeError(f"{path}: {int(labels.isna().sum())} rows have no {col!r} (first: row {row}); drop or fill them")
    features = df.drop(columns=[col])
    X = feature_array(features, path, col)
    y, names = encode_labels(labels.to_numpy())
    Xtr, ytr, idtr, Xte, yte, idte = stratified_split(
        X, y, index_ids(len(y)), test_fraction=spec.test_fraction, seed=spec.split_seed
    )
    meta = {"split": "holdout", "feature_names": [str(c) for c in features.columns]}
    return Dataset(Xtr, ytr, Xte, yte, idtr, idte, names, "table", meta)


def read_table(path: Path):
    """The file as a pandas DataFrame; .csv via ``read_csv``, .parquet/.pq via ``read_parquet``."""
    import pandas as pd

    suffix = path.suffix.lower()
    if path.is_dir() or suffix not in SUFFIXES:
        raise ParameterError("data", f"{{name}} {path}: the table source reads a .csv or .parquet file")
    try:
        return pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    except ImportError as e:
        raise CleanpipeError(f"reading {path} needs pyarrow: pip install pyarrow ({e})") from None
    except Exception as e:  # noqa: BLE001 - pandas/pyarrow raise many kinds for a bad file
        raise CleanpipeError(f"{path}: not a readable {suffix[1:]} table ({type(e).__name__}: {e})") from None


def feature_array(features, path: Path, label_col: str) -> np.ndarray:
    """float32 (N, D) from all-numeric, fully present columns."""
    import pandas as pd

    if features.shape[1] == 0:
        raise CleanpipeError(f"{path}: no feature columns besides {label_col!r}")
    for c in features.columns:
        if not pd.api.types.is_numeric_dtype(features[c]):
            raise CleanpipeError(
                f"{path}: column {c!r} is not numeric ({features[c].dtype}); drop it or encode it "
                "(e.g. one-hot) before loading"
            )
    missing = features.isna().any()
    if missing.any():
        c = missing.index[missing.to_numpy()][0]
        raise CleanpipeError(f"{path}: column {c!r} has missing values (NaN); fill or drop them")
    X = features.to_numpy(dtype=np.float32)
    if not np.isfinite(X).all():
        c = features.columns[~np.isfinite(X).all(axis=0)][0]
        raise CleanpipeError(f"{path}: column {c!r} has infinite values (or ones too large for float32)")
    return X


def encode_labels(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Class ids int64 (N,) and class names.

    Non-negative integers (or whole floats) are used as they are, with names ``"0".."K-1"``;
    anything else (strings, negative or fractional numbers, booleans) maps its sorted unique
    values to ``0..K-1`` and keeps them, as strings, for names.
    """
    values = np.asarray(values)
    if values.dtype.kind == "f" and np.all(values == np.round(values)):
        values = values.astype(np.int64)
    if values.dtype.kind in "iu" and values.min() >= 0:
        return values.astype(np.int64), [str(k) for k in range(int(values.max()) + 1)]
    # Numbers sort as numbers; everything else (object/str columns) sorts as text.
    keys = values if values.dtype.kind in "biuf" else values.astype(str)
    uniq, y = np.unique(keys, return_inverse=True)
    return y.astype(np.int64).reshape(-1), [str(u) for u in uniq]
