"""Latent metrics, co-smoothing and decoding against known answers and independent references."""

import numpy as np
import pytest
from scipy.stats import poisson

from neurojepa.metrics.cobps import bits_per_spike, cobps, cobps_per_group, poisson_nll
from neurojepa.metrics.decoding import decode, flash_features, flash_onsets
from neurojepa.metrics.latent import cross_state_r2, forecast_r2, per_dim_std, rankme, ridge_r2

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
