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

from .rows import as_rows, block_rows, column_mean_std, row_blocks, take_rows


def rankme(z, eps: float = 1e-7, rows=None) -> float:
    """RankMe of z: (n, D) (an array or a row source, see rows.py) over ``rows`` (mask or indices; None: all)
    -> float in [1, min(n, D)]. Centred first, so a constant offset does not count.

    In one block: the singular values of the centred rows. Longer: the square roots of the eigenvalues of their
    centred Gram matrix, accumulated block by block (the same values; memory D x D)."""
    idx = as_rows(rows, z.shape[0])
    if len(idx) <= block_rows(z.shape[1]):
        x = np.asarray(take_rows(z, idx), dtype=np.float64)
        s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    else:
        mu, _ = column_mean_std(z, idx)
        gram = np.zeros((z.shape[1], z.shape[1]))
        for _, b in row_blocks(z, idx):
            b -= mu
            gram += b.T @ b
        s = np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0.0, None))[::-1]
    if s.sum() <= 0:
        return 1.0
    p = s / s.sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def per_dim_std(z, rows=None) -> np.ndarray:
    """(D,) standard deviation of each latent dimension over ``rows`` (None: all) of z: (n, D)."""
    return column_mean_std(z, as_rows(rows, z.shape[0]))[1]


def ridge_r2(x, y: np.ndarray, train: np.ndarray, test: np.ndarray,
             alphas=(1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0), per_dim: bool = False):
    """R^2 of a ridge map x -> y fit on rows ``train`` and scored on rows ``test``.

    x: (n, Dx) features (an array or a row source, see rows.py; standardised with train statistics); y: (n, Dy)
    targets; train, test: boolean masks or index arrays over rows. The ridge strength is chosen by efficient
    leave-one-out on the train rows. Returns the mean over target dimensions of each one's R^2 (every latent
    counts equally, whatever its variance); with ``per_dim`` also the (Dy,) array. Memory: one block of rows
    and Dx x Dx, whatever n.
    """
    y = np.asarray(y, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    tr, te = as_rows(train, x.shape[0]), as_rows(test, x.shape[0])
    mu, sd = column_mean_std(x, tr)
    sd = sd + 1e-8
    coef, intercept = _ridge_loo_rows(x, y, tr, alphas, mu, sd)
    yte = y[te]
    sse = np.zeros(y.shape[1])
    for pos, b in row_blocks(x, te):
        pred = (b - mu) / sd @ coef + intercept
        sse += ((yte[pos] - pred) ** 2).sum(0)
    sst = ((yte - yte.mean(0)) ** 2).sum(0)
    dims = np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), np.where(sse == 0, 1.0, 0.0))  # as sklearn
    return (float(dims.mean()), dims) if per_dim else float(dims.mean())


def ridge_loo(x: np.ndarray, y: np.ndarray, alphas) -> tuple[np.ndarray, np.ndarray]:
    """Ridge regression y ~ x @ coef + intercept (intercept unpenalised) whose strength is the one of ``alphas``
    with the lowest exact leave-one-out squared error, pooled over targets (ties: the first).

    The estimator of scikit-learn's ``RidgeCV(alphas)`` (its "cov" GCV mode), written for one eigendecomposition
    of the (p, p) covariance and O(n p) per alpha: RidgeCV spends seconds per call on a session's 10^5 bins in its
    hat-matrix diagonal. x: (n, p), y: (n, k). Returns coef (p, k) and intercept (k,); tested against RidgeCV.
    """
    x = np.asarray(x, dtype=np.float64)
    return _ridge_loo_rows(x, np.asarray(y, dtype=np.float64), np.arange(len(x)), alphas,
                           np.zeros(x.shape[1]), np.ones(x.shape[1]))


