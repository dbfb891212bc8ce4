from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MNIST_DIR = SHARED_DATA / "mnist-test"
CL_DIR = SHARED_DATA / "cl-cifar10-noise40-sparsity20"


def pytest_collection_modifyitems(items):
    # Every test on the shared MNIST-10k images is an end-to-end run of minutes: part of `slow`.
    for item in items:
        if "mnist_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


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


@pytest.fixture(scope="session")
def noisy_digits_run(tmp_path_factory) -> Path:
    """digits with 10% symmetric noise, cross-validated and pruned (read-only: copy it before changing it)."""
    from typer.testing import CliRunner

    from cleanpipe.cli import app

    run = tmp_path_factory.mktemp("noisy-digits") / "run"
    runner = CliRunner()
    for args in (["noise", run, "--dataset", "digits", "--kind", "symmetric", "--rate", "0.1"],
                 ["crossval", run, "--epochs", "10", "--folds", "2"], ["prune", run]):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
    return run


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium driven by selenium (Debian's chromium + chromium-driver; nothing is downloaded).

    Skips where no Chromium is installed, except in CI (``CI`` set), where a skip would hide the
    browser tests: there it fails, naming the packages `.ci/run` installs. Downloads land in
    ``browser.download_dir``.
    """
    import os
    import shutil

    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver_path = shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        webdriver = None
    if webdriver is None or chromium is None or driver_path is None:
        missing = "selenium (pip install -e '.[dev]')" if webdriver is None else "chromium and chromedriver (apt-get install chromium chromium-driver)"
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(f"CI must run the browser tests, but {missing} is missing; .ci/run installs them")
        pytest.skip(f"no headless browser here: {missing} not found")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tmp_path / "chromium-profile"
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    # As root in a container Chromium needs --no-sandbox; the network flags stop it calling home on a closed network.
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1280,900", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    drv = webdriver.Chrome(service=Service(driver_path), options=options)
    drv.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    drv.download_dir = downloads
    try:
        yield drv
    finally:
        drv.quit()


@pytest.fixture(autouse=True, scope="session")
def _image_cache(tmp_path_factory):
    """Decoded image folders are cached in a folder of the test session's own, never in ~/.cache."""
    import os

    old = os.environ.get("CLEANPIPE_CACHE")
    os.environ["CLEANPIPE_CACHE"] = str(tmp_path_factory.mktemp("cleanpipe-cache"))
    yield
    if old is None:
        os.environ.pop("CLEANPIPE_CACHE", None)
    else:
        os.environ["CLEANPIPE_CACHE"] = old


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits with 40% of the training labels flipped to another class (seeded)."""
    import numpy as np

    from cleanpipe.data import DataSpec, load_dataset

    ds = load_dataset(DataSpec("digits"))
    rng = np.random.default_rng(0)
    noisy = ds.y_train.copy()
    flip = rng.random(len(noisy)) < 0.4
    noisy[flip] = (noisy[flip] + rng.integers(1, 10, flip.sum())) % 10
    return ds, noisy
