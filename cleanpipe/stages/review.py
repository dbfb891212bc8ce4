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

from cleanpipe.errors import CleanpipeError
from cleanpipe.rundir import RunDir

PAGE_SIZE = 48  # cards per page: the page stays quick with thousands of examples
THUMB_SIDE = 128  # larger images are shrunk to this side; smaller ones are shown enlarged, pixel for pixel
MAX_FEATURES = 64  # table rows show at most this many feature values


@dataclass
class ReviewStage:
    manifest: dict
    html_path: Path
    n_flagged: int
    n_also: int


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
              feature_names: list[str] | None = None, pixelated: bool = False) -> str:
    """The review page for ``items`` (dicts: ``id``, ``i``, ``given``, ``suggested``, ``quality``, ``flagged``,
    and ``thumb`` (a data URI) or ``features`` (numbers)); ``key`` names its decisions in ``localStorage``."""
    data = {"classes": [str(c) for c in class_names], "items": items, "key": key, "n_flagged": n_flagged,
            "page_size": PAGE_SIZE, "feature_names": feature_names or [], "pixelated": pixelated}
    # Inside <script>, "</script" or "<!--" in an ID or class name would end or derail the element;
    # JSON's \u escapes keep every <, > and & out of the markup.
    payload = (json.dumps(data, separators=(",", ":"), allow_nan=False)
               .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))
    template = resources.files("cleanpipe.stages").joinpath("review_page.html").read_text(encoding="utf-8")
    return template.replace("__TITLE__", html.escape(title)).replace("__DATA__", payload)


def run_review_stage(run: RunDir, *, also: int = 0) -> ReviewStage:
    """Write ``RUN/review/review.html`` for the prune stage's flagged examples (and ``also`` more)."""
    import pandas as pd

    if also < 0:
        raise CleanpipeError(f"--also must be at least 0, got {also}")
    with run.transaction():
        prune_man = run.require("prune", hint=f"cleanpipe prune {run.root}")
        if prune_man["parameters"].get("standalone") or run.dataset_json() is None:
            raise CleanpipeError(f"{run.root}: review needs a run with its own dataset (made by crossval or run), "
                                 "not a prune of loose files")
        spec, ds, _ = run.bind_dataset(None)
        report_path = run.path("prune", "label_issues.csv")
        report = pd.read_csv(report_path, dtype={"id": str})
        if len(report) != len(ds.y_train):
            raise CleanpipeError(f"{run.root}: the prune stage is stale; re-run `cleanpipe prune {run.root}`")
        flagged, rest = review_items(report, also=also)
        chosen = pd.concat([flagged, rest])
        rows = chosen["index"].to_numpy(np.int64)
        ids = np.asarray(ds.ids_train).astype(str)  # not the CSV's text, where pandas would read "NA" as missing
        items = [{"id": ids[int(r.index)], "i": int(r.index), "given": int(r.given_label), "suggested": int(r.suggested_label),
                  "quality": float(r.label_quality), "flagged": bool(r.is_label_issue)}
                 for r in chosen.itertuples(index=False)]
        feature_names, pixelated = None, False
        if ds.is_image:
            if spec.source == "folder":
                thumbs = file_thumbnails([Path(spec.path) / ds.ids_train[r] for r in rows])
            else:
                thumbs = image_thumbnails(ds.X_train[rows])
                pixelated = max(ds.input_shape[1:]) <= THUMB_SIDE
            for item, thumb in zip(items, thumbs):
                item["thumb"] = thumb
        else:
            names = ds.meta.get("feature_names") or [f"x{j}" for j in range(ds.input_shape[0])]
            feature_names = list(names[:MAX_FEATURES])
            for item, r in zip(items, rows):
                item["features"] = [float(f"{v:.6g}") for v in ds.X_train[r, :MAX_FEATURES].tolist()]
        # Decisions are about examples and the labels shown: the same data and labels find them again,
        # after a new prune, a new page or a moved run folder.
        labels, _, _ = run.training_labels(ds)
        key = hashlib.sha256(ds.fingerprint().encode() + np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest()[:16]
        page = page_html(items, ds.class_names, title=run.root.name, key=key, n_flagged=len(flagged),
                         feature_names=feature_names, pixelated=pixelated)
        with run.write_stage("review") as w:
            w.record_input(report_path)
            w.path("review.html").write_text(page, encoding="utf-8")
            manifest = w.finish(parameters={"also": also}, metrics={"n_flagged": len(flagged), "n_also": len(rest),
                                                                    "page_bytes": len(page.encode())})
    return ReviewStage(manifest, run.path("review", "review.html"), len(flagged), len(rest))
