#!/usr/bin/env bash
# DivideMix on CIFAR-10 at the paper's schedule (Li et al., ICLR 2020), for a user with CIFAR-10 on disk
# (cifar-10-batches-py) and a GPU: two PreAct ResNet-18s, 300 epochs, a warm-up of 10 (DivideMix's
# --warmup-share 10/300; cleanpipe ramps the learning rate over it, the reference starts at its full
# rate), the appendix's lambda_u per noise (0 at 20% symmetric and 40% asymmetric, 25 at 50% and 80%,
# 50 with p_threshold 0.6 and a 5-epoch loss window at 90%), and ELR beside it.
#
#   bash pipelines/dividemix_cifar10.sh CIFAR10_DIR [RUNS_DIR]
#
# Environment (defaults in brackets):
#   CONDITIONS ["uniform:0.2 uniform:0.5 uniform:0.8 uniform:0.9 asymmetric:0.4"]   the paper's "symmetric"
#              noise redraws a label from all ten classes, the true one included: cleanpipe's `uniform`
#   EPOCHS [300]  MODEL [preact_resnet18]  DEVICE [auto]  SEED [0]  METHODS ["dividemix elr"]
#   PYTHON [python3]   the interpreter that has cleanpipe installed
# A shortened run for timing: EPOCHS=3 CONDITIONS=uniform:0.5 (the table's seconds per epoch).
set -euo pipefail
CIFAR=${1:?usage: dividemix_cifar10.sh CIFAR10_DIR [RUNS_DIR]}
RUNS=${2:-runs/dividemix_cifar10}
CONDITIONS=${CONDITIONS:-"uniform:0.2 uniform:0.5 uniform:0.8 uniform:0.9 asymmetric:0.4"}
EPOCHS=${EPOCHS:-300}
MODEL=${MODEL:-preact_resnet18}
DEVICE=${DEVICE:-auto}
SEED=${SEED:-0}
METHODS=${METHODS:-"dividemix elr"}
CP="${PYTHON:-python3} -m cleanpipe"
WARMUP=$(${PYTHON:-python3} -c "print(max(10 / 300, 1.5 / $EPOCHS))")  # 10 of 300 epochs; at least one epoch

for cond in $CONDITIONS; do
  kind=${cond%%:*}
  rate=${cond##*:}
  run="$RUNS/${kind}${rate}"
  echo "== $kind $rate -> $run"
  $CP noise "$run" --dataset cifar10 --data "$CIFAR" --kind "$kind" --rate "$rate" --seed "$SEED" >/dev/null
  case "$cond" in  # the paper's appendix (CIFAR-10)
    uniform:0.2) extra="--lambda-u 0" ;;
    asymmetric:*) extra="--lambda-u 0 --confidence-penalty" ;;
    uniform:0.9) extra="--lambda-u 50 --p-threshold 0.6 --loss-window 5" ;;
    *) extra="--lambda-u 25" ;;
  esac
  for method in $METHODS; do
    opts="--subset all"
    [ "$method" = dividemix ] && opts="$opts --warmup-share $WARMUP $extra"
    [ "$method" = elr ] && case "$cond" in asymmetric:*) opts="$opts --elr-beta 0.9 --elr-lambda 1" ;; esac
    mkdir -p "$run/$method"
    $CP train "$run" --method "$method" $opts --model "$MODEL" --epochs "$EPOCHS" --device "$DEVICE" \
        --seed "$SEED" >/dev/null
    cp "$run/train/manifest.json" "$run/$method/manifest.json"
    cp "$run/train/history.csv" "$run/$method/history.csv"
  done
done

${PYTHON:-python3} - "$RUNS" <<'PYEOF'
import csv, json, sys
from pathlib import Path
print("| condition | method | test accuracy (last epoch) | s / epoch | device |")
print("| --- | --- | --- | --- | --- |")
for run in sorted(Path(sys.argv[1]).iterdir()):
    for d in sorted(p for p in run.iterdir() if (p / "history.csv").is_file() and p.name != "train"):
        m = json.loads((d / "manifest.json").read_text())
        rows = list(csv.DictReader((d / "history.csv").open()))
        sec = [float(r["seconds"]) for r in rows]
        print(f"| {run.name} | {d.name} | {100 * m['metrics']['test_accuracy']:.2f} | {sum(sec) / len(sec):.1f} | "
              f"{m.get('device', '')} |")
PYEOF
