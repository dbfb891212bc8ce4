"""The prune stage: flag label errors, write masks, a ranked CSV report and a manifest.

Two forms: inside a run (``crossval/pred_probs.npy`` and the run's labels, with the truth
known when the run injected the noise itself) or standalone on files computed anywhere
(``--pred-probs``, ``--labels``, optionally ``--true-labels``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cleanpipe.detect.confident import (
    ALIASES,
    DEFAULT_METHOD,
    DEFAULT_RANK_BY,
    Detection,
    canonical_method,
    find_issues,
    remaining_noise_rate,
    validate_inputs,
    worst_first,
)
from cleanpipe.detect.incv import incv_select, incv_settings
from cleanpipe.engine import resolve_device
from cleanpipe.errors import CleanpipeError
from cleanpipe.files import load_npy
from cleanpipe.labels import read_labels
from cleanpipe.metrics import (
    detection_metrics,
    error_auroc,
    error_average_precision,
    recall_at_k,
)
from cleanpipe.robust.coteaching import incv_forget_rate
from cleanpipe.rundir import RunDir
from cleanpipe.validation import check_choice, check_number


@dataclass
class PruneInputs:
    """Everything detection reads, whichever form supplied it."""

    labels: np.ndarray  # int64 (N,)
    pred_probs: np.ndarray  # float32 (N, K)
    true_labels: np.ndarray | None  # int64 (N,) when known
    ids: np.ndarray  # str (N,)
    class_names: list[str]
    input_files: list[Path]
    note: str | None = None


@dataclass
class PruneStage:
    """What ``cleanpipe prune`` did, for the CLI's summary."""

    detection: Detection
    inputs: PruneInputs
    method: str
    manifest: dict
    report: object  # pandas.DataFrame: the report's first REPORT_HEAD rows, worst first (the file has them all)

    @property
    def unflagged_elsewhere(self) -> int:
        """Examples not flagged whose out-of-fold prediction is another class than their label: the next
        candidates a person should look at (the report and ``review --also`` list them right after the flagged)."""
        det = self.detection
        return int(np.sum((det.suggested_label != self.inputs.labels) & ~det.issue_mask))


def _run_inputs(run: RunDir) -> PruneInputs:
    run.require("crossval", hint=f"cleanpipe crossval {run.root}")
    _, ds, _ = run.bind_dataset(None)
    pred_probs = load_npy(run.path("crossval", "pred_probs.npy"), what="pred_probs")
    labels, truth, files = run.training_labels(ds)
    files = [run.path("crossval", "pred_probs.npy"), *files]
    if len(labels) != len(pred_probs):
        raise CleanpipeError(f"{run.root}: crossval is stale ({len(pred_probs)} rows for {len(labels)} labels); re-run crossval")
    return PruneInputs(labels, pred_probs, truth, np.asarray(ds.ids_train), list(ds.class_names), files)


def _file_inputs(pred_probs_file: Path, labels_file: Path, true_labels_file: Path | None) -> PruneInputs:

    pred_probs = load_npy(Path(pred_probs_file), what="pred_probs")
    if pred_probs.ndim != 2:
        raise CleanpipeError(f"{pred_probs_file}: expected an N x K array of probabilities, got shape {pred_probs.shape}")
    n, k = pred_probs.shape
    labels = read_labels(Path(labels_file))  # its length is checked against pred_probs by validate_inputs
    truth = read_labels(Path(true_labels_file)) if true_labels_file else None
    if truth is not None and len(truth) != n:
        raise CleanpipeError(f"--true-labels {true_labels_file} has {len(truth):,} entries but pred_probs has {n:,} rows")
    if truth is not None and len(truth) and truth.max() >= k:
        raise CleanpipeError(f"--true-labels {true_labels_file}: label {truth.max()} is out of range for {k} classes")
    files = [Path(pred_probs_file), Path(labels_file)] + ([Path(true_labels_file)] if true_labels_file else [])
    # IDs are row numbers: kept as integers (a million of them as str would take 84 MB), written the same
    return PruneInputs(labels, pred_probs, truth, np.arange(n), [str(c) for c in range(k)], files)


REPORT_HEAD = 100  # rows of the report kept in memory as a DataFrame, for summaries


def build_report(inputs: PruneInputs, det: Detection, extra_columns: dict | None = None) -> dict[str, np.ndarray]:
    """The per-example table, worst first (the run directory's ``label_issues.csv``), as columns of arrays;
    INCV adds its sets."""
    names = inputs.class_names
    named = names != [str(c) for c in range(len(names))]
    cols = {"index": np.arange(len(inputs.labels)), "id": np.asarray(inputs.ids), "given_label": inputs.labels}
    if named:
        cols["given_class"] = np.asarray(names)[inputs.labels]
    cols["suggested_label"] = det.suggested_label
    if named:
        cols["suggested_class"] = np.asarray(names)[det.suggested_label]
    cols["label_quality"] = np.round(det.label_quality, 6)
    cols["is_label_issue"] = det.issue_mask
    if inputs.true_labels is not None:
        cols["true_label"] = inputs.true_labels
        if named:
            cols["true_class"] = np.asarray(names)[inputs.true_labels]
        cols["is_true_error"] = inputs.labels != inputs.true_labels
    cols.update(extra_columns or {})
    return {k: np.asarray(v)[det.order] for k, v in cols.items()}


