"""Pixel checks for images: a shift-tolerant distance between two images, and a second view for outliers.

A copy moved by a pixel and re-noised is no closer in a classifier's feature space, nor in raw pixels, than
many a natural pair of the same digit (measured on MNIST-10k: its feature distance is 0.86 times the median
nearest-neighbour distance, its raw-pixel distance 1.15 times). Aligned, it is: the smallest residual of the
mean-centred images over shifts of up to ``SHIFT`` pixels. Relative to the median of each row's smallest
residual, such copies lie under 0.25 on MNIST-10k and under 0.47 on the colour digits (textured
backgrounds), natural nearest pairs above 0.38 and 0.45 (0.1st percentiles). The feature space proposes
the candidates (a moved copy is among its original's 10 nearest in 96% and 99% of cases); the aligned
residual decides (``issues.PIXEL_THRESHOLD``). Centring matters: uncentred, a colour image's bright
background dominates its norm and hides the difference.
"""

from __future__ import annotations

import numpy as np

SHIFT = 2  # pixels of translation tried each way
PAIR_CHUNK = 8192  # pairs compared at a time


def aligned_residual(A: np.ndarray, B: np.ndarray, shift: int = SHIFT) -> np.ndarray:
    """The smallest ``||A - shift(B)|| / sqrt(||A|| ||B||)`` of the mean-centred images over translations of ``B`` by
    up to ``shift`` pixels (the border repeated).

    Parameters
    ----------
    A, B : np.ndarray
        (P, C, H, W) images, pairs row by row (any numeric dtype).

    Returns
    -------
    np.ndarray
        float32 (P,): 0 for identical images, more for differing ones.
    """
    A = A.astype(np.float32)
    B = B.astype(np.float32)
    A -= A.mean(axis=(1, 2, 3), keepdims=True)
    B -= B.mean(axis=(1, 2, 3), keepdims=True)
    _, _, H, W = A.shape
    padded = np.pad(B, ((0, 0), (0, 0), (shift, shift), (shift, shift)), mode="edge")  # the border continues
    best = np.full(len(A), np.inf, dtype=np.float32)
    for dy in range(2 * shift + 1):
        for dx in range(2 * shift + 1):
            diff = A - padded[:, :, dy : dy + H, dx : dx + W]
            best = np.minimum(best, np.einsum("pchw,pchw->p", diff, diff))
    norms = np.sqrt(np.einsum("pchw,pchw->p", A, A) * np.einsum("pchw,pchw->p", B, B))
    return (np.sqrt(best) / np.sqrt(np.maximum(norms, 1e-12))).astype(np.float32)


def pair_residuals(images: np.ndarray, rows: np.ndarray, others: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """float32 (P,): :func:`aligned_residual` of ``images[rows[p]]`` and ``reference[others[p]]`` (default the same
    images), in chunks."""
    reference = images if reference is None else reference
    out = np.empty(len(rows), dtype=np.float32)
    for s in range(0, len(rows), PAIR_CHUNK):
        out[s : s + PAIR_CHUNK] = aligned_residual(images[rows[s : s + PAIR_CHUNK]], reference[others[s : s + PAIR_CHUNK]])
    return out


def centred_pixels(images: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """float32 (N, C*H*W): each image minus its own mean, the outlier check's second view (noise and photographs
    stand apart from digits here, while a classifier may map them next to a class)."""
    n = len(images)
    out = np.empty((n, int(np.prod(images.shape[1:]))), dtype=np.float32)
    for s in range(0, n, chunk):
        x = images[s : s + chunk].reshape(min(chunk, n - s), -1).astype(np.float32)
        out[s : s + chunk] = x - x.mean(1, keepdims=True)
    return out
