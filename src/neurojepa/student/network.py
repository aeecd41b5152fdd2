"""The spiking student: recorded spikes -> excitatory input projection -> recurrent E/I LIF population -> readout.

Math (snntorch ``Leaky`` with ``reset_mechanism="subtract"``, written out; one step = ``dt``, default 1 ms)::

    g_t   = 1 if the neuron is not refractory else 0          # input gated off n_ref steps after a spike
    A_t   = rho * A_{t-1} + b_adapt * S_{t-1}                   # adaptation current (detached, as the reset)
    I_t   = g_t * (W_ff c_bin(t) + b + xi_t + W_rec S_{t-1} - A_t)   # c_bin: counts of the current 10 ms bin, held
    W_ff  = W_in - k * rowmean(W_in) 1^T                        # feed-forward inhibition, k = ff_inhibition
    (slow_syn_fraction > 0: for those neurons W_ff c_bin + b is low-pass filtered over bins, tau_syn 30-300 ms)
    U_t   = beta * U_{t-1} + I_t - theta * S_{t-1}              # subtractive reset, detached (as snntorch)
    S_t   = H(U_t - theta)                                      # surrogate gradient: fast sigmoid (default)

W_rec is dense, or with ``rec_rank`` = r > 0 the low-rank product U V^T through r excitatory and r inhibitory pools
(:class:`~neurojepa.student.dale.LowRankDale`): a step then costs O(N r) instead of O(N^2), which is what makes
students of thousands of neurons trainable on a CPU (docs/student.md, session 15).
beta = exp(-dt / tau_mem) per neuron (20 ms E, 10 ms I); xi: private background noise (white or Ornstein-Uhlenbeck);
rho = exp(-dt / adapt_tau) (per neuron with ``slow_adapt_fraction``), b_adapt from ``adapt_strength`` for E neurons
and ``adapt_strength_inh`` for I neurons (0 = no adaptation, the A term drops out; I neurons do not adapt by
default, as fast-spiking interneurons adapt little). The readout sees only E spikes: per-bin E spike counts are
low-pass filtered (exponential, one copy per ``readout_taus`` entry) and mapped linearly to the D teacher dims.
Dale's principle holds on the input (all +), recurrent (column signs) and readout (E only, all +) weights by parametrisation
(dale.py).

**Feed-forward inhibition** (``ff_inhibition`` = k): afferent spikes excite (``W_in`` >= 0) and also drive a pool of
feed-forward interneurons whose inhibition of each neuron is proportional to that neuron's own afferent excitation
(``rowmean(W_in)``) times the pooled afferent count, the disynaptic inhibition that tracks excitation in sensory
cortex (Wehr & Zador 2003; Isaacson & Scanziani 2011). At k = 1 a rise of every afferent's count by the same amount
leaves every neuron's drive unchanged: the population's common-mode fluctuations, which an all-excitatory input
projection passes to every neuron alike, are cancelled, and what drives a neuron is how its afferents' pattern
differs from the population mean. The pool is a rate term (linear in the counts, no spikes of its own, like the
divisive normalisation); Dale holds on every weight, its inhibition being a separate pathway with a non-negative
strength. Why (docs/student.md, session 12): the student's sign-constrained input was the largest single cost of
Dale's principle.

**Slow afferent synapses** (``slow_syn_fraction`` = p, ``slow_syn_tau``): a random fraction p of the neurons (E and I
alike, fixed by the seed) receive their afferent current through a slow synapse, an exponential filter over bins with
a time constant drawn log-uniform in ``slow_syn_tau`` (30-300 ms), like NMDA-receptor-rich inputs (Wang 1999; cortical
synaptic time constants span tens to hundreds of ms). The filter is linear and acts before the neuron's threshold, so
those neurons fire as nonlinear functions of the input's recent history rather than of the current bin only: what
the teacher's slow latent components need and a linear relay of the input cannot give (docs/student.md, session 18).

**Slow adaptation** (``slow_adapt_fraction`` = q, ``slow_adapt_tau``): a random fraction q of the E neurons (fixed
by the seed) adapt with a time constant drawn log-uniform in ``slow_adapt_tau`` (0.2-2 s) instead of ``adapt_tau``,
with the same steady current per Hz (b_adapt rescaled by 1 - rho), as the slow afterhyperpolarisation currents of
cortical and hippocampal pyramidal cells do (seconds; Madison & Nicoll 1984; Benda & Herz 2003). A slowly adapting
neuron's rate depends on its own firing over the last seconds: a memory of the input's history that a network
trained on 320 ms windows can use without learning it (as in the adaptive LIF networks of Bellec et al. 2018). The
adaptation current is a state, detached like the reset (docs/student.md, session 19).

Spike-frequency adaptation is what keeps firing irregular-but-not-bursty once training sharpens the neurons' input
tuning: with white background noise and a subtractive reset, a threshold crossing that overshoots fires again right
after the refractory period (38 % of ISIs <= 5 ms, LV 1.4 measured on the real teacher), and a fast (20 ms)
adaptation current acts as a relative refractory period against these doublets (docs/student.md).

Refractoriness gates the synaptic input rather than masking spikes, so the plain snntorch loop (``Leaky`` + an input
gate) reproduces it exactly; a second spike inside the refractory window needs U > ~2 theta and is rare.

Two implementations of the same math with identical spikes:

* :func:`lif_scan` (default): input projections batched over all bins, then one custom autograd function that runs
  the whole time loop without building an autograd graph and does BPTT by hand in the backward pass (one matmul and a
  few fused element-wise ops per step; the recurrent weight gradient is a single matmul over all steps).
  On a GPU both loops replay as CUDA graphs (``cuda_graphs``, the default there): same kernels, no Python per step;
  dense or low-rank recurrence, with or without (per-neuron) adaptation.
* :meth:`StudentNet.forward_reference`: the plain per-step loop with ``snntorch.Leaky`` and an ``nn.Linear``
  recurrence, used by the benchmark and tests as the reference.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .config import StudentConfig
from .dale import LowRankDale, MaskOnly, apply_dale, balanced_recurrent, connection_mask, neuron_signs

log = logging.getLogger(__name__)


def _surrogate_grad(v: torch.Tensor, kind: str, slope: float) -> torch.Tensor:
    """d spike / d v for v = U - theta (snntorch's fast_sigmoid and atan formulas)."""
    if kind == "fast_sigmoid":
        return 1.0 / (slope * v.abs() + 1.0) ** 2
    if kind == "atan":
        return (slope / 2) / (1 + (math.pi / 2 * slope * v) ** 2)
    raise ValueError(f"unknown surrogate '{kind}' (fast_sigmoid | atan)")


def _recurrent(s: torch.Tensor, w) -> torch.Tensor:
    """W s for spikes s (B, N): w is the dense (N, N) matrix or low-rank factors (U, V) with W = U V^T, applied as
    U (V^T s) (the same operations as :meth:`LowRankDale.forward`, so spikes stay identical to the reference)."""
    return F.linear(s @ w[1], w[0]) if isinstance(w, tuple) else F.linear(s, w)


def _recurrent_back(grad_out: torch.Tensor, g: torch.Tensor, w) -> torch.Tensor:
    """grad_out + W^T g (B, N): the gradient that reaches the spikes S_t through I_{t+1} = W S_t (dense or U V^T)."""
    return torch.addmm(grad_out, g @ w[0], w[1].T) if isinstance(w, tuple) else torch.addmm(grad_out, g, w)


def _scan_forward(x, w, beta, theta, n_ref, keep: bool = True, adapt=None):
    """No-grad LIF time loop. x: (T, B, N) input currents -> spikes, membrane (pre-reset U_t), gates, each (T, B, N).
    w: dense (N, N) recurrent weights or low-rank factors (U, V) (see :func:`_recurrent`).
    adapt: None or (rho, b) with b (N,): adaptation current A_t = rho A_{t-1} + b S_{t-1}, subtracted from the input.

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
    a = x.new_zeros(B, N) if adapt is not None else None
    one = x.new_ones(())
    for t, xt in enumerate(x.unbind(0)):
        inp = torch.add(xt, _recurrent(s, w))
        if a is not None:  # s is 0/1, so s * b is exact: same rounding as the reference's a * rho + s * b
            a.mul_(adapt[0]).addcmul_(s, adapt[1])
            inp.sub_(a)
        if n_ref:
            g = gates[t if keep else t & 1]
            torch.sub(one, torch.amax(padded[t:t + n_ref], dim=0, out=g), out=g)  # 1 - max: exact for 0/1
            inp.mul_(g)
        u = torch.mul(beta, u, out=mem[t if keep else t & 1]).add_(inp)
        u.sub_(s if theta == 1.0 else s * theta)  # x * 1.0 == x exactly: same rounding as snntorch
        s = spikes[t]
        torch.gt(u, theta, out=s)  # u > theta <=> u - theta > 0 in IEEE floats (no underflow to 0 for u != theta)
    return spikes, mem, gates


def _scan_backward(grad_spikes, spikes, mem, gates, w, beta, theta, surrogate, slope):
    """Hand-written BPTT of :func:`_scan_forward` -> (grad wrt the input currents x, grad wrt w: a tensor, or a
    tuple (grad U, grad V) for low-rank factors)."""
    T = spikes.shape[0]
    # d spike/d U for every step at once (one vectorised op instead of T small ones)
    sg = _surrogate_grad(mem - theta, surrogate, slope)
    grad_x = torch.empty_like(mem)
    g_inp = torch.zeros_like(mem[0])  # dL/dI_{t+1}
    g_u = torch.zeros_like(mem[0])  # dL/dU_{t+1}
    for t in range(T - 1, -1, -1):
        # through the readout, and through W_rec S_t -> I_{t+1}; the reset term is detached, as in snntorch
        g_u = _recurrent_back(grad_spikes[t], g_inp, w).mul_(sg[t]).addcmul_(beta, g_u)
        g_inp = torch.mul(g_u, gates[t], out=grad_x[t])
    return grad_x, _weight_grad(grad_x, spikes, w)


def _weight_grad(grad_x: torch.Tensor, spikes: torch.Tensor, w=None):
    """dL/dW_rec from every step at once: I_{t+1} gets W S_t, so one (N, T*B) x (T*B, N) product; for low-rank
    factors w = (U, V) (W = U V^T) the two thin products dL/dU = G^T (S V) and dL/dV = S^T (G U)."""
    n = spikes.shape[-1]
    g, s = grad_x[1:].reshape(-1, n), spikes[:-1].reshape(-1, n)
    if isinstance(w, tuple):
        return g.T @ (s @ w[1]), s.T @ (g @ w[0])
    return g.T @ s


# One step's element-wise work as one CUDA kernel each way (jiterator: compiled at run time by NVRTC), for the
# graphed GPU loops while STEP_KERNELS is set: a dozen kernels per step become one. The forward kernel rounds every
# operation on its own (__fmul_rn, __fadd_rn: no fused multiply-add), in the order of the eager loop, so its spikes
# stay bit-identical to snntorch (checked on an H200 by tests/test_student.py and benchmarks/student_speed.py);
# the refractory gate is the reference's countdown. Where the kernels cannot be built (jiterator is a beta API),
# the loops fall back to the ordinary kernels with a warning.
STEP_KERNELS = True
_FWD_BODY = """ {
  T g = cnt == T(0) ? T(1) : T(0);
  T an = __fadd_rn(__fmul_rn(a, rho), __fmul_rn(s, b));
  T inp = __fmul_rn(__fsub_rn(XIN, an), g);
  T un = __fsub_rn(__fadd_rn(__fmul_rn(beta, u), inp), __fmul_rn(s, theta));
  T sn = un > theta ? T(1) : T(0);
  a_out = an; u_out = un; g_out = g; s_out = sn;
  cnt_out = sn > T(0) ? nref : (cnt > T(0) ? cnt - T(1) : T(0));
}"""
_OUTS = "T& a_out, T& u_out, T& g_out, T& s_out, T& cnt_out)"
# a scalar adaptation decay: rho is a constant argument, and the input x_t and W S_{t-1} are added in the kernel
_FWD_STEP = ("template <typename T> void lif_step(T xt, T lin, T a, T s, T u, T cnt, T beta, T b, T rho, T theta, "
             "T nref, " + _OUTS + _FWD_BODY.replace("XIN", "__fadd_rn(xt, lin)"))
# a per-neuron decay (slow_adapt_fraction): rho is a tensor input; jiterator takes at most 8, so x_t + W S_{t-1}
# comes in as one (added by torch before the kernel: one float add either way, the same rounding)
_FWD_STEP_RHO = ("template <typename T> void lif_step_rho(T xin, T a, T s, T u, T cnt, T beta, T b, T rho, T theta, "
                 "T nref, " + _OUTS + _FWD_BODY.replace("XIN", "xin"))
_BWD_STEP = """template <typename T> void lif_back(T gs, T mem, T gate, T gu, T beta, T theta, T slope, T& gu_out,
    T& ginp_out) {
  T d = slope * fabsf(mem - theta) + T(1);
  T g = gs / (d * d) + beta * gu;
  gu_out = g; ginp_out = g * gate;
}"""
# (code, outputs, constant arguments): forward step (scalar rho), backward step, forward step (per-neuron rho)
_KERNELS = [(_FWD_STEP, 5, dict(rho=0.0, theta=1.0, nref=0.0)), (_BWD_STEP, 2, dict(theta=1.0, slope=1.0)),
            (_FWD_STEP_RHO, 5, dict(theta=1.0, nref=0.0))]
_STEP_FNS: list = []


def _step_kernels():
    """The _KERNELS as jiterator functions, compiled on first use."""
    if not _STEP_FNS:
        from torch.cuda import jiterator

        _STEP_FNS.extend(jiterator._create_multi_output_jit_fn(code, n, **consts) for code, n, consts in _KERNELS)
    return _STEP_FNS


def _disable_step_kernels(error: Exception) -> None:
    global STEP_KERNELS
    STEP_KERNELS = False
    log.warning("student: the fused step kernels could not run on this GPU (%s); using the ordinary kernels", error)


def _scan_forward_kernels(x, w, beta, theta, n_ref, adapt=None):
    """:func:`_scan_forward` with one fused element-wise kernel per step (CUDA only)."""
    step, _, step_rho = _step_kernels()
    T, B, N = x.shape
    rho, b = adapt if adapt is not None else (0.0, x.new_zeros(N))
    consts = dict(theta=float(theta), nref=float(n_ref))
    a, u, s, cnt = (x.new_zeros(B, N) for _ in range(4))
    spikes, mem, gates = [], [], []
    for xt in x.unbind(0):
        if torch.is_tensor(rho):
            a, u, g, s, cnt = step_rho(torch.add(xt, _recurrent(s, w)), a, s, u, cnt, beta, b, rho, **consts)
        else:
            a, u, g, s, cnt = step(xt, _recurrent(s, w), a, s, u, cnt, beta, b, rho=float(rho), **consts)
        spikes.append(s), mem.append(u), gates.append(g)
    return torch.stack(spikes), torch.stack(mem), torch.stack(gates)


def _scan_backward_kernels(grad_spikes, spikes, mem, gates, w, beta, theta, surrogate, slope):
    """:func:`_scan_backward` with one fused element-wise kernel per step (CUDA, fast_sigmoid surrogate)."""
    back = _step_kernels()[1]
    T = spikes.shape[0]
    g_inp = torch.zeros_like(mem[0])
    g_u = torch.zeros_like(mem[0])
    grads = [None] * T
    for t in range(T - 1, -1, -1):
        g_u, g_inp = back(_recurrent_back(grad_spikes[t], g_inp, w), mem[t], gates[t], g_u, beta,
                          theta=float(theta), slope=float(slope))
        grads[t] = g_inp
    grad_x = torch.stack(grads)
    return grad_x, _weight_grad(grad_x, spikes, w)


# CUDA graphs of the two time loops: on a GPU a step's dozen small kernels take a few microseconds each, but
# launching them from Python costs more than running them; a captured graph replays the T steps' kernels without
# Python. Same kernels, same order: spikes stay bit-identical to the eager loop and the snntorch reference.
_GRAPHS: dict = {}
_GRAPH_CACHE_SIZE = 4  # captured (shape, settings) variants kept; each holds its static buffers on the GPU


def _signature(tensors) -> tuple:
    return tuple((tuple(t.shape), t.dtype, str(t.device)) for t in tensors)


def _replay(key, fn, inputs):
    """fn(*inputs) as a CUDA-graph replay. The first call for a key runs fn twice eagerly on a side stream (the
    warm-up that capture asks for) and captures it; every call copies the inputs into the graph's static buffers,
    replays it, and returns copies of its outputs (the next replay overwrites the static ones)."""
    entry = _GRAPHS.pop(key, None)
    if entry is None:
        static = [t.detach().clone() for t in inputs]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                fn(*static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outs = fn(*static)
        entry = (graph, static, outs)
        while len(_GRAPHS) >= _GRAPH_CACHE_SIZE:
            _GRAPHS.pop(next(iter(_GRAPHS)))
    _GRAPHS[key] = entry  # most recently used last
    graph, static, outs = entry
    for buf, t in zip(static, inputs):
        buf.copy_(t)
    graph.replay()
    return tuple(o.clone() for o in outs)


def _graphs_on(x: torch.Tensor, cuda_graphs: bool) -> bool:
    """Whether the loops replay as CUDA graphs: asked for, and on a GPU (tests run the graphed code on CPU here)."""
    return bool(cuda_graphs and x.is_cuda)


def _graph_inputs(w, adapt):
    """The recurrent weights (a matrix or factors (U, V)) and adaptation (rho, b) as a flat tuple of tensors, the
    static inputs of a CUDA graph, with a layout for the graph's key and a function that rebuilds (w, adapt)."""
    ws = w if isinstance(w, tuple) else (w,)
    rho, b = adapt if adapt is not None else (None, None)
    per_neuron = torch.is_tensor(rho)
    flat = tuple(t.contiguous() for t in ws) + (() if b is None else (b,)) + ((rho,) if per_neuron else ())
    layout = (len(ws), None if b is None else ("per-neuron" if per_neuron else float(rho)))

    def rebuild(ts):
        w_ = tuple(ts[:2]) if len(ws) == 2 else ts[0]
        if b is None:
            return w_, None
        return w_, (ts[len(ws) + 1] if per_neuron else rho, ts[len(ws)])

    return flat, layout, rebuild


class _LIFScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, beta, theta, n_ref, surrogate, slope, adapt, graphed, v=None):
        # v given: w is U and (U, V) are low-rank factors (W = U V^T)
        wv = w if v is None else (w, v)
        if graphed:
            kernels = STEP_KERNELS
            scan = _scan_forward_kernels if kernels else _scan_forward
            flat, layout, rebuild = _graph_inputs(wv, adapt)
            args = (x.contiguous(), beta) + flat
            key = ("fwd", kernels, theta, n_ref, layout) + _signature(args)

            def run(x_, beta_, *rest):
                w_, adapt_ = rebuild(rest)
                return scan(x_, w_, beta_, theta, n_ref, adapt=adapt_)

            try:
                spikes, mem, gates = _replay(key, run, args)
            except RuntimeError as e:  # the step kernels failed to build: the ordinary kernels from now on
                if not kernels:
                    raise
                _disable_step_kernels(e)
                return _LIFScan.forward(ctx, x, w, beta, theta, n_ref, surrogate, slope, adapt, graphed, v)
        else:
            spikes, mem, gates = _scan_forward(x, wv, beta, theta, n_ref, adapt=adapt)
        ctx.save_for_backward(spikes, mem, gates, w, beta, v)
        ctx.theta, ctx.surrogate, ctx.slope, ctx.graphed = theta, surrogate, slope, graphed
        ctx.kernels = graphed and STEP_KERNELS and surrogate == "fast_sigmoid"
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes):
        spikes, mem, gates, w, beta, v = ctx.saved_tensors
        ws = (w,) if v is None else (w, v)
        scan = _scan_backward_kernels if ctx.kernels else _scan_backward

        def run(g, s, m, gate, beta_, *w_):  # -> (grad x, grad W) or (grad x, grad U, grad V), flat for the graph
            grad_x, grad_w = scan(g, s, m, gate, w_[0] if len(w_) == 1 else tuple(w_), beta_, ctx.theta,
                                  ctx.surrogate, ctx.slope)
            return (grad_x,) + (grad_w if isinstance(grad_w, tuple) else (grad_w,))

        args = (grad_spikes.contiguous(), spikes, mem, gates, beta) + tuple(t.contiguous() for t in ws)
        if ctx.graphed:
            key = ("bwd", ctx.kernels, ctx.theta, ctx.surrogate, ctx.slope) + _signature(args)
            grads = _replay(key, run, args)
        else:
            grads = run(*args)
        grad_v = grads[2] if v is not None else None
        return grads[0], grads[1], None, None, None, None, None, None, None, grad_v


