"""The saved-model format: model.pt rebuilds its network from what it records, whatever the recipes say later."""

import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from cleanpipe import recipes
from cleanpipe.data import DataSpec, load_dataset
from cleanpipe.errors import CleanpipeError
from cleanpipe.recipes import DataKind, build_network
from cleanpipe.saved_model import MODEL_FORMAT, load_model, model_probabilities


@pytest.fixture(scope="module")
def trained(tmp_path_factory, noisy_digits_run):
    run = tmp_path_factory.mktemp("saved") / "run"
    shutil.copytree(noisy_digits_run, run)
    from typer.testing import CliRunner

    from cleanpipe.cli import app

    result = CliRunner().invoke(app, ["train", str(run), "--epochs", "2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return run / "train" / "model.pt"


def test_model_pt_records_the_networks_arguments(trained):
    state = torch.load(trained, weights_only=True)
    assert state["format"] == MODEL_FORMAT and state["model"] == "small_cnn"
    assert state["architecture"] == {"width": recipes.RECIPES[DataKind.SMALL].cnn_width}  # 32 on digits' 8x8


def test_a_saved_model_loads_after_its_recipe_changes(trained, monkeypatch):
    X = load_dataset(DataSpec("digits")).X_test
    net, state = load_model(trained)
    before = model_probabilities(net, state, X, torch.device("cpu"))
    small = recipes.RECIPES[DataKind.SMALL]
    monkeypatch.setitem(recipes.RECIPES, DataKind.SMALL, replace(small, cnn_width=small.cnn_width // 4))
    fresh, arguments = build_network("small_cnn", tuple(state["input_shape"]), 10)  # what today's recipe builds
    assert arguments == {"width": small.cnn_width // 4}
    with pytest.raises(RuntimeError):  # rebuilding through the recipe, as before, would not fit the weights
        fresh.load_state_dict(state["state_dict"])
    net, state = load_model(trained)
    assert np.array_equal(model_probabilities(net, state, X, torch.device("cpu")), before)


def test_a_format_1_file_still_loads(trained, tmp_path):
    state = torch.load(trained, weights_only=True)
    old = {k: v for k, v in state.items() if k != "architecture"} | {"format": "cleanpipe-model-1"}
    torch.save(old, tmp_path / "old.pt")
    net, _ = load_model(tmp_path / "old.pt")  # format 1: the small CNN's width as the recipes gave it then
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), state["state_dict"].values()))
    torch.save({**old, "format": "someone-elses-1"}, tmp_path / "foreign.pt")
    with pytest.raises(CleanpipeError, match="not a cleanpipe model file"):
        load_model(tmp_path / "foreign.pt")
