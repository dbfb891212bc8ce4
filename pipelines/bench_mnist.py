"""Test accuracy of every training method under five kinds of label noise (the train issue's table).

    python pipelines/bench_mnist.py [--data ../shared/data/mnist-test] [--seed 0] [--epochs E]
    python pipelines/bench_mnist.py --quick          # the same on scikit-learn's digits, in minutes
    python pipelines/bench_mnist.py --colour 8000 --train-args "--model small_cnn --batch-size 256 --lr 0.1" ...

MNIST-10k: 8,000 training images (noised) and 2,000 clean test images, the train stage's small CNN.
For each condition it runs, through the CLI: noise -> crossval -> prune (confident learning) -> the
CL-based trainings, then prune --method incv -> INCV Co-teaching, L2R and IEG with 10 trusted images
per class (the true labels of 100 training images, held out of their training), and standard training on
the true labels (the ceiling); DivideMix (plain, and with its first division from prune's label quality) and ELR on all
rows. ``--rows L2R IEG`` runs only the rows whose names start so. ``--colour N`` replaces the grey digits by
colour digits (MNIST-10k's digits drawn in colour on textured 32x32 backgrounds, N training and N / 4 test
images: ``pipelines/bench_detection.py``'s task, through ``--dataset npz``); ``--train-args``,
``--crossval-args`` and ``--incv-args`` pass more options to every train, crossval and INCV prune call.
Prints a Markdown table (rows: methods, columns: conditions, then the mean seconds per training epoch and its ratio to standard training's) and the wall time.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONDITIONS = ["symmetric:0.2", "symmetric:0.5", "symmetric:0.8", "pairflip:0.45", "random:0.4:0.2"]
ROWS = [
    ("standard, all noisy labels", ["--method", "standard", "--subset", "all"]),
    ("standard, CL-kept subset", ["--method", "standard", "--subset", "kept"]),
    ("Co-teaching, all", ["--method", "coteaching", "--subset", "all"]),
    ("Co-teaching, all, papers' batch-wide picks", ["--method", "coteaching", "--subset", "all", "--selection", "batch"]),
    ("Co-teaching, CL-kept subset", ["--method", "coteaching", "--subset", "kept"]),
    ("Co-teaching+, all", ["--method", "coteaching-plus", "--subset", "all"]),
    ("INCV Co-teaching", None),  # after prune --method incv
    ("L2R, 10 trusted per class", ["--method", "l2r", "--subset", "all", "--probe-per-class", "10"]),
    ("IEG, 10 trusted per class", ["--method", "ieg", "--subset", "all", "--probe-per-class", "10"]),
    ("DivideMix", ["--method", "dividemix", "--subset", "all"]),
    ("DivideMix, CL-seeded division", ["--method", "dividemix", "--subset", "all", "--division", "prune"]),
    ("ELR, all", ["--method", "elr", "--subset", "all"]),
    ("standard, clean labels (ceiling)", ["--method", "standard", "--subset", "all", "--clean-labels"]),
]


def _needs_prune(opts) -> bool:
    """Whether a row's training reads a confident-learning prune stage (the registry says: kept rows, a forget rate)."""
    from cleanpipe.robust import get_method

    if opts is None:  # INCV's Co-teaching: its own prune stage
        return False
    method = get_method(opts[opts.index("--method") + 1])
    given = {"division": opts[opts.index("--division") + 1]} if "--division" in opts else {}  # DivideMix's seed
    return method.prune_needed(method.Options(**given), opts[opts.index("--subset") + 1]) is not None


