"""The review page: one self-contained HTML file for deciding on the flagged examples (``RUN/review/``).

``review.html`` opens from disk with no server, network or CDN: the examples (worst first), their
thumbnails as data URIs (or a table row's feature values) and the page's script are all inline.
Decisions live in the browser's ``localStorage`` (keyed by the run and its prune stage, so a closed
tab loses nothing) until the export button downloads ``corrections.csv`` (``id,decision,label``),
which ``cleanpipe apply`` turns into a label file.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from cleanpipe.audit.neighbours import normalised
from cleanpipe.errors import CleanpipeError
from cleanpipe.files import load_npy
from cleanpipe.rundir import RunDir
from cleanpipe.stages.audit import read_audit

PAGE_SIZE = 48  # cards per page: the page stays quick with thousands of examples
THUMB_SIDE = 128  # larger images are shrunk to this side; smaller ones are shown enlarged, pixel for pixel
MAX_FEATURES = 64  # table rows show at most this many feature values
NEIGHBOURS_SHOWN = 3  # an outlier's card shows this many nearest examples of its given class


@dataclass
class ReviewStage:
    manifest: dict
    html_path: Path
    n_flagged: int
    n_also: int
    n_audit: int = 0  # examples with audit findings


def image_thumbnails(images: np.ndarray, *, side: int = THUMB_SIDE) -> list[str]:
    """Data URIs of uint8 images (N, C, H, W): PNG up to ``side`` pixels, else a JPEG shrunk to it.

    Small images (digits, CIFAR) stay lossless at their own size and are enlarged by the page;
    photographs are shrunk so that 5,000 of them still make a page of tens of MB, not hundreds.
    """
    from PIL import Image

    out = []
    for im in images:
        # one channel: grey; three: RGB; others (an npz may hold 2, 4, ...): the first channel, or the first three
        arr = im[0] if im.shape[0] < 3 else np.moveaxis(im[:3], 0, -1)
        pic = Image.fromarray(np.ascontiguousarray(arr))
        out.append(_encode(pic, side))
    return out


def file_thumbnails(paths: list[Path], *, side: int = THUMB_SIDE) -> list[str]:
    """Data URIs of image files at up to ``side`` pixels: the originals, sharper than the resized training copies."""
    from PIL import Image

    out = []
    for p in paths:
        with Image.open(p) as pic:
            pic = pic.convert("L" if pic.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB")
            out.append(_encode(pic, side))
    return out


def _encode(pic, side: int) -> str:
    buf = io.BytesIO()
    if max(pic.size) <= side:
        pic.save(buf, format="PNG", optimize=False)
        mime = "png"
    else:
        pic = pic.copy()
        pic.thumbnail((side, side))
        pic.save(buf, format="JPEG", quality=88)
        mime = "jpeg"
    return f"data:image/{mime};base64,{base64.b64encode(buf.getvalue()).decode()}"


def review_items(report, *, also: int = 0) -> "object":
    """The rows to review: every flagged example, then the ``also`` next-worst unflagged ones, worst first.

    Parameters
    ----------
    report : pandas.DataFrame
        The prune stage's ``label_issues.csv`` (columns ``index``, ``id``, ``given_label``,
        ``suggested_label``, ``label_quality``, ``is_label_issue``), in any order.
    also : int
        How many unflagged examples of the lowest label quality to add.
    """
    by_quality = report.sort_values(["label_quality", "index"], kind="stable")
    flagged = by_quality[by_quality["is_label_issue"].astype(bool)]
    rest = by_quality[~by_quality["is_label_issue"].astype(bool)].head(also)
    return flagged, rest


def page_html(items: list[dict], class_names: list[str], *, title: str, key: str, n_flagged: int,
              feature_names: list[str] | None = None, pixelated: bool = False, n_audit: int = 0) -> str:
    """The review page for ``items`` (dicts: ``id``, ``i``, ``given``, ``suggested``, ``quality`` (None for an
    example only the audit found), ``flagged``, ``thumb`` (a data URI) or ``features`` (numbers), and optionally
    ``audit``: its findings, each ``issue``, ``score``, ``other_id``, ``other_split``, ``other_label``,
    ``labels_differ``, ``other_thumb``, ``neighbours``); ``key`` names its decisions in ``localStorage``."""
    data = {"classes": [str(c) for c in class_names], "items": items, "key": key, "n_flagged": n_flagged, "n_audit": n_audit,
            "page_size": PAGE_SIZE, "feature_names": feature_names or [], "pixelated": pixelated}
    # Inside <script>, "</script" or "<!--" in an ID or class name would end or derail the element;
    # JSON's \u escapes keep every <, > and & out of the markup.
    payload = (json.dumps(data, separators=(",", ":"), allow_nan=False)
               .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))
    template = resources.files("cleanpipe.stages").joinpath("review_page.html").read_text(encoding="utf-8")
    return template.replace("__TITLE__", html.escape(title)).replace("__DATA__", payload)


def _thumbs(spec, ds, rows: np.ndarray, split: str = "train") -> list[str] | None:
    """Data URIs of the training (or test) rows ``rows``; None for tables."""
    if not ds.is_image:
        return None
    X, ids = (ds.X_train, ds.ids_train) if split == "train" else (ds.X_test, ds.ids_test)
    if spec.source == "folder" and split == "train":
        return file_thumbnails([Path(spec.path) / ids[r] for r in rows])
    return image_thumbnails(X[rows])


def _in_class_neighbours(features: np.ndarray, labels: np.ndarray, rows: np.ndarray, n: int = NEIGHBOURS_SHOWN) -> list[np.ndarray]:
    """For each row, the ``n`` training rows of its given class nearest to it in the audit's feature space."""
    unit = normalised(features)
    out = []
    for r in rows:
        same = np.flatnonzero(labels == labels[r])
        same = same[same != r]
        sim = unit[same] @ unit[r]
        out.append(same[np.argsort(-sim, kind="stable")[:n]])
    return out


