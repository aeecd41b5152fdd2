"""Dale's principle by parametrisation, balanced initialisation, sparse masks and low-rank (pooled) connectivity.

Every presynaptic neuron's outgoing weights carry one sign: ``W_eff = |W_raw| * sign[pre] * mask`` is recomputed from
the raw parameter at every use (``torch.nn.utils.parametrize``), so no optimiser step can break the constraint, unlike
a penalty. ``sign`` is +1 for E and -1 for I presynaptic neurons (recorded input units count as excitatory).

Initialisation follows Li et al. 2023 (RESEARCH.md §4): what matters is the spectrum, so E and I columns are balanced
(the expected input of every row sums to zero: n_E * w_E = n_I * w_I) and the signed matrix is rescaled to a chosen
spectral radius after the sign and the mask are applied.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize


class DaleSign(nn.Module):
    """Parametrisation ``W -> |W| * sign * mask``; ``sign``: (n_pre,) of +-1, ``mask``: (n_post, n_pre) 0/1 or None.

    Weights follow nn.Linear's (n_post, n_pre) layout, so the sign multiplies columns.
    """

    def __init__(self, sign: torch.Tensor, mask: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("sign", sign.to(torch.float32))
        self.register_buffer("mask", None if mask is None else mask.to(torch.float32))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        w = w.abs() * self.sign
        return w if self.mask is None else w * self.mask

    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        # storing |w| keeps a signed matrix that already obeys Dale unchanged after the round trip
        return w.abs()


class MaskOnly(nn.Module):
    """Parametrisation ``W -> W * mask`` (the unconstrained ablation keeps the same connectivity)."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.to(torch.float32))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


def neuron_signs(n_exc: int, n_inh: int) -> torch.Tensor:
    """(n_exc + n_inh,) +1 for E then -1 for I."""
    return torch.cat([torch.ones(n_exc), -torch.ones(n_inh)])


def connection_mask(n_post: int, n_pre: int, p_connect: float, generator: torch.Generator) -> torch.Tensor | None:
    """A fixed random 0/1 mask with connection probability p_connect and no self-connections; None when dense."""
    if p_connect >= 1.0:
        return None
    m = (torch.rand(n_post, n_pre, generator=generator) < p_connect).float()
    if n_post == n_pre:
        m.fill_diagonal_(0.0)
    return m


def balanced_recurrent(n_exc: int, n_inh: int, spectral_radius: float, mask: torch.Tensor | None,
                       generator: torch.Generator) -> torch.Tensor:
    """Signed (N, N) recurrent matrix obeying Dale, balanced rows on average, spectral radius ``spectral_radius``."""
    n = n_exc + n_inh
    mag = torch.empty(n, n).exponential_(1.0, generator=generator)  # positive, heavy-ish tail like synapse sizes
    sign = neuron_signs(n_exc, n_inh)
    # balance: mean E column weight * n_exc == mean I column weight * n_inh
    scale = torch.where(sign > 0, torch.tensor(1.0 / n_exc), torch.tensor(1.0 / n_inh))
    w = mag * scale * sign
    if mask is not None:
        w = w * mask
    w.fill_diagonal_(0.0)
    rho = spectral_radius_of(w)
    return w * (spectral_radius / rho) if rho > 0 else w


EXACT_RADIUS_BELOW = 2048  # neurons: exact eigenvalues up to here (the defaults), a power-iteration estimate above


def spectral_radius_of(w: torch.Tensor, exact_below: int = EXACT_RADIUS_BELOW, iters: int = 120,
                       burn_in: int = 30) -> float:
    """Largest |eigenvalue| of a square matrix: exact (``eigvals``) below ``exact_below`` rows, else the growth
    rate of ||W^k v|| (the geometric mean of the per-iteration norm ratio over iterations burn_in..iters, best of
    8 random starts; within ~2 % on random Dale matrices, tested). Exact eigenvalues cost O(N^3): ~1 min at
    4,096 neurons, most of an hour at 16,384; the estimate costs ``iters`` matrix-vector products."""
    n = w.shape[0]
    if n < exact_below:
        return torch.linalg.eigvals(w.double()).abs().max().item()
    v = torch.randn(n, 8, generator=torch.Generator().manual_seed(0), dtype=w.dtype).to(w.device)
    log_growth = torch.zeros(8, dtype=torch.float64, device=w.device)
    for k in range(iters):
        v = w @ v
        norm = v.norm(dim=0).clamp_min(1e-30)
        if k >= burn_in:
            log_growth += norm.double().log()
        v = v / norm
    return float(torch.exp(log_growth / (iters - burn_in)).max())


