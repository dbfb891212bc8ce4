"""Same inputs and seed, same artifacts: compare this tree's outputs with another commit's, byte for byte.

    python pipelines/same_bytes.py --base REF [--work DIR] [--cases demo digits table mnist colour]

Runs the same CLI commands (with ``--threads 1`` and one OpenMP thread) twice on this machine: once with
the package of commit REF (checked out with ``git worktree`` into ``DIR/base-src``, imported ahead of the
installed one through ``PYTHONPATH``) and once with this tree. Then it compares, run by run:

- every ``.npy`` (noisy labels, noise matrix, ``pred_probs``, folds, issue and keep masks, theory's
  matrices) and every array of every ``.npz``, bytes and dtype;
- every ``model.pt`` state dict tensor for tensor (``torch.equal``), and its other entries;
- every CSV (``label_issues.csv``, ``history.csv`` without its ``seconds`` column, ``relabel.csv``,
  ``example_weights.csv``, ``probe.csv``, ...) cell for cell;
- every manifest's ``parameters`` and its ``metrics`` without wall times, seconds and speeds.

The base outputs are kept in ``DIR/base`` and reused while REF stays the same (delete it to redo them);
this tree's go to ``DIR/head`` afresh each time. Exit status 0 when everything matches, 1 otherwise.
Cases: ``demo`` (``cleanpipe run``), ``digits`` (every training method, INCV and the theory check at
their defaults), ``table`` (scikit-learn's wine data as a CSV), ``mnist`` (``../shared/data/mnist-test``,
one or two epochs), ``colour`` (a seeded folder of 32x32 colour images, where flips and colour recipes apply).
Each image and table case also writes the review page (``review.html`` compared byte for byte after
removing any timestamp), applies corrections made from its prune report (the label file ``apply`` writes
is copied into the run to be compared) and predicts new data with a trained model.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MNIST = REPO.parent / "shared" / "data" / "mnist-test"
TRAIN = ["--threads", "1", "--device", "cpu"]
METHODS = ["standard", "coteaching", "coteaching-plus", "l2r", "ieg", "noisy-student"]
VOLATILE = ("seconds", "second", "wall", "per_s", "created", "examples_per_second")
# Manifest parameters renamed on purpose (old name -> new name); their values must still match.
RENAMED = {"unl_weight": "unlabeled_weight"}
# model.pt changed on purpose (issue 25): it records its network's builder arguments ("architecture"), as
# format 2. The added entry must be what the format-1 file implies; every other entry must match.
MODEL_FORMATS = {"cleanpipe-model-1": "cleanpipe-model-2"}
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?([+-]\d\d:\d\d|Z)?")


def _after_prune(tmp: Path, case: str, also: int, apply: bool = True) -> list[list[str]]:
    """The review page, then (``apply``) corrections made from the prune report, applied, the label file kept."""
    out = [["review", "@RUN", "--also", str(also)]]
    if apply:
        corrections, fixed = tmp / f"corrections-{case}.csv", tmp / f"fixed-{case}.csv"
        out += [["corrections", "@RUN", str(corrections)],
                ["apply", "@RUN", str(corrections), "--out", str(fixed)], ["keep", str(fixed), "apply-labels.csv"]]
    return out


def _cases(tmp: Path) -> dict[str, list[list[str]]]:
    """Each case: a list of commands (``@RUN`` is the case's run directory; ``save NAME`` copies train/ aside)."""
    wine = tmp / "wine.csv"
    colour = tmp / "colour"
    digits = [["noise", "@RUN", "--dataset", "digits", "--kind", "symmetric", "--rate", "0.4", "--seed", "0"],
              ["crossval", "@RUN", *TRAIN], ["prune", "@RUN", "--top", "0"], *_after_prune(tmp, "digits", 5)]
    for m in METHODS:
        digits += [["train", "@RUN", "--method", m, *TRAIN], ["save", f"train-{m}"]]
        if m == "standard":
            digits += [["predict", "@RUN", "--data", str(tmp / "digits-new.npz"), "--probs", "--device", "cpu"]]
    digits += [["train", "@RUN", "--method", "standard", "--subset", "all", *TRAIN], ["save", "train-standard-all"],
               ["train", "@RUN", "--method", "coteaching", "--subset", "all", "--selection", "batch", *TRAIN],
               ["save", "train-coteaching-all-batch"],
               ["theory", "@RUN", *TRAIN],
               ["prune", "@RUN", "--method", "incv", "--device", "cpu", "--top", "0"],
               ["train", "@RUN", "--method", "incv-coteaching", *TRAIN], ["save", "train-incv-coteaching"]]
    table = [["noise", "@RUN", "--dataset", "table", "--data", str(wine), "--kind", "symmetric", "--rate", "0.3"],
             ["crossval", "@RUN", "--folds", "3", *TRAIN], ["prune", "@RUN", "--top", "0"], *_after_prune(tmp, "table", 3)]
    for m in ("standard", "coteaching-plus", "ieg", "noisy-student"):
        table += [["train", "@RUN", "--method", m, *TRAIN], ["save", f"train-{m}"]]
        if m == "standard":
            table += [["predict", "@RUN", "--data", str(tmp / "wine-new.csv"), "--probs", "--device", "cpu"]]
    mnist = [["noise", "@RUN", "--dataset", "mnist", "--data", str(MNIST), "--kind", "pairflip", "--rate", "0.45"],
             ["crossval", "@RUN", "--epochs", "1", *TRAIN], ["prune", "@RUN", "--top", "0"],
             *_after_prune(tmp, "mnist", 4, apply=False)]
    for m in ("standard", "coteaching", "ieg", "noisy-student"):
        mnist += [["train", "@RUN", "--method", m, "--epochs", "1", "--iterations", "1", *TRAIN]
                  if m == "noisy-student" else ["train", "@RUN", "--method", m, "--epochs", "1", *TRAIN],
                  ["save", f"train-{m}"]]
    col = [["noise", "@RUN", "--dataset", "folder", "--data", str(colour), "--kind", "symmetric", "--rate", "0.3"],
           ["crossval", "@RUN", "--folds", "2", "--epochs", "1", *TRAIN], ["prune", "@RUN", "--top", "0"],
           *_after_prune(tmp, "colour", 4)]
    for m, extra in (("coteaching-plus", ["--epochs", "10"]), ("ieg", ["--epochs", "2", "--probe-per-class", "2"]),
                     ("noisy-student", ["--epochs", "2", "--iterations", "1"])):
        col += [["train", "@RUN", "--method", m, *extra, *TRAIN], ["save", f"train-{m}"]]
        if m == "coteaching-plus":
            col += [["predict", "@RUN", "--data", str(colour), "--device", "cpu"]]
    return {"demo": [["run", "@RUN", "--threads", "1", "--device", "cpu"]], "digits": digits, "table": table,
            "mnist": mnist, "colour": col}


def _make_inputs(tmp: Path) -> None:
    from PIL import Image
    from sklearn.datasets import load_wine

    X, y = load_wine(return_X_y=True, as_frame=True)
    X.assign(label=y).to_csv(tmp / "wine.csv", index=False)
    X.iloc[::9].to_csv(tmp / "wine-new.csv", index=False)  # new rows for predict: the feature columns only
    rng = np.random.default_rng(0)
    np.savez(tmp / "digits-new.npz", X=rng.integers(0, 256, (12, 1, 8, 8), dtype=np.uint8))
    for c in range(3):  # 3 classes x 24 images, each class a different mean colour
        d = tmp / "colour" / f"class{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(24):
            base = np.zeros((32, 32, 3)) + 60 + 60 * np.eye(3)[c] * 2
            img = np.clip(base + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{i:03d}.png")


def _run_cases(src: Path | None, out: Path, cases: list[str], tmp: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if src is not None:
        env["PYTHONPATH"] = str(src) + os.pathsep + env.get("PYTHONPATH", "")
    else:
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    # Run from the work folder: a command started in a checkout would import that checkout's package first.
    where = subprocess.run([sys.executable, "-c", "import cleanpipe; print(cleanpipe.__file__)"], env=env, cwd=tmp,
                           capture_output=True, text=True, check=True).stdout.strip()
    print(f"  package: {where}", file=sys.stderr)
    for name in cases:
        run = out / name
        shutil.rmtree(run, ignore_errors=True)
        t0 = time.perf_counter()
        for cmd in _cases(tmp)[name]:
            if cmd[0] == "save":
                shutil.copytree(run / "train", run / cmd[1], dirs_exist_ok=True)
                continue
            if cmd[0] == "keep":  # a file written outside the run, copied in to be compared
                shutil.copyfile(cmd[1], run / cmd[2])
                continue
            if cmd[0] == "corrections":
                _write_corrections(run, Path(cmd[2]))
                continue
            args = [str(run) if a == "@RUN" else a for a in cmd]
            proc = subprocess.run([sys.executable, "-m", "cleanpipe", *args], env=env, cwd=tmp, capture_output=True,
                                  text=True)
            if proc.returncode != 0:
                sys.exit(f"failed ({where}): cleanpipe {' '.join(args)}\n{proc.stderr[-3000:]}")
        print(f"  {name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)


def _write_corrections(run: Path, path: Path) -> None:
    """A reviewer's decisions from the prune report: the worst two relabelled as suggested, the next excluded,
    the next kept, one skipped (every decision the page can export)."""
    import pandas as pd

    report = pd.read_csv(run / "prune" / "label_issues.csv", dtype={"id": str})
    names = json.loads((run / "dataset.json").read_text())["class_names"]
    rows = []
    for k, r in enumerate(report.head(5).itertuples(index=False)):
        decision = ("relabel", "relabel", "exclude", "keep", "skip")[k]
        label = names[r.suggested_label] if decision == "relabel" else names[r.given_label] if decision == "keep" else ""
        rows.append({"id": r.id, "decision": decision, "label": label})
    pd.DataFrame(rows, columns=["id", "decision", "label"]).to_csv(path, index=False)


def _strip(d, volatile=VOLATILE):
    if isinstance(d, dict):
        return {k: _strip(v) for k, v in d.items() if not any(s in k for s in volatile)}
    if isinstance(d, list):
        return [_strip(v) for v in d]
    return d


def _compare_file(a: Path, b: Path) -> str | None:
    import pandas as pd
    import torch

    if a.suffix == ".npy":
        x, y = np.load(a, allow_pickle=False), np.load(b, allow_pickle=False)
        same = x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
        return None if same else f"{x.dtype}{x.shape} vs {y.dtype}{y.shape}, max |diff| {_maxdiff(x, y)}"
    if a.suffix == ".npz":
        with np.load(a, allow_pickle=False) as x, np.load(b, allow_pickle=False) as y:
            if sorted(x.files) != sorted(y.files):
                return f"arrays {sorted(x.files)} vs {sorted(y.files)}"
            bad = [k for k in x.files if x[k].dtype != y[k].dtype or x[k].tobytes() != y[k].tobytes()]
            return None if not bad else f"arrays differ: {bad}"
    if a.suffix == ".pt":
        x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
        if x.get("format") in MODEL_FORMATS and "architecture" not in x and "architecture" in y:
            from cleanpipe.saved_model import architecture_of

            if y["architecture"] != architecture_of(x):
                return f"architecture {y['architecture']} is not what the base file implies ({architecture_of(x)})"
            x = {**x, "format": MODEL_FORMATS[x["format"]], "architecture": y["architecture"]}
        if sorted(x) != sorted(y):
            return f"keys {sorted(x)} vs {sorted(y)}"
        bad = []
        for k in x:
            if isinstance(x[k], dict):  # the state dict (tensors), the architecture (values)
                if list(x[k]) != list(y[k]) or not all(
                        torch.equal(x[k][t], y[k][t]) if isinstance(x[k][t], torch.Tensor) else x[k][t] == y[k][t]
                        for t in x[k]):
                    bad.append(k)
            elif isinstance(x[k], torch.Tensor):
                if not torch.equal(x[k], y[k]):
                    bad.append(k)
            elif x[k] != y[k]:
                bad.append(k)
        return None if not bad else f"entries differ: {bad}"
    if a.suffix == ".csv":
        x, y = pd.read_csv(a), pd.read_csv(b)
        x, y = (d.drop(columns=[c for c in d.columns if c == "seconds"]) for d in (x, y))
        if list(x.columns) != list(y.columns) or len(x) != len(y):
            return f"columns/rows {list(x.columns)} x {len(x)} vs {list(y.columns)} x {len(y)}"
        return None if x.equals(y) else "cells differ"
    if a.name == "manifest.json":
        x, y = json.loads(a.read_text()), json.loads(b.read_text())
        px, py = x.get("parameters"), y.get("parameters")
        px = {RENAMED.get(k, k): v for k, v in (px or {}).items()}
        if px != py:
            return f"parameters differ: {sorted(set(_flat(px).items()) ^ set(_flat(py).items()))[:6]}"
        mx, my = _strip(x.get("metrics")), _strip(y.get("metrics"))
        return None if mx == my else "metrics differ"
    if a.suffix == ".html" and "review" in a.parts:
        x, y = (TIMESTAMP.sub("<time>", f.read_text(encoding="utf-8")) for f in (a, b))
        return None if x == y else "pages differ"
    return None  # the report's html, png, json resume state: not artifacts of the contract


def _flat(d, prefix=""):
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v)
    return out


def _maxdiff(x, y):
    try:
        return float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64))))
    except ValueError:
        return "n/a"


