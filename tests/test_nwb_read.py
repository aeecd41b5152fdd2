"""Reading NWB: a VBN-layout file built directly with pynwb, the real phy export, laziness, and bad input."""

import pickle
import shutil
from datetime import datetime, timezone

import h5py
import numpy as np
import pandas as pd
import pytest
from pynwb import NWBHDF5IO, NWBFile, ProcessingModule, TimeSeries
from pynwb.epoch import TimeIntervals

from neurojepa.cli import main
from neurojepa.data import nwb_read
from neurojepa.data.nwb_read import epochs_from_stimuli, open_session
from neurojepa.errors import InputError

T0 = datetime(2021, 1, 1, tzinfo=timezone.utc)
IMAGES = ["im1", "im2", "im2", "omitted", "im3", "im3"]
# unit id -> (peak channel, waveform_duration ms, spike times)
UNITS = {
    11: (100, 0.30, np.array([0.1, 0.5, 1.2, 2.0, 7.7, 30.0, 30.5])),
    12: (101, 0.65, np.array([0.2, 3.3, 31.0])),
    21: (200, 0.55, np.array([1.0, 1.0005, 6.0, 29.9, 33.0, 34.0])),
}


def _presentations(name, block, t0, active, images, **vbn_extras):
    """VBN presentation rows; ``vbn_extras`` (``tags``, ``timeseries``) exercise ragged and reference columns."""
    t = TimeIntervals(name=f"{name}_presentations", description=name)
    for col in ("stimulus_block", "stimulus_name", "image_name", "active", "is_change", "omitted"):
        t.add_column(col, col)
    for k, im in enumerate(images):
        start = t0 + 0.75 * k
        t.add_interval(start_time=start, stop_time=start + 0.25, stimulus_block=block, stimulus_name=name,
                       image_name=im, active=active, is_change=k in (1, 4), omitted=im == "omitted", **vbn_extras)
    return t


def _write_vbn(path, with_units=True):
    """A VBN-layout file written with pynwb only: 2 probes/areas, 5 blocks, trials, running, licks, rewards."""
    nwb = NWBFile(session_description="vbn-like", identifier="1234", session_start_time=T0)
    dev = nwb.create_device(name="probes")
    probes = {p: nwb.create_electrode_group(name=p, description=p, location=p, device=dev) for p in ("probeA", "probeB")}
    nwb.add_electrode_column("structure_acronym", "area")
    for ch, probe, area in ((100, "probeA", "VISp"), (101, "probeA", "VISp"), (200, "probeB", "LP")):
        nwb.add_electrode(id=ch, group=probes[probe], location=area, structure_acronym=area)
    if with_units:
        nwb.add_unit_column("peak_channel_id", "peak channel")
        nwb.add_unit_column("waveform_duration", "ms")
        nwb.add_unit_column("quality", "label")
        nwb.add_unit_column("snr", "snr")
        for uid, (ch, wd, st) in UNITS.items():
            nwb.add_unit(id=uid, spike_times=st, peak_channel_id=ch, waveform_duration=wd, quality="good", snr=2.0)
    behaviour = {}
    for name, ts_name, data, ts in (("running", "speed", np.arange(5.0), np.arange(5) / 60),
                                    ("licking", "licks", np.arange(2), np.array([0.9, 1.1])),
                                    ("rewards", "volume", np.array([0.005]), np.array([0.95]))):
        mod = ProcessingModule(name=name, description=name)
        nwb.add_processing_module(mod)
        behaviour[name] = mod.add(TimeSeries(name=ts_name, data=data, timestamps=ts,
                                             unit="cm/s" if name == "running" else "n.a."))
    # written out of time order on purpose: the reader must sort
    nwb.add_time_intervals(_presentations("gabor_20_deg", 2, 12.0, False, ["g"] * 4, tags=["stimulus_time_interval"],
                                          timeseries=[behaviour["running"]]))
    nwb.add_time_intervals(_merge_images())
    sp = TimeIntervals(name="spontaneous_presentations", description="gray")
    sp.add_column("stimulus_block", "block")
    sp.add_column("stimulus_name", "name")
    sp.add_interval(start_time=5.0, stop_time=10.0, stimulus_block=1, stimulus_name="spontaneous")
    sp.add_interval(start_time=16.0, stop_time=99.0, stimulus_block=3, stimulus_name="spontaneous")
    nwb.add_time_intervals(sp)
    nwb.add_trial_column("hit", "hit")
    nwb.add_trial_column("lick_times", "licks", index=True)
    nwb.add_trial(start_time=0.0, stop_time=2.0, hit=True, lick_times=[0.9, 1.1])
    nwb.add_trial(start_time=2.0, stop_time=4.5, hit=False, lick_times=[])
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path


