"""The teacher: causality, chunked encoding, the three regularisers end to end, resume, NaN guard, science check.

Runs on :class:`ToySession` (in memory, ~1 s to build) with a few dozen steps, so the whole file stays fast.
"""

import json

import numpy as np
import pytest
import torch
from conftest import sized
from lightning.pytorch.callbacks import Callback

from neurojepa.errors import InputError
from neurojepa.synthetic.toy import ToySession
from neurojepa.teacher.config import TeacherConfig
from neurojepa.teacher.model import TeacherNet
from neurojepa.teacher.train import teach_session

torch.set_num_threads(1)


def small_cfg(**kw) -> TeacherConfig:
    cfg = TeacherConfig()
    cfg.model.width, cfg.model.embed_dim, cfg.model.horizon = 16, 8, 4
    cfg.loss.replay_dims = 8  # every latent dim tied (what the default 31 meant for 8 dims before it was checked)
    cfg.train.window, cfg.train.batch_size, cfg.train.steps_per_epoch, cfg.train.max_epochs = 16, 16, 4, 3
    cfg.train.progress, cfg.eval.baselines, cfg.train.val_windows = False, False, 16
    for k, v in kw.items():
        section, key = k.split("__")
        setattr(getattr(cfg, section), key, v)
    return cfg


@pytest.fixture(scope="module")
def toy():
    return ToySession(n_bins=1500, n_units=30, d=3, seed=0)


def test_encoder_is_causal_and_chunking_is_exact():
    net = TeacherNet({"s": 12}, width=16, embed_dim=4, kernel=3, dilations=(1, 2, 4), horizon=10, predictor_hidden=128,
                     seed=0, smooth_bins=16, input_transform="sqrt", linear_skip=True, view_mode="halves",
                     count_link="exp")  # every option explicit (the old constructor defaults: same network)
    x = torch.poisson(torch.full((1, 200, 12), 0.5))
    z = net.embed(x, "s")
    y = x.clone()
    y[:, 120:] = torch.poisson(torch.full((1, 80, 12), 3.0))  # change only the future of bin 119
    assert torch.allclose(net.embed(y, "s")[:, :120], z[:, :120], atol=1e-6)
    assert not torch.allclose(net.embed(y, "s")[:, 120:], z[:, 120:])
    assert torch.allclose(net.encode_long(x[0], "s", chunk=37), z[0], atol=1e-5)


@pytest.mark.parametrize("reg", ["sigreg", "vicreg", "none"])
def test_regularisers_end_to_end(toy, tmp_path, reg):
    out = teach_session(toy, tmp_path, small_cfg(loss__regulariser=reg))
    m = json.loads((out / "metrics.json").read_text())["teacher"]
    assert m["regulariser"] == reg and m["embed_dim"] == 8 and len(m["per_dim_std"]) == 8
    assert m["count_mode"] == ("both" if m["replay_pairs"] == 0 else "forward")  # loss.count_mode=auto
    for key in ("rankme", "sigreg_heldout", "forecast_r2", "gt_r2", "gt_r2_cross_state", "cobps", "decoding"):
        assert key in m
    lat = np.load(out / "latents.npz")
    assert lat["latents"].shape == (toy.n_bins, 8) and lat["latents"].dtype == np.float32
    assert float(lat["bin_size"]) == toy.bin_size
    assert (out / "best.ckpt").is_file() and (out / "last.ckpt").is_file() and (out / "config.yaml").is_file()
    last = torch.load(out / "last.ckpt", weights_only=True)
    assert last["global_step"] == m["global_step"]  # last.ckpt follows every epoch, not only new bests
    assert any(k.startswith("net.readin") for k in last["state_dict"])


