"""How many crossval epochs MNIST-10k needs: out-of-fold quality against epochs, per kind of noise.

    python pipelines/bench_crossval_epochs.py [--data ../shared/data/mnist-test] [--epochs 3 10 20]
                                              [--conditions symmetric:0.2 symmetric:0.4 symmetric:0.8
                                                            pairflip:0.45 random:0.4:0.2] [--seed 0]

For each condition (KIND:RATE[:SPARSITY]): ``cleanpipe noise`` once, then for each epoch count
``cleanpipe crossval --epochs E`` with round 1's plain folds (one split, no shifted views, no mixup) and
``cleanpipe prune``. Prints the out-of-fold accuracy against the true labels, the
label-error precision / recall / F1, the share of true errors left among the kept examples, and
the seconds spent in folds. Round 1's 10 epochs for 28x28 grey images came from this table; the folds
now train with mixup, whose epochs ``pipelines/bench_fold_training.py`` measures.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONDITIONS = ["symmetric:0.2", "symmetric:0.4", "symmetric:0.8", "pairflip:0.45", "random:0.4:0.2"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "mnist-test")
    ap.add_argument("--conditions", nargs="+", default=CONDITIONS, help="KIND:RATE[:SPARSITY]")
    ap.add_argument("--epochs", nargs="+", type=int, default=[3, 10, 20])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    exe = [sys.executable, "-m", "cleanpipe"]
    seed = ["--seed", str(args.seed)]

    def cli(*a):
        proc = subprocess.run(exe + [str(x) for x in a], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"failed: cleanpipe {' '.join(map(str, a))}\n{proc.stderr[-2000:]}")

    rows = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for cond in args.conditions:
            kind, rate, *rest = cond.split(":")
            noised = Path(tmp) / cond.replace(":", "_")
            cli("noise", noised, "--dataset", "mnist", "--data", args.data.resolve(), "--kind", kind, "--rate", rate,
                *(["--sparsity", rest[0]] if rest else []), *seed)
            for epochs in args.epochs:
                run = Path(tmp) / f"{noised.name}_e{epochs}"
                run.mkdir()
                shutil.copy(noised / "dataset.json", run)
                shutil.copytree(noised / "noise", run / "noise")
                cli("crossval", run, "--epochs", epochs, "--repeats", 1, "--no-tta", "--mixup", 0, *seed)  # the epochs alone
                cli("prune", run, "--top", 0)
                cv = json.loads((run / "crossval" / "manifest.json").read_text())["metrics"]
                pr = json.loads((run / "prune" / "manifest.json").read_text())["metrics"]
                rows.append((cond, epochs, cv["oof_accuracy_true"], pr["precision"], pr["recall"], pr["f1"],
                             pr["true_noise_rate_kept"], cv["fold_seconds_total"]))
                print(f"{cond:>16} {epochs:>3} epochs: OOF acc {cv['oof_accuracy_true']:.4f}, F1 {pr['f1']:.3f}",
                      file=sys.stderr, flush=True)
    minutes = (time.perf_counter() - t0) / 60
    command = shlex.join(["python", "pipelines/bench_crossval_epochs.py", *sys.argv[1:]])
    print(f"`{command}`: MNIST-10k (8,000 train), 4 folds, small_cnn, seed {args.seed}; {minutes:.1f} min on this machine\n")
    print("| noise | epochs | OOF accuracy vs true | precision | recall | F1 | true errors left in kept | s in folds |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for cond, epochs, acc, p, r, f1, left, sec in rows:
        name = cond.replace(":", " ", 1).replace(":", ", sparsity ")
        print(f"| {name} | {epochs} | {acc:.3f} | {p:.3f} | {r:.3f} | {f1:.3f} | {100 * left:.1f}% | {sec:.1f} |")


if __name__ == "__main__":
    main()
