"""The train stage: a model trained on the cleaned data (or all of it) with a noise-robust method.

Methods are loss/selection steps run by the one engine (``cleanpipe.engine.fit``):
``standard`` (cross-entropy), ``coteaching``, ``coteaching-plus`` and ``incv-coteaching``
(``cleanpipe.robust.coteaching``), ``l2r`` and ``ieg`` (``cleanpipe.robust.ieg``, with a trusted
probe set held out of the training rows), ``noisy-student`` (``cleanpipe.robust.noisystudent``: a
teacher on the kept rows, then students on kept + pseudo-labeled flagged rows; ``train/relabel.csv``).
The test split is scored after every epoch
(``train/history.csv``); ``train/model.pt`` holds the first network's weights and what is needed
to rebuild it (load with ``torch.load(path, weights_only=True)``).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cleanpipe.errors import CleanpipeError
from cleanpipe.run import Run, load_npy

METHODS = ("standard", "coteaching", "coteaching-plus", "incv-coteaching", "l2r", "ieg", "noisy-student")
PROBE_METHODS = ("l2r", "ieg")
SUBSETS = ("kept", "all")
MODEL_FORMAT = "cleanpipe-model-1"
CHECKPOINT_EVERY_S = 30.0  # an interrupted training resumes from its last checkpoint (see engine.fit)
# Per-epoch numbers a method reports that go into history.csv beside loss and accuracy.
HISTORY_EXTRAS = ("forget_rate", "pure_ratio", "mean_weight", "zero_weight_share", "pseudo_label_share",
                  "mean_weight_clean", "mean_weight_noisy", "pseudo_share", "pseudo_agreement")
LABEL_SUFFIXES = (".npy", ".csv", ".json")  # what --write-labels writes (and --labels reads back)


@dataclass
class IegOptions:
    """IEG's and L2R's settings (``reference/ieg.md`` 2.1 defaults); see :class:`cleanpipe.robust.ieg.IEG`."""

    probe_per_class: int = 10
    probe_labels: str | None = None
    ce_factor: float = 5.0
    # None: per data kind. Colour images: the paper's k = 20 and no ramp. Grey or small images (digits,
    # MNIST): k = 2 with the unsupervised terms ramped in over half the run. Measured on MNIST-10k at 80%
    # symmetric noise, 20 epochs: k = 20 collapsed to one class (9%; ramped: 95% at epoch 5, then 47%),
    # k = 2 ramped reached 97.1%. The consistency target is the weak view, and a strong view of a digit
    # (RandAugment, then Cutout of half its side) often no longer shows the digit.
    consistency_factor: float | None = None
    ramp: float | None = None
    temperature: float = 0.5
    views: int = 2
    mixup: bool = True
    ema: float = 0.999
    policy: str = "auto"
    meta_stepsize: float = 0.1
    route: str = "jvp"
    # The paper's cosine restarts suit its 200,000 steps; squeezed into a few hundred they restart every
    # few steps at a high rate (plain training, digits with 60% noise, 10 epochs: 37% test accuracy
    # against 93% with the one-cycle schedule).
    schedule: str = "onecycle"


@dataclass
class NoisyStudentOptions:
    """Noisy Student's settings (``reference/noisystudent.md`` 4); see :mod:`cleanpipe.robust.noisystudent`."""

    iterations: int = 2
    student_model: str = "auto"
    threshold: float = 0.3
    soft: bool = True
    temperature: float = 1.0
    balance: str = "none"
    max_copies: int = 3
    unl_weight: float = 1.0
    label_smoothing: float = 0.1
    dropout: float = 0.2
    stochastic_depth: float = 0.2
    # The student's input noise. auto: colour images RandAugment then Cutout (the spec's small-image
    # pipeline), tables Gaussian noise and feature dropout, grey images none beyond the weak pad-crop:
    # measured on MNIST-10k at 40% symmetric noise (20 epochs, one student, the wide CNN), RandAugment
    # and Cutout gave the student 97.0% (magnitude 5, no Cutout: 98.1%) against 98.5% without, the
    # teacher 98.4%. "none" turns input noise off everywhere.
    policy: str = "auto"
    # Side of the student's Cutout square as a share of the image side (the spec's 16 of 32 px).
    cutout: float = 0.5
    magnitude: float = 10.0  # RandAugment's, on kornia's 0-30 scale
    ema: float = 0.999
    unlabeled: str | None = None
    write_labels: str | None = None


@dataclass
class TrainStage:
    """What ``cleanpipe train`` did, for the CLI's summary."""

    manifest: dict
    history: list[dict]


def train_settings(input_shape: tuple[int, ...], source: str, model: str = "auto", *, epochs: int | None = None,
                   seed: int = 0, batch_size: int | None = None, lr: float | None = None):
    """The network and recipe for the train stage: crossval's per-dataset defaults, trained longer.

    Epochs by data kind: digits 30, other grey/small images 20, colour images 100, tables 60
    (crossval's short MNIST recipe stops before a forget-rate schedule has done anything).
    Grey 28x28 images train in batches of 256 at lr 0.1 (crossval: 64 at 0.05): with a quarter
    of a batch kept at high noise, a larger batch gives the small-loss picks of each class enough
    examples to rank (MNIST-10k, class-balanced Co-teaching at symmetric 80%: 90.4% at 128/0.05,
    92.5% at 256/0.1; plain training 84.1% at 64/0.05, 83.6% at 256/0.1).
    """
    from cleanpipe.crossval import default_settings

    if epochs is None:
        if len(input_shape) == 1:
            epochs = 60
        elif min(input_shape[1:]) <= 16:
            epochs = 30
        elif input_shape[0] == 1:
            epochs = 20
        else:
            epochs = 100
    grey_28 = len(input_shape) == 3 and input_shape[0] == 1 and min(input_shape[1:]) > 16
    over = {"batch_size": 256, "lr": 0.1} if grey_28 else {}
    over.update({k: v for k, v in (("batch_size", batch_size), ("lr", lr)) if v is not None})
    return default_settings(input_shape, source, model, epochs=epochs, seed=seed, **over)


