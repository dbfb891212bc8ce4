"""The ``cleanpipe`` command line: parses options, calls one stage, prints a summary.

No algorithm lives here. Every list of choices in ``--help`` comes from a registry (data sources, models,
prune methods, training methods, executors, noise kinds), so the help cannot drift from the code. Every
command turns a :class:`CleanpipeError` into one line on stderr and exit code 2; a
:class:`~cleanpipe.validation.ParameterError` is printed with the flag of the parameter it names.
"""

from __future__ import annotations

import functools
import inspect
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from cleanpipe import __version__
from cleanpipe.audit import AuditSettings
from cleanpipe.audit.issues import LEAK_THRESHOLD, NEAR_THRESHOLD, OUTLIER_THRESHOLD
from cleanpipe.audit.issues import K as AUDIT_K
from cleanpipe.data import SOURCES, DataSpec
from cleanpipe.data.unlabeled import KINDS as UNLABELED_KINDS
from cleanpipe.detect.confident import ALIASES, DEFAULT_METHOD, FILTERS, RANK_BY
from cleanpipe.detect.crossval import N_FOLDS
from cleanpipe.engine import DEVICES
from cleanpipe.errors import CleanpipeError
from cleanpipe.executors import (
    EXECUTORS,
    RayOptions,
    SlurmOptions,
    placement,
)
from cleanpipe.models import MODELS
from cleanpipe.noise import ALL_KINDS
from cleanpipe.progress import RichProgress
from cleanpipe.recipes import RECIPES
from cleanpipe.robust import METHODS, get_method
from cleanpipe.rundir import RunDir
from cleanpipe.stages.apply import run_apply_stage
from cleanpipe.stages.audit import run_audit_stage
from cleanpipe.stages.crossval import run_crossval_stage
from cleanpipe.stages.noise import run_noise_stage
from cleanpipe.stages.pipeline import run_pipeline
from cleanpipe.stages.predict import evaluate as evaluate_model
from cleanpipe.stages.predict import run_predict
from cleanpipe.stages.prune import run_prune_stage
from cleanpipe.stages.report import run_report_stage
from cleanpipe.stages.review import run_review_stage
from cleanpipe.stages.theory import QUANTITIES, run_theory_stage
from cleanpipe.stages.train import run_train_stage
from cleanpipe.validation import ParameterError, check_choice, check_number, parse_bytes

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

