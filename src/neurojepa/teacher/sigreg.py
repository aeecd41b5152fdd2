"""Anti-collapse regularisers for the teacher: SIGReg (LeJEPA) and VICReg, written by hand.

SIGReg (Balestriero & LeCun 2025, arXiv 2511.08544) pushes a cloud of embeddings toward an isotropic Gaussian
N(0, I). It projects the embeddings on random unit directions and, for each 1-D projection, measures the
Epps-Pulley distance between its empirical characteristic function ``ecf(t) = mean_n exp(i t x_n)`` and the
Gaussian one ``exp(-t^2/2)``::

    EP = N * integral |ecf(t) - exp(-t^2/2)|^2 * exp(-t^2/2) dt

The integrand is even in t, so we integrate on [0, t_max] with the trapezoid rule and double the weights (the
official code's choice: t_max = 3, 17 knots). The directions are redrawn every step from a generator seeded by
the step number, so a run (and a resumed run) is reproducible and every worker would draw the same ones.

For time series, SIGReg across the batch alone lets the time axis collapse (lejepa issue #27), so
:func:`sigreg_sequence` applies it per time step across the batch and, with a smaller weight, across time
inside each window. The statistic grows with the sample count N, so compare values only at equal N.

Spectral slices (``spectral_slices`` > 0; our addition, not in the official code). A random unit vector in D
dims sees a projection variance close to trace(Cov) / D whatever the spectrum (concentration of measure), so
random slices push only weakly on a cloud whose total variance is right but whose variance sits in a few axes:
the teacher's latent kept rankme ~13 of 32 at 256 and 512 slices. :func:`spectral_directions` adds principal
axes of largest and smallest variance (detached, recomputed every step) as extra slices; there the Epps-Pulley
statistic sees the extreme eigenvalues directly. Their mean statistic enters with weight ``spectral_weight``
beside the random slices' mean. It is the same test (every slice must look N(0, 1)), asked along the directions
where it fails most, as in max-sliced distances. The axes are cross-fitted: those of the even windows slice the
odd windows and back, because a sample's own extreme axes are biased (its smallest eigenvalue under-estimates
the population's), and an unbiased test should not keep pushing an isotropic cloud. Under DDP the axes come from
the global batch's covariance (a plain all-reduce of its sums: no gradient flows through the axes), so all ranks
agree; each rank's even windows are global even windows when the local batch size is even (the default 64), so the
statistic equals one process's on the global batch.

Distributed data parallel (DDP). When ``torch.distributed`` is initialised with world_size W > 1, the samples of
the across-batch statistic are split over ranks. Each rank's local ecf (the cos and sin means over its samples)
is then summed over ranks with the autograd-aware ``torch.distributed.nn.functional.all_reduce`` and divided by W,
and N is the global sample count W * N_local: every rank computes the statistic of the GLOBAL batch. A plain
``dist.all_reduce`` would give the same value but no gradient path through the other ranks' share, so DDP's
gradient average would come out 1/W too small for this term; the autograd version's backward all-reduces the
gradient of the ecf, which (after DDP divides by W) gives exactly the single-process gradient on the global batch
(tests/test_ddp.py checks this with 2 gloo processes). Assumptions: equal local batch sizes on all ranks
(Lightning's DistributedSampler pads to equal sizes; ``drop_last`` keeps the last batch equal too), and every
rank calls the regulariser at every step (it is a collective). The directions are a function of (seed, step)
only, drawn from a CPU generator, so they are identical on every rank without communication. The across-time
term of :func:`sigreg_sequence` has its samples (the T steps of one window) on one rank, so it is never reduced;
DDP's gradient average turns its per-rank means over windows into the global mean. ``distributed=False`` turns
the reduction off (the held-out diagnostic :func:`sigreg_statistic` always does: it may run on one rank only).
Not distributed, the code path and results are unchanged, bit for bit.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.distributed as dist

from ..metrics.rows import take_rows


def _trapezoid_grid(t_max: float, knots: int, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Knots t (knots,), Gaussian window phi(t) and quadrature weights (doubled: the integrand is even)."""
    t = torch.linspace(0.0, t_max, knots, device=device)
    dt = t_max / (knots - 1)
    w = torch.full((knots,), 2 * dt, device=device)
    w[0] = w[-1] = dt  # half weight at both ends of [0, t_max], doubled for [-t_max, 0]
    phi = torch.exp(-0.5 * t * t)
    return t, phi, w * phi


def world_size(distributed: bool | None = None) -> int:
    """Number of ranks the sample axis is split over: 1 unless distributed (None: auto) and W > 1 ranks run."""
    if distributed is False or not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


def _all_reduce_mean(x: torch.Tensor, world: int) -> torch.Tensor:
    """Mean of x over ranks, differentiable: the backward all-reduces the gradient (see module docstring)."""
    from torch.distributed.nn.functional import all_reduce  # imported lazily: only needed under DDP

    return all_reduce(x, op=dist.ReduceOp.SUM) / world


