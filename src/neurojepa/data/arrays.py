"""Binned counts handed in as arrays, seen through the interface of a prepared dataset.

The estimators (``nj.Teacher``, ``nj.Student``) train on the same functions the pipeline does, and those read a
session through a few attributes of :class:`~neurojepa.data.dataset.PreparedSession`: ``load_counts()``,
``split``, ``labels["state"]``, ``segments(split)``, ``bin_size``, ``t_start``, ``gt_latents``. An
:class:`ArraySession` provides them for counts in memory, so nothing downstream needs a second code path.

Splits are dealt exactly as ``neurojepa prepare`` deals them (:func:`~neurojepa.data.prepare.assign_splits`):
inside each state, contiguous blocks of ``block_s`` seconds, shuffled by ``seed`` and handed out by
``fractions`` (train, val, test), never single bins, so no training window shares bins with a held-out one.
Bins whose state is ``""`` belong to no split, like the gap between two selected states in ``prepare``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import InputError
from .dataset import SPLITS
from .intervals import Intervals
from .prepare import PrepareConfig, assign_splits


@dataclass
class SplitConfig:
    """How counts given as arrays are cut into train/val/test time blocks (``prepare``'s rule and defaults)."""

    block_s: float = PrepareConfig.split_block_s  # s, length of the contiguous split blocks
    fractions: list[float] = field(default_factory=lambda: list(PrepareConfig().split_fractions))  # train, val, test
    seed: int = PrepareConfig.seed  # fixes the split assignment


def check_counts(counts, where: str = "counts") -> np.ndarray:
    """``counts`` as a 2-d array (n_bins, n_units) of whole, non-negative spike counts, or :class:`InputError`.

    Integer arrays are kept as they are (no copy); float arrays holding whole numbers become ``int32``."""
    x = np.asarray(counts)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise InputError(where, f"need a 2-d array (n_bins, n_units) of spike counts, got shape {x.shape}")
    if x.dtype.kind == "b" or x.dtype.kind not in "uif":
        raise InputError(where, f"need numeric spike counts, got dtype {x.dtype}")
    if x.dtype.kind == "f":
        if not np.isfinite(x).all() or (x != np.round(x)).any():
            raise InputError(where, "need whole spike counts per bin (found NaN, inf or fractions)")
        x = x.astype(np.int32)
    if x.dtype.kind == "i" and x.size and x.min() < 0:
        raise InputError(where, "spike counts must not be negative")
    return x


def deal_splits(state: np.ndarray, bin_size: float, cfg: SplitConfig) -> np.ndarray:
    """(n_bins,) str split of every bin ("train", "val", "test", or "" for bins of state ""), as prepare deals it."""
    codes, _ = assign_splits(state, state != "", bin_size, cfg.block_s, tuple(cfg.fractions), cfg.seed)
    return np.asarray(SPLITS, dtype=object)[codes].astype(str)


class ArraySession:
    """Counts (n_bins, n_units) in memory with per-bin states and splits: a stand-in for a PreparedSession.

    states: (n_bins,) state names (None: one state ``"all"``); split: (n_bins,) of "train"/"val"/"test"/"" (None:
    dealt by :func:`deal_splits`); gt_latents: (n_bins, D) true latents if known (scored as ``gt_r2``)."""

    def __init__(self, counts, bin_size: float = PrepareConfig.bin_size, states=None, split=None, gt_latents=None,
                 splits: SplitConfig | None = None, t_start: float = 0.0):
        self._counts = check_counts(counts)
        self.n_bins, self.n_units = self._counts.shape
        if not (np.isfinite(bin_size) and bin_size > 0):
            raise InputError("bin_size", f"must be a positive number of seconds, got {bin_size!r}")
        self.bin_size, self.t_start = float(bin_size), float(t_start)
        state = np.full(self.n_bins, "all", dtype=object) if states is None else np.asarray(states).astype(str)
        _check_rows("states", state, self.n_bins)
        if not (state != "").any():
            raise InputError("states", "every bin has the empty state, so no bin can enter a split")
        self.labels = pd.DataFrame({"state": state.astype(object)})
        if split is None:
            self.split = deal_splits(state, self.bin_size, splits or SplitConfig())
        else:
            self.split = np.asarray(split).astype(str)
            _check_rows("split", self.split, self.n_bins)
            bad = sorted(set(self.split.tolist()) - set(SPLITS))
            if bad:
                raise InputError("split", f"unknown split name(s) {bad}; use train, val, test (or '' for none)")
        self.gt_latents = None
        if gt_latents is not None:
            self.gt_latents = np.asarray(gt_latents, dtype=np.float32)
            if self.gt_latents.ndim != 2 or len(self.gt_latents) != self.n_bins:
                raise InputError("gt_latents", f"need shape ({self.n_bins}, D), got {self.gt_latents.shape}")
        self.unit_ids = np.arange(self.n_units, dtype=np.int64)

    def load_counts(self) -> np.ndarray:
        """(n_bins, n_units) counts (the array handed in, not a copy)."""
        return self._counts

    def bin_times(self) -> np.ndarray:
        """(n_bins,) float64 left edges (s)."""
        return self.t_start + np.arange(self.n_bins) * self.bin_size

    def segments(self, split: str, states=None) -> Intervals:
        """Maximal [start, stop) bin runs of one split inside one state (optionally only ``states``)."""
        return Intervals.of_split(self.split, self.labels["state"].to_numpy(), split, states)

    def __repr__(self) -> str:
        return f"ArraySession({self.n_bins} bins x {self.n_units} units, bin {self.bin_size * 1e3:g} ms)"


def _check_rows(name: str, values: np.ndarray, n_bins: int) -> None:
    if values.shape != (n_bins,):
        raise InputError(name, f"need one value per bin, shape ({n_bins},), got {values.shape}")
