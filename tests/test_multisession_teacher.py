"""The multi-session teacher end to end on tiny simulated sessions (3 to train, a 4th held out): per-session
metrics, resume, and transfer to the held-out session against an unfitted read-in."""

import json

import numpy as np
import pytest
import torch

from neurojepa.data.prepare import PrepareConfig, prepare_session
from neurojepa.data.simulate import simulate_sessions
from neurojepa.errors import InputError
from neurojepa.teacher.config import TeacherConfig
from neurojepa.teacher.multisession import MultiSessionTeacher, teach_many
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
    # held-out units never reach the encoder: the read-in of each session has exactly the held-in columns
    state = torch.load(teacher / "best.ckpt", weights_only=True)["state_dict"]
    for name, s in sessions.items():
        assert set(s["heldin"]).isdisjoint(s["heldout"]) and len(s["heldin"]) + len(s["heldout"]) == s["n_units"]
        assert state[f"net.readin.{name}.weight"].shape[1] == len(s["heldin"])


def test_each_step_trains_only_the_batch_session_maps_and_the_shared_model(prepared):
    """One step on a session-1 batch changes session 1's read-in and the shared encoder, not session 0's maps."""
    cfg = _cfg()
    mod = MultiSessionTeacher(cfg, {"a": 20, "b": 30}, {"a": list(range(20)), "b": list(range(30))})
    before = {k: v.clone() for k, v in mod.state_dict().items()}
    opt = torch.optim.SGD(mod.parameters(), lr=0.1)
    length = mod.warm + cfg.train.window + cfg.model.horizon
    batch = {"counts": torch.poisson(torch.full((8, length, 30), 0.3)), "session": 1}
    out, _ = mod._session_loss(batch, 0)
    out["loss"].backward()
    opt.step()
    after = mod.state_dict()
    assert not torch.equal(before["net.readin.b.weight"], after["net.readin.b.weight"])
    assert not torch.equal(before["net.head.weight"], after["net.head.weight"])
    assert torch.equal(before["net.readin.a.weight"], after["net.readin.a.weight"])
    assert torch.equal(before["net.count_readout.a.weight"], after["net.count_readout.a.weight"])


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


def test_transfer_beats_an_unfitted_read_in(prepared, teacher, tmp_path):
    before = torch.load(teacher / "best.ckpt", weights_only=True)["state_dict"]
    out = transfer(prepared[3], teacher, tmp_path / "tr", steps=40, eval_every=20, full_eval=False)
    m = json.loads((out / "metrics.json").read_text())["transfer"]
    assert m["steps"] == 40 and m["fit_seconds"] > 0 and set(m["gt_r2_curve"]) == {"0", "20", "40"}
    assert m["gt_r2_curve"]["0"] == pytest.approx(m["null"]["gt_r2"])
    assert m["gt_r2"] == pytest.approx(m["gt_r2_curve"]["40"])
    assert m["gt_r2"] > m["null"]["gt_r2"] + 0.03
    fitted = torch.load(out / "readin.pt", weights_only=True)
    assert fitted["readin.weight"].shape[1] == len(fitted["heldin"])
    # the teacher itself is untouched
    after = torch.load(teacher / "best.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_bad_requests(prepared, tmp_path):
    with pytest.raises(InputError, match="same name"):
        teach_many([prepared[0], prepared[0]], tmp_path / "x", _cfg())
    with pytest.raises(InputError, match="multi-session teacher"):
        transfer(prepared[3], tmp_path, tmp_path / "y")