def epps_pulley(x: torch.Tensor, t_max: float = 3.0, knots: int = 17, *,
                distributed: bool | None = None) -> torch.Tensor:
    """Epps-Pulley normality statistic of 1-D samples.

    x: (..., N) samples along the last axis (any leading batch axes). Returns (...,): N times the weighted
    squared distance between the sample's characteristic function and N(0, 1)'s. About 0 for standard normal
    samples (its expectation under H0 is O(1), independent of N), large for anything else.

    distributed: None (auto) or True: if torch.distributed runs with W > 1 ranks, the N samples are this rank's
    share of W * N global ones (equal N on every rank); the ecf is averaged over ranks and the statistic is the
    global one, identical on all ranks. False: local samples only. Single-process, all three are the same.
    """
    if knots < 2:
        raise ValueError("knots must be >= 2")
    t, phi, weights = _trapezoid_grid(t_max, knots, device=x.device)
    xt = x.unsqueeze(-1) * t.to(x.dtype)  # (..., N, knots)
    cos, sin = xt.cos().mean(-2), xt.sin().mean(-2)  # real and imaginary parts of the ecf, (..., knots)
    world = world_size(distributed)
    if world > 1:
        ecf = _all_reduce_mean(torch.stack([cos, sin]), world)  # one collective for both parts
        cos, sin = ecf[0], ecf[1]
    err = (cos - phi).square() + sin.square()  # |ecf - phi|^2, (..., knots)
    return (err @ weights.to(x.dtype)) * (x.shape[-1] * world)


