#!/usr/bin/env bash
# IEG's CIFAR experiment (Zhang et al., CVPR 2020) with the paper's settings, for a user with CIFAR-10
# or CIFAR-100 on disk and a GPU: WRN-28-10, batch 100, lr 0.1 with cosine restarts (500 steps, x1.5,
# peak x0.9), about 400 epochs (200,000 steps), SGD momentum 0.9, EMA 0.999, 10 trusted images per class
# (CIFAR-10; the paper's 0.2% probe), AutoAugment as the strong view, p = 5, k = 20, and IEG's uniform
# noise (a label redrawn from all classes). Each condition trains IEG, L2R and plain training on all
# noisy labels (the paper's supervised baseline) and prints a table of test accuracy.
#
#   bash pipelines/ieg_cifar.sh CIFAR_DIR [RUNS_DIR]
#
# Environment (defaults in brackets):
#   DATASET [cifar10]   cifar10 (cifar-10-batches-py) or cifar100 (cifar-100-python)
#   CONDITIONS ["uniform:0.2 uniform:0.4 uniform:0.8"]   KIND:RATE pairs (asymmetric:0.4 for CIFAR-10)
#   METHODS ["ieg l2r standard"]   MODEL [wrn28_10] (resnet29 is the paper's smaller network)
#   EPOCHS [400]  BATCH [100]  LR [0.1]  PROBE [10] per class  POLICY [autoaugment]  DEVICE [auto]  SEED [0]
#   PYTHON [python3]   the interpreter that has cleanpipe installed
set -euo pipefail
DATA=${1:?usage: ieg_cifar.sh CIFAR_DIR [RUNS_DIR]}
RUNS=${2:-runs/ieg_cifar}
DATASET=${DATASET:-cifar10}
CONDITIONS=${CONDITIONS:-"uniform:0.2 uniform:0.4 uniform:0.8"}
METHODS=${METHODS:-"ieg l2r standard"}
MODEL=${MODEL:-wrn28_10}
EPOCHS=${EPOCHS:-400}
BATCH=${BATCH:-100}
LR=${LR:-0.1}
PROBE=${PROBE:-10}
POLICY=${POLICY:-autoaugment}
DEVICE=${DEVICE:-auto}
SEED=${SEED:-0}
CP="${PYTHON:-python3} -m cleanpipe"

for cond in $CONDITIONS; do
  kind=${cond%%:*}
  rate=${cond##*:}
  run="$RUNS/${DATASET}_${kind}${rate}"
  echo "== $DATASET $kind $rate -> $run"
  $CP noise "$run" --dataset "$DATASET" --data "$DATA" --kind "$kind" --rate "$rate" --seed "$SEED" >/dev/null
  for method in $METHODS; do
    out="$run/train-$method"
    if [ -f "$out/manifest.json" ]; then echo "   $method: done"; continue; fi
    extra=()
    if [ "$method" != standard ]; then
      extra=(--probe-per-class "$PROBE" --schedule restarts --policy "$POLICY")
    fi
    $CP train "$run" --method "$method" --subset all --model "$MODEL" --epochs "$EPOCHS" --batch-size "$BATCH" \
        --lr "$LR" --device "$DEVICE" --seed "$SEED" "${extra[@]}"
    rm -rf "$out" && cp -r "$run/train" "$out"  # the next method's training replaces RUN/train
  done
done

${PYTHON:-python3} - "$RUNS" "$METHODS" <<'PYEOF'
import json, sys
from pathlib import Path
methods = sys.argv[2].split()
print("| condition | true noise | " + " | ".join(methods) + " |")
print("| --- | --- |" + " --- |" * len(methods))
for run in sorted(Path(sys.argv[1]).iterdir()):
    cells = []
    for m in methods:
        man = run / f"train-{m}" / "manifest.json"
        cells.append(f"{100 * json.loads(man.read_text())['metrics']['test_accuracy']:.2f}" if man.is_file() else "—")
    noise = run / "noise" / "manifest.json"
    rate = json.loads(noise.read_text())["metrics"]["actual_noise_rate"] if noise.is_file() else float("nan")
    print(f"| {run.name} | {rate:.3f} | " + " | ".join(cells) + " |")
PYEOF