app = typer.Typer(
    name="cleanpipe",
    help=(
        "Find label errors in classification datasets and train models that stay accurate despite them.\n\n"
        "Stages read and write a run directory: noise -> crossval -> prune -> train (theory: INCV's check); "
        "review -> apply -> a new run; predict and evaluate use a trained model.\n\n"
        "Example: [bold]cleanpipe run runs/demo[/] (the whole pipeline on the embedded digits data)."
    ),
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _choices(names, sep: str = " | ") -> str:
    return sep.join(names)


DEVICE_HELP = _choices(DEVICES)


def _flags(fn: Callable) -> dict[str, str]:
    """Each parameter of a command and its first flag (``n_folds`` -> ``--folds``)."""
    out = {}
    for name, param in inspect.signature(fn).parameters.items():
        decls = [d for d in (getattr(param.default, "param_decls", None) or ()) if d.startswith("--")]
        if decls:
            out[name] = decls[0].split("/")[0]
    return out


def user_errors(fn: Callable) -> Callable:
    """Turn user-caused errors into one clear line and exit code 2 (no traceback).

    A :class:`~cleanpipe.validation.ParameterError` names Python parameters; the line names the flags
    they came from instead (the command's own; else the parameter's name as a flag).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            for name in ("seed", "split_seed"):  # numpy's and scikit-learn's seeds are 32-bit unsigned
                if isinstance(kwargs.get(name), int) and not 0 <= kwargs[name] < 2**32:
                    raise ParameterError(name, f"must be between 0 and 2**32 - 1, got {kwargs[name]}")
            return fn(*args, **kwargs)
        except ParameterError as e:
            own = _flags(wrapper)  # a parameter the command lacks: the flag it would have (`--student-model`)
            flags = {p: own.get(p, "--" + p.replace("_", "-")) for p in (e.parameter, *e.mentions)}
            err_console.print(f"[bold red]error:[/] {e.render(flags[e.parameter], flags)}")
            raise typer.Exit(2) from None
        except CleanpipeError as e:
            err_console.print(f"[bold red]error:[/] {e}")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]: finished work is kept; re-run the same command to resume")
            raise typer.Exit(130) from None

    return wrapper


def with_options(*groups: dict[str, inspect.Parameter]) -> Callable:
    """Add shared groups of options (data, where folds run) to a command, received in its ``**options``."""

    def add(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        own = [p for p in sig.parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD]
        fn.__signature__ = sig.replace(parameters=own + [p for g in groups for p in g.values()])
        return fn

    return add


def _group(**options) -> dict[str, inspect.Parameter]:
    """A group of shared options: ``name=(annotation, typer.Option(...))``."""
    return {name: inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=hint)
            for name, (hint, opt) in options.items()}


def _pick(options: dict, group: dict) -> dict:
    return {k: options[k] for k in group}


def _version(value: bool) -> None:
    if value:
        console.print(f"cleanpipe {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    """Find label errors in classification datasets and train models that survive them."""


def _recipe_help(stage: str, field: str) -> str:
    """A recipe's value per kind of data, for --help (``cleanpipe.recipes`` is the one table)."""

    def value(fit):
        v = getattr(fit, field)
        return ("0.1 SGD" if fit.optimizer == "sgd" else "2e-3 AdamW") if v is None else f"{v:g}"

    return ", ".join(f"{kind.value} {value(getattr(r, stage))}" for kind, r in RECIPES.items())


# ---- shared options ----------------------------------------------------------------------

RunArg = typer.Argument(..., metavar="RUN", help="Run directory (created if missing).", show_default=False)
MadeRunArg = typer.Argument(..., metavar="RUN", help="Run directory, made by an earlier stage.", show_default=False)
DeviceOpt = typer.Option("auto", "--device", help=DEVICE_HELP)
ThreadsOpt = typer.Option(None, "--threads", help="CPU threads for torch (default: all cores; use fewer when sharing the machine).")
MODEL_HELP = "auto | " + _choices(MODELS)
NETWORK_HELP = "auto | " + _choices(name for name, info in MODELS.items() if info.network)  # what train trains

DATA = _group(
    dataset=(Optional[str], typer.Option(None, "--dataset", "-d", help=f"Data source: {_choices(SOURCES, ', ')} (see `cleanpipe datasets`).", rich_help_panel="Data")),
    data=(Optional[Path], typer.Option(None, "--data", help="File or directory the source reads.", rich_help_panel="Data")),
    test_fraction=(float, typer.Option(DataSpec.test_fraction, "--test-fraction", help="Held-out test share when the source has no test files; 0 holds nothing out, so every example is checked for label errors (no test accuracy).", rich_help_panel="Data")),
    split_seed=(int, typer.Option(DataSpec.split_seed, "--split-seed", help="Seed of the train/test hold-out split.", rich_help_panel="Data")),
    image_size=(int, typer.Option(DataSpec.image_size, "--image-size", help="folder: resize images to this side length.", rich_help_panel="Data")),
    label_column=(str, typer.Option(DataSpec.label_column, "--label-column", help="table: the column holding labels.", rich_help_panel="Data")),
)

# Where crossval's folds run: the same options on `crossval` and `run`.
_FOLDS = "Where folds run"
WHERE = _group(
    executor=(str, typer.Option("local", "--executor", help=" | ".join(f"{name} ({e.summary})" for name, e in EXECUTORS.items()) + ".", rich_help_panel=_FOLDS)),
    address=(Optional[str], typer.Option(None, "--address", help="ray: a running cluster to join (e.g. ray://head:10001 or auto); default: start Ray on this machine.", rich_help_panel=_FOLDS)),
    cpus_per_fold=(int, typer.Option(1, "--cpus-per-fold", help="ray/slurm: CPUs (and torch threads) per fold.", rich_help_panel=_FOLDS)),
    gpus_per_fold=(Optional[float], typer.Option(None, "--gpus-per-fold", help="ray: GPUs per fold (default 1 when CUDA is visible, else 0).", rich_help_panel=_FOLDS)),
    slurm_partition=(Optional[str], typer.Option(None, "--slurm-partition", help="slurm: the partition.", rich_help_panel=_FOLDS)),
    slurm_time=(int, typer.Option(SlurmOptions.time_min, "--slurm-time", help="slurm: minutes per fold before Slurm stops it.", rich_help_panel=_FOLDS)),
    slurm_gpus_per_fold=(int, typer.Option(0, "--slurm-gpus-per-fold", help="slurm: GPUs per fold.", rich_help_panel=_FOLDS)),
    slurm_array_parallelism=(int, typer.Option(SlurmOptions.array_parallelism, "--slurm-array-parallelism", help="slurm: folds running at once at most.", rich_help_panel=_FOLDS)),
    slurm_option=(list[str], typer.Option([], "--slurm-option", help="slurm: another sbatch option as KEY=VALUE (repeatable), e.g. account=ml.", rich_help_panel=_FOLDS)),
    slurm_cluster=(str, typer.Option("slurm", "--slurm-cluster", help="slurm: slurm, or local to run the same job array as local processes (to try it out).", rich_help_panel=_FOLDS)),
    device_memory=(Optional[str], typer.Option(None, "--device-memory", help="Device memory the dataset may take (e.g. 8GB); larger data is streamed from host memory. Default: half the free GPU memory; no limit on CPU.", rich_help_panel=_FOLDS)),
)


def data_spec(dataset, data, labels, test_fraction, split_seed, image_size, label_column) -> DataSpec | None:
    """A DataSpec from the CLI's data options (it checks itself), or None when no --dataset was given."""
    if dataset is None:
        if data is not None:
            raise CleanpipeError("--data needs --dataset NAME to say what kind of data it is")
        return None
    spec = DataSpec(source=dataset, path=str(data.resolve()) if data is not None else None, test_fraction=test_fraction,
                    split_seed=split_seed, image_size=image_size, label_column=label_column,
                    labels=str(labels.resolve()) if labels is not None else None)
    if data is not None and not SOURCES[dataset].needs_path:
        raise CleanpipeError(f"--dataset {dataset} is embedded and takes no --data; drop --data or pick a source that reads files")
    return spec


def where_folds_run(executor, address, cpus_per_fold, gpus_per_fold, slurm_partition, slurm_time, slurm_gpus_per_fold,
                    slurm_array_parallelism, slurm_option, slurm_cluster, device_memory, wait: bool = True):
    """The checked executor (:func:`cleanpipe.executors.placement`) and device budget from the CLI's options."""
    check_choice(slurm_cluster, "slurm_cluster", ("slurm", "local"))
    for name, value in (("cpus_per_fold", cpus_per_fold), ("slurm_time", slurm_time),
                        ("slurm_array_parallelism", slurm_array_parallelism)):
        check_number(value, name, low=1)
    if gpus_per_fold is not None:
        check_number(gpus_per_fold, "gpus_per_fold", low=0)
    extra = {}
    for item in slurm_option:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ParameterError("slurm_option", f"must be KEY=VALUE (an sbatch option without its dashes), got {item!r}")
        extra[key.strip().replace("-", "_")] = value.strip()
    where = placement(executor, RayOptions(address=address, cpus_per_task=cpus_per_fold, gpus_per_task=gpus_per_fold),
                      SlurmOptions(partition=slurm_partition, time_min=slurm_time, gpus_per_task=slurm_gpus_per_fold,
                                   cpus_per_task=cpus_per_fold, array_parallelism=slurm_array_parallelism, extra=extra,
                                   cluster=slurm_cluster, wait=wait))
    return where, None if device_memory is None else parse_bytes(device_memory, "device_memory")


def _set_threads(threads: Optional[int]) -> None:
    # torch spins a thread per core; on a machine shared with other work, fewer threads are faster.
    if threads is not None:
        check_number(threads, "threads", low=1)
        import torch

        torch.set_num_threads(threads)


# ---- commands ----------------------------------------------------------------------------


@app.command()
@user_errors
def datasets() -> None:
    """List the data sources and how to point each at data.

    Example: [bold]cleanpipe datasets[/]
    """
    table = Table(title="Data sources", show_lines=True)
    table.add_column("--dataset", style="bold cyan", no_wrap=True)
    table.add_column("what")
    table.add_column("--data and options")
    for name, src in SOURCES.items():
        opts = f"\n[dim]options: {', '.join(src.options)}[/]" if src.options else ""
        table.add_row(name, src.summary, src.layout + opts)
    console.print(table)
    console.print(
        "Any source takes [bold]--labels FILE[/] (.npy, .csv, or .json: a list or a {path: label} mapping "
        "matched by example ID) to replace the training labels with your own."
    )



@app.command()
@user_errors
@with_options(DATA)
def noise(
    run_dir: Path = RunArg,
    kind: str = typer.Option(..., "--kind", "-k", help=_choices(ALL_KINDS) + " (the last: the confusions of a network trained on a small labeled share)", show_default=False),
    rate: float = typer.Option(..., "--rate", "-r", help="Noise rate in [0, 1].", show_default=False),
    sparsity: float = typer.Option(0.0, "--sparsity", help="random: share of zero off-diagonal noise rates."),
    class_map: Optional[str] = typer.Option(None, "--map", help="asymmetric: SRC:DST pairs, e.g. 3:8,5:6 (default: the dataset's standard map)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the noise."),
    n_classes: Optional[int] = typer.Option(None, "--n-classes", help="Standalone --labels form: number of classes (default max label + 1)."),
    labeler_fraction: float = typer.Option(0.05, "--labeler-fraction", help="semantic: share of the data the labeling network trains on."),
    device: str = typer.Option("auto", "--device", help=f"semantic: where the labeling network trains ({DEVICE_HELP})."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="With --dataset: your own training labels. Alone: noise this bare label file.", rich_help_panel="Data"),
    **options,
) -> None:
    """Inject synthetic label noise into the training labels (for benchmarks).

    Writes RUN/noise/noisy_labels.npy, noise_matrix.npy (P(noisy=i | true=j)) and manifest.json.

    Examples:
      [bold]cleanpipe noise runs/demo --dataset digits --kind symmetric --rate 0.4[/]

      [bold]cleanpipe noise runs/mnist --dataset mnist --data ../shared/data/mnist-test --kind pairflip --rate 0.45[/]

      [bold]cleanpipe noise runs/cl --labels true_labels.npy --kind random --rate 0.4 --sparsity 0.2[/]

      [bold]cleanpipe noise runs/sem --dataset digits --kind semantic --rate 0.1[/]  (errors a network would make)
    """
    data = _pick(options, DATA)
    spec = data_spec(labels=labels if data["dataset"] else None, **data)
    stage = run_noise_stage(
        RunDir(run_dir), spec=spec, labels_file=labels if spec is None else None, kind=kind, rate=rate,
        sparsity=sparsity, class_map=class_map, n_classes=n_classes, seed=seed, labeler_fraction=labeler_fraction,
        device=device,
    )
    print_noise_summary(run_dir, stage)


def print_noise_summary(run_dir: Path, stage) -> None:
    r, m = stage.result, stage.manifest
    console.print(
        f"[bold green]noise[/] {m['parameters']['kind']} rate {m['parameters']['rate']:g} on {stage.source}: "
        f"{m['metrics']['n_changed']:,} of {m['metrics']['n']:,} training labels changed "
        f"(actual {r.actual_noise_rate:.2%}, expected {r.expected_noise_rate:.2%})"
    )
    K = r.noise_matrix.shape[0]
    if K <= 12:
        t = Table(title="noise matrix P(noisy = row | true = column)", title_justify="left", box=None, pad_edge=False)
        t.add_column("", style="dim")
        for j in range(K):
            t.add_column(stage.class_names[j][:8], justify="right")
        for i in range(K):
            cells = [
                f"[bold]{v:.2f}[/]" if i == j else (f"{v:.2f}" if v >= 0.005 else "<.01" if v > 0 else "[dim]·[/]")
                for j, v in enumerate(r.noise_matrix[i])
            ]
            t.add_row(stage.class_names[i][:8], *cells)
        console.print(t)
    metrics = m["metrics"]
    if "labeler_accuracy" in metrics:
        top = ", ".join(f"{c['true']}->{c['noisy']} {c['count']}" for c in metrics["top_confusions"])
        console.print(f"labeler: trained on {metrics['labeler_rows']:,} examples, accuracy {metrics['labeler_accuracy']:.3f} "
                      f"on the rest; most frequent changes: {top or 'none'}")
    unflipped = [stage.class_names[j] for j, (c, n) in enumerate(zip(metrics["n_changed_per_class"], metrics["n_per_class"]))
                 if c == 0 and n and r.noise_matrix[j, j] < 1.0]
    if unflipped and m["parameters"]["kind"] != "semantic":
        console.print(f"[yellow]note:[/] {len(unflipped)} class(es) got no flips ({', '.join(unflipped[:5])}"
                      f"{', ...' if len(unflipped) > 5 else ''}): at this rate they expect less than one each, and the "
                      f"{metrics['n_changed']:,} flips went to the classes with the largest remainders")
    files = "noisy_labels.npy noise_matrix.npy" + (" labeler_rows.npy" if "labeler_accuracy" in metrics else "")
    console.print(f"[dim]wrote {run_dir / 'noise'}/ {files} manifest.json[/]")


@app.command()
@user_errors
@with_options(WHERE, DATA)
def crossval(
    run_dir: Path = RunArg,
    model: str = typer.Option("auto", "--model", "-m", help=MODEL_HELP),
    n_folds: int = typer.Option(N_FOLDS, "--folds", "-K", help="Number of stratified folds K."),
    repeats: Optional[int] = typer.Option(None, "--repeats", "-R", help=f"Split the data R times (R x K fold tasks) and average each row over the R models that did not see it (default {_recipe_help('crossval', 'repeats')}).", show_default=False),
    tta: Optional[bool] = typer.Option(None, "--tta/--no-tta", help="Images: average each held-out prediction over the image shifted up, down, left and right (default: on for small and grey images, off for colour ones, which average flips).", show_default=False),
    epochs: Optional[int] = typer.Option(None, "--epochs", "-e", help=f"Epochs per fold (default {_recipe_help('crossval', 'epochs')})."),
    mixup: Optional[float] = typer.Option(None, "--mixup", help=f"Train the folds with mixup, Beta(ALPHA, ALPHA), so that they do not learn the training folds' consistent errors; 0: plain cross-entropy (default {_recipe_help('crossval', 'mixup')}).", show_default=False),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help=f"Batch size (default {_recipe_help('crossval', 'batch_size')})."),
    lr: Optional[float] = typer.Option(None, "--lr", help=f"Peak learning rate (default {_recipe_help('crossval', 'lr')})."),
    seed: int = typer.Option(0, "--seed", help="Seed of the folds and the models."),
    device: str = DeviceOpt,
    threads: Optional[int] = ThreadsOpt,
    fold: Optional[int] = typer.Option(None, "--fold", help="Run only fold I (0-based; with --repeats R, task I of 0..R*K-1) as its own job; join later with --combine."),
    combine: bool = typer.Option(False, "--combine", help="Join the finished fold shards into pred_probs.npy."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the model (CUDA; adds ~7-10 s of compilation per fold, so only long runs gain)."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="slurm: wait for the array and combine, or print its job ID and leave `--combine` for later.", rich_help_panel=_FOLDS),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Your own training labels (.npy/.csv/.json), for data whose labels are really noisy.", rich_help_panel="Data"),
    **options,
) -> None:
    """K-fold out-of-fold predicted probabilities of the training split (pred_probs).

    Trains on the run's noisy labels when it has a noise stage, else on the dataset's labels.
    Finished folds are kept as shards: an interrupted job resumes where it stopped.

    Examples:
      [bold]cleanpipe crossval runs/demo[/]   (after cleanpipe noise runs/demo ...)

      [bold]cleanpipe crossval runs/real --dataset table --data data.csv --label-column y --folds 5[/]

      [bold]cleanpipe crossval runs/c10 --fold 0 --device cuda[/]  ...one job per fold, then [bold]--combine[/]

      [bold]cleanpipe crossval runs/demo --executor ray --cpus-per-fold 1[/]  (a Ray task per fold; --address to join a cluster)

      [bold]cleanpipe crossval runs/c10 --executor slurm --slurm-partition gpu --slurm-gpus-per-fold 1[/]  (a submitit job array)
    """
    spec = data_spec(labels=labels, **_pick(options, DATA))
    _set_threads(threads)
    where, device_memory = where_folds_run(**_pick(options, WHERE), wait=wait)
    with RichProgress(console) as progress:
        stage = run_crossval_stage(
            RunDir(run_dir), spec=spec, model=model, n_folds=n_folds, repeats=repeats, tta=tta, mixup=mixup, epochs=epochs,
            batch_size=batch_size, lr=lr, seed=seed, device=device, fold=fold, combine=combine, compile=compile_,
            where=where, threads=threads, device_memory=device_memory, progress=progress,
        )
    print_crossval_summary(run_dir, stage)


