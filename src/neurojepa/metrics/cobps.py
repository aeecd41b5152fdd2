"""Co-smoothing bits per spike (Neural Latents Benchmark), with a Poisson GLM read-out (pure array functions).

Protocol (NLB, Pei et al. 2021): some units are held out of the model's input; a Poisson GLM maps the model's
latents to those units' counts, fit on train bins, scored on test bins::

    NLL(r, y) = sum(r - y log r + lgamma(y + 1))
    bits/spike = (NLL_null - NLL_model) / (total held-out spikes * ln 2)

where the null model predicts each held-out unit's mean count on the evaluated bins. 0 means no better than a
constant rate; higher is better.

The GLM is fit for all held-out units at once by L-BFGS on the summed (separable) objective, with a small L2
penalty; scikit-learn's PoissonRegressor would fit one unit at a time, tens of times slower here.
"""

from __future__ import annotations

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


def fit_poisson_glm(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Fit log rate = x @ W + b for every column of y at once.

    x: (n, D) features, assumed standardised; y: (n, U) counts per bin. ``l2`` is per-sample (the penalty is
    n * l2 * |W|^2 / 2). Returns W: (D, U) and b: (U,).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, d = x.shape
    u = y.shape[1]
    b0 = np.log(y.mean(0) + 1e-3)

    def objective(theta):
        # in place, few temporaries: this runs ~100 times per fit on (n, U) arrays
        w = theta[: d * u].reshape(d, u)
        b = theta[d * u:]
        eta = x @ w
        eta += b
        np.clip(eta, -20, 10, out=eta)  # keep exp finite while the line search explores
        f = -float(np.vdot(y, eta))
        r = np.exp(eta, out=eta)
        f = (f + float(r.sum())) / n + 0.5 * l2 * float(np.vdot(w, w))
        r -= y
        r /= n  # the gradient of the mean NLL with respect to eta
        return f, np.concatenate([(x.T @ r + l2 * w).ravel(), r.sum(0)])

    theta0 = np.concatenate([np.zeros(d * u), b0])
    res = minimize(objective, theta0, jac=True, method="L-BFGS-B", options={"maxiter": max_iter})
    return res.x[: d * u].reshape(d, u), res.x[d * u:]


def cobps(latents, heldout_counts: np.ndarray, train: np.ndarray, test: np.ndarray,
          l2: float = 1e-3, max_train: int = 10_000) -> float:
    """Co-smoothing bits/spike: Poisson GLM latents -> held-out units' counts, fit on train rows, scored on test.

    latents: (n_bins, D) (from a model that never saw the held-out units; an array or a row source, see
    rows.py); heldout_counts: (n_bins, U); train, test: boolean masks over bins. At most ``max_train`` evenly
    spaced train bins are used for the fit (enough for D + 1 parameters per unit, and it bounds the time).
    Test bins are scored block by block (memory: one block, whatever the session's length).
    """
    te = np.flatnonzero(test)
    glm = _fit_glm(latents, heldout_counts, train, l2, max_train)
    return _score(latents, heldout_counts, [(te, glm)])


def _fit_glm(x, y: np.ndarray, train: np.ndarray, l2: float, max_train: int):
    """(mu, sd, W, b) of a Poisson GLM x -> y fit on (at most max_train evenly spaced) ``train`` bins."""
    tr = np.flatnonzero(train)
    if len(tr) > max_train:
        tr = tr[np.linspace(0, len(tr) - 1, max_train).astype(int)]
    xtr = np.asarray(take_rows(x, tr), dtype=np.float64)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-8
    w, b = fit_poisson_glm((xtr - mu) / sd, y[tr], l2=l2)
    return mu, sd, w, b


def _score(x, y: np.ndarray, parts: list) -> float:
    """Bits/spike on the union of test rows ``parts`` = [(rows, glm), ...] (each part's rows predicted by its
    GLM) against the null of each unit's mean count on all those rows; read block by block."""
    rows = np.concatenate([r for r, _ in parts])
    order = np.argsort(rows, kind="stable")
    width = x.shape[1] + 4 * y.shape[1]  # float64 values per row: features, rates and the NLL's temporaries
    if len(rows) <= block_rows(width):  # one block: rates of every test row, then bits_per_spike
        rates = np.empty((len(rows), y.shape[1]))
        at = 0
        for r, (mu, sd, w, b) in parts:
            rates[at:at + len(r)] = _rates(take_rows(x, r), mu, sd, w, b)
            at += len(r)
        return bits_per_spike(rates[order], y[rows[order]])
    total = float(y[rows].sum(dtype=np.float64))
    if total == 0:
        return float("nan")
    null = y[rows].mean(0, dtype=np.float64)
    gain = 0.0  # NLL_null - NLL_model, summed over blocks (the lgamma terms cancel)
    for r, (mu, sd, w, b) in parts:
        for pos, blk in row_blocks(x, r, width=width):
            yb = np.asarray(y[r[pos]], dtype=np.float64)
            rates = np.clip(_rates(blk, mu, sd, w, b), 1e-9, None)
            nr = np.clip(null, 1e-9, None)
            gain += float((nr - yb * np.log(nr)).sum() - (rates - yb * np.log(rates)).sum())
    return gain / (total * np.log(2))


def _rates(x: np.ndarray, mu, sd, w, b) -> np.ndarray:
    return np.exp(np.clip((np.asarray(x, dtype=np.float64) - mu) / sd @ w + b, -20, 10))


def cobps_per_group(latents, heldout_counts: np.ndarray, train: np.ndarray, test: np.ndarray,
                    groups: np.ndarray, l2: float = 1e-3, max_train: int = 10_000, min_train: int = 500,
                    glms: dict | None = None) -> float:
    """Co-smoothing bits/spike with one GLM per group (e.g. brain state): each group's test bins are predicted by
    the GLM fit on that group's train bins (a group with fewer than ``min_train`` train bins uses the GLM fit on
    all train bins); bits/spike over all test bins against the same pooled null as :func:`cobps`. glms: the
    groups' GLMs from :func:`group_glms` when already fitted (they are then reused, e.g. by
    :func:`cobps_cross_state`).

    Why: a model whose read-out is state-specific (the teacher's ``loss.state_readout``) keeps the state's code
    out of its latents, so one GLM across states under-rates it; scoring every model (teacher and baselines)
    with per-state GLMs compares the information in the latents, not the form of the read-out."""
    glms = glms if glms is not None else group_glms(latents, heldout_counts, train, test, groups, l2, max_train,
                                                    min_train)
    return _score(latents, heldout_counts, [(rows, glm) for rows, glm, _ in glms.values()])


def group_glms(latents, heldout_counts: np.ndarray, train: np.ndarray, test: np.ndarray, groups: np.ndarray,
               l2: float = 1e-3, max_train: int = 10_000, min_train: int = 500) -> dict:
    """{group: (its test rows, its GLM, whether the GLM was fit on the group's own train rows)} for every group
    with test rows (:func:`cobps_per_group`'s fits; the groups share the fit budget of one joint GLM)."""
    groups = np.asarray(groups)
    te = np.flatnonzero(test)
    names = np.unique(groups[te])
    out = {}
    for g in names:
        own = (train & (groups == g)).sum() >= min_train
        fit = train & (groups == g) if own else train
        out[g] = (te[groups[te] == g], _fit_glm(latents, heldout_counts, fit, l2,
                                                max(max_train // len(names), min_train)), bool(own))
    return out


def cobps_cross_state(latents, heldout_counts: np.ndarray, state: np.ndarray, split: np.ndarray,
                      states: list[str] | None = None, l2: float = 1e-3, max_train: int = 10_000,
                      min_train: int = 500, glms: dict | None = None) -> tuple[dict, dict]:
    """Co-smoothing bits/spike across states: the Poisson GLM of :func:`cobps` fit on state A's train rows and
    scored on state B's test rows, for every ordered pair of ``states`` (default: all non-empty ones).

    latents, heldout_counts: as :func:`cobps`; state: (n_bins,) str; split: (n_bins,) 'train'|'val'|'test'|''.
    One GLM per state, fit on at most ``max(max_train // len(states), min_train)`` evenly spaced train rows of that
    state (the states share the fit budget, as :func:`cobps_per_group`'s groups do); a state with no more train rows
    than latent dims gets no GLM, one with fewer than two test rows is not scored.

    Null (as :func:`cobps`): each held-out unit's mean count on the *scored* rows, i.e. state B's test rows, so
    A->B measures how well A's read-out predicts B's spikes beyond B's own mean rates (a rate shift between states
    that the latents do not carry counts against the latents).

    Returns ``(cross, within)``: cross = ``{"A->B": bits, ..., "mean": mean over ordered pairs}``; within =
    ``{"B": bits of B's GLM on B's test rows, ..., "mean": mean over the states with a cross pair}`` (the reference
    the cross numbers drop from). Both empty when fewer than two states can be paired.

    glms: {state: (test rows, GLM, fit on the state's own train rows)} already fitted (:func:`group_glms`, as
    :func:`cobps_per_group` fits them): a state's GLM fit on its own train rows is reused instead of fitting another
    (the fit dominates the cost: 320 smoothed-count features take seconds). Its fit budget is then its share among
    all the groups with test rows (on VBN three states, gray included, so 3,333 rows instead of 5,000)."""
    state = np.asarray(state).astype(str)
    split = np.asarray(split).astype(str)
    states = list(states or sorted(s for s in np.unique(state) if s))
    if len(states) < 2:
        return {}, {}
    cap = max(max_train // len(states), min_train)
    given = {s: g[1] for s, g in (glms or {}).items() if g[2]}
    glms = {s: given[s] if s in given else _fit_glm(latents, heldout_counts, (state == s) & (split == "train"), l2,
                                                      cap)
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
