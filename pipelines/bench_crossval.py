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
(b) cleanpipe: ``cleanpipe noise`` then ``cleanpipe crossval`` (one split, no shifted views: the
    recipe this table has always measured), timed as the whole crossval command. By default each
    network of ``--models`` runs at 1, 2, ... epochs until its out-of-fold accuracy
    against the true labels reaches the skorch route's: the fewest epochs that match it, and the
    speed-up at equal accuracy. ``--epochs E`` runs each network once at E epochs instead.

Run (needs the bench extra: pip install -c constraints-cpu.txt -e ".[bench]"):

    python pipelines/bench_crossval.py [--models auto,mlp128] [--data ../shared/data/mnist-test] [--folds 4] [--seed 0] [--device cpu|cuda] [--epochs E]
"""

from __future__ import annotations

import argparse
import json
import shutil
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
    from sklearn.model_selection import cross_val_predict
    from skorch import NeuralNetClassifier
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


EXE = [sys.executable, "-m", "cleanpipe"]


def noisy_run(data: Path, seed: int) -> Path:
    run = Path(tempfile.mkdtemp(prefix="bench_crossval_")) / "noise_only"
    subprocess.run(EXE + ["noise", str(run), "--dataset", "mnist", "--data", str(data),
                          "--kind", "symmetric", "--rate", "0.4", "--seed", str(seed)], check=True, capture_output=True)
    return run


def cleanpipe_route(noise_run: Path, model: str, folds: int, seed: int, device: str,
                    epochs: int | None) -> tuple[np.ndarray, float, dict]:
    run = noise_run.with_name(f"{model}_{epochs}")
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(noise_run, run)
    t0 = time.perf_counter()
    # One split, no shifted views: the recipe the skorch route is compared with (the tables' numbers).
    subprocess.run(EXE + ["crossval", str(run), "--folds", str(folds), "--seed", str(seed), "--device", device,
                          "--repeats", "1", "--no-tta", "--model", model]
                   + (["--epochs", str(epochs)] if epochs else []),
                   check=True, capture_output=True)
    seconds = time.perf_counter() - t0
    manifest = json.loads((run / "crossval" / "manifest.json").read_text())
    return np.load(run / "crossval" / "pred_probs.npy"), seconds, manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "mnist-test")
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads for both routes")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where both routes train")
    ap.add_argument("--models", default="auto,mlp128", help="cleanpipe networks to run (comma-separated)")
    ap.add_argument("--epochs", type=int, default=None,
                    help="run each network once at this many epochs per fold (default: the fewest that match skorch)")
    ap.add_argument("--max-epochs", type=int, default=10, help="give up matching skorch's accuracy after this many")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from cleanpipe.data import DataSpec, load_dataset

    data = args.data.resolve()
    ds = load_dataset(DataSpec("mnist", str(data)))
    true = ds.y_train
    noise_run = noisy_run(data, args.seed)
    noisy = np.load(noise_run / "noise" / "noisy_labels.npy")
    pp_skorch, t_skorch = skorch_route(ds.X_train, noisy, args.folds, args.seed, args.device)
    target = float(np.mean(pp_skorch.argmax(1) == true))

    rows = [("skorch + cross_val_predict (tutorial CNN, skorch defaults)", t_skorch, t_skorch, target,
             *f1_of_default_filter(noisy, true, pp_skorch), "")]
    for model in args.models.split(","):
        for epochs in ([args.epochs] if args.epochs else range(1, args.max_epochs + 1)):
            pp, t, manifest = cleanpipe_route(noise_run, model, args.folds, args.seed, args.device, epochs)
            acc = float(np.mean(pp.argmax(1) == true))
            name = f"cleanpipe crossval --model {model} ({manifest['parameters']['model']}), {epochs} epoch(s)"
            matched = acc >= target
            rows.append((name, t, manifest["metrics"]["fold_seconds_total"], acc, *f1_of_default_filter(noisy, true, pp),
                         f"{t_skorch / t:.2f}x" if matched else "below skorch's accuracy"))
            print(f"  {name}: wall {t:.1f}s, OOF accuracy {acc:.4f} (skorch {target:.4f})", flush=True)
            if matched:
                break
    print(f"\nMNIST-10k train split ({len(true)} images), 40% symmetric noise "
          f"(actual {np.mean(noisy != true):.3f}), {args.folds}-fold, device {args.device}, "
          f"CPU threads {torch.get_num_threads()}\n")
    print("| route | wall time (s) | in folds (s) | OOF accuracy vs true labels | label-error precision | recall | F1 "
          "| speed-up by wall time at equal accuracy |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, t, tf, acc, p, r, f1, speed in rows:
        print(f"| {name} | {t:.1f} | {tf:.1f} | {acc:.4f} | {p:.3f} | {r:.3f} | {f1:.3f} | {speed} |")
    print("\n(wall time: the whole crossval command, start-up and data loading included; in folds: training and "
          "prediction only, the first fold's one-off imports included)")


if __name__ == "__main__":
    main()
