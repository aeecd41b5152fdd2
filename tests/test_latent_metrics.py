"""Latent metrics, co-smoothing and decoding against known answers and independent references."""

import numpy as np
import pytest
from scipy.stats import poisson

from neurojepa.metrics.cobps import L2_GRID, _fit_glm, bits_per_spike, cobps, cobps_per_group, poisson_nll
from neurojepa.metrics.decoding import decode, flash_features, flash_onsets
from neurojepa.metrics.latent import (count_forecast_r2, cross_state_r2, forecast_r2, linear_count_forecast_r2,
                                      per_dim_std, predicted_count_forecast_r2, rankme, ridge_r2)

rng = np.random.default_rng(0)


def test_rankme_known_answers():
    assert rankme(rng.standard_normal((5000, 16))) == pytest.approx(16, rel=0.05)
    assert rankme(rng.standard_normal((5000, 1)) @ rng.standard_normal((1, 16))) == pytest.approx(1.0, abs=0.01)
    two = np.zeros((1000, 8))
    two[:, :2] = rng.standard_normal((1000, 2))
    assert rankme(two) == pytest.approx(2.0, rel=0.05)
    assert np.allclose(per_dim_std(np.c_[np.zeros(100), 3 * np.ones(100)]), 0.0)


def test_ridge_r2_recovers_linear_map_and_rejects_noise():
    n = 4000
    y = rng.standard_normal((n, 3))
    x = y @ rng.standard_normal((3, 10)) + 0.01 * rng.standard_normal((n, 10))
    train = np.arange(n) < 3000
    assert ridge_r2(x, y, train, ~train) > 0.99
    assert ridge_r2(rng.standard_normal((n, 10)), y, train, ~train) < 0.02
    state = np.where(np.arange(n) % 2 == 0, "a", "b")
    split = np.where(train, "train", "test")
    cross = cross_state_r2(x, y, state, split)
    assert set(cross) == {"a->b", "b->a", "mean"} and cross["mean"] > 0.99


def test_forecast_r2_perfect_and_mean():
    t = rng.standard_normal((100, 5, 4))
    assert forecast_r2(t, t) == pytest.approx(1.0)
    assert forecast_r2(np.broadcast_to(t.mean(0), t.shape), t) == pytest.approx(0.0, abs=1e-12)


def test_poisson_nll_matches_scipy_and_bps_of_truth():
    rates = rng.uniform(0.05, 2.0, (3000, 5))
    y = rng.poisson(rates)
    assert poisson_nll(rates, y) == pytest.approx(-poisson.logpmf(y, rates).sum(), rel=1e-10)
    assert bits_per_spike(np.broadcast_to(y.mean(0), y.shape), y) == pytest.approx(0.0, abs=1e-12)
    assert bits_per_spike(rates, y) > 0.1
    assert bits_per_spike(rates[::-1], y) < 0  # wrong rates are worse than the null


def test_cobps_glm_recovers_log_linear_rates():
    n = 20000
    z = rng.standard_normal((n, 3))
    w = rng.standard_normal((3, 6)) * 0.6
    rates = np.exp(np.log(0.2) + z @ w)
    y = rng.poisson(rates)
    train = np.arange(n) < 15000
    fitted = cobps(z, y, train, ~train)
    truth = bits_per_spike(rates[~train], y[~train])
    assert fitted == pytest.approx(truth, abs=0.01)
    assert abs(cobps(rng.standard_normal((n, 3)), y, train, ~train)) < 0.01


def test_cobps_per_group_fits_a_read_out_per_state():
    """Latents whose read-out flips sign between two states: one GLM across states cannot predict the held-out
    units, one per state recovers the true rates' score; with a single group both definitions agree."""
    n = 20000
    z = rng.standard_normal((n, 3))
    state = np.where(np.arange(n) % 4000 < 2000, "active", "passive")  # alternating blocks of both states
    w = rng.standard_normal((3, 6)) * 0.6
    rates = np.exp(np.log(0.2) + np.where((state == "active")[:, None], z @ w, -(z @ w)))
    y = rng.poisson(rates)
    train = np.arange(n) % 2000 < 1500
    truth = bits_per_spike(rates[~train], y[~train])
    assert cobps_per_group(z, y, train, ~train, state) == pytest.approx(truth, abs=0.01)
    assert cobps(z, y, train, ~train) < truth - 0.1
    one = np.full(n, "all")
    assert cobps_per_group(z, y, train, ~train, one) == pytest.approx(cobps(z, y, train, ~train), abs=1e-9)