def print_crossval_summary(run_dir: Path, stage) -> None:
    s = stage.settings
    if stage.manifest is None and stage.job_id is not None:
        console.print(f"[bold green]crossval[/] submitted Slurm job array {stage.job_id} "
                      f"(folds {', '.join(map(str, stage.missing))}); when it is done: cleanpipe crossval {run_dir} --combine "
                      "(with this command's --folds, --epochs, --model and --seed)")
        return
    if stage.manifest is None:
        left = ", ".join(map(str, stage.missing))
        console.print(
            f"[bold green]crossval[/] fold {stage.trained[0]} of {stage.n_folds * stage.repeats} done"
            + (f"; folds still to run: {left}" if left else f"; all folds done: run `cleanpipe crossval {run_dir} --combine`")
        )
        return
    m = stage.manifest["metrics"]
    splits = f"{stage.n_folds} folds" + (f" x {stage.repeats} repeats" if stage.repeats > 1 else "")
    how = ", ".join(filter(None, [s.mixup and f"mixup {s.mixup:g}", s.tta and "shifted views"]))
    line = (f"[bold green]crossval[/] {s.model}{f' ({how})' if how else ''}, {splits} x {s.epochs} epochs: "
            f"out-of-fold accuracy {m['oof_accuracy']:.4f}")
    if "oof_accuracy_true" in m:
        line += f" vs given labels, [bold]{m['oof_accuracy_true']:.4f}[/] vs true labels"
    console.print(line)
    chance = m.get("chance_accuracy")
    if chance is not None and m["oof_accuracy"] < chance + 0.15 * (1 - chance):
        console.print(f"[bold yellow]warning:[/] out-of-fold accuracy {m['oof_accuracy']:.3f} is near chance "
                      f"({chance:.3f}, always the largest class): these probabilities say little, so prune's flags "
                      "will be unreliable; train longer (--epochs), or try another --model")
    if stage.reused:
        console.print(f"[dim]reused finished folds {', '.join(map(str, stage.reused))} (their training time is counted below)[/]")
    console.print(
        f"[dim]{m['fold_seconds_total']:.1f}s of training on {stage.manifest['device']}; "
        f"wrote {run_dir / 'crossval'}/ pred_probs.npy folds.npy manifest.json[/]"
    )


