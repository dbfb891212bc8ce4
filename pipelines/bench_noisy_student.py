"""Noisy Student on MNIST-10k: teacher vs each student, and how right the relabels are.

    python pipelines/bench_noisy_student.py [--data ../shared/data/mnist-test] [--conditions symmetric:0.4 symmetric:0.8]
                                            [--iterations 2] [--seeds 0 [1 ...]] [--quick] [-- extra train options]

For each condition: synthetic noise, crossval, prune (confident learning's default), then
``cleanpipe train --method noisy-student``: a teacher on the kept examples, then ``--iterations``
noised students on kept + pseudo-labeled flagged examples. Prints the test accuracy of every network,
the decisions on the flagged examples and the share of relabels that are right (true labels known).
With several ``--seeds`` (each a whole run: other noise, folds and networks) the table shows the means
over the seeds (of counts, and of each seed's rates) and a second table every seed's accuracies,
teacher -> student 1 -> ...; a line between the two counts the iterations whose student reached its
teacher.
``--quick`` runs on digits instead of MNIST. Options after ``--`` go to ``cleanpipe train``.
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


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "mnist-test")
    ap.add_argument("--conditions", nargs="+", default=["symmetric:0.4", "symmetric:0.8"], help="KIND:RATE")
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0],
                    help="one whole run (noise, crossval, prune, train) per seed; the table shows their mean")
    ap.add_argument("--quick", action="store_true", help="digits instead of MNIST-10k")
    args = ap.parse_args(argv)
    for name in ("seeds", "conditions"):  # each pair is one run folder and one column/row of the tables
        if len(set(getattr(args, name))) < len(getattr(args, name)):
            ap.error(f"--{name} lists a value twice")
    exe = [sys.executable, "-m", "cleanpipe"]
    data = ["--dataset", "digits"] if args.quick else ["--dataset", "mnist", "--data", str(args.data.resolve())]

    def cli(*a):
        proc = subprocess.run(exe + [str(x) for x in a], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"failed: cleanpipe {' '.join(map(str, a))}\n{proc.stderr[-2000:]}")

    results: dict[str, list[dict]] = {c: [] for c in args.conditions}  # condition -> one metrics dict per seed
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for cond in args.conditions:
                kind, rate = cond.split(":")
                run = Path(tmp) / f"{cond.replace(':', '_')}_seed{seed}"
                s = ["--seed", seed]
                cli("noise", run, *data, "--kind", kind, "--rate", rate, *s)
                cli("crossval", run, *s)
                cli("prune", run, "--top", 0)
                cli("train", run, "--method", "noisy-student", "--iterations", args.iterations, *s, *extra)
                m = json.loads((run / "train" / "manifest.json").read_text())["metrics"]
                results[cond].append(m)
                print(f"seed {seed} {cond}: " + ", ".join(f"{r['role']} {r['iteration']} {r['test_accuracy']:.4f}"
                                                          for r in m["iterations"]), file=sys.stderr, flush=True)
    minutes = (time.perf_counter() - t0) / 60
    title = "digits (1,437 train / 360 test)" if args.quick else "MNIST-10k (8,000 train / 2,000 test)"
    command = shlex.join(["python", "pipelines/bench_noisy_student.py", *sys.argv[1:]])
    seeds = ", ".join(map(str, args.seeds))
    print(f"`{command}`: {title}, seed{'s' if len(args.seeds) > 1 else ''} {seeds}"
          f"{' (mean; per seed below)' if len(args.seeds) > 1 else ''}; {minutes:.1f} min on this machine\n")
    heads = [c.replace(":", " ") for c in args.conditions]
    print("| Noisy Student | " + " | ".join(heads) + " |")
    print("| --- |" + " --- |" * len(heads))

    def mean(values):
        """Mean over the seeds; None when a seed lacks the value (e.g. no confirms to rate)."""
        return None if any(v is None for v in values) else sum(values) / len(values)

    def pct(v):
        return "n/a" if v is None else f"{100 * v:.2f}"

    def count(v):
        return f"{v:,.0f}" if len(args.seeds) == 1 else f"{v:,.1f}"

    n_rounds = max(len(m["iterations"]) for ms in results.values() for m in ms)
    for i in range(n_rounds):
        name = "teacher (kept examples), test accuracy %" if i == 0 else f"student {i} (kept + pseudo-labeled), test accuracy %"
        cells = []
        for c in args.conditions:
            rounds = [m["iterations"][i] for m in results[c] if i < len(m["iterations"])]
            if not rounds:
                cells.append("")
                continue
            size = mean([r["n_pseudo"] if i else r["n_labeled"] for r in rounds])
            cells.append(pct(mean([r["test_accuracy"] for r in rounds]))
                         + (f" (+{count(size)} pseudo)" if i else f" ({count(size)} kept)"))
        print(f"| {name} | " + " | ".join(cells) + " |")

    def row(name, fn):
        print(f"| {name} | " + " | ".join(fn(results[c]) for c in args.conditions) + " |")

    row("flagged: relabel / confirm / unresolved",
        lambda ms: " / ".join(count(mean([m[k] for m in ms])) for k in ("n_relabel", "n_confirm", "n_unresolved")))
    rates = " (mean of the seeds' rates)" if len(args.seeds) > 1 else ""
    row(f"relabels right %{rates}", lambda ms: pct(mean([m.get("relabel_accuracy") for m in ms])))
    row(f"confirms right %{rates}", lambda ms: pct(mean([m.get("confirm_accuracy") for m in ms])))
    row("training labels right %, given -> corrected",
        lambda ms: f"{pct(mean([m.get('label_accuracy_given') for m in ms]))} -> "
                   f"{pct(mean([m.get('label_accuracy_corrected') for m in ms]))}")
    # Whether each student reached its own teacher, network by network.
    pairs = [(m["iterations"][i - 1]["test_accuracy"], m["iterations"][i]["test_accuracy"])
             for ms in results.values() for m in ms for i in range(1, len(m["iterations"]))]
    print(f"\nstudent >= its teacher in {sum(b >= a for a, b in pairs)} of {len(pairs)} iterations"
          f" ({len(args.seeds)} seed{'s' if len(args.seeds) > 1 else ''} x {len(args.conditions)} conditions)")
    if len(args.seeds) > 1:
        print("\n| seed | " + " | ".join(heads) + " |")
        print("| --- |" + " --- |" * len(heads))
        for j, seed in enumerate(args.seeds):
            print(f"| {seed} | " + " | ".join(" -> ".join(pct(r["test_accuracy"]) for r in results[c][j]["iterations"])
                                              for c in args.conditions) + " |")


if __name__ == "__main__":
    main()
