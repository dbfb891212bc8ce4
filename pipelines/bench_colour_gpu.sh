#!/usr/bin/env bash
# The GPU checks of the colour benchmark, as one short script for a lent CUDA machine (about 5 minutes):
#   1. 4-fold crossval at CIFAR-10 size: 50,000 colour digits (pipelines/bench_colour.py's task), the airbench
#      net, 10 epochs per fold; folds 1-3 show the steady time after fold 0's warm-up (target: 4 folds <= 15 s).
#      The 50,000 images reuse the 8,000 training digits about 6 times each (other colours and places), so
#      a digit's twins sit in other folds: the out-of-fold accuracy printed is not a generalisation measure,
#      the timings are the point;
#   2. one fold with --compile;
#   3. bf16 and channels_last on and off, and PreAct ResNet-18, one model each (bench_colour.py --device cuda);
#   4. IEG's and L2R's step cost against a standard step (bench_step_cost.py; target IEG <= 4x).
#
#   bash pipelines/bench_colour_gpu.sh [MNIST_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
MNIST=${1:-../shared/data/mnist-test}
source pipelines/gpu_preamble.sh  # PY, CP, WORK; fails without a CUDA GPU

$PY - "$MNIST" "$WORK/colour.npz" <<'PYEOF'
import sys, numpy as np
from cleanpipe.data import DataSpec, load_dataset
from cleanpipe.data.synthetic import colour_digits
ds = load_dataset(DataSpec("mnist", sys.argv[1]))
X, y, _ = colour_digits(ds.X_train, ds.y_train, 50000, seed=0)
Xt, yt, _ = colour_digits(ds.X_test, ds.y_test, seed=1)
np.savez(sys.argv[2], X=X, y=y, X_test=Xt, y_test=yt)
PYEOF

for extra in "" "--compile"; do
  echo "== 50,000 colour digits, airbench, 4 folds x 10 epochs ${extra} =="
  start=$(date +%s.%N)
  $CP crossval "$WORK/run$extra" --dataset npz --data "$WORK/colour.npz" --model airbench --folds 4 --epochs 10 \
      --device cuda $extra >/dev/null
  end=$(date +%s.%N)
  $PY - "$WORK/run$extra" "$start" "$end" <<'PYEOF'
import json, statistics, sys
m = json.load(open(f"{sys.argv[1]}/crossval/manifest.json"))
secs = [m["metrics"]["per_fold"][str(k)]["seconds"] for k in range(4)]
print(f"folds {', '.join(f'{s:.1f}' for s in secs)} s; 4 folds after warm-up {4 * statistics.median(secs[1:]):.1f} s; "
      f"command {float(sys.argv[3]) - float(sys.argv[2]):.1f} s; OOF accuracy {m['metrics']['oof_accuracy']:.4f}")
PYEOF
done

echo "== one model each: bf16 / channels_last off, PreAct ResNet-18 (10 epochs, 50,000 images) =="
$PY pipelines/bench_colour.py --data "$MNIST" --device cuda --train 50000 --epochs 10 \
    --nets airbench,preact_resnet18,airbench:bf16=false,airbench:channels_last=false | tail -9

echo "== step cost per method =="
$PY pipelines/bench_step_cost.py --data "$MNIST" --device cuda --methods standard l2r ieg