def _ridge_loo_rows(x, y: np.ndarray, rows: np.ndarray, alphas, mu: np.ndarray, sd: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`ridge_loo` of the standardised rows ``(x[rows] - mu) / sd`` and ``y[rows]``, block by block: a pass
    for the means, one for the covariance, one for the leave-one-out errors. Returns coef and intercept in the
    standardised coordinates."""
    def blocks():
        for pos, b in row_blocks(x, rows):
            yield pos, (b - mu) / sd

    n, yr = len(rows), y[rows]
    ym = yr.mean(0)
    one = n <= block_rows(x.shape[1])
    if one:  # one block: the one-piece computation, operation for operation
        xs = next(blocks())[1]
        xm = xs.mean(0)
    else:
        xm = sum(b.sum(0) for _, b in blocks()) / n
    yc = yr - ym
    cov, xty = np.zeros((x.shape[1], x.shape[1])), np.zeros((x.shape[1], y.shape[1]))
    for pos, b in ((slice(0, n), xs),) if one else blocks():
        b -= xm
        cov += b.T @ b
        xty += b.T @ yc[pos]
    s, v = np.linalg.eigh(cov)
    ws = [1.0 / (s + float(a)) for a in alphas]
    bs = [w[:, None] * (v.T @ xty) for w in ws]  # coefficients in the eigenbasis
    errs = np.zeros(len(alphas))
    for pos, b in ((slice(0, n), xs),) if one else blocks():
        if not one:
            b -= xm
        xv = b @ v  # the rows in the covariance's eigenbasis
        xv2 = xv * xv
        for i, (w, bb) in enumerate(zip(ws, bs)):
            hat = xv2 @ w + 1.0 / n  # diagonal of the hat matrix, the unpenalised intercept included
            errs[i] += float((((yc[pos] - xv @ bb) / (1.0 - hat)[:, None]) ** 2).sum())
    best = bs[int(np.argmin(errs))]  # ties: the first, as before
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


def forecast_r2_blocks(blocks) -> float:
    """:func:`forecast_r2` of (pred, target) pairs handed in block by block (the rows of a long session):
    one block is exactly :func:`forecast_r2`; several are reduced with running sums (SSE, sum and sum of squares
    of the target per column), so memory is one block."""
    blocks = iter(blocks)
    first = next(blocks, None)
    if first is None:
        return float("nan")
    second = next(blocks, None)
    if second is None:
        return forecast_r2(*first)
    sse = s1 = s2 = 0.0
    n = 0
    for p, t in (first, second, *blocks):
        p = np.asarray(p, dtype=np.float64).reshape(len(p), -1)
        t = np.asarray(t, dtype=np.float64).reshape(len(t), -1)
        sse, s1, s2, n = sse + ((t - p) ** 2).sum(0), s1 + t.sum(0), s2 + (t * t).sum(0), n + len(t)
    sst = s2 - s1 * s1 / n
    dims = np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), np.where(sse == 0, 1.0, 0.0))
    return float(dims.mean())


class FutureRows:
    """Row source (rows.py) of the future of a latent: ``take(rows)`` = ``[z[t+1], ..., z[t+K]]`` for each row t,
    (len(rows), K * D) in horizon-major order (as a (n, K, D) forecast reshaped). Valid for rows t < n - K."""

    def __init__(self, z, horizon: int):
        self.z, self.horizon = z, int(horizon)
        self.shape = (z.shape[0], self.horizon * z.shape[1])

    def take(self, rows) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        return np.concatenate([take_rows(self.z, rows + j) for j in range(1, self.horizon + 1)], axis=1)


def forecast_readout_r2(z, horizon: int, fit_rows, score_rows, alphas=(1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0),
                        max_train: int = 10_000) -> float:
    """R^2 of the linear forecast read-out of :func:`forecast_r2_cross_state` fit on ``fit_rows`` and scored on
    ``score_rows`` (masks or indices of forecast origins: rows whose next ``horizon`` rows exist in their run);
    NaN when there are no more fit rows than latent dims or fewer than two score rows."""
    fit = _forecast_fit(z, horizon, fit_rows, alphas, max_train)
    rows = as_rows(score_rows, z.shape[0])
    return _forecast_score(z, horizon, fit, rows) if fit is not None and len(rows) > 1 else float("nan")


def _forecast_fit(z, horizon: int, rows, alphas, max_train: int):
    """(mu, sd, coef, intercept) of the ridge z_t -> future (standardised features) on at most ``max_train``
    evenly spaced ``rows``; None with no more rows than latent dims."""
    tr = as_rows(rows, z.shape[0])
    if len(tr) <= z.shape[1]:
        return None
    if len(tr) > max_train:
        tr = tr[np.linspace(0, len(tr) - 1, max_train).astype(int)]
    x = np.asarray(take_rows(z, tr), dtype=np.float64)
    mu, sd = x.mean(0), x.std(0) + 1e-8
    y = FutureRows(z, horizon).take(tr).astype(np.float64)
    return (mu, sd, *_ridge_loo_rows(x, y, np.arange(len(tr)), alphas, mu, sd))


def _forecast_score(z, horizon: int, fit, rows: np.ndarray) -> float:
    """forecast R^2 of the read-out ``fit`` on ``rows``, a block at a time (:func:`forecast_r2_blocks`)."""
    mu, sd, coef, intercept = fit
    future = FutureRows(z, horizon)
    width = z.shape[1] + 2 * future.shape[1]  # features, forecast and target per row
    return forecast_r2_blocks(((b - mu) / sd @ coef + intercept, future.take(rows[pos]))
                              for pos, b in row_blocks(z, rows, width=width))


def forecast_r2_cross_state(z, horizon: int, origins: np.ndarray, state: np.ndarray, split: np.ndarray,
                            states: list[str] | None = None, alphas=(1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0),
                            max_train: int = 10_000) -> tuple[dict, dict]:
    """Forecast R^2 across states: a linear forecast read-out z_t -> (z_{t+1}, ..., z_{t+K}) (ridge, strength by
    leave-one-out as :func:`ridge_r2`; the form of a linear predictor) fit on state A's train rows, scored with
    :func:`forecast_r2_blocks` (R^2 pooled over horizons and dims, as ``forecast_r2``) on state B's test rows.

    z: (n, D) latents (an array or a row source); horizon: K; origins: (n,) bool, the rows t whose next K rows lie
    in the same split run (the caller's: t in [a, b - K) of each train and test segment); state, split: (n,) str.
    Fit rows: at most ``max_train`` evenly spaced train origins of the state. Returns ``(cross, within)`` as
    :func:`neurojepa.metrics.cobps.cobps_cross_state`: cross ``{"A->B": r2, ..., "mean"}``, within ``{"B": r2 of
    B's read-out on B's test rows, ..., "mean"}``; both empty when fewer than two states can be paired."""
    state, split = np.asarray(state).astype(str), np.asarray(split).astype(str)
    origins = np.asarray(origins, dtype=bool)
    states = list(states or sorted(s for s in np.unique(state) if s))
    fits = {s: _forecast_fit(z, horizon, origins & (state == s) & (split == "train"), alphas, max_train)
            for s in states}
    fits = {s: f for s, f in fits.items() if f is not None}
    tests = {s: np.flatnonzero(origins & (state == s) & (split == "test")) for s in states}
    cross = {f"{a}->{b}": _forecast_score(z, horizon, fits[a], tests[b])
             for a in fits for b in states if a != b and len(tests[b]) > 1}
    if not cross:
        return {}, {}
    paired = sorted({p.split("->")[1] for p in cross})
    within = {b: _forecast_score(z, horizon, fits[b], tests[b]) for b in paired if b in fits}
    cross["mean"] = float(np.mean(list(cross.values())))
    if within:
        within["mean"] = float(np.mean(list(within.values())))
    return cross, within


# ------------------------------------------------------------------------------------ forecasting spike counts
COUNT_FORECAST_BYTES = 256 * 2**20  # float64 future-count targets of the fit rows (K x units per row)


def count_forecast_r2(blocks, mean_rate: np.ndarray) -> float:
    """Skill of a count forecast over the mean-rate forecast: ``1 - SSE(forecast) / SSE(mean_rate)``, pooled over
    rows, horizons and units. blocks: (forecast, actual) pairs of (n, K * U) arrays (horizon-major, as
    :class:`FutureRows`); mean_rate: (K * U,) the mean-rate forecast (each unit's mean count on the fit rows).
    0: no better than the mean rates; 1: every count foreseen; negative: worse than the mean."""
    sse = sse0 = 0.0
    for pred, actual in blocks:
        actual = np.asarray(actual, dtype=np.float64)
        sse += float(((actual - pred) ** 2).sum())
        sse0 += float(((actual - mean_rate) ** 2).sum())
    return 1.0 - sse / sse0 if sse0 > 0 else float("nan")


def count_rows(rows: np.ndarray, horizon: int, units: int) -> np.ndarray:
    """At most as many evenly spaced ``rows`` as keep their (K * units) float64 targets in
    ``COUNT_FORECAST_BYTES`` (at least 2,000)."""
    cap = max(2000, COUNT_FORECAST_BYTES // (8 * horizon * max(units, 1)))
    return rows[np.linspace(0, len(rows) - 1, cap).astype(int)] if len(rows) > cap else rows


def linear_count_forecast_r2(x, counts, horizon: int, fit_rows, score_rows,
                             alphas=(1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)) -> float:
    """:func:`count_forecast_r2` of a linear forecast read-out: ridge from the features at t (x: (n, D), an array
    or a row source) to the counts (n, U) of t+1..t+K, strength by leave-one-out, fit on ``fit_rows`` (forecast
    origins: rows whose next K rows are in the same run), scored on ``score_rows`` against the fit rows' mean rates.
    How a model without a predictor (PCA, smoothing) forecasts; NaN with too few rows."""
    tr = count_rows(as_rows(fit_rows, x.shape[0]), horizon, counts.shape[1])
    te = as_rows(score_rows, x.shape[0])
    if len(tr) <= x.shape[1] or len(te) < 2:
        return float("nan")
    future = FutureRows(counts, horizon)
    xtr = np.asarray(take_rows(x, tr), dtype=np.float64)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-8
    y = future.take(tr).astype(np.float64)
    coef, intercept = _ridge_loo_rows(xtr, y, np.arange(len(tr)), alphas, mu, sd)
    width = x.shape[1] + 2 * future.shape[1]
    return count_forecast_r2((((b - mu) / sd @ coef + intercept, future.take(te[pos]))
                              for pos, b in row_blocks(x, te, width=width)), y.mean(0))


def predicted_count_forecast_r2(z, counts, horizon: int, forecast, fit_rows, score_rows,
                                alphas=(1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)) -> float:
    """:func:`count_forecast_r2` of a model's own forecast: ``forecast(z_rows) -> (n, K, D)`` future latents (the
    teacher's predictor), read out to counts by one ridge map from a forecast latent z^_{t+k} to the counts of bin
    t+k (strength by leave-one-out), fit on the forecasts from ``fit_rows`` (forecast origins: rows whose next K rows
    are in the same run) and scored on the next K bins of ``score_rows`` against the fit rows' mean rates. The map
    is fit on forecasts, not on the encoder's latents, so it weighs each forecast dim by how well it is foreseen."""
    tr = count_rows(as_rows(fit_rows, z.shape[0]), horizon, counts.shape[1])
    te = as_rows(score_rows, z.shape[0])
    if len(tr) <= z.shape[1] or len(te) < 2:
        return float("nan")
    future = FutureRows(counts, horizon)
    ftr = np.asarray(forecast(np.asarray(take_rows(z, tr))), dtype=np.float64).reshape(len(tr) * horizon, -1)
    ytr = future.take(tr).astype(np.float64).reshape(len(tr) * horizon, -1)  # horizon-major rows: (t, k) pairs
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-8
    coef, intercept = _ridge_loo_rows(ftr, ytr, np.arange(len(ftr)), alphas, mu, sd)

    def blocks():
        for pos, b in row_blocks(z, te, width=z.shape[1] * (horizon + 1) + 2 * future.shape[1]):
            pred = (np.asarray(forecast(b), dtype=np.float64) - mu) / sd @ coef + intercept  # (n, K, U)
            yield pred.reshape(len(pred), -1), future.take(te[pos])

    return count_forecast_r2(blocks(), np.tile(ytr.mean(0), horizon))
