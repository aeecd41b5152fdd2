"""Homeostatic firing-rate band penalty (per neuron, rates in Hz).

``penalty = mean_j relu(low - r_j)^2 + relu(r_j - high)^2`` with ``r_j`` the rate of neuron j over the batch window
in Hz (spikes / (trials * steps * dt)). Zero inside the band (``rate_low_hz`` to ``rate_high_hz`` of the student's
config, 5-20 Hz by default; ``low`` and ``high`` may be per neuron, e.g. a higher floor ``rate_low_inh_hz`` for the
fast-spiking I neurons, or a lower ceiling ``rate_high_inh_hz`` that leaves them headroom), so it leaves the CCA
objective alone once every neuron fires in it; quadratic outside, so silent and runaway neurons are pulled back
hard. The rate goes through the surrogate gradient of the spikes, like the CCA loss. A mean (not a sum) over neurons
keeps the weight independent of the network size.

With ``per_window`` each window of the batch (default 320 ms) must stay in the band, not only the batch average:
this also bounds how deeply the input modulates a neuron's rate, which keeps the CV of its inter-spike intervals
near 1 instead of alternating bursts and silences (measured: CV 1.8 with pooled rates on the synthetic session).

With ``per_state`` the windows of each brain state in the batch are pooled apart (:func:`rates_by_group`) and every
state's rates must lie in the band, the mean over the states present: a neuron may not fire at 2 Hz in one state
and 15 Hz in the other and count as in band on their mix. Per window bounds the rate every 320 ms; per state only
every state's mean, which leaves the within-state modulation the CCA term uses (docs/student.md, session 16).
"""

from __future__ import annotations

import torch


def rates_hz(spikes: torch.Tensor, dt: float, per_window: bool) -> torch.Tensor:
    """spikes: (T, B, N) of 0/1 at step dt (s) -> mean rate in Hz (differentiable): (N,) pooled over the batch, or
    (B, N), one rate per window of the batch with ``per_window``."""
    return spikes.mean(dim=0 if per_window else (0, 1)) / dt


def rates_by_group(spikes: torch.Tensor, dt: float, groups: torch.Tensor) -> torch.Tensor:
    """spikes: (T, B, N) of 0/1 at step dt (s), groups: (B,) integer labels of the windows -> (G, N) mean rate in Hz
    of each label present (in sorted label order), pooled over its windows and their steps (differentiable)."""
    _, inverse, n = torch.unique(groups, return_inverse=True, return_counts=True)
    per_window = rates_hz(spikes, dt, per_window=True)  # (B, N) Hz
    sums = torch.zeros(len(n), per_window.shape[1], dtype=per_window.dtype, device=per_window.device)
    sums = sums.index_add(0, inverse.to(per_window.device), per_window)
    return sums / n.to(sums.dtype).unsqueeze(1)


def band_penalty(rates: torch.Tensor, low: float | torch.Tensor, high: float | torch.Tensor) -> torch.Tensor:
    """rates: (N,) or (B, N) in Hz -> mean of relu(low - r)^2 + relu(r - high)^2, in Hz^2; low, high: numbers or
    (N,)."""
    return (torch.relu(low - rates) ** 2 + torch.relu(rates - high) ** 2).mean()
