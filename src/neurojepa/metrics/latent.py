"""Latent-space metrics: collapse diagnostics and linear maps to a reference (pure functions of arrays).

- :func:`rankme`: effective rank of an embedding (Garrido et al. 2023), exp of the entropy of its normalised
  singular values; equals D for a full-rank isotropic cloud, 1 for a collapsed one.
- :func:`per_dim_std`: VICReg-style per-dimension standard deviation.
- :func:`ridge_r2`: R^2 of a ridge map fit on some rows and scored on others (the split is the caller's: train
  blocks vs test blocks of a session), used for ground-truth recovery and the cross-state transfer.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import r2_score


def rankme(z: np.ndarray, eps: float = 1e-7) -> float:
    """RankMe of z: (n, D) -> float in [1, min(n, D)]. Centred first, so a constant offset does not count."""
    z = np.asarray(z, dtype=np.float64)
    s = np.linalg.svd(z - z.mean(0), compute_uv=False)
    if s.sum() <= 0:
        return 1.0
    p = s / s.sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def per_dim_std(z: np.ndarray) -> np.ndarray:
    """(D,) standard deviation of each latent dimension over rows of z: (n, D)."""
    return np.asarray(z, dtype=np.float64).std(0)


def ridge_r2(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray,
             alphas=(1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0), per_dim: bool = False):
    """R^2 of a ridge map x -> y fit on rows ``train`` and scored on rows ``test``.

    x: (n, Dx) features (standardised with train statistics); y: (n, Dy) targets; train, test: boolean masks or
    index arrays over rows. The ridge strength is chosen by efficient leave-one-out on the train rows. Returns
    the mean over target dimensions of each one's R^2 (every latent counts equally, whatever its variance);
    with ``per_dim`` also the (Dy,) array.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    xtr, xte = x[train], x[test]
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-8
    coef, intercept = ridge_loo((xtr - mu) / sd, y[train], alphas)
    pred = (xte - mu) / sd @ coef + intercept
    dims = r2_score(y[test], pred, multioutput="raw_values")
    return (float(dims.mean()), dims) if per_dim else float(dims.mean())


def ridge_loo(x: np.ndarray, y: np.ndarray, alphas) -> tuple[np.ndarray, np.ndarray]:
    """Ridge regression y ~ x @ coef + intercept (intercept unpenalised) whose strength is the one of ``alphas``
    with the lowest exact leave-one-out squared error, pooled over targets (ties: the first).

    The estimator of scikit-learn's ``RidgeCV(alphas)`` (its "cov" GCV mode), written for one eigendecomposition
    of the (p, p) covariance and O(n p) per alpha: RidgeCV spends seconds per call on a session's 10^5 bins in its
    hat-matrix diagonal. x: (n, p), y: (n, k). Returns coef (p, k) and intercept (k,); tested against RidgeCV.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xm, ym = x.mean(0), y.mean(0)
    xc, yc = x - xm, y - ym
    s, v = np.linalg.eigh(xc.T @ xc)
    xv = xc @ v  # the rows in the covariance's eigenbasis
    xv2, xty = xv * xv, xv.T @ yc
    best_err, best = np.inf, None
    for a in alphas:
        w = 1.0 / (s + float(a))
        b = w[:, None] * xty  # coefficients in the eigenbasis
        hat = xv2 @ w + 1.0 / len(x)  # diagonal of the hat matrix, the unpenalised intercept included
        err = float((((yc - xv @ b) / (1.0 - hat)[:, None]) ** 2).mean())
        if err < best_err:
            best_err, best = err, b
    coef = v @ best
    return coef, ym - xm @ coef


def cross_state_r2(x: np.ndarray, y: np.ndarray, state: np.ndarray, split: np.ndarray,
                   states: list[str] | None = None) -> dict:
    """R^2 of ridge maps fit on one state's train rows and scored on another state's test rows.

    x: (n, Dx); y: (n, Dy); state: (n,) str; split: (n,) 'train'|'val'|'test'|''. Returns
    ``{"A->B": r2, ..., "mean": average over ordered pairs}`` (empty when fewer than two states). ``states``:
    the states to pair (default: all non-empty ones).
    """
    states = states or sorted(s for s in np.unique(state) if s)
    out: dict = {}
    for a in states:
        for b in states:
            if a == b:
                continue
            tr = (state == a) & (split == "train")
            te = (state == b) & (split == "test")
            if tr.sum() > x.shape[1] and te.sum() > 1:
                out[f"{a}->{b}"] = ridge_r2(x, y, tr, te)
    if out:
        out["mean"] = float(np.mean(list(out.values())))
    return out


def forecast_r2(pred: np.ndarray, target: np.ndarray) -> float:
    """R^2 of predicted vs actual future latents, both (n, K, D) or (n, D): 1 - SSE / SS around the target mean,
    pooled over horizons and dimensions (uniform average of per-(k, d) R^2)."""
    p = np.asarray(pred, dtype=np.float64).reshape(len(pred), -1)
    t = np.asarray(target, dtype=np.float64).reshape(len(target), -1)
    return float(r2_score(t, p, multioutput="uniform_average"))
