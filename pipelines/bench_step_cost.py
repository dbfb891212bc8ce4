"""Cost of a training step per method, relative to a standard cross-entropy step.

    python pipelines/bench_step_cost.py [--data ../shared/data/mnist-test] [--epochs 3] [--device auto] [--methods ...]

Trains the train stage's network (MNIST-10k's 8,000 training images, the engine's recipe) with each
method for the same number of steps and prints milliseconds per step and the ratio to ``standard``.
Only the steps are timed: no evaluation, no checkpoint; the first epoch is a warm-up and is not counted.
L2R and IEG use 10 trusted images per class (never trained on), plain momentum and the EMA, as the train
stage does; ``ieg-autograd`` is IEG with its meta-gradient from the second-order backward instead of the JVP.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "mnist-test")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--methods", nargs="+", default=None, help="a subset of the methods (default all)")
    args = ap.parse_args()

    import torch

    from cleanpipe.data import DataSpec, load_dataset
    from cleanpipe.engine import DeviceData, Standard, device_name, fit, resolve_device
    from cleanpipe.models import build_model
    from cleanpipe.robust.coteaching import CoTeaching, CoTeachingPlus
    from cleanpipe.robust.ieg import IEG, L2R
    from cleanpipe.train import train_settings

    ds = load_dataset(DataSpec("mnist", path=str(args.data.resolve())))
    dev = resolve_device(args.device)
    settings = train_settings(ds.input_shape, "mnist", epochs=args.epochs + 1)
    cfg = settings.train_config(0)
    rng = np.random.default_rng(0)
    probe = np.sort(np.concatenate([rng.choice(np.flatnonzero(ds.y_train == c), 10, replace=False) for c in range(10)]))
    rows = np.setdiff1d(np.arange(len(ds.y_train)), probe)
    data = DeviceData(ds.X_train, dev)
    steps = len(rows) // cfg.batch_size
    n, probe_labels = len(ds.y_train), ds.y_train[probe]
    methods = {"standard": (Standard, 1), "coteaching": (lambda: CoTeaching(0.5, 1), 2),
               "coteaching-plus": (lambda: CoTeachingPlus(0.5, 1), 2),
               "l2r": (lambda: L2R(probe, probe_labels, n), 1),
               "ieg": (lambda: IEG(probe, probe_labels, n, policy="randaugment"), 1),
               "ieg-autograd": (lambda: IEG(probe, probe_labels, n, policy="randaugment", route="autograd"), 1)}
    if args.methods:
        methods = {k: v for k, v in methods.items() if k in args.methods or k == "standard"}
    meta_cfg = settings.train_config(0, nesterov=False, ema=0.999)
    results = {}
    for name, (make, n_nets) in methods.items():
        torch.manual_seed(0)
        nets = [build_model(settings.model, ds.input_shape, ds.n_classes) for _ in range(n_nets)]
        marks = []

        def on_epoch(epoch, m):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            marks.append(time.perf_counter())

        fit(nets, data, ds.y_train, rows, meta_cfg if name.startswith(("l2r", "ieg")) else cfg, method=make(),
            on_epoch=on_epoch)
        results[name] = (marks[-1] - marks[0]) / (steps * args.epochs)  # epochs 2.. only
    print(f"MNIST-10k, {settings.model}, batch {cfg.batch_size}, {steps} steps per epoch, {args.epochs} timed epochs, "
          f"{device_name(dev)}\n")
    print("| method | ms per step | relative to standard |")
    print("| --- | --- | --- |")
    for name, sec in results.items():
        print(f"| {name} | {sec * 1000:.2f} | {sec / results['standard']:.2f}x |")


if __name__ == "__main__":
    main()
