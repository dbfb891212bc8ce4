#!/usr/bin/env bash
# The Confident Learning paper's CIFAR-10 experiment (Table 2), end to end, for a user with
# CIFAR-10 on disk (cifar-10-batches-py) and a GPU:
#   noise with the paper's recipe (random noise matrix, seed 0) -> 4-fold crossval ->
#   the five pruning methods -> Co-teaching on the kept data.
#
#   bash pipelines/cl_cifar10_table2.sh CIFAR10_DIR [RUNS_DIR]
#
# Environment (defaults in brackets):
#   NOISES ["0.2 0.4 0.7"]      noise rates; the paper's "70%" files came from noise_amount 0.6 whose
#                               trace was truncated to 3: with cleanpipe's rounding, --rate 0.7 gives it
#   SPARSITIES ["0 0.2 0.4 0.6"] shares of zero off-diagonal noise rates
#   FOLDS [4]  EPOCHS [crossval default: 30]  DEVICE [auto]  SEED [0]
#   TRAIN_EPOCHS [200]           Co-teaching epochs on each kept subset
#   TRAIN_MODEL [cnn9]           the network Co-teaching trains (the paper's 9-layer CNN)
#   PYTHON [python3]             the interpreter that has cleanpipe installed
#   CROSSVAL_ARGS [""]           more crossval options, e.g. "--executor ray --gpus-per-fold 1" (one fold
#                                per GPU) or "--executor slurm --slurm-partition gpu --slurm-gpus-per-fold 1"
set -euo pipefail
CIFAR=${1:?usage: cl_cifar10_table2.sh CIFAR10_DIR [RUNS_DIR]}
RUNS=${2:-runs/cl_table2}
NOISES=${NOISES:-"0.2 0.4 0.7"}
SPARSITIES=${SPARSITIES:-"0 0.2 0.4 0.6"}
FOLDS=${FOLDS:-4}
DEVICE=${DEVICE:-auto}
SEED=${SEED:-0}
TRAIN_EPOCHS=${TRAIN_EPOCHS:-200}
TRAIN_MODEL=${TRAIN_MODEL:-cnn9}
CP="${PYTHON:-python3} -m cleanpipe"
EPOCH_ARGS=()
[ -n "${EPOCHS:-}" ] && EPOCH_ARGS=(--epochs "$EPOCHS")
METHODS="argmax cj-only cl-pbc cl-pbnr cl-both"
HAS_TRAIN=0
$CP train --help >/dev/null 2>&1 && HAS_TRAIN=1

for n in $NOISES; do
  for s in $SPARSITIES; do
    run="$RUNS/noise${n}_sparsity${s}"
    echo "== noise $n, sparsity $s -> $run"
    $CP noise "$run" --dataset cifar10 --data "$CIFAR" --kind random --rate "$n" --sparsity "$s" --seed "$SEED" >/dev/null
    # shellcheck disable=SC2086 # CROSSVAL_ARGS is a list of options
    $CP crossval "$run" --folds "$FOLDS" --device "$DEVICE" --seed "$SEED" "${EPOCH_ARGS[@]}" ${CROSSVAL_ARGS:-}
    for m in $METHODS; do
      $CP prune "$run" --method "$m" --top 0
      rm -rf "$run/prune-$m"
      cp -r "$run/prune" "$run/prune-$m"   # keep each method's masks and report side by side
      if [ "$HAS_TRAIN" = 1 ]; then
        $CP train "$run" --method coteaching --subset kept --model "$TRAIN_MODEL" --epochs "$TRAIN_EPOCHS" \
            --device "$DEVICE" --seed "$SEED"
        rm -rf "$run/train-$m"
        cp -r "$run/train" "$run/train-$m"
      fi
    done
  done
done
[ "$HAS_TRAIN" = 1 ] || echo "note: the train stage is not in this cleanpipe yet; Co-teaching on the kept data was skipped"

${PYTHON:-python3} - "$RUNS" <<'PYEOF'
import json, sys
from pathlib import Path
rows = []
for run in sorted(Path(sys.argv[1]).glob("noise*_sparsity*")):
    for pm in sorted(run.glob("prune-*")):
        m = json.loads((pm / "manifest.json").read_text())["metrics"]
        acc = ""
        tm = run / f"train-{pm.name[6:]}" / "manifest.json"
        if tm.is_file():
            acc = f"{json.loads(tm.read_text())['metrics']['test_accuracy']:.4f}"
        rows.append((run.name, pm.name[6:], m["n_issues"], m["precision"], m["recall"], m["f1"], acc))
print("| condition | method | flagged | precision | recall | F1 | Co-teaching test accuracy |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for r in rows:
    print(f"| {r[0]} | {r[1]} | {r[2]:,} | {r[3]:.3f} | {r[4]:.3f} | {r[5]:.3f} | {r[6]} |")
PYEOF
