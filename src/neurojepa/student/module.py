"""The distillation step as a LightningModule: the whole training story on one screen.

loss = cca_loss(student readout, teacher latents)            # minus the sum of canonical correlations (float64)
       + homeostasis_weight * band_penalty(rates in Hz)      # per neuron: StudentConfig.penalty_bands()
                                                             # (pooled over the batch, per window, or per state)
       + l1_weight * mean |W_rec|                           # optional sparsity
       (+ rate_floor_hz, burst_weight terms: optional, off by default; see docs/student.md)

Each batch is a WindowBatch: counts (B, burn_in + window, n_in), the teacher's latents (B, burn_in + window, D) and
the windows' state codes (B,) (used by ``homeostasis_per_state`` only);
the first burn_in bins only bring the network state out of its zero initial condition and are left out of both
terms. A step with a non-finite loss or gradient is skipped (NaN guard, training.py); MAX_BAD_STEPS in a row stop
training with an error.
"""

from __future__ import annotations

import logging
import math

import lightning as L
import torch

from ..metrics.cca import cca_loss
from ..training import NanGuard
from .config import StudentConfig
from .homeostasis import band_penalty, rates_by_group, rates_hz
from .network import StudentNet

log = logging.getLogger(__name__)

MAX_BAD_STEPS = 20


class StudentModule(NanGuard, L.LightningModule):
    nan_patience = MAX_BAD_STEPS  # a non-finite step is skipped; this many in a row stop training (training.py)

    def __init__(self, net: StudentNet, cfg: StudentConfig, homeostasis: bool = True):
        super().__init__()
        self.net, self.cfg, self.homeostasis = net, cfg, homeostasis

    def losses(self, counts: torch.Tensor, teacher: torch.Tensor,
               state: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        cfg, b = self.cfg, self.cfg.burn_in
        out = self.net(counts)
        y = out["readout"][:, b:].reshape(-1, out["readout"].shape[-1])
        z = teacher[:, b:].reshape(-1, teacher.shape[-1])
        cca = cca_loss(y, z, cfg.ridge).to(y.dtype)
        spikes = out["spikes"][b * self.net.substeps:]
        if cfg.homeostasis_per_state and state is not None:
            rates = rates_by_group(spikes, cfg.dt, state)  # (states in the batch, N)
        else:
            rates = rates_hz(spikes, cfg.dt, per_window=cfg.homeostasis_per_window)
        band = band_penalty(rates, self.net.band_low, self.net.band_high)
        if cfg.rate_floor_hz > 0:  # every window keeps some firing: silences are what inflate a pooled CV of ISI
            win = rates_hz(spikes, cfg.dt, per_window=True)
            band = band + torch.relu(cfg.rate_floor_hz - win).pow(2).mean()
        loss = cca + (cfg.homeostasis_weight * band if self.homeostasis else 0.0)
        if cfg.burst_weight > 0 and self.homeostasis:  # fraction of spikes beyond a neuron's first in a bin
            per_bin = spikes.reshape(-1, self.net.substeps, *spikes.shape[1:]).sum(1)
            loss = loss + cfg.burst_weight * torch.relu(per_bin - 1).sum() / per_bin.sum().detach().clamp_min(1.0)
        if cfg.l1_weight > 0:
            loss = loss + cfg.l1_weight * self.net.rec.weight.abs().mean()
        return dict(loss=loss, cca=-cca / y.shape[-1], band=band, rate=rates.median().detach())

    def training_step(self, batch, batch_idx):
        """batch: a :class:`~neurojepa.data.windows.WindowBatch` of counts and the teacher's latents."""
        parts = self.losses(batch.counts, batch.latents, batch.state)
        loss = self.guard(parts["loss"])  # None: Lightning skips the optimiser step
        if loss is not None:
            self.log_dict({f"train_{k}": v.detach() for k, v in parts.items()}, prog_bar=True, batch_size=len(batch))
        return loss

    def validation_step(self, batch, batch_idx):
        with torch.no_grad():
            parts = self.losses(batch.counts, batch.latents, batch.state)
        self.log_dict({f"val_{k}": v for k, v in parts.items()}, prog_bar=False, batch_size=len(batch))

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.net.parameters(), lr=self.cfg.lr)
        total = max(self.cfg.max_steps, 1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