def audit_findings(spec, ds, labels: np.ndarray, table, features: np.ndarray | None) -> dict[int, list[dict]]:
    """The audit's findings per training row, for the review cards.

    A duplicate's card shows its partner; a test leak is decided on the training copy (excluding it keeps the
    test split honest), so it goes on that row's card with the test image as its partner; an outlier shows the
    nearest training examples of its given class.
    """
    found: dict[int, list[dict]] = {}
    if table is None or not len(table):
        return found
    is_leak = (table["issue"] == "test_leak").to_numpy()
    rows = np.where(is_leak, table["other_index"].to_numpy(), table["index"].to_numpy()).astype(np.int64)
    partner = np.where(is_leak, table["index"].to_numpy(), table["other_index"].to_numpy()).astype(np.int64)
    paired = partner >= 0
    train_p, test_p = paired & ~is_leak, paired & is_leak
    thumbs = np.full(len(table), None, dtype=object)
    for mask, split in ((train_p, "train"), (test_p, "test")):
        got = _thumbs(spec, ds, partner[mask], split) if mask.any() else None
        if got is not None:
            thumbs[mask] = got
    outlier_rows = np.flatnonzero(table["issue"].to_numpy() == "outlier")
    neighbours = (_in_class_neighbours(features[: len(labels)], labels, rows[outlier_rows])
                  if features is not None and len(outlier_rows) else [])
    near_thumbs = {}
    for k, near in zip(outlier_rows, neighbours):
        near_thumbs[k] = [{"id": str(ds.ids_train[j]), "thumb": t} for j, t in zip(near, _thumbs(spec, ds, near) or [None] * len(near))]
    test_labels = ds.y_test
    for k, r in enumerate(table.itertuples(index=False)):
        other_label = int(test_labels[partner[k]]) if is_leak[k] else (int(labels[partner[k]]) if partner[k] >= 0 else -1)
        finding = {"issue": r.issue, "score": float(r.score), "other_id": str(r.id if is_leak[k] else r.other_id) if partner[k] >= 0 else "",
                   "other_split": "test" if is_leak[k] else "train", "other_label": other_label,
                   "labels_differ": bool(other_label >= 0 and other_label != labels[rows[k]])}
        if thumbs[k] is not None:
            finding["other_thumb"] = thumbs[k]
        if k in near_thumbs:
            finding["neighbours"] = near_thumbs[k]
        found.setdefault(int(rows[k]), []).append(finding)
    return found


def _prune_report(run: RunDir, ds):
    """The prune stage's ``label_issues.csv`` (checked current) and its path."""
    import pandas as pd

    prune_man = run.require("prune", hint=f"cleanpipe prune {run.root}")
    if prune_man["parameters"].get("standalone"):
        raise CleanpipeError(f"{run.root}: review needs a run with its own dataset (made by crossval or run), "
                             "not a prune of loose files")
    report_path = run.path("prune", "label_issues.csv")
    report = pd.read_csv(report_path, dtype={"id": str})
    if len(report) != len(ds.y_train):
        raise CleanpipeError(f"{run.root}: the prune stage is stale; re-run `cleanpipe prune {run.root}`")
    return report, report_path