PRUNE_METHODS = f"{_choices(FILTERS)}, the paper's {_choices(ALIASES)}, or incv"


@app.command()
@user_errors
def prune(
    run_dir: Path = RunArg,
    method: str = typer.Option(DEFAULT_METHOD, "--method", help=PRUNE_METHODS),
    pred_probs: Optional[Path] = typer.Option(None, "--pred-probs", help="Standalone: out-of-sample probabilities (.npy, N x K) computed anywhere.", rich_help_panel="Standalone form"),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Standalone: the given labels (.npy/.csv/.json).", rich_help_panel="Standalone form"),
    true_labels: Optional[Path] = typer.Option(None, "--true-labels", help="Standalone: the true labels, to report precision/recall.", rich_help_panel="Standalone form"),
    frac_noise: float = typer.Option(1.0, "--frac-noise", help="Flag only this share of the estimated issues (noise-rate, class and both methods)."),
    num_to_remove_per_class: Optional[str] = typer.Option(None, "--num-to-remove-per-class", help="K comma-separated counts (noise-rate, class and both methods)."),
    rank_by: str = typer.Option(RANK_BY[0], "--rank-by", help="The label-quality score that orders the report: " + _choices(RANK_BY)),
    top: int = typer.Option(10, "--top", help="How many of the most suspicious examples to show."),
    iterations: int = typer.Option(4, "--iterations", help="incv: selection iterations (2 models each).", rich_help_panel="INCV"),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="incv: epochs per model (default 40, fitted without augmentation as INCV's theory assumes).", rich_help_panel="INCV"),
    model: str = typer.Option("auto", "--model", help="incv: the network; auto = resnet32 (the paper's) for colour images, mlp128 for grey or small ones, mlp for tables.", rich_help_panel="INCV"),
    seed: int = typer.Option(0, "--seed", help="incv: seed of halves and models.", rich_help_panel="INCV"),
    device: str = typer.Option("auto", "--device", help=f"incv: {DEVICE_HELP}", rich_help_panel="INCV"),
    noise_pattern: str = typer.Option("auto", "--noise-pattern", help="incv: symmetric noise discards high-loss examples; auto reads the run's noise kind.", rich_help_panel="INCV"),
) -> None:
    """Find label errors with confident learning (cleanlab): masks and a ranked CSV report.

    Writes RUN/prune/issue_mask.npy (True = flagged), keep_mask.npy (True = kept),
    label_issues.csv (worst first) and manifest.json.

    Examples:
      [bold]cleanpipe prune runs/demo[/]   (after noise and crossval)

      [bold]cleanpipe prune runs/cl --pred-probs pred_probs.npy --labels noisy_labels.npy --true-labels true_labels.npy --method cl-pbnr[/]

      [bold]cleanpipe prune runs/demo --method incv --iterations 4[/]   (INCV: trains its own models, no crossval needed)
    """
    counts = None
    if num_to_remove_per_class is not None:
        try:
            counts = [int(c) for c in num_to_remove_per_class.split(",")]
        except ValueError:
            raise ParameterError("num_to_remove_per_class", "takes comma-separated whole numbers, e.g. 10,10,5") from None
    incv = {"iterations": iterations, "epochs": epochs, "model": model, "seed": seed, "device": device,
            "pattern": noise_pattern}
    with RichProgress(console) as progress:
        stage = run_prune_stage(
            RunDir(run_dir), method=method, pred_probs_file=pred_probs, labels_file=labels, true_labels_file=true_labels,
            frac_noise=frac_noise, num_to_remove_per_class=counts, rank_by=rank_by, incv=incv, progress=progress,
        )
    print_prune_summary(run_dir, stage, top)


