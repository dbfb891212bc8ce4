# Sourced by the GPU scripts (bench_*_gpu.sh): the interpreter, a scratch folder removed on exit, and a
# check that a CUDA GPU is visible (it names the device, torch and CUDA, so every log says where it ran).
PY=${PYTHON:-python3}
CP="$PY -m cleanpipe"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

$PY - <<PYEOF
import torch
assert torch.cuda.is_available(), "no CUDA GPU visible: this script is for a GPU machine"
print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
PYEOF
