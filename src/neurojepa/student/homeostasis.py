"""Homeostatic firing-rate band penalty (per neuron, rates in Hz).

``penalty = mean_j relu(low - r_j)^2 + relu(r_j - high)^2`` with ``r_j`` the rate of neuron j over the batch window
in Hz (spikes / (trials * steps * dt)). Zero inside the band (``rate_low_hz`` to ``rate_high_hz`` of the student's
config, 5-20 Hz by default; ``low`` may be per neuron, e.g. a higher floor ``rate_low_inh_hz`` for the fast-spiking I
neurons), so it leaves the CCA objective alone once every neuron fires in it; quadratic outside, so silent and
runaway neurons are pulled back hard. The rate goes through the surrogate gradient of the spikes, like the CCA
loss. A mean (not a sum) over neurons keeps the weight independent of the network size.

With ``per_window`` each window of the batch (default 320 ms) must stay in the band, not only the batch average:
this also bounds how deeply the input modulates a neuron's rate, which keeps the CV of its inter-spike intervals
near 1 instead of alternating bursts and silences (measured: CV 1.8 with pooled rates on the synthetic session).
"""

from __future__ import annotations

import torch


def rates_hz(spikes: torch.Tensor, dt: float, per_window: bool) -> torch.Tensor:
    """spikes: (T, B, N) of 0/1 at step dt (s) -> mean rate in Hz (differentiable): (N,) pooled over the batch, or
    (B, N), one rate per window of the batch with ``per_window``."""
    return spikes.mean(dim=0 if per_window else (0, 1)) / dt


def band_penalty(rates: torch.Tensor, low: float | torch.Tensor, high: float) -> torch.Tensor:
    """rates: (N,) or (B, N) in Hz -> mean of relu(low - r)^2 + relu(r - high)^2, in Hz^2; low: a number or (N,)."""
    return (torch.relu(low - rates) ** 2 + torch.relu(rates - high) ** 2).mean()
