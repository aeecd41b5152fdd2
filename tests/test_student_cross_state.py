"""The student's cross-state scores: cca_cross_state against a naive numpy CCA on the explicit rows (eigh-based
whitening, not the Cholesky of metrics/cca.py), a code that changes between states scores lower across states,
firing statistics per state against counts by hand, and evaluate_student adds them without changing the rest."""

import numpy as np
import pandas as pd
import pytest

from neurojepa.metrics.cca import cca_cross_state
from neurojepa.student.config import StudentConfig
from neurojepa.student.evaluate import evaluate_student, firing_by_state


def _inv_sqrt(c):
    w, v = np.linalg.eigh(c)
    return v @ np.diag(w ** -0.5) @ v.T


def _naive_heldout_cca(x_tr, y_tr, x_te, y_te, ridge):
    """Mean held-out canonical correlation, written out: ridged covariances, symmetric whitening, SVD."""
    mx, my = x_tr.mean(0), y_tr.mean(0)
    xc, yc = x_tr - mx, y_tr - my
    n = len(xc)
    cxx, cyy, cxy = xc.T @ xc / (n - 1), yc.T @ yc / (n - 1), xc.T @ yc / (n - 1)
    cxx += ridge * np.trace(cxx) / len(cxx) * np.eye(len(cxx))
    cyy += ridge * np.trace(cyy) / len(cyy) * np.eye(len(cyy))
    u, s, vt = np.linalg.svd(_inv_sqrt(cxx) @ cxy @ _inv_sqrt(cyy))
    k = min(x_tr.shape[1], y_tr.shape[1])
    a, b = (x_te - mx) @ _inv_sqrt(cxx) @ u[:, :k], (y_te - my) @ _inv_sqrt(cyy) @ vt.T[:, :k]
    return np.mean([np.corrcoef(a[:, i], b[:, i])[0, 1] for i in range(k)])


def _two_state(n=6000, shift=0.0, seed=0):
    """y: 3 latents; x: 6 noisy linear mixtures of y whose mixing changes by ``shift`` in state 'passive'."""
    rng = np.random.default_rng(seed)
    y = rng.standard_normal((n, 3))
    state = np.where(np.arange(n) % 2000 < 1000, "active", "passive")
    m_a = rng.standard_normal((3, 6))
    m_b = (1 - shift) * m_a + shift * rng.standard_normal((3, 6))
    x = np.where((state == "active")[:, None], y @ m_a, y @ m_b) + 0.5 * rng.standard_normal((n, 6))
    split = np.where((np.arange(n) // 100) % 5 == 4, "test", "train")
    return x, y, state, split


def test_cca_cross_state_equals_a_naive_cca_on_the_explicit_rows():
    x, y, state, split = _two_state(shift=0.4)
    res = cca_cross_state(x, y, state, split == "train", split == "test", 1e-3, ["active", "passive"],
                          ["active", "passive"])
    assert set(res) == {"active->passive", "passive->active", "mean"}
    for a, b in (("active", "passive"), ("passive", "active")):
        tr, te = (split == "train") & (state == a), (split == "test") & (state == b)
        assert res[f"{a}->{b}"] == pytest.approx(_naive_heldout_cca(x[tr], y[tr], x[te], y[te], 1e-3), abs=1e-9)
    assert res["mean"] == pytest.approx((res["active->passive"] + res["passive->active"]) / 2)


def test_a_code_that_shifts_between_states_scores_lower_across_states():
    def within_and_cross(shift):
        x, y, state, split = _two_state(shift=shift)
        tr, te = split == "train", split == "test"
        cross = cca_cross_state(x, y, state, tr, te, 1e-3, ["active", "passive"], ["active", "passive"])["mean"]
        within = np.mean([_naive_heldout_cca(x[tr & (state == s)], y[tr & (state == s)], x[te & (state == s)],
                                             y[te & (state == s)], 1e-3) for s in ("active", "passive")])
        return within, cross

    w0, c0 = within_and_cross(0.0)
    w1, c1 = within_and_cross(0.9)
    assert abs(w0 - c0) < 0.03
    assert c1 < w1 - 0.1
    assert cca_cross_state(*_two_state()[:2], np.full(6000, "active"), np.ones(6000, bool), np.ones(6000, bool),
                           1e-3, ["active"], ["active"]) == {}


def test_firing_by_state_groups_chunks_by_their_bins():
    rng = np.random.default_rng(0)
    cfg = StudentConfig(dt=0.001, rate_low_hz=5.0, rate_high_hz=20.0)
    spikes = (rng.random((4, 1000, 5)) < np.array([0.002, 0.01, 0.01, 0.03, 0.0])).astype(np.uint8)
    spikes[2:] = (rng.random((2, 1000, 5)) < 0.015).astype(np.uint8)
    state = np.array(["a"] * 100 + ["b"] * 100 + [""] * 20)
    starts = np.array([0, 50, 100, 150])  # chunks of 50 bins: two in 'a', two in 'b'
    out = firing_by_state(spikes, starts, 50, state, cfg)
    for st, idx in (("a", [0, 1]), ("b", [2, 3])):
        rate = spikes[idx].sum((0, 1)) / (len(idx) * 1000 * 0.001)
        assert out[st]["rate_hz_median"] == pytest.approx(np.median(rate))
        assert out[st]["frac_in_band"] == pytest.approx(np.mean((rate >= 5) & (rate <= 20)))
        assert out[st]["n_chunks"] == 2
    cvs = []  # CV of ISI per neuron over state b's chunks (intervals never cross a chunk boundary)
    for u in range(5):
        isi = np.concatenate([np.diff(np.flatnonzero(spikes[c][:, u])) for c in (2, 3)]).astype(float)
        cvs.append(isi.std(ddof=1) / isi.mean() if len(isi) >= 3 else np.nan)
    assert out["b"]["cv_isi_median"] == pytest.approx(np.nanmedian(cvs))
    assert set(firing_by_state(spikes, np.array([90]), 50, state, cfg)) == set()  # straddles a and b: left out


def test_evaluate_student_adds_cross_state_keys_and_keeps_the_rest(toy_student):
    cfg, counts, lat, split, net = toy_student
    state = np.where(np.arange(3000) % 1000 < 500, "active", "passive")
    running = lat[:, 0] + 0.1 * np.random.default_rng(0).standard_normal(3000)
    labels = pd.DataFrame({"state": state, "running": running})
    m, z = evaluate_student(net, counts, lat, split, cfg, labels, decode=True)
    one, _ = evaluate_student(net, counts, lat, split, cfg, None, decode=False, readout=z)
    for k, v in one.items():  # without states: the same numbers, none of the new keys
        if k != "_report":
            assert m[k] == v, k
    assert not {"cca_cross_state", "firing_by_state"} & set(one)
    pairs = m["cca_cross_state_pairs"]
    assert set(pairs) == {"active->passive", "passive->active", "mean"} and m["cca_cross_state"] == pairs["mean"]
    assert m["cca_cross_state_null"] < m["cca_cross_state"]
    assert set(m["firing_by_state"]) == {"active", "passive"}
    assert sum(v["n_chunks"] for v in m["firing_by_state"].values()) <= cfg.eval_spike_chunks
    beh = m["decoding"]["behaviour"]["running_speed"]
    assert set(beh["within"]) == {"active", "passive"} and set(beh["cross"]) == {"active->passive", "passive->active"}
