"""INCV's theory check on MNIST-10k: measured held-out quantities against the closed forms.

    python pipelines/bench_theory.py [--data ../shared/data/mnist-test] [--conditions symmetric:0.4 ...] [--seed 0]

For each condition, runs ``cleanpipe noise`` and ``cleanpipe theory`` (train on 4,000 noisy training
labels, score the other 4,000) and prints measured / predicted noisy accuracy, label precision and
label recall (Chen et al. 2019, section 3), with the wall time of each theory run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT = ["symmetric:0.2", "symmetric:0.4", "symmetric:0.5", "symmetric:0.8", "pairflip:0.4"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "mnist-test")
    ap.add_argument("--conditions", nargs="+", default=DEFAULT, help="KIND:RATE, e.g. symmetric:0.4")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    exe = [sys.executable, "-m", "cleanpipe"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for cond in args.conditions:
            kind, rate = cond.split(":")
            run = Path(tmp) / cond.replace(":", "")
            subprocess.run(exe + ["noise", str(run), "--dataset", "mnist", "--data", str(args.data.resolve()),
                                  "--kind", kind, "--rate", rate, "--seed", str(args.seed)],
                           check=True, capture_output=True)
            t0 = time.perf_counter()
            subprocess.run(exe + ["theory", str(run), "--seed", str(args.seed)], check=True, capture_output=True)
            seconds = time.perf_counter() - t0
            man = json.loads((run / "theory" / "manifest.json").read_text())
            rows.append((kind, float(rate), man, seconds))
    p = rows[0][2]["parameters"]
    print(f"MNIST-10k: {p['model']} trained {p['epochs']} epochs on half of the 8,000 noisy training labels, "
          f"scored on the other half; seed {args.seed}; {rows[0][2]['device']}\n")
    print("| noise | noisy accuracy (measured / theory) | label precision | label recall | max abs difference | seconds |")
    print("| --- | --- | --- | --- | --- | --- |")
    for kind, rate, man, seconds in rows:
        m = man["metrics"]
        cells = [f"{m['measured'][q]:.3f} / {m['predicted'][q]:.3f}"
                 for q in ("noisy_accuracy", "label_precision", "label_recall")]
        print(f"| {kind} {rate:g} | {' | '.join(cells)} | {m['max_abs_difference']:.3f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
