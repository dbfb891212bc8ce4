"""Synthetic image tasks built from real data, for benchmarks that must run without downloads.

:func:`colour_digits` turns grey digits (MNIST) into 32x32 colour images: each digit, in a colour of its
own, at a random place on a textured colour background. A stand-in for CIFAR-sized colour training where
CIFAR cannot be fetched: the same shape, colour statistics that vary per image, and a class that lives
in the shape alone.
"""

from __future__ import annotations

import numpy as np

SIDE = 32
CHUNK = 4096  # images drawn per block: memory stays bounded at CIFAR-10 size and beyond


def colour_digits(digits: np.ndarray, labels: np.ndarray, n: int | None = None, *, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coloured digits on textured backgrounds, deterministic from ``seed``.

    Image ``i`` shows digit ``i mod len(digits)`` (so ``n`` may exceed the digits: 50,000 images from
    MNIST's 10,000 test digits use each five times, each time differently coloured and placed). The
    background blends two random colours by a random sinusoidal grating plus blocky noise; the digit
    takes a third colour, far from the background's mean, at a random offset of 0-4 pixels (28 px in a
    32 px frame); then mild pixel noise.

    Parameters
    ----------
    digits : np.ndarray
        uint8 (M, 1, 28, 28) or (M, 28, 28): grey digits, ink bright on black (MNIST).
    labels : np.ndarray
        int (M,).
    n : int, optional
        How many images (default M).
    seed : int

    Returns
    -------
    images : np.ndarray
        uint8 (n, 3, 32, 32).
    labels : np.ndarray
        int64 (n,).
    source_rows : np.ndarray
        int64 (n,): which digit each image shows.
    """
    digits = np.asarray(digits)
    if digits.ndim == 4:
        digits = digits[:, 0]
    if digits.ndim != 3 or digits.shape[1] > SIDE or digits.shape[2] > SIDE:
        raise ValueError(f"digits must be (M, H, W) or (M, 1, H, W) with sides up to {SIDE}, got {digits.shape}")
    m, h, w = digits.shape
    n = m if n is None else int(n)
    rows = np.arange(n, dtype=np.int64) % m
    rng = np.random.default_rng(seed)
    # Per-image draws first, from one stream; each block of CHUNK images then draws its own noise.
    colours = rng.integers(0, 256, (n, 2, 3)).astype(np.float32)
    freq = rng.uniform(-4.0, 4.0, (n, 2)).astype(np.float32)  # grating cycles per image, x and y
    phase = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
    shift = rng.integers(0, SIDE - max(h, w) + 1, (n, 2))
    ink_jitter = rng.uniform(-40, 40, (n, 3)).astype(np.float32)
    out = np.empty((n, 3, SIDE, SIDE), dtype=np.uint8)
    grid = np.arange(SIDE, dtype=np.float32) / SIDE
    for start in range(0, n, CHUNK):
        part = slice(start, min(n, start + CHUNK))
        k = part.stop - part.start
        block_rng = np.random.default_rng([seed, start // CHUNK])
        wave = np.sin(2 * np.pi * (freq[part, 0, None, None] * grid[None, None, :]
                                   + freq[part, 1, None, None] * grid[None, :, None]) + phase[part, None, None])
        blocks = np.repeat(np.repeat(block_rng.random((k, 4, 4), dtype=np.float32), 8, 1), 8, 2)
        mix = np.clip(0.6 * (0.5 + 0.5 * wave) + 0.4 * blocks, 0, 1)[:, None]  # (k, 1, 32, 32)
        c0, c1 = colours[part, 0, :, None, None], colours[part, 1, :, None, None]
        background = c0 * (1 - mix) + c1 * mix
        ink = np.clip(255.0 - (c0 + c1) / 2 + ink_jitter[part, :, None, None], 0, 255)  # far from the background
        alpha = np.zeros((k, 1, SIDE, SIDE), dtype=np.float32)
        for j, (dy, dx) in enumerate(shift[part]):
            alpha[j, 0, dy : dy + h, dx : dx + w] = digits[rows[part.start + j]] / 255.0
        image = background * (1 - alpha) + ink * alpha + block_rng.normal(0, 6, (k, 3, SIDE, SIDE))
        out[part] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return out, np.asarray(labels, dtype=np.int64)[rows], rows