def run_review_stage(run: RunDir, *, also: int = 0) -> ReviewStage:
    """Write ``RUN/review/review.html`` for the prune stage's flagged examples (and ``also`` more) and the audit's
    findings (duplicates, outliers, training rows copied into the test split)."""
    import pandas as pd

    if also < 0:
        raise CleanpipeError(f"--also must be at least 0, got {also}")
    with run.transaction():
        if not run.has("prune") and not run.has("audit"):
            run.require("prune", hint=f"cleanpipe prune {run.root}` or `cleanpipe audit {run.root}")
        if run.dataset_json() is None:
            raise CleanpipeError(f"{run.root}: review needs a run with its own dataset (made by crossval or run), "
                                 "not a prune of loose files")
        spec, ds, _ = run.bind_dataset(None)
        labels, _, _ = run.training_labels(ds)
        inputs: list[Path] = []
        ids = np.asarray(ds.ids_train).astype(str)  # not the CSV's text, where pandas would read "NA" as missing
        items: list[dict] = []
        n_flagged = n_also = 0
        if run.has("prune"):
            report, report_path = _prune_report(run, ds)
            inputs.append(report_path)
            flagged, rest = review_items(report, also=also)
            n_flagged, n_also = len(flagged), len(rest)
            items = [{"id": ids[int(r.index)], "i": int(r.index), "given": int(r.given_label), "suggested": int(r.suggested_label),
                      "quality": float(r.label_quality), "flagged": bool(r.is_label_issue)}
                     for r in pd.concat([flagged, rest]).itertuples(index=False)]
        table = read_audit(run, len(ds.y_train))
        n_audit = 0
        if table is not None:
            inputs.append(run.path("audit", "issues.csv"))
            features = load_npy(run.path("audit", "features.npy"), what="audit features")
            findings = audit_findings(spec, ds, labels, table, features)
            by_row = {it["i"]: it for it in items}
            for row in sorted(findings):
                item = by_row.get(row)
                if item is None:  # an example only the audit found: its suggestion is a differing partner's label
                    differ = [f for f in findings[row] if f["labels_differ"] and f["other_split"] == "train"]
                    item = {"id": ids[row], "i": row, "given": int(labels[row]),
                            "suggested": differ[0]["other_label"] if differ else int(labels[row]), "quality": None, "flagged": False}
                    items.append(item)
                item["audit"] = findings[row]
            n_audit = len(findings)
        _attach_views(spec, ds, items)
        # Decisions are about examples and the labels shown: the same data and labels find them again,
        # after a new prune, a new page or a moved run folder.
        key = hashlib.sha256(ds.fingerprint().encode() + np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest()[:16]
        page = page_html(items, ds.class_names, title=run.root.name, key=key, n_flagged=n_flagged,
                         feature_names=_feature_names(ds), pixelated=ds.is_image and spec.source != "folder"
                         and max(ds.input_shape[1:]) <= THUMB_SIDE, n_audit=n_audit)
        with run.write_stage("review") as w:
            for p in inputs:
                w.record_input(p)
            w.path("review.html").write_text(page, encoding="utf-8")
            manifest = w.finish(parameters={"also": also}, metrics={"n_flagged": n_flagged, "n_also": n_also,
                                                                    "n_audit": n_audit, "page_bytes": len(page.encode())})
    return ReviewStage(manifest, run.path("review", "review.html"), n_flagged, n_also, n_audit)


def _feature_names(ds) -> list[str] | None:
    if ds.is_image:
        return None
    names = ds.meta.get("feature_names") or [f"x{j}" for j in range(ds.input_shape[0])]
    return list(names[:MAX_FEATURES])


def _attach_views(spec, ds, items: list[dict]) -> None:
    """Each item's thumbnail (images) or feature values (tables)."""
    rows = np.array([it["i"] for it in items], dtype=np.int64)
    if ds.is_image:
        for item, thumb in zip(items, _thumbs(spec, ds, rows) if len(rows) else []):
            item["thumb"] = thumb
    else:
        for item, r in zip(items, rows):
            item["features"] = [float(f"{v:.6g}") for v in ds.X_train[r, :MAX_FEATURES].tolist()]