class _Crash(Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 2:
            raise RuntimeError("simulated crash")


@pytest.mark.slow
def test_resume_gives_same_metrics(toy, tmp_path):
    cfg = small_cfg()
    full = json.loads((teach_session(toy, tmp_path / "a", cfg) / "metrics.json").read_text())["teacher"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        teach_session(toy, tmp_path / "b", cfg, callbacks=[_Crash()])
    assert (tmp_path / "b" / "last.ckpt").is_file() and not (tmp_path / "b" / "metrics.json").exists()
    resumed = json.loads((teach_session(toy, tmp_path / "b", cfg, resume=True) / "metrics.json").read_text())["teacher"]
    for key in ("gt_r2", "rankme", "cobps", "forecast_r2", "best_val_loss", "global_step"):
        assert resumed[key] == pytest.approx(full[key], rel=1e-6, abs=1e-9), key


@pytest.mark.slow
def test_nan_guard_keeps_last_good_checkpoint(toy, tmp_path):
    class _Poison(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 6:  # epoch 1 (4 steps/epoch): epoch 0's checkpoint exists
                batch.counts[0, 0, 0] = float("nan")

    with pytest.raises(InputError, match="diverged"):
        teach_session(toy, tmp_path, small_cfg(), callbacks=[_Poison()])
    state = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert state["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


def test_bad_regulariser_and_missing_resume_are_input_errors(toy, tmp_path):
    with pytest.raises(InputError, match="regulariser"):
        teach_session(toy, tmp_path, small_cfg(loss__regulariser="barlow"))
    with pytest.raises(InputError, match="nothing to resume"):
        teach_session(toy, tmp_path / "new", small_cfg(), resume=True)


def test_views_hide_units_and_count_anchor_is_cross_view():
    """A view's latent ignores the units its mask hides; the count loss is 0 with mu = 0 and otherwise scores
    only hidden units (changing a seen unit's target counts leaves it unchanged)."""
    from neurojepa.teacher.module import TeacherModule

    torch.manual_seed(0)
    cfg = small_cfg(loss__count_mode="cross")
    mod = TeacherModule(cfg, n_units=10)
    x = torch.poisson(torch.full((2, mod.warm + 16 + 4, 10), 0.5))
    (sa, sb), (ma, mb) = mod._views(x, step=3)
    assert torch.equal(ma + mb, torch.ones_like(ma)) and ((sa > 0) == (ma > 0)).all()
    y = x.clone()
    y[:, :, ma[0, 0] == 0] += 3.0  # change only units view A of window 0 cannot see
    za, za2 = mod.net.encode(x, "session", sa), mod.net.encode(y, "session", sa)
    assert torch.allclose(za[0], za2[0], atol=1e-6)
    full = mod.losses(x, ((sa, sb), (ma, mb)), 3)
    assert full["count"] > 0
    cfg0 = small_cfg(loss__count_weight=0.0, loss__count_mode="cross")
    mod0 = TeacherModule(cfg0, n_units=10)
    mod0.load_state_dict(mod.state_dict())
    out0 = mod0.losses(x, ((sa, sb), (ma, mb)), 3)
    assert out0["count"] == 0 and torch.allclose(out0["loss"], (1 - cfg.loss.lam) * out0["pred"] + cfg.loss.lam * out0["reg"])
    assert torch.allclose(full["loss"], out0["loss"] + cfg.loss.count_weight * full["count"])


def test_forward_count_anchor_scores_the_next_bin_of_every_unit():
    """Forward mode: the count term is the Poisson NLL per spike of every unit's count in bin t + 1 under the
    whole-population latent at t, through the scaled softplus link (independent reference: the formula by hand,
    and scipy's Poisson log-pmf for the same rates); the loss is exactly the sum of its terms; bin t's own counts
    (seen by the encoder) change it only through the latent, and the link's gain is a per-unit rate scale."""
    from scipy.special import gammaln
    from scipy.stats import poisson

    from neurojepa.teacher.module import TeacherModule

    torch.manual_seed(0)
    cfg = small_cfg()
    assert (cfg.loss.count_mode, cfg.loss.count_link) == ("auto", "softplus")  # the defaults
    mod = TeacherModule(cfg, n_units=10)
    assert mod.count_mode == "forward"  # "auto" until the trainer decides it (test_count_mode_auto_...)
    x = torch.poisson(torch.full((3, mod.warm + 16 + 4, 10), 0.7), generator=torch.Generator().manual_seed(1))
    mod.init_readout_bias(x.mean((0, 1)))
    with torch.no_grad():  # gains away from their init, so a wrong gain index would show
        mod.net.count_gain["session"].add_(torch.linspace(-0.5, 0.5, 10))
    views = mod._views(x, step=5)
    assert len(views[0]) == 3 and (views[0][2] > 0).all()  # the whole population, gain jitter only
    out = mod.losses(x, views, 5)
    z = mod.net.encode(x, "session", views[0][2])[:, mod.warm:mod.warm + 16]
    y = x[:, mod.warm + 1:mod.warm + 17]
    rate = torch.nn.functional.softplus(mod.net.count_readout["session"](z)) * torch.exp(mod.net.count_gain["session"])
    expect = (rate - y * torch.log(rate)).sum() / y.sum()
    assert torch.allclose(out["count"], expect, rtol=1e-5)
    logpmf = poisson.logpmf(y.numpy(), rate.detach().numpy()) + gammaln(y.numpy() + 1)  # drop log y!, as the loss does
    assert np.isclose(-logpmf.sum() / y.sum().item(), expect.item(), rtol=1e-5)
    c = cfg.loss
    assert torch.allclose(out["loss"], (1 - c.lam) * out["pred"] + c.lam * out["reg"] + c.count_weight * out["count"])
    # the first loss bin's counts are input only: change them for one unit and the target is untouched
    y2 = x.clone()
    y2[:, mod.warm + 16, 3] += 5.0  # the last target bin: target changes, the latents of the loss bins do not
    assert not torch.allclose(mod.losses(y2, views, 5)["count"], out["count"])
    # exp link: the log-linear GLM, no gain parameters
    mod_exp = TeacherModule(small_cfg(loss__count_link="exp"), n_units=10)
    assert mod_exp.net.count_gain is None
    eta = torch.randn(2, 4, 10)
    assert torch.allclose(mod_exp.net.expected_counts(eta), torch.exp(eta))


def test_state_readout_shares_the_free_dims_and_centres_the_tied_ones():
    """k < D: each state's own weights act on the centred tied dims only (no per-state bias); the free dims' map
    and bias are one for all states. k = D: each state's full linear map."""
    from neurojepa.teacher.module import state_readout_eta

    torch.manual_seed(0)
    ros = [torch.nn.Linear(5, 7) for _ in range(2)]
    shared = torch.nn.Linear(5, 7)
    z, state = torch.randn(4, 6, 5), torch.tensor([0, 1, 0, 1])
    full = state_readout_eta(z, state, ros, shared, 5)
    assert torch.allclose(full[1], ros[1](z[1])) and torch.allclose(full[2], ros[0](z[2]))
    eta = state_readout_eta(z, state, ros, shared, 3)
    zc = z[..., :3] - z[..., :3].mean((0, 1))
    for b in range(4):
        ref = zc[b] @ ros[int(state[b])].weight[:, :3].T + z[b, :, 3:] @ shared.weight[:, 3:].T + shared.bias
        assert torch.allclose(eta[b], ref, atol=1e-6)
    shifted = z.clone()
    shifted[..., :3] += 3.0  # a common offset of the tied dims cannot move the rates
    assert torch.allclose(state_readout_eta(shifted, state, ros, shared, 3), eta, atol=1e-5)


def test_bad_loss_choice_is_an_input_error(toy, tmp_path):
    with pytest.raises(InputError, match="loss.count_mode"):
        teach_session(toy, tmp_path, small_cfg(loss__count_mode="backward"))
    with pytest.raises(InputError, match="loss.spectral_weight"):
        teach_session(toy, tmp_path, small_cfg(loss__spectral_weight=-0.5))


def test_train_and_test_states(toy, tmp_path):
    seen = []

    class _Spy(Callback):
        def on_train_start(self, trainer, pl_module):
            ds = trainer.train_dataloader.dataset
            seen.extend(ds.state_names[0][c] for c in ds.windows(0)[1])

    out = teach_session(toy, tmp_path, small_cfg(), callbacks=[_Spy()], train_states=["active"],
                        test_states=["passive"])
    m = json.loads((out / "metrics.json").read_text())["teacher"]
    assert set(seen) == {"active"}
    assert m["train_states"] == ["active"] and m["test_states"] == ["passive"]
    assert list(m["decoding"]["within"]) == ["active"] and list(m["decoding"]["cross"]) == ["active->passive"]
    assert list(m["gt_r2_cross_state_pairs"]) == ["mean", "active->passive"]
    with pytest.raises(InputError, match="unknown state"):
        teach_session(toy, tmp_path / "x", small_cfg(), train_states=["asleep"])


@pytest.mark.slow
@pytest.mark.science
def test_teacher_recovers_ground_truth_at_least_as_well_as_pca(tmp_path):
    """Science check (reduced): on a small toy session the teacher's latents map onto the true latents (ridge,
    train blocks -> test blocks) at least as well as PCA of smoothed counts with the same number of dims (within
    0.02), and the spectral SIGReg slices raise the effective rank.

    Measured at 400 steps: without spectral slices 0.808 vs PCA 0.820, rankme 5.4 of 8 (0.738 at 100 steps, which
    is why it trains 400; the round-2 teacher reached 0.80 and this test was a strict xfail). With the default
    spectral slices rankme 6.8 and gt_r2 0.794: in an 8-dim latent of 4 true latents, pushing toward isotropy costs
    more than in the default session's 32 dims (gt_r2 0.904 with them, 0.902 without; docs/teacher.md "Round 4"),
    so the PCA comparison here is made without them. The full-size check is the default session, where the teacher
    leads (0.904 vs PCA 0.786)."""
    from neurojepa.metrics.latent import ridge_r2
    from neurojepa.teacher.baselines import baseline_latents

    toy = ToySession(n_bins=sized(6000, 12000), n_units=60, d=4, seed=1)  # make test-full: twice the bins and steps
    split = np.asarray(toy.split).astype(str)
    m = {}
    for slices in (0, 4):
        cfg = small_cfg(train__steps_per_epoch=sized(100, 200), train__max_epochs=4, loss__spectral_slices=slices)
        out = teach_session(toy, tmp_path / str(slices), cfg)
        m[slices] = json.loads((out / "metrics.json").read_text())["teacher"]
    heldin = np.load(out / "latents.npz")["heldin_units"]
    pca = baseline_latents(toy.load_counts()[:, heldin], split == "train", toy.bin_size, 8, cfg.eval.smooth_ms,
                           cfg.train.seed, with_fa=False, with_cebra=False)["pca"]
    pca_r2 = ridge_r2(pca, toy.gt_latents, split == "train", split == "test")
    assert m[0]["gt_r2"] >= pca_r2 - 0.02, (m[0]["gt_r2"], pca_r2)
    assert m[4]["rankme"] > m[0]["rankme"] + 0.5, (m[4]["rankme"], m[0]["rankme"])


@pytest.mark.slow
def test_diagnostics_flag_collapse_without_regulariser(toy, tmp_path):
    """Pure LeJEPA (no count anchor) without SIGReg collapses, and the held-out diagnostics say so: the
    per-dimension std shrinks and the SIGReg statistic grows against the same run with SIGReg (RankMe is
    scale-invariant and does not flag a collapse in scale: docs/teacher.md)."""
    m = {}
    for reg in ("none", "sigreg"):
        cfg = small_cfg(loss__regulariser=reg, loss__count_weight=0.0, train__steps_per_epoch=10,
                        train__max_epochs=2)
        m[reg] = json.loads((teach_session(toy, tmp_path / reg, cfg) / "metrics.json").read_text())["teacher"]
    # measured: median std 0.05 vs 0.56, statistic 206 vs 79
    assert np.median(m["none"]["per_dim_std"]) < 0.25 * np.median(m["sigreg"]["per_dim_std"])
    assert m["none"]["sigreg_heldout"] > 2 * m["sigreg"]["sigreg_heldout"]


def test_validation_batches_carry_their_own_windows_states(toy, tmp_path):
    """Each val window's state code is its own window's state (the per-state read-outs score it). The old loader
    subset and shuffled the val windows but not their states, so every val window carried the first windows'
    state (issue 14)."""
    seen = []

    class _Spy(Callback):
        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            names = trainer.val_dataloaders.dataset.state_names[0]
            seen.extend((names[c], s) for c, s in zip(batch.state.tolist(), batch.start.tolist()))

    teach_session(toy, tmp_path, small_cfg(train__max_epochs=1, train__val_windows=64), callbacks=[_Spy()])
    state = toy.labels["state"].to_numpy().astype(str)
    assert len(seen) > 4 and len({name for name, _ in seen}) > 1  # a mixed, shuffled val set
    assert all(name == state[start] for name, start in seen)


def test_count_mode_auto_is_forward_with_replay_pairs_and_both_without():
    """``loss.count_mode=auto``: the forward anchor where replay pairs tie the states (VBN), forward + cross-view
    (``both``) otherwise; an explicit mode is kept; the module's anchors follow the decided mode."""
    from neurojepa.teacher.module import TeacherModule
    from neurojepa.teacher.train import anchor_mode

    cfg = small_cfg()
    assert anchor_mode(cfg, paired=True) == "forward"
    assert anchor_mode(cfg, paired=False) == "both"
    for mode in ("forward", "cross", "both"):
        cfg.loss.count_mode = mode
        assert anchor_mode(cfg, paired=True) == anchor_mode(cfg, paired=False) == mode
    mod = TeacherModule(small_cfg(), n_units=6)
    assert (mod.forward_anchor, mod.cross_anchor) == (True, False)
    mod.count_mode = anchor_mode(mod.cfg, paired=False)
    assert (mod.forward_anchor, mod.cross_anchor) == (True, True)


def test_per_state_regulariser_is_decided_from_the_data_and_equals_the_pooled_one_for_one_state():
    """``loss.reg_per_state=auto`` turns SIGReg-within-each-state on for >= 2 states without replay pairs only (one
    process); with one state in the batch it is exactly the pooled regulariser, with two it differs."""
    from neurojepa.teacher.module import TeacherModule
    from neurojepa.teacher.train import per_state_regulariser

    cfg = small_cfg()
    assert per_state_regulariser(cfg, paired=False, n_states=2)
    assert not per_state_regulariser(cfg, paired=True, n_states=3)  # VBN: the replay ties the states
    assert not per_state_regulariser(cfg, paired=False, n_states=1)
    cfg.train.devices = 2
    assert not per_state_regulariser(cfg, paired=False, n_states=2)  # its SIGReg groups would differ between ranks
    cfg.train.devices, cfg.loss.reg_per_state = 1, "never"
    assert not per_state_regulariser(cfg, paired=False, n_states=2)
    cfg.loss.reg_per_state = "always"
    assert per_state_regulariser(cfg, paired=True, n_states=1)

    cfg = small_cfg()
    torch.manual_seed(0)
    mod = TeacherModule(cfg, n_units=12, n_states=2)
    length = mod.warm + cfg.train.window + cfg.model.horizon
    x = torch.poisson(torch.full((16, length, 12), 0.5), generator=torch.Generator().manual_seed(1))
    views = mod._views(x, 0)
    reg = {}
    for on in (False, True):
        mod.reg_per_state = on
        for name, state in (("one", torch.zeros(16, dtype=torch.int64)), ("two", torch.tensor([0, 1] * 8))):
            reg[on, name] = float(mod.losses(x, views, 0, state)["reg"])
    assert reg[True, "one"] == pytest.approx(reg[False, "one"], rel=1e-6)
    assert reg[True, "two"] != pytest.approx(reg[False, "two"], rel=1e-3)
