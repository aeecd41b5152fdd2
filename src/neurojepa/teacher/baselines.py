"""Baseline latents scored beside the teacher on the same splits.

- ``smoothing``: causally smoothed counts of the held-in units (exponential filter, ``smooth_ms``), the Neural
  Latents Benchmark's "smoothing" baseline (smoothed held-in counts -> Poisson GLM): the floor a latent model
  must beat. (Called ``raw`` before issue 16.)
- ``pca``: PCA of those smoothed counts, fit on train bins, as many dims as the teacher's latent.
- ``fa``: factor analysis (same dims), the classical latent-variable model.
- ``cebra``: CEBRA time-contrastive (``cebra`` in the optional ``bench`` extra), when asked for (``eval.cebra``)
  and installed.

Smoothing is causal, like the teacher's encoder, so no baseline sees the future.

Memory (issue 19): ``smoothing`` is a :class:`SmoothedCounts` row source (metrics/rows.py), computed on demand for the
rows a metric reads, never held whole (a full-size VBN session's would be 3.8 GB of float32), unless it takes at
most ``SMOOTH_IN_MEMORY_BYTES`` (256 MB; the built-in session's takes 160 MB): then it is filtered once and held.
PCA and FA are fit on capped row samples (50,000 and 10,000 evenly spaced train bins) and applied block by block.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from scipy.signal import lfilter
from sklearn.decomposition import PCA, FactorAnalysis

from ..metrics.rows import block_rows

log = logging.getLogger(__name__)


def smooth_counts(counts: np.ndarray, bin_size: float, smooth_ms: float) -> np.ndarray:
    """Causal exponential smoothing, (n_bins, U) counts -> (n_bins, U) float32 (spikes per bin, time constant
    smooth_ms)."""
    a = float(np.exp(-bin_size * 1000.0 / smooth_ms))
    return lfilter([1 - a], [1, -a], np.asarray(counts, dtype=np.float32), axis=0).astype(np.float32)


class SmoothedCounts:
    """:func:`smooth_counts` of ``counts`` (n_bins, U; an array or a ColumnView), as a row source: ``take(rows)``
    filters only the spans of bins around the requested rows, each from ``warm`` bins before it (from bin 0 when
    that is closer), where the exact filter's remaining memory a^warm is below 1e-20 of a count. Optionally the
    square root of the smoothed counts (``sqrt``: the PCA/FA input)."""

    def __init__(self, counts, bin_size: float, smooth_ms: float, sqrt: bool = False, max_span: int = 16_384):
        self.counts, self.bin_size, self.smooth_ms, self.sqrt = counts, bin_size, smooth_ms, sqrt
        self.shape, self.max_span = (counts.shape[0], counts.shape[1]), max_span
        a = float(np.exp(-bin_size * 1000.0 / smooth_ms))
        self.warm = int(np.ceil(np.log(1e-20) / np.log(a))) if 0 < a < 1 else 0

    def take(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), U) float32 smoothed counts of ``rows`` (int indices, any order)."""
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        out = np.empty((len(rows), self.shape[1]), np.float32)
        i = 0  # spans of sorted rows: a new one where a gap exceeds the warm-up or the span would grow too long
        while i < len(srt):
            j = int(np.searchsorted(srt, srt[i] + self.max_span, side="left"))
            gaps = np.flatnonzero(np.diff(srt[i:j]) > self.warm)
            if len(gaps):
                j = i + int(gaps[0]) + 1
            a, b = int(srt[i]), int(srt[j - 1]) + 1
            lo = 0 if a - self.warm <= 0 else a - self.warm
            sm = smooth_counts(self.counts[lo:b], self.bin_size, self.smooth_ms)
            out[order[i:j]] = sm[srt[i:j] - lo]
            i = j
        return np.sqrt(out) if self.sqrt else out


SMOOTH_IN_MEMORY_BYTES = 256 * 2**20  # smoothed counts up to this size are filtered once and held (float32)


def holds_smoothed(n_bins: int, n_units: int) -> bool:
    """Whether a session's smoothed counts are held in memory (at most ``SMOOTH_IN_MEMORY_BYTES`` of float32): the
    module's definition of a short session."""
    return n_bins * n_units * 4 <= SMOOTH_IN_MEMORY_BYTES


