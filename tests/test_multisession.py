"""Many sessions: the simulated set shares its latent generator, the streamed dataset matches the one-session
reader window for window, and the sampler keeps batches single-session and balanced."""

import pickle

import numpy as np
import pytest
import torch

from neurojepa.cli import main
from neurojepa.data.dataset import PreparedSession
from neurojepa.data.samplers import SessionBatchSampler
from neurojepa.data.windows import WindowDataset, WindowSource, collate_windows
from neurojepa.data.nwb_read import open_session
from neurojepa.data.prepare import PrepareConfig, prepare_session
from neurojepa.synthetic.simulate import IMAGES, LATENT_DT, shared_dynamics, simulate_session, simulate_sessions

WINDOW, STRIDE = 32, 8


@pytest.fixture(scope="module")
def sessions():
    return simulate_sessions(3, seed=2, n_units=30, minutes=2)  # QC keeps 21, 19, 16 units


@pytest.fixture(scope="module")
def prepared(sessions, tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared")
    cfg = PrepareConfig(figure=False, split_block_s=10)  # 10 s blocks: every split gets some of each state
    return [prepare_session(s, root / f"s{i}", cfg) for i, s in enumerate(sessions)]


def _image_response(session) -> np.ndarray:
    """(8 images, 4) mean of z[0:4] 120 ms after each shown flash of each image in the active block (the alpha
    kernel's peak: 40 ms latency + 80 ms tau)."""
    z = session.ground_truth.latents_at(np.arange(0, session.t_stop, LATENT_DT))
    st = session.stimuli
    flashes = st[st["active"] & st["image_name"].isin(IMAGES)]
    rows = np.round((flashes["start_time"].to_numpy() + 0.12) / LATENT_DT).astype(int)
    names = flashes["image_name"].to_numpy()
    return np.stack([z[rows[names == im], :4].mean(0) for im in IMAGES])


def _colcorr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a - a.mean(0), b - b.mean(0)
    return (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))


def test_sessions_share_the_stimulus_code_of_the_latents_but_not_neurons_or_tasks(sessions):
    truth = shared_dynamics(2)["image"]  # the response vectors every session of set 2 is built from
    # 6 min blocks so that every image is shown; 2 units keep it fast (the latents do not depend on the units)
    for s in simulate_sessions(2, seed=2, n_units=2, minutes=6):
        assert _colcorr(_image_response(s), truth).min() > 0.9
    # a session with its own generator (the single-session default) answers the same images differently
    own = simulate_session(seed=123, n_units=2, minutes=6)
    assert _colcorr(_image_response(own), truth).mean() < 0.7
    # populations and task sequences differ between sessions of the set
    lo = [s.ground_truth.loadings for s in sessions]
    assert not np.allclose(lo[0], lo[1])
    imgs = [s.stimuli["image_name"].to_numpy()[:40] for s in sessions]
    assert not np.array_equal(imgs[0], imgs[1])
    assert len({s.session_id for s in sessions}) == 3


def test_simulate_cli_writes_k_sessions_with_ground_truth(tmp_path):
    assert main(["simulate", "--sessions", "2", "--out", str(tmp_path / "set"), "--units", "8", "--minutes", "1"]) == 0
    files = sorted((tmp_path / "set").glob("*.nwb"))
    assert [f.name for f in files] == ["session_00.nwb", "session_01.nwb"]
    read = [open_session(f) for f in files]
    assert read[0].session_id != read[1].session_id
    assert all(r.ground_truth is not None and r.n_units == 8 for r in read)
    assert main(["simulate", "--sessions", "0", "--out", str(tmp_path / "none")]) == 2