def random_directions(dim: int, num_slices: int, step: int, seed: int = 0, device=None,
                      dtype=torch.float32) -> torch.Tensor:
    """(dim, num_slices) unit vectors, a function of (seed, step) only: the same on resume and on every worker."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step))
    a = torch.randn(dim, num_slices, generator=g, dtype=torch.float32)
    return (a / a.norm(dim=0, keepdim=True)).to(device=device, dtype=dtype)


def sigreg(z: torch.Tensor, directions: torch.Tensor, t_max: float = 3.0, knots: int = 17, *,
           distributed: bool | None = None) -> torch.Tensor:
    """SIGReg of embeddings z: (..., N, D), samples on axis -2. directions: (D, M) unit vectors.

    Returns (...,): the Epps-Pulley statistic averaged over the M slices. ``distributed`` as in
    :func:`epps_pulley` (under DDP the N samples are this rank's share of the global batch).
    """
    proj = z @ directions  # (..., N, M)
    return epps_pulley(proj.transpose(-1, -2), t_max, knots, distributed=distributed).mean(-1)


def spectral_directions(z: torch.Tensor, count: int, distributed: bool | None = None) -> torch.Tensor:
    """(D, count) principal axes of z: (..., D), detached: the ``count // 2`` of largest variance and the rest of
    smallest (all D when count >= D). Under DDP the covariance is the global batch's (its sums are all-reduced),
    so every rank slices along the same axes. The axes' signs are arbitrary; the statistic does not see them."""
    d = z.shape[-1]
    flat = z.detach().reshape(-1, d)
    moments = torch.cat([flat.T @ flat, flat.sum(0, keepdim=True), flat.new_full((1, d), flat.shape[0])])
    if world_size(distributed) > 1:
        dist.all_reduce(moments)  # no gradient flows through the axes: a plain all-reduce is exact
    second, total, n = moments[:d], moments[d], moments[d + 1, 0]
    cov = (second - torch.outer(total, total) / n) / (n - 1).clamp_min(1.0)
    # a non-finite latent makes the loss non-finite anyway (the NaN guard stops training); eigh must not raise first
    _, vecs = torch.linalg.eigh(torch.nan_to_num(cov, nan=0.0, posinf=0.0, neginf=0.0))  # ascending eigenvalues
    if count >= d:
        return vecs.to(z.dtype)
    top = count // 2
    idx = list(range(count - top)) + list(range(d - top, d))
    return vecs[:, idx].to(z.dtype)


def sigreg_sequence(z: torch.Tensor, step: int, *, num_slices: int, seed: int, time_weight: float,
                    spectral_slices: int, spectral_weight: float, t_max: float = 3.0, knots: int = 17,
                    distributed: bool | None = None) -> torch.Tensor:
    """SIGReg for a batch of latent trajectories z: (B, T, D) -> scalar.

    The weights and slice counts are required (their defaults live in ``loss.*`` of the teacher's config:
    :func:`sigreg_kwargs`); t_max and knots are the Epps-Pulley quadrature (the official code's).

    Per time step across the batch (each of the T clouds of B points should be N(0, I)) plus ``time_weight``
    times the statistic across time inside each window (each window's T points), the guard against a latent
    that is Gaussian across windows but frozen in time. Each term is divided by its own sample count (B or T)
    and the sum multiplied by a reference N = 64, so that the balance between them, and with the prediction
    loss, does not move with batch size or window length. ``spectral_slices`` > 0 adds ``spectral_weight`` times
    the per-time-step statistic along that many cross-fitted principal axes (module docstring), also per sample.

    Under DDP (``distributed`` None/True and W > 1 ranks) z holds this rank's B of the W * B windows: the
    across-batch term is the global one (divided by the global count W * B), the across-time term is local
    (a window's T steps live on one rank) and DDP's gradient average turns its per-rank means into the global mean.
    """
    # mixed precision: the statistic (projections, cos/sin, the quadrature) always runs in at least float32, even
    # inside a bf16/fp16 autocast region; bf16 cos/sin of |t x| up to ~10 would swamp the small ECF differences
    precision = contextlib.nullcontext()
    if z.dtype in (torch.float16, torch.bfloat16) or torch.is_autocast_enabled(z.device.type):
        z, precision = z.float(), torch.autocast(z.device.type, enabled=False)
    world = world_size(distributed)
    with precision:
        # the same directions on every rank: a function of (seed, step) only, no communication needed
        directions = random_directions(z.shape[-1], num_slices, step, seed, device=z.device, dtype=z.dtype)
        # (T,) clouds of B windows each, divided by the global number of windows
        n_batch = z.shape[0] * world
        loss = sigreg(z.transpose(0, 1), directions, t_max, knots, distributed=distributed).mean() / n_batch
        if spectral_slices > 0 and z.shape[0] >= 2:
            # cross-fitted: the axes of the even windows slice the odd ones and back, so choosing the axes does not
            # bias the statistic (a sample's extreme eigenvalues lie further out than the population's)
            parts = (z[0::2], z[1::2])
            for fit, score in ((0, 1), (1, 0)):
                axes = spectral_directions(parts[fit], spectral_slices, distributed)
                stat = sigreg(parts[score].transpose(0, 1), axes, t_max, knots, distributed=distributed).mean()
                loss = loss + 0.5 * spectral_weight * stat / (parts[score].shape[0] * world)
        if time_weight > 0:  # (B,) clouds of the T points of one window
            loss = loss + time_weight * sigreg(z, directions, t_max, knots, distributed=False).mean() / z.shape[1]
        return loss * 64.0


def vicreg(z: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """VICReg variance + covariance terms (Bardes et al. 2022) per time step across the batch.

    z: (B, T, D). Hinge on each dimension's std (target ``gamma``) plus the mean squared off-diagonal
    covariance, averaged over time steps. The invariance term is our prediction loss, so it is not here.
    """
    zt = z.transpose(0, 1)  # (T, B, D)
    zt = zt - zt.mean(1, keepdim=True)
    std = torch.sqrt(zt.var(1, unbiased=True) + eps)  # (T, D)
    var_term = torch.relu(gamma - std).mean()
    b, d = zt.shape[1], zt.shape[2]
    cov = zt.transpose(1, 2) @ zt / (b - 1)  # (T, D, D)
    off = cov - torch.diag_embed(torch.diagonal(cov, dim1=1, dim2=2))
    cov_term = off.square().sum((1, 2)).mean() / d
    return 25.0 * var_term + cov_term  # VICReg's default 25:1 ratio of variance to covariance weight


def sigreg_kwargs(loss, seed: int) -> dict:
    """The keyword options of :func:`sigreg_sequence` that a teacher config's ``loss`` section (a
    :class:`~neurojepa.teacher.config.LossConfig`) sets, with the directions' ``seed``."""
    return dict(num_slices=loss.num_slices, seed=seed, time_weight=loss.time_weight,
                spectral_slices=loss.spectral_slices, spectral_weight=loss.spectral_weight)


def regulariser(name: str, z: torch.Tensor, step: int, **sigreg_options) -> torch.Tensor:
    """The switch used by the training module: 'sigreg' | 'vicreg' | 'none'. z: (B, T, D) -> scalar.
    ``sigreg_options`` (num_slices, seed, time_weight, spectral_slices, ...) go to :func:`sigreg_sequence`."""
    if name == "sigreg":
        return sigreg_sequence(z, step, **sigreg_options)
    if name == "vicreg":
        return vicreg(z)
    if name == "none":
        return z.new_zeros(())
    raise ValueError(f"unknown regulariser {name!r}")


def sigreg_statistic(z, num_slices: int = 256, n_samples: int = 512, repeats: int = 8, seed: int = 0,
                     rows: np.ndarray | None = None) -> float:
    """Held-out collapse diagnostic: SIGReg of a (n, D) latent array on random subsets of ``n_samples`` rows.

    Mean over ``repeats`` subsets; returns a float. At fixed n_samples, about 1 for N(0, I) latents (order-one
    under the null), far larger for collapsed or low-rank ones. rows: the rows to draw from (default: all); z may
    then be a row source (metrics/rows.py): only the drawn rows are read.
    """
    rows = np.arange(z.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
    g = torch.Generator().manual_seed(seed)
    n = min(n_samples, len(rows))
    vals = []
    for r in range(repeats):
        idx = torch.randperm(len(rows), generator=g)[:n].numpy()
        dirs = random_directions(z.shape[1], num_slices, r, seed)
        sub = torch.as_tensor(np.asarray(take_rows(z, rows[idx])), dtype=torch.float32)
        vals.append(float(sigreg(sub, dirs, distributed=False)))  # may run on one rank only: no collective
    return float(sum(vals) / len(vals)) if vals else math.nan
