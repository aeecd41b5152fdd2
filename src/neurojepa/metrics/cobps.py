"""Co-smoothing bits per spike (Neural Latents Benchmark), with a Poisson GLM read-out (pure array functions).

Protocol (NLB, Pei et al. 2021): some units are held out of the model's input; a Poisson GLM maps the model's
latents to those units' counts, fit on train bins, scored on test bins::

    NLL(r, y) = sum(r - y log r + lgamma(y + 1))
    bits/spike = (NLL_null - NLL_model) / (total held-out spikes * ln 2)

where the null model predicts each held-out unit's mean count on the evaluated bins. 0 means no better than a
constant rate; higher is better.

The GLM is fit for all held-out units at once by L-BFGS on the summed (separable) objective; scikit-learn's
PoissonRegressor would fit one unit at a time, tens of times slower here.

The penalty, as NLB chooses it (issue 16): one L2 penalty for all held-out units, the one of :data:`L2_GRID`
with the lowest summed Poisson NLL on *validation* bins (per-unit choices, tried first, overfit a real recording's
single validation minute). The fit then uses every train bin: the penalty is chosen on 10,000 evenly spaced train
and val bins (the grid walked from the strongest penalty down, each fit warm-started from the previous one), and one
warm-started fit on all train bins keeps the chosen *total* penalty (a fixed Gaussian prior on the weights:
per-sample penalty x 10,000 / n). Memory: at most ``GLM_BYTES`` of float64 design matrix and temporaries (a
full-size VBN session's 1,100 smoothed counts: ~60,000 evenly spaced train bins). Where no validation bins are
given, the last fifth of the train bins (in time) chooses the penalty and the first four fifths fit it.

The read-out does not extrapolate: test features are clipped to the range they had on the fit bins. Real
recordings drift (a unit silent in training fires in a test block); factor analysis turns that into factor scores
far outside the training range, and an exponential link then predicts thousands of spikes per bin (T182: -50
bits/spike). Clipping bounds every model's prediction by what its read-out saw.

Why: a fixed small penalty on 10,000 bins (before issue 16) overfit: on a real 10-minute rat recording it scored
the 177 smoothed counts at -2.09 bits/spike, and an uninformative latent below zero. A latent of pure noise now
scores ~0 (tested). docs/teacher.md ("Co-smoothing as NLB scores it") records the grid, the fit budget and the runs.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import NamedTuple

import numpy as np
from scipy.optimize import minimize
from scipy.special import gammaln

from .rows import block_rows, row_blocks, take_rows


def poisson_nll(rates: np.ndarray, counts: np.ndarray) -> float:
    """Summed Poisson negative log-likelihood; rates (expected counts per bin) and counts of the same shape."""
    r = np.clip(np.asarray(rates, dtype=np.float64), 1e-9, None)
    y = np.asarray(counts, dtype=np.float64)
    return float((r - y * np.log(r) + gammaln(y + 1)).sum())


def bits_per_spike(rates: np.ndarray, counts: np.ndarray) -> float:
    """NLB bits per spike of predicted rates (n_bins, n_units) for counts (n_bins, n_units)."""
    y = np.asarray(counts, dtype=np.float64)
    null = np.broadcast_to(y.mean(0, keepdims=True), y.shape)
    total = y.sum()
    if total == 0:
        return float("nan")
    return float((poisson_nll(null, y) - poisson_nll(rates, y)) / (total * np.log(2)))


L2_GRID = (10.0, 1.0, 0.1, 1e-2, 1e-3, 1e-4)  # per-sample penalties on standardised features, strongest first
GLM_BYTES = 512 * 2**20  # the fit's float64 design matrix and rate temporaries: every train bin up to this size
CHOOSE_TRAIN = 10_000  # train (and val) bins of the fits that choose the penalty


def fit_poisson_glm(x: np.ndarray, y: np.ndarray, l2: float | np.ndarray = 1e-3, max_iter: int = 100,
                    init: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fit log rate = x @ W + b for every column of y at once.

    x: (n, D) features, assumed standardised; y: (n, U) counts per bin. ``l2`` is per-sample (the penalty is
    n * l2 * |W|^2 / 2): a number, or one per unit (U,). init: (W, b) to start from (default: W = 0, b = log mean
    count). Returns W: (D, U) and b: (U,).

    Speed: the two (n, D) x (D, U) products of each objective call run in float32 (twice float64's speed; the
    parameters, sums and L-BFGS stay float64). Tested against scikit-learn's float64 ``PoissonRegressor``.
    """
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    n, d = x.shape
    u = y.shape[1]
    b0 = np.log(y.mean(0, dtype=np.float64) + 1e-3)

    def objective(theta):
        # in place, few temporaries: this runs ~100 times per fit on (n, U) arrays
        w = theta[: d * u].reshape(d, u)
        b = theta[d * u:]
        eta = x @ w.astype(np.float32)
        eta += b.astype(np.float32)
        np.clip(eta, -20, 10, out=eta)  # keep exp finite while the line search explores
        f = -float(np.einsum("ij,ij->", y, eta, dtype=np.float64))
        r = np.exp(eta, out=eta)
        f = (f + float(r.sum(dtype=np.float64))) / n + 0.5 * float((l2 * w * w).sum())
        r -= y
        r /= n  # the gradient of the mean NLL with respect to eta
        return f, np.concatenate([(x.T @ r + l2 * w).ravel(), r.sum(0, dtype=np.float64)])

    theta0 = np.concatenate([np.zeros(d * u), b0] if init is None else [init[0].ravel(), init[1]])
    res = minimize(objective, theta0, jac=True, method="L-BFGS-B", options={"maxiter": max_iter})
    return res.x[: d * u].reshape(d, u), res.x[d * u:]


