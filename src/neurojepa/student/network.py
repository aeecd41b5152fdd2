"""The spiking student: recorded spikes -> excitatory input projection -> recurrent E/I LIF population -> readout.

Math (snntorch ``Leaky`` with ``reset_mechanism="subtract"``, written out; one step = ``dt``, default 1 ms)::

    g_t   = 1 if the neuron is not refractory else 0          # input gated off n_ref steps after a spike
    I_t   = g_t * (W_in c_bin(t) + b + W_rec S_{t-1})           # c_bin: counts of the current 10 ms bin, held
    U_t   = beta * U_{t-1} + I_t - theta * S_{t-1}              # subtractive reset, detached (as snntorch)
    S_t   = H(U_t - theta)                                      # surrogate gradient: fast sigmoid (default)

beta = exp(-dt / tau_mem) per neuron (20 ms E, 10 ms I). The readout sees only E spikes: per-bin E spike counts are
low-pass filtered (exponential, ``tau_readout``) and mapped linearly to the D teacher dims. Dale's principle holds on
the input (all +), recurrent (column signs) and readout (E only, all +) weights by parametrisation (dale.py).

Refractoriness gates the synaptic input rather than masking spikes, so the plain snntorch loop (``Leaky`` + an input
gate) reproduces it exactly; a second spike inside the refractory window needs U > ~2 theta and is rare.

Two implementations of the same math with identical spikes:

* :func:`lif_scan` (default): input projections batched over all bins, then one custom autograd function that runs
  the whole time loop without building an autograd graph and does BPTT by hand in the backward pass (one matmul and a
  few fused element-wise ops per step; the recurrent weight gradient is a single matmul over all steps).
* :meth:`StudentNet.forward_reference`: the plain per-step loop with ``snntorch.Leaky`` and an ``nn.Linear``
  recurrence, used by the benchmark and tests as the reference.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .config import StudentConfig
from .dale import MaskOnly, apply_dale, balanced_recurrent, connection_mask, neuron_signs


def _surrogate_grad(v: torch.Tensor, kind: str, slope: float) -> torch.Tensor:
    """d spike / d v for v = U - theta (snntorch's fast_sigmoid and atan formulas)."""
    if kind == "fast_sigmoid":
        return 1.0 / (slope * v.abs() + 1.0) ** 2
    if kind == "atan":
        return (slope / 2) / (1 + (math.pi / 2 * slope * v) ** 2)
    raise ValueError(f"unknown surrogate '{kind}' (fast_sigmoid | atan)")


def _scan_forward(x, w, beta, theta, n_ref, keep: bool = True):
    """No-grad LIF time loop. x: (T, B, N) input currents -> spikes, membrane (pre-reset U_t), gates, each (T, B, N).

    Written for few ops per step, all in preallocated buffers; the float operations and their order are exactly
    those of the snntorch loop (so spikes are bit-identical). The refractory gate is 1 - max of the last n_ref
    spikes, equivalent to the reference's countdown. With keep=False, membrane and gates are not kept (two rolling
    rows each), which saves memory in inference."""
    T, B, N = x.shape
    padded = x.new_zeros(T + n_ref, B, N)  # n_ref leading zero rows: spike history before t = 0
    spikes = padded[n_ref:]
    mem = torch.empty_like(x) if keep else x.new_empty(2, B, N)
    gates = torch.ones_like(x) if keep else x.new_ones(2, B, N)
    u = x.new_zeros(B, N)
    s = x.new_zeros(B, N)
    for t, xt in enumerate(x.unbind(0)):
        inp = torch.add(xt, F.linear(s, w))
        if n_ref:
            g = gates[t if keep else t & 1]
            torch.amax(padded[t:t + n_ref], dim=0, out=g)
            g.neg_().add_(1.0)
            inp.mul_(g)
        u = torch.mul(beta, u, out=mem[t if keep else t & 1]).add_(inp)
        u.sub_(s if theta == 1.0 else s * theta)  # x * 1.0 == x exactly: same rounding as snntorch
        s = spikes[t]
        s.copy_(u > theta)  # u > theta <=> u - theta > 0 in IEEE floats (no underflow to 0 for u != theta)
    return spikes, mem, gates


class _LIFScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, beta, theta, n_ref, surrogate, slope):
        spikes, mem, gates = _scan_forward(x, w, beta, theta, n_ref)
        ctx.save_for_backward(spikes, mem, gates, w, beta)
        ctx.theta, ctx.surrogate, ctx.slope = theta, surrogate, slope
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes):
        spikes, mem, gates, w, beta = ctx.saved_tensors
        T = spikes.shape[0]
        # d spike/d U for every step at once (one vectorised op instead of T small ones)
        sg = _surrogate_grad(mem - ctx.theta, ctx.surrogate, ctx.slope)
        grad_x = torch.empty_like(mem)
        g_inp = torch.zeros_like(mem[0])  # dL/dI_{t+1}
        g_u = torch.zeros_like(mem[0])  # dL/dU_{t+1}
        for t in range(T - 1, -1, -1):
            # through the readout, and through W_rec S_t -> I_{t+1}; the reset term is detached, as in snntorch
            g_s = torch.addmm(grad_spikes[t], g_inp, w)
            g_u = g_s.mul_(sg[t]).addcmul_(beta, g_u)
            g_inp = torch.mul(g_u, gates[t], out=grad_x[t])
        n = w.shape[0]
        grad_w = grad_x[1:].reshape(-1, n).T @ spikes[:-1].reshape(-1, n)
        return grad_x, grad_w, None, None, None, None, None


