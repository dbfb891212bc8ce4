"""What every training method shares: its registry entry, the arrays it trains on, and the trainer.

A training method is one module in :mod:`cleanpipe.robust` with

- an options dataclass that validates itself (its fields may carry ``metadata=cli_option(...)``: the
  command line's flag and help for it, generated from the dataclass);
- the engine's loss step (a :class:`cleanpipe.engine.Method`);
- a :class:`TrainingMethod` subclass declaring what it needs (a prune stage, which rows), how it
  builds its step from options (:meth:`TrainingMethod.prepare`), and what files it adds to
  ``RUN/train/`` (:meth:`TrainingMethod.outputs`);

and one line in :mod:`cleanpipe.robust.registry`. :func:`cleanpipe.robust.train_model` runs any of
them on arrays; the train stage (:mod:`cleanpipe.stages.train`) reads a run, asks the method, calls it and
writes the files.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from cleanpipe.engine import (
    DeviceData,
    Standard,
    device_name,
    fit,
    place_nets,
    predict_proba,
)
from cleanpipe.files import atomic_path, atomic_write_bytes
from cleanpipe.lazy import lazy_module
from cleanpipe.recipes import build_network
from cleanpipe.validation import check_choice

torch = lazy_module("torch")

CHECKPOINT_EVERY_S = 30.0  # an interrupted training resumes from its last checkpoint (see engine.fit)


def cli_option(help: str, flag: str | None = None, **typer_kwargs) -> dict:
    """Field metadata: this option appears on ``cleanpipe train`` as ``flag`` (default ``--field-name``)."""
    return {"cli": {"help": help, "flag": flag, **typer_kwargs}}


def data_input():
    """A field holding data a method trains with (arrays, filled by the caller or the train stage): not an
    option of the command line, and left out of manifests."""
    return field(default=None, metadata={"input": True})


@dataclass
class NoOptions:
    """A method without options."""


@dataclass
class PruneOutputs:
    """What a training method may read from a prune stage: arrays and estimates, no files.

    Attributes
    ----------
    keep : np.ndarray
        bool (N,): kept examples (``keep_mask.npy``).
    method : str
        The prune method (``incv`` or a confident-learning filter).
    estimated_noise_rate, estimated_noise_rate_kept : float or None
        The share of wrong labels estimated among all training examples and among the kept ones.
    incv_selected, incv_candidates : np.ndarray or None
        int rows of INCV's selected set S and candidate set C (INCV prune stages only).
    eval_ratio : float or None
        INCV's estimated noise rate ε̂.
    symmetric : bool
        INCV treated the noise as symmetric.
    label_quality : np.ndarray or None
        float32 (N,): every row's label quality (read when the method asks for ``quality``).
    """

    keep: np.ndarray
    method: str
    estimated_noise_rate: float | None = None
    estimated_noise_rate_kept: float | None = None
    incv_selected: np.ndarray | None = None
    incv_candidates: np.ndarray | None = None
    eval_ratio: float | None = None
    symmetric: bool = True
    label_quality: np.ndarray | None = None


@dataclass
class RunInputs:
    """What the train stage read from a run, for :meth:`TrainingMethod.from_run`."""

    dataset: Any  # cleanpipe.data.Dataset
    labels: np.ndarray  # int64 (N,): the labels trained on
    truth: np.ndarray | None  # int64 (N,) when the run injected its noise
    prune: PruneOutputs | None
    subset: str
    root: Path


@dataclass
class Plan:
    """One training, as a method lays it out for the trainer.

    Attributes
    ----------
    rows : np.ndarray
        int (n,): the rows of ``X`` trained on.
    step : cleanpipe.engine.Method or None
        The loss step (None: the method builds one per network in :meth:`TrainingMethod.train`).
    method_settings : dict
        The method's resolved settings (JSON), for the manifest and the resume key.
    config : dict
        Overrides of the engine's :class:`~cleanpipe.engine.TrainConfig` (e.g. plain momentum, an EMA).
    X, labels : np.ndarray, optional
        The data to train on when the method extends the caller's (Noisy Student's extra rows).
    state : dict
        Whatever else the method's :meth:`TrainingMethod.train` and :meth:`TrainingMethod.outputs` need.
    """

    rows: np.ndarray
    step: Any = None
    method_settings: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    X: np.ndarray | None = None
    labels: np.ndarray | None = None
    state: dict = field(default_factory=dict)


@dataclass
class TrainJob:
    """The arrays and recipe of one call of :func:`cleanpipe.robust.train_model`, after validation."""

    X: np.ndarray  # uint8 (N, C, H, W) or float32 (N, D)
    labels: np.ndarray  # int64 (N,)
    rows: np.ndarray  # int64 (n,)
    n_classes: int
    settings: Any  # cleanpipe.recipes.FitSettings
    truth: np.ndarray | None = None
    class_names: list[str] | None = None

    @property
    def is_clean(self) -> np.ndarray | None:
        """bool (N,): the given label is the true one (diagnostics only), or None without the truth."""
        return None if self.truth is None else self.labels == self.truth


@dataclass
class TrainResult:
    """What a training method returns.

    Attributes
    ----------
    nets : list of torch.nn.Module
        The trained networks in eval mode, on the training device; ``nets[0]`` is the model.
    model : str
        The registry name of ``nets[0]``'s architecture.
    architecture : dict
        Its builder's arguments (e.g. the small CNN's width): with ``model``, what rebuilds it.
    history : list of dict
        One row per epoch (and network): ``epoch``, ``loss``, ``train_accuracy``, ``test_accuracy`` (with a
        test split), the method's extras, ``lr``, ``seconds``.
    rows : np.ndarray
        int (n,): the rows trained on.
    settings : cleanpipe.recipes.FitSettings
    method_settings : dict
        The method's resolved settings.
    mean, std : torch.Tensor
        The training rows' normalisation statistics (what predicting on new data needs).
    steps : int
        Optimizer steps taken, over every network trained.
    device : str
    metrics : dict
        Method-specific numbers (e.g. Noisy Student's per-iteration accuracies).
    per_example : dict
        Method-specific per-example outputs (e.g. IEG's mean weight of every row).
    """

    nets: list
    model: str
    architecture: dict
    history: list[dict]
    rows: np.ndarray
    settings: Any
    method_settings: dict
    mean: Any
    std: Any
    steps: int
    device: str
    metrics: dict = field(default_factory=dict)
    per_example: dict = field(default_factory=dict)

    @property
    def test_accuracy(self) -> float | None:
        return self.history[-1].get("test_accuracy") if self.history else None


class TrainingMethod:
    """A training method's registry entry: what it needs, how it trains, what it writes.

    Subclasses set the class attributes and override the hooks they need; the defaults suit a method
    that trains ``n_nets`` networks once on the kept (or all) rows with one loss step.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # one line for ``cleanpipe train --help``
    title: ClassVar[str] = ""  # the help panel of its options
    n_nets: ClassVar[int] = 1
    Options: ClassVar[type] = NoOptions
    subsets: ClassVar[tuple[str, ...]] = ("kept", "all")
    default_subset: ClassVar[str] = "kept"  # what --subset means when not given

    # ---- what it needs from a run (the train stage asks) ------------------------------------------
    def check_subset(self, subset: str) -> None:
        check_choice(subset, "subset", self.subsets)

    def prune_needed(self, options, subset: str) -> str | None:
        """None, ``"any"`` (a prune stage of any method), ``"quality"`` (any, with every row's label quality)
        or ``"incv"`` (an INCV prune stage)."""
        return "any" if subset == "kept" else None

    def subset_name(self, subset: str) -> str:
        """What the manifest records as the subset trained on."""
        return subset

    def training_rows(self, inputs: RunInputs) -> np.ndarray:
        """The rows of a run to train on: the kept ones, or all."""
        if inputs.subset == "kept":
            return np.flatnonzero(inputs.prune.keep)
        return np.arange(len(inputs.labels))

    def from_run(self, options, inputs: RunInputs) -> tuple[Any, list[Path]]:
        """Fill in what the options leave to the run (e.g. a forget rate from the prune stage's estimate);
        returns the options and the files outside the run this read."""
        return options, []

    # ---- how it trains (train_model asks) ----------------------------------------------------------
    def prepare(self, options, job: TrainJob) -> Plan:
        """The rows, loss step and resolved settings of a training; the default: plain cross-entropy."""

        return Plan(rows=job.rows, step=Standard(label_smoothing=0.0))

    def train(self, trainer: "Trainer", options, plan: Plan) -> TrainResult:
        """Train ``n_nets`` fresh networks once with the plan's step; methods with several rounds override this."""
        nets = trainer.build_nets(self.n_nets)
        trained, history = trainer.train_nets(nets, plan.rows, plan.step, self.name)
        return trainer.result(trained, history, plan)

    # ---- what it writes (the train stage asks) -----------------------------------------------------
    def outputs(self, result: TrainResult, dataset, labels: np.ndarray, truth: np.ndarray | None) -> dict:
        """Extra files for ``RUN/train/``: ``{name: pandas.DataFrame (CSV) | dict of arrays (npz)}``."""
        return {}

    def after_write(self, result: TrainResult, options, dataset) -> str | None:
        """Called once the stage's files are in place (e.g. to write corrected labels elsewhere); a note to print."""
        return None


def option_values(options) -> dict:
    """The options' values as the manifest records them (data inputs left out)."""
    return {f.name: getattr(options, f.name) for f in fields(options) if not f.metadata.get("input")}


class Trainer:
    """Runs the engine for one training: per-epoch test accuracy, history, progress, resume checkpoints.

    :meth:`train_nets` may be called several times (Noisy Student's teacher and students); each call has its own
    key, so an interrupted training resumes inside the network it was training, and with ``keep_done`` a
    finished network is kept (``RESUME_DIR/KEY.done.pt``) until the caller is done with the directory.

    Parameters
    ----------
    job : TrainJob
    plan : Plan
    X_test, y_test : np.ndarray, optional
        The test split, scored after every epoch through its own device data.
    device : torch.device
    resume_dir : Path, optional
        Where checkpoints go; None: no checkpoints.
    key : bytes
        What makes this training's result (a resumed checkpoint must have been made by the same).
    progress : cleanpipe.progress.NullProgress
    """

    def __init__(self, job: TrainJob, plan: Plan, X_test, y_test, device, resume_dir: Path | None, key: bytes,
                 progress) -> None:
        self.job, self.plan = job, plan
        X = job.X if plan.X is None else plan.X
        self.labels = np.asarray(job.labels if plan.labels is None else plan.labels, dtype=np.int64)
        self.data = DeviceData(X, device, fit_rows=plan.rows)
        self.test_data = None if X_test is None else DeviceData(X_test, device, stats=self.data)
        self.y_test = None if y_test is None else np.asarray(y_test, dtype=np.int64)
        self.cfg = job.settings.train_config(job.settings.seed, **plan.config)
        self.epochs = self.cfg.epochs
        self.device, self.resume_dir, self.key, self.progress = device, resume_dir, key, progress
        self.steps = 0
        self.architectures: dict[str, dict] = {}  # each network built: its builder's arguments (model.pt keeps them)

    def build_nets(self, n: int, model: str | None = None) -> list:
        """``n`` fresh networks of ``model`` (default the settings'), drawn from the seed, with the recipe's arguments."""
        model = model or self.job.settings.model
        torch.manual_seed(self.job.settings.seed)
        built = [build_network(model, tuple(self.data.X.shape[1:]), self.job.n_classes) for _ in range(n)]
        self.architectures[model] = built[0][1]
        return [net for net, _ in built]

    def train_nets(self, nets, rows: np.ndarray, step, caption: str, *, labels: np.ndarray | None = None,
                   key: bytes = b"", iteration: int | None = None, keep_done: bool = False):
        """Train ``nets`` on ``rows`` with the loss ``step``; returns ``(trained networks, history rows)``.

        ``labels`` (default the plan's) are what train accuracy is measured against; ``key`` tells this
        network apart from the others of the training; ``caption`` names its progress bar.
        """
        cfg, data = self.cfg, self.data
        labels = self.labels if labels is None else labels
        self.steps += self.epochs * max(1, len(rows) // min(cfg.batch_size, len(rows)))
        checkpoint = done = history_file = None
        history: list[dict] = []
        if self.resume_dir is not None:
            checkpoint = self.resume_dir / f"{hashlib.sha256(self.key + key).hexdigest()[:16]}.pt"
            done = checkpoint.with_suffix(".done.pt")
            history_file = checkpoint.with_suffix(".history.json")
            history = json.loads(history_file.read_text()) if history_file.is_file() else []
            if keep_done and done.is_file():
                try:
                    saved = torch.load(done, map_location="cpu", weights_only=True)
                    for net, sd in zip(nets, saved["nets"]):
                        net.load_state_dict(sd)
                    # fit's device and memory layout: a resumed run predicts bit for bit as an uninterrupted one.
                    return [net.eval() for net in place_nets(nets, data.device, cfg, data.is_image)], saved["history"]
                except Exception:  # noqa: BLE001 - a torn file: train this network again
                    done.unlink(missing_ok=True)
        epoch_started = [time.perf_counter()]
        test_acc: dict = {}

        def after_epoch(epoch: int, trained) -> None:
            if self.test_data is None:
                return
            for i, net in enumerate(trained):
                p = predict_proba(net, self.test_data, np.arange(len(self.y_test)), cfg)
                test_acc[i] = float(np.mean(p.argmax(1) == self.y_test))

        def on_epoch(epoch: int, m: dict) -> None:
            row = {} if iteration is None else {"iteration": iteration}
            row.update({"epoch": epoch + 1, "loss": round(m["loss"], 6), "train_accuracy": round(m["train_accuracy"], 6)})
            if test_acc:
                row["test_accuracy"] = round(test_acc[0], 6)
            if len(test_acc) > 1:
                row["test_accuracy_peer"] = round(test_acc[1], 6)
            row.update({k: v for k, v in m.items() if k not in ("loss", "train_accuracy", "lr")})  # the method's
            row["lr"] = round(m["lr"], 8)
            row["seconds"] = round(time.perf_counter() - epoch_started[0], 3)
            epoch_started[0] = time.perf_counter()
            history[:] = [h for h in history if h["epoch"] <= epoch] + [row]
            if history_file is not None:
                atomic_write_bytes(history_file, json.dumps(history).encode())
            scored = f", test accuracy {test_acc[0]:.3f}" if test_acc else ""
            self.progress.advance(0, completed=epoch + 1, note=f"loss {m['loss']:.3f}{scored}")

        self.progress.start(f"{caption} epochs", self.epochs, level=0)
        trained = fit(nets, data, labels, rows, cfg, method=step, checkpoint=checkpoint, on_epoch=on_epoch,
                      after_epoch=after_epoch, checkpoint_every_s=CHECKPOINT_EVERY_S)
        history = [h for h in history if h["epoch"] <= self.epochs]
        if keep_done and done is not None:
            with atomic_path(done) as tmp:
                torch.save({"nets": [n.state_dict() for n in trained], "history": history}, tmp)
        return trained, history

    def predict(self, net, rows: np.ndarray) -> np.ndarray:
        """float32 (n, K) probabilities of the training data's ``rows`` (eval mode, no augmentation)."""

        return predict_proba(net, self.data, rows, self.cfg)

    def result(self, nets, history: list[dict], plan: Plan, *, model: str | None = None, cls=TrainResult,
               **extra) -> TrainResult:
        model = model or self.job.settings.model
        return cls(nets=list(nets), model=model, architecture=self.architectures.get(model, {}), history=history,
                   rows=plan.rows, settings=self.job.settings, method_settings=plan.method_settings,
                   mean=self.data.mean.detach().cpu(), std=self.data.std.detach().cpu(), steps=self.steps,
                   device=device_name(self.device), **extra)
