"""Folds on Ray and on Slurm (submitit's local cluster), streamed data, and the folder source's decode cache."""

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

from cleanpipe.data import DataSpec
from cleanpipe.executors import RayOptions, SlurmOptions, placement
from cleanpipe.rundir import RunDir
from cleanpipe.stages.crossval import run_crossval_stage

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]
DIGITS = dict(epochs=1, n_folds=3, seed=0)


@pytest.fixture(scope="module")
def local_bytes(tmp_path_factory) -> bytes:
    """digits' pred_probs.npy from the local executor, one torch thread per fold (the reference)."""
    run = RunDir(tmp_path_factory.mktemp("local") / "run")
    run_crossval_stage(run, spec=DataSpec("digits"), threads=1, **DIGITS)
    return run.path("crossval", "pred_probs.npy").read_bytes()


@pytest.fixture
def ray_cleanup():
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


def test_ray_folds_give_the_same_bytes_as_local(tmp_path, local_bytes, ray_cleanup):
    pytest.importorskip("ray")
    run = RunDir(tmp_path / "run")
    stage = run_crossval_stage(run, spec=DataSpec("digits"), where=placement("ray", RayOptions(num_cpus=2, cpus_per_task=1)),
                               **DIGITS)
    assert sorted(stage.trained) == [0, 1, 2]
    assert run.path("crossval", "pred_probs.npy").read_bytes() == local_bytes


def test_a_killed_ray_driver_resumes_without_recomputing_a_finished_fold(tmp_path, local_bytes, ray_cleanup):
    pytest.importorskip("ray")
    root = tmp_path / "run"
    shards = root / "crossval" / "shards"
    cmd = [sys.executable, "-m", "cleanpipe", "crossval", str(root), "--dataset", "digits", "--epochs", "1", "--folds", "3",
           "--executor", "ray", "--cpus-per-fold", "1"]
    # Its own session, so that the kill takes the driver and the Ray instance it started.
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 200
        while not list(shards.glob("fold_*.npz")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    done = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in shards.glob("fold_*.npz")}
    assert done, "no fold finished before the kill"
    stage = run_crossval_stage(RunDir(root), where=placement("ray", RayOptions(num_cpus=2, cpus_per_task=1)), **DIGITS)
    finished = {int(name.split("_")[1].split(".")[0]) for name in done}
    assert set(stage.reused) == finished and not finished & set(stage.trained)  # no finished fold trained again
    for name, (mtime, data) in done.items():
        assert (shards / name).stat().st_mtime_ns == mtime and (shards / name).read_bytes() == data
    assert RunDir(root).path("crossval", "pred_probs.npy").read_bytes() == local_bytes


def test_slurm_job_array_through_submitits_local_cluster_waits_or_leaves_combine(tmp_path, local_bytes):
    pytest.importorskip("submitit")
    run = RunDir(tmp_path / "run")
    opts = SlurmOptions(cluster="local", cpus_per_task=1)
    run_crossval_stage(run, spec=DataSpec("digits"), where=placement("slurm", slurm=opts), **DIGITS)
    assert run.path("crossval", "pred_probs.npy").read_bytes() == local_bytes
    assert any(run.path("crossval", "slurm").glob("*/*_log.err"))  # the array's logs are kept

    later = RunDir(tmp_path / "later")
    stage = run_crossval_stage(later, spec=DataSpec("digits"), where=placement("slurm", slurm=replace(opts, wait=False)),
                               **DIGITS)
    assert stage.manifest is None and stage.job_id and stage.missing == [0, 1, 2]
    deadline = time.time() + 200
    while len(list(later.path("crossval", "shards").glob("fold_*.npz"))) < 3 and time.time() < deadline:
        time.sleep(0.2)
    run_crossval_stage(later, combine=True, **DIGITS)
    assert later.path("crossval", "pred_probs.npy").read_bytes() == local_bytes


