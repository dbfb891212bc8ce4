from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MNIST_DIR = SHARED_DATA / "mnist-test"
CL_DIR = SHARED_DATA / "cl-cifar10-noise40-sparsity20"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"shared MNIST data not found at {MNIST_DIR}")
    return MNIST_DIR


@pytest.fixture(scope="session")
def cl_dir() -> Path:
    if not (CL_DIR / "true_labels.npy").is_file():
        pytest.skip(f"shared CL data not found at {CL_DIR}")
    return CL_DIR


@pytest.fixture
def cli():
    """Invoke the CLI in-process; returns (exit_code, stdout, stderr)."""
    from typer.testing import CliRunner

    from cleanpipe.cli import app

    runner = CliRunner()

    def invoke(*args):
        result = runner.invoke(app, [str(a) for a in args])
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result.exit_code, result.stdout, result.stderr

    return invoke


@pytest.fixture
def tiny_cifar10(tmp_path) -> Path:
    """A CIFAR-10 batch folder in the real pickle format: 5 x 40 training and 40 test images."""
    import pickle

    import numpy as np

    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (40, 3072), dtype=np.uint8), b"labels": [i % 10 for i in range(40)]}
        with open(root / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f, protocol=2)
    return root
