"""A small synthetic stand-in for a prepared session and a teacher, for tests, the benchmark and development.

A smooth latent (sum of random sinusoids plus a slow random walk, D dims) drives Poisson counts through a random
log-linear map; the latent itself plays the teacher. Contiguous blocks give a train/val/test split.
"""

from __future__ import annotations

import numpy as np


def synthetic_session(n_units: int = 100, n_bins: int = 6000, d: int = 8, bin_size: float = 0.01,
                      base_rate_hz: float = 6.0, seed: int = 0, block: int = 500, tuning: float = 0.15):
    """Return counts (n_bins, n_units) uint8, latents (n_bins, d) float32, split (n_bins,) str array.

    Blocks of ``block`` bins cycle through train, train, train, val, test so that every split sees all regimes."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_bins) * bin_size
    freqs = rng.uniform(0.1, 1.0, size=(d, 3))
    phases = rng.uniform(0, 2 * np.pi, size=(d, 3))
    z = np.sin(2 * np.pi * freqs[None] * t[:, None, None] + phases[None]).sum(-1)
    z = (z - z.mean(0)) / z.std(0)
    loading = rng.normal(0, tuning, size=(d, n_units))  # tuning 0.15, d 16: log-rate std ~0.6, moderate
    rates = base_rate_hz * np.exp(z @ loading - 0.5 * (loading**2).sum(0))
    counts = rng.poisson(np.minimum(rates * bin_size, 5.0)).astype(np.uint8)
    kinds = np.array(["train", "train", "train", "val", "test"])
    split = kinds[(np.arange(n_bins) // block) % len(kinds)]
    return counts, z.astype(np.float32), split
