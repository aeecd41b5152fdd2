"""The simulator's statistics against the targets of issue 2 (item 6), checked independently of its internals."""

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from neurojepa.data.session import InMemorySpikes, Session, SpikeTrains
from neurojepa.errors import InputError
from neurojepa.synthetic.simulate import (
    LATENT_DT,
    SimulatedSpikes,
    _poisson_refractory,
    simulate_session,
    true_rates,
)


@pytest.fixture(scope="module")
def small() -> Session:
    return simulate_session(seed=0, n_units=160, minutes=4)


@pytest.fixture(scope="module")
def long_task() -> Session:
    """Two units but an hour of task: enough trials for behavioural rates."""
    return simulate_session(seed=3, n_units=2, minutes=60)


def _default_qc(units: pd.DataFrame) -> pd.Series:
    # the Allen notebook filter plus a minimum rate, written out here rather than imported
    return ((units.quality == "good") & (units.isi_violations < 0.5) & (units.amplitude_cutoff < 0.1)
            & (units.presence_ratio > 0.9) & (units.firing_rate > 0.1))


def _task_rows(s: Session, active: bool) -> pd.DataFrame:
    st = s.stimuli
    return st[st.stimulus_name.str.startswith("Natural_Images") & (st.active == active)].reset_index(drop=True)


# ------------------------------------------------------------------------------------------------ units
def test_rate_distribution_matches_vbn_like_targets(small):
    fr = small.units.firing_rate
    assert 2.5 <= fr.median() <= 5.0
    assert fr.quantile(0.02) >= 0.1 and fr.quantile(0.98) <= 45.0
    assert fr.max() > 10 * fr.min()  # a broad, lognormal-like range
    fs, rs = small.units.cell_type == "fs", small.units.cell_type == "rs"
    assert fr[fs].median() > 1.5 * fr[rs].median()  # fast-spiking units fire faster


def test_fast_spiking_fraction_and_waveforms(small):
    fs = small.units.cell_type == "fs"
    assert set(small.units.cell_type) == {"fs", "rs"}
    assert 0.1 <= fs.mean() <= 0.25
    assert (small.units.waveform_duration[fs] < 0.4).all() and (small.units.waveform_duration[~fs] >= 0.4).all()


def test_qc_failure_fraction_and_reasons(small):
    u = small.units
    fail = ~_default_qc(u)
    assert 0.25 <= fail.mean() <= 0.40
    # every realistic reason is present
    assert (u.amplitude_cutoff == 0.5).mean() == pytest.approx(0.2, abs=0.07)
    assert (u.isi_violations >= 0.5).any() and (u.presence_ratio <= 0.9).any() and (u.quality == "noise").any()
    assert set(small.units.area) <= {"VISp", "VISl", "VISal", "VISrl", "VISam", "VISpm", "LP"}


def test_quality_metrics_are_computed_from_the_spikes(small):
    from neurojepa.data.quality_metrics import isi_violations, presence_ratio

    u = small.units
    for uid in u.index[:20]:
        t = small.spike_times([uid])[0]
        assert u.loc[uid, "firing_rate"] == pytest.approx(len(t) / (small.t_stop - small.t_start))
        assert u.loc[uid, "isi_violations"] == pytest.approx(isi_violations(t, small.t_start, small.t_stop)[0])
        assert u.loc[uid, "presence_ratio"] == pytest.approx(presence_ratio(t, small.t_start, small.t_stop))


# ------------------------------------------------------------------------------------------------ task
def test_passive_block_replays_the_active_flash_sequence(small):
    a, p = _task_rows(small, True), _task_rows(small, False)
    assert len(a) == len(p) > 300
    for col in ("image_name", "omitted", "is_change", "flashes_since_change"):
        assert (a[col].to_numpy() == p[col].to_numpy()).all(), col
    # same timing relative to each block's start
    np.testing.assert_allclose(np.diff(a.start_time), np.diff(p.start_time))
    assert not p.rewarded.any() and a.rewarded.any()
    assert small.states == ["active", "gray", "passive"]


