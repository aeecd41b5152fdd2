"""Canonical correlation analysis (CCA) between two sets of time series, and an honest held-out version.

Canonical correlations are the singular values of ``Cxx^-1/2 Cxy Cyy^-1/2`` (RESEARCH.md §5). They are invariant to
any invertible linear map of either side, so they compare a student readout with teacher latents without caring
about rotation or scale. We whiten with a Cholesky factor of each ridged covariance (any square root gives the same
singular values) in float64; the ridge ``ridge * trace(C)/p * I`` keeps tiny-variance directions from dominating.
Every function takes the ridge from its caller (the student's ``ridge`` option): there is no second default here.

In-sample CCA is strongly inflated when dimensions are many (independent noise gives large values), so the success
measure is :func:`heldout_cca`: directions fit on training blocks, correlations measured on test blocks; and
:func:`null_heldout_cca` repeats it against circularly time-shifted teacher latents (keeps each series' own
autocorrelation, destroys the alignment), which should be near zero. :func:`cca_cross_state` fits the directions on
one state's training blocks and scores them on another state's test blocks (does the alignment hold across states?).

:func:`cca_loss` is the differentiable torch version used for distillation (Deep-CCA style): minus the sum of
canonical correlations, computed in float64 through the nuclear norm of the whitened cross-covariance, whose gradient
``U V^T`` stays finite when singular values are (near-)equal, unlike eigen-decomposition gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _centred(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"expected a (samples, dims) array, got shape {a.shape}")
    return a - a.mean(axis=0)


def _ridged_cov(a: np.ndarray, ridge: float) -> np.ndarray:
    c = a.T @ a / max(len(a) - 1, 1)
    p = c.shape[0]
    scale = np.trace(c) / p if np.trace(c) > 0 else 1.0
    return c + ridge * scale * np.eye(p)


@dataclass
class CCAFit:
    """CCA directions: ``(x - mean_x) @ wx`` and ``(y - mean_y) @ wy`` are the canonical variates, best first.

    wx: (p, k), wy: (q, k), corr: (k,) in-sample canonical correlations, k = min(p, q).
    """

    mean_x: np.ndarray
    mean_y: np.ndarray
    wx: np.ndarray
    wy: np.ndarray
    corr: np.ndarray

    def transform(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Canonical variates of new data, each (samples, k)."""
        return (np.asarray(x, np.float64) - self.mean_x) @ self.wx, (np.asarray(y, np.float64) - self.mean_y) @ self.wy


def fit_cca(x: np.ndarray, y: np.ndarray, ridge: float) -> CCAFit:
    """Fit CCA. x: (n, p), y: (n, q) with the same n samples (time bins)."""
    xc, yc = _centred(x), _centred(y)
    if len(xc) != len(yc):
        raise ValueError(f"x and y need the same number of samples, got {len(xc)} and {len(yc)}")
    lx = np.linalg.cholesky(_ridged_cov(xc, ridge))
    ly = np.linalg.cholesky(_ridged_cov(yc, ridge))
    cxy = xc.T @ yc / max(len(xc) - 1, 1)
    # whitened cross-covariance Lx^-1 Cxy Ly^-T; its singular values are the canonical correlations
    m = np.linalg.solve(lx, np.linalg.solve(ly, cxy.T).T)
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    wx = np.linalg.solve(lx.T, u)
    wy = np.linalg.solve(ly.T, vt.T)
    return CCAFit(np.asarray(x, np.float64).mean(0), np.asarray(y, np.float64).mean(0), wx, wy, np.clip(s, 0.0, 1.0))


def canonical_correlations(x: np.ndarray, y: np.ndarray, ridge: float) -> np.ndarray:
    """In-sample canonical correlations, (min(p, q),) descending. x: (n, p), y: (n, q)."""
    return fit_cca(x, y, ridge).corr


