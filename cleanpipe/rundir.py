"""The run directory (:class:`RunDir`): paths, manifests, digests, stage transactions.

Layout (a contract: tests, scripts and users rely on these names)::

    RUN/
      dataset.json   which data this run uses and how it was split
      noise/         noisy_labels.npy  noise_matrix.npy  manifest.json  (semantic: labeler_rows.npy)
      crossval/      pred_probs.npy  folds.npy  manifest.json  (shards/ while folds run; slurm/ logs)
      prune/         label_issues.csv  issue_mask.npy  keep_mask.npy  manifest.json  (INCV: incv_sets.npz)
      theory/        theory.csv  confusion_matrix.npy  transition_matrix.npy  confusion.png  held_out.csv  manifest.json
      train/         model.pt  history.csv  manifest.json  (and each method's own files)
      review/        review.html  manifest.json
      apply/         corrections.csv  manifest.json  (the label file goes where --out says)
      predict/       predictions.csv  manifest.json  (without --out)
      report/        report.html and its plots

A stage writes every file into a hidden staging folder and swaps it in with a rename
only when all of them exist, so an interrupted or failed stage leaves the previous
state (or nothing), never half a stage. Its ``manifest.json`` records the sha256 of
every input it read and output it wrote; a later stage re-checks both before it
trusts those files, so stale artifacts are never mixed silently.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from cleanpipe import __version__
from cleanpipe.data import Dataset, DataSpec, load_dataset
from cleanpipe.errors import CleanpipeError
from cleanpipe.files import atomic_write_json, file_digest, load_npy, read_json

# The stage folders a run directory may hold (what a manifest's inputs are traced back through).
STAGES = ("noise", "crossval", "prune", "audit", "theory", "train", "review", "apply", "predict", "report")
DATASET_JSON = "dataset.json"
MANIFEST = "manifest.json"


def _versions() -> dict[str, str]:
    out = {"cleanpipe": __version__}
    for dist in ("numpy", "cleanlab", "torch", "scikit-learn"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


class StageWriter:
    """Collects one stage's outputs in a staging folder; see :meth:`RunDir.write_stage`."""

    def __init__(self, run: "RunDir", stage: str, staging: Path) -> None:
        self.run, self.stage, self.dir = run, stage, staging
        self.inputs: dict[str, str] = {}
        self.started = time.perf_counter()
        self.manifest: dict | None = None

    def path(self, name: str) -> Path:
        return self.dir / name

    def save_npy(self, name: str, array: np.ndarray) -> Path:
        p = self.dir / name
        np.save(p, np.ascontiguousarray(array), allow_pickle=False)
        return p

    def save_json(self, name: str, obj: Any) -> Path:
        p = self.dir / name
        p.write_text(json.dumps(obj, indent=2) + "\n")
        return p

    def record_input(self, path: Path) -> None:
        """Note a file this stage read; inside the run it is keyed by its relative path."""
        self.inputs[self.run.key(path)] = file_digest(path)

    def finish(self, *, parameters: dict, metrics: dict, device: str = "cpu", extra: dict | None = None) -> dict:
        """Write ``manifest.json`` last, once every output is in place."""
        outputs = {
            p.name: file_digest(p) for p in sorted(self.dir.iterdir()) if p.is_file() and p.name != MANIFEST
        }
        self.manifest = {
            "stage": self.stage,
            "cleanpipe_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "parameters": parameters,
            "inputs": self.inputs,
            "outputs": outputs,
            "metrics": metrics,
            "wall_time_s": round(time.perf_counter() - self.started, 3),
            "device": device,
            "versions": _versions(),
            **(extra or {}),
        }
        self.save_json(MANIFEST, self.manifest)
        return self.manifest