def test_flash_timing_omissions_and_changes(long_task):
    a = _task_rows(long_task, True)
    np.testing.assert_allclose(a.stop_time - a.start_time, 0.25)
    np.testing.assert_allclose(np.diff(a.start_time), 0.75)
    assert a.omitted.mean() == pytest.approx(0.05, abs=0.01)
    assert not (a.omitted & a.is_change).any()
    assert (a.image_name[a.omitted] == "omitted").all()
    change = np.flatnonzero(a.is_change.to_numpy())
    assert np.diff(change).min() >= 5  # at least 4 flashes between two changes
    # a change is a change of image among the shown ones
    shown = a[~a.omitted]
    prev = shown.image_name.shift(1)
    assert (shown.image_name[shown.is_change] != prev[shown.is_change]).all()
    assert shown.image_name.nunique() == 8


def test_observer_behaviour(long_task):
    tr = long_task.trials
    hit_rate = tr.hit.sum() / tr.go.sum()
    fa_rate = tr.false_alarm.sum() / tr.catch.sum()
    assert hit_rate == pytest.approx(0.6, abs=0.08)
    assert fa_rate == pytest.approx(0.1, abs=0.06)
    assert ((tr.hit | tr.miss) == tr.go).all() and ((tr.false_alarm | tr.correct_reject) == tr.catch).all()
    lat = (tr.response_time - tr.change_time)[tr.hit | tr.false_alarm]
    assert lat.between(0.15, 0.75).all()
    # each responded trial has a lick at its response time; rewards exactly on hits
    licks = long_task.behavior["licks"].timestamps
    assert np.isin(tr.response_time.dropna().to_numpy(), licks).all()
    np.testing.assert_allclose(long_task.behavior["rewards"].timestamps, tr.reward_time.dropna())
    act = long_task.epochs[long_task.epochs.state == "active"].iloc[0]
    pas = long_task.epochs[long_task.epochs.state == "passive"].iloc[0]
    n_act = ((licks >= act.start_time) & (licks < act.stop_time)).sum()
    n_pas = ((licks >= pas.start_time) & (licks < pas.stop_time)).sum()
    assert n_pas < 0.1 * n_act
    run = long_task.behavior["running_speed"]
    assert np.median(np.diff(run.timestamps)) == pytest.approx(1 / 60)
    for e in (act, pas):  # running in both blocks, varying slowly
        m = (run.timestamps >= e.start_time) & (run.timestamps < e.stop_time)
        assert run.data[m].std() > 2.0


# ------------------------------------------------------------------------------------------------ code
def _flash_counts(s: Session, ids, rows: pd.DataFrame) -> np.ndarray:
    """(n_flashes, n_units) spike counts 30-280 ms after each flash onset."""
    trains = s.spike_times(ids)
    on = rows.start_time.to_numpy()
    return np.stack([np.searchsorted(trains[j], on + 0.28) - np.searchsorted(trains[j], on + 0.03)
                     for j in range(len(ids))], axis=1)


def test_raw_count_image_decoder_breaks_across_states(small):
    ids = small.units.index[_default_qc(small.units)]
    a, p = _task_rows(small, True), _task_rows(small, False)
    a, p = a[~a.omitted], p[~p.omitted]
    xa, xp = _flash_counts(small, ids, a), _flash_counts(small, ids, p)
    cut = int(0.7 * len(a))
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    clf.fit(xa[:cut], a.image_name[:cut])
    within = clf.score(xa[cut:], a.image_name[cut:])
    across = clf.score(xp, p.image_name)
    assert within > 0.7  # chance is 1/8; ~100 QC units and ~200 training flashes
    assert across < within - 0.25


