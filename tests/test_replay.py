"""Replay pairing (teacher/replay.py): a known replay offset is recovered, a shuffled replay is refused, partners
never leave the allowed (train) segments, and the replay term ties exactly the configured latent dims."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from neurojepa.teacher.replay import flash_sequence, map_times, pair_flashes, replay_partners

BIN = 0.01


def _labels(n_flash=200, offset_s=163.27, shuffle=False, seed=0):
    """Active block of flashes every 750 ms with per-flash jitter, a gray gap, then a passive block that replays
    the same images (or a shuffled order) starting ``offset_s`` after the active one's first flash."""
    rng = np.random.default_rng(seed)
    images = rng.choice([f"im{i}" for i in range(8)], n_flash)
    omitted = rng.random(n_flash) < 0.05
    onsets_a = 0.5 + np.arange(n_flash) * 0.75 + rng.uniform(0, 0.016, n_flash)  # mid-bin onsets
    onsets_p = onsets_a + offset_s
    ids_p = rng.permutation(images) if shuffle else images
    n = int(np.ceil((onsets_p[-1] + 1.0) / BIN))
    t = np.arange(n) * BIN
    end_a = int(np.ceil((onsets_a[-1] + 0.75) / BIN))
    state = np.where(t < end_a * BIN, "active", np.where(t < onsets_p[0] - 0.4, "gray", "passive"))
    tsf, img, om = np.full(n, np.nan), np.full(n, "", dtype=object), np.zeros(n, bool)
    for on, ims in ((onsets_a, images), (onsets_p, ids_p)):
        shown = ""
        for k, o in enumerate(on):
            # a bin's labels are taken at its left edge: the bin holding a mid-bin onset still shows the old image
            rows = (t >= o) & (t < (on[k + 1] if k + 1 < len(on) else o + 0.75))
            shown = shown if omitted[k] else ims[k]  # an omitted flash shows nothing new
            tsf[rows], img[rows] = t[rows] - o, shown
            om[(t + BIN > o) & (t < o + 0.25)] = omitted[k]
    tsf[state == "gray"] = np.nan
    return pd.DataFrame(dict(state=state, time_since_flash=tsf, image=img, omitted=om)), onsets_a, onsets_p


def test_known_offset_is_recovered():
    labels, on_a, on_p = _labels(offset_s=163.27)
    oa, ia = flash_sequence(labels, "active", BIN)
    op, ip = flash_sequence(labels, "passive", BIN)
    np.testing.assert_allclose(oa, on_a, atol=1e-9)  # exact onsets from time_since_flash, not bin edges
    np.testing.assert_allclose(op, on_p, atol=1e-9)
    anchors = pair_flashes(oa, ia, op, ip)
    assert anchors is not None
    t = np.array([1.0, 10.3, 100.0])
    np.testing.assert_allclose(map_times(t, *anchors), t + 163.27, atol=1e-9)
    assert np.isnan(map_times(np.array([0.1, 1e4]), *anchors)).all()  # outside the anchored flashes: no partner


def test_shuffled_replay_is_refused(caplog):
    labels, _, _ = _labels(shuffle=True)
    seqs = [*flash_sequence(labels, "active", BIN), *flash_sequence(labels, "passive", BIN)]
    with caplog.at_level("WARNING"):
        assert pair_flashes(*seqs) is None
    assert "agree" in caplog.text
    assert replay_partners(labels, BIN, 0.0, np.array([100]), 50, [(0, len(labels))]) is None
    # a replay of another length is refused too
    good = _labels()[0]
    oa, ia = flash_sequence(good, "active", BIN)
    op, ip = flash_sequence(good, "passive", BIN)
    assert pair_flashes(oa, ia, op, ip) is not None and pair_flashes(oa, ia, op[:150], ip[:150]) is None


def test_partners_stay_inside_allowed_segments():
    labels, _, _ = _labels(offset_s=200.0)
    shift = int(round(200.0 / BIN))
    starts = np.array([100, 1000, 5000, 9000])
    allowed = [(1000 + shift, 4000 + shift), (8000 + shift, 9040 + shift)]  # 9000's partner would stick out
    p = replay_partners(labels, BIN, 0.0, starts, 50, allowed)
    assert p.tolist() == [-1, 1000 + shift, -1, -1]


