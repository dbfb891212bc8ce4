"""Peer benchmark: out-of-fold pred_probs the cleanlab-tutorial way (skorch) vs `cleanpipe crossval`.

MNIST-10k (the shared t10k files, 8,000 train / 2,000 test split), 40% symmetric noise on the
training labels, K folds (default 4). For each route: wall time, out-of-fold accuracy against
the true labels, and the label-error F1 of cleanlab's default filter (prune_by_noise_rate). "wall time" is the
whole ``cleanpipe crossval`` command (interpreter start-up, imports and data loading
included) against ``cross_val_predict`` alone; "in folds" is training and prediction only.

(a) skorch: the tutorial's CNN (cleanlab docs, image tutorial until 2023-07) in
    ``NeuralNetClassifier`` with every skorch default (SGD lr 0.01, 10 epochs, batch 128,
    20% internal validation split), through
    ``sklearn.model_selection.cross_val_predict(cv=K, method="predict_proba")``.
(b) cleanpipe: ``cleanpipe noise`` then ``cleanpipe crossval`` with its defaults (``--epochs`` to
    change its epochs per fold), timed as the crossval command.

Run (needs the bench extra: pip install -c constraints-cpu.txt -e ".[bench]"):

    python pipelines/bench_crossval.py [--data ../shared/data/mnist-test] [--folds 4] [--seed 0] [--device cpu|cuda] [--epochs E]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def f1_of_default_filter(noisy: np.ndarray, true: np.ndarray, pred_probs: np.ndarray) -> tuple[float, float, float]:
    from cleanlab.filter import find_label_issues

    flagged = find_label_issues(noisy, pred_probs)
    errors = noisy != true
    tp = np.sum(flagged & errors)
    precision = tp / max(flagged.sum(), 1)
    recall = tp / max(errors.sum(), 1)
    return precision, recall, 2 * precision * recall / max(precision + recall, 1e-12)


def skorch_route(X: np.ndarray, noisy: np.ndarray, folds: int, seed: int, device: str) -> tuple[np.ndarray, float]:
    import torch
    from skorch import NeuralNetClassifier
    from sklearn.model_selection import cross_val_predict
    from torch import nn

    class ClassifierModule(nn.Module):
        # The cleanlab image tutorial's network, layer for layer.
        def __init__(self):
            super().__init__()
            self.cnn = nn.Sequential(
                nn.Conv2d(1, 6, 3), nn.ReLU(), nn.BatchNorm2d(6), nn.MaxPool2d(kernel_size=2, stride=2),
                nn.Conv2d(6, 16, 3), nn.ReLU(), nn.BatchNorm2d(16), nn.MaxPool2d(kernel_size=2, stride=2),
            )
            self.out = nn.Sequential(nn.Flatten(), nn.LazyLinear(128), nn.ReLU(), nn.Linear(128, 10), nn.Softmax(dim=-1))

        def forward(self, x):
            return self.out(self.cnn(x))

    torch.manual_seed(seed)
    net = NeuralNetClassifier(ClassifierModule, verbose=0, device=device)
    Xf = (X.astype(np.float32) / 255.0).reshape(len(X), 1, 28, 28)
    t0 = time.perf_counter()
    probs = cross_val_predict(net, Xf, noisy, cv=folds, method="predict_proba")
    return probs.astype(np.float32), time.perf_counter() - t0


def cleanpipe_route(data: Path, folds: int, seed: int, device: str,
                    epochs: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, dict]:
    run = Path(tempfile.mkdtemp(prefix="bench_crossval_")) / "run"
    exe = [sys.executable, "-m", "cleanpipe"]
    subprocess.run(exe + ["noise", str(run), "--dataset", "mnist", "--data", str(data),
                          "--kind", "symmetric", "--rate", "0.4", "--seed", str(seed)], check=True, capture_output=True)
    t0 = time.perf_counter()
    # One split, no shifted views: the recipe the skorch route is compared with (the tables' numbers).
    subprocess.run(exe + ["crossval", str(run), "--folds", str(folds), "--seed", str(seed), "--device", device,
                          "--repeats", "1", "--no-tta"]
                   + (["--epochs", str(epochs)] if epochs else []),
                   check=True, capture_output=True)
    seconds = time.perf_counter() - t0
    manifest = json.loads((run / "crossval" / "manifest.json").read_text())
    return (np.load(run / "crossval" / "pred_probs.npy"), np.load(run / "noise" / "noisy_labels.npy"),
            run, seconds, manifest)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "mnist-test")
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads for both routes")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where both routes train")
    ap.add_argument("--epochs", type=int, default=None, help="cleanpipe's epochs per fold (default: crossval's)")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from cleanpipe.data import DataSpec, load_dataset

    ds = load_dataset(DataSpec("mnist", str(args.data.resolve())))
    pp_ours, noisy, run, t_ours, manifest = cleanpipe_route(args.data.resolve(), args.folds, args.seed, args.device,
                                                            args.epochs)
    true = ds.y_train
    pp_skorch, t_skorch = skorch_route(ds.X_train, noisy, args.folds, args.seed, args.device)

    rows = []
    in_folds = manifest["metrics"]["fold_seconds_total"]
    for name, pp, t, tf in (("skorch + cross_val_predict (tutorial CNN, skorch defaults)", pp_skorch, t_skorch, t_skorch),
                            (f"cleanpipe crossval ({'defaults: ' if args.epochs is None else ''}{manifest['parameters']['model']}, "
                             f"{manifest['parameters']['epochs']} epochs)", pp_ours, t_ours, in_folds)):
        p, r, f1 = f1_of_default_filter(noisy, true, pp)
        rows.append((name, t, tf, float(np.mean(pp.argmax(1) == true)), p, r, f1))
    print(f"MNIST-10k train split ({len(true)} images), 40% symmetric noise "
          f"(actual {np.mean(noisy != true):.3f}), {args.folds}-fold, device {args.device}, "
          f"CPU threads {torch.get_num_threads()}\n")
    print("| route | wall time (s) | in folds (s) | OOF accuracy vs true labels | label-error precision | recall | F1 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, t, tf, acc, p, r, f1 in rows:
        print(f"| {name} | {t:.1f} | {tf:.1f} | {acc:.4f} | {p:.3f} | {r:.3f} | {f1:.3f} |")
    print(f"\nspeed-up of cleanpipe: {rows[0][1] / rows[1][1]:.2f}x by wall time "
          f"(the crossval command, start-up and data loading included), {rows[0][2] / rows[1][2]:.2f}x in folds")


if __name__ == "__main__":
    main()