def test_latents_are_smooth_standardised_and_linearly_decodable_in_each_state(small):
    gt = small.ground_truth
    z = gt.latents
    assert z.dtype == np.float32 and z.shape[1] == gt.n_latents == 8
    assert len(z) == pytest.approx((small.t_stop - gt.latent_t0) / gt.latent_dt, abs=2)
    np.testing.assert_allclose(z.std(0), 1.0, atol=0.01)
    # smooth: consecutive 10 ms samples are strongly correlated in every dimension
    lag1 = [np.corrcoef(z[1:, d], z[:-1, d])[0, 1] for d in range(8)]
    assert min(lag1) > 0.9
    # a linear read-out of 50 ms-smoothed counts recovers z within each state (held-out, last 20 % of the block)
    from scipy.ndimage import gaussian_filter1d
    from sklearn.linear_model import Ridge

    ids = small.units.index[_default_qc(small.units)]
    trains = small.spike_times(ids)
    counts = np.zeros((len(z), len(ids)), np.float32)
    for j in range(len(ids)):
        np.add.at(counts[:, j], np.minimum((trains[j] / LATENT_DT).astype(int), len(z) - 1), 1)
    x_all = np.sqrt(gaussian_filter1d(counts, 3, axis=0))
    for state in ("active", "passive"):
        e = small.epochs[small.epochs.state == state].iloc[0]
        lo, hi = int(e.start_time / LATENT_DT), int(e.stop_time / LATENT_DT)
        x, y = x_all[lo:hi], z[lo:hi]
        m = int(0.8 * len(x))
        pred = Ridge(alpha=1.0).fit(x[:m], y[:m]).predict(x[m:])
        r2 = 1 - ((pred - y[m:]) ** 2).sum(0) / ((y[m:] - y[m:].mean(0)) ** 2).sum(0)
        assert r2.mean() > 0.75, (state, r2)


def test_true_rates_follow_the_documented_equation(small):
    gt = small.ground_truth
    ids = small.units.index[:5]
    rates = true_rates(small, ids)
    t = gt.latent_t0 + np.arange(len(gt.latents)) * gt.latent_dt
    state = np.where(small.state_at(t) == "active", "active", "passive")
    for j, uid in enumerate(ids):
        i = small.units.index.get_loc(uid)
        for s in ("active", "passive"):
            m = state == s
            drive = gt.latents[m] @ (gt.loadings[i] + gt.state_remix[s][i]) + gt.state_offset[s][i]
            expect = gt.baseline_hz[i] * gt.state_gain[s][i] * np.log1p(np.exp(drive)) / np.log(2)
            np.testing.assert_allclose(rates[m, j], expect, rtol=1e-4)
    # clean units: the realised spike count matches the integrated rate of a Poisson process with a 2 ms dead
    # time, whose rate is lambda / (1 + lambda * 2 ms) (the loss reaches ~10 % for units with strong transients)
    u = small.units
    clean = u.index[(u.isi_violations == 0) & (u.presence_ratio > 0.95)][:20]
    lam = true_rates(small, clean)
    expected = (lam / (1 + lam * 0.002)).sum(0) * gt.latent_dt
    realised = small.spike_counts()[clean].to_numpy()
    assert np.all(np.abs(realised - expected) < 5 * np.sqrt(expected) + 0.02 * expected)


def test_active_block_fires_more_overall(small):
    # the overall rate shift between blocks (RESEARCH.md §1), measured from the spikes
    e = small.epochs.set_index("state")
    tr = small.spike_times()
    n = {s: sum(len(tr[i][(tr[i] >= e.loc[s, "start_time"]) & (tr[i] < e.loc[s, "stop_time"])]) for i in range(len(tr)))
         for s in ("active", "passive")}
    assert n["active"] > 1.2 * n["passive"]


# ------------------------------------------------------------------------------------------------ spikes
def test_poisson_with_dead_time_known_rate():
    rate, tau, dur = 40.0, 0.002, 1000.0
    t = _poisson_refractory(np.full(int(dur / 0.01), rate), 0.01, 0.0, tau, 123)
    isi = np.diff(t)
    assert isi.min() >= tau - 1e-12
    assert len(t) / dur == pytest.approx(rate / (1 + rate * tau), rel=0.02)  # dead-time Poisson rate
    # beyond the dead time the ISIs are exponential: mean excess = 1 / rate
    assert (isi - tau).mean() == pytest.approx(1 / rate, rel=0.02)