class RunDir:
    """A run directory: what every stage reads from and writes to.

    Parameters
    ----------
    root : path-like
        The directory. It is created by the first stage that writes to it.
    """

    def __init__(self, root: os.PathLike | str) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise CleanpipeError(f"{self.root} is a file, not a run directory; choose another path")
        self._recover()

    # ---- paths -----------------------------------------------------------------
    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def path(self, stage: str, name: str) -> Path:
        return self.root / stage / name

    def key(self, path: Path) -> str:
        """A file's name in manifests: relative to the run when inside it, else absolute."""
        path = Path(path).resolve()
        try:
            return path.relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return str(path)

    def _recover(self) -> None:
        # A stage interrupted between its two renames left `.STAGE.old`: put it back.
        if not self.root.is_dir():
            return
        for old in self.root.glob(".*.old"):
            stage = old.name[1:-4]
            if not (self.root / stage).exists():
                os.replace(old, self.root / stage)
            else:
                shutil.rmtree(old, ignore_errors=True)
        for partial in self.root.glob(".*.partial"):
            shutil.rmtree(partial, ignore_errors=True)

    # ---- writing ---------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator["RunDir"]:
        """Remove the run directory again if this command created it and then hit a user error.

        Only :class:`CleanpipeError` rolls back: an interrupt (Ctrl-C) or a crash keeps
        what finished (e.g. crossval's fold shards) so that re-running resumes.
        """
        created = not self.root.exists()
        try:
            yield self
        except CleanpipeError:
            if created and self.root.exists():
                shutil.rmtree(self.root, ignore_errors=True)
            raise

    def ensure_root(self) -> None:
        """Create the run directory, turning an impossible path into one clear error."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CleanpipeError(f"cannot create run directory {self.root}: {e.strerror or e}; choose another path") from None

    @contextlib.contextmanager
    def write_stage(self, stage: str, keep: tuple[str, ...] = (), started: float | None = None) -> Iterator[StageWriter]:
        """Stage outputs in ``RUN/.STAGE.partial`` and swap them in on success.

        On any exception the staging folder is removed and the previous ``RUN/STAGE``
        (if any) is untouched. Sub-folders named in ``keep`` (e.g. crossval's shards)
        move over from the previous ``RUN/STAGE`` into the new one. ``started``
        (``time.perf_counter()``) dates the manifest's wall time when the work began earlier.
        """
        self.ensure_root()
        staging = self.root / f".{stage}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        writer = StageWriter(self, stage, staging)
        if started is not None:  # the stage's work began before its outputs were staged
            writer.started = started
        try:
            yield writer
            if writer.manifest is None:
                raise RuntimeError(f"stage {stage} did not call finish()")
            final, old = self.stage_dir(stage), self.root / f".{stage}.old"
            for name in keep:
                if (final / name).exists() and not (staging / name).exists():
                    os.replace(final / name, staging / name)
            if final.exists():
                os.replace(final, old)
            os.replace(staging, final)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def write_dataset(self, spec: DataSpec, ds: Dataset) -> None:
        """Record which data this run uses (``dataset.json``), atomically."""
        self.ensure_root()
        atomic_write_json(self.root / DATASET_JSON, {"spec": spec.to_json(), **ds.summary(), "meta": ds.meta})

    def bind_dataset(self, spec: "DataSpec | None") -> tuple[DataSpec, Dataset, bool]:
        """The dataset a stage should use: ``spec`` if given, else the run's own.

        Returns ``(spec, dataset, is_new)``; ``is_new`` means the caller should
        :meth:`write_dataset` once its stage succeeds. A run keeps one dataset: a
        different ``spec`` for a run that already has one is refused.
        """
        recorded = self.dataset_json()
        if spec is None:
            if recorded is None:
                raise CleanpipeError(
                    f"{self.root} has no dataset yet; give --dataset NAME (and --data PATH), e.g. --dataset digits"
                )
            spec = DataSpec.from_json(recorded["spec"])
        elif recorded is not None and DataSpec.from_json(recorded["spec"]) != spec:
            was = DataSpec.from_json(recorded["spec"])
            raise CleanpipeError(
                f"{self.root} already uses dataset {was.source!r}"
                + (f" from {was.path}" if was.path else "")
                + " with other options; use a new run directory for other data"
            )
        ds = load_dataset(spec)
        if recorded is not None and ds.fingerprint() != recorded.get("fingerprint"):
            raise CleanpipeError(
                f"the {spec.source} data"
                + (f" at {spec.path}" if spec.path else "")
                + f" changed since {self.root} was made (fingerprint differs); use a new run directory"
            )
        return spec, ds, recorded is None

    # ---- reading ---------------------------------------------------------------
    def has(self, stage: str) -> bool:
        return (self.stage_dir(stage) / MANIFEST).is_file()

    def manifest(self, stage: str) -> dict | None:
        p = self.stage_dir(stage) / MANIFEST
        return read_json(p) if p.is_file() else None

    def dataset_json(self) -> dict | None:
        p = self.root / DATASET_JSON
        return read_json(p) if p.is_file() else None

    def training_labels(self, ds: Dataset) -> tuple[np.ndarray, np.ndarray | None, list[Path]]:
        """The labels later stages train on, the truth when known, and the files they came from.

        With a noise stage: its noisy labels, and the dataset's labels as the truth. Without
        one: the dataset's labels (real data: truth unknown).
        """
        files = [self.root / DATASET_JSON]
        if not self.has("noise"):
            return ds.y_train, None, files
        self.require("noise")
        path = self.path("noise", "noisy_labels.npy")
        labels = load_npy(path, what="label vector").astype(np.int64)
        if labels.shape != ds.y_train.shape:
            raise CleanpipeError(f"{path} does not fit the dataset; re-run `cleanpipe noise {self.root}`")
        return labels, ds.y_train, files + [path]

    def require(self, stage: str, *, hint: str | None = None) -> dict:
        """Return a stage's manifest after checking that it is complete and current.

        Checks that every output still has the digest the stage recorded (nobody edited
        it) and that every input it read inside the run still matches (nothing upstream
        was re-run since), recursively up the chain.
        """
        man = self.manifest(stage)
        if man is None:
            raise CleanpipeError(
                f"{self.root}: no {stage} stage yet; run `{hint or f'cleanpipe {stage} {self.root}'}` first"
            )
        self._check_current(stage, man, seen=set())
        return man

    def _check_current(self, stage: str, man: dict, seen: set[str]) -> None:
        seen.add(stage)
        for name, digest in man.get("outputs", {}).items():
            p = self.path(stage, name)
            if not p.is_file() or file_digest(p) != digest:
                raise CleanpipeError(
                    f"{p} is missing or changed since `cleanpipe {stage}` wrote it; re-run `cleanpipe {stage} {self.root}`"
                )
        for key, digest in man.get("inputs", {}).items():
            p = Path(key) if os.path.isabs(key) else self.root / key
            if os.path.isabs(key):
                continue  # files outside the run are the user's; their digest is kept for the record
            if not p.is_file() or file_digest(p) != digest:
                raise CleanpipeError(
                    f"the {stage} stage is stale: {key} changed after it ran; re-run `cleanpipe {stage} {self.root}`"
                )
            upstream = Path(key).parts[0]
            if upstream in STAGES and upstream not in seen and (up := self.manifest(upstream)) is not None:
                self._check_current(upstream, up, seen)

    def is_current(self, stage: str, parameters: dict) -> bool:
        """True when the stage exists, is current, and ran with these parameters (for `cleanpipe run`)."""
        man = self.manifest(stage)
        # Compare as JSON sees them (tuples become lists, keys strings).
        if man is None or man.get("parameters") != json.loads(json.dumps(parameters)):
            return False
        try:
            self._check_current(stage, man, seen=set())
        except CleanpipeError:
            return False
        return True
