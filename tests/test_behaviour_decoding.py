"""Behaviour decoding within and across states (metrics.decoding.behaviour_decoding) against an independent
reference (scikit-learn's StandardScaler + RidgeCV fit on the explicit masks), on a row source as on an array, and a
code that changes between states decodes worse across states than within."""

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import RidgeCV
from sklearn.metrics import r2_score
from sklearn.preprocessing import StandardScaler

from neurojepa.metrics.decoding import behaviour_decoding, behaviour_targets

ALPHAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def _session(n=4000, d=5, seed=0, shift=0.0):
    """Latents z, labels with running (a linear read-out of z whose weights change by ``shift`` in 'passive'),
    a pupil column, and blocks of train/test split."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, d))
    state = np.where(np.arange(n) < n // 2, "active", "passive")
    w_a = rng.standard_normal(d)
    w_b = (1 - shift) * w_a + shift * rng.standard_normal(d)
    running = np.where(state == "active", z @ w_a, z @ w_b) + 0.3 * rng.standard_normal(n)
    running[[5, 2500]] = np.nan  # unknown bins are left out
    pupil = z[:, 0] + 0.5 * rng.standard_normal(n)
    split = np.where((np.arange(n) // 200) % 5 == 4, "test", "train")
    labels = pd.DataFrame({"time": np.arange(n) * 0.01, "state": state, "running": running, "licks": np.zeros(n, int),
                           "time_since_flash": np.full(n, np.nan), "pupil_area": pupil})
    return z, labels, split


def _reference(z, y, tr, te):
    sc = StandardScaler().fit(z[tr])
    model = RidgeCV(alphas=ALPHAS).fit(sc.transform(z[tr]), y[tr])
    return r2_score(y[te], model.predict(sc.transform(z[te])))


class _Rows:  # a computed row source (metrics/rows.py): shape and take(rows)
    def __init__(self, a):
        self.a, self.shape = a, a.shape

    def take(self, rows):
        return self.a[rows].astype(np.float32)


def test_behaviour_targets_pick_continuous_columns():
    z, labels, split = _session()
    t = behaviour_targets(labels, 0.01)
    assert set(t) == {"running_speed", "pupil_area"}  # not time, not licks (events), not time_since_flash
    np.testing.assert_array_equal(t["running_speed"], labels["running"].to_numpy())


def test_behaviour_decoding_equals_sklearn_ridge_on_explicit_masks():
    z, labels, split = _session(shift=0.5)
    res = behaviour_decoding(z, labels, split, 0.01)
    state = labels["state"].to_numpy()
    for name, col in (("running_speed", "running"), ("pupil_area", "pupil_area")):
        y = labels[col].to_numpy()
        good = np.isfinite(y)
        for a, b in (("active", "active"), ("passive", "passive"), ("active", "passive"), ("passive", "active")):
            ref = _reference(z, y, good & (state == a) & (split == "train"), good & (state == b) & (split == "test"))
            got = res[name]["within"][a] if a == b else res[name]["cross"][f"{a}->{b}"]
            assert got == pytest.approx(ref, abs=1e-8)
        assert res[name]["cross_mean"] == pytest.approx(np.mean(list(res[name]["cross"].values())))


def test_row_source_gives_the_array_result_and_rows_limit_the_bins():
    z, labels, split = _session(shift=0.3)
    arr = behaviour_decoding(z.astype(np.float32), labels, split, 0.01)
    src = behaviour_decoding(_Rows(z), labels, split, 0.01)
    assert src == arr
    rows = np.arange(len(z)) >= 300
    y, state = labels["running"].to_numpy(), labels["state"].to_numpy()
    lim = behaviour_decoding(z, labels, split, 0.01, rows=rows)
    good = np.isfinite(y) & rows
    act = good & (state == "active")
    ref = _reference(z, y, act & (split == "train"), act & (split == "test"))
    assert lim["running_speed"]["within"]["active"] == pytest.approx(ref, abs=1e-8)


def test_a_code_that_shifts_between_states_decodes_worse_across_states():
    z, labels, split = _session(shift=0.0)
    same = behaviour_decoding(z, labels, split, 0.01)["running_speed"]
    z, labels, split = _session(shift=0.8)
    moved = behaviour_decoding(z, labels, split, 0.01)["running_speed"]
    assert same["cross_mean"] > 0.9 and abs(same["cross_mean"] - same["within_mean"]) < 0.05
    assert moved["within_mean"] > 0.9 and moved["cross_mean"] < moved["within_mean"] - 0.3


def test_train_and_test_states_and_no_behaviour():
    z, labels, split = _session()
    res = behaviour_decoding(z, labels, split, 0.01, train_states=["active"], test_states=["passive"])
    assert set(res["running_speed"]["within"]) == {"active"}
    assert set(res["running_speed"]["cross"]) == {"active->passive"}
    assert behaviour_decoding(z, labels.drop(columns=["running", "pupil_area"]), split, 0.01) == {}
    assert behaviour_decoding(z, None, split, 0.01) == {}
