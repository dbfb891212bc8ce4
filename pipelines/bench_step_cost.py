"""Cost of a training step per method, relative to a standard cross-entropy step.

    python pipelines/bench_step_cost.py [--data ../shared/data/mnist-test] [--epochs 3] [--device auto] [--methods ...]

Trains the train stage's network (MNIST-10k's 8,000 training images, the train recipe) with each method
through the library call ``cleanpipe.robust.train_model`` and prints milliseconds per step and the ratio to
``standard``. Only the steps are timed: no test split, no checkpoint; the first epoch is a warm-up and is
not counted. Co-teaching drops half of each batch; L2R and IEG hold out 10 trusted images per class (drawn
from the clean labels, never trained on) and train with their recipe (plain momentum, the EMA);
``ieg-autograd`` is IEG with its meta-gradient from the second-order backward instead of the JVP.
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
    from cleanpipe.engine import device_name, resolve_device
    from cleanpipe.progress import NullProgress
    from cleanpipe.recipes import fit_settings
    from cleanpipe.robust import CoTeachingOptions, IegOptions, L2ROptions, train_model

    ds = load_dataset(DataSpec("mnist", path=str(args.data.resolve())))
    dev = resolve_device(args.device)
    settings = fit_settings("train", ds.input_shape, source="mnist", epochs=args.epochs + 1)
    # The probe methods draw their 10 trusted images per class from the clean labels.
    trusted = dict(probe_per_class=10, trusted_rows=np.arange(len(ds.y_train)), trusted_labels=ds.y_train)
    methods = {"standard": None, "coteaching": CoTeachingOptions(forget_rate=0.5),
               "coteaching-plus": CoTeachingOptions(forget_rate=0.5),
               "l2r": L2ROptions(**trusted), "ieg": IegOptions(**trusted),
               "ieg-autograd": IegOptions(**trusted, route="autograd")}
    if args.methods:
        methods = {k: v for k, v in methods.items() if k in args.methods or k == "standard"}

    class EpochClock(NullProgress):  # the trainer reports each finished epoch here
        def __init__(self):
            self.marks = []

        def advance(self, level, completed=None, note=""):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            self.marks.append(time.perf_counter())

    results, steps = {}, {}
    for name, options in methods.items():
        clock = EpochClock()
        result = train_model(ds.X_train, ds.y_train, method=name.removesuffix("-autograd"), options=options,
                             settings=settings, device=args.device, progress=clock)
        steps[name] = result.steps // settings.epochs
        results[name] = (clock.marks[-1] - clock.marks[0]) / (steps[name] * args.epochs)  # epochs 2.. only
    print(f"MNIST-10k, {settings.model}, batch {settings.batch_size}, {steps['standard']} steps per epoch, "
          f"{args.epochs} timed epochs, {device_name(dev)}\n")
    print("| method | ms per step | relative to standard |")
    print("| --- | --- | --- |")
    for name, sec in results.items():
        print(f"| {name} | {sec * 1000:.2f} | {sec / results['standard']:.2f}x |")


if __name__ == "__main__":
    main()