def compare(base: Path, head: Path, cases: list[str]) -> int:
    problems, added, checked = [], [], 0
    for name in cases:
        for a in sorted((base / name).rglob("*")):
            if not a.is_file() or a.name == ".done" or "report" in a.parts or "shards" in a.parts:
                continue
            rel = a.relative_to(base)
            b = head / rel
            if not b.is_file():
                problems.append(f"{rel}: missing in this tree's outputs")
                continue
            why = _compare_file(a, b)
            checked += a.suffix in (".npy", ".npz", ".pt", ".csv") or a.name == "manifest.json" \
                or (a.suffix == ".html" and "review" in a.parts)
            if why:
                problems.append(f"{rel}: {why}")
        for b in sorted((head / name).rglob("*")):
            rel = b.relative_to(head)
            if b.is_file() and b.suffix in (".npy", ".npz", ".pt", ".csv") and "report" not in b.parts \
                    and "shards" not in b.parts and not (base / rel).is_file():
                added.append(str(rel))
    for p in problems:
        print(f"DIFFERENT {p}")
    for a in added:
        print(f"new (not in the base's outputs): {a}")
    print(f"{checked} artifacts compared in {', '.join(cases)}: "
          + ("all identical" if not problems else f"{len(problems)} differ"))
    return 1 if problems else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="the commit to compare against (e.g. the one before a refactor)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/cleanpipe-same-bytes"))
    ap.add_argument("--cases", nargs="+", default=["demo", "digits", "table", "mnist", "colour"])
    args = ap.parse_args()
    if "mnist" in args.cases and not (MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        print(f"no MNIST at {MNIST}: skipping the mnist case", file=sys.stderr)
        args.cases.remove("mnist")
    work = args.work.resolve()
    inputs = work / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    _make_inputs(inputs)
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", args.base], capture_output=True, text=True,
                         check=True).stdout.strip()
    base_out = work / "base" / sha[:12]
    todo = [c for c in args.cases if not (base_out / c / ".done").is_file()]
    if todo:
        src = work / "base-src"
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(src)], capture_output=True)
        shutil.rmtree(src, ignore_errors=True)
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(src), sha], check=True,
                       capture_output=True)
        print(f"base {sha[:12]}: {', '.join(todo)}", file=sys.stderr)
        try:
            for c in todo:
                _run_cases(src, base_out, [c], inputs)
                (base_out / c / ".done").touch()
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(src)], capture_output=True)
    head_out = work / "head"
    print(f"this tree: {', '.join(args.cases)}", file=sys.stderr)
    _run_cases(None, head_out, args.cases, inputs)
    sys.exit(compare(base_out, head_out, args.cases))


if __name__ == "__main__":
    main()