def cobps(latents, heldout_counts: np.ndarray, train: np.ndarray, test: np.ndarray, val: np.ndarray | None = None,
          l2: float | None = None, max_train: int | None = None) -> float:
    """Co-smoothing bits/spike: Poisson GLM latents -> held-out units' counts, fit on train rows, scored on test.

    latents: (n_bins, D) (from a model that never saw the held-out units; an array or a row source, see
    rows.py); heldout_counts: (n_bins, U); train, test, val: boolean masks over bins. l2: a fixed per-sample
    penalty, or None (default) for each unit's best of :data:`L2_GRID` on the ``val`` rows (module docstring).
    max_train: at most this many evenly spaced train bins (None: all, up to ``GLM_BYTES``). Test bins are scored
    block by block (memory: one block, whatever the session's length).
    """
    te = np.flatnonzero(test)
    glm = _fit_glm(latents, heldout_counts, train, l2, max_train, val)
    return _score(latents, heldout_counts, [(te, glm)])


def _even(rows: np.ndarray, cap: int) -> np.ndarray:
    return rows[np.linspace(0, len(rows) - 1, cap).astype(int)] if len(rows) > cap else rows


def _fit_glm(x, y: np.ndarray, train: np.ndarray, l2: float | None, max_train: int | None,
             val: np.ndarray | None = None):
    """The :class:`_Glm` of a Poisson GLM x -> y fit on (at most max_train evenly spaced) ``train`` bins; with l2
    None, its one penalty chosen on the ``val`` bins (none: the last fifth of the train bins), see the module."""
    cap = max(CHOOSE_TRAIN, GLM_BYTES // (8 * (x.shape[1] + 3 * y.shape[1])))
    max_train = cap if max_train is None else min(max_train, cap)
    tr = np.flatnonzero(train)
    va = np.flatnonzero(val) if val is not None else np.zeros(0, np.int64)
    if l2 is None and len(va) == 0:
        cut = len(tr) - len(tr) // 5
        tr, va = tr[:cut], tr[cut:]
    tr = _even(tr, max_train)
    xtr = np.asarray(take_rows(x, tr), dtype=np.float64)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-8
    xtr = (xtr - mu) / sd
    ytr = np.asarray(y[tr], dtype=np.float64)
    if l2 is not None or len(va) == 0:
        w, b = fit_poisson_glm(xtr, ytr, l2=1e-3 if l2 is None else l2)
        return _Glm(mu, sd, w, b, xtr.min(0), xtr.max(0))
    va = _even(va, CHOOSE_TRAIN)
    sub = _even(np.arange(len(tr)), CHOOSE_TRAIN)
    w, b, chosen = fit_glm_path(xtr[sub], ytr[sub], (np.asarray(take_rows(x, va), dtype=np.float64) - mu) / sd,
                                np.asarray(y[va], dtype=np.float64))
    if len(sub) < len(tr):  # the chosen penalty, as the same total penalty (a fixed prior), on every fit row
        w, b = fit_poisson_glm(xtr, ytr, l2=chosen * (len(sub) / len(tr)), init=(w, b))
    return _Glm(mu, sd, w, b, xtr.min(0), xtr.max(0))


def fit_glm_path(xtr: np.ndarray, ytr: np.ndarray, xval: np.ndarray, yval: np.ndarray, grid=L2_GRID,
                 max_iter: int = 50) -> tuple[np.ndarray, np.ndarray, float]:
    """(W, b, l2) of :func:`fit_poisson_glm` on (xtr, ytr) at the penalty l2 of ``grid`` whose fit has the lowest
    Poisson NLL on (xval, yval), summed over units (one penalty for all units, as NLB sweeps it); the grid is walked
    from the strongest penalty down, each fit starting from the last (features standardised, as for
    :func:`fit_poisson_glm`). 50 iterations per penalty: warm-started, the choice and the final score are those of
    100 on the default session (teacher 0.5126, smoothing 0.4754; docs/teacher.md), at 0.8x the time."""
    best, out, fit = np.inf, None, None
    for l2 in sorted(grid, reverse=True):
        fit = fit_poisson_glm(xtr, ytr, l2=l2, max_iter=max_iter, init=fit)
        eta = np.clip(xval @ fit[0] + fit[1], -20, 10)
        nll = float((np.exp(eta) - yval * eta).sum())  # up to the lgamma term every penalty shares
        if out is None or nll < best:
            best, out = nll, (fit[0].copy(), fit[1].copy(), float(l2))
    return out


def _score(x, y: np.ndarray, parts: list) -> float:
    """Bits/spike on the union of test rows ``parts`` = [(rows, glm), ...] (each part's rows predicted by its
    GLM) against the null of each unit's mean count on all those rows; read block by block."""
    rows = np.concatenate([r for r, _ in parts])
    order = np.argsort(rows, kind="stable")
    width = x.shape[1] + 4 * y.shape[1]  # float64 values per row: features, rates and the NLL's temporaries
    if len(rows) <= block_rows(width):  # one block: rates of every test row, then bits_per_spike
        rates = np.empty((len(rows), y.shape[1]))
        at = 0
        for r, glm in parts:
            rates[at:at + len(r)] = glm.rates(take_rows(x, r))
            at += len(r)
        return bits_per_spike(rates[order], y[rows[order]])
    total = float(y[rows].sum(dtype=np.float64))
    if total == 0:
        return float("nan")
    null = y[rows].mean(0, dtype=np.float64)
    gain = 0.0  # NLL_null - NLL_model, summed over blocks (the lgamma terms cancel)
    for r, glm in parts:
        for pos, blk in row_blocks(x, r, width=width):
            yb = np.asarray(y[r[pos]], dtype=np.float64)
            rates = np.clip(glm.rates(blk), 1e-9, None)
            nr = np.clip(null, 1e-9, None)
            gain += float((nr - yb * np.log(nr)).sum() - (rates - yb * np.log(rates)).sum())
    return gain / (total * np.log(2))


class _Glm(NamedTuple):
    """A fitted Poisson GLM: standardisation (mu, sd), weights (D, U), intercepts (U,), and the range [lo, hi] of
    the standardised features on its fit rows."""
    mu: np.ndarray
    sd: np.ndarray
    w: np.ndarray
    b: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    def rates(self, x: np.ndarray) -> np.ndarray:
        """Expected counts per bin of rows x. Features are clipped to the range seen in the fit: the read-out does
        not extrapolate (module docstring)."""
        xs = np.clip((np.asarray(x, dtype=np.float64) - self.mu) / self.sd, self.lo, self.hi)
        return np.exp(np.clip(xs @ self.w + self.b, -20, 10))


def cobps_per_group(latents, heldout_counts: np.ndarray, train: np.ndarray, test: np.ndarray,
                    groups: np.ndarray, val: np.ndarray | None = None, l2: float | None = None,
                    max_train: int | None = None, min_train: int = 500, glms: dict | None = None) -> float:
    """Co-smoothing bits/spike with one GLM per group (e.g. brain state): each group's test bins are predicted by
    the GLM fit on that group's train bins (a group with fewer than ``min_train`` train bins uses the GLM fit on
    all train bins); bits/spike over all test bins against the same pooled null as :func:`cobps`. Each GLM's
    penalty is chosen on the group's ``val`` bins (l2 None; as :func:`cobps`). glms: the
    groups' GLMs from :func:`group_glms` when already fitted (they are then reused, e.g. by
    :func:`cobps_cross_state`).

    Why: a model whose read-out is state-specific (the teacher's ``loss.state_readout``) keeps the state's code
    out of its latents, so one GLM across states under-rates it; scoring every model (teacher and baselines)
    with per-state GLMs compares the information in the latents, not the form of the read-out."""
    glms = glms if glms is not None else group_glms(latents, heldout_counts, train, test, groups, val, l2,
                                                    max_train, min_train)
    return _score(latents, heldout_counts, [(rows, glm) for rows, glm, _ in glms.values()])


def group_glms(latents, heldout_counts: np.ndarray, train: np.ndarray, test: np.ndarray, groups: np.ndarray,
               val: np.ndarray | None = None, l2: float | None = None, max_train: int | None = None,
               min_train: int = 500, pool=None) -> dict:
    """{group: (its test rows, its GLM, whether the GLM was fit on the group's own train rows)} for every group
    with test rows (:func:`cobps_per_group`'s fits; with a ``max_train`` the groups share it). pool: a
    :func:`fit_pool` to fit the groups side by side (None: one after the other)."""
    groups = np.asarray(groups)
    te = np.flatnonzero(test)
    names = np.unique(groups[te])
    out = {}
    for g in names:
        own = (train & (groups == g)).sum() >= min_train
        fit = train & (groups == g) if own else train
        choose = None if val is None else (val & (groups == g) if own else val)
        args = (latents, heldout_counts, fit, l2, _share(max_train, len(names), min_train), choose)
        out[g] = (te[groups[te] == g], pool.submit(_fit_glm, *args) if pool else _fit_glm(*args), bool(own))
    return {g: (rows, glm.result() if pool else glm, own) for g, (rows, glm, own) in out.items()}


@contextmanager
def fit_pool(workers: int):
    """A pool of ``workers`` threads for independent GLM fits (:func:`group_glms`' ``pool``, or submit
    :func:`cobps` to it), or None when workers <= 1. While it is open, BLAS runs one thread per call: the fits run
    side by side instead of one at a time over all cores (their element-wise numpy work is single-threaded, so
    this uses the cores better), and their sums are the same whatever the number of workers.
    Memory: each running fit holds up to ``GLM_BYTES``; callers open a pool only for short sessions."""
    if workers <= 1:
        yield None
        return
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        pool = ThreadPoolExecutor(workers, thread_name_prefix="glm")
        try:
            yield pool
        finally:  # on an error or Ctrl-C, fits not yet started are dropped (a running fit ends on its own)
            pool.shutdown(wait=True, cancel_futures=True)


def _share(max_train: int | None, groups: int, min_train: int) -> int | None:
    """Fit rows of each of ``groups`` GLMs sharing a budget of ``max_train`` (None: no budget, all rows)."""
    return None if max_train is None else max(max_train // groups, min_train)


def cobps_cross_state(latents, heldout_counts: np.ndarray, state: np.ndarray, split: np.ndarray,
                      states: list[str] | None = None, l2: float | None = None, max_train: int | None = None,
                      min_train: int = 500, glms: dict | None = None) -> tuple[dict, dict]:
    """Co-smoothing bits/spike across states: the Poisson GLM of :func:`cobps` fit on state A's train rows and
    scored on state B's test rows, for every ordered pair of ``states`` (default: all non-empty ones).

    latents, heldout_counts: as :func:`cobps`; state: (n_bins,) str; split: (n_bins,) 'train'|'val'|'test'|''.
    One GLM per state, fit on that state's train rows (with a ``max_train`` the states share it, as
    :func:`cobps_per_group`'s groups do), its penalty chosen on that state's validation rows (l2 None, as
    :func:`cobps`); a state with no more train rows than latent dims gets no GLM, one with fewer than two test rows
    is not scored.

    Null (as :func:`cobps`): each held-out unit's mean count on the *scored* rows, i.e. state B's test rows, so
    A->B measures how well A's read-out predicts B's spikes beyond B's own mean rates (a rate shift between states
    that the latents do not carry counts against the latents).

    Returns ``(cross, within)``: cross = ``{"A->B": bits, ..., "mean": mean over ordered pairs}``; within =
    ``{"B": bits of B's GLM on B's test rows, ..., "mean": mean over the states with a cross pair}`` (the reference
    the cross numbers drop from). Both empty when fewer than two states can be paired.

    glms: {state: (test rows, GLM, fit on the state's own train rows)} already fitted (:func:`group_glms`, as
    :func:`cobps_per_group` fits them): a state's GLM fit on its own train rows is reused instead of fitting another
    (the fit dominates the cost: 220 smoothed-count features take tens of seconds)."""
    state = np.asarray(state).astype(str)
    split = np.asarray(split).astype(str)
    states = list(states or sorted(s for s in np.unique(state) if s))
    if len(states) < 2:
        return {}, {}
    cap = _share(max_train, len(states), min_train)
    given = {s: g[1] for s, g in (glms or {}).items() if g[2]}
    glms = {s: given[s] if s in given else _fit_glm(latents, heldout_counts, (state == s) & (split == "train"), l2,
                                                      cap, (state == s) & (split == "val"))
            for s in states if ((state == s) & (split == "train")).sum() > latents.shape[1]}
    tests = {s: np.flatnonzero((state == s) & (split == "test")) for s in states}
    cross: dict = {}
    for a in glms:
        for b in states:
            if a != b and len(tests[b]) > 1:
                cross[f"{a}->{b}"] = _score(latents, heldout_counts, [(tests[b], glms[a])])
    if not cross:
        return {}, {}
    paired = sorted({p.split("->")[1] for p in cross})
    within = {b: _score(latents, heldout_counts, [(tests[b], glms[b])]) for b in paired if b in glms}
    cross["mean"] = float(np.mean(list(cross.values())))
    if within:
        within["mean"] = float(np.mean(list(within.values())))
    return cross, within
