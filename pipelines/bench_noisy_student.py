"""Noisy Student on MNIST-10k: teacher vs each student, and how right the relabels are.

    python pipelines/bench_noisy_student.py [--data ../shared/data/mnist-test] [--conditions symmetric:0.4 symmetric:0.8]
                                            [--iterations 2] [--seed 0] [--quick] [-- extra train options]

For each condition: synthetic noise, crossval, prune (confident learning's default), then
``cleanpipe train --method noisy-student``: a teacher on the kept examples, then ``--iterations``
noised students on kept + pseudo-labeled flagged examples. Prints the test accuracy of every network,
the decisions on the flagged examples and the share of relabels that are right (true labels known).
``--quick`` runs on digits instead of MNIST. Options after ``--`` go to ``cleanpipe train``.
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
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "mnist-test")
    ap.add_argument("--conditions", nargs="+", default=["symmetric:0.4", "symmetric:0.8"], help="KIND:RATE")
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="digits instead of MNIST-10k")
    args = ap.parse_args(argv)
    exe = [sys.executable, "-m", "cleanpipe"]
    data = ["--dataset", "digits"] if args.quick else ["--dataset", "mnist", "--data", str(args.data.resolve())]
    seed = ["--seed", str(args.seed)]

    def cli(*a):
        proc = subprocess.run(exe + [str(x) for x in a], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"failed: cleanpipe {' '.join(map(str, a))}\n{proc.stderr[-2000:]}")

    results = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for cond in args.conditions:
            kind, rate = cond.split(":")
            run = Path(tmp) / cond.replace(":", "_")
            cli("noise", run, *data, "--kind", kind, "--rate", rate, *seed)
            cli("crossval", run, *seed)
            cli("prune", run, "--top", 0)
            cli("train", run, "--method", "noisy-student", "--iterations", args.iterations, *seed, *extra)
            results[cond] = json.loads((run / "train" / "manifest.json").read_text())["metrics"]
            print(f"{cond}: " + ", ".join(f"{r['role']} {r['iteration']} {r['test_accuracy']:.4f}"
                                          for r in results[cond]["iterations"]), file=sys.stderr, flush=True)
    minutes = (time.perf_counter() - t0) / 60
    title = "digits (1,437 train / 360 test)" if args.quick else "MNIST-10k (8,000 train / 2,000 test)"
    command = " ".join(["python", "pipelines/bench_noisy_student.py", *sys.argv[1:]])
    print(f"`{command}`: {title}, seed {args.seed}; {minutes:.1f} min on this machine\n")
    heads = [c.replace(":", " ") for c in args.conditions]
    print("| Noisy Student | " + " | ".join(heads) + " |")
    print("| --- |" + " --- |" * len(heads))
    n_rounds = max(len(m["iterations"]) for m in results.values())
    for i in range(n_rounds):
        name = "teacher (kept examples), test accuracy %" if i == 0 else f"student {i} (kept + pseudo-labeled), test accuracy %"
        cells = []
        for c in args.conditions:
            rounds = results[c]["iterations"]
            if i >= len(rounds):
                cells.append("")
                continue
            r = rounds[i]
            cells.append(f"{100 * r['test_accuracy']:.2f}" + (f" (+{r['n_pseudo']:,} pseudo)" if i else f" ({r['n_labeled']:,} kept)"))
        print(f"| {name} | " + " | ".join(cells) + " |")

    def row(name, fn):
        print(f"| {name} | " + " | ".join(fn(results[c]) for c in args.conditions) + " |")

    def pct(v):
        return "" if v is None else f"{100 * v:.2f}"

    row("flagged: relabel / confirm / unresolved", lambda m: f"{m['n_relabel']:,} / {m['n_confirm']:,} / {m['n_unresolved']:,}")
    row("relabels right %", lambda m: pct(m.get("relabel_accuracy")))
    row("confirms right %", lambda m: pct(m.get("confirm_accuracy")))
    row("training labels right %, given -> corrected",
        lambda m: f"{pct(m['label_accuracy_given'])} -> {pct(m['label_accuracy_corrected'])}")


if __name__ == "__main__":
    main()
