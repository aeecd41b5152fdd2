"""The teacher's latent centred within each state (loss.state_centring, teacher/state_centring.py; issue 15)."""

import numpy as np
import pytest
import torch

import neurojepa as nj
from neurojepa.errors import InputError
from neurojepa.synthetic.toy import ToySession
from neurojepa.teacher.config import TeacherConfig
from neurojepa.teacher.state_centring import centre, centring_on, state_centres

from test_estimators import TINY

torch.set_num_threads(1)


def test_centres_are_each_states_train_block_mean_and_are_subtracted_per_row():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(60, 3)).astype(np.float32)
    state = np.array(["b", "a", "a", "c"] * 15)
    split = np.array(["train", "test", "train"] * 20)
    names = ["a", "b", "c", "d"]  # "d": no rows -> a zero centre
    c = state_centres(z, state, split, names)
    for code, name in enumerate(names):
        rows = (state == name) & (split == "train")
        want = z[rows].mean(0) if rows.any() else np.zeros(3)
        np.testing.assert_allclose(c[code], want, rtol=1e-6, atol=1e-7)
    out = centre(z.copy(), state, names, c)
    for code, name in enumerate(names[:3]):
        np.testing.assert_allclose(out[state == name], z[state == name] - c[code], rtol=1e-6)
        np.testing.assert_allclose(out[(state == name) & (split == "train")].mean(0), 0, atol=1e-6)


@pytest.mark.parametrize("mode, per_state, n_states, on", [
    ("auto", True, 2, True), ("auto", False, 2, False), ("never", True, 2, False), ("always", False, 2, True),
    ("always", False, 1, False)])
def test_auto_follows_the_per_state_regulariser(mode, per_state, n_states, on):
    cfg = TeacherConfig()
    cfg.loss.state_centring = mode
    assert centring_on(cfg, per_state, n_states) is on


@pytest.fixture(scope="module")
def toy():
    return ToySession(n_bins=1500, n_units=30, d=3, seed=0)


def test_teacher_latent_has_no_state_offset_on_train_blocks_and_needs_states(toy):
    """Two states without replay pairs: the fitted teacher centres each state's latent (train-block mean zero);
    with the option off the same training leaves the states apart; transform without states is an InputError."""
    counts, state, split = toy.load_counts(), toy.labels["state"].to_numpy(), toy.split
    opts = {**TINY, "loss.replay_weight": 0.0}
    centred = nj.Teacher(**opts).fit(counts, state, split=split)
    raw = nj.Teacher(**opts, **{"loss.state_centring": "never"}).fit(counts, state, split=split)
    z, z0 = centred.transform(counts, state), raw.transform(counts, state)
    train = split == "train"
    for name in np.unique(state):
        rows = train & (state == name)
        assert np.abs(z[rows].mean(0)).max() < 1e-5
    offsets = [np.abs(z0[train & (state == name)].mean(0)).max() for name in np.unique(state)]
    assert max(offsets) > 1e-3, offsets  # the raw latent does carry a per-state offset
    codes = {name: k for k, name in enumerate(centred.states_)}
    np.testing.assert_allclose(z + centred.module_.state_centres[[codes[s] for s in state]], z0, atol=1e-5)
    with pytest.raises(InputError, match="centres its latent within each state"):
        centred.transform(counts)
