"""Reading label files: .npy, .csv and .json (a list, or the CL paper's ``{path: label}`` mapping)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cleanpipe.errors import CleanpipeError
from cleanpipe.files import atomic_write_bytes
from cleanpipe.validation import ParameterError

# Column names taken as the label column of a multi-column CSV (case-insensitive), in order.
# The label of an example left out of every stage (scikit-learn's mark of "unlabeled").
EXCLUDED = -1
LABEL_COLUMNS = ("label", "labels", "given_label", "noisy_label", "y")
ID_COLUMN = "id"


def read_labels(
    path: Path,
    *,
    n: int | None = None,
    ids: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    allow_excluded: bool = False,
) -> np.ndarray:
    """Read a label vector.

    Parameters
    ----------
    path : Path
        ``.npy``: a 1-D integer (or class-name string) array; 2-D one-hot or probability
        arrays are refused. ``.csv``: one column (header optional), or a column named
        ``label``/``labels``/``given_label``/``noisy_label``/``y``; with an ``id`` column and
        ``ids`` given, rows are matched to ``ids`` instead of taken in order. ``.json``: a
        list, or a mapping ``{key: label}`` whose keys are the IDs themselves or paths ending
        in ``/<ID>`` (the Confident Learning paper's files key absolute image paths such as
        ``/datasets/cifar10/train/airplane/10008_airplane.png``, which match the ``folder``
        source's ID ``train/airplane/10008_airplane.png``).
    n : int, optional
        Required number of labels (the training split's size).
    ids : sequence of str, optional
        The examples' IDs, in order, for files that name their examples. Each must be
        matched by exactly one entry; entries matching no ID are ignored.
    class_names : sequence of str, optional
        Lets labels be given by class name, and bounds them to ``0..len(class_names)-1``.
    allow_excluded : bool
        Accept :data:`EXCLUDED` (``-1``, scikit-learn's mark of an unlabeled example) as "leave this
        example out": what ``cleanpipe apply`` writes for the examples a reviewer excluded.

    Returns
    -------
    np.ndarray
        int64 of shape (N,), each value >= 0 (and < ``len(class_names)`` when given), or ``-1``
        where ``allow_excluded`` lets it be.

    Raises
    ------
    CleanpipeError
        Missing, unreadable or malformed file; wrong length; unmatched IDs; unknown or
        out-of-range labels.
    """
    path = Path(path)
    keys, raw = read_entries(path, class_names)
    if keys is not None and ids is not None:
        raw = _match_by_id(_keyed(keys, raw, path), ids, path)
    elif keys is not None and path.suffix.lower() == ".json":
        raise CleanpipeError(
            f"labels file {path} maps IDs to labels, which needs a dataset to match against; use it with --dataset"
        )
    if n is not None and len(raw) != n:
        raise CleanpipeError(
            f"labels file {path} has {len(raw):,} entries but the dataset's training split has {n:,} examples; "
            "give one label per training example, in its order (or keyed by example ID)"
        )
    return _to_ids(raw, path, class_names, allow_excluded)


def read_entries(path: Path, class_names: Sequence[str] | None = None, *,
                 text: bool | None = None) -> tuple[list[str] | None, np.ndarray]:
    """A label file's entries as written, in its order: ``(IDs or None, labels)``; the one reader of label files.

    ``.npy``: no IDs. ``.csv``: the label column (see :func:`read_labels`) and, with an ``id`` column, the
    IDs. ``.json``: a list (no IDs) or an ``{id: label}`` object. Labels are the file's raw values (numbers,
    or text: class names). ``text`` (default: with ``class_names``) keeps a CSV's values as text, so that
    class names win over numbers (a class named "1"); otherwise pandas reads numbers as numbers.
    """
    path = Path(path)
    if not path.is_file():
        raise CleanpipeError(f"labels file {path}: no such file")
    suffix = path.suffix.lower()
    readers = {".npy": _read_npy, ".csv": _read_csv, ".json": _read_json}
    if suffix not in readers:
        raise CleanpipeError(f"labels file {path}: unknown format {suffix or '(none)'}; use .npy, .csv or .json")
    try:
        return readers[suffix](path, class_names, text)
    except (OSError, UnicodeDecodeError) as e:
        raise CleanpipeError(f"labels file {path}: cannot read it ({e})") from None


def _keyed(keys: list[str], values: np.ndarray, path: Path) -> dict:
    """``{id: label}`` of a file's entries; an ID given twice is an error."""
    mapping = dict(zip(keys, values))
    if len(mapping) != len(keys):
        seen: set[str] = set()
        twice = next(k for k in keys if k in seen or seen.add(k))
        raise CleanpipeError(f"labels file {path}: ID {twice!r} appears twice; give each example once")
    return mapping


def _read_npy(path: Path, class_names, as_text=None) -> tuple[None, np.ndarray]:
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError:
        raise CleanpipeError(
            f"labels file {path}: not a .npy file of plain numbers (text, another format, or pickled objects, "
            "which cleanpipe never loads); save the labels with numpy.save or use .csv/.json"
        ) from None
    except (OSError, EOFError) as e:
        raise CleanpipeError(f"labels file {path}: unreadable or corrupt .npy file ({e})") from None
    if not isinstance(arr, np.ndarray) or arr.ndim != 1:
        shape = getattr(arr, "shape", None)
        hint = "; for one-hot or probability rows save labels = probs.argmax(axis=1)" if shape and len(shape) == 2 else ""
        raise CleanpipeError(f"labels file {path}: expected a 1-D vector of class ids, got shape {shape}{hint}")
    return None, arr


def _read_csv(path: Path, class_names, as_text: bool | None = None) -> tuple[list[str] | None, np.ndarray]:
    import pandas as pd

    as_text = class_names is not None if as_text is None else as_text
    try:
        head = pd.read_csv(path, nrows=0)
        cols = {str(c).lower(): c for c in head.columns}
        # IDs stay text: "0007" and "7" are different IDs. With class names, every value stays text too,
        # so that classes named "1", "-1", "True" or "NA" are read as those names (names win over numbers).
        text = {"dtype": str, "keep_default_na": False} if as_text else {}
        kinds = text or {"dtype": {cols[ID_COLUMN]: str} if ID_COLUMN in cols else None}
        df = pd.read_csv(path, **kinds)
        if len(df.columns) == 1 and _is_headerless(str(df.columns[0]), class_names):
            df = pd.read_csv(path, header=None, **kinds)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise CleanpipeError(f"labels file {path}: not a readable CSV ({e})") from None
    col = _label_column(df, path)
    if ID_COLUMN in cols and col == cols[ID_COLUMN]:
        raise CleanpipeError(f"labels file {path}: it has only an `id` column; add a label column (id,label)")
    missing = (df[col].isna() | (df[col].astype(str).str.strip() == "")).to_numpy() if text else df[col].isna().to_numpy()
    if missing.any():
        raise CleanpipeError(f"labels file {path}: {int(missing.sum())} rows have no label (first: data row {int(np.argmax(missing))})")
    values = df[col].to_numpy()
    if ID_COLUMN in cols and col != cols[ID_COLUMN]:
        return df[cols[ID_COLUMN]].astype(str).tolist(), values
    return None, values


def _is_headerless(first: str, class_names) -> bool:
    """Whether a one-column CSV's first line is already a label (pandas took it for a header)."""
    if first.lower() in LABEL_COLUMNS + ("class", "target"):
        return False
    try:
        float(first)
        return True
    except ValueError:
        return class_names is not None and first in {str(c) for c in class_names}


def _label_column(df, path: Path):
    if len(df.columns) == 1:
        return df.columns[0]
    cols = {str(c).lower(): c for c in df.columns}
    col = next((cols[c] for c in LABEL_COLUMNS if c in cols), None)
    if col is None and len(df.columns) == 2 and ID_COLUMN in cols:
        col = next(c for c in df.columns if c != cols[ID_COLUMN])  # "id,<anything>": the other one
    if col is None:
        raise CleanpipeError(
            f"labels file {path}: no label column; name one of {', '.join(LABEL_COLUMNS)} "
            f"(found {', '.join(map(str, df.columns))})"
        )
    return col


def _read_json(path: Path, class_names, as_text=None) -> tuple[list[str] | None, np.ndarray]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as e:
        raise CleanpipeError(f"labels file {path}: not valid JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise CleanpipeError(f"labels file {path}: cannot read it as UTF-8 JSON ({e})") from None
    except ValueError as e:  # a duplicate key
        raise CleanpipeError(f"labels file {path}: {e}") from None
    if isinstance(obj, list):
        return None, _object_array(obj)
    if isinstance(obj, dict):
        return [str(k) for k in obj], _object_array(list(obj.values()))
    raise CleanpipeError(f"labels file {path}: expected a JSON list or an {{id: label}} object")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k!r} appears twice; give each example once")
        out[k] = v
    return out


def _object_array(values: Sequence[Any]) -> np.ndarray:
    # np.asarray would turn a list of lists into a 2-D array; keep one entry per example.
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


def _match_by_id(mapping: dict, ids: Sequence[str], path: Path) -> np.ndarray:
    """Labels in ``ids`` order: each ID looked up exactly, else as the suffix ``.../ID`` of one key."""
    exact = {str(k).replace("\\", "/"): v for k, v in mapping.items()}
    wanted = [str(i) for i in ids]
    suffix: dict[str, str] | None = None
    out, unmatched = [], []
    for i in wanted:
        if i in exact:
            out.append(exact[i])
            continue
        if suffix is None:  # built only when some ID is not a key itself
            suffix = _suffix_index(exact.keys(), set(wanted), path)
        key = suffix.get(i)
        if key is None:
            unmatched.append(i)
            out.append(None)
        else:
            out.append(exact[key])
    if unmatched:
        example_key = next(iter(exact), None)
        raise CleanpipeError(
            f"labels file {path}: {len(unmatched):,} of {len(wanted):,} examples have no entry (e.g. ID {unmatched[0]!r}, "
            f"while a key reads {example_key!r}); keys must be the example IDs or paths ending in /<ID>"
        )
    return _object_array(out)


def _suffix_index(keys, wanted: set[str], path: Path) -> dict[str, str]:
    """ID -> the one key ending in ``/ID``; two keys ending in the same ID is an error."""
    index: dict[str, str] = {}
    for key in keys:
        parts = key.split("/")
        for start in range(1, len(parts)):  # longest proper tail first
            tail = "/".join(parts[start:])
            if tail in wanted:
                if tail in index:
                    raise CleanpipeError(
                        f"labels file {path}: two entries end in the same example ID {tail!r} "
                        f"({index[tail]!r} and {key!r}); keep one"
                    )
                index[tail] = key
                break
    return index


def _to_ids(raw: np.ndarray, path: Path, class_names: Sequence[str] | None, allow_excluded: bool = False) -> np.ndarray:
    """int64 (N,) class ids from integers, whole floats or class names, range-checked (``-1`` kept if allowed)."""
    raw = np.asarray(raw)
    if raw.dtype.kind in "iu":
        labels = raw.astype(np.int64)
    elif raw.dtype.kind == "f":
        if not np.all(np.isfinite(raw)) or not np.all(raw == np.round(raw)):
            raise CleanpipeError(f"labels file {path}: labels must be whole class ids, found non-integer values")
        labels = raw.astype(np.int64)
    else:
        labels = _names_to_ids(raw, path, class_names)
    bad = labels < (EXCLUDED if allow_excluded else 0)
    if bad.any():
        first = int(np.argmax(bad))
        allowed = " (or -1: leave the example out)" if allow_excluded else ""
        raise CleanpipeError(f"labels file {path}: labels must be >= 0{allowed}, found {labels[first]} at entry {first}")
    if class_names is not None and len(labels) and labels.max() >= len(class_names):
        raise CleanpipeError(
            f"labels file {path}: label {labels.max()} (entry {int(labels.argmax())}) is out of range; "
            f"this dataset has classes 0..{len(class_names) - 1}"
        )
    return labels


def _whole_number(text: str) -> bool:
    try:
        value = float(text)
    except ValueError:
        return False
    return np.isfinite(value) and value.is_integer()


def _names_to_ids(raw: np.ndarray, path: Path, class_names: Sequence[str] | None) -> np.ndarray:
    names = {str(c): k for k, c in enumerate(class_names or [])}
    out = np.empty(len(raw), dtype=np.int64)
    for i, v in enumerate(raw.tolist()):
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        if isinstance(v, str) and v in names:  # a class name wins over reading it as a number
            out[i] = names[v]
        elif isinstance(v, (bool, np.bool_)) or v is None or isinstance(v, (list, dict)):
            raise CleanpipeError(f"labels file {path}: entry {i} is {v!r}, not a class id or name")
        elif isinstance(v, (int, np.integer)):
            out[i] = int(v)
        elif isinstance(v, (float, np.floating)) and float(v).is_integer():
            out[i] = int(v)
        elif isinstance(v, str) and v.strip().lstrip("-").isdigit():
            out[i] = int(v)
        elif isinstance(v, str) and _whole_number(v):  # "3.0", as spreadsheets write numbers
            out[i] = int(float(v))
        else:
            known = (
                f"; classes are {', '.join(list(names)[:10])}{', ...' if len(names) > 10 else ''}"
                if names else "; class names can only be used with --dataset, otherwise give class ids"
            )
            raise CleanpipeError(f"labels file {path}: unknown class {v!r} at entry {i}{known}")
    return out


def test_split_conflicts(path: Path, ids_test: Sequence[str], y_test: np.ndarray, class_names: Sequence[str]) -> int:
    """How many test-split examples a label file keyed by ID (.csv with ``id``, .json object) relabels or excludes.

    ``--labels`` sets training labels only; a file made for a run with another split (``cleanpipe apply``
    writes every training example of its run) would otherwise lose those decisions without a word.
    """
    if not len(ids_test) or Path(path).suffix.lower() not in (".csv", ".json"):
        return 0
    try:
        keys, values = read_entries(Path(path), class_names)
    except CleanpipeError:
        return 0  # read_labels has already said what is wrong with the file, or will
    if keys is None:
        return 0
    by_key = {k.replace("\\", "/"): v for k, v in zip(keys, values)}
    present = [(k, i) for k, i in enumerate(map(str, ids_test)) if i in by_key]
    if not present:
        return 0
    given = _to_ids(_object_array([by_key[i] for _, i in present]), Path(path), class_names, allow_excluded=True)
    return int(np.sum(given != np.asarray(y_test)[[k for k, _ in present]]))


def id_positions(keys: Sequence[str], ids: Sequence[str], path: Path) -> np.ndarray:
    """The position in ``ids`` of each key (an ID, or a path ending in ``/<ID>``): int64 (M,), -1 where none matches."""
    position = {str(i): k for k, i in enumerate(ids)}
    keys = [str(k).replace("\\", "/") for k in keys]
    unknown = [k for k in keys if k not in position]
    by_key = {key: tail for tail, key in _suffix_index(unknown, set(position), path).items()} if unknown else {}
    return np.asarray([position.get(k, position.get(by_key.get(k), -1)) for k in keys], dtype=np.int64)


def read_partial_labels(path: Path, ids: Sequence[str], class_names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Labels for *some* examples, by ID: a hand-checked subset such as IEG's trusted probe set.

    Parameters
    ----------
    path : Path
        ``.csv`` with an ``id`` column and a label column (as for :func:`read_labels`), or ``.json``
        ``{id: label}``; keys may also be paths ending in ``/<ID>``. Labels are class ids or names.
    ids : sequence of str
        The IDs of the examples the rows refer to (the training split's).
    class_names : sequence of str, optional

    Returns
    -------
    rows : np.ndarray
        int64 (M,): positions in ``ids``, ascending.
    labels : np.ndarray
        int64 (M,): their labels.
    """
    path = Path(path)
    keys, values = read_entries(path, class_names, text=False)  # numbers are class ids here, as they always were
    if keys is None:
        raise CleanpipeError(f"labels file {path}: needs an `id` column naming the examples it labels"
                             if path.suffix.lower() == ".csv" else
                             f"labels file {path}: give a .csv with id and label columns or a .json {{id: label}} object")
    if not keys:
        raise CleanpipeError(f"labels file {path}: no labels in it")
    _keyed(keys, values, path)  # each example once
    rows = id_positions(keys, ids, path)
    if (rows < 0).any():
        k = keys[int(np.argmax(rows < 0))]
        raise CleanpipeError(f"labels file {path}: ID {k!r} is not a training example of this run; "
                             f"keys must be example IDs or paths ending in /<ID>")
    if len(np.unique(rows)) != len(rows):
        raise CleanpipeError(f"labels file {path}: two entries name the same example; keep one")
    labels = _to_ids(values, path, class_names)
    order = np.argsort(rows)
    return rows[order], labels[order]


LABEL_SUFFIXES = (".npy", ".csv", ".json")  # what write_labels writes and read_labels reads back


def check_label_path(path: Path, name: str = "path") -> Path:
    """``path`` if a label file can be written there (a known suffix, an existing folder), else a ParameterError."""

    path = Path(path)
    if path.suffix.lower() not in LABEL_SUFFIXES:
        raise ParameterError(name, f"{path}: give a .npy, .csv or .json file name")
    if not path.resolve().parent.is_dir():
        raise ParameterError(name, f"{path}: its folder does not exist; create it first")
    return path


def write_labels(path: Path, ids: Sequence[str], labels: np.ndarray, class_names: Sequence[str] | None = None) -> None:
    """Write a label vector that :func:`read_labels` reads back, by the suffix of ``path``, atomically.

    ``.npy``: int64 by row; ``.csv``: ``id,label`` rows; ``.json``: ``{id: label}``. With ``class_names``,
    ``.csv`` and ``.json`` name the classes (read back with the run's dataset). :data:`EXCLUDED` stays
    ``-1`` in every format.
    """
    import io

    path = Path(path)
    suffix = path.suffix.lower()
    ids, labels = list(map(str, ids)), np.asarray(labels, dtype=np.int64)
    names = None if class_names is None else [str(c) for c in class_names]

    def value(y: int):
        return y if names is None or y == EXCLUDED else names[y]

    if suffix == ".csv" and names is not None and str(EXCLUDED) in names and (labels == EXCLUDED).any():
        raise CleanpipeError(f"{path}: a class is named {EXCLUDED}, which a CSV cannot tell from the mark of an "
                             "excluded example; write a .json or .npy label file instead")
    if suffix == ".npy":
        buf = io.BytesIO()
        np.save(buf, labels, allow_pickle=False)
        data = buf.getvalue()
    elif suffix == ".csv":
        import pandas as pd

        data = pd.DataFrame({"id": ids, "label": [value(y) for y in labels.tolist()]}).to_csv(index=False).encode()
    else:
        data = (json.dumps({i: value(y) for i, y in zip(ids, labels.tolist())}, indent=0) + "\n").encode()
    try:
        atomic_write_bytes(path, data)
    except OSError as e:
        raise CleanpipeError(f"{path}: cannot write labels ({e.strerror or e}); choose another path") from None
