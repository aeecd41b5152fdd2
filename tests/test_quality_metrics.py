"""Allen/Hill quality metrics against hand-computed answers and a known property of Poisson trains."""

import numpy as np
import pytest

from neurojepa.data.quality_metrics import firing_rate, isi_violations, presence_ratio


def test_isi_violations_hill_formula_known_answer():
    # ISIs: 1.0 ms (violation), 99 ms, 100 ms, 0.5 ms (violation), 99.5 ms -> V = 2, N = 6, rate = 6 Hz over 1 s
    t = np.array([0.0, 0.001, 0.1, 0.2, 0.2005, 0.3])
    ratio, n = isi_violations(t, 0.0, 1.0, isi_threshold=0.0015, min_isi=0.0)
    assert n == 2
    assert ratio == pytest.approx(2 / (2 * 6 * 0.0015) / 6.0)  # 18.518...


def test_isi_violations_drops_duplicates_below_min_isi():
    # 0.05 ms after a spike is a double detection: removed before counting (N = 6 again, same answer as above)
    t = np.array([0.0, 0.001, 0.1, 0.2, 0.2005, 0.3, 0.30005])
    ratio, n = isi_violations(t, 0.0, 1.0, isi_threshold=0.0015, min_isi=0.0001)
    assert n == 2
    assert ratio == pytest.approx(2 / (2 * 6 * (0.0015 - 0.0001)) / 6.0)


def test_isi_violations_of_poisson_train_is_one_half():
    # without a refractory period, P(ISI < tau) ~ r tau, so Hill's ratio ~ N r tau / (2 N tau) / r = 1/2
    rng = np.random.default_rng(1)
    t = np.cumsum(rng.exponential(1 / 20.0, 200_000))
    ratio, _ = isi_violations(t, 0.0, t[-1])
    assert ratio == pytest.approx(0.5, abs=0.05)


def test_isi_violations_zero_for_refractory_train_and_tiny_trains():
    t = np.arange(0, 10, 0.002)  # every ISI is 2 ms > 1.5 ms
    assert isi_violations(t, 0.0, 10.0) == (0.0, 0)
    assert isi_violations(np.array([1.0]), 0.0, 10.0) == (0.0, 0)


def test_presence_ratio_counts_occupied_bins_over_num_bins():
    # 100 edges over [0, 99] -> 99 one-second bins; spikes in bins 0, 10, ..., 90 -> 10 bins / 100
    t = np.arange(0, 99, 10) + 0.5
    assert presence_ratio(t, 0.0, 99.0) == pytest.approx(0.10)
    assert presence_ratio(np.arange(0, 99) + 0.5, 0.0, 99.0) == pytest.approx(0.99)  # Allen's maximum


def test_firing_rate():
    assert firing_rate(np.arange(50) * 0.1, 0.0, 10.0) == pytest.approx(5.0)
