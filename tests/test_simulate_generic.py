"""The generic two-state preset (synthetic/generic.py): file layout, ground truth, a state-dependent code."""

import h5py
import numpy as np
import pytest
from sklearn.linear_model import Ridge

from neurojepa.data.nwb_read import open_session
from neurojepa.errors import InputError
from neurojepa.synthetic.generic import STATES_TABLE
from neurojepa.synthetic.simulate import parse_overrides, simulate_session, simulate_to_nwb

BIN = 0.05  # s


@pytest.fixture(scope="module")
def nwb_path(tmp_path_factory):
    return simulate_to_nwb(tmp_path_factory.mktemp("gen") / "generic.nwb", seed=1, n_units=40, minutes=4,
                           preset="generic")


def _binned(session, n_bins):
    """(n_bins, U) sqrt counts smoothed over 3 bins, (n_bins, D) latents averaged per bin, (n_bins,) state."""
    edges = np.arange(n_bins + 1) * BIN
    counts = np.stack([np.histogram(session.spike_times([u]).times, edges)[0] for u in session.units.index], 1)
    x = np.sqrt(counts.astype(float))
    x = (x + np.roll(x, 1, 0) + np.roll(x, -1, 0)) / 3
    gt = session.ground_truth
    z = gt.latents[: n_bins * int(round(BIN / gt.latent_dt))]
    z = z.reshape(n_bins, -1, z.shape[1]).mean(1)
    mid = edges[:-1] + BIN / 2
    ep = session.epochs
    state = ep.state.to_numpy()[np.searchsorted(ep.start_time.to_numpy(), mid, side="right") - 1]
    return x, z, state


def _r2(model, x, z):
    return 1 - ((model.predict(x) - z) ** 2).sum(0) / ((z - z.mean(0)) ** 2).sum(0)


def _within_and_cross(session, minutes):
    """Ridge counts -> latent fit on the first half of each state's bins: R^2 on the other half of the same state
    (within) and on the other state (cross), averaged over both orders."""
    x, z, state = _binned(session, int(minutes * 60 / BIN))
    names = sorted(set(state))
    assert len(names) == 2
    within, cross = [], []
    for a, b in (names, names[::-1]):
        rows = np.flatnonzero(state == a)
        fit, held = rows[: len(rows) // 2], rows[len(rows) // 2:]
        m = Ridge(alpha=1.0).fit(x[fit], z[fit])
        within.append(_r2(m, x[held], z[held]).mean())
        cross.append(_r2(m, x[state == b], z[state == b]).mean())
    return float(np.mean(within)), float(np.mean(cross))


def test_file_layout_states_and_ground_truth(nwb_path):
    with h5py.File(nwb_path, "r") as h5:
        tables = set(h5["intervals"])
        assert tables == {STATES_TABLE}  # no stimulus presentations, no trials, no VBN epochs
        assert "processing/ground_truth/latents" in h5 and "processing/running/speed" in h5
    with open_session(nwb_path, states_from=f"{STATES_TABLE}:state") as s:
        assert set(s.epochs.state) == {"engaged", "disengaged"}
        assert len(s.epochs) >= 2 and (s.epochs.stop_time - s.epochs.start_time).min() >= 30 - 1e-9
        assert s.stimuli.empty and s.trials.empty
        gt = s.ground_truth
        assert gt.latents.shape == (4 * 60 * 100, 3)
        np.testing.assert_allclose(gt.latents.std(0), 1.0, atol=1e-3)
        assert set(gt.state_gain) == {"engaged", "disengaged"} and gt.loadings.shape == (40, 3)
        assert "running_speed" in s.behavior
    with open_session(nwb_path) as s:  # without --states-from: one epoch, as for any generic file
        assert list(s.epochs.state) == ["all"]


def test_code_follows_latent_and_shifts_between_states(nwb_path):
    with open_session(nwb_path, states_from=f"{STATES_TABLE}:state") as s:
        within, cross = _within_and_cross(s, 4)
    assert within > 0.6  # within a state, the counts follow the latent
    assert cross < within - 0.15  # the code changes between states


def test_without_state_shift_the_code_transfers():
    """Control for the test above: the same session with every state difference turned off transfers."""
    s = simulate_session(seed=1, n_units=40, minutes=4, preset="generic", gain_shift=0.0, gain_sigma=0.0,
                         offset_shift=0.0, offset_sigma=0.0, remix_fraction=0.0, private_scale=0.0)
    within, cross = _within_and_cross(s, 4)
    assert within > 0.6 and cross > within - 0.08


def test_running_speed_informative_in_one_state_only():
    s = simulate_session(seed=2, n_units=5, minutes=3, preset="generic")
    run = s.behavior["running_speed"]
    z = np.interp(run.timestamps, np.arange(len(s.ground_truth.latents)) * 0.01, s.ground_truth.latents[:, 0])
    ep = s.epochs
    state = ep.state.to_numpy()[np.searchsorted(ep.start_time.to_numpy(), run.timestamps, side="right") - 1]
    corr = {st: np.corrcoef(z[state == st], run.data[state == st])[0, 1] for st in ("engaged", "disengaged")}
    assert corr["engaged"] > 0.8 and abs(corr["disengaged"]) < 0.3


def test_overrides_and_errors():
    assert parse_overrides(["remix_fraction=0.5", "n_units=10"], "generic") == {"remix_fraction": 0.5, "n_units": 10}
    with pytest.raises(InputError, match="remix_fraction"):
        parse_overrides(["remix_fractio=0.5"], "generic")
    with pytest.raises(InputError, match="block_minutes"):
        simulate_session(preset="generic", block_minutes=3)
    with pytest.raises(InputError, match="too short"):
        simulate_session(preset="generic", minutes=0.5)
    s = simulate_session(seed=0, n_units=3, minutes=2, preset="generic", drift_scale=0.5)
    assert s.ground_truth.latents.shape[1] == 4 and s.metadata["latent_names"][-1] == "drift"