def test_same_seed_same_session_other_seed_differs():
    a = simulate_session(seed=5, n_units=8, minutes=4)
    b = simulate_session(seed=5, n_units=8, minutes=4)
    c = simulate_session(seed=6, n_units=8, minutes=4)
    np.testing.assert_array_equal(a.spike_times().times, b.spike_times().times)
    pd.testing.assert_frame_equal(a.units, b.units)
    pd.testing.assert_frame_equal(a.stimuli, b.stimuli)
    np.testing.assert_array_equal(a.ground_truth.latents, b.ground_truth.latents)
    assert not np.array_equal(a.stimuli.image_name, c.stimuli.image_name)
    assert type(a.spikes) is InMemorySpikes  # the default preset holds its trains


def test_vbn_preset_generates_spikes_on_demand():
    s = simulate_session(seed=2, preset="vbn", n_units=6, minutes=4)
    assert isinstance(s.spikes, SimulatedSpikes)
    assert not isinstance(s.spikes.trains, SpikeTrains)  # no train is held; each read regenerates
    assert s.states == ["active", "gray", "gabor", "spontaneous", "flash", "passive"]
    uid = int(s.units.index[3])
    one = s.spike_times([uid])[0]
    assert len(one) == s.spike_counts()[uid]
    np.testing.assert_array_equal(one, s.spike_times([uid])[0])  # deterministic per unit
    np.testing.assert_array_equal(s.spike_times([s.units.index[1], uid])[1], one)  # independent of what else is read
    window = s.spike_times([uid], 100.0, 200.0)[0]
    np.testing.assert_array_equal(window, one[(one >= 100.0) & (one < 200.0)])
    assert set(s.stimuli.stimulus_name) >= {"gabor_20_deg_250ms", "flash_250ms", "spontaneous"}


def test_bad_settings_are_input_errors():
    with pytest.raises(InputError, match="preset"):
        simulate_session(preset="huge")
    with pytest.raises(InputError, match="unknown setting"):
        simulate_session(n_unit=3)
    with pytest.raises(InputError, match="units"):
        simulate_session(n_units=0)
    with pytest.raises(InputError, match="minutes"):
        simulate_session(minutes=0.1)
    with pytest.raises(InputError, match="seed"):
        simulate_session(seed=-1)


def test_simulated_nwb_reads_back_with_ground_truth(tmp_path):
    from pynwb import validate

    from neurojepa.data.nwb_read import open_session
    from neurojepa.synthetic.simulate import simulate_to_nwb

    mem = simulate_session(seed=1, n_units=12, minutes=4)
    path = simulate_to_nwb(tmp_path / "sim.nwb", seed=1, n_units=12, minutes=4)
    assert validate(path=str(path)) == []
    back = open_session(path)
    assert back.states == mem.states == ["active", "gray", "passive"]
    pd.testing.assert_frame_equal(back.epochs[["start_time", "stop_time", "state"]], mem.epochs[["start_time", "stop_time", "state"]])
    assert (back.units.area.loc[mem.units.index] == mem.units.area).all()
    np.testing.assert_array_equal(back.spike_counts().loc[mem.units.index], mem.spike_counts())
    np.testing.assert_array_equal(back.spike_times([1005])[0], mem.spike_times([1005])[0])
    img = lambda s: s.stimuli.loc[s.stimuli.stimulus_name.str.startswith("Natural"), "image_name"].tolist()  # noqa: E731
    assert img(back) == img(mem)
    np.testing.assert_array_equal(back.ground_truth.latents, mem.ground_truth.latents)
    np.testing.assert_allclose(back.ground_truth.state_gain["passive"], mem.ground_truth.state_gain["passive"])
    np.testing.assert_allclose(back.ground_truth.state_remix["active"], mem.ground_truth.state_remix["active"], rtol=1e-6)


def test_simulator_settings_from_the_command_line_are_typed_and_checked():
    from neurojepa.synthetic.simulate import parse_overrides

    assert parse_overrides(["vbn_blocks=false", "n_units=12", "gray_s=2.5", "dynamics_seed=none"]) == \
        dict(vbn_blocks=False, n_units=12, gray_s=2.5, dynamics_seed=None)
    with pytest.raises(InputError, match="did you mean 'vbn_blocks'"):
        parse_overrides(["vbn_block=true"])
    with pytest.raises(InputError, match="bad value for 'n_units'"):
        parse_overrides(["n_units=many"])
