"""The plots of the report and the theory check: arrays in, PNG files out (matplotlib, imported on first use)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display here or on CI
    import matplotlib.pyplot as plt

    return plt


def plot_heatmaps(panels: list[tuple[np.ndarray, str, str, str]], names: list[str], path: Path, title: str = "",
                  dpi: int = 100) -> None:
    """K x K matrices in [0, 1] side by side, one panel per ``(matrix, title, x label, y label)`` (PNG).

    Class names label the axes up to 20 classes and values fill the cells up to 12; the figure stays
    at most 7 inches a panel however many classes there are.
    """
    plt = _plt()
    K = len(names)
    short = [n[:10] for n in names]
    side = min(7.0, max(4.0, 0.5 * K + 1.5))
    fig, axes = plt.subplots(1, len(panels), figsize=(side * len(panels), side), constrained_layout=True, squeeze=False)
    for ax, (m, label, xlabel, ylabel) in zip(axes[0], panels):
        im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if K <= 20:
            ax.set_xticks(range(K), short, rotation=90 if K > 10 else 0, fontsize=8)
            ax.set_yticks(range(K), short, fontsize=8)
        if K <= 12:  # numbers in the cells while they stay legible
            for i in range(K):
                for j in range(K):
                    if m[i, j] >= 0.005:
                        ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
                                color="black" if m[i, j] > 0.6 else "white")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def plot_noise_matrices(true: np.ndarray | None, estimated: np.ndarray, names: list[str], path: Path) -> None:
    """Heat maps of P(given label = row | true class = column): the true one (when known) beside cleanlab's estimate."""
    panels = ([(true, "true noise matrix")] if true is not None else []) + [(estimated, "estimated (confident learning)")]
    plot_heatmaps([(m, label, "true class", "given label") for m, label in panels], names, path)


def plot_issues_per_class(given: np.ndarray, issue: np.ndarray, true_error: np.ndarray | None, names: list[str],
                          path: Path) -> None:
    """Bars per given class: examples flagged, and (with the truth) examples whose label really is wrong."""
    plt = _plt()
    K = len(names)
    x = np.arange(K)
    fig, ax = plt.subplots(figsize=(min(14, max(6, 0.45 * K + 2)), 4), constrained_layout=True)
    w = 0.4 if true_error is not None else 0.8
    ax.bar(x - (w / 2 if true_error is not None else 0), np.bincount(given[issue], minlength=K), w, label="flagged")
    if true_error is not None:
        ax.bar(x + w / 2, np.bincount(given[true_error], minlength=K), w, label="truly wrong")
    ax.set_xlabel("given label")
    ax.set_ylabel("examples")
    if K <= 30:
        ax.set_xticks(x, [n[:10] for n in names], rotation=90 if K > 10 else 0)
    ax.legend()
    ax.set_title("label issues per class")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_quality_histogram(quality: np.ndarray, true_error: np.ndarray | None, path: Path) -> None:
    """Histogram of label quality (prune's ``--rank-by`` score), split by true error when known."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    bins = np.linspace(0, 1, 41)
    if true_error is None:
        ax.hist(quality, bins=bins, color="tab:blue")
    else:
        ax.hist(quality[~true_error], bins=bins, alpha=0.7, label="label right", color="tab:green")
        ax.hist(quality[true_error], bins=bins, alpha=0.7, label="label wrong", color="tab:red")
        ax.legend()
    ax.set_yscale("log")
    ax.set_xlabel("label quality")
    ax.set_ylabel("examples (log scale)")
    ax.set_title("label quality")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_training_curves(history, path: Path) -> None:
    """Loss, accuracies and forget rate per epoch from ``train/history.csv``."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    x, xlabel = history["epoch"], "epoch"
    if "iteration" in history:  # Noisy Student: the teacher's epochs, then each student's, end to end
        x, xlabel = np.arange(1, len(history) + 1), "epoch (teacher, then each student)"
        for start in np.flatnonzero(np.diff(history["iteration"].to_numpy()) != 0):
            for ax in (a1, a2):
                ax.axvline(start + 1.5, color="grey", lw=0.8, ls="--")
    a1.plot(x, history["loss"], label="training loss")
    a1.set_xlabel(xlabel)
    a1.set_title("loss")
    a2.plot(x, history["train_accuracy"], label="train accuracy (given labels)")
    if "test_accuracy" in history:  # absent when the run has no test split
        a2.plot(x, history["test_accuracy"], label="test accuracy")
    if "forget_rate" in history:
        a2.plot(x, history["forget_rate"], "--", label="forget rate")
    if "pure_ratio" in history:
        a2.plot(x, history["pure_ratio"], ":", label="picked examples with right labels")
    a2.set_xlabel(xlabel)
    a2.set_ylim(0, 1.02)
    a2.legend(fontsize=8)
    a2.set_title("accuracy")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_suspicious_grid(images: np.ndarray, captions: list[str], colours: list[str], path: Path) -> None:
    """The most suspicious images with 'given -> suggested (true)' captions."""
    plt = _plt()
    n = len(images)
    cols = min(8, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.9 * rows), squeeze=False, constrained_layout=True)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img, cap, col in zip(axes.ravel(), images, captions, colours):
        img = np.transpose(img, (1, 2, 0))
        ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
        ax.set_title(cap, fontsize=7, color=col)
    fig.savefig(path, dpi=100)
    plt.close(fig)
