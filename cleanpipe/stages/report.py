"""The report: PNG plots and one self-contained HTML page (``RUN/report/``) of what the stages found.

Plots (each written only when its inputs exist): the true and the estimated noise matrix, issues
per class, the label-quality histogram split by true error, the training curves, and a grid of
the most suspicious images with their given / suggested (/ true) labels. ``report.html`` inlines
every plot as a data URI, so it opens offline, alone, anywhere.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cleanpipe.errors import CleanpipeError
from cleanpipe.files import load_npy
from cleanpipe.plots import (
    plot_issues_per_class,
    plot_noise_matrices,
    plot_quality_histogram,
    plot_suspicious_grid,
    plot_training_curves,
)
from cleanpipe.rundir import RunDir


@dataclass
class ReportStage:
    manifest: dict
    plots: list[str]
    html_path: Path


def run_report_stage(run: RunDir, *, top: int = 32) -> ReportStage:
    """Write ``RUN/report/``: the plots of whatever stages the run has, and ``report.html``."""
    import pandas as pd

    if not run.has("prune"):
        raise CleanpipeError(f"{run.root}: no prune stage yet; run `cleanpipe prune {run.root}` (or `cleanpipe run {run.root}`) first")
    with run.transaction():
        prune_man = run.require("prune")
        report = pd.read_csv(run.path("prune", "label_issues.csv"))
        ds = None
        if run.dataset_json() is not None:
            _, ds, _ = run.bind_dataset(None)
        by_index = report.sort_values("index")
        given = by_index["given_label"].to_numpy(np.int64)
        issue = by_index["is_label_issue"].to_numpy(bool)
        quality = by_index["label_quality"].to_numpy(float)
        true_error = by_index["is_true_error"].to_numpy(bool) if "is_true_error" in by_index else None
        K = len(prune_man["metrics"]["issues_per_class"])
        names = list(ds.class_names) if ds is not None else [str(k) for k in range(K)]
        inputs = [run.path("prune", "label_issues.csv")]
        true_matrix = None
        if run.has("noise"):
            run.require("noise")
            true_matrix = load_npy(run.path("noise", "noise_matrix.npy"), what="noise matrix")
            inputs.append(run.path("noise", "noise_matrix.npy"))
        history = None
        if run.has("train"):
            train_man = run.require("train")
            history = pd.read_csv(run.path("train", "history.csv"))
            inputs.append(run.path("train", "history.csv"))
        plots: list[tuple[str, str]] = []
        with run.write_stage("report") as w:
            for p in inputs:
                w.record_input(p)
            estimated = np.asarray(prune_man["metrics"]["estimated_noise_matrix"])
            plot_noise_matrices(true_matrix, estimated, names, w.path("noise_matrix.png"))
            plots.append(("noise_matrix.png", "Noise matrix: P(given label | true class), true and estimated"))
            plot_issues_per_class(given, issue, true_error, names, w.path("issues_per_class.png"))
            plots.append(("issues_per_class.png", "Label issues per class"))
            plot_quality_histogram(quality, true_error, w.path("label_quality.png"))
            plots.append(("label_quality.png", "Label quality"))
            if history is not None:
                plot_training_curves(history, w.path("training_curves.png"))
                plots.append(("training_curves.png", f"Training ({train_man['parameters']['method']})"))
            if ds is not None and ds.X_train.ndim == 4 and top > 0:
                worst = report.head(top)
                rows = worst["index"].to_numpy(np.int64)
                caps, cols = [], []
                for r in worst.itertuples(index=False):
                    cap = f"{names[r.given_label][:8]} → {names[r.suggested_label][:8]}"
                    if "true_label" in worst:
                        cap += f"\n(true {names[r.true_label][:8]})"
                        cols.append("tab:red" if r.is_true_error else "tab:green")
                    else:
                        cols.append("black")
                    caps.append(cap)
                plot_suspicious_grid(ds.X_train[rows], caps, cols, w.path("suspicious.png"))
                plots.append(("suspicious.png", f"The {len(rows)} most suspicious labels: given → suggested"
                              + (" (true; red = the given label is wrong)" if "true_label" in worst else "")))
            audit_man = run.require("audit") if run.has("audit") else None
            if audit_man is not None:
                w.record_input(run.path("audit", "issues.csv"))
            page = _html(run, prune_man, run.manifest("train"), plots, w.dir, report.head(20), names, audit_man)
            w.path("report.html").write_text(page, encoding="utf-8")
            manifest = w.finish(parameters={"top": top}, metrics={"plots": [p for p, _ in plots]})
    return ReportStage(manifest, [p for p, _ in plots], run.path("report", "report.html"))


def _html(run: RunDir, prune_man: dict, train_man: dict | None, plots, folder: Path, worst, names, audit_man: dict | None = None) -> str:
    esc = html.escape
    m = prune_man["metrics"]
    facts = [("labels checked", f"{m['n']:,}"), ("flagged as label issues", f"{m['n_issues']:,} ({m['n_issues'] / max(m['n'], 1):.1%})"),
             ("method", prune_man["parameters"].get("method", "")),
             ("estimated noise rate", f"{m['estimated_noise_rate']:.1%}")]
    if "precision" in m:
        facts += [("true noise rate", f"{m['true_noise_rate']:.1%}"),
                  ("precision / recall / F1", f"{m['precision']:.3f} / {m['recall']:.3f} / {m['f1']:.3f}")]
    if audit_man is not None:  # the audit's counts (audit/issues.csv lists the rows)
        a = audit_man["metrics"]
        facts += [("audit: exact / near duplicates", f"{a['n_exact_duplicate']:,} / {a['n_near_duplicate']:,}"),
                  ("audit: outliers", f"{a['n_outlier']:,}"),
                  ("audit: test rows copying training rows", f"{a['n_test_leak']:,}" if audit_man["parameters"]["leak_check"]
                   else "not checked (no test features)"),
                  ("audit: duplicates or leaks under another label", f"{a['n_labels_differ']:,}")]
    if train_man is not None:
        t = train_man["metrics"]
        facts += [("training", f"{train_man['parameters']['method']} on {t['n_train']:,} examples"),
                  ("test accuracy", f"{t['test_accuracy']:.2%} on {t['n_test']:,} examples" if t["n_test"]
                   else "not measured (no test split: --test-fraction 0)")]
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in facts)
    figures = "".join(
        f'<figure><img alt="{esc(cap)}" src="data:image/png;base64,{base64.b64encode((folder / name).read_bytes()).decode()}">'
        f"<figcaption>{esc(cap)}</figcaption></figure>"
        for name, cap in plots
    )
    cols = [c for c in ("id", "given_label", "suggested_label", "label_quality", "true_label") if c in worst]
    head = "".join(f"<th>{esc(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(
            f"<td>{esc(names[int(v)] if c.endswith('_label') else (f'{v:.3f}' if c == 'label_quality' else str(v)))}</td>"
            for c, v in zip(cols, r)) + "</tr>"
        for r in worst[cols].itertuples(index=False)
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cleanpipe report: {esc(run.root.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; }} th, td {{ padding: .25rem .75rem; border-bottom: 1px solid #ddd; text-align: left; }}
figure {{ margin: 1.5rem 0; }} img {{ max-width: 100%; }} figcaption {{ color: #555; font-size: .9rem; }}
</style></head><body>
<h1>cleanpipe report: {esc(run.root.name)}</h1>
<table>{rows}</table>
{figures}
<h2>The 20 most suspicious labels</h2>
<table><tr>{head}</tr>{body}</table>
<p>Every example, worst first: <code>prune/label_issues.csv</code> in the run directory.</p>
</body></html>
"""