def _prune_inputs(run: Run, method: str, n: int):
    """The prune stage's manifest, keep mask and (for INCV) its sets, checked against this run."""
    import pandas as pd

    man = run.require("prune", hint=f"cleanpipe prune {run.root}")
    if man["parameters"].get("standalone"):
        raise CleanpipeError(
            f"{run.root}: the prune stage ran on files from outside the run; run `cleanpipe prune {run.root}` on the run's own data"
        )
    keep = load_npy(run.path("prune", "keep_mask.npy"), what="keep mask").astype(bool)
    if keep.shape != (n,):
        raise CleanpipeError(f"{run.root}: the prune stage is stale ({len(keep)} rows for {n} labels); re-run `cleanpipe prune {run.root}`")
    sets = None
    if method == "incv-coteaching":
        if man["parameters"].get("method") != "incv":
            raise CleanpipeError(
                f"--method incv-coteaching needs an INCV prune stage; run `cleanpipe prune {run.root} --method incv` first"
            )
        report = pd.read_csv(run.path("prune", "label_issues.csv"), usecols=["index", "select", "candidate"])
        report = report.sort_values("index")
        sets = (np.flatnonzero(report["select"].to_numpy(bool)), np.flatnonzero(report["candidate"].to_numpy(bool)))
    return man, keep, sets


def _estimated_rate(man: dict, key: str, run: Run) -> float:
    value = man["metrics"].get(key)
    if value is None:
        raise CleanpipeError(f"{run.root}: the prune stage predates noise-rate estimates for training; re-run `cleanpipe prune {run.root}`")
    return float(value)


