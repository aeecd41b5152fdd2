"""The multi-session teacher end to end on tiny simulated sessions (3 to train, a 4th held out): per-session
metrics, replay pairs and per-state read-outs (the defaults), resume, and transfer to the held-out session against
an unfitted read-in."""

import csv
import json
import logging

import numpy as np
import pytest
import torch

from neurojepa.data.dataset import PreparedSession
from neurojepa.data.samplers import SessionBatchSampler
from neurojepa.data.windows import WindowBatch, WindowDataset, WindowSource, collate_windows
from neurojepa.data.prepare import PrepareConfig, prepare_session
from neurojepa.errors import InputError
from neurojepa.synthetic.simulate import simulate_sessions
from neurojepa.teacher.config import TeacherConfig
from neurojepa.teacher.multisession import MultiSessionTeacher, session_pairs, teach_many
from neurojepa.teacher.train import replay_pairs
from neurojepa.teacher.transfer import transfer


def _cfg(epochs: int = 2) -> TeacherConfig:
    cfg = TeacherConfig()
    cfg.train.steps_per_epoch, cfg.train.max_epochs, cfg.train.batch_size = 6, epochs, 32
    cfg.train.progress, cfg.eval.baselines = False, False
    return cfg


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Four sessions of one simulated set (60 units, 2-min blocks), prepared: [train x 3, held out]."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ms")
    dirs = []
    for i, s in enumerate(simulate_sessions(4, seed=0, n_units=60, minutes=2)):
        dirs.append(prepare_session(s, root / f"session_{i}", PrepareConfig(figure=False, split_block_s=10)))
    return dirs


