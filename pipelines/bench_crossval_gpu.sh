#!/usr/bin/env bash
# Time `cleanpipe crossval` on a CUDA machine: MNIST-10k (defaults) and a synthetic
# 50,000 x 3 x 32 x 32 uint8 dataset with the CIFAR ResNet (PreAct ResNet-18), and print
# images per second and the projected time of 4-fold CIFAR-10 cross-validation.
#
#   bash pipelines/bench_crossval_gpu.sh [MNIST_DIR] [EPOCHS_TIMED]
#
# MNIST_DIR defaults to ../shared/data/mnist-test. EPOCHS_TIMED (default 6) is how many
# epochs the ResNet fold is timed over, with and without --compile; the projection scales
# the measured throughput to the default recipe (30 epochs per fold, 4 folds).
set -euo pipefail
cd "$(dirname "$0")/.."
MNIST=${1:-../shared/data/mnist-test}
EPOCHS=${2:-6}
source pipelines/gpu_preamble.sh  # PY, CP, WORK; fails without a CUDA GPU

echo "== MNIST-10k, 40% symmetric noise, 4-fold, defaults =="
$CP noise "$WORK/mnist" --dataset mnist --data "$MNIST" --kind symmetric --rate 0.4 --seed 0 >/dev/null
start=$(date +%s.%N)
$CP crossval "$WORK/mnist" --device cuda >/dev/null
end=$(date +%s.%N)
$PY - "$WORK/mnist" "$start" "$end" <<'PYEOF'
import json, sys
m = json.load(open(f"{sys.argv[1]}/crossval/manifest.json"))
x = m["metrics"]
print(f"crossval command wall time {float(sys.argv[3]) - float(sys.argv[2]):.1f} s "
      f"(training {x['fold_seconds_total']:.1f} s, {x['train_examples_per_second']:.0f} images/s), "
      f"OOF accuracy vs true labels {x['oof_accuracy_true']:.4f}, device {m['device']}")
PYEOF

echo "== synthetic 50,000 x 3 x 32 x 32, preact_resnet18, one fold of 4 =="
$PY - "$WORK/synth.npz" <<'PYEOF'
import sys, numpy as np
rng = np.random.default_rng(0)
np.savez(sys.argv[1], X=rng.integers(0, 256, (50000, 3, 32, 32), dtype=np.uint8), y=rng.integers(0, 10, 50000),
         X_test=rng.integers(0, 256, (10, 3, 32, 32), dtype=np.uint8), y_test=np.arange(10))
PYEOF
# All 4 folds in one process: fold 0 also pays the one-time CUDA/cuDNN start-up (several
# seconds on a fresh process), folds 1-3 show the steady throughput.
start=$(date +%s.%N)
$CP crossval "$WORK/synth" --dataset npz --data "$WORK/synth.npz" --model preact_resnet18 --folds 4 \
    --epochs "$EPOCHS" --device cuda >/dev/null
end=$(date +%s.%N)
$PY - "$WORK/synth" "$start" "$end" "$EPOCHS" <<'PYEOF'
import json, statistics, sys
run, start, end, epochs = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
m = json.load(open(f"{run}/crossval/manifest.json"))
secs = [m["metrics"]["per_fold"][str(k)]["seconds"] for k in range(4)]
steady = statistics.median(secs[1:])
ips = 37500 * epochs / steady
per_fold_30 = steady * 30 / epochs
print(f"{epochs} epochs per fold on 37,500 images: folds {', '.join(f'{s:.1f}' for s in secs)} s "
      f"(command {end - start:.1f} s); steady {ips:,.0f} training images/s "
      f"(bf16, channels_last, batch {m['parameters']['batch_size']}, predictions included)")
print(f"projected 4-fold CIFAR-10 at the default 30 epochs/fold: {4 * per_fold_30 / 60:.1f} min "
      f"+ {secs[0] - steady:.0f} s start-up")
PYEOF

# torch.compile pays its compilation inside the fold; time one fold with it.
start=$(date +%s.%N)
$CP crossval "$WORK/synth-compile" --dataset npz --data "$WORK/synth.npz" --model preact_resnet18 --folds 4 --fold 0 \
    --epochs "$EPOCHS" --device cuda --compile >/dev/null
end=$(date +%s.%N)
$PY - "$WORK/synth-compile" "$start" "$end" "$EPOCHS" <<'PYEOF'
import sys, numpy as np
run, start, end, epochs = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
z = np.load(f"{run}/crossval/shards/fold_0.npz")
print(f"--compile: fold 0 with {epochs} epochs took {float(z['seconds']):.1f} s (compilation and start-up included; "
      f"command {end - start:.1f} s)")
PYEOF
