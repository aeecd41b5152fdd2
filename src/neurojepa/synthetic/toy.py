"""Two small in-memory generators for tests, benchmarks and development (seconds to build, nothing on disk).

:class:`ToySession`: a stand-in for :class:`neurojepa.data.dataset.PreparedSession` (an
:class:`~neurojepa.data.arrays.ArraySession`) for the teacher. Poisson counts from smooth low-dimensional latents
with known ground truth, two states (``active``, ``passive``) that change each unit's gain but not the latent
dynamics, image flashes that push the latents, and the same attributes as a prepared session (``load_counts``,
``split``, ``labels``, ``segments``, ``gt_latents``, ``bin_size``, ``t_start``).

:func:`synthetic_session`: arrays for the student, counts ``(n_bins, n_units)``, a latent that plays the teacher
and a split. A smooth latent (sum of random sinusoids, D dims) drives Poisson counts through a random log-linear
map; contiguous blocks give a train/val/test split.

Both are deliberately simple; the VBN-like simulator with a task, QC failures and NWB output is
:mod:`neurojepa.synthetic.simulate`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from ..data.arrays import ArraySession
from ..data.session import BIN_SIZE


class ToySession(ArraySession):
    """Synthetic prepared session. n_bins per state, n_units units, d latents, 10 ms bins. Builds its own arrays
    (richer labels than an ArraySession's) and shares ArraySession's accessors: load_counts, bin_times, segments."""

    def __init__(self, n_bins: int = 6000, n_units: int = 60, d: int = 4, seed: int = 0, rate_hz: float = 15.0,
                 tau_s: float = 0.15, n_images: int = 4, blocks_per_state: int = 10):
        rng = np.random.default_rng(seed)
        self.bin_size, self.t_start, self.path = BIN_SIZE, 0.0, Path("toy")
        n = 2 * n_bins
        self.n_bins, self.n_units = n, n_units
        a = np.exp(-self.bin_size / tau_s)
        # smooth latents: AR(1)-filtered noise, twice (a smooth, 2nd-order process), unit variance
        drive = rng.standard_normal((n, d))
        flash = np.arange(n) % 75 == 0  # a 250 ms flash every 750 ms
        images = rng.integers(0, n_images, flash.sum())
        image_vecs = rng.standard_normal((n_images, d)) * 3.0
        drive[flash] += image_vecs[images]
        z = lfilter([1 - a], [1, -a], lfilter([1 - a], [1, -a], drive, axis=0), axis=0)
        z = (z - z.mean(0)) / z.std(0)
        state = np.where(np.arange(n) < n_bins, "active", "passive")
        c = rng.standard_normal((d, n_units)) * 0.8 / np.sqrt(d)  # log-rate modulation std ~0.8
        gain = np.where(state[:, None] == "active", 1.0, rng.uniform(0.6, 1.4, n_units))  # state changes the code
        log_rate = np.log(rate_hz * self.bin_size) + (z @ c) * gain - 0.5 * 0.64 * gain**2
        self._counts = rng.poisson(np.exp(log_rate)).astype(np.uint8)
        self.gt_latents = z.astype(np.float32)
        # labels
        tsf = np.full(n, np.nan)
        img = np.full(n, "", dtype=object)
        is_change = np.zeros(n, bool)
        onsets = np.flatnonzero(flash)
        names = np.array([f"im{i}" for i in images], dtype=object)
        for i, o in enumerate(onsets):
            tsf[o:o + 25] = np.arange(min(25, n - o)) * self.bin_size
            img[o:o + 25] = names[i]
            is_change[o] = i > 0 and names[i] != names[i - 1]
        licks = (rng.random(n) < 0.002).astype(int)
        outcome = np.full(n, "", dtype=object)
        outcome[is_change & (state == "active")] = np.where(rng.random((is_change & (state == "active")).sum()) < .6,
                                                            "hit", "miss")
        self.labels = pd.DataFrame(dict(state=state, block=(state == "passive").astype(int), image=img,
                                        is_change=is_change, omitted=np.zeros(n, bool), time_since_flash=tsf,
                                        running=np.zeros(n), licks=licks, trial_outcome=outcome))
        # split: contiguous blocks inside each state, 60/20/20
        split = np.empty(n, dtype=object)
        for s in ("active", "passive"):
            idx = np.flatnonzero(state == s)
            parts = np.array_split(idx, blocks_per_state)
            kinds = rng.permutation(["train"] * (blocks_per_state * 6 // 10) + ["val"] * (blocks_per_state * 2 // 10)
                                    + ["test"] * (blocks_per_state - blocks_per_state * 8 // 10))
            for p, k in zip(parts, kinds):
                split[p] = k
        self.split = split.astype(str)
        self.unit_ids = np.arange(n_units, dtype=np.int64)


def synthetic_session(n_units: int = 100, n_bins: int = 6000, d: int = 8, bin_size: float = BIN_SIZE,
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