@pytest.fixture(scope="module")
def teacher(prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    teach_many(prepared[:3], out, _cfg(), full_eval=False)
    return out


@pytest.mark.slow
def test_every_training_session_is_scored(teacher, prepared):
    m = json.loads((teacher / "metrics.json").read_text())["teacher_multi"]
    assert sorted(m["sessions"]) == ["session_0", "session_1", "session_2"]
    assert m["global_step"] == 12 and m["epochs"] == 2
    for name, s in m["sessions"].items():
        assert np.isfinite(s["gt_r2"]) and 0 < s["gt_r2"] <= 1
        assert np.isfinite(s["rankme"]) and s["n_heldout_units"] > 0
        z = np.load(teacher / "latents" / f"{name}.npz")["latents"]
        assert z.shape[1] == 32 and np.isfinite(z).all()
    assert m["mean_gt_r2"] == pytest.approx(np.mean([s["gt_r2"] for s in m["sessions"].values()]))
    sessions = json.loads((teacher / "sessions.json").read_text())
    # replay pairs and per-state count read-outs are on by default: every session was paired, and the replay term
    # was really in the loss (non-zero in the logged steps)
    assert all(s["replay_pairs"] > 0 and s["states"] == ["active", "gray", "passive"] for s in sessions.values())
    assert m["replay_pairs"] == sum(s["replay_pairs"] for s in sessions.values())
    with open(teacher / "logs" / "csv" / "metrics.csv") as f:
        replay = [float(r["train_replay"]) for r in csv.DictReader(f) if r.get("train_replay")]
    assert replay and all(np.isfinite(replay)) and min(replay) > 0
    # held-out units never reach the encoder: the read-in of each session has exactly the held-in columns
    state = torch.load(teacher / "best.ckpt", weights_only=True)["state_dict"]
    for name, s in sessions.items():
        assert set(s["heldin"]).isdisjoint(s["heldout"]) and len(s["heldin"]) + len(s["heldout"]) == s["n_units"]
        assert state[f"net.readin.{name}.weight"].shape[1] == len(s["heldin"])
        for code in range(3):  # one count read-out per (session, state)
            assert state[f"state_readouts.{name}@{code}.weight"].shape == (len(s["heldin"]), 32)


def test_paired_batches_stream_each_window_and_its_replay_partner(prepared):
    """The sampler's paired batches: B/2 active windows then their passive partners, read from HDF5, equal to
    the rows of the file at the pair table's starts; a session without pairs keeps plain batches."""
    ds = WindowDataset.from_prepared(prepared[:2], 40, 16, split="train")
    pairs = session_pairs(ds, 0, prepared[0])
    assert pairs is not None and len(pairs[0]) > 10
    act, par = pairs
    ps = PreparedSession.load(prepared[0])
    state = ps.labels["state"].to_numpy().astype(str)
    split = ps.split
    # an independent check of the pair table: actives in active train bins, partners wholly in passive train bins,
    # and the partner of the replayed time: the flash seen at the start of both windows is the same image
    assert (state[act] == "active").all() and (state[par] == "passive").all()
    assert all((split[p:p + 40] == "train").all() and (state[p:p + 40] == "passive").all() for p in par)
    img = ps.labels["image"].to_numpy().astype(str)
    assert np.mean(img[act + 20] == img[par + 20]) > 0.9
    # the streamed pair table is the single teacher's in-memory one (train.replay_pairs) for the same windows
    counts = ps.load_counts()
    mem = replay_pairs(ps, WindowDataset([WindowSource.in_memory(counts, ps.segments("train"))], 40, 16), [])
    assert np.array_equal(mem[0], act) and np.array_equal(mem[1], par)
    sampler = SessionBatchSampler(ds, batch_size=8, batches_per_session=3, seed=1, pairs={0: pairs})
    batches = list(sampler)
    assert len(batches) == 6
    n_paired = 0
    for idx in batches:
        b = collate_windows(ds.__getitems__(idx))
        assert b.counts.shape[0] == 8 and b.state.shape == (8,)
        if b.session == 0:
            n_paired += 1
            assert b.paired and b.state[:4].tolist() == [0] * 4 and b.state[4:].tolist() == [2] * 4
            starts = b.start.numpy()
            assert {(a, p) for a, p in zip(starts[:4], starts[4:])} <= set(zip(act.tolist(), par.tolist()))
            for k, st in enumerate(starts):
                assert torch.equal(b.counts[k], torch.from_numpy(counts[st:st + 40].astype(np.float32)))
        else:
            assert not b.paired
    assert n_paired == 3


def test_a_session_without_a_replay_trains_unpaired(prepared, caplog):
    """Restricted to the active block, the partners' passive blocks are not there: pairing is refused, logged."""
    ds = WindowDataset.from_prepared(prepared[:1], 40, 16, split="train", states=["active"])
    with caplog.at_level(logging.WARNING):
        assert session_pairs(ds, 0, prepared[0]) is None
    assert "training unpaired" in caplog.text


def test_each_step_trains_only_the_batch_session_maps_and_the_shared_model(prepared):
    """One step on a session-1 batch changes session 1's read-in and the shared encoder, not session 0's maps."""
    cfg = _cfg()
    mod = MultiSessionTeacher(cfg, {"a": 20, "b": 30}, {"a": list(range(20)), "b": list(range(30))})
    before = {k: v.clone() for k, v in mod.state_dict().items()}
    opt = torch.optim.SGD(mod.parameters(), lr=0.1)
    length = mod.warm + cfg.train.window + cfg.model.horizon
    batch = WindowBatch(torch.poisson(torch.full((8, length, 30), 0.3)), torch.zeros(8, dtype=torch.int64),
                        torch.zeros(8, dtype=torch.int64), session=1)
    x = mod.batch_counts(batch)
    out = mod.losses(x, mod._views(x, 0), 0, batch.state, batch.paired)
    out["loss"].backward()
    opt.step()
    after = mod.state_dict()
    assert not torch.equal(before["net.readin.b.weight"], after["net.readin.b.weight"])
    assert not torch.equal(before["net.head.weight"], after["net.head.weight"])
    assert torch.equal(before["net.readin.a.weight"], after["net.readin.a.weight"])
    assert torch.equal(before["net.count_readout.a.weight"], after["net.count_readout.a.weight"])


def test_per_state_readouts_are_keyed_by_session_and_state():
    """A paired step with state codes moves exactly the batch session's read-outs of the states in the batch."""
    cfg = _cfg()
    mod = MultiSessionTeacher(cfg, {"a": 20, "b": 30}, {"a": list(range(20)), "b": list(range(30))},
                              {"a": ["active", "passive"], "b": ["active", "gray", "passive"]})
    assert sorted(mod.state_readouts) == ["a@0", "a@1", "b@0", "b@1", "b@2"]
    length = mod.warm + cfg.train.window + cfg.model.horizon
    g = torch.Generator().manual_seed(0)
    batch = WindowBatch(torch.poisson(torch.full((8, length, 30), 0.3), generator=g),
                        torch.tensor([0] * 4 + [2] * 4), torch.zeros(8, dtype=torch.int64), session=1, paired=True)
    x = mod.batch_counts(batch)
    out = mod.losses(x, mod._views(x, 0), 0, batch.state, batch.paired)
    assert out["replay"] > 0
    out["loss"].backward()
    grad = {n: p.grad for n, p in mod.named_parameters()}
    assert grad["state_readouts.b@0.weight"].abs().sum() > 0 and grad["state_readouts.b@2.weight"].abs().sum() > 0
    # a state not in the batch: exactly zero (all of the session's read-outs are evaluated, then picked per window)
    assert grad["state_readouts.b@1.weight"].abs().sum() == 0
    for n in ("state_readouts.a@0.weight", "net.readin.a.weight"):
        assert grad[n] is None  # another session
    # the shared read-out of the batch session acts on the free (untied) latent dims only
    k = cfg.loss.replay_dims
    assert k < cfg.model.embed_dim
    shared = grad["net.count_readout.b.weight"]
    assert shared[:, :k].abs().sum() == 0 and shared[:, k:].abs().sum() > 0
    assert grad["state_readouts.b@0.weight"][:, k:].abs().sum() == 0


@pytest.mark.slow
def test_resume_replays_the_same_steps(prepared, teacher, tmp_path):
    """1 epoch, then --resume to 2 epochs == the uninterrupted 2-epoch run (same checkpoint weights, metrics)."""
    out = tmp_path / "t"
    teach_many(prepared[:3], out, _cfg(epochs=1), full_eval=False)
    teach_many(prepared[:3], out, _cfg(epochs=2), resume=True, full_eval=False)
    a = torch.load(out / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(teacher / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in b)
    ma = json.loads((out / "metrics.json").read_text())["teacher_multi"]
    mb = json.loads((teacher / "metrics.json").read_text())["teacher_multi"]
    assert ma["global_step"] == mb["global_step"] == 12
    for name in mb["sessions"]:
        assert ma["sessions"][name]["gt_r2"] == pytest.approx(mb["sessions"][name]["gt_r2"], abs=1e-6)
    with pytest.raises(InputError, match="nothing to resume"):
        teach_many(prepared[:3], tmp_path / "empty", _cfg(), resume=True)


@pytest.mark.slow
def test_transfer_beats_an_unfitted_read_in(prepared, teacher, tmp_path):
    before = torch.load(teacher / "best.ckpt", weights_only=True)["state_dict"]
    # 100 steps: this 12-step teacher's new-session fit dips before it rises (0.118 -> 0.088 at step 20 -> 0.172)
    out = transfer(prepared[3], teacher, tmp_path / "tr", steps=100, eval_every=50, full_eval=False)
    m = json.loads((out / "metrics.json").read_text())["transfer"]
    assert m["steps"] == 100 and m["fit_seconds"] > 0 and set(m["gt_r2_curve"]) == {"0", "50", "100"}
    assert m["gt_r2_curve"]["0"] == pytest.approx(m["null"]["gt_r2"])
    assert m["gt_r2"] == pytest.approx(m["gt_r2_curve"]["100"])
    assert m["gt_r2"] > m["null"]["gt_r2"] + 0.03
    # the new session's own replay pairs and per-state read-outs were fitted
    assert m["replay_pairs"] > 0 and all(v > 0 for v in m["train_replay"].values())
    fitted = torch.load(out / "readin.pt", weights_only=True)
    assert fitted["readin.weight"].shape[1] == len(fitted["heldin"])
    assert {k for k in fitted if k.startswith("state_readouts.")} == \
        {f"state_readouts.new_session_3@{i}.{w}" for i in range(3) for w in ("weight", "bias")}
    # the teacher itself is untouched
    after = torch.load(teacher / "best.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_bad_requests(prepared, tmp_path):
    with pytest.raises(InputError, match="same name"):
        teach_many([prepared[0], prepared[0]], tmp_path / "x", _cfg())
    with pytest.raises(InputError, match="multi-session teacher"):
        transfer(prepared[3], tmp_path, tmp_path / "y")