def _merge_images():
    """Active block 0 at t=0 and its passive replay block 4 at t=100, one table as in VBN."""
    t = _presentations("Natural_Images_G", 0, 0.0, True, IMAGES)
    for k, im in enumerate(IMAGES):
        start = 100.0 + 0.75 * k
        t.add_interval(start_time=start, stop_time=start + 0.25, stimulus_block=4, stimulus_name="Natural_Images_G",
                       image_name=im, active=False, is_change=k in (1, 4), omitted=im == "omitted")
    return t


@pytest.fixture
def vbn_nwb(tmp_path):
    return _write_vbn(tmp_path / "vbn.nwb")


# ------------------------------------------------------------------------------------------------ VBN layout
def test_vbn_layout_reads_areas_states_trials_and_sorted_stimuli(vbn_nwb):
    with open_session(vbn_nwb) as s:
        assert s.session_id == "1234"
        assert s.units["area"].to_dict() == {11: "VISp", 12: "VISp", 21: "LP"}  # via peak_channel_id -> electrodes
        assert s.units["cell_type"].to_dict() == {11: "fs", 12: "rs", 21: "rs"}  # waveform_duration < 0.4 ms
        assert {"quality", "snr", "waveform_duration"} <= set(s.units.columns)
        assert s.epochs["state"].tolist() == ["active", "gray", "gabor", "spontaneous", "passive"]
        assert s.epochs["block"].tolist() == [0, 1, 2, 3, 4]
        np.testing.assert_allclose(s.epochs["stop_time"], [0.75 * 5 + 0.25, 10.0, 12 + 0.75 * 3 + 0.25, 99.0, 104.0])
        st = s.stimuli
        assert len(st) == 6 + 4 + 2 + 6 and st["start_time"].is_monotonic_increasing
        np.testing.assert_allclose(st["stop_time"] - st["start_time"], np.where(st["stimulus_name"] == "spontaneous",
                                                                                  st["stop_time"] - st["start_time"], 0.25))
        assert st.loc[st["stimulus_block"] == 4, "image_name"].tolist() == IMAGES
        gabor = st[st["stimulus_block"] == 2]
        assert gabor["tags"].map(list).tolist() == [["stimulus_time_interval"]] * 4  # ragged -> lists
        assert "timeseries" not in st  # references to TimeSeries are skipped
        assert s.trials["hit"].tolist() == [True, False]
        assert s.trials["lick_times"].map(list).tolist() == [[0.9, 1.1], []]
        np.testing.assert_allclose(s.behavior["running_speed"].data, np.arange(5.0))
        assert s.behavior["running_speed"].unit == "cm/s"
        np.testing.assert_allclose(s.behavior["licks"].timestamps, [0.9, 1.1])
        assert s.behavior["licks"].is_events and s.behavior["rewards"].timestamps.tolist() == [0.95]
        assert s.ground_truth is None
        for uid, (_, _, times) in UNITS.items():
            np.testing.assert_array_equal(s.spike_times([uid]).times, times)


def test_passive_block_recognised_by_image_sequence_when_names_differ():
    rows = [dict(start_time=float(i), stop_time=i + 0.25, stimulus_block=b, stimulus_name=n, image_name=im, active=a)
            for b, n, a, base in ((0, "images_active", True, 0), (1, "images_replay", False, 10), (2, "other_images", False, 20))
            for i, im in zip(range(base, base + 3), ("x", "y", "x") if b < 2 else ("x", "x", "y"))]
    ep = epochs_from_stimuli(pd.DataFrame(rows))
    assert ep["state"].tolist() == ["active", "passive", "other_images"]


