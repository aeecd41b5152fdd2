"""Unit QC (first failing filter, NaN handling, absent columns) and the data-quality checks, on hand-made tables."""

import numpy as np
import pandas as pd
import pytest

from neurojepa.data.checks import check_block_timing, check_rates, check_silent_gaps, check_spike_times
from neurojepa.data.qc import QCConfig, select_units
from neurojepa.data.session import InMemorySpikes, Session, SpikeTrains
from neurojepa.errors import InputError


def random_units(n=300, seed=1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "area": rng.choice(["VISp", "LP", "CA1"], n),
        "cell_type": "rs",
        "quality": rng.choice(["good", "noise"], n, p=[0.85, 0.15]).astype(object),
        "isi_violations": rng.exponential(0.3, n),
        "amplitude_cutoff": rng.choice([0.01, 0.05, 0.09, 0.1, 0.3, 0.5], n),
        "presence_ratio": rng.uniform(0.8, 0.99, n),
        "firing_rate": rng.lognormal(0.5, 1.5, n),
        "snr": rng.uniform(0.5, 4, n),
    }, index=pd.Index(np.arange(n) + 1000, name="unit_id"))
    for col in ("isi_violations", "presence_ratio", "firing_rate"):  # a few missing values
        df.loc[df.sample(5, random_state=len(col)).index, col] = np.nan
    df.loc[df.index[:3], "quality"] = None
    return df


def reference_reason(row, cfg: QCConfig) -> str:
    """The documented rule, written out row by row: first failing filter in the documented order."""
    tests = [
        ("area", "area", lambda v: cfg.areas is None or v in cfg.areas, cfg.areas is not None),
        ("quality", "quality", lambda v: v == cfg.quality, cfg.quality is not None),
        ("isi_violations", "isi_violations", lambda v: v < cfg.isi_violations_max, cfg.isi_violations_max is not None),
        ("amplitude_cutoff", "amplitude_cutoff", lambda v: v < cfg.amplitude_cutoff_max,
         cfg.amplitude_cutoff_max is not None),
        ("presence_ratio", "presence_ratio", lambda v: v > cfg.presence_ratio_min, cfg.presence_ratio_min is not None),
        ("snr", "snr", lambda v: v > cfg.min_snr, cfg.min_snr is not None),
        ("firing_rate >", "firing_rate", lambda v: v > cfg.min_rate_hz, cfg.min_rate_hz is not None),
        ("firing_rate <", "firing_rate", lambda v: v < cfg.max_rate_hz, cfg.max_rate_hz is not None),
    ]
    for label, col, ok, active in tests:
        if not active:
            continue
        v = row[col]
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return f"missing {col}"
        if not ok(v):
            return label
    return ""


@pytest.mark.parametrize("cfg", [
    QCConfig(),
    QCConfig(areas=["VISp", "LP"], min_snr=1.5, max_rate_hz=20.0),
    QCConfig(quality=None, isi_violations_max=None, min_rate_hz=1.0),
])
def test_kept_units_match_row_by_row_reference(cfg):
    units = random_units()
    res = select_units(units, cfg)
    expect = {uid: reference_reason(row, cfg) for uid, row in units.iterrows()}
    assert set(res.kept) == {u for u, r in expect.items() if r == ""}
    assert list(res.kept) == [u for u in units.index if expect[u] == ""]  # table order kept
    for uid, reason in res.reasons.items():  # the reported reason names the same filter (reference: short names)
        assert (reason == "") == (expect[uid] == "")
        assert reason.startswith(expect[uid])
    assert sum(res.dropped.values()) == len(units) - len(res.kept)
    assert res.filters_not_applied == []


