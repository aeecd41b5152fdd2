"""PreparedSession / WindowDataset / SpikeDataModule on a small simulated session."""

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from neurojepa.data.dataset import PreparedSession, SpikeDataModule, WindowDataset, read_table, write_table
from neurojepa.data.prepare import PrepareConfig, prepare_session
from neurojepa.errors import InputError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def sim():
    from neurojepa.data.simulate import simulate_session

    return simulate_session(seed=0, n_units=60, minutes=2)


@pytest.fixture(scope="module")
def prepared(sim, tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "prep"
    return prepare_session(sim, out, PrepareConfig(split_block_s=10.0, figure=False))


@pytest.fixture(scope="module")
def ps(prepared):
    return PreparedSession.load(prepared)


def test_prepared_session_contract(ps):
    assert ps.bin_size == 0.01 and ps.n_bins == len(ps.labels) == len(ps.split) == len(ps.bin_t0)
    np.testing.assert_array_equal(ps.bin_times(), ps.bin_t0)
    assert ps.counts.shape == (ps.n_bins, ps.n_units) and ps.load_counts().dtype in (np.uint8, np.uint16)
    assert ps.unit_ids.dtype == np.int64 and list(ps.units.index) == list(ps.unit_ids)
    assert ps.qc["units_kept"] == ps.n_units
    assert {"state", "block", "image", "is_change", "omitted", "time_since_flash", "running", "licks",
            "trial_outcome"} <= set(ps.labels.columns)
    assert set(ps.labels["state"]) == {"active", "gray", "passive"}
    assert ps.labels["is_change"].dtype == bool and pd.api.types.is_string_dtype(ps.labels["image"])
    assert set(ps.split) <= {"train", "val", "test", ""}
    assert ps.gt_latents.shape[0] == ps.n_bins and ps.gt_latents.dtype == np.float32
    assert ps.config["bin_size"] == 0.01


def test_units_kept_on_the_simulator_match_the_default_thresholds(sim, ps):
    u = sim.units
    ok = ((u["quality"] == "good") & (u["isi_violations"] < 0.5) & (u["amplitude_cutoff"] < 0.1)
          & (u["presence_ratio"] > 0.9) & (u["firing_rate"] > 0.1))
    assert list(ps.unit_ids) == list(u.index[ok.to_numpy()]) and 0 < ps.n_units < len(u)
    assert ps.qc["states"]["active"] > 0 and ps.qc["states"]["passive"] > 0


def test_segments_are_maximal_runs_of_one_split_in_one_state(ps):
    state = ps.labels["state"].to_numpy()
    for split in ("train", "val", "test"):
        segs = ps.segments(split)
        assert segs, split
        assert sum(b - a for a, b in segs) == int((ps.split == split).sum())
        for a, b in segs:
            assert set(ps.split[a:b]) == {split} and len(set(state[a:b])) == 1
            if a > 0:  # maximal: the bin before differs in split or state
                assert ps.split[a - 1] != split or state[a - 1] != state[a]
            if b < ps.n_bins:
                assert ps.split[b] != split or state[b] != state[b - 1]
    assert all(state[a] == "passive" for a, _ in ps.segments("train", states=["passive"]))
    with pytest.raises(InputError):
        ps.segments("training")


@pytest.mark.parametrize("window, stride", [(64, 16), (100, 37)])
def test_windows_stay_inside_segments_and_equal_the_counts(ps, window, stride):
    ds = WindowDataset(ps, "train", window=window, stride=stride)
    segs = ps.segments("train")
    expect = sum(max(0, (b - a - window) // stride + 1) for a, b in segs)
    assert len(ds) == expect > 0
    counts = ps.load_counts()
    seg_of = np.full(ps.n_bins, -1)
    for k, (a, b) in enumerate(segs):
        seg_of[a:b] = k
    for i in range(0, len(ds), 7):
        item = ds[i]
        s = item["start"]
        assert len(set(seg_of[s : s + window])) == 1 and seg_of[s] >= 0  # never straddles a boundary
        assert item["counts"].dtype == torch.float32 and item["counts"].shape == (window, ps.n_units)
        np.testing.assert_array_equal(item["counts"].numpy(), counts[s : s + window])
        assert item["state"] == ps.labels["state"].iloc[s]
        np.testing.assert_array_equal(item["gt_latents"].numpy(), ps.gt_latents[s : s + window])
    lazy = WindowDataset(ps, "train", window=window, stride=stride, preload=False)
    np.testing.assert_array_equal(lazy[len(ds) - 1]["counts"].numpy(), ds[len(ds) - 1]["counts"].numpy())


def test_datamodule_batches_and_seeded_shuffle(prepared, ps):
    def first_starts(seed):
        dm = SpikeDataModule(prepared, window=32, stride=32, batch_size=8, seed=seed)
        dm.setup("fit")
        return next(iter(dm.train_dataloader()))["start"].tolist()

    dm = SpikeDataModule(prepared, window=32, stride=32, batch_size=8, states=["active"])
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert batch["counts"].shape == (8, 32, ps.n_units) and set(batch["state"]) == {"active"}
    assert batch["start"].tolist() == sorted(batch["start"].tolist())  # val keeps time order
    assert len(dm.test_dataloader().dataset) > 0
    assert first_starts(0) == first_starts(0) != first_starts(1)


def test_table_roundtrip(tmp_path):
    df = pd.DataFrame({"area": ["VISp", None, "LP"], "x": [1.5, np.nan, 2.0], "ok": [True, False, True],
                       "n": np.array([1, 2, 3], dtype=np.int64)}, index=pd.Index([10, 11, 12], name="unit_id"))
    with h5py.File(tmp_path / "t.h5", "w") as h5:
        write_table(h5.create_group("t"), df, index="unit_id")
    with h5py.File(tmp_path / "t.h5") as h5:
        back = read_table(h5["t"])
    assert list(back["area"]) == ["VISp", "", "LP"]  # missing text is stored as ""
    pd.testing.assert_frame_equal(back.drop(columns="area"), df.drop(columns="area"))


def test_load_rejects_a_directory_that_is_not_prepared(tmp_path):
    with pytest.raises(InputError, match="not a prepared dataset"):
        PreparedSession.load(tmp_path)