def run_train_stage(
    run: Run,
    *,
    method: str = "standard",
    subset: str = "kept",
    model: str = "auto",
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    device: str = "auto",
    forget_rate: float | None = None,
    clean_labels: bool = False,
    selection: str = "class",
    ieg: IegOptions | None = None,
    noisy_student: NoisyStudentOptions | None = None,
    progress=None,
) -> TrainStage:
    """Train on the run's (noisy) labels and write ``RUN/train/``.

    Parameters
    ----------
    run : Run
    method : {'standard', 'coteaching', 'coteaching-plus', 'incv-coteaching', 'l2r', 'ieg', 'noisy-student'}
    subset : {'kept', 'all'}
        ``kept``: the prune stage's kept examples; ``all``: every training example (the
        "train on noisy labels" baseline with ``standard``). ``incv-coteaching`` always uses
        INCV's selected and candidate sets.
    forget_rate : float, optional
        Co-teaching's target forget rate; default the noise the prune stage estimates to remain in
        the training subset (``estimated_noise_rate_kept`` for ``kept``, ``estimated_noise_rate``
        for ``all``).
    clean_labels : bool
        Benchmarks only: train on the true labels of a run with synthetic noise (the ceiling).
    selection : {'class', 'batch'}
        How the Co-teaching methods pick small-loss examples: spread over the given labels' classes
        (default) or the papers' batch-wide rule (``cleanpipe.robust.coteaching``).
    ieg : IegOptions, optional
        The probe set and settings of ``l2r`` and ``ieg``: ``probe_per_class`` trusted examples per
        class are held out of training, drawn (seeded) from the rows whose clean label is known: the
        true labels of a benchmark run, or ``probe_labels`` (a user's hand-checked ``id,label`` file).
    noisy_student : NoisyStudentOptions, optional
        Settings of ``noisy-student``: the kept examples are the labeled set, the flagged ones (and any
        ``unlabeled`` extra data) are pseudo-labeled; writes ``train/relabel.csv`` and, with
        ``write_labels``, the corrected label vector.
    """
    import torch

    from cleanpipe.engine import DeviceData, Standard, device_name, resolve_device
    from cleanpipe.models import build_model
    from cleanpipe.progress import NullProgress
    from cleanpipe.robust.coteaching import CoTeaching, CoTeachingPlus, IncvCoTeaching

    progress = progress or NullProgress()
    if method not in METHODS:
        raise CleanpipeError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if subset not in SUBSETS:
        raise CleanpipeError(f"--subset must be kept or all, got {subset!r}")
    if method in PROBE_METHODS:
        ieg = ieg or IegOptions()
        _check_ieg_options(ieg)
    ns = None
    if method == "noisy-student":
        ns = noisy_student or NoisyStudentOptions()
        _check_ns_options(ns)
        if subset != "kept":
            raise CleanpipeError("--method noisy-student trains on the kept examples and relabels the flagged ones; drop --subset all")
    if selection not in CoTeaching.SELECTIONS:
        raise CleanpipeError(f"--selection must be class or batch, got {selection!r}")
    if forget_rate is not None and not 0.0 <= forget_rate < 1.0:
        raise CleanpipeError(f"--forget-rate must lie in [0, 1), got {forget_rate}")
    if epochs is not None and epochs < 1:
        raise CleanpipeError(f"--epochs must be at least 1, got {epochs}")
    if batch_size is not None and batch_size < 2:
        raise CleanpipeError(f"--batch-size must be at least 2, got {batch_size}")
    if lr is not None and not lr > 0:
        raise CleanpipeError(f"--lr must be positive, got {lr}")
    dev = resolve_device(device)
    started = time.perf_counter()

    with run.transaction():
        if run.dataset_json() is None:
            raise CleanpipeError(f"{run.root} has no dataset; start with `cleanpipe noise` or `cleanpipe crossval` and --dataset")
        spec, ds, _ = run.bind_dataset(None)
        labels, truth, files = run.training_labels(ds)
        if clean_labels:
            if truth is None:
                raise CleanpipeError(f"--clean-labels needs a run with synthetic noise (true labels known); {run.root} has none")
            labels = truth
        n, K = len(labels), ds.n_classes
        co = method in ("coteaching", "coteaching-plus", "incv-coteaching")  # two networks, a forget rate
        needs_prune = subset == "kept" or method == "incv-coteaching" or (co and forget_rate is None)
        prune_man = keep = sets = None
        if needs_prune:
            prune_man, keep, sets = _prune_inputs(run, method, n)
            files = [*files, run.path("prune", "keep_mask.npy"), run.path("prune", "label_issues.csv")]
        if method == "incv-coteaching":
            rows = sets[0]
        else:
            rows = np.flatnonzero(keep) if subset == "kept" else np.arange(n)
        probe = None
        if method in PROBE_METHODS:
            probe = _probe_set(run, ds, truth, ieg, seed)
            if ieg.probe_labels:
                files = [*files, Path(ieg.probe_labels)]
            rows = np.setdiff1d(rows, probe[0])  # trusted examples are never training data
        if len(rows) < 2:
            raise CleanpipeError(f"only {len(rows)} training example(s) left in the {subset} subset; nothing to train on")
        flagged = extra = None
        if method == "noisy-student":
            flagged = np.flatnonzero(~keep)
            if ns.unlabeled:
                from cleanpipe.data.unlabeled import load_unlabeled

                extra = load_unlabeled(Path(ns.unlabeled), ds, image_size=min(ds.input_shape[1:]) if ds.is_image else 0)
            if len(flagged) == 0 and extra is None:
                raise CleanpipeError(
                    f"the prune stage of {run.root} flagged no examples: Noisy Student has nothing to relabel; "
                    "train with --method standard, or give extra data with --unlabeled PATH"
                )

        settings = train_settings(ds.input_shape, spec.source, model, epochs=epochs, seed=seed, batch_size=batch_size, lr=lr)
        E = settings.epochs
        ramp = max(1, min(10, E // 4))  # Tk: 10 of 200 epochs in the papers; a quarter of short runs
        is_clean = None if truth is None else np.concatenate([labels == truth, np.zeros(len(ds.y_test), bool)])
        details: dict = {}
        if co:
            if forget_rate is None:
                key = "estimated_noise_rate_kept" if (subset == "kept" or method == "incv-coteaching") else "estimated_noise_rate"
                forget_rate = min(0.9, _estimated_rate(prune_man, key, run))
            details = {"forget_rate": round(forget_rate, 6), "ramp_epochs": ramp, "selection": selection}
        if method == "standard":
            step = Standard(label_smoothing=0.0)
        elif method == "coteaching":
            step = CoTeaching(forget_rate, ramp, is_clean, selection)
        elif method in PROBE_METHODS:
            step = _probe_method(method, ieg, probe, n + len(ds.y_test), is_clean, ds)
            details = {"probe_size": int(len(probe[0])), **{k: v for k, v in asdict(ieg).items() if k != "probe_labels"}}
            if method == "ieg":  # the per-data-kind defaults, resolved
                details.update(policy=step.policy, consistency_factor=step.consistency_factor, ramp=step.ramp)
            else:
                details = {k: details[k] for k in ("probe_size", "probe_per_class", "ema", "meta_stepsize", "route", "schedule")}
        elif method == "noisy-student":
            step = None  # one loss step per iteration, built by _noisy_student
        elif method == "coteaching-plus":
            init_epoch = round(0.1 * E) if (len(ds.input_shape) == 3 and ds.input_shape[0] == 3) else 0  # CIFAR: 20 of 200
            step = CoTeachingPlus(forget_rate, ramp, init_epoch, is_clean, selection)
            details["init_epoch"] = init_epoch
        else:
            eps = float(prune_man["metrics"]["eval_ratio"])
            symmetric = bool(prune_man["parameters"].get("symmetric", True))
            warmup = round(E * (0.4 if (not symmetric or eps > 0.6) else 0.2))  # 80 or 40 of 200 epochs
            step = IncvCoTeaching(forget_rate, sets[0], sets[1], warmup, ramp, is_clean, n_rows=n + len(ds.y_test),
                                  selection=selection)
            details.update({"warmup_epochs": warmup, "n_candidates": int(len(sets[1]))})

        X_all = np.concatenate([ds.X_train, ds.X_test] + ([extra[0]] if extra is not None else []))
        y_all = np.concatenate([labels, ds.y_test] + ([np.zeros(len(extra[0]), np.int64)] if extra is not None else []))
        y_all = y_all.astype(np.int64)
        test_rows = n + np.arange(len(ds.y_test))
        data = DeviceData(X_all, dev, fit_rows=rows)
        # IEG's recipe: plain momentum (its look-ahead reads the buffer) and the EMA; Noisy Student's teachers are EMA weights.
        recipe = dict(nesterov=False, schedule=ieg.schedule, ema=ieg.ema) if method in PROBE_METHODS else {}
        if method == "noisy-student":
            recipe = dict(ema=ns.ema)
            details = {k: v for k, v in asdict(ns).items() if k not in ("unlabeled", "write_labels")}
            details["n_unlabeled_extra"] = 0 if extra is None else int(len(extra[0]))
            details["student_model"] = student_model_for(settings.model, ns.student_model)
            details["policy"] = student_policy(ds.input_shape, ns.policy)
        cfg = settings.train_config(seed, **recipe)
        parameters = {"method": method, "subset": subset if method != "incv-coteaching" else "incv-sets",
                      "clean_labels": clean_labels,
                      **{k: v for k, v in asdict(settings).items() if k in ("model", "epochs", "batch_size", "lr", "seed")},
                      **details}
        base_key = (json.dumps(parameters, sort_keys=True).encode() + np.ascontiguousarray(rows).tobytes()
                    + labels.tobytes() + ds.fingerprint().encode()
                    + (b"" if probe is None else probe[0].tobytes() + probe[1].tobytes())
                    + (b"" if extra is None else hashlib.sha256(np.ascontiguousarray(extra[0]).tobytes()).digest()))
        trainer = _Trainer(run, data, ds, test_rows, cfg, E, progress)

        ns_result = None
        if method == "noisy-student":
            ns_result = _noisy_student(trainer, ns, settings, ds, labels, truth, y_all, rows, flagged,
                                       n + len(ds.y_test), extra, base_key, seed)
            trained, history = ns_result["trained"], ns_result["history"]
        else:
            torch.manual_seed(seed)
            nets = [build_model(settings.model, ds.input_shape, K) for _ in range(2 if co else 1)]
            if not isinstance(nets[0], torch.nn.Module):
                raise CleanpipeError(f"{settings.model} is not a network; the train stage trains networks (e.g. mlp)")
            trained, history = trainer.fit(nets, rows, y_all, step, hashlib.sha256(base_key).hexdigest()[:16], method)
        final = history[-1]
        train_seconds = sum(h["seconds"] for h in history)
        metrics = {
            "test_accuracy": final["test_accuracy"],
            "n_train": int(len(rows)),
            "n_test": int(len(ds.y_test)),
            "final_train_accuracy": final["train_accuracy"],
            "train_seconds": round(train_seconds, 2),
            "seconds_per_step": round(train_seconds / max(1, trainer.steps), 6),
        }
        if "test_accuracy_peer" in final:
            metrics["test_accuracy_peer"] = final["test_accuracy_peer"]
        if truth is not None:
            metrics["train_noise_rate_true"] = round(float(np.mean(labels[rows] != truth[rows])), 6)
        if ns_result is not None:
            metrics.update(ns_result["metrics"])
        state = {
            "format": MODEL_FORMAT,
            "model": settings.model if ns_result is None else ns_result["model"],
            "input_shape": list(ds.input_shape),
            "n_classes": K,
            "class_names": list(ds.class_names),
            "method": method,
            "mean": data.mean.detach().cpu(),
            "std": data.std.detach().cpu(),
            "state_dict": {k: v.detach().cpu() for k, v in trained[0].state_dict().items()},
        }
        with run.write_stage("train", started=started) as w:
            for p in files:
                w.record_input(p)
            torch.save(state, w.path("model.pt"))
            import pandas as pd

            pd.DataFrame(history).to_csv(w.path("history.csv"), index=False)
            if probe is not None:
                _example_weights(step, rows, labels, truth, ds).to_csv(w.path("example_weights.csv"), index=False)
                pd.DataFrame({"index": probe[0], "id": ds.ids_train[probe[0]], "label": probe[1]}).to_csv(
                    w.path("probe.csv"), index=False)
            if ns_result is not None:
                ns_result["relabel"].to_csv(w.path("relabel.csv"), index=False)
                if ns_result["unlabeled"] is not None:
                    ns_result["unlabeled"].to_csv(w.path("unlabeled_labels.csv"), index=False)
                np.savez(w.path("relabel_probs.npz"), **ns_result["probs"])
                if ns.unlabeled and Path(ns.unlabeled).is_file():
                    w.record_input(Path(ns.unlabeled))
            manifest = w.finish(parameters=parameters, metrics=metrics, device=device_name(dev))
        if ns_result is not None and ns.write_labels:
            _write_labels(Path(ns.write_labels), ds.ids_train, ns_result["corrected"])
        return TrainStage(manifest, history)


class _Trainer:
    """Runs the engine for the train stage: per-epoch test accuracy, history, progress, checkpoints to resume from.

    ``fit`` may be called several times (Noisy Student's teacher and students); each call has its own
    key, so an interrupted stage resumes inside the network it was training, and with ``keep_done``
    a finished network is kept (``RUN/train/resume/KEY.done.pt``) until the stage writes its outputs.
    """

    def __init__(self, run: Run, data, ds, test_rows: np.ndarray, cfg, epochs: int, progress) -> None:
        self.run, self.data, self.ds, self.test_rows = run, data, ds, test_rows
        self.cfg, self.epochs, self.progress = cfg, epochs, progress
        self.steps = 0

    def fit(self, nets, rows: np.ndarray, y_all: np.ndarray, step, key: str, label: str,
            iteration: int | None = None, keep_done: bool = False):
        import torch

        from cleanpipe.engine import fit, place_nets, predict_proba

        cfg, data, ds = self.cfg, self.data, self.ds
        self.steps += self.epochs * max(1, len(rows) // min(cfg.batch_size, len(rows)))
        checkpoint = self.run.path("train", "resume") / f"{key}.pt"
        done = checkpoint.with_suffix(".done.pt")
        history_file = checkpoint.with_suffix(".history.json")
        history: list[dict] = json.loads(history_file.read_text()) if history_file.is_file() else []
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
            for i, net in enumerate(trained):
                p = predict_proba(net, data, self.test_rows, cfg)
                test_acc[i] = float(np.mean(p.argmax(1) == ds.y_test))

        def on_epoch(epoch: int, m: dict) -> None:
            row = {} if iteration is None else {"iteration": iteration}
            row.update({"epoch": epoch + 1, "loss": round(m["loss"], 6), "train_accuracy": round(m["train_accuracy"], 6),
                        "test_accuracy": round(test_acc[0], 6)})
            if len(test_acc) > 1:
                row["test_accuracy_peer"] = round(test_acc[1], 6)
            row.update({k: v for k, v in m.items() if k in HISTORY_EXTRAS})
            row["lr"] = round(m["lr"], 8)
            row["seconds"] = round(time.perf_counter() - epoch_started[0], 3)
            epoch_started[0] = time.perf_counter()
            history[:] = [h for h in history if h["epoch"] <= epoch] + [row]
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            history_file.write_text(json.dumps(history))
            self.progress.advance(0, completed=epoch + 1, note=f"loss {m['loss']:.3f}, test accuracy {test_acc[0]:.3f}")

        self.progress.start(f"{label} epochs", self.epochs, level=0)
        trained = fit(nets, data, y_all, rows, cfg, method=step, checkpoint=checkpoint, on_epoch=on_epoch,
                      after_epoch=after_epoch, checkpoint_every_s=CHECKPOINT_EVERY_S)
        history = [h for h in history if h["epoch"] <= self.epochs]
        if keep_done:
            done.parent.mkdir(parents=True, exist_ok=True)
            tmp = done.with_name(f".{done.name}.tmp")
            torch.save({"nets": [n.state_dict() for n in trained], "history": history}, tmp)
            tmp.replace(done)
        return trained, history


def _noisy_student(trainer: _Trainer, ns: NoisyStudentOptions, settings, ds, labels: np.ndarray,
                   truth: np.ndarray | None, y_all: np.ndarray, rows: np.ndarray, flagged: np.ndarray,
                   extra_start: int, extra, base_key: bytes, seed: int) -> dict:
    """Teacher on the kept rows, then ``ns.iterations`` noised students on kept + pseudo-labeled rows.

    Returns the last student (``trained``), the history of every network (column ``iteration``, 0 =
    teacher), the metrics, ``relabel.csv``'s table, the extra data's table and the corrected labels.
    """
    import pandas as pd
    import torch

    from cleanpipe.engine import predict_proba
    from cleanpipe.models import add_model_noise, build_model
    from cleanpipe.robust.noisystudent import (DECISIONS, NoisyStudentLoss, balance_copies, balance_targets,
                                               decide, targets)

    K, N_all = ds.n_classes, len(y_all)
    cfg = trainer.cfg
    U = np.concatenate([flagged, extra_start + np.arange(0 if extra is None else len(extra[0]))]).astype(np.int64)
    given_U = np.concatenate([labels[flagged], np.full(len(U) - len(flagged), -1)])
    table = np.zeros((N_all, K), dtype=np.float32)
    table[rows] = targets(np.eye(K, dtype=np.float32)[labels[rows]], soft=False, smoothing=ns.label_smoothing)
    labeled_counts = np.bincount(labels[rows], minlength=K).astype(np.float64)
    policy = student_policy(ds.input_shape, ns.policy)
    student_model = student_model_for(settings.model, ns.student_model)

    def build(noise: bool):
        torch.manual_seed(seed)
        net = build_model(student_model if noise else settings.model, ds.input_shape, K)
        if not isinstance(net, torch.nn.Module):
            raise CleanpipeError(f"{settings.model} is not a network; the train stage trains networks (e.g. mlp)")
        return net, (add_model_noise(net, ns.dropout, ns.stochastic_depth) if noise else None)

    def key_of(*parts: bytes) -> str:
        return hashlib.sha256(b"".join([base_key, *parts])).hexdigest()[:16]

    teacher_net, _ = build(noise=False)
    step = NoisyStudentLoss(table, np.zeros(N_all, bool), noise=False)
    trained, history = trainer.fit([teacher_net], rows, y_all, step, key_of(b"teacher"), "teacher", iteration=0,
                                   keep_done=True)
    teacher = trained[0]
    rounds = [{"iteration": 0, "role": "teacher", "n_labeled": int(len(rows)), "n_pseudo": 0,
               "test_accuracy": history[-1]["test_accuracy"]}]
    first_probs = None
    model_noise: dict = {}
    for it in range(1, ns.iterations + 1):
        probs = predict_proba(teacher, trainer.data, U, cfg)  # eval mode, EMA weights, no augmentation
        if first_probs is None:
            first_probs = probs
        pseudo_label, conf, _ = decide(given_U, probs, ns.threshold)
        usable = conf >= ns.threshold
        per_class = balance_targets(ns.balance, int(usable.sum()), labeled_counts)
        if per_class is None:
            copies = usable.astype(np.int64)
        else:
            copies = balance_copies(pseudo_label, usable, per_class, max_copies=ns.max_copies,
                                    rng=np.random.default_rng([seed, it]))
        target_U = targets(probs, soft=ns.soft, temperature=ns.temperature, smoothing=ns.label_smoothing)
        table_it = table.copy()
        table_it[U] = target_U
        is_pseudo = np.zeros(N_all, bool)
        is_pseudo[U] = True
        y_fit = y_all.copy()
        y_fit[U] = pseudo_label  # what train accuracy is measured against
        student_rows = np.concatenate([rows, np.repeat(U, copies)])
        student_net, model_noise = build(noise=True)
        step = NoisyStudentLoss(table_it, is_pseudo, unl_weight=ns.unl_weight, noise=policy != "none",
                                policy=policy, cutout=ns.cutout, magnitude=ns.magnitude)
        key = key_of(b"student", str(it).encode(), target_U.tobytes(), copies.tobytes())
        trained, h = trainer.fit([student_net], student_rows, y_fit, step, key, f"student {it}/{ns.iterations}",
                                 iteration=it, keep_done=True)
        history = history + h
        round_ = {"iteration": it, "role": "student", "n_labeled": int(len(rows)), "n_pseudo": int(copies.sum()),
                  "n_pseudo_unique": int((copies > 0).sum()), "teacher_test_accuracy": rounds[-1]["test_accuracy"],
                  "test_accuracy": h[-1]["test_accuracy"]}
        if truth is not None and len(flagged):
            f = slice(0, len(flagged))
            round_["pseudo_label_accuracy"] = round(float(np.mean(pseudo_label[f] == truth[flagged])), 6)
        rounds.append(round_)
        teacher = trained[0]

    final_probs = predict_proba(teacher, trainer.data, U, cfg)
    pseudo_label, conf, decision = decide(given_U, final_probs, ns.threshold)
    nf = len(flagged)
    rel = pd.DataFrame({"index": flagged, "id": ds.ids_train[flagged], "given_label": labels[flagged],
                        "pseudo_label": pseudo_label[:nf], "confidence": np.round(conf[:nf], 6), "decision": decision[:nf],
                        "teacher_label": first_probs[:nf].argmax(1), "teacher_confidence": np.round(first_probs[:nf].max(1), 6)})
    if truth is not None:
        rel["true_label"] = truth[flagged]
        rel["is_true_error"] = truth[flagged] != labels[flagged]
    order = {d: i for i, d in enumerate(DECISIONS)}
    rel = rel.assign(_o=rel["decision"].map(order)).sort_values(["_o", "confidence", "index"], ascending=[True, False, True],
                                                                 kind="stable").drop(columns="_o")
    unl = None
    if extra is not None:
        unl = pd.DataFrame({"id": extra[1], "pseudo_label": pseudo_label[nf:], "confidence": np.round(conf[nf:], 6),
                            "decision": np.where(conf[nf:] >= ns.threshold, "label", "unresolved")})
    corrected = labels.copy()
    is_relabel = decision[:nf] == "relabel"
    corrected[flagged[is_relabel]] = pseudo_label[:nf][is_relabel]

    counts = {d: int(np.sum(decision[:nf] == d)) for d in DECISIONS}
    metrics = {"teacher_test_accuracy": rounds[0]["test_accuracy"], "iterations": rounds, "n_flagged": int(nf),
               **{f"n_{d}": c for d, c in counts.items()}, "model_noise": model_noise}
    if truth is not None and nf:
        t = truth[flagged]
        for d in ("relabel", "confirm"):
            m = decision[:nf] == d
            metrics[f"{d}_accuracy"] = round(float(np.mean(pseudo_label[:nf][m] == t[m])), 6) if m.any() else None
        metrics["flagged_label_accuracy_given"] = round(float(np.mean(labels[flagged] == t)), 6)
        metrics["flagged_label_accuracy_corrected"] = round(float(np.mean(corrected[flagged] == t)), 6)
        metrics["label_accuracy_given"] = round(float(np.mean(labels == truth)), 6)
        metrics["label_accuracy_corrected"] = round(float(np.mean(corrected == truth)), 6)
    return {"trained": trained, "history": history, "metrics": metrics, "relabel": rel, "unlabeled": unl,
            "corrected": corrected, "model": student_model,
            "probs": {"index": U, "teacher": first_probs, "student": final_probs}}


def student_policy(input_shape: tuple[int, ...], policy: str = "auto") -> str:
    """The student's input noise: ``randaugment``/``autoaugment`` (images), ``table`` (noise and feature dropout) or ``none``."""
    if policy == "none":
        return "none"
    if len(input_shape) == 1:
        return "table"
    if policy == "auto":
        return "randaugment" if input_shape[0] == 3 else "none"
    return policy


def student_model_for(teacher: str, student: str = "auto") -> str:
    """Noisy Student's student network: ``auto`` is the teacher's, widened where the registry has a wider one
    (the spec's "equal or larger": the student absorbs more data, with noise); else the name given."""
    if student != "auto":
        return student
    return {"small_cnn": "small_cnn_wide"}.get(teacher, teacher)


def _model_names() -> list[str]:
    from cleanpipe.models import MODELS

    return list(MODELS)


def _check_ns_options(opts: NoisyStudentOptions) -> None:
    from cleanpipe.robust.noisystudent import BALANCES

    problems = [
        (opts.iterations < 1, f"--iterations must be at least 1, got {opts.iterations}"),
        (opts.student_model != "auto" and opts.student_model not in _model_names(),
         f"unknown --student-model {opts.student_model!r}; choose auto or one of {', '.join(_model_names())}"),
        (not 0.0 <= opts.threshold < 1.0, f"--threshold must lie in [0, 1), got {opts.threshold}"),
        (not opts.temperature > 0, f"--temperature must be positive, got {opts.temperature}"),
        (opts.balance not in BALANCES, f"--balance must be one of {', '.join(BALANCES)}, got {opts.balance!r}"),
        (opts.max_copies < 1, f"--max-copies must be at least 1, got {opts.max_copies}"),
        (not opts.unl_weight > 0, f"--unlabeled-weight must be positive, got {opts.unl_weight}"),
        (not 0.0 <= opts.dropout < 1.0, f"--dropout must lie in [0, 1), got {opts.dropout}"),
        (not 0.0 <= opts.stochastic_depth < 1.0, f"--stochastic-depth must lie in [0, 1), got {opts.stochastic_depth}"),
        (not 0.0 <= opts.ema < 1.0, f"--ema must lie in [0, 1), got {opts.ema}"),
        (opts.policy not in ("auto", "randaugment", "autoaugment", "none"),
         f"--policy must be auto, randaugment, autoaugment or none, got {opts.policy!r}"),
        (opts.unlabeled is not None and not Path(opts.unlabeled).exists(), f"--unlabeled {opts.unlabeled}: no such file or directory"),
        (opts.write_labels is not None and Path(opts.write_labels).suffix.lower() not in LABEL_SUFFIXES,
         f"--write-labels {opts.write_labels}: give a .npy, .csv or .json file name"),
        (opts.write_labels is not None and not Path(opts.write_labels).resolve().parent.is_dir(),
         f"--write-labels {opts.write_labels}: its folder does not exist; create it first"),
    ]
    for bad, message in problems:
        if bad:
            raise CleanpipeError(message)


def _write_labels(path: Path, ids: np.ndarray, labels: np.ndarray) -> None:
    """The corrected training labels, in a format ``--labels`` reads back: .npy (int64 by row), .csv (id,label), .json {id: label}."""
    import io

    from cleanpipe.run import atomic_write_bytes

    suffix = path.suffix.lower()
    if suffix == ".npy":
        buf = io.BytesIO()
        np.save(buf, labels.astype(np.int64), allow_pickle=False)
        data = buf.getvalue()
    elif suffix == ".csv":
        data = ("id,label\n" + "".join(f"{i},{int(y)}\n" for i, y in zip(ids.tolist(), labels.tolist()))).encode()
    else:
        data = (json.dumps({str(i): int(y) for i, y in zip(ids.tolist(), labels.tolist())}, indent=0) + "\n").encode()
    try:
        atomic_write_bytes(path, data)
    except OSError as e:
        raise CleanpipeError(f"--write-labels {path}: cannot write ({e.strerror or e}); choose another path") from None


def _check_ieg_options(opts: IegOptions) -> None:
    from cleanpipe.robust.ieg import ROUTES

    problems = [
        (opts.route not in ROUTES, f"--meta-route must be one of {', '.join(ROUTES)}, got {opts.route!r}"),
        (opts.policy not in ("auto", "autoaugment", "randaugment"),
         f"--policy must be auto, autoaugment or randaugment, got {opts.policy!r}"),
        (opts.views < 2, f"--views must be at least 2 (the weak view and a strong one), got {opts.views}"),
        (not opts.temperature > 0, f"--temperature must be positive, got {opts.temperature}"),
        (not 0.0 <= opts.ema < 1.0, f"--ema must lie in [0, 1), got {opts.ema}"),
        (opts.schedule not in ("onecycle", "restarts"), f"--schedule must be onecycle or restarts, got {opts.schedule!r}"),
        (opts.probe_per_class < 1, f"--probe-per-class must be at least 1, got {opts.probe_per_class}"),
        (opts.ce_factor < 0 or (opts.consistency_factor or 0) < 0, "--ce-factor and --consistency-factor must be >= 0"),
        (opts.ramp is not None and not 0.0 <= opts.ramp <= 1.0, f"--unsup-ramp must lie in [0, 1], got {opts.ramp}"),
        (not opts.meta_stepsize > 0, f"the meta step size must be positive, got {opts.meta_stepsize}"),
    ]
    for bad, message in problems:
        if bad:
            raise CleanpipeError(message)


def _probe_set(run: Run, ds, truth: np.ndarray | None, opts: IegOptions, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``opts.probe_per_class`` trusted rows per class (seeded): rows (ascending) and their clean labels."""
    from cleanpipe.labels import read_partial_labels

    if opts.probe_labels:
        rows, trusted = read_partial_labels(Path(opts.probe_labels), [str(i) for i in ds.ids_train], ds.class_names)
        if trusted.max(initial=0) >= ds.n_classes:
            raise CleanpipeError(f"{opts.probe_labels}: label {trusted.max()} is out of range; classes are 0..{ds.n_classes - 1}")
        source = str(opts.probe_labels)
    elif truth is not None:
        rows, trusted, source = np.arange(len(truth)), truth, "the true labels"
    else:
        raise CleanpipeError(
            f"{run.root} has no known clean labels for IEG/L2R's probe set; pass --probe-labels FILE "
            "(a CSV with id,label columns, or a JSON {id: label}, for a few hand-checked examples per class)"
        )
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(ds.n_classes):
        of_class = rows[trusted == c]
        if len(of_class) < opts.probe_per_class:
            raise CleanpipeError(
                f"class {ds.class_names[c]!r} has {len(of_class)} trusted example(s) in {source}, fewer than "
                f"--probe-per-class {opts.probe_per_class}; label more of it or lower --probe-per-class"
            )
        chosen.append(rng.choice(of_class, opts.probe_per_class, replace=False))
    picked = np.sort(np.concatenate(chosen))
    label_of = dict(zip(rows.tolist(), trusted.tolist()))
    return picked, np.array([label_of[r] for r in picked.tolist()], dtype=np.int64)


def _probe_method(method: str, opts: IegOptions, probe, n_rows: int, is_clean, ds):
    from cleanpipe.robust.ieg import IEG, L2R

    if method == "l2r":
        return L2R(probe[0], probe[1], n_rows, meta_stepsize=opts.meta_stepsize, route=opts.route, is_clean=is_clean)
    colour = len(ds.input_shape) == 3 and ds.input_shape[0] == 3
    policy = opts.policy
    if policy == "auto":  # kornia's AutoAugment is an RGB policy; grey images get RandAugment (the spec: on par)
        policy = "autoaugment" if colour else "randaugment"
    k = opts.consistency_factor if opts.consistency_factor is not None else (20.0 if colour else 2.0)
    ramp = opts.ramp if opts.ramp is not None else (0.0 if colour else 0.5)
    return IEG(probe[0], probe[1], n_rows, ce_factor=opts.ce_factor, consistency_factor=k, ramp=ramp,
               temperature=opts.temperature, views=opts.views, mixup=opts.mixup, meta_stepsize=opts.meta_stepsize,
               policy=policy, route=opts.route, is_clean=is_clean)


def _example_weights(step, rows: np.ndarray, labels: np.ndarray, truth, ds):
    """``train/example_weights.csv``: each training row's meta weight and label source, averaged over training, lowest weight first."""
    import pandas as pd

    rec = step.example_records()
    df = pd.DataFrame({"index": rows, "id": ds.ids_train[rows], "given_label": labels[rows],
                       "mean_weight": np.round(rec["weight"][rows], 6),
                       "zero_weight_share": np.round(rec["zero"][rows], 6)})
    if "pseudo" in rec:
        df["pseudo_label_share"] = np.round(rec["pseudo"][rows], 6)
    df["steps_seen"] = rec["seen"][rows]
    if truth is not None:
        df["true_label"] = truth[rows]
        df["is_true_error"] = truth[rows] != labels[rows]
    return df.sort_values(["mean_weight", "index"], kind="stable")


def load_model(path: Path):
    """Rebuild a network saved by the train stage; returns ``(net, state)`` (weights only, never pickled code)."""
    import torch

    from cleanpipe.models import build_model

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CleanpipeError(f"{path}: no such file; run `cleanpipe train` first") from None
    except Exception as e:  # noqa: BLE001 - a torn or foreign file is a user error, not a crash
        raise CleanpipeError(f"{path}: not a cleanpipe model ({type(e).__name__}); re-run `cleanpipe train`") from None
    if not isinstance(state, dict) or state.get("format") != MODEL_FORMAT:
        raise CleanpipeError(f"{path}: not a cleanpipe model file; re-run `cleanpipe train`")
    net = build_model(state["model"], tuple(state["input_shape"]), int(state["n_classes"]))
    try:
        net.load_state_dict(state["state_dict"])
    except RuntimeError:
        raise CleanpipeError(f"{path}: its weights do not fit a {state['model']}; re-run `cleanpipe train`") from None
    return net.eval(), state


def evaluate(run: Run, checkpoint: Path | None = None, device: str = "auto") -> dict:
    """Accuracy and the confusion matrix (rows = true class, counts) of a trained model on the run's test split."""
    from cleanpipe.engine import DeviceData, TrainConfig, predict_proba, resolve_device

    dev = resolve_device(device)
    if checkpoint is None:
        run.require("train", hint=f"cleanpipe train {run.root}")
        checkpoint = run.path("train", "model.pt")
    net, state = load_model(Path(checkpoint))
    _, ds, _ = run.bind_dataset(None)
    if tuple(state["input_shape"]) != tuple(ds.input_shape) or int(state["n_classes"]) != ds.n_classes:
        raise CleanpipeError(f"{checkpoint} was trained on data of another shape or class count than {run.root}'s")
    data = DeviceData(ds.X_test, dev)
    data.mean, data.std = state["mean"].to(dev), state["std"].to(dev)  # the training rows' statistics
    net = net.to(dev)
    probs = predict_proba(net, data, np.arange(len(ds.y_test)), TrainConfig(channels_last=False))
    pred = probs.argmax(1)
    K = ds.n_classes
    confusion = np.zeros((K, K), dtype=np.int64)
    np.add.at(confusion, (ds.y_test, pred), 1)
    return {"accuracy": float(np.mean(pred == ds.y_test)), "confusion": confusion, "class_names": list(ds.class_names),
            "n_test": int(len(ds.y_test)), "checkpoint": str(checkpoint)}