def test_absent_columns_are_reported_and_rate_is_computed_from_spikes():
    units = random_units(50)[["area", "cell_type", "isi_violations"]]
    counts = pd.Series(np.arange(50) * 10, index=units.index)  # 0..490 spikes in 100 s -> 0..4.9 Hz
    res = select_units(units, QCConfig(isi_violations_max=None), counts, duration_s=100.0)
    assert res.filters_not_applied == ["quality == 'good'", "amplitude_cutoff < 0.1", "presence_ratio > 0.9"]
    assert "firing_rate" in res.filters_computed
    assert list(res.kept) == list(units.index[2:])  # 0 and 1 Hz*0.1 = 0.1 Hz are not > 0.1 Hz
    np.testing.assert_allclose(res.rates_hz.to_numpy(), np.arange(50) / 10)
    res2 = select_units(units, QCConfig(isi_violations_max=None, rate_from_spikes=False), counts, duration_s=100.0)
    assert "firing_rate > 0.1" in res2.filters_not_applied and len(res2.kept) == 50


def test_nan_in_present_column_drops_with_missing_reason():
    units = random_units(10).assign(quality="good", isi_violations=0.0, amplitude_cutoff=0.0, presence_ratio=0.95,
                                    firing_rate=5.0)
    units.loc[units.index[4], "amplitude_cutoff"] = np.nan
    res = select_units(units, QCConfig())
    assert res.dropped == {"missing amplitude_cutoff": 1}
    assert res.reasons.loc[units.index[4]] == "missing amplitude_cutoff"


def test_no_unit_left_names_the_filters():
    units = random_units(40)
    with pytest.raises(InputError) as err:
        select_units(units, QCConfig(min_rate_hz=1e9))
    msg = str(err.value)
    assert "no unit left" in msg and "firing_rate > 1e+09" in msg and "quality == 'good'" in msg
    assert "\n" not in msg


# ----------------------------------------------------------------------------------------------- checks
def _session(trains, epochs=None):
    st = SpikeTrains.from_list(np.arange(len(trains)), trains)
    units = pd.DataFrame({"area": "x", "cell_type": "rs"}, index=pd.Index(np.arange(len(trains)), name="unit_id"))
    ep = epochs if epochs is not None else pd.DataFrame(
        dict(start_time=[0.0], stop_time=[10.0], state=["all"], block=[0], stimulus_name=["all"]))
    return Session("t", units, InMemorySpikes(st), ep)


def test_spike_time_checks_find_unsorted_nonfinite_and_duplicates():
    s = _session([np.array([0.1, 0.2, 0.2, 0.2, 0.5]), np.array([0.3, 0.1]), np.array([0.1, np.nan]),
                  np.array([1.0, 2.0])])
    sorted_finite, dups = check_spike_times(s, np.arange(4), batch=3)  # batch boundary inside the list
    assert not sorted_finite["ok"]
    assert sorted_finite["units_unsorted"] == [1] and sorted_finite["units_nonfinite"] == [2]
    assert not dups["ok"] and dups["n_duplicates"] == 2 and dups["units"] == [0]
    ok, nodup = check_spike_times(s, np.array([3]))
    assert ok["ok"] and nodup["ok"]


def test_silent_gaps_known_answer():
    pop = np.ones(1000, dtype=int)
    pop[100:250] = 0  # 1.5 s at 10 ms
    pop[500:550] = 0  # 0.5 s: below the 1 s threshold
    pop[-120:] = 0  # 1.2 s at the end
    res = check_silent_gaps(pop, np.arange(1000) * 0.01, 0.01, 1.0)
    assert not res["ok"] and res["n_gaps"] == 2
    assert res["total_s"] == pytest.approx(2.7)
    assert res["longest"][0] == {"t_start": pytest.approx(1.0), "duration_s": pytest.approx(1.5)}
    assert check_silent_gaps(np.ones(10), np.arange(10) * 0.01, 0.01, 1.0)["ok"]


def test_block_timing_and_rate_checks():
    ep = pd.DataFrame(dict(start_time=[0.0, 5.0, 20.0], stop_time=[6.0, 10.0, 20.0], state=["a", "b", "c"]))
    stim = pd.DataFrame(dict(start_time=[1.0, 12.0]))
    res = check_block_timing(ep, stim)
    assert not res["ok"] and (res["n_overlaps"], res["n_nonpositive"], res["n_presentations_outside"]) == (1, 1, 1)
    rates = pd.Series([0.001, 5.0, 300.0], index=[7, 8, 9])
    r = check_rates(rates, 0.01, 200.0)
    assert not r["ok"] and r["units_low"] == [7] and r["units_high"] == [9]