def write_report_csv(columns: dict[str, np.ndarray], path: Path) -> None:
    """Write the report with pyarrow's CSV writer (a million rows in well under a second; pandas takes seconds)."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    table = pa.table({k: pa.array(v) for k, v in columns.items()})
    pa_csv.write_csv(table, str(path))


def run_prune_stage(
    run: RunDir,
    *,
    method: str = DEFAULT_METHOD,
    pred_probs_file: Path | None = None,
    labels_file: Path | None = None,
    true_labels_file: Path | None = None,
    frac_noise: float = 1.0,
    num_to_remove_per_class: list[int] | None = None,
    rank_by: str = DEFAULT_RANK_BY,
    incv: dict | None = None,
    progress=None,
) -> PruneStage:
    """Find label errors and write ``RUN/prune/``.

    Parameters
    ----------
    run : RunDir
    method : str
        ``prune_by_noise_rate_capped`` (the default: cleanlab's prune_by_noise_rate with each class's
        threshold at most one half, see :mod:`cleanpipe.detect.confident`), a cleanlab ``filter_by`` name,
        a paper alias (``cl-pbnr``, ``cl-pbc``, ``cl-both``, ``cj-only``, ``argmax``), or ``incv``.
    pred_probs_file, labels_file, true_labels_file : Path, optional
        The standalone form: out-of-sample probabilities (.npy, N x K) and labels from anywhere.
    frac_noise, num_to_remove_per_class, rank_by
        Passed to :func:`cleanpipe.detect.confident.find_issues`.
    incv : dict, optional
        INCV's options: ``iterations``, ``epochs``, ``model``, ``seed``, ``device``, ``pattern``
        (``auto``, ``symmetric`` or ``asymmetric``).
    """
    if method == "incv":
        if pred_probs_file is not None or labels_file is not None:
            raise CleanpipeError("--method incv trains its own models on the run's data; it has no standalone form")
        return _run_incv_stage(run, incv or {}, progress)
    canonical = canonical_method(method)  # unknown methods fail before anything is read
    if (pred_probs_file is None) != (labels_file is None):
        raise CleanpipeError("the standalone form needs both --pred-probs FILE and --labels FILE")
    if true_labels_file is not None and pred_probs_file is None:
        raise CleanpipeError("--true-labels belongs to the standalone form (with --pred-probs and --labels)")
    with run.transaction():
        if pred_probs_file is not None:
            inputs = _file_inputs(pred_probs_file, labels_file, true_labels_file)
        else:
            inputs = _run_inputs(run)
        inputs.labels, inputs.pred_probs, inputs.note = validate_inputs(inputs.labels, inputs.pred_probs)
        det = find_issues(
            inputs.labels, inputs.pred_probs, canonical, frac_noise=frac_noise,
            num_to_remove_per_class=num_to_remove_per_class, rank_by=rank_by,
        )
        parameters = {
            "method": canonical,
            "alias": method if method in ALIASES else None,
            "frac_noise": frac_noise,
            "num_to_remove_per_class": num_to_remove_per_class,
            "rank_by": rank_by,
            "standalone": pred_probs_file is not None,
            "renormalised": inputs.note,
        }
        return _write_prune(run, inputs, det, canonical, parameters)


def prune_metrics(inputs: PruneInputs, det: Detection, method: str) -> dict:
    """The manifest's metrics: counts and estimates, and with the truth the flags' and the ranking's quality."""
    K = inputs.pred_probs.shape[1]
    metrics = {
        "n_issues": int(det.issue_mask.sum()),
        "n": int(len(inputs.labels)),
        "issues_per_class": np.bincount(inputs.labels[det.issue_mask], minlength=K).tolist(),
        "estimated_noise_rate": round(det.estimated_noise_rate, 6),
        "estimated_noise_matrix": np.round(det.noise_matrix, 6).tolist(),
    }
    if method != "incv":  # INCV supplies its own (τ_sel)
        metrics["estimated_noise_rate_kept"] = round(remaining_noise_rate(
            len(inputs.labels), int(det.issue_mask.sum()), det.estimated_noise_rate), 6)
    if inputs.true_labels is not None:
        errors = inputs.labels != inputs.true_labels
        m = detection_metrics(det.issue_mask, errors)
        auroc = error_auroc(det.label_quality, errors)
        ap = error_average_precision(det.label_quality, errors)
        rk = recall_at_k(det.label_quality, errors)
        metrics.update({
            "true_noise_rate": round(float(errors.mean()), 6),
            "true_noise_rate_kept": round(float(errors[~det.issue_mask].mean()) if (~det.issue_mask).any() else 0.0, 6),
            "precision": round(m["precision"], 6),
            "recall": round(m["recall"], 6),
            "f1": round(m["f1"], 6),
            "auroc": None if auroc is None else round(auroc, 6),
            # the ranking by label_quality, whatever the threshold: k = the number of true errors
            "average_precision": None if ap is None else round(ap, 6),
            "recall_at_k": None if rk is None else round(rk, 6),
            "k": int(errors.sum()),
        })
    return metrics


