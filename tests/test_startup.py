"""A lean start-up: each command imports only the libraries it uses (checked on ``sys.modules`` in a fresh interpreter)."""

import json
import subprocess
import sys

HEAVY = ("torch", "kornia", "cleanlab", "sklearn", "matplotlib", "pandas", "scipy")

# Runs the CLI's entry point with the given arguments, then prints which heavy libraries it had imported.
PROBE = f"""
import json, sys
from cleanpipe.cli import entry
sys.argv = ["cleanpipe", *json.loads(sys.argv[1])]
try:
    entry()
    code = 0
except SystemExit as e:
    code = e.code
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & {set(HEAVY)!r})
print("IMPORTED " + json.dumps({{"code": code, "heavy": heavy}}))
"""


def imported(*args) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps([str(a) for a in args])],
                         capture_output=True, text=True, timeout=300)
    line = [s for s in out.stdout.splitlines() if s.startswith("IMPORTED ")]
    assert line, out.stderr
    return json.loads(line[-1][len("IMPORTED "):])


def test_help_imports_no_heavy_library():
    got = imported("--help")
    assert got["code"] == 0 and got["heavy"] == []


def test_crossval_on_mnist_imports_torch_but_no_cleanlab_sklearn_matplotlib_or_kornia(tmp_path, mnist_dir):
    run = tmp_path / "r"
    got = imported("crossval", run, "--dataset", "mnist", "--data", mnist_dir, "--folds", 2, "--epochs", 1,
                   "--repeats", 1, "--device", "cpu")
    assert got["code"] == 0 and (run / "crossval" / "pred_probs.npy").is_file()
    # scikit-learn too: neither the hold-out split nor the fold plan needs it (0.8 s of start-up)
    assert got["heavy"] == ["torch"]


def test_noise_trains_nothing_and_leaves_torch_alone(tmp_path):
    got = imported("noise", tmp_path / "r", "--dataset", "digits", "--kind", "symmetric", "--rate", 0.1)
    assert got["code"] == 0 and "torch" not in got["heavy"] and "kornia" not in got["heavy"]