def test_decode_separable_and_chance():
    n = 400
    labels = np.repeat(["a", "b", "c", "d"], n // 4)
    centres = {k: rng.standard_normal(6) * 5 for k in "abcd"}
    x = np.stack([centres[k] for k in labels]) + rng.standard_normal((n, 6))
    train = rng.random(n) < 0.7
    assert decode(x, labels, train, ~train)["balanced_accuracy"] > 0.95
    res = decode(rng.standard_normal((n, 6)), labels, train, ~train)
    _, test_counts = np.unique(labels[~train], return_counts=True)
    assert abs(res["balanced_accuracy"] - 0.25) < 0.12
    assert res["chance"] == pytest.approx(1 / 4)  # the chance level of the balanced accuracy it reports
    assert res["chance_accuracy"] == pytest.approx(test_counts.max() / test_counts.sum())
    assert np.isnan(decode(x, np.zeros(n), train, ~train)["accuracy"])  # one class: nothing to decode


def test_flash_onsets_and_features():
    tsf = np.full(20, np.nan)
    tsf[2:6] = np.arange(4) * 0.01
    tsf[6:9] = np.arange(3) * 0.01  # back-to-back flash
    assert flash_onsets(tsf, 0.01).tolist() == [2, 6]
    z = np.arange(20, dtype=float)[:, None]
    assert flash_features(z, np.array([2, 18]), 3)[:, 0].tolist() == [3.0, 18.5]


@pytest.mark.parametrize("n, p, k, noise", [(500, 8, 3, 0.1), (2000, 40, 5, 3.0), (60, 30, 2, 10.0)])
def test_ridge_loo_is_sklearns_ridgecv(n, p, k, noise):
    """The hand-written exact leave-one-out ridge against scikit-learn's RidgeCV (the independent reference)."""
    from sklearn.linear_model import RidgeCV

    from neurojepa.metrics.latent import ridge_loo

    gen = np.random.default_rng(n + p)
    x = gen.standard_normal((n, p)) * gen.uniform(0.1, 3, p) + gen.standard_normal(p)
    y = x @ gen.standard_normal((p, k)) + noise * gen.standard_normal((n, k)) + 5.0
    alphas = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3)
    ref = RidgeCV(alphas=alphas).fit(x, y)
    coef, intercept = ridge_loo(x, y, alphas)
    np.testing.assert_allclose(coef, ref.coef_.T, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(intercept, ref.intercept_, rtol=1e-7, atol=1e-9)


def _sklearn_cobps(z, y, train, val, test, grid=L2_GRID):
    """Independent reference of the validation-chosen penalty: scikit-learn's PoissonRegressor (whose ``alpha`` is
    the same per-sample L2 penalty on standardised features) fit one unit and one penalty at a time; the penalty
    with the lowest Poisson NLL of all units on the val rows is kept; bits/spike on the test rows (features clipped
    to their range on the train rows, as cobps does)."""
    from sklearn.linear_model import PoissonRegressor
    mu, sd = z[train].mean(0), z[train].std(0) + 1e-8
    x = (z - mu) / sd
    x = np.clip(x, x[train].min(0), x[train].max(0))
    fits = {a: [PoissonRegressor(alpha=a, tol=1e-10, max_iter=1000).fit(x[train], y[train, u])
                for u in range(y.shape[1])] for a in grid}
    nll = {a: sum(poisson_nll(f.predict(x[val]), y[val, u]) for u, f in enumerate(fs)) for a, fs in fits.items()}
    best = fits[min(nll, key=nll.get)]
    return bits_per_spike(np.stack([f.predict(x[test]) for f in best], axis=1), y[test])


def test_cobps_chooses_the_penalty_on_validation_bins_as_sklearn_does():
    n, d = 4000, 12
    z = rng.standard_normal((n, d))
    w = np.zeros((d, 5))
    w[:2] = rng.standard_normal((2, 5)) * 0.5  # two informative features, ten of noise
    y = rng.poisson(np.exp(np.log(0.1) + z @ w))
    part = (np.arange(n) // 250) % 4  # blocks: train, train, val, test
    train, val, test = part < 2, part == 2, part == 3
    ours = cobps(z, y, train, test, val)
    assert ours == pytest.approx(_sklearn_cobps(z, y, train, val, test), abs=2e-4)
    assert ours > 0.05


def test_cobps_read_out_does_not_extrapolate_beyond_its_fit_range():
    """A feature that is ~0 on the fit rows and huge on some test rows (a drifting real unit, through factor
    analysis) would make the exponential link predict thousands of spikes; clipped to the fit range it cannot."""
    n = 8000
    z = rng.standard_normal((n, 3))
    y = rng.poisson(np.exp(np.log(0.2) + 0.5 * z[:, :1]))
    part = (np.arange(n) // 250) % 4
    train, val, test = part < 2, part == 2, part == 3
    drift = z.copy()
    drift[np.flatnonzero(test)[:200], 0] = 1e3
    glm = _fit_glm(drift, y, train, None, None, val)
    te = np.flatnonzero(test)
    assert cobps(drift, y, train, test, val) == pytest.approx(bits_per_spike(glm.rates(drift[te]), y[te]))
    assert bits_per_spike(glm.rates(drift[te]), y[te]) > -0.5
    unclipped = glm._replace(lo=np.full(3, -np.inf), hi=np.full(3, np.inf))
    assert bits_per_spike(unclipped.rates(drift[te]), y[te]) < -100


def test_cobps_of_a_pure_noise_latent_is_zero_where_a_fixed_small_penalty_overfits():
    """Issue 16: 60 features of pure noise, 4,000 train bins. The penalty chosen on the
    validation bins scores within 0.01 of zero; the old fixed per-sample penalty (1e-3) overfits below it. (Sparser
    data score a constant rate itself below zero: the null is the test rows' own mean, as in NLB.)"""
    n, local = 8000, np.random.default_rng(1)
    y = local.poisson(0.2, (n, 8))
    z = local.standard_normal((n, 60))
    part = (np.arange(n) // 250) % 4
    train, val, test = part < 2, part == 2, part == 3
    assert abs(cobps(z, y, train, test, val)) < 0.01
    assert abs(cobps(z, y, train, test)) < 0.01  # no val rows: the last fifth of the train rows chooses
    assert cobps(z, y, train, test, l2=1e-3) < -0.01


def _ar_counts(n=12000, d=2, u=20, seed=3):
    """A slow AR(1) latent driving Poisson counts: the future is partly foreseeable from the present."""
    r = np.random.default_rng(seed)
    z = np.zeros((n, d))
    for t in range(1, n):
        z[t] = 0.97 * z[t - 1] + 0.25 * r.standard_normal(d)
    y = r.poisson(np.exp(np.log(0.3) + z @ r.normal(scale=0.6, size=(d, u)))).astype(np.uint8)
    return z, y


def test_count_forecast_r2_is_zero_for_the_mean_rate_forecast_and_one_for_the_truth():
    y = rng.poisson(0.5, (500, 6)).astype(float)
    mean = y.mean(0)
    assert count_forecast_r2([(np.broadcast_to(mean, y.shape), y)], mean) == pytest.approx(0.0)
    assert count_forecast_r2([(y, y)], mean) == pytest.approx(1.0)


def test_count_forecasts_beat_the_mean_from_a_latent_and_not_from_noise():
    z, y = _ar_counts()
    k = 5
    origins = np.arange(len(z) - k)
    fit, score = origins[origins < 8000], origins[origins >= 8000 + k]
    informed = linear_count_forecast_r2(z, y, k, fit, score)
    assert informed > 0.02
    noise = linear_count_forecast_r2(rng.standard_normal((len(z), 2)), y, k, fit, score)
    assert abs(noise) < 0.01
    # a model's own forecast of its latent, read out by a map fit on its forecasts: the true AR forecast scores about
    # what the best linear forecast read-out scores; a predictor that outputs noise scores the mean rates' 0
    ar = lambda zb: np.stack([0.97 ** (j + 1) * zb for j in range(k)], axis=1)  # noqa: E731
    own = predicted_count_forecast_r2(z, y, k, ar, fit, score)
    assert own == pytest.approx(informed, abs=0.02) and own > 0.02
    noise_rng = np.random.default_rng(5)
    babble = lambda zb: noise_rng.standard_normal((len(zb), k, 2))  # noqa: E731
    assert abs(predicted_count_forecast_r2(z, y, k, babble, fit, score)) < 0.01
