"""nj.Teacher / nj.Student on arrays: the pipeline's training core (same latents as teach_session), time blocks held
out as prepare holds them out, save/load round trips without pickle, and one-line errors for bad input."""

import json

import numpy as np
import pytest
import torch

import neurojepa as nj
from neurojepa.data.arrays import ArraySession, SplitConfig
from neurojepa.errors import InputError
from neurojepa.synthetic.toy import ToySession, synthetic_session
from neurojepa.teacher.train import split_units, teach_session

from conftest import sized

torch.set_num_threads(1)

TINY = {"model.width": 16, "model.embed_dim": 8, "loss.replay_dims": 8, "model.horizon": 4, "train.window": 16,
        "train.batch_size": 16, "train.steps_per_epoch": 4, "train.max_epochs": 2, "train.progress": False,
        "train.val_windows": 16,
        "eval.baselines": False, "train.threads": 1}
STUDENT_TINY = dict(n_exc=24, n_inh=6, window=16, burn_in=2, batch_size=8, eval_chunk=40, eval_warmup=4, eval_spike_chunks=4,
                    val_every=5, max_steps=20, readout_refit_steps=20, readout_refit_batch=1024, threads=1)


def student_size() -> dict:
    """The student science check's size: 20 steps on 3,000 bins under `make test`, 200 steps on 6,000 bins under
    `make test-full` (NEUROJEPA_FULL=1)."""
    return sized(dict(max_steps=20, n_bins=3000), dict(max_steps=200, n_bins=6000))


@pytest.fixture(scope="module")
def toy():
    return ToySession(n_bins=1500, n_units=30, d=3, seed=0)


@pytest.mark.slow
def test_teacher_estimator_runs_the_pipelines_training(toy, tmp_path):
    """Same arrays, splits and held-out units as teach_session: the same latents to the bit and the same scores."""
    opts = {**TINY, "loss.replay_weight": 0.0}  # replay pairing needs flash labels, which arrays do not carry
    est = nj.Teacher(**opts)
    _, heldout = split_units(toy.n_units, est.config.eval.heldout_fraction, est.config.train.seed)
    state = toy.labels["state"].to_numpy()
    z = est.fit(toy.load_counts(), state, heldout_units=heldout, split=toy.split).transform(toy.load_counts(), state)

    out = teach_session(toy, tmp_path / "pipeline", est.config)
    with np.load(out / "latents.npz") as f:
        assert np.array_equal(f["latents"], z)
        assert np.array_equal(f["heldout_units"], est.heldout_units_)
    ref = json.loads((out / "metrics.json").read_text())["teacher"]
    m = est.score(toy.load_counts(), state, split=toy.split, gt_latents=toy.gt_latents)
    for key in ("gt_r2", "gt_r2_cross_state", "cobps", "rankme", "forecast_r2"):
        assert m[key] == pytest.approx(ref[key], rel=1e-9, abs=1e-12), key
    assert est.fit_info_["global_step"] == ref["global_step"] == 8


def test_teacher_never_trains_on_test_blocks(toy):
    """Shuffling the bins inside the test blocks (dealt like prepare deals them) leaves the trained weights as they
    were (the per-unit means that seed the read-out bias are unchanged by a shuffle); shuffling train bins does not."""
    counts, state = toy.load_counts(), toy.labels["state"].to_numpy()
    opts = {**TINY, "splits.block_s": 3.0}
    split = ArraySession(counts, 0.01, state, splits=SplitConfig(block_s=3.0)).split

    def weights(c):
        return nj.Teacher(**opts).fit(c, state).module_.state_dict()

    rng = np.random.default_rng(1)
    base = weights(counts)
    for name, changed in (("test", False), ("train", True)):
        rows = np.flatnonzero(split == name)
        shuffled = counts.copy()
        shuffled[rows] = counts[rng.permutation(rows)]
        w = weights(shuffled)
        same = all(torch.equal(base[k], w[k]) for k in base)
        assert same != changed, name


def test_splits_are_prepares_blocks():
    """Contiguous blocks of block_s inside each state, shuffled and dealt 70/10/20; bins of state '' in none."""
    n = 6000
    state = np.where(np.arange(n) < 3000, "active", "passive").astype(object)
    state[2900:3100] = ""
    s = ArraySession(np.zeros((n, 2), np.uint8), 0.01, state, splits=SplitConfig(block_s=2.0))
    assert set(s.split[state == ""]) == {""}
    for a0, b0 in ((0, 2900), (3100, 6000)):  # each state's run: 15 blocks of 200 bins (the last one 100)
        sp = s.split[a0:b0]
        assert all(c % 200 == 0 for c in np.flatnonzero(sp[1:] != sp[:-1]) + 1)  # changes at block edges only
        dealt = list(sp[::200])
        assert (dealt.count("train"), dealt.count("val"), dealt.count("test")) == (10, 2, 3)
    again = ArraySession(np.zeros((n, 2), np.uint8), 0.01, state, splits=SplitConfig(block_s=2.0))
    assert np.array_equal(s.split, again.split)  # a function of the seed
    other = ArraySession(np.zeros((n, 2), np.uint8), 0.01, state, splits=SplitConfig(block_s=2.0, seed=5))
    assert not np.array_equal(s.split, other.split)