def test_streaming_from_host_memory_gives_the_same_pred_probs(tmp_path, local_bytes):
    from cleanpipe.engine import DeviceData

    assert DeviceData(np.zeros((10, 1, 8, 8), np.uint8), __import__("torch").device("cpu"), budget=100).streamed
    run = RunDir(tmp_path / "run")
    run_crossval_stage(run, spec=DataSpec("digits"), threads=1, device_memory=1000, **DIGITS)  # 1 kB: streamed
    assert run.path("crossval", "pred_probs.npy").read_bytes() == local_bytes


def test_executor_errors_are_one_line_and_leave_nothing(tmp_path, cli):
    for args, message in [
        (("--executor", "dask"), "--executor must be local, ray or slurm"),
        (("--executor", "ray", "--address", "127.0.0.1:1"), "no Ray cluster answers there"),
        (("--executor", "ray", "--address", "nonsense"), "expected HOST:PORT"),
        (("--executor", "slurm"), "no Slurm here (sbatch not found)"),
        (("--executor", "slurm", "--slurm-option", "account"), "KEY=VALUE"),
        (("--device-memory", "lots"), "--device-memory must be a size"),
        (("--executor", "ray", "--fold", "0"), "--fold runs one fold here"),
    ]:
        code, out, err = cli("crossval", tmp_path / "r", "--dataset", "digits", *args)
        assert code == 2 and message in err and err.count("\n") == 1, (args, err)
    assert not (tmp_path / "r").exists()


def test_the_folder_sources_second_load_is_ten_times_faster(tmp_path, monkeypatch):
    from PIL import Image

    from cleanpipe.data import load_dataset

    monkeypatch.setenv("CLEANPIPE_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for k in range(2000):
        folder = tmp_path / "imgs" / f"c{k % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(folder / f"{k:04d}.png")
    spec = DataSpec("folder", path=str(tmp_path / "imgs"), image_size=32)
    t0 = time.perf_counter()
    first = load_dataset(spec)
    t1 = time.perf_counter()
    second = load_dataset(spec)
    t2 = time.perf_counter()
    assert np.array_equal(first.X_train, second.X_train) and first.fingerprint() == second.fingerprint()
    assert (t1 - t0) >= 10 * (t2 - t1), f"first {t1 - t0:.3f} s, second {t2 - t1:.3f} s"
    (tmp_path / "imgs" / "c0" / "0000.png").unlink()  # another file list: decoded again, not a stale array
    assert len(load_dataset(spec).y_train) + len(load_dataset(spec).y_test) == 1999


def test_a_failed_fold_is_reported_and_the_finished_ones_stay(tmp_path, monkeypatch):
    """A fold that fails (after Ray's retry) ends the command with its error; the run and finished shards remain."""
    pytest.importorskip("ray")
    from cleanpipe.errors import CleanpipeError
    from cleanpipe.executors import ray_tasks

    def flaky(task, todo, options):  # the driver's side of map_ray: fold 0 arrives, fold 1 failed twice
        yield 0, task(0), None
        for k in todo[1:]:
            yield k, None, "RuntimeError: CUDA error: out of memory"

    monkeypatch.setattr(ray_tasks, "map_ray", flaky)
    run = RunDir(tmp_path / "new-run")
    with pytest.raises(CleanpipeError, match=r"fold\(s\) 1, 2 failed \(fold 1: RuntimeError: CUDA error: out of memory\); "
                                             r"the 1 finished fold\(s\) are kept"):
        run_crossval_stage(run, spec=DataSpec("digits"), where="ray", **DIGITS)
    assert (tmp_path / "new-run" / "dataset.json").is_file()
    assert [p.name for p in run.path("crossval", "shards").glob("fold_*.npz")] == ["fold_0.npz"]
    stage = run_crossval_stage(run, threads=1, **DIGITS)  # re-run: only the missing folds train
    assert stage.reused == [0] and sorted(stage.trained) == [1, 2]
