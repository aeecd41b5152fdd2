"""Per-state firing statistics of the student (issue 17, item 2) against naive references and analytic answers:
Poisson trains (CV of ISI 1, Fano 1), gamma-order-2 renewal trains (CV 1/sqrt(2), long-window Fano CV^2 = 1/2),
per-state rates, Fano factor written as a loop, and the E/I current correlation of a known linear mixture."""

import numpy as np
import pytest

from neurojepa.metrics import spiking
from neurojepa.student.config import StudentConfig
from neurojepa.student.evaluate import _current_chunks, firing_by_state, firing_summary


def _gamma_train(rng, n_trials, steps, n, rate_per_step, order):
    """Renewal trains with gamma(order) ISIs of mean 1 / rate_per_step steps (order 1: Poisson)."""
    out = np.zeros((n_trials, steps, n), np.uint8)
    for tr in range(n_trials):
        for u in range(n):
            isi = rng.gamma(order, 1.0 / (order * rate_per_step), size=int(3 * steps * rate_per_step) + 50)
            t = np.cumsum(isi).astype(int)
            t = np.unique(t[t < steps])
            out[tr, t, u] = 1
    return out


def test_gamma_renewal_trains_give_the_analytic_cv_and_fano():
    rng = np.random.default_rng(1)
    g2 = _gamma_train(rng, 4, 50_000, 4, 0.02, order=2)  # 20 Hz at 1 ms, ISIs >> 1 step (little rounding)
    np.testing.assert_allclose(spiking.cv_isi(g2), 1 / np.sqrt(2), atol=0.05)
    np.testing.assert_allclose(spiking.fano_factor(g2, 1000), 0.5, atol=0.12)  # renewal: Fano -> CV^2 (1 s windows)
    p = _gamma_train(rng, 4, 50_000, 4, 0.02, order=1)
    np.testing.assert_allclose(spiking.cv_isi(p), 1.0, atol=0.06)
    np.testing.assert_allclose(spiking.fano_factor(p, 1000), 1.0, atol=0.2)


def test_short_isi_fraction_against_a_loop_and_the_poisson_answer():
    """The pooled fraction of ISIs <= k steps, against an explicit loop over neurons and trials (intervals never
    cross a trial), and on Poisson trains the analytic 1 - (1 - p)^k."""
    rng = np.random.default_rng(3)
    sp = (rng.random((3, 400, 5)) < 0.08).astype(np.uint8)
    sp[1, :, 2] = 0  # a silent neuron in one trial
    isis = [d for b in range(3) for u in range(5) for d in np.diff(np.flatnonzero(sp[b, :, u]))]
    for k in (1, 3, 5):
        assert spiking.short_isi_fraction(sp, k) == pytest.approx(np.mean(np.array(isis) <= k))
    p = (rng.random((4, 50_000, 4)) < 0.01).astype(np.uint8)  # Poisson (Bernoulli) at 10 Hz with 1 ms steps
    assert spiking.short_isi_fraction(p, 5) == pytest.approx(1 - 0.99**5, abs=0.004)
    assert np.isnan(spiking.short_isi_fraction(np.zeros((2, 10, 3), np.uint8), 5))
    doublets = np.zeros((1, 1000, 1), np.uint8)
    doublets[0, ::100, 0] = doublets[0, 3::100, 0] = 1  # every spike followed by another 3 steps later
    assert spiking.short_isi_fraction(doublets, 5) == pytest.approx(10 / 19)