def apply_dale(linear: nn.Linear, sign: torch.Tensor, mask: torch.Tensor | None = None) -> None:
    """Register the Dale parametrisation on ``linear.weight`` (in place)."""
    parametrize.register_parametrization(linear, "weight", DaleSign(sign, mask))


def dale_violations(weight: torch.Tensor, sign: torch.Tensor) -> int:
    """Number of weights (n_post, n_pre) whose sign contradicts their presynaptic neuron's sign."""
    w = weight.detach()
    return int(((w * sign[None, :]) < 0).sum().item())


class LowRankDale(nn.Module):
    """Recurrent weights of rank ``2 rank`` that obey Dale's principle: ``W = U V^T`` (post, pre) with

    * ``U`` (N, 2r) >= 0: how strongly each neuron listens to each of r excitatory and r inhibitory pools,
    * ``V`` (N, 2r): E neuron j sends ``|V_jk|`` into the excitatory pools (k < r) only, I neuron j ``-|V_jk|`` into
      the inhibitory ones (k >= r) only,

    so ``W_ij = sign_j * sum_k U_ik |V_jk|`` carries its presynaptic neuron's sign by construction (a product of a
    non-negative sum and the sign), like :class:`DaleSign`. Low-rank connectivity, a structured part of a cortical
    circuit (Mastrogiuseppe & Ostojic 2018), is also what makes a network of thousands of neurons cheap: a step
    costs two (B, N) x (N, 2r) products instead of one (B, N) x (N, N), and the recurrent weight gradient is two
    thin products (``student/network.py``). With ``dale=False`` (the unconstrained ablation) ``U`` and ``V`` take
    any sign (the pools keep their members), so W's columns may take either sign.

    Initialisation as :func:`balanced_recurrent`: exponential magnitudes, the I pools' presynaptic weights scaled
    by ``1 / n_inh`` and the E pools' by ``1 / n_exc`` (every row's expected E and I input equal), then ``U`` and
    ``V`` scaled alike to spectral radius ``spectral_radius`` (exact: the non-zero eigenvalues of ``U V^T`` are
    those of the (2r, 2r) matrix ``V^T U``).

    Size: the ``1 / n_exc`` and ``1 / n_inh`` factors of ``V`` are fixed buffers (``v_scale``) outside the
    parameters, so a neuron's summed recurrent input stays of the same order, and an optimiser step changes it by
    the same amount, at 320 or 4,096 neurons. With those factors inside the parameters, Adam's fixed-size steps
    grew the recurrent input in proportion to N: 1,280 neurons trained well (CV of ISI 1.30), 2,560 gained nothing
    over them and fired more irregularly (CV 1.43), and 4,096 fell silent within 50 steps. With every scale outside
    (``U`` too), the recurrence learned too slowly (CCA -0.03 at 1,280). docs/student.md, session 15.
    """

    def __init__(self, n_exc: int, n_inh: int, rank: int, spectral_radius: float, generator: torch.Generator,
                 dale: bool = True):
        super().__init__()
        n = n_exc + n_inh
        self.dale = bool(dale)
        block = torch.zeros(n, 2 * rank)
        block[:n_exc, :rank] = 1.0
        block[n_exc:, rank:] = -1.0
        u = torch.empty(n, 2 * rank).exponential_(1.0, generator=generator)
        v = torch.empty(n, 2 * rank).exponential_(1.0, generator=generator)
        row = torch.full((n, 1), 1.0 / n_exc)
        row[n_exc:] = 1.0 / max(n_inh, 1)
        rho = torch.linalg.eigvals(((v * row * block).T @ u).double()).abs().max().item()
        scale = math.sqrt(spectral_radius / rho) if rho > 0 else 1.0
        # V's 1 / n factors (and the pools' membership and sign) as a fixed buffer: see "Size" above
        self.register_buffer("v_scale", row * block)
        self.u_raw = nn.Parameter(u * scale)
        self.v_raw = nn.Parameter(v * scale * (block.abs() if dale else block.sign()))

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(U, V) with the constraint applied: W = U @ V.T."""
        if not self.dale:
            return self.u_raw, self.v_raw * self.v_scale.abs()
        return self.u_raw.abs(), self.v_raw.abs() * self.v_scale

    @property
    def weight(self) -> torch.Tensor:
        """The dense (N, N) matrix ``U V^T`` (for analysis, export and the weight penalty; the scan uses the
        factors)."""
        u, v = self.factors()
        return u @ v.T

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """Recurrent input ``W s`` for spikes s (..., N), through the pools: ``U (V^T s)``."""
        u, v = self.factors()
        return F.linear(s @ v, u)
