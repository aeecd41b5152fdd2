"""`neurojepa inspect`: the one-screen summary and the active/passive flash-sequence check."""

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from neurojepa.cli import main
from neurojepa.data.inspect import flash_sequences_match, print_summary, validate_spike_times
from neurojepa.errors import InputError
from neurojepa.data.nwb_read import open_session
from neurojepa.data.nwb_write import write_session_nwb


def _text(session) -> str:
    con = Console(record=True, width=140)
    print_summary(session, console=con)
    return con.export_text()


def test_summary_of_a_written_session_shows_areas_states_replay_trials_behaviour_truth(small_session, tmp_path):
    with open_session(write_session_nwb(small_session, tmp_path / "s.nwb")) as s:
        out = _text(s)
        assert s.spikes.values_read == 0  # the summary uses the count index only
    for expected in ("sim-small", "VISp", "LP", "VISl", "4 units, 67 spikes", "active", "passive", "gray",
                     "flash sequences: identical", "trials: 2", "hit 1", "miss 1", "running_speed", "samples (cm/s)",
                     "licks", "events", "ground truth: present (3 latents at 10 ms"):
        assert expected in out, expected
    lines = {ln.split()[1]: ln for ln in out.splitlines() if ln.startswith("│ ") and ln.split()[1] in ("VISp", "LP")}
    assert [c.strip() for c in lines["VISp"].split("│")[1:5]] == ["VISp", "2", "1", "10"]  # area, units, fs, spikes
    assert [c.strip() for c in lines["LP"].split("│")[1:5]] == ["LP", "1", "0", "50"]
    active = next(ln for ln in out.splitlines() if ln.startswith("│ active ") and "im_a" in ln)
    # 5 presentations with 1 omission: 4 flashes of 3 images, 2 changes
    assert [c.strip() for c in active.split("│")[1:6]] == ["active", "4", "3: im_a, im_b, im_c", "2", "1"]


def test_flash_sequences_match_detects_a_changed_replay_and_missing_passive(small_session):
    assert flash_sequences_match(small_session) is True
    st = small_session.stimuli.copy()
    last_passive = st.index[st["stimulus_block"] == 2][-1]
    st.loc[last_passive, "image_name"] = "im_a"
    small_session.stimuli = st
    assert flash_sequences_match(small_session) is False
    small_session.epochs = small_session.epochs.assign(state=["active", "gray", "replay"])
    assert flash_sequences_match(small_session) is None
    small_session.stimuli = pd.DataFrame()
    assert flash_sequences_match(small_session) is None
    assert "ground truth: present" in _text(small_session)  # in-memory sessions summarise too


def test_cli_inspect_real_file(real_nwb, capsys):
    assert main(["inspect", str(real_nwb), "--states-from", "epochs"]) == 0
    out = capsys.readouterr().out
    assert "3 units, 21,354 spikes" in out and "wake" in out and "ground truth: absent" in out


def _with_spike_times(src, dst, edit):
    import shutil

    import h5py

    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        f["units/spike_times"][...] = edit(f["units/spike_times"][()])
    return dst


@pytest.mark.parametrize("value, problem", [(np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"),
                                            (-1.0, "negative spike times")])
def test_cli_inspect_refuses_bad_spike_times_in_one_line(real_nwb, tmp_path, capsys, value, problem):
    bad = _with_spike_times(real_nwb, tmp_path / "bad.nwb", lambda t: np.r_[t[:100], value, t[101:]])
    assert main(["inspect", str(bad)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("neurojepa: error:") and str(bad) in err[0] and problem in err[0]
    assert "Traceback" not in captured.err
    assert main(["inspect", str(bad), "--quick"]) == 0  # the index alone cannot see it
    assert "not checked (--quick)" in capsys.readouterr().out


def test_cli_inspect_warns_of_unsorted_and_duplicate_spikes(real_nwb, tmp_path, capsys):
    def edit(t):
        t = t.copy()
        t[10], t[11] = t[11], t[10]  # unit 0: one swapped pair
        t[20] = t[21]  # and one duplicate
        return t

    assert main(["inspect", str(_with_spike_times(real_nwb, tmp_path / "odd.nwb", edit))]) == 0
    out = capsys.readouterr().out
    assert "1 units have unsorted spike times" in out and "duplicate spikes in 1 units" in out
    assert main(["inspect", str(real_nwb)]) == 0
    assert "spike times: all finite, non-negative and sorted" in capsys.readouterr().out


def test_in_memory_session_with_nan_spike_times_is_refused(small_session):
    trains = small_session.spikes.trains
    trains.times[3] = np.nan
    with pytest.raises(InputError, match="non-finite"):
        validate_spike_times(small_session)


def test_duplicate_unit_ids_are_a_corrupt_units_table(real_nwb, tmp_path):
    import shutil

    import h5py

    bad = tmp_path / "dup.nwb"
    shutil.copy(real_nwb, bad)
    with h5py.File(bad, "r+") as f:
        f["units/id"][...] = np.zeros(len(f["units/id"]), dtype=f["units/id"].dtype)
    with pytest.raises(InputError, match="duplicate unit ids"):
        open_session(bad)
