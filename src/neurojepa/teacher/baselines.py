"""Baseline latents scored beside the teacher on the same splits.

- ``raw``: causally smoothed counts of the held-in units (exponential filter, ``smooth_ms``): the floor.
- ``pca``: PCA of those smoothed counts, fit on train bins, as many dims as the teacher's latent.
- ``fa``: factor analysis (same dims), for gt_r2 only (it is the classical latent-variable model).
- ``cebra``: CEBRA time-contrastive (``cebra`` in the optional ``bench`` extra), when asked for (``eval.cebra``)
  and installed.

Smoothing is causal, like the teacher's encoder, so no baseline sees the future.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from scipy.signal import lfilter
from sklearn.decomposition import PCA, FactorAnalysis

log = logging.getLogger(__name__)


def smooth_counts(counts: np.ndarray, bin_size: float, smooth_ms: float) -> np.ndarray:
    """Causal exponential smoothing, (n_bins, U) counts -> (n_bins, U) float32 (spikes per bin, time constant
    smooth_ms)."""
    a = float(np.exp(-bin_size * 1000.0 / smooth_ms))
    return lfilter([1 - a], [1, -a], np.asarray(counts, dtype=np.float32), axis=0).astype(np.float32)


def _fit_rows(train: np.ndarray, cap: int) -> np.ndarray:
    rows = np.flatnonzero(train)
    return rows[np.linspace(0, len(rows) - 1, cap).astype(int)] if len(rows) > cap else rows


def baseline_latents(counts: np.ndarray, train: np.ndarray, bin_size: float, dims: int, smooth_ms: float = 50.0,
                     seed: int = 0, with_fa: bool = True, with_cebra: bool = False) -> dict[str, np.ndarray]:
    """Baseline features for every bin: {name: (n_bins, dims_or_U) float32}.

    counts: (n_bins, U) held-in counts; train: (n_bins,) bool mask of the bins models may be fit on.
    """
    smooth = smooth_counts(counts, bin_size, smooth_ms)
    rows = _fit_rows(train, 50_000)
    sq = np.sqrt(smooth)  # variance-stabilising, the usual preprocessing for PCA/FA of counts
    out = {"raw": smooth}
    pca_dims = min(dims, counts.shape[1], len(rows))  # a recording with few units has fewer components
    out["pca"] = PCA(pca_dims, random_state=seed).fit(sq[rows]).transform(sq).astype(np.float32)
    if with_fa:
        # lapack SVD and a capped fit set: randomized SVD inside FA's EM loop took minutes on 2 cores; FA never has
        # more factors than half the units (it is not identifiable beyond that and EM crawls)
        fa_dims = max(1, min(dims, counts.shape[1] // 2))
        fa = FactorAnalysis(fa_dims, svd_method="lapack", max_iter=200, random_state=seed)
        fa.fit(sq[_fit_rows(train, 10_000)])
        out["fa"] = fa.transform(sq).astype(np.float32)
    if with_cebra:
        emb = cebra_latents(counts, train, bin_size, dims, smooth_ms, seed)
        if emb is not None:
            out["cebra"] = emb
    return out


def cebra_latents(counts: np.ndarray, train: np.ndarray, bin_size: float, dims: int, smooth_ms: float = 50.0,
                  seed: int = 0, max_iterations: int = 2000) -> np.ndarray | None:
    """CEBRA-Time embedding (n_bins, dims), fit on train bins; None when cebra is not installed.

    CEBRA's offset10 model looks 5 bins either side, i.e. it is not causal; it is reported as a peer, not as a
    like-for-like causal model.
    """
    try:
        import cebra  # optional: the `bench` extra
    except ImportError:
        return None
    smooth = np.sqrt(smooth_counts(counts, bin_size, smooth_ms))
    t0 = time.perf_counter()
    model = cebra.CEBRA(model_architecture="offset10-model", output_dimension=dims, batch_size=512,
                        max_iterations=max_iterations, conditional="time", time_offsets=10, device="cpu",
                        verbose=False)
    model.fit(smooth[np.flatnonzero(train)])
    log.info("cebra: trained in %.1f s", time.perf_counter() - t0)
    return model.transform(smooth).astype(np.float32)