class _Sqrt:
    """Row source of the square root of an in-memory array (the PCA/FA input when the smoothed counts are held)."""

    def __init__(self, x: np.ndarray):
        self.x, self.shape = x, x.shape

    def take(self, rows: np.ndarray) -> np.ndarray:
        return np.sqrt(self.x[np.asarray(rows, dtype=np.int64)])


def _fit_rows(train: np.ndarray, cap: int) -> np.ndarray:
    rows = np.flatnonzero(train)
    return rows[np.linspace(0, len(rows) - 1, cap).astype(int)] if len(rows) > cap else rows


def baseline_latents(counts: np.ndarray, train: np.ndarray, bin_size: float, dims: int, smooth_ms: float,
                     seed: int, with_fa: bool = True, with_cebra: bool = False) -> dict[str, np.ndarray]:
    """Baseline features for every bin: {name: (n_bins, dims) float32}; ``smoothing`` is (n_bins, U): the array when it
    takes at most ``SMOOTH_IN_MEMORY_BYTES`` (filtered once: every metric reads it, and filtering the rows each one
    asks for cost the default session ~13 s), else a :class:`SmoothedCounts` row source that the metrics read in
    blocks (metrics/rows.py).

    counts: (n_bins, U) held-in counts (an array or a ColumnView); train: (n_bins,) bool mask of the bins models
    may be fit on; smooth_ms, seed: the teacher config's ``eval.smooth_ms`` and ``train.seed``.
    """
    if holds_smoothed(*counts.shape):  # small enough: filter once, keep it
        smooth = smooth_counts(counts[0:counts.shape[0]], bin_size, smooth_ms)
        sq = _Sqrt(smooth)
    else:
        smooth = SmoothedCounts(counts, bin_size, smooth_ms)
        sq = SmoothedCounts(counts, bin_size, smooth_ms, sqrt=True)  # variance-stabilising, usual for PCA/FA of counts
    rows = _fit_rows(train, 50_000)
    out: dict = {"smoothing": smooth}
    pca_dims = min(dims, counts.shape[1], len(rows))  # a recording with few units has fewer components
    out["pca"] = _apply(PCA(pca_dims, random_state=seed).fit(sq.take(rows)), sq, pca_dims)
    if with_fa:
        # lapack SVD and a capped fit set: randomized SVD inside FA's EM loop took minutes on 2 cores; FA never has
        # more factors than half the units (it is not identifiable beyond that and EM crawls)
        fa_dims = max(1, min(dims, counts.shape[1] // 2))
        fa = FactorAnalysis(fa_dims, svd_method="lapack", max_iter=200, random_state=seed)
        fa.fit(sq.take(_fit_rows(train, 10_000)))
        out["fa"] = _apply(fa, sq, fa_dims)
    if with_cebra:
        emb = cebra_latents(counts, train, bin_size, dims, smooth_ms, seed)
        if emb is not None:
            out["cebra"] = emb
    return out


def _apply(model, source: SmoothedCounts, dims: int) -> np.ndarray:
    """model.transform of every row of source, (n_bins, dims) float32, a block of rows at a time."""
    n = source.shape[0]
    out = np.empty((n, dims), np.float32)
    step = block_rows(source.shape[1])
    for a in range(0, n, step):
        out[a:a + step] = model.transform(source.take(np.arange(a, min(a + step, n))))
    return out


def cebra_latents(counts: np.ndarray, train: np.ndarray, bin_size: float, dims: int, smooth_ms: float,
                  seed: int, max_iterations: int = 2000) -> np.ndarray | None:
    """CEBRA-Time embedding (n_bins, dims), fit on train bins; None when cebra is not installed.

    CEBRA's offset10 model looks 5 bins either side, i.e. it is not causal; it is reported as a peer, not as a
    like-for-like causal model.
    """
    try:
        import cebra  # optional: the `bench` extra
    except ImportError:
        return None
    smooth = np.sqrt(smooth_counts(np.asarray(counts[:]), bin_size, smooth_ms))  # in memory: CEBRA is optional
    t0 = time.perf_counter()
    model = cebra.CEBRA(model_architecture="offset10-model", output_dimension=dims, batch_size=512,
                        max_iterations=max_iterations, conditional="time", time_offsets=10, device="cpu",
                        verbose=False)
    model.fit(smooth[np.flatnonzero(train)])
    log.info("cebra: trained in %.1f s", time.perf_counter() - t0)
    return model.transform(smooth).astype(np.float32)