def _write_prune(run: RunDir, inputs: PruneInputs, det: Detection, method: str, parameters: dict,
                 extra_columns: dict | None = None, extra_metrics: dict | None = None,
                 extra_arrays: dict | None = None) -> PruneStage:
    import pandas as pd

    # The metrics' temporaries are gone before the report's columns exist: at a million rows the two
    # together would add ~150 MB to prune's peak.
    metrics = {**prune_metrics(inputs, det, method), **(extra_metrics or {})}
    report = build_report(inputs, det, extra_columns)
    with run.write_stage("prune") as w:
        for p in inputs.input_files:
            w.record_input(p)
        w.save_npy("issue_mask.npy", det.issue_mask)
        w.save_npy("keep_mask.npy", ~det.issue_mask)
        write_report_csv(report, w.path("label_issues.csv"))
        for name, arrays in (extra_arrays or {}).items():
            np.savez(w.path(name), **arrays)
        manifest = w.finish(parameters=parameters, metrics=metrics)
    head = pd.DataFrame({k: v[:REPORT_HEAD] for k, v in report.items()})
    return PruneStage(det, inputs, method, manifest, head)


def _run_incv_stage(run: RunDir, opts: dict, progress) -> PruneStage:
    from cleanlab.count import estimate_py_and_noise_matrices_from_probabilities

    pattern = check_choice(opts.get("pattern", "auto"), "noise_pattern", ("auto", "symmetric", "asymmetric"))
    iterations = check_number(int(opts.get("iterations", 4)), "iterations", low=1)
    resolve_device(opts.get("device", "auto"))
    with run.transaction():
        spec, ds, _ = run.bind_dataset(None)
        labels, truth, files = run.training_labels(ds)
        kind = run.manifest("noise")["parameters"]["kind"] if truth is not None else None
        symmetric = pattern == "symmetric" or (pattern == "auto" and kind not in ("asymmetric", "pairflip"))
        settings = incv_settings(ds.input_shape, spec.source, opts.get("model", "auto"), epochs=opts.get("epochs"),
                                 seed=opts.get("seed", 0))
        result = incv_select(ds.X_train, labels, ds.n_classes, settings, iterations=iterations, symmetric=symmetric,
                             device=opts.get("device", "auto"), true_labels=truth, progress=progress)
        probs = result.probs
        quality = probs[np.arange(len(labels)), labels].astype(np.float64)
        issue = ~result.select
        _, noise_matrix, _, _ = estimate_py_and_noise_matrices_from_probabilities(labels, probs)
        det = Detection(
            issue_mask=issue, label_quality=quality, suggested_label=probs.argmax(1).astype(np.int64),
            order=worst_first(issue, quality),
            noise_matrix=np.asarray(noise_matrix, dtype=np.float64), estimated_noise_rate=result.eval_ratio,
        )
        inputs = PruneInputs(labels, probs, truth, np.asarray(ds.ids_train), list(ds.class_names), files)
        extra_cols = {"select": result.select, "candidate": result.candidate, "discarded": result.discarded,
                      "eval_ratio": np.full(len(labels), round(result.eval_ratio, 6))}
        extra_metrics = {"eval_ratio": result.eval_ratio, "iterations": result.iterations,
                         "estimated_noise_rate_kept": round(incv_forget_rate(result.eval_ratio, ds.n_classes, symmetric), 6),
                         "n_selected": int(result.select.sum()), "n_candidates": int(result.candidate.sum()),
                         "n_discarded": int(result.discarded.sum())}
        if truth is not None and result.select.any():
            clean = labels == truth
            extra_metrics["label_precision"] = round(float(clean[result.select].mean()), 6)
            extra_metrics["label_recall"] = round(float(clean[result.select].sum() / max(clean.sum(), 1)), 6)
        parameters = {"method": "incv", "iterations": iterations, "symmetric": symmetric, **{
            k: v for k, v in settings.__dict__.items() if k in ("model", "epochs", "batch_size", "lr", "seed")}}
        # The sets for training (INCV's Co-teaching) in a machine file; label_issues.csv is for people.
        sets = {"incv_sets.npz": {"select": result.select, "candidate": result.candidate, "discarded": result.discarded}}
        return _write_prune(run, inputs, det, "incv", parameters, extra_cols, extra_metrics, sets)
