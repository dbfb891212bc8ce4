"""INCV on MNIST-10k: label precision/recall of the selected set and the noise-rate estimate.

    python pipelines/bench_incv.py [--data ../shared/data/mnist-test] [--rate 0.5] [--seed 0] [--epochs E]

Runs ``cleanpipe noise`` (symmetric) and ``cleanpipe prune --method incv`` with defaults on the 8,000
training images and prints the per-iteration table, the estimated noise rate and the wall time.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "mnist-test")
    ap.add_argument("--rate", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=None)
    args = ap.parse_args()
    exe = [sys.executable, "-m", "cleanpipe"]
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        subprocess.run(exe + ["noise", str(run), "--dataset", "mnist", "--data", str(args.data.resolve()),
                              "--kind", "symmetric", "--rate", str(args.rate), "--seed", str(args.seed)],
                       check=True, capture_output=True)
        cmd = exe + ["prune", str(run), "--method", "incv", "--seed", str(args.seed), "--top", "0"]
        if args.epochs:
            cmd += ["--epochs", str(args.epochs)]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        seconds = time.perf_counter() - t0
        man = json.loads((run / "prune" / "manifest.json").read_text())
    m, p = man["metrics"], man["parameters"]
    print(f"MNIST-10k (8,000 train), {args.rate:.0%} symmetric noise; INCV with {p['model']}, {p['epochs']} epochs "
          f"per model, {p['iterations']} iterations, {man['device']}: {seconds:.1f} s\n")
    print("| iteration | selected | candidates | discarded | label precision | label recall |")
    print("| --- | --- | --- | --- | --- | --- |")
    for it in m["iterations"]:
        print(f"| {it['iteration']} | {it['selected']:,} | {it['candidates']:,} | {it['discarded']:,} | "
              f"{it['label_precision']:.3f} | {it['label_recall']:.3f} |")
    print(f"\nestimated noise rate {m['eval_ratio']:.3f} (true {m['true_noise_rate']:.3f})")


if __name__ == "__main__":
    main()