def _naive_fano(sp, w):
    """Fano factor per neuron by explicit loops over chunks and windows."""
    out = []
    for u in range(sp.shape[2]):
        c = [sp[b, k * w:(k + 1) * w, u].sum() for b in range(sp.shape[0]) for k in range(sp.shape[1] // w)]
        out.append(np.var(c, ddof=1) / np.mean(c) if np.mean(c) > 0 else np.nan)
    return np.array(out)


def test_firing_by_state_reports_every_statistic_per_state_against_naive_references():
    rng = np.random.default_rng(0)
    cfg = StudentConfig(dt=0.001, rate_low_hz=5.0, rate_high_hz=20.0)
    n_exc, n = 6, 8  # 6 E, 2 I neurons
    p_a = np.array([0.010] * 6 + [0.015] * 2)  # state a: E 10 Hz, I 15 Hz
    p_b = np.array([0.003] * 6 + [0.008, 0.0])  # state b: E 3 Hz, I 8 Hz and one silent I neuron
    spikes = np.concatenate([rng.random((3, 2000, n)) < p_a, rng.random((3, 2000, n)) < p_b]).astype(np.uint8)
    state = np.array(["a"] * 600 + ["b"] * 600)
    starts = np.arange(6) * 200  # chunks of 200 bins (x 10 steps): three in a, three in b
    # currents recorded on chunks 0, 1 (a) and 3, 4 (b): |I| = E + noise (corr 1/sqrt(2)) in a, = 2 E (corr 1) in b
    idx = np.array([0, 1, 3, 4])
    i_exc = 10 + rng.standard_normal((4, 2000, n))  # one-signed currents, as synaptic E and I currents are
    noise = rng.standard_normal((4, 2000, n))
    i_inh = -np.where((idx < 3)[:, None, None], i_exc + noise, 2 * i_exc)
    out = firing_by_state(spikes, starts, 200, state, cfg, n_exc=n_exc, currents=(idx, i_exc, i_inh))
    assert set(out) == {"a", "b"}
    for st, ch in (("a", [0, 1, 2]), ("b", [3, 4, 5])):
        sp = spikes[ch]
        rate = sp.sum((0, 1)) / (len(ch) * 2000 * 0.001)
        v = out[st]
        assert v["rate_hz_median"] == pytest.approx(np.median(rate))
        assert v["rate_hz_median_exc"] == pytest.approx(np.median(rate[:n_exc]))
        assert v["rate_hz_median_inh"] == pytest.approx(np.median(rate[n_exc:]))
        assert v["frac_in_band"] == pytest.approx(np.mean((rate >= 5) & (rate <= 20)))
        assert v["fano_median"] == pytest.approx(np.nanmedian(_naive_fano(sp, 100)))
        assert v["frac_isi_below_5ms"] == pytest.approx(spiking.short_isi_fraction(sp, 5))
        assert v["n_silent"] == int((rate < cfg.silent_below_hz).sum())
        assert v["n_chunks"] == 3 and v["seconds"] == pytest.approx(6.0)
    assert 0.6 < out["a"]["fano_median"] < 1.4 and 0.6 < out["a"]["cv_isi_median"] < 1.4  # Poisson: ~1
    assert out["a"]["frac_in_band"] == 1.0 and out["b"]["frac_in_band"] == pytest.approx(1 / 8)
    assert out["b"]["n_silent"] == 1
    assert out["a"]["ei_current_corr_median"] == pytest.approx(1 / np.sqrt(2), abs=0.02)
    assert out["b"]["ei_current_corr_median"] == pytest.approx(1.0)
    # the summary of all chunks is the same function: its E/I split and the whole-population median
    whole = firing_summary(spikes, n_exc, cfg)
    assert whole["rate_hz_median_inh"] > whole["rate_hz_median_exc"]
    assert "ei_current_corr_median" not in whole  # no currents given: not reported


def test_current_chunks_cover_every_state():
    state = np.array(["a"] * 1000 + ["b"] * 200)
    starts = np.arange(0, 1200, 100)  # ten chunks in a, two in b
    idx = _current_chunks(starts, 100, state)
    assert set(state[starts[idx]]) == {"a", "b"} and len(idx) <= 8
    assert (_current_chunks(starts, 100, None) == np.arange(8)).all()


def test_a_cross_state_evaluation_reports_firing_in_the_trained_and_the_unseen_state(toy_student):
    import pandas as pd

    from neurojepa.student.evaluate import evaluate_student

    cfg, counts, lat, split, net = toy_student
    labels = pd.DataFrame({"state": np.where(np.arange(3000) % 1000 < 500, "active", "passive")})
    m, _ = evaluate_student(net, counts, lat, split, cfg, labels, decode=False, train_states=["active"],
                            test_states=["passive"])
    assert set(m["firing_by_state"]) == {"active", "passive"}
    for v in m["firing_by_state"].values():
        assert {"rate_hz_median_exc", "rate_hz_median_inh", "fano_median", "ei_current_corr_median",
                "cv_isi_median", "frac_in_band"} <= set(v)
    # the top-level statistics stay those of the test state's chunks (passive only)
    from neurojepa.student.evaluate import firing_statistics

    te = (np.arange(3000) >= cfg.burn_in) & (split == "test") & (labels["state"].to_numpy() == "passive")
    assert m["rate_hz_median"] == firing_statistics(net, counts, te, cfg)["rate_hz_median"]