def test_streamed_windows_match_naive_slices_and_the_in_memory_source(prepared):
    ds = WindowDataset.from_prepared(prepared, WINDOW, STRIDE, split="train", with_gt=True, max_open=1)
    assert ds.n_sessions == 3 and len(set(ds.n_units.tolist())) > 1  # QC leaves different unit counts
    for s, (a, b) in enumerate(ds.session_ranges):
        ps = PreparedSession.load(prepared[s])
        counts, gt, state = ps.load_counts(), ps.gt_latents, ps.labels["state"].to_numpy().astype(str)
        # the reference: every WINDOW-bin window on the STRIDE grid of each maximal train run of one state
        split = ps.split == "train"
        starts, t = [], 0
        while t < ps.n_bins:  # scan the maximal runs bin by bin
            if not split[t]:
                t += 1
                continue
            u = t
            while u < ps.n_bins and split[u] and state[u] == state[t]:
                u += 1
            starts += list(range(t, u - WINDOW + 1, STRIDE))
            t = u
        assert b - a == len(starts)
        mem = WindowDataset([WindowSource.in_memory(counts, ps.segments("train"), latents=gt)], WINDOW, STRIDE)
        assert len(mem) == len(starts)
        for j in np.linspace(0, len(starts) - 1, 7).astype(int):  # first, last and between
            item, want = ds[a + j], starts[j]
            assert item["session"] == s and item["start"] == want
            assert torch.equal(item["counts"], torch.from_numpy(counts[want:want + WINDOW].astype(np.float32)))
            assert torch.equal(item["latents"], torch.from_numpy(gt[want:want + WINDOW].astype(np.float32)))
            assert torch.equal(mem[j]["counts"], item["counts"]) and torch.equal(mem[j]["latents"], item["latents"])
            assert ds.state_names[s][item["state"]] == state[want]
            assert len(ds._open) <= 1  # the LRU keeps at most max_open files
    with pytest.raises(IndexError):
        ds[len(ds)]
    # a batch is read in merged row runs: the same windows as one read each, in the batch's order
    a, b = ds.session_ranges[1]
    batch = [b - 1, a, a + 1, a + 40, a + 2, a]
    for got, i in zip(ds.__getitems__(batch), batch):
        want = ds[i]
        assert got["start"] == want["start"] and torch.equal(got["counts"], want["counts"])
        assert torch.equal(got["latents"], want["latents"])


def test_handles_are_not_pickled_and_workers_read_the_same(prepared):
    ds = WindowDataset.from_prepared(prepared, WINDOW, STRIDE, split="val", max_open=2)
    ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert not clone._open and torch.equal(clone[0]["counts"], ds[0]["counts"])
    sampler = SessionBatchSampler(ds, batch_size=4, batches_per_session=3, seed=1)
    kw = dict(batch_sampler=sampler, collate_fn=collate_windows)
    serial = list(torch.utils.data.DataLoader(ds, **kw))
    forked = list(torch.utils.data.DataLoader(ds, num_workers=2, multiprocessing_context="fork", **kw))
    assert len(serial) == len(forked) == 9
    for x, y in zip(serial, forked):
        assert x.session == y.session and torch.equal(x.counts, y.counts)
        assert x.counts.shape == (4, WINDOW, ds.n_units[x.session])


def test_sampler_is_single_session_balanced_seeded_and_splits_ranks(prepared):
    ds = WindowDataset.from_prepared(prepared, WINDOW, STRIDE, split="train")
    sampler = SessionBatchSampler(ds, batch_size=16, seed=3)
    batches = list(sampler)
    owner = [{ds.locate(i)[0] for i in b} for b in batches]
    assert all(len(o) == 1 for o in owner)  # one session per batch
    seq = [o.pop() for o in owner]
    n = ds.n_sessions
    assert len(seq) == n * sampler.batches_per_session
    for r in range(0, len(seq), n):  # every round holds each session once
        assert sorted(seq[r : r + n]) == list(range(n))
    for s, (a, b) in enumerate(ds.session_ranges):  # enough windows: a distinct subset, all inside the session
        idx = np.concatenate([bt for bt, o in zip(batches, seq) if o == s])
        assert len(np.unique(idx)) == len(idx) and idx.min() >= a and idx.max() < b
    assert list(SessionBatchSampler(ds, 16, seed=3)) == batches
    sampler.set_epoch(1)
    assert list(sampler) != batches
    r0, r1 = (list(SessionBatchSampler(ds, 16, seed=3, rank=r, world_size=2)) for r in (0, 1))
    assert len(r0) == len(r1) and r0 + r1 != batches and sorted(map(tuple, r0 + r1)) == sorted(map(tuple, batches))
    # a small session cycles through its windows to give as many batches as the others
    small = SessionBatchSampler(ds, batch_size=16, batches_per_session=3 * len(ds) // 16, seed=0)
    assert sum(1 for _ in small) == n * small.batches_per_session


def test_collate_rejects_mixed_sessions(prepared):
    ds = WindowDataset.from_prepared(prepared, WINDOW, STRIDE)
    a, b = ds.session_ranges[0][0], ds.session_ranges[1][0]
    with pytest.raises(ValueError, match="one session"):
        collate_windows([ds[a], ds[b]])
    out = collate_windows([ds[a], ds[a + 1]])
    assert out.counts.shape == (2, WINDOW, ds.n_units[0]) and out.start.tolist() == [ds[a]["start"], ds[a + 1]["start"]]
