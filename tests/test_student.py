"""The spiking student: fused network == snntorch reference, Dale invariant under training, homeostasis and
spiking statistics against known answers, and distillation end to end on a tiny synthetic session."""

import io
import json

import numpy as np
import pytest
import torch

from neurojepa.errors import InputError
from neurojepa.metrics import spiking
from neurojepa.student.config import StudentConfig
from neurojepa.student.dale import dale_violations, neuron_signs
from neurojepa.student.homeostasis import band_penalty, rates_by_group, rates_hz
from neurojepa.student.module import StudentModule
from neurojepa.student.network import StudentNet
from neurojepa.synthetic.toy import synthetic_session

SMALL = dict(n_exc=24, n_inh=6, window=8, burn_in=2, batch_size=4, eval_chunk=40, eval_warmup=4, eval_spike_chunks=4, val_every=5,
             readout_refit_steps=20, readout_refit_batch=1024)


def _net(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = StudentConfig(**{**SMALL, **kw})
    counts, lat, _ = synthetic_session(n_units=20, n_bins=200, d=3, seed=seed)
    net = StudentNet(20, 3, cfg, bin_size=0.01)
    x = torch.tensor(counts[:120].reshape(4, 30, 20).astype(np.float32))
    net.calibrate_bias(x)
    return net, x, torch.tensor(lat[:120].reshape(4, 30, 3))


def _assert_fused_equals_reference(net, x):
    """One forward + backward through the fused network and the snntorch reference, with the same background noise:
    identical spikes (and not two silent networks), equal gradients."""
    runs = []
    for fwd in (net.forward, net.forward_reference):
        torch.manual_seed(1)
        out = fwd(x)
        (out["readout"].pow(2).mean() + out["spikes"].mean()).backward()
        runs.append((out["spikes"].detach(), {n: p.grad.clone() for n, p in net.named_parameters()}))
        net.zero_grad()
    assert runs[0][0].sum() > 50
    assert torch.equal(runs[0][0], runs[1][0])
    for name in runs[0][1]:
        torch.testing.assert_close(runs[0][1][name], runs[1][1][name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kw", [dict(adapt_strength=0.0, readout_taus=[0.05]),
                                dict(adapt_strength=0.2, readout_taus=[0.01, 0.03, 0.1]),
                                dict(adapt_strength=0.2, readout_taus=[0.01, 0.1], rec_rank=4),
                                dict(rec_rank=3, dale=False),
                                dict(rec_rank=4, ff_inhibition=1.0, slow_syn_fraction=0.5),
                                dict(rec_rank=4, adapt_strength=0.2, slow_adapt_fraction=0.5, slow_adapt_tau=[0.05, 0.5],
                                     adapt_strength_inh=0.2)])
def test_fast_network_equals_snntorch_reference(kw):
    net, x, _ = _net(**kw)
    _assert_fused_equals_reference(net, x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("step_kernels", [False, True])
@pytest.mark.parametrize("kw", [dict(adapt_strength=0.0), dict(adapt_strength=0.2), dict(rec_rank=4),
                                dict(rec_rank=4, adapt_strength=0.2, slow_adapt_fraction=0.5,
                                     slow_adapt_tau=[0.05, 0.5], slow_syn_fraction=0.5)])
def test_cuda_graph_replay_equals_snntorch_reference_on_gpu(step_kernels, kw, monkeypatch):
    from neurojepa.student import network

    monkeypatch.setattr(network, "STEP_KERNELS", step_kernels)
    net, x, _ = _net(readout_taus=[0.01, 0.1], **kw)
    net, x = net.cuda(), x.cuda()
    assert net.cfg.cuda_graphs  # the default
    for _ in range(2):  # the first call captures the graphs, the second replays the cached ones
        _assert_fused_equals_reference(net, x)
    assert any(k[0] == "fwd" for k in network._GRAPHS) and any(k[0] == "bwd" for k in network._GRAPHS)


def _kernel_formulas(p):
    """network's step kernels written in torch, one operation per rounding as the CUDA code rounds them; p maps the
    kernel's parameter names to values. Returns the outputs in the kernel's order."""
    if "mem" in p:  # lif_back
        d = p["slope"] * (p["mem"] - p["theta"]).abs() + 1
        g = p["gs"] / (d * d) + p["beta"] * p["gu"]
        return g, g * p["gate"]
    xin = p["xin"] if "xin" in p else p["xt"] + p["lin"]  # lif_step_rho / lif_step
    cnt, s = p["cnt"], p["s"]
    g = (cnt == 0).to(xin.dtype)
    an = p["a"] * p["rho"] + s * p["b"]
    un = p["beta"] * p["u"] + (xin - an) * g - s * p["theta"]
    sn = (un > p["theta"]).to(xin.dtype)
    return an, un, g, sn, torch.where(sn > 0, torch.full_like(cnt, p["nref"]), (cnt - 1).clamp_min(0))


class _KernelOnCpu:
    """A jiterator function as torch code, with jiterator's checks on a call: the kernel's source parses, at most 8
    tensor inputs and as many as it declares, constants only among those declared; counts its calls."""

    def __init__(self, code, n_out, consts):
        from torch.cuda.jiterator import _CodeParser

        params = [q.split()[-1].lstrip("&") for q in _CodeParser(code).function_params.strip("()").split(",")]
        self.inputs, self.consts, self.calls = params[: len(params) - n_out - len(consts)], consts, 0

    def __call__(self, *tensors, **consts):
        assert len(tensors) <= 8 and len(tensors) == len(self.inputs)
        assert set(consts) <= set(self.consts)
        self.calls += 1
        return _kernel_formulas({**self.consts, **consts, **dict(zip(self.inputs, tensors))})


@pytest.mark.parametrize("step_kernels", [False, True])
@pytest.mark.parametrize("kw", [dict(adapt_strength=0.2), dict(rec_rank=4, adapt_strength=0.0),
                                dict(rec_rank=4, adapt_strength=0.2, slow_adapt_fraction=0.5,
                                     slow_adapt_tau=[0.05, 0.5])])
def test_graphed_loops_take_every_network_on_cpu(kw, step_kernels, monkeypatch):
    """The code around the CUDA graphs and the step kernels, on CPU: a graph's replay as a plain call on copies of
    its static inputs, the two CUDA kernels as their formulas in torch. Dense and low-rank recurrence, scalar and
    per-neuron adaptation: spikes equal the snntorch reference's, gradients agree. (The kernels themselves and
    real graph capture are checked on a GPU by the test above.)"""
    from neurojepa.student import network

    keys = []

    def replay(key, fn, inputs):
        keys.append(key)
        return tuple(o.clone() for o in fn(*[t.detach().clone() for t in inputs]))

    kernels = [_KernelOnCpu(*spec) for spec in network._KERNELS]
    monkeypatch.setattr(network, "_graphs_on", lambda x, cuda_graphs: cuda_graphs)
    monkeypatch.setattr(network, "_replay", replay)
    monkeypatch.setattr(network, "STEP_KERNELS", step_kernels)
    monkeypatch.setattr(network, "_STEP_FNS", kernels)
    net, x, _ = _net(**kw)
    _assert_fused_equals_reference(net, x)
    assert [k[0] for k in keys] == ["fwd", "bwd"]
    assert keys[0][4][0] == (2 if kw.get("rec_rank") else 1)  # the weights went in as factors (U, V) or one matrix
    n_steps = x.shape[1] * net.substeps
    forward = kernels[2] if kw.get("slow_adapt_fraction") else kernels[0]  # the per-neuron-rho kernel, or the other
    assert (forward.calls, kernels[1].calls) == ((n_steps, n_steps) if step_kernels else (0, 0))


def _min_isi(net, x, drive):
    with torch.no_grad():
        net.inp.bias.fill_(drive)  # strong constant drive
    s = net.simulate(x)["spikes"].numpy()
    t, b, u = np.nonzero(s)
    order = np.lexsort((t, u, b))
    t, b, u = t[order], b[order], u[order]
    same = (b[1:] == b[:-1]) & (u[1:] == u[:-1])
    assert same.sum() > 100
    return np.diff(t)[same].min()


def test_refractory_gate_bounds_interspike_interval():
    net, x, _ = _net(noise_std=0.0)
    assert net.n_ref == 2
    assert _min_isi(net, x, 0.8) == net.n_ref + 1  # gated for n_ref steps, then it can fire again at once
    free, x, _ = _net(noise_std=0.0, refractory=0.0)
    assert _min_isi(free, x, 0.8) == 1


def _check_radius_and_balance(net, rel):
    """The spectral radius of W_rec / (1 - beta_E) is the configured one; rows are balanced: every neuron's expected
    E input equals its expected I input (within rel, over the whole matrix)."""
    w = net.rec.weight.detach()
    rho = torch.linalg.eigvals(w.double() / (1 - net.beta[0].double())).abs().max().item()
    assert rho == pytest.approx(net.cfg.spectral_radius, rel=1e-4)
    assert w[:, : net.n_exc].sum().item() == pytest.approx(-w[:, net.n_exc:].sum().item(), rel=rel)


def _huge_steps(net, x, lat, n=3):
    """n SGD steps of lr 50: a penalty would be overrun by them, a parametrisation not."""
    opt = torch.optim.SGD(net.parameters(), lr=50.0)
    for _ in range(n):
        out = net(x)
        (-(out["readout"] * lat).sum() + out["spikes"].sum()).backward()
        opt.step()
        opt.zero_grad()


def test_dale_holds_after_training_steps_and_init_is_balanced():
    net, x, lat = _net()
    sign = neuron_signs(net.n_exc, net.n_inh)
    _check_radius_and_balance(net, rel=0.2)
    _huge_steps(net, x, lat)
    assert dale_violations(net.rec.weight, sign) == 0
    assert (net.inp.weight >= 0).all() and (net.readout.weight >= 0).all()
    assert (net.rec.weight[:, net.n_exc:] <= 0).all() and (net.rec.weight[:, : net.n_exc] >= 0).all()
    assert net.readout.weight.shape[1] == net.n_exc * len(net.cfg.readout_taus)  # E neurons only, per filter


def test_low_rank_recurrence_keeps_dale_and_its_radius_and_matches_the_dense_product():
    """rec_rank > 0: W = U V^T through E and I pools. Dale holds by the factors (also after huge steps), the radius
    at init is the one asked for, the rows are balanced, and the scan's recurrent weight gradient equals the dense
    gradient pulled back to the factors (dL/dU = dL/dW V, dL/dV = dL/dW^T U)."""
    from neurojepa.student.network import _recurrent, _weight_grad

    net, x, lat = _net(rec_rank=4)
    w = net.rec.weight.detach()
    assert torch.linalg.matrix_rank(w.double(), rtol=1e-5).item() == 8  # 4 E pools + 4 I pools (float32 product)
    _check_radius_and_balance(net, rel=0.5)
    u, v = net.recurrent_weights()
    s = (torch.rand(5, 7, net.cfg.n_neurons) < 0.1).float()
    torch.testing.assert_close(_recurrent(s[0], (u, v)), s[0] @ w.T)
    g = torch.randn_like(s)
    gu, gv = _weight_grad(g, s, (u, v))
    gw = _weight_grad(g, s)
    torch.testing.assert_close(gu, gw @ v, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gv, gw.T @ u, rtol=1e-4, atol=1e-5)
    _huge_steps(net, x, lat)
    assert dale_violations(net.rec.weight, neuron_signs(net.n_exc, net.n_inh)) == 0
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    again = StudentNet(20, 3, net.cfg, bin_size=0.01)
    again.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert torch.equal(again.rec.weight, net.rec.weight)
    with pytest.raises(ValueError, match="p_connect"):
        StudentConfig(rec_rank=4, p_connect=0.5)


@pytest.mark.parametrize("rank", [0, 4])
def test_unconstrained_network_can_break_dale(rank):
    """One step that pushes every recurrent weight toward the wrong sign: the ablation's weights follow it, Dale's
    parametrisation does not let them (dense, and low-rank through its factors)."""
    for dale in (False, True):
        net, _, _ = _net(dale=dale, rec_rank=rank)
        w = net.rec.weight
        (w[:, : net.n_exc].sum() - w[:, net.n_exc:].sum()).backward()
        with torch.no_grad():  # the first parameter only (low-rank: U; flipping U and V together keeps W's sign)
            p = next(net.rec.parameters())
            p -= 1e4 * p.grad
        violations = dale_violations(net.rec.weight, neuron_signs(net.n_exc, net.n_inh))
        assert (violations == 0) if dale else (violations > 0)


def test_adaptation_slows_firing_under_constant_drive():
    """Spike-frequency adaptation: under a constant supra-threshold drive, an adapting E neuron's ISIs lengthen
    to the mean-field adapted period; I neurons do not adapt (identical spikes)."""
    x = torch.zeros(1, 30, 20)
    isi, spikes = {}, {}
    for strength in (0.0, 0.05):
        net, _, _ = _net(noise_std=0.0, adapt_strength=strength, adapt_tau=0.1)
        with torch.no_grad():
            net.inp.bias.fill_(0.15)  # constant drive ~3 rheobases (E), no input, no noise, weak recurrence
            net.rec.parametrizations.weight.original.zero_()
        s = net.simulate(x)["spikes"][:, 0].numpy()  # (300 steps, N)
        spikes[strength] = s
        t = np.flatnonzero(s[:, 0])
        isi[strength] = np.diff(t)
    # independent mean-field answer: a neuron driven by a constant current I reaches theta = 1 from ~0 after
    # ln(U_inf / (U_inf - 1)) / ln(1 / beta) steps, U_inf = I / (1 - beta), plus n_ref gated steps; with adaptation
    # I = drive - A, A = strength * rheobase * rate_hz, solved self-consistently for the period
    beta = float(net.beta[0])
    rheo = 1 - beta

    def period(drive):
        u_inf = drive / rheo
        return net.n_ref + np.log(u_inf / (u_inf - 1)) / np.log(1 / beta)

    lo, hi = 10.0, 200.0
    for _ in range(60):  # bisection on T - period(T)
        mid = (lo + hi) / 2
        a_ss = 0.05 * rheo * 1000.0 / mid
        lo, hi = (mid, hi) if 0.15 - a_ss <= rheo or mid < period(0.15 - a_ss) else (lo, mid)
    assert isi[0.0].max() - isi[0.0].min() <= 1  # without adaptation: a clock (up to the reset's residue)
    assert isi[0.0].mean() == pytest.approx(period(0.15), rel=0.1)
    assert isi[0.05][-1] > 2 * isi[0.05][0]  # adapting: intervals lengthen ...
    assert isi[0.05][-4:].mean() == pytest.approx(lo, rel=0.1)  # ... to the self-consistent adapted period
    np.testing.assert_array_equal(spikes[0.05][:, 24:], spikes[0.0][:, 24:])  # I neurons do not adapt


def test_inhibitory_adaptation_has_its_own_strength_and_leaves_e_neurons_alone():
    """adapt_strength_inh: I neurons adapt with a steady current of adapt_strength_inh rheobases (of an I neuron) per
    Hz (analytic: b / (1 - rho) = strength (1 - beta_I) / dt); under a constant drive their intervals lengthen,
    while with the recurrence off the E neurons' spikes are those of a network whose I neurons do not adapt."""
    x = torch.zeros(1, 30, 20)
    runs = {}
    for k in (0.0, 0.05):
        net, _, _ = _net(noise_std=0.0, adapt_strength=0.05, adapt_strength_inh=k, adapt_tau=0.1)
        with torch.no_grad():
            net.inp.bias.fill_(0.15)
            net.rec.parametrizations.weight.original.zero_()
        runs[k] = net.simulate(x)["spikes"][:, 0].numpy()
    ne = net.n_exc
    rho, b = net._adapt()
    np.testing.assert_allclose((b[ne:] / (1 - rho)).numpy(), 0.05 * (1 - float(net.beta[ne])) / net.cfg.dt, rtol=1e-5)
    np.testing.assert_array_equal(runs[0.05][:, :ne], runs[0.0][:, :ne])
    off, on = (np.diff(np.flatnonzero(runs[k][:, ne])) for k in (0.0, 0.05))
    assert off.max() - off.min() <= 1  # a clock without adaptation
    assert len(on) >= 3 and on[-1] > 1.5 * on[0] and len(on) < len(off)
    with pytest.raises(ValueError, match="adapt_strength_inh"):
        StudentConfig(adapt_strength_inh=-0.1)


def test_feedforward_inhibition_cancels_common_mode_input_and_keeps_dale():
    """ff_inhibition = 1: adding the same count to every afferent leaves every neuron's drive unchanged (the pool's
    inhibition grows with the neuron's own excitation); 0.5 passes half of it; 0 is the all-excitatory projection.
    The afferent weights stay >= 0 (Dale), the pool's current is >= 0 and is what the drive loses, and the recorded
    inhibitory current carries it."""
    common = 3.0
    for k in (0.0, 0.5, 1.0):
        net, x, _ = _net(ff_inhibition=k, noise_std=0.0, input_norm_tau=0.0)
        with torch.no_grad():
            lift = net.afferent_drive(x + common) - net.afferent_drive(x)
            excitation = common * net.inp.weight.sum(1)  # what the all-excitatory projection adds
            torch.testing.assert_close(lift, (1 - k) * excitation.expand_as(lift), atol=1e-5, rtol=1e-4)
            assert (net.inp.weight >= 0).all()
            pool = net.feedforward_inhibition(x)[:: net.substeps].transpose(0, 1)  # (B, bins, N), one step per bin
            assert (pool >= 0).all()
            torch.testing.assert_close(net.afferent_drive(x), net.inp(x) - pool, atol=1e-5, rtol=1e-4)
            if k > 0:
                res = net.simulate(x, record_currents=True)
                assert (res["i_inh"] <= 0).all() and float(res["i_inh"].mean()) < 0


def test_slow_synapses_filter_the_drive_of_their_neurons_only():
    """slow_syn_fraction: a seeded fraction of the neurons get a causal exponential filter over bins (against a naive
    loop; unit DC gain, no start-up transient), the others the same drive as without; the rest of the
    initialisation is unchanged, the feed-forward pool's current goes through the same filter, and config typos
    are refused."""
    from neurojepa.student.network import _raw_weight, slow_synapses

    rng = np.random.default_rng(0)
    cur = torch.tensor(rng.normal(size=(2, 30, 5)), dtype=torch.float32)
    decay = torch.tensor([0.0, 0.5, 0.9, 0.0, 0.99])
    want = np.zeros((2, 30, 5))
    for b in range(2):
        for j in range(5):
            y = float(cur[b, 0, j])
            for t in range(30):
                y = float(decay[j]) * y + (1 - float(decay[j])) * float(cur[b, t, j])
                want[b, t, j] = y
    np.testing.assert_allclose(slow_synapses(cur, decay).numpy(), want, rtol=1e-5, atol=1e-6)
    const = torch.full((1, 10, 5), 2.5)
    torch.testing.assert_close(slow_synapses(const, decay), const)

    base, x, _ = _net(ff_inhibition=1.0, noise_std=0.0, input_norm_tau=0.0)
    slow, _, _ = _net(ff_inhibition=1.0, noise_std=0.0, input_norm_tau=0.0, slow_syn_fraction=0.5)
    assert base.syn_decay is None
    d = slow.syn_decay
    fast = d == 0
    assert 0.3 < float((~fast).float().mean()) < 0.7
    lo, hi = np.exp(-0.01 / 0.03), np.exp(-0.01 / 0.3)
    assert ((d[~fast] >= lo - 1e-6) & (d[~fast] <= hi + 1e-6)).all()
    torch.testing.assert_close(slow.rec.weight, base.rec.weight)
    with torch.no_grad():
        _raw_weight(slow.inp).copy_(_raw_weight(base.inp))  # calibration scaled the slow neurons' weights differently
        slow.inp.bias.copy_(base.inp.bias)
        a, b = slow.afferent_drive(x), base.afferent_drive(x)
        torch.testing.assert_close(a[..., fast], b[..., fast])
        torch.testing.assert_close(a[..., ~fast], slow_synapses(b, d)[..., ~fast])
        pool = slow.feedforward_inhibition(x)[:: slow.substeps].transpose(0, 1)
        torch.testing.assert_close(pool, slow_synapses(base.feedforward_inhibition(x)[:: base.substeps]
                                                       .transpose(0, 1), d))
    for bad in (dict(slow_syn_fraction=1.5), dict(slow_syn_tau=[0.3, 0.03]), dict(slow_syn_tau=[0.1])):
        with pytest.raises(ValueError, match="slow_syn"):
            StudentConfig(**bad)


def test_slow_adaptation_keeps_the_steady_strength_per_hz():
    """slow_adapt_fraction: a seeded fraction of the E neurons adapt with a time constant in slow_adapt_tau (the
    others with adapt_tau, I neurons not at all); every E neuron's steady adaptation current per Hz is the same
    (analytic: b / (1 - rho) = adapt_strength (1 - beta_E) / dt), the rest of the initialisation is unchanged, a
    constant spike train drives a slow neuron's current to the same level as a fast one's but later (naive loop),
    and config typos are refused."""
    cfg = dict(adapt_strength=0.2, noise_std=0.0)
    base, _, _ = _net(**cfg)
    slow, _, _ = _net(**cfg, slow_adapt_fraction=0.5, slow_adapt_tau=[0.1, 1.0])
    assert base.adapt_decay is None and base._adapt()[0] == base.adapt_rho
    decay, b = slow._adapt()
    ne = slow.n_exc
    tau = -slow.cfg.dt / torch.log(decay[:ne])
    is_slow = tau > 0.05
    assert 0.3 < float(is_slow.float().mean()) < 0.7
    assert ((tau[is_slow] > 0.1 - 1e-4) & (tau[is_slow] < 1.0 + 1e-3)).all()
    torch.testing.assert_close(tau[~is_slow], torch.full_like(tau[~is_slow], slow.cfg.adapt_tau))
    assert (b[ne:] == 0).all()
    steady = 0.2 * (1 - np.exp(-slow.cfg.dt / slow.cfg.tau_mem_exc)) / slow.cfg.dt
    np.testing.assert_allclose((b[:ne] / (1 - decay[:ne])).numpy(), steady, rtol=1e-4)
    torch.testing.assert_close(slow.rec.weight, base.rec.weight)
    i_slow, i_fast = int(torch.argmax(tau)), int(torch.argmin(tau))
    a, last = np.zeros(2), []
    hit = [None, None]
    for t in range(1, 20001):  # one spike every 10 steps: A -> steady * 0.1 spikes per step, on average
        a = a * decay[[i_slow, i_fast]].double().numpy() + (t % 10 == 0) * b[[i_slow, i_fast]].double().numpy()
        for k in range(2):
            if hit[k] is None and a[k] > 0.8 * steady * 0.1:
                hit[k] = t
        if t > 19990:
            last.append(a)
    np.testing.assert_allclose(np.mean(last, axis=0), steady * 0.1, rtol=0.02)
    assert hit[0] > 10 * hit[1]
    for bad in (dict(slow_adapt_fraction=-0.1), dict(slow_adapt_tau=[2.0, 0.2]),
                dict(slow_adapt_fraction=0.5, adapt_strength=0.0)):
        with pytest.raises(ValueError, match="slow_adapt"):
            StudentConfig(**bad)


def test_evaluation_warmup_lets_the_slowest_readout_filter_settle_before_scored_bins():
    """Evaluation runs the session in chunks, each after ``eval_warmup`` bins of its own past input: with the default
    warm-up, the slowest readout filter (300 ms) starts each chunk where it runs later on (a settled network), while
    an 80 ms warm-up (the one before session 21) leaves the first scored bins at a fraction of it."""
    from neurojepa.student.evaluate import student_features

    torch.manual_seed(0)
    default = StudentConfig()
    assert max(default.readout_taus) <= 0.3
    cfg = StudentConfig(n_exc=24, n_inh=6, readout_taus=[0.3], adapt_strength=0.2, slow_adapt_fraction=0.5,
                        eval_chunk=40)
    counts, _, _ = synthetic_session(n_units=20, n_bins=2000, d=3, seed=0)
    net = StudentNet(20, 3, cfg, bin_size=0.01)
    net.calibrate_bias(torch.tensor(counts[None, :200].astype(np.float32)))

    def start_over_late(warmup):  # mean filtered E count in a chunk's first 5 bins / in its last 20
        f = student_features(net, counts, 40, warmup).reshape(-1, 40, 24).mean((0, 2))
        return f[:5].mean() / f[20:].mean()

    assert start_over_late(8) < 0.8
    assert abs(start_over_late(default.eval_warmup) - 1) < 0.1


def test_band_penalty_known_values():
    r = torch.tensor([0.0, 5.0, 10.0, 20.0, 30.0])
    assert band_penalty(r, 5.0, 20.0).item() == pytest.approx((25 + 0 + 0 + 0 + 100) / 5)
    s = torch.zeros(1000, 2, 3)
    s[::100, :, 0] = 1  # one spike per 100 ms
    assert rates_hz(s, 0.001, per_window=False).tolist() == pytest.approx([10.0, 0.0, 0.0])


def test_per_state_rates_against_a_naive_loop_and_what_the_penalty_sees():
    rng = np.random.default_rng(0)
    s = torch.from_numpy((rng.random((50, 6, 4)) < 0.02).astype(np.float32))
    groups = torch.tensor([2, 0, 2, 2, 5, 0])
    naive = [s.numpy()[:, groups.numpy() == g].mean(axis=(0, 1)) / 0.002 for g in (0, 2, 5)]
    np.testing.assert_allclose(rates_by_group(s, 0.002, groups).numpy(), np.stack(naive), rtol=1e-6)
    # a neuron silent in one state and at 20 Hz in the other: in band on the mix (10 Hz), out of it per state
    two = torch.zeros(1000, 4, 1)
    two[::50, 2:] = 1
    codes = torch.tensor([0, 0, 1, 1])
    assert band_penalty(rates_hz(two, 0.001, per_window=False), 5.0, 20.0).item() == 0.0
    assert band_penalty(rates_by_group(two, 0.001, codes), 5.0, 20.0).item() == pytest.approx(25 / 2)
    with pytest.raises(ValueError, match="exclude"):
        StudentConfig(homeostasis_per_state=True, homeostasis_per_window=True)


def test_per_state_homeostasis_reads_the_batch_states():
    """The module's band term pools rates per state only with ``homeostasis_per_state`` and states given; with one
    state in the batch it is the pooled term."""
    torch.manual_seed(0)
    cfg = StudentConfig(n_exc=16, n_inh=4, homeostasis_per_state=True, noise_std=0.0)
    net = StudentNet(10, 3, cfg, bin_size=0.01)
    x = torch.rand(4, cfg.burn_in + 6, 10) * 3
    x[2:] *= 0.2  # the second state's windows get far less input: their neurons fire less
    lat = torch.randn(4, cfg.burn_in + 6, 3)
    net.calibrate_bias(x[:2])
    pooled = StudentModule(net, StudentConfig(n_exc=16, n_inh=4, noise_std=0.0))
    per = StudentModule(net, cfg)
    with torch.no_grad():
        mixed = torch.tensor([0, 0, 1, 1])
        b_pooled = pooled.losses(x, lat, mixed)["band"].item()
        b_state = per.losses(x, lat, mixed)["band"].item()
        assert b_state > b_pooled  # the mix hides what each state does
        one = torch.zeros(4, dtype=torch.int64)
        assert per.losses(x, lat, one)["band"].item() == pytest.approx(b_pooled, rel=1e-6)
        assert per.losses(x, lat, None)["band"].item() == pytest.approx(b_pooled, rel=1e-6)


def test_spiking_statistics_known_answers():
    rng = np.random.default_rng(0)
    poisson = (rng.random((4, 20000, 5)) < 0.01).astype(np.uint8)  # 10 Hz at 1 ms
    np.testing.assert_allclose(spiking.rate_hz(poisson, 0.001), 10.0, rtol=0.12)  # 800 +- 28 spikes
    np.testing.assert_allclose(spiking.cv_isi(poisson), 1.0, atol=0.1)  # geometric ISIs: CV = sqrt(1 - p)
    np.testing.assert_allclose(spiking.fano_factor(poisson, 100), 1.0, atol=0.1)
    clock = np.zeros((1, 1000, 2), np.uint8)
    clock[0, ::50, 0] = 1
    assert spiking.cv_isi(clock)[0] == pytest.approx(0.0)
    assert np.isnan(spiking.cv_isi(clock)[1])
    np.testing.assert_allclose(spiking.lv_isi(poisson), 1.0, atol=0.1)  # LV of a Poisson train: 1
    assert spiking.lv_isi(clock)[0] == pytest.approx(0.0) and np.isnan(spiking.lv_isi(clock)[1])
    slow = rng.random((4, 20000, 3)) < np.where(np.arange(20000) // 2000 % 2, 0.002, 0.05)[None, :, None]
    assert (spiking.cv_isi(slow) > 2).all()  # slow rate modulation inflates the pooled CV of ISI ...
    np.testing.assert_allclose(spiking.lv_isi(slow), 1.0, atol=0.15)  # ... but not the local variation
    assert spiking.silent_saturated(np.array([0.0, 10.0, 300.0]), 0.5, 100.0) == (1, 1)
    e = rng.normal(size=(500, 3))
    np.testing.assert_allclose(spiking.ei_current_correlation(e, -(2 * e + 20)), 1.0)  # inhibition tracks excitation


def test_readout_refit_recovers_a_linear_map_and_keeps_dale():
    """Refit on features that carry the targets through a mixed-sign linear map: the non-negative readout reaches
    a high held-out CCA (CCA's invariance to invertible maps lets positive weights express it) from a poor start."""
    from neurojepa.metrics.cca import heldout_cca
    from neurojepa.student.readout_fit import refit_readout

    cfg = StudentConfig(n_exc=10, n_inh=3, readout_taus=[0.01, 0.03, 0.1], readout_refit_steps=150,
                        readout_refit_batch=2000, readout_refit_lr=0.05)
    net = StudentNet(5, 3, cfg, bin_size=0.01)
    rng = np.random.default_rng(0)
    feats = rng.gamma(2.0, 1.0, (6000, 30)).astype(np.float32)
    targets = (feats @ rng.normal(size=(30, 3)) + 0.3 * rng.normal(size=(6000, 3))).astype(np.float32)

    def score():
        with torch.no_grad():
            z = net.readout(torch.from_numpy(feats)).numpy()
        return heldout_cca(z[:4000], targets[:4000], z[4000:], targets[4000:], 1e-4).mean()

    before = score()
    refit_readout(net, feats, targets, np.arange(4000), cfg)
    assert score() > 0.9 > before + 0.1
    assert (net.readout.weight >= 0).all()


class _FakePrepared:
    """The slice of PreparedSession the student reads."""

    def __init__(self, counts, split):
        self._counts, self.split, self.bin_size, self.labels = counts, split, 0.01, None
        self.t_start = 0.0
        self.n_bins = len(counts)

    def load_counts(self):
        return self._counts

    def segments(self, split, states=None):
        from neurojepa.data.intervals import Intervals

        return Intervals.of_split(self.split, None, split)


def test_distill_end_to_end(tmp_path, monkeypatch):
    from neurojepa.data import dataset
    from neurojepa.student.train import distill, load_student

    counts, lat, split = synthetic_session(n_units=30, n_bins=3000, d=3, seed=0, block=300, base_rate_hz=20, tuning=0.6)
    monkeypatch.setattr(dataset.PreparedSession, "load", classmethod(lambda cls, p: _FakePrepared(counts, split)))
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    np.savez(teacher / "latents.npz", latents=lat, bin_size=0.01, t_start=0.0, dataset_dir="x")
    cfg = StudentConfig(**{**SMALL, "max_steps": 20, "window": 16, "batch_size": 8, "lr": 1e-2})
    out = distill("ds", teacher, tmp_path / "student", cfg)
    m = json.loads((out / "metrics.json").read_text())["student"]
    for key in ("cca_heldout", "cca_heldout_mean", "cca_null_mean", "rate_hz_median", "rate_hz_median_exc",
                "rate_hz_median_inh", "frac_in_band", "cv_isi_median", "fano_median", "n_silent", "n_saturated",
                "dale_violations", "n_exc", "n_inh", "ei_current_corr_median", "lv_median", "frac_isi_below_5ms"):
        assert key in m, key
    assert m["dale_violations"] == 0 and m["n_exc"] == 24 and m["time_capped"] is False
    assert m["cca_heldout_mean"] > 0.4 > abs(m["cca_null_mean"])  # learns something real in 20 steps
    with np.load(out / "report_data.npz") as rd:  # what the report draws: consistent with the metrics
        n = m["n_exc"] + m["n_inh"]
        assert rd["w_rec"].shape == (n, n) and rd["is_exc"].sum() == m["n_exc"] and len(rd["rates_hz"]) == n
        assert rd["raster_exc"].dtype == bool and rd["raster_exc"].shape[0] == len(rd["raster_t"])
        assert np.isclose(np.median(rd["rates_hz"]), m["rate_hz_median"])
        w = rd["w_rec"]
        assert (w[:, : m["n_exc"]] >= 0).all() and (w[:, m["n_exc"]:] <= 0).all()  # Dale, as drawn
    net = load_student(out)
    assert torch.equal(net.rec.weight, torch.load(out / "student.pt", weights_only=True)["state_dict"][
        "rec.parametrizations.weight.original"].abs() * net.sign)
    # resume continues from last.ckpt; a mismatched teacher is one clear error
    cfg2 = StudentConfig(**{**SMALL, "max_steps": 22, "window": 16, "batch_size": 8})
    distill("ds", teacher, out, cfg2, resume=True)
    assert json.loads((out / "metrics.json").read_text())["student"]["global_step"] == 22  # continued, not restarted
    np.savez(teacher / "latents.npz", latents=lat[:-5], bin_size=0.01)
    with pytest.raises(InputError, match="do not match"):
        distill("ds", teacher, tmp_path / "s2", cfg)


def test_cross_state_scoring_uses_the_right_blocks():
    import pandas as pd

    from neurojepa.student.evaluate import evaluate_student

    counts, lat, split = synthetic_session(n_units=20, n_bins=2000, d=3, seed=0, block=100)
    state = np.where(np.arange(2000) < 1000, "active", "passive")
    net, _, _ = _net()
    cfg = net.cfg
    m, z = evaluate_student(net, counts, lat, split, cfg, pd.DataFrame({"state": state}), decode=False,
                            train_states=["active"], test_states=["passive"])
    after = np.arange(2000) >= cfg.burn_in
    assert m["n_train_bins"] == int(((split == "train") & (state == "active") & after).sum())
    assert m["n_test_bins"] == int(((split == "test") & (state == "passive")).sum())
    assert "cca_heldout_mean_within" in m and z.shape == (2000, 3)
    with pytest.raises(InputError, match="too few"):
        evaluate_student(net, counts, lat, split, cfg, pd.DataFrame({"state": state}), decode=False,
                         test_states=["sleep"])


def test_wall_clock_cap_is_flagged(tmp_path, caplog):
    """A run stopped by max_minutes (not max_steps) says so: a warning and ``time_capped`` in the network."""
    from neurojepa.data.intervals import Intervals
    from neurojepa.student.train import fit_student

    counts, lat, split = synthetic_session(n_units=20, n_bins=1500, d=2, seed=0, block=300, base_rate_hz=20, tuning=0.6)
    cfg = StudentConfig(**{**SMALL, "max_steps": 100000, "window": 16, "batch_size": 8, "max_minutes": 0.002})
    with caplog.at_level("WARNING", logger="neurojepa.student.train"):
        net = fit_student(counts, lat, cfg, tmp_path, bin_size=0.01, train=Intervals.of_split(split, None, "train"),
                          val=Intervals.of_split(split, None, "val"))
    assert net.time_capped and net.global_step < cfg.max_steps
    assert "max_minutes" in caplog.text


def test_inhibitory_neurons_get_their_own_band_floor_and_start_above_excitatory_ones():
    """rate_low_inh_hz: the band penalty's lower edge per neuron (I neurons 10 Hz, E 5 Hz; rate_high_inh_hz an
    optional lower ceiling for I neurons); target_rate_inh_hz:
    the calibrated bias puts I neurons near 15 Hz, E ones near 10 Hz (fast-spiking interneurons fire above
    pyramidal cells)."""
    net, x, _ = _net()
    assert net.band_low[: net.n_exc].eq(5.0).all() and net.band_low[net.n_exc:].eq(10.0).all()
    r = torch.tensor([4.0, 8.0, 8.0])
    assert band_penalty(r, torch.tensor([5.0, 5.0, 10.0]), 20.0).item() == pytest.approx((1 + 0 + 4) / 3)
    rate = net.simulate(x)["spikes"].float().mean((0, 1)) / net.cfg.dt
    e, i = rate[: net.n_exc].median().item(), rate[net.n_exc:].median().item()
    assert 7 < e < 13 and 12 < i < 18 and i > e
    assert band_penalty(torch.tensor([18.0, 18.0]), 5.0, torch.tensor([20.0, 16.0])).item() == pytest.approx(2.0)
    assert net.band_high.eq(20.0).all()
    capped, _, _ = _net(rate_high_inh_hz=16.0)  # rate_high_inh_hz: a lower ceiling for I neurons only
    assert capped.band_high[: net.n_exc].eq(20.0).all() and capped.band_high[net.n_exc:].eq(16.0).all()
    with pytest.raises(ValueError, match="rate_high_inh_hz"):
        StudentConfig(rate_high_inh_hz=8.0)  # under the I neurons' lower edge (10 Hz)
    same, x, _ = _net(rate_low_inh_hz=0.0, target_rate_inh_hz=0.0)  # 0: the E values for both
    assert same.band_low.eq(5.0).all()
    rate = same.simulate(x)["spikes"].float().mean((0, 1)) / same.cfg.dt
    assert 7 < rate[same.n_exc:].median().item() < 13


def test_excitatory_penalty_band_can_sit_inside_the_reported_band():
    """rate_low_exc_hz / rate_high_exc_hz narrow the E neurons' penalty band (headroom for a state never seen in
    training); the reported fraction in band keeps the 5-20 Hz of rate_low_hz / rate_high_hz."""
    from neurojepa.student.evaluate import firing_summary

    net, _, _ = _net(rate_low_exc_hz=7.0, rate_high_exc_hz=17.0, rate_high_inh_hz=16.0)
    ne = net.n_exc
    assert net.band_low[:ne].eq(7.0).all() and net.band_high[:ne].eq(17.0).all()
    assert net.band_low[ne:].eq(10.0).all() and net.band_high[ne:].eq(16.0).all()
    with pytest.raises(ValueError, match="rate_low_exc_hz"):
        StudentConfig(rate_low_exc_hz=18.0, rate_high_exc_hz=17.0)
    with pytest.raises(ValueError, match="rate_low_exc_hz"):
        StudentConfig(rate_low_exc_hz=25.0)  # above the 20 Hz it falls back to
    # 6 Hz and 18 Hz E neurons: outside the penalty band, inside the reported one; a 30 Hz neuron is outside both
    steps = 1000  # 1 s at dt 1 ms
    spikes = np.zeros((1, steps, 3), bool)
    for j, hz in enumerate([6, 18, 30]):
        spikes[0, np.linspace(0, steps - 1, hz).astype(int), j] = True
    assert band_penalty(torch.tensor([6.0, 18.0]), net.band_low[:2], net.band_high[:2]).item() > 0
    assert firing_summary(spikes, 3, net.cfg)["frac_in_band"] == pytest.approx(2 / 3)


def test_spectral_radius_estimate_matches_eigenvalues():
    from neurojepa.student.dale import balanced_recurrent, spectral_radius_of

    for seed in range(3):
        w = balanced_recurrent(480, 120, 1.0, None, torch.Generator().manual_seed(seed))
        exact = torch.linalg.eigvals(w.double()).abs().max().item()
        assert exact == pytest.approx(1.0, rel=1e-5)
        assert spectral_radius_of(w, exact_below=0) == pytest.approx(exact, rel=0.03)