def test_replay_term_ties_only_the_first_k_dims():
    from neurojepa.teacher.config import TeacherConfig
    from neurojepa.teacher.module import TeacherModule

    cfg = TeacherConfig()
    cfg.model.width, cfg.model.embed_dim, cfg.model.horizon, cfg.train.window = 8, 6, 2, 8
    cfg.loss.count_weight, cfg.loss.replay_weight, cfg.loss.replay_dims = 0.0, 1.0, 2
    torch.manual_seed(0)
    mod = TeacherModule(cfg, n_units=10)
    x = torch.poisson(torch.full((4, mod.warm + 8 + 2, 10), 1.0), generator=torch.Generator().manual_seed(0))
    views = mod._views(x, step=0)
    z = [mod.net.encode(x, "session", sc)[:, mod.warm:mod.warm + 8] for sc in views[0]]
    # independent reference: half the mean squared difference of dims :2 between rows 0-1 and 2-3, both views
    expect = sum(0.5 * (zi[:2, ..., :2] - zi[2:, ..., :2]).square().mean() for zi in z)
    cfg.loss.replay_norm = False
    out = mod.losses(x, views, 0, paired=True)
    assert torch.allclose(out["replay"], expect, atol=1e-6)
    # normalised: per dim, divided by its variance over batch and time -> unchanged when z is scaled
    cfg.loss.replay_norm = True
    var = [zi[..., :2].reshape(-1, 2).var(0) for zi in z]
    expect = sum(0.5 * ((zi[:2, ..., :2] - zi[2:, ..., :2]).square().mean((0, 1)) / (v + 1e-4)).mean()
                 for zi, v in zip(z, var))
    assert torch.allclose(mod.losses(x, views, 0, paired=True)["replay"], expect, atol=1e-5)
    from neurojepa.teacher.module import replay_distance
    assert torch.allclose(replay_distance(10 * z[0]), replay_distance(z[0]), rtol=0.01)  # up to the 1e-4 floor
    assert replay_distance(0.1 * z[0], normalise=False) < 0.02 * replay_distance(z[0], normalise=False)
    assert mod.losses(x, views, 0, paired=False)["replay"] == 0



@pytest.mark.slow
def test_replay_training_end_to_end(tmp_path, caplog):
    from neurojepa.synthetic.toy import ToySession
    from neurojepa.data.windows import PairedBatch, WindowDataset, WindowSource, collate_windows
    from neurojepa.teacher.train import replay_pairs, teach_session
    from test_teacher import small_cfg

    toy = ToySession(n_bins=1500, n_units=30, d=3, seed=0)
    st = toy.labels["state"].to_numpy()
    toy.labels.loc[st == "passive", "image"] = toy.labels["image"].to_numpy()[st == "active"]  # a replay
    cfg = small_cfg(loss__replay_weight=1.0, loss__replay_dims=4, loss__state_readout=True,
                    model__state_readin=True)
    out = teach_session(toy, tmp_path / "a", cfg)
    m = json.loads((out / "metrics.json").read_text())["teacher"]
    assert m["replay_pairs"] > 0 and np.isfinite(m["gt_r2"])
    assert m["count_mode"] == "forward"  # loss.count_mode=auto with replay pairs
    # paired training resumes exactly: crash at the start of epoch 2, resume from last.ckpt, same metrics
    from test_teacher import _Crash

    with pytest.raises(RuntimeError, match="simulated crash"):
        teach_session(toy, tmp_path / "b", cfg, callbacks=[_Crash()])
    resumed = json.loads((teach_session(toy, tmp_path / "b", cfg, resume=True) / "metrics.json").read_text())
    for key in ("gt_r2", "cobps", "best_val_loss", "global_step"):
        assert resumed["teacher"][key] == pytest.approx(m[key], rel=1e-6, abs=1e-9), key
    # training on one state turns pairing off (a pair would use the other state's data), with a log line
    ds = WindowDataset([WindowSource.in_memory(toy.load_counts(), toy.segments("train"))], 40, 8)
    with caplog.at_level("INFO"):
        assert replay_pairs(toy, ds, ["active"]) is None
    assert "pairing off" in caplog.text
    starts, partners = replay_pairs(toy, ds, [])
    assert len(starts) > 0 and set(st[starts]) == {"active"} and set(st[partners]) == {"passive"}
    # partners sit at the replayed time (the toy's passive block starts n_bins after the active one)
    assert np.all(partners - starts == 1500)
    # a paired batch: the windows, then their partners in the same order, with their states' codes
    batch = collate_windows(ds.__getitems__(PairedBatch([(0, s) for s in starts[:3]] + [(0, p) for p in partners[:3]])))
    assert batch.paired and batch.counts.shape == (6, 40, toy.n_units)
    names = ds.state_names[0]
    assert [names[c] for c in batch.state.tolist()] == ["active"] * 3 + ["passive"] * 3
    assert np.array_equal(batch.counts[3].numpy(), toy.load_counts()[partners[0]:partners[0] + 40])
