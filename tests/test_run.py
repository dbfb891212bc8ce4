"""The run directory: atomic stages, digests, stale-input detection."""

import json

import numpy as np
import pytest

from cleanpipe.errors import CleanpipeError
from cleanpipe.rundir import RunDir


def _write(run, stage, value, inputs=()):
    with run.write_stage(stage) as w:
        for p in inputs:
            w.record_input(p)
        w.save_npy("a.npy", np.array([value]))
        w.finish(parameters={"v": value}, metrics={})


def test_stage_is_swapped_in_whole(tmp_path):
    run = RunDir(tmp_path / "r")
    _write(run, "noise", 1)
    with pytest.raises(RuntimeError):
        with run.write_stage("noise") as w:
            w.save_npy("a.npy", np.array([2]))
            raise RuntimeError("interrupted")
    assert np.load(run.path("noise", "a.npy"))[0] == 1
    assert not any(p.name.startswith(".") for p in run.root.iterdir())


def test_transaction_removes_a_run_it_created(tmp_path):
    run = RunDir(tmp_path / "new")
    with pytest.raises(CleanpipeError):
        with run.transaction():
            _write(run, "noise", 1)
            raise CleanpipeError("boom")
    assert not run.root.exists()


def test_require_detects_edits_and_stale_inputs(tmp_path):
    run = RunDir(tmp_path / "r")
    with pytest.raises(CleanpipeError, match="no crossval stage yet"):
        run.require("crossval")
    _write(run, "noise", 1)
    _write(run, "crossval", 5, inputs=[run.path("noise", "a.npy")])
    assert run.require("crossval")["parameters"] == {"v": 5}
    assert run.is_current("crossval", {"v": 5}) and not run.is_current("crossval", {"v": 6})
    _write(run, "noise", 2)  # upstream re-run: crossval is now stale
    with pytest.raises(CleanpipeError, match="crossval stage is stale"):
        run.require("crossval")
    _write(run, "crossval", 5, inputs=[run.path("noise", "a.npy")])
    np.save(run.path("noise", "a.npy"), np.array([3]))  # hand edit of an output
    with pytest.raises(CleanpipeError, match="changed since"):
        run.require("noise")


def test_manifest_contents(tmp_path):
    run = RunDir(tmp_path / "r")
    _write(run, "noise", 1)
    man = json.loads(run.path("noise", "manifest.json").read_text())
    for key in ("stage", "cleanpipe_version", "parameters", "inputs", "outputs", "metrics", "wall_time_s", "device"):
        assert key in man
    assert len(man["outputs"]["a.npy"]) == 64


def test_interrupted_swap_is_recovered(tmp_path):
    run = RunDir(tmp_path / "r")
    _write(run, "noise", 1)
    (run.root / "noise").rename(run.root / ".noise.old")  # as if killed between the two renames
    (run.root / ".crossval.partial").mkdir()
    run = RunDir(run.root)
    assert np.load(run.path("noise", "a.npy"))[0] == 1
    assert not (run.root / ".crossval.partial").exists()


def test_corrupt_manifest_is_a_clear_error(tmp_path):
    run = RunDir(tmp_path / "r")
    _write(run, "noise", 1)
    run.path("noise", "manifest.json").write_text("{not json")
    with pytest.raises(CleanpipeError, match="corrupt JSON"):
        run.require("noise")


def test_run_path_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(CleanpipeError, match="is a file"):
        RunDir(f)