def lif_scan(x: torch.Tensor, w, beta: torch.Tensor, theta: float, n_ref: int, surrogate: str,
             slope: float, adapt=None, cuda_graphs: bool = True) -> torch.Tensor:
    """Fused recurrent LIF. x: (T, B, N) input currents (threshold units per step), w: (N, N) recurrent weights
    (post, pre) or low-rank factors (U, V) with W = U V^T (differentiable wrt both), beta: (N,),
    adapt: None or (rho, b (N,)) spike-frequency adaptation (detached, like the reset; rho a float or per-neuron (N,)).
    Returns spikes (T, B, N) of 0/1, differentiable wrt x and w (surrogate gradient). On a GPU the forward and
    backward loops replay as CUDA graphs (captured once per shape) unless cuda_graphs is False."""
    u, v = w if isinstance(w, tuple) else (w, None)
    return _LIFScan.apply(x, u, beta, theta, n_ref, surrogate, slope, adapt, _graphs_on(x, cuda_graphs), v)


def slow_synapses(cur: torch.Tensor, decay: torch.Tensor) -> torch.Tensor:
    """Per-neuron causal exponential filter over bins: cur (B, bins, N) -> same shape, y_t = a y_{t-1} + (1 - a) x_t
    with a = decay (N,) (0: no filter, the input as is), started at the first bin's value (so a constant input
    passes unchanged: unit DC gain, no start-up transient). Differentiable; the slow afferent synapses of
    ``slow_syn_fraction``."""
    return exp_smooth(cur, decay, cur[:, 0])