def dataset(args, tmp: Path) -> tuple[list[str], str]:
    """The noise stage's dataset options for ``args`` and the table's title (colour digits are written to ``tmp``)."""
    if args.quick:
        return ["--dataset", "digits"], "digits (1,437 train / 360 test)"
    if args.colour:
        from bench_detection import spec_of  # this script's directory is on the path

        path = spec_of("colour", args.data, tmp, args.colour).path
        return ["--dataset", "npz", "--data", path], f"colour digits ({args.colour:,} train / {args.colour // 4:,} test)"
    return ["--dataset", "mnist", "--data", str(args.data.resolve())], "MNIST-10k (8,000 train / 2,000 test)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "mnist-test")
    ap.add_argument("--quick", action="store_true", help="digits instead of MNIST-10k")
    ap.add_argument("--conditions", nargs="+", default=CONDITIONS, help="KIND:RATE[:SPARSITY]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--crossval-args", default="", help='more crossval options, e.g. "--executor ray --cpus-per-fold 1"')
    ap.add_argument("--colour", type=int, default=None, metavar="N",
                    help="colour digits (N training, N / 4 test images; beyond 8,000 / 2,000 digits are reused "
                    "in new colours) instead of MNIST-10k")
    ap.add_argument("--train-args", default="", help='more train options for every row, e.g. "--model small_cnn"')
    ap.add_argument("--incv-args", default="", help='more options of prune --method incv, e.g. "--model small_cnn"')
    ap.add_argument("--epochs", type=int, default=None, help="train epochs (default: the train stage's)")
    ap.add_argument("--rows", nargs="+", default=None, help="only the methods whose name starts with one of these")
    args = ap.parse_args()
    if args.colour is not None and args.colour < 4:
        ap.error("--colour N needs N >= 4 (N training and N / 4 test images)")
    if args.quick and args.colour:
        ap.error("--quick and --colour pick different data sets: give one")
    exe = [sys.executable, "-m", "cleanpipe"]
    seed = ["--seed", str(args.seed)]
    epochs = ["--epochs", str(args.epochs)] if args.epochs else []

    def cli(*a):
        proc = subprocess.run(exe + [str(x) for x in a], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"failed: cleanpipe {' '.join(map(str, a))}\n{proc.stderr[-2000:]}")

    rows = [(name, opts) for name, opts in ROWS if not args.rows or name.startswith(tuple(args.rows))]
    table: dict[str, dict[str, float]] = {name: {} for name, _ in rows}
    per_epoch: dict[str, list[float]] = {name: [] for name, _ in rows}  # seconds per epoch, every condition
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data, title = dataset(args, Path(tmp))
        for cond in args.conditions:
            kind, rate, *rest = cond.split(":")
            run = Path(tmp) / cond.replace(":", "_")
            cli("noise", run, *data, "--kind", kind, "--rate", rate, *(["--sparsity", rest[0]] if rest else []), *seed)
            if any(_needs_prune(opts) for _, opts in rows):
                cli("crossval", run, *seed, *args.crossval_args.split())
                cli("prune", run, "--top", 0)
            for name, opts in rows:
                if opts is None:
                    cli("prune", run, "--method", "incv", "--top", 0, *seed, *args.incv_args.split())
                    opts = ["--method", "incv-coteaching"]
                cli("train", run, *opts, *epochs, *seed, *args.train_args.split())
                m = json.loads((run / "train" / "manifest.json").read_text())["metrics"]
                table[name][cond] = m["test_accuracy"]
                history = (run / "train" / "history.csv").read_text().splitlines()
                col = history[0].split(",").index("seconds")
                per_epoch[name] += [float(line.split(",")[col]) for line in history[1:]]
                print(f"{cond:>16}  {name:<34} {m['test_accuracy']:.4f}", file=sys.stderr, flush=True)
    minutes = (time.perf_counter() - t0) / 60
    command = shlex.join(["python", "pipelines/bench_mnist.py", *sys.argv[1:]])
    print(f"`{command}`: {title}, test accuracy in %, seed {args.seed}; {minutes:.1f} min on this machine\n")
    heads = [c.replace(":", " ").replace("random 0.4 0.2", "random 0.4 (sparsity 0.2)") for c in args.conditions]
    base = per_epoch.get("standard, all noisy labels")
    print("| method | " + " | ".join(heads) + " | s / epoch |" + (" x standard |" if base else ""))
    print("| --- |" + " --- |" * (len(heads) + 1 + bool(base)))
    for name, _ in rows:
        sec = sum(per_epoch[name]) / max(1, len(per_epoch[name]))
        ratio = f" {sec / (sum(base) / len(base)):.1f} |" if base else ""
        print(f"| {name} | " + " | ".join(f"{100 * table[name][c]:.2f}" for c in args.conditions) + f" | {sec:.2f} |{ratio}")


if __name__ == "__main__":
    main()