def test_teacher_save_load_round_trip(toy, tmp_path):
    counts, state = toy.load_counts(), toy.labels["state"].to_numpy()
    est = nj.Teacher(**TINY, splits={"block_s": 3.0}).fit(counts, state, heldout_units=[0, 5, 29])
    z = est.transform(counts, state)
    assert est.module_.state_centres is not None  # two states, no replay: centred within each state
    est.save(tmp_path / "t")
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["teacher.json", "teacher.pt"]
    blob = torch.load(tmp_path / "t" / "teacher.pt", weights_only=True)  # plain tensors, no pickled objects
    assert all(isinstance(v, torch.Tensor) for v in blob["state_dict"].values())
    assert isinstance(blob["state_centres"], torch.Tensor)
    meta = json.loads((tmp_path / "t" / "teacher.json").read_text())
    assert meta["heldout_units"] == [0, 5, 29] and meta["config"]["splits"]["block_s"] == 3.0
    again = nj.Teacher.load(tmp_path / "t")
    assert np.array_equal(again.transform(counts, state), z)
    assert again.config == est.config and np.array_equal(again.heldin_units_, est.heldin_units_)
    with pytest.raises(InputError, match="not a saved Teacher"):
        nj.Teacher.load(tmp_path)


def test_options_two_spellings_and_typos():
    a = nj.Teacher(**{"train.max_epochs": 3, "model.embed_dim": 12})
    b = nj.Teacher(train={"max_epochs": 3}, model={"embed_dim": 12})
    assert a.config == b.config and a.config.train.max_epochs == 3 and a.config.model.embed_dim == 12
    assert nj.Teacher(config=a.config, **{"train.lr": 0.01}).config.train.max_epochs == 3
    with pytest.raises(InputError, match="did you mean 'train.max_epochs'"):
        nj.Teacher(**{"train.max_epoch": 3})
    with pytest.raises(InputError, match="unknown config key 'max_step'"):
        nj.Student(max_step=3)
    assert nj.Student(max_steps=7, splits={"block_s": 5}).config.splits.block_s == 5.0


@pytest.mark.parametrize("counts, match", [
    (np.zeros(100), "2-d array"),
    (-np.ones((100, 3)), "negative"),
    (np.full((100, 3), 0.5), "whole spike counts"),
    (np.full((100, 3), np.nan), "whole spike counts"),
])
def test_bad_counts_are_one_line_errors(counts, match):
    with pytest.raises(InputError, match=match):
        nj.Teacher(**TINY).fit(counts)


def test_fitted_teacher_checks_what_it_is_given(toy):
    counts = toy.load_counts()
    with pytest.raises(InputError, match="not fitted"):
        nj.Teacher().transform(counts)
    with pytest.raises(InputError, match="one value per bin"):
        nj.Teacher(**TINY).fit(counts, states=["active"] * 10)
    with pytest.raises(InputError, match="heldout_units"):
        nj.Teacher(**TINY).fit(counts, heldout_units=[30])
    est = nj.Teacher(**TINY, splits={"block_s": 3.0}).fit(counts)
    with pytest.raises(InputError, match="fit on 30 units"):
        est.transform(counts[:, :20])


@pytest.mark.science
def test_student_estimator_runs_the_pipelines_distillation(tmp_path, monkeypatch):
    """Student.fit + score on arrays == distill on the same counts, latents and blocks (the same metrics), and
    simulate gives spikes and the very readout that was scored. Science check: the distilled student tracks the
    latents on held-out blocks (CCA > 0.4, the null near 0); its size is :func:`student_size`."""
    from neurojepa.data import dataset
    from neurojepa.student.train import distill

    size = student_size()
    n_bins = size["n_bins"]
    counts, lat, split = synthetic_session(n_units=30, n_bins=n_bins, d=3, seed=0, block=300, base_rate_hz=20,
                                           tuning=0.6)
    est = nj.Student(**{**STUDENT_TINY, "max_steps": size["max_steps"]}).fit(counts, lat, split=split)
    m = est.score(counts, lat, split=split)

    as_prepared = ArraySession(counts, 0.01, split=split)  # what distill reads, without a directory
    monkeypatch.setattr(dataset.PreparedSession, "load", classmethod(lambda cls, path: as_prepared))
    (tmp_path / "teacher").mkdir()
    np.savez(tmp_path / "teacher" / "latents.npz", latents=lat, bin_size=0.01)
    out = distill("ds", tmp_path / "teacher", tmp_path / "student", est.config)
    ref = json.loads((out / "metrics.json").read_text())["student"]
    for key in ("cca_heldout_mean", "cca_null_mean", "rate_hz_median", "frac_in_band", "cv_isi_median",
                "n_test_bins", "dale_violations"):
        assert m[key] == pytest.approx(ref[key], rel=1e-6, abs=1e-9), key
    assert m["dale_violations"] == 0 and m["cca_heldout_mean"] > 0.4 > abs(m["cca_null_mean"])

    sim = est.simulate(counts)
    with np.load(out / "readout.npz") as f:
        np.testing.assert_allclose(sim["readout"], f["readout"], rtol=1e-5, atol=1e-6)
    assert sim["spikes"].shape == (n_bins * est.net_.substeps, 30) and sim["spikes"].dtype == np.uint8
    rate = sim["spikes"].mean() / est.config.dt
    assert 1 < rate < 50  # Hz: a network that fires, neither silent nor saturated

    est.save(tmp_path / "s")
    assert sorted(q.name for q in (tmp_path / "s").iterdir()) == ["student.json", "student.pt"]
    again = nj.Student.load(tmp_path / "s")
    assert np.array_equal(again.simulate(counts)["readout"], sim["readout"])
    with pytest.raises(InputError, match="shape"):
        est.fit(counts, lat[:100])
