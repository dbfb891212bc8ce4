#!/usr/bin/env bash
# INCV's CIFAR-10 experiment (Chen et al., ICML 2019) with the paper's settings, for a user with
# CIFAR-10 on disk (cifar-10-batches-py) and a GPU: ResNet-32, 50 epochs per model, 4 iterations,
# symmetric noise 0.2 / 0.5 / 0.8 and INCV's asymmetric (pair-flip) noise 0.4.
#
#   bash pipelines/incv_cifar10.sh CIFAR10_DIR [RUNS_DIR]
#
# Environment (defaults in brackets):
#   CONDITIONS ["symmetric:0.2 symmetric:0.5 symmetric:0.8 pairflip:0.4"]   KIND:RATE pairs
#   MODEL [resnet32]  EPOCHS [50]  ITERATIONS [4]  DEVICE [auto]  SEED [0]
#   THEORY [1]   also run `cleanpipe theory` (train on one half, score the other) per condition
#   PYTHON [python3]   the interpreter that has cleanpipe installed
set -euo pipefail
CIFAR=${1:?usage: incv_cifar10.sh CIFAR10_DIR [RUNS_DIR]}
RUNS=${2:-runs/incv_cifar10}
CONDITIONS=${CONDITIONS:-"symmetric:0.2 symmetric:0.5 symmetric:0.8 pairflip:0.4"}
MODEL=${MODEL:-resnet32}
EPOCHS=${EPOCHS:-50}
ITERATIONS=${ITERATIONS:-4}
DEVICE=${DEVICE:-auto}
SEED=${SEED:-0}
CP="${PYTHON:-python3} -m cleanpipe"

for cond in $CONDITIONS; do
  kind=${cond%%:*}
  rate=${cond##*:}
  run="$RUNS/${kind}${rate}"
  echo "== $kind $rate -> $run"
  $CP noise "$run" --dataset cifar10 --data "$CIFAR" --kind "$kind" --rate "$rate" --seed "$SEED" >/dev/null
  $CP prune "$run" --method incv --model "$MODEL" --epochs "$EPOCHS" --iterations "$ITERATIONS" \
      --device "$DEVICE" --seed "$SEED" --top 0
  if [ "${THEORY:-1}" = 1 ]; then
    $CP theory "$run" --model "$MODEL" --epochs "$EPOCHS" --device "$DEVICE" --seed "$SEED" >/dev/null
  fi
done

${PYTHON:-python3} - "$RUNS" <<'PYEOF'
import json, sys
from pathlib import Path
print("| condition | selected | label precision | label recall | estimated noise | true noise | wall time (s) |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for run in sorted(Path(sys.argv[1]).iterdir()):
    man = run / "prune" / "manifest.json"
    if not man.is_file():
        continue
    m = json.loads(man.read_text())
    x = m["metrics"]
    print(f"| {run.name} | {x['n_selected']:,} | {x.get('label_precision', float('nan')):.3f} | "
          f"{x.get('label_recall', float('nan')):.3f} | {x['eval_ratio']:.3f} | {x['true_noise_rate']:.3f} | "
          f"{m['wall_time_s']:.0f} |")
theory = [r for r in sorted(Path(sys.argv[1]).iterdir()) if (r / "theory" / "manifest.json").is_file()]
if theory:
    print("\n| condition | noisy accuracy (measured / theory) | label precision | label recall |")
    print("| --- | --- | --- | --- |")
    for run in theory:
        x = json.loads((run / "theory" / "manifest.json").read_text())["metrics"]
        cells = [f"{x['measured'][q]:.3f} / {x['predicted'][q]:.3f}"
                 for q in ("noisy_accuracy", "label_precision", "label_recall")]
        print(f"| {run.name} | " + " | ".join(cells) + " |")
PYEOF
