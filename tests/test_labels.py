"""Labels per bin on a small hand-built session, checked against answers worked out by hand.

Bins are 0.125 s (exact in binary) so that every expected bin index below is plain arithmetic: bin k = [k/8, (k+1)/8).
"""

import numpy as np
import pandas as pd
import pytest

from neurojepa.data.binning import bin_edges
from neurojepa.data.labels import bin_labels
from neurojepa.data.session import BehaviorSeries, InMemorySpikes, Session, SpikeTrains

DT = 0.125


def small_session(with_behavior: bool = True) -> Session:
    epochs = pd.DataFrame(
        {
            "start_time": [0.0, 10.0, 12.0],
            "stop_time": [10.0, 12.0, 22.0],
            "state": ["active", "gray", "passive"],
            "block": [0, 1, 5],
            "stimulus_name": ["images", "gray", "images"],
        }
    )
    stimuli = pd.DataFrame(
        {
            "start_time": [1.0, 1.75, 2.5, 3.25, 5.3, 10.5, 13.0],
            "stop_time": [1.25, 2.0, 2.75, 3.5, 5.55, 10.75, 13.25],
            "image_name": ["im_A", "im_A", "omitted", "im_B", "im_C", None, "im_A"],
            "is_change": [False, False, False, True, True, False, False],
            "omitted": [False, False, True, False, False, False, False],
            "stimulus_block": [0, 0, 0, 0, 0, 1, 5],
        }
    )
    trials = pd.DataFrame(
        {
            "start_time": [0.5, 3.0, 6.0, 8.0, 12.5],
            "stop_time": [3.0, 6.0, 8.0, 9.5, 14.0],
            "hit": [True, False, False, False, False],
            "miss": [False, False, False, False, True],
            "false_alarm": [False, True, False, False, False],
            "correct_reject": [False, False, False, True, False],
        }
    )
    behavior = {}
    if with_behavior:
        behavior = {
            "running_speed": BehaviorSeries(np.array([0.05, 0.1, 1.0, 2.0]), np.array([1.0, 3.0, 10.0, 20.0]), "cm/s"),
            "licks": BehaviorSeries(np.array([0.0, 0.1, 0.125, 2.5, 30.0])),
        }
    units = pd.DataFrame({"area": [], "cell_type": []}, index=pd.Index([], dtype=np.int64, name="unit_id"))
    return Session("toy", units, InMemorySpikes(SpikeTrains.from_list([], [])), epochs, stimuli, trials, behavior)


@pytest.fixture(scope="module")
def labels() -> pd.DataFrame:
    return bin_labels(small_session(), bin_edges(0.0, 24.0, DT))


def test_one_row_per_bin_aligned_to_edges(labels):
    assert len(labels) == 192
    np.testing.assert_array_equal(labels["time"], np.arange(192) * DT)


def test_state_and_block_from_epochs(labels):
    assert labels.loc[0, "state"] == "active" and labels.loc[79, "state"] == "active"
    assert (labels.loc[80:95, "state"] == "gray").all() and (labels.loc[80:95, "block"] == 1).all()
    assert labels.loc[96, "state"] == "passive" and labels.loc[96, "block"] == 5
    assert (labels.loc[176:, "state"] == "").all() and (labels.loc[176:, "block"] == -1).all()


def test_image_is_last_shown_flash_in_the_epoch(labels):
    img = labels["image"]
    assert img[7] == "" and img[8] == "im_A"  # first flash at 1.0 s = bin 8
    assert img[21] == "im_A"  # the omitted flash at 2.5 s does not change the image
    assert img[26] == "im_B"
    assert img[42] == "im_B" and img[43] == "im_C"  # onset 5.3 s lies inside bin 42 = [5.25, 5.375)
    assert (img[80:104] == "").all()  # gray epoch and the passive epoch before its first flash: nothing shown yet
    assert img[104] == "im_A" and img[180] == ""


def test_change_and_omitted_mark_the_250ms_window(labels):
    assert np.flatnonzero(labels["omitted"]).tolist() == [20, 21]  # [2.5, 2.75)
    assert np.flatnonzero(labels["is_change"]).tolist() == [26, 27, 42, 43, 44]  # [3.25, 3.5) and [5.3, 5.55)


def test_time_since_flash_counts_omitted_onsets(labels):
    tsf = labels["time_since_flash"].to_numpy()
    assert np.isnan(tsf[:8]).all() and tsf[8] == 0.0 and tsf[12] == 0.5
    assert tsf[21] == 0.125  # 2.625 - 2.5: the omitted flash counts
    assert tsf[43] == pytest.approx(5.375 - 5.3)
    assert np.isnan(tsf[80:104]).all() and tsf[105] == 0.125


def test_running_is_bin_mean_else_interpolated(labels):
    run = labels["running"].to_numpy()
    assert run[0] == 2.0  # samples 1 and 3 in [0, 0.125)
    assert run[8] == 10.0 and run[16] == 20.0
    assert run[12] == pytest.approx(15.625)  # no sample in [1.5, 1.625): interpolated at its centre 1.5625
    assert np.isnan(run[17:]).all()  # after the last sample


def test_licks_are_counted_per_bin(labels):
    licks = labels["licks"].to_numpy()
    assert licks[0] == 2 and licks[1] == 1 and licks[20] == 1 and licks.sum() == 4  # 30 s is out of range


def test_trial_outcome(labels):
    out = labels["trial_outcome"]
    assert out[0] == "" and out[4] == "hit" and out[23] == "hit" and out[24] == "false_alarm"
    assert out[48] == "" and out[64] == "correct_reject" and out[76] == "" and out[100] == "miss"


def test_without_behavior_streams():
    lab = bin_labels(small_session(with_behavior=False), bin_edges(0.0, 4.0, DT))
    assert lab["running"].isna().all() and (lab["licks"] == 0).all()


def test_matches_a_per_bin_loop_on_random_edges():
    # an independent, slow definition of image / time_since_flash / state for a grid off the flash times
    s = small_session()
    edges = bin_edges(0.37, 23.0, 0.07)
    lab = bin_labels(s, edges)
    st = s.stimuli[s.stimuli["image_name"].notna()]
    for k in range(0, len(edges) - 1, 7):
        t = edges[k]
        ep = s.epochs[(s.epochs.start_time <= t) & (t < s.epochs.stop_time)]
        assert lab.loc[k, "state"] == (ep.state.iloc[0] if len(ep) else "")
        before = st[(st.start_time <= t) & (st.start_time >= (ep.start_time.iloc[0] if len(ep) else np.inf))]
        shown = before[~before.omitted]
        assert lab.loc[k, "image"] == (shown.image_name.iloc[-1] if len(shown) else "")
        expected = t - before.start_time.iloc[-1] if len(before) else np.nan
        np.testing.assert_equal(lab.loc[k, "time_since_flash"], expected)


def test_recording_without_flashes_has_no_flash_labels():
    """A generic NWB recording has no stimulus table: every flash label is empty, nothing fails."""
    from dataclasses import replace

    bare = replace(small_session(with_behavior=False), stimuli=pd.DataFrame(), trials=pd.DataFrame())
    lab = bin_labels(bare, bin_edges(0.0, 5.0, 0.01))
    assert len(lab) == 500
    assert lab["time_since_flash"].isna().all() and (lab["image"] == "").all()
    assert not lab["is_change"].any() and not lab["omitted"].any() and (lab["licks"] == 0).all()
