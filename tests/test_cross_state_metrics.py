"""Label-free cross-state metrics (issue 15): cobps_cross_state and forecast_r2_cross_state against naive
one-piece references, and their behaviour when the population code shifts (or not) between two states."""

import numpy as np
import pytest

from neurojepa.metrics.cobps import (bits_per_spike, cobps, cobps_cross_state, cobps_per_group, fit_poisson_glm,
                                    group_glms)
from neurojepa.metrics.latent import forecast_r2, forecast_r2_cross_state, ridge_loo


def _two_states(gain_b: float = 1.0, n: int = 6000, d: int = 3, u: int = 12, seed: int = 0):
    """A smooth stationary latent read out by Poisson units; state B (second half) scales the loadings by gain_b and
    shifts them (a remixed code) when gain_b != 1. Blocks of 500 bins cycle train / test / train / val."""
    rng = np.random.default_rng(seed)
    z = np.apply_along_axis(lambda c: np.convolve(c, np.ones(20) / 20, "same"), 0, rng.normal(size=(n, d)))
    z /= z.std(0)  # stationary: both states visit the same range
    w = rng.normal(scale=0.6, size=(d, u))
    state = np.where(np.arange(n) < n // 2, "A", "B")
    wb = w * gain_b + (0 if gain_b == 1 else rng.normal(scale=0.6, size=(d, u)))
    eta = np.where((state == "A")[:, None], z @ w, z @ wb) - 1.0
    y = rng.poisson(np.exp(eta)).astype(np.uint8)
    split = np.array(["train", "test", "train", "val"])[(np.arange(n) // 500) % 4]
    return z.astype(np.float32), y, state, split


def _naive_cobps(z, y, fit, score, l2=1e-3):
    """One piece, from the definition: standardise with the fit rows, fit the GLM, bits/spike on the score rows
    (features clipped to their range on the fit rows) against each unit's mean count on the score rows."""
    x = z[fit].astype(np.float64)
    mu, sd = x.mean(0), x.std(0) + 1e-8
    xs = (x - mu) / sd
    w, b = fit_poisson_glm(xs, y[fit], l2=l2)
    rates = np.exp(np.clip(np.clip((z[score] - mu) / sd, xs.min(0), xs.max(0)) @ w + b, -20, 10))
    return bits_per_spike(rates, y[score])


def test_cobps_cross_state_equals_explicit_masks():
    z, y, state, split = _two_states(gain_b=2.0)
    cross, within = cobps_cross_state(z, y, state, split, l2=1e-3)
    assert set(cross) == {"A->B", "B->A", "mean"} and set(within) == {"A", "B", "mean"}
    for a, b in (("A", "B"), ("B", "A")):
        fit, score = (state == a) & (split == "train"), (state == b) & (split == "test")
        ref = _naive_cobps(z, y, fit, score)
        assert cross[f"{a}->{b}"] == pytest.approx(ref, rel=1e-6, abs=1e-9)
        assert cross[f"{a}->{b}"] == pytest.approx(cobps(z, y, fit, score, l2=1e-3), rel=1e-9)
        own = (state == b) & (split == "train")
        assert within[b] == pytest.approx(_naive_cobps(z, y, own, score), rel=1e-6, abs=1e-9)
    assert cross["mean"] == pytest.approx((cross["A->B"] + cross["B->A"]) / 2)
    # by default each state's GLM takes its penalties on that state's own validation rows
    chosen, _ = cobps_cross_state(z, y, state, split)
    for a, b in (("A", "B"), ("B", "A")):
        fit, score, val = ((state == a) & (split == s) for s in ("train", "test", "val"))
        score = (state == b) & (split == "test")
        assert chosen[f"{a}->{b}"] == pytest.approx(cobps(z, y, fit, score, val), rel=1e-9)
    # the per-state GLMs cobps_per_group fits (same rows and budget for two states) are reused as they are
    val = split == "val"
    glms = group_glms(z, y, split == "train", split == "test", state, val)
    assert cobps_per_group(z, y, split == "train", split == "test", state, glms=glms) == \
        cobps_per_group(z, y, split == "train", split == "test", state, val)
    assert cobps_cross_state(z, y, state, split, glms=glms) == (chosen, cobps_cross_state(z, y, state, split)[1])


def test_cobps_cross_state_drops_when_the_code_shifts():
    z, y, state, split = _two_states(gain_b=2.0)
    cross, within = cobps_cross_state(z, y, state, split)
    assert within["B"] > 0.1 and within["A"] > 0.1
    assert cross["A->B"] < within["B"] - 0.1 and cross["B->A"] < within["A"] - 0.1
    assert cross["A->B"] != pytest.approx(cross["B->A"], abs=1e-3)  # ordered pairs differ


def test_cobps_cross_state_equals_within_for_a_shared_code():
    z, y, state, split = _two_states(gain_b=1.0)
    cross, within = cobps_cross_state(z, y, state, split)
    assert within["B"] > 0.1
    assert cross["A->B"] == pytest.approx(within["B"], abs=0.03)
    assert cross["B->A"] == pytest.approx(within["A"], abs=0.03)


def test_cobps_cross_state_needs_two_states():
    z, y, state, split = _two_states()
    assert cobps_cross_state(z, y, np.full(len(z), "A"), split) == ({}, {})
    assert cobps_cross_state(z, y, state, split, states=["A"]) == ({}, {})


def _ar_states(shift: bool, n: int = 8000, d: int = 3, seed: int = 1):
    """Linear dynamics z_{t+1} = M z_t + noise; state B (second half) has another M when ``shift``."""
    rng = np.random.default_rng(seed)
    def rot(a):
        c, s = np.cos(a), np.sin(a)
        return 0.97 * np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    ma, mb = rot(0.2), rot(-0.6) if shift else rot(0.2)
    z = np.zeros((n, d))
    for t in range(1, n):
        z[t] = (ma if t < n // 2 else mb) @ z[t - 1] + rng.normal(scale=0.3, size=d)
    state = np.where(np.arange(n) < n // 2, "A", "B")
    split = np.where((np.arange(n) // 400) % 2 == 0, "train", "test")
    return z.astype(np.float32), state, split


def _origins(split, state, k):
    """Rows t whose next k rows lie in the same split run and state."""
    key = np.char.add(split.astype(str), state.astype(str))
    same = np.ones(len(key), bool)
    for j in range(1, k + 1):
        same[:-j] &= key[j:] == key[:-j]
    same[-k:] = False
    return same


def test_forecast_r2_cross_state_equals_naive_ridge():
    k = 3
    z, state, split = _ar_states(shift=True)
    origins = _origins(split, state, k)
    cross, within = forecast_r2_cross_state(z, k, origins, state, split)
    fut = lambda r: np.stack([z[r + j] for j in range(1, k + 1)], 1).reshape(len(r), -1).astype(np.float64)
    for a, b in (("A", "B"), ("B", "A")):
        fit = np.flatnonzero(origins & (state == a) & (split == "train"))
        score = np.flatnonzero(origins & (state == b) & (split == "test"))
        x = z[fit].astype(np.float64)
        mu, sd = x.mean(0), x.std(0) + 1e-8
        coef, icpt = ridge_loo((x - mu) / sd, fut(fit), (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0))
        ref = forecast_r2((z[score] - mu) / sd @ coef + icpt, fut(score))
        assert cross[f"{a}->{b}"] == pytest.approx(ref, rel=1e-6)
    assert within["A"] > 0.5 and within["B"] > 0.5
    assert cross["A->B"] < within["B"] - 0.05 and cross["B->A"] < within["A"] - 0.05


def test_forecast_r2_cross_state_equals_within_for_shared_dynamics():
    z, state, split = _ar_states(shift=False)
    cross, within = forecast_r2_cross_state(z, 3, _origins(split, state, 3), state, split)
    assert cross["A->B"] == pytest.approx(within["B"], abs=0.02)
    assert cross["B->A"] == pytest.approx(within["A"], abs=0.02)


def test_group_glms_side_by_side_equal_one_after_the_other():
    from threadpoolctl import threadpool_limits

    from neurojepa.metrics.cobps import fit_pool

    z, y, state, split = _two_states(gain_b=2.0)
    args = (z, y, split == "train", split == "test", state, split == "val")
    with threadpool_limits(1):  # the pool's BLAS setting, so that the sums are the same
        serial = group_glms(*args)
    with fit_pool(2) as pool:
        assert pool is not None
        pooled = pool.submit(cobps, z, y, split == "train", split == "test", split == "val")
        side = group_glms(*args, pool=pool)
        assert pooled.result() == cobps(z, y, split == "train", split == "test", split == "val")
    assert set(side) == set(serial) == {"A", "B"}
    for g in serial:
        assert np.array_equal(side[g][0], serial[g][0]) and side[g][2] == serial[g][2]
        for a, b in zip(side[g][1], serial[g][1]):
            np.testing.assert_array_equal(a, b)
    with fit_pool(1) as none:
        assert none is None
