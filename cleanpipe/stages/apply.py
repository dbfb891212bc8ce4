"""The apply stage (``cleanpipe apply``): a reviewer's decisions (``corrections.csv`` from the review page)
turned into a label file.

``corrections.csv`` has one row per decided example: ``id,decision,label`` with ``decision`` one of
``keep`` (the given label stands), ``relabel`` (``label`` is the new class name) or ``exclude`` (the
example is left out); ``skip`` rows are allowed and change nothing. :func:`apply_corrections` makes the corrected label vector; excluded examples
get :data:`cleanpipe.labels.EXCLUDED` (``-1``), which ``--labels`` reads as "drop this example from
the training split", so every later stage (crossval, prune, train) leaves it out.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from cleanpipe.data import DataSpec, load_dataset
from cleanpipe.errors import CleanpipeError
from cleanpipe.files import file_digest
from cleanpipe.labels import EXCLUDED, check_label_path, id_positions, write_labels
from cleanpipe.rundir import RunDir

DECISIONS = ("keep", "relabel", "exclude")
SKIP = "skip"  # accepted in a hand-written file: no decision, the label stands
COLUMNS = ("id", "decision", "label")


@dataclass
class Corrections:
    """Decisions by row of the training split.

    Attributes
    ----------
    rows : np.ndarray
        int64 (M,): positions in the training split, ascending.
    decision : np.ndarray
        str (M,): ``keep``, ``relabel`` or ``exclude`` for each row.
    label : np.ndarray
        int64 (M,): the final class of each row (``-1`` for ``exclude``).
    """

    rows: np.ndarray
    decision: np.ndarray
    label: np.ndarray
    n_skipped: int = 0

    def counts(self) -> dict[str, int]:
        return {**{d: int(np.sum(self.decision == d)) for d in DECISIONS}, SKIP: self.n_skipped}


def read_corrections(path: Path, ids: Sequence[str], given: np.ndarray, class_names: Sequence[str],
                     other_ids: Sequence[str] = ()) -> Corrections:
    """Parse and check ``corrections.csv`` against the examples it decides on.

    Parameters
    ----------
    path : Path
        CSV with columns ``id``, ``decision``, ``label`` (others are ignored).
    ids : sequence of str
        The training split's IDs, in order.
    given : np.ndarray
        int64 (N,): the labels the review showed (the run's training labels).
    class_names : sequence of str
    other_ids : sequence of str
        IDs of the test split, to say so when a row names one.

    Raises
    ------
    CleanpipeError
        Missing file, not a CSV, missing columns, duplicate or unknown IDs, unknown decisions or class
        names, a ``keep`` whose label is not the given one: each a single line.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise CleanpipeError(f"corrections file {path}: no such file; export it from the review page (`cleanpipe review RUN`)")
    try:
        # utf-8-sig: spreadsheets save CSV with a byte-order mark before the header
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise CleanpipeError(f"corrections file {path}: not a readable CSV ({str(e).strip().splitlines()[0]})") from None
    df.columns = [str(c).strip().lower() for c in df.columns]
    df = df.fillna("")  # a row short of fields ("id,keep") leaves its label empty, not NaN
    if not len(df):
        raise CleanpipeError(f"corrections file {path}: no decisions in it; decide on the review page, then export")
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise CleanpipeError(f"corrections file {path}: no {', '.join(missing)} column; expected the header "
                             f"`{','.join(COLUMNS)}` (found {', '.join(df.columns) or 'none'})")
    keys = df["id"].str.strip().tolist()
    line = lambda k: k + 2  # noqa: E731 - the file's line number of data row k (after the header)
    dup = pd.Index(keys).duplicated()
    if dup.any():
        k = int(np.argmax(dup))
        raise CleanpipeError(f"corrections file {path}: ID {keys[k]!r} appears twice (line {line(k)}); keep one decision per example")
    positions = id_positions(keys, ids, path)
    twice = pd.Index(positions[positions >= 0]).duplicated()
    if twice.any():
        raise CleanpipeError(f"corrections file {path}: two rows name example {ids[positions[positions >= 0][twice][0]]!r} "
                             "(one by a path ending in its ID); keep one decision per example")
    unknown = [k for k, r in zip(keys, positions) if r < 0]
    if unknown:
        test = set(map(str, other_ids))
        where = " (it is in the test split, which review does not cover)" if unknown[0] in test else ""
        raise CleanpipeError(f"corrections file {path}: {len(unknown):,} ID(s) are not training examples of this run, "
                             f"e.g. {unknown[0]!r}{where}; was the file exported from this run's review page?")
    decision = df["decision"].str.strip().str.lower().to_numpy(dtype=object)
    bad = ~np.isin(decision, DECISIONS + (SKIP,))
    if bad.any():
        k = int(np.argmax(bad))
        raise CleanpipeError(f"corrections file {path}: decision {df['decision'].iloc[k]!r} on line {line(k)} is not one of "
                             f"{', '.join(DECISIONS)} (or {SKIP})")
    decided = decision != SKIP
    n_skipped = int((~decided).sum())
    df, decision, keys, rows = df[decided], decision[decided], [k for k, d in zip(keys, decided) if d], positions[decided]
    line = lambda k: int(np.flatnonzero(decided)[k]) + 2  # noqa: E731 - line numbers of the file as written
    by_name = {str(c): n for n, c in enumerate(class_names)}
    names = df["label"].str.strip().tolist()
    label = np.empty(len(rows), dtype=np.int64)
    for k, (row, d, name) in enumerate(zip(rows, decision, names)):
        if d == "exclude":
            label[k] = EXCLUDED
            continue
        if d == "keep":
            if name and by_name.get(name) != given[row]:
                raise CleanpipeError(f"corrections file {path}: line {line(k)} keeps {keys[k]!r} but names class {name!r}, "
                                     f"not its given class {class_names[given[row]]!r}; use relabel to change it")
            label[k] = given[row]
            continue
        if name not in by_name:
            shown = ", ".join(map(str, list(class_names)[:10])) + (", ..." if len(class_names) > 10 else "")
            raise CleanpipeError(f"corrections file {path}: line {line(k)} relabels {keys[k]!r} as unknown class {name!r}; "
                                 f"classes are {shown}")
        label[k] = by_name[name]
    order = np.argsort(rows, kind="stable")
    return Corrections(rows[order], decision[order].astype(str), label[order], n_skipped)


def apply_corrections(labels: np.ndarray, corrections: Corrections) -> np.ndarray:
    """The corrected labels: int64 (N,), ``labels`` with each decided row's final class, ``-1`` where excluded."""
    out = np.asarray(labels, dtype=np.int64).copy()
    out[corrections.rows] = corrections.label
    return out


@dataclass
class ApplyStage:
    manifest: dict
    out: Path
    counts: dict
    n_changed: int
    n_examples: int
    next_command: str


def run_apply_stage(run: RunDir, corrections_path: Path, out: Path) -> ApplyStage:
    """Write the corrected labels of ``run``'s training split to ``out`` and record it in ``RUN/apply/``.

    ``out`` covers every training example of the run's data source (earlier exclusions stay ``-1``),
    in the format its suffix names, and is what ``--labels`` reads.
    """

    out = check_label_path(Path(out), "out")
    corrections_path = Path(corrections_path)
    if out.resolve() == corrections_path.resolve():
        raise CleanpipeError(f"--out {out} is the corrections file itself; write the labels to another file")
    with run.transaction():
        if run.dataset_json() is None:
            raise CleanpipeError(f"{run.root} has no dataset; run `cleanpipe run` or `cleanpipe crossval` on it first")
        spec, ds, _ = run.bind_dataset(None)
        for what, used in (("data", spec.path), ("labels file", spec.labels)):
            if used and Path(used).resolve() == out.resolve():
                raise CleanpipeError(f"--out {out} is the run's {what}; write the corrected labels to a new file")
        labels, _, files = run.training_labels(ds)
        fixes = read_corrections(corrections_path, ds.ids_train, labels, ds.class_names, ds.ids_test)
        corrected = apply_corrections(labels, fixes)
        ids = np.asarray(ds.ids_train)
        if ds.meta.get("n_excluded"):  # examples an earlier apply excluded stay excluded, in the source's order
            full = load_dataset(replace(spec, labels=None))
            by_id = dict(zip(map(str, ids), corrected.tolist()))
            ids = np.asarray(full.ids_train)
            corrected = np.asarray([by_id.get(str(i), EXCLUDED) for i in ids], dtype=np.int64)
        if np.sum(corrected != EXCLUDED) < 2:
            raise CleanpipeError(f"corrections file {corrections_path}: it excludes all but {int(np.sum(corrected != EXCLUDED))} "
                                 "examples; nothing would be left to train on")
        counts = fixes.counts()
        n_changed = int(np.sum((fixes.decision == "relabel") & (fixes.label != labels[fixes.rows])))
        with run.write_stage("apply") as w:  # the label file is written last inside: an error leaves neither
            for p in files:
                w.record_input(p)
            w.path("corrections.csv").write_bytes(corrections_path.read_bytes())
            write_labels(out, ids, corrected, ds.class_names)
            manifest = w.finish(
                parameters={"corrections": str(corrections_path.resolve()), "out": str(out.resolve())},
                metrics={"n_examples": int(len(ids)), "n_decided": int(len(fixes.rows)), "n_relabeled": counts["relabel"],
                         "n_kept": counts["keep"], "n_excluded": counts["exclude"], "n_skipped": counts[SKIP],
                         "n_changed": n_changed,
                         "n_excluded_total": int(np.sum(corrected == EXCLUDED)), "out_sha256": file_digest(out)},
            )
    return ApplyStage(manifest, out, counts, n_changed, int(len(ids)), _next_command(spec, out))


def _next_command(spec, out: Path) -> str:
    """The ``cleanpipe run`` that checks and trains on the corrected labels (a new run directory)."""

    q = shlex.quote
    parts = ["cleanpipe run RUN2", f"--dataset {spec.source}"]
    if spec.path:
        parts.append(f"--data {q(spec.path)}")
    parts.append(f"--labels {q(str(out))}")
    default = DataSpec(spec.source)
    for name, flag in (("test_fraction", "--test-fraction"), ("split_seed", "--split-seed"),
                       ("image_size", "--image-size"), ("label_column", "--label-column")):
        if getattr(spec, name) != getattr(default, name):
            parts.append(f"{flag} {q(str(getattr(spec, name)))}")
    return " ".join(parts)