def exp_smooth(x: torch.Tensor, decay, y: torch.Tensor) -> torch.Tensor:
    """Causal exponential smoothing along dim 1 of x (B, bins, ...): y_t = decay y_{t-1} + (1 - decay) x_t from the
    state y before the first bin, every y_t stacked along dim 1. decay: a float or a tensor broadcasting to x_t."""
    out = []
    for xt in x.unbind(1):
        y = decay * y + (1 - decay) * xt
        out.append(y)
    return torch.stack(out, 1)


def _raw_weight(linear: nn.Linear) -> torch.Tensor:
    """The stored weight parameter of a (possibly parametrised) linear layer."""
    return linear.parametrizations.weight.original if parametrize.is_parametrized(linear, "weight") else linear.weight


def _adapt_increment(strength: float, tau_mem: float, dt: float, decay):
    """What one spike adds to a neuron's adaptation current, for a per-step decay (float, or a tensor of them): the
    increment whose steady current is ``strength`` rheobases (of a neuron with membrane time constant tau_mem) per
    Hz of firing, whatever the decay."""
    return strength * (1 - math.exp(-dt / tau_mem)) * (1 - decay) / dt


class StudentNet(nn.Module):
    """E/I recurrent LIF network. n_in recorded units in, n_out teacher dims out; see the module docstring."""

    def __init__(self, n_in: int, n_out: int, cfg: StudentConfig, bin_size: float):
        """bin_size (s): the counts' bins, the data's (a prepared session's ``bin_size``), never assumed."""
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
        taus = torch.as_tensor(list(cfg.readout_taus), dtype=torch.float32)
        if taus.numel() < 1 or (taus <= 0).any():
            raise ValueError(f"readout_taus must be a non-empty list of positive time constants, got {cfg.readout_taus}")
        self.register_buffer("readout_decay", torch.exp(-bin_size / taus))  # (K,) per-bin decay of each filter
        n_feat = cfg.n_exc * len(taus)
        # spike-frequency adaptation of E neurons (I neurons, fast-spiking, do not adapt): each spike adds b to a
        # current that decays with adapt_tau; b makes the steady current adapt_strength rheobases per Hz of firing.
        # Slow adaptation on a random fraction of E neurons (slow_adapt_fraction): a per-neuron decay replaces the
        # scalar one and each neuron's b follows it; its own generator, so the rest of the initialisation is the
        # same with or without
        self.adapt_rho = math.exp(-cfg.dt / cfg.adapt_tau)
        decay = self._slow_adaptation() if cfg.slow_adapt_fraction > 0 else None
        rho_n = self.adapt_rho if decay is None else decay
        b_exc, b_inh = (torch.as_tensor(_adapt_increment(strength, tau, cfg.dt, rho_n), dtype=torch.float32)
                        for strength, tau in ((cfg.adapt_strength, cfg.tau_mem_exc),
                                              (cfg.adapt_strength_inh, cfg.tau_mem_inh)))
        self.register_buffer("adapt_b", torch.where(self.sign > 0, b_exc, b_inh))
        self.register_buffer("adapt_decay", decay, persistent=False)
        # edges of the homeostatic band per neuron (Hz), E neurons first (StudentConfig.penalty_bands)
        (low_e, high_e), (low_i, high_i) = cfg.penalty_bands()
        low, high = torch.full((n,), low_i), torch.full((n,), high_i)
        low[:cfg.n_exc], high[:cfg.n_exc] = low_e, high_e
        self.register_buffer("band_low", low, persistent=False)
        self.register_buffer("band_high", high, persistent=False)
        # divisive input normalisation (input_norm_tau > 0): the reference population count per bin, set from the
        # calibration windows (calibrate_bias); 0 until then
        self.register_buffer("input_ref", torch.zeros(()))
        # slow (NMDA-like) afferent synapses on a random fraction of neurons: per-bin decay of their input filter
        # (0 for the others); its own generator, so the rest of the initialisation is the same with or without
        self.register_buffer("syn_decay", self._slow_synapse_decay(n, bin_size) if cfg.slow_syn_fraction > 0 else None,
                             persistent=False)

        self.inp = nn.Linear(n_in, n)
        self.rec = nn.Linear(n, n, bias=False) if cfg.rec_rank <= 0 else None
        self.readout = nn.Linear(n_feat, n_out)
        mask = connection_mask(n, n, cfg.p_connect, gen) if self.rec is not None else None
        with torch.no_grad():
            self.inp.weight.copy_(torch.randn(n, n_in, generator=gen).abs() / math.sqrt(n_in))
            self.inp.bias.zero_()
            # a spike adds w to U, which then decays with beta: its integrated effect is w / (1 - beta_E), so the
            # radius that matters for stability is that of W / (1 - beta_E) (spectral_radius, ~1 = edge of chaos)
            rho = cfg.spectral_radius * (1 - math.exp(-cfg.dt / cfg.tau_mem_exc))
            if self.rec is None:  # low-rank pooled connectivity, Dale by its factors (dale.LowRankDale)
                self.rec = LowRankDale(cfg.n_exc, cfg.n_inh, cfg.rec_rank, rho, gen, dale=cfg.dale)
            else:
                self.rec.weight.copy_(balanced_recurrent(cfg.n_exc, cfg.n_inh, rho, mask, gen))
            self.readout.weight.copy_(torch.rand(n_out, n_feat, generator=gen) / math.sqrt(n_feat))
            self.readout.bias.zero_()
        if cfg.dale:
            apply_dale(self.inp, torch.ones(n_in))  # recorded spikes act as excitatory afferents
            if isinstance(self.rec, nn.Linear):
                apply_dale(self.rec, self.sign, mask)
            apply_dale(self.readout, torch.ones(n_feat))  # long-range output is excitatory, E only
        elif mask is not None:
            parametrize.register_parametrization(self.rec, "weight", MaskOnly(mask))
        self._ref_lif = None

    # ----------------------------------------------------------------------------------------- pieces
    def recurrent_weights(self):
        """What the scan takes: the dense (N, N) matrix, or the low-rank factors (U, V) when ``rec_rank`` > 0."""
        return self.rec.factors() if isinstance(self.rec, LowRankDale) else self.rec.weight

    def _adapt(self):
        """(rho, b (N,)) for the scan, or None without adaptation; rho is a float, or a per-neuron (N,) decay with
        ``slow_adapt_fraction``."""
        if self.cfg.adapt_strength <= 0 and self.cfg.adapt_strength_inh <= 0:
            return None
        return (self.adapt_rho if self.adapt_decay is None else self.adapt_decay), self.adapt_b

    def _slow_adaptation(self) -> torch.Tensor:
        """(N,) per-step decay of the adaptation current: exp(-dt / tau) with tau log-uniform in
        ``slow_adapt_tau`` for a random ``slow_adapt_fraction`` of the E neurons (seeded by ``seed``), ``adapt_tau``
        for the others (I neurons adapt fast, and only with ``adapt_strength_inh`` > 0)."""
        cfg, ne = self.cfg, self.cfg.n_exc
        g = torch.Generator().manual_seed(cfg.seed + 13)
        slow = torch.rand(ne, generator=g) < cfg.slow_adapt_fraction
        lo, hi = (float(v) for v in cfg.slow_adapt_tau)
        drawn = torch.exp(math.log(lo) + torch.rand(ne, generator=g) * (math.log(hi) - math.log(lo)))
        tau = torch.full((cfg.n_neurons,), float(cfg.adapt_tau))
        tau[:ne] = torch.where(slow, drawn, tau[:ne])
        return torch.exp(-cfg.dt / tau)

    def input_norm_gain(self, counts: torch.Tensor) -> torch.Tensor:
        """counts: (B, bins, n_in) -> per-bin input gain (B, bins) of the divisive normalisation (all ones when
        ``input_norm_tau`` is 0): ``(input_ref / m_t) ** input_norm_exponent``, where m_t is a causal running mean
        (time constant input_norm_tau) of the population input count per bin (the sum over inputs), started at the
        mean of the first ``burn_in`` bins (the warm-up, never scored), and input_ref the mean on the calibration
        windows. A model of feed-forward divisive normalisation (Carandini & Heeger 2012): a pooled-activity
        signal divides the afferent drive, so a state whose inputs fire less overall (the simulated passive block:
        ~0.7x) drives the network about as hard as the trained one (exponent 1) or with half the log change (0.5).
        The gain depends on the data only (no gradient); m_t is floored at a quarter of input_ref (gain at most
        4 ** exponent) so that a silent stretch cannot blow the input up."""
        cfg = self.cfg
        if cfg.input_norm_tau <= 0:
            return counts.new_ones(counts.shape[:2], dtype=self.inp.bias.dtype)
        pop = counts.to(self.inp.bias.dtype).sum(-1)  # (B, bins)
        a = math.exp(-self.bin_size / cfg.input_norm_tau)
        m = exp_smooth(pop, a, pop[:, : max(1, min(cfg.burn_in, pop.shape[1]))].mean(1))
        ref = self.input_ref.clamp_min(1e-6)
        m = m.clamp_min(0.25 * ref)
        return (ref / m) ** cfg.input_norm_exponent

    def _slow_synapse_decay(self, n: int, bin_size: float) -> torch.Tensor:
        """(n,) per-bin decay: exp(-bin_size / tau) for a random ``slow_syn_fraction`` of the neurons (tau
        log-uniform in ``slow_syn_tau``), 0 for the rest; seeded by ``seed``."""
        cfg = self.cfg
        g = torch.Generator().manual_seed(cfg.seed + 11)
        slow = torch.rand(n, generator=g) < cfg.slow_syn_fraction
        lo, hi = (float(v) for v in cfg.slow_syn_tau)
        tau = torch.exp(math.log(lo) + torch.rand(n, generator=g) * math.log(hi / lo))
        return torch.where(slow, torch.exp(-bin_size / tau), torch.zeros(()))

    def afferent_weight(self) -> torch.Tensor:
        """(N, n_in) effective map from the (normalised) counts to the input current: the excitatory afferent weights
        minus the feed-forward inhibition, ``W_in - ff_inhibition * rowmean(W_in) 1^T`` (see the module docstring)."""
        w = self.inp.weight
        k = self.cfg.ff_inhibition
        return w - k * w.mean(1, keepdim=True) if k > 0 else w

    def afferent_drive(self, x: torch.Tensor) -> torch.Tensor:
        """(B, bins, n_in) normalised counts -> (B, bins, N) afferent current (bias included), through the slow
        synapses of the neurons that have them (``slow_syn_fraction``)."""
        cur = F.linear(x, self.afferent_weight(), self.inp.bias)
        return cur if self.syn_decay is None else slow_synapses(cur, self.syn_decay)

    def feedforward_inhibition(self, counts: torch.Tensor) -> torch.Tensor:
        """counts: (B, bins, n_in) -> the feed-forward pool's inhibitory current, >= 0, (bins * substeps, B, N), held
        over each bin as the input current is: what :meth:`afferent_drive` subtracts."""
        x = counts.to(self.inp.bias.dtype) * self.input_norm_gain(counts)[..., None]
        inh = self.cfg.ff_inhibition * x.sum(-1, keepdim=True) * self.inp.weight.mean(1)
        if self.syn_decay is not None:  # it arrives through the same (slow) synapses as the excitation it tracks
            inh = slow_synapses(inh, self.syn_decay)
        return inh.transpose(0, 1).repeat_interleave(self.substeps, dim=0)

    def input_current(self, counts: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """counts: (B, bins, n_in) -> input currents (bins * substeps, B, N), each bin's current held over its steps,
        plus private Gaussian noise of std ``noise_std`` (threshold units per step; ``generator`` seeds it), white or
        with correlation time ``noise_tau``.
        The projection is computed once per bin (not per step): the first of the fast path's savings."""
        x = counts.to(self.inp.bias.dtype)
        if self.cfg.input_norm_tau > 0:
            x = x * self.input_norm_gain(counts)[..., None]
        cur = self.afferent_drive(x).transpose(0, 1).repeat_interleave(self.substeps, dim=0)
        if self.cfg.noise_std > 0:
            # private background noise: keeps firing irregular (CV ~ 1) instead of regular bursts while a held bin
            # current stays above threshold. White noise (noise_tau 0) makes big per-step jumps that overshoot
            # threshold, and with a subtractive reset the residue fires again right after the refractory period
            # (doublets, LV > 1); noise_tau > 0 low-pass filters it like synaptic background input
            # (Ornstein-Uhlenbeck, stationary std noise_std), so crossings overshoot little.
            # drawn where the generator lives (a seeded CPU one in simulate: the same noise on any device)
            noise = torch.randn(cur.shape, generator=generator, dtype=cur.dtype,
                                device=cur.device if generator is None else generator.device).to(cur.device)
            if self.cfg.noise_tau > 0:
                a = math.exp(-self.cfg.dt / self.cfg.noise_tau)
                c = math.sqrt(1 - a * a)
                for t in range(1, len(noise)):
                    noise[t].mul_(c).add_(noise[t - 1], alpha=a)
            cur = cur + self.cfg.noise_std * noise
        return cur

    def filtered_exc(self, spikes: torch.Tensor) -> torch.Tensor:
        """spikes: (T, B, N) -> (B, bins, K * n_exc): per-bin E spike counts low-pass filtered (exponential, unit DC
        gain) at each of the K ``readout_taus``; feature k * n_exc + j is E neuron j through filter k."""
        T, B, _ = spikes.shape
        c = spikes[:, :, : self.n_exc].reshape(T // self.substeps, self.substeps, B, self.n_exc).sum(1)
        a = self.readout_decay[:, None, None]  # (K, 1, 1)
        z = c.new_zeros(len(self.readout_decay), B, self.n_exc)
        out = []
        for ck in c.unbind(0):
            z = a * z + (1 - a) * ck
            out.append(z)
        return torch.stack(out, 1).permute(2, 1, 0, 3).reshape(B, len(out), -1)

    def readout_from_spikes(self, spikes: torch.Tensor) -> torch.Tensor:
        """spikes: (T, B, N) -> readout (B, bins, n_out): linear map of the filtered E spike counts."""
        return self.readout(self.filtered_exc(spikes))

    # ------------------------------------------------------------------------------------------ forward
    def forward(self, counts: torch.Tensor) -> dict[str, torch.Tensor]:
        """counts: (B, bins, n_in) spike counts. Returns spikes (T, B, N) with T = bins * substeps and
        readout (B, bins, n_out)."""
        cfg = self.cfg
        x = self.input_current(counts)
        spikes = lif_scan(x, self.recurrent_weights(), self.beta, cfg.threshold, self.n_ref, cfg.surrogate, cfg.surrogate_slope,
                          self._adapt(), cfg.cuda_graphs)
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
        cnt = torch.zeros(B, N, dtype=torch.int32, device=x.device)
        adapt = x.new_zeros(B, N) if self.cfg.adapt_strength > 0 else None
        rho, b = self._adapt() or (None, None)
        out = []
        with parametrize.cached():  # Dale's weights computed once per forward, not once per step (memory)
            for xt in x.unbind(0):
                g = (cnt == 0).to(x.dtype)
                if adapt is None:
                    spk, mem = lif(g * (xt + self.rec(spk)), mem)
                else:  # adaptation current, detached like snntorch's reset
                    adapt = adapt * rho + spk.detach() * b
                    spk, mem = lif(g * (xt + self.rec(spk) - adapt), mem)
                cnt = torch.where(spk.detach() > 0, self.n_ref, (cnt - 1).clamp_(min=0))
                out.append(spk)
        spikes = torch.stack(out)
        return {"spikes": spikes, "readout": self.readout_from_spikes(spikes)}

    @torch.no_grad()
    def simulate(self, counts: torch.Tensor, record_currents: bool = False) -> dict[str, torch.Tensor]:
        """Inference run. counts: (B, bins, n_in). Returns spikes (T, B, N) uint8, readout (B, bins, n_out), its input
        features (B, bins, K * n_exc) (filtered E counts) and, with
        record_currents, the E and I synaptic input currents (T, B, N) that each neuron received (gated)."""
        cfg = self.cfg
        x = self.input_current(counts, torch.Generator().manual_seed(cfg.seed + 1))  # reproducible noise
        w = self.recurrent_weights()
        spikes, _, gates = _scan_forward(x, w, self.beta, cfg.threshold, self.n_ref, keep=record_currents,
                                         adapt=self._adapt())
        feats = self.filtered_exc(spikes)
        res = {"spikes": spikes.to(torch.uint8), "readout": self.readout(feats), "features": feats}
        if record_currents:
            prev = torch.cat([torch.zeros_like(spikes[:1]), spikes[:-1]])
            ne = self.n_exc
            ff = self.feedforward_inhibition(counts) if cfg.ff_inhibition > 0 else 0.0
            if isinstance(w, tuple):  # through the pools: E neurons send to the E pools only, I to the I ones
                u, v = w
                rec_e, rec_i = (prev[..., :ne] @ v[:ne]) @ u.T, (prev[..., ne:] @ v[ne:]) @ u.T
            else:
                rec_e, rec_i = prev[..., :ne] @ w[:, :ne].T, prev[..., ne:] @ w[:, ne:].T
            res["i_exc"] = gates * (x + ff + rec_e)
            res["i_inh"] = gates * (rec_i - ff)
        return res

    @torch.no_grad()
    def calibrate_bias(self, counts: torch.Tensor, n_iter: int = 10) -> None:
        """Set each neuron's bias current so that its rate on ``counts`` (B, bins, n_in) is near target_rate_hz, by a
        per-neuron bisection (recurrent coupling makes it approximate): a data-dependent start that keeps the first
        gradient steps away from silent or saturated regimes."""
        target = torch.full((self.cfg.n_neurons,), float(self.cfg.target_rate_hz), device=self.beta.device)
        if self.cfg.target_rate_inh_hz > 0:  # fast-spiking I neurons start above E ones
            target[self.n_exc:] = self.cfg.target_rate_inh_hz
        rheobase = self.cfg.threshold * (1 - self.beta)  # constant current that just reaches threshold
        if self.cfg.input_norm_tau > 0:  # the reference the normalisation divides by: these windows' mean
            self.input_ref.copy_(counts.to(self.input_ref.dtype).sum(-1).mean())
        x = counts.to(self.inp.bias.dtype) * self.input_norm_gain(counts)[..., None]
        drive = self.afferent_drive(x) - self.inp.bias
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
