"""Writing a Session to VBN-layout NWB: a lossless round trip through the reader, schema-valid, all or nothing."""

import numpy as np
import pandas as pd
import pytest
from pynwb import validate

from neurojepa.data.nwb_read import open_session
from neurojepa.data.nwb_write import write_session_nwb
from neurojepa.data.session import InMemorySpikes, SpikeTrains


def test_round_trip_keeps_spikes_tables_behaviour_and_ground_truth(small_session, tmp_path):
    s = small_session
    path = write_session_nwb(s, tmp_path / "s.nwb")
    assert validate(path=str(path)) == []
    with open_session(path) as r:
        assert r.session_id == "sim-small"
        np.testing.assert_array_equal(r.spikes.unit_ids, s.spikes.unit_ids)
        for u in s.spikes.unit_ids:
            np.testing.assert_array_equal(r.spike_times([u]).times, s.spike_times([u]).times)
        cols = ["area", "cell_type", "quality", "isi_violations", "peak_channel_id"]
        pd.testing.assert_frame_equal(r.units[cols], s.units[cols], check_dtype=False, check_index_type=False)
        pd.testing.assert_frame_equal(r.epochs, s.epochs, check_dtype=False)  # derived again from stimulus_block
        pd.testing.assert_frame_equal(r.stimuli[s.stimuli.columns], s.stimuli, check_dtype=False)
        pd.testing.assert_frame_equal(r.trials[s.trials.columns], s.trials, check_dtype=False)
        for name, b in s.behavior.items():
            np.testing.assert_array_equal(r.behavior[name].timestamps, b.timestamps)
            if b.data is None:
                assert r.behavior[name].is_events
            else:
                np.testing.assert_allclose(r.behavior[name].data, b.data)
        assert r.behavior["running_speed"].unit == "cm/s"
        g, e = r.ground_truth, s.ground_truth
        assert (g.latent_dt, g.latent_t0, g.n_latents) == (e.latent_dt, e.latent_t0, e.n_latents)
        np.testing.assert_array_equal(g.unit_ids, e.unit_ids)
        for name in ("latents", "loadings", "baseline_hz"):
            np.testing.assert_array_equal(getattr(g, name), getattr(e, name))
        for name in ("state_gain", "state_offset", "state_remix"):
            assert getattr(g, name).keys() == getattr(e, name).keys()
            for k in getattr(e, name):
                np.testing.assert_array_equal(getattr(g, name)[k], getattr(e, name)[k])
        # the written epochs table lets generic tools see the same states
        via_table = open_session(path, states_from="epochs:state").epochs
        assert via_table["state"].tolist() == ["active", "gray", "passive"]


class _FailingSpikes(InMemorySpikes):
    """Raises on the third unit read: a simulator that dies mid-write."""

    def __init__(self, trains):
        super().__init__(trains)
        self.calls = []

    def read(self, unit_ids=None, t_start=None, t_stop=None):
        self.calls.append(None if unit_ids is None else list(unit_ids))
        if len(self.calls) == 3:
            raise RuntimeError("boom")
        return super().read(unit_ids, t_start, t_stop)


def test_failed_write_leaves_nothing_under_the_final_name(small_session, tmp_path):
    trains = small_session.spikes.read()
    small_session.spikes = _FailingSpikes(trains)
    with pytest.raises(RuntimeError, match="boom"):
        write_session_nwb(small_session, tmp_path / "s.nwb")
    assert list(tmp_path.iterdir()) == []
    # spikes were streamed one unit per read (unit 3 has no spikes, so is never asked for)
    assert small_session.spikes.calls == [[5], [9], [12]]


def test_conflicting_peak_channels_are_renumbered_and_areas_survive(small_session, tmp_path):
    small_session.units["peak_channel_id"] = 7  # one channel claimed by units in three areas
    with open_session(write_session_nwb(small_session, tmp_path / "s.nwb")) as r:
        assert r.units["area"].tolist() == ["VISp", "VISp", "LP", "VISl"]
        assert r.units["peak_channel_id"].nunique() == 4


def test_many_units_stream_into_one_chunked_dataset(small_session, tmp_path):
    import h5py

    rng = np.random.default_rng(1)
    ids = np.arange(300)
    trains = [np.sort(rng.uniform(0, 13, rng.integers(0, 40))) for _ in ids]
    small_session.spikes = InMemorySpikes(SpikeTrains.from_list(ids, trains))
    small_session.units = pd.DataFrame({"area": "VISp", "cell_type": "rs"}, index=pd.Index(ids, name="unit_id"))
    small_session.ground_truth = None
    path = write_session_nwb(small_session, tmp_path / "s.nwb")
    with h5py.File(path) as f:
        ds = f["units/spike_times"]
        assert ds.chunks is not None and ds.shape == (sum(map(len, trains)),)
        np.testing.assert_array_equal(ds[()], np.concatenate(trains))
        np.testing.assert_array_equal(f["units/spike_times_index"][()], np.cumsum([len(t) for t in trains]))