@app.command()
@user_errors
def audit(
    run_dir: Path = MadeRunArg,
    features: Optional[Path] = typer.Option(None, "--features", help="Your own embeddings (.npy, N x D for the training rows, or training then test rows) instead of the audit's encoder.", show_default=False),
    k: int = typer.Option(AUDIT_K, "--k", help="Nearest neighbours per row (Datalab's 10)."),
    near_threshold: float = typer.Option(NEAR_THRESHOLD, "--near-threshold", help="A near duplicate lies closer than this times the median nearest-neighbour distance (Datalab's)."),
    outlier_threshold: float = typer.Option(OUTLIER_THRESHOLD, "--outlier-threshold", help="Outliers beyond Q3 + (1/t - 1) IQR of the mean kNN distance (Datalab's t; 1.7 IQR)."),
    leak_threshold: float = typer.Option(LEAK_THRESHOLD, "--leak-threshold", help="A test row closer than this times the training rows' median nearest-neighbour distance copies a training row."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="The encoder's epochs (default crossval's recipe: 20 on 28x28 grey images, 30 on colour).", show_default=False),
    seed: int = typer.Option(0, "--seed", help="The encoder's seed."),
    device: str = DeviceOpt,
    threads: Optional[int] = ThreadsOpt,
    top: int = typer.Option(5, "--top", help="Rows of each issue kind to show."),
) -> None:
    """Find exact and near duplicates, outliers and test rows that copy training rows.

    Embeds every row with one network trained on all training rows (or --features), hashes the raw rows for
    exact copies, and compares rows by cosine distance with faiss. Writes RUN/audit/issues.csv (id, split,
    issue, other_id, score, labels_differ, ...), features.npy and manifest.json; `cleanpipe review` shows the
    findings beside the label issues.

    Examples:
      [bold]cleanpipe audit runs/demo[/]   (after crossval or noise)

      [bold]cleanpipe audit runs/real --features embeddings.npy[/]   (N x D, e.g. a pretrained encoder's)
    """
    settings = AuditSettings(k=k, near_threshold=near_threshold, outlier_threshold=outlier_threshold,
                             leak_threshold=leak_threshold, seed=seed)
    _set_threads(threads)
    with RichProgress(console) as progress:
        stage = run_audit_stage(RunDir(run_dir), features=features, settings=settings, seed=seed, epochs=epochs,
                                device=device, progress=progress)
    print_audit_summary(run_dir, stage, top)


def print_audit_summary(run_dir: Path, stage, top: int = 5) -> None:
    m, p = stage.manifest["metrics"], stage.manifest["parameters"]
    space = "your features" if p["features"] == "file" else f"a {p['encoder']} trained on all {stage.n_train:,} training rows"
    leaks = (f", [bold]{m['n_test_leak']:,}[/] of {stage.n_test:,} test rows copy training rows ({m['test_leak_share']:.1%})"
             if p["leak_check"] else " (no test split: no leak check)")
    console.print(f"[bold green]audit[/] {stage.n_train:,} training rows in {space} ({m['feature_dim']} dimensions): "
                  f"[bold]{m['n_exact_duplicate']:,}[/] exact duplicates, [bold]{m['n_near_duplicate']:,}[/] near duplicates, "
                  f"[bold]{m['n_outlier']:,}[/] outliers{leaks}")
    if m["n_labels_differ"]:
        console.print(f"[yellow]note:[/] {m['n_labels_differ']:,} duplicate or leak row(s) carry another label than their copy: label errors on one side")
    table = stage.table
    if top > 0 and len(table):
        t = Table(title="the most certain findings of each kind", title_justify="left")
        for col, just in (("issue", "left"), ("split", "left"), ("id", "left"), ("other_id", "left"), ("score", "right"),
                          ("labels differ", "left")):
            t.add_column(col, justify=just)
        for _, group in table.groupby("issue", sort=False):
            for r in group.head(top).itertuples(index=False):
                t.add_row(r.issue, r.split, str(r.id), str(r.other_id), f"{r.score:.3f}", "yes" if r.labels_differ else "")
        console.print(t)
    console.print(f"[dim]wrote {run_dir}/audit/issues.csv; decide on them with: cleanpipe review {run_dir}[/]")


def print_prune_summary(run_dir: Path, stage, top: int = 10) -> None:
    m = stage.manifest["metrics"]
    if stage.inputs.note:
        console.print(f"[dim]note: pred_probs {stage.inputs.note}[/]")
    console.print(
        f"[bold green]prune[/] {stage.method}: [bold]{m['n_issues']:,}[/] of {m['n']:,} labels flagged "
        f"({m['n_issues'] / max(m['n'], 1):.1%}); estimated noise rate {m['estimated_noise_rate']:.1%}"
        + (f", true {m['true_noise_rate']:.1%}" if "true_noise_rate" in m else "")
    )
    elsewhere = stage.unflagged_elsewhere
    if elsewhere and (m["n_issues"] == 0 or elsewhere >= m["n_issues"]):  # few flagged, strong candidates: say so
        console.print(f"[yellow]note:[/] the models place {elsewhere:,} more example(s) in another class than their "
                      f"label, below the confidence thresholds that flag one; look at them worst first with "
                      f"`cleanpipe review {run_dir} --also {elsewhere}`")
    if m["n_issues"] > 0.5 * m["n"] and "true_noise_rate" not in m:
        console.print("[bold yellow]warning:[/] more than half the labels are flagged: the out-of-fold probabilities "
                      "probably carry little information (see crossval's accuracy); train them longer before trusting these flags")
    if "eval_ratio" in m:
        console.print(
            f"INCV: {m['n_selected']:,} selected, {m['n_candidates']:,} candidates, {m['n_discarded']:,} discarded; "
            f"estimated noise rate {m['eval_ratio']:.3f}"
            + (f"; label precision [bold]{m['label_precision']:.3f}[/], label recall [bold]{m['label_recall']:.3f}[/]"
               if "label_precision" in m else "")
        )
    if "f1" in m:
        console.print(
            f"against the true labels: precision [bold]{m['precision']:.3f}[/], recall [bold]{m['recall']:.3f}[/], "
            f"F1 [bold]{m['f1']:.3f}[/]"
        )
        if m.get("average_precision") is not None:
            console.print(f"ranking by label quality: average precision [bold]{m['average_precision']:.3f}[/], "
                          f"recall within the top {m['k']:,} [bold]{m['recall_at_k']:.3f}[/]"
                          + (f", AUROC {m['auroc']:.3f}" if m.get("auroc") is not None else ""))
    report = stage.report
    if top > 0 and len(report):
        t = Table(title=f"the {min(top, len(report))} most suspicious labels", title_justify="left")
        t.add_column("id")
        t.add_column("given")
        t.add_column("suggested")
        t.add_column("quality", justify="right")
        truth = "true_label" in report.columns
        if truth:
            t.add_column("true")
        names = stage.inputs.class_names
        for row in report.head(top).itertuples(index=False):
            cells = [str(row.id), names[row.given_label], names[row.suggested_label], f"{row.label_quality:.3f}"]
            if truth:
                cells.append(("[red]" if row.is_true_error else "[green]") + names[row.true_label] + "[/]")
            t.add_row(*cells)
        console.print(t)
    console.print(f"[dim]wrote {run_dir / 'prune'}/ issue_mask.npy keep_mask.npy label_issues.csv manifest.json[/]")