# ------------------------------------------------------------------------------------------------ laziness
def test_opening_reads_no_spike_times_and_ranges_read_only_what_is_asked(vbn_nwb, monkeypatch):
    touched = []
    real_getitem = h5py.Dataset.__getitem__

    def spy(self, key):
        touched.append(self.name)
        return real_getitem(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    with open_session(vbn_nwb) as s:
        assert "/units/spike_times" not in touched and s.spikes.values_read == 0
        assert s.spike_counts().to_dict() == {u: len(v[2]) for u, v in UNITS.items()}
        assert "/units/spike_times" not in touched
        got = s.spike_times([21], 1.0, 29.9).times  # t_start inclusive, t_stop exclusive
        np.testing.assert_array_equal(got, [1.0, 1.0005, 6.0])
        assert s.spikes.values_read == len(UNITS[21][2])  # one small unit: read whole, nothing else
        clone = pickle.loads(pickle.dumps(s.spikes))  # e.g. a DataLoader worker: reopens the file by path
        np.testing.assert_array_equal(clone.read([12]).times, UNITS[12][2])
        clone.close()


def test_large_units_are_range_searched_on_disk(vbn_nwb, monkeypatch):
    monkeypatch.setattr(nwb_read, "BISECT_MIN_SPIKES", 2)
    with open_session(vbn_nwb) as s:
        times = UNITS[11][2]
        for a, b in ((0.5, 7.7), (None, 2.0), (1.0, None), (40.0, 50.0), (0.0, 0.1)):
            before = s.spikes.values_read
            got = s.spike_times([11], a, b).times
            ref = times[(times >= (a if a is not None else -np.inf)) & (times < (b if b is not None else np.inf))]
            np.testing.assert_array_equal(got, ref)
            steps = 2 * int(np.ceil(np.log2(len(times) + 1)))  # two binary searches, one value per step
            assert s.spikes.values_read - before <= len(ref) + steps


# ------------------------------------------------------------------------------------------------ real file
def test_real_file_generic_layout(real_nwb):
    with h5py.File(real_nwb) as f:  # independent reference
        ends = f["units/spike_times_index"][()].astype(int)
        all_times = f["units/spike_times"][()]
    with open_session(real_nwb) as s:
        assert s.n_units == 3 and int(s.spike_counts().sum()) == 21_354
        np.testing.assert_array_equal(s.spike_counts().to_numpy(), np.diff(np.r_[0, ends]))
        assert not {"isi_violations", "amplitude_cutoff", "presence_ratio", "snr"} & set(s.units.columns)
        assert set(s.units["area"]) == {"unknown"} and set(s.units["cell_type"]) == {"unknown"}
        assert s.states == ["all"]
        assert s.t_start == all_times.min() and s.t_stop > all_times.max()
        assert len(s.spike_times().times) == 21_354
    with open_session(real_nwb, states_from="epochs") as s:
        assert s.states == ["wake"]
        assert (s.t_start, s.t_stop) == (0.0, pytest.approx(1087.5289))


@pytest.mark.parametrize("states_from, states", [
    ("spontaneous_presentations", ["spontaneous"] * 2),  # default column: stimulus_name
    ("gabor_20_deg_presentations:image_name", ["g"] * 4),
    ("trials", ["trials"] * 2),  # no string column: the table's name
])
def test_states_from_any_intervals_table_overrides_vbn_blocks(vbn_nwb, states_from, states):
    with open_session(vbn_nwb, states_from=states_from) as s:
        assert s.epochs["state"].tolist() == states and s.epochs["start_time"].is_monotonic_increasing


@pytest.mark.parametrize("states_from, expected", [("trials", "tables: epochs"), ("epochs:label", "columns: tags")])
def test_missing_states_table_or_column_lists_what_exists(real_nwb, states_from, expected):
    with pytest.raises(InputError, match=expected):
        open_session(real_nwb, states_from=states_from)


# ------------------------------------------------------------------------------------------------ bad input
def _edit_spikes(src, dst, edit):
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        ds = f["units/spike_times"]
        ds[...] = edit(ds[()])
    return dst


def test_nan_and_negative_spike_times_are_refused_naming_file_and_unit(vbn_nwb, tmp_path):
    for name, value in (("nan", np.nan), ("neg", -1.0)):
        bad = _edit_spikes(vbn_nwb, tmp_path / f"{name}.nwb", lambda t: np.r_[t[:8], value, t[9:]])
        with open_session(bad) as s:  # unit 21 starts at offset 7+3=10; index 8 is unit 12's second spike
            with pytest.raises(InputError, match=rf"{name}\.nwb: unit 12 has"):
                s.spike_times([12])
            s.spike_times([11, 21])  # other units stay readable


def test_unsorted_spike_times_are_sorted_with_a_warning(vbn_nwb, tmp_path, caplog):
    bad = _edit_spikes(vbn_nwb, tmp_path / "unsorted.nwb", lambda t: np.r_[t[:7][::-1], t[7:]])
    with open_session(bad) as s:
        got = s.spike_times([11]).times
    np.testing.assert_array_equal(got, UNITS[11][2])
    assert "unit 11 has unsorted spike times" in caplog.text


@pytest.mark.parametrize("make, problem", [
    (lambda p, real: p.write_text("not a neurodata file\n") and p, "not an HDF5 file"),
    (lambda p, real: p.write_bytes(real.read_bytes()[:200_000]) and p, "truncated or corrupt"),
    (lambda p, real: _write_vbn(p, with_units=False), "no Units table"),
    (lambda p, real: h5py.File(p, "w").close() or p, "HDF5 file but not NWB"),
    (lambda p, real: p.with_name("absent.nwb"), "no such file"),
])
def test_bad_files_give_one_clear_line_and_exit_code_2(tmp_path, real_nwb, capsys, make, problem):
    path = make(tmp_path / "bad.nwb", real_nwb)
    with pytest.raises(InputError, match=problem) as err:
        open_session(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    capsys.readouterr()
    assert main(["inspect", str(path)]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and problem in err_lines[0] and err_lines[0].startswith("neurojepa: error:")


def test_cli_bad_states_from_is_one_line(real_nwb, capsys):
    assert main(["inspect", str(real_nwb), "--states-from", "epochs:nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no column 'nope'" in err[0]