def _columnwise_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(0)
    b = b - b.mean(0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(0) / den
    return np.where(den > 0, r, 0.0)


def heldout_cca(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                ridge: float) -> np.ndarray:
    """Held-out canonical correlations, (k,): directions fit on (x_train, y_train), Pearson correlation of each pair of
    canonical variates on (x_test, y_test). Ordered as the training components (not re-sorted)."""
    fit = fit_cca(x_train, y_train, ridge)
    u, v = fit.transform(x_test, y_test)
    return _columnwise_corr(u, v)


def cca_cross_state(x: np.ndarray, y: np.ndarray, state: np.ndarray, train: np.ndarray, test: np.ndarray,
                    ridge: float, sources: list[str], targets: list[str], min_rows: int = 0) -> dict:
    """Cross-state held-out CCA: for each source state A, CCA directions fit on the rows ``train & (state == A)``
    (once per A), and the mean over canonical pairs of the correlations on the rows ``test & (state == B)`` of every
    target state B != A. x: (n, p), y: (n, q), state: (n,) str, train/test: (n,) bool. Pairs with fewer than
    ``min_rows`` rows on either side are left out. Returns ``{"A->B": mean corr, ..., "mean": over the pairs}``
    ({} when no pair qualifies)."""
    state = np.asarray(state).astype(str)
    train, test = np.asarray(train, bool), np.asarray(test, bool)
    out: dict = {}
    for a in sources:
        tr = train & (state == a)
        pairs = [(b, test & (state == b)) for b in targets if b != a]
        pairs = [(b, te) for b, te in pairs if te.sum() >= max(min_rows, 2)]
        if tr.sum() < max(min_rows, 2) or not pairs:
            continue
        fit = fit_cca(x[tr], y[tr], ridge)
        for b, te in pairs:
            out[f"{a}->{b}"] = float(np.mean(_columnwise_corr(*fit.transform(x[te], y[te]))))
    if out:
        out["mean"] = float(np.mean(list(out.values())))
    return out


def circular_shift(y: np.ndarray, rng: np.random.Generator, min_frac: float = 0.2) -> np.ndarray:
    """y rolled along time by a random offset in [min_frac, 1 - min_frac] of its length (a time-shuffled surrogate)."""
    n = len(y)
    lo = max(1, int(min_frac * n))
    return np.roll(y, int(rng.integers(lo, max(lo + 1, n - lo))), axis=0)


def null_heldout_cca(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                     ridge: float, seed: int, n_shuffles: int = 3) -> np.ndarray:
    """Held-out CCA against time-shifted y (independent shifts for train and test), averaged over shuffles, (k,)."""
    rng = np.random.default_rng(seed)
    out = [heldout_cca(x_train, circular_shift(y_train, rng), x_test, circular_shift(y_test, rng), ridge)
           for _ in range(n_shuffles)]
    return np.mean(out, axis=0)


def cca_loss(x, y, ridge: float):
    """Differentiable CCA loss: minus the sum of canonical correlations (torch, computed in float64).

    x: (n, p) tensor, y: (n, q) tensor (y may be a constant target). Returns a 0-d float64 tensor in [-min(p, q), 0].
    """
    import torch

    x = x.to(torch.float64)
    y = y.to(torch.float64)
    x = x - x.mean(0)
    y = y - y.mean(0)
    n = x.shape[0]

    def ridged(a):
        c = a.T @ a / (n - 1)
        return c + ridge * (torch.trace(c) / c.shape[0] + 1e-12) * torch.eye(c.shape[0], dtype=c.dtype)

    lx = torch.linalg.cholesky(ridged(x))
    ly = torch.linalg.cholesky(ridged(y))
    cxy = x.T @ y / (n - 1)
    m = torch.linalg.solve_triangular(lx, cxy, upper=False)
    m = torch.linalg.solve_triangular(ly, m.T, upper=False).T
    return -torch.linalg.matrix_norm(m, ord="nuc")