def lif_scan(x: torch.Tensor, w: torch.Tensor, beta: torch.Tensor, theta: float, n_ref: int,
             surrogate: str = "fast_sigmoid", slope: float = 25.0) -> torch.Tensor:
    """Fused recurrent LIF. x: (T, B, N) input currents (threshold units per step), w: (N, N) recurrent weights
    (post, pre), beta: (N,). Returns spikes (T, B, N) of 0/1, differentiable wrt x and w (surrogate gradient)."""
    return _LIFScan.apply(x, w, beta, theta, n_ref, surrogate, slope)


def _raw_weight(linear: nn.Linear) -> torch.Tensor:
    """The stored weight parameter of a (possibly parametrised) linear layer."""
    return linear.parametrizations.weight.original if parametrize.is_parametrized(linear, "weight") else linear.weight


class StudentNet(nn.Module):
    """E/I recurrent LIF network. n_in recorded units in, n_out teacher dims out; see the module docstring."""

    def __init__(self, n_in: int, n_out: int, cfg: StudentConfig, bin_size: float = 0.01):
        super().__init__()
        substeps = bin_size / cfg.dt
        if abs(substeps - round(substeps)) > 1e-6 or round(substeps) < 1:
            raise ValueError(f"bin_size {bin_size} s is not a whole number of dt = {cfg.dt} s steps")
        self.cfg = cfg
        self.n_in, self.n_out = n_in, n_out
        self.n_exc, self.n_inh = cfg.n_exc, cfg.n_inh
        self.substeps = int(round(substeps))
        self.bin_size = bin_size
        self.n_ref = max(int(round(cfg.refractory / cfg.dt)), 0)
        n = cfg.n_neurons
        gen = torch.Generator().manual_seed(cfg.seed)
        tau = torch.cat([torch.full((cfg.n_exc,), cfg.tau_mem_exc), torch.full((cfg.n_inh,), cfg.tau_mem_inh)])
        self.register_buffer("beta", torch.exp(-cfg.dt / tau))
        self.register_buffer("sign", neuron_signs(cfg.n_exc, cfg.n_inh))
        self.register_buffer("readout_decay", torch.tensor(math.exp(-bin_size / cfg.tau_readout)))

        self.inp = nn.Linear(n_in, n)
        self.rec = nn.Linear(n, n, bias=False)
        self.readout = nn.Linear(cfg.n_exc, n_out)
        mask = connection_mask(n, n, cfg.p_connect, gen)
        with torch.no_grad():
            self.inp.weight.copy_(torch.randn(n, n_in, generator=gen).abs() / math.sqrt(n_in))
            self.inp.bias.zero_()
            # a spike adds w to U, which then decays with beta: its integrated effect is w / (1 - beta_E), so the
            # radius that matters for stability is that of W / (1 - beta_E) (spectral_radius, ~1 = edge of chaos)
            rho = cfg.spectral_radius * (1 - math.exp(-cfg.dt / cfg.tau_mem_exc))
            self.rec.weight.copy_(balanced_recurrent(cfg.n_exc, cfg.n_inh, rho, mask, gen))
            self.readout.weight.copy_(torch.rand(n_out, cfg.n_exc, generator=gen) / math.sqrt(cfg.n_exc))
            self.readout.bias.zero_()
        if cfg.dale:
            apply_dale(self.inp, torch.ones(n_in))  # recorded spikes act as excitatory afferents
            apply_dale(self.rec, self.sign, mask)
            apply_dale(self.readout, torch.ones(cfg.n_exc))  # long-range output is excitatory, E only
        elif mask is not None:
            parametrize.register_parametrization(self.rec, "weight", MaskOnly(mask))
        self._ref_lif = None

    # ----------------------------------------------------------------------------------------- pieces
    def input_current(self, counts: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """counts: (B, bins, n_in) -> input currents (bins * substeps, B, N), each bin's current held over its steps,
        plus private Gaussian noise of ``noise_std`` (threshold units per step; ``generator`` seeds it).
        The projection is computed once per bin (not per step): the first of the fast path's savings."""
        cur = self.inp(counts.to(self.inp.bias.dtype)).transpose(0, 1).repeat_interleave(self.substeps, dim=0)
        if self.cfg.noise_std > 0:
            # private background noise (white, per step): keeps firing irregular (CV ~ 1) instead of regular
            # bursts while a held bin current stays above threshold
            cur = cur + self.cfg.noise_std * torch.randn(cur.shape, generator=generator, dtype=cur.dtype)
        return cur

    def readout_from_spikes(self, spikes: torch.Tensor) -> torch.Tensor:
        """spikes: (T, B, N) -> readout (B, bins, n_out) from low-pass filtered E spike counts per bin."""
        T, B, _ = spikes.shape
        c = spikes[:, :, : self.n_exc].reshape(T // self.substeps, self.substeps, B, self.n_exc).sum(1)
        a = self.readout_decay
        z = torch.zeros_like(c[0])
        out = []
        for ck in c.unbind(0):
            z = a * z + (1 - a) * ck
            out.append(z)
        return self.readout(torch.stack(out, 1))

    # ------------------------------------------------------------------------------------------ forward
    def forward(self, counts: torch.Tensor) -> dict[str, torch.Tensor]:
        """counts: (B, bins, n_in) spike counts. Returns spikes (T, B, N) with T = bins * substeps and
        readout (B, bins, n_out)."""
        cfg = self.cfg
        x = self.input_current(counts)
        spikes = lif_scan(x, self.rec.weight, self.beta, cfg.threshold, self.n_ref, cfg.surrogate, cfg.surrogate_slope)
        return {"spikes": spikes, "readout": self.readout_from_spikes(spikes)}

    def _reference_neuron(self):
        import snntorch as snn
        from snntorch import surrogate

        if self._ref_lif is None:
            grad = (surrogate.fast_sigmoid(slope=self.cfg.surrogate_slope) if self.cfg.surrogate == "fast_sigmoid"
                    else surrogate.atan(alpha=self.cfg.surrogate_slope))
            lif = snn.Leaky(beta=self.beta.clone(), threshold=self.cfg.threshold, spike_grad=grad,
                            reset_mechanism="subtract")
            object.__setattr__(self, "_ref_lif", lif)  # not a submodule: keeps state_dict free of it
        return self._ref_lif

    def forward_reference(self, counts: torch.Tensor) -> dict[str, torch.Tensor]:
        """The same network as :meth:`forward`, written as a plain snntorch per-step loop (reference/benchmark)."""
        lif = self._reference_neuron()
        x = self.input_current(counts)
        B, N = x.shape[1], x.shape[2]
        mem = x.new_zeros(B, N)
        spk = x.new_zeros(B, N)
        cnt = torch.zeros(B, N, dtype=torch.int32)
        out = []
        for xt in x.unbind(0):
            g = (cnt == 0).to(x.dtype)
            spk, mem = lif(g * (xt + self.rec(spk)), mem)
            cnt = torch.where(spk.detach() > 0, self.n_ref, (cnt - 1).clamp_(min=0))
            out.append(spk)
        spikes = torch.stack(out)
        return {"spikes": spikes, "readout": self.readout_from_spikes(spikes)}

    @torch.no_grad()
    def simulate(self, counts: torch.Tensor, record_currents: bool = False) -> dict[str, torch.Tensor]:
        """Inference run. counts: (B, bins, n_in). Returns spikes (T, B, N) uint8, readout (B, bins, n_out) and, with
        record_currents, the E and I synaptic input currents (T, B, N) that each neuron received (gated)."""
        cfg = self.cfg
        x = self.input_current(counts, torch.Generator().manual_seed(cfg.seed + 1))  # reproducible noise
        w = self.rec.weight
        spikes, _, gates = _scan_forward(x, w, self.beta, cfg.threshold, self.n_ref, keep=record_currents)
        res = {"spikes": spikes.to(torch.uint8), "readout": self.readout_from_spikes(spikes)}
        if record_currents:
            prev = torch.cat([torch.zeros_like(spikes[:1]), spikes[:-1]])
            ne = self.n_exc
            res["i_exc"] = gates * (x + prev[..., :ne] @ w[:, :ne].T)
            res["i_inh"] = gates * (prev[..., ne:] @ w[:, ne:].T)
        return res

    @torch.no_grad()
    def calibrate_bias(self, counts: torch.Tensor, n_iter: int = 10) -> None:
        """Set each neuron's bias current so that its rate on ``counts`` (B, bins, n_in) is near target_rate_hz, by a
        per-neuron bisection (recurrent coupling makes it approximate): a data-dependent start that keeps the first
        gradient steps away from silent or saturated regimes."""
        target = self.cfg.target_rate_hz
        rheobase = self.cfg.threshold * (1 - self.beta)  # constant current that just reaches threshold
        drive = self.inp(counts.to(self.inp.bias.dtype)) - self.inp.bias
        # input fluctuations of input_gain rheobases: fluctuation-driven, irregular firing (CV ~ 1)
        scale = self.cfg.input_gain * rheobase / drive.std((0, 1)).clamp_min(1e-12)
        _raw_weight(self.inp).mul_(scale[:, None])  # |raw| * sign: scaling raw by a positive factor scales it
        mean_drive = drive.mean((0, 1)) * scale
        lo = -mean_drive - 4 * rheobase
        hi = -mean_drive + 4 * rheobase
        for _ in range(n_iter):
            mid = (lo + hi) / 2
            self.inp.bias.copy_(mid)
            rate = self.simulate(counts)["spikes"].float().mean((0, 1)) / self.cfg.dt
            too_high = rate > target
            hi = torch.where(too_high, mid, hi)
            lo = torch.where(too_high, lo, mid)
        self.inp.bias.copy_((lo + hi) / 2)