@app.command()
@user_errors
def theory(
    run_dir: Path = RunArg,
    model: str = typer.Option("auto", "--model", "-m", help="The network; auto = INCV's (resnet32 for colour images, mlp128 for grey or small ones, mlp for tables)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", "-e", help="Epochs (default 40: the network must fit the noisy labels, as the theory assumes)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the halves and the model."),
    device: str = DeviceOpt,
    threads: Optional[int] = ThreadsOpt,
) -> None:
    """Check INCV's theory on this run: train on one half of the noisy labels, score the other.

    Prints the measured noisy accuracy, label precision and label recall beside the closed-form
    predictions for the run's noise (Chen et al. 2019), and writes RUN/theory/: theory.csv,
    confusion_matrix.npy beside transition_matrix.npy, confusion.png (both as heat maps),
    held_out.csv and manifest.json. Needs a noise stage (the true labels must be known).

    Example:
      [bold]cleanpipe noise runs/theory --dataset mnist --data ../shared/data/mnist-test --kind symmetric --rate 0.4[/]

      [bold]cleanpipe theory runs/theory[/]
    """
    _set_threads(threads)
    with RichProgress(console) as progress:
        stage = run_theory_stage(RunDir(run_dir), model=model, epochs=epochs, seed=seed, device=device, progress=progress)
    print_theory_summary(run_dir, stage)


def print_theory_summary(run_dir: Path, stage) -> None:

    m, p = stage.manifest["metrics"], stage.manifest["parameters"]
    console.print(
        f"[bold green]theory[/] {p['noise_kind']} noise, rate {p['noise_rate']:g}: {p['model']} trained "
        f"{p['epochs']} epochs on {m['n_train']:,} noisy labels, scored on the other {m['n_held_out']:,}"
    )
    t = Table(box=None, pad_edge=False)
    t.add_column("quantity")
    t.add_column("measured", justify="right")
    t.add_column("predicted", justify="right")
    t.add_column("difference", justify="right")
    for q, label in QUANTITIES.items():
        diff = stage.measured[q] - stage.predicted[q]
        colour = "green" if abs(diff) <= 0.05 else "yellow"
        t.add_row(label, f"{stage.measured[q]:.3f}", f"{stage.predicted[q]:.3f}", f"[{colour}]{diff:+.3f}[/]")
    console.print(t)
    console.print(
        "[dim]predicted: the theory's P(ŷ = j | y* = i) = T\\[i, j] with the run's noise matrix"
        + (" (equal to the closed forms for this noise)" if stage.closed_form else "")
        + f"; largest |M - T| cell of the held-out confusion matrix: {m['confusion_vs_noise_max_abs']:.3f}[/]"
    )
    console.print(
        f"[dim]wrote {run_dir / 'theory'}/ theory.csv confusion_matrix.npy transition_matrix.npy confusion.png "
        "held_out.csv manifest.json[/]"
    )


def _method_options() -> dict[str, inspect.Parameter]:
    """The ``cleanpipe train`` options of every registered method, from the fields of its options dataclass.

    A flag several methods share (``--temperature``, ``--ema``, ``--policy``) is one option; where their
    defaults differ it defaults to None and each method keeps its own.
    """

    found: dict[str, list] = {}
    for spec in METHODS.values():
        hints = typing.get_type_hints(spec.Options)
        for f in fields(spec.Options):
            if "cli" in f.metadata:
                found.setdefault(f.name, []).append((spec, f, hints[f.name]))
    params = {}
    for name, owners in found.items():
        spec, f, hint = owners[0]
        meta = dict(f.metadata["cli"])
        flag, help_text = meta.pop("flag") or "--" + name.replace("_", "-"), meta.pop("help")
        hint = Optional[meta.pop("type")] if "type" in meta else hint
        defaults = {repr(o[1].default) for o in owners}
        default = f.default if len(defaults) == 1 and f.default is not MISSING else None
        if len(defaults) > 1:  # each method's own text and default
            help_text = " ".join(f"{o[1].metadata['cli']['help'].rstrip('.')} (default {o[1].default:g})."
                                 if isinstance(o[1].default, float) else o[1].metadata["cli"]["help"] for o in owners)
        elif len({o[1].metadata["cli"]["help"] for o in owners}) > 1:
            help_text = " ".join(o[1].metadata["cli"]["help"] for o in owners)
        if default is None and hint in (int, float, str, bool):
            hint = Optional[hint]
        panel = " / ".join(dict.fromkeys(o[0].title for o in owners))  # a shared flag sits under every owner's name
        option = typer.Option(default, flag, help=help_text, rich_help_panel=panel, **meta)
        params[name] = inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=hint)
    return params


METHOD_OPTIONS = _method_options()


def _options_for(method: str, given: dict):
    """The method's options dataclass from the command line's values (None: the method's own default)."""

    spec = get_method(method)
    own = {f.name for f in fields(spec.Options)}
    unused = [METHOD_OPTIONS[k].default.param_decls[0].split("/")[0] for k, v in given.items()
              if k not in own and v is not None and v != METHOD_OPTIONS[k].default.default]
    if unused:
        console.print(f"[dim]note: --method {method} does not use {', '.join(unused)}[/]")
    values = {k: (str(v) if isinstance(v, Path) else v) for k, v in given.items() if k in own and v is not None}
    return spec.Options(**values)


def _methods_help() -> str:

    return " | ".join(METHODS)


@app.command()
@user_errors
def train(
    run_dir: Path = MadeRunArg,
    method: str = typer.Option("standard", "--method", help=_methods_help()),
    subset: Optional[str] = typer.Option(None, "--subset", help="kept: the prune stage's kept examples; all: every training example (default kept; all for dividemix).", show_default=False),
    model: str = typer.Option("auto", "--model", "-m", help=NETWORK_HELP),
    epochs: Optional[int] = typer.Option(None, "--epochs", "-e", help=f"Epochs (default {_recipe_help('train', 'epochs')})."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help=f"Batch size (default {_recipe_help('train', 'batch_size')})."),
    lr: Optional[float] = typer.Option(None, "--lr", help=f"Peak learning rate (default {_recipe_help('train', 'lr')})."),
    clean_labels: bool = typer.Option(False, "--clean-labels", help="Benchmarks: train on the true labels of a run with synthetic noise (the ceiling)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the networks and batches."),
    device: str = DeviceOpt,
    threads: Optional[int] = ThreadsOpt,
    **method_options,
) -> None:
    """Train a model on the cleaned training data with a noise-robust method; report test accuracy.

    Writes RUN/train/model.pt (weights + what rebuilds the model), history.csv (per epoch: loss,
    train accuracy on the given labels, test accuracy, the method's numbers) and manifest.json.

    Methods:
    {methods}

    Examples:
      [bold]cleanpipe train runs/demo --method coteaching[/]   (after noise, crossval and prune)

      [bold]cleanpipe train runs/demo --method standard --subset all[/]   (the baseline: all noisy labels)

      [bold]cleanpipe train runs/demo --method incv-coteaching[/]   (after cleanpipe prune runs/demo --method incv)

      [bold]cleanpipe train runs/demo --method ieg --subset all --probe-per-class 10[/]   (trusted probe: the benchmark's true labels, or --probe-labels FILE)

      [bold]cleanpipe train runs/demo --method noisy-student --write-labels fixed.csv[/]   (relabels the flagged examples: RUN/train/relabel.csv)

      [bold]cleanpipe train runs/demo --method dividemix[/]   (after noise alone: no prune stage; --division prune seeds it from prune's label quality)

      [bold]cleanpipe train runs/demo --method elr --subset all[/]   (early-learning regularization, one network)
    """
    _set_threads(threads)
    options = _options_for(method, method_options)
    with RichProgress(console) as progress:
        stage = run_train_stage(RunDir(run_dir), method, options=options, subset=subset, model=model, epochs=epochs,
                                batch_size=batch_size, lr=lr, seed=seed, device=device, clean_labels=clean_labels,
                                progress=progress)
    print_train_summary(run_dir, stage)


