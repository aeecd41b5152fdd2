"""Divisive input normalisation of the student (``input_norm_tau``, issue 17 item 1): a uniformly scaled input gives
the same input current (the gain divides the scale out), the gain is causal, a network calibrated on one input level
keeps its rate on a weaker input (and falls without the normalisation), and a student saved before the option
existed still loads."""

import numpy as np
import pytest
import torch

from neurojepa.student.config import StudentConfig
from neurojepa.student.network import StudentNet
from neurojepa.synthetic.toy import synthetic_session


def _net(n_units=30, **kw):
    cfg = StudentConfig(n_exc=40, n_inh=10, burn_in=4, **kw)
    counts, _, _ = synthetic_session(n_units=n_units, n_bins=1200, d=3, seed=0, block=100, base_rate_hz=20.0)
    torch.manual_seed(0)
    net = StudentNet(n_units, 3, cfg, bin_size=0.01)
    x = torch.from_numpy(counts.reshape(12, 100, n_units).astype(np.float32))
    net.calibrate_bias(x[:6])
    return net, x


def test_a_scaled_input_gives_the_same_current_with_normalisation_and_a_weaker_one_without():
    net, x = _net(input_norm_tau=0.5, input_norm_exponent=1.0, noise_std=0.0)
    assert float(net.input_ref) == pytest.approx(float(x[:6].sum(-1).mean()))
    a, b = net.input_current(x), net.input_current(0.6 * x)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    off, _ = _net(input_norm_tau=0.0, noise_std=0.0)
    assert not torch.allclose(off.input_current(x), off.input_current(0.6 * x), atol=1e-3)
    assert (off.input_norm_gain(x) == 1).all()
    half, _ = _net(input_norm_tau=0.5, input_norm_exponent=0.5, noise_std=0.0)  # the default: half in log terms
    torch.testing.assert_close(half.input_norm_gain(0.5 * x), 2 ** 0.5 * half.input_norm_gain(x))


def test_the_gain_is_causal_and_starts_from_the_warm_up_bins():
    net, x = _net(input_norm_tau=0.5, input_norm_exponent=1.0)
    g = net.input_norm_gain(x[:2])
    y = x[:2].clone()
    y[:, 60:] *= 3.0  # a change at bin 60 cannot move the gain before it
    g2 = net.input_norm_gain(y)
    torch.testing.assert_close(g[:, :60], g2[:, :60])
    assert (g2[:, 60:] < g[:, 60:]).all()
    # the running mean starts at the mean of the first burn_in bins: a constant input gives a constant gain
    flat = torch.ones(1, 50, 30)
    gf = net.input_norm_gain(flat)
    torch.testing.assert_close(gf, torch.full_like(gf, float(net.input_ref) / 30.0))


def _rate(net, x):
    return float(net.simulate(x)["spikes"].float().mean()) / net.cfg.dt


def test_the_rate_holds_on_a_weaker_input_with_normalisation_and_falls_without():
    on, x = _net(n_units=100, input_norm_tau=0.3, input_norm_exponent=1.0)
    off, _ = _net(n_units=100, input_norm_tau=0.0)
    test = x[6:]  # windows not used for calibration
    r_on, r_on_weak = _rate(on, test), _rate(on, 0.5 * test)
    r_off, r_off_weak = _rate(off, test), _rate(off, 0.5 * test)
    assert 8 < r_on < 12 and 8 < r_off < 12  # both calibrated near 10 Hz
    assert abs(r_on_weak / r_on - 1) < 0.02  # normalised: half the input drives it as hard (measured: equal)
    assert r_off_weak < 0.8 * r_off  # unnormalised: the rate falls (measured 9.9 -> 6.8 Hz)


def test_a_student_saved_before_input_normalisation_loads(tmp_path):
    from neurojepa.student.train import save_student, student_from_file

    net, x = _net(input_norm_tau=0.0)
    path = save_student(net, tmp_path / "student.pt")
    blob = torch.load(path, weights_only=True)
    del blob["state_dict"]["input_ref"]  # as written before the buffer existed
    torch.save(blob, path)
    # its config.yaml lacks input_norm_tau, so it reads the new default (on): the old student must still run without
    cfg = StudentConfig(**{k: v for k, v in vars(net.cfg).items() if k != "input_norm_tau"})
    assert cfg.input_norm_tau > 0
    again = student_from_file(path, cfg)
    assert again.cfg.input_norm_tau == 0
    torch.testing.assert_close(again.rec.weight, net.rec.weight)
    assert torch.equal(again.simulate(x[:2])["spikes"], net.simulate(x[:2])["spikes"])
