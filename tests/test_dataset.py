"""PreparedSession, Intervals, WindowDataset and StateBalancedBatches on a small simulated session."""

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from neurojepa.data.dataset import PreparedSession, read_table, write_table
from neurojepa.data.intervals import Intervals
from neurojepa.data.samplers import StateBalancedBatches
from neurojepa.data.windows import WindowDataset, WindowSource, collate_windows
from neurojepa.data.prepare import PrepareConfig, prepare_session
from neurojepa.errors import InputError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def sim():
    from neurojepa.synthetic.simulate import simulate_session

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
    segs = ps.segments("train")
    ds = WindowDataset([WindowSource.in_memory(ps.load_counts(), segs, latents=ps.gt_latents)], window, stride)
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
        assert ds.state_names[0][item["state"]] == ps.labels["state"].iloc[s]
        np.testing.assert_array_equal(item["latents"].numpy(), ps.gt_latents[s : s + window])
    streamed = WindowDataset.from_prepared([ps.path], window, stride, with_gt=True)
    assert len(streamed) == len(ds)
    for i in (0, len(ds) // 2, len(ds) - 1):
        np.testing.assert_array_equal(streamed[i]["counts"].numpy(), ds[i]["counts"].numpy())
        np.testing.assert_array_equal(streamed[i]["latents"].numpy(), ds[i]["latents"].numpy())


def test_intervals_runs_and_window_starts_against_a_naive_scan():
    rng = np.random.default_rng(0)
    mask = rng.random(500) < 0.8
    state = np.repeat(rng.choice(["a", "b"], 25), 20)
    iv = Intervals.runs(mask, state)
    naive, t = [], 0
    while t < 500:
        if not mask[t]:
            t += 1
            continue
        u = t
        while u < 500 and mask[u] and state[u] == state[t]:
            u += 1
        naive.append((t, u))
        t = u
    assert iv == naive and list(iv.states) == [state[a] for a, _ in naive]
    starts, which = iv.window_starts(7, 3)
    assert starts.tolist() == [s for a, b in naive for s in range(a, b - 7 + 1, 3)]
    assert all(naive[k][0] <= s and s + 7 <= naive[k][1] for s, k in zip(starts, which))
    assert iv.keep(["a"]) == [r for r in naive if state[r[0]] == "a"] and iv.keep(None) is iv
    assert Intervals.of_split(np.where(mask, "train", "test"), None, "train") == Intervals.runs(mask)


def test_state_balanced_batches_are_seeded_balanced_and_batched(ps):
    segs = ps.segments("train")
    ds = WindowDataset([WindowSource.in_memory(ps.load_counts(), segs)], 32, 8)
    _, codes = ds.windows(0)
    sampler = StateBalancedBatches(codes, 8 * 200, 8, seed=1)
    batches = list(sampler)
    assert len(batches) == 200 and all(len(b) == 8 for b in batches)
    drawn = codes[np.concatenate(batches)]
    share = np.bincount(drawn) / len(drawn)
    assert np.allclose(share, 1 / len(share), atol=0.06)  # each state equally often, whatever its windows
    assert list(StateBalancedBatches(codes, 8 * 200, 8, seed=1)) == batches
    sampler.set_epoch(1)
    assert sampler.sampler is sampler and list(sampler) != batches  # Lightning sets the epoch on .sampler
    halves = [list(StateBalancedBatches(codes, 8 * 200, 8, seed=1, rank=r, world_size=2)) for r in (0, 1)]
    assert halves[0] + halves[1] != batches and sorted(halves[0] + halves[1]) == sorted(batches)
    batch = collate_windows(ds.__getitems__(batches[0]))
    assert batch.counts.shape == (8, 32, ps.n_units) and not batch.paired and batch.latents is None



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