def _method_list() -> str:

    return "\n\n    ".join(f"  [bold]{name}[/]: {spec.summary}" for name, spec in METHODS.items())


train.__doc__ = train.__doc__.replace("{methods}", _method_list())
train.__signature__ = inspect.signature(train).replace(parameters=[
    *[p for p in inspect.signature(train).parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD],
    *METHOD_OPTIONS.values()])


NOT_SCORED = "test accuracy not measured: the run has no test split (it was made with --test-fraction 0)"


def print_train_summary(run_dir: Path, stage) -> None:
    m, p = stage.manifest["metrics"], stage.manifest["parameters"]
    extra = f", forget rate {p['forget_rate']:.3f}" if "forget_rate" in p else ""
    noise = f" (true noise among them {m['train_noise_rate_true']:.1%})" if "train_noise_rate_true" in m else ""
    console.print(
        f"[bold green]train[/] {p['method']} on {m['n_train']:,} examples{noise}, {p['model']}, {p['epochs']} epochs{extra}: "
        + (f"test accuracy [bold]{m['test_accuracy']:.4f}[/] on {m['n_test']:,} test examples" if m["n_test"] else NOT_SCORED)
    )
    if "iterations" in m:  # Noisy Student: one line per network, then the decisions
        for r in m["iterations"]:
            used = "" if r["role"] == "teacher" else f" + {r['n_pseudo']:,} pseudo-labeled"
            acc = "" if r["test_accuracy"] is None else f", test accuracy {r['test_accuracy']:.4f}"
            console.print(f"  {r['role']} {r['iteration']}: {r['n_labeled']:,} labeled{used}{acc}")
        acc = f"; relabels right {m['relabel_accuracy']:.1%} (true labels)" if m.get("relabel_accuracy") is not None else ""
        console.print(
            f"  flagged {m['n_flagged']:,}: [bold]{m['n_relabel']:,} relabel[/], {m['n_confirm']:,} confirm, "
            f"{m['n_unresolved']:,} unresolved{acc}"
        )
    console.print(
        f"[dim]{m['train_seconds']:.1f}s of training on {stage.manifest['device']}; "
        f"wrote {run_dir / 'train'}/ {' '.join(stage.outputs)} manifest.json{'; ' + stage.note if stage.note else ''}[/]"
    )


@app.command()
@user_errors
def evaluate(
    run_dir: Path = MadeRunArg,
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="A model.pt to score (default RUN/train/model.pt)."),
    device: str = DeviceOpt,
) -> None:
    """Accuracy and confusion matrix of the trained model on the run's test split.

    Example: [bold]cleanpipe evaluate runs/demo[/]
    """
    r = evaluate_model(RunDir(run_dir), checkpoint, device)
    console.print(f"[bold green]evaluate[/] {r['checkpoint']}: test accuracy [bold]{r['accuracy']:.4f}[/] on {r['n_test']:,} examples")
    K = len(r["class_names"])
    if K <= 20:
        t = Table(title="confusion matrix (rows: true class, columns: predicted)", title_justify="left", box=None, pad_edge=False)
        t.add_column("", style="dim")
        for name in r["class_names"]:
            t.add_column(name[:8], justify="right")
        for i, name in enumerate(r["class_names"]):
            t.add_row(name[:8], *[f"[bold]{v}[/]" if i == j else (str(v) if v else "[dim]·[/]")
                                  for j, v in enumerate(r["confusion"][i])])
        console.print(t)


@app.command()
@user_errors
def report(
    run_dir: Path = MadeRunArg,
    top: int = typer.Option(32, "--top", help="How many of the most suspicious images to show in the grid."),
) -> None:
    """Plots and a self-contained HTML page of what the stages found (opens offline).

    Writes RUN/report/report.html with every plot inlined, and the plots as PNG files: noise
    matrix (true and estimated), issues per class, label-quality histogram, training curves,
    and the most suspicious images. Needs a prune stage; uses noise and train when present.

    Example: [bold]cleanpipe report runs/demo[/]   then open runs/demo/report/report.html
    """
    check_number(top, "top", low=0)
    stage = run_report_stage(RunDir(run_dir), top=top)
    console.print(f"[bold green]report[/] {stage.html_path} ({len(stage.plots)} plots: {', '.join(stage.plots)})")


@app.command()
@user_errors
def review(
    run_dir: Path = MadeRunArg,
    also: int = typer.Option(0, "--also", help="Add this many of the next-worst examples that were not flagged."),
) -> None:
    """A page for deciding on the flagged examples, worst first, and the audit's findings (opens from disk, no server).

    Writes RUN/review/review.html. For each example: its image (or a table row's values), ID, given
    and suggested class, label quality; keep the given label ([bold]k[/]), accept the suggestion ([bold]a[/]),
    choose another class ([bold]c[/]), exclude ([bold]x[/]) or skip ([bold]s[/]). Decisions stay in the browser
    until [bold]Export[/] downloads corrections.csv (id,decision,label) for `cleanpipe apply`.

    Example: [bold]cleanpipe review runs/demo --also 20[/]   then open runs/demo/review/review.html
    """
    stage = run_review_stage(RunDir(run_dir), also=also)
    extra = f" + {stage.n_also:,} next-worst" if stage.n_also else ""
    extra += f", {stage.n_audit:,} with audit findings (duplicates, outliers, test copies)" if stage.n_audit else ""
    console.print(f"[bold green]review[/] {stage.html_path}: {stage.n_flagged:,} flagged{extra} examples to decide on "
                  f"({_size(stage.manifest['metrics']['page_bytes'])}, opens from disk)")
    console.print(f"[dim]open it in a browser, decide, press Export, then: cleanpipe apply {run_dir} corrections.csv --out fixed_labels.csv[/]")


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


