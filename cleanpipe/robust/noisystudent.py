"""Noisy Student (Xie et al., CVPR 2020) in a cleaning pipeline: flagged examples become unlabeled data.

The examples the prune stage kept are the labeled set L (their given labels); the flagged ones lose
their labels and become the unlabeled set U. A teacher trained on L
alone labels U without noise (eval mode, EMA weights, no augmentation); a student trained from scratch
with noise (RandAugment and Cutout on images, noise and feature dropout on tables, dropout before the
head, stochastic depth where the blocks have identity skips) on L and the confidently pseudo-labeled
part of U becomes the next teacher. The last one decides each flagged example:

* ``relabel``: its prediction differs from the given label with confidence >= the threshold;
* ``confirm``: its prediction is the given label (confident learning flagged a correct label);
* ``unresolved``: confidence below the threshold (excluded from that round's student).

Array helpers (:func:`soften`, :func:`targets`, :func:`balance_copies`, :func:`decide`), the engine's
loss step :class:`NoisyStudentLoss`, and the registry entry :class:`NoisyStudentTraining`, whose
:meth:`~NoisyStudentTraining.train` runs teacher -> students and returns a :class:`NoisyStudentResult`.

Loss (the paper's code: "concatenate and average"): the mean over the batch of per-example cross-entropies,
labeled rows against their label smoothed by 0.1, pseudo-labeled rows against the teacher's soft
distribution (or its smoothed argmax with ``--hard``), the latter times ``unlabeled_weight`` (1). With U
merged into the training stream this is the repository's ``lab_loss + r * unl_loss`` normalised by
the labeled batch, up to the constant (1 + r).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from cleanpipe.data.unlabeled import load_unlabeled
from cleanpipe.engine.data import StrongView
from cleanpipe.engine.method import Method, Step
from cleanpipe.errors import CleanpipeError
from cleanpipe.labels import check_label_path, write_labels
from cleanpipe.lazy import lazy_module
from cleanpipe.models import MODELS, add_model_noise, check_model
from cleanpipe.recipes import recipe
from cleanpipe.robust.base import (
    Plan,
    TrainingMethod,
    TrainResult,
    cli_option,
    data_input,
)
from cleanpipe.validation import ParameterError, check_choice, check_number

torch = lazy_module("torch")
F = lazy_module("torch.nn.functional")

DECISIONS = ("relabel", "confirm", "unresolved")
BALANCES = ("none", "prior", "uniform")


def soften(probs: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Temperature on probabilities: ``p ** (1/T)`` renormalised (= softmax(logits / T)); float32 (n, K).

    Parameters
    ----------
    probs : np.ndarray
        float (n, K), rows summing to 1.
    temperature : float
        1 leaves the rows as they are, below 1 sharpens, above 1 flattens.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-30, None)) / temperature
    logp -= logp.max(axis=1, keepdims=True)
    p = np.exp(logp)
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def targets(probs: np.ndarray, *, soft: bool = True, temperature: float = 1.0, smoothing: float = 0.1) -> np.ndarray:
    """Training targets from the teacher's probabilities: soft (tempered) or the argmax smoothed by ``smoothing``.

    Returns
    -------
    np.ndarray
        float32 (n, K), rows summing to 1.
    """
    if soft:
        return soften(probs, temperature)
    K = probs.shape[1]
    out = np.full(probs.shape, smoothing / K, dtype=np.float32)
    out[np.arange(len(probs)), probs.argmax(1)] += 1.0 - smoothing
    return out


def balance_copies(pred: np.ndarray, usable: np.ndarray, per_class: np.ndarray, *, max_copies: int = 3,
                   rng: np.random.Generator) -> np.ndarray:
    """How many times each pseudo-labeled row enters the student's data, per class to a target count.

    Class c's usable rows get ``per_class[c] / n_c`` copies each (n_c = usable rows predicted c), rounded
    stochastically (the floor, plus one with probability the fraction) and capped at ``max_copies``, as
    the reference's filter does: frequent classes are thinned at random, rare ones duplicated.

    Parameters
    ----------
    pred : np.ndarray
        int (n,): the pseudo label of each row.
    usable : np.ndarray
        bool (n,): rows at or above the confidence threshold (the others get 0 copies).
    per_class : np.ndarray
        float (K,): the wanted number of rows per class.
    max_copies : int
    rng : np.random.Generator

    Returns
    -------
    np.ndarray
        int64 (n,) copies.
    """
    copies = np.zeros(len(pred), dtype=np.int64)
    draws = rng.random(len(pred))  # one draw per row, whatever the classes: reproducible
    for c in range(len(per_class)):
        rows = np.flatnonzero(usable & (pred == c))
        if len(rows) == 0:
            continue
        ratio = per_class[c] / len(rows)
        whole = np.floor(ratio)
        copies[rows] = np.minimum(whole + (draws[rows] < ratio - whole), max_copies).astype(np.int64)
    return copies


def balance_targets(mode: str, n_usable: int, labeled_counts: np.ndarray) -> np.ndarray | None:
    """Per-class row targets of a balance mode: ``prior`` (the labeled set's class mix), ``uniform``; None for ``none``."""
    if mode not in BALANCES:
        raise ValueError(f"balance must be one of {BALANCES}, got {mode!r}")
    if mode == "none":
        return None
    K = len(labeled_counts)
    if mode == "uniform":
        return np.full(K, n_usable / K)
    prior = labeled_counts / max(1, labeled_counts.sum())
    return n_usable * prior


def decide(given: np.ndarray, probs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each flagged example's decision from the final model's probabilities.

    Parameters
    ----------
    given : np.ndarray
        int (n,): the given labels.
    probs : np.ndarray
        float (n, K).
    threshold : float
        Confidence (top-1 probability) below which a row is ``unresolved``.

    Returns
    -------
    label : np.ndarray
        int64 (n,) argmax.
    confidence : np.ndarray
        float32 (n,) top-1 probability.
    decision : np.ndarray
        str (n,): ``relabel``, ``confirm`` or ``unresolved``.
    """
    label = probs.argmax(1).astype(np.int64)
    confidence = probs.max(1).astype(np.float32)
    decision = np.where(confidence < threshold, "unresolved", np.where(label == given, "confirm", "relabel"))
    return label, confidence, decision.astype(str)


class NoisyStudentLoss(Method):
    """One network on labeled and pseudo-labeled rows, each with its own target distribution.

    Parameters
    ----------
    target_table : np.ndarray
        float32 (N, K): the target of every row the engine may draw (labeled rows: the smoothed given
        label; pseudo-labeled rows: the teacher's target); rows never drawn may hold anything.
    pseudo : np.ndarray
        bool (N,): rows whose target is a pseudo label (weighted by ``unlabeled_weight``, counted apart).
    unlabeled_weight : float
    noise : bool
        Train on the strong view (the student); off for the first teacher.
    policy : {'randaugment', 'autoaugment', 'table'}
        The strong view's kind (``table``: noise on features; images get the policy).
    cutout : float
        Side of the student's Cutout square as a share of the image side.
    magnitude : float
        RandAugment's magnitude (kornia's 0-30 scale).
    """

    def __init__(self, target_table: np.ndarray, pseudo: np.ndarray, *, unlabeled_weight: float = 1.0,
                 noise: bool = True, policy: str = "randaugment", cutout: float = 0.5, magnitude: float = 10.0) -> None:
        self.target_table = np.asarray(target_table, dtype=np.float32)
        self.pseudo = np.asarray(pseudo, dtype=bool)
        self.unlabeled_weight, self.noise, self.policy, self.cutout = float(unlabeled_weight), bool(noise), policy, float(cutout)
        self.magnitude = float(magnitude)
        self._view = None

    def bind(self, data, augment, optimizer) -> None:
        dev = data.device
        self._targets = torch.as_tensor(self.target_table, device=dev)
        self._weights = torch.as_tensor(np.where(self.pseudo, self.unlabeled_weight, 1.0).astype(np.float32), device=dev)
        self._is_pseudo = torch.as_tensor(self.pseudo, device=dev)
        if self.noise:
            # Tables ignore the policy: their strong view is noise on the features.

            self._view = StrongView(data, self.policy, flip=bool(augment and augment.flip), cutout=self.cutout,
                                    magnitude=self.magnitude)
        self._sums = torch.zeros(2, device=dev)
        self._seen = 0

    def start_epoch(self, epoch: int, n_epochs: int) -> None:
        self._sums.zero_()
        self._seen = 0

    def loss(self, step: Step) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._view(step.x_raw, step.x, step.generator) if self._view is not None else step.x
        logits = step.nets[0](x)
        target = self._targets[step.idx]
        per_row = -(target * F.log_softmax(logits.float(), dim=1)).sum(1)
        w = self._weights[step.idx]
        pseudo = self._is_pseudo[step.idx].float()
        with torch.no_grad():  # the pseudo-labeled rows' share of the batch and their agreement with the target
            agree = (logits.argmax(1) == target.argmax(1)).float()
            self._sums += torch.stack([pseudo.sum(), (pseudo * agree).sum()])
        self._seen += len(w)  # the batch size is known on the host: no tensor made per step
        return (w * per_row).mean(), logits

    def epoch_metrics(self) -> dict:
        n_pseudo, agree = self._sums.tolist()
        return {"pseudo_share": n_pseudo / max(1, self._seen), "pseudo_agreement": agree / max(1.0, n_pseudo)}


# ---- the registry entry ---------------------------------------------------------------------------

POLICIES = ("auto", "randaugment", "autoaugment", "none")


@dataclass
class NoisyStudentOptions:
    """Noisy Student's settings (Xie et al. 2020, adapted to relabeling what prune flagged).

    Parameters
    ----------
    iterations : int
        Students trained, each the next one's teacher.
    student_model : str
        The students' network; ``auto``: the teacher's, widened where the registry has a wider one.
    threshold : float
        Confidence below which a pseudo-labeled example is ``unresolved`` (left out of that student).
    soft : bool
        The teacher's distribution as target (tempered by ``temperature``), or its argmax smoothed by
        ``label_smoothing``.
    balance, balance_to : bool, {'prior', 'uniform'}
        Resample the pseudo-labeled rows per class to the kept examples' class mix (``prior``) or to equal
        counts (``uniform``, the paper's), at most ``max_copies`` copies of a row.
    unlabeled_weight : float
        Loss weight of a pseudo-labeled row against a labeled one.
    label_smoothing : float
        Of the labeled rows' targets (and hard pseudo labels).
    dropout, stochastic_depth : float
        The student's model noise: dropout before its last layer, the last residual block's drop rate.
    policy : {'auto', 'randaugment', 'autoaugment', 'none'}
        The student's input noise; ``auto``: per kind of data (``cleanpipe.recipes``).
    cutout : float
        Side of the student's Cutout square as a share of the image side (the paper's 16 of 32 px).
    magnitude : float
        RandAugment's, on kornia's 0-30 scale.
    ema : float
        Decay of the weight average that is evaluated and labels.
    unlabeled : str, optional
        The train stage's extra unlabeled data (an .npz with X, a table, or a folder of images).
    write_labels : str, optional
        Where the train stage writes the corrected training labels (.npy, .csv id,label or .json).
    unlabeled_rows : np.ndarray, optional
        Library callers: rows of X whose labels are set aside and pseudo-labeled (the flagged ones).
    X_extra, extra_ids : np.ndarray, optional
        Library callers: extra unlabeled rows shaped like X, and their IDs.
    """

    iterations: int = field(default=2, metadata=cli_option("Noisy Student: students trained, each the next one's teacher."))
    student_model: str = field(default="auto", metadata=cli_option(
        "Noisy Student: the students' network (auto: the teacher's --model, widened where a wider one exists: "
        "small_cnn -> small_cnn_wide)."))
    threshold: float = field(default=0.3, metadata=cli_option(
        "Noisy Student: confidence below which a flagged example is unresolved (left out of that student)."))
    soft: bool = field(default=True, metadata=cli_option(
        "Noisy Student: the teacher's distribution as target, or its argmax (smoothed by 0.1).", flag="--soft/--hard"))
    temperature: float = field(default=1.0, metadata=cli_option("noisy-student: temperature of the soft pseudo labels."))
    balance: bool = field(default=False, metadata=cli_option(
        "Noisy Student: resample the pseudo-labeled examples per class (to --balance-to), at most --max-copies each.",
        flag="--balance/--no-balance"))
    balance_to: str = field(default="prior", metadata=cli_option(
        "Noisy Student with --balance: prior (the kept examples' class mix) | uniform (the paper's equal counts)."))
    max_copies: int = field(default=3, metadata=cli_option(
        "Noisy Student with --balance: copies of one pseudo-labeled example at most."))
    unlabeled_weight: float = field(default=1.0, metadata=cli_option(
        "Noisy Student: loss weight of a pseudo-labeled example against a labeled one."))
    label_smoothing: float = 0.1
    dropout: float = field(default=0.2, metadata=cli_option("Noisy Student: the student's dropout before its last layer."))
    stochastic_depth: float = field(default=0.2, metadata=cli_option(
        "Noisy Student: the last residual block's drop rate, linear in depth (residual networks only)."))
    policy: str = field(default="auto", metadata=cli_option(
        "noisy-student: the student's input noise, auto (RandAugment on colour, none on grey) | randaugment | "
        "autoaugment | none."))
    cutout: float = 0.5
    magnitude: float = 10.0
    ema: float = field(default=0.999, metadata=cli_option(
        "IEG/L2R/noisy-student: decay of the weight average that is evaluated (and labels, 0: off)."))
    unlabeled: str | None = field(default=None, metadata=cli_option(
        "Noisy Student: extra unlabeled data shaped like the run's (.npz with X, a .csv/.parquet table, or a folder "
        "of images).", type=Path))
    write_labels: str | None = field(default=None, metadata=cli_option(
        "Noisy Student: write the corrected training labels (.npy, .csv id,label or .json), readable by --labels.",
        type=Path))
    unlabeled_rows: np.ndarray | None = data_input()
    X_extra: np.ndarray | None = data_input()
    extra_ids: np.ndarray | None = data_input()

    def __post_init__(self) -> None:
        check_number(self.iterations, "iterations", low=1)
        check_choice(self.student_model, "student_model", ["auto", *MODELS])
        check_number(self.threshold, "threshold", low=0.0, high=1.0, high_open=True)
        check_number(self.temperature, "temperature", low=0.0, low_open=True)
        check_choice(self.balance_to, "balance_to", ("prior", "uniform"))
        check_number(self.max_copies, "max_copies", low=1)
        check_number(self.unlabeled_weight, "unlabeled_weight", low=0.0, low_open=True)
        for name in ("label_smoothing", "dropout", "stochastic_depth"):  # ema: the engine's TrainConfig checks it
            check_number(getattr(self, name), name, low=0.0, high=1.0, high_open=True)
        check_choice(self.policy, "policy", POLICIES)
        if self.unlabeled is not None and not Path(self.unlabeled).exists():
            raise ParameterError("unlabeled", f"{self.unlabeled}: no such file or directory")
        if self.write_labels is not None:
            check_label_path(Path(self.write_labels), "write_labels")


def student_policy(input_shape: tuple[int, ...], policy: str = "auto") -> str:
    """The student's input noise: ``randaugment``/``autoaugment`` (images), ``table`` (noise and feature dropout) or ``none``."""

    default = recipe(input_shape).student_policy
    if policy == "none" or default == "table":  # tables' noise is on features, whatever the image policy
        return "none" if policy == "none" else "table"
    return default if policy == "auto" else policy


def student_model_for(teacher: str, student: str = "auto") -> str:
    """Noisy Student's student network: ``auto`` is the teacher's, widened where the registry has a wider one
    (the paper's "equal or larger": the student absorbs more data, with noise); else the name given."""

    if student != "auto":
        return student
    return MODELS[teacher].wider or teacher if teacher in MODELS else teacher


@dataclass
class NoisyStudentResult(TrainResult):
    """A Noisy Student training: the last student (``nets``), every network's history, and the decisions.

    Attributes
    ----------
    rounds : list of dict
        Per network (teacher, then students): labeled and pseudo-labeled counts and test accuracy.
    unlabeled_rows : np.ndarray
        int (u,): the rows of X that were pseudo-labeled (the flagged ones), in order.
    pseudo_label, confidence, decision : np.ndarray
        Over the u rows, then the extra rows: the last student's label, its probability, and ``relabel`` /
        ``confirm`` / ``unresolved`` (extra rows: ``label`` / ``unresolved``).
    teacher_probs, student_probs : np.ndarray
        float32 (u + extra, K): the first teacher's and the last student's probabilities.
    corrected : np.ndarray
        int64 (N,): the given labels with the relabels applied.
    extra_ids : np.ndarray or None
        The extra rows' IDs.
    """

    rounds: list = field(default_factory=list)
    unlabeled_rows: np.ndarray | None = None
    pseudo_label: np.ndarray | None = None
    confidence: np.ndarray | None = None
    decision: np.ndarray | None = None
    teacher_probs: np.ndarray | None = None
    student_probs: np.ndarray | None = None
    corrected: np.ndarray | None = None
    extra_ids: np.ndarray | None = None


class NoisyStudentTraining(TrainingMethod):
    name = "noisy-student"
    summary = ("a teacher on the kept examples, then noised students on kept + pseudo-labeled flagged ones; "
               "relabels the flagged examples (Xie et al. 2020)")
    title = "Noisy Student"
    Options = NoisyStudentOptions

    def check_subset(self, subset):
        if subset != "kept":
            raise ParameterError("subset", "{name} all: noisy-student trains on the kept examples and relabels the "
                                 "flagged ones; drop {name} all")

    def prune_needed(self, options, subset):
        return "any"

    def from_run(self, options, inputs):
        ds, files = inputs.dataset, []
        options = replace(options, unlabeled_rows=np.flatnonzero(~inputs.prune.keep))
        if options.unlabeled:
            X_extra, ids = load_unlabeled(Path(options.unlabeled), ds,
                                          image_size=min(ds.input_shape[1:]) if ds.is_image else 0)
            options = replace(options, X_extra=X_extra, extra_ids=ids)
            if Path(options.unlabeled).is_file():
                files.append(Path(options.unlabeled))
        if len(options.unlabeled_rows) == 0 and options.X_extra is None:
            raise CleanpipeError(
                f"the prune stage of {inputs.root} flagged no examples: Noisy Student has nothing to relabel; "
                "train with --method standard, or give extra data with --unlabeled PATH")
        return options, files

    def prepare(self, options, job):
        flagged = np.asarray([] if options.unlabeled_rows is None else options.unlabeled_rows, dtype=np.int64)
        n_extra = 0 if options.X_extra is None else len(options.X_extra)
        if len(flagged) == 0 and n_extra == 0:
            raise ParameterError("unlabeled_rows", "(or X_extra) are needed: the examples to pseudo-label")
        X, labels = job.X, job.labels
        if n_extra:
            X_extra = np.asarray(options.X_extra, dtype=X.dtype)
            if X_extra.shape[1:] != X.shape[1:]:
                raise ParameterError("X_extra", f"rows must be shaped like X's {X.shape[1:]}, got {X_extra.shape[1:]}")
            X, labels = np.concatenate([X, X_extra]), np.concatenate([labels, np.zeros(n_extra, np.int64)])
        used = {"iterations": options.iterations, "student_model": student_model_for(job.settings.model,
                                                                                        options.student_model),
                   "threshold": options.threshold, "soft": options.soft, "temperature": options.temperature,
                   "balance": options.balance_to if options.balance else "none", "max_copies": options.max_copies,
                   "unlabeled_weight": options.unlabeled_weight, "label_smoothing": options.label_smoothing,
                   "dropout": options.dropout, "stochastic_depth": options.stochastic_depth,
                   "policy": student_policy(job.X.shape[1:], options.policy), "cutout": options.cutout,
                   "magnitude": options.magnitude, "ema": options.ema, "n_unlabeled_extra": n_extra}
        try:  # a student network that does not suit the data: named as the student's, not the teacher's --model
            check_model(used["student_model"], tuple(X.shape[1:]), network=True)
        except ParameterError as e:
            raise ParameterError("student_model", e.problem) from None
        # The pseudo-labeled set U: the flagged rows, then the extra ones (appended after X's rows).
        pseudo_rows = np.concatenate([flagged, len(job.X) + np.arange(n_extra)]).astype(np.int64)
        rows = np.setdiff1d(job.rows, flagged)  # a pseudo-labeled row is not also a labeled one
        return Plan(rows=rows, method_settings=used, config={"ema": options.ema}, X=X, labels=labels,
                    state={"flagged": flagged, "pseudo_rows": pseudo_rows, "key_arrays": [flagged]})

    def train(self, trainer, options, plan):
        job = trainer.job
        K, n_all = job.n_classes, len(trainer.labels)
        flagged, pseudo_rows, rows = plan.state["flagged"], plan.state["pseudo_rows"], plan.rows
        labels = job.labels
        given = np.concatenate([labels[flagged], np.full(len(pseudo_rows) - len(flagged), -1)])
        base_targets = np.zeros((n_all, K), dtype=np.float32)
        base_targets[rows] = targets(np.eye(K, dtype=np.float32)[labels[rows]], soft=False,
                                     smoothing=options.label_smoothing)
        labeled_counts = np.bincount(labels[rows], minlength=K).astype(np.float64)
        policy, student_model = plan.method_settings["policy"], plan.method_settings["student_model"]
        seed = job.settings.seed

        def build(noise: bool):
            net = trainer.build_nets(1, student_model if noise else job.settings.model)[0]
            return net, (add_model_noise(net, options.dropout, options.stochastic_depth) if noise else None)

        teacher_net, _ = build(noise=False)
        step = NoisyStudentLoss(base_targets, np.zeros(n_all, bool), noise=False)
        trained, history = trainer.train_nets([teacher_net], rows, step, "teacher", key=b"teacher", iteration=0, keep_done=True)
        teacher = trained[0]
        rounds = [{"iteration": 0, "role": "teacher", "n_labeled": int(len(rows)), "n_pseudo": 0,
                   "test_accuracy": history[-1].get("test_accuracy")}]
        first_probs, model_noise = None, {}
        for it in range(1, options.iterations + 1):
            probs = trainer.predict(teacher, pseudo_rows)  # eval mode, EMA weights, no augmentation
            first_probs = probs if first_probs is None else first_probs
            pseudo_label, confidence, _ = decide(given, probs, options.threshold)
            usable = confidence >= options.threshold
            per_class = balance_targets(plan.method_settings["balance"], int(usable.sum()), labeled_counts)
            if per_class is None:
                copies = usable.astype(np.int64)
            else:
                copies = balance_copies(pseudo_label, usable, per_class, max_copies=options.max_copies,
                                        rng=np.random.default_rng([seed, it]))
            pseudo_targets = targets(probs, soft=options.soft, temperature=options.temperature,
                                     smoothing=options.label_smoothing)
            round_targets = base_targets.copy()
            round_targets[pseudo_rows] = pseudo_targets
            is_pseudo = np.zeros(n_all, bool)
            is_pseudo[pseudo_rows] = True
            fit_labels = trainer.labels.copy()
            fit_labels[pseudo_rows] = pseudo_label  # what train accuracy is measured against
            student_rows = np.concatenate([rows, np.repeat(pseudo_rows, copies)])
            student_net, model_noise = build(noise=True)
            step = NoisyStudentLoss(round_targets, is_pseudo, unlabeled_weight=options.unlabeled_weight,
                                    noise=policy != "none", policy=policy, cutout=options.cutout,
                                    magnitude=options.magnitude)
            key = b"".join([b"student", str(it).encode(), pseudo_targets.tobytes(), copies.tobytes()])
            trained, h = trainer.train_nets([student_net], student_rows, step, f"student {it}/{options.iterations}",
                                     labels=fit_labels, key=key, iteration=it, keep_done=True)
            history = history + h
            record = {"iteration": it, "role": "student", "n_labeled": int(len(rows)), "n_pseudo": int(copies.sum()),
                      "n_pseudo_unique": int((copies > 0).sum()), "teacher_test_accuracy": rounds[-1]["test_accuracy"],
                      "test_accuracy": h[-1].get("test_accuracy")}
            if job.truth is not None and len(flagged):
                record["pseudo_label_accuracy"] = round(float(np.mean(pseudo_label[:len(flagged)] == job.truth[flagged])), 6)
            rounds.append(record)
            teacher = trained[0]

        final_probs = trainer.predict(teacher, pseudo_rows)
        pseudo_label, confidence, decision = decide(given, final_probs, options.threshold)
        n_flagged = len(flagged)
        decision = decision.copy()
        decision[n_flagged:] = np.where(confidence[n_flagged:] >= options.threshold, "label", "unresolved")
        corrected = labels.copy()
        relabel = decision[:n_flagged] == "relabel"
        corrected[flagged[relabel]] = pseudo_label[:n_flagged][relabel]
        result = trainer.result(trained, history, plan, model=student_model, cls=NoisyStudentResult, rounds=rounds,
                                unlabeled_rows=flagged, pseudo_label=pseudo_label, confidence=confidence,
                                decision=decision, teacher_probs=first_probs, student_probs=final_probs,
                                corrected=corrected, extra_ids=options.extra_ids)
        result.metrics = self.metrics(result, labels, job.truth, model_noise)
        return result

    @staticmethod
    def metrics(result: NoisyStudentResult, labels: np.ndarray, truth: np.ndarray | None, model_noise: dict) -> dict:
        flagged, n = result.unlabeled_rows, len(result.unlabeled_rows)
        decision, pseudo_label = result.decision[:n], result.pseudo_label[:n]
        counts = {d: int(np.sum(decision == d)) for d in DECISIONS}
        metrics = {"teacher_test_accuracy": result.rounds[0]["test_accuracy"], "iterations": result.rounds,
                   "n_flagged": int(n), **{f"n_{d}": c for d, c in counts.items()}, "model_noise": model_noise}
        if truth is not None and n:
            t = truth[flagged]
            for d in ("relabel", "confirm"):
                m = decision == d
                metrics[f"{d}_accuracy"] = round(float(np.mean(pseudo_label[m] == t[m])), 6) if m.any() else None
            metrics["flagged_label_accuracy_given"] = round(float(np.mean(labels[flagged] == t)), 6)
            metrics["flagged_label_accuracy_corrected"] = round(float(np.mean(result.corrected[flagged] == t)), 6)
            metrics["label_accuracy_given"] = round(float(np.mean(labels == truth)), 6)
            metrics["label_accuracy_corrected"] = round(float(np.mean(result.corrected == truth)), 6)
        return metrics

    def outputs(self, result, dataset, labels, truth):
        import pandas as pd

        flagged, n = result.unlabeled_rows, len(result.unlabeled_rows)
        relabel = pd.DataFrame({
            "index": flagged, "id": dataset.ids_train[flagged], "given_label": labels[flagged],
            "pseudo_label": result.pseudo_label[:n], "confidence": np.round(result.confidence[:n], 6),
            "decision": result.decision[:n], "teacher_label": result.teacher_probs[:n].argmax(1),
            "teacher_confidence": np.round(result.teacher_probs[:n].max(1), 6)})
        if truth is not None:
            relabel["true_label"] = truth[flagged]
            relabel["is_true_error"] = truth[flagged] != labels[flagged]
        order = {d: i for i, d in enumerate(DECISIONS)}
        relabel = relabel.assign(_o=relabel["decision"].map(order)).sort_values(
            ["_o", "confidence", "index"], ascending=[True, False, True], kind="stable").drop(columns="_o")
        files = {"relabel.csv": relabel,
                 "relabel_probs.npz": {"index": np.concatenate([flagged, len(labels) + np.arange(
                     len(result.pseudo_label) - n)]).astype(np.int64),
                     "teacher": result.teacher_probs, "student": result.student_probs}}
        if result.extra_ids is not None:
            files["unlabeled_labels.csv"] = pd.DataFrame({
                "id": result.extra_ids, "pseudo_label": result.pseudo_label[n:],
                "confidence": np.round(result.confidence[n:], 6), "decision": result.decision[n:]})
        return files

    def after_write(self, result, options, dataset):
        if options.write_labels:
            write_labels(Path(options.write_labels), dataset.ids_train, result.corrected)
            return f"corrected labels in {options.write_labels}"
        return None