@app.command("apply")
@user_errors
def apply_(
    run_dir: Path = MadeRunArg,
    corrections: Path = typer.Argument(..., metavar="CORRECTIONS.csv", help="The review page's export: id,decision,label.", show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="The corrected label file to write: .csv (id,label), .npy or .json.", show_default=False),
) -> None:
    """Turn review decisions into a label file that --labels reads.

    keep: the given label stands; relabel: the new class; exclude: the example is written with
    label -1, which every later stage reads as "leave it out" (it is dropped from the training split).
    Examples not in the file keep their labels. Records counts in RUN/apply/manifest.json.

    Example: [bold]cleanpipe apply runs/demo ~/Downloads/corrections.csv --out fixed_labels.csv[/]
    """
    stage = run_apply_stage(RunDir(run_dir), corrections, out)
    c = stage.counts
    skipped = f", {c['skip']:,} skipped" if c["skip"] else ""
    console.print(f"[bold green]apply[/] {c['relabel']:,} relabeled ({stage.n_changed:,} changed), {c['keep']:,} kept, "
                  f"{c['exclude']:,} excluded{skipped} of {stage.n_examples:,} training examples: wrote {stage.out}")
    console.print(f"[dim]next: {stage.next_command}[/]")


@app.command()
@user_errors
def predict(
    run_dir: Path = MadeRunArg,
    data: Path = typer.Option(..., "--data", help="New data: a folder of images, a .csv/.parquet table with the run's feature columns, or an .npz with X.", show_default=False),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help=f"How to read --data: {_choices(UNLABELED_KINDS)} (default: by its form)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Predictions CSV to write (default RUN/predict/predictions.csv)."),
    probs: bool = typer.Option(False, "--probs", help="Add one p_<class> probability column per class."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="A model.pt to use (default RUN/train/model.pt)."),
    device: str = DeviceOpt,
) -> None:
    """Label new data with the run's trained model: id, predicted_label, predicted_class, confidence.

    The data must look like the run's: images are resized as the run's were (a folder, any nesting;
    IDs are relative paths), tables need the run's feature columns (IDs are row numbers), an .npz
    holds X (and optionally ids).

    Example: [bold]cleanpipe predict runs/demo --data new_images/ --out predictions.csv --probs[/]
    """
    if dataset is not None:
        check_choice(dataset, "dataset", UNLABELED_KINDS)
    with RichProgress(console) as progress:
        stage = run_predict(RunDir(run_dir), data, kind=dataset, out=out, with_probs=probs, checkpoint=checkpoint,
                            device=device, progress=progress)
    top = ", ".join(f"{k} {v:,}" for k, v in sorted(stage.class_counts.items(), key=lambda kv: -kv[1])[:6])
    console.print(f"[bold green]predict[/] {stage.n:,} examples on {stage.device}: mean confidence {stage.mean_confidence:.3f}; "
                  f"predicted {top}{', ...' if len(stage.class_counts) > 6 else ''}")
    console.print(f"[dim]wrote {stage.out}[/]")


@app.command("run")
@user_errors
@with_options(WHERE, DATA)
def run_all(
    run_dir: Path = RunArg,
    labels: Optional[Path] = typer.Option(None, "--labels", help="Your own training labels (.npy/.csv/.json).", rich_help_panel="Data"),
    kind: Optional[str] = typer.Option(None, "--kind", "-k", help="Add synthetic noise of this kind (see `cleanpipe noise --help`), or 'none'. Default: symmetric on the embedded demo data, none on your own data (--data/--labels).", show_default=False),
    rate: Optional[float] = typer.Option(None, "--rate", "-r", help="Synthetic noise rate (default 0.4, with a --kind or on the demo data).", show_default=False),
    seed: int = typer.Option(0, "--seed", help="Seed of every stage."),
    model: str = typer.Option("auto", "--model", "-m", help="Model for cross-validation (see `cleanpipe crossval --help`)."),
    n_folds: int = typer.Option(N_FOLDS, "--folds", "-K", help="Cross-validation folds."),
    device: str = DeviceOpt,
    threads: Optional[int] = ThreadsOpt,
    method: str = typer.Option("coteaching", "--method", help=f"Training method: {_methods_help()} (see `cleanpipe train --help`)."),
    prune_method: str = typer.Option(DEFAULT_METHOD, "--prune-method", help="Label-error method for prune (see `cleanpipe prune --help`); incv-coteaching implies incv."),
    **options,
) -> None:
    """Run every stage with good defaults, skipping work that is already up to date.

    Stages: noise, crossval, prune, train, report; the data: --dataset, else the run's own, else the embedded digits. Synthetic noise is added only to the embedded demo data (40% symmetric) or when --kind is given: your own data is checked with its labels as they are. Re-running reuses what is current: the noise when its settings match, every finished fold, and a finished training with the same method and seed.

    Examples:
      [bold]cleanpipe run runs/demo[/]   (digits, 40% symmetric noise, Co-teaching on the kept examples)

      [bold]cleanpipe run runs/mine --dataset table --data my.csv --label-column diagnosis --test-fraction 0[/]   (your labels as they are, every row checked)

      [bold]cleanpipe run runs/mnist --dataset mnist --data ../shared/data/mnist-test --kind pairflip --rate 0.45[/]
    """
    where, device_memory = where_folds_run(**_pick(options, WHERE))  # before the noise stage writes anything
    run = RunDir(run_dir)
    data = _pick(options, DATA)
    if data["dataset"] is None and run.dataset_json() is None:
        data["dataset"] = "digits"
    spec = data_spec(labels=labels, **data)
    _set_threads(threads)
    with RichProgress(console) as progress:
        result = run_pipeline(run, spec, kind=kind, rate=rate, seed=seed, model=model, folds=n_folds, device=device,
                              method=method, prune_method=prune_method, progress=progress, where=where,
                              device_memory=device_memory, on_stage=lambda name, stage: _print_stage(run_dir, name, stage))
    print_run_summary(run_dir, result, method)


def print_run_summary(run_dir: Path, result, method: str) -> None:
    pm, tm = result.prune.manifest["metrics"], result.train_manifest["metrics"]
    found = f" (precision {pm['precision']:.2f}, recall {pm['recall']:.2f})" if "precision" in pm else ""
    labels_were = ("the labels as they are (no synthetic noise added)" if result.kind == "none"
                   else f"the labels with {result.rate:.0%} synthetic {result.kind} noise added (a benchmark)")
    scored = (f"test accuracy [bold]{tm['test_accuracy']:.2%}[/] on {tm['n_test']:,}" if tm["n_test"]
              else "test accuracy not measured (no test split)")
    console.print(
        f"[bold]done[/] on {labels_were}: {pm['n_issues']:,} of {pm['n']:,} labels flagged{found}; "
        f"{method} on the {tm['n_train']:,} kept: {scored}"
    )
    console.print(f"see {result.report} (plots), {run_dir / 'prune' / 'label_issues.csv'} (every example, worst first); "
                  f"decide on the flagged ones with `cleanpipe review {run_dir}`")


def _print_stage(run_dir: Path, name: str, stage) -> None:
    if stage is None:
        console.print(f"[dim]{name}: up to date, skipped[/]")
        return
    printer = {"noise": print_noise_summary, "crossval": print_crossval_summary, "train": print_train_summary}
    if name == "prune":
        print_prune_summary(run_dir, stage, top=5)
    else:
        printer[name](run_dir, stage)


def entry() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    entry()
